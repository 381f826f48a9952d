//! Background removal as TRELLIS.2's BiRefNet wrapper does it (docs/MODEL.md §1.2.1): Pillow BILINEAR
//! resize to 1024² (aspect ratio not kept) → `/255` → ImageNet normalisation → BiRefNet → sigmoid
//! of the last output → `×255` truncated to 8 bit (`ToPILImage`) → Pillow BICUBIC resize back to
//! the source size → alpha. Every step rounds exactly as upstream's does.
//!
//! For `generate`: on an image without usable alpha, call [`cut_out`] on
//! [`crate::image::background_removal_input`] and hand the result to
//! [`crate::image::preprocess_with_alpha`].

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};

use crate::image::{
    resize_bilinear, resize_gray_bicubic, RgbImage, RgbaImage, ALPHA_THRESHOLD, IMAGENET_MEAN,
    IMAGENET_STD,
};
use crate::models::birefnet::BiRefNet;

/// Upstream's network input size (`transforms.Resize((1024, 1024))`).
pub const MATTE_SIZE: u32 = 1024;

/// The matte has no pixel above [`ALPHA_THRESHOLD`]: the remover found no object (typical for
/// blank, all-black or all-white pictures). Returned by [`cut_out`]; match it with
/// `err.downcast_ref::<NoForeground>()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoForeground {
    /// The largest alpha value of the matte.
    pub max_alpha: u8,
}

impl std::fmt::Display for NoForeground {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no foreground found: the background remover left no pixel above alpha \
             {ALPHA_THRESHOLD} (largest alpha {}); use a picture with a clear subject, or an \
             RGBA cut-out",
            self.max_alpha
        )
    }
}

impl std::error::Error for NoForeground {}

/// The normalised network input `[1, 3, height, width]`: Pillow BILINEAR resize, `/255`, ImageNet
/// normalisation, in float32 like torchvision.
pub fn network_input(rgb: &RgbImage, width: u32, height: u32, device: &Device) -> Result<Tensor> {
    let resized = resize_bilinear(rgb, width, height);
    let plane = width as usize * height as usize;
    let mut values = vec![0f32; 3 * plane];
    for (i, px) in resized.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            let x = px[c] as f32 / 255.0;
            values[c * plane + i] = (x - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        }
    }
    Ok(Tensor::from_vec(
        values,
        (1, 3, height as usize, width as usize),
        device,
    )?)
}

/// `ToPILImage()` of a float mask in `[0, 1]`: `(mask·255)` in float32, truncated to u8.
pub fn mask_to_u8(mask: &[f32]) -> Vec<u8> {
    // `as u8` truncates toward zero and saturates, like torch's `.byte()` on values in 0..=255.
    mask.iter().map(|&m| (m * 255.0) as u8).collect()
}

/// The alpha matte (one byte per pixel, row-major, the size of `rgb`) computed at a network
/// input of `size = (width, height)` — upstream uses `(MATTE_SIZE, MATTE_SIZE)`; both must be
/// multiples of [`BiRefNet::size_multiple`]. No foreground check.
pub fn alpha_matte_at(model: &BiRefNet, rgb: &RgbImage, size: (u32, u32)) -> Result<Vec<u8>> {
    let (w, h) = size;
    let m = model.size_multiple() as u32;
    if w == 0 || h == 0 || w % m != 0 || h % m != 0 {
        bail!("matte size {w}×{h} must be positive multiples of {m}");
    }
    if rgb.width == 0 || rgb.height == 0 {
        bail!("cannot matte an empty {}×{} image", rgb.width, rgb.height);
    }
    let input = network_input(rgb, w, h, model.device())?;
    let logits = model.forward(&input)?;
    let mask = candle_nn::ops::sigmoid(&logits)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mask_u8 = mask_to_u8(&mask);
    Ok(resize_gray_bicubic(
        &mask_u8,
        (w, h),
        (rgb.width, rgb.height),
    ))
}

/// Upstream's matte at 1024²: one alpha byte per pixel of `rgb`, row-major. Errors with
/// [`NoForeground`] when no pixel passes the crop threshold.
pub fn matte(model: &BiRefNet, rgb: &RgbImage) -> Result<Vec<u8>> {
    matte_at(model, rgb, (MATTE_SIZE, MATTE_SIZE))
}

/// [`matte`] at another network input size (faster, not upstream-exact).
pub fn matte_at(model: &BiRefNet, rgb: &RgbImage, size: (u32, u32)) -> Result<Vec<u8>> {
    let alpha = alpha_matte_at(model, rgb, size)?;
    require_foreground(&alpha)?;
    Ok(alpha)
}

/// Upstream crops around the pixels with alpha > 204; a matte without any has no object.
pub fn require_foreground(alpha: &[u8]) -> Result<(), NoForeground> {
    let max_alpha = alpha.iter().copied().max().unwrap_or(0);
    if max_alpha <= ALPHA_THRESHOLD {
        return Err(NoForeground { max_alpha });
    }
    Ok(())
}

/// `rgb` with its matte attached as alpha (Pillow `putalpha`), as upstream hands it on.
pub fn cut_out(model: &BiRefNet, rgb: &RgbImage, size: (u32, u32)) -> Result<RgbaImage> {
    let alpha = matte_at(model, rgb, size)?;
    RgbaImage::from_rgb_and_alpha(rgb, &alpha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreground_needs_one_pixel_above_204() {
        assert_eq!(
            require_foreground(&[0, 204, 17]),
            Err(NoForeground { max_alpha: 204 })
        );
        assert_eq!(require_foreground(&[]), Err(NoForeground { max_alpha: 0 }));
        assert_eq!(require_foreground(&[0, 205]), Ok(()));
    }

    #[test]
    fn mask_bytes_are_truncated_not_rounded() {
        assert_eq!(
            mask_to_u8(&[0.0, 0.999 / 255.0, 1.999 / 255.0, 1.0]),
            vec![0, 0, 1, 255]
        );
    }
}
