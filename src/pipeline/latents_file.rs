//! Latents files (`--save-latents`, `--from-latents`): every named intermediate of a run under
//! the golden pipeline's key names, with the decode resolution in the metadata (`resolution`,
//! a JSON number, as in the golden files). Only one metadata key is written: safetensors
//! stores metadata from a hash map, and one entry keeps the bytes identical run to run.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};

use super::output::Latents;
use crate::export::tensors::{read_tensors, write_tensors};

/// A latents file read back.
pub struct SavedLatents {
    pub tensors: HashMap<String, Tensor>,
    pub resolution: usize,
}

impl SavedLatents {
    /// The shape latent's coordinates: `shape_hr.coords` (cascades) or `shape.coords`.
    pub fn shape_coords(&self) -> Result<&Tensor> {
        self.tensors
            .get("shape_hr.coords")
            .or_else(|| self.tensors.get("shape.coords"))
            .context("latents file has neither `shape_hr.coords` nor `shape.coords`")
    }

    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .with_context(|| format!("latents file has no `{name}`"))
    }
}

/// Writes `latents` atomically with the decode resolution.
pub fn write_latents(path: &Path, latents: &Latents, resolution: u32) -> Result<()> {
    let meta = HashMap::from([("resolution".to_string(), resolution.to_string())]);
    write_tensors(path, &latents.to_cpu()?, Some(meta))
}

/// Reads a latents file (ours or a golden `pipeline_<type>.safetensors`).
pub fn read_latents(path: &Path, device: &Device) -> Result<SavedLatents> {
    let tensors = read_tensors(path, device)?;
    let bytes = crate::files::read_regular(path, u64::MAX)?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a valid safetensors file: {e}", path.display()))?;
    let Some(text) = meta.metadata().as_ref().and_then(|m| m.get("resolution")) else {
        bail!(
            "{}: no `resolution` in the metadata; not a latents file written by --save-latents",
            path.display()
        );
    };
    let resolution: usize = text.trim().parse().with_context(|| {
        format!(
            "{}: metadata `resolution` must be a whole number, got {text}",
            path.display()
        )
    })?;
    if resolution == 0 {
        bail!("{}: metadata `resolution` must be positive", path.display());
    }
    Ok(SavedLatents {
        tensors,
        resolution,
    })
}
