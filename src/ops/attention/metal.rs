//! `metal_fwd` of varlen attention (src/ops/attention/mod.rs): kernels/metal/attention.metal over the
//! split plan of `dispatch::attention_dispatches`.

use crate::ops::metal::dispatch::{attention_dispatches, attention_tiles, MAX_MACS_PER_DISPATCH};
use crate::ops::metal::encode::{encode, Arg};
use crate::ops::metal::pipelines::{pipeline, Source};
use candle_core::backend::BackendStorage;
use candle_core::{bail, Layout, MetalStorage, Result, Shape};

/// Sequence description of one call, as the kernel reads it.
pub(crate) struct Offsets<'a> {
    pub q: &'a [usize],
    pub kv: &'a [usize],
    pub scale: f32,
}

fn start(l: &Layout, what: &str, elem: usize) -> Result<usize> {
    match l.contiguous_offsets() {
        Some((a, _)) => Ok(a * elem),
        None => bail!("varlen_attention (metal): {what} must be contiguous"),
    }
}

fn as_u32(v: &[usize]) -> Result<Vec<u32>> {
    v.iter()
        .map(|&x| {
            u32::try_from(x).map_err(|_| candle_core::Error::Msg(format!("offset {x} > u32")))
        })
        .collect()
}

/// q `[Nq,H,D]`, k/v `[Nk,H,D]`, one dtype (f32/f16/bf16), D 64 or 128 → `[Nq,H,D]`.
pub(crate) fn forward(
    q: (&MetalStorage, &Layout),
    k: (&MetalStorage, &Layout),
    v: (&MetalStorage, &Layout),
    offsets: &Offsets<'_>,
) -> Result<(MetalStorage, Shape)> {
    let dtype = q.0.dtype();
    if k.0.dtype() != dtype || v.0.dtype() != dtype {
        bail!(
            "varlen_attention (metal): q {dtype:?}, k {:?}, v {:?} must share a dtype",
            k.0.dtype(),
            v.0.dtype()
        );
    }
    let elem = dtype.size_in_bytes();
    let (nq, heads, d) = q.1.shape().dims3()?;
    let (q0, k0, v0) = (
        start(q.1, "q", elem)?,
        start(k.1, "k", elem)?,
        start(v.1, "v", elem)?,
    );
    let tiles = attention_tiles(offsets.q)?;
    let plan = attention_dispatches(
        &tiles,
        offsets.kv,
        heads,
        d,
        dtype,
        offsets.scale,
        MAX_MACS_PER_DISPATCH,
    )?;
    let device = q.0.device();
    let count = nq * heads * d;
    let out = device
        .new_buffer_builder()
        .with_size_for(count.max(1), dtype)
        .with_label("varlen_attention")
        .build()?;
    if let Some(first) = plan.first() {
        let pipeline = pipeline(device, Source::Attention, &first.kernel)?;
        // Uploads, not read-backs: nothing here waits for the GPU. All buffers exist before the
        // first encoder is taken.
        let q_off = device.new_buffer_with_data(&as_u32(offsets.q)?)?;
        let kv_off = device.new_buffer_with_data(&as_u32(offsets.kv)?)?;
        let tile_table = device.new_buffer_with_data(&tiles)?;
        for p in &plan {
            encode(
                device,
                &pipeline,
                "varlen_attention",
                p,
                &[
                    Arg::Read(q.0.buffer(), q0),
                    Arg::Read(k.0.buffer(), k0),
                    Arg::Read(v.0.buffer(), v0),
                    Arg::Read(&q_off, 0),
                    Arg::Read(&kv_off, 0),
                    Arg::Read(&tile_table, 0),
                    Arg::Write(&out),
                ],
            )?;
        }
    }
    Ok((
        MetalStorage::new(out, device.clone(), count, dtype),
        Shape::from_dims(&[nq, heads, d]),
    ))
}
