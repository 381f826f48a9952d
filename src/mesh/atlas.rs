//! UV atlas for texture baking: charts cut from the mesh, flattened and packed into one
//! square texture (docs/OUTPUTS.md "UV atlas").
//!
//! The unwrapper is the pure-Rust `uvunwrap` crate: xatlas-style region-growing charts, LSCM
//! refined by as-rigid-as-possible iterations (sparse Cholesky through `faer`), packing by
//! rasterised chart shape. Charts are limited to a 30° normal cone instead of the crate's 70°:
//! on our decimated voxel surfaces that halves the unwrap time (smaller solves) and still
//! covers 64–71 % of a 2048² texture. Chart seams duplicate vertices;
//! [`UvAtlas::source_vertex`] maps each output vertex back to its input vertex.
//!
//! Output is the same for any thread count (the crate's parallel maps keep input order and
//! its solver runs sequentially); `faer` picks SIMD kernels by CPU, so machines with
//! different vector units may round differently.

use anyhow::{bail, ensure, Context, Result};

/// Atlas size and chart spacing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtlasOptions {
    /// Width and height of the (square) texture, in texels.
    pub texture_size: u32,
    /// Empty texels between two charts (half of it at least between a chart and the border),
    /// so that dilation and mip-mapping do not bleed one chart into another.
    pub padding_texels: u32,
}

impl Default for AtlasOptions {
    fn default() -> Self {
        Self {
            texture_size: 2048,
            padding_texels: 4,
        }
    }
}

/// Largest angle between a face normal and its chart's mean normal.
const MAX_CHART_ANGLE_DEGREES: f32 = 30.0;

/// Smallest and largest accepted [`AtlasOptions::texture_size`].
pub const TEXTURE_SIZE_RANGE: std::ops::RangeInclusive<u32> = 16..=16384;

/// A mesh with one UV per vertex, its vertices split along chart seams.
#[derive(Clone, Debug, PartialEq)]
pub struct UvAtlas {
    /// Per output vertex: the input vertex it copies (chart seams duplicate vertices).
    pub source_vertex: Vec<u32>,
    /// Per output vertex, in [0,1]²; glTF convention: u to the right, v DOWN from the image's
    /// first row.
    pub uvs: Vec<[f32; 2]>,
    /// Three per triangle, over output vertices, same triangle order as the input.
    pub indices: Vec<u32>,
    /// Number of charts.
    pub charts: usize,
    /// Width and height of the texture the UVs were packed for, in texels.
    pub texture_size: u32,
    /// Wall time of the unwrap, in seconds.
    pub seconds: f64,
}

/// Cuts, flattens and packs `indices` (three per triangle, over `positions`) into one
/// `texture_size²` atlas. Triangles keep their order; degenerate triangles get no texels (their
/// corners share a UV). An empty mesh gives an empty atlas; NaN or infinite positions and
/// out-of-range indices are errors.
pub fn unwrap(positions: &[[f32; 3]], indices: &[u32], opts: &AtlasOptions) -> Result<UvAtlas> {
    let start = std::time::Instant::now();
    ensure!(
        TEXTURE_SIZE_RANGE.contains(&opts.texture_size),
        "texture size {} is outside {}..={}",
        opts.texture_size,
        TEXTURE_SIZE_RANGE.start(),
        TEXTURE_SIZE_RANGE.end()
    );
    ensure!(
        u64::from(opts.padding_texels) * 4 < u64::from(opts.texture_size),
        "padding of {} texels leaves no room in a {}² texture",
        opts.padding_texels,
        opts.texture_size
    );
    ensure!(
        indices.len().is_multiple_of(3),
        "{} indices are not whole triangles",
        indices.len()
    );
    if let Some(&i) = indices.iter().find(|&&i| i as usize >= positions.len()) {
        bail!(
            "triangle index {i} is out of range for {} vertices",
            positions.len()
        );
    }
    if let Some(v) = positions
        .iter()
        .position(|p| !p.iter().all(|c| c.is_finite()))
    {
        bail!("vertex {v} has a non-finite position");
    }
    if indices.is_empty() {
        return Ok(UvAtlas {
            source_vertex: Vec::new(),
            uvs: Vec::new(),
            indices: Vec::new(),
            charts: 0,
            texture_size: opts.texture_size,
            seconds: start.elapsed().as_secs_f64(),
        });
    }
    let options = uvunwrap::Options {
        density: uvunwrap::Density::Auto {
            page_size: opts.texture_size,
        },
        // The crate keeps 2·padding between charts and padding to the border.
        padding: opts.padding_texels.div_ceil(2),
        max_chart_angle: MAX_CHART_ANGLE_DEGREES,
        ..uvunwrap::Options::default()
    };
    let atlas = uvunwrap::generate(&[uvunwrap::MeshInput::new(positions, indices)], &options)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("UV unwrap")?;
    ensure!(
        atlas.page_count <= 1,
        "the mesh's {} charts do not fit one {}² texture",
        atlas.chart_count,
        opts.texture_size
    );
    let mesh = atlas
        .meshes
        .into_iter()
        .next()
        .context("UV unwrap returned no mesh")?;
    // The page is cropped to the rows it uses; UVs are relative to that height, so scale v
    // back to the square texture (v = 0 is the first image row in both).
    let v_scale = atlas.height as f32 / atlas.width.max(1) as f32;
    let (source_vertex, uvs) = mesh
        .vertices
        .iter()
        .map(|v| {
            (
                v.xref,
                [v.uv[0].clamp(0.0, 1.0), (v.uv[1] * v_scale).clamp(0.0, 1.0)],
            )
        })
        .unzip();
    ensure!(
        mesh.indices.len() == indices.len(),
        "UV unwrap changed the triangle count"
    );
    Ok(UvAtlas {
        source_vertex,
        uvs,
        indices: mesh.indices,
        charts: atlas.chart_count as usize,
        texture_size: opts.texture_size,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Measures of an atlas at its texture size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AtlasStats {
    /// Texels whose centre lies in some triangle, over all texels.
    pub utilisation: f64,
    /// Triangles that share a texel centre with another triangle (0 for a valid atlas).
    pub overlapping_triangles: usize,
    /// Number of charts.
    pub charts: usize,
    /// Wall time of the unwrap, in seconds.
    pub seconds: f64,
}

/// Rasterises every triangle at texel centres (a shared edge's texels go to exactly one side,
/// by the top-left rule) and counts covered texels and triangles that claim a texel another
/// triangle already claimed.
pub fn atlas_stats(atlas: &UvAtlas) -> AtlasStats {
    let coverage = texel_owners(atlas);
    AtlasStats {
        utilisation: coverage.covered as f64 / (coverage.size * coverage.size) as f64,
        overlapping_triangles: coverage.overlapping.iter().filter(|&&o| o).count(),
        charts: atlas.charts,
        seconds: atlas.seconds,
    }
}

struct Coverage {
    size: usize,
    covered: usize,
    overlapping: Vec<bool>,
}

/// Edge function of `p` against the edge `a → b` (positive to its left in a y-up frame),
/// evaluated with the endpoints in a fixed order so that the two triangles on one edge get
/// exactly opposite values and no texel centre on it counts twice or not at all.
fn edge_function(a: [f64; 2], b: [f64; 2], p: [f64; 2]) -> f64 {
    let (lo, hi, sign) = if (a[0], a[1]) <= (b[0], b[1]) {
        (a, b, 1.0)
    } else {
        (b, a, -1.0)
    };
    sign * ((hi[0] - lo[0]) * (p[1] - lo[1]) - (hi[1] - lo[1]) * (p[0] - lo[0]))
}

fn texel_owners(atlas: &UvAtlas) -> Coverage {
    let size = atlas.texture_size as usize;
    let scale = atlas.texture_size as f32;
    let mut owner = vec![u32::MAX; size * size];
    let triangles = atlas.indices.len() / 3;
    let mut overlapping = vec![false; triangles];
    let mut covered = 0;
    for (t, tri) in atlas.indices.chunks_exact(3).enumerate() {
        let Some(mut v) = tri
            .iter()
            .map(|&i| {
                atlas
                    .uvs
                    .get(i as usize)
                    .map(|uv| uv.map(|c| f64::from(c * scale)))
            })
            .collect::<Option<Vec<_>>>()
        else {
            continue;
        };
        if !v.iter().flatten().all(|c| c.is_finite()) {
            continue;
        }
        let area = edge_function(v[0], v[1], v[2]);
        if area == 0.0 {
            continue;
        }
        if area < 0.0 {
            v.swap(1, 2);
        }
        // Texel centres i + 0.5 within the bounding box, clipped to the texture.
        let range = |k: usize| {
            let lo = v.iter().map(|p| p[k]).fold(f64::INFINITY, f64::min);
            let hi = v.iter().map(|p| p[k]).fold(f64::NEG_INFINITY, f64::max);
            let first = (lo - 0.5).ceil().max(0.0) as usize;
            let end = ((hi - 0.5).floor() + 1.0).clamp(0.0, size as f64) as usize;
            first..end
        };
        for y in range(1) {
            for x in range(0) {
                let p = [x as f64 + 0.5, y as f64 + 0.5];
                let inside = (0..3).all(|k| {
                    let (a, b) = (v[k], v[(k + 1) % 3]);
                    let e = edge_function(a, b, p);
                    // Top-left rule: of two triangles on an edge, exactly one sees it this way.
                    e > 0.0 || (e == 0.0 && (b[1] > a[1] || (b[1] == a[1] && b[0] < a[0])))
                });
                if !inside {
                    continue;
                }
                let slot = &mut owner[y * size + x];
                if *slot == u32::MAX {
                    *slot = t as u32;
                    covered += 1;
                } else {
                    overlapping[t] = true;
                    overlapping[*slot as usize] = true;
                }
            }
        }
    }
    Coverage {
        size,
        covered,
        overlapping,
    }
}
