//! Turning INPUT arguments (files, folders, glob patterns) into a list of image paths.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Extensions a folder is searched for (the decoder sniffs the real format).
const IMAGE_EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "webp"];

fn is_image_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// One INPUT item: a path, and why it cannot be used when it cannot (a folder entry or glob
/// match that is a dangling link, a link loop, a FIFO, a device; or such a file given by name).
/// Unusable items are failures of the batch, listed with the others, never skipped silently.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub path: PathBuf,
    pub unusable: Option<String>,
}

impl Input {
    fn checked(path: PathBuf) -> Self {
        let unusable = trellis2::files::unusable(&path);
        Self { path, unusable }
    }
}

/// Files as given (any name: a bad file fails later, per item), folders' image files sorted
/// by name, glob patterns' matches sorted. Duplicates are dropped, first occurrence kept.
/// Entries that are not regular files are kept, marked unusable, so the batch reports them.
pub fn expand(inputs: &[String]) -> Result<Vec<Input>> {
    let mut out: Vec<Input> = Vec::new();
    for arg in inputs {
        let path = Path::new(arg);
        let mut found: Vec<PathBuf> = if path.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("{arg}: cannot list folder"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                // Folders named like pictures are not pictures; everything else with an image
                // name is an item, usable or not.
                .filter(|p| is_image_name(p) && !p.is_dir())
                .collect();
            v.sort();
            if v.is_empty() {
                bail!("{arg}: folder has no PNG, JPEG or WebP files");
            }
            v
        } else if path.exists() || path.symlink_metadata().is_ok() {
            vec![path.to_path_buf()]
        } else if arg.contains(['*', '?', '[']) {
            let mut v: Vec<PathBuf> = glob::glob(arg)
                .with_context(|| format!("{arg}: bad glob pattern"))?
                .filter_map(|p| p.ok())
                .filter(|p| !p.is_dir())
                .collect();
            v.sort();
            if v.is_empty() {
                bail!("{arg}: no file matches this pattern");
            }
            v
        } else {
            bail!("{arg}: no such file or directory");
        };
        for p in found.drain(..) {
            if !out.iter().any(|i| i.path == p) {
                out.push(Input::checked(p));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_globs_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.png", "a.webp", "notes.txt"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let d = dir.path().to_str().unwrap().to_string();
        let paths = |v: Vec<Input>| v.into_iter().map(|i| i.path).collect::<Vec<_>>();
        let got = paths(expand(std::slice::from_ref(&d)).unwrap());
        assert_eq!(
            got,
            vec![dir.path().join("a.webp"), dir.path().join("b.png")]
        );
        let got = paths(expand(&[format!("{d}/*.png"), format!("{d}/b.png")]).unwrap());
        assert_eq!(got, vec![dir.path().join("b.png")]);
        assert!(expand(&[format!("{d}/missing.png")]).is_err());
        assert!(expand(&[format!("{d}/*.jpg")]).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn unusable_folder_entries_are_listed_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.png"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("gone.png"), dir.path().join("b.png")).unwrap();
        std::os::unix::fs::symlink("/dev/null", dir.path().join("c.png")).unwrap();
        let d = dir.path().to_str().unwrap().to_string();
        let got = expand(&[d]).unwrap();
        let verdicts: Vec<bool> = got.iter().map(|i| i.unusable.is_some()).collect();
        assert_eq!(verdicts, [false, true, true], "{got:?}");
    }
}
