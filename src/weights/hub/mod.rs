//! Hugging Face hub: which files a run needs, where they sit in the local cache, and how to
//! fetch them (resumable, hash-checked) with the `hf-hub` crate's blocking API.
//!
//! The API `generate` uses:
//! - [`HubSettings::from_env`] — endpoint (`HF_ENDPOINT`), cache (`HF_HUB_CACHE`, `HF_HOME`,
//!   `~/.cache/huggingface/hub`), token (`HF_TOKEN`, else the `huggingface-cli login` file).
//! - [`locate`] — a usable [`ModelDir`](super::ModelDir) from `--model DIR` or the cache,
//!   without any network access; an error when something is missing.
//! - [`missing_offline`] — what is missing, from the cache alone (no sizes); for `--offline`
//!   errors, with [`download_command`] to print.
//! - [`plan`] — asks the hub for every file and its size and says which are cached;
//!   [`Plan::missing`] / [`Plan::missing_bytes`] are what to show before asking the user.
//! - [`download`] — fetches the missing files of a plan into the cache.

#[cfg(feature = "hub")]
mod fetch;
mod locate;
#[cfg(feature = "hub")]
mod plan;
mod release;
#[cfg(feature = "hub")]
mod remote;
mod settings;
mod verify;

#[cfg(feature = "hub")]
pub use fetch::{download, TransferProgress};
pub use locate::{download_command, locate, locate_config, missing_offline, missing_offline_in};
#[cfg(feature = "hub")]
pub use plan::{plan, plan_configs, plan_files, Plan, PlanEntry};
pub use release::{
    hf_model_files, hf_model_repo, release_files, RepoFile, DINOV3_REPO, PIPELINE_FILE,
    RELEASE_REPO, TEXTURING_PIPELINE_FILE,
};
#[cfg(feature = "hub")]
pub use remote::{HubError, RemoteFile};
pub use settings::HubSettings;
pub use verify::{verify_etag, EtagKind};
