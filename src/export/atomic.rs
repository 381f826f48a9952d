//! Never leave a half-written output: write to a temporary file beside the target, then rename.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Writes `path` through `fill`. The bytes go to a hidden temporary file in the same directory,
/// which is renamed over `path` only when `fill` succeeded and the data reached the disk; on any
/// error the temporary file is removed and `path` is left as it was.
pub fn write_atomic(path: &Path, fill: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let tmp = temporary_name(path);
    let result = (|| {
        let file = std::fs::File::create(&tmp)
            .with_context(|| format!("{}: cannot create output file", path.display()))?;
        let mut writer = std::io::BufWriter::new(file);
        fill(&mut writer)?;
        let file = writer
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("{}: write failed", path.display()))?;
        file.sync_all()
            .with_context(|| format!("{}: write failed", path.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("{}: cannot move temporary file into place", path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `dir/.name.<pid>.tmp`: same directory (so rename is atomic), hidden, unique per process.
fn temporary_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    let tmp = format!(".{name}.{}.tmp", std::process::id());
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(tmp),
        _ => PathBuf::from(tmp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_leaves_nothing_behind() {
        let dir = std::env::temp_dir().join(format!("trellis2-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("out.bin");
        std::fs::write(&target, b"old").unwrap();
        let err = write_atomic(&target, |w| {
            w.write_all(b"partial")?;
            anyhow::bail!("boom")
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "temporary file removed"
        );
        write_atomic(&target, |w| Ok(w.write_all(b"new")?)).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
