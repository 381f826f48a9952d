//! The built-in cases of the kernel self-test: shapes picked to reach ragged tiles (voxel and
//! channel counts that are not tile multiples, sequences of 1029 image tokens) while the CPU
//! reference stays fast enough for CI.

use candle_core::{DType, Device, Result, Tensor};

use super::{host_f32, time_op, uniform, Case, Checked, Work};
use crate::ops::attention::{varlen_attention, varlen_attention_slow};
use crate::ops::layer_norm::{layer_norm, layer_norm_composed};
use crate::ops::sparse_conv::{submanifold_conv3d, submanifold_conv3d_slow};
use crate::sparse::CoordSet;

pub const CASES: &[Case] = &[
    Case {
        op: "sparse_conv",
        shape: "shell r=9, Ci 48 Co 80",
        run: sparse_conv,
    },
    Case {
        op: "attention self d64",
        shape: "seqs 300+211, 3 heads",
        run: |dev, dt| attention(dev, dt, 64, &[300, 211], None),
    },
    Case {
        op: "attention self d128",
        shape: "seqs 300+211, 2 heads",
        run: |dev, dt| attention(dev, dt, 128, &[300, 211], None),
    },
    Case {
        op: "attention cross d64",
        shape: "q 150+90, kv 1029+1029, 3 heads",
        run: |dev, dt| attention(dev, dt, 64, &[150, 90], Some(&[1029, 1029])),
    },
    Case {
        op: "attention cross d128",
        shape: "q 150+90, kv 1029+1029, 2 heads",
        run: |dev, dt| attention(dev, dt, 128, &[150, 90], Some(&[1029, 1029])),
    },
    Case {
        op: "layer_norm",
        shape: "T 1000, C 1536, affine",
        run: layer_norm_case,
    },
];

/// `values` as a `shape` tensor rounded to `dtype`: (on `device`, as f32 on the CPU).
fn input(
    values: Vec<f32>,
    shape: &[usize],
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let host = Tensor::from_vec(values, shape, &Device::Cpu)?
        .to_dtype(dtype)?
        .to_dtype(DType::F32)?;
    Ok((host.to_dtype(dtype)?.to_device(device)?, host))
}

fn sparse_conv(device: &Device, dtype: DType) -> Result<Checked> {
    let (ci, co) = (48, 80);
    let mut rows = Vec::new();
    for x in 0..20 {
        for y in 0..20 {
            for z in 0..20 {
                let r = [x, y, z].map(|c| c as f32 - 9.5);
                let d = (r[0] * r[0] + r[1] * r[1] + r[2] * r[2]).sqrt();
                if (d - 9.0).abs() < 1.0 {
                    rows.push([0, x, y, z]);
                }
            }
        }
    }
    let n = rows.len();
    let set = CoordSet::from_host(rows, &Device::Cpu)?;
    let map = set.neighbour_map()?;
    let (feats, feats_ref) = input(uniform(1, n * ci), &[n, ci], dtype, device)?;
    let (weight, weight_ref) = input(uniform(2, co * 27 * ci), &[co, 27, ci], dtype, device)?;
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
    let q_off = offsets(q_lens);
    let kv_off = offsets(kv_lens.unwrap_or(q_lens));
    let (nq, nk) = (q_off[q_off.len() - 1], kv_off[kv_off.len() - 1]);
    // Scaled so the softmax is peaked: the running maximum of the online softmax matters.
    let make = |seed, n: usize| {
        let v = uniform(seed, n * heads * d)
            .iter()
            .map(|x| 3.0 * x)
            .collect();
        input(v, &[n, heads, d], dtype, device)
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
