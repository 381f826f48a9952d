//! The mesh as a binary little-endian PLY with vertex colours, written with serde-ply:
//! `vertex { float x y z; uchar red green blue alpha }`, `face { list uchar int
//! vertex_indices }`. Colours are 8-bit sRGB base colour and alpha sampled from the voxels;
//! triangles are wound outward ([`super::face_orientation`]); positions are in the [`Up`] frame.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use serde::ser::{Serialize, SerializeSeq, Serializer};

use super::asset::Asset;
use super::frame::Up;
use super::mesh_arrays::MeshArrays;
use super::ply_header::encode_ply;
use super::write_atomic;

#[derive(serde::Serialize)]
struct VertexRow {
    x: f32,
    y: f32,
    z: f32,
    red: u8,
    green: u8,
    blue: u8,
    alpha: u8,
}

/// Three corner indices, written as a PLY list of `int` (serde-ply writes sequences as lists
/// with a `uchar` count).
struct Triangle([i32; 3]);

impl Serialize for Triangle {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(3))?;
        for i in self.0 {
            seq.serialize_element(&i)?;
        }
        seq.end()
    }
}

#[derive(serde::Serialize)]
struct FaceRow {
    vertex_indices: Triangle,
}

#[derive(serde::Serialize)]
struct MeshFile {
    vertex: Vec<VertexRow>,
    face: Vec<FaceRow>,
}

/// Writes the mesh of `asset` to `path` atomically. Fails on a mesh without triangles.
pub fn write_mesh_ply(path: &Path, asset: &Asset, up: Up) -> Result<()> {
    let arrays = MeshArrays::new(asset, up)?;
    let file = mesh_file(&arrays)?;
    write_atomic(path, |w| {
        encode_ply(
            &file,
            "vertex colours: sRGB base colour and alpha sampled from the O-Voxels",
            up,
            w,
        )
    })
    .with_context(|| format!("{}: cannot write the mesh PLY", path.display()))
}

fn mesh_file(arrays: &MeshArrays) -> Result<MeshFile> {
    // Indices are written as PLY `int` (the type every reader accepts), i.e. i32.
    ensure!(
        arrays.positions.len() <= i32::MAX as usize,
        "export: {} vertices exceed the PLY int index range",
        arrays.positions.len()
    );
    let vertex = arrays
        .positions
        .iter()
        .zip(&arrays.rgba8)
        .map(|(p, c)| VertexRow {
            x: p[0],
            y: p[1],
            z: p[2],
            red: c[0],
            green: c[1],
            blue: c[2],
            alpha: c[3],
        })
        .collect();
    let face = arrays
        .faces
        .iter()
        .map(|f| FaceRow {
            vertex_indices: Triangle(f.map(|i| i as i32)),
        })
        .collect();
    Ok(MeshFile { vertex, face })
}
