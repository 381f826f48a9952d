//! `trellis2 matte IMAGE -o OUT.png [--rembg birefnet|rmbg-2.0] [--model DIR]`: the RGBA cut-out
//! the background remover makes of a picture, exactly as `generate` would use it, so it can be
//! checked and fixed by hand.

use std::path::PathBuf;

use anyhow::Result;

use trellis2::image::{background_removal_input, load_image, save_rgba_png};
use trellis2::models::birefnet::BiRefNet;
use trellis2::pipeline::matte::{cut_out, MATTE_SIZE};
use trellis2::weights::RembgModel;

use super::values::{self, DeviceArg, RembgArg};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Input picture: PNG, JPEG or WebP (RGB, grey or RGBA; an existing alpha channel is
    /// ignored and replaced by the matte).
    pub image: PathBuf,
    /// Output PNG: the picture (shrunk to at most 1024 px, as upstream does first) with the
    /// matte as its alpha channel.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Background remover to use when --model is not given, from the Hugging Face cache
    /// (downloaded on first use): birefnet = ZhengPeng7/BiRefNet (MIT licence, the default);
    /// rmbg-2.0 = briaai/RMBG-2.0 (gated, CC BY-NC 4.0: NON-COMMERCIAL use only). With --model
    /// it names which checkpoint the folder holds (it sets the decoder's tile order).
    #[arg(long, value_name = "MODEL", value_enum, ignore_case = true)]
    pub rembg: Option<RembgArg>,
    /// BiRefNet folder: model.safetensors (+ config.json) as on Hugging Face, or the golden
    /// weights.safetensors. The decoder's tile order is the folder's config.json
    /// "patch_split_order" ("rmbg" or "einops") if set, else that of --rembg, else that of the
    /// repository the path names, else RMBG-2.0's.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Download a missing model without asking.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// No network: fail if the model is not in the cache.
    #[arg(long)]
    pub offline: bool,
    /// Compute device (BiRefNet in f32 with fp32 accumulation).
    #[arg(long, value_enum, env = "TRELLIS2_DEVICE", default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// Side of the square network input. Upstream uses 1024; other multiples of 32 up to 4096
    /// are faster or sharper but do not reproduce upstream's matte.
    #[arg(long, default_value_t = MATTE_SIZE, value_name = "PX", value_parser = values::matte_size)]
    pub size: u32,
}

pub fn run(args: &Args) -> Result<u8> {
    super::png_output(&args.output)?;
    let loaded = load_image(&args.image)?;
    let rgb = background_removal_input(&loaded);
    let device = super::open_device(args.device.into())?.device;
    let model = match (&args.model, args.rembg.map(RembgModel::from)) {
        (Some(dir), Some(choice)) => BiRefNet::open_as(dir, choice, &device)?,
        (Some(dir), None) => BiRefNet::open(dir, &device)?,
        (None, choice) => {
            let choice = choice.unwrap_or_default();
            let dir = super::download::ensure_rembg(choice, args.yes, args.offline)?;
            BiRefNet::open_as(&dir, choice, &device)?
        }
    };
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
