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
//!
//! One file per job: `decode` reads files, `resample` holds Pillow's resamplers, `preprocess`
//! builds the conditioning image and the DINOv3 input, `png` writes pictures.

mod decode;
mod png;
mod preprocess;
mod resample;

pub use decode::{
    decode_image_bytes, has_alpha, load_image, LoadedImage, MAX_IMAGE_FILE_BYTES, MAX_IMAGE_PIXELS,
};
pub use png::{save_png, save_rgba_png};
pub use preprocess::{
    background_removal_input, dino_input, preprocess, preprocess_detailed, preprocess_with_alpha,
    preprocess_with_alpha_detailed, PreprocessError, PreprocessInfo, Preprocessed, ALPHA_THRESHOLD,
    IMAGENET_MEAN, IMAGENET_STD, MAX_INPUT_SIDE,
};
pub use resample::{resize_bilinear, resize_gray_bicubic, resize_lanczos, LanczosResize};

use anyhow::{bail, Result};

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

/// Panics unless a buffer of `len` bytes holds `pixels` pixels of `channels` bytes.
fn check_len(len: usize, pixels: usize, channels: usize) {
    assert_eq!(
        len,
        pixels * channels,
        "image buffer length does not match width*height*{channels}"
    );
}
/// A codec's error message on one line (ours promise one line per problem).
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
