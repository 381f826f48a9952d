//! The Metal kernels executed on the CPU through the MSL emulator (tests/msl_emu/), on the exact
//! dispatch plans the Metal backend encodes (src/ops/metal/dispatch.rs), compared with the CPU
//! reference ops. Prints max|err|/max|ref| per case.

mod msl_emu;

use candle_core::{DType, Device, Tensor};
use msl_emu::{EmuDispatch, Emulator, Slot};
use trellis2::ops::attention::varlen_attention;
use trellis2::ops::deform_conv::{modulated_im2col, modulated_im2col_args, DeformConvConfig};
use trellis2::ops::metal::dispatch::{
    attention_dispatches, attention_tiles, deform_im2col_dispatches, sparse_conv_dispatches,
    MAX_DEFORM_COLUMNS_PER_DISPATCH, MAX_MACS_PER_DISPATCH,
};
use trellis2::ops::metal::kargs::{
    AttentionArgs, BiasActArgs, DeformIm2ColArgs, GatedResidualArgs, KernelArgs, NeighbourArgs,
    NormModulateArgs, RmsRopeArgs, SparseConvArgs,
};
use trellis2::ops::submanifold_conv3d;
use trellis2::sparse::SparseTensor;

/// Elements after every output that the kernel must leave alone.
const GUARD: usize = 16;

/// A plan's dispatch for the emulator: its arguments at buffer(0), host buffers `0..buffers` at
/// buffer(1..), and its threadgroup memory (if any) at threadgroup(0).
fn emu_dispatch<A: KernelArgs>(
    d: &trellis2::ops::metal::dispatch::Dispatch<A>,
    buffers: u32,
) -> EmuDispatch {
    EmuDispatch {
        kernel: d.kernel.clone(),
        threadgroups: d.threadgroups,
        threads: d.threads,
        slots: std::iter::once((0, Slot::args(&d.args)))
            .chain((0..buffers).map(|i| (i + 1, Slot::Buffer(i))))
            .collect(),
        threadgroup_memory: match d.threadgroup_memory {
            0 => vec![],
            bytes => vec![bytes as u64],
        },
    }
}

/// Deterministic uniform values in [-1, 1).
fn lcg(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn bytes_of(t: &Tensor) -> Vec<u8> {
    let t = t.flatten_all().unwrap();
    match t.dtype() {
        DType::F32 => t
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::F16 => t
            .to_vec1::<half::f16>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::BF16 => t
            .to_vec1::<half::bf16>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::U32 => t
            .to_vec1::<u32>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        d => panic!("no byte view for {d:?}"),
    }
}

fn floats_of(bytes: &[u8], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F32 => bytes
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        DType::F16 => bytes
            .chunks(2)
            .map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f32())
            .collect(),
        DType::BF16 => bytes
            .chunks(2)
            .map(|c| half::bf16::from_le_bytes(c.try_into().unwrap()).to_f32())
            .collect(),
        d => panic!("no float view for {d:?}"),
    }
}

/// An output buffer of `n` elements plus the guard, all NaN bytes.
fn poisoned(n: usize, dtype: DType) -> Vec<u8> {
    vec![0xff; (n + GUARD) * dtype.size_in_bytes()]
}

/// Splits the emulator's output into the `n` written values, checking that every one was
/// written (no NaN left) and that the guard is untouched.
fn written(bytes: &[u8], n: usize, dtype: DType, case: &str) -> Vec<f32> {
    let all = floats_of(bytes, dtype);
    if let Some(i) = all[..n].iter().position(|v| v.is_nan()) {
        panic!("{case}: output element {i} of {n} never written (or NaN)");
    }
    assert!(
        bytes[n * dtype.size_in_bytes()..]
            .iter()
            .all(|&b| b == 0xff),
        "{case}: kernel wrote past the end of its output"
    );
    all[..n].to_vec()
}

/// max|err| / max|ref| (plain max|err| when the reference is all zeros).
fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let err = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let scale = want.iter().map(|v| v.abs()).fold(0f32, f32::max);
    if scale > 0.0 {
        err / scale
    } else {
        err
    }
}

/// Tolerance per dtype: the output rounding of the dtype plus float accumulation-order noise.
fn tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::F32 => 1e-5,
        DType::F16 => 1e-3,
        _ => 8e-3,
    }
}

// ---------------------------------------------------------------------------- sparse conv

fn shell(b: i32, r: f32, centre: i32) -> Vec<[i32; 4]> {
    let mut v = Vec::new();
    for x in 0..2 * centre {
        for y in 0..2 * centre {
            for z in 0..2 * centre {
                let d = [x, y, z].map(|c| (c - centre) as f32 + 0.5);
                if ((d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt() - r).abs() < 0.9 {
                    v.push([b, x, y, z]);
                }
            }
        }
    }
    v
}

struct ConvCase {
    name: &'static str,
    voxels: fn() -> Vec<[i32; 4]>,
    ci: usize,
    co: usize,
    /// Dispatch budget; small values force the watchdog split.
    max_macs: u64,
    dtypes: &'static [DType],
}

const ALL: &[DType] = &[DType::F32, DType::F16, DType::BF16];

const CONV_CASES: &[ConvCase] = &[
    ConvCase {
        name: "empty",
        voxels: Vec::new,
        ci: 4,
        co: 3,
        max_macs: MAX_MACS_PER_DISPATCH,
        dtypes: ALL,
    },
    ConvCase {
        name: "one voxel",
        voxels: || vec![[0, 5, 5, 5]],
        ci: 5,
        co: 7,
        max_macs: MAX_MACS_PER_DISPATCH,
        dtypes: ALL,
    },
    ConvCase {
        name: "isolated voxels (only the centre tap)",
        voxels: || {
            (0..70)
                .map(|i| [0, 3 * (i % 4), 3 * (i / 4 % 5), 3 * (i / 20)])
                .collect()
        },
        ci: 3,
        co: 2,
        max_macs: MAX_MACS_PER_DISPATCH,
        dtypes: &[DType::F32],
    },
    ConvCase {
        name: "two shells, Ci 37 Co 70 (ragged K, 2 Co tiles), split per tile",
        voxels: || {
            let mut v = shell(0, 3.0, 4);
            v.extend(shell(1, 2.0, 3));
            v
        },
        ci: 37,
        co: 70,
        max_macs: 1,
        dtypes: ALL,
    },
    ConvCase {
        name: "dense 5^3 cube, 1 channel in and out",
        voxels: || (0..125).map(|i| [0, i / 25, i / 5 % 5, i % 5]).collect(),
        ci: 1,
        co: 1,
        max_macs: MAX_MACS_PER_DISPATCH,
        dtypes: &[DType::F32],
    },
];

/// Runs the planned sparse-conv dispatches in the emulator; returns `[n, co]` as f32.
fn emulate_conv(
    emu: &Emulator,
    feats: &Tensor,
    map: &Tensor,
    weight: &Tensor,
    max_macs: u64,
    case: &str,
) -> Result<Vec<f32>, String> {
    let (n, ci) = feats.dims2().unwrap();
    let co = weight.dim(0).unwrap();
    let dtype = feats.dtype();
    let plan = sparse_conv_dispatches(n, ci, co, dtype, max_macs).unwrap();
    let buffers = vec![
        bytes_of(feats),
        bytes_of(weight),
        bytes_of(map),
        poisoned(n * co, dtype),
    ];
    let dispatches: Vec<EmuDispatch> = plan.iter().map(|d| emu_dispatch(d, 4)).collect();
    let out = emu.run(&buffers, &dispatches)?;
    Ok(written(&out[3], n * co, dtype, case))
}

struct ConvInputs {
    feats: Tensor,
    map: Tensor,
    weight: Tensor,
}

fn conv_inputs(case: &ConvCase, seed: u64, dtype: DType) -> ConvInputs {
    let dev = Device::Cpu;
    let rows = (case.voxels)();
    let n = rows.len();
    let coords = Tensor::from_vec(
        rows.iter().flatten().copied().collect::<Vec<i32>>(),
        (n, 4),
        &dev,
    )
    .unwrap();
    let feats = Tensor::from_vec(lcg(seed, n * case.ci), (n, case.ci), &dev).unwrap();
    let x = SparseTensor::new(&coords, feats).unwrap();
    let map = x.neighbour_map().unwrap().tensor().clone();
    let weight = Tensor::from_vec(
        lcg(seed + 1, case.co * 27 * case.ci),
        (case.co, 27, case.ci),
        &dev,
    )
    .unwrap();
    ConvInputs {
        feats: x.feats().to_dtype(dtype).unwrap(),
        map,
        weight: weight.to_dtype(dtype).unwrap(),
    }
}

#[test]
fn sparse_conv_kernel_matches_the_cpu_op() {
    let emu = Emulator::get("sparse_conv");
    for (i, case) in CONV_CASES.iter().enumerate() {
        for &dtype in case.dtypes {
            let inp = conv_inputs(case, 10 * i as u64, dtype);
            let label = format!("{} [{dtype:?}]", case.name);
            let got = emulate_conv(
                &emu,
                &inp.feats,
                &inp.map,
                &inp.weight,
                case.max_macs,
                &label,
            )
            .unwrap_or_else(|e| panic!("{label}: {e}"));
            // Reference on the same (rounded) inputs, in f32.
            let f32c = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let want = submanifold_conv3d(&f32c(&inp.feats), &inp.map, &f32c(&inp.weight), None)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let rel = rel_err(&got, &want);
            let n = inp.feats.dim(0).unwrap();
            let dispatches = sparse_conv_dispatches(n, case.ci, case.co, dtype, case.max_macs)
                .unwrap()
                .len();
            println!(
                "sparse_conv {label:<70} voxels {n:>4} Ci {:>3} Co {:>3} dispatches {dispatches:>2} \
                 max|err|/max|ref| {rel:.2e}",
                case.ci, case.co
            );
            assert!(
                rel <= tolerance(dtype),
                "{label}: {rel:e} > {:e}",
                tolerance(dtype)
            );
        }
    }
}

// ---------------------------------------------------------------------------- attention

struct AttnCase {
    name: &'static str,
    q_lens: &'static [usize],
    /// `None`: self-attention (k/v lengths = q lengths).
    kv_lens: Option<&'static [usize]>,
    heads: usize,
    head_dim: usize,
    max_macs: u64,
    dtypes: &'static [DType],
}

const ATTN_CASES: &[AttnCase] = &[
    AttnCase {
        name: "single token",
        q_lens: &[1],
        kv_lens: None,
        heads: 1,
        head_dim: 128,
        max_macs: MAX_MACS_PER_DISPATCH,
        dtypes: ALL,
    },
    AttnCase {
        name: "63, 64, 65 and an empty sequence, tile-sized split",
        q_lens: &[63, 0, 64, 65],
        kv_lens: None,
        heads: 2,
        head_dim: 64,
        max_macs: 1,
        dtypes: ALL,
    },
    AttnCase {
        name: "63, 64, 65 and an empty sequence, head dim 128",
        q_lens: &[63, 0, 64, 65],
        kv_lens: None,
        heads: 1,
        head_dim: 128,
        max_macs: MAX_MACS_PER_DISPATCH,
        dtypes: ALL,
    },
    AttnCase {
        name: "cross-attention to 1029 image tokens (DINOv3 @512)",
        q_lens: &[40, 33],
        kv_lens: Some(&[1029, 1029]),
        heads: 2,
        head_dim: 128,
        max_macs: MAX_MACS_PER_DISPATCH,
        dtypes: &[DType::F32, DType::BF16],
    },
    AttnCase {
        name: "self-attention over 1029 tokens (ragged last query and key tiles)",
        q_lens: &[1029],
        kv_lens: None,
        heads: 1,
        head_dim: 128,
        max_macs: MAX_MACS_PER_DISPATCH,
        dtypes: &[DType::F32],
    },
    AttnCase {
        name: "self-attention over 4101 tokens (DINOv3 @1024 length)",
        q_lens: &[4101],
        kv_lens: None,
        heads: 1,
        head_dim: 64,
        max_macs: MAX_MACS_PER_DISPATCH,
        dtypes: &[DType::F16],
    },
    AttnCase {
        name: "long self-attention, 300 tokens",
        q_lens: &[300],
        kv_lens: None,
        heads: 1,
        head_dim: 64,
        max_macs: MAX_MACS_PER_DISPATCH,
        dtypes: &[DType::F16],
    },
];

fn offsets(lens: &[usize]) -> Vec<usize> {
    let mut o = vec![0];
    for l in lens {
        o.push(o.last().unwrap() + l);
    }
    o
}

#[allow(clippy::too_many_arguments)]
fn emulate_attention(
    emu: &Emulator,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    q_off: &[usize],
    kv_off: &[usize],
    scale: f32,
    max_macs: u64,
    case: &str,
) -> Result<Vec<f32>, String> {
    let (nq, heads, d) = q.dims3().unwrap();
    let dtype = q.dtype();
    let tiles = attention_tiles(q_off).unwrap();
    let plan = attention_dispatches(&tiles, kv_off, heads, d, dtype, scale, max_macs).unwrap();
    let u32_bytes =
        |v: &[usize]| -> Vec<u8> { v.iter().flat_map(|&x| (x as u32).to_le_bytes()).collect() };
    let buffers = vec![
        bytes_of(q),
        bytes_of(k),
        bytes_of(v),
        u32_bytes(q_off),
        u32_bytes(kv_off),
        tiles
            .iter()
            .flatten()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        poisoned(nq * heads * d, dtype),
    ];
    let dispatches: Vec<EmuDispatch> = plan
        .iter()
        .map(|p| EmuDispatch {
            kernel: p.kernel.clone(),
            threadgroups: p.threadgroups,
            threads: p.threads,
            slots: std::iter::once((0, Slot::args(&p.args)))
                .chain((0..7).map(|i| (i + 1, Slot::Buffer(i))))
                .collect(),
            threadgroup_memory: vec![p.threadgroup_memory as u64],
        })
        .collect();
    let out = emu.run(&buffers, &dispatches)?;
    Ok(written(&out[6], nq * heads * d, dtype, case))
}

#[test]
fn attention_kernel_matches_the_cpu_op() {
    let emu = Emulator::get("attention");
    let dev = Device::Cpu;
    for (i, case) in ATTN_CASES.iter().enumerate() {
        let q_off = offsets(case.q_lens);
        let kv_off = offsets(case.kv_lens.unwrap_or(case.q_lens));
        let (nq, nk) = (*q_off.last().unwrap(), *kv_off.last().unwrap());
        let (h, d) = (case.heads, case.head_dim);
        let scale = 1.0 / (d as f32).sqrt();
        for &dtype in case.dtypes {
            // Scaled up so the softmax is peaked, not flat: exercises the running max.
            let make = |seed: u64, n: usize| {
                (Tensor::from_vec(lcg(seed, n * h * d), (n, h, d), &dev).unwrap() * 3.0)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
            };
            let seed = 100 * i as u64;
            let (q, k, v) = (make(seed, nq), make(seed + 1, nk), make(seed + 2, nk));
            let label = format!("{} [{dtype:?}, d {d}]", case.name);
            let got = emulate_attention(
                &emu,
                &q,
                &k,
                &v,
                &q_off,
                &kv_off,
                scale,
                case.max_macs,
                &label,
            )
            .unwrap_or_else(|e| panic!("{label}: {e}"));
            let f32c = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let want = varlen_attention(&f32c(&q), &f32c(&k), &f32c(&v), &q_off, &kv_off, scale)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let rel = rel_err(&got, &want);
            let tiles = attention_tiles(&q_off).unwrap();
            let dispatches =
                attention_dispatches(&tiles, &kv_off, h, d, dtype, scale, case.max_macs)
                    .unwrap()
                    .len();
            println!(
                "attention {label:<70} q {nq:>4} kv {nk:>4} heads {h} dispatches {dispatches:>2} \
                 max|err|/max|ref| {rel:.2e}",
            );
            assert!(
                rel <= tolerance(dtype),
                "{label}: {rel:e} > {:e}",
                tolerance(dtype)
            );
        }
    }
}

// ---------------------------------------------------------------------------- neighbour map

struct MapCase {
    name: &'static str,
    voxels: fn() -> Vec<[i32; 4]>,
}

fn dense_block(b: i32, side: i32, at: i32) -> Vec<[i32; 4]> {
    let mut v = Vec::new();
    for x in 0..side {
        for y in 0..side {
            for z in 0..side {
                v.push([b, at + x, at + y, at + z]);
            }
        }
    }
    v
}

const MAP_CASES: &[MapCase] = &[
    MapCase {
        name: "empty",
        voxels: Vec::new,
    },
    MapCase {
        name: "one voxel at the origin",
        voxels: || vec![[0, 0, 0, 0]],
    },
    MapCase {
        name: "isolated voxels",
        voxels: || {
            (0..70)
                .map(|i| [0, 3 * (i % 4), 3 * (i / 4 % 5), 3 * (i / 20)])
                .collect()
        },
    },
    MapCase {
        name: "dense 20^3 block (63 threadgroups race on one table)",
        voxels: || dense_block(0, 20, 1),
    },
    MapCase {
        name: "random shells in 3 batches, same positions across batches",
        voxels: || {
            let mut v = shell(0, 3.0, 4);
            v.extend(shell(1, 3.0, 4));
            v.extend(shell(2, 5.5, 7));
            v
        },
    },
    MapCase {
        name: "random scatter up to 1023 (10-bit axes) in 2 batches",
        voxels: || {
            let mut v = Vec::new();
            for b in 0..2 {
                let mut seen = std::collections::HashSet::new();
                for (i, c) in lcg(b as u64 + 7, 3 * 3000).chunks(3).enumerate() {
                    let p = [c[0], c[1], c[2]].map(|x| ((x + 1.0) * 511.75) as i32 % 1024);
                    // Every other point inside a 16³ corner: clusters with real neighbours.
                    let p = if i % 2 == 0 { p.map(|x| x % 16) } else { p };
                    if seen.insert(p) {
                        v.push([b, p[0], p[1], p[2]]);
                    }
                }
                v.push([b, 1023, 1023, 1023]);
                v.push([b, 1023, 1023, 1022]);
            }
            let mut seen = std::collections::HashSet::new();
            v.retain(|r| seen.insert(*r));
            v
        },
    },
];

/// Runs the planned neighbour-map dispatches; returns the map buffer and the two status words.
fn emulate_map(emu: &Emulator, rows: &[[i32; 4]], case: &str) -> (Vec<u32>, [u32; 2]) {
    use trellis2::ops::metal::neighbour_plan::neighbour_plan;
    let plan = neighbour_plan(rows).unwrap().expect("keys fit 31 bits");
    let n = rows.len();
    let words = |b: &[u8]| -> Vec<u32> {
        b.chunks(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let buffers = vec![
        rows.iter()
            .flatten()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        vec![0xab; plan.capacity * 4],
        vec![0xab; plan.capacity * 4],
        vec![0xab; (n * 27 + GUARD) * 4],
        vec![0xab; 8],
    ];
    // Buffer ids per kernel argument slot 1.., as the host binds them.
    let slots: &[&[u32]] = &[&[1, 4], &[0, 1, 2, 4], &[0, 1, 2, 3, 4]];
    let dispatches: Vec<EmuDispatch> = plan
        .dispatches
        .iter()
        .zip(slots)
        .map(|(d, ids)| EmuDispatch {
            kernel: d.kernel.clone(),
            threadgroups: d.threadgroups,
            threads: d.threads,
            slots: std::iter::once((0, Slot::args(&d.args)))
                .chain(
                    ids.iter()
                        .enumerate()
                        .map(|(i, &b)| (i as u32 + 1, Slot::Buffer(b))),
                )
                .collect(),
            threadgroup_memory: vec![],
        })
        .collect();
    let out = emu
        .run(&buffers, &dispatches)
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    let map = words(&out[3]);
    assert!(
        map[n * 27..].iter().all(|&w| w == 0xabab_abab),
        "{case}: kernel wrote past the end of the map"
    );
    let status = words(&out[4]);
    (map[..n * 27].to_vec(), [status[0], status[1]])
}

#[test]
fn neighbour_map_kernels_equal_the_cpu_map() {
    use trellis2::ops::metal::neighbour_plan::neighbour_plan;
    use trellis2::sparse::neighbours_gpu::neighbour_op_output;
    let emu = Emulator::get("neighbour_map");
    for case in MAP_CASES {
        let rows = (case.voxels)();
        let n = rows.len();
        let flat: Vec<i32> = rows.iter().flatten().copied().collect();
        let coords = Tensor::from_vec(flat, (n, 4), &Device::Cpu).unwrap();
        let want = neighbour_op_output(&coords)
            .unwrap()
            .to_vec1::<u32>()
            .unwrap();
        if neighbour_plan(&rows)
            .unwrap()
            .unwrap()
            .dispatches
            .is_empty()
        {
            assert_eq!(n, 0, "{}", case.name);
            println!("neighbour_map {:<60} voxels {n:>5}: no dispatch", case.name);
            continue;
        }
        let start = std::time::Instant::now();
        let (map, status) = emulate_map(&emu, &rows, case.name);
        let pairs = want[n * 27 + 1];
        if let Some(i) = (0..n * 27).find(|&i| map[i] != want[i]) {
            panic!(
                "{}: entry {i} (voxel {:?}, tap {}) = {:#x}, CPU {:#x}",
                case.name,
                rows[i / 27],
                i % 27,
                map[i],
                want[i]
            );
        }
        assert_eq!(status, [u32::MAX, pairs], "{}: status words", case.name);
        println!(
            "neighbour_map {:<60} voxels {n:>5} pairs {pairs:>6}: equal ({:.2} s)",
            case.name,
            start.elapsed().as_secs_f64()
        );
    }
}

#[test]
fn neighbour_map_kernels_report_a_duplicate_voxel() {
    let emu = Emulator::get("neighbour_map");
    let mut rows = dense_block(0, 6, 0);
    rows.push([0, 2, 3, 4]);
    rows.push([1, 2, 3, 4]); // same position, other batch: not a duplicate
                             // The two copies (rows 94 and 216) sit in different threadgroups, which race for real in
                             // the emulator as on a GPU: either may lose the compare-and-swap and be reported.
    let first: u32 = 2 * 36 + 3 * 6 + 4;
    for _ in 0..4 {
        let (_, status) = emulate_map(&emu, &rows, "duplicate");
        assert!(
            status[0] == first || status[0] == 6 * 6 * 6,
            "reported row {} is not a copy",
            status[0]
        );
    }
}

// ---------------------------------------------------------------------------- fused DiT norms

/// Runs one planned norms.metal dispatch over `buffers` (the last one the output).
fn emulate_norm<A: KernelArgs>(
    emu: &Emulator,
    plan: &trellis2::ops::metal::dispatch::Dispatch<A>,
    mut buffers: Vec<Vec<u8>>,
    n_out: usize,
    dtype: DType,
    case: &str,
) -> Vec<f32> {
    buffers.push(poisoned(n_out, dtype));
    let last = buffers.len() as u32 - 1;
    let d = EmuDispatch {
        kernel: plan.kernel.clone(),
        threadgroups: plan.threadgroups,
        threads: plan.threads,
        slots: std::iter::once((0, Slot::args(&plan.args)))
            .chain((0..=last).map(|i| (i + 1, Slot::Buffer(i))))
            .collect(),
        threadgroup_memory: vec![],
    };
    let out = emu
        .run(&buffers, &[d])
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    written(&out[last as usize], n_out, dtype, case)
}

fn rand_tensor(seed: u64, shape: &[usize], scale: f64, offset: f64) -> Tensor {
    let n = shape.iter().product();
    ((Tensor::from_vec(lcg(seed, n), shape, &Device::Cpu).unwrap() * scale).unwrap() + offset)
        .unwrap()
}

#[test]
fn layer_norm_modulate_kernel_matches_the_cpu_op() {
    use trellis2::ops::metal::norms_plan::norm_modulate_dispatch;
    use trellis2::ops::norm_modulate::{layer_norm_modulate, Modulation};
    let emu = Emulator::get("norms");
    let u32_bytes =
        |v: &[usize]| -> Vec<u8> { v.iter().flat_map(|&x| (x as u32).to_le_bytes()).collect() };
    for (c, offsets) in [
        (1536usize, vec![0usize, 20, 20, 37]),
        (100, vec![0, 9]),
        (3, vec![0, 5, 6]),
    ] {
        let (t, b) = (offsets[offsets.len() - 1], offsets.len() - 1);
        let shift = rand_tensor(2, &[b, c], 1.0, 0.0);
        let scale = rand_tensor(3, &[b, c], 0.5, 0.0);
        let w = rand_tensor(4, &[c], 1.0, 1.0);
        let bias = rand_tensor(5, &[c], 1.0, 0.0);
        let modulation = Tensor::stack(&[&shift, &scale], 1).unwrap();
        let affine = Tensor::stack(&[&w, &bias], 0).unwrap();
        for dtype in ALL {
            // A row mean of 3: the two-pass variance matters.
            let x = rand_tensor(1, &[t, c], 1.0, 3.0).to_dtype(*dtype).unwrap();
            let label = format!("layer_norm_modulate C {c} offsets {offsets:?} [{dtype:?}]");
            let plan = norm_modulate_dispatch(t, c, b, 1e-6, *dtype)
                .unwrap()
                .unwrap();
            let got = emulate_norm(
                &emu,
                &plan,
                vec![
                    bytes_of(&x),
                    bytes_of(&affine),
                    bytes_of(&modulation),
                    u32_bytes(&offsets),
                ],
                t * c,
                *dtype,
                &label,
            );
            let m = Modulation {
                shift: &shift,
                scale: &scale,
                offsets: &offsets,
            };
            let want = layer_norm_modulate(
                &x.to_dtype(DType::F32).unwrap(),
                Some((&w, &bias)),
                &m,
                1e-6,
            )
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
            let rel = rel_err(&got, &want);
            println!("{label:<70} max|err|/max|ref| {rel:.2e}");
            assert!(rel <= tolerance(*dtype), "{label}: {rel:e}");
        }
    }
}

#[test]
fn rms_norm_rope_kernel_matches_the_cpu_op() {
    use trellis2::ops::metal::norms_plan::rms_rope_dispatch;
    use trellis2::ops::rms_norm_rope::{rms_norm_rope, rope_table};
    use trellis2::ops::rope::rope_tables_3d;
    let emu = Emulator::get("norms");
    for (t, h, d, normalize) in [
        (45usize, 3usize, 64usize, true),
        (13, 2, 128, true),
        (9, 1, 10, false),
        (7, 2, 6, true),
    ] {
        let xyz: Vec<[i32; 3]> = (0..t as i32).map(|i| [i % 4, i / 4 % 5, 3 * i]).collect();
        let (cos, sin) = rope_tables_3d(&xyz, d, 10000.0, &Device::Cpu).unwrap();
        let table = rope_table(&cos, &sin).unwrap();
        let gamma = rand_tensor(8, &[h, d], 0.5, 1.0);
        for dtype in ALL {
            let x = rand_tensor(9, &[t, h, d], 2.0, 0.0)
                .to_dtype(*dtype)
                .unwrap();
            let label = format!("rms_norm_rope T {t} H {h} D {d} norm {normalize} [{dtype:?}]");
            let plan = rms_rope_dispatch(t, h, d, normalize, t, *dtype)
                .unwrap()
                .unwrap();
            let ones = Tensor::ones((h, d), DType::F32, &Device::Cpu).unwrap();
            let g = if normalize { &gamma } else { &ones };
            let got = emulate_norm(
                &emu,
                &plan,
                vec![bytes_of(&x), bytes_of(g), bytes_of(&table)],
                t * h * d,
                *dtype,
                &label,
            );
            let want = rms_norm_rope(
                &x.to_dtype(DType::F32).unwrap(),
                normalize.then_some(&gamma),
                &table,
            )
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
            let rel = rel_err(&got, &want);
            println!("{label:<70} max|err|/max|ref| {rel:.2e}");
            assert!(rel <= tolerance(*dtype), "{label}: {rel:e}");
        }
    }
}

#[test]
fn rms_norm_rope_kernel_takes_a_one_row_table() {
    use trellis2::ops::metal::norms_plan::rms_rope_dispatch;
    use trellis2::ops::rms_norm_rope::rms_norm_rope;
    let emu = Emulator::get("norms");
    let dev = Device::Cpu;
    for (t, h, d, normalize, identity) in [
        (37usize, 3usize, 64usize, true, true),
        (11, 2, 128, true, false),
        (9, 1, 10, false, false),
        (1, 2, 6, true, false),
    ] {
        // One rotation for every token: the identity (a plain multi-head RMS norm) or random
        // angles.
        let angles: Vec<f32> = lcg(31, d / 2).iter().map(|a| 3.0 * a).collect();
        let (cos, sin): (Vec<f32>, Vec<f32>) = if identity {
            (vec![1.0; d / 2], vec![0.0; d / 2])
        } else {
            angles.iter().map(|a| (a.cos(), a.sin())).unzip()
        };
        let table = Tensor::stack(
            &[
                Tensor::from_vec(cos, (1, d / 2), &dev).unwrap(),
                Tensor::from_vec(sin, (1, d / 2), &dev).unwrap(),
            ],
            2,
        )
        .unwrap();
        let gamma = rand_tensor(18, &[h, d], 0.5, 1.0);
        let ones = Tensor::ones((h, d), DType::F32, &dev).unwrap();
        for dtype in ALL {
            let x = rand_tensor(19, &[t, h, d], 2.0, 0.0)
                .to_dtype(*dtype)
                .unwrap();
            let label = format!(
                "rms_norm_rope 1-row table T {t} H {h} D {d} norm {normalize} identity \
                 {identity} [{dtype:?}]"
            );
            let plan = rms_rope_dispatch(t, h, d, normalize, 1, *dtype)
                .unwrap()
                .unwrap();
            assert_eq!(plan.args.table_rows, 1);
            let g = if normalize { &gamma } else { &ones };
            let got = emulate_norm(
                &emu,
                &plan,
                vec![bytes_of(&x), bytes_of(g), bytes_of(&table)],
                t * h * d,
                *dtype,
                &label,
            );
            let want = rms_norm_rope(
                &x.to_dtype(DType::F32).unwrap(),
                normalize.then_some(&gamma),
                &table,
            )
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
            let rel = rel_err(&got, &want);
            println!("{label:<90} max|err|/max|ref| {rel:.2e}");
            assert!(rel <= tolerance(*dtype), "{label}: {rel:e}");
        }
    }
    assert!(rms_rope_dispatch(5, 1, 8, true, 2, DType::F32).is_err());
}

// ---------------------------------------------------------------------------- fused epilogues

/// Tolerance of the elementwise kernels: the same f32 arithmetic as the CPU op, then one
/// rounding to the dtype.
fn elementwise_tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::F32 => 1e-6,
        DType::F16 => 1e-3,
        _ => 8e-3,
    }
}

/// An operand bound `pad` elements into its buffer (a view starting mid-buffer); the padding is
/// NaN bytes, so a kernel reading before the view's start poisons its output.
fn view_of(t: &Tensor, pad: usize) -> (Vec<u8>, u64) {
    let size = t.dtype().size_in_bytes();
    let mut bytes = vec![0xff; pad * size];
    bytes.extend(bytes_of(t));
    (bytes, (pad * size) as u64)
}

/// Runs one planned elementwise.metal dispatch over `inputs` (buffer, byte offset) and a fresh
/// output of `n_out` elements bound last.
fn emulate_views<A: KernelArgs>(
    emu: &Emulator,
    plan: &trellis2::ops::metal::dispatch::Dispatch<A>,
    inputs: Vec<(Vec<u8>, u64)>,
    n_out: usize,
    dtype: DType,
    case: &str,
) -> Vec<f32> {
    let mut slots = vec![(0, Slot::args(&plan.args))];
    let mut buffers = Vec::new();
    for (i, (bytes, offset)) in inputs.into_iter().enumerate() {
        slots.push((i as u32 + 1, Slot::BufferAt(i as u32, offset)));
        buffers.push(bytes);
    }
    let out = buffers.len() as u32;
    buffers.push(poisoned(n_out, dtype));
    slots.push((out + 1, Slot::Buffer(out)));
    let d = EmuDispatch {
        kernel: plan.kernel.clone(),
        threadgroups: plan.threadgroups,
        threads: plan.threads,
        slots,
        threadgroup_memory: vec![],
    };
    let res = emu
        .run(&buffers, &[d])
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    written(&res[out as usize], n_out, dtype, case)
}

#[test]
fn bias_act_kernels_match_the_cpu_op() {
    use trellis2::ops::bias_act::{bias_act, Activation};
    use trellis2::ops::metal::elementwise_plan::{bias_act_dispatch, vectorizable};
    let emu = Emulator::get("elementwise");
    // (C, T, x's start and bias's start in elements): starts that are not multiples of 4 force
    // the scalar kernel even where C allows vectors.
    let cases: &[(usize, usize, usize, usize)] = &[
        (1536, 0, 0, 0),
        (1536, 1, 4, 0),
        (1536, 203, 0, 0),
        (1536, 203, 3, 0),
        (8192, 1, 0, 0),
        (8192, 203, 8, 4),
        (13, 0, 0, 0),
        (13, 1, 0, 0),
        (13, 203, 5, 2),
    ];
    let mut worst = [0f32; 3];
    for (i, &(c, t, x_pad, b_pad)) in cases.iter().enumerate() {
        let seed = 300 + 10 * i as u64;
        // x in ±6: GELU's and SiLU's curved range and their tails.
        let x32 = rand_tensor(seed, &[t, c], 6.0, 0.0);
        let bias = rand_tensor(seed + 1, &[c], 1.0, 0.0);
        let vec4 = vectorizable(c, &[x_pad, b_pad]);
        for act in [
            Activation::None,
            Activation::GeluTanh,
            Activation::Silu,
            Activation::GeluErf,
        ] {
            for (di, dtype) in ALL.iter().enumerate() {
                let x = x32.to_dtype(*dtype).unwrap();
                let label = format!(
                    "bias_act {act:?} T {t} C {c} x@{x_pad} bias@{b_pad} vec4 {vec4} [{dtype:?}]"
                );
                let Some(plan) = bias_act_dispatch(t, c, act, *dtype, vec4).unwrap() else {
                    assert_eq!(t * c, 0, "{label}: no dispatch");
                    println!("{label:<80} no dispatch (empty)");
                    continue;
                };
                let got = emulate_views(
                    &emu,
                    &plan,
                    vec![view_of(&x, x_pad), view_of(&bias, b_pad)],
                    t * c,
                    *dtype,
                    &label,
                );
                let want = bias_act(&x.to_dtype(DType::F32).unwrap(), &bias, act)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let rel = rel_err(&got, &want);
                worst[di] = worst[di].max(rel);
                println!("{label:<80} {} max|err|/max|ref| {rel:.2e}", plan.kernel);
                assert!(rel <= elementwise_tolerance(*dtype), "{label}: {rel:e}");
            }
        }
    }
    println!(
        "bias_act worst: f32 {:.2e} f16 {:.2e} bf16 {:.2e}",
        worst[0], worst[1], worst[2]
    );
}

#[test]
fn gated_residual_kernels_match_the_cpu_op() {
    use trellis2::ops::gated_residual::gated_residual;
    use trellis2::ops::metal::elementwise_plan::{gated_residual_dispatch, vectorizable};
    let emu = Emulator::get("elementwise");
    let u32_bytes =
        |v: &[usize]| -> Vec<u8> { v.iter().flat_map(|&x| (x as u32).to_le_bytes()).collect() };
    // (C, offsets, starts of x, r and gate in elements).
    let cases: Vec<(usize, Vec<usize>, [usize; 3])> = vec![
        (1536, vec![0, 20, 20, 37], [0, 0, 0]),
        (1536, vec![0, 20, 20, 37], [4, 8, 4]),
        (1536, vec![0, 0, 9], [0, 1, 0]),
        (8192, vec![0, 3, 5, 5], [0, 0, 0]),
        (13, vec![0, 5, 5, 9], [0, 0, 0]),
        (13, vec![0, 0, 7, 12], [3, 2, 1]),
        (8, vec![0, 1], [0, 0, 0]),
        (1536, vec![0, 0], [0, 0, 0]),
    ];
    let mut worst = [0f32; 3];
    for (i, (c, offsets, [x_pad, r_pad, g_pad])) in cases.into_iter().enumerate() {
        let (t, b) = (offsets[offsets.len() - 1], offsets.len() - 1);
        let seed = 400 + 10 * i as u64;
        let x32 = rand_tensor(seed, &[t, c], 2.0, 0.0);
        let r32 = rand_tensor(seed + 1, &[t, c], 2.0, 0.0);
        let gate = rand_tensor(seed + 2, &[b, c], 1.0, 0.0);
        let vec4 = vectorizable(c, &[x_pad, r_pad, g_pad]);
        for (di, dtype) in ALL.iter().enumerate() {
            let (x, r) = (x32.to_dtype(*dtype).unwrap(), r32.to_dtype(*dtype).unwrap());
            let label = format!(
                "gated_residual C {c} offsets {offsets:?} starts {:?} vec4 {vec4} [{dtype:?}]",
                [x_pad, r_pad, g_pad]
            );
            let Some(plan) = gated_residual_dispatch(t, c, b, *dtype, vec4).unwrap() else {
                assert_eq!(t * c, 0, "{label}: no dispatch");
                println!("{label:<90} no dispatch (empty)");
                continue;
            };
            let got = emulate_views(
                &emu,
                &plan,
                vec![
                    view_of(&x, x_pad),
                    view_of(&r, r_pad),
                    view_of(&gate, g_pad),
                    (u32_bytes(&offsets), 0),
                ],
                t * c,
                *dtype,
                &label,
            );
            let f32c = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let want = gated_residual(&f32c(&x), &f32c(&r), &gate, &offsets)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let rel = rel_err(&got, &want);
            worst[di] = worst[di].max(rel);
            println!("{label:<90} {} max|err|/max|ref| {rel:.2e}", plan.kernel);
            assert!(rel <= elementwise_tolerance(*dtype), "{label}: {rel:e}");
        }
    }
    println!(
        "gated_residual worst: f32 {:.2e} f16 {:.2e} bf16 {:.2e}",
        worst[0], worst[1], worst[2]
    );
}

// ---------------------------------------------------------------------------- deformable conv

struct DeformCase {
    name: &'static str,
    /// `[B, C, H, W]`.
    input: [usize; 4],
    kernel: (usize, usize),
    offset_groups: usize,
    cfg: DeformConvConfig,
    /// Offsets are uniform in ±`offset_scale` pixels, plus `offset_shift`.
    offset_scale: f32,
    offset_shift: f32,
    /// `None`: every output row; else this band.
    rows: Option<std::ops::Range<usize>>,
    /// Dispatch budget in column elements; small values force the watchdog split.
    max_columns: u64,
}

const fn same(k: usize, stride: usize, dil: usize) -> DeformConvConfig {
    DeformConvConfig {
        stride: (stride, stride),
        padding: (k / 2 * dil, k / 2 * dil),
        dilation: (dil, dil),
    }
}

const DEFORM_CASES: &[DeformCase] = &[
    DeformCase {
        name: "k3, odd 9x11, offsets of a few pixels",
        input: [1, 5, 9, 11],
        kernel: (3, 3),
        offset_groups: 1,
        cfg: same(3, 1, 1),
        offset_scale: 3.0,
        offset_shift: 0.0,
        rows: None,
        max_columns: MAX_DEFORM_COLUMNS_PER_DISPATCH,
    },
    DeformCase {
        name: "k1, 6 channels",
        input: [1, 6, 6, 8],
        kernel: (1, 1),
        offset_groups: 1,
        cfg: same(1, 1, 1),
        offset_scale: 2.0,
        offset_shift: 0.0,
        rows: None,
        max_columns: MAX_DEFORM_COLUMNS_PER_DISPATCH,
    },
    DeformCase {
        name: "k7 pad 3, offsets far out of bounds (±40 px)",
        input: [1, 4, 7, 5],
        kernel: (7, 7),
        offset_groups: 1,
        cfg: same(7, 1, 1),
        offset_scale: 40.0,
        offset_shift: 0.0,
        rows: None,
        max_columns: MAX_DEFORM_COLUMNS_PER_DISPATCH,
    },
    DeformCase {
        name: "k3, offsets ~1e9 (never index memory)",
        input: [1, 2, 4, 4],
        kernel: (3, 3),
        offset_groups: 1,
        cfg: same(3, 1, 1),
        offset_scale: 1e9,
        offset_shift: 0.0,
        rows: None,
        max_columns: MAX_DEFORM_COLUMNS_PER_DISPATCH,
    },
    DeformCase {
        name: "1x1 image, k3 pad 1",
        input: [1, 3, 1, 1],
        kernel: (3, 3),
        offset_groups: 1,
        cfg: same(3, 1, 1),
        offset_scale: 1.0,
        offset_shift: 0.0,
        rows: None,
        max_columns: MAX_DEFORM_COLUMNS_PER_DISPATCH,
    },
    DeformCase {
        name: "1x1 image, k7 pad 3, half-pixel shift to the edges",
        input: [1, 2, 1, 1],
        kernel: (7, 7),
        offset_groups: 1,
        cfg: same(7, 1, 1),
        offset_scale: 0.0,
        offset_shift: 0.5,
        rows: None,
        max_columns: MAX_DEFORM_COLUMNS_PER_DISPATCH,
    },
    DeformCase {
        name: "integer offsets (floor ties, samples on -1 and H)",
        input: [1, 2, 5, 6],
        kernel: (3, 3),
        offset_groups: 1,
        cfg: same(3, 1, 1),
        offset_scale: 0.0,
        offset_shift: -1.0,
        rows: None,
        max_columns: MAX_DEFORM_COLUMNS_PER_DISPATCH,
    },
    DeformCase {
        name: "batch 2, 2 offset groups, C 130 (not a multiple of the 128 threads)",
        input: [2, 130, 3, 4],
        kernel: (3, 3),
        offset_groups: 2,
        cfg: same(3, 1, 1),
        offset_scale: 2.0,
        offset_shift: 0.0,
        rows: None,
        max_columns: MAX_DEFORM_COLUMNS_PER_DISPATCH,
    },
    DeformCase {
        name: "stride 2, dilation 2",
        input: [1, 3, 9, 10],
        kernel: (3, 3),
        offset_groups: 1,
        cfg: same(3, 2, 2),
        offset_scale: 2.0,
        offset_shift: 0.0,
        rows: None,
        max_columns: MAX_DEFORM_COLUMNS_PER_DISPATCH,
    },
    DeformCase {
        name: "band of rows 3..7, split into 200-element dispatches",
        input: [1, 5, 9, 11],
        kernel: (3, 3),
        offset_groups: 1,
        cfg: same(3, 1, 1),
        offset_scale: 3.0,
        offset_shift: 0.0,
        rows: Some(3..7),
        max_columns: 200,
    },
    DeformCase {
        name: "empty band",
        input: [1, 2, 4, 4],
        kernel: (3, 3),
        offset_groups: 1,
        cfg: same(3, 1, 1),
        offset_scale: 1.0,
        offset_shift: 0.0,
        rows: Some(2..2),
        max_columns: MAX_DEFORM_COLUMNS_PER_DISPATCH,
    },
];

/// Runs the planned im2col dispatches of `args` in the emulator; returns the columns.
fn emulate_deform(
    emu: &Emulator,
    tensors: [&Tensor; 3],
    args: DeformIm2ColArgs,
    max_columns: u64,
    case: &str,
) -> Result<(Vec<f32>, usize), String> {
    let plan = deform_im2col_dispatches(args, DType::F32, max_columns).unwrap();
    let n = args.columns() as usize;
    let mut buffers: Vec<Vec<u8>> = tensors.iter().map(|t| bytes_of(t)).collect();
    buffers.push(poisoned(n, DType::F32));
    let dispatches: Vec<EmuDispatch> = plan.iter().map(|d| emu_dispatch(d, 4)).collect();
    let out = emu.run(&buffers, &dispatches)?;
    Ok((written(&out[3], n, DType::F32, case), plan.len()))
}

#[test]
fn deform_im2col_kernel_matches_the_cpu_op() {
    let emu = Emulator::get("deform_conv");
    let dev = Device::Cpu;
    for (ci, case) in DEFORM_CASES.iter().enumerate() {
        let [b, c, h, w] = case.input;
        let (kh, kw) = case.kernel;
        let taps = kh * kw;
        let (sy, sx) = case.cfg.stride;
        let (py, px) = case.cfg.padding;
        let (dy, dx) = case.cfg.dilation;
        let oh = (h + 2 * py - (dy * (kh - 1) + 1)) / sy + 1;
        let ow = (w + 2 * px - (dx * (kw - 1) + 1)) / sx + 1;
        let g = case.offset_groups;
        let seed = 100 + 10 * ci as u64;
        let input = Tensor::from_vec(lcg(seed, b * c * h * w), (b, c, h, w), &dev).unwrap();
        let n_off = b * 2 * g * taps * oh * ow;
        let offset: Vec<f32> = lcg(seed + 1, n_off)
            .iter()
            .map(|v| v * case.offset_scale + case.offset_shift)
            .collect();
        let offset = Tensor::from_vec(offset, (b, 2 * g * taps, oh, ow), &dev).unwrap();
        // Modulation in [0, 2), like BiRefNet's 2·sigmoid.
        let mask: Vec<f32> = lcg(seed + 2, b * g * taps * oh * ow)
            .iter()
            .map(|v| v + 1.0)
            .collect();
        let mask = Tensor::from_vec(mask, (b, g * taps, oh, ow), &dev).unwrap();
        let rows = case.rows.clone().unwrap_or(0..oh);
        let want = modulated_im2col(&input, &offset, &mask, case.kernel, case.cfg, rows.clone())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let args =
            modulated_im2col_args(&input, &offset, &mask, case.kernel, case.cfg, rows).unwrap();
        let (got, dispatches) = emulate_deform(
            &emu,
            [&input, &offset, &mask],
            args,
            case.max_columns,
            case.name,
        )
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let rel = rel_err(&got, &want);
        println!(
            "deform_im2col {:<68} columns {:>6} dispatches {dispatches:>2} max|err| {err:.2e} \
             max|err|/max|ref| {rel:.2e}",
            case.name,
            want.len()
        );
        assert!(rel <= 1e-6, "{}: {rel:e}", case.name);
    }
}

// ---------------------------------------------------------------------------- harness checks

#[test]
fn kargs_layout_matches_the_header() {
    use std::mem::{offset_of, size_of};
    let want = format!(
        "SparseConvArgs size={} n_voxels={} ci={} co={} voxel_tile_base={}\n\
         AttentionArgs size={} heads={} tile_base={} n_tiles={} scale={}\n\
         DeformIm2ColArgs size={} batch=0 channels=4 height=8 width=12 kh=16 kw=20 out_h=24 \
         out_w=28 offset_groups=32 stride_y=36 stride_x=40 pad_y=44 pad_x=48 dil_y=52 dil_x=56 \
         row_start=60 rows=64 first=68 count=72\n\
         NeighbourArgs size={} n_voxels={} capacity_mask={} bits_x={} bits_y={} bits_z={}\n\
         NormModulateArgs size={} rows={} channels={} samples={} eps={}\n\
         RmsRopeArgs size={} rows={} heads={} head_dim={} normalize={} table_rows={}\n\
         BiasActArgs size={} count={} channels={} act={}\n\
         GatedResidualArgs size={} count={} channels={} samples={}\n",
        size_of::<SparseConvArgs>(),
        offset_of!(SparseConvArgs, n_voxels),
        offset_of!(SparseConvArgs, ci),
        offset_of!(SparseConvArgs, co),
        offset_of!(SparseConvArgs, voxel_tile_base),
        size_of::<AttentionArgs>(),
        offset_of!(AttentionArgs, heads),
        offset_of!(AttentionArgs, tile_base),
        offset_of!(AttentionArgs, n_tiles),
        offset_of!(AttentionArgs, scale),
        size_of::<DeformIm2ColArgs>(),
        size_of::<NeighbourArgs>(),
        offset_of!(NeighbourArgs, n_voxels),
        offset_of!(NeighbourArgs, capacity_mask),
        offset_of!(NeighbourArgs, bits_x),
        offset_of!(NeighbourArgs, bits_y),
        offset_of!(NeighbourArgs, bits_z),
        size_of::<NormModulateArgs>(),
        offset_of!(NormModulateArgs, rows),
        offset_of!(NormModulateArgs, channels),
        offset_of!(NormModulateArgs, samples),
        offset_of!(NormModulateArgs, eps),
        size_of::<RmsRopeArgs>(),
        offset_of!(RmsRopeArgs, rows),
        offset_of!(RmsRopeArgs, heads),
        offset_of!(RmsRopeArgs, head_dim),
        offset_of!(RmsRopeArgs, normalize),
        offset_of!(RmsRopeArgs, table_rows),
        size_of::<BiasActArgs>(),
        offset_of!(BiasActArgs, count),
        offset_of!(BiasActArgs, channels),
        offset_of!(BiasActArgs, act),
        size_of::<GatedResidualArgs>(),
        offset_of!(GatedResidualArgs, count),
        offset_of!(GatedResidualArgs, channels),
        offset_of!(GatedResidualArgs, samples),
    );
    // Every DeformIm2ColArgs field is a u32 in declaration order (pinned in the string above).
    assert_eq!(offset_of!(DeformIm2ColArgs, count), 72);
    assert_eq!(offset_of!(DeformIm2ColArgs, row_start), 60);
    assert_eq!(Emulator::get("sparse_conv").layout(), want);
    let args = SparseConvArgs {
        n_voxels: 1,
        ci: 2,
        co: 3,
        voxel_tile_base: 4,
    };
    assert_eq!(args.to_bytes().len(), size_of::<SparseConvArgs>());
}

#[test]
fn every_kernel_the_host_can_ask_for_is_instantiated() {
    use trellis2::ops::metal::dispatch::{
        attention_kernel, deform_im2col_kernel, sparse_conv_kernel,
    };
    let deform = Emulator::get("deform_conv").kernels();
    let name = deform_im2col_kernel(DType::F32).unwrap();
    assert!(
        deform.contains(&name),
        "{name} missing from deform_conv.metal: {deform:?}"
    );
    let map = Emulator::get("neighbour_map").kernels();
    let plan = trellis2::ops::metal::neighbour_plan::neighbour_plan(&[[0, 1, 2, 3]])
        .unwrap()
        .unwrap();
    for d in &plan.dispatches {
        assert!(map.contains(&d.kernel), "{} missing: {map:?}", d.kernel);
    }
    let norms = Emulator::get("norms").kernels();
    for dtype in ALL {
        use trellis2::ops::metal::norms_plan::{norm_modulate_dispatch, rms_rope_dispatch};
        let a = norm_modulate_dispatch(1, 8, 1, 1e-6, *dtype)
            .unwrap()
            .unwrap();
        let b = rms_rope_dispatch(1, 1, 8, true, 1, *dtype)
            .unwrap()
            .unwrap();
        for name in [a.kernel, b.kernel] {
            assert!(norms.contains(&name), "{name} missing: {norms:?}");
        }
    }
    let elementwise = Emulator::get("elementwise").kernels();
    for dtype in ALL {
        use trellis2::ops::bias_act::Activation;
        use trellis2::ops::metal::elementwise_plan::{bias_act_dispatch, gated_residual_dispatch};
        for vec4 in [false, true] {
            let a = bias_act_dispatch(1, 8, Activation::Silu, *dtype, vec4)
                .unwrap()
                .unwrap();
            let b = gated_residual_dispatch(1, 8, 1, *dtype, vec4)
                .unwrap()
                .unwrap();
            for name in [a.kernel, b.kernel] {
                assert!(
                    elementwise.contains(&name),
                    "{name} missing: {elementwise:?}"
                );
            }
        }
    }
    let conv = Emulator::get("sparse_conv").kernels();
    let attn = Emulator::get("attention").kernels();
    for dtype in ALL {
        let name = sparse_conv_kernel(*dtype).unwrap();
        assert!(
            conv.contains(&name),
            "{name} missing from sparse_conv.metal: {conv:?}"
        );
        for d in [64, 128] {
            let name = attention_kernel(*dtype, d).unwrap();
            assert!(
                attn.contains(&name),
                "{name} missing from attention.metal: {attn:?}"
            );
        }
    }
}

/// The emulator must catch a broken kernel: without the barrier between staging a tile and
/// multiplying it, threads read tile memory others have not written yet (the NaN fill).
#[test]
fn a_kernel_missing_a_barrier_fails() {
    let src = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/kernels/metal/sparse_conv.metal"
    ))
    .unwrap();
    let staged = "b_tile[c * CONV_BN + o] = w;\n            }\n            threadgroup_barrier(mem_flags::mem_threadgroup);";
    assert!(
        src.contains(staged),
        "sparse_conv.metal changed; update this test"
    );
    let broken = src.replace(staged, "b_tile[c * CONV_BN + o] = w;\n            }");
    let emu = Emulator::build("sparse_conv_no_barrier", &broken);
    let case = &CONV_CASES[1];
    let inp = conv_inputs(case, 0, DType::F32);
    let want = submanifold_conv3d(&inp.feats, &inp.map, &inp.weight, None)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    // Caught means: the emulator failed, the output kept NaN (panic in `written`) or is wrong.
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        match emulate_conv(
            &emu,
            &inp.feats,
            &inp.map,
            &inp.weight,
            MAX_MACS_PER_DISPATCH,
            "broken",
        ) {
            Err(_) => true,
            Ok(got) => rel_err(&got, &want) > tolerance(DType::F32),
        }
    }));
    assert!(
        !matches!(caught, Ok(false)),
        "a missing barrier went unnoticed"
    );
}

/// A barrier reached by only some threads is reported, not hung on.
#[test]
fn a_divergent_barrier_is_reported() {
    let src = r#"
#include <metal_stdlib>
using namespace metal;
template <typename T>
kernel void diverge(device T* out [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
    if (tid < 64) {
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    out[tid] = 1.0f;
}
template [[host_name("diverge")]] kernel void diverge<float>(device float* out [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]);
"#;
    let emu = Emulator::build("diverge", src);
    let err = emu
        .run(
            &[vec![0u8; 512]],
            &[EmuDispatch {
                kernel: "diverge".into(),
                threadgroups: [1, 1, 1],
                threads: [128, 1, 1],
                slots: vec![(0, Slot::Buffer(0))],
                threadgroup_memory: vec![],
            }],
        )
        .unwrap_err();
    assert!(err.contains("deadlock"), "{err}");
}

/// simd collectives exchange values between the 32 lanes of a simdgroup, not the threadgroup.
#[test]
fn simd_collectives_span_one_simdgroup() {
    let src = r#"
#include <metal_stdlib>
using namespace metal;
template <typename T>
kernel void collectives(device T* out [[buffer(0)]], uint tid [[thread_index_in_threadgroup]],
                        uint lane [[thread_index_in_simdgroup]]) {
    const T x = T(tid);
    out[tid * 4 + 0] = simd_sum(x);
    out[tid * 4 + 1] = simd_max(x);
    out[tid * 4 + 2] = simd_shuffle(x, 3);
    out[tid * 4 + 3] = simd_shuffle_xor(x, 5);
}
template [[host_name("collectives")]] kernel void collectives<float>(device float* out [[buffer(0)]],
    uint tid [[thread_index_in_threadgroup]], uint lane [[thread_index_in_simdgroup]]);
"#;
    let emu = Emulator::build("collectives", src);
    let out = emu
        .run(
            &[vec![0u8; 64 * 4 * 4]],
            &[EmuDispatch {
                kernel: "collectives".into(),
                threadgroups: [1, 1, 1],
                threads: [64, 1, 1],
                slots: vec![(0, Slot::Buffer(0))],
                threadgroup_memory: vec![],
            }],
        )
        .unwrap();
    let v = floats_of(&out[0], DType::F32);
    for t in 0..64usize {
        let base = t / 32 * 32;
        let want = [
            (base..base + 32).sum::<usize>() as f32,
            (base + 31) as f32,
            (base + 3) as f32,
            (base + ((t % 32) ^ 5)) as f32,
        ];
        assert_eq!(&v[t * 4..t * 4 + 4], &want, "thread {t}");
    }
}
