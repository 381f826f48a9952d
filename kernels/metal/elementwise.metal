// Fused elementwise epilogues of the linear layers and residual branches (references:
// src/ops/bias_act/mod.rs and src/ops/gated_residual/mod.rs, whose CPU forwards tests/metal_emu.rs
// compares these with; same f32 arithmetic, one rounding to T).
//
// bias_act: y = act(x + bias) over x, y [T][C] in T, bias [C] in float; act is the identity,
//   tanh-GELU 0.5 v (1 + tanh(sqrt(2/pi) (v + 0.044715 v^3))), SiLU v / (1 + exp(-v)) or exact
//   GELU 0.5 v (1 + erf(v / sqrt(2))) (erf by Abramowitz & Stegun 7.1.26, |error| <= 1.5e-7:
//   MSL has no erf).
// gated_residual: y = x + gate_s r for row t of sample s (offsets[s] <= t < offsets[s+1]);
//   x, r, y [T][C] in T, gate [B][C] in float, offsets [B+1] uint.
// space_to_channel: y[m][s·C + c] = x[slots[8m + s]][c], 0 where the slot is absent or names
//   no row (reference: src/ops/space_to_channel/mod.rs): a copy of 2- or 4-byte words (`_w2`:
//   f16/bf16, `_w4`: f32), so the bits equal the reference's.
//
// One thread per element, or (the `_v4` kernels) per 4 consecutive elements read and written as
// one vector: the host picks those when C is a multiple of 4 and every operand starts on a
// 4-element boundary (so a vector never straddles a row and its loads are aligned). The column
// (and for gated_residual the row's sample) is found once per thread. No threadgroup memory, no
// barriers: one read of each operand and one write, memory bound. A flat 1-D grid of 128-thread
// threadgroups; even the largest epilogue ([15k, 8192]) is a few milliseconds, far from the
// watchdog, so an op is always one dispatch.
#include <metal_stdlib>
#include "kargs.h"
using namespace metal;

#define EW_THREADS 128

// Activation codes of src/ops/vocab.rs (`Activation as u32`).
#define ACT_NONE 0
#define ACT_GELU_TANH 1
#define ACT_SILU 2
#define ACT_GELU_ERF 3

// erf(x) by Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7), odd in x; the CPU reference
// uses candle's erf, the CUDA kernel erff.
inline float erf_as(float x) {
    const float a = abs(x);
    const float t = 1.0f / (1.0f + 0.3275911f * a);
    const float poly =
        ((((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t +
         0.254829592f) * t;
    const float y = 1.0f - poly * exp(-a * a);
    return x < 0.0f ? -y : y;
}

inline float activate(float v, uint act) {
    if (act == ACT_GELU_TANH) {
        // precise::tanh: the fast-math tanh overflows to NaN for large arguments.
        const float inner = 0.7978845608028654f * (v + 0.044715f * v * v * v);
        return 0.5f * v * (1.0f + precise::tanh(inner));
    }
    if (act == ACT_SILU) {
        return v / (1.0f + exp(-v));
    }
    if (act == ACT_GELU_ERF) {
        return 0.5f * v * (1.0f + erf_as(v * 0.7071067811865476f));
    }
    return v;
}

// The sample owning `row`: the last s < samples with offsets[s] <= row (empty samples, whose
// offsets repeat, are skipped past).
inline uint sample_of(device const uint* offsets, uint samples, uint row) {
    uint lo = 0;
    uint hi = samples - 1;
    while (lo < hi) {
        const uint mid = (lo + hi + 1) / 2;
        if (offsets[mid] <= row) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    return lo;
}

template <typename T>
kernel void bias_act(
    constant BiasActArgs& args [[buffer(0)]],
    device const T* x [[buffer(1)]],
    device const float* bias [[buffer(2)]],
    device T* out [[buffer(3)]],
    uint3 tgid [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]])
{
    const ulong gi = ulong(tgid.x) * EW_THREADS + tid;
    if (gi >= args.count) {
        return;
    }
    const uint i = uint(gi); // count is a uint: 32-bit index arithmetic from here
    const uint col = i % args.channels;
    out[i] = T(activate(float(x[i]) + bias[col], args.act));
}

template <typename T>
kernel void bias_act_v4(
    constant BiasActArgs& args [[buffer(0)]],
    device const vec<T, 4>* x [[buffer(1)]],
    device const float4* bias [[buffer(2)]],
    device vec<T, 4>* out [[buffer(3)]],
    uint3 tgid [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]])
{
    const ulong gi = ulong(tgid.x) * EW_THREADS + tid;
    if (gi >= args.count) {
        return;
    }
    const uint i = uint(gi); // count is a uint: 32-bit index arithmetic from here
    const vec<T, 4> v = x[i];
    const float4 b = bias[i % args.channels];
    vec<T, 4> y;
    for (uint k = 0; k < 4; ++k) {
        y[k] = T(activate(float(v[k]) + b[k], args.act));
    }
    out[i] = y;
}

template <typename T>
kernel void gated_residual(
    constant GatedResidualArgs& args [[buffer(0)]],
    device const T* x [[buffer(1)]],
    device const T* r [[buffer(2)]],
    device const float* gate [[buffer(3)]],
    device const uint* offsets [[buffer(4)]],
    device T* out [[buffer(5)]],
    uint3 tgid [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]])
{
    const ulong gi = ulong(tgid.x) * EW_THREADS + tid;
    if (gi >= args.count) {
        return;
    }
    const uint i = uint(gi); // count is a uint: 32-bit index arithmetic from here
    const uint row = i / args.channels;
    const uint col = i % args.channels;
    const uint s = sample_of(offsets, args.samples, row);
    const float g = gate[ulong(s) * args.channels + col];
    out[i] = T(float(x[i]) + g * float(r[i]));
}

template <typename T>
kernel void gated_residual_v4(
    constant GatedResidualArgs& args [[buffer(0)]],
    device const vec<T, 4>* x [[buffer(1)]],
    device const vec<T, 4>* r [[buffer(2)]],
    device const float4* gate [[buffer(3)]],
    device const uint* offsets [[buffer(4)]],
    device vec<T, 4>* out [[buffer(5)]],
    uint3 tgid [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]])
{
    const ulong gi = ulong(tgid.x) * EW_THREADS + tid;
    if (gi >= args.count) {
        return;
    }
    const uint i = uint(gi); // count is a uint: 32-bit index arithmetic from here
    const uint row = i / args.channels;
    const uint col = i % args.channels;
    const uint s = sample_of(offsets, args.samples, row);
    const float4 g = gate[ulong(s) * args.channels + col];
    const vec<T, 4> a = x[i];
    const vec<T, 4> b = r[i];
    vec<T, 4> y;
    for (uint k = 0; k < 4; ++k) {
        y[k] = T(float(a[k]) + g[k] * float(b[k]));
    }
    out[i] = y;
}

template <typename W>
kernel void space_to_channel(
    constant SpaceToChannelArgs& args [[buffer(0)]],
    device const W* x [[buffer(1)]],
    device const uint* slots [[buffer(2)]],
    device W* out [[buffer(3)]],
    uint3 tgid [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]])
{
    const ulong gi = ulong(tgid.x) * EW_THREADS + tid;
    if (gi >= args.count) {
        return;
    }
    const uint i = uint(gi);
    const uint slot = i / args.words;
    const uint w = i % args.words;
    const uint r = slots[slot];
    out[i] = r < args.rows ? x[ulong(r) * args.words + w] : W(0);
}

template [[host_name("space_to_channel_w2")]] kernel void space_to_channel<ushort>(
    constant SpaceToChannelArgs& args [[buffer(0)]],
    device const ushort* x [[buffer(1)]],
    device const uint* slots [[buffer(2)]],
    device ushort* out [[buffer(3)]],
    uint3 tgid [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]]);
template [[host_name("space_to_channel_w4")]] kernel void space_to_channel<uint>(
    constant SpaceToChannelArgs& args [[buffer(0)]],
    device const uint* x [[buffer(1)]],
    device const uint* slots [[buffer(2)]],
    device uint* out [[buffer(3)]],
    uint3 tgid [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]]);

// Names carry the dtype; src/ops/metal/elementwise_plan.rs builds the same strings.
#define INSTANTIATE_ELEMENTWISE(tname, T)                                                          \
    template [[host_name("bias_act_" #tname)]] kernel void bias_act<T>(                            \
        constant BiasActArgs& args [[buffer(0)]],                                                  \
        device const T* x [[buffer(1)]],                                                           \
        device const float* bias [[buffer(2)]],                                                    \
        device T* out [[buffer(3)]],                                                               \
        uint3 tgid [[threadgroup_position_in_grid]],                                               \
        uint tid [[thread_index_in_threadgroup]]);                                                 \
    template [[host_name("bias_act_" #tname "_v4")]] kernel void bias_act_v4<T>(                   \
        constant BiasActArgs& args [[buffer(0)]],                                                  \
        device const vec<T, 4>* x [[buffer(1)]],                                                   \
        device const float4* bias [[buffer(2)]],                                                   \
        device vec<T, 4>* out [[buffer(3)]],                                                       \
        uint3 tgid [[threadgroup_position_in_grid]],                                               \
        uint tid [[thread_index_in_threadgroup]]);                                                 \
    template [[host_name("gated_residual_" #tname)]] kernel void gated_residual<T>(                \
        constant GatedResidualArgs& args [[buffer(0)]],                                            \
        device const T* x [[buffer(1)]],                                                           \
        device const T* r [[buffer(2)]],                                                           \
        device const float* gate [[buffer(3)]],                                                    \
        device const uint* offsets [[buffer(4)]],                                                  \
        device T* out [[buffer(5)]],                                                               \
        uint3 tgid [[threadgroup_position_in_grid]],                                               \
        uint tid [[thread_index_in_threadgroup]]);                                                 \
    template [[host_name("gated_residual_" #tname "_v4")]] kernel void gated_residual_v4<T>(       \
        constant GatedResidualArgs& args [[buffer(0)]],                                            \
        device const vec<T, 4>* x [[buffer(1)]],                                                   \
        device const vec<T, 4>* r [[buffer(2)]],                                                   \
        device const float4* gate [[buffer(3)]],                                                   \
        device const uint* offsets [[buffer(4)]],                                                  \
        device vec<T, 4>* out [[buffer(5)]],                                                       \
        uint3 tgid [[threadgroup_position_in_grid]],                                               \
        uint tid [[thread_index_in_threadgroup]]);

INSTANTIATE_ELEMENTWISE(f32, float)
INSTANTIATE_ELEMENTWISE(f16, half)
#if defined(__HAVE_BFLOAT__)
INSTANTIATE_ELEMENTWISE(bf16, bfloat)
#endif
