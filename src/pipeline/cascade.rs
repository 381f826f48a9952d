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
    let side = resolution / 16;
    let grid = side as f32;
    let quantize = |c: &[i32; 4]| {
        let q = |v: i32| (((v as f32 + 0.5) / UPSAMPLED_GRID as f32) * grid) as i32;
        [c[0], q(c[1]), q(c[2]), q(c[3])]
    };
    match occupancy_unique(coords, side, quantize) {
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

/// Sorted unique quantised rows through an occupancy bitmap of the `side³` grid per batch item:
/// one parallel pass over the ≈1.7 M upsampled rows and a scan of the bitmap in (b, x, y, z)
/// order, instead of sorting the rows. `None` when a row falls outside the grid, a batch index
/// is negative, or the bitmap would exceed 2³² cells.
fn occupancy_unique(
    coords: &[[i32; 4]],
    side: usize,
    quantize: impl Fn(&[i32; 4]) -> [i32; 4] + Sync,
) -> Option<Vec<[i32; 4]>> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let (lowest, highest) = coords
        .par_iter()
        .map(|c| (c[0], c[0]))
        .reduce(|| (0, -1), |a, b| (a.0.min(b.0), a.1.max(b.1)));
    if lowest < 0 {
        return None;
    }
    let in_grid = |v: i32| (0..side as i32).contains(&v);
    let cells = ((highest + 1) as usize).checked_mul(side * side * side)?;
    if cells > 1 << 32 {
        return None;
    }
    let words: Vec<AtomicU64> = (0..cells.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
    let all_in_grid = coords.par_iter().all(|c| {
        let q = quantize(c);
        if !q[1..].iter().all(|&v| in_grid(v)) {
            return false;
        }
        let cell =
            ((q[0] as usize * side + q[1] as usize) * side + q[2] as usize) * side + q[3] as usize;
        words[cell / 64].fetch_or(1 << (cell % 64), Ordering::Relaxed);
        true
    });
    if !all_in_grid {
        return None;
    }
    let mut out = Vec::new();
    for (w, word) in words.iter().enumerate() {
        let mut bits = word.load(Ordering::Relaxed);
        while bits != 0 {
            let cell = w * 64 + bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let (z, rest) = (cell % side, cell / side);
            let (y, rest) = (rest % side, rest / side);
            let (x, b) = (rest % side, rest / side);
            out.push([b as i32, x as i32, y as i32, z as i32]);
        }
    }
    Some(out)
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
