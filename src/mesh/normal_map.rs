//! Tangent-space normal maps that carry a detailed (raw) surface's normals onto a simplified
//! mesh's UV atlas (docs/OUTPUTS.md "Normal map").
//!
//! * Tangents: MikkTSpace (the `bevy_mikktspace` crate, a byte-identical safe port of the
//!   reference implementation), fed the texture coordinates with `v` flipped (`1 − v`), so that
//!   the bitangent points up the image as glTF's normal textures require (+X right, +Y up, +Z
//!   out). Written per vertex as glTF's `TANGENT` (xyz unit, w = ±1 handedness); a vertex whose
//!   corners get different tangents is split ([`mikktspace_tangents`]).
//! * Decoding convention ([`tangent_to_world`]), the one MikkTSpace prescribes and bakers such
//!   as Blender use: per texel, the vertex normal `N` and tangent `T` interpolated and *not*
//!   normalised, `B = w · (N × T)`, normal = normalize(x·T + y·B + z·N). The baker inverts
//!   exactly that (solves the 3 × 3 system), so a viewer with this convention reproduces the raw
//!   normal up to 8-bit quantisation; viewers that normalise or orthogonalise the interpolated
//!   frame first (three.js, glTF Sample Viewer) differ by the frame's small non-orthogonality.
//! * Raw normals: [`SurfaceIndex`] finds, for a point on the simplified surface, the closest
//!   point of the raw surface among triangles facing the same way (so the two sides of a thin
//!   sheet stay apart) within a few voxels, and interpolates the raw mesh's area-weighted
//!   vertex normals there. A uniform grid of cells suffices: raw triangles are about one voxel
//!   and the simplified surface stays within about half a voxel of them.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use bevy_mikktspace::{generate_tangents, Geometry, StdOps, TangentSpace};
use rayon::prelude::*;

use super::bake::{bake_with, BakeOptions, BakedImage};
use super::error::{MeshError, Result};
use super::triangle_mesh::Mesh;
use crate::vec3::{cross, dot, scale, sub};

/// Channels of a baked normal map (RGB = tangent-space xyz · ½ + ½).
pub const NORMAL_MAP_CHANNELS: usize = 3;

/// Side of one [`SurfaceIndex`] cell, in voxels: the 3 × 3 × 3 cells around a point hold every
/// triangle within this distance of it (triangles are filed by every cell their bounds touch).
pub const SEARCH_VOXELS: f32 = 2.0;

/// Vertices, faces and unit per-vertex normals of the raw surface, filed by cell.
pub struct SurfaceIndex<'a> {
    mesh: &'a Mesh,
    normals: Vec<[f32; 3]>,
    cell: f64,
    /// Cell key → range of `triangles`.
    cells: HashMap<u64, (u32, u32), BuildHasherDefault<CellHasher>>,
    triangles: Vec<u32>,
}

/// Multiplicative hash of a packed cell key (the keys are already well spread integers; the
/// default SipHash would cost more than the lookups it serves).
#[derive(Default)]
struct CellHasher(u64);

impl Hasher for CellHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v ^ (v >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        self.0 ^= self.0 >> 32;
    }
}

const KEY_BIAS: i64 = 1 << 20;

fn cell_key(c: [i64; 3]) -> u64 {
    let b = |v: i64| ((v + KEY_BIAS) as u64) & ((1 << 21) - 1);
    b(c[0]) | b(c[1]) << 21 | b(c[2]) << 42
}

impl<'a> SurfaceIndex<'a> {
    /// Files the triangles of `mesh` (wound consistently outward: the normals follow the
    /// winding) into cells of [`SEARCH_VOXELS`] voxels of side `voxel_size` (world units).
    pub fn new(mesh: &'a Mesh, voxel_size: f32) -> Result<Self> {
        if !(voxel_size.is_finite() && voxel_size > 0.0) {
            return Err(MeshError::BadParameter {
                name: "voxel_size",
                value: f64::from(voxel_size),
            });
        }
        let normals = mesh.vertex_normals()?;
        if let Some(&bad) = mesh.vertices.iter().flatten().find(|v| !v.is_finite()) {
            return Err(MeshError::BadParameter {
                name: "raw vertex coordinate",
                value: f64::from(bad),
            });
        }
        let cell = f64::from(voxel_size * SEARCH_VOXELS);
        let cell_of = |v: f64| (v / cell).floor() as i64;
        // Cells beyond the key's 21 bits per axis would alias; a finite mesh in a sane frame
        // never gets there, and an aliased cell only costs extra distance tests.
        let mut filed: Vec<(u64, u32)> = mesh
            .faces
            .par_iter()
            .enumerate()
            .flat_map_iter(|(t, f)| {
                let p = f.map(|i| mesh.vertices[i as usize].map(f64::from));
                let lo: [i64; 3] =
                    std::array::from_fn(|a| cell_of(p[0][a].min(p[1][a]).min(p[2][a])));
                let hi: [i64; 3] =
                    std::array::from_fn(|a| cell_of(p[0][a].max(p[1][a]).max(p[2][a])));
                // A huge triangle (hole filling can make some) is filed in at most 4³ cells
                // from its bounding box's low corner: bounded memory; points near its far
                // parts fall back to the simplified surface's own normal.
                let hi: [i64; 3] = std::array::from_fn(|a| hi[a].min(lo[a] + 3));
                (lo[0]..=hi[0]).flat_map(move |x| {
                    (lo[1]..=hi[1]).flat_map(move |y| {
                        (lo[2]..=hi[2]).map(move |z| (cell_key([x, y, z]), t as u32))
                    })
                })
            })
            .collect();
        filed.par_sort_unstable();
        let mut cells = HashMap::with_capacity_and_hasher(filed.len() / 4, Default::default());
        let mut start = 0usize;
        while start < filed.len() {
            let key = filed[start].0;
            let mut end = start + 1;
            while end < filed.len() && filed[end].0 == key {
                end += 1;
            }
            cells.insert(key, (start as u32, end as u32));
            start = end;
        }
        let triangles = filed.into_iter().map(|(_, t)| t).collect();
        Ok(Self {
            mesh,
            normals,
            cell,
            cells,
            triangles,
        })
    }

    /// The raw surface's unit normal at its closest point to `p` among triangles whose normal
    /// makes an acute angle with `facing`, if one lies within [`SEARCH_VOXELS`] voxels.
    pub fn normal_near(&self, p: [f64; 3], facing: [f64; 3]) -> Option<[f64; 3]> {
        let c: [i64; 3] = std::array::from_fn(|a| (p[a] / self.cell).floor() as i64);
        let mut best = (self.cell * self.cell, u32::MAX, [0.0; 3]);
        // The point's own cell first: its nearest triangle usually rules the others out.
        const ORDER: [i64; 3] = [0, -1, 1];
        for dx in ORDER {
            for dy in ORDER {
                for dz in ORDER {
                    let cc = [c[0] + dx, c[1] + dy, c[2] + dz];
                    // Distance from p to the cell's box.
                    let gap: f64 = (0..3)
                        .map(|a| {
                            let lo = cc[a] as f64 * self.cell;
                            let d = (lo - p[a]).max(p[a] - lo - self.cell).max(0.0);
                            d * d
                        })
                        .sum();
                    if gap >= best.0 {
                        continue;
                    }
                    let Some(&(s, e)) = self.cells.get(&cell_key(cc)) else {
                        continue;
                    };
                    for &t in &self.triangles[s as usize..e as usize] {
                        let f = self.mesh.faces[t as usize];
                        let q = f.map(|i| self.mesh.vertices[i as usize].map(f64::from));
                        let n = cross(sub(q[1], q[0]), sub(q[2], q[0]));
                        if dot(n, facing) <= 0.0 {
                            continue;
                        }
                        // Farther from its plane than the best so far: cheaper to tell than the
                        // closest point.
                        let along = dot(sub(p, q[0]), n);
                        if along * along > best.0 * dot(n, n) {
                            continue;
                        }
                        let (d2, w) = closest_on_triangle(p, q);
                        // Ties (a shared edge or corner): the lower-numbered triangle, so the
                        // result does not depend on the visiting order.
                        if d2 < best.0 || (d2 == best.0 && t < best.1) {
                            best = (d2, t, w);
                        }
                    }
                }
            }
        }
        if best.1 == u32::MAX {
            return None;
        }
        let f = self.mesh.faces[best.1 as usize];
        let n: [f64; 3] = std::array::from_fn(|a| {
            (0..3)
                .map(|k| best.2[k] * f64::from(self.normals[f[k] as usize][a]))
                .sum()
        });
        normalize(n)
    }
}

/// Closest point of triangle `q` to `p`: (squared distance, its barycentric weights).
fn closest_on_triangle(p: [f64; 3], q: [[f64; 3]; 3]) -> (f64, [f64; 3]) {
    // Voronoi regions of the corners, edges and face, in that order.
    let (a, b, c) = (q[0], q[1], q[2]);
    let (ab, ac, ap) = (sub(b, a), sub(c, a), sub(p, a));
    let at = |w: [f64; 3]| {
        let x: [f64; 3] = std::array::from_fn(|k| w[0] * a[k] + w[1] * b[k] + w[2] * c[k]);
        let d = sub(p, x);
        (dot(d, d), w)
    };
    let (d1, d2) = (dot(ab, ap), dot(ac, ap));
    if d1 <= 0.0 && d2 <= 0.0 {
        return at([1.0, 0.0, 0.0]);
    }
    let bp = sub(p, b);
    let (d3, d4) = (dot(ab, bp), dot(ac, bp));
    if d3 >= 0.0 && d4 <= d3 {
        return at([0.0, 1.0, 0.0]);
    }
    let vc = d1 * d4 - d3 * d2;
    if vc <= 0.0 && d1 >= 0.0 && d3 <= 0.0 {
        let v = d1 / (d1 - d3);
        return at([1.0 - v, v, 0.0]);
    }
    let cp = sub(p, c);
    let (d5, d6) = (dot(ab, cp), dot(ac, cp));
    if d6 >= 0.0 && d5 <= d6 {
        return at([0.0, 0.0, 1.0]);
    }
    let vb = d5 * d2 - d1 * d6;
    if vb <= 0.0 && d2 >= 0.0 && d6 <= 0.0 {
        let w = d2 / (d2 - d6);
        return at([1.0 - w, 0.0, w]);
    }
    let va = d3 * d6 - d5 * d4;
    if va <= 0.0 && (d4 - d3) >= 0.0 && (d5 - d6) >= 0.0 {
        let w = (d4 - d3) / ((d4 - d3) + (d5 - d6));
        return at([0.0, 1.0 - w, w]);
    }
    let denom = va + vb + vc;
    if denom == 0.0 || !denom.is_finite() {
        // Degenerate: its corners are as good as anything.
        return [0, 1, 2]
            .map(|k| {
                let mut w = [0.0; 3];
                w[k] = 1.0;
                at(w)
            })
            .into_iter()
            .min_by(|x, y| x.0.total_cmp(&y.0))
            .expect("three corners");
    }
    let (v, w) = (vb / denom, vc / denom);
    at([1.0 - v - w, v, w])
}

/// Per-vertex MikkTSpace tangents of an indexed triangle mesh, vertices split where their
/// corners' tangents differ.
#[derive(Clone, Debug, PartialEq)]
pub struct Tangents {
    /// Per output vertex: the input vertex it copies (the first copy keeps the input's number).
    pub source_vertex: Vec<u32>,
    /// Per output vertex: unit xyz, w = +1 or −1 (`B = w · (N × T)`).
    pub tangents: Vec<[f32; 4]>,
    /// The input's triangles over the output vertices.
    pub indices: Vec<u32>,
}

struct MikkInput<'a> {
    positions: &'a [[f32; 3]],
    normals: &'a [[f32; 3]],
    uvs: &'a [[f32; 2]],
    indices: &'a [u32],
    corners: Vec<Option<TangentSpace>>,
}

impl Geometry for MikkInput<'_> {
    fn num_faces(&self) -> usize {
        self.indices.len() / 3
    }
    fn num_vertices_of_face(&self, _face: usize) -> usize {
        3
    }
    fn position(&self, face: usize, vert: usize) -> [f32; 3] {
        self.positions[self.indices[face * 3 + vert] as usize]
    }
    fn normal(&self, face: usize, vert: usize) -> [f32; 3] {
        self.normals[self.indices[face * 3 + vert] as usize]
    }
    fn tex_coord(&self, face: usize, vert: usize) -> [f32; 2] {
        let [u, v] = self.uvs[self.indices[face * 3 + vert] as usize];
        // glTF's v runs down the image; MikkTSpace's bitangent follows +v, and glTF wants it
        // up the image.
        [u, 1.0 - v]
    }
    fn set_tangent(&mut self, tangent_space: Option<TangentSpace>, face: usize, vert: usize) {
        self.corners[face * 3 + vert] = tangent_space;
    }
}

/// MikkTSpace tangents for the triangles `indices` over vertices with `positions`, unit
/// `normals` and glTF texture coordinates `uvs`. A corner MikkTSpace leaves without a tangent
/// (a degenerate triangle with no neighbour to inherit from) gets a unit vector perpendicular
/// to its normal. Sequential: the result is the same for any thread count.
pub fn mikktspace_tangents(
    positions: &[[f32; 3]],
    normals: &[[f32; 3]],
    uvs: &[[f32; 2]],
    indices: &[u32],
) -> Result<Tangents> {
    let n = positions.len();
    for (what, len) in [
        ("normals", normals.len()),
        ("texture coordinates", uvs.len()),
    ] {
        if len != n {
            return Err(MeshError::RowCountMismatch {
                what,
                rows: len,
                expected: n,
            });
        }
    }
    if !indices.len().is_multiple_of(3) {
        return Err(MeshError::BadLength {
            what: "triangle indices",
            len: indices.len(),
            width: 3,
        });
    }
    if let Some((k, &i)) = indices.iter().enumerate().find(|(_, &i)| i as usize >= n) {
        return Err(MeshError::FaceIndexOutOfRange {
            face: k / 3,
            index: i,
            vertices: n,
        });
    }
    let mut input = MikkInput {
        positions,
        normals,
        uvs,
        indices,
        corners: vec![None; indices.len()],
    };
    // The crate's error type has no values: it cannot fail.
    generate_tangents::<_, StdOps>(&mut input).map_err(|_| MeshError::BadParameter {
        name: "tangent space",
        value: f64::NAN,
    })?;
    let mut source_vertex: Vec<u32> = (0..n as u32).collect();
    let mut tangents: Vec<Option<[f32; 4]>> = vec![None; n];
    // Extra copies of vertex v: (tangent, output vertex).
    let mut copies: HashMap<u32, Vec<([f32; 4], u32)>> = HashMap::new();
    let mut out = Vec::with_capacity(indices.len());
    for (corner, &v) in indices.iter().enumerate() {
        let t = unit_tangent(input.corners[corner], normals[v as usize]);
        let slot = &mut tangents[v as usize];
        let index = match slot {
            None => {
                *slot = Some(t);
                v
            }
            Some(first) if *first == t => v,
            Some(_) => {
                let list = copies.entry(v).or_default();
                match list.iter().find(|(u, _)| *u == t) {
                    Some(&(_, i)) => i,
                    None => {
                        let i = source_vertex.len() as u32;
                        source_vertex.push(v);
                        tangents.push(Some(t));
                        list.push((t, i));
                        i
                    }
                }
            }
        };
        out.push(index);
    }
    let tangents = tangents
        .iter()
        .zip(&source_vertex)
        .map(|(t, &v)| t.unwrap_or_else(|| unit_tangent(None, normals[v as usize])))
        .collect();
    Ok(Tangents {
        source_vertex,
        tangents,
        indices: out,
    })
}

/// MikkTSpace's tangent as glTF stores it: xyz renormalised in f64 (unit within f32 rounding),
/// w = ±1; none, or not finite: the axis least aligned with `normal`, made perpendicular.
fn unit_tangent(ts: Option<TangentSpace>, normal: [f32; 3]) -> [f32; 4] {
    if let Some(ts) = ts {
        let [x, y, z, w] = ts.tangent_encoded();
        if let Some(t) = normalize([x, y, z].map(f64::from)) {
            return [t[0] as f32, t[1] as f32, t[2] as f32, w];
        }
    }
    let n = normal.map(f64::from);
    let axis = (0..3)
        .min_by(|&a, &b| n[a].abs().total_cmp(&n[b].abs()))
        .expect("three axes");
    let mut e = [0.0; 3];
    e[axis] = 1.0;
    let t = normalize(sub(e, scale(n, dot(e, n)))).unwrap_or([1.0, 0.0, 0.0]);
    [t[0] as f32, t[1] as f32, t[2] as f32, 1.0]
}

/// The convention the baker inverts (module docs): tangent-space `c` (decoded `2·rgb − 1`)
/// under the interpolated, unnormalised normal `n` and tangent `t`, handedness `w`, to a unit
/// world normal; None when the frame is degenerate.
pub fn tangent_to_world(c: [f64; 3], n: [f64; 3], t: [f64; 3], w: f64) -> Option<[f64; 3]> {
    let b = scale(cross(n, t), w.signum());
    normalize(std::array::from_fn(|a| {
        c[0] * t[a] + c[1] * b[a] + c[2] * n[a]
    }))
}

/// The world normal `target` in the frame of [`tangent_to_world`]: the unit `c` with
/// `tangent_to_world(c, n, t, w) = target`; None when the frame is degenerate.
pub fn world_to_tangent(target: [f64; 3], n: [f64; 3], t: [f64; 3], w: f64) -> Option<[f64; 3]> {
    let b = scale(cross(n, t), w.signum());
    // Cramer's rule on [t b n] · c = target.
    let det = dot(t, cross(b, n));
    let scale_of = dot(t, t).sqrt() * dot(b, b).sqrt() * dot(n, n).sqrt();
    if !(det.abs() > 1e-9 * scale_of && det.is_finite()) {
        return None;
    }
    let c = [
        dot(target, cross(b, n)) / det,
        dot(t, cross(target, n)) / det,
        dot(t, cross(b, target)) / det,
    ];
    normalize(c)
}

/// A mesh with per-vertex normals and tangents to bake a normal map on (the arrays a writer
/// stores: corner `k` of triangle `i` is vertex `indices[3i + k]`).
#[derive(Clone, Copy, Debug)]
pub struct TangentMesh<'a> {
    pub positions: &'a [[f32; 3]],
    /// Unit.
    pub normals: &'a [[f32; 3]],
    /// xyz unit, w = ±1 ([`mikktspace_tangents`]).
    pub tangents: &'a [[f32; 4]],
    /// glTF convention (v down the image).
    pub uvs: &'a [[f32; 2]],
    pub indices: &'a [u32],
}

/// Bakes the tangent-space normal map of `raw`'s surface onto `mesh`'s atlas: every baked
/// texel's point on `mesh` → the raw normal there ([`SurfaceIndex::normal_near`], facing the
/// interpolated normal; that interpolated normal itself when no raw triangle is near) →
/// [`world_to_tangent`] in the texel's interpolated frame → `c · ½ + ½` in RGB.
pub fn bake_normal_map(
    mesh: TangentMesh<'_>,
    raw: &SurfaceIndex<'_>,
    opts: &BakeOptions,
) -> Result<BakedImage> {
    let n = mesh.positions.len();
    for (what, len) in [
        ("normals", mesh.normals.len()),
        ("tangents", mesh.tangents.len()),
    ] {
        if len != n {
            return Err(MeshError::RowCountMismatch {
                what,
                rows: len,
                expected: n,
            });
        }
    }
    let sample = |tri: u32, w: [f64; 3], point: [f32; 3], out: &mut [f32]| {
        let v = [0, 1, 2].map(|k| mesh.indices[tri as usize * 3 + k] as usize);
        let lerp = |f: &dyn Fn(usize) -> [f64; 3]| -> [f64; 3] {
            std::array::from_fn(|a| (0..3).map(|k| w[k] * f(v[k])[a]).sum())
        };
        let normal = lerp(&|i| mesh.normals[i].map(f64::from));
        let tangent = lerp(&|i| {
            let t = mesh.tangents[i];
            [t[0], t[1], t[2]].map(f64::from)
        });
        let handedness: f64 = (0..3)
            .map(|k| w[k] * f64::from(mesh.tangents[v[k]][3]))
            .sum();
        let sign = if handedness < 0.0 { -1.0 } else { 1.0 };
        let target = raw
            .normal_near(point.map(f64::from), normal)
            .or_else(|| normalize(normal));
        let c = target
            .and_then(|t| world_to_tangent(t, normal, tangent, sign))
            .unwrap_or([0.0, 0.0, 1.0]);
        for (o, v) in out.iter_mut().zip(c) {
            *o = (v * 0.5 + 0.5) as f32;
        }
    };
    bake_with(
        mesh.positions,
        mesh.uvs,
        mesh.indices,
        NORMAL_MAP_CHANNELS,
        opts,
        &sample,
    )
}

fn normalize(a: [f64; 3]) -> Option<[f64; 3]> {
    let len = dot(a, a).sqrt();
    (len > 0.0 && len.is_finite()).then(|| scale(a, 1.0 / len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Positions, normals, texture coordinates, indices.
    type Arrays = (Vec<[f32; 3]>, Vec<[f32; 3]>, Vec<[f32; 2]>, Vec<u32>);

    /// The unit square in z = 0, facing +z, uv = (x, 1 − y): the image's top row at y = 1, an
    /// unmirrored mapping.
    fn square() -> Arrays {
        let corners = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]];
        (
            corners.iter().map(|&[x, y]| [x, y, 0.0]).collect(),
            vec![[0.0, 0.0, 1.0]; 4],
            corners.iter().map(|&[x, y]| [x, 1.0 - y]).collect(),
            vec![0, 1, 2, 0, 2, 3],
        )
    }

    #[test]
    fn tangents_follow_u_and_the_bitangent_points_up_the_image() {
        let (p, n, uv, ix) = square();
        let t = mikktspace_tangents(&p, &n, &uv, &ix).unwrap();
        assert_eq!(t.source_vertex, vec![0, 1, 2, 3], "no split on a plane");
        for tangent in &t.tangents {
            assert_eq!(*tangent, [1.0, 0.0, 0.0, 1.0]);
        }
        // B = w · (N × T) = +y: towards the image's top row (v decreasing).
        let b = scale(cross([0.0, 0.0, 1.0], [1.0, 0.0, 0.0]), 1.0);
        assert_eq!(b, [0.0, 1.0, 0.0]);
        // Mirrored in u: the handedness flips.
        let mirrored: Vec<[f32; 2]> = uv.iter().map(|&[u, v]| [1.0 - u, v]).collect();
        let t = mikktspace_tangents(&p, &n, &mirrored, &ix).unwrap();
        for tangent in &t.tangents {
            assert_eq!(*tangent, [-1.0, 0.0, 0.0, -1.0]);
        }
    }

    #[test]
    fn corners_with_different_tangents_split_their_vertex() {
        // Two squares sharing the edge x = 1 but with u running opposite ways on each.
        let p = vec![
            [0.0, 0.0, 0.0],
            [1.0, 0.0, 0.0],
            [1.0, 1.0, 0.0],
            [0.0, 1.0, 0.0],
            [2.0, 0.0, 0.0],
            [2.0, 1.0, 0.0],
        ];
        let n = vec![[0.0, 0.0, 1.0]; 6];
        let uv = vec![
            [0.0, 1.0],
            [0.5, 1.0],
            [0.5, 0.0],
            [0.0, 0.0],
            [0.0, 1.0],
            [0.0, 0.0],
        ];
        let ix = vec![0, 1, 2, 0, 2, 3, 1, 4, 5, 1, 5, 2];
        let t = mikktspace_tangents(&p, &n, &uv, &ix).unwrap();
        assert_eq!(t.source_vertex, vec![0, 1, 2, 3, 4, 5, 1, 2]);
        assert_eq!(t.indices, vec![0, 1, 2, 0, 2, 3, 6, 4, 5, 6, 5, 7]);
        assert_eq!(t.tangents[1][3], 1.0);
        assert_eq!(t.tangents[6][3], -1.0);
    }

    #[test]
    fn the_frame_inverts_exactly() {
        let n = [0.1, 0.2, 0.9];
        let t = [0.9, -0.05, 0.0];
        for w in [1.0, -1.0] {
            for target in [[0.0, 0.0, 1.0], [0.6, 0.0, 0.8], [-0.3, 0.5, 0.81]] {
                let target = normalize(target).unwrap();
                let c = world_to_tangent(target, n, t, w).unwrap();
                let back = tangent_to_world(c, n, t, w).unwrap();
                for a in 0..3 {
                    assert!((back[a] - target[a]).abs() < 1e-12, "{back:?} {target:?}");
                }
            }
        }
        assert!(world_to_tangent([0.0, 0.0, 1.0], [0.0; 3], t, 1.0).is_none());
    }

    #[test]
    fn closest_points_and_raw_normals() {
        let q = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]];
        let (d2, w) = closest_on_triangle([0.25, 0.25, 0.5], q);
        assert!((d2 - 0.25).abs() < 1e-12 && (w[1] - 0.25).abs() < 1e-12);
        let (d2, w) = closest_on_triangle([2.0, -1.0, 0.0], q);
        assert!((d2 - 2.0).abs() < 1e-12 && w == [0.0, 1.0, 0.0]);
        let (d2, w) = closest_on_triangle([0.5, 0.5, 1.0], q);
        assert!((d2 - 1.0).abs() < 1e-12 && (w[1] - 0.5).abs() < 1e-12);

        // Two sheets 0.5 apart, facing away from each other: the facing test keeps them apart.
        let mesh = Mesh {
            vertices: vec![
                [0.0, 0.0, 0.0],
                [1.0, 0.0, 0.0],
                [0.0, 1.0, 0.0],
                [0.0, 0.0, 0.5],
                [1.0, 0.0, 0.5],
                [0.0, 1.0, 0.5],
            ],
            faces: vec![[0, 2, 1], [3, 4, 5]],
        };
        let index = SurfaceIndex::new(&mesh, 0.5).unwrap();
        let p = [0.2, 0.2, 0.1];
        assert_eq!(index.normal_near(p, [0.0, 0.0, 1.0]), Some([0.0, 0.0, 1.0]));
        assert_eq!(
            index.normal_near(p, [0.0, 0.0, -1.0]),
            Some([0.0, 0.0, -1.0])
        );
        // Out of reach (more than 2 voxels = 1.0 away).
        assert_eq!(index.normal_near([0.2, 0.2, 3.0], [0.0, 0.0, 1.0]), None);
        assert!(SurfaceIndex::new(&mesh, 0.0).is_err());
        let mut bad = mesh.clone();
        bad.vertices[4][1] = f32::INFINITY;
        assert!(SurfaceIndex::new(&bad, 0.5).is_err());
    }

    #[test]
    fn a_flat_raw_surface_bakes_the_flat_normal() {
        let (p, n, uv, ix) = square();
        let t = mikktspace_tangents(&p, &n, &uv, &ix).unwrap();
        let raw = Mesh {
            vertices: p.clone(),
            faces: vec![[0, 1, 2], [0, 2, 3]],
        };
        let index = SurfaceIndex::new(&raw, 0.25).unwrap();
        let image = bake_normal_map(
            TangentMesh {
                positions: &p,
                normals: &n,
                tangents: &t.tangents,
                uvs: &uv,
                indices: &ix,
            },
            &index,
            &BakeOptions::for_size(16),
        )
        .unwrap();
        for texel in image.texels.chunks_exact(3) {
            assert_eq!(texel, [128, 128, 255]);
        }
    }
}
