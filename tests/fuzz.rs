//! Fuzzing of the parsers that face users (issue #21): image decode + preprocess, the PLY and GLB
//! readers of `inspect`/`compare`, `texture`'s OBJ mesh reader, safetensors headers and tensors, `pipeline.json`, model
//! configs. `cargo fuzz` needs a nightly toolchain, so this is a seeded mutation loop in a plain
//! test: each target's corpus (`tests/fuzz_corpus/<target>/`, kept in the repository) is mutated
//! (bit flips, interesting integers, splices, truncations; numbers swapped in JSON) and fed to
//! the parser. A parser may refuse an input (an error) but must not panic, abort or allocate
//! more than its bound; the allocator below counts every byte to check the last.
//!
//! `FUZZ_SECONDS` (per target, default 2), `FUZZ_SEED` (default 21) and `FUZZ_TARGET` (one
//! target) steer it; a failure prints the target, seed, iteration and a file holding the input.
//! Before each execution the input is also written to `target/fuzz-last-<target>.bin`, so an
//! abort (which no test can catch) leaves its input behind. `FUZZ_WRITE_SEEDS=1` rewrites the
//! corpus from the built-in seeds.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Cursor;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use trellis2::compare::{tensor_values, TensorFile};
use trellis2::export::glb::read_glb_bytes;
use trellis2::export::mesh_input::read_input_mesh;
use trellis2::export::ply::read_ply_from;
use trellis2::image::{background_removal_input, decode_image_bytes, preprocess_detailed};
use trellis2::models::registry::build_model;
use trellis2::pipeline::PipelineSettings;
use trellis2::weights::{Checkpoint, ShapeRecorder};

/// The system allocator, counting live bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let grow = new_size - layout.size();
                let live = LIVE.fetch_add(grow, Ordering::Relaxed) + grow;
                PEAK.fetch_max(live, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: [u64; 12] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    u64::MAX,
];

const JSON_NUMBERS: [&str; 12] = [
    "0",
    "-1",
    "1e30",
    "-1e30",
    "4294967296",
    "1099511627776",
    "1000000000000",
    "18446744073709551615",
    "0.0",
    "NaN",
    "1e-300",
    "65536",
];

/// One mutation of `data`; `others` are the target's other corpus entries (for splicing).
fn mutate(data: &mut Vec<u8>, others: &[Vec<u8>], rng: &mut Rng, json: bool) {
    let len = data.len();
    match rng.below(if json { 10 } else { 8 }) {
        0 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = INTERESTING[rng.below(5)] as u8;
        }
        2 if len >= 8 => {
            // An interesting 4- or 8-byte integer, little or big endian (sizes, counts).
            let v = INTERESTING[rng.below(INTERESTING.len())];
            let bytes: Vec<u8> = match rng.below(4) {
                0 => (v as u32).to_le_bytes().to_vec(),
                1 => (v as u32).to_be_bytes().to_vec(),
                2 => v.to_le_bytes().to_vec(),
                _ => v.to_be_bytes().to_vec(),
            };
            let i = rng.below(len - bytes.len() + 1);
            data[i..i + bytes.len()].copy_from_slice(&bytes);
        }
        3 if len > 1 => {
            let at = rng.below(len);
            let n = rng.below((len - at).min(64)) + 1;
            data.drain(at..at + n);
        }
        4 => {
            let at = rng.below(len + 1);
            let n = rng.below(16) + 1;
            let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            data.splice(at..at, bytes);
        }
        5 if len > 0 => {
            // Duplicate a range (repeated chunks, rows, records).
            let at = rng.below(len);
            let n = rng.below((len - at).min(256)) + 1;
            let chunk = data[at..at + n].to_vec();
            let to = rng.below(len + 1);
            data.splice(to..to, chunk);
        }
        6 if !others.is_empty() => {
            let other = &others[rng.below(others.len())];
            if !other.is_empty() {
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
        }
        7 if len > 0 => data.truncate(rng.below(len)),
        8 | 9 => {
            // Replace one number of a JSON text by an interesting one.
            let starts: Vec<usize> = (0..len)
                .filter(|&i| {
                    data[i].is_ascii_digit() && (i == 0 || !data[i - 1].is_ascii_alphanumeric())
                })
                .collect();
            if !starts.is_empty() {
                let at = starts[rng.below(starts.len())];
                let end = (at..len)
                    .find(|&i| !(data[i].is_ascii_digit() || b".eE+-".contains(&data[i])))
                    .unwrap_or(len);
                let with = JSON_NUMBERS[rng.below(JSON_NUMBERS.len())];
                data.splice(at..end, with.bytes());
            }
        }
        _ => {}
    }
}

struct Target {
    name: &'static str,
    json: bool,
    /// Most bytes live at once while one input runs, beyond what was live before.
    alloc_limit: usize,
    run: fn(&[u8], &Path),
}

/// Images: decode, then what `generate` does next (crop or background-removal input).
fn image_target(bytes: &[u8], _scratch: &Path) {
    if let Ok(img) = decode_image_bytes(bytes, Path::new("fuzz.png")) {
        let _ = preprocess_detailed(&img);
        let _ = background_removal_input(&img);
    }
}

fn ply_target(bytes: &[u8], _scratch: &Path) {
    let _ = read_ply_from(&mut Cursor::new(bytes), Path::new("fuzz.ply"));
}

/// `texture`'s mesh reader on an OBJ file, then its mesh check.
fn mesh_obj_target(bytes: &[u8], scratch: &Path) {
    let path = scratch.join("fuzz.obj");
    std::fs::write(&path, bytes).unwrap();
    if let Ok(mesh) = read_input_mesh(&path) {
        let _ = mesh.check();
    }
}

fn glb_target(bytes: &[u8], _scratch: &Path) {
    let _ = read_glb_bytes(bytes, Path::new("fuzz.glb"));
}

/// Safetensors: the checkpoint reader (header, every tensor loaded as f32) and `compare`'s.
fn safetensors_target(bytes: &[u8], scratch: &Path) {
    use std::io::{Seek, Write};
    let path = scratch.join("fuzz.safetensors");
    // Rewritten in place: creating a file per execution costs more than parsing it.
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap();
    file.seek(std::io::SeekFrom::Start(0)).unwrap();
    file.write_all(bytes).unwrap();
    file.set_len(bytes.len() as u64).unwrap();
    drop(file);
    if let Ok(ckpt) = Checkpoint::open_file(&path) {
        for t in ckpt.tensor_infos() {
            let _ = ckpt.load(&t.name, DType::F32, &Device::Cpu);
        }
    }
    if let Ok(file) = TensorFile::open(&path) {
        if let Ok(st) = file.parse() {
            for (_, view) in st.tensors() {
                let _ = tensor_values(&view);
            }
        }
    }
}

fn pipeline_json_target(bytes: &[u8], _scratch: &Path) {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) {
        let args = v.get("args").unwrap_or(&v);
        let _ = PipelineSettings::from_pipeline_args(args);
    }
}

/// Model configs (`{name, args}`): sizes checked, the model built shape-only within the budget
/// of the golden checkpoints (what a config may ask of a checkpoint that size).
fn model_config_target(bytes: &[u8], _scratch: &Path) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return;
    };
    let (Some(name), Some(args)) = (v.get("name").and_then(|n| n.as_str()), v.get("args")) else {
        return;
    };
    let rec = ShapeRecorder::with_budget(4 << 20);
    let _ = build_model(name, args, rec.var_builder(DType::F32, &Device::Cpu));
}

const TARGETS: [Target; 7] = [
    Target {
        name: "image",
        json: false,
        // A 64-megapixel picture decodes in at most ~0.8 GB (docs/USAGE.md).
        alloc_limit: 1200 << 20,
        run: image_target,
    },
    Target {
        name: "ply",
        json: false,
        alloc_limit: 64 << 20,
        run: ply_target,
    },
    Target {
        name: "glb",
        json: false,
        alloc_limit: 64 << 20,
        run: glb_target,
    },
    Target {
        name: "mesh_obj",
        json: false,
        alloc_limit: 64 << 20,
        run: mesh_obj_target,
    },
    Target {
        name: "safetensors",
        json: false,
        alloc_limit: 64 << 20,
        run: safetensors_target,
    },
    Target {
        name: "pipeline_json",
        json: true,
        alloc_limit: 64 << 20,
        run: pipeline_json_target,
    },
    Target {
        name: "model_config",
        json: true,
        // 4 Mi values of f32 stand-ins and their re-laid-out copies.
        alloc_limit: 256 << 20,
        run: model_config_target,
    },
];

fn corpus_dir(target: &str) -> PathBuf {
    common::fixture("../fuzz_corpus").join(target)
}

fn read_corpus(target: &str) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir(target))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn fuzz_user_facing_parsers() {
    if std::env::var_os("FUZZ_WRITE_SEEDS").is_some() {
        write_seeds();
    }
    let seconds: f64 = env_or("FUZZ_SECONDS", 2.0);
    let seed: u64 = env_or("FUZZ_SEED", 21);
    let only = std::env::var("FUZZ_TARGET").ok();
    let scratch = tempfile::tempdir().unwrap();
    let last_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    // Panics are findings, reported below; the default hook would print each one.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut failures = Vec::new();
    for target in TARGETS
        .iter()
        .filter(|t| only.as_deref().is_none_or(|o| o == t.name))
    {
        let corpus = read_corpus(target.name);
        assert!(
            !corpus.is_empty(),
            "no corpus in {:?}",
            corpus_dir(target.name)
        );
        let mut rng = Rng(seed ^ (target.name.len() as u64) << 32 | 1);
        let last = last_dir.join(format!("fuzz-last-{}.bin", target.name));
        // One open file rewritten in place: opening a file per execution would cost more than
        // most executions.
        let mut last_file = std::fs::File::create(&last).unwrap();
        let start = Instant::now();
        let mut execs = 0u64;
        while start.elapsed() < Duration::from_secs_f64(seconds) || execs < corpus.len() as u64 {
            let mut input = corpus[execs as usize % corpus.len()].clone();
            // The corpus itself first, then 1..=4 stacked mutations per input.
            if execs >= corpus.len() as u64 {
                for _ in 0..=rng.below(4) {
                    mutate(&mut input, &corpus, &mut rng, target.json);
                }
            }
            {
                use std::io::{Seek, Write};
                last_file.seek(std::io::SeekFrom::Start(0)).unwrap();
                last_file.write_all(&input).unwrap();
                last_file.set_len(input.len() as u64).unwrap();
            }
            let before = LIVE.load(Ordering::Relaxed);
            PEAK.store(before, Ordering::Relaxed);
            let outcome =
                std::panic::catch_unwind(AssertUnwindSafe(|| (target.run)(&input, scratch.path())));
            let grew = PEAK.load(Ordering::Relaxed).saturating_sub(before);
            let problem = match outcome {
                Err(p) => Some(format!(
                    "panicked: {}",
                    p.downcast_ref::<String>()
                        .map(String::as_str)
                        .or(p.downcast_ref::<&str>().copied())
                        .unwrap_or("?")
                )),
                Ok(()) if grew > target.alloc_limit + 16 * input.len() => Some(format!(
                    "allocated {} MiB for a {}-byte input",
                    grew >> 20,
                    input.len()
                )),
                Ok(()) => None,
            };
            if let Some(problem) = problem {
                let saved = last_dir.join(format!(
                    "fuzz-failure-{}-seed{seed}-exec{execs}.bin",
                    target.name
                ));
                std::fs::write(&saved, &input).unwrap();
                failures.push(format!(
                    "{}: {problem} (FUZZ_SEED={seed}, execution {execs}; input {} bytes in {})",
                    target.name,
                    input.len(),
                    saved.display()
                ));
                if failures.len() > 20 {
                    break;
                }
            }
            execs += 1;
        }
        println!(
            "fuzz {:<14} {execs:>8} executions in {:.1} s ({} corpus files, seed {seed})",
            target.name,
            start.elapsed().as_secs_f64(),
            corpus.len()
        );
    }
    std::panic::set_hook(hook);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The built-in seeds of every target, written into `tests/fuzz_corpus` (kept in the
/// repository; rerun after a format change).
fn write_seeds() {
    let mut seeds: Vec<(&str, &str, Vec<u8>)> = Vec::new();
    // Images: RGBA with a gradient alpha, RGB, 16-bit grey, palette, JPEG, WebP.
    let rgba = image::RgbaImage::from_fn(12, 9, |x, y| {
        image::Rgba([
            x as u8 * 20,
            y as u8 * 25,
            90,
            if x > 2 && y > 2 { 255 } else { 0 },
        ])
    });
    let encode = |img: image::DynamicImage, format: image::ImageFormat| {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    };
    let dynamic = image::DynamicImage::ImageRgba8(rgba);
    seeds.push((
        "image",
        "rgba.png",
        encode(dynamic.clone(), image::ImageFormat::Png),
    ));
    seeds.push((
        "image",
        "rgb.png",
        encode(dynamic.to_rgb8().into(), image::ImageFormat::Png),
    ));
    seeds.push((
        "image",
        "grey16.png",
        encode(dynamic.to_luma16().into(), image::ImageFormat::Png),
    ));
    seeds.push((
        "image",
        "rgb.jpg",
        encode(dynamic.to_rgb8().into(), image::ImageFormat::Jpeg),
    ));
    seeds.push((
        "image",
        "rgba.webp",
        encode(dynamic.clone(), image::ImageFormat::WebP),
    ));
    // PLY: ASCII mesh, binary splat-like vertices, binary mesh with a face list.
    seeds.push((
        "ply",
        "mesh_ascii.ply",
        b"ply\nformat ascii 1.0\ncomment fuzz seed\nelement vertex 3\nproperty float x\n\
property float y\nproperty float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\n\
element face 1\nproperty list uchar int vertex_indices\nend_header\n0 0 0 255 0 0\n1 0 0 0 255 0\n\
0 1 0 0 0 255\n3 0 1 2\n"
            .to_vec(),
    ));
    let mut splat = b"ply\nformat binary_little_endian 1.0\nelement vertex 2\nproperty float x\n\
property float y\nproperty float z\nproperty float f_dc_0\nproperty float opacity\n\
property float scale_0\nproperty float rot_0\nend_header\n"
        .to_vec();
    for v in [
        0.0f32, 1., 2., 0.5, -1., -4., 1., 3., 2., 1., 0.1, 2., -5., 1.,
    ] {
        splat.extend(v.to_le_bytes());
    }
    seeds.push(("ply", "splat_binary.ply", splat));
    let mut mesh = b"ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float x\n\
property float y\nproperty float z\nelement face 1\nproperty list uchar uint vertex_indices\n\
end_header\n"
        .to_vec();
    for v in [0.0f32, 0., 0., 1., 0., 0., 0., 1., 0.] {
        mesh.extend(v.to_le_bytes());
    }
    mesh.push(3);
    for i in [0u32, 1, 2] {
        mesh.extend(i.to_le_bytes());
    }
    seeds.push(("ply", "mesh_binary.ply", mesh));
    // GLB: one triangle, without and with an index buffer and colours.
    seeds.push(("glb", "triangle.glb", glb(false)));
    seeds.push(("glb", "indexed_coloured.glb", glb(true)));
    // Safetensors: several dtypes, metadata, an empty tensor.
    let f32s: Vec<u8> = [1.0f32, -2.0, 3.5, 0.25]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let f16s: Vec<u8> = [1.0f32, 2.0]
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect();
    let i64s: Vec<u8> = [7i64, -1].iter().flat_map(|v| v.to_le_bytes()).collect();
    let views = vec![
        (
            "a.weight",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 2], &f32s)
                .unwrap(),
        ),
        (
            "b.bias",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F16, vec![2], &f16s).unwrap(),
        ),
        (
            "c.index",
            safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![2], &i64s).unwrap(),
        ),
        (
            "d.empty",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![0, 3], &[]).unwrap(),
        ),
    ];
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    seeds.push((
        "safetensors",
        "mixed.safetensors",
        safetensors::serialize(views, Some(meta)).unwrap(),
    ));
    let f8 = b"{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[4],\"data_offsets\":[0,4]}}";
    let mut st = (f8.len() as u64).to_le_bytes().to_vec();
    st.extend(f8);
    st.extend([0x38, 0xb8, 0x7e, 0x01]);
    seeds.push(("safetensors", "float8.safetensors", st));
    // pipeline.json and the model configs of the golden models.
    let golden = common::fixture("golden");
    seeds.push((
        "pipeline_json",
        "pipeline.json",
        std::fs::read(golden.join("pipeline.json")).unwrap(),
    ));
    for entry in std::fs::read_dir(golden.join("models")).unwrap().flatten() {
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "json") {
            let name: &'static str = Box::leak(
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
                    .into_boxed_str(),
            );
            seeds.push(("model_config", name, std::fs::read(&p).unwrap()));
        }
    }
    let dino: serde_json::Value = serde_json::from_slice(
        &std::fs::read(golden.join("models/image_cond_model/config.json")).unwrap(),
    )
    .unwrap();
    let wrapped = serde_json::json!({"name": "DINOv3ViTModel", "args": dino});
    seeds.push((
        "model_config",
        "image_cond_model.json",
        serde_json::to_vec_pretty(&wrapped).unwrap(),
    ));
    seeds.push((
        "mesh_obj",
        "quad.obj",
        b"# quad\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\n\
vn 0 0 1\nf 1/1/1 2/2/1 3/3/1 4/4/1\n"
            .to_vec(),
    ));
    seeds.push((
        "mesh_obj",
        "two_objects.obj",
        b"o a\nv 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\no b\nv 0 0 1\nv 1 0 1\nv 0 1 1\n\
f -3 -2 -1\n"
            .to_vec(),
    ));
    for (target, name, bytes) in seeds {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// A one-triangle GLB; `indexed` adds an index buffer and vertex colours.
fn glb(indexed: bool) -> Vec<u8> {
    let mut bin: Vec<u8> = [0f32, 0., 0., 1., 0., 0., 0., 1., 0.]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let mut views = vec![serde_json::json!({"buffer": 0, "byteOffset": 0, "byteLength": 36})];
    let mut accessors = vec![serde_json::json!({"bufferView": 0, "componentType": 5126,
        "count": 3, "type": "VEC3", "min": [0, 0, 0], "max": [1, 1, 0]})];
    let mut primitive = serde_json::json!({"attributes": {"POSITION": 0}});
    if indexed {
        for c in [1f32, 0., 0., 1., 0., 1., 0., 1., 0., 0., 1., 1.] {
            bin.extend(c.to_le_bytes());
        }
        for i in [0u16, 1, 2, 0] {
            bin.extend(i.to_le_bytes());
        }
        views.push(serde_json::json!({"buffer": 0, "byteOffset": 36, "byteLength": 48}));
        views.push(serde_json::json!({"buffer": 0, "byteOffset": 84, "byteLength": 6}));
        accessors.push(
            serde_json::json!({"bufferView": 1, "componentType": 5126, "count": 3,
            "type": "VEC4"}),
        );
        accessors.push(
            serde_json::json!({"bufferView": 2, "componentType": 5123, "count": 3,
            "type": "SCALAR"}),
        );
        primitive = serde_json::json!({"attributes": {"POSITION": 0, "COLOR_0": 1},
            "indices": 2});
    }
    let json = serde_json::json!({
        "asset": {"version": "2.0"},
        "buffers": [{"byteLength": bin.len()}],
        "bufferViews": views,
        "accessors": accessors,
        "meshes": [{"primitives": [primitive]}],
        "nodes": [{"mesh": 0}],
        "scenes": [{"nodes": [0]}],
        "scene": 0
    });
    common::glb_bytes(&json, bin)
}
