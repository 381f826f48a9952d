//! `x·Wᵀ (+ b) (GELU) (+ residual)` as one cuBLASLt matmul on CUDA: the bias, the tanh-GELU and
//! the residual add ride in the GEMM's epilogue instead of separate elementwise passes over the
//! output (`bias_act` was 3.8 ms of a 35 ms DiT forward at 3.7k tokens; DINOv3's LayerScale and
//! residual passes ≈4 ms of 28 ms). Called by `Linear` (`src/ops/linear/mod.rs`) only; the
//! composed path there (candle's matmul, `bias_act`, an add) is the reference these results are
//! tested against in tests/cuda_kernels.rs.
//!
//! Numerics: `CUBLAS_COMPUTE_32F` with f32 scale for every dtype, like candle's matmul (true f32
//! for f32 operands, no TF32; fp32 accumulation for f16/bf16); the epilogue adds the bias (in the
//! operands' dtype), applies GELU and adds `1·residual` in f32 and rounds once to the output.
//!
//! Layout: row-major `x [M,K]`, `W [N,K]`, `y [M,N]` are column-major `xᵀ [K,M]`, `Wᵀ [K,N]`,
//! `yᵀ [N,M]`, so cuBLASLt computes `D[N,M] = op(A)·B + C` with `A = W` (transposed, ld K),
//! `B = x` (ld K), `C = residual` and `D = y` (ld N): two distinct buffers, so no candle tensor
//! is ever written in place. The bias runs along D's rows, i.e. y's columns.
//!
//! Per device: one handle and a 32 MiB workspace (NVIDIA's recommendation for Hopper); per
//! problem (M, N, K, dtype, epilogue, residual, pointer alignments): the descriptors and the
//! heuristic's algorithm, built once. A call then costs one bias-pointer update and one
//! `cublasLtMatmul` launch on candle's stream for the device.

use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::size_of;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::cuda_backend::cudarc::cublas::sys::cublasOperation_t;
use candle_core::cuda_backend::cudarc::cublaslt::result as lt;
use candle_core::cuda_backend::cudarc::cublaslt::sys;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, DeviceId, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result, Storage, Tensor};
use half::{bf16, f16};

use crate::ops::cuda::{large_smem_func, output, sm90a_device, SPARSE_CONV_SM90A};
use crate::ops::tuning::Tuning;
use crate::ops::vocab::Activation;

/// Whether cuBLASLt's `CUBLASLT_EPILOGUE_GELU(_BIAS)` is torch's tanh approximation (the DiT's
/// `GELU(approximate="tanh")`) closely enough to replace `bias_act`'s GeluTanh in f32; checked
/// at a tight tolerance by `cublaslt_gelu_epilogue_is_tanh_gelu` in tests/cuda_kernels.rs.
pub(crate) const GELU_EPILOGUE_IS_TANH: bool = true;

/// Workspace per device: NVIDIA's recommendation for Hopper (4 MiB suffices before it).
const WORKSPACE_BYTES: usize = 32 << 20;

/// Plans kept per device before the cache starts over.
const MAX_PLANS: usize = 4096;

/// Smallest operand alignment (bytes) taken; cuBLASLt's vectorised kernels need 16.
const MIN_ALIGNMENT: u64 = 16;

/// The result of a fused call, or why it could not run (the caller then takes the composed path).
pub(crate) type Outcome = std::result::Result<Tensor, &'static str>;

/// `TRELLIS2_CUBLASLT=off` turns the fused path off, for A/B measurements.
fn enabled() -> bool {
    Tuning::current().cublaslt
}

fn lt_err(what: &str, e: lt::CublasError) -> candle_core::Error {
    candle_core::Error::Msg(format!("cuBLASLt {what}: {e:?}"))
}

/// The largest power of two (up to 256) dividing a device address: cuBLASLt's heuristic assumes
/// 256-byte aligned operands unless told otherwise, and views start mid-buffer.
fn alignment(ptr: u64) -> u32 {
    if ptr == 0 {
        256
    } else {
        1u32 << ptr.trailing_zeros().min(8)
    }
}

/// One problem's descriptors and algorithm, created together and destroyed together.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    /// `A = W` (K×N, ld K, transposed), `B = x` (K×M, ld K), `C = D = y` (N×M, ld N).
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    d: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

// SAFETY: the descriptors are host objects owned by the plan alone; every use happens under the
// `DEVICES` lock.
unsafe impl Send for Plan {}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: created by this plan (null: never created) and destroyed once, here. Errors
        // cannot be acted upon.
        unsafe {
            for layout in [self.a, self.b, self.d] {
                if !layout.is_null() {
                    let _ = lt::destroy_matrix_layout(layout);
                }
            }
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

/// What a plan depends on besides the handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PlanKey {
    /// `M` (rows of x), `N` (outputs), `K` (inputs).
    m: u64,
    n: u64,
    k: u64,
    dtype: DType,
    epilogue: u32,
    residual: bool,
    /// Alignments (bytes) of A, B, C and D, as the heuristic's preferences.
    align: [u32; 4],
}

/// One matmul preference descriptor, destroyed on drop.
struct Preference(sys::cublasLtMatmulPreference_t);

impl Drop for Preference {
    fn drop(&mut self) {
        // SAFETY: created by `build_plan` and destroyed once, here.
        unsafe {
            let _ = lt::destroy_matmul_pref(self.0);
        }
    }
}

/// Sets one attribute of a descriptor from a plain value.
///
/// # Safety
/// `T` must be the attribute's documented type.
unsafe fn set_desc<T>(
    desc: sys::cublasLtMatmulDesc_t,
    attr: sys::cublasLtMatmulDescAttributes_t,
    value: &T,
) -> Result<()> {
    lt::set_matmul_desc_attribute(
        desc,
        attr,
        value as *const T as *const c_void,
        size_of::<T>(),
    )
    .map_err(|e| lt_err("set matmul attribute", e))
}

/// # Safety
/// `T` must be the preference's documented type.
unsafe fn set_pref<T>(
    pref: &Preference,
    attr: sys::cublasLtMatmulPreferenceAttributes_t,
    value: &T,
) -> Result<()> {
    lt::set_matmul_pref_attribute(
        pref.0,
        attr,
        value as *const T as *const c_void,
        size_of::<T>(),
    )
    .map_err(|e| lt_err("set preference", e))
}

fn data_type(dtype: DType) -> Option<sys::cudaDataType> {
    match dtype {
        DType::F32 => Some(sys::cudaDataType::CUDA_R_32F),
        DType::F16 => Some(sys::cudaDataType::CUDA_R_16F),
        DType::BF16 => Some(sys::cudaDataType::CUDA_R_16BF),
        _ => None,
    }
}

/// Builds the descriptors of `key` and asks the heuristic for its best algorithm; `None` when it
/// has none (an unsupported combination: the caller falls back). `bias` is the bias pointer the
/// heuristic sees (calls set their own).
fn build_plan(
    handle: sys::cublasLtHandle_t,
    key: &PlanKey,
    bias: Option<u64>,
) -> Result<Option<Plan>> {
    let Some(dt) = data_type(key.dtype) else {
        return Ok(None);
    };
    let desc = lt::create_matmul_desc(
        sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        sys::cudaDataType::CUDA_R_32F,
    )
    .map_err(|e| lt_err("create matmul descriptor", e))?;
    let layout = |rows: u64, cols: u64, ld: u64| {
        lt::create_matrix_layout(dt, rows, cols, ld as i64).map_err(|e| lt_err("create layout", e))
    };
    // The plan owns each handle as soon as it exists, so an early return destroys them.
    let mut plan = Plan {
        desc,
        a: std::ptr::null_mut(),
        b: std::ptr::null_mut(),
        d: std::ptr::null_mut(),
        algo: sys::cublasLtMatmulAlgo_t { data: [0; 8] },
    };
    plan.a = layout(key.k, key.n, key.k)?;
    plan.b = layout(key.k, key.m, key.k)?;
    plan.d = layout(key.n, key.m, key.n)?;
    use sys::cublasLtMatmulDescAttributes_t as D;
    // SAFETY: each value has the attribute's type (cublasOperation_t, cublasLtEpilogue_t: 32-bit
    // enums; the bias pointer a CUdeviceptr).
    unsafe {
        set_desc(
            desc,
            D::CUBLASLT_MATMUL_DESC_TRANSA,
            &cublasOperation_t::CUBLAS_OP_T,
        )?;
        set_desc(
            desc,
            D::CUBLASLT_MATMUL_DESC_TRANSB,
            &cublasOperation_t::CUBLAS_OP_N,
        )?;
        set_desc(desc, D::CUBLASLT_MATMUL_DESC_EPILOGUE, &key.epilogue)?;
        if let Some(ptr) = bias {
            set_desc(desc, D::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &ptr)?;
        }
    }
    let pref = Preference(lt::create_matmul_pref().map_err(|e| lt_err("create preference", e))?);
    use sys::cublasLtMatmulPreferenceAttributes_t as P;
    // SAFETY: the workspace limit is a u64, the alignments u32.
    unsafe {
        set_pref(
            &pref,
            P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            &(WORKSPACE_BYTES as u64),
        )?;
        set_pref(
            &pref,
            P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
            &key.align[0],
        )?;
        set_pref(
            &pref,
            P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
            &key.align[1],
        )?;
        set_pref(
            &pref,
            P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
            &key.align[2],
        )?;
        set_pref(
            &pref,
            P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
            &key.align[3],
        )?;
    }
    // SAFETY: all descriptors are live; C and D share one layout.
    let found = unsafe {
        lt::get_matmul_algo_heuristic(handle, desc, plan.a, plan.b, plan.d, plan.d, pref.0)
    };
    match found {
        Ok(h) => {
            plan.algo = h.algo;
            Ok(Some(plan))
        }
        // No algorithm for this combination (or the heuristic refused it): not an error, the
        // composed path serves it.
        Err(_) => Ok(None),
    }
}

/// A device's cuBLASLt handle, workspace and plans.
struct DeviceState {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    plans: HashMap<PlanKey, Option<Plan>>,
}

// SAFETY: the handle is used only under the `DEVICES` lock.
unsafe impl Send for DeviceState {}

impl Drop for DeviceState {
    fn drop(&mut self) {
        self.plans.clear();
        // SAFETY: created in `DeviceState::new`, destroyed once, here.
        unsafe {
            let _ = lt::destroy_handle(self.handle);
        }
    }
}

impl DeviceState {
    fn new(dev: &CudaDevice) -> Result<Self> {
        dev.cuda_stream().context().bind_to_thread().w()?;
        let handle = lt::create_handle().map_err(|e| lt_err("create handle", e))?;
        // SAFETY: cuBLASLt's scratch space; nothing reads it before cuBLASLt writes it.
        let workspace = match unsafe { dev.alloc::<u8>(WORKSPACE_BYTES) } {
            Ok(w) => w,
            Err(e) => {
                // SAFETY: just created, not shared.
                unsafe {
                    let _ = lt::destroy_handle(handle);
                }
                return Err(e);
            }
        };
        Ok(Self {
            handle,
            workspace,
            plans: HashMap::new(),
        })
    }

    /// Whether the device is gone: the workspace holds the only reference to its stream (candle
    /// has no drop hook for devices; `DeviceId`s are never reused).
    fn orphaned(&self) -> bool {
        Arc::strong_count(self.workspace.stream()) == 1
    }
}

/// Every device's state, keyed by candle's `DeviceId`.
static DEVICES: OnceLock<Mutex<HashMap<DeviceId, DeviceState>>> = OnceLock::new();

/// `y = x·Wᵀ (+ bias) (GELU when `gelu`) (+ residual)` for `x [M,K]`, `weight [N,K]`,
/// `bias [N]`, `residual [M,N]`, all on one CUDA device in one dtype (f32, f16 or bf16) and
/// contiguous; `Err(reason)` when this path cannot run it.
pub(crate) fn linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
    gelu: bool,
) -> Result<Outcome> {
    if !x.device().is_cuda() {
        return Ok(Err("not a CUDA device"));
    }
    if !enabled() {
        return Ok(Err("TRELLIS2_CUBLASLT turns cuBLASLt off"));
    }
    let dtype = x.dtype();
    if data_type(dtype).is_none() {
        return Ok(Err("cuBLASLt takes f32, f16 or bf16"));
    }
    let same = |t: Option<&Tensor>| t.is_none_or(|t| t.dtype() == dtype);
    if !same(Some(weight)) || !same(bias) || !same(residual) {
        return Ok(Err("operands of different dtypes"));
    }
    let (m, k) = x.dims2()?;
    let (n, wk) = weight.dims2()?;
    if wk != k {
        candle_core::bail!(
            "linear: x {:?} against weight {:?}",
            x.dims(),
            weight.dims()
        );
    }
    if bias.is_some_and(|b| b.dims() != [n]) || residual.is_some_and(|r| r.dims() != [m, n]) {
        candle_core::bail!(
            "linear: bias {:?} / residual {:?} for a [{m}, {n}] output",
            bias.map(|b| b.dims().to_vec()),
            residual.map(|r| r.dims().to_vec())
        );
    }
    if m == 0 || n == 0 || k == 0 {
        return Ok(Err("empty matrix"));
    }
    let row_aligned =
        |len: usize| (len * dtype.size_in_bytes()).is_multiple_of(MIN_ALIGNMENT as usize);
    if !row_aligned(k) || !row_aligned(n) {
        return Ok(Err("rows of x or y not a multiple of 16 bytes"));
    }
    match dtype {
        DType::F32 => run::<f32>(x, weight, bias, residual, gelu),
        DType::F16 => run::<f16>(x, weight, bias, residual, gelu),
        DType::BF16 => run::<bf16>(x, weight, bias, residual, gelu),
        _ => Ok(Err("cuBLASLt takes f32, f16 or bf16")),
    }
}

/// `t`'s CUDA storage as a view of its elements, if it is contiguous and on `dev`.
fn view<'a, T: CudaDType + DeviceRepr>(
    storage: &'a Storage,
    layout: &Layout,
    dev: &CudaDevice,
) -> Result<Option<CudaView<'a, T>>> {
    let Storage::Cuda(s) = storage else {
        return Ok(None);
    };
    if s.device.id() != dev.id() {
        return Ok(None);
    }
    let Some((a, z)) = layout.contiguous_offsets() else {
        return Ok(None);
    };
    Ok(Some(s.as_cuda_slice::<T>()?.slice(a..z)))
}

fn run<T: CudaDType + DeviceRepr>(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
    gelu: bool,
) -> Result<Outcome> {
    let (m, k) = x.dims2()?;
    let n = weight.dim(0)?;
    let (xs, xl) = x.storage_and_layout();
    let Storage::Cuda(xc) = &*xs else {
        return Ok(Err("not a CUDA device"));
    };
    let dev = xc.device.clone();
    let Some(xv) = view::<T>(&xs, xl, &dev)? else {
        return Ok(Err("x is not contiguous"));
    };
    let (ws, wl) = weight.storage_and_layout();
    let Some(wv) = view::<T>(&ws, wl, &dev)? else {
        return Ok(Err("weight not contiguous or on another device"));
    };
    let bias_guard = bias.map(|b| b.storage_and_layout());
    let bv = match &bias_guard {
        Some((s, l)) => match view::<T>(s, l, &dev)? {
            Some(v) => Some(v),
            None => return Ok(Err("bias not contiguous or on another device")),
        },
        None => None,
    };
    let residual_guard = residual.map(|r| r.storage_and_layout());
    let rv = match &residual_guard {
        Some((s, l)) => match view::<T>(s, l, &dev)? {
            Some(v) => Some(v),
            None => return Ok(Err("residual not contiguous or on another device")),
        },
        None => None,
    };
    let stream = dev.cuda_stream();
    // SAFETY: cublasLtMatmul writes every element of D before anything reads it.
    let mut out = unsafe { dev.alloc::<T>(m * n) }?;
    {
        let (xp, _x_read) = xv.device_ptr(&stream);
        let (wp, _w_read) = wv.device_ptr(&stream);
        let bias_ptr = bv.as_ref().map(|b| b.device_ptr(&stream));
        let res_ptr = rv.as_ref().map(|r| r.device_ptr(&stream));
        let (dp, _d_write) = out.device_ptr_mut(&stream);
        let cp = res_ptr.as_ref().map_or(dp, |(p, _)| *p);
        let bp = bias_ptr.as_ref().map(|(p, _)| *p);
        if bp.is_some_and(|p| !p.is_multiple_of(MIN_ALIGNMENT)) {
            return Ok(Err("bias not 16-byte aligned"));
        }
        let align = [wp, xp, cp, dp].map(alignment);
        if align.iter().any(|&a| u64::from(a) < MIN_ALIGNMENT) {
            return Ok(Err("an operand is not 16-byte aligned"));
        }
        use sys::cublasLtEpilogue_t as E;
        let epilogue = match (bp.is_some(), gelu) {
            (false, false) => E::CUBLASLT_EPILOGUE_DEFAULT,
            (true, false) => E::CUBLASLT_EPILOGUE_BIAS,
            (false, true) => E::CUBLASLT_EPILOGUE_GELU,
            (true, true) => E::CUBLASLT_EPILOGUE_GELU_BIAS,
        };
        let key = PlanKey {
            m: m as u64,
            n: n as u64,
            k: k as u64,
            dtype: x.dtype(),
            epilogue: epilogue as u32,
            residual: rv.is_some(),
            align,
        };
        let mut devices = DEVICES
            .get_or_init(|| Mutex::new(HashMap::new()))
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !devices.contains_key(&dev.id()) {
            devices.retain(|_, state| !state.orphaned());
            devices.insert(dev.id(), DeviceState::new(&dev)?);
        }
        let Some(state) = devices.get_mut(&dev.id()) else {
            unreachable!("inserted above")
        };
        let handle = state.handle;
        // Token and voxel counts change with every image: bound the cache (a plan is ≈1 KB of
        // host memory, rebuilding one a heuristic query of tens of µs).
        if state.plans.len() >= MAX_PLANS && !state.plans.contains_key(&key) {
            state.plans.clear();
        }
        let plan = match state.plans.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(build_plan(handle, &key, bp)?),
        };
        let Some(plan) = plan.as_ref() else {
            return Ok(Err("cuBLASLt has no algorithm for this problem"));
        };
        let (alpha, beta) = (1f32, if rv.is_some() { 1f32 } else { 0f32 });
        let (wsp, _ws_write) = state.workspace.device_ptr(&stream);
        stream.context().bind_to_thread().w()?;
        // SAFETY: the plan's layouts describe exactly these buffers: W [N·K], x [M·K], the
        // residual (or, with beta 0 and never read, D itself) and D [M·N], owned here; the bias
        // holds N elements and is 16-byte aligned; the workspace has WORKSPACE_BYTES, the limit
        // the algorithm was chosen under; alpha and beta are f32, the scale type. Everything is
        // enqueued on the stream the operands were made on.
        unsafe {
            if let Some(ptr) = bp {
                set_desc(
                    plan.desc,
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    &ptr,
                )?;
            }
            lt::matmul(
                handle,
                plan.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                wp as *const c_void,
                plan.a,
                xp as *const c_void,
                plan.b,
                cp as *const c_void,
                plan.d,
                dp as *mut c_void,
                plan.d,
                &plan.algo,
                wsp as *mut c_void,
                WORKSPACE_BYTES,
                stream.cu_stream() as sys::cudaStream_t,
            )
            .map_err(|e| lt_err("matmul", e))?;
        }
    }
    let storage = CudaStorage::wrap_cuda_slice(out, dev);
    Ok(Ok(Tensor::from_storage(
        Storage::Cuda(storage),
        (m, n),
        BackpropOp::none(),
        false,
    )))
}

/// `act(x·Wᵀ + b)` of `x [M,K]`, `W [N,K]`, `b [N]` (f16 or bf16, any activation) as one launch
/// of the wgmma kernel `linear_act_sm90a_*` (`kernels/cuda/sparse_conv_sm90a.cu`: the sparse
/// conv's main loop with one tap and no gathers), the bias (in f32) and the activation in its
/// epilogue, one rounding to the output. For the activations cuBLASLt has no epilogue for, it
/// replaces a matmul that writes `y` plus a `bias_act` pass that reads and rewrites it: at the
/// SC-VAE decoders' ConvNeXt `Linear(C, 4C)` + SiLU, 2·M·4C·2 bytes less traffic and one launch
/// fewer per layer. 128 output columns a tile (64 at N ≤ 64), three ring stages, two blocks an
/// SM, so that one block's epilogue stores overlap the other's loads (the layers it is meant
/// for have K ≤ 256: a handful of steps a tile, bound by the output write).
pub(crate) fn wgmma_act(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    act: Activation,
) -> Result<Outcome> {
    let Some(module) = &SPARSE_CONV_SM90A else {
        return Ok(Err("the wgmma linear is not in this build (sm_90a)"));
    };
    let dtype = x.dtype();
    if !matches!(dtype, DType::F16 | DType::BF16) {
        return Ok(Err("the wgmma linear takes f16 or bf16"));
    }
    if weight.dtype() != dtype {
        return Ok(Err("operands of different dtypes"));
    }
    let (m, k) = x.dims2()?;
    let (n, wk) = weight.dims2()?;
    if wk != k || bias.is_some_and(|b| b.dims() != [n]) {
        candle_core::bail!(
            "linear: x {:?} against weight {:?} and bias {:?}",
            x.dims(),
            weight.dims(),
            bias.map(|b| b.dims().to_vec())
        );
    }
    if m == 0 || n == 0 || k == 0 {
        return Ok(Err("empty matrix"));
    }
    if !k.is_multiple_of(8) {
        return Ok(Err("the wgmma linear needs inputs a multiple of 8"));
    }
    if i32::try_from(m).is_err() || i32::try_from(n).is_err() || i32::try_from(k).is_err() {
        return Ok(Err("a dimension over i32"));
    }
    let bias = bias
        .map(|b| b.to_dtype(DType::F32)?.contiguous())
        .transpose()?;
    let dims = (m, k, n);
    match dtype {
        DType::F16 => wgmma_act_run::<f16>(module, x, weight, bias.as_ref(), act, dims, "f16"),
        _ => wgmma_act_run::<bf16>(module, x, weight, bias.as_ref(), act, dims, "bf16"),
    }
}

/// [`wgmma_act`] for one operand type (`ty`: its name in the kernel's).
fn wgmma_act_run<T: CudaDType + DeviceRepr>(
    module: &crate::ops::cuda::Fatbin,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    act: Activation,
    (m, k, n): (usize, usize, usize),
    ty: &str,
) -> Result<Outcome> {
    let (xs, xl) = x.storage_and_layout();
    let Storage::Cuda(xc) = &*xs else {
        return Ok(Err("not a CUDA device"));
    };
    let dev = xc.device.clone();
    if !sm90a_device(&dev, true)? {
        return Ok(Err(
            "the wgmma linear needs a compute capability 9.0 device",
        ));
    }
    let Some(xv) = view::<T>(&xs, xl, &dev)? else {
        return Ok(Err("x is not contiguous"));
    };
    let (ws, wl) = weight.storage_and_layout();
    let Some(wv) = view::<T>(&ws, wl, &dev)? else {
        return Ok(Err("weight not contiguous or on another device"));
    };
    // 16-byte copies: x and W must start on a 16-byte boundary (their rows then all do, K being
    // a multiple of 8 elements).
    if !xl.start_offset().is_multiple_of(8) || !wl.start_offset().is_multiple_of(8) {
        return Ok(Err("x or weight does not start on a 16-byte boundary"));
    }
    let bias_guard = bias.map(|b| b.storage_and_layout());
    let bv = match &bias_guard {
        Some((s, l)) => match view::<f32>(s, l, &dev)? {
            Some(v) => Some(v),
            None => return Ok(Err("bias not contiguous or on another device")),
        },
        None => None,
    };
    // Tile columns, ring stages and wgmma groups kept in flight: instantiations of the .cu file
    // (`LINEAR90`), dynamic shared memory as its `smem_bytes`.
    let (bn, stages, keep) = if n <= 64 { (64, 4, 0) } else { (128, 3, 0) };
    let smem = (stages * (128 + bn) * 128 + 1024) as u32;
    let name = format!("linear_act_sm90a_{ty}_n{bn}_s{stages}_k{keep}");
    let func = large_smem_func(&dev, module, &name, smem)?;
    let out = output::<T>(&dev, m * n)?;
    let cfg = LaunchConfig {
        grid_dim: (m.div_ceil(128) as u32, n.div_ceil(bn) as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: smem,
    };
    let (m_, k_, n_, act_) = (m as i32, k as i32, n as i32, act as i32);
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&func);
    b.arg(&xv).arg(&wv);
    match &bv {
        Some(v) => b.arg(v),
        None => b.arg(&0u64),
    };
    b.arg(&out).arg(&m_).arg(&k_).arg(&n_).arg(&act_);
    // SAFETY: the kernel reads x[M·K] and W[N·K] (contiguous views of those sizes, checked by
    // the shape checks above), bias[N] f32 when not null, and writes every element of out[M·N],
    // which it owns: each (row < M, column < N) belongs to exactly one tile.
    unsafe { b.launch(cfg) }.w()?;
    let storage = CudaStorage::wrap_cuda_slice(out, dev);
    Ok(Ok(Tensor::from_storage(
        Storage::Cuda(storage),
        (m, n),
        BackpropOp::none(),
        false,
    )))
}
