//! The flow transformers against the golden tiny models (upstream on CPU, f32): outputs and
//! every traced intermediate.

mod common;

use candle_core::{DType, Device, Tensor};
use common::Golden;
use trellis2::models::dit::{Condition, DitConfig, FlowDit, FlowInput};
use trellis2::models::trace::Trace;
use trellis2::weights::Checkpoint;

fn load(role: &str) -> FlowDit {
    let ckpt = Checkpoint::open_stem(&common::fixture(&format!("golden/models/{role}"))).unwrap();
    let cfg: DitConfig = serde_json::from_value(ckpt.config.clone().unwrap().args).unwrap();
    FlowDit::load(&cfg, &ckpt, DType::F32, &Device::Cpu).unwrap()
}

/// Runs one golden io file through the model and checks the output and every trace entry.
fn check_role(role: &str) {
    let model = load(role);
    let io = Golden::open(&format!("golden/golden/{role}.io.safetensors"));
    let trace_ref = Golden::open(&format!("golden/golden/{role}.trace.safetensors"));
    let kv = model.cond_kv(io.get("cond")).unwrap();
    let mut trace = Trace::on();
    let (input, out_name) = if io.tensors.contains_key("x") {
        (FlowInput::Dense(io.get("x")), "out")
    } else {
        (
            FlowInput::Sparse {
                feats: io.get("x.feats"),
                coords: io.get("coords"),
                concat_cond: io.tensors.get("concat_cond.feats"),
            },
            "out.feats",
        )
    };
    let out = model
        .forward_traced(&input, io.get("t"), &Condition::Tokens(&kv), &mut trace)
        .unwrap();
    let mut worst = 0f32;
    let mut compared = 0;
    for (name, t) in trace.entries() {
        if trace_ref.key_for(name).is_none() {
            continue;
        }
        let err = trace_ref.rel_err(name, t);
        println!("{role} {name:<40} max|err|/max|ref| = {err:e}");
        worst = worst.max(err);
        compared += 1;
    }
    let err = io.rel_err(out_name, &out);
    println!("{role} {out_name:<40} max|err|/max|ref| = {err:e}");
    worst = worst.max(err);
    let golden_keys = trace_ref
        .tensors
        .keys()
        .filter(|k| !k.ends_with(".coords"))
        .count();
    assert_eq!(
        compared, golden_keys,
        "{role}: every golden trace entry compared"
    );
    assert!(worst <= 1e-4, "{role}: worst {worst:e}");
}

#[test]
fn sparse_structure_flow_matches_upstream() {
    check_role("sparse_structure_flow_model");
}

#[test]
fn shape_flows_match_upstream() {
    check_role("shape_slat_flow_model_512");
    check_role("shape_slat_flow_model_1024");
}

#[test]
fn texture_flows_match_upstream() {
    check_role("tex_slat_flow_model_512");
    check_role("tex_slat_flow_model_1024");
}

#[test]
fn zero_condition_shortcut_equals_attending_to_zeros() {
    let model = load("shape_slat_flow_model_512");
    let io = Golden::open("golden/golden/shape_slat_flow_model_512.io.safetensors");
    let input = FlowInput::Sparse {
        feats: io.get("x.feats"),
        coords: io.get("coords"),
        concat_cond: None,
    };
    let zeros = io.get("cond").zeros_like().unwrap();
    let kv = model.cond_kv(&zeros).unwrap();
    let attended = model
        .forward(&input, io.get("t"), &Condition::Tokens(&kv))
        .unwrap();
    let shortcut = model
        .forward(&input, io.get("t"), &Condition::Zero)
        .unwrap();
    let err = (attended - shortcut)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    println!("zero condition: attention vs constant max|diff| = {err:e}");
    assert!(err <= 1e-5, "{err}");
}

#[test]
fn cached_condition_is_reused_across_calls() {
    let model = load("tex_slat_flow_model_512");
    let io = Golden::open("golden/golden/tex_slat_flow_model_512.io.safetensors");
    let kv = model.cond_kv(io.get("cond")).unwrap();
    let input = FlowInput::Sparse {
        feats: io.get("x.feats"),
        coords: io.get("coords"),
        concat_cond: io.tensors.get("concat_cond.feats"),
    };
    let a = model
        .forward(&input, io.get("t"), &Condition::Tokens(&kv))
        .unwrap();
    let b = model
        .forward(&input, io.get("t"), &Condition::Tokens(&kv))
        .unwrap();
    let diff: f32 = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert_eq!(diff, 0.0);
}

/// The token layout is kept between forwards of the same coordinates; other coordinates (here:
/// the same voxels shifted by one cell, so the RoPE phases differ) must not reuse it.
#[test]
fn new_coordinates_do_not_reuse_the_kept_layout() {
    let model = load("shape_slat_flow_model_512");
    let io = Golden::open("golden/golden/shape_slat_flow_model_512.io.safetensors");
    let kv = model.cond_kv(io.get("cond")).unwrap();
    let coords = io.get("coords").to_dtype(DType::I32).unwrap();
    let shift = Tensor::new(&[[0i32, 1, 1, 1]], &Device::Cpu).unwrap();
    let shifted = coords.broadcast_add(&shift).unwrap();
    let run = |model: &FlowDit, coords: &Tensor| {
        let input = FlowInput::Sparse {
            feats: io.get("x.feats"),
            coords,
            concat_cond: None,
        };
        model
            .forward(&input, io.get("t"), &Condition::Tokens(&kv))
            .unwrap()
    };
    run(&model, &coords);
    let after_other = run(&model, &shifted);
    let fresh = run(&load("shape_slat_flow_model_512"), &shifted);
    let unshifted = run(&model, &coords);
    let max = |t: Tensor| -> f32 { t.abs().unwrap().max_all().unwrap().to_scalar().unwrap() };
    assert_eq!(max((&after_other - &fresh).unwrap()), 0.0);
    assert!(
        max((&after_other - &unshifted).unwrap()) > 0.0,
        "RoPE must see the shift"
    );
}

#[test]
fn bad_inputs_give_clear_errors() {
    let model = load("shape_slat_flow_model_512");
    let io = Golden::open("golden/golden/shape_slat_flow_model_512.io.safetensors");
    let kv = model.cond_kv(io.get("cond")).unwrap();
    let t = io.get("t");
    let feats = io.get("x.feats");
    let run = |feats: &Tensor, coords: &Tensor| {
        let input = FlowInput::Sparse {
            feats,
            coords,
            concat_cond: None,
        };
        format!(
            "{:#}",
            model
                .forward(&input, t, &Condition::Tokens(&kv))
                .unwrap_err()
        )
    };
    let wrong_channels = feats.narrow(1, 0, 16).unwrap();
    assert!(run(&wrong_channels, io.get("coords")).contains("16 channels"));
    let short_coords = io.get("coords").narrow(0, 0, 10).unwrap();
    assert!(run(feats, &short_coords).contains("do not match"));
    let bad_batch = (io.get("coords").to_dtype(DType::F32).unwrap() + 5.0)
        .unwrap()
        .to_dtype(DType::I32)
        .unwrap();
    assert!(run(feats, &bad_batch).contains("batch index"));
    let wide_cond = Tensor::zeros((2, 7, 32), DType::F32, &Device::Cpu).unwrap();
    assert!(format!("{:#}", model.cond_kv(&wide_cond).err().unwrap()).contains("[2, 7, 32]"));
}

/// The FLOP count of the release's 1.3 B flow model is docs/MODEL.md §9's `30·N·(78.7 M + 6144·N +
/// 6144·L)`, e.g. 33 TFLOP for N = 8K, L = 1029.
#[test]
fn release_forward_flops_follow_the_spec() {
    let path =
        common::fixture("golden/manifests/slat_flow_img2shape_dit_1_3B_512_bf16.denoiser.json");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let cfg: DitConfig = serde_json::from_value(manifest["args"].clone()).unwrap();
    for (n, l) in [(8192usize, 1029usize), (15_000, 4101), (4096, 0)] {
        let (nf, lf) = (n as f64, l as f64);
        let spec = 30.0 * nf * (78.7e6 + 6144.0 * nf + 6144.0 * lf);
        let ours = cfg.forward_flops(n, l);
        println!(
            "N {n} L {l}: {:.2} TFLOP (docs/MODEL.md §9 formula {:.2})",
            ours / 1e12,
            spec / 1e12
        );
        assert!((ours / spec - 1.0).abs() < 2e-3, "{ours} vs {spec}");
    }
}
