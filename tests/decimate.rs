//! Decimation of analytic shapes built the way the decoders' output is (a sign field voxelised
//! into the flexible dual grid, then extracted): one-sided Hausdorff distance decimated → raw
//! in voxels, face counts, borders, topology (Euler characteristic) and attribute error — for
//! one pass over the whole mesh and for the parallel path that simplifies spatial pieces first.

mod common;

use std::collections::HashMap;

use rayon::prelude::*;

use common::closed_shapes::{sphere, torus};
use trellis2::mesh::{decimate_in_pieces, Decimated, Mesh, PBR_ATTRIBUTE_WEIGHTS};
use trellis2::vec3::{dot, point_triangle_distance_sq, sub};

fn edge_counts(mesh: &Mesh) -> HashMap<(u32, u32), usize> {
    let mut counts = HashMap::new();
    for f in &mesh.faces {
        for k in 0..3 {
            let (a, b) = (f[k], f[(k + 1) % 3]);
            *counts.entry((a.min(b), a.max(b))).or_insert(0) += 1;
        }
    }
    counts
}

/// (boundary edges, non-manifold edges, Euler characteristic V − E + F over used vertices).
fn topology(mesh: &Mesh) -> (usize, usize, i64) {
    let edges = edge_counts(mesh);
    let boundary = edges.values().filter(|&&c| c == 1).count();
    let non_manifold = edges.values().filter(|&&c| c > 2).count();
    let mut used = vec![false; mesh.vertices.len()];
    mesh.faces
        .iter()
        .flatten()
        .for_each(|&i| used[i as usize] = true);
    let v = used.iter().filter(|&&u| u).count() as i64;
    (
        boundary,
        non_manifold,
        v - edges.len() as i64 + mesh.faces.len() as i64,
    )
}

type P = [f64; 3];

/// Points on each triangle: corners, edge midpoints, centroid and three inner points, with
/// their barycentric weights.
const SAMPLES: [[f64; 3]; 10] = [
    [1.0, 0.0, 0.0],
    [0.0, 1.0, 0.0],
    [0.0, 0.0, 1.0],
    [0.5, 0.5, 0.0],
    [0.0, 0.5, 0.5],
    [0.5, 0.0, 0.5],
    [1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0],
    [2.0 / 3.0, 1.0 / 6.0, 1.0 / 6.0],
    [1.0 / 6.0, 2.0 / 3.0, 1.0 / 6.0],
    [1.0 / 6.0, 1.0 / 6.0, 2.0 / 3.0],
];

fn corners(mesh: &Mesh, f: [u32; 3]) -> [P; 3] {
    f.map(|i| mesh.vertices[i as usize].map(f64::from))
}

fn blend(t: &[P; 3], w: [f64; 3]) -> P {
    std::array::from_fn(|k| t[0][k] * w[0] + t[1][k] * w[1] + t[2][k] * w[2])
}

/// One-sided Hausdorff distance from the sampled `decimated` surface to `raw`, in voxels of a
/// `grid³` grid (triangles binned on a grid of 2-voxel cells, searched one cell around: exact
/// up to 2 voxels, reported as at least that beyond).
fn hausdorff_voxels(decimated: &Mesh, raw: &Mesh, grid: i32) -> f64 {
    let cell = 2.0 / grid as f64;
    let key = |p: P| p.map(|v| (v / cell).floor() as i64);
    let mut bins: HashMap<[i64; 3], Vec<usize>> = HashMap::new();
    for (n, &f) in raw.faces.iter().enumerate() {
        let t = corners(raw, f);
        let lo = key(std::array::from_fn(|k| t[0][k].min(t[1][k]).min(t[2][k])));
        let hi = key(std::array::from_fn(|k| t[0][k].max(t[1][k]).max(t[2][k])));
        for x in lo[0]..=hi[0] {
            for y in lo[1]..=hi[1] {
                for z in lo[2]..=hi[2] {
                    bins.entry([x, y, z]).or_default().push(n);
                }
            }
        }
    }
    let worst = decimated
        .faces
        .par_iter()
        .map(|&f| {
            let t = corners(decimated, f);
            SAMPLES
                .iter()
                .map(|&w| {
                    let p = blend(&t, w);
                    let k = key(p);
                    let mut best = cell * cell;
                    for dx in -1..=1 {
                        for dy in -1..=1 {
                            for dz in -1..=1 {
                                let Some(tris) = bins.get(&[k[0] + dx, k[1] + dy, k[2] + dz])
                                else {
                                    continue;
                                };
                                for &n in tris {
                                    let r = corners(raw, raw.faces[n]);
                                    best = best.min(point_triangle_distance_sq(p, r));
                                }
                            }
                        }
                    }
                    best.sqrt()
                })
                .fold(0.0f64, f64::max)
        })
        .reduce(|| 0.0, f64::max);
    worst * grid as f64
}

/// One pass over the whole mesh, and the parallel path with 8 and 24 spatial pieces (the
/// shapes here are small enough that [`trellis2::mesh::decimate`] would use one pass; 24 is
/// not a power of two, so the median cuts also split parts unevenly).
const PIECES: [usize; 3] = [1, 8, 24];

/// Decimates a closed shape geometry-only and checks distance, count and topology.
fn check_closed_shape(name: &str, raw: &Mesh, grid: i32, target: usize, euler: i64) {
    assert_eq!(topology(raw), (0, 0, euler), "{name}: raw topology");
    for pieces in PIECES {
        let out = decimate_in_pieces(raw, &[], &[], target, pieces).expect("decimates");
        check_decimated(
            &format!("{name} in {pieces}"),
            raw,
            &out,
            grid,
            target,
            euler,
        );
    }
}

fn check_decimated(name: &str, raw: &Mesh, out: &Decimated, grid: i32, target: usize, euler: i64) {
    let faces = out.mesh.faces.len();
    let h = hausdorff_voxels(&out.mesh, raw, grid);
    println!(
        "{name} {grid}³: {} → {faces} faces (target {target}), Hausdorff {h:.3} voxel, \
         boundary edges 0 → {}",
        raw.faces.len(),
        topology(&out.mesh).0
    );
    assert!(
        faces <= target && faces as f64 >= 0.97 * target as f64,
        "{name}: {faces} faces for a target of {target}"
    );
    assert_eq!(
        topology(&out.mesh),
        (0, 0, euler),
        "{name}: decimated topology"
    );
    assert!(h <= 0.5, "{name}: Hausdorff {h} voxel");
}

#[test]
fn a_sphere_shell_decimates_within_half_a_voxel() {
    let grid = 128;
    let raw = sphere(grid);
    // 300k of a 512³ sphere's ≈ 1.6 M faces, scaled to this grid.
    let target = raw.faces.len() * 3 / 16;
    check_closed_shape("sphere", &raw, grid, target, 2);
}

#[test]
fn a_torus_keeps_its_hole_and_shape() {
    let grid = 128;
    let raw = torus(grid);
    let target = raw.faces.len() * 3 / 16;
    check_closed_shape("torus", &raw, grid, target, 0);
}

#[test]
fn a_smooth_colour_field_survives_decimation() {
    for pieces in PIECES {
        check_colour_field(pieces);
    }
}

fn check_colour_field(pieces: usize) {
    let grid = 128;
    let raw = sphere(grid);
    let field = |p: P| -> [f64; 6] {
        let s = (p[0] * 6.0).sin() * 0.5 + 0.5;
        let t = (p[1] * 5.0 + p[2] * 3.0).cos() * 0.5 + 0.5;
        [s, t, 1.0 - s, 0.2, 0.3 + 0.4 * t, 1.0]
    };
    let attrs: Vec<f32> = raw
        .vertices
        .iter()
        .flat_map(|v| field(v.map(f64::from)).map(|a| a as f32))
        .collect();
    let target = raw.faces.len() * 3 / 16;
    let out = decimate_in_pieces(&raw, &attrs, &PBR_ATTRIBUTE_WEIGHTS, target, pieces)
        .expect("decimates");
    assert_eq!(out.attributes.len(), out.mesh.vertices.len() * 6);
    let (mut worst, mut sum, mut count) = (0.0f64, 0.0f64, 0usize);
    for &f in &out.mesh.faces {
        let t = corners(&out.mesh, f);
        let rows = f.map(|i| &out.attributes[i as usize * 6..][..6]);
        for &w in &SAMPLES {
            let truth = field(blend(&t, w));
            for (k, &truth) in truth.iter().enumerate() {
                let got = (0..3).map(|c| f64::from(rows[c][k]) * w[c]).sum::<f64>();
                let e = (got - truth).abs();
                worst = worst.max(e);
                sum += e;
                count += 1;
            }
        }
    }
    let h = hausdorff_voxels(&out.mesh, &raw, grid);
    println!(
        "colour field in {pieces}: {} faces, attribute error mean {:.4} max {worst:.4}, \
         Hausdorff {h:.3}",
        out.mesh.faces.len(),
        sum / count as f64
    );
    assert!(sum / count as f64 <= 0.005, "mean attribute error");
    assert!(worst <= 0.05, "max attribute error {worst}");
    assert!(h <= 0.5, "Hausdorff {h} voxel with attributes");
}

#[test]
fn the_pieces_result_does_not_depend_on_the_thread_count() {
    let grid = 96;
    let raw = torus(grid);
    let attrs: Vec<f32> = raw
        .vertices
        .iter()
        .flat_map(|v| [v[0] + 0.5, v[1] + 0.5, 0.5, 0.2, 0.7, 1.0])
        .collect();
    let target = raw.faces.len() / 8;
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool");
        pool.install(|| {
            decimate_in_pieces(&raw, &attrs, &PBR_ATTRIBUTE_WEIGHTS, target, 16).expect("decimates")
        })
    };
    let one = run(1);
    assert!(one.mesh.faces.len() <= target);
    for threads in [2, 7] {
        assert!(run(threads) == one, "{threads} threads give another mesh");
    }
}

/// Edges of `mesh` shorter than `length`.
fn edges_shorter_than(mesh: &Mesh, length: f64) -> usize {
    edge_counts(mesh)
        .keys()
        .filter(|&&(a, b)| {
            let d = sub(
                mesh.vertices[a as usize].map(f64::from),
                mesh.vertices[b as usize].map(f64::from),
            );
            dot(d, d).sqrt() < length
        })
        .count()
}

#[test]
fn the_rounds_leave_no_dense_seam() {
    // The pieces of a round keep the vertices on their cuts at the density they were given:
    // left there, the cuts would show as lines of full-size triangles. The later rounds cut
    // elsewhere and collapse them, so the result has about as many edges of the input's size
    // as one pass over the whole mesh leaves.
    let grid = 128;
    let raw = sphere(grid);
    let mut lengths: Vec<f64> = edge_counts(&raw)
        .keys()
        .map(|&(a, b)| {
            let d = sub(
                raw.vertices[a as usize].map(f64::from),
                raw.vertices[b as usize].map(f64::from),
            );
            dot(d, d).sqrt()
        })
        .collect();
    lengths.sort_by(f64::total_cmp);
    let short = 1.5 * lengths[lengths.len() / 2];
    let target = raw.faces.len() / 10;
    let one = decimate_in_pieces(&raw, &[], &[], target, 1).expect("decimates");
    let pieces = decimate_in_pieces(&raw, &[], &[], target, 24).expect("decimates");
    let (a, b) = (
        edges_shorter_than(&one.mesh, short),
        edges_shorter_than(&pieces.mesh, short),
    );
    println!(
        "edges shorter than {short:.5}: one pass {a}, 24 pieces {b} of {}",
        pieces.mesh.faces.len() * 3 / 2
    );
    assert!(
        b <= a + pieces.mesh.faces.len() / 200,
        "{b} short edges against {a}"
    );
    assert_eq!(topology(&pieces.mesh), (0, 0, 2), "decimated topology");
}

#[test]
fn an_open_surface_keeps_its_one_border_and_gets_no_cracks() {
    // A sphere with a cap cut off: a disk (one border loop, Euler characteristic 1). A crack
    // along a seam between pieces would add border edges inside and another loop.
    let grid = 128;
    let closed = sphere(grid);
    let (lo, hi) = closed
        .vertices
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v[2]), hi.max(v[2]))
        });
    let cut = hi - 0.2 * (hi - lo);
    let faces: Vec<[u32; 3]> = closed
        .faces
        .iter()
        .copied()
        .filter(|f| {
            f.iter()
                .map(|&i| closed.vertices[i as usize][2])
                .sum::<f32>()
                / 3.0
                < cut
        })
        .collect();
    let raw = Mesh {
        vertices: closed.vertices.clone(),
        faces,
    };
    let (border, non_manifold, euler) = topology(&raw);
    assert!(
        border > 0 && non_manifold == 0 && euler == 1,
        "raw {border} {non_manifold} {euler}"
    );
    let target = raw.faces.len() / 8;
    for pieces in PIECES {
        let out = decimate_in_pieces(&raw, &[], &[], target, pieces).expect("decimates");
        let (b, n, e) = topology(&out.mesh);
        println!(
            "open sphere in {pieces}: border edges {border} → {b}, faces {}",
            out.mesh.faces.len()
        );
        assert_eq!(
            (n, e),
            (0, 1),
            "{pieces} pieces: non-manifold edges, Euler characteristic"
        );
        assert!(
            b > 0 && b <= border,
            "{pieces} pieces: {b} border edges against {border}"
        );
        assert!(out.mesh.faces.len() <= target);
    }
}
