//! The CUDA kernels against their CPU reference ops, on an NVIDIA GPU (built only with the
//! `cuda` feature). Every selftest case (`trellis2::selftest::cases`, all sizes) runs on CUDA
//! device 0, the sparse conv and attention cases again with each kernel variant pinned and the
//! linear cases with the path they must take; then the checks the cases cannot express: sorted
//! voxel orders, views (a fused qkv, operands starting mid-buffer), NaN rows for bad indices,
//! cuBLASLt's fallbacks and epilogue, subdivision children and the cascade's quantisation, host
//! copies on the copy stream; and
//! candle's own modules, loaded from the build's SASS: every kernel of candle's PTX is in them,
//! they load with the PTX JIT off, and candle ops of each match the CPU.
//! Every test needs CUDA device 0 and fails, rather than skips, without one.
//! Run: `cargo test --release --features cuda --test cuda_kernels -- --nocapture`; each check
//! prints max|err| / max|ref|.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Result, Tensor};
use trellis2::ops::attention::{
    attention_kernel_available, varlen_attention, varlen_attention_with, AttentionKernel,
};
use trellis2::ops::bias_act::Activation;
use trellis2::ops::sparse_conv::{
    conv_kernel_available, submanifold_conv3d_ordered_with, submanifold_conv3d_with, ConvKernel,
    ABSENT,
};
use trellis2::ops::tuning::{ConvSort, Tuning};
use trellis2::ops::{submanifold_conv3d, submanifold_conv3d_map};
use trellis2::selftest::{
    cases, check, check_with, operand_dtype, tensor_rel_err, voxel_shell, Case, ConvMap, Inputs,
    Op, Report, Tolerance, DTYPES,
};
use trellis2::sparse::{NeighbourMap, SparseTensor};

/// bf16 / f16 operands with fp32 accumulation: the tolerance of the tensor-core kernels in
/// every output dtype (the extras below that are not selftest cases).
const TOL: f32 = Tolerance::TENSOR_CORE.f32;

/// CUDA device 0, prepared as a run prepares it (candle's own modules loaded from the build's
/// SASS images), so every candle op of these tests runs the vendored kernels.
fn gpu() -> Device {
    let dev = Device::new_cuda(0).expect("CUDA device 0: these tests need an NVIDIA GPU");
    trellis2::ops::prepare_device(&dev).expect("preparing CUDA device 0");
    dev
}

/// Runs `check` on every case `keep` keeps, in each of its dtypes, printing each report;
/// fails listing every failing case with its parameters.
fn run_cases(keep: impl Fn(&Case) -> bool, check: impl Fn(&Case, DType) -> Vec<Report>) {
    let mut failed = Vec::new();
    let mut runs = 0;
    for case in cases().iter().filter(|c| keep(c)) {
        for &dtype in case.dtypes {
            for report in check(case, dtype) {
                println!("{report}");
                runs += 1;
                if !report.passed() {
                    failed.push(report.to_string());
                }
            }
        }
    }
    println!("{runs} checks, {} failed", failed.len());
    assert!(runs > 0, "no case ran");
    assert!(failed.is_empty(), "failed:\n{}", failed.join("\n"));
}

/// Every selftest case on the GPU against the CPU op, with the default kernels (the linear
/// cases in [`linear_cases_take_cublaslt_where_it_serves`], which also checks their path).
#[test]
fn selftest_cases_on_cuda() {
    let dev = gpu();
    let not_linear = |c: &Case| !matches!(c.op, Op::Linear { .. });
    run_cases(not_linear, |case, dtype| {
        vec![check(case, dtype, &dev, false)]
    });
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

/// `case` in `dtype` with each of `kernels` pinned by `run`: a report for each kernel that
/// `takes` the case; forcing one that does not must be an error, not a fallback.
fn pinned<K: Copy + std::fmt::Debug>(
    case: &Case,
    dtype: DType,
    dev: &Device,
    kernels: &[K],
    takes: impl Fn(K) -> bool,
    run: impl Fn(K, &Inputs) -> Result<Tensor>,
) -> Vec<Report> {
    let mut reports = Vec::new();
    for &kernel in kernels {
        let run = |inputs: &Inputs| run(kernel, inputs);
        if !takes(kernel) {
            let operands = operand_dtype(case, dev, dtype);
            let inputs = case.inputs(dtype, operands).unwrap();
            let refused = run(&inputs.to_device(dev).unwrap()).is_err();
            assert!(refused, "{}: the {kernel:?} kernel took it", case.op);
            continue;
        }
        let mut report = check_with(case, dtype, dev, false, &run);
        report.case.push_str(&format!(" [{kernel:?}]"));
        reports.push(report);
    }
    reports
}

/// Every sparse conv case with each conv kernel pinned (mma.sync, and wgmma where it runs; the
/// wgmma kernel takes Ci multiples of 8 only).
#[test]
fn sparse_conv_cases_with_each_kernel() -> Result<()> {
    let dev = gpu();
    let kernels = conv_kernels(&dev)?;
    let is_conv = |c: &Case| matches!(c.op, Op::SparseConv { .. });
    run_cases(is_conv, |case, dtype| {
        let Op::SparseConv { ci, .. } = case.op else {
            unreachable!()
        };
        let takes = |k| k != ConvKernel::Wgmma || ci.is_multiple_of(8);
        pinned(case, dtype, &dev, &kernels, takes, conv_with)
    });
    Ok(())
}

/// One attention kernel to pin: the kernel, and for `Fa3` whether its consumer warpgroups
/// ping-pong and its keys per tile (`TRELLIS2_ATTENTION_PINGPONG`, `TRELLIS2_ATTENTION_KEYS`,
/// set for the calling thread only).
#[derive(Clone, Copy, PartialEq)]
struct Attn(AttentionKernel, bool, u32);

impl std::fmt::Debug for Attn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attn(AttentionKernel::Fa3, pp, keys) => {
                let pp = if *pp { "on" } else { "off" };
                write!(f, "Fa3, ping-pong {pp}, {keys} keys")
            }
            Attn(k, ..) => write!(f, "{k:?}"),
        }
    }
}

impl Attn {
    /// Whether the kernel takes head dim `d` (the Hopper kernels: 64 and 128 only).
    fn takes(self, d: usize) -> bool {
        self.0 == AttentionKernel::Mma || [64, 128].contains(&d)
    }

    fn run(
        self,
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        q_offsets: &[usize],
        kv_offsets: &[usize],
        scale: f32,
    ) -> Result<Tensor> {
        let tuning = Tuning {
            attention_pingpong: Some(self.1),
            attention_keys: self.2,
            ..Tuning::current()
        };
        tuning.with(|| varlen_attention_with(self.0, q, k, v, q_offsets, kv_offsets, scale))
    }
}

/// The attention kernels to pin on `dev`: mma.sync, and where the Hopper kernels run (an
/// sm_90a build on a 9.0 device) wgmma and the warp-specialised fa3 with and without ping-pong,
/// with 128 and 176 keys per tile.
fn attention_kernels(dev: &Device) -> Result<Vec<Attn>> {
    let mut kernels = vec![Attn(AttentionKernel::Mma, true, 128)];
    let hopper = attention_kernel_available(AttentionKernel::Wgmma, dev)?;
    assert_eq!(
        attention_kernel_available(AttentionKernel::Fa3, dev)?,
        hopper,
        "the two Hopper kernels run on the same builds and devices"
    );
    if hopper {
        kernels.push(Attn(AttentionKernel::Wgmma, true, 128));
        for keys in [128, 176] {
            for pingpong in [true, false] {
                kernels.push(Attn(AttentionKernel::Fa3, pingpong, keys));
            }
        }
    } else {
        println!("attention: the Hopper kernels are not available here; mma.sync only");
        let t = Tensor::zeros((4, 1, 64), DType::BF16, dev)?;
        for k in [AttentionKernel::Wgmma, AttentionKernel::Fa3] {
            assert!(varlen_attention_with(k, &t, &t, &t, &[0, 4], &[0, 4], 0.1).is_err());
        }
    }
    Ok(kernels)
}

/// Every attention case with each attention kernel pinned (mma.sync, and wgmma and fa3 where
/// they run; the Hopper kernels take head dims 64 and 128 only).
#[test]
fn attention_cases_with_each_kernel() -> Result<()> {
    let dev = gpu();
    let kernels = attention_kernels(&dev)?;
    let is_attention = |c: &Case| matches!(c.op, Op::Attention { .. });
    run_cases(is_attention, |case, dtype| {
        let Op::Attention { head_dim, .. } = case.op else {
            unreachable!()
        };
        let takes = |k: Attn| k.takes(head_dim);
        pinned(case, dtype, &dev, &kernels, takes, |k, inputs| {
            let Inputs::Attention {
                q,
                k: keys,
                v,
                q_offsets,
                kv_offsets,
                scale,
            } = inputs
            else {
                unreachable!()
            };
            k.run((q, keys, v), q_offsets, kv_offsets, *scale)
        })
    });
    // Head dims no kernel has are an error, not a wrong answer.
    for d in [32, 96] {
        let t = Tensor::zeros((4, 1, d), DType::BF16, &dev)?;
        if d == 96 {
            assert!(varlen_attention(&t, &t, &t, &[0, 4], &[0, 4], 0.1).is_err());
        }
        for &k in kernels.iter().filter(|k| k.0 != AttentionKernel::Mma) {
            assert!(k.run((&t, &t, &t), &[0, 4], &[0, 4], 0.1).is_err());
        }
    }
    Ok(())
}

/// Every linear case takes cuBLASLt for the activations its epilogue serves (none, tanh-GELU)
/// and for the residual, which comes back unchanged (the output is a new buffer).
#[test]
fn linear_cases_take_cublaslt_where_it_serves() {
    cublaslt_pinned(linear_cases_take_cublaslt_default)
}

/// Runs `f` with the fused cuBLASLt path on (`TRELLIS2_CUBLASLT=on`), whatever the environment
/// sets for this run.
fn cublaslt_pinned<R>(f: impl FnOnce() -> R) -> R {
    Tuning {
        cublaslt: true,
        ..Tuning::current()
    }
    .with(f)
}

fn linear_cases_take_cublaslt_default() {
    use trellis2::ops::linear::{last_linear_path, LinearPath};
    let dev = gpu();
    let is_linear = |c: &Case| matches!(c.op, Op::Linear { .. });
    run_cases(is_linear, |case, dtype| {
        let Op::Linear { act, residual, .. } = case.op else {
            unreachable!()
        };
        let fused = residual || matches!(act, Activation::None | Activation::GeluTanh);
        let taken = std::cell::Cell::new(None);
        let run = |inputs: &Inputs| {
            let before = match inputs {
                Inputs::Linear {
                    residual: Some(r), ..
                } => Some(r.to_device(&Device::Cpu)?.to_dtype(DType::F32)?),
                _ => None,
            };
            let out = case.run(inputs)?;
            let path = last_linear_path();
            taken.set(Some(path));
            if fused {
                assert_eq!(path, LinearPath::CublasLt, "{} {dtype:?}", case.op);
            }
            if let (
                Some(before),
                Inputs::Linear {
                    residual: Some(r), ..
                },
            ) = (before, inputs)
            {
                let after = r.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
                let diff = (after - before)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert_eq!(diff, 0.0, "{}: the residual operand was modified", case.op);
            }
            Ok(out)
        };
        let mut report = check_with(case, dtype, &dev, false, &run);
        if let Some(path) = taken.get() {
            report.case.push_str(&format!(" ({path:?})"));
        }
        vec![report]
    });
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

/// [`tensor_rel_err`] of tensors on any device (shapes must match).
fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    tensor_rel_err(got, want).expect("tensors of one shape")
}

/// Prints `label: max|err|/max|ref| = …` for `got` (on any device) against the CPU reference
/// `want`, and fails when the error is over `tol`.
fn expect_close(label: &str, got: &Tensor, want: &Tensor, tol: f32) -> Result<()> {
    let err = rel_err(got, want);
    println!("{label}: max|err|/max|ref| = {err:.2e}");
    assert!(err <= tol, "{label}: error {err} over {tol}");
    Ok(())
}

/// Random values rounded to `dtype`, returned as f32 on the CPU (the reference's input) — the
/// GPU gets the same values in `dtype`.
/// A sparse conv case's inputs through `kernel`.
fn conv_with(kernel: ConvKernel, inputs: &Inputs) -> Result<Tensor> {
    let Inputs::SparseConv {
        feats,
        map,
        weight,
        bias,
    } = inputs
    else {
        unreachable!()
    };
    submanifold_conv3d_with(kernel, feats, map, weight, bias.as_ref())
}

fn rounded(shape: &[usize], std: f32, dtype: DType) -> Result<Tensor> {
    Tensor::randn(0f32, std, shape, &Device::Cpu)?
        .to_dtype(dtype)?
        .to_dtype(DType::F32)
}

/// A conv case's operands over `map`'s `n` voxels: features and weights drawn in f32 and rounded
/// to `dtype`, an f32 bias, the CPU reference output, and the three operands on `dev`.
fn conv_operands(
    map: &NeighbourMap,
    n: usize,
    ci: usize,
    co: usize,
    dtype: DType,
    dev: &Device,
) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    let feats = rounded(&[n, ci], 1.0, dtype)?;
    let weight = rounded(&[co, 27, ci], 0.1, dtype)?;
    let bias = Tensor::randn(0f32, 1.0, co, &Device::Cpu)?;
    let want = submanifold_conv3d(
        &feats,
        &map.tensor().to_device(&Device::Cpu)?,
        &weight,
        Some(&bias),
    )?;
    Ok((
        want,
        feats.to_dtype(dtype)?.to_device(dev)?,
        weight.to_dtype(dtype)?.to_device(dev)?,
        bias.to_device(dev)?,
    ))
}

/// A random neighbour map of `n` rows with taps present with probability `p`
/// ([`ConvMap::Random`]).
fn random_map(n: usize, p: f32, seed: u64) -> Vec<u32> {
    ConvMap::Random { voxels: n, p, seed }
        .build()
        .expect("a random map")
        .0
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
    let rows: Vec<i32> = voxel_shell(0, 2 * (r as i32 + 2), r, 0.87)
        .into_iter()
        .flatten()
        .collect();
    let n = rows.len() / 4;
    let coords = Tensor::from_vec(rows, (n, 4), dev)?;
    let x = SparseTensor::new(&coords, Tensor::zeros((n, 1), DType::F32, dev)?)?;
    Ok((x, n))
}

/// A CPU copy of a GPU-built neighbour map of `n` voxels.
fn host_copy(map: &NeighbourMap, n: usize) -> Result<NeighbourMap> {
    let rows = map
        .tensor()
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<u32>()?;
    NeighbourMap::from_rows(rows, n, &Device::Cpu)
}

/// Sorting the voxels by neighbour mask (the CUDA conv's tile order) changes no voxel's result:
/// the sorted and unsorted kernels agree value for value (up to the sign of zero), both match
/// the CPU reference, and the GPU-built order equals the host's for a full sort and for windows.
#[test]
fn sparse_conv_sorted_order() -> Result<()> {
    sort_pinned(sparse_conv_sorted_order_default)
}

fn sparse_conv_sorted_order_default() -> Result<()> {
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
        let host = host_copy(map, n)?;
        for window in [0, 1, 3, 4096, 10_000] {
            let got = map.sorted_order(window)?.to_vec1::<u32>()?;
            let want = host.sorted_order(window)?.to_vec1::<u32>()?;
            assert_permutation(&got, n, "sorted order");
            assert_eq!(got, want, "window {window}: GPU and host orders differ");
        }
        let (want, f, w, b) = conv_operands(map, n, ci, co, dtype, &dev)?;
        for kernel in conv_kernels(&dev)? {
            let plain = submanifold_conv3d_with(kernel, &f, map.tensor(), &w, Some(&b))?;
            let sorted = submanifold_conv3d_ordered_with(kernel, &f, map, &order, &w, Some(&b))?;
            let err = rel_err(&sorted, &want);
            println!("sparse conv {kernel:<5?} sorted order, shell r {r}: T {n:>7} Ci {ci:>4} Co {co:>4} {dtype:?}: max|err|/max|ref| = {err:.2e}");
            assert!(
                err <= TOL,
                "sorted order ({kernel:?}): error {err} over {TOL}"
            );
            assert_same_values(&sorted, &plain, "sorted vs unsorted")?;
        }
        // The default path (`ConvKernel::Auto` with the map's cached order) as the model runs it.
        let via_map = submanifold_conv3d_map(&f, map, &w, Some(&b))?;
        let err = rel_err(&via_map, &want);
        assert!(
            err <= TOL,
            "sorted order (default kernel): error {err} over {TOL}"
        );
    }
    Ok(())
}

/// `TRELLIS2_CONV_ROWS=256`: the wgmma conv's 256-row tiles (four warpgroups, 512 threads) at
/// 128 output columns or fewer, with one wgmma group kept in flight (its default) and none, on
/// every sparse conv case the wgmma kernel takes and on sorted shells (orders through the
/// tiles, T not a multiple of 256, Co = 64, 96 and 200: 64- and 128-column tiles, the last one
/// cut), against the CPU op.
#[test]
fn sparse_conv_256_row_tiles_match_cpu() -> Result<()> {
    let dev = gpu();
    if !conv_kernel_available(ConvKernel::Wgmma, &dev)? {
        println!(
            "sparse conv 256-row tiles: the wgmma kernel is not available here; nothing runs them"
        );
        return Ok(());
    }
    let takes = |c: &Case| matches!(c.op, Op::SparseConv { ci, .. } if ci.is_multiple_of(8));
    for keep in [None, Some(0)] {
        let tuning = Tuning {
            conv_rows: Some(256),
            conv_wgmma_keep: keep,
            ..Tuning::current()
        };
        tuning.with(|| {
            run_cases(takes, |case, dtype| {
                let run = |inputs: &Inputs| conv_with(ConvKernel::Wgmma, inputs);
                let mut report = check_with(case, dtype, &dev, false, &run);
                report
                    .case
                    .push_str(&format!(" [Wgmma, 256 rows, keep {keep:?}]"));
                vec![report]
            })
        });
        for (r, ci, co, dtype) in [
            (40.0, 64, 96, DType::F16),
            (25.0, 128, 64, DType::BF16),
            (55.0, 32, 200, DType::BF16),
        ] {
            let (x, n) = gpu_shell_map(r, &dev)?;
            let map = x.neighbour_map()?;
            let order = map
                .conv_order(ci * 2)?
                .expect("a large set on CUDA is sorted");
            let (want, f, w, b) = conv_operands(map, n, ci, co, dtype, &dev)?;
            let (plain, sorted) = tuning.with(|| {
                Result::Ok((
                    submanifold_conv3d_with(ConvKernel::Wgmma, &f, map.tensor(), &w, Some(&b))?,
                    submanifold_conv3d_ordered_with(
                        ConvKernel::Wgmma,
                        &f,
                        map,
                        &order,
                        &w,
                        Some(&b),
                    )?,
                ))
            })?;
            for (what, got) in [("plain", &plain), ("sorted", &sorted)] {
                expect_close(
                    &format!(
                        "sparse conv 256-row tiles keep {keep:?}, {what}, shell r {r}: T {n} Ci {ci} Co {co} {dtype:?}"
                    ),
                    got,
                    &want,
                    TOL,
                )?;
            }
        }
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
        compare("random masks", random_map(n, 0.5, n as u64), n)?;
    }
    for n in [1000, 140_001] {
        compare("one mask", random_map(n, 1.0, n as u64), n)?;
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
    sort_pinned(sparse_conv_sort_policy_default)
}

/// Runs `f` under the default voxel-order policy (`TRELLIS2_CONV_SORT=auto`), whatever the
/// environment sets for this run.
fn sort_pinned(f: fn() -> Result<()>) -> Result<()> {
    Tuning {
        conv_sort: ConvSort::Auto,
        ..Tuning::current()
    }
    .with(f)
}

fn sparse_conv_sort_policy_default() -> Result<()> {
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
        let host = host_copy(map, n)?;
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

/// The warp-specialised kernel's 176-key tiles (the selftest cases' lengths sit at 64- and
/// 128-key edges): key lengths one short of, at and one past multiples of 176, so full, partial
/// and one-key last tiles occur with two stages, self and cross, head dims 64 and 128.
#[test]
fn attention_fa3_key_tile_edges() -> Result<()> {
    let dev = gpu();
    let kernels: Vec<Attn> = attention_kernels(&dev)?
        .into_iter()
        .filter(|k| k.0 == AttentionKernel::Fa3)
        .collect();
    let q_lens = [175usize, 176, 177, 1, 353, 528, 529];
    let kv_lens = [177usize, 352, 1, 176, 529, 700, 175];
    let cum = |lens: &[usize]| -> Vec<usize> {
        std::iter::once(0)
            .chain(lens.iter().scan(0, |a, &l| {
                *a += l;
                Some(*a)
            }))
            .collect()
    };
    let (qo, ko) = (cum(&q_lens), cum(&kv_lens));
    for (heads, d) in [(2, 64), (2, 128)] {
        for (label, kv_off) in [("self", &qo), ("cross", &ko)] {
            let (nq, nk) = (qo[qo.len() - 1], kv_off[kv_off.len() - 1]);
            let q = rounded(&[nq, heads, d], 1.0, DType::BF16)?;
            let k = rounded(&[nk, heads, d], 1.0, DType::BF16)?;
            let v = rounded(&[nk, heads, d], 1.0, DType::BF16)?;
            let scale = 1.0 / (d as f32).sqrt();
            let want = varlen_attention(&q, &k, &v, &qo, kv_off, scale)?;
            let g = |t: &Tensor| t.to_dtype(DType::BF16)?.to_device(&dev);
            let (qg, kg, vg) = (g(&q)?, g(&k)?, g(&v)?);
            for &kernel in &kernels {
                let got = kernel.run((&qg, &kg, &vg), &qo, kv_off, scale)?;
                expect_close(
                    &format!("attention {kernel:?}, {label}, 176-key edges, D {d}"),
                    &got,
                    &want,
                    TOL,
                )?;
            }
        }
    }
    Ok(())
}

/// q, k, v as row views of one fused `[N, 3, H, D]` projection (token stride 3·H·D), as the
/// DiT passes v: the kernels read them in place and must match the contiguous reference.
#[test]
fn attention_reads_views_of_a_fused_qkv() -> Result<()> {
    let dev = gpu();
    let offsets = [0, 1, 130, 700];
    let kernels = attention_kernels(&dev)?;
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
            let got = kernel.run(
                (&gpart(0)?, &gpart(1)?, &gpart(2)?),
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

/// q/k read in place from a fused qkv projection (a strided view) and the one-row identity
/// rotation of the cross-attention's plain RMS norm, on the GPU against the CPU op.
#[test]
fn rms_norm_of_strided_views_matches_cpu() -> Result<()> {
    use trellis2::ops::rms_norm_rope::{multi_head_rms_norm, rms_norm_rope};
    let (dev, cpu) = (gpu(), Device::Cpu);
    for dtype in [DType::F32, DType::BF16] {
        let tol = Tolerance::NORM.of(dtype);
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

/// `x` on the GPU as a view `skip` values into a buffer of zeros: off the 16-byte alignment of
/// the vector kernels, which then take their scalar fallback.
fn misaligned(x: &Tensor, skip: usize, dev: &Device) -> Result<Tensor> {
    Tensor::cat(
        &[
            Tensor::zeros(skip, x.dtype(), &Device::Cpu)?,
            x.flatten_all()?,
        ],
        0,
    )?
    .to_device(dev)?
    .narrow(0, skip, x.elem_count())?
    .reshape(x.dims())
}

/// The fused norms, the elementwise epilogues and the C2S skip add with operands starting
/// mid-buffer (views whose first value is not 16-byte aligned, or whole rows in), in every
/// dtype against the CPU ops.
#[test]
fn operands_starting_mid_buffer_match_cpu() -> Result<()> {
    use trellis2::ops::bias_act::bias_act;
    use trellis2::ops::c2s_skip_add::c2s_skip_add;
    use trellis2::ops::gated_residual::gated_residual;
    use trellis2::ops::layer_norm_act::layer_norm_act;
    use trellis2::ops::norm_modulate::{layer_norm_modulate, Modulation};
    let (dev, cpu) = (gpu(), Device::Cpu);
    let mut rng = Lcg(5);
    for &dtype in DTYPES {
        let (norm, elementwise) = (Tolerance::NORM.of(dtype), Tolerance::ELEMENTWISE.of(dtype));
        // LayerNorm + modulation, x starting 1 and 3 values in.
        for (t, c, offsets, skip) in [
            (300usize, 1536usize, vec![0usize, 100, 300], 1usize),
            (90, 64, vec![0, 90], 3),
        ] {
            let b = offsets.len() - 1;
            let x = (Tensor::randn(0f32, 1.0, (t, c), &cpu)? + 2.0)?.to_dtype(dtype)?;
            let (w, bias) = (
                Tensor::randn(0f32, 1.0, c, &cpu)?,
                Tensor::randn(0f32, 1.0, c, &cpu)?,
            );
            let (shift, scale) = (
                Tensor::randn(0f32, 1.0, (b, c), &cpu)?,
                Tensor::randn(0f32, 0.5, (b, c), &cpu)?,
            );
            let m = Modulation {
                shift: &shift,
                scale: &scale,
                offsets: &offsets,
            };
            let want = layer_norm_modulate(&x.to_dtype(DType::F32)?, Some((&w, &bias)), &m, 1e-6)?;
            let (shift_g, scale_g) = (shift.to_device(&dev)?, scale.to_device(&dev)?);
            let mg = Modulation {
                shift: &shift_g,
                scale: &scale_g,
                offsets: &offsets,
            };
            let got = layer_norm_modulate(
                &misaligned(&x, skip, &dev)?,
                Some((&w.to_device(&dev)?, &bias.to_device(&dev)?)),
                &mg,
                1e-6,
            )?;
            let label = format!("norm+modulate {dtype:?} T {t:>5} C {c:>5} B {b} skip {skip}");
            expect_close(&label, &got, &want, norm)?;
        }
        // LayerNorm + activation, x starting one value in.
        for (r, c) in [
            (1usize, 1usize),
            (1000, 64),
            (777, 1024),
            (300, 13),
            (8000, 128),
            (400, 1536),
            (65, 4096),
            (64, 8),
            (500, 1000),
            (130, 16),
            (90, 512),
        ] {
            let x = (Tensor::randn(0f32, 1.0, (r, c), &cpu)? + 1.5)?.to_dtype(dtype)?;
            let w = Tensor::randn(1f32, 0.3, c, &cpu)?;
            let b = Tensor::randn(0f32, 0.3, c, &cpu)?;
            let act = Activation::Silu;
            let want = layer_norm_act(&x.to_dtype(DType::F32)?, Some((&w, &b)), 1e-6, act)?;
            let got = layer_norm_act(
                &misaligned(&x, 1, &dev)?,
                Some((&w.to_device(&dev)?, &b.to_device(&dev)?)),
                1e-6,
                act,
            )?;
            let label = format!("layer norm Silu misaligned {dtype:?} R {r:>5} C {c:>4}");
            expect_close(&label, &got, &want, norm)?;
        }
        // The epilogues on views that start `skip` rows into their buffer.
        for (t, c, skip) in [(77usize, 40usize, 3usize), (5, 8, 1)] {
            let full = Tensor::randn(0f32, 2.0, (t + skip, c), &cpu)?.to_dtype(dtype)?;
            let x = full.narrow(0, skip, t)?;
            let xg = full.to_device(&dev)?.narrow(0, skip, t)?;
            let bias = Tensor::randn(0f32, 1.0, c, &cpu)?;
            for act in [
                Activation::None,
                Activation::GeluTanh,
                Activation::Silu,
                Activation::GeluErf,
            ] {
                let want = bias_act(&x.to_dtype(DType::F32)?, &bias, act)?;
                let got = bias_act(&xg, &bias.to_device(&dev)?, act)?;
                let label = format!("bias_act {act:?} {dtype:?} T {t:>5} C {c:>5} skip {skip}");
                expect_close(&label, &got, &want, elementwise)?;
            }
            let offsets = vec![0, t / 3, t / 3, t];
            let r = Tensor::randn(0f32, 1.0, (t, c), &cpu)?.to_dtype(dtype)?;
            let gate = Tensor::randn(0f32, 1.0, (3, c), &cpu)?;
            let f32c = |t: &Tensor| t.to_dtype(DType::F32);
            let want = gated_residual(&f32c(&x)?, &f32c(&r)?, &gate, &offsets)?;
            let got = gated_residual(&xg, &r.to_device(&dev)?, &gate.to_device(&dev)?, &offsets)?;
            let label = format!("gated_residual {dtype:?} T {t:>5} C {c:>5} skip {skip}");
            expect_close(&label, &got, &want, elementwise)?;
        }
        // The C2S skip add with h one row into its buffer.
        let (n, c, c_out, kids, skip) = (50usize, 64usize, 32usize, 120usize, 1usize);
        let x = rounded(&[n, c], 1.0, dtype)?;
        let h_full = rounded(&[kids + skip, c_out], 1.0, dtype)?;
        let sources: Vec<u32> = (0..kids).map(|_| rng.below(n * 8) as u32).collect();
        let s = Tensor::from_vec(sources, kids, &cpu)?;
        let want = c2s_skip_add(&h_full.narrow(0, skip, kids)?, &x, &s)?;
        let got = c2s_skip_add(
            &h_full
                .to_dtype(dtype)?
                .to_device(&dev)?
                .narrow(0, skip, kids)?,
            &x.to_dtype(dtype)?.to_device(&dev)?,
            &s.to_device(&dev)?,
        )?;
        let label =
            format!("c2s skip add {dtype:?} N {n} C {c} → N' {kids} C' {c_out} skip {skip}");
        expect_close(&label, &got, &want, elementwise)?;
    }
    Ok(())
}

/// An out-of-range source (C2S skip add) or gathered row (LayerNorm + activation) gives a NaN
/// row, not a read out of bounds.
#[test]
fn bad_indices_give_nan_rows() -> Result<()> {
    use trellis2::ops::c2s_skip_add::c2s_skip_add;
    use trellis2::ops::layer_norm_act::gathered_layer_norm_act;
    let dev = gpu();
    let x = Tensor::ones((2, 16), DType::BF16, &dev)?;
    let h = Tensor::zeros((3, 4), DType::BF16, &dev)?;
    let s = Tensor::new(&[0u32, 16, 15], &dev)?;
    let out = c2s_skip_add(&h, &x, &s)?
        .to_dtype(DType::F32)?
        .to_vec2::<f32>()?;
    assert!(out[1].iter().all(|v| v.is_nan()), "{out:?}");
    assert!(out[0].iter().chain(&out[2]).all(|&v| v == 1.0), "{out:?}");
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

/// The neighbour-map op's raw output built on the GPU (`kernels/cuda/neighbour_map.cu`) equals
/// the CPU's word for word, status words included (no duplicate, the pair count), for every
/// neighbour-map case; a duplicate voxel is an error naming both rows.
#[test]
fn neighbour_op_words_match_cpu() -> Result<()> {
    use trellis2::ops::neighbour_map::neighbour_op_output;
    let dev = gpu();
    for case in cases() {
        let Op::NeighbourMap { voxels } = &case.op else {
            continue;
        };
        let rows: Vec<i32> = voxels.rows().into_iter().flatten().collect();
        let n = rows.len() / 4;
        if n == 0 {
            continue;
        }
        let coords = Tensor::from_vec(rows, (n, 4), &Device::Cpu)?;
        let start = std::time::Instant::now();
        let got = neighbour_op_output(&coords.to_device(&dev)?)?.to_vec1::<u32>()?;
        let gpu_s = start.elapsed().as_secs_f64();
        let start = std::time::Instant::now();
        let want = neighbour_op_output(&coords)?.to_vec1::<u32>()?;
        let cpu_s = start.elapsed().as_secs_f64();
        let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        println!(
            "neighbour map {voxels} T {n:>8}: {differ} of {} words differ; GPU {:.1} ms, CPU {:.1} ms",
            want.len(),
            gpu_s * 1e3,
            cpu_s * 1e3
        );
        assert_eq!(got.len(), want.len());
        assert_eq!(differ, 0, "{voxels}: GPU map differs from the CPU's");
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
        for &dtype in DTYPES {
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

/// Host copies on the copy stream give what a blocking `to_device` gives, for each dtype a run
/// copies, a view that starts mid-buffer and a transposed (strided) tensor; the copy sees the
/// values of when it was started although the sources' handles are dropped and the device keeps
/// allocating and computing meanwhile; a copy waited on from another thread, one dropped before
/// anyone waits, and the pooled buffers reused by the next copies.
#[test]
fn host_copies_match_blocking_copies() -> Result<()> {
    use trellis2::ops::host_copy::HostCopy;
    let dev = gpu();
    let n = 300_000;
    let coords = Tensor::arange(0i64, 4 * n as i64, &dev)?
        .to_dtype(DType::I32)?
        .reshape((n, 4))?;
    let base = Tensor::randn(0f32, 1.0, (n + 3, 7), &dev)?;
    let halves = base.to_dtype(DType::F16)?.narrow(0, 3, n)?;
    let strided = base.to_dtype(DType::BF16)?.narrow(0, 0, n)?.t()?;
    let floats = (base.narrow(0, 1, n)? * 0.5)?;
    let sources = [coords, halves, strided, floats];
    let want = sources
        .iter()
        .map(|t| t.to_device(&Device::Cpu))
        .collect::<Result<Vec<_>>>()?;
    for round in 0..3 {
        let copy = HostCopy::start(&sources.clone())?;
        // Work queued behind the copy, on memory the pool may hand out again.
        let mut churn = Tensor::randn(0f32, 1.0, (n, 64), &dev)?;
        for _ in 0..8 {
            churn = (churn.sqr()? + 1.0)?.sqrt()?;
        }
        let dropped = HostCopy::start(&sources[..2])?;
        drop(dropped);
        let waiter = copy.clone();
        let got = std::thread::spawn(move || waiter.tensors())
            .join()
            .expect("thread")?;
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.dims(), w.dims(), "round {round}, tensor {i}");
            assert_eq!(g.dtype(), w.dtype(), "round {round}, tensor {i}");
            assert!(g.device().is_cpu());
            let diff = (g.to_dtype(DType::F64)? - w.to_dtype(DType::F64)?)?
                .abs()?
                .max_all()?
                .to_scalar::<f64>()?;
            assert_eq!(diff, 0.0, "round {round}, tensor {i}");
        }
        // The same copy again (cached) and the device's own work intact.
        assert_eq!(copy.tensors()?[0].dims(), want[0].dims());
        assert!(churn.min_all()?.to_scalar::<f32>()? >= 1.0);
    }
    println!("host copies: 4 tensors, 3 rounds, equal to blocking copies");
    Ok(())
}

/// Operands cuBLASLt cannot take fall back to the composed path with the same results: rows
/// that are not a multiple of 16 bytes, an x that starts 2 bytes into its buffer, a strided x,
/// a leading batch dim, and an x view 1 row into its buffer (16-byte but not 256-byte aligned:
/// the heuristic must be told).
#[test]
fn linear_cublaslt_fallbacks_match_cpu() -> Result<()> {
    cublaslt_pinned(|| {
        use candle_core::Module;
        use trellis2::ops::linear::{last_linear_path, Linear, LinearPath};
        let dev = gpu();
        for &dtype in DTYPES {
            let tol = Tolerance::LINEAR.of(dtype);
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
    })
}

/// `TRELLIS2_LINEAR_ACT`: f16/bf16 linear layers with SiLU or exact GELU (no cuBLASLt epilogue)
/// as one wgmma kernel with bias and activation in its epilogue (`linear_act_sm90a_*`), against
/// the composed path on the CPU in f32: tiles cut by M, N and K (K a multiple of 8 but not of
/// the 64 of a step, N odd, N ≤ 64 taking the 64-column tile, more K steps than ring stages), no
/// bias, and x as a view one row into its buffer. Where the kernel cannot run (no sm_90a build
/// or device, x 2 bytes into its buffer, K not a multiple of 8, a width over the knob's) the
/// layer takes the composed path with the same results.
#[test]
fn linear_act_wgmma_matches_cpu() -> Result<()> {
    use trellis2::ops::linear::{last_linear_path, Linear, LinearPath};
    let (dev, cpu) = (gpu(), Device::Cpu);
    let runs = conv_kernel_available(ConvKernel::Wgmma, &dev)?;
    if !runs {
        println!("linear act: the wgmma kernels are not available here; composed path only");
    }
    let on = Tuning {
        linear_act: Some(usize::MAX),
        ..Tuning::current()
    };
    for dtype in [DType::F16, DType::BF16] {
        let tol = Tolerance::LINEAR.of(dtype);
        // (what, M, K, N, bias, x rows skipped at the buffer's start, elements skipped, knob)
        type Shape = (&'static str, usize, usize, usize, bool, usize, usize, usize);
        let shapes: [Shape; 9] = [
            ("decoder L3-like", 1000, 128, 512, true, 0, 0, usize::MAX),
            ("decoder L2-like", 300, 256, 1024, true, 0, 0, usize::MAX),
            ("N 40, 64-column tile", 77, 64, 40, true, 0, 0, usize::MAX),
            ("N 7 odd, K 24", 129, 24, 7, true, 0, 0, usize::MAX),
            ("K 1032: 17 steps", 5, 1032, 200, true, 0, 0, usize::MAX),
            ("no bias", 130, 136, 264, false, 0, 0, usize::MAX),
            ("x at row 1", 33, 64, 96, true, 1, 0, usize::MAX),
            ("x at element 1", 33, 64, 96, true, 0, 1, usize::MAX),
            ("K 128 over a width of 100", 40, 128, 64, true, 0, 0, 100),
        ];
        for (what, m, k, n, with_bias, skip_rows, skip, width) in shapes {
            let w = rounded(&[n, k], 1.0 / (k as f32).sqrt(), dtype)?;
            let b = rounded(&[n], 0.5, dtype)?;
            let bias = with_bias.then_some(b);
            let lin = Linear::new(w.clone(), bias.clone());
            let lin_g = Linear::new(
                w.to_dtype(dtype)?.to_device(&dev)?,
                bias.map(|b| b.to_dtype(dtype)?.to_device(&dev))
                    .transpose()?,
            );
            let lead = skip_rows * k + skip;
            let flat = rounded(&[lead + m * k], 2.0, dtype)?;
            let x = flat.narrow(0, lead, m * k)?.reshape((m, k))?;
            let xg = flat
                .to_dtype(dtype)?
                .to_device(&dev)?
                .narrow(0, lead, m * k)?
                .reshape((m, k))?;
            let expect_wgmma = runs && skip.is_multiple_of(8) && k <= width;
            for act in [Activation::Silu, Activation::GeluErf] {
                let want = lin.forward_act_unfused(&x, act)?;
                let tuning = Tuning {
                    linear_act: Some(width),
                    ..on
                };
                let got = tuning.with(|| lin_g.forward_act(&xg, act))?;
                let path = last_linear_path();
                expect_close(
                    &format!("linear {what} {m}×{k}→{n} {act:?} {dtype:?} ({path:?})"),
                    &got.to_device(&cpu)?,
                    &want,
                    tol,
                )?;
                assert_eq!(
                    path == LinearPath::WgmmaAct,
                    expect_wgmma,
                    "{what} {act:?} {dtype:?}: {path:?}"
                );
            }
        }
        // K = 20 is not a multiple of 8: the composed path.
        let lin_g = Linear::new(
            rounded(&[16, 20], 0.2, dtype)?
                .to_dtype(dtype)?
                .to_device(&dev)?,
            None,
        );
        let x = rounded(&[9, 20], 1.0, dtype)?
            .to_dtype(dtype)?
            .to_device(&dev)?;
        on.with(|| lin_g.forward_act(&x, Activation::Silu))?;
        assert!(matches!(last_linear_path(), LinearPath::Composed(_)));
    }
    // f32 layers keep the composed path, and with the knob off so does every layer.
    let lin_g = Linear::new(Tensor::ones((16, 64), DType::F32, &dev)?, None);
    let x = Tensor::ones((9, 64), DType::F32, &dev)?;
    on.with(|| lin_g.forward_act(&x, Activation::Silu))?;
    assert!(matches!(last_linear_path(), LinearPath::Composed(_)));
    let lin_g = Linear::new(Tensor::ones((16, 64), DType::F16, &dev)?, None);
    let x = Tensor::ones((9, 64), DType::F16, &dev)?;
    Tuning {
        linear_act: None,
        ..on
    }
    .with(|| lin_g.forward_act(&x, Activation::Silu))?;
    assert!(matches!(last_linear_path(), LinearPath::Composed(_)));
    Ok(())
}

/// cuBLASLt's GELU epilogue is torch's tanh approximation (the DiT's `GELU(approximate="tanh")`)
/// in f32 at a tight tolerance, not the exact erf GELU: `ops::linear::cuda::GELU_EPILOGUE_IS_TANH`
/// relies on it. Pre-activations of std ≈2 (max ≈9): the two GELUs differ by up to 4.7e-4 (at
/// |x| ≈ 2.7), ≈5e-5 of max|ref|, ten times the tolerance. If this
/// fails, set `GELU_EPILOGUE_IS_TANH` to false (tanh-GELU then stays on `bias_act`).
#[test]
fn cublaslt_gelu_epilogue_is_tanh_gelu() -> Result<()> {
    cublaslt_pinned(|| {
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
    })
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

/// The space→channel gather (the shape encoder's downsampling; `space_to_channel_w*` in
/// channel_to_space.cu) against the CPU op, bit for bit: the 16-byte path (rows of whole
/// 16-byte words), the scalar paths (odd widths, a view starting one value in), absent slots
/// and slots past the rows (zeros), one parent and none; then a whole encoder level on the GPU.
#[test]
fn space_to_channel_matches_cpu_bit_for_bit() -> Result<()> {
    use trellis2::ops::space_to_channel::space_to_channel;
    let (dev, cpu) = (gpu(), Device::Cpu);
    let mut rng = Lcg(17);
    for &dtype in DTYPES {
        for (rows, c, parents, skip) in [
            (1usize, 1usize, 1usize, 0usize),
            (1000, 64, 300, 0),
            (999, 13, 250, 0),
            (500, 16, 120, 1),
            (70, 8, 0, 0),
            (200_000, 16, 40_000, 0),
        ] {
            let slots: Vec<u32> = (0..parents * 8)
                .map(|_| match rng.below(4) {
                    0 => ABSENT,
                    _ => rng.below(rows) as u32,
                })
                .collect();
            let s = Tensor::from_vec(slots, parents * 8, &cpu)?;
            let x = Tensor::randn(0f32, 1.0, (rows, c), &cpu)?.to_dtype(dtype)?;
            let want = space_to_channel(&x, &s)?;
            let xg = misaligned(&x, skip, &dev)?;
            let got = space_to_channel(&xg, &s.to_device(&dev)?)?;
            // Widened on the host: candle's CUDA cast launches an empty grid (an invalid
            // launch) for a tensor with no elements, such as the no-parent case.
            let (g, w) = (
                got.to_device(&cpu)?
                    .to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
                want.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
            );
            assert_eq!(got.dims(), want.dims());
            assert!(
                g.iter().zip(&w).all(|(a, b)| a.to_bits() == b.to_bits()),
                "space_to_channel {dtype:?} N {rows} C {c} M {parents} skip {skip}"
            );
            println!("space_to_channel {dtype:?} N {rows:>6} C {c:>3} M {parents:>5} skip {skip}: identical");
        }
    }
    Ok(())
}

/// A random subdivision of the voxels of `x` (each child kept with probability `keep` %, some
/// parents keeping none and some all 8) and its sources on the CPU.
fn random_subdivision(
    x: &SparseTensor,
    keep: usize,
    seed: u64,
) -> Result<(trellis2::sparse::Subdivision, Tensor)> {
    let mut rng = Lcg(seed);
    let n = x.len();
    let mask: Vec<bool> = (0..n * 8)
        .map(|i| match (i / 8) % 53 {
            0 => false,
            1 => true,
            _ => rng.below(100) < keep,
        })
        .collect();
    let sub = trellis2::sparse::Subdivision::from_mask(x.coord_set(), &mask)?;
    let sources = sub.sources().to_device(&Device::Cpu)?;
    Ok((sub, sources))
}

/// The C2S children conv (`kernels/cuda/sparse_conv_sm90a.cu` `subm_conv3d_children_*` over the
/// row list of `kernels/cuda/channel_to_space.cu` `c2s_rows_*`) against its CPU op (the parents
/// conv, then each child's channel block) and against the GPU parents conv followed by the same
/// selection: the four C2S shapes of the SC-VAE decoders (Ci → 8·C': 1024 → 8·512, 512 → 8·256,
/// 256 → 8·128, 128 → 8·64: 256-, 256/128-, 128- and 64-column tiles) on sorted shells, and small
/// odd cases (Ci 24, C' 40: a cut 64-column tile; C' 200; the voxels' own order below the sort's
/// minimum; all children kept; none kept), f16 and bf16.
#[test]
fn c2s_children_conv_matches_cpu() -> Result<()> {
    use trellis2::ops::sparse_conv::submanifold_conv3d_children;
    let dev = gpu();
    if !conv_kernel_available(ConvKernel::Wgmma, &dev)? {
        println!("c2s children conv: the wgmma kernel is not available here; nothing runs it");
        return Ok(());
    }
    // (shell radius, Ci, C', keep %, dtype): radii small enough for the CPU reference, large
    // enough for 256-column tiles at C' = 512 and 256 (a tile for every SM) and for sorted
    // orders from 4096 parents on.
    let cases = [
        (10.0, 1024, 512, 58, DType::F16),
        (14.0, 512, 256, 58, DType::BF16),
        (20.0, 256, 128, 58, DType::F16),
        (30.0, 128, 64, 58, DType::BF16),
        (12.0, 24, 40, 30, DType::F16),
        (25.0, 64, 200, 70, DType::BF16),
        (3.0, 16, 24, 100, DType::BF16),
        (3.0, 16, 24, 0, DType::F16),
    ];
    for (i, &(r, ci, c_child, keep, dtype)) in cases.iter().enumerate() {
        let (x, n) = gpu_shell_map(r, &dev)?;
        let map = x.neighbour_map()?;
        let (sub, sources_cpu) = random_subdivision(&x, keep, 31 + i as u64)?;
        let children = sources_cpu.dims1()?;
        let co = 8 * c_child;
        let host = host_copy(map, n)?;
        let feats = rounded(&[n, ci], 1.0, dtype)?;
        let weight = rounded(&[co, 27, ci], 0.1, dtype)?;
        let bias = Tensor::randn(0f32, 1.0, co, &Device::Cpu)?;
        let want = submanifold_conv3d_children(&feats, &host, &sources_cpu, &weight, Some(&bias))?;
        assert_eq!(want.dims(), [children, c_child]);
        let (f, w, b) = (
            feats.to_dtype(dtype)?.to_device(&dev)?,
            weight.to_dtype(dtype)?.to_device(&dev)?,
            bias.to_device(&dev)?,
        );
        let got = submanifold_conv3d_children(&f, map, sub.sources(), &w, Some(&b))?;
        assert_eq!(got.dims(), [children, c_child]);
        let sorted = map.conv_order(ci * 2)?.is_some();
        let label = format!(
            "c2s children conv, shell r {r}: P {n:>7} → N' {children:>7} Ci {ci:>4} C' {c_child:>3} {dtype:?} sorted {sorted}"
        );
        if children == 0 {
            println!("{label}: empty");
            continue;
        }
        expect_close(&label, &got, &want, TOL)?;
        let parents = submanifold_conv3d_map(&f, map, &w, Some(&b))?
            .reshape((n * 8, c_child))?
            .index_select(sub.sources(), 0)?;
        expect_close(&format!("{label} vs GPU parents"), &got, &parents, TOL)?;
    }
    Ok(())
}

/// A whole C2S block (`C2SBlock::forward_through`: norm, conv1, LayerNorm + SiLU on the
/// children, conv2, skip) on CUDA with `TRELLIS2_C2S_CONV=children` and `wide` equals the
/// default parents path within the tensor-core tolerance, at 256 → 128 and 128 → 64 channels.
#[test]
fn c2s_block_children_conv_matches_parents() -> Result<()> {
    use std::collections::HashMap;
    use trellis2::models::sc_vae::blocks::C2SBlock;
    use trellis2::ops::tuning::C2sConv;
    let dev = gpu();
    for (r, c, c_out, dtype) in [(30.0, 256, 128, DType::F16), (40.0, 128, 64, DType::BF16)] {
        let (shell, n) = gpu_shell_map(r, &dev)?;
        let mut weights = HashMap::new();
        let mut put = |name: &str, shape: &[usize], std: f32| -> Result<()> {
            let t = Tensor::randn(0f32, std, shape, &Device::Cpu)?;
            weights.insert(name.to_string(), t.to_dtype(dtype)?.to_device(&dev)?);
            Ok(())
        };
        put("norm1.weight", &[c], 1.0)?;
        put("norm1.bias", &[c], 0.1)?;
        put("conv1.weight", &[8 * c_out, 3, 3, 3, c], 0.02)?;
        put("conv1.bias", &[8 * c_out], 0.1)?;
        put("conv2.weight", &[c_out, 3, 3, 3, c_out], 0.02)?;
        put("conv2.bias", &[c_out], 0.1)?;
        let vb = candle_nn::VarBuilder::from_tensors(weights, dtype, &dev);
        let block = C2SBlock::new(c, c_out, false, vb)?;
        let feats = Tensor::randn(0f32, 1.0, (n, c), &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(&dev)?;
        let x = shell.replace(feats)?;
        let (sub, _) = random_subdivision(&x, 58, 7)?;
        let run = |mode: C2sConv| {
            Tuning {
                c2s_conv: mode,
                ..Tuning::current()
            }
            .with(|| block.forward_through(&x, &sub))
        };
        let want = run(C2sConv::Parents)?;
        for mode in [C2sConv::Children, C2sConv::Wide] {
            let got = run(mode)?;
            assert!(std::sync::Arc::ptr_eq(got.coord_set(), want.coord_set()));
            expect_close(
                &format!(
                    "C2S block {c} → {c_out} {dtype:?}, N {n} → {}, {mode:?}",
                    want.len()
                ),
                got.feats(),
                want.feats(),
                TOL,
            )?;
        }
    }
    Ok(())
}

/// The kernel names of a PTX text (its `.entry` lines).
fn ptx_entries(ptx: &str) -> Vec<&str> {
    ptx.lines()
        .filter_map(|l| {
            let rest = &l[l.find(".entry ")? + ".entry ".len()..];
            Some(rest.split('(').next().unwrap_or(rest).trim())
        })
        .collect()
}

/// Whether the build's SASS serves a card of `(major, minor)`: one of its capabilities has the
/// same major version and a minor one no higher.
fn sass_serves(built: &str, (major, minor): (i32, i32)) -> bool {
    built
        .split(',')
        .filter_map(|c| c.trim().parse::<i32>().ok())
        .any(|c| c / 10 == major && c % 10 <= minor)
}

/// candle's modules are loaded from the build's images on GPU 0 with the driver's PTX JIT and
/// its cache off, and hold every kernel of the PTX candle embeds (so the vendored sources are
/// those of that PTX): run in a child process, since the driver reads the variables when it
/// initialises. Where the build has no SASS for the card, the same check runs here with the JIT
/// on (the images' PTX).
#[test]
fn candle_modules_load_from_images_without_the_ptx_jit() {
    let dev = Device::new_cuda(0).expect("CUDA device 0: these tests need an NVIDIA GPU");
    let Device::Cuda(cuda) = &dev else {
        unreachable!()
    };
    let cc = cuda.cuda_stream().context().compute_capability().unwrap();
    let built = env!("TRELLIS2_CUDA_CAPS_BUILT");
    if !sass_serves(built, cc) {
        println!("no SASS of this build ({built}) for compute capability {cc:?}: checked with the JIT on");
        every_candle_kernel_is_in_the_images();
        return;
    }
    let name = "every_candle_kernel_is_in_the_images";
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--include-ignored", "--nocapture"])
        .env("CUDA_DISABLE_PTX_JIT", "1")
        .env("CUDA_CACHE_DISABLE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the child process ended with {}:\n{}\n{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run by [`candle_modules_load_from_images_without_the_ptx_jit`], alone in its process: the
/// device's preparation loads all nine images, and every `.entry` of each module's PTX loads as
/// a function from the module candle's store then holds.
#[test]
#[ignore = "run by candle_modules_load_from_images_without_the_ptx_jit"]
fn every_candle_kernel_is_in_the_images() {
    use candle_core::cuda_backend::kernels;
    let dev = gpu();
    let Device::Cuda(cuda) = &dev else {
        unreachable!()
    };
    let loads = trellis2::ops::candle_kernel_loads();
    println!("{loads:?}");
    assert!(
        loads
            .iter()
            .any(|l| l.modules == 9 && l.from_images == 9 && l.errors.is_empty()),
        "not every image loaded: {loads:?}"
    );
    let modules = [
        ("affine", &kernels::AFFINE),
        ("binary", &kernels::BINARY),
        ("cast", &kernels::CAST),
        ("conv", &kernels::CONV),
        ("fill", &kernels::FILL),
        ("indexing", &kernels::INDEXING),
        ("reduce", &kernels::REDUCE),
        ("ternary", &kernels::TERNARY),
        ("unary", &kernels::UNARY),
    ];
    let mut missing = Vec::new();
    for (name, module) in modules {
        // The store holds the module already: an empty image is never looked at.
        assert!(
            !cuda.load_module_image(module, &[]).unwrap(),
            "candle module {name} is not in the store"
        );
        let entries = ptx_entries(module.ptx());
        assert!(!entries.is_empty(), "no .entry in candle's {name} PTX");
        for entry in &entries {
            if let Err(e) = cuda.get_or_load_func(entry, module) {
                missing.push(format!("{name}/{entry}: {e}"));
            }
        }
        println!("candle module {name}: {} kernels", entries.len());
    }
    assert!(
        missing.is_empty(),
        "not in the images:\n{}",
        missing.join("\n")
    );
}

/// `f` of CPU `inputs` on `dev` against the CPU, within `tol` (max|err| / max|ref|; integer
/// results equal).
fn gpu_matches_cpu(
    dev: &Device,
    label: &str,
    inputs: &[&Tensor],
    tol: f32,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<()> {
    let on_cpu: Vec<Tensor> = inputs.iter().map(|t| (*t).clone()).collect();
    let on_gpu: Vec<Tensor> = inputs
        .iter()
        .map(|t| t.to_device(dev))
        .collect::<Result<_>>()?;
    let want = f(&on_cpu)?;
    let got = f(&on_gpu)?;
    assert!(got.device().is_cuda(), "{label} did not run on the GPU");
    assert_eq!(got.dtype(), want.dtype(), "{label}");
    if want.dtype().is_float() {
        expect_close(label, &got, &want, tol)
    } else {
        let (g, w) = (
            got.flatten_all()?.to_dtype(DType::I64)?.to_vec1::<i64>()?,
            want.flatten_all()?.to_dtype(DType::I64)?.to_vec1::<i64>()?,
        );
        assert_eq!(g, w, "{label}");
        println!("{label}: equal");
        Ok(())
    }
}

/// candle ops that launch each of candle's nine modules (now loaded from the build's images)
/// match the CPU on a prepared device: casts, broadcast arithmetic, affine, reductions,
/// index_select / gather, where_cond, conv1d / conv2d (im2col), fills, unary maps and strided
/// copies, in f32 and the half types the runs use.
#[test]
fn candle_ops_on_a_prepared_device_match_cpu() -> Result<()> {
    let cpu = Device::Cpu;
    let dev = gpu();
    let values = |n: usize, dims: &[usize]| -> Result<Tensor> {
        Tensor::arange(0u32, n as u32, &cpu)?
            .to_dtype(DType::F32)?
            .affine(0.731, -3.0)?
            .sin()?
            .affine(2.0, 0.1)?
            .reshape(dims)
    };
    let a = values(4 * 33 * 17, &[4, 33, 17])?;
    let row = values(33, &[1, 33, 1])?.affine(-0.5, 1.0)?;
    const F32: f32 = 1e-6;
    const HALF: f32 = 1e-2;

    // cast
    for dt in [DType::F16, DType::BF16] {
        gpu_matches_cpu(&dev, &format!("to_dtype {dt:?}"), &[&a], 0.0, |t| {
            t[0].to_dtype(dt)?.to_dtype(DType::F32)
        })?;
    }
    gpu_matches_cpu(&dev, "to_dtype u32", &[&a], 0.0, |t| {
        t[0].abs()?.affine(10.0, 0.0)?.to_dtype(DType::U32)
    })?;
    // binary, with broadcasts
    gpu_matches_cpu(&dev, "broadcast_add", &[&a, &row], F32, |t| {
        t[0].broadcast_add(&t[1])
    })?;
    gpu_matches_cpu(&dev, "broadcast_mul", &[&a, &row], F32, |t| {
        t[0].broadcast_mul(&t[1])
    })?;
    gpu_matches_cpu(&dev, "broadcast_mul bf16", &[&a, &row], HALF, |t| {
        t[0].to_dtype(DType::BF16)?
            .broadcast_mul(&t[1].to_dtype(DType::BF16)?)
    })?;
    gpu_matches_cpu(&dev, "sub, div, maximum", &[&a], F32, |t| {
        let b = t[0].affine(0.5, 3.0)?;
        (&t[0] - &b)?.div(&b)?.maximum(&t[0])
    })?;
    // affine
    gpu_matches_cpu(&dev, "affine", &[&a], F32, |t| t[0].affine(1.5, -0.25))?;
    gpu_matches_cpu(&dev, "affine f16", &[&a], HALF, |t| {
        t[0].to_dtype(DType::F16)?.affine(1.5, -0.25)
    })?;
    // reduce
    gpu_matches_cpu(&dev, "sum_keepdim(2)", &[&a], 1e-5, |t| t[0].sum_keepdim(2))?;
    gpu_matches_cpu(&dev, "sum over a strided dim", &[&a], 1e-5, |t| t[0].sum(1))?;
    gpu_matches_cpu(&dev, "max_keepdim(1)", &[&a], 0.0, |t| t[0].max_keepdim(1))?;
    gpu_matches_cpu(&dev, "min(2)", &[&a], 0.0, |t| t[0].min(2))?;
    gpu_matches_cpu(&dev, "argmax(2)", &[&a], 0.0, |t| t[0].argmax(2))?;
    gpu_matches_cpu(&dev, "softmax_last_dim", &[&a], 1e-5, |t| {
        candle_nn::ops::softmax_last_dim(&t[0])
    })?;
    // indexing
    let ids = Tensor::new(&[5u32, 0, 32, 7, 7, 19], &cpu)?;
    gpu_matches_cpu(&dev, "index_select", &[&a, &ids], 0.0, |t| {
        t[0].index_select(&t[1], 1)
    })?;
    let gather_ids: Vec<u32> = (0..4 * 33 * 5).map(|i| (i * 7 + 3) % 17).collect();
    let gather_ids = Tensor::from_vec(gather_ids, (4, 33, 5), &cpu)?;
    gpu_matches_cpu(&dev, "gather", &[&a, &gather_ids], 0.0, |t| {
        t[0].gather(&t[1], 2)
    })?;
    // ternary
    gpu_matches_cpu(&dev, "where_cond", &[&a], 0.0, |t| {
        let mask = t[0].ge(0.5)?;
        mask.where_cond(&t[0], &t[0].affine(-1.0, 0.0)?)
    })?;
    // conv (im2col / im2col1d, then a matmul)
    let image = values(2 * 3 * 16 * 16, &[2, 3, 16, 16])?;
    let kernel = values(4 * 3 * 3 * 3, &[4, 3, 3, 3])?.affine(0.2, 0.0)?;
    gpu_matches_cpu(&dev, "conv2d", &[&image, &kernel], 1e-5, |t| {
        t[0].conv2d(&t[1], 1, 1, 1, 1)
    })?;
    let signal = values(2 * 3 * 40, &[2, 3, 40])?;
    let kernel1 = values(5 * 3 * 4, &[5, 3, 4])?.affine(0.3, 0.0)?;
    gpu_matches_cpu(&dev, "conv1d", &[&signal, &kernel1], 1e-5, |t| {
        t[0].conv1d(&t[1], 1, 2, 1, 1)
    })?;
    // fill
    for dt in [DType::F32, DType::BF16, DType::F16, DType::U32] {
        gpu_matches_cpu(
            &dev,
            &format!("ones, zeros, full {dt:?}"),
            &[&a],
            0.0,
            |t| {
                let dev = t[0].device();
                let ones = Tensor::ones((3, 5), dt, dev)?;
                let zeros = Tensor::zeros((3, 5), dt, dev)?;
                let full = Tensor::full(2.0f32, (3, 5), dev)?.to_dtype(dt)?;
                Tensor::cat(&[ones, zeros, full], 0)
            },
        )?;
    }
    // unary, and copies of strided views
    gpu_matches_cpu(&dev, "exp", &[&a], 1e-6, |t| t[0].exp())?;
    gpu_matches_cpu(&dev, "silu", &[&a], 1e-6, |t| t[0].silu())?;
    gpu_matches_cpu(&dev, "gelu_erf bf16", &[&a], HALF, |t| {
        t[0].to_dtype(DType::BF16)?.gelu_erf()
    })?;
    gpu_matches_cpu(&dev, "transposed contiguous", &[&a], 0.0, |t| {
        t[0].transpose(1, 2)?.contiguous()
    })?;
    gpu_matches_cpu(&dev, "narrowed contiguous bf16", &[&a], 0.0, |t| {
        t[0].to_dtype(DType::BF16)?.narrow(2, 3, 9)?.contiguous()
    })?;
    Ok(())
}
