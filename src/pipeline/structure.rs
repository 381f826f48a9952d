//! Sparse-structure glue (docs/MODEL.md §1.4 step 3): occupancy = logits > 0, optional 2× max-pool of the
//! 64³ grid to 32³, and the occupied cells as sparse coordinates in argwhere order.

use candle_core::{bail, DType, Result, Tensor};

/// `logits > 0` as u8 (`[B, 1, X, Y, Z]` → same shape).
pub fn occupancy(logits: &Tensor) -> Result<Tensor> {
    logits.gt(0.0)
}

/// 3-D max-pool, kernel 2, stride 2, of an occupancy grid `[B, C, X, Y, Z]` (u8): a coarse
/// cell is occupied if any of its 8 children is.
pub fn max_pool2(occupancy: &Tensor) -> Result<Tensor> {
    let (b, c, x, y, z) = match occupancy.dims() {
        &[b, c, x, y, z] => (b, c, x, y, z),
        d => bail!("max_pool2: expected [B, C, X, Y, Z], got shape {d:?}"),
    };
    if x % 2 != 0 || y % 2 != 0 || z % 2 != 0 {
        bail!("max_pool2: grid {:?} is not even in every axis", [x, y, z]);
    }
    occupancy
        .reshape(vec![b, c, x / 2, 2, y / 2, 2, z / 2, 2])?
        .max_keepdim(7)?
        .max_keepdim(5)?
        .max_keepdim(3)?
        .reshape((b, c, x / 2, y / 2, z / 2))
}

/// Coordinates `[N, 4]` int32 (batch, x, y, z) of the nonzero cells of `[B, 1, X, Y, Z]`, in
/// row-major order (`argwhere(...)[:, [0, 2, 3, 4]]`).
pub fn occupied_coords(occupancy: &Tensor) -> Result<Tensor> {
    let c = match occupancy.dims() {
        &[_, c, _, _, _] => c,
        d => bail!("occupied_coords: expected [B, 1, X, Y, Z], got shape {d:?}"),
    };
    if c != 1 {
        bail!("occupied_coords: expected one channel, got {c}");
    }
    // argwhere's (b, c, x, y, z) rows without the channel column.
    let rows: Vec<i32> = argwhere(occupancy)?
        .chunks_exact(5)
        .flat_map(|r| [r[0], r[2], r[3], r[4]])
        .collect();
    let n = rows.len() / 4;
    Tensor::from_vec(rows, (n, 4), occupancy.device())
}

/// `argwhere` of a 5-D occupancy grid: `[N, 5]` int32 rows (b, c, x, y, z), row-major order.
pub fn occupied_cells(occupancy: &Tensor) -> Result<Tensor> {
    let rows = argwhere(occupancy)?;
    let n = rows.len() / 5;
    Tensor::from_vec(rows, (n, 5), occupancy.device())
}

/// The flattened `[N, 5]` rows of [`occupied_cells`], on the host (the grid is read back once;
/// integer gathers on the GPU would need kernels candle's CUDA backend lacks).
fn argwhere(occupancy: &Tensor) -> Result<Vec<i32>> {
    let dims = occupancy.dims().to_vec();
    if dims.len() != 5 {
        bail!("occupied_cells: expected [B, C, X, Y, Z], got shape {dims:?}");
    }
    let cells = occupancy
        .to_dtype(DType::U8)?
        .flatten_all()?
        .to_vec1::<u8>()?;
    let mut rows = Vec::new();
    for (i, &v) in cells.iter().enumerate() {
        if v != 0 {
            let mut idx = [0i32; 5];
            let mut r = i;
            for d in (0..5).rev() {
                idx[d] = (r % dims[d]) as i32;
                r /= dims[d];
            }
            rows.extend(idx);
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn pooling_keeps_a_cell_if_any_child_is_set() {
        let dev = Device::Cpu;
        let mut v = vec![0u8; 4 * 4 * 4];
        v[(3 * 4 + 2) * 4 + 1] = 1; // (3, 2, 1) → coarse (1, 1, 0)
        v[0] = 1; // (0, 0, 0) → (0, 0, 0)
        let occ = Tensor::from_vec(v, (1, 1, 4, 4, 4), &dev).unwrap();
        let pooled = max_pool2(&occ).unwrap();
        assert_eq!(pooled.dims(), &[1, 1, 2, 2, 2]);
        let coords = occupied_coords(&pooled).unwrap().to_vec2::<i32>().unwrap();
        assert_eq!(coords, vec![vec![0, 0, 0, 0], vec![0, 1, 1, 0]]);
        let cells = occupied_cells(&occ).unwrap().to_vec2::<i32>().unwrap();
        assert_eq!(cells, vec![vec![0, 0, 0, 0, 0], vec![0, 0, 3, 2, 1]]);
    }

    #[test]
    fn occupancy_is_strictly_positive_logits() {
        let dev = Device::Cpu;
        let l = Tensor::new(&[-1f32, 0.0, 1e-7], &dev).unwrap();
        assert_eq!(
            occupancy(&l).unwrap().to_vec1::<u8>().unwrap(),
            vec![0, 0, 1]
        );
    }
}
