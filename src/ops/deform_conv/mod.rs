//! Modulated deformable 2-D convolution (DCNv2) with `torchvision.ops.deform_conv2d` semantics,
//! the only non-standard layer of BiRefNet's decoder.
//!
//! For output pixel `(oy, ox)` and kernel tap `t = i·kw + j`, the input is sampled at
//! `y = oy·stride − pad + i·dil + offset[2t]`, `x = ox·stride − pad + j·dil + offset[2t+1]`
//! (dy first, tap-major) with bilinear interpolation in which every neighbour outside the image
//! contributes zero (no clamping, no padded copy of the input), multiplied by `mask[t]`, and the
//! result is contracted with `weight[o, c, i, j]`.
//!
//! The custom op is the sampling step ("modulated im2col"): it writes the column matrix
//! `[B, C·kh·kw, rows·Wo]` for a band of output rows; the contraction is an ordinary matmul.
//! Bands keep the column matrix bounded (a 7×7 tap over 64 channels at 256² would otherwise need
//! 0.8 GB). The CPU implementation is the reference GPU kernels are tested against: Metal
//! (kernels/metal/deform_conv.metal) and CUDA (kernels/cuda/deform_conv.cu) run the same sampling
//! on the GPU, so on those devices the whole deformable convolution stays there.

use std::ops::Range;

use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::ops::storage::f32_operands;
use crate::ops::vocab::DeformIm2ColArgs;

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "metal")]
mod metal;

/// Stride, padding and dilation of a deformable convolution, as `(y, x)` pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeformConvConfig {
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
}

impl Default for DeformConvConfig {
    fn default() -> Self {
        Self {
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
        }
    }
}

/// Upper bound on the number of f32 values of one band's column matrix (64 Mi = 256 MB).
const MAX_COLUMN_VALUES: usize = 64 << 20;

/// Geometry shared by the op and its wrapper.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    batch: usize,
    channels: usize,
    height: usize,
    width: usize,
    kh: usize,
    kw: usize,
    out_h: usize,
    out_w: usize,
    offset_groups: usize,
    cfg: DeformConvConfig,
}

impl Geometry {
    fn taps(&self) -> usize {
        self.kh * self.kw
    }

    /// The GPU kernels' argument struct for output rows `row_start .. row_start + rows` (the
    /// whole band; each dispatch sets its own element range).
    fn band_args(&self, row_start: usize, rows: usize) -> Result<DeformIm2ColArgs> {
        let u = |what: &str, v: usize| {
            u32::try_from(v).map_err(|_| {
                candle_core::Error::Msg(format!("deform_conv2d: {what} = {v} exceeds u32"))
            })
        };
        let columns = self.batch * self.channels * self.taps() * rows * self.out_w;
        let count = u("column elements of one band", columns)?;
        Ok(DeformIm2ColArgs {
            batch: u("batch", self.batch)?,
            channels: u("channels", self.channels)?,
            height: u("height", self.height)?,
            width: u("width", self.width)?,
            kh: u("kernel height", self.kh)?,
            kw: u("kernel width", self.kw)?,
            out_h: u("output height", self.out_h)?,
            out_w: u("output width", self.out_w)?,
            offset_groups: u("offset groups", self.offset_groups)?,
            stride_y: u("stride", self.cfg.stride.0)?,
            stride_x: u("stride", self.cfg.stride.1)?,
            pad_y: u("padding", self.cfg.padding.0)?,
            pad_x: u("padding", self.cfg.padding.1)?,
            dil_y: u("dilation", self.cfg.dilation.0)?,
            dil_x: u("dilation", self.cfg.dilation.1)?,
            row_start: u("row start", row_start)?,
            rows: u("rows", rows)?,
            first: 0,
            count,
        })
    }
}

/// The sampling step for output rows `row_start .. row_start + rows`.
struct ModulatedIm2Col {
    geo: Geometry,
    row_start: usize,
    rows: usize,
}

/// torchvision's `bilinear_interpolate`: zero outside `(-1, H) × (-1, W)`, and each of the four
/// neighbours that lies outside the image contributes zero.
fn sample(plane: &[f32], height: usize, width: usize, y: f32, x: f32) -> f32 {
    let (hf, wf) = (height as f32, width as f32);
    if y <= -1.0 || y >= hf || x <= -1.0 || x >= wf {
        return 0.0;
    }
    let y_low = y.floor();
    let x_low = x.floor();
    let (ly, lx) = (y - y_low, x - x_low);
    let (hy, hx) = (1.0 - ly, 1.0 - lx);
    let (y0, x0) = (y_low as i64, x_low as i64);
    let (y1, x1) = (y0 + 1, x0 + 1);
    let (h, w) = (height as i64, width as i64);
    let at = |yy: i64, xx: i64| -> f32 {
        if yy >= 0 && yy < h && xx >= 0 && xx < w {
            plane[yy as usize * width + xx as usize]
        } else {
            0.0
        }
    };
    hy * hx * at(y0, x0) + hy * lx * at(y0, x1) + ly * hx * at(y1, x0) + ly * lx * at(y1, x1)
}

impl CustomOp3 for ModulatedIm2Col {
    fn name(&self) -> &'static str {
        "modulated-deformable-im2col"
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
        let [input, offset, mask] = f32_operands(
            [(s1, l1), (s2, l2), (s3, l3)],
            "deform_conv2d",
            ["input", "offset", "mask"],
        )?;
        let g = self.geo;
        let taps = g.taps();
        let pix = self.rows * g.out_w;
        let out_plane = g.out_h * g.out_w;
        let in_plane = g.height * g.width;
        let channels_per_group = g.channels / g.offset_groups;
        let (sy, sx) = g.cfg.stride;
        let (py, px) = g.cfg.padding;
        let (dy, dx) = g.cfg.dilation;
        let mut cols = vec![0f32; g.batch * g.channels * taps * pix];
        if pix > 0 {
            // One column row per (batch, channel, tap): independent, so they run in parallel.
            cols.par_chunks_mut(pix).enumerate().for_each(|(r, row)| {
                let t = r % taps;
                let c = (r / taps) % g.channels;
                let b = r / (taps * g.channels);
                let (i, j) = (t / g.kw, t % g.kw);
                let group = c / channels_per_group;
                let plane = &input[(b * g.channels + c) * in_plane..][..in_plane];
                let off_base = (b * g.offset_groups + group) * 2 * taps;
                let off_y = &offset[(off_base + 2 * t) * out_plane..][..out_plane];
                let off_x = &offset[(off_base + 2 * t + 1) * out_plane..][..out_plane];
                let m =
                    &mask[((b * g.offset_groups + group) * taps + t) * out_plane..][..out_plane];
                for (k, v) in row.iter_mut().enumerate() {
                    let oy = self.row_start + k / g.out_w;
                    let ox = k % g.out_w;
                    let q = oy * g.out_w + ox;
                    let y = (oy * sy + i * dy) as f32 - py as f32 + off_y[q];
                    let x = (ox * sx + j * dx) as f32 - px as f32 + off_x[q];
                    *v = m[q] * sample(plane, g.height, g.width, y, x);
                }
            });
        }
        Ok((
            CpuStorage::F32(cols),
            Shape::from((g.batch, g.channels * taps, pix)),
        ))
    }

    /// kernels/metal/deform_conv.metal: the same sampling, f32, one thread per column element.
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
        let band = self.geo.band_args(self.row_start, self.rows)?;
        metal::forward(s1, l1, s2, l2, s3, l3, band)
    }

    /// kernels/cuda/deform_conv.cu: the same sampling, f32, one thread per column element.
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
        let band = self.geo.band_args(self.row_start, self.rows)?;
        cuda::deform_im2col(s1, l1, s2, l2, s3, l3, band)
    }
}

/// Modulated deformable convolution, `torchvision.ops.deform_conv2d(input, offset, weight,
/// bias, stride, padding, dilation, mask)`.
///
/// Shapes: `input [B, C, H, W]`, `weight [O, C, kh, kw]` (one weight group),
/// `offset [B, 2·G·kh·kw, Ho, Wo]` and `mask [B, G·kh·kw, Ho, Wo]` for `G` offset groups
/// (channel `c` uses group `c / (C/G)`), `bias [O]`; returns `[B, O, Ho, Wo]` in `input`'s dtype
/// (computed in f32).
pub fn deform_conv2d(
    input: &Tensor,
    offset: &Tensor,
    mask: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    cfg: DeformConvConfig,
) -> Result<Tensor> {
    let geo = geometry(input, offset, mask, weight, cfg)?;
    let dtype = input.dtype();
    let f32 = |t: &Tensor| t.to_dtype(DType::F32)?.contiguous();
    let (input, offset, mask) = (f32(input)?, f32(offset)?, f32(mask)?);
    let o = weight.dim(0)?;
    let k = geo.channels * geo.taps();
    let weight = f32(weight)?.reshape((1, o, k))?;
    let band = (MAX_COLUMN_VALUES / (geo.batch * k * geo.out_w).max(1)).clamp(1, geo.out_h.max(1));
    let mut parts = Vec::new();
    let mut row_start = 0;
    while row_start < geo.out_h {
        let rows = band.min(geo.out_h - row_start);
        let op = ModulatedIm2Col {
            geo,
            row_start,
            rows,
        };
        let cols = input.apply_op3_no_bwd(&offset, &mask, &op)?;
        parts.push(weight.broadcast_matmul(&cols)?);
        row_start += rows;
    }
    let out = if parts.is_empty() {
        Tensor::zeros((geo.batch, o, 0), DType::F32, input.device())?
    } else {
        Tensor::cat(&parts, 2)?
    };
    let mut out = out.reshape((geo.batch, o, geo.out_h, geo.out_w))?;
    if let Some(b) = bias {
        if b.dims() != [o] {
            bail!("deform_conv2d: bias {:?} must be [{o}]", b.dims());
        }
        out = out.broadcast_add(&f32(b)?.reshape((1, o, 1, 1))?)?;
    }
    out.to_dtype(dtype)
}

/// The geometry of the operands with `rows` checked against its output rows.
fn band_geometry(
    input: &Tensor,
    offset: &Tensor,
    mask: &Tensor,
    kernel: (usize, usize),
    cfg: DeformConvConfig,
    rows: &Range<usize>,
) -> Result<Geometry> {
    let geo = geometry_for_kernel(input, offset, mask, kernel, cfg)?;
    if rows.start > rows.end || rows.end > geo.out_h {
        bail!(
            "deform_conv2d: rows {rows:?} outside the {} output rows",
            geo.out_h
        );
    }
    Ok(geo)
}

/// The sampling step alone, on `input`'s device: the column matrix `[B, C·kh·kw, rows·Wo]` of
/// output rows `rows` (what [`deform_conv2d`] multiplies by the weight), f32 operands. Shapes as
/// in [`deform_conv2d`] with a `kernel = (kh, kw)` weight. For tests of the GPU kernels.
pub fn modulated_im2col(
    input: &Tensor,
    offset: &Tensor,
    mask: &Tensor,
    kernel: (usize, usize),
    cfg: DeformConvConfig,
    rows: Range<usize>,
) -> Result<Tensor> {
    let geo = band_geometry(input, offset, mask, kernel, cfg, &rows)?;
    let op = ModulatedIm2Col {
        geo,
        row_start: rows.start,
        rows: rows.len(),
    };
    input.apply_op3_no_bwd(offset, mask, &op)
}

/// The GPU kernels' arguments for [`modulated_im2col`] of the same operands (whole band).
pub fn modulated_im2col_args(
    input: &Tensor,
    offset: &Tensor,
    mask: &Tensor,
    kernel: (usize, usize),
    cfg: DeformConvConfig,
    rows: Range<usize>,
) -> Result<DeformIm2ColArgs> {
    let geo = band_geometry(input, offset, mask, kernel, cfg, &rows)?;
    geo.band_args(rows.start, rows.len())
}

/// Validates every shape against torchvision's rules and returns the geometry.
fn geometry(
    input: &Tensor,
    offset: &Tensor,
    mask: &Tensor,
    weight: &Tensor,
    cfg: DeformConvConfig,
) -> Result<Geometry> {
    let channels = input.dims4()?.1;
    let (_, wc, kh, kw) = weight.dims4()?;
    if wc != channels {
        bail!(
            "deform_conv2d: weight {:?} expects {wc} input channels, input {:?} has {channels} \
             (grouped weights are not supported)",
            weight.dims(),
            input.dims()
        );
    }
    geometry_for_kernel(input, offset, mask, (kh, kw), cfg)
}

fn geometry_for_kernel(
    input: &Tensor,
    offset: &Tensor,
    mask: &Tensor,
    (kh, kw): (usize, usize),
    cfg: DeformConvConfig,
) -> Result<Geometry> {
    let (batch, channels, height, width) = input.dims4()?;
    let (sy, sx) = cfg.stride;
    let (dy, dx) = cfg.dilation;
    if sy == 0 || sx == 0 || dy == 0 || dx == 0 || kh == 0 || kw == 0 {
        bail!("deform_conv2d: stride, dilation and kernel size must be positive ({cfg:?})");
    }
    let out_len = |size: usize, pad: usize, dil: usize, k: usize, stride: usize| {
        let span = dil * (k - 1) + 1;
        (size + 2 * pad)
            .checked_sub(span)
            .map(|v| v / stride + 1)
            .unwrap_or(0)
    };
    let out_h = out_len(height, cfg.padding.0, dy, kh, sy);
    let out_w = out_len(width, cfg.padding.1, dx, kw, sx);
    let taps = kh * kw;
    let (ob, oc, oh, ow) = offset.dims4()?;
    if ob != batch || oh != out_h || ow != out_w || oc == 0 || oc % (2 * taps) != 0 {
        bail!(
            "deform_conv2d: offset {:?} must be [{batch}, 2·G·{taps}, {out_h}, {out_w}]",
            offset.dims()
        );
    }
    let offset_groups = oc / (2 * taps);
    if channels % offset_groups != 0 {
        bail!("deform_conv2d: {channels} channels do not split into {offset_groups} offset groups");
    }
    if mask.dims() != [batch, offset_groups * taps, out_h, out_w] {
        bail!(
            "deform_conv2d: mask {:?} must be [{batch}, {}, {out_h}, {out_w}]",
            mask.dims(),
            offset_groups * taps
        );
    }
    Ok(Geometry {
        batch,
        channels,
        height,
        width,
        kh,
        kw,
        out_h,
        out_w,
        offset_groups,
        cfg,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn integer_offset_moves_the_sample_and_outside_is_zero() {
        let dev = Device::Cpu;
        // 1×1 kernel, input 1×1×2×3 = [[1,2,3],[4,5,6]]; offset (dy=1, dx=1) reads (y+1, x+1).
        let input = Tensor::new(&[1f32, 2., 3., 4., 5., 6.], &dev)
            .unwrap()
            .reshape((1, 1, 2, 3))
            .unwrap();
        let offset = Tensor::ones((1, 2, 2, 3), DType::F32, &dev).unwrap();
        let mask = Tensor::ones((1, 1, 2, 3), DType::F32, &dev).unwrap();
        let weight = Tensor::ones((1, 1, 1, 1), DType::F32, &dev).unwrap();
        let out = deform_conv2d(&input, &offset, &mask, &weight, None, Default::default())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(out, vec![5., 6., 0., 0., 0., 0.]);
    }

    #[test]
    fn half_pixel_offset_past_the_edge_keeps_only_the_inside_neighbour() {
        // x = 2.5 in a 3-wide row: the neighbour at 3 is outside and contributes 0, not row[2].
        assert_eq!(sample(&[1., 2., 4.], 1, 3, 0.0, 2.5), 2.0);
        assert_eq!(sample(&[1., 2., 4.], 1, 3, 0.0, -0.5), 0.5);
        assert_eq!(sample(&[1., 2., 4.], 1, 3, 0.0, -1.0), 0.0);
        assert_eq!(sample(&[1., 2., 4.], 1, 3, 0.0, 3.0), 0.0);
    }

    #[test]
    fn bad_offset_shape_is_an_error() {
        let dev = Device::Cpu;
        let input = Tensor::zeros((1, 2, 4, 4), DType::F32, &dev).unwrap();
        let weight = Tensor::zeros((3, 2, 3, 3), DType::F32, &dev).unwrap();
        let offset = Tensor::zeros((1, 17, 2, 2), DType::F32, &dev).unwrap();
        let mask = Tensor::zeros((1, 9, 2, 2), DType::F32, &dev).unwrap();
        let err = deform_conv2d(&input, &offset, &mask, &weight, None, Default::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("offset"), "{err}");
    }
}
