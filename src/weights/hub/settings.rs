//! Where the hub is and where its files go, from the environment (same variables as the
//! Python `huggingface_hub`, so both share one cache).

use std::path::{Path, PathBuf};

/// The public hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

#[derive(Debug, Clone)]
pub struct HubSettings {
    /// `https://huggingface.co`, or `HF_ENDPOINT` (a mirror, or a test server).
    pub endpoint: String,
    /// The hub cache: the folder holding `models--owner--name/`.
    pub cache_dir: PathBuf,
    /// Bearer token for gated repositories.
    pub token: Option<String>,
    /// How often a broken transfer is resumed before giving up.
    pub retries: usize,
}

impl HubSettings {
    /// `HF_ENDPOINT`, `HF_HUB_CACHE` / `HF_HOME` / `~/.cache/huggingface/hub`, and `HF_TOKEN`
    /// or the token file `huggingface-cli login` writes (`$HF_HOME/token`).
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            home_dir()
                .unwrap_or_else(|| PathBuf::from("."))
                .join(".cache")
                .join("huggingface")
        });
        let cache_dir = var("HF_HUB_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let token = var("HF_TOKEN").or_else(|| read_token_file(&hf_home.join("token")));
        Self {
            endpoint: var("HF_ENDPOINT")
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
                .trim_end_matches('/')
                .to_string(),
            cache_dir,
            token,
            retries: 5,
        }
    }

    /// The same settings with another cache folder (`download --to DIR`).
    pub fn with_cache_dir(mut self, dir: &Path) -> Self {
        self.cache_dir = dir.to_path_buf();
        self
    }

    #[cfg(feature = "hub")]
    pub(crate) fn cache(&self) -> hf_hub::Cache {
        hf_hub::Cache::new(self.cache_dir.clone())
    }

    /// `<cache>/models--owner--name`.
    pub(crate) fn repo_folder(&self, repo: &str) -> PathBuf {
        self.cache_dir
            .join(format!("models--{}", repo.replace('/', "--")))
    }

    /// The snapshot folder `refs/main` points to, if the repository was ever downloaded.
    pub fn snapshot_dir(&self, repo: &str) -> Option<PathBuf> {
        let folder = self.repo_folder(repo);
        let commit = std::fs::read_to_string(folder.join("refs").join("main")).ok()?;
        let dir = folder.join("snapshots").join(commit.trim());
        dir.is_dir().then_some(dir)
    }

    /// A file of a repository in the cache (at `refs/main`), if present.
    pub fn cached_file(&self, repo: &str, path: &str) -> Option<PathBuf> {
        let p = self.snapshot_dir(repo)?.join(path);
        p.is_file().then_some(p)
    }
}

fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .map(PathBuf::from)
}

fn read_token_file(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let token = text.trim();
    (!token.is_empty()).then(|| token.to_string())
}
