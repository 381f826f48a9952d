//! Synthetic shape-decoder outputs: the flexible dual grid of a lattice sign field, so that
//! extraction must give a closed surface. Shared by `tests/mesh.rs` and `benches/mesh.rs`.

use std::collections::BTreeSet;

use trellis2::mesh::shape_voxels::VOXEL_MARGIN;
use trellis2::mesh::{decoder_output_to_meshes, Mesh};

/// Logit magnitude used for the flags (well away from the > 0 threshold).
const FLAG_LOGIT: f32 = 4.0;

/// For voxel `c` and axis `a`, the primal edge the flag refers to starts at lattice point
/// `c + 1` on the two other axes (the edge shared by upstream's four offset voxels).
fn edge_endpoints(c: [i32; 3], axis: usize) -> ([i32; 3], [i32; 3]) {
    let mut start = [c[0] + 1, c[1] + 1, c[2] + 1];
    start[axis] = c[axis];
    let mut end = start;
    end[axis] += 1;
    (start, end)
}

/// Decoder-style output (`coords` `[N,4]` with batch `batch`, raw feats `[N,7]`) for the sign
/// field `inside(lattice point)` on a `grid³` voxel grid. Voxels = every voxel around a sign
/// change, sorted; dual vertices at voxel centres plus a small deterministic jitter; split
/// logits vary per voxel so both diagonals get used. Only voxels in `span³` are scanned for
/// sign changes; `inside` must be false outside `span` (and so away from the grid border).
pub fn sign_field_voxels(
    span: std::ops::Range<i32>,
    batch: i32,
    inside: impl Fn([i32; 3]) -> bool + Sync,
) -> (Vec<i32>, Vec<f32>) {
    const OFFSETS: [[[i32; 3]; 4]; 3] = [
        [[0, 0, 0], [0, 0, 1], [0, 1, 1], [0, 1, 0]],
        [[0, 0, 0], [1, 0, 0], [1, 0, 1], [0, 0, 1]],
        [[0, 0, 0], [0, 1, 0], [1, 1, 0], [1, 0, 0]],
    ];
    let crossing = |c: [i32; 3], axis: usize| {
        let (a, b) = edge_endpoints(c, axis);
        inside(a) != inside(b)
    };
    let mut voxels = BTreeSet::new();
    for x in span.clone() {
        for y in span.clone() {
            for z in span.clone() {
                for (axis, offsets) in OFFSETS.iter().enumerate() {
                    if crossing([x, y, z], axis) {
                        for o in offsets {
                            voxels.insert([x + o[0], y + o[1], z + o[2]]);
                        }
                    }
                }
            }
        }
    }
    let mut coords = Vec::with_capacity(voxels.len() * 4);
    let mut feats = Vec::with_capacity(voxels.len() * 7);
    for (row, &c) in voxels.iter().enumerate() {
        coords.extend([batch, c[0], c[1], c[2]]);
        let jitter = |k: usize| (((row * 7 + k * 13) % 17) as f32 - 8.0) * 0.02;
        feats.extend([jitter(0), jitter(1), jitter(2)]);
        for axis in 0..3 {
            feats.push(if crossing(c, axis) {
                FLAG_LOGIT
            } else {
                -FLAG_LOGIT
            });
        }
        feats.push(((row * 31 % 23) as f32 - 11.0) * 0.1);
    }
    (coords, feats)
}

/// Lattice points strictly inside the axis-aligned box `[lo, hi]³` (inclusive bounds).
pub fn in_box(p: [i32; 3], lo: [i32; 3], hi: [i32; 3]) -> bool {
    (0..3).all(|k| p[k] >= lo[k] && p[k] <= hi[k])
}

/// Lattice points inside the ball of `radius` around `centre`.
pub fn in_ball(p: [i32; 3], centre: [f32; 3], radius: f32) -> bool {
    let d: f32 = (0..3).map(|k| (p[k] as f32 - centre[k]).powi(2)).sum();
    d <= radius * radius
}

/// Lattice points inside the torus of radii `major` and `minor` around the z axis through
/// `centre`.
pub fn in_torus(p: [i32; 3], centre: [f32; 3], major: f32, minor: f32) -> bool {
    let (x, y, z) = (
        p[0] as f32 - centre[0],
        p[1] as f32 - centre[1],
        p[2] as f32 - centre[2],
    );
    let ring = (x * x + y * y).sqrt() - major;
    ring * ring + z * z <= minor * minor
}

/// The extracted mesh (wound as extraction leaves it) of the sign field `inside` on a `grid³`
/// grid, with each dual vertex moved onto the surface given by `project` (nearest surface point,
/// voxel units) as a trained decoder places them (voxel centres alone would give a terraced
/// surface), and its voxels' coordinates.
pub fn snapped_surface(
    grid: i32,
    inside: impl Fn([i32; 3]) -> bool + Sync,
    project: impl Fn([f64; 3]) -> [f64; 3],
) -> (Mesh, Vec<[i32; 3]>) {
    let (coords, mut feats) = sign_field_voxels(2..grid - 2, 0, inside);
    let m = f64::from(VOXEL_MARGIN);
    for (c, f) in coords.chunks_exact(4).zip(feats.chunks_exact_mut(7)) {
        let cell = [c[1], c[2], c[3]].map(f64::from);
        let q = project(cell.map(|v| v + 0.5));
        for k in 0..3 {
            // Inverse of the dual-vertex activation (1 + 2m)·sigmoid(x) − m.
            let s = ((q[k] - cell[k] + m) / (1.0 + 2.0 * m)).clamp(1e-4, 1.0 - 1e-4);
            f[k] = (s / (1.0 - s)).ln() as f32;
        }
    }
    let mesh = decoder_output_to_meshes(&coords, &feats, grid as u32)
        .expect("extracts")
        .remove(0);
    let voxels = coords.chunks_exact(4).map(|c| [c[1], c[2], c[3]]).collect();
    (mesh, voxels)
}
