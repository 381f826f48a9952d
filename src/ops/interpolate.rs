//! `F.interpolate(x, size, mode='bilinear', align_corners=True)`: the only resize inside
//! BiRefNet, used for up- and down-sampling alike (pointwise, no antialiasing).
//!
//! PyTorch computes the scale `(in−1)/(out−1)` and every source coordinate in f32; doing the
//! same keeps the result within ~1e-6 of it (f64 coordinates drift by up to 1e-4 px at 1024).
//! Built from `index_select` and broadcast arithmetic, so it runs on every backend.

use candle_core::{bail, DType, Device, Result, Tensor};

/// For each output index: the two source indices and the weight of the second.
fn taps(input: usize, output: usize) -> (Vec<u32>, Vec<u32>, Vec<f32>) {
    let scale = if output > 1 {
        (input as f32 - 1.0) / (output as f32 - 1.0)
    } else {
        0.0
    };
    let mut lo = Vec::with_capacity(output);
    let mut hi = Vec::with_capacity(output);
    let mut w = Vec::with_capacity(output);
    for dst in 0..output {
        let src = scale * dst as f32;
        let i0 = (src as usize).min(input - 1);
        let i1 = if i0 + 1 < input { i0 + 1 } else { i0 };
        lo.push(i0 as u32);
        hi.push(i1 as u32);
        w.push(src - i0 as f32);
    }
    (lo, hi, w)
}

/// Interpolates axis `dim` (2 = rows, 3 = columns) of a `[B, C, H, W]` tensor to `size`.
fn resize_axis(x: &Tensor, dim: usize, size: usize, device: &Device) -> Result<Tensor> {
    let input = x.dim(dim)?;
    if input == size {
        return Ok(x.clone());
    }
    let (lo, hi, w) = taps(input, size);
    let lo = x.index_select(&Tensor::new(lo, device)?, dim)?;
    let hi = x.index_select(&Tensor::new(hi, device)?, dim)?;
    let mut shape = [1usize; 4];
    shape[dim] = size;
    let w1 = Tensor::from_vec(w, &shape[..], device)?.to_dtype(x.dtype())?;
    let w0 = w1.affine(-1.0, 1.0)?;
    lo.broadcast_mul(&w0)? + hi.broadcast_mul(&w1)?
}

/// Bilinear resize with `align_corners=True` of `x [B, C, H, W]` to `[B, C, out_h, out_w]`.
pub fn interpolate_bilinear_aligned(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if (h == 0 || w == 0) && (out_h > 0 && out_w > 0) {
        bail!("interpolate: cannot resize an empty {h}×{w} map to {out_h}×{out_w}");
    }
    if out_h == 0 || out_w == 0 {
        let (b, c, _, _) = x.dims4()?;
        return Tensor::zeros((b, c, out_h, out_w), x.dtype(), x.device());
    }
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let device = x.device().clone();
    let y = resize_axis(&x, 2, out_h, &device)?;
    resize_axis(&y, 3, out_w, &device)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corners_are_kept_and_midpoints_average() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[0f32, 2., 4., 6.], &dev)
            .unwrap()
            .reshape((1, 1, 2, 2))
            .unwrap();
        let y = interpolate_bilinear_aligned(&x, 3, 3).unwrap();
        let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v, vec![0., 1., 2., 2., 3., 4., 4., 5., 6.]);
    }

    #[test]
    fn one_pixel_output_samples_the_first_pixel() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[3f32, 9., 5., 7.], &dev)
            .unwrap()
            .reshape((1, 1, 2, 2))
            .unwrap();
        let y = interpolate_bilinear_aligned(&x, 1, 1).unwrap();
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![3.]);
    }
}
