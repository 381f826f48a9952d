//! The CUDA kernels against their CPU reference ops, on an NVIDIA GPU (built only with the
//! `cuda` feature). Every test needs CUDA device 0 and fails, rather than skips, without one.
//! Run: `cargo test --release --features cuda --test cuda_kernels -- --nocapture`; each check
//! prints max|err| / max|ref|.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Result, Tensor};
use trellis2::ops::attention::{
    attention_kernel_available, varlen_attention, varlen_attention_with, AttentionKernel,
};
use trellis2::ops::sparse_conv::ABSENT;
use trellis2::ops::{submanifold_conv3d, submanifold_conv3d_map};
use trellis2::sparse::{NeighbourMap, SparseTensor};

/// bf16 / f16 operands with fp32 accumulation: the outputs' own rounding is ≈ 4e-3 relative.
const TOL: f32 = 1e-2;

fn gpu() -> Device {
    Device::new_cuda(0).expect("CUDA device 0: these tests need an NVIDIA GPU")
}

/// Small deterministic generator (tests need fresh but reproducible data per case).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `max|got − want| / max|want|` (absolute error when the reference is all zeros); NaN never
/// passes.
fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims());
    let g = got.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let w = want.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let g = g.to_vec1::<f32>().unwrap();
    let w = w.to_vec1::<f32>().unwrap();
    if g.iter().any(|x| !x.is_finite()) {
        return f32::INFINITY;
    }
    let scale = w.iter().fold(0f32, |m, x| m.max(x.abs()));
    let err = g
        .iter()
        .zip(&w)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    if scale > 0.0 {
        err / scale
    } else {
        err
    }
}

/// Random values rounded to `dtype`, returned as f32 on the CPU (the reference's input) — the
/// GPU gets the same values in `dtype`.
fn rounded(shape: &[usize], std: f32, dtype: DType) -> Result<Tensor> {
    Tensor::randn(0f32, std, shape, &Device::Cpu)?
        .to_dtype(dtype)?
        .to_dtype(DType::F32)
}

/// A random neighbour map: the centre tap is the voxel itself, other taps present with
/// probability `p` and pointing at random voxels.
fn random_map(n: usize, p: f64, rng: &mut Lcg) -> Vec<u32> {
    let mut map = vec![ABSENT; n * 27];
    for v in 0..n {
        for k in 0..27 {
            if k == 13 {
                map[v * 27 + k] = v as u32;
            } else if (rng.below(1_000_000) as f64) < p * 1e6 {
                map[v * 27 + k] = rng.below(n) as u32;
            }
        }
    }
    map
}

/// Runs the conv on the GPU in `dtype` and on the CPU in f32 on the same (rounded) values.
fn check_conv(
    what: &str,
    map: Vec<u32>,
    n: usize,
    ci: usize,
    co: usize,
    dtype: DType,
    bias: bool,
) -> Result<()> {
    let dev = gpu();
    let feats = rounded(&[n, ci], 1.0, dtype)?;
    let weight = rounded(&[co, 27, ci], 0.1, dtype)?;
    let bias = if bias {
        Some(Tensor::randn(0f32, 1.0, co, &Device::Cpu)?)
    } else {
        None
    };
    let map = Tensor::from_vec(map, (n, 27), &Device::Cpu)?;
    let want = submanifold_conv3d(&feats, &map, &weight, bias.as_ref())?;
    let got = submanifold_conv3d(
        &feats.to_dtype(dtype)?.to_device(&dev)?,
        &map.to_device(&dev)?,
        &weight.to_dtype(dtype)?.to_device(&dev)?,
        bias.as_ref()
            .map(|b| b.to_device(&dev))
            .transpose()?
            .as_ref(),
    )?;
    assert_eq!(got.dtype(), dtype);
    assert_eq!(got.dims(), [n, co]);
    let err = rel_err(&got.to_device(&Device::Cpu)?, &want);
    println!("sparse conv {what:<34} T {n:>7} Ci {ci:>4} Co {co:>4} {dtype:?}: max|err|/max|ref| = {err:.2e}");
    assert!(err <= TOL, "{what}: error {err} over {TOL}");
    Ok(())
}

#[test]
fn sparse_conv_random_maps() -> Result<()> {
    let mut rng = Lcg(7);
    for (n, ci, co, dtype, bias) in [
        (1000, 64, 64, DType::BF16, false),
        (777, 128, 256, DType::F16, true),
        (513, 32, 96, DType::BF16, true),
        (300, 40, 200, DType::F16, false),
        (2000, 1024, 64, DType::BF16, false),
        (129, 16, 16, DType::F32, true),
    ] {
        let map = random_map(n, 0.6, &mut rng);
        check_conv("random map", map, n, ci, co, dtype, bias)?;
    }
    Ok(())
}

#[test]
fn sparse_conv_edge_cases() -> Result<()> {
    let mut rng = Lcg(11);
    // Empty.
    check_conv("empty", vec![], 0, 32, 32, DType::BF16, false)?;
    // One voxel, only its own centre tap.
    let mut one = vec![ABSENT; 27];
    one[13] = 0;
    check_conv("one voxel", one, 1, 8, 8, DType::BF16, true)?;
    // Odd channel counts (element-wise copy path) and channel counts below one tile.
    for (ci, co) in [(3, 1), (13, 7), (100, 65), (1, 130), (33, 5)] {
        let map = random_map(257, 0.5, &mut rng);
        check_conv("odd channels", map, 257, ci, co, DType::F16, true)?;
    }
    // Isolated voxels: no neighbours at all (not even the centre), and only the centre.
    check_conv(
        "no neighbours (bias only)",
        vec![ABSENT; 300 * 27],
        300,
        64,
        64,
        DType::BF16,
        true,
    )?;
    let centre: Vec<u32> = (0..300u32)
        .flat_map(|v| (0..27).map(move |k| if k == 13 { v } else { ABSENT }))
        .collect();
    check_conv("isolated voxels", centre, 300, 64, 128, DType::BF16, false)?;
    // Every tap present.
    let full = random_map(256, 1.0, &mut rng);
    check_conv("all 27 taps", full, 256, 64, 64, DType::BF16, false)?;
    Ok(())
}

/// Voxels within half a voxel-diagonal of a sphere of radius `r` (the decoders' surface shells).
fn shell(r: f32) -> Vec<i32> {
    let n = 2 * (r as i32 + 2);
    let c = n as f32 / 2.0;
    let mut rows = Vec::new();
    for x in 0..n {
        for y in 0..n {
            for z in 0..n {
                let p = [x, y, z].map(|a| a as f32 + 0.5 - c);
                let d = (p[0] * p[0] + p[1] * p[1] + p[2] * p[2]).sqrt();
                if d >= r - 0.87 && d < r + 0.87 {
                    rows.extend([0, x, y, z]);
                }
            }
        }
    }
    rows
}

#[test]
fn sparse_conv_large_shells() -> Result<()> {
    for (r, c, dtype) in [
        (60.0, 64, DType::F16),
        (30.0, 256, DType::BF16),
        (90.0, 32, DType::BF16),
    ] {
        let rows = shell(r);
        let n = rows.len() / 4;
        let coords = Tensor::from_vec(rows, (n, 4), &Device::Cpu)?;
        let x = SparseTensor::new(&coords, Tensor::zeros((n, 1), DType::F32, &Device::Cpu)?)?;
        let map = x
            .neighbour_map()?
            .tensor()
            .flatten_all()?
            .to_vec1::<u32>()?;
        check_conv("shell", map, n, c, c, dtype, true)?;
    }
    Ok(())
}

/// `order` is a permutation of `0..n`.
fn assert_permutation(order: &[u32], n: usize, what: &str) {
    assert_eq!(order.len(), n, "{what}: order length");
    let mut seen = vec![false; n];
    for &v in order {
        assert!(
            (v as usize) < n && !seen[v as usize],
            "{what}: voxel {v} out of range or twice"
        );
        seen[v as usize] = true;
    }
}

/// Equal values, treating +0 and −0 as equal (f16/bf16 → f32 is exact); NaN never passes.
fn assert_same_values(a: &Tensor, b: &Tensor, what: &str) -> Result<()> {
    let a = a.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let b = b.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    assert_eq!(a.len(), b.len());
    let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    assert_eq!(differ, 0, "{what}: {differ} of {} values differ", a.len());
    Ok(())
}

/// The GPU-built map of a shell of radius `r` on the GPU.
fn gpu_shell_map(r: f32, dev: &Device) -> Result<(SparseTensor, usize)> {
    let rows = shell(r);
    let n = rows.len() / 4;
    let coords = Tensor::from_vec(rows, (n, 4), dev)?;
    let x = SparseTensor::new(&coords, Tensor::zeros((n, 1), DType::F32, dev)?)?;
    Ok((x, n))
}

/// Sorting the voxels by neighbour mask (the CUDA conv's tile order) changes no voxel's result:
/// the sorted and unsorted kernels agree value for value (up to the sign of zero), both match
/// the CPU reference, and the order is a permutation sorted by mask within each window; the GPU
/// masks give the same order as the host's.
#[test]
fn sparse_conv_sorted_order() -> Result<()> {
    let dev = gpu();
    for (r, ci, co, dtype) in [
        (40.0, 64, 96, DType::F16),
        (25.0, 128, 64, DType::BF16),
        (55.0, 32, 200, DType::BF16),
    ] {
        let (x, n) = gpu_shell_map(r, &dev)?;
        let map = x.neighbour_map()?;
        let row_bytes = ci * 2;
        let order = map
            .conv_order(row_bytes)?
            .expect("a large set on CUDA is sorted");
        assert_permutation(&order.to_vec1::<u32>()?, n, "conv order");
        // The GPU masks give the host's order, for a full sort and for windows.
        let host_map = map
            .tensor()
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<u32>()?;
        let host = NeighbourMap::from_rows(host_map, n, &Device::Cpu)?;
        for window in [0, 4096, 10_000] {
            let got = map.sorted_order(window)?.to_vec1::<u32>()?;
            let want = host.sorted_order(window)?.to_vec1::<u32>()?;
            assert_permutation(&got, n, "sorted order");
            assert_eq!(got, want, "window {window}: GPU and host orders differ");
        }
        let feats = rounded(&[n, ci], 1.0, dtype)?;
        let weight = rounded(&[co, 27, ci], 0.1, dtype)?;
        let bias = Tensor::randn(0f32, 1.0, co, &Device::Cpu)?;
        let want = submanifold_conv3d(
            &feats,
            &map.tensor().to_device(&Device::Cpu)?,
            &weight,
            Some(&bias),
        )?;
        let (f, w, b) = (
            feats.to_dtype(dtype)?.to_device(&dev)?,
            weight.to_dtype(dtype)?.to_device(&dev)?,
            bias.to_device(&dev)?,
        );
        let plain = submanifold_conv3d(&f, map.tensor(), &w, Some(&b))?;
        let sorted = submanifold_conv3d_map(&f, map, &w, Some(&b))?;
        let err = rel_err(&sorted.to_device(&Device::Cpu)?, &want);
        println!("sparse conv sorted order, shell r {r}: T {n:>7} Ci {ci:>4} Co {co:>4} {dtype:?}: max|err|/max|ref| = {err:.2e}");
        assert!(err <= TOL, "sorted order: error {err} over {TOL}");
        assert_same_values(&sorted, &plain, "sorted vs unsorted")?;
    }
    Ok(())
}

/// Sets below the sorting threshold keep their own order (no mask read-back) and give the
/// unsorted kernel's result.
#[test]
fn sparse_conv_small_set_unsorted() -> Result<()> {
    let dev = gpu();
    let (x, n) = gpu_shell_map(9.0, &dev)?;
    assert!(
        n < trellis2::sparse::neighbours::SORT_MIN_ROWS,
        "{n} voxels"
    );
    let map = x.neighbour_map()?;
    assert!(map.conv_order(128)?.is_none(), "a small set is not sorted");
    let (ci, co) = (64, 64);
    let f = rounded(&[n, ci], 1.0, DType::F16)?
        .to_dtype(DType::F16)?
        .to_device(&dev)?;
    let w = rounded(&[co, 27, ci], 0.1, DType::F16)?
        .to_dtype(DType::F16)?
        .to_device(&dev)?;
    let plain = submanifold_conv3d(&f, map.tensor(), &w, None)?;
    let via_map = submanifold_conv3d_map(&f, map, &w, None)?;
    assert_same_values(&via_map, &plain, "small set")?;
    Ok(())
}

fn check_attention(
    what: &str,
    q_offsets: &[usize],
    kv_offsets: &[usize],
    heads: usize,
    d: usize,
    dtype: DType,
) -> Result<()> {
    let scale = 1.0 / (d as f32).sqrt();
    check_attention_scaled(what, q_offsets, kv_offsets, heads, d, dtype, scale)
}

fn check_attention_scaled(
    what: &str,
    q_offsets: &[usize],
    kv_offsets: &[usize],
    heads: usize,
    d: usize,
    dtype: DType,
    scale: f32,
) -> Result<()> {
    check_attention_kernel(
        AttentionKernel::Auto,
        what,
        q_offsets,
        kv_offsets,
        heads,
        d,
        dtype,
        scale,
    )
}

#[allow(clippy::too_many_arguments)]
fn check_attention_kernel(
    kernel: AttentionKernel,
    what: &str,
    q_offsets: &[usize],
    kv_offsets: &[usize],
    heads: usize,
    d: usize,
    dtype: DType,
    scale: f32,
) -> Result<()> {
    let dev = gpu();
    let (nq, nk) = (*q_offsets.last().unwrap(), *kv_offsets.last().unwrap());
    let q = rounded(&[nq, heads, d], 1.0, dtype)?;
    let k = rounded(&[nk, heads, d], 1.0, dtype)?;
    let v = rounded(&[nk, heads, d], 1.0, dtype)?;
    let want = varlen_attention(&q, &k, &v, q_offsets, kv_offsets, scale)?;
    let on = |t: &Tensor| t.to_dtype(dtype).and_then(|t| t.to_device(&dev));
    let got = varlen_attention_with(
        kernel,
        &on(&q)?,
        &on(&k)?,
        &on(&v)?,
        q_offsets,
        kv_offsets,
        scale,
    )?;
    assert_eq!(got.dtype(), dtype);
    let err = rel_err(&got.to_device(&Device::Cpu)?, &want);
    println!("attention {kernel:?} {what:<24} Nq {nq:>6} Nk {nk:>6} H {heads:>2} D {d:>3} {dtype:?} scale {scale:.3}: max|err|/max|ref| = {err:.2e}");
    assert!(err <= TOL, "{what}: error {err} over {TOL}");
    Ok(())
}

#[test]
fn attention_varlen_self() -> Result<()> {
    let offsets = [0, 1, 77, 300, 301, 530];
    for d in [64, 128] {
        check_attention("varlen self", &offsets, &offsets, 3, d, DType::BF16)?;
        check_attention("varlen self", &offsets, &offsets, 2, d, DType::F16)?;
    }
    check_attention(
        "varlen self (f32 in)",
        &offsets,
        &offsets,
        2,
        64,
        DType::F32,
    )?;
    check_attention("one sequence", &[0, 1500], &[0, 1500], 4, 128, DType::BF16)?;
    // Query tiles of 128 rows, key tiles of 64: lengths one short of, at and one past those
    // edges, so full, partial and one-row tiles (and a one-key last tile) all occur.
    let edges = [0, 63, 127, 255, 383, 384, 513, 641, 706];
    for d in [16, 32, 64, 128] {
        check_attention("tile edges", &edges, &edges, 2, d, DType::BF16)?;
        check_attention("tile edges", &edges, &edges, 2, d, DType::F16)?;
    }
    // Many short sequences: many CTAs whose only key tile is also their last.
    let short: Vec<usize> = (0..=40).map(|i| i * (i + 1) / 2).collect();
    check_attention("many short", &short, &short, 3, 64, DType::BF16)?;
    // The tiny golden models' head dims.
    for d in [16, 32] {
        check_attention(
            "varlen self (small D)",
            &offsets,
            &offsets,
            4,
            d,
            DType::BF16,
        )?;
    }
    Ok(())
}

#[test]
fn attention_cross_and_edges() -> Result<()> {
    // Cross-attention to image tokens (1029 per sample), one sample with no queries.
    let q = [0, 200, 200, 650];
    let kv = [0, 1029, 2058, 3087];
    for d in [64, 128] {
        check_attention("cross", &q, &kv, 4, d, DType::BF16)?;
    }
    check_attention("cross f16", &q, &kv, 2, 128, DType::F16)?;
    check_attention("single key", &[0, 70], &[0, 1], 2, 64, DType::BF16)?;
    check_attention("single query", &[0, 1], &[0, 500], 2, 128, DType::BF16)?;
    // No queries at all.
    check_attention("empty", &[0, 0], &[0, 5], 2, 64, DType::BF16)?;
    // The kernel folds the scale into its exponent, which needs a positive scale: a negative
    // one goes through a negated q, zero through the smallest positive float (uniform weights).
    // Ragged lengths so that masked last key tiles take part.
    for scale in [-0.2f32, 0.0, 2.0] {
        check_attention_scaled(
            "scale",
            &[0, 100, 390],
            &[0, 77, 300],
            2,
            128,
            DType::BF16,
            scale,
        )?;
        check_attention_scaled(
            "scale",
            &[0, 100, 390],
            &[0, 77, 300],
            2,
            64,
            DType::F16,
            scale,
        )?;
    }
    // Unsupported head dims are an error, not a wrong answer.
    let dev = gpu();
    let t = Tensor::zeros((4, 1, 96), DType::BF16, &dev)?;
    assert!(varlen_attention(&t, &t, &t, &[0, 4], &[0, 4], 0.1).is_err());
    Ok(())
}

/// The Hopper wgmma kernel (`kernels/cuda/attention_sm90a.cu`) on the cases above with head
/// dims 64 and 128, selected explicitly (no environment variable). Passes without checking
/// anything, saying so, where the kernel cannot run (a build without `CUDA_COMPUTE_CAP=90` or a
/// GPU other than compute capability 9.0), after checking that forcing it is then an error.
#[test]
fn attention_wgmma() -> Result<()> {
    let dev = gpu();
    let w = AttentionKernel::Wgmma;
    if !attention_kernel_available(w, &dev)? {
        let t = Tensor::zeros((4, 1, 64), DType::BF16, &dev)?;
        assert!(varlen_attention_with(w, &t, &t, &t, &[0, 4], &[0, 4], 0.1).is_err());
        println!("attention_wgmma: the wgmma kernel is not available here; nothing checked");
        return Ok(());
    }
    let check = |what: &str, q: &[usize], kv: &[usize], heads: usize, d: usize, dtype: DType| {
        let scale = 1.0 / (d as f32).sqrt();
        check_attention_kernel(w, what, q, kv, heads, d, dtype, scale)
    };
    let offsets = [0, 1, 77, 300, 301, 530];
    let edges = [0, 63, 127, 255, 383, 384, 513, 641, 706];
    for d in [64, 128] {
        check("varlen self", &offsets, &offsets, 3, d, DType::BF16)?;
        check("varlen self", &offsets, &offsets, 2, d, DType::F16)?;
        check("tile edges", &edges, &edges, 2, d, DType::BF16)?;
        check("tile edges", &edges, &edges, 2, d, DType::F16)?;
    }
    check(
        "varlen self (f32 in)",
        &offsets,
        &offsets,
        2,
        64,
        DType::F32,
    )?;
    check("one sequence", &[0, 1500], &[0, 1500], 4, 128, DType::BF16)?;
    let short: Vec<usize> = (0..=40).map(|i| i * (i + 1) / 2).collect();
    check("many short", &short, &short, 3, 64, DType::BF16)?;
    check("many short", &short, &short, 3, 128, DType::BF16)?;
    let (q, kv) = ([0, 200, 200, 650], [0, 1029, 2058, 3087]);
    for d in [64, 128] {
        check("cross", &q, &kv, 4, d, DType::BF16)?;
    }
    check("cross f16", &q, &kv, 2, 128, DType::F16)?;
    check("single key", &[0, 70], &[0, 1], 2, 64, DType::BF16)?;
    check("single key", &[0, 70], &[0, 1], 2, 128, DType::BF16)?;
    check("single query", &[0, 1], &[0, 500], 2, 128, DType::BF16)?;
    check("empty", &[0, 0], &[0, 5], 2, 64, DType::BF16)?;
    // Larger than one SM's worth of CTAs, with many key tiles per CTA (the pipeline's steady state).
    check("long self", &[0, 4000], &[0, 4000], 12, 128, DType::BF16)?;
    // The wgmma kernel's 128-key tiles and its loop of two key tiles per trip: lengths one
    // short of, at and one past multiples of 64 and 128, so that 1 to 6 key tiles (odd and even
    // counts), one-key last tiles and sequences shorter than one tile all occur.
    let lens = [
        1usize, 63, 64, 65, 127, 128, 129, 255, 256, 257, 383, 384, 385, 511, 512, 513, 641, 700,
    ];
    let ragged: Vec<usize> = std::iter::once(0)
        .chain(lens.iter().scan(0, |acc, &n| {
            *acc += n;
            Some(*acc)
        }))
        .collect();
    for d in [64, 128] {
        check("128-key tile edges", &ragged, &ragged, 2, d, DType::BF16)?;
        check("128-key tile edges", &ragged, &ragged, 2, d, DType::F16)?;
    }
    // One query tile (130 rows: a full and a 2-row tile) against 1 to 6 key tiles.
    let (q, kv) = (
        [0, 130, 260, 390, 520, 650, 780],
        [0, 100, 300, 600, 1100, 1700, 2400],
    );
    for d in [64, 128] {
        check("cross key tiles", &q, &kv, 2, d, DType::BF16)?;
    }
    for scale in [-0.2f32, 0.0, 2.0] {
        for (d, dtype) in [(128, DType::BF16), (64, DType::F16)] {
            check_attention_kernel(
                w,
                "scale",
                &[0, 100, 390],
                &[0, 77, 300],
                2,
                d,
                dtype,
                scale,
            )?;
        }
    }
    // Head dims the wgmma kernel lacks are an error when it is asked for by name.
    for d in [32, 96] {
        let t = Tensor::zeros((4, 1, d), DType::BF16, &dev)?;
        assert!(varlen_attention_with(w, &t, &t, &t, &[0, 4], &[0, 4], 0.1).is_err());
    }
    Ok(())
}

#[test]
fn voxel_layer_norm() -> Result<()> {
    let dev = gpu();
    for (n, c, offset) in [
        (0usize, 64usize, 0f32),
        (1, 1, 0.0),
        (1000, 64, 0.0),
        (777, 1024, 300.0),
        (300, 13, -5.0),
    ] {
        let x = (Tensor::randn(0f32, 1.0, (n, c), &Device::Cpu)? + offset as f64)?;
        let w = Tensor::randn(0f32, 1.0, c, &Device::Cpu)?;
        let b = Tensor::randn(0f32, 1.0, c, &Device::Cpu)?;
        let want = trellis2::ops::layer_norm(&x, Some((&w, &b)), 1e-6)?;
        let got = trellis2::ops::layer_norm(
            &x.to_device(&dev)?,
            Some((&w.to_device(&dev)?, &b.to_device(&dev)?)),
            1e-6,
        )?;
        let err = rel_err(&got.to_device(&Device::Cpu)?, &want);
        // f32 sums in a different order: their rounding grows with |mean| / std (the CPU
        // reference itself is ≈1e-4 off an f64 evaluation at mean 300).
        let tol = if offset.abs() > 10.0 { 1e-3 } else { 1e-5 };
        println!("layer norm T {n:>5} C {c:>4} mean {offset:>6}: max|err|/max|ref| = {err:.2e}");
        assert!(err <= tol, "layer norm error {err} over {tol}");
    }
    Ok(())
}

/// Modulated deformable conv (`kernels/cuda/deform_conv.cu`, f32): the sampled columns and the
/// whole convolution against the CPU op, on shapes that reach every branch of the sampler.
#[test]
fn deform_conv_matches_cpu() {
    use trellis2::ops::deform_conv::{deform_conv2d, modulated_im2col, DeformConvConfig};
    let same = |k: usize, stride: usize, dil: usize| DeformConvConfig {
        stride: (stride, stride),
        padding: (k / 2 * dil, k / 2 * dil),
        dilation: (dil, dil),
    };
    /// (name, [B, C, H, W], out channels, k, offset groups, config, offset std)
    type Case = (
        &'static str,
        [usize; 4],
        usize,
        usize,
        usize,
        DeformConvConfig,
        f32,
    );
    let cases: &[Case] = &[
        ("k3 odd 9x11", [1, 5, 9, 11], 7, 3, 1, same(3, 1, 1), 1.5),
        ("k1", [1, 6, 6, 8], 3, 1, 1, same(1, 1, 1), 1.0),
        (
            "k7 far out of bounds",
            [1, 4, 7, 5],
            6,
            7,
            1,
            same(7, 1, 1),
            40.0,
        ),
        ("1x1 image k3", [1, 3, 1, 1], 2, 3, 1, same(3, 1, 1), 1.0),
        ("B2 G2 C130", [2, 130, 5, 6], 9, 3, 2, same(3, 1, 1), 2.0),
        (
            "stride 2 dilation 2",
            [1, 3, 9, 10],
            4,
            3,
            1,
            same(3, 2, 2),
            1.5,
        ),
        (
            "BiRefNet-like 64ch k7 64x64",
            [1, 64, 64, 64],
            256,
            7,
            1,
            same(7, 1, 1),
            3.0,
        ),
    ];
    let dev = gpu();
    for &(name, [b, c, h, w], o, k, g, cfg, std) in cases {
        let (sy, py, dy) = (cfg.stride.0, cfg.padding.0, cfg.dilation.0);
        let oh = (h + 2 * py - (dy * (k - 1) + 1)) / sy + 1;
        let ow = (w + 2 * cfg.padding.1 - (cfg.dilation.1 * (k - 1) + 1)) / cfg.stride.1 + 1;
        let taps = k * k;
        let cpu = Device::Cpu;
        let input = Tensor::randn(0f32, 1.0, (b, c, h, w), &cpu).unwrap();
        let offset = Tensor::randn(0f32, std, (b, 2 * g * taps, oh, ow), &cpu).unwrap();
        let mask = Tensor::rand(0f32, 2.0, (b, g * taps, oh, ow), &cpu).unwrap();
        let weight = Tensor::randn(0f32, 0.1, (o, c, k, k), &cpu).unwrap();
        let bias = Tensor::randn(0f32, 1.0, o, &cpu).unwrap();
        let on_gpu = |t: &Tensor| t.to_device(&dev).unwrap();

        let want = modulated_im2col(&input, &offset, &mask, (k, k), cfg, 0..oh).unwrap();
        let got = modulated_im2col(
            &on_gpu(&input),
            &on_gpu(&offset),
            &on_gpu(&mask),
            (k, k),
            cfg,
            0..oh,
        )
        .unwrap()
        .to_device(&cpu)
        .unwrap();
        let cols = rel_err(&got, &want);

        let want = deform_conv2d(&input, &offset, &mask, &weight, Some(&bias), cfg).unwrap();
        let got = deform_conv2d(
            &on_gpu(&input),
            &on_gpu(&offset),
            &on_gpu(&mask),
            &on_gpu(&weight),
            Some(&on_gpu(&bias)),
            cfg,
        )
        .unwrap()
        .to_device(&cpu)
        .unwrap();
        let conv = rel_err(&got, &want);
        println!("deform_conv2d {name:<30} columns max|err|/max|ref| {cols:.2e}, conv {conv:.2e}");
        // The columns are the same f32 arithmetic (no FMA): exact up to the last bit. The
        // convolution goes through cuBLAS (TF32 may be on): matmul tolerance.
        assert!(cols <= 1e-6, "{name}: columns {cols:e}");
        assert!(conv <= TOL, "{name}: conv {conv:e}");
    }
}

/// The DiT's fused norms (`kernels/cuda/norms.cu`) in every activation dtype against the CPU op:
/// LayerNorm + per-sample adaLN modulation over two samples, and q/k RMS norm + RoPE.
#[test]
fn fused_norms_match_cpu() -> Result<()> {
    use trellis2::ops::norm_modulate::{layer_norm_modulate, Modulation};
    use trellis2::ops::rms_norm_rope::rms_norm_rope;
    let dev = gpu();
    let cpu = Device::Cpu;
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let tol = match dtype {
            DType::F32 => 1e-5,
            DType::F16 => 2e-3,
            _ => 1e-2,
        };
        for (t, c, offsets) in [
            (0usize, 64usize, vec![0usize, 0]),
            (1, 7, vec![0, 1]),
            (1000, 1536, vec![0, 600, 1000]),
            (333, 100, vec![0, 0, 333]),
        ] {
            let b = offsets.len() - 1;
            let x = (Tensor::randn(0f32, 1.0, (t, c), &cpu)? + 2.0)?;
            let w = Tensor::randn(0f32, 1.0, c, &cpu)?;
            let bias = Tensor::randn(0f32, 1.0, c, &cpu)?;
            let shift = Tensor::randn(0f32, 1.0, (b, c), &cpu)?;
            let scale = Tensor::randn(0f32, 0.5, (b, c), &cpu)?;
            let m = Modulation {
                shift: &shift,
                scale: &scale,
                offsets: &offsets,
            };
            let xq = x.to_dtype(dtype)?;
            let want = layer_norm_modulate(&xq.to_dtype(DType::F32)?, Some((&w, &bias)), &m, 1e-6)?;
            let (shift_g, scale_g) = (shift.to_device(&dev)?, scale.to_device(&dev)?);
            let mg = Modulation {
                shift: &shift_g,
                scale: &scale_g,
                offsets: &offsets,
            };
            let got = layer_norm_modulate(
                &xq.to_device(&dev)?,
                Some((&w.to_device(&dev)?, &bias.to_device(&dev)?)),
                &mg,
                1e-6,
            )?;
            assert_eq!(got.dtype(), dtype);
            let err = rel_err(&got.to_device(&cpu)?.to_dtype(DType::F32)?, &want);
            println!(
                "norm+modulate {dtype:?} T {t:>5} C {c:>5} B {b}: max|err|/max|ref| = {err:.2e}"
            );
            assert!(err <= tol, "norm+modulate {dtype:?} error {err} over {tol}");
        }
        for (t, h, d, with_gamma) in [
            (0usize, 2usize, 64usize, true),
            (1, 1, 6, true),
            (777, 12, 128, true),
            (300, 4, 64, false),
        ] {
            let x = Tensor::randn(0f32, 1.0, (t, h, d), &cpu)?.to_dtype(dtype)?;
            let g = Tensor::randn(1f32, 0.2, (h, d), &cpu)?;
            let table = Tensor::randn(0f32, 1.0, (t, d / 2, 2), &cpu)?;
            let gamma = with_gamma.then_some(&g);
            let want = rms_norm_rope(&x.to_dtype(DType::F32)?, gamma, &table)?;
            let gg = g.to_device(&dev)?;
            let got = rms_norm_rope(
                &x.to_device(&dev)?,
                with_gamma.then_some(&gg),
                &table.to_device(&dev)?,
            )?;
            assert_eq!(got.dtype(), dtype);
            let err = rel_err(&got.to_device(&cpu)?.to_dtype(DType::F32)?, &want);
            println!("rms norm+rope {dtype:?} T {t:>5} H {h:>2} D {d:>3} gamma {with_gamma}: max|err|/max|ref| = {err:.2e}");
            assert!(err <= tol, "rms norm+rope {dtype:?} error {err} over {tol}");
        }
    }
    Ok(())
}

/// q/k read in place from a fused qkv projection (a strided view) and the one-row identity
/// rotation of the cross-attention's plain RMS norm, on the GPU against the CPU op.
#[test]
fn rms_norm_of_strided_views_matches_cpu() -> Result<()> {
    use trellis2::ops::rms_norm_rope::{multi_head_rms_norm, rms_norm_rope};
    let (dev, cpu) = (gpu(), Device::Cpu);
    for dtype in [DType::F32, DType::BF16] {
        let tol = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
        let (t, h, d) = (513usize, 12usize, 128usize);
        let qkv = Tensor::randn(0f32, 1.0, (t, 3, h, d), &cpu)?.to_dtype(dtype)?;
        let gamma = Tensor::randn(1f32, 0.2, (h, d), &cpu)?;
        let table = Tensor::randn(0f32, 1.0, (t, d / 2, 2), &cpu)?;
        let (qkv_g, gamma_g, table_g) = (
            qkv.to_device(&dev)?,
            gamma.to_device(&dev)?,
            table.to_device(&dev)?,
        );
        for part in 0..2 {
            let view = |x: &Tensor| x.narrow(1, part, 1).and_then(|v| v.squeeze(1));
            let want = rms_norm_rope(&view(&qkv.to_dtype(DType::F32)?)?, Some(&gamma), &table)?;
            let got = rms_norm_rope(&view(&qkv_g)?, Some(&gamma_g), &table_g)?;
            let err = rel_err(&got.to_device(&cpu)?, &want);
            println!("rms norm+rope of qkv part {part} {dtype:?}: max|err|/max|ref| = {err:.2e}");
            assert!(
                err <= tol,
                "strided rms norm+rope {dtype:?} error {err} over {tol}"
            );
            let want = multi_head_rms_norm(&view(&qkv.to_dtype(DType::F32)?)?, &gamma)?;
            let got = multi_head_rms_norm(&view(&qkv_g)?, &gamma_g)?;
            let err = rel_err(&got.to_device(&cpu)?, &want);
            println!("plain rms norm of qkv part {part} {dtype:?}: max|err|/max|ref| = {err:.2e}");
            assert!(
                err <= tol,
                "plain rms norm {dtype:?} error {err} over {tol}"
            );
        }
    }
    Ok(())
}

/// The linear-layer epilogue and the gated residual (`kernels/cuda/elementwise.cu`) in every
/// dtype, on 16-byte vectors and on the scalar path (odd widths), views starting mid-buffer,
/// against the CPU ops.
#[test]
fn elementwise_epilogues_match_cpu() -> Result<()> {
    use trellis2::ops::bias_act::{bias_act, Activation};
    use trellis2::ops::gated_residual::gated_residual;
    let (dev, cpu) = (gpu(), Device::Cpu);
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let tol = match dtype {
            DType::F32 => 1e-6,
            DType::F16 => 1e-3,
            _ => 8e-3,
        };
        // (rows, channels, leading rows skipped: a view that starts mid-buffer)
        for (t, c, skip) in [
            (0usize, 64usize, 0usize),
            (1, 13, 0),
            (1000, 1536, 0),
            (301, 8192, 0),
            (77, 40, 3),
            (5, 8, 1),
        ] {
            let full = Tensor::randn(0f32, 2.0, (t + skip, c), &cpu)?.to_dtype(dtype)?;
            let x = full.narrow(0, skip, t)?;
            let bias = Tensor::randn(0f32, 1.0, c, &cpu)?;
            let xg = full.to_device(&dev)?.narrow(0, skip, t)?;
            let bg = bias.to_device(&dev)?;
            for act in [Activation::None, Activation::GeluTanh, Activation::Silu] {
                let want = bias_act(&x.to_dtype(DType::F32)?, &bias, act)?;
                let got = bias_act(&xg, &bg, act)?;
                assert_eq!(got.dtype(), dtype);
                let err = rel_err(&got.to_device(&cpu)?, &want);
                println!("bias_act {act:?} {dtype:?} T {t:>5} C {c:>5} skip {skip}: max|err|/max|ref| = {err:.2e}");
                assert!(
                    err <= tol,
                    "bias_act {act:?} {dtype:?} error {err} over {tol}"
                );
            }
            let offsets = vec![0, t / 3, t / 3, t];
            let r = Tensor::randn(0f32, 1.0, (t, c), &cpu)?.to_dtype(dtype)?;
            let gate = Tensor::randn(0f32, 1.0, (3, c), &cpu)?;
            let want = gated_residual(
                &x.to_dtype(DType::F32)?,
                &r.to_dtype(DType::F32)?,
                &gate,
                &offsets,
            )?;
            let got = gated_residual(&xg, &r.to_device(&dev)?, &gate.to_device(&dev)?, &offsets)?;
            assert_eq!(got.dtype(), dtype);
            let err = rel_err(&got.to_device(&cpu)?, &want);
            println!("gated_residual {dtype:?} T {t:>5} C {c:>5} skip {skip}: max|err|/max|ref| = {err:.2e}");
            assert!(
                err <= tol,
                "gated_residual {dtype:?} error {err} over {tol}"
            );
        }
    }
    Ok(())
}

/// The neighbour map built on the GPU (`kernels/cuda/neighbour_map.cu`) equals the CPU builder's
/// word for word (map, no-duplicate status, pair count) on shells, dense blocks, isolated voxels,
/// several batches and a shell of 1.4 M voxels on 10-bit axes; a duplicate voxel is an error
/// naming both rows.
#[test]
fn neighbour_map_matches_cpu() -> Result<()> {
    use trellis2::sparse::neighbours_gpu::neighbour_op_output;
    let dev = gpu();
    let block = |b: i32, side: i32, at: i32| -> Vec<i32> {
        let mut v = Vec::new();
        for x in 0..side {
            for y in 0..side {
                for z in 0..side {
                    v.extend([b, at + x, at + y, at + z]);
                }
            }
        }
        v
    };
    let isolated: Vec<i32> = (0..70)
        .flat_map(|i| [0, 3 * (i % 4), 3 * (i / 4 % 5), 3 * (i / 20)])
        .collect();
    let mut batches = shell(6.0);
    batches.extend(shell(9.0).chunks(4).flat_map(|c| [1, c[1], c[2], c[3]]));
    batches.extend(block(2, 9, 500));
    let cases: Vec<(&str, Vec<i32>)> = vec![
        ("one voxel", vec![0, 0, 0, 0]),
        ("isolated voxels", isolated),
        ("dense 40^3 block", block(0, 40, 1)),
        ("shells in 3 batches", batches),
        (
            "shell r 250 at 500..1004 (10-bit axes)",
            shell(250.0)
                .chunks(4)
                .flat_map(|c| [0, c[1] + 500, c[2] + 500, c[3] + 500])
                .collect(),
        ),
    ];
    for (name, rows) in cases {
        let n = rows.len() / 4;
        let coords = Tensor::from_vec(rows, (n, 4), &Device::Cpu)?;
        let start = std::time::Instant::now();
        let got = neighbour_op_output(&coords.to_device(&dev)?)?.to_vec1::<u32>()?;
        let gpu_s = start.elapsed().as_secs_f64();
        let start = std::time::Instant::now();
        let want = neighbour_op_output(&coords)?.to_vec1::<u32>()?;
        let cpu_s = start.elapsed().as_secs_f64();
        let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        println!(
            "neighbour map {name:<36} T {n:>8}: {differ} of {} words differ; GPU {:.1} ms, CPU {:.1} ms",
            want.len(),
            gpu_s * 1e3,
            cpu_s * 1e3
        );
        assert_eq!(got.len(), want.len());
        assert_eq!(differ, 0, "{name}: GPU map differs from the CPU's");
    }
    let dup = Tensor::new(&[[0i32, 1, 2, 3], [0, 5, 5, 5], [0, 1, 2, 3]], &dev)?;
    let feats = Tensor::zeros((3, 2), DType::F32, &dev)?;
    let err = SparseTensor::new(&dup, feats)?
        .neighbour_map()
        .expect_err("a duplicate voxel must be refused")
        .to_string();
    println!("duplicate voxel: {err}");
    assert!(err.contains("rows 0 and 2"), "{err}");
    Ok(())
}
