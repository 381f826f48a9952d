//! The flow-Euler sampler against the golden `sampler/*` runs (upstream samplers driving the
//! tiny flow models on CPU, f32): every intermediate sample `x_t.i` and every stored raw model
//! output `model_call.j.out`, plus the call order and model times of the metadata; and a guided
//! step's two calls as one forward of twice the batch (`TRELLIS2_GUIDED_BATCH=on`) against the
//! two forwards.

mod common;

use candle_core::{DType, Device, Tensor};
use common::Golden;
use trellis2::models::dit::{DitConfig, FlowDit};
use trellis2::ops::tuning::{GuidedBatch, Tuning};
use trellis2::pipeline::flow_model::{sparse_layout, DitVelocity, FlowTokens};
use trellis2::pipeline::sampler::{
    sample, Branch, LatentLayout, SamplerEvent, SamplerParams, VelocityModel, SIGMA_MIN,
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

/// `DitVelocity::new` under `TRELLIS2_GUIDED_BATCH=guided`.
fn velocity<'a>(
    model: &'a FlowDit,
    cond: &Tensor,
    tokens: FlowTokens<'a>,
    guided: GuidedBatch,
) -> DitVelocity<'a> {
    let tuning = Tuning {
        guided_batch: guided,
        ..Tuning::current()
    };
    let v = tuning.with(|| DitVelocity::new(model, cond, tokens).unwrap());
    // On the CPU `auto` keeps two forwards (the golden parity).
    assert_eq!(v.guided_batch(), guided == GuidedBatch::On);
    v
}

/// Runs one golden sampler file with `role`'s model and checks everything it stores, with
/// `TRELLIS2_GUIDED_BATCH=guided`.
fn check(file: &str, role: &str, guided: GuidedBatch) {
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
    let mut velocity = velocity(&model, cond, tokens, guided);
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
    check("ss", "sparse_structure_flow_model", GuidedBatch::Auto);
    check("ss", "sparse_structure_flow_model", GuidedBatch::On);
}

#[test]
fn sparse_shape_sampler_guidance_interval_and_rescale() {
    check("shape_slat", "shape_slat_flow_model_512", GuidedBatch::Auto);
    check("shape_slat", "shape_slat_flow_model_512", GuidedBatch::On);
}

#[test]
fn sparse_shape_cfg_only_sampler() {
    check(
        "shape_slat_cfg_only",
        "shape_slat_flow_model_512",
        GuidedBatch::Off,
    );
    check(
        "shape_slat_cfg_only",
        "shape_slat_flow_model_512",
        GuidedBatch::On,
    );
}

#[test]
fn texture_sampler_without_guidance_uses_one_call_per_step() {
    check("tex_slat", "tex_slat_flow_model_512", GuidedBatch::Auto);
}

/// Deterministic values in about [−1, 1).
fn values(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// One guided step's two velocities by one forward of 2B and by two forwards of B; the FLOPs
/// counted are those of the two forwards either way.
fn guided_pair_matches(
    what: &str,
    model: &FlowDit,
    x: &Tensor,
    cond: &Tensor,
    tokens: impl Fn() -> FlowTokens<'static>,
    tokens_per_sample: usize,
) {
    let mut on = velocity(model, cond, tokens(), GuidedBatch::On);
    let mut off = velocity(model, cond, tokens(), GuidedBatch::Off);
    for t_model in [1000.0f32, 612.5] {
        let (pos_on, neg_on) = on.velocity_guided(x, t_model).unwrap();
        let (pos_off, neg_off) = off.velocity_guided(x, t_model).unwrap();
        // The two forwards are what `velocity` gives for each branch.
        let pos_one = off.velocity(x, t_model, Branch::Positive).unwrap();
        let neg_one = off.velocity(x, t_model, Branch::Negative).unwrap();
        assert_eq!(
            common::tensor_max_abs_diff(&pos_off, &pos_one),
            0.0,
            "{what}"
        );
        assert_eq!(
            common::tensor_max_abs_diff(&neg_off, &neg_one),
            0.0,
            "{what}"
        );
        let (dp, dn) = (
            common::tensor_max_abs_diff(&pos_on, &pos_off),
            common::tensor_max_abs_diff(&neg_on, &neg_off),
        );
        println!("{what} t {t_model}: batched vs two forwards max|diff| positive {dp:e}, negative {dn:e}");
        assert!(dp <= 1e-5 && dn <= 1e-5, "{what}: {dp:e} {dn:e}");
        // The branches differ, so a mix-up of the halves would show.
        let branches = common::tensor_max_abs_diff(&pos_on, &neg_on);
        println!("{what} t {t_model}: positive vs negative max|diff| {branches:e}");
        assert!(branches > 1e-3, "{what}");
    }
    let b = cond.dim(0).unwrap();
    let l = cond.dim(1).unwrap();
    let want = 2.0
        * b as f64
        * (model.forward_flops(tokens_per_sample, l) + model.forward_flops(tokens_per_sample, 0));
    assert_eq!(on.flops(), want, "{what}: FLOPs of the batched forwards");
    // `off` also ran the two single calls per step.
    assert_eq!(off.flops(), 2.0 * want, "{what}");
}

/// Leaks `t` for a `'static` borrow (a test's few tensors).
fn leak(t: Tensor) -> &'static Tensor {
    Box::leak(Box::new(t))
}

#[test]
fn guided_batch_gives_the_two_forwards_velocities_dense() {
    let model = load("sparse_structure_flow_model");
    let golden = Golden::open("golden/sampler/ss.safetensors");
    let (noise, cond) = (golden.get("noise"), golden.get("cond"));
    let cells = noise.elem_count() / noise.dim(1).unwrap();
    guided_pair_matches(
        "dense B=1",
        &model,
        noise,
        cond,
        || FlowTokens::Dense,
        cells,
    );
    let x2 = Tensor::cat(&[noise, &values(noise.dims(), 1)], 0).unwrap();
    let c2 = Tensor::cat(&[cond, &values(cond.dims(), 2)], 0).unwrap();
    guided_pair_matches("dense B=2", &model, &x2, &c2, || FlowTokens::Dense, cells);
}

#[test]
fn guided_batch_gives_the_two_forwards_velocities_sparse() {
    let golden = Golden::open("golden/sampler/tex_slat.safetensors");
    let coords = leak(golden.get("coords").clone());
    let cond = golden.get("cond");
    let noise = golden.get("noise");
    let concat = leak(golden.get("concat_cond.feats").clone());
    let LatentLayout::Sparse { offsets } = sparse_layout(coords, 2).unwrap() else {
        unreachable!()
    };
    assert!(offsets[1] > 0 && offsets[1] < offsets[2], "two samples");
    // B = 1: the first sample's rows.
    let rows = offsets[1];
    let coords1 = leak(coords.narrow(0, 0, rows).unwrap());
    let concat1 = leak(concat.narrow(0, 0, rows).unwrap());
    let cond1 = cond.narrow(0, 0, 1).unwrap();
    let noise1 = noise.narrow(0, 0, rows).unwrap();
    let shape = load("shape_slat_flow_model_512");
    let tex = load("tex_slat_flow_model_512");
    let sparse = |coords: &'static Tensor, concat_cond: Option<&'static Tensor>| {
        move || FlowTokens::Sparse {
            coords,
            concat_cond,
        }
    };
    guided_pair_matches(
        "sparse B=1",
        &shape,
        &noise1,
        &cond1,
        sparse(coords1, None),
        rows,
    );
    guided_pair_matches(
        "sparse B=1 concat_cond",
        &tex,
        &noise1,
        &cond1,
        sparse(coords1, Some(concat1)),
        rows,
    );
    // The FLOP count takes the mean tokens per sample, as the pipeline's does.
    let per = coords.dim(0).unwrap() / 2;
    guided_pair_matches("sparse B=2", &shape, noise, cond, sparse(coords, None), per);
    guided_pair_matches(
        "sparse B=2 concat_cond",
        &tex,
        noise,
        cond,
        sparse(coords, Some(concat)),
        per,
    );
}

/// The whole guided sampler with `TRELLIS2_GUIDED_BATCH=on` against `off`: the observers see
/// the same calls (index, branch, model time) in the same order with the same outputs, and the
/// final samples agree.
#[test]
fn guided_batch_sampler_sees_the_same_calls() {
    let golden = Golden::open("golden/sampler/shape_slat.safetensors");
    let model = load("shape_slat_flow_model_512");
    let p = params(&golden);
    let coords = golden.get("coords");
    let cond = golden.get("cond");
    let layout = sparse_layout(coords, 2).unwrap();
    let run = |guided: GuidedBatch| {
        let tokens = FlowTokens::Sparse {
            coords,
            concat_cond: None,
        };
        let mut v = velocity(&model, cond, tokens, guided);
        let mut calls = Vec::new();
        let out = sample(&mut v, golden.get("noise"), &layout, &p, &mut |event| {
            if let SamplerEvent::ModelCall {
                index,
                branch,
                t_model,
                out,
            } = event
            {
                calls.push((index, branch, t_model, out.clone()));
            }
            Ok(())
        })
        .unwrap();
        (calls, out, v.flops())
    };
    let (calls_on, out_on, flops_on) = run(GuidedBatch::On);
    let (calls_off, out_off, flops_off) = run(GuidedBatch::Off);
    assert_eq!(calls_on.len(), p.model_calls());
    assert_eq!(calls_on.len(), calls_off.len());
    let mut worst = 0f32;
    for (a, b) in calls_on.iter().zip(&calls_off) {
        assert_eq!((a.0, a.1, a.2), (b.0, b.1, b.2));
        worst = worst.max(common::tensor_max_abs_diff(&a.3, &b.3));
    }
    let last = common::tensor_max_abs_diff(&out_on, &out_off);
    println!("sampler batched vs two forwards: calls max|diff| {worst:e}, final {last:e}");
    assert!(worst <= 1e-5 && last <= 1e-5, "{worst:e} {last:e}");
    assert_eq!(flops_on, flops_off);
}
