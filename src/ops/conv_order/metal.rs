//! `metal_fwd` of the conv order (src/ops/conv_order/mod.rs): the mask dispatch and the radix
//! passes of kernels/metal/conv_order.metal, planned by `ops::metal::conv_order_plan`.

use crate::ops::metal::conv_order_plan::{conv_order_plan, ConvOrderArgs};
use crate::ops::metal::encode::{encode, Arg};
use crate::ops::metal::pipelines::{pipeline, Source};
use crate::ops::vocab::{Dispatch, TAPS};
use candle_core::backend::BackendStorage;
use candle_core::{bail, DType, Layout, MetalStorage, Result, Shape};

/// The `[T,27]` u32 map → `[T]` u32 order in windows of `window ≥ 1` voxels.
pub(crate) fn conv_order(
    map: &MetalStorage,
    layout: &Layout,
    window: usize,
) -> Result<(MetalStorage, Shape)> {
    const OP: &str = "conv order (metal)";
    if map.dtype() != DType::U32 {
        bail!("{OP}: the neighbour map must be u32, got {:?}", map.dtype());
    }
    let Some((m0, _)) = layout.contiguous_offsets() else {
        bail!("{OP}: the neighbour map must be contiguous");
    };
    let (n, taps) = layout.shape().dims2()?;
    if taps != TAPS {
        bail!("{OP}: expected a [T, {TAPS}] map, got {:?}", layout.shape());
    }
    let device = map.device();
    let buffer = |len: usize, label: &str| {
        device
            .new_buffer_builder()
            .with_size_for(len.max(1), DType::U32)
            .with_label(label)
            .build()
    };
    let Some(plan) = conv_order_plan(n, window)? else {
        let empty = buffer(0, "conv_order")?;
        return Ok((
            MetalStorage::new(empty, device.clone(), 0, DType::U32),
            Shape::from(0),
        ));
    };
    let masks = buffer(n, "conv_order masks")?;
    let hist = buffer(plan.hist_len, "conv_order hist")?;
    let items = [buffer(n, "conv_order")?, buffer(n, "conv_order")?];
    let run = |d: &Dispatch<ConvOrderArgs>, args: &[Arg<'_>]| -> Result<()> {
        let p = pipeline(device, Source::ConvOrder, &d.kernel)?;
        encode(device, &p, "conv_order", d, args)
    };
    run(
        &plan.masks,
        &[Arg::Read(map.buffer(), m0 * 4), Arg::Write(&masks)],
    )?;
    for (p, pass) in plan.passes.iter().enumerate() {
        // The first pass reads no items (`identity`); the masks stand in for the binding.
        let (dst, src) = (&items[p % 2], &items[(p + 1) % 2]);
        let src = if p == 0 { &masks } else { src };
        run(
            &pass.histogram,
            &[Arg::Read(&masks, 0), Arg::Read(src, 0), Arg::Write(&hist)],
        )?;
        run(&pass.scan, &[Arg::Write(&hist)])?;
        run(
            &pass.scatter,
            &[
                Arg::Read(&masks, 0),
                Arg::Read(src, 0),
                Arg::Write(dst),
                Arg::Read(&hist, 0),
            ],
        )?;
    }
    let [even, odd] = items;
    let sorted = if plan.passes.len() % 2 == 1 {
        even
    } else {
        odd
    };
    Ok((
        MetalStorage::new(sorted, device.clone(), n, DType::U32),
        Shape::from(n),
    ))
}
