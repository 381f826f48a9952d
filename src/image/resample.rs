//! Pillow's fixed-point resamplers (LANCZOS, BILINEAR, BICUBIC), reproduced exactly.

use super::{check_len, RgbImage, RgbaImage};

/// Images that [`resize_lanczos`] can resize exactly like Pillow's
/// `Image.resize(size, Image.LANCZOS)`.
pub trait LanczosResize: Sized {
    fn resize_lanczos(&self, width: u32, height: u32) -> Self;
}

/// Pillow-exact `Image.resize((width, height), Image.LANCZOS)` for [`RgbImage`] and
/// [`RgbaImage`]. A zero width or height gives an empty image (Pillow raises instead).
pub fn resize_lanczos<I: LanczosResize>(img: &I, width: u32, height: u32) -> I {
    img.resize_lanczos(width, height)
}

impl LanczosResize for RgbImage {
    fn resize_lanczos(&self, width: u32, height: u32) -> RgbImage {
        resample_rgb(self, width, height, LANCZOS)
    }
}

/// Pillow's two-pass resample of an RGB image with `filter`.
fn resample_rgb(img: &RgbImage, width: u32, height: u32, filter: Filter) -> RgbImage {
    check_len(img.data.len(), img.pixel_count(), 3);
    let data = resample::<3>(&img.data, img.width, img.height, width, height, filter);
    RgbImage {
        width,
        height,
        data,
    }
}

impl LanczosResize for RgbaImage {
    /// Pillow resizes RGBA in premultiplied form ("RGBa") so that the colour of transparent
    /// pixels does not bleed into visible ones, then divides the alpha back out. Both
    /// conversions round in their own way, and both are reproduced here.
    fn resize_lanczos(&self, width: u32, height: u32) -> RgbaImage {
        check_len(self.data.len(), self.pixel_count(), 4);
        if (width, height) == (self.width, self.height) {
            // Pillow returns a plain copy before any mode conversion.
            return self.clone();
        }
        let premultiplied = premultiply_rgba_u8(&self.data);
        let mut data = resample::<4>(
            &premultiplied,
            self.width,
            self.height,
            width,
            height,
            LANCZOS,
        );
        unpremultiply_rgba_u8(&mut data);
        RgbaImage {
            width,
            height,
            data,
        }
    }
}

/// Pillow-exact `Image.resize((width, height), Image.BILINEAR)` of an RGB image: what
/// torchvision's `Resize` does to a PIL image (antialiased when shrinking, like Pillow).
pub fn resize_bilinear(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    resample_rgb(img, width, height, BILINEAR)
}

/// Pillow-exact `Image.resize((width, height))` (default BICUBIC) of an 8-bit grey (mode "L")
/// image given as `width·height` row-major bytes, e.g. a mask.
pub fn resize_gray_bicubic(
    data: &[u8],
    (src_w, src_h): (u32, u32),
    (width, height): (u32, u32),
) -> Vec<u8> {
    check_len(data.len(), src_w as usize * src_h as usize, 1);
    resample::<1>(data, src_w, src_h, width, height, BICUBIC)
}

/// `a*b/255` rounded, in Pillow's integer form (exact for all u8 inputs).
fn muldiv255(a: u8, b: u8) -> u8 {
    let t = a as u32 * b as u32 + 128;
    (((t >> 8) + t) >> 8) as u8
}

/// RGBA → premultiplied RGBa (Pillow's conversion: colour = muldiv255(colour, alpha)).
fn premultiply_rgba_u8(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    for px in out.chunks_exact_mut(4) {
        let a = px[3];
        for c in &mut px[..3] {
            *c = muldiv255(*c, a);
        }
    }
    out
}

/// RGBa → RGBA the way Pillow does it: alpha 0 and 255 keep the colour, otherwise
/// `min(255, 255*c / a)` with truncating integer division (verified against the goldens).
fn unpremultiply_rgba_u8(data: &mut [u8]) {
    for px in data.chunks_exact_mut(4) {
        let a = px[3] as u32;
        if a == 0 || a == 255 {
            continue;
        }
        for c in &mut px[..3] {
            *c = ((255 * *c as u32) / a).min(255) as u8;
        }
    }
}

/// Pillow's fixed-point precision for 8-bit resampling: 32 bits minus 8 for the sample, minus
/// 2 so that sums of positive and negative taps cannot overflow an i32.
const PRECISION_BITS: u32 = 22;
/// Rounding offset added to every accumulator before the final shift.
const HALF: i32 = 1 << (PRECISION_BITS - 1);
/// LANCZOS (a = 3) support radius in source pixels at scale 1.
const LANCZOS_SUPPORT: f64 = 3.0;

/// A Pillow resampling filter: its support radius at scale 1 and its kernel.
#[derive(Clone, Copy)]
struct Filter {
    support: f64,
    kernel: fn(f64) -> f64,
}

const LANCZOS: Filter = Filter {
    support: LANCZOS_SUPPORT,
    kernel: lanczos,
};
const BILINEAR: Filter = Filter {
    support: 1.0,
    kernel: triangle,
};
const BICUBIC: Filter = Filter {
    support: 2.0,
    kernel: keys_cubic,
};

/// Fixed-point filter taps for one axis: output index `i` reads source indices
/// `start[i] .. start[i] + count[i]` with weights `weights[offset[i] ..][..count[i]]`.
struct AxisCoeffs {
    spans: Vec<Span>,
    weights: Vec<i32>,
}

#[derive(Clone, Copy)]
struct Span {
    start: usize,
    count: usize,
    offset: usize,
}

impl AxisCoeffs {
    fn taps(&self, span: &Span) -> &[i32] {
        &self.weights[span.offset..span.offset + span.count]
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let t = x * std::f64::consts::PI;
        t.sin() / t
    }
}

fn lanczos(x: f64) -> f64 {
    if (-LANCZOS_SUPPORT..LANCZOS_SUPPORT).contains(&x) {
        sinc(x) * sinc(x / LANCZOS_SUPPORT)
    } else {
        0.0
    }
}

/// Pillow's BILINEAR kernel (a triangle; stretched like the others when shrinking).
fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Pillow's BICUBIC kernel: Keys' cubic convolution with a = −0.5.
fn keys_cubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Float weights → Pillow's fixed point, rounding half away from zero.
fn to_fixed(w: f64) -> i32 {
    let scaled = w * (1u32 << PRECISION_BITS) as f64;
    // `as` truncates toward zero, like C's (int) cast.
    if w < 0.0 {
        (scaled - 0.5) as i32
    } else {
        (scaled + 0.5) as i32
    }
}

/// Taps of a `filter` resize of one axis from `in_size` to `out_size` samples, computed in f64
/// in the same order as Pillow so the fixed-point weights come out identical.
fn axis_coeffs(in_size: u32, out_size: u32, filter: Filter) -> AxisCoeffs {
    let scale = in_size as f64 / out_size as f64;
    // When shrinking, the filter is stretched so that it covers `scale` source pixels.
    let filterscale = scale.max(1.0);
    let support = filter.support * filterscale;
    let inv_filterscale = 1.0 / filterscale;
    let mut spans = Vec::with_capacity(out_size as usize);
    let mut weights = Vec::new();
    let mut float_taps = Vec::new();
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // Truncation toward zero (C cast) before clamping is part of the exact semantics.
        let start = ((center - support + 0.5) as i64).max(0);
        let end = ((center + support + 0.5) as i64).min(in_size as i64);
        float_taps.clear();
        let mut sum = 0.0;
        for x in start..end {
            let w = (filter.kernel)((x as f64 - center + 0.5) * inv_filterscale);
            float_taps.push(w);
            sum += w;
        }
        let offset = weights.len();
        for &w in &float_taps {
            let normalised = if sum != 0.0 { w / sum } else { w };
            weights.push(to_fixed(normalised));
        }
        spans.push(Span {
            start: start as usize,
            count: float_taps.len(),
            offset,
        });
    }
    AxisCoeffs { spans, weights }
}

/// Fixed-point accumulator → u8: shift out the precision, clamp to 0..=255.
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Separable resize of interleaved `CH`-channel 8-bit pixels, Pillow style: horizontal pass
/// first (only over the source rows the vertical pass will read), rounded to 8 bit, then the
/// vertical pass. A pass is skipped when its axis keeps its size.
fn resample<const CH: usize>(
    src: &[u8],
    w: u32,
    h: u32,
    out_w: u32,
    out_h: u32,
    filter: Filter,
) -> Vec<u8> {
    if (out_w, out_h) == (w, h) {
        return src.to_vec();
    }
    if out_w == 0 || out_h == 0 {
        return Vec::new();
    }
    let vertical = (out_h != h).then(|| axis_coeffs(h, out_h, filter));
    let horizontal = (out_w != w).then(|| axis_coeffs(w, out_w, filter));
    match (horizontal, vertical) {
        (Some(hc), Some(vc)) => {
            let first = vc.spans.first().map_or(0, |s| s.start);
            let last = vc.spans.last().map_or(0, |s| s.start + s.count);
            let tmp = resample_rows::<CH>(src, w as usize, first..last, &hc);
            resample_columns::<CH>(&tmp, out_w as usize, first, &vc)
        }
        (Some(hc), None) => resample_rows::<CH>(src, w as usize, 0..h as usize, &hc),
        (None, Some(vc)) => resample_columns::<CH>(src, w as usize, 0, &vc),
        (None, None) => src.to_vec(),
    }
}

/// Horizontal pass over source rows `rows`; returns `rows.len()` rows of the new width.
fn resample_rows<const CH: usize>(
    src: &[u8],
    src_w: usize,
    rows: std::ops::Range<usize>,
    coeffs: &AxisCoeffs,
) -> Vec<u8> {
    let out_stride = coeffs.spans.len() * CH;
    let mut out = vec![0u8; rows.len() * out_stride];
    for (dst_row, y) in out.chunks_exact_mut(out_stride).zip(rows) {
        let src_row = &src[y * src_w * CH..(y + 1) * src_w * CH];
        for (dst_px, span) in dst_row.chunks_exact_mut(CH).zip(&coeffs.spans) {
            let window = &src_row[span.start * CH..(span.start + span.count) * CH];
            let mut acc = [HALF; CH];
            for (px, &k) in window.chunks_exact(CH).zip(coeffs.taps(span)) {
                for c in 0..CH {
                    acc[c] += px[c] as i32 * k;
                }
            }
            for c in 0..CH {
                dst_px[c] = clip8(acc[c]);
            }
        }
    }
    out
}

/// Vertical pass; `src` holds rows starting at source row `row_offset` (the horizontal pass
/// only produced the rows that are needed).
fn resample_columns<const CH: usize>(
    src: &[u8],
    w: usize,
    row_offset: usize,
    coeffs: &AxisCoeffs,
) -> Vec<u8> {
    let stride = w * CH;
    let mut out = vec![0u8; coeffs.spans.len() * stride];
    // Accumulating whole rows keeps memory access sequential; integer sums are exact, so the
    // order does not change the result.
    let mut acc = vec![0i32; stride];
    for (dst_row, span) in out.chunks_exact_mut(stride).zip(&coeffs.spans) {
        acc.fill(HALF);
        for (i, &k) in coeffs.taps(span).iter().enumerate() {
            let y = span.start + i - row_offset;
            let src_row = &src[y * stride..(y + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(src_row) {
                *a += p as i32 * k;
            }
        }
        for (d, &a) in dst_row.iter_mut().zip(&acc) {
            *d = clip8(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn muldiv255_is_rounded_product() {
        for a in 0..=255u32 {
            for b in 0..=255u32 {
                let exact = ((a * b) as f64 / 255.0).round() as u8;
                assert_eq!(muldiv255(a as u8, b as u8), exact, "{a}*{b}");
            }
        }
    }

    #[test]
    fn fixed_point_weights_sum_to_one() {
        for (i, o) in [(1338, 1024), (594, 512), (512, 594), (7, 3), (3, 7)] {
            let c = axis_coeffs(i, o, LANCZOS);
            for s in &c.spans {
                let sum: i64 = c.taps(s).iter().map(|&k| k as i64).sum();
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= s.count as i64,
                    "{i}->{o}"
                );
            }
        }
    }
}
