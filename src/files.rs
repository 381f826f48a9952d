//! Opening user-named files safely: only regular files are read (a FIFO would block forever, a
//! link to `/dev/zero` would read until memory runs out), and only up to a size the caller
//! states, checked before any byte is read.

use std::fs::{File, Metadata};
use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, bail, Result};

/// What a path is, in words, when it is not a regular file; `None` for a regular file.
pub fn not_regular(meta: &Metadata) -> Option<&'static str> {
    let t = meta.file_type();
    if t.is_file() {
        return None;
    }
    if t.is_dir() {
        return Some("a folder");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return Some("a FIFO (named pipe)");
        }
        if t.is_char_device() || t.is_block_device() {
            return Some("a device");
        }
        if t.is_socket() {
            return Some("a socket");
        }
    }
    Some("not a regular file")
}

/// Why `path` (links followed) cannot be read as a file, in words: missing, a dangling or
/// looping link, a folder, a FIFO, a device. `None` when it is a regular file.
pub fn unusable(path: &Path) -> Option<String> {
    match std::fs::metadata(path) {
        Ok(meta) => not_regular(&meta).map(|what| format!("is {what}, not a regular file")),
        Err(e) => Some(match std::fs::symlink_metadata(path) {
            Ok(link) if link.file_type().is_symlink() => {
                if e.raw_os_error() == Some(40) || e.raw_os_error() == Some(62) {
                    "symbolic link loop".to_string()
                } else {
                    "broken symbolic link (its target does not exist)".to_string()
                }
            }
            _ => format!("cannot read: {e}"),
        }),
    }
}

/// Opens `path` for reading if it is a regular file of at most `max_bytes`; returns the file
/// and its length. The type and size are checked on the path before it is opened.
pub fn open_regular(path: &Path, max_bytes: u64) -> Result<(File, u64)> {
    let name = path.display();
    if let Some(why) = unusable(path) {
        bail!("{name}: {why}");
    }
    let file = File::open(path).map_err(|e| anyhow!("{name}: cannot read file: {e}"))?;
    // Checked again on the open file: the path may have been replaced in between.
    let meta = file
        .metadata()
        .map_err(|e| anyhow!("{name}: cannot read file: {e}"))?;
    if let Some(what) = not_regular(&meta) {
        bail!("{name}: is {what}, not a regular file");
    }
    if meta.len() > max_bytes {
        bail!(
            "{name}: file is {} bytes, more than the {} bytes accepted here",
            meta.len(),
            max_bytes
        );
    }
    Ok((file, meta.len()))
}

/// The whole content of a regular file of at most `max_bytes` (see [`open_regular`]).
pub fn read_regular(path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
    let (file, len) = open_regular(path, max_bytes)?;
    let mut bytes = Vec::with_capacity(len as usize);
    // `take` bounds the read even if the file grows while it is read.
    file.take(max_bytes)
        .read_to_end(&mut bytes)
        .map_err(|e| anyhow!("{}: cannot read file: {e}", path.display()))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_are_read_and_others_refused_by_type() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.png");
        std::fs::write(&file, b"12345").unwrap();
        assert_eq!(read_regular(&file, 5).unwrap(), b"12345");
        let e = read_regular(&file, 4).unwrap_err().to_string();
        assert!(e.contains("more than the 4 bytes"), "{e}");
        let e = read_regular(dir.path(), 10).unwrap_err().to_string();
        assert!(e.contains("folder"), "{e}");
        #[cfg(unix)]
        {
            let dangling = dir.path().join("dangling.png");
            std::os::unix::fs::symlink(dir.path().join("missing"), &dangling).unwrap();
            assert!(unusable(&dangling).unwrap().contains("broken"));
            let zero = dir.path().join("zero.png");
            std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
            assert!(read_regular(&zero, 1 << 20)
                .unwrap_err()
                .to_string()
                .contains("device"));
            let looped = dir.path().join("loop.png");
            std::os::unix::fs::symlink(&looped, &looped).unwrap();
            assert!(unusable(&looped).unwrap().contains("loop"));
        }
    }
}
