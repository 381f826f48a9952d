//! Texture baking: every texel a UV triangle covers gets the voxel attributes of its 3D surface
//! point, sampled trilinearly exactly as the vertex colours are ([`VoxelAttributes`],
//! docs/MODEL.md §6.4), quantised to 8 bits like the writers quantise vertex colours.
//!
//! * Texel `(x, y)` has its centre at `uv = ((x + ½) / size, (y + ½) / size)`; row 0 is `v = 0`,
//!   the first image row, as glTF's texture coordinates have it.
//! * Covered texels: centre inside a triangle (barycentric point). Border texels: centre
//!   outside every triangle but within [`BORDER_RADIUS`] texels of one, so that bilinear
//!   filtering anywhere on a triangle reads only baked texels; they take the nearest
//!   triangle's attributes, extrapolated along its plane.
//! * Dilation: empty texels next to filled ones take the rounded mean of their filled
//!   neighbours, ring after ring, `dilation_texels` times, so the gutters between charts hold
//!   the charts' own colours and mip-mapping does not bleed the background in; what stays empty
//!   gets the mean of the covered texels.
//! * Work is split into bands of rows (rayon); each band visits its triangles in index order
//!   and the dilation applies each ring at once, so the result does not depend on threads.

use rayon::prelude::*;

use super::attributes::VoxelAttributes;
use super::error::{MeshError, Result};

/// Texels whose centre is within this distance (in texels) of a triangle are baked from it,
/// even when outside: bilinear lookups at a triangle's edge read texel centres up to √2 away.
pub const BORDER_RADIUS: f64 = 1.5;

/// Largest texture side accepted.
pub const MAX_TEXTURE_SIZE: u32 = 16384;

/// Rows per parallel work item.
const BAND_ROWS: u32 = 16;

/// Texel states of [`BakedImage::coverage`].
pub const EMPTY: u8 = 0;
pub const COVERED: u8 = 1;
pub const BORDER: u8 = 2;
pub const DILATED: u8 = 3;
pub const FILLED: u8 = 4;

/// What to bake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BakeOptions {
    /// Width and height of the image, in texels.
    pub texture_size: u32,
    /// Rings of texels filled outward from the charts' borders.
    pub dilation_texels: u32,
}

impl BakeOptions {
    /// `dilation_texels` = size / 128 (16 at 2048²), at least 4: a gutter texel at mip level
    /// `k` averages `2^k` base texels, so the gutters stay chart-coloured down to mip level
    /// log2(size / 128), a 128² image.
    pub fn for_size(texture_size: u32) -> Self {
        Self {
            texture_size,
            dilation_texels: (texture_size / 128).max(4),
        }
    }
}

/// A baked image of `channels` 8-bit values per texel.
#[derive(Clone, Debug, PartialEq)]
pub struct BakedImage {
    pub size: u32,
    pub channels: usize,
    /// Row-major `[size, size, channels]`, row 0 at `v = 0`.
    pub texels: Vec<u8>,
    /// One state per texel: [`EMPTY`] (none left after baking), [`COVERED`], [`BORDER`],
    /// [`DILATED`] or [`FILLED`] (the covered mean).
    pub coverage: Vec<u8>,
    /// Per channel, the smallest and largest value over the covered texels (0 and 0 when none).
    pub covered_min: Vec<u8>,
    pub covered_max: Vec<u8>,
}

impl BakedImage {
    /// Number of texels in `state`.
    pub fn count(&self, state: u8) -> usize {
        self.coverage.iter().filter(|&&s| s == state).count()
    }

    /// Bilinear lookup at `uv` (texel centres at `(i + ½) / size`, clamped at the image edge),
    /// values in [0, 1]; `out` holds `channels` values.
    pub fn sample_bilinear(&self, uv: [f32; 2], out: &mut [f32]) {
        let s = self.size as f32;
        let x = (uv[0] * s - 0.5).clamp(0.0, s - 1.0);
        let y = (uv[1] * s - 0.5).clamp(0.0, s - 1.0);
        let (x0, y0) = (x.floor() as u32, y.floor() as u32);
        let (x1, y1) = ((x0 + 1).min(self.size - 1), (y0 + 1).min(self.size - 1));
        let (fx, fy) = (x - x0 as f32, y - y0 as f32);
        let c = self.channels;
        let at = |x: u32, y: u32, k: usize| {
            f32::from(self.texels[(y as usize * self.size as usize + x as usize) * c + k])
        };
        for (k, o) in out.iter_mut().enumerate().take(c) {
            let top = at(x0, y0, k) * (1.0 - fx) + at(x1, y0, k) * fx;
            let bottom = at(x0, y1, k) * (1.0 - fx) + at(x1, y1, k) * fx;
            *o = (top * (1.0 - fy) + bottom * fy) / 255.0;
        }
    }
}

/// Clamps to [0, 1] and rounds to the nearest 8-bit level (NaN → 0): the writers' vertex-colour
/// quantisation.
#[inline]
pub fn unit_to_u8(v: f32) -> u8 {
    if v.is_nan() {
        return 0;
    }
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// Bakes `attributes` over the UV triangles `indices` (three per triangle) whose corners have
/// 3D `positions` (the attribute volume's frame) and texture coordinates `uvs` (in [0, 1]²).
/// Every channel of `attributes` becomes one 8-bit channel of the image.
pub fn bake(
    positions: &[[f32; 3]],
    uvs: &[[f32; 2]],
    indices: &[u32],
    attributes: &VoxelAttributes,
    opts: &BakeOptions,
) -> Result<BakedImage> {
    bake_with(
        positions,
        uvs,
        indices,
        attributes.channels(),
        opts,
        &|_, _, point, values| {
            attributes
                .sample_into(point, values)
                .expect("one value per channel")
        },
    )
}

/// What [`bake_with`] calls for every baked texel: `(triangle, barycentric weights, 3D point,
/// values)`; it writes one value in [0, 1] per channel into `values` (quantised like
/// [`unit_to_u8`]). The weights may be slightly negative on border texels (extrapolated along
/// the triangle's plane); the point is the weights applied to the triangle's corners.
pub type TexelSampler<'a> = dyn Fn(u32, [f64; 3], [f32; 3], &mut [f32]) + Sync + 'a;

/// [`bake`] with any per-texel function of `channels` values instead of the voxel lookup (the
/// normal map bakes surface normals this way): same coverage, border texels, dilation and
/// determinism.
pub fn bake_with(
    positions: &[[f32; 3]],
    uvs: &[[f32; 2]],
    indices: &[u32],
    channels: usize,
    opts: &BakeOptions,
    sample: &TexelSampler<'_>,
) -> Result<BakedImage> {
    let size = opts.texture_size;
    if size == 0 || size > MAX_TEXTURE_SIZE {
        return Err(MeshError::BadParameter {
            name: "texture_size",
            value: f64::from(size),
        });
    }
    if channels == 0 {
        return Err(MeshError::BadParameter {
            name: "channels",
            value: 0.0,
        });
    }
    if positions.len() != uvs.len() {
        return Err(MeshError::RowCountMismatch {
            what: "texture coordinates",
            rows: uvs.len(),
            expected: positions.len(),
        });
    }
    if !indices.len().is_multiple_of(3) {
        return Err(MeshError::BadLength {
            what: "triangle indices",
            len: indices.len(),
            width: 3,
        });
    }
    if let Some((n, &i)) = indices
        .iter()
        .enumerate()
        .find(|(_, &i)| i as usize >= positions.len())
    {
        return Err(MeshError::FaceIndexOutOfRange {
            face: n / 3,
            index: i,
            vertices: positions.len(),
        });
    }
    if let Some(&bad) = uvs.iter().flatten().find(|v| !v.is_finite()) {
        return Err(MeshError::BadParameter {
            name: "texture coordinate",
            value: f64::from(bad),
        });
    }
    let triangles = triangles_in_texels(uvs, indices, size);
    let bands = bin_by_band(&triangles, size);
    let c = channels;
    let width = size as usize;
    let mut texels = vec![0u8; width * width * c];
    let mut coverage = vec![EMPTY; width * width];
    let band_len = BAND_ROWS as usize * width;
    texels
        .par_chunks_mut(band_len * c)
        .zip(coverage.par_chunks_mut(band_len))
        .enumerate()
        .for_each(|(band, (texels, coverage))| {
            bake_band(
                band as u32 * BAND_ROWS,
                size,
                &bands[band],
                &triangles,
                positions,
                indices,
                c,
                sample,
                texels,
                coverage,
            )
        });
    let mut covered_min = vec![u8::MAX; c];
    let mut covered_max = vec![0u8; c];
    let mut covered_sum = vec![0u64; c];
    let mut covered = 0u64;
    for (t, &s) in texels.chunks_exact(c).zip(&coverage) {
        if s == COVERED {
            covered += 1;
            for k in 0..c {
                covered_min[k] = covered_min[k].min(t[k]);
                covered_max[k] = covered_max[k].max(t[k]);
                covered_sum[k] += u64::from(t[k]);
            }
        }
    }
    if covered == 0 {
        covered_min.fill(0);
    }
    dilate(&mut texels, &mut coverage, size, c, opts.dilation_texels);
    // Beyond the dilated rings: the mean covered colour, so the smallest mips stay in tone.
    let mean: Vec<u8> = covered_sum
        .iter()
        .map(|&s| (s as f64 / covered.max(1) as f64).round() as u8)
        .collect();
    texels
        .par_chunks_mut(c)
        .zip(coverage.par_iter_mut())
        .filter(|(_, s)| **s == EMPTY)
        .for_each(|(t, s)| {
            t.copy_from_slice(&mean);
            *s = FILLED;
        });
    Ok(BakedImage {
        size,
        channels: c,
        texels,
        coverage,
        covered_min,
        covered_max,
    })
}

/// One triangle in texel units (`uv · size`): corners and the texel rows it may reach.
struct TexelTriangle {
    corners: [[f64; 2]; 3],
    rows: (u32, u32),
    cols: (u32, u32),
}

fn triangles_in_texels(uvs: &[[f32; 2]], indices: &[u32], size: u32) -> Vec<Option<TexelTriangle>> {
    let s = f64::from(size);
    let last = f64::from(size - 1);
    indices
        .par_chunks_exact(3)
        .map(|t| {
            let corners = [0, 1, 2].map(|k| uvs[t[k] as usize].map(|v| f64::from(v) * s));
            let lo = |a: usize| corners.iter().map(|p| p[a]).fold(f64::INFINITY, f64::min);
            let hi = |a: usize| {
                corners
                    .iter()
                    .map(|p| p[a])
                    .fold(f64::NEG_INFINITY, f64::max)
            };
            // Texel centres i + ½ within BORDER_RADIUS of the bounding box.
            let first = |a: usize| (lo(a) - BORDER_RADIUS - 0.5).ceil();
            let end = |a: usize| (hi(a) + BORDER_RADIUS - 0.5).floor();
            let (x0, x1, y0, y1) = (first(0), end(0), first(1), end(1));
            if x1 < 0.0 || y1 < 0.0 || x0 > last || y0 > last {
                return None;
            }
            Some(TexelTriangle {
                corners,
                cols: (x0.max(0.0) as u32, x1.min(last) as u32),
                rows: (y0.max(0.0) as u32, y1.min(last) as u32),
            })
        })
        .collect()
}

/// Triangle numbers per band of [`BAND_ROWS`] rows, ascending.
fn bin_by_band(triangles: &[Option<TexelTriangle>], size: u32) -> Vec<Vec<u32>> {
    let mut bands = vec![Vec::new(); size.div_ceil(BAND_ROWS) as usize];
    for (n, t) in triangles.iter().enumerate() {
        if let Some(t) = t {
            for band in t.rows.0 / BAND_ROWS..=t.rows.1 / BAND_ROWS {
                bands[band as usize].push(n as u32);
            }
        }
    }
    bands
}

/// Rasterises and samples one band of rows starting at `row0`.
#[allow(clippy::too_many_arguments)]
fn bake_band(
    row0: u32,
    size: u32,
    band: &[u32],
    triangles: &[Option<TexelTriangle>],
    positions: &[[f32; 3]],
    indices: &[u32],
    c: usize,
    sample: &TexelSampler<'_>,
    texels: &mut [u8],
    coverage: &mut [u8],
) {
    let width = size as usize;
    let rows = (coverage.len() / width) as u32;
    let row_end = row0 + rows - 1;
    // Per texel: the owning triangle, its barycentric weights and the distance to it.
    let mut owner = vec![u32::MAX; coverage.len()];
    let mut weights = vec![[0f64; 3]; coverage.len()];
    let mut distance = vec![f64::INFINITY; coverage.len()];
    for &n in band {
        let Some(t) = &triangles[n as usize] else {
            continue;
        };
        let (y_lo, y_hi) = (t.rows.0.max(row0), t.rows.1.min(row_end));
        if y_lo > y_hi {
            continue;
        }
        let geometry = TriangleGeometry::new(t.corners);
        for y in y_lo..=y_hi {
            let row = (y - row0) as usize * width;
            for x in t.cols.0..=t.cols.1 {
                let i = row + x as usize;
                if distance[i] == 0.0 {
                    continue;
                }
                let p = [f64::from(x) + 0.5, f64::from(y) + 0.5];
                let (d, w) = geometry.locate(p);
                // Strictly closer: the lowest-numbered triangle keeps ties (shared edges).
                if d <= BORDER_RADIUS && d < distance[i] {
                    distance[i] = d;
                    weights[i] = w;
                    owner[i] = n;
                }
            }
        }
    }
    let mut values = vec![0f32; c];
    for (i, &n) in owner.iter().enumerate() {
        if n == u32::MAX {
            continue;
        }
        let corner = |k: usize| positions[indices[n as usize * 3 + k] as usize];
        let w = weights[i];
        let point: [f32; 3] = std::array::from_fn(|a| {
            (0..3).map(|k| w[k] * f64::from(corner(k)[a])).sum::<f64>() as f32
        });
        values.fill(0.0);
        sample(n, w, point, &mut values);
        for (o, &v) in texels[i * c..(i + 1) * c].iter_mut().zip(&values) {
            *o = unit_to_u8(v);
        }
        coverage[i] = if distance[i] == 0.0 { COVERED } else { BORDER };
    }
}

/// A triangle's edge functions, for inside tests, barycentric weights and distances.
struct TriangleGeometry {
    corners: [[f64; 2]; 3],
    /// Twice the signed area; 0 for a degenerate triangle.
    area2: f64,
}

/// Smallest |twice the area| (texels²) whose barycentric weights are extrapolated past the
/// edges; thinner triangles use their closest point instead.
const MIN_EXTRAPOLATED_AREA2: f64 = 0.5;
/// Most negative barycentric weight extrapolated (beyond: the closest point).
const MIN_EXTRAPOLATED_WEIGHT: f64 = -1.0;

impl TriangleGeometry {
    fn new(corners: [[f64; 2]; 3]) -> Self {
        let [a, b, c] = corners;
        let area2 = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]);
        Self { corners, area2 }
    }

    /// (distance from `p` to the triangle, barycentric weights of the point to bake for `p`).
    /// Inside: distance 0 and `p`'s own weights. Outside: `p`'s weights extrapolated along the
    /// plane where the triangle is well shaped, else those of the closest point.
    fn locate(&self, p: [f64; 2]) -> (f64, [f64; 3]) {
        let [a, b, c] = self.corners;
        let edge = |u: [f64; 2], v: [f64; 2]| {
            (v[0] - u[0]) * (p[1] - u[1]) - (v[1] - u[1]) * (p[0] - u[0])
        };
        if self.area2 != 0.0 {
            // Weight of a corner = signed area of the sub-triangle opposite it.
            let w = [
                edge(b, c) / self.area2,
                edge(c, a) / self.area2,
                edge(a, b) / self.area2,
            ];
            if w.iter().all(|&v| v >= 0.0) {
                return (0.0, w);
            }
            let (d, closest) = self.closest(p);
            if d > BORDER_RADIUS {
                return (d, closest);
            }
            if self.area2.abs() >= MIN_EXTRAPOLATED_AREA2
                && w.iter().all(|&v| v >= MIN_EXTRAPOLATED_WEIGHT)
            {
                return (d, w);
            }
            return (d, closest);
        }
        self.closest(p)
    }

    /// Distance to the closest point on the edges and that point's barycentric weights.
    fn closest(&self, p: [f64; 2]) -> (f64, [f64; 3]) {
        let mut best = (f64::INFINITY, [1.0, 0.0, 0.0]);
        for k in 0..3 {
            let (u, v) = (self.corners[k], self.corners[(k + 1) % 3]);
            let d = [v[0] - u[0], v[1] - u[1]];
            let len2 = d[0] * d[0] + d[1] * d[1];
            let t = if len2 > 0.0 {
                (((p[0] - u[0]) * d[0] + (p[1] - u[1]) * d[1]) / len2).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let q = [u[0] + t * d[0], u[1] + t * d[1]];
            let dist = ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2)).sqrt();
            if dist < best.0 {
                let mut w = [0.0; 3];
                w[k] = 1.0 - t;
                w[(k + 1) % 3] = t;
                best = (dist, w);
            }
        }
        best
    }
}

/// Fills `rings` rings of empty texels around the filled ones; each ring's texel takes the
/// rounded mean of its already filled 8-neighbours.
fn dilate(texels: &mut [u8], coverage: &mut [u8], size: u32, c: usize, rings: u32) {
    let w = size as i64;
    let neighbours = |i: usize| {
        let (x, y) = (i as i64 % w, i as i64 / w);
        (-1..=1i64)
            .flat_map(move |dy| (-1..=1i64).map(move |dx| (dx, dy)))
            .filter(|&d| d != (0, 0))
            .map(move |(dx, dy)| (x + dx, y + dy))
            .filter(move |&(x, y)| x >= 0 && y >= 0 && x < w && y < w)
            .map(move |(x, y)| (y * w + x) as usize)
    };
    // Filled texels with an empty neighbour.
    let mut front: Vec<usize> = (0..coverage.len())
        .into_par_iter()
        .filter(|&i| coverage[i] != EMPTY && neighbours(i).any(|j| coverage[j] == EMPTY))
        .collect();
    for _ in 0..rings {
        let mut ring: Vec<usize> = front
            .iter()
            .flat_map(|&i| neighbours(i))
            .filter(|&j| coverage[j] == EMPTY)
            .collect();
        ring.sort_unstable();
        ring.dedup();
        if ring.is_empty() {
            break;
        }
        let values: Vec<u8> = ring
            .par_iter()
            .flat_map_iter(|&j| {
                let mut sum = vec![0u32; c];
                let mut count = 0u32;
                for n in neighbours(j).filter(|&n| coverage[n] != EMPTY) {
                    count += 1;
                    for (s, &v) in sum.iter_mut().zip(&texels[n * c..(n + 1) * c]) {
                        *s += u32::from(v);
                    }
                }
                sum.into_iter()
                    .map(move |s| ((s + count / 2) / count) as u8)
            })
            .collect();
        for (&j, v) in ring.iter().zip(values.chunks_exact(c)) {
            texels[j * c..(j + 1) * c].copy_from_slice(v);
            coverage[j] = DILATED;
        }
        front = ring;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A volume whose channel 0 is x and channel 1 is y over a `grid³` box of voxels.
    fn ramp(grid: i32) -> VoxelAttributes {
        let mut coords = Vec::new();
        let mut attrs = Vec::new();
        for x in 0..grid {
            for y in 0..grid {
                for z in 0..grid {
                    coords.push([x, y, z]);
                    attrs.extend([
                        (x as f32 + 0.5) / grid as f32,
                        (y as f32 + 0.5) / grid as f32,
                    ]);
                }
            }
        }
        VoxelAttributes::with_frame(&coords, attrs, 2, grid as u32, [0.0; 3], 1.0 / grid as f32)
            .unwrap()
    }

    /// The unit square at z = ½ as two triangles, uv = (x, y) shrunk into [0.25, 0.75]².
    fn quad() -> (Vec<[f32; 3]>, Vec<[f32; 2]>, Vec<u32>) {
        let corners = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]];
        let positions = corners.iter().map(|&[x, y]| [x, y, 0.5]).collect();
        let uvs = corners
            .iter()
            .map(|&[x, y]| [0.25 + 0.5 * x, 0.25 + 0.5 * y])
            .collect();
        (positions, uvs, vec![0, 1, 2, 0, 2, 3])
    }

    #[test]
    fn a_quad_bakes_its_ramp_and_dilates_around_it() {
        let volume = ramp(8);
        let (p, uv, ix) = quad();
        let opts = BakeOptions {
            texture_size: 64,
            dilation_texels: 4,
        };
        let image = bake(&p, &uv, &ix, &volume, &opts).unwrap();
        assert_eq!(image.count(COVERED), 32 * 32);
        assert_eq!(image.count(EMPTY), 0);
        // The ramp is linear inside the voxel centres' span, clamped beyond (renormalised
        // weights); compare inside it.
        let mut out = [0.0; 2];
        for &(x, y) in &[(0.2f32, 0.3f32), (0.5, 0.5), (0.8, 0.7)] {
            image.sample_bilinear([0.25 + 0.5 * x, 0.25 + 0.5 * y], &mut out);
            assert!((out[0] - x).abs() <= 1.0 / 255.0, "{out:?} at {x},{y}");
            assert!((out[1] - y).abs() <= 1.0 / 255.0, "{out:?} at {x},{y}");
        }
        // Border texels one ring out, dilated rings beyond, then the mean.
        let at = |x: usize, y: usize| image.coverage[y * 64 + x];
        assert_eq!(at(15, 32), BORDER);
        assert_eq!(at(12, 32), DILATED);
        assert_eq!(at(2, 2), FILLED);
        // Deterministic.
        assert_eq!(image, bake(&p, &uv, &ix, &volume, &opts).unwrap());
    }

    #[test]
    fn border_texels_extrapolate_along_the_triangle() {
        let volume = ramp(8);
        let (p, uv, ix) = quad();
        let image = bake(&p, &uv, &ix, &volume, &BakeOptions::for_size(64)).unwrap();
        // Texel column 15 has its centre at u = 15.5 / 64, x = −0.03: the ramp clamps there.
        let i = (40 * 64 + 15) * 2;
        assert!(
            image.texels[i] <= unit_to_u8(1.0 / 16.0),
            "{}",
            image.texels[i]
        );
        let y = ((40.5 / 64.0 - 0.25) / 0.5) as f32;
        assert!((f32::from(image.texels[i + 1]) / 255.0 - y).abs() <= 1.0 / 255.0);
    }

    #[test]
    fn rejects_bad_input() {
        let volume = ramp(2);
        let (p, uv, ix) = quad();
        let opts = BakeOptions::for_size(16);
        assert!(bake(&p, &uv[1..], &ix, &volume, &opts).is_err());
        assert!(bake(&p, &uv, &ix[1..], &volume, &opts).is_err());
        assert!(bake(&p, &uv, &[0, 1, 9], &volume, &opts).is_err());
        let mut nan = uv.clone();
        nan[0][0] = f32::NAN;
        assert!(bake(&p, &nan, &ix, &volume, &opts).is_err());
        assert!(bake(&p, &uv, &ix, &volume, &BakeOptions::for_size(0)).is_err());
        assert!(bake_with(&p, &uv, &ix, 0, &opts, &|_, _, _, _| {}).is_err());
    }
}
