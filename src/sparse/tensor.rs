//! `SparseTensor`: features `[T,C]` on a shared, validated coordinate set `[T,4]`.

use std::sync::Arc;

use candle_core::{bail, Result, Tensor};

use super::coords::CoordSet;
use super::neighbours::NeighbourMap;

/// Sparse voxels: row `i` of `feats` belongs to voxel `coords.rows()[i]`. Cloning and
/// [`SparseTensor::replace`] share the coordinate set, and with it the cached neighbour map.
#[derive(Debug, Clone)]
pub struct SparseTensor {
    feats: Tensor,
    coords: Arc<CoordSet>,
}

impl SparseTensor {
    /// `coords` int32 `[T,4]` (batch, x, y, z), `feats` `[T,C]`.
    pub fn new(coords: &Tensor, feats: Tensor) -> Result<Self> {
        Self::on(Arc::new(CoordSet::new(coords)?), feats)
    }

    /// Features on an existing coordinate set.
    pub fn on(coords: Arc<CoordSet>, feats: Tensor) -> Result<Self> {
        let dims = feats.dims();
        if dims.len() != 2 || dims[0] != coords.len() {
            bail!(
                "sparse feats: expected shape [{}, C] to match {} coordinate rows, got {dims:?}",
                coords.len(),
                coords.len()
            );
        }
        Ok(Self { feats, coords })
    }

    /// Same voxels, new features (e.g. after a per-voxel op).
    pub fn replace(&self, feats: Tensor) -> Result<Self> {
        Self::on(self.coords.clone(), feats)
    }

    pub fn feats(&self) -> &Tensor {
        &self.feats
    }

    pub fn coord_set(&self) -> &Arc<CoordSet> {
        &self.coords
    }

    /// The `[T,4]` int32 coordinates.
    pub fn coords(&self) -> &Tensor {
        self.coords.tensor()
    }

    pub fn len(&self) -> usize {
        self.coords.len()
    }

    pub fn is_empty(&self) -> bool {
        self.coords.is_empty()
    }

    pub fn channels(&self) -> usize {
        self.feats.dims()[1]
    }

    /// The coordinate set's neighbour map (built once, then cached).
    pub fn neighbour_map(&self) -> Result<&NeighbourMap> {
        self.coords.neighbour_map()
    }
}
