//! A model directory as released on Hugging Face (`microsoft/TRELLIS.2-4B`):
//! `pipeline.json` names each model by a path stem relative to the directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::checkpoint::Checkpoint;
use super::rembg::RembgModel;

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
#[derive(Clone, Debug)]
pub struct ModelDir {
    pub root: PathBuf,
    pub pipeline: PipelineConfig,
    /// Local folders of other hub repositories (`owner/name` → folder) the pipeline points to:
    /// the SS decoder's `microsoft/TRELLIS-image-large`, DINOv3, the background removers. In the
    /// hub cache each repository has its own snapshot folder.
    pub repo_dirs: BTreeMap<String, PathBuf>,
}

impl ModelDir {
    pub fn open(root: &Path) -> Result<Self> {
        Self::open_config(root, "pipeline.json")
    }

    /// A model directory described by another pipeline file of the release
    /// (`texturing_pipeline.json`: the same layout, other models).
    pub fn open_config(root: &Path, file: &str) -> Result<Self> {
        let path = root.join(file);
        if !root.is_dir() {
            bail!("{}: model directory not found", root.display());
        }
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{}: cannot read (a model directory holds {file} and ckpts/)",
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
            repo_dirs: BTreeMap::new(),
        })
    }

    /// Where to find repository `repo` (`owner/name`) when this directory does not hold it.
    pub fn with_repo_dir(mut self, repo: &str, dir: &Path) -> Self {
        self.repo_dirs.insert(repo.to_string(), dir.to_path_buf());
        self
    }

    /// The folder (`config.json` + `model.safetensors`) of the image encoder the pipeline loads
    /// by name (`role` = `image_cond_model`): `<root>/<owner>/<name>/` if this directory holds
    /// it, else its registered repository folder.
    pub fn hf_model_dir(&self, role: &str) -> Result<PathBuf> {
        let repo = super::hub::hf_model_repo(&self.pipeline, role, super::hub::DINOV3_REPO);
        self.repo_folder(role, &repo)
    }

    /// The folder of background-removal checkpoint `model`, looked up like
    /// [`Self::hf_model_dir`]. The pipeline's own `rembg_model` name is deliberately not used:
    /// see [`RembgModel`] for why the default differs from the release.
    pub fn rembg_dir(&self, model: RembgModel) -> Result<PathBuf> {
        self.repo_folder(&format!("background remover {model}"), model.repo())
    }

    fn repo_folder(&self, what: &str, repo: &str) -> Result<PathBuf> {
        let mut candidates = vec![self.root.join(repo)];
        candidates.extend(self.repo_dirs.get(repo).cloned());
        for c in &candidates {
            if c.join("config.json").is_file() && c.join("model.safetensors").is_file() {
                return Ok(c.clone());
            }
        }
        bail!(
            "{}: `{what}` ({repo}) not found (looked for config.json and model.safetensors in {})",
            self.root.display(),
            candidates
                .iter()
                .map(|c| c.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    /// Path stem of a model role, resolved to a file stem on disk.
    ///
    /// A stem is relative to the directory. The release points one model into another
    /// repository (`microsoft/TRELLIS-image-large/ckpts/ss_dec_conv3d_16l8_fp16`); such a stem
    /// is also looked up without its `owner/repo/` prefix, so that file can sit in this
    /// directory's own `ckpts/`, and inside that repository's folder in [`Self::repo_dirs`].
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
            let rest = parts[2..].join("/");
            candidates.push(self.root.join(&rest));
            if let Some(dir) = self.repo_dirs.get(&parts[..2].join("/")) {
                candidates.push(dir.join(&rest));
            }
        }
        for c in &candidates {
            if Checkpoint::weights_path(c).is_file() {
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
