//! A validated coordinate set `[T,4]` (batch, x, y, z) with its lazily built, cached
//! neighbour map. Coordinates only change at channel→space blocks, so every conv between two
//! such blocks shares one `Arc<CoordSet>` and therefore one neighbour map (docs/MODEL.md §8).
//!
//! The rows live in the set's tensor; a host copy exists only when the set was built from host
//! rows or when [`CoordSet::rows`] is first called. Children that channel→space builds on a
//! GPU never come back to the host unless something asks for their rows (the decoders do not:
//! the neighbour map is built on the device from the tensor, the length and the maxima).

use std::ops::Range;
use std::sync::OnceLock;

use candle_core::{bail, DType, Device, Result, Tensor};
use rayon::prelude::*;

use super::neighbours::NeighbourMap;
use crate::ops::i32_equal::i32_tensors_equal;
use crate::ops::neighbour_map;

pub use crate::ops::vocab::MAX_COORD;

/// Coordinates of a sparse tensor, validated once; host rows on demand.
pub struct CoordSet {
    tensor: Tensor,
    len: usize,
    /// The rows on the host: set at construction from host rows, else downloaded on first use.
    host: OnceLock<Vec<[i32; 4]>>,
    /// Row range of each batch item present, in row order.
    batches: Vec<(i32, Range<usize>)>,
    /// Largest batch, x, y and z (zeros when empty): the GPU neighbour map's key layout.
    max: [u32; 4],
    neighbours: OnceLock<NeighbourMap>,
}

impl std::fmt::Debug for CoordSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordSet")
            .field("rows", &self.len)
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

    /// Builds a set from host rows (channel→space on the CPU and Metal, whose output is valid by
    /// construction except for range, which is checked here too).
    pub fn from_host(host: Vec<[i32; 4]>, device: &Device) -> Result<Self> {
        neighbour_map::check_rows(&host)?;
        let max = host
            .par_iter()
            .fold(
                || [0u32; 4],
                |m, c| std::array::from_fn(|a| m[a].max(c[a] as u32)),
            )
            .reduce(|| [0u32; 4], |a, b| std::array::from_fn(|i| a[i].max(b[i])));
        let batches = neighbour_map::batch_ranges(&host)?;
        let tensor = Tensor::from_slice(host.as_flattened(), (host.len(), 4), device)?;
        Ok(Self {
            tensor,
            len: host.len(),
            host: OnceLock::from(host),
            batches,
            max,
            neighbours: OnceLock::new(),
        })
    }

    /// The same rows without the cached neighbour map and host rows: what outlives the
    /// convolutions that needed them (a decoder's guides kept for a later stage), at the memory
    /// of the rows alone.
    pub fn rows_only(&self) -> Self {
        Self {
            tensor: self.tensor.clone(),
            len: self.len,
            host: OnceLock::new(),
            batches: self.batches.clone(),
            max: self.max,
            neighbours: OnceLock::new(),
        }
    }

    /// A set whose rows exist only in `tensor` (`[T,4]` int32, contiguous), with the batch
    /// ranges and maxima its producer computed: channel→space children built on a GPU, valid
    /// by construction from valid parents. Checked here: the shape, that `batches` tile
    /// `0..T` in increasing batch order, and that `max` lies inside the coordinate range.
    pub(crate) fn from_device(
        tensor: Tensor,
        batches: Vec<(i32, Range<usize>)>,
        max: [u32; 4],
    ) -> Result<Self> {
        let len = match tensor.dims() {
            &[t, 4] if tensor.dtype() == DType::I32 => t,
            d => bail!(
                "sparse coords: expected an int32 [T, 4] tensor, got {:?} {d:?}",
                tensor.dtype()
            ),
        };
        let mut end = 0;
        for (i, (b, range)) in batches.iter().enumerate() {
            let after_previous = i == 0 || batches[i - 1].0 < *b;
            if range.start != end || range.is_empty() || *b < 0 || !after_previous {
                bail!(
                    "sparse coords: batch ranges {batches:?} do not tile 0..{len} in increasing batch order"
                );
            }
            end = range.end;
        }
        if end != len {
            bail!("sparse coords: batch ranges {batches:?} do not tile 0..{len}");
        }
        if let Some(a) = (1..4).find(|&a| max[a] >= MAX_COORD as u32) {
            bail!(
                "sparse coords: {} reaches {} outside [0, {MAX_COORD})",
                ["batch", "x", "y", "z"][a],
                max[a]
            );
        }
        if max[0] > i32::MAX as u32 {
            bail!("sparse coords: batch index {} exceeds int32", max[0]);
        }
        Ok(Self {
            tensor,
            len,
            host: OnceLock::new(),
            batches,
            max,
            neighbours: OnceLock::new(),
        })
    }

    /// The `[T,4]` int32 tensor on the set's device.
    pub fn tensor(&self) -> &Tensor {
        &self.tensor
    }

    /// Rows as `[batch, x, y, z]`, copied from the device on the first call when the set was
    /// built there (a wait for the GPU and `16·T` bytes), then kept.
    pub fn rows(&self) -> Result<&[[i32; 4]]> {
        if let Some(rows) = self.host.get() {
            return Ok(rows);
        }
        let flat = self.tensor.flatten_all()?.to_vec1::<i32>()?;
        let rows = flat
            .chunks_exact(4)
            .map(|c| [c[0], c[1], c[2], c[3]])
            .collect();
        Ok(self.host.get_or_init(|| rows))
    }

    /// Whether `other` holds the same rows in the same order. Cheap when it is the same set,
    /// when lengths or batch ranges differ, or when both have host rows; otherwise the rows are
    /// compared where they live (on a CUDA device by a kernel, without downloading them).
    pub fn same_rows(&self, other: &CoordSet) -> Result<bool> {
        if std::ptr::eq(self, other) {
            return Ok(true);
        }
        if self.len != other.len || self.batches != other.batches {
            return Ok(false);
        }
        if let (Some(a), Some(b)) = (self.host.get(), other.host.get()) {
            return Ok(a == b);
        }
        if self.device().is_cuda() && self.device().same_device(other.device()) {
            return i32_tensors_equal(&self.tensor, &other.tensor);
        }
        Ok(self.rows()? == other.rows()?)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `(batch index, row range)` of each batch item present, in row order.
    pub fn batches(&self) -> &[(i32, Range<usize>)] {
        &self.batches
    }

    /// One past the largest batch index (0 when empty): every row's batch lies in `0..batch_end`.
    pub fn batch_end(&self) -> usize {
        self.batches.last().map_or(0, |(b, _)| *b as usize + 1)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(rows: &[[i32; 4]]) -> Tensor {
        Tensor::from_slice(rows.as_flattened(), (rows.len(), 4), &Device::Cpu).unwrap()
    }

    #[test]
    fn device_built_sets_download_their_rows_on_demand() {
        let rows = [[0, 1, 2, 3], [0, 3, 2, 1], [2, 0, 0, 0]];
        let set =
            CoordSet::from_device(tensor(&rows), vec![(0, 0..2), (2, 2..3)], [2, 3, 2, 3]).unwrap();
        assert_eq!(set.len(), 3);
        assert!(set.host.get().is_none());
        assert_eq!(set.rows().unwrap(), &rows);
        assert!(set.host.get().is_some());
        let from_host = CoordSet::from_host(rows.to_vec(), &Device::Cpu).unwrap();
        assert_eq!(from_host.max(), set.max());
        assert_eq!(from_host.batches(), set.batches());
    }

    #[test]
    fn device_built_sets_check_their_batches_and_range() {
        let rows = tensor(&[[0, 1, 2, 3], [1, 3, 2, 1]]);
        let bad = [
            (vec![(0, 0..1)], [1, 3, 2, 3]),                  // not tiling
            (vec![(1, 0..1), (0, 1..2)], [1, 3, 2, 3]),       // decreasing
            (vec![(0, 0..1), (1, 1..1)], [1, 3, 2, 3]),       // empty range
            (vec![(0, 0..1), (1, 1..2)], [1, 3, 1 << 21, 3]), // out of range
        ];
        for (batches, max) in bad {
            let err = CoordSet::from_device(rows.clone(), batches.clone(), max);
            assert!(err.is_err(), "{batches:?} {max:?} accepted");
        }
        let err = CoordSet::from_device(
            tensor(&[[0, 0, 0, 0]]).narrow(1, 0, 3).unwrap(),
            vec![],
            [0; 4],
        );
        assert!(err.unwrap_err().to_string().contains("[T, 4]"));
    }

    #[test]
    fn same_rows_compares_contents_not_identity() {
        let rows = vec![[0, 1, 2, 3], [0, 3, 2, 1]];
        let a = CoordSet::from_host(rows.clone(), &Device::Cpu).unwrap();
        let b = CoordSet::from_device(tensor(&rows), vec![(0, 0..2)], [0, 3, 2, 3]).unwrap();
        let c = CoordSet::from_host(vec![[0, 1, 2, 3], [0, 3, 2, 2]], &Device::Cpu).unwrap();
        let d = CoordSet::from_host(rows[..1].to_vec(), &Device::Cpu).unwrap();
        assert!(a.same_rows(&a).unwrap());
        assert!(a.same_rows(&b).unwrap());
        assert!(b.same_rows(&a).unwrap());
        assert!(!a.same_rows(&c).unwrap());
        assert!(!a.same_rows(&d).unwrap());
    }
}
