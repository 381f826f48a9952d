//! Flexible dual grid → triangle mesh (docs/MODEL.md §6.1).
//!
//! Upstream: `o-voxel/o_voxel/convert/flexible_dual_grid.py:flexible_dual_grid_to_mesh`
//! @ 5565d24, inference branch (`train=False`, split weights given). Vertex order is voxel
//! order; faces come voxel-major, then axis x, y, z, two triangles per quad — the order the
//! upstream boolean-mask indexing produces, so outputs compare index for index.

use rayon::prelude::*;

use super::error::{MeshError, Result};
use super::shape_voxels::{split_decoder_output, DualGridVoxels};
use super::triangle_mesh::Mesh;
use super::voxel_index::VoxelIndex;

/// Lower corner of the object's box (`aabb[0]` upstream; the box is `[-0.5, 0.5]³`).
pub const AABB_MIN: f32 = -0.5;
/// Upper corner of the object's box.
pub const AABB_MAX: f32 = 0.5;

/// For an edge along axis a leaving voxel `c`, the four voxels sharing it are `c + offset`,
/// listed in upstream's winding order (`edge_neighbor_voxel_offset`).
const EDGE_NEIGHBOR_OFFSETS: [[[i32; 3]; 4]; 3] = [
    [[0, 0, 0], [0, 0, 1], [0, 1, 1], [0, 1, 0]], // x-directed edge
    [[0, 0, 0], [1, 0, 0], [1, 0, 1], [0, 0, 1]], // y-directed edge
    [[0, 0, 0], [0, 1, 0], [1, 1, 0], [1, 0, 0]], // z-directed edge
];

/// Voxels per parallel work item: large enough to amortise scheduling, small enough to
/// balance two to a hundred cores.
const CHUNK: usize = 1 << 14;

/// Side length of one voxel, computed as upstream does: `(aabb[1] − aabb[0]) / grid_size`
/// in float32.
pub fn voxel_size(grid_size: u32) -> f32 {
    (AABB_MAX - AABB_MIN) / grid_size as f32
}

/// Splits quad `q` (voxel rows in winding order) into two triangles along the diagonal whose
/// endpoints have the larger product of split weights (`w0·w2 > w1·w3` → diagonal 0–2).
#[inline]
pub fn split_quad(q: [u32; 4], w: [f32; 4]) -> [[u32; 3]; 2] {
    if w[0] * w[2] > w[1] * w[3] {
        [[q[0], q[1], q[2]], [q[0], q[2], q[3]]]
    } else {
        [[q[0], q[1], q[3]], [q[3], q[1], q[2]]]
    }
}

/// Extracts the mesh of one batch item on a `grid_size³` grid spanning `[-0.5, 0.5]³`.
/// One vertex per voxel (unreferenced ones are kept, as upstream does); a quad per
/// intersected edge whose four surrounding voxels all exist.
pub fn flexible_dual_grid_to_mesh(voxels: &DualGridVoxels, grid_size: u32) -> Result<Mesh> {
    voxels.check_lengths()?;
    let index = VoxelIndex::build(&voxels.coords, grid_size)?;
    let size = voxel_size(grid_size);

    let vertices: Vec<[f32; 3]> = voxels
        .coords
        .par_iter()
        .zip(voxels.dual_vertices.par_iter())
        .map(|(c, v)| {
            // Same float32 operation order as upstream: (coords + v) * voxel_size + aabb_min.
            std::array::from_fn(|k| (c[k] as f32 + v[k]) * size + AABB_MIN)
        })
        .collect();

    let chunks: Vec<Vec<[u32; 3]>> = (0..voxels.len().div_ceil(CHUNK))
        .into_par_iter()
        .map(|chunk| {
            let rows = chunk * CHUNK..((chunk + 1) * CHUNK).min(voxels.len());
            let mut faces = Vec::new();
            for n in rows {
                push_voxel_faces(voxels, &index, n, &mut faces);
            }
            faces
        })
        .collect();
    let faces = chunks.concat();
    Ok(Mesh { vertices, faces })
}

/// Appends the triangles of voxel `n`'s intersected edges, axis x then y then z.
#[inline]
fn push_voxel_faces(
    voxels: &DualGridVoxels,
    index: &VoxelIndex,
    n: usize,
    faces: &mut Vec<[u32; 3]>,
) {
    let c = voxels.coords[n];
    for (axis, offsets) in EDGE_NEIGHBOR_OFFSETS.iter().enumerate() {
        if !voxels.intersected[n][axis] {
            continue;
        }
        let mut quad = [0u32; 4];
        let mut complete = true;
        for (q, o) in quad.iter_mut().zip(offsets) {
            match index.get([c[0] + o[0], c[1] + o[1], c[2] + o[2]]) {
                Some(row) => *q = row,
                None => {
                    complete = false;
                    break;
                }
            }
        }
        if complete {
            let w = quad.map(|q| voxels.split_weights[q as usize]);
            faces.extend(split_quad(quad, w));
        }
    }
}

/// Meshes of every batch item of the shape decoder output: `coords` `[N, 4]` (batch, x, y, z)
/// and `raw_feats` `[N, 7]` (before any activation), row-major; `grid_size` is the decoder's
/// resolution (`set_resolution`). Holes are not filled.
pub fn decoder_output_to_meshes(
    coords: &[i32],
    raw_feats: &[f32],
    grid_size: u32,
) -> Result<Vec<Mesh>> {
    if grid_size == 0 {
        return Err(MeshError::BadGridSize { grid_size });
    }
    split_decoder_output(coords, raw_feats)?
        .iter()
        .map(|voxels| flexible_dual_grid_to_mesh(voxels, grid_size))
        .collect()
}
