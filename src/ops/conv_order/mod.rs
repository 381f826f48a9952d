//! The voxel order the CUDA sparse conv tiles by: voxels sorted by their 27-bit neighbour mask,
//! so that the 128 rows of a tile mostly share their taps and the kernel skips the taps none of
//! them has (≈ 17–21 of 27 on decoder shells instead of ≈ 27). Which sets are sorted, and in
//! which windows, is the policy of `sparse::conv_order`.
//!
//! One definition, three builders. The order is a custom op on the `[T,27]` map: its CPU forward
//! is the host sort below, the reference that the CUDA radix sort (`kernels/cuda/conv_order.cu`)
//! must equal word for word. Elsewhere (Metal) the same order is composed from candle ops that
//! run on every backend, so the map never leaves the device ([`sorted_by_mask_composed`]): masks
//! as a weighted sum of the present taps, then an arg sort of unique `(mask, voxel)` keys per
//! window; candle's Metal arg sort sorts a row in one threadgroup, so its windows are at most
//! [`COMPOSED_MAX_WINDOW`] voxels.

use candle_core::{bail, CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::ops::storage::u32_operand;
use crate::ops::vocab::{ABSENT, TAPS};

#[cfg(feature = "cuda")]
mod cuda;

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

/// The largest window [`sorted_by_mask_composed`] sorts: candle 0.11's Metal `arg_sort_last_dim`
/// sorts each row in one threadgroup of one thread per element (padded to a power of two), and a
/// threadgroup holds at most 1024 threads.
pub const COMPOSED_MAX_WINDOW: usize = 1024;

/// Each voxel's neighbour mask (bit k: tap k present), `[T]` u32 on the map's device, from candle
/// ops: the present taps weighted by `2^k` and summed (distinct powers of two: the sum is the OR).
pub fn neighbour_masks(map: &Tensor) -> Result<Tensor> {
    let bits: Vec<u32> = (0..TAPS).map(|k| 1u32 << k).collect();
    let bits = Tensor::from_vec(bits, (1, TAPS), map.device())?;
    map.ne(ABSENT)?
        .to_dtype(DType::U32)?
        .broadcast_mul(&bits)?
        .sum(1)
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

/// [`sorted_by_mask`] composed from candle ops on the map's device (no host round trip of the
/// map), for windows of `1 ..= COMPOSED_MAX_WINDOW` voxels: the voxels padded to whole windows,
/// each keyed `mask · window + position in the window` (unique, so the unstable arg sort gives
/// ties in voxel order; the padding keys sort last), arg-sorted per window, offset by the
/// window's first voxel. Equal to the host sort (unit-tested on the CPU).
pub fn sorted_by_mask_composed(map: &Tensor, window: usize) -> Result<Tensor> {
    let rows = map_rows(map)?;
    let device = map.device();
    if rows == 0 {
        return Tensor::zeros(0, DType::U32, device);
    }
    let window = window.clamp(1, rows);
    if window > COMPOSED_MAX_WINDOW {
        bail!("conv order: composed sorts take windows of at most {COMPOSED_MAX_WINDOW} voxels, got {window}");
    }
    let windows = rows.div_ceil(window);
    let pad = windows * window - rows;
    // Keys are below 2^27 · window ≤ 2^37: i64, which every backend's arg sort takes.
    let mut keys = neighbour_masks(map)?.to_dtype(DType::I64)?;
    if pad > 0 {
        let last = Tensor::from_vec(vec![1i64 << 27; pad], pad, device)?;
        keys = Tensor::cat(&[&keys, &last], 0)?;
    }
    let position = Tensor::arange(0i64, window as i64, device)?.reshape((1, window))?;
    let keys = keys
        .reshape((windows, window))?
        .broadcast_mul(&Tensor::new(&[[window as i64]], device)?)?
        .broadcast_add(&position)?
        .contiguous()?;
    let first: Vec<u32> = (0..windows).map(|w| (w * window) as u32).collect();
    let first = Tensor::from_vec(first, (windows, 1), device)?;
    keys.arg_sort_last_dim(true)?
        .broadcast_add(&first)?
        .flatten_all()?
        .narrow(0, 0, rows)
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
}

/// A permutation of the `T` voxels of the `[T,27]` neighbour map `map`, `[T]` u32 on the map's
/// device: within each run of `window` consecutive voxels (`window ≥ 1`; `≥ T`: one run), the
/// voxels sorted by their neighbour mask, ties in voxel order. Built on the GPU on CUDA (a radix
/// sort kernel, faster than candle's arg sort and for any window), from candle ops on other GPUs
/// for windows of at most [`COMPOSED_MAX_WINDOW`], on the host (and uploaded) otherwise.
pub fn sorted_by_mask(map: &Tensor, window: usize) -> Result<Tensor> {
    let rows = map_rows(map)?;
    let op = ConvOrder {
        window: window.clamp(1, rows.max(1)),
    };
    if map.device().is_cuda() {
        return map.contiguous()?.apply_op1_no_bwd(&op);
    }
    if !map.device().is_cpu() && op.window <= COMPOSED_MAX_WINDOW {
        return sorted_by_mask_composed(map, op.window);
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
    fn sorting_is_stable_by_mask_within_windows() {
        let masks = [3, 1, 3, 0, 2, 1, 0];
        assert_eq!(sort_by_mask(&masks, 7), [3, 6, 1, 5, 4, 0, 2]);
        assert_eq!(sort_by_mask(&masks, 3), [1, 0, 2, 3, 5, 4, 6]);
        assert_eq!(sort_by_mask(&masks, 1), [0, 1, 2, 3, 4, 5, 6]);
    }

    /// The composed builder (what Metal runs) equals the host sort on a voxelised shell, masks
    /// included, for windows that split it unevenly and for one window.
    #[test]
    fn composed_orders_equal_the_host_sort() {
        use crate::ops::neighbour_map::{batch_ranges, neighbour_rows};
        let rows = crate::selftest::shapes::voxel_shell(0, 32, 12.0, 0.87);
        let map = neighbour_rows(&rows, &batch_ranges(&rows).unwrap()).unwrap();
        let n = rows.len();
        let tensor = Tensor::from_vec(map.clone(), (n, TAPS), &Device::Cpu).unwrap();
        let want_masks = masks(&map);
        let got_masks = neighbour_masks(&tensor).unwrap().to_vec1::<u32>().unwrap();
        assert_eq!(got_masks, want_masks);
        for window in [1, 7, 64, 1000, COMPOSED_MAX_WINDOW, n] {
            if window > COMPOSED_MAX_WINDOW {
                assert!(sorted_by_mask_composed(&tensor, window).is_err());
                continue;
            }
            let got = sorted_by_mask_composed(&tensor, window).unwrap();
            let want = sort_by_mask(&want_masks, window);
            assert_eq!(
                got.to_vec1::<u32>().unwrap(),
                want,
                "window {window} of {n}"
            );
        }
        let tiny = Tensor::from_vec(map[..3 * TAPS].to_vec(), (3, TAPS), &Device::Cpu).unwrap();
        let got = sorted_by_mask_composed(&tiny, 1024).unwrap();
        assert_eq!(
            got.to_vec1::<u32>().unwrap(),
            sort_by_mask(&want_masks[..3], 3)
        );
    }
}
