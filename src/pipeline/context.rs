//! State shared by the stages of one run: models directory, settings, device, the noise
//! stream, the named intermediates, progress and per-stage measurements.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};

use super::config::PipelineSettings;
use super::flow_model::{DitVelocity, FlowTokens};
use super::memory::{peak_rss_bytes, reset_peak_rss, GpuMemoryProbe};
use super::model_cache::ModelCache;
use super::models::{self, role};
use super::noise::Noise;
use super::output::Latents;
use super::progress::{Progress, StageReport};
use super::sampler::{sample, LatentLayout, SamplerEvent, SamplerParams};
use crate::models::dinov3::DinoV3;
use crate::models::dit::FlowDit;
use crate::models::sc_vae::{
    FlexiDualGridVaeDecoder, FlexiDualGridVaeEncoder, SparseUnetVaeDecoder,
};
use crate::models::ss_decoder::SsDecoder;
use crate::weights::ModelDir;

pub(crate) struct Ctx<'a> {
    pub dir: &'a ModelDir,
    pub models: &'a ModelCache,
    pub settings: &'a PipelineSettings,
    pub device: &'a Device,
    pub load: super::models::LoadOptions,
    /// Development runs: forced structure and growth (`None` in every user run).
    pub forcing: Option<super::dev_forcing::DevForcing>,
    /// Splat patches to compute with the surface ([`super::Pipeline::with_splat_patches`]).
    pub splat_shape: Option<crate::export::splat::SplatShape>,
    pub noise: Noise,
    pub latents: Latents,
    pub progress: &'a mut dyn Progress,
    pub reports: Vec<StageReport>,
}

/// A stage in progress.
pub(crate) struct Stage {
    name: String,
    start: Instant,
    pub tokens: Option<usize>,
    pub voxels: Option<usize>,
    pub model_calls: usize,
    pub flops: Option<f64>,
    /// Seconds of named parts ([`StageReport::parts`]).
    pub parts: std::collections::BTreeMap<String, f64>,
    gpu: Option<GpuMemoryProbe>,
    loads_at_start: f64,
}

/// Models through the pipeline's cache: loaded on first use, dropped by [`Ctx::release`] unless
/// the batch's schedule keeps them.
impl Ctx<'_> {
    pub fn flow(&self, role: &'static str) -> Result<Arc<FlowDit>> {
        self.models.get_or_load(role, || {
            models::flow_model(self.dir, role, self.device, self.load)
        })
    }

    pub fn ss_decoder(&self) -> Result<Arc<SsDecoder>> {
        self.models.get_or_load(role::SS_DECODER, || {
            models::ss_decoder(self.dir, self.device, self.load)
        })
    }

    pub fn shape_decoder(&self) -> Result<Arc<FlexiDualGridVaeDecoder>> {
        self.models.get_or_load(role::SHAPE_DECODER, || {
            models::shape_decoder(self.dir, self.device, self.load)
        })
    }

    pub fn tex_decoder(&self) -> Result<Arc<SparseUnetVaeDecoder>> {
        self.models.get_or_load(role::TEX_DECODER, || {
            models::tex_decoder(self.dir, self.device, self.load)
        })
    }

    pub fn shape_encoder(&self) -> Result<Arc<FlexiDualGridVaeEncoder>> {
        self.models.get_or_load(role::SHAPE_ENCODER, || {
            models::shape_encoder(self.dir, self.device, self.load)
        })
    }

    pub fn dinov3(&self) -> Result<Arc<DinoV3>> {
        self.models.get_or_load(role::IMAGE_COND, || {
            models::dinov3(self.dir, self.device, self.load)
        })
    }

    /// This run is done with `role` for now (see [`ModelCache::release`]).
    pub fn release(&self, role: &'static str) {
        self.models.release(role);
    }
}

impl Ctx<'_> {
    pub fn begin(&mut self, name: &str, steps: usize) -> Stage {
        reset_peak_rss();
        self.progress.stage_started(name, steps);
        Stage {
            name: name.to_string(),
            start: Instant::now(),
            tokens: None,
            voxels: None,
            model_calls: 0,
            flops: None,
            parts: Default::default(),
            gpu: GpuMemoryProbe::start(self.device),
            loads_at_start: self.models.load_seconds(),
        }
    }

    pub fn end(&mut self, stage: Stage) {
        // GPU work is asynchronous: the stage ends when the device has finished it. A failed
        // sync surfaces at the next operation, so the report just goes on.
        let _ = self.device.synchronize();
        let seconds = stage.start.elapsed().as_secs_f64();
        let loaded = self.models.load_seconds() - stage.loads_at_start;
        let report = StageReport {
            stage: stage.name,
            seconds,
            tokens: stage.tokens,
            voxels: stage.voxels,
            model_calls: stage.model_calls,
            peak_rss_bytes: peak_rss_bytes(),
            peak_gpu_bytes: stage.gpu.and_then(GpuMemoryProbe::finish),
            flops: stage.flops,
            tflop_per_s: stage.flops.map(|f| f / seconds.max(1e-9) / 1e12),
            load_seconds: (loaded > 0.0).then_some(loaded),
            parts: stage.parts,
        };
        self.progress.stage_finished(&report);
        self.reports.push(report);
    }

    /// Runs one sampler and records `<prefix>.x_t.<i>`; returns the final sample.
    #[allow(clippy::too_many_arguments)]
    pub fn sample(
        &mut self,
        stage: &mut Stage,
        prefix: &str,
        model: &FlowDit,
        cond: &Tensor,
        tokens: FlowTokens,
        layout: &LatentLayout,
        noise: &Tensor,
        params: &SamplerParams,
    ) -> Result<Tensor> {
        let mut velocity = DitVelocity::new(model, cond, tokens)?;
        let latents = &mut self.latents;
        let progress = &mut *self.progress;
        let mut calls = 0;
        let name = stage.name.clone();
        let out = sample(&mut velocity, noise, layout, params, &mut |event| {
            match event {
                SamplerEvent::ModelCall { .. } => {
                    calls += 1;
                    progress.step(&name, calls);
                }
                SamplerEvent::Step { step, x, .. } => {
                    latents.insert(format!("{prefix}.x_t.{step}"), x.clone());
                }
            }
            Ok(())
        })?;
        stage.model_calls += calls;
        *stage.flops.get_or_insert(0.0) += velocity.flops();
        Ok(out)
    }
}
