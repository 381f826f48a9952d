//! Backend-dispatched primitives as candle `CustomOp`s. The CPU implementation of every op is
//! the reference the Metal and CUDA kernels are tested against (docs/ARCHITECTURE.md, "Layers").
//!
//! Layering: `ops` is the lowest layer of the crate; it imports no other top-level module
//! (`sparse`, `models`, `pipeline`, ...), which may all import it. Inside, an op with kernels is
//! a folder: `<op>/mod.rs` holds the `CustomOp`, the public validating function, the CPU
//! reference and its `_slow` twin, and its forwards call the op's own launchers
//! `<op>/cuda.rs` and `<op>/metal.rs`. Those backend files are leaves: they import only
//! [`vocab`], [`tuning`], [`storage`], `sample_offsets` and their own backend's utilities
//! ([`cuda`](self) or [`metal`]), never another op, the other backend or a higher layer; the
//! backend utilities import no op. tests/architecture.rs checks these rules.

pub mod attention;
pub mod bias_act;
pub mod c2s_skip_add;
pub mod cascade_quantize;
pub mod conv3d;
pub mod conv_order;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
pub mod deform_conv;
pub mod gated_residual;
pub mod host_copy;
pub mod i32_equal;
pub mod interpolate;
pub mod layer_norm;
pub mod layer_norm_act;
pub mod linear;
pub mod metal;
pub mod neighbour_map;
pub mod norm_modulate;
pub mod norm_params;
pub mod rms_norm_rope;
pub mod rope;
mod sample_offsets;
pub mod space_to_channel;
pub mod sparse_conv;
pub(crate) mod storage;
pub mod subdivide;
pub mod tuning;
pub mod vocab;

pub use conv3d::{conv3d_k3, Conv3dK3, GridNeighbours};
pub use deform_conv::{deform_conv2d, DeformConvConfig};
pub use interpolate::interpolate_bilinear_aligned;
pub use layer_norm::layer_norm;
pub use sparse_conv::{submanifold_conv3d, submanifold_conv3d_map, submanifold_conv3d_slow};

/// What a device is and how the ops set it up: the first line of `trellis2 selftest` and of a
/// bug report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// One line: name, and on Metal GPU family, macOS, language version, bf16, SIMD width.
    pub description: String,
    /// Whether bf16 kernels exist on the device (on Metal, from MSL 3.1: macOS 14).
    pub bf16: bool,
    /// What a run should tell the user once (e.g. bf16 roles running in f16).
    pub notes: Vec<String>,
}

/// Prepares `device` for the ops once, when it is opened, and describes it. On Metal: checks
/// the GPU family, OS and SIMD width (an unsupported GPU is an error naming it and what it
/// lacks) and compiles every kernel library with pinned options (a failure names the file);
/// on CUDA the memory pool keeps freed memory (otherwise every synchronisation hands it back to
/// the driver and the next large allocation maps it again), and candle's own kernel modules are
/// loaded into the device's module store from the build's SASS, so that candle never
/// JIT-compiles their PTX (a module that fails to load is left to candle's PTX path;
/// [`candle_kernel_loads`] says how that went). Calling it again is cheap.
pub fn prepare_device(device: &candle_core::Device) -> candle_core::Result<DeviceInfo> {
    match device {
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(d) => {
            cuda::retain_freed_memory(d)?;
            cuda::load_candle_modules(d);
            let context = d.cuda_stream().context().clone();
            let name = context.name().map_err(candle_core::Error::wrap)?;
            let (major, minor) = context
                .compute_capability()
                .map_err(candle_core::Error::wrap)?;
            Ok(DeviceInfo {
                description: format!("{name}, compute capability {major}.{minor}"),
                bf16: true,
                notes: Vec::new(),
            })
        }
        #[cfg(feature = "metal")]
        candle_core::Device::Metal(d) => {
            let setup = metal::setup::setup(d)?;
            let notes = if setup.plan.bf16 {
                Vec::new()
            } else {
                vec![setup.report.bf16_fallback_note()]
            };
            Ok(DeviceInfo {
                description: setup.describe(),
                bf16: setup.plan.bf16,
                notes,
            })
        }
        _ => Ok(DeviceInfo {
            description: format!(
                "CPU, {} threads",
                std::thread::available_parallelism().map_or(1, |n| n.get())
            ),
            bf16: true,
            notes: Vec::new(),
        }),
    }
}

/// How candle's CUDA kernel modules were loaded on one device when it was prepared (CUDA builds
/// only).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CandleKernelLoad {
    /// The GPU's ordinal.
    pub gpu: usize,
    /// Seconds the loads took.
    pub seconds: f64,
    /// candle modules the build holds as SASS images (the nine a run uses).
    pub modules: usize,
    /// Modules loaded from those images; candle compiles any other it needs from its PTX.
    pub from_images: usize,
    /// Modules that were in candle's store already (a candle op ran before the preparation).
    #[serde(skip_serializing_if = "is_zero")]
    pub already_loaded: usize,
    /// Images that did not load (e.g. a driver older than the CUDA toolkit of the build); candle
    /// loads those modules from its PTX when first needed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// How candle's CUDA kernel modules were loaded on each device [`prepare_device`] prepared, in
/// that order. Empty on other backends and builds.
pub fn candle_kernel_loads() -> Vec<CandleKernelLoad> {
    #[cfg(feature = "cuda")]
    {
        cuda::candle_module_loads()
            .into_iter()
            .map(|o| CandleKernelLoad {
                gpu: o.gpu,
                seconds: o.seconds,
                modules: o.modules,
                from_images: o.loaded,
                already_loaded: o.present,
                errors: o.errors,
            })
            .collect()
    }
    #[cfg(not(feature = "cuda"))]
    {
        Vec::new()
    }
}

/// Memory of a device in bytes: what is free for new allocations and the whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceMemory {
    pub free: u64,
    pub total: u64,
}

/// The device's memory as its driver or OS reports it: CUDA the card's free/total; Metal the
/// recommended working set less what this process has allocated; the CPU `MemAvailable` /
/// `MemTotal` of Linux. `None` where nothing reports it (the CPU on other systems).
pub fn device_memory(device: &candle_core::Device) -> Option<DeviceMemory> {
    match device {
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(d) => {
            let (free, total) = d.cuda_stream().context().mem_get_info().ok()?;
            Some(DeviceMemory {
                free: free as u64,
                total: total as u64,
            })
        }
        #[cfg(feature = "metal")]
        candle_core::Device::Metal(d) => {
            let (free, total) = metal::setup::working_set(d);
            Some(DeviceMemory { free, total })
        }
        _ => host_memory(),
    }
}

/// `MemAvailable` and `MemTotal` of `/proc/meminfo`.
fn host_memory() -> Option<DeviceMemory> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = |key: &str| -> Option<u64> {
        let line = info.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok()
    };
    Some(DeviceMemory {
        free: kib("MemAvailable:")? * 1024,
        total: kib("MemTotal:")? * 1024,
    })
}

/// Whether `device` has bf16 kernels (false only on a Metal device compiled without bfloat;
/// the CPU's own limits are the caller's to state).
pub fn bf16_available(device: &candle_core::Device) -> bool {
    match device {
        #[cfg(feature = "metal")]
        candle_core::Device::Metal(d) => metal::setup::setup(d).is_ok_and(|s| s.plan.bf16),
        _ => true,
    }
}
