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
use crate::weights::{check_tensors, Checkpoint, ModelConfig, ShapeRecorder};

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

/// A model config whose fields that size tensors can be checked against their plausible
/// ranges ([`super::limits`]) before the model asks for any weight.
pub trait CheckRanges {
    fn check_ranges(&self) -> Result<()>;
}

impl CheckRanges for DitConfig {
    fn check_ranges(&self) -> Result<()> {
        DitConfig::check_ranges(self)
    }
}

impl CheckRanges for DinoV3Config {
    fn check_ranges(&self) -> Result<()> {
        DinoV3Config::check_ranges(self)
    }
}

impl CheckRanges for SsDecoderConfig {
    fn check_ranges(&self) -> Result<()> {
        SsDecoderConfig::check_ranges(self)
    }
}

impl CheckRanges for UnetDecoderArgs {
    fn check_ranges(&self) -> Result<()> {
        DecoderConfig::from_unet(self)?;
        Ok(())
    }
}

impl CheckRanges for FlexiDualGridDecoderArgs {
    fn check_ranges(&self) -> Result<()> {
        DecoderConfig::from_flexi_dual_grid(self)?;
        Ok(())
    }
}

impl CheckRanges for FlexiDualGridEncoderArgs {
    fn check_ranges(&self) -> Result<()> {
        EncoderConfig::from_flexi_dual_grid(self)?;
        Ok(())
    }
}

/// The model's constructor arguments as its typed config, its sizes checked, with an error
/// naming the checkpoint (its config file), the field and the accepted range.
pub fn config<T: serde::de::DeserializeOwned + CheckRanges>(source: &ModelSource) -> Result<T> {
    let bad = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!(
            "{}: bad `args` for {}: {e}",
            source.path.display(),
            source.class
        )
    };
    let cfg: T = serde_json::from_value(source.args.clone()).map_err(|e| bad(&e))?;
    cfg.check_ranges().map_err(|e| bad(&format!("{e:#}")))?;
    Ok(cfg)
}

/// `e` starting with the checkpoint's path, once.
fn naming_file(source: &ModelSource, e: anyhow::Error) -> anyhow::Error {
    let path = source.path.display().to_string();
    let text = format!("{e:#}");
    if text.starts_with(&path) || text.contains(&format!("{path}.")) {
        e
    } else {
        anyhow::anyhow!("{path}: {text}")
    }
}

/// The checkpoint's class must be one this loader builds: a config naming another class (or
/// none we know) is refused, not ignored.
fn expect_class(source: &ModelSource, accepted: &[&str]) -> Result<()> {
    if !accepted.contains(&source.class.as_str()) {
        bail!(
            "{}: model class `{}` cannot be loaded here (expected {})",
            source.path.display(),
            source.class,
            accepted.join(" or ")
        );
    }
    Ok(())
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
    match (built, strict.finish()) {
        (Ok(model), Ok(())) => Ok(model),
        // A build stopped midway leaves every later key "unexpected": only the tensors it
        // did ask for (missing, mis-shaped) say more than its own error.
        (Err(e), Err(keys)) if keys.missing.is_empty() && keys.misshaped.is_empty() => {
            Err(naming_file(source, e.into()))
        }
        (Err(e), Ok(())) => Err(naming_file(source, e.into())),
        (_, Err(keys)) => Err(keys.into()),
    }
}

/// The sparse-structure decoder of a `SparseStructureDecoder` checkpoint, weights in `dtype`.
pub fn load_ss_decoder(source: &ModelSource, dtype: DType, device: &Device) -> Result<SsDecoder> {
    expect_class(source, &["SparseStructureDecoder"])?;
    let cfg: SsDecoderConfig = config(source)?;
    load_strict(source, dtype, device, |vb| SsDecoder::new(&cfg, vb))
}

/// The shape decoder of a `FlexiDualGridVaeDecoder` checkpoint, weights in `dtype`.
pub fn load_shape_decoder(
    source: &ModelSource,
    dtype: DType,
    device: &Device,
) -> Result<FlexiDualGridVaeDecoder> {
    expect_class(source, &["FlexiDualGridVaeDecoder"])?;
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
    expect_class(source, &["SparseUnetVaeDecoder"])?;
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
    expect_class(
        source,
        &[
            "SparseStructureFlowModel",
            "SLatFlowModel",
            "ElasticSLatFlowModel",
        ],
    )?;
    let cfg: DitConfig = config(source)?;
    FlowDit::load_with(&cfg, &source.checkpoint, dtype, device, memory)
        .map_err(|e| naming_file(source, e))
}

/// The DINOv3 feature extractor of a Hugging Face folder (`DINOv3ViTModel`), weights in `dtype`.
pub fn load_dinov3(source: &ModelSource, dtype: DType, device: &Device) -> Result<DinoV3> {
    expect_class(source, &["DINOv3ViTModel"])?;
    let cfg: DinoV3Config = config(source)?;
    DinoV3::load(&cfg, &source.checkpoint, dtype, device).map_err(|e| naming_file(source, e))
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
            cfg.check_ranges().map_err(|e| parse(&e.to_string()))?;
            DinoV3::new(&cfg, vb)?;
            Ok(super::dinov3::UNUSED_KEYS)
        }
        "SparseStructureFlowModel" | "SLatFlowModel" | "ElasticSLatFlowModel" => {
            let cfg: DitConfig =
                serde_json::from_value(args.clone()).map_err(|e| parse(&e.to_string()))?;
            cfg.check_ranges().map_err(|e| parse(&e.to_string()))?;
            FlowDit::new(&cfg, vb)?;
            Ok(super::dit::UNUSED_KEYS)
        }
        "SparseStructureDecoder" => {
            let cfg: SsDecoderConfig =
                serde_json::from_value(args.clone()).map_err(|e| parse(&e.to_string()))?;
            cfg.check_ranges().map_err(|e| parse(&e.to_string()))?;
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

/// Whether `source` would load: its class is supported, its config's sizes are plausible, and
/// the checkpoint holds exactly the tensors (names and shapes) the model asks for. The model is
/// built shape-only ([`ShapeRecorder`]), so no weight is read or allocated. What `inspect`
/// checks of each model of a directory.
pub fn check_source(source: &ModelSource) -> Result<()> {
    let stored_elements = source
        .checkpoint
        .tensor_infos()
        .iter()
        .map(|t| t.numel())
        .fold(0usize, usize::saturating_add);
    let rec = ShapeRecorder::with_budget(stored_elements);
    let unused = build_model(
        &source.class,
        &source.args,
        rec.var_builder(DType::F32, &Device::Cpu),
    )
    .map_err(|e| anyhow::anyhow!("{}: {e:#}", source.path.display()))?;
    let requested = rec.requested();
    let stored: Vec<(String, Vec<usize>)> = source
        .checkpoint
        .tensor_infos()
        .into_iter()
        .filter(|t| {
            !unused.contains(&t.name.as_str()) || requested.iter().any(|(r, _)| *r == t.name)
        })
        .map(|t| (t.name, t.shape))
        .collect();
    // One line: the counts; `generate` and `dev forward` list the keys.
    check_tensors(
        &source.checkpoint.path.display().to_string(),
        &requested,
        &stored,
    )
    .map_err(|e| anyhow::anyhow!("{}", e.to_string().lines().next().unwrap_or_default()))
}
