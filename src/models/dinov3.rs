//! DINOv3 ViT image encoder (`DINOv3ViTModel` of transformers 4.56/4.57, whose key names the
//! checkpoints use) as TRELLIS.2's `DinoV3FeatureExtractor` runs it: patch embedding, CLS and
//! register tokens, every layer (rotate-half 2-D RoPE on patch tokens only, layer scale, exact
//! GELU MLP, k without bias), then a parameter-free LayerNorm over all tokens. The model's own
//! final `norm` is not used (upstream skips it), so its weights may stay unused.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Conv2dConfig, VarBuilder};

use super::trace::Trace;
use crate::ops::attention::varlen_attention;
use crate::ops::layer_norm;
use crate::ops::layer_norm::layer_norm_prepared;
use crate::ops::linear::Linear;
use crate::ops::norm_params::NormAffine;
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

    fn validate(&self) -> Result<()> {
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

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(cfg: &DinoV3Config, vb: VarBuilder) -> Result<Self> {
        let c = cfg.hidden_size;
        Ok(Self {
            q_proj: linear(c, c, cfg.query_bias, vb.pp("q_proj"))?,
            k_proj: linear(c, c, cfg.key_bias, vb.pp("k_proj"))?,
            v_proj: linear(c, c, cfg.value_bias, vb.pp("v_proj"))?,
            o_proj: linear(c, c, cfg.proj_bias, vb.pp("o_proj"))?,
            heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
        })
    }

    /// `x [B, N, C]`; RoPE tables `[P, head_dim]` apply to the last P tokens of each image.
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let split = |t: Tensor| t.reshape((b, n, self.heads, self.head_dim));
        let q = rope_patches(&split(self.q_proj.forward(x)?)?, cos, sin)?;
        let k = rope_patches(&split(self.k_proj.forward(x)?)?, cos, sin)?;
        let v = split(self.v_proj.forward(x)?)?;
        let flat = |t: &Tensor| t.reshape((b * n, self.heads, self.head_dim));
        let offsets: Vec<usize> = (0..=b).map(|i| i * n).collect();
        let scale = 1.0 / (self.head_dim as f32).sqrt();
        let out = varlen_attention(
            &flat(&q)?,
            &flat(&k)?,
            &flat(&v)?,
            &offsets,
            &offsets,
            scale,
        )?;
        Ok(self.o_proj.forward(&out.reshape((b, n, c))?)?)
    }
}

/// Rotate-half RoPE on the patch tokens (the last `P` of `N`); prefix tokens pass unchanged.
/// `x [B, N, H, D]`, `cos/sin [P, D]`.
fn rope_patches(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (_, n, _, d) = x.dims4()?;
    let p = cos.dim(0)?;
    let prefix = x.narrow(1, 0, n - p)?;
    let patches = x.narrow(1, n - p, p)?;
    let half = d / 2;
    let x1 = patches.narrow(D::Minus1, 0, half)?;
    let x2 = patches.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    // [P, D] → [1, P, 1, D] to broadcast over batch and heads.
    let cos = cos.unsqueeze(0)?.unsqueeze(2)?;
    let sin = sin.unsqueeze(0)?.unsqueeze(2)?;
    let patches = (patches.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?;
    Ok(Tensor::cat(&[&prefix, &patches], 1)?)
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
    down_proj: Linear,
}

/// An affine LayerNorm (`weight`, `bias`) through the shared op.
#[derive(Clone)]
pub struct AffineNorm {
    /// Weight and bias stacked in f32 once, as the fused norm kernels read them.
    affine: NormAffine,
    eps: f64,
}

impl AffineNorm {
    pub fn new(channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            affine: NormAffine::new(&vb.get(channels, "weight")?, &vb.get(channels, "bias")?)?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        layer_norm_prepared(x, &self.affine, self.eps)
    }
}

struct Layer {
    norm1: AffineNorm,
    attention: Attention,
    layer_scale1: Tensor,
    norm2: AffineNorm,
    mlp: Mlp,
    layer_scale2: Tensor,
}

impl Layer {
    fn new(cfg: &DinoV3Config, vb: VarBuilder) -> Result<Self> {
        let c = cfg.hidden_size;
        Ok(Self {
            norm1: AffineNorm::new(c, cfg.layer_norm_eps, vb.pp("norm1"))?,
            attention: Attention::new(cfg, vb.pp("attention"))?,
            layer_scale1: vb.get(c, "layer_scale1.lambda1")?,
            norm2: AffineNorm::new(c, cfg.layer_norm_eps, vb.pp("norm2"))?,
            mlp: Mlp {
                up_proj: linear(c, cfg.intermediate_size, cfg.mlp_bias, vb.pp("mlp.up_proj"))?,
                down_proj: linear(
                    cfg.intermediate_size,
                    c,
                    cfg.mlp_bias,
                    vb.pp("mlp.down_proj"),
                )?,
            },
            layer_scale2: vb.get(c, "layer_scale2.lambda1")?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        prefix: &str,
        trace: &mut Trace,
    ) -> Result<Tensor> {
        let h = self.norm1.forward(x)?;
        trace.record(&format!("{prefix}.norm1"), || Ok(h.clone()))?;
        let h = self.attention.forward(&h, cos, sin)?;
        trace.record(&format!("{prefix}.attention.0"), || Ok(h.clone()))?;
        let h = h.broadcast_mul(&self.layer_scale1)?;
        trace.record(&format!("{prefix}.layer_scale1"), || Ok(h.clone()))?;
        let x = (x + h)?;
        let h = self.norm2.forward(&x)?;
        let h = self.mlp.up_proj.forward(&h)?.gelu_erf()?;
        let h = self.mlp.down_proj.forward(&h)?;
        trace.record(&format!("{prefix}.mlp"), || Ok(h.clone()))?;
        let x = (x + h.broadcast_mul(&self.layer_scale2)?)?;
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
        let (cos, sin) = (cos.to_dtype(dtype)?, sin.to_dtype(dtype)?);
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, &cos, &sin, &format!("layer.{i}"), trace)?;
        }
        Ok(layer_norm(&x, None, 1e-5)?)
    }
}
