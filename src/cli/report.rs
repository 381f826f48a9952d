//! The `--report FILE.json` document: per image and stage, wall time, token and voxel counts,
//! peak memory; the seed, pipeline parameters, kernel tuning and versions of the run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use trellis2::ops::tuning::Tuning;
use trellis2::ops::CandleKernelLoad;
use trellis2::pipeline::{ModelLoads, PipelineSettings, PrefetchReport, StageReport};

#[derive(Debug, serde::Serialize)]
pub struct RunReport {
    pub trellis2_version: &'static str,
    pub candle_version: &'static str,
    pub device: String,
    /// `--dtype` as given (`auto` resolves per checkpoint and device).
    pub dtype: String,
    pub low_memory: bool,
    pub model: PathBuf,
    pub pipeline_type: String,
    pub seed: u64,
    pub max_tokens: usize,
    pub settings: PipelineSettings,
    /// Every kernel tuning knob (`TRELLIS2_*`) as the run used it.
    pub tuning: Tuning,
    /// `picture` or `stage` (`--batch-order`); absent when nothing was generated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_order: Option<&'static str>,
    /// Per model role: how many times its weights were read, and the seconds that took.
    pub model_loads: BTreeMap<String, ModelLoads>,
    /// CUDA: per device, how candle's kernel modules were loaded from the build's SASS when it
    /// was prepared (seconds, modules loaded, errors).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub candle_kernels: Vec<CandleKernelLoad>,
    /// The read-ahead of the weight files into the page cache (`TRELLIS2_PREFETCH`), per
    /// worker, when one ran.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub weight_prefetch: Vec<PrefetchReport>,
    /// Wall seconds from the first picture's start to the last picture's files written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_seconds: Option<f64>,
    /// Pictures generated per minute of `batch_seconds`: where a picture's files are written
    /// while the next picture runs, this is above 60 / an item's `seconds`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pictures_per_minute: Option<f64>,
    pub items: Vec<ItemReport>,
}

#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Failed,
    Skipped,
}

#[derive(Debug, serde::Serialize)]
pub struct ItemReport {
    pub input: PathBuf,
    /// The worker (its position in `--device`) and its device, when a batch ran on several
    /// (`--device cuda:0,cuda:1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// This item's own work: its stages plus its outputs (or its time until it failed).
    pub seconds: f64,
    /// Seconds from the batch's start to when this item was finished: its files written and,
    /// for this report, its splat quality measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voxels: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh_vertices: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh_faces: Option<usize>,
    /// The GLB's decimation (`--faces`), when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decimation: Option<DecimationReport>,
    /// Splats against the mesh (GLB, else mesh PLY) from 8 views at 512², when both were
    /// written (`trellis2::render::metrics::splat_quality`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub splat_psnr_db: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub splat_ssim: Option<f64>,
    /// The same PSNR over the object's pixels only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub splat_psnr_object_db: Option<f64>,
    /// Seconds of each output after the pipeline: `mesh` (the surface extracted from the shape
    /// decoder's voxels and its holes filled, on the writer's side), `asset` (the voxels and
    /// mesh gathered for export), `latents` (--save-latents), then each format (`splat`,
    /// `splat-spz`, `mesh-ply`, `glb`: conversion and file write; `mesh-prepare`: the faces
    /// wound outward and the colours at the vertices, computed once before the formats start,
    /// for both mesh formats and the splat fit; `splat-fit`: the splats fitted once for both
    /// splat formats when both are written, `splat` and `splat-spz` then only their files),
    /// `preview`, and `splat_quality` (computed only for this report).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub output_seconds: BTreeMap<String, f64>,
    /// The GLB's export (decimation, unwrap, bake, encoding, writing), when one was written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub glb: Option<GlbReport>,
    pub outputs: Vec<PathBuf>,
    pub stages: Vec<StageReport>,
}

impl ItemReport {
    /// An item not yet run, with the files it will write.
    pub fn new(input: &Path, outputs: Vec<PathBuf>) -> Self {
        Self {
            input: input.to_path_buf(),
            worker: None,
            device: None,
            status: Status::Ok,
            error: None,
            seconds: 0.0,
            finished_seconds: None,
            resolution: None,
            voxels: None,
            mesh_vertices: None,
            mesh_faces: None,
            decimation: None,
            splat_psnr_db: None,
            splat_ssim: None,
            splat_psnr_object_db: None,
            output_seconds: BTreeMap::new(),
            glb: None,
            outputs,
            stages: Vec::new(),
        }
    }
}

/// `generate --faces N`: what the GLB's mesh was reduced to, and how long it took.
#[derive(Debug, serde::Serialize)]
pub struct DecimationReport {
    pub target_faces: usize,
    pub faces_before: usize,
    pub faces_after: usize,
    pub vertices_after: usize,
    pub seconds: f64,
}

/// `generate --format glb`: the whole export's wall time and what the file holds.
#[derive(Debug, serde::Serialize)]
pub struct GlbReport {
    pub seconds: f64,
    pub faces: usize,
    /// The textures (`--texture png`), absent with `--texture none`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub texture: Option<TextureReport>,
}

/// The GLB's UV atlas and baked textures, and each phase's wall time.
#[derive(Debug, serde::Serialize)]
pub struct TextureReport {
    pub texture_size: u32,
    pub charts: usize,
    /// Fraction of the texels inside charts.
    pub utilisation: f64,
    pub overlapping_triangles: usize,
    pub alpha_blend: bool,
    pub png_bytes: usize,
    pub unwrap_seconds: f64,
    pub bake_seconds: f64,
    pub encode_seconds: f64,
    pub write_seconds: f64,
    /// Whether a normal map (`--normal-map`) was baked, and the time it took: indexing the raw
    /// surface, tangents and its bake (its PNG encoding is in `encode_seconds`).
    pub normal_map: bool,
    pub normal_map_seconds: f64,
}

/// The candle version this binary was built against (Cargo.toml's requirement).
pub const CANDLE_VERSION: &str = "0.11";
