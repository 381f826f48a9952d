//! The policy of the voxel order the CUDA sparse conv tiles by (`NeighbourMap::conv_order`):
//! which sets are sorted and in which windows (`TRELLIS2_CONV_SORT`, read through `ops::tuning`).
//! The order itself is the op `ops::conv_order`.

/// Sets with fewer voxels keep their order on CUDA: sorting saves less than building the order
/// (a few small launches) costs.
pub const SORT_MIN_ROWS: usize = 4096;

/// Default sorting window: the features of one window's voxels should fit in this many bytes
/// (about the H100's 50 MB L2 with room for the weights), so that the tiles running at once
/// gather rows from a bounded region instead of the whole set.
const SORT_WINDOW_BYTES: usize = 32 << 20;

/// The smallest default window: smaller ones lose most of the sort's tap savings.
const SORT_MIN_WINDOW: usize = 16_384;

/// The default sorting window for feature rows of `row_bytes` bytes: the largest power of two of
/// voxels whose rows fit [`SORT_WINDOW_BYTES`], at least [`SORT_MIN_WINDOW`].
pub fn default_sort_window(row_bytes: usize) -> usize {
    let w = (SORT_WINDOW_BYTES / row_bytes.max(1)).max(1);
    (1usize << w.ilog2()).max(SORT_MIN_WINDOW)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_windows_are_powers_of_two_of_at_least_16k_voxels() {
        assert_eq!(default_sort_window(2048), 16_384);
        assert_eq!(default_sort_window(256), 131_072);
        assert_eq!(default_sort_window(128), 262_144);
        assert_eq!(default_sort_window(1 << 30), SORT_MIN_WINDOW);
    }
}
