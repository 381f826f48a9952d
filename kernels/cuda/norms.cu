// The fused norms: the DiT's, CUDA twins of kernels/metal/norms.metal (same arithmetic;
// references: src/ops/norm_modulate/mod.rs and src/ops/rms_norm_rope/mod.rs), and the SC-VAE's
// LayerNorm + activation (reference: src/ops/layer_norm_act/mod.rs).
//
// layer_norm_modulate: y = (LN(x) w + b)(1 + scale_s) + shift_s for row r of sample s
//   (offsets[s] <= r < offsets[s+1]); x, y [T][C] in T; affine [2][C] and modulation [B][2][C]
//   (shift; scale) in float. Two-pass mean and variance in float.
// layer_norm_act: y[i] = act(LN(x[r]) w + b), r = rows[i] (or i when rows is null): the
//   SC-VAE's C2S norms, SiLU fused and, for the children, the channel→space gather read in
//   place (x = conv1's output viewed [8N][C'], rows = the subdivision's sources). x [R][C] and
//   y [T][C] in T, affine [2][C] in float; a row index >= R gives a NaN row (never read out of
//   bounds). No Metal twin: Metal composes the candle ops (src/ops/layer_norm_act/mod.rs).
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

// ---- Vector paths ----------------------------------------------------------------------------
// Chosen by the host when C (or D) is a multiple of the 16-byte vector (E = 16 / sizeof(T)
// values) and small enough for the row to sit in registers: L lanes a row (L = 8, 16 or 32,
// 256 / L rows per 256-thread block, so short rows still fill the warps), each lane holding up
// to NV 16-byte vectors, lane-strided (vector j*L + lane), so every load and store instruction
// covers L·16 contiguous bytes. The row is read from global memory once; the passes run over the
// registers. Rows past the end are clamped to the last row and not written, so every lane of a
// warp reaches every shuffle. The kernels check the pointers' 16-byte alignment (a uniform
// branch) and otherwise fall back to a scalar loop over the same lane groups.

template <int L> __device__ __forceinline__ float group_sum(float v) {
#pragma unroll
    for (int off = L / 2; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

template <typename T> __device__ __forceinline__ void unpack16(const uint4 &u, float *f);
template <> __device__ __forceinline__ void unpack16<float>(const uint4 &u, float *f) {
    f[0] = __uint_as_float(u.x), f[1] = __uint_as_float(u.y);
    f[2] = __uint_as_float(u.z), f[3] = __uint_as_float(u.w);
}
__device__ __forceinline__ void unpack_bf16x2(uint32_t w, float *f) {
    f[0] = __uint_as_float(w << 16), f[1] = __uint_as_float(w & 0xffff0000u);
}
template <> __device__ __forceinline__ void unpack16<__nv_bfloat16>(const uint4 &u, float *f) {
    unpack_bf16x2(u.x, f), unpack_bf16x2(u.y, f + 2), unpack_bf16x2(u.z, f + 4), unpack_bf16x2(u.w, f + 6);
}
__device__ __forceinline__ void unpack_f16x2(uint32_t w, float *f) {
    f[0] = __half2float(__ushort_as_half((unsigned short)(w & 0xffffu)));
    f[1] = __half2float(__ushort_as_half((unsigned short)(w >> 16)));
}
template <> __device__ __forceinline__ void unpack16<__half>(const uint4 &u, float *f) {
    unpack_f16x2(u.x, f), unpack_f16x2(u.y, f + 2), unpack_f16x2(u.z, f + 4), unpack_f16x2(u.w, f + 6);
}

template <typename T> __device__ __forceinline__ uint4 pack16(const float *f) {
    return make_uint4(pack2<T>(f[0], f[1]), pack2<T>(f[2], f[3]), pack2<T>(f[4], f[5]), pack2<T>(f[6], f[7]));
}
template <> __device__ __forceinline__ uint4 pack16<float>(const float *f) {
    return make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]), __float_as_uint(f[3]));
}

// E consecutive floats from a 16-byte-aligned address.
template <int E> __device__ __forceinline__ void load_f32(const float *__restrict__ p, float *f) {
#pragma unroll
    for (int k = 0; k < E / 4; ++k) {
        const float4 q = __ldg(reinterpret_cast<const float4 *>(p) + k);
        f[4 * k] = q.x, f[4 * k + 1] = q.y, f[4 * k + 2] = q.z, f[4 * k + 3] = q.w;
    }
}

__device__ __forceinline__ bool aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

// The LayerNorm of one row by a group of L lanes, into registers: buf[NV] (vectors j*L + lane
// below c / E; others zero), mean and 1/sqrt(var + eps). v is 16-byte aligned; `ok` false: the
// row is not read (buf zero), the statistics are still reduced (the shuffles stay uniform).
template <typename T, int L, int NV>
__device__ __forceinline__ void ln_vec_stats(const T *__restrict__ v, bool ok, int c, int lane, float eps,
                                             uint4 (&buf)[NV], float &mean, float &inv) {
    constexpr int E = 16 / sizeof(T);
    const int nvec = c / E;
#pragma unroll
    for (int j = 0; j < NV; ++j) {
        const int i = j * L + lane;
        buf[j] = make_uint4(0u, 0u, 0u, 0u);
        if (ok && i < nvec) buf[j] = __ldg(reinterpret_cast<const uint4 *>(v) + i);
    }
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < NV; ++j) {
        float f[E];
        unpack16<T>(buf[j], f);
#pragma unroll
        for (int k = 0; k < E; ++k) sum += f[k];  // zero vectors add nothing
    }
    mean = group_sum<L>(sum) / (float)c;
    float sq = 0.f;
#pragma unroll
    for (int j = 0; j < NV; ++j) {
        if (j * L + lane < nvec) {
            float f[E];
            unpack16<T>(buf[j], f);
#pragma unroll
            for (int k = 0; k < E; ++k) {
                const float d = f[k] - mean;
                sq += d * d;
            }
        }
    }
    inv = rsqrtf(group_sum<L>(sq) / (float)c + eps);
}

// The same statistics from scalar loads (rows not 16-byte aligned): mean and 1/sqrt(var + eps)
// of row v by a group of L lanes; `ok` false: the row is not read, the reductions still run.
template <typename T, int L>
__device__ __forceinline__ void ln_scalar_stats(const T *__restrict__ v, bool ok, int c, int lane, float eps,
                                                float &mean, float &inv) {
    float sum = 0.f;
    if (ok)
        for (int i = lane; i < c; i += L) sum += to_f32(v[i]);
    mean = group_sum<L>(sum) / (float)c;
    float sq = 0.f;
    if (ok)
        for (int i = lane; i < c; i += L) {
            const float d = to_f32(v[i]) - mean;
            sq += d * d;
        }
    inv = rsqrtf(group_sum<L>(sq) / (float)c + eps);
}

template <typename T, int L, int NV>
__device__ __forceinline__ void layer_norm_modulate_vec(const T *__restrict__ x, const float *__restrict__ affine,
                                                        const float *__restrict__ modulation,
                                                        const uint32_t *__restrict__ offsets, T *__restrict__ out,
                                                        int rows, int c, int samples, float eps) {
    constexpr int E = 16 / sizeof(T);
    const int g = threadIdx.x / L, lane = threadIdx.x % L;
    const int row0 = blockIdx.x * (256 / L) + g;
    const bool live = row0 < rows;
    const int row = live ? row0 : rows - 1;
    int s = 0;
    while (s + 1 < samples && (int)offsets[s + 1] <= row) ++s;
    const T *v = x + (size_t)row * c;
    const float *shift = modulation + (size_t)s * 2 * c;
    const float *scale = shift + c;
    T *o = out + (size_t)row * c;
    if (!(aligned16(x) && aligned16(out) && aligned16(affine) && aligned16(modulation))) {
        // Scalar fallback (same for the whole grid).
        float mean, inv;
        ln_scalar_stats<T, L>(v, true, c, lane, eps, mean, inv);
        if (!live) return;
        for (int i = lane; i < c; i += L) {
            const float n = (to_f32(v[i]) - mean) * inv * affine[i] + affine[c + i];
            o[i] = store<T>(n * (1.f + scale[i]) + shift[i]);
        }
        return;
    }
    uint4 buf[NV];
    float mean, inv;
    ln_vec_stats<T, L, NV>(v, true, c, lane, eps, buf, mean, inv);
    if (!live) return;
    const int nvec = c / E;
#pragma unroll
    for (int j = 0; j < NV; ++j) {
        const int i = j * L + lane;
        if (i < nvec) {
            float f[E], w[E], b[E], sc[E], sh[E];
            unpack16<T>(buf[j], f);
            load_f32<E>(affine + i * E, w);
            load_f32<E>(affine + c + i * E, b);
            load_f32<E>(scale + i * E, sc);
            load_f32<E>(shift + i * E, sh);
#pragma unroll
            for (int k = 0; k < E; ++k) {
                const float n = (f[k] - mean) * inv * w[k] + b[k];
                f[k] = n * (1.f + sc[k]) + sh[k];
            }
            reinterpret_cast<uint4 *>(o)[i] = pack16<T>(f);
        }
    }
}

template <typename T, int L, int NV>
__device__ __forceinline__ void layer_norm_act_vec(const T *__restrict__ x, const uint32_t *__restrict__ rows_in,
                                                   uint32_t x_rows, const float *__restrict__ affine,
                                                   T *__restrict__ out, int rows, int c, float eps, int act) {
    constexpr int E = 16 / sizeof(T);
    const int g = threadIdx.x / L, lane = threadIdx.x % L;
    const int row0 = blockIdx.x * (256 / L) + g;
    const bool live = row0 < rows;
    const int row = live ? row0 : rows - 1;
    const uint32_t src = rows_in ? rows_in[row] : (uint32_t)row;
    const bool ok = src < x_rows;  // else a NaN row, x not read
    const T *v = x + (size_t)(ok ? src : 0u) * c;
    T *o = out + (size_t)row * c;
    const float nan = __int_as_float(0x7fc00000);
    if (!(aligned16(x) && aligned16(out) && aligned16(affine))) {
        // Scalar fallback (same for the whole grid).
        float mean, inv;
        ln_scalar_stats<T, L>(v, ok, c, lane, eps, mean, inv);
        if (!live) return;
        for (int i = lane; i < c; i += L)
            o[i] = store<T>(ok ? activate((to_f32(v[i]) - mean) * inv * affine[i] + affine[c + i], act) : nan);
        return;
    }
    uint4 buf[NV];
    float mean, inv;
    ln_vec_stats<T, L, NV>(v, ok, c, lane, eps, buf, mean, inv);
    if (!live) return;
    const int nvec = c / E;
#pragma unroll
    for (int j = 0; j < NV; ++j) {
        const int i = j * L + lane;
        if (i < nvec) {
            float f[E], w[E], b[E];
            unpack16<T>(buf[j], f);
            load_f32<E>(affine + i * E, w);
            load_f32<E>(affine + c + i * E, b);
#pragma unroll
            for (int k = 0; k < E; ++k) f[k] = ok ? activate((f[k] - mean) * inv * w[k] + b[k], act) : nan;
            reinterpret_cast<uint4 *>(o)[i] = pack16<T>(f);
        }
    }
}

// rms_norm_rope with D = L·E: L lanes a row, one 16-byte vector (E values, E/2 pairs) a lane.
template <typename T, int L>
__device__ __forceinline__ void rms_norm_rope_vec(const T *__restrict__ x, const float *__restrict__ gamma,
                                                  const float *__restrict__ table, T *__restrict__ out, int rows,
                                                  int heads, int d, int normalize, int x_stride, int table_rows) {
    constexpr int E = 16 / sizeof(T);
    const int g = threadIdx.x / L, lane = threadIdx.x % L;
    const int row0 = blockIdx.x * (256 / L) + g;
    const bool live = row0 < rows;
    const int row = live ? row0 : rows - 1;
    const int t = row / heads, h = row % heads;
    const T *v = x + (size_t)t * x_stride + (size_t)h * d;
    const float *gm = gamma + (size_t)h * d;
    const float *rot = table + (table_rows == 1 ? (size_t)0 : (size_t)t * d);
    T *o = out + (size_t)row * d;
    if (!(aligned16(x) && aligned16(out) && aligned16(gamma) && aligned16(table) && x_stride % E == 0)) {
        // Scalar fallback (same for the whole grid).
        float f = 1.f;
        if (normalize) {
            float sq = 0.f;
            for (int i = lane; i < d; i += L) {
                const float a = to_f32(v[i]);
                sq += a * a;
            }
            f = sqrtf((float)d) / fmaxf(sqrtf(group_sum<L>(sq)), 1e-12f);
        }
        if (!live) return;
        for (int p = lane; p < d / 2; p += L) {
            float y0 = to_f32(v[2 * p]), y1 = to_f32(v[2 * p + 1]);
            if (normalize) {
                y0 = y0 * f * gm[2 * p];
                y1 = y1 * f * gm[2 * p + 1];
            }
            const float cs = rot[2 * p], sn = rot[2 * p + 1];
            o[2 * p] = store<T>(y0 * cs - y1 * sn);
            o[2 * p + 1] = store<T>(y0 * sn + y1 * cs);
        }
        return;
    }
    float y[E], r[E];
    unpack16<T>(__ldg(reinterpret_cast<const uint4 *>(v) + lane), y);
    if (normalize) {
        float sq = 0.f;
#pragma unroll
        for (int k = 0; k < E; ++k) sq += y[k] * y[k];
        const float f = sqrtf((float)d) / fmaxf(sqrtf(group_sum<L>(sq)), 1e-12f);
        float w[E];
        load_f32<E>(gm + lane * E, w);
#pragma unroll
        for (int k = 0; k < E; ++k) y[k] = y[k] * f * w[k];
    }
    if (!live) return;
    load_f32<E>(rot + lane * E, r);
#pragma unroll
    for (int k = 0; k < E; k += 2) {
        const float y0 = y[k], y1 = y[k + 1], cs = r[k], sn = r[k + 1];
        y[k] = y0 * cs - y1 * sn;
        y[k + 1] = y0 * sn + y1 * cs;
    }
    reinterpret_cast<uint4 *>(o)[lane] = pack16<T>(y);
}

#define LN_VEC(NAME, T, L, NV)                                                                         \
    extern "C" __global__ void __launch_bounds__(256)                                                 \
        layer_norm_modulate_v##L##x##NV##_##NAME(const T *x, const float *affine, const float *modulation, \
                                                 const uint32_t *offsets, T *out, int rows, int c,    \
                                                 int samples, float eps) {                            \
        layer_norm_modulate_vec<T, L, NV>(x, affine, modulation, offsets, out, rows, c, samples, eps);  \
    }                                                                                                 \
    extern "C" __global__ void __launch_bounds__(256)                                                 \
        layer_norm_act_v##L##x##NV##_##NAME(const T *x, const uint32_t *rows_in, uint32_t x_rows,      \
                                            const float *affine, T *out, int rows, int c, float eps,   \
                                            int act) {                                                \
        layer_norm_act_vec<T, L, NV>(x, rows_in, x_rows, affine, out, rows, c, eps, act);              \
    }

#define RMS_VEC(NAME, T, L)                                                                            \
    extern "C" __global__ void __launch_bounds__(256)                                                 \
        rms_norm_rope_v##L##_##NAME(const T *x, const float *gamma, const float *table, T *out,        \
                                    int rows, int heads, int d, int normalize, int x_stride,          \
                                    int table_rows) {                                                 \
        rms_norm_rope_vec<T, L>(x, gamma, table, out, rows, heads, d, normalize, x_stride, table_rows); \
    }

// The (L, NV) shapes src/ops/cuda/launch.rs picks from (`norm_vec_shape`), and the L of rms_norm_rope.
#define VEC_ALL(NAME, T)    \
    LN_VEC(NAME, T, 8, 1)   \
    LN_VEC(NAME, T, 16, 1)  \
    LN_VEC(NAME, T, 32, 1)  \
    LN_VEC(NAME, T, 32, 2)  \
    LN_VEC(NAME, T, 32, 4)  \
    LN_VEC(NAME, T, 32, 8)  \
    LN_VEC(NAME, T, 32, 16) \
    RMS_VEC(NAME, T, 4)     \
    RMS_VEC(NAME, T, 8)     \
    RMS_VEC(NAME, T, 16)    \
    RMS_VEC(NAME, T, 32)

VEC_ALL(f32, float)
VEC_ALL(f16, __half)
VEC_ALL(bf16, __nv_bfloat16)

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
