//! The voxel order the CUDA sparse conv tiles by (`NeighbourMap::conv_order`): voxels sorted by
//! their 27-bit neighbour mask, so that the 128 rows of a tile mostly share their taps and the
//! kernel skips the taps none of them has (≈ 17–21 of 27 on decoder shells instead of ≈ 27).
//!
//! The order is a custom op on the `[T,27]` map: its CPU forward is the host sort below, the
//! reference that the CUDA radix sort (`kernels/cuda/conv_order.cu`) must equal word for word;
//! other devices sort on the host. Also here: the default window of the sorting policy
//! (`TRELLIS2_CONV_SORT`, read through `ops::tuning`).

use candle_core::{bail, CpuStorage, CustomOp1, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::neighbours::{ABSENT, TAPS};
use crate::ops::cpu_storage::u32_operand;

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

/// Each voxel's neighbour-presence mask (bit k: tap k present) from a `[T,27]` map.
fn masks(map: &[u32]) -> Vec<u32> {
    map.par_chunks(TAPS)
        .map(|row| {
            row.iter()
                .enumerate()
                .fold(0u32, |m, (k, &v)| m | (u32::from(v != ABSENT) << k))
        })
        .collect()
}

/// `order[p]` = the voxel of tile row `p`: within consecutive windows of `window` voxels,
/// voxels sorted by their neighbour mask, ties in voxel order (deterministic: the keys are
/// unique).
fn sort_by_mask(masks: &[u32], window: usize) -> Vec<u32> {
    let mut keys: Vec<u64> = masks
        .par_iter()
        .enumerate()
        .map(|(v, &m)| ((m as u64) << 32) | v as u64)
        .collect();
    if window >= keys.len() {
        keys.par_sort_unstable();
    } else {
        keys.par_chunks_mut(window.max(1))
            .for_each(|w| w.sort_unstable());
    }
    keys.into_par_iter().map(|k| k as u32).collect()
}

/// The op: `[T,27]` u32 map → `[T]` u32 order, windows of `window ≥ 1` voxels.
struct ConvOrder {
    window: usize,
}

impl CustomOp1 for ConvOrder {
    fn name(&self) -> &'static str {
        "conv-order"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let map = u32_operand(s, l, "conv order", "the neighbour map")?;
        let order = sort_by_mask(&masks(map), self.window);
        let n = order.len();
        Ok((CpuStorage::U32(order), Shape::from(n)))
    }

    /// kernels/cuda/conv_order.cu: a stable radix sort by (window, mask) on the device, tested
    /// against `cpu_fwd` in tests/cuda_kernels.rs.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::ops::cuda::conv_order(s, l, self.window)
    }
}

/// A permutation of the `T` voxels of the `[T,27]` neighbour map `map`, `[T]` u32 on the map's
/// device: within each run of `window` consecutive voxels (`window ≥ 1`; `≥ T`: one run), the
/// voxels sorted by their neighbour mask, ties in voxel order. Built on the GPU on CUDA, on the
/// host (and uploaded) elsewhere.
pub(crate) fn sorted_by_mask(map: &Tensor, window: usize) -> Result<Tensor> {
    let (rows, taps) = map.dims2()?;
    if taps != TAPS {
        bail!(
            "conv order: the neighbour map must be [T, {TAPS}], got {:?}",
            map.dims()
        );
    }
    let op = ConvOrder {
        window: window.clamp(1, rows.max(1)),
    };
    if map.device().is_cuda() {
        return map.contiguous()?.apply_op1_no_bwd(&op);
    }
    map.to_device(&Device::Cpu)?
        .contiguous()?
        .apply_op1_no_bwd(&op)?
        .to_device(map.device())
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
    fn sorting_is_stable_by_mask_within_windows() {
        let masks = [3, 1, 3, 0, 2, 1, 0];
        assert_eq!(sort_by_mask(&masks, 7), [3, 6, 1, 5, 4, 0, 2]);
        assert_eq!(sort_by_mask(&masks, 3), [1, 0, 2, 3, 5, 4, 6]);
        assert_eq!(sort_by_mask(&masks, 1), [0, 1, 2, 3, 4, 5, 6]);
    }
}
