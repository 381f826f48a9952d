//! With the `cuda` feature: compiles every `kernels/cuda/*.cu` to PTX in `OUT_DIR` (embedded by
//! `src/ops/cuda/ptx.rs` with `include_str!`). Without it: nothing, so the CPU build needs no CUDA.
//!
//! nvcc is taken from `$NVCC`, else `$CUDA_ROOT/bin/nvcc` (or `CUDA_PATH`, `CUDA_HOME`), else
//! `nvcc` on `PATH`; the target is `sm_$CUDA_COMPUTE_CAP` (default 90, the H100; at least 80,
//! which bf16 mma.sync and cp.async need). `kernels/cuda/install-nvcc.sh` installs a matching nvcc.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=kernels/cuda");
    println!("cargo::rustc-check-cfg=cfg(trellis2_sm90a)");
    for var in [
        "NVCC",
        "CUDA_ROOT",
        "CUDA_PATH",
        "CUDA_HOME",
        "CUDA_COMPUTE_CAP",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = nvcc();
    let cap: u32 = env::var("CUDA_COMPUTE_CAP")
        .ok()
        .map(|s| s.trim().replace('.', ""))
        .map(|s| {
            s.parse()
                .unwrap_or_else(|_| panic!("CUDA_COMPUTE_CAP must be a number like 90, got {s}"))
        })
        .unwrap_or(90);
    assert!(
        cap >= 80,
        "CUDA_COMPUTE_CAP={cap}: the kernels need sm_80 or newer"
    );
    let dir = Path::new("kernels/cuda");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("kernels/cuda exists")
        .map(|e| e.expect("readable kernels/cuda entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();
    for src in sources {
        let sm90a = src
            .file_stem()
            .is_some_and(|s| s.to_string_lossy().ends_with("_sm90a"));
        let arch = match (sm90a, cap) {
            (false, _) => format!("sm_{cap}"),
            (true, 90) => "sm_90a".to_string(),
            (true, _) => continue,
        };
        let ptx = out.join(src.with_extension("ptx").file_name().expect("file name"));
        let status = Command::new(&nvcc)
            .args(["-ptx", "-O3", "-std=c++17", "--expt-relaxed-constexpr"])
            .arg(format!("-arch={arch}"))
            .arg("-I")
            .arg(dir)
            .arg(&src)
            .arg("-o")
            .arg(&ptx)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "could not run {} ({e}); install nvcc with kernels/cuda/install-nvcc.sh and \
                     source the env.sh it prints",
                    nvcc.display()
                )
            });
        assert!(status.success(), "nvcc failed on {}", src.display());
        if sm90a {
            println!("cargo::rustc-cfg=trellis2_sm90a");
        }
    }
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
