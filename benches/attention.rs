//! CPU throughput of the flash-style attention op at the DiT's shape (12 heads, head dim 128),
//! and its peak memory at 16k tokens (no N×N matrix: an N×N f32 score matrix per head would be
//! 1 GiB at 16k). Run with `cargo bench --bench attention`.

use std::time::Instant;

use candle_core::{Device, Tensor};
use trellis2::ops::attention::varlen_attention;
use trellis2::rng::TorchRng;

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn main() {
    let (heads, d) = (12usize, 128usize);
    let sizes: Vec<usize> = match std::env::args().nth(1).as_deref() {
        Some("--quick") => vec![1024],
        _ => vec![1024, 4096, 8192, 16384],
    };
    println!("threads: {}", rayon::current_num_threads());
    for n in sizes {
        let mut rng = TorchRng::new(n as u64);
        let mut make = || Tensor::from_vec(rng.randn(n * heads * d), (n, heads, d), &Device::Cpu);
        let (q, k, v) = (make().unwrap(), make().unwrap(), make().unwrap());
        let offsets = [0, n];
        let rss_before = peak_rss_mib();
        let start = Instant::now();
        let out =
            varlen_attention(&q, &k, &v, &offsets, &offsets, 1.0 / (d as f32).sqrt()).unwrap();
        let secs = start.elapsed().as_secs_f64();
        let flops = 4.0 * (n * n * d * heads) as f64;
        println!(
            "N = {n:>5}: {secs:>7.3} s  {:>6.1} GFLOP/s  peak RSS {:.0} MiB (inputs {:.0} MiB, before {:.0} MiB)  checksum {:.4}",
            flops / secs / 1e9,
            peak_rss_mib(),
            3.0 * (n * heads * d * 4) as f64 / (1 << 20) as f64,
            rss_before,
            out.sum_all().unwrap().to_scalar::<f32>().unwrap()
        );
    }
}
