//! `nn.Linear` with its bias, an optional activation and an optional residual add fused where
//! the device allows. On CUDA the matmul runs through cuBLASLt with the bias, tanh-GELU and
//! residual in the GEMM's epilogue (`cuda.rs` here): one launch, no elementwise pass over the
//! output. Everywhere else, and for what the epilogue cannot do (SiLU, exact GELU, misaligned
//! operands), the composed path: candle's matmul, then the fused
//! [`bias_act`](crate::ops::bias_act::bias_act) epilogue (one pass at full bandwidth instead of
//! candle's strided broadcast add plus a separate activation kernel), then an add. The composed
//! path is the reference of the fused one (`forward_act_unfused`, `forward_residual_unfused`).
//! Under `TRELLIS2_LINEAR_ACT` (`src/ops/tuning.rs`), f16/bf16 layers whose activation has no
//! cuBLASLt epilogue (SiLU, exact GELU) run instead as one wgmma kernel with the bias and the
//! activation in its epilogue (`linear_act_sm90a_*` in `kernels/cuda/sparse_conv_sm90a.cu`),
//! tested against the same composed path on the CPU.
//! Same checkpoint keys as `candle_nn::linear`.

use std::cell::Cell;

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::ops::bias_act::{bias_act, Activation};

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "metal")]
mod metal;

#[derive(Clone, Debug)]
pub struct Linear {
    /// `[out, in]`, as stored.
    weight: Tensor,
    bias: Option<Tensor>,
}

/// Which implementation the last linear call of this thread ran: diagnostics for the tests and
/// benches, which must know that the fused path was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearPath {
    /// One cuBLASLt matmul with the bias (GELU, residual) in its epilogue.
    CublasLt,
    /// One wgmma kernel with the bias and activation in its epilogue (`TRELLIS2_LINEAR_ACT`).
    WgmmaAct,
    /// candle's matmul, `bias_act` and an add, and why the fused path did not run.
    Composed(&'static str),
}

thread_local! {
    static LAST_PATH: Cell<LinearPath> = const { Cell::new(LinearPath::Composed("no call yet")) };
}

/// The path the last [`Linear`] forward on this thread took.
pub fn last_linear_path() -> LinearPath {
    LAST_PATH.with(Cell::get)
}

/// Whether one matrix product `[rows, inner] · [inner, out]` of `dtype` operands on `device`
/// stays within what one dispatch may take: on Metal, the command-buffer budget (candle's matmul
/// is never split; docs/METAL.md, "Watchdog and dispatch"); elsewhere always.
pub fn matmul_fits_one_dispatch(
    device: &candle_core::Device,
    rows: usize,
    inner: usize,
    out: usize,
    dtype: candle_core::DType,
) -> bool {
    #[cfg(feature = "metal")]
    if device.is_metal() {
        return metal::fits_command_buffer(rows, inner, out, dtype);
    }
    let _ = (device, rows, inner, out, dtype);
    true
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

    /// `x [..., in]` as `[rows, in]`, and the output dims `[..., out]`.
    fn flatten(&self, x: &Tensor) -> Result<(Tensor, Vec<usize>)> {
        let dims = x.dims();
        let Some((&in_dim, lead)) = dims.split_last() else {
            candle_core::bail!("linear: input must have at least one dim, got a scalar");
        };
        let rows = lead.iter().product::<usize>();
        let mut out_dims = lead.to_vec();
        out_dims.push(self.weight.dim(0)?);
        Ok((x.reshape((rows, in_dim))?, out_dims))
    }

    /// The fused path for `x [rows, in]` and which one ran, or why none can.
    fn fused(
        &self,
        x: &Tensor,
        act: Activation,
        residual: Option<&Tensor>,
    ) -> Result<std::result::Result<(Tensor, LinearPath), &'static str>> {
        #[cfg(feature = "cuda")]
        {
            if !x.device().is_cuda() {
                return Ok(Err("not a CUDA device"));
            }
            let gelu = match act {
                Activation::None => false,
                Activation::GeluTanh if cuda::GELU_EPILOGUE_IS_TANH => true,
                _ => {
                    let inputs = x.dim(1)?;
                    let wgmma = crate::ops::tuning::Tuning::current()
                        .linear_act
                        .is_some_and(|max| inputs <= max);
                    if residual.is_none() && wgmma {
                        let x = x.contiguous()?;
                        let y = cuda::wgmma_act(&x, &self.weight, self.bias.as_ref(), act)?;
                        return Ok(y.map(|y| (y, LinearPath::WgmmaAct)));
                    }
                    return Ok(Err("the activation has no cuBLASLt epilogue"));
                }
            };
            let x = x.contiguous()?;
            let residual = residual.map(Tensor::contiguous).transpose()?;
            Ok(cuda::linear(
                &x,
                &self.weight,
                self.bias.as_ref(),
                residual.as_ref(),
                gelu,
            )?
            .map(|y| (y, LinearPath::CublasLt)))
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (x, act, residual);
            Ok(Err("no fused linear on this device"))
        }
    }

    /// `act(x·Wᵀ + b)` of `x [rows, in]`: candle's matmul, then `bias_act`.
    fn composed(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        #[cfg(feature = "metal")]
        if let candle_core::Device::Metal(device) = x.device() {
            let (rows, inner) = x.dims2()?;
            metal::before_matmul(device, rows, inner, self.weight.dim(0)?, x.dtype())?;
        }
        let y = x.matmul(&self.weight.t()?)?;
        match &self.bias {
            Some(b) => bias_act(&y, b, act),
            None => act.apply_tensor(&y),
        }
    }

    /// `act(x·Wᵀ + b)` over the last dim of `x [..., in]`.
    pub fn forward_act(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        let (x, out_dims) = self.flatten(x)?;
        let y = match self.fused(&x, act, None)? {
            Ok((y, path)) => {
                LAST_PATH.with(|p| p.set(path));
                y
            }
            Err(reason) => {
                LAST_PATH.with(|p| p.set(LinearPath::Composed(reason)));
                self.composed(&x, act)?
            }
        };
        y.reshape(out_dims)
    }

    /// `x·Wᵀ + b + residual` over the last dim of `x [..., in]`, `residual [..., out]` (a new
    /// tensor; `residual` is not modified): on CUDA one matmul whose epilogue adds the bias and
    /// the residual.
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let (x, out_dims) = self.flatten(x)?;
        if residual.dims() != out_dims.as_slice() {
            candle_core::bail!(
                "linear: residual {:?} does not match the output {out_dims:?}",
                residual.dims()
            );
        }
        let r = residual.reshape((x.dim(0)?, self.weight.dim(0)?))?;
        let y = match self.fused(&x, Activation::None, Some(&r))? {
            Ok((y, path)) => {
                LAST_PATH.with(|p| p.set(path));
                y
            }
            Err(reason) => {
                LAST_PATH.with(|p| p.set(LinearPath::Composed(reason)));
                (self.composed(&x, Activation::None)? + r)?
            }
        };
        y.reshape(out_dims)
    }

    /// [`Linear::forward_act`] by the composed path on every device: the reference of the fused
    /// one.
    pub fn forward_act_unfused(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        let (x, out_dims) = self.flatten(x)?;
        self.composed(&x, act)?.reshape(out_dims)
    }

    /// [`Linear::forward_residual`] by the composed path on every device (matmul, `bias_act`,
    /// add): the reference of the fused one.
    pub fn forward_residual_unfused(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.forward_act_unfused(x, Activation::None)? + residual
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, Activation::None)
    }
}
