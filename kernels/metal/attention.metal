// Fused variable-length attention, flash style (reference: src/ops/attention/mod.rs, which this
// kernel is tested against through tests/metal_emu.rs).
//
//   out[i, h] = softmax_j(scale * q[i, h] . k[j, h]) v[j, h]     for j in the keys of i's sequence
//
// Layouts: q [Nq, H, D], k and v [Nk, H, D], out [Nq, H, D], dtype T. Sequence b owns query rows
// q_offsets[b]..q_offsets[b+1] and key rows kv_offsets[b]..kv_offsets[b+1] (self-attention passes
// the same offsets twice, cross-attention the condition's). The host's tile table lists one
// (sequence, first query row) pair per 32-row query tile, so no tile straddles two sequences and
// empty sequences have no tile.
//
// Numerics: q (pre-multiplied by scale), k and v are widened to float when staged; scores, the
// online softmax (running max starting at -FLT_MAX so no row ever computes inf - inf, running sum)
// and the output accumulator are float; only the final store rounds to T. No score matrix larger
// than 8 x BK per simdgroup ever exists.
// Tiles: a threadgroup = one 32-row query tile of one head, 4 simdgroups x 8 query rows. Q stays in
// registers (D/8 8x8 blocks per simdgroup); K and V stream through threadgroup memory BK keys at a
// time (BK = 32 for D = 64, 16 for D = 128, so K+V fit in 16 KB). The last key tile is ragged:
// missing keys get probability 0 by an explicit select (no -inf: Metal's default fast math may
// assume there are none). Rows are rescaled by multiplying with a diagonal 8x8 matrix, so the
// kernel never depends on how a simdgroup matrix is spread over lanes.
// Watchdog: grid.x covers args.n_tiles entries of the tile table from args.tile_base; the host
// splits long attention calls into several dispatches (src/ops/metal/dispatch.rs).
// Threadgroup memory (argument threadgroup(0)), floats: K [BK][D] + V [BK][D] + P 4x[8][BK] +
// 4 diagonals [8][8]; 19,456 bytes for D = 128, 21,504 bytes for D = 64.
#include <metal_stdlib>
#include "kargs.h"
using namespace metal;

#define ATTN_BQ 32
#define ATTN_THREADS 128

template <typename T, uint D, uint BK>
kernel void attention(
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
    static_assert(2 * BK >= ATTN_BQ, "the Q staging tile must fit in the K+V tiles");
    static_assert(BK <= 32 && BK % 8 == 0, "one simdgroup lane per key of a tile");
    if (tgid.x >= args.n_tiles) {
        return; // whole threadgroup leaves together
    }
    const uint2 tile = tiles[args.tile_base + tgid.x];
    const uint seq = tile.x;
    const uint q0 = tile.y;
    const uint h = tgid.y;
    const uint rows = min(uint(ATTN_BQ), q_offsets[seq + 1] - q0);
    const uint k_begin = kv_offsets[seq];
    const uint k_end = kv_offsets[seq + 1];
    const ulong token_stride = ulong(args.heads) * D;
    const ulong head_offset = ulong(h) * D;

    threadgroup float* k_tile = smem;                                   // [BK][D]
    threadgroup float* v_tile = k_tile + BK * D;                        // [BK][D]
    threadgroup float* p_tile = v_tile + BK * D + sgid * 8 * BK;        // this simdgroup's [8][BK]
    threadgroup float* diag = v_tile + BK * D + 4 * 8 * BK + sgid * 64; // this simdgroup's [8][8]

    // Stage the scaled query tile [BQ][D] through the K/V area and keep it in registers.
    for (uint i = tid; i < ATTN_BQ * D; i += ATTN_THREADS) {
        const uint r = i / D;
        const uint d = i % D;
        float x = 0.0f;
        if (r < rows) {
            x = float(q[ulong(q0 + r) * token_stride + head_offset + d]) * args.scale;
        }
        smem[i] = x;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    simdgroup_float8x8 qf[D / 8];
    for (uint d = 0; d < D / 8; ++d) {
        simdgroup_load(qf[d], smem + sgid * 8 * D + d * 8, D);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);

    simdgroup_float8x8 o[D / 8];
    for (uint d = 0; d < D / 8; ++d) {
        o[d] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    }
    // Softmax work split: lane handles row lane/4 of the simdgroup's 8 and a quarter of the keys;
    // the four lanes of a row combine with two xor shuffles. Each lane keeps its row's running max
    // and sum (the same in all four lanes).
    const uint row = lane / 4;
    const uint part = lane % 4;
    constexpr uint PER_LANE = BK / 4;
    float row_max = -FLT_MAX;
    float row_sum = 0.0f;

    for (uint kt = k_begin; kt < k_end; kt += BK) {
        const uint kn = min(BK, k_end - kt);
        for (uint i = tid; i < BK * D; i += ATTN_THREADS) {
            const uint r = i / D;
            const uint d = i % D;
            float kx = 0.0f;
            float vx = 0.0f;
            if (r < kn) {
                const ulong at = ulong(kt + r) * token_stride + head_offset + d;
                kx = float(k[at]);
                vx = float(v[at]);
            }
            k_tile[i] = kx;
            v_tile[i] = vx;
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);

        // S [8][BK] = Q [8][D] . K^T [D][BK]
        for (uint j = 0; j < BK / 8; ++j) {
            simdgroup_float8x8 s = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
            for (uint d = 0; d < D / 8; ++d) {
                simdgroup_float8x8 kf;
                simdgroup_load(kf, k_tile + j * 8 * D + d * 8, D, ulong2(0, 0), true);
                simdgroup_multiply_accumulate(s, qf[d], kf, s);
            }
            simdgroup_store(s, p_tile + j * 8, BK);
        }
        simdgroup_barrier(mem_flags::mem_threadgroup);

        // Online softmax over this tile's scores.
        // No infinities anywhere: Metal compiles with fast math, which may assume there are none.
        float p[PER_LANE];
        float tile_max = -FLT_MAX;
        for (uint j = 0; j < PER_LANE; ++j) {
            const uint key = part * PER_LANE + j;
            p[j] = key < kn ? p_tile[row * BK + key] : -FLT_MAX;
            tile_max = max(tile_max, p[j]);
        }
        tile_max = max(tile_max, simd_shuffle_xor(tile_max, 1));
        tile_max = max(tile_max, simd_shuffle_xor(tile_max, 2));
        const float new_max = max(row_max, tile_max);
        float tile_sum = 0.0f;
        for (uint j = 0; j < PER_LANE; ++j) {
            p[j] = part * PER_LANE + j < kn ? exp(p[j] - new_max) : 0.0f;
            tile_sum += p[j];
            p_tile[row * BK + part * PER_LANE + j] = p[j];
        }
        tile_sum += simd_shuffle_xor(tile_sum, 1);
        tile_sum += simd_shuffle_xor(tile_sum, 2);
        const float correction = exp(row_max - new_max);
        row_sum = row_sum * correction + tile_sum;
        row_max = new_max;
        if (part == 0) {
            for (uint c = 0; c < 8; ++c) {
                diag[row * 8 + c] = c == row ? correction : 0.0f;
            }
        }
        simdgroup_barrier(mem_flags::mem_threadgroup);

        // O = diag(correction) . O + P . V
        simdgroup_float8x8 dg;
        simdgroup_load(dg, diag, 8);
        for (uint d = 0; d < D / 8; ++d) {
            simdgroup_multiply(o[d], dg, o[d]);
        }
        for (uint j = 0; j < BK / 8; ++j) {
            simdgroup_float8x8 pf;
            simdgroup_load(pf, p_tile + j * 8, BK);
            for (uint d = 0; d < D / 8; ++d) {
                simdgroup_float8x8 vf;
                simdgroup_load(vf, v_tile + j * 8 * D + d * 8, D);
                simdgroup_multiply_accumulate(o[d], pf, vf, o[d]);
            }
        }
        threadgroup_barrier(mem_flags::mem_threadgroup); // K/V are overwritten next
    }

    // O = diag(1 / row_sum) . O, staged as [BQ][D] floats, then the existing rows are stored.
    if (part == 0) {
        for (uint c = 0; c < 8; ++c) {
            diag[row * 8 + c] = c == row && row_sum > 0.0f ? 1.0f / row_sum : 0.0f;
        }
    }
    simdgroup_barrier(mem_flags::mem_threadgroup);
    simdgroup_float8x8 dg;
    simdgroup_load(dg, diag, 8);
    for (uint d = 0; d < D / 8; ++d) {
        simdgroup_multiply(o[d], dg, o[d]);
        simdgroup_store(o[d], smem + sgid * 8 * D + d * 8, D);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint i = tid; i < ATTN_BQ * D; i += ATTN_THREADS) {
        const uint r = i / D;
        if (r < rows) {
            out[ulong(q0 + r) * token_stride + head_offset + i % D] = T(smem[i]);
        }
    }
}

// Names carry dtype, head dim and tiles; src/ops/metal/dispatch.rs builds the same strings.
#define INSTANTIATE_ATTENTION(tname, T, D, BK)                                                     \
    template [[host_name("attention_" #tname "_d" #D "_bq32_bk" #BK)]] kernel void                 \
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
