// The subset of the Metal Shading Language our kernels use, as C++20 over emu_runtime.h. The
// test harness (translate.rs) force-includes this header when it compiles a translated .metal
// file. Keep kernels inside this subset; anything else fails to compile here.
//
// - address spaces device/constant/threadgroup/thread: no-op qualifiers (constant adds const);
// - threadgroup memory: only as a kernel argument [[threadgroup(i)]], sized by the host, filled
//   with NaN bytes before each threadgroup so reads of never-written memory poison the result;
// - simdgroup_matrix<T, Cols, Rows>: the whole matrix lives in lane 0's copy, and only lane 0
//   loads, multiplies and stores (the other lanes' copies are never read). Valid because MSL
//   requires these calls to be simdgroup-uniform and kernels never see the per-lane layout (there
//   is no thread_elements() here); it also makes the emulator 32x cheaper. A kernel that passes
//   lane-dependent arguments to them is not caught;
// - simd_sum/max/min/prefix-free shuffles and simdgroup_barrier: real rendezvous of 32 lanes;
// - device atomics (atomic_uint: compare_exchange_weak, load, store, fetch_add, fetch_min; relaxed
//   order only) are real std::atomic_ref operations, so threadgroups running on different OS
//   threads race for real. Threads of one threadgroup are fibers on one OS thread: to interleave
//   them too, each atomic first yields to the scheduler, so every thread of the group runs up to
//   its next atomic before any proceeds. What this does not reproduce: a weak compare-exchange
//   never fails spuriously here, and plain (non-atomic) accesses of one threadgroup never race
//   with each other between two yields (on a GPU they can);
// - math: float exp/exp2/log/sqrt/rsqrt/abs/floor/min/max/fma/clamp/tanh and precise::tanh
//   (libm precision, not fast-math);
// - vec<T, N> (float4, half4, bfloat4...): loads, stores and element access by index, nothing
//   else (no vector arithmetic or conversions: kernels convert element by element).
#pragma once
#include "emu_runtime.h"
#include <atomic>
#include <cfloat>
#include <cmath>

#define __HAVE_BFLOAT__ 1

enum class mem_flags : uint { mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4 };
inline mem_flags operator|(mem_flags a, mem_flags b) { return mem_flags(uint(a) | uint(b)); }

namespace metal {

inline float exp(float x) { return std::exp(x); }
inline float tanh(float x) { return std::tanh(x); }
namespace precise {
inline float tanh(float x) { return std::tanh(x); }
} // namespace precise
inline float exp2(float x) { return std::exp2(x); }
inline float log(float x) { return std::log(x); }
inline float sqrt(float x) { return std::sqrt(x); }
inline float rsqrt(float x) { return 1.0f / std::sqrt(x); }
inline float abs(float x) { return std::fabs(x); }
inline float floor(float x) { return std::floor(x); }
inline float fma(float a, float b, float c) { return std::fma(a, b, c); }
template <class T> inline T min(T a, T b) { return b < a ? b : a; }
template <class T> inline T max(T a, T b) { return a < b ? b : a; }
template <class T> inline T clamp(T x, T lo, T hi) { return min(max(x, lo), hi); }

inline void threadgroup_barrier(mem_flags) { emu::threadgroup_barrier_wait(); }
inline void simdgroup_barrier(mem_flags) {
    emu::simd_collective(0, [](const int*, uint) { return 0; }, "simdgroup_barrier");
}

template <class T> T simd_sum(T x) {
    return emu::simd_collective(x, [](const T* v, uint) {
        T s = v[0];
        for (uint i = 1; i < 32; ++i) s += v[i];
        return s;
    }, "simd_sum");
}
template <class T> T simd_max(T x) {
    return emu::simd_collective(x, [](const T* v, uint) {
        T s = v[0];
        for (uint i = 1; i < 32; ++i) s = max(s, v[i]);
        return s;
    }, "simd_max");
}
template <class T> T simd_min(T x) {
    return emu::simd_collective(x, [](const T* v, uint) {
        T s = v[0];
        for (uint i = 1; i < 32; ++i) s = min(s, v[i]);
        return s;
    }, "simd_min");
}
template <class T> T simd_shuffle(T x, ushort src_lane) {
    return emu::simd_collective(x, [src_lane](const T* v, uint) { return v[src_lane % 32]; },
                                "simd_shuffle");
}
template <class T> T simd_shuffle_xor(T x, ushort mask) {
    return emu::simd_collective(x, [mask](const T* v, uint lane) { return v[(lane ^ mask) % 32]; },
                                "simd_shuffle_xor");
}
template <class T> T simd_shuffle_down(T x, ushort delta) {
    return emu::simd_collective(x, [delta](const T* v, uint lane) {
        return lane + delta < 32 ? v[lane + delta] : v[lane];
    }, "simd_shuffle_down");
}
template <class T> T simd_broadcast(T x, ushort src_lane) { return simd_shuffle(x, src_lane); }

// MSL's simdgroup_matrix<T, Cols, Rows>; element (row r, column c) is e[r][c].
template <class T, int Cols, int Rows> struct simdgroup_matrix {
    T e[Rows][Cols];
};
using simdgroup_float8x8 = simdgroup_matrix<float, 8, 8>;

template <class T, int Cols, int Rows>
simdgroup_matrix<T, Cols, Rows> make_filled_simdgroup_matrix(T value) {
    simdgroup_matrix<T, Cols, Rows> m;
    for (int r = 0; r < Rows; ++r)
        for (int c = 0; c < Cols; ++c) m.e[r][c] = value;
    return m;
}

// src is read as a matrix with `elements_per_row` elements per row starting at `origin`
// (x = column, y = row); with `transpose` the loaded matrix is that block's transpose.
template <class T, int Cols, int Rows>
void simdgroup_load(simdgroup_matrix<T, Cols, Rows>& d, const T* src, ulong elements_per_row = Cols,
                    ulong2 origin = ulong2(0, 0), bool transpose = false) {
    if (emu::lane_id() != 0) return;
    const T* base = src + origin.y * elements_per_row + origin.x;
    for (int r = 0; r < Rows; ++r)
        for (int c = 0; c < Cols; ++c)
            d.e[r][c] = transpose ? base[ulong(c) * elements_per_row + r]
                                  : base[ulong(r) * elements_per_row + c];
}

template <class T, int Cols, int Rows>
void simdgroup_store(const simdgroup_matrix<T, Cols, Rows>& m, T* dst,
                     ulong elements_per_row = Cols, ulong2 origin = ulong2(0, 0),
                     bool transpose = false) {
    if (emu::lane_id() != 0) return;
    T* base = dst + origin.y * elements_per_row + origin.x;
    for (int r = 0; r < Rows; ++r)
        for (int c = 0; c < Cols; ++c) {
            if (transpose) base[ulong(c) * elements_per_row + r] = m.e[r][c];
            else base[ulong(r) * elements_per_row + c] = m.e[r][c];
        }
}

// d = a * b + c (d may alias a, b or c).
template <class T, int M, int N, int K>
void simdgroup_multiply_accumulate(simdgroup_matrix<T, N, M>& d, const simdgroup_matrix<T, K, M>& a,
                                   const simdgroup_matrix<T, N, K>& b,
                                   const simdgroup_matrix<T, N, M>& c) {
    if (emu::lane_id() != 0) return;
    simdgroup_matrix<T, N, M> out;
    for (int r = 0; r < M; ++r)
        for (int col = 0; col < N; ++col) {
            T s = c.e[r][col];
            for (int k = 0; k < K; ++k) s += a.e[r][k] * b.e[k][col];
            out.e[r][col] = s;
        }
    d = out;
}

// d = a * b (d may alias a or b).
template <class T, int M, int N, int K>
void simdgroup_multiply(simdgroup_matrix<T, N, M>& d, const simdgroup_matrix<T, K, M>& a,
                        const simdgroup_matrix<T, N, K>& b) {
    simdgroup_multiply_accumulate(d, a, b, make_filled_simdgroup_matrix<T, N, M>(T(0)));
}

enum memory_order { memory_order_relaxed };

// MSL's atomic<uint>; only reachable through the functions below.
struct atomic_uint {
    uint value;
};

inline std::atomic_ref<uint> emu_atomic(atomic_uint* a) {
    emu::atomic_yield();
    return std::atomic_ref<uint>(a->value);
}

inline bool atomic_compare_exchange_weak_explicit(atomic_uint* a, uint* expected, uint desired,
                                                  memory_order, memory_order) {
    return emu_atomic(a).compare_exchange_strong(*expected, desired, std::memory_order_relaxed);
}
inline uint atomic_load_explicit(atomic_uint* a, memory_order) {
    return emu_atomic(a).load(std::memory_order_relaxed);
}
inline void atomic_store_explicit(atomic_uint* a, uint v, memory_order) {
    emu_atomic(a).store(v, std::memory_order_relaxed);
}
inline uint atomic_fetch_add_explicit(atomic_uint* a, uint v, memory_order) {
    return emu_atomic(a).fetch_add(v, std::memory_order_relaxed);
}
inline uint atomic_fetch_min_explicit(atomic_uint* a, uint v, memory_order) {
    std::atomic_ref<uint> r = emu_atomic(a);
    uint old = r.load(std::memory_order_relaxed);
    while (v < old && !r.compare_exchange_weak(old, v, std::memory_order_relaxed)) {
    }
    return old;
}

} // namespace metal

// Address-space qualifiers and the function qualifier. Defined last so the headers above stay
// plain C++.
#define kernel
#define device
#define constant const
#define threadgroup
#define thread
