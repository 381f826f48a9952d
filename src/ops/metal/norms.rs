//! `metal_fwd` of the fused DiT ops (src/ops/norm_modulate.rs, src/ops/rms_norm_rope.rs):
//! kernels/metal/norms.metal over the plans of `norms_plan`.

use super::encode::{encode, Arg};
use super::norms_plan::{norm_modulate_dispatch, rms_rope_dispatch};
use super::pipelines::{pipeline, Source};
use crate::ops::sample_offsets::offsets_u32;
use candle_core::backend::BackendStorage;
use candle_core::{bail, DType, Layout, MetalStorage, Result};

pub(super) type Operand<'a> = (&'a MetalStorage, &'a Layout);

/// Byte offset of a contiguous operand of the expected dtype.
pub(super) fn start(op: &str, what: &str, (s, l): Operand<'_>, dtype: DType) -> Result<usize> {
    if s.dtype() != dtype {
        bail!(
            "{op} (metal): {what} must be {dtype:?}, got {:?}",
            s.dtype()
        );
    }
    match l.contiguous_offsets() {
        Some((a, _)) => Ok(a * dtype.size_in_bytes()),
        None => bail!("{op} (metal): {what} must be contiguous"),
    }
}

/// A fresh `count`-element buffer in x's dtype.
pub(super) fn output(x: &MetalStorage, count: usize, label: &str) -> Result<MetalStorage> {
    let device = x.device();
    let buffer = device
        .new_buffer_builder()
        .with_size_for(count.max(1), x.dtype())
        .with_label(label)
        .build()?;
    Ok(MetalStorage::new(buffer, device.clone(), count, x.dtype()))
}

/// x `[T,C]`, affine `[2,C]` f32, modulation `[B,2,C]` f32 → `[T,C]` in x's dtype.
pub(crate) fn norm_modulate(
    x: Operand<'_>,
    affine: Operand<'_>,
    modulation: Operand<'_>,
    offsets: &[usize],
    eps: f32,
) -> Result<(MetalStorage, candle_core::Shape)> {
    let op = "layer_norm_modulate";
    let dtype = x.0.dtype();
    let (rows, c) = x.1.shape().dims2()?;
    let x0 = start(op, "x", x, dtype)?;
    let a0 = start(op, "affine", affine, DType::F32)?;
    let m0 = start(op, "modulation", modulation, DType::F32)?;
    let out = output(x.0, rows * c, op)?;
    if let Some(d) = norm_modulate_dispatch(rows, c, offsets.len() - 1, eps, dtype)? {
        let device = x.0.device();
        let offsets = offsets_u32(op, offsets)?;
        let offsets = device.new_buffer_with_data(&offsets)?;
        let p = pipeline(device, Source::Norms, &d.kernel)?;
        encode(
            device,
            &p,
            op,
            &d,
            &[
                Arg::Read(x.0.buffer(), x0),
                Arg::Read(affine.0.buffer(), a0),
                Arg::Read(modulation.0.buffer(), m0),
                Arg::Read(&offsets, 0),
                Arg::Write(out.buffer()),
            ],
        )?;
    }
    Ok((out, x.1.shape().clone()))
}

/// x `[T,H,D]`, gamma `[H,D]` f32, table `[T or 1,D/2,2]` f32 → `[T,H,D]` in x's dtype.
pub(crate) fn rms_norm_rope(
    x: Operand<'_>,
    gamma: Operand<'_>,
    table: Operand<'_>,
    normalize: bool,
) -> Result<(MetalStorage, candle_core::Shape)> {
    let op = "rms_norm_rope";
    let dtype = x.0.dtype();
    let (t, h, d) = x.1.shape().dims3()?;
    let x0 = start(op, "x", x, dtype)?;
    let g0 = start(op, "gamma", gamma, DType::F32)?;
    let r0 = start(op, "rotation table", table, DType::F32)?;
    let table_rows = table.1.shape().dims3()?.0;
    let out = output(x.0, t * h * d, op)?;
    if let Some(plan) = rms_rope_dispatch(t, h, d, normalize, table_rows, dtype)? {
        let device = x.0.device();
        let p = pipeline(device, Source::Norms, &plan.kernel)?;
        encode(
            device,
            &p,
            op,
            &plan,
            &[
                Arg::Read(x.0.buffer(), x0),
                Arg::Read(gamma.0.buffer(), g0),
                Arg::Read(table.0.buffer(), r0),
                Arg::Write(out.buffer()),
            ],
        )?;
    }
    Ok((out, x.1.shape().clone()))
}
