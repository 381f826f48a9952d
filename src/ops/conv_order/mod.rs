//! The voxel order the CUDA and Metal sparse convs tile by: voxels sorted by their 27-bit
//! neighbour mask, so that the rows of a tile mostly share their taps and the kernel skips the
//! taps none of them has (≈ 17–21 of 27 on decoder shells instead of ≈ 27). Which sets are
//! sorted, and in which windows, is the policy of `sparse::conv_order`.
//!
//! One definition, three builders. The order is a custom op on the `[T,27]` map: its CPU forward
//! is the host sort below, the reference that the GPU radix sorts (`kernels/cuda/conv_order.cu`,
//! `kernels/metal/conv_order.metal`, one plan: `ops::vocab::conv_sort`) must equal word for word, for any
//! window, on the map's device (the map never leaves it).

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::ops::storage::u32_operand;
use crate::ops::vocab::{ABSENT, TAPS};

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "metal")]
mod metal;

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

/// The voxel count of a `[T, 27]` neighbour map, or the error naming its shape.
fn map_rows(map: &Tensor) -> Result<usize> {
    let (rows, taps) = map.dims2()?;
    if taps != TAPS {
        bail!(
            "conv order: the neighbour map must be [T, {TAPS}], got {:?}",
            map.dims()
        );
    }
    Ok(rows)
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
        cuda::conv_order(s, l, self.window)
    }

    /// kernels/metal/conv_order.metal: the same radix sort, tested against `cpu_fwd` in
    /// tests/metal_emu.rs.
    #[cfg(feature = "metal")]
    fn metal_fwd(
        &self,
        s: &candle_core::MetalStorage,
        l: &Layout,
    ) -> Result<(candle_core::MetalStorage, Shape)> {
        metal::conv_order(s, l, self.window)
    }
}

/// A permutation of the `T` voxels of the `[T,27]` neighbour map `map`, `[T]` u32 on the map's
/// device: within each run of `window` consecutive voxels (`window ≥ 1`; `≥ T`: one run), the
/// voxels sorted by their neighbour mask, ties in voxel order. Built on the map's device: the
/// host sort on the CPU, a radix sort kernel on CUDA and Metal.
pub fn sorted_by_mask(map: &Tensor, window: usize) -> Result<Tensor> {
    let rows = map_rows(map)?;
    let op = ConvOrder {
        window: window.clamp(1, rows.max(1)),
    };
    map.contiguous()?.apply_op1_no_bwd(&op)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorting_is_stable_by_mask_within_windows() {
        let masks = [3, 1, 3, 0, 2, 1, 0];
        assert_eq!(sort_by_mask(&masks, 7), [3, 6, 1, 5, 4, 0, 2]);
        assert_eq!(sort_by_mask(&masks, 3), [1, 0, 2, 3, 5, 4, 6]);
        assert_eq!(sort_by_mask(&masks, 1), [0, 1, 2, 3, 4, 5, 6]);
    }
}
