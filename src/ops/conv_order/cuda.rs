//! The sparse conv's voxel order on the GPU (`kernels/cuda/conv_order.cu`): neighbour masks, then
//! a stable LSD radix sort of the voxel ids by (window, mask), RADIX_BITS bits a pass. The CPU
//! reference is the host sort of `src/ops/conv_order/mod.rs`, which it equals word for word.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{bail, CudaStorage, Layout, Result, Shape};

use crate::ops::cuda::{kernel, output, span, CONV_ORDER};
use crate::ops::vocab::TAPS;

use crate::ops::vocab::conv_sort::{sort_plan, RADIX, RADIX_BITS, SORT_THREADS};

/// Threads of the one-block scan (`SCAN_THREADS`).
const SCAN_THREADS: u32 = 1024;
/// At most this many blocks a pass (four per SM of an H100): enough to fill the GPU, few
/// enough that the one-block scan of the `RADIX × blocks` histogram stays short (≈ 33 rounds).
const MAX_SORT_BLOCKS: usize = 528;

/// The conv order of the `[T,27]` u32 neighbour map `map`: `[T]` u32, within runs of `window`
/// consecutive voxels the voxels sorted by neighbour mask, ties in voxel order.
pub(crate) fn conv_order(
    map: &CudaStorage,
    l: &Layout,
    window: usize,
) -> Result<(CudaStorage, Shape)> {
    const OP: &str = "conv order (CUDA)";
    let (n, taps) = l.shape().dims2()?;
    if taps != TAPS {
        bail!("{OP}: expected a [T, {TAPS}] map, got {:?}", l.shape());
    }
    if window == 0 {
        bail!("{OP}: the window must hold at least one voxel");
    }
    // Item positions and block ends stay below 2^32 (a T·27-entry map is far smaller).
    if n > u32::MAX as usize / 2 {
        bail!("{OP}: {n} voxels exceed the sort's u32 positions");
    }
    let (a, z) = span(l, OP, "neighbour map")?;
    let CudaStorageSlice::U32(m) = &map.slice else {
        bail!("{OP}: expected a u32 map, got {:?}", map.dtype());
    };
    let dev = map.device().clone();
    let shape = Shape::from(n);
    if n == 0 {
        return Ok((
            CudaStorage::wrap_cuda_slice(output::<u32>(&dev, 0)?, dev.clone()),
            shape,
        ));
    }
    let load = |name: &str| kernel(&dev, &CONV_ORDER, name);
    let n_ = n as u32;
    let masks = output::<u32>(&dev, n)?;
    {
        let func = load("conv_order_masks")?;
        let m = m.slice(a..z);
        let mut b = func.builder();
        b.arg(&m).arg(&masks).arg(&n_);
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(SORT_THREADS) as u32, 1, 1),
            block_dim: (SORT_THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: reads map[T·27] (the span above) and writes masks[0..T], owned here.
        unsafe { b.launch(cfg) }.w()?;
    }
    let plan = sort_plan(n, window, MAX_SORT_BLOCKS);
    let hist_len = RADIX * plan.blocks;
    // Every histogram launch writes all of it before the scan and the scatter read it.
    let hist = output::<u32>(&dev, hist_len)?;
    // Pass p writes items[p % 2] and reads items[(p + 1) % 2] (the first pass: the identity).
    let items: [CudaSlice<u32>; 2] = [output::<u32>(&dev, n)?, output::<u32>(&dev, n)?];
    let (window_, per_block_, hist_len_) = (
        window.min(n) as u32,
        plan.items_per_block as u32,
        hist_len as u32,
    );
    let sort_cfg = LaunchConfig {
        grid_dim: (plan.blocks as u32, 1, 1),
        block_dim: (SORT_THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let (histogram, scan, scatter) = (
        load("conv_order_histogram")?,
        load("conv_order_scan")?,
        load("conv_order_scatter")?,
    );
    for pass in 0..plan.passes {
        let shift = pass * RADIX_BITS;
        let (dst, src) = (&items[pass as usize % 2], &items[(pass as usize + 1) % 2]);
        {
            let mut b = histogram.builder();
            b.arg(&masks);
            if pass == 0 {
                b.arg(&0u64); // null: item i is voxel i
            } else {
                b.arg(src);
            }
            b.arg(&hist)
                .arg(&n_)
                .arg(&window_)
                .arg(&shift)
                .arg(&per_block_);
            // SAFETY: block b reads src[b·per_block .. min(T, (b+1)·per_block)] and masks at
            // those voxels (< T: src is a permutation of 0..T), and writes hist[d·blocks + b]
            // for d < RADIX: all inside the buffers.
            unsafe { b.launch(sort_cfg) }.w()?;
        }
        {
            let mut b = scan.builder();
            b.arg(&hist).arg(&hist_len_);
            let cfg = LaunchConfig {
                grid_dim: (1, 1, 1),
                block_dim: (SCAN_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: one block rewrites hist[0..hist_len] in place.
            unsafe { b.launch(cfg) }.w()?;
        }
        {
            let mut b = scatter.builder();
            b.arg(&masks);
            if pass == 0 {
                b.arg(&0u64);
            } else {
                b.arg(src);
            }
            b.arg(dst).arg(&hist).arg(&n_).arg(&window_).arg(&shift);
            b.arg(&per_block_);
            // SAFETY: reads as the histogram did; every item goes to a distinct slot below T
            // (the scanned counts of the same digits), so dst[0..T] is written exactly once.
            unsafe { b.launch(sort_cfg) }.w()?;
        }
    }
    let [even, odd] = items;
    let sorted = if plan.passes % 2 == 1 { even } else { odd };
    Ok((CudaStorage::wrap_cuda_slice(sorted, dev.clone()), shape))
}
