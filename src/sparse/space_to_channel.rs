//! Space→channel downsampling (`SparseSpatial2Channel`, factor 2; docs/MODEL.md §13.3), the
//! inverse of [`super::channel_to_space`]: voxel `(b, x, y, z)` becomes child
//! `s = (x & 1) | (y & 1) << 1 | (z & 1) << 2` of parent `(b, x >> 1, y >> 1, z >> 1)` — bit 0
//! → x, as in channel→space — and the parent's row holds its children's features in channel
//! blocks `[s·C, (s+1)·C)`, zeros for absent children. Parents come sorted by (batch, x, y, z),
//! exactly as upstream's `unique` of the packed parent codes.
//!
//! The coordinates are built once on the host (the encoder's input voxels come from the host
//! voxeliser); the features are moved on their device by `ops::space_to_channel`.

use std::sync::Arc;

use candle_core::{bail, Result, Tensor};
use rayon::prelude::*;

use super::coords::CoordSet;
use super::tensor::SparseTensor;
use crate::ops::space_to_channel::space_to_channel;
use crate::ops::vocab::{ABSENT, CHILDREN};

/// Where the children of each parent are: apply it to every tensor on the children's
/// coordinates (the block input and its conv output share it).
#[derive(Debug, Clone)]
pub struct Downsampling {
    parents: Arc<CoordSet>,
    /// `[M·8]` u32 on the children's device: the row of child `s` of parent `m` at `m·8 + s`,
    /// or [`ABSENT`].
    slots: Tensor,
    children: usize,
}

impl Downsampling {
    /// The parents of `children` and each child's slot.
    pub fn new(children: &Arc<CoordSet>) -> Result<Self> {
        let rows = children.rows()?;
        if rows.len() >= ABSENT as usize {
            bail!("space_to_channel: {} voxels exceed u32 rows", rows.len());
        }
        // (parent, s, child), sorted by parent then s: parents in upstream's order.
        let mut keyed: Vec<([i32; 4], u8, u32)> = rows
            .par_iter()
            .enumerate()
            .map(|(i, c)| {
                let s = (c[1] & 1) | ((c[2] & 1) << 1) | ((c[3] & 1) << 2);
                ([c[0], c[1] >> 1, c[2] >> 1, c[3] >> 1], s as u8, i as u32)
            })
            .collect();
        keyed.par_sort_unstable();
        let mut parents: Vec<[i32; 4]> = Vec::new();
        let mut slots: Vec<u32> = Vec::new();
        for (i, &(p, s, child)) in keyed.iter().enumerate() {
            if parents.last() != Some(&p) {
                parents.push(p);
                slots.extend([ABSENT; CHILDREN]);
            } else if keyed[i - 1].1 == s {
                bail!(
                    "space_to_channel: voxel {:?} appears twice (rows {} and {child})",
                    rows[child as usize],
                    keyed[i - 1].2
                );
            }
            let m = parents.len() - 1;
            slots[m * CHILDREN + s as usize] = child;
        }
        let device = children.device();
        let n = slots.len();
        Ok(Self {
            parents: Arc::new(CoordSet::from_host(parents, device)?),
            slots: Tensor::from_vec(slots, n, device)?,
            children: rows.len(),
        })
    }

    /// The parents' coordinate set.
    pub fn parents(&self) -> &Arc<CoordSet> {
        &self.parents
    }

    /// `[M·8]` u32: the child row in each parent slot, or [`ABSENT`].
    pub fn slots(&self) -> &Tensor {
        &self.slots
    }

    /// `x [N, C]` on the children → `[M, 8C]` on the parents.
    pub fn apply(&self, x: &SparseTensor) -> Result<SparseTensor> {
        if x.len() != self.children {
            bail!(
                "space_to_channel: tensor has {} voxels, the downsampling was made for {}",
                x.len(),
                self.children
            );
        }
        SparseTensor::on(
            self.parents.clone(),
            space_to_channel(x.feats(), &self.slots)?,
        )
    }

    /// The skip connection of an S2C block: [`Self::apply`], then the `8C` channels averaged in
    /// `c_out` groups of `8C / c_out` consecutive channels (upstream's `reshape(M, c_out, −1)
    /// .mean(−1)`), in f32.
    pub fn apply_mean(&self, x: &SparseTensor, c_out: usize) -> Result<SparseTensor> {
        let moved = self.apply(x)?;
        let (m, c8) = moved.feats().dims2()?;
        if c_out == 0 || c8 % c_out != 0 {
            bail!("space_to_channel: {c8} channels cannot be averaged into {c_out} groups");
        }
        let dtype = moved.feats().dtype();
        let mean = moved
            .feats()
            .to_dtype(candle_core::DType::F32)?
            .reshape((m, c_out, c8 / c_out))?
            .mean(2)?
            .to_dtype(dtype)?;
        moved.replace(mean)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn parents_are_sorted_and_children_take_their_bit_order_slots() {
        let dev = Device::Cpu;
        let rows = vec![[0, 3, 4, 6], [0, 2, 5, 7], [0, 0, 0, 0], [1, 0, 0, 1]];
        let set = Arc::new(CoordSet::from_host(rows, &dev).unwrap());
        let down = Downsampling::new(&set).unwrap();
        assert_eq!(
            down.parents().rows().unwrap(),
            &[[0, 0, 0, 0], [0, 1, 2, 3], [1, 0, 0, 0]]
        );
        let slots = down.slots().to_vec1::<u32>().unwrap();
        let a = ABSENT;
        assert_eq!(
            slots,
            vec![2, a, a, a, a, a, a, a, a, 0, a, a, a, a, 1, a, a, a, a, a, 3, a, a, a]
        );
        let x = SparseTensor::on(
            set,
            Tensor::new(&[[1f32, 1.], [3., 3.], [2., 4.], [4., 8.]], &dev).unwrap(),
        )
        .unwrap();
        let mean = down
            .apply_mean(&x, 4)
            .unwrap()
            .feats()
            .to_vec2::<f32>()
            .unwrap();
        // Parent (0,1,2,3): child 1 = row 0 (1, 1), child 6 = row 1 (3, 3); groups of 4.
        assert_eq!(mean[1], vec![0.5, 0.0, 0.0, 1.5]);
    }

    #[test]
    fn a_repeated_voxel_is_refused() {
        let dev = Device::Cpu;
        let set = Arc::new(CoordSet::from_host(vec![[0, 1, 1, 1], [0, 1, 1, 1]], &dev).unwrap());
        let err = Downsampling::new(&set).unwrap_err().to_string();
        assert!(err.contains("appears twice"), "{err}");
    }
}
