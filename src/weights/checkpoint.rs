//! One model checkpoint: `<stem>.safetensors`, memory-mapped, plus its `<stem>.json` config.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::strict::{StrictLoad, TensorSource};

/// `<stem>.json`: the upstream class name and its constructor arguments.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
pub struct ModelConfig {
    pub name: String,
    #[serde(default)]
    pub args: serde_json::Value,
}

impl ModelConfig {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read model config", path.display()))?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: not a model config ({{\"name\": ..., \"args\": ...}})",
                path.display()
            )
        })
    }
}

/// Safetensors metadata key holding the model config (`{"name", "args"}`) in converted files.
pub const CONFIG_METADATA_KEY: &str = "trellis2.config";
/// Safetensors metadata key marking a file written by `trellis2 convert`.
pub const LAYOUT_METADATA_KEY: &str = "trellis2.layout";
/// Value of [`LAYOUT_METADATA_KEY`] for the current converted layout.
pub const CONVERTED_LAYOUT: &str = "converted-v1";

/// How a checkpoint is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// As released: upstream keys and dtypes, config in a `.json` beside the file.
    Released,
    /// Written by `trellis2 convert`: upstream keys, one dtype, config in the file's metadata.
    Converted,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Layout::Released => "released (config in a .json beside it)",
            Layout::Converted => "converted by trellis2 (config in the safetensors metadata)",
        })
    }
}

/// Name, dtype and shape of one stored tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().fold(1usize, |n, &d| n.saturating_mul(d))
    }

    pub fn bytes(&self) -> usize {
        self.numel() * self.dtype.bitsize() / 8
    }
}

struct Mapped(MmapedSafetensors);

impl TensorSource for Mapped {
    fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.0.get(name).ok().map(|v| v.shape().to_vec())
    }

    fn load(&self, name: &str, device: &Device) -> candle_core::Result<Tensor> {
        self.0.load(name, device)
    }

    fn stores_float(&self, name: &str) -> bool {
        use safetensors::Dtype;
        self.0.get(name).is_ok_and(|v| {
            matches!(
                v.dtype(),
                Dtype::F16
                    | Dtype::BF16
                    | Dtype::F32
                    | Dtype::F64
                    | Dtype::F8_E4M3
                    | Dtype::F8_E5M2
                    | Dtype::I64
            )
        })
    }

    fn all(&self) -> Vec<(String, Vec<usize>)> {
        self.0
            .tensors()
            .into_iter()
            .map(|(n, v)| (n, v.shape().to_vec()))
            .collect()
    }
}

/// A memory-mapped safetensors checkpoint and, when present, its model config.
pub struct Checkpoint {
    pub path: PathBuf,
    pub config: Option<ModelConfig>,
    pub layout: Layout,
    /// The file's `__metadata__`.
    pub metadata: std::collections::HashMap<String, String>,
    tensors: Arc<Mapped>,
}

impl Checkpoint {
    /// The weights file of a checkpoint stem, `<stem>.safetensors` (what [`Self::open_stem`]
    /// opens).
    pub fn weights_path(stem: &Path) -> PathBuf {
        with_suffix(stem, ".safetensors")
    }

    /// Opens `<stem>.safetensors` with its config: `<stem>.json` (released layout) or the
    /// file's own metadata (converted layout); one of them is required.
    pub fn open_stem(stem: &Path) -> Result<Self> {
        let json = with_suffix(stem, ".json");
        let weights = Self::weights_path(stem);
        if !weights.is_file() {
            bail!("{}: checkpoint not found", weights.display());
        }
        let mut ckpt = Self::open_file(&weights)?;
        if ckpt.config.is_none() {
            ckpt.config = Some(ModelConfig::read(&json)?);
        }
        Ok(ckpt)
    }

    /// Opens one safetensors file; its config is read from the `.json` beside it if there is one.
    pub fn open_file(path: &Path) -> Result<Self> {
        if let Some(why) = crate::files::unusable(path) {
            bail!("{}: {why}", path.display());
        }
        let meta = std::fs::metadata(path)
            .with_context(|| format!("{}: cannot open checkpoint", path.display()))?;
        if meta.len() < 8 {
            bail!(
                "{}: not a safetensors file ({} bytes)",
                path.display(),
                meta.len()
            );
        }
        // SAFETY: the mapping is read-only; like every mmap-based loader we rely on the file not
        // being truncated by another process while the model is loaded.
        let mapped = unsafe { MmapedSafetensors::new(path) }.map_err(|e| {
            // candle wraps the cause with the path, which we already print first.
            let cause = match e {
                candle_core::Error::WithPath { inner, .. } => inner.to_string(),
                other => other.to_string(),
            };
            anyhow::anyhow!("{}: not a valid safetensors file: {cause}", path.display())
        })?;
        let metadata = read_metadata(path)?;
        let layout = match metadata.get(LAYOUT_METADATA_KEY) {
            Some(_) => Layout::Converted,
            None => Layout::Released,
        };
        let json = path.with_extension("json");
        let config = match metadata.get(CONFIG_METADATA_KEY) {
            Some(text) => Some(serde_json::from_str(text).with_context(|| {
                format!(
                    "{}: metadata `{CONFIG_METADATA_KEY}` is not a model config",
                    path.display()
                )
            })?),
            None if json.is_file() => Some(ModelConfig::read(&json)?),
            None => None,
        };
        Ok(Self {
            path: path.to_path_buf(),
            config,
            layout,
            metadata,
            tensors: Arc::new(Mapped(mapped)),
        })
    }

    /// All stored tensors, sorted by name.
    pub fn tensor_infos(&self) -> Vec<TensorInfo> {
        let mut infos: Vec<TensorInfo> = self
            .tensors
            .0
            .tensors()
            .into_iter()
            .map(|(name, view)| TensorInfo {
                name,
                dtype: view.dtype(),
                shape: view.shape().to_vec(),
            })
            .collect();
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        infos
    }

    /// One tensor, cast to `dtype` (e.g. bf16/f16 on disk → f32 for the CPU reference).
    pub fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let t = self
            .tensors
            .0
            .load(name, device)
            .with_context(|| format!("{}: tensor {name}", self.path.display()))?;
        Ok(t.to_dtype(dtype)?)
    }

    /// A strict loader over this checkpoint: build the model from `strict.var_builder(..)`,
    /// then call `strict.finish()`.
    pub fn strict(&self) -> StrictLoad {
        StrictLoad::new(self.path.display().to_string(), self.tensors.clone())
    }

    /// Class name from the config, if known.
    pub fn class_name(&self) -> Option<&str> {
        self.config.as_ref().map(|c| c.name.as_str())
    }
}

/// The `__metadata__` of a safetensors file (already validated by the mmap loader).
fn read_metadata(path: &Path) -> Result<std::collections::HashMap<String, String>> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("{}: cannot open checkpoint", path.display()))?;
    // SAFETY: read-only mapping, as in `open_file`.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("{}: cannot map", path.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&map)
        .map_err(|e| anyhow::anyhow!("{}: not a valid safetensors file: {e}", path.display()))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

fn with_suffix(stem: &Path, suffix: &str) -> PathBuf {
    let mut s = stem.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}
