//! `SparseUnetVaeDecoder` and its shape variant `FlexiDualGridVaeDecoder` (docs/MODEL.md §5.3–5.5).
//! Upstream: `trellis2/models/sc_vaes/sparse_unet_vae.py` / `fdg_vae.py` @ 5565d24.

use candle_core::{bail, DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::blocks::{levels, C2SBlock, Level};
use super::config::DecoderConfig;
use crate::models::trace::Trace;
use crate::ops::layer_norm;
use crate::ops::linear::{linear, Linear};
use crate::sparse::{SparseTensor, Subdivision};

/// Decoder output LayerNorm eps (`F.layer_norm` default, docs/MODEL.md §10).
const OUT_NORM_EPS: f64 = 1e-5;

/// What the decoder returns.
pub struct DecoderOutput {
    /// `output_layer` result, before any activation, on the final voxels.
    pub raw: SparseTensor,
    /// Subdivision logits `[N_i, 8]` of each C2S block, on that block's input voxels.
    pub subs: Vec<SparseTensor>,
}

/// The SC-VAE decoder network.
pub struct SparseUnetVaeDecoder {
    cfg: DecoderConfig,
    from_latent: Linear,
    stages: Vec<Level<C2SBlock>>,
    output_layer: Linear,
}

impl SparseUnetVaeDecoder {
    pub fn new(cfg: &DecoderConfig, vb: VarBuilder) -> Result<Self> {
        let mc = &cfg.model_channels;
        let stages = levels(mc, &cfg.num_blocks, &vb, |c, next, vb| {
            C2SBlock::new(c, next, cfg.pred_subdiv, vb)
        })?;
        Ok(Self {
            cfg: cfg.clone(),
            from_latent: linear(cfg.latent_channels, mc[0], vb.pp("from_latent"))?,
            stages,
            output_layer: linear(mc[mc.len() - 1], cfg.out_channels, vb.pp("output_layer"))?,
        })
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    fn input(&self, latent: &SparseTensor) -> Result<SparseTensor> {
        if latent.channels() != self.cfg.latent_channels {
            bail!(
                "SC-VAE decoder: latent has {} channels, the model expects {}",
                latent.channels(),
                self.cfg.latent_channels
            );
        }
        // Latents arrive in f32 from the sampler; the network computes in its weights' dtype.
        let feats = latent.feats().to_dtype(self.from_latent.weight().dtype())?;
        latent.replace(self.from_latent.forward(&feats)?)
    }

    /// Decodes `latent`. A decoder with `pred_subdiv` predicts its subdivisions (`guide` must be
    /// `None`); one without needs `guide` = the predicting decoder's `subs`, one per C2S block.
    pub fn forward(
        &self,
        latent: &SparseTensor,
        guide: Option<&[SparseTensor]>,
    ) -> Result<DecoderOutput> {
        self.forward_traced(latent, guide, &mut Trace::off())
    }

    /// [`Self::forward`], recording `<module path>.feats` / `.coords` like the golden traces.
    pub fn forward_traced(
        &self,
        latent: &SparseTensor,
        guide: Option<&[SparseTensor]>,
        trace: &mut Trace,
    ) -> Result<DecoderOutput> {
        match (self.cfg.pred_subdiv, guide) {
            (true, Some(_)) => bail!(
                "SC-VAE decoder: this decoder predicts its subdivisions (pred_subdiv=true) and \
                 takes no guide"
            ),
            (false, None) => bail!(
                "SC-VAE decoder: pred_subdiv=false needs guide subdivisions (subs.0..{})",
                self.cfg.up_blocks().saturating_sub(1)
            ),
            (false, Some(g)) if g.len() != self.cfg.up_blocks() => bail!(
                "SC-VAE decoder: {} guide subdivisions given, the model has {} C2S blocks",
                g.len(),
                self.cfg.up_blocks()
            ),
            _ => {}
        }
        self.run(latent, guide, trace)
    }

    /// Decodes `latent` through the given subdivisions (one per C2S block, on that block's input
    /// voxels) even when the decoder predicts its own: forces a voxel growth, as the stage
    /// benchmarks do to reproduce the upstream baseline's.
    pub fn forward_forced(
        &self,
        latent: &SparseTensor,
        subdivisions: &[SparseTensor],
    ) -> Result<DecoderOutput> {
        if subdivisions.len() != self.cfg.up_blocks() {
            bail!(
                "SC-VAE decoder: {} subdivisions given, the model has {} C2S blocks",
                subdivisions.len(),
                self.cfg.up_blocks()
            );
        }
        self.run(latent, Some(subdivisions), &mut Trace::off())
    }

    fn run(
        &self,
        latent: &SparseTensor,
        guide: Option<&[SparseTensor]>,
        trace: &mut Trace,
    ) -> Result<DecoderOutput> {
        let record = |trace: &mut Trace, name: &str, x: &SparseTensor| -> Result<()> {
            trace.record(&format!("{name}.feats"), || Ok(x.feats().clone()))?;
            trace.record(&format!("{name}.coords"), || Ok(x.coords().clone()))
        };
        let mut h = self.input(latent)?;
        record(trace, "from_latent", &h)?;
        let mut subs = Vec::new();
        for (i, stage) in self.stages.iter().enumerate() {
            for (j, block) in stage.blocks.iter().enumerate() {
                h = block.forward(&h)?;
                record(trace, &format!("blocks.{i}.{j}"), &h)?;
            }
            if let Some(up) = &stage.transition {
                let path = format!("blocks.{i}.{}", stage.blocks.len());
                let out = up.forward(&h, guide.map(|g| &g[i]))?;
                h = out.out;
                if self.cfg.pred_subdiv {
                    record(trace, &format!("{path}.0"), &h)?;
                    record(trace, &format!("{path}.1"), &out.subdiv)?;
                } else {
                    record(trace, &path, &h)?;
                }
                subs.push(
                    out.subdiv
                        .replace(out.subdiv.feats().to_dtype(DType::F32)?)?,
                );
            }
        }
        let feats = layer_norm(h.feats(), None, OUT_NORM_EPS)?;
        // The heads' raw values leave in f32 whatever the compute dtype (fp32 island).
        let raw = h.replace(self.output_layer.forward(&feats)?.to_dtype(DType::F32)?)?;
        record(trace, "output_layer", &raw)?;
        Ok(DecoderOutput { raw, subs })
    }

    /// Decodes `latent` through given subdivisions, one per C2S block (coarsest first), instead
    /// of predicted or guide logits: the texturing pipeline's texture decoder, which rebuilds
    /// the encoder's voxels ([`super::EncoderOutput::structure`]; upstream reuses the encoder's
    /// `channel2spatial` cache). Returns the raw output on the finest voxels.
    pub fn forward_through(
        &self,
        latent: &SparseTensor,
        structure: &[Subdivision],
    ) -> Result<SparseTensor> {
        if structure.len() != self.cfg.up_blocks() {
            bail!(
                "SC-VAE decoder: {} subdivisions given, the model has {} C2S blocks",
                structure.len(),
                self.cfg.up_blocks()
            );
        }
        let mut h = self.input(latent)?;
        for (i, stage) in self.stages.iter().enumerate() {
            for block in &stage.blocks {
                h = block.forward(&h)?;
            }
            if let Some(up) = &stage.transition {
                h = up.forward_through(&h, &structure[i])?;
            }
        }
        let feats = layer_norm(h.feats(), None, OUT_NORM_EPS)?;
        h.replace(self.output_layer.forward(&feats)?.to_dtype(DType::F32)?)
    }

    /// Coordinates `[N, 4]` after `times` C2S blocks (`decoder.upsample(latent, times)`, the
    /// cascade's high-resolution structure). The last block's convs are skipped: only its
    /// subdivision decides the coordinates.
    pub fn upsample(&self, latent: &SparseTensor, times: usize) -> Result<Tensor> {
        self.upsample_with(latent, times, None)
    }

    /// [`Self::upsample`] with given subdivision logits per C2S block instead of the predicted
    /// ones (benchmarks force a realistic growth through random weights, as
    /// [`Self::forward_forced`] does).
    pub fn upsample_forced(
        &self,
        latent: &SparseTensor,
        times: usize,
        subdivisions: &[SparseTensor],
    ) -> Result<Tensor> {
        if subdivisions.len() < times {
            bail!(
                "SC-VAE decoder: {} subdivisions given for {times} upsamplings",
                subdivisions.len()
            );
        }
        self.upsample_with(latent, times, Some(subdivisions))
    }

    fn upsample_with(
        &self,
        latent: &SparseTensor,
        times: usize,
        guide: Option<&[SparseTensor]>,
    ) -> Result<Tensor> {
        if !self.cfg.pred_subdiv && guide.is_none() {
            bail!("SC-VAE decoder: upsample needs a decoder that predicts subdivisions");
        }
        if times > self.cfg.up_blocks() {
            bail!(
                "SC-VAE decoder: cannot upsample {times} times, the model has {} C2S blocks",
                self.cfg.up_blocks()
            );
        }
        let mut h = self.input(latent)?;
        for (i, stage) in self.stages.iter().take(times).enumerate() {
            for block in &stage.blocks {
                h = block.forward(&h)?;
            }
            let up = stage
                .transition
                .as_ref()
                .expect("stages before the last have a C2S block");
            let guide = guide.map(|g| &g[i]);
            if i + 1 == times {
                let logits = up.subdiv_logits(&h, guide)?;
                let sub = Subdivision::from_logits(h.coord_set(), logits.feats())?;
                return Ok(sub.children().tensor().clone());
            }
            h = up.forward(&h, guide)?.out;
        }
        Ok(h.coords().clone())
    }
}

/// C2S blocks the cascade runs `upsample` through (upstream `upsample_times`): four 2× steps
/// from the 32³ latent grid to 512.
pub const CASCADE_UPSAMPLE_TIMES: usize = 4;

/// The shape decoder: a [`SparseUnetVaeDecoder`] with 7 outputs that predicts subdivisions,
/// plus the mesh-extraction parameters.
pub struct FlexiDualGridVaeDecoder {
    pub net: SparseUnetVaeDecoder,
    /// Grid size for mesh extraction (`set_resolution`).
    pub resolution: usize,
    /// Dual-vertex margin (0.5 in the release).
    pub voxel_margin: f64,
}
