//! What the writers export for one generated object, checked once so every writer can trust it.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;

use super::face_orientation::faces_wound_outward;
use super::splat_fit::SplatPatches;
use crate::mesh::dual_grid::voxel_size;
use crate::mesh::{decimate, Mesh, VoxelAttributes, VoxelIndex, PBR_ATTRIBUTE_WEIGHTS};

/// Channels of the texture decoder's voxels (docs/MODEL.md §1.6): base colour RGB, metallic, roughness,
/// alpha, all nominally in [0, 1] (the network's values are not clamped; writers clamp).
pub const PBR_CHANNELS: usize = 6;
/// Channel of the metallic factor.
pub const METALLIC: usize = 3;
/// Channel of the roughness factor.
pub const ROUGHNESS: usize = 4;
/// Channel of the alpha (coverage).
pub const ALPHA: usize = 5;

/// One generated object in the pipeline frame (`[-0.5, 0.5]³`, Z up; see [`super::frame`]).
///
/// * `mesh`: the extracted surface after hole filling.
/// * voxels: the texture decoder's voxels at `coords` (`x, y, z` on a `resolution³` grid) with
///   their PBR attributes (see [`PBR_CHANNELS`]).
/// * `dual_vertices`: one dual-grid vertex per voxel, in voxel order, in world units (the first
///   rows of the mesh's vertices before hole filling).
#[derive(Clone)]
pub struct Asset {
    mesh: Mesh,
    /// Shared with the decimated copies ([`Asset::decimated`]): only the mesh differs.
    voxels: Arc<Voxels>,
    /// The mesh's faces wound outward, when already known: given ([`Asset::with_oriented_faces`])
    /// or computed once by [`Asset::prepare_mesh_outputs`]; absent, each use computes them.
    oriented_faces: OnceLock<Vec<[u32; 3]>>,
    /// The attributes at the mesh's vertices, row-major `[vertices, 6]`, when already known:
    /// computed once by [`Asset::prepare_mesh_outputs`] or, for a decimated asset, carried over
    /// from the decimation; absent, each use computes them.
    vertex_attributes: OnceLock<Vec<f32>>,
    /// The voxels' splat patches but their colours, when computed ahead
    /// ([`Asset::with_splat_patches`]).
    splat_patches: Option<Arc<SplatPatches>>,
}

/// The voxels and what is derived from them alone.
#[derive(Clone)]
struct Voxels {
    coords: Vec<[i32; 3]>,
    attrs: Vec<[f32; PBR_CHANNELS]>,
    dual_vertices: Vec<[f32; 3]>,
    resolution: u32,
    index: VoxelIndex,
}

impl std::fmt::Debug for Asset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Asset")
            .field("vertices", &self.mesh.vertices.len())
            .field("faces", &self.mesh.faces.len())
            .field("voxels", &self.voxels.coords.len())
            .field("resolution", &self.voxels.resolution)
            .finish_non_exhaustive()
    }
}

/// Fails on the first non-finite attribute.
fn check_attributes(attrs: &[[f32; PBR_CHANNELS]]) -> Result<()> {
    if let Some(row) = attrs.iter().position(|a| a.iter().any(|v| !v.is_finite())) {
        bail!(
            "export: voxel {row} has a non-finite attribute {:?}",
            attrs[row]
        );
    }
    Ok(())
}

impl Asset {
    /// Checks and bundles one object's outputs. Fails on no voxels, rows that disagree in
    /// number, a zero resolution, coordinates outside the grid or repeated, non-finite values,
    /// or faces that point past the vertex list. A mesh without faces is accepted (the splats
    /// can still be written); the mesh writers refuse it.
    pub fn new(
        mesh: Mesh,
        voxel_coords: Vec<[i32; 3]>,
        voxel_attrs: Vec<[f32; PBR_CHANNELS]>,
        dual_vertices: Vec<[f32; 3]>,
        resolution: u32,
    ) -> Result<Self> {
        let n = voxel_coords.len();
        ensure!(n > 0, "export: the object has no voxels");
        ensure!(
            voxel_attrs.len() == n,
            "export: {} voxel attribute rows for {n} voxels",
            voxel_attrs.len()
        );
        ensure!(
            dual_vertices.len() == n,
            "export: {} dual vertices for {n} voxels",
            dual_vertices.len()
        );
        ensure!(resolution > 0, "export: grid resolution must be positive");
        let index = VoxelIndex::build(&voxel_coords, resolution).context("export: voxels")?;
        check_attributes(&voxel_attrs)?;
        if let Some(row) = dual_vertices
            .iter()
            .position(|p| p.iter().any(|v| !v.is_finite()))
        {
            bail!(
                "export: dual vertex {row} is not finite: {:?}",
                dual_vertices[row]
            );
        }
        mesh.check_indices().context("export: mesh")?;
        if let Some(row) = mesh
            .vertices
            .iter()
            .position(|p| p.iter().any(|v| !v.is_finite()))
        {
            bail!(
                "export: mesh vertex {row} is not finite: {:?}",
                mesh.vertices[row]
            );
        }
        Ok(Self {
            mesh,
            voxels: Arc::new(Voxels {
                coords: voxel_coords,
                attrs: voxel_attrs,
                dual_vertices,
                resolution,
                index,
            }),
            oriented_faces: OnceLock::new(),
            vertex_attributes: OnceLock::new(),
            splat_patches: None,
        })
    }

    /// The same surface and voxels with `attrs` as their attributes, checked as [`Asset::new`]
    /// checks them: the pipeline builds and checks the geometry with placeholder attributes
    /// beside the texture stages, and the texture decoder's are given here. What depends on the
    /// attributes (the colours at the vertices) is computed again; the outward faces and the
    /// splat patches, which do not, are kept.
    pub fn with_attributes(self, attrs: Vec<[f32; PBR_CHANNELS]>) -> Result<Self> {
        ensure!(
            attrs.len() == self.voxels.coords.len(),
            "export: {} voxel attribute rows for {} voxels",
            attrs.len(),
            self.voxels.coords.len()
        );
        check_attributes(&attrs)?;
        // The only holder (the usual case) gives its voxels up; a shared one is copied.
        let mut voxels = Arc::try_unwrap(self.voxels).unwrap_or_else(|shared| (*shared).clone());
        voxels.attrs = attrs;
        Ok(Self {
            voxels: Arc::new(voxels),
            vertex_attributes: OnceLock::new(),
            ..self
        })
    }

    /// Whether this asset's surface and voxels are these arrays, value for value (the
    /// pipeline's check that the geometry it built ahead still matches its public arrays).
    pub(crate) fn has_geometry(
        &self,
        mesh: &Mesh,
        voxel_coords: &[[i32; 3]],
        dual_vertices: &[[f32; 3]],
        resolution: u32,
    ) -> bool {
        // Hundreds of MB at `1024`: compared on all cores.
        fn same<T: PartialEq + Sync>(a: &[T], b: &[T]) -> bool {
            a.len() == b.len()
                && a.par_chunks(1 << 16)
                    .zip(b.par_chunks(1 << 16))
                    .all(|(a, b)| a == b)
        }
        self.voxels.resolution == resolution
            && same(&self.mesh.faces, &mesh.faces)
            && same(&self.mesh.vertices, &mesh.vertices)
            && same(&self.voxels.coords, voxel_coords)
            && same(&self.voxels.dual_vertices, dual_vertices)
    }

    /// The same, with its voxels' splat patches computed ahead
    /// ([`super::splat_fit::splat_patches`] of an asset with the same mesh and voxels, its
    /// attributes possibly placeholders): the splat fit then only adds the colours. Fails when
    /// their count is not the voxels'.
    pub fn with_splat_patches(mut self, patches: Arc<SplatPatches>) -> Result<Self> {
        ensure!(
            patches.len() == self.voxels.coords.len(),
            "export: {} splat patches for {} voxels",
            patches.len(),
            self.voxels.coords.len()
        );
        self.splat_patches = Some(patches);
        Ok(self)
    }

    /// The splat patches given by [`Asset::with_splat_patches`].
    pub(crate) fn splat_patches(&self) -> Option<&SplatPatches> {
        self.splat_patches.as_deref()
    }

    /// The same, with its mesh's faces wound outward already known: `faces` must be
    /// [`faces_wound_outward`] of the mesh (the pipeline orients them while the texture stages
    /// run); they replace any known before. Fails when they are not the mesh's faces, each
    /// possibly re-wound.
    pub fn with_oriented_faces(mut self, faces: Vec<[u32; 3]>) -> Result<Self> {
        let f = &self.mesh.faces;
        ensure!(
            faces.len() == f.len(),
            "export: {} oriented faces for {} faces",
            faces.len(),
            f.len()
        );
        // Re-winding swaps two corners: the same three vertices.
        let sorted = |mut t: [u32; 3]| {
            t.sort_unstable();
            t
        };
        if let Some(row) = (0..f.len())
            .into_par_iter()
            .find_first(|&i| sorted(faces[i]) != sorted(f[i]))
        {
            bail!(
                "export: oriented face {row} {:?} is not face {:?}",
                faces[row],
                f[row]
            );
        }
        self.oriented_faces = OnceLock::from(faces);
        Ok(self)
    }

    /// The same from the flat row-major tensors the pipeline holds: `coords` `[V, 4]`
    /// (batch, x, y, z; one batch item only), `attrs` `[V, 6]`, `dual_vertices` `[V, 3]`.
    pub fn from_rows(
        mesh: Mesh,
        coords: &[i32],
        attrs: &[f32],
        dual_vertices: &[f32],
        resolution: u32,
    ) -> Result<Self> {
        let rows = |what: &str, len: usize, width: usize| -> Result<usize> {
            ensure!(
                len.is_multiple_of(width),
                "export: {what} has {len} values, not a whole number of rows of {width}"
            );
            Ok(len / width)
        };
        rows("voxel coords", coords.len(), 4)?;
        rows("voxel attributes", attrs.len(), PBR_CHANNELS)?;
        rows("dual vertices", dual_vertices.len(), 3)?;
        if let Some(first) = coords.first() {
            if let Some(row) = coords.chunks_exact(4).position(|c| c[0] != *first) {
                bail!(
                    "export: voxel {row} belongs to batch item {} but voxel 0 to {first}; \
                     export one object at a time",
                    coords[row * 4]
                );
            }
        }
        Self::new(
            mesh,
            coords.chunks_exact(4).map(|c| [c[1], c[2], c[3]]).collect(),
            attrs
                .chunks_exact(PBR_CHANNELS)
                .map(|a| std::array::from_fn(|k| a[k]))
                .collect(),
            dual_vertices
                .chunks_exact(3)
                .map(|p| [p[0], p[1], p[2]])
                .collect(),
            resolution,
        )
    }

    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    pub fn voxel_coords(&self) -> &[[i32; 3]] {
        &self.voxels.coords
    }

    pub fn voxel_attrs(&self) -> &[[f32; PBR_CHANNELS]] {
        &self.voxels.attrs
    }

    pub fn dual_vertices(&self) -> &[[f32; 3]] {
        &self.voxels.dual_vertices
    }

    pub fn resolution(&self) -> u32 {
        self.voxels.resolution
    }

    /// Number of voxels (= splats).
    pub fn voxel_count(&self) -> usize {
        self.voxels.coords.len()
    }

    /// Side of one voxel in world units (`1 / resolution`, computed as upstream does).
    pub fn voxel_size(&self) -> f32 {
        voxel_size(self.voxels.resolution)
    }

    /// Row of the voxel at `coord`, if there is one.
    pub fn voxel_at(&self, coord: [i32; 3]) -> Option<usize> {
        self.voxels.index.get(coord).map(|r| r as usize)
    }

    /// The PBR attributes trilinearly sampled at every mesh vertex (docs/MODEL.md §6.4), row-major
    /// `[vertices, 6]`.
    pub fn mesh_vertex_attributes(&self) -> Result<Vec<f32>> {
        Ok(self.vertex_attributes()?.into_owned())
    }

    /// [`Asset::mesh_vertex_attributes`], borrowed when [`Asset::prepare_mesh_outputs`] (or
    /// the decimation) already computed them.
    pub fn vertex_attributes(&self) -> Result<Cow<'_, [f32]>> {
        Ok(match self.vertex_attributes.get() {
            Some(a) => Cow::Borrowed(a),
            None => Cow::Owned(self.attribute_volume()?.sample(&self.mesh.vertices)),
        })
    }

    /// The mesh's faces wound outward ([`faces_wound_outward`]), borrowed when
    /// [`Asset::prepare_mesh_outputs`] already computed them.
    pub fn oriented_faces(&self) -> Cow<'_, [[u32; 3]]> {
        match self.oriented_faces.get() {
            Some(f) => Cow::Borrowed(f),
            None => Cow::Owned(faces_wound_outward(&self.mesh)),
        }
    }

    /// Computes, once, what the mesh PLY, the GLB and the decimation all start from: the
    /// faces wound outward and the attributes at the vertices (side by side), those not known
    /// yet. The writers then reuse them; their output is the same as without this call. Call
    /// it before the writers start (a writer running meanwhile computes its own copy); a
    /// second call does nothing. (The cells are set once and never waited for: a reader that
    /// finds one unset computes the same values itself; a blocking lazy cell could deadlock
    /// inside rayon's work stealing.)
    pub fn prepare_mesh_outputs(&self) -> Result<()> {
        let faces = || {
            if self.oriented_faces.get().is_none() {
                // Set by a concurrent call meanwhile: the same values.
                let _ = self.oriented_faces.set(faces_wound_outward(&self.mesh));
            }
        };
        let attributes = || -> Result<()> {
            if self.vertex_attributes.get().is_none() {
                let a = self.attribute_volume()?.sample(&self.mesh.vertices);
                let _ = self.vertex_attributes.set(a);
            }
            Ok(())
        };
        rayon::join(faces, attributes).1
    }

    /// The voxels' PBR attributes as a volume to sample anywhere (the vertex colours' and the
    /// baked textures' source).
    pub fn attribute_volume(&self) -> Result<VoxelAttributes> {
        // The asset's index is the one the coordinates would build: cloned, not rebuilt.
        VoxelAttributes::with_index(
            self.voxels.index.clone(),
            self.voxels.attrs.as_flattened().to_vec(),
            PBR_CHANNELS,
            self.voxels.resolution,
        )
        .context("export: voxel attributes")
    }

    /// The same object with its mesh decimated to at most `target_faces` triangles
    /// ([`crate::mesh::decimate`]): faces wound outward first, the PBR attributes sampled at
    /// the vertices weighted in so that colour and material seams survive. Decimated vertices
    /// are input vertices, so the writers' attribute lookup gives them the same values.
    pub fn decimated(&self, target_faces: usize) -> Result<Self> {
        Ok(self.decimated_and_oriented(target_faces)?.0)
    }

    /// [`Asset::decimated`], and the full mesh wound outward as it was before decimating (the
    /// raw surface a normal map is baked from, without orienting it twice).
    pub fn decimated_and_oriented(&self, target_faces: usize) -> Result<(Self, Mesh)> {
        let oriented = self.oriented_mesh();
        let attrs = self.vertex_attributes()?;
        let out = decimate(&oriented, &attrs, &PBR_ATTRIBUTE_WEIGHTS, target_faces)
            .context("export: decimation")?;
        let reduced = Self {
            mesh: out.mesh,
            voxels: Arc::clone(&self.voxels),
            // Decimated vertices are input vertices with their input rows: sampling them again
            // gives the same values. Their faces are re-oriented when written.
            oriented_faces: OnceLock::new(),
            vertex_attributes: OnceLock::from(out.attributes),
            // A decimated mesh's patches are not the full mesh's.
            splat_patches: None,
        };
        Ok((reduced, oriented))
    }

    /// The mesh with its faces wound outward ([`faces_wound_outward`]).
    pub fn oriented_mesh(&self) -> Mesh {
        // Copied in parallel: at 1024 these are tens of MB, on the GLB's critical path.
        let faces = match self.oriented_faces() {
            Cow::Borrowed(f) => f.par_iter().copied().collect(),
            Cow::Owned(f) => f,
        };
        Mesh {
            vertices: self.mesh.vertices.par_iter().copied().collect(),
            faces,
        }
    }

    /// Mean of one attribute channel over the voxels, clamped to [0, 1].
    pub(crate) fn mean_attribute(&self, channel: usize) -> f32 {
        let sum: f64 = self
            .voxels
            .attrs
            .iter()
            .map(|a| f64::from(a[channel]))
            .sum();
        ((sum / self.voxels.attrs.len() as f64) as f32).clamp(0.0, 1.0)
    }
}
