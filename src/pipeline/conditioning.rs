//! Image conditioning (docs/MODEL.md §1.3): DINOv3 features of the preprocessed image at 512² and 1024².

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};

use crate::image::{dino_input, RgbImage};
use crate::models::dinov3::DinoV3;

/// `get_cond(image, size)`: `[1, 5 + (size/16)², hidden]`, f32 whatever DINOv3 computed in
/// (each flow casts it to its own dtype).
pub fn condition(model: &DinoV3, image: &RgbImage, size: u32, device: &Device) -> Result<Tensor> {
    let pixels = dino_input(image, size);
    let s = size as usize;
    let x = Tensor::from_vec(pixels, (1, 3, s, s), device)?;
    model
        .features(&x)
        .and_then(|f| Ok(f.to_dtype(DType::F32)?))
        .with_context(|| format!("DINOv3 features at {size}²"))
}
