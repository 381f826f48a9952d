//! The modulated deformable im2col's CUDA launcher (`kernels/cuda/deform_conv.cu`).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{bail, CudaStorage, Layout, Result, Shape};

use crate::ops::cuda::{kernel, output, span, DEFORM_CONV};
use crate::ops::vocab::DeformIm2ColArgs;

// SAFETY: `#[repr(C)]`, nineteen u32 fields and no padding: exactly the `DeformIm2ColArgs` the
// kernel takes by value (kernels/cuda/deform_conv.cu static_asserts the same size).
unsafe impl DeviceRepr for DeformIm2ColArgs {}

/// Threads per block of the deformable im2col.
const DEFORM_THREADS: u32 = 256;

/// Modulated deformable im2col: input `[B,C,H,W]`, offset `[B,2·G·taps,Ho,Wo]`, mask
/// `[B,G·taps,Ho,Wo]`, all f32 → the band's columns `[B, C·taps, rows·Wo]` f32, for the geometry
/// in `band`. See `kernels/cuda/deform_conv.cu`.
pub(crate) fn deform_im2col(
    input: &CudaStorage,
    il: &Layout,
    offset: &CudaStorage,
    ol: &Layout,
    mask: &CudaStorage,
    ml: &Layout,
    band: DeformIm2ColArgs,
) -> Result<(CudaStorage, Shape)> {
    const OP: &str = "deform_conv2d (CUDA)";
    let (ia, iz) = span(il, OP, "input")?;
    let (oa, oz) = span(ol, OP, "offset")?;
    let (ma, mz) = span(ml, OP, "mask")?;
    let dev = input.device().clone();
    let (CudaStorageSlice::F32(input), CudaStorageSlice::F32(offset), CudaStorageSlice::F32(mask)) =
        (&input.slice, &offset.slice, &mask.slice)
    else {
        bail!("{OP}: takes f32 input, offset and mask");
    };
    let total = band.columns();
    if total > u32::MAX as u64 {
        bail!("{OP}: a band of {total} column elements exceeds u32 indexing");
    }
    let out = output::<f32>(&dev, total as usize)?;
    if total > 0 {
        let func = kernel(&dev, &DEFORM_CONV, "deform_im2col_f32")?;
        let args = DeformIm2ColArgs {
            first: 0,
            count: total as u32,
            ..band
        };
        let cfg = LaunchConfig {
            grid_dim: (total.div_ceil(DEFORM_THREADS as u64) as u32, 1, 1),
            block_dim: (DEFORM_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (input, offset, mask) = (
            input.slice(ia..iz),
            offset.slice(oa..oz),
            mask.slice(ma..mz),
        );
        let mut b = func.builder();
        b.arg(&input).arg(&offset).arg(&mask).arg(&out).arg(&args);
        // SAFETY: the op's shape checks bound every index the kernel forms by the input, offset
        // and mask spans; it writes exactly out[0 .. total], owned here.
        unsafe { b.launch(cfg) }.w()?;
    }
    let taps = (band.kh * band.kw) as usize;
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from((
            band.batch as usize,
            band.channels as usize * taps,
            (band.rows * band.out_w) as usize,
        )),
    ))
}
