//! `trellis2 dev forward` on the golden decoders: outputs that `trellis2 compare` accepts against
//! the golden io files, one-line errors for malformed inputs, empty and single-voxel inputs.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};
use trellis2::export::tensors::{read_tensors, write_tensors};

fn trellis2(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trellis2"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .expect("binary runs")
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn model(role: &str) -> PathBuf {
    common::fixture(&format!("golden/models/{role}"))
}

fn golden_io(role: &str) -> PathBuf {
    common::fixture(&format!("golden/golden/{role}.io.safetensors"))
}

fn read(path: &Path) -> HashMap<String, Tensor> {
    read_tensors(path, &Device::Cpu).unwrap()
}

fn write(path: &Path, tensors: Vec<(&str, Tensor)>) {
    let named: Vec<(String, Tensor)> = tensors
        .into_iter()
        .map(|(n, t)| (n.to_string(), t))
        .collect();
    write_tensors(path, &named, None).unwrap();
}

/// Runs `dev forward`, asserting success, and returns the outputs.
fn forward_ok(
    ckpt: &Path,
    inputs: &Path,
    guide: Option<&Path>,
    out: &Path,
) -> HashMap<String, Tensor> {
    let mut args = vec![
        "dev",
        "forward",
        "--ckpt",
        p(ckpt),
        "--inputs",
        p(inputs),
        "-o",
        p(out),
    ];
    if let Some(g) = guide {
        args.extend(["--guide", p(g)]);
    }
    let o = trellis2(&args);
    assert!(
        o.status.success(),
        "dev forward failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    read(out)
}

/// Runs `dev forward` expecting failure; returns its single stderr line.
fn forward_err(ckpt: &Path, inputs: &Path, guide: Option<&Path>, out: &Path) -> String {
    let mut args = vec![
        "dev",
        "forward",
        "--ckpt",
        p(ckpt),
        "--inputs",
        p(inputs),
        "-o",
        p(out),
    ];
    if let Some(g) = guide {
        args.extend(["--guide", p(g)]);
    }
    let o = trellis2(&args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        o.status.code(),
        Some(1),
        "expected failure, got {:?}: {err}",
        o.status
    );
    assert!(!out.exists(), "no output on failure");
    err
}

/// `trellis2 compare A B` on one-tensor files, with `atol = 1e-4 · max|ref|` and `rtol = 0`,
/// i.e. max|err| / max|ref| ≤ 1e-4 for that tensor (integer tensors must be equal).
fn compare_one(dir: &Path, name: &str, ours: &Tensor, want: &Tensor) {
    let (a, b) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
    write(&a, vec![(name, ours.clone())]);
    write(&b, vec![(name, want.clone())]);
    let scale = if want.dtype() == DType::F32 {
        want.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    } else {
        0.0
    };
    let atol = format!("{:e}", 1e-4 * scale as f64);
    let o = trellis2(&["compare", p(&a), p(&b), "--atol", &atol, "--rtol", "0"]);
    let text = String::from_utf8_lossy(&o.stdout);
    println!("{}", text.lines().nth(1).unwrap_or_default());
    assert_eq!(o.status.code(), Some(0), "{name}: compare failed:\n{text}");
}

/// `dev forward` on the golden inputs; its output file passes `trellis2 compare` against the
/// golden io file restricted to the same names, and each tensor passes on its own at 1e-4 of
/// its largest reference value.
fn forward_matches_golden(role: &str, guide: Option<&Path>, expected: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let ours = forward_ok(&model(role), &golden_io(role), guide, &out);
    let mut names: Vec<&String> = ours.keys().collect();
    names.sort();
    assert_eq!(names, expected, "{role}: output names");
    let golden = read(&golden_io(role));
    let reference: Vec<(&str, Tensor)> = names
        .iter()
        .map(|n| (n.as_str(), golden[n.as_str()].clone()))
        .collect();
    let reference_path = dir.path().join("reference.safetensors");
    write(&reference_path, reference);
    let o = trellis2(&["compare", p(&out), p(&reference_path)]);
    let text = String::from_utf8_lossy(&o.stdout);
    println!("{role}: {}", text.lines().last().unwrap_or_default());
    assert_eq!(o.status.code(), Some(0), "{role}: compare failed:\n{text}");
    for name in names {
        compare_one(
            dir.path(),
            name,
            &ours[name.as_str()],
            &golden[name.as_str()],
        );
    }
}

#[test]
fn ss_decoder_output_passes_compare() {
    forward_matches_golden(
        "sparse_structure_decoder",
        None,
        &["logits", "occupancy", "z"],
    );
}

#[test]
fn shape_decoder_output_passes_compare() {
    forward_matches_golden(
        "shape_slat_decoder",
        None,
        &[
            "latent.coords",
            "latent.feats",
            "mesh.0.faces",
            "mesh.0.vertices",
            "mesh.1.faces",
            "mesh.1.vertices",
            "out.coords",
            "out.raw_feats",
            "resolution",
            "subs.0.coords",
            "subs.0.feats",
            "subs.1.coords",
            "subs.1.feats",
            "subs.2.coords",
            "subs.2.feats",
            "subs.3.coords",
            "subs.3.feats",
            "upsample4.coords",
        ],
    );
}

#[test]
fn texture_decoder_output_passes_compare() {
    let guide = golden_io("shape_slat_decoder");
    forward_matches_golden(
        "tex_slat_decoder",
        Some(&guide),
        &["latent.coords", "latent.feats", "out.coords", "out.feats"],
    );
}

fn latent_inputs(coords: Tensor, feats: Tensor) -> Vec<(&'static str, Tensor)> {
    vec![("latent.coords", coords), ("latent.feats", feats)]
}

#[test]
fn malformed_inputs_give_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let inputs = dir.path().join("in.safetensors");
    let dev = Device::Cpu;
    let io = read(&golden_io("shape_slat_decoder"));
    let (coords, feats) = (io["latent.coords"].clone(), io["latent.feats"].clone());
    let one_line = |e: &str| assert_eq!(e.trim_end().lines().count(), 1, "one line: {e}");

    // A coordinate out of range.
    let mut rows = coords.to_vec2::<i32>().unwrap();
    rows[3][2] = -4;
    let bad = Tensor::new(rows, &dev).unwrap();
    write(&inputs, latent_inputs(bad, feats.clone()));
    let e = forward_err(&model("shape_slat_decoder"), &inputs, None, &out);
    one_line(&e);
    assert!(
        e.contains("row 3") && e.contains("y = -4") && e.contains("`latent`"),
        "{e}"
    );

    // Wrong channel count.
    write(
        &inputs,
        latent_inputs(coords.clone(), feats.narrow(1, 0, 31).unwrap()),
    );
    let e = forward_err(&model("shape_slat_decoder"), &inputs, None, &out);
    one_line(&e);
    assert!(
        e.contains("latent has 31 channels, the model expects 32"),
        "{e}"
    );
    let z = Tensor::zeros((1, 7, 2, 2, 2), DType::F32, &dev).unwrap();
    write(&inputs, vec![("z", z)]);
    let e = forward_err(&model("sparse_structure_decoder"), &inputs, None, &out);
    one_line(&e);
    assert!(
        e.contains("latent has 7 channels, the model expects 8"),
        "{e}"
    );

    // Feats and coords of different lengths.
    write(
        &inputs,
        latent_inputs(coords.clone(), feats.narrow(0, 0, 10).unwrap()),
    );
    let e = forward_err(&model("shape_slat_decoder"), &inputs, None, &out);
    one_line(&e);
    assert!(e.contains("[250, C]") && e.contains("[10, 32]"), "{e}");

    // The texture decoder without its guide.
    write(&inputs, latent_inputs(coords.clone(), feats.clone()));
    let e = forward_err(&model("tex_slat_decoder"), &inputs, None, &out);
    one_line(&e);
    assert!(e.contains("no input tensor `subs.0.feats`"), "{e}");

    // A guide made for other voxels.
    let guide = dir.path().join("guide.safetensors");
    let sub0 = io["subs.0.feats"].narrow(0, 0, 249).unwrap();
    let c0 = io["subs.0.coords"].narrow(0, 0, 249).unwrap();
    let mut g = vec![
        ("subs.0.feats".to_string(), sub0),
        ("subs.0.coords".to_string(), c0),
    ];
    for i in 1..4 {
        for part in ["feats", "coords"] {
            let key = format!("subs.{i}.{part}");
            g.push((key.clone(), io[&key].clone()));
        }
    }
    write_tensors(&guide, &g, None).unwrap();
    let e = forward_err(&model("tex_slat_decoder"), &inputs, Some(&guide), &out);
    one_line(&e);
    assert!(
        e.contains("guide subdivision") && e.contains("249") && e.contains("250"),
        "{e}"
    );
}

#[test]
fn mismatched_weights_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let stem = dir.path().join("shape_dec");
    std::fs::copy(
        model("shape_slat_decoder.json"),
        dir.path().join("shape_dec.json"),
    )
    .unwrap();
    let mut weights = read(&common::fixture(
        "golden/models/shape_slat_decoder.safetensors",
    ));
    weights.remove("blocks.1.0.conv.weight");
    let w = weights["blocks.0.0.conv.bias"].narrow(0, 0, 31).unwrap();
    weights.insert("blocks.0.0.conv.bias".into(), w);
    let named: Vec<(String, Tensor)> = weights.into_iter().collect();
    write_tensors(&dir.path().join("shape_dec.safetensors"), &named, None).unwrap();
    let out = dir.path().join("out.safetensors");
    let e = forward_err(&stem, &golden_io("shape_slat_decoder"), None, &out);
    let first = e.lines().next().unwrap_or_default();
    assert!(
        first.contains("shape_dec.safetensors")
            && first.contains("1 missing")
            && first.contains("1 mis-shaped"),
        "{e}"
    );
    assert!(
        e.contains("missing     blocks.1.0.conv.weight [16, 3, 3, 3, 16]"),
        "{e}"
    );
    assert!(
        e.contains("blocks.0.0.conv.bias: model expects [32], checkpoint has [31]"),
        "{e}"
    );
}

#[test]
fn empty_and_single_voxel_latents_decode() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("in.safetensors");
    let out = dir.path().join("out.safetensors");
    let dev = Device::Cpu;
    let feats = read(&golden_io("shape_slat_decoder"))["latent.feats"].clone();
    for n in [0usize, 1] {
        let coords = Tensor::new(&[[0i32, 7, 8, 9]], &dev)
            .unwrap()
            .narrow(0, 0, n)
            .unwrap();
        write(
            &inputs,
            latent_inputs(coords, feats.narrow(0, 0, n).unwrap()),
        );
        let shape = forward_ok(&model("shape_slat_decoder"), &inputs, None, &out);
        let raw = &shape["out.raw_feats"];
        let voxels = raw.dims()[0];
        assert_eq!(raw.dims()[1], 7);
        assert_eq!(shape["out.coords"].dims(), &[voxels, 4]);
        assert_eq!(shape["upsample4.coords"].dims(), &[voxels, 4]);
        assert_eq!(shape["subs.0.feats"].dims(), &[n, 8]);
        // The golden stages keep child 0 always and all 8 children at the last stage.
        assert_eq!(
            voxels == 0,
            n == 0,
            "{n} latent voxels → {voxels} output voxels"
        );
        let guide = dir.path().join("guide.safetensors");
        let subs: Vec<(String, Tensor)> = shape
            .iter()
            .filter(|(k, _)| k.starts_with("subs."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        write_tensors(&guide, &subs, None).unwrap();
        let tex = forward_ok(&model("tex_slat_decoder"), &inputs, Some(&guide), &out);
        assert_eq!(tex["out.feats"].dims(), &[voxels, 6]);
        let same = tex["out.coords"]
            .flatten_all()
            .unwrap()
            .to_vec1::<i32>()
            .unwrap()
            == shape["out.coords"]
                .flatten_all()
                .unwrap()
                .to_vec1::<i32>()
                .unwrap();
        assert!(same, "texture voxels follow the shape voxels");
        println!("{n} latent voxel(s) → {voxels} output voxels");
    }
    // A 1³ sparse-structure latent decodes to a 4³ grid.
    let z = Tensor::ones((1, 8, 1, 1, 1), DType::F32, &dev).unwrap();
    write(&inputs, vec![("z", z)]);
    let ss = forward_ok(&model("sparse_structure_decoder"), &inputs, None, &out);
    assert_eq!(ss["logits"].dims(), &[1, 1, 4, 4, 4]);
    assert_eq!(ss["occupancy"].dtype(), DType::U8);
}
