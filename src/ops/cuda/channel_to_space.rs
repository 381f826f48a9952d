//! CUDA side of channel→space (`kernels/cuda/channel_to_space.cu`): the children of a
//! subdivision built on the device from its logits, the fused C2S skip add, and the device
//! comparison of two coordinate tensors.

use std::ops::Range;

use candle_core::backend::BackendDevice;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{bail, CudaDevice, CudaStorage, Layout, Result, Shape, Storage, Tensor};
use half::{bf16, f16};

use super::{elementwise_launch, elementwise_vec, output, span};

const C2S_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/channel_to_space.ptx"));
const MODULE: &str = "trellis2_channel_to_space";

/// Parents per block of the count and scan kernels (`SCAN_BLOCK`, one thread each).
const SCAN_BLOCK: usize = 1024;
/// Threads per block of the write kernel (`WRITE_THREADS`, one per (parent, child) slot).
const WRITE_THREADS: usize = 256;
/// Summary words before the batch boundaries: the child count, then max batch, x, y, z.
const SUMMARY_HEAD: usize = 5;

/// The children of a subdivision, on the parents' device.
pub(crate) struct DeviceChildren {
    /// `[N', 4]` i32 (batch, x, y, z), parent-major then by child index.
    pub rows: Tensor,
    /// `[N']` u32, `parent·8 + s` of each child.
    pub sources: Tensor,
    /// Row range of each batch item with children, in row order.
    pub batches: Vec<(i32, Range<usize>)>,
    /// Exact largest batch, x, y and z of the children (zeros when there are none).
    pub max: [u32; 4],
}

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
) -> Result<DeviceChildren> {
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
) -> Result<DeviceChildren> {
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
    let load = |name: &str| dev.get_or_load_custom_func(name, MODULE, C2S_PTX);
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
    Ok(DeviceChildren {
        rows: tensor(
            CudaStorage::wrap_cuda_slice(children, dev.clone()),
            (total, 4),
        ),
        sources: tensor(CudaStorage::wrap_cuda_slice(sources, dev.clone()), total),
        batches,
        max: [summary[1], summary[2], summary[3], summary[4]],
    })
}

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
    let func = dev.get_or_load_custom_func("i32_words_differ", MODULE, C2S_PTX)?;
    let (va, vb) = (va.slice(a0..a1), vb.slice(b0..b1));
    let mut builder = func.builder();
    builder.arg(&va).arg(&vb).arg(&n).arg(&flag);
    // SAFETY: reads a[n] and b[n] (equal shapes, contiguous spans); writes flag[0], owned here.
    unsafe { builder.launch(elementwise_launch(n)) }.w()?;
    Ok(dev.clone_dtoh(&flag)?[0] == 0)
}

/// `h + repeat_interleave(x[8N, carried].index_select(sources), repeat)`
/// (`src/ops/c2s_skip_add.rs`): h `[N', C']` and x `[N, C]` f32/f16/bf16 (the same dtype),
/// sources `[N']` u32 → `[N', C']` in h's dtype.
pub(crate) fn c2s_skip_add(
    (h, hl): (&CudaStorage, &Layout),
    (x, xl): (&CudaStorage, &Layout),
    (s, sl): (&CudaStorage, &Layout),
    carried: usize,
    repeat: usize,
) -> Result<(CudaStorage, Shape)> {
    const OP: &str = "c2s_skip_add (CUDA)";
    let (rows, c_out) = hl.shape().dims2()?;
    let (ha, hz) = span(hl, OP, "h")?;
    let (xa, xz) = span(xl, OP, "parent features")?;
    let (sa, sz) = span(sl, OP, "sources")?;
    if c_out != carried * repeat || carried == 0 {
        bail!("{OP}: {c_out} channels are not {carried} carried × {repeat}");
    }
    if sz - sa != rows {
        bail!("{OP}: {} sources for {rows} children", sz - sa);
    }
    let CudaStorageSlice::U32(src) = &s.slice else {
        bail!("{OP}: sources must be u32, got {:?}", s.dtype());
    };
    // Channel blocks of the parents: sources index these.
    let x_blocks = u32::try_from((xz - xa) / carried)
        .map_err(|_| candle_core::Error::Msg(format!("{OP}: too many parent channel blocks")))?;
    let dev = h.device().clone();
    let (c_out_, carried_, repeat_) = (c_out as i32, carried as i32, repeat as i32);
    let src = src.slice(sa..sz);
    macro_rules! run {
        ($t:ty, $variant:ident, $name:literal) => {{
            let (CudaStorageSlice::$variant(hs), CudaStorageSlice::$variant(xs)) =
                (&h.slice, &x.slice)
            else {
                bail!("{OP}: h and the parent features must have the same dtype");
            };
            let len = rows * c_out;
            let out = output::<$t>(&dev, len)?;
            if len > 0 {
                let vec = elementwise_vec::<$t>(c_out, &[ha]);
                let name = if vec > 1 { concat!($name, "_v") } else { $name };
                let func = dev.get_or_load_custom_func(name, MODULE, C2S_PTX)?;
                let vectors = len / vec;
                let (hs, xs) = (hs.slice(ha..hz), xs.slice(xa..xz));
                let mut b = func.builder();
                b.arg(&hs).arg(&xs).arg(&src).arg(&out);
                b.arg(&vectors)
                    .arg(&c_out_)
                    .arg(&carried_)
                    .arg(&repeat_)
                    .arg(&x_blocks);
                // SAFETY: reads h[N'·C'] and sources[N'] (checked above) and x at
                // source·carried + k for k < carried, only for sources < x_blocks (others give
                // NaN rows); writes every element of out[N'·C'], owned here.
                unsafe { b.launch(elementwise_launch(vectors)) }.w()?;
            }
            CudaStorage::wrap_cuda_slice(out, dev.clone())
        }};
    }
    let out = match &h.slice {
        CudaStorageSlice::F32(_) => run!(f32, F32, "c2s_skip_add_f32"),
        CudaStorageSlice::F16(_) => run!(f16, F16, "c2s_skip_add_f16"),
        CudaStorageSlice::BF16(_) => run!(bf16, BF16, "c2s_skip_add_bf16"),
        _ => bail!("{OP}: h must be f32, f16 or bf16, got {:?}", h.dtype()),
    };
    Ok((out, hl.shape().clone()))
}
