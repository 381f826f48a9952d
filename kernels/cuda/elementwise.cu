// Fused elementwise epilogues of the linear layers and residual branches; references:
// src/ops/bias_act/mod.rs and src/ops/gated_residual/mod.rs (same f32 arithmetic, one rounding).
//
// bias_act: y = act(x + bias) over x, y [T][C] in T, bias [C] in float; act is identity,
//   tanh-GELU, SiLU or exact (erf) GELU.
// gated_residual: y = x + gate_s * r for row t of sample s (offsets[s] <= t < offsets[s+1]);
//   x, r, y [T][C] in T, gate [B][C] in float.
//
// Why: candle adds a bias (or a per-sample gate) through its generic strided broadcast kernel,
// which computes a multi-dimensional index per element and ran at ~0.3 TB/s on an H100 — a
// [15k, 8192] bias add took 4-5× its matmul. These kernels are one read and one write at full
// bandwidth: VEC consecutive elements per thread (16-byte loads when C is a multiple of 8), the
// column of the first element found once per vector.
#include "common.cuh"

#define EW_THREADS 256

// VEC elements of T as one aligned register group.
template <typename T, int VEC> struct alignas(sizeof(T) * VEC) Pack {
    T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ void bias_act(const T *__restrict__ x, const float *__restrict__ bias,
                                         T *__restrict__ y, size_t vectors, int c, int act) {
    for (size_t i = blockIdx.x * (size_t)EW_THREADS + threadIdx.x; i < vectors;
         i += (size_t)gridDim.x * EW_THREADS) {
        const size_t e = i * VEC;
        const int col = (int)(e % (size_t)c);  // C % VEC == 0: a vector never wraps a row
        const Pack<T, VEC> in = *reinterpret_cast<const Pack<T, VEC> *>(x + e);
        Pack<T, VEC> out;
#pragma unroll
        for (int j = 0; j < VEC; ++j) out.v[j] = store<T>(activate(to_f32(in.v[j]) + bias[col + j], act));
        *reinterpret_cast<Pack<T, VEC> *>(y + e) = out;
    }
}

template <typename T, int VEC>
__device__ __forceinline__ void gated_residual(const T *__restrict__ x, const T *__restrict__ r,
                                               const float *__restrict__ gate,
                                               const uint32_t *__restrict__ offsets, T *__restrict__ y,
                                               size_t vectors, int c, int samples) {
    for (size_t i = blockIdx.x * (size_t)EW_THREADS + threadIdx.x; i < vectors;
         i += (size_t)gridDim.x * EW_THREADS) {
        const size_t e = i * VEC;
        const uint32_t row = (uint32_t)(e / (size_t)c);
        const int col = (int)(e % (size_t)c);
        // Sample of the row: binary search for the last offset <= row.
        int lo = 0, hi = samples - 1;
        while (lo < hi) {
            const int mid = (lo + hi + 1) >> 1;
            if (offsets[mid] <= row)
                lo = mid;
            else
                hi = mid - 1;
        }
        const float *g = gate + (size_t)lo * c + col;
        const Pack<T, VEC> a = *reinterpret_cast<const Pack<T, VEC> *>(x + e);
        const Pack<T, VEC> b = *reinterpret_cast<const Pack<T, VEC> *>(r + e);
        Pack<T, VEC> out;
#pragma unroll
        for (int j = 0; j < VEC; ++j) out.v[j] = store<T>(to_f32(a.v[j]) + g[j] * to_f32(b.v[j]));
        *reinterpret_cast<Pack<T, VEC> *>(y + e) = out;
    }
}

#define ELEMENTWISE(NAME, T, VEC, SUFFIX)                                                            \
    extern "C" __global__ void __launch_bounds__(EW_THREADS)                                        \
        bias_act_##NAME##SUFFIX(const T *x, const float *bias, T *y, size_t vectors, int c, int act) { \
        bias_act<T, VEC>(x, bias, y, vectors, c, act);                                              \
    }                                                                                               \
    extern "C" __global__ void __launch_bounds__(EW_THREADS)                                        \
        gated_residual_##NAME##SUFFIX(const T *x, const T *r, const float *gate,                    \
                                      const uint32_t *offsets, T *y, size_t vectors, int c,         \
                                      int samples) {                                                \
        gated_residual<T, VEC>(x, r, gate, offsets, y, vectors, c, samples);                        \
    }

// `_v`: 16-byte vectors (C a multiple of 16 / sizeof(T), operands 16-byte aligned); else scalar.
ELEMENTWISE(f32, float, 4, _v)
ELEMENTWISE(f16, __half, 8, _v)
ELEMENTWISE(bf16, __nv_bfloat16, 8, _v)
ELEMENTWISE(f32, float, 1, )
ELEMENTWISE(f16, __half, 1, )
ELEMENTWISE(bf16, __nv_bfloat16, 1, )
