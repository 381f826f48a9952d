//! The children of a channel→space subdivision (factor 2; docs/MODEL.md §5.2): child
//! `s ∈ 0..8` of a parent sits at offset `(s & 1, s >> 1 & 1, s >> 2 & 1)` on (x, y, z) — bit 0
//! → x — and exists where the parent's logit `s` is positive. Children come parent-major, then
//! by `s` ascending, exactly as upstream's `repeat_interleave` + `nonzero`.
//!
//! On a CUDA device kernels build them from the logits (`kernels/cuda/channel_to_space.cu`):
//! only their count, batch boundaries and maxima come back to the host. [`children_host`] is the
//! reference the kernels are tested against (through `sparse::Subdivision::from_mask`).

use std::ops::Range;

use candle_core::{bail, Result, Tensor};
use rayon::prelude::*;

use crate::ops::neighbour_map::batch_ranges;
use crate::ops::vocab::{Children, CHILDREN};

#[cfg(feature = "cuda")]
mod cuda;

/// Children of the parents `[N, 4]` i32 (rows of batch items `parent_batches`, which tile
/// `0..N`) where `logits [N, 8]` (any float dtype) is positive, on the parents' device. On CUDA
/// the rows never come to the host; elsewhere [`children_host`] builds them. Range checks of the
/// children are the caller's (`2·max + 1 < MAX_COORD`).
pub fn subdivide(
    parents: &Tensor,
    parent_batches: &[(i32, Range<usize>)],
    logits: &Tensor,
) -> Result<Children> {
    let n = parents.dim(0)?;
    if logits.dims() != [n, CHILDREN] {
        bail!(
            "channel_to_space children: logits {:?} for {n} parents, expected [{n}, 8]",
            logits.dims()
        );
    }
    #[cfg(feature = "cuda")]
    if parents.device().is_cuda() && logits.device().same_device(parents.device()) {
        return cuda::subdivide(parents, parent_batches, &logits.contiguous()?);
    }
    let _ = parent_batches;
    let mask = positive(logits)?;
    let parent_rows: Vec<[i32; 4]> = parents
        .to_vec2::<i32>()?
        .into_iter()
        .map(|r| [r[0], r[1], r[2], r[3]])
        .collect();
    let (rows, sources) = children_host(&parent_rows, &mask);
    let max = rows.iter().fold([0u32; 4], |m, c| {
        std::array::from_fn(|a| m[a].max(c[a] as u32))
    });
    let batches = batch_ranges(&rows)?;
    let device = parents.device();
    let total = rows.len();
    Ok(Children {
        rows: Tensor::from_slice(rows.as_flattened(), (total, 4), device)?,
        sources: Tensor::from_vec(sources, total, device)?,
        batches,
        max,
    })
}

/// Where `logits` (any float dtype) is positive, in row-major order: compared on the logits'
/// device, so one byte per element comes back instead of a float.
pub fn positive(logits: &Tensor) -> Result<Vec<bool>> {
    Ok(logits
        .gt(0.0)?
        .flatten_all()?
        .to_vec1::<u8>()?
        .par_iter()
        .map(|&v| v != 0)
        .collect())
}

/// The children rows `[batch, x, y, z]` and their sources (`parent·8 + s`) of `parent_rows`
/// where `mask[n·8 + s]` is set (`mask.len() == 8·N`), built on the host in parallel: each run
/// of parents writes its children at the offset a prefix sum of the child counts gives it, so
/// the order stays parent-major, then by `s`.
pub fn children_host(parent_rows: &[[i32; 4]], mask: &[bool]) -> (Vec<[i32; 4]>, Vec<u32>) {
    // Millions of children at the last decoder level.
    const PARENTS_PER_TASK: usize = 16_384;
    let counts: Vec<usize> = mask
        .par_chunks(CHILDREN)
        .map(|m| m.iter().filter(|&&keep| keep).count())
        .collect();
    let task_sizes: Vec<usize> = counts
        .chunks(PARENTS_PER_TASK)
        .map(|c| c.iter().sum())
        .collect();
    let total: usize = task_sizes.iter().sum();
    let mut rows = vec![[0i32; 4]; total];
    let mut sources = vec![0u32; total];
    let mut parts = Vec::with_capacity(task_sizes.len());
    let (mut row_rest, mut source_rest) = (rows.as_mut_slice(), sources.as_mut_slice());
    for &size in &task_sizes {
        let (r, rr) = row_rest.split_at_mut(size);
        let (s, sr) = source_rest.split_at_mut(size);
        parts.push((r, s));
        (row_rest, source_rest) = (rr, sr);
    }
    parts
        .into_par_iter()
        .enumerate()
        .for_each(|(task, (rows, sources))| {
            let first = task * PARENTS_PER_TASK;
            let mut out = 0;
            for (i, c) in parent_rows[first..]
                .iter()
                .take(PARENTS_PER_TASK)
                .enumerate()
            {
                let n = first + i;
                for s in (0..CHILDREN).filter(|&s| mask[n * CHILDREN + s]) {
                    let bit = |b: usize| ((s >> b) & 1) as i32;
                    rows[out] = [
                        c[0],
                        2 * c[1] + bit(0),
                        2 * c[2] + bit(1),
                        2 * c[3] + bit(2),
                    ];
                    sources[out] = (n * CHILDREN + s) as u32;
                    out += 1;
                }
            }
        });
    (rows, sources)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn host_children_carry_batches_and_maxima() {
        let dev = Device::Cpu;
        let parents = Tensor::from_slice(&[0i32, 1, 2, 3, 1, 0, 0, 0], (2, 4), &dev).unwrap();
        let mut logits = vec![-1f32; 16];
        logits[1] = 1.0; // parent 0, child x+1
        logits[6] = 2.0; // parent 0, child y+1 z+1
        logits[8 + 4] = 0.5; // parent 1, child z+1
        let logits = Tensor::from_vec(logits, (2, 8), &dev).unwrap();
        let c = subdivide(&parents, &[(0, 0..1), (1, 1..2)], &logits).unwrap();
        assert_eq!(
            c.rows.to_vec2::<i32>().unwrap(),
            [[0, 3, 4, 6], [0, 2, 5, 7], [1, 0, 0, 1]]
        );
        assert_eq!(c.sources.to_vec1::<u32>().unwrap(), [1, 6, 12]);
        assert_eq!(c.batches, [(0, 0..2), (1, 2..3)]);
        assert_eq!(c.max, [1, 3, 5, 7]);
        assert!(subdivide(&parents, &[(0, 0..2)], &logits.narrow(1, 0, 7).unwrap()).is_err());
    }
}
