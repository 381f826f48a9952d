//! The 3×3×3 neighbour map of a coordinate set: `[T,27]` u32, entry `k = kx·9 + ky·3 + kz` is the
//! row of the voxel at offset `(kx−1, ky−1, kz−1)` on (x, y, z) in the same batch item, or
//! [`ABSENT`] (docs/MODEL.md §8, FlexGEMM's layout).
//!
//! Built on the GPU (kernels/metal/neighbour_map.metal, kernels/cuda/neighbour_map.cu; one plan
//! for both) as a custom op on the coordinates: output `[T·27 + 2]` u32, the `[T,27]` map
//! followed by two status words (the smallest row that lost the insert race to another row of
//! the same voxel, or `u32::MAX`; the number of existing pairs). The CPU forward is the host
//! builder [`neighbour_rows`], the reference the kernels are tested against. The checks of a
//! coordinate set that the key layout relies on ([`check_rows`], [`batch_ranges`]) live here
//! too; `sparse::CoordSet` runs them.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::ops::storage::contiguous;
use crate::ops::vocab::{
    neighbour_plan, neighbour_plan_for, NeighbourPlan, ABSENT, MAX_COORD, TAPS,
};

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "metal")]
mod metal;

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

/// Checks that every row `[batch, x, y, z]` has a batch index ≥ 0 and spatial coordinates in
/// `[0, MAX_COORD)`, in parallel (millions of rows at the last decoder level); the first bad row
/// is the one reported.
pub fn check_rows(rows: &[[i32; 4]]) -> Result<()> {
    let valid = |c: &[i32; 4]| c[0] >= 0 && c[1..].iter().all(|v| (0..MAX_COORD).contains(v));
    if let Some(row) = rows.par_iter().position_first(|c| !valid(c)) {
        let c = rows[row];
        if c[0] < 0 {
            bail!("sparse coords: row {row} has negative batch index {}", c[0]);
        }
        let (axis, v) = ["x", "y", "z"]
            .into_iter()
            .zip(c[1..].iter().copied())
            .find(|(_, v)| !(0..MAX_COORD).contains(v))
            .expect("an invalid row has an axis out of range");
        bail!("sparse coords: row {row} {c:?} has {axis} = {v} outside [0, {MAX_COORD})");
    }
    Ok(())
}

/// `(batch index, row range)` of each batch item of `rows`, in row order; an error when the
/// batch index goes down (rows of one batch item must be contiguous, batches increasing).
pub fn batch_ranges(rows: &[[i32; 4]]) -> Result<Vec<(i32, Range<usize>)>> {
    let mut batches: Vec<(i32, Range<usize>)> = Vec::new();
    for (row, c) in rows.iter().enumerate() {
        match batches.last_mut() {
            Some((b, range)) if *b == c[0] => range.end = row + 1,
            Some((b, _)) if *b > c[0] => bail!(
                "sparse coords: batch index goes down from {b} to {} at row {row}; rows of \
                 one batch item must be contiguous and batches in increasing order",
                c[0]
            ),
            _ => batches.push((c[0], row..row + 1)),
        }
    }
    Ok(batches)
}

/// The `[T·27]` neighbour map of checked `rows` whose batch items are `batches`
/// ([`batch_ranges`]), built on the host: the CPU reference.
pub fn neighbour_rows(rows: &[[i32; 4]], batches: &[(i32, Range<usize>)]) -> Result<Vec<u32>> {
    let mut map = vec![ABSENT; rows.len() * TAPS];
    for (batch, range) in batches {
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
    Ok(map)
}

/// Existing (voxel, neighbour) pairs of a map, the centre tap included.
pub fn pairs(map: &[u32]) -> usize {
    map.iter().filter(|&&v| v != ABSENT).count()
}

/// Status word: no duplicate voxel.
const NO_DUPLICATE: u32 = u32::MAX;

struct BuildNeighbourMap {
    #[cfg_attr(not(any(feature = "metal", feature = "cuda")), allow(dead_code))]
    plan: NeighbourPlan,
}

impl CustomOp1 for BuildNeighbourMap {
    fn name(&self) -> &'static str {
        "neighbour-map"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::I32(c) = s else {
            bail!("neighbour map: coords must be i32");
        };
        let c = contiguous(c, l, "neighbour map", "coords")?;
        let rows: Vec<[i32; 4]> = c
            .chunks_exact(4)
            .map(|r| [r[0], r[1], r[2], r[3]])
            .collect();
        check_rows(&rows)?;
        let mut out = neighbour_rows(&rows, &batch_ranges(&rows)?)?;
        let pairs = pairs(&out);
        out.extend([NO_DUPLICATE, pairs as u32]);
        let len = out.len();
        Ok((CpuStorage::U32(out), Shape::from(len)))
    }

    /// kernels/cuda/neighbour_map.cu, the same plan and output; tested in tests/cuda_kernels.rs.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::neighbour_map(s, l, &self.plan)
    }

    #[cfg(feature = "metal")]
    fn metal_fwd(
        &self,
        s: &candle_core::MetalStorage,
        l: &Layout,
    ) -> Result<(candle_core::MetalStorage, Shape)> {
        metal::forward(s, l, &self.plan)
    }
}

/// The map of the `[T,4]` i32 coordinates `coords` (checked rows, in batch order) whose largest
/// batch, x, y and z are `max`, built by the GPU kernels on their device: `(map [T,27], pairs)`,
/// or `None` when the kernels do not apply (empty set, keys wider than 31 bits): the caller
/// then builds it on the host ([`neighbour_rows`]).
pub fn neighbour_map_on_device(coords: &Tensor, max: [u32; 4]) -> Result<Option<(Tensor, usize)>> {
    // The length and maxima only: a set built on the device keeps its rows there.
    let n = coords.dim(0)?;
    let Some(plan) = neighbour_plan_for(n, max)? else {
        return Ok(None);
    };
    if plan.dispatches.is_empty() {
        return Ok(None);
    }
    let out = coords
        .contiguous()?
        .apply_op1_no_bwd(&BuildNeighbourMap { plan })?;
    // Reading the two status words waits for the GPU: once per coordinate set and stage.
    let status = status_words(&out, n * TAPS)?;
    if status[0] != NO_DUPLICATE {
        // Which copy lost the race for the slot depends on scheduling; name both, in order.
        let rows = coords.to_vec2::<i32>()?;
        let dup = status[0] as usize;
        let other = (0..n)
            .find(|&j| j != dup && rows[j] == rows[dup])
            .unwrap_or(dup);
        bail!(
            "sparse coords: duplicate voxel {:?} at rows {} and {} (batch {})",
            rows[dup],
            dup.min(other),
            dup.max(other),
            rows[dup][0]
        );
    }
    let map = out.narrow(0, 0, n * TAPS)?.reshape((n, TAPS))?;
    Ok(Some((map, status[1] as usize)))
}

/// The two status words at `at` of the op's output. CUDA reads back just those 8 bytes (candle's
/// `to_vec1` would copy the whole map first: ≈400 MB at 3.7 M voxels).
fn status_words(out: &Tensor, at: usize) -> Result<Vec<u32>> {
    #[cfg(feature = "cuda")]
    if out.device().is_cuda() {
        return cuda::status_words(out, at);
    }
    out.narrow(0, at, 2)?.to_vec1::<u32>()
}

/// The op's raw `[T·27 + 2]` output for `coords` `[T,4]` i32 on their device; public for the
/// emulator tests, which compare the kernels' buffers with the CPU forward word for word.
pub fn neighbour_op_output(coords: &Tensor) -> Result<Tensor> {
    let rows: Vec<[i32; 4]> = coords
        .to_vec2::<i32>()?
        .into_iter()
        .map(|r| [r[0], r[1], r[2], r[3]])
        .collect();
    let Some(plan) = neighbour_plan(&rows)? else {
        bail!("neighbour map: keys of these coordinates need more than 31 bits");
    };
    coords
        .contiguous()?
        .apply_op1_no_bwd(&BuildNeighbourMap { plan })
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
