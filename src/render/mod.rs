//! A CPU renderer for the outputs (described in docs/OUTPUTS.md): meshes by rasterisation,
//! Gaussian splats by the 3DGS method, orbit contact sheets, and image metrics (PSNR, SSIM)
//! to measure how close the splats come to the mesh they were made from.
//!
//! * [`camera`]: pinhole camera and the orbit around an object's bounding box (+Y up).
//! * [`mesh`]: triangle rasteriser with a depth buffer, vertex colours or a base-colour texture.
//! * [`splat`]: 3DGS splatting (projected covariances, depth-sorted alpha compositing).
//! * [`load`]: GLB, mesh PLY and 3DGS PLY into the renderer's scenes.
//! * [`metrics`]: PSNR and SSIM between two renders.
//! * [`splat_stats`]: a splat set's sizes, shapes and opacities in numbers (`inspect`).
//!
//! Colour: every render is a [`Frame`] of *display* (sRGB-encoded) values premultiplied by
//! coverage. Meshes are shaded in linear light (glTF vertex colours are linear, textures and PLY
//! colours sRGB, both decoded first) and encoded to sRGB per pixel; splat colours are display
//! values already (3DGS composites them as they are). Work is split into bands or tiles of
//! pixels, each computed from the same ordered inputs, so the output does not depend on the
//! number of threads.

pub mod camera;
pub mod load;
pub mod mesh;
pub mod metrics;
pub mod splat;
pub mod splat_stats;

use anyhow::{ensure, Result};

pub use camera::Camera;
pub use load::{load_scene, Scene};
pub use mesh::{RenderMesh, Shading, Texture};
pub use splat::Splats;

use crate::image::{RgbImage, RgbaImage};

/// What lies behind the object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Background {
    #[default]
    White,
    Black,
    /// Written as alpha (RGBA PNG, colour not premultiplied).
    Transparent,
}

/// One rendered view: premultiplied display colour and coverage per pixel, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    /// Display (sRGB-encoded) colour times coverage.
    pub color: Vec<[f32; 3]>,
    /// Coverage in [0, 1] (1 − transmittance for splats).
    pub alpha: Vec<f32>,
}

impl Frame {
    pub fn new(width: u32, height: u32) -> Self {
        let n = width as usize * height as usize;
        Self {
            width,
            height,
            color: vec![[0.0; 3]; n],
            alpha: vec![0.0; n],
        }
    }

    /// RGBA, 8 bit, over `background` (transparent: colour un-premultiplied, alpha kept).
    pub fn to_rgba8(&self, background: Background) -> Vec<[u8; 4]> {
        let q = crate::export::color::unit_to_u8;
        self.color
            .iter()
            .zip(&self.alpha)
            .map(|(c, &a)| match background {
                Background::White => {
                    let t = 1.0 - a;
                    [q(c[0] + t), q(c[1] + t), q(c[2] + t), 255]
                }
                Background::Black => [q(c[0]), q(c[1]), q(c[2]), 255],
                Background::Transparent => {
                    if a > 0.0 {
                        [q(c[0] / a), q(c[1] / a), q(c[2] / a), q(a)]
                    } else {
                        [0, 0, 0, 0]
                    }
                }
            })
            .collect()
    }
}

/// How to render each view.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RenderOptions {
    /// Meshes: shading model. Splats are always drawn with their own colours.
    pub shading: Shading,
    /// Meshes: samples per pixel along each axis (box-filtered), for smooth edges.
    pub supersample: u32,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            shading: Shading::Headlight,
            supersample: 2,
        }
    }
}

/// Renders `scene` from `camera`.
pub fn render(scene: &Scene, camera: &Camera, options: &RenderOptions) -> Frame {
    match scene {
        Scene::Mesh(m) => mesh::render_mesh(m, camera, options),
        Scene::Splats(s) => splat::render_splats(s, camera),
    }
}

/// The orbit views of a contact sheet.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Orbit {
    pub views: u32,
    /// Side of each (square) view in pixels.
    pub size: u32,
    pub elevation_deg: f64,
}

impl Default for Orbit {
    fn default() -> Self {
        Self {
            views: 8,
            size: 512,
            elevation_deg: 20.0,
        }
    }
}

/// Views per row of a contact sheet.
pub const SHEET_COLUMNS: u32 = 4;

impl Orbit {
    /// View `k`'s camera: azimuth `k·360°/views` from the front (+Z), counter-clockwise seen
    /// from above, around the box `[lo, hi]`.
    pub fn camera(&self, k: u32, lo: [f64; 3], hi: [f64; 3]) -> Camera {
        let az = 360.0 * f64::from(k) / f64::from(self.views.max(1));
        Camera::orbit(lo, hi, az, self.elevation_deg, self.size, self.size)
    }

    /// (columns, rows) of the sheet: rows of up to [`SHEET_COLUMNS`] views.
    pub fn grid(&self) -> (u32, u32) {
        let cols = self.views.clamp(1, SHEET_COLUMNS);
        (cols, self.views.div_ceil(cols))
    }
}

/// Renders every orbit view of `scene`, in order.
pub fn render_orbit(scene: &Scene, orbit: &Orbit, options: &RenderOptions) -> Result<Vec<Frame>> {
    ensure!(orbit.views >= 1, "at least one view is needed");
    ensure!(orbit.size >= 1, "the view size must be at least 1 pixel");
    let (lo, hi) = scene.bounds()?;
    Ok((0..orbit.views)
        .map(|k| render(scene, &orbit.camera(k, lo, hi), options))
        .collect())
}

/// The views side by side, left to right then top to bottom ([`Orbit::grid`]); cells without
/// a view are background.
pub fn contact_sheet(frames: &[Frame], orbit: &Orbit, background: Background) -> RgbaImage {
    let (cols, rows) = orbit.grid();
    let s = orbit.size as usize;
    let (w, h) = (cols as usize * s, rows as usize * s);
    let fill = match background {
        Background::White => [255, 255, 255, 255],
        Background::Black => [0, 0, 0, 255],
        Background::Transparent => [0, 0, 0, 0],
    };
    let mut data = vec![fill; w * h];
    for (k, frame) in frames.iter().enumerate() {
        let (cx, cy) = (k % cols as usize, k / cols as usize);
        let pixels = frame.to_rgba8(background);
        for y in 0..s.min(frame.height as usize) {
            let src = &pixels[y * frame.width as usize..][..s.min(frame.width as usize)];
            let row = (cy * s + y) * w + cx * s;
            data[row..row + src.len()].copy_from_slice(src);
        }
    }
    RgbaImage {
        width: w as u32,
        height: h as u32,
        data: data.into_iter().flatten().collect(),
    }
}

/// Writes a contact sheet as PNG atomically: RGB for opaque backgrounds, RGBA for transparent.
pub fn save_sheet(sheet: &RgbaImage, background: Background, path: &std::path::Path) -> Result<()> {
    match background {
        Background::Transparent => crate::image::save_rgba_png(sheet, path),
        _ => {
            let rgb = RgbImage {
                width: sheet.width,
                height: sheet.height,
                data: sheet
                    .data
                    .chunks_exact(4)
                    .flat_map(|p| [p[0], p[1], p[2]])
                    .collect(),
            };
            crate::image::save_png(&rgb, path)
        }
    }
}

/// The sRGB transfer function (IEC 61966-2-1), linear → display, on values in [0, 1].
#[inline]
pub fn linear_to_srgb(c: f32) -> f32 {
    let c = c.clamp(0.0, 1.0);
    if c <= 0.003_130_8 {
        c * 12.92
    } else {
        1.055 * c.powf(1.0 / 2.4) - 0.055
    }
}
