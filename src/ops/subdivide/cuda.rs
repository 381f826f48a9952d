//! Channel→space's CUDA launcher (`kernels/cuda/channel_to_space.cu`): the children of a
//! subdivision built on the device from its logits.

use std::ops::Range;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{bail, CudaDevice, CudaStorage, Result, Shape, Storage, Tensor};

use crate::ops::cuda::{kernel, output, span, CHANNEL_TO_SPACE};
use crate::ops::vocab::Children;

/// Parents per block of the count and scan kernels (`SCAN_BLOCK`, one thread each).
const SCAN_BLOCK: usize = 1024;
/// Threads per block of the write kernel (`WRITE_THREADS`, one per (parent, child) slot).
const WRITE_THREADS: usize = 256;
/// Summary words before the batch boundaries: the child count, then max batch, x, y, z.
const SUMMARY_HEAD: usize = 5;

fn tensor(storage: CudaStorage, shape: impl Into<Shape>) -> Tensor {
    Tensor::from_storage(Storage::Cuda(storage), shape, BackpropOp::none(), false)
}

/// Children of the parents `[N, 4]` i32 (rows of batch items `parent_batches`, which tile
/// `0..N`) where `logits [N, 8]` (f32, f16 or bf16, contiguous) is positive, built by three
/// launches; one read-back of `5 + batches` words (the count, maxima and each batch item's first
/// child row). Range checks of the children are the caller's (`2·max + 1 < MAX_COORD`).
pub(crate) fn subdivide(
    parents: &Tensor,
    parent_batches: &[(i32, Range<usize>)],
    logits: &Tensor,
) -> Result<Children> {
    const OP: &str = "channel_to_space children (CUDA)";
    let n = parents.dim(0)?;
    if logits.dims() != [n, 8] {
        bail!(
            "{OP}: logits {:?} for {n} parents, expected [{n}, 8]",
            logits.dims()
        );
    }
    // Child slots 8·n must fit the kernels' u32 indices.
    if n >= 1 << 29 {
        bail!("{OP}: {n} parents × 8 children exceed the kernels' u32 indices");
    }
    let (ps, pl) = parents.storage_and_layout();
    let (ls, ll) = logits.storage_and_layout();
    let (Storage::Cuda(ps), Storage::Cuda(ls)) = (&*ps, &*ls) else {
        bail!("{OP}: parents and logits must be on a CUDA device");
    };
    let CudaStorageSlice::I32(pc) = &ps.slice else {
        bail!("{OP}: parent coords must be i32, got {:?}", ps.dtype());
    };
    let (pa, pz) = span(pl, OP, "parent coords")?;
    let (la, lz) = span(ll, OP, "logits")?;
    let dev = ps.device().clone();
    let pc = pc.slice(pa..pz);
    match &ls.slice {
        CudaStorageSlice::F32(l) => build(&dev, &l.slice(la..lz), "f32", &pc, n, parent_batches),
        CudaStorageSlice::F16(l) => build(&dev, &l.slice(la..lz), "f16", &pc, n, parent_batches),
        CudaStorageSlice::BF16(l) => build(&dev, &l.slice(la..lz), "bf16", &pc, n, parent_batches),
        _ => bail!(
            "{OP}: logits must be f32, f16 or bf16, got {:?}",
            ls.dtype()
        ),
    }
}

/// The launches of [`subdivide`] for logits of one dtype (`suffix` names the kernels').
fn build<T: DeviceRepr>(
    dev: &CudaDevice,
    logits: &CudaView<T>,
    suffix: &str,
    parents: &CudaView<i32>,
    n: usize,
    parent_batches: &[(i32, Range<usize>)],
) -> Result<Children> {
    // Summary: child count, max batch/x/y/z (atomicMax from 0), then the first parent row of
    // each batch item, which the scan replaces by the item's first child row.
    let mut head = vec![0u32; SUMMARY_HEAD];
    head.extend(parent_batches.iter().map(|(_, r)| r.start as u32));
    let boundaries = parent_batches.len() as u32;
    let summary_dev = dev.clone_htod(&head)?;
    let blocks = n.div_ceil(SCAN_BLOCK);
    let offsets = output::<u32>(dev, n)?;
    let block_sums = output::<u32>(dev, blocks)?;
    let (n_, blocks_) = (n as u32, blocks as u32);
    let launch = |grid: usize, threads: usize| LaunchConfig {
        grid_dim: (grid as u32, 1, 1),
        block_dim: (threads as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let load = |name: &str| kernel(dev, &CHANNEL_TO_SPACE, name);
    if n > 0 {
        let func = load(&format!("c2s_count_{suffix}"))?;
        let mut b = func.builder();
        b.arg(logits).arg(parents).arg(&n_);
        b.arg(&offsets).arg(&block_sums).arg(&summary_dev);
        // SAFETY: reads logits[N·8] and parents[N·4] (shapes checked by the caller); writes
        // offsets[N], block_sums[blocks] and summary[1..5], all owned here.
        unsafe { b.launch(launch(blocks, SCAN_BLOCK)) }.w()?;
        let func = load("c2s_scan_blocks")?;
        let mut b = func.builder();
        b.arg(&block_sums).arg(&blocks_).arg(&offsets).arg(&n_);
        b.arg(&summary_dev).arg(&boundaries);
        // SAFETY: one block; reads and writes block_sums[blocks] and summary[0..5 + batches]
        // (every boundary row < N), reads offsets[N].
        unsafe { b.launch(launch(1, SCAN_BLOCK)) }.w()?;
    }
    // The one wait for the GPU of a subdivision.
    let summary = dev.clone_dtoh(&summary_dev)?;
    let total = summary[0] as usize;
    let children = output::<i32>(dev, total * 4)?;
    let sources = output::<u32>(dev, total)?;
    if total > 0 {
        let func = load(&format!("c2s_write_{suffix}"))?;
        let mut b = func.builder();
        b.arg(logits)
            .arg(parents)
            .arg(&n_)
            .arg(&offsets)
            .arg(&block_sums);
        b.arg(&children).arg(&sources);
        // SAFETY: reads logits[N·8], parents[N·4], offsets[N] and block_sums[blocks]; each kept
        // slot writes its own row < total (the scan's offsets), so every element of
        // children[total·4] (16-byte aligned: a fresh allocation) and sources[total] is written
        // exactly once.
        unsafe { b.launch(launch((8 * n).div_ceil(WRITE_THREADS), WRITE_THREADS)) }.w()?;
    }
    let starts = &summary[SUMMARY_HEAD..];
    let mut batches = Vec::new();
    for (j, (b, _)) in parent_batches.iter().enumerate() {
        let start = starts[j] as usize;
        let end = starts.get(j + 1).map_or(total, |&e| e as usize);
        if end > start {
            batches.push((*b, start..end));
        }
    }
    Ok(Children {
        rows: tensor(
            CudaStorage::wrap_cuda_slice(children, dev.clone()),
            (total, 4),
        ),
        sources: tensor(CudaStorage::wrap_cuda_slice(sources, dev.clone()), total),
        batches,
        max: [summary[1], summary[2], summary[3], summary[4]],
    })
}
