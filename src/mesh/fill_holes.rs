//! Closes small holes by fanning each short boundary loop around its centroid (docs/MODEL.md §6.3).
//!
//! Upstream: `trellis2/representations/mesh/base.py:Mesh.fill_holes` @ 5565d24, which runs
//! CuMesh (JeffreyXiang/CuMesh `src/connectivity.cu` boundary loops, `src/clean_up.cu:fill_holes`).
//! Same definitions: boundary edges are used by exactly one face; they are chained only through
//! manifold boundary vertices (exactly two boundary edges, no edge with more than two faces);
//! a chain is a loop when every edge meets another edge of the same chain at both ends; loops
//! with perimeter below the limit get one new vertex (mean of the edge midpoints) and one
//! triangle `(max, min, new)` per edge. CuMesh's order of loops comes from parallel
//! union-find; here loops are ordered by their smallest edge and edges by (min, max) vertex,
//! which is what that union-find converges to, so the output is deterministic.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use rayon::prelude::*;

use super::error::{MeshError, Result};
use super::triangle_mesh::Mesh;

/// Upstream's default largest perimeter of a hole that gets filled, in world units (the object
/// spans `[-0.5, 0.5]³`).
pub const DEFAULT_MAX_HOLE_PERIMETER: f32 = 3e-2;

/// What [`fill_holes`] found and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FillHolesReport {
    /// Edges used by exactly one face, before filling.
    pub boundary_edges: usize,
    /// Boundary loops found (filled or not).
    pub boundary_loops: usize,
    /// Loops shorter than the limit, each closed with one new vertex.
    pub holes_filled: usize,
}

/// Fills every boundary loop with perimeter `< max_hole_perimeter`, appending the new
/// vertices and faces after the existing ones. Existing vertices and faces are untouched.
pub fn fill_holes(mesh: &mut Mesh, max_hole_perimeter: f32) -> Result<FillHolesReport> {
    if !max_hole_perimeter.is_finite() || max_hole_perimeter < 0.0 {
        return Err(MeshError::BadParameter {
            name: "max_hole_perimeter",
            value: f64::from(max_hole_perimeter),
        });
    }
    mesh.check_indices()?;
    let num_vertices = mesh.vertices.len();

    let (boundary, over_shared_vertices) = boundary_edges(&mesh.faces, num_vertices);
    let mut report = FillHolesReport {
        boundary_edges: boundary.len(),
        ..Default::default()
    };
    if boundary.is_empty() {
        return Ok(report);
    }

    // Vertex → incident boundary edges (CSR), in boundary-edge order.
    let mut offsets = vec![0u32; num_vertices + 1];
    for &[a, b] in &boundary {
        offsets[a as usize + 1] += 1;
        offsets[b as usize + 1] += 1;
    }
    for v in 0..num_vertices {
        offsets[v + 1] += offsets[v];
    }
    let mut fill = offsets.clone();
    let mut incident = vec![0u32; 2 * boundary.len()];
    for (e, &[a, b]) in boundary.iter().enumerate() {
        for v in [a, b] {
            incident[fill[v as usize] as usize] = e as u32;
            fill[v as usize] += 1;
        }
    }
    let incident_of =
        |v: u32| &incident[offsets[v as usize] as usize..offsets[v as usize + 1] as usize];

    // Chain boundary edges through manifold boundary vertices; the root of a chain is its
    // smallest edge index (CuMesh hooks the larger root under the smaller one).
    let mut parent: Vec<u32> = (0..boundary.len() as u32).collect();
    for v in 0..num_vertices as u32 {
        // More than two boundary edges also makes a vertex non-manifold.
        let edges = incident_of(v);
        if edges.len() == 2 && !over_shared_vertices[v as usize] {
            let (ra, rb) = (find(&mut parent, edges[0]), find(&mut parent, edges[1]));
            let (low, high) = (ra.min(rb), ra.max(rb));
            parent[high as usize] = low;
        }
    }
    let root: Vec<u32> = (0..boundary.len() as u32)
        .map(|e| find(&mut parent, e))
        .collect();

    // A chain is a loop when each of its edges meets another edge of the chain at both ends.
    let mut is_loop = vec![true; boundary.len()];
    for (e, &[a, b]) in boundary.iter().enumerate() {
        let closed_at = |v: u32| {
            incident_of(v)
                .iter()
                .any(|&other| other as usize != e && root[other as usize] == root[e])
        };
        if !(closed_at(a) && closed_at(b)) {
            is_loop[root[e] as usize] = false;
        }
    }

    // Group loop edges by loop (roots ascending), edges ascending inside each loop.
    let mut loop_of_root = vec![u32::MAX; boundary.len()];
    let mut loops: Vec<Vec<u32>> = Vec::new();
    for (e, &r) in root.iter().enumerate() {
        let r = r as usize;
        if !is_loop[r] {
            continue;
        }
        if loop_of_root[r] == u32::MAX {
            loop_of_root[r] = loops.len() as u32;
            loops.push(Vec::new());
        }
        loops[loop_of_root[r] as usize].push(e as u32);
    }
    report.boundary_loops = loops.len();

    let vertices = &mesh.vertices;
    let mut new_vertices = Vec::new();
    let mut new_faces = Vec::new();
    for edges in &loops {
        // Upstream works on (v_max, v_min): edge keys store min in the high half, max in the low.
        let ends = |e: u32| {
            let [lo, hi] = boundary[e as usize];
            (vertices[hi as usize], vertices[lo as usize])
        };
        let perimeter: f32 = edges
            .iter()
            .map(|&e| {
                let (p0, p1) = ends(e);
                let d = [p1[0] - p0[0], p1[1] - p0[1], p1[2] - p0[2]];
                (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt()
            })
            .sum();
        if perimeter.is_nan() || perimeter >= max_hole_perimeter {
            continue;
        }
        let mut centre = [0.0f32; 3];
        for &e in edges {
            let (p0, p1) = ends(e);
            for k in 0..3 {
                centre[k] += (p0[k] + p1[k]) * 0.5;
            }
        }
        let count = edges.len() as f32;
        let new_index = num_vertices + new_vertices.len();
        if new_index >= u32::MAX as usize {
            return Err(MeshError::TooMany {
                what: "vertices",
                count: new_index + 1,
            });
        }
        new_vertices.push(centre.map(|c| c / count));
        for &e in edges {
            let [lo, hi] = boundary[e as usize];
            new_faces.push([hi, lo, new_index as u32]);
        }
    }
    report.holes_filled = new_vertices.len();
    mesh.vertices.extend(new_vertices);
    mesh.faces.extend(new_faces);
    Ok(report)
}

/// Boundary edges `[min, max]` sorted ascending, and a per-vertex flag for vertices on an
/// edge shared by more than two faces (those never chain boundary edges).
/// Face indices must be below `num_vertices`.
///
/// The faces' edge keys (`min << 32 | max`) are grouped without a global sort: counted per
/// low vertex, scattered into one bucket per low vertex (any order), each small bucket sorted.
/// Equal keys share a bucket, so scanning the buckets in order sees every edge's uses together
/// and in ascending order, as one sort of all keys would; the result does not depend on the
/// thread count.
fn boundary_edges(faces: &[[u32; 3]], num_vertices: usize) -> (Vec<[u32; 2]>, Vec<bool>) {
    let key = |a: u32, b: u32| (u64::from(a.min(b)) << 32) | u64::from(a.max(b));
    let edges = |[a, b, c]: [u32; 3]| [key(a, b), key(b, c), key(c, a)];
    let counts: Vec<AtomicUsize> = (0..num_vertices).map(|_| AtomicUsize::new(0)).collect();
    faces.par_iter().for_each(|&f| {
        for k in edges(f) {
            counts[(k >> 32) as usize].fetch_add(1, Ordering::Relaxed);
        }
    });
    let mut starts = Vec::with_capacity(num_vertices + 1);
    let mut total = 0usize;
    for c in &counts {
        starts.push(total);
        total += c.load(Ordering::Relaxed);
    }
    starts.push(total);
    drop(counts);
    let cursor: Vec<AtomicUsize> = starts[..num_vertices]
        .iter()
        .map(|&s| AtomicUsize::new(s))
        .collect();
    let scattered: Vec<AtomicU64> = (0..total).map(|_| AtomicU64::new(0)).collect();
    faces.par_iter().for_each(|&f| {
        for k in edges(f) {
            let at = cursor[(k >> 32) as usize].fetch_add(1, Ordering::Relaxed);
            scattered[at].store(k, Ordering::Relaxed);
        }
    });
    drop(cursor);
    let mut keys: Vec<u64> = scattered
        .into_par_iter()
        .map(AtomicU64::into_inner)
        .collect();

    // Fixed ranges of low vertices per task: each sorts its buckets and scans them.
    const VERTICES_PER_TASK: usize = 1 << 12;
    let mut chunks: Vec<&mut [u64]> = Vec::new();
    let mut rest = keys.as_mut_slice();
    for v0 in (0..num_vertices).step_by(VERTICES_PER_TASK) {
        let v1 = (v0 + VERTICES_PER_TASK).min(num_vertices);
        let (head, tail) = rest.split_at_mut(starts[v1] - starts[v0]);
        chunks.push(head);
        rest = tail;
    }
    let found: Vec<(Vec<[u32; 2]>, Vec<u32>)> = chunks
        .into_par_iter()
        .enumerate()
        .map(|(t, chunk)| {
            let v0 = t * VERTICES_PER_TASK;
            let v1 = (v0 + VERTICES_PER_TASK).min(num_vertices);
            for v in v0..v1 {
                chunk[starts[v] - starts[v0]..starts[v + 1] - starts[v0]].sort_unstable();
            }
            let mut boundary = Vec::new();
            let mut over_shared = Vec::new();
            let mut i = 0;
            while i < chunk.len() {
                let mut j = i + 1;
                while j < chunk.len() && chunk[j] == chunk[i] {
                    j += 1;
                }
                let (lo, hi) = ((chunk[i] >> 32) as u32, chunk[i] as u32);
                match j - i {
                    1 => boundary.push([lo, hi]),
                    2 => {}
                    _ => over_shared.extend([lo, hi]),
                }
                i = j;
            }
            (boundary, over_shared)
        })
        .collect();
    let mut boundary = Vec::new();
    let mut over_shared = vec![false; num_vertices];
    for (b, o) in found {
        boundary.extend(b);
        for v in o {
            over_shared[v as usize] = true;
        }
    }
    (boundary, over_shared)
}

/// Union-find root with path halving.
fn find(parent: &mut [u32], mut e: u32) -> u32 {
    while parent[e as usize] != e {
        let grand = parent[parent[e as usize] as usize];
        parent[e as usize] = grand;
        e = grand;
    }
    e
}
