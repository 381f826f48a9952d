//! Reading glTF binaries (GLB) back into plain arrays, for `inspect` and `compare`.

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
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let (doc, buffers, _images) = gltf::import_slice(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a valid glTF binary: {e}", path.display()))?;
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
                bail!("{}: a primitive has no POSITION attribute", path.display());
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
            mesh.positions.extend(positions);
            mesh.colors.get_or_insert_with(Vec::new).extend(colors);
        }
    }
    if !any_colors {
        mesh.colors = None;
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
