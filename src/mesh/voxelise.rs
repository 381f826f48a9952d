//! Triangle mesh → flexible dual grid: the voxels a surface crosses, one dual vertex per voxel
//! (the minimiser of a quadric error function, QEF, kept inside the voxel), and per voxel
//! whether the surface crosses its x-, y- and z-directed primal edge. The shape encoder reads
//! this (docs/MODEL.md §13.2); it is the inverse of [`super::dual_grid`].
//!
//! A port of o-voxel's `mesh_to_flexible_dual_grid` (`o-voxel/src/convert/flexible_dual_grid.cpp`
//! @ 5565d24), with the same arithmetic so that the voxel set and flags are identical:
//!
//! 1. **Intersections.** For each axis, a scan line walks the triangle's projection and, where a
//!    grid line along that axis pierces the triangle, adds the piercing point and the face's
//!    plane quadric to the four voxels around that grid line (the voxel whose edge it is gets
//!    the axis' flag). Only these voxels exist; the later terms only add to them.
//! 2. **Faces.** Every voxel the triangle's box overlaps (separating-axis test) adds the plane
//!    quadric again. Upstream's `face_weight` only switches this term on (> 0); it does not
//!    scale it.
//! 3. **Boundary.** Edges used by exactly one face add `boundary_weight ×` the quadric of the
//!    line through them to the voxels the segment traverses (3D DDA).
//! 4. **Solve.** `regularization_weight × count ×` the quadric of the mean piercing point is
//!    added, then the QEF is minimised; a minimiser outside the voxel is replaced by the best
//!    one on the voxel's faces, edges or corners.
//!
//! Upstream runs sequentially over one hash map, so the floating-point sums of each voxel
//! follow triangle order. Here the grid is cut into slabs along x, each slab is built by one
//! task from the triangles that reach it — in triangle order — so every voxel sums its terms in
//! exactly upstream's order, and the result does not depend on the thread count. Output rows
//! are sorted by (x, y, z) (upstream's follow its hash map; compare as sets).
//!
//! Coordinates: vertices must already be normalised into `[-0.5, 0.5]³` (the texturing
//! pipeline's `preprocess_mesh`); dual vertices come back in the grid's `[0, 1]³` frame (the
//! vertex plus 0.5), so `dual · G − voxel` is the in-voxel offset the encoder reads.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use rayon::prelude::*;

use super::error::{MeshError, Result};

/// Largest grid size [`voxelise`] accepts (the pipeline uses 512 and 1024).
pub const MAX_VOXELISE_GRID: u32 = 4096;

/// The QEF weights (`mesh_to_flexible_dual_grid` keyword arguments).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QefWeights {
    /// Switches the face term on when > 0 (upstream never scales by it).
    pub face: f32,
    /// Scale of the boundary-edge quadrics; 0 switches them off.
    pub boundary: f32,
    /// Pull towards the mean piercing point, per piercing; must be > 0 (it keeps every QEF
    /// solvable).
    pub regularization: f32,
}

/// The weights the texturing pipeline's `encode_shape_slat` passes.
pub const TEXTURING_WEIGHTS: QefWeights = QefWeights {
    face: 1.0,
    boundary: 0.2,
    regularization: 1e-2,
};

/// The flexible dual grid of a mesh, one row per voxel, sorted by (x, y, z).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VoxelisedMesh {
    /// Voxel indices in `[0, G)³`.
    pub voxels: Vec<[i32; 3]>,
    /// Dual vertex of each voxel in the grid's `[0, 1]³` frame (inside its voxel).
    pub dual_vertices: Vec<[f32; 3]>,
    /// Whether the surface crosses the voxel's x-, y-, z-directed primal edge (the edge from
    /// its minimum corner).
    pub intersected: Vec<[bool; 3]>,
}

/// Symmetric 4×4 quadric, upper triangle row-major: 00 01 02 03 11 12 13 22 23 33.
type Quadric = [f32; 10];

/// Index of entry (i, j) of the symmetric 4×4 in [`Quadric`].
const fn qi(i: usize, j: usize) -> usize {
    let (i, j) = if i <= j { (i, j) } else { (j, i) };
    const ROW_START: [usize; 4] = [0, 4, 7, 9];
    ROW_START[i] + (j - i)
}

fn quadric_full(q: &Quadric) -> [[f32; 4]; 4] {
    std::array::from_fn(|i| std::array::from_fn(|j| q[qi(i, j)]))
}

/// Eigen's summation order for a fixed-size 3-vector reduction (its unrolled reducer halves
/// the range recursively): `a0·b0 + (a1·b1 + a2·b2)`. Dynamic-size reductions run left to
/// right instead.
fn dot3(a: [f32; 3], b: [f32; 3]) -> f32 {
    a[0] * b[0] + (a[1] * b[1] + a[2] * b[2])
}

fn sub3(a: [f32; 3], b: [f32; 3]) -> [f32; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn cross3(a: [f32; 3], b: [f32; 3]) -> [f32; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

/// Eigen's `normalized()`: unchanged when the squared norm is not positive.
fn normalized3(v: [f32; 3]) -> [f32; 3] {
    let z = dot3(v, v);
    if z > 0.0 {
        let s = z.sqrt();
        [v[0] / s, v[1] / s, v[2] / s]
    } else {
        v
    }
}

/// `plane · planeᵀ` of the triangle's supporting plane `(n, −n·v0)`, and `n`.
fn face_quadric(v: &[[f32; 3]; 3]) -> ([f32; 3], Quadric) {
    let n = normalized3(cross3(sub3(v[1], v[0]), sub3(v[2], v[1])));
    let plane = [n[0], n[1], n[2], -dot3(n, v[0])];
    let mut q = [0f32; 10];
    for i in 0..4 {
        for j in i..4 {
            q[qi(i, j)] = plane[i] * plane[j];
        }
    }
    (n, q)
}

fn add_quadric(acc: &mut Quadric, q: &Quadric) {
    for (a, b) in acc.iter_mut().zip(q) {
        *a += b;
    }
}

/// Upstream's `lerp`: `val_a` when `a == b`, else `(1 − α)·val_a + α·val_b`, `α = (t − a)/(b − a)`.
fn lerp(a: f64, b: f64, t: f64, va: f64, vb: f64) -> f64 {
    if a == b {
        return va;
    }
    let alpha = (t - a) / (b - a);
    (1.0 - alpha) * va + alpha * vb
}

/// A C `int(...)` cast of an in-range double (truncation; inputs are checked finite).
fn trunc_i32(v: f64) -> i32 {
    v as i32
}

/// Voxel key ordered like (x, y, z).
fn key(c: [i32; 3]) -> u64 {
    ((c[0] as u64) << 42) | ((c[1] as u64) << 21) | c[2] as u64
}

/// Murmur3's 64-bit finaliser as a hasher for voxel keys (SipHash is needlessly slow here).
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        let mut k = self.0;
        k ^= k >> 33;
        k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
        k ^= k >> 33;
        k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        k ^ (k >> 33)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type KeyMap = HashMap<u64, u32, BuildHasherDefault<KeyHasher>>;

/// The voxels of one slab `x ∈ [x_lo, x_hi)` and their running sums.
struct Slab {
    x_lo: i32,
    x_hi: i32,
    index: KeyMap,
    voxels: Vec<[i32; 3]>,
    point_sums: Vec<[f32; 3]>,
    counts: Vec<f32>,
    intersected: Vec<[bool; 3]>,
    qefs: Vec<Quadric>,
}

impl Slab {
    fn new(x_lo: i32, x_hi: i32) -> Self {
        Self {
            x_lo,
            x_hi,
            index: KeyMap::default(),
            voxels: Vec::new(),
            point_sums: Vec::new(),
            counts: Vec::new(),
            intersected: Vec::new(),
            qefs: Vec::new(),
        }
    }

    fn owns(&self, x: i32) -> bool {
        x >= self.x_lo && x < self.x_hi
    }

    /// One piercing: creates the voxel on first touch (upstream's insertion), else adds.
    fn pierce(&mut self, c: [i32; 3], point: [f32; 3], flag_axis: Option<usize>, q: &Quadric) {
        let next = self.voxels.len() as u32;
        let i = *self.index.entry(key(c)).or_insert(next) as usize;
        if i == self.voxels.len() {
            self.voxels.push(c);
            self.point_sums.push(point);
            self.counts.push(1.0);
            self.intersected.push([false; 3]);
            self.qefs.push(*q);
        } else {
            let s = &mut self.point_sums[i];
            for a in 0..3 {
                s[a] += point[a];
            }
            self.counts[i] += 1.0;
            add_quadric(&mut self.qefs[i], q);
        }
        if let Some(a) = flag_axis {
            self.intersected[i][a] = true;
        }
    }

    fn get(&self, c: [i32; 3]) -> Option<usize> {
        self.index.get(&key(c)).map(|&i| i as usize)
    }
}

/// The grid: `G` cells of `1/G` per axis (f32, as upstream divides the unit box by G).
#[derive(Clone, Copy)]
struct Grid {
    size: i32,
    voxel: f32,
}

impl Grid {
    fn clamp(&self, v: i32) -> i32 {
        v.clamp(0, self.size - 1)
    }
}

/// Step 1 for one triangle: the three scan-line passes (upstream `intersect_qef`).
fn intersect_triangle(slab: &mut Slab, grid: Grid, v: &[[f32; 3]; 3]) {
    let (_, q) = face_quadric(v);
    let vs = f64::from(grid.voxel);
    for ax2 in 0..3 {
        let ax0 = (ax2 + 1) % 3;
        let ax1 = (ax2 + 2) % 3;
        // (across, along the scan, depth) per vertex, sorted by the scan coordinate (stable).
        let mut t: [[f64; 3]; 3] = std::array::from_fn(|k| {
            [
                f64::from(v[k][ax0]),
                f64::from(v[k][ax1]),
                f64::from(v[k][ax2]),
            ]
        });
        t.sort_by(|a, b| a[1].partial_cmp(&b[1]).unwrap_or(std::cmp::Ordering::Equal));
        let row = |y: f64| grid.clamp(trunc_i32(y / vs));
        let (start, mid, end) = (row(t[0][1]), row(t[1][1]), row(t[2][1]));
        let axes = [ax0, ax1, ax2];
        scan_half(slab, grid, axes, start, mid, [t[0], t[1], t[2]], &q);
        scan_half(slab, grid, axes, mid, end, [t[2], t[1], t[0]], &q);
    }
}

/// Rows `row_start..row_end` of one half of the triangle: between edges t0–t1 and t0–t2.
fn scan_half(
    slab: &mut Slab,
    grid: Grid,
    [ax0, ax1, ax2]: [usize; 3],
    row_start: i32,
    row_end: i32,
    [t0, t1, t2]: [[f64; 3]; 3],
    q: &Quadric,
) {
    let vs = f64::from(grid.voxel);
    for y_idx in row_start..row_end {
        // Grid lines are at multiples of the f32 voxel size, computed in f32 like upstream.
        let y = f64::from((y_idx + 1) as f32 * grid.voxel);
        let mut a = [
            lerp(t0[1], t1[1], y, t0[0], t1[0]),
            lerp(t0[1], t1[1], y, t0[2], t1[2]),
        ];
        let mut b = [
            lerp(t0[1], t2[1], y, t0[0], t2[0]),
            lerp(t0[1], t2[1], y, t0[2], t2[2]),
        ];
        if a[0] > b[0] {
            std::mem::swap(&mut a, &mut b);
        }
        let line_start = grid.clamp(trunc_i32(a[0] / vs));
        let line_end = grid.clamp(trunc_i32(b[0] / vs));
        for x_idx in line_start..line_end {
            let x = f64::from((x_idx + 1) as f32 * grid.voxel);
            let z = lerp(a[0], b[0], x, a[1], b[1]);
            let z_idx = trunc_i32(z / vs);
            if z_idx < 0 || z_idx >= grid.size {
                continue;
            }
            let mut point = [0f32; 3];
            point[ax0] = x as f32;
            point[ax1] = y as f32;
            point[ax2] = z as f32;
            for dx in 0..2 {
                for dy in 0..2 {
                    let mut c = [0i32; 3];
                    c[ax0] = x_idx + dx;
                    c[ax1] = y_idx + dy;
                    c[ax2] = z_idx;
                    if slab.owns(c[0]) {
                        let flag = (dx == 0 && dy == 0).then_some(ax2);
                        slab.pierce(c, point, flag, q);
                    }
                }
            }
        }
    }
}

/// Step 2 for one triangle: its plane quadric to every existing voxel its box overlaps
/// (upstream `face_qef`: plane-through-box test, then the three 2D edge-function tests).
fn face_triangle(slab: &mut Slab, grid: Grid, v: &[[f32; 3]; 3]) {
    let (n, q) = face_quadric(v);
    let vs = [grid.voxel; 3];
    let e = [sub3(v[1], v[0]), sub3(v[2], v[1]), sub3(v[0], v[2])];
    let lo: [f32; 3] = std::array::from_fn(|a| v[0][a].min(v[1][a]).min(v[2][a]) / vs[a]);
    let hi: [f32; 3] = std::array::from_fn(|a| v[0][a].max(v[1][a]).max(v[2][a]) / vs[a]);
    let bb_min: [i32; 3] = std::array::from_fn(|a| (lo[a] as i32).max(0));
    let bb_max: [i32; 3] = std::array::from_fn(|a| ((hi[a] + 1.0) as i32).min(grid.size));
    let c: [f32; 3] = std::array::from_fn(|a| if n[a] > 0.0 { vs[a] } else { 0.0 });
    let d1 = dot3(n, sub3(c, v[0]));
    let d2 = dot3(n, sub3(sub3(vs, c), v[0]));
    // One projection plane (u, w) = axes (i, j); its normal's sign picks the edge orientation.
    let projection = |i: usize, j: usize, normal_axis: usize| {
        let mul = if n[normal_axis] < 0.0 { -1.0f32 } else { 1.0 };
        let ne: [[f32; 2]; 3] = std::array::from_fn(|k| [-mul * e[k][j], mul * e[k][i]]);
        let de: [f32; 3] = std::array::from_fn(|k| {
            let m = [ne[k][0].max(0.0), ne[k][1].max(0.0)];
            -(ne[k][0] * v[k][i] + ne[k][1] * v[k][j]) + (m[0] * vs[i] + m[1] * vs[j])
        });
        (ne, de)
    };
    let planes = [
        ((0, 1), projection(0, 1, 2)),
        ((1, 2), projection(1, 2, 0)),
        ((2, 0), projection(2, 0, 1)),
    ];
    let x_from = bb_min[0].max(slab.x_lo);
    let x_to = bb_max[0].min(slab.x_hi);
    for z in bb_min[2]..bb_max[2] {
        for y in bb_min[1]..bb_max[1] {
            'voxel: for x in x_from..x_to {
                let p = [vs[0] * x as f32, vs[1] * y as f32, vs[2] * z as f32];
                let ndp = dot3(n, p);
                if (ndp + d1) * (ndp + d2) > 0.0 {
                    continue;
                }
                for ((i, j), (ne, de)) in &planes {
                    for k in 0..3 {
                        if ne[k][0] * p[*i] + ne[k][1] * p[*j] + de[k] < 0.0 {
                            continue 'voxel;
                        }
                    }
                }
                if let Some(idx) = slab.get([x, y, z]) {
                    add_quadric(&mut slab.qefs[idx], &q);
                }
            }
        }
    }
}

/// The quadric of the line through `v0`, `v1` (`I − ddᵀ` about `v0`) and the voxels the
/// segment traverses, or `None` for a segment shorter than 1e-6 (upstream `boundry_qef`).
fn boundary_segment(grid: Grid, v0: [f32; 3], v1: [f32; 3]) -> Option<(Quadric, Vec<[i32; 3]>)> {
    let mut dir: [f64; 3] = std::array::from_fn(|a| f64::from(v1[a] - v0[a]));
    let length = (dir[0] * dir[0] + (dir[1] * dir[1] + dir[2] * dir[2])).sqrt();
    if length < 1e-6 {
        return None;
    }
    for d in &mut dir {
        *d /= length;
    }
    let a: [[f32; 3]; 3] = std::array::from_fn(|i| {
        std::array::from_fn(|j| f32::from(i == j) - (dir[i] * dir[j]) as f32)
    });
    let b: [f32; 3] = std::array::from_fn(|i| -dot3(a[i], v0));
    let row: [f32; 3] = std::array::from_fn(|j| dot3(v0, [a[0][j], a[1][j], a[2][j]]));
    let c = dot3(row, v0);
    let mut q = [0f32; 10];
    for i in 0..3 {
        for j in i..3 {
            q[qi(i, j)] = a[i][j];
        }
        q[qi(i, 3)] = b[i];
    }
    q[qi(3, 3)] = c;

    // 3D DDA from v0's voxel along dir until the segment ends.
    let vs = grid.voxel;
    let mut current: [i32; 3] = std::array::from_fn(|a| (v0[a] / vs).floor() as i32);
    let step: [i32; 3] = std::array::from_fn(|a| if dir[a] > 0.0 { 1 } else { -1 });
    let mut t_max = [f64::INFINITY; 3];
    let mut t_delta = [f64::INFINITY; 3];
    for a in 0..3 {
        if dir[a] != 0.0 {
            let border = vs * (current[a] + i32::from(step[a] > 0)) as f32;
            t_max[a] = f64::from(border - v0[a]) / dir[a];
            t_delta[a] = f64::from(vs) / dir[a].abs();
        }
    }
    let mut cells = vec![current];
    loop {
        let axis = if t_max[0] < t_max[1] {
            if t_max[0] < t_max[2] {
                0
            } else {
                2
            }
        } else if t_max[1] < t_max[2] {
            1
        } else {
            2
        };
        if t_max[axis] > length {
            break;
        }
        current[axis] += step[axis];
        t_max[axis] += t_delta[axis];
        cells.push(current);
    }
    Some((q, cells))
}

/// Minimises the QEF of one voxel inside it (upstream's solve: unconstrained, else the best of
/// the face-, edge- and corner-constrained minimisers), in f32 with upstream's solver.
fn solve_voxel(
    c: [i32; 3],
    qef: &Quadric,
    point_sum: [f32; 3],
    count: f32,
    grid: Grid,
    regularization: f32,
) -> [f32; 3] {
    let vs = grid.voxel;
    let lo: [f32; 3] = std::array::from_fn(|a| c[a] as f32 * vs);
    let hi: [f32; 3] = std::array::from_fn(|a| (c[a] + 1) as f32 * vs);
    let mut q = *qef;
    let p: [f32; 3] = std::array::from_fn(|a| point_sum[a] / count);
    let s = regularization * count;
    for a in 0..3 {
        q[qi(a, a)] += s;
        q[qi(a, 3)] += s * -p[a];
    }
    q[qi(3, 3)] += s * dot3(p, p);
    let m = quadric_full(&q);
    let inside = |v: [f32; 3]| (0..3).all(|a| v[a] >= lo[a] && v[a] <= hi[a]);

    let a3: [[f32; 3]; 3] = std::array::from_fn(|i| std::array::from_fn(|j| m[i][j]));
    let b3: [f32; 3] = std::array::from_fn(|i| -m[i][3]);
    let free = colpiv_qr_solve(a3, b3);
    if inside(free) {
        return free;
    }
    // `pᵀ Q p` with p = (v, 1): every 4-element dot summed as Eigen's SSE reduction does,
    // `(x0 + x2) + (x1 + x3)`.
    let dot4 = |a: [f32; 4], b: [f32; 4]| (a[0] * b[0] + a[2] * b[2]) + (a[1] * b[1] + a[3] * b[3]);
    let err = |v: [f32; 3]| {
        let h = [v[0], v[1], v[2], 1.0];
        let r: [f32; 4] = std::array::from_fn(|j| dot4(h, [m[0][j], m[1][j], m[2][j], m[3][j]]));
        dot4(r, h)
    };
    let mut best = f32::INFINITY;
    let mut best_v = free;
    let mut consider = |v: [f32; 3]| {
        let e = err(v);
        if e < best {
            best = e;
            best_v = v;
        }
    };
    // One coordinate on a face of the voxel: a 2×2 system in the other two.
    for fixed in 0..3 {
        let (a1, a2) = ((fixed + 1) % 3, (fixed + 2) % 3);
        let a = [[m[a1][a1], m[a1][a2]], [m[a2][a1], m[a2][a2]]];
        for bound in [lo[fixed], hi[fixed]] {
            let rhs = [
                -(m[a1][fixed] * bound + m[a1][3]),
                -(m[a2][fixed] * bound + m[a2][3]),
            ];
            let [x1, x2] = colpiv_qr_solve(a, rhs);
            if x1 >= lo[a1] && x1 <= hi[a1] && x2 >= lo[a2] && x2 <= hi[a2] {
                let mut v = [0f32; 3];
                v[fixed] = bound;
                v[a1] = x1;
                v[a2] = x2;
                consider(v);
            }
        }
    }
    // Two coordinates on an edge: the free one minimises a 1D quadratic.
    for free_axis in 0..3 {
        let (a1, a2) = ((free_axis + 1) % 3, (free_axis + 2) % 3);
        let a = m[free_axis][free_axis];
        for (u, w) in [
            (lo[a1], lo[a2]),
            (lo[a1], hi[a2]),
            (hi[a1], lo[a2]),
            (hi[a1], hi[a2]),
        ] {
            let x = -dot3(
                [m[free_axis][a1], m[free_axis][a2], m[free_axis][3]],
                [u, w, 1.0],
            ) / a;
            if x >= lo[free_axis] && x <= hi[free_axis] {
                let mut v = [0f32; 3];
                v[free_axis] = x;
                v[a1] = u;
                v[a2] = w;
                consider(v);
            }
        }
    }
    // The corners, in upstream's order (max before min on each axis).
    for cx in [hi[0], lo[0]] {
        for cy in [hi[1], lo[1]] {
            for cz in [hi[2], lo[2]] {
                consider([cx, cy, cz]);
            }
        }
    }
    best_v
}

/// `A x = b` by Householder QR with column pivoting in f32, operation for operation as Eigen
/// 3.4's `ColPivHouseholderQR` (`computeInPlace`, then `solve`), which upstream calls: the QEFs
/// are ill-conditioned in the surface's tangent directions (only the regularisation holds
/// them), so a different f32 solver lands up to ~10⁻³ voxel elsewhere. Pivots below Eigen's
/// threshold count as zero (their unknowns solve to 0), as Eigen's do.
fn colpiv_qr_solve<const N: usize>(a: [[f32; N]; N], b: [f32; N]) -> [f32; N] {
    let mut qr = a;
    let col_sq_norm = |qr: &[[f32; N]; N], j: usize, from: usize| {
        let mut s = 0f32;
        for (i, row) in qr.iter().enumerate().skip(from) {
            s = if i == from {
                row[j] * row[j]
            } else {
                s + row[j] * row[j]
            };
        }
        s
    };
    let mut h_coeffs = [0f32; N];
    let mut transpositions = [0usize; N];
    // Whole columns are fixed-size: Eigen's halving reduction (`x0 + (x1 + x2)`).
    let mut norms_direct: [f32; N] = std::array::from_fn(|j| {
        let col: [f32; N] = std::array::from_fn(|i| qr[i][j]);
        match N {
            3 => dot3([col[0], col[1], col[2]], [col[0], col[1], col[2]]),
            _ => col_sq_norm(&qr, j, 0),
        }
        .sqrt()
    });
    let mut norms_updated = norms_direct;
    let max_norm = norms_updated
        .iter()
        .copied()
        .fold(norms_updated[0], f32::max);
    let eps = f32::EPSILON;
    let threshold_helper = (max_norm * eps) * (max_norm * eps) / N as f32;
    let downdate_threshold = eps.sqrt();
    let mut nonzero_pivots = N;
    for k in 0..N {
        // The first column of largest updated norm.
        let mut biggest = k;
        for j in k + 1..N {
            if norms_updated[j] > norms_updated[biggest] {
                biggest = j;
            }
        }
        let biggest_sq = norms_updated[biggest] * norms_updated[biggest];
        if nonzero_pivots == N && biggest_sq < threshold_helper * (N - k) as f32 {
            nonzero_pivots = k;
        }
        transpositions[k] = biggest;
        if biggest != k {
            for row in qr.iter_mut() {
                row.swap(k, biggest);
            }
            norms_updated.swap(k, biggest);
            norms_direct.swap(k, biggest);
        }
        // The Householder reflection of column k below the diagonal (`makeHouseholder`).
        let c0 = qr[k][k];
        let tail_sq = if k + 1 < N {
            col_sq_norm(&qr, k, k + 1)
        } else {
            0.0
        };
        let (tau, beta) = if tail_sq <= f32::MIN_POSITIVE {
            for row in qr.iter_mut().skip(k + 1) {
                row[k] = 0.0;
            }
            (0.0, c0)
        } else {
            let mut beta = (c0 * c0 + tail_sq).sqrt();
            if c0 >= 0.0 {
                beta = -beta;
            }
            let d = c0 - beta;
            for row in qr.iter_mut().skip(k + 1) {
                row[k] /= d;
            }
            ((beta - c0) / beta, beta)
        };
        h_coeffs[k] = tau;
        qr[k][k] = beta;
        // Applied to the columns right of k (`applyHouseholderOnTheLeft`).
        if k + 1 == N {
            // A single row: scaled by 1 − τ (no columns remain right of it).
        } else if tau != 0.0 {
            let mut tmp = [0f32; N];
            for j in k + 1..N {
                let t = qr[k + 1..].iter().fold(0f32, |t, row| t + row[k] * row[j]);
                tmp[j] = t + qr[k][j];
            }
            for j in k + 1..N {
                qr[k][j] -= tau * tmp[j];
            }
            for row in qr[k + 1..].iter_mut() {
                let e = tau * row[k];
                for j in k + 1..N {
                    row[j] -= tmp[j] * e;
                }
            }
        }
        // Column norms downdated (LAPACK's xGEQPF rule), recomputed when inaccurate.
        for j in k + 1..N {
            if norms_updated[j] != 0.0 {
                let mut temp = qr[k][j].abs() / norms_updated[j];
                temp = (1.0 + temp) * (1.0 - temp);
                if temp < 0.0 {
                    temp = 0.0;
                }
                let ratio = norms_updated[j] / norms_direct[j];
                if temp * (ratio * ratio) <= downdate_threshold {
                    norms_direct[j] = if k + 1 < N {
                        col_sq_norm(&qr, j, k + 1).sqrt()
                    } else {
                        0.0
                    };
                    norms_updated[j] = norms_direct[j];
                } else {
                    norms_updated[j] *= temp.sqrt();
                }
            }
        }
    }
    let mut perm: [usize; N] = std::array::from_fn(|i| i);
    for (k, &t) in transpositions.iter().enumerate() {
        perm.swap(k, t);
    }
    let mut x = [0f32; N];
    if nonzero_pivots == 0 {
        return x;
    }
    // c = Qᵀ b: the reflections in order.
    let mut c = b;
    for k in 0..nonzero_pivots {
        let tau = h_coeffs[k];
        if k + 1 == N {
            c[k] *= 1.0 - tau;
        } else if tau != 0.0 {
            let mut t = qr[k + 1][k] * c[k + 1];
            for i in k + 2..N {
                t += qr[i][k] * c[i];
            }
            let t = t + c[k];
            c[k] -= tau * t;
            for i in k + 1..N {
                c[i] -= t * (tau * qr[i][k]);
            }
        }
    }
    // R x = c by columns from the bottom.
    for i in (0..nonzero_pivots).rev() {
        if c[i] != 0.0 {
            c[i] /= qr[i][i];
            for j in 0..i {
                c[j] -= c[i] * qr[j][i];
            }
        }
    }
    for i in 0..nonzero_pivots {
        x[perm[i]] = c[i];
    }
    x
}

/// Checks the inputs; returns the faces as vertex triples shifted into the grid frame.
fn triangles(vertices: &[[f32; 3]], faces: &[[u32; 3]]) -> Result<Vec<[[f32; 3]; 3]>> {
    if let Some(row) = vertices
        .iter()
        .position(|v| v.iter().any(|c| !c.is_finite()))
    {
        return Err(MeshError::NonFiniteVertex { row });
    }
    // Upstream's `preprocess_mesh` asserts the same; it also keeps every scan line in the grid.
    if let Some(row) = vertices
        .iter()
        .position(|v| v.iter().any(|c| !(-0.5..=0.5).contains(c)))
    {
        return Err(MeshError::VertexOutsideBox {
            row,
            vertex: vertices[row],
        });
    }
    if vertices.len() > u32::MAX as usize {
        return Err(MeshError::TooMany {
            what: "vertices",
            count: vertices.len(),
        });
    }
    for (face, f) in faces.iter().enumerate() {
        if let Some(&index) = f.iter().find(|&&i| i as usize >= vertices.len()) {
            return Err(MeshError::FaceIndexOutOfRange {
                face,
                index,
                vertices: vertices.len(),
            });
        }
    }
    // Upstream subtracts the box minimum (−0.5) in f32.
    let shift = |v: [f32; 3]| v.map(|c| c - -0.5f32);
    Ok(faces
        .par_iter()
        .map(|f| f.map(|i| shift(vertices[i as usize])))
        .collect())
}

/// Edges used by exactly one face, as (smaller, larger) vertex index, ascending (upstream
/// counts them in a `std::map` and walks it in key order).
fn boundary_edges(faces: &[[u32; 3]]) -> Vec<(u32, u32)> {
    let mut edges: Vec<u64> = faces
        .par_iter()
        .flat_map_iter(|f| {
            (0..3).map(move |k| {
                let (a, b) = (f[k], f[(k + 1) % 3]);
                (u64::from(a.min(b)) << 32) | u64::from(a.max(b))
            })
        })
        .collect();
    edges.par_sort_unstable();
    let mut out = Vec::new();
    let mut i = 0;
    while i < edges.len() {
        let mut j = i + 1;
        while j < edges.len() && edges[j] == edges[i] {
            j += 1;
        }
        if j - i == 1 {
            out.push(((edges[i] >> 32) as u32, edges[i] as u32));
        }
        i = j;
    }
    out
}

/// The voxel x-range `[lo, hi]` a primitive spanning `[min, max]` (grid frame) can reach,
/// with a margin for the scan line's rounding and the four voxels around a grid line.
fn x_reach(min: f32, max: f32, grid: Grid) -> (i32, i32) {
    let lo = (min / grid.voxel).floor() as i64 - 2;
    let hi = (max / grid.voxel).floor() as i64 + 2;
    let g = i64::from(grid.size) - 1;
    (lo.clamp(0, g) as i32, hi.clamp(0, g) as i32)
}

/// For each slab, the items whose x-reach overlaps it, in item order.
fn per_slab(reach: &[(i32, i32)], slab_width: i32, slabs: usize) -> Vec<Vec<u32>> {
    let mut lists = vec![Vec::new(); slabs];
    for (i, &(lo, hi)) in reach.iter().enumerate() {
        for list in &mut lists[(lo / slab_width) as usize..=(hi / slab_width) as usize] {
            list.push(i as u32);
        }
    }
    lists
}

/// Voxelises `faces` over `vertices` (normalised into `[-0.5, 0.5]³`) on a `grid_size³` grid.
/// Vertices outside the box, NaN and infinities are refused.
pub fn voxelise(
    vertices: &[[f32; 3]],
    faces: &[[u32; 3]],
    grid_size: u32,
    weights: QefWeights,
) -> Result<VoxelisedMesh> {
    if grid_size == 0 || grid_size > MAX_VOXELISE_GRID {
        return Err(MeshError::BadParameter {
            name: "grid size (1..=4096)",
            value: f64::from(grid_size),
        });
    }
    for (name, value, ok) in [
        ("face weight", weights.face, weights.face >= 0.0),
        ("boundary weight", weights.boundary, weights.boundary >= 0.0),
        (
            "regularization weight",
            weights.regularization,
            weights.regularization > 0.0,
        ),
    ] {
        if !ok || !value.is_finite() {
            return Err(MeshError::BadParameter {
                name,
                value: f64::from(value),
            });
        }
    }
    let tris = triangles(vertices, faces)?;
    let grid = Grid {
        size: grid_size as i32,
        voxel: 1.0f32 / grid_size as f32,
    };

    let slabs = (rayon::current_num_threads() * 8)
        .min(grid_size as usize)
        .max(1);
    let slab_width = (grid_size as usize).div_ceil(slabs) as i32;
    let slabs = (grid_size as usize).div_ceil(slab_width as usize);
    let tri_reach: Vec<(i32, i32)> = tris
        .par_iter()
        .map(|t| {
            let (lo, hi) = t
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), v| {
                    (l.min(v[0]), h.max(v[0]))
                });
            x_reach(lo, hi, grid)
        })
        .collect();
    let tris_of_slab = per_slab(&tri_reach, slab_width, slabs);

    let shifted = |i: u32| vertices[i as usize].map(|c| c - -0.5f32);
    let edges = if weights.boundary > 0.0 {
        boundary_edges(faces)
    } else {
        Vec::new()
    };
    let edge_reach: Vec<(i32, i32)> = edges
        .par_iter()
        .map(|&(a, b)| {
            let (va, vb) = (shifted(a), shifted(b));
            x_reach(va[0].min(vb[0]), va[0].max(vb[0]), grid)
        })
        .collect();
    let edges_of_slab = per_slab(&edge_reach, slab_width, slabs);

    let built: Vec<Slab> = (0..slabs)
        .into_par_iter()
        .map(|s| {
            let x_lo = s as i32 * slab_width;
            let mut slab = Slab::new(x_lo, (x_lo + slab_width).min(grid.size));
            for &t in &tris_of_slab[s] {
                intersect_triangle(&mut slab, grid, &tris[t as usize]);
            }
            if weights.face > 0.0 {
                for &t in &tris_of_slab[s] {
                    face_triangle(&mut slab, grid, &tris[t as usize]);
                }
            }
            for &e in &edges_of_slab[s] {
                let (a, b) = edges[e as usize];
                let Some((q, cells)) = boundary_segment(grid, shifted(a), shifted(b)) else {
                    continue;
                };
                let scaled = q.map(|v| weights.boundary * v);
                for c in cells {
                    let in_grid = c.iter().all(|&v| v >= 0 && v < grid.size);
                    if in_grid && slab.owns(c[0]) {
                        if let Some(i) = slab.get(c) {
                            add_quadric(&mut slab.qefs[i], &scaled);
                        }
                    }
                }
            }
            slab
        })
        .collect();

    // Rows sorted by (x, y, z): slabs are x-ordered, each sorted by key.
    let mut order: Vec<(usize, u32)> = Vec::new();
    for (s, slab) in built.iter().enumerate() {
        let mut rows: Vec<u32> = (0..slab.voxels.len() as u32).collect();
        rows.sort_unstable_by_key(|&i| key(slab.voxels[i as usize]));
        order.extend(rows.into_iter().map(|i| (s, i)));
    }
    let solved: Vec<([i32; 3], [f32; 3], [bool; 3])> = order
        .par_iter()
        .map(|&(s, i)| {
            let slab = &built[s];
            let i = i as usize;
            let c = slab.voxels[i];
            let v = solve_voxel(
                c,
                &slab.qefs[i],
                slab.point_sums[i],
                slab.counts[i],
                grid,
                weights.regularization,
            );
            (c, v, slab.intersected[i])
        })
        .collect();
    let mut out = VoxelisedMesh {
        voxels: Vec::with_capacity(solved.len()),
        dual_vertices: Vec::with_capacity(solved.len()),
        intersected: Vec::with_capacity(solved.len()),
    };
    for (c, v, f) in solved {
        out.voxels.push(c);
        out.dual_vertices.push(v);
        out.intersected.push(f);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A unit-ish tetrahedron inside the box.
    fn tetra() -> (Vec<[f32; 3]>, Vec<[u32; 3]>) {
        (
            vec![
                [-0.3, -0.3, -0.3],
                [0.3, -0.3, -0.2],
                [-0.2, 0.35, -0.25],
                [0.0, 0.0, 0.4],
            ],
            vec![[0, 2, 1], [0, 1, 3], [1, 2, 3], [2, 0, 3]],
        )
    }

    #[test]
    fn dual_vertices_stay_in_their_voxels_and_rows_are_sorted() {
        let (v, f) = tetra();
        let g = voxelise(&v, &f, 16, TEXTURING_WEIGHTS).unwrap();
        assert!(!g.voxels.is_empty());
        let vs = 1.0 / 16.0;
        for (c, d) in g.voxels.iter().zip(&g.dual_vertices) {
            for a in 0..3 {
                assert!(d[a] >= c[a] as f32 * vs - 1e-6 && d[a] <= (c[a] + 1) as f32 * vs + 1e-6);
            }
        }
        assert!(g.voxels.windows(2).all(|w| key(w[0]) < key(w[1])));
        assert!(g.intersected.iter().any(|f| f.iter().any(|&b| b)));
    }

    #[test]
    fn thread_count_does_not_change_the_result() {
        let (v, f) = tetra();
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| voxelise(&v, &f, 32, TEXTURING_WEIGHTS).unwrap());
        let many = rayon::ThreadPoolBuilder::new()
            .num_threads(7)
            .build()
            .unwrap()
            .install(|| voxelise(&v, &f, 32, TEXTURING_WEIGHTS).unwrap());
        assert_eq!(one, many);
    }

    #[test]
    fn boundary_edges_are_those_of_one_face() {
        let faces = [[0, 1, 2], [2, 1, 3]];
        assert_eq!(boundary_edges(&faces), vec![(0, 1), (0, 2), (1, 3), (2, 3)]);
    }

    #[test]
    fn bad_inputs_are_named() {
        let (mut v, f) = tetra();
        let err = voxelise(&v, &[[0, 1, 9]], 8, TEXTURING_WEIGHTS).unwrap_err();
        assert!(err.to_string().contains("vertex 9"), "{err}");
        v[2][1] = f32::NAN;
        let err = voxelise(&v, &f, 8, TEXTURING_WEIGHTS).unwrap_err();
        assert!(err.to_string().contains("vertex 2"), "{err}");
        let err = voxelise(&tetra().0, &f, 0, TEXTURING_WEIGHTS).unwrap_err();
        assert!(err.to_string().contains("grid size"), "{err}");
        let weights = QefWeights {
            regularization: 0.0,
            ..TEXTURING_WEIGHTS
        };
        assert!(voxelise(&tetra().0, &f, 8, weights).is_err());
    }

    #[test]
    fn empty_mesh_gives_no_voxels() {
        let g = voxelise(&[], &[], 8, TEXTURING_WEIGHTS).unwrap();
        assert!(g.voxels.is_empty());
    }
}
