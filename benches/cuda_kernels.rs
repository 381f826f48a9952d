//! The CUDA kernels on the GPU at the shapes of the project's upstream baseline (`docs/BASELINE.md`): submanifold conv
//! on shell-shaped voxel sets (f16, FLOPs = 2·C·C per existing neighbour pair; unsorted, in the
//! map's sorted voxel order in the default window and in one window, with each order's GPU build
//! time; a row per kernel, mma.sync and, where it can run, wgmma, at ≤ 128 channels also wgmma
//! with 256-row tiles; the SC-VAE decoders' C2S first conv on the parents against the children
//! conv, `TRELLIS2_C2S_CONV`), flash attention (bf16, 12 heads × 128, FLOPs = 4·N·M·128·12), and the models' linear
//! layers (cuBLASLt epilogues or the wgmma linear against the composed path). Warm; each sample is the mean of
//! several launches between two device synchronisations; the median of the samples is printed.
//! Run: `cargo bench --features cuda --bench cuda_kernels` (`-- --quick` for fewer samples,
//! `-- linear` for the linear layers alone, `-- attention` for the attention tables alone,
//! `-- conv` for the conv tables alone, `-- c2s` for the C2S first-conv table alone).

use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor};
use trellis2::ops::attention::{
    attention_kernel_available, varlen_attention_with, AttentionKernel,
};
use trellis2::ops::sparse_conv::{
    conv_kernel_available, submanifold_conv3d_ordered_with, submanifold_conv3d_with, ConvKernel,
};
use trellis2::ops::tuning::Tuning;
use trellis2::selftest::voxel_shell;
use trellis2::sparse::conv_order::default_sort_window;
use trellis2::sparse::SparseTensor;

/// Voxels within half a voxel-diagonal of a sphere of radius `r` ([`voxel_shell`]): ≈ 4π·r²·1.74
/// voxels with ≈ 17 of 27 neighbours each, like the decoders' surfaces; flat `[T·4]` rows.
fn shell(r: f32) -> Vec<i32> {
    voxel_shell(0, 2 * (r as i32 + 2), r, 0.87)
        .into_iter()
        .flatten()
        .collect()
}

/// Median over `samples` of the mean time of `iters` calls, in milliseconds.
fn time_ms(
    dev: &Device,
    samples: usize,
    iters: usize,
    mut f: impl FnMut() -> Result<Tensor>,
) -> Result<f64> {
    for _ in 0..3 {
        f()?;
    }
    dev.synchronize()?;
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        for _ in 0..iters {
            f()?;
        }
        dev.synchronize()?;
        times.push(start.elapsed().as_secs_f64() * 1e3 / iters as f64);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let samples = if quick { 3 } else { 7 };
    let dev = Device::new_cuda(0)?;
    if std::env::args().any(|a| a == "linear") {
        return linear_layers(&dev, samples);
    }
    if std::env::args().any(|a| a == "attention") {
        return attention(&dev, samples);
    }
    if std::env::args().any(|a| a == "c2s") {
        return c2s_first_conv(&dev, samples);
    }
    println!("sparse submanifold conv 3×3×3, f16 operands, fp32 accumulation");
    println!(
        "unsorted: voxels in coordinate order; sorted: by neighbour mask in the default window; \
         full: one window (each order's one-off GPU build timed apart); {}",
        Tuning::current()
    );
    // Both conv kernels where the wgmma one can run (an sm_90a build on a 9.0 device).
    let mut conv_kernels = vec![ConvKernel::Mma];
    if conv_kernel_available(ConvKernel::Wgmma, &dev)? {
        conv_kernels.push(ConvKernel::Wgmma);
    }
    println!(
        "| voxels × channels | kernel | voxels | pairs/voxel | unsorted ms | TFLOP/s | sorted ms | TFLOP/s | full ms | TFLOP/s | order build ms (window / full) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    // Loads the order kernels once, so the first shape's build time is the sort's alone.
    {
        let rows = shell(20.0);
        let n = rows.len() / 4;
        let coords = Tensor::from_vec(rows, (n, 4), &dev)?;
        let x = SparseTensor::new(&coords, Tensor::zeros((n, 1), DType::F32, &dev)?)?;
        x.neighbour_map()?.sorted_order(0)?;
    }
    for (voxels, c) in [
        (20_000usize, 1024usize),
        (80_000, 512),
        (300_000, 256),
        (1_200_000, 128),
        (1_700_000, 64),
    ] {
        let r = (voxels as f32 / (4.0 * std::f32::consts::PI * 1.74)).sqrt();
        let rows = shell(r);
        let n = rows.len() / 4;
        // Coordinates on the GPU: the map is built there, as in the decoders.
        let coords = Tensor::from_vec(rows, (n, 4), &dev)?;
        let x = SparseTensor::new(&coords, Tensor::zeros((n, 1), DType::F32, &dev)?)?;
        let map = x.neighbour_map()?;
        let pairs = map.pairs();
        let feats = Tensor::randn(0f32, 1.0, (n, c), &dev)?.to_dtype(DType::F16)?;
        let weight = Tensor::randn(0f32, 0.02, (c, 27, c), &dev)?.to_dtype(DType::F16)?;
        // The one-off build of an order (cached by the map afterwards), synchronised.
        let build = |window: usize| -> Result<(Tensor, f64)> {
            dev.synchronize()?;
            let start = Instant::now();
            let order = map.sorted_order(window)?;
            dev.synchronize()?;
            Ok((order, start.elapsed().as_secs_f64() * 1e3))
        };
        let (windowed, build_windowed) = build(default_sort_window(2 * c))?;
        let (full, build_full) = build(0)?;
        let flops = 2.0 * (c * c) as f64 * pairs as f64;
        // Each kernel, and at ≤ 128 channels the wgmma one with 256-row tiles too
        // (`TRELLIS2_CONV_ROWS=256`).
        let mut variants: Vec<(String, ConvKernel, Tuning)> = conv_kernels
            .iter()
            .map(|&k| (format!("{k:?}"), k, Tuning::current()))
            .collect();
        if c <= 128 && conv_kernels.contains(&ConvKernel::Wgmma) {
            let rows256 = Tuning {
                conv_rows: Some(256),
                ..Tuning::current()
            };
            variants.push(("Wgmma, 256 rows".into(), ConvKernel::Wgmma, rows256));
        }
        for (label, kernel, tuning) in variants {
            let (unsorted, sorted, sorted_full) = tuning.with(|| -> Result<_> {
                let unsorted = time_ms(&dev, samples, 10, || {
                    submanifold_conv3d_with(kernel, &feats, map.tensor(), &weight, None)
                })?;
                let sorted = time_ms(&dev, samples, 10, || {
                    submanifold_conv3d_ordered_with(kernel, &feats, map, &windowed, &weight, None)
                })?;
                let sorted_full = time_ms(&dev, samples, 10, || {
                    submanifold_conv3d_ordered_with(kernel, &feats, map, &full, &weight, None)
                })?;
                Ok((unsorted, sorted, sorted_full))
            })?;
            println!(
                "| {}k × {c} | {label} | {n} | {:.2} | {unsorted:.3} | {:.0} | {sorted:.3} | {:.0} | {sorted_full:.3} | {:.0} | {build_windowed:.2} / {build_full:.2} |",
                voxels / 1000,
                pairs as f64 / n as f64,
                flops / unsorted / 1e9,
                flops / sorted / 1e9,
                flops / sorted_full / 1e9
            );
        }
    }

    c2s_first_conv(&dev, samples)?;
    if std::env::args().any(|a| a == "conv") {
        return Ok(());
    }
    attention(&dev, samples)?;
    linear_layers(&dev, samples)
}

/// Flash attention at the flows' shape (bf16, 12 heads × 128), self and cross, with each CUDA
/// kernel.
fn attention(dev: &Device, samples: usize) -> Result<()> {
    let dev = dev.clone();
    let (heads, d) = (12usize, 128usize);
    // Every CUDA kernel where the Hopper ones can run (an sm_90a build on a 9.0 device): the
    // warp-specialised fa3 with its consumer warpgroups' ping-pong on and off, 128 and 176 keys
    // a tile. `attention` as an argument: the attention tables alone.
    let mut kernels = vec![(AttentionKernel::Mma, true, 128)];
    if attention_kernel_available(AttentionKernel::Wgmma, &dev)? {
        kernels.push((AttentionKernel::Wgmma, true, 128));
        for keys in [128, 176] {
            for pingpong in [true, false] {
                kernels.push((AttentionKernel::Fa3, pingpong, keys));
            }
        }
    }
    for (kernel, pingpong, keys) in kernels {
        let tuning = Tuning {
            attention_pingpong: Some(pingpong),
            attention_keys: keys,
            ..Tuning::current()
        };
        let variant = if kernel == AttentionKernel::Fa3 {
            let pp = if pingpong { "on" } else { "off" };
            format!("{kernel:?}, ping-pong {pp}, {keys} keys a tile")
        } else {
            format!("{kernel:?}")
        };
        println!();
        println!(
            "flash attention ({variant}), bf16, {heads} heads × {d}, fp32 softmax and accumulation"
        );
        println!("| case | ms | TFLOP/s |");
        println!("|---|---|---|");
        for (n, m) in [
            (4096usize, 4096usize),
            (8192, 8192),
            (15_000, 15_000),
            (30_000, 30_000),
            (49_152, 49_152),
            (15_000, 4101),
            (49_152, 4101),
        ] {
            let make = |len: usize| -> Result<Tensor> {
                Tensor::randn(0f32, 1.0, (len, heads, d), &dev)?.to_dtype(DType::BF16)
            };
            let (q, k, v) = (make(n)?, make(m)?, make(m)?);
            let (qo, ko) = ([0, n], [0, m]);
            let iters = if n * m > 200_000_000 { 2 } else { 10 };
            let ms = tuning.with(|| {
                time_ms(&dev, samples, iters, || {
                    varlen_attention_with(kernel, &q, &k, &v, &qo, &ko, 1.0 / (d as f32).sqrt())
                })
            })?;
            let flops = 4.0 * (n * m * d * heads) as f64;
            let case = if n == m {
                format!("self {n}²")
            } else {
                format!("cross {n} × {m}")
            };
            println!("| {case} | {ms:.3} | {:.0} |", flops / ms / 1e9);
        }
    }
    Ok(())
}

/// The models' linear layers: cuBLASLt with the bias, tanh-GELU and residual in the epilogue
/// against the composed path (candle's cuBLAS matmul, `bias_act`, an add), at the shapes of the
/// flow DiT (bf16, 1536 channels, 3.7k tokens), DINOv3 (f32, 1024 channels, 1029 and 4101 tokens)
/// and the SC-VAE decoders' ConvNeXt `mlp2 + x` (f16, 256 → 64, 1M voxels).
fn linear_layers(dev: &Device, samples: usize) -> Result<()> {
    use trellis2::ops::bias_act::Activation;
    use trellis2::ops::linear::{last_linear_path, Linear};
    println!();
    // The fused column: cuBLASLt with its epilogue, or for SiLU / exact GELU in f16 and bf16
    // the wgmma kernel with bias and activation in its epilogue (`TRELLIS2_LINEAR_ACT=on`).
    println!(
        "linear layers: cuBLASLt epilogue (or TRELLIS2_LINEAR_ACT=on) vs matmul + bias_act (+ add)"
    );
    println!("| layer | dtype | M × K → N | fused ms | path | composed ms | speed-up |");
    println!("|---|---|---|---|---|---|---|");
    let cases: &[(&str, DType, usize, usize, usize, Activation, bool)] = &[
        (
            "DiT to_qkv",
            DType::BF16,
            3700,
            1536,
            4608,
            Activation::None,
            false,
        ),
        (
            "DiT mlp fc1 GELU-tanh",
            DType::BF16,
            3700,
            1536,
            8192,
            Activation::GeluTanh,
            false,
        ),
        (
            "DiT mlp fc2",
            DType::BF16,
            3700,
            8192,
            1536,
            Activation::None,
            false,
        ),
        (
            "DiT cross to_out + x",
            DType::BF16,
            3700,
            1536,
            1536,
            Activation::None,
            true,
        ),
        (
            "DINOv3 o_proj + x",
            DType::F32,
            1029,
            1024,
            1024,
            Activation::None,
            true,
        ),
        (
            "DINOv3 up_proj GELU-erf",
            DType::F32,
            1029,
            1024,
            4096,
            Activation::GeluErf,
            false,
        ),
        (
            "DINOv3 down_proj + x",
            DType::F32,
            1029,
            4096,
            1024,
            Activation::None,
            true,
        ),
        (
            "DINOv3 o_proj + x",
            DType::F32,
            4101,
            1024,
            1024,
            Activation::None,
            true,
        ),
        (
            "DINOv3 down_proj + x",
            DType::F32,
            4101,
            4096,
            1024,
            Activation::None,
            true,
        ),
        (
            "ConvNeXt mlp2 + x",
            DType::F16,
            1_000_000,
            256,
            64,
            Activation::None,
            true,
        ),
        // The SC-VAE decoders' ConvNeXt `Linear(C, 4C)` + SiLU at 1024, one row per level
        // (voxels of the shape decoder's levels).
        (
            "SC-VAE mlp0 SiLU L0",
            DType::F16,
            15_300,
            1024,
            4096,
            Activation::Silu,
            false,
        ),
        (
            "SC-VAE mlp0 SiLU L1",
            DType::F16,
            71_200,
            512,
            2048,
            Activation::Silu,
            false,
        ),
        (
            "SC-VAE mlp0 SiLU L2",
            DType::F16,
            331_800,
            256,
            1024,
            Activation::Silu,
            false,
        ),
        (
            "SC-VAE mlp0 SiLU L3",
            DType::F16,
            1_546_000,
            128,
            512,
            Activation::Silu,
            false,
        ),
    ];
    let fused_tuning = Tuning {
        linear_act: Some(usize::MAX),
        ..Tuning::current()
    };
    for &(name, dtype, m, k, n, act, residual) in cases {
        let x = Tensor::randn(0f32, 1.0, (m, k), dev)?.to_dtype(dtype)?;
        let w = Tensor::randn(0f32, 1.0 / (k as f32).sqrt(), (n, k), dev)?.to_dtype(dtype)?;
        let b = Tensor::randn(0f32, 0.5, n, dev)?.to_dtype(dtype)?;
        let r = Tensor::randn(0f32, 1.0, (m, n), dev)?.to_dtype(dtype)?;
        let lin = Linear::new(w, Some(b));
        let iters = if m * k * n > 100_000_000_000 { 3 } else { 20 };
        let (fused, path) = fused_tuning.with(|| {
            let ms = time_ms(dev, samples, iters, || {
                if residual {
                    lin.forward_residual(&x, &r)
                } else {
                    lin.forward_act(&x, act)
                }
            })?;
            Result::Ok((ms, last_linear_path()))
        })?;
        let composed = time_ms(dev, samples, iters, || {
            if residual {
                lin.forward_residual_unfused(&x, &r)
            } else {
                lin.forward_act_unfused(&x, act)
            }
        })?;
        println!(
            "| {name} | {dtype:?} | {m} × {k} → {n} | {fused:.3} | {path:?} | {composed:.3} | {:.2}× |",
            composed / fused
        );
    }
    Ok(())
}

/// The SC-VAE decoders' C2S first conv and its LayerNorm + SiLU at the 1024 decoders' four C2S
/// shapes (parents × Ci → 8·C', ≈ 4.66 of 8 children kept as the stage bench forces them), f16:
/// the parents conv (8·C' channels on every parent) against the children conv (C' channels on
/// each existing child, `TRELLIS2_C2S_CONV=children`), the conv alone and with the norm that
/// follows it (`Subdivision::conv_layer_norm`, the block's path). FLOPs of a row: 2·Ci·C' per
/// existing neighbour pair of its parent (the children conv's useful work in both columns).
fn c2s_first_conv(dev: &Device, samples: usize) -> Result<()> {
    use trellis2::ops::bias_act::Activation;
    use trellis2::ops::sparse_conv::{submanifold_conv3d_children, ConvWeights};
    use trellis2::ops::tuning::C2sConv;
    use trellis2::sparse::Subdivision;
    println!();
    println!(
        "C2S first conv (f16), parents conv (8·C' channels on every parent; the norm reads the \\
         kept children's blocks) vs children conv (C' channels on each kept child), 4.66 of 8 \\
         children kept; {}",
        Tuning::current()
    );
    println!(
        "| parents × Ci → 8·C' | children | parents conv ms | children conv ms | useful TFLOP/s (parents / children) | + LN+SiLU: parents ms | children ms |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (voxels, ci, c_child) in [
        (15_272usize, 1024usize, 512usize),
        (71_187, 512, 256),
        (331_829, 256, 128),
        (1_546_768, 128, 64),
    ] {
        let r = (voxels as f32 / (4.0 * std::f32::consts::PI * 1.74)).sqrt();
        let rows = shell(r);
        let n = rows.len() / 4;
        let coords = Tensor::from_vec(rows, (n, 4), dev)?;
        let x = SparseTensor::new(&coords, Tensor::zeros((n, 1), DType::F32, dev)?)?;
        let map = x.neighbour_map()?;
        // Each child kept with probability 4.66 / 8 (a fixed LCG, the same every run).
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mask: Vec<bool> = (0..n * 8)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 33) % 10_000 < 5_825
            })
            .collect();
        let sub = Subdivision::from_mask(x.coord_set(), &mask)?;
        let children = sub.children().len();
        let co = 8 * c_child;
        let feats = Tensor::randn(0f32, 1.0, (n, ci), dev)?.to_dtype(DType::F16)?;
        let weight = Tensor::randn(0f32, 0.02, (co, 27, ci), dev)?.to_dtype(DType::F16)?;
        let bias = Tensor::zeros(co, DType::F32, dev)?;
        let conv = ConvWeights::new(&weight, &bias, DType::F16)?;
        let h = x.replace(feats.clone())?;
        let parents_ms = time_ms(dev, samples, 10, || conv.conv_map(&feats, map))?;
        let children_ms = time_ms(dev, samples, 10, || {
            submanifold_conv3d_children(&feats, map, sub.sources(), &weight, Some(&bias))
        })?;
        let with_norm = |mode: C2sConv| {
            Tuning {
                c2s_conv: mode,
                ..Tuning::current()
            }
            .with(|| {
                time_ms(dev, samples, 10, || {
                    Ok(sub
                        .conv_layer_norm(&conv, &h, 1e-6, Activation::Silu)?
                        .feats()
                        .clone())
                })
            })
        };
        let (parents_ln, children_ln) =
            (with_norm(C2sConv::Parents)?, with_norm(C2sConv::Children)?);
        // Useful pairs: each child's parent's neighbours.
        let per_parent = map.pairs() as f64 / n as f64;
        let flops = 2.0 * (ci * c_child) as f64 * per_parent * children as f64;
        println!(
            "| {}k × {ci} → 8·{c_child} | {children} | {parents_ms:.3} | {children_ms:.3} | {:.0} / {:.0} | {parents_ln:.3} | {children_ln:.3} |",
            n / 1000,
            flops / parents_ms / 1e9,
            flops / children_ms / 1e9,
        );
    }
    Ok(())
}
