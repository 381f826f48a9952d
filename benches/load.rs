//! Load time and peak RSS per stage at full size: for each released architecture (manifests in
//! `tests/fixtures/golden/manifests/`), write a checkpoint of random weights in the release's
//! dtype, then time `Checkpoint::open_file` (mmap) + the strict loader building the model in
//! the compute dtype, and read the process's peak RSS (Linux `VmHWM`, reset between stages).
//! Needs ~3 GB of disk in the temp dir and ~6 GB of memory for a DiT in f32.
//!
//! `cargo bench --bench load [-- f32|bf16|f16]`

use std::time::Instant;

use candle_core::{DType, Device};
use trellis2::models::registry::build_model;
use trellis2::weights::Checkpoint;

#[path = "common/random_weights.rs"]
mod random_weights;
use random_weights::{manifest, write_random};

const STAGES: &[(&str, &str, DType)] = &[
    ("DINOv3 ViT-L/16", "dinov3_vitl16", DType::F32),
    (
        "flow DiT (any of 5)",
        "ss_flow_img_dit_1_3B_64_bf16.denoiser",
        DType::BF16,
    ),
    ("SS decoder", "ss_dec_conv3d_16l8_fp16.decoder", DType::F16),
    (
        "shape SC-VAE decoder",
        "shape_vae_next_dc_f16c32_fp16_ft_512.decoder",
        DType::F16,
    ),
    (
        "texture SC-VAE decoder",
        "tex_vae_next_dc_f16c32_fp16_ft_512.decoder",
        DType::F16,
    ),
];

fn status_kb(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Resets the peak-RSS counter (Linux: `echo 5 > /proc/self/clear_refs`).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn main() -> anyhow::Result<()> {
    let compute = match std::env::args().nth(1).as_deref() {
        Some("bf16") => DType::BF16,
        Some("f16") => DType::F16,
        _ => DType::F32,
    };
    let dir = tempfile::tempdir()?;
    println!("compute dtype {compute:?}; peak RSS is the whole process (baseline shown first)");
    println!(
        "{:<24} {:>14} {:>8} {:>10} {:>10} {:>12}",
        "stage", "params", "stored", "file MiB", "load s", "peak RSS MiB"
    );
    for (label, name, stored) in STAGES {
        let (class, args) = manifest(name)?;
        let path = dir.path().join(format!("{name}.safetensors"));
        let params = write_random(&path, &class, &args, *stored)?;
        let file_mib = std::fs::metadata(&path)?.len() >> 20;
        reset_peak();
        let base = status_kb("VmRSS:") >> 10;
        let t = Instant::now();
        let ckpt = Checkpoint::open_file(&path)?;
        let strict = ckpt.strict().allow_unused(&[
            "rope_phases",
            "norm.weight",
            "norm.bias",
            "embeddings.mask_token",
        ]);
        let vb = strict.var_builder(compute, &Device::Cpu);
        build_model(&class, &args, vb)?;
        strict.finish()?;
        let secs = t.elapsed().as_secs_f64();
        let peak = status_kb("VmHWM:") >> 10;
        println!(
            "{label:<24} {params:>14} {:>8} {file_mib:>10} {secs:>10.2} {:>12}",
            format!("{stored:?}").to_lowercase(),
            format!("{peak} (base {base})")
        );
        drop(ckpt);
        std::fs::remove_file(&path)?;
    }
    Ok(())
}
