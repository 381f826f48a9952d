//! `metal_fwd` of the modulated deformable im2col (src/ops/deform_conv/mod.rs):
//! kernels/metal/deform_conv.metal over the split plan of `dispatch::deform_im2col_dispatches`.

use crate::ops::metal::dispatch::{deform_im2col_dispatches, MAX_DEFORM_COLUMNS_PER_DISPATCH};
use crate::ops::metal::encode::{encode, Arg};
use crate::ops::metal::pipelines::{pipeline, Source};
use crate::ops::vocab::DeformIm2ColArgs;
use candle_core::backend::BackendStorage;
use candle_core::{bail, DType, Layout, MetalStorage, Result, Shape};

fn start(l: &Layout, what: &str) -> Result<usize> {
    match l.contiguous_offsets() {
        Some((a, _)) => Ok(a * DType::F32.size_in_bytes()),
        None => bail!("deform_conv2d (metal): {what} must be contiguous"),
    }
}

/// input `[B,C,H,W]`, offset `[B,2·G·taps,Ho,Wo]`, mask `[B,G·taps,Ho,Wo]` (all f32) → the band's
/// columns `[B, C·taps, rows·Wo]` f32, for the geometry in `band`.
pub(crate) fn forward(
    input: &MetalStorage,
    il: &Layout,
    offset: &MetalStorage,
    ol: &Layout,
    mask: &MetalStorage,
    ml: &Layout,
    band: DeformIm2ColArgs,
) -> Result<(MetalStorage, Shape)> {
    for (what, s) in [("input", input), ("offset", offset), ("mask", mask)] {
        if s.dtype() != DType::F32 {
            bail!(
                "deform_conv2d (metal): {what} must be f32, got {:?}",
                s.dtype()
            );
        }
    }
    let (i0, o0, m0) = (
        start(il, "input")?,
        start(ol, "offset")?,
        start(ml, "mask")?,
    );
    let plan = deform_im2col_dispatches(band, DType::F32, MAX_DEFORM_COLUMNS_PER_DISPATCH)?;
    let total = band.columns() as usize;
    let device = input.device();
    let out = device
        .new_buffer_builder()
        .with_size_for(total.max(1), DType::F32)
        .with_label("deform_im2col")
        .build()?;
    if let Some(first) = plan.first() {
        let pipeline = pipeline(device, Source::DeformConv, &first.kernel)?;
        for d in &plan {
            encode(
                device,
                &pipeline,
                "deform_im2col",
                d,
                &[
                    Arg::Read(input.buffer(), i0),
                    Arg::Read(offset.buffer(), o0),
                    Arg::Read(mask.buffer(), m0),
                    Arg::Write(&out),
                ],
            )?;
        }
    }
    let taps = (band.kh * band.kw) as usize;
    Ok((
        MetalStorage::new(out, device.clone(), total, DType::F32),
        Shape::from((
            band.batch as usize,
            band.channels as usize * taps,
            (band.rows * band.out_w) as usize,
        )),
    ))
}
