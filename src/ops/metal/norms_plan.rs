//! Dispatch plans of the fused DiT elementwise kernels (kernels/metal/norms.metal): one
//! simdgroup per row, 4 rows per threadgroup. Backend-free, so the emulator runs these plans.

use super::dispatch::{dtype_tag, Dispatch, Work, THREADS};
use super::kargs::{NormModulateArgs, RmsRopeArgs};
use candle_core::{bail, DType, Result};

/// Rows per threadgroup: one per simdgroup.
pub const NORM_ROWS: usize = THREADS as usize / 32;

fn u32_of(what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{what} = {v} exceeds u32")))
}

/// `rows` rows of `width` elements of `elem` bytes, each read and written once.
fn plan<A>(
    kernel: String,
    rows: usize,
    width: usize,
    elem: usize,
    args: A,
) -> Result<Option<Dispatch<A>>> {
    if rows == 0 {
        return Ok(None);
    }
    Ok(Some(Dispatch {
        kernel,
        threadgroups: [u32_of("threadgroups", rows.div_ceil(NORM_ROWS))?, 1, 1],
        threads: [THREADS, 1, 1],
        threadgroup_memory: 0,
        args,
        work: Work::bytes((2 * rows * width * elem) as f64),
    }))
}

/// `x [rows, channels]` split into `samples`; `None` when there are no rows.
pub fn norm_modulate_dispatch(
    rows: usize,
    channels: usize,
    samples: usize,
    eps: f32,
    dtype: DType,
) -> Result<Option<Dispatch<NormModulateArgs>>> {
    if samples == 0 {
        bail!("layer_norm_modulate: at least one sample");
    }
    let args = NormModulateArgs {
        rows: u32_of("rows", rows)?,
        channels: u32_of("channels", channels)?,
        samples: u32_of("samples", samples)?,
        eps,
    };
    plan(
        format!("layer_norm_modulate_{}", dtype_tag(dtype)?),
        rows,
        channels,
        dtype.size_in_bytes(),
        args,
    )
}

/// `x [tokens, heads, head_dim]` rotated by a table of `table_rows` rows (`tokens`, or 1: the
/// same rotation for every token); `None` when there are no rows.
pub fn rms_rope_dispatch(
    tokens: usize,
    heads: usize,
    head_dim: usize,
    normalize: bool,
    table_rows: usize,
    dtype: DType,
) -> Result<Option<Dispatch<RmsRopeArgs>>> {
    if table_rows != tokens && table_rows != 1 {
        bail!("rms_norm_rope: a rotation table of {table_rows} rows for {tokens} tokens");
    }
    let rows = tokens * heads;
    let args = RmsRopeArgs {
        rows: u32_of("rows", rows)?,
        heads: u32_of("heads", heads)?,
        head_dim: u32_of("head_dim", head_dim)?,
        normalize: normalize as u32,
        table_rows: u32_of("table_rows", table_rows)?,
    };
    plan(
        format!("rms_norm_rope_{}", dtype_tag(dtype)?),
        rows,
        head_dim,
        dtype.size_in_bytes(),
        args,
    )
}
