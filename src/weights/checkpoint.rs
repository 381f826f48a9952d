//! One model checkpoint: `<stem>.safetensors`, memory-mapped, plus its `<stem>.json` config.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::strict::{StrictLoad, TensorSource};

/// `<stem>.json`: the upstream class name and its constructor arguments.
#[derive(Debug, Clone, Deserialize, PartialEq)]
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

/// Name, dtype and shape of one stored tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
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
    tensors: Arc<Mapped>,
}

impl Checkpoint {
    /// Opens `<stem>.safetensors` and `<stem>.json` (both required), the released layout.
    pub fn open_stem(stem: &Path) -> Result<Self> {
        let json = with_suffix(stem, ".json");
        let weights = with_suffix(stem, ".safetensors");
        if !weights.is_file() {
            bail!("{}: checkpoint not found", weights.display());
        }
        let config = ModelConfig::read(&json)?;
        let mut ckpt = Self::open_file(&weights)?;
        ckpt.config = Some(config);
        Ok(ckpt)
    }

    /// Opens one safetensors file; its config is read from the `.json` beside it if there is one.
    pub fn open_file(path: &Path) -> Result<Self> {
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
        let json = path.with_extension("json");
        let config = if json.is_file() {
            Some(ModelConfig::read(&json)?)
        } else {
            None
        };
        Ok(Self {
            path: path.to_path_buf(),
            config,
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

fn with_suffix(stem: &Path, suffix: &str) -> PathBuf {
    let mut s = stem.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}
