//! CPU throughput of the submanifold 3×3×3 conv on shell-shaped voxel sets (what the SC-VAE
//! decoders see), counting only existing (voxel, neighbour) pairs: 2·Ci·Co FLOPs per pair.
//! Run with `cargo bench --bench sparse_conv`.

use std::time::Instant;

use candle_core::{Device, Tensor};
use trellis2::ops::submanifold_conv3d;
use trellis2::selftest::voxel_shell;
use trellis2::sparse::SparseTensor;

/// Voxels within half a voxel-diagonal of a sphere of radius `r` centred in a `2(r+2)` grid
/// ([`voxel_shell`]), as flat `[T·4]` rows.
fn shell(r: f32) -> Vec<i32> {
    voxel_shell(0, 2 * (r as i32 + 2), r, 0.87)
        .into_iter()
        .flatten()
        .collect()
}

/// The smallest shell with at least `voxels` voxels.
fn shell_with(voxels: usize) -> Vec<i32> {
    let mut r = ((voxels as f32) / (4.0 * std::f32::consts::PI * 1.74)).sqrt() * 0.9;
    loop {
        let s = shell(r);
        if s.len() / 4 >= voxels {
            return s;
        }
        r += 0.5;
    }
}

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    println!(
        "rayon threads: {}; FLOPs = 2·Ci·Co per existing neighbour pair",
        rayon::current_num_threads()
    );
    for (voxels, channels) in [
        (66_000usize, 64usize),
        (263_000, 64),
        (20_000, 256),
        (5_000, 1024),
    ] {
        let rows = shell_with(voxels);
        let n = rows.len() / 4;
        let coords = Tensor::from_vec(rows, (n, 4), &dev)?;
        let feats = Tensor::randn(0f32, 1.0, (n, channels), &dev)?;
        let x = SparseTensor::new(&coords, feats)?;
        let start = Instant::now();
        let map = x.neighbour_map()?.clone();
        let build = start.elapsed().as_secs_f64();
        let weight = Tensor::randn(0f32, 0.05, (channels, 27, channels), &dev)?;
        let bias = Tensor::zeros(channels, candle_core::DType::F32, &dev)?;
        // Warm-up, then enough repetitions for about a second.
        submanifold_conv3d(x.feats(), map.tensor(), &weight, Some(&bias))?;
        let flops = 2.0 * (channels * channels) as f64 * map.pairs() as f64;
        let mut reps = 0;
        let start = Instant::now();
        while reps < 2 || start.elapsed().as_secs_f64() < 1.0 {
            submanifold_conv3d(x.feats(), map.tensor(), &weight, Some(&bias))?;
            reps += 1;
        }
        let per = start.elapsed().as_secs_f64() / reps as f64;
        println!(
            "voxels {n:>7}  C {channels:>4}  pairs/voxel {:>5.2}  map build {:>7.1} ms  conv {:>8.1} ms  {:>6.1} GFLOP/s",
            map.pairs() as f64 / n as f64,
            build * 1e3,
            per * 1e3,
            flops / per / 1e9
        );
    }
    Ok(())
}
