//! Splats fitted to the surface (docs/OUTPUTS.md): every voxel's surface patch, and the patches
//! merged by an octree into fewer, larger Gaussians when a splat budget asks for it.
//!
//! A voxel's patch is the part of the mesh its dual vertex owns (a third of each incident
//! triangle's area), lying in the plane fitted to the neighbouring dual vertices (facing the way
//! the outward-wound mesh does there), shaped like their spread in that plane. A patch is
//! summed up by its area, its centre and its second moment (that of a uniform patch, so patches
//! merge by moment matching); a splat is the Gaussian of a patch or a union of patches:
//! standard deviations `√(GAUSSIAN_PER_UNIFORM · λ)` along the principal axes of the second
//! moment projected on the tangent plane, and a thin axis along the normal.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Instant;

use rayon::prelude::*;

use super::asset::{Asset, ALPHA};
use super::face_orientation::faces_wound_outward;
use super::sym_eigen::{cross, dot, normalized, sym_eigen3};
use super::voxel_frames::voxel_surface_frames;
use crate::mesh::dual_grid::AABB_MIN;

/// How many splats to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplatBudget {
    /// One per voxel.
    All,
    /// At most this many (at least 1), merging neighbouring voxels when there are more.
    AtMost(usize),
}

/// Shape knobs, with the values the writers use as `Default` (measured in `tests/render.rs`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SplatShape {
    /// Variance of the splat over the variance of the uniform patch it stands for, per axis:
    /// 4.32 gives a square patch of side `h` a standard deviation of `0.6·h`, the spacing at
    /// which neighbouring Gaussians leave no visible gaps (each is above 70 % of its peak halfway
    /// to the next) without blurring over more than about two voxels.
    pub gaussian_per_uniform: f64,
    /// Thickness across the surface, as a fraction of the smaller in-plane standard deviation
    /// (merged splats over curved patches need some; the sweep in `tests/render.rs`).
    pub normal_fraction: f64,
    /// Largest ratio of the two in-plane standard deviations of one voxel's patch.
    pub max_anisotropy: f64,
    /// Centres move this many reference pixels ([`reference_pixel`]) inward along the outward
    /// normal, so that the rim of edge-on splats, widened by every 3DGS renderer's low-pass
    /// dilation (0.3 px², a screen-space blur) and by alpha piling up along grazing rays, lands
    /// on the mesh's silhouette.
    pub inward_pixels: f64,
    /// A splat whose two in-plane standard deviations differ by less than this ratio becomes a
    /// round disc of the same area (their geometric mean). The surface's own curvature and the
    /// grid's terraces leave patches mildly elongated (at most about 1.5:1 on smooth analytic
    /// shapes); a round disc is invariant under turns about its normal, so its rotation can be
    /// the twist-free one (`splat.rs`), a smooth function of the normal, which SPZ's gzip
    /// stores in about a byte less per splat than a rotation following the patch's axes; and
    /// measured on the analytic sphere and torus, the round discs render slightly closer to
    /// the mesh (docs/OUTPUTS.md).
    pub round_below: f64,
}

impl Default for SplatShape {
    fn default() -> Self {
        Self {
            gaussian_per_uniform: 4.32,
            normal_fraction: 0.1,
            max_anisotropy: 3.0,
            inward_pixels: 1.3,
            round_below: 1.6,
        }
    }
}

/// The view the splats are tuned for: the whole object in a square picture of this many pixels
/// with the orbit camera of `trellis2 render` (40° vertical field of view, the bounding sphere
/// filling 92 % of the height) — the previews' and the quality measurement's view
/// (`render::metrics::QUALITY_ORBIT`; `tests/render.rs` checks they agree).
pub const REFERENCE_VIEW_PIXELS: f64 = 512.0;
pub const REFERENCE_FOV_Y_DEG: f64 = 40.0;
pub const REFERENCE_FILL: f64 = 0.92;

/// The side of one pixel at the object's distance in the reference view, in world units: the
/// bounding box's diagonal over `FILL · cos(fov/2) · pixels` (the orbit's distance is
/// `radius / (FILL · sin(fov/2))`, a pixel there `2·distance·tan(fov/2) / pixels`).
pub fn reference_pixel(points: &[[f32; 3]]) -> f64 {
    let mut lo = [f64::INFINITY; 3];
    let mut hi = [f64::NEG_INFINITY; 3];
    for p in points {
        for k in 0..3 {
            lo[k] = lo[k].min(f64::from(p[k]));
            hi[k] = hi[k].max(f64::from(p[k]));
        }
    }
    let d = sub(hi, lo);
    let diagonal = dot(d, d).sqrt();
    if !diagonal.is_finite() {
        return 0.0;
    }
    let half_fov = (0.5 * REFERENCE_FOV_Y_DEG).to_radians();
    diagonal / (REFERENCE_FILL * half_fov.cos() * REFERENCE_VIEW_PIXELS)
}

/// One fitted splat, in the pipeline frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FittedSplat {
    pub centre: [f64; 3],
    /// Unit axes of the standard deviations `sigma`: tangent, bitangent, normal (right-handed).
    /// Without a normal (an isolated voxel or a line), the identity.
    pub axes: [[f64; 3]; 3],
    pub sigma: [f64; 3],
    /// Base colour (sRGB-encoded, as the decoders give it), not clamped.
    pub rgb: [f64; 3],
    pub alpha: f64,
    /// Whether `axes[2]` is a surface normal (pointing outward).
    pub has_normal: bool,
}

/// What one voxel contributes: its surface patch and attributes.
#[derive(Clone, Copy, Debug)]
struct Patch {
    centre: [f64; 3],
    /// Outward unit normal, if the voxel's neighbourhood or the mesh defines one.
    normal: Option<[f64; 3]>,
    /// Area in world units².
    area: f64,
    /// Second moment of the uniform patch about its centre (symmetric 3×3).
    moment: [[f64; 3]; 3],
    rgb: [f64; 3],
    alpha: f64,
    /// How far inward the centre may move (world units): less than half the distance to the
    /// nearest surface facing the other way behind it, so the two sides of a thin wall never
    /// pass each other.
    inward_limit: f64,
}

/// A voxel's centre moves at most this fraction of the distance to the opposite side of a
/// thin wall.
const THIN_WALL_FRACTION: f64 = 0.4;

/// The splats of `asset` within `budget`, deterministic (same input, same splats, same order).
/// With one splat per voxel they come in voxel order; merged ones in octree-cell order.
pub fn fit_splats(asset: &Asset, budget: SplatBudget, shape: &SplatShape) -> Vec<FittedSplat> {
    fit_splats_timed(asset, budget, shape).0
}

/// Wall time of the phases of [`fit_splats`], for `benches/splats.rs`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FitTimings {
    /// Every voxel's patch and the thin-wall limits.
    pub patches_seconds: f64,
    /// The octree merge (0 with one splat per voxel).
    pub merge_seconds: f64,
    /// One Gaussian per patch or cell, and the order.
    pub fit_seconds: f64,
}

/// [`fit_splats`] and the time each phase took.
pub fn fit_splats_timed(
    asset: &Asset,
    budget: SplatBudget,
    shape: &SplatShape,
) -> (Vec<FittedSplat>, FitTimings) {
    let mut timings = FitTimings::default();
    let start = Instant::now();
    let voxel = f64::from(asset.voxel_size());
    let inward = shape.inward_pixels * reference_pixel(asset.dual_vertices());
    let mut patches = voxel_patches(asset, shape);
    limit_inward_moves(asset, &mut patches, inward);
    timings.patches_seconds = start.elapsed().as_secs_f64();
    let singles = |p: &Patch| fit_union(std::slice::from_ref(p), inward, shape);
    let splats = match budget {
        SplatBudget::AtMost(n) if n < patches.len() => {
            let start = Instant::now();
            let cells = merge_to_budget(asset, &patches, n.max(1), voxel);
            timings.merge_seconds = start.elapsed().as_secs_f64();
            let start = Instant::now();
            let splats = cells
                .par_iter()
                .map(|members| {
                    let ps: Vec<Patch> = members.iter().map(|&i| patches[i as usize]).collect();
                    fit_union(&ps, inward, shape)
                })
                .collect();
            timings.fit_seconds = start.elapsed().as_secs_f64();
            splats
        }
        _ => {
            let start = Instant::now();
            let splats = patches.par_iter().map(singles).collect();
            timings.fit_seconds = start.elapsed().as_secs_f64();
            splats
        }
    };
    (splats, timings)
}

/// Every voxel's patch, in voxel order.
fn voxel_patches(asset: &Asset, shape: &SplatShape) -> Vec<Patch> {
    let duals = asset.dual_vertices();
    let n = duals.len();
    let voxel = f64::from(asset.voxel_size());
    // Outward area-weighted normals and owned areas of the dual vertices in the mesh.
    let mesh = asset.mesh();
    let mut normal_sum = vec![[0.0f64; 3]; n];
    let mut area = vec![0.0f64; n];
    for f in faces_wound_outward(mesh) {
        let [a, b, c] = f.map(|v| mesh.vertices[v as usize].map(f64::from));
        let twice = cross(sub(b, a), sub(c, a));
        let third = 0.5 * dot(twice, twice).sqrt() / 3.0;
        for v in f {
            let v = v as usize;
            if v < n {
                normal_sum[v] = add(normal_sum[v], twice);
                area[v] += third;
            }
        }
    }
    let frames = voxel_surface_frames(asset);
    let coords = asset.voxel_coords();
    (0..n)
        .into_par_iter()
        .map(|row| {
            let p = duals[row].map(f64::from);
            let attrs = asset.voxel_attrs()[row];
            let rgb = [0, 1, 2].map(|k| f64::from(attrs[k]));
            let alpha = f64::from(attrs[ALPHA]);
            // The plane fitted to the neighbourhood (smoother than the few triangles at one
            // vertex, which follow the grid's terraces), on the side the mesh faces.
            let mesh_normal = normalized(normal_sum[row]);
            let normal = match (frames[row].map(|f| f.normal), mesh_normal) {
                (Some(fit), Some(m)) if dot(fit, m) < 0.0 => Some(scale(fit, -1.0)),
                (Some(fit), _) => Some(fit),
                (None, m) => m,
            };
            let c = coords[row];
            let neighbours: Vec<usize> = (0..27)
                .filter_map(|k| {
                    let d = [k % 3 - 1, k / 3 % 3 - 1, k / 9 - 1];
                    asset.voxel_at([c[0] + d[0], c[1] + d[1], c[2] + d[2]])
                })
                .collect();
            // A vertex in no face owns no mesh area; it stands for one voxel face's worth.
            let a = if area[row] > 0.0 {
                area[row]
            } else {
                voxel * voxel
            };
            let moment = match normal {
                Some(nrm) => {
                    let mut spread = [[0.0f64; 3]; 3];
                    for &r in &neighbours {
                        let d = sub(duals[r].map(f64::from), p);
                        let d = sub(d, scale(nrm, dot(d, nrm)));
                        add_outer(&mut spread, d, 1.0);
                    }
                    plane_moment(spread, nrm, a, shape.max_anisotropy)
                }
                None => identity_scaled(a / 12.0),
            };
            Patch {
                centre: p,
                normal,
                area: a,
                moment,
                rgb,
                alpha,
                inward_limit: f64::INFINITY,
            }
        })
        .collect()
}

/// Sets every patch's `inward_limit`: marching inward along its normal in half-voxel steps, up
/// to twice `inward` and a voxel beyond, the first voxel whose normal faces the other way
/// (a dot product below zero) is the far side of a thin wall.
fn limit_inward_moves(asset: &Asset, patches: &mut [Patch], inward: f64) {
    let voxel = f64::from(asset.voxel_size());
    let origin = f64::from(AABB_MIN);
    let reach = 2.0 * inward + voxel;
    let steps = (reach / (0.5 * voxel)).ceil() as usize;
    let limits: Vec<f64> = patches
        .par_iter()
        .map(|p| {
            let Some(n) = p.normal else {
                return 0.0;
            };
            for k in 1..=steps {
                let t = k as f64 * 0.5 * voxel;
                let q = sub(p.centre, scale(n, t));
                let coord = q.map(|v| ((v - origin) / voxel).floor() as i32);
                if let Some(r) = asset.voxel_at(coord) {
                    if patches[r].normal.is_some_and(|m| dot(m, n) < 0.0) {
                        return THIN_WALL_FRACTION * t;
                    }
                }
            }
            f64::INFINITY
        })
        .collect();
    for (p, limit) in patches.iter_mut().zip(limits) {
        p.inward_limit = limit;
    }
}

/// The second moment of a uniform patch of area `area` in the plane across `normal`, elongated
/// like `spread` (the neighbours' offsets in that plane), at most `max_anisotropy` in standard
/// deviation: principal variances `λ₁ λ₂` with `λ₁·λ₂ = (area/12)²` (a square's).
fn plane_moment(
    spread: [[f64; 3]; 3],
    normal: [f64; 3],
    area: f64,
    max_anisotropy: f64,
) -> [[f64; 3]; 3] {
    let square = area / 12.0;
    let e = sym_eigen3(spread);
    let along = sub(e.vectors[2], scale(normal, dot(e.vectors[2], normal)));
    let (tangent, ratio) = match normalized(along) {
        Some(t) if e.values[2] > 0.0 => {
            let r = (e.values[2] / e.values[1].max(1e-300)).sqrt();
            (t, r.clamp(1.0, max_anisotropy))
        }
        _ => (any_perpendicular(normal), 1.0),
    };
    let bitangent = cross(normal, tangent);
    let mut m = [[0.0f64; 3]; 3];
    add_outer(&mut m, tangent, square * ratio);
    add_outer(&mut m, bitangent, square / ratio);
    m
}

/// The Gaussian standing for the union of `patches` (one or more), its centre `inward` (world
/// units) inside the surface.
fn fit_union(patches: &[Patch], inward: f64, shape: &SplatShape) -> FittedSplat {
    let total: f64 = patches.iter().map(|p| p.area).sum();
    let w = |p: &Patch| p.area / total;
    let centre = patches
        .iter()
        .fold([0.0; 3], |acc, p| add(acc, scale(p.centre, w(p))));
    let rgb = patches
        .iter()
        .fold([0.0; 3], |acc, p| add(acc, scale(p.rgb, w(p))));
    let alpha: f64 = patches.iter().map(|p| w(p) * p.alpha).sum();
    let limit = patches
        .iter()
        .map(|p| p.inward_limit)
        .fold(f64::INFINITY, f64::min);
    // Moment matching: the union's second moment about its centre.
    let mut moment = [[0.0f64; 3]; 3];
    for p in patches {
        for (i, row) in moment.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v += w(p) * p.moment[i][j];
            }
        }
        add_outer(&mut moment, sub(p.centre, centre), w(p));
    }
    let normal = normalized(
        patches
            .iter()
            .filter_map(|p| p.normal.map(|n| scale(n, p.area)))
            .fold([0.0; 3], add),
    );
    let k = shape.gaussian_per_uniform;
    match normal {
        Some(n) => {
            // The moment projected on the tangent plane, then its principal axes there.
            let projector: [[f64; 3]; 3] = std::array::from_fn(|i| {
                std::array::from_fn(|j| f64::from(u8::from(i == j)) - n[i] * n[j])
            });
            let pm = mat_mul(mat_mul(projector, moment), projector);
            let e = sym_eigen3(pm);
            let tangent = normalized(sub(e.vectors[2], scale(n, dot(e.vectors[2], n))))
                .unwrap_or_else(|| any_perpendicular(n));
            let bitangent = cross(n, tangent);
            let along = |v: [f64; 3]| dot(v, mat_vec(pm, v)).max(0.0);
            let (s_t, s_b) = ((k * along(tangent)).sqrt(), (k * along(bitangent)).sqrt());
            let s_b = s_b.max(s_t / (4.0 * shape.max_anisotropy));
            let (s_t, s_b) = if s_t < shape.round_below * s_b {
                let round = (s_t * s_b).sqrt();
                (round, round)
            } else {
                (s_t, s_b)
            };
            FittedSplat {
                centre: sub(centre, scale(n, inward.min(limit))),
                axes: [tangent, bitangent, n],
                sigma: [s_t, s_b, shape.normal_fraction * s_b],
                rgb,
                alpha,
                has_normal: true,
            }
        }
        None => {
            let s = (k * (moment[0][0] + moment[1][1] + moment[2][2]) / 2.0).sqrt();
            FittedSplat {
                centre,
                axes: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
                sigma: [s; 3],
                rgb,
                alpha,
                has_normal: false,
            }
        }
    }
}

// ---- the octree merge ----

/// Weights of a cell's fitting error (all per unit of voxel-face area): colour (per unit of
/// base colour, squared), distance off the fitted plane (in voxels, squared), normals turning
/// away from the mean (1 − cos), and the cell's own size (its area in voxel faces), which keeps
/// flat, single-coloured regions from becoming single splats far larger than their neighbours.
const COLOUR_WEIGHT: f64 = 1.0;
const PLANE_WEIGHT: f64 = 0.05;
const NORMAL_WEIGHT: f64 = 0.5;
const SIZE_WEIGHT: f64 = 1e-4;

/// An octree cell: `level` (0 = a voxel), its key (voxel coordinates shifted right by
/// `level`) and its members (voxel rows).
struct Cell {
    level: u32,
    key: [i32; 3],
    members: Vec<u32>,
    error: f64,
}

impl PartialEq for Cell {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Cell {}
impl PartialOrd for Cell {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Cell {
    /// Largest error first; ties by level, then key (a total order: the merge is deterministic).
    fn cmp(&self, other: &Self) -> Ordering {
        self.error
            .total_cmp(&other.error)
            .then(self.level.cmp(&other.level))
            .then(other.key.cmp(&self.key))
    }
}

/// Groups of voxel rows, at most `budget` of them: octree cells, the finest level with at most
/// `budget` cells first, then the cells that fit their voxels worst split (into their occupied
/// children) for as long as the budget allows.
fn merge_to_budget(asset: &Asset, patches: &[Patch], budget: usize, voxel: f64) -> Vec<Vec<u32>> {
    let coords = asset.voxel_coords();
    // Called with more voxels than the budget, so level 0 (one cell per voxel) is too fine.
    let mut level = 1;
    let mut cells = group_all(coords, level);
    while cells.len() > budget {
        level += 1;
        cells = group_all(coords, level);
    }
    let mut count = cells.len();
    let mut heap = BinaryHeap::new();
    let mut done: Vec<Cell> = Vec::new();
    let make = |level: u32, key: [i32; 3], members: Vec<u32>| {
        let error = if level == 0 {
            0.0
        } else {
            cell_error(patches, &members, voxel)
        };
        Cell {
            level,
            key,
            members,
            error,
        }
    };
    // The first cells' errors in parallel (most of the merge's work); the heap's order does
    // not depend on the order of pushes, so the result is the same for any thread count.
    let first: Vec<Cell> = cells
        .into_par_iter()
        .map(|(key, members)| make(level, key, members))
        .collect();
    heap.extend(first);
    while let Some(cell) = heap.pop() {
        if cell.level == 0 {
            done.push(cell);
            continue;
        }
        let children = group(coords, &cell.members, cell.level - 1);
        if count - 1 + children.len() > budget {
            done.push(cell);
            continue;
        }
        count += children.len() - 1;
        for (key, members) in children {
            heap.push(make(cell.level - 1, key, members));
        }
    }
    // Octree order: by the finest voxel key of each cell's first member.
    done.sort_by_key(|c| (coords[c.members[0] as usize], c.level));
    done.into_iter().map(|c| c.members).collect()
}

/// Every voxel row grouped by its coordinates shifted right by `level`, in key order, each
/// group's rows ascending: [`group`] of all rows, by a parallel sort (the same result for any
/// thread count, since (key, row) pairs are distinct).
fn group_all(coords: &[[i32; 3]], level: u32) -> Vec<([i32; 3], Vec<u32>)> {
    let mut keyed: Vec<([i32; 3], u32)> = coords
        .par_iter()
        .enumerate()
        .map(|(row, c)| (c.map(|v| v >> level), row as u32))
        .collect();
    keyed.par_sort_unstable();
    keyed
        .chunk_by(|a, b| a.0 == b.0)
        .map(|run| (run[0].0, run.iter().map(|&(_, row)| row).collect()))
        .collect()
}

/// `rows` grouped by voxel coordinates shifted right by `level`, in key order; each group's
/// rows stay in the order given.
fn group(coords: &[[i32; 3]], rows: &[u32], level: u32) -> Vec<([i32; 3], Vec<u32>)> {
    let mut map: BTreeMap<[i32; 3], Vec<u32>> = BTreeMap::new();
    for &r in rows {
        map.entry(coords[r as usize].map(|c| c >> level))
            .or_default()
            .push(r);
    }
    map.into_iter().collect()
}

/// How badly one splat would stand for the voxels `members` (see the weights above).
fn cell_error(patches: &[Patch], members: &[u32], voxel: f64) -> f64 {
    let face = voxel * voxel;
    let ps = members.iter().map(|&i| &patches[i as usize]);
    let total: f64 = ps.clone().map(|p| p.area).sum();
    let w = |p: &Patch| p.area / total;
    let centre = ps
        .clone()
        .fold([0.0; 3], |a, p| add(a, scale(p.centre, w(p))));
    let rgb = ps.clone().fold([0.0; 3], |a, p| add(a, scale(p.rgb, w(p))));
    let normal_sum = ps
        .clone()
        .filter_map(|p| p.normal.map(|n| scale(n, p.area)))
        .fold([0.0; 3], add);
    let normal = normalized(normal_sum);
    let mut error = SIZE_WEIGHT * (total / face).powi(2);
    for p in ps {
        let a = p.area / face;
        let dc = sub(p.rgb, rgb);
        error += COLOUR_WEIGHT * a * dot(dc, dc);
        match (normal, p.normal) {
            (Some(n), Some(pn)) => {
                let off = dot(sub(p.centre, centre), n) / voxel;
                error += PLANE_WEIGHT * a * off * off + NORMAL_WEIGHT * a * (1.0 - dot(n, pn));
            }
            // Normals that cancel (two sides of a thin wall) or a voxel with none: split.
            _ => error += NORMAL_WEIGHT * a * 2.0,
        }
    }
    error
}

// ---- small vector helpers ----

fn add(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}

fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn scale(a: [f64; 3], s: f64) -> [f64; 3] {
    a.map(|v| v * s)
}

fn add_outer(m: &mut [[f64; 3]; 3], d: [f64; 3], w: f64) {
    for i in 0..3 {
        for j in 0..3 {
            m[i][j] += w * d[i] * d[j];
        }
    }
}

fn identity_scaled(s: f64) -> [[f64; 3]; 3] {
    [[s, 0.0, 0.0], [0.0, s, 0.0], [0.0, 0.0, s]]
}

fn mat_mul(a: [[f64; 3]; 3], b: [[f64; 3]; 3]) -> [[f64; 3]; 3] {
    std::array::from_fn(|i| std::array::from_fn(|j| (0..3).map(|k| a[i][k] * b[k][j]).sum()))
}

fn mat_vec(a: [[f64; 3]; 3], v: [f64; 3]) -> [f64; 3] {
    std::array::from_fn(|i| dot(a[i], v))
}

/// A unit vector perpendicular to the unit vector `n`.
fn any_perpendicular(n: [f64; 3]) -> [f64; 3] {
    let helper = if n[0].abs() < 0.9 {
        [1.0, 0.0, 0.0]
    } else {
        [0.0, 1.0, 0.0]
    };
    normalized(cross(n, helper)).unwrap_or([1.0, 0.0, 0.0])
}
