//! `nn.Linear` with its bias (and an optional activation) applied by the fused
//! [`bias_act`](super::bias_act::bias_act) epilogue: the matmul is candle's (cuBLAS on CUDA),
//! the bias add and activation one pass at full bandwidth instead of candle's strided broadcast
//! add plus a separate activation kernel. Same checkpoint keys as `candle_nn::linear`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::bias_act::{bias_act, Activation};

#[derive(Clone, Debug)]
pub struct Linear {
    /// `[out, in]`, as stored.
    weight: Tensor,
    bias: Option<Tensor>,
}

/// `weight [out, in]` and `bias [out]` under `vb`.
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    Ok(Linear {
        weight: vb.get((out_dim, in_dim), "weight")?,
        bias: Some(vb.get(out_dim, "bias")?),
    })
}

/// `weight [out, in]` only.
pub fn linear_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    Ok(Linear {
        weight: vb.get((out_dim, in_dim), "weight")?,
        bias: None,
    })
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// `act(x·Wᵀ + b)` over the last dim of `x [..., in]`.
    pub fn forward_act(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let Some((&in_dim, lead)) = dims.split_last() else {
            candle_core::bail!("linear: input must have at least one dim, got a scalar");
        };
        let rows = lead.iter().product::<usize>();
        let y = x.reshape((rows, in_dim))?.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => bias_act(&y, b, act)?,
            None => match act {
                Activation::None => y,
                Activation::GeluTanh => y.gelu()?,
                Activation::Silu => y.silu()?,
                Activation::GeluErf => y.gelu_erf()?,
            },
        };
        let mut out_dims = lead.to_vec();
        out_dims.push(self.weight.dim(0)?);
        y.reshape(out_dims)
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, Activation::None)
    }
}
