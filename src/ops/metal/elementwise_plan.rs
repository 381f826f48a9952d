//! Dispatch plans of the fused linear epilogue and gated residual (kernels/metal/elementwise.metal):
//! one thread per element, or per 4 consecutive elements (the `_v4` kernels) when the channels
//! are a multiple of 4 and every operand starts on a 4-element boundary. One dispatch per op:
//! an elementwise pass over even the largest activations takes milliseconds. Backend-free, so
//! the emulator runs these plans.

use super::dispatch::{dtype_tag, Dispatch, Work, THREADS};
use super::kargs::{BiasActArgs, GatedResidualArgs, SpaceToChannelArgs};
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

/// A pass over `rows × channels` elements of `elem` bytes: two read, one written.
fn plan<A>(
    kernel: String,
    threadgroups: u32,
    elements: usize,
    elem: usize,
    args: A,
) -> Dispatch<A> {
    Dispatch {
        kernel,
        threadgroups: [threadgroups, 1, 1],
        threads: [THREADS, 1, 1],
        threadgroup_memory: 0,
        args,
        work: Work::bytes((3 * elements * elem) as f64),
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
    let elements = rows.saturating_mul(channels);
    Ok(
        shape("bias_act", rows, channels, dtype, vec4)?.map(|(kernel, count, channels, groups)| {
            let args = BiasActArgs {
                count,
                channels,
                act: act as u32,
            };
            plan(kernel, groups, elements, dtype.size_in_bytes(), args)
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
    let elements = rows.saturating_mul(channels);
    Ok(shape("gated_residual", rows, channels, dtype, vec4)?.map(
        |(kernel, count, channels, groups)| {
            let args = GatedResidualArgs {
                count,
                channels,
                samples,
            };
            plan(kernel, groups, elements, dtype.size_in_bytes(), args)
        },
    ))
}

/// The space→channel gather of `slots` (a multiple of 8) child slots from `rows` input rows of
/// `channels` elements of `dtype`: one thread per output word of the element's size
/// (`space_to_channel_w2` / `_w4`); `None` when the output is empty.
pub fn space_to_channel_dispatch(
    slots: usize,
    rows: usize,
    channels: usize,
    dtype: DType,
) -> Result<Option<Dispatch<SpaceToChannelArgs>>> {
    let word = dtype.size_in_bytes();
    if !matches!(word, 2 | 4) {
        bail!("space_to_channel: no kernel for {dtype:?}");
    }
    let elements = slots
        .checked_mul(channels)
        .ok_or_else(|| candle_core::Error::Msg("space_to_channel: output size overflows".into()))?;
    if elements == 0 {
        return Ok(None);
    }
    let args = SpaceToChannelArgs {
        count: u32_of("space_to_channel output elements", elements)?,
        words: u32_of("channels", channels)?,
        rows: u32_of("rows", rows)?,
    };
    let groups = u32_of("threadgroups", elements.div_ceil(THREADS as usize))?;
    Ok(Some(Dispatch {
        kernel: format!("space_to_channel_w{word}"),
        threadgroups: [groups, 1, 1],
        threads: [THREADS, 1, 1],
        threadgroup_memory: 0,
        args,
        // Each output word written once, each present input word read once.
        work: Work::bytes((2 * elements * word) as f64),
    }))
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
        let d = space_to_channel_dispatch(16, 5, 3, DType::BF16)
            .unwrap()
            .unwrap();
        assert_eq!(d.kernel, "space_to_channel_w2");
        assert_eq!((d.args.count, d.args.words, d.args.rows), (48, 3, 5));
        assert!(space_to_channel_dispatch(0, 5, 3, DType::F32)
            .unwrap()
            .is_none());
        assert!(space_to_channel_dispatch(8, 5, 3, DType::U8).is_err());
        assert!(vectorizable(1536, &[0, 4, 1536]));
        assert!(!vectorizable(1536, &[0, 3]));
        assert!(!vectorizable(13, &[0]));
    }
}
