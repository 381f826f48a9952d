//! Finding a complete model directory on disk without touching the network.

use std::path::Path;

use anyhow::{bail, Result};

use super::release::{release_files, RepoFile, PIPELINE_FILE, RELEASE_REPO};
use super::settings::HubSettings;
use crate::weights::{ModelDir, RembgModel};

/// The command that fetches what is missing into `settings`' cache, with background remover
/// `rembg` (the default one needs no flag).
pub fn download_command(settings: &HubSettings, rembg: Option<RembgModel>) -> String {
    let mut cmd = "trellis2 download".to_string();
    match rembg {
        Some(RembgModel::BiRefNet) => {}
        Some(m) => cmd.push_str(&format!(" --rembg {m}")),
        None => cmd.push_str(" --rembg none"),
    }
    if settings.cache_dir != HubSettings::from_env().cache_dir {
        cmd.push_str(&format!(" --to {}", settings.cache_dir.display()));
    }
    cmd
}

/// The model directory a run uses: `model` if given (a folder with `pipeline.json`, or a hub
/// cache folder as `download --to DIR` writes), else the release in the hub cache. Repositories
/// the pipeline points to (SS decoder, DINOv3, background remover) are looked up in the model
/// folder first, then in the cache. Fails, naming every missing file and the command to run,
/// unless every checkpoint and model folder is there, background remover `rembg` included
/// (`None`: the run needs none).
pub fn locate(
    model: Option<&Path>,
    settings: &HubSettings,
    rembg: Option<RembgModel>,
) -> Result<ModelDir> {
    let (dir, settings) = match model {
        Some(dir) if dir.join(PIPELINE_FILE).is_file() => (ModelDir::open(dir)?, settings.clone()),
        Some(dir) if dir.is_dir() => {
            let settings = settings.clone().with_cache_dir(dir);
            (release_dir(&settings, rembg)?, settings)
        }
        Some(dir) => bail!(
            "{}: not a model directory (no {PIPELINE_FILE}) nor a hub cache",
            dir.display()
        ),
        None => (release_dir(settings, rembg)?, settings.clone()),
    };
    let dir = with_cached_repos(dir, &settings);
    let mut problems = Vec::new();
    for role in dir.pipeline.model_stems().keys() {
        if let Err(e) = dir.resolve(role) {
            problems.push(format!("{e:#}"));
        }
    }
    if let Err(e) = dir.hf_model_dir("image_cond_model") {
        problems.push(format!("{e:#}"));
    }
    if let Some(Err(e)) = rembg.map(|m| dir.rembg_dir(m)) {
        problems.push(format!("{e:#}"));
    }
    if !problems.is_empty() {
        bail!(
            "model files missing ({}):\n  {}",
            download_hint(&settings, rembg),
            problems.join("\n  ")
        );
    }
    Ok(dir)
}

fn download_hint(settings: &HubSettings, rembg: Option<RembgModel>) -> String {
    format!("run `{}` to fetch them", download_command(settings, rembg))
}

/// The release's snapshot in the cache, as a model directory.
fn release_dir(settings: &HubSettings, rembg: Option<RembgModel>) -> Result<ModelDir> {
    match settings.snapshot_dir(RELEASE_REPO) {
        Some(snapshot) if snapshot.join(PIPELINE_FILE).is_file() => ModelDir::open(&snapshot),
        _ => bail!(
            "{RELEASE_REPO} is not in the model cache {} ({})",
            settings.cache_dir.display(),
            download_hint(settings, rembg)
        ),
    }
}

/// Registers the cached snapshot of every other repository the pipeline names, and of every
/// background remover.
fn with_cached_repos(mut dir: ModelDir, settings: &HubSettings) -> ModelDir {
    let repos: Vec<String> = release_files(&dir.pipeline, None)
        .into_iter()
        .map(|f| f.repo)
        .chain(RembgModel::ALL.map(|m| m.repo().to_string()))
        .filter(|r| r != RELEASE_REPO && !dir.repo_dirs.contains_key(r))
        .collect();
    for repo in repos {
        if let Some(snapshot) = settings.snapshot_dir(&repo) {
            dir = dir.with_repo_dir(&repo, &snapshot);
        }
    }
    dir
}

/// Files missing from the cache, judged from the cache alone (for `--offline`). Without a
/// cached `pipeline.json` that is the only file it can name.
pub fn missing_offline(settings: &HubSettings, rembg: Option<RembgModel>) -> Vec<RepoFile> {
    let pipeline = RepoFile::new(RELEASE_REPO, PIPELINE_FILE);
    let Ok(dir) = release_dir(settings, rembg) else {
        return vec![pipeline];
    };
    release_files(&dir.pipeline, rembg)
        .into_iter()
        .filter(|f| settings.cached_file(&f.repo, &f.path).is_none())
        .collect()
}
