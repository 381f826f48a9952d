//! `trellis2 convert` on the golden tiny models: the converted directory loads without any JSON
//! config, `inspect` names its layout, and every model gives the same outputs as the original
//! (f32 bit-exact; f16/bf16 within their rounding).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use trellis2::dev::forward::{forward, Inputs};
use trellis2::models::registry::ModelSource;
use trellis2::weights::{Checkpoint, Layout, ModelDir};

const ROLES: &[&str] = &[
    "sparse_structure_flow_model",
    "sparse_structure_decoder",
    "shape_slat_flow_model_512",
    "shape_slat_flow_model_1024",
    "shape_slat_decoder",
    "tex_slat_flow_model_512",
    "tex_slat_flow_model_1024",
    "tex_slat_decoder",
];
const DINO: &str = "facebook/dinov3-vitl16-pretrain-lvd1689m";

/// The golden models as a model directory: pipeline.json pointing at the fixtures, DINOv3 and
/// a placeholder background remover in their repository folders.
fn golden_model_dir(dir: &Path) {
    let models = common::fixture("golden/models");
    let stems: serde_json::Map<String, serde_json::Value> = ROLES
        .iter()
        .map(|r| {
            (
                r.to_string(),
                serde_json::json!(models.join(r).display().to_string()),
            )
        })
        .collect();
    let pipeline = serde_json::json!({"name": "Trellis2ImageTo3DPipeline", "args": {
        "models": stems,
        "image_cond_model": {"name": "DinoV3FeatureExtractor", "args": {"model_name": DINO}},
    }});
    std::fs::write(dir.join("pipeline.json"), pipeline.to_string()).unwrap();
    let dino = dir.join(DINO);
    std::fs::create_dir_all(&dino).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(models.join("image_cond_model").join(f), dino.join(f)).unwrap();
    }
    let rmbg = dir.join("briaai/RMBG-2.0");
    std::fs::create_dir_all(&rmbg).unwrap();
    std::fs::write(
        rmbg.join("config.json"),
        r#"{"architectures": ["BiRefNet"]}"#,
    )
    .unwrap();
    let w = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
    candle_core::safetensors::save(
        &[("w".to_string(), w)].into(),
        rmbg.join("model.safetensors"),
    )
    .unwrap();
}

fn convert(from: &Path, to: &Path, dtype: Option<&str>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trellis2"));
    cmd.args(["convert", "--from"])
        .arg(from)
        .arg("--to")
        .arg(to);
    if let Some(d) = dtype {
        cmd.args(["--dtype", d]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Golden inputs of a role (the texture decoder's guide comes from the shape decoder's file).
fn inputs(role: &str) -> HashMap<String, Tensor> {
    let mut t = common::Golden::open(&format!("golden/golden/{role}.io.safetensors")).tensors;
    if role == "tex_slat_decoder" {
        let guide = common::Golden::open("golden/golden/shape_slat_decoder.io.safetensors");
        for (k, v) in guide.tensors {
            if k.starts_with("subs.") {
                t.entry(k).or_insert(v);
            }
        }
    }
    t
}

fn run(source: &ModelSource, role: &str) -> Vec<(String, Tensor)> {
    let tensors = inputs(role);
    let inputs = Inputs::new(role, &tensors);
    forward(source, &inputs, &Device::Cpu).unwrap_or_else(|e| panic!("{role}: {e:#}"))
}

fn sources(dir: &ModelDir, role: &str) -> ModelSource {
    if role == "image_cond_model" {
        ModelSource::open(&dir.hf_model_dir(role).unwrap()).unwrap()
    } else {
        ModelSource::open(&dir.resolve(role).unwrap()).unwrap()
    }
}

/// max|a − b| / max|b| over every float output; `None` when a discrete output (coordinates,
/// faces, occupancy) differs, which only rounding of the weights may cause.
fn compare(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> Option<f32> {
    if a.len() != b.len()
        || a.iter()
            .zip(b)
            .any(|(x, y)| x.0 != y.0 || x.1.dims() != y.1.dims())
    {
        return None;
    }
    for ((_, ta), (_, tb)) in a.iter().zip(b) {
        if !ta.dtype().is_float() && common::int_values(ta) != common::int_values(tb) {
            return None;
        }
    }
    let mut worst = 0f32;
    for ((_, ta), (_, tb)) in a.iter().zip(b) {
        if !ta.dtype().is_float() {
            continue;
        }
        let x: Vec<f32> = ta
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let y: Vec<f32> = tb
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let scale = y.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        worst = worst.max(common::max_abs_diff(&x, &y) / scale);
    }
    Some(worst)
}

#[test]
fn converted_models_load_without_json_and_match_the_originals() {
    let root = tempfile::tempdir().unwrap();
    let from = root.path().join("golden");
    std::fs::create_dir_all(&from).unwrap();
    golden_model_dir(&from);
    let original = ModelDir::open(&from).unwrap();
    let roles: Vec<&str> = ROLES.iter().copied().chain(["image_cond_model"]).collect();
    let reference: Vec<_> = roles
        .iter()
        .map(|r| run(&sources(&original, r), r))
        .collect();

    // (dtype, tolerance on max|err| / max|ref|): f32 is a copy; f16 keeps ~11 bits, bf16 ~8.
    for (dtype, tol) in [
        (None, 0.0),
        (Some("f32"), 0.0),
        (Some("f16"), 1e-2),
        (Some("bf16"), 6e-2),
    ] {
        let to = root
            .path()
            .join(format!("converted-{}", dtype.unwrap_or("keep")));
        convert(&from, &to, dtype);
        let converted = ModelDir::open(&to).unwrap();
        for (role, want) in roles.iter().zip(&reference) {
            let src = sources(&converted, role);
            assert_eq!(src.checkpoint.layout, Layout::Converted, "{role}");
            if *role != "image_cond_model" {
                assert!(
                    !src.path.with_extension("json").exists(),
                    "{role}: no JSON config written"
                );
            }
            if let Some(d) = dtype {
                let want = match d {
                    "f16" => safetensors::Dtype::F16,
                    "bf16" => safetensors::Dtype::BF16,
                    _ => safetensors::Dtype::F32,
                };
                assert!(
                    src.checkpoint.tensor_infos().iter().all(|t| t.dtype == want
                        || !matches!(
                            t.dtype,
                            safetensors::Dtype::F32
                                | safetensors::Dtype::F16
                                | safetensors::Dtype::BF16
                        )),
                    "{role}: dtype {d}"
                );
            }
            let got = run(&src, role);
            match compare(&got, want) {
                Some(err) => {
                    assert!(err <= tol, "{role} {dtype:?}: rel err {err} > {tol}");
                    println!("{role:<28} {dtype:?}: rel err {err:.2e}");
                }
                // Rounded weights may flip a threshold (a subdivision, a face); the continuous
                // models (flows, DINOv3) have no such outputs and must always compare.
                None => {
                    let continuous = role.contains("flow") || *role == "image_cond_model";
                    assert!(
                        tol > 0.0 && !continuous,
                        "{role} {dtype:?}: discrete outputs differ"
                    );
                    println!("{role:<28} {dtype:?}: discrete outputs differ after rounding");
                }
            }
        }
    }

    // inspect names the layout of both kinds of file.
    for (path, want) in [
        (
            common::fixture("golden/models/shape_slat_decoder.safetensors"),
            "released",
        ),
        (
            root.path()
                .join("converted-f16/shape_slat_decoder.safetensors"),
            "converted by trellis2",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_trellis2"))
            .args(["inspect", "--summary"])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(&format!("layout      {want}")),
            "{text}"
        );
    }
    let ckpt = Checkpoint::open_file(
        &root
            .path()
            .join("converted-f16/sparse_structure_decoder.safetensors"),
    )
    .unwrap();
    assert_eq!(ckpt.class_name(), Some("SparseStructureDecoder"));
}
