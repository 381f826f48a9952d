//! The neighbour map's CUDA launcher (`kernels/cuda/neighbour_map.cu`), the same plan as Metal's.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{bail, CudaStorage, Layout, Result, Shape, Tensor};

use crate::ops::cuda::{kernel, output, read_u32_words, span, NEIGHBOUR_MAP};
use crate::ops::vocab::{NeighbourArgs, NeighbourPlan, TAPS};

// SAFETY: `#[repr(C)]`, five u32 fields, no padding: the `NeighbourArgs` the kernels take by
// value (kernels/cuda/neighbour_map.cu declares the same struct).
unsafe impl DeviceRepr for NeighbourArgs {}

/// The neighbour map of `coords [T,4]` i32 on the GPU (`kernels/cuda/neighbour_map.cu`) for the
/// launches of `plan` (the same plan as Metal's): `[T·27 + 2]` u32, the map then the two status
/// words (smallest duplicate row or u32::MAX; existing pairs).
pub(crate) fn neighbour_map(
    coords: &CudaStorage,
    l: &Layout,
    plan: &NeighbourPlan,
) -> Result<(CudaStorage, Shape)> {
    const OP: &str = "neighbour map (CUDA)";
    let (ca, cz) = span(l, OP, "coords")?;
    let dev = coords.device().clone();
    let CudaStorageSlice::I32(c) = &coords.slice else {
        bail!("{OP}: coords must be i32, got {:?}", coords.dtype());
    };
    let c = c.slice(ca..cz);
    let n = l.shape().dims2()?.0;
    let len = n * TAPS + 2;
    let out = output::<u32>(&dev, len)?;
    let [clear, insert, lookup] = plan.dispatches.as_slice() else {
        bail!("{OP}: the plan must hold clear, insert and lookup launches");
    };
    let args = clear.args;
    // SAFETY: clear writes every slot before insert and lookup read them.
    let keys = unsafe { dev.alloc::<u32>(plan.capacity) }?;
    let rows = unsafe { dev.alloc::<u32>(plan.capacity) }?;
    let launch = |threads: usize| LaunchConfig {
        grid_dim: (threads.div_ceil(NBR_THREADS) as u32, 1, 1),
        block_dim: (NBR_THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let load = |name: &str| kernel(&dev, &NEIGHBOUR_MAP, name);
    // Kernels write through these views (launch arguments are device pointers either way).
    let status = out.slice(n * TAPS..len);
    {
        let func = load(&clear.kernel)?;
        let mut b = func.builder();
        b.arg(&args).arg(&keys).arg(&status);
        // SAFETY: writes keys[0 ..= capacity_mask] (capacity slots) and status[0..2].
        unsafe { b.launch(launch(plan.capacity)) }.w()?;
    }
    {
        let func = load(&insert.kernel)?;
        let mut b = func.builder();
        b.arg(&args).arg(&c).arg(&keys).arg(&rows).arg(&status);
        // SAFETY: reads coords[T·4]; probes stay inside the power-of-two table by the mask.
        unsafe { b.launch(launch(n)) }.w()?;
    }
    {
        let func = load(&lookup.kernel)?;
        let map = out.slice(0..n * TAPS);
        let mut b = func.builder();
        b.arg(&args)
            .arg(&c)
            .arg(&keys)
            .arg(&rows)
            .arg(&map)
            .arg(&status);
        // SAFETY: writes map[0 .. T·27] (the plan checked T·27 < 2^32) and status[1].
        unsafe { b.launch(launch(n * TAPS)) }.w()?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from(len),
    ))
}

/// Threads per block of the neighbour-map launches.
const NBR_THREADS: usize = 256;

/// The two status words at `at` of the op's output on a CUDA device, read back alone (8 bytes
/// instead of the whole map).
pub(crate) fn status_words(out: &Tensor, at: usize) -> Result<Vec<u32>> {
    read_u32_words(out, at, 2)
}
