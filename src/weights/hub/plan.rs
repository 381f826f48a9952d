//! What a download would fetch: every file of the release with its size, and whether the cache
//! already holds it.

use anyhow::{Context, Result};

use super::release::{release_files, RepoFile, PIPELINE_FILE, RELEASE_REPO};
use super::remote::{get_small, head, RemoteFile};
use super::settings::HubSettings;
use crate::weights::{PipelineConfig, RembgModel};

/// `pipeline.json` is a few KiB; anything bigger is not one.
const PIPELINE_LIMIT: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub struct PlanEntry {
    pub remote: RemoteFile,
    /// Present in the cache at the hub's current commit.
    pub cached: bool,
}

/// Every file a run needs (`pipeline.json` first), as the hub describes them now.
#[derive(Debug, Clone)]
pub struct Plan {
    pub entries: Vec<PlanEntry>,
}

impl Plan {
    pub fn missing(&self) -> impl Iterator<Item = &PlanEntry> {
        self.entries.iter().filter(|e| !e.cached)
    }

    pub fn missing_bytes(&self) -> u64 {
        self.missing().map(|e| e.remote.size).sum()
    }

    pub fn total_bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.remote.size).sum()
    }
}

fn entry(settings: &HubSettings, remote: RemoteFile) -> PlanEntry {
    let pointer = settings
        .repo_folder(&remote.file.repo)
        .join("snapshots")
        .join(&remote.commit)
        .join(&remote.file.path);
    PlanEntry {
        cached: pointer.is_file(),
        remote,
    }
}

/// Asks the hub about `pipeline.json` and every file it names, with background remover `rembg`
/// (one `HEAD` each; the pipeline itself is read from the cache or fetched into memory, nothing
/// is written).
pub fn plan(settings: &HubSettings, rembg: Option<RembgModel>) -> Result<Plan> {
    plan_configs(settings, rembg, &[PIPELINE_FILE])
}

/// [`plan`] for several pipeline files of the release (`pipeline.json`,
/// `texturing_pipeline.json`): each one, then every file it names, each file once.
pub fn plan_configs(
    settings: &HubSettings,
    rembg: Option<RembgModel>,
    configs: &[&str],
) -> Result<Plan> {
    let mut entries: Vec<PlanEntry> = Vec::new();
    let mut files: Vec<RepoFile> = Vec::new();
    for config in configs {
        let pipeline_file = RepoFile::new(RELEASE_REPO, config);
        let pipeline_entry = entry(settings, head(settings, &pipeline_file)?);
        let text = if pipeline_entry.cached {
            let path = settings
                .repo_folder(RELEASE_REPO)
                .join("snapshots")
                .join(&pipeline_entry.remote.commit)
                .join(config);
            std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?
        } else {
            get_small(settings, &pipeline_file, PIPELINE_LIMIT)?
        };
        let pipeline: PipelineConfig = serde_json::from_slice(&text)
            .with_context(|| format!("{pipeline_file}: not a pipeline config"))?;
        entries.push(pipeline_entry);
        files.push(pipeline_file);
        for file in release_files(&pipeline, rembg) {
            if !files.contains(&file) {
                entries.push(entry(settings, head(settings, &file)?));
                files.push(file);
            }
        }
    }
    Ok(Plan { entries })
}

/// A plan for some files only (e.g. one background remover for `matte`).
pub fn plan_files(settings: &HubSettings, files: &[RepoFile]) -> Result<Plan> {
    let entries = files
        .iter()
        .map(|f| Ok(entry(settings, head(settings, f)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(Plan { entries })
}
