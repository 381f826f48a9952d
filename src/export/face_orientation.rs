//! Triangles re-wound so that each connected piece is consistently oriented, outward.
//!
//! The dual grid winds each quad by its edge axis, not by the side the surface faces
//! (docs/MODEL.md §6.1), so vertex normals summed as wound cancel and renderers light faces at
//! random. Upstream repairs this in its GLB export with CuMesh's `unify_face_orientations`; this
//! is the same idea on the CPU:
//! 1. two triangles sharing an edge used by exactly two triangles agree when they traverse it
//!    in opposite directions (non-manifold edges, used by three or more triangles, do not
//!    link); the lowest-numbered triangle of each connected piece keeps its winding and every
//!    other triangle follows it through the links;
//! 2. each connected piece is then flipped as a whole if its signed volume about its centroid is
//!    negative — outward for closed surfaces, a consistent tie-break for open sheets.
//!
//! Orientation only swaps two corners of a triangle; the set of triangles is unchanged.
//!
//! Parallel (rayon) and deterministic: the result does not depend on the number of threads.
//! The links come from a parallel sort of the edge uses; the pieces and each triangle's
//! parity relative to its piece's lowest triangle from a union-find that records parities,
//! run on fixed blocks of triangle indices and then merged pairwise, level by level. On an
//! orientable piece every path between two triangles gives the same parity, so the result is
//! the breadth-first propagation's whatever the merge order. A piece whose links contradict
//! each other (non-orientable, e.g. through self-intersecting hole fills) has no consistent
//! winding; it is propagated breadth-first from its lowest triangle, neighbours in index order,
//! so which of its triangles end up disagreeing is fixed too. The signed volumes are summed in
//! triangle order over fixed chunks.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use rayon::prelude::*;

use crate::mesh::Mesh;
use crate::vec3::{cross, dot};

/// Triangles per union-find block (a power of two). Fixed so that the work plan, and with it
/// the result, does not depend on the thread count.
const BLOCK_BITS: u32 = 14;
/// Triangles per chunk of the signed-volume sums (fixed for the same reason).
const VOLUME_CHUNK: usize = 1 << 16;

/// The mesh's triangles, each possibly re-wound (two corners swapped). Indices must be valid.
pub fn faces_wound_outward(mesh: &Mesh) -> Vec<[u32; 3]> {
    let faces = &mesh.faces;
    let links = EdgeLinks::build(faces);
    let (root, mut flip, contradicted) = pieces_and_parities(&links, faces.len());
    if !contradicted.is_empty() {
        let mut seen = vec![false; faces.len()];
        for &start in &contradicted {
            propagate_breadth_first(&links, start, &mut flip, &mut seen);
        }
    }
    let negative = negative_pieces(mesh, &root, &flip);
    faces
        .par_iter()
        .zip(flip.par_iter().zip(root.par_iter()))
        .map(|(&f, (&flip, &root))| {
            if flip ^ negative.contains(root) {
                [f[0], f[2], f[1]]
            } else {
                f
            }
        })
        .collect()
}

/// For every triangle, its neighbour across each of its three edges (when that edge is used by
/// exactly two distinct triangles) and whether the neighbour traverses the edge in the same
/// direction. Entry `3·f + k` is edge `k` (corners `k`, `k + 1`) of triangle `f`:
/// 0 = no link, else `(g << 1 | same) + 1`.
struct EdgeLinks {
    slots: Vec<u64>,
}

impl EdgeLinks {
    fn build(faces: &[[u32; 3]]) -> Self {
        let uses = sorted_edge_uses(faces);
        let slots: Vec<AtomicU64> = (0..faces.len() * 3).map(|_| AtomicU64::new(0)).collect();
        let edge = |i: usize| uses.get(i).map(|u| u.0);
        (0..uses.len()).into_par_iter().for_each(|i| {
            // Only the first use of an edge used exactly twice writes its pair.
            let key = uses[i].0;
            if (i > 0 && edge(i - 1) == Some(key))
                || edge(i + 1) != Some(key)
                || edge(i + 2) == Some(key)
            {
                return;
            }
            let (s, t) = (uses[i].1 >> 1, uses[i + 1].1 >> 1);
            let (f, g) = (s / 3, t / 3);
            if f == g {
                return;
            }
            let same = (uses[i].1 & 1) == (uses[i + 1].1 & 1);
            let link = |to: u64| (to << 1 | u64::from(same)) + 1;
            slots[s as usize].store(link(g), Ordering::Relaxed);
            slots[t as usize].store(link(f), Ordering::Relaxed);
        });
        Self {
            slots: slots.into_iter().map(AtomicU64::into_inner).collect(),
        }
    }

    /// Triangle `f`'s links `(neighbour, same direction)`, neighbours in increasing order.
    fn of(&self, f: usize) -> impl Iterator<Item = (usize, bool)> {
        let mut links: [Option<(usize, bool)>; 3] = std::array::from_fn(|k| {
            let s = self.slots[3 * f + k];
            (s != 0).then(|| (((s - 1) >> 1) as usize, (s - 1) & 1 == 1))
        });
        links.sort_unstable_by_key(|l| l.map_or((usize::MAX, true), |l| l));
        links.into_iter().flatten()
    }
}

/// Every triangle's edge uses as `(low vertex << 32 | high vertex, slot << 1 | traversed low →
/// high)`, sorted, so that each edge's uses are adjacent; a triangle's degenerate edge
/// (a == b) is no use. Sorted by buckets: the uses are scattered into one bucket per low
/// vertex (counted, then placed with atomic cursors in any order), then each small bucket is
/// sorted; the pairs are distinct, so the result is the one total order whatever the
/// scatter's order.
fn sorted_edge_uses(faces: &[[u32; 3]]) -> Vec<(u64, u64)> {
    let vertices = faces
        .par_iter()
        .map(|f| f.iter().copied().max().unwrap_or(0) as usize + 1)
        .max()
        .unwrap_or(0);
    let edges = |f: usize, tri: [u32; 3]| {
        (0..3).filter_map(move |k| {
            let (a, b) = (tri[k], tri[(k + 1) % 3]);
            (a != b).then(|| {
                let edge = u64::from(a.min(b)) << 32 | u64::from(a.max(b));
                (edge, ((f * 3 + k) as u64) << 1 | u64::from(a < b))
            })
        })
    };
    let counts: Vec<AtomicUsize> = (0..vertices).map(|_| AtomicUsize::new(0)).collect();
    faces.par_iter().enumerate().for_each(|(f, tri)| {
        for (edge, _) in edges(f, *tri) {
            counts[(edge >> 32) as usize].fetch_add(1, Ordering::Relaxed);
        }
    });
    // Bucket starts; `cursor` then counts up through each bucket as uses are placed.
    let mut starts = Vec::with_capacity(vertices + 1);
    let mut total = 0usize;
    for c in &counts {
        starts.push(total);
        total += c.load(Ordering::Relaxed);
    }
    starts.push(total);
    let cursor: Vec<AtomicUsize> = starts[..vertices]
        .iter()
        .map(|&s| AtomicUsize::new(s))
        .collect();
    drop(counts);
    let keys: Vec<AtomicU64> = (0..total).map(|_| AtomicU64::new(0)).collect();
    let values: Vec<AtomicU64> = (0..total).map(|_| AtomicU64::new(0)).collect();
    faces.par_iter().enumerate().for_each(|(f, tri)| {
        for (edge, value) in edges(f, *tri) {
            let at = cursor[(edge >> 32) as usize].fetch_add(1, Ordering::Relaxed);
            keys[at].store(edge, Ordering::Relaxed);
            values[at].store(value, Ordering::Relaxed);
        }
    });
    drop(cursor);
    let mut uses: Vec<(u64, u64)> = keys
        .into_par_iter()
        .zip(values.into_par_iter())
        .map(|(k, v)| (k.into_inner(), v.into_inner()))
        .collect();
    // Buckets of a fixed range of low vertices per task: each sorted on its own.
    const VERTICES_PER_TASK: usize = 1 << 12;
    let mut chunks: Vec<(usize, &mut [(u64, u64)])> = Vec::new();
    let mut rest = uses.as_mut_slice();
    for v0 in (0..vertices).step_by(VERTICES_PER_TASK) {
        let v1 = (v0 + VERTICES_PER_TASK).min(vertices);
        let (head, tail) = rest.split_at_mut(starts[v1] - starts[v0]);
        chunks.push((v0, head));
        rest = tail;
    }
    chunks.into_par_iter().for_each(|(v0, chunk)| {
        let base = starts[v0];
        let v1 = (v0 + VERTICES_PER_TASK).min(vertices);
        for v in v0..v1 {
            let (a, b) = (starts[v] - base, starts[v + 1] - base);
            chunk[a..b].sort_unstable();
        }
    });
    uses
}

/// A union-find over a range of triangles that tracks, for every triangle, whether its winding
/// must be flipped relative to its parent's. Each set's root is its lowest triangle (the larger
/// root always goes under the smaller), so merging sets in any order leaves the same roots.
struct ParityForest<'a> {
    /// Index of the first triangle of `parent` / `parity`.
    base: usize,
    parent: &'a mut [u32],
    parity: &'a mut [bool],
}

impl ParityForest<'_> {
    /// Root of `f` and `f`'s parity relative to it, halving the path on the way.
    fn find(&mut self, f: usize) -> (usize, bool) {
        let mut x = f - self.base;
        let mut parity = false;
        loop {
            let p = self.parent[x] as usize - self.base;
            if p == x {
                return (x + self.base, parity);
            }
            let gp = self.parent[p] as usize - self.base;
            if gp != p {
                // x now skips p: its parity to gp is the sum of the two steps.
                self.parity[x] ^= self.parity[p];
                self.parent[x] = self.parent[p];
            }
            parity ^= self.parity[x];
            x = self.parent[x] as usize - self.base;
        }
    }

    /// Joins the sets of `f` and `g` so that `flip(g) = flip(f) ^ same`; `false` when they are
    /// already joined with the opposite relation (the piece is not orientable).
    fn join(&mut self, f: usize, g: usize, same: bool) -> bool {
        let (rf, pf) = self.find(f);
        let (rg, pg) = self.find(g);
        let relation = pf ^ pg ^ same;
        if rf == rg {
            return !relation;
        }
        let (low, high) = (rf.min(rg), rf.max(rg));
        self.parent[high - self.base] = low as u32;
        self.parity[high - self.base] = relation;
        true
    }
}

/// Level of the merge at which a link between triangles `f` and `g` is joined: 0 within one
/// block, else 1 + the highest bit in which their block numbers differ.
fn merge_level(f: usize, g: usize) -> u32 {
    let differ = (f >> BLOCK_BITS) ^ (g >> BLOCK_BITS);
    if differ == 0 {
        0
    } else {
        usize::BITS - differ.leading_zeros()
    }
}

/// For every triangle, its piece (the piece's lowest triangle) and whether it must be flipped
/// to agree with that triangle; and the lowest triangle of each piece whose links contradict
/// each other, in increasing order.
fn pieces_and_parities(links: &EdgeLinks, count: usize) -> (Vec<u32>, Vec<bool>, Vec<usize>) {
    let mut parent: Vec<u32> = (0..count as u32).collect();
    let mut parity = vec![false; count];
    // Links by merge level, each once (from its lower triangle), in triangle order.
    let levels = if count <= 1 << BLOCK_BITS {
        1
    } else {
        1 + merge_level(0, count - 1) as usize
    };
    let mut by_level: Vec<Vec<(u32, u32, bool)>> = vec![Vec::new(); levels];
    let tagged: Vec<(u32, u32, u32, bool)> = (0..count)
        .into_par_iter()
        .flat_map_iter(|f| {
            links
                .of(f)
                .filter(move |&(g, _)| g > f)
                .map(move |(g, same)| (merge_level(f, g), f as u32, g as u32, same))
        })
        .collect();
    for (level, f, g, same) in tagged {
        by_level[level as usize].push((f, g, same));
    }
    let mut contradictions: Vec<u32> = Vec::new();
    for (level, level_links) in by_level.iter().enumerate() {
        // At this level, groups of 2^(level − 1) blocks (one block at level 0) merge their two
        // halves; the groups are disjoint, so they run in parallel.
        let group = 1usize << (BLOCK_BITS as usize + level);
        let mut groups: Vec<&[(u32, u32, bool)]> = Vec::new();
        let mut rest = level_links.as_slice();
        for g in 0..count.div_ceil(group) {
            let end = rest.partition_point(|l| (l.0 as usize) < (g + 1) * group);
            let (head, tail) = rest.split_at(end);
            groups.push(head);
            rest = tail;
        }
        let found: Vec<u32> = parent
            .par_chunks_mut(group)
            .zip(parity.par_chunks_mut(group))
            .zip(groups.into_par_iter())
            .enumerate()
            .flat_map_iter(|(g, ((parent, parity), group_links))| {
                let mut forest = ParityForest {
                    base: g * group,
                    parent,
                    parity,
                };
                group_links
                    .iter()
                    .filter(|&&(f, h, same)| !forest.join(f as usize, h as usize, same))
                    .map(|l| l.0)
                    .collect::<Vec<_>>()
            })
            .collect();
        contradictions.extend(found);
    }
    // Every triangle's root and parity, reading the final forest (no more compression).
    let (root, flip): (Vec<u32>, Vec<bool>) = (0..count)
        .into_par_iter()
        .map(|f| {
            let (mut x, mut p) = (f, false);
            while parent[x] as usize != x {
                p ^= parity[x];
                x = parent[x] as usize;
            }
            (x as u32, p)
        })
        .unzip();
    let mut contradicted: Vec<usize> = contradictions
        .into_iter()
        .map(|f| root[f as usize] as usize)
        .collect();
    contradicted.sort_unstable();
    contradicted.dedup();
    (root, flip, contradicted)
}

/// Re-derives the flips of `start`'s piece breadth-first from `start` (kept as is), each newly
/// reached neighbour flipped when it disagrees; links that close a contradictory cycle are
/// left disagreeing.
fn propagate_breadth_first(links: &EdgeLinks, start: usize, flip: &mut [bool], seen: &mut [bool]) {
    seen[start] = true;
    let mut queue = VecDeque::from([start]);
    flip[start] = false;
    while let Some(f) = queue.pop_front() {
        for (g, same_direction) in links.of(f) {
            if !seen[g] {
                seen[g] = true;
                // Same direction along the shared edge = opposite orientations.
                flip[g] = flip[f] ^ same_direction;
                queue.push_back(g);
            }
        }
    }
}

/// The pieces (by root) whose signed volume about their centroid, as currently oriented, is
/// negative. Sums run in triangle order within fixed chunks, then over chunks in order.
fn negative_pieces(mesh: &Mesh, root: &[u32], flip: &[bool]) -> PieceSet {
    let faces = &mesh.faces;
    let point = |v: u32| mesh.vertices[v as usize].map(f64::from);
    // Per piece: sum of corner positions and corner count.
    let sums = per_piece_sums(root, |f| {
        let mut s = [0.0f64; 4];
        for v in faces[f] {
            let p = point(v);
            for k in 0..3 {
                s[k] += p[k];
            }
        }
        s[3] = 3.0;
        s
    });
    let centroids: Vec<(u32, [f64; 3])> = sums
        .into_iter()
        .map(|(r, s)| (r, [s[0] / s[3], s[1] / s[3], s[2] / s[3]]))
        .collect();
    let centroid_of = |r: u32| {
        let i = centroids.partition_point(|c| c.0 < r);
        centroids[i].1
    };
    let volumes = per_piece_sums(root, |f| {
        let c = centroid_of(root[f]);
        let [a, b, d] = faces[f].map(|v| {
            let p = point(v);
            [p[0] - c[0], p[1] - c[1], p[2] - c[2]]
        });
        let v = dot(a, cross(b, d));
        [if flip[f] { -v } else { v }, 0.0, 0.0, 0.0]
    });
    PieceSet(
        volumes
            .into_iter()
            .filter(|(_, v)| v[0] < 0.0)
            .map(|(r, _)| r)
            .collect(),
    )
}

/// Sums `term` over each piece's triangles: in triangle order within fixed chunks, then the
/// chunks' partial sums in chunk order. Pieces in increasing root order.
fn per_piece_sums(root: &[u32], term: impl Fn(usize) -> [f64; 4] + Sync) -> Vec<(u32, [f64; 4])> {
    let mut partial: Vec<(u32, [f64; 4])> = (0..root.len().div_ceil(VOLUME_CHUNK))
        .into_par_iter()
        .flat_map_iter(|chunk| {
            let range = chunk * VOLUME_CHUNK..((chunk + 1) * VOLUME_CHUNK).min(root.len());
            // Pieces in order of first appearance in the chunk.
            let mut sums: Vec<(u32, [f64; 4])> = Vec::new();
            let mut slot: HashMap<u32, usize> = HashMap::new();
            let mut last = usize::MAX;
            for f in range {
                let t = term(f);
                if last >= sums.len() || sums[last].0 != root[f] {
                    last = *slot.entry(root[f]).or_insert_with(|| {
                        sums.push((root[f], [0.0; 4]));
                        sums.len() - 1
                    });
                }
                for (sum, t) in sums[last].1.iter_mut().zip(t) {
                    *sum += t;
                }
            }
            sums.sort_by_key(|s| s.0);
            sums
        })
        .collect();
    // Stable: each piece's partial sums stay in chunk order.
    partial.sort_by_key(|s| s.0);
    let mut out: Vec<(u32, [f64; 4])> = Vec::new();
    for (r, s) in partial {
        match out.last_mut() {
            Some(last) if last.0 == r => {
                for (sum, s) in last.1.iter_mut().zip(s) {
                    *sum += s;
                }
            }
            _ => out.push((r, s)),
        }
    }
    out
}

/// Sorted piece roots.
struct PieceSet(Vec<u32>);

impl PieceSet {
    fn contains(&self, root: u32) -> bool {
        self.0.binary_search(&root).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A closed octahedron around the origin; `[x, y, z]` per octant is outward in the octants
    /// with an even number of negative axes and inward in the others (a mirror reverses the
    /// winding), so half of its faces start inward.
    fn scrambled_octahedron(offset: [f32; 3]) -> Mesh {
        let mut vertices = vec![
            [1.0, 0.0, 0.0],
            [-1.0, 0.0, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, -1.0, 0.0],
            [0.0, 0.0, 1.0],
            [0.0, 0.0, -1.0],
        ];
        for v in &mut vertices {
            for k in 0..3 {
                v[k] += offset[k];
            }
        }
        let mut faces = Vec::new();
        for x in [0u32, 1] {
            for y in [2u32, 3] {
                for z in [4u32, 5] {
                    faces.push([x, y, z]);
                }
            }
        }
        Mesh::new(vertices, faces).expect("valid")
    }

    #[test]
    fn every_face_ends_up_outward_and_vertex_normals_stop_cancelling() {
        for offset in [[0.0; 3], [3.0, -2.0, 7.0]] {
            let mesh = scrambled_octahedron(offset);
            let faces = faces_wound_outward(&mesh);
            let mut flipped = 0;
            for (old, new) in mesh.faces.iter().zip(&faces) {
                let p = new.map(|v| {
                    let p = mesh.vertices[v as usize];
                    [0, 1, 2].map(|k| f64::from(p[k] - offset[k]))
                });
                let n = cross(
                    [0, 1, 2].map(|k| p[1][k] - p[0][k]),
                    [0, 1, 2].map(|k| p[2][k] - p[0][k]),
                );
                assert!(dot(n, p[0]) > 0.0, "{new:?} faces inward");
                flipped += usize::from(old != new);
            }
            assert_eq!(flipped, 4);
            let oriented = Mesh {
                vertices: mesh.vertices.clone(),
                faces,
            };
            for (v, n) in oriented
                .vertices
                .iter()
                .zip(oriented.vertex_normals().unwrap())
            {
                let d: f32 = (0..3).map(|k| (v[k] - offset[k]) * n[k]).sum();
                assert!(d > 0.999, "vertex {v:?} normal {n:?}");
            }
        }
    }

    /// The breadth-first orientation in one thread, as this module did it before it ran in
    /// parallel: the reference the parallel result must reproduce.
    fn breadth_first_reference(mesh: &Mesh) -> Vec<[u32; 3]> {
        let faces = &mesh.faces;
        let links = reference_links(faces);
        let mut flip = vec![false; faces.len()];
        let mut seen = vec![false; faces.len()];
        let mut piece = Vec::new();
        let mut queue = VecDeque::new();
        for start in 0..faces.len() {
            if seen[start] {
                continue;
            }
            seen[start] = true;
            queue.push_back(start);
            piece.clear();
            while let Some(f) = queue.pop_front() {
                piece.push(f);
                for &(g, same) in &links[f] {
                    let g = g as usize;
                    if !seen[g] {
                        seen[g] = true;
                        flip[g] = flip[f] ^ same;
                        queue.push_back(g);
                    }
                }
            }
            let corners = piece.len() as f64 * 3.0;
            let mut c = [0.0f64; 3];
            for &f in &piece {
                for &v in &faces[f] {
                    for (c, p) in c.iter_mut().zip(mesh.vertices[v as usize]) {
                        *c += f64::from(p) / corners;
                    }
                }
            }
            let volume: f64 = piece
                .iter()
                .map(|&f| {
                    let [a, b, d] = faces[f].map(|v| {
                        let p = mesh.vertices[v as usize];
                        [0, 1, 2].map(|k| f64::from(p[k]) - c[k])
                    });
                    let v = dot(a, cross(b, d));
                    if flip[f] {
                        -v
                    } else {
                        v
                    }
                })
                .sum();
            if volume < 0.0 {
                for &f in &piece {
                    flip[f] = !flip[f];
                }
            }
        }
        faces
            .iter()
            .zip(&flip)
            .map(|(&f, &flip)| if flip { [f[0], f[2], f[1]] } else { f })
            .collect()
    }

    /// Every triangle's `(neighbour, same direction)` links in neighbour order, from one sort
    /// of all edge uses, one thread.
    fn reference_links(faces: &[[u32; 3]]) -> Vec<Vec<(u32, bool)>> {
        let mut uses: Vec<(u32, u32, u32, bool)> = Vec::new();
        for (f, tri) in faces.iter().enumerate() {
            for k in 0..3 {
                let (a, b) = (tri[k], tri[(k + 1) % 3]);
                if a != b {
                    uses.push((a.min(b), a.max(b), f as u32, a < b));
                }
            }
        }
        uses.sort_unstable();
        let mut links = vec![Vec::new(); faces.len()];
        let mut i = 0;
        while i < uses.len() {
            let mut j = i + 1;
            while j < uses.len() && (uses[j].0, uses[j].1) == (uses[i].0, uses[i].1) {
                j += 1;
            }
            if j - i == 2 && uses[i].2 != uses[i + 1].2 {
                let (f, g) = (uses[i].2, uses[i + 1].2);
                let same = uses[i].3 == uses[i + 1].3;
                links[f as usize].push((g, same));
                links[g as usize].push((f, same));
            }
            i = j;
        }
        for l in &mut links {
            l.sort_unstable();
        }
        links
    }

    /// Many UV spheres of `rings × rings` quads at scattered centres, each triangle's winding
    /// scrambled and the triangle order shuffled (so pieces span many union-find blocks), plus
    /// a Möbius strip (non-orientable) and an open, curved sheet.
    fn scrambled_scene(spheres: usize, rings: u32) -> Mesh {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut vertices: Vec<[f32; 3]> = Vec::new();
        let mut faces: Vec<[u32; 3]> = Vec::new();
        for s in 0..spheres {
            let centre = [s as f32 * 3.0, (s % 7) as f32, (s % 5) as f32 * 2.0];
            let base = vertices.len() as u32;
            let id = |i: u32, j: u32| base + j * rings + i % rings;
            // Rings j = 0..=rings from pole to pole; the poles are repeated ring vertices
            // welded to one index each.
            for j in 0..=rings {
                let lat = std::f32::consts::PI * j as f32 / rings as f32;
                for i in 0..rings {
                    let lon = std::f32::consts::TAU * i as f32 / rings as f32;
                    vertices.push([
                        centre[0] + lat.sin() * lon.cos(),
                        centre[1] + lat.sin() * lon.sin(),
                        centre[2] + lat.cos(),
                    ]);
                }
            }
            let weld = |v: u32| {
                let j = (v - base) / rings;
                if j == 0 {
                    base
                } else if j == rings {
                    base + rings * rings
                } else {
                    v
                }
            };
            for j in 0..rings {
                for i in 0..rings {
                    let q = [id(i, j), id(i + 1, j), id(i + 1, j + 1), id(i, j + 1)].map(weld);
                    for t in [[q[0], q[1], q[2]], [q[0], q[2], q[3]]] {
                        if t[0] != t[1] && t[1] != t[2] && t[0] != t[2] {
                            faces.push(t);
                        }
                    }
                }
            }
        }
        // A Möbius strip: a band of quads whose ends join with a half twist.
        let n = 40u32;
        let base = vertices.len() as u32;
        for i in 0..n {
            let a = std::f32::consts::TAU * i as f32 / n as f32;
            for w in [-0.3f32, 0.3] {
                let r = 5.0 + w * (a / 2.0).cos();
                vertices.push([r * a.cos(), r * a.sin() - 20.0, w * (a / 2.0).sin()]);
            }
        }
        for i in 0..n {
            let (a0, a1) = (base + 2 * i, base + 2 * i + 1);
            let (b0, b1) = if i + 1 < n {
                (base + 2 * i + 2, base + 2 * i + 3)
            } else {
                (base + 1, base)
            };
            faces.push([a0, b0, b1]);
            faces.push([a0, b1, a1]);
        }
        // An open curved sheet (a flat one's signed volume is rounding noise).
        let base = vertices.len() as u32;
        for j in 0..6u32 {
            for i in 0..6u32 {
                let (x, y) = (i as f32, j as f32);
                vertices.push([x, y + 30.0, 0.1 * x * x - 0.05 * y * y]);
            }
        }
        for j in 0..5 {
            for i in 0..5 {
                let v = |i: u32, j: u32| base + j * 6 + i;
                faces.push([v(i, j), v(i + 1, j), v(i + 1, j + 1)]);
                faces.push([v(i, j), v(i + 1, j + 1), v(i, j + 1)]);
            }
        }
        for f in &mut faces {
            if next() & 1 == 1 {
                f.swap(1, 2);
            }
        }
        for i in (1..faces.len()).rev() {
            faces.swap(i, (next() % (i as u64 + 1)) as usize);
        }
        Mesh::new(vertices, faces).expect("valid")
    }

    #[test]
    fn the_parallel_result_is_the_breadth_first_one_for_any_thread_count() {
        // ≈ 4 blocks' worth of triangles, shuffled so every piece crosses blocks.
        let mesh = scrambled_scene(40, 40);
        assert!(mesh.faces.len() > 3 << BLOCK_BITS, "{}", mesh.faces.len());
        // The Möbius strip is the one piece whose links contradict each other.
        let (_, _, contradicted) =
            pieces_and_parities(&EdgeLinks::build(&mesh.faces), mesh.faces.len());
        assert_eq!(contradicted.len(), 1);
        let expected = breadth_first_reference(&mesh);
        for threads in [1, 2, 5] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            let got = pool.install(|| faces_wound_outward(&mesh));
            assert!(
                got == expected,
                "{threads} threads differ from breadth-first"
            );
        }
        // The spheres all end up outward.
        let outward = expected
            .iter()
            .filter(|f| {
                let p = f.map(|v| mesh.vertices[v as usize].map(f64::from));
                let n = cross(
                    [0, 1, 2].map(|k| p[1][k] - p[0][k]),
                    [0, 1, 2].map(|k| p[2][k] - p[0][k]),
                );
                let s = (p[0][0] / 3.0).round() as usize;
                let c = [s as f64 * 3.0, (s % 7) as f64, (s % 5) as f64 * 2.0];
                p[0][1] > -10.0 && p[0][1] < 25.0 && dot(n, [0, 1, 2].map(|k| p[0][k] - c[k])) > 0.0
            })
            .count();
        assert_eq!(outward, 40 * (40 * 40 * 2 - 2 * 40));
    }
}
