//! `trellis2 preprocess IMAGE -o OUT.png`: the exact conditioning image upstream builds.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};

use trellis2::export::write_atomic;
use trellis2::image::{dino_input, load_image, preprocess_detailed, save_png};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Input picture: PNG, JPEG or WebP with a transparent background (RGBA cut-out).
    pub image: PathBuf,
    /// Output PNG: the square, premultiplied-on-black RGB image the model is conditioned on.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Also write the normalised DINOv3 inputs (`pixel_values_512`, `pixel_values_1024`,
    /// [1,3,S,S] float32) to this safetensors file.
    #[arg(long, value_name = "FILE.safetensors")]
    pub dino_input: Option<PathBuf>,
}

pub fn run(args: &Args) -> Result<u8> {
    super::png_output(&args.output)?;
    let loaded = load_image(&args.image)?;
    let pre = preprocess_detailed(&loaded)?;
    save_png(&pre.image, &args.output)?;
    let info = &pre.info;
    println!(
        "{}: {}x{}{} → crop {:?} → {}x{} written to {}",
        args.image.display(),
        info.source_size.0,
        info.source_size.1,
        info.downscaled_to
            .map(|(w, h)| format!(" (shrunk to {w}x{h})"))
            .unwrap_or_default(),
        info.crop_box,
        pre.image.width,
        pre.image.height,
        args.output.display()
    );
    if let Some(path) = &args.dino_input {
        let tensors: Vec<(String, usize, Vec<u8>)> = [512usize, 1024]
            .iter()
            .map(|&s| {
                let values = dino_input(&pre.image, s as u32);
                let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                (format!("pixel_values_{s}"), s, bytes)
            })
            .collect();
        let views = tensors
            .iter()
            .map(|(name, s, bytes)| {
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    vec![1, 3, *s, *s],
                    bytes,
                )
                .map(|v| (name.clone(), v))
            })
            .collect::<Result<Vec<_>, _>>()
            .context("building DINOv3 input tensors")?;
        let meta = HashMap::from([("source".to_string(), args.image.display().to_string())]);
        let encoded = safetensors::serialize(views, Some(meta)).context("encoding safetensors")?;
        write_atomic(path, |w| Ok(w.write_all(&encoded)?))?;
        println!("DINOv3 inputs (512², 1024²) written to {}", path.display());
    }
    Ok(super::exit::OK)
}
