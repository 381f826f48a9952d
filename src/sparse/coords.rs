//! A validated coordinate set `[T,4]` (batch, x, y, z) with its lazily built, cached
//! neighbour map. Coordinates only change at channel→space blocks, so every conv between two
//! such blocks shares one `Arc<CoordSet>` and therefore one neighbour map (spec §8).

use std::ops::Range;
use std::sync::OnceLock;

use candle_core::{bail, DType, Device, Result, Tensor};
use rayon::prelude::*;

use super::neighbours::NeighbourMap;

/// Spatial coordinates must lie in `[0, MAX_COORD)`: 21 bits per axis, so that a voxel key packs
/// into a `u64` and four 2× subdivisions of any latent grid in use (≤ 128) stay far inside.
pub const MAX_COORD: i32 = 1 << 21;

/// Coordinates of a sparse tensor, validated once, with a host copy for index building.
pub struct CoordSet {
    tensor: Tensor,
    host: Vec<[i32; 4]>,
    /// Row range of each batch item present, in row order.
    batches: Vec<(i32, Range<usize>)>,
    /// Largest batch, x, y and z (zeros when empty): the GPU neighbour map's key layout.
    max: [u32; 4],
    neighbours: OnceLock<NeighbourMap>,
}

impl std::fmt::Debug for CoordSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordSet")
            .field("rows", &self.host.len())
            .field("batches", &self.batches)
            .finish()
    }
}

impl CoordSet {
    /// Validates an int32 `[T,4]` tensor: batch ≥ 0 and non-decreasing (rows of one batch item
    /// contiguous), spatial coordinates in `[0, MAX_COORD)`. Duplicates are found when the
    /// neighbour map is built.
    pub fn new(coords: &Tensor) -> Result<Self> {
        let dims = coords.dims();
        if dims.len() != 2 || dims[1] != 4 {
            bail!("sparse coords: expected shape [T, 4] (batch, x, y, z), got {dims:?}");
        }
        if coords.dtype() != DType::I64 && coords.dtype() != DType::I32 {
            bail!(
                "sparse coords: expected int32 (batch, x, y, z), got {:?}",
                coords.dtype()
            );
        }
        // Cast on the host: candle's CUDA backend lacks integer cast kernels, and the rows are
        // needed there anyway.
        let flat = coords
            .to_device(&Device::Cpu)?
            .to_dtype(DType::I32)?
            .flatten_all()?
            .to_vec1::<i32>()?;
        let host: Vec<[i32; 4]> = flat
            .chunks_exact(4)
            .map(|c| [c[0], c[1], c[2], c[3]])
            .collect();
        Self::from_host(host, coords.device())
    }

    /// Builds a set from host rows (used by channel→space, whose output is valid by
    /// construction except for range, which is checked here too).
    pub fn from_host(host: Vec<[i32; 4]>, device: &Device) -> Result<Self> {
        // Range checks and maxima in parallel (millions of rows at the last decoder level); the
        // first bad row is the one reported.
        let valid = |c: &[i32; 4]| c[0] >= 0 && c[1..].iter().all(|v| (0..MAX_COORD).contains(v));
        if let Some(row) = host.par_iter().position_first(|c| !valid(c)) {
            let c = host[row];
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
        let max = host
            .par_iter()
            .fold(
                || [0u32; 4],
                |m, c| std::array::from_fn(|a| m[a].max(c[a] as u32)),
            )
            .reduce(|| [0u32; 4], |a, b| std::array::from_fn(|i| a[i].max(b[i])));
        let mut batches: Vec<(i32, Range<usize>)> = Vec::new();
        for (row, c) in host.iter().enumerate() {
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
        let tensor = Tensor::from_slice(host.as_flattened(), (host.len(), 4), device)?;
        Ok(Self {
            tensor,
            host,
            batches,
            max,
            neighbours: OnceLock::new(),
        })
    }

    /// The `[T,4]` int32 tensor on the set's device.
    pub fn tensor(&self) -> &Tensor {
        &self.tensor
    }

    /// Rows as `[batch, x, y, z]`.
    pub fn rows(&self) -> &[[i32; 4]] {
        &self.host
    }

    pub fn len(&self) -> usize {
        self.host.len()
    }

    pub fn is_empty(&self) -> bool {
        self.host.is_empty()
    }

    /// `(batch index, row range)` of each batch item present, in row order.
    pub fn batches(&self) -> &[(i32, Range<usize>)] {
        &self.batches
    }

    /// Largest batch index, x, y and z over the rows (zeros when empty).
    pub fn max(&self) -> [u32; 4] {
        self.max
    }

    pub fn device(&self) -> &Device {
        self.tensor.device()
    }

    /// The 3×3×3 neighbour map of this set, built on first use and then shared by every conv.
    pub fn neighbour_map(&self) -> Result<&NeighbourMap> {
        if let Some(map) = self.neighbours.get() {
            return Ok(map);
        }
        let map = NeighbourMap::build(self)?;
        Ok(self.neighbours.get_or_init(|| map))
    }
}
