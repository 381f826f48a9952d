//! The sparse conv's CUDA launcher (`kernels/cuda/sparse_conv.cu`, and its Hopper wgmma main
//! loop `kernels/cuda/sparse_conv_sm90a.cu`): tile shape, kernel choice and launch.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{bail, CudaDevice, CudaStorage, Layout, Result, Shape, Tensor};

use crate::ops::cuda::{
    choose_wgmma, held_slice, kernel, kernel_env, large_smem_func, output, sm90a_device, sm_count,
    span, Fatbin, WgmmaFamily, CHANNEL_TO_SPACE, CONV_ORDER, SPARSE_CONV, SPARSE_CONV_SM90A,
};
use crate::ops::storage::{with_float, FloatElem, FloatFn, HALVES};
use crate::ops::tuning::Tuning;
use crate::ops::vocab::{ConvKernel, TAPS};

/// Dynamic shared memory of every sparse-conv kernel: its cp.async ring, 3 stages of 128 + 128
/// rows or 4 of 128 + 64 rows, 128 bytes a row (`SUBM_SMEM` in `kernels/cuda/sparse_conv.cu`).
const SUBM_CONV_SMEM_BYTES: u32 = 98_304;

/// Dynamic shared memory of the 128 × 256 sparse-conv tiles: 3 stages of 128 + 256 rows.
const SUBM_CONV_WIDE_SMEM_BYTES: u32 = 147_456;

/// Whether convs with Co ≥ 256 take 128 × 256 tiles (half the feature gathers of 128 × 128, one
/// block an SM): yes unless `TRELLIS2_CONV_TILE=128`. Measured on an H100 (benches/README.md),
/// sorted: 2.800 / 2.594 / 2.200 ms against 2.935 / 2.706 / 2.378 ms with 128 × 128 tiles at
/// 20k × 1024, 80k × 512 and 300k × 256.
fn subm_conv_wide_tiles() -> bool {
    Tuning::current().conv_tile.wide()
}

/// Whether the sparse-conv kernel skips the products of its 16-row tiles that lack a step's tap
/// (rows sorted by neighbour mask share their taps in groups much smaller than a 128-row tile:
/// ≈ 18.4 instead of ≈ 22.4 taps a row at 20k × 1024, 17.1 instead of 19.9 at 80k × 512):
/// yes unless `TRELLIS2_CONV_ROW_SKIP=off`, which keeps every product (the same results up to
/// the sign of zero) for measuring the difference.
fn subm_conv_row_skip() -> bool {
    Tuning::current().conv_row_skip
}

/// Whether `ConvKernel::Auto` picks the wgmma conv kernel where it can run (compiled in, a
/// compute capability 9.0 device, a supported shape) without `TRELLIS2_CONV_KERNEL` set.
const CONV_WGMMA_BY_DEFAULT: bool = true;

/// Whether the wgmma conv kernels can run on `dev` (see [`sm90a_device`]).
pub(crate) fn wgmma_conv_available(dev: &CudaDevice) -> Result<bool> {
    sm90a_device(dev, SPARSE_CONV_SM90A.is_some())
}

/// Whether this conv runs the wgmma kernel ([`choose_wgmma`]); `vec`: the shape takes 16-byte
/// copies (Ci a multiple of 8, 16-byte aligned operands), the only one the wgmma kernel has.
/// The environment variable is `TRELLIS2_CONV_KERNEL`, the default `CONV_WGMMA_BY_DEFAULT`.
fn use_wgmma_conv(dev: &CudaDevice, vec: bool, kernel: ConvKernel) -> Result<bool> {
    let requested = match kernel {
        ConvKernel::Auto => None,
        ConvKernel::Mma => Some(false),
        ConvKernel::Wgmma => Some(true),
    };
    choose_wgmma(
        WgmmaFamily {
            op: "submanifold_conv3d (CUDA)",
            built: SPARSE_CONV_SM90A.is_some(),
            by_default: CONV_WGMMA_BY_DEFAULT,
            env: kernel_env(Tuning::current().conv_kernel),
        },
        dev,
        requested,
        vec,
        || "Ci a multiple of 8 and 16-byte aligned feats and weight".into(),
    )
}

/// Ring stages and wgmma groups kept in flight (`STAGES`, `KEEP` of
/// `kernels/cuda/sparse_conv_sm90a.cu`, whose header explains the defaults) of the wgmma conv at
/// `bn` output columns: 4 stages at BN = 64 and 256; at BN = 128, 3 (two blocks an SM) unless
/// `TRELLIS2_CONV_STAGES=4` (one). One group in flight at BN = 256 (one block an SM), none
/// otherwise, unless `TRELLIS2_CONV_WGMMA_KEEP` is 0 or 1. Both variables are for measuring.
fn subm_conv_sm90a_pipeline(bn: usize) -> (u32, u32) {
    let tuning = Tuning::current();
    let stages = if bn == 128 {
        tuning.conv_stages.unwrap_or(3)
    } else {
        4
    };
    let keep = tuning
        .conv_wgmma_keep
        .unwrap_or(if bn == 256 { 1 } else { 0 });
    (stages, keep)
}

/// Voxel rows per tile of the wgmma conv at `bn` output columns: 128, or 256 at `bn` ≤ 128 under
/// `TRELLIS2_CONV_ROWS=256` (four warpgroups, 512 threads, one block an SM, a 4-stage ring,
/// one wgmma group kept in flight unless `TRELLIS2_CONV_WGMMA_KEEP=0`). Twice the rows share
/// each weight tile copied to shared memory: per step 48 KB moved for 256 × 128 × 64 products
/// instead of 32 KB for 128 × 128 × 64 (40 KB for 256 × 64 × 64 instead of 24 KB for 128 × 64 ×
/// 64), i.e. 25 % (17 %) fewer bytes per product, at the cost of walking the union of the taps
/// of 256 rows (the products of absent taps are still skipped per 64 rows, and the zero-filled
/// copies of absent rows read nothing). Not measured yet: the default stays 128.
fn subm_conv_sm90a_rows(bn: usize) -> usize {
    if bn <= 128 && Tuning::current().conv_rows == Some(256) {
        256
    } else {
        128
    }
}

/// Dynamic shared memory of a wgmma conv kernel: `stages` ring slots of `rows` A rows and `bn`
/// B rows, 128 bytes a row, plus 1024 bytes for aligning the ring to the 128-byte swizzle's
/// 1024-byte atoms (`smem_bytes` in `kernels/cuda/sparse_conv_sm90a.cu`).
fn subm_conv_sm90a_smem_bytes(rows: usize, bn: usize, stages: u32) -> u32 {
    stages * (rows + bn) as u32 * 128 + 1024
}

/// Submanifold conv: feats `[T,Ci]`, weight `[Co,27,Ci]` (bf16 or f16), neighbour map `[T,27]`
/// u32, optional tile-row order `[T]` u32 and bias `[Co]` f32 → `[T,Co]` in the feats' dtype,
/// or in f32 when `f32_out`. See `kernels/cuda/sparse_conv.cu` and, for `kernel` (which kernel
/// runs: see `use_wgmma_conv`), `kernels/cuda/sparse_conv_sm90a.cu`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn subm_conv3d(
    feats: &CudaStorage,
    fl: &Layout,
    weight: &CudaStorage,
    wl: &Layout,
    map: &CudaStorage,
    ml: &Layout,
    order: Option<&candle_core::Tensor>,
    bias: Option<&candle_core::Tensor>,
    f32_out: bool,
    kernel: ConvKernel,
) -> Result<(CudaStorage, Shape)> {
    const OP: &str = "submanifold_conv3d (CUDA)";
    let (n, ci) = fl.shape().dims2()?;
    let co = wl.shape().dims()[0];
    let (fa, fz) = span(fl, OP, "feats")?;
    let (wa, wz) = span(wl, OP, "weight")?;
    let (ma, mz) = span(ml, OP, "neighbour map")?;
    let dev = feats.device().clone();
    let CudaStorageSlice::U32(map) = &map.slice else {
        bail!("{OP}: the neighbour map must be u32");
    };
    let map = map.slice(ma..mz);
    // The tile-row → voxel permutation (`NeighbourMap::conv_order`), or none: identity.
    let order = order.map(|t| t.storage_and_layout());
    let order = match &order {
        Some((s, l)) => Some(held_slice(s, l, n, (OP, "row order"), |s| match s {
            CudaStorageSlice::U32(o) => Some(o),
            _ => None,
        })?),
        None => None,
    };
    let bias = bias.map(|t| t.storage_and_layout());
    let bias = match &bias {
        Some((s, l)) => Some(held_slice(s, l, co, (OP, "bias"), |s| match s {
            CudaStorageSlice::F32(b) => Some(b),
            _ => None,
        })?),
        None => None,
    };
    // 16-byte copies need Ci a multiple of 8 and 16-byte aligned operand starts; otherwise the
    // `_scalar` kernels.
    let vec = ci.is_multiple_of(8) && fa.is_multiple_of(8) && wa.is_multiple_of(8);
    // Output tile columns: 64 for Co ≤ 64 (the 1.7M × 64 decoder level), 256 for Co ≥ 256
    // (unless `TRELLIS2_CONV_TILE=128`) when those tiles still give every SM one, else 128.
    // A wide tile holds one CTA an SM, so a small set (the sparse-structure decoder's 16³ grid
    // at 512 channels: 32 × 2 wide tiles) would leave half the SMs idle.
    let wide_tiles = n.div_ceil(128) * co.div_ceil(256);
    let (bn, smem) = if co <= 64 {
        (64, SUBM_CONV_SMEM_BYTES)
    } else if co >= 256 && subm_conv_wide_tiles() && wide_tiles >= sm_count(&dev)? {
        (256, SUBM_CONV_WIDE_SMEM_BYTES)
    } else {
        (128, SUBM_CONV_SMEM_BYTES)
    };
    let wgmma = use_wgmma_conv(&dev, vec, kernel)?;
    // The kernel: module, name prefix (before the dtypes) and suffix, shared memory, tile rows
    // (two threads a row).
    let (module, prefix, suffix, smem, rows) = match &SPARSE_CONV_SM90A {
        Some(ptx) if wgmma => match subm_conv_sm90a_rows(bn) {
            256 => {
                let keep = Tuning::current().conv_wgmma_keep.unwrap_or(1);
                (
                    ptx,
                    "subm_conv3d_sm90a",
                    format!("m256_n{bn}_s4_k{keep}"),
                    subm_conv_sm90a_smem_bytes(256, bn, 4),
                    256,
                )
            }
            _ => {
                let (stages, keep) = subm_conv_sm90a_pipeline(bn);
                (
                    ptx,
                    "subm_conv3d_sm90a",
                    format!("n{bn}_s{stages}_k{keep}"),
                    subm_conv_sm90a_smem_bytes(128, bn, stages),
                    128,
                )
            }
        },
        _ => (
            &SPARSE_CONV,
            "subm_conv3d",
            format!("n{bn}{}", if vec { "" } else { "_scalar" }),
            smem,
            128,
        ),
    };
    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(rows) as u32, co.div_ceil(bn) as u32, 1),
        block_dim: (2 * rows as u32, 1, 1),
        shared_mem_bytes: smem,
    };
    let launch = SubmConv {
        feats: (feats, fa, fz),
        weight: (weight, wa, wz),
        map,
        order,
        bias,
        kernel: (module, prefix, suffix, smem),
        cfg,
        dims: (n, ci, co),
        row_skip: subm_conv_row_skip(),
        f32_out,
    };
    let out = with_float(feats.dtype(), HALVES, launch, || {
        format!("{OP}: takes bf16 or f16 feats, got {:?}", feats.dtype())
    })?;
    Ok((out, Shape::from((n, co))))
}

/// The launch of [`subm_conv3d`] for one operand type.
struct SubmConv<'a> {
    /// feats and weight with their spans.
    feats: (&'a CudaStorage, usize, usize),
    weight: (&'a CudaStorage, usize, usize),
    map: CudaView<'a, u32>,
    order: Option<CudaView<'a, u32>>,
    bias: Option<CudaView<'a, f32>>,
    /// Module, kernel name prefix (before the dtypes) and suffix, shared memory.
    kernel: (&'a Fatbin, &'static str, String, u32),
    cfg: LaunchConfig,
    /// `(T, Ci, Co)`.
    dims: (usize, usize, usize),
    row_skip: bool,
    f32_out: bool,
}

impl FloatFn for SubmConv<'_> {
    type Output = CudaStorage;

    fn call<T: FloatElem>(self) -> Result<CudaStorage> {
        if self.weight.0.dtype() != T::DTYPE {
            bail!("submanifold_conv3d (CUDA): feats and weight must have the same dtype");
        }
        if self.f32_out {
            self.launch::<T, f32>()
        } else {
            self.launch::<T, T>()
        }
    }
}

impl SubmConv<'_> {
    /// The `T` operand kernel writing `O` outputs.
    fn launch<T: FloatElem, O: FloatElem>(&self) -> Result<CudaStorage> {
        let ((feats, fa, fz), (weight, wa, wz)) = (self.feats, self.weight);
        let (module, prefix, suffix, smem) = &self.kernel;
        let (n, ci, co) = self.dims;
        let (n_, ci_, co_) = (n as i32, ci as i32, co as i32);
        let row_skip = self.row_skip as i32;
        let dev = feats.device();
        let out = output::<O>(dev, n * co)?;
        if n > 0 && co > 0 {
            let name = format!("{prefix}_{}_{}_{suffix}", T::NAME, O::NAME);
            let func = large_smem_func(dev, module, &name, *smem)?;
            let f = feats.as_cuda_slice::<T>()?.slice(fa..fz);
            let w = weight.as_cuda_slice::<T>()?.slice(wa..wz);
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&func);
            b.arg(&f).arg(&w).arg(&self.map);
            // Null pointers: tile row p is voxel p; no bias.
            match &self.order {
                Some(o) => b.arg(o),
                None => b.arg(&0u64),
            };
            match &self.bias {
                Some(v) => b.arg(v),
                None => b.arg(&0u64),
            };
            b.arg(&out).arg(&n_).arg(&ci_).arg(&co_).arg(&row_skip);
            // SAFETY: the kernel reads feats[T·Ci], weight[Co·27·Ci], map[T·27] (spans
            // checked by the op's shape checks), order[T] (checked above; entries ≥ T are
            // skipped) and bias[Co] (checked above), and writes out[T·Co], which it owns:
            // every row when the order is a permutation, as `NeighbourMap::conv_order` makes
            // it.
            unsafe { b.launch(self.cfg) }.w()?;
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}

/// Rows of a tile of the children conv and of the row list's groups (`ROWS_TILE`).
const CHILD_TILE_ROWS: usize = 128;
/// Threads of the row-list kernels (`ROWS_THREADS` in `kernels/cuda/channel_to_space.cu`).
const ROWS_THREADS: usize = 256;
/// Parents a window of the row list holds at least (`per_block`): each of its 8 slot groups
/// rounds up to whole 128-row tiles, ≈ 64 padding rows a group, 8 · 64 of ≈ 4.66 · 4096 rows
/// (2.7 %) at this size.
const MIN_ROWS_WINDOW: usize = 4096;
/// At most this many windows (blocks of the count and scatter kernels, four per SM of an H100),
/// so that the one-block scan of their `8 × blocks` tile counts stays short.
const MAX_ROWS_BLOCKS: usize = 528;

/// The children conv's row list (`c2s_rows_*` in `kernels/cuda/channel_to_space.cu`): rows and
/// out_rows of `tiles · 128` entries, tile_slot of `tiles` (rows past the last group never
/// read: their tiles' slot is NONE).
struct ChildRows {
    rows: CudaSlice<u32>,
    out_rows: CudaSlice<u32>,
    tile_slot: CudaSlice<u32>,
    /// Tiles the conv's grid covers: ⌈N'/128⌉ + 8 · windows ≥ the groups' tiles.
    tiles: usize,
}

/// Builds the row list of `children` children of `parents` parents from `sources` (`[N']`,
/// `parent·8 + s`) and the parents' conv `order` (`[P]`, a permutation; `None`: the identity).
fn child_rows(
    dev: &CudaDevice,
    sources: &CudaView<u32>,
    order: Option<&CudaView<u32>>,
    parents: usize,
    children: usize,
) -> Result<ChildRows> {
    let slots = parents * 8;
    let per_block = parents
        .div_ceil(MAX_ROWS_BLOCKS)
        .next_multiple_of(ROWS_THREADS)
        .max(MIN_ROWS_WINDOW);
    let blocks = parents.div_ceil(per_block).max(1);
    let tiles = children.div_ceil(CHILD_TILE_ROWS) + 8 * blocks;
    if slots >= u32::MAX as usize || tiles * CHILD_TILE_ROWS >= i32::MAX as usize {
        bail!("c2s children conv (CUDA): {parents} parents exceed the row list's indices");
    }
    let table = dev.alloc_zeros::<u32>(slots.max(1))?;
    {
        let func = kernel(dev, &CHANNEL_TO_SPACE, "c2s_rows_table")?;
        let (n_, slots_) = (children as u32, slots as u32);
        let mut b = func.builder();
        b.arg(sources).arg(&n_).arg(&table).arg(&slots_);
        let cfg = LaunchConfig {
            grid_dim: (children.div_ceil(ROWS_THREADS) as u32, 1, 1),
            block_dim: (ROWS_THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: reads sources[0..N'] and writes table[s] only for s < 8P (the table's length).
        unsafe { b.launch(cfg) }.w()?;
    }
    let hist_len = 8 * blocks + 1;
    let hist = output::<u32>(dev, hist_len)?;
    let cfg = LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (ROWS_THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let (parents_, per_block_, tiles_) = (parents as u32, per_block as u32, tiles as u32);
    {
        let func = kernel(dev, &CHANNEL_TO_SPACE, "c2s_rows_count")?;
        let mut b = func.builder();
        b.arg(&table);
        match order {
            Some(o) => b.arg(o),
            None => b.arg(&0u64),
        };
        b.arg(&parents_).arg(&per_block_).arg(&hist);
        // SAFETY: block b reads order[b·per_block .. min(P, (b+1)·per_block)] and the table rows
        // of those parents (< P: the order is a permutation), and writes hist[8b + s] and
        // hist[8·blocks]: all inside hist's 8·blocks + 1 words.
        unsafe { b.launch(cfg) }.w()?;
    }
    {
        let func = kernel(dev, &CONV_ORDER, "conv_order_scan")?;
        let len = hist_len as u32;
        let mut b = func.builder();
        b.arg(&hist).arg(&len);
        let scan_cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: one block rewrites hist[0..hist_len] in place.
        unsafe { b.launch(scan_cfg) }.w()?;
    }
    let rows = output::<u32>(dev, tiles * CHILD_TILE_ROWS)?;
    let out_rows = output::<u32>(dev, tiles * CHILD_TILE_ROWS)?;
    let tile_slot = output::<u32>(dev, tiles)?;
    {
        let func = kernel(dev, &CHANNEL_TO_SPACE, "c2s_rows_scatter")?;
        let mut b = func.builder();
        b.arg(&table);
        match order {
            Some(o) => b.arg(o),
            None => b.arg(&0u64),
        };
        b.arg(&parents_)
            .arg(&per_block_)
            .arg(&hist)
            .arg(&rows)
            .arg(&out_rows)
            .arg(&tile_slot)
            .arg(&tiles_);
        // SAFETY: reads as the count did; each child goes to one distinct row of its group and
        // each group's padding and tile slots to its own tiles, which end by the scanned total
        // ≤ ⌈N'/128⌉ + 8·blocks = tiles (each group rounds up by less than one tile); block 0
        // writes tile_slot from that total to `tiles`. All inside the three buffers.
        unsafe { b.launch(cfg) }.w()?;
    }
    Ok(ChildRows {
        rows,
        out_rows,
        tile_slot,
        tiles,
    })
}

/// The C2S children conv on `dev` (`subm_conv3d_children_sm90a_*`): whether it can run there,
/// and the convs are not pinned to mma.sync (`TRELLIS2_CONV_KERNEL=mma`).
pub(crate) fn children_conv_available(dev: &CudaDevice) -> Result<bool> {
    if Tuning::current().conv_kernel == crate::ops::tuning::KernelChoice::Mma {
        return Ok(false);
    }
    wgmma_conv_available(dev)
}

/// The C2S children conv: feats `[P,Ci]` (bf16/f16, Ci a multiple of 8), weight `[8C',27,Ci]`
/// of the feats' dtype, the parents' map `[P,27]` u32 and conv order `[P]` u32 (or none),
/// sources `[N']` u32 (`parent·8 + s`), bias `[8C']` f32 → `[N',C']` in the feats' dtype: child
/// i's row is the conv of its parent's neighbourhood with the weight rows of its slot. See
/// `kernels/cuda/sparse_conv_sm90a.cu`. All operands contiguous.
pub(crate) fn subm_conv3d_children(
    feats: &Tensor,
    weight: &Tensor,
    map: &Tensor,
    order: Option<&Tensor>,
    sources: &Tensor,
    bias: &Tensor,
) -> Result<Tensor> {
    const OP: &str = "c2s children conv (CUDA)";
    let (parents, ci) = feats.dims2()?;
    let co = weight.dims()[0] / 8;
    let children = sources.dims1()?;
    let (fs, fl) = feats.storage_and_layout();
    let (ws, wl) = weight.storage_and_layout();
    let (candle_core::Storage::Cuda(fs), candle_core::Storage::Cuda(ws)) = (&*fs, &*ws) else {
        bail!("{OP}: feats and weight must be on the CUDA device");
    };
    let dev = fs.device().clone();
    let (fa, fz) = span(fl, OP, "feats")?;
    let (wa, wz) = span(wl, OP, "weight")?;
    if !ci.is_multiple_of(8) || !fa.is_multiple_of(8) || !wa.is_multiple_of(8) {
        bail!("{OP}: needs Ci a multiple of 8 and 16-byte aligned feats and weight");
    }
    fn u32s(s: &CudaStorageSlice) -> Option<&CudaSlice<u32>> {
        match s {
            CudaStorageSlice::U32(o) => Some(o),
            _ => None,
        }
    }
    let (ms, ml) = map.storage_and_layout();
    let map = held_slice(&ms, ml, parents * TAPS, (OP, "neighbour map"), u32s)?;
    let (ss, sl) = sources.storage_and_layout();
    let src = held_slice(&ss, sl, children, (OP, "sources"), u32s)?;
    let (bs, bl) = bias.storage_and_layout();
    let bias = held_slice(&bs, bl, 8 * co, (OP, "bias"), |s| match s {
        CudaStorageSlice::F32(b) => Some(b),
        _ => None,
    })?;
    let order = order.map(|t| t.storage_and_layout());
    let order = match &order {
        Some((s, l)) => Some(held_slice(s, l, parents, (OP, "row order"), u32s)?),
        None => None,
    };
    if children == 0 || co == 0 {
        return Tensor::zeros((children, co), feats.dtype(), feats.device());
    }
    let list = child_rows(&dev, &src, order.as_ref(), parents, children)?;
    // Output tile columns as the parents conv chooses them for Co = C' over N' rows.
    let wide_tiles = children.div_ceil(128) * co.div_ceil(256);
    let bn = if co <= 64 {
        64
    } else if co >= 256 && subm_conv_wide_tiles() && wide_tiles >= sm_count(&dev)? {
        256
    } else {
        128
    };
    let (stages, keep) = match bn {
        64 => (4, 0),
        128 => (3, 0),
        _ => (4, 1),
    };
    let smem = subm_conv_sm90a_smem_bytes(128, bn, stages);
    let Some(module) = &SPARSE_CONV_SM90A else {
        bail!("{OP}: this build has no sm_90a kernels");
    };
    let launch = ChildConv {
        feats: (fs, fa, fz),
        weight: (ws, wa, wz),
        map,
        src_rows: list,
        bias,
        kernel: (module, format!("n{bn}_s{stages}_k{keep}"), smem),
        cfg: LaunchConfig {
            grid_dim: (0, co.div_ceil(bn) as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: smem,
        },
        dims: (parents, children, ci, co),
        row_skip: subm_conv_row_skip(),
    };
    let out = with_float(feats.dtype(), HALVES, launch, || {
        format!("{OP}: takes bf16 or f16 feats, got {:?}", feats.dtype())
    })?;
    Ok(Tensor::from_storage(
        candle_core::Storage::Cuda(out),
        (children, co),
        candle_core::op::BackpropOp::none(),
        false,
    ))
}

/// The launch of [`subm_conv3d_children`] for one operand type.
struct ChildConv<'a> {
    feats: (&'a CudaStorage, usize, usize),
    weight: (&'a CudaStorage, usize, usize),
    map: CudaView<'a, u32>,
    src_rows: ChildRows,
    bias: CudaView<'a, f32>,
    /// Module, kernel name suffix, shared memory.
    kernel: (&'a Fatbin, String, u32),
    /// The grid's x is the row list's tiles.
    cfg: LaunchConfig,
    /// `(P, N', Ci, C')`.
    dims: (usize, usize, usize, usize),
    row_skip: bool,
}

impl FloatFn for ChildConv<'_> {
    type Output = CudaStorage;

    fn call<T: FloatElem>(self) -> Result<CudaStorage> {
        let ((feats, fa, fz), (weight, wa, wz)) = (self.feats, self.weight);
        if weight.dtype() != T::DTYPE {
            bail!("c2s children conv (CUDA): feats and weight must have the same dtype");
        }
        let (module, suffix, smem) = &self.kernel;
        let (parents, children, ci, co) = self.dims;
        let list = &self.src_rows;
        let dev = feats.device();
        let out = output::<T>(dev, children * co)?;
        let name = format!("subm_conv3d_children_sm90a_{}_{suffix}", T::NAME);
        let func = large_smem_func(dev, module, &name, *smem)?;
        let f = feats.as_cuda_slice::<T>()?.slice(fa..fz);
        let w = weight.as_cuda_slice::<T>()?.slice(wa..wz);
        let (parents_, n_rows_, ci_, co_, row_skip) = (
            parents as i32,
            (list.tiles * CHILD_TILE_ROWS) as i32,
            ci as i32,
            co as i32,
            self.row_skip as i32,
        );
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&func);
        b.arg(&f)
            .arg(&w)
            .arg(&self.map)
            .arg(&list.rows)
            .arg(&list.out_rows)
            .arg(&list.tile_slot)
            .arg(&self.bias)
            .arg(&out)
            .arg(&parents_)
            .arg(&n_rows_)
            .arg(&ci_)
            .arg(&co_)
            .arg(&row_skip);
        let mut cfg = self.cfg;
        cfg.grid_dim.0 = list.tiles as u32;
        // SAFETY: the kernel reads feats[P·Ci], weight[8C'·27·Ci], map[P·27] and bias[8C']
        // (spans checked above), tile_slot[blockIdx.x] (< tiles) and the rows of the tiles with
        // a slot (written by the row list's kernels: parents < P or NONE, children < N'), and
        // writes out[N'·C'], which it owns: every child is in exactly one row of the list, so
        // every output row is written once.
        unsafe { b.launch(cfg) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}
