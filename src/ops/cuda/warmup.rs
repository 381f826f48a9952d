//! candle's own CUDA modules (candle-kernels' PTX: unary, binary, cast, reduce, ...) loaded on
//! background threads as soon as a device is prepared, so that the driver's JIT compilation of
//! them (≈ 8 s for the nine a run uses, on a fresh H100 machine) overlaps the first weight reads
//! instead of stalling the first stages that launch their kernels. Our own modules ship as SASS
//! ([`super::modules`]) and need none of this.
//!
//! candle's `get_or_load_func` holds its module store's write lock while the driver compiles,
//! which stops every other candle kernel launch on the device for that time and lets only one
//! module compile at once. So, while the driver's JIT cache is on (its default;
//! `CUDA_CACHE_DISABLE=1` turns it off), `threads` workers first compile the modules outside
//! candle's lock, with the PTX text and the load call candle uses (the driver keys its cache on
//! the PTX and the options, so candle's own load of a module is then a cache hit), and the thread
//! that started them then loads each compiled module into candle's store. With the cache off the
//! first compile would be thrown away, so that thread loads the modules into candle's store
//! directly, one after the other.
//!
//! Races: candle looks a module up under its read lock and loads it under the write lock without
//! looking again, so a module the run asks for while the warm-up loads it may be loaded twice;
//! the second load replaces the first in the store (a loaded function keeps its own module
//! alive) and, with the cache on, costs a cache hit. The modules go in the order a run first
//! needs them, so the warm-up is mostly ahead of the run. Nothing here fails a run: an error is
//! recorded in the report and the run loads that module itself, as without the warm-up.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use candle_core::backend::BackendDevice;
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::kernels::{self, Module};
use candle_core::CudaDevice;

/// What the warm-up of one device did (the ops layer turns it into its public report).
pub(crate) struct Outcome {
    pub gpu: usize,
    /// Compile workers (0: straight loads into candle's store).
    pub threads: usize,
    /// Seconds from the start until the last module was in candle's store.
    pub seconds: f64,
    /// The modules in the order they were ready.
    pub modules: Vec<ModuleOutcome>,
    pub errors: Vec<String>,
}

/// One module of an [`Outcome`].
pub(crate) struct ModuleOutcome {
    pub name: &'static str,
    /// Its compile on a worker (none for a straight load).
    pub compile_seconds: Option<f64>,
    /// Seconds from the start until it was in candle's store.
    pub ready_seconds: f64,
}

/// The candle modules a run uses, in the order it first needs them (weights cast on load, then
/// DINOv3's copies, arithmetic and patch conv), each with one of its real kernels (candle loads
/// the whole module for any of them). Left out: `QUANTIZED` (GGUF matmuls) and `SORT`
/// (`arg_sort`), which nothing of ours calls; they are also the largest to compile.
pub(crate) const USED: [(&str, &Module, &str); 9] = [
    ("cast", &kernels::CAST, "cast_f32_f16"),
    ("unary", &kernels::UNARY, "ucopy_f32"),
    ("binary", &kernels::BINARY, "badd_f32"),
    ("affine", &kernels::AFFINE, "affine_f32"),
    ("conv", &kernels::CONV, "im2col_f32"),
    ("reduce", &kernels::REDUCE, "fast_sum_f32"),
    ("indexing", &kernels::INDEXING, "is_u32_f32"),
    ("fill", &kernels::FILL, "fill_f32"),
    ("ternary", &kernels::TERNARY, "where_u8_f32"),
];

struct Running {
    device: CudaDevice,
    handle: Option<JoinHandle<Outcome>>,
}

static RUNNING: Mutex<Vec<Running>> = Mutex::new(Vec::new());
/// Set by [`finish`] with `cancel`: no module not yet started is started.
static CANCEL: AtomicBool = AtomicBool::new(false);

/// Starts the warm-up of `dev`'s candle modules with `threads` compile workers (0: none), once
/// per candle device (its module store); a later call for the same device does nothing.
pub(crate) fn start(dev: &CudaDevice, threads: usize) {
    if threads == 0 {
        return;
    }
    let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
    if running.iter().any(|r| r.device.same_device(dev)) {
        return;
    }
    let cache_off = std::env::var("CUDA_CACHE_DISABLE").is_ok_and(|v| v.trim() == "1");
    let workers = if cache_off { 0 } else { threads };
    let device = dev.clone();
    let spawned = std::thread::Builder::new()
        .name("cuda-warmup".into())
        .spawn(move || warm_up(&device, workers));
    // No thread, no warm-up: the run loads the modules itself.
    running.push(Running {
        device: dev.clone(),
        handle: spawned.ok(),
    });
}

/// Waits for every warm-up started so far and returns what each did (each once: a later call
/// leaves out those already returned). `cancel`: modules not yet started are skipped, so this
/// waits only for the compiles under way (the process is about to end).
pub(crate) fn finish(cancel: bool) -> Vec<Outcome> {
    if cancel {
        CANCEL.store(true, Ordering::Relaxed);
    }
    let handles: Vec<(usize, JoinHandle<Outcome>)> = {
        let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        running
            .iter_mut()
            .filter_map(|r| Some((gpu_of(&r.device), r.handle.take()?)))
            .collect()
    };
    handles
        .into_iter()
        .map(|(gpu, h)| {
            h.join().unwrap_or_else(|_| Outcome {
                gpu,
                threads: 0,
                seconds: 0.0,
                modules: Vec::new(),
                errors: vec!["the warm-up thread panicked".into()],
            })
        })
        .collect()
}

fn gpu_of(dev: &CudaDevice) -> usize {
    dev.cuda_stream().context().ordinal()
}

/// The warm-up of one device: compiles on `workers` threads, each module loaded into candle's
/// store as its compile ends; with no workers, straight loads in order.
fn warm_up(dev: &CudaDevice, workers: usize) -> Outcome {
    let start = Instant::now();
    let mut report = Outcome {
        gpu: gpu_of(dev),
        threads: workers,
        seconds: 0.0,
        modules: Vec::new(),
        errors: Vec::new(),
    };
    let store = |i: usize, compile_seconds: Option<f64>, report: &mut Outcome| {
        let (name, module, func) = USED[i];
        if let Err(e) = dev.get_or_load_func(func, module) {
            report.errors.push(format!("candle module {name}: {e}"));
        }
        report.modules.push(ModuleOutcome {
            name,
            compile_seconds,
            ready_seconds: start.elapsed().as_secs_f64(),
        });
    };
    if workers == 0 {
        for i in 0..USED.len() {
            if CANCEL.load(Ordering::Relaxed) {
                break;
            }
            store(i, None, &mut report);
        }
    } else {
        let next = Arc::new(AtomicUsize::new(0));
        let (done, compiled) = mpsc::channel::<(usize, std::result::Result<f64, String>)>();
        let context = dev.cuda_stream().context().clone();
        let mut pool = Vec::new();
        for w in 0..workers.min(USED.len()) {
            let (next, done, context) = (next.clone(), done.clone(), context.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("cuda-jit-{w}"))
                .spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= USED.len() || CANCEL.load(Ordering::Relaxed) {
                        return;
                    }
                    let t = Instant::now();
                    // Compiled and dropped: what stays is the driver's cache entry.
                    let r = context
                        .load_module(Ptx::from_src(USED[i].1.ptx()))
                        .map(|_| t.elapsed().as_secs_f64())
                        .map_err(|e| e.to_string());
                    if done.send((i, r)).is_err() {
                        return;
                    }
                });
            match spawned {
                Ok(h) => pool.push(h),
                Err(e) => report.errors.push(format!("compile worker {w}: {e}")),
            }
        }
        drop(done);
        // Ends when every worker has ended (all modules sent, or cancelled).
        for (i, r) in compiled {
            match r {
                Ok(s) => store(i, Some(s), &mut report),
                Err(e) => {
                    // candle loads it when the run first needs it, compiling it then.
                    report
                        .errors
                        .push(format!("compiling candle module {}: {e}", USED[i].0));
                }
            }
        }
        for h in pool {
            if h.join().is_err() {
                report.errors.push("a compile worker panicked".into());
            }
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each named kernel is an entry of its module's PTX, so `get_or_load_func` finds it once the
    /// module is loaded (no GPU needed: the PTX is text in the binary).
    #[test]
    fn every_warmed_kernel_is_in_its_module() {
        for (name, module, func) in USED {
            let entry = format!(".entry {func}(");
            assert!(
                module.ptx().contains(&entry),
                "candle module {name} has no kernel {func}"
            );
        }
    }

    /// Every module candle's CUDA backend can load is either warmed or one we never use.
    #[test]
    fn the_warmed_modules_are_candles_but_the_unused_two() {
        let warmed: Vec<usize> = USED.iter().map(|(_, m, _)| m.index()).collect();
        let mut all: Vec<usize> = (0..kernels::ALL_IDS.len()).collect();
        all.retain(|i| *i != kernels::QUANTIZED.index() && *i != kernels::SORT.index());
        let mut sorted = warmed.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, all);
    }
}
