//! Mesh decimation to a face budget: quadric-error edge collapses with per-vertex attributes
//! weighted into the error, so that silhouettes and colour/material seams survive longest.
//!
//! The simplifier is meshoptimizer's (`meshopt_simplifyWithAttributes`) through
//! `meshoptimizer-rs`, a pure-Rust port with byte-identical output: no C++ toolchain is needed
//! for any target. Collapses only move a vertex onto a neighbour, so every output vertex is an
//! input vertex and keeps its attributes exactly. The simplifier keeps the topology of
//! manifold input (no new borders, no flipped triangles) and does not collapse along borders
//! except with each other.
//!
//! Upstream decimates its GLB to a face target as well (its app's default is 300,000 faces).

use std::collections::HashSet;

use meshoptimizer_rs::{
    simplify_with_attributes, Attributes, Limits, Positions, SimplifyOptions, SimplifySettings,
    Workspace,
};

use super::error::{MeshError, Result};
use super::triangle_mesh::Mesh;

/// Error weights of the six PBR channels (base colour RGB, metallic, roughness, alpha; values
/// in [0, 1]) against the position error, which the simplifier measures relative to the mesh
/// extent. Small enough that geometry still leads (a 0.1 colour step costs about as much as a
/// 1/200-extent position error), large enough that flat-coloured regions are thinned first.
pub const PBR_ATTRIBUTE_WEIGHTS: [f32; 6] = [0.05, 0.05, 0.05, 0.02, 0.02, 0.05];

/// A decimated mesh and the attribute rows of its vertices.
#[derive(Clone, Debug, PartialEq)]
pub struct Decimated {
    /// Compacted: only referenced vertices, in first-use order; no triangle repeats a vertex,
    /// no two triangles share all three vertices.
    pub mesh: Mesh,
    /// Row-major `[vertices, channels]`, the input rows of the kept vertices.
    pub attributes: Vec<f32>,
    /// The simplifier's error estimate, relative to the mesh extent (0 when nothing collapsed).
    pub relative_error: f32,
}

/// Reduces `mesh` to at most `target_faces` triangles (fewer only when the simplifier runs out
/// of collapses that keep the topology).
///
/// `attributes` is row-major `[vertices, weights.len()]`; `weights` scales each channel's
/// error against the relative position error (empty: geometry only; see
/// [`PBR_ATTRIBUTE_WEIGHTS`]). Faces must be consistently wound: the simplifier pairs
/// triangles through opposite half-edges, so an edge two neighbours traverse in the same
/// direction counts as a border (the dual grid's raw winding is not consistent; orient first,
/// as the exporters do). A target at or above the face count only compacts.
pub fn decimate(
    mesh: &Mesh,
    attributes: &[f32],
    weights: &[f32],
    target_faces: usize,
) -> Result<Decimated> {
    mesh.check_indices()?;
    if target_faces == 0 {
        return Err(MeshError::BadParameter {
            name: "target_faces",
            value: 0.0,
        });
    }
    let channels = weights.len();
    let expected = mesh.vertices.len() * channels;
    if attributes.len() != expected {
        return Err(MeshError::RowCountMismatch {
            what: "decimation attributes (values)",
            rows: attributes.len(),
            expected,
        });
    }
    if let Some(&w) = weights.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
        return Err(MeshError::BadParameter {
            name: "attribute weight",
            value: f64::from(w),
        });
    }
    let indices: Vec<u32> = mesh.faces.iter().flatten().copied().collect();
    let (kept, relative_error) = if target_faces >= mesh.faces.len() {
        (indices, 0.0)
    } else {
        let fail = |e: meshoptimizer_rs::Error| MeshError::Decimation {
            message: e.to_string(),
        };
        let attrs =
            Attributes::from_interleaved(attributes, mesh.vertices.len(), channels, channels, 0)
                .map_err(fail)?;
        // The default limits (1 GiB of scratch) are below what a 1024³ mesh needs.
        let mut workspace = Workspace::new(Limits {
            max_bytes: usize::MAX,
            max_work: u64::MAX,
        });
        let settings = SimplifySettings {
            target_index_count: target_faces * 3,
            // No error cap: the face budget decides where to stop.
            target_error: f32::MAX,
            // Regularisation keeps triangles well shaped; without it, slivers fold into fins
            // more often and colour error grows.
            options: SimplifyOptions::REGULARIZE,
        };
        let out = simplify_with_attributes(
            &indices,
            Positions::from_packed(&mesh.vertices),
            attrs,
            weights,
            None,
            settings,
            &mut workspace,
        )
        .map_err(fail)?;
        (out.indices, out.error)
    };
    Ok(compact(mesh, attributes, channels, &kept, relative_error))
}

/// Keeps the referenced vertices in first-use order; drops triangles that repeat a vertex and
/// triangles whose three vertices another triangle has too.
fn compact(
    mesh: &Mesh,
    attributes: &[f32],
    channels: usize,
    indices: &[u32],
    relative_error: f32,
) -> Decimated {
    // Collapses can fold a thin strip into two triangles on the same three vertices, a fin
    // hanging off one edge (that edge then has four triangles); dropping both copies restores
    // the input's manifoldness and topology.
    let mut corners: Vec<[u32; 3]> = indices
        .chunks_exact(3)
        .map(|t| {
            let mut c = [t[0], t[1], t[2]];
            c.sort_unstable();
            c
        })
        .collect();
    corners.sort_unstable();
    let mut doubled: HashSet<[u32; 3]> = HashSet::new();
    for pair in corners.windows(2) {
        if pair[0] == pair[1] {
            doubled.insert(pair[0]);
        }
    }
    let mut remap = vec![u32::MAX; mesh.vertices.len()];
    let mut vertices = Vec::new();
    let mut rows = Vec::new();
    let mut faces = Vec::with_capacity(indices.len() / 3);
    for t in indices.chunks_exact(3) {
        if t[0] == t[1] || t[1] == t[2] || t[0] == t[2] {
            continue;
        }
        if !doubled.is_empty() {
            let mut c = [t[0], t[1], t[2]];
            c.sort_unstable();
            if doubled.contains(&c) {
                continue;
            }
        }
        faces.push(std::array::from_fn(|k| {
            let old = t[k] as usize;
            if remap[old] == u32::MAX {
                remap[old] = vertices.len() as u32;
                vertices.push(mesh.vertices[old]);
                rows.extend_from_slice(&attributes[old * channels..(old + 1) * channels]);
            }
            remap[old]
        }));
    }
    Decimated {
        mesh: Mesh { vertices, faces },
        attributes: rows,
        relative_error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `n × n` grid of quads on the unit square, consistently wound, colour = x.
    fn plane(n: u32) -> (Mesh, Vec<f32>) {
        let mut vertices = Vec::new();
        for j in 0..=n {
            for i in 0..=n {
                vertices.push([i as f32 / n as f32, j as f32 / n as f32, 0.0]);
            }
        }
        let id = |i: u32, j: u32| j * (n + 1) + i;
        let mut faces = Vec::new();
        for j in 0..n {
            for i in 0..n {
                faces.push([id(i, j), id(i + 1, j), id(i + 1, j + 1)]);
                faces.push([id(i, j), id(i + 1, j + 1), id(i, j + 1)]);
            }
        }
        let colour = vertices.iter().map(|v| v[0]).collect();
        (Mesh { vertices, faces }, colour)
    }

    #[test]
    fn a_flat_plane_collapses_and_stays_compact() {
        let (mesh, colour) = plane(16);
        let out = decimate(&mesh, &[], &[], 64).expect("decimates");
        assert!(out.mesh.faces.len() <= 64, "{}", out.mesh.faces.len());
        assert!(!out.mesh.faces.is_empty());
        out.mesh.check_indices().expect("valid");
        let mut used = vec![false; out.mesh.vertices.len()];
        for f in &out.mesh.faces {
            assert!(f[0] != f[1] && f[1] != f[2] && f[0] != f[2]);
            for &i in f {
                used[i as usize] = true;
            }
        }
        assert!(used.iter().all(|&u| u), "unused vertex kept");
        // Attributes travel with their vertices.
        let with = decimate(&mesh, &colour, &[1.0], 64).expect("decimates");
        for (v, c) in with.mesh.vertices.iter().zip(&with.attributes) {
            assert_eq!(v[0], *c);
        }
    }

    #[test]
    fn a_target_above_the_face_count_only_compacts() {
        let (mut mesh, _) = plane(2);
        mesh.vertices.push([9.0; 3]);
        let out = decimate(&mesh, &[], &[], 1000).expect("compacts");
        assert_eq!(out.mesh.faces.len(), mesh.faces.len());
        assert_eq!(out.mesh.vertices.len(), 9);
        assert_eq!(out.relative_error, 0.0);
    }

    #[test]
    fn rejects_bad_arguments() {
        let (mesh, colour) = plane(2);
        assert!(decimate(&mesh, &[], &[], 0).is_err());
        assert!(decimate(&mesh, &colour[1..], &[1.0], 4).is_err());
        assert!(decimate(&mesh, &colour, &[f32::NAN], 4).is_err());
    }
}
