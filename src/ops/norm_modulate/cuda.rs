//! LayerNorm + adaLN modulation's CUDA launcher (`layer_norm_modulate_*` in
//! `kernels/cuda/norms.cu`).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{bail, CudaStorage, Layout, Result, Shape};
use half::{bf16, f16};

use crate::ops::cuda::{f32_slice, layer_norm_kernel, output, span, NORMS};
use crate::ops::sample_offsets::offsets_u32;

/// LayerNorm + adaLN modulation (`src/ops/norm_modulate.rs`): x `[T,C]` f32/f16/bf16, affine
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
    let dev = x.device().clone();
    let affine = f32_slice(a, OP, "affine")?.slice(aa..az);
    let modulation = f32_slice(m, OP, "modulation")?.slice(ma..mz);
    let offsets = offsets_u32(OP, offsets)?;
    let samples = (offsets.len() - 1) as i32;
    let (rows_, c_) = (rows as i32, c as i32);
    macro_rules! run {
        ($t:ty, $variant:ident, $name:literal) => {{
            let CudaStorageSlice::$variant(xs) = &x.slice else {
                unreachable!("matched on x's dtype")
            };
            let out = output::<$t>(&dev, rows * c)?;
            if rows > 0 && c > 0 {
                let offsets = dev.clone_htod(&offsets)?;
                let (name, cfg) = layer_norm_kernel(
                    "layer_norm_modulate",
                    $name,
                    c,
                    std::mem::size_of::<$t>(),
                    rows,
                );
                let func = dev.get_or_load_custom_func(&name, NORMS.name, NORMS.text)?;
                let xs = xs.slice(xa..xz);
                let mut b = func.builder();
                b.arg(&xs).arg(&affine).arg(&modulation).arg(&offsets).arg(&out);
                b.arg(&rows_).arg(&c_).arg(&samples).arg(&eps);
                // SAFETY: reads x[T·C], affine[2·C], modulation[B·2·C] and offsets[B+1] (checked
                // by the op); writes every element of out[T·C], owned here.
                unsafe { b.launch(cfg) }.w()?;
            }
            CudaStorage::wrap_cuda_slice(out, dev.clone())
        }};
    }
    let out = match &x.slice {
        CudaStorageSlice::F32(_) => run!(f32, F32, "f32"),
        CudaStorageSlice::F16(_) => run!(f16, F16, "f16"),
        CudaStorageSlice::BF16(_) => run!(bf16, BF16, "bf16"),
        _ => bail!("{OP}: x must be f32, f16 or bf16, got {:?}", x.dtype()),
    };
    Ok((out, xl.shape().clone()))
}
