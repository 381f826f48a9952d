//! `trellis2 convert`: a model directory → one safetensors file per stage, every float tensor in
//! one dtype, the model config (`{"name", "args"}`) in the file's metadata so loading needs no
//! JSON, plus a `pipeline.json` naming the new files. Keys and tensor layouts stay upstream's,
//! so the same strict loaders read both layouts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use super::checkpoint::{
    Checkpoint, ModelConfig, CONFIG_METADATA_KEY, CONVERTED_LAYOUT, LAYOUT_METADATA_KEY,
};
use super::hub::{hf_model_repo, DINOV3_REPO};
use super::model_dir::ModelDir;
use super::rembg::RembgModel;

/// One written file.
#[derive(Debug, Clone)]
pub struct ConvertedModel {
    pub role: String,
    pub path: PathBuf,
    pub tensors: usize,
    pub bytes: u64,
}

/// Converts every model of `from` into `to` (created if needed). `dtype` casts every float
/// tensor; `None` keeps each tensor's stored dtype. Integer tensors are never cast.
pub fn convert_model_dir(
    from: &ModelDir,
    to: &Path,
    dtype: Option<DType>,
) -> Result<Vec<ConvertedModel>> {
    if to.join("pipeline.json").exists() && same_dir(&from.root, to) {
        bail!("{}: --to must differ from --from", to.display());
    }
    std::fs::create_dir_all(to).with_context(|| format!("{}: cannot create", to.display()))?;
    let mut written = Vec::new();
    let mut models = serde_json::Map::new();
    for role in from.pipeline.model_stems().keys() {
        let ckpt = from.checkpoint(role)?;
        let config = ckpt
            .config
            .clone()
            .with_context(|| format!("{}: no model config", ckpt.path.display()))?;
        let path = to.join(format!("{role}.safetensors"));
        written.push(write_converted(role, &ckpt, &config, dtype, &path)?);
        models.insert(role.clone(), serde_json::json!(role));
    }
    let mut args = from.pipeline.args.clone();
    // Hugging Face models keep their folder layout (config.json + model.safetensors) under
    // `<to>/<owner>/<name>/`, where `ModelDir::hf_model_dir` and `rembg_dir` look first. Every
    // background remover present is carried over, so either choice still works after converting.
    let mut hf_models = vec![(
        "image_cond_model",
        from.hf_model_dir("image_cond_model"),
        hf_model_repo(&from.pipeline, "image_cond_model", DINOV3_REPO),
    )];
    for model in RembgModel::ALL {
        hf_models.push((
            "rembg_model",
            from.rembg_dir(model),
            model.repo().to_string(),
        ));
    }
    for (role, src, repo) in hf_models {
        let Ok(src) = src else {
            continue;
        };
        let dst = to.join(&repo);
        std::fs::create_dir_all(&dst)
            .with_context(|| format!("{}: cannot create", dst.display()))?;
        let config_text = std::fs::read_to_string(src.join("config.json"))
            .with_context(|| format!("{}: cannot read config.json", src.display()))?;
        std::fs::write(dst.join("config.json"), &config_text)
            .with_context(|| format!("{}: cannot write config.json", dst.display()))?;
        let hf_config: serde_json::Value = serde_json::from_str(&config_text)
            .with_context(|| format!("{}: config.json is not JSON", src.display()))?;
        let class = hf_config
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(|a| a.as_str())
            .unwrap_or(role)
            .to_string();
        let ckpt = Checkpoint::open_file(&src.join("model.safetensors"))?;
        let config = ModelConfig {
            name: class,
            args: hf_config,
        };
        written.push(write_converted(
            role,
            &ckpt,
            &config,
            dtype,
            &dst.join("model.safetensors"),
        )?);
    }
    args["models"] = serde_json::Value::Object(models);
    let pipeline = serde_json::json!({"name": from.pipeline.name, "args": args});
    let text = serde_json::to_string_pretty(&pipeline)?;
    write_atomic(&to.join("pipeline.json"), text.as_bytes())?;
    Ok(written)
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn write_converted(
    role: &str,
    ckpt: &Checkpoint,
    config: &ModelConfig,
    dtype: Option<DType>,
    path: &Path,
) -> Result<ConvertedModel> {
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for info in ckpt.tensor_infos() {
        let t = ckpt.load(&info.name, stored_dtype(info.dtype)?, &Device::Cpu)?;
        let t = match dtype {
            Some(d) if t.dtype().is_float() => t.to_dtype(d)?,
            _ => t,
        };
        tensors.push((info.name, t));
    }
    let metadata: HashMap<String, String> = [
        (
            CONFIG_METADATA_KEY.to_string(),
            serde_json::to_string(config)?,
        ),
        (
            LAYOUT_METADATA_KEY.to_string(),
            CONVERTED_LAYOUT.to_string(),
        ),
    ]
    .into();
    let partial = path.with_extension("safetensors.partial");
    safetensors::serialize_to_file(
        tensors.iter().map(|(n, t)| (n.as_str(), t)),
        Some(metadata),
        &partial,
    )
    .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", partial.display()))?;
    std::fs::rename(&partial, path)
        .with_context(|| format!("{}: cannot move into place", path.display()))?;
    Ok(ConvertedModel {
        role: role.to_string(),
        path: path.to_path_buf(),
        tensors: tensors.len(),
        bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
    })
}

/// The candle dtype a stored tensor is read as (no cast).
fn stored_dtype(d: safetensors::Dtype) -> Result<DType> {
    Ok(match d {
        safetensors::Dtype::F32 => DType::F32,
        safetensors::Dtype::F16 => DType::F16,
        safetensors::Dtype::BF16 => DType::BF16,
        safetensors::Dtype::F64 => DType::F64,
        safetensors::Dtype::U8 | safetensors::Dtype::BOOL => DType::U8,
        safetensors::Dtype::U32 => DType::U32,
        safetensors::Dtype::I64 => DType::I64,
        other => bail!("tensor dtype {other:?} is not supported"),
    })
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, bytes)
        .with_context(|| format!("{}: cannot write", partial.display()))?;
    std::fs::rename(&partial, path)
        .with_context(|| format!("{}: cannot move into place", path.display()))
}
