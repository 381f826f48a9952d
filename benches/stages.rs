//! Every model of the pipeline at full size (random weights of the released shapes, written
//! from the manifests) on the upstream baseline's token counts: per stage wall time, forwards,
//! TFLOP/s (FLOPs as docs/MODEL.md §9 counts them) and peak memory — the CPU process's anonymous memory
//! (sampled every 2 ms; file-backed pages of the memory-mapped checkpoints are left out because
//! the kernel can drop them) and, on CUDA, the card's used memory (the pipeline's
//! `GpuMemoryProbe`, every 5 ms). The same stage list as `docs/BASELINE.md`, so the two tables line up.
//!
//! ```sh
//! cargo bench --bench stages -- [--device cpu|cuda|metal] [--dtype auto|f32|f16|bf16]
//!     [--low-memory] [--forwards N] [--tokens-512 N] [--tokens-1024 N] [--no-1024]
//!     [--stages NAME,NAME] [--cold] [--growth P|model]
//! ```
//! Like the baseline, stages are measured warm: one untimed pass first (`--cold` skips it), and
//! single-pass stages (DINOv3, the decoders) report the median of three runs. The decoders grow
//! as the baseline forced them to (`--growth 0.5825`: each child kept with probability
//! 4.66 / 8, ≈4.66 children per voxel and level: 3,704 → 1.74 M voxels at 512, 15,012 → 6.96 M
//! at 1024) through given subdivisions; `--growth model` lets the random weights decide.
//! On the CPU the release's token counts take hours; `--forwards 1 --tokens-512 512 --no-1024`
//! measures the memory of every model in minutes (weights dominate it).

#[path = "common/random_weights.rs"]
mod random_weights;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use random_weights::{manifest, random, write_random};
use trellis2::models::dinov3::{DinoV3, DinoV3Config};
use trellis2::models::dit::{DitConfig, FlowDit};
use trellis2::models::registry::ModelSource;
use trellis2::models::registry::{load_shape_decoder, load_ss_decoder, load_unet_decoder};
use trellis2::models::sc_vae::CASCADE_UPSAMPLE_TIMES;
use trellis2::models::WeightMemory;
use trellis2::ops::tuning::Tuning;
use trellis2::pipeline::cascade::{high_res_structure, MIN_CASCADE_RESOLUTION};
use trellis2::pipeline::config::SamplerStage;
use trellis2::pipeline::dev_forcing::{forced_subdivisions, shell_coords, BASELINE_GROWTH};
use trellis2::pipeline::device::{select, DeviceChoice};
use trellis2::pipeline::flow_model::{DitVelocity, FlowTokens};
use trellis2::pipeline::memory::GpuMemoryProbe;
use trellis2::pipeline::models::LoadOptions;
use trellis2::pipeline::sampler::{schedule, Branch, SamplerParams, VelocityModel};
use trellis2::pipeline::DEFAULT_MAX_TOKENS;
use trellis2::sparse::SparseTensor;

struct Opts {
    device: Device,
    load: LoadOptions,
    /// Overrides every flow stage's release forward count (pairs of guided calls, then one
    /// conditioned call if odd).
    forwards: Option<usize>,
    tokens_512: usize,
    tokens_1024: usize,
    with_1024: bool,
    only: Option<Vec<String>>,
    /// One untimed pass before each stage's measurement.
    warm: bool,
    /// Probability of keeping each child in the decoders' forced subdivisions; `None`: the
    /// model's own (random-weight) subdivisions.
    growth: Option<f64>,
}

fn parse() -> Result<Opts> {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let mut device = DeviceChoice::Cpu;
    let mut load = LoadOptions::default();
    let (mut forwards, mut tokens_512, mut tokens_1024) = (None, 3_704, 15_012);
    let (mut with_1024, mut only) = (true, None);
    let (mut warm, mut growth) = (true, Some(BASELINE_GROWTH));
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--device" => device = value()?.parse()?,
            "--dtype" => load.dtype = value()?.parse()?,
            "--low-memory" => load.memory = WeightMemory::Streamed,
            "--forwards" => forwards = Some(value()?.parse()?),
            "--tokens-512" => tokens_512 = value()?.parse()?,
            "--tokens-1024" => tokens_1024 = value()?.parse()?,
            "--no-1024" => with_1024 = false,
            "--stages" => only = Some(value()?.split(',').map(str::to_string).collect()),
            "--cold" => warm = false,
            "--growth" => {
                growth = match value()?.as_str() {
                    "model" => None,
                    p => Some(
                        p.parse()
                            .context("--growth takes a probability or `model`")?,
                    ),
                }
            }
            other => bail!("unknown argument {other}"),
        }
    }
    let device = select(device)?.device;
    load.check(&device)?;
    Ok(Opts {
        device,
        load,
        forwards,
        tokens_512,
        tokens_1024,
        with_1024,
        only,
        warm,
        growth,
    })
}

/// A 32-channel SC-VAE latent of random features on `coords`.
fn random_latent(coords: &[[i32; 4]], dev: &Device) -> Result<SparseTensor> {
    Ok(SparseTensor::new(
        &coords_tensor(coords, dev)?,
        rand_on(&[coords.len(), 32], 11, dev)?,
    )?)
}

/// Peak memory while a stage runs: anonymous RSS of this process (sampled here), and the GPU's
/// memory in use (the pipeline's own [`GpuMemoryProbe`], CUDA only).
struct MemoryProbe {
    stop: Arc<AtomicBool>,
    anon: std::thread::JoinHandle<u64>,
    gpu: Option<GpuMemoryProbe>,
}

fn rss_anon_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("RssAnon:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib << 10)
}

impl MemoryProbe {
    fn start(device: &Device) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let anon = std::thread::spawn(move || {
            let mut peak = rss_anon_bytes();
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(2));
                peak = peak.max(rss_anon_bytes());
            }
            peak
        });
        Self {
            stop,
            anon,
            gpu: GpuMemoryProbe::start(device),
        }
    }

    /// (peak anonymous RSS, peak GPU memory) in bytes.
    fn finish(self) -> (u64, Option<u64>) {
        self.stop.store(true, Ordering::Relaxed);
        let anon = self.anon.join().unwrap_or(0);
        (anon, self.gpu.and_then(GpuMemoryProbe::finish))
    }
}

struct Row {
    stage: String,
    shape: String,
    forwards: usize,
    seconds: f64,
    flops: Option<f64>,
    anon: u64,
    gpu: Option<u64>,
}

fn gib(b: u64) -> String {
    format!("{:.2}", b as f64 / (1u64 << 30) as f64)
}

impl Row {
    fn print(&self) {
        let tflops = self.flops.map_or("–".to_string(), |f| {
            format!("{:.1}", f / self.seconds / 1e12)
        });
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {} | {} | {} |",
            self.stage,
            self.shape,
            self.forwards,
            self.seconds * 1e3,
            self.seconds * 1e3 / self.forwards.max(1) as f64,
            tflops,
            gib(self.anon),
            self.gpu.map_or("–".to_string(), gib),
        );
    }
}

/// The model calls of one sampler step.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Step {
    /// Classifier-free guidance: the conditioned and the zero-condition velocity.
    Guided,
    One(Branch),
}

impl Step {
    fn forwards(self) -> usize {
        match self {
            Step::Guided => 2,
            Step::One(_) => 1,
        }
    }
}

/// The steps of a sampler run as `sample` makes them (`SamplerParams::strength_at`).
fn release_steps(params: &SamplerParams) -> Vec<Step> {
    schedule(params.steps, params.rescale_t)
        .iter()
        .take(params.steps)
        .map(|&t| {
            // The sampler's three cases, in its order.
            let g = params.strength_at(t);
            if g == 1.0 {
                Step::One(Branch::Positive)
            } else if g == 0.0 {
                Step::One(Branch::Negative)
            } else {
                Step::Guided
            }
        })
        .collect()
}

fn coords_tensor(coords: &[[i32; 4]], device: &Device) -> Result<Tensor> {
    let flat: Vec<i32> = coords.iter().flatten().copied().collect();
    Ok(Tensor::from_vec(flat, (coords.len(), 4), device)?)
}

fn rand_on(shape: &[usize], seed: u64, device: &Device) -> Result<Tensor> {
    let n = shape.iter().product();
    Ok(random(n, seed, DType::F32)?
        .reshape(shape)?
        .affine(20.0, 0.0)?
        .to_device(device)?)
}

/// `stem` + `suffix` (stems contain dots: `….decoder`).
fn suffixed(stem: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", stem.display()))
}

/// A random full-size checkpoint of a manifest, as a `ModelSource` (`<stem>.json` written beside it).
fn random_source(dir: &Path, name: &str, stored: DType) -> Result<ModelSource> {
    let (class, args) = manifest(name)?;
    let stem = dir.join(name);
    if class == "DINOv3ViTModel" {
        std::fs::create_dir_all(&stem)?;
        write_random(&stem.join("model.safetensors"), &class, &args, stored)?;
        std::fs::write(stem.join("config.json"), serde_json::to_vec(&args)?)?;
    } else {
        write_random(&suffixed(&stem, ".safetensors"), &class, &args, stored)?;
        let json = serde_json::json!({ "name": class, "args": args });
        std::fs::write(suffixed(&stem, ".json"), serde_json::to_vec(&json)?)?;
    }
    let source = ModelSource::open(&stem)?;
    // The mapping keeps the data alive; unlinking now keeps the temp dir at one model's size.
    if stem.is_dir() {
        std::fs::remove_dir_all(&stem)?;
    } else {
        std::fs::remove_file(suffixed(&stem, ".safetensors"))?;
    }
    Ok(source)
}

struct Bench {
    opts: Opts,
    dir: tempfile::TempDir,
    rows: Vec<Row>,
}

impl Bench {
    fn wanted(&self, stage: &str) -> bool {
        self.opts
            .only
            .as_ref()
            .is_none_or(|o| o.iter().any(|s| stage.starts_with(s.as_str())))
    }

    /// Runs `f` `forwards` times between device synchronisations, under a memory probe; after
    /// one untimed call when warm, and as the median of three runs for a single forward.
    fn measure(
        &mut self,
        stage: &str,
        shape: String,
        forwards: usize,
        flops: Option<f64>,
        f: impl FnMut(usize) -> Result<()>,
    ) -> Result<()> {
        self.measure_calls(stage, shape, forwards, forwards, flops, f)
    }

    /// [`Bench::measure`] with `calls` calls of `f` making the `forwards` forwards (a sampler
    /// step may make two in one call).
    fn measure_calls(
        &mut self,
        stage: &str,
        shape: String,
        forwards: usize,
        calls: usize,
        flops: Option<f64>,
        mut f: impl FnMut(usize) -> Result<()>,
    ) -> Result<()> {
        let probe = MemoryProbe::start(&self.opts.device);
        if self.opts.warm {
            f(0)?;
        }
        let runs = if forwards == 1 && self.opts.warm {
            3
        } else {
            1
        };
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            self.opts.device.synchronize()?;
            let t = Instant::now();
            for i in 0..calls {
                f(i)?;
            }
            self.opts.device.synchronize()?;
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let seconds = times[times.len() / 2];
        let (anon, gpu) = probe.finish();
        let row = Row {
            stage: stage.to_string(),
            shape,
            forwards,
            seconds,
            flops,
            anon,
            gpu,
        };
        row.print();
        self.rows.push(row);
        Ok(())
    }

    fn dinov3(&mut self) -> Result<()> {
        if !self.wanted("dinov3") {
            return Ok(());
        }
        let src = random_source(self.dir.path(), "dinov3_vitl16", DType::F32)?;
        let dev = self.opts.device.clone();
        let cfg: DinoV3Config = serde_json::from_value(src.args.clone())?;
        let dtype = self.opts.load.dtype_for(&src.checkpoint, &dev);
        let model = DinoV3::load(&cfg, &src.checkpoint, dtype, &dev)?;
        let sizes: &[usize] = if self.opts.with_1024 {
            &[512, 1024]
        } else {
            &[512]
        };
        for &size in sizes {
            let x = rand_on(&[1, 3, size, size], 7, &dev)?;
            let n = (size / 16).pow(2) + 5;
            // ViT-L: 2 FLOPs per parameter and token plus 4·N²·hidden per layer of attention.
            let flops = 2.0 * 303e6 * n as f64 + 24.0 * 4.0 * (n * n) as f64 * 1024.0;
            self.measure(
                &format!("DINOv3 @{size}"),
                format!("{n} tokens"),
                1,
                Some(flops),
                |_| {
                    model.features(&x)?;
                    Ok(())
                },
            )?;
        }
        Ok(())
    }

    /// One flow stage as its release sampler (`sampler`) calls the model: each step's calls
    /// through the pipeline's [`DitVelocity`], a guided step's two as one forward of twice the
    /// batch where `TRELLIS2_GUIDED_BATCH` resolves on (the sampler's own arithmetic, a few
    /// element-wise passes per step, is left out). `--forwards N` replaces the schedule by
    /// N / 2 guided steps (and one conditioned call if N is odd).
    fn flow(
        &mut self,
        stage: &str,
        manifest_name: &str,
        tokens: Option<&[[i32; 4]]>,
        cond_tokens: usize,
        sampler: SamplerStage,
    ) -> Result<()> {
        if !self.wanted(stage) {
            return Ok(());
        }
        let src = random_source(self.dir.path(), manifest_name, DType::BF16)?;
        let dev = self.opts.device.clone();
        let cfg: DitConfig = serde_json::from_value(src.args.clone())?;
        let dtype = self.opts.load.dtype_for(&src.checkpoint, &dev);
        let model = FlowDit::load_with(&cfg, &src.checkpoint, dtype, &dev, self.opts.load.memory)?;
        let cond = rand_on(&[1, cond_tokens, 1024], 3, &dev)?.affine(0.05, 0.0)?;
        let (x, coords, n) = match tokens {
            None => {
                let r = cfg.resolution;
                (
                    rand_on(&[1, cfg.in_channels, r, r, r], 5, &dev)?,
                    None,
                    r * r * r,
                )
            }
            Some(c) => (
                rand_on(&[c.len(), cfg.out_channels], 5, &dev)?,
                Some(coords_tensor(c, &dev)?),
                c.len(),
            ),
        };
        let concat = (cfg.in_channels > cfg.out_channels)
            .then(|| rand_on(&[n, cfg.in_channels - cfg.out_channels], 6, &dev))
            .transpose()?;
        let flow_tokens = match &coords {
            None => FlowTokens::Dense,
            Some(c) => FlowTokens::Sparse {
                coords: c,
                concat_cond: concat.as_ref(),
            },
        };
        let mut velocity = DitVelocity::new(&model, &cond, flow_tokens)?;
        let steps = match self.opts.forwards {
            Some(f) => {
                let mut steps = vec![Step::Guided; f / 2];
                if f % 2 == 1 {
                    steps.push(Step::One(Branch::Positive));
                }
                steps
            }
            None => release_steps(&sampler.release_params()),
        };
        let forwards: usize = steps.iter().map(|s| s.forwards()).sum();
        // Spec §9 counting (`DitConfig::forward_flops`); the zero condition needs no attention.
        let flops = steps
            .iter()
            .map(|s| match s {
                Step::Guided => model.forward_flops(n, cond_tokens) + model.forward_flops(n, 0),
                Step::One(Branch::Positive) => model.forward_flops(n, cond_tokens),
                Step::One(Branch::Negative) => model.forward_flops(n, 0),
            })
            .sum::<f64>();
        let batched = velocity.guided_batch() && steps.contains(&Step::Guided);
        let t = 500f32;
        let mut run = |step: Step| -> Result<()> {
            match step {
                Step::Guided => drop(velocity.velocity_guided(&x, t)?),
                Step::One(branch) => drop(velocity.velocity(&x, t, branch)?),
            }
            Ok(())
        };
        if self.opts.warm {
            // Every kind of step once, so none is cold in the timed run.
            let mut kinds = steps.clone();
            kinds.dedup();
            for &step in &kinds[1..] {
                run(step)?;
            }
        }
        self.measure_calls(
            stage,
            format!(
                "{n} × {cond_tokens}{}",
                if batched {
                    ", guided steps batched"
                } else {
                    ""
                }
            ),
            forwards,
            steps.len(),
            Some(flops),
            |i| run(steps[i]),
        )
    }

    fn ss_decoder(&mut self) -> Result<()> {
        if !self.wanted("ss_decoder") {
            return Ok(());
        }
        let name = "ss_dec_conv3d_16l8_fp16.decoder";
        let src = random_source(self.dir.path(), name, DType::F16)?;
        let dev = self.opts.device.clone();
        let dec = load_ss_decoder(&src, self.opts.load.dtype_for(&src.checkpoint, &dev), &dev)?;
        let z = rand_on(&[1, 8, 16, 16, 16], 9, &dev)?;
        // Spec §9 estimate (dense 3-D convs, mostly at 16³ with 512 channels).
        self.measure(
            "ss_decoder",
            "16³ → 64³".into(),
            1,
            Some(0.8e12),
            |_| {
                dec.forward(&z)?;
                Ok(())
            },
        )
    }

    /// The cascade's structure step: the shape decoder's `upsample(lr, 4)` (growth forced like
    /// the decoders') and the quantisation to the 1024 grid, as `pipeline::shape` runs them.
    fn cascade(&mut self, coords: &[[i32; 4]]) -> Result<()> {
        if !self.wanted("cascade") {
            return Ok(());
        }
        let dev = self.opts.device.clone();
        let latent = random_latent(coords, &dev)?;
        let src = random_source(
            self.dir.path(),
            "shape_vae_next_dc_f16c32_fp16.decoder",
            DType::F16,
        )?;
        let dtype = self.opts.load.dtype_for(&src.checkpoint, &dev);
        let dec = load_shape_decoder(&src, dtype, &dev)?;
        let forced = match self.opts.growth {
            Some(keep) => Some(forced_subdivisions(&latent, CASCADE_UPSAMPLE_TIMES, keep)?),
            None => None,
        };
        let batches = latent.coord_set().batch_end();
        let (mut voxels, mut cells) = (0, 0);
        let mut last_up = None;
        self.measure("cascade_upsample", String::new(), 1, None, |_| {
            let up = match &forced {
                Some(g) => dec
                    .net
                    .upsample_forced(&latent, CASCADE_UPSAMPLE_TIMES, g)?,
                None => dec.net.upsample(&latent, CASCADE_UPSAMPLE_TIMES)?,
            };
            let (_, hr, n) = high_res_structure(
                &up,
                batches,
                MIN_CASCADE_RESOLUTION,
                DEFAULT_MAX_TOKENS,
                &dev,
            )?;
            (voxels, cells) = (n, hr.dim(0)?);
            last_up = Some(up);
            Ok(())
        })?;
        if let Some(row) = self.rows.last_mut() {
            row.shape = format!("{} → {voxels} voxels → {cells} cells at 64³", coords.len());
        }
        if let Some(up) = last_up {
            self.time_quantisation(&up, batches)?;
        }
        Ok(())
    }

    /// The cascade stage's split: the quantisation of the last upsampled rows alone, between
    /// synchronisations (on stderr, outside the table).
    fn time_quantisation(&self, up: &Tensor, batches: usize) -> Result<()> {
        let dev = &self.opts.device;
        dev.synchronize()?;
        let t = Instant::now();
        high_res_structure(up, batches, MIN_CASCADE_RESOLUTION, DEFAULT_MAX_TOKENS, dev)?;
        dev.synchronize()?;
        eprintln!(
            "cascade_upsample: quantisation of {} rows alone {:.2} ms",
            up.dim(0)?,
            t.elapsed().as_secs_f64() * 1e3
        );
        Ok(())
    }

    /// Shape then texture decoder on `coords` latent tokens; the texture decoder follows the
    /// shape decoder's subdivisions, as in the pipeline.
    fn decoders(&mut self, res: usize, coords: &[[i32; 4]], suffix: &str) -> Result<()> {
        let (shape_stage, tex_stage) = (
            format!("shape_decoder @{res}"),
            format!("tex_decoder @{res}"),
        );
        if !self.wanted(&shape_stage) && !self.wanted(&tex_stage) {
            return Ok(());
        }
        let dev = self.opts.device.clone();
        let latent = random_latent(coords, &dev)?;

        // Spec §9: ≈3.5 GFLOP per latent token with dense kernels, ≈1/3 on surfaces.
        let flops = Some(3.5e9 * coords.len() as f64 / 3.0);
        let src = random_source(
            self.dir.path(),
            &format!("shape_vae_next_dc_f16c32_fp16{suffix}.decoder"),
            DType::F16,
        )?;
        let dtype = self.opts.load.dtype_for(&src.checkpoint, &dev);
        let dec = load_shape_decoder(&src, dtype, &dev)?;
        let levels = dec.net.config().up_blocks();
        let forced = match self.opts.growth {
            Some(keep) => Some(forced_subdivisions(&latent, levels, keep)?),
            None => None,
        };
        let mut subs = Vec::new();
        let mut voxels = 0;
        self.measure(
            &shape_stage,
            format!("{} latent", coords.len()),
            1,
            flops,
            |_| {
                let out = match &forced {
                    Some(g) => dec.net.forward_forced(&latent, g)?,
                    None => dec.net.forward(&latent, None)?,
                };
                voxels = out.raw.len();
                subs = out.subs;
                Ok(())
            },
        )?;
        if let Some(row) = self.rows.last_mut() {
            row.shape = format!("{} → {voxels} voxels", coords.len());
        }
        drop(dec);
        let src = random_source(
            self.dir.path(),
            &format!("tex_vae_next_dc_f16c32_fp16{suffix}.decoder"),
            DType::F16,
        )?;
        let dtype = self.opts.load.dtype_for(&src.checkpoint, &dev);
        let dec = load_unet_decoder(&src, dtype, &dev)?;
        self.measure(
            &tex_stage,
            format!("{} → {voxels} voxels", coords.len()),
            1,
            flops,
            |_| {
                dec.forward(&latent, Some(&subs))?;
                Ok(())
            },
        )
    }
}

fn main() -> Result<()> {
    let opts = parse()?;
    println!(
        "device {:?}, dtype {:?}, weights {:?}, TRELLIS2_GUIDED_BATCH={}; peak memory per stage \
         includes the stage's model",
        opts.device,
        opts.load.dtype,
        opts.load.memory,
        Tuning::current()
            .values()
            .into_iter()
            .find(|(name, _)| *name == "TRELLIS2_GUIDED_BATCH")
            .map_or(String::new(), |(_, v)| v),
    );
    println!("| stage | tokens | forwards | ms | ms/forward | TFLOP/s | peak anon RSS GiB | peak GPU GiB |");
    println!("|---|---|---|---|---|---|---|---|");
    let lr = shell_coords(32, opts.tokens_512);
    let hr = shell_coords(64, opts.tokens_1024);
    let with_1024 = opts.with_1024;
    let mut b = Bench {
        opts,
        dir: tempfile::tempdir()?,
        rows: Vec::new(),
    };
    b.dinov3()?;
    b.flow(
        "ss_flow",
        "ss_flow_img_dit_1_3B_64_bf16.denoiser",
        None,
        1029,
        SamplerStage::Ss,
    )?;
    b.ss_decoder()?;
    let shape = "slat_flow_img2shape_dit_1_3B_512_bf16.denoiser";
    let tex = "slat_flow_imgshape2tex_dit_1_3B_512_bf16.denoiser";
    b.flow(
        "shape_flow_512",
        shape,
        Some(&lr),
        1029,
        SamplerStage::Shape,
    )?;
    b.flow("tex_flow_512", tex, Some(&lr), 1029, SamplerStage::Tex)?;
    b.decoders(512, &lr, "_ft_512")?;
    b.cascade(&lr)?;
    if with_1024 {
        let shape = "slat_flow_img2shape_dit_1_3B_512_bf16_ft1024.denoiser";
        let tex = "slat_flow_imgshape2tex_dit_1_3B_512_bf16_ft1024.denoiser";
        b.flow(
            "shape_flow_1024",
            shape,
            Some(&hr),
            4101,
            SamplerStage::Shape,
        )?;
        b.flow("tex_flow_1024", tex, Some(&hr), 4101, SamplerStage::Tex)?;
        b.decoders(1024, &hr, "")?;
    }
    let total: f64 = b.rows.iter().map(|r| r.seconds).sum();
    println!("sum of stages: {total:.2} s");
    Ok(())
}
