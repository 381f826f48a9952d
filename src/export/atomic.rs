//! Never leave a half-written output: write to a temporary file beside the target, then rename.
//!
//! Every temporary file this process has open is listed in one process-wide registry, so that
//! an interrupt (the CLI's SIGINT/SIGTERM handler) can remove them all before exiting
//! ([`remove_temporaries`]); and the name carries the process id, so that a later run can tell a
//! dead process's leftovers from a live one's ([`remove_stale_temporaries`]).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

/// Temporary files being written, and whether the process is closing (then no new one may be
/// created). A signal handler thread and the writers share it; it is never held across I/O
/// other than creating, removing or renaming one file.
struct Registry {
    open: BTreeSet<PathBuf>,
    closing: bool,
}

static TEMPORARIES: Mutex<Registry> = Mutex::new(Registry {
    open: BTreeSet::new(),
    closing: false,
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    // A writer that panicked leaves the set itself consistent; keep using it.
    TEMPORARIES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes `path` through `fill`. The bytes go to a hidden temporary file in the same directory,
/// which is renamed over `path` only when `fill` succeeded and the data reached the disk; on any
/// error the temporary file is removed and `path` is left as it was.
pub fn write_atomic(path: &Path, fill: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let tmp = temporary_name(path);
    let file = {
        // Created under the lock, so an interrupt either sees it listed or finds the process
        // closing and no file created.
        let mut reg = registry();
        if reg.closing {
            bail!("{}: not written (interrupted)", path.display());
        }
        let file = std::fs::File::create(&tmp)
            .with_context(|| format!("{}: cannot create output file", path.display()))?;
        reg.open.insert(tmp.clone());
        file
    };
    let result = (|| {
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
    let mut reg = registry();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    reg.open.remove(&tmp);
    result
}

/// Removes every temporary file this process is writing and refuses new ones; returns how many
/// were removed. For an interrupt handler: call it, then exit.
pub fn remove_temporaries() -> usize {
    let mut reg = registry();
    reg.closing = true;
    let open = std::mem::take(&mut reg.open);
    // Writers that finish now find their file gone and fail; `closing` keeps them from
    // creating new ones until the caller exits.
    open.iter()
        .filter(|p| std::fs::remove_file(p).is_ok())
        .count()
}

/// The process id in a temporary name `.NAME.<pid>.tmp`, if `file_name` is one.
pub fn temporary_owner(file_name: &str) -> Option<u32> {
    let rest = file_name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (_, pid) = rest.rsplit_once('.')?;
    pid.parse().ok()
}

/// Removes the temporary files in `dir` left by processes that no longer run (an earlier run
/// killed mid-write); returns their paths. Files of live processes (another run writing into
/// the same folder) and of this process are kept. Only where liveness can be checked (Unix).
pub fn remove_stale_temporaries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot list folder", dir.display())),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = temporary_owner(&name) else {
            continue;
        };
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_file && pid != std::process::id() && process_is_gone(pid) {
            let path = entry.path();
            std::fs::remove_file(&path).with_context(|| {
                format!("{}: cannot remove stale temporary file", path.display())
            })?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// Whether no process `pid` exists: `kill(pid, 0)` failing with ESRCH. A process we may not
/// signal (EPERM) exists.
#[cfg(unix)]
fn process_is_gone(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists and may be signalled; nothing is sent.
    let rc = unsafe { libc::kill(pid, 0) };
    rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

#[cfg(not(unix))]
fn process_is_gone(_pid: u32) -> bool {
    false
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

    #[test]
    fn temporary_names_carry_the_process_id() {
        let tmp = temporary_name(Path::new("out/chair.glb"));
        let name = tmp.file_name().unwrap().to_str().unwrap();
        assert_eq!(temporary_owner(name), Some(std::process::id()));
        assert_eq!(temporary_owner("chair.glb"), None);
        assert_eq!(temporary_owner(".chair.glb.x.tmp"), None);
    }

    #[cfg(unix)]
    #[test]
    fn only_dead_processes_temporaries_are_stale() {
        let dir = tempfile::tempdir().unwrap();
        // A pid above any Linux/macOS pid_max cannot be running.
        let dead = dir.path().join(".a.glb.2147483000.tmp");
        let mine = dir
            .path()
            .join(format!(".b.glb.{}.tmp", std::process::id()));
        let other = dir.path().join("c.glb");
        for p in [&dead, &mine, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        assert_eq!(
            remove_stale_temporaries(dir.path()).unwrap(),
            vec![dead.clone()]
        );
        assert!(!dead.exists() && mine.exists() && other.exists());
    }
}
