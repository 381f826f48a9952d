//! DINOv3 against the golden tiny model (upstream transformers 4.57 on CPU, f32).

mod common;

use candle_core::{DType, Device};
use common::Golden;
use trellis2::models::dinov3::{DinoV3, DinoV3Config};
use trellis2::models::trace::Trace;
use trellis2::weights::Checkpoint;

#[test]
fn features_and_every_layer_match_upstream() {
    let dir = common::fixture("golden/models/image_cond_model");
    let cfg: DinoV3Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let ckpt = Checkpoint::open_file(&dir.join("model.safetensors")).unwrap();
    let model = DinoV3::load(&cfg, &ckpt, DType::F32, &Device::Cpu).unwrap();
    let io = Golden::open("golden/golden/image_cond_model.io.safetensors");
    let trace_ref = Golden::open("golden/golden/image_cond_model.trace.safetensors");
    let mut trace = Trace::on();
    let out = model
        .features_traced(io.get("pixel_values"), &mut trace)
        .unwrap();
    let mut worst = 0f32;
    for (name, t) in trace.entries() {
        if trace_ref.key_for(name).is_none() {
            continue;
        }
        let err = trace_ref.rel_err(name, t);
        println!("{name:<24} max|err|/max|ref| = {err:e}");
        worst = worst.max(err);
    }
    let err = io.rel_err("features", &out);
    println!("{:<24} max|err|/max|ref| = {err:e}", "features");
    worst = worst.max(err);
    assert!(trace.entries().len() >= 11, "every traced module compared");
    assert!(worst <= 1e-4, "worst {worst:e}");
}

#[test]
fn bad_inputs_are_refused() {
    let dir = common::fixture("golden/models/image_cond_model");
    let cfg: DinoV3Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let ckpt = Checkpoint::open_file(&dir.join("model.safetensors")).unwrap();
    let model = DinoV3::load(&cfg, &ckpt, DType::F32, &Device::Cpu).unwrap();
    let odd = candle_core::Tensor::zeros((1, 3, 20, 32), DType::F32, &Device::Cpu).unwrap();
    let err = model.features(&odd).unwrap_err().to_string();
    assert!(err.contains("[1, 3, 20, 32]"), "{err}");
    // A config that does not match the checkpoint names every mismatch.
    let mut wide = cfg.clone();
    wide.intermediate_size = 128;
    let err = DinoV3::load(&wide, &ckpt, DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("mis-shaped") && err.contains("mlp.up_proj.weight"),
        "{err}"
    );
}
