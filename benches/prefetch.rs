//! The weight read-ahead's speed into an empty page cache, by reader count: the `ReadAhead` a
//! cold `generate` starts, over a model folder's files for one pipeline, the page cache dropped
//! before each run (Linux, as root; elsewhere the pages may be cached and the table says so).
//!
//! `cargo bench --bench prefetch -- --model DIR [--readers 1,4,8] [--pipeline 512|1024-cascade]`
//!
//! DIR is a complete model folder: the release's, or the end-to-end bench's random one at full
//! size (`cargo bench --bench e2e -- --model DIR` writes it). Each count runs in a process of its
//! own, as a cold `generate` does (a process reads each file ahead once).

#[path = "common/page_cache.rs"]
mod page_cache;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use page_cache::drop_page_cache;
use trellis2::ops::tuning::Tuning;
use trellis2::pipeline::config::PipelineType;
use trellis2::pipeline::models::LoadOptions;
use trellis2::pipeline::{Pipeline, ReadAhead};
use trellis2::weights::ModelDir;

fn main() -> Result<()> {
    let mut model: Option<PathBuf> = None;
    let mut readers = vec![1, 4, 8];
    let mut ptype = PipelineType::P512;
    let mut one: Option<usize> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} takes a value"));
        match a.as_str() {
            "--model" => model = Some(value()?.into()),
            "--readers" => {
                readers = value()?
                    .split(',')
                    .map(|n| {
                        n.trim()
                            .parse()
                            .context("--readers takes counts like 1,4,8")
                    })
                    .collect::<Result<_>>()?
            }
            "--pipeline" => {
                ptype = match value()?.as_str() {
                    "512" => PipelineType::P512,
                    "1024-cascade" => PipelineType::Cascade1024,
                    other => bail!("--pipeline {other}: expected 512 or 1024-cascade"),
                }
            }
            "--one" => one = Some(value()?.parse().context("--one takes a count")?),
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    let Some(model) = model else {
        bail!("--model DIR is required (a complete model folder)");
    };
    if let Some(n) = one {
        return read_once(&model, ptype, n);
    }
    println!("| readers | read (GB) | seconds | GB/s | page cache dropped |");
    println!("|---|---|---|---|---|");
    for n in readers {
        let status = std::process::Command::new(std::env::current_exe()?)
            .arg("--model")
            .arg(&model)
            .args(["--pipeline", ptype.name(), "--one", &n.to_string()])
            .status()?;
        if !status.success() {
            bail!("the run with {n} readers failed");
        }
    }
    Ok(())
}

/// One cold read-ahead with `n` readers: a row of the table.
fn read_once(model: &Path, ptype: PipelineType, n: usize) -> Result<()> {
    let dropped = drop_page_cache();
    let dir = ModelDir::open(model)?;
    let tuning = Tuning {
        prefetch_readers: n,
        ..Tuning::current()
    };
    let early = tuning.with(|| ReadAhead::start(&dir, ptype, LoadOptions::default()));
    let pipeline = Pipeline::new(dir, candle_core::Device::Cpu)?.with_read_ahead(early);
    let Some(r) = pipeline.weight_prefetch() else {
        bail!("no read-ahead ran (an incomplete model folder?)");
    };
    if !r.errors.is_empty() {
        bail!("read errors: {:?}", r.errors);
    }
    let gb = r.bytes as f64 / 1e9;
    println!(
        "| {} | {gb:.2} | {:.2} | {:.2} | {} |",
        r.readers,
        r.seconds,
        gb / r.seconds,
        if dropped { "yes" } else { "no" }
    );
    Ok(())
}
