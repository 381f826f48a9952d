//! Loading one model of a model directory by its `pipeline.json` role, strictly and in f32.
//! Each stage loads what it needs and drops it when done, so peak memory is one stage's.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};

use crate::models::dinov3::{DinoV3, DinoV3Config};
use crate::models::dit::{DitConfig, FlowDit};
use crate::models::forward::{load_shape_decoder, load_ss_decoder, load_unet_decoder, ModelSource};
use crate::models::sc_vae::{FlexiDualGridVaeDecoder, SparseUnetVaeDecoder};
use crate::models::ss_decoder::SsDecoder;
use crate::weights::ModelDir;

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
    pub const IMAGE_COND: &str = "image_cond_model";
}

/// The Hugging Face id of the release's DINOv3 (`args.image_cond_model.args.model_name`).
const DINOV3_REPO: &str = "facebook/dinov3-vitl16-pretrain-lvd1689m";

fn source(dir: &ModelDir, role: &str) -> Result<ModelSource> {
    ModelSource::open(&dir.resolve(role)?).with_context(|| format!("model `{role}`"))
}

/// A flow DiT (`SparseStructureFlowModel`, `SLatFlowModel`, `ElasticSLatFlowModel`).
pub fn flow_model(dir: &ModelDir, role: &str, device: &Device) -> Result<FlowDit> {
    let src = source(dir, role)?;
    let cfg: DitConfig = serde_json::from_value(src.args.clone())
        .with_context(|| format!("{}: bad `args` for {}", src.path.display(), src.class))?;
    FlowDit::load(&cfg, &src.checkpoint, DType::F32, device)
        .with_context(|| format!("loading `{role}` from {}", src.path.display()))
}

pub fn ss_decoder(dir: &ModelDir, device: &Device) -> Result<SsDecoder> {
    load_ss_decoder(&source(dir, role::SS_DECODER)?, device)
}

pub fn shape_decoder(dir: &ModelDir, device: &Device) -> Result<FlexiDualGridVaeDecoder> {
    load_shape_decoder(&source(dir, role::SHAPE_DECODER)?, device)
}

pub fn tex_decoder(dir: &ModelDir, device: &Device) -> Result<SparseUnetVaeDecoder> {
    load_unet_decoder(&source(dir, role::TEX_DECODER)?, device)
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
    out.push(dir.root.join(role::IMAGE_COND));
    if let Some(stem) = dir.pipeline.model_stems().get(role::SHAPE_DECODER) {
        if let Some(parent) = dir.root.join(stem).parent() {
            out.push(parent.join(role::IMAGE_COND));
        }
    }
    out.dedup();
    out
}

/// The DINOv3 feature extractor.
pub fn dinov3(dir: &ModelDir, device: &Device) -> Result<DinoV3> {
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
    let src = ModelSource::open(folder)?;
    let cfg: DinoV3Config = serde_json::from_value(src.args.clone())
        .with_context(|| format!("{}: bad config.json", folder.display()))?;
    DinoV3::load(&cfg, &src.checkpoint, DType::F32, device)
        .with_context(|| format!("loading DINOv3 from {}", folder.display()))
}
