//! 3-D rotary position embedding of the flow transformers: interleaved pairs `(x[2i], x[2i+1])`
//! rotated as complex numbers by phases built from integer voxel coordinates. (DINOv3 uses a
//! different, rotate-half pairing; it lives with that model.)

use candle_core::{DType, Device, Result, Tensor, D};

/// Per-token rotation tables `cos, sin [T, head_dim/2]` (f32) for voxel coordinates
/// `xyz [T, 3]`: pair `j` of axis `a` gets angle `coord_a · θ^(−j/f)` with `f = head_dim/2/3`
/// frequencies per axis, axes in x, y, z order; pairs left over (head_dim/2 not divisible by 3)
/// get angle 0 and pass unrotated.
pub fn rope_tables_3d(
    xyz: &[[i32; 3]],
    head_dim: usize,
    theta: f32,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    if !head_dim.is_multiple_of(2) || head_dim < 6 {
        candle_core::bail!("3-D RoPE needs an even head dim of at least 6, got {head_dim}");
    }
    let pairs = head_dim / 2;
    let freq_dim = pairs / 3;
    // As upstream: arange(f) / f in f32, then 1 / θ^that.
    let freqs: Vec<f32> = (0..freq_dim)
        .map(|j| 1.0 / theta.powf(j as f32 / freq_dim as f32))
        .collect();
    let mut cos = vec![1f32; xyz.len() * pairs];
    let mut sin = vec![0f32; xyz.len() * pairs];
    for (t, c) in xyz.iter().enumerate() {
        for (axis, &coord) in c.iter().enumerate() {
            for (j, f) in freqs.iter().enumerate() {
                let angle = coord as f32 * f;
                let k = t * pairs + axis * freq_dim + j;
                cos[k] = angle.cos();
                sin[k] = angle.sin();
            }
        }
    }
    Ok((
        Tensor::from_vec(cos, (xyz.len(), pairs), device)?,
        Tensor::from_vec(sin, (xyz.len(), pairs), device)?,
    ))
}

/// Rotates `x [T, H, D]` by the tables of [`rope_tables_3d`], in f32, returning `x`'s dtype.
pub fn rope_interleaved(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (t, h, d) = x.dims3()?;
    if cos.dims() != [t, d / 2] || sin.dims() != cos.dims() {
        candle_core::bail!(
            "rope: x {:?} needs tables [{t}, {}], got cos {:?} sin {:?}",
            x.dims(),
            d / 2,
            cos.dims(),
            sin.dims()
        );
    }
    let dtype = x.dtype();
    let pairs = x.to_dtype(DType::F32)?.reshape((t, h, d / 2, 2))?;
    let re = pairs.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?;
    let im = pairs.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?;
    let cos = cos.unsqueeze(1)?;
    let sin = sin.unsqueeze(1)?;
    let out_re = (re.broadcast_mul(&cos)? - im.broadcast_mul(&sin)?)?;
    let out_im = (re.broadcast_mul(&sin)? + im.broadcast_mul(&cos)?)?;
    Tensor::stack(&[out_re, out_im], D::Minus1)?
        .reshape((t, h, d))?
        .to_dtype(dtype)
}
