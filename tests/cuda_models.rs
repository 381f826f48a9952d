//! The tiny golden models (real architectures, random weights; `tests/fixtures/golden`) through
//! the public model API on CUDA, against the same forward on the CPU: every float output must
//! agree within bf16 tolerance (the CUDA attention and sparse conv take bf16 operands). Built
//! only with the `cuda` feature; needs CUDA device 0 and fails without one.
//! Run: `cargo test --release --features cuda --test cuda_models -- --nocapture`.
#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Device, Tensor};
use trellis2::dev::forward::{forward, Inputs};
use trellis2::export::tensors::read_tensors;
use trellis2::models::dit::{DitConfig, FlowDit};
use trellis2::models::registry::ModelSource;
use trellis2::ops::tuning::{GuidedBatch, Tuning};
use trellis2::pipeline::flow_model::{DitVelocity, FlowTokens};
use trellis2::pipeline::sampler::VelocityModel;
use trellis2::selftest::tensor_rel_err;
use trellis2::weights::Checkpoint;

/// bf16 operands through a few layers of a random-weight model.
const TOL: f32 = 5e-2;

fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    tensor_rel_err(got, want).unwrap()
}

/// `guide`: another model's golden io file whose `subs.*` tensors join the inputs (the texture
/// decoder's subdivision guide comes from the shape decoder).
fn cuda_matches_cpu(role: &str, guide: Option<&str>) {
    let gpu = Device::new_cuda(0).expect("CUDA device 0: these tests need an NVIDIA GPU");
    let source = ModelSource::open(&common::fixture(&format!("golden/models/{role}"))).unwrap();
    let io = common::fixture(&format!("golden/golden/{role}.io.safetensors"));
    let read = |device: &Device| {
        let mut t = read_tensors(&io, device).unwrap();
        if let Some(g) = guide {
            let g = common::fixture(&format!("golden/golden/{g}.io.safetensors"));
            let g = read_tensors(&g, device).unwrap();
            t.extend(g.into_iter().filter(|(k, _)| k.starts_with("subs.")));
        }
        t
    };
    let (cpu_io, gpu_io) = (read(&Device::Cpu), read(&gpu));
    let want = forward(&source, &Inputs::new(role, &cpu_io), &Device::Cpu).unwrap();
    let got = forward(&source, &Inputs::new(role, &gpu_io), &gpu).unwrap();
    assert_eq!(got.len(), want.len(), "{role}: number of outputs");
    for ((name, g), (wname, w)) in got.iter().zip(&want) {
        assert_eq!(name, wname);
        assert!(g.device().is_cuda(), "{role}/{name} left the GPU");
        if name.starts_with("mesh.") {
            // Extracted from thresholded edge flags, which bf16 operands may flip on random
            // weights: the counts must agree within 1%, the values are not comparable.
            let (gn, wn) = (g.dim(0).unwrap() as f64, w.dim(0).unwrap() as f64);
            println!("{role:<28} {name:<20} rows {gn} vs CPU {wn}");
            assert!(
                (gn - wn).abs() <= 0.01 * wn,
                "{role}/{name}: {gn} rows vs {wn}"
            );
            continue;
        }
        assert_eq!(g.dims(), w.dims(), "{role}/{name}: shape");
        if !w.dtype().is_float() {
            continue;
        }
        let err = rel_err(&g.to_device(&Device::Cpu).unwrap(), w);
        println!(
            "{role:<28} {name:<20} {:?}: max|err|/max|ref| = {err:.2e}",
            w.dims()
        );
        assert!(err <= TOL, "{role}/{name}: error {err} over {TOL}");
    }
}

#[test]
fn dinov3_on_cuda() {
    cuda_matches_cpu("image_cond_model", None);
}

#[test]
fn sparse_structure_flow_on_cuda() {
    cuda_matches_cpu("sparse_structure_flow_model", None);
}

#[test]
fn shape_flow_on_cuda() {
    cuda_matches_cpu("shape_slat_flow_model_512", None);
}

/// A guided step's two velocities as one forward of twice the batch (`TRELLIS2_GUIDED_BATCH=on`)
/// against two forwards (`off`) on the GPU, for the dense flow (B = 1) and the sparse flows
/// (B = 2, with and without `concat_cond`), with the golden samplers' inputs. Only the GEMMs'
/// row count differs, so the two agree within the rounding of the bf16 attention operands.
#[test]
fn guided_batch_on_cuda() {
    let gpu = Device::new_cuda(0).expect("CUDA device 0: these tests need an NVIDIA GPU");
    for (role, file) in [
        ("sparse_structure_flow_model", "ss"),
        ("shape_slat_flow_model_512", "shape_slat"),
        ("tex_slat_flow_model_512", "tex_slat"),
    ] {
        let stem = common::fixture(&format!("golden/models/{role}"));
        let ckpt = Checkpoint::open_stem(&stem).unwrap();
        let cfg: DitConfig = serde_json::from_value(ckpt.config.clone().unwrap().args).unwrap();
        let golden = common::fixture(&format!("golden/sampler/{file}.safetensors"));
        let io = read_tensors(&golden, &gpu).unwrap();
        let (noise, cond) = (&io["noise"], &io["cond"]);
        for dtype in [DType::F32, DType::BF16] {
            let model = FlowDit::load(&cfg, &ckpt, dtype, &gpu).unwrap();
            let velocity = |guided: GuidedBatch| {
                let tokens = match io.get("coords") {
                    Some(coords) => FlowTokens::Sparse {
                        coords,
                        concat_cond: io.get("concat_cond.feats"),
                    },
                    None => FlowTokens::Dense,
                };
                let tuning = Tuning {
                    guided_batch: guided,
                    ..Tuning::current()
                };
                tuning.with(|| DitVelocity::new(&model, cond, tokens).unwrap())
            };
            // `auto` is on for a resident model on CUDA.
            assert!(velocity(GuidedBatch::Auto).guided_batch(), "{role}");
            let pair = |guided: GuidedBatch| {
                let mut v = velocity(guided);
                assert_eq!(v.guided_batch(), guided == GuidedBatch::On);
                v.velocity_guided(noise, 750.0).unwrap()
            };
            let (pos_on, neg_on) = pair(GuidedBatch::On);
            let (pos_off, neg_off) = pair(GuidedBatch::Off);
            assert!(pos_on.device().is_cuda() && neg_on.device().is_cuda());
            let cpu = |t: &Tensor| t.to_device(&Device::Cpu).unwrap();
            let (ep, en) = (
                rel_err(&cpu(&pos_on), &cpu(&pos_off)),
                rel_err(&cpu(&neg_on), &cpu(&neg_off)),
            );
            println!(
                "{role:<28} {dtype:?} guided batch vs two forwards: max|err|/max|ref| positive \
                 {ep:.2e}, negative {en:.2e}"
            );
            assert!(ep <= 1e-2 && en <= 1e-2, "{role} {dtype:?}: {ep} {en}");
            // The halves are not swapped: the branches differ by more than the tolerance.
            assert!(rel_err(&cpu(&pos_on), &cpu(&neg_off)) > 5e-2, "{role}");
        }
    }
}

#[test]
fn sparse_structure_decoder_on_cuda() {
    cuda_matches_cpu("sparse_structure_decoder", None);
}

#[test]
fn shape_decoder_on_cuda() {
    cuda_matches_cpu("shape_slat_decoder", None);
}

#[test]
fn texture_decoder_on_cuda() {
    cuda_matches_cpu("tex_slat_decoder", Some("shape_slat_decoder"));
}

/// The whole tiny pipeline (`--pipeline 512`, seeded) on CUDA in each compute dtype against the
/// same run on the CPU: the conditioning and every sparse-structure sampler state within bf16
/// tolerance, and a mesh at the end (later stages follow thresholded occupancy, which reduced
/// precision may flip on random weights, so they are not compared value by value).
#[test]
fn whole_pipeline_on_cuda() {
    use trellis2::image::load_image;
    use trellis2::models::WeightMemory;
    use trellis2::pipeline::models::{DTypeChoice, LoadOptions};
    use trellis2::pipeline::{NoProgress, Pipeline, PipelineType, RunOptions};
    use trellis2::weights::ModelDir;

    let gpu = Device::new_cuda(0).expect("CUDA device 0: these tests need an NVIDIA GPU");
    let image =
        load_image(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/T.png"))
            .unwrap();
    let run = |device: &Device, load: LoadOptions| {
        let dir = ModelDir::open(&common::fixture("golden")).unwrap();
        let pipeline = Pipeline::new(dir, device.clone())
            .unwrap()
            .with_load_options(load)
            .unwrap();
        let mut options = RunOptions::seeded(42);
        options.pipeline_type = Some(PipelineType::P512);
        pipeline.generate(&image, options, &mut NoProgress).unwrap()
    };
    let want = run(&Device::Cpu, LoadOptions::default());
    for (dtype, memory) in [
        (DTypeChoice::Auto, WeightMemory::Resident),
        (DTypeChoice::Bf16, WeightMemory::Resident),
        (DTypeChoice::F16, WeightMemory::Streamed),
    ] {
        let got = run(&gpu, LoadOptions { dtype, memory });
        for key in ["cond_512", "ss.x_t.1", "ss.x_t.2"] {
            let (Some(g), Some(w)) = (got.latents.get(key), want.latents.get(key)) else {
                continue;
            };
            let err = rel_err(&g.to_device(&Device::Cpu).unwrap(), w);
            println!("pipeline 512 {dtype:?}/{memory:?} {key:<10} max|err|/max|ref| = {err:.2e}");
            assert!(err <= TOL, "{dtype:?}: {key} off by {err}");
        }
        assert!(!got.mesh.faces.is_empty(), "{dtype:?}: empty mesh");
        for s in &got.stages {
            println!("  {:<16} {:>8.3} s", s.stage, s.seconds);
        }
    }
}

/// BiRefNet (Swin backbone, deformable-conv decoder; the tiny golden weights) on CUDA against
/// the CPU: the background remover runs on the pipeline's device.
#[test]
fn birefnet_on_cuda() {
    use trellis2::models::birefnet::BiRefNet;
    let gpu = Device::new_cuda(0).expect("CUDA device 0: these tests need an NVIDIA GPU");
    let dir = common::fixture("golden/birefnet");
    let input = &read_tensors(&dir.join("input.safetensors"), &Device::Cpu).unwrap()["image"];
    let want = BiRefNet::open(&dir, &Device::Cpu)
        .unwrap()
        .forward(input)
        .unwrap();
    let got = BiRefNet::open(&dir, &gpu)
        .unwrap()
        .forward(&input.to_device(&gpu).unwrap())
        .unwrap();
    assert!(got.device().is_cuda());
    let err = rel_err(&got.to_device(&Device::Cpu).unwrap(), &want);
    println!(
        "birefnet logits {:?}: max|err|/max|ref| = {err:.2e}",
        want.dims()
    );
    assert!(err <= TOL, "BiRefNet on CUDA off by {err}");
}

/// The texturing pipeline's shape encoder (tests/fixtures/texturing) on CUDA against the CPU:
/// the latent's coordinates identical, its mean and logvar within tolerance, nothing leaving
/// the GPU (the space→channel gather and its downsampling included).
#[test]
fn shape_encoder_on_cuda() {
    let gpu = Device::new_cuda(0).expect("CUDA device 0: these tests need an NVIDIA GPU");
    let source =
        ModelSource::open(&common::fixture("texturing/models/shape_slat_encoder")).unwrap();
    let io = common::fixture("texturing/encoder/icosphere.64.io.safetensors");
    let (cpu_io, gpu_io) = (
        read_tensors(&io, &Device::Cpu).unwrap(),
        read_tensors(&io, &gpu).unwrap(),
    );
    let want = forward(&source, &Inputs::new("encoder", &cpu_io), &Device::Cpu).unwrap();
    let got = forward(&source, &Inputs::new("encoder", &gpu_io), &gpu).unwrap();
    for ((name, g), (_, w)) in got.iter().zip(&want) {
        assert!(g.device().is_cuda(), "encoder/{name} left the GPU");
        let g = g.to_device(&Device::Cpu).unwrap();
        if !w.dtype().is_float() {
            assert_eq!(
                g.flatten_all().unwrap().to_vec1::<i32>().unwrap(),
                w.flatten_all().unwrap().to_vec1::<i32>().unwrap(),
                "encoder/{name}"
            );
            continue;
        }
        let err = rel_err(&g, w);
        println!(
            "shape encoder {name:<10} {:?}: max|err|/max|ref| = {err:.2e}",
            w.dims()
        );
        assert!(err <= TOL, "encoder/{name}: error {err} over {TOL}");
    }
}
