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
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::Instant;

use rayon::prelude::*;

use super::asset::{Asset, ALPHA, PBR_CHANNELS};
use super::sym_eigen::{normalized, sym_eigen3};
use super::voxel_frames::{dual_centroid, neighbourhood, neighbourhood_frame, NO_VOXEL};
use crate::mesh::dual_grid::AABB_MIN;
use crate::vec3::{add, cross, dot, scale, sub};

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

/// What one voxel contributes: its surface patch, centred on its dual vertex (its centre and
/// colours are looked up through [`Painted`]: a `1024` object has millions of patches, held
/// while its files are written).
#[derive(Clone, Copy, Debug)]
struct Patch {
    /// Outward unit normal, if the voxel's neighbourhood or the mesh defines one.
    normal: Option<[f64; 3]>,
    /// Area in world units².
    area: f64,
    /// The patch's long axis in its plane and its length-to-width ratio ([`plane_axes`]; unused
    /// without a normal): its second moment is [`Patch::moment`].
    tangent: [f64; 3],
    ratio: f64,
    /// How far inward the centre may move (world units): less than half the distance to the
    /// nearest surface facing the other way behind it, so the two sides of a thin wall never
    /// pass each other.
    inward_limit: f64,
}

impl Patch {
    /// Second moment of the uniform patch about its centre (symmetric 3×3).
    fn moment(&self) -> [[f64; 3]; 3] {
        match self.normal {
            Some(n) => uniform_moment(n, self.tangent, self.ratio, self.area),
            None => identity_scaled(self.area / 12.0),
        }
    }
}

/// The voxels' patches with their centres (the dual vertices) and colours (the attributes),
/// looked up by voxel row: the patches are computed before the texture decoder has run and are
/// not copied to add them.
#[derive(Clone, Copy)]
struct Painted<'a> {
    patches: &'a [Patch],
    centres: &'a [[f32; 3]],
    attrs: &'a [[f32; PBR_CHANNELS]],
}

impl Painted<'_> {
    fn centre(&self, row: usize) -> [f64; 3] {
        self.centres[row].map(f64::from)
    }

    fn rgb(&self, row: usize) -> [f64; 3] {
        let a = &self.attrs[row];
        [0, 1, 2].map(|k| f64::from(a[k]))
    }

    fn alpha(&self, row: usize) -> f64 {
        f64::from(self.attrs[row][ALPHA])
    }
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
    /// Of the merge, the serial part: the queue that picks the cells to split.
    pub queue_seconds: f64,
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
    let computed;
    let patches: &[Patch] = match asset.splat_patches() {
        // Their geometry was computed before the colours were known.
        Some(given) if given.shape == *shape => &given.patches,
        _ => {
            computed = patches_of(asset, shape, inward);
            &computed
        }
    };
    let painted = Painted {
        patches,
        centres: asset.dual_vertices(),
        attrs: asset.voxel_attrs(),
    };
    timings.patches_seconds = start.elapsed().as_secs_f64();
    let splats = match budget {
        SplatBudget::AtMost(n) if n < patches.len() => {
            let start = Instant::now();
            let merged = merge_to_budget(asset.voxel_coords(), painted, n.max(1), voxel);
            timings.merge_seconds = start.elapsed().as_secs_f64();
            timings.queue_seconds = merged.queue_seconds;
            let start = Instant::now();
            let splats = merged
                .cells
                .par_iter()
                .map(|&cell| {
                    let members = merged.members(cell).iter();
                    fit_union(painted, members.map(|&i| i as usize), inward, shape)
                })
                .collect();
            timings.fit_seconds = start.elapsed().as_secs_f64();
            splats
        }
        _ => {
            let start = Instant::now();
            let splats = (0..patches.len())
                .into_par_iter()
                .map(|row| fit_union(painted, std::iter::once(row), inward, shape))
                .collect();
            timings.fit_seconds = start.elapsed().as_secs_f64();
            splats
        }
    };
    (splats, timings)
}

/// Every voxel's patch, with its thin-wall limit, in voxel order.
fn patches_of(asset: &Asset, shape: &SplatShape, inward: f64) -> Vec<Patch> {
    let mut patches = voxel_patches(asset, shape);
    limit_inward_moves(asset, &mut patches, inward);
    patches
}

/// Every voxel's splat patch but its colours: its centre, normal, area, shape and thin-wall
/// limit, which depend only on the surface and the voxels' places. Computed before the texture
/// decoder has run ([`splat_patches`]) and handed to the asset
/// ([`Asset::with_splat_patches`]), they leave only the colours, the merge and the fit for the
/// splat writers.
pub struct SplatPatches {
    patches: Vec<Patch>,
    /// The shape they were computed for; a fit with another computes its own.
    shape: SplatShape,
}

impl std::fmt::Debug for SplatPatches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplatPatches")
            .field("len", &self.patches.len())
            .field("shape", &self.shape)
            .finish()
    }
}

impl SplatPatches {
    /// One per voxel.
    pub fn len(&self) -> usize {
        self.patches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.patches.is_empty()
    }
}

/// The patches of `asset`'s voxels for `shape`, but their colours (its attributes may be
/// placeholders).
pub fn splat_patches(asset: &Asset, shape: &SplatShape) -> SplatPatches {
    let inward = shape.inward_pixels * reference_pixel(asset.dual_vertices());
    SplatPatches {
        patches: patches_of(asset, shape, inward),
        shape: *shape,
    }
}

/// Every voxel's patch, in voxel order.
fn voxel_patches(asset: &Asset, shape: &SplatShape) -> Vec<Patch> {
    let duals = asset.dual_vertices();
    let n = duals.len();
    let voxel = f64::from(asset.voxel_size());
    let mesh = asset.mesh();
    let coords = asset.voxel_coords();
    let centroid = dual_centroid(duals);
    // Re-winding the mesh (for the outward normals and owned areas of the dual vertices) scales
    // less well over many threads than the voxels' own plane fits, which do not need it: the
    // two run side by side, unless `Asset::prepare_mesh_outputs` already wound it. A patch's
    // shape does not depend on its normal's sign, so the fits can use the plane's normal before
    // the mesh decides which way it faces.
    let ((normal_sum, area), fits) = rayon::join(
        || vertex_normals_and_areas(&mesh.vertices, &asset.oriented_faces(), n),
        || {
            (0..n)
                .into_par_iter()
                .map(|row| {
                    let around = neighbourhood(asset, coords[row]);
                    let fit = neighbourhood_frame(duals, &around, row, centroid)?.normal;
                    let spread = tangent_spread(duals, &around, row, fit);
                    let (tangent, ratio) = plane_axes(spread, fit, shape.max_anisotropy);
                    Some((fit, tangent, ratio))
                })
                .collect::<Vec<_>>()
        },
    );
    fits.into_par_iter()
        .enumerate()
        .map(|(row, fit)| {
            // A vertex in no face owns no mesh area; it stands for one voxel face's worth.
            let a = if area[row] > 0.0 {
                area[row]
            } else {
                voxel * voxel
            };
            // The plane fitted to the neighbourhood (smoother than the few triangles at one
            // vertex, which follow the grid's terraces), on the side the mesh faces.
            let mesh_normal = normalized(normal_sum[row]);
            // The moment of a flipped normal is the same, bit for bit (only signs change).
            let (normal, tangent, ratio) = match (fit, mesh_normal) {
                (Some((fit, tangent, ratio)), m) => {
                    let flip = m.is_some_and(|m| dot(fit, m) < 0.0);
                    let normal = if flip { scale(fit, -1.0) } else { fit };
                    (Some(normal), tangent, ratio)
                }
                (None, Some(m)) => {
                    let around = neighbourhood(asset, coords[row]);
                    let spread = tangent_spread(duals, &around, row, m);
                    let (tangent, ratio) = plane_axes(spread, m, shape.max_anisotropy);
                    (Some(m), tangent, ratio)
                }
                (None, None) => (None, [0.0; 3], 1.0),
            };
            Patch {
                normal,
                area: a,
                tangent,
                ratio,
                inward_limit: f64::INFINITY,
            }
        })
        .collect()
}

/// The second moment of the offsets from voxel `row`'s dual vertex to its neighbours' (`around`,
/// a [`neighbourhood`]), projected on the plane across the unit `normal`.
fn tangent_spread(
    duals: &[[f32; 3]],
    around: &[u32; 27],
    row: usize,
    normal: [f64; 3],
) -> [[f64; 3]; 3] {
    let p = duals[row].map(f64::from);
    let mut spread = [[0.0f64; 3]; 3];
    // The neighbours with x varying fastest (the order the sums were tuned in).
    for k in 0..27 {
        let r = around[9 * (k % 3) + 3 * (k / 3 % 3) + k / 9];
        if r == NO_VOXEL {
            continue;
        }
        let d = sub(duals[r as usize].map(f64::from), p);
        let d = sub(d, scale(normal, dot(d, normal)));
        add_outer(&mut spread, d, 1.0);
    }
    spread
}

/// For each of the first `n` vertices, the sum of its faces' doubled area vectors (the cross
/// product of two edges, as wound) and a third of their areas, each added in face order (so
/// the sums are the same bits as one pass over the faces, for any thread count): the faces of
/// every vertex listed first (counted, then placed), then every vertex summed on its own.
fn vertex_normals_and_areas(
    vertices: &[[f32; 3]],
    faces: &[[u32; 3]],
    n: usize,
) -> (Vec<[f64; 3]>, Vec<f64>) {
    let counts: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
    faces.par_iter().for_each(|f| {
        for &v in f.iter().filter(|&&v| (v as usize) < n) {
            counts[v as usize].fetch_add(1, Relaxed);
        }
    });
    let mut starts = Vec::with_capacity(n + 1);
    let mut total = 0usize;
    starts.push(0);
    for c in &counts {
        total += c.swap(0, Relaxed) as usize;
        starts.push(total);
    }
    let slots: Vec<AtomicU32> = (0..total).map(|_| AtomicU32::new(0)).collect();
    faces.par_iter().enumerate().for_each(|(i, f)| {
        for &v in f.iter().filter(|&&v| (v as usize) < n) {
            let at = starts[v as usize] + counts[v as usize].fetch_add(1, Relaxed) as usize;
            slots[at].store(i as u32, Relaxed);
        }
    });
    drop(counts);
    let by_vertex: Vec<u32> = slots.into_iter().map(AtomicU32::into_inner).collect();
    (0..n)
        .into_par_iter()
        .map(|v| {
            // The faces were placed in whatever order the threads reached them: sort them.
            let placed = &by_vertex[starts[v]..starts[v + 1]];
            let mut short = [0u32; 32];
            let mut long = Vec::new();
            let list = if placed.len() <= short.len() {
                short[..placed.len()].copy_from_slice(placed);
                &mut short[..placed.len()]
            } else {
                long.extend_from_slice(placed);
                &mut long[..]
            };
            list.sort_unstable();
            let mut normal = [0.0f64; 3];
            let mut area = 0.0f64;
            for &i in list.iter() {
                let [a, b, c] = faces[i as usize].map(|v| vertices[v as usize].map(f64::from));
                let twice = cross(sub(b, a), sub(c, a));
                normal = add(normal, twice);
                area += 0.5 * dot(twice, twice).sqrt() / 3.0;
            }
            (normal, area)
        })
        .unzip()
}

/// Sets every patch's `inward_limit`: marching inward along its normal in half-voxel steps, up
/// to twice `inward` and a voxel beyond, the first voxel whose normal faces the other way
/// (a dot product below zero) is the far side of a thin wall.
fn limit_inward_moves(asset: &Asset, patches: &mut [Patch], inward: f64) {
    let voxel = f64::from(asset.voxel_size());
    let origin = f64::from(AABB_MIN);
    let reach = 2.0 * inward + voxel;
    let steps = (reach / (0.5 * voxel)).ceil() as usize;
    let duals = asset.dual_vertices();
    let limits: Vec<f64> = patches
        .par_iter()
        .zip(duals)
        .map(|(p, centre)| {
            let centre = centre.map(f64::from);
            let Some(n) = p.normal else {
                return 0.0;
            };
            let mut last = [i32::MIN; 3];
            for k in 1..=steps {
                let t = k as f64 * 0.5 * voxel;
                let q = sub(centre, scale(n, t));
                let coord = q.map(|v| ((v - origin) / voxel).floor() as i32);
                // Half-voxel steps land in most voxels twice; the second look finds nothing new.
                if coord == last {
                    continue;
                }
                last = coord;
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

/// The axes of a uniform patch in the plane across `normal`, elongated like `spread` (the
/// neighbours' offsets in that plane), at most `max_anisotropy` in standard deviation: its long
/// axis and the ratio of its two standard deviations. Turning `normal` around gives the same
/// axes up to sign, so the same [`uniform_moment`].
fn plane_axes(spread: [[f64; 3]; 3], normal: [f64; 3], max_anisotropy: f64) -> ([f64; 3], f64) {
    let e = sym_eigen3(spread);
    let along = sub(e.vectors[2], scale(normal, dot(e.vectors[2], normal)));
    match normalized(along) {
        Some(t) if e.values[2] > 0.0 => {
            let r = (e.values[2] / e.values[1].max(1e-300)).sqrt();
            (t, r.clamp(1.0, max_anisotropy))
        }
        _ => (any_perpendicular(normal), 1.0),
    }
}

/// The second moment of a uniform patch of area `area` along `tangent` ([`plane_axes`]) and
/// across it in the plane across `normal`: principal variances `λ₁ λ₂` with `λ₁ / λ₂ = ratio²`
/// and `λ₁·λ₂ = (area/12)²` (a square's).
fn uniform_moment(normal: [f64; 3], tangent: [f64; 3], ratio: f64, area: f64) -> [[f64; 3]; 3] {
    let square = area / 12.0;
    let bitangent = cross(normal, tangent);
    let mut m = [[0.0f64; 3]; 3];
    add_outer(&mut m, tangent, square * ratio);
    add_outer(&mut m, bitangent, square / ratio);
    m
}

/// The Gaussian standing for the union of the patches of voxel `rows` (one or more), its centre
/// `inward` (world units) inside the surface.
fn fit_union(
    painted: Painted,
    rows: impl Iterator<Item = usize> + Clone,
    inward: f64,
    shape: &SplatShape,
) -> FittedSplat {
    let patches = rows.clone().map(|i| &painted.patches[i]);
    let total: f64 = patches.clone().map(|p| p.area).sum();
    let w = |p: &Patch| p.area / total;
    let centre = rows.clone().fold([0.0; 3], |acc, i| {
        add(acc, scale(painted.centre(i), w(&painted.patches[i])))
    });
    let rgb = rows.clone().fold([0.0; 3], |acc, i| {
        add(acc, scale(painted.rgb(i), w(&painted.patches[i])))
    });
    let alpha: f64 = rows
        .clone()
        .map(|i| w(&painted.patches[i]) * painted.alpha(i))
        .sum();
    let limit = patches
        .clone()
        .map(|p| p.inward_limit)
        .fold(f64::INFINITY, f64::min);
    // Moment matching: the union's second moment about its centre.
    let mut moment = [[0.0f64; 3]; 3];
    for r in rows {
        let p = &painted.patches[r];
        let own = p.moment();
        for (i, row) in moment.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v += w(p) * own[i][j];
            }
        }
        add_outer(&mut moment, sub(painted.centre(r), centre), w(p));
    }
    let normal = normalized(
        patches
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

/// One level of the octree (`level` ≥ 1): the voxel rows grouped by their coordinates shifted
/// right by `level` (a cell's key), the cells in Morton order of their keys, each cell's rows
/// ascending (the order every sum over a cell takes).
struct Level {
    level: u32,
    /// Every voxel row, cell after cell.
    rows: Vec<u32>,
    /// Cell `i` is `rows[starts[i]..starts[i + 1]]`.
    starts: Vec<u32>,
    /// The Morton code of each cell's key.
    codes: Vec<u64>,
    /// How badly one splat would stand for each cell ([`cell_error`]).
    errors: Vec<f64>,
    /// Above level 1: cell `i`'s children are cells `children[i]..children[i + 1]` of the level
    /// below (whose Morton codes, shifted right by 3, are this cell's).
    children: Vec<u32>,
}

impl Level {
    /// The cells of `level`, by one parallel sort of (Morton code, row) pairs: distinct pairs,
    /// so the same order for any thread count.
    fn build(coords: &[[i32; 3]], level: u32) -> Self {
        let mut keyed: Vec<(u64, u32)> = coords
            .par_iter()
            .enumerate()
            .map(|(row, c)| (morton(c.map(|v| v >> level)), row as u32))
            .collect();
        keyed.par_sort_unstable();
        let mut starts: Vec<u32> = (0..keyed.len())
            .into_par_iter()
            .filter(|&i| i == 0 || keyed[i].0 != keyed[i - 1].0)
            .map(|i| i as u32)
            .collect();
        let codes = starts.par_iter().map(|&s| keyed[s as usize].0).collect();
        starts.push(keyed.len() as u32);
        Self {
            level,
            rows: keyed.into_par_iter().map(|(_, row)| row).collect(),
            starts,
            codes,
            errors: Vec::new(),
            children: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.codes.len()
    }

    fn cell(&self, i: usize) -> &[u32] {
        &self.rows[self.starts[i] as usize..self.starts[i + 1] as usize]
    }
}

/// A cell in the merge's queue.
#[derive(Clone, Copy)]
struct Queued {
    error: f64,
    level: u32,
    /// The cell's key packed as `x << 42 | y << 21 | z` (ordered as `[x, y, z]`).
    key: u64,
    /// The cell's index in its level.
    index: u32,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    /// Largest error first; ties by level, then key (a total order: the merge is deterministic).
    fn cmp(&self, other: &Self) -> Ordering {
        self.error
            .total_cmp(&other.error)
            .then(self.level.cmp(&other.level))
            .then(other.key.cmp(&self.key))
    }
}

/// The merge's groups of voxel rows: octree cells, each `(level, index)` in [`Merged::levels`]
/// (level 0, one voxel: its position in level 1's rows).
struct Merged {
    levels: Vec<Level>,
    cells: Vec<(u32, u32)>,
    /// Wall time of the serial queue.
    queue_seconds: f64,
}

impl Merged {
    /// The voxel rows of one of `cells`, ascending.
    fn members(&self, (level, index): (u32, u32)) -> &[u32] {
        match level {
            0 => std::slice::from_ref(&self.levels[0].rows[index as usize]),
            _ => self.levels[level as usize - 1].cell(index as usize),
        }
    }
}

/// Groups of voxel rows, at most `budget` of them: octree cells, the finest level with at most
/// `budget` cells first, then the cells that fit their voxels worst split (into their occupied
/// children) for as long as the budget allows; in octree order.
///
/// Every cell's error on the levels in between is computed up front, in parallel; what is left
/// serial is the queue of small entries, which picks the same cells as splitting one cell at a
/// time and grouping its children then.
/// `coords` are the voxels' (distinct, non-negative, below 2²⁰), `patches` their patches.
fn merge_to_budget(coords: &[[i32; 3]], painted: Painted, budget: usize, voxel: f64) -> Merged {
    // Called with more voxels than the budget, so level 0 (one cell per voxel) is too fine.
    let mut levels = vec![Level::build(coords, 1)];
    while levels[levels.len() - 1].len() > budget {
        levels.push(Level::build(coords, levels.len() as u32 + 1));
    }
    for l in &mut levels {
        l.errors = (0..l.len())
            .into_par_iter()
            .map(|i| cell_error(painted, l.cell(i), voxel))
            .collect();
    }
    for k in 1..levels.len() {
        let (fine, coarse) = (&levels[k - 1], &levels[k]);
        let children = (0..=coarse.len())
            .into_par_iter()
            .map(|i| match coarse.codes.get(i) {
                Some(&code) => fine.codes.partition_point(|&c| c >> 3 < code) as u32,
                None => fine.len() as u32,
            })
            .collect();
        levels[k].children = children;
    }
    let queued = |level: u32, index: usize| {
        let l = &levels[level as usize - 1];
        let c = coords[l.rows[l.starts[index] as usize] as usize];
        let k = c.map(|v| u64::from((v >> level) as u32));
        Queued {
            error: l.errors[index],
            level,
            key: k[0] << 42 | k[1] << 21 | k[2],
            index: index as u32,
        }
    };
    let top = &levels[levels.len() - 1];
    let mut count = top.len();
    let first: Vec<Queued> = (0..count)
        .into_par_iter()
        .map(|i| queued(top.level, i))
        .collect();
    let queue_start = Instant::now();
    let mut heap = BinaryHeap::from(first);
    let mut done: Vec<(u32, u32)> = Vec::new();
    while count < budget {
        let Some(cell) = heap.pop() else {
            break;
        };
        let l = &levels[cell.level as usize - 1];
        let i = cell.index as usize;
        let (first, last) = if cell.level == 1 {
            (l.starts[i], l.starts[i + 1])
        } else {
            (l.children[i], l.children[i + 1])
        };
        let children = (last - first) as usize;
        if count - 1 + children > budget {
            done.push((cell.level, cell.index));
            continue;
        }
        count += children - 1;
        if cell.level == 1 {
            // Single voxels: nothing to split, so final (with error 0 they would leave the
            // queue last and change nothing on the way).
            done.extend((first..last).map(|p| (0, p)));
        } else {
            heap.extend((first..last).map(|j| queued(cell.level - 1, j as usize)));
        }
    }
    // At the budget (most of the queue is still waiting there) no cell with two or more
    // children can split any more, and one with a single child would become that child, the
    // count unchanged: each waiting cell goes down its single-child chain, in parallel.
    let chain_end = |cell: Queued| {
        let (mut level, mut index) = (cell.level, cell.index as usize);
        loop {
            let l = &levels[level as usize - 1];
            let (first, last) = if level == 1 {
                (l.starts[index], l.starts[index + 1])
            } else {
                (l.children[index], l.children[index + 1])
            };
            match (last - first, level) {
                (1, 1) => return (0, first),
                (1, _) => (level, index) = (level - 1, first as usize),
                _ => return (level, index as u32),
            }
        }
    };
    let queue_seconds = queue_start.elapsed().as_secs_f64();
    done.par_extend(heap.into_vec().into_par_iter().map(chain_end));
    // Octree order (depth first, children in Morton order): by the Morton code of each cell's
    // lowest corner, distinct since cells do not overlap. Neighbouring splats of both levels
    // then lie close in space, which SPZ's gzip turns into shorter colour and rotation codes
    // than the voxel order of each cell's first voxel (docs/OUTPUTS.md).
    let corner = |&(level, index): &(u32, u32)| match level {
        0 => morton(coords[levels[0].rows[index as usize] as usize]),
        _ => levels[level as usize - 1].codes[index as usize] << (3 * level),
    };
    done.par_sort_unstable_by_key(corner);
    Merged {
        levels,
        cells: done,
        queue_seconds,
    }
}

/// The Morton code (bits interleaved x, y, z from the lowest) of non-negative voxel
/// coordinates below 2²¹.
fn morton(c: [i32; 3]) -> u64 {
    let spread = |v: i32| {
        let mut x = u64::from(v as u32) & 0x1f_ffff;
        x = (x | x << 32) & 0x001f_0000_0000_ffff;
        x = (x | x << 16) & 0x001f_0000_ff00_00ff;
        x = (x | x << 8) & 0x100f_00f0_0f00_f00f;
        x = (x | x << 4) & 0x10c3_0c30_c30c_30c3;
        (x | x << 2) & 0x1249_2492_4924_9249
    };
    spread(c[0]) | spread(c[1]) << 1 | spread(c[2]) << 2
}

/// How badly one splat would stand for the voxels `members` (see the weights above).
fn cell_error(painted: Painted, members: &[u32], voxel: f64) -> f64 {
    let face = voxel * voxel;
    let patches = painted.patches;
    let ps = members.iter().map(|&i| &patches[i as usize]);
    let total: f64 = ps.clone().map(|p| p.area).sum();
    let w = |p: &Patch| p.area / total;
    let centre = members.iter().fold([0.0; 3], |a, &i| {
        add(
            a,
            scale(painted.centre(i as usize), w(&patches[i as usize])),
        )
    });
    let rgb = members.iter().fold([0.0; 3], |a, &i| {
        add(a, scale(painted.rgb(i as usize), w(&patches[i as usize])))
    });
    let normal_sum = ps
        .clone()
        .filter_map(|p| p.normal.map(|n| scale(n, p.area)))
        .fold([0.0; 3], add);
    let normal = normalized(normal_sum);
    let mut error = SIZE_WEIGHT * (total / face).powi(2);
    for &i in members {
        let p = &patches[i as usize];
        let a = p.area / face;
        let dc = sub(painted.rgb(i as usize), rgb);
        error += COLOUR_WEIGHT * a * dot(dc, dc);
        match (normal, p.normal) {
            (Some(n), Some(pn)) => {
                let off = dot(sub(painted.centre(i as usize), centre), n) / voxel;
                error += PLANE_WEIGHT * a * off * off + NORMAL_WEIGHT * a * (1.0 - dot(n, pn));
            }
            // Normals that cancel (two sides of a thin wall) or a voxel with none: split.
            _ => error += NORMAL_WEIGHT * a * 2.0,
        }
    }
    error
}

// ---- small vector helpers ----

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering;
    use std::collections::{BTreeMap, BinaryHeap};

    // The merge as first written, one cell split at a time, its children grouped then: the
    // reference the queue over precomputed levels must agree with, cell for cell.
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
    fn merge_to_budget(
        coords: &[[i32; 3]],
        painted: Painted,
        budget: usize,
        voxel: f64,
    ) -> Vec<Vec<u32>> {
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
                cell_error(painted, &members, voxel)
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
        // Octree order (depth first, children in Morton order): by the Morton code of each cell's
        // lowest corner, distinct since cells do not overlap. Neighbouring splats of both levels
        // then lie close in space, which SPZ's gzip turns into shorter colour and rotation codes
        // than the voxel order of each cell's first voxel (docs/OUTPUTS.md).
        done.sort_by_key(|c| morton(c.key.map(|k| k << c.level)));
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

    /// A splitmix64 stream for the synthetic patches.
    struct Mix(u64);
    impl Mix {
        fn next(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[test]
    fn merge_picks_the_cells_one_split_at_a_time_would() {
        // A sphere shell on a 48³ grid, with patches of varied area, normal and colour
        // (some without a normal, some colours in flat runs so that errors tie).
        let mut coords = Vec::new();
        for x in 0..48i32 {
            for y in 0..48i32 {
                for z in 0..48i32 {
                    let r = (((x - 23) * (x - 23) + (y - 24) * (y - 24) + (z - 22) * (z - 22))
                        as f64)
                        .sqrt();
                    if (18.0..19.8).contains(&r) {
                        coords.push([x, y, z]);
                    }
                }
            }
        }
        // A power of two, so that the flat part's sums are exact and equal cells tie.
        let voxel = 1.0 / 64.0;
        let mut mix = Mix(7);
        let (patches, painting): (Vec<Patch>, Vec<_>) = coords
            .iter()
            .map(|c| {
                // The flat part: voxel centres, one normal, one colour, one area.
                if c[0] < 20 {
                    let patch = Patch {
                        normal: Some([0.0, 0.0, 1.0]),
                        area: voxel * voxel,
                        tangent: [1.0, 0.0, 0.0],
                        ratio: 1.0,
                        inward_limit: f64::INFINITY,
                    };
                    let centre = c.map(|v| ((f64::from(v) + 0.5) * voxel) as f32);
                    return (patch, (centre, [0.5, 0.25, 0.75, 0.0, 0.0, 1.0]));
                }
                let centre = c.map(|v| ((f64::from(v) + mix.next()) * voxel) as f32);
                let outward = sub(centre.map(f64::from), [0.375; 3]);
                let normal = (mix.next() > 0.05)
                    .then(|| normalized(add(outward, [0.3 * mix.next(), 0.0, 0.1])).unwrap());
                let patch = Patch {
                    normal,
                    area: (0.2 + mix.next()) * voxel * voxel,
                    tangent: [1.0, 0.0, 0.0],
                    ratio: 1.0,
                    inward_limit: f64::INFINITY,
                };
                let mut rgb = || mix.next() as f32;
                (patch, (centre, [rgb(), rgb(), rgb(), 0.0, 0.0, 1.0]))
            })
            .unzip();
        let (centres, attrs): (Vec<_>, Vec<_>) = painting.into_iter().unzip();
        let painted = Painted {
            patches: &patches,
            centres: &centres,
            attrs: &attrs,
        };
        let n = coords.len();
        assert!(n > 5000, "{n} voxels");
        let budgets = (n / 20..n).step_by(23).chain([n - 1, n / 100, 7, 1]);
        for budget in budgets {
            let want = merge_to_budget(&coords, painted, budget, voxel);
            let merged = super::merge_to_budget(&coords, painted, budget, voxel);
            let got: Vec<Vec<u32>> = merged
                .cells
                .iter()
                .map(|&c| merged.members(c).to_vec())
                .collect();
            assert!(got.len() <= budget, "budget {budget}: {} cells", got.len());
            // Only tiny budgets may be far from full (the top cells split into up to 8).
            assert!(
                budget < 100 || got.len() > budget / 2,
                "budget {budget}: {} cells",
                got.len()
            );
            assert_eq!(got, want, "budget {budget}");
        }
    }
}
