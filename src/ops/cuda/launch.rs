//! Launch shapes shared by several kernels: the row-per-warp norms of `kernels/cuda/norms.cu`
//! and the grid-stride elementwise kernels.

use candle_core::cuda_backend::cudarc::driver::LaunchConfig;

/// Rows per 256-thread block of `kernels/cuda/norms.cu` (one warp a row).
const NORM_ROWS: usize = 8;

pub(crate) fn norm_launch(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.div_ceil(NORM_ROWS) as u32, 1, 1),
        block_dim: ((32 * NORM_ROWS) as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// 256 threads in `rows_per_block` lane groups, one group a row (the vector kernels).
pub(crate) fn norm_launch_groups(rows: usize, rows_per_block: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.div_ceil(rows_per_block) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The register-resident vector kernel of `kernels/cuda/norms.cu` for LayerNorm rows of `c`
/// values of `elem` bytes: `(lanes a row, 16-byte vectors a lane)`, or None (the scalar kernel)
/// when `c` is not a multiple of the 16-byte vector or the row would take more than 16 vectors
/// a lane. The kernels check the pointers' alignment themselves.
pub(crate) fn norm_vec_shape(c: usize, elem: usize) -> Option<(usize, usize)> {
    let e = 16 / elem;
    if c == 0 || !c.is_multiple_of(e) {
        return None;
    }
    match c / e {
        0..=8 => Some((8, 1)),
        9..=16 => Some((16, 1)),
        n @ 17..=512 => Some((32, n.div_ceil(32).next_power_of_two())),
        _ => None,
    }
}

/// The LayerNorm kernel `{base}_{ty}` or its vector variant, and its launch.
pub(crate) fn layer_norm_kernel(
    base: &str,
    ty: &str,
    c: usize,
    elem: usize,
    rows: usize,
) -> (String, LaunchConfig) {
    match norm_vec_shape(c, elem) {
        Some((l, nv)) => (
            format!("{base}_v{l}x{nv}_{ty}"),
            norm_launch_groups(rows, 256 / l),
        ),
        None => (format!("{base}_{ty}"), norm_launch(rows)),
    }
}

/// Threads per block of `kernels/cuda/elementwise.cu`.
const EW_THREADS: usize = 256;

/// Launch shape of an elementwise kernel over `vectors` work items: grid-stride loops, at most
/// 16 blocks of 256 threads per SM's worth of work (132 SMs on an H100) so large tensors do not
/// pay for block scheduling.
pub(crate) fn elementwise_launch(vectors: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (vectors.div_ceil(EW_THREADS).clamp(1, 132 * 16) as u32, 1, 1),
        block_dim: (EW_THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Elements per thread of the elementwise kernels for rows of `c` elements of `T` starting at
/// element offsets `starts`: 16 bytes when every row and operand start is 16-byte aligned.
pub(crate) fn elementwise_vec<T>(c: usize, starts: &[usize]) -> usize {
    let vec = 16 / std::mem::size_of::<T>();
    if c.is_multiple_of(vec) && starts.iter().all(|s| s.is_multiple_of(vec)) {
        vec
    } else {
        1
    }
}
