//! The 3×3×3 neighbour map of a coordinate set: `[T,27]` u32, entry `k = kx·9 + ky·3 + kz` is the
//! row of the voxel at offset `(kx−1, ky−1, kz−1)` on (x, y, z) in the same batch item, or
//! [`ABSENT`] (docs/MODEL.md §8, FlexGEMM's layout). Built by `ops::neighbour_map` (on the GPU
//! where the kernels apply), cached here with the conv's voxel orders.

use std::sync::{Arc, Mutex};

use candle_core::{bail, Result, Tensor};

use super::conv_order::conv_sort_window;
use super::coords::CoordSet;
use crate::ops::conv_order::sorted_by_mask;
use crate::ops::neighbour_map;
pub use crate::ops::neighbour_map::tap_offset;
use crate::ops::sparse_conv::ConvNeighbours;
use crate::ops::tuning::Tuning;
pub use crate::ops::vocab::{ABSENT, TAPS};

/// `[T,27]` neighbour rows, on the coordinate set's device.
#[derive(Debug, Clone)]
pub struct NeighbourMap {
    tensor: Tensor,
    /// Existing (voxel, neighbour) pairs, the centre tap included.
    pairs: usize,
    /// Voxel orders for the GPU convs, by window (see [`NeighbourMap::sorted_order`]), built on
    /// first use; shared by clones.
    orders: Arc<Mutex<Vec<(usize, Tensor)>>>,
}

impl NeighbourMap {
    /// On a GPU the kernels build it (`ops::neighbour_map`) when the coordinates' keys fit them;
    /// otherwise the host does, and the map is uploaded.
    pub(crate) fn build(set: &CoordSet) -> Result<Self> {
        if !set.device().is_cpu() {
            if let Some((map, pairs)) =
                neighbour_map::neighbour_map_on_device(set.tensor(), set.max())?
            {
                return Ok(Self::from_parts(map, pairs));
            }
        }
        let rows = set.rows()?;
        let map = neighbour_map::neighbour_rows(rows, set.batches())?;
        let pairs = neighbour_map::pairs(&map);
        let tensor = Tensor::from_vec(map, (rows.len(), TAPS), set.device())?;
        Ok(Self::from_parts(tensor, pairs))
    }

    fn from_parts(tensor: Tensor, pairs: usize) -> Self {
        Self {
            tensor,
            pairs,
            orders: Default::default(),
        }
    }

    /// Builds a map from explicit rows (for tests and kernels fed by hand); entries must be
    /// [`ABSENT`] or `< rows`.
    pub fn from_rows(map: Vec<u32>, rows: usize, device: &candle_core::Device) -> Result<Self> {
        if map.len() != rows * TAPS {
            bail!(
                "neighbour map: {} entries for {rows} rows, expected {}",
                map.len(),
                rows * TAPS
            );
        }
        if let Some((i, v)) = map
            .iter()
            .enumerate()
            .find(|(_, &v)| v != ABSENT && v as usize >= rows)
        {
            bail!("neighbour map: entry {i} = {v} is not a row of {rows}");
        }
        let pairs = neighbour_map::pairs(&map);
        Ok(Self::from_parts(
            Tensor::from_vec(map, (rows, TAPS), device)?,
            pairs,
        ))
    }

    /// The `[T,27]` u32 tensor.
    pub fn tensor(&self) -> &Tensor {
        &self.tensor
    }

    /// Number of existing (voxel, neighbour) pairs: a conv costs `2·Ci·Co` FLOPs per pair.
    pub fn pairs(&self) -> usize {
        self.pairs
    }

    /// The voxel order the CUDA or Metal conv should tile by for feature rows of `row_bytes`
    /// bytes, or `None` to keep the voxels' own order: on the CPU, below `SORT_MIN_ROWS` voxels,
    /// or with `TRELLIS2_CONV_SORT=off`. Otherwise [`sorted_order`](Self::sorted_order) with the
    /// window `TRELLIS2_CONV_SORT` names (`full`: one window) or, by default, the largest power of
    /// two of at least 16384 voxels whose rows fit in 32 MiB, on CUDA and Metal alike
    /// (`sparse::conv_order::conv_sort_window`). Built on the GPU, so sets of any size are sorted.
    pub fn conv_order(&self, row_bytes: usize) -> Result<Option<Tensor>> {
        let rows = self.tensor.dims()[0];
        let sort = Tuning::current().conv_sort;
        match conv_sort_window(self.tensor.device(), rows, row_bytes, sort) {
            Some(window) => self.sorted_order(window).map(Some),
            None => Ok(None),
        }
    }

    /// A permutation of the voxels, `[T]` u32 on the map's device: within each run of `window`
    /// consecutive voxels (0: all of them), the voxels sorted by their 27-bit neighbour mask,
    /// ties in voxel order. The conv's 128-voxel tiles then mostly hold voxels with the same
    /// neighbours, and a tile skips the taps none of its voxels has: on decoder-like shells
    /// ≈ 17–21 of 27 taps instead of ≈ 27. Windows keep the rows that tiles running at the same
    /// time gather close together (in L2). Built once per window (on CUDA and Metal by a radix
    /// sort on the device, on the CPU by the host sort: see `ops::conv_order`), then cached.
    pub fn sorted_order(&self, window: usize) -> Result<Tensor> {
        let rows = self.tensor.dims()[0];
        let window = if window == 0 { rows } else { window.min(rows) };
        let mut cache = self.orders.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, order)) = cache.iter().find(|(w, _)| *w == window) {
            return Ok(order.clone());
        }
        let order = sorted_by_mask(&self.tensor, window)?;
        cache.push((window, order.clone()));
        Ok(order)
    }
}

impl ConvNeighbours for NeighbourMap {
    fn tensor(&self) -> &Tensor {
        NeighbourMap::tensor(self)
    }

    fn conv_order(&self, row_bytes: usize) -> Result<Option<Tensor>> {
        NeighbourMap::conv_order(self, row_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn set(rows: &[[i32; 4]]) -> CoordSet {
        CoordSet::from_host(rows.to_vec(), &Device::Cpu).unwrap()
    }

    #[test]
    fn neighbours_stay_inside_their_batch_item() {
        let s = set(&[[0, 1, 1, 1], [0, 2, 1, 1], [1, 1, 1, 2]]);
        let map = s.neighbour_map().unwrap();
        let m = map.tensor().to_vec2::<u32>().unwrap();
        assert_eq!(m[0][13], 0);
        assert_eq!(m[0][2 * 9 + 3 + 1], 1); // +x
        assert_eq!(m[1][3 + 1], 0); // -x
                                    // Batch 1 voxel at z+1 of row 0's position is not row 0's neighbour.
        assert_eq!(m[0][9 + 3 + 2], ABSENT);
        assert_eq!(m[2].iter().filter(|&&v| v != ABSENT).count(), 1);
        assert_eq!(map.pairs(), 2 + 2 + 1);
    }

    #[test]
    fn duplicates_are_rejected() {
        let s = set(&[[0, 1, 1, 1], [0, 1, 1, 1]]);
        let err = s.neighbour_map().unwrap_err().to_string();
        assert!(
            err.contains("duplicate voxel [0, 1, 1, 1] at rows 0 and 1"),
            "{err}"
        );
    }

    #[test]
    fn sorted_orders_are_deterministic_permutations() {
        // A small shell: voxels within one voxel of a sphere of radius 6.
        let mut rows = Vec::new();
        for x in 0..16 {
            for y in 0..16 {
                for z in 0..16 {
                    let d = [x, y, z].map(|a| a as f32 - 7.5);
                    let r = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
                    if (r - 6.0).abs() < 0.87 {
                        rows.push([0, x, y, z]);
                    }
                }
            }
        }
        let s = set(&rows);
        let map = s.neighbour_map().unwrap();
        let m = map.tensor().to_vec2::<u32>().unwrap();
        let mask =
            |v: usize| (0..TAPS).fold(0u32, |acc, k| acc | (u32::from(m[v][k] != ABSENT) << k));
        for window in [0, 1, 7, 64, 100_000] {
            let order = map.sorted_order(window).unwrap().to_vec1::<u32>().unwrap();
            let mut seen = vec![false; rows.len()];
            for &v in &order {
                assert!(!seen[v as usize], "window {window}: voxel {v} twice");
                seen[v as usize] = true;
            }
            assert!(
                seen.iter().all(|&s| s),
                "window {window}: not a permutation"
            );
            let w = if window == 0 { rows.len() } else { window };
            for (chunk, base) in order.chunks(w).zip((0..).step_by(w)) {
                // Each window holds its own voxels, sorted by (mask, voxel).
                assert!(chunk
                    .iter()
                    .all(|&v| (base..base + w).contains(&(v as usize))));
                assert!(chunk
                    .windows(2)
                    .all(|p| { (mask(p[0] as usize), p[0]) < (mask(p[1] as usize), p[1]) }));
            }
            // Cached: the same tensor again.
            let again = map.sorted_order(window).unwrap().to_vec1::<u32>().unwrap();
            assert_eq!(order, again);
        }
        // Not on the CPU: the conv keeps the voxels' order there.
        assert!(map.conv_order(128).unwrap().is_none());
    }

    #[test]
    fn hashed_and_dense_indices_agree() {
        // A bounding box too large for the dense grid forces the hash map.
        let far = (1 << 20) + 5;
        let rows = [
            [0, 0, 0, 0],
            [0, 0, 0, 1],
            [0, far, far, far],
            [0, far, far, far - 1],
        ];
        let m = set(&rows)
            .neighbour_map()
            .unwrap()
            .tensor()
            .to_vec2::<u32>()
            .unwrap();
        assert_eq!(m[0][14], 1);
        assert_eq!(m[1][12], 0);
        assert_eq!(m[2][12], 3);
        assert_eq!(m[3][14], 2);
        assert_eq!(m[0][12], ABSENT);
    }
}
