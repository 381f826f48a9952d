//! Input images: loading, and upstream TRELLIS.2 `preprocess_image` reproduced bit for bit.
//!
//! Upstream prepares the conditioning image with Pillow and numpy:
//!
//! 1. if the image has a real alpha channel (mode RGBA and not all alpha 255), it is used as
//!    the object mask, otherwise a background remover (BiRefNet) produces one;
//! 2. images larger than 1024 px are first shrunk with `Image.resize(.., LANCZOS)`;
//! 3. a square around the pixels with alpha > 0.8·255 is cropped (Pillow's `crop`, which rounds
//!    the box half-to-even and fills outside the image with transparent black);
//! 4. the colour is premultiplied by alpha in float32 and truncated back to 8 bit;
//! 5. the DINOv3 feature extractor resizes that to 512² or 1024² (LANCZOS again) and applies the
//!    ImageNet normalisation.
//!
//! Every rounding step matters for matching the reference features, so this module implements
//! Pillow's fixed-point LANCZOS resampler and numpy's float32 arithmetic exactly (the goldens in
//! `tests/fixtures/golden/preprocess` check it). The code is written from the algorithm's
//! description, not copied from Pillow.
//!
//! Pixel buffers are this module's own [`RgbaImage`] / [`RgbImage`] (8 bit, row-major,
//! interleaved, no row padding) rather than the `image` crate's types, so callers do not need
//! that crate; `data.len()` must equal `width * height * channels`.

use std::borrow::Cow;
use std::fmt;
use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use ::image::codecs::png::PngEncoder;
use ::image::{DynamicImage, ExtendedColorType, ImageEncoder, ImageFormat, ImageReader};
use anyhow::{anyhow, bail, Result};

/// Upstream shrinks inputs whose longest side exceeds this before cropping.
pub const MAX_INPUT_SIDE: u32 = 1024;

/// Upstream keeps pixels with `alpha > 0.8 * 255` for the bounding box; for u8 alpha that is
/// `alpha > 204`.
pub const ALPHA_THRESHOLD: u8 = 204;

/// ImageNet normalisation used by the DINOv3 feature extractor (float32, as torchvision does).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// See [`IMAGENET_MEAN`].
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

// ---------------------------------------------------------------------------------------------
// Pixel buffers
// ---------------------------------------------------------------------------------------------

/// 8-bit RGBA image, row-major, 4 interleaved bytes per pixel, `data.len() == width*height*4`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbaImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// 8-bit RGB image, row-major, 3 interleaved bytes per pixel, `data.len() == width*height*3`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl RgbaImage {
    /// Pixels with alpha 255 (what upstream gets from `convert("RGBA")` of an RGB image).
    pub fn from_rgb(rgb: &RgbImage) -> RgbaImage {
        Self::from_rgb_and_alpha(rgb, &vec![255; rgb.pixel_count()])
            .expect("alpha length equals pixel count by construction")
    }

    /// Attach an external alpha mask (one byte per pixel, row-major), like Pillow's
    /// `putalpha`. This is how a background remover's mask is combined with its input.
    pub fn from_rgb_and_alpha(rgb: &RgbImage, alpha: &[u8]) -> Result<RgbaImage> {
        if alpha.len() != rgb.pixel_count() {
            bail!(
                "alpha mask has {} values but the {}x{} image has {} pixels",
                alpha.len(),
                rgb.width,
                rgb.height,
                rgb.pixel_count()
            );
        }
        let mut data = Vec::with_capacity(alpha.len() * 4);
        for (px, &a) in rgb.data.chunks_exact(3).zip(alpha) {
            data.extend_from_slice(&[px[0], px[1], px[2], a]);
        }
        Ok(RgbaImage {
            width: rgb.width,
            height: rgb.height,
            data,
        })
    }

    /// Drop the alpha channel (Pillow `convert("RGB")`: colour kept as is, not composited).
    pub fn to_rgb(&self) -> RgbImage {
        let data = self
            .data
            .chunks_exact(4)
            .flat_map(|px| [px[0], px[1], px[2]])
            .collect();
        RgbImage {
            width: self.width,
            height: self.height,
            data,
        }
    }

    fn pixel_count(&self) -> usize {
        self.width as usize * self.height as usize
    }

    fn alphas(&self) -> impl Iterator<Item = u8> + '_ {
        self.data.chunks_exact(4).map(|px| px[3])
    }
}

impl RgbImage {
    fn pixel_count(&self) -> usize {
        self.width as usize * self.height as usize
    }
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// A decoded input image.
#[derive(Clone, Debug)]
pub struct LoadedImage {
    /// The pixels converted to RGBA8 (see [`load_image`] for the conversion rules).
    pub rgba: RgbaImage,
    /// Whether the file had an alpha *channel* (PNG gray+alpha / RGBA, WebP with alpha).
    /// Upstream only trusts alpha when Pillow opens the image as RGBA; PNG transparency given by
    /// a tRNS chunk (palette or colour key) opens as mode P / RGB there, so it counts as no alpha
    /// here too.
    pub has_alpha_channel: bool,
    /// Where the image came from; used in error messages.
    pub source: PathBuf,
}

/// Decode a PNG, JPEG or WebP file into RGBA8.
///
/// Conversion to 8 bit follows what Pillow hands to upstream:
/// * 16-bit RGB, RGBA and gray+alpha PNGs: Pillow's PNG reader keeps the most significant byte
///   of every sample, so we take `v >> 8`;
/// * 16-bit gray PNGs open as mode `I;16` and Pillow's `I;16 → L/RGB` conversion *clamps*
///   (`min(v, 255)`), it does not rescale; we reproduce that (such images look almost white,
///   exactly as they do upstream). Pillow would resize before clamping when the image is
///   larger than 1024 px; we clamp first;
/// * gray images are replicated to R = G = B; missing alpha becomes 255.
///
/// EXIF orientation is ignored, as `Image.open` does.
pub fn load_image(path: &Path) -> Result<LoadedImage> {
    let name = path.display().to_string();
    let bytes = fs::read(path).map_err(|e| anyhow!("{name}: cannot read file: {e}"))?;
    let format = sniff_format(&bytes, &name)?;
    let decoded = decode(&bytes, format, &name)?;
    let has_alpha_channel = match format {
        ImageFormat::Png => png_has_alpha_channel(&bytes),
        _ => decoded.color().has_alpha(),
    };
    let rgba = to_rgba8_like_pillow(decoded);
    if rgba.width == 0 || rgba.height == 0 {
        bail!(
            "{name}: image has no pixels ({}x{})",
            rgba.width,
            rgba.height
        );
    }
    Ok(LoadedImage {
        rgba,
        has_alpha_channel,
        source: path.to_path_buf(),
    })
}

/// The format from the file's content (like Pillow, the extension is not trusted).
fn sniff_format(bytes: &[u8], name: &str) -> Result<ImageFormat> {
    if bytes.is_empty() {
        bail!("{name}: file is empty (0 bytes), not an image");
    }
    let format = ::image::guess_format(bytes)
        .map_err(|_| anyhow!("{name}: not an image (expected PNG, JPEG or WebP data)"))?;
    match format {
        ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP => Ok(format),
        other => bail!("{name}: unsupported image format {other:?} (expected PNG, JPEG or WebP)"),
    }
}

fn decode(bytes: &[u8], format: ImageFormat, name: &str) -> Result<DynamicImage> {
    if format == ImageFormat::Jpeg && !jpeg_has_end_marker(bytes) {
        bail!("{name}: cannot decode Jpeg image (truncated file: no end-of-image marker after the image data)");
    }
    ImageReader::with_format(Cursor::new(bytes), format)
        .decode()
        .map_err(|e| {
            anyhow!(
                "{name}: cannot decode {format:?} image (truncated or corrupt file): {}",
                one_line(&e.to_string())
            )
        })
}

/// The PNG colour type byte of IHDR (offset 25) says whether there is an alpha channel
/// (4 = gray+alpha, 6 = RGBA). The decoder reports palette/tRNS images as RGBA too, which
/// Pillow (and therefore upstream) does not.
fn png_has_alpha_channel(bytes: &[u8]) -> bool {
    matches!(bytes.get(25), Some(4) | Some(6))
}

/// The JPEG decoder fills a truncated scan with grey instead of failing (Pillow raises
/// "image file is truncated"), so check that an end-of-image marker (FF D9) follows the last
/// start-of-scan marker (FF DA). Entropy-coded data never contains FF D9 (a data FF is always
/// followed by 00 or a restart marker), and an EXIF thumbnail's markers come before the main
/// scan, so this does not trip on valid files.
fn jpeg_has_end_marker(bytes: &[u8]) -> bool {
    let last_sos = bytes.windows(2).rposition(|m| m == [0xFF, 0xDA]);
    last_sos.is_some_and(|i| bytes[i..].windows(2).any(|m| m == [0xFF, 0xD9]))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn to_rgba8_like_pillow(img: DynamicImage) -> RgbaImage {
    let (width, height) = (img.width(), img.height());
    let data = match img {
        DynamicImage::ImageLuma8(b) => expand_to_rgba(b.as_raw(), 1, |v| v),
        DynamicImage::ImageLumaA8(b) => expand_to_rgba(b.as_raw(), 2, |v| v),
        DynamicImage::ImageRgb8(b) => expand_to_rgba(b.as_raw(), 3, |v| v),
        DynamicImage::ImageRgba8(b) => b.into_raw(),
        DynamicImage::ImageLuma16(b) => expand_to_rgba(b.as_raw(), 1, |v| v.min(255) as u8),
        DynamicImage::ImageLumaA16(b) => expand_to_rgba(b.as_raw(), 2, |v| (v >> 8) as u8),
        DynamicImage::ImageRgb16(b) => expand_to_rgba(b.as_raw(), 3, |v| (v >> 8) as u8),
        DynamicImage::ImageRgba16(b) => expand_to_rgba(b.as_raw(), 4, |v| (v >> 8) as u8),
        // Float images cannot come from PNG/JPEG/WebP; use the generic conversion.
        other => other.to_rgba8().into_raw(),
    };
    RgbaImage {
        width,
        height,
        data,
    }
}

/// Interleaved 1..=4 channel samples → RGBA8 (gray replicated, missing alpha = 255).
fn expand_to_rgba<T: Copy>(src: &[T], channels: usize, to_u8: impl Fn(T) -> u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len() / channels * 4);
    for px in src.chunks_exact(channels) {
        let rgba = match *px {
            [g] => [to_u8(g), to_u8(g), to_u8(g), 255],
            [g, a] => [to_u8(g), to_u8(g), to_u8(g), to_u8(a)],
            [r, g, b] => [to_u8(r), to_u8(g), to_u8(b), 255],
            [r, g, b, a] => [to_u8(r), to_u8(g), to_u8(b), to_u8(a)],
            _ => unreachable!("chunks_exact yields 1..=4 samples"),
        };
        out.extend_from_slice(&rgba);
    }
    out
}

/// Upstream's test for "use the image's own alpha": Pillow mode RGBA (the file had an alpha
/// channel) and at least one alpha value below 255.
pub fn has_alpha(img: &LoadedImage) -> bool {
    img.has_alpha_channel && img.rgba.alphas().any(|a| a != 255)
}

// ---------------------------------------------------------------------------------------------
// Pillow-exact LANCZOS resize
// ---------------------------------------------------------------------------------------------

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

fn check_len(len: usize, pixels: usize, channels: usize) {
    assert_eq!(
        len,
        pixels * channels,
        "image buffer length does not match width*height*{channels}"
    );
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

// ---------------------------------------------------------------------------------------------
// preprocess_image
// ---------------------------------------------------------------------------------------------

/// Why [`preprocess`] could not produce a conditioning image. Each message is one line and
/// names the source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PreprocessError {
    /// The image has no usable alpha channel: upstream would run the background remover.
    /// Run one on [`background_removal_input`] and pass the result to
    /// [`preprocess_with_alpha`].
    NeedsBackgroundRemoval { source: String },
    /// Every alpha value is 0.
    FullyTransparent { source: String },
    /// No pixel has alpha > 204 (upstream's 0.8 threshold), so there is no object to crop.
    NoOpaquePixels { source: String },
    /// Exactly one pixel passes the threshold: the square crop would be empty.
    EmptyCrop { source: String },
}

impl fmt::Display for PreprocessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NeedsBackgroundRemoval { source } => write!(
                f,
                "{source}: image has no transparency (no alpha channel, or every pixel opaque); cut it out first with `trellis2 matte` (generate does this itself)"
            ),
            Self::FullyTransparent { source } => {
                write!(f, "{source}: image is fully transparent (every alpha value is 0)")
            }
            Self::NoOpaquePixels { source } => write!(
                f,
                "{source}: no pixel has alpha above {ALPHA_THRESHOLD} (80% opacity); nothing to crop"
            ),
            Self::EmptyCrop { source } => write!(
                f,
                "{source}: only one pixel has alpha above {ALPHA_THRESHOLD}; the crop would be empty"
            ),
        }
    }
}

impl std::error::Error for PreprocessError {}

/// What [`preprocess_detailed`] did, in upstream's terms (matches `preprocess.json` goldens).
#[derive(Clone, Debug, PartialEq)]
pub struct PreprocessInfo {
    /// Size of the image given to preprocessing.
    pub source_size: (u32, u32),
    /// Size after the > 1024 px LANCZOS shrink, if it happened.
    pub downscaled_to: Option<(u32, u32)>,
    /// Inclusive `[x0, y0, x1, y1]` of the pixels with alpha > 204.
    pub alpha_bbox: [u32; 4],
    /// Square crop box before rounding.
    pub crop_box_float: [f64; 4],
    /// Crop box after Python's `round` (half to even), as Pillow's `crop` uses it.
    pub crop_box: [i64; 4],
    /// Size of the output image.
    pub output_size: (u32, u32),
}

/// A preprocessed image and how it was made.
#[derive(Clone, Debug)]
pub struct Preprocessed {
    pub image: RgbImage,
    pub info: PreprocessInfo,
}

/// Upstream `Trellis2ImageTo3DPipeline.preprocess_image` for images that carry their own alpha.
/// Images without usable alpha give [`PreprocessError::NeedsBackgroundRemoval`].
pub fn preprocess(img: &LoadedImage) -> Result<RgbImage, PreprocessError> {
    preprocess_detailed(img).map(|p| p.image)
}

/// [`preprocess`], also returning the intermediate geometry.
pub fn preprocess_detailed(img: &LoadedImage) -> Result<Preprocessed, PreprocessError> {
    let source = img.source.display().to_string();
    if !has_alpha(img) {
        return Err(PreprocessError::NeedsBackgroundRemoval { source });
    }
    preprocess_with_alpha_detailed(&img.rgba, &source)
}

/// The image a background remover must see, as upstream prepares it: shrunk to at most
/// 1024 px (LANCZOS on the colour channels) and converted to RGB.
pub fn background_removal_input(img: &LoadedImage) -> RgbImage {
    let rgb = img.rgba.to_rgb();
    match downscaled_size(rgb.width, rgb.height) {
        Some((w, h)) => resize_lanczos(&rgb, w, h),
        None => rgb,
    }
}

/// Steps 2–5 of `preprocess_image` for an RGBA image whose alpha may come from elsewhere
/// (e.g. [`RgbaImage::from_rgb_and_alpha`] on [`background_removal_input`] and the remover's
/// mask). `source` names the image in errors. Images larger than 1024 px are shrunk first,
/// as upstream does for images with their own alpha; for remover output built from
/// [`background_removal_input`] that step is a no-op, as upstream.
pub fn preprocess_with_alpha(rgba: &RgbaImage, source: &str) -> Result<RgbImage, PreprocessError> {
    preprocess_with_alpha_detailed(rgba, source).map(|p| p.image)
}

/// [`preprocess_with_alpha`], also returning the intermediate geometry.
pub fn preprocess_with_alpha_detailed(
    rgba: &RgbaImage,
    source: &str,
) -> Result<Preprocessed, PreprocessError> {
    check_len(rgba.data.len(), rgba.pixel_count(), 4);
    let source = source.to_string();
    if rgba.alphas().all(|a| a == 0) {
        return Err(PreprocessError::FullyTransparent { source });
    }
    let downscaled_to = downscaled_size(rgba.width, rgba.height);
    let img: Cow<RgbaImage> = match downscaled_to {
        Some((w, h)) => Cow::Owned(resize_lanczos(rgba, w, h)),
        None => Cow::Borrowed(rgba),
    };
    let alpha_bbox = opaque_bbox(&img).ok_or_else(|| PreprocessError::NoOpaquePixels {
        source: source.clone(),
    })?;
    let (crop_box_float, crop_box) = square_crop_box(alpha_bbox);
    let cropped = crop_zero_filled(&img, crop_box);
    if cropped.width == 0 || cropped.height == 0 {
        return Err(PreprocessError::EmptyCrop { source });
    }
    let image = premultiply_to_rgb(&cropped);
    let info = PreprocessInfo {
        source_size: (rgba.width, rgba.height),
        downscaled_to,
        alpha_bbox,
        crop_box_float,
        crop_box,
        output_size: (image.width, image.height),
    };
    Ok(Preprocessed { image, info })
}

/// Upstream: `scale = min(1, 1024 / max(w, h))`; if < 1 resize to `(int(w*scale), int(h*scale))`
/// (f64, truncation). Sides are kept ≥ 1 for extreme aspect ratios, where Pillow would raise.
fn downscaled_size(w: u32, h: u32) -> Option<(u32, u32)> {
    let longest = w.max(h);
    if longest <= MAX_INPUT_SIDE {
        return None;
    }
    let scale = MAX_INPUT_SIDE as f64 / longest as f64;
    let side = |v: u32| ((v as f64 * scale) as u32).max(1);
    Some((side(w), side(h)))
}

/// Inclusive bounding box `[x0, y0, x1, y1]` of pixels with alpha > [`ALPHA_THRESHOLD`].
fn opaque_bbox(img: &RgbaImage) -> Option<[u32; 4]> {
    let w = img.width as usize;
    let mut bbox: Option<[u32; 4]> = None;
    for (i, a) in img.alphas().enumerate() {
        if a <= ALPHA_THRESHOLD {
            continue;
        }
        let (x, y) = ((i % w) as u32, (i / w) as u32);
        bbox = Some(match bbox {
            None => [x, y, x, y],
            Some([x0, y0, x1, y1]) => [x0.min(x), y0.min(y), x1.max(x), y1.max(y)],
        });
    }
    bbox
}

/// Upstream's square box around the bbox centre, side `2 * (size // 2)`, then rounded with
/// Python's `round` (ties to even: a centre at .5 can move the box by half a pixel either way).
fn square_crop_box(bbox: [u32; 4]) -> ([f64; 4], [i64; 4]) {
    let [x0, y0, x1, y1] = bbox.map(i64::from);
    let cx = (x0 + x1) as f64 / 2.0;
    let cy = (y0 + y1) as f64 / 2.0;
    let half = ((x1 - x0).max(y1 - y0) / 2) as f64;
    let float_box = [cx - half, cy - half, cx + half, cy + half];
    (float_box, float_box.map(|v| v.round_ties_even() as i64))
}

/// Pillow `crop`: the box may extend past the image; those pixels are transparent black.
fn crop_zero_filled(img: &RgbaImage, [x0, y0, x1, y1]: [i64; 4]) -> RgbaImage {
    let out_w = (x1 - x0).max(0) as usize;
    let out_h = (y1 - y0).max(0) as usize;
    let mut data = vec![0u8; out_w * out_h * 4];
    // Intersection of the box with the image, in source coordinates.
    let sx0 = x0.clamp(0, img.width as i64);
    let sx1 = x1.clamp(0, img.width as i64);
    let sy0 = y0.clamp(0, img.height as i64);
    let sy1 = y1.clamp(0, img.height as i64);
    if sx0 < sx1 {
        let n = (sx1 - sx0) as usize * 4;
        for sy in sy0..sy1 {
            let src = (sy as usize * img.width as usize + sx0 as usize) * 4;
            let dst = ((sy - y0) as usize * out_w + (sx0 - x0) as usize) * 4;
            data[dst..dst + n].copy_from_slice(&img.data[src..src + n]);
        }
    }
    RgbaImage {
        width: out_w as u32,
        height: out_h as u32,
        data,
    }
}

/// numpy: `(rgb / 255 * alpha / 255 * 255).astype(uint8)` in float32 — colour over black,
/// truncated (not rounded), alpha dropped.
fn premultiply_to_rgb(img: &RgbaImage) -> RgbImage {
    let mut data = Vec::with_capacity(img.pixel_count() * 3);
    for px in img.data.chunks_exact(4) {
        let a = px[3] as f32 / 255.0;
        for &c in &px[..3] {
            let v = (c as f32 / 255.0) * a * 255.0;
            data.push(v as u8);
        }
    }
    RgbImage {
        width: img.width,
        height: img.height,
        data,
    }
}

// ---------------------------------------------------------------------------------------------
// DINOv3 input and saving
// ---------------------------------------------------------------------------------------------

/// The tensor upstream's DINOv3 feature extractor feeds to the ViT, as CHW float32
/// `[3, size, size]`: Pillow LANCZOS resize to `size`², `/255` and ImageNet normalisation, all
/// in float32 like numpy/torch.
pub fn dino_input(rgb: &RgbImage, size: u32) -> Vec<f32> {
    let resized = resize_lanczos(rgb, size, size);
    let plane = resized.pixel_count();
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in resized.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            let x = px[c] as f32 / 255.0;
            out[c * plane + i] = (x - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        }
    }
    out
}

/// Write `rgb` as PNG atomically: encode to a temporary file in the same directory, flush it to
/// disk, then rename over `path`, so readers never see a half-written file.
pub fn save_png(rgb: &RgbImage, path: &Path) -> Result<()> {
    let name = path.display();
    check_len(rgb.data.len(), rgb.pixel_count(), 3);
    let mut encoded = Vec::new();
    PngEncoder::new(&mut encoded)
        .write_image(&rgb.data, rgb.width, rgb.height, ExtendedColorType::Rgb8)
        .map_err(|e| anyhow!("{name}: cannot encode PNG: {}", one_line(&e.to_string())))?;
    crate::export::write_atomic(path, |w| Ok(w.write_all(&encoded)?))
}

/// Write `rgba` as PNG atomically (see [`save_png`]).
pub fn save_rgba_png(rgba: &RgbaImage, path: &Path) -> Result<()> {
    let name = path.display();
    check_len(rgba.data.len(), rgba.pixel_count(), 4);
    let mut encoded = Vec::new();
    PngEncoder::new(&mut encoded)
        .write_image(
            &rgba.data,
            rgba.width,
            rgba.height,
            ExtendedColorType::Rgba8,
        )
        .map_err(|e| anyhow!("{name}: cannot encode PNG: {}", one_line(&e.to_string())))?;
    crate::export::write_atomic(path, |w| Ok(w.write_all(&encoded)?))
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

    #[test]
    fn crop_box_rounds_half_to_even() {
        // Golden img0: bbox (29, 68, 623, 583) → box (29, 28.5, 623, 622.5) → (29, 28, 623, 622).
        let (f, r) = square_crop_box([29, 68, 623, 583]);
        assert_eq!(f, [29.0, 28.5, 623.0, 622.5]);
        assert_eq!(r, [29, 28, 623, 622]);
        let (_, r) = square_crop_box([0, 0, 3, 2]); // cx = 1.5 → box (0.5, -0.5, 2.5, 2.5)
        assert_eq!(r, [0, 0, 2, 2]);
    }

    #[test]
    fn crop_outside_is_transparent_black() {
        let img = RgbaImage {
            width: 1,
            height: 1,
            data: vec![1, 2, 3, 4],
        };
        let c = crop_zero_filled(&img, [-1, 0, 2, 1]);
        assert_eq!(c.data, vec![0, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0]);
    }
}
