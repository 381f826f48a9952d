//! The gated residual's Metal launcher (`gated_residual_*` in kernels/metal/elementwise.metal)
//! over the plan of `elementwise_plan`.

use crate::ops::metal::elementwise_plan::{gated_residual_dispatch, vectorizable};
use crate::ops::metal::encode::{encode, Arg};
use crate::ops::metal::pipelines::{pipeline, Source};
use crate::ops::metal::{output, start, Operand};
use crate::ops::sample_offsets::offsets_u32;
use candle_core::backend::BackendStorage;
use candle_core::{bail, DType, MetalStorage, Result, Shape};

/// x, r `[T,C]` (x's dtype), gate `[B,C]` f32, rows `offsets[b]..offsets[b+1]` of sample b →
/// `x + gate_b · r` `[T,C]` in x's dtype.
pub(crate) fn gated_residual(
    x: Operand<'_>,
    r: Operand<'_>,
    gate: Operand<'_>,
    offsets: &[usize],
) -> Result<(MetalStorage, Shape)> {
    let op = "gated_residual";
    let dtype = x.0.dtype();
    let (rows, c) = x.1.shape().dims2()?;
    let samples = offsets.len().saturating_sub(1);
    if r.1.shape() != x.1.shape() || gate.1.shape().dims() != [samples, c] {
        bail!(
            "{op} (metal): r {:?} and gate {:?} for x {:?} and {samples} samples",
            r.1.shape(),
            gate.1.shape(),
            x.1.shape()
        );
    }
    if offsets.last() != Some(&rows) {
        bail!("{op} (metal): offsets {offsets:?} must end at {rows}");
    }
    let x0 = start(op, "x", x, dtype)?;
    let r0 = start(op, "residual branch", r, dtype)?;
    let g0 = start(op, "gate", gate, DType::F32)?;
    let out = output(x.0, rows * c, op)?;
    let size = dtype.size_in_bytes();
    let vec4 = vectorizable(c, &[x0 / size, r0 / size, g0 / DType::F32.size_in_bytes()]);
    if let Some(d) = gated_residual_dispatch(rows, c, samples, dtype, vec4)? {
        let device = x.0.device();
        let offsets = offsets_u32(op, offsets)?;
        let offsets = device.new_buffer_with_data(&offsets)?;
        let p = pipeline(device, Source::Elementwise, &d.kernel)?;
        encode(
            device,
            &p,
            op,
            &d,
            &[
                Arg::Read(x.0.buffer(), x0),
                Arg::Read(r.0.buffer(), r0),
                Arg::Read(gate.0.buffer(), g0),
                Arg::Read(&offsets, 0),
                Arg::Write(out.buffer()),
            ],
        )?;
    }
    Ok((out, x.1.shape().clone()))
}
