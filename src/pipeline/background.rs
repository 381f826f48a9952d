//! The conditioning image of a decoded picture: upstream's `preprocess_image`, with background
//! removal (BiRefNet) for pictures that have no transparency of their own.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use super::matte::{cut_out, MATTE_SIZE};
use crate::image::{
    background_removal_input, has_alpha, preprocess, preprocess_with_alpha, LoadedImage, RgbImage,
    RgbaImage,
};
use crate::models::birefnet::BiRefNet;
use crate::weights::{ModelDir, RembgModel};

/// What to do with a picture that has no transparency (a picture with real alpha always keeps
/// it, as upstream does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Background {
    /// Cut the object out with this background-removal model (upstream's behaviour; `auto` is
    /// the default model, see [`RembgModel`]).
    Remove(RembgModel),
    /// `auto`: cut the object out with the default model.
    #[default]
    Auto,
    /// Keep the picture as it is: the whole frame is the object.
    Keep,
    /// Refuse pictures without an alpha channel.
    RequireAlpha,
}

impl Background {
    /// The background remover this mode may need (`None` for `none` and `alpha`).
    pub fn model(self) -> Option<RembgModel> {
        match self {
            Self::Auto => Some(RembgModel::default()),
            Self::Remove(m) => Some(m),
            Self::Keep | Self::RequireAlpha => None,
        }
    }
}

/// Opens a background remover (folder, which model) or hands out one already open.
pub type OpenRemover<'a> = dyn Fn(&Path, RembgModel) -> Result<Arc<BiRefNet>> + 'a;

/// Preprocesses `image` for the model: pictures with real alpha as upstream does; others by
/// `mode` (the chosen BiRefNet checkpoint from the model directory, opened by `open`).
pub fn conditioning_image(
    dir: &ModelDir,
    image: &LoadedImage,
    mode: Background,
    open: &OpenRemover,
) -> Result<RgbImage> {
    let source = image.source.display().to_string();
    if has_alpha(image) {
        return Ok(preprocess(image)?);
    }
    match mode {
        Background::RequireAlpha => bail!(
            "{source}: the picture has no transparency and --rembg alpha asks for an alpha channel"
        ),
        Background::Keep => {
            let rgb = background_removal_input(image);
            Ok(preprocess_with_alpha(&RgbaImage::from_rgb(&rgb), &source)?)
        }
        Background::Auto | Background::Remove(_) => {
            let choice = mode.model().unwrap_or_default();
            let folder = dir.rembg_dir(choice).with_context(|| {
                format!(
                    "{source}: the picture has no transparency and needs background removal; \
                     run `trellis2 download --rembg {choice}`, or pass --rembg none to keep the \
                     whole picture"
                )
            })?;
            let model = open(&folder, choice)?;
            let rgb = background_removal_input(image);
            let rgba =
                cut_out(&model, &rgb, (MATTE_SIZE, MATTE_SIZE)).with_context(|| source.clone())?;
            Ok(preprocess_with_alpha(&rgba, &source)?)
        }
    }
}
