//! The radix sort's plan, shared by `kernels/cuda/conv_order.cu` (`cuda.rs`) and
//! `kernels/metal/conv_order.metal` (`ops::metal::conv_order_plan`): key bits, passes, and the
//! blocks (threadgroups) each pass runs with their contiguous runs of items. Backend-free.

/// Key bits a pass, and digits (`RADIX_BITS`, `RADIX` in the kernels).
pub const RADIX_BITS: u32 = 8;
pub const RADIX: usize = 1 << RADIX_BITS;
/// Bits of a neighbour mask: the low bits of the key (`MASK_BITS`).
pub const MASK_BITS: u32 = 27;
/// Threads per block (threadgroup) of the mask, histogram and scatter kernels: one per digit.
pub const SORT_THREADS: usize = 256;
/// At least this many items a block, so small sets do not pay for many near-empty blocks.
pub const MIN_ITEMS_PER_BLOCK: usize = 4 * SORT_THREADS;

/// How a set of `n ≥ 1` voxels is sorted in windows of `window ≥ 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortPlan {
    pub passes: u32,
    pub blocks: usize,
    pub items_per_block: usize,
}

/// The plan for `n ≥ 1` voxels in windows of `window ≥ 1`, with at most `max_blocks` blocks a
/// pass (enough to fill the GPU, few enough that the one-block scan of the `RADIX × blocks`
/// histogram stays short).
pub fn sort_plan(n: usize, window: usize, max_blocks: usize) -> SortPlan {
    // Window ids 0 ..= (n − 1) / window take this many bits above the mask.
    let window_bits = usize::BITS - ((n - 1) / window).leading_zeros();
    let passes = (MASK_BITS + window_bits).div_ceil(RADIX_BITS);
    let items_per_block = n
        .div_ceil(max_blocks)
        .next_multiple_of(SORT_THREADS)
        .max(MIN_ITEMS_PER_BLOCK);
    SortPlan {
        passes,
        blocks: n.div_ceil(items_per_block),
        items_per_block,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_add_window_bits_above_the_mask() {
        // One window: the 27 mask bits in four passes.
        assert_eq!(sort_plan(1, 1, 528).passes, 4);
        assert_eq!(sort_plan(1_200_000, 1_200_000, 528).passes, 4);
        // 10 windows (4 bits): 31 bits; 32 windows: 32 bits; 33: five passes.
        assert_eq!(sort_plan(1_200_000, 131_072, 528).passes, 4);
        assert_eq!(sort_plan(32 << 16, 1 << 16, 528).passes, 4);
        assert_eq!(sort_plan((32 << 16) + 1, 1 << 16, 528).passes, 5);
        // Windows of one voxel over 8 M voxels: 27 + 23 bits.
        assert_eq!(sort_plan(8 << 20, 1, 528).passes, 7);
    }

    #[test]
    fn plans_cover_every_item_with_at_most_max_blocks() {
        for max_blocks in [128, 528] {
            for n in [1, 255, 1024, 1025, 300_000, 1_200_000, 8 << 20, 100_000_000] {
                let p = sort_plan(n, n, max_blocks);
                assert!(p.blocks <= max_blocks && p.blocks >= 1, "{n}: {p:?}");
                assert!(p.blocks * p.items_per_block >= n, "{n}: {p:?}");
                assert!((p.blocks - 1) * p.items_per_block < n, "{n}: {p:?}");
                assert_eq!(p.items_per_block % SORT_THREADS, 0);
            }
        }
    }
}
