//! The feature move of a space→channel downsampling (`SparseSpatial2Channel`, factor 2;
//! docs/MODEL.md §13.3): each parent voxel's row holds its eight children's features side by
//! side, child `s` in channels `[s·C, (s+1)·C)`, zeros where the child is absent:
//! `out[m, s·C + c] = feats[slots[m·8 + s], c]`, or 0 when `slots[m·8 + s]` is
//! [`ABSENT`]. Which child sits in which slot is coordinate work (`sparse::Downsampling`); this
//! op only gathers.
//!
//! Operands: feats `[N, C]` (f32, f16 or bf16), slots `[M·8]` u32. The CPU forward is the
//! reference the CUDA kernel (kernels/cuda/channel_to_space.cu) and the Metal kernel
//! (kernels/metal/elementwise.metal) are tested against; [`space_to_channel_slow`] is the same
//! gather composed of candle ops. A pure copy: every backend gives the same bits.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::ops::storage::{contiguous, u32_operand};
use crate::ops::vocab::{ABSENT, CHILDREN};

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "metal")]
mod metal;

struct SpaceToChannel;

/// `out [M, 8C]` from `feats [N, C]` by `slots [M·8]` (checked by the caller).
fn gather<T: Copy + Send + Sync>(feats: &[T], slots: &[u32], c: usize, zero: T) -> Vec<T> {
    let mut out = vec![zero; slots.len() * c];
    if c > 0 {
        out.par_chunks_mut(c)
            .zip(slots.par_iter())
            .for_each(|(o, &s)| {
                if s != ABSENT {
                    let s = s as usize;
                    o.copy_from_slice(&feats[s * c..(s + 1) * c]);
                }
            });
    }
    out
}

impl CustomOp2 for SpaceToChannel {
    fn name(&self) -> &'static str {
        "space-to-channel"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        const OP: &str = "space_to_channel";
        let (n, c) = l1.shape().dims2()?;
        let slots = u32_operand(s2, l2, OP, "slots")?;
        if let Some((i, &s)) = slots
            .iter()
            .enumerate()
            .find(|(_, &s)| s != ABSENT && s as usize >= n)
        {
            bail!("{OP}: slot {i} names row {s} of {n} input rows");
        }
        let shape = Shape::from((slots.len() / CHILDREN, CHILDREN * c));
        let out = match s1 {
            CpuStorage::F32(d) => {
                CpuStorage::F32(gather(contiguous(d, l1, OP, "feats")?, slots, c, 0.0))
            }
            CpuStorage::F16(d) => CpuStorage::F16(gather(
                contiguous(d, l1, OP, "feats")?,
                slots,
                c,
                half::f16::ZERO,
            )),
            CpuStorage::BF16(d) => CpuStorage::BF16(gather(
                contiguous(d, l1, OP, "feats")?,
                slots,
                c,
                half::bf16::ZERO,
            )),
            other => bail!(
                "{OP}: feats must be f32, f16 or bf16, got {:?}",
                other.dtype()
            ),
        };
        Ok((out, shape))
    }

    /// kernels/cuda/channel_to_space.cu, tested against `cpu_fwd` in tests/cuda_kernels.rs.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::space_to_channel((s1, l1), (s2, l2))
    }

    /// kernels/metal/elementwise.metal, executed against `cpu_fwd` in tests/metal_emu.rs.
    #[cfg(feature = "metal")]
    fn metal_fwd(
        &self,
        s1: &candle_core::MetalStorage,
        l1: &Layout,
        s2: &candle_core::MetalStorage,
        l2: &Layout,
    ) -> Result<(candle_core::MetalStorage, Shape)> {
        metal::space_to_channel((s1, l1), (s2, l2))
    }
}

/// Checks `feats [N, C]` and `slots [M·8]` u32.
fn check(feats: &Tensor, slots: &Tensor) -> Result<()> {
    if feats.rank() != 2 {
        bail!(
            "space_to_channel: feats must be [N, C], got {:?}",
            feats.dims()
        );
    }
    if !matches!(feats.dtype(), DType::F32 | DType::F16 | DType::BF16) {
        bail!(
            "space_to_channel: feats must be f32, f16 or bf16, got {:?}",
            feats.dtype()
        );
    }
    if slots.rank() != 1 || slots.dtype() != DType::U32 || slots.dim(0)? % CHILDREN != 0 {
        bail!(
            "space_to_channel: slots must be [M·8] u32, got {:?} {:?}",
            slots.dtype(),
            slots.dims()
        );
    }
    Ok(())
}

/// `[M, 8C]`: row `m` holds the rows `slots[m·8 .. m·8 + 8]` of `feats` side by side, zeros for
/// [`ABSENT`] slots (see the module docs). A slot naming a row past `feats` is an error on the
/// CPU; the GPU kernels write zeros for it.
pub fn space_to_channel(feats: &Tensor, slots: &Tensor) -> Result<Tensor> {
    check(feats, slots)?;
    feats
        .contiguous()?
        .apply_op2_no_bwd(&slots.contiguous()?, &SpaceToChannel)
}

/// The same gather from candle ops: a zero row appended to `feats`, absent slots pointed at it,
/// `index_select`, reshape.
pub fn space_to_channel_slow(feats: &Tensor, slots: &Tensor) -> Result<Tensor> {
    check(feats, slots)?;
    let (n, c) = feats.dims2()?;
    let zero = Tensor::zeros((1, c), feats.dtype(), feats.device())?;
    let padded = Tensor::cat(&[feats, &zero], 0)?;
    let rows = slots.minimum(n as u32)?;
    padded
        .index_select(&rows, 0)?
        .reshape((slots.dim(0)? / CHILDREN, CHILDREN * c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn children_land_in_their_channel_blocks_and_absent_ones_are_zero() {
        let dev = Device::Cpu;
        let feats = Tensor::new(&[[1f32, 2.], [3., 4.], [5., 6.]], &dev).unwrap();
        let a = ABSENT;
        let slots =
            Tensor::new(&[2u32, a, a, 0, a, a, a, a, a, a, a, a, a, a, 1, a], &dev).unwrap();
        let fast = space_to_channel(&feats, &slots).unwrap();
        let slow = space_to_channel_slow(&feats, &slots).unwrap();
        let want = vec![
            vec![
                5f32, 6., 0., 0., 0., 0., 1., 2., 0., 0., 0., 0., 0., 0., 0., 0.,
            ],
            vec![
                0f32, 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 3., 4., 0., 0.,
            ],
        ];
        assert_eq!(fast.to_vec2::<f32>().unwrap(), want);
        assert_eq!(slow.to_vec2::<f32>().unwrap(), want);
        let half = space_to_channel(&feats.to_dtype(DType::F16).unwrap(), &slots).unwrap();
        assert_eq!(
            half.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap(),
            want
        );
    }

    #[test]
    fn bad_operands_are_named() {
        let dev = Device::Cpu;
        let feats = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
        let slots = Tensor::new(&[0u32, 1, 2, 3, 4, 5, 6, 7], &dev).unwrap();
        let err = space_to_channel(&feats, &slots).unwrap_err().to_string();
        assert!(err.contains("slot 2 names row 2"), "{err}");
        let err = space_to_channel(&feats, &slots.narrow(0, 0, 7).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("[M·8]"), "{err}");
    }
}
