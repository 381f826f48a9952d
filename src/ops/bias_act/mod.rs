//! The epilogue of a linear layer or conv: `y = act(x + bias)` over the channels of `x [T, C]`,
//! with `act` the identity, tanh-GELU, exact (erf) GELU or SiLU. One read and one write of the activations,
//! f32 arithmetic and one rounding to `x`'s dtype — instead of candle's strided broadcast add
//! (which ran at a tenth of the GPU's bandwidth) followed by a separate activation pass.
//!
//! Operands of the custom op: x `[T,C]`, bias `[C]` f32. The CPU forward is the reference the
//! CUDA and Metal kernels (kernels/cuda/elementwise.cu, kernels/metal/elementwise.metal) are
//! tested against; [`bias_act_slow`] is the composed candle formula it replaces.

use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

pub use crate::ops::vocab::Activation;

use crate::ops::storage::f32_operands;

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "metal")]
mod metal;

struct BiasAct {
    act: Activation,
}

impl CustomOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "bias-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = "bias_act";
        let [x, bias] = f32_operands([(s1, l1), (s2, l2)], op, ["input", "bias"])?;
        let c = bias.len();
        let act = self.act;
        let mut out = vec![0f32; x.len()];
        if c > 0 {
            out.par_chunks_mut(c)
                .zip(x.par_chunks(c))
                .for_each(|(o, v)| {
                    for ((o, &v), &b) in o.iter_mut().zip(v).zip(bias) {
                        *o = act.apply(v + b);
                    }
                });
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    /// kernels/cuda/elementwise.cu, tested against `cpu_fwd` in tests/cuda_kernels.rs.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::bias_act((s1, l1), (s2, l2), self.act)
    }

    /// kernels/metal/elementwise.metal, tested against `cpu_fwd` in tests/metal_emu.rs.
    #[cfg(feature = "metal")]
    fn metal_fwd(
        &self,
        s1: &candle_core::MetalStorage,
        l1: &Layout,
        s2: &candle_core::MetalStorage,
        l2: &Layout,
    ) -> Result<(candle_core::MetalStorage, Shape)> {
        metal::bias_act((s1, l1), (s2, l2), self.act)
    }
}

fn check(x: &Tensor, bias: &Tensor) -> Result<usize> {
    let c = match x.dims() {
        &[_, c] => c,
        d => bail!("bias_act: x must be [T, C], got {d:?}"),
    };
    if bias.dims() != [c] {
        bail!("bias_act: bias must be [{c}], got {:?}", bias.dims());
    }
    Ok(c)
}

/// `act(x + bias)` for `x [T, C]`, `bias [C]`, in `x`'s dtype: one fused op on every device
/// (f32 arithmetic).
pub fn bias_act(x: &Tensor, bias: &Tensor, act: Activation) -> Result<Tensor> {
    check(x, bias)?;
    let dev = x.device();
    let dtype = x.dtype();
    let xin = if dev.is_cpu() {
        x.to_dtype(DType::F32)?
    } else {
        x.clone()
    };
    xin.contiguous()?
        .apply_op2_no_bwd(&bias.to_dtype(DType::F32)?.contiguous()?, &BiasAct { act })?
        .to_dtype(dtype)
}

/// The same arithmetic composed of candle ops (f32 `broadcast_add`, then `gelu`, `gelu_erf` or
/// `silu`, one rounding to `x`'s dtype): the test reference of [`bias_act`].
pub fn bias_act_slow(x: &Tensor, bias: &Tensor, act: Activation) -> Result<Tensor> {
    check(x, bias)?;
    let y = x
        .to_dtype(DType::F32)?
        .broadcast_add(&bias.to_dtype(DType::F32)?)?;
    act.apply_tensor(&y)?.to_dtype(x.dtype())
}
