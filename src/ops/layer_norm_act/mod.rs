//! LayerNorm over the channels followed by an activation, `y = act(LN(x)·w + b)`, optionally of
//! gathered rows: output row `i` normalises input row `rows[i]`. The SC-VAE's C2S blocks run
//! `silu(norm1(x))` on the parents and `silu(LN(children))` on the channel blocks channel→space
//! moves to the children; fused, the activation is not a second pass over the activations and
//! the moved blocks are read where they lie instead of being gathered into a new tensor first.
//! Two-pass f32 mean/variance as ops::layer_norm; one rounding to `x`'s dtype.
//!
//! Operands of the custom op: x `[R, C]`, affine `[2, C]` f32 (weight; bias) and, gathered,
//! rows `[T]` u32. The CPU forward is the reference the CUDA kernel (`layer_norm_act_*` in
//! kernels/cuda/norms.cu) is tested against; [`layer_norm_act_slow`] is the composed candle
//! formula, which Metal runs.

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::ops::bias_act::Activation;
use crate::ops::layer_norm::layer_norm;
use crate::ops::norm_params::NormAffine;
use crate::ops::storage::{f32_operands, u32_operand};

#[cfg(feature = "cuda")]
mod cuda;

struct LayerNormAct {
    eps: f32,
    act: Activation,
}

impl LayerNormAct {
    /// The reference: output row `i` from input row `rows[i]` (or `i`), all in f32.
    fn cpu(&self, x: &[f32], affine: &[f32], rows: Option<&[u32]>) -> Result<Vec<f32>> {
        let c = affine.len() / 2;
        let (w, b) = affine.split_at(c);
        let input_rows = x.len() / c.max(1);
        let out_rows = rows.map_or(input_rows, |r| r.len());
        if let Some((i, &r)) = rows.and_then(|rows| {
            rows.iter()
                .enumerate()
                .find(|(_, &r)| r as usize >= input_rows)
        }) {
            bail!("layer_norm_act: row {r} of output row {i} is not one of {input_rows} rows");
        }
        let mut out = vec![0f32; out_rows * c];
        if c > 0 {
            let (eps, act) = (self.eps, self.act);
            out.par_chunks_mut(c).enumerate().for_each(|(i, o)| {
                let r = rows.map_or(i, |rows| rows[i] as usize);
                let v = &x[r * c..(r + 1) * c];
                let mean = v.iter().sum::<f32>() / c as f32;
                let var = v.iter().map(|&t| (t - mean) * (t - mean)).sum::<f32>() / c as f32;
                let inv = 1.0 / (var + eps).sqrt();
                for i in 0..c {
                    o[i] = act.apply((v[i] - mean) * inv * w[i] + b[i]);
                }
            });
        }
        Ok(out)
    }
}

impl CustomOp2 for LayerNormAct {
    fn name(&self) -> &'static str {
        "layer-norm-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let [x, a] = f32_operands([(s1, l1), (s2, l2)], "layer_norm_act", ["input", "affine"])?;
        Ok((CpuStorage::F32(self.cpu(x, a, None)?), l1.shape().clone()))
    }

    /// kernels/cuda/norms.cu, tested against `cpu_fwd` in tests/cuda_kernels.rs.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::layer_norm_act((s1, l1), (s2, l2), None, self.eps, self.act)
    }
}

/// The gathered form: the third operand holds the rows.
impl CustomOp3 for LayerNormAct {
    fn name(&self) -> &'static str {
        "gathered-layer-norm-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        const OP: &str = "layer_norm_act";
        let [x, a] = f32_operands([(s1, l1), (s2, l2)], OP, ["input", "affine"])?;
        let rows = u32_operand(s3, l3, OP, "rows")?;
        let c = l1.shape().dims2()?.1;
        let out = self.cpu(x, a, Some(rows))?;
        Ok((CpuStorage::F32(out), Shape::from((rows.len(), c))))
    }

    /// kernels/cuda/norms.cu, tested against `cpu_fwd` in tests/cuda_kernels.rs.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::layer_norm_act((s1, l1), (s2, l2), Some((s3, l3)), self.eps, self.act)
    }
}

/// `C` of `x [R, C]`, after checking the affine parameters and (gathered) the rows.
fn check(x: &Tensor, rows: Option<&Tensor>, affine: Option<(&Tensor, &Tensor)>) -> Result<usize> {
    let c = match x.dims() {
        &[_, c] => c,
        d => bail!("layer_norm_act: x must be [R, C], got {d:?}"),
    };
    if let Some((w, b)) = affine {
        if w.dims() != [c] || b.dims() != [c] {
            bail!(
                "layer_norm_act: weight {:?} and bias {:?} must be [{c}] for {c} channels",
                w.dims(),
                b.dims()
            );
        }
    }
    if let Some(rows) = rows {
        if rows.rank() != 1 || rows.dtype() != DType::U32 {
            bail!(
                "layer_norm_act: rows must be [T] u32, got {:?} {:?}",
                rows.dtype(),
                rows.dims()
            );
        }
    }
    Ok(c)
}

fn run(
    x: &Tensor,
    rows: Option<&Tensor>,
    affine: Option<(&Tensor, &Tensor)>,
    eps: f64,
    act: Activation,
) -> Result<Tensor> {
    let c = check(x, rows, affine)?;
    let affine = match affine {
        Some((w, b)) => NormAffine::new(w, b)?,
        None => NormAffine::identity(c, x.device())?,
    };
    run_prepared(x, rows, &affine, eps, act)
}

fn run_prepared(
    x: &Tensor,
    rows: Option<&Tensor>,
    affine: &NormAffine,
    eps: f64,
    act: Activation,
) -> Result<Tensor> {
    let dev = x.device();
    if dev.is_metal() {
        let (w, b) = affine.parts()?;
        return layer_norm_act_slow(x, rows, Some((&w, &b)), eps, act);
    }
    let dtype = x.dtype();
    let xin = if dev.is_cpu() {
        x.to_dtype(DType::F32)?
    } else {
        x.clone()
    }
    .contiguous()?;
    let op = LayerNormAct {
        eps: eps as f32,
        act,
    };
    match rows {
        Some(rows) => xin.apply_op3_no_bwd(affine.stacked(), &rows.contiguous()?, &op)?,
        None => xin.apply_op2_no_bwd(affine.stacked(), &op)?,
    }
    .to_dtype(dtype)
}

/// [`layer_norm_act`] (or, with `rows`, [`gathered_layer_norm_act`]) with the affine
/// parameters prepared once per layer.
pub fn layer_norm_act_prepared(
    x: &Tensor,
    rows: Option<&Tensor>,
    affine: &NormAffine,
    eps: f64,
    act: Activation,
) -> Result<Tensor> {
    let c = check(x, rows, None)?;
    if affine.channels() != c {
        bail!(
            "layer_norm_act: the affine parameters have {} channels, x has {c}",
            affine.channels()
        );
    }
    run_prepared(x, rows, affine, eps, act)
}

/// `act(LN(x)·w + b)` for `x [R, C]` (`affine` = (weight, bias) `[C]`, or none), in `x`'s
/// dtype. CPU: f32 throughout; CUDA: one kernel; Metal: the composed [`layer_norm_act_slow`].
pub fn layer_norm_act(
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    eps: f64,
    act: Activation,
) -> Result<Tensor> {
    run(x, None, affine, eps, act)
}

/// `act(LN(x[rows[i]])·w + b)` for output row `i`: `[T, C]` from `x [R, C]` and `rows [T]` u32
/// (each below R: the CPU reference refuses others, the CUDA kernel writes NaN rows for them).
pub fn gathered_layer_norm_act(
    x: &Tensor,
    rows: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    eps: f64,
    act: Activation,
) -> Result<Tensor> {
    run(x, Some(rows), affine, eps, act)
}

/// The composed formula: `index_select` (gathered), ops::layer_norm, then the activation as a
/// candle op in `x`'s dtype. What the C2S blocks ran before the fused op; the test reference.
pub fn layer_norm_act_slow(
    x: &Tensor,
    rows: Option<&Tensor>,
    affine: Option<(&Tensor, &Tensor)>,
    eps: f64,
    act: Activation,
) -> Result<Tensor> {
    check(x, rows, affine)?;
    let x = match rows {
        Some(rows) => x.index_select(rows, 0)?,
        None => x.clone(),
    };
    let y = layer_norm(&x, affine, eps)?;
    act.apply_tensor(&y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::max_abs_diff;
    use candle_core::Device;

    #[test]
    fn fused_matches_the_composed_formula() {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 120.0, &dev)
            .unwrap()
            .reshape((10, 12))
            .unwrap()
            .sin()
            .unwrap();
        let w = Tensor::arange(1f32, 13.0, &dev).unwrap();
        let b = (Tensor::ones(12, DType::F32, &dev).unwrap() * 0.5).unwrap();
        let rows = Tensor::new(&[9u32, 0, 3, 3, 7], &dev).unwrap();
        for act in [Activation::None, Activation::Silu, Activation::GeluTanh] {
            for affine in [None, Some((&w, &b))] {
                let fused = layer_norm_act(&x, affine, 1e-6, act).unwrap();
                let slow = layer_norm_act_slow(&x, None, affine, 1e-6, act).unwrap();
                assert!(max_abs_diff(&fused, &slow) < 1e-5, "{act:?}");
                let fused = gathered_layer_norm_act(&x, &rows, affine, 1e-6, act).unwrap();
                let slow = layer_norm_act_slow(&x, Some(&rows), affine, 1e-6, act).unwrap();
                assert_eq!(fused.dims(), &[5, 12]);
                assert!(max_abs_diff(&fused, &slow) < 1e-5, "{act:?} gathered");
            }
        }
    }

    #[test]
    fn bad_rows_and_shapes_are_named() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((4, 8), DType::F32, &dev).unwrap();
        let rows = Tensor::new(&[0u32, 4], &dev).unwrap();
        let err = gathered_layer_norm_act(&x, &rows, None, 1e-6, Activation::Silu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("row 4 of output row 1"), "{err}");
        let w = Tensor::zeros(7, DType::F32, &dev).unwrap();
        let err = layer_norm_act(&x, Some((&w, &w)), 1e-6, Activation::Silu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("must be [8]"), "{err}");
    }

    #[test]
    fn empty_inputs_give_empty_outputs() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((0, 8), DType::F32, &dev).unwrap();
        let y = layer_norm_act(&x, None, 1e-6, Activation::Silu).unwrap();
        assert_eq!(y.dims(), &[0, 8]);
        let x = Tensor::zeros((3, 8), DType::F32, &dev).unwrap();
        let rows = Tensor::zeros(0, DType::U32, &dev).unwrap();
        let y = gathered_layer_norm_act(&x, &rows, None, 1e-6, Activation::Silu).unwrap();
        assert_eq!(y.dims(), &[0, 8]);
    }
}
