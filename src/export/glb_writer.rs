//! The mesh as glTF 2.0 binary (GLB): one mesh, one triangle primitive, one PBR
//! metallic-roughness material, vertex colours.
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

use anyhow::{ensure, Context, Result};
use serde_json::json;

use super::asset::{Asset, METALLIC, ROUGHNESS};
use super::color::srgb_to_linear;
use super::frame::Up;
use super::mesh_arrays::MeshArrays;
use super::write_atomic;

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

/// Writes the mesh of `asset` as GLB to `path` atomically. Fails on a mesh without triangles.
pub fn write_glb(path: &Path, asset: &Asset, up: Up) -> Result<()> {
    let arrays = MeshArrays::new(asset, up)?;
    let (json, bin) = glb_chunks(asset, &arrays, up)?;
    write_atomic(path, |w| write_container(w, &json, &bin))
        .with_context(|| format!("{}: cannot write the GLB", path.display()))
}

/// The JSON document and the binary buffer.
fn glb_chunks(asset: &Asset, arrays: &MeshArrays, up: Up) -> Result<(Vec<u8>, Vec<u8>)> {
    let n = arrays.positions.len();
    let mut bin = Vec::with_capacity(n * (12 + 12 + 8) + arrays.faces.len() * 12);
    let mut views = Vec::new();
    let mut push_view = |bin: &mut Vec<u8>, bytes: &mut dyn Iterator<Item = u8>, target: u32| {
        let offset = bin.len();
        bin.extend(bytes);
        views.push(json!({
            "buffer": 0,
            "byteOffset": offset,
            "byteLength": bin.len() - offset,
            "target": target,
        }));
    };
    let le_f32 =
        |v: &[[f32; 3]]| -> Vec<u8> { v.iter().flatten().flat_map(|x| x.to_le_bytes()).collect() };
    push_view(
        &mut bin,
        &mut le_f32(&arrays.positions).into_iter(),
        ARRAY_BUFFER,
    );
    push_view(
        &mut bin,
        &mut le_f32(&arrays.normals).into_iter(),
        ARRAY_BUFFER,
    );
    push_view(
        &mut bin,
        &mut arrays
            .rgba8
            .iter()
            .flat_map(|c| linear_rgba16(*c))
            .flat_map(u16::to_le_bytes),
        ARRAY_BUFFER,
    );
    push_view(
        &mut bin,
        &mut arrays.faces.iter().flatten().flat_map(|i| i.to_le_bytes()),
        ELEMENT_ARRAY_BUFFER,
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
    let doc = json!({
        "asset": {
            "version": "2.0",
            "generator": format!("trellis2 {}", env!("CARGO_PKG_VERSION")),
            "extras": { "trellis2_frame": up.describe() },
        },
        "scene": 0,
        "scenes": [{ "nodes": [0] }],
        "nodes": [{ "mesh": 0, "name": "trellis2" }],
        "meshes": [{
            "name": "trellis2",
            "primitives": [{
                "attributes": { "POSITION": 0, "NORMAL": 1, "COLOR_0": 2 },
                "indices": 3,
                "material": 0,
                "mode": 4,
            }],
        }],
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
    });
    let json = serde_json::to_vec(&doc).context("export: GLB JSON")?;
    Ok((json, bin))
}

/// 8-bit sRGB colour + alpha → linear RGB + alpha as normalised u16.
fn linear_rgba16(c: [u8; 4]) -> [u16; 4] {
    let lin = |v: u8| (srgb_to_linear(f64::from(v) / 255.0) * 65535.0).round() as u16;
    [lin(c[0]), lin(c[1]), lin(c[2]), u16::from(c[3]) * 257]
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
