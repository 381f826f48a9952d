// The subset of the Metal Shading Language our kernels use, as C++20 over emu_runtime.h. The
// test harness (translate.rs) puts this header first in a translated .metal file, which is then
// compiled with -nostdinc: nothing of the C++ standard library or libm is in scope, only the
// names declared here (what MSL's <metal_stdlib> provides). Keep kernels inside this subset;
// anything else fails to compile here, as most of it would on Apple's compiler.
//
// - address spaces: translate.rs rewrites `device`/`constant`/`threadgroup`/`thread` pointers
//   and references into the types below, one per space (ptr<S, T>, in_space<S, T>, tg_ref<T>),
//   with no conversion between spaces and none from a raw pointer except into `thread`; a kernel
//   parameter must be a device/constant pointer or reference at [[buffer(i)]] and a threadgroup
//   pointer at [[threadgroup(i)]]. Like Metal, a pointer or reference without an address space
//   cannot receive any of them. Not modelled: `volatile`, threadgroup references and struct
//   members of threadgroup memory (use element pointers);
// - threadgroup memory: only as a kernel argument [[threadgroup(i)]], sized by the host, filled
//   with NaN bytes before each threadgroup so reads of never-written memory poison the result;
//   every access is bounds-checked and fed to the bank-conflict counter (driver.cpp), by source
//   line (__builtin_LINE at the subscript; `*p` on threadgroup memory counts as one line);
// - half is the compiler's _Float16 (the implicit conversions of an arithmetic type; narrowing
//   in braces is an error through -Werror=narrowing); bfloat exists only when __HAVE_BFLOAT__ is
//   defined (MSL 3.1) and, as in Metal, converts implicitly to float only: float/int -> bfloat and
//   half <-> bfloat need an explicit cast;
// - simdgroup_matrix<T, 8, 8> (T float, half or bfloat, as in Metal): the whole matrix lives in
//   lane 0's copy, and only lane 0 loads, multiplies and stores: MSL requires these calls to be
//   simdgroup-uniform, which the driver checks at the next rendezvous from a fingerprint of
//   every lane's arguments (pointer, stride, origin, transpose; for a multiply the operands'
//   fingerprints). thread_elements() gives each lane its two elements in Apple's layout (lane l:
//   row (l / 4 & 4) + (l / 2 % 4), columns (l / 4 & 2) * 2 + (l % 2) * 2 and the next one, as
//   MLX's steel BaseMMAFrag::get_coord): the first call after lane 0 wrote the matrix copies
//   each lane's pair from lane 0's copy into its own (a rendezvous: all 32 lanes must call it,
//   as they must call the other matrix functions here), and the next load, store or multiply
//   that reads the matrix gathers the pairs back into lane 0's copy (another rendezvous). A
//   multiply may take half or bfloat operands with float accumulators (mixed precision);
// - simd_sum/max/min/prefix sums/shuffles/ballot and simdgroup_barrier: real rendezvous of 32
//   lanes;
// - device atomics (atomic_uint: compare_exchange_weak, load, store, fetch_add, fetch_min;
//   relaxed order only) are real atomic operations, so threadgroups running on different OS
//   threads race for real. Threads of one threadgroup are fibers on one OS thread: to interleave
//   them too, each atomic first yields to the scheduler. Not reproduced: a weak compare-exchange
//   never fails spuriously here, and plain accesses of one threadgroup never race between yields;
// - math: exp/exp2/log/sqrt/rsqrt/tanh... on float and half. With EMU_FAST_MATH (the fast-math
//   build) they model Metal's default fast math: exp via exp2 of x * log2(e), exp2/log/rsqrt/sqrt
//   off by a few ulp (a deterministic pseudo-random offset), tanh through exp (so it overflows to
//   NaN for large arguments), subnormals flushed to zero; the compiler flags add FMA contraction,
//   reassociation and reciprocal division. precise:: always uses the correctly rounded libm;
// - vec<T, N> (float4, half4, bfloat4...): loads, stores and element access by index, nothing
//   else (no vector arithmetic or conversions: kernels convert element by element).
#pragma once
#include "emu_runtime.h"

#if defined(__HAVE_BFLOAT__)
#define __METAL_VERSION__ 310
#else
#define __METAL_VERSION__ 300
#endif

#define FLT_MAX __FLT_MAX__
#define FLT_MIN __FLT_MIN__
#define FLT_EPSILON __FLT_EPSILON__
#define MAXFLOAT __FLT_MAX__
#define INFINITY __builtin_inff()
#define NAN __builtin_nanf("")
#define HALF_MAX 65504.0f
#define M_PI_F 3.14159265358979323846f
#define M_LOG2E_F 1.44269504088896340736f
#define M_SQRT2_F 1.41421356237309504880f

typedef _Float16 half;

namespace emu {

// ---------------------------------------------------------------- type traits (no <type_traits>)
template <class T> struct strip_const { using type = T; };
template <class T> struct strip_const<const T> { using type = T; };
template <class T> using unconst = typename strip_const<T>::type;
template <class A, class B> inline constexpr bool same = __is_same(A, B);
template <class T> inline constexpr bool is_const = !same<T, unconst<T>>;
template <class T> struct strip_ref { using type = T; };
template <class T> struct strip_ref<T&> { using type = T; };
template <class T> using unref = typename strip_ref<T>::type;
template <class T>
inline constexpr bool integral =
    same<unconst<T>, bool> || same<unconst<T>, char> || same<unconst<T>, signed char> ||
    same<unconst<T>, unsigned char> || same<unconst<T>, short> || same<unconst<T>, ushort> ||
    same<unconst<T>, int> || same<unconst<T>, uint> || same<unconst<T>, long> ||
    same<unconst<T>, ulong> || same<unconst<T>, long long> ||
    same<unconst<T>, unsigned long long>;

template <class T> inline ulong bits_of(const T& v) {
    ulong b = 0;
    __builtin_memcpy(&b, &v, sizeof(T) < 8 ? sizeof(T) : 8);
    return b;
}
// 64-bit mix (splitmix64's finaliser) for argument fingerprints.
inline ulong mix(ulong h, ulong v) {
    h ^= v + 0x9e3779b97f4a7c15ul + (h << 6) + (h >> 2);
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ul;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebul;
    return h ^ (h >> 31);
}

// ---------------------------------------------------------------- address spaces
struct device_space { static constexpr Space id = Space::device; };
struct constant_space { static constexpr Space id = Space::constant; };
struct threadgroup_space { static constexpr Space id = Space::threadgroup; };
struct thread_space { static constexpr Space id = Space::thread; };

struct raw_tag {};

template <class S, class T> class ptr;
template <class T> struct tg_ref;

// An object in device, constant or thread memory, seen through a pointer or reference of that
// space. Class types derive from the type (member access works); scalars wrap it. Same size and
// layout as T, so memory of T is viewed as in_space<S, T>. Never constructible from a T, so a
// `cond ? p[i] : 0.0f` has one meaning.
template <class S, class T, bool = __is_class(T)> struct in_space;
template <class S, class T> struct in_space<S, T, true> : T {
    in_space& operator=(const T& v) {
        static_cast<T&>(*this) = v;
        return *this;
    }
    ptr<S, T> operator&() { return ptr<S, T>(raw_tag{}, static_cast<T*>(this)); }
    ptr<S, const T> operator&() const {
        return ptr<S, const T>(raw_tag{}, static_cast<const T*>(this));
    }
};
template <class S, class T> struct in_space<S, T, false> {
    T v;
    operator T() const { return v; }
    in_space& operator=(T x) {
        v = x;
        return *this;
    }
    in_space& operator=(const in_space& o) {
        v = o.v;
        return *this;
    }
    template <class U> in_space& operator+=(const U& x) { v += x; return *this; }
    template <class U> in_space& operator-=(const U& x) { v -= x; return *this; }
    template <class U> in_space& operator*=(const U& x) { v *= x; return *this; }
    template <class U> in_space& operator/=(const U& x) { v /= x; return *this; }
    template <class U> in_space& operator%=(const U& x) { v %= x; return *this; }
    template <class U> in_space& operator&=(const U& x) { v &= x; return *this; }
    template <class U> in_space& operator|=(const U& x) { v |= x; return *this; }
    template <class U> in_space& operator^=(const U& x) { v ^= x; return *this; }
    template <class U> in_space& operator<<=(const U& x) { v <<= x; return *this; }
    template <class U> in_space& operator>>=(const U& x) { v >>= x; return *this; }
    in_space& operator++() { ++v; return *this; }
    in_space& operator--() { --v; return *this; }
    T operator++(int) { return v++; }
    T operator--(int) { return v--; }
    ptr<S, T> operator&() { return ptr<S, T>(raw_tag{}, &v); }
    ptr<S, const T> operator&() const { return ptr<S, const T>(raw_tag{}, &v); }
};

// The value type behind an element access (for templates such as simd_sum).
template <class T> struct value_of { using type = T; };
template <class S, class T, bool C> struct value_of<in_space<S, T, C>> { using type = T; };
template <class T> struct value_of<tg_ref<T>> { using type = unconst<T>; };
template <class T> using value_t = typename value_of<unconst<unref<T>>>::type;

template <class T> inline constexpr bool is_vec = false;
// Class types that convert implicitly to float only (bfloat), seen through a threadgroup element.
template <class T> inline constexpr bool float_only = false;

// A subscript: the index, and the source line that wrote it (for the bank-conflict counter).
struct at {
    long i;
    const char* file;
    uint line;
    template <class I>
        requires integral<value_t<I>>
    at(const I& v, const char* f = __builtin_FILE(), uint l = __builtin_LINE())
        : i(long(value_t<I>(v))), file(f), line(l) {}
};

// A pointer into address space S (one of the *_space tags above).
template <class S, class T> class ptr {
  public:
    T* raw = nullptr; // the emulator's view; kernels cannot reach it through MSL syntax

    ptr() = default;
    ptr(decltype(nullptr)) {}
    ptr(raw_tag, T* p) : raw(p) {}
    // The address of a local variable is a thread pointer; nothing else converts from raw.
    template <class U>
        requires same<S, thread_space> && (same<U, T> || same<const U, T>)
    ptr(U* p) : raw(p) {}
    // device float* -> device const float*
    template <class U>
        requires same<const U, T> && (!same<U, T>)
    ptr(const ptr<S, U>& o) : raw(o.raw) {}
    // (threadgroup uint*)(a threadgroup float*): a cast within one address space
    template <class U>
        requires(!same<const U, T>) && (!same<U, T>)
    explicit ptr(const ptr<S, U>& o) : raw((T*)o.raw) {}

    decltype(auto) operator[](at i) const { return element(raw + i.i, i.file, i.line); }
    decltype(auto) operator*() const { return element(raw, "(unary *)", 0); }
    auto operator->() const
        requires(!same<S, threadgroup_space>)
    {
        return __builtin_addressof(element(raw, "", 0));
    }

    template <class I>
        requires integral<value_t<I>>
    friend ptr operator+(const ptr& p, const I& i) {
        return ptr(raw_tag{}, p.raw + long(value_t<I>(i)));
    }
    template <class I>
        requires integral<value_t<I>>
    friend ptr operator+(const I& i, const ptr& p) {
        return ptr(raw_tag{}, p.raw + long(value_t<I>(i)));
    }
    template <class I>
        requires integral<value_t<I>>
    friend ptr operator-(const ptr& p, const I& i) {
        return ptr(raw_tag{}, p.raw - long(value_t<I>(i)));
    }
    friend long operator-(const ptr& a, const ptr& b) { return a.raw - b.raw; }
    template <class I>
        requires integral<value_t<I>>
    ptr& operator+=(const I& i) {
        raw += long(value_t<I>(i));
        return *this;
    }
    template <class I>
        requires integral<value_t<I>>
    ptr& operator-=(const I& i) {
        raw -= long(value_t<I>(i));
        return *this;
    }
    ptr& operator++() { ++raw; return *this; }
    ptr& operator--() { --raw; return *this; }
    ptr operator++(int) { ptr o = *this; ++raw; return o; }
    ptr operator--(int) { ptr o = *this; --raw; return o; }
    friend bool operator==(const ptr& a, const ptr& b) { return a.raw == b.raw; }
    friend bool operator!=(const ptr& a, const ptr& b) { return a.raw != b.raw; }
    friend bool operator<(const ptr& a, const ptr& b) { return a.raw < b.raw; }
    friend bool operator<=(const ptr& a, const ptr& b) { return a.raw <= b.raw; }
    friend bool operator>(const ptr& a, const ptr& b) { return a.raw > b.raw; }
    friend bool operator>=(const ptr& a, const ptr& b) { return a.raw >= b.raw; }
    explicit operator bool() const { return raw != nullptr; }

  private:
    static decltype(auto) element(T* p, const char* file, uint line) {
        if constexpr (same<S, threadgroup_space>) {
            return tg_ref<T>(p, file, line);
        } else if constexpr (is_const<T>) {
            return *reinterpret_cast<const in_space<S, unconst<T>>*>(p);
        } else {
            return *reinterpret_cast<in_space<S, T>*>(p);
        }
    }
};

// An element of threadgroup memory: every read and write is reported to the driver (bounds,
// bank conflicts) with the subscript's source line. A value-like proxy: `a[i] = b[j]` copies the
// value. Scalars, bfloat and vec<T, N> only.
template <class T> struct tg_ref {
    using V = unconst<T>;
    static_assert(!__is_class(V) || is_vec<V> || float_only<V>,
                  "threadgroup memory of struct type is not emulated: use element pointers");
    T* p;
    const char* file;
    uint line;

    tg_ref(T* p_, const char* f, uint l) : p(p_), file(f), line(l) {}
    tg_ref(const tg_ref&) = default;
    V load() const {
        tg_access(p, sizeof(V), file, line);
        return *p;
    }
    operator V() const { return load(); }
    operator float() const
        requires float_only<V>
    {
        return float(load());
    }
    const tg_ref& operator=(const V& x) const
        requires(!is_const<T>)
    {
        tg_access(p, sizeof(V), file, line);
        *p = x;
        return *this;
    }
    const tg_ref& operator=(const tg_ref& o) const
        requires(!is_const<T>)
    {
        return *this = o.load();
    }
    template <class U> const tg_ref& operator+=(const U& x) const { V v = load(); v += x; return *this = v; }
    template <class U> const tg_ref& operator-=(const U& x) const { V v = load(); v -= x; return *this = v; }
    template <class U> const tg_ref& operator*=(const U& x) const { V v = load(); v *= x; return *this = v; }
    template <class U> const tg_ref& operator/=(const U& x) const { V v = load(); v /= x; return *this = v; }
    template <class U> const tg_ref& operator%=(const U& x) const { V v = load(); v %= x; return *this = v; }
    template <class U> const tg_ref& operator&=(const U& x) const { V v = load(); v &= x; return *this = v; }
    template <class U> const tg_ref& operator|=(const U& x) const { V v = load(); v |= x; return *this = v; }
    template <class U> const tg_ref& operator^=(const U& x) const { V v = load(); v ^= x; return *this = v; }
    template <class U> const tg_ref& operator<<=(const U& x) const { V v = load(); v <<= x; return *this = v; }
    template <class U> const tg_ref& operator>>=(const U& x) const { V v = load(); v >>= x; return *this = v; }
    const tg_ref& operator++() const { V v = load(); ++v; return *this = v; }
    const tg_ref& operator--() const { V v = load(); --v; return *this = v; }
    V operator++(int) const { V v = load(); *this = V(v + 1); return v; }
    V operator--(int) const { V v = load(); *this = V(v - 1); return v; }
    ptr<threadgroup_space, T> operator&() const { return ptr<threadgroup_space, T>(raw_tag{}, p); }
    // An element of a threadgroup vector.
    auto operator[](uint k) const
        requires is_vec<V>
    {
        using E = typename V::element;
        if constexpr (is_const<T>) return tg_ref<const E>(&(*p)[k], file, line);
        else return tg_ref<E>(&(*p)[k], file, line);
    }
};

} // namespace emu

// ---------------------------------------------------------------- scalar and vector types
struct alignas(8) uint2 {
    uint x, y;
    uint2() = default;
    constexpr uint2(uint a, uint b) : x(a), y(b) {}
};
struct alignas(16) ulong2 {
    ulong x, y;
    ulong2() = default;
    constexpr ulong2(ulong a, ulong b) : x(a), y(b) {}
};
struct alignas(8) float2 {
    float x, y;
    float2() = default;
    constexpr float2(float a, float b) : x(a), y(b) {}
};

#if defined(__HAVE_BFLOAT__)
// MSL's bfloat (brain float16), round to nearest even. Metal converts it implicitly to float
// only: float -> bfloat and half <-> bfloat take an explicit cast.
struct bfloat {
    ushort bits;
    bfloat() = default;
    explicit bfloat(float f) {
        uint u = __builtin_bit_cast(uint, f);
        if ((u & 0x7fffffffu) > 0x7f800000u) {
            bits = ushort((u >> 16) | 0x40); // quiet NaN
        } else {
            bits = ushort((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
        }
    }
    // Implicitly to float and nothing else (a template, so no other target type can deduce).
    template <class U>
        requires emu::same<U, float>
    operator U() const {
        return __builtin_bit_cast(float, uint(bits) << 16);
    }
    explicit operator half() const { return half(float(*this)); }
};
namespace emu {
template <> inline constexpr bool float_only<bfloat> = true;
}
#endif

// MSL's vec<T, N> (float4 = vec<float, 4>, half4, bfloat4...): storage and element access by
// index only, aligned like MSL (N elements; N = 2 or 4).
template <class T, int N> struct alignas(sizeof(T) * N) vec {
    using element = T;
    T e[N];
    T& operator[](uint i) { return e[i]; }
    const T& operator[](uint i) const { return e[i]; }
};
namespace emu {
template <class T, int N> inline constexpr bool is_vec<vec<T, N>> = true;
}
using float4 = vec<float, 4>;
using half2 = vec<half, 2>;
using half4 = vec<half, 4>;
using uint4 = vec<uint, 4>;
#if defined(__HAVE_BFLOAT__)
using bfloat2 = vec<bfloat, 2>;
using bfloat4 = vec<bfloat, 4>;
#endif

enum class mem_flags : uint { mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4 };
inline mem_flags operator|(mem_flags a, mem_flags b) { return mem_flags(uint(a) | uint(b)); }

// ---------------------------------------------------------------- math
namespace emu {
// A correctly rounded result moved by a deterministic pseudo-random whole number of ulps in
// [-ulps, ulps] (keyed by the argument), with subnormal results flushed to zero: a model of a
// fast-math approximation's error.
inline float fast_approx(float exact, float x, uint ulps) {
    const uint u = __builtin_bit_cast(uint, exact);
    if ((u & 0x7f800000u) == 0x7f800000u) return exact; // inf, NaN
    if ((u & 0x7f800000u) == 0) return 0.0f * exact;     // flushed subnormal (keeps the sign)
    uint h = __builtin_bit_cast(uint, x) * 0x9e3779b1u;
    h ^= h >> 15;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    const int d = int(h % (2 * ulps + 1)) - int(ulps);
    return __builtin_bit_cast(float, uint(int(u) + d));
}
inline float fast_exp2(float x) {
    if (x == __builtin_truncf(x)) return __builtin_exp2f(x); // powers of two stay exact
    return fast_approx(__builtin_exp2f(x), x, 2);
}
} // namespace emu

namespace metal {

namespace precise {
inline float exp(float x) { return __builtin_expf(x); }
inline float exp2(float x) { return __builtin_exp2f(x); }
inline float log(float x) { return __builtin_logf(x); }
inline float log2(float x) { return __builtin_log2f(x); }
inline float sqrt(float x) { return __builtin_sqrtf(x); }
inline float rsqrt(float x) { return float(1.0 / __builtin_sqrt(double(x))); }
inline float tanh(float x) { return __builtin_tanhf(x); }
inline float sin(float x) { return __builtin_sinf(x); }
inline float cos(float x) { return __builtin_cosf(x); }
inline float pow(float x, float y) { return __builtin_powf(x, y); }
inline float divide(float x, float y) { return x / y; }
} // namespace precise

namespace fast {
inline float exp2(float x) { return emu::fast_exp2(x); }
inline float exp(float x) { return emu::fast_exp2(x * M_LOG2E_F); }
inline float log(float x) { return emu::fast_approx(__builtin_logf(x), x, 2); }
inline float log2(float x) { return emu::fast_approx(__builtin_log2f(x), x, 2); }
inline float sqrt(float x) { return emu::fast_approx(__builtin_sqrtf(x), x, 1); }
inline float rsqrt(float x) { return emu::fast_approx(precise::rsqrt(x), x, 1); }
// tanh through exp, as fast math computes it: overflows to inf / inf = NaN for large |x|.
inline float tanh(float x) {
    const float e = exp(2.0f * x);
    return (e - 1.0f) / (e + 1.0f);
}
inline float sin(float x) { return emu::fast_approx(__builtin_sinf(x), x, 2); }
inline float cos(float x) { return emu::fast_approx(__builtin_cosf(x), x, 2); }
inline float pow(float x, float y) { return exp2(y * log2(x)); }
inline float divide(float x, float y) { return x * (1.0f / y); }
} // namespace fast

#if defined(EMU_FAST_MATH)
namespace math_mode = fast;
#else
namespace math_mode = precise;
#endif

#define EMU_FLOAT_AND_HALF(name)                                                                   \
    inline float name(float x) { return math_mode::name(x); }                                     \
    inline half name(half x) { return half(math_mode::name(float(x))); }
EMU_FLOAT_AND_HALF(exp)
EMU_FLOAT_AND_HALF(exp2)
EMU_FLOAT_AND_HALF(log)
EMU_FLOAT_AND_HALF(log2)
EMU_FLOAT_AND_HALF(sqrt)
EMU_FLOAT_AND_HALF(rsqrt)
EMU_FLOAT_AND_HALF(tanh)
EMU_FLOAT_AND_HALF(sin)
EMU_FLOAT_AND_HALF(cos)
#undef EMU_FLOAT_AND_HALF
inline float pow(float x, float y) { return math_mode::pow(x, y); }
inline float powr(float x, float y) { return math_mode::pow(x, y); }
inline float divide(float x, float y) { return math_mode::divide(x, y); }

inline float abs(float x) { return __builtin_fabsf(x); }
inline half abs(half x) { return half(__builtin_fabsf(float(x))); }
inline uint popcount(uint x) { return uint(__builtin_popcount(x)); }
inline ulong popcount(ulong x) { return ulong(__builtin_popcountl(x)); }
inline int abs(int x) { return x < 0 ? -x : x; }
inline float fabs(float x) { return __builtin_fabsf(x); }
inline float floor(float x) { return __builtin_floorf(x); }
inline float ceil(float x) { return __builtin_ceilf(x); }
inline float round(float x) { return __builtin_roundf(x); }
inline float rint(float x) { return __builtin_rintf(x); }
inline float trunc(float x) { return __builtin_truncf(x); }
inline float fract(float x) { return x - __builtin_floorf(x); }
inline float fma(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
inline float fmin(float a, float b) { return __builtin_fminf(a, b); }
inline float fmax(float a, float b) { return __builtin_fmaxf(a, b); }
inline float copysign(float a, float b) { return __builtin_copysignf(a, b); }
inline bool isnan(float x) { return __builtin_isnan(x); }
inline bool isinf(float x) { return __builtin_isinf(x); }
inline bool isfinite(float x) { return __builtin_isfinite(x); }
inline bool signbit(float x) { return __builtin_signbit(x); }
inline float saturate(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }

// min/max/clamp per type, as MSL overloads them (mixed types are ambiguous, as in Metal).
#define EMU_MIN_MAX(T)                                                                             \
    inline T min(T a, T b) { return b < a ? b : a; }                                               \
    inline T max(T a, T b) { return a < b ? b : a; }                                               \
    inline T clamp(T x, T lo, T hi) { return min(max(x, lo), hi); }                                \
    inline T select(T a, T b, bool c) { return c ? b : a; }
EMU_MIN_MAX(float)
EMU_MIN_MAX(half)
EMU_MIN_MAX(int)
EMU_MIN_MAX(uint)
EMU_MIN_MAX(short)
EMU_MIN_MAX(ushort)
EMU_MIN_MAX(long)
EMU_MIN_MAX(ulong)
#undef EMU_MIN_MAX

// ---------------------------------------------------------------- barriers and simd collectives
inline void threadgroup_barrier(mem_flags) { emu::threadgroup_barrier_wait(); }
inline void simdgroup_barrier(mem_flags) { emu::simd_exchange(nullptr, 0, nullptr, "simdgroup_barrier"); }

template <class X> emu::value_t<X> simd_sum(const X& x) {
    using T = emu::value_t<X>;
    const T v = x;
    T all[32];
    emu::simd_exchange(&v, sizeof(T), all, "simd_sum");
    T s = all[0];
    for (uint i = 1; i < 32; ++i) s += all[i];
    return s;
}
template <class X> emu::value_t<X> simd_max(const X& x) {
    using T = emu::value_t<X>;
    const T v = x;
    T all[32];
    emu::simd_exchange(&v, sizeof(T), all, "simd_max");
    T s = all[0];
    for (uint i = 1; i < 32; ++i) s = max(s, all[i]);
    return s;
}
template <class X> emu::value_t<X> simd_min(const X& x) {
    using T = emu::value_t<X>;
    const T v = x;
    T all[32];
    emu::simd_exchange(&v, sizeof(T), all, "simd_min");
    T s = all[0];
    for (uint i = 1; i < 32; ++i) s = min(s, all[i]);
    return s;
}
template <class X> emu::value_t<X> simd_shuffle(const X& x, ushort src_lane) {
    using T = emu::value_t<X>;
    const T v = x;
    T all[32];
    emu::simd_exchange(&v, sizeof(T), all, "simd_shuffle");
    return all[src_lane % 32];
}
template <class X> emu::value_t<X> simd_shuffle_xor(const X& x, ushort mask) {
    using T = emu::value_t<X>;
    const T v = x;
    T all[32];
    emu::simd_exchange(&v, sizeof(T), all, "simd_shuffle_xor");
    return all[((emu::thread_index() % 32) ^ mask) % 32];
}
template <class X> emu::value_t<X> simd_shuffle_down(const X& x, ushort delta) {
    using T = emu::value_t<X>;
    const T v = x;
    T all[32];
    emu::simd_exchange(&v, sizeof(T), all, "simd_shuffle_down");
    const uint lane = emu::thread_index() % 32;
    return lane + delta < 32 ? all[lane + delta] : all[lane];
}
template <class X> emu::value_t<X> simd_broadcast(const X& x, ushort src_lane) {
    return simd_shuffle(x, src_lane);
}

// Inclusive/exclusive sums over the lanes up to / before this one.
template <class X> emu::value_t<X> simd_prefix_inclusive_sum(const X& x) {
    using T = emu::value_t<X>;
    const T v = x;
    T all[32];
    emu::simd_exchange(&v, sizeof(T), all, "simd_prefix_inclusive_sum");
    const uint lane = emu::thread_index() % 32;
    T s = all[0];
    for (uint i = 1; i <= lane; ++i) s += all[i];
    return s;
}
template <class X> emu::value_t<X> simd_prefix_exclusive_sum(const X& x) {
    using T = emu::value_t<X>;
    const T v = x;
    T all[32];
    emu::simd_exchange(&v, sizeof(T), all, "simd_prefix_exclusive_sum");
    const uint lane = emu::thread_index() % 32;
    T s = T(0);
    for (uint i = 0; i < lane; ++i) s += all[i];
    return s;
}
// MSL's simd_vote: bit l set where lane l voted true; only an explicit conversion to vote_t.
class simd_vote {
public:
    using vote_t = ulong;
    explicit constexpr simd_vote(vote_t v = 0) : bits(v) {}
    explicit constexpr operator vote_t() const { return bits; }
    bool all() const { return bits == 0xfffffffful; }
    bool any() const { return bits != 0; }

private:
    vote_t bits;
};
inline simd_vote simd_ballot(bool x) {
    const uchar v = x ? 1 : 0;
    uchar all[32];
    emu::simd_exchange(&v, 1, all, "simd_ballot");
    ulong bits = 0;
    for (uint i = 0; i < 32; ++i) bits |= ulong(all[i]) << i;
    return simd_vote(bits);
}

// ---------------------------------------------------------------- simdgroup_matrix
namespace emu_sgm {
// The row and first column of lane `lane`'s two elements of an 8x8 matrix (Apple's layout).
inline uint fragment_row(uint lane) { return (lane / 4 & 4) + (lane / 2 % 4); }
inline uint fragment_col(uint lane) { return (lane / 4 & 2) * 2 + (lane % 2) * 2; }
template <class T> inline constexpr bool matrix_element = emu::same<T, float> || emu::same<T, half>
#if defined(__HAVE_BFLOAT__)
    || emu::same<T, bfloat>
#endif
    ;
} // namespace emu_sgm

// MSL's simdgroup_matrix<T, Cols, Rows>; element (row r, column c) is e[r][c], in lane 0's copy
// unless `distributed` (then in its owner lane's copy, see thread_elements). `fingerprint` says
// how this lane's copy was made; it is the same on every lane of a uniform program.
template <class T, int Cols, int Rows> struct simdgroup_matrix {
    static_assert(Cols == 8 && Rows == 8, "simdgroup_matrix: Metal has 8x8 matrices only");
    static_assert(emu_sgm::matrix_element<T>, "simdgroup_matrix: elements are float, half or bfloat");
    alignas(2 * sizeof(T)) T e[Rows][Cols];
    ulong fingerprint = 0;
    bool distributed = false;

    // This lane's two elements (row fragment_row(lane), columns fragment_col(lane) + 0, 1).
    vec<T, 2>& thread_elements() {
        const uint lane = emu::thread_index() % 32;
        const uint r = emu_sgm::fragment_row(lane), c = emu_sgm::fragment_col(lane);
        if (!distributed) {
            // Lane 0's copy holds the matrix: every lane copies its pair out of it; the second
            // rendezvous keeps lane 0 from changing its copy before every lane has read it.
            const simdgroup_matrix* self = this;
            const simdgroup_matrix* all[32];
            emu::simd_exchange(&self, sizeof(self), all, "thread_elements");
            e[r][c] = all[0]->e[r][c];
            e[r][c + 1] = all[0]->e[r][c + 1];
            emu::simd_exchange(nullptr, 0, nullptr, "thread_elements");
            distributed = true;
            fingerprint = emu::mix(fingerprint, 0x656c656du);
        }
        return *reinterpret_cast<vec<T, 2>*>(&e[r][c]);
    }
};

namespace emu_sgm {
// Before a matrix function reads `m`: if the lanes hold it (thread_elements), gather their
// pairs into lane 0's copy. Every lane takes part (the flag is the same on all of them).
template <class T, int Cols, int Rows> void gather(const simdgroup_matrix<T, Cols, Rows>& cm) {
    if (!cm.distributed) return;
    auto& m = const_cast<simdgroup_matrix<T, Cols, Rows>&>(cm);
    const uint lane = emu::thread_index() % 32;
    const uint r = fragment_row(lane), c = fragment_col(lane);
    const T mine[2] = {m.e[r][c], m.e[r][c + 1]};
    T all[64];
    emu::simd_exchange(mine, sizeof(mine), all, "simdgroup_matrix gather");
    if (lane == 0) {
        for (uint l = 0; l < 32; ++l) {
            m.e[fragment_row(l)][fragment_col(l)] = all[2 * l];
            m.e[fragment_row(l)][fragment_col(l) + 1] = all[2 * l + 1];
        }
    }
    m.distributed = false;
}
} // namespace emu_sgm
using simdgroup_float8x8 = simdgroup_matrix<float, 8, 8>;
using simdgroup_half8x8 = simdgroup_matrix<half, 8, 8>;
#if defined(__HAVE_BFLOAT__)
using simdgroup_bfloat8x8 = simdgroup_matrix<bfloat, 8, 8>;
#endif

template <class T, int Cols, int Rows>
simdgroup_matrix<T, Cols, Rows> make_filled_simdgroup_matrix(T value) {
    simdgroup_matrix<T, Cols, Rows> m;
    for (int r = 0; r < Rows; ++r)
        for (int c = 0; c < Cols; ++c) m.e[r][c] = value;
    m.fingerprint = emu::mix(0x66696c6cul, emu::bits_of(value));
    return m;
}

// src is read as a matrix with `elements_per_row` elements per row starting at `origin`
// (x = column, y = row); with `transpose` the loaded matrix is that block's transpose.
template <class S, class U, class T, int Cols, int Rows>
void simdgroup_load(simdgroup_matrix<T, Cols, Rows>& d, emu::ptr<S, U> src,
                    ulong elements_per_row = Cols, ulong2 origin = ulong2(0, 0),
                    bool transpose = false, const char* file = __builtin_FILE(),
                    uint line = __builtin_LINE()) {
    static_assert(emu::same<emu::unconst<U>, T>, "simdgroup_load: element type mismatch");
    static_assert(!emu::same<S, emu::thread_space>, "simdgroup_load: device or threadgroup memory");
    ulong fp = emu::mix(0x6c6f6164ul, ulong(src.raw));
    fp = emu::mix(fp, elements_per_row);
    fp = emu::mix(fp, origin.x);
    fp = emu::mix(fp, origin.y);
    fp = emu::mix(fp, transpose);
    emu::simd_uniform("simdgroup_load", fp, file, line);
    d.fingerprint = fp;
    d.distributed = false;
    if (emu::thread_index() % 32 != 0) return;
    const U* base = src.raw + origin.y * elements_per_row + origin.x;
    for (int r = 0; r < Rows; ++r)
        for (int c = 0; c < Cols; ++c)
            d.e[r][c] = transpose ? base[ulong(c) * elements_per_row + r]
                                  : base[ulong(r) * elements_per_row + c];
    if constexpr (emu::same<S, emu::threadgroup_space>) {
        emu::tg_matrix_access(base, Rows, Cols, transpose ? 1 : elements_per_row,
                              transpose ? elements_per_row : 1, sizeof(T), file, line);
    }
}

template <class S, class U, class T, int Cols, int Rows>
void simdgroup_store(const simdgroup_matrix<T, Cols, Rows>& m, emu::ptr<S, U> dst,
                     ulong elements_per_row = Cols, ulong2 origin = ulong2(0, 0),
                     bool transpose = false, const char* file = __builtin_FILE(),
                     uint line = __builtin_LINE()) {
    static_assert(emu::same<U, T>, "simdgroup_store: element type mismatch");
    static_assert(!emu::same<S, emu::thread_space>, "simdgroup_store: device or threadgroup memory");
    emu_sgm::gather(m);
    ulong fp = emu::mix(0x73746f7265ul, m.fingerprint);
    fp = emu::mix(fp, ulong(dst.raw));
    fp = emu::mix(fp, elements_per_row);
    fp = emu::mix(fp, origin.x);
    fp = emu::mix(fp, origin.y);
    fp = emu::mix(fp, transpose);
    emu::simd_uniform("simdgroup_store", fp, file, line);
    if (emu::thread_index() % 32 != 0) return;
    T* base = dst.raw + origin.y * elements_per_row + origin.x;
    for (int r = 0; r < Rows; ++r)
        for (int c = 0; c < Cols; ++c) {
            if (transpose) base[ulong(c) * elements_per_row + r] = m.e[r][c];
            else base[ulong(r) * elements_per_row + c] = m.e[r][c];
        }
    if constexpr (emu::same<S, emu::threadgroup_space>) {
        emu::tg_matrix_access(base, Rows, Cols, transpose ? 1 : elements_per_row,
                              transpose ? elements_per_row : 1, sizeof(T), file, line);
    }
}

// d = a * b + c (d may alias a, b or c). As on Apple GPUs, a and b may be half or bfloat with a
// float c and d (mixed precision: the products of two halves or bfloats are exact in float).
template <class T, class A, class B, int M, int N, int K>
void simdgroup_multiply_accumulate(simdgroup_matrix<T, N, M>& d, const simdgroup_matrix<A, K, M>& a,
                                   const simdgroup_matrix<B, N, K>& b,
                                   const simdgroup_matrix<T, N, M>& c,
                                   const char* file = __builtin_FILE(),
                                   uint line = __builtin_LINE()) {
    static_assert((emu::same<A, T> && emu::same<B, T>) || emu::same<T, float>,
                  "simdgroup_multiply_accumulate: mixed operands need a float accumulator");
    emu_sgm::gather(a);
    emu_sgm::gather(b);
    emu_sgm::gather(c);
    ulong fp = emu::mix(0x6d6d61ul, a.fingerprint);
    fp = emu::mix(fp, b.fingerprint);
    fp = emu::mix(fp, c.fingerprint);
    emu::simd_uniform("simdgroup_multiply_accumulate", fp, file, line);
    d.distributed = false;
    if (emu::thread_index() % 32 == 0) {
        simdgroup_matrix<T, N, M> out;
        for (int r = 0; r < M; ++r)
            for (int col = 0; col < N; ++col) {
                T s = c.e[r][col];
                for (int k = 0; k < K; ++k) s += T(a.e[r][k]) * T(b.e[k][col]);
                out.e[r][col] = s;
            }
        for (int r = 0; r < M; ++r)
            for (int col = 0; col < N; ++col) d.e[r][col] = out.e[r][col];
    }
    d.fingerprint = fp;
}

// d = a * b (d may alias a or b).
template <class T, int M, int N, int K>
void simdgroup_multiply(simdgroup_matrix<T, N, M>& d, const simdgroup_matrix<T, K, M>& a,
                        const simdgroup_matrix<T, N, K>& b, const char* file = __builtin_FILE(),
                        uint line = __builtin_LINE()) {
    simdgroup_multiply_accumulate(d, a, b, make_filled_simdgroup_matrix<T, N, M>(T(0)), file, line);
}

// ---------------------------------------------------------------- atomics
enum memory_order { memory_order_relaxed };

// MSL's atomic<T>; only reachable through the functions below.
template <class T> struct atomic {
    T value;
};
using atomic_uint = atomic<uint>;
using atomic_int = atomic<int>;

namespace emu_atomics {
template <class S> inline constexpr bool shared = emu::same<S, emu::device_space> ||
                                                  emu::same<S, emu::threadgroup_space>;
}

template <class S>
    requires emu_atomics::shared<S>
bool atomic_compare_exchange_weak_explicit(emu::ptr<S, atomic_uint> a,
                                           emu::ptr<emu::thread_space, uint> expected,
                                           uint desired, memory_order, memory_order) {
    emu::atomic_yield();
    return __atomic_compare_exchange_n(&a.raw->value, expected.raw, desired, false,
                                       __ATOMIC_RELAXED, __ATOMIC_RELAXED);
}
template <class S>
    requires emu_atomics::shared<S>
uint atomic_load_explicit(emu::ptr<S, atomic_uint> a, memory_order) {
    emu::atomic_yield();
    return __atomic_load_n(&a.raw->value, __ATOMIC_RELAXED);
}
template <class S>
    requires emu_atomics::shared<S>
void atomic_store_explicit(emu::ptr<S, atomic_uint> a, uint v, memory_order) {
    emu::atomic_yield();
    __atomic_store_n(&a.raw->value, v, __ATOMIC_RELAXED);
}
template <class S>
    requires emu_atomics::shared<S>
uint atomic_fetch_add_explicit(emu::ptr<S, atomic_uint> a, uint v, memory_order) {
    emu::atomic_yield();
    return __atomic_fetch_add(&a.raw->value, v, __ATOMIC_RELAXED);
}
template <class S>
    requires emu_atomics::shared<S>
uint atomic_fetch_min_explicit(emu::ptr<S, atomic_uint> a, uint v, memory_order) {
    emu::atomic_yield();
    uint old = __atomic_load_n(&a.raw->value, __ATOMIC_RELAXED);
    while (v < old && !__atomic_compare_exchange_n(&a.raw->value, &old, v, true, __ATOMIC_RELAXED,
                                                   __ATOMIC_RELAXED)) {
    }
    return old;
}

} // namespace metal

// ---------------------------------------------------------------- kernel registration
namespace emu {

template <class P> struct param_traits {
    static constexpr Space space = Space::none;
    static constexpr bool pointer = false, reference = false;
    static constexpr ulong size = sizeof(P), align = alignof(P);
};
template <class S, class T> struct param_traits<ptr<S, T>> {
    static constexpr Space space = S::id;
    static constexpr bool pointer = true, reference = false;
    static constexpr ulong size = sizeof(T), align = alignof(T);
};
template <class S, class T, bool C> struct param_traits<in_space<S, T, C>&> {
    static constexpr Space space = S::id;
    static constexpr bool pointer = false, reference = true;
    static constexpr ulong size = sizeof(T), align = alignof(T);
};
template <class S, class T, bool C> struct param_traits<const in_space<S, T, C>&> {
    static constexpr Space space = S::id;
    static constexpr bool pointer = false, reference = true;
    static constexpr ulong size = sizeof(T), align = alignof(T);
};

template <class P> struct ptr_element;
template <class S, class T> struct ptr_element<ptr<S, T>> { using type = T; };

// Parameter bindings by attribute; translate.rs names one per kernel parameter.
namespace bind {
template <uint Slot> struct buffer {
    static constexpr ParamKind kind = ParamKind::buffer;
    static constexpr uint slot = Slot;
    template <class P> static P get(const Ctx& c) {
        using tr = param_traits<P>;
        static_assert((tr::pointer || tr::reference) &&
                          (tr::space == Space::device || tr::space == Space::constant),
                      "a [[buffer(i)]] kernel parameter must be a device or constant pointer or "
                      "reference (address space qualifier missing or wrong)");
        if constexpr (tr::pointer) {
            using T = typename ptr_element<P>::type;
            return P(raw_tag{}, reinterpret_cast<T*>(c.buffers[Slot]));
        } else {
            return *reinterpret_cast<unref<P>*>(c.buffers[Slot]);
        }
    }
};
template <uint Slot> struct threadgroup_memory {
    static constexpr ParamKind kind = ParamKind::threadgroup;
    static constexpr uint slot = Slot;
    template <class P> static P get(const Ctx& c) {
        using tr = param_traits<P>;
        static_assert(tr::pointer && tr::space == Space::threadgroup,
                      "a [[threadgroup(i)]] kernel parameter must be a threadgroup pointer");
        using T = typename ptr_element<P>::type;
        return P(raw_tag{}, reinterpret_cast<T*>(c.tg_mem[Slot]));
    }
};
template <class P> P from_uint3(uint3 v) {
    static_assert(param_traits<P>::space == Space::none && !param_traits<P>::reference,
                  "a position builtin is a value (uint, ushort, uint2 or uint3)");
    if constexpr (same<unconst<P>, uint3>) return v;
    else if constexpr (same<unconst<P>, uint2>) return uint2(v.x, v.y);
    else return P(v.x);
}
struct builtin {
    static constexpr ParamKind kind = ParamKind::builtin;
    static constexpr uint slot = 0;
};
struct threadgroup_position_in_grid : builtin {
    template <class P> static P get(const Ctx& c) { return from_uint3<P>(c.tg_pos); }
};
struct threadgroups_per_grid : builtin {
    template <class P> static P get(const Ctx& c) { return from_uint3<P>(c.grid_size); }
};
struct threads_per_threadgroup : builtin {
    template <class P> static P get(const Ctx& c) { return from_uint3<P>(c.tg_size); }
};
struct thread_position_in_threadgroup : builtin {
    template <class P> static P get(const Ctx& c) {
        const uint x = c.tid % c.tg_size.x, y = (c.tid / c.tg_size.x) % c.tg_size.y,
                   z = c.tid / (c.tg_size.x * c.tg_size.y);
        return from_uint3<P>(uint3(x, y, z));
    }
};
struct thread_index_in_threadgroup : builtin {
    template <class P> static P get(const Ctx& c) { return from_uint3<P>(uint3(c.tid, 0, 0)); }
};
struct simdgroup_index_in_threadgroup : builtin {
    template <class P> static P get(const Ctx& c) { return from_uint3<P>(uint3(c.tid / 32, 0, 0)); }
};
struct thread_index_in_simdgroup : builtin {
    template <class P> static P get(const Ctx& c) { return from_uint3<P>(uint3(c.tid % 32, 0, 0)); }
};
} // namespace bind

template <auto F, class... B> struct Registration {
    template <class... P> static void call(void (*f)(P...), const Ctx& c) {
        static_assert(sizeof...(P) == sizeof...(B), "one binding per kernel parameter");
        f(B::template get<P>(c)...);
    }
    static void launch(const Ctx& c) { call(F, c); }
    template <class... P> static void describe(void (*)(P...), Param* out, const char* const* text) {
        uint i = 0;
        ((out[i] = Param{B::kind, B::slot, param_traits<P>::space, param_traits<P>::reference,
                         param_traits<P>::size, param_traits<P>::align, text[i]},
          ++i),
         ...);
    }
    Registration(const char* name, const char* const* text) {
        static Param params[sizeof...(B) > 0 ? sizeof...(B) : 1];
        describe(F, params, text);
        register_kernel(name, &launch, params, sizeof...(B));
#if defined(EMU_FAST_MATH)
        set_fast_math();
#endif
    }
};

} // namespace emu

// The function qualifier; address-space qualifiers are rewritten by translate.rs, so one that
// reaches the compiler is a translation bug.
#define kernel
#define device EMU_UNTRANSLATED_ADDRESS_SPACE
#define constant EMU_UNTRANSLATED_ADDRESS_SPACE
#define threadgroup EMU_UNTRANSLATED_ADDRESS_SPACE
#define thread EMU_UNTRANSLATED_ADDRESS_SPACE
