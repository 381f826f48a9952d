//! Files into scenes: GLB (vertex colours or a base-colour texture), mesh PLY (sRGB vertex
//! colours), Gaussian-splat PLY in the INRIA 3DGS layout (`x y z`, `f_dc_0..2`,
//! `f_rest_*` for SH degree 1–3, `opacity`, `scale_0..2`, `rot_0..3`; ours or any trainer's)
//! and Niantic's SPZ (versions 2 and 3, [`crate::export::spz`]).
//!
//! Splat files are large (millions of rows), so a binary little-endian file whose first element
//! is `vertex` with scalar properties only is read straight from a memory map; any other PLY
//! goes through the general reader ([`crate::export::ply`]).

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;

use super::mesh::{RenderMesh, Texture};
use super::splat::Splats;
use crate::compare::mesh_from_ply;
use crate::export::glb::{read_glb, MeshData};
use crate::export::ply::read_ply;
use crate::export::spz::{read_spz, spz_columns};

/// Something to draw.
#[derive(Clone, Debug, PartialEq)]
pub enum Scene {
    Mesh(RenderMesh),
    Splats(Splats),
}

impl Scene {
    /// Per-axis (min, max) of what is drawn; fails when there is nothing.
    pub fn bounds(&self) -> Result<([f64; 3], [f64; 3])> {
        match self {
            Scene::Mesh(m) => m.bounds().context("the mesh has no triangles"),
            Scene::Splats(s) => s.bounds().context("the file has no splats"),
        }
    }

    /// "mesh (N triangles)" / "splats (N, SH degree d)".
    pub fn describe(&self) -> String {
        match self {
            Scene::Mesh(m) => format!(
                "mesh ({} triangles{})",
                m.triangles.len(),
                if m.texture.is_some() && m.texcoords.is_some() {
                    ", textured"
                } else if m.colors.is_some() {
                    ", vertex colours"
                } else {
                    ""
                }
            ),
            Scene::Splats(s) => format!("{} splats, SH degree {}", s.len(), s.sh_degree),
        }
    }
}

/// Reads a `.glb`, `.ply` (splats or a triangle mesh) or `.spz` file. Errors name the file.
pub fn load_scene(path: &Path) -> Result<Scene> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let scene = match ext.as_str() {
        "glb" => {
            let (mesh, _) = read_glb(path)?;
            Scene::Mesh(mesh_from_data(&mesh).with_context(|| path.display().to_string())?)
        }
        "ply" => load_ply(path)?,
        "spz" => Scene::Splats(
            splats_from_columns(&spz_columns(&read_spz(path)?))
                .with_context(|| path.display().to_string())?,
        ),
        _ => bail!(
            "{}: unknown file type (expected .glb, .ply or .spz)",
            path.display()
        ),
    };
    scene.bounds().with_context(|| path.display().to_string())?;
    Ok(scene)
}

/// A GLB's or mesh PLY's arrays as a drawable mesh (indices checked).
pub fn mesh_from_data(m: &MeshData) -> Result<RenderMesh> {
    ensure!(
        m.indices.len().is_multiple_of(3),
        "{} indices is not a whole number of triangles",
        m.indices.len()
    );
    if let Some(&bad) = m.indices.iter().find(|&&i| i as usize >= m.positions.len()) {
        bail!("index {bad} out of range ({} vertices)", m.positions.len());
    }
    if let Some(i) = m
        .positions
        .iter()
        .position(|p| p.iter().any(|v| !v.is_finite()))
    {
        bail!("vertex {i} is not finite");
    }
    Ok(RenderMesh {
        positions: m.positions.clone(),
        triangles: m
            .indices
            .chunks_exact(3)
            .map(|t| [t[0], t[1], t[2]])
            .collect(),
        colors: m
            .colors
            .as_ref()
            .map(|c| c.iter().map(|v| [v[0], v[1], v[2]]).collect()),
        texcoords: m.texcoords.clone(),
        texture: m
            .base_color_texture
            .as_ref()
            .map(|t| Texture::from_srgb8(t.width, t.height, t.channels, &t.pixels)),
        base_color_factor: m.base_color_factor.map(|f| [f[0], f[1], f[2]]),
    })
}

/// Scalar type sizes of PLY's type names (classic and sized spellings).
fn type_size(name: &str) -> Option<usize> {
    Some(match name {
        "char" | "uchar" | "int8" | "uint8" => 1,
        "short" | "ushort" | "int16" | "uint16" => 2,
        "int" | "uint" | "float" | "int32" | "uint32" | "float32" => 4,
        "double" | "float64" => 8,
        _ => return None,
    })
}

/// The little-endian reader of a PLY scalar type, as a value in `f64` (exact for every type).
fn reader(name: &str) -> fn(&[u8]) -> f64 {
    match name {
        "char" | "int8" => |b| f64::from(b[0] as i8),
        "uchar" | "uint8" => |b| f64::from(b[0]),
        "short" | "int16" => |b| f64::from(i16::from_le_bytes([b[0], b[1]])),
        "ushort" | "uint16" => |b| f64::from(u16::from_le_bytes([b[0], b[1]])),
        "int" | "int32" => |b| f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        "uint" | "uint32" => |b| f64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        "float" | "float32" => |b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        _ => |b| f64::from_le_bytes(std::array::from_fn(|k| b[k])),
    }
}

/// (element name, row count, properties as (name, type or "list …")).
type ElementDecl = (String, usize, Vec<(String, String)>);

/// What a PLY header says, as far as choosing the reader goes.
struct Header {
    binary_le: bool,
    elements: Vec<ElementDecl>,
    body: usize,
}

fn parse_header(bytes: &[u8]) -> Option<Header> {
    let end = bytes.windows(11).position(|w| w == b"end_header\n")? + 11;
    let text = std::str::from_utf8(&bytes[..end]).ok()?;
    let mut lines = text.lines();
    if lines.next()?.trim() != "ply" {
        return None;
    }
    let mut h = Header {
        binary_le: false,
        elements: Vec::new(),
        body: end,
    };
    for line in lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["format", f, ..] => h.binary_le = *f == "binary_little_endian",
            ["element", name, count] => {
                h.elements
                    .push((name.to_string(), count.parse().ok()?, vec![]))
            }
            ["property", "list", a, b, name] => h
                .elements
                .last_mut()?
                .2
                .push((name.to_string(), format!("list {a} {b}"))),
            ["property", t, name] => h
                .elements
                .last_mut()?
                .2
                .push((name.to_string(), t.to_string())),
            _ => {}
        }
    }
    Some(h)
}

fn load_ply(path: &Path) -> Result<Scene> {
    let file = crate::files::open_regular(path, u64::MAX)?.0;
    // SAFETY: the map is read-only and dropped before this function returns; a file changed
    // underneath by another process can only give wrong values, which are checked below.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let header =
        parse_header(&map).with_context(|| format!("{}: not a PLY file", path.display()))?;
    let vertex = header.elements.iter().find(|e| e.0 == "vertex");
    let has = |n: &str| vertex.is_some_and(|v| v.2.iter().any(|p| p.0 == n));
    let splat = ["x", "f_dc_0", "opacity", "scale_0", "rot_0"]
        .iter()
        .all(|p| has(p));
    if splat {
        let (_, count, props) = vertex.expect("checked");
        let fast = header.binary_le
            && header.elements[0].0 == "vertex"
            && props.iter().all(|p| type_size(&p.1).is_some());
        let columns = if fast {
            let stride: usize = props.iter().map(|p| type_size(&p.1).unwrap_or(0)).sum();
            let need = count
                .checked_mul(stride)
                .and_then(|n| n.checked_add(header.body));
            ensure!(
                need.is_some_and(|n| n <= map.len()),
                "{}: truncated PLY data ({count} splats of {stride} bytes declared)",
                path.display()
            );
            let body = &map[header.body..];
            let offsets: Vec<usize> = props
                .iter()
                .scan(0, |at, p| {
                    let here = *at;
                    *at += type_size(&p.1).unwrap_or(0);
                    Some(here)
                })
                .collect();
            // Columns side by side; each column's type is looked up once, not per value.
            props
                .par_iter()
                .zip(offsets)
                .map(|((name, ty), offset)| {
                    let read = reader(ty);
                    let size = type_size(ty).unwrap_or(0);
                    let values: Vec<f32> = (0..*count)
                        .map(|i| read(&body[i * stride + offset..][..size]) as f32)
                        .collect();
                    (name.clone(), values)
                })
                .collect::<Vec<_>>()
        } else {
            drop(map);
            let ply = read_ply(path)?;
            let v = ply.element("vertex").context("no vertex element")?;
            v.properties
                .iter()
                .filter_map(|p| {
                    let s = v.scalars(&p.name)?;
                    Some((p.name.clone(), s.iter().map(|&x| x as f32).collect()))
                })
                .collect()
        };
        return Ok(Scene::Splats(
            splats_from_columns(&columns).with_context(|| path.display().to_string())?,
        ));
    }
    let is_mesh = has("x") && header.elements.iter().any(|e| e.0 == "face" && e.1 > 0);
    if !is_mesh {
        bail!(
            "{}: neither Gaussian splats (x, f_dc_0, opacity, scale_0, rot_0) nor a triangle mesh \
             (vertex x y z and faces)",
            path.display()
        );
    }
    drop(map);
    let ply = read_ply(path)?;
    let data = mesh_from_ply(&ply).with_context(|| path.display().to_string())?;
    Ok(Scene::Mesh(
        mesh_from_data(&data).with_context(|| path.display().to_string())?,
    ))
}

/// 3DGS's columns, activated.
pub fn splats_from_columns(columns: &[(String, Vec<f32>)]) -> Result<Splats> {
    let col = |n: &str| -> Result<&[f32]> {
        columns
            .iter()
            .find(|c| c.0 == n)
            .map(|c| c.1.as_slice())
            .with_context(|| format!("no vertex property `{n}`"))
    };
    let rest = (0..)
        .take_while(|k| columns.iter().any(|c| c.0 == format!("f_rest_{k}")))
        .count();
    let degree = match rest {
        0 => 0,
        9 => 1,
        24 => 2,
        45 => 3,
        n => bail!("{n} f_rest_* properties; SH degree 1, 2 or 3 needs 9, 24 or 45"),
    };
    let per_channel = rest / 3;
    let k = per_channel + 1;
    let (x, y, z) = (col("x")?, col("y")?, col("z")?);
    let dc = [col("f_dc_0")?, col("f_dc_1")?, col("f_dc_2")?];
    let rest_cols: Vec<&[f32]> = (0..rest)
        .map(|j| col(&format!("f_rest_{j}")))
        .collect::<Result<_>>()?;
    let opacity = col("opacity")?;
    let scale = [col("scale_0")?, col("scale_1")?, col("scale_2")?];
    let rot = [col("rot_0")?, col("rot_1")?, col("rot_2")?, col("rot_3")?];
    let n = x.len();
    let mut s = Splats {
        positions: Vec::with_capacity(n),
        scales: Vec::with_capacity(n),
        rotations: Vec::with_capacity(n),
        opacities: Vec::with_capacity(n),
        sh_degree: degree,
        sh: Vec::with_capacity(n * k * 3),
    };
    for i in 0..n {
        let p = [x[i], y[i], z[i]];
        let sc = scale.map(|c| c[i].exp());
        let q = rot.map(|c| c[i]);
        let o = opacity[i];
        let finite = p.iter().chain(&sc).chain(&q).all(|v| v.is_finite()) && !o.is_nan();
        ensure!(
            finite,
            "splat {i} has a non-finite position, scale, rotation or opacity"
        );
        let len = q.iter().map(|v| v * v).sum::<f32>().sqrt();
        s.positions.push(p);
        s.scales.push(sc);
        s.rotations.push(if len > 0.0 {
            q.map(|v| v / len)
        } else {
            [1.0, 0.0, 0.0, 0.0]
        });
        s.opacities.push(1.0 / (1.0 + (-o).exp()));
        s.sh.extend(dc.map(|c| c[i]));
        for j in 0..per_channel {
            // INRIA stores f_rest channel-major: f_rest_{c·(K−1) + j}.
            s.sh.extend((0..3).map(|c| rest_cols[c * per_channel + j][i]));
        }
    }
    ensure!(
        s.sh.iter().all(|v| v.is_finite()),
        "a splat has a non-finite SH coefficient"
    );
    Ok(s)
}
