//! The cascade's resolution choice (spec §1.4.1): quantise the shape decoder's 512³ upsampled
//! coordinates to the high-resolution latent grid, keep unique rows, and step the resolution
//! down by 128 while the token count is over budget (never below 1024).

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

/// Side of the grid `upsample(latent, 4)` returns coordinates on.
pub const UPSAMPLED_GRID: usize = 512;
/// The cascade never goes below this resolution.
pub const MIN_CASCADE_RESOLUTION: usize = 1024;
/// How much the resolution drops per back-off step.
pub const RESOLUTION_STEP: usize = 128;

/// `unique(cat([b, floor((c + 0.5) / 512 · (res // 16))]))` in float32 math, rows sorted
/// lexicographically. `coords` are `[b, x, y, z]` rows on the 512³ grid.
pub fn quantize_coords(coords: &[[i32; 4]], resolution: usize) -> Result<Vec<[i32; 4]>> {
    if resolution < 16 || !resolution.is_multiple_of(16) {
        bail!("cascade resolution must be a positive multiple of 16, got {resolution}");
    }
    let grid = (resolution / 16) as f32;
    let mut out: Vec<[i32; 4]> = coords
        .iter()
        .map(|c| {
            let q = |v: i32| (((v as f32 + 0.5) / UPSAMPLED_GRID as f32) * grid) as i32;
            [c[0], q(c[1]), q(c[2]), q(c[3])]
        })
        .collect();
    // In parallel: ≈1.7 M rows come from `upsample(lr, 4)` at 512.
    out.par_sort_unstable();
    out.dedup();
    Ok(out)
}

/// The chosen high resolution and its coordinates: start at `target`, stop when the token
/// count is below `max_tokens` or the resolution is 1024, else retry 128 lower.
pub fn choose_resolution(
    coords: &[[i32; 4]],
    target: usize,
    max_tokens: usize,
) -> Result<(usize, Vec<[i32; 4]>)> {
    if target < MIN_CASCADE_RESOLUTION {
        bail!("cascade target resolution must be at least {MIN_CASCADE_RESOLUTION}, got {target}");
    }
    let mut res = target;
    loop {
        let q = quantize_coords(coords, res)?;
        if q.len() < max_tokens || res == MIN_CASCADE_RESOLUTION {
            return Ok((res, q));
        }
        res -= RESOLUTION_STEP;
    }
}

/// The cascade's high-resolution structure from `upsample(lr, 4)`'s coordinates `up` `[N, 4]`:
/// quantised by [`choose_resolution`] on the host, returned on `device` with the chosen
/// resolution and the number of upsampled voxels.
pub fn high_res_structure(
    up: &Tensor,
    target: usize,
    max_tokens: usize,
    device: &Device,
) -> Result<(usize, Tensor, usize)> {
    let rows: Vec<[i32; 4]> = up
        .to_device(&Device::Cpu)?
        .to_dtype(DType::I32)?
        .flatten_all()?
        .to_vec1::<i32>()?
        .chunks_exact(4)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect();
    let (res, hr) = choose_resolution(&rows, target, max_tokens)?;
    let n = hr.len();
    let flat: Vec<i32> = hr.into_iter().flatten().collect();
    Ok((res, Tensor::from_vec(flat, (n, 4), device)?, rows.len()))
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
