// Submanifold 3x3x3 convolution as an implicit GEMM over a neighbour map (reference:
// src/ops/sparse_conv/mod.rs, which this kernel is tested against through tests/metal_emu.rs).
//
//   out[n, o] = sum_k sum_i W[o, k, i] * feats[nbr[n, k], i]      (absent neighbours add nothing)
//
// Layouts: feats [T, Ci] and out [T, Co] of dtype T; weight [Co, 27, Ci] of dtype T;
// nbr [T, 27] uint with 0xffffffff for a missing neighbour.
//
// Numerics: inputs are widened to float while they are staged into threadgroup memory and every
// product is accumulated in float (simdgroup_float8x8); only the final store rounds to T.
// Tiles: one threadgroup computes BM=64 voxels x BN=64 output channels, walking the 27 taps and,
// per tap, the input channels in BK=32 slices. Taps whose neighbour is absent for all 64 voxels of
// the tile are skipped (the "masked" implicit GEMM). Ragged tails (voxels, Ci, Co not multiples of
// the tile) are zero-filled on load and dropped on store.
// Watchdog: grid.y covers only a range of voxel tiles starting at args.voxel_tile_base; the host
// splits long convolutions into several dispatches (src/ops/metal/dispatch.rs).
// Threadgroup memory (host-sized, argument threadgroup(0)): A [64][32] + B [32][64] floats, the
// tile's neighbour rows [64][27] uint and 32 tap flags = 23,424 bytes; the epilogue reuses A+B as a
// [64][64] float staging tile.
#include <metal_stdlib>
#include "kargs.h"
using namespace metal;

#define CONV_BM 64
#define CONV_BN 64
#define CONV_BK 32
#define CONV_THREADS 128
#define CONV_TAPS 27
#define CONV_ABSENT 0xffffffffu

template <typename T>
kernel void sparse_conv(
    constant SparseConvArgs& args [[buffer(0)]],
    device const T* feats [[buffer(1)]],
    device const T* weight [[buffer(2)]],
    device const uint* nbr [[buffer(3)]],
    device T* out [[buffer(4)]],
    threadgroup float* smem [[threadgroup(0)]],
    uint3 tgid [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]],
    uint sgid [[simdgroup_index_in_threadgroup]])
{
    const uint row0 = (args.voxel_tile_base + tgid.y) * CONV_BM;
    const uint col0 = tgid.x * CONV_BN;
    if (row0 >= args.n_voxels) {
        return; // whole threadgroup leaves together: no barrier is skipped by only some threads
    }
    const uint rows = min(uint(CONV_BM), args.n_voxels - row0);
    const uint ci = args.ci;
    const uint co = args.co;

    threadgroup float* a_tile = smem;                             // [BM][BK] gathered feats
    threadgroup float* b_tile = smem + CONV_BM * CONV_BK;          // [BK][BN] weight slice
    threadgroup uint* nbr_tile = (threadgroup uint*)(b_tile + CONV_BK * CONV_BN); // [BM][27]
    threadgroup uint* tap_live = nbr_tile + CONV_BM * CONV_TAPS;   // [27]

    // The tile's neighbour rows, read once and reused by all 27 taps; rows past the end are absent.
    for (uint i = tid; i < CONV_BM * CONV_TAPS; i += CONV_THREADS) {
        const uint r = i / CONV_TAPS;
        nbr_tile[i] = r < rows ? nbr[ulong(row0) * CONV_TAPS + i] : CONV_ABSENT;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (tid < CONV_TAPS) {
        uint live = 0;
        for (uint r = 0; r < CONV_BM; ++r) {
            live |= nbr_tile[r * CONV_TAPS + tid] != CONV_ABSENT ? 1u : 0u;
        }
        tap_live[tid] = live;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);

    // 4 simdgroups in a 2x2 layout, each owning a 32x32 block of the output tile as 4x4 8x8 blocks.
    const uint sg_row = (sgid / 2) * 32;
    const uint sg_col = (sgid % 2) * 32;
    simdgroup_float8x8 acc[4][4];
    for (uint i = 0; i < 4; ++i) {
        for (uint j = 0; j < 4; ++j) {
            acc[i][j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
        }
    }

    for (uint k = 0; k < CONV_TAPS; ++k) {
        if (tap_live[k] == 0) {
            continue; // same value for every thread: the barriers below stay uniform
        }
        for (uint c0 = 0; c0 < ci; c0 += CONV_BK) {
            // Gather: A[r][c] = feats[nbr(r, k)][c0 + c]; consecutive threads read consecutive
            // channels of one source row.
            for (uint i = tid; i < CONV_BM * CONV_BK; i += CONV_THREADS) {
                const uint r = i / CONV_BK;
                const uint c = i % CONV_BK;
                const uint src = nbr_tile[r * CONV_TAPS + k];
                float x = 0.0f;
                if (src != CONV_ABSENT && c0 + c < ci) {
                    x = float(feats[ulong(src) * ci + c0 + c]);
                }
                a_tile[i] = x;
            }
            // B[c][o] = W[col0 + o, k, c0 + c]; consecutive threads read consecutive channels.
            for (uint i = tid; i < CONV_BK * CONV_BN; i += CONV_THREADS) {
                const uint o = i / CONV_BK;
                const uint c = i % CONV_BK;
                float w = 0.0f;
                if (col0 + o < co && c0 + c < ci) {
                    w = float(weight[(ulong(col0 + o) * CONV_TAPS + k) * ci + c0 + c]);
                }
                b_tile[c * CONV_BN + o] = w;
            }
            threadgroup_barrier(mem_flags::mem_threadgroup);
            for (uint kk = 0; kk < CONV_BK; kk += 8) {
                simdgroup_float8x8 a[4];
                simdgroup_float8x8 b[4];
                for (uint i = 0; i < 4; ++i) {
                    simdgroup_load(a[i], a_tile + (sg_row + 8 * i) * CONV_BK + kk, CONV_BK);
                    simdgroup_load(b[i], b_tile + kk * CONV_BN + sg_col + 8 * i, CONV_BN);
                }
                for (uint i = 0; i < 4; ++i) {
                    for (uint j = 0; j < 4; ++j) {
                        simdgroup_multiply_accumulate(acc[i][j], a[i], b[j], acc[i][j]);
                    }
                }
            }
            threadgroup_barrier(mem_flags::mem_threadgroup);
        }
    }

    // Epilogue: stage the float tile in threadgroup memory (A and B are free now), then write the
    // rows and columns that exist, rounding to T once.
    for (uint i = 0; i < 4; ++i) {
        for (uint j = 0; j < 4; ++j) {
            simdgroup_store(acc[i][j], smem + (sg_row + 8 * i) * CONV_BN + sg_col + 8 * j, CONV_BN);
        }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint i = tid; i < CONV_BM * CONV_BN; i += CONV_THREADS) {
        const uint r = i / CONV_BN;
        const uint o = i % CONV_BN;
        if (r < rows && col0 + o < co) {
            out[ulong(row0 + r) * co + col0 + o] = T(smem[i]);
        }
    }
}

// Names carry the dtype and the tile shape; src/ops/metal/dispatch.rs builds the same strings.
#define INSTANTIATE_SPARSE_CONV(tname, T)                                                          \
    template [[host_name("sparse_conv_" #tname "_bm64_bn64_bk32")]] kernel void sparse_conv<T>(    \
        constant SparseConvArgs& args [[buffer(0)]],                                               \
        device const T* feats [[buffer(1)]],                                                       \
        device const T* weight [[buffer(2)]],                                                      \
        device const uint* nbr [[buffer(3)]],                                                      \
        device T* out [[buffer(4)]],                                                               \
        threadgroup float* smem [[threadgroup(0)]],                                                \
        uint3 tgid [[threadgroup_position_in_grid]],                                               \
        uint tid [[thread_index_in_threadgroup]],                                                  \
        uint sgid [[simdgroup_index_in_threadgroup]]);

INSTANTIATE_SPARSE_CONV(f32, float)
INSTANTIATE_SPARSE_CONV(f16, half)
#if defined(__HAVE_BFLOAT__)
INSTANTIATE_SPARSE_CONV(bf16, bfloat)
#endif
