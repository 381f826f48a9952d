// Submanifold 3x3x3 convolution as an implicit GEMM over a neighbour map (reference:
// src/ops/sparse_conv/mod.rs, which this kernel is tested against through tests/metal_emu.rs).
//
//   out[n, o] = bias[o] + sum_k sum_i W[o, k, i] * feats[nbr[n, k], i]   (absent neighbours add 0)
//
// Layouts: feats [T, Ci], weight [Co, 27, Ci] and out [T, Co] of dtype T; bias [Co] float;
// nbr [T, 27] uint, 0xffffffff for a missing neighbour; order [T] uint, a permutation of the voxels
// read when args.ordered: tile row r then handles voxel order[tile * 64 + r] (its neighbour row and
// its output row), so tiles group voxels with the same neighbours (the order sorts voxels by
// neighbour mask within windows, src/ops/conv_order) and skip more taps; each voxel's sum is
// the same (absent taps add nothing).
// Tiles: a threadgroup (4 simdgroups, 32x32 each) computes 64 voxels x 64 output channels over the
// tile's live taps, Ci in slices of 32. A (gathered feature rows) and B (weight rows, one per output
// channel, read transposed by simdgroup_load) are staged in T, rows padded by 16 bytes; products
// accumulate in float and the bias is added in float before the one rounding to T. The next
// slice is loaded into registers while this one multiplies; f16/bf16 then store it into a second
// stage (one barrier per slice), f32 into the only one (two).
// Threadgroup memory (host-sized, threadgroup(0)): stages x (A + B) tiles, then the neighbour rows
// [64][27] uint, 32 tap flags and the tile's 64 voxel ids: f32 25,728 bytes, f16/bf16 27,776
// (kernels/README.md).
#include <metal_stdlib>
#include "kargs.h"
using namespace metal;

#define CONV_BM 64
#define CONV_BN 64
#define CONV_BK 32
#define CONV_THREADS 128
#define CONV_TAPS 27
#define CONV_ABSENT 0xffffffffu
// Row pitch of the float output tile the epilogue stages: BN plus 16 bytes.
#define CONV_LD_OUT (CONV_BN + 4)

// The first live tap after k (CONV_TAPS when none is left).
inline uint conv_next_tap(uint live, uint k) {
    for (uint j = k + 1; j < CONV_TAPS; ++j) {
        if (((live >> j) & 1u) != 0) {
            return j;
        }
    }
    return CONV_TAPS;
}

// Channels [c, c + 4) of row `row` of a [rows][ci] matrix, zeros where the row is absent or past
// ci. One 8- or 16-byte load where the host guarantees aligned rows (ci % 4 == 0, aligned starts).
template <typename T>
inline vec<T, 4> conv_load4(device const T* src, ulong row, bool present, uint c, uint ci,
                            bool vec_loads) {
    typedef vec<T, 4> T4;
    T4 v;
    if (present && vec_loads && c < ci) {
        v = ((device const T4*)(src + row * ci + c))[0];
    } else {
        for (uint e = 0; e < 4; ++e) {
            if (present && c + e < ci) {
                v[e] = src[row * ci + c + e];
            } else {
                v[e] = T(0.0f);
            }
        }
    }
    return v;
}

// Stores v as elements [4 * chunk, 4 * chunk + 4) of row r of a tile with row pitch ld. The lanes
// of a simdgroup store 8 consecutive rows x 4 chunks: 2-byte types store 8 bytes at once (pitch
// 20 words: 2 ways), float stores element by element starting at element r % 4 (pitch 36 words:
// the 32 lanes hit 32 distinct banks).
template <typename T>
inline void conv_store4(threadgroup T* tile, uint ld, uint r, uint chunk, vec<T, 4> v) {
    typedef vec<T, 4> T4;
    threadgroup T* dst = tile + r * ld + 4 * chunk;
    if (sizeof(T) == 2) {
        ((threadgroup T4*)dst)[0] = v;
    } else {
        for (uint j = 0; j < 4; ++j) {
            const uint e = (j + r) & 3u;
            dst[e] = v[e];
        }
    }
}

template <typename T>
kernel void sparse_conv(
    constant SparseConvArgs& args [[buffer(0)]],
    device const T* feats [[buffer(1)]],
    device const T* weight [[buffer(2)]],
    device const uint* nbr [[buffer(3)]],
    device const float* bias [[buffer(4)]],
    device T* out [[buffer(5)]],
    device const uint* order [[buffer(6)]],
    threadgroup float* smem [[threadgroup(0)]],
    uint3 tgid [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]],
    uint sgid [[simdgroup_index_in_threadgroup]])
{
    typedef vec<T, 4> T4;
    const uint row0 = (args.voxel_tile_base + tgid.y) * CONV_BM;
    const uint col0 = tgid.x * CONV_BN;
    if (row0 >= args.n_voxels) {
        return; // whole threadgroup leaves together: no barrier is skipped by only some threads
    }
    const uint rows = min(uint(CONV_BM), args.n_voxels - row0);
    const uint ci = args.ci;
    const uint co = args.co;
    const bool vec_loads = args.vec_loads != 0;

    // Staged tiles: per stage A [BM][ld] then B [BN][ld] of T. 16 bytes of padding per row put
    // the 8 rows an 8x8 simdgroup_load reads in distinct banks.
    const uint ld = CONV_BK + 16 / sizeof(T);
    const uint stages = sizeof(T) == 2 ? 2 : 1;
    const uint stage_elems = (CONV_BM + CONV_BN) * ld;
    threadgroup T* tiles = (threadgroup T*)smem;
    threadgroup uint* nbr_tile = (threadgroup uint*)(tiles + stages * stage_elems); // [BM][27]
    threadgroup uint* tap_live = nbr_tile + CONV_BM * CONV_TAPS;                     // [32]
    threadgroup uint* voxel_of = tap_live + 32;                                      // [BM]

    // The voxel of each tile row: the order's entry, or the row itself.
    if (tid < CONV_BM) {
        const uint r = row0 + tid;
        voxel_of[tid] = tid < rows ? (args.ordered != 0 ? order[r] : r) : 0u;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    // The tile's neighbour rows, read once and reused by all 27 taps; rows past the end are absent.
    for (uint i = tid; i < CONV_BM * CONV_TAPS; i += CONV_THREADS) {
        const uint r = i / CONV_TAPS;
        nbr_tile[i] = r < rows ? nbr[ulong(voxel_of[r]) * CONV_TAPS + i % CONV_TAPS] : CONV_ABSENT;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (tid < CONV_TAPS) {
        uint any = 0;
        for (uint r = 0; r < CONV_BM; ++r) {
            any |= nbr_tile[r * CONV_TAPS + tid] != CONV_ABSENT ? 1u : 0u;
        }
        tap_live[tid] = any;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    // Bit k: some voxel of the tile has neighbour k. The same in every thread, so the K loop and
    // its barriers are uniform; taps no voxel has are skipped (the "masked" implicit GEMM).
    uint live = 0;
    for (uint k = 0; k < CONV_TAPS; ++k) {
        live |= tap_live[k] != 0 ? (1u << k) : 0u;
    }

    // Each thread moves 4 chunks of 4 channels per operand and slice: rows tid / 4 and 32 + tid / 4,
    // chunks tid % 4 and tid % 4 + 4 of the slice's 8.
    const uint lrow = tid / 4;
    const uint lchunk = tid % 4;
    T4 ra[4];
    T4 rb[4];

    // 4 simdgroups in a 2x2 layout, each owning a 32x32 block of the output tile as 4x4 8x8 blocks.
    const uint sg_row = (sgid / 2) * 32;
    const uint sg_col = (sgid % 2) * 32;
    simdgroup_matrix<float, 8, 8> acc[4][4];
    for (uint i = 0; i < 4; ++i) {
        for (uint j = 0; j < 4; ++j) {
            acc[i][j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
        }
    }

    uint k = (live & 1u) != 0 ? 0 : conv_next_tap(live, 0);
    uint c0 = 0;
    bool have = k < CONV_TAPS && ci > 0;
    uint stage = 0;
    if (have) {
        for (uint p = 0; p < 2; ++p) {
            const uint r = p * 32 + lrow;
            const uint src = nbr_tile[r * CONV_TAPS + k];
            const uint o = col0 + r;
            const ulong wrow = ulong(o) * CONV_TAPS + k;
            for (uint h = 0; h < 2; ++h) {
                const uint c = c0 + 4 * (lchunk + 4 * h);
                ra[2 * p + h] = conv_load4(feats, ulong(src), src != CONV_ABSENT, c, ci, vec_loads);
                rb[2 * p + h] = conv_load4(weight, wrow, o < co, c, ci, vec_loads);
            }
        }
        for (uint p = 0; p < 2; ++p) {
            for (uint h = 0; h < 2; ++h) {
                conv_store4(tiles, ld, p * 32 + lrow, lchunk + 4 * h, ra[2 * p + h]);
                conv_store4(tiles + CONV_BM * ld, ld, p * 32 + lrow, lchunk + 4 * h, rb[2 * p + h]);
            }
        }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);

    while (have) {
        // The next slice: the following 32 channels of this tap, else the next live tap.
        uint nk = k;
        uint nc0 = c0 + CONV_BK;
        if (nc0 >= ci) {
            nc0 = 0;
            nk = conv_next_tap(live, k);
        }
        const bool next = nk < CONV_TAPS;
        if (next) {
            // Device loads into registers, in flight while this slice multiplies.
            for (uint p = 0; p < 2; ++p) {
                const uint r = p * 32 + lrow;
                const uint src = nbr_tile[r * CONV_TAPS + nk];
                const uint o = col0 + r;
                const ulong wrow = ulong(o) * CONV_TAPS + nk;
                for (uint h = 0; h < 2; ++h) {
                    const uint c = nc0 + 4 * (lchunk + 4 * h);
                    ra[2 * p + h] =
                        conv_load4(feats, ulong(src), src != CONV_ABSENT, c, ci, vec_loads);
                    rb[2 * p + h] = conv_load4(weight, wrow, o < co, c, ci, vec_loads);
                }
            }
        }
        threadgroup const T* a_tile = tiles + stage * stage_elems;
        threadgroup const T* b_tile = a_tile + CONV_BM * ld;
        for (uint kk = 0; kk < CONV_BK; kk += 8) {
            simdgroup_matrix<T, 8, 8> a[4];
            simdgroup_matrix<T, 8, 8> b[4];
            for (uint i = 0; i < 4; ++i) {
                simdgroup_load(a[i], a_tile + (sg_row + 8 * i) * ld + kk, ld);
                simdgroup_load(b[i], b_tile + (sg_col + 8 * i) * ld + kk, ld, ulong2(0, 0), true);
            }
            for (uint i = 0; i < 4; ++i) {
                for (uint j = 0; j < 4; ++j) {
                    simdgroup_multiply_accumulate(acc[i][j], a[i], b[j], acc[i][j]);
                }
            }
        }
        if (next) {
            const uint ns = stages == 2 ? stage ^ 1u : 0u;
            if (stages == 1) {
                threadgroup_barrier(mem_flags::mem_threadgroup); // the only stage is still read
            }
            threadgroup T* a_next = tiles + ns * stage_elems;
            for (uint p = 0; p < 2; ++p) {
                for (uint h = 0; h < 2; ++h) {
                    conv_store4(a_next, ld, p * 32 + lrow, lchunk + 4 * h, ra[2 * p + h]);
                    conv_store4(a_next + CONV_BM * ld, ld, p * 32 + lrow, lchunk + 4 * h,
                                rb[2 * p + h]);
                }
            }
            threadgroup_barrier(mem_flags::mem_threadgroup);
            stage = ns;
        }
        k = nk;
        c0 = nc0;
        have = next;
    }

    // Epilogue: stage the float tile over the operand tiles (every simdgroup is done reading
    // them), then add the bias in float and write the rows and columns that exist, rounding once.
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint i = 0; i < 4; ++i) {
        for (uint j = 0; j < 4; ++j) {
            simdgroup_store(acc[i][j], smem + (sg_row + 8 * i) * CONV_LD_OUT + sg_col + 8 * j,
                            CONV_LD_OUT);
        }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint i = tid; i < CONV_BM * CONV_BN; i += CONV_THREADS) {
        const uint r = i / CONV_BN;
        const uint o = i % CONV_BN;
        if (r < rows && col0 + o < co) {
            out[ulong(voxel_of[r]) * co + col0 + o] = T(smem[r * CONV_LD_OUT + o] + bias[col0 + o]);
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
        device const float* bias [[buffer(4)]],                                                    \
        device T* out [[buffer(5)]],                                                               \
        device const uint* order [[buffer(6)]],                                                    \
        threadgroup float* smem [[threadgroup(0)]],                                                \
        uint3 tgid [[threadgroup_position_in_grid]],                                               \
        uint tid [[thread_index_in_threadgroup]],                                                  \
        uint sgid [[simdgroup_index_in_threadgroup]]);

INSTANTIATE_SPARSE_CONV(f32, float)
INSTANTIATE_SPARSE_CONV(f16, half)
#if defined(__HAVE_BFLOAT__)
INSTANTIATE_SPARSE_CONV(bf16, bfloat)
#endif
