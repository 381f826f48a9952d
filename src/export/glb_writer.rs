//! The mesh as glTF 2.0 binary (GLB): one mesh, one triangle primitive, one PBR
//! metallic-roughness material, and either vertex colours ([`write_glb`], below) or a UV atlas
//! with baked textures ([`write_textured_glb`]: `TEXCOORD_0`, a base colour (+ alpha when the
//! material blends) and a metallic-roughness PNG in buffer views, factors 1, no `COLOR_0`;
//! optionally a tangent-space normal map of the raw surface with MikkTSpace `TANGENT`s,
//! [`write_textured_glb_with_options`]; docs/OUTPUTS.md "Textured GLB").
//!
//! The vertex-colour GLB:
//!
//! * Attributes: `POSITION` (float VEC3, with min/max), `NORMAL` (float VEC3, unit, outward where
//!   the surface allows; [`super::face_orientation`]), `COLOR_0` (unsigned-short normalised VEC4,
//!   **linear** RGB as glTF requires: the network's base colour is sRGB-encoded, so it is
//!   quantised to 8-bit sRGB like the PLY's, then decoded to linear; alpha as is). Indices: u32.
//!   Unsigned shorts keep the darkest 8-bit sRGB levels distinct after linearisation at half
//!   the size of floats.
//! * Material: `baseColorFactor` white (the vertex colours are the colour), `metallicFactor` /
//!   `roughnessFactor` = mean of the voxels' metallic / roughness, `doubleSided: true` (the
//!   triangles are re-wound outward, but open sheets and thin parts have no outside),
//!   `alphaMode` `BLEND` when some drawn vertex has alpha below 250/255 — upstream's `to_glb`
//!   rule for its baked alpha — else `OPAQUE`.
//! * Frame: glTF is +Y up, which [`Up::Y`] (the default) gives; [`Up::Z`] writes the pipeline
//!   frame for tools that want it, recorded in `asset.extras.trellis2_frame`.
//! * Layout: JSON chunk padded with spaces and BIN chunk padded with zeros to 4 bytes; every
//!   buffer view is a multiple of 4 bytes long, so all accessors are aligned.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;
use serde_json::json;

use super::asset::{Asset, ALPHA, METALLIC, PBR_CHANNELS, ROUGHNESS};
use super::color::srgb_to_linear;
use super::face_orientation::faces_wound_outward;
use super::frame::Up;
use super::mesh_arrays::MeshArrays;
use super::write_atomic;
use crate::mesh::atlas::{atlas_stats, unwrap, AtlasOptions};
use crate::mesh::bake::{bake, BakeOptions, BakedImage};
use crate::mesh::normal_map::{
    bake_normal_map, mikktspace_tangents, SurfaceIndex, TangentMesh, NORMAL_MAP_CHANNELS,
};
use crate::mesh::{Mesh, VoxelAttributes};

/// Alpha below this (8-bit) on any drawn vertex makes the material `BLEND` (upstream's rule).
pub const BLEND_BELOW_ALPHA8: u8 = 250;

const GLB_MAGIC: &[u8; 4] = b"glTF";
const GLB_VERSION: u32 = 2;
const CHUNK_JSON: u32 = 0x4E4F_534A;
const CHUNK_BIN: u32 = 0x004E_4942;
const FLOAT: u32 = 5126;
const UNSIGNED_SHORT: u32 = 5123;
const UNSIGNED_INT: u32 = 5125;
const ARRAY_BUFFER: u32 = 34962;
const ELEMENT_ARRAY_BUFFER: u32 = 34963;
const LINEAR: u32 = 9729;
const LINEAR_MIPMAP_LINEAR: u32 = 9987;
const CLAMP_TO_EDGE: u32 = 33071;

/// Writes the mesh of `asset` as GLB to `path` atomically. Fails on a mesh without triangles.
pub fn write_glb(path: &Path, asset: &Asset, up: Up) -> Result<()> {
    let arrays = MeshArrays::new(asset, up)?;
    let (json, bin) = glb_chunks(asset, &arrays, up)?;
    write_atomic(path, |w| write_container(w, &json, &bin))
        .with_context(|| format!("{}: cannot write the GLB", path.display()))
}

/// Rows per parallel work item when filling the binary buffer.
const ROWS_PER_TASK: usize = 1 << 14;

/// Fills `dst` with `encode` of every item of `src` (`N` bytes each), in parallel.
fn fill_rows<T: Sync, const N: usize>(
    dst: &mut [u8],
    src: &[T],
    encode: impl Fn(&T) -> [u8; N] + Sync,
) {
    dst.par_chunks_mut(ROWS_PER_TASK * N)
        .zip(src.par_chunks(ROWS_PER_TASK))
        .for_each(|(dst, src)| {
            for (d, s) in dst.chunks_exact_mut(N).zip(src) {
                d.copy_from_slice(&encode(s));
            }
        });
}

/// Three little-endian f32.
fn vec3_le(v: &[f32; 3]) -> [u8; 12] {
    let mut out = [0; 12];
    for (d, x) in out.chunks_exact_mut(4).zip(v) {
        d.copy_from_slice(&x.to_le_bytes());
    }
    out
}

/// The JSON document and the binary buffer.
fn glb_chunks(asset: &Asset, arrays: &MeshArrays, up: Up) -> Result<(Vec<u8>, Vec<u8>)> {
    let n = arrays.positions.len();
    // Positions, normals, colours, indices: each a multiple of 4 bytes, so no padding.
    let sizes = [n * 12, n * 12, n * 8, arrays.faces.len() * 12];
    let mut bin = vec![0u8; sizes.iter().sum()];
    let mut views = Vec::new();
    let mut offset = 0;
    for (size, target) in sizes.into_iter().zip([
        ARRAY_BUFFER,
        ARRAY_BUFFER,
        ARRAY_BUFFER,
        ELEMENT_ARRAY_BUFFER,
    ]) {
        views.push(json!({
            "buffer": 0,
            "byteOffset": offset,
            "byteLength": size,
            "target": target,
        }));
        offset += size;
    }
    let (positions, rest) = bin.split_at_mut(sizes[0]);
    let (normals, rest) = rest.split_at_mut(sizes[1]);
    let (colours, indices) = rest.split_at_mut(sizes[2]);
    let linear = linear_rgba16_table();
    rayon::join(
        || {
            rayon::join(
                || fill_rows(positions, &arrays.positions, vec3_le),
                || fill_rows(normals, &arrays.normals, vec3_le),
            )
        },
        || {
            rayon::join(
                || {
                    fill_rows(colours, &arrays.rgba8, |c| {
                        let mut out = [0; 8];
                        let rgba = [
                            linear[c[0] as usize],
                            linear[c[1] as usize],
                            linear[c[2] as usize],
                            u16::from(c[3]) * 257,
                        ];
                        for (d, v) in out.chunks_exact_mut(2).zip(rgba) {
                            d.copy_from_slice(&v.to_le_bytes());
                        }
                        out
                    })
                },
                || {
                    fill_rows(indices, &arrays.faces, |f| {
                        let mut out = [0; 12];
                        for (d, i) in out.chunks_exact_mut(4).zip(f) {
                            d.copy_from_slice(&i.to_le_bytes());
                        }
                        out
                    })
                },
            )
        },
    );

    let (lo, hi) = bounds(&arrays.positions);
    let alpha_mode = if arrays
        .faces
        .iter()
        .flatten()
        .any(|&v| arrays.rgba8[v as usize][3] < BLEND_BELOW_ALPHA8)
    {
        "BLEND"
    } else {
        "OPAQUE"
    };
    let doc = gltf_document(
        up.describe(),
        json!({ "POSITION": 0, "NORMAL": 1, "COLOR_0": 2 }),
        json!({
        "materials": [{
            "name": "trellis2_pbr",
            "pbrMetallicRoughness": {
                "baseColorFactor": [1.0, 1.0, 1.0, 1.0],
                "metallicFactor": f64::from(asset.mean_attribute(METALLIC)),
                "roughnessFactor": f64::from(asset.mean_attribute(ROUGHNESS)),
            },
            "alphaMode": alpha_mode,
            "doubleSided": true,
        }],
        "accessors": [
            {
                "bufferView": 0, "componentType": FLOAT, "count": n, "type": "VEC3",
                // f32 → f64 exactly, so min/max equal the stored values bit for bit.
                "min": lo.map(f64::from), "max": hi.map(f64::from),
            },
            { "bufferView": 1, "componentType": FLOAT, "count": n, "type": "VEC3" },
            {
                "bufferView": 2, "componentType": UNSIGNED_SHORT, "normalized": true,
                "count": n, "type": "VEC4",
            },
            {
                "bufferView": 3, "componentType": UNSIGNED_INT,
                "count": arrays.faces.len() * 3, "type": "SCALAR",
            },
        ],
        "bufferViews": views,
        "buffers": [{ "byteLength": bin.len() }],
        }),
    );
    let json = serde_json::to_vec(&doc).context("export: GLB JSON")?;
    Ok((json, bin))
}

/// Texture coordinates for the asset's mesh: corner `k` of triangle `t` is row
/// `indices[3t + k]` of `uvs`, standing for vertex `source_vertex[row]` of the mesh (a vertex on
/// a chart seam has one row per chart). The triangles should be wound outward
/// ([`faces_wound_outward`]): the normals follow their winding.
#[derive(Clone, Copy, Debug)]
pub struct UvLayout<'a> {
    pub source_vertex: &'a [u32],
    /// In [0, 1]², `v` down from the first image row (glTF's convention).
    pub uvs: &'a [[f32; 2]],
    pub indices: &'a [u32],
}

/// What a textured GLB holds, and how long unwrapping, baking, PNG encoding and writing took.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TexturedGlb {
    pub faces: usize,
    /// After chart seams split vertices.
    pub vertices: usize,
    pub texture_size: u32,
    pub charts: usize,
    /// Fraction of the texels inside charts ([`crate::mesh::atlas::atlas_stats`]).
    pub utilisation: f64,
    pub overlapping_triangles: usize,
    pub unwrap_seconds: f64,
    /// `alphaMode` `BLEND` (some covered texel has alpha below [`BLEND_BELOW_ALPHA8`]).
    pub alpha_blend: bool,
    /// Both PNG images together.
    pub png_bytes: usize,
    pub bake_seconds: f64,
    pub encode_seconds: f64,
    pub write_seconds: f64,
    /// A normal map (and `TANGENT`s) was baked and written.
    pub normal_map: bool,
    /// Indexing the raw surface, tangents and the normal map's bake (its PNG encoding is in
    /// `encode_seconds`).
    pub normal_map_seconds: f64,
}

/// What the textured GLB holds beyond the base colour and metallic-roughness textures.
#[derive(Clone, Copy, Debug)]
pub struct TextureOptions<'a> {
    /// Width and height of every texture, in texels.
    pub texture_size: u32,
    /// Bake a tangent-space normal map (glTF `normalTexture`, with MikkTSpace `TANGENT`s) of
    /// this surface, in the asset's frame: the raw mesh the asset's mesh was decimated from,
    /// whose detail the map carries ([`crate::mesh::normal_map`]), **wound outward** as
    /// [`Asset::decimated_and_oriented`] or [`Asset::oriented_mesh`] give it (its normals follow
    /// the winding; orienting a million-face mesh takes seconds, so it is not redone here).
    pub normal_map_from: Option<&'a Mesh>,
}

impl TextureOptions<'_> {
    /// Base colour and metallic-roughness only.
    pub fn new(texture_size: u32) -> Self {
        Self {
            texture_size,
            normal_map_from: None,
        }
    }
}

/// Padding between charts, in texels: at least 4 (more from 4096² up), so that every texel a
/// bilinear lookup inside a chart reads (within √2 texels of it) is nearer to that chart than
/// to any other and the bake gives it that chart's values.
pub fn chart_padding(texture_size: u32) -> u32 {
    (texture_size / 512).max(4)
}

/// Writes the mesh of `asset` as a textured GLB: unwrapped into one atlas
/// ([`crate::mesh::atlas`]), then as [`write_textured_glb_with_layout`] writes it.
pub fn write_textured_glb(
    path: &Path,
    asset: &Asset,
    up: Up,
    texture_size: u32,
) -> Result<TexturedGlb> {
    write_textured_glb_with_options(path, asset, up, &TextureOptions::new(texture_size))
}

/// [`write_textured_glb`] with [`TextureOptions`] (the normal map).
pub fn write_textured_glb_with_options(
    path: &Path,
    asset: &Asset,
    up: Up,
    opts: &TextureOptions<'_>,
) -> Result<TexturedGlb> {
    let texture_size = opts.texture_size;
    let start = Instant::now();
    let indices: Vec<u32> = faces_wound_outward(asset.mesh())
        .into_iter()
        .flatten()
        .collect();
    let atlas = unwrap(
        &asset.mesh().vertices,
        &indices,
        &AtlasOptions {
            texture_size,
            padding_texels: chart_padding(texture_size),
        },
    )
    .context("export: UV unwrap")?;
    let unwrap_seconds = start.elapsed().as_secs_f64();
    let stats = atlas_stats(&atlas);
    let layout = UvLayout {
        source_vertex: &atlas.source_vertex,
        uvs: &atlas.uvs,
        indices: &atlas.indices,
    };
    let written = write_textured_glb_with_layout_and_options(path, asset, up, layout, opts)?;
    Ok(TexturedGlb {
        charts: atlas.charts,
        utilisation: stats.utilisation,
        overlapping_triangles: stats.overlapping_triangles,
        unwrap_seconds,
        ..written
    })
}

/// Writes the mesh of `asset` with the texture coordinates `layout` as a textured GLB:
/// `TEXCOORD_0`, a base colour (+ alpha) texture and a metallic-roughness texture of
/// `texture_size²` baked from the voxels ([`crate::mesh::bake`]), both PNG, no vertex colours.
pub fn write_textured_glb_with_layout(
    path: &Path,
    asset: &Asset,
    up: Up,
    layout: UvLayout<'_>,
    texture_size: u32,
) -> Result<TexturedGlb> {
    write_textured_glb_with_layout_and_options(
        path,
        asset,
        up,
        layout,
        &TextureOptions::new(texture_size),
    )
}

/// [`write_textured_glb_with_layout`] with [`TextureOptions`]. With a normal map, vertices
/// whose corners get different MikkTSpace tangents are split (the written layout has them
/// twice, same position and texture coordinate).
pub fn write_textured_glb_with_layout_and_options(
    path: &Path,
    asset: &Asset,
    up: Up,
    layout: UvLayout<'_>,
    opts: &TextureOptions<'_>,
) -> Result<TexturedGlb> {
    let texture_size = opts.texture_size;
    let mesh = asset.mesh();
    ensure!(
        !layout.indices.is_empty(),
        "export: the mesh has no triangles ({} vertices); nothing to write",
        mesh.vertices.len()
    );
    ensure!(
        layout.source_vertex.len() == layout.uvs.len(),
        "export: {} texture coordinates for {} atlas vertices",
        layout.uvs.len(),
        layout.source_vertex.len()
    );
    ensure!(
        layout.indices.len().is_multiple_of(3),
        "export: {} atlas corner indices, not whole triangles",
        layout.indices.len()
    );
    if let Some(&bad) = layout
        .indices
        .iter()
        .find(|&&i| i as usize >= layout.source_vertex.len())
    {
        bail!(
            "export: atlas corner {bad} past the {} atlas vertices",
            layout.source_vertex.len()
        );
    }
    if let Some(&bad) = layout
        .source_vertex
        .iter()
        .find(|&&v| v as usize >= mesh.vertices.len())
    {
        bail!(
            "export: atlas vertex points at mesh vertex {bad} of {}",
            mesh.vertices.len()
        );
    }
    // Normals over the layout's triangles on the mesh's vertices: smooth across chart seams.
    let oriented = Mesh {
        vertices: mesh.vertices.clone(),
        faces: layout
            .indices
            .chunks_exact(3)
            .map(|t| [0, 1, 2].map(|k| layout.source_vertex[t[k] as usize]))
            .collect(),
    };
    let mesh_normals = oriented.vertex_normals()?;
    let atlas_normals: Vec<[f32; 3]> = layout
        .source_vertex
        .iter()
        .map(|&i| mesh_normals[i as usize])
        .collect();
    let atlas_corners: Vec<[f32; 3]> = layout
        .source_vertex
        .iter()
        .map(|&i| mesh.vertices[i as usize])
        .collect();

    // With a normal map: MikkTSpace tangents first, since they may split vertices and every
    // texture is baked on the arrays written.
    let normal_start = Instant::now();
    let (uvs, indices, corners, normals, tangents) = match opts.normal_map_from {
        None => (
            layout.uvs.to_vec(),
            layout.indices.to_vec(),
            atlas_corners,
            atlas_normals,
            None,
        ),
        Some(_) => {
            let t = mikktspace_tangents(&atlas_corners, &atlas_normals, layout.uvs, layout.indices)
                .context("export: tangents")?;
            let pick = |a: &[[f32; 3]]| -> Vec<[f32; 3]> {
                t.source_vertex.iter().map(|&v| a[v as usize]).collect()
            };
            (
                t.source_vertex
                    .iter()
                    .map(|&v| layout.uvs[v as usize])
                    .collect(),
                t.indices,
                pick(&atlas_corners),
                pick(&atlas_normals),
                Some(t.tangents),
            )
        }
    };
    // The normal map is baked in the asset's frame, where the raw surface is.
    let normal_map = match (opts.normal_map_from, &tangents) {
        (Some(raw), Some(tangents)) => {
            let index = SurfaceIndex::new(raw, asset.voxel_size())
                .context("export: raw surface for the normal map")?;
            let image = bake_normal_map(
                TangentMesh {
                    positions: &corners,
                    normals: &normals,
                    tangents,
                    uvs: &uvs,
                    indices: &indices,
                },
                &index,
                &BakeOptions::for_size(texture_size),
            )
            .context("export: normal map bake")?;
            Some(image)
        }
        _ => None,
    };
    let normal_map_seconds = normal_start.elapsed().as_secs_f64();

    let positions: Vec<[f32; 3]> = corners.iter().map(|&p| up.apply(p)).collect();
    let file_normals: Vec<[f32; 3]> = normals.iter().map(|&n| up.apply(n)).collect();
    // The frame change is a rotation (axes swapped, one negated): handedness unchanged.
    let file_tangents: Option<Vec<[f32; 4]>> = tangents.map(|t| {
        t.iter()
            .map(|&[x, y, z, w]| {
                let [x, y, z] = up.apply([x, y, z]);
                [x, y, z, w]
            })
            .collect()
    });
    let volume = asset.attribute_volume()?;
    let written = write_baked_glb(
        path,
        &BakeTarget {
            sample_points: &corners,
            positions: &positions,
            normals: &file_normals,
            uvs: &uvs,
            indices: &indices,
            frame: up.describe(),
            normal_map: file_tangents
                .as_deref()
                .zip(normal_map.as_ref())
                .map(|(tangents, image)| NormalMapLayer { tangents, image }),
        },
        &volume,
        texture_size,
    )?;
    Ok(TexturedGlb {
        normal_map_seconds: if written.normal_map {
            normal_map_seconds
        } else {
            0.0
        },
        ..written
    })
}

/// A textured mesh to bake and write, one row per vertex of the UV layout.
#[derive(Clone, Copy, Debug)]
pub struct BakeTarget<'a> {
    /// Where each vertex samples the attribute volume (the volume's frame).
    pub sample_points: &'a [[f32; 3]],
    /// Each vertex as written (the file's frame).
    pub positions: &'a [[f32; 3]],
    /// Unit normals in the file's frame.
    pub normals: &'a [[f32; 3]],
    /// In [0, 1]², `v` down from the first image row (glTF's convention).
    pub uvs: &'a [[f32; 2]],
    /// Three per triangle.
    pub indices: &'a [u32],
    /// What `asset.extras.trellis2_frame` says about the positions' frame.
    pub frame: &'a str,
    /// A tangent-space normal map to write with the textures (`normalTexture` + `TANGENT`).
    pub normal_map: Option<NormalMapLayer<'a>>,
}

/// A normal map already baked on a [`BakeTarget`]'s arrays ([`crate::mesh::normal_map`]):
/// it needs the detailed surface, which only the caller has.
#[derive(Clone, Copy, Debug)]
pub struct NormalMapLayer<'a> {
    /// MikkTSpace tangents (xyz unit, w = ±1) in the file's frame, one per vertex.
    pub tangents: &'a [[f32; 4]],
    /// RGB, `texture_size²`, baked with those tangents (in any frame that differs from the
    /// file's by a rotation: tangent-space components do not change).
    pub image: &'a BakedImage,
}

/// Bakes `volume` over `target`'s UV triangles into a base colour (+ alpha) and a
/// metallic-roughness texture of `texture_size²` ([`crate::mesh::bake`]) and writes the
/// textured GLB atomically, with `target`'s normal map when it has one.
pub fn write_baked_glb(
    path: &Path,
    target: &BakeTarget<'_>,
    volume: &VoxelAttributes,
    texture_size: u32,
) -> Result<TexturedGlb> {
    let n = target.positions.len();
    ensure!(
        target.sample_points.len() == n && target.normals.len() == n && target.uvs.len() == n,
        "export: {} sample points, {} normals and {} texture coordinates for {n} vertices",
        target.sample_points.len(),
        target.normals.len(),
        target.uvs.len()
    );
    ensure!(
        !target.indices.is_empty() && target.indices.len().is_multiple_of(3),
        "export: {} corner indices, not a non-empty list of triangles",
        target.indices.len()
    );
    if let Some(&bad) = target.indices.iter().find(|&&i| i as usize >= n) {
        bail!("export: corner {bad} past the {n} vertices");
    }
    if let Some(layer) = &target.normal_map {
        ensure!(
            layer.tangents.len() == n,
            "export: {} tangents for {n} vertices",
            layer.tangents.len()
        );
        ensure!(
            layer.image.size == texture_size && layer.image.channels == NORMAL_MAP_CHANNELS,
            "export: a {}² normal map of {} channels for {texture_size}² RGB textures",
            layer.image.size,
            layer.image.channels
        );
    }
    let start = Instant::now();
    let baked = bake(
        target.sample_points,
        target.uvs,
        target.indices,
        volume,
        &BakeOptions::for_size(texture_size),
    )
    .context("export: texture bake")?;
    let bake_seconds = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let alpha_blend = baked.covered_min[ALPHA] < BLEND_BELOW_ALPHA8;
    let (base_colour, (metallic_roughness, normal_png)) = rayon::join(
        || {
            let pixels: Vec<u8> = if alpha_blend {
                baked
                    .texels
                    .chunks_exact(PBR_CHANNELS)
                    .flat_map(|t| [t[0], t[1], t[2], t[ALPHA]])
                    .collect()
            } else {
                baked
                    .texels
                    .chunks_exact(PBR_CHANNELS)
                    .flat_map(|t| [t[0], t[1], t[2]])
                    .collect()
            };
            encode_png(&pixels, texture_size, alpha_blend)
        },
        || {
            rayon::join(
                || {
                    // glTF: roughness in G, metallic in B; R (occlusion in ORM packings) left
                    // white.
                    let pixels: Vec<u8> = baked
                        .texels
                        .chunks_exact(PBR_CHANNELS)
                        .flat_map(|t| [u8::MAX, t[ROUGHNESS], t[METALLIC]])
                        .collect();
                    encode_png(&pixels, texture_size, false)
                },
                || {
                    target
                        .normal_map
                        .map(|layer| encode_png(&layer.image.texels, texture_size, false))
                        .transpose()
                },
            )
        },
    );
    let (base_colour, metallic_roughness, normal_png) =
        (base_colour?, metallic_roughness?, normal_png?);
    drop(baked);
    let encode_seconds = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut images = vec![base_colour.as_slice(), metallic_roughness.as_slice()];
    images.extend(normal_png.as_deref());
    let textured = TexturedArrays {
        positions: target.positions,
        normals: target.normals,
        tangents: target.normal_map.map(|layer| layer.tangents),
        uvs: target.uvs,
        indices: target.indices,
        images: &images,
        alpha_blend,
    };
    let (json, bin) = textured_glb_chunks(&textured, target.frame)?;
    write_atomic(path, |w| write_container(w, &json, &bin))
        .with_context(|| format!("{}: cannot write the GLB", path.display()))?;
    Ok(TexturedGlb {
        faces: target.indices.len() / 3,
        vertices: n,
        texture_size,
        alpha_blend,
        png_bytes: images.iter().map(|i| i.len()).sum(),
        bake_seconds,
        encode_seconds,
        write_seconds: start.elapsed().as_secs_f64(),
        normal_map: normal_png.is_some(),
        ..Default::default()
    })
}

/// 8-bit RGB or RGBA pixels, row-major, as a PNG (fast deflate: the textures are smooth and
/// the encoder would otherwise dominate the export).
fn encode_png(pixels: &[u8], size: u32, alpha: bool) -> Result<Vec<u8>> {
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    use image::{ExtendedColorType, ImageEncoder};
    let mut png = Vec::new();
    PngEncoder::new_with_quality(&mut png, CompressionType::Fast, FilterType::Adaptive)
        .write_image(
            pixels,
            size,
            size,
            if alpha {
                ExtendedColorType::Rgba8
            } else {
                ExtendedColorType::Rgb8
            },
        )
        .context("export: PNG encoding of a texture")?;
    Ok(png)
}

/// Everything the textured GLB stores, in the file frame.
struct TexturedArrays<'a> {
    positions: &'a [[f32; 3]],
    normals: &'a [[f32; 3]],
    /// With a normal map.
    tangents: Option<&'a [[f32; 4]]>,
    uvs: &'a [[f32; 2]],
    indices: &'a [u32],
    /// Base colour, metallic-roughness, then the normal map when there is one (PNG files).
    images: &'a [&'a [u8]],
    alpha_blend: bool,
}

/// The JSON document and the binary buffer of the textured GLB.
fn textured_glb_chunks(t: &TexturedArrays<'_>, frame: &str) -> Result<(Vec<u8>, Vec<u8>)> {
    let n = t.positions.len();
    let image_bytes: usize = t.images.iter().map(|i| i.len() + 3).sum();
    let mut bin = Vec::with_capacity(n * 48 + t.indices.len() * 4 + image_bytes);
    let mut views = Vec::new();
    let mut push_view =
        |bin: &mut Vec<u8>, bytes: &mut dyn Iterator<Item = u8>, target: Option<u32>| {
            let offset = bin.len();
            bin.extend(bytes);
            let mut view = json!({
                "buffer": 0,
                "byteOffset": offset,
                "byteLength": bin.len() - offset,
            });
            if let Some(target) = target {
                view["target"] = json!(target);
            }
            views.push(view);
            // Every view starts 4-byte aligned.
            bin.resize(bin.len().next_multiple_of(4), 0);
        };
    push_view(
        &mut bin,
        &mut t.positions.iter().flatten().flat_map(|x| x.to_le_bytes()),
        Some(ARRAY_BUFFER),
    );
    push_view(
        &mut bin,
        &mut t.normals.iter().flatten().flat_map(|x| x.to_le_bytes()),
        Some(ARRAY_BUFFER),
    );
    push_view(
        &mut bin,
        &mut t.uvs.iter().flatten().flat_map(|x| x.to_le_bytes()),
        Some(ARRAY_BUFFER),
    );
    push_view(
        &mut bin,
        &mut t.indices.iter().flat_map(|i| i.to_le_bytes()),
        Some(ELEMENT_ARRAY_BUFFER),
    );
    // Views 4.. hold the images, in texture order.
    for image in t.images {
        push_view(&mut bin, &mut image.iter().copied(), None);
    }
    let (lo, hi) = bounds(t.positions);
    let mut attributes = json!({ "POSITION": 0, "NORMAL": 1, "TEXCOORD_0": 2 });
    let mut accessors = vec![
        json!({
            "bufferView": 0, "componentType": FLOAT, "count": n, "type": "VEC3",
            "min": lo.map(f64::from), "max": hi.map(f64::from),
        }),
        json!({ "bufferView": 1, "componentType": FLOAT, "count": n, "type": "VEC3" }),
        json!({ "bufferView": 2, "componentType": FLOAT, "count": n, "type": "VEC2" }),
        json!({
            "bufferView": 3, "componentType": UNSIGNED_INT,
            "count": t.indices.len(), "type": "SCALAR",
        }),
    ];
    let names = ["base_colour", "metallic_roughness", "normal"];
    let textures: Vec<_> = (0..t.images.len())
        .map(|k| json!({ "sampler": 0, "source": k, "name": names[k] }))
        .collect();
    let images: Vec<_> = (0..t.images.len())
        .map(|k| json!({ "bufferView": 4 + k, "mimeType": "image/png", "name": names[k] }))
        .collect();
    let mut material = json!({
        "name": "trellis2_pbr",
        "pbrMetallicRoughness": {
            "baseColorTexture": { "index": 0 },
            "metallicRoughnessTexture": { "index": 1 },
        },
        "alphaMode": if t.alpha_blend { "BLEND" } else { "OPAQUE" },
        "doubleSided": true,
    });
    if let Some(tangents) = t.tangents {
        ensure!(t.images.len() == 3, "export: tangents without a normal map");
        push_view(
            &mut bin,
            &mut tangents.iter().flatten().flat_map(|x| x.to_le_bytes()),
            Some(ARRAY_BUFFER),
        );
        attributes["TANGENT"] = json!(accessors.len());
        accessors.push(json!({
            "bufferView": views.len() - 1, "componentType": FLOAT, "count": n, "type": "VEC4",
        }));
        material["normalTexture"] = json!({ "index": 2 });
    }
    let doc = gltf_document(
        frame,
        attributes,
        json!({
        "materials": [material],
        "textures": textures,
        "images": images,
        "samplers": [{
            "magFilter": LINEAR,
            "minFilter": LINEAR_MIPMAP_LINEAR,
            "wrapS": CLAMP_TO_EDGE,
            "wrapT": CLAMP_TO_EDGE,
        }],
        "accessors": accessors,
        "bufferViews": views,
        "buffers": [{ "byteLength": bin.len() }],
        }),
    );
    let json = serde_json::to_vec(&doc).context("export: GLB JSON")?;
    Ok((json, bin))
}

/// The glTF document both GLBs write: the asset record (generator, frame), one scene of one node
/// of one triangle mesh (vertex `attributes`, indices in accessor 3, material 0), then `rest`'s
/// members (materials, accessors, views, buffers).
fn gltf_document(
    frame: &str,
    attributes: serde_json::Value,
    rest: serde_json::Value,
) -> serde_json::Value {
    let mut doc = json!({
        "asset": {
            "version": "2.0",
            "generator": format!("trellis2 {}", env!("CARGO_PKG_VERSION")),
            "extras": { "trellis2_frame": frame },
        },
        "scene": 0,
        "scenes": [{ "nodes": [0] }],
        "nodes": [{ "mesh": 0, "name": "trellis2" }],
        "meshes": [{
            "name": "trellis2",
            "primitives": [{
                "attributes": attributes,
                "indices": 3,
                "material": 0,
                "mode": 4,
            }],
        }],
    });
    if let (Some(doc), serde_json::Value::Object(rest)) = (doc.as_object_mut(), rest) {
        doc.extend(rest);
    }
    doc
}

/// 8-bit sRGB colour + alpha → linear RGB + alpha as normalised u16.
#[cfg(test)]
fn linear_rgba16(c: [u8; 4]) -> [u16; 4] {
    let lin = |v: u8| linear_u16(v);
    [lin(c[0]), lin(c[1]), lin(c[2]), u16::from(c[3]) * 257]
}

/// One 8-bit sRGB level as a linear normalised u16.
fn linear_u16(v: u8) -> u16 {
    (srgb_to_linear(f64::from(v) / 255.0) * 65535.0).round() as u16
}

/// [`linear_u16`] of every level (the colour channels of a vertex-colour GLB).
fn linear_rgba16_table() -> [u16; 256] {
    std::array::from_fn(|v| linear_u16(v as u8))
}

fn bounds(points: &[[f32; 3]]) -> ([f32; 3], [f32; 3]) {
    points.iter().fold(
        ([f32::INFINITY; 3], [f32::NEG_INFINITY; 3]),
        |(lo, hi), p| {
            (
                std::array::from_fn(|k| lo[k].min(p[k])),
                std::array::from_fn(|k| hi[k].max(p[k])),
            )
        },
    )
}

/// GLB container: 12-byte header, JSON chunk (space-padded), BIN chunk (zero-padded).
fn write_container(w: &mut dyn Write, json: &[u8], bin: &[u8]) -> Result<()> {
    let pad = |len: usize| (4 - len % 4) % 4;
    let (json_pad, bin_pad) = (pad(json.len()), pad(bin.len()));
    let total = 12 + 8 + json.len() + json_pad + 8 + bin.len() + bin_pad;
    ensure!(
        u32::try_from(total).is_ok(),
        "export: the GLB would be {total} bytes, over the format's 4 GiB limit"
    );
    let u32le = |v: usize| (v as u32).to_le_bytes();
    w.write_all(GLB_MAGIC)?;
    w.write_all(&GLB_VERSION.to_le_bytes())?;
    w.write_all(&u32le(total))?;
    w.write_all(&u32le(json.len() + json_pad))?;
    w.write_all(&CHUNK_JSON.to_le_bytes())?;
    w.write_all(json)?;
    w.write_all(&b"   "[..json_pad])?;
    w.write_all(&u32le(bin.len() + bin_pad))?;
    w.write_all(&CHUNK_BIN.to_le_bytes())?;
    w.write_all(bin)?;
    w.write_all(&[0u8; 3][..bin_pad])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_are_linearised_and_alpha_kept() {
        assert_eq!(linear_rgba16([0, 255, 0, 255]), [0, 65535, 0, 65535]);
        let [r, ..] = linear_rgba16([188, 0, 0, 128]);
        assert!((f64::from(r) / 65535.0 - 0.5029).abs() < 1e-3);
        assert_eq!(linear_rgba16([0, 0, 0, 128])[3], 128 * 257);
        // The darkest non-zero sRGB level stays distinct from black.
        assert!(linear_rgba16([1, 0, 0, 0])[0] > 0);
    }
}
