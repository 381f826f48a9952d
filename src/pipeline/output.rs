//! What a run produces: the object (mesh, textured voxels, dual vertices) and every named
//! intermediate under the golden pipeline's key names, plus per-stage reports.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::config::PipelineType;
use super::progress::StageReport;
use crate::export::asset::Asset;
use crate::export::face_orientation::faces_wound_outward;
use crate::export::splat::SplatShape;
use crate::export::splat_fit::{splat_patches, SplatPatches};
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

/// The surface of the shape decoder's voxels, built on a thread of its own from the voxels'
/// copy to the host ([`SurfaceTask::start`]): the mesh the dual grid gives (holes filled, its
/// faces also wound outward) and the voxels, checked and indexed as the writers' asset with
/// placeholder attributes, the faces before filling and, when asked for, the splat patches.
#[derive(Clone, Debug)]
struct Surface {
    /// The mesh (holes filled, outward faces known), the voxels' coordinates and their dual
    /// vertices (the mesh's vertices before hole filling), attributes placeholders.
    geometry: Asset,
    /// The voxels' batch column (one object: one value).
    batch: i32,
    fill_holes: FillHolesReport,
    /// The faces before hole filling (the golden files' `mesh.0.faces`).
    faces_before_filling: Vec<i32>,
    /// The voxels' splat patches but their colours, when asked for.
    splat_patches: Option<Arc<SplatPatches>>,
    /// Seconds the thread worked once the copy landed: the conversion, the extraction, the hole
    /// filling, the orienting, the geometry's checks and index, and the splat patches.
    seconds: f64,
}

/// A surface with the texture decoder's attributes for its voxels, not yet given to it.
type Landed = (Surface, Vec<[f32; PBR_CHANNELS]>);

enum SurfaceState {
    Running(std::thread::JoinHandle<Result<Surface>>),
    Done(std::result::Result<Arc<Surface>, String>),
}

/// A surface being extracted: started when the shape decoder's voxels leave the device, so
/// that the extraction runs beside the texture stages instead of after them; a copy shares the
/// same work.
#[derive(Clone)]
pub(crate) struct SurfaceTask(Arc<Mutex<SurfaceState>>);

impl std::fmt::Debug for SurfaceTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SurfaceTask")
    }
}

impl SurfaceTask {
    /// Starts copying the shape decoder's `coords` and `raw` features to the host and, on a
    /// thread, turning them into the surface at grid `resolution` (with `splats`, also the
    /// voxels' splat patches for that shape).
    pub(crate) fn start(
        coords: &Tensor,
        raw: &Tensor,
        resolution: u32,
        splats: Option<SplatShape>,
    ) -> Result<Self> {
        let copy = HostCopy::start(&[coords.clone(), raw.clone()])
            .context("copying the shape decoder's voxels to the host")?;
        let thread = std::thread::Builder::new()
            .name("surface".into())
            .spawn(move || extract_surface(&copy, resolution, splats))
            .context("starting the surface extraction")?;
        Ok(Self(Arc::new(Mutex::new(SurfaceState::Running(thread)))))
    }

    /// The surface, once its thread has finished.
    fn wait(&self) -> Result<Arc<Surface>> {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let done = match std::mem::replace(&mut *state, SurfaceState::Done(Err(String::new()))) {
            SurfaceState::Running(thread) => match thread.join() {
                Ok(r) => r.map(Arc::new).map_err(|e| format!("{e:#}")),
                Err(_) => Err("the surface extraction failed (its thread panicked)".into()),
            },
            SurfaceState::Done(done) => done,
        };
        *state = SurfaceState::Done(done.clone());
        done.map_err(|e| anyhow::anyhow!(e))
    }
}

/// The shape decoder's voxels (`coords`, `raw`) turned into the surface: host arrays, the dual
/// grid's mesh, its small holes filled, its faces wound outward, the writers' asset checked and
/// indexed but its attributes, and with `splats` the voxels' splat patches. The arrays move into
/// the asset: one copy of the surface per picture in flight.
fn extract_surface(
    copy: &HostCopy,
    resolution: u32,
    splats: Option<SplatShape>,
) -> Result<Surface> {
    let host = copy.tensors()?;
    let start = Instant::now();
    let [coords, raw] = host.as_slice() else {
        bail!("shape decoder voxels: expected two tensors");
    };
    let count = coords.dim(0)?;
    let coords: Vec<i32> = host_vec(coords, DType::I32).context("voxel coordinates")?;
    let raw = host_f32(raw).context("shape decoder voxels")?;
    if coords.len() != 4 * count {
        bail!(
            "decoded voxels: {} coordinates for {count} voxels",
            coords.len()
        );
    }
    let mut meshes =
        decoder_output_to_meshes(&coords, &raw, resolution).context("mesh extraction")?;
    drop(raw);
    if meshes.len() != 1 {
        bail!("decoder returned {} objects, expected one", meshes.len());
    }
    let batch = coords.first().copied().unwrap_or(0);
    let voxel_coords: Vec<[i32; 3]> = coords
        .par_chunks_exact(4)
        .map(|c| [c[1], c[2], c[3]])
        .collect();
    drop(coords);
    let mut mesh = meshes.remove(0);
    let faces_before_filling: Vec<i32> = mesh.faces.iter().flatten().map(|&i| i as i32).collect();
    let dual_vertices = mesh.vertices.clone();
    let fill_holes = fill_holes(&mut mesh, DEFAULT_MAX_HOLE_PERIMETER).context("hole filling")?;
    let oriented_faces = faces_wound_outward(&mesh);
    // The writer's asset, but the attributes: checked and indexed here, beside the texture
    // stages, instead of after them.
    let geometry = Asset::new(
        mesh,
        voxel_coords,
        vec![[0.0; PBR_CHANNELS]; count],
        dual_vertices,
        resolution,
    )
    .and_then(|asset| asset.with_oriented_faces(oriented_faces))
    .context("the decoded surface")?;
    let splat_patches = splats.map(|shape| Arc::new(splat_patches(&geometry, &shape)));
    Ok(Surface {
        geometry,
        batch,
        fill_holes,
        faces_before_filling,
        splat_patches,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The decoders' voxels on their way to the host: the surface of the shape decoder's, being
/// extracted since that decoder ran, and the texture decoder's attributes as the device left
/// them (its dtype, its layout), not yet converted. [`Generated::extract_mesh`] waits for both.
#[derive(Debug, Clone)]
pub struct DecodedVoxels {
    surface: SurfaceTask,
    /// The texture decoder's attributes `[V, 6]` (already `·0.5 + 0.5`).
    attrs: HostCopy,
    /// Grid resolution.
    pub resolution: u32,
}

impl DecodedVoxels {
    /// Starts copying the texture decoder's `attrs` to the host; `surface` is the shape
    /// decoder's, on the same voxels.
    pub(crate) fn start(surface: SurfaceTask, attrs: &Tensor, resolution: u32) -> Result<Self> {
        let attrs = HostCopy::start(std::slice::from_ref(attrs))
            .context("copying the voxel attributes to the host")?;
        Ok(Self {
            surface,
            attrs,
            resolution,
        })
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
    /// The mesh's faces wound outward, as the exporters orient them (empty until extracted).
    pub oriented_faces: Vec<[u32; 3]>,
    /// The voxels' splat patches but their colours, when the pipeline was asked for them
    /// ([`super::Pipeline::with_splat_patches`]; `None` until extracted).
    pub splat_patches: Option<Arc<SplatPatches>>,
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
    /// The surface and voxels as an asset with placeholder attributes, checked and indexed
    /// beside the texture stages ([`Generated::take_asset`] gives it the attributes).
    pub(crate) geometry: Option<Asset>,
    /// Seconds the surface thread worked beside the texture stages: extraction, hole filling,
    /// outward faces, the writers' asset checked and indexed, splat patches (0 until
    /// extracted).
    pub mesh_seconds: f64,
    /// Seconds [`Generated::extract_mesh`] took: waiting for the surface, the attributes'
    /// conversion to host arrays (0 until extracted).
    pub mesh_wait_seconds: f64,
    /// Every named intermediate.
    pub latents: Latents,
    /// Per-stage wall time, counts and peak memory, in run order.
    pub stages: Vec<StageReport>,
}

impl Generated {
    /// A generated object whose decoders' voxels are still on their way to the host.
    pub(crate) fn pending(
        pipeline_type: PipelineType,
        voxels: DecodedVoxels,
        latents: Latents,
        stages: Vec<StageReport>,
    ) -> Self {
        Self {
            pipeline_type,
            resolution: voxels.resolution,
            mesh: Mesh::default(),
            fill_holes: Default::default(),
            oriented_faces: Vec::new(),
            splat_patches: None,
            voxel_coords: Vec::new(),
            voxel_attrs: Vec::new(),
            dual_vertices: Vec::new(),
            voxels: Some(voxels),
            geometry: None,
            mesh_seconds: 0.0,
            mesh_wait_seconds: 0.0,
            latents,
            stages,
        }
    }

    /// Converts the decoders' voxels to `voxel_coords` / `voxel_attrs`, takes the surface
    /// extracted from the shape decoder's voxels (dual grid → triangles, small holes filled,
    /// faces wound outward, the writers' asset checked and indexed, splat patches when asked
    /// for; waiting for its thread) and adds
    /// `mesh.0.vertices` / `mesh.0.faces` (before hole filling, as the golden files hold them)
    /// to the latents, on the CPU. Does nothing when already done. The public arrays are copies
    /// of the checked asset's, kept for [`Generated::take_asset`]; a caller that only exports
    /// takes [`Generated::extract_asset`] instead, which holds the surface once.
    pub fn extract_mesh(&mut self) -> Result<()> {
        let Some((surface, attrs)) = self.landed(true)? else {
            return Ok(());
        };
        let start = Instant::now();
        let geometry = surface.geometry;
        self.mesh = geometry.mesh().clone();
        self.oriented_faces = geometry.oriented_faces().into_owned();
        self.dual_vertices = geometry.dual_vertices().to_vec();
        let batch = surface.batch;
        self.voxel_coords = geometry
            .voxel_coords()
            .par_iter()
            .map(|c| [batch, c[0], c[1], c[2]])
            .collect();
        self.voxel_attrs = attrs;
        self.splat_patches = surface.splat_patches;
        self.geometry = Some(geometry);
        self.mesh_wait_seconds += start.elapsed().as_secs_f64();
        Ok(())
    }

    /// The object as the exporters take it, straight from the surface thread's checked asset
    /// given the texture decoder's attributes: [`Generated::extract_mesh`] then
    /// [`Generated::take_asset`] without the public arrays' copies in between (they stay
    /// empty). `mesh_latents` adds `mesh.0.vertices` / `mesh.0.faces` to the latents, as
    /// `extract_mesh` does. After `extract_mesh`, the same as `take_asset`.
    pub fn extract_asset(&mut self, mesh_latents: bool) -> Result<Asset> {
        let Some((surface, attrs)) = self.landed(mesh_latents)? else {
            return self.take_asset();
        };
        let asset = surface.geometry.with_attributes(attrs)?;
        match surface.splat_patches {
            Some(patches) => asset.with_splat_patches(patches),
            None => Ok(asset),
        }
    }

    /// Waits for the surface thread and the texture decoder's attributes (`None` when done
    /// already): the surface with its placeholder attributes and the attributes to give it,
    /// counted against its voxels; with `mesh_latents`, the mesh's latents added.
    fn landed(&mut self, mesh_latents: bool) -> Result<Option<Landed>> {
        let Some(voxels) = self.voxels.take() else {
            return Ok(None);
        };
        let start = Instant::now();
        let surface = voxels.surface.wait()?;
        let attrs = match voxels.attrs.tensors()?.as_slice() {
            [attrs] => host_f32(attrs).context("voxel attributes")?,
            _ => bail!("voxel attributes: expected one tensor"),
        };
        let count = surface.geometry.voxel_count();
        if attrs.len() != PBR_CHANNELS * count {
            bail!(
                "decoded voxels: {} attributes for {count} voxels",
                attrs.len()
            );
        }
        let attrs = attrs
            .par_chunks_exact(PBR_CHANNELS)
            .map(|a| std::array::from_fn(|k| a[k]))
            .collect();
        // The only holder (the usual case) gives its arrays up; a shared one is copied.
        let mut surface = Arc::try_unwrap(surface).unwrap_or_else(|shared| (*shared).clone());
        let faces_before_filling = std::mem::take(&mut surface.faces_before_filling);
        if mesh_latents {
            let duals = surface.geometry.dual_vertices();
            let vertices: Vec<f32> = duals.iter().flatten().copied().collect();
            self.latents.insert(
                "mesh.0.vertices",
                Tensor::from_vec(vertices, (duals.len(), 3), &Device::Cpu)?,
            );
            let nf = faces_before_filling.len() / 3;
            self.latents.insert(
                "mesh.0.faces",
                Tensor::from_vec(faces_before_filling, (nf, 3), &Device::Cpu)?,
            );
        }
        self.fill_holes = surface.fill_holes;
        self.mesh_seconds = surface.seconds;
        self.mesh_wait_seconds = start.elapsed().as_secs_f64();
        Ok(Some((surface, attrs)))
    }

    /// The object as the exporters take it (after [`Generated::extract_mesh`]): the mesh, the
    /// voxels and their attributes moved into an [`Asset`] with the outward faces and the
    /// splat patches computed beside the texture stages. Leaves those arrays empty. The
    /// geometry checked and indexed ahead is used while the arrays are still the ones it was
    /// built from; otherwise the asset is built and checked here. Either way the public
    /// `oriented_faces`, when not empty, are the asset's (checked against its faces).
    pub fn take_asset(&mut self) -> Result<Asset> {
        let mesh = std::mem::take(&mut self.mesh);
        let coords: Vec<[i32; 3]> = std::mem::take(&mut self.voxel_coords)
            .into_par_iter()
            .map(|c| [c[1], c[2], c[3]])
            .collect();
        let attrs = std::mem::take(&mut self.voxel_attrs);
        let dual_vertices = std::mem::take(&mut self.dual_vertices);
        let oriented = std::mem::take(&mut self.oriented_faces);
        let asset = match self.geometry.take() {
            Some(geometry)
                if geometry.has_geometry(&mesh, &coords, &dual_vertices, self.resolution) =>
            {
                geometry.with_attributes(attrs)?
            }
            _ => Asset::new(mesh, coords, attrs, dual_vertices, self.resolution)?,
        };
        let asset = if oriented.is_empty() {
            asset
        } else {
            asset.with_oriented_faces(oriented)?
        };
        match self.splat_patches.take() {
            Some(patches) => asset.with_splat_patches(patches),
            None => Ok(asset),
        }
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

    fn voxels(n: usize) -> (Tensor, Tensor) {
        let rows: Vec<i32> = (0..n as i32).flat_map(|i| [0, i, 1, 2]).collect();
        let coords = Tensor::from_vec(rows, (n, 4), &Device::Cpu).unwrap();
        let raw = Tensor::zeros((n, 7), DType::F16, &Device::Cpu).unwrap();
        (coords, raw)
    }

    /// Every copy of a task gets the one surface its thread built (the arrays moved out once,
    /// copied for a second holder).
    #[test]
    fn a_surface_task_is_shared_by_its_copies() {
        let (coords, raw) = voxels(3);
        let task = SurfaceTask::start(&coords, &raw, 8, None).unwrap();
        let copy = task.clone();
        let a = task.wait().unwrap();
        let b = copy.wait().unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(
            a.geometry.voxel_coords(),
            [[0, 1, 2], [1, 1, 2], [2, 1, 2]].as_slice()
        );
        assert_eq!(a.geometry.dual_vertices().len(), 3);
    }

    /// A failed extraction is an error for every waiter, not a panic.
    #[test]
    fn a_failed_surface_is_an_error_for_every_copy() {
        let (coords, raw) = voxels(2);
        let task = SurfaceTask::start(&coords, &raw, 0, None).unwrap();
        let copy = task.clone();
        let e = format!("{:#}", task.wait().unwrap_err());
        assert!(e.contains("mesh extraction"), "{e}");
        assert_eq!(format!("{:#}", copy.wait().unwrap_err()), e);
        let (coords, _) = voxels(2);
        let (_, raw) = voxels(3);
        let e = format!(
            "{:#}",
            SurfaceTask::start(&coords, &raw, 8, None)
                .unwrap()
                .wait()
                .unwrap_err()
        );
        assert!(
            e.contains("shape decoder voxels") || e.contains("mesh extraction"),
            "{e}"
        );
    }

    /// The asset takes the texture decoder's attributes onto the geometry the surface thread
    /// checked; arrays changed since (the fields are public) are taken as they are instead.
    #[test]
    fn take_asset_gives_the_arrays_as_they_are_now() {
        let (coords, raw) = voxels(3);
        let task = SurfaceTask::start(&coords, &raw, 8, None).unwrap();
        let attrs = Tensor::full(0.75f32, (3, PBR_CHANNELS), &Device::Cpu).unwrap();
        let voxels = DecodedVoxels::start(task, &attrs, 8).unwrap();
        let mut g = Generated::pending(PipelineType::P512, voxels, Default::default(), Vec::new());
        g.extract_mesh().unwrap();
        assert!(
            g.geometry.is_some(),
            "the surface thread built the geometry"
        );
        let mut moved = g.clone();
        moved.dual_vertices[1][2] += 0.25;
        let duals = g.dual_vertices.clone();
        let a = g.take_asset().unwrap();
        assert_eq!(a.dual_vertices(), duals.as_slice());
        assert_eq!(a.voxel_attrs(), [[0.75; PBR_CHANNELS]; 3].as_slice());
        assert_eq!(
            a.voxel_coords(),
            [[0, 1, 2], [1, 1, 2], [2, 1, 2]].as_slice()
        );
        assert!(g.mesh.vertices.is_empty() && g.voxel_attrs.is_empty());
        let b = moved.take_asset().unwrap();
        assert_eq!(b.dual_vertices()[1][2], duals[1][2] + 0.25);
        assert_eq!(b.voxel_attrs(), a.voxel_attrs());
    }

    /// Faces a caller wound the other way are the asset's, whether the surface thread's
    /// geometry is reused or the asset is built again.
    #[test]
    fn take_asset_keeps_the_callers_face_winding() {
        // A 3×3×3 block whose every edge is crossed: a closed surface of several faces.
        let rows: Vec<i32> = (0..27)
            .flat_map(|i| [0, i % 3 + 1, i / 3 % 3 + 1, i / 9 + 1])
            .collect();
        let coords = Tensor::from_vec(rows, (27, 4), &Device::Cpu).unwrap();
        let raw = Tensor::ones((27, 7), DType::F16, &Device::Cpu).unwrap();
        let attrs = Tensor::full(0.5f32, (27, PBR_CHANNELS), &Device::Cpu).unwrap();
        let task = SurfaceTask::start(&coords, &raw, 8, None).unwrap();
        let mut g = Generated::pending(
            PipelineType::P512,
            DecodedVoxels::start(task, &attrs, 8).unwrap(),
            Default::default(),
            Vec::new(),
        );
        g.extract_mesh().unwrap();
        assert!(g.mesh.faces.len() > 1, "{} faces", g.mesh.faces.len());
        let wound = g.oriented_faces.clone();
        for reuse in [true, false] {
            let mut g = g.clone();
            if !reuse {
                g.geometry = None;
            }
            let [x, y, z] = wound[0];
            g.oriented_faces[0] = [x, z, y];
            let a = g.take_asset().unwrap();
            assert_eq!(a.oriented_faces()[0], [x, z, y], "reuse {reuse}");
            assert_eq!(a.oriented_faces()[1..], wound[1..], "reuse {reuse}");
        }
    }

    /// The asset straight from the surface thread is the one `extract_mesh` + `take_asset`
    /// give, without the public arrays; the mesh latents only when asked for.
    #[test]
    fn extract_asset_is_extract_mesh_then_take_asset() {
        let (coords, raw) = voxels(3);
        let attrs = Tensor::arange(0f32, 18.0, &Device::Cpu)
            .unwrap()
            .reshape((3, PBR_CHANNELS))
            .unwrap();
        let pending = || {
            let task = SurfaceTask::start(&coords, &raw, 8, Some(SplatShape::default())).unwrap();
            let voxels = DecodedVoxels::start(task, &attrs, 8).unwrap();
            Generated::pending(PipelineType::P512, voxels, Default::default(), Vec::new())
        };
        let mut both = pending();
        both.extract_mesh().unwrap();
        assert_eq!(both.voxel_coords[2], [0, 2, 1, 2]);
        let want = both.take_asset().unwrap();
        for mesh_latents in [false, true] {
            let mut g = pending();
            let got = g.extract_asset(mesh_latents).unwrap();
            assert_eq!(got.mesh().vertices, want.mesh().vertices);
            assert_eq!(got.mesh().faces, want.mesh().faces);
            assert_eq!(got.voxel_coords(), want.voxel_coords());
            assert_eq!(got.voxel_attrs(), want.voxel_attrs());
            assert_eq!(got.voxel_attrs()[1], [6.0, 7.0, 8.0, 9.0, 10.0, 11.0]);
            assert_eq!(got.dual_vertices(), want.dual_vertices());
            assert_eq!(got.oriented_faces(), want.oriented_faces());
            assert!(got.splat_patches().is_some());
            assert!(g.mesh.vertices.is_empty() && g.voxel_coords.is_empty());
            assert!(g.voxels.is_none());
            assert_eq!(g.latents.get("mesh.0.vertices").is_some(), mesh_latents);
            assert_eq!(g.latents.get("mesh.0.faces").is_some(), mesh_latents);
            // Done: the second call takes what is left (nothing).
            assert!(g.extract_asset(true).is_err());
        }
    }

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
