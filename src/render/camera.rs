//! Pinhole cameras: an explicit look-at camera, and the orbit the contact sheets use.
//!
//! View space follows 3DGS's camera convention: `x` right, `y` down, `z` forward (into the
//! picture), so a point projects to pixel coordinates `u = f·x/z + w/2`, `v = f·y/z + h/2` with
//! the pixel `(i, j)` covering `[i, i+1) × [j, j+1)` (its centre at `i + 0.5`).

use crate::vec3::{cross, dot, sub};

/// Vertical field of view of the orbit camera, in degrees.
pub const ORBIT_FOV_Y_DEG: f64 = 40.0;
/// The bounding sphere fills this fraction of the picture's height (a small margin).
pub const ORBIT_FILL: f64 = 0.92;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Camera {
    /// Camera centre in world space.
    pub eye: [f64; 3],
    /// World-space unit axes of view space: right, down, forward.
    pub right: [f64; 3],
    pub down: [f64; 3],
    pub forward: [f64; 3],
    /// Focal length in pixels (square pixels).
    pub focal: f64,
    pub width: u32,
    pub height: u32,
    /// Points closer than this along `forward` are not drawn.
    pub near: f64,
}

pub(crate) fn normalize(a: [f64; 3]) -> [f64; 3] {
    let len = dot(a, a).sqrt();
    if len > 0.0 {
        a.map(|v| v / len)
    } else {
        a
    }
}

impl Camera {
    /// A camera at `eye` looking at `target`, `up` pointing up in the picture (it must not be
    /// parallel to the view direction), with the vertical field of view `fov_y_deg`.
    pub fn look_at(
        eye: [f64; 3],
        target: [f64; 3],
        up: [f64; 3],
        fov_y_deg: f64,
        width: u32,
        height: u32,
    ) -> Self {
        let forward = normalize(sub(target, eye));
        let mut right = normalize(cross(forward, up));
        if dot(right, right) == 0.0 {
            // Looking straight along `up`: any perpendicular axis will do.
            right = normalize(cross(forward, [1.0, 0.0, 0.0]));
        }
        let down = cross(forward, right);
        let focal = 0.5 * f64::from(height) / (0.5 * fov_y_deg.to_radians()).tan();
        let distance = dot(sub(target, eye), sub(target, eye)).sqrt();
        Self {
            eye,
            right,
            down,
            forward,
            focal,
            width,
            height,
            near: (distance * 1e-3).max(1e-6),
        }
    }

    /// The orbit view of a box `[lo, hi]`: looking at its centre from azimuth `azimuth_deg`
    /// (0 = from +Z, increasing counter-clockwise seen from +Y) and `elevation_deg` above the
    /// XZ plane, +Y up (glTF's frame), far enough that the bounding sphere fits the picture.
    pub fn orbit(
        lo: [f64; 3],
        hi: [f64; 3],
        azimuth_deg: f64,
        elevation_deg: f64,
        width: u32,
        height: u32,
    ) -> Self {
        let centre = [0, 1, 2].map(|k| 0.5 * (lo[k] + hi[k]));
        let radius = (0.5 * dot(sub(hi, lo), sub(hi, lo)).sqrt()).max(1e-6);
        let half_fov = (0.5 * ORBIT_FOV_Y_DEG).to_radians();
        let distance = radius / (ORBIT_FILL * half_fov.sin());
        let (az, el) = (azimuth_deg.to_radians(), elevation_deg.to_radians());
        let dir = [el.cos() * az.sin(), el.sin(), el.cos() * az.cos()];
        let eye = [0, 1, 2].map(|k| centre[k] + distance * dir[k]);
        let up = if el.cos().abs() < 1e-9 {
            // Straight above or below: keep −Z (the front) at the top of the picture.
            [0.0, 0.0, -el.sin().signum()]
        } else {
            [0.0, 1.0, 0.0]
        };
        let mut cam = Self::look_at(eye, centre, up, ORBIT_FOV_Y_DEG, width, height);
        cam.near = (distance - radius) * 0.5;
        cam
    }

    /// World point → view space (`x` right, `y` down, `z` depth).
    #[inline]
    pub fn to_view(&self, p: [f64; 3]) -> [f64; 3] {
        let d = sub(p, self.eye);
        [dot(d, self.right), dot(d, self.down), dot(d, self.forward)]
    }

    /// Principal point (picture centre) in pixels.
    pub fn centre(&self) -> [f64; 2] {
        [0.5 * f64::from(self.width), 0.5 * f64::from(self.height)]
    }

    /// Half-widths of the view frustum at unit depth (`tan` of the half fields of view).
    pub fn tan_half_fov(&self) -> [f64; 2] {
        let [cx, cy] = self.centre();
        [cx / self.focal, cy / self.focal]
    }
}
