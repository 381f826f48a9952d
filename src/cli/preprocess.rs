//! `trellis2 preprocess IMAGE -o OUT.png` (filled in once src/image.rs lands).
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    pub image: PathBuf,
    #[arg(short, long)]
    pub output: PathBuf,
}

pub fn run(_args: &Args) -> anyhow::Result<u8> {
    anyhow::bail!("preprocess is not wired yet")
}
