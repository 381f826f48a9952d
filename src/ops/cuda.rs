//! CUDA forwards of the custom ops: the PTX of `kernels/cuda/*.cu` (built by `build.rs` behind
//! the `cuda` feature), loaded once per device through candle's module cache and launched on the
//! device's stream. Operands are bf16 or f16 (both the same dtype), accumulation fp32; the public
//! op functions convert f32 inputs to bf16 before they reach these forwards. Exceptions: the fused
//! norms (f32, f16 or bf16 activations, f32 parameters and arithmetic) and the deformable im2col
//! (f32 throughout: BiRefNet runs in f32 upstream).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{bail, CudaDevice, CudaStorage, Layout, Result, Shape};
use half::{bf16, f16};

use super::attention::AttentionKernel;
use super::metal::kargs::{DeformIm2ColArgs, NeighbourArgs};
use super::metal::neighbour_plan::NeighbourPlan;
use super::sample_offsets::offsets_u32;
use super::sparse_conv::{ConvKernel, TAPS};
use super::tuning::{KernelChoice, Tuning};

mod cascade_quantize;
mod channel_to_space;
mod conv_order;
mod layer_norm_act;
mod mem_pool;
pub(crate) use cascade_quantize::cascade_occupancy;
pub(crate) use channel_to_space::{c2s_skip_add, i32_tensors_equal, subdivide};
pub(crate) use conv_order::conv_order;
pub(crate) use layer_norm_act::layer_norm_act;
pub(crate) use mem_pool::retain_freed_memory;

const SPARSE_CONV_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/sparse_conv.ptx"));
const ATTENTION_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/attention.ptx"));
/// The wgmma attention kernel (`kernels/cuda/attention_sm90a.cu`), built only for
/// `CUDA_COMPUTE_CAP=90` (build.rs sets `trellis2_sm90a` then).
#[cfg(trellis2_sm90a)]
const ATTENTION_SM90A_PTX: Option<&str> = Some(include_str!(concat!(
    env!("OUT_DIR"),
    "/attention_sm90a.ptx"
)));
#[cfg(not(trellis2_sm90a))]
const ATTENTION_SM90A_PTX: Option<&str> = None;
/// The wgmma sparse-conv kernels (`kernels/cuda/sparse_conv_sm90a.cu`), built only for
/// `CUDA_COMPUTE_CAP=90` like the attention one.
#[cfg(trellis2_sm90a)]
const SPARSE_CONV_SM90A_PTX: Option<&str> = Some(include_str!(concat!(
    env!("OUT_DIR"),
    "/sparse_conv_sm90a.ptx"
)));
#[cfg(not(trellis2_sm90a))]
const SPARSE_CONV_SM90A_PTX: Option<&str> = None;

/// `(start, end)` of a contiguous layout, or an error naming the operand.
fn span(l: &Layout, op: &str, what: &str) -> Result<(usize, usize)> {
    match l.contiguous_offsets() {
        Some(r) => Ok(r),
        None => bail!("{op}: {what} must be contiguous"),
    }
}

/// Elements `[start, end)` and token stride of a `[N, H, D]` attention operand whose heads and
/// dims are contiguous and whose tokens lie `stride ≥ H·D` elements apart: contiguous, or a row
/// view of a fused projection such as v in `[N, 3, H, D]` (see `token_stride` in
/// src/ops/attention.rs, which decides what reaches the kernel uncopied).
fn token_rows(l: &Layout, op: &str, what: &str) -> Result<(usize, usize, usize)> {
    let (n, h, d) = l.shape().dims3()?;
    if let Some((a, z)) = l.contiguous_offsets() {
        return Ok((a, z, h * d));
    }
    let Some(stride) = super::attention::token_stride(l) else {
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
fn output<T: DeviceRepr>(dev: &CudaDevice, len: usize) -> Result<CudaSlice<T>> {
    // SAFETY: the caller's kernel writes all `len` elements before anything reads them.
    unsafe { dev.alloc::<T>(len.max(1)) }
}

/// Dynamic shared memory of every sparse-conv kernel: its cp.async ring, 3 stages of 128 + 128
/// rows or 4 of 128 + 64 rows, 128 bytes a row (`SUBM_SMEM` in `kernels/cuda/sparse_conv.cu`).
const SUBM_CONV_SMEM_BYTES: u32 = 98_304;

/// Dynamic shared memory of the 128 × 256 sparse-conv tiles: 3 stages of 128 + 256 rows.
const SUBM_CONV_WIDE_SMEM_BYTES: u32 = 147_456;

/// Streaming multiprocessors of the GPU (132 on an H100 SXM), read once per device ordinal: a
/// process may drive GPUs of different models.
fn sm_count(dev: &CudaDevice) -> Result<usize> {
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
    sm90a_device(dev, SPARSE_CONV_SM90A_PTX.is_some())
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
            built: SPARSE_CONV_SM90A_PTX.is_some(),
            by_default: CONV_WGMMA_BY_DEFAULT,
            env: kernel_env(Tuning::current().conv_kernel),
        },
        dev,
        requested,
        vec,
        || "Ci a multiple of 8 and 16-byte aligned feats and weight".into(),
    )
}

/// Whether `dev` runs sm_90a code: a build with it (`built`) and a device of compute capability
/// exactly 9.0 (sm_90a code runs on no other).
fn sm90a_device(dev: &CudaDevice, built: bool) -> Result<bool> {
    if !built {
        return Ok(false);
    }
    let cc = dev.cuda_stream().context().compute_capability().w()?;
    Ok(cc == (9, 0))
}

/// An op's kernel knob as [`choose_wgmma`] takes it: `Some(true)` asks for the wgmma kernel,
/// `Some(false)` for the mma.sync one, `None` leaves the choice to the default.
fn kernel_env(choice: KernelChoice) -> Option<bool> {
    match choice {
        KernelChoice::Auto => None,
        KernelChoice::Mma => Some(false),
        KernelChoice::Wgmma => Some(true),
    }
}

/// One op's wgmma kernel family, for [`choose_wgmma`].
struct WgmmaFamily {
    /// The op, for errors.
    op: &'static str,
    /// The sm_90a PTX is compiled into this build.
    built: bool,
    /// What `Auto` picks without the environment variable: wgmma wherever it can run.
    by_default: bool,
    /// The op's tuning knob ([`kernel_env`]).
    env: Option<bool>,
}

/// Whether a call runs its op's wgmma kernel rather than the mma.sync one, the same rule for
/// every tensor-core op. `requested` (the op's kernel argument): `Some(false)` never;
/// `Some(true)` always, an error where it cannot (not built for sm_90a, not a 9.0 device, the
/// shape not `shape_ok`: `requirement` says what the shape needs). `None` (`Auto`) follows the
/// environment variable (`wgmma`: an error where the kernel cannot run, mma.sync for shapes it
/// does not take), else the wgmma kernel wherever it runs if `by_default`.
fn choose_wgmma(
    family: WgmmaFamily,
    dev: &CudaDevice,
    requested: Option<bool>,
    shape_ok: bool,
    requirement: impl FnOnce() -> String,
) -> Result<bool> {
    let (wgmma, forced) = match (requested, family.env) {
        (Some(k), _) => (k, true),
        (None, Some(k)) => (k, false),
        (None, None) => {
            return Ok(family.by_default && shape_ok && sm90a_device(dev, family.built)?);
        }
    };
    if !wgmma {
        return Ok(false);
    }
    if !sm90a_device(dev, family.built)? {
        bail!(
            "{}: the wgmma kernel needs a build with CUDA_COMPUTE_CAP=90 (this one {}) and a \
             compute capability 9.0 device",
            family.op,
            if family.built { "has it" } else { "lacks it" }
        );
    }
    if !shape_ok && forced {
        bail!("{}: the wgmma kernel takes {}", family.op, requirement());
    }
    Ok(shape_ok)
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

/// Dynamic shared memory of a wgmma conv kernel: `stages` ring slots of 128 A rows and `bn` B
/// rows, 128 bytes a row, plus 1024 bytes for aligning the ring to the 128-byte swizzle's
/// 1024-byte atoms (`smem_bytes` in `kernels/cuda/sparse_conv_sm90a.cu`).
fn subm_conv_sm90a_smem_bytes(bn: usize, stages: u32) -> u32 {
    stages * (128 + bn as u32) * 128 + 1024
}

/// The contiguous `[len]` slice of a tensor an op holds besides its operands (the conv's voxel
/// order or bias), from its storage; `pick` selects the expected dtype's slice, `what` names the
/// tensor in errors.
fn held_slice<'a, T>(
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
    // The kernel: (module, PTX), name prefix (before the dtypes) and suffix, shared memory.
    let (module, prefix, suffix, smem) = match SPARSE_CONV_SM90A_PTX {
        Some(ptx) if wgmma => {
            let (stages, keep) = subm_conv_sm90a_pipeline(bn);
            (
                ("trellis2_sparse_conv_sm90a", ptx),
                "subm_conv3d_sm90a",
                format!("n{bn}_s{stages}_k{keep}"),
                subm_conv_sm90a_smem_bytes(bn, stages),
            )
        }
        _ => (
            ("trellis2_sparse_conv", SPARSE_CONV_PTX),
            "subm_conv3d",
            format!("n{bn}{}", if vec { "" } else { "_scalar" }),
            smem,
        ),
    };
    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(128) as u32, co.div_ceil(bn) as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: smem,
    };
    let (n_, ci_, co_) = (n as i32, ci as i32, co as i32);
    let row_skip = subm_conv_row_skip() as i32;
    // Launches the `$t` operand kernel writing `$o` outputs (`$oname` in the kernel name).
    macro_rules! run {
        ($t:ty, $variant:ident, $name:literal, $o:ty, $oname:literal) => {{
            let CudaStorageSlice::$variant(w) = &weight.slice else {
                bail!("{OP}: feats and weight must have the same dtype");
            };
            let CudaStorageSlice::$variant(f) = &feats.slice else {
                unreachable!("matched on the feats dtype")
            };
            let out = output::<$o>(&dev, n * co)?;
            if n > 0 && co > 0 {
                let name = format!("{prefix}_{}_{}_{suffix}", $name, $oname);
                let func = large_smem_func(&dev, module.0, module.1, &name, smem)?;
                let (f, w) = (f.slice(fa..fz), w.slice(wa..wz));
                let stream = dev.cuda_stream();
                let mut b = stream.launch_builder(&func);
                b.arg(&f).arg(&w).arg(&map);
                // Null pointers: tile row p is voxel p; no bias.
                match &order {
                    Some(o) => b.arg(o),
                    None => b.arg(&0u64),
                };
                match &bias {
                    Some(v) => b.arg(v),
                    None => b.arg(&0u64),
                };
                b.arg(&out).arg(&n_).arg(&ci_).arg(&co_).arg(&row_skip);
                // SAFETY: the kernel reads feats[T·Ci], weight[Co·27·Ci], map[T·27] (spans
                // checked by the op's shape checks), order[T] (checked above; entries ≥ T are
                // skipped) and bias[Co] (checked above), and writes out[T·Co], which it owns:
                // every row when the order is a permutation, as `NeighbourMap::conv_order` makes
                // it.
                unsafe { b.launch(cfg) }.w()?;
            }
            CudaStorage::wrap_cuda_slice(out, dev.clone())
        }};
    }
    let out = match (&feats.slice, f32_out) {
        (CudaStorageSlice::BF16(_), false) => run!(bf16, BF16, "bf16", bf16, "bf16"),
        (CudaStorageSlice::BF16(_), true) => run!(bf16, BF16, "bf16", f32, "f32"),
        (CudaStorageSlice::F16(_), false) => run!(f16, F16, "f16", f16, "f16"),
        (CudaStorageSlice::F16(_), true) => run!(f16, F16, "f16", f32, "f32"),
        _ => bail!("{OP}: takes bf16 or f16 feats, got {:?}", feats.dtype()),
    };
    Ok((out, Shape::from((n, co))))
}

/// Rows of one query tile of the attention kernel (one CTA).
const ATTN_TILE: usize = 128;
/// Keys per tile of the attention kernel.
const ATTN_KEY_TILE: usize = 64;
/// Threads per attention CTA: four warps of 32 query rows.
const ATTN_THREADS: u32 = 128;

/// Dynamic shared memory of one attention CTA at head dim `d`: the query tile and two buffers
/// each of key and value rows, 16-bit elements, rows padded by 8 elements (the layout of
/// `flash_fwd` in `kernels/cuda/attention.cu`).
fn attention_smem_bytes(d: usize) -> usize {
    (ATTN_TILE + 4 * ATTN_KEY_TILE) * (d + 8) * 2
}

/// Kernel `name` of `module` on `dev`, opted in to `smem` bytes of dynamic shared memory (over
/// 48 KB needs it) and to the largest shared-memory carveout (two ≈100 KB blocks an SM; the
/// kernels' cp.async copies bypass L1). Attributes belong to the loaded function, which candle
/// keeps in the device's module cache for the device's lifetime, so they are set once per
/// (device, kernel, size): `DeviceId`s are never reused, unlike function addresses after a device
/// is dropped. The first load and the attribute calls happen under one lock, so no other thread
/// can load a second copy of the module in between.
fn large_smem_func(
    dev: &CudaDevice,
    module: &str,
    ptx: &'static str,
    name: &str,
    smem: u32,
) -> Result<CudaFunction> {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    type Key = (candle_core::cuda_backend::DeviceId, String, u32);
    static CONFIGURED: OnceLock<Mutex<HashSet<Key>>> = OnceLock::new();
    let mut configured = CONFIGURED
        .get_or_init(|| Mutex::new(HashSet::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let func = dev.get_or_load_custom_func(name, module, ptx)?;
    let key = (dev.id(), format!("{module}/{name}"), smem);
    if !configured.contains(&key) {
        dev.cuda_stream().context().bind_to_thread().w()?;
        func.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            smem as i32,
        )
        .w()?;
        func.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
            100,
        )
        .w()?;
        configured.insert(key);
    }
    Ok(func.into_cuda_function())
}

/// Query rows of one tile of the wgmma attention kernel (one CTA: two warpgroups of 64 rows),
/// its keys per tile and its ring of K/V buffers (`BM`, `BN`, `STAGES` in
/// `kernels/cuda/attention_sm90a.cu`). Independent of the mma.sync kernel's tiles.
const ATTN_SM90A_TILE: usize = 128;
const ATTN_SM90A_KEY_TILE: usize = 128;
const ATTN_SM90A_STAGES: usize = 3;
/// Threads per wgmma attention CTA: two warpgroups of 64 query rows.
const ATTN_SM90A_THREADS: u32 = 256;

/// Dynamic shared memory of one wgmma attention CTA at head dim `d`: the query tile and three
/// buffers each of key and value rows, 16-bit elements, unpadded (the 128-byte swizzle layout of
/// `kernels/cuda/attention_sm90a.cu`), its mbarriers, and the slack of the kernel's run-time
/// 1024-byte alignment of the tiles: 224 KB + 1088 bytes at D = 128 (one CTA per SM), 112 KB +
/// 1088 bytes at D = 64.
fn attention_sm90a_smem_bytes(d: usize) -> usize {
    (ATTN_SM90A_TILE + 2 * ATTN_SM90A_STAGES * ATTN_SM90A_KEY_TILE) * d * 2
        + ATTN_SM90A_MBAR_BYTES
        + ATTN_SM90A_ALIGN
}
/// Bytes after the K/V stages for the kernel's mbarriers (full and empty, one each per stage).
const ATTN_SM90A_MBAR_BYTES: usize = 64;
/// Alignment of the kernel's swizzled tiles (`ALIGN`: one 128-byte-swizzle atom, 8 rows × 128
/// bytes), which it reaches by rounding the dynamic window's start up: the host adds that much.
const ATTN_SM90A_ALIGN: usize = 1024;
// Within the 227 KB a CTA may opt in to on a compute capability 9.0 device.
const _: () = assert!(
    (ATTN_SM90A_TILE + 2 * ATTN_SM90A_STAGES * ATTN_SM90A_KEY_TILE) * 128 * 2
        + ATTN_SM90A_MBAR_BYTES
        + ATTN_SM90A_ALIGN
        <= 227 * 1024
);

/// Head dims of the wgmma kernel.
const ATTN_SM90A_DIMS: [usize; 2] = [64, 128];

/// Whether `AttentionKernel::Auto` picks the wgmma kernel where it can run (compiled in, a
/// compute capability 9.0 device, a supported head dim) without `TRELLIS2_ATTENTION` set.
/// On: measured on an H100 (benches/README.md) at 0.72–0.81× the mma.sync kernel's time
/// (0.225 against 0.303 ms at 4k², 28.7 against 39.0 ms at 49k², 12 heads × 128, bf16).
const WGMMA_BY_DEFAULT: bool = true;

/// Whether the wgmma attention kernel can run on `dev` (see [`sm90a_device`]).
pub(crate) fn wgmma_attention_available(dev: &CudaDevice) -> Result<bool> {
    sm90a_device(dev, ATTENTION_SM90A_PTX.is_some())
}

/// Whether this call runs the wgmma attention kernel ([`choose_wgmma`]): head dims 64 and 128;
/// the environment variable is `TRELLIS2_ATTENTION`, the default `WGMMA_BY_DEFAULT`.
fn use_wgmma(dev: &CudaDevice, d: usize, kernel: AttentionKernel) -> Result<bool> {
    let requested = match kernel {
        AttentionKernel::Auto => None,
        AttentionKernel::Mma => Some(false),
        AttentionKernel::Wgmma => Some(true),
    };
    choose_wgmma(
        WgmmaFamily {
            op: "varlen attention (CUDA)",
            built: ATTENTION_SM90A_PTX.is_some(),
            by_default: WGMMA_BY_DEFAULT,
            env: kernel_env(Tuning::current().attention),
        },
        dev,
        requested,
        ATTN_SM90A_DIMS.contains(&d),
        || format!("head dims 64 and 128, not {d}"),
    )
}

/// Varlen flash attention: q `[Nq,H,D]`, k, v `[Nk,H,D]` with packed-sequence offsets →
/// `[Nq,H,D]` in q's dtype. Head dims 16, 32, 64 (DINOv3) and 128 (DiT). See `kernels/cuda/attention.cu`
/// and, for `kernel` (which kernel runs: see `use_wgmma`), `kernels/cuda/attention_sm90a.cu`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn varlen_attention(
    q: &CudaStorage,
    ql: &Layout,
    k: &CudaStorage,
    kl: &Layout,
    v: &CudaStorage,
    vl: &Layout,
    q_offsets: &[usize],
    kv_offsets: &[usize],
    scale: f32,
    kernel: AttentionKernel,
) -> Result<(CudaStorage, Shape)> {
    const OP: &str = "varlen attention (CUDA)";
    let (nq, heads, d) = ql.shape().dims3()?;
    if ![16, 32, 64, 128].contains(&d) {
        bail!("{OP}: head dim {d} is not supported (16, 32, 64 or 128)");
    }
    // The kernel's softmax takes a positive scale (it folds the scale into one FFMA per score,
    // which needs the maximum of the raw scores to be the maximum of the scaled ones). A
    // negative scale goes into q instead, softmax(−c·q·k) = softmax(c·(−q)·k), at the cost of
    // one elementwise pass that no model needs; a zero scale becomes the smallest positive
    // normal float, which gives the same uniform weights (every scaled score rounds to 0).
    let negated;
    let (q, ql, scale) = if scale < 0.0 {
        negated = (q.affine(ql, -1.0, 0.0)?, Layout::contiguous(ql.shape()));
        (&negated.0, &negated.1, -scale)
    } else {
        (q, ql, scale)
    };
    let scale_log2 = (scale * std::f32::consts::LOG2_E).max(f32::MIN_POSITIVE);
    let (qa, qz, q_stride) = token_rows(ql, OP, "q")?;
    let (ka, kz, k_stride) = token_rows(kl, OP, "k")?;
    let (va, vz, v_stride) = token_rows(vl, OP, "v")?;
    let dev = q.device().clone();
    let wgmma = use_wgmma(&dev, d, kernel)?;
    // Query rows per tile (CTA) of the chosen kernel.
    let tile = if wgmma { ATTN_SM90A_TILE } else { ATTN_TILE };
    let mut tiles: Vec<u32> = Vec::new();
    for b in 0..q_offsets.len() - 1 {
        let (q0, q1) = (q_offsets[b], q_offsets[b + 1]);
        let (k0, k1) = (kv_offsets[b], kv_offsets[b + 1]);
        for r in (q0..q1).step_by(tile) {
            let row = [r, (r + tile).min(q1), k0, k1];
            tiles.extend(row.iter().map(|&x| x as u32));
        }
    }
    if qa % 8 != 0 || ka % 8 != 0 || va % 8 != 0 {
        bail!("{OP}: q, k and v must start on a 16-byte boundary (offsets {qa}, {ka}, {va})");
    }
    if q_stride % 8 != 0 || k_stride % 8 != 0 || v_stride % 8 != 0 {
        bail!(
            "{OP}: q, k and v token rows must be 16-byte aligned (strides {q_stride}, {k_stride}, \
             {v_stride})"
        );
    }
    let strides = [q_stride, k_stride, v_stride].map(|s| s as i32);
    let ntiles = tiles.len() / 4;
    // (module, PTX), kernel name prefix, threads and shared memory of the chosen kernel.
    let (module, prefix, threads, smem) = match ATTENTION_SM90A_PTX {
        Some(ptx) if wgmma => (
            ("trellis2_attention_sm90a", ptx),
            "flash_attn_sm90a",
            ATTN_SM90A_THREADS,
            attention_sm90a_smem_bytes(d) as u32,
        ),
        _ => (
            ("trellis2_attention", ATTENTION_PTX),
            "flash_attn",
            ATTN_THREADS,
            attention_smem_bytes(d) as u32,
        ),
    };
    let cfg = LaunchConfig {
        grid_dim: (ntiles as u32, heads as u32, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: smem,
    };
    let heads_ = heads as i32;
    macro_rules! run {
        ($t:ty, $variant:ident, $dtype:literal) => {{
            let (CudaStorageSlice::$variant(kk), CudaStorageSlice::$variant(vv)) =
                (&k.slice, &v.slice)
            else {
                bail!("{OP}: q, k and v must have the same dtype");
            };
            let CudaStorageSlice::$variant(qq) = &q.slice else {
                unreachable!("matched on q's dtype")
            };
            let out = output::<$t>(&dev, nq * heads * d)?;
            if ntiles > 0 && heads > 0 {
                let tiles = dev.clone_htod(&tiles)?;
                let name = format!("{prefix}_{}_d{d}", $dtype);
                let func = large_smem_func(&dev, module.0, module.1, &name, smem)?;
                let (qq, kk, vv) = (qq.slice(qa..qz), kk.slice(ka..kz), vv.slice(va..vz));
                let stream = dev.cuda_stream();
                let mut b = stream.launch_builder(&func);
                b.arg(&qq).arg(&kk).arg(&vv).arg(&out).arg(&tiles);
                b.arg(&heads_).arg(&scale_log2);
                b.arg(&strides[0]).arg(&strides[1]).arg(&strides[2]);
                // SAFETY: every tile's rows lie inside q (and out) and its key rows inside k and
                // v, as the op's offset checks guarantee; a row r of an operand starts at
                // r·stride within its [start, end) span (`token_rows`); out[Nq·H·D] is owned by
                // this call.
                unsafe { b.launch(cfg) }.w()?;
            }
            CudaStorage::wrap_cuda_slice(out, dev.clone())
        }};
    }
    let out = match &q.slice {
        CudaStorageSlice::BF16(_) => run!(bf16, BF16, "bf16"),
        CudaStorageSlice::F16(_) => run!(f16, F16, "f16"),
        _ => bail!("{OP}: takes bf16 or f16 q, k, v, got {:?}", q.dtype()),
    };
    Ok((out, Shape::from((nq, heads, d))))
}

const DEFORM_CONV_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/deform_conv.ptx"));

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
        let func = dev.get_or_load_custom_func(
            "deform_im2col_f32",
            "trellis2_deform_conv",
            DEFORM_CONV_PTX,
        )?;
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

const NORMS_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/norms.ptx"));

/// Rows per 256-thread block of `kernels/cuda/norms.cu` (one warp a row).
const NORM_ROWS: usize = 8;

fn norm_launch(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.div_ceil(NORM_ROWS) as u32, 1, 1),
        block_dim: ((32 * NORM_ROWS) as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// 256 threads in `rows_per_block` lane groups, one group a row (the vector kernels).
fn norm_launch_groups(rows: usize, rows_per_block: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.div_ceil(rows_per_block) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The register-resident vector kernel of `kernels/cuda/norms.cu` for LayerNorm rows of `c`
/// values of `elem` bytes: `(lanes a row, 16-byte vectors a lane)`, or None (the scalar kernel)
/// when `c` is not a multiple of the 16-byte vector or the row would take more than 16 vectors
/// a lane. The kernels check the pointers' alignment themselves.
fn norm_vec_shape(c: usize, elem: usize) -> Option<(usize, usize)> {
    let e = 16 / elem;
    if c == 0 || !c.is_multiple_of(e) {
        return None;
    }
    match c / e {
        0..=8 => Some((8, 1)),
        9..=16 => Some((16, 1)),
        n @ 17..=512 => Some((32, n.div_ceil(32).next_power_of_two())),
        _ => None,
    }
}

/// The LayerNorm kernel `{base}_{ty}` or its vector variant, and its launch.
fn layer_norm_kernel(
    base: &str,
    ty: &str,
    c: usize,
    elem: usize,
    rows: usize,
) -> (String, LaunchConfig) {
    match norm_vec_shape(c, elem) {
        Some((l, nv)) => (
            format!("{base}_v{l}x{nv}_{ty}"),
            norm_launch_groups(rows, 256 / l),
        ),
        None => (format!("{base}_{ty}"), norm_launch(rows)),
    }
}

/// The f32 slice of an f32 operand, or an error naming it.
fn f32_slice<'a>(s: &'a CudaStorage, op: &str, what: &str) -> Result<&'a CudaSlice<f32>> {
    match &s.slice {
        CudaStorageSlice::F32(v) => Ok(v),
        _ => bail!("{op}: {what} must be f32, got {:?}", s.dtype()),
    }
}

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
                let func = dev.get_or_load_custom_func(&name, "trellis2_norms", NORMS_PTX)?;
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

/// q/k RMS norm + interleaved RoPE (`src/ops/rms_norm_rope.rs`): x `[T,H,D]` f32/f16/bf16 with
/// any token stride (each token's H·D values contiguous), gamma `[H,D]` f32, table `[T or 1,D/2,2]`
/// f32 → `[T,H,D]` contiguous in x's dtype.
pub(crate) fn rms_norm_rope(
    (x, xl): (&CudaStorage, &Layout),
    (g, gl): (&CudaStorage, &Layout),
    (t, tl): (&CudaStorage, &Layout),
    normalize: bool,
) -> Result<(CudaStorage, Shape)> {
    const OP: &str = "rms_norm_rope (CUDA)";
    let (tokens, heads, d) = xl.shape().dims3()?;
    let (xa, xz, x_stride) = match xl.stride() {
        &[s, sh, 1] if sh == d && s >= heads * d => {
            let a = xl.start_offset();
            (a, a + tokens.saturating_sub(1) * s + heads * d, s)
        }
        _ => bail!(
            "{OP}: x must have contiguous heads (strides [_, {d}, 1]), got {:?}",
            xl.stride()
        ),
    };
    let (ga, gz) = span(gl, OP, "gamma")?;
    let (ta, tz) = span(tl, OP, "rotation table")?;
    let dev = x.device().clone();
    let gamma = f32_slice(g, OP, "gamma")?.slice(ga..gz);
    let table = f32_slice(t, OP, "rotation table")?.slice(ta..tz);
    let rows = tokens * heads;
    let (rows_, heads_, d_, normalize_) = (rows as i32, heads as i32, d as i32, normalize as i32);
    let (x_stride_, table_rows) = (x_stride as i32, tl.shape().dims()[0] as i32);
    macro_rules! run {
        ($t:ty, $variant:ident, $name:literal) => {{
            let CudaStorageSlice::$variant(xs) = &x.slice else {
                unreachable!("matched on x's dtype")
            };
            let out = output::<$t>(&dev, rows * d)?;
            if rows > 0 && d > 0 {
                // D = L·E (E values of 16 bytes, L = 4..32 lanes a row): one 16-byte vector a
                // lane (the kernel checks the alignment of the pointers and of x_stride).
                let e = 16 / std::mem::size_of::<$t>();
                let (name, cfg) = match d / e {
                    l @ (4 | 8 | 16 | 32) if d.is_multiple_of(e) => {
                        (format!("rms_norm_rope_v{l}_{}", $name), norm_launch_groups(rows, 256 / l))
                    }
                    _ => (format!("rms_norm_rope_{}", $name), norm_launch(rows)),
                };
                let func = dev.get_or_load_custom_func(&name, "trellis2_norms", NORMS_PTX)?;
                let xs = xs.slice(xa..xz);
                let mut b = func.builder();
                b.arg(&xs).arg(&gamma).arg(&table).arg(&out);
                b.arg(&rows_).arg(&heads_).arg(&d_).arg(&normalize_);
                b.arg(&x_stride_).arg(&table_rows);
                // SAFETY: reads x (T rows of H·D at stride x_stride, inside the slice), gamma[H·D]
                // and table[T·D or D] (checked by the op); writes every element of out[T·H·D],
                // owned here.
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

const NEIGHBOUR_MAP_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/neighbour_map.ptx"));

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
    let load =
        |name: &str| dev.get_or_load_custom_func(name, "trellis2_neighbour_map", NEIGHBOUR_MAP_PTX);
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

const ELEMENTWISE_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/elementwise.ptx"));

/// Threads per block of `kernels/cuda/elementwise.cu`.
const EW_THREADS: usize = 256;

/// Launch shape of an elementwise kernel over `vectors` work items: grid-stride loops, at most
/// 16 blocks of 256 threads per SM's worth of work (132 SMs on an H100) so large tensors do not
/// pay for block scheduling.
fn elementwise_launch(vectors: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (vectors.div_ceil(EW_THREADS).clamp(1, 132 * 16) as u32, 1, 1),
        block_dim: (EW_THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Elements per thread of the elementwise kernels for rows of `c` elements of `T` starting at
/// element offsets `starts`: 16 bytes when every row and operand start is 16-byte aligned.
fn elementwise_vec<T>(c: usize, starts: &[usize]) -> usize {
    let vec = 16 / std::mem::size_of::<T>();
    if c.is_multiple_of(vec) && starts.iter().all(|s| s.is_multiple_of(vec)) {
        vec
    } else {
        1
    }
}

/// `act(x + bias)` (`src/ops/bias_act.rs`): x `[T,C]` f32/f16/bf16, bias `[C]` f32 → `[T,C]` in
/// x's dtype.
pub(crate) fn bias_act(
    (x, xl): (&CudaStorage, &Layout),
    (b, bl): (&CudaStorage, &Layout),
    act: super::bias_act::Activation,
) -> Result<(CudaStorage, Shape)> {
    const OP: &str = "bias_act (CUDA)";
    let (rows, c) = xl.shape().dims2()?;
    let (xa, xz) = span(xl, OP, "x")?;
    let (ba, bz) = span(bl, OP, "bias")?;
    let dev = x.device().clone();
    let bias = f32_slice(b, OP, "bias")?.slice(ba..bz);
    let (c_, act_) = (c as i32, act as i32);
    macro_rules! run {
        ($t:ty, $variant:ident, $name:literal) => {{
            let CudaStorageSlice::$variant(xs) = &x.slice else {
                unreachable!("matched on x's dtype")
            };
            let len = rows * c;
            let out = output::<$t>(&dev, len)?;
            if len > 0 {
                let vec = elementwise_vec::<$t>(c, &[xa]);
                let name = if vec > 1 { concat!($name, "_v") } else { $name };
                let func =
                    dev.get_or_load_custom_func(name, "trellis2_elementwise", ELEMENTWISE_PTX)?;
                let vectors = len / vec;
                let xs = xs.slice(xa..xz);
                let mut b = func.builder();
                b.arg(&xs)
                    .arg(&bias)
                    .arg(&out)
                    .arg(&vectors)
                    .arg(&c_)
                    .arg(&act_);
                // SAFETY: reads x[T·C] and bias[C] (checked by the op); writes every element of
                // out[T·C], owned here; vectors never straddle a row (C % vec == 0).
                unsafe { b.launch(elementwise_launch(vectors)) }.w()?;
            }
            CudaStorage::wrap_cuda_slice(out, dev.clone())
        }};
    }
    let out = match &x.slice {
        CudaStorageSlice::F32(_) => run!(f32, F32, "bias_act_f32"),
        CudaStorageSlice::F16(_) => run!(f16, F16, "bias_act_f16"),
        CudaStorageSlice::BF16(_) => run!(bf16, BF16, "bias_act_bf16"),
        _ => bail!("{OP}: x must be f32, f16 or bf16, got {:?}", x.dtype()),
    };
    Ok((out, xl.shape().clone()))
}

/// `x + gate_b · r` per sample (`src/ops/gated_residual.rs`): x, r `[T,C]` f32/f16/bf16 (the
/// same dtype), gate `[B,C]` f32 → `[T,C]` in x's dtype.
pub(crate) fn gated_residual(
    (x, xl): (&CudaStorage, &Layout),
    (r, rl): (&CudaStorage, &Layout),
    (g, gl): (&CudaStorage, &Layout),
    offsets: &[usize],
) -> Result<(CudaStorage, Shape)> {
    const OP: &str = "gated_residual (CUDA)";
    let (rows, c) = xl.shape().dims2()?;
    let (xa, xz) = span(xl, OP, "x")?;
    let (ra, rz) = span(rl, OP, "residual branch")?;
    let (ga, gz) = span(gl, OP, "gate")?;
    let dev = x.device().clone();
    let gate = f32_slice(g, OP, "gate")?.slice(ga..gz);
    let offsets = offsets_u32(OP, offsets)?;
    let (c_, samples) = (c as i32, (offsets.len() - 1) as i32);
    macro_rules! run {
        ($t:ty, $variant:ident, $name:literal) => {{
            let (CudaStorageSlice::$variant(xs), CudaStorageSlice::$variant(rs)) =
                (&x.slice, &r.slice)
            else {
                bail!("{OP}: x and the residual branch must have the same dtype");
            };
            let len = rows * c;
            let out = output::<$t>(&dev, len)?;
            if len > 0 {
                let vec = elementwise_vec::<$t>(c, &[xa, ra]);
                let name = if vec > 1 { concat!($name, "_v") } else { $name };
                let func =
                    dev.get_or_load_custom_func(name, "trellis2_elementwise", ELEMENTWISE_PTX)?;
                let offsets = dev.clone_htod(&offsets)?;
                let vectors = len / vec;
                let (xs, rs) = (xs.slice(xa..xz), rs.slice(ra..rz));
                let mut b = func.builder();
                b.arg(&xs).arg(&rs).arg(&gate).arg(&offsets).arg(&out);
                b.arg(&vectors).arg(&c_).arg(&samples);
                // SAFETY: reads x and r [T·C], gate [B·C] and offsets [B+1] (checked by the op);
                // writes every element of out[T·C], owned here.
                unsafe { b.launch(elementwise_launch(vectors)) }.w()?;
            }
            CudaStorage::wrap_cuda_slice(out, dev.clone())
        }};
    }
    let out = match &x.slice {
        CudaStorageSlice::F32(_) => run!(f32, F32, "gated_residual_f32"),
        CudaStorageSlice::F16(_) => run!(f16, F16, "gated_residual_f16"),
        CudaStorageSlice::BF16(_) => run!(bf16, BF16, "gated_residual_bf16"),
        _ => bail!("{OP}: x must be f32, f16 or bf16, got {:?}", x.dtype()),
    };
    Ok((out, xl.shape().clone()))
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
