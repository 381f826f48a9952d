//! The compiled kernels of `kernels/cuda/*.cu`, built by `build.rs` behind the `cuda` feature:
//! one [`Fatbin`] per file (SASS for each compute capability of the build plus PTX for newer
//! cards), loaded once per CUDA context by [`kernel`] and [`large_smem_func`].
//!
//! candle's `get_or_load_custom_func` takes PTX text only, which the driver JIT-compiles on a
//! machine's first run (seconds per module); loading the fatbin through cudarc lets the driver
//! take the SASS as it is.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute;
use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaModule, CudaStream, LaunchArgs};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaDevice, Result};

/// One compiled module.
pub(crate) struct Fatbin {
    /// The module's name, for the cache and errors.
    pub name: &'static str,
    /// The fatbin image.
    pub image: &'static [u8],
}

macro_rules! fatbin {
    ($file:literal) => {
        include_bytes!(concat!(env!("OUT_DIR"), "/", $file, ".fatbin"))
    };
}

/// A kernel of one of our modules and the stream of the device it was asked for, launched like
/// candle's `CudaFunc`: `kernel.builder()`, then `arg`s and `launch`.
pub(crate) struct Kernel {
    func: CudaFunction,
    stream: Arc<CudaStream>,
}

impl Kernel {
    /// A launch of the kernel on the device's stream.
    pub(crate) fn builder(&self) -> LaunchArgs<'_> {
        self.stream.launch_builder(&self.func)
    }
}

/// The loaded modules, by CUDA context (its handle's address) and module name. candle's devices
/// on one GPU share its primary context, so each module is loaded once per GPU whatever the
/// number of `CudaDevice`s; a cached module holds its context alive, so a context's address is
/// never reused for another while its entries exist.
type Modules = HashMap<(usize, &'static str), Arc<CudaModule>>;

/// `module` loaded on `dev`'s context, on first use. The lock is held while loading so two
/// threads never load the same module twice.
fn loaded(dev: &CudaDevice, module: &Fatbin) -> Result<Arc<CudaModule>> {
    static MODULES: OnceLock<Mutex<Modules>> = OnceLock::new();
    let context = dev.cuda_stream().context().clone();
    let key = (context.cu_ctx() as usize, module.name);
    let mut modules = MODULES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(m) = modules.get(&key) {
        return Ok(m.clone());
    }
    let m = context
        .load_module(Ptx::from_binary(module.image.to_vec()))
        .map_err(|e| {
            candle_core::Error::Cuda(format!("loading the CUDA module {}: {e}", module.name).into())
        })?;
    modules.insert(key, m.clone());
    Ok(m)
}

/// Kernel `name` of `module` on `dev`'s context.
fn load(dev: &CudaDevice, module: &Fatbin, name: &str) -> Result<CudaFunction> {
    loaded(dev, module)?.load_function(name).map_err(|e| {
        candle_core::Error::Cuda(format!("CUDA kernel {}/{name}: {e}", module.name).into())
    })
}

/// Kernel `name` of `module` on `dev`.
pub(crate) fn kernel(dev: &CudaDevice, module: &Fatbin, name: &str) -> Result<Kernel> {
    Ok(Kernel {
        func: load(dev, module, name)?,
        stream: dev.cuda_stream(),
    })
}

/// Kernel `name` of `module` on `dev`, opted in to `smem` bytes of dynamic shared memory (over
/// 48 KB needs it) and to the largest shared-memory carveout (two ≈100 KB blocks an SM; the
/// kernels' cp.async copies bypass L1). Attributes belong to the loaded function, which lives as
/// long as its cached module, so they are set once per (context, kernel, size). The set is
/// checked and updated under one lock, so no two threads configure the same function at once.
pub(crate) fn large_smem_func(
    dev: &CudaDevice,
    module: &Fatbin,
    name: &str,
    smem: u32,
) -> Result<CudaFunction> {
    type Key = (usize, &'static str, String, u32);
    static CONFIGURED: OnceLock<Mutex<HashSet<Key>>> = OnceLock::new();
    let func = load(dev, module, name)?;
    let context = dev.cuda_stream().context().clone();
    let key = (
        context.cu_ctx() as usize,
        module.name,
        name.to_string(),
        smem,
    );
    let mut configured = CONFIGURED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if !configured.contains(&key) {
        context.bind_to_thread().w()?;
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
    Ok(func)
}

pub(crate) const SPARSE_CONV: Fatbin = Fatbin {
    name: "trellis2_sparse_conv",
    image: fatbin!("sparse_conv"),
};
/// The wgmma sparse-conv kernels (`kernels/cuda/sparse_conv_sm90a.cu`), built only for
/// builds whose compute capabilities hold 90 (build.rs sets `trellis2_sm90a` then).
#[cfg(trellis2_sm90a)]
pub(crate) const SPARSE_CONV_SM90A: Option<Fatbin> = Some(Fatbin {
    name: "trellis2_sparse_conv_sm90a",
    image: fatbin!("sparse_conv_sm90a"),
});
#[cfg(not(trellis2_sm90a))]
pub(crate) const SPARSE_CONV_SM90A: Option<Fatbin> = None;
pub(crate) const ATTENTION: Fatbin = Fatbin {
    name: "trellis2_attention",
    image: fatbin!("attention"),
};
/// The wgmma attention kernel (`kernels/cuda/attention_sm90a.cu`), built only for
/// builds whose compute capabilities hold 90, like the conv one.
#[cfg(trellis2_sm90a)]
pub(crate) const ATTENTION_SM90A: Option<Fatbin> = Some(Fatbin {
    name: "trellis2_attention_sm90a",
    image: fatbin!("attention_sm90a"),
});
#[cfg(not(trellis2_sm90a))]
pub(crate) const ATTENTION_SM90A: Option<Fatbin> = None;
pub(crate) const DEFORM_CONV: Fatbin = Fatbin {
    name: "trellis2_deform_conv",
    image: fatbin!("deform_conv"),
};
pub(crate) const NORMS: Fatbin = Fatbin {
    name: "trellis2_norms",
    image: fatbin!("norms"),
};
pub(crate) const NEIGHBOUR_MAP: Fatbin = Fatbin {
    name: "trellis2_neighbour_map",
    image: fatbin!("neighbour_map"),
};
pub(crate) const ELEMENTWISE: Fatbin = Fatbin {
    name: "trellis2_elementwise",
    image: fatbin!("elementwise"),
};
pub(crate) const CHANNEL_TO_SPACE: Fatbin = Fatbin {
    name: "trellis2_channel_to_space",
    image: fatbin!("channel_to_space"),
};
pub(crate) const CONV_ORDER: Fatbin = Fatbin {
    name: "trellis2_conv_order",
    image: fatbin!("conv_order"),
};
pub(crate) const CASCADE_QUANTIZE: Fatbin = Fatbin {
    name: "trellis2_cascade_quantize",
    image: fatbin!("cascade_quantize"),
};

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::backend::BackendDevice;

    /// Every module of the build.
    fn all() -> Vec<Fatbin> {
        let mut all = vec![
            SPARSE_CONV,
            ATTENTION,
            DEFORM_CONV,
            NORMS,
            NEIGHBOUR_MAP,
            ELEMENTWISE,
            CHANNEL_TO_SPACE,
            CONV_ORDER,
            CASCADE_QUANTIZE,
        ];
        all.extend(SPARSE_CONV_SM90A);
        all.extend(ATTENTION_SM90A);
        all
    }

    /// Whether SASS of the build's compute capabilities runs on a card of `(major, minor)`: one
    /// of the same major version and a minor one no higher.
    fn sass_serves(built: &str, (major, minor): (i32, i32)) -> bool {
        built
            .split(',')
            .filter_map(|c| c.parse::<i32>().ok())
            .any(|c| c / 10 == major && c % 10 <= minor)
    }

    #[test]
    fn sass_serves_same_major_newer_minor() {
        assert!(sass_serves("90", (9, 0)));
        assert!(sass_serves("80,90", (8, 6)));
        assert!(!sass_serves("86", (8, 0)));
        assert!(!sass_serves("90", (10, 0)));
    }

    /// Every module loads on GPU 0 with the driver's PTX JIT and its cache off, so the build's
    /// SASS serves the card as it is: run in a child process, since the driver reads the
    /// variables when it initialises. Needs an NVIDIA GPU.
    #[test]
    fn modules_load_without_the_ptx_jit() {
        let name = "ops::cuda::modules::tests::load_every_module";
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--include-ignored", "--nocapture"])
            .env("CUDA_DISABLE_PTX_JIT", "1")
            .env("CUDA_CACHE_DISABLE", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("{stdout}");
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "the child process ended with {}:\n{}\n{stdout}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Run by [`modules_load_without_the_ptx_jit`] in its child process.
    #[test]
    #[ignore = "run by modules_load_without_the_ptx_jit with the PTX JIT off"]
    fn load_every_module() {
        let dev = CudaDevice::new(0).expect("CUDA device 0: this test needs an NVIDIA GPU");
        let cc = dev.cuda_stream().context().compute_capability().unwrap();
        let built = env!("TRELLIS2_CUDA_CAPS_BUILT");
        if !sass_serves(built, cc) {
            println!("no SASS of this build ({built}) for compute capability {cc:?}: not checked");
            return;
        }
        for module in all() {
            if module.name.ends_with("_sm90a") && cc != (9, 0) {
                continue;
            }
            loaded(&dev, &module).unwrap_or_else(|e| panic!("{e}"));
            println!("{} loads without the PTX JIT", module.name);
        }
    }
}
