//! Gaussian splats as an INRIA 3DGS PLY (docs/OUTPUTS.md; TRELLIS.2 has no Gaussian
//! decoder, so the splats are built from the O-Voxels).
//!
//! The splats are fitted to the surface ([`super::splat_fit`]): one per voxel, or fewer and
//! larger ones merged by an octree when a [`SplatBudget`] asks for it. Each is a flat Gaussian
//! lying in the surface with its thin axis along the outward normal:
//! * colour: base colour, clamped to [0, 1], as SH degree 0: `f_dc = (rgb − 0.5) / C0`;
//! * opacity: `logit(alpha)` with alpha clamped to `[OPACITY_EPS, 1 − OPACITY_EPS]`;
//! * `nx ny nz`: the outward normal (zero where none is defined: an isolated voxel or a
//!   one-voxel line, whose splat is a sphere);
//! * rotation: the splat's tangent, bitangent and normal; for a round disc (equal in-plane
//!   scales) the shortest rotation from +Z to the normal, which compresses well in SPZ.
//!
//! Layout (binary little-endian, all float32, pre-activation as 3DGS stores them: scales are
//! natural logs, `rot_0..3 = (w, x, y, z)` a unit quaternion with `w ≥ 0`, the covariance being
//! `R·diag(exp scale)²·Rᵀ`): `x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 opacity scale_0 scale_1
//! scale_2 rot_0 rot_1 rot_2 rot_3`. Positions, normals and rotations are in the frame chosen
//! by [`Up`].

use std::path::Path;

use anyhow::{Context, Result};
use rayon::prelude::*;
use serde::Serialize;

use super::asset::Asset;
use super::frame::Up;
use super::ply_header::encode_ply;
use super::splat_fit::{fit_splats, FittedSplat};
pub use super::splat_fit::{SplatBudget, SplatShape};
use super::voxel_frames::SurfaceFrame;
use super::write_atomic;

/// SH degree-0 basis constant `1 / (2·sqrt(π))`.
pub const SH_C0: f64 = 0.282_094_791_773_878_14;
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

/// Writes the splats of `asset`, at most `budget` of them, to `path` atomically.
pub fn write_splat_ply(path: &Path, asset: &Asset, up: Up, budget: SplatBudget) -> Result<()> {
    write_splat_ply_shaped(path, asset, up, budget, &SplatShape::default())
}

/// The same with the shape knobs given (for measuring them; the writers use the default).
pub fn write_splat_ply_shaped(
    path: &Path,
    asset: &Asset,
    up: Up,
    budget: SplatBudget,
    shape: &SplatShape,
) -> Result<()> {
    write_fitted_splat_ply(path, &fit_splats(asset, budget, shape), up)
}

/// Writes splats already fitted ([`super::splat_fit::fit_splats`]) to `path` atomically.
pub fn write_fitted_splat_ply(path: &Path, splats: &[FittedSplat], up: Up) -> Result<()> {
    let file = SplatFile {
        vertex: fitted_rows(splats, up),
    };
    write_atomic(path, |w| {
        encode_ply(
            &file,
            "Gaussian splats, INRIA 3DGS layout: fitted to the O-Voxels' surface",
            up,
            w,
        )
    })
    .with_context(|| format!("{}: cannot write the Gaussian-splat PLY", path.display()))
}

/// Fitted splats as rows in the frame `up` (also what the SPZ writer stores).
pub(crate) fn fitted_rows(splats: &[FittedSplat], up: Up) -> Vec<SplatRow> {
    splats.par_iter().map(|s| splat_row(s, up)).collect()
}

fn splat_row(s: &FittedSplat, up: Up) -> SplatRow {
    let [x, y, z] = up.apply(s.centre).map(|v| v as f32);
    let f_dc = |c: f64| ((c.clamp(0.0, 1.0) - 0.5) / SH_C0) as f32;
    let alpha = s.alpha.clamp(OPACITY_EPS, 1.0 - OPACITY_EPS);
    let opacity = (alpha / (1.0 - alpha)).ln() as f32;
    let frame = SurfaceFrame {
        tangent: up.apply(s.axes[0]),
        bitangent: up.apply(s.axes[1]),
        normal: up.apply(s.axes[2]),
    };
    let (normal, rot) = if s.has_normal && s.sigma[0] == s.sigma[1] {
        // A round disc: any turn about the normal is the same Gaussian.
        (
            frame.normal.map(|v| v as f32),
            twist_free_quaternion(frame.normal),
        )
    } else if s.has_normal {
        (frame.normal.map(|v| v as f32), quaternion_of_frame(&frame))
    } else {
        ([0.0; 3], [1.0, 0.0, 0.0, 0.0])
    };
    let log = |v: f64| v.max(1e-12).ln() as f32;
    SplatRow {
        x,
        y,
        z,
        nx: normal[0],
        ny: normal[1],
        nz: normal[2],
        f_dc_0: f_dc(s.rgb[0]),
        f_dc_1: f_dc(s.rgb[1]),
        f_dc_2: f_dc(s.rgb[2]),
        opacity,
        scale_0: log(s.sigma[0]),
        scale_1: log(s.sigma[1]),
        scale_2: log(s.sigma[2]),
        rot_0: rot[0] as f32,
        rot_1: rot[1] as f32,
        rot_2: rot[2] as f32,
        rot_3: rot[3] as f32,
    }
}

/// Unit quaternion `(w, x, y, z)`, `w ≥ 0`, of the shortest rotation taking +Z to the unit
/// vector `n` (about the axis `z × n`, so its `z` component is 0): neighbouring round discs on a
/// smooth surface get neighbouring quaternions, which compress well. Opposite to +Z, where the
/// axis is undefined, the half turn about +X.
fn twist_free_quaternion(n: [f64; 3]) -> [f64; 4] {
    let twice_cos_sq = 2.0 * (1.0 + n[2]);
    if twice_cos_sq < 1e-12 {
        return [0.0, 1.0, 0.0, 0.0];
    }
    let len = twice_cos_sq.sqrt();
    [(1.0 + n[2]) / len, -n[1] / len, n[0] / len, 0.0]
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
    use crate::export::sym_eigen::{cross, normalized, sym_eigen3};

    #[test]
    fn twist_free_quaternion_turns_z_onto_the_normal_without_twist() {
        let normals = [
            [0.0, 0.0, 1.0],
            [0.0, 0.0, -1.0],
            [0.6, 0.0, 0.8],
            [-0.48, 0.6, -0.64],
            [1e-9, 0.0, -1.0],
        ];
        for n in normals {
            let n = normalized(n).unwrap();
            let q = twist_free_quaternion(n);
            assert!(q[0] >= 0.0 && q[3] == 0.0, "{q:?}");
            let r = rotation_of_quaternion(q);
            for row in 0..3 {
                assert!((r[row][2] - n[row]).abs() < 1e-6, "{n:?}: {r:?}");
            }
        }
    }

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
