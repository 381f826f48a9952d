//! DINOv3 ViT image encoder (`DINOv3ViTModel` of transformers 4.56/4.57, whose key names the
//! checkpoints use) as TRELLIS.2's `DinoV3FeatureExtractor` runs it: patch embedding, CLS and
//! register tokens, every layer (rotate-half 2-D RoPE on patch tokens only, layer scale, exact
//! GELU MLP, k without bias), then a parameter-free LayerNorm over all tokens. The model's own
//! final `norm` is not used (upstream skips it), so its weights may stay unused.
//!
//! Loading rewrites three things for speed, none visible in the outputs (the golden parity test
//! and the trace keep upstream's quantities):
//! - LayerScale `λ` is folded into the linear before it (`o_proj`, `down_proj`): `λ·(W h + b)`
//!   is `(diag(λ)·W) h + λ·b`; each residual add then rides in that linear's epilogue
//!   ([`Linear::forward_residual`]), so a layer has no separate scale or add pass.
//! - q and k projections emit each head's rotate-half pairs `(i, i + D/2)` as interleaved pairs
//!   `(2i, 2i + 1)` (their output rows permuted alike, which leaves every q·k unchanged), so RoPE
//!   is one pass of the fused interleaved op ([`rms_norm_rope`] without the norm), with the
//!   identity rotation for the prefix tokens.
//! - The MLP's bias and exact GELU are one `bias_act` pass.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use super::layers::AffineNorm;
use super::trace::Trace;
use crate::ops::attention::varlen_attention;
use crate::ops::bias_act::Activation;
use crate::ops::layer_norm;
use crate::ops::linear::Linear;
use crate::ops::rms_norm_rope::{rms_norm_rope, rope_table};
use crate::weights::Checkpoint;

/// Checkpoint keys upstream never applies: the final `norm` (a parameter-free LayerNorm runs
/// instead) and the training-only `mask_token`.
pub const UNUSED_KEYS: &[&str] = &["norm.weight", "norm.bias", "embeddings.mask_token"];

/// The fields of a Hugging Face `config.json` this port needs.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct DinoV3Config {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_registers")]
    pub num_register_tokens: usize,
    pub patch_size: usize,
    #[serde(default = "default_channels")]
    pub num_channels: usize,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f32,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "yes")]
    pub query_bias: bool,
    #[serde(default)]
    pub key_bias: bool,
    #[serde(default = "yes")]
    pub value_bias: bool,
    #[serde(default = "yes")]
    pub proj_bias: bool,
    #[serde(default = "yes")]
    pub mlp_bias: bool,
    #[serde(default)]
    pub use_gated_mlp: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_registers() -> usize {
    4
}
fn default_channels() -> usize {
    3
}
fn default_rope_theta() -> f32 {
    100.0
}
fn default_eps() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}
fn default_act() -> String {
    "gelu".into()
}

impl DinoV3Config {
    /// ViT-L/16 as released (`facebook/dinov3-vitl16-pretrain-lvd1689m`).
    pub fn vitl16() -> Self {
        serde_json::from_value(serde_json::json!({
            "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
            "intermediate_size": 4096, "patch_size": 16
        }))
        .expect("static config parses")
    }

    /// The fields that size tensors within their plausible ranges (see [`super::limits`]).
    pub fn check_ranges(&self) -> Result<()> {
        use super::limits::{field, CHANNELS, DEPTH, HEADS};
        field("hidden_size", self.hidden_size, CHANNELS)?;
        field("num_hidden_layers", self.num_hidden_layers, DEPTH)?;
        field("num_attention_heads", self.num_attention_heads, HEADS)?;
        field("intermediate_size", self.intermediate_size, 1..=65536)?;
        field("num_register_tokens", self.num_register_tokens, 0..=64)?;
        // Tokens grow with (1024 / patch)²: DINOv2/v3 use 14 and 16.
        field("patch_size", self.patch_size, 8..=64)?;
        field("num_channels", self.num_channels, 1..=4)?;
        field("layer_norm_eps", self.layer_norm_eps, 0.0..=1.0)?;
        field("rope_theta", self.rope_theta as f64, 1.0..=1e9)
    }

    fn validate(&self) -> Result<()> {
        self.check_ranges()?;
        if self.use_gated_mlp {
            bail!("DINOv3 with a gated MLP (ViT-7B style) is not supported");
        }
        if self.hidden_act != "gelu" {
            bail!(
                "DINOv3 activation `{}` is not supported (expected gelu)",
                self.hidden_act
            );
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            bail!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if !(self.hidden_size / self.num_attention_heads).is_multiple_of(4) {
            bail!("DINOv3 RoPE needs a head dim divisible by 4");
        }
        Ok(())
    }

    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

fn linear(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    Ok(if bias {
        crate::ops::linear::linear(in_dim, out_dim, vb)?
    } else {
        crate::ops::linear::linear_no_bias(in_dim, out_dim, vb)?
    })
}

/// `λ·(x·Wᵀ + b)` as one linear: `W' = diag(λ)·W`, `b' = λ·b`, computed in f32 and rounded
/// once to the weights' dtype. A weight stored as one value per row (stride 0 along the inputs,
/// as in a shape-only build, `weights::ShapeRecorder`) stays so: nothing out × in is allocated.
fn fold_layer_scale(lin: &Linear, lambda: &Tensor) -> Result<Linear> {
    let (w, dtype) = (lin.weight(), lin.weight().dtype());
    let l = lambda.to_dtype(DType::F32)?;
    let w = if w.stride()[1] == 0 {
        let column = w.narrow(1, 0, 1)?.squeeze(1)?.to_dtype(DType::F32)?;
        (column * &l)?
            .to_dtype(dtype)?
            .unsqueeze(1)?
            .broadcast_as(w.shape())?
    } else {
        w.to_dtype(DType::F32)?
            .broadcast_mul(&l.unsqueeze(1)?)?
            .to_dtype(dtype)?
    };
    let b = match lin.bias() {
        Some(b) => Some((b.to_dtype(DType::F32)? * &l)?.to_dtype(dtype)?),
        None => None,
    };
    Ok(Linear::new(w, b))
}

/// The rows `rows` of `t` along dim 0. Rows that all alias one (stride 0, as in a shape-only
/// build) are unchanged by any permutation.
fn permute_rows(t: &Tensor, rows: &Tensor) -> Result<Tensor> {
    if t.stride()[0] == 0 {
        return Ok(t.clone());
    }
    Ok(t.contiguous()?.index_select(rows, 0)?)
}

/// A q or k projection whose output rows are reordered per head from rotate-half pairs
/// `(i, i + D/2)` to interleaved pairs `(2i, 2i + 1)`.
fn interleave_pairs(lin: &Linear, heads: usize, head_dim: usize) -> Result<Linear> {
    let half = head_dim / 2;
    let rows: Vec<u32> = (0..heads)
        .flat_map(|h| (0..half).flat_map(move |i| [h * head_dim + i, h * head_dim + half + i]))
        .map(|r| r as u32)
        .collect();
    let rows = Tensor::from_vec(rows, heads * head_dim, lin.weight().device())?;
    let w = permute_rows(lin.weight(), &rows)?;
    let b = match lin.bias() {
        Some(b) => Some(permute_rows(b, &rows)?),
        None => None,
    };
    Ok(Linear::new(w, b))
}

struct Attention {
    /// q and k emit interleaved RoPE pairs ([`interleave_pairs`]).
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    /// With the layer's LayerScale `λ1` folded in.
    o_proj: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(cfg: &DinoV3Config, layer_scale: &Tensor, vb: VarBuilder) -> Result<Self> {
        let (c, h, d) = (cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim());
        let q_proj = linear(c, c, cfg.query_bias, vb.pp("q_proj"))?;
        let k_proj = linear(c, c, cfg.key_bias, vb.pp("k_proj"))?;
        let o_proj = linear(c, c, cfg.proj_bias, vb.pp("o_proj"))?;
        Ok(Self {
            q_proj: interleave_pairs(&q_proj, h, d)?,
            k_proj: interleave_pairs(&k_proj, h, d)?,
            v_proj: linear(c, c, cfg.value_bias, vb.pp("v_proj"))?,
            o_proj: fold_layer_scale(&o_proj, layer_scale)?,
            heads: h,
            head_dim: d,
        })
    }

    /// Self-attention of `x [B, N, C]` before the output projection, `[B, N, C]`; `rotation`
    /// `[B·N, D/2, 2]` from [`rope_rotation`].
    fn attend(&self, x: &Tensor, rotation: &Tensor) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let heads = |t: Tensor| t.reshape((b * n, self.heads, self.head_dim));
        let q = rms_norm_rope(&heads(self.q_proj.forward(x)?)?, None, rotation)?;
        let k = rms_norm_rope(&heads(self.k_proj.forward(x)?)?, None, rotation)?;
        let v = heads(self.v_proj.forward(x)?)?;
        let offsets: Vec<usize> = (0..=b).map(|i| i * n).collect();
        let scale = 1.0 / (self.head_dim as f32).sqrt();
        let out = varlen_attention(&q, &k, &v, &offsets, &offsets, scale)?;
        Ok(out.reshape((b, n, c))?)
    }
}

/// The rotation table of [`rms_norm_rope`] for `b` images of `n` tokens whose last `P` are
/// patches: `[b·n, D/2, 2]` f32, pair `i` of patch `p` rotated by `(cos, sin)[p, i]` of the
/// rotate-half tables `[P, D]` (whose two halves are equal), the prefix tokens by the identity.
fn rope_rotation(cos: &Tensor, sin: &Tensor, b: usize, n: usize) -> Result<Tensor> {
    let (p, d) = cos.dims2()?;
    let (prefix, half, dev) = (n - p, d / 2, cos.device());
    let cos = Tensor::cat(
        &[
            &Tensor::ones((prefix, half), DType::F32, dev)?,
            &cos.narrow(1, 0, half)?.to_dtype(DType::F32)?,
        ],
        0,
    )?;
    let sin = Tensor::cat(
        &[
            &Tensor::zeros((prefix, half), DType::F32, dev)?,
            &sin.narrow(1, 0, half)?.to_dtype(DType::F32)?,
        ],
        0,
    )?;
    Ok(rope_table(&cos, &sin)?.repeat((b, 1, 1))?)
}

/// cos and sin `[h·w, head_dim]` for a grid of `h × w` patches, computed in f32 as HF does:
/// patch centres in [-1, 1], `inv_freq_k = θ^(−4k/head_dim)`, angles `2π·[y·f | x·f]` tiled twice.
pub fn rope_tables(
    h: usize,
    w: usize,
    head_dim: usize,
    theta: f32,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let quarter = head_dim / 4;
    let step = 4.0f32 / head_dim as f32;
    let inv_freq: Vec<f32> = (0..quarter)
        .map(|k| 1.0 / theta.powf(k as f32 * step))
        .collect();
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    let mut cos = Vec::with_capacity(h * w * head_dim);
    let mut sin = Vec::with_capacity(h * w * head_dim);
    let mut angles = vec![0f32; head_dim];
    for i in 0..h {
        for j in 0..w {
            let cy = 2.0 * ((i as f32 + 0.5) / h as f32) - 1.0;
            let cx = 2.0 * ((j as f32 + 0.5) / w as f32) - 1.0;
            for (k, f) in inv_freq.iter().enumerate() {
                angles[k] = two_pi * cy * f;
                angles[quarter + k] = two_pi * cx * f;
            }
            angles.copy_within(0..2 * quarter, 2 * quarter);
            cos.extend(angles.iter().map(|a| a.cos()));
            sin.extend(angles.iter().map(|a| a.sin()));
        }
    }
    Ok((
        Tensor::from_vec(cos, (h * w, head_dim), device)?,
        Tensor::from_vec(sin, (h * w, head_dim), device)?,
    ))
}

struct Mlp {
    up_proj: Linear,
    /// With the layer's LayerScale `λ2` folded in.
    down_proj: Linear,
}

struct Layer {
    norm1: AffineNorm,
    attention: Attention,
    /// LayerScale `λ1`, `λ2` as loaded: folded into `o_proj` and `down_proj`, kept for the trace
    /// (which records the unscaled branches, as upstream's hooks see them).
    layer_scale1: Tensor,
    norm2: AffineNorm,
    mlp: Mlp,
    layer_scale2: Tensor,
}

impl Layer {
    fn new(cfg: &DinoV3Config, vb: VarBuilder) -> Result<Self> {
        let c = cfg.hidden_size;
        let layer_scale1 = vb.get(c, "layer_scale1.lambda1")?;
        let layer_scale2 = vb.get(c, "layer_scale2.lambda1")?;
        let down_proj = linear(
            cfg.intermediate_size,
            c,
            cfg.mlp_bias,
            vb.pp("mlp.down_proj"),
        )?;
        Ok(Self {
            norm1: AffineNorm::new(c, cfg.layer_norm_eps, vb.pp("norm1"))?,
            attention: Attention::new(cfg, &layer_scale1, vb.pp("attention"))?,
            norm2: AffineNorm::new(c, cfg.layer_norm_eps, vb.pp("norm2"))?,
            mlp: Mlp {
                up_proj: linear(c, cfg.intermediate_size, cfg.mlp_bias, vb.pp("mlp.up_proj"))?,
                down_proj: fold_layer_scale(&down_proj, &layer_scale2)?,
            },
            layer_scale1,
            layer_scale2,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        rotation: &Tensor,
        prefix: &str,
        trace: &mut Trace,
    ) -> Result<Tensor> {
        let h = self.norm1.forward(x)?;
        trace.record(&format!("{prefix}.norm1"), || Ok(h.clone()))?;
        let a = self.attention.attend(&h, rotation)?;
        // x + λ1·o_proj(a): the scale folded into o_proj, the add in its epilogue. The trace
        // (off in production) recomputes the branch, and divides the scale out again.
        let o_proj = &self.attention.o_proj;
        trace.record(&format!("{prefix}.attention.0"), || {
            o_proj.forward(&a)?.broadcast_div(&self.layer_scale1)
        })?;
        trace.record(&format!("{prefix}.layer_scale1"), || o_proj.forward(&a))?;
        let x = o_proj.forward_residual(&a, x)?;
        let h = self.norm2.forward(&x)?;
        let h = self.mlp.up_proj.forward_act(&h, Activation::GeluErf)?;
        // x + λ2·down_proj(h), likewise.
        let down_proj = &self.mlp.down_proj;
        trace.record(&format!("{prefix}.mlp"), || {
            down_proj.forward(&h)?.broadcast_div(&self.layer_scale2)
        })?;
        let x = down_proj.forward_residual(&h, &x)?;
        trace.record(prefix, || Ok(x.clone()))?;
        Ok(x)
    }
}

pub struct DinoV3 {
    cfg: DinoV3Config,
    patch_embed: candle_nn::Conv2d,
    cls_token: Tensor,
    register_tokens: Tensor,
    layers: Vec<Layer>,
}

impl DinoV3 {
    pub fn new(cfg: &DinoV3Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let c = cfg.hidden_size;
        let conv = Conv2dConfig {
            stride: cfg.patch_size,
            ..Default::default()
        };
        let emb = vb.pp("embeddings");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::new(cfg, vb.pp(format!("layer.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            patch_embed: candle_nn::conv2d(
                cfg.num_channels,
                c,
                cfg.patch_size,
                conv,
                emb.pp("patch_embeddings"),
            )?,
            cls_token: emb.get((1, 1, c), "cls_token")?,
            register_tokens: emb.get((1, cfg.num_register_tokens, c), "register_tokens")?,
            layers,
        })
    }

    /// Loads a Hugging Face model folder's checkpoint strictly (every key must be used, but for
    /// the unused final `norm` and `mask_token`).
    pub fn load(
        cfg: &DinoV3Config,
        ckpt: &Checkpoint,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let strict = ckpt.strict().allow_unused(UNUSED_KEYS);
        let model = Self::new(cfg, strict.var_builder(dtype, device))?;
        strict.finish()?;
        Ok(model)
    }

    /// `DinoV3FeatureExtractor.extract_features`: `pixel_values [B, 3, H, W]` (normalised) →
    /// `[B, 1 + registers + (H/p)(W/p), hidden]`, after a parameter-free LayerNorm (eps 1e-5).
    pub fn features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.features_traced(pixel_values, &mut Trace::off())
    }

    pub fn features_traced(&self, pixel_values: &Tensor, trace: &mut Trace) -> Result<Tensor> {
        let (b, ch, h, w) = pixel_values
            .dims4()
            .context("DINOv3 input must be [B, 3, H, W]")?;
        let p = self.cfg.patch_size;
        if ch != self.cfg.num_channels || h % p != 0 || w % p != 0 || h == 0 || w == 0 {
            bail!(
                "DINOv3 input {:?}: needs {} channels and a height and width that are positive \
                 multiples of the patch size {p}",
                pixel_values.dims(),
                self.cfg.num_channels
            );
        }
        let dtype = self.cls_token.dtype();
        let x = self.patch_embed.forward(&pixel_values.to_dtype(dtype)?)?;
        let patches = x.flatten_from(2)?.transpose(1, 2)?; // [B, hw, C]
        let c = self.cfg.hidden_size;
        let cls = self.cls_token.expand((b, 1, c))?;
        let reg = self
            .register_tokens
            .expand((b, self.cfg.num_register_tokens, c))?;
        let mut x = Tensor::cat(&[&cls, &reg, &patches], 1)?;
        trace.record("embeddings", || Ok(x.clone()))?;
        let (cos, sin) = rope_tables(
            h / p,
            w / p,
            self.cfg.head_dim(),
            self.cfg.rope_theta,
            x.device(),
        )?;
        trace.record("rope_embeddings.0", || Ok(cos.clone()))?;
        trace.record("rope_embeddings.1", || Ok(sin.clone()))?;
        let rotation = rope_rotation(&cos, &sin, b, x.dim(1)?)?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, &rotation, &format!("layer.{i}"), trace)?;
        }
        Ok(layer_norm(&x, None, 1e-5)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{rel_err, uniform_tensor};

    #[test]
    fn folded_layer_scale_equals_scaling_the_output() {
        let (w, b, lambda) = (
            uniform_tensor(&[24, 16], 1),
            uniform_tensor(&[24], 2),
            uniform_tensor(&[24], 3),
        );
        let x = uniform_tensor(&[2, 5, 16], 4);
        // One value per row, stored once (stride 0 along the inputs): folded without expanding.
        let per_row = uniform_tensor(&[24], 8)
            .unsqueeze(1)
            .unwrap()
            .broadcast_as((24, 16))
            .unwrap();
        let folded = fold_layer_scale(&Linear::new(per_row.clone(), None), &lambda).unwrap();
        assert_eq!(folded.weight().stride(), [1, 0]);
        for lin in [
            Linear::new(w.clone(), Some(b)),
            Linear::new(w, None),
            Linear::new(per_row, None),
        ] {
            let want = lin.forward(&x).unwrap().broadcast_mul(&lambda).unwrap();
            let got = fold_layer_scale(&lin, &lambda)
                .unwrap()
                .forward(&x)
                .unwrap();
            let e = rel_err(&got, &want);
            assert!(e <= 1e-6, "bias {}: {e}", lin.bias().is_some());
        }
    }

    /// Upstream's rotate-half RoPE on the patch tokens (the last P of each image's N) of
    /// `x [B, N, H, D]` by `cos, sin [P, D]`, composed of candle ops.
    fn rope_rotate_half(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let (_, n, _, d) = x.dims4().unwrap();
        let p = cos.dim(0).unwrap();
        let prefix = x.narrow(1, 0, n - p).unwrap();
        let patches = x.narrow(1, n - p, p).unwrap();
        let x1 = patches.narrow(3, 0, d / 2).unwrap();
        let x2 = patches.narrow(3, d / 2, d / 2).unwrap();
        let rotated = Tensor::cat(&[&x2.neg().unwrap(), &x1], 3).unwrap();
        let (cos, sin) = (
            cos.unsqueeze(0).unwrap().unsqueeze(2).unwrap(),
            sin.unsqueeze(0).unwrap().unsqueeze(2).unwrap(),
        );
        let patches =
            (patches.broadcast_mul(&cos).unwrap() + rotated.broadcast_mul(&sin).unwrap()).unwrap();
        Tensor::cat(&[&prefix, &patches], 1).unwrap()
    }

    /// The interleaved projection rotated by the fused op equals upstream's rotate-half RoPE of
    /// the original projection, up to the same permutation of each head's channels (which leaves
    /// q·k unchanged): prefix tokens untouched, every image of a batch rotated alike.
    #[test]
    fn interleaved_rope_equals_rotate_half_rope() {
        let (b, heads, d, grid) = (2usize, 3usize, 16usize, (3usize, 4usize));
        let (p, c) = (grid.0 * grid.1, heads * d);
        let n = p + 5;
        let lin = Linear::new(uniform_tensor(&[c, c], 5), Some(uniform_tensor(&[c], 6)));
        let x = uniform_tensor(&[b, n, c], 7);
        let (cos, sin) = rope_tables(grid.0, grid.1, d, 100.0, &Device::Cpu).unwrap();
        let want = rope_rotate_half(
            &lin.forward(&x).unwrap().reshape((b, n, heads, d)).unwrap(),
            &cos,
            &sin,
        );
        let order: Vec<u32> = (0..d / 2)
            .flat_map(|i| [i as u32, (d / 2 + i) as u32])
            .collect();
        let want = want
            .index_select(&Tensor::new(order.as_slice(), &Device::Cpu).unwrap(), 3)
            .unwrap()
            .reshape((b * n, heads, d))
            .unwrap();
        let rotation = rope_rotation(&cos, &sin, b, n).unwrap();
        let q = interleave_pairs(&lin, heads, d)
            .unwrap()
            .forward(&x)
            .unwrap();
        let got = rms_norm_rope(&q.reshape((b * n, heads, d)).unwrap(), None, &rotation).unwrap();
        let e = rel_err(&got, &want);
        assert!(e <= 1e-6, "{e}");
    }
}
