//! The CUDA kernels against their CPU reference ops, on an NVIDIA GPU (built only with the
//! `cuda` feature). Every test needs CUDA device 0 and fails, rather than skips, without one.
//! Run: `cargo test --release --features cuda --test cuda_kernels -- --nocapture`; each check
//! prints max|err| / max|ref|.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Result, Tensor};
use trellis2::ops::attention::{
    attention_kernel_available, varlen_attention, varlen_attention_with, AttentionKernel,
};
use trellis2::ops::sparse_conv::{
    conv_kernel_available, submanifold_conv3d_ordered_with, submanifold_conv3d_with, ConvKernel,
    ABSENT,
};
use trellis2::ops::{submanifold_conv3d, submanifold_conv3d_map};
use trellis2::sparse::{NeighbourMap, SparseTensor};

/// bf16 / f16 operands with fp32 accumulation: the outputs' own rounding is ≈ 4e-3 relative.
/// The tolerance of the tensor-core kernels (sparse conv, attention) in every output dtype.
const TOL: f32 = 1e-2;

/// The activation dtypes the kernels are checked in, in the order the checks print.
const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// Kernel families whose tolerance depends on the output dtype, by how far their outputs may
/// stray from the f32 CPU reference (the tensor-core kernels take [`TOL`] in every dtype).
#[derive(Clone, Copy)]
enum Family {
    /// Element-wise kernels: one rounding of each output to its dtype.
    Elementwise,
    /// Row reductions (norms) computed in f32: f32 outputs differ in summation order only,
    /// f16/bf16 outputs are rounded once.
    Norm,
    /// Linear layers: f32 GEMMs differ in summation order only; f16/bf16 outputs are rounded
    /// once (fused) or up to three times (composed path: matmul, bias_act, add).
    Linear,
}

/// The largest max|err|/max|ref| a `family` kernel may show in `dtype` against the CPU.
fn tol_for(family: Family, dtype: DType) -> f32 {
    match (family, dtype) {
        (Family::Elementwise, DType::F32) => 1e-6,
        (Family::Elementwise, DType::F16) => 1e-3,
        (Family::Elementwise, _) => 8e-3,
        (Family::Norm | Family::Linear, DType::F32) => 1e-5,
        (Family::Norm | Family::Linear, DType::F16) => 2e-3,
        (Family::Norm, _) => 1e-2,
        (Family::Linear, _) => 1.6e-2,
    }
}

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

/// Prints `label: max|err|/max|ref| = …` for `got` (on any device) against the CPU reference
/// `want`, and fails when the error is over `tol`.
fn expect_close(label: &str, got: &Tensor, want: &Tensor, tol: f32) -> Result<()> {
    let err = rel_err(&got.to_device(&Device::Cpu)?, want);
    println!("{label}: max|err|/max|ref| = {err:.2e}");
    assert!(err <= tol, "{label}: error {err} over {tol}");
    Ok(())
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

/// The conv kernels to check on `dev`: mma.sync always, wgmma where the build and the device
/// have it (a note is printed where not).
fn conv_kernels(dev: &Device) -> Result<Vec<ConvKernel>> {
    if conv_kernel_available(ConvKernel::Wgmma, dev)? {
        Ok(vec![ConvKernel::Mma, ConvKernel::Wgmma])
    } else {
        println!("sparse conv: the wgmma kernel is not available here (needs CUDA_COMPUTE_CAP=90 and a 9.0 device); mma.sync only");
        Ok(vec![ConvKernel::Mma])
    }
}

/// Runs the conv on the GPU in `dtype`, with each kernel of `conv_kernels` (the wgmma one only
/// where Ci is a multiple of 8, the only shapes it takes), and on the CPU in f32 on the same
/// (rounded) values, with or without a bias (the kernels add it in their epilogue). f32 runs on
/// bf16 operands and the kernels write f32 outputs.
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
    let (f, m, w) = (
        feats.to_dtype(dtype)?.to_device(&dev)?,
        map.to_device(&dev)?,
        weight.to_dtype(dtype)?.to_device(&dev)?,
    );
    let b = bias.as_ref().map(|b| b.to_device(&dev)).transpose()?;
    for kernel in conv_kernels(&dev)? {
        if kernel == ConvKernel::Wgmma && !ci.is_multiple_of(8) {
            // Forcing the wgmma kernel on a shape it does not take is an error, not a fallback.
            assert!(
                submanifold_conv3d_with(kernel, &f, &m, &w, b.as_ref()).is_err(),
                "{what}: the wgmma kernel took Ci = {ci}"
            );
            continue;
        }
        let got = submanifold_conv3d_with(kernel, &f, &m, &w, b.as_ref())?;
        assert_eq!(got.dtype(), dtype);
        assert_eq!(got.dims(), [n, co]);
        let err = rel_err(&got.to_device(&Device::Cpu)?, &want);
        println!("sparse conv {kernel:<5?} {what:<34} T {n:>7} Ci {ci:>4} Co {co:>4} {dtype:?}: max|err|/max|ref| = {err:.2e}");
        assert!(err <= TOL, "{what} ({kernel:?}): error {err} over {TOL}");
    }
    Ok(())
}

#[test]
fn sparse_conv_random_maps() -> Result<()> {
    let mut rng = Lcg(7);
    // Output tiles of 64 (Co ≤ 64), 128 and 256 columns (Co ≥ 256 with at least one 128 × 256
    // tile per SM — 132 on an H100 — so the last three cases), each output dtype, with and
    // without bias.
    for (n, ci, co, dtype, bias) in [
        (1000, 64, 64, DType::BF16, false),
        (1000, 64, 64, DType::F16, true),
        (777, 128, 256, DType::F16, true),
        (640, 256, 512, DType::BF16, true),
        (513, 32, 96, DType::BF16, true),
        (300, 40, 200, DType::F16, false),
        (2000, 1024, 64, DType::BF16, false),
        (129, 16, 16, DType::F32, true),
        (333, 64, 300, DType::F32, true),
        (257, 128, 130, DType::F32, false),
        (17_000, 64, 256, DType::F16, true),
        (9_000, 32, 520, DType::BF16, false),
        (8_500, 64, 300, DType::F32, true),
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
    // Odd channel counts (element-wise copy path, element-wise stores) and channel counts below
    // one tile.
    for (ci, co, dtype, bias) in [
        (3, 1, DType::F16, true),
        (13, 7, DType::BF16, false),
        (100, 65, DType::F32, true),
        (1, 130, DType::F16, false),
        (33, 5, DType::F32, false),
        (9, 257, DType::BF16, true),
    ] {
        let map = random_map(257, 0.5, &mut rng);
        check_conv("odd channels", map, 257, ci, co, dtype, bias)?;
    }
    // Isolated voxels: no neighbours at all (not even the centre), and only the centre.
    for dtype in [DType::BF16, DType::F32] {
        check_conv(
            "no neighbours (bias only)",
            vec![ABSENT; 300 * 27],
            300,
            64,
            64,
            dtype,
            true,
        )?;
    }
    let centre: Vec<u32> = (0..300u32)
        .flat_map(|v| (0..27).map(move |k| if k == 13 { v } else { ABSENT }))
        .collect();
    check_conv("isolated voxels", centre, 300, 64, 128, DType::BF16, false)?;
    // Every tap present.
    let full = random_map(256, 1.0, &mut rng);
    check_conv("all 27 taps", full, 256, 64, 64, DType::BF16, false)?;
    // The two 64-row halves of every 128-row tile (the wgmma kernel's warpgroups) with disjoint
    // taps besides the centre: each warpgroup skips the other's taps. The last tile is partial
    // (1000 = 7 · 128 + 104 rows), so its second half has 40 rows. Co 64, 200 and 300 give the
    // 64-, 128- and 256-column tiles (the last with enough tiles for one an SM: 2 · 17 000 / 128).
    let halves = |n: usize, rng: &mut Lcg| -> Vec<u32> {
        let mut map = vec![ABSENT; n * 27];
        for v in 0..n {
            let taps = if v % 128 < 64 { 0..9 } else { 18..27 };
            map[v * 27 + 13] = v as u32;
            for k in taps {
                if rng.below(4) != 0 {
                    map[v * 27 + k] = rng.below(n) as u32;
                }
            }
        }
        map
    };
    for (n, ci, co, dtype, bias) in [
        (1000, 64, 64, DType::BF16, true),
        (1000, 128, 200, DType::F16, false),
        (17_000, 64, 300, DType::F32, true),
    ] {
        let map = halves(n, &mut rng);
        check_conv("disjoint taps per 64-row half", map, n, ci, co, dtype, bias)?;
    }
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
/// the CPU reference, and the GPU-built order equals the host's for a full sort and for windows.
#[test]
fn sparse_conv_sorted_order() -> Result<()> {
    let dev = gpu();
    for (r, ci, co, dtype) in [
        (40.0, 64, 96, DType::F16),
        (25.0, 128, 64, DType::BF16),
        (55.0, 32, 200, DType::BF16),
        // 128 × 256 tiles (≈ 20 k voxels: 154 row tiles), two channel chunks per tap.
        (30.0, 128, 512, DType::BF16),
    ] {
        let (x, n) = gpu_shell_map(r, &dev)?;
        let map = x.neighbour_map()?;
        let row_bytes = ci * 2;
        let order = map
            .conv_order(row_bytes)?
            .expect("a large set on CUDA is sorted");
        assert_permutation(&order.to_vec1::<u32>()?, n, "conv order");
        // The GPU radix sort gives the host's order, for a full sort and for windows.
        let host_map = map
            .tensor()
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<u32>()?;
        let host = NeighbourMap::from_rows(host_map, n, &Device::Cpu)?;
        for window in [0, 1, 3, 4096, 10_000] {
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
        for kernel in conv_kernels(&dev)? {
            let plain = submanifold_conv3d_with(kernel, &f, map.tensor(), &w, Some(&b))?;
            let sorted = submanifold_conv3d_ordered_with(kernel, &f, map, &order, &w, Some(&b))?;
            let err = rel_err(&sorted.to_device(&Device::Cpu)?, &want);
            println!("sparse conv {kernel:<5?} sorted order, shell r {r}: T {n:>7} Ci {ci:>4} Co {co:>4} {dtype:?}: max|err|/max|ref| = {err:.2e}");
            assert!(
                err <= TOL,
                "sorted order ({kernel:?}): error {err} over {TOL}"
            );
            assert_same_values(&sorted, &plain, "sorted vs unsorted")?;
        }
        // The default path (`ConvKernel::Auto` with the map's cached order) as the model runs it.
        let via_map = submanifold_conv3d_map(&f, map, &w, Some(&b))?;
        let err = rel_err(&via_map.to_device(&Device::Cpu)?, &want);
        assert!(
            err <= TOL,
            "sorted order (default kernel): error {err} over {TOL}"
        );
    }
    Ok(())
}

/// The GPU radix sort (`kernels/cuda/conv_order.cu`) against the host sort, word for word, on
/// maps with random masks (every digit of every pass in use), with ties only (all voxels one
/// mask: the identity within windows) and with two alternating masks; sizes around the sort's
/// 256-item rounds and 1024-item blocks, windows from one voxel (seven passes at most) to more
/// than the set.
#[test]
fn conv_order_matches_host_sort() -> Result<()> {
    let dev = gpu();
    let mut rng = Lcg(23);
    let compare = |what: &str, map: Vec<u32>, n: usize| -> Result<()> {
        let on_gpu = NeighbourMap::from_rows(map.clone(), n, &dev)?;
        let on_host = NeighbourMap::from_rows(map, n, &Device::Cpu)?;
        for window in [
            0,
            1,
            2,
            7,
            255,
            300,
            4096,
            n.saturating_sub(1),
            n,
            2 * n + 1,
        ] {
            let got = on_gpu.sorted_order(window)?.to_vec1::<u32>()?;
            let want = on_host.sorted_order(window)?.to_vec1::<u32>()?;
            assert_permutation(&got, n, what);
            assert_eq!(
                got, want,
                "{what}, T {n}, window {window}: GPU and host orders differ"
            );
        }
        println!("conv order {what:<16} T {n:>7}: GPU order = host order for every window");
        Ok(())
    };
    for n in [1, 2, 255, 256, 257, 1023, 1025, 4097, 70_001, 300_000] {
        compare("random masks", random_map(n, 0.5, &mut rng), n)?;
    }
    for n in [1000, 140_001] {
        compare("one mask", random_map(n, 1.0, &mut rng), n)?;
        let two: Vec<u32> = (0..n)
            .flat_map(|v| {
                (0..27).map(move |k| {
                    if k == 13 || (v % 2 == 0 && k == 4) {
                        v as u32
                    } else {
                        ABSENT
                    }
                })
            })
            .collect();
        compare("two masks", two, n)?;
    }
    compare("empty", vec![], 0)?;
    Ok(())
}

/// Sets below the sorting threshold keep their own order and give the unsorted kernel's result;
/// under the default policy every larger set is sorted, the large decoder levels (> 512 k
/// voxels) included, in the host's order and with the unsorted kernel's values.
#[test]
fn sparse_conv_sort_policy() -> Result<()> {
    let dev = gpu();
    let (x, n) = gpu_shell_map(9.0, &dev)?;
    assert!(
        n < trellis2::sparse::conv_order::SORT_MIN_ROWS,
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
    // The environment may override the policy for this run; then only the small set is checked.
    if std::env::var_os("TRELLIS2_CONV_SORT").is_some() {
        return Ok(());
    }
    // ≈ 0.67 M and ≈ 2 M voxels: above the old host-sort limit of 512 k.
    for (r, c) in [(175.0, 64), (300.0, 32)] {
        let (big, n) = gpu_shell_map(r, &dev)?;
        let map = big.neighbour_map()?;
        let row_bytes = 2 * c;
        let order = map
            .conv_order(row_bytes)?
            .expect("a large set on CUDA is sorted");
        let got = order.to_vec1::<u32>()?;
        assert_permutation(&got, n, "large conv order");
        let host_map = map
            .tensor()
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<u32>()?;
        let host = NeighbourMap::from_rows(host_map, n, &Device::Cpu)?;
        let window = trellis2::sparse::conv_order::default_sort_window(row_bytes);
        let want = host.sorted_order(window)?.to_vec1::<u32>()?;
        assert_eq!(got, want, "shell r {r}: GPU and host orders differ");
        for window in [0, 1] {
            let got = map.sorted_order(window)?.to_vec1::<u32>()?;
            let want = host.sorted_order(window)?.to_vec1::<u32>()?;
            assert_eq!(
                got, want,
                "shell r {r}, window {window}: GPU and host orders differ"
            );
        }
        let f = Tensor::randn(0f32, 1.0, (n, c), &dev)?.to_dtype(DType::F16)?;
        let w = Tensor::randn(0f32, 0.1, (c, 27, c), &dev)?.to_dtype(DType::F16)?;
        let b = Tensor::randn(0f32, 1.0, c, &dev)?;
        let plain = submanifold_conv3d(&f, map.tensor(), &w, Some(&b))?;
        let sorted = submanifold_conv3d_map(&f, map, &w, Some(&b))?;
        assert_same_values(&sorted, &plain, "large set, sorted vs unsorted")?;
        println!(
            "conv order, shell r {r}: T {n:>7}: GPU order = host order; sorted conv = unsorted"
        );
    }
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

/// q, k, v as row views of one fused `[N, 3, H, D]` projection (token stride 3·H·D), as the
/// DiT passes v: the kernels read them in place and must match the contiguous reference.
#[test]
fn attention_reads_views_of_a_fused_qkv() -> Result<()> {
    let dev = gpu();
    let offsets = [0, 1, 130, 700];
    let kernels = if attention_kernel_available(AttentionKernel::Wgmma, &dev)? {
        vec![AttentionKernel::Mma, AttentionKernel::Wgmma]
    } else {
        vec![AttentionKernel::Mma]
    };
    for (heads, d) in [(3, 64), (2, 128)] {
        let n = offsets[offsets.len() - 1];
        let qkv = rounded(&[n, 3, heads, d], 1.0, DType::BF16)?;
        let part = |i: usize| qkv.narrow(1, i, 1).and_then(|t| t.squeeze(1));
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let scale = 1.0 / (d as f32).sqrt();
        let want = varlen_attention(
            &q.contiguous()?,
            &k.contiguous()?,
            &v.contiguous()?,
            &offsets,
            &offsets,
            scale,
        )?;
        let qkv_gpu = qkv.to_dtype(DType::BF16)?.to_device(&dev)?;
        let gpart = |i: usize| qkv_gpu.narrow(1, i, 1).and_then(|t| t.squeeze(1));
        for &kernel in &kernels {
            let got = varlen_attention_with(
                kernel,
                &gpart(0)?,
                &gpart(1)?,
                &gpart(2)?,
                &offsets,
                &offsets,
                scale,
            )?;
            expect_close(
                &format!("attention {kernel:?} on views of a fused qkv, H {heads} D {d}"),
                &got,
                &want,
                TOL,
            )?;
        }
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
        // 16-byte vector paths (C a multiple of 4 f32 values, up to 2048) and the scalar
        // kernel past them.
        (500, 1536, 0.0),
        (100, 8, 0.0),
        (64, 4096, 0.0),
        (200, 1000, 1.0),
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
    for dtype in DTYPES {
        let tol = tol_for(Family::Norm, dtype);
        // (rows, C, sample offsets, leading values skipped: x starts mid-buffer, off the
        // 16-byte alignment of the vector kernels, which then take their scalar fallback).
        // C a multiple of 8 up to 4096 (4 up to 2048 for f32) takes the vector kernels (8, 16
        // or 32 lanes a row); 13, 100 (16-bit), 1000 (16-bit) and 7 the scalar kernel.
        for (t, c, offsets, skip) in [
            (0usize, 64usize, vec![0usize, 0], 0usize),
            (1, 7, vec![0, 1], 0),
            (1000, 1536, vec![0, 600, 1000], 0),
            (333, 100, vec![0, 0, 333], 0),
            (500, 1024, vec![0, 500], 0),
            (301, 64, vec![0, 150, 301], 0),
            (77, 8, vec![0, 77], 0),
            (130, 128, vec![0, 130], 0),
            (65, 4096, vec![0, 30, 65], 0),
            (200, 3072, vec![0, 200], 0),
            (120, 13, vec![0, 60, 120], 0),
            (240, 1000, vec![0, 240], 0),
            (300, 1536, vec![0, 100, 300], 1),
            (90, 64, vec![0, 90], 3),
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
            let xg = Tensor::cat(&[Tensor::zeros(skip, dtype, &cpu)?, xq.flatten_all()?], 0)?
                .to_device(&dev)?
                .narrow(0, skip, t * c)?
                .reshape((t, c))?;
            let got = layer_norm_modulate(
                &xg,
                Some((&w.to_device(&dev)?, &bias.to_device(&dev)?)),
                &mg,
                1e-6,
            )?;
            assert_eq!(got.dtype(), dtype);
            let label = format!("norm+modulate {dtype:?} T {t:>5} C {c:>5} B {b} skip {skip}");
            expect_close(&label, &got, &want, tol)?;
        }
        // D = 4, 8, 16 or 32 16-byte vectors takes the vector kernels (32, 64, 128, 256 for
        // 16-bit; 16, 32, 64, 128 for f32), others (6, 10, 256 in f32) the scalar kernel.
        for (t, h, d, with_gamma) in [
            (0usize, 2usize, 64usize, true),
            (1, 1, 6, true),
            (777, 12, 128, true),
            (300, 4, 64, false),
            (301, 3, 32, true),
            (99, 2, 256, true),
            (50, 5, 16, false),
            (70, 3, 10, true),
            (1, 12, 128, false),
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
            let label =
                format!("rms norm+rope {dtype:?} T {t:>5} H {h:>2} D {d:>3} gamma {with_gamma}");
            expect_close(&label, &got, &want, tol)?;
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
        let tol = tol_for(Family::Norm, dtype);
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
            let label = format!("rms norm+rope of qkv part {part} {dtype:?}");
            expect_close(&label, &got, &want, tol)?;
            let want = multi_head_rms_norm(&view(&qkv.to_dtype(DType::F32)?)?, &gamma)?;
            let got = multi_head_rms_norm(&view(&qkv_g)?, &gamma_g)?;
            let label = format!("plain rms norm of qkv part {part} {dtype:?}");
            expect_close(&label, &got, &want, tol)?;
        }
        // x starting one value into its buffer: off the 16-byte alignment of the vector
        // kernel, which falls back to its scalar loop.
        let x = qkv.narrow(1, 0, 1)?.squeeze(1)?.contiguous()?;
        let xg = Tensor::cat(&[Tensor::zeros(1, dtype, &cpu)?, x.flatten_all()?], 0)?
            .to_device(&dev)?
            .narrow(0, 1, t * h * d)?
            .reshape((t, h, d))?;
        let want = rms_norm_rope(&x.to_dtype(DType::F32)?, Some(&gamma), &table)?;
        let got = rms_norm_rope(&xg, Some(&gamma_g), &table_g)?;
        expect_close(
            &format!("rms norm+rope misaligned {dtype:?}"),
            &got,
            &want,
            tol,
        )?;
        let want = multi_head_rms_norm(&x.to_dtype(DType::F32)?, &gamma)?;
        let got = multi_head_rms_norm(&xg, &gamma_g)?;
        expect_close(
            &format!("plain rms norm misaligned {dtype:?}"),
            &got,
            &want,
            tol,
        )?;
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
    for dtype in DTYPES {
        let tol = tol_for(Family::Elementwise, dtype);
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
            for act in [
                Activation::None,
                Activation::GeluTanh,
                Activation::Silu,
                Activation::GeluErf,
            ] {
                let want = bias_act(&x.to_dtype(DType::F32)?, &bias, act)?;
                let got = bias_act(&xg, &bg, act)?;
                assert_eq!(got.dtype(), dtype);
                let label = format!("bias_act {act:?} {dtype:?} T {t:>5} C {c:>5} skip {skip}");
                expect_close(&label, &got, &want, tol)?;
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
            let label = format!("gated_residual {dtype:?} T {t:>5} C {c:>5} skip {skip}");
            expect_close(&label, &got, &want, tol)?;
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
    use trellis2::ops::neighbour_map::neighbour_op_output;
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

/// Parents `[N, 4]` spread over the given batch items (`counts[b]` rows of batch `b`), at
/// distinct positions inside a 2^10 grid.
fn parent_rows(counts: &[usize]) -> Vec<[i32; 4]> {
    let mut rows = Vec::new();
    for (b, &count) in counts.iter().enumerate() {
        for i in 0..count as i32 {
            rows.push([
                b as i32,
                i % 1024,
                (i / 1024) % 1024,
                (i / (1 << 20)) % 1024,
            ]);
        }
    }
    rows
}

/// Children of a subdivision built on the GPU (`kernels/cuda/channel_to_space.cu`) against
/// `Subdivision::from_mask` on the CPU, word for word: rows (in order), sources, batch ranges
/// and maxima. Logits in every dtype, including zeros, −0 and NaN (none of which keeps a
/// child); parents with no child and with all 8; a batch item left without children; N not a
/// multiple of the 1024-parent scan block; more than 1024 scan blocks (the block sums scanned
/// in several chunks); no child at all; no parent.
#[test]
fn subdivision_children_match_cpu() -> Result<()> {
    use std::sync::Arc;
    use trellis2::sparse::{CoordSet, Subdivision};
    let dev = gpu();
    let mut rng = Lcg(11);
    // (what, parents per batch item, keep probability per child in %, batch item kept empty)
    let cases: &[(&str, &[usize], usize, Option<usize>)] = &[
        ("one parent, all 8", &[1], 100, None),
        ("no parent", &[0], 50, None),
        ("no child", &[1000], 0, None),
        ("1023 parents", &[1023], 58, None),
        (
            "1025 parents, 3 batches, middle empty",
            &[500, 300, 225],
            58,
            Some(1),
        ),
        ("4097 parents, sparse", &[4097], 5, None),
        ("2.1 M parents, 2 batches", &[1_300_000, 800_003], 58, None),
    ];
    for &(what, counts, keep, empty_batch) in cases {
        let rows = parent_rows(counts);
        let n = rows.len();
        let mut logits = Vec::with_capacity(n * 8);
        for (i, r) in rows.iter().enumerate() {
            let silent = empty_batch == Some(r[0] as usize);
            for _ in 0..8 {
                let v = if silent || rng.below(100) >= keep {
                    // Not kept: negative, zero, −0 or NaN.
                    [-1.5f32, 0.0, -0.0, f32::NAN][rng.below(4)]
                } else {
                    0.25 + rng.below(1000) as f32 / 100.0
                };
                // Some parents keep nothing, some everything (unless nothing is kept).
                let v = match i % 97 {
                    0 => -1.0,
                    1 if !silent && keep > 0 => 1.0,
                    _ => v,
                };
                logits.push(v);
            }
        }
        let parents_cpu = Arc::new(CoordSet::from_host(rows.clone(), &Device::Cpu)?);
        let parents_gpu = Arc::new(CoordSet::from_host(rows, &dev)?);
        for dtype in DTYPES {
            let l = Tensor::from_vec(logits.clone(), (n, 8), &Device::Cpu)?.to_dtype(dtype)?;
            let want = Subdivision::from_logits(&parents_cpu, &l)?;
            let start = std::time::Instant::now();
            let got = Subdivision::from_logits(&parents_gpu, &l.to_device(&dev)?)?;
            let gpu_ms = start.elapsed().as_secs_f64() * 1e3;
            let (w, g) = (want.children(), got.children());
            assert!(g.tensor().device().is_cuda() && got.sources().device().is_cuda());
            let sources_w = want.sources().to_vec1::<u32>()?;
            let sources_g = got.sources().to_vec1::<u32>()?;
            let rows_w = w.rows()?;
            let rows_g = g.rows()?;
            let differ = rows_w.iter().zip(rows_g).filter(|(a, b)| a != b).count()
                + sources_w
                    .iter()
                    .zip(&sources_g)
                    .filter(|(a, b)| a != b)
                    .count();
            println!(
                "children {what:<38} {dtype:?}: N {n:>7} → {:>8} children, {differ} words \
                 differ, batches {:?}, max {:?}; GPU {gpu_ms:.1} ms (incl. first loads)",
                rows_w.len(),
                g.batches(),
                g.max()
            );
            assert_eq!(rows_g.len(), rows_w.len(), "{what} {dtype:?}: child count");
            assert_eq!(
                sources_g.len(),
                sources_w.len(),
                "{what} {dtype:?}: sources"
            );
            assert_eq!(differ, 0, "{what} {dtype:?}: children differ");
            assert_eq!(g.batches(), w.batches(), "{what} {dtype:?}: batch ranges");
            assert_eq!(g.max(), w.max(), "{what} {dtype:?}: maxima");
            if let Some(b) = empty_batch {
                assert!(g.batches().iter().all(|(batch, _)| *batch != b as i32));
            }
        }
    }
    Ok(())
}

/// Coordinate sets built on the GPU compare on the device: equal rows from two separate
/// subdivisions are the same, one moved child is not.
#[test]
fn coord_sets_compare_on_device() -> Result<()> {
    use std::sync::Arc;
    use trellis2::sparse::{CoordSet, Subdivision};
    let dev = gpu();
    let rows = parent_rows(&[3000, 10]);
    let n = rows.len();
    let parents = Arc::new(CoordSet::from_host(rows, &dev)?);
    let mut logits: Vec<f32> = (0..n * 8)
        .map(|i| if i % 3 == 0 { 1.0 } else { -1.0 })
        .collect();
    let l = Tensor::from_vec(logits.clone(), (n, 8), &dev)?;
    let a = Subdivision::from_logits(&parents, &l)?;
    let b = Subdivision::from_logits(&parents, &l)?;
    assert!(a.children().same_rows(b.children())?);
    // Parent 5 keeps child 1 instead of child 0 or 2: same count, one row differs.
    let p = 5 * 8;
    let kept = (0..8)
        .find(|&s| logits[p + s] > 0.0)
        .expect("parent 5 keeps a child");
    logits[p + kept] = -1.0;
    logits[p + (kept + 1) % 8] = 1.0;
    let moved = Subdivision::from_logits(&parents, &Tensor::from_vec(logits, (n, 8), &dev)?)?;
    assert_eq!(moved.children().len(), a.children().len());
    assert!(!a.children().same_rows(moved.children())?);
    println!("coordinate sets compared on the device: equal and differing cases as expected");
    Ok(())
}

/// The fused C2S skip add (`c2s_skip_add_*` in `kernels/cuda/channel_to_space.cu`) against the
/// CPU op: 16-byte vectors and the scalar path (odd widths, h starting mid-buffer), repeats of
/// 3, 4 and 8, no child; an out-of-range source gives a NaN row, not a read out of bounds.
#[test]
fn c2s_skip_add_matches_cpu() -> Result<()> {
    use trellis2::ops::c2s_skip_add::c2s_skip_add;
    let (dev, cpu) = (gpu(), Device::Cpu);
    let mut rng = Lcg(5);
    for dtype in DTYPES {
        let tol = tol_for(Family::Elementwise, dtype);
        // (parents, C, C', children, leading rows of h skipped)
        for (n, c, c_out, kids, skip) in [
            (1000usize, 64usize, 32usize, 4000usize, 0usize),
            (2000, 512, 256, 9000, 0),
            (777, 16, 16, 3000, 0),
            (300, 8, 8, 1000, 0),
            (100, 24, 9, 200, 0),
            (50, 64, 32, 120, 1),
            (5, 64, 32, 0, 0),
        ] {
            let x = rounded(&[n, c], 1.0, dtype)?;
            let h_full = rounded(&[kids + skip, c_out], 1.0, dtype)?;
            let h = h_full.narrow(0, skip, kids)?;
            let sources: Vec<u32> = (0..kids).map(|_| rng.below(n * 8) as u32).collect();
            let s = Tensor::from_vec(sources, kids, &cpu)?;
            let want = c2s_skip_add(&h, &x, &s)?;
            let got = c2s_skip_add(
                &h_full
                    .to_dtype(dtype)?
                    .to_device(&dev)?
                    .narrow(0, skip, kids)?,
                &x.to_dtype(dtype)?.to_device(&dev)?,
                &s.to_device(&dev)?,
            )?;
            assert_eq!(got.dtype(), dtype);
            let label = format!(
                "c2s skip add {dtype:?} N {n:>5} C {c:>4} → N' {kids:>5} C' {c_out:>4} skip {skip}"
            );
            expect_close(&label, &got, &want, tol)?;
        }
    }
    let x = Tensor::ones((2, 16), DType::BF16, &dev)?;
    let h = Tensor::zeros((3, 4), DType::BF16, &dev)?;
    let s = Tensor::new(&[0u32, 16, 15], &dev)?;
    let out = c2s_skip_add(&h, &x, &s)?
        .to_dtype(DType::F32)?
        .to_vec2::<f32>()?;
    assert!(out[1].iter().all(|v| v.is_nan()), "{out:?}");
    assert!(out[0].iter().chain(&out[2]).all(|&v| v == 1.0), "{out:?}");
    Ok(())
}

/// LayerNorm + activation (`layer_norm_act_*` in `kernels/cuda/norms.cu`), plain with affine
/// and gathered without, against the CPU op; a gathered row out of range gives a NaN row.
#[test]
fn layer_norm_act_matches_cpu() -> Result<()> {
    use trellis2::ops::bias_act::Activation;
    use trellis2::ops::layer_norm_act::{gathered_layer_norm_act, layer_norm_act};
    let (dev, cpu) = (gpu(), Device::Cpu);
    let mut rng = Lcg(9);
    for dtype in DTYPES {
        let tol = tol_for(Family::Norm, dtype);
        // (input rows, C, gathered output rows)
        for (r, c, t) in [
            (0usize, 64usize, 0usize),
            (1, 1, 3),
            (1000, 64, 4000),
            (777, 1024, 500),
            (300, 13, 301),
            (8000, 128, 30000),
            (400, 1536, 800),
            (65, 4096, 100),
            (64, 8, 200),
            (500, 1000, 300),
            (130, 16, 70),
            (90, 512, 0),
        ] {
            let x = (Tensor::randn(0f32, 1.0, (r, c), &cpu)? + 1.5)?.to_dtype(dtype)?;
            let xf = x.to_dtype(DType::F32)?;
            let w = Tensor::randn(1f32, 0.3, c, &cpu)?;
            let b = Tensor::randn(0f32, 0.3, c, &cpu)?;
            let xg = x.to_device(&dev)?;
            if r > 0 {
                // x one value into its buffer: the vector kernels' scalar fallback.
                let xm = Tensor::cat(&[Tensor::zeros(1, dtype, &cpu)?, x.flatten_all()?], 0)?
                    .to_device(&dev)?
                    .narrow(0, 1, r * c)?
                    .reshape((r, c))?;
                let want = layer_norm_act(&xf, Some((&w, &b)), 1e-6, Activation::Silu)?;
                let got = layer_norm_act(
                    &xm,
                    Some((&w.to_device(&dev)?, &b.to_device(&dev)?)),
                    1e-6,
                    Activation::Silu,
                )?;
                let label = format!("layer norm Silu misaligned {dtype:?} R {r:>5} C {c:>4}");
                expect_close(&label, &got, &want, tol)?;
            }
            let (wg, bg) = (w.to_device(&dev)?, b.to_device(&dev)?);
            for act in [Activation::Silu, Activation::None] {
                let want = layer_norm_act(&xf, Some((&w, &b)), 1e-6, act)?;
                let got = layer_norm_act(&xg, Some((&wg, &bg)), 1e-6, act)?;
                assert_eq!(got.dtype(), dtype);
                let label = format!("layer norm {act:?} {dtype:?} R {r:>5} C {c:>4}");
                expect_close(&label, &got, &want, tol)?;
            }
            if r == 0 {
                continue;
            }
            let rows: Vec<u32> = (0..t).map(|_| rng.below(r) as u32).collect();
            let rows = Tensor::from_vec(rows, t, &cpu)?;
            let want = gathered_layer_norm_act(&xf, &rows, None, 1e-6, Activation::Silu)?;
            let got =
                gathered_layer_norm_act(&xg, &rows.to_device(&dev)?, None, 1e-6, Activation::Silu)?;
            let label = format!("gathered layer norm+silu {dtype:?} R {r:>5} C {c:>4} T {t:>5}");
            expect_close(&label, &got, &want, tol)?;
        }
    }
    let x = Tensor::randn(0f32, 1.0, (4, 32), &dev)?;
    let rows = Tensor::new(&[3u32, 4, 0], &dev)?;
    let out = gathered_layer_norm_act(&x, &rows, None, 1e-6, Activation::Silu)?.to_vec2::<f32>()?;
    assert!(out[1].iter().all(|v| v.is_nan()), "{out:?}");
    assert!(
        out[0].iter().chain(&out[2]).all(|v| v.is_finite()),
        "{out:?}"
    );
    Ok(())
}

/// `Linear` on CUDA (cuBLASLt with the bias, tanh-GELU and residual in the epilogue where it
/// can; the composed path for SiLU and exact GELU) against the composed ops on the CPU in f32,
/// for every dtype, the DiT's and DINOv3's widths and 1 to 4101 rows, with and without a bias.
/// The fused path must be the one taken for the activations it serves, and the residual operand
/// must come back unchanged (the output is a new buffer).
#[test]
fn linear_cublaslt_matches_cpu() -> Result<()> {
    use trellis2::ops::bias_act::{bias_act, Activation};
    use trellis2::ops::linear::{last_linear_path, Linear, LinearPath};
    let (dev, cpu) = (gpu(), Device::Cpu);
    for dtype in DTYPES {
        let tol = tol_for(Family::Linear, dtype);
        for (k, n) in [(1024usize, 3072usize), (1536, 8), (4096, 1024)] {
            let w = rounded(&[n, k], 1.0 / (k as f32).sqrt(), dtype)?;
            let b = rounded(&[n], 0.5, dtype)?;
            for m in [1usize, 7, 1029, 4101] {
                let x = rounded(&[m, k], 1.0, dtype)?;
                let r = rounded(&[m, n], 1.0, dtype)?;
                // The CPU matmul once per shape; every variant's reference derives from it.
                let y0 = x.matmul(&w.t()?)?;
                let (xg, rg) = (x.to_dtype(dtype)?.to_device(&dev)?, r.to_dtype(dtype)?);
                let rg = rg.to_device(&dev)?;
                let wg = w.to_dtype(dtype)?.to_device(&dev)?;
                let bg = b.to_dtype(dtype)?.to_device(&dev)?;
                for with_bias in [true, false] {
                    let lin = Linear::new(wg.clone(), with_bias.then(|| bg.clone()));
                    let bias = if with_bias {
                        b.clone()
                    } else {
                        Tensor::zeros(n, DType::F32, &cpu)?
                    };
                    for act in [
                        Activation::None,
                        Activation::GeluTanh,
                        Activation::GeluErf,
                        Activation::Silu,
                    ] {
                        let got = lin.forward_act(&xg, act)?;
                        let path = last_linear_path();
                        assert_eq!(got.dtype(), dtype);
                        let want = bias_act(&y0, &bias, act)?;
                        let label = format!(
                            "linear {dtype:?} M {m:>4} K {k:>4} N {n:>4} bias {with_bias:<5} \
                             {act:?} ({path:?})"
                        );
                        expect_close(&label, &got, &want, tol)?;
                        if matches!(act, Activation::None | Activation::GeluTanh) {
                            assert_eq!(path, LinearPath::CublasLt, "{label}");
                        }
                    }
                    let before = rg.to_device(&cpu)?.to_dtype(DType::F32)?;
                    let got = lin.forward_residual(&xg, &rg)?;
                    assert_eq!(last_linear_path(), LinearPath::CublasLt);
                    let want = (bias_act(&y0, &bias, Activation::None)? + &r)?;
                    let label = format!(
                        "linear {dtype:?} M {m:>4} K {k:>4} N {n:>4} bias {with_bias:<5} + residual"
                    );
                    expect_close(&label, &got, &want, tol)?;
                    let after = rg.to_device(&cpu)?.to_dtype(DType::F32)?;
                    assert_eq!(
                        (after - before)?.abs()?.max_all()?.to_scalar::<f32>()?,
                        0.0,
                        "{label}: the residual operand was modified"
                    );
                }
            }
        }
    }
    Ok(())
}

/// Operands cuBLASLt cannot take fall back to the composed path with the same results: rows
/// that are not a multiple of 16 bytes, an x that starts 2 bytes into its buffer, a strided x,
/// a leading batch dim, and an x view 1 row into its buffer (16-byte but not 256-byte aligned:
/// the heuristic must be told).
#[test]
fn linear_cublaslt_fallbacks_match_cpu() -> Result<()> {
    use candle_core::Module;
    use trellis2::ops::linear::{last_linear_path, Linear, LinearPath};
    let dev = gpu();
    for dtype in DTYPES {
        let tol = tol_for(Family::Linear, dtype);
        let check = |what: &str, k: usize, n: usize, x: &Tensor, xg: &Tensor, fused: bool| {
            let w = rounded(&[n, k], 1.0 / (k as f32).sqrt(), dtype)?;
            let b = rounded(&[n], 0.5, dtype)?;
            let lin = Linear::new(w.clone(), Some(b.clone()));
            let lin_g = Linear::new(
                w.to_dtype(dtype)?.to_device(&dev)?,
                Some(b.to_dtype(dtype)?.to_device(&dev)?),
            );
            let want = lin.forward(x)?;
            let got = lin_g.forward(xg)?;
            let path = last_linear_path();
            expect_close(&format!("{what} {dtype:?} ({path:?})"), &got, &want, tol)?;
            assert_eq!(
                path == LinearPath::CublasLt,
                fused,
                "{what} {dtype:?}: {path:?}"
            );
            let r = rounded(want.dims(), 1.0, dtype)?;
            let want = (want + &r)?;
            let got = lin_g.forward_residual(xg, &r.to_dtype(dtype)?.to_device(&dev)?)?;
            let path = last_linear_path();
            expect_close(
                &format!("{what} + residual {dtype:?} ({path:?})"),
                &got,
                &want,
                tol,
            )?;
            assert_eq!(
                path == LinearPath::CublasLt,
                fused,
                "{what} {dtype:?}: {path:?}"
            );
            Result::Ok(())
        };
        let on_gpu = |x: &Tensor| x.to_dtype(dtype)?.to_device(&dev);
        // K = 13, N = 7: rows of 13 and 7 elements.
        let x = rounded(&[33, 13], 1.0, dtype)?;
        check("odd widths", 13, 7, &x, &on_gpu(&x)?, false)?;
        // An x 2 bytes (1 element) into its buffer.
        let flat = rounded(&[1 + 33 * 64], 1.0, dtype)?;
        let x = flat.narrow(0, 1, 33 * 64)?.reshape((33, 64))?;
        let xg = on_gpu(&flat)?.narrow(0, 1, 33 * 64)?.reshape((33, 64))?;
        check("x at element 1", 64, 96, &x, &xg, false)?;
        // A strided x (every other column): made contiguous, then fused.
        let wide = rounded(&[40, 128], 1.0, dtype)?;
        let x = wide.narrow(1, 0, 64)?;
        check(
            "strided x",
            64,
            96,
            &x,
            &on_gpu(&wide)?.narrow(1, 0, 64)?,
            true,
        )?;
        // [B, N, C] input.
        let x = rounded(&[2, 21, 64], 1.0, dtype)?;
        check("batched x", 64, 96, &x, &on_gpu(&x)?, true)?;
        // One row into its buffer: 128 bytes (f16) or 256 (f32) aligned.
        let full = rounded(&[34, 64], 1.0, dtype)?;
        let x = full.narrow(0, 1, 33)?;
        check(
            "x at row 1",
            64,
            96,
            &x,
            &on_gpu(&full)?.narrow(0, 1, 33)?,
            true,
        )?;
    }
    Ok(())
}

/// cuBLASLt's GELU epilogue is torch's tanh approximation (the DiT's `GELU(approximate="tanh")`)
/// in f32 at a tight tolerance, not the exact erf GELU: `ops::cublaslt::GELU_EPILOGUE_IS_TANH`
/// relies on it. Pre-activations of std ≈2 (max ≈9): the two GELUs differ by up to 4.7e-4 (at
/// |x| ≈ 2.7), ≈5e-5 of max|ref|, ten times the tolerance. If this
/// fails, set `GELU_EPILOGUE_IS_TANH` to false (tanh-GELU then stays on `bias_act`).
#[test]
fn cublaslt_gelu_epilogue_is_tanh_gelu() -> Result<()> {
    use trellis2::ops::bias_act::{bias_act, Activation};
    use trellis2::ops::linear::{last_linear_path, Linear, LinearPath};
    let (dev, cpu) = (gpu(), Device::Cpu);
    let (m, k, n) = (257usize, 1024usize, 1536usize);
    let x = Tensor::randn(0f32, 1.0, (m, k), &cpu)?;
    let w = Tensor::randn(0f32, 2.0 / (k as f32).sqrt(), (n, k), &cpu)?;
    let b = Tensor::randn(0f32, 0.5, n, &cpu)?;
    let y0 = x.matmul(&w.t()?)?;
    let lin = Linear::new(w.to_device(&dev)?, Some(b.to_device(&dev)?));
    let got = lin
        .forward_act(&x.to_device(&dev)?, Activation::GeluTanh)?
        .to_device(&cpu)?;
    assert_eq!(last_linear_path(), LinearPath::CublasLt);
    let tanh = bias_act(&y0, &b, Activation::GeluTanh)?;
    let erf = bias_act(&y0, &b, Activation::GeluErf)?;
    let (e_tanh, e_erf) = (rel_err(&got, &tanh), rel_err(&got, &erf));
    let e_between = rel_err(&erf, &tanh);
    println!(
        "cuBLASLt GELU epilogue f32: vs tanh-GELU {e_tanh:.2e}, vs erf-GELU {e_erf:.2e} \
         (the two GELUs differ by {e_between:.2e})"
    );
    assert!(
        e_between > 2e-5,
        "the test data must tell the two GELUs apart"
    );
    assert!(
        e_tanh <= 5e-6,
        "cuBLASLt's GELU is not tanh-GELU to 5e-6 ({e_tanh:e}): set GELU_EPILOGUE_IS_TANH = false"
    );
    Ok(())
}

/// `upsample(lr, 4)`-like rows on the 512³ grid for the cascade tests: batch 0 a spherical shell
/// (radius 180, 5 voxels thick along z), batch 1 random rows in a box with every tenth row
/// repeated; ≈1.9 M rows, heavily duplicated once quantised.
fn cascade_rows(rng: &mut Lcg) -> Vec<[i32; 4]> {
    let (centre, radius) = (256i32, 180i32);
    let mut rows = Vec::new();
    for x in centre - radius..=centre + radius {
        for y in centre - radius..=centre + radius {
            let (dx, dy) = (x - centre, y - centre);
            let rest = radius * radius - dx * dx - dy * dy;
            if rest < 0 {
                continue;
            }
            let h = (rest as f32).sqrt() as i32;
            for z in [centre - h, centre + h] {
                rows.extend((-2..=2).map(|t| [0, x, y, (z + t).clamp(0, 511)]));
            }
        }
    }
    for i in 0..600_000 {
        if i % 10 == 9 {
            let again = rows[rows.len() - 1 - rng.below(5)];
            rows.push(again);
        } else {
            let mut axis = || 100 + rng.below(300) as i32;
            rows.push([1, axis(), axis(), axis()]);
        }
    }
    rows
}

fn coords_on(rows: &[[i32; 4]], dev: &Device) -> Result<Tensor> {
    let flat: Vec<i32> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), 4), dev)
}

/// The cascade's quantisation on the GPU (`kernels/cuda/cascade_quantize.cu`: an occupancy
/// bitmap filled on the device, only the bitmap read back) against the host reference
/// `quantize_coords`, word for word: two batch items at 1024 and 1536, the token budget's
/// step-down through `high_res_structure`, and rows off the grid, which must make the device
/// path decline (the pipeline then quantises on the host).
#[test]
fn cascade_quantisation_matches_host() -> anyhow::Result<()> {
    use std::time::Instant;
    use trellis2::pipeline::cascade::{
        choose_resolution, high_res_structure, quantize_coords, quantize_coords_cuda,
    };
    let dev = gpu();
    let rows = cascade_rows(&mut Lcg(29));
    let up = coords_on(&rows, &dev)?;
    // Module load outside the timings.
    quantize_coords_cuda(&up, 2, 1024)?;
    let mut counts = Vec::new();
    for res in [1024, 1536, 1280, 1408] {
        dev.synchronize()?;
        let t = Instant::now();
        let got = quantize_coords_cuda(&up, 2, res)?;
        let gpu_ms = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let host_rows: Vec<i32> = up.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
        let read_ms = t.elapsed().as_secs_f64() * 1e3;
        assert_eq!(host_rows.len(), rows.len() * 4);
        let t = Instant::now();
        let want = quantize_coords(&rows, res)?;
        let host_ms = t.elapsed().as_secs_f64() * 1e3;
        println!(
            "cascade quantisation @{res}: {} rows → {} cells; GPU bitmap + decode {gpu_ms:.2} ms, \
             host: read-back {read_ms:.2} ms + quantisation {host_ms:.2} ms",
            rows.len(),
            want.len()
        );
        assert_eq!(
            got.as_ref(),
            Some(&want),
            "@{res}: GPU rows differ from the host's"
        );
        assert!(want.iter().any(|r| r[0] == 1) && want.iter().any(|r| r[0] == 0));
        counts.push((res, want.len()));
    }

    // Budget between the counts at 1280 and 1408: 1536 and 1408 are over it, 1280 is chosen.
    let count_at = |res| counts.iter().find(|c| c.0 == res).map_or(0, |c| c.1);
    assert!(count_at(1408) > count_at(1280) + 1);
    let budget = count_at(1280) + 1;
    let (res, hr, voxels) = high_res_structure(&up, 2, 1536, budget, &dev)?;
    let (want_res, want) = choose_resolution(&rows, 1536, budget)?;
    assert_eq!((res, voxels), (want_res, rows.len()));
    assert_eq!(res, 1280);
    assert!(hr.device().is_cuda());
    let got: Vec<i32> = hr.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
    assert_eq!(got, want.iter().flatten().copied().collect::<Vec<_>>());
    println!(
        "cascade step-down: budget {budget} → resolution {res}, {} cells",
        want.len()
    );

    // Off the grid: a coordinate past 511, a batch index past `batches`, a negative batch; a
    // batch bound below the rows' batches. x = −6 quantises to 0 at side 64 (in the grid, as on
    // the host: truncation toward zero) but to −1 at side 96.
    let off_grid: [(&str, [i32; 4], usize); 4] = [
        ("x = 600", [0, 600, 3, 3], 2),
        ("batch 2 of 2", [2, 3, 3, 3], 2),
        ("batch −1", [-1, 3, 3, 3], 2),
        ("batch 1 of bound 1", [1, 3, 3, 3], 1),
    ];
    let mut with_extra = rows.clone();
    for (label, extra, batches) in off_grid {
        with_extra.truncate(rows.len());
        with_extra.push(extra);
        let up = coords_on(&with_extra, &dev)?;
        assert_eq!(
            quantize_coords_cuda(&up, batches, 1024)?,
            None,
            "{label}: the GPU path must decline"
        );
        let (res, hr, voxels) = high_res_structure(&up, batches, 1536, budget, &dev)?;
        let (want_res, want) = choose_resolution(&with_extra, 1536, budget)?;
        assert_eq!((res, voxels), (want_res, with_extra.len()), "{label}");
        let got: Vec<i32> = hr.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
        assert_eq!(
            got,
            want.iter().flatten().copied().collect::<Vec<_>>(),
            "{label}: the fallback differs from the host"
        );
    }
    with_extra.truncate(rows.len());
    with_extra.push([1, -6, 5, 5]);
    let up = coords_on(&with_extra, &dev)?;
    assert_eq!(
        quantize_coords_cuda(&up, 2, 1024)?,
        Some(quantize_coords(&with_extra, 1024)?)
    );
    assert_eq!(quantize_coords_cuda(&up, 2, 1536)?, None);
    println!("cascade quantisation off the grid: the GPU path declines, the fallback matches");
    Ok(())
}
