// MSL emulator runtime: the scalar/vector types, the cooperative scheduler that runs one
// threadgroup's threads as fibers (fiber_switch.h), and the kernel registry. Free of the MSL qualifier
// macros (those live in msl.h) so the driver can use the standard library freely.
//
// Execution model: a threadgroup's threads are fibers on one OS thread, resumed round-robin; a
// fiber runs until it waits at threadgroup_barrier, simdgroup_barrier or a simd_* collective (or
// returns). A barrier releases when every thread of the group (collective: every lane of the
// simdgroup) has arrived, so missing barriers show up as wrong results and barriers reached by only
// some threads show up as a reported deadlock. Threadgroups run in parallel on a few OS threads.
#pragma once
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

typedef uint32_t uint;
typedef uint16_t ushort;
typedef uint64_t ulong;
typedef uint8_t uchar;

struct alignas(8) uint2 {
    uint x, y;
    uint2() = default;
    constexpr uint2(uint a, uint b) : x(a), y(b) {}
};
struct alignas(16) uint3 {
    uint x, y, z;
    uint3() = default;
    constexpr uint3(uint a, uint b, uint c) : x(a), y(b), z(c) {}
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
// MSL's vec<T, N> (float4 = vec<float, 4>, half4, bfloat4...): storage and element access by
// index only, aligned like MSL (N elements; N = 2 or 4).
template <class T, int N> struct alignas(sizeof(T) * N) vec {
    T e[N];
    T& operator[](uint i) { return e[i]; }
    const T& operator[](uint i) const { return e[i]; }
};
using float4 = vec<float, 4>;

// IEEE binary16 storage type; arithmetic happens in float (the kernels widen on load).
struct half {
    uint16_t bits;
    half() = default;
    half(float f) : bits(from_float(f)) {}
    operator float() const { return to_float(bits); }
    static uint16_t from_float(float f);
    static float to_float(uint16_t h);
};

// bfloat16 storage type (MSL `bfloat`), round to nearest even on conversion.
struct bfloat {
    uint16_t bits;
    bfloat() = default;
    bfloat(float f) {
        uint32_t u;
        std::memcpy(&u, &f, 4);
        if ((u & 0x7fffffffu) > 0x7f800000u) {
            bits = uint16_t((u >> 16) | 0x40); // quiet NaN
        } else {
            bits = uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
        }
    }
    operator float() const {
        uint32_t u = uint32_t(bits) << 16;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    }
};

inline uint16_t half::from_float(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    const uint32_t sign = (u >> 16) & 0x8000u;
    const uint32_t abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) return uint16_t(sign | 0x7e00u); // NaN
    if (abs >= 0x477ff000u) return uint16_t(sign | 0x7c00u); // rounds to >= 65520: inf
    if (abs < 0x38800000u) {                                  // subnormal half (or zero)
        if (abs < 0x33000000u) return uint16_t(sign);          // below half the smallest subnormal
        // value = mant * 2^(e - 150) with the implicit bit; in units of the smallest half
        // subnormal (2^-24) that is mant >> (126 - e), rounded to nearest even below.
        const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
        const uint32_t s = 126 - (abs >> 23);
        const uint32_t q = mant >> s;
        const uint32_t rem = mant & ((1u << s) - 1);
        const uint32_t halfway = 1u << (s - 1);
        uint32_t r = q + ((rem > halfway || (rem == halfway && (q & 1u))) ? 1u : 0u);
        return uint16_t(sign | r);
    }
    // normal: rebias exponent 127 -> 15, round mantissa 23 -> 10 bits to nearest even
    uint32_t h = ((abs - 0x38000000u) >> 13);
    const uint32_t rem = abs & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h += 1;
    return uint16_t(sign | h);
}

inline float half::to_float(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    const uint32_t mant = h & 0x3ffu;
    uint32_t u;
    if (exp == 0x1f) {
        u = sign | 0x7f800000u | (mant << 13);
    } else if (exp != 0) {
        u = sign | ((exp + 112) << 23) | (mant << 13);
    } else if (mant == 0) {
        u = sign;
    } else { // subnormal: mant * 2^-24
        float f = float(mant) * 5.9604644775390625e-8f;
        std::memcpy(&u, &f, 4);
        u |= sign;
    }
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

namespace emu {

// What a kernel sees of one thread: its threadgroup's buffers and its position.
struct Ctx {
    std::vector<unsigned char*> buffers; // argument slots [[buffer(i)]], by index
    std::vector<size_t> buffer_sizes;
    std::vector<unsigned char*> tg_mem; // [[threadgroup(i)]], by index
    uint3 tg_pos, grid_size, tg_size;
    uint tid; // thread_index_in_threadgroup
};

using Launcher = std::function<void(const Ctx&)>;

void register_kernel(const std::string& name, Launcher launcher);
const Launcher* find_kernel(const std::string& name);
std::vector<std::string> kernel_names();

// Collective bookkeeping of one simdgroup; slots are double-buffered by generation parity so the
// lane that completes a collective can enter the next one before slower lanes read the last.
struct SimdState {
    uint arrived = 0;
    uint64_t generation = 0;
    alignas(16) unsigned char slots[2][32][16];
};

// One running threadgroup.
struct Group {
    uint n_threads = 0;
    std::vector<void*> fibers; // saved stack pointer of each parked thread
    std::vector<unsigned char> finished;
    std::vector<const char*> waiting_at; // for the deadlock report
    void* scheduler = nullptr;
    uint current = 0;
    uint tg_arrived = 0;
    uint64_t tg_generation = 0;
    std::vector<SimdState> simd;
    uint64_t progress = 0; // arrivals and completions; a round without any is a deadlock
    Ctx ctx;
};

Group& group();             // the threadgroup running on this OS thread
void yield_to_scheduler();  // park the current fiber

inline uint lane_id() { return group().current % 32; }
inline uint simdgroup_id() { return group().current / 32; }

void threadgroup_barrier_wait();

// Called before every atomic: lets the other threads of the group run up to their next atomic,
// barrier or return (counts as progress, so it is never mistaken for a deadlock).
inline void atomic_yield() {
    group().progress++;
    yield_to_scheduler();
}

// A simd collective: every lane deposits `value`; once all 32 have, each lane gets
// combine(slots, lane).
template <class T, class F>
T simd_collective(const T& value, F combine, const char* what) {
    static_assert(sizeof(T) <= 16, "slot too small");
    Group& g = group();
    SimdState& s = g.simd[simdgroup_id()];
    const uint64_t gen = s.generation;
    const uint lane = lane_id();
    std::memcpy(&s.slots[gen & 1][lane][0], &value, sizeof(T));
    g.progress++;
    if (++s.arrived == 32) {
        s.arrived = 0;
        s.generation++;
    } else {
        g.waiting_at[g.current] = what;
        while (s.generation == gen) yield_to_scheduler();
        g.waiting_at[g.current] = nullptr;
    }
    T all[32];
    for (uint i = 0; i < 32; ++i) std::memcpy(&all[i], &s.slots[gen & 1][i][0], sizeof(T));
    return combine(all, lane);
}

// Binding of one kernel parameter, decided by its [[attribute]] (see translate.rs).
namespace bind {
template <class P> P from_uint3(uint3 v) {
    if constexpr (std::is_same_v<std::decay_t<P>, uint3>) return v;
    else if constexpr (std::is_same_v<std::decay_t<P>, uint2>) return uint2(v.x, v.y);
    else return P(v.x);
}
struct buffer {
    int slot;
    template <class P> P get(const Ctx& c) const {
        unsigned char* p = c.buffers.at(slot);
        if constexpr (std::is_reference_v<P>) {
            if (c.buffer_sizes.at(slot) < sizeof(std::remove_reference_t<P>)) {
                throw std::string("argument struct smaller than the kernel expects at buffer ") +
                    std::to_string(slot);
            }
            return *reinterpret_cast<std::remove_reference_t<P>*>(p);
        } else {
            return reinterpret_cast<P>(p);
        }
    }
};
struct threadgroup_memory {
    int slot;
    template <class P> P get(const Ctx& c) const { return reinterpret_cast<P>(c.tg_mem.at(slot)); }
};
struct threadgroup_position_in_grid {
    template <class P> P get(const Ctx& c) const { return from_uint3<P>(c.tg_pos); }
};
struct threadgroups_per_grid {
    template <class P> P get(const Ctx& c) const { return from_uint3<P>(c.grid_size); }
};
struct threads_per_threadgroup {
    template <class P> P get(const Ctx& c) const { return from_uint3<P>(c.tg_size); }
};
struct thread_position_in_threadgroup {
    template <class P> P get(const Ctx& c) const {
        const uint x = c.tid % c.tg_size.x, y = (c.tid / c.tg_size.x) % c.tg_size.y,
                   z = c.tid / (c.tg_size.x * c.tg_size.y);
        return from_uint3<P>(uint3(x, y, z));
    }
};
struct thread_index_in_threadgroup {
    template <class P> P get(const Ctx& c) const { return P(c.tid); }
};
struct simdgroup_index_in_threadgroup {
    template <class P> P get(const Ctx& c) const { return P(c.tid / 32); }
};
struct thread_index_in_simdgroup {
    template <class P> P get(const Ctx& c) const { return P(c.tid % 32); }
};
} // namespace bind

template <class... P, class... B>
Launcher make_launcher(void (*fn)(P...), B... binds) {
    static_assert(sizeof...(P) == sizeof...(B), "one binding per kernel parameter");
    return [=](const Ctx& c) { fn(binds.template get<P>(c)...); };
}

struct Registration {
    Registration(const char* name, Launcher l) { register_kernel(name, std::move(l)); }
};

} // namespace emu
