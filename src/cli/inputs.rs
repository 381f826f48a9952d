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

/// Files as given (any name: a bad file fails later, per item), folders' image files sorted
/// by name, glob patterns' matches sorted. Duplicates are dropped, first occurrence kept.
pub fn expand(inputs: &[String]) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = Vec::new();
    for arg in inputs {
        let path = Path::new(arg);
        let mut found: Vec<PathBuf> = if path.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("{arg}: cannot list folder"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_image_name(p))
                .collect();
            v.sort();
            if v.is_empty() {
                bail!("{arg}: folder has no PNG, JPEG or WebP files");
            }
            v
        } else if path.exists() {
            vec![path.to_path_buf()]
        } else if arg.contains(['*', '?', '[']) {
            let mut v: Vec<PathBuf> = glob::glob(arg)
                .with_context(|| format!("{arg}: bad glob pattern"))?
                .filter_map(|p| p.ok())
                .filter(|p| p.is_file())
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
            if !out.contains(&p) {
                out.push(p);
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
        let got = expand(std::slice::from_ref(&d)).unwrap();
        assert_eq!(
            got,
            vec![dir.path().join("a.webp"), dir.path().join("b.png")]
        );
        let got = expand(&[format!("{d}/*.png"), format!("{d}/b.png")]).unwrap();
        assert_eq!(got, vec![dir.path().join("b.png")]);
        assert!(expand(&[format!("{d}/missing.png")]).is_err());
        assert!(expand(&[format!("{d}/*.jpg")]).is_err());
    }
}
