//! Constructor arguments of the SC-VAE decoders (docs/MODEL.md §1.1, §5). Upstream:
//! `trellis2/models/sc_vaes/{sparse_unet_vae,fdg_vae}.py` @ 5565d24.

use candle_core::{bail, Result};
use serde::Deserialize;

/// `SparseUnetVaeDecoder` args (texture decoder).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnetDecoderArgs {
    pub out_channels: usize,
    pub model_channels: Vec<usize>,
    pub latent_channels: usize,
    pub num_blocks: Vec<usize>,
    pub block_type: Vec<String>,
    pub up_block_type: Vec<String>,
    pub block_args: Vec<serde_json::Map<String, serde_json::Value>>,
    /// Release precision; the CPU reference always runs f32.
    #[serde(default)]
    pub use_fp16: bool,
    #[serde(default = "yes")]
    pub pred_subdiv: bool,
}

/// `FlexiDualGridVaeDecoder` args (shape decoder: 7 output channels, predicts subdivisions).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlexiDualGridDecoderArgs {
    /// Grid size for mesh extraction only (`set_resolution`); the network ignores it.
    pub resolution: usize,
    pub model_channels: Vec<usize>,
    pub latent_channels: usize,
    pub num_blocks: Vec<usize>,
    pub block_type: Vec<String>,
    pub up_block_type: Vec<String>,
    pub block_args: Vec<serde_json::Map<String, serde_json::Value>>,
    #[serde(default = "half")]
    pub voxel_margin: f64,
    #[serde(default)]
    pub use_fp16: bool,
}

/// `FlexiDualGridVaeEncoder` args (shape encoder: 6 input channels, dual-vertex offsets and
/// intersected flags; upstream `fdg_vae.py` @ 5565d24).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlexiDualGridEncoderArgs {
    pub model_channels: Vec<usize>,
    pub latent_channels: usize,
    pub num_blocks: Vec<usize>,
    pub block_type: Vec<String>,
    pub down_block_type: Vec<String>,
    pub block_args: Vec<serde_json::Map<String, serde_json::Value>>,
    /// Release precision; the CPU reference always runs f32.
    #[serde(default)]
    pub use_fp16: bool,
}

/// The encoder network, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderConfig {
    pub in_channels: usize,
    pub model_channels: Vec<usize>,
    pub latent_channels: usize,
    pub num_blocks: Vec<usize>,
}

impl EncoderConfig {
    pub fn from_flexi_dual_grid(a: &FlexiDualGridEncoderArgs) -> Result<Self> {
        (|| {
            use crate::models::limits::{field, list, CHANNELS, DEPTH};
            field("latent_channels", a.latent_channels, 1..=1024)?;
            list("model_channels", &a.model_channels, 1..=8, CHANNELS)?;
            list("num_blocks", &a.num_blocks, 1..=8, 0..=*DEPTH.end())
        })()
        .map_err(|e| candle_core::Error::Msg(format!("SC-VAE encoder: {e}")))?;
        let stages = a.num_blocks.len();
        if stages == 0 || a.model_channels.len() != stages {
            bail!(
                "SC-VAE encoder: model_channels has {} entries, num_blocks {stages}; they must be \
                 equal and non-empty",
                a.model_channels.len()
            );
        }
        if a.block_type.len() != stages
            || a.block_args.len() != stages
            || a.down_block_type.len() + 1 != stages
        {
            bail!(
                "SC-VAE encoder: {stages} stages need {stages} block_type and block_args and {} \
                 down_block_type entries, got {}, {} and {}",
                stages - 1,
                a.block_type.len(),
                a.block_args.len(),
                a.down_block_type.len()
            );
        }
        if let Some(t) = a.block_type.iter().find(|t| *t != "SparseConvNeXtBlock3d") {
            bail!("SC-VAE encoder: block_type `{t}` is not supported (the release uses SparseConvNeXtBlock3d)");
        }
        if let Some(t) = a
            .down_block_type
            .iter()
            .find(|t| *t != "SparseResBlockS2C3d")
        {
            bail!("SC-VAE encoder: down_block_type `{t}` is not supported (the release uses SparseResBlockS2C3d)");
        }
        for args in &a.block_args {
            if let Some(k) = args.keys().find(|k| *k != "use_checkpoint") {
                bail!(
                    "SC-VAE encoder: block_args key `{k}` is not supported (only use_checkpoint)"
                );
            }
        }
        for w in a.model_channels.windows(2) {
            let (c, next) = (w[0], w[1]);
            if c == 0 || next == 0 || next % 8 != 0 || (8 * c) % next != 0 {
                bail!(
                    "SC-VAE encoder: an S2C block {c} → {next} needs {next} divisible by 8 and \
                     8·{c} divisible by {next}"
                );
            }
        }
        if a.latent_channels == 0 {
            bail!("SC-VAE encoder: latent_channels must be positive");
        }
        Ok(Self {
            in_channels: 6,
            model_channels: a.model_channels.clone(),
            latent_channels: a.latent_channels,
            num_blocks: a.num_blocks.clone(),
        })
    }
}

fn yes() -> bool {
    true
}

fn half() -> f64 {
    0.5
}

/// The decoder network both classes share, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    pub out_channels: usize,
    pub model_channels: Vec<usize>,
    pub latent_channels: usize,
    pub num_blocks: Vec<usize>,
    pub pred_subdiv: bool,
}

/// ConvNeXt MLP width factor (`SparseConvNeXtBlock3d(mlp_ratio=4.0)`).
pub const MLP_RATIO: f64 = 4.0;

impl DecoderConfig {
    fn validate(
        self,
        block_type: &[String],
        up_block_type: &[String],
        block_args: &[serde_json::Map<String, serde_json::Value>],
    ) -> Result<Self> {
        (|| {
            use crate::models::limits::{field, list, CHANNELS, DEPTH};
            field("out_channels", self.out_channels, 1..=64)?;
            field("latent_channels", self.latent_channels, 1..=1024)?;
            list("model_channels", &self.model_channels, 1..=8, CHANNELS)?;
            list("num_blocks", &self.num_blocks, 1..=8, 0..=*DEPTH.end())
        })()
        .map_err(|e| candle_core::Error::Msg(format!("SC-VAE decoder: {e}")))?;
        let stages = self.num_blocks.len();
        if stages == 0 || self.model_channels.len() != stages {
            bail!(
                "SC-VAE decoder: model_channels has {} entries, num_blocks {stages}; they must be \
                 equal and non-empty",
                self.model_channels.len()
            );
        }
        if block_type.len() != stages
            || block_args.len() != stages
            || up_block_type.len() + 1 != stages
        {
            bail!(
                "SC-VAE decoder: {stages} stages need {stages} block_type and block_args and {} \
                 up_block_type entries, got {}, {} and {}",
                stages - 1,
                block_type.len(),
                block_args.len(),
                up_block_type.len()
            );
        }
        if let Some(t) = block_type.iter().find(|t| *t != "SparseConvNeXtBlock3d") {
            bail!("SC-VAE decoder: block_type `{t}` is not supported (the release uses SparseConvNeXtBlock3d)");
        }
        if let Some(t) = up_block_type.iter().find(|t| *t != "SparseResBlockC2S3d") {
            bail!("SC-VAE decoder: up_block_type `{t}` is not supported (the release uses SparseResBlockC2S3d)");
        }
        for args in block_args {
            if let Some(k) = args.keys().find(|k| *k != "use_checkpoint") {
                bail!(
                    "SC-VAE decoder: block_args key `{k}` is not supported (only use_checkpoint)"
                );
            }
        }
        for w in self.model_channels.windows(2) {
            let (c, next) = (w[0], w[1]);
            if c % 8 != 0 || next % (c / 8).max(1) != 0 || c / 8 == 0 {
                bail!(
                    "SC-VAE decoder: a C2S block {c} → {next} needs {c} divisible by 8 and {next} \
                     divisible by {c}/8"
                );
            }
        }
        Ok(self)
    }

    pub fn from_unet(a: &UnetDecoderArgs) -> Result<Self> {
        Self {
            out_channels: a.out_channels,
            model_channels: a.model_channels.clone(),
            latent_channels: a.latent_channels,
            num_blocks: a.num_blocks.clone(),
            pred_subdiv: a.pred_subdiv,
        }
        .validate(&a.block_type, &a.up_block_type, &a.block_args)
    }

    pub fn from_flexi_dual_grid(a: &FlexiDualGridDecoderArgs) -> Result<Self> {
        crate::models::limits::field("resolution", a.resolution, 1..=4096)
            .and_then(|()| crate::models::limits::field("voxel_margin", a.voxel_margin, 0.0..=1.0))
            .map_err(|e| candle_core::Error::Msg(format!("SC-VAE decoder: {e}")))?;
        Self {
            out_channels: 7,
            model_channels: a.model_channels.clone(),
            latent_channels: a.latent_channels,
            num_blocks: a.num_blocks.clone(),
            pred_subdiv: true,
        }
        .validate(&a.block_type, &a.up_block_type, &a.block_args)
    }

    /// Channel→space blocks (one per stage but the last).
    pub fn up_blocks(&self) -> usize {
        self.num_blocks.len() - 1
    }
}
