//! A model directory as released on Hugging Face (`microsoft/TRELLIS.2-4B`):
//! `pipeline.json` names each model by a path stem relative to the directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::checkpoint::Checkpoint;

/// `pipeline.json`. Only the fields the loader needs are typed; the sampler settings and
/// normalisation vectors stay in `args` for the pipeline to read.
#[derive(Debug, Clone, Deserialize)]
pub struct PipelineConfig {
    pub name: String,
    pub args: serde_json::Value,
}

impl PipelineConfig {
    /// Role (e.g. `shape_slat_decoder`) → path stem (e.g. `ckpts/shape_dec_next_dc_f16c32_fp16`).
    pub fn model_stems(&self) -> BTreeMap<String, String> {
        self.args
            .get("models")
            .and_then(|m| m.as_object())
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A model directory with its parsed `pipeline.json`.
pub struct ModelDir {
    pub root: PathBuf,
    pub pipeline: PipelineConfig,
}

impl ModelDir {
    pub fn open(root: &Path) -> Result<Self> {
        let path = root.join("pipeline.json");
        if !root.is_dir() {
            bail!("{}: model directory not found", root.display());
        }
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{}: cannot read (a model directory holds pipeline.json and ckpts/)",
                path.display()
            )
        })?;
        let pipeline: PipelineConfig = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a pipeline config", path.display()))?;
        if pipeline.model_stems().is_empty() {
            bail!("{}: no `args.models` entries", path.display());
        }
        Ok(Self {
            root: root.to_path_buf(),
            pipeline,
        })
    }

    /// Path stem of a model role, resolved to a file stem on disk.
    ///
    /// A stem is relative to the directory. The release points one model into another
    /// repository (`microsoft/TRELLIS-image-large/ckpts/ss_dec_conv3d_16l8_fp16`); such a stem
    /// is also looked up without its `owner/repo/` prefix, so that file can sit in this
    /// directory's own `ckpts/`.
    pub fn resolve(&self, role: &str) -> Result<PathBuf> {
        let stems = self.pipeline.model_stems();
        let Some(stem) = stems.get(role) else {
            bail!(
                "{}: pipeline.json has no model `{role}` (it has: {})",
                self.root.display(),
                stems.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        };
        let mut candidates = vec![self.root.join(stem)];
        let parts: Vec<&str> = stem.split('/').collect();
        if parts.len() > 2 {
            candidates.push(self.root.join(parts[2..].join("/")));
        }
        for c in &candidates {
            let mut weights = c.as_os_str().to_os_string();
            weights.push(".safetensors");
            if Path::new(&weights).is_file() {
                return Ok(c.clone());
            }
        }
        bail!(
            "{}: checkpoint for `{role}` not found (looked for {})",
            self.root.display(),
            candidates
                .iter()
                .map(|c| format!("{}.safetensors", c.display()))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    /// Opens the checkpoint of one model role.
    pub fn checkpoint(&self, role: &str) -> Result<Checkpoint> {
        Checkpoint::open_stem(&self.resolve(role)?)
    }
}
