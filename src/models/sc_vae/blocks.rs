//! SC-VAE building blocks (spec §5.1): `SparseConvNeXtBlock3d` and `SparseResBlockC2S3d`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::ops::bias_act::Activation;
use crate::ops::layer_norm;
use crate::ops::linear::{linear, Linear};
use crate::ops::submanifold_conv3d_map;
use crate::sparse::{SparseTensor, Subdivision};

/// Block LayerNorm eps (`LayerNorm32(eps=1e-6)`, spec §10).
const BLOCK_NORM_EPS: f64 = 1e-6;

/// `SparseConv3d(ci, co, 3)`: weight `[Co, 3, 3, 3, Ci]`, bias `[Co]`.
pub struct SubmConv {
    weight: Tensor,
    bias: Tensor,
}

impl SubmConv {
    pub fn new(ci: usize, co: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get((co, 3, 3, 3, ci), "weight")?,
            bias: vb.get(co, "bias")?,
        })
    }

    pub fn forward(&self, x: &SparseTensor) -> Result<SparseTensor> {
        let map = x.neighbour_map()?;
        x.replace(submanifold_conv3d_map(
            x.feats(),
            map,
            &self.weight,
            Some(&self.bias),
        )?)
    }
}

/// Affine LayerNorm parameters.
struct Norm {
    weight: Tensor,
    bias: Tensor,
}

impl Norm {
    fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(c, "weight")?,
            bias: vb.get(c, "bias")?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm(x, Some((&self.weight, &self.bias)), BLOCK_NORM_EPS)
    }
}

/// `h = conv(x)`, `LN` (affine), `Linear(C, 4C)`, SiLU, `Linear(4C, C)`, `+ x`.
pub struct ConvNeXtBlock {
    conv: SubmConv,
    norm: Norm,
    mlp0: Linear,
    mlp2: Linear,
}

impl ConvNeXtBlock {
    pub fn new(c: usize, mlp_ratio: f64, vb: VarBuilder) -> Result<Self> {
        let hidden = (c as f64 * mlp_ratio) as usize;
        Ok(Self {
            conv: SubmConv::new(c, c, vb.pp("conv"))?,
            norm: Norm::new(c, vb.pp("norm"))?,
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
/// logits select, carrying features from channel blocks (spec §5.1, golden README §6.8).
pub struct C2SBlock {
    channels: usize,
    out_channels: usize,
    to_subdiv: Option<Linear>,
    norm1: Norm,
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
        Ok(Self {
            channels: c,
            out_channels: c_out,
            to_subdiv: if pred_subdiv {
                Some(linear(c, 8, vb.pp("to_subdiv"))?)
            } else {
                None
            },
            norm1: Norm::new(c, vb.pp("norm1"))?,
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
                if g.len() != x.len() || g.coord_set().rows() != x.coord_set().rows() {
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
        let h = x.replace(self.norm1.forward(x.feats())?.silu()?)?;
        let h = self.conv1.forward(&h)?;
        let sub = Subdivision::from_logits(x.coord_set(), subdiv.feats())?;
        let h = sub.apply(&h)?;
        let skip = sub.apply(x)?;
        let h = h.replace(layer_norm(h.feats(), None, BLOCK_NORM_EPS)?.silu()?)?;
        let h = self.conv2.forward(&h)?;
        // Each of the C/8 carried channels repeated C'/(C/8) times consecutively
        // (`repeat_interleave`, not tiling).
        let carried = self.channels / 8;
        let repeat = self.out_channels / carried;
        let n = skip.len();
        let skip = skip
            .feats()
            .unsqueeze(2)?
            .broadcast_as((n, carried, repeat))?
            .reshape((n, self.out_channels))?;
        Ok(C2SOutput {
            out: h.replace((h.feats() + skip)?)?,
            subdiv,
        })
    }

    /// Only the children's coordinates (for `upsample`, whose last block's features are unused).
    pub fn subdivide(&self, x: &SparseTensor) -> Result<Subdivision> {
        let subdiv = self.subdiv_logits(x, None)?;
        Subdivision::from_logits(x.coord_set(), subdiv.feats())
    }
}
