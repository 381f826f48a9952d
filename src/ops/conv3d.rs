//! Dense `Conv3d(kernel 3, padding 1, stride 1)` on channels-last grids, as a submanifold conv
//! over the fully occupied grid: zero padding is exactly "absent neighbour" (docs/MODEL.md §4). Sharing
//! the sparse kernel keeps one CPU reference (and later one GPU kernel) for both.

use candle_core::{bail, DType, Device, Result, Tensor};

use rayon::prelude::*;

use crate::ops::neighbour_map::neighbour_map_on_device;
use crate::ops::sparse_conv::ConvWeights;
use crate::ops::vocab::{ABSENT, TAPS};

/// The neighbour map of a full `[B, X, Y, Z]` grid in row-major (b, x, y, z) order; build once
/// per resolution and reuse for every conv at it.
#[derive(Debug, Clone)]
pub struct GridNeighbours {
    dims: [usize; 4],
    map: Tensor,
}

impl GridNeighbours {
    pub fn new(dims: [usize; 4], device: &Device) -> Result<Self> {
        let [b, x, y, z] = dims;
        let cells = b * x * y * z;
        if cells > (u32::MAX as usize) {
            bail!("conv3d: grid {dims:?} has more than 2^32 cells");
        }
        if !device.is_cpu() {
            // The GPU builds it from the grid's coordinates (the sparse builder, same tap order)
            // instead of uploading a host-built map (28 MB at 64³).
            let mut rows = Vec::with_capacity(cells);
            for cb in 0..b as i32 {
                for cx in 0..x as i32 {
                    for cy in 0..y as i32 {
                        rows.extend((0..z as i32).map(|cz| [cb, cx, cy, cz]));
                    }
                }
            }
            let coords = Tensor::from_slice(rows.as_flattened(), (cells, 4), device)?;
            let max = dims.map(|d| d.saturating_sub(1) as u32);
            if let Some((map, _)) = neighbour_map_on_device(&coords, max)? {
                return Ok(Self { dims, map });
            }
        }
        let mut map = vec![ABSENT; cells * TAPS];
        map.par_chunks_exact_mut(TAPS)
            .enumerate()
            .for_each(|(cell, row)| {
                let (cz, rest) = (cell % z, cell / z);
                let (cy, rest) = (rest % y, rest / y);
                let (cx, cb) = (rest % x, rest / x);
                for (k, slot) in row.iter_mut().enumerate() {
                    // Tap k reads offset (k/9 − 1, k/3%3 − 1, k%3 − 1); out of the grid = zero padding.
                    let (nx, ny, nz) = (cx + k / 9, cy + k / 3 % 3, cz + k % 3);
                    if (1..=x).contains(&nx) && (1..=y).contains(&ny) && (1..=z).contains(&nz) {
                        *slot = (((cb * x + nx - 1) * y + ny - 1) * z + nz - 1) as u32;
                    }
                }
            });
        Ok(Self {
            dims,
            map: Tensor::from_vec(map, (cells, TAPS), device)?,
        })
    }

    pub fn dims(&self) -> [usize; 4] {
        self.dims
    }

    pub fn device(&self) -> &Device {
        self.map.device()
    }
}

/// Conv3d k3 p1 of channels-last `x` `[B, X, Y, Z, Ci]` with a PyTorch weight `[Co, Ci, 3, 3, 3]`
/// and bias `[Co]` → `[B, X, Y, Z, Co]`. Layers that run more than once hold a [`Conv3dK3`].
pub fn conv3d_k3(
    x: &Tensor,
    grid: &GridNeighbours,
    weight: &Tensor,
    bias: &Tensor,
) -> Result<Tensor> {
    Conv3dK3::new(weight, bias, x.dtype())?.forward(x, grid)
}

/// A Conv3d k3 p1 layer with its weight laid out for the submanifold kernel (`[Co, 3, 3, 3, Ci]`)
/// and prepared as [`ConvWeights`] once at load: per call that permute and those casts were four
/// extra launches around each conv of the sparse-structure decoder.
#[derive(Debug)]
pub struct Conv3dK3 {
    weights: ConvWeights,
}

impl Conv3dK3 {
    /// `weight` `[Co, Ci, 3, 3, 3]` (PyTorch), `bias` `[Co]`, for activations of dtype
    /// `activations` on the weight's device (see [`ConvWeights`] for the operand dtype).
    pub fn new(weight: &Tensor, bias: &Tensor, activations: DType) -> Result<Self> {
        if !matches!(weight.dims(), &[_, _, 3, 3, 3]) {
            bail!(
                "conv3d: weight must be [Co, Ci, 3, 3, 3], got shape {:?}",
                weight.dims()
            );
        }
        Ok(Self {
            weights: ConvWeights::new(&weight.permute((0, 2, 3, 4, 1))?, bias, activations)?,
        })
    }

    pub fn forward(&self, x: &Tensor, grid: &GridNeighbours) -> Result<Tensor> {
        let (b, gx, gy, gz, ci) = match x.dims() {
            &[b, gx, gy, gz, ci] => (b, gx, gy, gz, ci),
            d => bail!("conv3d: input must be channels-last [B, X, Y, Z, C], got shape {d:?}"),
        };
        if grid.dims != [b, gx, gy, gz] {
            bail!(
                "conv3d: input grid {:?} does not match the neighbour grid {:?}",
                [b, gx, gy, gz],
                grid.dims
            );
        }
        let (wci, co) = (self.weights.in_channels(), self.weights.out_channels());
        if ci != wci {
            bail!("conv3d: input has {ci} channels, the weight [{co}, {wci}, 3, 3, 3] takes {wci}");
        }
        let feats = x.reshape((b * gx * gy * gz, ci))?;
        self.weights
            .conv(&feats, &grid.map)?
            .reshape((b, gx, gy, gz, co))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    /// Direct evaluation of the dense definition with zero padding.
    fn conv_direct(x: &[f32], dims: [usize; 4], ci: usize, w: &[f32], co: usize) -> Vec<f32> {
        let [b, gx, gy, gz] = dims;
        let mut out = vec![0f32; b * gx * gy * gz * co];
        for bb in 0..b {
            for px in 0..gx {
                for py in 0..gy {
                    for pz in 0..gz {
                        for o in 0..co {
                            let mut acc = 0f64;
                            for kx in 0..3 {
                                for ky in 0..3 {
                                    for kz in 0..3 {
                                        let (nx, ny, nz) = (px + kx, py + ky, pz + kz);
                                        if nx < 1
                                            || ny < 1
                                            || nz < 1
                                            || nx > gx
                                            || ny > gy
                                            || nz > gz
                                        {
                                            continue;
                                        }
                                        let cell = ((bb * gx + nx - 1) * gy + ny - 1) * gz + nz - 1;
                                        for i in 0..ci {
                                            let wi = (((o * ci + i) * 3 + kx) * 3 + ky) * 3 + kz;
                                            acc += (w[wi] * x[cell * ci + i]) as f64;
                                        }
                                    }
                                }
                            }
                            let cell = ((bb * gx + px) * gy + py) * gz + pz;
                            out[cell * co + o] = acc as f32;
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_the_dense_definition_on_an_uneven_grid() {
        let dev = Device::Cpu;
        let dims = [2, 3, 4, 5];
        let (ci, co) = (3, 5);
        let n: usize = dims.iter().product();
        let xs: Vec<f32> = (0..n * ci)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let ws: Vec<f32> = (0..co * ci * 27)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
            .collect();
        let x = Tensor::from_vec(xs.clone(), (2, 3, 4, 5, ci), &dev).unwrap();
        let w = Tensor::from_vec(ws.clone(), (co, ci, 3, 3, 3), &dev).unwrap();
        let bias = Tensor::zeros(co, DType::F32, &dev).unwrap();
        let grid = GridNeighbours::new(dims, &dev).unwrap();
        let got = conv3d_k3(&x, &grid, &w, &bias)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let want = conv_direct(&xs, dims, ci, &ws, co);
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err < 1e-5, "max err {err}");
    }
}
