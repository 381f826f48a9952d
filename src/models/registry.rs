//! The model registry: what network a checkpoint on disk holds (upstream class and constructor
//! arguments) and loading it by class, strictly, in a given dtype. The pipeline loads its models
//! by role through these loaders; `dev forward`, the tests and the benches load them by path.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use candle_core::{DType, Device};

use super::dinov3::{DinoV3, DinoV3Config};
use super::dit::{DitConfig, FlowDit};
use super::sc_vae::{
    DecoderConfig, EncoderConfig, FlexiDualGridDecoderArgs, FlexiDualGridEncoderArgs,
    FlexiDualGridVaeDecoder, FlexiDualGridVaeEncoder, SparseUnetVaeDecoder, UnetDecoderArgs,
};
use super::ss_decoder::{SsDecoder, SsDecoderConfig};
use super::WeightMemory;
use crate::weights::{Checkpoint, ModelConfig};

/// A checkpoint: upstream format (`PATH.json` + `PATH.safetensors`) or a model folder
/// (`config.json` + `model.safetensors`, a Hugging Face download of DINOv3 or BiRefNet; or
/// `config.json` + `weights.safetensors`, the golden BiRefNet layout).
pub struct ModelSource {
    /// Upstream class name (`SparseStructureDecoder`, …), or for a folder `BiRefNet` (found by
    /// its tensor names) or the `architectures` entry of its `config.json`.
    pub class: String,
    pub checkpoint: Checkpoint,
    /// Constructor arguments (`args` of the upstream json, or the HF `config.json`).
    pub args: serde_json::Value,
    pub path: PathBuf,
}

impl ModelSource {
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_dir() {
            let config = path.join("config.json");
            let weights = ["model.safetensors", "weights.safetensors"]
                .iter()
                .map(|f| path.join(f))
                .find(|p| p.is_file());
            let (true, Some(weights)) = (config.is_file(), weights) else {
                bail!(
                    "{}: a model folder needs config.json and model.safetensors (or \
                     weights.safetensors)",
                    path.display()
                );
            };
            let text = std::fs::read_to_string(&config)
                .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", config.display()))?;
            let args: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", config.display()))?;
            let checkpoint = Checkpoint::open_file(&weights)?;
            let is_birefnet = checkpoint
                .tensor_infos()
                .iter()
                .any(|t| t.name == "bb.patch_embed.proj.weight");
            let class = if is_birefnet {
                "BiRefNet"
            } else {
                args.get("architectures")
                    .and_then(|a| a.get(0))
                    .and_then(|a| a.as_str())
                    .unwrap_or("DINOv3ViTModel")
            }
            .to_string();
            return Ok(Self {
                class,
                checkpoint,
                args,
                path: path.to_path_buf(),
            });
        }
        let checkpoint = Checkpoint::open_stem(path)?;
        let ModelConfig { name, args } = checkpoint
            .config
            .clone()
            .ok_or_else(|| anyhow::anyhow!("{}: no model config", path.display()))?;
        Ok(Self {
            class: name,
            checkpoint,
            args,
            path: path.to_path_buf(),
        })
    }
}

/// The classes this port runs, for error messages.
pub const SUPPORTED: &[&str] = &[
    "BiRefNet",
    "DINOv3ViTModel",
    "SparseStructureFlowModel",
    "SLatFlowModel",
    "ElasticSLatFlowModel",
    "SparseStructureDecoder",
    "FlexiDualGridVaeDecoder",
    "SparseUnetVaeDecoder",
    "FlexiDualGridVaeEncoder",
];

/// The model's constructor arguments as its typed config, with an error naming the checkpoint.
pub fn config<T: serde::de::DeserializeOwned>(source: &ModelSource) -> Result<T> {
    serde_json::from_value(source.args.clone()).map_err(|e| {
        anyhow::anyhow!(
            "{}: bad `args` for {}: {e}",
            source.path.display(),
            source.class
        )
    })
}

/// Builds a model from a strict loader: any missing, unexpected or mis-shaped tensor is an error
/// naming the checkpoint and the keys.
fn load_strict<M>(
    source: &ModelSource,
    dtype: DType,
    device: &Device,
    build: impl FnOnce(candle_nn::VarBuilder) -> candle_core::Result<M>,
) -> Result<M> {
    let strict = source.checkpoint.strict();
    let built = build(strict.var_builder(dtype, device));
    strict.finish()?;
    built.map_err(|e| anyhow::anyhow!("{}: {e}", source.path.display()))
}

/// The sparse-structure decoder of a `SparseStructureDecoder` checkpoint, weights in `dtype`.
pub fn load_ss_decoder(source: &ModelSource, dtype: DType, device: &Device) -> Result<SsDecoder> {
    let cfg: SsDecoderConfig = config(source)?;
    load_strict(source, dtype, device, |vb| SsDecoder::new(&cfg, vb))
}

/// The shape decoder of a `FlexiDualGridVaeDecoder` checkpoint, weights in `dtype`.
pub fn load_shape_decoder(
    source: &ModelSource,
    dtype: DType,
    device: &Device,
) -> Result<FlexiDualGridVaeDecoder> {
    let args: FlexiDualGridDecoderArgs = config(source)?;
    let cfg = DecoderConfig::from_flexi_dual_grid(&args)
        .map_err(|e| anyhow::anyhow!("{}: {e}", source.path.display()))?;
    let net = load_strict(source, dtype, device, |vb| {
        SparseUnetVaeDecoder::new(&cfg, vb)
    })?;
    Ok(FlexiDualGridVaeDecoder {
        net,
        resolution: args.resolution,
        voxel_margin: args.voxel_margin,
    })
}

/// The decoder of a `SparseUnetVaeDecoder` checkpoint (the texture decoder), weights in `dtype`.
pub fn load_unet_decoder(
    source: &ModelSource,
    dtype: DType,
    device: &Device,
) -> Result<SparseUnetVaeDecoder> {
    let args: UnetDecoderArgs = config(source)?;
    let cfg = DecoderConfig::from_unet(&args)
        .map_err(|e| anyhow::anyhow!("{}: {e}", source.path.display()))?;
    load_strict(source, dtype, device, |vb| {
        SparseUnetVaeDecoder::new(&cfg, vb)
    })
}

/// The shape encoder of a `FlexiDualGridVaeEncoder` checkpoint (texturing), weights in `dtype`.
pub fn load_shape_encoder(
    source: &ModelSource,
    dtype: DType,
    device: &Device,
) -> Result<FlexiDualGridVaeEncoder> {
    let args: FlexiDualGridEncoderArgs = config(source)?;
    let cfg = EncoderConfig::from_flexi_dual_grid(&args)
        .map_err(|e| anyhow::anyhow!("{}: {e}", source.path.display()))?;
    load_strict(source, dtype, device, |vb| {
        FlexiDualGridVaeEncoder::new(&cfg, vb)
    })
}

/// A flow DiT (`SparseStructureFlowModel`, `SLatFlowModel`, `ElasticSLatFlowModel`), weights
/// in `dtype`, held as `memory` says.
pub fn load_flow(
    source: &ModelSource,
    dtype: DType,
    device: &Device,
    memory: WeightMemory,
) -> Result<FlowDit> {
    let cfg: DitConfig = config(source)?;
    FlowDit::load_with(&cfg, &source.checkpoint, dtype, device, memory)
}

/// The DINOv3 feature extractor of a Hugging Face folder (`DINOv3ViTModel`), weights in `dtype`.
pub fn load_dinov3(source: &ModelSource, dtype: DType, device: &Device) -> Result<DinoV3> {
    let cfg: DinoV3Config = config(source)?;
    DinoV3::load(&cfg, &source.checkpoint, dtype, device)
}

/// Builds the model of upstream class `class` with constructor arguments `args` from `vb`,
/// and drops it: what every loader does, for shape-only checks and load benchmarks. Returns
/// the names of the keys the model's loader leaves unused on purpose.
pub fn build_model(
    class: &str,
    args: &serde_json::Value,
    vb: candle_nn::VarBuilder,
) -> Result<&'static [&'static str]> {
    let parse = |what: &str| anyhow::anyhow!("bad `args` for {class} ({what})");
    match class {
        "DINOv3ViTModel" => {
            let cfg: DinoV3Config =
                serde_json::from_value(args.clone()).map_err(|e| parse(&e.to_string()))?;
            DinoV3::new(&cfg, vb)?;
            Ok(super::dinov3::UNUSED_KEYS)
        }
        "SparseStructureFlowModel" | "SLatFlowModel" | "ElasticSLatFlowModel" => {
            let cfg: DitConfig =
                serde_json::from_value(args.clone()).map_err(|e| parse(&e.to_string()))?;
            FlowDit::new(&cfg, vb)?;
            Ok(super::dit::UNUSED_KEYS)
        }
        "SparseStructureDecoder" => {
            let cfg: SsDecoderConfig =
                serde_json::from_value(args.clone()).map_err(|e| parse(&e.to_string()))?;
            SsDecoder::new(&cfg, vb)?;
            Ok(&[])
        }
        "FlexiDualGridVaeDecoder" => {
            let a: FlexiDualGridDecoderArgs =
                serde_json::from_value(args.clone()).map_err(|e| parse(&e.to_string()))?;
            SparseUnetVaeDecoder::new(&DecoderConfig::from_flexi_dual_grid(&a)?, vb)?;
            Ok(&[])
        }
        "SparseUnetVaeDecoder" => {
            let a: UnetDecoderArgs =
                serde_json::from_value(args.clone()).map_err(|e| parse(&e.to_string()))?;
            SparseUnetVaeDecoder::new(&DecoderConfig::from_unet(&a)?, vb)?;
            Ok(&[])
        }
        "FlexiDualGridVaeEncoder" => {
            let a: FlexiDualGridEncoderArgs =
                serde_json::from_value(args.clone()).map_err(|e| parse(&e.to_string()))?;
            FlexiDualGridVaeEncoder::new(&EncoderConfig::from_flexi_dual_grid(&a)?, vb)?;
            Ok(&[])
        }
        other => bail!(
            "model class `{other}` is not supported (supported: {})",
            SUPPORTED.join(", ")
        ),
    }
}
