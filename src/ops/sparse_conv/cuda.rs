//! The sparse conv's CUDA launcher (`kernels/cuda/sparse_conv.cu`, and its Hopper wgmma main
//! loop `kernels/cuda/sparse_conv_sm90a.cu`): tile shape, kernel choice and launch.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{bail, CudaDevice, CudaStorage, Layout, Result, Shape};

use crate::ops::cuda::{
    choose_wgmma, held_slice, kernel_env, large_smem_func, output, sm90a_device, sm_count, span,
    Fatbin, WgmmaFamily, SPARSE_CONV, SPARSE_CONV_SM90A,
};
use crate::ops::storage::{with_float, FloatElem, FloatFn, HALVES};
use crate::ops::tuning::Tuning;
use crate::ops::vocab::ConvKernel;

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
