//! SC-VAE building blocks (docs/MODEL.md §5.1, §13.4): `SparseConvNeXtBlock3d`,
//! `SparseResBlockC2S3d` (decoders) and `SparseResBlockS2C3d` (encoder).

use candle_core::{Module, Result};
use candle_nn::VarBuilder;

use super::config::MLP_RATIO;
use crate::models::layers::AffineNorm;
use crate::ops::bias_act::Activation;
use crate::ops::layer_norm_act::layer_norm_act;
use crate::ops::linear::{linear, Linear};
use crate::ops::sparse_conv::ConvWeights;
use crate::sparse::{Downsampling, SparseTensor, Subdivision};

/// One resolution level of an SC-VAE: ConvNeXt blocks, then (except on the last level) the
/// block that changes the resolution — C2S in the decoders, S2C in the encoder.
pub struct Level<T> {
    pub blocks: Vec<ConvNeXtBlock>,
    pub transition: Option<T>,
}

/// The levels stored under `vb.blocks`: level `i` holds `num_blocks[i]` ConvNeXt blocks of
/// `channels[i]` channels and, except the last, `transition(channels[i], channels[i + 1], vb)`
/// at block index `num_blocks[i]` (the encoder's and the decoders' shared layout).
pub fn levels<T>(
    channels: &[usize],
    num_blocks: &[usize],
    vb: &VarBuilder,
    transition: impl Fn(usize, usize, VarBuilder) -> Result<T>,
) -> Result<Vec<Level<T>>> {
    let mut levels = Vec::with_capacity(channels.len());
    for (i, (&c, &n)) in channels.iter().zip(num_blocks).enumerate() {
        let vbs = vb.pp("blocks").pp(i);
        let blocks = (0..n)
            .map(|j| ConvNeXtBlock::new(c, MLP_RATIO, vbs.pp(j)))
            .collect::<Result<_>>()?;
        let transition = match channels.get(i + 1) {
            Some(&next) => Some(transition(c, next, vbs.pp(n))?),
            None => None,
        };
        levels.push(Level { blocks, transition });
    }
    Ok(levels)
}

/// Block LayerNorm eps (`LayerNorm32(eps=1e-6)`, docs/MODEL.md §10).
const BLOCK_NORM_EPS: f64 = 1e-6;

/// `SparseConv3d(ci, co, 3)`: weight `[Co, 3, 3, 3, Ci]`, bias `[Co]`, prepared for the kernel
/// once at load for activations in the weights' dtype (the decoder computes in it).
pub struct SubmConv {
    weights: ConvWeights,
}

impl SubmConv {
    pub fn new(ci: usize, co: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weights: ConvWeights::new(
                &vb.get((co, 3, 3, 3, ci), "weight")?,
                &vb.get(co, "bias")?,
                vb.dtype(),
            )?,
        })
    }

    pub fn forward(&self, x: &SparseTensor) -> Result<SparseTensor> {
        x.replace(self.weights.conv_map(x.feats(), x.neighbour_map()?)?)
    }
}

/// `h = conv(x)`, `LN` (affine), `Linear(C, 4C)`, SiLU, `Linear(4C, C)`, `+ x`.
pub struct ConvNeXtBlock {
    conv: SubmConv,
    norm: AffineNorm,
    mlp0: Linear,
    mlp2: Linear,
}

impl ConvNeXtBlock {
    pub fn new(c: usize, mlp_ratio: f64, vb: VarBuilder) -> Result<Self> {
        let hidden = (c as f64 * mlp_ratio) as usize;
        Ok(Self {
            conv: SubmConv::new(c, c, vb.pp("conv"))?,
            norm: AffineNorm::new(c, BLOCK_NORM_EPS, vb.pp("norm"))?,
            mlp0: linear(c, hidden, vb.pp("mlp").pp(0))?,
            mlp2: linear(hidden, c, vb.pp("mlp").pp(2))?,
        })
    }

    pub fn forward(&self, x: &SparseTensor) -> Result<SparseTensor> {
        let h = self.conv.forward(x)?;
        let h = self.norm.forward(h.feats())?;
        let h = self.mlp0.forward_act(&h, Activation::Silu)?;
        // `mlp2(h) + x` in one matmul on CUDA (bias and residual in its epilogue).
        x.replace(self.mlp2.forward_residual(&h, x.feats())?)
    }
}

/// `SparseResBlockC2S3d(C → C')`: subdivide every voxel into the children its subdivision
/// logits select, carrying features from channel blocks (docs/MODEL.md §5.1, tests/fixtures/golden/README.md §6.8).
pub struct C2SBlock {
    to_subdiv: Option<Linear>,
    norm1: AffineNorm,
    conv1: SubmConv,
    conv2: SubmConv,
}

/// What a C2S block returns.
pub struct C2SOutput {
    pub out: SparseTensor,
    /// Subdivision logits `[N, 8]` on the block input's voxels (predicted or guide).
    pub subdiv: SparseTensor,
}

impl C2SBlock {
    pub fn new(c: usize, c_out: usize, pred_subdiv: bool, vb: VarBuilder) -> Result<Self> {
        // The skip connection spreads C/8 carried channels over C' by repetition.
        if c == 0 || !c.is_multiple_of(8) || !c_out.is_multiple_of(c / 8) {
            candle_core::bail!(
                "C2S block {c} → {c_out} channels: {c} must be a positive multiple of 8 and \
                 {c_out} a multiple of {c}/8"
            );
        }
        Ok(Self {
            to_subdiv: if pred_subdiv {
                Some(linear(c, 8, vb.pp("to_subdiv"))?)
            } else {
                None
            },
            norm1: AffineNorm::new(c, BLOCK_NORM_EPS, vb.pp("norm1"))?,
            conv1: SubmConv::new(c, 8 * c_out, vb.pp("conv1"))?,
            conv2: SubmConv::new(c_out, c_out, vb.pp("conv2"))?,
        })
    }

    /// Subdivision logits of `x`: predicted, or `guide` (which must be on `x`'s voxels).
    pub fn subdiv_logits(
        &self,
        x: &SparseTensor,
        guide: Option<&SparseTensor>,
    ) -> Result<SparseTensor> {
        match (&self.to_subdiv, guide) {
            (_, Some(g)) => {
                // The same set, or equal rows compared on the device (no download).
                if !g.coord_set().same_rows(x.coord_set())? {
                    candle_core::bail!(
                        "guide subdivision: its {} coordinates are not the {} voxels of this \
                         stage (same rows in the same order required)",
                        g.len(),
                        x.len()
                    );
                }
                if g.channels() != 8 {
                    candle_core::bail!(
                        "guide subdivision: expected 8 logits per voxel, got {}",
                        g.channels()
                    );
                }
                Ok(g.clone())
            }
            (Some(lin), None) => x.replace(lin.forward(x.feats())?),
            (None, None) => candle_core::bail!(
                "this decoder does not predict subdivisions (pred_subdiv=false): guide \
                 subdivisions are required"
            ),
        }
    }

    pub fn forward(&self, x: &SparseTensor, guide: Option<&SparseTensor>) -> Result<C2SOutput> {
        let subdiv = self.subdiv_logits(x, guide)?;
        let sub = Subdivision::from_logits(x.coord_set(), subdiv.feats())?;
        Ok(C2SOutput {
            out: self.forward_through(x, &sub)?,
            subdiv,
        })
    }

    /// The block through a given subdivision of `x`'s voxels (the texturing pipeline's: the
    /// encoder's voxels rebuilt, [`Subdivision::from_downsampling`]).
    pub fn forward_through(&self, x: &SparseTensor, sub: &Subdivision) -> Result<SparseTensor> {
        let h = x.replace(self.norm1.forward_silu(x.feats())?)?;
        // conv1 to 8·C' channels, channel block s of each parent to child s, LayerNorm (no
        // affine), SiLU: on CUDA either conv1 computes only the existing children's blocks
        // (TRELLIS2_C2S_CONV) or the norm reads the blocks from its output in place.
        let h = sub.conv_layer_norm(&self.conv1.weights, &h, BLOCK_NORM_EPS, Activation::Silu)?;
        let h = self.conv2.forward(&h)?;
        // + the parents' channel blocks, each of the C/8 carried channels repeated C'/(C/8)
        // times consecutively (`repeat_interleave`, not tiling), read from x directly.
        sub.add_carried(&h, x)
    }

    /// Only the children's coordinates (for `upsample`, whose last block's features are unused).
    pub fn subdivide(&self, x: &SparseTensor) -> Result<Subdivision> {
        let subdiv = self.subdiv_logits(x, None)?;
        Subdivision::from_logits(x.coord_set(), subdiv.feats())
    }
}

/// `SparseResBlockS2C3d(C → C')`: pack each 2×2×2 group of voxels into one parent voxel, the
/// children's channels side by side (docs/MODEL.md §13.3). `h = conv1(silu(norm1(x)))` with
/// `C'/8` channels on the children, moved to the parents (`C'` channels), `conv2(silu(LN(h)))`,
/// plus `x` moved the same way and averaged over groups of `8C/C'` channels.
pub struct S2CBlock {
    norm1: AffineNorm,
    conv1: SubmConv,
    conv2: SubmConv,
    c_out: usize,
}

impl S2CBlock {
    pub fn new(c: usize, c_out: usize, vb: VarBuilder) -> Result<Self> {
        if c == 0 || !c_out.is_multiple_of(8) || !(8 * c).is_multiple_of(c_out) {
            candle_core::bail!(
                "S2C block {c} → {c_out} channels: {c_out} must be a multiple of 8 and 8·{c} a \
                 multiple of {c_out}"
            );
        }
        Ok(Self {
            norm1: AffineNorm::new(c, BLOCK_NORM_EPS, vb.pp("norm1"))?,
            conv1: SubmConv::new(c, c_out / 8, vb.pp("conv1"))?,
            conv2: SubmConv::new(c_out, c_out, vb.pp("conv2"))?,
            c_out,
        })
    }

    /// The block's output on the parents, and the downsampling that made them.
    pub fn forward(&self, x: &SparseTensor) -> Result<(SparseTensor, Downsampling)> {
        let h = x.replace(self.norm1.forward_silu(x.feats())?)?;
        let h = self.conv1.forward(&h)?;
        let down = Downsampling::new(x.coord_set())?;
        let h = down.apply(&h)?;
        let h = h.replace(layer_norm_act(
            h.feats(),
            None,
            BLOCK_NORM_EPS,
            Activation::Silu,
        )?)?;
        let h = self.conv2.forward(&h)?;
        let skip = down.apply_mean(x, self.c_out)?;
        Ok((h.replace((h.feats() + skip.feats())?)?, down))
    }
}
