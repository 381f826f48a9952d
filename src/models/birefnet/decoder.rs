//! BiRefNet's decoder (`decoder.*`): four `BasicDecBlk` levels from the squeezed stride-32
//! features up to stride 4, each fed with lateral features and tiles of the input image
//! (`dec_ipt_split`), gated by gradient attention at levels 4–2 (`out_ref`), then a 1×1 conv at
//! full resolution to one logit channel.

use anyhow::{bail, Result};
use candle_core::{Module, Tensor};
use candle_nn::{Conv2d, VarBuilder};

use super::blocks::{conv, BasicDecBlk, BatchNorm, SimpleConvs};
use super::config::{BiRefNetConfig, PatchOrder};
use crate::models::trace::Trace;
use crate::ops::interpolate_bilinear_aligned;

/// `split(x, grid)`: cuts `[B, C, H, W]` into `rows × cols` tiles of `H/rows × W/cols` and stacks
/// them on the channel axis in the checkpoint's [`PatchOrder`].
pub fn split_patches(x: &Tensor, rows: usize, cols: usize, order: PatchOrder) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if rows == 0 || cols == 0 || h % rows != 0 || w % cols != 0 {
        bail!("cannot split a {h}×{w} image into {rows}×{cols} equal tiles");
    }
    let (th, tw) = (h / rows, w / cols);
    let tiles = x.reshape((b, c, rows, th, cols, tw))?;
    let stacked = match order {
        // channel = (col·rows + row)·C + c
        PatchOrder::Rmbg => tiles.permute((0, 4, 2, 1, 3, 5))?,
        // channel = c·rows·cols + row·cols + col
        PatchOrder::Einops => tiles.permute((0, 1, 2, 4, 3, 5))?,
    };
    Ok(stacked.reshape((b, c * rows * cols, th, tw))?)
}

/// `gdt_convs_k` (conv3×3 → BN → ReLU) and `gdt_convs_attn_k` (1×1 → sigmoid): a spatial gate.
struct GradientGate {
    conv: Conv2d,
    bn: BatchNorm,
    attn: Conv2d,
}

impl GradientGate {
    fn new(channels: usize, width: usize, k: usize, vb: &VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: conv(channels, width, 3, true, vb.pp(format!("gdt_convs_{k}.0")))?,
            bn: BatchNorm::new(width, vb.pp(format!("gdt_convs_{k}.1")))?,
            attn: conv(width, 1, 1, true, vb.pp(format!("gdt_convs_attn_{k}.0")))?,
        })
    }

    fn gate(&self, p: &Tensor) -> Result<Tensor> {
        let g = self.bn.forward(&self.conv.forward(p)?)?.relu()?;
        Ok(candle_nn::ops::sigmoid(&self.attn.forward(&g)?)?)
    }
}

/// One of levels 4, 3, 2: decoder block, side output (traced only), gradient gate; the lateral
/// block that merges the next stage's features.
struct Level {
    block: BasicDecBlk,
    ipt: SimpleConvs,
    /// `conv_ms_spvn_k`: the multi-scale supervision side output; RMBG-2.0 returns it in eval
    /// but TRELLIS.2 only uses the last output, so it is computed only when tracing.
    side: Conv2d,
    gate: GradientGate,
    /// `lateral_block{k}`: 1×1 conv on the next (finer) features.
    lateral: Conv2d,
}

pub struct Decoder {
    levels: Vec<Level>,
    /// Level 1: decoder block and its image-patch block.
    block1: BasicDecBlk,
    ipt2: SimpleConvs,
    /// `ipt_blk1` on the full-resolution image, then `conv_out1`.
    ipt1: SimpleConvs,
    conv_out1: Conv2d,
    cfg: BiRefNetConfig,
}

/// `decoder.gdt_convs_pred_*` predict the gradient target in training only.
pub fn training_only_keys() -> Vec<String> {
    (2..=4)
        .flat_map(|k| ["weight", "bias"].map(|p| format!("decoder.gdt_convs_pred_{k}.0.{p}")))
        .collect()
}

impl Decoder {
    pub fn new(cfg: &BiRefNetConfig, vb: VarBuilder) -> Result<Self> {
        let inter = cfg.dec_inter;
        let planes = cfg.aspp_planes;
        let kernels = &cfg.aspp_kernels;
        let ipt_in = |k: usize| cfg.swin.in_chans * cfg.patch_grid(k) * cfg.patch_grid(k);
        let ipt_out = |k: usize| cfg.ipt_out[5 - k];
        let mut levels = Vec::new();
        // Level k reads x_k (lateral_channels(k)) and outputs lateral_channels(k − 1).
        for k in [4, 3, 2] {
            let cin = cfg.lateral_channels(k) + ipt_out(k + 1);
            let cout = cfg.lateral_channels(k - 1);
            levels.push(Level {
                block: BasicDecBlk::new(
                    cin,
                    cout,
                    inter,
                    planes,
                    kernels,
                    vb.pp(format!("decoder_block{k}")),
                )?,
                ipt: SimpleConvs::new(
                    ipt_in(k + 1),
                    ipt_out(k + 1),
                    cfg.ipt_inter,
                    vb.pp(format!("ipt_blk{}", k + 1)),
                )?,
                side: conv(cout, 1, 1, true, vb.pp(format!("conv_ms_spvn_{k}")))?,
                gate: GradientGate::new(cout, cfg.gdt_channels, k, &vb)?,
                lateral: conv(cout, cout, 1, true, vb.pp(format!("lateral_block{k}.conv")))?,
            });
        }
        let c1 = cfg.lateral_channels(1);
        Ok(Self {
            levels,
            block1: BasicDecBlk::new(
                c1 + ipt_out(2),
                c1 / 2,
                inter,
                planes,
                kernels,
                vb.pp("decoder_block1"),
            )?,
            ipt2: SimpleConvs::new(ipt_in(2), ipt_out(2), cfg.ipt_inter, vb.pp("ipt_blk2"))?,
            ipt1: SimpleConvs::new(ipt_in(1), ipt_out(1), cfg.ipt_inter, vb.pp("ipt_blk1"))?,
            conv_out1: conv(c1 / 2 + ipt_out(1), 1, 1, true, vb.pp("conv_out1.0"))?,
            cfg: cfg.clone(),
        })
    }

    /// `[main, ipt_blk_k(split(image, grid_k))]`, recording the ipt output.
    fn with_patches(
        &self,
        main: &Tensor,
        image: &Tensor,
        ipt: &SimpleConvs,
        k: usize,
        trace: &mut Trace,
    ) -> Result<Tensor> {
        let g = self.cfg.patch_grid(k);
        let patches = ipt.forward(&split_patches(image, g, g, self.cfg.patch_order)?)?;
        trace.record(&format!("decoder.ipt_blk{k}.out"), || Ok(patches.clone()))?;
        Ok(Tensor::cat(&[main, &patches], 1)?)
    }

    /// `image [B, 3, H, W]` (normalised), `x1..x3` multi-scale features, `x4` the squeezed
    /// stride-32 features → logits `[B, 1, H, W]`.
    pub fn forward(
        &self,
        image: &Tensor,
        lateral: [&Tensor; 3],
        x4: &Tensor,
        trace: &mut Trace,
    ) -> Result<Tensor> {
        let (_, _, h, w) = image.dims4()?;
        let mut main = x4.clone();
        // lateral = [x1, x2, x3]; level 4 merges x3, level 3 x2, level 2 x1.
        for (level, k) in self.levels.iter().zip([4usize, 3, 2]) {
            let input = self.with_patches(&main, image, &level.ipt, k + 1, trace)?;
            let p = level.block.forward(&input, trace)?;
            trace.record(&format!("decoder.m{k}"), || level.side.forward(&p))?;
            let gate = level.gate.gate(&p)?;
            trace.record(&format!("decoder.gdt_attn_{k}"), || Ok(gate.clone()))?;
            let p = p.broadcast_mul(&gate)?;
            let next = lateral[k - 2];
            let (_, _, nh, nw) = next.dims4()?;
            let lat = level.lateral.forward(next)?;
            trace.record(&format!("decoder.lateral_block{k}.out"), || Ok(lat.clone()))?;
            main = (interpolate_bilinear_aligned(&p, nh, nw)? + lat)?;
        }
        let input = self.with_patches(&main, image, &self.ipt2, 2, trace)?;
        let p1 = self.block1.forward(&input, trace)?;
        let p1 = interpolate_bilinear_aligned(&p1, h, w)?;
        let input = self.with_patches(&p1, image, &self.ipt1, 1, trace)?;
        Ok(self.conv_out1.forward(&input)?)
    }
}
