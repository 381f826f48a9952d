//! The real checkpoints load, proven without downloading them: `tests/fixtures/golden/manifests/`
//! lists every key and shape of the released full-size models (from a meta-device build of the
//! upstream code). Each model is built here at full size with a shape-only `VarBuilder` (no
//! parameter is allocated) and the keys and shapes it asks for must equal the manifest's exactly.
//!
//! Left out on purpose, by name: buffers (`kind: buffer`, e.g. the dense flow's `rope_phases`,
//! which we recompute and the released file does not even hold) and the keys a loader declares
//! unused (`UNUSED_KEYS`: DINOv3's final `norm` and `mask_token`), which must still exist in
//! the manifest.
//!
//! Second test: a synthetic release with the real key set at shrunk widths (same block counts)
//! is written as a model directory and every model is loaded through `generate`'s discovery
//! path (`hub::locate` → `ModelDir` → the strict loaders).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use trellis2::models::registry::{build_model, ModelSource};
use trellis2::weights::{check_tensors, hub, ShapeRecorder};

/// (manifest, role in pipeline.json, stem in the release)
const RELEASE: &[(&str, &str, &str)] = &[
    (
        "ss_flow_img_dit_1_3B_64_bf16.denoiser",
        "sparse_structure_flow_model",
        "ckpts/ss_flow_img_dit_1_3B_64_bf16",
    ),
    (
        "ss_dec_conv3d_16l8_fp16.decoder",
        "sparse_structure_decoder",
        "microsoft/TRELLIS-image-large/ckpts/ss_dec_conv3d_16l8_fp16",
    ),
    (
        "slat_flow_img2shape_dit_1_3B_512_bf16.denoiser",
        "shape_slat_flow_model_512",
        "ckpts/slat_flow_img2shape_dit_1_3B_512_bf16",
    ),
    (
        "slat_flow_img2shape_dit_1_3B_512_bf16_ft1024.denoiser",
        "shape_slat_flow_model_1024",
        "ckpts/slat_flow_img2shape_dit_1_3B_1024_bf16",
    ),
    (
        "shape_vae_next_dc_f16c32_fp16_ft_512.decoder",
        "shape_slat_decoder",
        "ckpts/shape_dec_next_dc_f16c32_fp16",
    ),
    (
        "slat_flow_imgshape2tex_dit_1_3B_512_bf16.denoiser",
        "tex_slat_flow_model_512",
        "ckpts/slat_flow_imgshape2tex_dit_1_3B_512_bf16",
    ),
    (
        "slat_flow_imgshape2tex_dit_1_3B_512_bf16_ft1024.denoiser",
        "tex_slat_flow_model_1024",
        "ckpts/slat_flow_imgshape2tex_dit_1_3B_1024_bf16",
    ),
    (
        "tex_vae_next_dc_f16c32_fp16_ft_512.decoder",
        "tex_slat_decoder",
        "ckpts/tex_dec_next_dc_f16c32_fp16",
    ),
];
const OTHER: &[&str] = &[
    // The texturing pipeline's shape encoder (`ckpts/shape_enc_next_dc_f16c32_fp16`).
    "shape_enc_next_dc_f16c32_fp16",
    "shape_vae_next_dc_f16c32_fp16.decoder",
    "tex_vae_next_dc_f16c32_fp16.decoder",
    "dinov3_vitl16",
];

struct Manifest {
    name: String,
    args: Value,
    /// (key, shape, is a parameter)
    tensors: Vec<(String, Vec<usize>, bool)>,
}

fn manifest(stem: &str) -> Manifest {
    let path = common::fixture(&format!("golden/manifests/{stem}.json"));
    let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let tensors = v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let shape = t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            (
                t["key"].as_str().unwrap().to_string(),
                shape,
                t["kind"] == "param",
            )
        })
        .collect();
    Manifest {
        name: v["name"].as_str().unwrap().to_string(),
        args: v["args"].clone(),
        tensors,
    }
}

/// Builds `class(args)` shape-only; returns the requested tensors and the declared-unused keys.
fn requested(class: &str, args: &Value) -> (Vec<(String, Vec<usize>)>, Vec<String>) {
    let rec = ShapeRecorder::new();
    let unused = build_model(class, args, rec.var_builder(DType::F32, &Device::Cpu))
        .unwrap_or_else(|e| panic!("{class}: {e:#}"));
    (
        rec.requested(),
        unused.iter().map(|s| s.to_string()).collect(),
    )
}

#[test]
fn every_released_model_asks_for_exactly_the_manifest_keys_and_shapes() {
    let stems = RELEASE.iter().map(|r| r.0).chain(OTHER.iter().copied());
    for stem in stems {
        let m = manifest(stem);
        let (asked, unused) = requested(&m.name, &m.args);
        assert!(!asked.is_empty(), "{stem}");
        for key in &unused {
            let in_manifest = m.tensors.iter().any(|(k, _, _)| k == key);
            // `rope_phases` is a buffer of the dense flow only.
            assert!(
                in_manifest || key == "rope_phases",
                "{stem}: unused key {key} not in the manifest"
            );
        }
        let expected: Vec<(String, Vec<usize>)> = m
            .tensors
            .iter()
            .filter(|(k, _, param)| *param && !unused.contains(k))
            .map(|(k, s, _)| (k.clone(), s.clone()))
            .collect();
        let buffers: Vec<&str> = m
            .tensors
            .iter()
            .filter(|t| !t.2)
            .map(|t| t.0.as_str())
            .collect();
        assert!(
            buffers.iter().all(|b| *b == "rope_phases"),
            "{stem}: unexpected buffers {buffers:?}"
        );
        if let Err(e) = check_tensors(stem, &asked, &expected) {
            panic!("{e}");
        }
        let mut names: Vec<&str> = asked.iter().map(|(n, _)| n.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(
            names.len(),
            asked.len(),
            "{stem}: a key was requested twice"
        );
    }
}

/// Full-size args shrunk in width only, so the key set stays the real one.
fn shrink(class: &str, args: &Value) -> Value {
    let mut a = args.clone();
    match class {
        "SparseStructureFlowModel" | "ElasticSLatFlowModel" | "SLatFlowModel" => {
            a["model_channels"] = json!(32);
            a["cond_channels"] = json!(16);
            a["num_heads"] = json!(2);
        }
        "SparseStructureDecoder" => a["channels"] = json!([32, 16, 8]),
        "FlexiDualGridVaeDecoder" | "SparseUnetVaeDecoder" => {
            a["model_channels"] = json!([32, 16, 16, 8, 8]);
            a["use_fp16"] = json!(false);
        }
        "DINOv3ViTModel" => {
            a["hidden_size"] = json!(32);
            a["num_attention_heads"] = json!(2);
            a["intermediate_size"] = json!(64);
        }
        other => panic!("no shrink rule for {other}"),
    }
    a
}

/// Deterministic non-zero values (a model of zeros would hide a transposed load).
fn filler(shape: &[usize], seed: usize, dtype: DType) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| (((i * 7919 + seed * 104729) % 2001) as f32 - 1000.0) * 1e-4)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// Writes the tensors `class(args)` asks for (plus its declared-unused keys that the manifest
/// holds) as `path`, stored in `dtype` like the release.
fn write_synthetic(path: &Path, m: &Manifest, args: &Value, dtype: DType) -> Vec<String> {
    let (asked, unused) = requested(&m.name, args);
    let mut tensors: BTreeMap<String, Tensor> = asked
        .iter()
        .enumerate()
        .map(|(i, (k, s))| (k.clone(), filler(s, i, dtype)))
        .collect();
    let hidden = args
        .get("hidden_size")
        .and_then(|h| h.as_u64())
        .unwrap_or(0) as usize;
    // The released files hold parameters only (no `rope_phases` buffer).
    for key in unused
        .iter()
        .filter(|k| m.tensors.iter().any(|t| &t.0 == *k && t.2))
    {
        let shape = if key.ends_with("mask_token") {
            vec![1, 1, hidden]
        } else {
            vec![hidden]
        };
        tensors.insert(key.clone(), filler(&shape, 1, dtype));
    }
    candle_core::safetensors::save(
        &tensors
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        path,
    )
    .unwrap();
    let mut names: Vec<String> = tensors.keys().cloned().collect();
    names.sort();
    names
}

#[test]
fn a_synthetic_release_with_the_real_keys_loads_through_generates_discovery_path() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let mut models = serde_json::Map::new();
    for (stem, role, rel) in RELEASE {
        let m = manifest(stem);
        let args = shrink(&m.name, &m.args);
        // The SS decoder sits in its own repository's folder, as in the hub cache.
        let path = match rel.strip_prefix("microsoft/TRELLIS-image-large/") {
            Some(rest) => dir.join("v1").join(rest),
            None => dir.join("release").join(rel),
        };
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let dtype = if m.name.contains("Flow") {
            DType::BF16
        } else {
            DType::F16
        };
        let names = write_synthetic(&path.with_extension("safetensors"), &m, &args, dtype);
        let mut real: Vec<String> = m
            .tensors
            .iter()
            .filter(|t| t.2)
            .map(|t| t.0.clone())
            .collect();
        real.sort();
        let only_ours: Vec<_> = names.iter().filter(|n| !real.contains(n)).collect();
        let only_real: Vec<_> = real.iter().filter(|n| !names.contains(n)).collect();
        assert!(
            only_ours.is_empty() && only_real.is_empty(),
            "{stem}: synthetic key set differs from the release: extra {only_ours:?}, missing {only_real:?}"
        );
        std::fs::write(
            path.with_extension("json"),
            json!({"name": m.name, "args": args}).to_string(),
        )
        .unwrap();
        models.insert(role.to_string(), json!(rel));
    }
    let dino = manifest("dinov3_vitl16");
    let dino_args = shrink(&dino.name, &dino.args);
    let dino_dir = dir.join("release/facebook/dinov3-vitl16-pretrain-lvd1689m");
    std::fs::create_dir_all(&dino_dir).unwrap();
    write_synthetic(
        &dino_dir.join("model.safetensors"),
        &dino,
        &dino_args,
        DType::F32,
    );
    let mut cfg = dino_args.clone();
    cfg["architectures"] = json!(["DINOv3ViTModel"]);
    std::fs::write(dino_dir.join("config.json"), cfg.to_string()).unwrap();
    // No BiRefNet loader yet: the folder only has to be found.
    let rmbg = dir.join("release/briaai/RMBG-2.0");
    std::fs::create_dir_all(&rmbg).unwrap();
    std::fs::write(rmbg.join("config.json"), "{}").unwrap();
    candle_core::safetensors::save(
        &[("w".to_string(), filler(&[2], 0, DType::F32))].into(),
        rmbg.join("model.safetensors"),
    )
    .unwrap();
    std::fs::write(
        dir.join("release/pipeline.json"),
        json!({"name": "Trellis2ImageTo3DPipeline", "args": {"models": models}}).to_string(),
    )
    .unwrap();

    // The foreign repository comes from a hub cache; everything else from --model DIR.
    let cache = dir.join("cache");
    let snapshot = cache.join("models--microsoft--TRELLIS-image-large/snapshots/abc");
    std::fs::create_dir_all(snapshot.parent().unwrap()).unwrap();
    std::fs::rename(dir.join("v1"), &snapshot).unwrap();
    std::fs::create_dir_all(cache.join("models--microsoft--TRELLIS-image-large/refs")).unwrap();
    std::fs::write(
        cache.join("models--microsoft--TRELLIS-image-large/refs/main"),
        "abc",
    )
    .unwrap();
    let settings = hub::HubSettings {
        endpoint: "http://127.0.0.1:9".into(),
        cache_dir: cache,
        token: None,
        retries: 0,
    };
    let md = hub::locate(
        Some(&dir.join("release")),
        &settings,
        Some(trellis2::weights::RembgModel::Rmbg2),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let dev = Device::Cpu;
    use trellis2::models::dinov3::{DinoV3, DinoV3Config};
    use trellis2::models::dit::{DitConfig, FlowDit};
    use trellis2::models::registry::{load_shape_decoder, load_ss_decoder, load_unet_decoder};
    for (_, role, _) in RELEASE {
        let src = ModelSource::open(&md.resolve(role).unwrap()).unwrap();
        let loaded = match src.class.as_str() {
            "SparseStructureDecoder" => load_ss_decoder(&src, DType::F32, &dev).map(|_| ()),
            "FlexiDualGridVaeDecoder" => load_shape_decoder(&src, DType::F32, &dev).map(|_| ()),
            "SparseUnetVaeDecoder" => load_unet_decoder(&src, DType::F32, &dev).map(|_| ()),
            _ => {
                let cfg: DitConfig = serde_json::from_value(src.args.clone()).unwrap();
                FlowDit::load(&cfg, &src.checkpoint, DType::F32, &dev).map(|_| ())
            }
        };
        loaded.unwrap_or_else(|e| panic!("{role}: {e:#}"));
    }
    let src = ModelSource::open(&md.hf_model_dir("image_cond_model").unwrap()).unwrap();
    let cfg: DinoV3Config = serde_json::from_value(src.args.clone()).unwrap();
    DinoV3::load(&cfg, &src.checkpoint, DType::F32, &dev)
        .unwrap_or_else(|e| panic!("dinov3: {e:#}"));
}
