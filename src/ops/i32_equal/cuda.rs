//! The device comparison of two int32 tensors (`i32_words_differ` in
//! `kernels/cuda/channel_to_space.cu`).

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{bail, Result, Storage, Tensor};

use crate::ops::cuda::{elementwise_launch, kernel, span, CHANNEL_TO_SPACE};

/// Whether two int32 tensors on one CUDA device hold the same elements in the same order
/// (contiguous layouts): one kernel and one word read back, not the tensors.
pub(crate) fn i32_tensors_equal(a: &Tensor, b: &Tensor) -> Result<bool> {
    const OP: &str = "coordinate comparison (CUDA)";
    if a.dims() != b.dims() {
        return Ok(false);
    }
    let (sa, la) = a.storage_and_layout();
    let (sb, lb) = b.storage_and_layout();
    let (Storage::Cuda(sa), Storage::Cuda(sb)) = (&*sa, &*sb) else {
        bail!("{OP}: both tensors must be on a CUDA device");
    };
    if !sa.device().same_device(sb.device()) {
        bail!("{OP}: the tensors are on different CUDA devices");
    }
    let (CudaStorageSlice::I32(va), CudaStorageSlice::I32(vb)) = (&sa.slice, &sb.slice) else {
        bail!(
            "{OP}: expected i32 tensors, got {:?} and {:?}",
            sa.dtype(),
            sb.dtype()
        );
    };
    let (a0, a1) = span(la, OP, "first tensor")?;
    let (b0, b1) = span(lb, OP, "second tensor")?;
    let n = a1 - a0;
    if n == 0 {
        return Ok(true);
    }
    let dev = sa.device().clone();
    let flag = dev.alloc_zeros::<u32>(1)?;
    let func = kernel(&dev, &CHANNEL_TO_SPACE, "i32_words_differ")?;
    let (va, vb) = (va.slice(a0..a1), vb.slice(b0..b1));
    let mut builder = func.builder();
    builder.arg(&va).arg(&vb).arg(&n).arg(&flag);
    // SAFETY: reads a[n] and b[n] (equal shapes, contiguous spans); writes flag[0], owned here.
    unsafe { builder.launch(elementwise_launch(n)) }.w()?;
    Ok(dev.clone_dtoh(&flag)?[0] == 0)
}
