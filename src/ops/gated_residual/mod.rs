//! The DiT's gated residual, per sample `b`: `y = x + gate_b · r` over the rows of `x, r [T, C]`
//! that sample `b` owns (`offsets[b]..offsets[b+1]`). One pass instead of candle's strided
//! broadcast multiply per sample, a concatenation and an add; f32 arithmetic, one rounding to
//! `x`'s dtype.
//!
//! Operands of the custom op: x `[T,C]`, r `[T,C]` (x's dtype), gate `[B,C]` f32. The CPU
//! forward is the reference the CUDA and Metal kernels (kernels/cuda/elementwise.cu,
//! kernels/metal/elementwise.metal) are tested against.

use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::ops::sample_offsets::{check_offsets, sample_of_rows};
use crate::ops::storage::f32_operands;

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "metal")]
mod metal;

struct GatedResidual {
    offsets: Vec<usize>,
}

impl CustomOp3 for GatedResidual {
    fn name(&self) -> &'static str {
        "gated-residual"
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
        let [x, r, gate] = f32_operands(
            [(s1, l1), (s2, l2), (s3, l3)],
            "gated_residual",
            ["input", "residual branch", "gate"],
        )?;
        let (_, c) = l1.shape().dims2()?;
        let samples = sample_of_rows(&self.offsets);
        let mut out = vec![0f32; x.len()];
        if c > 0 {
            out.par_chunks_mut(c)
                .zip(x.par_chunks(c).zip(r.par_chunks(c)))
                .zip(samples.par_iter())
                .for_each(|((o, (x, r)), &b)| {
                    let g = &gate[b * c..(b + 1) * c];
                    for i in 0..c {
                        o[i] = x[i] + g[i] * r[i];
                    }
                });
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    /// kernels/cuda/elementwise.cu, tested against `cpu_fwd` in tests/cuda_kernels.rs.
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
        cuda::gated_residual((s1, l1), (s2, l2), (s3, l3), &self.offsets)
    }

    /// kernels/metal/elementwise.metal, tested against `cpu_fwd` in tests/metal_emu.rs.
    #[cfg(feature = "metal")]
    fn metal_fwd(
        &self,
        s1: &candle_core::MetalStorage,
        l1: &Layout,
        s2: &candle_core::MetalStorage,
        l2: &Layout,
        s3: &candle_core::MetalStorage,
        l3: &Layout,
    ) -> Result<(candle_core::MetalStorage, Shape)> {
        metal::gated_residual((s1, l1), (s2, l2), (s3, l3), &self.offsets)
    }
}

fn check(x: &Tensor, r: &Tensor, gate: &Tensor, offsets: &[usize]) -> Result<()> {
    let (t, c) = match x.dims() {
        &[t, c] => (t, c),
        d => bail!("gated_residual: x must be [T, C], got {d:?}"),
    };
    if r.dims() != x.dims() {
        bail!(
            "gated_residual: the residual branch {:?} must match x {:?}",
            r.dims(),
            x.dims()
        );
    }
    let b = check_offsets("gated_residual", offsets, t)?;
    if gate.dims() != [b, c] {
        bail!(
            "gated_residual: gate must be [{b}, {c}], got {:?}",
            gate.dims()
        );
    }
    Ok(())
}

/// `x + gate_b · r` per sample (see the module docs), in `x`'s dtype: one fused op on every
/// device.
pub fn gated_residual(x: &Tensor, r: &Tensor, gate: &Tensor, offsets: &[usize]) -> Result<Tensor> {
    check(x, r, gate, offsets)?;
    let dev = x.device();
    let dtype = x.dtype();
    let (xin, rin) = if dev.is_cpu() {
        (x.to_dtype(DType::F32)?, r.to_dtype(DType::F32)?)
    } else {
        (x.clone(), r.to_dtype(dtype)?)
    };
    let op = GatedResidual {
        offsets: offsets.to_vec(),
    };
    xin.contiguous()?
        .apply_op3_no_bwd(
            &rin.contiguous()?,
            &gate.to_dtype(DType::F32)?.contiguous()?,
            &op,
        )?
        .to_dtype(dtype)
}

/// The composed candle formula the DiT used before the fused op (per-sample `broadcast_mul` in
/// `r`'s dtype, concatenation, add): the test reference of [`gated_residual`].
pub fn gated_residual_slow(
    x: &Tensor,
    r: &Tensor,
    gate: &Tensor,
    offsets: &[usize],
) -> Result<Tensor> {
    check(x, r, gate, offsets)?;
    let gate = gate.to_dtype(r.dtype())?;
    let parts = (0..offsets.len() - 1)
        .filter(|&b| offsets[b + 1] > offsets[b])
        .map(|b| {
            r.narrow(0, offsets[b], offsets[b + 1] - offsets[b])?
                .broadcast_mul(&gate.narrow(0, b, 1)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let gated = match parts.len() {
        0 => r.clone(),
        1 => parts.into_iter().next().expect("one part"),
        _ => Tensor::cat(&parts, 0)?,
    };
    x + gated
}
