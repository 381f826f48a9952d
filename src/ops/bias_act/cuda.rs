//! `act(x + bias)`'s CUDA launcher (`bias_act_*` in `kernels/cuda/elementwise.cu`).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{bail, CudaStorage, Layout, Result, Shape};
use half::{bf16, f16};

use crate::ops::cuda::{elementwise_launch, elementwise_vec, f32_slice, output, span, ELEMENTWISE};
use crate::ops::vocab::Activation;

/// `act(x + bias)` (`src/ops/bias_act.rs`): x `[T,C]` f32/f16/bf16, bias `[C]` f32 → `[T,C]` in
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
    let dev = x.device().clone();
    let bias = f32_slice(b, OP, "bias")?.slice(ba..bz);
    let (c_, act_) = (c as i32, act as i32);
    macro_rules! run {
        ($t:ty, $variant:ident, $name:literal) => {{
            let CudaStorageSlice::$variant(xs) = &x.slice else {
                unreachable!("matched on x's dtype")
            };
            let len = rows * c;
            let out = output::<$t>(&dev, len)?;
            if len > 0 {
                let vec = elementwise_vec::<$t>(c, &[xa]);
                let name = if vec > 1 { concat!($name, "_v") } else { $name };
                let func = dev.get_or_load_custom_func(name, ELEMENTWISE.name, ELEMENTWISE.text)?;
                let vectors = len / vec;
                let xs = xs.slice(xa..xz);
                let mut b = func.builder();
                b.arg(&xs)
                    .arg(&bias)
                    .arg(&out)
                    .arg(&vectors)
                    .arg(&c_)
                    .arg(&act_);
                // SAFETY: reads x[T·C] and bias[C] (checked by the op); writes every element of
                // out[T·C], owned here; vectors never straddle a row (C % vec == 0).
                unsafe { b.launch(elementwise_launch(vectors)) }.w()?;
            }
            CudaStorage::wrap_cuda_slice(out, dev.clone())
        }};
    }
    let out = match &x.slice {
        CudaStorageSlice::F32(_) => run!(f32, F32, "bias_act_f32"),
        CudaStorageSlice::F16(_) => run!(f16, F16, "bias_act_f16"),
        CudaStorageSlice::BF16(_) => run!(bf16, BF16, "bias_act_bf16"),
        _ => bail!("{OP}: x must be f32, f16 or bf16, got {:?}", x.dtype()),
    };
    Ok((out, xl.shape().clone()))
}
