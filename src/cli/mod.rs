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
pub mod interrupt;
pub mod matte;
mod preflight;
pub mod preprocess;
mod progress;
pub mod render;
mod report;
pub mod selftest;
pub mod texture;
mod values;

/// Exit codes, documented in docs/USAGE.md. The rule: a command refused before any work
/// (a bad flag, value or combination; an input, model folder or destination that the
/// arguments name wrongly) exits 2; work that was started and failed exits 1.
pub mod exit {
    /// Success; for `compare`, the files match within tolerance.
    pub const OK: u8 = 0;
    /// The command failed (bad input, missing weights); for `compare`, the files differ.
    pub const FAILED: u8 = 1;
    /// Usage error; for `compare`, an input could not be read.
    pub const UNREADABLE: u8 = 2;
    /// Stopped by SIGINT or SIGTERM (128 + 2, as shells report Ctrl-C).
    pub const INTERRUPTED: u8 = 130;
}

/// A problem with the command as typed, found before any work: `main` exits 2 for it.
#[derive(Debug)]
pub struct UsageError(pub anyhow::Error);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for UsageError {}

/// Marks `e` as a usage error (exit 2).
pub fn usage(e: impl Into<anyhow::Error>) -> anyhow::Error {
    anyhow::Error::new(UsageError(e.into()))
}

/// The exit code of a command's error: 2 for a usage error anywhere in its chain, else 1.
pub fn exit_code_of(err: &anyhow::Error) -> u8 {
    if err.chain().any(|e| e.is::<UsageError>()) {
        exit::UNREADABLE
    } else {
        exit::FAILED
    }
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
    /// Texture existing meshes (GLB, glTF, PLY, OBJ) from pictures: the same geometry back as a
    /// GLB with baked PBR textures (exit 1 if any failed).
    Texture(Box<texture::Args>),
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
    open_device_at(choice, 0)
}

/// [`open_device`] for the `ordinal`-th GPU of its kind.
pub fn open_device_at(
    choice: trellis2::pipeline::device::DeviceChoice,
    ordinal: usize,
) -> anyhow::Result<trellis2::pipeline::device::Selected> {
    use trellis2::pipeline::device::DeviceChoice;
    // Asking for a backend this build lacks is a usage error; a GPU that fails to start is not.
    let built = match choice {
        DeviceChoice::Metal => cfg!(feature = "metal"),
        DeviceChoice::Cuda => cfg!(feature = "cuda"),
        DeviceChoice::Auto | DeviceChoice::Cpu => true,
    };
    let selected = trellis2::pipeline::device::select_ordinal(choice, ordinal).map_err(|e| {
        if built {
            e
        } else {
            usage(e)
        }
    })?;
    for note in &selected.notes {
        eprintln!("note: {note}");
    }
    Ok(selected)
}

/// A path argument that must name an existing file (a usage error otherwise).
pub fn existing_file(path: &Path) -> anyhow::Result<()> {
    if !path.exists() {
        return Err(usage(anyhow::anyhow!(
            "{}: no such file or directory",
            path.display()
        )));
    }
    Ok(())
}

/// An output picture path must end in `.png` (what is written): a `.jpg` name holding PNG
/// bytes would mislead every program that trusts the name. A usage error otherwise.
pub fn png_output(path: &Path) -> anyhow::Result<()> {
    let is_png = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !is_png {
        return Err(usage(anyhow::anyhow!(
            "{}: the output is a PNG picture; give a name ending in .png",
            path.display()
        )));
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
