//! Dispatch plans for the Metal kernels: kernel names (built from the same parameters the
//! `.metal` files instantiate), grids, threadgroup memory, and the split of one op into several
//! dispatches so that no command buffer runs long enough for the macOS GPU watchdog to kill it
//! (docs/METAL.md, "Watchdog and dispatch"). Backend-free so the emulator tests run these exact plans.

pub use crate::ops::vocab::{Dispatch, THREADS};

use super::kargs::{AttentionArgs, DeformIm2ColArgs, SparseConvArgs};
use candle_core::{bail, DType, Result};

/// Multiply-accumulates allowed in one dispatch (padded tiles, absent taps counted). 2^31 MACs
/// take ~16 ms on an M1 (1.3 TFMA/s) at 10% efficiency; candle commits a command buffer every
/// 50 encoders by default, so a command buffer stays well under a second.
pub const MAX_MACS_PER_DISPATCH: u64 = 1 << 31;

/// The dtype part of kernel names (`f32`, `f16`, `bf16`), as in candle's own kernels.
pub fn dtype_tag(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        d => bail!("metal kernels take f32, f16 or bf16, got {d:?}"),
    })
}

fn to_u32(what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{what} = {v} exceeds u32")))
}

/// Sparse conv tile: voxels × output channels × input channels (kernels/metal/sparse_conv.metal).
pub const CONV_BM: usize = 64;
pub const CONV_BN: usize = 64;
pub const CONV_BK: usize = 32;
const CONV_TAPS: usize = 27;
/// A [BM][BK] + B [BK][BN] floats, neighbour rows [BM][27] and 32 tap flags (u32).
pub const CONV_THREADGROUP_MEMORY: usize =
    (CONV_BM * CONV_BK + CONV_BK * CONV_BN + CONV_BM * CONV_TAPS + 32) * 4;

/// `sparse_conv_<dtype>_bm64_bn64_bk32`.
pub fn sparse_conv_kernel(dtype: DType) -> Result<String> {
    Ok(format!(
        "sparse_conv_{}_bm{CONV_BM}_bn{CONV_BN}_bk{CONV_BK}",
        dtype_tag(dtype)?
    ))
}

/// Dispatches for `n` voxels, `ci` → `co` channels, each covering a range of voxel tiles worth at
/// most `max_macs` multiply-accumulates (at least one tile). Empty when there is nothing to
/// write (`n == 0` or `co == 0`).
pub fn sparse_conv_dispatches(
    n: usize,
    ci: usize,
    co: usize,
    dtype: DType,
    max_macs: u64,
) -> Result<Vec<Dispatch<SparseConvArgs>>> {
    let kernel = sparse_conv_kernel(dtype)?;
    let (n32, ci32, co32) = (to_u32("voxels", n)?, to_u32("ci", ci)?, to_u32("co", co)?);
    // Voxel indices are multiplied by 27 (map) and by the channels (feats/out) in 64-bit inside
    // the kernel, but neighbour ids are u32 and ABSENT is u32::MAX.
    if n >= u32::MAX as usize {
        bail!("sparse_conv: {n} voxels do not fit the u32 neighbour map");
    }
    if n == 0 || co == 0 {
        return Ok(Vec::new());
    }
    let voxel_tiles = n.div_ceil(CONV_BM);
    let co_tiles = co.div_ceil(CONV_BN);
    let macs_per_tile =
        (CONV_BM * CONV_TAPS * ci.div_ceil(CONV_BK).max(1) * CONV_BK * co_tiles * CONV_BN) as u64;
    let tiles_per_dispatch = ((max_macs / macs_per_tile) as usize).clamp(1, voxel_tiles);
    let mut out = Vec::new();
    let mut first = 0;
    while first < voxel_tiles {
        let count = tiles_per_dispatch.min(voxel_tiles - first);
        out.push(Dispatch {
            kernel: kernel.clone(),
            threadgroups: [co_tiles as u32, count as u32, 1],
            threads: [THREADS, 1, 1],
            threadgroup_memory: CONV_THREADGROUP_MEMORY,
            args: SparseConvArgs {
                n_voxels: n32,
                ci: ci32,
                co: co32,
                voxel_tile_base: first as u32,
            },
        });
        first += count;
    }
    Ok(out)
}

/// Query rows per attention threadgroup (kernels/metal/attention.metal).
pub const ATTN_BQ: usize = 32;

/// Keys per streamed K/V tile: K and V tiles of `bk × d` floats must fit 16 KB together.
pub fn attention_bk(head_dim: usize) -> Result<usize> {
    match head_dim {
        64 => Ok(32),
        128 => Ok(16),
        d => bail!("attention: the metal kernel takes head dim 64 or 128, got {d}"),
    }
}

/// K and V tiles, four 8×BK probability tiles and four 8×8 diagonals, in floats.
pub fn attention_threadgroup_memory(head_dim: usize) -> Result<usize> {
    let bk = attention_bk(head_dim)?;
    Ok((2 * bk * head_dim + 4 * 8 * bk + 4 * 64) * 4)
}

/// `attention_<dtype>_d<D>_bq32_bk<BK>`.
pub fn attention_kernel(dtype: DType, head_dim: usize) -> Result<String> {
    let bk = attention_bk(head_dim)?;
    Ok(format!(
        "attention_{}_d{head_dim}_bq{ATTN_BQ}_bk{bk}",
        dtype_tag(dtype)?
    ))
}

/// One `(sequence, first query row)` entry per 32-row query tile; tiles never straddle
/// sequences and empty sequences get none. Uploaded as `uint2` pairs.
pub fn attention_tiles(q_offsets: &[usize]) -> Result<Vec<[u32; 2]>> {
    let mut tiles = Vec::new();
    for (b, w) in q_offsets.windows(2).enumerate() {
        let mut r = w[0];
        while r < w[1] {
            tiles.push([to_u32("sequence", b)?, to_u32("query row", r)?]);
            r += ATTN_BQ;
        }
    }
    Ok(tiles)
}

/// Dispatches over `tiles` (from [`attention_tiles`]) × `heads`, consecutive tiles grouped while
/// their multiply-accumulates (q·kᵀ and p·v over the sequence's keys) stay within `max_macs`.
#[allow(clippy::too_many_arguments)]
pub fn attention_dispatches(
    tiles: &[[u32; 2]],
    kv_offsets: &[usize],
    heads: usize,
    head_dim: usize,
    dtype: DType,
    scale: f32,
    max_macs: u64,
) -> Result<Vec<Dispatch<AttentionArgs>>> {
    let kernel = attention_kernel(dtype, head_dim)?;
    let threadgroup_memory = attention_threadgroup_memory(head_dim)?;
    let heads32 = to_u32("heads", heads)?;
    let tile_macs = |t: &[u32; 2]| {
        let b = t[0] as usize;
        let keys = (kv_offsets[b + 1] - kv_offsets[b]) as u64;
        2 * ATTN_BQ as u64 * keys * head_dim as u64 * heads as u64
    };
    let mut out = Vec::new();
    let mut first = 0;
    while first < tiles.len() {
        let mut end = first + 1;
        let mut macs = tile_macs(&tiles[first]);
        while end < tiles.len() && macs + tile_macs(&tiles[end]) <= max_macs {
            macs += tile_macs(&tiles[end]);
            end += 1;
        }
        let count = (end - first) as u32;
        out.push(Dispatch {
            kernel: kernel.clone(),
            threadgroups: [count, heads32, 1],
            threads: [THREADS, 1, 1],
            threadgroup_memory,
            args: AttentionArgs {
                heads: heads32,
                tile_base: first as u32,
                n_tiles: count,
                scale,
            },
        });
        first = end;
    }
    Ok(out)
}

/// Threads per threadgroup of the deformable im2col (kernels/metal/deform_conv.metal).
pub const DEFORM_THREADS: u32 = 128;

/// Column elements one deformable-im2col dispatch may write: each is one bilinear sample (four
/// reads, ~20 flops), so 2^24 of them take a few milliseconds even on small GPUs.
pub const MAX_DEFORM_COLUMNS_PER_DISPATCH: u64 = 1 << 24;

/// `deform_im2col_<dtype>`; only f32 is instantiated (the op computes in f32).
pub fn deform_im2col_kernel(dtype: DType) -> Result<String> {
    if dtype != DType::F32 {
        bail!("deform_conv2d: the metal kernel takes f32 operands, got {dtype:?}");
    }
    Ok(format!("deform_im2col_{}", dtype_tag(dtype)?))
}

/// Dispatches writing the band's column matrix of `band` (its `first`/`count` are ignored),
/// `max_columns` elements at most each. Empty when the matrix is.
pub fn deform_im2col_dispatches(
    band: DeformIm2ColArgs,
    dtype: DType,
    max_columns: u64,
) -> Result<Vec<Dispatch<DeformIm2ColArgs>>> {
    let kernel = deform_im2col_kernel(dtype)?;
    let total = band.columns();
    if total > u32::MAX as u64 {
        bail!("deform_conv2d: a band of {total} column elements exceeds u32 indexing");
    }
    if band.offset_groups == 0 || !band.channels.is_multiple_of(band.offset_groups) || band.kw == 0
    {
        bail!("deform_conv2d: bad im2col geometry {band:?}");
    }
    // At least one threadgroup per dispatch, so a tiny budget cannot stall the loop.
    let step = max_columns.max(DEFORM_THREADS as u64);
    let mut out = Vec::new();
    let mut first = 0u64;
    while first < total {
        let count = step.min(total - first);
        out.push(Dispatch {
            kernel: kernel.clone(),
            threadgroups: [count.div_ceil(DEFORM_THREADS as u64) as u32, 1, 1],
            threads: [DEFORM_THREADS, 1, 1],
            threadgroup_memory: 0,
            args: DeformIm2ColArgs {
                first: first as u32,
                count: count as u32,
                ..band
            },
        });
        first += count;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_split_covers_every_tile_once() {
        let one = sparse_conv_dispatches(1000, 40, 70, DType::F16, u64::MAX).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].threadgroups, [2, 16, 1]);
        // 64 voxels x 27 taps x 64 (padded ci) x 128 (padded co) MACs per tile: 2 tiles each.
        let split =
            sparse_conv_dispatches(1000, 40, 70, DType::F16, 2 * 64 * 27 * 64 * 128).unwrap();
        assert_eq!(split.len(), 8);
        let bases: Vec<u32> = split.iter().map(|d| d.args.voxel_tile_base).collect();
        assert_eq!(bases, [0, 2, 4, 6, 8, 10, 12, 14]);
        assert!(split.iter().all(|d| d.threadgroups[1] == 2));
        assert!(sparse_conv_dispatches(0, 4, 4, DType::F32, 1)
            .unwrap()
            .is_empty());
        assert_eq!(split[0].kernel, "sparse_conv_f16_bm64_bn64_bk32");
    }

    #[test]
    fn attention_tiles_skip_empty_sequences_and_split_by_work() {
        let q = [0, 33, 33, 97];
        let tiles = attention_tiles(&q).unwrap();
        assert_eq!(tiles, [[0, 0], [0, 32], [2, 33], [2, 65]]);
        let kv = [0, 10, 10, 20];
        let all = attention_dispatches(&tiles, &kv, 2, 64, DType::BF16, 0.1, u64::MAX).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].threadgroups, [4, 2, 1]);
        assert_eq!(all[0].kernel, "attention_bf16_d64_bq32_bk32");
        let per_tile = 2 * 32 * 10 * 64 * 2;
        let split = attention_dispatches(&tiles, &kv, 2, 64, DType::BF16, 0.1, per_tile).unwrap();
        assert_eq!(split.len(), 4);
        assert!(split
            .iter()
            .enumerate()
            .all(|(i, d)| d.args.tile_base == i as u32));
        assert!(attention_kernel(DType::F32, 96).is_err());
    }
}
