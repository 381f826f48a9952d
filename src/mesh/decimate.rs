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
//! The simplifier runs on one thread. Large meshes are therefore simplified in rounds: each
//! round cuts its input into spatial pieces that are simplified in parallel, each with the
//! vertices it shares with other pieces locked, and joins them again. Each round cuts across
//! other directions, so the seams one round had to leave dense are interior in the next and
//! collapse there (see [`decimate_in_pieces`]); no pass over the whole mesh is left. The cuts
//! are planned from the mesh alone, so the output does not depend on the number of threads.
//!
//! Upstream decimates its GLB to a face target as well (its app's default is 300,000 faces).

use std::collections::HashSet;
use std::f32::consts::FRAC_1_SQRT_2;
use std::sync::atomic::{AtomicU32, Ordering};

use meshoptimizer_rs::{
    simplify_with_attributes, Attributes, Limits, Positions, SimplifyOptions, SimplifySettings,
    VertexFlags, Workspace,
};
use rayon::prelude::*;

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
    /// The simplifier's error estimate, relative to the mesh extent (0 when nothing collapsed;
    /// in pieces, the sum over the rounds of each round's largest piece error: an upper bound,
    /// as each round measures from the mesh the one before it left).
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
///
/// Large meshes are simplified in [`piece_count`] spatial pieces in parallel, in rounds whose
/// cuts differ (see [`decimate_in_pieces`]); the result depends on the mesh only, not on the
/// thread count.
pub fn decimate(
    mesh: &Mesh,
    attributes: &[f32],
    weights: &[f32],
    target_faces: usize,
) -> Result<Decimated> {
    decimate_in_pieces(
        mesh,
        attributes,
        weights,
        target_faces,
        piece_count(mesh.faces.len()),
    )
}

/// [`decimate`] with the number of spatial pieces given. With one piece, one pass simplifies
/// the whole mesh. Otherwise the simplification runs in [`ROUNDS`]: each round cuts the mesh
/// it is given into `pieces` by recursive median splits of the triangle centroids along its
/// own three directions, simplifies the pieces in parallel toward their shares of the
/// round's face count with the vertices they share with other pieces locked (so the pieces
/// still meet), and stitches them back. No round's cut is parallel to another's, so the
/// seams one round had to keep at their density are interior in the next and collapse there;
/// the last round's seams are as dense as its input, a twentieth above the target. Only when
/// some piece cannot reach its share (too few collapses keep the topology) does one more
/// round, then if need be a pass over the whole stitched mesh, reach the target.
pub fn decimate_in_pieces(
    mesh: &Mesh,
    attributes: &[f32],
    weights: &[f32],
    target_faces: usize,
    pieces: usize,
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
    let indices: Vec<u32> = mesh.faces.par_iter().flatten_iter().copied().collect();
    let (kept, relative_error) = if target_faces >= mesh.faces.len() {
        (indices, 0.0)
    } else {
        let frame = Frame::of(&mesh.vertices);
        let mut indices = indices;
        let mut relative_error = 0.0;
        if pieces > 1 {
            for (directions, overshoot, per_seam_vertex) in ROUNDS {
                let faces = indices.len() / 3;
                let round_target = (target_faces as f64 * overshoot) as usize;
                if faces <= round_target {
                    continue;
                }
                let round_pieces = pieces.min(faces / MIN_PIECE_FACES).max(1);
                let (kept, error) = simplify_in_pieces(
                    mesh,
                    attributes,
                    weights,
                    &indices,
                    &frame,
                    &directions,
                    round_target,
                    per_seam_vertex,
                    round_pieces,
                )?;
                indices = kept;
                relative_error += error;
            }
            let faces = indices.len() / 3;
            if faces > target_faces {
                // Some piece could not reach its share (too many of its vertices were on the
                // cuts): the first round's cuts, which the last two rounds' seams cross,
                // give it another chance before a pass over the whole mesh.
                let (kept, error) = simplify_in_pieces(
                    mesh,
                    attributes,
                    weights,
                    &indices,
                    &frame,
                    &ROUNDS[0].0,
                    target_faces,
                    0,
                    pieces.min(faces / MIN_PIECE_FACES).max(1),
                )?;
                indices = kept;
                relative_error += error;
            }
        }
        if indices.len() / 3 > target_faces {
            let part = Part::gather(mesh, attributes, channels, &indices, &frame, None);
            let (kept, error) = part.simplify(weights, target_faces)?;
            indices = kept;
            relative_error += error;
        }
        (indices, relative_error)
    };
    Ok(compact(mesh, attributes, channels, &kept, relative_error))
}

/// Faces per spatial piece that [`decimate`] aims at in its first round.
const PIECE_FACES: usize = 40_000;
/// At most this many pieces.
const MAX_PIECES: usize = 256;
/// A round cuts its input into pieces of at least this many faces (the later rounds' inputs
/// are a few times smaller than the first's).
const MIN_PIECE_FACES: usize = 2_048;

/// The rounds of the simplification in pieces: the three directions a round's cuts are
/// across (rows; each at least 35° from every other round's), its face count as a multiple
/// of the target, and the faces it keeps on top of that for each vertex on its cuts. The
/// first round does most of the work and leaves its seams at the input's density, with room
/// for the second to collapse them (two faces a vertex); the second goes down to a twentieth
/// above the target; the third's cut keeps seams only that dense, where the first two
/// rounds' seams (and their crossings) are interior.
const ROUNDS: [([[f32; 3]; 3], f64, usize); 3] = [
    ([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], 1.25, 2),
    (
        [
            [0.577_350_3, 0.577_350_3, 0.577_350_3],
            [FRAC_1_SQRT_2, -FRAC_1_SQRT_2, 0.0],
            [0.408_248_3, 0.408_248_3, -0.816_496_6],
        ],
        1.05,
        0,
    ),
    (
        [
            [0.6864, 0.7052, -0.1776],
            [-0.5935, 0.4021, -0.6972],
            [-0.4203, 0.5839, 0.6945],
        ],
        1.0,
        0,
    ),
];

/// The number of spatial pieces [`decimate`] splits a mesh of `faces` triangles into: one per
/// [`PIECE_FACES`], at most [`MAX_PIECES`]. It depends on the mesh only, never on the thread
/// count, so the result does not either.
pub fn piece_count(faces: usize) -> usize {
    (faces / PIECE_FACES).clamp(1, MAX_PIECES)
}

/// One round: the triangles `indices` (mesh vertex numbers) cut into `pieces` by recursive
/// median splits of their centroids projected on `directions` (across the longest of the
/// three extents of each part; ties broken by triangle order, so the cut depends on the
/// triangles alone), each piece simplified in parallel toward its share of `target_faces`
/// plus `per_seam_vertex` faces for each vertex it shares with other pieces, which it keeps
/// locked; the pieces' triangles in piece order and the largest piece error.
#[allow(clippy::too_many_arguments)]
fn simplify_in_pieces(
    mesh: &Mesh,
    attributes: &[f32],
    weights: &[f32],
    indices: &[u32],
    frame: &Frame,
    directions: &[[f32; 3]; 3],
    target_faces: usize,
    per_seam_vertex: usize,
    pieces: usize,
) -> Result<(Vec<u32>, f32)> {
    let channels = weights.len();
    let mut items: Vec<([f32; 3], u32)> = indices
        .par_chunks_exact(3)
        .enumerate()
        .map(|(f, t)| {
            let [a, b, c] = [0, 1, 2].map(|k| mesh.vertices[t[k] as usize]);
            let centroid: [f32; 3] = std::array::from_fn(|k| (a[k] + b[k] + c[k]) / 3.0);
            (
                directions.map(|d| d[0] * centroid[0] + d[1] * centroid[1] + d[2] * centroid[2]),
                f as u32,
            )
        })
        .collect();
    split_at_medians(&mut items, pieces);
    let mut bounds = Vec::with_capacity(pieces + 1);
    piece_starts(0, items.len(), pieces, &mut bounds);
    bounds.push(items.len());
    let piece_faces: Vec<Vec<u32>> = (0..pieces)
        .into_par_iter()
        .map(|p| {
            let mut faces: Vec<u32> = items[bounds[p]..bounds[p + 1]]
                .iter()
                .map(|i| i.1)
                .collect();
            faces.sort_unstable();
            faces
        })
        .collect();
    drop(items);
    // A vertex used by two pieces is on a cut: the lowest and highest piece using it differ.
    let lowest: Vec<AtomicU32> = (0..mesh.vertices.len())
        .into_par_iter()
        .map(|_| AtomicU32::new(u32::MAX))
        .collect();
    let highest: Vec<AtomicU32> = (0..mesh.vertices.len())
        .into_par_iter()
        .map(|_| AtomicU32::new(0))
        .collect();
    piece_faces.par_iter().enumerate().for_each(|(p, faces)| {
        for &f in faces {
            for &v in &indices[f as usize * 3..][..3] {
                lowest[v as usize].fetch_min(p as u32, Ordering::Relaxed);
                highest[v as usize].fetch_max(p as u32, Ordering::Relaxed);
            }
        }
    });
    let on_cut = |v: u32| {
        lowest[v as usize].load(Ordering::Relaxed) != highest[v as usize].load(Ordering::Relaxed)
    };
    let total = indices.len() / 3;
    let target_faces = if per_seam_vertex == 0 {
        target_faces
    } else {
        // Unused vertices have no lowest piece.
        let seam = (0..mesh.vertices.len() as u32)
            .into_par_iter()
            .filter(|&v| lowest[v as usize].load(Ordering::Relaxed) != u32::MAX && on_cut(v))
            .count();
        target_faces + per_seam_vertex * seam
    };
    let simplified: Vec<(Vec<u32>, f32)> = piece_faces
        .par_iter()
        .map(|faces| {
            let piece: Vec<u32> = faces
                .iter()
                .flat_map(|&f| &indices[f as usize * 3..][..3])
                .copied()
                .collect();
            let part = Part::gather(mesh, attributes, channels, &piece, frame, Some(&on_cut));
            let share = (target_faces as u128 * faces.len() as u128 / total as u128) as usize;
            part.simplify(weights, share.max(1))
        })
        .collect::<Result<_>>()?;
    let error = simplified.iter().map(|s| s.1).fold(0.0f32, f32::max);
    let kept = simplified.into_iter().flat_map(|s| s.0).collect();
    Ok((kept, error))
}

/// Reorders `items` so that each of the `pieces` runs [`piece_starts`] delimits holds the
/// items on one side of every median cut above it (a part of `n` pieces is cut into `n / 2`
/// and the rest, at the matching fraction of its items).
fn split_at_medians(items: &mut [([f32; 3], u32)], pieces: usize) {
    if pieces <= 1 || items.len() < 2 {
        return;
    }
    let (lo, hi) = items.iter().fold(
        ([f32::INFINITY; 3], [f32::NEG_INFINITY; 3]),
        |(lo, hi), (c, _)| {
            (
                std::array::from_fn(|k| lo[k].min(c[k])),
                std::array::from_fn(|k| hi[k].max(c[k])),
            )
        },
    );
    let axis = (0..3)
        .max_by(|&a, &b| (hi[a] - lo[a]).total_cmp(&(hi[b] - lo[b])).then(b.cmp(&a)))
        .unwrap_or(0);
    let left = pieces / 2;
    let mid = split_point(items.len(), left, pieces);
    items.select_nth_unstable_by(mid, |a, b| {
        a.0[axis].total_cmp(&b.0[axis]).then(a.1.cmp(&b.1))
    });
    let (low, high) = items.split_at_mut(mid);
    rayon::join(
        || split_at_medians(low, left),
        || split_at_medians(high, pieces - left),
    );
}

/// Where a part of `len` items cut into `pieces` ends its first `left` pieces.
fn split_point(len: usize, left: usize, pieces: usize) -> usize {
    (len as u128 * left as u128 / pieces as u128) as usize
}

/// Appends the starts of the `pieces` runs of `items[start..start + len]` as
/// [`split_at_medians`] cuts them.
fn piece_starts(start: usize, len: usize, pieces: usize, out: &mut Vec<usize>) {
    if pieces <= 1 {
        out.push(start);
        return;
    }
    let left = pieces / 2;
    let mid = split_point(len, left, pieces);
    piece_starts(start, mid, left, out);
    piece_starts(start + mid, len - mid, pieces - left, out);
}

/// The box of all the mesh's vertices. Every part the simplifier sees carries its two corners
/// as unreferenced vertices: the simplifier measures position error relative to the extent of
/// all the vertices it is given, so every piece and the final pass then weigh position
/// against attribute error exactly as one pass over the whole mesh does.
struct Frame {
    corners: [[f32; 3]; 2],
}

impl Frame {
    fn of(vertices: &[[f32; 3]]) -> Self {
        let (lo, hi) = vertices
            .par_iter()
            .fold(
                || ([f32::INFINITY; 3], [f32::NEG_INFINITY; 3]),
                |(lo, hi), v| {
                    (
                        std::array::from_fn(|k| lo[k].min(v[k])),
                        std::array::from_fn(|k| hi[k].max(v[k])),
                    )
                },
            )
            .reduce(
                || ([f32::INFINITY; 3], [f32::NEG_INFINITY; 3]),
                |(a, b), (c, d)| {
                    (
                        std::array::from_fn(|k| a[k].min(c[k])),
                        std::array::from_fn(|k| b[k].max(d[k])),
                    )
                },
            );
        Self { corners: [lo, hi] }
    }
}

/// Some triangles of the mesh over their own vertex list (the used vertices in increasing
/// order, then the frame's two corners), ready for the simplifier.
struct Part {
    /// Mesh vertex of each local vertex (the corners excluded).
    global: Vec<u32>,
    indices: Vec<u32>,
    positions: Vec<[f32; 3]>,
    attributes: Vec<f32>,
    locked: Option<Vec<VertexFlags>>,
}

impl Part {
    /// `indices` (mesh vertex numbers) renumbered; with `lock`, the vertices it picks are
    /// locked.
    fn gather(
        mesh: &Mesh,
        attributes: &[f32],
        channels: usize,
        indices: &[u32],
        frame: &Frame,
        lock: Option<&(dyn Fn(u32) -> bool + Sync)>,
    ) -> Self {
        let mut global = indices.to_vec();
        global.par_sort_unstable();
        global.dedup();
        let local: Vec<u32> = indices
            .par_iter()
            .map(|v| global.partition_point(|g| g < v) as u32)
            .collect();
        let mut positions: Vec<[f32; 3]> =
            global.iter().map(|&v| mesh.vertices[v as usize]).collect();
        positions.extend(frame.corners);
        let mut rows = Vec::with_capacity((global.len() + 2) * channels);
        for &v in &global {
            rows.extend_from_slice(&attributes[v as usize * channels..][..channels]);
        }
        rows.resize((global.len() + 2) * channels, 0.0);
        let locked = lock.map(|lock| {
            let mut flags: Vec<VertexFlags> = global
                .iter()
                .map(|&v| {
                    if lock(v) {
                        VertexFlags::LOCK
                    } else {
                        VertexFlags::EMPTY
                    }
                })
                .collect();
            flags.extend([VertexFlags::EMPTY; 2]);
            flags
        });
        Self {
            global,
            indices: local,
            positions,
            attributes: rows,
            locked,
        }
    }

    /// Simplifies toward `target_faces`; the kept triangles in mesh vertex numbers and the
    /// simplifier's error estimate (relative to the mesh extent).
    fn simplify(&self, weights: &[f32], target_faces: usize) -> Result<(Vec<u32>, f32)> {
        let channels = weights.len();
        let fail = |e: meshoptimizer_rs::Error| MeshError::Decimation {
            message: e.to_string(),
        };
        let count = self.positions.len();
        let attrs = Attributes::from_interleaved(&self.attributes, count, channels, channels, 0)
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
            &self.indices,
            Positions::from_packed(&self.positions),
            attrs,
            weights,
            self.locked.as_deref(),
            settings,
            &mut workspace,
        )
        .map_err(fail)?;
        let kept = out
            .indices
            .iter()
            .map(|&v| self.global[v as usize])
            .collect();
        Ok((kept, out.error))
    }
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
        .par_chunks_exact(3)
        .map(|t| {
            let mut c = [t[0], t[1], t[2]];
            c.sort_unstable();
            c
        })
        .collect();
    corners.par_sort_unstable();
    let doubled: HashSet<[u32; 3]> = corners
        .par_windows(2)
        .filter(|pair| pair[0] == pair[1])
        .map(|pair| pair[0])
        .collect();
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
