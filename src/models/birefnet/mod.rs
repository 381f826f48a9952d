//! BiRefNet, the background remover of TRELLIS.2 (`briaai/RMBG-2.0`; `ZhengPeng7/BiRefNet` has
//! the same architecture), as its released configuration runs at inference: a Swin backbone run
//! on the image and on a half-size copy (`mul_scl_ipt='cat'`), three context skips squeezed into
//! the stride-32 features (`cxt_num=3`, `squeeze_block='BasicDecBlk_x1'`), and the decoder of
//! [`decoder`]. Key names are the released `state_dict` names; sizes come from the weights
//! ([`config`]). Everything is NCHW.

pub mod blocks;
pub mod config;
pub mod decoder;
pub mod swin;

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

pub use config::{BiRefNetConfig, PatchOrder, SwinConfig};
use decoder::Decoder;
use swin::SwinBackbone;

use super::trace::Trace;
use crate::ops::interpolate_bilinear_aligned;
use crate::weights::{Checkpoint, RembgModel};

/// The network: backbone, squeeze block, decoder.
pub struct BiRefNet {
    bb: SwinBackbone,
    squeeze: blocks::BasicDecBlk,
    decoder: Decoder,
    cfg: BiRefNetConfig,
    /// Where the weights live; inputs are built there.
    device: Device,
}

/// The optional per-checkpoint settings of a BiRefNet folder's `config.json` (everything else
/// there, e.g. Hugging Face's `bb_pretrained`, is ignored).
#[derive(Debug, Default, serde::Deserialize)]
struct FolderSettings {
    /// `"rmbg"` or `"einops"`, see [`PatchOrder`]; the default depends on the checkpoint.
    patch_split_order: Option<PatchOrder>,
}

impl BiRefNet {
    pub fn new(cfg: &BiRefNetConfig, vb: VarBuilder) -> Result<Self> {
        let top = cfg.lateral_channels(4);
        let squeeze_in: usize = (1..=4).map(|i| cfg.lateral_channels(i)).sum();
        Ok(Self {
            bb: SwinBackbone::new(&cfg.swin, vb.pp("bb"))?,
            squeeze: blocks::BasicDecBlk::new(
                squeeze_in,
                top,
                cfg.dec_inter,
                cfg.aspp_planes,
                &cfg.aspp_kernels,
                vb.pp("squeeze_module.0"),
            )?,
            decoder: Decoder::new(cfg, vb.pp("decoder"))?,
            cfg: cfg.clone(),
            device: vb.device().clone(),
        })
    }

    /// Loads a checkpoint strictly (only the training-only `gdt_convs_pred_*` may stay unused).
    pub fn load(
        ckpt: &Checkpoint,
        patch_order: PatchOrder,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let cfg = BiRefNetConfig::from_tensors(&ckpt.tensor_infos(), patch_order)
            .with_context(|| ckpt.path.display().to_string())?;
        let unused = decoder::training_only_keys();
        let unused: Vec<&str> = unused.iter().map(String::as_str).collect();
        let strict = ckpt.strict().allow_unused(&unused);
        let model = Self::new(&cfg, strict.var_builder(dtype, device));
        match (model, strict.finish()) {
            (Ok(model), Ok(())) => Ok(model),
            // A build stopped midway leaves every later key "unexpected": only the tensors it
            // did ask for (missing, mis-shaped) say more than its own error.
            (Err(e), Err(keys)) if keys.missing.is_empty() && keys.misshaped.is_empty() => {
                Err(e).with_context(|| ckpt.path.display().to_string())
            }
            (Err(e), Ok(())) => Err(e).with_context(|| ckpt.path.display().to_string()),
            (_, Err(keys)) => Err(keys.into()),
        }
    }

    /// Opens a model folder: `weights.safetensors` (the golden layout) or `model.safetensors`
    /// (a Hugging Face download). The tile order comes from the folder's `config.json`
    /// (`"patch_split_order"`) if it says, else from the checkpoint the path names
    /// ([`RembgModel::from_path`]: a hub cache snapshot or an `owner/name` folder), else
    /// RMBG-2.0's (the order of the golden test models).
    pub fn open(dir: &Path, device: &Device) -> Result<Self> {
        let fallback = RembgModel::from_path(dir)
            .map(PatchOrder::for_model)
            .unwrap_or(PatchOrder::Rmbg);
        Self::open_with_order(dir, fallback, device)
    }

    /// [`Self::open`] for a folder known to hold checkpoint `model`: its order unless the
    /// folder's `config.json` says otherwise.
    pub fn open_as(dir: &Path, model: RembgModel, device: &Device) -> Result<Self> {
        Self::open_with_order(dir, PatchOrder::for_model(model), device)
    }

    fn open_with_order(dir: &Path, fallback: PatchOrder, device: &Device) -> Result<Self> {
        let weights = ["model.safetensors", "weights.safetensors"]
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
            .with_context(|| {
                format!(
                    "{}: no BiRefNet weights (model.safetensors or weights.safetensors)",
                    dir.display()
                )
            })?;
        let config = dir.join("config.json");
        let settings: FolderSettings = if config.is_file() {
            let text = std::fs::read_to_string(&config)
                .with_context(|| format!("{}: cannot read", config.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{}: bad JSON", config.display()))?
        } else {
            FolderSettings::default()
        };
        let ckpt = Checkpoint::open_file(&weights)?;
        Self::load(
            &ckpt,
            settings.patch_split_order.unwrap_or(fallback),
            DType::F32,
            device,
        )
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn config(&self) -> &BiRefNetConfig {
        &self.cfg
    }

    /// The side length the input must be a multiple of (32 for the released model).
    pub fn size_multiple(&self) -> usize {
        self.cfg.swin.stride()
    }

    /// Logits `[B, 1, H, W]` of a normalised image `[B, 3, H, W]` (the last output of the
    /// upstream model; apply a sigmoid for the mask).
    pub fn forward(&self, image: &Tensor) -> Result<Tensor> {
        self.forward_traced(image, &mut Trace::off())
    }

    /// [`Self::forward`], recording intermediates under the golden names (`bb.full.*`,
    /// `enc.*`, `squeeze.*`, `decoder.*`, deformable convs under their module paths).
    pub fn forward_traced(&self, image: &Tensor, trace: &mut Trace) -> Result<Tensor> {
        let (_, c, h, w) = image
            .dims4()
            .context("BiRefNet input must be [B, 3, H, W]")?;
        let m = self.size_multiple();
        if c != self.cfg.swin.in_chans || h == 0 || w == 0 || h % m != 0 || w % m != 0 {
            bail!(
                "BiRefNet input {:?}: needs {} channels and a height and width that are positive \
                 multiples of {m}",
                image.dims(),
                self.cfg.swin.in_chans
            );
        }
        let image = image.to_dtype(DType::F32)?;
        let full = self.bb.forward(&image, "bb.full", trace)?;
        let half_image = interpolate_bilinear_aligned(&image, h / 2, w / 2)?;
        trace.record("enc.x_half", || Ok(half_image.clone()))?;
        let half = self.bb.forward(&half_image, "bb.half", trace)?;
        let mut xs = Vec::with_capacity(4);
        for (i, (f, s)) in full.iter().zip(&half).enumerate() {
            let (_, _, fh, fw) = f.dims4()?;
            let x = Tensor::cat(&[f, &interpolate_bilinear_aligned(s, fh, fw)?], 1)?;
            trace.record(&format!("enc.x{}", i + 1), || Ok(x.clone()))?;
            xs.push(x);
        }
        let (_, _, h4, w4) = xs[3].dims4()?;
        let mut context = Vec::with_capacity(4);
        for x in &xs[..3] {
            context.push(interpolate_bilinear_aligned(x, h4, w4)?);
        }
        context.push(xs[3].clone());
        let squeeze_in = Tensor::cat(&context, 1)?;
        trace.record("squeeze.in", || Ok(squeeze_in.clone()))?;
        let x4 = self.squeeze.forward(&squeeze_in, trace)?;
        trace.record("squeeze.out", || Ok(x4.clone()))?;
        self.decoder
            .forward(&image, [&xs[0], &xs[1], &xs[2]], &x4, trace)
    }
}
