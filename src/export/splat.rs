//! Gaussian splats as an INRIA 3DGS PLY (docs/OUTPUTS.md; TRELLIS.2 has no Gaussian
//! decoder, so the splats are built from the O-Voxels).
//!
//! One splat per voxel, in voxel order:
//! * centre: the voxel's dual vertex;
//! * shape: a flat disc in the plane fitted to the neighbouring dual vertices
//!   ([`super::voxel_frames`]): standard deviation [`TANGENT_SIGMA_VOXELS`] voxels along the
//!   surface, [`NORMAL_SIGMA_FRACTION`] of that across it; where no plane is defined (an isolated
//!   voxel or a one-voxel line) a sphere of the tangent size with `nx ny nz = 0`;
//! * colour: base colour, clamped to [0, 1], as SH degree 0: `f_dc = (rgb − 0.5) / C0`;
//! * opacity: `logit(alpha)` with alpha clamped to `[OPACITY_EPS, 1 − OPACITY_EPS]`.
//!
//! Layout (binary little-endian, all float32, pre-activation as 3DGS stores them: scales are
//! natural logs, `rot_0..3 = (w, x, y, z)` a unit quaternion with `w ≥ 0`, the covariance being
//! `R·diag(exp scale)²·Rᵀ`): `x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 opacity scale_0 scale_1
//! scale_2 rot_0 rot_1 rot_2 rot_3`. Positions, normals and rotations are in the frame chosen
//! by [`Up`].

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::asset::{Asset, ALPHA};
use super::frame::Up;
use super::ply_header::encode_ply;
use super::voxel_frames::{voxel_surface_frames, SurfaceFrame};
use super::write_atomic;

/// SH degree-0 basis constant `1 / (2·sqrt(π))`.
pub const SH_C0: f64 = 0.282_094_791_773_878_14;
/// Splat standard deviation along the surface, in voxels: neighbours sit one voxel apart, so
/// 0.6 leaves no visible gaps (each splat is still above 70 % of its peak halfway to the next)
/// without blurring detail over more than about two voxels.
pub const TANGENT_SIGMA_VOXELS: f64 = 0.6;
/// Splat thickness across the surface, as a fraction of the tangent standard deviation.
pub const NORMAL_SIGMA_FRACTION: f64 = 0.1;
/// Alpha is clamped to `[OPACITY_EPS, 1 − OPACITY_EPS]` before the logit, so opacities stay
/// finite (about ±9.2).
pub const OPACITY_EPS: f64 = 1e-4;

/// One splat as 3DGS stores it (field order is the file's property order).
#[derive(Serialize)]
pub(crate) struct SplatRow {
    pub(crate) x: f32,
    pub(crate) y: f32,
    pub(crate) z: f32,
    pub(crate) nx: f32,
    pub(crate) ny: f32,
    pub(crate) nz: f32,
    pub(crate) f_dc_0: f32,
    pub(crate) f_dc_1: f32,
    pub(crate) f_dc_2: f32,
    pub(crate) opacity: f32,
    pub(crate) scale_0: f32,
    pub(crate) scale_1: f32,
    pub(crate) scale_2: f32,
    pub(crate) rot_0: f32,
    pub(crate) rot_1: f32,
    pub(crate) rot_2: f32,
    pub(crate) rot_3: f32,
}

#[derive(Serialize)]
struct SplatFile {
    vertex: Vec<SplatRow>,
}

/// Writes the splats of `asset` to `path` atomically.
pub fn write_splat_ply(path: &Path, asset: &Asset, up: Up) -> Result<()> {
    let file = splat_file(asset, up);
    write_atomic(path, |w| {
        encode_ply(
            &file,
            "Gaussian splats, INRIA 3DGS layout: one per O-Voxel at its dual vertex",
            up,
            w,
        )
    })
    .with_context(|| format!("{}: cannot write the Gaussian-splat PLY", path.display()))
}

fn splat_file(asset: &Asset, up: Up) -> SplatFile {
    SplatFile {
        vertex: splat_rows(asset, up),
    }
}

/// The splats of `asset` in the frame `up`, one per voxel (also what the SPZ writer stores).
pub(crate) fn splat_rows(asset: &Asset, up: Up) -> Vec<SplatRow> {
    let frames = voxel_surface_frames(asset);
    let voxel = f64::from(asset.voxel_size());
    let tangent_sigma = TANGENT_SIGMA_VOXELS * voxel;
    asset
        .dual_vertices()
        .iter()
        .zip(asset.voxel_attrs())
        .zip(&frames)
        .map(|((&centre, attrs), frame)| {
            let [x, y, z] = up.apply(centre);
            let f_dc = |c: f32| ((f64::from(c.clamp(0.0, 1.0)) - 0.5) / SH_C0) as f32;
            let alpha = f64::from(attrs[ALPHA]).clamp(OPACITY_EPS, 1.0 - OPACITY_EPS);
            let opacity = (alpha / (1.0 - alpha)).ln() as f32;
            let (normal, normal_sigma, rot) = match frame {
                Some(f) => {
                    let f = rotate_frame(f, up);
                    (
                        f.normal.map(|v| v as f32),
                        tangent_sigma * NORMAL_SIGMA_FRACTION,
                        quaternion_of_frame(&f),
                    )
                }
                None => ([0.0; 3], tangent_sigma, [1.0, 0.0, 0.0, 0.0]),
            };
            SplatRow {
                x,
                y,
                z,
                nx: normal[0],
                ny: normal[1],
                nz: normal[2],
                f_dc_0: f_dc(attrs[0]),
                f_dc_1: f_dc(attrs[1]),
                f_dc_2: f_dc(attrs[2]),
                opacity,
                scale_0: tangent_sigma.ln() as f32,
                scale_1: tangent_sigma.ln() as f32,
                scale_2: normal_sigma.ln() as f32,
                rot_0: rot[0] as f32,
                rot_1: rot[1] as f32,
                rot_2: rot[2] as f32,
                rot_3: rot[3] as f32,
            }
        })
        .collect()
}

/// The frame's axes in the file frame (a rotation, so still right-handed and orthonormal).
fn rotate_frame(f: &SurfaceFrame, up: Up) -> SurfaceFrame {
    SurfaceFrame {
        tangent: up.apply(f.tangent),
        bitangent: up.apply(f.bitangent),
        normal: up.apply(f.normal),
    }
}

/// Unit quaternion `(w, x, y, z)`, `w ≥ 0`, of the rotation whose columns are the tangent,
/// bitangent and normal (so 3DGS's `scale_0, scale_1, scale_2` lie along them), by Shepperd's
/// method (branch on the largest diagonal term for accuracy).
fn quaternion_of_frame(f: &SurfaceFrame) -> [f64; 4] {
    let col = [f.tangent, f.bitangent, f.normal];
    let m = |r: usize, c: usize| col[c][r];
    let trace = m(0, 0) + m(1, 1) + m(2, 2);
    let q = if trace > 0.0 {
        let s = (trace + 1.0).sqrt() * 2.0;
        [
            0.25 * s,
            (m(2, 1) - m(1, 2)) / s,
            (m(0, 2) - m(2, 0)) / s,
            (m(1, 0) - m(0, 1)) / s,
        ]
    } else if m(0, 0) > m(1, 1) && m(0, 0) > m(2, 2) {
        let s = (1.0 + m(0, 0) - m(1, 1) - m(2, 2)).sqrt() * 2.0;
        [
            (m(2, 1) - m(1, 2)) / s,
            0.25 * s,
            (m(0, 1) + m(1, 0)) / s,
            (m(0, 2) + m(2, 0)) / s,
        ]
    } else if m(1, 1) > m(2, 2) {
        let s = (1.0 + m(1, 1) - m(0, 0) - m(2, 2)).sqrt() * 2.0;
        [
            (m(0, 2) - m(2, 0)) / s,
            (m(0, 1) + m(1, 0)) / s,
            0.25 * s,
            (m(1, 2) + m(2, 1)) / s,
        ]
    } else {
        let s = (1.0 + m(2, 2) - m(0, 0) - m(1, 1)).sqrt() * 2.0;
        [
            (m(1, 0) - m(0, 1)) / s,
            (m(0, 2) + m(2, 0)) / s,
            (m(1, 2) + m(2, 1)) / s,
            0.25 * s,
        ]
    };
    let sign = if q[0] < 0.0 { -1.0 } else { 1.0 };
    let len = (q.iter().map(|v| v * v).sum::<f64>()).sqrt();
    if len > 0.0 && len.is_finite() {
        q.map(|v| sign * v / len)
    } else {
        [1.0, 0.0, 0.0, 0.0]
    }
}

/// The rotation matrix 3DGS builds from `(w, x, y, z)` (`build_rotation`), for checks.
pub fn rotation_of_quaternion(q: [f64; 4]) -> [[f64; 3]; 3] {
    let len = q.iter().map(|v| v * v).sum::<f64>().sqrt();
    rotation_of_unit_quaternion(if len > 0.0 && len.is_finite() {
        q.map(|v| v / len)
    } else {
        [1.0, 0.0, 0.0, 0.0]
    })
}

/// The rotation matrix of the unit quaternion `(w, x, y, z)` (not normalised here).
pub fn rotation_of_unit_quaternion([w, x, y, z]: [f64; 4]) -> [[f64; 3]; 3] {
    [
        [
            1.0 - 2.0 * (y * y + z * z),
            2.0 * (x * y - w * z),
            2.0 * (x * z + w * y),
        ],
        [
            2.0 * (x * y + w * z),
            1.0 - 2.0 * (x * x + z * z),
            2.0 * (y * z - w * x),
        ],
        [
            2.0 * (x * z - w * y),
            2.0 * (y * z + w * x),
            1.0 - 2.0 * (x * x + y * y),
        ],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::sym_eigen::{cross, sym_eigen3};

    #[test]
    fn quaternion_reproduces_the_frame() {
        // Frames from eigenvectors of assorted symmetric matrices cover all four branches.
        let mats = [
            [[1.0, 0.2, 0.1], [0.2, 2.0, 0.3], [0.1, 0.3, 3.0]],
            [[3.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0]],
            [[2.0, -0.9, 0.4], [-0.9, 1.0, 0.7], [0.4, 0.7, 0.5]],
            [[0.1, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 2.0]],
        ];
        for m in mats {
            let e = sym_eigen3(m);
            let (t, n) = (e.vectors[2], e.vectors[0]);
            let f = SurfaceFrame {
                tangent: t,
                bitangent: cross(n, t),
                normal: n,
            };
            let q = quaternion_of_frame(&f);
            assert!(q[0] >= 0.0);
            let r = rotation_of_quaternion(q);
            for (c, axis) in [f.tangent, f.bitangent, f.normal].iter().enumerate() {
                for row in 0..3 {
                    assert!((r[row][c] - axis[row]).abs() < 1e-12, "{m:?}");
                }
            }
        }
    }
}
