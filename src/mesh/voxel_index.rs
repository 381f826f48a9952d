//! Coordinate → row index of a sparse voxel set.
//!
//! Replaces o_voxel's CUDA `hashmap_insert_3d_idx_as_val` / `hashmap_lookup_3d` (docs/MODEL.md §6.2):
//! a lookup returns the row of the voxel at a coordinate, and coordinates outside the grid
//! report "missing" instead of aliasing another voxel through the flat key. Any exact map
//! reproduces upstream; this one is built for locality: voxels are grouped in 4³ bricks, a
//! small open-addressing hash (Murmur3 finaliser, linear probing) maps a brick to a dense
//! 64-entry row table, so the neighbour lookups of dual-grid extraction and trilinear sampling
//! mostly touch one brick's cache lines. Built once, then read-only and shared by threads.

use super::error::{MeshError, Result};

/// Largest grid size accepted: keeps flat brick keys far below the empty-slot marker.
pub const MAX_GRID_SIZE: u32 = 1 << 20;

/// Brick edge length is `1 << BRICK_BITS` voxels.
const BRICK_BITS: u32 = 2;
const BRICK_MASK: i64 = (1 << BRICK_BITS) - 1;
const BRICK_CELLS: usize = 1 << (3 * BRICK_BITS);

const EMPTY_KEY: u64 = u64::MAX;
const MISSING: u32 = u32::MAX;

/// One slot of the brick hash; key and brick number side by side so a probe touches one
/// cache line.
#[derive(Clone, Copy)]
struct Slot {
    key: u64,
    brick: u32,
}

/// Index over the voxels of one batch item on a `grid_size³` grid.
#[derive(Clone)]
pub struct VoxelIndex {
    slots: Vec<Slot>,
    mask: usize,
    /// `BRICK_CELLS` rows per brick, `MISSING` where there is no voxel.
    cells: Vec<u32>,
    grid_size: u32,
    bricks_per_axis: i64,
    /// Voxels indexed.
    rows: usize,
}

/// Murmur3's 64-bit finaliser (the mixing step o_voxel's hash uses).
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

impl VoxelIndex {
    /// Indexes `coords` (row i ↦ i). Fails on a coordinate outside `[0, grid_size)³`, on a
    /// duplicate coordinate, or on more rows than `u32` can number.
    pub fn build(coords: &[[i32; 3]], grid_size: u32) -> Result<Self> {
        if grid_size == 0 || grid_size > MAX_GRID_SIZE {
            return Err(MeshError::BadGridSize { grid_size });
        }
        if coords.len() >= MISSING as usize {
            return Err(MeshError::TooMany {
                what: "voxels",
                count: coords.len(),
            });
        }
        // Surfaces put ~8–30 voxels in a brick, so start with one slot per two voxels (load
        // ≤ 1/2 up to one brick per voxel pair); `brick_or_insert` grows it if needed.
        let capacity = (coords.len() / 2).max(16).next_power_of_two();
        let mut index = Self {
            slots: vec![
                Slot {
                    key: EMPTY_KEY,
                    brick: MISSING
                };
                capacity
            ],
            mask: capacity - 1,
            cells: Vec::new(),
            grid_size,
            bricks_per_axis: (i64::from(grid_size) + BRICK_MASK) >> BRICK_BITS,
            rows: coords.len(),
        };
        for (row, &coord) in coords.iter().enumerate() {
            let (key, cell) = index.locate(coord).ok_or(MeshError::CoordOutOfGrid {
                row,
                coord,
                grid_size,
            })?;
            let brick = index.brick_or_insert(key);
            let slot = &mut index.cells[brick as usize * BRICK_CELLS + cell];
            if *slot != MISSING {
                return Err(MeshError::DuplicateCoord {
                    row,
                    first_row: *slot as usize,
                    coord,
                });
            }
            *slot = row as u32;
        }
        Ok(index)
    }

    /// Number of voxels indexed (rows `0..len`).
    pub fn len(&self) -> usize {
        self.rows
    }

    /// No voxels.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Grid size the index was built for.
    pub fn grid_size(&self) -> u32 {
        self.grid_size
    }

    /// Brick key and cell within the brick of an in-grid coordinate, `None` outside the grid.
    #[inline]
    fn locate(&self, [x, y, z]: [i32; 3]) -> Option<(u64, usize)> {
        let r = i64::from(self.grid_size);
        let (x, y, z) = (i64::from(x), i64::from(y), i64::from(z));
        if x < 0 || y < 0 || z < 0 || x >= r || y >= r || z >= r {
            return None;
        }
        let b = self.bricks_per_axis;
        let key = (((x >> BRICK_BITS) * b + (y >> BRICK_BITS)) * b + (z >> BRICK_BITS)) as u64;
        let cell = (((x & BRICK_MASK) << (2 * BRICK_BITS))
            | ((y & BRICK_MASK) << BRICK_BITS)
            | (z & BRICK_MASK)) as usize;
        Some((key, cell))
    }

    /// Brick number of `key`, or `None` when no voxel lies in that brick.
    #[inline]
    fn brick(&self, key: u64) -> Option<u32> {
        let mut pos = fmix64(key) as usize & self.mask;
        loop {
            let slot = self.slots[pos];
            if slot.key == key {
                return Some(slot.brick);
            }
            if slot.key == EMPTY_KEY {
                return None;
            }
            pos = (pos + 1) & self.mask;
        }
    }

    /// Brick number of `key`, allocating an empty brick on first use.
    fn brick_or_insert(&mut self, key: u64) -> u32 {
        let bricks = self.cells.len() / BRICK_CELLS;
        // Keep the load factor ≤ 1/2 so probes stay short.
        if 2 * (bricks + 1) > self.slots.len() {
            self.grow();
        }
        let mut pos = fmix64(key) as usize & self.mask;
        loop {
            let slot = &mut self.slots[pos];
            if slot.key == key {
                return slot.brick;
            }
            if slot.key == EMPTY_KEY {
                *slot = Slot {
                    key,
                    brick: bricks as u32,
                };
                self.cells.resize(self.cells.len() + BRICK_CELLS, MISSING);
                return bricks as u32;
            }
            pos = (pos + 1) & self.mask;
        }
    }

    /// Doubles the brick hash and reinserts every brick.
    fn grow(&mut self) {
        let capacity = 2 * self.slots.len();
        let old = std::mem::replace(
            &mut self.slots,
            vec![
                Slot {
                    key: EMPTY_KEY,
                    brick: MISSING
                };
                capacity
            ],
        );
        self.mask = capacity - 1;
        for slot in old.into_iter().filter(|s| s.key != EMPTY_KEY) {
            let mut pos = fmix64(slot.key) as usize & self.mask;
            while self.slots[pos].key != EMPTY_KEY {
                pos = (pos + 1) & self.mask;
            }
            self.slots[pos] = slot;
        }
    }

    /// Row of the voxel at `coord`, `None` if it is absent or outside the grid.
    #[inline]
    pub fn get(&self, coord: [i32; 3]) -> Option<u32> {
        let (key, cell) = self.locate(coord)?;
        let brick = self.brick(key)?;
        let row = self.cells[brick as usize * BRICK_CELLS + cell];
        (row != MISSING).then_some(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_present_and_misses_absent_voxels() {
        let coords = [[0, 0, 0], [3, 1, 2], [7, 7, 7], [1, 0, 0]];
        let index = VoxelIndex::build(&coords, 8).expect("valid coords");
        for (row, &c) in coords.iter().enumerate() {
            assert_eq!(index.get(c), Some(row as u32), "{c:?}");
        }
        assert_eq!(index.get([0, 0, 1]), None);
        // Outside the grid: missing, never an aliased voxel (x=8 would alias y+1 in a flat key).
        assert_eq!(index.get([-1, 0, 0]), None);
        assert_eq!(index.get([8, 0, 0]), None);
        assert_eq!(index.get([2, 8, 0]), None);
    }

    #[test]
    fn one_voxel_per_brick_grows_the_table() {
        // 1000 voxels 4 apart: every voxel opens its own brick, far past the initial size.
        let coords: Vec<[i32; 3]> = (0..1000)
            .map(|i| [4 * (i % 10), 4 * ((i / 10) % 10), 4 * (i / 100)])
            .collect();
        let index = VoxelIndex::build(&coords, 64).expect("valid coords");
        for (row, &c) in coords.iter().enumerate() {
            assert_eq!(index.get(c), Some(row as u32), "{c:?}");
            assert_eq!(index.get([c[0] + 1, c[1], c[2]]), None);
        }
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(
            VoxelIndex::build(&[[0, 0, 0], [1, 2, 3], [1, 2, 3]], 4).err(),
            Some(MeshError::DuplicateCoord {
                row: 2,
                first_row: 1,
                coord: [1, 2, 3]
            })
        );
        assert_eq!(
            VoxelIndex::build(&[[0, 4, 0]], 4).err(),
            Some(MeshError::CoordOutOfGrid {
                row: 0,
                coord: [0, 4, 0],
                grid_size: 4
            })
        );
        assert_eq!(
            VoxelIndex::build(&[], 0).err(),
            Some(MeshError::BadGridSize { grid_size: 0 })
        );
    }
}
