//! Reading a mesh to texture (`trellis2 texture`): GLB / glTF, PLY or OBJ into one triangle list
//! with optional texture coordinates, checked before any work (docs/USAGE.md "texture").
//!
//! * Every primitive / object of the file is concatenated; polygons are split into fans.
//!   Node transforms of a glTF scene are not applied: the mesh is read, and written back, in
//!   its own coordinates.
//! * Texture coordinates are kept in glTF's convention (`v` down from the image's first row).
//!   OBJ and PLY count `v` up from the bottom, so theirs are flipped on reading.
//! * GLB, glTF and PLY vertices keep their order and indices. OBJ vertices are numbered in the
//!   order the faces first use them (unused ones dropped, as the `tobj` loader does), and a
//!   vertex used with several UVs (a seam) is copied once per extra UV.
//! * Size limits ([`MAX_VERTICES`], [`MAX_FACES`]) are checked on the counts the file declares
//!   (glTF accessors, PLY header, OBJ lines), before the arrays are read.
//! * [`InputMesh::check`] refuses what cannot be textured (no vertices, no faces, indices out of
//!   range, NaN or infinite positions or UVs, zero extent) and counts what it textures anyway
//!   (non-manifold edges: the voxeliser takes any triangle soup, as upstream's does).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Most vertices accepted (16 Mi: positions, UVs and the voxeliser's per-vertex work stay a
/// few GiB).
pub const MAX_VERTICES: usize = 1 << 24;
/// Most triangles accepted (16 Mi).
pub const MAX_FACES: usize = 1 << 24;

/// A triangle mesh as read from a file, in the file's own frame and units.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InputMesh {
    pub positions: Vec<[f32; 3]>,
    pub faces: Vec<[u32; 3]>,
    /// One per vertex, glTF convention (`v` down), when the file has them.
    pub uvs: Option<Vec<[f32; 2]>>,
}

/// What [`InputMesh::check`] found that does not stop texturing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MeshCheck {
    /// Edges shared by more than two triangles.
    pub non_manifold_edges: usize,
    /// Triangles with a repeated corner index.
    pub degenerate_faces: usize,
}

impl InputMesh {
    /// Refuses a mesh that cannot be textured; counts the oddities it tolerates.
    pub fn check(&self) -> Result<MeshCheck> {
        let n = self.positions.len();
        if n == 0 {
            bail!("empty mesh: no vertices");
        }
        if self.faces.is_empty() {
            bail!("no faces: {n} vertices but no triangles to texture");
        }
        if n > MAX_VERTICES || self.faces.len() > MAX_FACES {
            bail!(
                "{} vertices and {} triangles: over the limit of {MAX_VERTICES} vertices and \
                 {MAX_FACES} triangles",
                n,
                self.faces.len()
            );
        }
        if let Some((f, &i)) = self
            .faces
            .iter()
            .enumerate()
            .find_map(|(f, t)| t.iter().find(|&&i| i as usize >= n).map(|i| (f, i)))
        {
            bail!("face {f} uses vertex {i}, but the mesh has {n} vertices");
        }
        if let Some(row) = self
            .positions
            .iter()
            .position(|p| p.iter().any(|c| !c.is_finite()))
        {
            bail!(
                "vertex {row} has a non-finite position {:?}",
                self.positions[row]
            );
        }
        if let Some(uvs) = &self.uvs {
            if uvs.len() != n {
                bail!("{} texture coordinates for {n} vertices", uvs.len());
            }
            if let Some(row) = uvs.iter().position(|t| t.iter().any(|c| !c.is_finite())) {
                bail!(
                    "vertex {row} has non-finite texture coordinates {:?}",
                    uvs[row]
                );
            }
        }
        let (mut lo, mut hi) = ([f32::INFINITY; 3], [f32::NEG_INFINITY; 3]);
        for p in &self.positions {
            for a in 0..3 {
                lo[a] = lo[a].min(p[a]);
                hi[a] = hi[a].max(p[a]);
            }
        }
        if (0..3).all(|a| hi[a] - lo[a] <= 0.0) {
            bail!("degenerate mesh: every vertex is at {lo:?} (zero extent)");
        }
        let degenerate_faces = self
            .faces
            .iter()
            .filter(|t| t[0] == t[1] || t[1] == t[2] || t[0] == t[2])
            .count();
        Ok(MeshCheck {
            non_manifold_edges: non_manifold_edges(&self.faces),
            degenerate_faces,
        })
    }
}

/// Undirected edges used by more than two triangles.
fn non_manifold_edges(faces: &[[u32; 3]]) -> usize {
    let mut uses: HashMap<(u32, u32), u8> = HashMap::with_capacity(faces.len() * 3 / 2);
    for t in faces {
        for k in 0..3 {
            let (a, b) = (t[k], t[(k + 1) % 3]);
            if a != b {
                let e = uses.entry((a.min(b), a.max(b))).or_insert(0);
                *e = e.saturating_add(1);
            }
        }
    }
    uses.values().filter(|&&c| c > 2).count()
}

/// Reads a mesh by its extension: `.glb`, `.gltf`, `.ply` or `.obj` (any case). Errors name
/// the file.
pub fn read_input_mesh(path: &Path) -> Result<InputMesh> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let mesh = match ext.as_str() {
        "glb" | "gltf" => read_gltf(path),
        "ply" => read_ply_mesh(path),
        "obj" => read_obj(path),
        _ => bail!("not a mesh file this command reads (GLB, glTF, PLY or OBJ by extension)"),
    };
    mesh.map_err(|e| {
        let msg = format!("{e:#}");
        let name = path.display().to_string();
        match msg.strip_prefix(&format!("{name}: ")) {
            Some(rest) => anyhow::anyhow!("{name}: {rest}"),
            None => anyhow::anyhow!("{name}: {msg}"),
        }
    })
}

fn over_limit(vertices: usize, faces: usize) -> Result<()> {
    if vertices > MAX_VERTICES || faces > MAX_FACES {
        bail!(
            "declares {vertices} vertices and {faces} triangles: over the limit of \
             {MAX_VERTICES} vertices and {MAX_FACES} triangles"
        );
    }
    Ok(())
}

fn read_gltf(path: &Path) -> Result<InputMesh> {
    let bytes = crate::files::read_regular(path, u64::MAX)?;
    let glb = bytes.starts_with(b"glTF");
    if glb {
        super::glb::check_position_accessors(&bytes)
    } else {
        super::glb::check_json_accessors(&bytes)
    }
    .map_err(|e| anyhow::anyhow!("not a valid glTF file: {e}"))?;
    let doc = gltf::Gltf::from_slice(&bytes).map_err(|e| anyhow::anyhow!("not glTF: {e}"))?;
    let (mut vertices, mut faces) = (0usize, 0usize);
    for prim in doc.meshes().flat_map(|m| m.primitives()) {
        let n = prim
            .get(&gltf::Semantic::Positions)
            .map_or(0, |a| a.count());
        vertices = vertices.saturating_add(n);
        faces = faces.saturating_add(prim.indices().map_or(n, |a| a.count()) / 3);
    }
    over_limit(vertices, faces)?;
    let (data, _) = if glb {
        super::glb::read_glb_bytes(&bytes, path)?
    } else {
        // A JSON glTF: its buffers and images may be separate files beside it.
        let (doc, buffers, images) =
            gltf::import(path).map_err(|e| anyhow::anyhow!("not a valid glTF file: {e}"))?;
        super::glb::mesh_from_import(&doc, &buffers, &images, path)?
    };
    if !data.indices.len().is_multiple_of(3) {
        bail!(
            "{} triangle corner indices, not whole triangles",
            data.indices.len()
        );
    }
    Ok(InputMesh {
        faces: data
            .indices
            .chunks_exact(3)
            .map(|t| [t[0], t[1], t[2]])
            .collect(),
        positions: data.positions,
        uvs: data.texcoords,
    })
}

fn read_ply_mesh(path: &Path) -> Result<InputMesh> {
    {
        let (file, _) = crate::files::open_regular(path, u64::MAX)?;
        let reader = serde_ply::PlyReader::from_reader(BufReader::new(file))
            .map_err(|e| anyhow::anyhow!("not a PLY file: {e}"))?;
        let count = |name: &str| {
            reader
                .header()
                .elem_defs
                .iter()
                .find(|d| d.name == name)
                .map_or(0, |d| d.count)
        };
        over_limit(count("vertex"), count("face"))?;
    }
    let ply = super::ply::read_ply(path)?;
    let vertex = ply
        .element("vertex")
        .context("no `vertex` element: not a mesh")?;
    let axis = |name: &str| -> Result<&[f64]> {
        vertex
            .scalars(name)
            .with_context(|| format!("the vertex element has no scalar `{name}`"))
    };
    let (x, y, z) = (axis("x")?, axis("y")?, axis("z")?);
    let positions: Vec<[f32; 3]> = (0..vertex.count)
        .map(|i| [x[i] as f32, y[i] as f32, z[i] as f32])
        .collect();
    let uv_names = [("u", "v"), ("s", "t"), ("texture_u", "texture_v")];
    let uvs = uv_names.iter().find_map(|(u, v)| {
        let (u, v) = (vertex.scalars(u)?, vertex.scalars(v)?);
        Some(
            (0..vertex.count)
                .map(|i| [u[i] as f32, 1.0 - v[i] as f32])
                .collect::<Vec<_>>(),
        )
    });
    let mut faces = Vec::new();
    if let Some(face) = ply.element("face") {
        let prop = face
            .properties
            .iter()
            .find(|p| p.name == "vertex_indices" || p.name == "vertex_index")
            .context("the face element has no `vertex_indices` list")?;
        let super::ply::Column::List(lists) = &prop.column else {
            bail!("the face property `{}` is not a list", prop.name);
        };
        for (f, list) in lists.iter().enumerate() {
            let ids: Vec<u32> = list
                .iter()
                .map(|&i| {
                    if i >= 0.0 && i <= f64::from(u32::MAX) && i.fract() == 0.0 {
                        Ok(i as u32)
                    } else {
                        bail!("face {f} has the vertex index {i}")
                    }
                })
                .collect::<Result<_>>()?;
            fan(&ids, &mut faces);
            if faces.len() > MAX_FACES {
                over_limit(positions.len(), faces.len())?;
            }
        }
    }
    Ok(InputMesh {
        positions,
        faces,
        uvs,
    })
}

/// Splits a polygon into a triangle fan around its first corner.
fn fan(ids: &[u32], out: &mut Vec<[u32; 3]>) {
    for k in 2..ids.len() {
        out.push([ids[0], ids[k - 1], ids[k]]);
    }
}

fn read_obj(path: &Path) -> Result<InputMesh> {
    // Counted on the text before the loader builds its arrays.
    let (file, _) = crate::files::open_regular(path, u64::MAX)?;
    let (mut vertices, mut faces) = (0usize, 0usize);
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).context("cannot read")?;
        if n == 0 {
            break;
        }
        let text = line.trim_ascii_start();
        if text.starts_with(b"v ") || text.starts_with(b"v\t") {
            vertices += 1;
        } else if text.starts_with(b"f ") || text.starts_with(b"f\t") {
            faces += text
                .split(|b| b.is_ascii_whitespace())
                .filter(|w| !w.is_empty())
                .count()
                .saturating_sub(3);
        }
    }
    over_limit(vertices, faces)?;
    let (file, _) = crate::files::open_regular(path, u64::MAX)?;
    // Separate position and UV indices: single-index loading would also split vertices by
    // their normals, and the normals are not needed.
    let options = tobj::LoadOptions {
        single_index: false,
        triangulate: true,
        ignore_points: true,
        ignore_lines: true,
    };
    // Materials are not read: the textures are what this command makes.
    let (models, _) = tobj::load_obj_buf(&mut BufReader::new(file), &options, |_| {
        Err(tobj::LoadError::OpenFileFailed)
    })
    .map_err(|e| anyhow::anyhow!("not a readable OBJ file: {e}"))?;
    let mut mesh = InputMesh::default();
    let mut uvs: Vec<[f32; 2]> = Vec::new();
    let all_uvs = models.iter().all(|m| {
        !m.mesh.texcoords.is_empty() && m.mesh.texcoord_indices.len() == m.mesh.indices.len()
    });
    for model in &models {
        let m = &model.mesh;
        let base = mesh.positions.len();
        let n = m.positions.len() / 3;
        over_limit(base + n, mesh.faces.len() + m.indices.len() / 3)?;
        mesh.positions
            .extend(m.positions.chunks_exact(3).map(|p| [p[0], p[1], p[2]]));
        let mut corners: Vec<u32> = Vec::with_capacity(m.indices.len());
        if all_uvs {
            // One UV per vertex: a vertex used with a second UV (a seam) is copied.
            let texcoord = |t: u32| -> Result<[f32; 2]> {
                let t = t as usize;
                match m.texcoords.get(2 * t..2 * t + 2) {
                    Some(uv) => Ok([uv[0], 1.0 - uv[1]]),
                    None => bail!("texture coordinate index {t} out of range"),
                }
            };
            let mut first: Vec<Option<u32>> = vec![None; n];
            uvs.resize(base + n, [0.0; 2]);
            let mut copies: HashMap<(u32, u32), u32> = HashMap::new();
            for (&p, &t) in m.indices.iter().zip(&m.texcoord_indices) {
                let slot = first
                    .get_mut(p as usize)
                    .context("vertex index out of range")?;
                let index = match *slot {
                    None => {
                        *slot = Some(t);
                        uvs[base + p as usize] = texcoord(t)?;
                        base + p as usize
                    }
                    Some(t0) if t0 == t => base + p as usize,
                    Some(_) => match copies.get(&(p, t)) {
                        Some(&i) => i as usize,
                        None => {
                            let i = mesh.positions.len();
                            over_limit(i + 1, 0)?;
                            mesh.positions.push(mesh.positions[base + p as usize]);
                            uvs.push(texcoord(t)?);
                            copies.insert((p, t), i as u32);
                            i
                        }
                    },
                };
                corners.push(u32::try_from(index).context("vertex index past u32")?);
            }
        } else {
            for &p in &m.indices {
                corners.push(u32::try_from(base + p as usize).context("vertex index past u32")?);
            }
        }
        mesh.faces
            .extend(corners.chunks_exact(3).map(|t| [t[0], t[1], t[2]]));
    }
    if all_uvs && !models.is_empty() {
        mesh.uvs = Some(uvs);
    }
    Ok(mesh)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tetra() -> InputMesh {
        InputMesh {
            positions: vec![
                [0.0, 0.0, 0.0],
                [1.0, 0.0, 0.0],
                [0.0, 1.0, 0.0],
                [0.0, 0.0, 1.0],
            ],
            faces: vec![[0, 2, 1], [0, 1, 3], [1, 2, 3], [0, 3, 2]],
            uvs: None,
        }
    }

    #[test]
    fn a_closed_mesh_passes_and_bad_ones_are_named() {
        assert_eq!(tetra().check().unwrap(), MeshCheck::default());
        let mut m = tetra();
        m.faces[1][2] = 9;
        assert!(m.check().unwrap_err().to_string().contains("vertex 9"));
        let mut m = tetra();
        m.positions[2][1] = f32::NAN;
        assert!(m.check().unwrap_err().to_string().contains("vertex 2"));
        let mut m = tetra();
        m.faces.clear();
        assert!(m.check().unwrap_err().to_string().contains("no faces"));
        let m = InputMesh {
            positions: vec![[1.0; 3]; 3],
            faces: vec![[0, 1, 2]],
            uvs: None,
        };
        assert!(m.check().unwrap_err().to_string().contains("zero extent"));
    }

    #[test]
    fn a_fin_on_an_edge_is_counted_non_manifold() {
        let mut m = tetra();
        m.positions.push([1.0, 1.0, 1.0]);
        m.faces.push([0, 1, 4]);
        assert_eq!(m.check().unwrap().non_manifold_edges, 1);
    }

    #[test]
    fn obj_keeps_one_uv_per_vertex_and_copies_seam_vertices() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quad.obj");
        // Two triangles sharing the edge 1-3; vertex 3 has a different UV in the second.
        let text = "v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 1 1\n\
                    vt 0 1\nvt 0.5 0.5\nvn 0 0 1\nf 1/1/1 2/2/1 3/3/1\nf 1/1/1 3/5/1 4/4/1\n";
        std::fs::write(&path, text).unwrap();
        let m = read_input_mesh(&path).unwrap();
        assert_eq!(m.positions.len(), 5, "4 vertices + 1 seam copy");
        assert_eq!(m.positions[4], m.positions[2]);
        assert_eq!(m.faces, vec![[0, 1, 2], [0, 4, 3]]);
        let uvs = m.uvs.unwrap();
        assert_eq!(uvs[2], [1.0, 0.0], "v flipped to glTF's convention");
        assert_eq!(uvs[4], [0.5, 0.5]);
    }

    #[test]
    fn polygons_become_fans() {
        let mut out = Vec::new();
        fan(&[5, 6, 7, 8], &mut out);
        assert_eq!(out, vec![[5, 6, 7], [5, 7, 8]]);
    }
}
