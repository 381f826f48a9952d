//! Varlen flash attention's CUDA launcher (`kernels/cuda/attention.cu`, and the Hopper wgmma
//! kernels of `kernels/cuda/attention_sm90a.cu`): tiles, kernel choice and launch.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::sys;
use candle_core::cuda_backend::cudarc::driver::{
    DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::WrapErr;
use candle_core::{bail, CudaDevice, CudaStorage, DType, Layout, Result, Shape};

use crate::ops::cuda::{
    choose_wgmma, large_smem_func, output, sm90a_device, token_rows, Fatbin, WgmmaFamily,
    ATTENTION, ATTENTION_SM90A,
};
use crate::ops::storage::{with_float, FloatElem, FloatFn, HALVES};
use crate::ops::tuning::{AttentionChoice, Tuning};
use crate::ops::vocab::AttentionKernel;

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

/// Query rows of one tile of the wgmma attention kernel (one CTA: two warpgroups of 64 rows),
/// its keys per tile and its ring of K/V buffers (`BM`, `BN`, `STAGES` in
/// `kernels/cuda/attention_sm90a.cu`). Independent of the mma.sync kernel's tiles.
const ATTN_SM90A_TILE: usize = 128;
const ATTN_SM90A_KEY_TILE: usize = 128;
const ATTN_SM90A_STAGES: usize = 3;
/// Threads per wgmma attention CTA: two warpgroups of 64 query rows.
const ATTN_SM90A_THREADS: u32 = 256;
/// Threads per warp-specialised CTA (`flash_attn_ws_*`): a producer warpgroup and two consumer
/// warpgroups of 64 query rows; the same tiles, stages and shared memory as the wgmma kernel.
const ATTN_WS_THREADS: u32 = 384;

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

/// Bytes after the K/V stages for the kernels' mbarriers (full and empty, one each per stage,
/// and Q's in the warp-specialised kernel).
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

/// Dynamic shared memory of one warp-specialised CTA at head dim `d` and `keys` per tile
/// (`flash_fwd_ws` in `kernels/cuda/attention_sm90a.cu`): the query tile, K and V rings of three
/// stages (128 keys) or two (176), 128 bytes of mbarriers and the alignment slack.
const fn attention_ws_smem_bytes(d: usize, keys: usize) -> usize {
    let stages = if keys == 176 { 2 } else { 3 };
    (ATTN_SM90A_TILE + 2 * stages * keys) * d * 2 + 128 + ATTN_SM90A_ALIGN
}

// Within the 227 KB a CTA may opt in to.
const _: () = assert!(attention_ws_smem_bytes(128, 128) <= 227 * 1024);
const _: () = assert!(attention_ws_smem_bytes(128, 176) <= 227 * 1024);

/// Head dims of the wgmma kernel.
const ATTN_SM90A_DIMS: [usize; 2] = [64, 128];

/// Whether `AttentionKernel::Auto` picks the wgmma kernel where it can run (compiled in, a
/// compute capability 9.0 device, a supported head dim) without `TRELLIS2_ATTENTION` set.
/// On: measured on an H100 (benches/README.md) at 0.72–0.81× the mma.sync kernel's time
/// (0.225 against 0.303 ms at 4k², 28.7 against 39.0 ms at 49k², 12 heads × 128, bf16).
const WGMMA_BY_DEFAULT: bool = true;

/// Whether, among the Hopper kernels, `AttentionKernel::Auto` picks the warp-specialised one
/// (`Fa3`) without `TRELLIS2_ATTENTION` set. On: measured on an H100 (benches/README.md) at
/// 0.79–0.90× the time of the wgmma kernel in every case of the bench (176 keys a tile,
/// ping-pong: 2.14 against 2.58 ms at 15k², 0.68 against 0.80 ms at 15k × 4k), and the 1024
/// flows at 137–138 against 150 ms per forward.
const FA3_BY_DEFAULT: bool = true;

/// The longest key sequence at which `TRELLIS2_ATTENTION_PINGPONG=auto` runs the `Fa3` kernel
/// with its consumer warpgroups' ping-pong: 128 tiles of 176 keys. Measured on an H100
/// (benches/README.md, 176 keys a tile, ms with against without ping-pong): ping-pong wins
/// where a CTA walks few key tiles (self 15,000²: 2.143 against 2.337; cross 15,000 × 4,101:
/// 0.681 against 0.708; cross 49,152 × 4,101: 2.074 against 2.183), ties at 4k² and 8k² (0.178
/// / 0.176, 0.617 / 0.614) and loses on long ones (self 30,000²: 8.797 against 8.194; self
/// 49,152²: 23.075 against 22.501). The switch sits between the 85 tiles of 15,000 keys and
/// the 171 of 30,000, which nothing measured in between places more precisely; the flows'
/// self-attention (≈ 15,300 tokens at 1024) stays on the ping-pong side.
const PINGPONG_MAX_KEYS: usize = 128 * 176;

/// Whether the `Fa3` kernel runs with ping-pong: `TRELLIS2_ATTENTION_PINGPONG` when set, else
/// by the longest key sequence of the call ([`PINGPONG_MAX_KEYS`]).
fn fa3_pingpong(knob: Option<bool>, longest_keys: usize) -> bool {
    knob.unwrap_or(longest_keys <= PINGPONG_MAX_KEYS)
}

/// Whether the wgmma attention kernel can run on `dev` (see [`sm90a_device`]).
pub(crate) fn wgmma_attention_available(dev: &CudaDevice) -> Result<bool> {
    sm90a_device(dev, ATTENTION_SM90A.is_some())
}

/// The kernel a call runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Which {
    /// `flash_attn_*` (mma.sync).
    Mma,
    /// `flash_attn_sm90a_*` (wgmma, every warp copies).
    Wgmma,
    /// `flash_attn_ws{,176}{,np}_*` (wgmma, a TMA producer warpgroup): ping-pong between the
    /// consumer warpgroups (not `np`), keys per tile (128 or 176).
    Fa3 { pingpong: bool, keys: usize },
}

/// Which kernel this call runs ([`choose_wgmma`] decides wgmma or not, for both Hopper
/// kernels): head dims 64 and 128; the environment variable is `TRELLIS2_ATTENTION`, the default
/// `WGMMA_BY_DEFAULT`. Among the Hopper kernels, `Fa3` (argument, or `fa3` in the variable under
/// `Auto`, or `FA3_BY_DEFAULT` when the variable is unset) picks the warp-specialised one.
/// `longest_keys`: the longest key sequence of the call (ping-pong or not, [`fa3_pingpong`]).
fn choose_kernel(
    dev: &CudaDevice,
    d: usize,
    kernel: AttentionKernel,
    longest_keys: usize,
) -> Result<Which> {
    let tuning = Tuning::current();
    let requested = match kernel {
        AttentionKernel::Auto => None,
        AttentionKernel::Mma => Some(false),
        AttentionKernel::Wgmma | AttentionKernel::Fa3 => Some(true),
    };
    let env = match tuning.attention {
        AttentionChoice::Auto => None,
        AttentionChoice::Mma => Some(false),
        AttentionChoice::Wgmma | AttentionChoice::Fa3 => Some(true),
    };
    let wgmma = choose_wgmma(
        WgmmaFamily {
            op: "varlen attention (CUDA)",
            built: ATTENTION_SM90A.is_some(),
            by_default: WGMMA_BY_DEFAULT,
            env,
        },
        dev,
        requested,
        ATTN_SM90A_DIMS.contains(&d),
        || format!("head dims 64 and 128, not {d}"),
    )?;
    let fa3 = match kernel {
        AttentionKernel::Fa3 => true,
        AttentionKernel::Auto => match tuning.attention {
            AttentionChoice::Auto => FA3_BY_DEFAULT,
            choice => choice == AttentionChoice::Fa3,
        },
        _ => false,
    };
    Ok(match (wgmma, fa3) {
        (false, _) => Which::Mma,
        (true, false) => Which::Wgmma,
        (true, true) => Which::Fa3 {
            pingpong: fa3_pingpong(tuning.attention_pingpong, longest_keys),
            keys: tuning.attention_keys as usize,
        },
    })
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
    let longest_keys = kv_offsets
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .max()
        .unwrap_or(0);
    let which = choose_kernel(&dev, d, kernel, longest_keys)?;
    // Query rows per tile (CTA) of the chosen kernel.
    let tile = if which == Which::Mma {
        ATTN_TILE
    } else {
        ATTN_SM90A_TILE
    };
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
    // Kernel module, kernel name prefix, threads and shared memory of the chosen kernel.
    let (module, prefix, threads, smem) = match (&ATTENTION_SM90A, which) {
        (Some(ptx), Which::Wgmma) => (
            ptx,
            "flash_attn_sm90a",
            ATTN_SM90A_THREADS,
            attention_sm90a_smem_bytes(d) as u32,
        ),
        (Some(ptx), Which::Fa3 { pingpong, keys }) => (
            ptx,
            match (keys, pingpong) {
                (176, true) => "flash_attn_ws176",
                (176, false) => "flash_attn_ws176np",
                (_, true) => "flash_attn_ws",
                (_, false) => "flash_attn_wsnp",
            },
            ATTN_WS_THREADS,
            attention_ws_smem_bytes(d, keys) as u32,
        ),
        _ => (
            &ATTENTION,
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
    let launch = Attention {
        q: (q, qa, qz),
        k: (k, ka, kz),
        v: (v, va, vz),
        tiles: &tiles,
        kernel: (module, prefix, smem),
        tma_keys: match which {
            Which::Fa3 { keys, .. } => Some(keys),
            _ => None,
        },
        cfg,
        dims: (nq, heads, d),
        key_rows: kl.shape().dims3()?.0,
        scale_log2,
        strides,
    };
    let out = with_float(q.dtype(), HALVES, launch, || {
        format!("{OP}: takes bf16 or f16 q, k, v, got {:?}", q.dtype())
    })?;
    Ok((out, Shape::from((nq, heads, d))))
}

/// The launch of [`varlen_attention`] for one element type.
struct Attention<'a> {
    /// q, k and v with their spans.
    q: (&'a CudaStorage, usize, usize),
    k: (&'a CudaStorage, usize, usize),
    v: (&'a CudaStorage, usize, usize),
    /// `[q0, q1, k0, k1]` of each query tile.
    tiles: &'a [u32],
    /// Kernel module, kernel name prefix and shared memory.
    kernel: (&'a Fatbin, &'static str, u32),
    /// The warp-specialised kernel (its keys per tile): q, k and v go in as TMA tensor maps.
    tma_keys: Option<usize>,
    cfg: LaunchConfig,
    /// `(Nq, H, D)`.
    dims: (usize, usize, usize),
    /// Nk, the token rows of k and v.
    key_rows: usize,
    scale_log2: f32,
    /// Token strides of q, k and v.
    strides: [i32; 3],
}

impl FloatFn for Attention<'_> {
    type Output = CudaStorage;

    fn call<T: FloatElem>(self) -> Result<CudaStorage> {
        let ((q, qa, qz), (k, ka, kz), (v, va, vz)) = (self.q, self.k, self.v);
        if k.dtype() != T::DTYPE || v.dtype() != T::DTYPE {
            bail!("varlen attention (CUDA): q, k and v must have the same dtype");
        }
        let (module, prefix, smem) = self.kernel;
        let (nq, heads, d) = self.dims;
        let heads_ = heads as i32;
        let dev = q.device();
        let out = output::<T>(dev, nq * heads * d)?;
        if !self.tiles.is_empty() && heads > 0 {
            let tiles = dev.clone_htod(self.tiles)?;
            let name = format!("{prefix}_{}_d{d}", T::NAME);
            let func = large_smem_func(dev, module, &name, smem)?;
            let qq = q.as_cuda_slice::<T>()?.slice(qa..qz);
            let kk = k.as_cuda_slice::<T>()?.slice(ka..kz);
            let vv = v.as_cuda_slice::<T>()?.slice(va..vz);
            let stream = dev.cuda_stream();
            if let Some(keys) = self.tma_keys {
                // The views' device addresses go into the tensor maps; their guards keep the
                // stream's read/write ordering of q, k and v until after the launch.
                let (qp, _q_read) = qq.device_ptr(&stream);
                let (kp, _k_read) = kk.device_ptr(&stream);
                let (vp, _v_read) = vv.device_ptr(&stream);
                let nk = self.key_rows;
                let maps = [
                    TensorMap::rows::<T>(
                        qp,
                        (nq, heads, d),
                        self.strides[0] as usize,
                        ATTN_SM90A_TILE,
                    )?,
                    TensorMap::rows::<T>(kp, (nk, heads, d), self.strides[1] as usize, keys)?,
                    TensorMap::rows::<T>(vp, (nk, heads, d), self.strides[2] as usize, keys)?,
                ];
                let mut b = stream.launch_builder(&func);
                b.arg(&maps[0]).arg(&maps[1]).arg(&maps[2]);
                b.arg(&out).arg(&tiles);
                b.arg(&heads_).arg(&self.scale_log2);
                // SAFETY: the tensor maps cover exactly the token rows of q, k and v (reads
                // past them are zero-filled by the TMA); every tile's query rows lie inside out
                // (`[Nq·H·D]`, owned by this call), as the op's offset checks guarantee.
                unsafe { b.launch(self.cfg) }.w()?;
            } else {
                let mut b = stream.launch_builder(&func);
                b.arg(&qq).arg(&kk).arg(&vv).arg(&out).arg(&tiles);
                b.arg(&heads_).arg(&self.scale_log2);
                b.arg(&self.strides[0])
                    .arg(&self.strides[1])
                    .arg(&self.strides[2]);
                // SAFETY: every tile's rows lie inside q (and out) and its key rows inside k and
                // v, as the op's offset checks guarantee; a row r of an operand starts at
                // r·stride within its [start, end) span (`token_rows`); out[Nq·H·D] is owned by
                // this call.
                unsafe { b.launch(self.cfg) }.w()?;
            }
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}

/// A `CUtensorMap` (the driver's 128 opaque bytes; 64-byte alignment is what the kernel's
/// parameter needs, 128 what CUDA 13's header declares), passed to the warp-specialised kernel
/// by value.
#[repr(C, align(128))]
#[derive(Clone, Copy)]
struct TensorMap([u64; 16]);

// SAFETY: plain bytes, copied into the kernel's parameter space as they are.
unsafe impl DeviceRepr for TensorMap {}

impl TensorMap {
    /// The map of a `[rows, heads, d]` operand at device address `ptr` whose token rows lie
    /// `stride` elements apart (heads and dims contiguous): dims (d, heads, rows), boxes of 64
    /// dims × 1 head × `box_rows` rows with the 128-byte swizzle, the SW128 tile layout of
    /// `kernels/cuda/attention_sm90a.cu` (one box per 64-dim column block). Rows past `rows`
    /// read as zeros.
    fn rows<T: FloatElem>(
        ptr: sys::CUdeviceptr,
        (rows, heads, d): (usize, usize, usize),
        stride: usize,
        box_rows: usize,
    ) -> Result<Self> {
        let dtype = match T::DTYPE {
            DType::BF16 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            DType::F16 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
            other => bail!("varlen attention (CUDA): no tensor map for {other:?}"),
        };
        let dims = [d as u64, heads as u64, rows.max(1) as u64];
        // Byte strides of dims 1 and 2 (dim 0 is contiguous).
        let strides = [(d * 2) as u64, (stride * 2) as u64];
        let boxes = [64u32, 1, box_rows as u32];
        let steps = [1u32; 3];
        let mut map = TensorMap([0; 16]);
        // SAFETY: every pointer argument points at an array of the rank's length (strides:
        // rank − 1) that outlives the call; map is 128 bytes, 128-byte aligned; the driver only
        // encodes, it reads no device memory.
        unsafe {
            sys::cuTensorMapEncodeTiled(
                (&mut map as *mut TensorMap).cast(),
                dtype,
                3,
                ptr as *mut std::ffi::c_void,
                dims.as_ptr(),
                strides.as_ptr(),
                boxes.as_ptr(),
                steps.as_ptr(),
                sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
                sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
                sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
            )
        }
        .result()
        .w()?;
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pingpong_follows_the_knob_else_the_longest_key_sequence() {
        // The measured sides of the switch: 15,000 and 4,101 keys with, 30,000 and 49,152
        // without.
        for keys in [0, 4_101, 15_000, PINGPONG_MAX_KEYS] {
            assert!(fa3_pingpong(None, keys), "{keys}");
        }
        for keys in [PINGPONG_MAX_KEYS + 1, 30_000, 49_152] {
            assert!(!fa3_pingpong(None, keys), "{keys}");
        }
        for keys in [4_101, 49_152] {
            assert!(fa3_pingpong(Some(true), keys));
            assert!(!fa3_pingpong(Some(false), keys));
        }
    }
}
