//! Closed analytic surfaces (sphere, torus) extracted the way the decoders' output is: a
//! lattice sign field voxelised into the flexible dual grid, each dual vertex moved onto the
//! analytic surface (as a trained decoder places them), then extracted and wound outward.
//! Shared by `tests/atlas.rs`, `tests/decimate.rs`, `tests/render.rs` and `benches/atlas.rs`;
//! include `voxel_shapes` beside it.

use super::voxel_shapes::{in_ball, in_torus, snapped_surface};
use trellis2::export::face_orientation::faces_wound_outward;
use trellis2::mesh::Mesh;

/// The extracted mesh of the sign field `inside` on a `grid³` grid, wound outward, with dual
/// vertices on the surface given by `project` (nearest surface point, voxel units), and its
/// voxels' coordinates.
pub fn extracted(
    grid: i32,
    inside: impl Fn([i32; 3]) -> bool + Sync,
    project: impl Fn([f64; 3]) -> [f64; 3],
) -> (Mesh, Vec<[i32; 3]>) {
    let (mesh, voxels) = snapped_surface(grid, inside, project);
    let mesh = Mesh {
        faces: faces_wound_outward(&mesh),
        vertices: mesh.vertices,
    };
    (mesh, voxels)
}

/// A ball of radius 0.4·grid, slightly off the grid's centre (≈ 1.58 M faces at 512³).
pub fn sphere(grid: i32) -> Mesh {
    sphere_with_voxels(grid).0
}

/// [`sphere`] and its voxels' coordinates.
pub fn sphere_with_voxels(grid: i32) -> (Mesh, Vec<[i32; 3]>) {
    let c = grid as f32 / 2.0 + 0.3;
    let centre = [c, c - 0.2, c + 0.1];
    let radius = grid as f32 * 0.4;
    let (cd, r) = (centre.map(f64::from), f64::from(radius));
    extracted(
        grid,
        |p| in_ball(p, centre, radius),
        |x| {
            let d = [x[0] - cd[0], x[1] - cd[1], x[2] - cd[2]];
            let len = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
            std::array::from_fn(|k| cd[k] + d[k] * r / len)
        },
    )
}

/// A torus of radii 0.28·grid and 0.11·grid around the z axis (≈ 0.6× the sphere's faces).
pub fn torus(grid: i32) -> Mesh {
    torus_with_voxels(grid).0
}

/// [`torus`] and its voxels' coordinates.
pub fn torus_with_voxels(grid: i32) -> (Mesh, Vec<[i32; 3]>) {
    let c = grid as f32 / 2.0 + 0.3;
    let centre = [c, c - 0.2, c];
    let (major, minor) = (grid as f32 * 0.28, grid as f32 * 0.11);
    let (cd, big, small) = (centre.map(f64::from), f64::from(major), f64::from(minor));
    extracted(
        grid,
        |p| in_torus(p, centre, major, minor),
        |x| {
            let d = [x[0] - cd[0], x[1] - cd[1], x[2] - cd[2]];
            let planar = (d[0] * d[0] + d[1] * d[1]).sqrt();
            let ring = [d[0] * big / planar, d[1] * big / planar, 0.0];
            let e = [d[0] - ring[0], d[1] - ring[1], d[2]];
            let len = (e[0] * e[0] + e[1] * e[1] + e[2] * e[2]).sqrt();
            std::array::from_fn(|k| cd[k] + ring[k] + e[k] * small / len)
        },
    )
}
