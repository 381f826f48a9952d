//! LayerNorm (optional affine) fused with the DiT's adaLN modulation, per sample `b`:
//! `y = (LN(x)·w + bias)·(1 + scale_b) + shift_b` over the channels of `x [T, C]`, where sample
//! `b` owns rows `offsets[b]..offsets[b+1]`. One pass over the activations instead of LayerNorm
//! then a broadcast multiply and add (each a full read and write of `[T, C]`). Two-pass f32
//! mean/variance like ops::layer_norm; the output is rounded once, to `x`'s dtype.
//!
//! Operands of the custom op: x `[T,C]`, affine `[2,C]` f32 (weight; bias), modulation
//! `[B,2,C]` f32 (shift; scale per sample). The CPU forward is the reference the Metal kernel
//! (kernels/metal/norms.metal) is tested against.

use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::ops::layer_norm::layer_norm;
use crate::ops::norm_params::NormAffine;
use crate::ops::sample_offsets::{check_offsets, sample_of_rows};
use crate::ops::storage::f32_operands;

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "metal")]
mod metal;

struct NormModulate {
    offsets: Vec<usize>,
    eps: f32,
}

impl CustomOp3 for NormModulate {
    fn name(&self) -> &'static str {
        "layer-norm-modulate"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = "layer_norm_modulate";
        let [x, a, m] = f32_operands(
            [(s1, l1), (s2, l2), (s3, l3)],
            op,
            ["input", "affine", "modulation"],
        )?;
        let (_, c) = l1.shape().dims2()?;
        let (w, bias) = a.split_at(c);
        let samples = sample_of_rows(&self.offsets);
        let eps = self.eps;
        let mut out = vec![0f32; x.len()];
        if c > 0 {
            out.par_chunks_mut(c)
                .zip(x.par_chunks(c))
                .zip(samples.par_iter())
                .for_each(|((o, v), &b)| {
                    let shift = &m[2 * b * c..(2 * b + 1) * c];
                    let scale = &m[(2 * b + 1) * c..(2 * b + 2) * c];
                    let mean = v.iter().sum::<f32>() / c as f32;
                    let var = v.iter().map(|&t| (t - mean) * (t - mean)).sum::<f32>() / c as f32;
                    let inv = 1.0 / (var + eps).sqrt();
                    for i in 0..c {
                        let n = (v[i] - mean) * inv * w[i] + bias[i];
                        o[i] = n * (1.0 + scale[i]) + shift[i];
                    }
                });
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    /// kernels/metal/norms.metal, tested against `cpu_fwd` in tests/metal_emu.rs.
    #[cfg(feature = "metal")]
    fn metal_fwd(
        &self,
        s1: &candle_core::MetalStorage,
        l1: &Layout,
        s2: &candle_core::MetalStorage,
        l2: &Layout,
        s3: &candle_core::MetalStorage,
        l3: &Layout,
    ) -> Result<(candle_core::MetalStorage, Shape)> {
        metal::norm_modulate((s1, l1), (s2, l2), (s3, l3), &self.offsets, self.eps)
    }

    /// kernels/cuda/norms.cu (the same arithmetic), tested against `cpu_fwd` in
    /// tests/cuda_kernels.rs.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::norm_modulate((s1, l1), (s2, l2), (s3, l3), &self.offsets, self.eps)
    }
}

/// adaLN modulation of one LayerNorm: per-sample `shift` and `scale` `[B, C]` over rows split by
/// `offsets` (`B+1` entries from 0 to T).
pub struct Modulation<'a> {
    pub shift: &'a Tensor,
    pub scale: &'a Tensor,
    pub offsets: &'a [usize],
}

fn check(x: &Tensor, affine: Option<(&Tensor, &Tensor)>, m: &Modulation) -> Result<(usize, usize)> {
    let (t, c) = match x.dims() {
        &[t, c] => (t, c),
        d => bail!("layer_norm_modulate: x must be [T, C], got {d:?}"),
    };
    let b = check_offsets("layer_norm_modulate", m.offsets, t)?;
    if m.shift.dims() != [b, c] || m.scale.dims() != [b, c] {
        bail!(
            "layer_norm_modulate: shift {:?} and scale {:?} must be [{b}, {c}]",
            m.shift.dims(),
            m.scale.dims()
        );
    }
    if let Some((w, bias)) = affine {
        if w.dims() != [c] || bias.dims() != [c] {
            bail!(
                "layer_norm_modulate: weight {:?} and bias {:?} must be [{c}]",
                w.dims(),
                bias.dims()
            );
        }
    }
    Ok((t, c))
}

/// `(LN(x)·w + bias)·(1 + scale_b) + shift_b` for `x [T, C]` (see the module docs), in `x`'s
/// dtype. CPU: f32 throughout. Metal and CUDA: one kernel reading `x` in its own dtype.
pub fn layer_norm_modulate(
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    m: &Modulation,
    eps: f64,
) -> Result<Tensor> {
    let (_, c) = check(x, affine, m)?;
    let affine = match affine {
        Some((w, b)) => NormAffine::new(w, b)?,
        None => NormAffine::identity(c, x.device())?,
    };
    let pairs = Tensor::stack(&[m.shift, m.scale], 1)?.to_dtype(DType::F32)?;
    layer_norm_modulate_prepared(x, &affine, &pairs, m.offsets, eps)
}

/// [`layer_norm_modulate`] with its operands prepared: `affine` built once per layer, and
/// `pairs` `[B, 2, C]` f32 holding (shift; scale) of each sample — e.g. a `[B, 6, C]` f32 adaLN
/// modulation narrowed to one of its (shift, scale) pairs, no copy when `B = 1`.
pub fn layer_norm_modulate_prepared(
    x: &Tensor,
    affine: &NormAffine,
    pairs: &Tensor,
    offsets: &[usize],
    eps: f64,
) -> Result<Tensor> {
    let (t, c) = match x.dims() {
        &[t, c] => (t, c),
        d => bail!("layer_norm_modulate: x must be [T, C], got {d:?}"),
    };
    let b = check_offsets("layer_norm_modulate", offsets, t)?;
    if pairs.dims() != [b, 2, c] || pairs.dtype() != DType::F32 {
        bail!(
            "layer_norm_modulate: modulation {:?} {:?} must be [{b}, 2, {c}] f32",
            pairs.dims(),
            pairs.dtype()
        );
    }
    if affine.channels() != c {
        bail!(
            "layer_norm_modulate: affine has {} channels, x has {c}",
            affine.channels()
        );
    }
    let dtype = x.dtype();
    let xin = if x.device().is_cpu() {
        x.to_dtype(DType::F32)?
    } else {
        x.clone()
    };
    let op = NormModulate {
        offsets: offsets.to_vec(),
        eps: eps as f32,
    };
    xin.contiguous()?
        .apply_op3_no_bwd(affine.stacked(), &pairs.contiguous()?, &op)?
        .to_dtype(dtype)
}

/// The composed formula the DiT used before the fused op: ops::layer_norm, then per sample
/// `h·(1 + scale) + shift` in f32. The test reference of [`layer_norm_modulate`].
pub fn layer_norm_modulate_slow(
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    m: &Modulation,
    eps: f64,
) -> Result<Tensor> {
    check(x, affine, m)?;
    let h = layer_norm(&x.to_dtype(DType::F32)?, affine, eps)?;
    let mut parts = Vec::new();
    for (b, w) in m.offsets.windows(2).enumerate() {
        if w[1] > w[0] {
            let seg = h.narrow(0, w[0], w[1] - w[0])?;
            let scale = (m.scale.narrow(0, b, 1)?.to_dtype(DType::F32)? + 1.0)?;
            let shift = m.shift.narrow(0, b, 1)?.to_dtype(DType::F32)?;
            parts.push(seg.broadcast_mul(&scale)?.broadcast_add(&shift)?);
        }
    }
    let out = if parts.is_empty() {
        h
    } else {
        Tensor::cat(&parts, 0)?
    };
    out.to_dtype(x.dtype())
}
