//! The skip connection of a channel→space block (`SparseResBlockC2S3d`, docs/MODEL.md §5.1):
//! `out[i, j] = h[i, j] + x[sources[i] / 8, (sources[i] % 8)·C/8 + j / repeat]` for children
//! `i`, where `x` `[N, C]` holds the parents' features, child `i` takes channel block
//! `s = sources[i] % 8` of parent `sources[i] / 8`, and each of its `C/8` carried channels is
//! repeated `repeat = C'/(C/8)` times consecutively (`repeat_interleave`). Equivalently, with
//! `x` viewed `[N·8, C/8]`: `h + repeat_interleave(x.index_select(sources), repeat)`.
//!
//! One read of `h`, one write of the output and a read of the carried parent values, instead of
//! an `index_select` (writing `[N', C/8]`), a materialised broadcast (writing `[N', C']`) and an
//! add (reading both). f32 arithmetic, one rounding to `h`'s dtype.
//!
//! Operands of the custom op: h `[N', C']`, x `[N, C]` (same dtype), sources `[N']` u32. The CPU
//! forward is the reference the CUDA kernel (kernels/cuda/channel_to_space.cu) is tested
//! against; [`c2s_skip_add_slow`] is the composed candle formula, which Metal runs.

use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::ops::storage::{f32_operands, u32_operand};
use crate::ops::vocab::CHILDREN;

#[cfg(feature = "cuda")]
mod cuda;

struct C2sSkipAdd {
    /// `C/8`: channels each child carries from its parent.
    carried: usize,
    /// `C'/(C/8)`: copies of each carried channel.
    repeat: usize,
}

impl CustomOp3 for C2sSkipAdd {
    fn name(&self) -> &'static str {
        "c2s-skip-add"
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
        const OP: &str = "c2s_skip_add";
        let [h, x] = f32_operands([(s1, l1), (s2, l2)], OP, ["h", "parent features"])?;
        let sources = u32_operand(s3, l3, OP, "sources")?;
        let (carried, repeat) = (self.carried, self.repeat);
        let c_out = carried * repeat;
        let blocks = x.len() / carried.max(1);
        if let Some((i, &s)) = sources
            .iter()
            .enumerate()
            .find(|(_, &s)| s as usize >= blocks)
        {
            bail!("{OP}: source {s} of child {i} is not one of the {blocks} parent channel blocks");
        }
        let mut out = vec![0f32; h.len()];
        if c_out > 0 {
            out.par_chunks_mut(c_out)
                .zip(h.par_chunks(c_out))
                .zip(sources.par_iter())
                .for_each(|((o, h), &s)| {
                    let carried_values = &x[s as usize * carried..(s as usize + 1) * carried];
                    for (j, (o, &h)) in o.iter_mut().zip(h).enumerate() {
                        *o = h + carried_values[j / repeat];
                    }
                });
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    /// kernels/cuda/channel_to_space.cu, tested against `cpu_fwd` in tests/cuda_kernels.rs.
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
        cuda::c2s_skip_add((s1, l1), (s2, l2), (s3, l3), self.carried, self.repeat)
    }
}

/// `(carried, repeat)` for `h [N', C']`, `x [N, C]`, `sources [N']`, or an error naming the bad
/// shape.
fn check(h: &Tensor, x: &Tensor, sources: &Tensor) -> Result<(usize, usize)> {
    let (children, c_out) = match h.dims() {
        &[n, c] => (n, c),
        d => bail!("c2s_skip_add: h must be [N', C'], got {d:?}"),
    };
    let c = match x.dims() {
        &[_, c] => c,
        d => bail!("c2s_skip_add: parent features must be [N, C], got {d:?}"),
    };
    if c == 0 || c % CHILDREN != 0 {
        bail!("c2s_skip_add: parent features have {c} channels, not a positive multiple of 8");
    }
    let carried = c / CHILDREN;
    if c_out % carried != 0 {
        bail!("c2s_skip_add: h has {c_out} channels, not a multiple of the {carried} carried");
    }
    if sources.dims() != [children] || sources.dtype() != DType::U32 {
        bail!(
            "c2s_skip_add: sources must be [{children}] u32 (one per child), got {:?} {:?}",
            sources.dtype(),
            sources.dims()
        );
    }
    if h.dtype() != x.dtype() {
        bail!(
            "c2s_skip_add: h is {:?} but the parent features are {:?}",
            h.dtype(),
            x.dtype()
        );
    }
    Ok((carried, c_out / carried))
}

/// `h + repeat_interleave(x[N·8, C/8].index_select(sources))` (see the module docs) in `h`'s
/// dtype. `sources` must index the `N·8` channel blocks of `x` (channel→space builds them so):
/// the CPU reference refuses others, the CUDA kernel writes NaN rows for them. CPU: f32
/// throughout; CUDA: one kernel; Metal: the composed [`c2s_skip_add_slow`] (no kernel yet).
pub fn c2s_skip_add(h: &Tensor, x: &Tensor, sources: &Tensor) -> Result<Tensor> {
    let (carried, repeat) = check(h, x, sources)?;
    let dev = h.device();
    if dev.is_metal() {
        return c2s_skip_add_slow(h, x, sources);
    }
    let dtype = h.dtype();
    let (hin, xin) = if dev.is_cpu() {
        (h.to_dtype(DType::F32)?, x.to_dtype(DType::F32)?)
    } else {
        (h.clone(), x.clone())
    };
    hin.contiguous()?
        .apply_op3_no_bwd(
            &xin.contiguous()?,
            &sources.contiguous()?,
            &C2sSkipAdd { carried, repeat },
        )?
        .to_dtype(dtype)
}

/// The composed formula (an `index_select`, a broadcast to `[N', C/8, repeat]` and an add in
/// `h`'s dtype): the C2S block's tail before the fused op, and the test reference.
pub fn c2s_skip_add_slow(h: &Tensor, x: &Tensor, sources: &Tensor) -> Result<Tensor> {
    let (carried, repeat) = check(h, x, sources)?;
    let (n, c_out) = h.dims2()?;
    let blocks = x.dim(0)? * CHILDREN;
    let skip = x
        .contiguous()?
        .reshape((blocks, carried))?
        .index_select(sources, 0)?
        .unsqueeze(2)?
        .broadcast_as((n, carried, repeat))?
        .reshape((n, c_out))?;
    h + skip
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn fused_matches_the_composed_formula() {
        let dev = Device::Cpu;
        // 5 parents of 16 channels (2 carried), 7 children of 6 channels (repeat 3).
        let x = Tensor::arange(0f32, 80.0, &dev)
            .unwrap()
            .reshape((5, 16))
            .unwrap();
        let h = Tensor::arange(0f32, 42.0, &dev)
            .unwrap()
            .reshape((7, 6))
            .unwrap()
            .sin()
            .unwrap();
        let sources = Tensor::new(&[0u32, 7, 8, 13, 39, 20, 21], &dev).unwrap();
        let fused = c2s_skip_add(&h, &x, &sources).unwrap();
        let slow = c2s_skip_add_slow(&h, &x, &sources).unwrap();
        assert_eq!(
            fused.to_vec2::<f32>().unwrap(),
            slow.to_vec2::<f32>().unwrap()
        );
        // Child 1 is channel block 7 of parent 0: channels 14, 15, each three times.
        let row = fused.to_vec2::<f32>().unwrap()[1].clone();
        let hrow = h.to_vec2::<f32>().unwrap()[1].clone();
        let skip: Vec<f32> = row.iter().zip(&hrow).map(|(o, h)| o - h).collect();
        assert_eq!(skip, vec![14., 14., 14., 15., 15., 15.]);
    }

    #[test]
    fn bad_shapes_and_sources_are_named() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 16), DType::F32, &dev).unwrap();
        let h = Tensor::zeros((3, 6), DType::F32, &dev).unwrap();
        let sources = Tensor::new(&[0u32, 1, 16], &dev).unwrap();
        let err = c2s_skip_add(&h, &x, &sources).unwrap_err().to_string();
        assert!(err.contains("source 16 of child 2"), "{err}");
        let h5 = Tensor::zeros((3, 5), DType::F32, &dev).unwrap();
        let err = c2s_skip_add(&h5, &x, &sources).unwrap_err().to_string();
        assert!(err.contains("5 channels"), "{err}");
        let x12 = Tensor::zeros((2, 12), DType::F32, &dev).unwrap();
        let err = c2s_skip_add(&h, &x12, &sources).unwrap_err().to_string();
        assert!(err.contains("12 channels"), "{err}");
    }

    #[test]
    fn no_children_gives_an_empty_output() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 16), DType::F32, &dev).unwrap();
        let h = Tensor::zeros((0, 6), DType::F32, &dev).unwrap();
        let sources = Tensor::zeros(0, DType::U32, &dev).unwrap();
        assert_eq!(c2s_skip_add(&h, &x, &sources).unwrap().dims(), &[0, 6]);
    }
}
