//! `trellis2 convert --from DIR --to DIR [--dtype f16|bf16|f32]`.

use std::path::PathBuf;

use anyhow::Result;

use trellis2::weights::convert_model_dir;
use trellis2::weights::hub::{locate, HubSettings};

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum DTypeArg {
    F16,
    Bf16,
    F32,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A model directory (pipeline.json + checkpoints) or a hub cache (`download --to DIR`).
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// Where to write one safetensors file per stage and a pipeline.json.
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// Cast every float tensor to this dtype (default: keep the stored dtypes).
    #[arg(long, value_enum)]
    pub dtype: Option<DTypeArg>,
}

pub fn run(args: &Args) -> Result<u8> {
    let from = locate(Some(&args.from), &HubSettings::from_env(), None)?;
    let dtype = args.dtype.map(|d| match d {
        DTypeArg::F16 => candle_core::DType::F16,
        DTypeArg::Bf16 => candle_core::DType::BF16,
        DTypeArg::F32 => candle_core::DType::F32,
    });
    for m in convert_model_dir(&from, &args.to, dtype)? {
        println!(
            "  {:<28} {:>5} tensors  {:>10}  {}",
            m.role,
            m.tensors,
            super::human_bytes(m.bytes),
            m.path.display()
        );
    }
    println!("wrote {}", args.to.join("pipeline.json").display());
    Ok(super::exit::OK)
}
