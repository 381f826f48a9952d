//! Borrowing a tensor's elements out of candle's CPU storage inside a custom op's `cpu_fwd`.

use candle_core::{bail, Layout, Result};

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
