//! Emptying the page cache before a cold measurement. Included with `#[path]` by the benches
//! that measure reads from the disk.

/// Writes the dirty pages out and drops the clean ones (Linux, as root); whether it could.
pub fn drop_page_cache() -> bool {
    // SAFETY: `sync` takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}
