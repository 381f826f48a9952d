//! Dispatch plans for the Metal kernels: kernel names (built from the same parameters the
//! `.metal` files instantiate), grids, threadgroup memory and the work each dispatch does. A
//! dispatch carries a whole op (attention: every query tile × every head; conv: every voxel tile
//! × every output-channel tile) unless the op's estimated GPU time alone exceeds the command
//! buffer's budget; then it is split into as few dispatches as keep each within it
//! (`budget::parts`; docs/METAL.md, "Watchdog and dispatch"). Backend-free so the emulator tests
//! and `trellis2 dev metal-plan` run these exact plans.

pub use crate::ops::vocab::{Dispatch, Work, THREADS};

use super::budget::{parts, seconds};
use super::kargs::{AttentionArgs, DeformIm2ColArgs, SparseConvArgs};
use crate::ops::tuning::MetalAttention;
use crate::ops::vocab::{ABSENT, TAPS};
use candle_core::{bail, DType, Result};

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
/// Channels per vector load of the conv's staging (4 elements: 8 bytes in f16/bf16, 16 in f32).
pub const CONV_VEC: usize = 4;

/// Threadgroup memory of the conv in `dtype`: per stage an A `[BM][BK + pad]` and a B
/// `[BN][BK + pad]` tile of the operand dtype (rows padded by 16 bytes), two stages for 2-byte
/// types (one for f32, whose two would exceed 32 KiB), then the neighbour rows `[BM][27]`, 32
/// tap flags and the `BM` voxel ids of the tile's rows (u32). The epilogue's float
/// `[BM][BN + 4]` tile reuses the stages.
pub fn conv_threadgroup_memory(dtype: DType) -> usize {
    let elem = dtype.size_in_bytes();
    let stages = if elem == 2 { 2 } else { 1 };
    let row = CONV_BK * elem + 16;
    stages * (CONV_BM + CONV_BN) * row + (CONV_BM * TAPS + 32 + CONV_BM) * 4
}

/// Whether the conv may load feats and weight rows 4 elements at a time: `ci` a multiple of 4
/// and every operand start (in elements) too, so each vector is aligned to its size.
pub fn conv_vec_loads(ci: usize, starts: &[usize]) -> bool {
    ci.is_multiple_of(CONV_VEC) && starts.iter().all(|s| s.is_multiple_of(CONV_VEC))
}

/// Live taps of a 64-voxel tile of a voxelised sphere shell in the coordinates' own (x-major)
/// order, the estimate the host plans with: the kernel skips a tap only when none of the
/// tile's 64 voxels has that neighbour, and along a surface nearly every tap has one (measured
/// 26.8–26.9 of 27 for radii 14–58, although each voxel has only ≈ 16.5 neighbours; a unit test
/// keeps the number). The map on the device would say exactly, but reading it back is a host
/// sync; [`live_taps_per_tile`] counts it where the map is on the host.
pub const SHELL_LIVE_TAPS: f64 = 26.9;

/// Live taps of a 64-voxel tile of the same shells in the voxel order the Metal conv follows
/// (`NeighbourMap::conv_order`: voxels sorted by neighbour mask within the default windows,
/// `sparse::conv_order::default_sort_window`, the same as CUDA's; a unit test keeps the number).
/// Measured for radii 28, 58 and 256 (17 k, 74 k and 1.43 M voxels): 21.5, 20.3 and 18.9 in
/// windows of 16 k voxels (2 KB rows), 21.3, 18.9 and 17.1 in windows of 131 k (256-byte rows);
/// windows of 1,024 voxels reached 24.3, 24.2 and 22.7. The midpoint, so the estimate errs long
/// for the largest sets.
pub const SORTED_SHELL_LIVE_TAPS: f64 = 19.3;

/// The live taps the host plans a conv with: [`SORTED_SHELL_LIVE_TAPS`] when it follows a voxel
/// order, else [`SHELL_LIVE_TAPS`].
pub fn shell_live_taps(ordered: bool) -> f64 {
    if ordered {
        SORTED_SHELL_LIVE_TAPS
    } else {
        SHELL_LIVE_TAPS
    }
}

/// How the conv reads its rows: `vec_loads` ([`conv_vec_loads`] of the operands) and `ordered`
/// (tiles follow a voxel order, bound after the output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConvRows {
    pub vec_loads: bool,
    pub ordered: bool,
}

/// Mean live taps per 64-row tile of a `[T·27]` neighbour map: taps that at least one row of
/// the tile has (what the kernel walks).
pub fn live_taps_per_tile(map: &[u32]) -> f64 {
    let rows = map.len() / TAPS;
    if rows == 0 {
        return 0.0;
    }
    let tiles = map.chunks(CONV_BM * TAPS);
    let count = tiles.len();
    let live: u32 = tiles
        .map(|tile| {
            tile.chunks_exact(TAPS).fold(0u32, |mask, row| {
                row.iter()
                    .enumerate()
                    .filter(|(_, &v)| v != ABSENT)
                    .fold(mask, |m, (k, _)| m | 1 << k)
            })
        })
        .map(u32::count_ones)
        .sum();
    live as f64 / count as f64
}

/// `sparse_conv_<dtype>_bm64_bn64_bk32`.
pub fn sparse_conv_kernel(dtype: DType) -> Result<String> {
    Ok(format!(
        "sparse_conv_{}_bm{CONV_BM}_bn{CONV_BN}_bk{CONV_BK}",
        dtype_tag(dtype)?
    ))
}

/// Work of one 64-voxel tile over every output-channel tile, with `live_taps` taps walked:
/// padded MACs, and per (tile, tap) the gathered rows and the weight slice, plus the output.
fn conv_tile_work(ci: usize, co: usize, live_taps: f64, elem: usize) -> Work {
    let co_tiles = co.div_ceil(CONV_BN) as f64;
    let ci_padded = (ci.div_ceil(CONV_BK) * CONV_BK) as f64;
    let (bm, bn, elem) = (CONV_BM as f64, CONV_BN as f64, elem as f64);
    Work {
        flops: 2.0 * bm * live_taps * ci_padded * co_tiles * bn,
        bytes: co_tiles * (bm * TAPS as f64 * 4.0 + live_taps * (bm + bn) * ci as f64 * elem)
            + bm * co as f64 * elem,
    }
}

/// Dispatches for `n` voxels, `ci` → `co` channels: the grid is (output-channel tiles, voxel
/// tiles), one dispatch for the whole conv unless its estimated time ([`SHELL_LIVE_TAPS`] or a
/// map's [`live_taps_per_tile`] taps per tile) exceeds `max_seconds`; then as few dispatches
/// over consecutive voxel-tile ranges as keep each within it. Empty when there is nothing to
/// write (`n == 0` or `co == 0`). `rows`: vector loads and the voxel order.
pub fn sparse_conv_dispatches(
    n: usize,
    ci: usize,
    co: usize,
    dtype: DType,
    live_taps: f64,
    max_seconds: f64,
    rows: ConvRows,
) -> Result<Vec<Dispatch<SparseConvArgs>>> {
    let ConvRows { vec_loads, ordered } = rows;
    if vec_loads && !ci.is_multiple_of(CONV_VEC) {
        bail!("sparse_conv: vector loads need ci % {CONV_VEC} == 0, got {ci}");
    }
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
    let co_tiles = to_u32("co tiles", co.div_ceil(CONV_BN))?;
    let tile = conv_tile_work(
        ci,
        co,
        live_taps.clamp(0.0, TAPS as f64),
        dtype.size_in_bytes(),
    );
    let total = tile.scaled(voxel_tiles as f64);
    // Tiles cost the same, so equal ranges; one more part while the ceil-rounded range of the
    // first still exceeds the limit.
    let mut count = parts(seconds(total), max_seconds, voxel_tiles);
    let mut per = voxel_tiles.div_ceil(count);
    while per > 1 && seconds(tile.scaled(per as f64)) > max_seconds {
        count += 1;
        per = voxel_tiles.div_ceil(count);
    }
    let mut out = Vec::new();
    let mut first = 0;
    while first < voxel_tiles {
        let tiles = per.min(voxel_tiles - first);
        out.push(Dispatch {
            kernel: kernel.clone(),
            threadgroups: [co_tiles, to_u32("voxel tiles", tiles)?, 1],
            threads: [THREADS, 1, 1],
            threadgroup_memory: conv_threadgroup_memory(dtype),
            args: SparseConvArgs {
                n_voxels: n32,
                ci: ci32,
                co: co32,
                voxel_tile_base: to_u32("voxel tile", first)?,
                vec_loads: u32::from(vec_loads),
                ordered: u32::from(ordered),
            },
            work: tile.scaled(tiles as f64),
        });
        first += tiles;
    }
    Ok(out)
}

/// Query rows per attention threadgroup (kernels/metal/attention.metal).
pub const ATTN_BQ: usize = 32;

/// Keys per streamed K/V tile: K and V tiles of `bk × (d + 4)` floats must fit 17 KB together.
pub fn attention_bk(head_dim: usize) -> Result<usize> {
    match head_dim {
        64 => Ok(32),
        128 => Ok(16),
        d => bail!("attention: the metal kernel takes head dim 64 or 128, got {d}"),
    }
}

/// Bytes: the larger of the float Q/output staging `[32][d + 4]` and the K and V tiles
/// `[bk][d + 16 / size]` in the operand dtype (rows padded by 16 bytes against bank conflicts);
/// scores, probabilities, the rescale and 1/sum stay in registers (simdgroup matrices).
pub fn attention_threadgroup_memory(head_dim: usize, dtype: DType) -> Result<usize> {
    let bk = attention_bk(head_dim)?;
    let elem = dtype.size_in_bytes();
    let staging = ATTN_BQ * (head_dim + 4) * 4;
    let kv = 2 * bk * (head_dim + 16 / elem) * elem;
    Ok(staging.max(kv))
}

/// The attention kernel reads and writes rows as 4-element vectors: each operand's byte offset
/// in its buffer must be a multiple of 4 elements (row strides are, as `d` is 64 or 128).
pub fn attention_offsets_aligned(byte_offsets: &[usize], elem: usize) -> Result<()> {
    for &at in byte_offsets {
        if !at.is_multiple_of(4 * elem) {
            bail!(
                "attention: the metal kernel needs operands at multiples of {} bytes, one is at {at}",
                4 * elem
            );
        }
    }
    Ok(())
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

/// Work of one query tile of one head over `keys` keys: q·kᵀ and p·v on 32 (padded) rows, the
/// K and V rows streamed once, the tile's q read and output written.
fn attention_tile_work(keys: usize, head_dim: usize, elem: usize) -> Work {
    let (bq, keys, d, elem) = (ATTN_BQ as f64, keys as f64, head_dim as f64, elem as f64);
    Work {
        flops: 4.0 * bq * keys * d,
        bytes: (2.0 * keys + 2.0 * bq) * d * elem,
    }
}

/// Dispatches over `tiles` (from [`attention_tiles`]) × `heads`: one dispatch of every tile and
/// head unless the call's estimated time exceeds `max_seconds`; then as few dispatches over
/// consecutive tile ranges as keep each within it, the ranges balanced by work (a tile's work
/// grows with its sequence's keys).
#[allow(clippy::too_many_arguments)]
pub fn attention_dispatches(
    tiles: &[[u32; 2]],
    kv_offsets: &[usize],
    heads: usize,
    head_dim: usize,
    dtype: DType,
    scale: f32,
    max_seconds: f64,
) -> Result<Vec<Dispatch<AttentionArgs>>> {
    let kernel = attention_kernel(dtype, head_dim)?;
    let threadgroup_memory = attention_threadgroup_memory(head_dim, dtype)?;
    let heads32 = to_u32("heads", heads)?;
    let elem = dtype.size_in_bytes();
    let mut work = Vec::with_capacity(tiles.len());
    for t in tiles {
        let b = t[0] as usize;
        let (Some(&k0), Some(&k1)) = (kv_offsets.get(b), kv_offsets.get(b + 1)) else {
            bail!(
                "attention: tile of sequence {b} outside {} kv offsets",
                kv_offsets.len()
            );
        };
        work.push(attention_tile_work(k1.saturating_sub(k0), head_dim, elem).scaled(heads as f64));
    }
    let ranges = balanced_ranges(&work, max_seconds);
    let mut out = Vec::with_capacity(ranges.len());
    for range in ranges {
        let count = to_u32("tiles", range.len())?;
        out.push(Dispatch {
            kernel: kernel.clone(),
            threadgroups: [count, heads32, 1],
            threads: [THREADS, 1, 1],
            threadgroup_memory,
            args: AttentionArgs {
                heads: heads32,
                tile_base: to_u32("tile", range.start)?,
                n_tiles: count,
                scale,
            },
            work: work[range].iter().fold(Work::default(), |a, &w| a + w),
        });
    }
    Ok(out)
}

/// Query rows per threadgroup of candle's fused attention (`sdpa`: MLX's steel attention, in
/// candle-metal-kernels), and its threads: 4 simdgroups of 32.
pub const SDPA_BQ: usize = 32;
const SDPA_THREADS: [u32; 3] = [32, 4, 1];
/// Apple GPUs' threadgroup memory per threadgroup.
const MAX_THREADGROUP_MEMORY: usize = 32 * 1024;

/// The head dims candle's steel attention is instantiated for (512 only in f16/bf16; not used).
pub const SDPA_HEAD_DIMS: [usize; 7] = [32, 64, 72, 80, 96, 128, 256];

/// The equal-length batch candle's `sdpa` sees in a packed varlen call: `batch` sequences of
/// `q_len` queries and `kv_len` keys, the `[tokens, heads, head_dim]` rows viewed as
/// `(batch, heads, len, head_dim)` through strides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SdpaShape {
    pub batch: usize,
    pub q_len: usize,
    pub kv_len: usize,
}

/// Heads `first..first + count` of one sdpa dispatch (a call over the command-buffer budget is
/// split by heads: every view of a head range is the same strides from another offset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SdpaHeads {
    pub first: usize,
    pub count: usize,
}

/// The batch shape if candle's `sdpa` takes the call, else why not (for the message of a pinned
/// `TRELLIS2_METAL_ATTENTION=sdpa`).
pub fn sdpa_shape(
    q_offsets: &[usize],
    kv_offsets: &[usize],
    head_dim: usize,
    dtype: DType,
) -> std::result::Result<SdpaShape, String> {
    if !SDPA_HEAD_DIMS.contains(&head_dim) {
        return Err(format!("head dim {head_dim} (it takes {SDPA_HEAD_DIMS:?})"));
    }
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(format!("dtype {dtype:?}"));
    }
    let memory = sdpa_threadgroup_memory(dtype, head_dim);
    if memory > MAX_THREADGROUP_MEMORY {
        return Err(format!(
            "{dtype:?} at head dim {head_dim} (its tiles take {memory} bytes of threadgroup \
             memory, more than 32 KiB)"
        ));
    }
    let one_length = |offsets: &[usize]| -> Option<usize> {
        let first = offsets.get(1)? - offsets.first()?;
        offsets
            .windows(2)
            .all(|w| w[1] - w[0] == first)
            .then_some(first)
    };
    let (Some(q_len), Some(kv_len)) = (one_length(q_offsets), one_length(kv_offsets)) else {
        return Err("sequences of different lengths (it takes one length per call)".into());
    };
    if q_len < 2 || kv_len < 1 {
        return Err(format!(
            "{q_len}-query, {kv_len}-key sequences (its full kernel takes 2 queries or more)"
        ));
    }
    Ok(SdpaShape {
        batch: q_offsets.len() - 1,
        q_len,
        kv_len,
    })
}

/// Keys per tile of the steel attention: 32 below head dim 128, 16 from it (the tiles
/// candle-metal-kernels instantiates).
pub fn sdpa_bk(head_dim: usize) -> usize {
    if head_dim < 128 {
        32
    } else {
        16
    }
}

/// `steel_attention_<type>_bq32_bk<BK>_bd<D>_wm4_wn1_mask<type>` (the name candle-metal-kernels
/// instantiates; BK from [`sdpa_bk`]).
pub fn sdpa_kernel(dtype: DType, head_dim: usize) -> Result<String> {
    let t = match dtype {
        DType::F32 => "float32",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        d => bail!("sdpa takes f32, f16 or bf16, got {d:?}"),
    };
    let bk = sdpa_bk(head_dim);
    Ok(format!(
        "steel_attention_{t}_bq{SDPA_BQ}_bk{bk}_bd{head_dim}_wm4_wn1_mask{t}"
    ))
}

/// The steel attention kernel's threadgroup memory (declared in the kernel, not set by the
/// host): a 32-row Q tile and one K-or-V tile, rows padded by 16 bytes.
pub fn sdpa_threadgroup_memory(dtype: DType, head_dim: usize) -> usize {
    let elem = dtype.size_in_bytes();
    let pad = 16 / elem;
    let bk = sdpa_bk(head_dim);
    let kv = ((bk + pad) * head_dim).max(bk * (head_dim + pad));
    (SDPA_BQ * (head_dim + pad) + kv) * elem
}

/// Dispatches of one sdpa call over `shape`: every query tile × head × sequence in one dispatch
/// unless the call's estimate exceeds `max_seconds`; then as few head ranges as keep each
/// within it, sized evenly.
pub fn sdpa_dispatches(
    shape: SdpaShape,
    heads: usize,
    head_dim: usize,
    dtype: DType,
    max_seconds: f64,
) -> Result<Vec<Dispatch<SdpaHeads>>> {
    let kernel = sdpa_kernel(dtype, head_dim)?;
    let threadgroup_memory = sdpa_threadgroup_memory(dtype, head_dim);
    let q_tiles = shape.q_len.div_ceil(SDPA_BQ);
    let per_head = attention_tile_work(shape.kv_len, head_dim, dtype.size_in_bytes())
        .scaled((q_tiles * shape.batch) as f64);
    let n = parts(seconds(per_head.scaled(heads as f64)), max_seconds, heads);
    (0..n)
        .map(|i| {
            let (first, end) = (i * heads / n, (i + 1) * heads / n);
            Ok(Dispatch {
                kernel: kernel.clone(),
                threadgroups: [
                    to_u32("query tiles", q_tiles)?,
                    to_u32("heads", end - first)?,
                    to_u32("sequences", shape.batch)?,
                ],
                threads: SDPA_THREADS,
                threadgroup_memory,
                args: SdpaHeads {
                    first,
                    count: end - first,
                },
                work: per_head.scaled((end - first) as f64),
            })
        })
        .collect()
}

/// How one attention call runs on Metal.
#[derive(Clone, Debug, PartialEq)]
pub enum AttentionPlan {
    /// candle's fused `sdpa` over an equal-length batch.
    Sdpa(SdpaShape, Vec<Dispatch<SdpaHeads>>),
    /// `kernels/metal/attention.metal` over its query-tile table.
    Varlen(Vec<[u32; 2]>, Vec<Dispatch<AttentionArgs>>),
}

/// The plan of one attention call under `choice` (`TRELLIS2_METAL_ATTENTION`): sdpa where it
/// takes the call unless `Varlen` is pinned; `Sdpa` pinned on a call it does not take is an
/// error saying why.
#[allow(clippy::too_many_arguments)]
pub fn attention_plan(
    choice: MetalAttention,
    q_offsets: &[usize],
    kv_offsets: &[usize],
    heads: usize,
    head_dim: usize,
    dtype: DType,
    scale: f32,
    max_seconds: f64,
) -> Result<AttentionPlan> {
    let sdpa = match choice {
        MetalAttention::Varlen => None,
        MetalAttention::Auto => sdpa_shape(q_offsets, kv_offsets, head_dim, dtype).ok(),
        MetalAttention::Sdpa => Some(sdpa_shape(q_offsets, kv_offsets, head_dim, dtype).map_err(
            |why| {
                candle_core::Error::Msg(format!(
                    "TRELLIS2_METAL_ATTENTION=sdpa: candle's sdpa does not take {why}"
                ))
            },
        )?),
    };
    if let Some(shape) = sdpa {
        let plan = sdpa_dispatches(shape, heads, head_dim, dtype, max_seconds)?;
        return Ok(AttentionPlan::Sdpa(shape, plan));
    }
    let tiles = attention_tiles(q_offsets)?;
    let plan = attention_dispatches(
        &tiles,
        kv_offsets,
        heads,
        head_dim,
        dtype,
        scale,
        max_seconds,
    )?;
    Ok(AttentionPlan::Varlen(tiles, plan))
}

/// Consecutive ranges of `units` (each of the given work) whose estimates stay within
/// `max_seconds`, as few as possible (a greedy fill is optimal for that), then re-cut at equal
/// shares of the total work when that still keeps every range within the limit. One unit per
/// range when `max_seconds <= 0`.
fn balanced_ranges(units: &[Work], max_seconds: f64) -> Vec<std::ops::Range<usize>> {
    let fits = |r: &std::ops::Range<usize>| {
        let w = units[r.clone()].iter().fold(Work::default(), |a, &w| a + w);
        r.len() <= 1 || seconds(w) <= max_seconds
    };
    let mut greedy = Vec::new();
    let mut first = 0;
    while first < units.len() {
        let mut end = first + 1;
        let mut work = units[first];
        while end < units.len() && seconds(work + units[end]) <= max_seconds {
            work = work + units[end];
            end += 1;
        }
        greedy.push(first..end);
        first = end;
    }
    let count = greedy.len();
    if count <= 1 {
        return greedy;
    }
    let weight = |w: &Work| seconds(*w);
    let total: f64 = units.iter().map(weight).sum();
    let mut even = Vec::with_capacity(count);
    let (mut first, mut sum) = (0, 0.0);
    for (i, w) in units.iter().enumerate() {
        sum += weight(w);
        let cuts = even.len() + 1;
        if cuts < count && sum >= total * cuts as f64 / count as f64 {
            even.push(first..i + 1);
            first = i + 1;
        }
    }
    if first < units.len() {
        even.push(first..units.len());
    }
    if even.len() == count && even.iter().all(fits) {
        even
    } else {
        greedy
    }
}

/// Threads per threadgroup of the deformable im2col (kernels/metal/deform_conv.metal).
pub const DEFORM_THREADS: u32 = 128;

/// `deform_im2col_<dtype>`; only f32 is instantiated (the op computes in f32).
pub fn deform_im2col_kernel(dtype: DType) -> Result<String> {
    if dtype != DType::F32 {
        bail!("deform_conv2d: the metal kernel takes f32 operands, got {dtype:?}");
    }
    Ok(format!("deform_im2col_{}", dtype_tag(dtype)?))
}

/// Work of `columns` column elements: each is one bilinear sample (four f32 reads, ~20 flops)
/// and one write; its offset and mask reads are shared by the group's channels.
fn deform_work(columns: u64) -> Work {
    let c = columns as f64;
    Work {
        flops: 20.0 * c,
        bytes: 24.0 * c,
    }
}

/// Dispatches writing the band's column matrix of `band` (its `first`/`count` are ignored):
/// one unless the band's estimate exceeds `max_seconds`, then as few as keep each within it,
/// in whole threadgroups. Empty when the matrix is.
pub fn deform_im2col_dispatches(
    band: DeformIm2ColArgs,
    dtype: DType,
    max_seconds: f64,
) -> Result<Vec<Dispatch<DeformIm2ColArgs>>> {
    let kernel = deform_im2col_kernel(dtype)?;
    let total = band.columns();
    if total > u32::MAX as u64 {
        bail!("deform_conv2d: a band of {total} column elements exceeds u32 indexing");
    }
    // The kernel indexes in 32 bits: every element of the input and of the offsets (the mask
    // has half as many) must be addressable by a u32.
    let product = |v: &[u32]| v.iter().map(|&x| x as u64).product::<u64>();
    let input = product(&[band.batch, band.channels, band.height, band.width]);
    let offsets = product(&[
        band.batch,
        2,
        band.offset_groups,
        band.kh,
        band.kw,
        band.out_h,
        band.out_w,
    ]);
    if input.max(offsets) > u32::MAX as u64 {
        bail!(
            "deform_conv2d: {input} input or {offsets} offset elements exceed the metal \
             kernel's u32 indexing"
        );
    }
    if band.offset_groups == 0 || !band.channels.is_multiple_of(band.offset_groups) || band.kw == 0
    {
        bail!("deform_conv2d: bad im2col geometry {band:?}");
    }
    let groups = total.div_ceil(DEFORM_THREADS as u64) as usize;
    let count = parts(seconds(deform_work(total)), max_seconds, groups);
    let step = groups.div_ceil(count.max(1)) as u64 * DEFORM_THREADS as u64;
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
            work: deform_work(count),
        });
        first += count;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::metal::budget::COMMAND_BUFFER_SECONDS;

    fn rows(vec_loads: bool) -> ConvRows {
        ConvRows {
            vec_loads,
            ordered: false,
        }
    }

    fn covers<A>(plan: &[Dispatch<A>], units: usize, base: impl Fn(&A) -> u32, axis: usize) {
        let mut next = 0;
        for d in plan {
            assert_eq!(base(&d.args), next);
            next += d.threadgroups[axis];
        }
        assert_eq!(next as usize, units);
    }

    #[test]
    fn a_conv_is_one_dispatch_unless_its_estimate_exceeds_the_limit() {
        let one = sparse_conv_dispatches(
            1000,
            40,
            70,
            DType::F16,
            27.0,
            COMMAND_BUFFER_SECONDS,
            rows(true),
        )
        .unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].threadgroups, [2, 16, 1]);
        assert_eq!(one[0].kernel, "sparse_conv_f16_bm64_bn64_bk32");
        // 64 voxels x 27 taps x 64 (padded ci) x 128 (padded co) MACs per tile.
        assert_eq!(one[0].work.flops, 16.0 * 2.0 * 64.0 * 27.0 * 64.0 * 128.0);
        // The most split: one voxel tile per dispatch.
        let most = sparse_conv_dispatches(1000, 40, 70, DType::F16, 27.0, 0.0, rows(true)).unwrap();
        assert_eq!(most.len(), 16);
        covers(&most, 16, |a| a.voxel_tile_base, 1);
        // A limit of 5 tiles' time: ceil(16 / 5) = 4 equal ranges of 4.
        let limit = seconds(one[0].work.scaled(5.0 / 16.0));
        let split =
            sparse_conv_dispatches(1000, 40, 70, DType::F16, 27.0, limit, rows(true)).unwrap();
        assert_eq!(split.len(), 4);
        covers(&split, 16, |a| a.voxel_tile_base, 1);
        assert!(split.iter().all(|d| seconds(d.work) <= limit));
        // Fewer live taps, less work.
        let sparse =
            sparse_conv_dispatches(1000, 40, 70, DType::F16, 9.0, 1.0, rows(true)).unwrap();
        assert_eq!(sparse[0].work.flops * 3.0, one[0].work.flops);
        assert!(
            sparse_conv_dispatches(0, 4, 4, DType::F32, 27.0, 1.0, rows(true))
                .unwrap()
                .is_empty()
        );
        assert_eq!(one[0].args.vec_loads, 1);
        // Vector loads need Ci % 4 == 0.
        assert!(sparse_conv_dispatches(1000, 42, 70, DType::F16, 27.0, 1.0, rows(true)).is_err());
        let scalar =
            sparse_conv_dispatches(1000, 42, 70, DType::F16, 27.0, 1.0, rows(false)).unwrap();
        assert_eq!(scalar[0].args.vec_loads, 0);
    }

    #[test]
    fn conv_threadgroup_memory_fits_and_vector_loads_need_alignment() {
        // f32: one stage of A + B, 64 rows x (32 + 4) floats each; f16/bf16: two stages of
        // 64 x (32 + 8) halves; then 64 x 27 neighbour ids, 32 tap flags and 64 voxel ids.
        assert_eq!(conv_threadgroup_memory(DType::F32), 18_432 + 7_296);
        assert_eq!(conv_threadgroup_memory(DType::F16), 20_480 + 7_296);
        assert_eq!(conv_threadgroup_memory(DType::BF16), 20_480 + 7_296);
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let bytes = conv_threadgroup_memory(dtype);
            assert!(bytes <= MAX_THREADGROUP_MEMORY && bytes.is_multiple_of(16));
            // The epilogue's float [64][68] tile fits in the stages it reuses.
            assert!(CONV_BM * (CONV_BN + 4) * 4 <= bytes - (CONV_BM * TAPS + 32 + CONV_BM) * 4);
        }
        assert!(conv_vec_loads(64, &[0, 128]));
        assert!(!conv_vec_loads(64, &[1, 0]));
        assert!(!conv_vec_loads(6, &[0, 0]));
    }

    #[test]
    fn attention_tiles_skip_empty_sequences_and_split_by_work() {
        let q = [0, 33, 33, 97];
        let tiles = attention_tiles(&q).unwrap();
        assert_eq!(tiles, [[0, 0], [0, 32], [2, 33], [2, 65]]);
        let kv = [0, 10, 10, 30];
        let all = attention_dispatches(&tiles, &kv, 2, 64, DType::BF16, 0.1, 1.0).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].threadgroups, [4, 2, 1]);
        assert_eq!(all[0].kernel, "attention_bf16_d64_bq32_bk32");
        // q·kᵀ and p·v on 32 rows per tile and head: sequence 0 has 10 keys, sequence 2 has 20.
        assert_eq!(
            all[0].work.flops,
            2.0 * 4.0 * 32.0 * 64.0 * (10.0 + 10.0 + 20.0 + 20.0)
        );
        let most = attention_dispatches(&tiles, &kv, 2, 64, DType::BF16, 0.1, 0.0).unwrap();
        assert_eq!(most.len(), 4);
        covers(&most, 4, |a| a.tile_base, 0);
        assert!(most.iter().all(|d| d.args.n_tiles == d.threadgroups[0]));
        // Room for half the work: two ranges, balanced by work (the first two tiles have
        // half the keys of the last two, so the cut falls after the third).
        let limit = seconds(all[0].work.scaled(0.7));
        let split = attention_dispatches(&tiles, &kv, 2, 64, DType::BF16, 0.1, limit).unwrap();
        assert_eq!(split.len(), 2);
        covers(&split, 4, |a| a.tile_base, 0);
        assert!(split.iter().all(|d| seconds(d.work) <= limit));
        assert!(attention_kernel(DType::F32, 96).is_err());
    }

    /// The baseline's shapes (docs/BASELINE.md): the 1024 pipeline's flow transformers attend
    /// over 1,029 / 4,101 / 15,272 tokens (12 heads × 128) and to 4,101 image tokens; the
    /// decoders convolve 20 k voxels at 1,024 channels and 1.2 M voxels at 128.
    #[test]
    fn baseline_ops_take_at_most_four_dispatches_of_a_thousand_threadgroups() {
        for (nq, nk) in [
            (1029, 1029),
            (4101, 4101),
            (15272, 15272),
            (1029, 4101),
            (15272, 4101),
        ] {
            let tiles = attention_tiles(&[0, nq]).unwrap();
            let plan = attention_dispatches(
                &tiles,
                &[0, nk],
                12,
                128,
                DType::BF16,
                0.1,
                COMMAND_BUFFER_SECONDS,
            )
            .unwrap();
            let groups = tiles.len() * 12;
            assert!(
                plan.len() <= 4,
                "attention {nq}x{nk}: {} dispatches",
                plan.len()
            );
            for d in &plan {
                let g = d.threadgroups.iter().product::<u32>() as usize;
                assert!(
                    g >= groups.min(1000),
                    "attention {nq}x{nk}: {g} threadgroups"
                );
                assert!(seconds(d.work) <= COMMAND_BUFFER_SECONDS);
            }
        }
        for (n, ci, co) in [(20_000, 1024, 1024), (1_200_000, 128, 128)] {
            let plan = sparse_conv_dispatches(
                n,
                ci,
                co,
                DType::F16,
                SHELL_LIVE_TAPS,
                COMMAND_BUFFER_SECONDS,
                rows(true),
            )
            .unwrap();
            assert!(plan.len() <= 4, "conv {n}x{ci}: {} dispatches", plan.len());
            for d in &plan {
                let g = d.threadgroups.iter().product::<u32>();
                assert!(g >= 1000, "conv {n}x{ci}: {g} threadgroups");
                assert!(seconds(d.work) <= COMMAND_BUFFER_SECONDS);
            }
        }
    }

    /// [`SHELL_LIVE_TAPS`] is what a voxelised shell's tiles walk in x-major order.
    #[test]
    fn shell_tiles_walk_nearly_every_tap() {
        use crate::ops::neighbour_map::{batch_ranges, neighbour_rows};
        let rows = crate::selftest::shapes::voxel_shell(0, 64, 28.0, 0.87);
        let map = neighbour_rows(&rows, &batch_ranges(&rows).unwrap()).unwrap();
        let per_voxel = map.iter().filter(|&&v| v != ABSENT).count() as f64 / rows.len() as f64;
        let per_tile = live_taps_per_tile(&map);
        assert!((15.0..18.0).contains(&per_voxel), "{per_voxel}");
        assert!((per_tile - SHELL_LIVE_TAPS).abs() < 0.1, "{per_tile}");
    }

    /// [`SORTED_SHELL_LIVE_TAPS`]: the same shells' tiles in the voxel order the GPUs build
    /// (sorted by neighbour mask in the default windows, `default_sort_window`: 16 k voxels for
    /// 2 KB rows to 131 k for 256-byte ones) walk fewer taps; smaller windows fewer than unsorted
    /// but more (printed with `--nocapture`).
    #[test]
    fn sorted_shell_tiles_skip_taps() {
        use crate::ops::conv_order::sorted_by_mask;
        use crate::ops::neighbour_map::{batch_ranges, neighbour_rows};
        use crate::sparse::conv_order::default_sort_window;
        use candle_core::{Device, Tensor};
        for (side, radius) in [(64, 28.0), (128, 58.0), (520, 256.0)] {
            let rows = crate::selftest::shapes::voxel_shell(0, side, radius, 0.87);
            let map = neighbour_rows(&rows, &batch_ranges(&rows).unwrap()).unwrap();
            let n = rows.len();
            let tensor = Tensor::from_vec(map.clone(), (n, TAPS), &Device::Cpu).unwrap();
            let unsorted = live_taps_per_tile(&map);
            let mut line = format!("shell r {radius}: {n} voxels, unsorted {unsorted:.2}");
            let defaults = [default_sort_window(2048), default_sort_window(256)];
            for window in [256, 1024, 4096, defaults[0], 65_536, defaults[1], n] {
                let order = sorted_by_mask(&tensor, window)
                    .unwrap()
                    .to_vec1::<u32>()
                    .unwrap();
                let sorted: Vec<u32> = order
                    .iter()
                    .flat_map(|&v| {
                        map[v as usize * TAPS..(v as usize + 1) * TAPS]
                            .iter()
                            .copied()
                    })
                    .collect();
                let live = live_taps_per_tile(&sorted);
                line += &format!(", window {window} {live:.2}");
                if defaults.contains(&window) {
                    assert!((live - SORTED_SHELL_LIVE_TAPS).abs() < 2.3, "{line}");
                    assert!(live < unsorted - 5.0, "{line}");
                }
            }
            println!("{line}");
        }
    }

    #[test]
    fn live_taps_count_a_tap_once_per_tile() {
        let mut map = vec![ABSENT; 65 * TAPS];
        map[13] = 0; // row 0, centre
        map[TAPS + 13] = 1; // row 1, centre
        map[2 * TAPS] = 5; // row 2, tap 0
        map[64 * TAPS + 26] = 3; // row 64 (the second tile), tap 26
        assert_eq!(live_taps_per_tile(&map), 1.5);
        assert_eq!(live_taps_per_tile(&[]), 0.0);
    }

    #[test]
    fn a_deform_band_is_one_dispatch_or_whole_threadgroups() {
        let band = DeformIm2ColArgs {
            batch: 1,
            channels: 4,
            height: 9,
            width: 9,
            kh: 3,
            kw: 3,
            out_h: 9,
            out_w: 9,
            offset_groups: 1,
            stride_y: 1,
            stride_x: 1,
            pad_y: 1,
            pad_x: 1,
            dil_y: 1,
            dil_x: 1,
            row_start: 0,
            rows: 9,
            first: 0,
            count: 0,
        };
        let total = band.columns();
        let one = deform_im2col_dispatches(band, DType::F32, COMMAND_BUFFER_SECONDS).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!((one[0].args.first, one[0].args.count as u64), (0, total));
        let most = deform_im2col_dispatches(band, DType::F32, 0.0).unwrap();
        assert_eq!(most.len() as u64, total.div_ceil(128));
        assert!(most.iter().all(|d| d.threadgroups == [1, 1, 1]));
        let covered: u64 = most.iter().map(|d| d.args.count as u64).sum();
        assert_eq!(covered, total);
        assert!(deform_im2col_kernel(DType::F16).is_err());
        // 32-bit indexing: a band that fits but an input or offset tensor that does not is
        // refused, whatever the band.
        let wide = DeformIm2ColArgs {
            height: 1 << 16,
            width: 1 << 16,
            rows: 1,
            ..band
        };
        assert!(deform_im2col_dispatches(wide, DType::F32, 1.0).is_err());
        let offsets = DeformIm2ColArgs {
            out_h: 1 << 14,
            out_w: 1 << 14,
            offset_groups: 4,
            rows: 1,
            ..band
        };
        assert!(offsets.columns() <= u32::MAX as u64);
        assert!(deform_im2col_dispatches(offsets, DType::F32, 1.0).is_err());
        let largest = DeformIm2ColArgs {
            height: 1 << 14,
            width: (1 << 14) - 1,
            ..band
        };
        assert!(deform_im2col_dispatches(largest, DType::F32, 1.0).is_ok());
    }

    #[test]
    fn attention_operands_start_at_vector_boundaries() {
        assert!(attention_offsets_aligned(&[0, 32, 4096], 2).is_ok());
        assert!(attention_offsets_aligned(&[0, 16, 48], 4).is_ok());
        assert!(attention_offsets_aligned(&[0, 8], 4).is_err());
        assert!(attention_offsets_aligned(&[2], 2).is_err());
        // Threadgroup memory: 16-byte multiples within 32 KiB (the emulator checks the same).
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            for d in [64, 128] {
                let bytes = attention_threadgroup_memory(d, dtype).unwrap();
                assert!(
                    bytes.is_multiple_of(16) && bytes <= 32 << 10,
                    "{dtype:?} d {d}: {bytes}"
                );
            }
        }
        assert_eq!(attention_threadgroup_memory(64, DType::F16).unwrap(), 9_216);
        assert_eq!(
            attention_threadgroup_memory(128, DType::BF16).unwrap(),
            16_896
        );
        assert_eq!(
            attention_threadgroup_memory(64, DType::F32).unwrap(),
            17_408
        );
    }

    #[test]
    fn sdpa_takes_equal_length_batches_of_its_head_dims() {
        let shape = sdpa_shape(&[0, 300, 600], &[0, 1029, 2058], 128, DType::BF16).unwrap();
        assert_eq!(
            shape,
            SdpaShape {
                batch: 2,
                q_len: 300,
                kv_len: 1029
            }
        );
        for (q, kv, d) in [
            (&[0, 300, 500][..], &[0, 300, 500][..], 128),
            (&[0, 1, 2], &[0, 5, 10], 64),
            (&[0, 0, 0], &[0, 5, 10], 64),
            (&[0, 64], &[0, 64], 48),
        ] {
            assert!(
                sdpa_shape(q, kv, d, DType::F16).is_err(),
                "{q:?} {kv:?} {d}"
            );
        }
        let ragged = |choice| {
            attention_plan(
                choice,
                &[0, 300, 500],
                &[0, 300, 500],
                2,
                64,
                DType::F16,
                0.125,
                COMMAND_BUFFER_SECONDS,
            )
        };
        let err = ragged(MetalAttention::Sdpa).unwrap_err().to_string();
        assert!(
            err.contains("TRELLIS2_METAL_ATTENTION=sdpa") && err.contains("different lengths"),
            "{err}"
        );
        // Auto falls back to ours on a ragged batch.
        assert!(matches!(
            ragged(MetalAttention::Auto).unwrap(),
            AttentionPlan::Varlen(..)
        ));
    }

    /// A call over the budget is split into even head ranges that cover every head once; the
    /// kernel's threadgroup memory fits the 32 KiB limit.
    #[test]
    fn sdpa_splits_by_heads() {
        let shape = sdpa_shape(&[0, 15272], &[0, 15272], 128, DType::BF16).unwrap();
        let plan = sdpa_dispatches(shape, 12, 128, DType::BF16, COMMAND_BUFFER_SECONDS).unwrap();
        assert!((2..=4).contains(&plan.len()), "{}", plan.len());
        let mut next = 0;
        for d in &plan {
            assert_eq!(d.args.first, next);
            assert_eq!(d.threadgroups, [478, d.args.count as u32, 1]);
            assert!(seconds(d.work) <= COMMAND_BUFFER_SECONDS);
            next += d.args.count;
        }
        assert_eq!(next, 12);
        let whole = sdpa_dispatches(shape, 12, 128, DType::BF16, 100.0).unwrap();
        assert_eq!(whole.len(), 1);
        for d in SDPA_HEAD_DIMS {
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                let fits = sdpa_threadgroup_memory(dtype, d) <= 32 * 1024;
                assert_eq!(fits, sdpa_shape(&[0, 2], &[0, 2], d, dtype).is_ok());
                assert!(fits || (d, dtype) == (256, DType::F32), "{d} {dtype:?}");
            }
        }
        assert_eq!(
            sdpa_threadgroup_memory(DType::BF16, 128),
            (32 * 136 + 24 * 128) * 2
        );
    }
}
