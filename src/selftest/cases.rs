//! The built-in cases of the kernel self-test: shapes picked to reach ragged tiles (voxel and
//! channel counts that are not tile multiples, sequences of 1029 image tokens) while the CPU
//! reference stays fast enough for CI.

use candle_core::{DType, Device, Result, Tensor};

use super::{host_f32, time_op, uniform, Case, Checked, Operands, Work, DTYPES};
use crate::ops::attention::{varlen_attention, varlen_attention_slow};
use crate::ops::bias_act::{bias_act, bias_act_slow, Activation};
use crate::ops::gated_residual::{gated_residual, gated_residual_slow};
use crate::ops::layer_norm::{layer_norm, layer_norm_composed};
use crate::ops::linear::{last_linear_path, Linear, LinearPath};
use crate::ops::norm_modulate::{layer_norm_modulate, layer_norm_modulate_slow, Modulation};
use crate::ops::rms_norm_rope::{rms_norm_rope, rms_norm_rope_slow, rope_table};
use crate::ops::rope::rope_tables_3d;
use crate::ops::sparse_conv::{submanifold_conv3d, submanifold_conv3d_slow};
use crate::sparse::CoordSet;

pub const CASES: &[Case] = &[
    Case {
        op: "sparse_conv",
        operands: Operands::Kernel,
        shape: "shell r=9, Ci 48 Co 80",
        dtypes: DTYPES,
        run: sparse_conv,
    },
    Case {
        op: "attention self d64",
        operands: Operands::Kernel,
        shape: "seqs 300+211, 3 heads",
        dtypes: DTYPES,
        run: |dev, dt| attention(dev, dt, 64, &[300, 211], None),
    },
    Case {
        op: "attention self d128",
        operands: Operands::Kernel,
        shape: "seqs 300+211, 2 heads",
        dtypes: DTYPES,
        run: |dev, dt| attention(dev, dt, 128, &[300, 211], None),
    },
    Case {
        op: "attention cross d64",
        operands: Operands::Kernel,
        shape: "q 150+90, kv 1029+1029, 3 heads",
        dtypes: DTYPES,
        run: |dev, dt| attention(dev, dt, 64, &[150, 90], Some(&[1029, 1029])),
    },
    Case {
        op: "attention cross d128",
        operands: Operands::Kernel,
        shape: "q 150+90, kv 1029+1029, 2 heads",
        dtypes: DTYPES,
        run: |dev, dt| attention(dev, dt, 128, &[150, 90], Some(&[1029, 1029])),
    },
    Case {
        op: "layer_norm",
        operands: Operands::Own,
        shape: "T 1000, C 1536, affine",
        dtypes: DTYPES,
        run: layer_norm_case,
    },
    Case {
        op: "layer_norm_modulate",
        operands: Operands::Own,
        shape: "T 600+400, C 1536",
        dtypes: DTYPES,
        run: layer_norm_modulate_case,
    },
    Case {
        op: "rms_norm_rope d64",
        operands: Operands::Own,
        shape: "T 2000, 3 heads",
        dtypes: DTYPES,
        run: |dev, dt| rms_norm_rope_case(dev, dt, 64, 3),
    },
    Case {
        op: "rms_norm_rope d128",
        operands: Operands::Own,
        shape: "T 2000, 2 heads",
        dtypes: DTYPES,
        run: |dev, dt| rms_norm_rope_case(dev, dt, 128, 2),
    },
    Case {
        op: "rms_norm_rope 1-row",
        operands: Operands::Own,
        shape: "T 2000, 2 heads, d128, identity",
        dtypes: DTYPES,
        run: rms_norm_one_row_case,
    },
    Case {
        op: "bias_act gelu",
        operands: Operands::Own,
        shape: "T 500, C 8192",
        dtypes: DTYPES,
        run: |dev, dt| bias_act_case(dev, dt, 8192, Activation::GeluTanh),
    },
    Case {
        op: "bias_act silu",
        operands: Operands::Own,
        shape: "T 1000, C 1539 (odd: scalar)",
        dtypes: DTYPES,
        run: |dev, dt| bias_act_case(dev, dt, 1539, Activation::Silu),
    },
    Case {
        op: "bias_act gelu_erf",
        operands: Operands::Own,
        shape: "T 1000, C 4096",
        dtypes: DTYPES,
        run: |dev, dt| bias_act_case(dev, dt, 4096, Activation::GeluErf),
    },
    Case {
        op: "bias_act none",
        operands: Operands::Own,
        shape: "T 1000, C 1536",
        dtypes: DTYPES,
        run: |dev, dt| bias_act_case(dev, dt, 1536, Activation::None),
    },
    Case {
        op: "linear gelu",
        operands: Operands::Own,
        shape: "M 257, 1024 → 3072, bias, tanh-GELU",
        dtypes: DTYPES,
        run: |dev, dt| linear_case(dev, dt, 1024, 3072, false),
    },
    Case {
        op: "linear + residual",
        operands: Operands::Own,
        shape: "M 257, 4096 → 1024, bias, + x",
        dtypes: DTYPES,
        run: |dev, dt| linear_case(dev, dt, 4096, 1024, true),
    },
    Case {
        op: "gated_residual",
        operands: Operands::Own,
        shape: "T 600+0+400, C 1536",
        dtypes: DTYPES,
        run: gated_residual_case,
    },
    Case {
        op: "neighbour_map",
        operands: Operands::Own,
        shape: "2 batches of shells r=9, 2 levels",
        dtypes: &[DType::U32],
        run: neighbour_map_case,
    },
];

/// `values` as a `shape` tensor rounded to `dtype`: (on `device`, as f32 on the CPU).
fn input(
    values: Vec<f32>,
    shape: &[usize],
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    input_rounded(values, shape, dtype, dtype, device)
}

/// [`input`] rounded to `operands` first: a tensor-core kernel's f32 case on CUDA gets f32
/// inputs that bf16 holds exactly, so the reference sees what the kernel multiplies.
fn input_rounded(
    values: Vec<f32>,
    shape: &[usize],
    dtype: DType,
    operands: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let host = Tensor::from_vec(values, shape, &Device::Cpu)?
        .to_dtype(operands)?
        .to_dtype(dtype)?
        .to_dtype(DType::F32)?;
    Ok((host.to_dtype(dtype)?.to_device(device)?, host))
}

/// Voxels of batch item `b` within one voxel of a sphere of radius `r` centred in a `2r+2` cube.
fn shell(b: i32, r: i32) -> Vec<[i32; 4]> {
    let side = 2 * r + 2;
    let mut rows = Vec::new();
    for x in 0..side {
        for y in 0..side {
            for z in 0..side {
                let p = [x, y, z].map(|c| c as f32 - side as f32 / 2.0 + 0.5);
                let d = (p[0] * p[0] + p[1] * p[1] + p[2] * p[2]).sqrt();
                if (d - r as f32).abs() < 1.0 {
                    rows.push([b, x, y, z]);
                }
            }
        }
    }
    rows
}

fn sparse_conv(device: &Device, dtype: DType) -> Result<Checked> {
    let (ci, co) = (48, 80);
    let rows = shell(0, 9);
    let n = rows.len();
    let set = CoordSet::from_host(rows, &Device::Cpu)?;
    let map = set.neighbour_map()?;
    let operands = crate::ops::sparse_conv::compute_dtype(device, dtype);
    let (feats, feats_ref) = input_rounded(uniform(1, n * ci), &[n, ci], dtype, operands, device)?;
    let (weight, weight_ref) = input_rounded(
        uniform(2, co * 27 * ci),
        &[co, 27, ci],
        dtype,
        operands,
        device,
    )?;
    let (bias, bias_ref) = input(uniform(3, co), &[co], dtype, device)?;
    let map_dev = map.tensor().to_device(device)?;
    let got = submanifold_conv3d(&feats, &map_dev, &weight, Some(&bias))?;
    let reference = if device.is_cpu() {
        submanifold_conv3d_slow
    } else {
        submanifold_conv3d
    };
    let want = reference(&feats_ref, map.tensor(), &weight_ref, Some(&bias_ref))?;
    let seconds = time_op(device, || {
        submanifold_conv3d(&feats, &map_dev, &weight, Some(&bias))
    })?;
    Ok(Checked {
        got: host_f32(&got)?,
        want: host_f32(&want)?,
        work: Work::Flops(2.0 * map.pairs() as f64 * ci as f64 * co as f64),
        seconds,
    })
}

fn offsets(lens: &[usize]) -> Vec<usize> {
    let mut o = vec![0];
    for l in lens {
        o.push(o[o.len() - 1] + l);
    }
    o
}

fn attention(
    device: &Device,
    dtype: DType,
    d: usize,
    q_lens: &[usize],
    kv_lens: Option<&[usize]>,
) -> Result<Checked> {
    let heads = if d == 64 { 3 } else { 2 };
    let operands = crate::ops::sparse_conv::compute_dtype(device, dtype);
    let q_off = offsets(q_lens);
    let kv_off = offsets(kv_lens.unwrap_or(q_lens));
    let (nq, nk) = (q_off[q_off.len() - 1], kv_off[kv_off.len() - 1]);
    // Scaled so the softmax is peaked: the running maximum of the online softmax matters.
    let make = |seed, n: usize| {
        let v = uniform(seed, n * heads * d)
            .iter()
            .map(|x| 3.0 * x)
            .collect();
        input_rounded(v, &[n, heads, d], dtype, operands, device)
    };
    let ((q, q_ref), (k, k_ref), (v, v_ref)) = (make(4, nq)?, make(5, nk)?, make(6, nk)?);
    let scale = 1.0 / (d as f32).sqrt();
    let run = || varlen_attention(&q, &k, &v, &q_off, &kv_off, scale);
    let got = run()?;
    let reference = if device.is_cpu() {
        varlen_attention_slow
    } else {
        varlen_attention
    };
    let want = reference(&q_ref, &k_ref, &v_ref, &q_off, &kv_off, scale)?;
    let pairs: usize = q_lens
        .iter()
        .zip(kv_lens.unwrap_or(q_lens))
        .map(|(a, b)| a * b)
        .sum();
    Ok(Checked {
        got: host_f32(&got)?,
        want: host_f32(&want)?,
        work: Work::Flops(4.0 * pairs as f64 * (heads * d) as f64),
        seconds: time_op(device, run)?,
    })
}

fn layer_norm_case(device: &Device, dtype: DType) -> Result<Checked> {
    let (t, c) = (1000, 1536);
    // A row mean far from zero: the two-pass variance must not lose digits.
    let x: Vec<f32> = uniform(7, t * c).iter().map(|v| 4.0 + v).collect();
    let (x, x_ref) = input(x, &[t, c], dtype, device)?;
    let w = Tensor::from_vec(uniform(8, c), c, &Device::Cpu)?;
    let b = Tensor::from_vec(uniform(9, c), c, &Device::Cpu)?;
    let (w_dev, b_dev) = (w.to_device(device)?, b.to_device(device)?);
    let run = || layer_norm(&x, Some((&w_dev, &b_dev)), 1e-6);
    let got = run()?;
    let want = if device.is_cpu() {
        layer_norm_composed(&x_ref, &w, &b, 1e-6)?
    } else {
        layer_norm(&x_ref, Some((&w, &b)), 1e-6)?
    };
    Ok(Checked {
        got: host_f32(&got)?,
        want: host_f32(&want)?,
        work: Work::Bytes((2 * t * c * dtype.size_in_bytes()) as f64),
        seconds: time_op(device, run)?,
    })
}

fn layer_norm_modulate_case(device: &Device, dtype: DType) -> Result<Checked> {
    let (c, offsets) = (1536, [0usize, 600, 1000]);
    let t = offsets[2];
    let x: Vec<f32> = uniform(10, t * c).iter().map(|v| 4.0 + v).collect();
    let (x, x_ref) = input(x, &[t, c], dtype, device)?;
    let shift = Tensor::from_vec(uniform(11, 2 * c), (2, c), &Device::Cpu)?;
    let scale = (Tensor::from_vec(uniform(12, 2 * c), (2, c), &Device::Cpu)? * 0.5)?;
    let (shift_dev, scale_dev) = (shift.to_device(device)?, scale.to_device(device)?);
    let on_device = Modulation {
        shift: &shift_dev,
        scale: &scale_dev,
        offsets: &offsets,
    };
    let run = || layer_norm_modulate(&x, None, &on_device, 1e-6);
    let got = run()?;
    let host = Modulation {
        shift: &shift,
        scale: &scale,
        offsets: &offsets,
    };
    let want = if device.is_cpu() {
        layer_norm_modulate_slow(&x_ref, None, &host, 1e-6)?
    } else {
        layer_norm_modulate(&x_ref, None, &host, 1e-6)?
    };
    Ok(Checked {
        got: host_f32(&got)?,
        want: host_f32(&want)?,
        work: Work::Bytes((2 * t * c * dtype.size_in_bytes()) as f64),
        seconds: time_op(device, run)?,
    })
}

fn rms_norm_rope_case(device: &Device, dtype: DType, d: usize, heads: usize) -> Result<Checked> {
    let t = 2000;
    let (x, x_ref) = input(uniform(13, t * heads * d), &[t, heads, d], dtype, device)?;
    let gamma = (Tensor::from_vec(uniform(14, heads * d), (heads, d), &Device::Cpu)? + 1.0)?;
    let xyz: Vec<[i32; 3]> = (0..t as i32)
        .map(|i| [i % 16, i / 16 % 16, i / 256])
        .collect();
    let (cos, sin) = rope_tables_3d(&xyz, d, 10000.0, &Device::Cpu)?;
    let table = rope_table(&cos, &sin)?;
    let (gamma_dev, table_dev) = (gamma.to_device(device)?, table.to_device(device)?);
    let run = || rms_norm_rope(&x, Some(&gamma_dev), &table_dev);
    let got = run()?;
    let want = if device.is_cpu() {
        rms_norm_rope_slow(&x_ref, Some(&gamma), &table)?
    } else {
        rms_norm_rope(&x_ref, Some(&gamma), &table)?
    };
    Ok(Checked {
        got: host_f32(&got)?,
        want: host_f32(&want)?,
        work: Work::Bytes((2 * t * heads * d * dtype.size_in_bytes()) as f64),
        seconds: time_op(device, run)?,
    })
}

/// The q/k RMS norm of the cross-attention: [`rms_norm_rope`] with one identity rotation row.
fn rms_norm_one_row_case(device: &Device, dtype: DType) -> Result<Checked> {
    let (t, heads, d) = (2000, 2, 128);
    let (x, x_ref) = input(uniform(25, t * heads * d), &[t, heads, d], dtype, device)?;
    let gamma = (Tensor::from_vec(uniform(26, heads * d), (heads, d), &Device::Cpu)? + 1.0)?;
    let table = Tensor::stack(
        &[
            Tensor::ones((1, d / 2), DType::F32, &Device::Cpu)?,
            Tensor::zeros((1, d / 2), DType::F32, &Device::Cpu)?,
        ],
        2,
    )?;
    let (gamma_dev, table_dev) = (gamma.to_device(device)?, table.to_device(device)?);
    let run = || rms_norm_rope(&x, Some(&gamma_dev), &table_dev);
    let got = run()?;
    let want = if device.is_cpu() {
        rms_norm_rope_slow(&x_ref, Some(&gamma), &table)?
    } else {
        rms_norm_rope(&x_ref, Some(&gamma), &table)?
    };
    Ok(Checked {
        got: host_f32(&got)?,
        want: host_f32(&want)?,
        work: Work::Bytes((2 * t * heads * d * dtype.size_in_bytes()) as f64),
        seconds: time_op(device, run)?,
    })
}

fn bias_act_case(device: &Device, dtype: DType, c: usize, act: Activation) -> Result<Checked> {
    // [500, 8192]: the MLP's hidden width; the CPU reference of 4M GELUs stays under a second.
    let t = if c == 8192 { 500 } else { 1000 };
    // ±4: the activations' curved range and their tails.
    let x: Vec<f32> = uniform(20, t * c).iter().map(|v| 4.0 * v).collect();
    let (x, x_ref) = input(x, &[t, c], dtype, device)?;
    let bias = Tensor::from_vec(uniform(21, c), c, &Device::Cpu)?;
    let bias_dev = bias.to_device(device)?;
    let run = || bias_act(&x, &bias_dev, act);
    let got = run()?;
    let want = if device.is_cpu() {
        bias_act_slow(&x_ref, &bias, act)?
    } else {
        bias_act(&x_ref, &bias, act)?
    };
    Ok(Checked {
        got: host_f32(&got)?,
        want: host_f32(&want)?,
        work: Work::Bytes((2 * t * c * dtype.size_in_bytes()) as f64),
        seconds: time_op(device, run)?,
    })
}

/// A linear layer with its epilogue: `y = GELU(x·Wᵀ + b)` or `y = x·Wᵀ + b + r`. On CUDA one
/// cuBLASLt matmul with the bias and tanh-GELU or the residual fused, rounded once: against the
/// composed ops in f32 on the CPU. Elsewhere the composed path (matmul, `bias_act`, add), which
/// rounds up to three times in f16/bf16: against the same ops on the CPU in the same dtype.
fn linear_case(
    device: &Device,
    dtype: DType,
    k: usize,
    n: usize,
    residual: bool,
) -> Result<Checked> {
    let m = 257;
    let (x, x_ref) = input(uniform(27, m * k), &[m, k], dtype, device)?;
    let w: Vec<f32> = uniform(28, n * k)
        .iter()
        .map(|v| v * 2.0 / (k as f32).sqrt())
        .collect();
    let (w, w_ref) = input(w, &[n, k], dtype, device)?;
    let (b, b_ref) = input(uniform(29, n), &[n], dtype, device)?;
    let (r, r_ref) = input(uniform(30, m * n), &[m, n], dtype, device)?;
    let lin = Linear::new(w, Some(b));
    let run = || {
        if residual {
            lin.forward_residual(&x, &r)
        } else {
            lin.forward_act(&x, Activation::GeluTanh)
        }
    };
    let got = run()?;
    // The reference rounds where the device's path rounds.
    let host_dtype = if last_linear_path() == LinearPath::CublasLt {
        DType::F32
    } else {
        dtype
    };
    let host = |t: &Tensor| t.to_dtype(host_dtype);
    let lin_ref = Linear::new(host(&w_ref)?, Some(host(&b_ref)?));
    let (x_ref, r_ref) = (host(&x_ref)?, host(&r_ref)?);
    let want = if residual {
        lin_ref.forward_residual_unfused(&x_ref, &r_ref)?
    } else {
        lin_ref.forward_act_unfused(&x_ref, Activation::GeluTanh)?
    };
    Ok(Checked {
        got: host_f32(&got)?,
        want: host_f32(&want)?,
        work: Work::Flops((2 * m * k * n) as f64),
        seconds: time_op(device, run)?,
    })
}

fn gated_residual_case(device: &Device, dtype: DType) -> Result<Checked> {
    let (c, offsets) = (1536, [0usize, 600, 600, 1000]);
    let t = offsets[3];
    let (x, x_ref) = input(uniform(22, t * c), &[t, c], dtype, device)?;
    let (r, r_ref) = input(uniform(23, t * c), &[t, c], dtype, device)?;
    let gate = Tensor::from_vec(uniform(24, 3 * c), (3, c), &Device::Cpu)?;
    let gate_dev = gate.to_device(device)?;
    let run = || gated_residual(&x, &r, &gate_dev, &offsets);
    let got = run()?;
    let want = if device.is_cpu() {
        gated_residual_slow(&x_ref, &r_ref, &gate, &offsets)?
    } else {
        gated_residual(&x_ref, &r_ref, &gate, &offsets)?
    };
    Ok(Checked {
        got: host_f32(&got)?,
        want: host_f32(&want)?,
        work: Work::Bytes((3 * t * c * dtype.size_in_bytes()) as f64),
        seconds: time_op(device, run)?,
    })
}

/// A neighbour map as f32 (ABSENT as −1; rows stay exact below 2^24).
fn map_values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?
        .to_device(&Device::Cpu)?
        .to_vec1::<u32>()?
        .into_iter()
        .map(|v| if v == u32::MAX { -1.0 } else { v as f32 })
        .collect())
}

fn neighbour_map_case(device: &Device, _: DType) -> Result<Checked> {
    // Two batch items, the second at twice the resolution (a cascade's two levels).
    let mut rows = shell(0, 9);
    rows.extend(shell(1, 18));
    let build = || -> Result<Tensor> {
        let set = CoordSet::from_host(rows.clone(), device)?;
        Ok(set.neighbour_map()?.tensor().clone())
    };
    let got = build()?;
    // On a GPU the kernels build the map; the reference is the host builder. On the CPU both
    // are the host builder, checked against the custom op's CPU forward.
    let n = rows.len();
    let want = if device.is_cpu() {
        let coords = CoordSet::from_host(rows.clone(), &Device::Cpu)?;
        crate::ops::neighbour_map::neighbour_op_output(coords.tensor())?.narrow(0, 0, n * 27)?
    } else {
        CoordSet::from_host(rows.clone(), &Device::Cpu)?
            .neighbour_map()?
            .tensor()
            .clone()
    };
    Ok(Checked {
        got: map_values(&got)?,
        want: map_values(&want)?,
        work: Work::Bytes((n * 27 * 4) as f64),
        seconds: time_op(device, build)?,
    })
}
