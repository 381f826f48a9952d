//! The Swin Transformer v1 backbone of BiRefNet (`bb.*`, the object-detection variant of Swin:
//! arbitrary input sizes through window padding, out_indices 0–3, a LayerNorm per output).
//!
//! Per block: `norm1` → zero-pad bottom/right to a multiple of the window → (odd blocks) roll by
//! −window/2 → window attention with relative position bias (+ the shift mask) → roll back →
//! crop → residual; then the GELU MLP with its residual. Padded tokens are *not* masked: after
//! the LayerNorm they are zeros, so their keys and values are the qkv bias, and they take part
//! in every softmax of their window, as upstream.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Conv2dConfig, VarBuilder};

use super::config::SwinConfig;
use crate::models::layers::AffineNorm;
use crate::models::trace::Trace;
use crate::ops::linear::{linear, linear_no_bias, Linear};

/// Swin's LayerNorm epsilon (PyTorch default).
const LN_EPS: f64 = 1e-5;
/// Mask value between tokens of different regions of a shifted window (upstream uses -100;
/// after the softmax it is indistinguishable from −∞).
const SHIFT_MASK: f32 = -100.0;

struct WindowAttention {
    qkv: Linear,
    proj: Linear,
    heads: usize,
    /// Relative position bias `[heads, N, N]`, gathered once from the table at load time.
    bias: Tensor,
    scale: f64,
}

impl WindowAttention {
    fn new(dim: usize, heads: usize, window: usize, vb: VarBuilder) -> Result<Self> {
        let n = window * window;
        let table_rows = (2 * window - 1) * (2 * window - 1);
        let table = vb.get((table_rows, heads), "relative_position_bias_table")?;
        // The index is stored in the checkpoint (int64); it is the same for every block, but
        // reading it keeps loading strict and follows whatever the checkpoint says.
        // Read as integers whatever the compute dtype (bf16 cannot hold 528 exactly).
        let index = vb.get_unchecked_dtype("relative_position_index", DType::I64)?;
        if index.dims() != [n, n] {
            bail!(
                "{}.relative_position_index: shape {:?}, expected [{n}, {n}]",
                vb.prefix(),
                index.dims()
            );
        }
        let index = index.flatten_all()?.to_vec1::<i64>()?;
        if index.iter().any(|&i| i < 0 || i >= table_rows as i64) {
            bail!(
                "{}.relative_position_index holds values outside 0..{table_rows}",
                vb.prefix()
            );
        }
        let index: Vec<u32> = index.iter().map(|&i| i as u32).collect();
        let index = Tensor::from_vec(index, n * n, table.device())?;
        let bias = table
            .index_select(&index, 0)?
            .reshape((n, n, heads))?
            .permute((2, 0, 1))?
            .contiguous()?;
        Ok(Self {
            qkv: linear(dim, 3 * dim, vb.pp("qkv"))?,
            proj: linear(dim, dim, vb.pp("proj"))?,
            heads,
            bias,
            scale: ((dim / heads) as f64).powf(-0.5),
        })
    }

    /// `x [B·nW, N, C]` windows; `mask [nW, N, N]` for shifted blocks.
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (bw, n, c) = x.dims3()?;
        let d = c / self.heads;
        // [Bw, N, 3, heads, d] → [3, Bw, heads, N, d]
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((bw, n, 3, self.heads, d))?
            .permute((2, 0, 3, 1, 4))?;
        let q = (qkv.get(0)?.contiguous()? * self.scale)?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let mut attn = q
            .matmul(&k.t()?.contiguous()?)?
            .broadcast_add(&self.bias.unsqueeze(0)?)?;
        if let Some(mask) = mask {
            let nw = mask.dim(0)?;
            attn = attn
                .reshape((bw / nw, nw, self.heads, n, n))?
                .broadcast_add(&mask.unsqueeze(1)?.unsqueeze(0)?)?
                .reshape((bw, self.heads, n, n))?;
        }
        let attn = candle_nn::ops::softmax_last_dim(&attn)?;
        let out = attn.matmul(&v)?.transpose(1, 2)?.reshape((bw, n, c))?;
        Ok(self.proj.forward(&out)?)
    }
}

struct Block {
    norm1: AffineNorm,
    attn: WindowAttention,
    norm2: AffineNorm,
    fc1: Linear,
    fc2: Linear,
    window: usize,
    shift: usize,
}

/// `torch.roll(x, shift, dim)` for a shift in `0..n`, as two slices.
fn roll(x: &Tensor, shift: usize, dim: usize) -> Result<Tensor> {
    let n = x.dim(dim)?;
    let shift = shift % n.max(1);
    if shift == 0 {
        return Ok(x.clone());
    }
    Ok(Tensor::cat(
        &[
            &x.narrow(dim, n - shift, shift)?,
            &x.narrow(dim, 0, n - shift)?,
        ],
        dim,
    )?)
}

/// `[B, Hp, Wp, C]` → `[B·nW, ws², C]`, windows ordered (batch, window row, window column).
fn window_partition(x: &Tensor, ws: usize) -> Result<Tensor> {
    let (b, hp, wp, c) = x.dims4()?;
    Ok(x.reshape((b, hp / ws, ws, wp / ws, ws, c))?
        .permute((0, 1, 3, 2, 4, 5))?
        .reshape((b * (hp / ws) * (wp / ws), ws * ws, c))?)
}

/// Inverse of [`window_partition`].
fn window_reverse(windows: &Tensor, ws: usize, b: usize, hp: usize, wp: usize) -> Result<Tensor> {
    let c = windows.dim(D::Minus1)?;
    Ok(windows
        .reshape((b, hp / ws, wp / ws, ws, ws, c))?
        .permute((0, 1, 3, 2, 4, 5))?
        .reshape((b, hp, wp, c))?)
}

impl Block {
    fn new(
        dim: usize,
        heads: usize,
        window: usize,
        mlp_hidden: usize,
        shift: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            norm1: AffineNorm::new(dim, LN_EPS, vb.pp("norm1"))?,
            attn: WindowAttention::new(dim, heads, window, vb.pp("attn"))?,
            norm2: AffineNorm::new(dim, LN_EPS, vb.pp("norm2"))?,
            fc1: linear(dim, mlp_hidden, vb.pp("mlp.fc1"))?,
            fc2: linear(mlp_hidden, dim, vb.pp("mlp.fc2"))?,
            window,
            shift,
        })
    }

    /// `x [B, h·w, C]` → same shape.
    fn forward(
        &self,
        x: &Tensor,
        (h, w): (usize, usize),
        mask: &Tensor,
        name: &str,
        trace: &mut Trace,
    ) -> Result<Tensor> {
        let (b, _, c) = x.dims3()?;
        let ws = self.window;
        let (hp, wp) = (h.div_ceil(ws) * ws, w.div_ceil(ws) * ws);
        let mut t = self
            .norm1
            .forward(x)?
            .reshape((b, h, w, c))?
            .pad_with_zeros(1, 0, hp - h)?
            .pad_with_zeros(2, 0, wp - w)?;
        if self.shift > 0 {
            t = roll(&roll(&t, hp - self.shift, 1)?, wp - self.shift, 2)?;
        }
        let windows = window_partition(&t, ws)?;
        trace.record(&format!("{name}.attn.in"), || Ok(windows.clone()))?;
        let attended = self
            .attn
            .forward(&windows, (self.shift > 0).then_some(mask))?;
        trace.record(&format!("{name}.attn.out"), || Ok(attended.clone()))?;
        let mut t = window_reverse(&attended, ws, b, hp, wp)?;
        if self.shift > 0 {
            t = roll(&roll(&t, self.shift, 1)?, self.shift, 2)?;
        }
        let t = t.narrow(1, 0, h)?.narrow(2, 0, w)?.reshape((b, h * w, c))?;
        let x = (x + t)?;
        let mlp = self
            .fc2
            .forward(&self.fc1.forward(&self.norm2.forward(&x)?)?.gelu_erf()?)?;
        Ok((x + mlp)?)
    }
}

/// The shifted-window mask `[nW, ws², ws²]` of a padded `hp × wp` map: 0 between tokens of the
/// same region, −100 otherwise (regions: `[0, hp−ws)`, `[hp−ws, hp−shift)`, `[hp−shift, hp)`
/// on each axis).
fn shift_mask(hp: usize, wp: usize, ws: usize, shift: usize, device: &Device) -> Result<Tensor> {
    let region = |i: usize, len: usize| -> usize {
        if i < len - ws {
            0
        } else if i < len - shift {
            1
        } else {
            2
        }
    };
    let (nh, nw) = (hp / ws, wp / ws);
    let n = ws * ws;
    let mut mask = vec![0f32; nh * nw * n * n];
    for wy in 0..nh {
        for wx in 0..nw {
            let labels: Vec<usize> = (0..n)
                .map(|t| {
                    let (y, x) = (wy * ws + t / ws, wx * ws + t % ws);
                    region(y, hp) * 3 + region(x, wp)
                })
                .collect();
            let base = (wy * nw + wx) * n * n;
            for i in 0..n {
                for j in 0..n {
                    if labels[i] != labels[j] {
                        mask[base + i * n + j] = SHIFT_MASK;
                    }
                }
            }
        }
    }
    Ok(Tensor::from_vec(mask, (nh * nw, n, n), device)?)
}

/// `PatchMerging`: 2×2 neighbourhoods (zero-padded bottom/right when odd) → LayerNorm(4C) →
/// Linear(4C, 2C) without bias.
struct PatchMerging {
    norm: AffineNorm,
    reduction: Linear,
}

impl PatchMerging {
    fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: AffineNorm::new(4 * dim, LN_EPS, vb.pp("norm"))?,
            reduction: linear_no_bias(4 * dim, 2 * dim, vb.pp("reduction"))?,
        })
    }

    /// `x [B, h·w, C]` → `[B, ⌈h/2⌉·⌈w/2⌉, 2C]`.
    fn forward(&self, x: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
        let (b, _, c) = x.dims3()?;
        let (h2, w2) = (h.div_ceil(2), w.div_ceil(2));
        let x = x
            .reshape((b, h, w, c))?
            .pad_with_zeros(1, 0, h % 2)?
            .pad_with_zeros(2, 0, w % 2)?
            .reshape((b, h2, 2, w2, 2, c))?;
        // Upstream order x[0::2,0::2], x[1::2,0::2], x[0::2,1::2], x[1::2,1::2]: the row offset
        // varies fastest.
        let parts = [(0, 0), (1, 0), (0, 1), (1, 1)]
            .iter()
            .map(|&(dy, dx)| {
                x.narrow(2, dy, 1)?
                    .narrow(4, dx, 1)?
                    .reshape((b, h2 * w2, c))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let merged = Tensor::cat(&parts, 2)?;
        Ok(self.reduction.forward(&self.norm.forward(&merged)?)?)
    }
}

struct Stage {
    blocks: Vec<Block>,
    downsample: Option<PatchMerging>,
    window: usize,
}

/// The Swin backbone: `[B, 3, H, W]` → four NCHW feature maps at strides 4, 8, 16, 32.
pub struct SwinBackbone {
    patch_embed: candle_nn::Conv2d,
    patch_norm: AffineNorm,
    stages: Vec<Stage>,
    norms: Vec<AffineNorm>,
    cfg: SwinConfig,
}

impl SwinBackbone {
    pub fn new(cfg: &SwinConfig, vb: VarBuilder) -> Result<Self> {
        let c = cfg.embed_dim;
        let conv = Conv2dConfig {
            stride: cfg.patch_size,
            ..Default::default()
        };
        let patch_embed = candle_nn::conv2d(
            cfg.in_chans,
            c,
            cfg.patch_size,
            conv,
            vb.pp("patch_embed.proj"),
        )?;
        let patch_norm = AffineNorm::new(c, LN_EPS, vb.pp("patch_embed.norm"))?;
        let n = cfg.depths.len();
        let mut stages = Vec::with_capacity(n);
        let mut norms = Vec::with_capacity(n);
        for i in 0..n {
            let dim = cfg.stage_channels(i);
            let vbl = vb.pp(format!("layers.{i}"));
            let blocks = (0..cfg.depths[i])
                .map(|j| {
                    let shift = if j % 2 == 1 { cfg.window_size / 2 } else { 0 };
                    Block::new(
                        dim,
                        cfg.num_heads[i],
                        cfg.window_size,
                        cfg.mlp_hidden[i],
                        shift,
                        vbl.pp(format!("blocks.{j}")),
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let downsample = if i + 1 < n {
                Some(PatchMerging::new(dim, vbl.pp("downsample"))?)
            } else {
                None
            };
            stages.push(Stage {
                blocks,
                downsample,
                window: cfg.window_size,
            });
            norms.push(AffineNorm::new(dim, LN_EPS, vb.pp(format!("norm{i}")))?);
        }
        Ok(Self {
            patch_embed,
            patch_norm,
            stages,
            norms,
            cfg: cfg.clone(),
        })
    }

    /// Stage outputs `norm_i(x_i)` as NCHW, recorded under `{name}.*` when tracing.
    pub fn forward(&self, x: &Tensor, name: &str, trace: &mut Trace) -> Result<Vec<Tensor>> {
        let (_, _, h, w) = x.dims4()?;
        let p = self.cfg.patch_size;
        // PatchEmbed pads the image bottom/right to a multiple of the patch size.
        let x = x
            .pad_with_zeros(2, 0, (p - h % p) % p)?
            .pad_with_zeros(3, 0, (p - w % p) % p)?;
        let x = self.patch_embed.forward(&x)?;
        let (b, c, mut h, mut w) = x.dims4()?;
        let mut x = self
            .patch_norm
            .forward(&x.flatten_from(2)?.transpose(1, 2)?.contiguous()?)?;
        trace.record(&format!("{name}.patch_embed.out"), || {
            x.transpose(1, 2)?.reshape((b, c, h, w))
        })?;
        let mut outs = Vec::with_capacity(self.stages.len());
        for (i, (stage, norm)) in self.stages.iter().zip(&self.norms).enumerate() {
            let ws = stage.window;
            let (hp, wp) = (h.div_ceil(ws) * ws, w.div_ceil(ws) * ws);
            let mask = shift_mask(hp, wp, ws, ws / 2, x.device())?;
            trace.record(&format!("{name}.layers.{i}.attn_mask"), || Ok(mask.clone()))?;
            for (j, block) in stage.blocks.iter().enumerate() {
                let bname = format!("{name}.layers.{i}.blocks.{j}");
                x = block.forward(&x, (h, w), &mask, &bname, trace)?;
                trace.record(&format!("{bname}.out"), || Ok(x.clone()))?;
            }
            let dim = x.dim(2)?;
            let out = norm
                .forward(&x)?
                .reshape((b, h, w, dim))?
                .permute((0, 3, 1, 2))?
                .contiguous()?;
            trace.record(&format!("{name}.out{i}"), || Ok(out.clone()))?;
            outs.push(out);
            if let Some(down) = &stage.downsample {
                x = down.forward(&x, (h, w))?;
                (h, w) = (h.div_ceil(2), w.div_ceil(2));
                trace.record(&format!("{name}.layers.{i}.downsample.out"), || {
                    Ok(x.clone())
                })?;
            }
        }
        Ok(outs)
    }
}
