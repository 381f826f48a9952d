// Submanifold 3×3×3 convolution as a masked implicit GEMM on tensor cores (mma.sync m16n8k16,
// bf16 or f16 operands, fp32 accumulation); the CPU reference is `src/ops/sparse_conv.rs`.
//
//   out[n, o] = Σ_k Σ_i W[o, k, i] · feats[nbr[n, k], i]      (absent neighbours contribute 0)
//
// feats [T, Ci], weight [Co, 27, Ci], neighbour map [T, 27] u32 (0xffffffff = absent),
// out [T, Co]; all row-major and contiguous.
//
// One block computes a BM×BN tile of `out`. It first ORs the neighbour-presence bits of its BM
// rows into a 27-bit tap mask and walks only the taps some row of the tile has (masked taps);
// for each such tap the K dimension is Ci in chunks of BK. A operand: the BM gathered feature
// rows of that tap (absent neighbours zero-filled by cp.async), B operand: the tap's weight
// slice W[col0.., k, c0..], which is already K-contiguous per output channel. Two shared-memory
// stages: the next chunk's cp.async copies run while the tensor cores work on the current one.
// When Ci is not a multiple of 8 (or a pointer is not 16-byte aligned) the copies fall back to
// element-wise loads with bounds checks; the pipeline structure is the same.
#include "common.cuh"

#define ABSENT 0xffffffffu
#define TAPS 27
#define BK 32
#define LDS (BK + 8)  // padded row: 80 bytes, so ldmatrix rows land in distinct banks

template <typename T, int BM, int BN, int WM, int WN>
__device__ __forceinline__ void subm_conv(const T *__restrict__ feats, const T *__restrict__ weight,
                                          const uint32_t *__restrict__ nbr,
                                          const uint32_t *__restrict__ order, T *__restrict__ out,
                                          int n, int ci, int co, int vec) {
    constexpr int NT = WM * WN * 32;
    constexpr int WTM = BM / WM, WTN = BN / WN;  // warp tile
    constexpr int FM = WTM / 16, FN = WTN / 8;   // mma tiles per warp
    static_assert(FN % 2 == 0, "B fragments are loaded two n-tiles at a time");
    static_assert(BM <= NT, "one thread per tile row builds the tap mask");
    __shared__ __align__(128) T As[2][BM][LDS];
    __shared__ __align__(128) T Bs[2][BN][LDS];
    __shared__ uint32_t tap_mask;
    __shared__ int tap_list[TAPS];
    __shared__ int ntaps;
    __shared__ uint32_t vox[BM];  // the voxel of each tile row (ABSENT past the end)

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp / WN, wn = warp % WN;
    const int row0 = blockIdx.x * BM, col0 = blockIdx.y * BN;

    if (tid == 0) tap_mask = 0;
    if (tid < BM) {
        const int p = row0 + tid;
        uint32_t v = ABSENT;
        if (p < n) v = order ? order[p] : (uint32_t)p;
        vox[tid] = v < (uint32_t)n ? v : ABSENT;  // a bad order entry writes nothing
    }
    __syncthreads();
    uint32_t m = 0;
    if (tid < BM && vox[tid] != ABSENT) {
        const uint32_t *p = nbr + (size_t)vox[tid] * TAPS;
#pragma unroll
        for (int k = 0; k < TAPS; ++k) m |= (p[k] != ABSENT ? 1u : 0u) << k;
    }
    m = __reduce_or_sync(0xffffffffu, m);
    if (lane == 0 && m) atomicOr(&tap_mask, m);
    __syncthreads();
    if (tid == 0) {
        int c = 0;
        for (int k = 0; k < TAPS; ++k)
            if ((tap_mask >> k) & 1u) tap_list[c++] = k;
        ntaps = c;
    }
    __syncthreads();
    const int nchunks = (ci + BK - 1) / BK;
    const int steps = ntaps * nchunks;
    const T zero = from_f32<T>(0.f);

    auto load = [&](int s, int buf) {
        const int tap = tap_list[s / nchunks];
        const int c0 = (s % nchunks) * BK;
        for (int i = tid; i < BM * (BK / 8); i += NT) {
            const int r = i / (BK / 8), c = (i % (BK / 8)) * 8, cc = c0 + c;
            const uint32_t v = vox[r];
            const uint32_t src = v != ABSENT ? nbr[(size_t)v * TAPS + tap] : ABSENT;
            T *dst = &As[buf][r][c];
            if (vec) {
                const bool ok = src != ABSENT && cc < ci;
                cp_async16(dst, ok ? feats + (size_t)src * ci + cc : feats, ok);
            } else {
#pragma unroll
                for (int e = 0; e < 8; ++e)
                    dst[e] = (src != ABSENT && cc + e < ci) ? feats[(size_t)src * ci + cc + e] : zero;
            }
        }
        for (int i = tid; i < BN * (BK / 8); i += NT) {
            const int r = i / (BK / 8), c = (i % (BK / 8)) * 8, cc = c0 + c;
            const int o = col0 + r;
            const T *w = weight + ((size_t)o * TAPS + tap) * ci + cc;
            T *dst = &Bs[buf][r][c];
            if (vec) {
                const bool ok = o < co && cc < ci;
                cp_async16(dst, ok ? w : weight, ok);
            } else {
#pragma unroll
                for (int e = 0; e < 8; ++e) dst[e] = (o < co && cc + e < ci) ? w[e] : zero;
            }
        }
    };

    float acc[FM][FN][4];
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
        for (int j = 0; j < FN; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

    if (steps > 0) load(0, 0);
    cp_async_commit();
    for (int s = 0; s < steps; ++s) {
        const int buf = s & 1;
        if (s + 1 < steps) load(s + 1, buf ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            uint32_t a[FM][4], b[FN][2];
#pragma unroll
            for (int i = 0; i < FM; ++i)
                ldmatrix_x4(a[i], &As[buf][wm * WTM + i * 16 + (lane & 15)][kk + (lane >> 4) * 8]);
#pragma unroll
            for (int j = 0; j < FN; j += 2) {
                uint32_t r[4];
                ldmatrix_x4(r, &Bs[buf][wn * WTN + j * 8 + (lane & 7) + ((lane >> 4) & 1) * 8]
                                  [kk + ((lane >> 3) & 1) * 8]);
                b[j][0] = r[0];
                b[j][1] = r[1];
                b[j + 1][0] = r[2];
                b[j + 1][1] = r[3];
            }
#pragma unroll
            for (int i = 0; i < FM; ++i)
#pragma unroll
                for (int j = 0; j < FN; ++j) mma16816<T>(acc[i][j], a[i], b[j][0], b[j][1]);
        }
        __syncthreads();
    }
    cp_async_wait<0>();

    // Accumulator layout (m16n8): c0,c1 at (row g, cols 2t, 2t+1); c2,c3 at row g+8.
    const int g = lane >> 2, t = lane & 3;
    const bool pairs = (co & 1) == 0;
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
        for (int j = 0; j < FN; ++j) {
            const int col = col0 + wn * WTN + j * 8 + 2 * t;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const uint32_t v = vox[wm * WTM + i * 16 + g + h * 8];
                if (v == ABSENT) continue;
                T *dst = out + (size_t)v * co + col;
                const float x0 = acc[i][j][2 * h], x1 = acc[i][j][2 * h + 1];
                if (pairs && col + 1 < co) {
                    *reinterpret_cast<uint32_t *>(dst) = pack2<T>(x0, x1);
                } else {
                    if (col < co) dst[0] = from_f32<T>(x0);
                    if (col + 1 < co) dst[1] = from_f32<T>(x1);
                }
            }
        }
}

#define SUBM_CONV(NAME, T, BM, BN, WM, WN)                                                          \
    extern "C" __global__ void __launch_bounds__(WM *WN * 32)                                       \
        NAME(const T *feats, const T *weight, const uint32_t *nbr, const uint32_t *order, T *out,   \
             int n, int ci, int co, int vec) {                                                      \
        subm_conv<T, BM, BN, WM, WN>(feats, weight, nbr, order, out, n, ci, co, vec);               \
    }

// Wide tiles for Co > 64, narrow ones for Co ≤ 64 (the 1.7M × 64 decoder level).
SUBM_CONV(subm_conv3d_bf16_n128, __nv_bfloat16, 128, 128, 2, 4)
SUBM_CONV(subm_conv3d_bf16_n64, __nv_bfloat16, 128, 64, 4, 2)
SUBM_CONV(subm_conv3d_f16_n128, __half, 128, 128, 2, 4)
SUBM_CONV(subm_conv3d_f16_n64, __half, 128, 64, 4, 2)

// mask[v] = bit k set where voxel v has neighbour k: the key the host sorts voxels by so that the
// rows of a tile share their taps (src/sparse/neighbours.rs, `NeighbourMap::conv_order`).
extern "C" __global__ void subm_conv3d_masks(const uint32_t *__restrict__ nbr, uint32_t *__restrict__ mask,
                                             int n) {
    const int v = blockIdx.x * blockDim.x + threadIdx.x;
    if (v >= n) return;
    const uint32_t *p = nbr + (size_t)v * TAPS;
    uint32_t m = 0;
#pragma unroll
    for (int k = 0; k < TAPS; ++k) m |= (p[k] != ABSENT ? 1u : 0u) << k;
    mask[v] = m;
}
