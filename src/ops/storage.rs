//! Storage access shared by the ops and their backends: borrowing a tensor's elements out of
//! candle's CPU storage inside a custom op's `cpu_fwd`, and which strided layouts a kernel reads
//! in place.

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
