// Variable-length flash attention forward (FlashAttention-2 scheme) on tensor cores: mma.sync
// m16n8k16 with bf16 or f16 operands, fp32 scores, fp32 online softmax and fp32 accumulation.
// The CPU reference is `src/ops/attention.rs`.
//
// q [Nq, H, D], k, v [Nk, H, D], out [Nq, H, D], contiguous. `tiles` holds one uint4 per block
// row: (first query row, end query row, first key row, end key row) of one ≤128-row query tile
// of one sequence; grid = (tiles, H). Eight warps own 16 query rows each; keys stream through
// shared memory 64 at a time (K then V, each copy overlapping the other's math). Scores never
// leave registers: the S accumulators are repacked as the A operand of P·V.
#include "common.cuh"

#define BM 128
#define BN 64
#define NWARPS 8

template <typename T, int D>
__device__ __forceinline__ void flash_fwd(const T *__restrict__ q, const T *__restrict__ k,
                                          const T *__restrict__ v, T *__restrict__ out,
                                          const uint4 *__restrict__ tiles, int heads, float scale_log2) {
    constexpr int LD = D + 8;  // padded rows: ldmatrix rows fall in distinct banks
    constexpr int NT = NWARPS * 32;
    __shared__ __align__(128) T Ks[BN][LD];
    __shared__ __align__(128) T Vs[BN][LD];

    const uint4 ti = tiles[blockIdx.x];
    const int q0 = ti.x, q1 = ti.y, k0 = ti.z, k1 = ti.w;
    const int h = blockIdx.y;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const size_t rs = (size_t)heads * D;  // token stride
    const T *qh = q + (size_t)h * D, *kh = k + (size_t)h * D, *vh = v + (size_t)h * D;

    auto load_tile = [&](T (*dst)[LD], const T *src, int kt) {
#pragma unroll
        for (int i = tid; i < BN * (D / 8); i += NT) {
            const int r = i / (D / 8), c = (i % (D / 8)) * 8;
            const bool ok = kt + r < k1;
            cp_async16(&dst[r][c], ok ? src + (size_t)(kt + r) * rs + c : src, ok);
        }
    };

    load_tile(Ks, kh, k0);
    cp_async_commit();

    // This warp's 16 query rows as A fragments, straight from global memory.
    const int r_lo = q0 + warp * 16 + g, r_hi = r_lo + 8;
    uint32_t qf[D / 16][4];
#pragma unroll
    for (int kc = 0; kc < D / 16; ++kc) {
        const int c = kc * 16 + 2 * t;
        qf[kc][0] = r_lo < q1 ? *reinterpret_cast<const uint32_t *>(qh + r_lo * rs + c) : 0u;
        qf[kc][1] = r_hi < q1 ? *reinterpret_cast<const uint32_t *>(qh + r_hi * rs + c) : 0u;
        qf[kc][2] = r_lo < q1 ? *reinterpret_cast<const uint32_t *>(qh + r_lo * rs + c + 8) : 0u;
        qf[kc][3] = r_hi < q1 ? *reinterpret_cast<const uint32_t *>(qh + r_hi * rs + c + 8) : 0u;
    }

    float o[D / 8][4];
#pragma unroll
    for (int j = 0; j < D / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[j][e] = 0.f;
    float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.f, l_hi = 0.f;

    for (int kt = k0; kt < k1; kt += BN) {
        load_tile(Vs, vh, kt);
        cp_async_commit();
        cp_async_wait<1>();  // K(kt) has landed
        __syncthreads();

        float s[BN / 8][4];
#pragma unroll
        for (int j = 0; j < BN / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[j][e] = 0.f;
#pragma unroll
        for (int kc = 0; kc < D / 16; ++kc)
#pragma unroll
            for (int j = 0; j < BN / 8; j += 2) {
                uint32_t r[4];
                ldmatrix_x4(r, &Ks[j * 8 + (lane & 7) + ((lane >> 4) & 1) * 8][kc * 16 + ((lane >> 3) & 1) * 8]);
                mma16816<T>(s[j], qf[kc], r[0], r[1]);
                mma16816<T>(s[j + 1], qf[kc], r[2], r[3]);
            }

        // Scale into the log2 domain, mask keys past the sequence end, online softmax.
        float mx_lo = -INFINITY, mx_hi = -INFINITY;
#pragma unroll
        for (int j = 0; j < BN / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = kt + j * 8 + 2 * t + (e & 1);
                s[j][e] = key < k1 ? s[j][e] * scale_log2 : -INFINITY;
                if (e < 2)
                    mx_lo = fmaxf(mx_lo, s[j][e]);
                else
                    mx_hi = fmaxf(mx_hi, s[j][e]);
            }
#pragma unroll
        for (int off = 1; off < 4; off <<= 1) {
            mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, off));
            mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, off));
        }
        // Key kt is always valid, so the new maxima are finite.
        const float mn_lo = fmaxf(m_lo, mx_lo), mn_hi = fmaxf(m_hi, mx_hi);
        const float a_lo = exp2f(m_lo - mn_lo), a_hi = exp2f(m_hi - mn_hi);
        m_lo = mn_lo;
        m_hi = mn_hi;
        float sum_lo = 0.f, sum_hi = 0.f;
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
            s[j][0] = exp2f(s[j][0] - mn_lo);
            s[j][1] = exp2f(s[j][1] - mn_lo);
            s[j][2] = exp2f(s[j][2] - mn_hi);
            s[j][3] = exp2f(s[j][3] - mn_hi);
            sum_lo += s[j][0] + s[j][1];
            sum_hi += s[j][2] + s[j][3];
        }
        l_lo = l_lo * a_lo + sum_lo;  // per-thread partial sums; reduced over the quad at the end
        l_hi = l_hi * a_hi + sum_hi;
#pragma unroll
        for (int j = 0; j < D / 8; ++j) {
            o[j][0] *= a_lo;
            o[j][1] *= a_lo;
            o[j][2] *= a_hi;
            o[j][3] *= a_hi;
        }

        cp_async_wait<0>();  // V(kt) has landed
        __syncthreads();     // and every warp is done with Ks
        if (kt + BN < k1) load_tile(Ks, kh, kt + BN);
        cp_async_commit();

#pragma unroll
        for (int kc = 0; kc < BN / 16; ++kc) {
            uint32_t p[4];
            p[0] = pack2<T>(s[2 * kc][0], s[2 * kc][1]);
            p[1] = pack2<T>(s[2 * kc][2], s[2 * kc][3]);
            p[2] = pack2<T>(s[2 * kc + 1][0], s[2 * kc + 1][1]);
            p[3] = pack2<T>(s[2 * kc + 1][2], s[2 * kc + 1][3]);
#pragma unroll
            for (int j = 0; j < D / 8; j += 2) {
                uint32_t r[4];
                ldmatrix_x4_trans(r, &Vs[kc * 16 + (lane & 7) + ((lane >> 3) & 1) * 8][j * 8 + ((lane >> 4) & 1) * 8]);
                mma16816<T>(o[j], p, r[0], r[1]);
                mma16816<T>(o[j + 1], p, r[2], r[3]);
            }
        }
        __syncthreads();  // every warp is done with Vs before the next tile overwrites it
    }
    cp_async_wait<0>();

#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
        l_lo += __shfl_xor_sync(0xffffffffu, l_lo, off);
        l_hi += __shfl_xor_sync(0xffffffffu, l_hi, off);
    }
    const float inv_lo = l_lo > 0.f ? 1.f / l_lo : 0.f, inv_hi = l_hi > 0.f ? 1.f / l_hi : 0.f;
    T *oh = out + (size_t)h * D;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
        const int c = j * 8 + 2 * t;
        if (r_lo < q1) *reinterpret_cast<uint32_t *>(oh + r_lo * rs + c) = pack2<T>(o[j][0] * inv_lo, o[j][1] * inv_lo);
        if (r_hi < q1) *reinterpret_cast<uint32_t *>(oh + r_hi * rs + c) = pack2<T>(o[j][2] * inv_hi, o[j][3] * inv_hi);
    }
}

#define FLASH(NAME, T, D)                                                                           \
    extern "C" __global__ void __launch_bounds__(NWARPS * 32, 1)                                    \
        NAME(const T *q, const T *k, const T *v, T *out, const uint4 *tiles, int heads, float scale_log2) { \
        flash_fwd<T, D>(q, k, v, out, tiles, heads, scale_log2);                                    \
    }

FLASH(flash_attn_bf16_d16, __nv_bfloat16, 16)
FLASH(flash_attn_bf16_d32, __nv_bfloat16, 32)
FLASH(flash_attn_bf16_d64, __nv_bfloat16, 64)
FLASH(flash_attn_bf16_d128, __nv_bfloat16, 128)
FLASH(flash_attn_f16_d16, __half, 16)
FLASH(flash_attn_f16_d32, __half, 32)
FLASH(flash_attn_f16_d64, __half, 64)
FLASH(flash_attn_f16_d128, __half, 128)
