//! Safetensors files of candle tensors: read with errors that name the file, write atomically.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use super::write_atomic;

/// Every tensor of a safetensors file, on `device`, in its stored dtype.
pub fn read_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    if !path.is_file() {
        bail!("{}: no such file", path.display());
    }
    candle_core::safetensors::load(path, device).map_err(|e| {
        let cause = match e {
            candle_core::Error::WithPath { inner, .. } => inner.to_string(),
            other => other.to_string(),
        };
        anyhow::anyhow!("{}: not a valid safetensors file: {cause}", path.display())
    })
}

fn tensor_bytes(t: &Tensor) -> Result<(safetensors::Dtype, Vec<u8>)> {
    let t = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => (
            safetensors::Dtype::F32,
            t.to_vec1::<f32>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        DType::F64 => (
            safetensors::Dtype::F64,
            t.to_vec1::<f64>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        DType::F16 => (
            safetensors::Dtype::F16,
            t.to_vec1::<half::f16>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        DType::BF16 => (
            safetensors::Dtype::BF16,
            t.to_vec1::<half::bf16>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        DType::I64 => (
            safetensors::Dtype::I64,
            t.to_vec1::<i64>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        DType::I32 => (
            safetensors::Dtype::I32,
            t.to_vec1::<i32>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        DType::U32 => (
            safetensors::Dtype::U32,
            t.to_vec1::<u32>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        DType::U8 => (safetensors::Dtype::U8, t.to_vec1::<u8>()?),
        other => bail!("cannot store dtype {other:?}"),
    })
}

/// Writes named tensors (any device, moved to the CPU) to `path` atomically.
pub fn write_tensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let encoded: Vec<(String, Vec<usize>, safetensors::Dtype, Vec<u8>)> = tensors
        .iter()
        .map(|(name, t)| {
            let (dtype, bytes) = tensor_bytes(t).with_context(|| format!("tensor `{name}`"))?;
            Ok((name.clone(), t.dims().to_vec(), dtype, bytes))
        })
        .collect::<Result<_>>()?;
    let views = encoded
        .iter()
        .map(|(name, shape, dtype, bytes)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .with_context(|| format!("tensor `{name}`"))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, metadata)
        .with_context(|| format!("{}: encoding safetensors", path.display()))?;
    write_atomic(path, |w| Ok(w.write_all(&bytes)?))
}
