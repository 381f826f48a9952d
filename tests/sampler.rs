//! The flow-Euler sampler against the golden `sampler/*` runs (upstream samplers driving the
//! tiny flow models on CPU, f32): every intermediate sample `x_t.i` and every stored raw model
//! output `model_call.j.out`, plus the call order and model times of the metadata.

mod common;

use candle_core::{DType, Device, Tensor};
use common::Golden;
use trellis2::models::dit::{DitConfig, FlowDit};
use trellis2::pipeline::flow_model::{sparse_layout, DitVelocity, FlowTokens};
use trellis2::pipeline::sampler::{
    sample, Branch, LatentLayout, SamplerEvent, SamplerParams, SIGMA_MIN,
};
use trellis2::weights::Checkpoint;

const TOL: f32 = 1e-4;

fn load(role: &str) -> FlowDit {
    let ckpt = Checkpoint::open_stem(&common::fixture(&format!("golden/models/{role}"))).unwrap();
    let cfg: DitConfig = serde_json::from_value(ckpt.config.clone().unwrap().args).unwrap();
    FlowDit::load(&cfg, &ckpt, DType::F32, &Device::Cpu).unwrap()
}

fn params(golden: &Golden) -> SamplerParams {
    let p = &golden.metadata["params"];
    let interval = p.get("guidance_interval").map(|i| {
        let v: Vec<f64> = serde_json::from_value(i.clone()).unwrap();
        [v[0], v[1]]
    });
    SamplerParams {
        steps: p["steps"].as_u64().unwrap() as usize,
        guidance_strength: p["guidance_strength"].as_f64().unwrap(),
        guidance_rescale: p["guidance_rescale"].as_f64().unwrap(),
        guidance_interval: interval,
        rescale_t: p["rescale_t"].as_f64().unwrap(),
        sigma_min: golden.metadata["sigma_min"].as_f64().unwrap_or(SIGMA_MIN),
    }
}

/// Runs one golden sampler file with `role`'s model and checks everything it stores.
fn check(file: &str, role: &str) {
    let golden = Golden::open(&format!("golden/sampler/{file}.safetensors"));
    let model = load(role);
    let p = params(&golden);
    let cond = golden.get("cond");
    let noise = golden.get("noise");
    let (tokens, layout) = match golden.tensors.get("coords") {
        Some(coords) => (
            FlowTokens::Sparse {
                coords,
                concat_cond: golden.tensors.get("concat_cond.feats"),
            },
            sparse_layout(coords, cond.dim(0).unwrap()).unwrap(),
        ),
        None => (FlowTokens::Dense, LatentLayout::Dense),
    };
    let mut velocity = DitVelocity::new(&model, cond, tokens).unwrap();
    let want_calls: Vec<serde_json::Value> =
        serde_json::from_value(golden.metadata["model_calls"].clone()).unwrap();
    let mut calls: Vec<(Branch, f32)> = Vec::new();
    let mut worst = 0f32;
    let mut compared = 0;
    let mut check_tensor = |name: String, t: &Tensor| {
        if golden.tensors.contains_key(&name) {
            let err = golden.rel_err(&name, t);
            println!("sampler/{file} {name:<20} max|err|/max|ref| = {err:e}");
            worst = worst.max(err);
            compared += 1;
        }
    };
    let out = sample(&mut velocity, noise, &layout, &p, &mut |event| {
        match event {
            SamplerEvent::ModelCall {
                index,
                branch,
                t_model,
                out,
            } => {
                calls.push((branch, t_model));
                check_tensor(format!("model_call.{index}.out"), out);
            }
            SamplerEvent::Step { step, x, .. } => check_tensor(format!("x_t.{step}"), x),
        }
        Ok(())
    })
    .unwrap();
    // The final sample is the last `x_t`.
    let last = golden.rel_err(&format!("x_t.{}", p.steps), &out);
    assert!(last <= TOL, "{file}: final sample {last:e}");
    let stored = golden
        .tensors
        .keys()
        .filter(|k| k.starts_with("x_t.") || k.starts_with("model_call."))
        .count();
    assert_eq!(
        compared, stored,
        "{file}: every stored step and call compared"
    );
    assert!(
        worst <= TOL,
        "{file}: worst max|err|/max|ref| {worst:e} > {TOL:e}"
    );
    // Same calls, same order, same model times.
    assert_eq!(
        calls.len(),
        want_calls.len(),
        "{file}: number of model calls"
    );
    for (j, ((branch, t), want)) in calls.iter().zip(&want_calls).enumerate() {
        let want_branch = match want["cond"].as_str().unwrap() {
            "cond" => Branch::Positive,
            _ => Branch::Negative,
        };
        let want_t = want["t_model"][0].as_f64().unwrap() as f32;
        assert_eq!(*branch, want_branch, "{file}: call {j} branch");
        assert_eq!(*t, want_t, "{file}: call {j} model time");
    }
}

#[test]
fn dense_sparse_structure_sampler_with_rescale() {
    check("ss", "sparse_structure_flow_model");
}

#[test]
fn sparse_shape_sampler_guidance_interval_and_rescale() {
    check("shape_slat", "shape_slat_flow_model_512");
}

#[test]
fn sparse_shape_cfg_only_sampler() {
    check("shape_slat_cfg_only", "shape_slat_flow_model_512");
}

#[test]
fn texture_sampler_without_guidance_uses_one_call_per_step() {
    check("tex_slat", "tex_slat_flow_model_512");
}
