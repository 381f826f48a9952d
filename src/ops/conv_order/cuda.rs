//! The sparse conv's voxel order on the GPU (`kernels/cuda/conv_order.cu`): neighbour masks, then
//! a stable LSD radix sort of the voxel ids by (window, mask), RADIX_BITS bits a pass. The CPU
//! reference is the host sort of `src/ops/conv_order/mod.rs`, which it equals word for word.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{bail, CudaStorage, Layout, Result, Shape};

use crate::ops::cuda::{output, span, CONV_ORDER};
use crate::ops::vocab::TAPS;

/// Key bits a pass, and digits (`RADIX_BITS`, `RADIX` in the kernel).
const RADIX_BITS: u32 = 8;
const RADIX: usize = 1 << RADIX_BITS;
/// Bits of a neighbour mask: the low bits of the key (`MASK_BITS`).
const MASK_BITS: u32 = 27;
/// Threads per block of the mask, histogram and scatter kernels (`SORT_THREADS`).
const SORT_THREADS: usize = 256;
/// Threads of the one-block scan (`SCAN_THREADS`).
const SCAN_THREADS: u32 = 1024;
/// At most this many blocks a pass (four per SM of an H100): enough to fill the GPU, few
/// enough that the one-block scan of the `RADIX × blocks` histogram stays short (≈ 33 rounds).
const MAX_SORT_BLOCKS: usize = 528;
/// At least this many items a block, so small sets do not pay for many near-empty blocks.
const MIN_ITEMS_PER_BLOCK: usize = 4 * SORT_THREADS;

/// How a set of `n ≥ 1` voxels is sorted in windows of `window ≥ 1`: key bits, passes, and the
/// blocks each pass runs with their contiguous runs of items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SortPlan {
    passes: u32,
    blocks: usize,
    items_per_block: usize,
}

fn sort_plan(n: usize, window: usize) -> SortPlan {
    // Window ids 0 ..= (n − 1) / window take this many bits above the mask.
    let window_bits = usize::BITS - ((n - 1) / window).leading_zeros();
    let passes = (MASK_BITS + window_bits).div_ceil(RADIX_BITS);
    let items_per_block = n
        .div_ceil(MAX_SORT_BLOCKS)
        .next_multiple_of(SORT_THREADS)
        .max(MIN_ITEMS_PER_BLOCK);
    SortPlan {
        passes,
        blocks: n.div_ceil(items_per_block),
        items_per_block,
    }
}

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
    let load = |name: &str| dev.get_or_load_custom_func(name, CONV_ORDER.name, CONV_ORDER.text);
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
    let plan = sort_plan(n, window);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_add_window_bits_above_the_mask() {
        // One window: the 27 mask bits in four passes.
        assert_eq!(sort_plan(1, 1).passes, 4);
        assert_eq!(sort_plan(1_200_000, 1_200_000).passes, 4);
        // 10 windows (4 bits): 31 bits; 32 windows: 32 bits; 33: five passes.
        assert_eq!(sort_plan(1_200_000, 131_072).passes, 4);
        assert_eq!(sort_plan(32 << 16, 1 << 16).passes, 4);
        assert_eq!(sort_plan((32 << 16) + 1, 1 << 16).passes, 5);
        // Windows of one voxel over 8 M voxels: 27 + 23 bits.
        assert_eq!(sort_plan(8 << 20, 1).passes, 7);
    }

    #[test]
    fn plans_cover_every_item_with_at_most_528_blocks() {
        for n in [1, 255, 1024, 1025, 300_000, 1_200_000, 8 << 20, 100_000_000] {
            let p = sort_plan(n, n);
            assert!(p.blocks <= MAX_SORT_BLOCKS && p.blocks >= 1, "{n}: {p:?}");
            assert!(p.blocks * p.items_per_block >= n, "{n}: {p:?}");
            assert!((p.blocks - 1) * p.items_per_block < n, "{n}: {p:?}");
            assert_eq!(p.items_per_block % SORT_THREADS, 0);
        }
    }
}
