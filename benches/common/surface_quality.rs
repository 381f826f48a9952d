//! How far a decimated surface strays from the one it came from, for the benches that
//! decimate: sampled distances both ways and the border / non-manifold edge counts (a crack
//! between pieces would show as border edges). Included with `#[path]`.

use std::collections::HashMap;

use rayon::prelude::*;
use trellis2::mesh::Mesh;
use trellis2::vec3::{dot, point_triangle_distance_sq, sub};

type P = [f64; 3];

fn corners(mesh: &Mesh, f: usize) -> [P; 3] {
    mesh.faces[f].map(|i| mesh.vertices[i as usize].map(f64::from))
}

/// Distances from `points` to the surface of `mesh`, exact up to `reach` (farther ones are
/// reported as `reach`). Small triangles (all within `reach` of their centroid) are binned by
/// centroid in cells of twice `reach` and searched one cell around; larger ones are binned in
/// cells of `reach` by their box grown by `reach`, searched in the point's own cell.
fn distances(points: &[P], mesh: &Mesh, reach: f64) -> Vec<f64> {
    let centroid =
        |t: &[P; 3]| -> P { std::array::from_fn(|k| (t[0][k] + t[1][k] + t[2][k]) / 3.0) };
    let radius = (0..mesh.faces.len())
        .into_par_iter()
        .map(|f| {
            let t = corners(mesh, f);
            let c = centroid(&t);
            t.iter()
                .map(|&v| dot(sub(v, c), sub(v, c)).sqrt())
                .fold(0.0, f64::max)
        })
        .reduce(|| 0.0, f64::max);
    let small = radius <= reach;
    let cell = if small { 2.0 * reach } else { reach };
    let key = |p: P| p.map(|v| (v / cell).floor() as i64);
    let mut bins: HashMap<[i64; 3], Vec<u32>> = HashMap::new();
    for f in 0..mesh.faces.len() {
        let t = corners(mesh, f);
        if small {
            bins.entry(key(centroid(&t))).or_default().push(f as u32);
            continue;
        }
        let lo = key(std::array::from_fn(|k| {
            t[0][k].min(t[1][k]).min(t[2][k]) - reach
        }));
        let hi = key(std::array::from_fn(|k| {
            t[0][k].max(t[1][k]).max(t[2][k]) + reach
        }));
        for x in lo[0]..=hi[0] {
            for y in lo[1]..=hi[1] {
                for z in lo[2]..=hi[2] {
                    bins.entry([x, y, z]).or_default().push(f as u32);
                }
            }
        }
    }
    let around: i64 = if small { 1 } else { 0 };
    points
        .par_iter()
        .map(|&p| {
            let k = key(p);
            let mut best = reach * reach;
            for dx in -around..=around {
                for dy in -around..=around {
                    for dz in -around..=around {
                        if let Some(tris) = bins.get(&[k[0] + dx, k[1] + dy, k[2] + dz]) {
                            for &f in tris {
                                best = best
                                    .min(point_triangle_distance_sq(p, corners(mesh, f as usize)));
                            }
                        }
                    }
                }
            }
            best.sqrt()
        })
        .collect()
}

/// Points on every `stride`-th triangle: its centroid and three inner points.
fn samples(mesh: &Mesh, stride: usize) -> Vec<P> {
    const W: [[f64; 3]; 4] = [
        [1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0],
        [2.0 / 3.0, 1.0 / 6.0, 1.0 / 6.0],
        [1.0 / 6.0, 2.0 / 3.0, 1.0 / 6.0],
        [1.0 / 6.0, 1.0 / 6.0, 2.0 / 3.0],
    ];
    (0..mesh.faces.len())
        .step_by(stride.max(1))
        .flat_map(|f| {
            let t = corners(mesh, f);
            W.map(|w| std::array::from_fn(|k| t[0][k] * w[0] + t[1][k] * w[1] + t[2][k] * w[2]))
        })
        .collect()
}

/// (border edges, edges of more than two triangles).
pub fn open_edges(mesh: &Mesh) -> (usize, usize) {
    let mut edges: Vec<(u32, u32)> = mesh
        .faces
        .par_iter()
        .flat_map_iter(|f| {
            (0..3).map(move |k| (f[k].min(f[(k + 1) % 3]), f[k].max(f[(k + 1) % 3])))
        })
        .collect();
    edges.par_sort_unstable();
    let (mut border, mut over, mut run) = (0, 0, 0);
    for (i, e) in edges.iter().enumerate() {
        run += 1;
        if edges.get(i + 1) != Some(e) {
            match run {
                1 => border += 1,
                2 => {}
                _ => over += 1,
            }
            run = 0;
        }
    }
    (border, over)
}

/// Mean and largest sampled distance from `from` to `to`, and from `to` (every `stride`-th
/// triangle) to `from`, in units of `voxel`, each exact up to one voxel (farther counts as one).
pub fn surface_distances(from: &Mesh, to: &Mesh, stride: usize, voxel: f64) -> [(f64, f64); 2] {
    let stat = |d: Vec<f64>| {
        let mean = d.iter().sum::<f64>() / d.len().max(1) as f64;
        let max = d.iter().copied().fold(0.0, f64::max);
        (mean / voxel, max / voxel)
    };
    [
        stat(distances(&samples(from, 1), to, voxel)),
        stat(distances(&samples(to, stride), from, voxel)),
    ]
}
