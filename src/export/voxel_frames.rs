//! The local surface frame at every voxel, for orienting its splat: a plane fitted to the dual
//! vertices of the voxel and its (up to 26) neighbours.
//!
//! Why not the mesh: some voxels' dual vertices are in no face (upstream keeps them), and the
//! faces are not consistently wound (docs/MODEL.md §6.1), so wound face normals partly cancel. The
//! smallest principal axis of the neighbours' dual vertices needs neither: it is the normal of
//! the best-fitting plane whatever the winding. A disc is symmetric, so its sign does not
//! matter to a renderer; for the file's `nx ny nz` it is chosen to point away from the centroid
//! of all dual vertices (a tie-break, right for roughly convex objects).

use rayon::prelude::*;

use super::asset::Asset;
use super::sym_eigen::sym_eigen3;
use crate::vec3::{cross, dot};

/// A voxel's neighbourhood counts as a surface patch when its second principal variance is at
/// least this fraction of the first (below, the points are nearly collinear or a single point
/// and no plane is defined).
const MIN_PLANARITY: f64 = 1e-3;

/// Orthonormal, right-handed (`tangent × bitangent = normal`), in the pipeline frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SurfaceFrame {
    pub tangent: [f64; 3],
    pub bitangent: [f64; 3],
    pub normal: [f64; 3],
}

/// One entry per voxel, in voxel order: `None` where the neighbourhood defines no plane
/// (an isolated voxel or a one-voxel-thick line).
pub fn voxel_surface_frames(asset: &Asset) -> Vec<Option<SurfaceFrame>> {
    let duals = asset.dual_vertices();
    let centroid = dual_centroid(duals);
    asset
        .voxel_coords()
        .par_iter()
        .enumerate()
        .map(|(row, &c)| neighbourhood_frame(duals, &neighbourhood(asset, c), row, centroid))
        .collect()
}

/// No voxel there, in a [`neighbourhood`].
pub(crate) const NO_VOXEL: u32 = u32::MAX;

/// The rows of the voxel at `c` and its 26 neighbours ([`NO_VOXEL`] where there is none),
/// entry `9·(dx + 1) + 3·(dy + 1) + (dz + 1)` for the offset `(dx, dy, dz)`: looked up once
/// and shared by the frame and the splat fit's patch shape.
pub(crate) fn neighbourhood(asset: &Asset, c: [i32; 3]) -> [u32; 27] {
    std::array::from_fn(|k| {
        let d = [k as i32 / 9 - 1, k as i32 / 3 % 3 - 1, k as i32 % 3 - 1];
        asset
            .voxel_at([c[0] + d[0], c[1] + d[1], c[2] + d[2]])
            .map_or(NO_VOXEL, |r| r as u32)
    })
}

/// The mean of all dual vertices (the tie-break for the normals' sign), summed in voxel order.
pub(crate) fn dual_centroid(duals: &[[f32; 3]]) -> [f64; 3] {
    let n = duals.len() as f64;
    duals.iter().fold([0.0f64; 3], |acc, p| {
        [
            acc[0] + f64::from(p[0]) / n,
            acc[1] + f64::from(p[1]) / n,
            acc[2] + f64::from(p[2]) / n,
        ]
    })
}

/// The frame of voxel `row` from its [`neighbourhood`] `rows`, its normal pointing away from
/// `centroid`.
pub(crate) fn neighbourhood_frame(
    duals: &[[f32; 3]],
    rows: &[u32; 27],
    row: usize,
    centroid: [f64; 3],
) -> Option<SurfaceFrame> {
    let mut points = [[0.0f64; 3]; 27];
    let mut count = 0;
    for &r in rows.iter().filter(|&&r| r != NO_VOXEL) {
        points[count] = duals[r as usize].map(f64::from);
        count += 1;
    }
    let p = duals[row].map(f64::from);
    let outward = [p[0] - centroid[0], p[1] - centroid[1], p[2] - centroid[2]];
    plane_frame(&points[..count], outward)
}

/// Frame of the plane through `points` (PCA), normal on the side of `outward`.
fn plane_frame(points: &[[f64; 3]], outward: [f64; 3]) -> Option<SurfaceFrame> {
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let mean = points.iter().fold([0.0; 3], |a, p| {
        [a[0] + p[0] / n, a[1] + p[1] / n, a[2] + p[2] / n]
    });
    let mut m = [[0.0f64; 3]; 3];
    for p in points {
        let d = [p[0] - mean[0], p[1] - mean[1], p[2] - mean[2]];
        for i in 0..3 {
            for j in i..3 {
                m[i][j] += d[i] * d[j];
            }
        }
    }
    let e = sym_eigen3(m);
    if !(e.values[2] > 0.0 && e.values[1] >= MIN_PLANARITY * e.values[2]) {
        return None;
    }
    let tangent = e.vectors[2];
    let mut normal = e.vectors[0];
    if dot(normal, outward) < 0.0 {
        normal = normal.map(|x| -x);
    }
    Some(SurfaceFrame {
        tangent,
        bitangent: cross(normal, tangent),
        normal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plane_fit_finds_the_normal_and_rejects_lines() {
        let tilted: Vec<[f64; 3]> = (0..9)
            .map(|i| {
                let (u, v) = ((i % 3) as f64, (i / 3) as f64);
                [u, v, 0.5 * u] // plane z = x/2, normal ∝ (−1, 0, 2)
            })
            .collect();
        let f = plane_frame(&tilted, [0.0, 0.0, 1.0]).expect("a plane");
        let want = [-1.0 / 5f64.sqrt(), 0.0, 2.0 / 5f64.sqrt()];
        assert!(dot(f.normal, want) > 1.0 - 1e-12, "{:?}", f.normal);
        assert!(dot(cross(f.tangent, f.bitangent), f.normal) > 1.0 - 1e-12);
        let flipped = plane_frame(&tilted, [0.0, 0.0, -1.0]).expect("a plane");
        assert!(dot(flipped.normal, want) < -1.0 + 1e-12);
        let line: Vec<[f64; 3]> = (0..5).map(|i| [i as f64, 0.0, 0.0]).collect();
        assert_eq!(plane_frame(&line, [0.0, 0.0, 1.0]), None);
        assert_eq!(plane_frame(&tilted[..2], [0.0, 0.0, 1.0]), None);
    }
}
