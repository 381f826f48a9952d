//! The vendored candle files (`third_party/`) are the crates.io packages' own, but for the one
//! method `third_party/candle-core/PATCHED.md` describes. Checked against cargo's unpacked copy of
//! the packages (`$CARGO_HOME/registry/src/*/`), and skipped with a line on stdout where that copy
//! is not on the machine (a build that never fetched them from crates.io).

use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The version of the vendored candle-core (candle-kernels has the same).
fn version() -> String {
    let manifest = fs::read_to_string(root().join("third_party/candle-core/Cargo.toml")).unwrap();
    let line = manifest
        .lines()
        .find(|l| l.starts_with("version = "))
        .expect("the vendored Cargo.toml has a version");
    line["version = ".len()..].trim_matches('"').to_string()
}

/// Cargo's unpacked copy of `package` (`name-version`), if there is one.
fn registry_copy(package: &str) -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))?;
    let mut indexes: Vec<PathBuf> = fs::read_dir(home.join("registry/src"))
        .ok()?
        .flatten()
        .map(|e| e.path().join(package))
        .filter(|p| p.is_dir())
        .collect();
    indexes.sort();
    indexes.pop()
}

/// Every file under `dir`, relative to it.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// `text` without the method the patch adds: its doc comment's first line up to the blank line
/// after its body.
fn without_added_method(text: &str) -> String {
    let start = text
        .find("    /// Loads `image` (a cubin or fatbin")
        .expect("device.rs has the added method's doc comment");
    let end = text[start..]
        .find("\n    }\n\n")
        .map(|e| start + e + "\n    }\n\n".len())
        .expect("the added method ends");
    assert!(text[start..end].contains("pub fn load_module_image("));
    format!("{}{}", &text[..start], &text[end..])
}

#[test]
fn vendored_candle_core_is_the_package_plus_one_method() {
    let Some(upstream) = registry_copy(&format!("candle-core-{}", version())) else {
        println!("no registry copy of candle-core {}: not checked", version());
        return;
    };
    let ours = root().join("third_party/candle-core");
    let mut compared = 0;
    for rel in files(&ours.join("src")) {
        let rel = Path::new("src").join(rel);
        let mine = fs::read_to_string(ours.join(&rel)).unwrap();
        let theirs = fs::read_to_string(upstream.join(&rel))
            .unwrap_or_else(|e| panic!("{}: not in the package ({e})", rel.display()));
        let mine = if rel == Path::new("src/cuda_backend/device.rs") {
            without_added_method(&mine)
        } else {
            mine
        };
        assert!(mine == theirs, "{} differs from the package", rel.display());
        compared += 1;
    }
    for rel in ["Cargo.toml", "LICENSE", "README.md", ".cargo_vcs_info.json"] {
        let mine = fs::read(ours.join(rel)).unwrap();
        assert!(
            mine == fs::read(upstream.join(rel)).unwrap(),
            "{rel} differs"
        );
    }
    // The package's whole src/ is here.
    assert_eq!(compared, files(&upstream.join("src")).len());
}

#[test]
fn vendored_candle_kernel_sources_are_the_packages() {
    let Some(upstream) = registry_copy(&format!("candle-kernels-{}", version())) else {
        println!(
            "no registry copy of candle-kernels {}: not checked",
            version()
        );
        return;
    };
    let ours = root().join("third_party/candle-kernels/src");
    let sources = files(&ours);
    assert_eq!(sources.len(), 12, "nine .cu files and three headers");
    for rel in sources {
        let mine = fs::read(ours.join(&rel)).unwrap();
        let theirs = fs::read(upstream.join("src").join(&rel)).unwrap();
        assert!(mine == theirs, "{} differs from the package", rel.display());
    }
}
