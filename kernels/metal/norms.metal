// The DiT's fused elementwise kernels (references: src/ops/norm_modulate/mod.rs and
// src/ops/rms_norm_rope/mod.rs, whose CPU forwards tests/metal_emu.rs compares them with).
//
// layer_norm_modulate: y = (LN(x) w + b)(1 + scale_s) + shift_s for row r of sample s
//   (offsets[s] <= r < offsets[s+1]); x, y [T][C] in T; w, b [2][C] and modulation [B][2][C]
//   (shift; scale) in float. Two-pass mean and variance in float, as the CPU op.
// rms_norm_rope: y = x / max(|x|, 1e-12) gamma_h sqrt(D) (when normalize), then pairs
//   (y[2i], y[2i+1]) rotated by (cos, sin) = table[t][i]; x, y [T][H][D] in T; gamma [H][D] and
//   table [T][D/2][2] in float, or table [1][D/2][2] (table_rows == 1): one rotation for every
//   token (the identity for a plain RMS norm).
//
// Both: one simdgroup (32 lanes) per row, 4 rows per 128-thread threadgroup; lanes stride over
// the row, so any C and any even D work and reads of a row are coalesced. Row sums use
// simd_sum; there is no threadgroup memory and no barrier (rows are independent). Each element
// is read from device memory once per pass (LayerNorm: 3 passes over a row that stays in cache)
// and written once: memory bound, ~1 read + 1 write of the activations instead of the ~6 (LN +
// modulate) and ~14 (RMS norm + RoPE) of the composed candle ops.
#include <metal_stdlib>
#include "kargs.h"
using namespace metal;

#define NORM_THREADS 128
#define NORM_ROWS 4

template <typename T>
kernel void layer_norm_modulate(
    constant NormModulateArgs& args [[buffer(0)]],
    device const T* x [[buffer(1)]],
    device const float* affine [[buffer(2)]],
    device const float* modulation [[buffer(3)]],
    device const uint* offsets [[buffer(4)]],
    device T* out [[buffer(5)]],
    uint3 tgid [[threadgroup_position_in_grid]],
    uint sgid [[simdgroup_index_in_threadgroup]],
    uint lane [[thread_index_in_simdgroup]])
{
    const uint row = tgid.x * NORM_ROWS + sgid;
    if (row >= args.rows) {
        return; // the whole simdgroup: no collective below is left half-reached
    }
    const uint c = args.channels;
    uint s = 0;
    while (s + 1 < args.samples && offsets[s + 1] <= row) {
        ++s;
    }
    device const T* v = x + ulong(row) * c;
    float sum = 0.0f;
    for (uint i = lane; i < c; i += 32) {
        sum += float(v[i]);
    }
    const float mean = simd_sum(sum) / float(c);
    float sq = 0.0f;
    for (uint i = lane; i < c; i += 32) {
        const float d = float(v[i]) - mean;
        sq += d * d;
    }
    const float inv = rsqrt(simd_sum(sq) / float(c) + args.eps);
    device const float* shift = modulation + ulong(s) * 2 * c;
    device const float* scale = shift + c;
    device T* o = out + ulong(row) * c;
    for (uint i = lane; i < c; i += 32) {
        const float n = (float(v[i]) - mean) * inv * affine[i] + affine[c + i];
        o[i] = T(n * (1.0f + scale[i]) + shift[i]);
    }
}

template <typename T>
kernel void rms_norm_rope(
    constant RmsRopeArgs& args [[buffer(0)]],
    device const T* x [[buffer(1)]],
    device const float* gamma [[buffer(2)]],
    device const float* table [[buffer(3)]],
    device T* out [[buffer(4)]],
    uint3 tgid [[threadgroup_position_in_grid]],
    uint sgid [[simdgroup_index_in_threadgroup]],
    uint lane [[thread_index_in_simdgroup]])
{
    const uint row = tgid.x * NORM_ROWS + sgid;
    if (row >= args.rows) {
        return; // the whole simdgroup
    }
    const uint d = args.head_dim;
    const uint t = row / args.heads;
    const uint h = row % args.heads;
    device const T* v = x + ulong(row) * d;
    float f = 1.0f;
    if (args.normalize != 0) {
        float sq = 0.0f;
        for (uint i = lane; i < d; i += 32) {
            const float a = float(v[i]);
            sq += a * a;
        }
        f = sqrt(float(d)) / max(sqrt(simd_sum(sq)), 1e-12f);
    }
    device const float* g = gamma + ulong(h) * d;
    device const float* rot = table + (args.table_rows == 1 ? 0 : ulong(t) * d);
    device T* o = out + ulong(row) * d;
    for (uint p = lane; p < d / 2; p += 32) {
        float y0 = float(v[2 * p]);
        float y1 = float(v[2 * p + 1]);
        if (args.normalize != 0) {
            y0 = y0 * f * g[2 * p];
            y1 = y1 * f * g[2 * p + 1];
        }
        const float c = rot[2 * p];
        const float s = rot[2 * p + 1];
        o[2 * p] = T(y0 * c - y1 * s);
        o[2 * p + 1] = T(y0 * s + y1 * c);
    }
}

// Names carry the dtype; src/ops/metal/norms_plan.rs builds the same strings.
#define INSTANTIATE_NORMS(tname, T)                                                                \
    template [[host_name("layer_norm_modulate_" #tname)]] kernel void layer_norm_modulate<T>(      \
        constant NormModulateArgs& args [[buffer(0)]],                                             \
        device const T* x [[buffer(1)]],                                                           \
        device const float* affine [[buffer(2)]],                                                  \
        device const float* modulation [[buffer(3)]],                                              \
        device const uint* offsets [[buffer(4)]],                                                  \
        device T* out [[buffer(5)]],                                                               \
        uint3 tgid [[threadgroup_position_in_grid]],                                               \
        uint sgid [[simdgroup_index_in_threadgroup]],                                              \
        uint lane [[thread_index_in_simdgroup]]);                                                  \
    template [[host_name("rms_norm_rope_" #tname)]] kernel void rms_norm_rope<T>(                  \
        constant RmsRopeArgs& args [[buffer(0)]],                                                  \
        device const T* x [[buffer(1)]],                                                           \
        device const float* gamma [[buffer(2)]],                                                   \
        device const float* table [[buffer(3)]],                                                   \
        device T* out [[buffer(4)]],                                                               \
        uint3 tgid [[threadgroup_position_in_grid]],                                               \
        uint sgid [[simdgroup_index_in_threadgroup]],                                              \
        uint lane [[thread_index_in_simdgroup]]);

INSTANTIATE_NORMS(f32, float)
INSTANTIATE_NORMS(f16, half)
#if defined(__HAVE_BFLOAT__)
INSTANTIATE_NORMS(bf16, bfloat)
#endif
