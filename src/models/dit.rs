//! The flow transformer shared by all five TRELLIS.2 flow models: `SparseStructureFlowModel`
//! (dense 16³ tokens) and `SLatFlowModel` / `ElasticSLatFlowModel` (sparse voxel tokens, with an
//! optional `concat_cond` joined to the input channels). Spec §3: timestep embedding, one shared
//! adaLN projection plus a learned per-block `modulation`, interleaved 3-D RoPE from voxel
//! coordinates, q/k RMS norm, self-attention over each sample's tokens, cross-attention to the
//! image tokens, tanh-GELU MLP, final non-affine LayerNorm.
//!
//! Cross-attention keys and values depend only on the condition, so [`FlowDit::cond_kv`]
//! computes them once for a whole sampling run. An all-zero condition (the negative branch of
//! classifier-free guidance) needs no attention at all: every key equals the `to_kv` key bias,
//! softmax over identical keys is uniform, and the output is `to_out(v_bias)` for every token —
//! a per-block constant ([`Condition::Zero`]).

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use super::layers::AffineNorm;
use super::trace::Trace;
use super::WeightMemory;
use crate::ops::attention::varlen_attention;
use crate::ops::bias_act::{bias_act, Activation};
use crate::ops::gated_residual::gated_residual;
use crate::ops::layer_norm;
use crate::ops::linear::{linear, Linear};
use crate::ops::norm_modulate::layer_norm_modulate_prepared;
use crate::ops::norm_params::NormAffine;
use crate::ops::rms_norm_rope::{
    identity_rotation, multi_head_rms_norm, rms_norm_rope, rope_table,
};
use crate::ops::rope::rope_tables_3d;
use crate::weights::Checkpoint;

/// Constructor arguments of the upstream classes (`<stem>.json` `args`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct DitConfig {
    #[serde(default)]
    pub resolution: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub model_channels: usize,
    pub cond_channels: usize,
    pub num_blocks: usize,
    #[serde(default)]
    pub num_heads: Option<usize>,
    #[serde(default = "default_head_channels")]
    pub num_head_channels: usize,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    #[serde(default = "default_pe_mode")]
    pub pe_mode: String,
    #[serde(default)]
    pub share_mod: bool,
    #[serde(default)]
    pub qk_rms_norm: bool,
    #[serde(default)]
    pub qk_rms_norm_cross: bool,
    #[serde(default)]
    pub rope_freq: Option<(f32, f32)>,
}

fn default_head_channels() -> usize {
    64
}
fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_pe_mode() -> String {
    "ape".into()
}

impl DitConfig {
    pub fn heads(&self) -> usize {
        self.num_heads
            .unwrap_or(self.model_channels / self.num_head_channels.max(1))
    }

    pub fn head_dim(&self) -> usize {
        self.model_channels / self.heads().max(1)
    }

    /// `int(model_channels * mlp_ratio)`, as Python computes it.
    pub fn mlp_hidden(&self) -> usize {
        (self.model_channels as f64 * self.mlp_ratio) as usize
    }

    /// FLOPs of one forward of one sample with `tokens` tokens and `cond_tokens` image tokens
    /// (0: the zero condition, which needs no attention), counted as docs/MODEL.md §9 does: 2 per
    /// multiply-add of every block linear but the cacheable cross-attention K/V, plus 4·N·C for
    /// self-attention and 4·L·C for cross-attention per token and block. The release's 1.3 B
    /// model gives docs/MODEL.md §9's `30·N·(78.7 M + 6144·N + 6144·L)`.
    pub fn forward_flops(&self, tokens: usize, cond_tokens: usize) -> f64 {
        let c = self.model_channels as f64;
        let hidden = self.mlp_hidden() as f64;
        // to_qkv (3C²), self to_out, cross to_q and to_out (C² each), the MLP (2·C·hidden).
        let linear = 2.0 * (6.0 * c * c + 2.0 * c * hidden);
        let (n, l) = (tokens as f64, cond_tokens as f64);
        self.num_blocks as f64 * n * (linear + 4.0 * n * c + 4.0 * l * c)
    }

    /// The fields that size tensors within their plausible ranges (see [`super::limits`]).
    pub fn check_ranges(&self) -> Result<()> {
        use super::limits::{field, CHANNELS, DEPTH, HEADS};
        // The sparse-structure flow's noise and tokens are dense `R³` (16 in the release).
        field("resolution", self.resolution, 0..=64)?;
        field("in_channels", self.in_channels, 1..=1024)?;
        field("out_channels", self.out_channels, 1..=1024)?;
        field("model_channels", self.model_channels, CHANNELS)?;
        field("cond_channels", self.cond_channels, CHANNELS)?;
        // 0 is the shell a streamed model is built as (its blocks come from the checkpoint).
        field("num_blocks", self.num_blocks, 0..=*DEPTH.end())?;
        if let Some(h) = self.num_heads {
            field("num_heads", h, HEADS)?;
        }
        field("num_head_channels", self.num_head_channels, 1..=1024)?;
        field("mlp_ratio", self.mlp_ratio, 0.25..=16.0)
    }

    fn validate(&self) -> Result<()> {
        self.check_ranges()?;
        if self.pe_mode != "rope" {
            bail!(
                "pe_mode `{}` is not supported (TRELLIS.2 flows use \"rope\")",
                self.pe_mode
            );
        }
        if !self.share_mod {
            bail!(
                "share_mod = false is not supported (TRELLIS.2 flows share one adaLN projection)"
            );
        }
        let h = self.heads();
        if h == 0 || !self.model_channels.is_multiple_of(h) {
            bail!(
                "model_channels {} is not divisible by {h} heads",
                self.model_channels
            );
        }
        if !self.head_dim().is_multiple_of(2) || self.head_dim() < 6 {
            bail!("head dim {} cannot carry 3-D RoPE", self.head_dim());
        }
        Ok(())
    }
}

#[derive(Clone)]
struct SelfAttention {
    to_qkv: Linear,
    q_gamma: Option<Tensor>,
    k_gamma: Option<Tensor>,
    to_out: Linear,
}

#[derive(Clone)]
struct CrossAttention {
    to_q: Linear,
    to_kv: Linear,
    q_gamma: Option<Tensor>,
    k_gamma: Option<Tensor>,
    to_out: Linear,
    /// `to_out(v_bias)`: the output for an all-zero condition, `[1, C]`.
    zero_cond_out: Tensor,
}

#[derive(Clone)]
struct Block {
    modulation: Tensor,
    norm2: AffineNorm,
    self_attn: SelfAttention,
    cross_attn: CrossAttention,
    mlp_in: Linear,
    mlp_out: Linear,
}

impl Block {
    /// One block from `b` = the `blocks.{i}` prefix.
    fn new(cfg: &DitConfig, b: VarBuilder) -> Result<Self> {
        let c = cfg.model_channels;
        let (h, d) = (cfg.heads(), cfg.head_dim());
        let gamma = |vb: &VarBuilder, on: bool, name: &str| -> Result<Option<Tensor>> {
            Ok(if on {
                // f32 once here: the fused q/k norm kernels read gamma in f32.
                Some(
                    vb.get((h, d), &format!("{name}.gamma"))?
                        .to_dtype(DType::F32)?,
                )
            } else {
                None
            })
        };
        let sa = b.pp("self_attn");
        let ca = b.pp("cross_attn");
        let to_kv = linear(cfg.cond_channels, 2 * c, ca.pp("to_kv"))?;
        let to_out = linear(c, c, ca.pp("to_out"))?;
        let v_bias = to_kv
            .bias()
            .context("cross_attn.to_kv has no bias")?
            .narrow(0, c, c)?
            .unsqueeze(0)?;
        let zero_cond_out = to_out.forward(&v_bias)?;
        Ok(Block {
            modulation: b.get(6 * c, "modulation")?,
            norm2: AffineNorm::new(c, 1e-6, b.pp("norm2"))?,
            self_attn: SelfAttention {
                to_qkv: linear(c, 3 * c, sa.pp("to_qkv"))?,
                q_gamma: gamma(&sa, cfg.qk_rms_norm, "q_rms_norm")?,
                k_gamma: gamma(&sa, cfg.qk_rms_norm, "k_rms_norm")?,
                to_out: linear(c, c, sa.pp("to_out"))?,
            },
            cross_attn: CrossAttention {
                to_q: linear(c, c, ca.pp("to_q"))?,
                to_kv,
                q_gamma: gamma(&ca, cfg.qk_rms_norm_cross, "q_rms_norm")?,
                k_gamma: gamma(&ca, cfg.qk_rms_norm_cross, "k_rms_norm")?,
                to_out,
                zero_cond_out,
            },
            mlp_in: linear(c, cfg.mlp_hidden(), b.pp("mlp.mlp.0"))?,
            mlp_out: linear(cfg.mlp_hidden(), c, b.pp("mlp.mlp.2"))?,
        })
    }

    /// Normalised cross-attention keys and values of `flat [B·L, cond_channels]`.
    fn cond_kv(&self, flat: &Tensor, heads: usize, head_dim: usize) -> Result<(Tensor, Tensor)> {
        let rows = flat.dim(0)?;
        let kv = self
            .cross_attn
            .to_kv
            .forward(flat)?
            .reshape((rows, 2, heads, head_dim))?;
        let mut k = kv.narrow(1, 0, 1)?.squeeze(1)?;
        let v = kv.narrow(1, 1, 1)?.squeeze(1)?.contiguous()?;
        if let Some(g) = &self.cross_attn.k_gamma {
            k = multi_head_rms_norm(&k, g)?;
        }
        Ok((k.contiguous()?, v))
    }
}

/// What a [`TokenLayout`] was built from.
#[derive(Debug, Clone, PartialEq)]
enum LayoutKey {
    /// `[B, X, Y, Z]` of a dense grid.
    Dense([usize; 4]),
    /// The coordinates tensor (candle ids are never reused) with its row and sample counts.
    Sparse {
        coords: candle_core::TensorId,
        rows: usize,
        batch: usize,
    },
}

/// The tokens of one forward pass, flattened to `[T, C]` with per-sample offsets.
#[derive(Clone)]
struct TokenLayout {
    offsets: Vec<usize>,
    /// RoPE rotation `[T, head_dim/2, 2]` (cos; sin), f32.
    rope: Tensor,
    /// Dense models record traces as `[B, N, C]`, sparse ones as `[T, C]` with a `.feats` suffix.
    dense: bool,
}

impl TokenLayout {
    fn batch(&self) -> usize {
        self.offsets.len() - 1
    }

    fn trace_view(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        if self.dense {
            let b = self.batch();
            let (n, c) = t.dims2()?;
            t.reshape((b, n / b.max(1), c))
        } else {
            Ok(t.clone())
        }
    }

    fn name(&self, module: &str) -> String {
        if self.dense {
            module.to_string()
        } else {
            format!("{module}.feats")
        }
    }
}

/// Cross-attention keys and values of one condition, per block.
pub struct CondKv {
    store: KvStore,
    offsets: Vec<usize>,
}

enum KvStore {
    /// Computed once for every block (resident models: one sampling run reuses them).
    PerBlock(Vec<(Tensor, Tensor)>),
    /// The flattened condition `[B·L, cond_channels]`; each streamed block projects it when it
    /// runs, so no model-sized K/V cache exists (≈1.5 GB in f32 for 4,101 image tokens).
    Deferred(Tensor),
}

/// The transformer blocks' weights.
enum Blocks {
    Resident(Vec<Block>),
    /// Read from the checkpoint for each use (`WeightMemory::Streamed`).
    Streamed(VarBuilder<'static>),
}

/// MLP rows per chunk in streamed mode: the hidden activation is `mlp_ratio·C` wide (8,192 in
/// the release), so chunking keeps it at ≈67 MB (f32) instead of ≈1.6 GB at 49k tokens. The MLP
/// is row-wise, so the result is identical.
const STREAMED_MLP_ROWS: usize = 2048;

/// What one block's cross-attention attends to.
enum BlockCross<'a> {
    /// Every sample attends to its image tokens: K/V `[B·L, H, D]` with per-sample offsets.
    Tokens(&'a (Tensor, Tensor), &'a [usize]),
    /// The zero condition for every sample.
    Zero,
    /// A guided batch ([`FlowDit::forward_guided`]): the first `rows` tokens (the conditioned
    /// samples, `offsets.len() − 1` of them) attend to their image tokens, the rest take the
    /// zero condition.
    Guided {
        kv: &'a (Tensor, Tensor),
        offsets: &'a [usize],
        rows: usize,
    },
}

/// What the cross-attention attends to.
pub enum Condition<'a> {
    /// Image tokens, K/V precomputed by [`FlowDit::cond_kv`].
    Tokens(&'a CondKv),
    /// `zeros_like(cond)`: the exact per-block constant, no attention needed.
    Zero,
}

/// Input tokens of a flow model.
pub enum FlowInput<'a> {
    /// `[B, C, R, R, R]` (the sparse-structure flow).
    Dense(&'a Tensor),
    /// `feats [T, C]` on `coords [T, 4]` (i32 batch, x, y, z; rows of a sample contiguous and
    /// in batch order), plus optional `concat_cond [T, C']` joined after the channels.
    Sparse {
        feats: &'a Tensor,
        coords: &'a Tensor,
        concat_cond: Option<&'a Tensor>,
    },
}

/// Checkpoint keys the model does not read: the dense model's `rope_phases` buffer is
/// recomputed.
pub const UNUSED_KEYS: &[&str] = &["rope_phases"];

pub struct FlowDit {
    cfg: DitConfig,
    input_layer: Linear,
    t_mlp_in: Linear,
    t_mlp_out: Linear,
    adaln: Linear,
    blocks: Blocks,
    out_layer: Linear,
    /// The last token layout (host offsets, RoPE table) and what it was built from: a sampling
    /// run passes the same coordinates at every step, so the coordinates are read back to the
    /// host and the table built once per run instead of once per forward.
    layout_cache: std::sync::Mutex<Option<(LayoutKey, TokenLayout)>>,
    /// The guided batch's layout (the last layout's samples twice), keyed by that layout's
    /// RoPE table (candle ids are never reused), built once per run as well.
    guided_cache: std::sync::Mutex<Option<(candle_core::TensorId, TokenLayout)>>,
    /// [`identity_rotation`] for the cross-attention's q RMS norm, built once instead of at
    /// every block of every forward.
    plain_rotation: Tensor,
    /// Weight 1, bias 0: the affine operand of the blocks' modulated norms.
    plain_norm: NormAffine,
}

impl FlowDit {
    pub fn new(cfg: &DitConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let c = cfg.model_channels;
        let blocks = (0..cfg.num_blocks)
            .map(|i| Block::new(cfg, vb.pp(format!("blocks.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            input_layer: linear(cfg.in_channels, c, vb.pp("input_layer"))?,
            t_mlp_in: linear(256, c, vb.pp("t_embedder.mlp.0"))?,
            t_mlp_out: linear(c, c, vb.pp("t_embedder.mlp.2"))?,
            adaln: linear(c, 6 * c, vb.pp("adaLN_modulation.1"))?,
            blocks: Blocks::Resident(blocks),
            layout_cache: std::sync::Mutex::new(None),
            guided_cache: std::sync::Mutex::new(None),
            plain_rotation: identity_rotation(cfg.head_dim(), vb.device())?,
            plain_norm: NormAffine::identity(c, vb.device())?,
            out_layer: linear(c, cfg.out_channels, vb.pp("out_layer"))?,
        })
    }

    /// Loads a checkpoint strictly. The dense model's `rope_phases` buffer, if a file has it,
    /// is recomputed rather than read.
    pub fn load(cfg: &DitConfig, ckpt: &Checkpoint, dtype: DType, device: &Device) -> Result<Self> {
        Self::load_with(cfg, ckpt, dtype, device, WeightMemory::Resident)
    }

    /// [`FlowDit::load`] with a choice of weight residency. Streamed models are checked as
    /// strictly as resident ones: every block is built once (and dropped) before `finish`.
    pub fn load_with(
        cfg: &DitConfig,
        ckpt: &Checkpoint,
        dtype: DType,
        device: &Device,
        memory: WeightMemory,
    ) -> Result<Self> {
        let strict = ckpt.strict().allow_unused(UNUSED_KEYS);
        let vb = strict.var_builder(dtype, device);
        let model = match memory {
            WeightMemory::Resident => Self::new(cfg, vb)?,
            WeightMemory::Streamed => {
                let mut model = Self::new(
                    &DitConfig {
                        num_blocks: 0,
                        ..cfg.clone()
                    },
                    vb.clone(),
                )?;
                for i in 0..cfg.num_blocks {
                    drop(Block::new(cfg, vb.pp(format!("blocks.{i}")))?);
                }
                model.cfg = cfg.clone();
                model.blocks = Blocks::Streamed(strict.streaming(dtype, device));
                model
            }
        };
        strict.finish()?;
        Ok(model)
    }

    /// Block `i`, borrowed when resident, read from the checkpoint when streamed.
    fn block_at(&self, i: usize) -> Result<std::borrow::Cow<'_, Block>> {
        Ok(match &self.blocks {
            Blocks::Resident(blocks) => std::borrow::Cow::Borrowed(&blocks[i]),
            Blocks::Streamed(vb) => {
                std::borrow::Cow::Owned(Block::new(&self.cfg, vb.pp(format!("blocks.{i}")))?)
            }
        })
    }

    pub fn config(&self) -> &DitConfig {
        &self.cfg
    }

    /// Whether the transformer blocks are read from the checkpoint at each use
    /// (`WeightMemory::Streamed`, the CLI's `--low-memory`).
    pub fn streamed(&self) -> bool {
        matches!(self.blocks, Blocks::Streamed(_))
    }

    /// Whether a guided batch of `rows` tokens in all (both halves) runs its largest linear
    /// layers (the MLP's two and `to_qkv`) as single products within the device's limits
    /// ([`crate::ops::linear::matmul_fits_one_dispatch`]: Metal's command-buffer budget, which
    /// cannot split a matmul). Where they do not, the two forwards keep each product at half.
    pub fn guided_batch_fits(&self, rows: usize) -> bool {
        let (c, hidden) = (self.cfg.model_channels, self.cfg.mlp_hidden());
        let dtype = self.input_layer.weight().dtype();
        let fits = |inner, out| {
            crate::ops::linear::matmul_fits_one_dispatch(self.device(), rows, inner, out, dtype)
        };
        fits(c, hidden) && fits(hidden, c) && fits(c, 3 * c)
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.input_layer.weight().device()
    }

    /// [`DitConfig::forward_flops`].
    pub fn forward_flops(&self, tokens: usize, cond_tokens: usize) -> f64 {
        self.cfg.forward_flops(tokens, cond_tokens)
    }

    /// Cross-attention K/V of `cond [B, L, cond_channels]` for every block (normalised keys).
    pub fn cond_kv(&self, cond: &Tensor) -> Result<CondKv> {
        let (b, l, cc) = cond.dims3().context("condition must be [B, L, channels]")?;
        if cc != self.cfg.cond_channels || l == 0 {
            bail!(
                "condition {:?}: expected [B, L > 0, {}]",
                cond.dims(),
                self.cfg.cond_channels
            );
        }
        let (h, d) = (self.cfg.heads(), self.cfg.head_dim());
        let dtype = self.input_layer.weight().dtype();
        let flat = cond.reshape((b * l, cc))?.to_dtype(dtype)?;
        let store = match &self.blocks {
            Blocks::Resident(blocks) => KvStore::PerBlock(
                blocks
                    .iter()
                    .map(|blk| blk.cond_kv(&flat, h, d))
                    .collect::<Result<Vec<_>>>()?,
            ),
            Blocks::Streamed(_) => KvStore::Deferred(flat),
        };
        Ok(CondKv {
            store,
            offsets: (0..=b).map(|i| i * l).collect(),
        })
    }

    /// `TimestepEmbedder`: sinusoidal features `[cos | sin]` of `t` (already ×1000), then MLP.
    fn timestep_embedding(&self, t: &Tensor) -> Result<Tensor> {
        let half = 128usize;
        let ln = -(10000f64.ln()) as f32;
        let freqs: Vec<f32> = (0..half)
            .map(|k| (ln * k as f32 / half as f32).exp())
            .collect();
        let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
        let args = t
            .to_dtype(DType::F32)?
            .unsqueeze(1)?
            .broadcast_mul(&freqs)?;
        let feats = Tensor::cat(&[args.cos()?, args.sin()?], 1)?;
        let dtype = self.input_layer.weight().dtype();
        let h = self.t_mlp_in.forward(&feats.to_dtype(dtype)?)?.silu()?;
        Ok(self.t_mlp_out.forward(&h)?)
    }

    /// One forward pass; `t [B]` is the sampler time ×1000. Returns the same layout as the
    /// input: `[B, out, R, R, R]` for dense, `[T, out]` for sparse.
    pub fn forward(&self, x: &FlowInput, t: &Tensor, cond: &Condition) -> Result<Tensor> {
        self.forward_traced(x, t, cond, &mut Trace::off())
    }

    pub fn forward_traced(
        &self,
        x: &FlowInput,
        t: &Tensor,
        cond: &Condition,
        trace: &mut Trace,
    ) -> Result<Tensor> {
        let batch = t.dims1().context("t must be [B]")?;
        let (tokens, layout) = self.tokens(x, batch)?;
        if layout.dense && trace.is_on() {
            // Upstream's `rope_phases` buffer as [cos p0, sin p0, cos p1, ...] per token.
            let (n, pairs, _) = layout.rope.dims3()?;
            let phases = layout.rope.reshape((n, 2 * pairs))?;
            trace.record("rope_phases.real_imag", || Ok(phases.clone()))?;
        }
        if let Condition::Tokens(kv) = cond {
            kv.check_batch(batch)?;
        }
        let dtype = self.input_layer.weight().dtype();
        let h = self.input_layer.forward(&tokens.to_dtype(dtype)?)?;
        trace.record(&layout.name("input_layer"), || layout.trace_view(&h))?;
        let t_emb = self.timestep_embedding(t)?;
        trace.record("t_embedder", || Ok(t_emb.clone()))?;
        let m = self.adaln.forward(&t_emb.silu()?)?;
        trace.record("adaLN_modulation", || Ok(m.clone()))?;
        let kv = match cond {
            Condition::Tokens(kv) => Some(*kv),
            Condition::Zero => None,
        };
        let out = self.blocks_and_out(h, &m, kv, None, &layout, trace)?;
        self.untokens(x, &out)
    }

    /// The two forwards of a guided sampler step as one: the `B` samples of `x` at times `t [B]`
    /// with the condition `cond` (B samples) and with the zero condition, as a batch of `2B`
    /// whose cross-attention runs on the conditioned rows only. Returns `(conditioned, zero)`,
    /// each what [`FlowDit::forward`] returns for its condition; per-token arithmetic is that of
    /// the two forwards, so only the GEMMs' reduction order may differ (by the row count).
    pub fn forward_guided(
        &self,
        x: &FlowInput,
        t: &Tensor,
        cond: &CondKv,
    ) -> Result<(Tensor, Tensor)> {
        let batch = t.dims1().context("t must be [B]")?;
        let (tokens, layout) = self.tokens(x, batch)?;
        cond.check_batch(batch)?;
        let layout = self.guided_layout(&layout)?;
        let dtype = self.input_layer.weight().dtype();
        // Row-wise up to the blocks: computed once and repeated for the second half.
        let h = self.input_layer.forward(&tokens.to_dtype(dtype)?)?;
        let rows = h.dim(0)?;
        let h = Tensor::cat(&[&h, &h], 0)?;
        let m = self.adaln.forward(&self.timestep_embedding(t)?.silu()?)?;
        let m = Tensor::cat(&[&m, &m], 0)?;
        let out = self.blocks_and_out(h, &m, Some(cond), Some(rows), &layout, &mut Trace::off())?;
        Ok((
            self.untokens(x, &out.narrow(0, 0, rows)?)?,
            self.untokens(x, &out.narrow(0, rows, rows)?)?,
        ))
    }

    /// The blocks, final norm and output layer over `h [T, C]` with modulation `m [B, 6C]`;
    /// `guided_rows`: a guided batch whose first rows take `kv`, the rest the zero condition.
    fn blocks_and_out(
        &self,
        mut h: Tensor,
        m: &Tensor,
        kv: Option<&CondKv>,
        guided_rows: Option<usize>,
        layout: &TokenLayout,
        trace: &mut Trace,
    ) -> Result<Tensor> {
        let (heads, head_dim) = (self.cfg.heads(), self.cfg.head_dim());
        for i in 0..self.cfg.num_blocks {
            let blk = self.block_at(i)?;
            let deferred;
            let cross = match kv {
                Some(kv) => {
                    let pair = match &kv.store {
                        KvStore::PerBlock(per_block) => &per_block[i],
                        KvStore::Deferred(flat) => {
                            deferred = blk.cond_kv(flat, heads, head_dim)?;
                            &deferred
                        }
                    };
                    match guided_rows {
                        Some(rows) => BlockCross::Guided {
                            kv: pair,
                            offsets: &kv.offsets,
                            rows,
                        },
                        None => BlockCross::Tokens(pair, &kv.offsets),
                    }
                }
                None => BlockCross::Zero,
            };
            h = self.block(&blk, &h, m, cross, layout, &format!("blocks.{i}"), trace)?;
        }
        let h = layer_norm(&h, None, 1e-5)?;
        let out = self.out_layer.forward(&h)?;
        trace.record(&layout.name("out_layer"), || layout.trace_view(&out))?;
        Ok(out)
    }

    /// The output rows `[T, out]` in the input's layout: `[B, out, R, R, R]` for dense input.
    fn untokens(&self, x: &FlowInput, out: &Tensor) -> Result<Tensor> {
        match x {
            FlowInput::Dense(x) => {
                let (b, _, r0, r1, r2) = x.dims5()?;
                Ok(out
                    .reshape((b, r0, r1, r2, self.cfg.out_channels))?
                    .permute((0, 4, 1, 2, 3))?
                    .contiguous()?)
            }
            FlowInput::Sparse { .. } => Ok(out.clone()),
        }
    }

    /// `layout`'s samples twice (offsets continued, RoPE table repeated), kept while `layout`'s
    /// table is the current one.
    fn guided_layout(&self, layout: &TokenLayout) -> Result<TokenLayout> {
        let key = layout.rope.id();
        if let Ok(cache) = self.guided_cache.lock() {
            if let Some((k, guided)) = cache.as_ref() {
                if *k == key {
                    return Ok(guided.clone());
                }
            }
        }
        let rows = *layout.offsets.last().context("empty token layout")?;
        let mut offsets = layout.offsets.clone();
        offsets.extend(layout.offsets[1..].iter().map(|o| o + rows));
        let guided = TokenLayout {
            offsets,
            rope: Tensor::cat(&[&layout.rope, &layout.rope], 0)?,
            dense: layout.dense,
        };
        if let Ok(mut cache) = self.guided_cache.lock() {
            *cache = Some((key, guided.clone()));
        }
        Ok(guided)
    }

    fn cached_layout(&self, key: &LayoutKey) -> Option<TokenLayout> {
        let cache = self.layout_cache.lock().ok()?;
        cache
            .as_ref()
            .filter(|(k, _)| k == key)
            .map(|(_, layout)| layout.clone())
    }

    fn keep_layout(&self, key: LayoutKey, layout: TokenLayout) -> TokenLayout {
        if let Ok(mut cache) = self.layout_cache.lock() {
            *cache = Some((key, layout.clone()));
        }
        layout
    }

    /// Flattens the input to `[T, C]`; offsets and RoPE tables come from the kept layout when
    /// the grid or coordinates are those of the last call.
    fn tokens(&self, x: &FlowInput, batch: usize) -> Result<(Tensor, TokenLayout)> {
        let hd = self.cfg.head_dim();
        let theta = self.cfg.rope_freq.map_or(10000.0, |f| f.1);
        match x {
            FlowInput::Dense(x) => {
                let (b, c, r0, r1, r2) =
                    x.dims5().context("dense input must be [B, C, X, Y, Z]")?;
                if b != batch || c != self.cfg.in_channels {
                    bail!(
                        "dense input {:?}: expected [{batch}, {}, X, Y, Z]",
                        x.dims(),
                        self.cfg.in_channels
                    );
                }
                let n = r0 * r1 * r2;
                let tokens = x.permute((0, 2, 3, 4, 1))?.reshape((b * n, c))?;
                let key = LayoutKey::Dense([b, r0, r1, r2]);
                if let Some(layout) = self.cached_layout(&key) {
                    return Ok((tokens, layout));
                }
                let mut xyz = Vec::with_capacity(b * n);
                for _ in 0..b {
                    for i in 0..r0 as i32 {
                        for j in 0..r1 as i32 {
                            for k in 0..r2 as i32 {
                                xyz.push([i, j, k]);
                            }
                        }
                    }
                }
                let (cos, sin) = rope_tables_3d(&xyz, hd, theta, x.device())?;
                let layout = TokenLayout {
                    offsets: (0..=b).map(|i| i * n).collect(),
                    rope: rope_table(&cos, &sin)?,
                    dense: true,
                };
                Ok((tokens, self.keep_layout(key, layout)))
            }
            FlowInput::Sparse {
                feats,
                coords,
                concat_cond,
            } => {
                let (n, c) = feats.dims2().context("sparse feats must be [T, C]")?;
                let tokens = match concat_cond {
                    Some(cc) => {
                        if cc.dim(0)? != n {
                            bail!(
                                "concat_cond {:?} has another token count than feats {:?}",
                                cc.dims(),
                                feats.dims()
                            );
                        }
                        Tensor::cat(&[*feats, cc], 1)?
                    }
                    None => (*feats).clone(),
                };
                if tokens.dim(1)? != self.cfg.in_channels {
                    bail!(
                        "input has {} channels ({c} + concat), the model takes {}",
                        tokens.dim(1)?,
                        self.cfg.in_channels
                    );
                }
                let layout = self.sparse_layout(coords, n, batch, Some(feats.dims()))?;
                Ok((tokens, layout))
            }
        }
    }

    /// Builds and keeps the token layout (offsets, RoPE table) of sparse `coords [T, 4]` for
    /// `batch` samples now, so that no forward of a sampling run on these coordinates reads
    /// them back from the device (the first would otherwise wait for the GPU there).
    pub fn prepare_sparse_layout(&self, coords: &Tensor, batch: usize) -> Result<()> {
        let n = coords.dim(0).context("coords must be [T, 4]")?;
        self.sparse_layout(coords, n, batch, None)?;
        Ok(())
    }

    /// The layout of `n` sparse tokens on `coords` (`feats`' dims, if any, are named in errors), kept across
    /// calls: the same coordinates come back at every sampler step, so they are read to the
    /// host and the RoPE table built once per coordinate tensor, not per forward.
    fn sparse_layout(
        &self,
        coords: &Tensor,
        n: usize,
        batch: usize,
        feats: Option<&[usize]>,
    ) -> Result<TokenLayout> {
        let hd = self.cfg.head_dim();
        let theta = self.cfg.rope_freq.map_or(10000.0, |f| f.1);
        let key = LayoutKey::Sparse {
            coords: coords.id(),
            rows: n,
            batch,
        };
        if let Some(layout) = self.cached_layout(&key) {
            return Ok(layout);
        }
        let coords_v: Vec<Vec<i32>> = coords
            .to_device(&Device::Cpu)?
            .to_dtype(DType::I32)?
            .to_vec2()
            .context("coords must be [T, 4] integers")?;
        if coords_v.len() != n || coords_v.iter().any(|r| r.len() != 4) {
            match feats {
                Some(feats) => bail!(
                    "coords {:?} do not match feats {feats:?} (need [{n}, 4])",
                    coords.dims(),
                ),
                None => bail!("coords {:?} must be [T, 4]", coords.dims()),
            }
        }
        let offsets = batch_offsets(&coords_v, batch)?;
        let xyz: Vec<[i32; 3]> = coords_v.iter().map(|r| [r[1], r[2], r[3]]).collect();
        // On the model's device, where the tokens are.
        let device = self.input_layer.weight().device();
        let (cos, sin) = rope_tables_3d(&xyz, hd, theta, device)?;
        let layout = TokenLayout {
            offsets,
            rope: rope_table(&cos, &sin)?,
            dense: false,
        };
        Ok(self.keep_layout(key, layout))
    }

    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        blk: &Block,
        x: &Tensor,
        m: &Tensor,
        cross: BlockCross,
        layout: &TokenLayout,
        prefix: &str,
        trace: &mut Trace,
    ) -> Result<Tensor> {
        let c = self.cfg.model_channels;
        let (h_, d) = (self.cfg.heads(), self.cfg.head_dim());
        let n = x.dim(0)?;
        // [B, 6C] added in the model's dtype as upstream does, then cast to f32 once: the norm
        // and gate kernels read (shift, scale) pairs and gates as f32 views of it, in upstream's
        // chunk order (shift, scale, gate of the attention, then of the MLP).
        let b = m.dim(0)?;
        let modulation = m
            .broadcast_add(&blk.modulation.unsqueeze(0)?)?
            .to_dtype(DType::F32)?
            .reshape((b, 6, c))?;
        let msa = modulation.narrow(1, 0, 2)?;
        let gate_msa = modulation.narrow(1, 2, 1)?.squeeze(1)?;
        let mlp_pair = modulation.narrow(1, 3, 2)?;
        let gate_mlp = modulation.narrow(1, 5, 1)?.squeeze(1)?;
        let name = |m: &str| layout.name(&format!("{prefix}.{m}"));

        // Self-attention.
        // norm1 + modulation in one op; the trace (off in production) recomputes the plain norm.
        trace.record(&name("norm1"), || {
            layout.trace_view(&layer_norm(x, None, 1e-6)?)
        })?;
        let h = layer_norm_modulate_prepared(x, &self.plain_norm, &msa, &layout.offsets, 1e-6)?;
        let qkv = blk.self_attn.to_qkv.forward(&h)?.reshape((n, 3, h_, d))?;
        let q = qkv.narrow(1, 0, 1)?.squeeze(1)?;
        let k = qkv.narrow(1, 1, 1)?.squeeze(1)?;
        let v = qkv.narrow(1, 2, 1)?.squeeze(1)?;
        // q/k RMS norm (when the model has it) and RoPE in one op each.
        let (gq, gk) = match (&blk.self_attn.q_gamma, &blk.self_attn.k_gamma) {
            (Some(gq), Some(gk)) => (Some(gq), Some(gk)),
            _ => (None, None),
        };
        let q = rms_norm_rope(&q, gq, &layout.rope)?;
        let k = rms_norm_rope(&k, gk, &layout.rope)?;
        trace.record(&name("self_attn.rope.0"), || Ok(q.clone()))?;
        trace.record(&name("self_attn.rope.1"), || Ok(k.clone()))?;
        let scale = 1.0 / (d as f32).sqrt();
        let a = varlen_attention(&q, &k, &v, &layout.offsets, &layout.offsets, scale)?;
        let a = blk.self_attn.to_out.forward(&a.reshape((n, c))?)?;
        trace.record(&name("self_attn"), || layout.trace_view(&a))?;
        let x = gated_residual(x, &a, &gate_msa, &layout.offsets)?;

        // Cross-attention (no modulation, no gate): `x + to_out(attention)`, the residual added
        // in the projection's epilogue (the trace, off in production, recomputes the branch).
        let h = blk.norm2.forward(&x)?;
        trace.record(&name("norm2"), || layout.trace_view(&h))?;
        let to_out = &blk.cross_attn.to_out;
        // The zero condition's output is one row for every token: added as a bias.
        let zero_row = &blk.cross_attn.zero_cond_out;
        let x = match cross {
            BlockCross::Tokens((k, v), kv_offsets) => {
                let a = self.cross_attend(blk, &h, k, v, &layout.offsets, kv_offsets)?;
                trace.record(&name("cross_attn"), || {
                    layout.trace_view(&to_out.forward(&a)?)
                })?;
                to_out.forward_residual(&a, &x)?
            }
            BlockCross::Zero => {
                trace.record(&name("cross_attn"), || {
                    layout.trace_view(&zero_row.broadcast_as((n, c))?.contiguous()?)
                })?;
                bias_act(&x, &zero_row.squeeze(0)?, Activation::None)?
            }
            // Guided batches are never traced (`forward_guided`).
            BlockCross::Guided {
                kv: (k, v),
                offsets: kv_offsets,
                rows,
            } => {
                let q_offsets = &layout.offsets[..kv_offsets.len()];
                let a =
                    self.cross_attend(blk, &h.narrow(0, 0, rows)?, k, v, q_offsets, kv_offsets)?;
                let pos = to_out.forward_residual(&a, &x.narrow(0, 0, rows)?)?;
                let neg = bias_act(
                    &x.narrow(0, rows, n - rows)?,
                    &zero_row.squeeze(0)?,
                    Activation::None,
                )?;
                Tensor::cat(&[pos, neg], 0)?
            }
        };

        // MLP.
        let h =
            layer_norm_modulate_prepared(&x, &self.plain_norm, &mlp_pair, &layout.offsets, 1e-6)?;
        let mlp = |rows: &Tensor| -> candle_core::Result<Tensor> {
            blk.mlp_out
                .forward(&blk.mlp_in.forward_act(rows, Activation::GeluTanh)?)
        };
        let h = match self.blocks {
            Blocks::Streamed(_) if n > STREAMED_MLP_ROWS => {
                let chunks = (0..n)
                    .step_by(STREAMED_MLP_ROWS)
                    .map(|r| mlp(&h.narrow(0, r, STREAMED_MLP_ROWS.min(n - r))?))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::cat(&chunks, 0)?
            }
            _ => mlp(&h)?,
        };
        trace.record(&name("mlp"), || layout.trace_view(&h))?;
        let x = gated_residual(&x, &h, &gate_mlp, &layout.offsets)?;
        trace.record(&layout.name(prefix), || layout.trace_view(&x))?;
        Ok(x)
    }
}

impl FlowDit {
    /// The cross-attention of the normalised rows `h [rows, C]` (samples at `q_offsets`) to
    /// `k`, `v` (samples at `kv_offsets`), before `to_out`: `[rows, C]`.
    fn cross_attend(
        &self,
        blk: &Block,
        h: &Tensor,
        k: &Tensor,
        v: &Tensor,
        q_offsets: &[usize],
        kv_offsets: &[usize],
    ) -> Result<Tensor> {
        let (c, heads, d) = (
            self.cfg.model_channels,
            self.cfg.heads(),
            self.cfg.head_dim(),
        );
        let rows = h.dim(0)?;
        let mut q = blk.cross_attn.to_q.forward(h)?.reshape((rows, heads, d))?;
        if let Some(g) = &blk.cross_attn.q_gamma {
            q = rms_norm_rope(&q, Some(g), &self.plain_rotation)?;
        }
        let scale = 1.0 / (d as f32).sqrt();
        let a = varlen_attention(&q, k, v, q_offsets, kv_offsets, scale)?;
        Ok(a.reshape((rows, c))?)
    }
}

impl CondKv {
    /// Errors unless the condition has `batch` samples.
    fn check_batch(&self, batch: usize) -> Result<()> {
        if self.offsets.len() != batch + 1 {
            bail!(
                "condition has {} samples, t has {batch}",
                self.offsets.len() - 1
            );
        }
        Ok(())
    }
}

/// Offsets of each sample's rows; rows must be grouped by batch index in increasing order.
fn batch_offsets(coords: &[Vec<i32>], batch: usize) -> Result<Vec<usize>> {
    let mut offsets = vec![0usize; batch + 1];
    let mut prev = 0i32;
    for (row, c) in coords.iter().enumerate() {
        let b = c[0];
        if b < 0 || b as usize >= batch {
            bail!("coords row {row}: batch index {b} outside 0..{batch}");
        }
        if b < prev {
            bail!("coords row {row}: batch index {b} after {prev}; rows must be grouped by sample");
        }
        if c[1..].iter().any(|&v| v < 0) {
            bail!("coords row {row}: negative voxel coordinate {:?}", &c[1..]);
        }
        prev = b;
        offsets[b as usize + 1] = row + 1;
    }
    for b in 1..=batch {
        offsets[b] = offsets[b].max(offsets[b - 1]);
    }
    Ok(offsets)
}
