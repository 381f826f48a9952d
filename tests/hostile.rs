//! Issue #21: the hostile-input cases, each replayed against the real binary with the tiny
//! golden models. Every case must end in one `error:` line with the documented exit code
//! (2 usage, 1 failure, 130 interrupted), no panic (101) or abort (134), no allocation beyond
//! what the input justifies, no temporary file left behind and no output overwritten.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const IMAGE: &str =
    "golden/images/0a34fae7ba57cb8870df5325b9c30ea474def1b0913c19c596655b85a79fdee4.webp";

fn trellis2(args: &[&str]) -> Output {
    command(args).output().expect("binary runs")
}

fn command(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_trellis2"));
    c.env("TRELLIS2_DEVICE", "cpu")
        .env_remove("TRELLIS2_MODEL")
        .args(args);
    c
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn image() -> PathBuf {
    common::fixture(IMAGE)
}

fn golden_model() -> PathBuf {
    common::fixture("golden")
}

/// A copy of the golden model folder (models + pipeline.json) to damage.
fn model_copy(dir: &Path) -> PathBuf {
    let root = dir.join("model");
    let from = golden_model();
    std::fs::create_dir_all(root.join("models/image_cond_model")).unwrap();
    std::fs::copy(from.join("pipeline.json"), root.join("pipeline.json")).unwrap();
    for entry in std::fs::read_dir(from.join("models")).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, root.join("models").join(p.file_name().unwrap())).unwrap();
        }
    }
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(
            from.join("models/image_cond_model").join(f),
            root.join("models/image_cond_model").join(f),
        )
        .unwrap();
    }
    root
}

/// Sets `key` (dotted path) of the JSON file `path` to `value`.
fn set_json(path: &Path, key: &str, value: serde_json::Value) {
    let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let mut node = &mut doc;
    let parts: Vec<&str> = key.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        node = node.get_mut(*part).unwrap();
    }
    node[parts[parts.len() - 1]] = value;
    std::fs::write(path, serde_json::to_vec(&doc).unwrap()).unwrap();
}

/// The cheapest generate of the tiny models, into `out`.
fn generate_args<'a>(model: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "generate",
        "--model",
        model,
        "-o",
        out,
        "--pipeline",
        "512",
        "--steps",
        "1",
        "--format",
        "splat",
    ]
}

/// Exactly one `error:` line on stderr holding every needle, and the exit code `code`.
fn assert_one_error(o: &Output, code: i32, needles: &[&str]) {
    assert_eq!(o.status.code(), Some(code), "{}", text(o));
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{}", text(o));
    for n in needles {
        assert!(lines[0].contains(n), "{n:?} missing: {}", text(o));
    }
    assert!(!err.contains("panicked"), "{}", text(o));
}

/// Largest resident set of any child this test process has waited for, in bytes (Linux,
/// macOS: kilobytes vs bytes).
#[cfg(unix)]
fn children_peak_rss() -> u64 {
    // SAFETY: getrusage fills the struct it is given; nothing else is touched.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let v = usage.ru_maxrss as u64;
    if cfg!(target_os = "macos") {
        v
    } else {
        v * 1024
    }
}

fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|e| {
            e.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".tmp"))
                .collect()
        })
        .unwrap_or_default()
}

/// Case 1: two pictures with one stem are refused before any work, naming both.
#[test]
fn case_1_two_inputs_never_write_one_output() {
    let dir = tempfile::tempdir().unwrap();
    let pictures = dir.path().join("s");
    std::fs::create_dir_all(&pictures).unwrap();
    std::fs::copy(image(), pictures.join("chair.webp")).unwrap();
    std::fs::copy(
        common::fixture("../../examples/T.png"),
        pictures.join("chair.png"),
    )
    .unwrap();
    let out = dir.path().join("out");
    let model = golden_model();
    let mut args = generate_args(s(&model), s(&out));
    args.push(s(&pictures));
    let o = trellis2(&args);
    assert_one_error(&o, 2, &["chair.png", "chair.webp", "rename"]);
    assert!(!out.exists(), "nothing written before the refusal");
    // Files given one by one (case differs: macOS file systems would fold them) likewise.
    std::fs::copy(image(), dir.path().join("Chair.webp")).unwrap();
    let mut args = generate_args(s(&model), s(&out));
    let (a, b) = (pictures.join("chair.webp"), dir.path().join("Chair.webp"));
    args.extend([s(&a), s(&b)]);
    assert_one_error(&trellis2(&args), 2, &["Chair.webp", "chair.webp"]);
}

/// Cases 2, 3, 4: config fields that size allocations are checked against plausible ranges
/// before anything is allocated: one line naming the file, the field and the range, exit 1,
/// quickly and in little memory.
#[test]
fn cases_2_3_4_absurd_model_sizes_fail_before_allocating() {
    let cases: &[(&str, &str, serde_json::Value)] = &[
        (
            "shape_slat_flow_model_512.json",
            "args.mlp_ratio",
            1e30.into(),
        ),
        (
            "sparse_structure_flow_model.json",
            "args.resolution",
            1000.into(),
        ),
        (
            "sparse_structure_flow_model.json",
            "args.model_channels",
            (1u64 << 40).into(),
        ),
        (
            "sparse_structure_flow_model.json",
            "args.num_blocks",
            1_000_000_000.into(),
        ),
        (
            "sparse_structure_decoder.json",
            "args.latent_channels",
            1_000_000_000_000u64.into(),
        ),
        (
            "sparse_structure_decoder.json",
            "args.num_res_blocks",
            1_000_000_000.into(),
        ),
        (
            "image_cond_model/config.json",
            "hidden_size",
            (1u64 << 40).into(),
        ),
        (
            "image_cond_model/config.json",
            "num_register_tokens",
            1_000_000_000_000u64.into(),
        ),
        (
            "image_cond_model/config.json",
            "num_hidden_layers",
            1_000_000_000.into(),
        ),
    ];
    for (file, key, value) in cases {
        let dir = tempfile::tempdir().unwrap();
        let model = model_copy(dir.path());
        set_json(&model.join("models").join(file), key, value.clone());
        let out = dir.path().join("out");
        let mut args = generate_args(s(&model), s(&out));
        let img = image();
        args.push(s(&img));
        let start = Instant::now();
        let o = trellis2(&args);
        let field = key.rsplit('.').next().unwrap();
        let stem = file.split('/').next().unwrap().trim_end_matches(".json");
        assert_one_error(&o, 1, &[stem, &format!("`{field}`"), "plausible range"]);
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{file} {key}: {:?}",
            start.elapsed()
        );
        assert!(temporaries(&out).is_empty());
    }
    // Within every range but far more than the checkpoint holds: refused by the memory
    // estimate (the checkpoint's size) at the first tensor past it.
    let dir = tempfile::tempdir().unwrap();
    let model = model_copy(dir.path());
    let config = model.join("models/sparse_structure_flow_model.json");
    set_json(&config, "args.num_blocks", 128.into());
    set_json(&config, "args.model_channels", 4096.into());
    set_json(&config, "args.num_heads", 32.into());
    let out = dir.path().join("out");
    let mut args = generate_args(s(&model), s(&out));
    let img = image();
    args.push(s(&img));
    let o = trellis2(&args);
    assert_one_error(
        &o,
        1,
        &[
            "sparse_structure_flow_model",
            "more weights than the checkpoint holds",
        ],
    );
    #[cfg(unix)]
    {
        let peak = children_peak_rss();
        assert!(peak < 1 << 30, "a child peaked at {} MiB", peak >> 20);
    }
}

/// Case 3 (options): step counts and sizes are bounded usage errors.
#[test]
fn case_3_huge_steps_and_sizes_are_usage_errors() {
    let img = image();
    for steps in [
        "99999999999",
        "10000000000",
        "ss=1000000000000,shape=1,tex=1",
        "1001",
    ] {
        let o = trellis2(&["generate", s(&img), "--steps", steps]);
        assert_eq!(o.status.code(), Some(2), "{steps}: {}", text(&o));
        assert!(stderr(&o).contains("≤ 1000"), "{}", text(&o));
    }
    let o = trellis2(&["matte", s(&img), "-o", "x.png", "--size", "1048576"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(stderr(&o).contains("at most 4096"), "{}", text(&o));
}

/// Case 5: SIGINT removes this process's temporary files and exits 130 saying where the batch
/// stopped; `--skip-existing` clears temporary files of dead processes.
#[cfg(unix)]
#[test]
fn case_5_interrupts_leave_no_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    let pictures = dir.path().join("in");
    std::fs::create_dir_all(&pictures).unwrap();
    for i in 0..3 {
        std::fs::copy(image(), pictures.join(format!("p{i}.webp"))).unwrap();
    }
    let model = golden_model();
    // Interrupts at several moments: loading, sampling, writing. A run that finished first
    // exits 0; every interrupted one exits 130 with the line and no temporary file.
    let mut interrupted = 0;
    for (run, delay_ms) in [300u64, 1200, 2500, 4000, 6000].into_iter().enumerate() {
        let out = dir.path().join(format!("out{run}"));
        let args = [
            "generate",
            "--model",
            s(&model),
            "-o",
            s(&out),
            "--pipeline",
            "512",
            "--steps",
            "1",
            "--faces",
            "0",
            s(&pictures),
        ];
        let child = command(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        // SAFETY: sends SIGINT to the child we spawned (not yet waited for, so its pid is ours).
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        let o = child.wait_with_output().unwrap();
        assert!(temporaries(&out).is_empty(), "{:?}", temporaries(&out));
        match o.status.code() {
            Some(130) => {
                interrupted += 1;
                let err = stderr(&o);
                assert!(
                    err.contains("interrupted: generate stopped"),
                    "{}",
                    text(&o)
                );
            }
            // Finished before the signal, or killed by it before the handler was installed
            // (nothing written yet).
            Some(0) | None => {}
            other => panic!("exit {other:?}: {}", text(&o)),
        }
    }
    assert!(interrupted > 0, "no run was interrupted");

    // A dead process's leftover (pid above any pid_max) goes with --skip-existing; a live
    // process's (ours: the test's pid) stays.
    let out = dir.path().join("resume");
    std::fs::create_dir_all(&out).unwrap();
    let stale = out.join(".p0.splat.ply.2147483000.tmp");
    let live = out.join(format!(".p0.glb.{}.tmp", std::process::id()));
    std::fs::write(&stale, b"half").unwrap();
    std::fs::write(&live, b"half").unwrap();
    let mut args = generate_args(s(&model), s(&out));
    let img = pictures.join("p0.webp");
    args.extend([s(&img), "--skip-existing"]);
    let o = trellis2(&args);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!stale.exists() && live.exists(), "{}", text(&o));
    assert!(stderr(&o).contains("removed"), "{}", text(&o));
}

/// Case 6: unwritable destinations are found before any work.
#[test]
fn case_6_unwritable_destinations_fail_before_the_work() {
    let dir = tempfile::tempdir().unwrap();
    let img = image();
    let model = golden_model();
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let under_file = file.join("out");
    let start = Instant::now();
    let o = trellis2(
        &generate_args(s(&model), s(&under_file))
            .into_iter()
            .chain([s(&img)])
            .collect::<Vec<_>>(),
    );
    assert_one_error(&o, 2, &["file/out", "output folder"]);
    let out = dir.path().join("out");
    let mut args = generate_args(s(&model), s(&out));
    args.extend([s(&img), "--report", "/nonexistent/r.json"]);
    let o = trellis2(&args);
    assert_one_error(&o, 2, &["/nonexistent/r.json", "does not exist"]);
    assert!(
        temporaries(&out).is_empty() && std::fs::read_dir(&out).map_or(0, |d| d.count()) == 0,
        "nothing generated"
    );
    // Refused before the model loads: far quicker than one generation.
    assert!(start.elapsed() < Duration::from_secs(20));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let ro = dir.path().join("read-only");
        std::fs::create_dir_all(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        // Root writes anywhere; the check is only meaningful for other users.
        if std::fs::File::create(ro.join("probe")).is_err() {
            let o = trellis2(
                &generate_args(s(&model), s(&ro))
                    .into_iter()
                    .chain([s(&img)])
                    .collect::<Vec<_>>(),
            );
            assert_one_error(&o, 2, &["not writable"]);
        }
    }
}

/// Cases 7 and 8: special files are refused by type before reading, given directly or found
/// in a folder, and every unusable entry is a listed failure (exit 1) while the rest runs.
#[cfg(unix)]
#[test]
fn cases_7_8_special_files_are_refused_and_listed() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let model = golden_model();
    let zero = dir.path().join("z.png");
    symlink("/dev/zero", &zero).unwrap();
    let fifo = dir.path().join("f.png");
    let made = Command::new("mkfifo").arg(&fifo).status();
    let out = dir.path().join("out");
    let mut args = generate_args(s(&model), s(&out));
    args.push(s(&zero));
    let o = trellis2(&args);
    assert_one_error(&o, 1, &["z.png", "device"]);
    if made.is_ok_and(|st| st.success()) {
        let mut child = command(
            &generate_args(s(&model), s(&out))
                .into_iter()
                .chain([s(&fifo)])
                .collect::<Vec<_>>(),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!("a FIFO input blocked generate");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let o = child.wait_with_output().unwrap();
        assert_one_error(&o, 1, &["f.png", "FIFO"]);
    }

    let folder = dir.path().join("in");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::copy(image(), folder.join("good.webp")).unwrap();
    symlink(folder.join("missing.png"), folder.join("dangling.png")).unwrap();
    symlink(folder.join("loop.png"), folder.join("loop.png")).unwrap();
    symlink("/dev/null", folder.join("device.png")).unwrap();
    let mut args = generate_args(s(&model), s(&out));
    args.push(s(&folder));
    let o = trellis2(&args);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = stderr(&o);
    for (name, why) in [
        ("dangling.png", "broken symbolic link"),
        ("loop.png", "loop"),
        ("device.png", "device"),
    ] {
        assert!(
            err.lines()
                .any(|l| l.starts_with("error:") && l.contains(name) && l.contains(why)),
            "{name}: {}",
            text(&o)
        );
    }
    assert!(out.join("good.splat.ply").is_file(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("1 generated, 0 skipped, 3 failed"),
        "{}",
        text(&o)
    );
}

/// Case 9: one rule, usage problems exit 2, everywhere.
#[test]
fn case_9_usage_errors_exit_2() {
    let img = image();
    let model = golden_model();
    let cases: &[&[&str]] = &[
        &["generate", s(&img), "--steps", "0"],
        &["generate", s(&img), "--cfg", "nan"],
        &["generate", s(&img), "--device", "tpu"],
        &["generate", s(&img), "--model", s(&model), "--dtype", "bf16"],
        &["matte", s(&img), "-o", "x.png", "--size", "100"],
        &["matte", s(&img), "-o", "x.jpg"],
        &["generate", s(&img), "--model", "/nonexistent/model"],
        &["generate", s(&img), "--model", s(&img)],
    ];
    for args in cases {
        let o = trellis2(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(stderr(&o).contains("error:"), "{args:?}: {}", text(&o));
    }
}

/// A PNG of `width` × `height` whose header says so but whose pixel data is one row: what
/// a decompression bomb or a huge valid picture looks like before decoding.
fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend((data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        png.extend(kind);
        png.extend(data);
        png.extend(crc.sum().to_be_bytes());
    };
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 6, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut z, &vec![0u8; 1 + width as usize * 4]).unwrap();
    chunk(b"IDAT", &z.finish().unwrap());
    chunk(b"IEND", &[]);
    png
}

/// Case 10: messages say what is wrong and lenient readers are strict.
#[test]
fn case_10_messages_and_leniency() {
    let dir = tempfile::tempdir().unwrap();
    let model = golden_model();
    let out = dir.path().join("out");

    // A batch failure names the input once, after `error:`.
    let bad = dir.path().join("corrupt.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really a png").unwrap();
    let mut args = generate_args(s(&model), s(&out));
    args.push(s(&bad));
    let o = trellis2(&args);
    assert_one_error(&o, 1, &["corrupt.png"]);
    let line = stderr(&o);
    assert_eq!(line.matches("corrupt.png").count(), 1, "{}", text(&o));

    // A huge picture is refused by its size, naming the limit, before decoding.
    let big = dir.path().join("big.png");
    std::fs::write(&big, png_header_only(16000, 16000)).unwrap();
    let o = trellis2(&["preprocess", s(&big), "-o", s(&dir.path().join("p.png"))]);
    assert_one_error(&o, 1, &["16000x16000", "limit is 67 megapixels"]);

    // Tiny opaque pictures are not described as "one pixel".
    for (w, h) in [(2u32, 1u32), (2, 2)] {
        let tiny = dir.path().join(format!("tiny{w}x{h}.png"));
        image::RgbaImage::from_pixel(w, h, image::Rgba([200, 10, 10, 255]))
            .save(&tiny)
            .unwrap();
        let mut args = generate_args(s(&model), s(&out));
        args.extend([s(&tiny), "--rembg", "none"]);
        let o = trellis2(&args);
        assert!(!stderr(&o).contains("only one pixel"), "{}", text(&o));
        assert!(matches!(o.status.code(), Some(0 | 1)), "{}", text(&o));
    }

    // `inspect` checks what `generate` reads: pipeline.json's values and the DINOv3 folder.
    let copy = model_copy(&dir.path().join("m1"));
    assert!(trellis2(&["inspect", s(&copy)]).status.success());
    set_json(
        &copy.join("pipeline.json"),
        "args.shape_slat_sampler.params.steps",
        0.into(),
    );
    let o = trellis2(&["inspect", s(&copy)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains("steps"), "{}", text(&o));
    let copy = model_copy(&dir.path().join("m2"));
    set_json(
        &copy.join("pipeline.json"),
        "args.default_pipeline_type",
        "2048".into(),
    );
    assert_eq!(
        trellis2(&["inspect", s(&copy)]).status.code(),
        Some(1),
        "bogus pipeline type"
    );
    let copy = model_copy(&dir.path().join("m3"));
    let dino = copy.join("models/image_cond_model/model.safetensors");
    let bytes = std::fs::read(&dino).unwrap();
    std::fs::write(&dino, &bytes[..bytes.len() / 2]).unwrap();
    let o = trellis2(&["inspect", s(&copy)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains("image_cond_model"), "{}", text(&o));

    // A weight stored as integers (same size as F32) is refused, as is an unknown class.
    let copy = model_copy(&dir.path().join("m4"));
    let ckpt = copy.join("models/sparse_structure_decoder.safetensors");
    let bytes = std::fs::read(&ckpt).unwrap();
    let at = bytes
        .windows(13)
        .position(|w| w == b"\"dtype\":\"F32\"")
        .unwrap();
    let mut changed = bytes.clone();
    changed[at..at + 13].copy_from_slice(b"\"dtype\":\"I32\"");
    std::fs::write(&ckpt, changed).unwrap();
    let mut args = generate_args(s(&copy), s(&out));
    let img = image();
    args.push(s(&img));
    assert_one_error(&trellis2(&args), 1, &["integers"]);
    let copy = model_copy(&dir.path().join("m5"));
    set_json(
        &copy.join("models/sparse_structure_flow_model.json"),
        "name",
        "NotAModel".into(),
    );
    let mut args = generate_args(s(&copy), s(&out));
    args.push(s(&img));
    assert_one_error(&trellis2(&args), 1, &["NotAModel"]);

    // `compare`: trailing garbage after a PLY's data is an error; float8 files compare.
    let ply = dir.path().join("a.ply");
    let mut data = b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\n\
end_header\n"
        .to_vec();
    data.extend(1.5f32.to_le_bytes());
    std::fs::write(&ply, &data).unwrap();
    assert!(trellis2(&["compare", s(&ply), s(&ply)]).status.success());
    let padded = dir.path().join("b.ply");
    data.extend([0xAB; 700]);
    std::fs::write(&padded, &data).unwrap();
    let o = trellis2(&["compare", s(&ply), s(&padded)]);
    assert_one_error(&o, 2, &["b.ply", "700 bytes of trailing data"]);
    let f8 = dir.path().join("f8.safetensors");
    let header = br#"{"w":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}}"#;
    let mut st = (header.len() as u64).to_le_bytes().to_vec();
    st.extend(header);
    st.extend([0x38, 0xb8, 0x7e, 0x01]);
    std::fs::write(&f8, st).unwrap();
    let o = trellis2(&["compare", s(&f8), s(&f8)]);
    assert!(o.status.success(), "{}", text(&o));

    // A GLB whose POSITION accessor is larger than its buffer says so.
    let glb = dir.path().join("big-accessor.glb");
    std::fs::write(&glb, glb_with_accessor_count(1_000_000_000)).unwrap();
    let o = trellis2(&["inspect", s(&glb)]);
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert!(!stderr(&o).contains("no POSITION"), "{}", text(&o));
    assert!(stderr(&o).contains("big-accessor.glb"), "{}", text(&o));

    // A GLB header declaring fewer bytes than the header itself, or cut short.
    let mut short = glb_with_accessor_count(3);
    short[8..12].copy_from_slice(&4u32.to_le_bytes());
    std::fs::write(&glb, &short).unwrap();
    let o = trellis2(&["inspect", s(&glb)]);
    assert_one_error(&o, 1, &["big-accessor.glb", "declares 4 bytes"]);
    std::fs::write(&glb, &short[..10]).unwrap();
    let o = trellis2(&["inspect", s(&glb)]);
    assert_one_error(&o, 1, &["big-accessor.glb", "cut short"]);
}

/// A one-triangle GLB whose POSITION accessor claims `count` vertices.
fn glb_with_accessor_count(count: u64) -> Vec<u8> {
    let bin: Vec<u8> = [0f32, 0., 0., 1., 0., 0., 0., 1., 0.]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let json = serde_json::json!({
        "asset": {"version": "2.0"},
        "buffers": [{"byteLength": bin.len()}],
        "bufferViews": [{"buffer": 0, "byteLength": bin.len()}],
        "accessors": [{"bufferView": 0, "componentType": 5126, "count": count, "type": "VEC3",
                       "min": [0, 0, 0], "max": [1, 1, 0]}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}}]}],
        "nodes": [{"mesh": 0}],
        "scenes": [{"nodes": [0]}],
        "scene": 0
    });
    common::glb_bytes(&json, bin)
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    // `trellis2 inspect … | head` closes the pipe early: the process must end as other Unix
    // tools do (SIGPIPE), not print a panic about a failed write to stdout.
    let mut child = command(&["inspect", s(&golden_model())])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary runs");
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(o.status.code(), Some(101), "{err}");
}
