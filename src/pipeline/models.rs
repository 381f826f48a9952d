//! Loading one model of a model directory by its `pipeline.json` role, through the model
//! registry ([`crate::models::registry`]), in the compute dtype the run asks for. Which loaded
//! models stay is the run's schedule ([`super::run::BatchOrder`], [`super::model_cache`]).

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};

use crate::models::dinov3::DinoV3;
use crate::models::dit::FlowDit;
use crate::models::registry::{
    load_dinov3, load_flow, load_shape_decoder, load_shape_encoder, load_ss_decoder,
    load_unet_decoder, ModelSource,
};
use crate::models::sc_vae::{
    FlexiDualGridVaeDecoder, FlexiDualGridVaeEncoder, SparseUnetVaeDecoder,
};
use crate::models::ss_decoder::SsDecoder;
use crate::models::WeightMemory;
use crate::weights::{Checkpoint, ModelDir};

/// `--dtype`: the dtype of the weights and of the activations between the fp32 islands (norms,
/// RoPE, timestep path, softmax, sampler state, decoder heads stay f32 whatever this says).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DTypeChoice {
    /// f32 on the CPU (the reference); on a GPU each checkpoint's own storage dtype, as
    /// upstream runs them (bf16 flows, f16 decoders; f32 stays f32).
    #[default]
    Auto,
    F32,
    F16,
    Bf16,
}

impl FromStr for DTypeChoice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => Self::Auto,
            "f32" | "float32" => Self::F32,
            "f16" | "fp16" | "float16" => Self::F16,
            "bf16" | "bfloat16" => Self::Bf16,
            other => bail!("unknown dtype `{other}` (expected auto, f32, f16 or bf16)"),
        })
    }
}

impl DTypeChoice {
    /// The dtype a model stored as `stored` computes in on `device`.
    pub fn resolve(self, stored: DType, device: &Device) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
            Self::Auto if device.is_cpu() => DType::F32,
            // A Metal GPU compiled without bfloat (macOS 13) runs the bf16 models in f16; the
            // device setup's note says so once.
            Self::Auto => match stored {
                DType::BF16 if !crate::ops::bf16_available(device) => DType::F16,
                DType::F16 | DType::BF16 => stored,
                _ => DType::F32,
            },
        }
    }
}

/// How a run loads its models: compute dtype and weight residency (`--low-memory`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadOptions {
    pub dtype: DTypeChoice,
    pub memory: WeightMemory,
}

impl LoadOptions {
    /// Rejects what `device` cannot compute in.
    pub fn check(&self, device: &Device) -> Result<()> {
        if device.is_cpu() && self.dtype == DTypeChoice::Bf16 {
            bail!(
                "--dtype bf16 is not available on the CPU (candle's CPU matmul has no bf16 \
                 kernel); use --dtype f16 to halve weight memory, or f32"
            );
        }
        if self.dtype == DTypeChoice::Bf16 && !crate::ops::bf16_available(device) {
            bail!(
                "--dtype bf16 is not available on this GPU (Metal has bfloat from macOS 14); \
                 use --dtype auto or f16"
            );
        }
        Ok(())
    }

    /// The compute dtype of `ckpt` on `device`.
    pub fn dtype_for(&self, ckpt: &Checkpoint, device: &Device) -> DType {
        self.dtype.resolve(stored_dtype(ckpt), device)
    }
}

/// The float dtype holding most of a checkpoint's elements (f32 when it has no float tensor).
pub fn stored_dtype(ckpt: &Checkpoint) -> DType {
    use safetensors::Dtype;
    let mut counts = [0usize; 3];
    for info in ckpt.tensor_infos() {
        match info.dtype {
            Dtype::F32 => counts[0] += info.numel(),
            Dtype::F16 => counts[1] += info.numel(),
            Dtype::BF16 => counts[2] += info.numel(),
            _ => {}
        }
    }
    let most = (0..3).max_by_key(|&i| (counts[i], 2 - i)).unwrap_or(0);
    [DType::F32, DType::F16, DType::BF16][most]
}

/// Roles of `pipeline.json` `args.models`.
pub mod role {
    pub const SS_FLOW: &str = "sparse_structure_flow_model";
    pub const SS_DECODER: &str = "sparse_structure_decoder";
    pub const SHAPE_FLOW_512: &str = "shape_slat_flow_model_512";
    pub const SHAPE_FLOW_1024: &str = "shape_slat_flow_model_1024";
    pub const TEX_FLOW_512: &str = "tex_slat_flow_model_512";
    pub const TEX_FLOW_1024: &str = "tex_slat_flow_model_1024";
    pub const SHAPE_DECODER: &str = "shape_slat_decoder";
    pub const TEX_DECODER: &str = "tex_slat_decoder";
    /// `texturing_pipeline.json` only: the shape SC-VAE encoder.
    pub const SHAPE_ENCODER: &str = "shape_slat_encoder";
    pub const IMAGE_COND: &str = "image_cond_model";
    /// Not a `pipeline.json` role: the background remover (BiRefNet or RMBG-2.0).
    pub const BACKGROUND_REMOVAL: &str = "background_removal";
}

/// The Hugging Face id of the release's DINOv3 (`args.image_cond_model.args.model_name`).
const DINOV3_REPO: &str = "facebook/dinov3-vitl16-pretrain-lvd1689m";

fn source(dir: &ModelDir, role: &str) -> Result<ModelSource> {
    ModelSource::open(&dir.resolve(role)?).with_context(|| format!("model `{role}`"))
}

/// A flow DiT (`SparseStructureFlowModel`, `SLatFlowModel`, `ElasticSLatFlowModel`).
pub fn flow_model(
    dir: &ModelDir,
    role: &str,
    device: &Device,
    opts: LoadOptions,
) -> Result<FlowDit> {
    let src = source(dir, role)?;
    let dtype = opts.dtype_for(&src.checkpoint, device);
    // The loader's errors name the checkpoint; the role says which of the five flows it is.
    load_flow(&src, dtype, device, opts.memory).with_context(|| format!("model `{role}`"))
}

pub fn ss_decoder(dir: &ModelDir, device: &Device, opts: LoadOptions) -> Result<SsDecoder> {
    let src = source(dir, role::SS_DECODER)?;
    load_ss_decoder(&src, opts.dtype_for(&src.checkpoint, device), device)
}

pub fn shape_decoder(
    dir: &ModelDir,
    device: &Device,
    opts: LoadOptions,
) -> Result<FlexiDualGridVaeDecoder> {
    let src = source(dir, role::SHAPE_DECODER)?;
    load_shape_decoder(&src, opts.dtype_for(&src.checkpoint, device), device)
}

pub fn tex_decoder(
    dir: &ModelDir,
    device: &Device,
    opts: LoadOptions,
) -> Result<SparseUnetVaeDecoder> {
    let src = source(dir, role::TEX_DECODER)?;
    load_unet_decoder(&src, opts.dtype_for(&src.checkpoint, device), device)
}

/// The shape encoder of `texturing_pipeline.json`.
pub fn shape_encoder(
    dir: &ModelDir,
    device: &Device,
    opts: LoadOptions,
) -> Result<FlexiDualGridVaeEncoder> {
    let src = source(dir, role::SHAPE_ENCODER)?;
    load_shape_encoder(&src, opts.dtype_for(&src.checkpoint, device), device)
        .with_context(|| format!("model `{}`", role::SHAPE_ENCODER))
}

/// Where the DINOv3 folder (`config.json` + `model.safetensors`) may be: a stem given for the
/// role in `args.models`, the Hugging Face id (`args.image_cond_model.args.model_name`) below
/// the directory, or a folder named after the role, in the directory or beside the other
/// checkpoints.
fn dinov3_candidates(dir: &ModelDir) -> Vec<PathBuf> {
    let args = &dir.pipeline.args;
    let mut out = Vec::new();
    if let Some(stem) = dir.pipeline.model_stems().get(role::IMAGE_COND) {
        out.push(dir.root.join(stem));
    }
    let repo = args
        .get(role::IMAGE_COND)
        .and_then(|m| m.get("args"))
        .and_then(|a| a.get("model_name"))
        .and_then(|n| n.as_str())
        .unwrap_or(DINOV3_REPO);
    out.push(dir.root.join(repo));
    // In a hub cache the repository is its own snapshot folder.
    if let Some(snapshot) = dir.repo_dirs.get(repo) {
        out.push(snapshot.clone());
    }
    out.push(dir.root.join(role::IMAGE_COND));
    if let Some(stem) = dir.pipeline.model_stems().get(role::SHAPE_DECODER) {
        if let Some(parent) = dir.root.join(stem).parent() {
            out.push(parent.join(role::IMAGE_COND));
        }
    }
    out.dedup();
    out
}

/// Bytes the weights of `role` take on `device` in the compute dtype `opts` gives them, from
/// the checkpoint's header (nothing is loaded). DINOv3 by [`role::IMAGE_COND`].
pub fn weight_bytes(dir: &ModelDir, role: &str, device: &Device, opts: LoadOptions) -> Result<u64> {
    let src = if role == role::IMAGE_COND {
        let candidates = dinov3_candidates(dir);
        let folder = candidates
            .iter()
            .find(|c| c.join("config.json").is_file())
            .with_context(|| format!("{}: DINOv3 not found", dir.root.display()))?;
        ModelSource::open(folder)?
    } else {
        source(dir, role)?
    };
    Ok(checkpoint_bytes(
        &src.checkpoint,
        opts.dtype_for(&src.checkpoint, device),
    ))
}

/// Bytes of `ckpt`'s tensors with its floats in `dtype`.
pub fn checkpoint_bytes(ckpt: &Checkpoint, dtype: DType) -> u64 {
    use safetensors::Dtype;
    ckpt.tensor_infos()
        .iter()
        .map(|info| match info.dtype {
            Dtype::F32 | Dtype::F16 | Dtype::BF16 => (info.numel() * dtype.size_in_bytes()) as u64,
            _ => info.bytes() as u64,
        })
        .sum()
}

/// The DINOv3 feature extractor.
pub fn dinov3(dir: &ModelDir, device: &Device, opts: LoadOptions) -> Result<DinoV3> {
    let folder = dinov3_folder(dir)?;
    let src = ModelSource::open(&folder)?;
    let dtype = opts.dtype_for(&src.checkpoint, device);
    load_dinov3(&src, dtype, device).with_context(|| format!("model `{}`", role::IMAGE_COND))
}

/// The folder the DINOv3 feature extractor is loaded from (see `dinov3_candidates`).
pub fn dinov3_folder(dir: &ModelDir) -> Result<PathBuf> {
    let candidates = dinov3_candidates(dir);
    let Some(folder) = candidates
        .iter()
        .find(|c| c.join("config.json").is_file() && c.join("model.safetensors").is_file())
    else {
        bail!(
            "{}: DINOv3 (`{}`) not found; looked for config.json + model.safetensors in {}",
            dir.root.display(),
            role::IMAGE_COND,
            candidates
                .iter()
                .map(|c| c.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    Ok(folder.clone())
}
