//! The convolutional blocks of BiRefNet's decoder: eval-mode BatchNorm, the modulated
//! deformable conv, `ASPPDeformable`, `BasicDecBlk`, the image-patch `SimpleConvs`.

use anyhow::Result;
use candle_core::{Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};

use crate::models::trace::Trace;
use crate::ops::{deform_conv2d, interpolate_bilinear_aligned, DeformConvConfig};

/// BatchNorm's epsilon (PyTorch default).
const BN_EPS: f64 = 1e-5;

/// A `k × k` convolution with "same" padding `k / 2`.
pub fn conv(cin: usize, cout: usize, k: usize, bias: bool, vb: VarBuilder) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: k / 2,
        ..Default::default()
    };
    Ok(if bias {
        candle_nn::conv2d(cin, cout, k, cfg, vb)?
    } else {
        candle_nn::conv2d_no_bias(cin, cout, k, cfg, vb)?
    })
}

/// Eval-mode `BatchNorm2d`, folded as PyTorch's inference kernel does:
/// `x · (w / √(var + eps)) + (b − mean · w / √(var + eps))`.
pub struct BatchNorm {
    scale: Tensor,
    shift: Tensor,
}

impl BatchNorm {
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get(channels, "weight")?;
        let bias = vb.get(channels, "bias")?;
        let mean = vb.get(channels, "running_mean")?;
        let var = vb.get(channels, "running_var")?;
        // A training counter; read so that loading stays strict, never used.
        vb.get((), "num_batches_tracked")?;
        let scale = (weight / (var + BN_EPS)?.sqrt()?)?;
        let shift = (bias - (mean * &scale)?)?;
        Ok(Self {
            scale: scale.reshape((1, channels, 1, 1))?,
            shift: shift.reshape((1, channels, 1, 1))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.broadcast_mul(&self.scale)?.broadcast_add(&self.shift)?)
    }
}

/// `DeformableConv2d`: offsets and a `2·sigmoid` modulation predicted by two plain convs, then
/// `deform_conv2d` with the regular conv's weight (no bias).
struct DeformableConv2d {
    offset_conv: Conv2d,
    modulator_conv: Conv2d,
    weight: Tensor,
    padding: usize,
    /// Module path, for tracing.
    path: String,
}

impl DeformableConv2d {
    fn new(cin: usize, cout: usize, k: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            offset_conv: conv(cin, 2 * k * k, k, true, vb.pp("offset_conv"))?,
            modulator_conv: conv(cin, k * k, k, true, vb.pp("modulator_conv"))?,
            weight: vb.get((cout, cin, k, k), "regular_conv.weight")?,
            padding: k / 2,
            path: vb.prefix(),
        })
    }

    fn forward(&self, x: &Tensor, trace: &mut Trace) -> Result<Tensor> {
        let offset = self.offset_conv.forward(x)?;
        let mask = (candle_nn::ops::sigmoid(&self.modulator_conv.forward(x)?)? * 2.0)?;
        let cfg = DeformConvConfig {
            padding: (self.padding, self.padding),
            ..Default::default()
        };
        let out = deform_conv2d(x, &offset, &mask, &self.weight, None, cfg)?;
        for (what, t) in [
            ("input", x),
            ("offset", &offset),
            ("mask", &mask),
            ("output", &out),
        ] {
            trace.record(&format!("{}.{what}", self.path), || Ok(t.clone()))?;
        }
        Ok(out)
    }
}

/// `_ASPPModuleDeformable`: deformable conv → BN → ReLU.
struct AsppBranch {
    atrous_conv: DeformableConv2d,
    bn: BatchNorm,
}

impl AsppBranch {
    fn new(cin: usize, planes: usize, k: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            atrous_conv: DeformableConv2d::new(cin, planes, k, vb.pp("atrous_conv"))?,
            bn: BatchNorm::new(planes, vb.pp("bn"))?,
        })
    }

    fn forward(&self, x: &Tensor, trace: &mut Trace) -> Result<Tensor> {
        Ok(self
            .bn
            .forward(&self.atrous_conv.forward(x, trace)?)?
            .relu()?)
    }
}

/// `ASPPDeformable`: a 1×1 branch, deformable branches (1, 3, 7), and a global-average branch
/// broadcast back to the map, concatenated → 1×1 conv → BN → ReLU (dropout is identity).
struct AsppDeformable {
    aspp1: AsppBranch,
    aspp_deforms: Vec<AsppBranch>,
    pool_conv: Conv2d,
    pool_bn: BatchNorm,
    conv1: Conv2d,
    bn1: BatchNorm,
}

impl AsppDeformable {
    fn new(channels: usize, planes: usize, kernels: &[usize], vb: VarBuilder) -> Result<Self> {
        let aspp_deforms = kernels
            .iter()
            .enumerate()
            .map(|(i, &k)| AsppBranch::new(channels, planes, k, vb.pp(format!("aspp_deforms.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            aspp1: AsppBranch::new(channels, planes, 1, vb.pp("aspp1"))?,
            aspp_deforms,
            pool_conv: conv(channels, planes, 1, false, vb.pp("global_avg_pool.1"))?,
            pool_bn: BatchNorm::new(planes, vb.pp("global_avg_pool.2"))?,
            conv1: conv(
                planes * (2 + kernels.len()),
                channels,
                1,
                false,
                vb.pp("conv1"),
            )?,
            bn1: BatchNorm::new(channels, vb.pp("bn1"))?,
        })
    }

    fn forward(&self, x: &Tensor, trace: &mut Trace) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let mut branches = vec![self.aspp1.forward(x, trace)?];
        for b in &self.aspp_deforms {
            branches.push(b.forward(x, trace)?);
        }
        let pooled = x.mean_keepdim(3)?.mean_keepdim(2)?;
        let pooled = self
            .pool_bn
            .forward(&self.pool_conv.forward(&pooled)?)?
            .relu()?;
        branches.push(interpolate_bilinear_aligned(&pooled, h, w)?);
        let cat = Tensor::cat(&branches, 1)?;
        Ok(self.bn1.forward(&self.conv1.forward(&cat)?)?.relu()?)
    }
}

/// `BasicDecBlk`: conv3×3 → BN → ReLU → ASPPDeformable → conv3×3 → BN (no final ReLU).
pub struct BasicDecBlk {
    conv_in: Conv2d,
    bn_in: BatchNorm,
    dec_att: AsppDeformable,
    conv_out: Conv2d,
    bn_out: BatchNorm,
    path: String,
}

impl BasicDecBlk {
    pub fn new(
        cin: usize,
        cout: usize,
        inter: usize,
        planes: usize,
        kernels: &[usize],
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            conv_in: conv(cin, inter, 3, true, vb.pp("conv_in"))?,
            bn_in: BatchNorm::new(inter, vb.pp("bn_in"))?,
            dec_att: AsppDeformable::new(inter, planes, kernels, vb.pp("dec_att"))?,
            conv_out: conv(inter, cout, 3, true, vb.pp("conv_out"))?,
            bn_out: BatchNorm::new(cout, vb.pp("bn_out"))?,
            path: vb.prefix(),
        })
    }

    pub fn forward(&self, x: &Tensor, trace: &mut Trace) -> Result<Tensor> {
        trace.record(&format!("{}.in", self.path), || Ok(x.clone()))?;
        let h = self.bn_in.forward(&self.conv_in.forward(x)?)?.relu()?;
        trace.record(&format!("{}.dec_att.in", self.path), || Ok(h.clone()))?;
        let h = self.dec_att.forward(&h, trace)?;
        trace.record(&format!("{}.dec_att.out", self.path), || Ok(h.clone()))?;
        let out = self.bn_out.forward(&self.conv_out.forward(&h)?)?;
        trace.record(&format!("{}.out", self.path), || Ok(out.clone()))?;
        Ok(out)
    }
}

/// `SimpleConvs` (the `ipt_blk*`): two 3×3 convs with no activation between them.
pub struct SimpleConvs {
    conv1: Conv2d,
    conv_out: Conv2d,
}

impl SimpleConvs {
    pub fn new(cin: usize, cout: usize, inter: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv1: conv(cin, inter, 3, true, vb.pp("conv1"))?,
            conv_out: conv(inter, cout, 3, true, vb.pp("conv_out"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.conv_out.forward(&self.conv1.forward(x)?)?)
    }
}
