//! Writing pictures as PNG, atomically.

use std::path::Path;

use ::image::codecs::png::PngEncoder;
use ::image::{ExtendedColorType, ImageEncoder};
use anyhow::{anyhow, Result};

use super::{check_len, one_line, RgbImage, RgbaImage};

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
