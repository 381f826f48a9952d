//! LayerNorm over the last (channel) axis, as one op for every model: per-voxel norms of the
//! decoders (`LayerNorm32`, `ChannelLayerNorm32`, `F.layer_norm`) and per-token norms of the
//! transformers. Two-pass mean/variance in f32 like PyTorch, because a one-pass
//! `E[x²] − E[x]²` loses digits on rows whose mean is large next to their spread. The custom op
//! below is the CPU path; GPUs run the fused norm+modulate kernel with no modulation.

use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::norm_modulate::layer_norm_modulate_prepared;
use super::norm_params::{zero_modulation, NormAffine};
use super::storage::f32_operands;

struct LayerNorm {
    eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "voxel-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let [x, w, b] = f32_operands(
            [(s1, l1), (s2, l2), (s3, l3)],
            "layer_norm",
            ["input", "weight", "bias"],
        )?;
        let c = w.len();
        let mut out = vec![0f32; x.len()];
        if c > 0 {
            let eps = self.eps;
            out.par_chunks_mut(c)
                .zip(x.par_chunks(c))
                .for_each(|(o, v)| {
                    let mean = v.iter().sum::<f32>() / c as f32;
                    let var = v.iter().map(|&t| (t - mean) * (t - mean)).sum::<f32>() / c as f32;
                    let inv = 1.0 / (var + eps).sqrt();
                    for i in 0..c {
                        o[i] = (v[i] - mean) * inv * w[i] + b[i];
                    }
                });
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// LayerNorm of `x` `[..., C]` over its last axis; `affine` = (weight, bias) `[C]`. Computed
/// in f32; the result has `x`'s dtype and shape.
pub fn layer_norm(x: &Tensor, affine: Option<(&Tensor, &Tensor)>, eps: f64) -> Result<Tensor> {
    let Some(&c) = x.dims().last() else {
        bail!("layer_norm: expected [..., C], got a scalar");
    };
    let affine = match affine {
        Some((w, b)) => {
            if w.dims() != [c] || b.dims() != [c] {
                bail!(
                    "layer_norm: weight {:?} and bias {:?} must be [{c}] for {c} channels",
                    w.dims(),
                    b.dims()
                );
            }
            NormAffine::new(w, b)?
        }
        None => NormAffine::identity(c, x.device())?,
    };
    layer_norm_prepared(x, &affine, eps)
}

/// [`layer_norm`] with the affine parameters prepared once per layer ([`NormAffine`]).
pub fn layer_norm_prepared(x: &Tensor, affine: &NormAffine, eps: f64) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let Some(&c) = dims.last() else {
        bail!("layer_norm: expected [..., C], got a scalar");
    };
    if affine.channels() != c {
        bail!(
            "layer_norm: the affine parameters have {} channels, x has {c}",
            affine.channels()
        );
    }
    let rows = dims[..dims.len() - 1].iter().product::<usize>();
    if !x.device().is_cpu() {
        // GPUs: the fused norm+modulate kernel with no modulation (scale = shift = 0), which
        // reads x in its own dtype and writes the result once (no f32 copies around it).
        let none = zero_modulation(c, x.device())?;
        let y =
            layer_norm_modulate_prepared(&x.reshape((rows, c))?, affine, &none, &[0, rows], eps)?;
        return y.reshape(dims);
    }
    let (w, b) = affine.parts()?;
    let dtype = x.dtype();
    let x2 = x.to_dtype(DType::F32)?.reshape((rows, c))?.contiguous()?;
    let y = x2.apply_op3_no_bwd(&w, &b, &LayerNorm { eps: eps as f32 })?;
    y.reshape(dims)?.to_dtype(dtype)
}

/// Two-pass LayerNorm of `x [T, C]` (f32) from candle primitives: `(x − mean) / sqrt(var + eps)
/// · w + b` with the variance of the centred values, as the fused op computes it. The slow
/// twin `selftest` checks [`layer_norm`] against on any device.
pub fn layer_norm_composed(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(1)?;
    centred
        .broadcast_div(&(var + eps)?.sqrt()?)?
        .broadcast_mul(&w.unsqueeze(0)?)?
        .broadcast_add(&b.unsqueeze(0)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_the_textbook_formula_with_a_large_mean() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[1000.0f32, 1001.0, 1002.0, 1003.0]], &dev).unwrap();
        let y = layer_norm(&x, None, 1e-6)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let inv = 1.0 / (1.25f32 + 1e-6).sqrt();
        for (i, v) in y[0].iter().enumerate() {
            assert!((v - (i as f32 - 1.5) * inv).abs() < 1e-5, "{y:?}");
        }
    }

    #[test]
    fn composed_formula_matches_the_fused_op() {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 96.0, &dev)
            .unwrap()
            .reshape((8, 12))
            .unwrap()
            .sin()
            .unwrap();
        let w = Tensor::arange(1f32, 13.0, &dev).unwrap();
        let b = (Tensor::ones(12, DType::F32, &dev).unwrap() * 0.5).unwrap();
        let fused = layer_norm(&x, Some((&w, &b)), 1e-5).unwrap();
        let composed = layer_norm_composed(&x, &w, &b, 1e-5).unwrap();
        let diff = crate::test_util::max_abs_diff(&fused, &composed);
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn empty_input_gives_empty_output() {
        let x = Tensor::zeros((0, 5), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(layer_norm(&x, None, 1e-5).unwrap().dims(), &[0, 5]);
    }
}
