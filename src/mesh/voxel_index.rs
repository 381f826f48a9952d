//! Coordinate → row index of a sparse voxel set.
//!
//! Replaces o_voxel's CUDA `hashmap_insert_3d_idx_as_val` / `hashmap_lookup_3d` (spec §6.2):
//! same flat key `x·R² + y·R + z`, same Murmur3 finaliser and linear probing, and lookups
//! outside the grid report "missing" instead of aliasing another voxel. Built once, then
//! read-only, so lookups can run on many threads.

use super::error::{MeshError, Result};

/// Largest grid size accepted: keeps `x·R² + y·R + z` far below the empty-slot marker.
pub const MAX_GRID_SIZE: u32 = 1 << 20;

const EMPTY_KEY: u64 = u64::MAX;

/// One slot of the open-addressing table; key and row side by side so a probe touches one
/// cache line.
#[derive(Clone, Copy)]
struct Slot {
    key: u64,
    row: u32,
}

/// Hash index over the voxels of one batch item on a `grid_size³` grid.
pub struct VoxelIndex {
    slots: Vec<Slot>,
    mask: usize,
    grid_size: u32,
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
        if coords.len() >= u32::MAX as usize {
            return Err(MeshError::TooMany {
                what: "voxels",
                count: coords.len(),
            });
        }
        // Load factor ≤ 1/2: misses (most neighbour lookups of a surface) stay short.
        let capacity = (2 * coords.len()).max(16).next_power_of_two();
        let mut index = Self {
            slots: vec![
                Slot {
                    key: EMPTY_KEY,
                    row: u32::MAX
                };
                capacity
            ],
            mask: capacity - 1,
            grid_size,
        };
        for (row, &coord) in coords.iter().enumerate() {
            let key = index.key(coord).ok_or(MeshError::CoordOutOfGrid {
                row,
                coord,
                grid_size,
            })?;
            let mut pos = fmix64(key) as usize & index.mask;
            loop {
                let slot = &mut index.slots[pos];
                if slot.key == EMPTY_KEY {
                    *slot = Slot {
                        key,
                        row: row as u32,
                    };
                    break;
                }
                if slot.key == key {
                    return Err(MeshError::DuplicateCoord {
                        row,
                        first_row: slot.row as usize,
                        coord,
                    });
                }
                pos = (pos + 1) & index.mask;
            }
        }
        Ok(index)
    }

    /// Grid size the index was built for.
    pub fn grid_size(&self) -> u32 {
        self.grid_size
    }

    /// Flat key of an in-grid coordinate, `None` outside the grid.
    #[inline]
    fn key(&self, [x, y, z]: [i32; 3]) -> Option<u64> {
        let r = self.grid_size as i64;
        let (x, y, z) = (x as i64, y as i64, z as i64);
        if x < 0 || y < 0 || z < 0 || x >= r || y >= r || z >= r {
            return None;
        }
        Some(((x * r + y) * r + z) as u64)
    }

    /// Row of the voxel at `coord`, `None` if it is absent or outside the grid.
    #[inline]
    pub fn get(&self, coord: [i32; 3]) -> Option<u32> {
        let key = self.key(coord)?;
        let mut pos = fmix64(key) as usize & self.mask;
        loop {
            let slot = self.slots[pos];
            if slot.key == key {
                return Some(slot.row);
            }
            if slot.key == EMPTY_KEY {
                return None;
            }
            pos = (pos + 1) & self.mask;
        }
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
