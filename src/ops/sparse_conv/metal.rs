//! `metal_fwd` of the submanifold conv (src/ops/sparse_conv/mod.rs): kernels/metal/sparse_conv.metal
//! over the plan of `dispatch::sparse_conv_dispatches` (one dispatch of every voxel tile ×
//! output-channel tile unless the conv alone exceeds the command-buffer budget). The kernel adds
//! the f32 bias in its epilogue, and its tiles follow the voxel order when one is given.

use crate::ops::metal::budget::COMMAND_BUFFER_SECONDS;
use crate::ops::metal::dispatch::{
    conv_vec_loads, shell_live_taps, sparse_conv_dispatches, ConvRows,
};
use crate::ops::metal::encode::{encode, Arg};
use crate::ops::metal::pipelines::{pipeline, Source};
use candle_core::backend::BackendStorage;
use candle_core::{bail, DType, Layout, MetalStorage, Result, Shape};

fn start(l: &Layout, what: &str, dtype: DType) -> Result<usize> {
    match l.contiguous_offsets() {
        Some((a, _)) => Ok(a * dtype.size_in_bytes()),
        None => bail!("submanifold_conv3d (metal): {what} must be contiguous"),
    }
}

/// feats `[T,Ci]`, weight `[Co,27,Ci]` (same dtype, f32/f16/bf16), map `[T,27]` u32, bias
/// `[Co]` f32, optional voxel order `[T]` u32 → `[T,Co]`.
pub(crate) fn forward(
    (feats, fl): (&MetalStorage, &Layout),
    (weight, wl): (&MetalStorage, &Layout),
    (map, ml): (&MetalStorage, &Layout),
    (bias, bl): (&MetalStorage, &Layout),
    order: Option<(&MetalStorage, &Layout)>,
) -> Result<(MetalStorage, Shape)> {
    let dtype = feats.dtype();
    if weight.dtype() != dtype || map.dtype() != DType::U32 || bias.dtype() != DType::F32 {
        bail!(
            "submanifold_conv3d (metal): feats {dtype:?} and weight {:?} must match, map must be \
             u32 and bias f32 (got {:?}, {:?})",
            weight.dtype(),
            map.dtype(),
            bias.dtype()
        );
    }
    let (n, ci) = fl.shape().dims2()?;
    let co = wl.shape().dims()[0];
    if bl.shape().dims() != [co] {
        bail!(
            "submanifold_conv3d (metal): bias must be [{co}], got {:?}",
            bl.shape().dims()
        );
    }
    let (f0, w0, m0, b0) = (
        start(fl, "feats", dtype)?,
        start(wl, "weight", dtype)?,
        start(ml, "neighbour map", DType::U32)?,
        start(bl, "bias", DType::F32)?,
    );
    // Without an order the kernel never reads its buffer; the map stands in for it.
    let (order, o0) = match order {
        Some((o, ol)) => {
            if o.dtype() != DType::U32 || ol.shape().dims() != [n] {
                bail!(
                    "submanifold_conv3d (metal): the voxel order must be u32 [{n}], got {:?} {:?}",
                    o.dtype(),
                    ol.shape().dims()
                );
            }
            (o, Some(start(ol, "voxel order", DType::U32)?))
        }
        None => (map, None),
    };
    let elem = dtype.size_in_bytes();
    let rows = ConvRows {
        vec_loads: conv_vec_loads(ci, &[f0 / elem, w0 / elem]),
        ordered: o0.is_some(),
    };
    // The map is on the device; counting its live taps would be a host sync, so the plan
    // takes a surface's count (in the voxel order when there is one).
    let plan = sparse_conv_dispatches(
        n,
        ci,
        co,
        dtype,
        shell_live_taps(rows.ordered),
        COMMAND_BUFFER_SECONDS,
        rows,
    )?;
    let device = feats.device();
    let out = device
        .new_buffer_builder()
        .with_size_for((n * co).max(1), dtype)
        .with_label("submanifold_conv3d")
        .build()?;
    if let Some(first) = plan.first() {
        let pipeline = pipeline(device, Source::SparseConv, &first.kernel)?;
        for d in &plan {
            encode(
                device,
                &pipeline,
                "submanifold_conv3d",
                d,
                &[
                    Arg::Read(feats.buffer(), f0),
                    Arg::Read(weight.buffer(), w0),
                    Arg::Read(map.buffer(), m0),
                    Arg::Read(bias.buffer(), b0),
                    Arg::Write(&out),
                    Arg::Read(order.buffer(), o0.unwrap_or(m0)),
                ],
            )?;
        }
    }
    Ok((
        MetalStorage::new(out, device.clone(), n * co, dtype),
        Shape::from((n, co)),
    ))
}
