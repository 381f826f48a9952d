//! `metal_fwd` of the neighbour-map op (src/ops/neighbour_map/mod.rs): the clear, insert and
//! lookup dispatches of kernels/metal/neighbour_map.metal over a fresh hash table.

use crate::ops::metal::encode::{encode, Arg};
use crate::ops::metal::pipelines::{pipeline, Source};
use crate::ops::vocab::{Dispatch, NeighbourArgs, NeighbourPlan, TAPS};
use candle_core::backend::BackendStorage;
use candle_core::{bail, DType, Layout, MetalStorage, Result, Shape};

/// coords `[T,4]` i32 → `[T·27 + 2]` u32: the map, then the status words (smallest row whose
/// voxel was already in the table or `u32::MAX`; existing pairs).
pub(crate) fn forward(
    coords: &MetalStorage,
    layout: &Layout,
    plan: &NeighbourPlan,
) -> Result<(MetalStorage, Shape)> {
    if coords.dtype() != DType::I32 {
        bail!(
            "neighbour map (metal): coords must be i32, got {:?}",
            coords.dtype()
        );
    }
    let Some((c0, _)) = layout.contiguous_offsets() else {
        bail!("neighbour map (metal): coords must be contiguous");
    };
    let (n, _) = layout.shape().dims2()?;
    let [clear, insert, lookup] = plan.dispatches.as_slice() else {
        bail!("neighbour map (metal): an empty set has no dispatches; build it on the host");
    };
    let device = coords.device();
    let count = n * TAPS + 2;
    let buffer = |len: usize, label: &str| {
        device
            .new_buffer_builder()
            .with_size_for(len, DType::U32)
            .with_label(label)
            .build()
    };
    let out = buffer(count, "neighbour_map")?;
    let keys = buffer(plan.capacity, "neighbour_map keys")?;
    let rows = buffer(plan.capacity, "neighbour_map rows")?;
    let status = n * TAPS * 4;
    let coords_at = c0 * 4;
    let run = |d: &Dispatch<NeighbourArgs>, args: &[Arg<'_>]| -> Result<()> {
        let p = pipeline(device, Source::NeighbourMap, &d.kernel)?;
        encode(device, &p, "neighbour_map", d, args)
    };
    run(clear, &[Arg::Write(&keys), Arg::WriteAt(&out, status)])?;
    run(
        insert,
        &[
            Arg::Read(coords.buffer(), coords_at),
            Arg::Write(&keys),
            Arg::Write(&rows),
            Arg::WriteAt(&out, status),
        ],
    )?;
    run(
        lookup,
        &[
            Arg::Read(coords.buffer(), coords_at),
            Arg::Read(&keys, 0),
            Arg::Read(&rows, 0),
            Arg::Write(&out),
            Arg::WriteAt(&out, status),
        ],
    )?;
    Ok((
        MetalStorage::new(out, device.clone(), count, DType::U32),
        Shape::from(count),
    ))
}
