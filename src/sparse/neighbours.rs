//! The 3×3×3 neighbour map of a coordinate set: `[T,27]` u32, entry `k = kx·9 + ky·3 + kz` is the
//! row of the voxel at offset `(kx−1, ky−1, kz−1)` on (x, y, z) in the same batch item, or
//! [`ABSENT`] (docs/MODEL.md §8, FlexGEMM's layout).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex};

use candle_core::{bail, Result, Tensor};
use rayon::prelude::*;

use super::conv_order::{default_sort_window, sorted_by_mask, SORT_MIN_ROWS};
use super::coords::CoordSet;
pub use crate::ops::sparse_conv::{ABSENT, TAPS};
use crate::ops::tuning::{ConvSort, Tuning};

/// A batch item whose bounding box has at most this many cells is indexed with a dense grid
/// (4 bytes a cell, 64 MiB at most); larger ones use a hash map.
const DENSE_GRID_MAX_CELLS: usize = 1 << 24;

/// Offset `(dx, dy, dz)` of tap `k`.
pub fn tap_offset(k: usize) -> [i32; 3] {
    [
        (k / 9) as i32 - 1,
        (k / 3 % 3) as i32 - 1,
        (k % 3) as i32 - 1,
    ]
}

/// `[T,27]` neighbour rows, on the coordinate set's device.
#[derive(Debug, Clone)]
pub struct NeighbourMap {
    tensor: Tensor,
    /// Existing (voxel, neighbour) pairs, the centre tap included.
    pairs: usize,
    /// Voxel orders for the CUDA conv, by window (see [`NeighbourMap::sorted_order`]), built on
    /// first use; shared by clones.
    orders: Arc<Mutex<Vec<(usize, Tensor)>>>,
}

impl NeighbourMap {
    /// On a GPU the kernels build it (neighbours_gpu.rs) when the coordinates' keys fit them;
    /// otherwise the host does, and the map is uploaded.
    pub(crate) fn build(set: &CoordSet) -> Result<Self> {
        if !set.device().is_cpu() {
            if let Some(map) = super::neighbours_gpu::build_on_device(set)? {
                return Ok(map);
            }
        }
        let rows = set.rows()?;
        let mut map = vec![ABSENT; rows.len() * TAPS];
        for (batch, range) in set.batches() {
            let items = &rows[range.clone()];
            let out = &mut map[range.start * TAPS..range.end * TAPS];
            let index = VoxelIndex::new(items, range.start).map_err(|(a, b)| {
                candle_core::Error::Msg(format!(
                    "sparse coords: duplicate voxel {:?} at rows {a} and {b} (batch {batch})",
                    rows[a]
                ))
            })?;
            out.par_chunks_mut(TAPS)
                .zip(items.par_iter())
                .for_each(|(dst, c)| {
                    for (k, slot) in dst.iter_mut().enumerate() {
                        let [dx, dy, dz] = tap_offset(k);
                        *slot = index.get(c[1] + dx, c[2] + dy, c[3] + dz);
                    }
                });
        }
        let pairs = map.iter().filter(|&&v| v != ABSENT).count();
        let tensor = Tensor::from_vec(map, (rows.len(), TAPS), set.device())?;
        Ok(Self::from_parts(tensor, pairs))
    }

    pub(crate) fn from_parts(tensor: Tensor, pairs: usize) -> Self {
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
        let pairs = map.iter().filter(|&&v| v != ABSENT).count();
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

    /// The voxel order the CUDA conv should tile by for feature rows of `row_bytes` bytes, or
    /// `None` to keep the voxels' own order: on other devices, below [`SORT_MIN_ROWS`] voxels, or
    /// with `TRELLIS2_CONV_SORT=off`. Otherwise [`sorted_order`](Self::sorted_order) with the
    /// window `TRELLIS2_CONV_SORT` names (`full`: one window) or, by default,
    /// [`default_sort_window`]: the largest power of two of at least 16384 voxels whose rows fit
    /// in 32 MiB. Built on the GPU, so sets of any size are sorted.
    pub fn conv_order(&self, row_bytes: usize) -> Result<Option<Tensor>> {
        let rows = self.tensor.dims()[0];
        if !self.tensor.device().is_cuda() || rows < SORT_MIN_ROWS {
            return Ok(None);
        }
        let window = match Tuning::current().conv_sort {
            ConvSort::Off => return Ok(None),
            ConvSort::Full => usize::MAX,
            ConvSort::Window(w) => w,
            ConvSort::Auto => default_sort_window(row_bytes),
        };
        self.sorted_order(window).map(Some)
    }

    /// A permutation of the voxels, `[T]` u32 on the map's device: within each run of `window`
    /// consecutive voxels (0: all of them), the voxels sorted by their 27-bit neighbour mask,
    /// ties in voxel order. The conv's 128-voxel tiles then mostly hold voxels with the same
    /// neighbours, and a tile skips the taps none of its voxels has: on decoder-like shells
    /// ≈ 17–21 of 27 taps instead of ≈ 27. Windows keep the rows that tiles running at the same
    /// time gather close together (in L2). Built once per window (on CUDA by a radix sort on
    /// the device, elsewhere on the host: see conv_order.rs), then cached.
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

/// Row lookup by spatial coordinate within one batch item.
enum VoxelIndex {
    Dense {
        min: [i32; 3],
        size: [i32; 3],
        cells: Vec<u32>,
    },
    Hashed(HashMap<u64, u32, BuildHasherDefault<MixHasher>>),
}

impl VoxelIndex {
    /// Indexes `items` (rows `first..`), or returns the two rows of a duplicate voxel.
    fn new(items: &[[i32; 4]], first: usize) -> std::result::Result<Self, (usize, usize)> {
        let (mut lo, mut hi) = ([i32::MAX; 3], [i32::MIN; 3]);
        for c in items {
            for a in 0..3 {
                lo[a] = lo[a].min(c[a + 1]);
                hi[a] = hi[a].max(c[a + 1]);
            }
        }
        let size = [0, 1, 2].map(|a| (hi[a] - lo[a] + 1).max(0));
        let cells = size.iter().map(|&s| s as usize).product::<usize>();
        if cells <= DENSE_GRID_MAX_CELLS {
            let mut grid = vec![ABSENT; cells];
            for (i, c) in items.iter().enumerate() {
                let at = (((c[1] - lo[0]) * size[1] + (c[2] - lo[1])) as usize) * size[2] as usize
                    + (c[3] - lo[2]) as usize;
                if grid[at] != ABSENT {
                    return Err((grid[at] as usize, first + i));
                }
                grid[at] = (first + i) as u32;
            }
            Ok(Self::Dense {
                min: lo,
                size,
                cells: grid,
            })
        } else {
            let mut map = HashMap::with_capacity_and_hasher(items.len(), Default::default());
            for (i, c) in items.iter().enumerate() {
                if let Some(prev) = map.insert(key(c[1], c[2], c[3]), (first + i) as u32) {
                    return Err((prev as usize, first + i));
                }
            }
            Ok(Self::Hashed(map))
        }
    }

    fn get(&self, x: i32, y: i32, z: i32) -> u32 {
        match self {
            Self::Dense { min, size, cells } => {
                let (x, y, z) = (x - min[0], y - min[1], z - min[2]);
                if x < 0 || y < 0 || z < 0 || x >= size[0] || y >= size[1] || z >= size[2] {
                    return ABSENT;
                }
                cells[((x * size[1] + y) as usize) * size[2] as usize + z as usize]
            }
            Self::Hashed(map) => {
                if x < 0 || y < 0 || z < 0 {
                    return ABSENT;
                }
                map.get(&key(x, y, z)).copied().unwrap_or(ABSENT)
            }
        }
    }
}

/// Packs a non-negative voxel coordinate (21 bits an axis, see `MAX_COORD`) into one key.
fn key(x: i32, y: i32, z: i32) -> u64 {
    ((x as u64) << 42) | ((y as u64) << 21) | z as u64
}

/// A multiply-xorshift hasher for packed voxel keys: std's SipHash is several times slower and
/// the keys are not attacker-controlled.
#[derive(Default)]
struct MixHasher(u64);

impl Hasher for MixHasher {
    fn finish(&self) -> u64 {
        let h = self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h ^ (h >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | b as u64;
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
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
