//! `trellis2 texture MESH IMAGE [MESH IMAGE ...]`: texture existing meshes from pictures with the
//! texturing pipeline ([`trellis2::pipeline::texturing`]). Parses flags, pairs the inputs, runs
//! the library per pair, writes `NAME.glb`, reports. No model logic here.
//!
//! Batch form: repeated `MESH IMAGE` pairs on the command line, and/or `--pairs FILE` (one pair
//! per line, tab-separated). A pair that fails is reported and the batch goes on; models are
//! loaded once per batch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;

use super::exit;
use super::interrupt;
use super::preflight::{self, is_folder, Destinations};
use super::progress::CliProgress;
use super::values::{self, BackgroundArg, DtypeArg, PerStage};
use trellis2::export::mesh_input::{read_input_mesh, MeshCheck};
use trellis2::export::tensors::read_tensors;
use trellis2::export::write_atomic;
use trellis2::image::load_image;
use trellis2::models::WeightMemory;
use trellis2::pipeline::background::Background;
use trellis2::pipeline::device::describe;
use trellis2::pipeline::latents_file::write_latents;
use trellis2::pipeline::models::{DTypeChoice, LoadOptions};
use trellis2::pipeline::texturing::{TextureOptions, TexturingPipeline, TEXTURE_RESOLUTIONS};
use trellis2::pipeline::{
    ModelLoads, NoiseSource, PipelineSettings, Progress, SamplerOverrides, SamplerStage,
    StageReport,
};

/// Mesh file extensions `texture` reads.
const MESH_EXTENSIONS: [&str; 4] = ["glb", "gltf", "ply", "obj"];

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  trellis2 texture statue.glb statue.png -o out/\n  trellis2 \
texture a.obj a.png b.ply b.jpg --resolution 512 --report run.json\n  trellis2 texture --pairs \
batch.tsv -o textured/"
)]
pub struct Args {
    /// MESH IMAGE pairs: a mesh (GLB, glTF, PLY, OBJ) and the picture (PNG, JPEG, WebP) its
    /// texture should match; several pairs texture several meshes.
    pub inputs: Vec<PathBuf>,
    /// A file of pairs, one per line: MESH<TAB>IMAGE (relative paths from the file's folder;
    /// empty lines and lines starting with # are skipped). Adds to the pairs on the command line.
    #[arg(long, value_name = "FILE")]
    pub pairs: Option<PathBuf>,
    /// Output folder: NAME.glb per mesh (NAME = the mesh's file name without extension).
    #[arg(short, long, default_value = "out")]
    pub output: PathBuf,
    /// Model folder holding texturing_pipeline.json (the release's, beside pipeline.json), or a
    /// hub cache folder; default: TRELLIS2_MODEL, else the Hugging Face cache, downloading what
    /// is missing on first use.
    #[arg(long, env = "TRELLIS2_MODEL")]
    pub model: Option<PathBuf>,
    /// Voxel grid of the mesh's encoding: 1024 (upstream's default; the 1024 texture flow and
    /// 1024² conditioning) or 512; 64, 128 and 256 are quick low-detail previews with the 512
    /// flow.
    #[arg(long, default_value_t = 1024, value_parser = resolution)]
    pub resolution: u32,
    /// Width and height of the baked textures, in texels (512 to 8192).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 2048,
        value_parser = clap::value_parser!(u32).range(512..=8192)
    )]
    pub texture_size: u32,
    /// Noise seed (upstream's torch.manual_seed; the same seed gives upstream's noise).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Sampling steps of the texture flow (≥ 1): N or tex=N.
    #[arg(long, value_parser = values::steps)]
    pub steps: Option<PerStage<usize>>,
    /// Guidance strength of the texture flow (≥ 0): X or tex=X.
    #[arg(long, value_parser = values::guidance)]
    pub cfg: Option<PerStage<f64>>,
    /// Guidance rescale of the texture flow (0..1): X or tex=X.
    #[arg(long, value_parser = values::rescale)]
    pub cfg_rescale: Option<PerStage<f64>>,
    /// Take the texture flow's noise from this safetensors file (`tex.noise`) instead of the
    /// seed. One pair only.
    #[arg(long, value_name = "FILE")]
    pub noise: Option<PathBuf>,
    /// Save the run's latents and intermediates (shape latent, noise, every step, PBR voxels).
    /// A file for one pair, or a folder (existing, or ending in /) for NAME.latents.safetensors.
    #[arg(long, value_name = "FILE")]
    pub save_latents: Option<PathBuf>,
    /// Write a JSON report: per mesh, the seconds of each phase (normalise+voxelise, encode,
    /// conditioning, sampling, decode, bake, write), voxel and token counts, peak memory.
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,
    /// Also write NAME.preview.png: 8 views of the textured GLB (see `render --help`).
    #[arg(long)]
    pub preview: bool,
    /// Compute device: auto, cpu, metal or cuda (cuda:1 for the second GPU).
    #[arg(
        long,
        env = "TRELLIS2_DEVICE",
        default_value = "auto",
        value_parser = values::devices
    )]
    pub device: values::DeviceList,
    /// Compute dtype (as for generate): auto, f32, f16 or bf16 (GPU only).
    #[arg(long, value_enum, default_value_t = DtypeArg::Auto)]
    pub dtype: DtypeArg,
    /// Lower peak memory for slower runs (the flow's blocks are read when they run).
    #[arg(long)]
    pub low_memory: bool,
    /// Background removal for pictures without transparency (as for generate).
    #[arg(long, value_enum, ignore_case = true, default_value_t = BackgroundArg::Auto)]
    pub rembg: BackgroundArg,
    /// Answer yes when asked to download missing model files (for scripts).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Never use the network: fail, naming the command to run, when model files are missing.
    #[arg(long)]
    pub offline: bool,
    /// No progress output (errors and the summary of failures are still printed).
    #[arg(short, long)]
    pub quiet: bool,
}

fn resolution(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(v) if TEXTURE_RESOLUTIONS.contains(&v) => Ok(v),
        _ => Err(format!(
            "`{text}` is not one of {}",
            TEXTURE_RESOLUTIONS.map(|r| r.to_string()).join(", ")
        )),
    }
}

/// One mesh to texture.
struct Pair {
    mesh: PathBuf,
    image: PathBuf,
}

impl Pair {
    fn stem(&self) -> String {
        self.mesh
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "output".into())
    }

    fn outputs(&self, args: &Args) -> Vec<PathBuf> {
        let stem = self.stem();
        let mut out = vec![args.output.join(format!("{stem}.glb"))];
        if args.preview {
            out.push(args.output.join(format!("{stem}.preview.png")));
        }
        out
    }
}

/// The pairs of the command line, then those of `--pairs`; every file must exist and every
/// mesh have a known extension (usage errors otherwise).
fn pairs(args: &Args) -> Result<Vec<Pair>> {
    if !args.inputs.len().is_multiple_of(2) {
        bail!(
            "{} inputs given: texture takes MESH IMAGE pairs (the last mesh has no picture)",
            args.inputs.len()
        );
    }
    let mut out: Vec<Pair> = args
        .inputs
        .chunks_exact(2)
        .map(|p| Pair {
            mesh: p[0].clone(),
            image: p[1].clone(),
        })
        .collect();
    if let Some(file) = &args.pairs {
        // A list of paths: 16 MiB is far beyond any real batch, and a FIFO is refused by type.
        let bytes = trellis2::files::read_regular(file, 16 << 20)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("{}: the pairs file is not UTF-8 text", file.display()))?;
        let base = file.parent().unwrap_or(Path::new(""));
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split('\t').collect();
            let [mesh, image] = fields[..] else {
                bail!(
                    "{}:{}: expected MESH<TAB>IMAGE, got {} field(s)",
                    file.display(),
                    n + 1,
                    fields.len()
                );
            };
            out.push(Pair {
                mesh: base.join(mesh.trim()),
                image: base.join(image.trim()),
            });
        }
    }
    if out.is_empty() {
        bail!("no MESH IMAGE pair given");
    }
    for p in &out {
        for path in [&p.mesh, &p.image] {
            if !path.exists() {
                bail!("{}: no such file or directory", path.display());
            }
        }
        let ext = p
            .mesh
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if !MESH_EXTENSIONS.contains(&ext.as_str()) {
            bail!(
                "{}: not a mesh this command reads (extensions: {}); pairs are MESH IMAGE",
                p.mesh.display(),
                MESH_EXTENSIONS.join(", ")
            );
        }
    }
    Ok(out)
}

/// A per-stage flag may name the tex sampler only (a bare value sets every stage; only the
/// texture sampler runs here).
fn tex_only<T>(flag: &str, values: &PerStage<T>) -> Result<Option<T>>
where
    T: Copy,
{
    let mut out = None;
    let bare = values.0.len() == SamplerStage::ALL.len();
    for (stage, v) in &values.0 {
        if *stage == SamplerStage::Tex {
            out = Some(*v);
        } else if !bare {
            bail!(
                "{flag} {}=…: texture runs only the tex sampler",
                stage.name()
            );
        }
    }
    Ok(out)
}

fn overrides(args: &Args) -> Result<SamplerOverrides> {
    let mut o = SamplerOverrides::default();
    let tex = o.for_stage_mut(SamplerStage::Tex);
    if let Some(p) = &args.steps {
        tex.steps = tex_only("--steps", p)?;
    }
    if let Some(p) = &args.cfg {
        tex.guidance_strength = tex_only("--cfg", p)?;
    }
    if let Some(p) = &args.cfg_rescale {
        tex.guidance_rescale = tex_only("--cfg-rescale", p)?;
    }
    Ok(o)
}

/// Everything checked before the first model loads.
struct Plan {
    pairs: Vec<Pair>,
    overrides: SamplerOverrides,
    noise: Option<std::collections::HashMap<String, Tensor>>,
}

fn plan(args: &Args) -> Result<Plan> {
    let pairs = pairs(args)?;
    let overrides = overrides(args)?;
    if args.device.0.len() != 1 {
        bail!("--device: texture runs on one device");
    }
    let single = pairs.len() == 1;
    if args.noise.is_some() && !single {
        bail!("--noise holds the noise of one run; give exactly one MESH IMAGE pair with it");
    }
    if let Some(p) = &args.save_latents {
        if !single && !is_folder(p) {
            bail!(
                "--save-latents {}: with several pairs, give a folder (existing, or ending in /)",
                p.display()
            );
        }
    }
    let stems: Vec<String> = pairs.iter().map(Pair::stem).collect();
    let outputs: Vec<Vec<PathBuf>> = pairs.iter().map(|p| p.outputs(args)).collect();
    let items: Vec<Destinations> = pairs
        .iter()
        .zip(&stems)
        .zip(&outputs)
        .map(|((p, stem), outputs)| Destinations {
            input: &p.mesh,
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
    let noise = match &args.noise {
        Some(p) => Some(read_tensors(p, &candle_core::Device::Cpu)?),
        None => None,
    };
    Ok(Plan {
        pairs,
        overrides,
        noise,
    })
}

#[derive(Debug, serde::Serialize)]
struct Report {
    trellis2_version: &'static str,
    device: String,
    dtype: String,
    model: PathBuf,
    resolution: u32,
    texture_size: u32,
    seed: u64,
    settings: PipelineSettings,
    model_loads: BTreeMap<String, ModelLoads>,
    items: Vec<ItemReport>,
}

#[derive(Debug, serde::Serialize)]
struct ItemReport {
    mesh: PathBuf,
    image: PathBuf,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    vertices: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    faces: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    check: Option<MeshCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    voxels: Option<usize>,
    /// The mesh's own texture coordinates were used (else a new atlas).
    #[serde(skip_serializing_if = "Option::is_none")]
    kept_uvs: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    glb_vertices: Option<usize>,
    /// Seconds per phase: normalise_voxelise, encode, conditioning, sampling, decode, bake,
    /// write (and preprocess, the picture).
    phases: BTreeMap<&'static str, f64>,
    outputs: Vec<PathBuf>,
    stages: Vec<StageReport>,
}

/// A stage's name → its phase in the report.
fn phase(stage: &str) -> Option<&'static str> {
    Some(match stage {
        "preprocess" => "preprocess",
        "voxelise" => "normalise_voxelise",
        "encode" => "encode",
        "conditioning" => "conditioning",
        "texture" => "sampling",
        "decode" => "decode",
        "bake" => "bake",
        "write" => "write",
        _ => return None,
    })
}

pub fn run(args: &Args) -> Result<u8> {
    let position = interrupt::Position::default();
    interrupt::install("texture", position.clone());
    let plan = plan(args).map_err(super::usage)?;
    let spec = args.device.0[0];
    let device = super::open_device_at(spec.kind.into(), spec.ordinal)
        .with_context(|| format!("--device {spec}"))?
        .device;
    let dtype = DTypeChoice::from(args.dtype);
    let load = LoadOptions {
        dtype,
        memory: if args.low_memory {
            WeightMemory::Streamed
        } else {
            WeightMemory::Resident
        },
    };
    load.check(&device).map_err(super::usage)?;
    let background = Background::from(args.rembg);
    let dir = super::download::ensure_texturing_model(
        args.model.as_deref(),
        background.model(),
        args.yes,
        args.offline,
    )?;
    let mut pipeline = TexturingPipeline::new(dir, device)?.with_load_options(load)?;
    pipeline.apply_overrides(&plan.overrides)?;
    pipeline.keep_models(plan.pairs.len() > 1);

    let mut progress = CliProgress::new(args.quiet, plan.pairs.len());
    progress.set_items(
        plan.pairs
            .iter()
            .map(|p| p.mesh.display().to_string())
            .collect(),
    );
    let mut items = Vec::with_capacity(plan.pairs.len());
    for (k, pair) in plan.pairs.iter().enumerate() {
        position.set(format!(
            "{k} of {} meshes finished, working on {}",
            plan.pairs.len(),
            pair.mesh.display()
        ));
        progress.item_started(k);
        let start = Instant::now();
        let mut item = ItemReport {
            mesh: pair.mesh.clone(),
            image: pair.image.clone(),
            status: "ok",
            error: None,
            seconds: 0.0,
            vertices: None,
            faces: None,
            check: None,
            voxels: None,
            kept_uvs: None,
            glb_vertices: None,
            phases: BTreeMap::new(),
            outputs: pair.outputs(args),
            stages: Vec::new(),
        };
        let result = texture_one(args, &plan, &pipeline, pair, &mut item, &mut progress);
        item.seconds = start.elapsed().as_secs_f64();
        for s in &item.stages {
            if let Some(p) = phase(&s.stage) {
                *item.phases.entry(p).or_default() += s.seconds;
            }
        }
        match result {
            Ok(()) => progress.line(&format!(
                "{}: done in {:.1} s → {}",
                pair.mesh.display(),
                item.seconds,
                item.outputs
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Err(e) => {
                let msg = format!("{e:#}");
                // Errors about the picture name it; the others are about the mesh.
                let image = pair.image.display().to_string();
                let mesh = pair.mesh.display().to_string();
                let msg = if msg.starts_with(&image) || msg.starts_with(&mesh) {
                    msg
                } else {
                    format!("{mesh}: {msg}")
                };
                progress.line(&format!("error: {msg}"));
                item.status = "failed";
                item.error = Some(msg);
                item.outputs.clear();
            }
        }
        progress.item_done();
        items.push(item);
    }
    progress.finish();
    let failed: Vec<String> = items
        .iter()
        .filter(|i| i.status == "failed")
        .map(|i| i.error.clone().unwrap_or_default())
        .collect();
    if !args.quiet {
        println!(
            "{} textured, {} failed (resolution {}, device {})",
            items.len() - failed.len(),
            failed.len(),
            args.resolution,
            describe(pipeline.device())
        );
    }
    for error in &failed {
        eprintln!("error: {error}");
    }
    if let Some(path) = &args.report {
        let report = Report {
            trellis2_version: env!("CARGO_PKG_VERSION"),
            device: describe(pipeline.device()).to_string(),
            dtype: format!("{dtype:?}").to_lowercase(),
            model: pipeline.model_dir().root.clone(),
            resolution: args.resolution,
            texture_size: args.texture_size,
            seed: args.seed,
            settings: pipeline.settings().clone(),
            model_loads: pipeline.model_loads(),
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

/// Reads, textures and writes one pair, filling its report as it goes.
fn texture_one(
    args: &Args,
    plan: &Plan,
    pipeline: &TexturingPipeline,
    pair: &Pair,
    item: &mut ItemReport,
    progress: &mut dyn Progress,
) -> Result<()> {
    let mesh = read_input_mesh(&pair.mesh)?;
    item.vertices = Some(mesh.positions.len());
    item.faces = Some(mesh.faces.len());
    let check = mesh
        .check()
        .map_err(|e| anyhow::anyhow!("{}: {e:#}", pair.mesh.display()))?;
    item.check = Some(check);
    if check.non_manifold_edges > 0 && !args.quiet {
        eprintln!(
            "warning: {}: {} non-manifold edge(s) (shared by more than two triangles); \
             textured anyway",
            pair.mesh.display(),
            check.non_manifold_edges
        );
    }
    let image = load_image(&pair.image)?;
    let options = TextureOptions {
        resolution: args.resolution,
        noise: match &plan.noise {
            Some(t) => NoiseSource::Injected(t.clone()),
            None => NoiseSource::Seed(args.seed),
        },
        background: Background::from(args.rembg),
    };
    let voxels = pipeline.texture(&mesh, &image, options, progress);
    let voxels = voxels?;
    item.voxels = Some(voxels.voxel_coords.len());
    item.stages.extend(voxels.stages.iter().cloned());
    if let Some(p) = &args.save_latents {
        let path = if is_folder(p) {
            std::fs::create_dir_all(p)
                .with_context(|| format!("{}: cannot create folder", p.display()))?;
            p.join(format!("{}.latents.safetensors", pair.stem()))
        } else {
            p.clone()
        };
        write_latents(&path, &voxels.latents, voxels.resolution)?;
    }
    let glb_path = &item.outputs[0];
    let written = voxels.write_glb(&mesh, glb_path, args.texture_size)?;
    item.kept_uvs = Some(written.kept_uvs);
    item.glb_vertices = Some(written.glb.vertices);
    for s in &written.stages {
        progress.stage_finished(s);
    }
    item.stages.extend(written.stages);
    if args.preview {
        if let Some(out) = item.outputs.get(1) {
            super::render::write_preview(glb_path, out)?;
        }
    }
    Ok(())
}
