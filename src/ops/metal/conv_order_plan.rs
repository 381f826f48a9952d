//! Dispatch plan of the conv's voxel order on Metal (kernels/metal/conv_order.metal): a mask
//! dispatch, then per radix pass a histogram, a one-threadgroup scan and a scatter, with the
//! passes and blocks of the sort plan CUDA uses (`ops::vocab::conv_sort`). Backend-free, so the
//! emulator runs these plans.

use super::dispatch::{Dispatch, Work};
pub use super::kargs::ConvOrderArgs;
use crate::ops::vocab::conv_sort::{sort_plan, RADIX, RADIX_BITS, SORT_THREADS};
use candle_core::{bail, Result};

/// At most this many threadgroups a pass: about three per GPU core of the largest Apple GPUs
/// (76–80 cores), and a `RADIX × 256` histogram the one-threadgroup scan covers in 64 rounds.
pub const MAX_SORT_BLOCKS: usize = 256;

/// Threadgroup memory of the histogram (`[8][256]` counts), the scatter (two round buffers of
/// `[8][256]` first slots) and the scan (eight simdgroup totals, padded to 16 bytes).
pub const HISTOGRAM_TG_BYTES: usize = 8 * RADIX * 4;
pub const SCATTER_TG_BYTES: usize = 2 * 8 * RADIX * 4;
pub const SCAN_TG_BYTES: usize = 32;

/// One radix pass: its three dispatches, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvOrderPass {
    pub histogram: Dispatch<ConvOrderArgs>,
    pub scan: Dispatch<ConvOrderArgs>,
    pub scatter: Dispatch<ConvOrderArgs>,
}

/// The mask dispatch and the passes; pass `p` writes items buffer `p % 2` and reads buffer
/// `(p + 1) % 2` (the first pass reads none), so the order ends in buffer `(passes − 1) % 2`.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvOrderPlan {
    pub masks: Dispatch<ConvOrderArgs>,
    pub passes: Vec<ConvOrderPass>,
    /// Words of the histogram buffer (`RADIX × blocks`).
    pub hist_len: usize,
}

/// The plan for `n` voxels in windows of `window ≥ 1` (clamped to `n`), or `None` for none.
pub fn conv_order_plan(n: usize, window: usize) -> Result<Option<ConvOrderPlan>> {
    if window == 0 {
        bail!("conv order (metal): the window must hold at least one voxel");
    }
    // Item positions and block ends stay below 2^32; the map's n·27 words below 2^32 too.
    if (n as u64) * 27 >= u32::MAX as u64 {
        bail!("conv order (metal): {n} voxels × 27 taps exceed the kernels' u32 indices");
    }
    if n == 0 {
        return Ok(None);
    }
    let plan = sort_plan(n, window, MAX_SORT_BLOCKS);
    let hist_len = RADIX * plan.blocks;
    let base = ConvOrderArgs {
        n: n as u32,
        window: window.min(n) as u32,
        shift: 0,
        per_block: plan.items_per_block as u32,
        blocks: plan.blocks as u32,
        identity: 1,
        hist_len: hist_len as u32,
    };
    let threads = [SORT_THREADS as u32, 1, 1];
    let dispatch = |kernel: &str, groups: usize, tg: usize, args, bytes: usize| Dispatch {
        kernel: kernel.to_string(),
        threadgroups: [groups as u32, 1, 1],
        threads,
        threadgroup_memory: tg,
        args,
        work: Work::bytes(bytes as f64),
    };
    let masks = dispatch(
        "conv_order_masks_u32",
        n.div_ceil(SORT_THREADS),
        0,
        base,
        n * (27 + 1) * 4,
    );
    let passes = (0..plan.passes)
        .map(|p| {
            let args = ConvOrderArgs {
                shift: p * RADIX_BITS,
                identity: u32::from(p == 0),
                ..base
            };
            // An item: its id and mask word read (twice: histogram and scatter), then written.
            ConvOrderPass {
                histogram: dispatch(
                    "conv_order_histogram_u32",
                    plan.blocks,
                    HISTOGRAM_TG_BYTES,
                    args,
                    n * 8 + hist_len * 4,
                ),
                scan: dispatch("conv_order_scan_u32", 1, SCAN_TG_BYTES, args, hist_len * 8),
                scatter: dispatch(
                    "conv_order_scatter_u32",
                    plan.blocks,
                    SCATTER_TG_BYTES,
                    args,
                    n * 12 + hist_len * 4,
                ),
            }
        })
        .collect();
    Ok(Some(ConvOrderPlan {
        masks,
        passes,
        hist_len,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_alternate_and_the_first_reads_voxel_ids() {
        let plan = conv_order_plan(1_200_000, 131_072).unwrap().unwrap();
        assert_eq!(plan.passes.len(), 4);
        assert_eq!(
            plan.hist_len,
            RADIX * plan.passes[0].histogram.threadgroups[0] as usize
        );
        assert!(plan.passes[0].histogram.threadgroups[0] as usize <= MAX_SORT_BLOCKS);
        for (p, pass) in plan.passes.iter().enumerate() {
            assert_eq!(pass.scatter.args.shift, 8 * p as u32);
            assert_eq!(pass.scatter.args.identity, u32::from(p == 0));
            assert_eq!(pass.scan.threadgroups, [1, 1, 1]);
        }
        assert!(conv_order_plan(0, 7).unwrap().is_none());
        assert!(conv_order_plan(5, 0).is_err());
        // A window past the set is one window: the 27 mask bits alone.
        let one = conv_order_plan(5000, usize::MAX).unwrap().unwrap();
        assert_eq!((one.passes.len(), one.masks.args.window), (4, 5000));
    }
}
