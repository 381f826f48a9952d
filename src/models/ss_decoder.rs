//! Sparse-structure VAE decoder (TRELLIS v1 `SparseStructureDecoder`; docs/MODEL.md §4). Upstream:
//! `trellis2/models/sparse_structure_vae.py` @ 5565d24. Latent `[B, 8, R, R, R]` → occupancy
//! logits `[B, 1, 4R, 4R, 4R]` through dense 3×3×3 convs, ChannelLayerNorm (affine, eps 1e-5),
//! SiLU and 3-D pixel shuffles. Internally channels-last `[B, X, Y, Z, C]`, so the per-voxel
//! norm and the conv read contiguous channel rows.

use candle_core::{bail, DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::layers::AffineNorm;
use super::trace::Trace;
use crate::ops::{Conv3dK3, GridNeighbours};

/// Constructor arguments of `SparseStructureDecoder` (the `args` of its json).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SsDecoderConfig {
    pub out_channels: usize,
    pub latent_channels: usize,
    pub num_res_blocks: usize,
    pub channels: Vec<usize>,
    #[serde(default = "two")]
    pub num_res_blocks_middle: usize,
    #[serde(default = "layer")]
    pub norm_type: String,
    /// Release precision; the CPU reference always runs f32.
    #[serde(default)]
    pub use_fp16: bool,
}

impl SsDecoderConfig {
    /// The fields that size tensors within their plausible ranges (see [`super::limits`]). Each
    /// entry of `channels` after the first doubles the dense grid (16³ → 64³ in the release's
    /// three), so at most four levels (128³).
    pub fn check_ranges(&self) -> anyhow::Result<()> {
        use super::limits::{field, list, DEPTH};
        field("out_channels", self.out_channels, 1..=64)?;
        field("latent_channels", self.latent_channels, 1..=1024)?;
        field("num_res_blocks", self.num_res_blocks, 0..=*DEPTH.end())?;
        field(
            "num_res_blocks_middle",
            self.num_res_blocks_middle,
            0..=*DEPTH.end(),
        )?;
        list("channels", &self.channels, 1..=4, 1..=2048)
    }
}

fn two() -> usize {
    2
}

fn layer() -> String {
    "layer".into()
}

/// ChannelLayerNorm32 eps (docs/MODEL.md §10).
const NORM_EPS: f64 = 1e-5;

/// The dtype the decoder's activations have: it computes in its latent's dtype, and latents
/// leave the sampler in f32 whatever the weights' dtype (f16 in the release).
const ACTIVATIONS: DType = DType::F32;

/// Conv3d(k 3, p 1) with PyTorch weight `[Co, Ci, 3, 3, 3]`, prepared for the kernel at load.
struct Conv(Conv3dK3);

impl Conv {
    fn new(ci: usize, co: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get((co, ci, 3, 3, 3), "weight")?;
        Ok(Self(Conv3dK3::new(
            &weight,
            &vb.get(co, "bias")?,
            ACTIVATIONS,
        )?))
    }

    fn forward(&self, x: &Tensor, grid: &GridNeighbours) -> Result<Tensor> {
        self.0.forward(x, grid)
    }
}

/// `ResBlock3d(C)`: `x + conv2(SiLU(norm2(conv1(SiLU(norm1(x))))))`.
struct ResBlock {
    norm1: AffineNorm,
    conv1: Conv,
    norm2: AffineNorm,
    conv2: Conv,
}

impl ResBlock {
    fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: AffineNorm::new(c, NORM_EPS, vb.pp("norm1"))?,
            conv1: Conv::new(c, c, vb.pp("conv1"))?,
            norm2: AffineNorm::new(c, NORM_EPS, vb.pp("norm2"))?,
            conv2: Conv::new(c, c, vb.pp("conv2"))?,
        })
    }

    fn forward(&self, x: &Tensor, grid: &GridNeighbours) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward(x)?.silu()?, grid)?;
        let h = self.conv2.forward(&self.norm2.forward(&h)?.silu()?, grid)?;
        x + h
    }
}

/// 3-D pixel shuffle of a channels-last grid: channel `c·8 + i·4 + j·2 + k` of cell (x, y, z)
/// goes to cell `(2x+i, 2y+j, 2z+k)` — x is the MOST significant bit here, unlike the sparse
/// channel→space (upstream `pixel_shuffle_3d`, tests/fixtures/golden/README.md §6.9).
pub fn pixel_shuffle_3d(x: &Tensor) -> Result<Tensor> {
    let (b, gx, gy, gz, c8) = match x.dims() {
        &[b, gx, gy, gz, c] => (b, gx, gy, gz, c),
        d => bail!("pixel_shuffle_3d: expected [B, X, Y, Z, C], got shape {d:?}"),
    };
    if c8 % 8 != 0 {
        bail!("pixel_shuffle_3d: {c8} channels is not a multiple of 8");
    }
    let c = c8 / 8;
    x.reshape(vec![b, gx, gy, gz, c, 2, 2, 2])?
        .permute(vec![0, 1, 5, 2, 6, 3, 7, 4])?
        .contiguous()?
        .reshape((b, 2 * gx, 2 * gy, 2 * gz, c))
}

enum Block {
    Res(ResBlock),
    /// `UpsampleBlock3d`: conv to 8·C' channels, then pixel shuffle.
    Upsample(Conv),
}

/// The decoder; build with [`SsDecoder::new`] from a strict `VarBuilder`.
pub struct SsDecoder {
    cfg: SsDecoderConfig,
    input_layer: Conv,
    middle_block: Vec<ResBlock>,
    blocks: Vec<Block>,
    out_norm: AffineNorm,
    out_conv: Conv,
    /// The neighbour maps of the grids a forward visits (16³, 32³, 64³ in the release), built
    /// on first use: every image decodes on the same grids.
    grids: std::sync::Mutex<Vec<GridNeighbours>>,
}

impl SsDecoder {
    pub fn new(cfg: &SsDecoderConfig, vb: VarBuilder) -> Result<Self> {
        cfg.check_ranges()
            .map_err(|e| candle_core::Error::Msg(format!("SparseStructureDecoder: {e}")))?;
        if cfg.norm_type != "layer" {
            bail!(
                "SparseStructureDecoder: norm_type `{}` is not supported (the release uses `layer`)",
                cfg.norm_type
            );
        }
        let Some(&c0) = cfg.channels.first() else {
            bail!("SparseStructureDecoder: `channels` is empty");
        };
        let middle_block = (0..cfg.num_res_blocks_middle)
            .map(|i| ResBlock::new(c0, vb.pp("middle_block").pp(i)))
            .collect::<Result<_>>()?;
        let mut blocks = Vec::new();
        for (i, &c) in cfg.channels.iter().enumerate() {
            for _ in 0..cfg.num_res_blocks {
                let vbb = vb.pp("blocks").pp(blocks.len());
                blocks.push(Block::Res(ResBlock::new(c, vbb)?));
            }
            if let Some(&next) = cfg.channels.get(i + 1) {
                let vbb = vb.pp("blocks").pp(blocks.len()).pp("conv");
                blocks.push(Block::Upsample(Conv::new(c, 8 * next, vbb)?));
            }
        }
        let last = cfg.channels[cfg.channels.len() - 1];
        Ok(Self {
            cfg: cfg.clone(),
            input_layer: Conv::new(cfg.latent_channels, c0, vb.pp("input_layer"))?,
            middle_block,
            blocks,
            out_norm: AffineNorm::new(last, NORM_EPS, vb.pp("out_layer").pp(0))?,
            out_conv: Conv::new(last, cfg.out_channels, vb.pp("out_layer").pp(2))?,
            grids: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// The neighbour map of the full grid `dims` on `dev`, cached.
    fn grid(&self, dims: [usize; 4], dev: &Device) -> Result<GridNeighbours> {
        let mut grids = self
            .grids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(g) = grids
            .iter()
            .find(|g| g.dims() == dims && g.device().same_device(dev))
        {
            return Ok(g.clone());
        }
        let g = GridNeighbours::new(dims, dev)?;
        grids.push(g.clone());
        Ok(g)
    }

    /// Logits `[B, out_channels, 4R…]` (per upsample 2×) of a latent `[B, latent_channels, R, R, R]`.
    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        self.forward_traced(z, &mut Trace::off())
    }

    /// [`Self::forward`], recording block outputs (in `[B, C, X, Y, Z]`) under upstream paths.
    pub fn forward_traced(&self, z: &Tensor, trace: &mut Trace) -> Result<Tensor> {
        let (b, c, gx, gy, gz) = match z.dims() {
            &[b, c, x, y, zz] => (b, c, x, y, zz),
            d => bail!("SparseStructureDecoder: latent must be [B, C, X, Y, Z], got shape {d:?}"),
        };
        if c != self.cfg.latent_channels {
            bail!(
                "SparseStructureDecoder: latent has {c} channels, the model expects {}",
                self.cfg.latent_channels
            );
        }
        let dev = z.device();
        let to_torch = |h: &Tensor| h.permute((0, 4, 1, 2, 3))?.contiguous();
        let mut grid = self.grid([b, gx, gy, gz], dev)?;
        let mut h = z.permute((0, 2, 3, 4, 1))?.contiguous()?;
        h = self.input_layer.forward(&h, &grid)?;
        trace.record("input_layer", || to_torch(&h))?;
        for (i, block) in self.middle_block.iter().enumerate() {
            h = block.forward(&h, &grid)?;
            trace.record(&format!("middle_block.{i}"), || to_torch(&h))?;
        }
        for (i, block) in self.blocks.iter().enumerate() {
            h = match block {
                Block::Res(r) => r.forward(&h, &grid)?,
                Block::Upsample(conv) => {
                    let up = pixel_shuffle_3d(&conv.forward(&h, &grid)?)?;
                    let [b, x, y, zz] = grid.dims();
                    grid = self.grid([b, 2 * x, 2 * y, 2 * zz], dev)?;
                    up
                }
            };
            trace.record(&format!("blocks.{i}"), || to_torch(&h))?;
        }
        let h = self.out_norm.forward(&h)?;
        trace.record("out_layer.0", || to_torch(&h))?;
        let logits = self.out_conv.forward(&h.silu()?, &grid)?;
        to_torch(&logits)
    }
}
