//! Peak memory per stage. Host: resident memory where the OS allows it — Linux only: `VmHWM` of
//! `/proc/self/status`, reset between stages through `/proc/self/clear_refs` ("5" resets the
//! peak); elsewhere the values are `None` and reports say "n/a". GPU (CUDA): the card's memory in
//! use, sampled by a helper thread, since the driver keeps no peak.

/// The process's peak resident set size in bytes since start or the last [`reset_peak_rss`].
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Starts a new peak measurement; `false` when the OS does not allow it (then the peak is the
/// process's lifetime peak).
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Samples the GPU's memory in use every 5 ms from [`GpuMemoryProbe::start`] to
/// [`GpuMemoryProbe::finish`] and keeps the largest value. CUDA only (the driver's free/total
/// of the whole card); `start` gives `None` on other devices.
pub struct GpuMemoryProbe {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    worker: std::thread::JoinHandle<Option<u64>>,
}

impl GpuMemoryProbe {
    pub fn start(device: &candle_core::Device) -> Option<Self> {
        let used = used_gpu_memory(device)?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let worker = std::thread::spawn(move || {
            let mut peak = None::<u64>;
            loop {
                if let Some(bytes) = used() {
                    peak = Some(peak.map_or(bytes, |p| p.max(bytes)));
                }
                if flag.load(std::sync::atomic::Ordering::Relaxed) {
                    return peak;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        });
        Some(Self { stop, worker })
    }

    /// The peak in bytes (`None` if no sample could be read).
    pub fn finish(self) -> Option<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.worker.join().ok().flatten()
    }
}

/// A sampler of the card's memory in use, callable from any thread.
#[cfg(feature = "cuda")]
fn used_gpu_memory(
    device: &candle_core::Device,
) -> Option<Box<dyn Fn() -> Option<u64> + Send + 'static>> {
    let candle_core::Device::Cuda(cuda) = device else {
        return None;
    };
    let context = cuda.cuda_stream().context().clone();
    Some(Box::new(move || {
        // Binds the context to the sampling thread, then asks the driver.
        let (free, total) = context.mem_get_info().ok()?;
        Some(total.saturating_sub(free) as u64)
    }))
}

#[cfg(not(feature = "cuda"))]
fn used_gpu_memory(
    _device: &candle_core::Device,
) -> Option<Box<dyn Fn() -> Option<u64> + Send + 'static>> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_gpu_probe_on_the_cpu() {
        assert!(GpuMemoryProbe::start(&candle_core::Device::Cpu).is_none());
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn peak_is_reported_on_linux() {
        let before = peak_rss_bytes().expect("VmHWM on Linux");
        let block = vec![1u8; 64 << 20];
        std::hint::black_box(&block);
        let after = peak_rss_bytes().unwrap();
        assert!(after >= before && after >= 64 << 20, "{before} → {after}");
    }
}
