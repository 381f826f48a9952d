//! The files a TRELLIS.2 run needs, read from the release's `pipeline.json`.

use crate::weights::{PipelineConfig, RembgModel};

/// The TRELLIS.2 release: `pipeline.json` and `ckpts/`.
pub const RELEASE_REPO: &str = "microsoft/TRELLIS.2-4B";
/// The release's first file; it names all the others.
pub const PIPELINE_FILE: &str = "pipeline.json";
/// The release's texturing pipeline (`trellis2 texture`): the shape encoder, the texture flows
/// and decoder, DINOv3.
pub const TEXTURING_PIPELINE_FILE: &str = "texturing_pipeline.json";
/// Image encoder (gated: licence to accept on the model page).
pub const DINOV3_REPO: &str = "facebook/dinov3-vitl16-pretrain-lvd1689m";

/// One file of one hub repository.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RepoFile {
    /// `owner/name`.
    pub repo: String,
    /// Path inside the repository.
    pub path: String,
}

impl RepoFile {
    pub fn new(repo: &str, path: &str) -> Self {
        Self {
            repo: repo.to_string(),
            path: path.to_string(),
        }
    }
}

impl std::fmt::Display for RepoFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.repo, self.path)
    }
}

/// Splits a model stem of `pipeline.json` into (repository, stem inside it). A stem with more
/// than two components lives in another repository (`microsoft/TRELLIS-image-large/ckpts/…`),
/// the same rule [`ModelDir::resolve`](crate::weights::ModelDir::resolve) applies.
pub fn stem_location(stem: &str) -> (String, String) {
    let parts: Vec<&str> = stem.split('/').collect();
    if parts.len() > 2 {
        (parts[..2].join("/"), parts[2..].join("/"))
    } else {
        (RELEASE_REPO.to_string(), stem.to_string())
    }
}

/// The `model_name` of a Hugging Face model the pipeline loads by name
/// (`args.image_cond_model.args.model_name`), or `default`.
pub fn hf_model_repo(pipeline: &PipelineConfig, role: &str, default: &str) -> String {
    pipeline
        .args
        .get(role)
        .and_then(|m| m.get("args"))
        .and_then(|a| a.get("model_name"))
        .and_then(|n| n.as_str())
        .filter(|n| n.split('/').count() == 2)
        .unwrap_or(default)
        .to_string()
}

/// Every file besides `pipeline.json`: `<stem>.json` + `<stem>.safetensors` per model, then
/// `config.json` + `model.safetensors` of the image encoder and of the background remover
/// `rembg` (our choice, not the pipeline's `rembg_model`: see [`RembgModel`]; `None` when the
/// run removes no background).
pub fn release_files(pipeline: &PipelineConfig, rembg: Option<RembgModel>) -> Vec<RepoFile> {
    let mut files = Vec::new();
    for stem in pipeline.model_stems().values() {
        let (repo, stem) = stem_location(stem);
        for ext in [".json", ".safetensors"] {
            files.push(RepoFile::new(&repo, &format!("{stem}{ext}")));
        }
    }
    let encoder = hf_model_repo(pipeline, "image_cond_model", DINOV3_REPO);
    files.extend(hf_model_files(&encoder));
    if let Some(model) = rembg {
        files.extend(hf_model_files(model.repo()));
    }
    files.dedup();
    files
}

/// `config.json` + `model.safetensors` of a Hugging Face model repository.
pub fn hf_model_files(repo: &str) -> [RepoFile; 2] {
    ["config.json", "model.safetensors"].map(|path| RepoFile::new(repo, path))
}
