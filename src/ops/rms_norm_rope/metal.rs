//! q/k RMS norm + RoPE's Metal launcher (`rms_norm_rope_*` in kernels/metal/norms.metal) over
//! the plan of `norms_plan`.

use crate::ops::metal::encode::{encode, Arg};
use crate::ops::metal::norms_plan::rms_rope_dispatch;
use crate::ops::metal::pipelines::{pipeline, Source};
use crate::ops::metal::{output, start, Operand};
use candle_core::backend::BackendStorage;
use candle_core::{DType, MetalStorage, Result};

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
