//! Peak resident memory, per stage where the OS allows it. Linux only: `VmHWM` of
//! `/proc/self/status`, reset between stages through `/proc/self/clear_refs` ("5" resets the
//! peak). Elsewhere the values are `None` and reports say "n/a".

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

#[cfg(test)]
mod tests {
    use super::*;

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
