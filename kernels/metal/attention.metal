// Fused variable-length attention, flash style (reference: src/ops/attention/mod.rs, which this
// kernel is tested against through tests/metal_emu.rs).
//
//   out[i, h] = softmax_j(scale * q[i, h] . k[j, h]) v[j, h]     for j in the keys of i's sequence
//
// Layouts: q [Nq, H, D], k and v [Nk, H, D], out [Nq, H, D], dtype T, each starting at a multiple
// of 4 elements (the host checks; rows are read and written as 4-element vectors). Sequence b owns
// query rows q_offsets[b]..q_offsets[b+1] and key rows kv_offsets[b]..kv_offsets[b+1]. The host's
// tile table lists one (sequence, first query row) pair per 32-row query tile: no tile straddles
// two sequences, empty sequences have none.
// Tiles: a threadgroup = one 32-row query tile of one head, 4 simdgroups x 8 query rows; Q stays
// in registers as float, K and V stream through threadgroup memory in T, BK keys at a time
// (BK = 32 for D = 64, 16 for D = 128), rows padded by 16 bytes (8x8 loads: 1 bank way in
// f16/bf16, 2 in f32).
// Scores stay in registers, as in MLX's steel attention: S = Q.K^T lands in BK/8 float
// simdgroup matrices per simdgroup, and the online softmax works on their thread_elements()
// (Apple's layout: lane l holds row (l / 4 & 4) + (l / 2 % 4), columns (l / 4 & 2) * 2 +
// (l % 2) * 2 and the next; the four lanes of a row differ in lane bits 0 and 3, so a row's max
// and sum combine with xor shuffles 1 and 8). The same matrices are P for O += P.V; the
// rescale of O and the final 1/sum scale O's own elements. No threadgroup round trip of S/P.
// Numerics: q widened and pre-multiplied by scale (as the reference does); S = Q.K^T and
// O += P.V are float-by-T simdgroup multiplies accumulating in float; online softmax with the
// running max starting at -FLT_MAX, missing keys and the first tile's rescale selected to 0 (fast
// math may assume no infinities); only the final store rounds to T.
// Threadgroup memory (argument threadgroup(0)): Q/output staging [32][D+4] floats, overlapping
// K, V [BK][D+16/sizeof(T)] of T. f32: 16,896 bytes (D = 128), 17,408 (D = 64); f16/bf16:
// 16,896 and 9,216 (src/ops/metal/dispatch.rs `attention_threadgroup_memory`).
// Watchdog: grid.x covers args.n_tiles entries of the tile table from args.tile_base
// (docs/METAL.md "Watchdog and dispatch").
#include <metal_stdlib>
#include "kargs.h"
using namespace metal;

#define ATTN_BQ 32
#define ATTN_THREADS 128

// Row r, columns 4c..4c+3 of a [rows][D+4] float tile as two 8-byte halves, the half at the
// lower address alternating between 32-word bank periods: lanes whose chunks share banks then
// write half 0 and half 1 in equal numbers (2 ways per access, as for an 8x8 matrix).
inline uint attention_swizzle(uint word) {
    return (word >> 5) & 1;
}

// Stages rows [0, n) of one head (src: its first row, rows `stride` elements apart), times
// `mul`, into the [R][D + 16 / sizeof(U)] tile of U (float or T); rows from n on are zero. 4-element
// vectors from device memory; a 2-byte U is stored as one 8-byte vector, a float as two halves.
template <typename T, typename U, uint D, uint R>
inline void attention_stage(threadgroup U* tile, device const T* src, ulong stride, uint n,
                            float mul, uint tid) {
    constexpr uint CHUNKS = D / 4;
    constexpr uint LD = D + 16 / sizeof(U);
    static_assert((R * CHUNKS) % ATTN_THREADS == 0, "whole passes of the threadgroup");
#pragma clang loop unroll(full)
    for (uint pass = 0; pass < R * CHUNKS / ATTN_THREADS; ++pass) {
        const uint i = pass * ATTN_THREADS + tid;
        const uint r = i / CHUNKS;
        const uint c = i % CHUNKS;
        vec<T, 4> x;
        x[0] = T(0.0f);
        x[1] = T(0.0f);
        x[2] = T(0.0f);
        x[3] = T(0.0f);
        if (r < n) {
            x = *((device const vec<T, 4>*)(src + ulong(r) * stride) + c);
        }
        if (sizeof(U) == 2) {
            // K and V in their own dtype (U = T), no scaling.
            ((threadgroup vec<T, 4>*)(tile + r * LD))[c] = x;
        } else {
            const uint word = r * LD + 4 * c;
            const uint s = attention_swizzle(word);
            vec<float, 2> lo;
            vec<float, 2> hi;
            lo[0] = float(x[0]) * mul;
            lo[1] = float(x[1]) * mul;
            hi[0] = float(x[2]) * mul;
            hi[1] = float(x[3]) * mul;
            threadgroup vec<float, 2>* at = (threadgroup vec<float, 2>*)(tile + word);
            at[s] = s == 0 ? lo : hi;
            at[s ^ 1] = s == 0 ? hi : lo;
        }
    }
}

template <typename T, uint D, uint BK>
[[kernel, max_total_threads_per_threadgroup(ATTN_THREADS)]] void attention(
    constant AttentionArgs& args [[buffer(0)]],
    device const T* q [[buffer(1)]],
    device const T* k [[buffer(2)]],
    device const T* v [[buffer(3)]],
    device const uint* q_offsets [[buffer(4)]],
    device const uint* kv_offsets [[buffer(5)]],
    device const uint2* tiles [[buffer(6)]],
    device T* out [[buffer(7)]],
    threadgroup float* smem [[threadgroup(0)]],
    uint3 tgid [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]],
    uint sgid [[simdgroup_index_in_threadgroup]],
    uint lane [[thread_index_in_simdgroup]])
{
    // Rows padded by 16 bytes: Q and output staging [BQ][LD] floats, K and V [BK][LDT] of T.
    constexpr uint LD = D + 4;
    constexpr uint LDT = D + 16 / sizeof(T);
    static_assert(BK <= 32 && BK % 8 == 0, "whole 8x8 blocks");
    if (tgid.x >= args.n_tiles) {
        return; // whole threadgroup leaves together
    }
    const uint2 tile = tiles[args.tile_base + tgid.x];
    const uint seq = tile.x;
    const uint q0 = tile.y;
    const uint rows = min(uint(ATTN_BQ), q_offsets[seq + 1] - q0);
    const uint k_begin = kv_offsets[seq];
    const uint k_end = kv_offsets[seq + 1];
    const ulong stride = ulong(args.heads) * D;
    const ulong head = ulong(tgid.y) * D;

    // Q/output staging and the K/V tiles share threadgroup memory.
    threadgroup T* k_tile = (threadgroup T*)smem; // [BK][LDT]
    threadgroup T* v_tile = k_tile + BK * LDT;    // [BK][LDT]

    // The scaled query tile [BQ][LD] as float, staged over K/V, then kept in registers.
    attention_stage<T, float, D, ATTN_BQ>(smem, q + ulong(q0) * stride + head, stride, rows,
                                   args.scale, tid);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    simdgroup_float8x8 qf[D / 8];
#pragma clang loop unroll(full)
    for (uint d = 0; d < D / 8; ++d) {
        simdgroup_load(qf[d], smem + sgid * 8 * LD + d * 8, LD);
    }
    simdgroup_float8x8 o[D / 8];
#pragma clang loop unroll(full)
    for (uint d = 0; d < D / 8; ++d) {
        o[d] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    }
    // This lane's elements of every 8x8 matrix: row `row` of the simdgroup's 8, columns
    // `col`, `col` + 1 (keys of an S block, head dims of an O block). Every lane keeps its row's
    // running max and sum.
    const uint row = (lane / 4 & 4) + (lane / 2 % 4);
    const uint col = (lane / 4 & 2) * 2 + (lane % 2) * 2;
    float row_max = -FLT_MAX;
    float row_sum = 0.0f;

    for (uint kt = k_begin; kt < k_end; kt += BK) {
        const uint kn = min(BK, k_end - kt);
        const uint blocks = (kn + 7) / 8; // 8-key blocks holding a key
        threadgroup_barrier(mem_flags::mem_threadgroup); // Q / the last tile fully read
        attention_stage<T, T, D, BK>(k_tile, k + ulong(kt) * stride + head, stride, kn, 1.0f,
                                     tid);
        attention_stage<T, T, D, BK>(v_tile, v + ulong(kt) * stride + head, stride, kn, 1.0f,
                                     tid);
        threadgroup_barrier(mem_flags::mem_threadgroup);

        // S [8][BK] = Q [8][D] . K^T [D][BK], one 8-key block at a time; float Q times K in T,
        // accumulated in float (a mixed-precision simdgroup multiply).
        simdgroup_float8x8 s[BK / 8];
#pragma clang loop unroll(full)
        for (uint j = 0; j < BK / 8; ++j) {
            if (j < blocks) {
                s[j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
#pragma clang loop unroll(full)
                for (uint d = 0; d < D / 8; ++d) {
                    simdgroup_matrix<T, 8, 8> kf;
                    simdgroup_load(kf, k_tile + j * 8 * LDT + d * 8, LDT, ulong2(0, 0), true);
                    simdgroup_multiply_accumulate(s[j], qf[d], kf, s[j]);
                }
            }
        }

        // Online softmax over this tile's scores, on the lanes' elements of S. No infinities.
        float tile_max = -FLT_MAX;
#pragma clang loop unroll(full)
        for (uint j = 0; j < BK / 8; ++j) {
            if (j < blocks) {
#pragma clang loop unroll(full)
                for (uint i = 0; i < 2; ++i) {
                    const float x = s[j].thread_elements()[i];
                    tile_max = j * 8 + col + i < kn ? max(tile_max, x) : tile_max;
                }
            }
        }
        tile_max = max(tile_max, simd_shuffle_xor(tile_max, 1));
        tile_max = max(tile_max, simd_shuffle_xor(tile_max, 8));
        const float new_max = max(row_max, tile_max);
        float tile_sum = 0.0f;
#pragma clang loop unroll(full)
        for (uint j = 0; j < BK / 8; ++j) {
            if (j < blocks) {
#pragma clang loop unroll(full)
                for (uint i = 0; i < 2; ++i) {
                    const float x = s[j].thread_elements()[i];
                    const float p = j * 8 + col + i < kn ? exp(x - new_max) : 0.0f;
                    s[j].thread_elements()[i] = p;
                    tile_sum += p;
                }
            }
        }
        tile_sum += simd_shuffle_xor(tile_sum, 1);
        tile_sum += simd_shuffle_xor(tile_sum, 8);
        // The first tile's factor multiplies zeros; selected, as exp(-FLT_MAX) may overflow.
        const float correction = kt == k_begin ? 0.0f : exp(row_max - new_max);
        row_sum = row_sum * correction + tile_sum;
        row_max = new_max;
        // O = diag(correction) . O on the lanes' own elements, skipped while no row of the
        // simdgroup moved its max (and on the first tile, where O is zero). The condition is
        // the same in every lane.
        if (kt != k_begin && simd_min(correction) < 1.0f) {
#pragma clang loop unroll(full)
            for (uint d = 0; d < D / 8; ++d) {
                o[d].thread_elements()[0] *= correction;
                o[d].thread_elements()[1] *= correction;
            }
        }

        // O += P . V, P being S's matrices.
#pragma clang loop unroll(full)
        for (uint j = 0; j < BK / 8; ++j) {
            if (j < blocks) {
#pragma clang loop unroll(full)
                for (uint d = 0; d < D / 8; ++d) {
                    simdgroup_matrix<T, 8, 8> vf;
                    simdgroup_load(vf, v_tile + j * 8 * LDT + d * 8, LDT);
                    simdgroup_multiply_accumulate(o[d], s[j], vf, o[d]);
                }
            }
        }
    }

    // O / sum on the lanes' elements, then O to [BQ][LD] (over K/V); the store rounds to T and
    // writes the tile's existing rows.
    const float inv_sum = row_sum > 0.0f ? 1.0f / row_sum : 0.0f;
#pragma clang loop unroll(full)
    for (uint d = 0; d < D / 8; ++d) {
        o[d].thread_elements()[0] *= inv_sum;
        o[d].thread_elements()[1] *= inv_sum;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup); // K/V fully read
#pragma clang loop unroll(full)
    for (uint d = 0; d < D / 8; ++d) {
        simdgroup_store(o[d], smem + sgid * 8 * LD + d * 8, LD);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    constexpr uint CHUNKS = D / 4;
#pragma clang loop unroll(full)
    for (uint pass = 0; pass < ATTN_BQ * CHUNKS / ATTN_THREADS; ++pass) {
        const uint i = pass * ATTN_THREADS + tid;
        const uint r = i / CHUNKS;
        const uint c = i % CHUNKS;
        const uint word = r * LD + 4 * c;
        const uint sw = attention_swizzle(word);
        threadgroup vec<float, 2>* at = (threadgroup vec<float, 2>*)(smem + word);
        const vec<float, 2> first = at[sw];
        const vec<float, 2> second = at[sw ^ 1];
        const vec<float, 2> lo = sw == 0 ? first : second;
        const vec<float, 2> hi = sw == 0 ? second : first;
        vec<T, 4> y;
        y[0] = T(lo[0]);
        y[1] = T(lo[1]);
        y[2] = T(hi[0]);
        y[3] = T(hi[1]);
        if (r < rows) {
            *((device vec<T, 4>*)(out + ulong(q0 + r) * stride + head) + c) = y;
        }
    }
}

// Names carry dtype, head dim and tiles; src/ops/metal/dispatch.rs builds the same strings.
#define INSTANTIATE_ATTENTION(tname, T, D, BK)                                                     \
    template [[host_name("attention_" #tname "_d" #D "_bq32_bk" #BK)]] [[kernel]] void             \
    attention<T, D, BK>(                                                                           \
        constant AttentionArgs& args [[buffer(0)]],                                                \
        device const T* q [[buffer(1)]],                                                           \
        device const T* k [[buffer(2)]],                                                           \
        device const T* v [[buffer(3)]],                                                           \
        device const uint* q_offsets [[buffer(4)]],                                                \
        device const uint* kv_offsets [[buffer(5)]],                                               \
        device const uint2* tiles [[buffer(6)]],                                                   \
        device T* out [[buffer(7)]],                                                               \
        threadgroup float* smem [[threadgroup(0)]],                                                \
        uint3 tgid [[threadgroup_position_in_grid]],                                               \
        uint tid [[thread_index_in_threadgroup]],                                                  \
        uint sgid [[simdgroup_index_in_threadgroup]],                                              \
        uint lane [[thread_index_in_simdgroup]]);

INSTANTIATE_ATTENTION(f32, float, 64, 32)
INSTANTIATE_ATTENTION(f32, float, 128, 16)
INSTANTIATE_ATTENTION(f16, half, 64, 32)
INSTANTIATE_ATTENTION(f16, half, 128, 16)
#if defined(__HAVE_BFLOAT__)
INSTANTIATE_ATTENTION(bf16, bfloat, 64, 32)
INSTANTIATE_ATTENTION(bf16, bfloat, 128, 16)
#endif
