//! The real binary on real files: exit codes, one-line errors, outputs that parse.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::write_ascii_ply;

fn trellis2(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trellis2"))
        .args(args)
        .output()
        .expect("binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// Writes an f32 safetensors file with the given tensors.
fn write_tensors(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<_> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| {
            (
                n.to_string(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// A minimal valid GLB: one triangle primitive with u32 indices.
fn write_glb(path: &Path, positions: &[[f32; 3]], faces: &[[u32; 3]]) {
    let mut bin: Vec<u8> = positions
        .iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let pos_len = bin.len();
    bin.extend(faces.iter().flatten().flat_map(|i| i.to_le_bytes()));
    let idx_len = bin.len() - pos_len;
    let (mut lo, mut hi) = ([f32::MAX; 3], [f32::MIN; 3]);
    for v in positions {
        for a in 0..3 {
            lo[a] = lo[a].min(v[a]);
            hi[a] = hi[a].max(v[a]);
        }
    }
    let json = serde_json::json!({
        "asset": {"version": "2.0", "generator": "trellis2 tests"},
        "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1}]}],
        "buffers": [{"byteLength": bin.len()}],
        "bufferViews": [
            {"buffer": 0, "byteOffset": 0, "byteLength": pos_len, "target": 34962},
            {"buffer": 0, "byteOffset": pos_len, "byteLength": idx_len, "target": 34963}],
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": positions.len(), "type": "VEC3",
             "min": lo, "max": hi},
            {"bufferView": 1, "componentType": 5125, "count": faces.len() * 3, "type": "SCALAR"}]
    });
    let mut json = serde_json::to_vec(&json).unwrap();
    while !json.len().is_multiple_of(4) {
        json.push(b' ');
    }
    while !bin.len().is_multiple_of(4) {
        bin.push(0);
    }
    let total = 12 + 8 + json.len() + 8 + bin.len();
    let mut out = Vec::new();
    out.extend(b"glTF");
    out.extend(2u32.to_le_bytes());
    out.extend((total as u32).to_le_bytes());
    out.extend((json.len() as u32).to_le_bytes());
    out.extend(b"JSON");
    out.extend(&json);
    out.extend((bin.len() as u32).to_le_bytes());
    out.extend(b"BIN\0");
    out.extend(&bin);
    std::fs::write(path, out).unwrap();
}

const TETRA: [[f32; 3]; 4] = [
    [0.0, 0.0, 0.0],
    [1.0, 0.0, 0.0],
    [0.0, 1.0, 0.0],
    [0.0, 0.0, 1.0],
];
const TETRA_FACES: [[u32; 3]; 4] = [[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]];

#[test]
fn help_names_every_command() {
    let o = trellis2(&["--help"]);
    assert!(o.status.success());
    for cmd in ["preprocess", "inspect", "compare", "dev"] {
        assert!(stdout(&o).contains(cmd), "{cmd} missing from --help");
    }
    let o = trellis2(&["no-such-command"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn dev_randn_reproduces_torch_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("noise.safetensors");
    let o = trellis2(&[
        "dev",
        "randn",
        "--seed",
        "1234",
        "--shape",
        "1,8,16,16,16",
        "--shape",
        "500,32",
        "--shape",
        "1201,32",
        "--shape",
        "1201,32",
        "-o",
        p(&out),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = common::read_f32_tensors(&out);
    let want = common::read_f32_tensors(&common::fixture("rng/torch_randn.safetensors"));
    for (i, part) in ["a", "b", "c", "d"].iter().enumerate() {
        let (gs, gv) = &got[&format!("draw{i}")];
        let (ws, wv) = &want[&format!("seed1234.sequence.{part}")];
        assert_eq!(gs, ws);
        let diff = common::max_abs_diff(gv, wv);
        println!("draw{i} vs sequence.{part}: max|diff| = {diff:e}");
        assert!(diff <= 1e-6);
    }
    let o = trellis2(&[
        "dev",
        "randn",
        "--seed",
        "1",
        "--shape",
        "2,x",
        "-o",
        p(&out),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not a shape"), "{}", stderr(&o));
}

/// The three documented forms of `dev metal-plan`: JSON lines, one dispatch each, then the
/// summary; the baseline targets (≤ 4 dispatches per op call, ≥ 1,000 threadgroups in our
/// large dispatches, no host sync in a forward).
#[test]
fn dev_metal_plan_prints_parsable_json_lines() {
    let forms: [&[&str]; 3] = [
        &[
            "attention",
            "--q",
            "15272",
            "--kv",
            "15272",
            "--heads",
            "12",
            "--head-dim",
            "128",
            "--dtype",
            "bf16",
        ],
        &[
            "sparse-conv",
            "--voxels",
            "1200000",
            "--ci",
            "128",
            "--co",
            "128",
            "--dtype",
            "f16",
        ],
        &["flow-forward", "--tokens", "15272", "--cond", "4101"],
    ];
    for form in forms {
        let mut args = vec!["dev", "metal-plan"];
        args.extend_from_slice(form);
        let o = trellis2(&args);
        assert!(o.status.success(), "{form:?}: {}", stderr(&o));
        let lines: Vec<serde_json::Value> = stdout(&o)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect();
        let (summary, dispatches) = lines.split_last().expect("a summary line");
        assert_eq!(summary["summary"], true, "{form:?}");
        assert_eq!(
            summary["dispatches"].as_u64(),
            Some(dispatches.len() as u64)
        );
        assert_eq!(summary["host_syncs"].as_u64(), Some(0));
        let buffers = summary["command_buffers"].as_u64().unwrap();
        assert!(buffers >= 1);
        let groups = |d: &serde_json::Value| -> u64 {
            d["threadgroups"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .product()
        };
        // Per op call: dispatches and threadgroups.
        let mut per_op = std::collections::HashMap::new();
        for d in dispatches {
            for key in ["threadgroups", "threads"] {
                assert_eq!(d[key].as_array().map(Vec::len), Some(3), "{d}");
            }
            assert!(
                d["threadgroup_memory"].is_u64() && d["kernel"].is_string(),
                "{d}"
            );
            assert!(d["command_buffer"].as_u64().unwrap() < buffers, "{d}");
            let e = per_op
                .entry(d["op"].as_str().unwrap().to_string())
                .or_insert((0, 0));
            *e = (e.0 + 1, e.1 + groups(d));
        }
        assert!(
            per_op.values().all(|&(n, _)| n <= 4),
            "{form:?}: {per_op:?}"
        );
        for d in dispatches {
            if !d["kernel"].as_str().unwrap().starts_with("candle:") {
                let total = per_op[d["op"].as_str().unwrap()].1;
                assert!(groups(d) >= total.min(1000), "{d}");
            }
        }
    }
    // --blocks limits the forward; a head dim the kernel lacks is a usage error.
    let o = trellis2(&[
        "dev",
        "metal-plan",
        "flow-forward",
        "--tokens",
        "1029",
        "--cond",
        "0",
        "--blocks",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("blocks.1.mlp.gate") && !stdout(&o).contains("blocks.2."));
    let o = trellis2(&[
        "dev",
        "metal-plan",
        "attention",
        "--q",
        "5",
        "--kv",
        "5",
        "--heads",
        "1",
        "--head-dim",
        "96",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("for '--head-dim <HEAD_DIM>'") && stderr(&o).contains("64 or 128"));
}

#[test]
fn compare_safetensors_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.safetensors");
    let b = dir.path().join("b.safetensors");
    let c = dir.path().join("c.safetensors");
    let d = dir.path().join("d.safetensors");
    let vals: Vec<f32> = (0..100).map(|i| i as f32 / 10.0).collect();
    let mut near = vals.clone();
    near[37] += 1e-3;
    write_tensors(
        &a,
        &[
            ("x", vec![10, 10], vals.clone()),
            ("y", vec![2], vec![1.0, 2.0]),
        ],
    );
    write_tensors(
        &b,
        &[("x", vec![10, 10], near), ("y", vec![2], vec![1.0, 2.0])],
    );
    write_tensors(&c, &[("x", vec![100], vals)]);
    std::fs::write(&d, b"garbage").unwrap();

    let same = trellis2(&["compare", p(&a), p(&a)]);
    assert_eq!(same.status.code(), Some(0), "{}", stdout(&same));
    assert!(stdout(&same).contains("PASS"));

    let differ = trellis2(&["compare", p(&b), p(&a)]);
    assert_eq!(differ.status.code(), Some(1));
    let text = stdout(&differ);
    assert!(text.contains("FAIL") && text.contains("37: "), "{text}");

    let loose = trellis2(&["compare", p(&b), p(&a), "--atol", "2e-3"]);
    assert_eq!(loose.status.code(), Some(0), "{}", stdout(&loose));

    let structure = trellis2(&["compare", p(&c), p(&a)]);
    assert_eq!(structure.status.code(), Some(1));
    assert!(stdout(&structure).contains("shape [100] vs [10, 10]"));
    assert!(stdout(&structure).contains("`y` missing in A"));

    for bad in [d.clone(), dir.path().join("absent.safetensors")] {
        let o = trellis2(&["compare", p(&a), p(&bad)]);
        assert_eq!(o.status.code(), Some(2));
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(p(&bad)), "{err}");
    }
}

#[test]
fn compare_ply_property_by_property_and_meshes_across_formats() {
    let dir = tempfile::tempdir().unwrap();
    let ply = dir.path().join("m.ply");
    let moved = dir.path().join("moved.ply");
    let glb = dir.path().join("m.glb");
    write_ascii_ply(&ply, &TETRA, &TETRA_FACES);
    let mut shifted = TETRA;
    shifted[3][2] = 1.5;
    write_ascii_ply(&moved, &shifted, &TETRA_FACES);
    write_glb(&glb, &TETRA, &TETRA_FACES);

    let o = trellis2(&["compare", p(&ply), p(&ply)]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let o = trellis2(&["compare", p(&moved), p(&ply)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("vertex.z"), "{}", stdout(&o));

    let o = trellis2(&["compare", p(&glb), p(&ply)]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let o = trellis2(&["compare", p(&glb), p(&moved)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("positions"));
}

#[test]
fn inspect_describes_files_and_model_directories() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("model");
    std::fs::create_dir_all(root.join("ckpts")).unwrap();
    write_tensors(
        &root.join("ckpts/dec.safetensors"),
        &[
            ("conv.weight", vec![4, 2, 3], vec![0.5; 24]),
            ("conv.bias", vec![4], vec![0.0; 4]),
        ],
    );
    std::fs::write(
        root.join("ckpts/dec.json"),
        r#"{"name": "Decoder", "args": {"c": 4}}"#,
    )
    .unwrap();
    std::fs::write(
        root.join("pipeline.json"),
        r#"{"name": "Trellis2ImageTo3DPipeline", "args": {"models": {"decoder": "ckpts/dec"}}}"#,
    )
    .unwrap();
    let o = trellis2(&["inspect", p(&root)]);
    // Listed, but `inspect` checks what `generate` would load: an unknown class and a missing
    // DINOv3 are errors (exit 1).
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("`Decoder` is not supported") && stderr(&o).contains("DINOv3"),
        "{}",
        stderr(&o)
    );
    let text = stdout(&o);
    assert!(
        text.contains("Decoder") && text.contains("28 params"),
        "{text}"
    );

    let o = trellis2(&["inspect", p(&root.join("ckpts/dec.safetensors"))]);
    let text = stdout(&o);
    assert!(
        text.contains("conv.weight") && text.contains("[4, 2, 3]"),
        "{text}"
    );

    // A role whose checkpoint is missing fails, naming it.
    std::fs::write(
        root.join("pipeline.json"),
        r#"{"name": "P", "args": {"models": {"decoder": "ckpts/dec", "flow": "ckpts/flow"}}}"#,
    )
    .unwrap();
    let o = trellis2(&["inspect", p(&root)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("MISSING"), "{}", stdout(&o));

    let ply = dir.path().join("m.ply");
    write_ascii_ply(&ply, &TETRA, &TETRA_FACES);
    let text = stdout(&trellis2(&["inspect", p(&ply)]));
    assert!(
        text.contains("triangle mesh") && text.contains("face ×4"),
        "{text}"
    );
    let glb = dir.path().join("m.glb");
    write_glb(&glb, &TETRA, &TETRA_FACES);
    let text = stdout(&trellis2(&["inspect", p(&glb)]));
    assert!(text.contains("4 vertices, 4 triangles"), "{text}");

    let bad = dir.path().join("bad.ply");
    std::fs::write(&bad, b"ply\nformat binary_little_endian 1.0\nelement vertex 10\nproperty float x\nend_header\n\x00\x00").unwrap();
    let o = trellis2(&["inspect", p(&bad)]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains(p(&bad)));
}

fn golden_image(k: usize) -> (std::path::PathBuf, std::path::PathBuf) {
    let list: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture("golden/preprocess/preprocess.json")).unwrap(),
    )
    .unwrap();
    let entry = &list[k];
    (
        common::fixture(&format!("golden/{}", entry["source"].as_str().unwrap())),
        common::fixture(&format!(
            "golden/{}",
            entry["preprocessed_png"].as_str().unwrap()
        )),
    )
}

#[test]
fn preprocess_reproduces_the_golden_conditioning_images() {
    let dir = tempfile::tempdir().unwrap();
    for k in 0..3 {
        let (source, golden) = golden_image(k);
        let out = dir.path().join(format!("img{k}.png"));
        let dino = dir.path().join(format!("img{k}.safetensors"));
        let o = trellis2(&[
            "preprocess",
            p(&source),
            "-o",
            p(&out),
            "--dino-input",
            p(&dino),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let ours = image::open(&out).unwrap().to_rgb8();
        let want = image::open(&golden).unwrap().to_rgb8();
        assert_eq!(ours.dimensions(), want.dimensions());
        let max = ours
            .as_raw()
            .iter()
            .zip(want.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        println!("img{k}: preprocess max pixel difference = {max}");
        assert_eq!(max, 0);

        let ours = common::read_f32_tensors(&dino);
        let (shape, values) = &ours["pixel_values_512"];
        assert_eq!(shape, &vec![1, 3, 512, 512]);
        assert_eq!(ours["pixel_values_1024"].0, vec![1, 3, 1024, 1024]);
        let golden_rows = common::read_f32_tensors(&common::fixture(&format!(
            "golden/preprocess/img{k}.dino_input_512.safetensors"
        )));
        let (_, rows8) = &golden_rows["pixel_values.rows8"];
        // Golden keeps rows 0, 8, ..., 504 of each channel.
        let picked: Vec<f32> = (0..3)
            .flat_map(|c| (0..64).flat_map(move |r| (0..512).map(move |x| (c, r * 8, x))))
            .map(|(c, y, x)| values[c * 512 * 512 + y * 512 + x])
            .collect();
        let diff = common::max_abs_diff(&picked, rows8);
        println!("img{k}: DINOv3 input 512 max|diff| = {diff:e}");
        assert!(diff <= 1e-6);
    }
}

#[test]
fn preprocess_refuses_bad_images_without_leaving_output() {
    let dir = tempfile::tempdir().unwrap();
    let (source, _) = golden_image(0);
    let bytes = std::fs::read(&source).unwrap();
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty.png", vec![]),
        ("truncated.webp", bytes[..bytes.len() / 2].to_vec()),
        ("notes.png", b"these are not pixels".to_vec()),
    ];
    let mut encode = |name: &'static str, alpha: u8| {
        let img = image::RgbaImage::from_pixel(16, 16, image::Rgba([200, 100, 50, alpha]));
        let mut png = Vec::new();
        image::DynamicImage::ImageRgba8(img)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        cases.push((name, png));
    };
    encode("transparent.png", 0);
    encode("faint.png", 204);
    let mut jpeg = Vec::new();
    image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(16, 16, image::Rgb([9, 9, 9])))
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    cases.push(("photo.jpg", jpeg));
    for (name, data) in &cases {
        let input = dir.path().join(name);
        std::fs::write(&input, data).unwrap();
        let out = dir.path().join(format!("{name}.out.png"));
        let o = trellis2(&["preprocess", p(&input), "-o", p(&out)]);
        let err = stderr(&o);
        println!("{name}: {}", err.trim());
        assert_eq!(o.status.code(), Some(1), "{name}");
        assert_eq!(err.lines().count(), 1, "{name}: {err}");
        assert!(err.contains(p(&input)), "{name}: {err}");
        assert!(!out.exists(), "{name}: no output on failure");
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn dev_forward_reproduces_the_golden_transformer_outputs() {
    let dir = tempfile::tempdir().unwrap();
    for role in [
        "image_cond_model",
        "sparse_structure_flow_model",
        "shape_slat_flow_model_1024",
        "tex_slat_flow_model_512",
    ] {
        let ckpt = common::fixture(&format!("golden/models/{role}"));
        let io = common::fixture(&format!("golden/golden/{role}.io.safetensors"));
        let out = dir.path().join(format!("{role}.safetensors"));
        let o = trellis2(&[
            "dev",
            "forward",
            "--ckpt",
            p(&ckpt),
            "--inputs",
            p(&io),
            "-o",
            p(&out),
        ]);
        assert!(o.status.success(), "{role}: {}", stderr(&o));
        // 1e-4 relative to the largest reference values (≈1) as an absolute bound.
        let c = trellis2(&["compare", p(&out), p(&io), "--atol", "1e-4", "--rtol", "0"]);
        println!("{role}: {}", stdout(&c).lines().last().unwrap_or_default());
        assert_eq!(c.status.code(), Some(0), "{role}: {}", stdout(&c));
    }
}

#[test]
fn dev_forward_names_missing_inputs_and_unknown_models() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = common::fixture("golden/models/shape_slat_flow_model_512");
    let wrong_io = common::fixture("golden/golden/image_cond_model.io.safetensors");
    let out = dir.path().join("o.safetensors");
    let o = trellis2(&[
        "dev",
        "forward",
        "--ckpt",
        p(&ckpt),
        "--inputs",
        p(&wrong_io),
        "-o",
        p(&out),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("no input tensor `t`") && err.contains(p(&wrong_io)),
        "{err}"
    );
    assert!(!out.exists());
    let stem = dir.path().join("odd");
    write_tensors(
        &dir.path().join("odd.safetensors"),
        &[("w", vec![1], vec![0.0])],
    );
    std::fs::write(
        dir.path().join("odd.json"),
        r#"{"name": "Mystery", "args": {}}"#,
    )
    .unwrap();
    let o = trellis2(&[
        "dev",
        "forward",
        "--ckpt",
        p(&stem),
        "--inputs",
        p(&wrong_io),
        "-o",
        p(&out),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("`Mystery` is not supported"),
        "{}",
        stderr(&o)
    );
}

/// `selftest --device cpu` checks every kernel's CPU op against its slow twin: one line per
/// (case, dtype), all passing, exit 0.
#[test]
fn selftest_on_the_cpu_passes_every_case() {
    let o = trellis2(&["selftest", "--device", "cpu"]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    let cases: Vec<&str> = out.lines().filter(|l| l.contains("max|err|")).collect();
    for line in &cases {
        assert!(line.starts_with("pass") && line.contains("/s"), "{line}");
    }
    let has = |op: &str, dtype: &str| {
        cases
            .iter()
            .any(|l| l.contains(&format!(" {op} ")) && l.contains(&format!(" {dtype} ")))
    };
    for op in [
        "sparse_conv",
        "attention q=300+211 heads=3 d=64",
        "attention q=150+90 kv=1029+1029 heads=2 d=128",
        "layer_norm",
        "layer_norm_modulate",
        "rms_norm_rope rows=2000 heads=2 d=128 gamma table=positions",
        "rms_norm_rope rows=2000 heads=2 d=128 gamma table=identity",
        "bias_act rows=500 c=8192 gelu_tanh",
        "bias_act rows=1000 c=1539 silu",
        "bias_act rows=1000 c=1536 none",
        "bias_act rows=1000 c=4096 gelu_erf",
        "linear m=257 k=1024 n=3072 bias gelu_tanh",
        "linear m=257 k=4096 n=1024 bias +residual",
        "gated_residual",
    ] {
        for dtype in ["f32", "f16", "bf16"] {
            assert!(has(op, dtype), "no {op} {dtype} line in:\n{out}");
        }
    }
    assert!(has("neighbour_map", "u32"), "{out}");
    assert!(out.contains(" 0 failed"), "{out}");
    // The kernel tuning in force, every knob, before the cases.
    let tuning = out.lines().nth(1).unwrap_or_default();
    assert!(
        tuning.starts_with("tuning: TRELLIS2_CUBLASLT=") && tuning.contains(" TRELLIS2_CONV_SORT="),
        "{out}"
    );
}

/// A bad tuning variable stops every command up front: one line naming the variable, the value
/// and what it takes, exit 2.
#[test]
fn a_bad_tuning_variable_is_a_one_line_usage_error() {
    for (var, value, expected) in [
        ("TRELLIS2_CUBLASLT", "maybe", "on or off"),
        (
            "TRELLIS2_CONV_SORT",
            "sideways",
            "auto, off, full or a window in voxels",
        ),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_trellis2"))
            .args(["selftest", "--device", "cpu"])
            .env(var, value)
            .output()
            .expect("binary runs");
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert_eq!(
            stderr(&o),
            format!("error: {var}={value}: expected {expected}\n")
        );
        assert!(stdout(&o).is_empty(), "{}", stdout(&o));
    }
}

/// A backend this build lacks is one clear line and a usage error (exit 2), not a panic.
#[test]
fn selftest_names_a_backend_that_is_not_built_in() {
    let missing = if cfg!(feature = "metal") {
        "cuda"
    } else {
        "metal"
    };
    let o = trellis2(&["selftest", "--device", missing]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.starts_with("error: ") && err.contains("built without") && err.lines().count() == 1,
        "{err}"
    );
}

/// Every enumerated flag is parsed by clap: a bad value is a usage error (exit 2) whose message
/// names the flag and lists the accepted values.
#[test]
fn bad_enum_values_are_usage_errors_listing_the_choices() {
    let cases: &[(&[&str], &str, &str)] = &[
        (&["generate", "x.png"], "--device", "auto, cpu, metal, cuda"),
        (&["generate", "x.png"], "--up", "y, z"),
        (
            &["generate", "x.png"],
            "--pipeline",
            "512, 1024, 1024-cascade, 1536-cascade",
        ),
        (&["generate", "x.png"], "--dtype", "auto, f32, f16, bf16"),
        (
            &["generate", "x.png"],
            "--format",
            "splat, splat-spz, mesh-ply, glb",
        ),
        (
            &["generate", "x.png"],
            "--rembg",
            "auto, birefnet, rmbg-2.0, none, alpha",
        ),
        (
            &["matte", "x.png", "-o", "y.png"],
            "--device",
            "auto, cpu, metal, cuda",
        ),
        (
            &["matte", "x.png", "-o", "y.png"],
            "--rembg",
            "birefnet, rmbg-2.0",
        ),
        (&["selftest"], "--device", "auto, cpu, metal, cuda"),
        (
            &["download", "--dry-run"],
            "--rembg",
            "birefnet, rmbg-2.0, none",
        ),
        (
            &["convert", "--from", "a", "--to", "b"],
            "--dtype",
            "f16, bf16, f32",
        ),
    ];
    for (command, flag, accepted) in cases {
        let mut args = command.to_vec();
        args.extend([*flag, "tpu"]);
        let o = trellis2(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&format!("invalid value 'tpu' for '{flag} "))
                && err.contains(&format!("[possible values: {accepted}]")),
            "{args:?}: {err}"
        );
    }
}

/// Numbers outside their rule are usage errors (exit 2) naming the flag and the rule.
#[test]
fn bad_numbers_are_usage_errors_stating_the_rule() {
    let cases: &[(&[&str], &str, &str)] = &[
        (&["generate", "x.png", "--steps", "0"], "--steps", "≥ 1"),
        (&["generate", "x.png", "--steps", "ss=0"], "--steps", "≥ 1"),
        (&["generate", "x.png", "--steps", "geo=3"], "--steps", "geo"),
        (
            &["generate", "x.png", "--cfg", "nan"],
            "--cfg",
            "finite number ≥ 0",
        ),
        (
            &["generate", "x.png", "--cfg", "inf"],
            "--cfg",
            "finite number ≥ 0",
        ),
        (
            &["generate", "x.png", "--cfg=-1"],
            "--cfg",
            "finite number ≥ 0",
        ),
        (
            &["generate", "x.png", "--cfg-rescale", "tex=2"],
            "--cfg-rescale",
            "in [0, 1]",
        ),
        (
            &["generate", "x.png", "--max-tokens", "0"],
            "--max-tokens",
            "≥ 1",
        ),
        (
            &["matte", "x.png", "-o", "y.png", "--size", "0"],
            "--size",
            "multiple of 32",
        ),
        (&["compare", "a", "b", "--atol=-1"], "--atol", "≥ 0"),
        (&["compare", "a", "b", "--rtol", "nan"], "--rtol", "≥ 0"),
    ];
    for (args, flag, rule) in cases {
        let o = trellis2(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&format!("for '{flag} ")) && err.contains(rule),
            "{args:?}: {err}"
        );
    }
}

/// `TRELLIS2_MODEL` is `generate --model`'s default, shown in the help.
#[test]
fn generate_reads_the_model_folder_from_the_environment() {
    let o = trellis2(&["generate", "--help"]);
    assert!(
        stdout(&o).contains("[env: TRELLIS2_MODEL"),
        "{}",
        stdout(&o)
    );
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("my-model");
    let picture = dir.path().join("x.png");
    std::fs::write(&picture, b"not read before the model is found").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_trellis2"))
        .args(["generate", p(&picture), "--offline", "-o"])
        .arg(dir.path())
        .env("TRELLIS2_MODEL", &model)
        .output()
        .expect("binary runs");
    // A model folder that does not exist is a usage error (exit 2), never a download.
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains(p(&model)), "{}", stderr(&o));
}

/// A download that cannot reach the hub fails with one line naming the URL once.
#[test]
fn a_failed_download_is_one_line_with_the_url_once() {
    // A port that was just free: nothing listens there, so the connection is refused.
    let endpoint = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let home = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_trellis2"))
        .args(["download", "--dry-run"])
        .env("HF_ENDPOINT", &endpoint)
        .env("HF_HOME", home.path())
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_TOKEN")
        .output()
        .expect("binary runs");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error: ") && err.lines().count() == 1,
        "{err}"
    );
    assert_eq!(err.matches(&endpoint).count(), 1, "{err}");
    assert!(err.contains("/resolve/main/"), "{err}");
}
