//! `trellis2 dev voxelise`: the mesh → flexible dual grid voxeliser on tensors, under the names
//! of upstream's `mesh_to_flexible_dual_grid` (and of the golden files): `vertices` `[V, 3]`
//! (already normalised into `[-0.5, 0.5]³`) and `faces` `[F, 3]` in, `voxel_indices` `[N, 3]`
//! i32, `dual_vertices` `[N, 3]` f32 (grid frame `[0, 1]³`) and `intersected` `[N, 3]` u8 out.

use std::collections::HashMap;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

use crate::mesh::{voxelise, QefWeights};

/// Rows of a `[R, 3]` tensor, or an error naming the file and the tensor.
fn rows3(source: &str, tensors: &HashMap<String, Tensor>, name: &str) -> Result<Tensor> {
    let t = tensors
        .get(name)
        .ok_or_else(|| anyhow::anyhow!("{source}: no tensor `{name}`"))?;
    match t.dims() {
        [_, 3] => Ok(t.to_device(&Device::Cpu)?),
        d => bail!("{source}: `{name}` must be [N, 3], got {d:?}"),
    }
}

/// Voxelises the mesh in `tensors` on a `grid_size³` grid.
pub fn voxelise_tensors(
    source: &str,
    tensors: &HashMap<String, Tensor>,
    grid_size: u32,
    weights: QefWeights,
) -> Result<Vec<(String, Tensor)>> {
    let v = rows3(source, tensors, "vertices")?;
    if !v.dtype().is_float() {
        bail!(
            "{source}: `vertices` must be a float tensor, got {:?}",
            v.dtype()
        );
    }
    let vertices: Vec<[f32; 3]> = v
        .to_dtype(DType::F32)?
        .to_vec2::<f32>()?
        .into_iter()
        .map(|r| [r[0], r[1], r[2]])
        .collect();
    let f = rows3(source, tensors, "faces")?;
    if f.dtype().is_float() {
        bail!(
            "{source}: `faces` must be an integer tensor, got {:?}",
            f.dtype()
        );
    }
    let mut faces = Vec::with_capacity(f.dims()[0]);
    for (i, r) in f
        .to_dtype(DType::I64)?
        .to_vec2::<i64>()?
        .into_iter()
        .enumerate()
    {
        let mut face = [0u32; 3];
        for (k, &x) in r.iter().enumerate() {
            face[k] = u32::try_from(x)
                .map_err(|_| anyhow::anyhow!("{source}: face {i} has vertex index {x}"))?;
        }
        faces.push(face);
    }
    let grid = voxelise(&vertices, &faces, grid_size, weights)
        .map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
    let n = grid.voxels.len();
    let flat_i: Vec<i32> = grid.voxels.iter().flatten().copied().collect();
    let flat_d: Vec<f32> = grid.dual_vertices.iter().flatten().copied().collect();
    let flat_f: Vec<u8> = grid
        .intersected
        .iter()
        .flatten()
        .map(|&b| u8::from(b))
        .collect();
    let cpu = Device::Cpu;
    Ok(vec![
        (
            "voxel_indices".into(),
            Tensor::from_vec(flat_i, (n, 3), &cpu)?,
        ),
        (
            "dual_vertices".into(),
            Tensor::from_vec(flat_d, (n, 3), &cpu)?,
        ),
        (
            "intersected".into(),
            Tensor::from_vec(flat_f, (n, 3), &cpu)?,
        ),
    ])
}
