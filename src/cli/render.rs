//! `trellis2 render FILE -o OUT.png`: a contact sheet of orbit views of a GLB, mesh PLY or
//! Gaussian-splat PLY; and the `generate --preview` picture.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use trellis2::render::{
    contact_sheet, load_scene, render_orbit, save_sheet, Background, Orbit, RenderOptions, Scene,
    Shading,
};

/// Largest view side accepted (a 8-view sheet of 4096² is 512 MiB of RGBA already).
pub const MAX_SIZE: u32 = 4096;
/// Most views accepted.
pub const MAX_VIEWS: u32 = 64;

/// `--background`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackgroundArg {
    White,
    Black,
    Transparent,
}

impl From<BackgroundArg> for Background {
    fn from(b: BackgroundArg) -> Self {
        match b {
            BackgroundArg::White => Background::White,
            BackgroundArg::Black => Background::Black,
            BackgroundArg::Transparent => Background::Transparent,
        }
    }
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Layout: the views go left to right, then top to bottom, in rows of up to \
4 (8 views: 4 × 2). View k looks at the centre of the object's bounding box from azimuth \
k·360°/N, counter-clockwise seen from above, starting in front (from +Z; glTF's frame, +Y up), \
from --elevation degrees above, at a distance where the bounding sphere fits.\n\nMeshes are lit \
by a headlight (ambient 0.3 + 0.7·|n·l|, the light at the camera) unless --unlit; splats are \
drawn with their own colours (3DGS: depth-sorted alpha compositing).\n\nExamples:\n  trellis2 \
render out/chair.glb -o chair.png\n  trellis2 render out/chair.splat.ply -o chair.png --views 4 \
--size 256 --background transparent"
)]
pub struct Args {
    /// A .glb, a mesh .ply, or a Gaussian-splat .ply (INRIA 3DGS layout, SH degree 0–3).
    pub file: PathBuf,
    /// Output PNG (RGB; RGBA with --background transparent).
    #[arg(short, long, value_name = "OUT.png")]
    pub output: PathBuf,
    /// Number of views around the object (1–64).
    #[arg(long, default_value_t = 8, value_parser = views)]
    pub views: u32,
    /// Side of each square view in pixels (16–4096).
    #[arg(long, default_value_t = 512, value_parser = size)]
    pub size: u32,
    /// Camera elevation above the horizontal, in degrees (−90 to 90).
    #[arg(long, default_value_t = 20.0, value_parser = elevation, allow_hyphen_values = true)]
    pub elevation: f64,
    /// What lies behind the object.
    #[arg(long, value_enum, ignore_case = true, default_value_t = BackgroundArg::White)]
    pub background: BackgroundArg,
    /// Meshes: show the base colour without shading (as splats are drawn).
    #[arg(long)]
    pub unlit: bool,
    /// Print nothing on success.
    #[arg(short, long)]
    pub quiet: bool,
}

fn views(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(v) if (1..=MAX_VIEWS).contains(&v) => Ok(v),
        _ => Err(format!(
            "`{text}` is not a whole number from 1 to {MAX_VIEWS}"
        )),
    }
}

fn size(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(v) if (16..=MAX_SIZE).contains(&v) => Ok(v),
        _ => Err(format!(
            "`{text}` is not a whole number from 16 to {MAX_SIZE}"
        )),
    }
}

fn elevation(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) if (-90.0..=90.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "`{text}` is not a number of degrees from -90 to 90"
        )),
    }
}

pub fn run(args: &Args) -> Result<u8> {
    super::existing_file(&args.file)?;
    super::png_output(&args.output)?;
    let start = Instant::now();
    let scene = load_scene(&args.file)?;
    let loaded = start.elapsed().as_secs_f64();
    let orbit = Orbit {
        views: args.views,
        size: args.size,
        elevation_deg: args.elevation,
    };
    let options = RenderOptions {
        shading: if args.unlit {
            Shading::Unlit
        } else {
            Shading::Headlight
        },
        ..RenderOptions::default()
    };
    write_sheet(
        &scene,
        &orbit,
        &options,
        args.background.into(),
        &args.output,
    )
    .with_context(|| args.file.display().to_string())?;
    if !args.quiet {
        println!(
            "{}: {} → {} ({} views of {}², read in {loaded:.1} s, drawn in {:.1} s)",
            args.file.display(),
            scene.describe(),
            args.output.display(),
            args.views,
            args.size,
            start.elapsed().as_secs_f64() - loaded
        );
    }
    Ok(super::exit::OK)
}

fn write_sheet(
    scene: &Scene,
    orbit: &Orbit,
    options: &RenderOptions,
    background: Background,
    out: &Path,
) -> Result<()> {
    let frames = render_orbit(scene, orbit, options)?;
    save_sheet(&contact_sheet(&frames, orbit, background), background, out)
}

/// `generate --preview`: 8 views of 256² (a 1024×512 sheet) of `source` (the GLB or mesh PLY
/// when one was written, else the splats), headlight-lit, on white, written to `out`.
pub fn write_preview(source: &Path, out: &Path) -> Result<()> {
    let scene = load_scene(source)?;
    let orbit = Orbit {
        views: 8,
        size: 256,
        elevation_deg: 20.0,
    };
    write_sheet(
        &scene,
        &orbit,
        &RenderOptions::default(),
        Background::White,
        out,
    )
    .with_context(|| format!("{}: cannot write the preview", out.display()))
}
