//! Throughput of the torch-compatible normal generator at the pipeline's noise sizes.
//! Run with `cargo bench --bench randn`.

use std::time::Instant;

use trellis2::rng::TorchRng;

fn main() {
    // Sparse-structure noise, a 512 latent and a large 1024-cascade latent.
    for (name, n) in [
        ("ss_noise 1x8x16x16x16", 32_768usize),
        ("slat 3754x32", 3754 * 32),
        ("slat 49152x32", 49_152 * 32),
    ] {
        let reps = 20;
        let start = Instant::now();
        let mut checksum = 0.0f32;
        for seed in 0..reps {
            checksum += TorchRng::new(seed).randn(n)[n / 2];
        }
        let per = start.elapsed().as_secs_f64() / reps as f64;
        println!(
            "{name:<24} {:>8.3} ms  {:>7.1} M values/s  (checksum {checksum:.3})",
            per * 1e3,
            n as f64 / per / 1e6
        );
    }
}
