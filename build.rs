//! With the `cuda` feature: compiles every `kernels/cuda/*.cu` to a fatbin in `OUT_DIR` (embedded
//! by `src/ops/cuda/modules.rs` with `include_bytes!`). Without it: nothing, so the CPU build needs
//! no CUDA.
//!
//! A fatbin holds the machine code (SASS) of each compute capability of the build plus the PTX of
//! the highest, so the driver loads the SASS as it is on those cards instead of JIT-compiling PTX
//! on a machine's first run, and can still JIT the PTX on a newer card. The capabilities are
//! `TRELLIS2_CUDA_CAPS`, a comma list such as `80,86,89,90` for one binary that serves several
//! cards, else `CUDA_COMPUTE_CAP` (one number: candle's own kernel build reads it too and takes
//! no list), else 90 (the H100); each at least 80, which bf16 mma.sync and cp.async need. The
//! `*_sm90a.cu` files are built as sm_90a SASS alone, when the list holds 90 (their code runs on
//! compute capability 9.0 only). `TRELLIS2_CUDA_CAPS_BUILT` tells the crate the list.
//!
//! nvcc is taken from `$NVCC`, else `$CUDA_ROOT/bin/nvcc` (or `CUDA_PATH`, `CUDA_HOME`), else
//! `nvcc` on `PATH`. `kernels/cuda/install-nvcc.sh` installs a matching nvcc. The files compile in
//! parallel, on as many threads as cargo's jobs.
//!
//! candle's own kernel sources that a run uses (`third_party/candle-kernels/src/*.cu`, copied
//! unchanged from candle-kernels) are built the same way, with candle's flags, to
//! `candle_<name>.fatbin`: `src/ops/cuda/candle_modules.rs` loads them into candle's module store
//! when a device is prepared, so that candle finds its modules loaded and never JIT-compiles their
//! PTX.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=kernels/cuda");
    println!("cargo::rerun-if-changed=third_party/candle-kernels/src");
    println!("cargo::rustc-check-cfg=cfg(trellis2_sm90a)");
    for var in [
        "NVCC",
        "CUDA_ROOT",
        "CUDA_PATH",
        "CUDA_HOME",
        "CUDA_COMPUTE_CAP",
        "TRELLIS2_CUDA_CAPS",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = nvcc();
    let caps = env::var("TRELLIS2_CUDA_CAPS")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| ("TRELLIS2_CUDA_CAPS", v))
        .or_else(|| {
            env::var("CUDA_COMPUTE_CAP")
                .ok()
                .map(|v| ("CUDA_COMPUTE_CAP", v))
        });
    let caps = compute_caps(caps.as_ref().map(|(k, v)| (*k, v.as_str())));
    let list: Vec<String> = caps.iter().map(u32::to_string).collect();
    println!(
        "cargo::rustc-env=TRELLIS2_CUDA_CAPS_BUILT={}",
        list.join(",")
    );
    let dir = Path::new("kernels/cuda");
    let mut jobs = Vec::new();
    let candle_dir = Path::new("third_party/candle-kernels/src");
    for src in cu_files(candle_dir) {
        let name = src.file_stem().expect("file name").to_string_lossy();
        let fatbin = out.join(format!("candle_{name}.fatbin"));
        jobs.push((candle_dir, src, gencodes(&caps), fatbin));
    }
    for src in cu_files(dir) {
        let sm90a = src
            .file_stem()
            .is_some_and(|s| s.to_string_lossy().ends_with("_sm90a"));
        let gencode = if sm90a {
            if !caps.contains(&90) {
                continue;
            }
            println!("cargo::rustc-cfg=trellis2_sm90a");
            vec!["arch=compute_90a,code=sm_90a".to_string()]
        } else {
            gencodes(&caps)
        };
        let fatbin = out.join(src.with_extension("fatbin").file_name().expect("file name"));
        jobs.push((dir, src, gencode, fatbin));
    }
    // The longest compiles first, so that none starts last while the other threads idle: the
    // sm_90a files (22-28 s each on one core), then candle's (binary.cu: 13 s), then our others.
    // Taken from the back, hence the reverse.
    jobs.sort_by_key(|(include, src, _, _)| {
        let sm90a = src.to_string_lossy().ends_with("_sm90a.cu");
        (!sm90a, *include != candle_dir, src.clone())
    });
    jobs.reverse();
    let threads = env::var("NUM_JOBS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1usize)
        .clamp(1, jobs.len().max(1));
    let queue = Mutex::new(jobs);
    let next = || queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while let Some((include, src, gencode, fatbin)) = next() {
                    compile(&nvcc, include, &src, &gencode, &fatbin);
                }
            });
        }
    });
}

/// The `.cu` files of `dir`, sorted.
fn cu_files(dir: &Path) -> Vec<PathBuf> {
    let mut sources: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();
    sources
}

/// The compute capabilities of `(variable, value)` (`90`, `9.0` or a comma list of them), sorted
/// and deduplicated; 90 when unset.
fn compute_caps(var: Option<(&str, &str)>) -> Vec<u32> {
    let Some((name, var)) = var.filter(|(_, v)| !v.trim().is_empty()) else {
        return vec![90];
    };
    let mut caps: Vec<u32> = var
        .split(',')
        .map(|s| {
            let s = s.trim().replace('.', "");
            let cap: u32 = s.parse().unwrap_or_else(|_| {
                panic!("{name} must be compute capabilities like 90 or 80,86,90, got {var}")
            });
            assert!(cap >= 80, "{name}={var}: the kernels need sm_80 or newer");
            cap
        })
        .collect();
    caps.sort_unstable();
    caps.dedup();
    caps
}

/// nvcc's `-gencode` values for `caps`: SASS for each, PTX of the highest for newer cards.
fn gencodes(caps: &[u32]) -> Vec<String> {
    let mut g: Vec<String> = caps
        .iter()
        .map(|c| format!("arch=compute_{c},code=sm_{c}"))
        .collect();
    let top = caps.last().expect("at least one compute capability");
    g.push(format!("arch=compute_{top},code=compute_{top}"));
    g
}

/// `src` to `fatbin` with `include` as the header directory. Our flags are candle's, so its
/// sources compile as its own build compiles them to PTX.
fn compile(nvcc: &Path, include: &Path, src: &Path, gencode: &[String], fatbin: &Path) {
    let mut cmd = Command::new(nvcc);
    cmd.args(["-fatbin", "-O3", "-std=c++17", "--expt-relaxed-constexpr"]);
    for g in gencode {
        cmd.arg("-gencode").arg(g);
    }
    let status = cmd
        .arg("-I")
        .arg(include)
        .arg(src)
        .arg("-o")
        .arg(fatbin)
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "could not run {} ({e}); install nvcc with kernels/cuda/install-nvcc.sh and \
                 source the env.sh it prints",
                nvcc.display()
            )
        });
    assert!(status.success(), "nvcc failed on {}", src.display());
}

fn nvcc() -> PathBuf {
    if let Some(p) = env::var_os("NVCC") {
        return PathBuf::from(p);
    }
    for var in ["CUDA_ROOT", "CUDA_PATH", "CUDA_HOME"] {
        if let Some(root) = env::var_os(var) {
            let p = Path::new(&root).join("bin/nvcc");
            if p.exists() {
                return p;
            }
        }
    }
    PathBuf::from("nvcc")
}
