//! What a run produces: the object (mesh, textured voxels, dual vertices) and every named
//! intermediate under the golden pipeline's key names, plus per-stage reports.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::config::PipelineType;
use super::progress::StageReport;
use crate::mesh::{
    decoder_output_to_meshes, fill_holes, FillHolesReport, Mesh, DEFAULT_MAX_HOLE_PERIMETER,
};
use crate::ops::host_copy::HostCopy;

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

/// The decoders' voxels on their way to the host as the device left them (its dtypes, its
/// layout), not yet converted: [`Generated::extract_mesh`] waits for the copy and turns them into
/// the voxel arrays and the surface.
#[derive(Debug, Clone)]
pub struct DecodedVoxels {
    /// `[V, 4]` (batch, x, y, z) int32, the shape decoder's raw features `[V, 7]` and the
    /// texture decoder's attributes `[V, 6]` (already `·0.5 + 0.5`), in that order.
    pub(crate) copy: HostCopy,
    /// Grid resolution.
    pub resolution: u32,
}

impl DecodedVoxels {
    /// Starts copying the three tensors to the host (see [`DecodedVoxels::copy`]).
    pub(crate) fn start(
        coords: &Tensor,
        raw: &Tensor,
        attrs: &Tensor,
        resolution: u32,
    ) -> Result<Self> {
        let copy = HostCopy::start(&[coords.clone(), raw.clone(), attrs.clone()])
            .context("copying the decoded voxels to the host")?;
        Ok(Self { copy, resolution })
    }

    /// Coordinates, raw features and attributes on the CPU (waits for the copy).
    pub fn host(&self) -> Result<(Tensor, Tensor, Tensor)> {
        let mut host = self.copy.tensors()?.into_iter();
        match (host.next(), host.next(), host.next()) {
            (Some(c), Some(r), Some(a)) => Ok((c, r, a)),
            _ => bail!("decoded voxels: expected three tensors"),
        }
    }
}

/// One generated object.
///
/// [`Pipeline::generate`](super::Pipeline::generate) and
/// [`Pipeline::generate_batch`](super::Pipeline::generate_batch) return it with its surface
/// extracted; [`Pipeline::generate_batch_voxels`](super::Pipeline::generate_batch_voxels) returns
/// it with `voxel_coords`, `voxel_attrs`, `mesh`, `fill_holes` and `dual_vertices` still empty and
/// `voxels` set, for [`Generated::extract_mesh`] to run elsewhere (a batch's output thread) than
/// the thread that drives the device.
#[derive(Debug, Clone)]
pub struct Generated {
    pub pipeline_type: PipelineType,
    /// Grid resolution of the decoded voxels (512, 1024, or the cascade's choice).
    pub resolution: u32,
    /// The extracted surface, holes filled, in `[-0.5, 0.5]³` (empty until extracted).
    pub mesh: Mesh,
    /// What hole filling did.
    pub fill_holes: FillHolesReport,
    /// Decoder voxels `[V, 4]` (batch, x, y, z), in decoder order (empty until extracted).
    pub voxel_coords: Vec<[i32; 4]>,
    /// Their PBR attributes `[V, 6]`, already `·0.5 + 0.5` (see [`PBR_CHANNELS`]; empty until
    /// extracted).
    pub voxel_attrs: Vec<[f32; PBR_CHANNELS]>,
    /// One dual-grid vertex per voxel, in voxel order (= the mesh vertices before hole filling;
    /// empty until extracted).
    pub dual_vertices: Vec<[f32; 3]>,
    /// The decoders' voxels while they are not extracted yet; `None` after.
    pub voxels: Option<DecodedVoxels>,
    /// Seconds the surface extraction and hole filling took (0 until they ran).
    pub mesh_seconds: f64,
    /// Every named intermediate.
    pub latents: Latents,
    /// Per-stage wall time, counts and peak memory, in run order.
    pub stages: Vec<StageReport>,
}

impl Generated {
    /// Converts the decoders' voxels to `voxel_coords` / `voxel_attrs`, extracts the surface
    /// from the shape decoder's voxels (dual grid → triangles), fills its small holes and adds
    /// `mesh.0.vertices` / `mesh.0.faces` (before hole filling, as the golden files hold them) to
    /// the latents, on the CPU. Does nothing when already done.
    pub fn extract_mesh(&mut self) -> Result<()> {
        let Some(voxels) = self.voxels.take() else {
            return Ok(());
        };
        let start = Instant::now();
        let (coords, raw, attrs) = voxels.host()?;
        let count = coords.dim(0)?;
        let coords: Vec<i32> = host_vec(&coords, DType::I32).context("voxel coordinates")?;
        let raw = host_f32(&raw).context("shape decoder voxels")?;
        let attrs = host_f32(&attrs).context("voxel attributes")?;
        if coords.len() != 4 * count || attrs.len() != PBR_CHANNELS * count {
            bail!(
                "decoded voxels: {} coordinates and {} attributes for {count} voxels",
                coords.len(),
                attrs.len()
            );
        }
        let mut meshes = decoder_output_to_meshes(&coords, &raw, voxels.resolution)
            .context("mesh extraction")?;
        if meshes.len() != 1 {
            bail!("decoder returned {} objects, expected one", meshes.len());
        }
        let mut mesh = meshes.remove(0);
        let (nv, nf) = (mesh.vertices.len(), mesh.faces.len());
        let vertices: Vec<f32> = mesh.vertices.iter().flatten().copied().collect();
        let faces: Vec<i32> = mesh.faces.iter().flatten().map(|&i| i as i32).collect();
        self.latents.insert(
            "mesh.0.vertices",
            Tensor::from_vec(vertices, (nv, 3), &Device::Cpu)?,
        );
        self.latents.insert(
            "mesh.0.faces",
            Tensor::from_vec(faces, (nf, 3), &Device::Cpu)?,
        );
        let dual_vertices = mesh.vertices.clone();
        self.fill_holes =
            fill_holes(&mut mesh, DEFAULT_MAX_HOLE_PERIMETER).context("hole filling")?;
        self.mesh = mesh;
        self.dual_vertices = dual_vertices;
        self.voxel_coords = coords
            .par_chunks_exact(4)
            .map(|c| [c[0], c[1], c[2], c[3]])
            .collect();
        self.voxel_attrs = attrs
            .par_chunks_exact(PBR_CHANNELS)
            .map(|a| std::array::from_fn(|k| a[k]))
            .collect();
        self.mesh_seconds = start.elapsed().as_secs_f64();
        Ok(())
    }
}

/// `t`'s values as a flat host vector of `dtype`.
fn host_vec<T: candle_core::WithDType>(t: &Tensor, dtype: DType) -> Result<Vec<T>> {
    Ok(t.to_device(&Device::Cpu)?
        .to_dtype(dtype)?
        .flatten_all()?
        .to_vec1::<T>()?)
}

/// `t`'s values as a flat host f32 vector. Half-precision values (a GPU decoder's output) are
/// widened on all cores: candle's cast runs on one thread, ≈ 0.2 G values/s, and a `1024` object
/// has ≈ 100 M of them.
fn host_f32(t: &Tensor) -> Result<Vec<f32>> {
    let flat = t.to_device(&Device::Cpu)?.flatten_all()?;
    Ok(match flat.dtype() {
        DType::F16 => flat
            .to_vec1::<half::f16>()?
            .par_iter()
            .map(|v| v.to_f32())
            .collect(),
        DType::BF16 => flat
            .to_vec1::<half::bf16>()?
            .par_iter()
            .map(|v| v.to_f32())
            .collect(),
        _ => flat.to_dtype(DType::F32)?.to_vec1()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parallel widening gives candle's cast, value for value, for every dtype a decoder
    /// may leave its voxels in.
    #[test]
    fn host_f32_equals_candles_cast() {
        let values = crate::test_util::uniform_tensor(&[1000, 7], 5);
        for dtype in [DType::F32, DType::F16, DType::BF16, DType::F64] {
            let t = values.to_dtype(dtype).unwrap();
            let want: Vec<f32> = host_vec(&t, DType::F32).unwrap();
            assert_eq!(host_f32(&t).unwrap(), want, "{dtype:?}");
        }
    }
}
