//! `metal_fwd` of the submanifold conv (src/ops/sparse_conv/mod.rs): kernels/metal/sparse_conv.metal
//! over the split plan of `dispatch::sparse_conv_dispatches`.

use crate::ops::metal::dispatch::{sparse_conv_dispatches, MAX_MACS_PER_DISPATCH};
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

/// feats `[T,Ci]`, weight `[Co,27,Ci]` (same dtype, f32/f16/bf16), map `[T,27]` u32 → `[T,Co]`.
pub(crate) fn forward(
    feats: &MetalStorage,
    fl: &Layout,
    weight: &MetalStorage,
    wl: &Layout,
    map: &MetalStorage,
    ml: &Layout,
) -> Result<(MetalStorage, Shape)> {
    let dtype = feats.dtype();
    if weight.dtype() != dtype || map.dtype() != DType::U32 {
        bail!(
            "submanifold_conv3d (metal): feats {dtype:?} and weight {:?} must match, map must be \
             u32 (got {:?})",
            weight.dtype(),
            map.dtype()
        );
    }
    let (n, ci) = fl.shape().dims2()?;
    let co = wl.shape().dims()[0];
    let (f0, w0, m0) = (
        start(fl, "feats", dtype)?,
        start(wl, "weight", dtype)?,
        start(ml, "neighbour map", DType::U32)?,
    );
    let plan = sparse_conv_dispatches(n, ci, co, dtype, MAX_MACS_PER_DISPATCH)?;
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
                    Arg::Write(&out),
                ],
            )?;
        }
    }
    Ok((
        MetalStorage::new(out, device.clone(), n * co, dtype),
        Shape::from((n, co)),
    ))
}
