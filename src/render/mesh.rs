//! Triangle meshes by rasterisation: a depth buffer (nearest `1/z` wins; on a tie the earlier
//! triangle), perspective-correct interpolation of vertex colours and texture coordinates, a
//! bilinear base-colour texture lookup in linear light, and one of two shadings ([`Shading`]).
//!
//! The picture is cut into bands of [`BAND_ROWS`] rows; every band visits the triangles that
//! touch it in file order, so the result is the same whatever the number of threads. Each pixel
//! is sampled `supersample²` times at evenly spaced points and box-filtered.

use rayon::prelude::*;

use super::camera::Camera;
use super::{linear_to_srgb, Frame, RenderOptions};
use crate::export::color::srgb_to_linear;

/// Rows of (supersampled) pixels per unit of parallel work.
pub const BAND_ROWS: usize = 16;
/// Headlight shading: the share of light that does not depend on the surface's angle.
pub const AMBIENT: f32 = 0.3;

/// How a mesh's colour becomes a pixel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Shading {
    /// Base colour × (`AMBIENT` + (1 − `AMBIENT`)·|n·l|), the light at the camera (a
    /// "headlight", so every visible face is lit), `n` the face normal; both sides lit alike.
    #[default]
    Headlight,
    /// The base colour as it is: for measurements against splats, which carry no shading.
    Unlit,
}

/// A base-colour image, decoded to linear RGB, sampled with wrap-around (glTF's default).
#[derive(Clone, Debug, PartialEq)]
pub struct Texture {
    pub width: u32,
    pub height: u32,
    /// Linear RGB, row-major, the first row being `v = 0` (glTF's UV origin is the top left).
    pub texels: Vec<[f32; 3]>,
}

impl Texture {
    /// From 8-bit sRGB pixels with `channels` (1 to 4) bytes each; alpha is ignored.
    pub fn from_srgb8(width: u32, height: u32, channels: usize, bytes: &[u8]) -> Self {
        let lut: Vec<f32> = (0..256)
            .map(|v| srgb_to_linear(f64::from(v) / 255.0) as f32)
            .collect();
        let texels = bytes
            .chunks_exact(channels)
            .map(|p| match channels {
                1 | 2 => [lut[p[0] as usize]; 3],
                _ => [lut[p[0] as usize], lut[p[1] as usize], lut[p[2] as usize]],
            })
            .collect();
        Self {
            width,
            height,
            texels,
        }
    }

    /// Bilinear lookup at `uv` (texel centres at `(i + 0.5) / width`), wrapping around.
    pub fn sample(&self, uv: [f32; 2]) -> [f32; 3] {
        let (w, h) = (self.width as i64, self.height as i64);
        if w == 0 || h == 0 {
            return [1.0; 3];
        }
        let x = f64::from(uv[0]) * w as f64 - 0.5;
        let y = f64::from(uv[1]) * h as f64 - 0.5;
        let (x0, y0) = (x.floor(), y.floor());
        let (fx, fy) = ((x - x0) as f32, (y - y0) as f32);
        let texel = |i: i64, j: i64| self.texels[(j.rem_euclid(h) * w + i.rem_euclid(w)) as usize];
        let (x0, y0) = (x0 as i64, y0 as i64);
        let (a, b) = (texel(x0, y0), texel(x0 + 1, y0));
        let (c, d) = (texel(x0, y0 + 1), texel(x0 + 1, y0 + 1));
        std::array::from_fn(|k| {
            let top = a[k] + (b[k] - a[k]) * fx;
            let bottom = c[k] + (d[k] - c[k]) * fx;
            top + (bottom - top) * fy
        })
    }
}

/// A triangle mesh ready to draw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RenderMesh {
    pub positions: Vec<[f32; 3]>,
    pub triangles: Vec<[u32; 3]>,
    /// Linear RGB per vertex.
    pub colors: Option<Vec<[f32; 3]>>,
    /// Per-vertex texture coordinates (glTF's: origin top left).
    pub texcoords: Option<Vec<[f32; 2]>>,
    /// Used where `texcoords` are present.
    pub texture: Option<Texture>,
    /// Linear RGB multiplier of the base colour (glTF's `baseColorFactor`); white by default.
    pub base_color_factor: Option<[f32; 3]>,
}

impl RenderMesh {
    /// Per-axis (min, max) of the vertices the triangles use.
    pub fn bounds(&self) -> Option<([f64; 3], [f64; 3])> {
        let mut lo = [f64::INFINITY; 3];
        let mut hi = [f64::NEG_INFINITY; 3];
        for t in &self.triangles {
            for &i in t {
                let p = self.positions[i as usize];
                for k in 0..3 {
                    lo[k] = lo[k].min(f64::from(p[k]));
                    hi[k] = hi[k].max(f64::from(p[k]));
                }
            }
        }
        lo[0].is_finite().then_some((lo, hi))
    }
}

/// One triangle as drawn: screen positions (`x, y` in pixels) and view depths.
#[derive(Clone, Copy)]
struct Screen {
    x: [f32; 3],
    y: [f32; 3],
    z: [f32; 3],
    area: f32,
}

impl Screen {
    /// Screen-space barycentric weights of the point `(px, py)` (all ≥ 0 inside).
    #[inline]
    fn barycentric(&self, px: f32, py: f32) -> [f32; 3] {
        let (x, y) = (self.x, self.y);
        let e0 = (x[2] - x[1]) * (py - y[1]) - (y[2] - y[1]) * (px - x[1]);
        let e1 = (x[0] - x[2]) * (py - y[2]) - (y[0] - y[2]) * (px - x[2]);
        let e2 = (x[1] - x[0]) * (py - y[0]) - (y[1] - y[0]) * (px - x[0]);
        [e0 / self.area, e1 / self.area, e2 / self.area]
    }

    /// Perspective-correct weights from screen-space ones.
    #[inline]
    fn perspective(&self, b: [f32; 3]) -> [f32; 3] {
        let q = [b[0] / self.z[0], b[1] / self.z[1], b[2] / self.z[2]];
        let s = q[0] + q[1] + q[2];
        q.map(|v| v / s)
    }
}

/// Draws `mesh` from `camera`.
pub fn render_mesh(mesh: &RenderMesh, camera: &Camera, options: &RenderOptions) -> Frame {
    let ss = options.supersample.max(1);
    let (w, h) = (
        camera.width as usize * ss as usize,
        camera.height as usize * ss as usize,
    );
    let mut cam = *camera;
    cam.focal *= f64::from(ss);
    cam.width *= ss;
    cam.height *= ss;
    let [cx, cy] = cam.centre();
    let view: Vec<[f32; 3]> = mesh
        .positions
        .par_iter()
        .map(|p| cam.to_view(p.map(f64::from)).map(|v| v as f32))
        .collect();
    let near = cam.near as f32;
    let focal = cam.focal as f32;
    let (cx, cy) = (cx as f32, cy as f32);
    let screens: Vec<Option<(Screen, usize, usize)>> = mesh
        .triangles
        .par_iter()
        .map(|t| {
            let v = t.map(|i| view[i as usize]);
            if v.iter().any(|p| p[2] < near || !p[2].is_finite()) {
                return None;
            }
            let x = v.map(|p| focal * p[0] / p[2] + cx);
            let y = v.map(|p| focal * p[1] / p[2] + cy);
            let area = (x[1] - x[0]) * (y[2] - y[0]) - (y[1] - y[0]) * (x[2] - x[0]);
            if area == 0.0 || !area.is_finite() {
                return None;
            }
            let ymin = y[0].min(y[1]).min(y[2]);
            let ymax = y[0].max(y[1]).max(y[2]);
            let xmin = x[0].min(x[1]).min(x[2]);
            let xmax = x[0].max(x[1]).max(x[2]);
            if ymax < 0.0 || xmax < 0.0 || ymin > h as f32 || xmin > w as f32 {
                return None;
            }
            let r0 = (ymin - 0.5).ceil().max(0.0) as usize;
            let r1 = ((ymax - 0.5).floor() as i64).min(h as i64 - 1);
            if r1 < r0 as i64 {
                return None;
            }
            let z = v.map(|p| p[2]);
            Some((Screen { x, y, z, area }, r0, r1 as usize))
        })
        .collect();
    let bands = h.div_ceil(BAND_ROWS);
    let mut lists: Vec<Vec<u32>> = vec![Vec::new(); bands];
    for (i, s) in screens.iter().enumerate() {
        if let Some((_, r0, r1)) = s {
            for list in &mut lists[r0 / BAND_ROWS..=r1 / BAND_ROWS] {
                list.push(i as u32);
            }
        }
    }
    // Per sample: display colour (premultiplied) and coverage.
    let mut samples = vec![([0f32; 3], 0f32); w * h];
    samples
        .par_chunks_mut(w * BAND_ROWS)
        .zip(lists.par_iter())
        .enumerate()
        .for_each(|(band, (out, list))| {
            let row0 = band * BAND_ROWS;
            let rows = out.len() / w;
            let mut depth = vec![0f32; out.len()];
            let mut id = vec![u32::MAX; out.len()];
            for &t in list {
                let (s, r0, r1) = screens[t as usize].expect("binned triangles are drawn");
                let inv_z = s.z.map(|z| 1.0 / z);
                let xmin = s.x[0].min(s.x[1]).min(s.x[2]);
                let xmax = s.x[0].max(s.x[1]).max(s.x[2]);
                let c0 = (xmin - 0.5).ceil().max(0.0) as usize;
                let c1 = ((xmax - 0.5).floor() as i64).min(w as i64 - 1);
                if c1 < c0 as i64 {
                    continue;
                }
                for r in r0.max(row0)..=r1.min(row0 + rows - 1) {
                    let py = r as f32 + 0.5;
                    for c in c0..=c1 as usize {
                        let b = s.barycentric(c as f32 + 0.5, py);
                        if b[0] < 0.0 || b[1] < 0.0 || b[2] < 0.0 {
                            continue;
                        }
                        let wz = b[0] * inv_z[0] + b[1] * inv_z[1] + b[2] * inv_z[2];
                        let k = (r - row0) * w + c;
                        if wz > depth[k] {
                            depth[k] = wz;
                            id[k] = t;
                        }
                    }
                }
            }
            for (k, o) in out.iter_mut().enumerate() {
                let t = id[k];
                if t == u32::MAX {
                    continue;
                }
                let (s, _, _) = screens[t as usize].expect("drawn");
                let (r, c) = (row0 + k / w, k % w);
                let b = s.barycentric(c as f32 + 0.5, r as f32 + 0.5);
                let l = s.perspective(b.map(|v| v.max(0.0)));
                let tri = mesh.triangles[t as usize];
                let rgb = shade(mesh, &view, tri, l, options.shading);
                *o = (rgb.map(linear_to_srgb), 1.0);
            }
        });
    downsample(&samples, w, h, ss as usize)
}

/// The linear colour of the point with perspective-correct weights `l` on triangle `tri`.
fn shade(
    mesh: &RenderMesh,
    view: &[[f32; 3]],
    tri: [u32; 3],
    l: [f32; 3],
    shading: Shading,
) -> [f32; 3] {
    let mix3 = |a: [f32; 3], b: [f32; 3], c: [f32; 3]| -> [f32; 3] {
        std::array::from_fn(|k| a[k] * l[0] + b[k] * l[1] + c[k] * l[2])
    };
    let [i0, i1, i2] = tri.map(|i| i as usize);
    let mut rgb = mesh.base_color_factor.unwrap_or([1.0; 3]);
    if let Some(c) = &mesh.colors {
        let v = mix3(c[i0], c[i1], c[i2]);
        rgb = std::array::from_fn(|k| rgb[k] * v[k]);
    }
    if let (Some(uv), Some(tex)) = (&mesh.texcoords, &mesh.texture) {
        let (a, b, c) = (uv[i0], uv[i1], uv[i2]);
        let at = [
            a[0] * l[0] + b[0] * l[1] + c[0] * l[2],
            a[1] * l[0] + b[1] * l[1] + c[1] * l[2],
        ];
        let v = tex.sample(at);
        rgb = std::array::from_fn(|k| rgb[k] * v[k]);
    }
    if shading == Shading::Headlight {
        let (p0, p1, p2) = (view[i0], view[i1], view[i2]);
        let e1 = [p1[0] - p0[0], p1[1] - p0[1], p1[2] - p0[2]];
        let e2 = [p2[0] - p0[0], p2[1] - p0[1], p2[2] - p0[2]];
        let n = [
            e1[1] * e2[2] - e1[2] * e2[1],
            e1[2] * e2[0] - e1[0] * e2[2],
            e1[0] * e2[1] - e1[1] * e2[0],
        ];
        let p = mix3(p0, p1, p2);
        let nn = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
        let pp = (p[0] * p[0] + p[1] * p[1] + p[2] * p[2]).sqrt();
        let cos = if nn > 0.0 && pp > 0.0 {
            ((n[0] * p[0] + n[1] * p[1] + n[2] * p[2]) / (nn * pp)).abs()
        } else {
            1.0
        };
        let f = AMBIENT + (1.0 - AMBIENT) * cos;
        rgb = rgb.map(|v| v * f);
    }
    rgb
}

/// Box filter of `ss × ss` samples per pixel.
fn downsample(samples: &[([f32; 3], f32)], w: usize, h: usize, ss: usize) -> Frame {
    let (ow, oh) = (w / ss, h / ss);
    let mut frame = Frame::new(ow as u32, oh as u32);
    let norm = 1.0 / (ss * ss) as f32;
    frame
        .color
        .par_chunks_mut(ow)
        .zip(frame.alpha.par_chunks_mut(ow))
        .enumerate()
        .for_each(|(y, (color, alpha))| {
            for x in 0..ow {
                let mut c = [0f32; 3];
                let mut a = 0f32;
                for sy in 0..ss {
                    for sx in 0..ss {
                        let (sc, sa) = samples[(y * ss + sy) * w + x * ss + sx];
                        for k in 0..3 {
                            c[k] += sc[k] * sa;
                        }
                        a += sa;
                    }
                }
                color[x] = c.map(|v| v * norm);
                alpha[x] = a * norm;
            }
        });
    frame
}
