// Variable-length flash attention forward (FlashAttention-2 scheme) on tensor cores: mma.sync
// m16n8k16 with bf16 or f16 operands, fp32 scores, fp32 online softmax and fp32 accumulation.
// The CPU reference is `src/ops/attention/mod.rs`.
//
// q [Nq, H, D], k, v [Nk, H, D], out [Nq, H, D]: heads and dims contiguous, tokens `q_stride`,
// `k_stride`, `v_stride` elements apart (H·D when contiguous; 3·H·D for views of a fused qkv);
// out contiguous. `tiles` holds one uint4 per block
// row: (first query row, end query row, first key row, end key row) of one ≤128-row query tile
// of one sequence; grid = (tiles, H), 128 threads, (BM + 4·BN)·(D + 8)·2 bytes of dynamic shared
// memory (`attention_smem_bytes` in src/ops/attention/cuda.rs; over 48 KB from D = 64 on, so the host
// raises the function's dynamic shared-memory limit).
//
// Design, and why:
// - Four warps own 32 query rows each (two m16 row blocks). Every K or V fragment a warp loads
//   with ldmatrix then feeds two mma (one per row block) instead of one, which halves the
//   shared-memory traffic per FLOP: with 16 rows per warp the kernel was bound by shared-memory
//   bandwidth, not by the tensor cores.
// - The O accumulators (32 rows × D fp32 = 128 registers per thread at D = 128) and the scores
//   (32 × 64 fp32 = 64 registers) leave no room for Q in registers, so Q stays in shared memory
//   and is re-read with ldmatrix once per 16-column chunk of every key tile.
// - Keys stream through shared memory 64 at a time, K and V double-buffered: the cp.async copy
//   of tile j+1 is issued before the math of tile j and has a whole tile of math to land, and
//   one __syncthreads per tile both publishes tile j and frees the buffers of tile j−1.
// - 128 threads at ≤ 255 registers and 102 KB of shared memory (D = 128) give two CTAs per SM,
//   so one CTA's barrier and softmax stalls are covered by the other's mma.
// - Shared-memory rows are padded by 16 bytes: the eight 16-byte rows that one ldmatrix phase
//   reads then start in distinct bank groups, and cp.async writes stay contiguous.
// - Scores never leave registers: the S accumulators are rounded to T and repacked as the A
//   operand of P·V (the C layout of m16n8k16 matches its A layout two n-blocks at a time).
// - Softmax runs in the log2 domain with exp2 on the MUFU unit, the scale sl = scale·log2 e
//   (`scale_log2`) folded into its argument: p = exp2(s·sl − m) is one FFMA per score, and the
//   maximum is taken over the raw scores and scaled once per row. That needs sl > 0; the host
//   folds a negative scale into q and turns a zero one into the smallest positive float.
// - O is rescaled only when a row maximum of the warp grew: after the first tiles the maxima
//   rarely move, which saves D multiplies per thread per tile. The (warp-uniform) rescale branch
//   sits before the exponentials, so the exponentials, row sums, P packing and P·V mma of a tile
//   form one basic block and ptxas interleaves the MUFU work with the tensor-core work; keys
//   past the end of a sequence (last tile only) are set to −∞ in a branch of their own.
// - The output goes back through the warp's own (no longer needed) Q rows in shared memory so
//   that global stores are whole 16-byte row chunks.
//
// mma.sync m16n8k16 fragments (PTX ISA), lane = 4·g + t:
//   A (16×16, row-major): a0 = (row g, cols 2t, 2t+1), a1 = (row g+8, same cols),
//                         a2 = (row g, cols 2t+8, 2t+9), a3 = (row g+8, cols 2t+8, 2t+9).
//   B (16×8, k×n):        b0 = (k 2t, 2t+1; n g), b1 = (k 2t+8, 2t+9; n g).
//   C (16×8):             c0, c1 = (row g, cols 2t, 2t+1), c2, c3 = (row g+8, cols 2t, 2t+1).
// ldmatrix x4: lanes 8i..8i+7 give the row addresses of 8×8 matrix i, and register i of lane
// 4·g + t receives (row g, cols 2t, 2t+1) of matrix i; with .trans, (rows 2t, 2t+1, col g).
#include "common.cuh"

#define BM 128     // query rows per CTA
#define BN 64      // keys per tile
#define WM 32      // query rows per warp
#define NWARPS (BM / WM)
#define NTHREADS (NWARPS * 32)

// Row stride of the shared-memory tiles, in elements.
template <int D> constexpr int padded_row() { return D + 8; }

// 2^x on the MUFU unit; results below 2^-126 flush to zero, which a probability can afford.
__device__ __forceinline__ float exp2_approx(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

template <typename T, int D>
__device__ __forceinline__ void flash_fwd(const T *__restrict__ q, const T *__restrict__ k,
                                          const T *__restrict__ v, T *__restrict__ out,
                                          const uint4 *__restrict__ tiles, int heads, float scale_log2,
                                          int q_stride, int k_stride, int v_stride) {
    constexpr int LD = padded_row<D>();
    constexpr int CHUNKS = D / 8;  // 16-byte chunks per row
    extern __shared__ __align__(16) unsigned char smem[];
    // [BM][LD] query rows, then [2][BN][LD] key buffers, then [2][BN][LD] value buffers.
    auto Qs = reinterpret_cast<T(*)[LD]>(smem);
    auto Ks = reinterpret_cast<T(*)[BN][LD]>(smem + sizeof(T) * BM * LD);
    auto Vs = reinterpret_cast<T(*)[BN][LD]>(smem + sizeof(T) * (BM + 2 * BN) * LD);

    const uint4 ti = tiles[blockIdx.x];
    const int q0 = ti.x, q1 = ti.y, k0 = ti.z, k1 = ti.w;
    const int h = blockIdx.y;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    // Token strides: q, k and v may be row views of a fused projection (e.g. v of [N, 3, H, D]);
    // the output is contiguous.
    const size_t rs = (size_t)heads * D, qs = q_stride, ks = k_stride, vs = v_stride;
    const T *qh = q + (size_t)h * D, *kh = k + (size_t)h * D, *vh = v + (size_t)h * D;
    const int wrow = warp * WM;  // this warp's first row in the query tile

    // One key tile (rows kt.. of k or v) into a shared buffer. Each pass copies PASS_ROWS rows,
    // this thread always the same 16-byte chunk of row cp_row + pass·PASS_ROWS. Only the last
    // tile can run past k1; its missing rows are zero-filled so that masked probabilities
    // multiply zeros, never stale data.
    constexpr int PASS_ROWS = NTHREADS / CHUNKS;
    const int cp_row = tid / CHUNKS, cp_col = (tid % CHUNKS) * 8;
    auto load_tile = [&](T (*dst)[LD], const T *src, size_t src_stride, int kt) {
        const size_t pass_stride = (size_t)PASS_ROWS * src_stride;
        const T *row = src + (size_t)(kt + cp_row) * src_stride + cp_col;
        if (kt + BN <= k1) {
#pragma unroll
            for (int pass = 0; pass < BN / PASS_ROWS; ++pass, row += pass_stride)
                cp_async16(&dst[cp_row + pass * PASS_ROWS][cp_col], row, true);
        } else {
            const int rows_left = k1 - kt - cp_row;
#pragma unroll
            for (int pass = 0; pass < BN / PASS_ROWS; ++pass, row += pass_stride) {
                const bool ok = pass * PASS_ROWS < rows_left;
                cp_async16(&dst[cp_row + pass * PASS_ROWS][cp_col], ok ? row : src, ok);
            }
        }
    };

    // Each warp copies its own 32 query rows (zero past q1): only this warp ever reads them, and
    // it later reuses them to stage its output.
#pragma unroll
    for (int pass = 0; pass < WM * CHUNKS / 32; ++pass) {
        const int i = pass * 32 + lane, r = wrow + i / CHUNKS, c = (i % CHUNKS) * 8;
        const bool ok = q0 + r < q1;
        cp_async16(&Qs[r][c], ok ? qh + (size_t)(q0 + r) * qs + c : qh, ok);
    }
    load_tile(Ks[0], kh, ks, k0);
    load_tile(Vs[0], vh, vs, k0);
    cp_async_commit();

    // o[b][n]: row block b (rows wrow + 16b ..), columns 8n .. 8n+7. m, l: running maximum (scaled,
    // log2 domain) and this thread's partial row sum, [row block][row g or g+8].
    float o[2][D / 8][4];
#pragma unroll
    for (int b = 0; b < 2; ++b)
#pragma unroll
        for (int n = 0; n < D / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) o[b][n][e] = 0.f;
    float m[2][2], l[2][2];
#pragma unroll
    for (int b = 0; b < 2; ++b)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            m[b][r] = -INFINITY;
            l[b][r] = 0.f;
        }

    int buf = 0;
    for (int kt = k0; kt < k1; kt += BN, buf ^= 1) {
        cp_async_wait<0>();  // this thread's copies of tile kt (and Q) have landed
        __syncthreads();     // everyone's have, and every warp is done with tile kt − BN
        if (kt + BN < k1) {
            load_tile(Ks[buf ^ 1], kh, ks, kt + BN);
            load_tile(Vs[buf ^ 1], vh, vs, kt + BN);
        }
        cp_async_commit();

        // S = Q·Kᵀ. Q chunk (rows wrow + 16b + 0..15, cols 16c..16c+15) as an A fragment: lanes
        // 0-7 address rows 0-7 at col 0 (a0), 8-15 rows 8-15 (a1), 16-23 rows 0-7 at col 8 (a2),
        // 24-31 rows 8-15 at col 8 (a3). K rows are keys, so the non-transposed 8×8 blocks
        // (keys 8n.., dims 16c..) and (keys 8n.., dims 16c+8..) are b0, b1 of key block n:
        // lanes 0-7 / 8-15 address key block n at dims +0 / +8, lanes 16-31 key block n+1.
        float s[2][BN / 8][4];
#pragma unroll
        for (int b = 0; b < 2; ++b)
#pragma unroll
            for (int n = 0; n < BN / 8; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e) s[b][n][e] = 0.f;
#pragma unroll
        for (int c = 0; c < D / 16; ++c) {
            uint32_t qa[2][4];
#pragma unroll
            for (int b = 0; b < 2; ++b)
                ldmatrix_x4(qa[b], &Qs[wrow + b * 16 + (lane & 7) + ((lane >> 3) & 1) * 8][c * 16 + (lane >> 4) * 8]);
#pragma unroll
            for (int n = 0; n < BN / 8; n += 2) {
                uint32_t kb[4];
                ldmatrix_x4(kb, &Ks[buf][n * 8 + (lane & 7) + (lane >> 4) * 8][c * 16 + ((lane >> 3) & 1) * 8]);
#pragma unroll
                for (int b = 0; b < 2; ++b) {
                    mma16816<T>(s[b][n], qa[b], kb[0], kb[1]);
                    mma16816<T>(s[b][n + 1], qa[b], kb[2], kb[3]);
                }
            }
        }

        // Only the last tile can hold keys past the sequence end: their scores become −∞, which
        // no maximum picks and exp2 turns into 0 (the pass sits outside the hot path).
        if (kt + BN > k1) {
#pragma unroll
            for (int b = 0; b < 2; ++b)
#pragma unroll
                for (int n = 0; n < BN / 8; ++n)
#pragma unroll
                    for (int e = 0; e < 4; ++e)
                        if (kt + n * 8 + 2 * t + (e & 1) >= k1) s[b][n][e] = -INFINITY;
        }

        // Online softmax with the scale folded into the exponent: m is the running row maximum
        // of scale·log2 e·(q·k) (a positive scale keeps the order, so it is the scaled maximum of
        // the raw scores), and exp(scale·q·k − max) = exp2(s·sl − m) is one FFMA and one MUFU.ex2
        // per score. Row g of block b lives in s[b][*][0..1], row g+8 in s[b][*][2..3], each row
        // spread over the four lanes of a quad.
        float alpha[2][2];
        bool grew = false;
#pragma unroll
        for (int b = 0; b < 2; ++b)
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                float mx = -INFINITY;
#pragma unroll
                for (int n = 0; n < BN / 8; ++n) mx = fmaxf(mx, fmaxf(s[b][n][2 * r], s[b][n][2 * r + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                // Key kt is always valid, so the new maximum is finite.
                const float mn = fmaxf(m[b][r], mx * scale_log2);
                grew |= mn > m[b][r];
                alpha[b][r] = mn > m[b][r] ? exp2_approx(m[b][r] - mn) : 1.f;
                m[b][r] = mn;
            }
        // Warp-uniform branch: where no maximum of the warp grew, every alpha is 1. It comes
        // before the exponentials so that they, the row sums and the P·V products below form
        // one basic block, in which ptxas can overlap the MUFU work with the tensor-core work.
        if (__any_sync(0xffffffffu, grew)) {
#pragma unroll
            for (int b = 0; b < 2; ++b) {
                l[b][0] *= alpha[b][0];
                l[b][1] *= alpha[b][1];
#pragma unroll
                for (int n = 0; n < D / 8; ++n) {
                    o[b][n][0] *= alpha[b][0];
                    o[b][n][1] *= alpha[b][0];
                    o[b][n][2] *= alpha[b][1];
                    o[b][n][3] *= alpha[b][1];
                }
            }
        }
#pragma unroll
        for (int b = 0; b < 2; ++b)
#pragma unroll
            for (int n = 0; n < BN / 8; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    s[b][n][e] = exp2_approx(fmaf(s[b][n][e], scale_log2, -m[b][e >> 1]));
                    l[b][e >> 1] += s[b][n][e];  // quad-reduced once, at the end
                }

        // O += P·V over 16-key chunks c. P's A fragment is S key blocks 2c (a0, a1) and 2c+1
        // (a2, a3). V rows are keys, so the transposed 8×8 blocks (keys 16c.., dims 8n..) and
        // (keys 16c+8.., dims 8n..) are b0, b1 of column block n: lanes 0-7 / 8-15 address keys
        // +0 / +8 of column block n, lanes 16-31 the same keys of column block n+1.
#pragma unroll
        for (int c = 0; c < BN / 16; ++c) {
            uint32_t p[2][4];
#pragma unroll
            for (int b = 0; b < 2; ++b) {
                p[b][0] = pack2<T>(s[b][2 * c][0], s[b][2 * c][1]);
                p[b][1] = pack2<T>(s[b][2 * c][2], s[b][2 * c][3]);
                p[b][2] = pack2<T>(s[b][2 * c + 1][0], s[b][2 * c + 1][1]);
                p[b][3] = pack2<T>(s[b][2 * c + 1][2], s[b][2 * c + 1][3]);
            }
#pragma unroll
            for (int n = 0; n < D / 8; n += 2) {
                uint32_t vb[4];
                ldmatrix_x4_trans(vb, &Vs[buf][c * 16 + (lane & 7) + ((lane >> 3) & 1) * 8][n * 8 + (lane >> 4) * 8]);
#pragma unroll
                for (int b = 0; b < 2; ++b) {
                    mma16816<T>(o[b][n], p[b], vb[0], vb[1]);
                    mma16816<T>(o[b][n + 1], p[b], vb[2], vb[3]);
                }
            }
        }
    }
    cp_async_wait<0>();  // nothing may still be writing this warp's Q rows
    __syncwarp();        // and every lane is done reading them

    // Normalise and stage this warp's rows in its Q rows (row g / g+8 of block b, cols 8n + 2t).
#pragma unroll
    for (int b = 0; b < 2; ++b)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float lr = l[b][r];
            lr += __shfl_xor_sync(0xffffffffu, lr, 1);
            lr += __shfl_xor_sync(0xffffffffu, lr, 2);
            const float inv = lr > 0.f ? 1.f / lr : 0.f;
            const int row = wrow + b * 16 + r * 8 + g;
#pragma unroll
            for (int n = 0; n < D / 8; ++n)
                *reinterpret_cast<uint32_t *>(&Qs[row][n * 8 + 2 * t]) =
                    pack2<T>(o[b][n][2 * r] * inv, o[b][n][2 * r + 1] * inv);
        }
    __syncwarp();
    T *oh = out + (size_t)h * D;
#pragma unroll
    for (int pass = 0; pass < WM * CHUNKS / 32; ++pass) {
        const int i = pass * 32 + lane, r = wrow + i / CHUNKS, c = (i % CHUNKS) * 8;
        if (q0 + r < q1)
            *reinterpret_cast<uint4 *>(oh + (size_t)(q0 + r) * rs + c) = *reinterpret_cast<const uint4 *>(&Qs[r][c]);
    }
}

// Dynamic shared memory of one CTA: BM query rows and two buffers each of BN key and value rows,
// as `attention_smem_bytes` in src/ops/attention/cuda.rs computes it (pinned here at D = 128).
static_assert(sizeof(__nv_bfloat16) * (BM + 4 * BN) * padded_row<128>() == 104448, "smem layout");

#define FLASH(NAME, T, D)                                                                           \
    extern "C" __global__ void __launch_bounds__(NTHREADS, 2)                                       \
        NAME(const T *q, const T *k, const T *v, T *out, const uint4 *tiles, int heads, float scale_log2, \
             int q_stride, int k_stride, int v_stride) {                                            \
        flash_fwd<T, D>(q, k, v, out, tiles, heads, scale_log2, q_stride, k_stride, v_stride);      \
    }

FLASH(flash_attn_bf16_d16, __nv_bfloat16, 16)
FLASH(flash_attn_bf16_d32, __nv_bfloat16, 32)
FLASH(flash_attn_bf16_d64, __nv_bfloat16, 64)
FLASH(flash_attn_bf16_d128, __nv_bfloat16, 128)
FLASH(flash_attn_f16_d16, __half, 16)
FLASH(flash_attn_f16_d32, __half, 32)
FLASH(flash_attn_f16_d64, __half, 64)
FLASH(flash_attn_f16_d128, __half, 128)
