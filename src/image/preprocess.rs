//! Upstream's `preprocess_image` (alpha crop, premultiply on black) and the DINOv3 input tensor.

use std::borrow::Cow;
use std::fmt;

use super::{check_len, has_alpha, resize_lanczos, LoadedImage, RgbImage, RgbaImage};

/// Upstream shrinks inputs whose longest side exceeds this before cropping.
pub const MAX_INPUT_SIDE: u32 = 1024;

/// Upstream keeps pixels with `alpha > 0.8 * 255` for the bounding box; for u8 alpha that is
/// `alpha > 204`.
pub const ALPHA_THRESHOLD: u8 = 204;

/// ImageNet normalisation used by the DINOv3 feature extractor (float32, as torchvision does).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// See [`IMAGENET_MEAN`].
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

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
    /// The pixels that pass the threshold span too little (one pixel, or a tiny picture):
    /// the square crop rounds to nothing.
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
                "{source}: the opaque part (pixels with alpha above {ALPHA_THRESHOLD}) is too small: the square crop around it rounds to 0 pixels; use a larger picture"
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

#[cfg(test)]
mod tests {
    use super::*;

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
