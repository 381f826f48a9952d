//! `trellis2 generate INPUT...`: parse flags, run the library pipeline per image, write the
//! outputs, show progress, summarise, map failures to the exit code. No model logic here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;

use super::exit;
use super::inputs;
use super::progress::CliProgress;
use super::report::{
    DecimationReport, GlbReport, ItemReport, RunReport, Status, TextureReport, CANDLE_VERSION,
};
use super::values::{self, BackgroundArg, DeviceArg, DtypeArg, PerStage, PipelineArg, UpArg};
use trellis2::export::glb_writer::write_textured_glb;
use trellis2::export::tensors::read_tensors;
use trellis2::export::{
    write_atomic, write_glb, write_mesh_ply, write_splat_ply, Asset, SplatBudget,
};
use trellis2::image::load_image;
use trellis2::models::WeightMemory;
use trellis2::pipeline::background::Background;
use trellis2::pipeline::device::describe;
use trellis2::pipeline::latents_file::{read_latents, write_latents};
use trellis2::pipeline::models::{DTypeChoice, LoadOptions};
use trellis2::pipeline::{
    Generated, NoiseSource, Pipeline, PipelineType, RunOptions, SamplerOverrides,
    DEFAULT_MAX_TOKENS,
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
    #[arg(long, value_enum, env = "TRELLIS2_DEVICE", default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
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
    /// views of 512²: about 10 s per million splats on 2 cores).
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,
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
    /// No progress output (errors and the failure summary are still printed).
    #[arg(short, long)]
    pub quiet: bool,
}

/// What one batch item is.
enum Job {
    Image(PathBuf),
    Latents(PathBuf),
}

impl Job {
    fn path(&self) -> &Path {
        match self {
            Job::Image(p) | Job::Latents(p) => p,
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
            Some(s) if matches!(self, Job::Image(_)) => s.to_string_lossy().into_owned(),
            _ => name.to_string(),
        }
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
            vec![Job::Latents(p.clone())]
        }
        None => {
            if args.inputs.is_empty() {
                bail!("no INPUT given (image files, folders or glob patterns)");
            }
            inputs::expand(&args.inputs)?
                .into_iter()
                .map(Job::Image)
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
    let noise = match &args.noise {
        Some(p) => Some(read_tensors(p, &candle_core::Device::Cpu)?),
        None => None,
    };
    Ok(Plan { jobs, noise })
}

fn is_folder(p: &Path) -> bool {
    p.is_dir() || p.as_os_str().to_string_lossy().ends_with(['/', '\\'])
}

pub fn run(args: &Args) -> Result<u8> {
    let plan = match plan(args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(exit::UNREADABLE);
        }
    };
    let device = super::open_device(args.device.into())?.device;
    let background = Background::from(args.rembg);
    let dtype = DTypeChoice::from(args.dtype);
    // Decoding saved latents needs no picture, hence no background remover.
    let rembg = match args.from_latents {
        Some(_) => None,
        None => background.model(),
    };
    let model_dir =
        super::download::ensure_model(args.model.as_deref(), rembg, args.yes, args.offline)?;
    let model_root = model_dir.root.clone();
    let load = LoadOptions {
        dtype,
        memory: if args.low_memory {
            WeightMemory::Streamed
        } else {
            WeightMemory::Resident
        },
    };
    let mut pipeline = Pipeline::new(model_dir, device)?.with_load_options(load)?;
    pipeline.apply_overrides(&overrides(args))?;
    let ptype = args
        .pipeline
        .map(PipelineType::from)
        .unwrap_or(pipeline.settings().default_type);
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("{}: cannot create output folder", args.output.display()))?;

    let mut progress = CliProgress::new(args.quiet, plan.jobs.len());
    let mut items = Vec::new();
    for job in &plan.jobs {
        let label = job.path().display().to_string();
        progress.item(&label);
        let stem = job.stem();
        let mut outputs: Vec<PathBuf> = args
            .format
            .iter()
            .map(|f| args.output.join(f.file_name(&stem)))
            .collect();
        if args.preview {
            outputs.push(args.output.join(format!("{stem}.preview.png")));
        }
        let start = Instant::now();
        let mut item = ItemReport {
            input: job.path().to_path_buf(),
            status: Status::Ok,
            error: None,
            seconds: 0.0,
            resolution: None,
            voxels: None,
            mesh_vertices: None,
            mesh_faces: None,
            decimation: None,
            splat_psnr_db: None,
            splat_ssim: None,
            splat_psnr_object_db: None,
            glb: None,
            outputs: outputs.clone(),
            stages: Vec::new(),
        };
        if args.skip_existing && outputs.iter().all(|p| p.is_file()) {
            item.status = Status::Skipped;
            progress.line(&format!("{label}: skipped (outputs exist)"));
        } else {
            let options = RunOptions {
                pipeline_type: Some(ptype),
                noise: match &plan.noise {
                    Some(t) => NoiseSource::Injected(t.clone()),
                    None => NoiseSource::Seed(args.seed),
                },
                max_tokens: args.max_tokens,
                background,
            };
            let result =
                generate_one(&pipeline, job, options, ptype, &mut progress).and_then(|g| {
                    (item.decimation, item.glb) = save(args, &stem, &g, &outputs)?;
                    if let Some(q) = preview_and_quality(args, &outputs)? {
                        item.splat_psnr_db = Some(q.psnr_db);
                        item.splat_ssim = Some(q.ssim);
                        item.splat_psnr_object_db = Some(q.psnr_object_db);
                    }
                    Ok(g)
                });
            match result {
                Ok(g) => {
                    item.resolution = Some(g.resolution);
                    item.voxels = Some(g.voxel_coords.len());
                    item.mesh_vertices = Some(g.mesh.vertices.len());
                    item.mesh_faces = Some(g.mesh.faces.len());
                    item.stages = g.stages;
                    progress.line(&format!(
                        "{label}: done in {:.1} s → {}",
                        start.elapsed().as_secs_f64(),
                        outputs
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    progress.line(&format!("{label}: FAILED: {msg}"));
                    item.status = Status::Failed;
                    item.error = Some(msg);
                    item.outputs.clear();
                }
            }
        }
        item.seconds = start.elapsed().as_secs_f64();
        progress.item_done();
        items.push(item);
    }
    progress.finish();

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
    if !args.quiet {
        println!(
            "{done} generated, {skipped} skipped, {} failed (pipeline {ptype}, device {})",
            failed.len(),
            describe(pipeline.device())
        );
    }
    for (input, error) in &failed {
        eprintln!("failed: {}: {error}", input.display());
    }
    if let Some(path) = &args.report {
        let report = RunReport {
            trellis2_version: env!("CARGO_PKG_VERSION"),
            candle_version: CANDLE_VERSION,
            device: describe(pipeline.device()).into(),
            dtype: format!("{dtype:?}").to_lowercase(),
            low_memory: args.low_memory,
            model: model_root.clone(),
            pipeline_type: ptype.name().into(),
            seed: args.seed,
            max_tokens: args.max_tokens,
            settings: pipeline.settings().clone(),
            tuning: trellis2::ops::tuning::Tuning::current(),
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

fn generate_one(
    pipeline: &Pipeline,
    job: &Job,
    options: RunOptions,
    ptype: PipelineType,
    progress: &mut CliProgress,
) -> Result<Generated> {
    match job {
        Job::Image(p) => {
            let image = load_image(p)?;
            pipeline.generate(&image, options, progress)
        }
        Job::Latents(p) => {
            let saved = read_latents(p, pipeline.device())?;
            pipeline.decode_saved(&saved, ptype, progress)
        }
    }
}

/// Writes the latents file (if asked) and every output format; says how the GLB was
/// decimated (when `--faces` asked for it) and exported.
fn save(
    args: &Args,
    stem: &str,
    g: &Generated,
    outputs: &[PathBuf],
) -> Result<(Option<DecimationReport>, Option<GlbReport>)> {
    if let Some(p) = &args.save_latents {
        let path = if is_folder(p) {
            std::fs::create_dir_all(p)
                .with_context(|| format!("{}: cannot create folder", p.display()))?;
            p.join(format!("{stem}.latents.safetensors"))
        } else {
            p.clone()
        };
        write_latents(&path, &g.latents, g.resolution)?;
    }
    let up = args.up.into();
    let asset = Asset::new(
        g.mesh.clone(),
        g.voxel_coords.iter().map(|c| [c[1], c[2], c[3]]).collect(),
        g.voxel_attrs.clone(),
        g.dual_vertices.clone(),
        g.resolution,
    )?;
    let mut decimation = None;
    let mut glb = None;
    for (format, path) in args.format.iter().zip(outputs) {
        match format {
            Format::Splat => write_splat_ply(path, &asset, up, args.splats)?,
            Format::SplatSpz => trellis2::export::write_splat_spz(path, &asset, args.splats)?,
            Format::MeshPly => write_mesh_ply(path, &asset, up)?,
            Format::Glb => {
                let start = Instant::now();
                let reduced;
                let written = if args.faces > 0 {
                    reduced = asset.decimated(args.faces)?;
                    decimation = Some(DecimationReport {
                        target_faces: args.faces,
                        faces_before: asset.mesh().faces.len(),
                        faces_after: reduced.mesh().faces.len(),
                        vertices_after: reduced.mesh().vertices.len(),
                        seconds: start.elapsed().as_secs_f64(),
                    });
                    &reduced
                } else {
                    &asset
                };
                let texture = match args.texture {
                    TextureArg::None => {
                        write_glb(path, written, up)?;
                        None
                    }
                    TextureArg::Png => {
                        let t = write_textured_glb(path, written, up, args.texture_size)?;
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
                        })
                    }
                };
                glb = Some(GlbReport {
                    seconds: start.elapsed().as_secs_f64(),
                    faces: written.mesh().faces.len(),
                    texture,
                });
            }
        }
    }
    Ok((decimation, glb))
}

/// `--preview` (NAME.preview.png, the last of `outputs`) and, with `--report`, the splats'
/// quality against the mesh when both were written.
fn preview_and_quality(args: &Args, outputs: &[PathBuf]) -> Result<Option<Quality>> {
    let written = |want: Format| {
        args.format
            .iter()
            .zip(outputs)
            .find(|(f, _)| **f == want)
            .map(|(_, p)| p)
    };
    let mesh = written(Format::Glb).or_else(|| written(Format::MeshPly));
    let splats = written(Format::Splat);
    if args.preview {
        if let (Some(source), Some(out)) = (mesh.or(splats), outputs.last()) {
            super::render::write_preview(source, out)?;
        }
    }
    match (args.report.is_some(), mesh, splats) {
        (true, Some(m), Some(s)) => Ok(Some(splat_quality(
            &load_scene(m)?,
            &load_scene(s)?,
            &QUALITY_ORBIT,
        )?)),
        _ => Ok(None),
    }
}
