//! Hostile or damaged safetensors files fail with an error naming the file, and never make us
//! allocate what their header announces (a 10 GB header length, offsets past the end, shapes
//! whose byte count overflows).

mod common;

use std::path::Path;

use trellis2::weights::Checkpoint;

/// A safetensors file: 8-byte little-endian header length, the header, then `data`.
fn write_raw(path: &Path, announced_len: u64, header: &str, data: &[u8]) {
    let mut bytes = announced_len.to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

/// Peak resident memory of this process so far (Linux), in bytes.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn expect_clear_error(path: &Path, needle: &str) {
    let err = match Checkpoint::open_file(path) {
        Ok(ckpt) => {
            // Some damage only shows when a tensor is read.
            let names: Vec<String> = ckpt.tensor_infos().into_iter().map(|t| t.name).collect();
            let failed = names.iter().find_map(|n| {
                ckpt.load(n, candle_core::DType::F32, &candle_core::Device::Cpu)
                    .err()
            });
            failed.unwrap_or_else(|| panic!("{} loaded", path.display()))
        }
        Err(e) => e,
    };
    let text = format!("{err:#}");
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(
        text.to_lowercase().contains(needle),
        "{needle:?} not in {text}"
    );
    assert!(!text.contains('\n'), "one line: {text}");
}

#[test]
fn size_bombs_and_corrupt_headers_fail_cleanly_without_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let before = peak_rss();
    let ok_header = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;

    // Header length of 10 GB in a tiny file.
    let bomb = dir.path().join("bomb.safetensors");
    write_raw(&bomb, 10_000_000_000, ok_header, &[0; 8]);
    expect_clear_error(&bomb, "header");

    // Header length pointing past the end of the file (but under any size cap).
    let past = dir.path().join("past_end.safetensors");
    write_raw(&past, 4096, ok_header, &[0; 8]);
    expect_clear_error(&past, "header");

    // Offsets beyond the data.
    let offsets = dir.path().join("offsets.safetensors");
    let h = r#"{"w":{"dtype":"F32","shape":[2500000000],"data_offsets":[0,10000000000]}}"#;
    write_raw(&offsets, h.len() as u64, h, &[0; 8]);
    expect_clear_error(&offsets, "");

    // A shape whose byte count overflows usize.
    let overflow = dir.path().join("overflow.safetensors");
    let h = r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}}"#;
    write_raw(&overflow, h.len() as u64, h, &[0; 8]);
    expect_clear_error(&overflow, "");

    // Header that is not JSON.
    let garbage = dir.path().join("garbage.safetensors");
    write_raw(&garbage, 12, "not json at all", &[]);
    expect_clear_error(&garbage, "");

    // Shape and offsets that disagree (8 bytes stored for 3 floats).
    let mismatch = dir.path().join("mismatch.safetensors");
    let h = r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
    write_raw(&mismatch, h.len() as u64, h, &[0; 8]);
    expect_clear_error(&mismatch, "");

    // A valid file still loads, so the checks above are not just rejecting everything.
    let good = dir.path().join("good.safetensors");
    write_raw(&good, ok_header.len() as u64, ok_header, &[0; 8]);
    let ckpt = Checkpoint::open_file(&good).unwrap();
    assert_eq!(ckpt.tensor_infos()[0].shape, vec![2]);

    if let (Some(a), Some(b)) = (before, peak_rss()) {
        assert!(b - a < 256 << 20, "peak RSS grew by {} MiB", (b - a) >> 20);
    }
}
