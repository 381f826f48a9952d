// Kernel argument structs shared by the Metal kernels (kernels/metal/*.metal) and the host
// (src/ops/metal/kargs.rs mirrors each one as a #[repr(C)] struct). Every field is 32 bits so the
// layout is the same under MSL, C++ (the test emulator) and Rust; tests/metal_emu.rs checks the
// sizes and offsets the emulator's compiler sees against the Rust ones.
#pragma once

// Submanifold 3x3x3 conv, one dispatch = output-channel tiles x a range of voxel tiles.
struct SparseConvArgs {
    uint n_voxels;        // rows of feats, out and the neighbour map
    uint ci;              // input channels
    uint co;              // output channels
    uint voxel_tile_base; // first voxel tile of this dispatch (watchdog split)
    uint vec_loads;       // 1: feats and weight rows allow 4-element vector loads (Ci % 4 == 0,
                          // starts aligned to 4 elements); 0: scalar loads
    uint ordered;         // 1: tile row r handles voxel order[tile * 64 + r] (a permutation of
                          // the voxels, src/ops/conv_order); 0: voxel tile * 64 + r
};

// Varlen attention, one dispatch = a range of query tiles x heads.
struct AttentionArgs {
    uint heads;     // H; q/k/v rows are [tokens, H, D] packed
    uint tile_base; // first entry of the tile table handled by this dispatch
    uint n_tiles;   // entries of the tile table handled by this dispatch
    float scale;    // softmax scale applied to q.k
};

// Neighbour map on the GPU: clear, insert and lookup dispatches over one open-addressing table
// of 32-bit voxel keys (batch | x | y | z packed with the bit widths below; the host checks
// that they add up to at most 31 bits, so the all-ones EMPTY marker is never a key).
struct NeighbourArgs {
    uint n_voxels;      // rows of coords; the map has n_voxels * 27 entries
    uint capacity_mask; // table slots - 1 (slots: a power of two >= 2 n_voxels)
    uint bits_x;        // bits of x, y and z in a key (x above y above z; batch on top)
    uint bits_y;
    uint bits_z;
};

// The conv's voxel order (kernels/metal/conv_order.metal): a mask dispatch, then per 8-bit
// radix pass a histogram, a scan and a scatter over `blocks` threadgroups of `per_block` items.
struct ConvOrderArgs {
    uint n;         // voxels: rows of the [n][27] map, entries of mask and the orders
    uint window;    // voxels per sorting window (>= 1); the key is (v / window) << 27 | mask[v]
    uint shift;     // this pass's key bit (a multiple of 8, < 64)
    uint per_block; // items per threadgroup of the histogram and scatter (a multiple of 256)
    uint blocks;    // threadgroups of the histogram and scatter: hist is [256][blocks]
    uint identity;  // 1: item i is voxel i (the first pass, src unread); 0: item i is src[i]
    uint hist_len;  // 256 * blocks
};

// LayerNorm + adaLN modulation: one simdgroup per row of `channels` values.
struct NormModulateArgs {
    uint rows;     // T
    uint channels; // C
    uint samples;  // B: offsets has B + 1 entries, modulation is [B][2][C]
    float eps;
};

// RMS norm + interleaved RoPE: one simdgroup per (token, head) row of head_dim values.
struct RmsRopeArgs {
    uint rows;      // T * H
    uint heads;     // H
    uint head_dim;  // D, even
    uint normalize; // 0: RoPE only
    uint table_rows; // T: one rotation per token; 1: the same rotation for every token
};

// Linear epilogue act(x + bias): one thread per element, or per 4 consecutive elements (the
// `_v4` kernels: C a multiple of 4, operands 4-element aligned).
struct BiasActArgs {
    uint count;    // elements (scalar kernels) or 4-element vectors (_v4) of x
    uint channels; // C, in the same units as count
    uint act;      // 0: identity, 1: tanh-GELU, 2: SiLU (src/ops/vocab.rs `Activation`)
};

// Gated residual x + gate_s r per sample s: one thread per element, or per 4 (`_v4`).
struct GatedResidualArgs {
    uint count;    // elements (scalar kernels) or 4-element vectors (_v4) of x
    uint channels; // C, in the same units as count
    uint samples;  // B: offsets has B + 1 entries, gate is [B][C]
};

// Space→channel gather y[m][s·C + c] = x[slots[8m + s]][c] (0 for an absent slot): one thread
// per output word (2 or 4 bytes: a copy, whatever the float dtype).
struct SpaceToChannelArgs {
    uint count; // words of y: 8 M · words
    uint words; // words of one input row (C)
    uint rows;  // N: slots ≥ N (absent: 0xffffffff) give zeros
};

// Modulated deformable im2col (DCNv2), one dispatch = a contiguous range of column elements of
// one band of output rows. The CUDA kernel (kernels/cuda/deform_conv.cu) takes the same struct.
struct DeformIm2ColArgs {
    uint batch;         // B
    uint channels;      // C
    uint height;        // H of the input
    uint width;         // W of the input
    uint kh;            // kernel height
    uint kw;            // kernel width
    uint out_h;         // Ho (offset/mask rows)
    uint out_w;         // Wo (offset/mask columns)
    uint offset_groups; // G: channel c uses offset group c / (C / G)
    uint stride_y;
    uint stride_x;
    uint pad_y;
    uint pad_x;
    uint dil_y;
    uint dil_x;
    uint row_start;     // first output row of the band
    uint rows;          // output rows in the band
    uint first;         // first column element of this dispatch (watchdog split)
    uint count;         // column elements of this dispatch
};
