//! Layers several networks share.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::ops::bias_act::Activation;
use crate::ops::layer_norm::layer_norm_prepared;
use crate::ops::layer_norm_act::layer_norm_act_prepared;
use crate::ops::norm_params::NormAffine;

/// A LayerNorm over the last axis with learned `weight` and `bias`, through the shared op.
#[derive(Clone)]
pub struct AffineNorm {
    /// Weight and bias stacked in f32 once, as the fused norm kernels read them.
    affine: NormAffine,
    eps: f64,
}

impl AffineNorm {
    pub fn new(channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            affine: NormAffine::new(&vb.get(channels, "weight")?, &vb.get(channels, "bias")?)?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm_prepared(x, &self.affine, self.eps)
    }

    /// `silu(forward(x))` in one pass.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm_act_prepared(x, None, &self.affine, self.eps, Activation::Silu)
    }
}
