//! Gaussian splats by the 3D Gaussian Splatting (3DGS) method:
//!
//! * 3D covariance `Σ = R·S·Sᵀ·Rᵀ`, `S = diag(exp scale)`, `R` from the normalised quaternion
//!   `(w, x, y, z)`;
//! * 2D covariance `J·W·Σ·Wᵀ·Jᵀ`, `W` the view rotation and `J` the Jacobian of the perspective
//!   projection at the centre (its `x/z`, `y/z` clamped to 1.3× the field of view, as 3DGS
//!   does), plus 0.3 px² on the diagonal (the low-pass dilation);
//! * footprint: the square of half-side `⌈3·√λ_max⌉` pixels around the projected centre (3DGS
//!   uses it to pick tiles; here it also bounds each pixel, so the footprint does not depend on
//!   the tiling);
//! * opacity `sigmoid(logit)`; colour `0.5 + Σ SH(view direction)`, clamped at 0 (INRIA's
//!   convention; degree 0–3);
//! * front-to-back compositing in depth order (view `z`, ties by file order): a splat adds
//!   `α = min(0.99, o·exp(−½ dᵀ Σ⁻¹ d))` unless `α < 1/255`, and a pixel stops once its
//!   transmittance would fall below 1e-4.
//!
//! Splats are binned to tiles of [`TILE`]² pixels in depth order; tiles are independent, so the
//! result does not depend on the number of threads.

use rayon::prelude::*;

use super::camera::Camera;
use super::Frame;
use crate::export::splat::rotation_of_unit_quaternion;

/// Tile side in pixels.
pub const TILE: usize = 16;
/// 3DGS's low-pass filter: added to the projected covariance's diagonal, in px².
pub const DILATION_PX2: f64 = 0.3;
/// Contributions below this alpha are skipped.
pub const MIN_ALPHA: f32 = 1.0 / 255.0;
/// Alpha is clamped to this (so one splat never makes a pixel fully opaque).
pub const MAX_ALPHA: f32 = 0.99;
/// A pixel stops accumulating when its transmittance would fall below this.
pub const MIN_TRANSMITTANCE: f32 = 1e-4;

/// Real SH basis constants, degree 0 to 3, in 3DGS's order and signs.
const SH_C0: f32 = 0.282_094_8;
const SH_C1: f32 = 0.488_602_5;
const SH_C2: [f32; 5] = [
    1.092_548_4,
    -1.092_548_4,
    0.315_391_57,
    -1.092_548_4,
    0.546_274_2,
];
const SH_C3: [f32; 7] = [
    -0.590_043_6,
    2.890_611_4,
    -0.457_045_8,
    0.373_176_33,
    -0.457_045_8,
    1.445_305_7,
    -0.590_043_6,
];

/// Gaussian splats, activated (scales as standard deviations, opacities in (0, 1)).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Splats {
    pub positions: Vec<[f32; 3]>,
    /// Standard deviations along the rotated axes (`exp` of the file's log scales).
    pub scales: Vec<[f32; 3]>,
    /// Unit quaternions `(w, x, y, z)`.
    pub rotations: Vec<[f32; 4]>,
    /// `sigmoid` of the file's logits.
    pub opacities: Vec<f32>,
    /// SH degree, 0 to 3.
    pub sh_degree: u32,
    /// Per splat `(degree + 1)²` coefficients × RGB, coefficient-major: `sh[(i·K + k)·3 + c]`.
    pub sh: Vec<f32>,
}

impl Splats {
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// Coefficients per colour channel.
    pub fn coefficients(&self) -> usize {
        ((self.sh_degree + 1) * (self.sh_degree + 1)) as usize
    }

    /// Per-axis (min, max) of the centres.
    pub fn bounds(&self) -> Option<([f64; 3], [f64; 3])> {
        let mut lo = [f64::INFINITY; 3];
        let mut hi = [f64::NEG_INFINITY; 3];
        for p in &self.positions {
            for k in 0..3 {
                lo[k] = lo[k].min(f64::from(p[k]));
                hi[k] = hi[k].max(f64::from(p[k]));
            }
        }
        lo[0].is_finite().then_some((lo, hi))
    }

    /// The 3D covariance of splat `i` (upper triangle: xx, xy, xz, yy, yz, zz).
    pub fn covariance(&self, i: usize) -> [f64; 6] {
        let r = rotation_of_unit_quaternion(self.rotations[i].map(f64::from));
        let s = self.scales[i].map(f64::from);
        let m: [[f64; 3]; 3] = std::array::from_fn(|a| std::array::from_fn(|b| r[a][b] * s[b]));
        let e = |a: usize, b: usize| (0..3).map(|k| m[a][k] * m[b][k]).sum::<f64>();
        [e(0, 0), e(0, 1), e(0, 2), e(1, 1), e(1, 2), e(2, 2)]
    }

    /// Colour of splat `i` seen along the unit direction `dir` (from the camera to the splat).
    pub fn color(&self, i: usize, dir: [f32; 3]) -> [f32; 3] {
        let k = self.coefficients();
        let sh = &self.sh[i * k * 3..(i + 1) * k * 3];
        let c = |j: usize| [sh[j * 3], sh[j * 3 + 1], sh[j * 3 + 2]];
        let mut basis = [0f32; 16];
        basis[0] = SH_C0;
        if self.sh_degree > 0 {
            let [x, y, z] = dir;
            basis[1] = -SH_C1 * y;
            basis[2] = SH_C1 * z;
            basis[3] = -SH_C1 * x;
            if self.sh_degree > 1 {
                let (xx, yy, zz) = (x * x, y * y, z * z);
                let (xy, yz, xz) = (x * y, y * z, x * z);
                basis[4] = SH_C2[0] * xy;
                basis[5] = SH_C2[1] * yz;
                basis[6] = SH_C2[2] * (2.0 * zz - xx - yy);
                basis[7] = SH_C2[3] * xz;
                basis[8] = SH_C2[4] * (xx - yy);
                if self.sh_degree > 2 {
                    basis[9] = SH_C3[0] * y * (3.0 * xx - yy);
                    basis[10] = SH_C3[1] * xy * z;
                    basis[11] = SH_C3[2] * y * (4.0 * zz - xx - yy);
                    basis[12] = SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy);
                    basis[13] = SH_C3[4] * x * (4.0 * zz - xx - yy);
                    basis[14] = SH_C3[5] * z * (xx - yy);
                    basis[15] = SH_C3[6] * x * (xx - 3.0 * yy);
                }
            }
        }
        let mut rgb = [0.5f32; 3];
        for (j, b) in basis.iter().enumerate().take(k) {
            let v = c(j);
            for ch in 0..3 {
                rgb[ch] += b * v[ch];
            }
        }
        rgb.map(|v| v.max(0.0))
    }
}

/// What compositing reads of a splat seen from a camera.
#[derive(Clone, Copy, Debug)]
struct Drawn {
    /// Centre in pixels.
    mean: [f32; 2],
    /// Inverse 2D covariance (a, b, c for `[[a, b], [b, c]]`).
    conic: [f32; 3],
    opacity: f32,
    color: [f32; 3],
    /// Half-side of the square footprint, in pixels.
    radius: f32,
}

/// One splat as seen from a camera.
#[derive(Clone, Copy, Debug)]
struct Projected {
    drawn: Drawn,
    depth: f32,
    /// Tile range covered, inclusive: x0, y0, x1, y1.
    tiles: [u32; 4],
    /// Row in the file, for a unique depth order.
    index: u32,
}

fn project(splats: &Splats, i: usize, cam: &Camera, tiles: [u32; 2]) -> Option<Projected> {
    let p = splats.positions[i].map(f64::from);
    let t = cam.to_view(p);
    if t[2] <= cam.near || !t[2].is_finite() {
        return None;
    }
    let [tan_x, tan_y] = cam.tan_half_fov();
    let (lim_x, lim_y) = (1.3 * tan_x, 1.3 * tan_y);
    let tx = (t[0] / t[2]).clamp(-lim_x, lim_x) * t[2];
    let ty = (t[1] / t[2]).clamp(-lim_y, lim_y) * t[2];
    let (f, z) = (cam.focal, t[2]);
    // J = [[f/z, 0, −f·x/z²], [0, f/z, −f·y/z²]]; T = J·W (rows of W: right, down, forward).
    let j = [
        [f / z, 0.0, -f * tx / (z * z)],
        [0.0, f / z, -f * ty / (z * z)],
    ];
    let w = [cam.right, cam.down, cam.forward];
    let tm: [[f64; 3]; 2] =
        std::array::from_fn(|r| std::array::from_fn(|c| (0..3).map(|k| j[r][k] * w[k][c]).sum()));
    let s = splats.covariance(i);
    let sigma = [[s[0], s[1], s[2]], [s[1], s[3], s[4]], [s[2], s[4], s[5]]];
    let ts: [[f64; 3]; 2] = std::array::from_fn(|r| {
        std::array::from_fn(|c| (0..3).map(|k| tm[r][k] * sigma[k][c]).sum())
    });
    let cov = |a: usize, b: usize| (0..3).map(|k| ts[a][k] * tm[b][k]).sum::<f64>();
    let (a, b, c) = (
        cov(0, 0) + DILATION_PX2,
        cov(0, 1),
        cov(1, 1) + DILATION_PX2,
    );
    let det = a * c - b * b;
    if det <= 0.0 || !det.is_finite() {
        return None;
    }
    let mid = 0.5 * (a + c);
    let lambda = mid + (mid * mid - det).max(0.1).sqrt();
    let radius = (3.0 * lambda.sqrt()).ceil();
    let [cx, cy] = cam.centre();
    let mean = [f * t[0] / z + cx, f * t[1] / z + cy];
    // Pixels whose centre (i + 0.5) lies within `radius` of the mean, on each axis.
    let lo = |m: f64| ((m - radius - 0.5).ceil().max(0.0)) as i64;
    let hi = |m: f64, n: u32| ((m + radius - 0.5).floor() as i64).min(i64::from(n) - 1);
    let (x0, x1) = (lo(mean[0]), hi(mean[0], cam.width));
    let (y0, y1) = (lo(mean[1]), hi(mean[1], cam.height));
    if x1 < x0 || y1 < y0 {
        return None;
    }
    let tile = TILE as i64;
    let tiles = [
        (x0 / tile) as u32,
        (y0 / tile) as u32,
        ((x1 / tile) as u32).min(tiles[0] - 1),
        ((y1 / tile) as u32).min(tiles[1] - 1),
    ];
    let dir = super::camera::normalize(crate::vec3::sub(p, cam.eye)).map(|v| v as f32);
    Some(Projected {
        drawn: Drawn {
            mean: mean.map(|v| v as f32),
            conic: [(c / det) as f32, (-b / det) as f32, (a / det) as f32],
            opacity: splats.opacities[i],
            color: splats.color(i, dir),
            radius: radius as f32,
        },
        depth: z as f32,
        tiles,
        index: i as u32,
    })
}

/// Draws `splats` from `camera`.
///
/// The same pixels as [`render_splats_reference`], bit for bit, for less work: the depth
/// order is sorted as packed integer keys, and each tile's list is cut into lists per
/// [`BLOCK`]² pixels holding only the splats whose footprint square reaches one of their
/// pixel centres (by the same `f32` test [`composite`] skips the others with), in the tile
/// list's order. A pixel then walks a list a few times shorter and meets the same
/// contributions in the same order.
pub fn render_splats(splats: &Splats, camera: &Camera) -> Frame {
    let (w, h) = (camera.width as usize, camera.height as usize);
    let tiles = [w.div_ceil(TILE) as u32, h.div_ceil(TILE) as u32];
    let projected: Vec<Projected> = (0..splats.len())
        .into_par_iter()
        .filter_map(|i| project(splats, i, camera, tiles))
        .collect();
    let lists = tile_lists(&projected, tiles);
    drop(projected);
    let mut frame = Frame::new(camera.width, camera.height);
    let tiles_x = tiles[0] as usize;
    // Per tile: its pixels' (colour, coverage), row-major within the tile.
    let pixels: Vec<Vec<([f32; 3], f32)>> = lists
        .par_iter()
        .enumerate()
        .map_init(
            || vec![Vec::new(); (TILE / BLOCK) * (TILE / BLOCK)],
            |blocks, (t, list)| {
                let (x0, y0) = ((t % tiles_x) * TILE, (t / tiles_x) * TILE);
                let (cols, rows) = ((w - x0).min(TILE), (h - y0).min(TILE));
                let mut out = vec![([0f32; 3], 0f32); cols * rows];
                if list.is_empty() {
                    return out;
                }
                split_into_blocks(list, [x0, y0], [cols, rows], blocks);
                for r in 0..rows {
                    let py = (y0 + r) as f32 + 0.5;
                    for c in 0..cols {
                        let px = (x0 + c) as f32 + 0.5;
                        let block = &blocks[(r / BLOCK) * (TILE / BLOCK) + c / BLOCK];
                        let splats = block.iter().map(|b| (&b.drawn, b.cut));
                        out[r * cols + c] = composite(splats, px, py);
                    }
                }
                out
            },
        )
        .collect();
    for (t, tile) in pixels.iter().enumerate() {
        let (x0, y0) = ((t % tiles_x) * TILE, (t / tiles_x) * TILE);
        let cols = (w - x0).min(TILE);
        for (r, row) in tile.chunks_exact(cols).enumerate() {
            let at = (y0 + r) * w + x0;
            for (k, &(rgb, a)) in row.iter().enumerate() {
                frame.color[at + k] = rgb;
                frame.alpha[at + k] = a;
            }
        }
    }
    frame
}

/// Side in pixels of the blocks a tile's list is cut into for compositing (divides [`TILE`]).
pub const BLOCK: usize = 4;

/// A splat as binned for compositing: what [`composite`] reads, and the power below which its
/// alpha is below [`MIN_ALPHA`] for certain: `ln(MIN_ALPHA / opacity)` less a margin far wider
/// than the rounding of `expf` and of the product (a hundredth, so about 1 %).
#[derive(Clone, Copy, Debug)]
struct Binned {
    drawn: Drawn,
    cut: f32,
}

impl Binned {
    fn new(drawn: Drawn) -> Self {
        let ratio = f64::from(MIN_ALPHA) / f64::from(drawn.opacity);
        Self {
            drawn,
            cut: (ratio.ln() - 0.01) as f32,
        }
    }
}

/// Splats sorted together per task while binning: enough to amortise a task, few enough that
/// the per-task lists stay small.
const BIN_CHUNK: usize = 1 << 16;

/// Per tile, copies of the projected splats whose footprint covers it, in depth order (view
/// `z`, ties by file order): the tile's pixels then read one contiguous list instead of
/// gathering from the whole set.
fn tile_lists(projected: &[Projected], tiles: [u32; 2]) -> Vec<Vec<Binned>> {
    // `f32::total_cmp`'s order as an unsigned key, then the position in `projected`, which
    // follows file order: one integer per splat holds the whole (unique) order.
    // A splat more transparent than MIN_ALPHA never adds to a pixel (its alpha is at most its
    // opacity): left out. A NaN opacity stays, as the reference compositor keeps it.
    let mut keys: Vec<u64> = projected
        .par_iter()
        .enumerate()
        .filter(|(_, p)| p.drawn.opacity >= MIN_ALPHA || p.drawn.opacity.is_nan())
        .map(|(j, p)| {
            let b = p.depth.to_bits() as i32;
            let ordered = (b ^ ((((b >> 31) as u32) >> 1) as i32)) as u32 ^ 0x8000_0000;
            (u64::from(ordered) << 32) | j as u64
        })
        .collect();
    keys.par_sort_unstable();
    let count = (tiles[0] * tiles[1]) as usize;
    // Consecutive runs of the order binned side by side, then each tile's parts joined in run
    // order: the same lists as one pass in order, whatever the number of threads.
    let parts: Vec<Vec<Vec<Binned>>> = keys
        .par_chunks(BIN_CHUNK)
        .map(|run| {
            let mut lists: Vec<Vec<Binned>> = vec![Vec::new(); count];
            for &key in run {
                let p = &projected[key as u32 as usize];
                let b = Binned::new(p.drawn);
                let t = p.tiles;
                for ty in t[1]..=t[3] {
                    for tx in t[0]..=t[2] {
                        lists[(ty * tiles[0] + tx) as usize].push(b);
                    }
                }
            }
            lists
        })
        .collect();
    (0..count)
        .into_par_iter()
        .map(|t| {
            let mut list = Vec::with_capacity(parts.iter().map(|p| p[t].len()).sum());
            for p in &parts {
                list.extend_from_slice(&p[t]);
            }
            list
        })
        .collect()
}

/// Cuts the list of the tile whose top-left pixel is `origin` (`size` pixels of it inside the
/// picture) into per-block copies of the splats. A splat goes to a block unless every pixel
/// centre of the block fails [`composite`]'s footprint test: the offsets `mean − centre` fall
/// as the centre moves right (or down), so it is enough that the first column's is not below
/// `−radius` and the last column's not above `radius` (likewise for rows). The blocks keep the
/// tile's order.
fn split_into_blocks(
    list: &[Binned],
    origin: [usize; 2],
    size: [usize; 2],
    blocks: &mut [Vec<Binned>],
) {
    const PER_SIDE: usize = TILE / BLOCK;
    for b in blocks.iter_mut() {
        b.clear();
    }
    // Pixel centres of each block's first and last column (row).
    let ends = |axis: usize| -> [[f32; 2]; PER_SIDE] {
        std::array::from_fn(|k| {
            let first = (k * BLOCK).min(size[axis].saturating_sub(1));
            let last = ((k + 1) * BLOCK).min(size[axis]).saturating_sub(1);
            [
                (origin[axis] + first) as f32 + 0.5,
                (origin[axis] + last) as f32 + 0.5,
            ]
        })
    };
    let (xs, ys) = (ends(0), ends(1));
    let (bx, by) = (size[0].div_ceil(BLOCK), size[1].div_ceil(BLOCK));
    for b in list {
        let g = &b.drawn;
        let reaches =
            |m: f32, [first, last]: [f32; 2]| !(m - first < -g.radius || m - last > g.radius);
        let mut cols = 0u32;
        for (k, &e) in xs.iter().enumerate().take(bx) {
            if reaches(g.mean[0], e) {
                cols |= 1 << k;
            }
        }
        if cols == 0 {
            continue;
        }
        for (k, &e) in ys.iter().enumerate().take(by) {
            if reaches(g.mean[1], e) {
                for (c, block) in blocks[k * PER_SIDE..][..bx].iter_mut().enumerate() {
                    if cols & (1 << c) != 0 {
                        block.push(*b);
                    }
                }
            }
        }
    }
}

/// Draws `splats` from `camera` the plain way: one global sort of the projected splats, then
/// every pixel of a tile walks the whole tile list. The definition [`render_splats`] must
/// match bit for bit (the tests compare them).
pub fn render_splats_reference(splats: &Splats, camera: &Camera) -> Frame {
    let (w, h) = (camera.width as usize, camera.height as usize);
    let tiles = [w.div_ceil(TILE) as u32, h.div_ceil(TILE) as u32];
    let mut projected: Vec<Projected> = (0..splats.len())
        .into_par_iter()
        .filter_map(|i| project(splats, i, camera, tiles))
        .collect();
    // Depth, then file order: a total order, so the sort's result is unique.
    projected.par_sort_unstable_by(|a, b| a.depth.total_cmp(&b.depth).then(a.index.cmp(&b.index)));
    let mut lists: Vec<Vec<u32>> = vec![Vec::new(); (tiles[0] * tiles[1]) as usize];
    for (i, p) in projected.iter().enumerate() {
        let t = p.tiles;
        for ty in t[1]..=t[3] {
            for tx in t[0]..=t[2] {
                lists[(ty * tiles[0] + tx) as usize].push(i as u32);
            }
        }
    }
    let mut frame = Frame::new(camera.width, camera.height);
    let tiles_x = tiles[0] as usize;
    frame
        .color
        .par_chunks_mut(w * TILE)
        .zip(frame.alpha.par_chunks_mut(w * TILE))
        .enumerate()
        .for_each(|(ty, (color, alpha))| {
            let rows = alpha.len() / w;
            for tx in 0..tiles_x {
                let list = &lists[ty * tiles_x + tx];
                if list.is_empty() {
                    continue;
                }
                for r in 0..rows {
                    let py = (ty * TILE + r) as f32 + 0.5;
                    for c in tx * TILE..((tx + 1) * TILE).min(w) {
                        let px = c as f32 + 0.5;
                        let splats = list
                            .iter()
                            .map(|&i| (&projected[i as usize].drawn, f32::NEG_INFINITY));
                        let (rgb, a) = composite(splats, px, py);
                        color[r * w + c] = rgb;
                        alpha[r * w + c] = a;
                    }
                }
            }
        });
    frame
}

/// Front-to-back compositing at pixel centre `(px, py)`: (premultiplied colour, coverage).
#[inline]
///
/// Each splat comes with a `cut`: a power below it gives an alpha below [`MIN_ALPHA`] for sure,
/// so the exponential is skipped (`−∞` never skips).
fn composite<'a>(
    list: impl Iterator<Item = (&'a Drawn, f32)>,
    px: f32,
    py: f32,
) -> ([f32; 3], f32) {
    let mut t = 1.0f32;
    let mut rgb = [0f32; 3];
    for (g, cut) in list {
        let (dx, dy) = (g.mean[0] - px, g.mean[1] - py);
        if dx.abs() > g.radius || dy.abs() > g.radius {
            continue;
        }
        let power = -0.5 * (g.conic[0] * dx * dx + g.conic[2] * dy * dy) - g.conic[1] * dx * dy;
        if power > 0.0 || power < cut {
            continue;
        }
        let alpha = (g.opacity * power.exp()).min(MAX_ALPHA);
        if alpha < MIN_ALPHA {
            continue;
        }
        let next = t * (1.0 - alpha);
        if next < MIN_TRANSMITTANCE {
            break;
        }
        for (out, c) in rgb.iter_mut().zip(g.color) {
            *out += c * alpha * t;
        }
        t = next;
    }
    (rgb, 1.0 - t)
}
