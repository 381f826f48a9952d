//! Triangles re-wound so that each connected piece is consistently oriented, outward.
//!
//! The dual grid winds each quad by its edge axis, not by the side the surface faces
//! (docs/MODEL.md §6.1), so vertex normals summed as wound cancel and renderers light faces at
//! random. Upstream repairs this in its GLB export with CuMesh's `unify_face_orientations`; this
//! is the same idea on the CPU:
//! 1. two triangles sharing an edge used by exactly two triangles agree when they traverse it
//!    in opposite directions; breadth-first from the lowest-numbered unvisited triangle, each
//!    newly reached neighbour is flipped when it disagrees (non-manifold edges, used by three or
//!    more triangles, do not propagate);
//! 2. each connected piece is then flipped as a whole if its signed volume about its centroid is
//!    negative — outward for closed surfaces, a consistent tie-break for open sheets.
//!
//! Orientation only swaps two corners of a triangle; the set of triangles is unchanged.
//! Sorting and breadth-first order make the result deterministic.

use std::collections::VecDeque;

use super::sym_eigen::{cross, dot};
use crate::mesh::Mesh;

/// The mesh's triangles, each possibly re-wound (two corners swapped). Indices must be valid.
pub fn faces_wound_outward(mesh: &Mesh) -> Vec<[u32; 3]> {
    let faces = &mesh.faces;
    let links = edge_links(faces);
    let mut flip = vec![false; faces.len()];
    let mut seen = vec![false; faces.len()];
    let mut queue = VecDeque::new();
    let mut piece = Vec::new();
    for start in 0..faces.len() {
        if seen[start] {
            continue;
        }
        seen[start] = true;
        queue.push_back(start);
        piece.clear();
        while let Some(f) = queue.pop_front() {
            piece.push(f);
            for &(g, same_direction) in links.of(f) {
                let g = g as usize;
                if !seen[g] {
                    seen[g] = true;
                    // Same direction along the shared edge = opposite orientations.
                    flip[g] = flip[f] ^ same_direction;
                    queue.push_back(g);
                }
            }
        }
        if signed_volume(mesh, &piece, &flip) < 0.0 {
            for &f in &piece {
                flip[f] = !flip[f];
            }
        }
    }
    faces
        .iter()
        .zip(&flip)
        .map(|(&f, &flip)| if flip { [f[0], f[2], f[1]] } else { f })
        .collect()
}

/// Six times the signed volume enclosed by `piece` (as currently oriented) about its centroid.
fn signed_volume(mesh: &Mesh, piece: &[usize], flip: &[bool]) -> f64 {
    let corners = piece.len() as f64 * 3.0;
    let mut centroid = [0.0f64; 3];
    for &f in piece {
        for &v in &mesh.faces[f] {
            for (c, p) in centroid.iter_mut().zip(mesh.vertices[v as usize]) {
                *c += f64::from(p) / corners;
            }
        }
    }
    piece
        .iter()
        .map(|&f| {
            let [a, b, c] = mesh.faces[f].map(|v| {
                let p = mesh.vertices[v as usize];
                [0, 1, 2].map(|k| f64::from(p[k]) - centroid[k])
            });
            let v = dot(a, cross(b, c));
            if flip[f] {
                -v
            } else {
                v
            }
        })
        .sum()
}

/// For every triangle, its neighbours across manifold edges and whether the neighbour
/// traverses the shared edge in the same direction. Compressed rows, in edge order.
struct EdgeLinks {
    start: Vec<usize>,
    list: Vec<(u32, bool)>,
}

impl EdgeLinks {
    fn of(&self, f: usize) -> &[(u32, bool)] {
        &self.list[self.start[f]..self.start[f + 1]]
    }
}

fn edge_links(faces: &[[u32; 3]]) -> EdgeLinks {
    // (low vertex, high vertex, face, traversed low → high), sorted to group each edge's uses.
    let mut uses: Vec<(u32, u32, u32, bool)> = Vec::with_capacity(faces.len() * 3);
    for (f, tri) in faces.iter().enumerate() {
        for k in 0..3 {
            let (a, b) = (tri[k], tri[(k + 1) % 3]);
            if a != b {
                uses.push((a.min(b), a.max(b), f as u32, a < b));
            }
        }
    }
    uses.sort_unstable();
    let mut pairs = Vec::new();
    let mut i = 0;
    while i < uses.len() {
        let mut j = i + 1;
        while j < uses.len() && (uses[j].0, uses[j].1) == (uses[i].0, uses[i].1) {
            j += 1;
        }
        if j - i == 2 && uses[i].2 != uses[i + 1].2 {
            let (f, g) = (uses[i].2, uses[i + 1].2);
            let same = uses[i].3 == uses[i + 1].3;
            pairs.push((f, g, same));
            pairs.push((g, f, same));
        }
        i = j;
    }
    pairs.sort_unstable();
    let mut start = vec![0usize; faces.len() + 1];
    for &(f, _, _) in &pairs {
        start[f as usize + 1] += 1;
    }
    for f in 0..faces.len() {
        start[f + 1] += start[f];
    }
    EdgeLinks {
        start,
        list: pairs.into_iter().map(|(_, g, same)| (g, same)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A closed octahedron around the origin; `[x, y, z]` per octant is outward in the octants
    /// with an even number of negative axes and inward in the others (a mirror reverses the
    /// winding), so half of its faces start inward.
    fn scrambled_octahedron(offset: [f32; 3]) -> Mesh {
        let mut vertices = vec![
            [1.0, 0.0, 0.0],
            [-1.0, 0.0, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, -1.0, 0.0],
            [0.0, 0.0, 1.0],
            [0.0, 0.0, -1.0],
        ];
        for v in &mut vertices {
            for k in 0..3 {
                v[k] += offset[k];
            }
        }
        let mut faces = Vec::new();
        for x in [0u32, 1] {
            for y in [2u32, 3] {
                for z in [4u32, 5] {
                    faces.push([x, y, z]);
                }
            }
        }
        Mesh::new(vertices, faces).expect("valid")
    }

    #[test]
    fn every_face_ends_up_outward_and_vertex_normals_stop_cancelling() {
        for offset in [[0.0; 3], [3.0, -2.0, 7.0]] {
            let mesh = scrambled_octahedron(offset);
            let faces = faces_wound_outward(&mesh);
            let mut flipped = 0;
            for (old, new) in mesh.faces.iter().zip(&faces) {
                let p = new.map(|v| {
                    let p = mesh.vertices[v as usize];
                    [0, 1, 2].map(|k| f64::from(p[k] - offset[k]))
                });
                let n = cross(
                    [0, 1, 2].map(|k| p[1][k] - p[0][k]),
                    [0, 1, 2].map(|k| p[2][k] - p[0][k]),
                );
                assert!(dot(n, p[0]) > 0.0, "{new:?} faces inward");
                flipped += usize::from(old != new);
            }
            assert_eq!(flipped, 4);
            let oriented = Mesh {
                vertices: mesh.vertices.clone(),
                faces,
            };
            for (v, n) in oriented
                .vertices
                .iter()
                .zip(oriented.vertex_normals().unwrap())
            {
                let d: f32 = (0..3).map(|k| (v[k] - offset[k]) * n[k]).sum();
                assert!(d > 0.999, "vertex {v:?} normal {n:?}");
            }
        }
    }
}
