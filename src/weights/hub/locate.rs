//! Finding a complete model directory on disk without touching the network.

use std::path::Path;

use anyhow::{bail, Result};

use super::release::{
    release_files, RepoFile, PIPELINE_FILE, RELEASE_REPO, TEXTURING_PIPELINE_FILE,
};
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
    locate_config(model, settings, rembg, PIPELINE_FILE)
}

/// [`locate`] for another pipeline file of the release (`texturing_pipeline.json`): the
/// directory is described by `config` and every model it names must be there.
pub fn locate_config(
    model: Option<&Path>,
    settings: &HubSettings,
    rembg: Option<RembgModel>,
    config: &str,
) -> Result<ModelDir> {
    let (dir, settings) = match model {
        Some(dir) if dir.join(config).is_file() => {
            (ModelDir::open_config(dir, config)?, settings.clone())
        }
        Some(dir) if dir.is_dir() => {
            let settings = settings.clone().with_cache_dir(dir);
            (release_dir(&settings, rembg, config)?, settings)
        }
        Some(dir) => bail!(
            "{}: not a model directory (no {config}) nor a hub cache",
            dir.display()
        ),
        None => (release_dir(settings, rembg, config)?, settings.clone()),
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
            download_hint(&settings, rembg, config),
            problems.join("\n  ")
        );
    }
    Ok(dir)
}

fn download_hint(settings: &HubSettings, rembg: Option<RembgModel>, config: &str) -> String {
    let mut cmd = download_command(settings, rembg);
    if config == TEXTURING_PIPELINE_FILE {
        cmd.push_str(" --texturing");
    }
    format!("run `{cmd}` to fetch them")
}

/// The release's snapshot in the cache, as a model directory described by `config`.
fn release_dir(
    settings: &HubSettings,
    rembg: Option<RembgModel>,
    config: &str,
) -> Result<ModelDir> {
    match settings.snapshot_dir(RELEASE_REPO) {
        Some(snapshot) if snapshot.join(config).is_file() => {
            ModelDir::open_config(&snapshot, config)
        }
        _ => bail!(
            "{RELEASE_REPO} ({config}) is not in the model cache {} ({})",
            settings.cache_dir.display(),
            download_hint(settings, rembg, config)
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
    missing_offline_in(settings, rembg, &[PIPELINE_FILE])
}

/// [`missing_offline`] for several pipeline files of the release, each file named once.
pub fn missing_offline_in(
    settings: &HubSettings,
    rembg: Option<RembgModel>,
    configs: &[&str],
) -> Vec<RepoFile> {
    let mut missing = Vec::new();
    for config in configs {
        let files = match release_dir(settings, rembg, config) {
            Ok(dir) => release_files(&dir.pipeline, rembg),
            Err(_) => vec![RepoFile::new(RELEASE_REPO, config)],
        };
        for f in files {
            if settings.cached_file(&f.repo, &f.path).is_none() && !missing.contains(&f) {
                missing.push(f);
            }
        }
    }
    missing
}
