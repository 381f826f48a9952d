//! The whole tiny pipeline against the golden `pipeline/pipeline_<type>.safetensors` runs
//! (upstream `Trellis2ImageTo3DPipeline.run` stage by stage, noise injected): every stored
//! tensor, integers exactly and floats within 1e-4 of max|ref|.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use common::Golden;
use trellis2::image::load_image;
use trellis2::models::WeightMemory;
use trellis2::pipeline::models::{DTypeChoice, LoadOptions};
use trellis2::pipeline::{
    BatchItem, BatchOrder, Generated, NoProgress, NoiseSource, Picture, Pipeline, PipelineType,
    RunOptions, SamplerOverrides, SamplerStage, DEFAULT_MAX_TOKENS,
};
use trellis2::weights::ModelDir;

const TOL: f32 = 1e-4;

/// The noise tensors of the golden file, plus those its metadata says are stored in another
/// file (`stored_elsewhere`).
fn noise_of(golden: &Golden) -> HashMap<String, Tensor> {
    let mut noise: HashMap<String, Tensor> = golden
        .tensors
        .iter()
        .filter(|(k, _)| k.ends_with(".noise"))
        .map(|(k, t)| (k.clone(), t.clone()))
        .collect();
    if let Some(elsewhere) = golden
        .metadata
        .get("stored_elsewhere")
        .and_then(|v| v.as_object())
    {
        for (key, file) in elsewhere.iter().filter(|(k, _)| k.ends_with(".noise")) {
            let other = Golden::open(&format!("golden/{}", file.as_str().unwrap()));
            noise.insert(key.clone(), other.get(key).clone());
        }
    }
    // `1536_cascade` stops after the high-resolution shape latent, so it stores no texture
    // noise; the run still textures and decodes, with ordinary noise that is not compared.
    if !noise.contains_key("tex.noise") {
        let n = noise["shape_hr.noise"].dim(0).unwrap();
        let values = trellis2::rng::TorchRng::new(0).randn(n * 32);
        noise.insert(
            "tex.noise".into(),
            Tensor::from_vec(values, (n, 32), &Device::Cpu).unwrap(),
        );
    }
    noise
}

/// The golden sampler parameters (steps etc.) as overrides.
fn overrides(golden: &Golden) -> SamplerOverrides {
    let mut o = SamplerOverrides::default();
    for stage in SamplerStage::ALL {
        let p = &golden.metadata["sampler_params"][stage.name()];
        let s = o.for_stage_mut(stage);
        s.steps = Some(p["steps"].as_u64().unwrap() as usize);
        s.guidance_strength = p["guidance_strength"].as_f64();
        s.guidance_rescale = p["guidance_rescale"].as_f64();
    }
    o
}

fn run(golden: &Golden) -> Generated {
    run_with(golden, LoadOptions::default())
}

fn run_with(golden: &Golden, load: LoadOptions) -> Generated {
    run_noise(golden, load, NoiseSource::Injected(noise_of(golden)))
}

fn run_noise(golden: &Golden, load: LoadOptions, noise: NoiseSource) -> Generated {
    let dir = ModelDir::open(&common::fixture("golden")).unwrap();
    let mut pipeline = Pipeline::new(dir, Device::Cpu)
        .unwrap()
        .with_load_options(load)
        .unwrap();
    pipeline.apply_overrides(&overrides(golden)).unwrap();
    let image = load_image(&common::fixture(&format!(
        "golden/{}",
        golden.metadata["image"].as_str().unwrap()
    )))
    .unwrap();
    let ptype: PipelineType = golden.metadata["pipeline_type"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let options = RunOptions {
        pipeline_type: Some(ptype),
        noise,
        max_tokens: golden
            .metadata
            .get("max_num_tokens")
            .and_then(|v| v.as_u64())
            .map_or(DEFAULT_MAX_TOKENS, |v| v as usize),
        background: Default::default(),
    };
    pipeline.generate(&image, options, &mut NoProgress).unwrap()
}

/// Compares every tensor the golden file stores; returns how many.
fn check_all(name: &str, golden: &Golden, out: &Generated) -> usize {
    let mut keys: Vec<&String> = golden.tensors.keys().collect();
    keys.sort();
    let mut worst = 0f32;
    for key in &keys {
        let want = golden.get(key);
        let ours = out
            .latents
            .get(key)
            .unwrap_or_else(|| panic!("{name}: the run has no `{key}`"));
        assert_eq!(ours.dims(), want.dims(), "{name}: `{key}` shape");
        if want.dtype().is_float() {
            let err = golden.rel_err(key, ours);
            println!("{name} {key:<32} max|err|/max|ref| = {err:e}");
            worst = worst.max(err);
        } else {
            let (a, b) = (common::int_values(ours), common::int_values(want));
            let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
            println!("{name} {key:<32} exact: {differ} of {} differ", b.len());
            assert_eq!(differ, 0, "{name}: `{key}` differs");
        }
    }
    assert!(
        worst <= TOL,
        "{name}: worst float error {worst:e} > {TOL:e}"
    );
    assert_eq!(
        out.resolution as u64,
        golden.metadata["resolution"].as_u64().unwrap(),
        "{name}: resolution"
    );
    keys.len()
}

/// The output type agrees with the named tensors.
fn check_object(out: &Generated) {
    let v = out.latents.get("mesh.0.vertices").unwrap();
    let f = out.latents.get("mesh.0.faces").unwrap();
    let nv = v.dim(0).unwrap();
    assert_eq!(out.dual_vertices.len(), nv);
    assert_eq!(out.voxel_coords.len(), nv);
    assert_eq!(out.voxel_attrs.len(), nv);
    let flat: Vec<f32> = v.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(
        out.dual_vertices
            .iter()
            .flatten()
            .copied()
            .collect::<Vec<_>>(),
        flat
    );
    assert_eq!(&out.mesh.vertices[..nv], &out.dual_vertices[..]);
    assert_eq!(out.mesh.vertices.len(), nv + out.fill_holes.holes_filled);
    assert!(out.mesh.faces.len() >= f.dim(0).unwrap());
    let attrs: Vec<f32> = out
        .latents
        .get("tex_voxels.feats")
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(
        out.voxel_attrs
            .iter()
            .flatten()
            .copied()
            .collect::<Vec<_>>(),
        attrs
    );
    let stages: Vec<&str> = out.stages.iter().map(|s| s.stage.as_str()).collect();
    println!("stages: {stages:?}");
    for s in &out.stages {
        println!(
            "  {:<16} {:>8.3} s  tokens {:?}  voxels {:?}  calls {}  peak RSS {:?} MiB",
            s.stage,
            s.seconds,
            s.tokens,
            s.voxels,
            s.model_calls,
            s.peak_rss_bytes.map(|b| b >> 20)
        );
    }
}

#[test]
fn pipeline_512_matches_golden() {
    let golden = Golden::open("golden/pipeline/pipeline_512.safetensors");
    let out = run(&golden);
    let n = check_all("512", &golden, &out);
    assert!(n >= 30, "compared {n} tensors");
    check_object(&out);
    // Flow stages count their transformer FLOPs; the others have none.
    for s in &out.stages {
        let flows = ["sparse_structure", "shape", "texture"].contains(&s.stage.as_str());
        assert_eq!(
            s.flops.is_some_and(|f| f > 0.0),
            flows,
            "{}: flops {:?}",
            s.stage,
            s.flops
        );
        assert!(s.peak_gpu_bytes.is_none(), "no GPU probe on the CPU");
    }
}

#[test]
fn pipeline_1024_cascade_matches_golden() {
    let golden = Golden::open("golden/pipeline/pipeline_1024_cascade.safetensors");
    let out = run(&golden);
    check_all("1024_cascade", &golden, &out);
    check_object(&out);
    let stages: Vec<&str> = out.stages.iter().map(|s| s.stage.as_str()).collect();
    assert_eq!(
        stages,
        [
            "preprocess",
            "conditioning",
            "sparse_structure",
            "shape_lr",
            "cascade",
            "shape_hr",
            "shape_decode",
            "texture",
            "texture_decode"
        ]
    );
}

#[test]
fn pipeline_1536_cascade_token_budget_path_matches_golden() {
    let golden = Golden::open("golden/pipeline/pipeline_1536_cascade.safetensors");
    let out = run(&golden);
    check_all("1536_cascade", &golden, &out);
}

/// `--low-memory`: transformer blocks read from the checkpoint at every use and cross-attention
/// K/V projected per block give the same run (the same arithmetic, other memory).
#[test]
fn streamed_weights_match_golden() {
    let golden = Golden::open("golden/pipeline/pipeline_1024_cascade.safetensors");
    let load = LoadOptions {
        memory: WeightMemory::Streamed,
        ..Default::default()
    };
    let out = run_with(&golden, load);
    check_all("1024_cascade streamed", &golden, &out);
    check_object(&out);
}

/// `--dtype f16` on the CPU: every model computes with half-precision weights and
/// activations (fp32 islands kept) and the run completes. The conditioning is compared with the
/// f32 golden, the sparse-structure latents with an f32 run on the same seed, at half-precision
/// tolerance. Seeded rather than the golden's injected noise: later stages depend on thresholded
/// occupancy, which half precision may flip by a voxel on random weights, and injected noise
/// must match the token count exactly.
#[test]
fn half_precision_runs_stay_close_to_f32() {
    let golden = Golden::open("golden/pipeline/pipeline_512.safetensors");
    let seeded = |load| run_noise(&golden, load, NoiseSource::Seed(42));
    let full = seeded(LoadOptions::default());
    for (dtype, tol) in [(DTypeChoice::F16, 1e-2f32)] {
        let load = LoadOptions {
            dtype,
            ..Default::default()
        };
        let out = seeded(load);
        for key in ["cond_512", "ss.x_t.1", "ss.x_t.5"] {
            let Some(ours) = out.latents.get(key) else {
                continue;
            };
            assert_eq!(ours.dtype(), DType::F32, "{dtype:?}: `{key}` leaves as f32");
            let err = if key == "cond_512" {
                golden.rel_err(key, ours)
            } else {
                let want = full
                    .latents
                    .get(key)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let got = ours.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                common::max_abs_diff(&got, &want) / scale
            };
            println!("{dtype:?} {key:<12} max|err|/max|ref| = {err:.2e} (tolerance {tol:.0e})");
            assert!(err <= tol, "{dtype:?}: `{key}` off by {err}");
        }
        assert!(out.mesh.vertices.iter().flatten().all(|v| v.is_finite()));
    }
}

/// bf16 has no CPU matmul in candle: refused up front, not mid-run.
#[test]
fn bf16_on_the_cpu_is_refused_with_a_reason() {
    let dir = ModelDir::open(&common::fixture("golden")).unwrap();
    let load = LoadOptions {
        dtype: DTypeChoice::Bf16,
        ..Default::default()
    };
    let err = Pipeline::new(dir, Device::Cpu)
        .unwrap()
        .with_load_options(load)
        .err()
        .expect("bf16 on the CPU must be refused");
    assert!(err.to_string().contains("--dtype bf16"), "{err}");
}

/// Token counts per candidate resolution from the golden upsampled coordinates (README §3.4:
/// 1536 → 189, 1408 → 679, 1280 → 286, 1152 → 220, 1024 → 174; not monotonic), and the
/// budget loop stepping all the way down to 1024 when nothing fits.
#[test]
fn cascade_quantisation_counts_and_budget_backoff() {
    use trellis2::pipeline::cascade::{choose_resolution, quantize_coords};
    let golden = Golden::open("golden/pipeline/pipeline_1024_cascade.safetensors");
    let up: Vec<[i32; 4]> = golden
        .get("cascade.upsample4.coords")
        .flatten_all()
        .unwrap()
        .to_vec1::<i32>()
        .unwrap()
        .chunks_exact(4)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect();
    for (res, want) in [
        (1536, 189),
        (1408, 679),
        (1280, 286),
        (1152, 220),
        (1024, 174),
    ] {
        let q = quantize_coords(&up, res).unwrap();
        assert_eq!(q.len(), want, "tokens at {res}");
        assert!(
            q.windows(2).all(|w| w[0] < w[1]),
            "sorted unique rows at {res}"
        );
    }
    let hr: Vec<i32> = golden
        .get("shape_hr.coords")
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let (res, q) = choose_resolution(&up, 1024, DEFAULT_MAX_TOKENS).unwrap();
    assert_eq!(res, 1024);
    assert_eq!(q.into_iter().flatten().collect::<Vec<_>>(), hr);
    assert_eq!(choose_resolution(&up, 1536, 190).unwrap().0, 1536);
    // 189 tokens ≥ 150 at 1536, and every lower candidate too: back off to 1024.
    let (res, q) = choose_resolution(&up, 1536, 150).unwrap();
    assert_eq!((res, q.len()), (1024, 174));
}

/// A batch gives every picture the result of a run of its own, bit for bit, in either order,
/// and reads each model once: the cascade covers every step (the shape decoder serves both the
/// cascade and the decode).
#[test]
fn batch_orders_match_single_runs_and_load_each_model_once() {
    let golden = Golden::open("golden/pipeline/pipeline_1024_cascade.safetensors");
    let dir = || ModelDir::open(&common::fixture("golden")).unwrap();
    let new_pipeline = || {
        let mut p = Pipeline::new(dir(), Device::Cpu).unwrap();
        p.apply_overrides(&overrides(&golden)).unwrap();
        p
    };
    let image_path = common::fixture(&format!(
        "golden/{}",
        golden.metadata["image"].as_str().unwrap()
    ));
    let image = load_image(&image_path).unwrap();
    let seeds = [3u64, 42];
    let options = |seed| RunOptions {
        pipeline_type: Some(PipelineType::Cascade1024),
        ..RunOptions::seeded(seed)
    };
    let singles: Vec<Generated> = seeds
        .iter()
        .map(|&s| {
            new_pipeline()
                .generate(&image, options(s), &mut NoProgress)
                .unwrap()
        })
        .collect();
    for order in [BatchOrder::PictureMajor, BatchOrder::StageMajor] {
        let pipeline = new_pipeline();
        let items = seeds
            .iter()
            .map(|&s| BatchItem {
                picture: Picture::File(&image_path),
                options: options(s),
            })
            .collect();
        let mut results: Vec<Option<Generated>> = vec![None, None];
        pipeline.generate_batch(items, order, &mut NoProgress, &mut |i, r, _| {
            assert!(results[i].is_none(), "{order:?}: item {i} finished twice");
            results[i] = Some(r.unwrap());
        });
        for (i, (single, batched)) in singles.iter().zip(&results).enumerate() {
            let batched = batched
                .as_ref()
                .unwrap_or_else(|| panic!("{order:?}: item {i}"));
            assert_same_run(&format!("{order:?} item {i}"), single, batched);
        }
        let loads = pipeline.model_loads();
        let roles: Vec<&str> = loads.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            roles,
            [
                "image_cond_model",
                "shape_slat_decoder",
                "shape_slat_flow_model_1024",
                "shape_slat_flow_model_512",
                "sparse_structure_decoder",
                "sparse_structure_flow_model",
                "tex_slat_decoder",
                "tex_slat_flow_model_1024"
            ],
            "{order:?}"
        );
        for (role, l) in &loads {
            assert_eq!(l.loads, 1, "{order:?}: {role} loaded {} times", l.loads);
        }
    }
    // The seeds differ, so the runs must too (the comparison above is not vacuous).
    assert_ne!(singles[0].voxel_attrs, singles[1].voxel_attrs);
}

/// A failing picture is reported at once and the rest of the batch goes on.
#[test]
fn batch_goes_on_past_a_failing_picture() {
    let dir = ModelDir::open(&common::fixture("golden")).unwrap();
    let mut pipeline = Pipeline::new(dir, Device::Cpu).unwrap();
    let mut o = SamplerOverrides::default();
    for stage in SamplerStage::ALL {
        o.for_stage_mut(stage).steps = Some(1);
    }
    pipeline.apply_overrides(&o).unwrap();
    let good = common::fixture(
        "golden/images/0a34fae7ba57cb8870df5325b9c30ea474def1b0913c19c596655b85a79fdee4.webp",
    );
    let missing = std::path::PathBuf::from("/nonexistent/picture.png");
    for order in [BatchOrder::PictureMajor, BatchOrder::StageMajor] {
        let items = [&missing, &good]
            .iter()
            .map(|p| BatchItem {
                picture: Picture::File(p),
                options: RunOptions {
                    pipeline_type: Some(PipelineType::P512),
                    ..RunOptions::seeded(1)
                },
            })
            .collect();
        let mut seen = Vec::new();
        pipeline.generate_batch(items, order, &mut NoProgress, &mut |i, r, _| {
            seen.push((i, r.map_err(|e| format!("{e:#}"))));
        });
        assert_eq!(seen.len(), 2, "{order:?}");
        assert_eq!(seen[0].0, 0, "{order:?}: the failure comes first");
        let err = seen[0].1.as_ref().unwrap_err();
        assert!(err.contains("/nonexistent/picture.png"), "{order:?}: {err}");
        assert_eq!(seen[1].0, 1);
        assert!(
            seen[1].1.is_ok(),
            "{order:?}: {:?}",
            seen[1].1.as_ref().err()
        );
    }
}

fn assert_same_run(what: &str, a: &Generated, b: &Generated) {
    assert_eq!(a.resolution, b.resolution, "{what}");
    assert_eq!(a.mesh, b.mesh, "{what}: mesh");
    assert_eq!(a.voxel_coords, b.voxel_coords, "{what}: voxels");
    assert_eq!(a.voxel_attrs, b.voxel_attrs, "{what}: attributes");
    assert_eq!(a.dual_vertices, b.dual_vertices, "{what}: dual vertices");
    // The same intermediates; their order follows the schedule, which decodes the shape later
    // in a stage-major batch of several pictures (a latents file sorts them).
    fn sorted(g: &Generated) -> Vec<&str> {
        let mut n: Vec<&str> = g.latents.names().collect();
        n.sort_unstable();
        n
    }
    let names = sorted(a);
    assert_eq!(names, sorted(b), "{what}: latents");
    for name in names {
        let (x, y) = (a.latents.get(name).unwrap(), b.latents.get(name).unwrap());
        assert_eq!(x.dims(), y.dims(), "{what}: {name}");
        let (x, y) = (
            x.to_dtype(DType::F64).unwrap().flatten_all().unwrap(),
            y.to_dtype(DType::F64).unwrap().flatten_all().unwrap(),
        );
        let same = x
            .to_vec1::<f64>()
            .unwrap()
            .iter()
            .zip(y.to_vec1::<f64>().unwrap())
            .all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same, "{what}: {name} differs");
    }
}
