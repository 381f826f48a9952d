//! Reading PNG, JPEG and WebP files into RGBA8 the way Pillow opens them for upstream.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use ::image::{DynamicImage, ImageFormat, ImageReader, Limits};
use anyhow::{anyhow, bail, Result};

use super::{one_line, RgbaImage};

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
/// EXIF orientation is ignored, as `Image.open` does. Only regular files of at most
/// [`MAX_IMAGE_FILE_BYTES`] holding at most [`MAX_IMAGE_PIXELS`] pixels are read.
pub fn load_image(path: &Path) -> Result<LoadedImage> {
    let bytes = crate::files::read_regular(path, MAX_IMAGE_FILE_BYTES)?;
    decode_image_bytes(&bytes, path)
}

/// Largest picture accepted: 64 megapixels (8192 × 8192). Decoding one takes at most about
/// 0.8 GB (16-bit RGBA samples, then the RGBA8 copy); upstream shrinks anything over 1024 px
/// first, so larger pictures would only cost memory.
pub const MAX_IMAGE_PIXELS: u64 = 8192 * 8192;

/// Largest picture file read: 512 MiB (far above any 64-megapixel PNG, JPEG or WebP).
pub const MAX_IMAGE_FILE_BYTES: u64 = 512 << 20;

/// [`load_image`] of a file's bytes already in memory; `path` names it in errors.
pub fn decode_image_bytes(bytes: &[u8], path: &Path) -> Result<LoadedImage> {
    let name = path.display().to_string();
    let format = sniff_format(bytes, &name)?;
    let decoded = decode(bytes, format, &name)?;
    let has_alpha_channel = match format {
        ImageFormat::Png => png_has_alpha_channel(bytes),
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
    // The header's size first: a valid but huge picture is refused by name, before decoding.
    let (w, h) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| {
            anyhow!(
                "{name}: cannot decode {format:?} image (truncated or corrupt header): {}",
                one_line(&e.to_string())
            )
        })?;
    let pixels = w as u64 * h as u64;
    if pixels > MAX_IMAGE_PIXELS {
        bail!(
            "{name}: picture is {w}x{h} ({:.0} megapixels); the limit is {} megapixels (such as \
             8192x8192): shrink it first (the model sees at most 1024x1024)",
            pixels as f64 / 1e6,
            MAX_IMAGE_PIXELS / 1_000_000
        );
    }
    let mut limits = Limits::default();
    // 16-bit RGBA samples of the largest accepted picture, plus the decoders' working rows.
    limits.max_alloc = Some(MAX_IMAGE_PIXELS * 8 + (64 << 20));
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits);
    reader.decode().map_err(|e| {
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
