//! Full-size checkpoints of random weights for the released architectures (manifests in
//! `tests/fixtures/golden/manifests/`): the benches measure load time, memory and speed at the
//! real shapes without downloading 13 GB.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use trellis2::models::registry::build_model;
use trellis2::pipeline::dev_forcing::xorshift_values;
use trellis2::weights::ShapeRecorder;

/// The manifest folder of the repository.
pub fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/manifests")
}

/// `(class, args)` of a manifest, e.g. `ss_flow_img_dit_1_3B_64_bf16.denoiser`.
pub fn manifest(name: &str) -> anyhow::Result<(String, serde_json::Value)> {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(manifests().join(format!("{name}.json")))?)?;
    let class = m["name"].as_str().unwrap_or_default().to_string();
    Ok((class, m["args"].clone()))
}

/// xorshift values in [-0.05, 0.05): cheap, deterministic, finite in every dtype.
pub fn random(n: usize, seed: u64, dtype: DType) -> candle_core::Result<Tensor> {
    let v = xorshift_values(n, seed);
    Tensor::from_vec(v, n, &Device::Cpu)?.to_dtype(dtype)
}

/// Writes every tensor `class(args)` asks for, random, stored as `dtype`; returns the
/// parameter count.
pub fn write_random(
    path: &Path,
    class: &str,
    args: &serde_json::Value,
    dtype: DType,
) -> anyhow::Result<u64> {
    let rec = ShapeRecorder::new();
    build_model(class, args, rec.var_builder(DType::F32, &Device::Cpu))?;
    let mut tensors = Vec::new();
    let mut params = 0u64;
    for (i, (name, shape)) in rec.requested().into_iter().enumerate() {
        let n: usize = shape.iter().product();
        params += n as u64;
        tensors.push((name, random(n, i as u64 + 1, dtype)?.reshape(shape)?));
    }
    candle_core::safetensors::save(&tensors.into_iter().collect(), path)?;
    Ok(params)
}
