//! Storage access shared by the ops and their backends: borrowing a tensor's elements out of
//! candle's CPU storage inside a custom op's `cpu_fwd`, which strided layouts a kernel reads in
//! place, and the dispatch of a launcher written once over the float element types.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, DType, Layout, Result};

/// The elements of a contiguous operand, borrowed without copying; `op` and `what` name the op and
/// the operand in the error when the layout is strided.
pub(crate) fn contiguous<'a, T>(
    data: &'a [T],
    layout: &Layout,
    op: &str,
    what: &str,
) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((a, z)) if z <= data.len() => Ok(&data[a..z]),
        _ => bail!("{op}: {what} must be contiguous"),
    }
}

/// The f32 operands of a custom op's `cpu_fwd` (two for a `CustomOp2`, three for a
/// `CustomOp3`), contiguous and borrowed; `op` and `names` name the op and the operands in the
/// errors.
pub(crate) fn f32_operands<'a, const N: usize>(
    operands: [(&'a CpuStorage, &Layout); N],
    op: &str,
    names: [&str; N],
) -> Result<[&'a [f32]; N]> {
    let mut out: [&[f32]; N] = [&[]; N];
    for (slot, ((storage, layout), what)) in out.iter_mut().zip(operands.into_iter().zip(names)) {
        let CpuStorage::F32(data) = storage else {
            bail!(
                "{op}: the CPU reference takes f32 {}, got {:?} {what}",
                names.join(", "),
                storage.dtype()
            );
        };
        *slot = contiguous(data, layout, op, what)?;
    }
    Ok(out)
}

/// A u32 operand (indices, a neighbour map) of a custom op's `cpu_fwd`, contiguous and borrowed;
/// `op` and `what` name the op and the operand in the errors.
pub(crate) fn u32_operand<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
    what: &str,
) -> Result<&'a [u32]> {
    let CpuStorage::U32(data) = storage else {
        bail!("{op}: {what} must be u32, got {:?}", storage.dtype());
    };
    contiguous(data, layout, op, what)
}

/// `t` in `dtype`. An empty tensor is made anew on its device rather than cast: candle's CUDA
/// cast launches an empty grid for it, which the driver refuses.
pub(crate) fn cast(
    t: &candle_core::Tensor,
    dtype: candle_core::DType,
) -> Result<candle_core::Tensor> {
    if t.elem_count() == 0 && t.dtype() != dtype {
        return candle_core::Tensor::zeros(t.dims(), dtype, &candle_core::Device::Cpu)?
            .to_device(t.device());
    }
    t.to_dtype(dtype)
}

/// Token stride of a `[N, H, D]` layout whose heads and dims are contiguous within each token
/// row and whose rows do not overlap (`stride ≥ H·D`), e.g. a view of one of q, k, v in a fused
/// `[N, 3, H, D]` projection; `None` for any other layout.
pub(crate) fn token_stride(l: &candle_core::Layout) -> Option<usize> {
    let (n, h, d) = l.shape().dims3().ok()?;
    let st = l.stride();
    let dense_row = (d <= 1 || st[2] == 1) && (h <= 1 || st[1] == d);
    if !dense_row {
        return None;
    }
    if n <= 1 {
        return Some(h * d);
    }
    (st[0] >= h * d).then_some(st[0])
}

/// An element type the float kernels are instantiated for (f32, f16, bf16), with its name in
/// kernel names (`bias_act_bf16`, `layer_norm_act_v32x1_f16`, ...).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) trait FloatElem: candle_core::WithDType + DeviceElem {
    const NAME: &'static str;
}

impl FloatElem for f32 {
    const NAME: &'static str = "f32";
}

impl FloatElem for half::f16 {
    const NAME: &'static str = "f16";
}

impl FloatElem for half::bf16 {
    const NAME: &'static str = "bf16";
}

/// What a device buffer element needs on the backends that are built in.
#[cfg(feature = "cuda")]
pub(crate) trait DeviceElem:
    candle_core::cuda_backend::CudaDType + candle_core::cuda_backend::cudarc::driver::DeviceRepr
{
}

#[cfg(feature = "cuda")]
impl<T> DeviceElem for T where
    T: candle_core::cuda_backend::CudaDType + candle_core::cuda_backend::cudarc::driver::DeviceRepr
{
}

/// What a device buffer element needs on the backends that are built in.
#[cfg(not(feature = "cuda"))]
pub(crate) trait DeviceElem {}

#[cfg(not(feature = "cuda"))]
impl<T> DeviceElem for T {}

/// A computation written once for every float element type (a launcher's body), run for a
/// dtype known only at run time by [`with_float`].
pub(crate) trait FloatFn {
    type Output;
    fn call<T: FloatElem>(self) -> Result<Self::Output>;
}

/// Every float dtype.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) const FLOATS: &[DType] = &[DType::F32, DType::F16, DType::BF16];

/// The 16-bit float dtypes (the tensor cores' operands).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) const HALVES: &[DType] = &[DType::BF16, DType::F16];

/// `f` for the element type of `dtype` when `dtype` is one of `dtypes` (a subset of
/// [`FLOATS`]); otherwise the error `unsupported` words.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn with_float<F: FloatFn>(
    dtype: DType,
    dtypes: &[DType],
    f: F,
    unsupported: impl FnOnce() -> String,
) -> Result<F::Output> {
    match dtype {
        _ if !dtypes.contains(&dtype) => Err(candle_core::Error::Msg(unsupported())),
        DType::F32 => f.call::<f32>(),
        DType::F16 => f.call::<half::f16>(),
        DType::BF16 => f.call::<half::bf16>(),
        _ => Err(candle_core::Error::Msg(unsupported())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The name of the element type a dtype dispatches to.
    struct Name;

    impl FloatFn for Name {
        type Output = &'static str;
        fn call<T: FloatElem>(self) -> Result<&'static str> {
            assert_eq!(T::DTYPE.as_str(), T::NAME);
            Ok(T::NAME)
        }
    }

    #[test]
    fn each_float_dtype_runs_its_own_element_type() {
        for (dtype, name) in [
            (DType::F32, "f32"),
            (DType::F16, "f16"),
            (DType::BF16, "bf16"),
        ] {
            assert_eq!(with_float(dtype, FLOATS, Name, String::new).unwrap(), name);
        }
        let err = with_float(DType::F32, HALVES, Name, || "no f32 here".into()).unwrap_err();
        assert_eq!(err.to_string(), "no f32 here");
        assert!(with_float(DType::U32, FLOATS, Name, || "no u32".into()).is_err());
    }
}
