//! The CUDA driver's default memory pool, which candle allocates from (`cuMemAllocAsync`).
//! Its release threshold is 0 by default: at every stream synchronisation the pool hands its
//! free memory back to the driver, so the next large allocation maps fresh memory again. The
//! decoders synchronise at every level (child counts, neighbour-map status) and allocate
//! hundreds of MB per level, so that cost recurs; PyTorch's caching allocator keeps the memory.

use candle_core::cuda_backend::cudarc::driver::{result, sys};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaDevice, Result};

/// Keeps freed memory in `dev`'s default pool (release threshold = unlimited). The pool's
/// high-water mark then stays reserved until the process exits, as with PyTorch.
pub(crate) fn retain_freed_memory(dev: &CudaDevice) -> Result<()> {
    let cu_device = dev.cuda_stream().context().cu_device();
    let mut threshold = u64::MAX;
    // SAFETY: `cu_device` is the live device of `dev`'s context; the attribute takes a u64
    // (`cuuint64_t`), which `threshold` is, and the driver only reads it during the call.
    unsafe {
        let pool = result::device::get_default_mem_pool(cu_device).w()?;
        result::mem_pool::set_attribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
        .w()?;
    }
    Ok(())
}
