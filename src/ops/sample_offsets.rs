//! Per-sample row offsets of packed activations `[T, C]`: `B+1` non-decreasing entries from 0 to
//! T, sample `b` owning rows `offsets[b]..offsets[b+1]`. The checks and lookups shared by the
//! per-sample fused ops (LayerNorm + modulation, gated residual) and their GPU forwards.

use candle_core::{bail, Result};

/// Checks `offsets` against `rows` and returns the number of samples; `op` names the op.
pub(crate) fn check_offsets(op: &str, offsets: &[usize], rows: usize) -> Result<usize> {
    let o = offsets;
    if o.len() < 2 || o[0] != 0 || o[o.len() - 1] != rows || o.windows(2).any(|w| w[0] > w[1]) {
        bail!("{op}: offsets {o:?} must rise from 0 to {rows}");
    }
    Ok(o.len() - 1)
}

/// Sample of each row, for checked `offsets`.
pub(crate) fn sample_of_rows(offsets: &[usize]) -> Vec<usize> {
    let mut s = Vec::with_capacity(offsets[offsets.len() - 1]);
    for (b, w) in offsets.windows(2).enumerate() {
        s.extend(std::iter::repeat_n(b, w[1] - w[0]));
    }
    s
}

/// The offsets as the GPU kernels take them, or an error when a row index exceeds u32.
#[cfg_attr(not(any(feature = "metal", feature = "cuda")), allow(dead_code))]
pub(crate) fn offsets_u32(op: &str, offsets: &[usize]) -> Result<Vec<u32>> {
    offsets
        .iter()
        .map(|&o| {
            u32::try_from(o).map_err(|_| candle_core::Error::Msg(format!("{op}: offset {o} > u32")))
        })
        .collect()
}
