//! Downloads the missing files of a [`Plan`] into the hub cache with `hf-hub`'s blocking API:
//! partial files (`blobs/<etag>.part`) are resumed with HTTP range requests, both after a
//! dropped connection (`HubSettings::retries`) and in a later run. Every file is then hashed
//! against the hub's etag; a mismatch removes it from the cache and fails.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use hf_hub::api::sync::{ApiBuilder, ApiError};

use super::plan::{Plan, PlanEntry};
use super::remote::{request_error, resolve_url, HubError};
use super::settings::HubSettings;
use super::verify::verify_etag;

/// Progress of one file's transfer (the CLI draws it as a progress bar).
pub trait TransferProgress {
    /// The transfer starts (again, after a resume) for a file of `total` bytes.
    fn init(&mut self, total: u64, name: &str);
    /// `bytes` more bytes are on disk (a resume first reports what was already there).
    fn update(&mut self, bytes: u64);
    fn finish(&mut self);
}

struct Adapter<'a>(&'a mut dyn TransferProgress);

impl hf_hub::api::Progress for Adapter<'_> {
    fn init(&mut self, size: usize, filename: &str) {
        self.0.init(size as u64, filename);
    }
    fn update(&mut self, size: usize) {
        self.0.update(size as u64);
    }
    fn finish(&mut self) {
        self.0.finish();
    }
}

/// Fetches every entry of `plan` not yet cached; returns the cache paths of all entries.
/// `progress` makes one progress reporter per file.
pub fn download(
    settings: &HubSettings,
    plan: &Plan,
    progress: &mut dyn FnMut(&PlanEntry) -> Box<dyn TransferProgress>,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(&settings.cache_dir).map_err(|e| {
        anyhow!(
            "{}: cannot create the cache: {e}",
            settings.cache_dir.display()
        )
    })?;
    let api = ApiBuilder::from_cache(settings.cache())
        .with_endpoint(settings.endpoint.clone())
        .with_token(settings.token.clone())
        .with_retries(settings.retries)
        .with_progress(false)
        .build()
        .map_err(|e| anyhow!("cannot set up the hub client: {e}"))?;
    let mut paths = Vec::new();
    for entry in &plan.entries {
        let file = &entry.remote.file;
        if entry.cached {
            paths.push(
                settings
                    .repo_folder(&file.repo)
                    .join("snapshots")
                    .join(&entry.remote.commit)
                    .join(&file.path),
            );
            continue;
        }
        let mut reporter = progress(entry);
        let repo = api.model(file.repo.clone());
        let pointer = repo
            .download_with_progress(&file.path, Adapter(reporter.as_mut()))
            .map_err(|e| api_error(settings, entry, e))?;
        check_download(entry, &pointer)?;
        paths.push(pointer);
    }
    Ok(paths)
}

fn api_error(settings: &HubSettings, entry: &PlanEntry, err: ApiError) -> anyhow::Error {
    let file = &entry.remote.file;
    let url = resolve_url(settings, file);
    match err {
        ApiError::RequestError(e) => request_error(settings, file, &url, &e).into(),
        ApiError::TooManyRetries(inner) => api_error(settings, entry, *inner).context(format!(
            "{file}: transfer failed {} times; run the command again to resume it",
            settings.retries + 1
        )),
        other => anyhow!("{file}: download failed: {other}"),
    }
}

/// Size and hash of the file behind the cache pointer `pointer`; removes it on mismatch.
fn check_download(entry: &PlanEntry, pointer: &Path) -> Result<()> {
    let blob = std::fs::canonicalize(pointer)
        .map_err(|e| anyhow!("{}: cannot resolve: {e}", pointer.display()))?;
    let remove = || {
        // Both the blob and the snapshot link to it, so the cache never shows a corrupt file.
        let _ = std::fs::remove_file(pointer);
        let _ = std::fs::remove_file(&blob);
        let mut lock = blob.clone().into_os_string();
        lock.push(".lock");
        let _ = std::fs::remove_file(lock);
    };
    let size = std::fs::metadata(&blob)
        .map_err(|e| anyhow!("{}: {e}", blob.display()))?
        .len();
    let mismatch = if size != entry.remote.size {
        Some(format!("{size} bytes instead of {}", entry.remote.size))
    } else {
        verify_etag(&blob, &entry.remote.etag)
            .map_err(|e| anyhow!("{}: cannot read back: {e}", blob.display()))?
    };
    match mismatch {
        None => Ok(()),
        Some(actual) => {
            remove();
            Err(HubError::HashMismatch {
                file: entry.remote.file.clone(),
                expected: entry.remote.etag.clone(),
                actual,
            }
            .into())
        }
    }
}
