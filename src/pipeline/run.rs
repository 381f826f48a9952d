//! The whole image → 3D run (docs/MODEL.md §1.4): preprocess, condition, sparse structure, shape
//! (direct or cascade), texture, decode. Each stage loads its models, runs and drops them.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};

use super::background::{conditioning_image, Background};
use super::conditioning::condition;
use super::config::{PipelineSettings, PipelineType, SamplerOverrides, DEFAULT_MAX_TOKENS};
use super::context::Ctx;
use super::decode::decode;
use super::latents_file::SavedLatents;
use super::models::{self, LoadOptions};
use super::noise::{Noise, NoiseSource};
use super::output::{Generated, Latents};
use super::progress::Progress;
use super::shape::{sample_shape, Conds, ShapeLatent};
use super::sparse_structure::sample_structure;
use super::texture::sample_texture;
use crate::image::{LoadedImage, RgbImage};
use crate::weights::ModelDir;

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

/// A model directory ready to generate on one device.
pub struct Pipeline {
    dir: ModelDir,
    settings: PipelineSettings,
    device: Device,
    load: LoadOptions,
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
        })
    }

    /// Compute dtype and weight residency of every model the later runs load; an error when
    /// the device cannot compute in that dtype.
    pub fn with_load_options(mut self, load: LoadOptions) -> Result<Self> {
        load.check(&self.device)?;
        self.load = load;
        Ok(self)
    }

    pub fn settings(&self) -> &PipelineSettings {
        &self.settings
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Changes sampler parameters for later runs (checked before they are kept).
    pub fn apply_overrides(&mut self, overrides: &SamplerOverrides) -> Result<()> {
        let mut s = self.settings.clone();
        s.apply(overrides)?;
        self.settings = s;
        Ok(())
    }

    fn ctx<'a>(&'a self, noise: NoiseSource, progress: &'a mut dyn Progress) -> Ctx<'a> {
        Ctx {
            dir: &self.dir,
            settings: &self.settings,
            device: &self.device,
            load: self.load,
            noise: Noise::new(noise),
            latents: Latents::default(),
            progress,
            reports: Vec::new(),
        }
    }

    /// Preprocesses a decoded image (alpha crop, premultiply) and generates from it.
    pub fn generate(
        &self,
        image: &LoadedImage,
        options: RunOptions,
        progress: &mut dyn Progress,
    ) -> Result<Generated> {
        let mut ctx = self.ctx(NoiseSource::Seed(0), progress);
        let stage = ctx.begin("preprocess", 1);
        let rgb = conditioning_image(&self.dir, image, options.background, &self.device)?;
        ctx.progress.step("preprocess", 1);
        ctx.end(stage);
        let reports = std::mem::take(&mut ctx.reports);
        drop(ctx);
        let mut out = self.generate_from_rgb(&rgb, options, progress)?;
        out.stages.splice(0..0, reports);
        Ok(out)
    }

    /// Generates from an already preprocessed RGB image (the conditioning image).
    pub fn generate_from_rgb(
        &self,
        image: &RgbImage,
        options: RunOptions,
        progress: &mut dyn Progress,
    ) -> Result<Generated> {
        let ptype = options.pipeline_type.unwrap_or(self.settings.default_type);
        let mut ctx = self.ctx(options.noise, progress);

        let mut stage = ctx.begin("conditioning", 1);
        let (c512, c1024) = {
            let dino = models::dinov3(ctx.dir, ctx.device, ctx.load)?;
            let c512 = condition(&dino, image, 512, ctx.device).context("conditioning stage")?;
            let c1024 = if ptype.needs_cond_1024() {
                Some(condition(&dino, image, 1024, ctx.device)?)
            } else {
                None
            };
            (c512, c1024)
        };
        ctx.latents.insert("cond_512", c512.clone());
        if let Some(c) = &c1024 {
            ctx.latents.insert("cond_1024", c.clone());
        }
        stage.tokens = Some(c1024.as_ref().unwrap_or(&c512).dim(1)?);
        stage.model_calls = if c1024.is_some() { 2 } else { 1 };
        ctx.progress.step("conditioning", 1);
        ctx.end(stage);

        let coords = sample_structure(&mut ctx, &c512, ptype.structure_resolution())
            .context("sparse-structure stage")?;
        let conds = Conds {
            c512: &c512,
            c1024: c1024.as_ref(),
        };
        let shape = sample_shape(&mut ctx, ptype, &conds, &coords, options.max_tokens)
            .context("shape stage")?;
        let tex_cond = if ptype == PipelineType::P512 {
            &c512
        } else {
            conds.c1024.context("1024 condition")?
        };
        let tex = sample_texture(&mut ctx, &shape, tex_cond, ptype != PipelineType::P512)
            .context("texture stage")?;
        finish(ctx, ptype, &shape, &tex)
    }

    /// Decodes a latents file (`--from-latents`): the shape and texture latents on their
    /// coordinates, at the file's resolution. No sampling, no noise.
    pub fn decode_saved(
        &self,
        saved: &SavedLatents,
        pipeline_type: PipelineType,
        progress: &mut dyn Progress,
    ) -> Result<Generated> {
        let mut ctx = self.ctx(NoiseSource::Seed(0), progress);
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
        for (name, t) in &saved.tensors {
            ctx.latents.insert(name.clone(), t.clone());
        }
        finish(ctx, pipeline_type, &shape, &tex)
    }
}

fn finish(
    mut ctx: Ctx,
    ptype: PipelineType,
    shape: &ShapeLatent,
    tex: &Tensor,
) -> Result<Generated> {
    let d = decode(&mut ctx, &shape.coords, &shape.feats, tex, shape.resolution)
        .context("decode stage")?;
    Ok(Generated {
        pipeline_type: ptype,
        resolution: shape.resolution as u32,
        mesh: d.mesh,
        fill_holes: d.fill_holes,
        voxel_coords: d.voxel_coords,
        voxel_attrs: d.voxel_attrs,
        dual_vertices: d.dual_vertices,
        latents: ctx.latents,
        stages: ctx.reports,
    })
}
