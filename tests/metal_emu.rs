//! The Metal kernels executed on the CPU through the MSL emulator (tests/msl_emu/), on the exact
//! dispatch plans the Metal backend encodes (src/ops/metal/dispatch.rs). The selftest's small
//! and throughput cases (`trellis2::selftest::cases`) run through the emulator against the same
//! references with the same tolerances, the small ones also split into the most dispatches a
//! plan can make (the path the host takes when one op alone exceeds the command-buffer budget);
//! then the emulator's own checks: operands bound mid-buffer, a racing
//! duplicate voxel, the kernel argument layouts, and the emulator catching broken kernels.
//! Prints one line per case and dtype.

mod msl_emu;

use candle_core::{DType, Device, Tensor};
use msl_emu::{EmuDispatch, Emulator, Slot};
use trellis2::ops::bias_act::{bias_act, Activation};
use trellis2::ops::deform_conv::modulated_im2col_args;
use trellis2::ops::metal::budget::COMMAND_BUFFER_SECONDS;
use trellis2::ops::metal::dispatch::{
    attention_dispatches, attention_kernel, attention_tiles, conv_vec_loads,
    deform_im2col_dispatches, shell_live_taps, sparse_conv_dispatches, ConvRows,
};
use trellis2::ops::metal::elementwise_plan::{
    bias_act_dispatch, gated_residual_dispatch, vectorizable,
};
use trellis2::ops::metal::kargs::{
    AttentionArgs, BiasActArgs, ConvOrderArgs, DeformIm2ColArgs, GatedResidualArgs, KernelArgs,
    NeighbourArgs, NormModulateArgs, RmsRopeArgs, SpaceToChannelArgs, SparseConvArgs,
};
use trellis2::ops::metal::neighbour_plan::neighbour_plan;
use trellis2::ops::metal::norms_plan::{norm_modulate_dispatch, rms_rope_dispatch};
use trellis2::selftest::shapes::voxel_block;
use trellis2::selftest::{
    cases, compare, output_values, rel_err, uniform, Case, ConvMap, Inputs, Op, Reference, Report,
    Size, Voxels, Work,
};

/// Elements after every output that the kernel must leave alone.
const GUARD: usize = 16;

/// The estimated seconds a dispatch may take in a split run: none, which gives one tile per
/// dispatch (a conv's voxel tile, an attention query tile, an im2col threadgroup).
const SPLIT_SECONDS: f64 = 0.0;

/// Small cases of at most this much work also run split.
const SPLIT_FLOPS: f64 = 1e8;

/// Elementwise cases with more outputs are left to the devices: the throughput shapes (an
/// emulated thread per element), whose smaller twins take the same code paths.
const MAX_EMULATED_OUTPUTS: usize = 1 << 20;

/// Conv orders of more voxels are left to the devices (the 1.2 M-voxel throughput case); the
/// small cases take the same paths (many threadgroups, ragged windows and runs).
const MAX_EMULATED_ORDER_ROWS: usize = 200_000;

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

fn u32_bytes(v: &[usize]) -> Vec<u8> {
    v.iter().flat_map(|&x| (x as u32).to_le_bytes()).collect()
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

/// The `n` written values of the emulator's output, after checking that every one was written
/// (no NaN left) and that the guard is untouched.
fn written(bytes: &[u8], n: usize, dtype: DType) -> Result<Vec<f32>, String> {
    let all = floats_of(bytes, dtype);
    if let Some(i) = all[..n].iter().position(|v| v.is_nan()) {
        return Err(format!("output element {i} of {n} never written (or NaN)"));
    }
    if bytes[n * dtype.size_in_bytes()..]
        .iter()
        .any(|&b| b != 0xff)
    {
        return Err("kernel wrote past the end of its output".into());
    }
    Ok(all[..n].to_vec())
}

// ---------------------------------------------------------------------------- the executor

/// Whether a split run (the smallest dispatch budget) is made too.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Budget {
    Default,
    Split,
}

/// The planned Metal dispatches for `inputs` in the emulator, as the output's values: `None`
/// where the Metal backend has no kernel for the op (or this shape). `emu` is the op's
/// emulator ([`emulator_for`]).
fn emulate(emu: &Emulator, inputs: &Inputs, budget: Budget) -> Option<Result<Vec<f32>, String>> {
    let split = budget == Budget::Split;
    let max_seconds = if split {
        SPLIT_SECONDS
    } else {
        COMMAND_BUFFER_SECONDS
    };
    Some(match inputs {
        Inputs::SparseConv {
            feats,
            map,
            weight,
            bias,
        } => emulate_conv(
            emu,
            [feats, weight, map],
            bias.as_ref(),
            None,
            [0, 0],
            max_seconds,
        ),
        Inputs::Attention {
            q,
            k,
            v,
            q_offsets,
            kv_offsets,
            scale,
        } => {
            attention_kernel(q.dtype(), q.dim(2).unwrap()).ok()?;
            emulate_attention(emu, [q, k, v], q_offsets, kv_offsets, *scale, max_seconds)
        }
        Inputs::NeighbourMap { rows, .. } => emulate_map_case(emu, rows)?,
        Inputs::LayerNormModulate {
            x,
            affine,
            shift,
            scale,
            offsets,
        } => {
            let (t, c) = x.dims2().unwrap();
            let affine = match affine {
                Some((w, b)) => Tensor::stack(&[w, b], 0).unwrap(),
                None => Tensor::stack(
                    &[
                        Tensor::ones(c, DType::F32, &Device::Cpu).unwrap(),
                        Tensor::zeros(c, DType::F32, &Device::Cpu).unwrap(),
                    ],
                    0,
                )
                .unwrap(),
            };
            let modulation = Tensor::stack(&[shift, scale], 1).unwrap();
            let plan = norm_modulate_dispatch(t, c, offsets.len() - 1, 1e-6, x.dtype()).unwrap();
            emulate_one(
                emu,
                plan,
                vec![
                    bytes_of(x),
                    bytes_of(&affine),
                    bytes_of(&modulation),
                    u32_bytes(offsets),
                ],
                t * c,
                x.dtype(),
            )
        }
        Inputs::RmsNormRope { x, gamma, table } => {
            let (t, h, d) = x.dims3().unwrap();
            let table_rows = table.dim(0).unwrap();
            let plan = rms_rope_dispatch(t, h, d, gamma.is_some(), table_rows, x.dtype()).unwrap();
            if let Some(p) = &plan {
                assert_eq!(p.args.table_rows as usize, table_rows);
            }
            let ones = Tensor::ones((h, d), DType::F32, &Device::Cpu).unwrap();
            let g = gamma.as_ref().unwrap_or(&ones);
            emulate_one(
                emu,
                plan,
                vec![bytes_of(x), bytes_of(g), bytes_of(table)],
                t * h * d,
                x.dtype(),
            )
        }
        Inputs::BiasAct { x, bias, act } => {
            let (t, c) = x.dims2().unwrap();
            let plan = bias_act_dispatch(t, c, *act, x.dtype(), vectorizable(c, &[0, 0])).unwrap();
            emulate_one(
                emu,
                plan,
                vec![bytes_of(x), bytes_of(bias)],
                t * c,
                x.dtype(),
            )
        }
        Inputs::GatedResidual {
            x,
            r,
            gate,
            offsets,
        } => {
            let (t, c) = x.dims2().unwrap();
            let vec4 = vectorizable(c, &[0, 0, 0]);
            let plan = gated_residual_dispatch(t, c, offsets.len() - 1, x.dtype(), vec4).unwrap();
            emulate_one(
                emu,
                plan,
                vec![bytes_of(x), bytes_of(r), bytes_of(gate), u32_bytes(offsets)],
                t * c,
                x.dtype(),
            )
        }
        Inputs::DeformIm2col {
            input,
            offset,
            mask,
            kernel,
            cfg,
            rows,
        } => {
            let args =
                modulated_im2col_args(input, offset, mask, *kernel, *cfg, rows.clone()).unwrap();
            emulate_deform(emu, [input, offset, mask], args, max_seconds)
        }
        Inputs::ConvOrder { map, window } => emulate_conv_order(emu, map, *window)
            .map(|order| order.iter().map(|&v| v as f32).collect()),
        // No Metal kernel: the backend composes candle ops (or calls the CPU op).
        Inputs::LayerNorm { .. }
        | Inputs::Linear { .. }
        | Inputs::LayerNormAct { .. }
        | Inputs::C2sSkipAdd { .. }
        | Inputs::DeformConv { .. } => return None,
        Inputs::SpaceToChannel { feats, slots } => {
            let (rows, c) = feats.dims2().unwrap();
            let n = slots.dim(0).unwrap();
            let plan = trellis2::ops::metal::elementwise_plan::space_to_channel_dispatch(
                n,
                rows,
                c,
                feats.dtype(),
            )
            .unwrap();
            emulate_one(
                emu,
                plan,
                vec![bytes_of(feats), bytes_of(slots)],
                n * c,
                feats.dtype(),
            )
        }
    })
}

/// The emulator (one per `.metal` file) that runs `op`'s kernels.
fn emulator_for(op: &Op) -> Option<&'static str> {
    Some(match op {
        Op::SparseConv { .. } => "sparse_conv",
        Op::Attention { .. } => "attention",
        Op::NeighbourMap { .. } => "neighbour_map",
        Op::ConvOrder { .. } => "conv_order",
        Op::LayerNormModulate { .. } | Op::RmsNormRope { .. } => "norms",
        Op::BiasAct { .. } | Op::GatedResidual { .. } | Op::SpaceToChannel { .. } => "elementwise",
        Op::DeformIm2col { .. } => "deform_conv",
        _ => return None,
    })
}

/// Whether a small case also runs split into the most dispatches: the ops whose plans split,
/// at shapes the emulator runs twice quickly.
fn splits(case: &Case, inputs: &Inputs) -> bool {
    let small = case.size == Size::Small;
    match inputs {
        Inputs::SparseConv { .. } | Inputs::Attention { .. } => {
            small && matches!(case.work(inputs, DType::F32), Ok(Work::Flops(f)) if f <= SPLIT_FLOPS)
        }
        Inputs::DeformIm2col { .. } => small,
        _ => false,
    }
}

/// Runs every small and throughput case of the ops `keep` keeps through the emulator (the
/// elementwise ones up to [`MAX_EMULATED_OUTPUTS`] outputs), in each of its dtypes; prints a line per run and fails listing every failing case.
fn run_cases(keep: fn(&Op) -> bool) {
    let mut failed = Vec::new();
    let (mut runs, mut skipped) = (0, 0);
    for case in cases()
        .iter()
        .filter(|c| c.size != Size::Large && keep(&c.op))
    {
        let stem = emulator_for(&case.op).expect("an op the emulator runs");
        let emu = Emulator::get(stem);
        for &dtype in case.dtypes {
            // Metal computes in the activations' own dtype: no operand rounding.
            let inputs = case.inputs(dtype, dtype).unwrap();
            let want = case
                .reference(&inputs, Reference::CpuOp)
                .and_then(|t| output_values(&t))
                .unwrap();
            let elementwise = matches!(
                inputs,
                Inputs::BiasAct { .. }
                    | Inputs::GatedResidual { .. }
                    | Inputs::SpaceToChannel { .. }
            );
            let order_rows = match &inputs {
                Inputs::ConvOrder { map, .. } => map.dim(0).unwrap(),
                _ => 0,
            };
            if (elementwise && want.len() > MAX_EMULATED_OUTPUTS)
                || order_rows > MAX_EMULATED_ORDER_ROWS
            {
                println!("skip  {dtype:?} {}: too large for the emulator", case.op);
                skipped += 1;
                continue;
            }
            let mut budgets = vec![Budget::Default];
            if splits(case, &inputs) {
                budgets.push(Budget::Split);
            }
            for budget in budgets {
                let start = std::time::Instant::now();
                let Some(got) = emulate(&emu, &inputs, budget) else {
                    println!("skip  {dtype:?} {}: no Metal kernel", case.op);
                    skipped += 1;
                    continue;
                };
                let outcome = got
                    .map_err(candle_core::Error::msg)
                    .and_then(|got| compare(&got, &want, case.tolerance(dtype, dtype)));
                let mut report = Report::new(case, dtype, outcome);
                if budget == Budget::Split {
                    report.case.push_str(" [split dispatches]");
                }
                println!("{report}  ({:.2} s)", start.elapsed().as_secs_f64());
                runs += 1;
                if !report.passed() {
                    failed.push(report.to_string());
                }
            }
        }
    }
    println!("{runs} emulated runs, {skipped} skipped");
    assert!(runs > 0, "no case ran");
    assert!(failed.is_empty(), "failed:\n{}", failed.join("\n"));
}

#[test]
fn sparse_conv_cases() {
    run_cases(|op| matches!(op, Op::SparseConv { .. }));
}

#[test]
fn attention_cases() {
    run_cases(|op| matches!(op, Op::Attention { .. }));
}

#[test]
fn conv_order_cases() {
    run_cases(|op| matches!(op, Op::ConvOrder { .. }));
}

#[test]
fn neighbour_map_cases() {
    run_cases(|op| matches!(op, Op::NeighbourMap { .. }));
}

#[test]
fn norm_cases() {
    run_cases(|op| matches!(op, Op::LayerNormModulate { .. } | Op::RmsNormRope { .. }));
}

#[test]
fn elementwise_cases() {
    run_cases(|op| {
        matches!(
            op,
            Op::BiasAct { .. } | Op::GatedResidual { .. } | Op::SpaceToChannel { .. }
        )
    });
}

#[test]
fn deform_im2col_cases() {
    run_cases(|op| matches!(op, Op::DeformIm2col { .. }));
}

// ---------------------------------------------------------------------------- launches

/// Runs the planned sparse-conv dispatches, feats and weight bound `pads` elements into their
/// buffers, the bias zeros where there is none and the map in place of an absent voxel `order`
/// (as the backend binds them); returns `[n, co]`.
fn emulate_conv(
    emu: &Emulator,
    [feats, weight, map]: [&Tensor; 3],
    bias: Option<&Tensor>,
    order: Option<&[u32]>,
    pads: [usize; 2],
    max_seconds: f64,
) -> Result<Vec<f32>, String> {
    let (n, ci) = feats.dims2().unwrap();
    let co = weight.dim(0).unwrap();
    let dtype = feats.dtype();
    let bias = match bias {
        Some(b) => b.to_dtype(DType::F32).unwrap(),
        None => Tensor::zeros(co, DType::F32, &Device::Cpu).unwrap(),
    };
    let rows = ConvRows {
        vec_loads: conv_vec_loads(ci, &pads),
        ordered: order.is_some(),
    };
    // The host plans with a surface's live taps (it has the map only on the device).
    let live = shell_live_taps(rows.ordered);
    let plan = sparse_conv_dispatches(n, ci, co, dtype, live, max_seconds, rows).unwrap();
    let (f, f0) = view_of(feats, pads[0]);
    let (w, w0) = view_of(weight, pads[1]);
    let buffers = vec![
        f,
        w,
        bytes_of(map),
        bytes_of(&bias),
        poisoned(n * co, dtype),
        match order {
            Some(o) => o.iter().flat_map(|v| v.to_le_bytes()).collect(),
            None => bytes_of(map),
        },
    ];
    let dispatches: Vec<EmuDispatch> = plan
        .iter()
        .map(|d| {
            let mut e = emu_dispatch(d, 6);
            e.slots[1].1 = Slot::BufferAt(0, f0);
            e.slots[2].1 = Slot::BufferAt(1, w0);
            e
        })
        .collect();
    let out = emu.run(&buffers, &dispatches)?;
    written(&out[4], n * co, dtype)
}

fn emulate_attention(
    emu: &Emulator,
    [q, k, v]: [&Tensor; 3],
    q_off: &[usize],
    kv_off: &[usize],
    scale: f32,
    max_seconds: f64,
) -> Result<Vec<f32>, String> {
    let (nq, heads, d) = q.dims3().unwrap();
    let dtype = q.dtype();
    let tiles = attention_tiles(q_off).unwrap();
    let plan = attention_dispatches(&tiles, kv_off, heads, d, dtype, scale, max_seconds).unwrap();
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
    written(&out[6], nq * heads * d, dtype)
}

/// The planned neighbour-map dispatches for `rows` as map values (absent taps as −1), after
/// checking the status words against the CPU op's (no duplicate, the pair count); `None` where
/// the keys need more than 31 bits (the backend builds on the host then).
fn emulate_map_case(emu: &Emulator, rows: &[[i32; 4]]) -> Option<Result<Vec<f32>, String>> {
    use trellis2::ops::neighbour_map::neighbour_op_output;
    let plan = neighbour_plan(rows).unwrap()?;
    let n = rows.len();
    if plan.dispatches.is_empty() {
        return Some(if n == 0 {
            Ok(Vec::new())
        } else {
            Err(format!("no dispatch for {n} voxels"))
        });
    }
    let flat: Vec<i32> = rows.iter().flatten().copied().collect();
    let coords = Tensor::from_vec(flat, (n, 4), &Device::Cpu).unwrap();
    let pairs = neighbour_op_output(&coords)
        .unwrap()
        .to_vec1::<u32>()
        .unwrap()[n * 27 + 1];
    Some(emulate_map(emu, rows).and_then(|(map, status)| {
        if status != [u32::MAX, pairs] {
            return Err(format!(
                "status words {status:?}, want [no duplicate, {pairs} pairs]"
            ));
        }
        let map = Tensor::from_vec(map, n * 27, &Device::Cpu).unwrap();
        output_values(&map).map_err(|e| e.to_string())
    }))
}

/// Runs the planned neighbour-map dispatches; returns the map and the two status words.
fn emulate_map(emu: &Emulator, rows: &[[i32; 4]]) -> Result<(Vec<u32>, [u32; 2]), String> {
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
    let out = emu.run(&buffers, &dispatches)?;
    let map = words(&out[3]);
    if map[n * 27..].iter().any(|&w| w != 0xabab_abab) {
        return Err("kernel wrote past the end of the map".into());
    }
    let status = words(&out[4]);
    Ok((map[..n * 27].to_vec(), [status[0], status[1]]))
}

/// Runs the planned conv-order dispatches over the `[n, 27]` map (bound mid-buffer, as a view
/// of a larger map would be), with guard words after the two item buffers; returns the order.
fn emulate_conv_order(emu: &Emulator, map: &Tensor, window: usize) -> Result<Vec<u32>, String> {
    emulate_conv_order_with_stats(emu, map, window, false).map(|(order, _)| order)
}

/// [`emulate_conv_order`]; with `stats` the run's bank statistics are returned instead of
/// feeding the report's table.
fn emulate_conv_order_with_stats(
    emu: &Emulator,
    map: &Tensor,
    window: usize,
    stats: bool,
) -> Result<(Vec<u32>, msl_emu::KernelBanks), String> {
    use trellis2::ops::metal::conv_order_plan::conv_order_plan;
    let n = map.dim(0).unwrap();
    let Some(plan) = conv_order_plan(n, window.min(n.max(1))).unwrap() else {
        return Ok((Vec::new(), Default::default()));
    };
    const PAD: usize = 5; // map words before the view
    let words = |b: &[u8]| -> Vec<u32> {
        b.chunks(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let mut map_bytes = vec![0x5a; PAD * 4];
    map_bytes.extend(bytes_of(map));
    let poison = |len: usize| vec![0xab; len * 4];
    // 0 map, 1 masks, 2 hist, 3 and 4 items.
    let buffers = vec![
        map_bytes,
        poison(n),
        poison(plan.hist_len),
        poison(n + GUARD),
        poison(n + GUARD),
    ];
    let dispatch = |d: &trellis2::ops::metal::dispatch::Dispatch<_>, slots: Vec<Slot>| {
        let mut e = emu_dispatch(d, 0);
        e.slots.extend(
            slots
                .into_iter()
                .enumerate()
                .map(|(i, s)| (i as u32 + 1, s)),
        );
        e
    };
    let mut dispatches = vec![dispatch(
        &plan.masks,
        vec![Slot::BufferAt(0, (PAD * 4) as u64), Slot::Buffer(1)],
    )];
    for (p, pass) in plan.passes.iter().enumerate() {
        let dst = 3 + (p % 2) as u32;
        // The first pass reads no items; the masks stand in, as on the host.
        let src = if p == 0 { 1 } else { 3 + ((p + 1) % 2) as u32 };
        dispatches.push(dispatch(
            &pass.histogram,
            vec![Slot::Buffer(1), Slot::Buffer(src), Slot::Buffer(2)],
        ));
        dispatches.push(dispatch(&pass.scan, vec![Slot::Buffer(2)]));
        dispatches.push(dispatch(
            &pass.scatter,
            vec![
                Slot::Buffer(1),
                Slot::Buffer(src),
                Slot::Buffer(dst),
                Slot::Buffer(2),
            ],
        ));
    }
    let (out, stats) = if stats {
        emu.run_with_stats(&buffers, &dispatches)?
    } else {
        (emu.run(&buffers, &dispatches)?, Default::default())
    };
    let last = 3 + (plan.passes.len() - 1) % 2;
    for b in [3, 4] {
        if words(&out[b])[n..].iter().any(|&w| w != 0xabab_abab) {
            return Err("kernel wrote past the end of the items".into());
        }
    }
    Ok((words(&out[last])[..n].to_vec(), stats))
}

/// Edge cases of the conv order beyond the selftest's: an N prime to every size in the plan,
/// windows around a threadgroup's run and ragged last windows, all-equal keys (stability: the
/// identity), masks in descending order, and every threadgroup access at most 1-way.
#[test]
fn conv_order_matches_the_host_sort_at_the_edges() {
    use trellis2::ops::conv_order::sorted_by_mask;
    use trellis2::ops::neighbour_map::{batch_ranges, neighbour_rows};
    let emu = Emulator::get("conv_order");
    let rows = trellis2::selftest::shapes::voxel_shell(0, 40, 17.0, 0.87);
    let full = neighbour_rows(&rows, &batch_ranges(&rows).unwrap()).unwrap();
    let n = 5987.min(rows.len()); // prime
    assert_eq!(n, 5987, "the shell has {} voxels", rows.len());
    let shell = full[..n * 27].to_vec();
    let equal = vec![trellis2::ops::vocab::ABSENT; 3001 * 27];
    // Voxel v's mask counts down: every pass moves every item.
    let descending: Vec<u32> = (0..2053u32)
        .flat_map(|v| {
            (0..27u32).map(move |k| {
                if (2052 - v) >> (k % 12) & 1 == 1 {
                    0
                } else {
                    u32::MAX
                }
            })
        })
        .collect();
    let mut worst = 0;
    for (name, map, windows) in [
        (
            "shell",
            &shell,
            &[1, 255, 256, 1023, 1024, 1025, 2500, 5986, n][..],
        ),
        ("equal", &equal, &[1, 1000, 3001][..]),
        ("descending", &descending, &[13, 2053][..]),
    ] {
        let rows = map.len() / 27;
        let tensor = Tensor::from_vec(map.clone(), (rows, 27), &Device::Cpu).unwrap();
        for &window in windows {
            let want = sorted_by_mask(&tensor, window)
                .unwrap()
                .to_vec1::<u32>()
                .unwrap();
            let (got, stats) = emulate_conv_order_with_stats(&emu, &tensor, window, true).unwrap();
            assert_eq!(got, want, "{name}: window {window} of {rows}");
            if name == "equal" {
                assert!(got.iter().enumerate().all(|(i, &v)| v as usize == i));
            }
            for (kernel, s) in &stats {
                assert!(
                    s.all.max <= 1,
                    "{kernel}: {}-way ({name}, window {window})",
                    s.all.max
                );
                worst = worst.max(s.all.max);
            }
        }
    }
    println!("conv order: exact at every edge case; worst bank ways {worst}");
}

/// Runs one planned dispatch (`None`: nothing to do, an empty output) over `inputs` (buffer,
/// byte offset) and a fresh output of `n_out` elements bound last.
fn emulate_views<A: KernelArgs>(
    emu: &Emulator,
    plan: Option<trellis2::ops::metal::dispatch::Dispatch<A>>,
    inputs: Vec<(Vec<u8>, u64)>,
    n_out: usize,
    dtype: DType,
) -> Result<Vec<f32>, String> {
    let Some(plan) = plan else {
        return if n_out == 0 {
            Ok(Vec::new())
        } else {
            Err(format!("no dispatch for {n_out} outputs"))
        };
    };
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
    let res = emu.run(&buffers, &[d])?;
    written(&res[out as usize], n_out, dtype)
}

/// [`emulate_views`] with every input bound at its buffer's start.
fn emulate_one<A: KernelArgs>(
    emu: &Emulator,
    plan: Option<trellis2::ops::metal::dispatch::Dispatch<A>>,
    inputs: Vec<Vec<u8>>,
    n_out: usize,
    dtype: DType,
) -> Result<Vec<f32>, String> {
    let inputs = inputs.into_iter().map(|b| (b, 0)).collect();
    emulate_views(emu, plan, inputs, n_out, dtype)
}

/// Runs the planned im2col dispatches of `args`; returns the columns.
fn emulate_deform(
    emu: &Emulator,
    tensors: [&Tensor; 3],
    args: DeformIm2ColArgs,
    max_seconds: f64,
) -> Result<Vec<f32>, String> {
    let plan = deform_im2col_dispatches(args, DType::F32, max_seconds).unwrap();
    let n = args.columns() as usize;
    let mut buffers: Vec<Vec<u8>> = tensors.iter().map(|t| bytes_of(t)).collect();
    buffers.push(poisoned(n, DType::F32));
    let dispatches: Vec<EmuDispatch> = plan.iter().map(|d| emu_dispatch(d, 4)).collect();
    let out = emu.run(&buffers, &dispatches)?;
    written(&out[3], n, DType::F32)
}

// ---------------------------------------------------------------------------- emulator extras

/// A neighbour map whose voxel appears twice reports one of the two copies (rows 94 and 216):
/// they sit in different threadgroups, which race for real in the emulator as on a GPU, so
/// either may lose the compare-and-swap.
#[test]
fn neighbour_map_kernels_report_a_duplicate_voxel() {
    let emu = Emulator::get("neighbour_map");
    let mut rows = voxel_block(0, 6, 0);
    rows.push([0, 2, 3, 4]);
    rows.push([1, 2, 3, 4]); // same position, other batch: not a duplicate
    let first: u32 = 2 * 36 + 3 * 6 + 4;
    for _ in 0..4 {
        let (_, status) = emulate_map(&emu, &rows).unwrap();
        assert!(
            status[0] == first || status[0] == 6 * 6 * 6,
            "reported row {} is not a copy",
            status[0]
        );
    }
}

/// A rotation table must have one row or one per token.
#[test]
fn rms_norm_rope_plan_refuses_a_two_row_table() {
    assert!(rms_rope_dispatch(5, 1, 8, true, 2, DType::F32).is_err());
}

/// An operand bound `pad` elements into its buffer (a view starting mid-buffer); the padding is
/// NaN bytes, so a kernel reading before the view's start poisons its output.
fn view_of(t: &Tensor, pad: usize) -> (Vec<u8>, u64) {
    let size = t.dtype().size_in_bytes();
    let mut bytes = vec![0xff; pad * size];
    bytes.extend(bytes_of(t));
    (bytes, (pad * size) as u64)
}

/// Elementwise operands bound mid-buffer: starts that are not multiples of 4 elements force the
/// scalar kernel even where C allows vectors, and no kernel reads before its operand's start.
/// (bias_act: C, T, x's and the bias's starts; gated_residual: C, offsets, starts of x, r and
/// the gate.)
#[test]
fn elementwise_kernels_take_operands_bound_mid_buffer() {
    let emu = Emulator::get("elementwise");
    let dev = Device::Cpu;
    let values = |seed: u64, shape: &[usize], scale: f32| {
        let n = shape.iter().product();
        let v: Vec<f32> = uniform(seed, n).iter().map(|x| x * scale).collect();
        Tensor::from_vec(v, shape, &dev).unwrap()
    };
    let mut failed = Vec::new();
    let mut check = |label: String, got: Result<Vec<f32>, String>, want: &Tensor, dtype| {
        let want = output_values(want).unwrap();
        let tol = trellis2::selftest::Tolerance::ELEMENTWISE.of(dtype);
        let line = match got {
            Ok(got) => {
                let rel = rel_err(&got, &want);
                if rel > tol {
                    failed.push(format!("{label}: {rel:e} > {tol:e}"));
                }
                format!("{label:<90} max|err|/max|ref| {rel:.2e}")
            }
            Err(e) => {
                failed.push(format!("{label}: {e}"));
                format!("{label:<90} error: {e}")
            }
        };
        println!("{line}");
    };
    for (i, &(c, t, x_pad, b_pad)) in [
        (1536usize, 1usize, 4usize, 0usize),
        (1536, 203, 3, 0),
        (8192, 203, 8, 4),
        (13, 203, 5, 2),
    ]
    .iter()
    .enumerate()
    {
        // x in ±6: GELU's and SiLU's curved range and their tails.
        let x32 = values(300 + 10 * i as u64, &[t, c], 6.0);
        let bias = values(301 + 10 * i as u64, &[c], 1.0);
        let vec4 = vectorizable(c, &[x_pad, b_pad]);
        for act in [
            Activation::None,
            Activation::GeluTanh,
            Activation::Silu,
            Activation::GeluErf,
        ] {
            for dtype in trellis2::selftest::DTYPES.iter().copied() {
                let x = x32.to_dtype(dtype).unwrap();
                let plan = bias_act_dispatch(t, c, act, dtype, vec4).unwrap();
                let got = emulate_views(
                    &emu,
                    plan,
                    vec![view_of(&x, x_pad), view_of(&bias, b_pad)],
                    t * c,
                    dtype,
                );
                let want = bias_act(&x.to_dtype(DType::F32).unwrap(), &bias, act).unwrap();
                let label = format!(
                    "bias_act {act:?} T {t} C {c} x@{x_pad} bias@{b_pad} vec4 {vec4} [{dtype:?}]"
                );
                check(label, got, &want, dtype);
            }
        }
    }
    for (i, (c, offsets, [x_pad, r_pad, g_pad])) in [
        (1536usize, vec![0usize, 20, 20, 37], [4usize, 8, 4]),
        (1536, vec![0, 0, 9], [0, 1, 0]),
        (13, vec![0, 0, 7, 12], [3, 2, 1]),
    ]
    .into_iter()
    .enumerate()
    {
        let (t, b) = (offsets[offsets.len() - 1], offsets.len() - 1);
        let seed = 400 + 10 * i as u64;
        let (x32, r32) = (values(seed, &[t, c], 2.0), values(seed + 1, &[t, c], 2.0));
        let gate = values(seed + 2, &[b, c], 1.0);
        let vec4 = vectorizable(c, &[x_pad, r_pad, g_pad]);
        for dtype in trellis2::selftest::DTYPES.iter().copied() {
            let (x, r) = (x32.to_dtype(dtype).unwrap(), r32.to_dtype(dtype).unwrap());
            let plan = gated_residual_dispatch(t, c, b, dtype, vec4).unwrap();
            let got = emulate_views(
                &emu,
                plan,
                vec![
                    view_of(&x, x_pad),
                    view_of(&r, r_pad),
                    view_of(&gate, g_pad),
                    (u32_bytes(&offsets), 0),
                ],
                t * c,
                dtype,
            );
            let f32c = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let want = trellis2::ops::gated_residual::gated_residual(
                &f32c(&x),
                &f32c(&r),
                &gate,
                &offsets,
            )
            .unwrap();
            let label = format!(
                "gated_residual C {c} offsets {offsets:?} starts {:?} vec4 {vec4} [{dtype:?}]",
                [x_pad, r_pad, g_pad]
            );
            check(label, got, &want, dtype);
        }
    }
    assert!(failed.is_empty(), "failed:\n{}", failed.join("\n"));
}

// ---------------------------------------------------------------------------- harness checks

#[test]
fn kargs_layout_matches_the_header() {
    use std::mem::{offset_of, size_of};
    let want = format!(
        "SparseConvArgs size={} n_voxels={} ci={} co={} voxel_tile_base={} vec_loads={} \
         ordered={}\n\
         AttentionArgs size={} heads={} tile_base={} n_tiles={} scale={}\n\
         DeformIm2ColArgs size={} batch=0 channels=4 height=8 width=12 kh=16 kw=20 out_h=24 \
         out_w=28 offset_groups=32 stride_y=36 stride_x=40 pad_y=44 pad_x=48 dil_y=52 dil_x=56 \
         row_start=60 rows=64 first=68 count=72\n\
         NeighbourArgs size={} n_voxels={} capacity_mask={} bits_x={} bits_y={} bits_z={}\n\
         ConvOrderArgs size={} n={} window={} shift={} per_block={} blocks={} identity={} \
         hist_len={}\n\
         NormModulateArgs size={} rows={} channels={} samples={} eps={}\n\
         RmsRopeArgs size={} rows={} heads={} head_dim={} normalize={} table_rows={}\n\
         BiasActArgs size={} count={} channels={} act={}\n\
         GatedResidualArgs size={} count={} channels={} samples={}\n\
         SpaceToChannelArgs size={} count={} words={} rows={}\n",
        size_of::<SparseConvArgs>(),
        offset_of!(SparseConvArgs, n_voxels),
        offset_of!(SparseConvArgs, ci),
        offset_of!(SparseConvArgs, co),
        offset_of!(SparseConvArgs, voxel_tile_base),
        offset_of!(SparseConvArgs, vec_loads),
        offset_of!(SparseConvArgs, ordered),
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
        size_of::<ConvOrderArgs>(),
        offset_of!(ConvOrderArgs, n),
        offset_of!(ConvOrderArgs, window),
        offset_of!(ConvOrderArgs, shift),
        offset_of!(ConvOrderArgs, per_block),
        offset_of!(ConvOrderArgs, blocks),
        offset_of!(ConvOrderArgs, identity),
        offset_of!(ConvOrderArgs, hist_len),
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
        size_of::<SpaceToChannelArgs>(),
        offset_of!(SpaceToChannelArgs, count),
        offset_of!(SpaceToChannelArgs, words),
        offset_of!(SpaceToChannelArgs, rows),
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
        vec_loads: 1,
        ordered: 1,
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
    let order = Emulator::get("conv_order").kernels();
    let plan = trellis2::ops::metal::conv_order_plan::conv_order_plan(5000, 7)
        .unwrap()
        .unwrap();
    let pass = &plan.passes[0];
    for d in [&plan.masks, &pass.histogram, &pass.scan, &pass.scatter] {
        assert!(order.contains(&d.kernel), "{} missing: {order:?}", d.kernel);
    }
    let norms = Emulator::get("norms").kernels();
    for dtype in trellis2::selftest::DTYPES {
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
    for dtype in trellis2::selftest::DTYPES {
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
    for dtype in trellis2::selftest::DTYPES {
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
    let staged = "    threadgroup_barrier(mem_flags::mem_threadgroup);\n\n    while (have) {";
    assert!(
        src.contains(staged),
        "sparse_conv.metal changed; update this test"
    );
    let broken = src.replace(staged, "\n    while (have) {");
    let emu = Emulator::build("sparse_conv_no_barrier", &broken);
    let case = Case::new(
        Size::Small,
        Op::SparseConv {
            map: ConvMap::Of(Voxels::One([0, 5, 5, 5])),
            ci: 5,
            co: 7,
            bias: false,
        },
        &[DType::F32],
        trellis2::selftest::Tolerance::REDUCTION,
    );
    let inputs = case.inputs(DType::F32, DType::F32).unwrap();
    let want = output_values(&case.reference(&inputs, Reference::CpuOp).unwrap()).unwrap();
    let Inputs::SparseConv {
        feats, map, weight, ..
    } = &inputs
    else {
        unreachable!()
    };
    // Caught means: the emulator failed, the output kept NaN or is wrong.
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        match emulate_conv(
            &emu,
            [feats, weight, map],
            None,
            None,
            [0, 0],
            COMMAND_BUFFER_SECONDS,
        ) {
            Err(_) => true,
            Ok(got) => rel_err(&got, &want) > case.tolerance(DType::F32, DType::F32),
        }
    }));
    assert!(
        !matches!(caught, Ok(false)),
        "a missing barrier went unnoticed"
    );
}

/// A conv case on `map` with `ci` input channels (Co 40, with bias), its operands in `dtype`
/// and the CPU op's output.
fn conv_case(map: ConvMap, ci: usize, dtype: DType) -> (Case, Inputs, Vec<f32>) {
    let case = Case::new(
        Size::Small,
        Op::SparseConv {
            map,
            ci,
            co: 40,
            bias: true,
        },
        trellis2::selftest::DTYPES,
        trellis2::selftest::Tolerance::REDUCTION,
    );
    let inputs = case.inputs(dtype, dtype).unwrap();
    let want = output_values(&case.reference(&inputs, Reference::CpuOp).unwrap()).unwrap();
    (case, inputs, want)
}

/// Conv operands bound mid-buffer: a feats or weight start that is not a multiple of 4 elements
/// (or Ci that is not) forces the scalar loads even where Ci allows vectors; either path matches
/// the CPU op, and no kernel reads before its operand's start (the padding is NaN bytes).
#[test]
fn sparse_conv_takes_operands_bound_mid_buffer() {
    let emu = Emulator::get("sparse_conv");
    let mut failed = Vec::new();
    for &dtype in trellis2::selftest::DTYPES {
        for (ci, pads) in [
            (32, [0, 0]),
            (32, [1, 0]),
            (32, [0, 3]),
            (36, [4, 8]),
            (13, [2, 1]),
        ] {
            let map = ConvMap::Random {
                voxels: 150,
                p: 0.5,
                seed: 7,
            };
            let (case, inputs, want) = conv_case(map, ci, dtype);
            let Inputs::SparseConv {
                feats,
                map,
                weight,
                bias,
            } = &inputs
            else {
                unreachable!()
            };
            let label = format!(
                "ci {ci} starts {pads:?} vec {} [{dtype:?}]",
                conv_vec_loads(ci, &pads)
            );
            let outcome = emulate_conv(
                &emu,
                [feats, weight, map],
                bias.as_ref(),
                None,
                pads,
                COMMAND_BUFFER_SECONDS,
            )
            .map_err(candle_core::Error::msg)
            .and_then(|got| compare(&got, &want, case.tolerance(dtype, dtype)));
            match outcome {
                Ok(m) if m.max_rel <= m.tolerance => println!("{label}: rel {:.2e}", m.max_rel),
                other => failed.push(format!("{label}: {other:?}")),
            }
        }
    }
    assert!(failed.is_empty(), "failed: {failed:?}");
}

/// The conv in a voxel order: tile row r handles voxel `order[64·tile + r]`. On a shell, in its
/// sorted orders (windows of 64 voxels and one window) and a random permutation, in every dtype
/// (and split into one dispatch per tile): the CPU op's result within the unsorted runs'
/// tolerance, and bit for bit the unsorted emulation's (a tap a tile skips adds only zeros).
#[test]
fn sparse_conv_follows_a_voxel_order() {
    use trellis2::ops::conv_order::sorted_by_mask;
    let emu = Emulator::get("sparse_conv");
    let mut failed = Vec::new();
    for &dtype in trellis2::selftest::DTYPES {
        let shell = ConvMap::Of(Voxels::Shell {
            batch: 0,
            side: 16,
            radius: 6.0,
            width: 0.87,
            at: 0,
        });
        let (case, inputs, want) = conv_case(shell, 36, dtype);
        let Inputs::SparseConv {
            feats,
            map,
            weight,
            bias,
        } = &inputs
        else {
            unreachable!()
        };
        let n = feats.dim(0).unwrap();
        let mut random: Vec<u32> = (0..n as u32).collect();
        for (i, u) in uniform(11, n).into_iter().enumerate().rev() {
            let j = ((u * 0.5 + 0.5) * (i + 1) as f32) as usize;
            random.swap(i, j.min(i));
        }
        let sorted = |w| sorted_by_mask(map, w).unwrap().to_vec1::<u32>().unwrap();
        let run = |order: Option<&[u32]>, seconds| {
            emulate_conv(
                &emu,
                [feats, weight, map],
                bias.as_ref(),
                order,
                [0, 0],
                seconds,
            )
        };
        let plain = run(None, COMMAND_BUFFER_SECONDS).unwrap();
        for (what, order, seconds) in [
            (
                "sorted in windows of 64",
                sorted(64),
                COMMAND_BUFFER_SECONDS,
            ),
            ("sorted in one window", sorted(n), COMMAND_BUFFER_SECONDS),
            ("sorted, split", sorted(n), SPLIT_SECONDS),
            (
                "a random permutation",
                random.clone(),
                COMMAND_BUFFER_SECONDS,
            ),
        ] {
            let label = format!("{n} voxels {what} [{dtype:?}]");
            let outcome = run(Some(&order), seconds)
                .map_err(candle_core::Error::msg)
                .and_then(|got| {
                    let same = got.iter().zip(&plain).all(|(a, b)| a == b);
                    compare(&got, &want, case.tolerance(dtype, dtype)).map(|m| (m, same))
                });
            match outcome {
                Ok((m, true)) if m.max_rel <= m.tolerance => {
                    println!("{label}: rel {:.2e}, equal to the unsorted run", m.max_rel)
                }
                other => failed.push(format!("{label}: {other:?}")),
            }
        }
    }
    assert!(failed.is_empty(), "failed: {failed:?}");
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

/// The space→channel gather (`space_to_channel_w*` in elementwise.metal, the shape encoder's
/// downsampling) against the CPU op, word for word: random features, slots mixing present and
/// absent children, row widths that are odd and even, a single parent, and no parent at all;
/// operands bound mid-buffer too.
#[test]
fn space_to_channel_matches_the_cpu_gather() {
    use trellis2::ops::metal::elementwise_plan::space_to_channel_dispatch;
    use trellis2::ops::space_to_channel::space_to_channel;
    use trellis2::ops::vocab::ABSENT;
    let emu = Emulator::get("elementwise");
    let cpu = Device::Cpu;
    let mut seed = 12345u64;
    let mut next = move |m: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % m
    };
    for (rows, channels, parents) in [
        (1usize, 1usize, 1usize),
        (37, 3, 9),
        (500, 64, 120),
        (64, 13, 0),
    ] {
        let slots: Vec<u32> = (0..parents * 8)
            .map(|_| {
                if next(3) == 0 {
                    ABSENT
                } else {
                    next(rows as u64) as u32
                }
            })
            .collect();
        let slots_t = Tensor::from_vec(slots.clone(), parents * 8, &cpu).unwrap();
        for dtype in trellis2::selftest::DTYPES {
            let x = Tensor::randn(0f32, 1.0, (rows, channels), &cpu)
                .unwrap()
                .to_dtype(*dtype)
                .unwrap();
            let want = floats_of(&bytes_of(&space_to_channel(&x, &slots_t).unwrap()), *dtype);
            let plan = space_to_channel_dispatch(parents * 8, rows, channels, *dtype).unwrap();
            // The features start two rows into their buffer (after rows of garbage).
            let skip = 2 * channels * dtype.size_in_bytes();
            let mut x_bytes = vec![0x7fu8; skip];
            x_bytes.extend(bytes_of(&x));
            let got = emulate_views(
                &emu,
                plan,
                vec![(x_bytes, skip as u64), (u32_bytes_of(&slots), 0)],
                parents * 8 * channels,
                *dtype,
            )
            .unwrap_or_else(|e| panic!("space_to_channel {rows}x{channels} → {parents}: {e}"));
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "space_to_channel N {rows} C {channels} M {parents} [{dtype:?}]"
            );
            println!("space_to_channel N {rows:>4} C {channels:>3} M {parents:>4} [{dtype:?}]: identical");
        }
    }
    let names = emu.kernels();
    for dtype in trellis2::selftest::DTYPES {
        let d = space_to_channel_dispatch(8, 1, 1, *dtype).unwrap().unwrap();
        assert!(names.contains(&d.kernel), "{} missing: {names:?}", d.kernel);
    }
}

fn u32_bytes_of(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
