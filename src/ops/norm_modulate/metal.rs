//! LayerNorm + adaLN modulation's Metal launcher (`layer_norm_modulate_*` in
//! kernels/metal/norms.metal) over the plan of `norms_plan`.

use crate::ops::metal::encode::{encode, Arg};
use crate::ops::metal::norms_plan::norm_modulate_dispatch;
use crate::ops::metal::pipelines::{pipeline, Source};
use crate::ops::metal::{output, start, Operand};
use crate::ops::sample_offsets::offsets_u32;
use candle_core::backend::BackendStorage;
use candle_core::{DType, MetalStorage, Result};

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
