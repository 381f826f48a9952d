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

/// Bytes exactly as the kernel reads them (what `setBytes` uploads), little endian.
pub trait KernelArgs {
    fn to_bytes(&self) -> Vec<u8>;
}

impl KernelArgs for SparseConvArgs {
    fn to_bytes(&self) -> Vec<u8> {
        [self.n_voxels, self.ci, self.co, self.voxel_tile_base]
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
