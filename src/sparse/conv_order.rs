//! The policy of the voxel order the CUDA and Metal sparse convs tile by
//! (`NeighbourMap::conv_order`): which sets are sorted and in which windows
//! (`TRELLIS2_CONV_SORT`, read through `ops::tuning`). The order itself is `ops::conv_order`.

use candle_core::Device;

use crate::ops::tuning::ConvSort;

/// Sets with fewer voxels keep their order: sorting saves less than building the order
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

/// The window the conv's voxel order sorts `rows` voxels in on `device`, for feature rows of
/// `row_bytes` bytes under the setting `sort`, or `None` for the voxels' own order: on the CPU
/// (whose conv tiles in voxel order), below [`SORT_MIN_ROWS`] voxels, or with `off`. CUDA takes
/// `full` (one window), a given window or, by default, [`default_sort_window`]; Metal takes the
/// same (both build the order with one radix-sort plan, `ops::vocab::conv_sort`).
pub fn conv_sort_window(
    device: &Device,
    rows: usize,
    row_bytes: usize,
    sort: ConvSort,
) -> Option<usize> {
    if device.is_cpu() {
        None
    } else {
        gpu_sort_window(rows, row_bytes, sort)
    }
}

/// [`conv_sort_window`] on a GPU (backend-free, for the host's Metal dispatch plans too).
pub fn gpu_sort_window(rows: usize, row_bytes: usize, sort: ConvSort) -> Option<usize> {
    if rows < SORT_MIN_ROWS {
        return None;
    }
    match sort {
        ConvSort::Off => None,
        ConvSort::Full => Some(usize::MAX),
        ConvSort::Window(w) => Some(w),
        ConvSort::Auto => Some(default_sort_window(row_bytes)),
    }
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

    #[test]
    fn the_cpu_and_small_sets_keep_their_order() {
        let cpu = Device::Cpu;
        assert_eq!(conv_sort_window(&cpu, 1 << 20, 256, ConvSort::Auto), None);
        assert_eq!(conv_sort_window(&cpu, 1 << 20, 256, ConvSort::Full), None);
        assert_eq!(gpu_sort_window(4095, 256, ConvSort::Auto), None);
        assert_eq!(gpu_sort_window(4096, 256, ConvSort::Off), None);
        assert_eq!(gpu_sort_window(1 << 20, 256, ConvSort::Auto), Some(131_072));
        assert_eq!(
            gpu_sort_window(1 << 20, 256, ConvSort::Full),
            Some(usize::MAX)
        );
        assert_eq!(
            gpu_sort_window(1 << 20, 256, ConvSort::Window(64)),
            Some(64)
        );
    }
}
