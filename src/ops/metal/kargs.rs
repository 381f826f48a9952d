//! Kernel argument structs, mirrored field for field from `kernels/metal/kargs.h` (every field
//! 32 bits, so MSL, C++ and Rust agree on the layout; tests/metal_emu.rs compares these sizes
//! and offsets with what the emulator's C++ compiler sees). `DeformIm2ColArgs` and
//! `NeighbourArgs`, which the CUDA kernels take too, live in `ops::vocab`.

pub use crate::ops::vocab::{DeformIm2ColArgs, NeighbourArgs};

/// `SparseConvArgs` in kargs.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SparseConvArgs {
    /// Rows of feats, out and the neighbour map.
    pub n_voxels: u32,
    /// Input channels.
    pub ci: u32,
    /// Output channels.
    pub co: u32,
    /// First 64-voxel tile of this dispatch.
    pub voxel_tile_base: u32,
    /// 1 where feats and weight rows allow 4-element vector loads (Ci % 4 == 0 and both
    /// starts on 4 elements; `dispatch::conv_vec_loads`), else 0.
    pub vec_loads: u32,
    /// 1 where tile row `r` handles voxel `order[tile·64 + r]` (the voxel order bound after
    /// the output, `ops::conv_order`), 0 for voxel `tile·64 + r`.
    pub ordered: u32,
}

/// `AttentionArgs` in kargs.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionArgs {
    /// Heads; q/k/v rows are `[tokens, heads, head_dim]`.
    pub heads: u32,
    /// First entry of the query-tile table handled by this dispatch.
    pub tile_base: u32,
    /// Entries of the tile table handled by this dispatch.
    pub n_tiles: u32,
    /// Softmax scale applied to q·k.
    pub scale: f32,
}

/// `ConvOrderArgs` in kargs.h (kernels/metal/conv_order.metal).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConvOrderArgs {
    /// Voxels: rows of the `[n, 27]` map, entries of the masks and the orders.
    pub n: u32,
    /// Voxels per sorting window (≥ 1).
    pub window: u32,
    /// This pass's first key bit.
    pub shift: u32,
    /// Items per threadgroup of the histogram and scatter (a multiple of 256).
    pub per_block: u32,
    /// Threadgroups of the histogram and scatter.
    pub blocks: u32,
    /// 1: item `i` is voxel `i` (the first pass), 0: item `i` is `src[i]`.
    pub identity: u32,
    /// `256 · blocks`: words of the histogram.
    pub hist_len: u32,
}

/// Bytes exactly as the kernel reads them (what `setBytes` uploads), little endian.
pub trait KernelArgs {
    fn to_bytes(&self) -> Vec<u8>;
}

impl KernelArgs for SparseConvArgs {
    fn to_bytes(&self) -> Vec<u8> {
        [
            self.n_voxels,
            self.ci,
            self.co,
            self.voxel_tile_base,
            self.vec_loads,
            self.ordered,
        ]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
    }
}

impl KernelArgs for AttentionArgs {
    fn to_bytes(&self) -> Vec<u8> {
        [
            self.heads,
            self.tile_base,
            self.n_tiles,
            self.scale.to_bits(),
        ]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
    }
}

impl KernelArgs for NeighbourArgs {
    fn to_bytes(&self) -> Vec<u8> {
        [
            self.n_voxels,
            self.capacity_mask,
            self.bits_x,
            self.bits_y,
            self.bits_z,
        ]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
    }
}

/// `NormModulateArgs` in kargs.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormModulateArgs {
    pub rows: u32,
    pub channels: u32,
    /// Samples: the offsets have `samples + 1` entries.
    pub samples: u32,
    pub eps: f32,
}

impl KernelArgs for NormModulateArgs {
    fn to_bytes(&self) -> Vec<u8> {
        [self.rows, self.channels, self.samples, self.eps.to_bits()]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }
}

/// `RmsRopeArgs` in kargs.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RmsRopeArgs {
    /// Tokens × heads.
    pub rows: u32,
    pub heads: u32,
    pub head_dim: u32,
    /// 0: RoPE only, no RMS norm.
    pub normalize: u32,
    /// Rows of the rotation table: the tokens, or 1 (one rotation for every token).
    pub table_rows: u32,
}

impl KernelArgs for RmsRopeArgs {
    fn to_bytes(&self) -> Vec<u8> {
        [
            self.rows,
            self.heads,
            self.head_dim,
            self.normalize,
            self.table_rows,
        ]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
    }
}

/// `BiasActArgs` in kargs.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BiasActArgs {
    /// Elements of x (scalar kernels) or 4-element vectors (`_v4` kernels).
    pub count: u32,
    /// Channels, in the same units as `count`.
    pub channels: u32,
    /// `Activation as u32`: 0 identity, 1 tanh-GELU, 2 SiLU.
    pub act: u32,
}

impl KernelArgs for BiasActArgs {
    fn to_bytes(&self) -> Vec<u8> {
        [self.count, self.channels, self.act]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }
}

/// `GatedResidualArgs` in kargs.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GatedResidualArgs {
    /// Elements of x (scalar kernels) or 4-element vectors (`_v4` kernels).
    pub count: u32,
    /// Channels, in the same units as `count`.
    pub channels: u32,
    /// Samples: the offsets have `samples + 1` entries, the gate `samples` rows.
    pub samples: u32,
}

impl KernelArgs for GatedResidualArgs {
    fn to_bytes(&self) -> Vec<u8> {
        [self.count, self.channels, self.samples]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }
}

/// `SpaceToChannelArgs` in kargs.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpaceToChannelArgs {
    /// Words of the output: `8M ·` words.
    pub count: u32,
    /// Words of one input row.
    pub words: u32,
    /// Input rows: slots at or past it (ABSENT) give zeros.
    pub rows: u32,
}

impl KernelArgs for SpaceToChannelArgs {
    fn to_bytes(&self) -> Vec<u8> {
        [self.count, self.words, self.rows]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }
}

impl KernelArgs for DeformIm2ColArgs {
    fn to_bytes(&self) -> Vec<u8> {
        [
            self.batch,
            self.channels,
            self.height,
            self.width,
            self.kh,
            self.kw,
            self.out_h,
            self.out_w,
            self.offset_groups,
            self.stride_y,
            self.stride_x,
            self.pad_y,
            self.pad_x,
            self.dil_y,
            self.dil_x,
            self.row_start,
            self.rows,
            self.first,
            self.count,
        ]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
    }
}

/// `AttnParams` of candle-metal-kernels' steel attention (MLX's), which candle's own
/// `call_sdpa_full` builds privately: trellis2 encodes that kernel itself so that a call split
/// by heads writes each part straight into the output at an offset (candle's call binds the
/// output at offset 0). Field for field as in candle-metal-kernels 0.11.1
/// (`scaled_dot_product_attention.metal`); strides in elements, for (batch, head, row).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SdpaParams {
    pub b: i32,
    pub h: i32,
    pub d: i32,
    pub q_len: i32,
    pub kv_len: i32,
    pub gqa_factor: i32,
    pub scale: f32,
    /// 1.0: off (the full kernel has no softcapping).
    pub softcapping: f32,
    pub nq: i32,
    pub nk: i32,
    pub nq_aligned: i32,
    pub nk_aligned: i32,
    pub q_len_rem: i32,
    pub kv_len_rem: i32,
    /// Offset of the first query in the key sequence (causal masks only).
    pub q_len_off: i32,
    pub q_strides: [i64; 3],
    pub k_strides: [i64; 3],
    pub v_strides: [i64; 3],
    pub o_strides: [i64; 3],
}

impl SdpaParams {
    /// Heads of `[tokens, heads_total, d]` rows viewed `(batch, heads, len, d)`; `bq`/`bk` are
    /// the kernel's tile rows.
    #[allow(clippy::too_many_arguments)]
    pub fn packed(
        batch: usize,
        heads: usize,
        heads_total: usize,
        d: usize,
        q_len: usize,
        kv_len: usize,
        bq: usize,
        bk: usize,
        scale: f32,
    ) -> Self {
        let row = (heads_total * d) as i64;
        let strides = |len: usize| [len as i64 * row, d as i64, row];
        let (nq, nk) = (q_len.div_ceil(bq), kv_len.div_ceil(bk));
        let (nq_aligned, nk_aligned) = (q_len / bq, kv_len / bk);
        Self {
            b: batch as i32,
            h: heads as i32,
            d: d as i32,
            q_len: q_len as i32,
            kv_len: kv_len as i32,
            gqa_factor: 1,
            scale,
            softcapping: 1.0,
            nq: nq as i32,
            nk: nk as i32,
            nq_aligned: nq_aligned as i32,
            nk_aligned: nk_aligned as i32,
            q_len_rem: (q_len - nq_aligned * bq) as i32,
            kv_len_rem: (kv_len - nk_aligned * bk) as i32,
            q_len_off: kv_len as i32 - q_len as i32,
            q_strides: strides(q_len),
            k_strides: strides(kv_len),
            v_strides: strides(kv_len),
            o_strides: strides(q_len),
        }
    }
}

impl KernelArgs for ConvOrderArgs {
    fn to_bytes(&self) -> Vec<u8> {
        [
            self.n,
            self.window,
            self.shift,
            self.per_block,
            self.blocks,
            self.identity,
            self.hist_len,
        ]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    /// The layout MSL gives `AttnParams`: 15 four-byte fields, then four `int64_t[3]` at the
    /// next 8-byte boundary.
    #[test]
    fn sdpa_params_have_the_kernels_layout() {
        assert_eq!(offset_of!(SdpaParams, q_len_off), 56);
        assert_eq!(offset_of!(SdpaParams, q_strides), 64);
        assert_eq!(offset_of!(SdpaParams, o_strides), 136);
        assert_eq!(size_of::<SdpaParams>(), 160);
        // 1029 queries against 4101 keys, heads 4..8 of 12 with head dim 128.
        let p = SdpaParams::packed(2, 4, 12, 128, 1029, 4101, 32, 16, 0.125);
        assert_eq!(p.q_strides, [1029 * 1536, 128, 1536]);
        assert_eq!(p.k_strides, [4101 * 1536, 128, 1536]);
        assert_eq!((p.nq, p.nq_aligned, p.q_len_rem), (33, 32, 5));
        assert_eq!((p.nk, p.nk_aligned, p.kv_len_rem), (257, 256, 5));
    }
}
