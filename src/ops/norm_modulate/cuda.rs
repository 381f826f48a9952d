//! LayerNorm + adaLN modulation's CUDA launcher (`layer_norm_modulate_*` in
//! `kernels/cuda/norms.cu`).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaView, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaStorage, Layout, Result, Shape};

use crate::ops::cuda::{f32_slice, kernel, layer_norm_kernel, output, span, NORMS};
use crate::ops::sample_offsets::offsets_u32;
use crate::ops::storage::{with_float, FloatElem, FloatFn, FLOATS};

/// LayerNorm + adaLN modulation (`src/ops/norm_modulate/mod.rs`): x `[T,C]` f32/f16/bf16, affine
/// `[2,C]` f32, modulation `[B,2,C]` f32 → `[T,C]` in x's dtype.
pub(crate) fn norm_modulate(
    (x, xl): (&CudaStorage, &Layout),
    (a, al): (&CudaStorage, &Layout),
    (m, ml): (&CudaStorage, &Layout),
    offsets: &[usize],
    eps: f32,
) -> Result<(CudaStorage, Shape)> {
    const OP: &str = "layer_norm_modulate (CUDA)";
    let (rows, c) = xl.shape().dims2()?;
    let (xa, xz) = span(xl, OP, "x")?;
    let (aa, az) = span(al, OP, "affine")?;
    let (ma, mz) = span(ml, OP, "modulation")?;
    let affine = f32_slice(a, OP, "affine")?.slice(aa..az);
    let modulation = f32_slice(m, OP, "modulation")?.slice(ma..mz);
    let offsets = offsets_u32(OP, offsets)?;
    let launch = NormModulate {
        x: (x, xa, xz),
        affine,
        modulation,
        offsets: &offsets,
        rows,
        c,
        eps,
    };
    let out = with_float(x.dtype(), FLOATS, launch, || {
        format!("{OP}: x must be f32, f16 or bf16, got {:?}", x.dtype())
    })?;
    Ok((out, xl.shape().clone()))
}

/// The launch of [`norm_modulate`] for one element type.
struct NormModulate<'a> {
    /// x and its span.
    x: (&'a CudaStorage, usize, usize),
    affine: CudaView<'a, f32>,
    modulation: CudaView<'a, f32>,
    offsets: &'a [u32],
    rows: usize,
    c: usize,
    eps: f32,
}

impl FloatFn for NormModulate<'_> {
    type Output = CudaStorage;

    fn call<T: FloatElem>(self) -> Result<CudaStorage> {
        let (x, xa, xz) = self.x;
        let (rows, c) = (self.rows, self.c);
        let samples = (self.offsets.len() - 1) as i32;
        let (rows_, c_) = (rows as i32, c as i32);
        let dev = x.device();
        let out = output::<T>(dev, rows * c)?;
        if rows > 0 && c > 0 {
            let offsets = dev.clone_htod(self.offsets)?;
            let (name, cfg) =
                layer_norm_kernel("layer_norm_modulate", T::NAME, c, size_of::<T>(), rows);
            let func = kernel(dev, &NORMS, &name)?;
            let xs = x.as_cuda_slice::<T>()?.slice(xa..xz);
            let mut b = func.builder();
            b.arg(&xs)
                .arg(&self.affine)
                .arg(&self.modulation)
                .arg(&offsets)
                .arg(&out);
            b.arg(&rows_).arg(&c_).arg(&samples).arg(&self.eps);
            // SAFETY: reads x[T·C], affine[2·C], modulation[B·2·C] and offsets[B+1] (checked
            // by the op); writes every element of out[T·C], owned here.
            unsafe { b.launch(cfg) }.w()?;
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}
