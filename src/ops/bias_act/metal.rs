//! `act(x + bias)`'s Metal launcher (`bias_act_*` in kernels/metal/elementwise.metal) over the
//! plan of `elementwise_plan`.

use crate::ops::metal::elementwise_plan::{bias_act_dispatch, vectorizable};
use crate::ops::metal::encode::{encode, Arg};
use crate::ops::metal::pipelines::{pipeline, Source};
use crate::ops::metal::{output, start, Operand};
use crate::ops::vocab::Activation;
use candle_core::backend::BackendStorage;
use candle_core::{bail, DType, MetalStorage, Result, Shape};

/// x `[T,C]`, bias `[C]` f32 → `act(x + bias)` `[T,C]` in x's dtype.
pub(crate) fn bias_act(
    x: Operand<'_>,
    bias: Operand<'_>,
    act: Activation,
) -> Result<(MetalStorage, Shape)> {
    let op = "bias_act";
    let dtype = x.0.dtype();
    let (rows, c) = x.1.shape().dims2()?;
    if bias.1.shape().dims() != [c] {
        bail!("{op} (metal): bias must be [{c}], got {:?}", bias.1.shape());
    }
    let x0 = start(op, "x", x, dtype)?;
    let b0 = start(op, "bias", bias, DType::F32)?;
    let out = output(x.0, rows * c, op)?;
    let vec4 = vectorizable(
        c,
        &[x0 / dtype.size_in_bytes(), b0 / DType::F32.size_in_bytes()],
    );
    if let Some(d) = bias_act_dispatch(rows, c, act, dtype, vec4)? {
        let device = x.0.device();
        let p = pipeline(device, Source::Elementwise, &d.kernel)?;
        encode(
            device,
            &p,
            op,
            &d,
            &[
                Arg::Read(x.0.buffer(), x0),
                Arg::Read(bias.0.buffer(), b0),
                Arg::Write(out.buffer()),
            ],
        )?;
    }
    Ok((out, x.1.shape().clone()))
}
