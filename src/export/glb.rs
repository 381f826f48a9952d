//! Reading glTF binaries (GLB) back into plain arrays, for `inspect`, `compare` and `render`.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// A triangle mesh as plain arrays (every primitive of a file concatenated, indices rebased).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeshData {
    pub positions: Vec<[f32; 3]>,
    /// Triangle corner indices, three per face.
    pub indices: Vec<u32>,
    /// Linear RGBA vertex colours, when present.
    pub colors: Option<Vec<[f32; 4]>>,
    /// `TEXCOORD_0` per vertex, when some primitive has it (zeros for those without).
    pub texcoords: Option<Vec<[f32; 2]>>,
    /// The first primitive's material: `baseColorFactor` (linear RGBA).
    pub base_color_factor: Option<[f32; 4]>,
    /// The first primitive's material: its `baseColorTexture`, when it has one.
    pub base_color_texture: Option<TextureImage>,
}

/// An image as the file stores it: 8-bit, `channels` (1 to 4) bytes per pixel, row-major,
/// sRGB-encoded for a base-colour texture (glTF's rule).
#[derive(Debug, Clone, PartialEq)]
pub struct TextureImage {
    pub width: u32,
    pub height: u32,
    pub channels: usize,
    pub pixels: Vec<u8>,
}

impl MeshData {
    pub fn triangle_count(&self) -> usize {
        self.indices.len() / 3
    }

    /// Per-axis (min, max) of the positions.
    pub fn bounds(&self) -> Option<[(f32, f32); 3]> {
        let first = self.positions.first()?;
        let mut b = [
            (first[0], first[0]),
            (first[1], first[1]),
            (first[2], first[2]),
        ];
        for p in &self.positions {
            for a in 0..3 {
                b[a].0 = b[a].0.min(p[a]);
                b[a].1 = b[a].1.max(p[a]);
            }
        }
        Some(b)
    }
}

/// gltf 1.4.1 panics on some malformed files instead of reporting them (found by
/// tests/fuzz.rs): validation indexes `accessors[POSITION]` before checking that accessor
/// exists, and reading indices whose accessor is not an unsigned integer scalar hits an
/// `unreachable!`. Those references are checked here first, on the JSON chunk (which the
/// format requires to be UTF-8 JSON); anything else malformed is left to the library, which
/// reports it.
pub(crate) fn check_position_accessors(bytes: &[u8]) -> Result<()> {
    let u32_at = |i: usize| {
        bytes
            .get(i..i + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    // The header's declared length counts the header's own 12 bytes: `gltf` subtracts them
    // unchecked (an overflow, a panic in a checked build).
    if bytes.starts_with(b"glTF") {
        match u32_at(8) {
            Some(declared) if declared >= 12 => {}
            Some(declared) => {
                bail!("its header declares {declared} bytes, fewer than the header's 12")
            }
            None => bail!("its 12-byte header is cut short ({} bytes)", bytes.len()),
        }
    }
    let (Some(len), Some(b"JSON")) = (u32_at(12), bytes.get(16..20)) else {
        return Ok(());
    };
    let Some(json) = bytes.get(20..20usize.saturating_add(len)) else {
        return Ok(());
    };
    check_json_accessors(json)
}

/// [`check_position_accessors`] on a glTF JSON document (a `.gltf` file, or a GLB's JSON chunk).
pub(crate) fn check_json_accessors(json: &[u8]) -> Result<()> {
    let doc: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| anyhow::anyhow!("the JSON chunk is not UTF-8 JSON: {e}"))?;
    let accessors: &[serde_json::Value] = doc
        .get("accessors")
        .and_then(|a| a.as_array())
        .map_or(&[], Vec::as_slice);
    let accessor = |what: &str, i: &serde_json::Value| -> Result<&serde_json::Value> {
        i.as_u64()
            .and_then(|i| accessors.get(i as usize))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{what} names accessor {i}, but the file has {} accessors",
                    accessors.len()
                )
            })
    };
    let meshes = doc.get("meshes").and_then(|m| m.as_array());
    for primitive in meshes
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("primitives").and_then(|p| p.as_array()))
        .flatten()
    {
        if let Some(attributes) = primitive.get("attributes").and_then(|a| a.as_object()) {
            for (name, i) in attributes {
                let a = accessor(name, i)?;
                let kind = a.get("type").and_then(|t| t.as_str()).unwrap_or("");
                let component = a.get("componentType").and_then(|c| c.as_u64()).unwrap_or(0);
                if !attribute_layout_allowed(name, kind, component) {
                    bail!("attribute {name} has a {kind} of component type {component}, which glTF does not allow");
                }
            }
        }
        if let Some(i) = primitive.get("indices") {
            let a = accessor("indices", i)?;
            let component = a.get("componentType").and_then(|c| c.as_u64());
            let scalar = a.get("type").and_then(|t| t.as_str()) == Some("SCALAR");
            if !matches!(component, Some(5121 | 5123 | 5125)) || !scalar {
                bail!("the indices accessor is not a scalar of unsigned integers");
            }
        }
    }
    Ok(())
}

/// The accessor types and component types glTF 2.0 allows for each standard attribute
/// (the Khronos glTF 2.0 specification, "Meshes" → "Overview": the table of mesh attributes);
/// other (application) attributes are not read, so not checked.
fn attribute_layout_allowed(name: &str, kind: &str, component: u64) -> bool {
    const FLOAT: u64 = 5126;
    const UBYTE: u64 = 5121;
    const USHORT: u64 = 5123;
    let base = name.split('_').next().unwrap_or(name);
    match base {
        "POSITION" | "NORMAL" => kind == "VEC3" && component == FLOAT,
        "TANGENT" => kind == "VEC4" && component == FLOAT,
        "TEXCOORD" => kind == "VEC2" && matches!(component, FLOAT | UBYTE | USHORT),
        "COLOR" => matches!(kind, "VEC3" | "VEC4") && matches!(component, FLOAT | UBYTE | USHORT),
        "JOINTS" => kind == "VEC4" && matches!(component, UBYTE | USHORT),
        "WEIGHTS" => kind == "VEC4" && matches!(component, FLOAT | UBYTE | USHORT),
        _ => true,
    }
}

/// What `inspect` shows about a GLB beyond the geometry.
#[derive(Debug, Clone, Default)]
pub struct GlbSummary {
    pub meshes: usize,
    pub primitives: usize,
    pub materials: Vec<String>,
    pub textures: usize,
    pub generator: Option<String>,
}

/// Reads every triangle primitive of a GLB file.
pub fn read_glb(path: &Path) -> Result<(MeshData, GlbSummary)> {
    let bytes = crate::files::read_regular(path, u64::MAX)?;
    read_glb_bytes(&bytes, path)
}

/// [`read_glb`] of a file's bytes already in memory; `path` names it in errors.
pub fn read_glb_bytes(bytes: &[u8], path: &Path) -> Result<(MeshData, GlbSummary)> {
    check_position_accessors(bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a valid glTF binary: {e}", path.display()))?;
    let (doc, buffers, images) = gltf::import_slice(bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a valid glTF binary: {e}", path.display()))?;
    mesh_from_import(&doc, &buffers, &images, path)
}

/// Every triangle primitive of an imported glTF document; `path` names it in errors.
pub(crate) fn mesh_from_import(
    doc: &gltf::Document,
    buffers: &[gltf::buffer::Data],
    images: &[gltf::image::Data],
    path: &Path,
) -> Result<(MeshData, GlbSummary)> {
    let mut mesh = MeshData::default();
    let mut summary = GlbSummary {
        meshes: doc.meshes().len(),
        textures: doc.textures().len(),
        generator: doc.as_json().asset.generator.clone(),
        materials: doc
            .materials()
            .map(|m| {
                let pbr = m.pbr_metallic_roughness();
                format!(
                    "{} (base colour {:?}, metallic {}, roughness {}, alpha {:?})",
                    m.name().unwrap_or("unnamed"),
                    pbr.base_color_factor(),
                    pbr.metallic_factor(),
                    pbr.roughness_factor(),
                    m.alpha_mode()
                )
            })
            .collect(),
        ..Default::default()
    };
    let mut any_colors = false;
    let mut texcoords: Vec<[f32; 2]> = Vec::new();
    let mut any_texcoords = false;
    for m in doc.meshes() {
        for prim in m.primitives() {
            summary.primitives += 1;
            if prim.mode() != gltf::mesh::Mode::Triangles {
                bail!(
                    "{}: primitive mode {:?} is not supported (triangles only)",
                    path.display(),
                    prim.mode()
                );
            }
            let reader = prim.reader(|b| buffers.get(b.index()).map(|d| d.0.as_slice()));
            let base = mesh.positions.len() as u32;
            let Some(positions) = reader.read_positions() else {
                match prim.get(&gltf::Semantic::Positions) {
                    None => bail!("{}: a primitive has no POSITION attribute", path.display()),
                    Some(a) => bail!(
                        "{}: the POSITION accessor ({} elements) does not fit in its buffer",
                        path.display(),
                        a.count()
                    ),
                }
            };
            let positions: Vec<[f32; 3]> = positions.collect();
            let n = positions.len() as u32;
            match reader.read_indices() {
                Some(ix) => mesh.indices.extend(ix.into_u32().map(|i| base + i)),
                None => mesh.indices.extend(base..base + n),
            }
            let colors: Vec<[f32; 4]> = match reader.read_colors(0) {
                Some(c) => {
                    any_colors = true;
                    c.into_rgba_f32().collect()
                }
                None => vec![[1.0; 4]; n as usize],
            };
            match reader.read_tex_coords(0) {
                Some(uv) => {
                    any_texcoords = true;
                    texcoords.extend(uv.into_f32());
                }
                None => texcoords.extend(std::iter::repeat_n([0.0; 2], n as usize)),
            }
            if summary.primitives == 1 {
                let pbr = prim.material().pbr_metallic_roughness();
                mesh.base_color_factor = Some(pbr.base_color_factor());
                if let Some(info) = pbr.base_color_texture() {
                    let index = info.texture().source().index();
                    let image = images.get(index).with_context(|| {
                        format!("{}: texture image {index} is missing", path.display())
                    })?;
                    mesh.base_color_texture = Some(texture_image(path, image)?);
                }
            }
            mesh.positions.extend(positions);
            mesh.colors.get_or_insert_with(Vec::new).extend(colors);
        }
    }
    if !any_colors {
        mesh.colors = None;
    }
    if any_texcoords {
        if texcoords.len() != mesh.positions.len() {
            bail!(
                "{}: {} texture coordinates for {} vertices",
                path.display(),
                texcoords.len(),
                mesh.positions.len()
            );
        }
        mesh.texcoords = Some(texcoords);
    }
    if let Some(&bad) = mesh
        .indices
        .iter()
        .find(|&&i| i as usize >= mesh.positions.len())
    {
        bail!(
            "{}: index {bad} out of range ({} vertices)",
            path.display(),
            mesh.positions.len()
        );
    }
    Ok((mesh, summary))
}

/// A decoded glTF image as 8-bit channels (16-bit ones keep their high byte).
fn texture_image(path: &Path, image: &gltf::image::Data) -> Result<TextureImage> {
    use gltf::image::Format;
    let (channels, wide) = match image.format {
        Format::R8 => (1, false),
        Format::R8G8 => (2, false),
        Format::R8G8B8 => (3, false),
        Format::R8G8B8A8 => (4, false),
        Format::R16 => (1, true),
        Format::R16G16 => (2, true),
        Format::R16G16B16 => (3, true),
        Format::R16G16B16A16 => (4, true),
        other => bail!(
            "{}: base-colour texture format {other:?} is not supported",
            path.display()
        ),
    };
    let pixels: Vec<u8> = if wide {
        // Native-endian u16 per channel, as the decoder leaves them.
        image
            .pixels
            .chunks_exact(2)
            .map(|b| (u16::from_ne_bytes([b[0], b[1]]) >> 8) as u8)
            .collect()
    } else {
        image.pixels.clone()
    };
    if pixels.len() != image.width as usize * image.height as usize * channels {
        bail!(
            "{}: texture image holds {} bytes for {}×{}×{channels}",
            path.display(),
            pixels.len(),
            image.width,
            image.height
        );
    }
    Ok(TextureImage {
        width: image.width,
        height: image.height,
        channels,
        pixels,
    })
}
