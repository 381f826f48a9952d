//! Development forcing for benchmarks with random weights: random weights decide nothing a real
//! model would (the sparse-structure decoder's occupancy is noise, the decoders' subdivisions
//! keep an arbitrary share of children), so the timed work would not match a real object's.
//! [`DevForcing`] replaces those decisions by the upstream baseline's sizes: the structure by a
//! voxelised sphere shell of the baseline's token count, and every subdivision (the decoders'
//! and the cascade's upsampling) by one that keeps each child with probability 4.66 / 8. The
//! models still run in full; only their occupancy decisions are replaced. Never set by users:
//! `generate`'s hidden `--dev-force-structure` and the benches use it (benches/README.md).

use anyhow::Result;
use candle_core::{Device, Tensor};

use crate::selftest::voxel_shell;
use crate::sparse::{SparseTensor, Subdivision};

/// The baseline's forced decoder growth: 4.66 of 8 children kept per voxel and level
/// (3,704 → 1.74 M voxels at 512, 15,012 → 6.96 M at 1024).
pub const BASELINE_GROWTH: f64 = 4.66 / 8.0;
/// The baseline's structure tokens on the 32³ grid (the 512 path, the cascade's first flow).
pub const BASELINE_TOKENS_32: usize = 3_704;
/// The baseline's structure tokens on the 64³ grid (the 1024 flows).
pub const BASELINE_TOKENS_64: usize = 15_012;

/// What a development run forces (see the module comment).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DevForcing {
    /// Target cell count of the shell on the 32³ grid.
    pub tokens_32: usize,
    /// Target cell count of the shell on the 64³ grid (the structure of `1024`, the cascade's
    /// high-resolution coordinates at 1024).
    pub tokens_64: usize,
    /// Probability of keeping each child in every forced subdivision.
    pub keep: f64,
}

impl DevForcing {
    /// The upstream baseline's sizes (the stage bench's defaults).
    pub fn baseline() -> Self {
        Self {
            tokens_32: BASELINE_TOKENS_32,
            tokens_64: BASELINE_TOKENS_64,
            keep: BASELINE_GROWTH,
        }
    }

    /// The shell's target count on a `side`³ grid: the given counts at 32 and 64, elsewhere the
    /// 32³ count scaled with the surface, `(side / 32)²`.
    pub fn target(&self, side: usize) -> usize {
        match side {
            32 => self.tokens_32,
            64 => self.tokens_64,
            s => (self.tokens_32 as f64 * (s as f64 / 32.0).powi(2)).round() as usize,
        }
    }

    /// The forced structure on a `side`³ grid as `[N, 4]` i32 coordinates on `device`.
    pub fn structure(&self, side: usize, device: &Device) -> Result<Tensor> {
        let coords = shell_coords(side, self.target(side));
        let flat: Vec<i32> = coords.iter().flatten().copied().collect();
        Ok(Tensor::from_vec(flat, (coords.len(), 4), device)?)
    }

    /// One forced subdivision per C2S level, starting at `latent`'s voxels.
    pub fn subdivisions(&self, latent: &SparseTensor, levels: usize) -> Result<Vec<SparseTensor>> {
        forced_subdivisions(latent, levels, self.keep)
    }
}

/// `n` xorshift values in [−0.05, 0.05) from `seed`: cheap, deterministic, finite in every
/// dtype (the benches' random weights use the same stream).
pub fn xorshift_values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        })
        .collect()
}

/// Surface voxels of a sphere shell on a `res³` grid, the radius chosen so that the count is
/// the smallest at or above `target` (a stand-in for a real object's sparse structure);
/// `[T, 4]` rows (batch 0, x, y, z) in x-major order.
pub fn shell_coords(res: usize, target: usize) -> Vec<[i32; 4]> {
    let shell = |r: f32| voxel_shell(0, res as i32, r, 1.0);
    let (mut lo, mut hi) = (1.0f32, res as f32 / 2.0 - 1.0);
    for _ in 0..40 {
        let mid = (lo + hi) / 2.0;
        if shell(mid).len() < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    shell(hi)
}

/// Subdivision logits `[N, 8]` that keep each child with probability `keep`: `keep − u` for
/// the xorshift values mapped to `u` uniform in [0, 1).
pub fn growth_logits(n: usize, keep: f64, seed: u64, device: &Device) -> Result<Tensor> {
    // The values r are uniform in [−0.05, 0.05): u = 10·r + 0.5, so keep − u = −10·r + keep − 0.5.
    Ok(
        Tensor::from_vec(xorshift_values(n * 8, seed), (n, 8), &Device::Cpu)?
            .affine(-10.0, keep - 0.5)?
            .to_device(device)?,
    )
}

/// One forced subdivision per C2S level of a decoder, starting at `latent`'s voxels.
pub fn forced_subdivisions(
    latent: &SparseTensor,
    levels: usize,
    keep: f64,
) -> Result<Vec<SparseTensor>> {
    let mut coords = latent.coord_set().clone();
    let mut subs = Vec::with_capacity(levels);
    for level in 0..levels {
        let logits = growth_logits(
            coords.len(),
            keep,
            100 + level as u64,
            latent.feats().device(),
        )?;
        let next = Subdivision::from_logits(&coords, &logits)?
            .children()
            .clone();
        subs.push(SparseTensor::on(coords, logits)?);
        coords = next;
    }
    Ok(subs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    #[test]
    fn shells_reach_the_baseline_counts() {
        assert_eq!(shell_coords(32, BASELINE_TOKENS_32).len(), 3_712);
        assert_eq!(shell_coords(64, BASELINE_TOKENS_64).len(), 15_272);
    }

    #[test]
    fn growth_keeps_about_the_asked_share() {
        let logits = growth_logits(10_000, BASELINE_GROWTH, 100, &Device::Cpu).unwrap();
        let kept = logits.gt(0.0).unwrap().to_dtype(DType::F32).unwrap();
        let share = kept.mean_all().unwrap().to_scalar::<f32>().unwrap() as f64;
        assert!((share - BASELINE_GROWTH).abs() < 0.01, "{share}");
    }
}
