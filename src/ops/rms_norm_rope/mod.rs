//! The DiT's q/k RMS norm fused with its interleaved 3-D RoPE, per token `t` and head `h` of
//! `x [T, H, D]`: `y = x / max(‖x‖, 1e-12) · γ_h · √D` (F.normalize · γ · √D, when a γ is given),
//! then pairs `(y[2i], y[2i+1])` rotated by `(cos, sin)[t, i]`. One pass instead of the ~14 full
//! passes of the composed candle ops; f32 arithmetic, one rounding to `x`'s dtype.
//!
//! Operands of the custom op: x `[T,H,D]`, γ `[H,D]` f32, rotation table `[T,D/2,2]` f32
//! (cos; sin, from [`rope_table`]) or `[1,D/2,2]`, one rotation for every token (the identity
//! for a plain RMS norm). On CUDA x may be a strided view whose heads are contiguous (q and k
//! sliced out of a fused qkv projection): no copy is made first. The CPU forward is the
//! reference the Metal kernel (kernels/metal/norms.metal) is tested against.

use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use crate::ops::rope::rope_interleaved;
use crate::ops::storage::f32_operands;

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "metal")]
mod metal;

struct RmsNormRope {
    normalize: bool,
}

impl CustomOp3 for RmsNormRope {
    fn name(&self) -> &'static str {
        "rms-norm-rope"
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
        let op = "rms_norm_rope";
        let [x, g, r] = f32_operands(
            [(s1, l1), (s2, l2), (s3, l3)],
            op,
            ["input", "gamma", "rotation table"],
        )?;
        let (_, h, d) = l1.shape().dims3()?;
        let mut out = vec![0f32; x.len()];
        if d > 0 {
            let normalize = self.normalize;
            let sqrt_d = (d as f32).sqrt();
            out.par_chunks_mut(d)
                .zip(x.par_chunks(d))
                .enumerate()
                .for_each(|(row, (o, v))| {
                    let (t, head) = (row / h, row % h);
                    let gamma = &g[head * d..(head + 1) * d];
                    let rot = if r.len() == d {
                        r
                    } else {
                        &r[t * d..(t + 1) * d]
                    };
                    let f = if normalize {
                        sqrt_d / v.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12)
                    } else {
                        1.0
                    };
                    for i in 0..d / 2 {
                        let (y0, y1) = if normalize {
                            (
                                v[2 * i] * f * gamma[2 * i],
                                v[2 * i + 1] * f * gamma[2 * i + 1],
                            )
                        } else {
                            (v[2 * i], v[2 * i + 1])
                        };
                        let (c, s) = (rot[2 * i], rot[2 * i + 1]);
                        o[2 * i] = y0 * c - y1 * s;
                        o[2 * i + 1] = y0 * s + y1 * c;
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
        metal::rms_norm_rope((s1, l1), (s2, l2), (s3, l3), self.normalize)
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
        cuda::rms_norm_rope((s1, l1), (s2, l2), (s3, l3), self.normalize)
    }
}

/// `[T, D/2, 2]` (cos; sin) from the `cos, sin [T, D/2]` tables of `rope::rope_tables_3d`.
pub fn rope_table(cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    Tensor::stack(&[cos, sin], 2)?.to_dtype(DType::F32)
}

fn check(x: &Tensor, gamma: Option<&Tensor>, table: &Tensor) -> Result<(usize, usize, usize)> {
    let (t, h, d) = match x.dims() {
        &[t, h, d] if d % 2 == 0 => (t, h, d),
        dims => bail!("rms_norm_rope: x must be [T, H, D] with D even, got {dims:?}"),
    };
    if table.dims() != [t, d / 2, 2] && table.dims() != [1, d / 2, 2] {
        bail!(
            "rms_norm_rope: rotation table must be [{t} or 1, {}, 2] for x {:?}, got {:?}",
            d / 2,
            x.dims(),
            table.dims()
        );
    }
    if let Some(g) = gamma {
        if g.dims() != [h, d] {
            bail!(
                "rms_norm_rope: gamma must be [{h}, {d}], got {:?}",
                g.dims()
            );
        }
    }
    Ok((t, h, d))
}

/// RMS norm (when `gamma` is given) then RoPE of `x [T, H, D]` by `table [T or 1, D/2, 2]`, in
/// `x`'s dtype, one fused op on every device.
pub fn rms_norm_rope(x: &Tensor, gamma: Option<&Tensor>, table: &Tensor) -> Result<Tensor> {
    let (_, h, d) = check(x, gamma, table)?;
    let dev = x.device();
    let g = match gamma {
        Some(g) => g.to_dtype(DType::F32)?.contiguous()?,
        None => Tensor::ones((h, d), DType::F32, dev)?,
    };
    let dtype = x.dtype();
    let xin = if dev.is_cpu() {
        x.to_dtype(DType::F32)?
    } else {
        x.clone()
    };
    let op = RmsNormRope {
        normalize: gamma.is_some(),
    };
    let table = table.to_dtype(DType::F32)?;
    // The CUDA kernel takes any token stride as long as each token's H·D values are contiguous.
    let xin = if dev.is_cuda() && x.stride()[1..] == [d, 1] {
        xin
    } else {
        xin.contiguous()?
    };
    xin.apply_op3_no_bwd(&g, &table.contiguous()?, &op)?
        .to_dtype(dtype)
}

/// `F.normalize(x, dim=-1) · γ · sqrt(D)` over the head dim of `x [T, H, D]`, in `x`'s dtype:
/// [`rms_norm_rope`] with the identity rotation.
pub fn multi_head_rms_norm(x: &Tensor, gamma: &Tensor) -> Result<Tensor> {
    let identity = identity_rotation(x.dim(D::Minus1)?, x.device())?;
    rms_norm_rope(x, Some(gamma), &identity)
}

/// The one-row rotation table `[1, D/2, 2]` that rotates nothing (cos 1, sin 0): with it
/// [`rms_norm_rope`] is a plain RMS norm. Callers on a hot path build it once and keep it.
pub fn identity_rotation(head_dim: usize, device: &candle_core::Device) -> Result<Tensor> {
    Tensor::stack(
        &[
            Tensor::ones((1, head_dim / 2), DType::F32, device)?,
            Tensor::zeros((1, head_dim / 2), DType::F32, device)?,
        ],
        2,
    )
}

/// [`multi_head_rms_norm`] composed of candle ops in f32: the test reference.
pub fn multi_head_rms_norm_slow(x: &Tensor, gamma: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let d = x.dim(D::Minus1)?;
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12)?;
    let scaled_gamma = (gamma.to_dtype(DType::F32)? * (d as f64).sqrt())?;
    x.broadcast_div(&norm)?
        .broadcast_mul(&scaled_gamma)?
        .to_dtype(dtype)
}

/// The composed ops the DiT used before the fused op: [`multi_head_rms_norm`] then
/// `rope::rope_interleaved`. The test reference of [`rms_norm_rope`].
pub fn rms_norm_rope_slow(x: &Tensor, gamma: Option<&Tensor>, table: &Tensor) -> Result<Tensor> {
    let (t, _, d) = check(x, gamma, table)?;
    let table = table.broadcast_as((t, d / 2, 2))?;
    let x = match gamma {
        Some(g) => multi_head_rms_norm_slow(x, g)?,
        None => x.clone(),
    };
    let cos = table.narrow(2, 0, 1)?.squeeze(2)?;
    let sin = table.narrow(2, 1, 1)?.squeeze(2)?;
    rope_interleaved(&x, &cos, &sin)
}
