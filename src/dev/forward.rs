//! Run one checkpoint on named input tensors and return named outputs: the engine behind
//! `trellis2 dev forward`, which reproduces the golden `golden/<role>.io.safetensors` files.
//! Input and output names are those of the golden files (`x`, `x.feats`, `coords`, `t`, `cond`,
//! `concat_cond.feats`, `z`, `latent.feats`, `latent.coords`, `pixel_values`, `subs.*` →
//! `out`, `out.feats`, `logits`, `occupancy`, `features`, `out.raw_feats`, `out.coords`, …).
//! Models are loaded through [`crate::models::registry`], in f32.

use std::collections::{BTreeSet, HashMap};

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

use crate::models::birefnet::BiRefNet;
use crate::models::dit::{Condition, FlowInput};
use crate::models::registry::{
    load_dinov3, load_flow, load_shape_decoder, load_shape_encoder, load_ss_decoder,
    load_unet_decoder, ModelSource, SUPPORTED,
};
use crate::models::sc_vae::CASCADE_UPSAMPLE_TIMES;
use crate::models::WeightMemory;
use crate::pipeline::structure::occupancy;
use crate::sparse::SparseTensor;

/// Named tensors given to a model; remembers which ones the model read.
pub struct Inputs<'a> {
    /// Where they came from, for error messages.
    pub source: &'a str,
    pub tensors: &'a HashMap<String, Tensor>,
    read: std::cell::RefCell<BTreeSet<String>>,
}

impl<'a> Inputs<'a> {
    pub fn new(source: &'a str, tensors: &'a HashMap<String, Tensor>) -> Self {
        Self {
            source,
            tensors,
            read: Default::default(),
        }
    }

    /// A required input, with an error naming the file and the tensor.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| {
            let mut have: Vec<&String> = self.tensors.keys().collect();
            have.sort();
            anyhow::anyhow!(
                "{}: no input tensor `{name}` (it has: {})",
                self.source,
                have.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        self.read.borrow_mut().insert(name.to_string());
        Ok(t)
    }

    pub fn optional(&self, name: &str) -> Option<&Tensor> {
        let t = self.tensors.get(name);
        if t.is_some() {
            self.read.borrow_mut().insert(name.to_string());
        }
        t
    }

    /// Names of the inputs the model read, sorted.
    pub fn read_names(&self) -> Vec<String> {
        self.read.borrow().iter().cloned().collect()
    }
}

/// Output tensors in the golden files' names.
pub type Outputs = Vec<(String, Tensor)>;

/// Runs the model at `source` on `inputs` on `device` (CPU f32 for parity).
///
/// - `BiRefNet`: `image` `[B, 3, H, W]` (normalised) → `logits` (the last output), `mask`
///   (its sigmoid).
/// - `SparseStructureDecoder`: `z` → `logits`, `occupancy` (u8, logits > 0).
/// - `FlexiDualGridVaeDecoder`: `latent.feats` + `latent.coords` → `out.raw_feats`, `out.coords`,
///   `subs.{i}.feats` / `subs.{i}.coords`, `upsample4.coords` (no `mesh.*`: mesh extraction is
///   a separate stage).
/// - `SparseUnetVaeDecoder`: `latent.*` and guide `subs.{i}.feats` / `.coords` → `out.feats`
///   (before `·0.5 + 0.5`), `out.coords`.
/// - `FlexiDualGridVaeEncoder`: `vertices.feats` (in-voxel offsets) + `vertices.coords`,
///   `intersected.feats` → `z.feats` (the posterior mean), `z.coords`, `mean`, `logvar`.
pub fn forward(source: &ModelSource, inputs: &Inputs, device: &Device) -> Result<Outputs> {
    let in_inputs = |e: candle_core::Error| anyhow::anyhow!("{}: {e}", inputs.source);
    match source.class.as_str() {
        "DINOv3ViTModel" => dinov3_forward(source, inputs, device),
        "BiRefNet" => birefnet_forward(source, inputs, device),
        "SparseStructureFlowModel" | "SLatFlowModel" | "ElasticSLatFlowModel" => {
            flow_forward(source, inputs, device)
        }
        "SparseStructureDecoder" => {
            let dec = load_ss_decoder(source, DType::F32, device)?;
            let z = float_input(inputs, "z")?;
            let logits = dec.forward(&z).map_err(in_inputs)?;
            let occupancy = occupancy(&logits)?;
            Ok(vec![
                ("logits".into(), logits),
                ("occupancy".into(), occupancy),
            ])
        }
        "FlexiDualGridVaeDecoder" => {
            let dec = load_shape_decoder(source, DType::F32, device)?;
            let latent = sparse_input(inputs, "latent")?;
            let out = dec.net.forward(&latent, None).map_err(in_inputs)?;
            let mut outputs: Outputs = vec![
                ("out.raw_feats".into(), out.raw.feats().clone()),
                ("out.coords".into(), out.raw.coords().clone()),
            ];
            for (i, s) in out.subs.iter().enumerate() {
                outputs.push((format!("subs.{i}.feats"), s.feats().clone()));
                outputs.push((format!("subs.{i}.coords"), s.coords().clone()));
            }
            // Meshes of every batch item at the extraction resolution (`set_resolution`), before
            // hole filling, as the golden files store them.
            let resolution = match inputs.optional("resolution") {
                Some(r) => r
                    .flatten_all()?
                    .to_device(&Device::Cpu)?
                    .to_dtype(DType::I64)?
                    .to_vec1::<i64>()?
                    .first()
                    .copied()
                    .filter(|&r| r > 0)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "{}: `resolution` must hold one positive value",
                            inputs.source
                        )
                    })? as u32,
                None => dec.resolution as u32,
            };
            let coords: Vec<i32> = out.raw.coords().flatten_all()?.to_vec1()?;
            let raw: Vec<f32> = out.raw.feats().flatten_all()?.to_vec1()?;
            let meshes =
                crate::mesh::dual_grid::decoder_output_to_meshes(&coords, &raw, resolution)
                    .map_err(|e| anyhow::anyhow!("{}: mesh extraction: {e}", inputs.source))?;
            for (b, mesh) in meshes.iter().enumerate() {
                let v: Vec<f32> = mesh.vertices.iter().flatten().copied().collect();
                let f: Vec<i32> = mesh.faces.iter().flatten().map(|&i| i as i32).collect();
                outputs.push((
                    format!("mesh.{b}.vertices"),
                    Tensor::from_vec(v, (mesh.vertices.len(), 3), device)?,
                ));
                outputs.push((
                    format!("mesh.{b}.faces"),
                    Tensor::from_vec(f, (mesh.faces.len(), 3), device)?,
                ));
            }
            // The cascade's `upsample(latent, 4)`; a model with fewer C2S blocks has none.
            if dec.net.config().up_blocks() >= CASCADE_UPSAMPLE_TIMES {
                let up = dec
                    .net
                    .upsample(&latent, CASCADE_UPSAMPLE_TIMES)
                    .map_err(in_inputs)?;
                outputs.push(("upsample4.coords".into(), up));
            }
            Ok(outputs)
        }
        "SparseUnetVaeDecoder" => {
            let dec = load_unet_decoder(source, DType::F32, device)?;
            let latent = sparse_input(inputs, "latent")?;
            let guide = if dec.config().pred_subdiv {
                None
            } else {
                Some(
                    (0..dec.config().up_blocks())
                        .map(|i| sparse_input(inputs, &format!("subs.{i}")))
                        .collect::<Result<Vec<_>>>()?,
                )
            };
            let out = dec.forward(&latent, guide.as_deref()).map_err(in_inputs)?;
            Ok(vec![
                ("out.feats".into(), out.raw.feats().clone()),
                ("out.coords".into(), out.raw.coords().clone()),
            ])
        }
        "FlexiDualGridVaeEncoder" => {
            let enc = load_shape_encoder(source, DType::F32, device)?;
            let vertices = sparse_input(inputs, "vertices")?;
            let intersected = inputs.get("intersected.feats")?;
            let out = enc.forward(&vertices, intersected).map_err(in_inputs)?;
            Ok(vec![
                ("z.feats".into(), out.z.feats().clone()),
                ("z.coords".into(), out.z.coords().clone()),
                ("mean".into(), out.mean),
                ("logvar".into(), out.logvar),
            ])
        }
        other => bail!(
            "{}: model class `{other}` is not supported by dev forward (supported: {})",
            source.path.display(),
            SUPPORTED.join(", ")
        ),
    }
}

/// A floating-point input as f32.
fn float_input(inputs: &Inputs, name: &str) -> Result<Tensor> {
    let t = inputs.get(name)?;
    if !t.dtype().is_float() {
        bail!(
            "{}: input `{name}` must be a float tensor, got {:?}",
            inputs.source,
            t.dtype()
        );
    }
    Ok(t.to_dtype(DType::F32)?)
}

/// A sparse input stored as `NAME.feats` + `NAME.coords`.
fn sparse_input(inputs: &Inputs, name: &str) -> Result<SparseTensor> {
    let feats = float_input(inputs, &format!("{name}.feats"))?;
    let coords = inputs.get(&format!("{name}.coords"))?;
    SparseTensor::new(coords, feats)
        .map_err(|e| anyhow::anyhow!("{}: `{name}`: {e}", inputs.source))
}

/// `pixel_values [B, 3, H, W]` → `features [B, 5 + HW/256, C]`.
fn dinov3_forward(source: &ModelSource, inputs: &Inputs, device: &Device) -> Result<Outputs> {
    let model = load_dinov3(source, DType::F32, device)?;
    let pixels = inputs.get("pixel_values")?.to_dtype(DType::F32)?;
    Ok(vec![("features".into(), model.features(&pixels)?)])
}

/// `image [B, 3, H, W]` → `logits`, `mask`. The decoder's tile order is [`BiRefNet::open`]'s:
/// the folder's `config.json` `patch_split_order` (`"rmbg"` or `"einops"`) if set, else that of
/// the checkpoint the path names, else RMBG-2.0's.
fn birefnet_forward(source: &ModelSource, inputs: &Inputs, device: &Device) -> Result<Outputs> {
    let model = BiRefNet::open(&source.path, device)?;
    let image = float_input(inputs, "image")?;
    let logits = model
        .forward(&image)
        .map_err(|e| anyhow::anyhow!("{}: {e:#}", inputs.source))?;
    let mask = candle_nn::ops::sigmoid(&logits)?;
    Ok(vec![("logits".into(), logits), ("mask".into(), mask)])
}

/// Dense: `x, t, cond → out`; sparse: `x.feats, coords, t, cond[, concat_cond.feats] → out.feats`.
fn flow_forward(source: &ModelSource, inputs: &Inputs, device: &Device) -> Result<Outputs> {
    let model = load_flow(source, DType::F32, device, WeightMemory::Resident)?;
    let f32 = |name: &str| -> Result<Tensor> { Ok(inputs.get(name)?.to_dtype(DType::F32)?) };
    let t = f32("t")?;
    let kv = model.cond_kv(&f32("cond")?)?;
    if source.class == "SparseStructureFlowModel" {
        let x = f32("x")?;
        let out = model.forward(&FlowInput::Dense(&x), &t, &Condition::Tokens(&kv))?;
        return Ok(vec![("out".into(), out)]);
    }
    let feats = f32("x.feats")?;
    let coords = inputs.get("coords")?;
    let concat = match inputs.optional("concat_cond.feats") {
        Some(c) => Some(c.to_dtype(DType::F32)?),
        None => None,
    };
    let input = FlowInput::Sparse {
        feats: &feats,
        coords,
        concat_cond: concat.as_ref(),
    };
    let out = model.forward(&input, &t, &Condition::Tokens(&kv))?;
    Ok(vec![("out.feats".into(), out)])
}
