//! Dispatch plans of the fused linear epilogue and gated residual (kernels/metal/elementwise.metal):
//! one thread per element, or per 4 consecutive elements (the `_v4` kernels) when the channels
//! are a multiple of 4 and every operand starts on a 4-element boundary. One dispatch per op:
//! an elementwise pass over even the largest activations takes milliseconds. Backend-free, so
//! the emulator runs these plans.

use super::dispatch::{dtype_tag, Dispatch, THREADS};
use super::kargs::{BiasActArgs, GatedResidualArgs};
use crate::ops::vocab::Activation;
use candle_core::{bail, DType, Result};

/// Elements per thread of the `_v4` kernels.
pub const EW_VEC: usize = 4;

fn u32_of(what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{what} = {v} exceeds u32")))
}

/// Whether the `_v4` kernels may run: `channels` a multiple of 4 and each operand's start (in
/// elements; its byte offset in its buffer over its element size) a multiple of 4, so a vector
/// never straddles a row or a sample's gate row and every vector load is aligned.
pub fn vectorizable(channels: usize, starts: &[usize]) -> bool {
    channels.is_multiple_of(EW_VEC) && starts.iter().all(|s| s.is_multiple_of(EW_VEC))
}

/// Kernel name, `count`/`channels` in the kernel's units, and the threadgroups over `count`.
fn shape(
    op: &str,
    rows: usize,
    channels: usize,
    dtype: DType,
    vec4: bool,
) -> Result<Option<(String, u32, u32, u32)>> {
    if vec4 && !channels.is_multiple_of(EW_VEC) {
        bail!("{op}: the vectorised kernel needs channels % {EW_VEC} == 0, got {channels}");
    }
    let width = if vec4 { EW_VEC } else { 1 };
    let elements = rows
        .checked_mul(channels)
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: {rows} x {channels} overflows")))?;
    if elements == 0 {
        return Ok(None);
    }
    let count = elements / width;
    let kernel = format!(
        "{op}_{}{}",
        dtype_tag(dtype)?,
        if vec4 { "_v4" } else { "" }
    );
    Ok(Some((
        kernel,
        u32_of("elements", count)?,
        u32_of("channels", channels / width)?,
        u32_of("threadgroups", count.div_ceil(THREADS as usize))?,
    )))
}

fn plan<A>(kernel: String, threadgroups: u32, args: A) -> Dispatch<A> {
    Dispatch {
        kernel,
        threadgroups: [threadgroups, 1, 1],
        threads: [THREADS, 1, 1],
        threadgroup_memory: 0,
        args,
    }
}

/// `act(x + bias)` over `x [rows, channels]`; `None` when x is empty.
pub fn bias_act_dispatch(
    rows: usize,
    channels: usize,
    act: Activation,
    dtype: DType,
    vec4: bool,
) -> Result<Option<Dispatch<BiasActArgs>>> {
    Ok(
        shape("bias_act", rows, channels, dtype, vec4)?.map(|(kernel, count, channels, groups)| {
            let args = BiasActArgs {
                count,
                channels,
                act: act as u32,
            };
            plan(kernel, groups, args)
        }),
    )
}

/// `x + gate_s · r` over `x [rows, channels]` split into `samples`; `None` when x is empty.
pub fn gated_residual_dispatch(
    rows: usize,
    channels: usize,
    samples: usize,
    dtype: DType,
    vec4: bool,
) -> Result<Option<Dispatch<GatedResidualArgs>>> {
    if samples == 0 {
        bail!("gated_residual: at least one sample");
    }
    let samples = u32_of("samples", samples)?;
    Ok(shape("gated_residual", rows, channels, dtype, vec4)?.map(
        |(kernel, count, channels, groups)| {
            let args = GatedResidualArgs {
                count,
                channels,
                samples,
            };
            plan(kernel, groups, args)
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_pick_the_vector_kernel_and_cover_every_element() {
        let d = bias_act_dispatch(300, 8192, Activation::GeluTanh, DType::BF16, true)
            .unwrap()
            .unwrap();
        assert_eq!(d.kernel, "bias_act_bf16_v4");
        assert_eq!(d.args.count, 300 * 2048);
        assert_eq!(d.args.channels, 2048);
        assert_eq!(d.args.act, 1);
        assert_eq!(d.threadgroups, [300 * 2048 / 128, 1, 1]);
        let d = gated_residual_dispatch(5, 13, 2, DType::F32, false)
            .unwrap()
            .unwrap();
        assert_eq!(d.kernel, "gated_residual_f32");
        assert_eq!((d.args.count, d.args.channels), (65, 13));
        assert_eq!(d.threadgroups, [1, 1, 1]);
        assert!(
            bias_act_dispatch(0, 13, Activation::None, DType::F16, false)
                .unwrap()
                .is_none()
        );
        assert!(bias_act_dispatch(2, 13, Activation::None, DType::F16, true).is_err());
        assert!(vectorizable(1536, &[0, 4, 1536]));
        assert!(!vectorizable(1536, &[0, 3]));
        assert!(!vectorizable(13, &[0]));
    }
}
