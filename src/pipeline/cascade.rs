//! The cascade's resolution choice (docs/MODEL.md §1.4.1): quantise the shape decoder's 512³ upsampled
//! coordinates to the high-resolution latent grid, keep unique rows, and step the resolution
//! down by 128 while the token count is over budget (never below 1024).

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::ops::cascade_quantize::{
    cascade_occupancy, occupancy_cells, occupancy_host, quantize_axis,
};

pub use crate::ops::cascade_quantize::UPSAMPLED_GRID;

/// The cascade never goes below this resolution.
pub const MIN_CASCADE_RESOLUTION: usize = 1024;
/// How much the resolution drops per back-off step.
pub const RESOLUTION_STEP: usize = 128;

/// `unique(cat([b, floor((c + 0.5) / 512 · (res // 16))]))` in float32 math, rows sorted
/// lexicographically. `coords` are `[b, x, y, z]` rows on the 512³ grid. The CPU reference of
/// the CUDA quantisation (`kernels/cuda/cascade_quantize.cu`).
pub fn quantize_coords(coords: &[[i32; 4]], resolution: usize) -> Result<Vec<[i32; 4]>> {
    let side = grid_side(resolution)?;
    let quantize = |c: &[i32; 4]| {
        [
            c[0],
            quantize_axis(c[1], side),
            quantize_axis(c[2], side),
            quantize_axis(c[3], side),
        ]
    };
    match occupancy_unique(coords, side) {
        Some(rows) => Ok(rows),
        None => {
            // Rows off the expected grid (never from `upsample`): the general sort.
            let mut out: Vec<[i32; 4]> = coords.par_iter().map(quantize).collect();
            out.par_sort_unstable();
            out.dedup();
            Ok(out)
        }
    }
}

/// Side of the quantised grid at `resolution` (`res // 16`), which must be a positive multiple
/// of 16.
fn grid_side(resolution: usize) -> Result<usize> {
    if resolution < 16 || !resolution.is_multiple_of(16) {
        bail!("cascade resolution must be a positive multiple of 16, got {resolution}");
    }
    Ok(resolution / 16)
}

/// Sorted unique quantised rows through an occupancy bitmap of the `side³` grid per batch item:
/// one parallel pass over the ≈1.7 M upsampled rows and a scan of the bitmap in (b, x, y, z)
/// order, instead of sorting the rows. `None` when a row falls outside the grid, a batch index
/// is negative, or the bitmap would exceed 2³² cells.
fn occupancy_unique(coords: &[[i32; 4]], side: usize) -> Option<Vec<[i32; 4]>> {
    let (lowest, highest) = coords
        .par_iter()
        .map(|c| (c[0], c[0]))
        .reduce(|| (0, -1), |a, b| (a.0.min(b.0), a.1.max(b.1)));
    if lowest < 0 {
        return None;
    }
    let words = occupancy_host(coords, (highest + 1) as usize, side)?;
    Some(decode_occupancy(&words, side))
}

/// The rows `[b, x, y, z]` of the set bits of an occupancy bitmap of the `side³` grid per batch
/// item (bit `cell % 32` of word `cell / 32`, cell `((b·side + x)·side + y)·side + z`), in
/// (b, x, y, z) order: sorted and unique by construction. Shared by the host bitmap and the one
/// the CUDA kernel fills.
fn decode_occupancy(words: &[u32], side: usize) -> Vec<[i32; 4]> {
    let mut out = Vec::new();
    for (w, word) in words.iter().enumerate() {
        let mut bits = *word;
        while bits != 0 {
            let cell = w * 32 + bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let (z, rest) = (cell % side, cell / side);
            let (y, rest) = (rest % side, rest / side);
            let (x, b) = (rest % side, rest / side);
            out.push([b as i32, x as i32, y as i32, z as i32]);
        }
    }
    out
}

/// [`quantize_coords`] of the rows of `up` `[N, 4]` i32 on a CUDA device, quantised there: the
/// kernel fills the occupancy bitmap of `batches` items and only the bitmap comes back (reading
/// the rows back cost ≈10 ms at 1.75 M rows on an H100, the bitmap ≈110 KB at resolution 1536).
/// `Ok(None)` where the device cannot: `up` not i32 on CUDA, a row off the grid (a batch index
/// outside `0..batches`, a coordinate quantised outside `0..res/16`), or a bitmap over 2³²
/// cells; the caller then quantises on the host.
pub fn quantize_coords_cuda(
    up: &Tensor,
    batches: usize,
    resolution: usize,
) -> Result<Option<Vec<[i32; 4]>>> {
    let side = grid_side(resolution)?;
    if !up.device().is_cuda() || up.dtype() != DType::I32 {
        return Ok(None);
    }
    if occupancy_cells(batches, side).is_none() {
        return Ok(None);
    }
    let up = up.contiguous()?;
    let words = cascade_occupancy(&up, batches, side)?;
    Ok(words.map(|w| decode_occupancy(&w, side)))
}

/// The chosen high resolution and its coordinates: start at `target`, stop when the token
/// count is below `max_tokens` or the resolution is 1024, else retry 128 lower.
pub fn choose_resolution(
    coords: &[[i32; 4]],
    target: usize,
    max_tokens: usize,
) -> Result<(usize, Vec<[i32; 4]>)> {
    step_down(target, max_tokens, |res| quantize_coords(coords, res))
}

/// The token-budget loop of [`choose_resolution`] over any quantisation `quantize(res)`.
fn step_down(
    target: usize,
    max_tokens: usize,
    mut quantize: impl FnMut(usize) -> Result<Vec<[i32; 4]>>,
) -> Result<(usize, Vec<[i32; 4]>)> {
    if target < MIN_CASCADE_RESOLUTION {
        bail!("cascade target resolution must be at least {MIN_CASCADE_RESOLUTION}, got {target}");
    }
    let mut res = target;
    loop {
        let q = quantize(res)?;
        if q.len() < max_tokens || res == MIN_CASCADE_RESOLUTION {
            return Ok((res, q));
        }
        res -= RESOLUTION_STEP;
    }
}

/// `upsample(lr, 4)`'s rows where the quantisation reads them: on the device through the CUDA
/// bitmap kernel while it can, else read back to the host once and kept for later resolutions.
struct UpsampledRows<'a> {
    up: &'a Tensor,
    /// Read by the CUDA path only.
    batches: usize,
    host: Option<Vec<[i32; 4]>>,
}

impl UpsampledRows<'_> {
    fn quantize(&mut self, resolution: usize) -> Result<Vec<[i32; 4]>> {
        if self.host.is_none() {
            if let Some(rows) = quantize_coords_cuda(self.up, self.batches, resolution)? {
                return Ok(rows);
            }
        }
        quantize_coords(self.host_rows()?, resolution)
    }

    fn host_rows(&mut self) -> Result<&[[i32; 4]]> {
        let rows = match self.host.take() {
            Some(rows) => rows,
            None => read_rows(self.up)?,
        };
        Ok(self.host.insert(rows))
    }
}

/// The rows of a `[N, 4]` coordinate tensor on the host, as i32.
fn read_rows(up: &Tensor) -> Result<Vec<[i32; 4]>> {
    Ok(up
        .to_device(&Device::Cpu)?
        .to_dtype(DType::I32)?
        .flatten_all()?
        .to_vec1::<i32>()?
        .chunks_exact(4)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect())
}

/// The cascade's high-resolution structure from `upsample(lr, 4)`'s coordinates `up` `[N, 4]`:
/// quantised by [`choose_resolution`]'s loop, returned on `device` with the chosen resolution
/// and the number of upsampled voxels N. `batches` bounds the rows' batch indices
/// (`0..batches`, the low-resolution coordinates' [`CoordSet::batch_end`]: upsampling keeps a
/// row's batch); on CUDA the quantisation then runs on the device without reading the rows
/// back, and a row outside the bound only costs that read-back.
///
/// [`CoordSet::batch_end`]: crate::sparse::CoordSet::batch_end
pub fn high_res_structure(
    up: &Tensor,
    batches: usize,
    target: usize,
    max_tokens: usize,
    device: &Device,
) -> Result<(usize, Tensor, usize)> {
    let (voxels, width) = up.dims2()?;
    if width != 4 {
        bail!(
            "cascade: expected upsampled coordinates [N, 4], got {:?}",
            up.dims()
        );
    }
    let mut rows = UpsampledRows {
        up,
        batches,
        host: None,
    };
    let (res, hr) = step_down(target, max_tokens, |res| rows.quantize(res))?;
    let n = hr.len();
    let flat: Vec<i32> = hr.into_iter().flatten().collect();
    Ok((res, Tensor::from_vec(flat, (n, 4), device)?, voxels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_1024_quantisation_is_integer_division_by_8() {
        let c: Vec<[i32; 4]> = (0..512).map(|v| [0, v, 511 - v, v / 3]).collect();
        let q = quantize_coords(&c, 1024).unwrap();
        let mut want: Vec<[i32; 4]> = c
            .iter()
            .map(|r| [0, r[1] / 8, r[2] / 8, r[3] / 8])
            .collect();
        want.sort_unstable();
        want.dedup();
        assert_eq!(q, want);
    }

    /// The bitmap path gives exactly the sorted unique rows, and rows off the grid take the
    /// sort path with the same result.
    #[test]
    fn occupancy_matches_sort_and_dedup() {
        let rows: Vec<[i32; 4]> = (0..20_000)
            .map(|i: i32| [i % 3, (i * 7919) % 512, (i * 104_729) % 512, (i * 31) % 512])
            .collect();
        for res in [1024, 1152, 1536] {
            let grid = (res / 16) as f32;
            let q = |v: i32| (((v as f32 + 0.5) / 512.0) * grid) as i32;
            let mut want: Vec<[i32; 4]> = rows
                .iter()
                .map(|c| [c[0], q(c[1]), q(c[2]), q(c[3])])
                .collect();
            want.sort_unstable();
            want.dedup();
            assert_eq!(quantize_coords(&rows, res).unwrap(), want, "res {res}");
        }
        let mut off = rows.clone();
        off.push([0, 700, 3, 3]);
        let got = quantize_coords(&off, 1024).unwrap();
        assert!(got.windows(2).all(|w| w[0] < w[1]));
        assert!(got.contains(&[0, 87, 0, 0]));
    }

    /// The decode walks set bits in cell order: (b, x, y, z) sorted, across word boundaries.
    #[test]
    fn occupancy_decodes_in_cell_order() {
        let side = 4;
        let cells = [0usize, 31, 32, 63, 64 + 5, 2 * 64 - 1];
        let mut words = vec![0u32; (2 * 64usize).div_ceil(32)];
        for c in cells {
            words[c / 32] |= 1 << (c % 32);
        }
        let rows = decode_occupancy(&words, side);
        let want: Vec<[i32; 4]> = vec![
            [0, 0, 0, 0],
            [0, 1, 3, 3],
            [0, 2, 0, 0],
            [0, 3, 3, 3],
            [1, 0, 1, 1],
            [1, 3, 3, 3],
        ];
        assert_eq!(rows, want);
    }

    /// Off the GPU the structure is [`choose_resolution`] of the rows read back, on `device`,
    /// with N from the shape; a batch bound below the rows' batches changes nothing there.
    #[test]
    fn high_res_structure_on_the_host_is_choose_resolution() {
        let rows: Vec<[i32; 4]> = (0..5_000)
            .map(|i: i32| [i / 2_500, (i * 7) % 512, (i * 13) % 512, (i * 17) % 512])
            .collect();
        let flat: Vec<i32> = rows.iter().flatten().copied().collect();
        let up = Tensor::from_vec(flat, (rows.len(), 4), &Device::Cpu).unwrap();
        let (want_res, want) = choose_resolution(&rows, 1536, 3_000).unwrap();
        for batches in [2, 1] {
            let (res, hr, voxels) =
                high_res_structure(&up, batches, 1536, 3_000, &Device::Cpu).unwrap();
            assert_eq!((res, voxels), (want_res, rows.len()));
            let got: Vec<i32> = hr.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(got, want.iter().flatten().copied().collect::<Vec<_>>());
        }
        let bad = Tensor::zeros((3, 3), DType::I32, &Device::Cpu).unwrap();
        assert!(high_res_structure(&bad, 1, 1024, 10, &Device::Cpu).is_err());
    }

    #[test]
    fn budget_never_goes_below_1024() {
        let c: Vec<[i32; 4]> = (0..512).map(|v| [0, v, v, v]).collect();
        let (res, q) = choose_resolution(&c, 1536, 1).unwrap();
        assert_eq!(res, 1024);
        assert_eq!(q.len(), 64);
        let (res, _) = choose_resolution(&c, 1536, 1_000_000).unwrap();
        assert_eq!(res, 1536);
        assert!(quantize_coords(&c, 1000).is_err());
    }
}
