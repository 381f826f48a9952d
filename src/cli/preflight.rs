//! Checks of a `generate` or `texture` batch made before any model loads or any picture runs, so that a
//! batch never does its work to fail at the end: two inputs that would write the same outputs,
//! an output folder, latents destination or `--report` file that cannot be written. Each
//! problem is a usage error (exit 2) naming the paths.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};

/// Every destination of a batch checked at once (`generate` and `texture` alike): no two
/// inputs write the same outputs, the outputs already there may be replaced, and the output
/// folder, the latents destination (a folder or one file) and the report can be written.
pub fn destinations(
    items: &[Destinations],
    output: &Path,
    save_latents: Option<&Path>,
    report: Option<&Path>,
) -> Result<()> {
    unique_outputs(items)?;
    writable_folder(output, "output folder")?;
    replaceable_outputs(items)?;
    if let Some(p) = save_latents {
        if is_folder(p) {
            writable_folder(p, "latents folder")?;
        } else {
            writable_file(p, "latents file")?;
        }
    }
    if let Some(p) = report {
        writable_file(p, "report")?;
    }
    Ok(())
}

/// Whether `p` names a folder: an existing one, or a path ending in a separator.
pub fn is_folder(p: &Path) -> bool {
    p.is_dir() || p.as_os_str().to_string_lossy().ends_with(['/', '\\'])
}

/// One input's outputs, as the batch will write them.
pub struct Destinations<'a> {
    pub input: &'a Path,
    /// Output file stem (`chair` for `chair.png`).
    pub stem: &'a str,
    pub outputs: &'a [PathBuf],
}

/// Two inputs must never map to one output: stems are compared ignoring case, as the default
/// file systems of macOS and Windows do, so a batch behaves the same everywhere.
pub fn unique_outputs(items: &[Destinations]) -> Result<()> {
    let mut seen: HashMap<String, &Path> = HashMap::new();
    for item in items {
        if let Some(first) = seen.insert(item.stem.to_lowercase(), item.input) {
            let shown = item
                .outputs
                .first()
                .map(|p| p.with_file_name(format!("{}.*", item.stem)))
                .unwrap_or_else(|| PathBuf::from(item.stem));
            bail!(
                "{} and {} would both write {} (outputs are named after the picture without \
                 its extension): rename one, or run them separately",
                first.display(),
                item.input.display(),
                shown.display()
            );
        }
    }
    Ok(())
}

/// `dir` exists (created if needed) and a file can be created in it.
pub fn writable_folder(dir: &Path, what: &str) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow!("{}: cannot create {what}: {e}", dir.display()))?;
    let probe = dir.join(format!(".trellis2-write-test.{}.tmp", std::process::id()));
    std::fs::File::create(&probe)
        .map_err(|e| anyhow!("{}: {what} is not writable: {e}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// A file to be written at the end: its folder exists and is writable, and the path is not a
/// folder. The folder is not created (a typo in it should not make folders).
pub fn writable_file(path: &Path, what: &str) -> Result<()> {
    if path.is_dir() {
        bail!("{}: {what} names a folder, not a file", path.display());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!(
            "{}: cannot write the {what}: folder {} does not exist",
            path.display(),
            dir.display()
        );
    }
    writable_folder(dir, &format!("folder of the {what}"))
}

/// Outputs that exist must be files that a rename can replace, not folders.
pub fn replaceable_outputs(items: &[Destinations]) -> Result<()> {
    for p in items.iter().flat_map(|i| i.outputs) {
        if p.is_dir() {
            bail!("{}: an output would replace this folder", p.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_stem_twice_is_refused_naming_both_inputs() {
        let out = [PathBuf::from("out/chair.glb")];
        let items = [
            Destinations {
                input: Path::new("s/chair.png"),
                stem: "chair",
                outputs: &out,
            },
            Destinations {
                input: Path::new("s/Chair.webp"),
                stem: "Chair",
                outputs: &out,
            },
        ];
        let e = unique_outputs(&items).unwrap_err().to_string();
        assert!(
            e.contains("s/chair.png") && e.contains("s/Chair.webp"),
            "{e}"
        );
        assert!(unique_outputs(&items[..1]).is_ok());
    }

    #[test]
    fn destinations_under_a_file_or_missing_folder_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(writable_folder(&file.join("out"), "output folder").is_err());
        assert!(writable_folder(&dir.path().join("new/out"), "output folder").is_ok());
        let e = writable_file(&dir.path().join("missing/r.json"), "report")
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        assert!(writable_file(dir.path(), "report").is_err());
        assert!(writable_file(&dir.path().join("r.json"), "report").is_ok());
    }
}
