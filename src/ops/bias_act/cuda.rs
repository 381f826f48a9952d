//! `act(x + bias)`'s CUDA launcher (`bias_act_*` in `kernels/cuda/elementwise.cu`).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaView, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaStorage, Layout, Result, Shape};

use crate::ops::cuda::{
    elementwise_launch, elementwise_vec, f32_slice, kernel, output, span, ELEMENTWISE,
};
use crate::ops::storage::{with_float, FloatElem, FloatFn, FLOATS};
use crate::ops::vocab::Activation;

/// `act(x + bias)` (`src/ops/bias_act/mod.rs`): x `[T,C]` f32/f16/bf16, bias `[C]` f32 → `[T,C]` in
/// x's dtype.
pub(crate) fn bias_act(
    (x, xl): (&CudaStorage, &Layout),
    (b, bl): (&CudaStorage, &Layout),
    act: Activation,
) -> Result<(CudaStorage, Shape)> {
    const OP: &str = "bias_act (CUDA)";
    let (rows, c) = xl.shape().dims2()?;
    let (xa, xz) = span(xl, OP, "x")?;
    let (ba, bz) = span(bl, OP, "bias")?;
    let bias = f32_slice(b, OP, "bias")?.slice(ba..bz);
    let launch = BiasAct {
        x,
        span: (xa, xz),
        bias,
        rows,
        c,
        act,
    };
    let out = with_float(x.dtype(), FLOATS, launch, || {
        format!("{OP}: x must be f32, f16 or bf16, got {:?}", x.dtype())
    })?;
    Ok((out, xl.shape().clone()))
}

/// The launch of [`bias_act`] for one element type.
struct BiasAct<'a> {
    x: &'a CudaStorage,
    span: (usize, usize),
    bias: CudaView<'a, f32>,
    rows: usize,
    c: usize,
    act: Activation,
}

impl FloatFn for BiasAct<'_> {
    type Output = CudaStorage;

    fn call<T: FloatElem>(self) -> Result<CudaStorage> {
        let (xa, xz) = self.span;
        let (c_, act_) = (self.c as i32, self.act as i32);
        let dev = self.x.device();
        let len = self.rows * self.c;
        let out = output::<T>(dev, len)?;
        if len > 0 {
            let vec = elementwise_vec::<T>(self.c, &[xa]);
            let name = format!("bias_act_{}{}", T::NAME, if vec > 1 { "_v" } else { "" });
            let func = kernel(dev, &ELEMENTWISE, &name)?;
            let vectors = len / vec;
            let xs = self.x.as_cuda_slice::<T>()?.slice(xa..xz);
            let mut b = func.builder();
            b.arg(&xs)
                .arg(&self.bias)
                .arg(&out)
                .arg(&vectors)
                .arg(&c_)
                .arg(&act_);
            // SAFETY: reads x[T·C] and bias[C] (checked by the op); writes every element of
            // out[T·C], owned here; vectors never straddle a row (C % vec == 0).
            unsafe { b.launch(elementwise_launch(vectors)) }.w()?;
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}
