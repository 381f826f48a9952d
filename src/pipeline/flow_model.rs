//! A loaded flow DiT bound to one condition and one token layout, as the sampler's
//! [`VelocityModel`]. The condition's cross-attention K/V are computed once here and reused by
//! every step; the negative branch uses the exact zero-condition shortcut. A guided step's two
//! calls run as one forward of twice the batch where `TRELLIS2_GUIDED_BATCH` resolves on
//! ([`FlowDit::forward_guided`]).

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};

use super::sampler::{Branch, LatentLayout, VelocityModel};
use crate::models::dit::{CondKv, Condition, FlowDit, FlowInput};
use crate::ops::tuning::Tuning;

/// What the sample's tokens are.
pub enum FlowTokens<'a> {
    /// `[B, C, R, R, R]` (sparse-structure flow).
    Dense,
    /// `[T, C]` on `coords [T, 4]`, optionally joined with `concat_cond [T, C']`.
    Sparse {
        coords: &'a Tensor,
        concat_cond: Option<&'a Tensor>,
    },
}

/// A [`FlowDit`] with precomputed condition K/V.
pub struct DitVelocity<'a> {
    model: &'a FlowDit,
    cond: CondKv,
    tokens: FlowTokens<'a>,
    batch: usize,
    /// Image tokens per sample, for the FLOP count.
    cond_tokens: usize,
    flops: f64,
    /// Guided steps as one forward of 2B (`TRELLIS2_GUIDED_BATCH`, resolved at construction
    /// for this model's device, weight residency and token count).
    guided_batch: bool,
}

impl<'a> DitVelocity<'a> {
    /// `cond [B, L, cond_channels]`; `batch` = B. Guided steps run batched as the calling
    /// thread's `TRELLIS2_GUIDED_BATCH` decides for this model's device, weight residency and
    /// tokens.
    pub fn new(model: &'a FlowDit, cond: &Tensor, tokens: FlowTokens<'a>) -> Result<Self> {
        let batch = cond.dim(0)?;
        // Tokens of all samples: rows of a sparse latent, cells of a dense one.
        let rows = match &tokens {
            FlowTokens::Dense => batch * model.config().resolution.pow(3),
            FlowTokens::Sparse { coords, .. } => coords.dim(0)?,
        };
        if let FlowTokens::Sparse { coords, .. } = &tokens {
            // The coordinates' one read-back happens here, before sampling, not in step 1.
            model.prepare_sparse_layout(coords, batch)?;
        }
        Ok(Self {
            cond: model.cond_kv(cond)?,
            model,
            tokens,
            batch,
            cond_tokens: cond.dim(1)?,
            flops: 0.0,
            guided_batch: Tuning::current().guided_batch.enabled(
                !model.device().is_cpu(),
                model.streamed(),
                rows,
            ),
        })
    }

    /// Whether guided steps run as one forward of twice the batch.
    pub fn guided_batch(&self) -> bool {
        self.guided_batch
    }

    /// FLOPs of the calls made so far (`FlowDit::forward_flops`).
    pub fn flops(&self) -> f64 {
        self.flops
    }
}

impl DitVelocity<'_> {
    /// The FLOPs of one forward of `x` with the condition (`cond_tokens` image tokens) or
    /// without (0), every sample counted.
    fn count(&mut self, x: &Tensor, cond_tokens: usize) -> Result<()> {
        let rows = self.tokens_of(x)? / self.batch.max(1);
        self.flops += self.batch as f64 * self.model.forward_flops(rows, cond_tokens);
        Ok(())
    }

    /// Tokens of all samples of `x`: rows of a sparse latent, cells of a dense one.
    fn tokens_of(&self, x: &Tensor) -> Result<usize> {
        Ok(match &self.tokens {
            FlowTokens::Dense => x.elem_count() / x.dim(1)?,
            FlowTokens::Sparse { .. } => x.dim(0)?,
        })
    }

    fn input<'x>(&'x self, x: &'x Tensor) -> FlowInput<'x> {
        match &self.tokens {
            FlowTokens::Dense => FlowInput::Dense(x),
            FlowTokens::Sparse {
                coords,
                concat_cond,
            } => FlowInput::Sparse {
                feats: x,
                coords,
                concat_cond: *concat_cond,
            },
        }
    }
}

impl VelocityModel for DitVelocity<'_> {
    fn velocity(&mut self, x: &Tensor, t_model: f32, branch: Branch) -> Result<Tensor> {
        let t = Tensor::full(t_model, self.batch, x.device())?;
        let cond_tokens = match branch {
            Branch::Positive => self.cond_tokens,
            Branch::Negative => 0,
        };
        self.count(x, cond_tokens)?;
        let cond = match branch {
            Branch::Positive => Condition::Tokens(&self.cond),
            Branch::Negative => Condition::Zero,
        };
        // The sampler state is an fp32 island whatever the model computes in.
        Ok(self
            .model
            .forward(&self.input(x), &t, &cond)?
            .to_dtype(DType::F32)?)
    }

    fn velocity_guided(&mut self, x: &Tensor, t_model: f32) -> Result<(Tensor, Tensor)> {
        let rows = self.tokens_of(x)?;
        if !self.guided_batch || !self.model.guided_batch_fits(2 * rows) {
            let pos = self.velocity(x, t_model, Branch::Positive)?;
            return Ok((pos, self.velocity(x, t_model, Branch::Negative)?));
        }
        // The same work as the two forwards, counted as such.
        self.count(x, self.cond_tokens)?;
        self.count(x, 0)?;
        let t = Tensor::full(t_model, self.batch, x.device())?;
        let (pos, neg) = self.model.forward_guided(&self.input(x), &t, &self.cond)?;
        Ok((pos.to_dtype(DType::F32)?, neg.to_dtype(DType::F32)?))
    }
}

/// The sampler layout of sparse latents on `coords [T, 4]` with `batch` items: row offsets of
/// each item (rows must be grouped by batch index, ascending).
pub fn sparse_layout(coords: &Tensor, batch: usize) -> Result<LatentLayout> {
    let (n, w) = coords.dims2()?;
    if w != 4 {
        bail!("coords {:?}: expected [T, 4]", coords.dims());
    }
    let b: Vec<i32> = coords
        .narrow(1, 0, 1)?
        .to_device(&candle_core::Device::Cpu)?
        .to_dtype(DType::I32)?
        .flatten_all()?
        .to_vec1()?;
    let mut offsets = vec![0usize; batch + 1];
    for (row, &item) in b.iter().enumerate() {
        if item < 0 || item as usize >= batch {
            bail!("coords row {row}: batch index {item} outside 0..{batch}");
        }
        if row > 0 && item < b[row - 1] {
            bail!(
                "coords row {row}: batch index {item} after {}; rows must be grouped",
                b[row - 1]
            );
        }
        offsets[item as usize + 1] = row + 1;
    }
    for i in 1..=batch {
        offsets[i] = offsets[i].max(offsets[i - 1]);
    }
    debug_assert_eq!(offsets[batch], n);
    Ok(LatentLayout::Sparse { offsets })
}
