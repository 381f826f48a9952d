//! BiRefNet's sizes, read from the checkpoint itself: the released configuration is hard-coded in
//! upstream's `birefnet.py`, and Hugging Face's `config.json` carries nothing architectural, so
//! every width comes from a weight shape (the tiny test models shrink widths that are literals
//! upstream, e.g. the 64-channel decoder blocks and the 256-channel ASPP branches).

use std::collections::HashMap;

use anyhow::{bail, Result};

use crate::weights::{RembgModel, TensorInfo};

/// How `dec_ipt_split` stacks the image tiles on the channel axis. Same weights, different
/// function (the logits differ by ~0.8 between the two on the test model), so it is a
/// per-checkpoint setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PatchOrder {
    /// RMBG-2.0's `get_patches_batch` (upstream BiRefNet up to 2024-11-05): tile columns outer,
    /// rows inner, colour innermost: `channel = (col·rows + row)·3 + c`.
    Rmbg,
    /// BiRefNet's later einops split `b c (hg h) (wg w) -> b (c hg wg) h w`:
    /// `channel = c·rows·cols + row·cols + col`.
    Einops,
}

impl PatchOrder {
    /// The order the checkpoint's own Hugging Face remote code (`birefnet.py`, which
    /// `AutoModelForImageSegmentation.from_pretrained(repo, trust_remote_code=True)` runs, as
    /// TRELLIS.2 does) applies.
    ///
    /// - `briaai/RMBG-2.0`: `Decoder.get_patches_batch`, the RMBG order (tests/fixtures/golden/README.md, semantic
    ///   detail 1; public verbatim copy: Sanster/IOPaint `iopaint/plugins/briarmbg2.py`).
    /// - `ZhengPeng7/BiRefNet`: the einops order. Its remote code follows the GitHub code, where
    ///   ZhengPeng7/BiRefNet@5198d3f (2024-11-05, "Upgrade patches merging and split methods to
    ///   einops version") replaced `get_patches_batch` with
    ///   `image2patches(x, patch_ref, transformation='b c (hg h) (wg w) -> b (c hg wg) h w')`
    ///   (still so at HEAD 25cb930, `models/birefnet.py` lines 212-286). That the Hugging Face
    ///   copy runs the same pattern is visible in public user code loading
    ///   `from_pretrained("ZhengPeng7/BiRefNet", trust_remote_code=True)`, which quotes einops'
    ///   error "Error while processing rearrange-reduction pattern \"b c (hg h) (wg w) -> b (c hg
    ///   wg) h w\"", and a public BiRefNet_lite export script notes that repo's `image2patches`
    ///   has used `(c hg wg)` since 2024-11. A folder's `config.json` may still override it
    ///   (`"patch_split_order"`), e.g. for weights trained before that change.
    pub fn for_model(model: RembgModel) -> Self {
        match model {
            RembgModel::Rmbg2 => Self::Rmbg,
            RembgModel::BiRefNet => Self::Einops,
        }
    }
}

/// Sizes of the Swin backbone.
#[derive(Clone, Debug, PartialEq)]
pub struct SwinConfig {
    pub in_chans: usize,
    pub patch_size: usize,
    pub embed_dim: usize,
    pub depths: Vec<usize>,
    pub num_heads: Vec<usize>,
    pub window_size: usize,
    /// MLP hidden width per stage.
    pub mlp_hidden: Vec<usize>,
}

impl SwinConfig {
    /// Channels of stage `i`: `embed_dim · 2^i`.
    pub fn stage_channels(&self, i: usize) -> usize {
        self.embed_dim << i
    }

    /// Total down-sampling of the last stage (32 for patch 4 and four stages).
    pub fn stride(&self) -> usize {
        self.patch_size << (self.depths.len().saturating_sub(1))
    }
}

/// Sizes of the whole network.
#[derive(Clone, Debug, PartialEq)]
pub struct BiRefNetConfig {
    pub swin: SwinConfig,
    /// Inner width of every `BasicDecBlk` (`dec_channels_inter='fixed'`: 64 released).
    pub dec_inter: usize,
    /// Width of each ASPPDeformable branch (256 released).
    pub aspp_planes: usize,
    /// Kernel sizes of the `aspp_deforms` branches ([1, 3, 7] released).
    pub aspp_kernels: Vec<usize>,
    /// Inner width of the image-patch blocks `ipt_blk*` (64 released).
    pub ipt_inter: usize,
    /// Output widths of `ipt_blk5, 4, 3, 2, 1`.
    pub ipt_out: [usize; 5],
    /// Width of the gradient-attention convs `gdt_convs_*` (16).
    pub gdt_channels: usize,
    pub patch_order: PatchOrder,
}

/// Stages the backbone must have: the decoder has one level per stage.
pub const DECODER_LEVELS: usize = 4;

impl BiRefNetConfig {
    /// Reads the sizes from the tensor shapes of a checkpoint.
    pub fn from_tensors(tensors: &[TensorInfo], patch_order: PatchOrder) -> Result<Self> {
        let shapes: HashMap<&str, &[usize]> = tensors
            .iter()
            .map(|t| (t.name.as_str(), t.shape.as_slice()))
            .collect();
        let shape = |name: &str, rank: usize| -> Result<&[usize]> {
            match shapes.get(name) {
                Some(s) if s.len() == rank => Ok(s),
                Some(s) => bail!("`{name}` has shape {s:?}, expected rank {rank}"),
                None => bail!("no tensor `{name}`: not a BiRefNet (Swin) checkpoint"),
            }
        };
        let pe = shape("bb.patch_embed.proj.weight", 4)?;
        let (embed_dim, in_chans, patch_size) = (pe[0], pe[1], pe[2]);
        let mut depths = Vec::new();
        while shapes
            .contains_key(format!("bb.layers.{}.blocks.0.norm1.weight", depths.len()).as_str())
        {
            let i = depths.len();
            let mut d = 0;
            while shapes.contains_key(format!("bb.layers.{i}.blocks.{d}.norm1.weight").as_str()) {
                d += 1;
            }
            depths.push(d);
        }
        if depths.len() != DECODER_LEVELS {
            bail!(
                "the backbone has {} stages; BiRefNet's decoder needs {DECODER_LEVELS}",
                depths.len()
            );
        }
        let mut num_heads = Vec::new();
        let mut mlp_hidden = Vec::new();
        for i in 0..depths.len() {
            let b = format!("bb.layers.{i}.blocks.0");
            num_heads.push(shape(&format!("{b}.attn.relative_position_bias_table"), 2)?[1]);
            mlp_hidden.push(shape(&format!("{b}.mlp.fc1.weight"), 2)?[0]);
        }
        let n = shape("bb.layers.0.blocks.0.attn.relative_position_index", 2)?[0];
        let window_size = (n as f64).sqrt().round() as usize;
        if window_size * window_size != n || window_size < 2 {
            bail!("relative_position_index is {n}×{n}: not a square window");
        }
        let aspp = "squeeze_module.0.dec_att";
        let mut aspp_kernels = Vec::new();
        while let Some(s) = shapes.get(
            format!(
                "{aspp}.aspp_deforms.{}.atrous_conv.regular_conv.weight",
                aspp_kernels.len()
            )
            .as_str(),
        ) {
            aspp_kernels.push(s[2]);
        }
        let ipt_out = [5, 4, 3, 2, 1].map(|k| {
            shapes
                .get(format!("decoder.ipt_blk{k}.conv_out.weight").as_str())
                .map_or(0, |s| s[0])
        });
        if ipt_out.contains(&0) {
            bail!("no tensor `decoder.ipt_blk*.conv_out.weight`: a BiRefNet without dec_ipt is not supported");
        }
        Ok(Self {
            swin: SwinConfig {
                in_chans,
                patch_size,
                embed_dim,
                depths,
                num_heads,
                window_size,
                mlp_hidden,
            },
            dec_inter: shape("squeeze_module.0.conv_in.weight", 4)?[0],
            aspp_planes: shape(&format!("{aspp}.aspp1.atrous_conv.regular_conv.weight"), 4)?[0],
            aspp_kernels,
            ipt_inter: shape("decoder.ipt_blk5.conv1.weight", 4)?[0],
            ipt_out,
            gdt_channels: shape("decoder.gdt_convs_4.0.weight", 4)?[0],
            patch_order,
        })
    }

    /// Channels of the multi-scale feature `x_i` (i = 1..=4): full and half scale concatenated.
    pub fn lateral_channels(&self, i: usize) -> usize {
        2 * self.swin.stage_channels(i - 1)
    }

    /// Tile grid of the image-patch input at decoder level `k` (5 = squeeze level, 1 = full
    /// resolution): the feature stride at that level.
    pub fn patch_grid(&self, k: usize) -> usize {
        match k {
            1 => 1,
            k => self.swin.patch_size << (k - 2),
        }
    }
}
