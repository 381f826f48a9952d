//! Trilinear lookup of per-voxel attributes at arbitrary points (docs/MODEL.md §6.4), used for vertex
//! colours and PBR channels.
//!
//! Upstream: `trellis2/representations/mesh/base.py:MeshWithVoxel.query_attrs` @ 5565d24 →
//! FlexGEMM `grid_sample_3d(mode='trilinear')` (CUDA kernel
//! `hashmap_lookup_grid_sample_3d_trilinear_neighbor_map_weight`): continuous grid coordinate
//! `g = (p − origin) / voxel_size`, voxel centres at `coords + 0.5`, the 8 voxels around `g`
//! weighted by `Π(1 − |g − centre|)`, absent voxels weigh 0, weights renormalised by their sum
//! (clamped ≥ 1e-12), so points with no voxel nearby read 0.

use rayon::prelude::*;

use super::dual_grid::{voxel_size, AABB_MIN};
use super::error::{MeshError, Result};
use super::shape_voxels::checked_rows;
use super::voxel_index::VoxelIndex;

/// Smallest weight sum divided by (FlexGEMM's clamp).
const MIN_WEIGHT_SUM: f32 = 1e-12;

/// Points per parallel work item.
const CHUNK: usize = 1 << 12;

/// Sparse voxel attributes (`[N, C]` at `coords`) that can be sampled anywhere.
pub struct VoxelAttributes {
    index: VoxelIndex,
    attrs: Vec<f32>,
    channels: usize,
    origin: [f32; 3],
    voxel_size: f32,
}

impl VoxelAttributes {
    /// Attributes on the pipeline's frame: `grid_size³` voxels spanning `[-0.5, 0.5]³`
    /// (origin `[-0.5]³`, voxel size `1/grid_size`). `attrs` is row-major `[N, channels]`.
    pub fn new(
        coords: &[[i32; 3]],
        attrs: Vec<f32>,
        channels: usize,
        grid_size: u32,
    ) -> Result<Self> {
        if grid_size == 0 {
            return Err(MeshError::BadGridSize { grid_size });
        }
        Self::with_frame(
            coords,
            attrs,
            channels,
            grid_size,
            [AABB_MIN; 3],
            voxel_size(grid_size),
        )
    }

    /// [`VoxelAttributes::new`] over an index already built from the voxels' coordinates on
    /// a `grid_size³` grid (building one is most of the set-up's time).
    pub fn with_index(
        index: VoxelIndex,
        attrs: Vec<f32>,
        channels: usize,
        grid_size: u32,
    ) -> Result<Self> {
        if grid_size == 0 || index.grid_size() != grid_size {
            return Err(MeshError::BadGridSize { grid_size });
        }
        if channels == 0 {
            return Err(MeshError::BadParameter {
                name: "channels",
                value: 0.0,
            });
        }
        let rows = checked_rows("attrs", attrs.len(), channels)?;
        if rows != index.len() {
            return Err(MeshError::RowCountMismatch {
                what: "attrs",
                rows,
                expected: index.len(),
            });
        }
        Ok(Self {
            index,
            attrs,
            channels,
            origin: [AABB_MIN; 3],
            voxel_size: voxel_size(grid_size),
        })
    }

    /// Attributes on an explicit frame: voxel `(x, y, z)` covers
    /// `origin + [x, x+1) · voxel_size` (and likewise for y, z).
    pub fn with_frame(
        coords: &[[i32; 3]],
        attrs: Vec<f32>,
        channels: usize,
        grid_size: u32,
        origin: [f32; 3],
        voxel_size: f32,
    ) -> Result<Self> {
        if channels == 0 {
            return Err(MeshError::BadParameter {
                name: "channels",
                value: 0.0,
            });
        }
        if !(voxel_size.is_finite() && voxel_size > 0.0) {
            return Err(MeshError::BadParameter {
                name: "voxel_size",
                value: f64::from(voxel_size),
            });
        }
        if let Some(&o) = origin.iter().find(|o| !o.is_finite()) {
            return Err(MeshError::BadParameter {
                name: "origin",
                value: f64::from(o),
            });
        }
        let rows = checked_rows("attrs", attrs.len(), channels)?;
        if rows != coords.len() {
            return Err(MeshError::RowCountMismatch {
                what: "attrs",
                rows,
                expected: coords.len(),
            });
        }
        Ok(Self {
            index: VoxelIndex::build(coords, grid_size)?,
            attrs,
            channels,
            origin,
            voxel_size,
        })
    }

    /// Number of channels per voxel (and per sampled point).
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Samples one point into `out` (`channels` values).
    pub fn sample_into(&self, point: [f32; 3], out: &mut [f32]) -> Result<()> {
        if out.len() != self.channels {
            return Err(MeshError::RowCountMismatch {
                what: "sample output channels",
                rows: out.len(),
                expected: self.channels,
            });
        }
        self.sample_unchecked(point, out);
        Ok(())
    }

    /// Samples every point; returns row-major `[points, channels]`.
    pub fn sample(&self, points: &[[f32; 3]]) -> Vec<f32> {
        let c = self.channels;
        let mut out = vec![0.0f32; points.len() * c];
        out.par_chunks_mut(CHUNK * c)
            .zip(points.par_chunks(CHUNK))
            .for_each(|(out, points)| {
                for (row, &p) in out.chunks_exact_mut(c).zip(points) {
                    self.sample_unchecked(p, row);
                }
            });
        out
    }

    /// `out.len() == channels` is the caller's job.
    fn sample_unchecked(&self, point: [f32; 3], out: &mut [f32]) {
        // float32 like upstream: g = (p − origin) / voxel_size.
        let g: [f32; 3] = std::array::from_fn(|k| (point[k] - self.origin[k]) / self.voxel_size);
        // The 8 candidate voxels start at floor(g − 0.5) (centres at integer + 0.5); clamp the
        // float→int conversion so far-away or non-finite points simply find no voxel.
        let base: [i32; 3] = g.map(|v| (v - 0.5).floor().clamp(-2.0, 2.0e9) as i32);
        let mut rows = [u32::MAX; 8];
        let mut weights = [0.0f32; 8];
        let mut weight_sum = 0.0f32;
        for corner in 0..8 {
            let c = [
                base[0] + (corner & 1),
                base[1] + ((corner >> 1) & 1),
                base[2] + ((corner >> 2) & 1),
            ];
            if let Some(row) = self.index.get(c) {
                let w: f32 = (0..3)
                    .map(|k| 1.0 - (g[k] - c[k] as f32 - 0.5).abs())
                    .product();
                rows[corner as usize] = row;
                weights[corner as usize] = w;
                weight_sum += w;
            }
        }
        out.fill(0.0);
        let norm = weight_sum.max(MIN_WEIGHT_SUM);
        for (&row, &w) in rows.iter().zip(&weights) {
            if row == u32::MAX {
                continue;
            }
            let w = w / norm;
            let attrs = &self.attrs[row as usize * self.channels..][..self.channels];
            for (o, &a) in out.iter_mut().zip(attrs) {
                *o += w * a;
            }
        }
    }
}
