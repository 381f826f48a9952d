//! `trellis2 generate INPUT...`: parse flags, run the library pipeline per image, write the
//! outputs, show progress, summarise, map failures to the exit code. No model logic here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use rayon::prelude::*;

use super::exit;
use super::inputs;
use super::interrupt;
use super::preflight::{self, is_folder, Destinations};
use super::progress::CliProgress;
use super::report::{
    DecimationReport, GlbReport, ItemReport, RunReport, Status, TextureReport, CANDLE_VERSION,
};
use super::values::{self, BackgroundArg, DtypeArg, PerStage, PipelineArg, UpArg};
use trellis2::export::glb_writer::{write_textured_glb_with_options, TextureOptions};
use trellis2::export::splat::{write_fitted_splat_ply, SplatShape};
use trellis2::export::splat_fit::{fit_splats, FittedSplat};
use trellis2::export::spz::write_fitted_splat_spz;
use trellis2::export::tensors::read_tensors;
use trellis2::export::{
    write_atomic, write_glb, write_mesh_ply, write_splat_ply, Asset, SplatBudget,
};
use trellis2::models::WeightMemory;
use trellis2::pipeline::background::Background;
use trellis2::pipeline::batch_plan::plan_batch;
use trellis2::pipeline::device::describe;
use trellis2::pipeline::latents_file::{read_latents, write_latents};
use trellis2::pipeline::models::{DTypeChoice, LoadOptions};
use trellis2::pipeline::{
    BatchItem, BatchOrder, Generated, ModelLoads, NoiseSource, Picture, Pipeline, PipelineType,
    Progress, ReadAhead, RunOptions, SamplerOverrides, StageReport, DEFAULT_MAX_TOKENS,
};
use trellis2::render::load_scene;
use trellis2::render::metrics::{splat_quality, Quality, QUALITY_ORBIT};

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Gaussian splats, INRIA 3DGS binary PLY (`NAME.splat.ply`).
    Splat,
    /// Gaussian splats, Niantic's compressed SPZ, always +Y up (`NAME.spz`).
    SplatSpz,
    /// The raw extracted triangle mesh (never decimated, for remeshing) with vertex colours,
    /// binary PLY (`NAME.mesh.ply`).
    MeshPly,
    /// glTF 2.0 binary (`NAME.glb`): by default decimated (--faces), UV-unwrapped, with PBR
    /// textures baked from the voxels (--texture, --texture-size).
    Glb,
}

/// How the GLB carries colour and material.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TextureArg {
    /// UV atlas with baked base colour and metallic-roughness textures (PNG).
    Png,
    /// Vertex colours and one averaged metallic/roughness, no UVs (the GLB before textures).
    None,
}

impl Format {
    fn file_name(self, stem: &str) -> String {
        match self {
            Format::Splat => format!("{stem}.splat.ply"),
            Format::SplatSpz => format!("{stem}.spz"),
            Format::MeshPly => format!("{stem}.mesh.ply"),
            Format::Glb => format!("{stem}.glb"),
        }
    }
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  trellis2 generate chair.webp -o out/\n  trellis2 generate \
photos/ 'more/*.png' --format glb --seed 7 --report run.json\n  trellis2 generate chair.webp \
--pipeline 512 --steps ss=8,shape=8,tex=8 --save-latents chair.latents.safetensors"
)]
pub struct Args {
    /// Pictures (PNG, JPEG, WebP): files, folders or glob patterns. Pictures without
    /// transparency are cut out first (see --rembg). Not needed with --from-latents.
    pub inputs: Vec<String>,
    /// Output folder.
    #[arg(short, long, default_value = "out")]
    pub output: PathBuf,
    /// Comma-separated output formats.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "splat,mesh-ply,glb"
    )]
    pub format: Vec<Format>,
    /// Noise seed (upstream's torch.manual_seed; the same seed gives upstream's noise).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Pipeline type (default: the model's, 1024-cascade).
    #[arg(long, value_enum)]
    pub pipeline: Option<PipelineArg>,
    /// Compute device (auto: Metal on macOS builds with it, else CUDA when built with it, else
    /// the CPU).
    /// A comma-separated list (cuda:0,cuda:1; cpu,cpu) runs one batch worker per device,
    /// each with its own models, taking the next picture as it frees up.
    #[arg(
        long,
        env = "TRELLIS2_DEVICE",
        default_value = "auto",
        value_parser = values::devices
    )]
    pub device: values::DeviceList,
    /// Compute dtype: auto (f32 on the CPU; on a GPU each checkpoint's own dtype, bf16 flows
    /// and f16 decoders as upstream runs them), f32, f16 or bf16 (GPU only). Norms, RoPE,
    /// softmax and the sampler state stay f32 whatever this says.
    #[arg(long, value_enum, default_value_t = DtypeArg::Auto)]
    pub dtype: DtypeArg,
    /// Lower peak memory for slower runs: the flow transformers' 30 blocks are read from the
    /// memory-mapped checkpoint when they run instead of staying loaded, cross-attention keys
    /// are not cached, and MLPs run in token chunks (docs/MEMORY.md: measured peaks per stage).
    #[arg(long)]
    pub low_memory: bool,
    /// Answer yes when asked to download missing model files (for scripts).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Never use the network: fail, naming the command to run, when model files are missing.
    #[arg(long)]
    pub offline: bool,
    /// Model folder holding pipeline.json, or a hub cache folder (`download --to DIR`); default:
    /// TRELLIS2_MODEL, else the Hugging Face cache, downloading what is missing on first use.
    #[arg(long, env = "TRELLIS2_MODEL")]
    pub model: Option<PathBuf>,
    /// Sampling steps (≥ 1): one number for all stages, or ss=N,shape=N,tex=N.
    #[arg(long, value_parser = values::steps)]
    pub steps: Option<PerStage<usize>>,
    /// Guidance strength (≥ 0): one number for all stages, or ss=X,shape=X,tex=X.
    #[arg(long, value_parser = values::guidance)]
    pub cfg: Option<PerStage<f64>>,
    /// Guidance rescale (0..1): one number for all stages, or ss=X,shape=X,tex=X.
    #[arg(long, value_parser = values::rescale)]
    pub cfg_rescale: Option<PerStage<f64>>,
    /// Token budget of the 1536 cascade (it steps the resolution down while over it).
    #[arg(long, default_value_t = DEFAULT_MAX_TOKENS, value_parser = values::positive::<usize>)]
    pub max_tokens: usize,
    /// Take the noise from this safetensors file (ss.noise, shape.noise | shape_lr.noise +
    /// shape_hr.noise, tex.noise) instead of the seed. One input only.
    #[arg(long, value_name = "FILE")]
    pub noise: Option<PathBuf>,
    /// Save every stage's coordinates and latents (golden key names). A file for one input, or
    /// a folder (existing, or ending in /) for NAME.latents.safetensors per input.
    #[arg(long, value_name = "FILE")]
    pub save_latents: Option<PathBuf>,
    /// Decode and export a latents file written by --save-latents, without sampling.
    #[arg(long, value_name = "FILE")]
    pub from_latents: Option<PathBuf>,
    /// Write a JSON report: per image and stage wall time, tokens, voxels, peak memory; with
    /// splats and a mesh written, also splat_psnr_db (splats against the mesh, 8 CPU-rendered
    /// views of 512²: about 7 s of CPU time per million splats, measured after the files are
    /// written, beside the next picture's).
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,
    /// Run only part K of N of the batch (K from 1 to N): the expanded input list, sorted by
    /// path, dealt out round-robin. N machines (a SLURM array, a Kubernetes indexed job) each
    /// given one K and the same inputs and output folder cover the batch exactly once; with
    /// --skip-existing a rerun of any shard resumes it.
    #[arg(long, value_name = "K/N", value_parser = values::shard)]
    pub shard: Option<values::Shard>,
    /// Skip inputs whose outputs all exist already.
    #[arg(long)]
    pub skip_existing: bool,
    /// Decimate the GLB's mesh to at most N triangles (quadric error with colour and material
    /// weighted in, so silhouettes and seams stay; upstream's app uses 300000). 0 keeps every
    /// face. The GLB only: `--format mesh-ply` stays the raw extracted mesh, for remeshing.
    #[arg(long, value_name = "N", default_value_t = 300_000, value_parser = values::face_count)]
    pub faces: usize,
    /// Most Gaussian splats to write (splat and splat-spz): beyond it, neighbouring voxels merge
    /// into larger splats fitted to their surface patch and colours; `all` = one per voxel.
    #[arg(long, value_name = "N|all", default_value = "1000000", value_parser = values::splat_budget)]
    pub splats: SplatBudget,
    /// Also write NAME.preview.png: 8 views of 256² in a 4 × 2 sheet (see `render --help`) of
    /// the GLB's mesh, else the mesh PLY's, else the splats when only splats are written.
    #[arg(long)]
    pub preview: bool,
    /// The GLB's colour and material: png = UV-unwrapped mesh with base colour (+ alpha) and
    /// metallic-roughness textures baked from the voxels; none = vertex colours and one
    /// averaged metallic/roughness (with --faces 0, the raw mesh as before textures existed).
    #[arg(long, value_enum, ignore_case = true, default_value_t = TextureArg::Png)]
    pub texture: TextureArg,
    /// Width and height of the GLB's textures, in texels (512 to 8192).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 2048,
        value_parser = clap::value_parser!(u32).range(512..=8192)
    )]
    pub texture_size: u32,
    /// Also bake a tangent-space normal map (glTF normalTexture, MikkTSpace tangents) that
    /// carries the raw mesh's surface detail onto the decimated GLB. Off by default: a third
    /// texture (about a third more PNG bytes) and a few times the colour bake's time (the raw
    /// surface is searched for every texel).
    #[arg(long)]
    pub normal_map: bool,
    /// Up axis of the written files: y (glTF convention) or z (the model's frame).
    #[arg(long, value_enum, ignore_case = true, default_value_t = UpArg::Y)]
    pub up: UpArg,
    /// Background removal for pictures without transparency (pictures with real alpha always
    /// keep theirs): auto = birefnet, ZhengPeng7/BiRefNet (MIT licence); rmbg-2.0 =
    /// briaai/RMBG-2.0, the release's own choice (gated, CC BY-NC 4.0: NON-COMMERCIAL use only);
    /// none keeps the whole picture; alpha refuses pictures without alpha. A missing model is
    /// downloaded on first use, like the other models.
    #[arg(long, value_enum, ignore_case = true, default_value_t = BackgroundArg::Auto)]
    pub rembg: BackgroundArg,
    /// How a batch runs: picture = each picture through every stage with all models kept
    /// loaded; stage = every picture through a stage before the next stage's models load (one
    /// stage's models in memory); auto = picture when the device's free memory holds every
    /// model's weights plus a stage's working memory, else stage. Each model is read once per
    /// batch either way, and the outputs are the same.
    #[arg(long, value_enum, default_value_t = BatchOrderArg::Auto)]
    pub batch_order: BatchOrderArg,
    /// Write each picture's files (and measure its splat quality) on the calling thread before
    /// the next picture starts. By default a batch writes finished pictures' files on two
    /// background threads per worker while the next picture's stages run, with at most one
    /// more finished picture waiting, and measures the report's splat quality on two more;
    /// the files are the same either way.
    #[arg(long)]
    pub no_overlap: bool,
    /// Development only (benches/e2e.rs; benches/README.md): force the sparse structure to a
    /// voxelised sphere shell and the decoders' growth to the upstream baseline's, so that a
    /// model of random weights does a real object's work. `shell` or `shell:N32,N64`.
    #[arg(long, hide = true, value_name = "shell", value_parser = values::dev_forcing)]
    pub dev_force_structure: Option<trellis2::pipeline::dev_forcing::DevForcing>,
    /// No progress output (errors and the failure summary are still printed).
    #[arg(short, long)]
    pub quiet: bool,
}

/// `--batch-order`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BatchOrderArg {
    Auto,
    Picture,
    Stage,
}

/// What one batch item is.
enum Job {
    Image(PathBuf),
    Latents(PathBuf),
    /// An input that is not a regular file (dangling link, FIFO, device): a failure of the
    /// batch, with the reason.
    Unusable(PathBuf, String),
}

impl Job {
    fn path(&self) -> &Path {
        match self {
            Job::Image(p) | Job::Latents(p) | Job::Unusable(p, _) => p,
        }
    }

    /// Output file stem: the input's name without extension(s) we add.
    fn stem(&self) -> String {
        let name = self
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "output".into());
        let name = name.strip_suffix(".safetensors").unwrap_or(&name);
        let name = name.strip_suffix(".latents").unwrap_or(name);
        match Path::new(name).file_stem() {
            Some(s) if !matches!(self, Job::Latents(_)) => s.to_string_lossy().into_owned(),
            _ => name.to_string(),
        }
    }

    /// The files this item writes, in `--format` order, then the preview.
    fn outputs(&self, args: &Args) -> Vec<PathBuf> {
        let stem = self.stem();
        let mut outputs: Vec<PathBuf> = args
            .format
            .iter()
            .map(|f| args.output.join(f.file_name(&stem)))
            .collect();
        if args.preview {
            outputs.push(args.output.join(format!("{stem}.preview.png")));
        }
        outputs
    }
}

/// Flags checked and converted once, before any work.
struct Plan {
    jobs: Vec<Job>,
    noise: Option<HashMap<String, Tensor>>,
}

fn overrides(args: &Args) -> SamplerOverrides {
    let mut o = SamplerOverrides::default();
    for (stage, v) in args.steps.iter().flat_map(|p| &p.0) {
        o.for_stage_mut(*stage).steps = Some(*v);
    }
    for (stage, v) in args.cfg.iter().flat_map(|p| &p.0) {
        o.for_stage_mut(*stage).guidance_strength = Some(*v);
    }
    for (stage, v) in args.cfg_rescale.iter().flat_map(|p| &p.0) {
        o.for_stage_mut(*stage).guidance_rescale = Some(*v);
    }
    o
}

fn plan(args: &Args) -> Result<Plan> {
    let mut jobs: Vec<Job> = match &args.from_latents {
        Some(p) => {
            if !args.inputs.is_empty() {
                bail!("--from-latents decodes a latents file; give no INPUT images with it");
            }
            if args.noise.is_some() || args.save_latents.is_some() {
                bail!("--from-latents does no sampling; --noise and --save-latents do not apply");
            }
            if args.shard.is_some() {
                bail!("--from-latents decodes one file; --shard splits batches of pictures");
            }
            vec![Job::Latents(p.clone())]
        }
        None => {
            if args.inputs.is_empty() {
                bail!("no INPUT given (image files, folders or glob patterns)");
            }
            let mut pictures = inputs::expand(&args.inputs)?;
            if let Some(shard) = args.shard {
                // Sorted so that every machine deals the same list, whatever the argument
                // order; a shard may be empty when there are fewer pictures than shards.
                pictures.sort_by(|a, b| a.path.cmp(&b.path));
                pictures = shard.take(pictures);
            }
            pictures
                .into_iter()
                .map(|i| match i.unusable {
                    Some(why) => Job::Unusable(i.path, why),
                    None => Job::Image(i.path),
                })
                .collect()
        }
    };
    jobs.dedup_by(|a, b| a.path() == b.path());
    let single = jobs.len() == 1;
    if args.noise.is_some() && !single {
        bail!("--noise holds the noise of one image; give exactly one INPUT with it");
    }
    if let Some(p) = &args.save_latents {
        if !single && !is_folder(p) {
            bail!(
                "--save-latents {}: with several inputs, give a folder (existing, or ending in /)",
                p.display()
            );
        }
    }
    if args.format.is_empty() {
        bail!("--format needs at least one of splat, splat-spz, mesh-ply, glb");
    }
    if args.normal_map && matches!(args.texture, TextureArg::None) {
        bail!(
            "--normal-map is a texture of the textured GLB; it does not apply with --texture none"
        );
    }
    preflight_destinations(args, &jobs)?;
    let noise = match &args.noise {
        Some(p) => Some(read_tensors(p, &candle_core::Device::Cpu)?),
        None => None,
    };
    Ok(Plan { jobs, noise })
}

/// Every destination checked before the first picture runs: no two inputs write the same
/// outputs, and the output folder, the latents destination and the report can be written.
fn preflight_destinations(args: &Args, jobs: &[Job]) -> Result<()> {
    let stems: Vec<String> = jobs.iter().map(Job::stem).collect();
    let outputs: Vec<Vec<PathBuf>> = jobs.iter().map(|j| j.outputs(args)).collect();
    let items: Vec<Destinations> = jobs
        .iter()
        .zip(&stems)
        .zip(&outputs)
        .filter(|((job, _), _)| !matches!(job, Job::Unusable(..)))
        .map(|((job, stem), outputs)| Destinations {
            input: job.path(),
            stem,
            outputs,
        })
        .collect();
    preflight::destinations(
        &items,
        &args.output,
        args.save_latents.as_deref(),
        args.report.as_deref(),
    )?;
    Ok(())
}

/// The run's weight files started into the page cache before the devices are set up (a CUDA
/// context and its libraries take ≈ 0.5–1 s of a cold start, during which the disk can read),
/// where that is sure to help: `dir` is the model folder found complete on disk, pictures are to
/// be generated (not saved latents decoded) and at least one of them will run.
fn early_read_ahead(
    args: &Args,
    plan: &Plan,
    dir: &trellis2::weights::ModelDir,
    load: LoadOptions,
) -> Option<ReadAhead> {
    let runs = |job: &Job| match job {
        Job::Unusable(..) | Job::Latents(_) => false,
        _ => !(args.skip_existing && job.outputs(args).iter().all(|p| p.is_file())),
    };
    if !plan.jobs.iter().any(runs) {
        return None;
    }
    let ptype = match args.pipeline {
        Some(p) => PipelineType::from(p),
        None => {
            trellis2::pipeline::PipelineSettings::from_pipeline_args(&dir.pipeline.args)
                .ok()?
                .default_type
        }
    };
    Some(ReadAhead::start(dir, ptype, load))
}

pub fn run(args: &Args) -> Result<u8> {
    let position = interrupt::Position::default();
    interrupt::install("generate", position.clone());
    let plan = plan(args).map_err(super::usage)?;
    if args.skip_existing {
        for stale in trellis2::export::atomic::remove_stale_temporaries(&args.output)? {
            if !args.quiet {
                eprintln!(
                    "note: removed {} (left by an interrupted run)",
                    stale.display()
                );
            }
        }
    }
    let background = Background::from(args.rembg);
    let dtype = DTypeChoice::from(args.dtype);
    let load = LoadOptions {
        dtype,
        memory: if args.low_memory {
            WeightMemory::Streamed
        } else {
            WeightMemory::Resident
        },
    };
    // Decoding saved latents needs no picture, hence no background remover.
    let rembg = match args.from_latents {
        Some(_) => None,
        None => background.model(),
    };
    // The model folder, if it is complete on disk (looked up offline: nothing is asked or
    // downloaded before the devices are open, so a device error still comes first).
    let found = super::download::ensure_model(args.model.as_deref(), rembg, false, true).ok();
    let mut early = found
        .as_ref()
        .and_then(|dir| early_read_ahead(args, &plan, dir, load));
    let mut devices = Vec::new();
    for spec in &args.device.0 {
        let selected = super::open_device_at(spec.kind.into(), spec.ordinal)
            .with_context(|| format!("--device {spec}"))?;
        devices.push((spec.to_string(), selected.device));
    }
    // A dtype the device cannot compute in is a usage error, found before the model loads.
    for (_, device) in &devices {
        load.check(device).map_err(super::usage)?;
    }
    let model_dir = match found {
        Some(dir) => dir,
        None => {
            super::download::ensure_model(args.model.as_deref(), rembg, args.yes, args.offline)?
        }
    };
    let model_root = model_dir.root.clone();
    let mut pipelines = Vec::new();
    for (name, device) in devices {
        let mut pipeline = Pipeline::new(model_dir.clone(), device)?.with_load_options(load)?;
        if let Some(reading) = early.take() {
            pipeline = pipeline.with_read_ahead(reading);
        }
        if let Some(forcing) = args.dev_force_structure {
            pipeline = pipeline.with_dev_forcing(forcing);
        }
        // The splat files' patch geometry is computed beside the texture stages.
        let splats = args
            .format
            .iter()
            .any(|f| matches!(f, Format::Splat | Format::SplatSpz));
        pipeline = pipeline.with_splat_patches(splats.then(SplatShape::default));
        pipeline.apply_overrides(&overrides(args))?;
        pipelines.push((name, pipeline));
    }
    let pipeline = &pipelines[0].1;
    let ptype = args
        .pipeline
        .map(PipelineType::from)
        .unwrap_or(pipeline.settings().default_type);
    let mut progress = CliProgress::new(args.quiet, plan.jobs.len());
    let mut items: Vec<ItemReport> = Vec::with_capacity(plan.jobs.len());
    // Batch positions of the items to generate (the others are skipped or unusable).
    let mut todo = Vec::new();
    for job in &plan.jobs {
        let label = job.path().display().to_string();
        let mut item = ItemReport::new(job.path(), job.outputs(args));
        if let Job::Unusable(_, why) = job {
            let msg = format!("{label}: {why}");
            progress.line(&format!("error: {msg}"));
            item.status = Status::Failed;
            item.error = Some(msg);
            item.outputs.clear();
            progress.item_done();
        } else if args.skip_existing && item.outputs.iter().all(|p| p.is_file()) {
            item.status = Status::Skipped;
            progress.line(&format!("{label}: skipped (outputs exist)"));
            progress.item_done();
        } else {
            todo.push(items.len());
        }
        items.push(item);
    }
    let options = || RunOptions {
        pipeline_type: Some(ptype),
        noise: match &plan.noise {
            Some(t) => NoiseSource::Injected(t.clone()),
            None => NoiseSource::Seed(args.seed),
        },
        max_tokens: args.max_tokens,
        background,
    };
    let labels: Vec<String> = todo
        .iter()
        .map(|&i| plan.jobs[i].path().display().to_string())
        .collect();
    progress.set_items(labels);
    let items: Vec<Mutex<ItemReport>> = items.into_iter().map(Mutex::new).collect();
    let progress = Mutex::new(progress);
    let finished = AtomicUsize::new(0);
    let batch_start = Instant::now();
    // `ran`: the seconds the item's pipeline work took until its result came (its time when
    // it failed), measured before it waited in an output queue.
    let write = |k: usize, result: Result<Generated>, worker: Option<(usize, &str)>| {
        let i = todo[k];
        let mut item = lock(&items[i]);
        item.worker = worker.map(|w| w.0);
        item.device = worker.map(|w| w.1.to_string());
        write_item(args, &plan.jobs[i].stem(), &mut item, result)
    };
    let complete = |k: usize, saved: Result<SavedItem>, ran: f64| {
        let i = todo[k];
        let mut item = lock(&items[i]);
        let line = complete_item(&mut item, saved, ran);
        item.finished_seconds = Some(batch_start.elapsed().as_secs_f64());
        let done = finished.fetch_add(1, Ordering::Relaxed) + 1;
        position.set(format!(
            "{done} of {} pictures finished (the last: {})",
            todo.len(),
            item.input.display()
        ));
        let mut progress = lock(&progress);
        progress.line(&line);
        progress.item_done();
    };
    position.set(format!("the start of {} pictures", todo.len()));
    let mut batch_order = None;
    match plan.jobs.first() {
        Some(Job::Latents(p)) if !todo.is_empty() => {
            let mut progress = Worker::new(&progress, vec![0]);
            progress.item_started(0);
            let result = read_latents(p, pipeline.device())
                .and_then(|saved| pipeline.decode_saved(&saved, ptype, &mut progress));
            let ran = lock(progress.shared).resumed(0).elapsed().as_secs_f64();
            complete(0, write(0, result, None).and_then(measure_quality), ran);
        }
        _ if !todo.is_empty() => {
            let workers = pipelines.len();
            let order = match args.batch_order {
                BatchOrderArg::Picture => BatchOrder::PictureMajor,
                BatchOrderArg::Stage => BatchOrder::StageMajor,
                BatchOrderArg::Auto => {
                    let share = todo.len().div_ceil(workers);
                    let plan = plan_batch(pipeline, ptype, background, share)?;
                    if todo.len() > 1 {
                        let each = if workers > 1 { " each" } else { "" };
                        lock(&progress).line(&format!(
                            "batch: {} pictures, {workers} worker(s){each} {plan}",
                            todo.len()
                        ));
                    }
                    plan.order
                }
            };
            batch_order = Some(order);
            let next = AtomicUsize::new(0);
            let item = |k: usize| BatchItem {
                picture: Picture::File(plan.jobs[todo[k]].path()),
                options: options(),
            };
            std::thread::scope(|scope| {
                for (w, (name, pipeline)) in pipelines.iter().enumerate() {
                    let device = (workers > 1).then_some((w, name.as_str()));
                    let (write, complete) = (&write, &complete);
                    let (next, item, progress) = (&next, &item, &progress);
                    let todo = &todo;
                    let output = Output::start(
                        scope,
                        !args.no_overlap,
                        move |f: Finished| Saved {
                            k: f.k,
                            saved: write(f.k, f.result, device),
                            ran: f.ran,
                        },
                        move |s: Saved| complete(s.k, s.saved, s.ran),
                    );
                    let keep_latents = args.save_latents.is_some();
                    let hand = move |k: usize, result: Result<Generated>| {
                        let ran = lock(progress).resumed(k).elapsed().as_secs_f64();
                        // Only --save-latents writes the intermediates; without it they would
                        // hold device memory while the picture waits for its writer.
                        let result = result.map(|mut g| {
                            if !keep_latents {
                                g.latents = Default::default();
                            }
                            g
                        });
                        output.send(Finished { k, result, ran });
                    };
                    scope.spawn(move || match order {
                        // The next picture goes to whichever worker frees up first.
                        BatchOrder::PictureMajor => loop {
                            let k = next.fetch_add(1, Ordering::Relaxed);
                            if k >= todo.len() {
                                // The device is done: its memory goes back while the last
                                // pictures' files are written.
                                pipeline.release_models();
                                break;
                            }
                            let mut worker = Worker::new(progress, vec![k]);
                            pipeline.generate_batch_voxels(
                                vec![item(k)],
                                order,
                                &mut worker,
                                &mut |_, r, _| hand(k, r),
                            );
                        },
                        // A stage-major worker needs its pictures up front: every N-th.
                        BatchOrder::StageMajor => {
                            let share: Vec<usize> = (w..todo.len()).step_by(workers).collect();
                            let batch = share.iter().map(|&k| item(k)).collect();
                            let mut worker = Worker::new(progress, share.clone());
                            pipeline.generate_batch_voxels(
                                batch,
                                order,
                                &mut worker,
                                &mut |j, r, _| hand(share[j], r),
                            );
                        }
                    });
                }
            });
        }
        _ => {}
    }
    let batch_seconds = batch_start.elapsed().as_secs_f64();
    let mut progress = progress.into_inner().unwrap_or_else(|e| e.into_inner());
    let items: Vec<ItemReport> = items
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .collect();
    progress.finish();

    position.set(format!(
        "the end of the batch ({} items), writing the report",
        items.len()
    ));
    let failed: Vec<(PathBuf, String)> = items
        .iter()
        .filter(|i| matches!(i.status, Status::Failed))
        .map(|i| (i.input.clone(), i.error.clone().unwrap_or_default()))
        .collect();
    let skipped = items
        .iter()
        .filter(|i| matches!(i.status, Status::Skipped))
        .count();
    let done = items.len() - failed.len() - skipped;
    let device_names = pipelines
        .iter()
        .map(|(name, p)| match name.as_str() {
            "auto" => describe(p.device()).to_string(),
            _ => name.clone(),
        })
        .collect::<Vec<_>>()
        .join(",");
    if !args.quiet {
        println!(
            "{done} generated, {skipped} skipped, {} failed (pipeline {ptype}, device {device_names})",
            failed.len(),
        );
    }
    for (_, error) in &failed {
        eprintln!("error: {error}");
    }
    if let Some(path) = &args.report {
        let report = RunReport {
            trellis2_version: env!("CARGO_PKG_VERSION"),
            candle_version: CANDLE_VERSION,
            device: device_names,
            dtype: format!("{dtype:?}").to_lowercase(),
            low_memory: args.low_memory,
            model: model_root.clone(),
            pipeline_type: ptype.name().into(),
            seed: args.seed,
            max_tokens: args.max_tokens,
            settings: pipeline.settings().clone(),
            tuning: trellis2::ops::tuning::Tuning::current(),
            batch_order: batch_order.map(|o| match o {
                BatchOrder::PictureMajor => "picture",
                BatchOrder::StageMajor => "stage",
            }),
            model_loads: model_loads(&pipelines),
            candle_kernels: trellis2::ops::candle_kernel_loads(),
            weight_prefetch: pipelines
                .iter()
                .filter_map(|(_, p)| p.weight_prefetch())
                .collect(),
            batch_seconds: (!todo.is_empty()).then_some(batch_seconds),
            pictures_per_minute: (done > 0).then(|| done as f64 * 60.0 / batch_seconds),
            items,
        };
        let json = serde_json::to_vec_pretty(&report)?;
        write_atomic(path, |w| Ok(w.write_all(&json)?))?;
    }
    Ok(if failed.is_empty() {
        exit::OK
    } else {
        exit::FAILED
    })
}

/// An item's error message starting with its input's name, once (most errors name the file
/// already; those from inside the pipeline do not).
fn naming(label: &str, msg: &str) -> String {
    if msg.starts_with(label) {
        msg.to_string()
    } else {
        format!("{label}: {msg}")
    }
}

/// Loads by role over every worker's pipeline.
fn model_loads(pipelines: &[(String, Pipeline)]) -> std::collections::BTreeMap<String, ModelLoads> {
    let mut total = std::collections::BTreeMap::<String, ModelLoads>::new();
    for (_, p) in pipelines {
        for (role, l) in p.model_loads() {
            let t = total.entry(role).or_default();
            t.loads += l.loads;
            t.seconds += l.seconds;
        }
    }
    total
}

/// A picture whose pipeline work is over, on its way to its files.
struct Finished {
    /// Its batch position.
    k: usize,
    result: Result<Generated>,
    /// Seconds its pipeline work took (see `finish`).
    ran: f64,
}

/// How many finished pictures may wait for a worker's writers, beyond those being written:
/// each holds its mesh and voxels in host memory.
const OUTPUT_QUEUE: usize = 1;

/// How many pictures a worker's writers write at once. One picture's writing leaves cores idle
/// (the GLB's decimation and the splat fit are partly serial), so two side by side keep pace
/// with a fast device, and a third where the cores are many (at `512` on an H100 with 16 cores,
/// two writers set the pace); each holds its mesh and voxels until its files are out.
fn writers() -> usize {
    match std::thread::available_parallelism().map_or(1, |n| n.get()) {
        n if n >= 12 => 3,
        _ => 2,
    }
}

/// How many written pictures may wait for a worker's splat quality, beyond those being
/// measured: each holds only its report's numbers and its file names.
const QUALITY_QUEUE: usize = 2;

/// How many pictures' splat quality a worker measures at once: at `512` on an H100, one
/// thread's measurements (1.7 s a picture beside the writers) set the batch's pace.
const QUALITY_THREADS: usize = 2;

/// A picture whose files are written (or failed), on its way to its splat quality and its
/// report line.
struct Saved {
    /// Its batch position.
    k: usize,
    saved: Result<SavedItem>,
    /// Seconds its pipeline work took (see `complete`).
    ran: f64,
}

/// Where a batch worker hands its finished pictures: with the overlap, [`writers`] writer
/// threads of its own that write the files, then [`QUALITY_THREADS`] threads that measure the
/// splat quality (when the report asks for it), then a finisher thread that gives each picture
/// its report and progress line, in the order the worker finished them; with `--no-overlap`,
/// the worker's thread does it all in turn.
struct Output<'a> {
    queue: Option<std::sync::mpsc::SyncSender<(usize, Finished)>>,
    /// Pictures handed over so far: the next one's place in the finisher's order.
    sent: std::cell::Cell<usize>,
    write: std::sync::Arc<dyn Fn(Finished) -> Saved + Send + Sync + 'a>,
    complete: std::sync::Arc<dyn Fn(Saved) + Send + Sync + 'a>,
}

impl<'a> Output<'a> {
    /// With `overlap`, starts the writers, the quality threads and the finisher on `scope`;
    /// they end when the worker drops its [`Output`].
    fn start<'scope, W, C>(
        scope: &'scope std::thread::Scope<'scope, 'a>,
        overlap: bool,
        write: W,
        complete: C,
    ) -> Self
    where
        W: Fn(Finished) -> Saved + Sync + Send + 'a,
        C: Fn(Saved) + Sync + Send + 'a,
    {
        let write = std::sync::Arc::new(write);
        let complete = std::sync::Arc::new(complete);
        let queue = overlap.then(|| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Finished)>(OUTPUT_QUEUE);
            let (saved_tx, saved_rx) =
                std::sync::mpsc::sync_channel::<(usize, Saved)>(QUALITY_QUEUE);
            // Measured pictures wait only for those handed over before them.
            let (measured_tx, measured_rx) = std::sync::mpsc::channel::<(usize, Saved)>();
            let rx = std::sync::Arc::new(Mutex::new(rx));
            for _ in 0..writers() {
                let (rx, saved_tx) = (rx.clone(), saved_tx.clone());
                let (writer, completes) = (write.clone(), complete.clone());
                scope.spawn(move || loop {
                    // The lock is held while waiting: the other writer waits for it instead.
                    let Ok((n, f)) = lock(&rx).recv() else { break };
                    // Quality threads that died (they panicked) hand the picture back: measure
                    // and finish it here.
                    if let Err(std::sync::mpsc::SendError((_, s))) = saved_tx.send((n, writer(f))) {
                        completes(s.measured())
                    }
                });
            }
            drop(saved_tx);
            let saved_rx = std::sync::Arc::new(Mutex::new(saved_rx));
            for _ in 0..QUALITY_THREADS {
                let (saved_rx, measured_tx) = (saved_rx.clone(), measured_tx.clone());
                let completes = complete.clone();
                scope.spawn(move || loop {
                    let Ok((n, s)) = lock(&saved_rx).recv() else {
                        break;
                    };
                    // A finisher that died (it panicked) hands the picture back: finish it here.
                    if let Err(std::sync::mpsc::SendError((_, s))) =
                        measured_tx.send((n, s.measured()))
                    {
                        completes(s)
                    }
                });
            }
            drop(measured_tx);
            let finisher = complete.clone();
            scope.spawn(move || {
                // Measured pictures come in any order: each is finished once those handed over
                // before it are.
                let mut waiting = std::collections::BTreeMap::new();
                let mut next = 0;
                for (n, s) in measured_rx {
                    waiting.insert(n, s);
                    while let Some(s) = waiting.remove(&next) {
                        finisher(s);
                        next += 1;
                    }
                }
                // A writer or quality thread that panicked left a gap: the rest still get
                // their lines, in order.
                waiting.into_values().for_each(|s| finisher(s));
            });
            tx
        });
        Self {
            queue,
            sent: std::cell::Cell::new(0),
            write,
            complete,
        }
    }

    /// Writes and finishes `f` now, or queues it (waiting while the queue is full).
    fn send(&self, f: Finished) {
        match &self.queue {
            Some(tx) => {
                let n = self.sent.replace(self.sent.get() + 1);
                // The writers died (they panicked) and hand the picture back: do it all here.
                if let Err(std::sync::mpsc::SendError((_, f))) = tx.send((n, f)) {
                    (self.complete)((self.write)(f).measured())
                }
            }
            None => (self.complete)((self.write)(f).measured()),
        }
    }
}

/// A picture's files written: what its report still needs.
struct SavedItem {
    stages: Vec<StageReport>,
    resolution: u32,
    /// Voxels, mesh vertices, mesh faces.
    sizes: [usize; 3],
    /// Seconds from the start of its writing to its files and preview written.
    seconds: f64,
    /// The mesh and splat files whose quality the report asks for.
    quality: Option<(PathBuf, PathBuf)>,
    /// Their quality and the seconds measuring it took, once measured.
    measured: Option<(Quality, f64)>,
}

impl Saved {
    /// With its splat quality measured, when the report asks for it (a failed measurement
    /// fails the picture).
    fn measured(self) -> Self {
        Self {
            saved: self.saved.and_then(measure_quality),
            ..self
        }
    }
}

/// Measures a written item's splat quality, when the report asks for it.
fn measure_quality(mut s: SavedItem) -> Result<SavedItem> {
    if let Some((mesh, splats)) = &s.quality {
        let start = Instant::now();
        let q = splat_quality(&load_scene(mesh)?, &load_scene(splats)?, &QUALITY_ORBIT)?;
        s.measured = Some((q, start.elapsed().as_secs_f64()));
    }
    Ok(s)
}

/// Extracts a finished item's mesh and writes its files and preview, filling the parts of its
/// report they time.
fn write_item(
    args: &Args,
    stem: &str,
    item: &mut ItemReport,
    result: Result<Generated>,
) -> Result<SavedItem> {
    let saving = Instant::now();
    let mut g = result?;
    // Off the worker's thread when writing overlaps: the next picture's stages run meanwhile.
    // The surface thread's checked geometry takes the attributes (the public arrays stay
    // empty: the surface is held once).
    let start = Instant::now();
    let asset = g.extract_asset(args.save_latents.is_some())?;
    let asset_seconds = start.elapsed().as_secs_f64() - g.mesh_wait_seconds;
    item.output_seconds.insert("mesh".into(), g.mesh_seconds);
    item.output_seconds
        .insert("mesh_wait".into(), g.mesh_wait_seconds);
    item.output_seconds
        .insert("asset".into(), asset_seconds.max(0.0));
    let sizes = [
        asset.voxel_count(),
        asset.mesh().vertices.len(),
        asset.mesh().faces.len(),
    ];
    (item.decimation, item.glb) = save(
        args,
        stem,
        &g,
        asset,
        &item.outputs,
        &mut item.output_seconds,
    )?;
    preview(args, &item.outputs, &mut item.output_seconds)?;
    Ok(SavedItem {
        stages: std::mem::take(&mut g.stages),
        resolution: g.resolution,
        sizes,
        seconds: saving.elapsed().as_secs_f64(),
        quality: quality_sources(args, &item.outputs),
        measured: None,
    })
}

/// Fills the rest of a written item's report (its splat quality, measured) and says how it
/// went; `ran` is the seconds its pipeline work took (its time when it failed).
fn complete_item(item: &mut ItemReport, saved: Result<SavedItem>, ran: f64) -> String {
    let label = item.input.display().to_string();
    match saved {
        Ok(mut s) => {
            if let Some((q, seconds)) = s.measured {
                item.output_seconds.insert("splat_quality".into(), seconds);
                s.seconds += seconds;
                item.splat_psnr_db = Some(q.psnr_db);
                item.splat_ssim = Some(q.ssim);
                item.splat_psnr_object_db = Some(q.psnr_object_db);
            }
            let [voxels, vertices, faces] = s.sizes;
            item.resolution = Some(s.resolution);
            item.voxels = Some(voxels);
            item.mesh_vertices = Some(vertices);
            item.mesh_faces = Some(faces);
            item.seconds = s.stages.iter().map(|s| s.seconds).sum::<f64>() + s.seconds;
            item.stages = s.stages;
            format!(
                "{label}: done in {:.1} s → {}",
                item.seconds,
                item.outputs
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
        Err(e) => {
            let msg = naming(&label, &format!("{e:#}"));
            item.status = Status::Failed;
            item.outputs.clear();
            item.seconds = ran;
            let line = format!("error: {msg}");
            item.error = Some(msg);
            line
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A worker that panicked left only progress text and reports behind: still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One batch worker's progress into the shared display: its pictures' batch positions, and
/// the one it is working on (so that stage lines name the right picture).
struct Worker<'a> {
    shared: &'a Mutex<CliProgress>,
    positions: Vec<usize>,
    current: usize,
}

impl<'a> Worker<'a> {
    fn new(shared: &'a Mutex<CliProgress>, positions: Vec<usize>) -> Self {
        Self {
            shared,
            current: positions.first().copied().unwrap_or(0),
            positions,
        }
    }

    fn with(&self, f: impl FnOnce(&mut CliProgress)) {
        let mut p = lock(self.shared);
        p.select(self.current);
        f(&mut p);
    }
}

impl Progress for Worker<'_> {
    fn item_started(&mut self, index: usize) {
        self.current = self.positions.get(index).copied().unwrap_or(index);
        let current = self.current;
        lock(self.shared).item_started(current);
    }
    fn stage_started(&mut self, stage: &str, steps: usize) {
        self.with(|p| p.stage_started(stage, steps));
    }
    fn step(&mut self, stage: &str, done: usize) {
        self.with(|p| p.step(stage, done));
    }
    fn stage_finished(&mut self, report: &StageReport) {
        self.with(|p| p.stage_finished(report));
    }
}

/// Writes the latents file (if asked) and every output format; says how the GLB was
/// decimated (when `--faces` asked for it) and exported.
fn save(
    args: &Args,
    stem: &str,
    g: &Generated,
    asset: Asset,
    outputs: &[PathBuf],
    seconds: &mut std::collections::BTreeMap<String, f64>,
) -> Result<(Option<DecimationReport>, Option<GlbReport>)> {
    let mut start = Instant::now();
    let mut lap = |name: &str| {
        seconds.insert(name.to_string(), start.elapsed().as_secs_f64());
        start = Instant::now();
    };
    if let Some(p) = &args.save_latents {
        let path = if is_folder(p) {
            std::fs::create_dir_all(p)
                .with_context(|| format!("{}: cannot create folder", p.display()))?;
            p.join(format!("{stem}.latents.safetensors"))
        } else {
            p.clone()
        };
        write_latents(&path, &g.latents, g.resolution)?;
        lap("latents");
    }
    let up: trellis2::export::Up = args.up.into();
    // The formats are independent: written concurrently, each timed on its own. The mesh
    // formats share the faces wound outward and the colours at the vertices, computed once
    // first ("mesh-prepare"); the splat fit reuses those faces.
    let is_mesh = |f: &Format| matches!(f, Format::MeshPly | Format::Glb);
    let prepared = if args.format.iter().any(is_mesh) {
        let start = Instant::now();
        let r = asset.prepare_mesh_outputs();
        seconds.insert("mesh-prepare".to_string(), start.elapsed().as_secs_f64());
        r.map_err(|e| format!("{e:#}"))
    } else {
        Ok(())
    };
    let write = |(&format, path): (&Format, &PathBuf), fitted: Option<&[FittedSplat]>| {
        let start = Instant::now();
        let mut w = write_format(args, format, path, &asset, up, fitted)?;
        w.seconds = start.elapsed().as_secs_f64();
        Ok(w)
    };
    let numbered: Vec<(usize, (&Format, &PathBuf))> =
        args.format.iter().zip(outputs).enumerate().collect();
    // Both splat files hold the same splats: the splat PLY's job fits them once for both.
    let spz = numbered
        .iter()
        .find(|(_, (f, _))| **f == Format::SplatSpz)
        .copied()
        .filter(|_| args.format.contains(&Format::Splat));
    let mut written: Vec<Numbered> = numbered
        .into_par_iter()
        .filter(|(i, _)| spz.is_none_or(|(j, _)| j != *i))
        .flat_map_iter(|(i, f)| match (&prepared, f.0, spz) {
            // The mesh formats could not start: each of them fails with that error.
            (Err(msg), format, _) if is_mesh(format) => {
                vec![(i, Err(anyhow::anyhow!("{msg}")))]
            }
            (_, Format::Splat, Some((j, spz))) => {
                let start = Instant::now();
                let fitted = fit_splats(&asset, args.splats, &SplatShape::default());
                let fit_seconds = start.elapsed().as_secs_f64();
                let (ply, spz) =
                    rayon::join(|| write(f, Some(&fitted)), || write(spz, Some(&fitted)));
                let ply = ply.map(|w| Written {
                    fit_seconds: Some(fit_seconds),
                    ..w
                });
                vec![(i, ply), (j, spz)]
            }
            _ => vec![(i, write(f, None))],
        })
        .collect();
    written.sort_by_key(|w| w.0);
    let written = written.into_iter().map(|w| w.1);
    let mut decimation = None;
    let mut glb = None;
    // The first failure in --format order is the item's error, as when written one by one.
    for (format, w) in args.format.iter().zip(written) {
        let w = w?;
        seconds.insert(format_key(*format).to_string(), w.seconds);
        if let Some(fit) = w.fit_seconds {
            seconds.insert("splat-fit".to_string(), fit);
        }
        decimation = decimation.or(w.decimation);
        glb = glb.or(w.glb);
    }
    Ok((decimation, glb))
}

/// A format's result with its position in `--format`.
type Numbered = (usize, Result<Written>);

/// One format's file written: its seconds, and for the GLB how it was decimated and exported.
struct Written {
    seconds: f64,
    /// The splat fit both splat formats share, timed apart from either file.
    fit_seconds: Option<f64>,
    decimation: Option<DecimationReport>,
    glb: Option<GlbReport>,
}

/// The report's key of a format's seconds.
fn format_key(format: Format) -> &'static str {
    match format {
        Format::Splat => "splat",
        Format::SplatSpz => "splat-spz",
        Format::MeshPly => "mesh-ply",
        Format::Glb => "glb",
    }
}

fn write_format(
    args: &Args,
    format: Format,
    path: &Path,
    asset: &Asset,
    up: trellis2::export::Up,
    fitted: Option<&[FittedSplat]>,
) -> Result<Written> {
    let mut w = Written {
        seconds: 0.0,
        fit_seconds: None,
        decimation: None,
        glb: None,
    };
    match format {
        Format::Splat => match fitted {
            Some(f) => write_fitted_splat_ply(path, f, up)?,
            None => write_splat_ply(path, asset, up, args.splats)?,
        },
        Format::SplatSpz => match fitted {
            Some(f) => write_fitted_splat_spz(path, f, asset.voxel_size())?,
            None => trellis2::export::write_splat_spz(path, asset, args.splats)?,
        },
        Format::MeshPly => write_mesh_ply(path, asset, up)?,
        Format::Glb => {
            let start = Instant::now();
            let reduced;
            // The raw mesh wound outward, for the normal map.
            let mut oriented = None;
            let written = if args.faces > 0 {
                let (r, o) = asset.decimated_and_oriented(args.faces)?;
                reduced = r;
                oriented = args.normal_map.then_some(o);
                w.decimation = Some(DecimationReport {
                    target_faces: args.faces,
                    faces_before: asset.mesh().faces.len(),
                    faces_after: reduced.mesh().faces.len(),
                    vertices_after: reduced.mesh().vertices.len(),
                    seconds: start.elapsed().as_secs_f64(),
                });
                &reduced
            } else {
                asset
            };
            let texture = match args.texture {
                TextureArg::None => {
                    write_glb(path, written, up)?;
                    None
                }
                TextureArg::Png => {
                    if args.normal_map && oriented.is_none() {
                        oriented = Some(asset.oriented_mesh());
                    }
                    let opts = TextureOptions {
                        texture_size: args.texture_size,
                        // The raw mesh, whose detail the decimated one lost.
                        normal_map_from: oriented.as_ref(),
                    };
                    let t = write_textured_glb_with_options(path, written, up, &opts)?;
                    Some(TextureReport {
                        texture_size: t.texture_size,
                        charts: t.charts,
                        utilisation: t.utilisation,
                        overlapping_triangles: t.overlapping_triangles,
                        alpha_blend: t.alpha_blend,
                        png_bytes: t.png_bytes,
                        unwrap_seconds: t.unwrap_seconds,
                        bake_seconds: t.bake_seconds,
                        encode_seconds: t.encode_seconds,
                        write_seconds: t.write_seconds,
                        normal_map: t.normal_map,
                        normal_map_seconds: t.normal_map_seconds,
                    })
                }
            };
            w.glb = Some(GlbReport {
                seconds: start.elapsed().as_secs_f64(),
                faces: written.mesh().faces.len(),
                texture,
            });
        }
    }
    Ok(w)
}

/// The files a format was written to, by format.
fn written<'o>(args: &Args, outputs: &'o [PathBuf], want: Format) -> Option<&'o PathBuf> {
    args.format
        .iter()
        .zip(outputs)
        .find(|(f, _)| **f == want)
        .map(|(_, p)| p)
}

/// The written mesh (the GLB, else the mesh PLY) and splat PLY, where written: what the preview
/// and the splat quality are drawn from.
fn written_mesh_and_splats<'o>(
    args: &Args,
    outputs: &'o [PathBuf],
) -> (Option<&'o PathBuf>, Option<&'o PathBuf>) {
    let mesh =
        written(args, outputs, Format::Glb).or_else(|| written(args, outputs, Format::MeshPly));
    (mesh, written(args, outputs, Format::Splat))
}

/// `--preview` (NAME.preview.png, the last of `outputs`): the GLB's mesh, else the mesh PLY's,
/// else the splats.
fn preview(
    args: &Args,
    outputs: &[PathBuf],
    seconds: &mut std::collections::BTreeMap<String, f64>,
) -> Result<()> {
    let (mesh, splats) = written_mesh_and_splats(args, outputs);
    if args.preview {
        if let (Some(source), Some(out)) = (mesh.or(splats), outputs.last()) {
            let start = Instant::now();
            super::render::write_preview(source, out)?;
            seconds.insert("preview".into(), start.elapsed().as_secs_f64());
        }
    }
    Ok(())
}

/// With `--report`, the mesh (GLB, else mesh PLY) and splat PLY whose splat quality it records,
/// when both are written.
fn quality_sources(args: &Args, outputs: &[PathBuf]) -> Option<(PathBuf, PathBuf)> {
    match (
        args.report.is_some(),
        written_mesh_and_splats(args, outputs),
    ) {
        (true, (Some(m), Some(s))) => Some((m.clone(), s.clone())),
        _ => None,
    }
}
