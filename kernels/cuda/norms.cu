// The fused norms: the DiT's, CUDA twins of kernels/metal/norms.metal (same arithmetic;
// references: src/ops/norm_modulate.rs and src/ops/rms_norm_rope.rs), and the SC-VAE's
// LayerNorm + activation (reference: src/ops/layer_norm_act.rs).
//
// layer_norm_modulate: y = (LN(x) w + b)(1 + scale_s) + shift_s for row r of sample s
//   (offsets[s] <= r < offsets[s+1]); x, y [T][C] in T; affine [2][C] and modulation [B][2][C]
//   (shift; scale) in float. Two-pass mean and variance in float.
// layer_norm_act: y[i] = act(LN(x[r]) w + b), r = rows[i] (or i when rows is null): the
//   SC-VAE's C2S norms, SiLU fused and, for the children, the channel→space gather read in
//   place (x = conv1's output viewed [8N][C'], rows = the subdivision's sources). x [R][C] and
//   y [T][C] in T, affine [2][C] in float; a row index >= R gives a NaN row (never read out of
//   bounds). No Metal twin: Metal composes the candle ops (src/ops/layer_norm_act.rs).
// rms_norm_rope: y = x / max(|x|, 1e-12) gamma_h sqrt(D) (when normalize), then pairs
//   (y[2i], y[2i+1]) rotated by (cos, sin) = table[t][i]; x [T][H][D] in T with token stride
//   x_stride (q and k are read in place from the fused qkv projection), y [T][H][D] in T;
//   gamma [H][D] and table [T or 1][D/2][2] in float (one row: the same rotation for all).
//
// One warp per row, 8 rows per 256-thread block; lanes stride over the row, so reads are
// coalesced and any C / even D works. The row is read from global memory once per pass (the
// second and third LayerNorm passes hit L1/L2) and written once: one read and one write of the
// activations instead of the ~6 (LayerNorm + modulate) and ~14 (RMS norm + RoPE) full passes of
// the composed candle ops, with their f32 casts.
#include "common.cuh"

#define NORM_ROWS 8

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

template <typename T>
__device__ __forceinline__ void layer_norm_modulate(const T *__restrict__ x, const float *__restrict__ affine,
                                                    const float *__restrict__ modulation,
                                                    const uint32_t *__restrict__ offsets, T *__restrict__ out,
                                                    int rows, int c, int samples, float eps) {
    const int row = blockIdx.x * NORM_ROWS + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;  // the whole warp: no shuffle below is left half-reached
    int s = 0;
    while (s + 1 < samples && (int)offsets[s + 1] <= row) ++s;
    const T *v = x + (size_t)row * c;
    float sum = 0.f;
    for (int i = lane; i < c; i += 32) sum += to_f32(v[i]);
    const float mean = warp_sum(sum) / (float)c;
    float sq = 0.f;
    for (int i = lane; i < c; i += 32) {
        const float d = to_f32(v[i]) - mean;
        sq += d * d;
    }
    const float inv = rsqrtf(warp_sum(sq) / (float)c + eps);
    const float *shift = modulation + (size_t)s * 2 * c;
    const float *scale = shift + c;
    T *o = out + (size_t)row * c;
    for (int i = lane; i < c; i += 32) {
        const float n = (to_f32(v[i]) - mean) * inv * affine[i] + affine[c + i];
        o[i] = store<T>(n * (1.f + scale[i]) + shift[i]);
    }
}

template <typename T>
__device__ __forceinline__ void layer_norm_act(const T *__restrict__ x, const uint32_t *__restrict__ rows_in,
                                               uint32_t x_rows, const float *__restrict__ affine,
                                               T *__restrict__ out, int rows, int c, float eps, int act) {
    const int row = blockIdx.x * NORM_ROWS + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;  // the whole warp: no shuffle below is left half-reached
    const uint32_t src = rows_in ? rows_in[row] : (uint32_t)row;
    T *o = out + (size_t)row * c;
    if (src >= x_rows) {
        for (int i = lane; i < c; i += 32) o[i] = store<T>(__int_as_float(0x7fc00000));
        return;
    }
    const T *v = x + (size_t)src * c;
    float sum = 0.f;
    for (int i = lane; i < c; i += 32) sum += to_f32(v[i]);
    const float mean = warp_sum(sum) / (float)c;
    float sq = 0.f;
    for (int i = lane; i < c; i += 32) {
        const float d = to_f32(v[i]) - mean;
        sq += d * d;
    }
    const float inv = rsqrtf(warp_sum(sq) / (float)c + eps);
    for (int i = lane; i < c; i += 32)
        o[i] = store<T>(activate((to_f32(v[i]) - mean) * inv * affine[i] + affine[c + i], act));
}

template <typename T>
__device__ __forceinline__ void rms_norm_rope(const T *__restrict__ x, const float *__restrict__ gamma,
                                              const float *__restrict__ table, T *__restrict__ out, int rows,
                                              int heads, int d, int normalize, int x_stride, int table_rows) {
    const int row = blockIdx.x * NORM_ROWS + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const int t = row / heads, h = row % heads;
    const T *v = x + (size_t)t * x_stride + (size_t)h * d;
    float f = 1.f;
    if (normalize) {
        float sq = 0.f;
        for (int i = lane; i < d; i += 32) {
            const float a = to_f32(v[i]);
            sq += a * a;
        }
        f = sqrtf((float)d) / fmaxf(sqrtf(warp_sum(sq)), 1e-12f);
    }
    const float *g = gamma + (size_t)h * d;
    const float *rot = table + (table_rows == 1 ? (size_t)0 : (size_t)t * d);
    T *o = out + (size_t)row * d;
    for (int p = lane; p < d / 2; p += 32) {
        float y0 = to_f32(v[2 * p]), y1 = to_f32(v[2 * p + 1]);
        if (normalize) {
            y0 = y0 * f * g[2 * p];
            y1 = y1 * f * g[2 * p + 1];
        }
        const float cs = rot[2 * p], sn = rot[2 * p + 1];
        o[2 * p] = store<T>(y0 * cs - y1 * sn);
        o[2 * p + 1] = store<T>(y0 * sn + y1 * cs);
    }
}

#define NORMS(NAME, T)                                                                               \
    extern "C" __global__ void __launch_bounds__(32 * NORM_ROWS)                                     \
        layer_norm_modulate_##NAME(const T *x, const float *affine, const float *modulation,        \
                                   const uint32_t *offsets, T *out, int rows, int c, int samples,    \
                                   float eps) {                                                      \
        layer_norm_modulate<T>(x, affine, modulation, offsets, out, rows, c, samples, eps);          \
    }                                                                                                \
    extern "C" __global__ void __launch_bounds__(32 * NORM_ROWS)                                     \
        layer_norm_act_##NAME(const T *x, const uint32_t *rows_in, uint32_t x_rows,                  \
                              const float *affine, T *out, int rows, int c, float eps, int act) {    \
        layer_norm_act<T>(x, rows_in, x_rows, affine, out, rows, c, eps, act);                       \
    }                                                                                                \
    extern "C" __global__ void __launch_bounds__(32 * NORM_ROWS)                                     \
        rms_norm_rope_##NAME(const T *x, const float *gamma, const float *table, T *out, int rows,   \
                             int heads, int d, int normalize, int x_stride, int table_rows) {        \
        rms_norm_rope<T>(x, gamma, table, out, rows, heads, d, normalize, x_stride, table_rows);     \
    }

NORMS(f32, float)
NORMS(f16, __half)
NORMS(bf16, __nv_bfloat16)
