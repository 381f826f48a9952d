//! The space→channel gather's Metal launcher (`space_to_channel_w*` in
//! kernels/metal/elementwise.metal) over the plan of `elementwise_plan`.

use crate::ops::metal::elementwise_plan::space_to_channel_dispatch;
use crate::ops::metal::encode::{encode, Arg};
use crate::ops::metal::pipelines::{pipeline, Source};
use crate::ops::metal::{output, start, Operand};
use crate::ops::vocab::CHILDREN;
use candle_core::backend::BackendStorage;
use candle_core::{bail, DType, MetalStorage, Result, Shape};

/// feats `[N, C]` (f32/f16/bf16), slots `[M·8]` u32 → `[M, 8C]` in feats' dtype.
pub(crate) fn space_to_channel(
    x: Operand<'_>,
    slots: Operand<'_>,
) -> Result<(MetalStorage, Shape)> {
    let op = "space_to_channel";
    let dtype = x.0.dtype();
    let (rows, c) = x.1.shape().dims2()?;
    let n_slots = slots.1.shape().elem_count();
    if n_slots % CHILDREN != 0 {
        bail!("{op} (metal): {n_slots} slots are not whole parents of 8");
    }
    let x0 = start(op, "feats", x, dtype)?;
    let s0 = start(op, "slots", slots, DType::U32)?;
    let out = output(x.0, n_slots * c, op)?;
    if let Some(d) = space_to_channel_dispatch(n_slots, rows, c, dtype)? {
        let device = x.0.device();
        let p = pipeline(device, Source::Elementwise, &d.kernel)?;
        encode(
            device,
            &p,
            op,
            &d,
            &[
                Arg::Read(x.0.buffer(), x0),
                Arg::Read(slots.0.buffer(), s0),
                Arg::Write(out.buffer()),
            ],
        )?;
    }
    Ok((out, Shape::from((n_slots / CHILDREN, CHILDREN * c))))
}
