//! The whole image → 3D run (docs/MODEL.md §1.4): preprocess, condition, sparse structure, shape
//! (direct or cascade), texture, decode, for one picture or a batch. A batch runs picture by
//! picture with every model kept loaded, or stage by stage with one stage's models loaded at a
//! time ([`BatchOrder`]); either way each model is read once per batch.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};

use super::background::{conditioning_image, Background};
use super::conditioning::condition;
use super::config::{PipelineSettings, PipelineType, SamplerOverrides, DEFAULT_MAX_TOKENS};
use super::context::Ctx;
use super::decode::{shape_decode, texture_decode, ShapeDecoded};
use super::dev_forcing::DevForcing;
use super::latents_file::SavedLatents;
use super::model_cache::{Keep, ModelCache, ModelLoads};
use super::models::{role, LoadOptions};
use super::noise::{Noise, NoiseSource};
use super::output::{DecodedVoxels, Generated, Latents};
use super::prefetch::{host_budget, plan, unclaimed, weight_files, PrefetchReport, Prefetcher};
use super::progress::{Progress, StageReport};
use super::shape::{
    cascade_coords, sample_cascade_hr, sample_cascade_lr, sample_shape_direct, ShapeLatent,
};
use super::sparse_structure::sample_structure;
use super::texture::sample_texture;
use crate::export::splat::SplatShape;
use crate::image::{load_image, LoadedImage, RgbImage};
use crate::models::birefnet::BiRefNet;
use crate::models::WeightMemory;
use crate::weights::{ModelDir, RembgModel};

/// Per-run choices.
pub struct RunOptions {
    /// `None`: the model directory's default (`1024-cascade` in the release).
    pub pipeline_type: Option<PipelineType>,
    pub noise: NoiseSource,
    /// Token budget of the 1536 cascade (`max_num_tokens`).
    pub max_tokens: usize,
    /// Pictures without transparency: remove the background, keep it, or refuse.
    pub background: Background,
}

impl RunOptions {
    /// Seeded noise, the default type and token budget.
    pub fn seeded(seed: u64) -> Self {
        Self {
            pipeline_type: None,
            noise: NoiseSource::Seed(seed),
            max_tokens: DEFAULT_MAX_TOKENS,
            background: Background::default(),
        }
    }
}

/// The read-ahead of a run's weight files, unless `load` streams its weights (`--low-memory`:
/// they are there to hold less) or `TRELLIS2_PREFETCH=off`; `models` is the cache whose held
/// roles it passes over.
fn read_ahead(
    dir: &ModelDir,
    ptype: PipelineType,
    load: LoadOptions,
    models: &Arc<ModelCache>,
) -> Option<Prefetcher> {
    let readers = crate::ops::tuning::Tuning::current().prefetch_readers;
    if load.memory == WeightMemory::Streamed || readers == 0 {
        return None;
    }
    let budget = host_budget();
    let (files, over) = plan(weight_files(dir, ptype), budget);
    Prefetcher::start(unclaimed(files), budget, over, models.clone(), readers)
}

/// The weight files of a run started into the page cache before any device is open, so that a
/// cold start's device set-up (a CUDA context and its libraries: ≈ 0.5–1 s) overlaps the disk;
/// [`Pipeline::with_read_ahead`] adopts it.
pub struct ReadAhead {
    models: Arc<ModelCache>,
    prefetch: Option<Prefetcher>,
}

impl ReadAhead {
    /// Starts reading the files of `ptype`'s models in `dir`, as a pipeline's first run would.
    pub fn start(dir: &ModelDir, ptype: PipelineType, load: LoadOptions) -> Self {
        let models = Arc::new(ModelCache::default());
        let prefetch = read_ahead(dir, ptype, load, &models);
        Self { models, prefetch }
    }

    /// Whether a read is under way (`false`: nothing to read, or read-ahead is off).
    pub fn is_reading(&self) -> bool {
        self.prefetch.is_some()
    }
}

/// A model directory ready to generate on one device.
pub struct Pipeline {
    dir: ModelDir,
    settings: PipelineSettings,
    device: Device,
    load: LoadOptions,
    models: Arc<ModelCache>,
    forcing: Option<DevForcing>,
    /// The splat shape whose patches the surface thread computes ahead (`None`: no splats).
    splat_shape: Option<SplatShape>,
    /// The read-ahead of the weight files, started by the first run (`None` inside: none ran).
    prefetch: OnceLock<Option<Prefetcher>>,
}

impl Pipeline {
    /// Reads the sampler settings and normalisation of `dir`'s `pipeline.json`.
    pub fn new(dir: ModelDir, device: Device) -> Result<Self> {
        let settings = PipelineSettings::from_pipeline_args(&dir.pipeline.args)
            .with_context(|| format!("{}", dir.root.join("pipeline.json").display()))?;
        Ok(Self {
            dir,
            settings,
            device,
            load: LoadOptions::default(),
            models: Arc::new(ModelCache::default()),
            forcing: None,
            splat_shape: None,
            prefetch: OnceLock::new(),
        })
    }

    /// Compute dtype and weight residency of every model the later runs load; an error when
    /// the device cannot compute in that dtype.
    pub fn with_load_options(mut self, load: LoadOptions) -> Result<Self> {
        load.check(&self.device)?;
        self.load = load;
        Ok(self)
    }

    /// Has the surface thread also compute the voxels' splat patches for `shape`
    /// ([`crate::export::splat_fit::splat_patches`], beside the texture stages), for a caller
    /// that writes splats; `None` (the default) computes none.
    pub fn with_splat_patches(mut self, shape: Option<SplatShape>) -> Self {
        self.splat_shape = shape;
        self
    }

    /// Development runs only (benchmarks with random weights): force the sparse structure and
    /// the decoders' growth to the baseline's sizes ([`DevForcing`]).
    pub fn with_dev_forcing(mut self, forcing: DevForcing) -> Self {
        self.forcing = Some(forcing);
        self
    }

    pub fn settings(&self) -> &PipelineSettings {
        &self.settings
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn model_dir(&self) -> &ModelDir {
        &self.dir
    }

    pub fn load_options(&self) -> LoadOptions {
        self.load
    }

    /// Changes sampler parameters for later runs (checked before they are kept).
    pub fn apply_overrides(&mut self, overrides: &SamplerOverrides) -> Result<()> {
        let mut s = self.settings.clone();
        s.apply(overrides)?;
        self.settings = s;
        Ok(())
    }

    /// How often each model role's weights were read so far, and how long that took.
    pub fn model_loads(&self) -> BTreeMap<String, ModelLoads> {
        self.models.loads()
    }

    /// What the read-ahead of the weight files did, once it has ended (waits for it); `None`
    /// where none ran (`TRELLIS2_PREFETCH=off`, `--low-memory`, or no run yet).
    pub fn weight_prefetch(&self) -> Option<PrefetchReport> {
        self.prefetch.get()?.as_ref().map(Prefetcher::finish)
    }

    /// Starts reading the weight files of `ptype`'s models into the page cache in the order the
    /// schedule loads them, on the pipeline's first run, unless a [`ReadAhead`] it adopted
    /// did already ([`read_ahead`]).
    fn start_prefetch(&self, ptype: PipelineType) {
        self.prefetch
            .get_or_init(|| read_ahead(&self.dir, ptype, self.load, &self.models));
    }

    /// Drops every model this pipeline holds (a later run loads them again): a batch worker
    /// with no pictures left gives their memory back while its last pictures' files are still
    /// being written, instead of at the process's exit.
    pub fn release_models(&self) {
        self.models.set_keep(Keep::Roles(HashSet::new()));
        self.models.trim();
    }

    /// Adopts a read-ahead started before the device was open ([`ReadAhead::start`]): its
    /// reads pass over the models this pipeline will hold, and the report is this pipeline's.
    /// Without effect once the pipeline has run.
    pub fn with_read_ahead(mut self, early: ReadAhead) -> Self {
        if self.prefetch.get().is_none() {
            self.models = early.models;
            let _ = self.prefetch.set(early.prefetch);
        }
        self
    }

    /// Preprocesses a decoded image (alpha crop, premultiply) and generates from it.
    pub fn generate(
        &self,
        image: &LoadedImage,
        options: RunOptions,
        progress: &mut dyn Progress,
    ) -> Result<Generated> {
        self.generate_one(Picture::Decoded(image), options, progress)
    }

    /// Generates from an already preprocessed RGB image (the conditioning image).
    pub fn generate_from_rgb(
        &self,
        image: &RgbImage,
        options: RunOptions,
        progress: &mut dyn Progress,
    ) -> Result<Generated> {
        self.generate_one(Picture::Conditioning(image), options, progress)
    }

    fn generate_one(
        &self,
        picture: Picture,
        options: RunOptions,
        progress: &mut dyn Progress,
    ) -> Result<Generated> {
        let mut result = None;
        self.generate_batch(
            vec![BatchItem { picture, options }],
            BatchOrder::StageMajor,
            &mut Forward(progress),
            &mut |_, r, _| result = Some(r),
        );
        result.context("the run produced no result")?
    }

    /// Generates every item of a batch in `order`, calling `done(index, result)` as each one
    /// finishes (at once for an item that fails; the others go on). Every item must use the
    /// same pipeline type. Outputs are the same, bit for bit, in either order and as one
    /// [`Pipeline::generate`] per picture.
    pub fn generate_batch<P: Progress>(
        &self,
        items: Vec<BatchItem>,
        order: BatchOrder,
        progress: &mut P,
        done: &mut dyn FnMut(usize, Result<Generated>, &mut P),
    ) {
        self.generate_batch_voxels(items, order, progress, &mut |i, r, p| {
            done(i, r.and_then(extracted), p)
        });
    }

    /// [`Pipeline::generate_batch`] whose results still hold the shape decoder's voxels instead
    /// of the surface: the caller runs [`Generated::extract_mesh`] (host work only), e.g. on
    /// another thread while this one goes on with the next picture's device stages.
    pub fn generate_batch_voxels<P: Progress>(
        &self,
        items: Vec<BatchItem>,
        order: BatchOrder,
        progress: &mut P,
        done: &mut dyn FnMut(usize, Result<Generated>, &mut P),
    ) {
        let default = self.settings.default_type;
        let Some(ptype) = items
            .first()
            .map(|i| i.options.pipeline_type.unwrap_or(default))
        else {
            return;
        };
        let mut jobs: Vec<Option<Job>> = Vec::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            let job = Job::new(item, default);
            if job.ptype == ptype {
                jobs.push(Some(job));
            } else {
                jobs.push(None);
                done(
                    index,
                    Err(anyhow::anyhow!(
                        "pipeline {}: a batch runs one pipeline type ({ptype})",
                        job.ptype
                    )),
                    progress,
                );
            }
        }
        // A stage-major batch of several pictures decodes each picture's shapes and textures in
        // one step: split, its every picture's surface would be held at once.
        let split = order == BatchOrder::PictureMajor || jobs.iter().flatten().count() <= 1;
        let steps = schedule(ptype, split);
        let streamed = self.load.memory == WeightMemory::Streamed;
        self.start_prefetch(ptype);
        match order {
            BatchOrder::PictureMajor => {
                self.models.set_keep(Keep::All);
                for index in 0..jobs.len() {
                    let Some(mut job) = jobs[index].take() else {
                        continue;
                    };
                    // The next picture file is decoded on another thread meanwhile.
                    if let Some(next) = jobs[index + 1..].iter_mut().flatten().next() {
                        next.read_picture_ahead();
                    }
                    progress.item_started(index);
                    let result = steps
                        .iter()
                        .try_for_each(|&step| self.run_step(step, &mut job, progress))
                        .and_then(|()| job.finish());
                    done(index, result, progress);
                }
            }
            BatchOrder::StageMajor => {
                let host = !self.device.is_cpu() && jobs.len() > 1;
                for (k, &step) in steps.iter().enumerate() {
                    let later: HashSet<&'static str> = if streamed {
                        HashSet::new()
                    } else {
                        steps[k + 1..]
                            .iter()
                            .flat_map(|&s| step_roles(s, ptype))
                            .copied()
                            .collect()
                    };
                    let live: Vec<usize> = (0..jobs.len()).filter(|&i| jobs[i].is_some()).collect();
                    for (n, &index) in live.iter().enumerate() {
                        // Until the step's last picture, its own models stay too.
                        let mut keep = later.clone();
                        if n + 1 < live.len() {
                            keep.extend(step_roles(step, ptype));
                        }
                        self.models.set_keep(Keep::Roles(keep));
                        let Some(job) = jobs[index].as_mut() else {
                            continue;
                        };
                        progress.item_started(index);
                        let mut result = self.run_step(step, job, progress);
                        if result.is_ok() && host {
                            // The other pictures' steps need the device memory.
                            result = job.move_to(&Device::Cpu);
                        }
                        let last = k + 1 == steps.len();
                        if let Err(e) = result {
                            jobs[index] = None;
                            done(index, Err(e), progress);
                        } else if last {
                            if let Some(job) = jobs[index].take() {
                                done(index, job.finish(), progress);
                            }
                        }
                    }
                    self.models.set_keep(Keep::Roles(later));
                    self.models.trim();
                }
                self.models.set_keep(Keep::Roles(HashSet::new()));
                self.models.trim();
            }
        }
    }

    fn ctx<'a>(&'a self, job: &mut Job, progress: &'a mut dyn Progress) -> Ctx<'a> {
        Ctx {
            dir: &self.dir,
            models: &self.models,
            settings: &self.settings,
            device: &self.device,
            load: self.load,
            forcing: self.forcing,
            splat_shape: self.splat_shape,
            noise: std::mem::replace(&mut job.noise, Noise::new(NoiseSource::Seed(0))),
            latents: std::mem::take(&mut job.latents),
            progress,
            reports: std::mem::take(&mut job.reports),
        }
    }

    /// Runs one step of one picture; the job's noise stream, intermediates and reports go
    /// through the step's context and back.
    fn run_step(&self, step: Step, job: &mut Job, progress: &mut dyn Progress) -> Result<()> {
        let mut ctx = self.ctx(job, progress);
        let result = self.step_in(step, &mut ctx, job);
        job.noise = ctx.noise;
        job.latents = ctx.latents;
        job.reports = ctx.reports;
        result
    }

    fn step_in(&self, step: Step, ctx: &mut Ctx, job: &mut Job) -> Result<()> {
        let device = &self.device;
        let on = |t: &Option<Tensor>, what: &str| -> Result<Tensor> {
            Ok(t.as_ref()
                .with_context(|| format!("{what} missing"))?
                .to_device(device)?)
        };
        match step {
            Step::Preprocess => {
                let rgb = match job.picture.take().context("picture missing")? {
                    Picture::Conditioning(rgb) => rgb.clone(),
                    picture => {
                        let stage = ctx.begin("preprocess", 1);
                        let loaded;
                        let image = match picture {
                            Picture::File(path) => {
                                loaded = match job.picture_decoding.take() {
                                    Some(reading) => reading.join().map_err(|_| {
                                        anyhow::anyhow!("{}: decoding failed", path.display())
                                    })??,
                                    None => load_image(path)?,
                                };
                                &loaded
                            }
                            Picture::Decoded(image) => image,
                            Picture::Conditioning(_) => unreachable!("handled above"),
                        };
                        let open = |folder: &std::path::Path, choice: RembgModel| {
                            self.models.get_or_load(role::BACKGROUND_REMOVAL, || {
                                BiRefNet::open_as(folder, choice, device)
                            })
                        };
                        let rgb = conditioning_image(&self.dir, image, job.background, &open);
                        self.models.release(role::BACKGROUND_REMOVAL);
                        let rgb = rgb?;
                        ctx.progress.step("preprocess", 1);
                        ctx.end(stage);
                        rgb
                    }
                };
                job.rgb = Some(rgb);
            }
            Step::Conditioning => {
                let image = job.rgb.take().context("conditioning image missing")?;
                let mut stage = ctx.begin("conditioning", 1);
                let dino = ctx.dinov3()?;
                let c512 = condition(&dino, &image, 512, device).context("conditioning stage")?;
                let c1024 = if job.ptype.needs_cond_1024() {
                    Some(condition(&dino, &image, 1024, device)?)
                } else {
                    None
                };
                drop(dino);
                ctx.release(role::IMAGE_COND);
                ctx.latents.insert("cond_512", c512.clone());
                if let Some(c) = &c1024 {
                    ctx.latents.insert("cond_1024", c.clone());
                }
                stage.tokens = Some(c1024.as_ref().unwrap_or(&c512).dim(1)?);
                stage.model_calls = if c1024.is_some() { 2 } else { 1 };
                ctx.progress.step("conditioning", 1);
                ctx.end(stage);
                job.c512 = Some(c512);
                job.c1024 = c1024;
            }
            Step::Structure => {
                let c512 = on(&job.c512, "512 condition")?;
                let coords = sample_structure(ctx, &c512, job.ptype.structure_resolution())
                    .context("sparse-structure stage")?;
                job.coords = Some(coords);
            }
            Step::Shape => {
                let cond = if job.ptype == PipelineType::P512 {
                    on(&job.c512, "512 condition")?
                } else {
                    on(&job.c1024, "1024 condition")?
                };
                let coords = on(&job.coords, "structure")?;
                let shape =
                    sample_shape_direct(ctx, job.ptype, &cond, &coords).context("shape stage")?;
                job.shape = Some(shape);
            }
            Step::ShapeLr => {
                let c512 = on(&job.c512, "512 condition")?;
                let coords = on(&job.coords, "structure")?;
                let lr = sample_cascade_lr(ctx, &c512, &coords).context("shape stage")?;
                job.lr = Some(lr);
            }
            Step::Cascade => {
                let coords = on(&job.coords, "structure")?;
                let lr = on(&job.lr, "low-resolution shape")?;
                let target = job.ptype.cascade_target().context("not a cascade")?;
                let hr = cascade_coords(ctx, &coords, &lr, target, job.max_tokens)
                    .context("shape stage")?;
                job.hr = Some(hr);
            }
            Step::ShapeHr => {
                let c1024 = on(&job.c1024, "1024 condition")?;
                let (res, coords) = job.hr.take().context("cascade coordinates missing")?;
                let shape = sample_cascade_hr(ctx, &c1024, (res, coords.to_device(device)?))
                    .context("shape stage")?;
                job.shape = Some(shape);
            }
            Step::Texture => {
                let shape = job.shape.as_ref().context("shape missing")?.on(device)?;
                let cond = if job.ptype == PipelineType::P512 {
                    on(&job.c512, "512 condition")?
                } else {
                    on(&job.c1024, "1024 condition")?
                };
                let tex = sample_texture(ctx, &shape, &cond, job.ptype != PipelineType::P512)
                    .context("texture stage")?;
                job.tex = Some(tex);
            }
            Step::ShapeDecode => {
                let shape = job.shape.as_ref().context("shape missing")?.on(device)?;
                let decoded = shape_decode(ctx, &shape.coords, &shape.feats, shape.resolution)
                    .context("shape decode stage")?;
                job.shape_decoded = Some(decoded);
            }
            Step::Decode => {
                self.step_in(Step::ShapeDecode, ctx, job)?;
                self.step_in(Step::TextureDecode, ctx, job)?;
            }
            Step::TextureDecode => {
                let shape = job.shape.take().context("shape missing")?.on(device)?;
                let tex = on(&job.tex, "texture")?;
                let decoded = job
                    .shape_decoded
                    .take()
                    .context("shape decoder's voxels missing")?
                    .on(device)?;
                let voxels = texture_decode(ctx, &shape.coords, &tex, decoded)
                    .context("texture decode stage")?;
                job.decoded = Some(voxels);
            }
        }
        Ok(())
    }

    /// Decodes a latents file (`--from-latents`): the shape and texture latents on their
    /// coordinates, at the file's resolution. No sampling, no noise.
    pub fn decode_saved(
        &self,
        saved: &SavedLatents,
        pipeline_type: PipelineType,
        progress: &mut dyn Progress,
    ) -> Result<Generated> {
        let f32_on = |name: &str| -> Result<Tensor> {
            Ok(saved
                .get(name)?
                .to_dtype(DType::F32)?
                .to_device(&self.device)?)
        };
        let shape = ShapeLatent {
            coords: saved
                .shape_coords()?
                .to_dtype(DType::I32)?
                .to_device(&self.device)?,
            feats: f32_on("shape_slat_denorm.feats")?,
            resolution: saved.resolution,
        };
        let tex = f32_on("tex_slat_denorm.feats")?;
        let mut job = Job::empty(pipeline_type);
        for (name, t) in &saved.tensors {
            job.latents.insert(name.clone(), t.clone());
        }
        job.shape = Some(shape);
        job.tex = Some(tex);
        self.models.set_keep(Keep::Roles(HashSet::new()));
        self.models.trim();
        self.run_step(Step::Decode, &mut job, progress)?;
        job.finish().and_then(extracted)
    }
}

/// `g` with its surface extracted.
fn extracted(mut g: Generated) -> Result<Generated> {
    g.extract_mesh()?;
    Ok(g)
}

/// A `&mut dyn Progress` as a sized [`Progress`].
struct Forward<'a>(&'a mut dyn Progress);

impl Progress for Forward<'_> {
    fn item_started(&mut self, index: usize) {
        self.0.item_started(index)
    }
    fn stage_started(&mut self, stage: &str, steps: usize) {
        self.0.stage_started(stage, steps)
    }
    fn step(&mut self, stage: &str, done: usize) {
        self.0.step(stage, done)
    }
    fn stage_finished(&mut self, report: &StageReport) {
        self.0.stage_finished(report)
    }
}

/// In which order a batch runs its pictures through the stages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchOrder {
    /// Each picture through every stage before the next picture, every model loaded once and
    /// kept (needs device memory for all of them at once); outputs appear picture by picture.
    PictureMajor,
    /// Every picture through a stage before the next stage's models load, the pictures'
    /// intermediates waiting in host memory; each model is loaded once and only one stage's
    /// models are on the device. A single picture runs this way.
    StageMajor,
}

/// One picture of a batch and how to run it.
pub struct BatchItem<'a> {
    pub picture: Picture<'a>,
    pub options: RunOptions,
}

/// Where a batch item's picture comes from.
pub enum Picture<'a> {
    /// A picture file, decoded when its turn to be preprocessed comes.
    File(&'a std::path::Path),
    /// A decoded picture.
    Decoded(&'a LoadedImage),
    /// An already preprocessed conditioning image.
    Conditioning(&'a RgbImage),
}

/// The steps of a run: stages, with the cascade's shape stage split where its model changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Preprocess,
    Conditioning,
    Structure,
    Shape,
    ShapeLr,
    Cascade,
    ShapeHr,
    ShapeDecode,
    Texture,
    TextureDecode,
    /// Both decoders, one after the other.
    Decode,
}

/// The steps of a run of `ptype`. With `split_decode` the shape decoder runs right after the
/// shape stage, so that the surface is extracted while the texture stages run; without it,
/// both decoders run after the texture stage.
fn schedule(ptype: PipelineType, split_decode: bool) -> Vec<Step> {
    let steps = schedule_split(ptype);
    if split_decode {
        return steps.to_vec();
    }
    steps
        .iter()
        .filter(|&&s| s != Step::ShapeDecode)
        .map(|&s| match s {
            Step::TextureDecode => Step::Decode,
            s => s,
        })
        .collect()
}

fn schedule_split(ptype: PipelineType) -> &'static [Step] {
    use Step::*;
    match ptype {
        PipelineType::P512 | PipelineType::P1024 => &[
            Preprocess,
            Conditioning,
            Structure,
            Shape,
            ShapeDecode,
            Texture,
            TextureDecode,
        ],
        PipelineType::Cascade1024 | PipelineType::Cascade1536 => &[
            Preprocess,
            Conditioning,
            Structure,
            ShapeLr,
            Cascade,
            ShapeHr,
            ShapeDecode,
            Texture,
            TextureDecode,
        ],
    }
}

/// The `pipeline.json` roles a run of `ptype` loads (the background remover aside), each once.
pub(crate) fn pipeline_roles(ptype: PipelineType) -> Vec<&'static str> {
    let mut roles: Vec<&'static str> = Vec::new();
    for step in schedule(ptype, true) {
        for &r in step_roles(step, ptype) {
            if r != role::BACKGROUND_REMOVAL && !roles.contains(&r) {
                roles.push(r);
            }
        }
    }
    roles
}

/// The model roles a step may load.
fn step_roles(step: Step, ptype: PipelineType) -> &'static [&'static str] {
    let p512 = ptype == PipelineType::P512;
    match step {
        Step::Preprocess => &[role::BACKGROUND_REMOVAL],
        Step::Conditioning => &[role::IMAGE_COND],
        Step::Structure => &[role::SS_FLOW, role::SS_DECODER],
        Step::Shape if p512 => &[role::SHAPE_FLOW_512],
        Step::Shape => &[role::SHAPE_FLOW_1024],
        Step::ShapeLr => &[role::SHAPE_FLOW_512],
        Step::Cascade => &[role::SHAPE_DECODER],
        Step::ShapeHr => &[role::SHAPE_FLOW_1024],
        Step::Texture if p512 => &[role::TEX_FLOW_512],
        Step::Texture => &[role::TEX_FLOW_1024],
        Step::ShapeDecode => &[role::SHAPE_DECODER],
        Step::TextureDecode => &[role::TEX_DECODER],
        Step::Decode => &[role::SHAPE_DECODER, role::TEX_DECODER],
    }
}

/// One picture's run between steps: its noise stream, intermediates and results so far.
struct Job<'a> {
    ptype: PipelineType,
    picture: Option<Picture<'a>>,
    background: Background,
    max_tokens: usize,
    noise: Noise,
    latents: Latents,
    reports: Vec<StageReport>,
    rgb: Option<RgbImage>,
    c512: Option<Tensor>,
    c1024: Option<Tensor>,
    coords: Option<Tensor>,
    lr: Option<Tensor>,
    hr: Option<(usize, Tensor)>,
    shape: Option<ShapeLatent>,
    tex: Option<Tensor>,
    shape_decoded: Option<ShapeDecoded>,
    decoded: Option<DecodedVoxels>,
    /// The picture file being decoded on another thread ([`Job::read_picture_ahead`]).
    picture_decoding: Option<std::thread::JoinHandle<Result<LoadedImage>>>,
}

impl<'a> Job<'a> {
    fn new(item: BatchItem<'a>, default: PipelineType) -> Self {
        let RunOptions {
            pipeline_type,
            noise,
            max_tokens,
            background,
        } = item.options;
        let ptype = pipeline_type.unwrap_or(default);
        Self {
            picture: Some(item.picture),
            background,
            max_tokens,
            noise: Noise::new(noise),
            ..Self::empty(ptype)
        }
    }

    fn empty(ptype: PipelineType) -> Self {
        Self {
            ptype,
            picture: None,
            background: Background::default(),
            max_tokens: DEFAULT_MAX_TOKENS,
            noise: Noise::new(NoiseSource::Seed(0)),
            latents: Latents::default(),
            reports: Vec::new(),
            rgb: None,
            c512: None,
            c1024: None,
            coords: None,
            lr: None,
            hr: None,
            shape: None,
            tex: None,
            shape_decoded: None,
            decoded: None,
            picture_decoding: None,
        }
    }

    /// Starts decoding the job's picture file on another thread, so that the device thread
    /// finds it decoded when the picture's turn comes (≈ 30–60 ms a picture of CPU work that
    /// otherwise sits between two pictures' GPU work).
    fn read_picture_ahead(&mut self) {
        if let (Some(Picture::File(path)), None) = (&self.picture, &self.picture_decoding) {
            let path = path.to_path_buf();
            self.picture_decoding = std::thread::Builder::new()
                .name("picture-read".into())
                .spawn(move || load_image(&path))
                .ok();
        }
    }

    /// Moves every tensor the job holds to `device`.
    fn move_to(&mut self, device: &Device) -> Result<()> {
        let mv = |t: &mut Option<Tensor>| -> Result<()> {
            if let Some(x) = t {
                *x = x.to_device(device)?;
            }
            Ok(())
        };
        for t in [
            &mut self.c512,
            &mut self.c1024,
            &mut self.coords,
            &mut self.lr,
            &mut self.tex,
        ] {
            mv(t)?;
        }
        if let Some((_, coords)) = &mut self.hr {
            *coords = coords.to_device(device)?;
        }
        if let Some(shape) = &mut self.shape {
            *shape = shape.on(device)?;
        }
        if let Some(decoded) = &mut self.shape_decoded {
            *decoded = decoded.on(device)?;
        }
        self.latents = self.latents.on(device)?;
        Ok(())
    }

    fn finish(mut self) -> Result<Generated> {
        let voxels = self.decoded.take().context("the run did not decode")?;
        Ok(Generated::pending(
            self.ptype,
            voxels,
            self.latents,
            self.reports,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tuning::Tuning;

    fn golden() -> Pipeline {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden");
        Pipeline::new(ModelDir::open(&root).unwrap(), Device::Cpu).unwrap()
    }

    /// The first run reads every model's file ahead, in the schedule's order, once; a later run
    /// starts nothing new.
    #[test]
    fn read_ahead_follows_the_schedule_once() {
        let p = golden();
        assert!(p.weight_prefetch().is_none(), "no run yet");
        p.start_prefetch(PipelineType::P512);
        let report = p.weight_prefetch().expect("a read-ahead ran");
        let roles: Vec<&str> = report.files.iter().map(|f| f.role.as_str()).collect();
        assert_eq!(roles, pipeline_roles(PipelineType::P512));
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let sizes: u64 = report.files.iter().map(|f| f.bytes).sum();
        assert_eq!(report.bytes, sizes);
        p.start_prefetch(PipelineType::Cascade1024);
        assert_eq!(p.weight_prefetch(), Some(report));
    }

    /// A read-ahead started before the pipeline (before its device is open) becomes the
    /// pipeline's: it reads the run's files in order, its report is the pipeline's, and the
    /// first run starts no second one. (The folder links the golden one's entries, so that
    /// its paths are not those the other tests' read-aheads claim.)
    #[cfg(unix)]
    #[test]
    fn an_early_read_ahead_is_the_pipelines() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden");
        let linked = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(&root).unwrap() {
            let entry = entry.unwrap();
            std::os::unix::fs::symlink(entry.path(), linked.path().join(entry.file_name()))
                .unwrap();
        }
        let dir = ModelDir::open(linked.path()).unwrap();
        let early = ReadAhead::start(&dir, PipelineType::P512, LoadOptions::default());
        assert!(early.is_reading());
        let p = Pipeline::new(dir, Device::Cpu)
            .unwrap()
            .with_read_ahead(early);
        p.start_prefetch(PipelineType::P512);
        let report = p.weight_prefetch().expect("the early read-ahead");
        let roles: Vec<&str> = report.files.iter().map(|f| f.role.as_str()).collect();
        assert_eq!(roles, pipeline_roles(PipelineType::P512));
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(
            report.bytes,
            report.files.iter().map(|f| f.bytes).sum::<u64>()
        );
    }

    /// Split, the shape decoder runs right after the shape stage; joined (a stage-major batch
    /// of several pictures), both decoders run last, in one step. Both load the same models.
    #[test]
    fn schedules_split_or_join_the_decoders() {
        for ptype in [PipelineType::P512, PipelineType::Cascade1024] {
            let split = schedule(ptype, true);
            let joined = schedule(ptype, false);
            let shape = split.iter().position(|&s| s == Step::ShapeDecode).unwrap();
            assert_eq!(split[shape + 1], Step::Texture, "{ptype}");
            assert_eq!(split.last(), Some(&Step::TextureDecode), "{ptype}");
            assert_eq!(&joined[joined.len() - 2..], &[Step::Texture, Step::Decode]);
            assert_eq!(joined.len() + 1, split.len(), "{ptype}");
            let roles = |steps: &[Step]| {
                let mut r: Vec<_> = steps.iter().flat_map(|&s| step_roles(s, ptype)).collect();
                r.sort();
                r.dedup();
                r
            };
            assert_eq!(roles(&split), roles(&joined), "{ptype}");
        }
    }

    /// A worker done with the device drops what a picture-major batch kept.
    #[test]
    fn release_models_drops_kept_models() {
        let p = golden();
        p.models.set_keep(Keep::All);
        p.models.get_or_load("role", || Ok(1u8)).unwrap();
        p.models.release("role");
        assert!(p.models.holds("role"), "kept through its user's release");
        p.release_models();
        assert!(!p.models.holds("role"));
    }

    #[test]
    fn no_read_ahead_under_low_memory_or_when_turned_off() {
        let streamed = golden()
            .with_load_options(LoadOptions {
                memory: WeightMemory::Streamed,
                ..Default::default()
            })
            .unwrap();
        streamed.start_prefetch(PipelineType::P512);
        assert!(streamed.weight_prefetch().is_none());
        let off = golden();
        let tuning = Tuning {
            prefetch_readers: 0,
            ..Tuning::default()
        };
        tuning.with(|| off.start_prefetch(PipelineType::P512));
        assert!(off.weight_prefetch().is_none());
    }
}
