//! The background-removal checkpoints trellis2 can run, and how a folder on disk says which one
//! it holds. Both are BiRefNet (same architecture and keys); they differ in licence and in the
//! order of the decoder's image tiles (see `models::birefnet::PatchOrder`).
//!
//! The default is `ZhengPeng7/BiRefNet` (MIT), not the `briaai/RMBG-2.0` that the released
//! `pipeline.json` names under `rembg_model`: RMBG-2.0 is gated and licensed CC BY-NC 4.0
//! (non-commercial only), so it is used only when asked for by name.

use std::path::Path;

/// `ZhengPeng7/BiRefNet`: MIT licence, not gated.
pub const BIREFNET_REPO: &str = "ZhengPeng7/BiRefNet";
/// `briaai/RMBG-2.0`: gated, CC BY-NC 4.0 (non-commercial use only).
pub const RMBG_REPO: &str = "briaai/RMBG-2.0";

/// One background-removal checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RembgModel {
    /// `ZhengPeng7/BiRefNet` (the default).
    #[default]
    BiRefNet,
    /// `briaai/RMBG-2.0`.
    Rmbg2,
}

impl RembgModel {
    pub const ALL: [RembgModel; 2] = [RembgModel::BiRefNet, RembgModel::Rmbg2];

    /// The Hugging Face repository (`owner/name`).
    pub fn repo(self) -> &'static str {
        match self {
            Self::BiRefNet => BIREFNET_REPO,
            Self::Rmbg2 => RMBG_REPO,
        }
    }

    /// The name the command line uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::BiRefNet => "birefnet",
            Self::Rmbg2 => "rmbg-2.0",
        }
    }

    /// The licence, as users need to know it before they download.
    pub fn licence(self) -> &'static str {
        match self {
            Self::BiRefNet => "MIT",
            Self::Rmbg2 => "CC BY-NC 4.0, non-commercial use only; gated",
        }
    }

    /// The checkpoint a folder holds, judged by its path: a hub cache snapshot
    /// (`…/models--briaai--RMBG-2.0/snapshots/<commit>`) or a folder named after the repository
    /// (`…/briaai/RMBG-2.0`, as `convert` writes it). Case-insensitive, like hub repository ids.
    pub fn from_path(path: &Path) -> Option<Self> {
        let parts: Vec<String> = path
            .components()
            .map(|c| c.as_os_str().to_string_lossy().to_ascii_lowercase())
            .collect();
        Self::ALL.into_iter().find(|m| {
            let repo = m.repo().to_ascii_lowercase();
            let cache_name = format!("models--{}", repo.replace('/', "--"));
            parts.contains(&cache_name)
                || parts
                    .windows(2)
                    .any(|w| format!("{}/{}", w[0], w[1]) == repo)
        })
    }
}

impl std::fmt::Display for RembgModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_name_their_checkpoint() {
        let cache = Path::new("/c/hub/models--ZhengPeng7--BiRefNet/snapshots/abc");
        assert_eq!(RembgModel::from_path(cache), Some(RembgModel::BiRefNet));
        let converted = Path::new("out/briaai/RMBG-2.0");
        assert_eq!(RembgModel::from_path(converted), Some(RembgModel::Rmbg2));
        // The golden test model lives in a folder called `birefnet`: no repository id there.
        let golden = Path::new("tests/fixtures/golden/birefnet");
        assert_eq!(RembgModel::from_path(golden), None);
    }
}
