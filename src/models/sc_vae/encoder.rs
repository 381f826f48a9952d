//! The shape SC-VAE encoder `FlexiDualGridVaeEncoder` (docs/MODEL.md §13.4): a voxelised mesh (dual
//! vertex offsets and intersected flags per voxel) → the shape latent the texturing pipeline
//! conditions the texture flow on. Upstream: `trellis2/models/sc_vaes/{sparse_unet_vae,fdg_vae}.py`
//! (`SparseUnetVaeEncoder`, `FlexiDualGridVaeEncoder`) @ 5565d24.
//!
//! `input_layer` (6 → C₀) on `[offset − 0.5, intersected − 0.5]`, per level its ConvNeXt blocks
//! then (except the last level) an S2C block halving the grid, a LayerNorm without affine
//! (`F.layer_norm`, eps 1e-5), `to_latent` (→ 2·latent), and the posterior's mean and log-variance
//! as its two halves. The latent is the mean (`sample_posterior=False`, as the pipeline calls it).

use candle_core::{bail, DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::blocks::{levels, Level, S2CBlock};
use super::config::EncoderConfig;
use crate::models::trace::Trace;
use crate::ops::layer_norm;
use crate::ops::linear::{linear, Linear};
use crate::sparse::{SparseTensor, Subdivision};

/// Output LayerNorm eps (`F.layer_norm` default, docs/MODEL.md §10).
const OUT_NORM_EPS: f64 = 1e-5;

/// What the encoder returns (all f32).
pub struct EncoderOutput {
    /// The latent: the posterior mean on the coarsest voxels.
    pub z: SparseTensor,
    /// `[M, latent]`, equal to `z`'s features.
    pub mean: Tensor,
    /// `[M, latent]`.
    pub logvar: Tensor,
    /// Each downsampling undone, coarsest first: the subdivisions a decoder follows to rebuild
    /// exactly the encoded voxels, in their order (`SparseUnetVaeDecoder::forward_through`).
    pub structure: Vec<Subdivision>,
}

/// The shape encoder network.
pub struct FlexiDualGridVaeEncoder {
    cfg: EncoderConfig,
    input_layer: Linear,
    stages: Vec<Level<S2CBlock>>,
    to_latent: Linear,
}

impl FlexiDualGridVaeEncoder {
    pub fn new(cfg: &EncoderConfig, vb: VarBuilder) -> Result<Self> {
        let mc = &cfg.model_channels;
        let stages = levels(mc, &cfg.num_blocks, &vb, |c, next, vb| {
            S2CBlock::new(c, next, vb)
        })?;
        Ok(Self {
            cfg: cfg.clone(),
            input_layer: linear(cfg.in_channels, mc[0], vb.pp("input_layer"))?,
            stages,
            to_latent: linear(
                mc[mc.len() - 1],
                2 * cfg.latent_channels,
                vb.pp("to_latent"),
            )?,
        })
    }

    pub fn config(&self) -> &EncoderConfig {
        &self.cfg
    }

    /// Encodes voxels whose features are the in-voxel dual-vertex offsets `[N, 3]`, with their
    /// intersected flags `intersected [N, 3]` (u8 or float 0/1).
    pub fn forward(&self, vertices: &SparseTensor, intersected: &Tensor) -> Result<EncoderOutput> {
        self.forward_traced(vertices, intersected, &mut Trace::off())
    }

    /// [`Self::forward`], recording `<module path>.feats` / `.coords` like the golden traces.
    pub fn forward_traced(
        &self,
        vertices: &SparseTensor,
        intersected: &Tensor,
        trace: &mut Trace,
    ) -> Result<EncoderOutput> {
        let n = vertices.len();
        if vertices.channels() != 3 || intersected.dims() != [n, 3] {
            bail!(
                "SC-VAE encoder: expected [N, 3] dual-vertex offsets and [N, 3] intersected flags \
                 for {n} voxels, got {:?} and {:?}",
                vertices.feats().dims(),
                intersected.dims()
            );
        }
        let record = |trace: &mut Trace, name: &str, x: &SparseTensor| -> Result<()> {
            trace.record(&format!("{name}.feats"), || x.feats().to_dtype(DType::F32))?;
            trace.record(&format!("{name}.coords"), || Ok(x.coords().clone()))
        };
        let dtype = self.input_layer.weight().dtype();
        let offsets = vertices.feats().to_dtype(DType::F32)?.affine(1.0, -0.5)?;
        let flags = intersected.to_dtype(DType::F32)?.affine(1.0, -0.5)?;
        let x = Tensor::cat(&[&offsets, &flags], 1)?.to_dtype(dtype)?;
        let mut h = vertices.replace(self.input_layer.forward(&x)?)?;
        record(trace, "input_layer", &h)?;
        let mut structure = Vec::new();
        for (i, stage) in self.stages.iter().enumerate() {
            for (j, block) in stage.blocks.iter().enumerate() {
                h = block.forward(&h)?;
                record(trace, &format!("blocks.{i}.{j}"), &h)?;
            }
            if let Some(block) = &stage.transition {
                let (out, down) = block.forward(&h)?;
                structure.push(Subdivision::from_downsampling(&down, h.coord_set())?);
                h = out;
                record(trace, &format!("blocks.{i}.{}", stage.blocks.len()), &h)?;
            }
        }
        let feats = layer_norm(h.feats(), None, OUT_NORM_EPS)?;
        // The posterior leaves in f32 whatever the compute dtype (fp32 island).
        let out = self.to_latent.forward(&feats)?.to_dtype(DType::F32)?;
        let raw = h.replace(out)?;
        record(trace, "to_latent", &raw)?;
        let latent = self.cfg.latent_channels;
        let mean = raw.feats().narrow(1, 0, latent)?.contiguous()?;
        let logvar = raw.feats().narrow(1, latent, latent)?.contiguous()?;
        structure.reverse();
        Ok(EncoderOutput {
            z: raw.replace(mean.clone())?,
            mean,
            logvar,
            structure,
        })
    }
}
