//! What a run produces: the object (mesh, textured voxels, dual vertices) and every named
//! intermediate under the golden pipeline's key names, plus per-stage reports.

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};

use super::config::PipelineType;
use super::progress::StageReport;
use crate::mesh::{FillHolesReport, Mesh};

/// Channels of a textured voxel: base colour RGB (0..3), metallic (3), roughness (4), alpha (5).
pub const PBR_CHANNELS: usize = 6;

/// Named tensors of a run, in the order they were made. Names are those of the golden
/// `pipeline_<type>.safetensors` files (`cond_512`, `ss.noise`, `ss.x_t.<i>`, `ss.coords`,
/// `shape_slat_denorm.feats`, `tex_voxels.feats`, `mesh.0.vertices`, …).
#[derive(Debug, Clone, Default)]
pub struct Latents {
    entries: Vec<(String, Tensor)>,
}

impl Latents {
    /// Adds (or replaces) `name`.
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) {
        let name = name.into();
        match self.entries.iter_mut().find(|(n, _)| *n == name) {
            Some(entry) => entry.1 = tensor,
            None => self.entries.push((name, tensor)),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The same tensors on `device`.
    pub fn on(&self, device: &Device) -> Result<Self> {
        let entries = self
            .entries
            .iter()
            .map(|(n, t)| {
                let t = t
                    .to_device(device)
                    .with_context(|| format!("latent `{n}`"))?;
                Ok((n.clone(), t))
            })
            .collect::<Result<_>>()?;
        Ok(Self { entries })
    }

    /// Every tensor, moved to the CPU, for writing.
    pub fn to_cpu(&self) -> Result<Vec<(String, Tensor)>> {
        self.entries
            .iter()
            .map(|(n, t)| {
                let t = t
                    .to_device(&Device::Cpu)
                    .with_context(|| format!("latent `{n}`"))?;
                Ok((n.clone(), t))
            })
            .collect()
    }
}

/// One generated object.
#[derive(Debug, Clone)]
pub struct Generated {
    pub pipeline_type: PipelineType,
    /// Grid resolution of the decoded voxels (512, 1024, or the cascade's choice).
    pub resolution: u32,
    /// The extracted surface, holes filled, in `[-0.5, 0.5]³`.
    pub mesh: Mesh,
    /// What hole filling did.
    pub fill_holes: FillHolesReport,
    /// Decoder voxels `[V, 4]` (batch, x, y, z), in decoder order.
    pub voxel_coords: Vec<[i32; 4]>,
    /// Their PBR attributes `[V, 6]`, already `·0.5 + 0.5` (see [`PBR_CHANNELS`]).
    pub voxel_attrs: Vec<[f32; PBR_CHANNELS]>,
    /// One dual-grid vertex per voxel, in voxel order (= the mesh vertices before hole filling).
    pub dual_vertices: Vec<[f32; 3]>,
    /// Every named intermediate.
    pub latents: Latents,
    /// Per-stage wall time, counts and peak memory, in run order.
    pub stages: Vec<StageReport>,
}
