//! `trellis2 matte IMAGE -o OUT.png --model DIR`: the RGBA cut-out the background remover makes
//! of a picture, exactly as `generate` would use it, so it can be checked and fixed by hand.

use std::path::PathBuf;

use anyhow::{bail, Result};

use trellis2::image::{background_removal_input, load_image, save_rgba_png};
use trellis2::models::birefnet::BiRefNet;
use trellis2::pipeline::matte::{cut_out, MATTE_SIZE};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Input picture: PNG, JPEG or WebP (RGB, grey or RGBA; an existing alpha channel is
    /// ignored and replaced by the matte).
    pub image: PathBuf,
    /// Output PNG: the picture (shrunk to at most 1024 px, as upstream does first) with the
    /// matte as its alpha channel.
    #[arg(short, long)]
    pub output: PathBuf,
    /// BiRefNet folder: model.safetensors from Hugging Face (`ZhengPeng7/BiRefNet`, MIT; or
    /// `briaai/RMBG-2.0`, gated, CC BY-NC 4.0: non-commercial use only), or weights.safetensors;
    /// an optional config.json may set "patch_split_order": "rmbg" (default) or "einops".
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Side of the square network input. Upstream uses 1024; other multiples of 32 are faster
    /// or sharper but do not reproduce upstream's matte.
    #[arg(long, default_value_t = MATTE_SIZE, value_name = "PX")]
    pub size: u32,
}

pub fn run(args: &Args) -> Result<u8> {
    let Some(model_dir) = &args.model else {
        bail!(
            "no background-removal model: pass --model DIR (a BiRefNet folder with \
             model.safetensors, e.g. ZhengPeng7/BiRefNet from Hugging Face)"
        );
    };
    let loaded = load_image(&args.image)?;
    let rgb = background_removal_input(&loaded);
    let model = BiRefNet::open(model_dir, &candle_core::Device::Cpu)?;
    let start = std::time::Instant::now();
    let rgba = cut_out(&model, &rgb, (args.size, args.size))
        .map_err(|e| anyhow::anyhow!("{}: {e:#}", args.image.display()))?;
    let elapsed = start.elapsed();
    save_rgba_png(&rgba, &args.output)?;
    let opaque = rgba.data.chunks_exact(4).filter(|p| p[3] > 204).count();
    println!(
        "{}: {}x{} matted at {}² in {:.2} s ({:.1}% opaque) → {}",
        args.image.display(),
        rgba.width,
        rgba.height,
        args.size,
        elapsed.as_secs_f64(),
        100.0 * opaque as f64 / (rgba.width as f64 * rgba.height as f64),
        args.output.display()
    );
    Ok(super::exit::OK)
}
