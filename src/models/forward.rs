//! Run one checkpoint on named input tensors and return named outputs: the engine behind
//! `trellis2 dev forward`, which reproduces the golden `golden/<role>.io.safetensors` files.
//! Input and output names are those of the golden files (`x`, `x.feats`, `coords`, `t`, `cond`,
//! `concat_cond.feats`, `z`, `latent.feats`, `latent.coords`, `pixel_values`, `subs.*` →
//! `out`, `out.feats`, `logits`, `occupancy`, `features`, `out.raw_feats`, `out.coords`, …).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

use crate::weights::{Checkpoint, ModelConfig};

/// A checkpoint to run: upstream format (`PATH.json` + `PATH.safetensors`) or a Hugging Face
/// model folder (`config.json` + `model.safetensors`, for DINOv3).
pub struct ModelSource {
    /// Upstream class name (`SparseStructureDecoder`, …), or `DINOv3ViTModel` for a HF folder.
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
            let weights = path.join("model.safetensors");
            if !config.is_file() || !weights.is_file() {
                bail!(
                    "{}: a model folder needs config.json and model.safetensors",
                    path.display()
                );
            }
            let text = std::fs::read_to_string(&config)
                .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", config.display()))?;
            let args: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", config.display()))?;
            let class = args
                .get("architectures")
                .and_then(|a| a.get(0))
                .and_then(|a| a.as_str())
                .unwrap_or("DINOv3ViTModel")
                .to_string();
            return Ok(Self {
                class,
                checkpoint: Checkpoint::open_file(&weights)?,
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

/// Named tensors given to a model.
pub struct Inputs<'a> {
    /// Where they came from, for error messages.
    pub source: &'a str,
    pub tensors: &'a HashMap<String, Tensor>,
}

impl Inputs<'_> {
    /// A required input, with an error naming the file and the tensor.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| {
            let mut have: Vec<&String> = self.tensors.keys().collect();
            have.sort();
            anyhow::anyhow!(
                "{}: no input tensor `{name}` (it has: {})",
                self.source,
                have.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }

    pub fn optional(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }
}

/// Output tensors in the golden files' names.
pub type Outputs = Vec<(String, Tensor)>;

/// Classes `dev forward` knows, for error messages.
pub const SUPPORTED: &[&str] = &[
    "DINOv3ViTModel",
    "SparseStructureFlowModel",
    "SLatFlowModel",
    "ElasticSLatFlowModel",
];

/// Runs the model at `source` on `inputs` on `device` (CPU f32 for parity).
pub fn forward(source: &ModelSource, inputs: &Inputs, device: &Device) -> Result<Outputs> {
    match source.class.as_str() {
        "DINOv3ViTModel" => dinov3_forward(source, inputs, device),
        "SparseStructureFlowModel" | "SLatFlowModel" | "ElasticSLatFlowModel" => {
            flow_forward(source, inputs, device)
        }
        other => bail!(
            "{}: model class `{other}` is not supported by dev forward (supported: {})",
            source.path.display(),
            if SUPPORTED.is_empty() {
                "none yet".to_string()
            } else {
                SUPPORTED.join(", ")
            }
        ),
    }
}

fn config<T: serde::de::DeserializeOwned>(source: &ModelSource) -> Result<T> {
    serde_json::from_value(source.args.clone()).map_err(|e| {
        anyhow::anyhow!(
            "{}: arguments do not fit {}: {e}",
            source.path.display(),
            source.class
        )
    })
}

/// `pixel_values [B, 3, H, W]` → `features [B, 5 + HW/256, C]`.
fn dinov3_forward(source: &ModelSource, inputs: &Inputs, device: &Device) -> Result<Outputs> {
    use super::dinov3::{DinoV3, DinoV3Config};
    let cfg: DinoV3Config = config(source)?;
    let model = DinoV3::load(&cfg, &source.checkpoint, DType::F32, device)?;
    let pixels = inputs.get("pixel_values")?.to_dtype(DType::F32)?;
    Ok(vec![("features".into(), model.features(&pixels)?)])
}

/// Dense: `x, t, cond → out`; sparse: `x.feats, coords, t, cond[, concat_cond.feats] → out.feats`.
fn flow_forward(source: &ModelSource, inputs: &Inputs, device: &Device) -> Result<Outputs> {
    use super::dit::{Condition, DitConfig, FlowDit, FlowInput};
    let cfg: DitConfig = config(source)?;
    let model = FlowDit::load(&cfg, &source.checkpoint, DType::F32, device)?;
    let f32 = |name: &str| -> Result<Tensor> { Ok(inputs.get(name)?.to_dtype(DType::F32)?) };
    let t = f32("t")?;
    let kv = model.cond_kv(&f32("cond")?)?;
    if source.class == "SparseStructureFlowModel" {
        let x = f32("x")?;
        let out = model.forward(&FlowInput::Dense(&x), &t, &Condition::Tokens(&kv))?;
        return Ok(vec![("out".into(), out)]);
    }
    let feats = f32("x.feats")?;
    let coords = inputs.get("coords")?;
    let concat = match inputs.optional("concat_cond.feats") {
        Some(c) => Some(c.to_dtype(DType::F32)?),
        None => None,
    };
    let input = FlowInput::Sparse {
        feats: &feats,
        coords,
        concat_cond: concat.as_ref(),
    };
    let out = model.forward(&input, &t, &Condition::Tokens(&kv))?;
    Ok(vec![("out.feats".into(), out)])
}
