//! A linear layer on Metal runs candle's matmul (MLX's GEMM); this accounts it in the device's
//! command-buffer budget first, so the budget sees the DiT's largest dispatches
//! (docs/METAL.md, "Watchdog and dispatch").

use crate::ops::metal::budget::{matmul_work, seconds, COMMAND_BUFFER_SECONDS};
use crate::ops::metal::submit::before_dispatch;
use candle_core::{DType, MetalDevice, Result};

/// Before the `[rows, inner] · [inner, out]` product of `dtype` operands.
pub(crate) fn before_matmul(
    device: &MetalDevice,
    rows: usize,
    inner: usize,
    out: usize,
    dtype: DType,
) -> Result<()> {
    before_dispatch(device, matmul_work(rows, inner, out, dtype.size_in_bytes()))
}

/// Whether the `[rows, inner] · [inner, out]` product of `dtype` operands is estimated within one
/// command buffer's budget.
pub(crate) fn fits_command_buffer(rows: usize, inner: usize, out: usize, dtype: DType) -> bool {
    seconds(matmul_work(rows, inner, out, dtype.size_in_bytes())) <= COMMAND_BUFFER_SECONDS
}
