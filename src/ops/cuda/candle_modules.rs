//! candle's own CUDA modules (cast, unary, binary, ...) as SASS. candle-kernels ships them as PTX
//! text, which candle's `get_or_load_func` hands the driver on a module's first use, and the
//! driver JIT-compiles it (≈ 17.6 s for the nine a run uses, on a fresh H100 machine). `build.rs`
//! compiles candle's sources (`third_party/candle-kernels`, unchanged) to fatbins like ours, and
//! [`load`] puts them in the device's module store when the device is prepared, through the
//! method our copy of candle-core adds (`third_party/candle-core/PATCHED.md`): candle then finds
//! each module loaded and never compiles its PTX.
//!
//! A module whose image does not load (a driver older than the toolkit that built it, say) stays
//! candle's to load from its PTX on first use, as without this; the error goes in the report and
//! the run goes on.

use std::sync::Mutex;
use std::time::Instant;

use candle_core::cuda_backend::kernels::{self, Module};
use candle_core::cuda_backend::DeviceId;
use candle_core::CudaDevice;

/// One candle module and its image.
pub(crate) struct CandleModule {
    /// candle-kernels' name of it (its source file's stem).
    pub name: &'static str,
    pub module: &'static Module,
    pub image: &'static [u8],
}

macro_rules! candle_module {
    ($name:literal, $module:ident) => {
        CandleModule {
            name: $name,
            module: &kernels::$module,
            image: include_bytes!(concat!(env!("OUT_DIR"), "/candle_", $name, ".fatbin")),
        }
    };
}

/// The candle modules a run uses. Left out: `QUANTIZED` (GGUF matmuls) and `SORT` (`arg_sort`),
/// which nothing of ours calls; candle still loads them from PTX if something ever does.
pub(crate) const CANDLE_MODULES: [CandleModule; 9] = [
    candle_module!("affine", AFFINE),
    candle_module!("binary", BINARY),
    candle_module!("cast", CAST),
    candle_module!("conv", CONV),
    candle_module!("fill", FILL),
    candle_module!("indexing", INDEXING),
    candle_module!("reduce", REDUCE),
    candle_module!("ternary", TERNARY),
    candle_module!("unary", UNARY),
];

/// What [`load`] did on one device.
#[derive(Clone)]
pub(crate) struct Outcome {
    pub gpu: usize,
    /// Seconds the loads took.
    pub seconds: f64,
    /// Images of the build ([`CANDLE_MODULES`]).
    pub modules: usize,
    /// Modules loaded from their images (the others: already in the store, or failed).
    pub loaded: usize,
    /// Modules already in the store (something ran on the device before its preparation).
    pub present: usize,
    pub errors: Vec<String>,
}

/// The outcome of each device loaded so far, by candle device.
static LOADED: Mutex<Vec<(DeviceId, Outcome)>> = Mutex::new(Vec::new());

/// Loads every module of [`CANDLE_MODULES`] into `dev`'s module store, once per candle device
/// (its store): a later call for the same device does nothing.
pub(crate) fn load(dev: &CudaDevice) {
    let mut done = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    if done.iter().any(|(id, _)| *id == dev.id()) {
        return;
    }
    let start = Instant::now();
    let mut outcome = Outcome {
        gpu: dev.cuda_stream().context().ordinal(),
        seconds: 0.0,
        modules: CANDLE_MODULES.len(),
        loaded: 0,
        present: 0,
        errors: Vec::new(),
    };
    for m in &CANDLE_MODULES {
        match dev.load_module_image(m.module, m.image) {
            Ok(true) => outcome.loaded += 1,
            Ok(false) => outcome.present += 1,
            // candle compiles its PTX when the run first needs the module.
            Err(e) => outcome
                .errors
                .push(format!("candle module {}: {e}", m.name)),
        }
    }
    outcome.seconds = start.elapsed().as_secs_f64();
    done.push((dev.id(), outcome));
}

/// What [`load`] did on each device so far, in the order they were prepared.
pub(crate) fn outcomes() -> Vec<Outcome> {
    let done = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    done.iter().map(|(_, o)| o.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every module candle's CUDA backend can load is one of ours but the two we never use, each
    /// once under its own name.
    #[test]
    fn the_images_are_candles_modules_but_the_unused_two() {
        let mut ours: Vec<usize> = CANDLE_MODULES.iter().map(|m| m.module.index()).collect();
        ours.sort_unstable();
        let mut all: Vec<usize> = (0..kernels::ALL_IDS.len()).collect();
        all.retain(|i| *i != kernels::QUANTIZED.index() && *i != kernels::SORT.index());
        assert_eq!(ours, all);
        for m in &CANDLE_MODULES {
            let id = kernels::ALL_IDS[m.module.index()];
            assert_eq!(format!("{id:?}").to_lowercase(), m.name);
            assert!(!m.image.is_empty(), "{}", m.name);
        }
    }
}
