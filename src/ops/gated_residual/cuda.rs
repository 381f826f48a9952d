//! The gated residual's CUDA launcher (`gated_residual_*` in `kernels/cuda/elementwise.cu`).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaView, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{bail, CudaStorage, Layout, Result, Shape};

use crate::ops::cuda::{
    elementwise_launch, elementwise_vec, f32_slice, kernel, output, span, ELEMENTWISE,
};
use crate::ops::sample_offsets::offsets_u32;
use crate::ops::storage::{with_float, FloatElem, FloatFn, FLOATS};

/// `x + gate_b · r` per sample (`src/ops/gated_residual/mod.rs`): x, r `[T,C]` f32/f16/bf16 (the
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
    let gate = f32_slice(g, OP, "gate")?.slice(ga..gz);
    let offsets = offsets_u32(OP, offsets)?;
    let launch = GatedResidual {
        x: (x, xa, xz),
        r: (r, ra, rz),
        gate,
        offsets: &offsets,
        rows,
        c,
    };
    let out = with_float(x.dtype(), FLOATS, launch, || {
        format!("{OP}: x must be f32, f16 or bf16, got {:?}", x.dtype())
    })?;
    Ok((out, xl.shape().clone()))
}

/// The launch of [`gated_residual`] for one element type.
struct GatedResidual<'a> {
    /// x and r with their spans.
    x: (&'a CudaStorage, usize, usize),
    r: (&'a CudaStorage, usize, usize),
    gate: CudaView<'a, f32>,
    offsets: &'a [u32],
    rows: usize,
    c: usize,
}

impl FloatFn for GatedResidual<'_> {
    type Output = CudaStorage;

    fn call<T: FloatElem>(self) -> Result<CudaStorage> {
        let ((x, xa, xz), (r, ra, rz)) = (self.x, self.r);
        if r.dtype() != T::DTYPE {
            bail!("gated_residual (CUDA): x and the residual branch must have the same dtype");
        }
        let (c_, samples) = (self.c as i32, (self.offsets.len() - 1) as i32);
        let dev = x.device();
        let len = self.rows * self.c;
        let out = output::<T>(dev, len)?;
        if len > 0 {
            let vec = elementwise_vec::<T>(self.c, &[xa, ra]);
            let name = format!(
                "gated_residual_{}{}",
                T::NAME,
                if vec > 1 { "_v" } else { "" }
            );
            let func = kernel(dev, &ELEMENTWISE, &name)?;
            let offsets = dev.clone_htod(self.offsets)?;
            let vectors = len / vec;
            let xs = x.as_cuda_slice::<T>()?.slice(xa..xz);
            let rs = r.as_cuda_slice::<T>()?.slice(ra..rz);
            let mut b = func.builder();
            b.arg(&xs).arg(&rs).arg(&self.gate).arg(&offsets).arg(&out);
            b.arg(&vectors).arg(&c_).arg(&samples);
            // SAFETY: reads x and r [T·C], gate [B·C] and offsets [B+1] (checked by the op);
            // writes every element of out[T·C], owned here.
            unsafe { b.launch(elementwise_launch(vectors)) }.w()?;
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}
