//! Output activations of the SC-VAE decoders (docs/MODEL.md §5.4), applied to `out.raw_feats`.

use candle_core::{bail, Result, Tensor};

fn channels(raw: &Tensor, want: usize, what: &str) -> Result<()> {
    match raw.dims() {
        &[_, c] if c == want => Ok(()),
        d => bail!("{what}: expected [N, {want}] raw decoder features, got shape {d:?}"),
    }
}

/// Dual vertex inside each voxel, `(1 + 2m)·σ(h[:, 0:3]) − m`, in voxel units.
pub fn dual_vertices(raw: &Tensor, voxel_margin: f64) -> Result<Tensor> {
    channels(raw, 7, "dual_vertices")?;
    let s = candle_nn::ops::sigmoid(&raw.narrow(1, 0, 3)?)?;
    s.affine(1.0 + 2.0 * voxel_margin, -voxel_margin)
}

/// Whether each voxel's x-, y-, z-directed primal edge is intersected: `h[:, 3:6] > 0` (u8).
pub fn intersected_edges(raw: &Tensor) -> Result<Tensor> {
    channels(raw, 7, "intersected_edges")?;
    raw.narrow(1, 3, 3)?.gt(0.0)
}

/// Quad split weight `softplus(h[:, 6:7])` (PyTorch's: linear above 20).
pub fn split_weights(raw: &Tensor) -> Result<Tensor> {
    channels(raw, 7, "split_weights")?;
    let h = raw.narrow(1, 6, 1)?;
    // max(h, 0) + log(1 + exp(−|h|)) never overflows.
    let soft = (h.relu()? + (h.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    h.gt(20.0)?.where_cond(&h, &soft)
}

/// Texture voxels: `y·0.5 + 0.5` → base colour RGB, metallic, roughness, alpha (no clamp).
pub fn pbr_attributes(raw: &Tensor) -> Result<Tensor> {
    channels(raw, 6, "pbr_attributes")?;
    raw.affine(0.5, 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn shape_activations_follow_the_spec() {
        let raw =
            Tensor::new(&[[0f32, 100.0, -100.0, 0.5, 0.0, -0.5, 30.0]], &Device::Cpu).unwrap();
        let v = dual_vertices(&raw, 0.5).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(v, vec![vec![0.5, 1.5, -0.5]]);
        let f = intersected_edges(&raw).unwrap().to_vec2::<u8>().unwrap();
        assert_eq!(f, vec![vec![1, 0, 0]]);
        let w = split_weights(&raw).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(w, vec![vec![30.0]]);
        let raw = Tensor::new(&[[0f32, 0., 0., 0., 0., 0., 0.]], &Device::Cpu).unwrap();
        let w = split_weights(&raw).unwrap().to_vec2::<f32>().unwrap();
        assert!((w[0][0] - std::f32::consts::LN_2).abs() < 1e-7);
    }

    #[test]
    fn wrong_channel_count_is_named() {
        let raw = Tensor::zeros((2, 6), candle_core::DType::F32, &Device::Cpu).unwrap();
        let err = dual_vertices(&raw, 0.5).unwrap_err().to_string();
        assert!(err.contains("[N, 7]") && err.contains("[2, 6]"), "{err}");
    }
}
