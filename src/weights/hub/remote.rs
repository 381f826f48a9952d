//! Metadata requests to the hub (`HEAD …/resolve/main/<file>`) and the errors a user can act on.

use std::io::Read;
use std::time::Duration;

use super::release::RepoFile;
use super::settings::HubSettings;

/// What the hub says about one file before it is downloaded.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteFile {
    pub file: RepoFile,
    /// Bytes (`X-Linked-Size` for LFS files, else `Content-Length`).
    pub size: u64,
    /// `X-Linked-Etag` (sha256 of an LFS file) or `ETag` (git blob sha1), without quotes.
    pub etag: String,
    /// `X-Repo-Commit`.
    pub commit: String,
}

/// Errors with the hub, each worded so the user knows what to do next.
#[derive(Debug)]
pub enum HubError {
    /// 401/403: a gated repository whose licence is not accepted, or no/invalid token.
    Gated {
        repo: String,
        status: u16,
        endpoint: String,
        have_token: bool,
    },
    NotFound {
        file: RepoFile,
        url: String,
    },
    Http {
        url: String,
        status: u16,
    },
    Transport {
        url: String,
        message: String,
    },
    /// The downloaded bytes do not hash to the hub's etag; the file was removed.
    HashMismatch {
        file: RepoFile,
        expected: String,
        actual: String,
    },
    /// A response without the headers every hub answer carries.
    BadResponse {
        url: String,
        message: String,
    },
}

impl std::fmt::Display for HubError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HubError::Gated {
                repo,
                status,
                endpoint,
                have_token,
            } => {
                let why = if *have_token {
                    "the token in HF_TOKEN was refused or has no access"
                } else {
                    "no token was given (HF_TOKEN is not set)"
                };
                write!(
                    f,
                    "{repo} is a gated model and the hub answered HTTP {status} ({why}). To download it:\n  \
                     1. log in at {endpoint} and accept the licence on {endpoint}/{repo}\n  \
                     2. create a token with read access at {endpoint}/settings/tokens\n  \
                     3. export HF_TOKEN=hf_... (your token) and run `trellis2 download` again"
                )
            }
            HubError::NotFound { file, url } => {
                write!(f, "{file}: not found on the hub ({url} answered 404)")
            }
            HubError::Http { url, status } => write!(f, "{url}: HTTP {status}"),
            HubError::Transport { url, message } => write!(
                f,
                "{url}: {message} (check the network connection; HF_ENDPOINT selects a mirror)"
            ),
            HubError::HashMismatch {
                file,
                expected,
                actual,
            } => write!(
                f,
                "{file}: downloaded data is corrupt (sha expected {expected}, got {actual}); the \
                 file was removed from the cache, run `trellis2 download` again"
            ),
            HubError::BadResponse { url, message } => write!(f, "{url}: {message}"),
        }
    }
}

impl std::error::Error for HubError {}

/// `<endpoint>/<repo>/resolve/main/<path>`.
pub(crate) fn resolve_url(settings: &HubSettings, file: &RepoFile) -> String {
    format!(
        "{}/{}/resolve/main/{}",
        settings.endpoint, file.repo, file.path
    )
}

fn agent() -> ureq::Agent {
    // No redirects: for LFS files the hub answers 302 to a CDN, and the headers we need
    // (`X-Linked-Size`, `X-Linked-Etag`) are on that first answer.
    ureq::AgentBuilder::new()
        .redirects(0)
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(60))
        .try_proxy_from_env(true)
        .build()
}

fn authorised(settings: &HubSettings, req: ureq::Request) -> ureq::Request {
    let req = req.set(
        "User-Agent",
        concat!("trellis2/", env!("CARGO_PKG_VERSION"), "; hf-hub/0.4"),
    );
    match &settings.token {
        Some(t) => req.set("Authorization", &format!("Bearer {t}")),
        None => req,
    }
}

/// Maps a failed request to the error the user should see.
pub(crate) fn request_error(
    settings: &HubSettings,
    file: &RepoFile,
    url: &str,
    err: &ureq::Error,
) -> HubError {
    match err {
        ureq::Error::Status(401 | 403, r) => HubError::Gated {
            repo: file.repo.clone(),
            status: r.status(),
            endpoint: settings.endpoint.clone(),
            have_token: settings.token.is_some(),
        },
        ureq::Error::Status(404, _) => HubError::NotFound {
            file: file.clone(),
            url: url.to_string(),
        },
        ureq::Error::Status(status, _) => HubError::Http {
            url: url.to_string(),
            status: *status,
        },
        ureq::Error::Transport(t) => HubError::Transport {
            url: url.to_string(),
            message: transport_message(t),
        },
    }
}

/// What went wrong in a transport failure, without the URL that ureq's message starts with
/// ([`HubError::Transport`] names it once).
fn transport_message(t: &ureq::Transport) -> String {
    let mut message = t.kind().to_string();
    if let Some(detail) = t.message() {
        message += &format!(": {detail}");
    }
    if let Some(source) = std::error::Error::source(t) {
        message += &format!(": {source}");
    }
    message
}

/// Size, etag and commit of one file, from one `HEAD` request (plus relative redirects, which
/// the hub uses for renamed repositories).
pub fn head(settings: &HubSettings, file: &RepoFile) -> Result<RemoteFile, HubError> {
    let agent = agent();
    let mut url = resolve_url(settings, file);
    for _ in 0..5 {
        let resp = authorised(settings, agent.head(&url))
            .call()
            .map_err(|e| request_error(settings, file, &url, &e))?;
        let relative_redirect = (300..400).contains(&resp.status())
            && resp.header("x-linked-etag").is_none()
            && resp.header("location").is_some_and(|l| l.starts_with('/'));
        if relative_redirect {
            let location = resp.header("location").unwrap_or_default();
            url = format!("{}{location}", settings.endpoint);
            continue;
        }
        return remote_file(file, &url, &resp);
    }
    Err(HubError::BadResponse {
        url,
        message: "too many redirects".into(),
    })
}

fn remote_file(file: &RepoFile, url: &str, resp: &ureq::Response) -> Result<RemoteFile, HubError> {
    let bad = |message: &str| HubError::BadResponse {
        url: url.to_string(),
        message: message.to_string(),
    };
    let etag = resp
        .header("x-linked-etag")
        .or_else(|| resp.header("etag"))
        .ok_or_else(|| bad("no ETag header (is HF_ENDPOINT a Hugging Face hub?)"))?;
    let etag = etag.trim_start_matches("W/").replace('"', "");
    let size = resp
        .header("x-linked-size")
        .or_else(|| resp.header("content-length"))
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or_else(|| bad("no file size (X-Linked-Size / Content-Length)"))?;
    let commit = resp
        .header("x-repo-commit")
        .ok_or_else(|| bad("no X-Repo-Commit header (is HF_ENDPOINT a Hugging Face hub?)"))?
        .trim()
        .to_string();
    Ok(RemoteFile {
        file: file.clone(),
        size,
        etag,
        commit,
    })
}

/// A small file's bytes (e.g. `pipeline.json` for a dry run), at most `limit` bytes.
pub fn get_small(settings: &HubSettings, file: &RepoFile, limit: u64) -> Result<Vec<u8>, HubError> {
    let url = resolve_url(settings, file);
    let resp = authorised(settings, agent().get(&url))
        .call()
        .map_err(|e| request_error(settings, file, &url, &e))?;
    let mut bytes = Vec::new();
    resp.into_reader()
        .take(limit)
        .read_to_end(&mut bytes)
        .map_err(|e| HubError::Transport {
            url: url.clone(),
            message: e.to_string(),
        })?;
    Ok(bytes)
}
