//! The cascade's quantisation of `upsample(lr, 4)`'s coordinates onto the high-resolution latent
//! grid (docs/MODEL.md §1.4.1) as an occupancy bitmap: row `[b, x, y, z]` of the 512³ grid
//! falls in cell `((b·side + x')·side + y')·side + z'` of the `side³` grid per batch item, each
//! coordinate quantised by [`quantize_axis`] in f32. The bitmap's set bits, scanned in order,
//! are the sorted unique quantised rows (`pipeline::cascade` decodes them).
//!
//! On a CUDA device a kernel fills the bitmap (`kernels/cuda/cascade_quantize.cu`) and only the
//! bitmap comes back, not the rows; [`occupancy_host`] is the reference it is tested against.

use candle_core::{bail, Result, Tensor};
use rayon::prelude::*;

#[cfg(feature = "cuda")]
mod cuda;

/// Side of the grid `upsample(latent, 4)` returns coordinates on.
pub const UPSAMPLED_GRID: usize = 512;

/// The occupancy bitmap's cell count at most: its cell indices are u32 on the GPU.
pub const MAX_OCCUPANCY_CELLS: usize = 1 << 32;

/// One coordinate of the 512³ grid on the `side` grid: `(v + 0.5) / 512 · side` in f32,
/// truncated (the CUDA kernel rounds each operation the same way).
pub fn quantize_axis(v: i32, side: usize) -> i32 {
    (((v as f32 + 0.5) / UPSAMPLED_GRID as f32) * side as f32) as i32
}

/// Cells of the occupancy bitmap of `batches` items of the `side³` grid, `None` past
/// [`MAX_OCCUPANCY_CELLS`].
pub fn occupancy_cells(batches: usize, side: usize) -> Option<usize> {
    side.checked_pow(3)
        .and_then(|c| c.checked_mul(batches))
        .filter(|&c| c <= MAX_OCCUPANCY_CELLS)
}

/// The occupancy bitmap of the `batches · side³` cells of `rows` (bit `cell % 32` of word
/// `cell / 32`), filled on the host in one parallel pass; `None` when a row is off that grid (a
/// batch index outside `0..batches`, a quantised coordinate outside `0..side`) or the bitmap
/// would exceed [`MAX_OCCUPANCY_CELLS`].
pub fn occupancy_host(rows: &[[i32; 4]], batches: usize, side: usize) -> Option<Vec<u32>> {
    use std::sync::atomic::{AtomicU32, Ordering};
    let cells = occupancy_cells(batches, side)?;
    let in_grid = |v: i32| (0..side as i32).contains(&v);
    let words: Vec<AtomicU32> = (0..cells.div_ceil(32)).map(|_| AtomicU32::new(0)).collect();
    let all_in_grid = rows.par_iter().all(|c| {
        let q = [
            quantize_axis(c[1], side),
            quantize_axis(c[2], side),
            quantize_axis(c[3], side),
        ];
        if !(0..batches as i64).contains(&(c[0] as i64)) || !q.iter().all(|&v| in_grid(v)) {
            return false;
        }
        let cell =
            ((c[0] as usize * side + q[0] as usize) * side + q[1] as usize) * side + q[2] as usize;
        words[cell / 32].fetch_or(1 << (cell % 32), Ordering::Relaxed);
        true
    });
    all_in_grid.then(|| words.into_iter().map(AtomicU32::into_inner).collect())
}

/// [`occupancy_host`] of the rows of `rows` `[N, 4]` i32 on their device: on CUDA filled there
/// by one kernel launch, the bitmap and an off-grid flag the only read-back; elsewhere the rows
/// come to the host. An error when the bitmap's cells exceed its u32 cell index.
pub fn cascade_occupancy(rows: &Tensor, batches: usize, side: usize) -> Result<Option<Vec<u32>>> {
    let (_, width) = rows.dims2()?;
    if width != 4 {
        bail!(
            "cascade quantisation: expected [N, 4] rows (batch, x, y, z), got {:?}",
            rows.dims()
        );
    }
    if occupancy_cells(batches, side).is_none() || u32::try_from(side).is_err() {
        bail!(
            "cascade quantisation: {batches} batch items of {side}³ cells exceed the bitmap's \
             u32 cell index"
        );
    }
    #[cfg(feature = "cuda")]
    if rows.device().is_cuda() {
        return cuda::cascade_occupancy(&rows.contiguous()?, batches, side);
    }
    let host: Vec<[i32; 4]> = rows
        .to_vec2::<i32>()?
        .into_iter()
        .map(|r| [r[0], r[1], r[2], r[3]])
        .collect();
    Ok(occupancy_host(&host, batches, side))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn rows_set_their_cells_and_off_grid_rows_decline() {
        // side 2: coordinates below 256 quantise to 0, from 256 to 1.
        let rows = [[0, 0, 0, 300], [1, 511, 0, 0], [0, 0, 0, 10]];
        let words = occupancy_host(&rows, 2, 2).unwrap();
        assert_eq!(words, [1 | (1 << 1) | (1 << 12)]);
        let t = Tensor::from_slice(rows.as_flattened(), (3, 4), &Device::Cpu).unwrap();
        assert_eq!(cascade_occupancy(&t, 2, 2).unwrap(), Some(words));
        // Batch 1 outside one batch item; a negative batch; a coordinate past the grid.
        assert_eq!(occupancy_host(&rows, 1, 2), None);
        assert_eq!(occupancy_host(&[[-1, 0, 0, 0]], 1, 2), None);
        assert_eq!(occupancy_host(&[[0, 0, 0, 512]], 1, 2), None);
        assert!(cascade_occupancy(&t, 1 << 20, 4096).is_err());
    }
}
