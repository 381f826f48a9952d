//! The gated residual's CUDA launcher (`gated_residual_*` in `kernels/cuda/elementwise.cu`).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{bail, CudaStorage, Layout, Result, Shape};
use half::{bf16, f16};

use crate::ops::cuda::{elementwise_launch, elementwise_vec, f32_slice, output, span, ELEMENTWISE};
use crate::ops::sample_offsets::offsets_u32;

/// `x + gate_b · r` per sample (`src/ops/gated_residual.rs`): x, r `[T,C]` f32/f16/bf16 (the
/// same dtype), gate `[B,C]` f32 → `[T,C]` in x's dtype.
pub(crate) fn gated_residual(
    (x, xl): (&CudaStorage, &Layout),
    (r, rl): (&CudaStorage, &Layout),
    (g, gl): (&CudaStorage, &Layout),
    offsets: &[usize],
) -> Result<(CudaStorage, Shape)> {
    const OP: &str = "gated_residual (CUDA)";
    let (rows, c) = xl.shape().dims2()?;
    let (xa, xz) = span(xl, OP, "x")?;
    let (ra, rz) = span(rl, OP, "residual branch")?;
    let (ga, gz) = span(gl, OP, "gate")?;
    let dev = x.device().clone();
    let gate = f32_slice(g, OP, "gate")?.slice(ga..gz);
    let offsets = offsets_u32(OP, offsets)?;
    let (c_, samples) = (c as i32, (offsets.len() - 1) as i32);
    macro_rules! run {
        ($t:ty, $variant:ident, $name:literal) => {{
            let (CudaStorageSlice::$variant(xs), CudaStorageSlice::$variant(rs)) =
                (&x.slice, &r.slice)
            else {
                bail!("{OP}: x and the residual branch must have the same dtype");
            };
            let len = rows * c;
            let out = output::<$t>(&dev, len)?;
            if len > 0 {
                let vec = elementwise_vec::<$t>(c, &[xa, ra]);
                let name = if vec > 1 { concat!($name, "_v") } else { $name };
                let func = dev.get_or_load_custom_func(name, ELEMENTWISE.name, ELEMENTWISE.text)?;
                let offsets = dev.clone_htod(&offsets)?;
                let vectors = len / vec;
                let (xs, rs) = (xs.slice(xa..xz), rs.slice(ra..rz));
                let mut b = func.builder();
                b.arg(&xs).arg(&rs).arg(&gate).arg(&offsets).arg(&out);
                b.arg(&vectors).arg(&c_).arg(&samples);
                // SAFETY: reads x and r [T·C], gate [B·C] and offsets [B+1] (checked by the op);
                // writes every element of out[T·C], owned here.
                unsafe { b.launch(elementwise_launch(vectors)) }.w()?;
            }
            CudaStorage::wrap_cuda_slice(out, dev.clone())
        }};
    }
    let out = match &x.slice {
        CudaStorageSlice::F32(_) => run!(f32, F32, "gated_residual_f32"),
        CudaStorageSlice::F16(_) => run!(f16, F16, "gated_residual_f16"),
        CudaStorageSlice::BF16(_) => run!(bf16, BF16, "gated_residual_bf16"),
        _ => bail!("{OP}: x must be f32, f16 or bf16, got {:?}", x.dtype()),
    };
    Ok((out, xl.shape().clone()))
}
