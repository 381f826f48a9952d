//! CUDA utilities of the custom ops (docs/ARCHITECTURE.md, "Backends"): the compiled modules of
//! `kernels/cuda/*.cu` (fatbins built by `build.rs` behind the `cuda` feature, loaded once per
//! GPU context and launched on the device's stream), launch shapes, the SM-count cache, output
//! buffers, operand spans, the wgmma/mma.sync kernel choice, the memory pool and candle's own
//! modules loaded as SASS when a device is prepared (`candle_modules`), and device-to-host copies on a copy
//! stream of their own (`host_copy`). The launchers themselves are each op's `cuda.rs`
//! (`src/ops/<op>/cuda.rs`); this module imports no op.
//!
//! Operands of the launchers are bf16 or f16 (both the same dtype), accumulation fp32; the public
//! op functions convert f32 inputs to bf16 before they reach them. Exceptions: the fused norms
//! and elementwise ops (f32, f16 or bf16 activations, f32 parameters and arithmetic) and the
//! deformable im2col (f32 throughout: BiRefNet runs in f32 upstream).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{bail, CudaDevice, CudaStorage, Layout, Result};

use crate::ops::storage::token_stride;

mod candle_modules;
mod host_copy;
mod kernel_choice;
mod launch;
mod mem_pool;
mod modules;

pub(crate) use candle_modules::{load as load_candle_modules, outcomes as candle_module_loads};
pub(crate) use host_copy::{start as start_host_copy, Pending as HostCopyPending};
pub(crate) use kernel_choice::{choose_wgmma, kernel_env, sm90a_device, WgmmaFamily};
pub(crate) use launch::{
    elementwise_launch, elementwise_vec, layer_norm_kernel, norm_launch, norm_launch_groups,
};
pub(crate) use mem_pool::retain_freed_memory;
pub(crate) use modules::*;

/// `(start, end)` of a contiguous layout, or an error naming the operand.
pub(crate) fn span(l: &Layout, op: &str, what: &str) -> Result<(usize, usize)> {
    match l.contiguous_offsets() {
        Some(r) => Ok(r),
        None => bail!("{op}: {what} must be contiguous"),
    }
}

/// Elements `[start, end)` and token stride of a `[N, H, D]` attention operand whose heads and
/// dims are contiguous and whose tokens lie `stride ≥ H·D` elements apart: contiguous, or a row
/// view of a fused projection such as v in `[N, 3, H, D]` (see [`token_stride`], which decides
/// what reaches the kernel uncopied).
pub(crate) fn token_rows(l: &Layout, op: &str, what: &str) -> Result<(usize, usize, usize)> {
    let (n, h, d) = l.shape().dims3()?;
    if let Some((a, z)) = l.contiguous_offsets() {
        return Ok((a, z, h * d));
    }
    let Some(stride) = token_stride(l) else {
        bail!("{op}: {what} must have contiguous heads and dims in each token row");
    };
    let a = l.start_offset();
    let z = if n == 0 {
        a
    } else {
        a + (n - 1) * stride + h * d
    };
    Ok((a, z, stride))
}

/// A device buffer of `len` elements for a kernel that writes every one of them (at least one
/// element, since the driver refuses empty allocations).
pub(crate) fn output<T: DeviceRepr>(dev: &CudaDevice, len: usize) -> Result<CudaSlice<T>> {
    // SAFETY: the caller's kernel writes all `len` elements before anything reads them.
    unsafe { dev.alloc::<T>(len.max(1)) }
}

/// Streaming multiprocessors of the GPU (132 on an H100 SXM), read once per device ordinal: a
/// process may drive GPUs of different models.
pub(crate) fn sm_count(dev: &CudaDevice) -> Result<usize> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static SMS: OnceLock<Mutex<HashMap<usize, usize>>> = OnceLock::new();
    let stream = dev.cuda_stream();
    let context = stream.context();
    let ordinal = context.ordinal();
    let mut sms = SMS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(&n) = sms.get(&ordinal) {
        return Ok(n);
    }
    let n = context
        .attribute(
            candle_core::cuda_backend::cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        )
        .w()?
        .max(1) as usize;
    sms.insert(ordinal, n);
    Ok(n)
}

/// The contiguous `[len]` slice of a tensor an op holds besides its operands (the conv's voxel
/// order or bias), from its storage; `pick` selects the expected dtype's slice, `what` names the
/// tensor in errors.
pub(crate) fn held_slice<'a, T>(
    storage: &'a candle_core::Storage,
    layout: &Layout,
    len: usize,
    (op, what): (&str, &str),
    pick: impl Fn(&'a CudaStorageSlice) -> Option<&'a CudaSlice<T>>,
) -> Result<CudaView<'a, T>> {
    let candle_core::Storage::Cuda(s) = storage else {
        bail!("{op}: the {what} must be on the feats' CUDA device");
    };
    let Some(data) = pick(&s.slice) else {
        bail!("{op}: the {what} has the wrong dtype, {:?}", s.dtype());
    };
    let (a, z) = span(layout, op, what)?;
    if z - a != len {
        bail!("{op}: a {what} of {} entries, expected {len}", z - a);
    }
    Ok(data.slice(a..z))
}

/// The f32 slice of an f32 operand, or an error naming it.
pub(crate) fn f32_slice<'a>(
    s: &'a CudaStorage,
    op: &str,
    what: &str,
) -> Result<&'a CudaSlice<f32>> {
    match &s.slice {
        CudaStorageSlice::F32(v) => Ok(v),
        _ => bail!("{op}: {what} must be f32, got {:?}", s.dtype()),
    }
}

/// `len` u32 words of `tensor` (a contiguous u32 tensor on a CUDA device) from element
/// `start`, copied to the host alone: candle's `to_vec1` copies the tensor's whole buffer first,
/// which for the neighbour map's two status words behind a `[T·27]` map was ≈400 MB.
pub(crate) fn read_u32_words(
    tensor: &candle_core::Tensor,
    start: usize,
    len: usize,
) -> Result<Vec<u32>> {
    const OP: &str = "read back (CUDA)";
    let (storage, layout) = tensor.storage_and_layout();
    let candle_core::Storage::Cuda(s) = &*storage else {
        bail!("{OP}: the tensor is not on a CUDA device");
    };
    let (a, z) = span(layout, OP, "tensor")?;
    if start + len > z - a {
        bail!(
            "{OP}: words {start}..{} outside a tensor of {}",
            start + len,
            z - a
        );
    }
    let CudaStorageSlice::U32(words) = &s.slice else {
        bail!("{OP}: expected u32 words, got {:?}", s.dtype());
    };
    s.device()
        .clone_dtoh(&words.slice(a + start..a + start + len))
}
