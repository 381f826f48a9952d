//! `trellis2 dev ...`: tools for developers and reviewers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use trellis2::export::write_atomic;
use trellis2::rng::randn_sequence;

#[derive(Subcommand, Debug)]
pub enum DevCommand {
    /// Draw normal noise exactly like `torch.manual_seed(S); torch.randn(shape)` on the CPU,
    /// one draw per --shape in order, into tensors draw0, draw1, ...
    Randn {
        /// The seed (`--seed` of `generate`).
        #[arg(long)]
        seed: u64,
        /// Comma-separated shape, e.g. 1,8,16,16,16; repeat for several draws in sequence.
        #[arg(long = "shape", required = true, value_parser = parse_shape)]
        shapes: Vec<Vec<usize>>,
        /// Output safetensors file.
        #[arg(short, long)]
        output: PathBuf,
    },
}

fn parse_shape(s: &str) -> Result<Vec<usize>, String> {
    let dims: Result<Vec<usize>, _> = s.split(',').map(|d| d.trim().parse::<usize>()).collect();
    match dims {
        Ok(d) if !d.is_empty() => Ok(d),
        _ => Err(format!(
            "`{s}` is not a shape (comma-separated sizes, e.g. 1,8,16,16,16)"
        )),
    }
}

pub fn run(cmd: &DevCommand) -> Result<u8> {
    match cmd {
        DevCommand::Randn {
            seed,
            shapes,
            output,
        } => randn(*seed, shapes, output),
    }
}

fn randn(seed: u64, shapes: &[Vec<usize>], output: &Path) -> Result<u8> {
    let total: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
    if total > 1 << 30 {
        bail!("{total} values requested; refusing to draw more than 2^30");
    }
    let draws = randn_sequence(seed, shapes);
    let bytes: Vec<Vec<u8>> = draws
        .iter()
        .map(|d| d.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let mut views = Vec::with_capacity(shapes.len());
    for (i, (shape, data)) in shapes.iter().zip(&bytes).enumerate() {
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                .context("building tensor")?;
        views.push((format!("draw{i}"), view));
    }
    let metadata = HashMap::from([
        ("seed".to_string(), seed.to_string()),
        (
            "shapes".to_string(),
            serde_json::to_string(shapes).context("encoding shapes")?,
        ),
    ]);
    let encoded = safetensors::serialize(views, Some(metadata)).context("encoding safetensors")?;
    write_atomic(output, |w| Ok(w.write_all(&encoded)?))?;
    println!(
        "wrote {} draw(s), {total} values, seed {seed} → {}",
        shapes.len(),
        output.display()
    );
    Ok(super::exit::OK)
}
