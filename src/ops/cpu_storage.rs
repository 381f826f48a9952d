//! Borrowing a tensor's elements out of candle's CPU storage inside a custom op's `cpu_fwd`.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, Layout, Result};

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
