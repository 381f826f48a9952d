//! From the shape decoder's raw 7-channel voxels to the inputs of dual-grid extraction.
//!
//! Upstream: `trellis2/models/sc_vaes/fdg_vae.py:FlexiDualGridVaeDecoder.forward` @ 5565d24
//! (docs/MODEL.md §5.4): channels 0–2 → dual-vertex offset, 3–5 → "edge intersected" flags, 6 → quad
//! split weight. Kept apart from the extraction so each half can be tested on its own.

use candle_core::{DType, Tensor};

use super::error::{MeshError, Result};

/// Channels of the shape decoder output (docs/MODEL.md §5.4).
pub const SHAPE_FEAT_CHANNELS: usize = 7;

/// `voxel_margin` of `FlexiDualGridVaeDecoder`: dual vertices may sit up to half a voxel
/// outside their own voxel (docs/MODEL.md §5.4).
pub const VOXEL_MARGIN: f32 = 0.5;

/// torch's `F.softplus` default threshold: above it the function returns its input.
const SOFTPLUS_THRESHOLD: f32 = 20.0;

/// One batch item's voxels, decoded into what the flexible dual grid consumes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DualGridVoxels {
    /// `(x, y, z)` on the `grid_size³` grid, in decoder row order (= vertex order).
    pub coords: Vec<[i32; 3]>,
    /// Dual-vertex position inside the voxel, in voxel units, in `(−0.5, 1.5)`.
    pub dual_vertices: Vec<[f32; 3]>,
    /// Whether the voxel's x-, y-, z-directed primal edge crosses the surface.
    pub intersected: Vec<[bool; 3]>,
    /// Quad split weight (softplus of channel 6), > 0.
    pub split_weights: Vec<f32>,
}

impl DualGridVoxels {
    /// Number of voxels.
    pub fn len(&self) -> usize {
        self.coords.len()
    }

    /// `true` when there are no voxels.
    pub fn is_empty(&self) -> bool {
        self.coords.is_empty()
    }

    /// Fails unless every per-voxel vector has one entry per coordinate.
    pub fn check_lengths(&self) -> Result<()> {
        let n = self.coords.len();
        for (what, rows) in [
            ("dual_vertices", self.dual_vertices.len()),
            ("intersected", self.intersected.len()),
            ("split_weights", self.split_weights.len()),
        ] {
            if rows != n {
                return Err(MeshError::RowCountMismatch {
                    what,
                    rows,
                    expected: n,
                });
            }
        }
        Ok(())
    }
}

/// Dual-vertex offset from its logit: `(1 + 2·margin)·σ(h) − margin` (float32 like upstream;
/// the sigmoid itself is evaluated in f64 and rounded once).
pub fn dual_vertex_offset(logit: f32) -> f32 {
    let sigmoid = (1.0 / (1.0 + (-f64::from(logit)).exp())) as f32;
    (1.0 + 2.0 * VOXEL_MARGIN) * sigmoid - VOXEL_MARGIN
}

/// Edge-intersection flag from its logit: strictly positive (NaN → not intersected).
pub fn edge_intersected(logit: f32) -> bool {
    logit > 0.0
}

/// Split weight from its logit: torch's `softplus(x) = log(1 + eˣ)`, returning `x` itself
/// above the threshold 20 exactly as torch does.
pub fn split_weight(logit: f32) -> f32 {
    if logit > SOFTPLUS_THRESHOLD {
        logit
    } else {
        f64::from(logit).exp().ln_1p() as f32
    }
}

/// Applies the §5.4 activations to one batch item's raw features (`[N, 7]`, row-major).
pub fn activate_shape_feats(coords: Vec<[i32; 3]>, raw_feats: &[f32]) -> Result<DualGridVoxels> {
    let rows = checked_rows("raw_feats", raw_feats.len(), SHAPE_FEAT_CHANNELS)?;
    if rows != coords.len() {
        return Err(MeshError::RowCountMismatch {
            what: "raw_feats",
            rows,
            expected: coords.len(),
        });
    }
    let mut voxels = DualGridVoxels {
        coords,
        dual_vertices: Vec::with_capacity(rows),
        intersected: Vec::with_capacity(rows),
        split_weights: Vec::with_capacity(rows),
    };
    for h in raw_feats.chunks_exact(SHAPE_FEAT_CHANNELS) {
        voxels
            .dual_vertices
            .push([h[0], h[1], h[2]].map(dual_vertex_offset));
        voxels
            .intersected
            .push([h[3], h[4], h[5]].map(edge_intersected));
        voxels.split_weights.push(split_weight(h[6]));
    }
    Ok(voxels)
}

/// Splits the decoder output (`coords` `[N, 4]` = batch, x, y, z; `raw_feats` `[N, 7]`, both
/// row-major) into one [`DualGridVoxels`] per batch index `0..=max batch`. Rows of a batch item
/// must be contiguous and batch indices ascending, as in a `SparseTensor`; an index with no
/// rows yields an empty item.
pub fn split_decoder_output(coords: &[i32], raw_feats: &[f32]) -> Result<Vec<DualGridVoxels>> {
    let rows = checked_rows("coords", coords.len(), 4)?;
    let feat_rows = checked_rows("raw_feats", raw_feats.len(), SHAPE_FEAT_CHANNELS)?;
    if feat_rows != rows {
        return Err(MeshError::RowCountMismatch {
            what: "raw_feats",
            rows: feat_rows,
            expected: rows,
        });
    }
    // Validate the batch column first: indices ≥ 0, ascending, each item contiguous.
    let mut previous = -1;
    for (row, c) in coords.chunks_exact(4).enumerate() {
        let batch = c[0];
        if batch < previous || batch < 0 {
            return Err(MeshError::BadBatchIndex {
                row,
                batch,
                previous,
            });
        }
        previous = batch;
    }
    let num_items = usize::try_from(previous + 1).unwrap_or(0);
    let mut items = Vec::with_capacity(num_items);
    let mut start = 0;
    for batch in 0..num_items as i32 {
        let end = start
            + coords[start * 4..]
                .chunks_exact(4)
                .take_while(|c| c[0] == batch)
                .count();
        let item_coords = coords[start * 4..end * 4]
            .chunks_exact(4)
            .map(|c| [c[1], c[2], c[3]])
            .collect();
        let feats = &raw_feats[start * SHAPE_FEAT_CHANNELS..end * SHAPE_FEAT_CHANNELS];
        items.push(activate_shape_feats(item_coords, feats)?);
        start = end;
    }
    Ok(items)
}

/// [`split_decoder_output`] on tensors: `coords` `[N, 4]` (integer) and `raw_feats` `[N, 7]`
/// (float), on any device.
pub fn split_decoder_tensors(coords: &Tensor, raw_feats: &Tensor) -> Result<Vec<DualGridVoxels>> {
    let tensor_err = |what: &'static str| {
        move |e: candle_core::Error| MeshError::Tensor {
            what,
            message: e.to_string(),
        }
    };
    let (n, width) = coords.dims2().map_err(tensor_err("coords"))?;
    if width != 4 {
        return Err(MeshError::Tensor {
            what: "coords",
            message: format!("shape [{n}, {width}], expected [N, 4]"),
        });
    }
    let (m, channels) = raw_feats.dims2().map_err(tensor_err("raw_feats"))?;
    if channels != SHAPE_FEAT_CHANNELS {
        return Err(MeshError::Tensor {
            what: "raw_feats",
            message: format!("shape [{m}, {channels}], expected [N, {SHAPE_FEAT_CHANNELS}]"),
        });
    }
    // Integer casts run on the host: candle's CUDA backend lacks most integer cast kernels.
    let coords: Vec<i32> = coords
        .to_device(&candle_core::Device::Cpu)
        .and_then(|t| t.to_dtype(DType::I64))
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<i64>())
        .map_err(tensor_err("coords"))?
        .into_iter()
        .map(|c| i32::try_from(c).unwrap_or(i32::MIN))
        .collect();
    let raw_feats: Vec<f32> = raw_feats
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(tensor_err("raw_feats"))?;
    split_decoder_output(&coords, &raw_feats)
}

/// `len / width`, or an error naming the buffer when `len` is not a multiple of `width`.
pub(crate) fn checked_rows(what: &'static str, len: usize, width: usize) -> Result<usize> {
    if width == 0 || !len.is_multiple_of(width) {
        return Err(MeshError::BadLength { what, len, width });
    }
    Ok(len / width)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations_match_their_definitions() {
        assert_eq!(dual_vertex_offset(0.0), 0.5);
        assert!((dual_vertex_offset(30.0) - 1.5).abs() < 1e-6);
        assert!((dual_vertex_offset(-30.0) + 0.5).abs() < 1e-6);
        assert!(edge_intersected(1e-6) && !edge_intersected(0.0) && !edge_intersected(f32::NAN));
        assert_eq!(split_weight(25.0), 25.0);
        assert!((split_weight(0.0) - std::f32::consts::LN_2).abs() < 1e-7);
        assert!(split_weight(-100.0) >= 0.0);
    }

    #[test]
    fn splits_batches_and_keeps_row_order() {
        let coords = [0, 1, 2, 3, 0, 0, 0, 0, 2, 5, 5, 5];
        let feats = [0.0f32; 21];
        let items = split_decoder_output(&coords, &feats).expect("valid");
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].coords, vec![[1, 2, 3], [0, 0, 0]]);
        assert!(items[1].is_empty());
        assert_eq!(items[2].coords, vec![[5, 5, 5]]);
        assert!(split_decoder_output(&[], &[]).expect("empty").is_empty());
    }

    #[test]
    fn rejects_bad_shapes_and_batch_order() {
        assert_eq!(
            split_decoder_output(&[0, 1, 2], &[0.0; 7]).err(),
            Some(MeshError::BadLength {
                what: "coords",
                len: 3,
                width: 4
            })
        );
        assert_eq!(
            split_decoder_output(&[0, 1, 2, 3], &[0.0; 14]).err(),
            Some(MeshError::RowCountMismatch {
                what: "raw_feats",
                rows: 2,
                expected: 1
            })
        );
        assert_eq!(
            split_decoder_output(&[1, 0, 0, 0, 0, 0, 0, 1], &[0.0; 14]).err(),
            Some(MeshError::BadBatchIndex {
                row: 1,
                batch: 0,
                previous: 1
            })
        );
        assert_eq!(
            split_decoder_output(&[0, 0, 0, 0, -1, 0, 0, 0], &[0.0; 14]).err(),
            Some(MeshError::BadBatchIndex {
                row: 1,
                batch: -1,
                previous: 0
            })
        );
    }

    #[test]
    fn tensors_give_the_same_split() {
        let coords = Tensor::new(&[[0i64, 1, 2, 3], [1, 4, 5, 6]], &candle_core::Device::Cpu)
            .expect("tensor");
        let feats = Tensor::zeros((2, 7), DType::F32, &candle_core::Device::Cpu).expect("tensor");
        let items = split_decoder_tensors(&coords, &feats).expect("valid");
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].coords, vec![[4, 5, 6]]);
        let bad = Tensor::zeros((2, 6), DType::F32, &candle_core::Device::Cpu).expect("tensor");
        assert!(split_decoder_tensors(&coords, &bad).is_err());
    }
}
