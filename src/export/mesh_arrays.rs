//! The per-vertex arrays both mesh writers (PLY and GLB) store, computed once the same way so
//! the two files hold the same mesh.

use anyhow::{ensure, Result};
use rayon::prelude::*;

use super::asset::{Asset, ALPHA, PBR_CHANNELS};
use super::color::unit_to_u8;
use super::frame::Up;
use crate::mesh::triangle_mesh::vertex_normals;

/// A mesh ready to write, in the file frame.
#[derive(Clone, Debug, PartialEq)]
pub struct MeshArrays {
    pub positions: Vec<[f32; 3]>,
    /// Unit, area-weighted over the re-wound triangles: outward where the surface has an
    /// outside.
    pub normals: Vec<[f32; 3]>,
    /// The asset's triangles, re-wound consistently and outward ([`super::face_orientation`]).
    pub faces: Vec<[u32; 3]>,
    /// Base colour (8-bit sRGB, as the network's values are; see [`super::color`]) and alpha,
    /// trilinearly sampled from the voxels at each vertex and clamped to [0, 1].
    pub rgba8: Vec<[u8; 4]>,
}

impl MeshArrays {
    /// Fails when the mesh has no triangles (nothing to draw).
    pub fn new(asset: &Asset, up: Up) -> Result<Self> {
        let mesh = asset.mesh();
        ensure!(
            !mesh.faces.is_empty(),
            "export: the mesh has no triangles ({} vertices); nothing to write",
            mesh.vertices.len()
        );
        // Both computed once per asset when it was prepared for the mesh outputs.
        let (faces, attrs) = rayon::join(|| asset.oriented_faces(), || asset.vertex_attributes());
        let (faces, attrs) = (faces.into_owned(), attrs?);
        // Area-weighted, now that the faces agree; unit length, [0, 0, 1] where undefined.
        // The asset checked the indices.
        let normals = vertex_normals(&mesh.vertices, &faces);
        let rgba8 = attrs
            .par_chunks_exact(PBR_CHANNELS)
            .map(|a| {
                [
                    unit_to_u8(a[0]),
                    unit_to_u8(a[1]),
                    unit_to_u8(a[2]),
                    unit_to_u8(a[ALPHA]),
                ]
            })
            .collect();
        Ok(Self {
            positions: mesh.vertices.par_iter().map(|&p| up.apply(p)).collect(),
            normals: normals.into_par_iter().map(|n| up.apply(n)).collect(),
            faces,
            rgba8,
        })
    }
}
