//! Operands and outputs of the Metal launchers: byte offsets of contiguous operands, fresh
//! output buffers.

use candle_core::backend::BackendStorage;
use candle_core::{bail, DType, Layout, MetalStorage, Result};

/// A storage and its layout, as a custom op's `metal_fwd` receives them.
pub(crate) type Operand<'a> = (&'a MetalStorage, &'a Layout);

/// Byte offset of a contiguous operand of the expected dtype.
pub(crate) fn start(op: &str, what: &str, (s, l): Operand<'_>, dtype: DType) -> Result<usize> {
    if s.dtype() != dtype {
        bail!(
            "{op} (metal): {what} must be {dtype:?}, got {:?}",
            s.dtype()
        );
    }
    match l.contiguous_offsets() {
        Some((a, _)) => Ok(a * dtype.size_in_bytes()),
        None => bail!("{op} (metal): {what} must be contiguous"),
    }
}

/// A fresh `count`-element buffer in x's dtype.
pub(crate) fn output(x: &MetalStorage, count: usize, label: &str) -> Result<MetalStorage> {
    let device = x.device();
    let buffer = device
        .new_buffer_builder()
        .with_size_for(count.max(1), x.dtype())
        .with_label(label)
        .build()?;
    Ok(MetalStorage::new(buffer, device.clone(), count, x.dtype()))
}
