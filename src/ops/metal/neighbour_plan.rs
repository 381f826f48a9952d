//! Dispatch plan of the GPU neighbour map (kernels/metal/neighbour_map.metal): the 32-bit key
//! layout, the hash table size and the clear → insert → lookup dispatches. Backend-free, so the
//! emulator tests run this exact plan.

use super::dispatch::{Dispatch, THREADS};
use super::kargs::NeighbourArgs;
use crate::ops::sparse_conv::TAPS;
use candle_core::{bail, Result};

/// Key bits available: the all-ones word marks an empty slot, so keys stay below 2^31.
pub const KEY_BITS: u32 = 31;

/// The three dispatches (in order) and the table size in slots.
#[derive(Clone, Debug, PartialEq)]
pub struct NeighbourPlan {
    pub capacity: usize,
    pub dispatches: Vec<Dispatch<NeighbourArgs>>,
}

/// Bits that hold every value in `0..=max`.
fn bits(max: u32) -> u32 {
    u32::BITS - max.leading_zeros()
}

fn groups(threads: usize) -> Result<u32> {
    u32::try_from(threads.div_ceil(THREADS as usize))
        .map_err(|_| candle_core::Error::Msg(format!("{threads} threads exceed a u32 grid")))
}

/// The plan for `rows` (`[batch, x, y, z]`, all non-negative, as `CoordSet` guarantees), or
/// `None` when batch, x, y and z need more than [`KEY_BITS`] bits together; then the map is
/// built on the CPU instead (an unsupported case runs elsewhere, it never gives a wrong map).
/// Empty sets plan no dispatch.
pub fn neighbour_plan(rows: &[[i32; 4]]) -> Result<Option<NeighbourPlan>> {
    let mut max = [0u32; 4];
    for (row, c) in rows.iter().enumerate() {
        for a in 0..4 {
            let v = u32::try_from(c[a]).map_err(|_| {
                candle_core::Error::Msg(format!("neighbour map: row {row} {c:?} is negative"))
            })?;
            max[a] = max[a].max(v);
        }
    }
    neighbour_plan_for(rows.len(), max)
}

/// [`neighbour_plan`] for `n` voxels whose largest batch, x, y and z are `max` (what
/// `CoordSet::max` keeps, so the rows need no second pass).
pub fn neighbour_plan_for(n: usize, max: [u32; 4]) -> Result<Option<NeighbourPlan>> {
    if (n as u64) * TAPS as u64 >= u32::MAX as u64 {
        bail!("neighbour map: {n} voxels × 27 taps do not fit the kernel's u32 indices");
    }
    let [bb, bx, by, bz] = max.map(bits);
    if bb + bx + by + bz > KEY_BITS {
        return Ok(None);
    }
    // At most half full: short probe sequences, and an empty slot always ends a probe.
    let capacity = (2 * n).next_power_of_two().max(THREADS as usize);
    if n == 0 {
        return Ok(Some(NeighbourPlan {
            capacity,
            dispatches: Vec::new(),
        }));
    }
    let args = NeighbourArgs {
        n_voxels: n as u32,
        capacity_mask: (capacity - 1) as u32,
        bits_x: bx,
        bits_y: by,
        bits_z: bz,
    };
    let dispatch = |kernel: &str, threads: usize| -> Result<Dispatch<NeighbourArgs>> {
        Ok(Dispatch {
            kernel: kernel.to_string(),
            threadgroups: [groups(threads)?, 1, 1],
            threads: [THREADS, 1, 1],
            threadgroup_memory: 0,
            args,
        })
    };
    Ok(Some(NeighbourPlan {
        capacity,
        dispatches: vec![
            dispatch("neighbour_clear_u32", capacity)?,
            dispatch("neighbour_insert_i32", n)?,
            dispatch("neighbour_lookup_i32", n * TAPS)?,
        ],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_pack_into_31_bits_or_the_plan_declines() {
        let p = neighbour_plan(&[[0, 0, 0, 0], [1, 1023, 5, 7]])
            .unwrap()
            .unwrap();
        let a = p.dispatches[0].args;
        assert_eq!((a.bits_x, a.bits_y, a.bits_z), (10, 3, 3));
        assert_eq!(p.capacity, 128);
        assert_eq!(p.dispatches[2].threadgroups, [1, 1, 1]);
        // 4 batch items at 1024³ need 2 + 30 bits.
        assert!(neighbour_plan(&[[3, 1023, 1023, 1023]]).unwrap().is_none());
        assert!(neighbour_plan(&[]).unwrap().unwrap().dispatches.is_empty());
    }
}
