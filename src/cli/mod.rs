//! Command-line interface: argument parsing and printing only; the work happens in the library.

use std::path::Path;

use clap::{Parser, Subcommand};

pub mod compare;
pub mod convert;
pub mod dev;
pub mod download;
pub mod generate;
mod inputs;
pub mod inspect;
pub mod matte;
pub mod preprocess;
mod progress;
pub mod render;
mod report;
pub mod selftest;
mod values;

/// Exit codes, documented in the README.
pub mod exit {
    /// Success; for `compare`, the files match within tolerance.
    pub const OK: u8 = 0;
    /// The command failed (bad input, missing weights); for `compare`, the files differ.
    pub const FAILED: u8 = 1;
    /// Usage error; for `compare`, an input could not be read.
    pub const UNREADABLE: u8 = 2;
}

#[derive(Parser, Debug)]
#[command(
    name = "trellis2",
    version,
    about = "Turn a picture into a 3D asset with Microsoft's TRELLIS.2, locally.",
    long_about = "Turn a picture into a 3D asset with Microsoft's TRELLIS.2-4B, locally, on an Apple \
GPU (Metal), an NVIDIA GPU (CUDA) or the CPU.\n\nEvery command prints one clear line per problem and \
exits non-zero on failure, so it can be used from scripts and CI.",
    after_help = "Examples:\n  trellis2 generate photo.jpg                 # → out/photo.{splat.ply,mesh.ply,glb}\n  \
trellis2 generate pictures/ -o models/ --report run.json\n  trellis2 download --dry-run\n  \
trellis2 compare out/chair.glb golden/chair.glb --atol 1e-4"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Turn pictures into 3D assets: Gaussian splats, mesh PLY, GLB (exit 1 if any failed).
    Generate(Box<generate::Args>),
    /// Write the exact conditioning image the model sees (alpha crop, premultiplied on black).
    Preprocess(preprocess::Args),
    /// Cut the subject out of a picture with the background remover (BiRefNet) and write it as
    /// an RGBA PNG.
    Matte(matte::Args),
    /// Describe a model directory, a checkpoint, or a PLY / GLB / safetensors file.
    Inspect(inspect::Args),
    /// Rewrite a model directory as one safetensors per stage (one dtype, config inside).
    Convert(convert::Args),
    /// Download the model files from Hugging Face into the local cache (sizes first, resumable,
    /// hash-checked).
    Download(download::Args),
    /// Draw a GLB, mesh PLY or Gaussian-splat PLY from views around it into one PNG (CPU).
    Render(render::Args),
    /// Compare two safetensors, PLY or mesh files within a tolerance (exit 0 same, 1 different,
    /// 2 unreadable).
    Compare(compare::Args),
    /// Check every GPU kernel against its CPU reference on built-in shapes: errors per dtype and
    /// throughput (exit 1 on any failure). Paste its output into bug reports.
    Selftest(selftest::Args),
    /// Developer tools: torch-compatible noise, one checkpoint's forward pass, the mesh voxeliser.
    #[command(subcommand)]
    Dev(dev::DevCommand),
}

/// The device for `--device`, set up, with its notes (an automatic choice that passed over a
/// GPU, bf16 models running in f16) printed once on stderr.
pub fn open_device(
    choice: trellis2::pipeline::device::DeviceChoice,
) -> anyhow::Result<trellis2::pipeline::device::Selected> {
    let selected = trellis2::pipeline::device::select(choice)?;
    for note in &selected.notes {
        eprintln!("note: {note}");
    }
    Ok(selected)
}

/// A path argument that must name an existing file.
pub fn existing_file(path: &Path) -> anyhow::Result<()> {
    if !path.exists() {
        anyhow::bail!("{}: no such file or directory", path.display());
    }
    Ok(())
}

/// `1.5 GiB` style sizes for people.
pub fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}
