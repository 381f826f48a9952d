// The interface between a translated kernel file and the emulator's driver (driver.cpp). The two
// are separate translation units: the kernel one is compiled with -nostdinc against msl.h only,
// so no std:: or libm name is in scope for kernel code (only what msl.h's metal:: provides); the
// driver uses the C++ standard library freely. This header must therefore include nothing.
//
// Execution model (implemented by driver.cpp): a threadgroup's threads are fibers on one OS
// thread, resumed round-robin; a fiber runs until it waits at threadgroup_barrier,
// simdgroup_barrier or a simd_* collective (or returns). A barrier releases when every thread of
// the group (collective: every lane of the simdgroup) has arrived, so missing barriers show up as
// wrong results and barriers reached by only some threads as a reported deadlock. Threadgroups
// run in parallel on a few OS threads.
#pragma once

typedef unsigned int uint;
typedef unsigned short ushort;
typedef unsigned long ulong; // 64-bit on the LP64 hosts the emulator runs on (as MSL's ulong)
typedef unsigned char uchar;
static_assert(sizeof(ulong) == 8, "the emulator needs an LP64 host");

struct alignas(16) uint3 {
    uint x, y, z;
    uint3() = default;
    constexpr uint3(uint a, uint b, uint c) : x(a), y(b), z(c) {}
};

namespace emu {

// Argument table slots a kernel can have ([[buffer(0..30)]], [[threadgroup(0..30)]]).
constexpr uint kMaxSlots = 31;

// What a kernel sees of one thread: its dispatch's bindings and its position.
struct Ctx {
    unsigned char* buffers[kMaxSlots]; // [[buffer(i)]]
    unsigned char* tg_mem[kMaxSlots];  // [[threadgroup(i)]]
    uint3 tg_pos, grid_size, tg_size;
    uint tid; // thread_index_in_threadgroup
};

// How a kernel parameter is bound, for the driver's binding checks (translate.rs generates one
// per parameter; `size`/`align` are of the pointee or referenced type).
enum class ParamKind : uint { buffer, threadgroup, builtin };
enum class Space : uint { none, device, constant, threadgroup, thread };
struct Param {
    ParamKind kind;
    uint slot;
    Space space;
    bool reference;
    ulong size;
    ulong align;
    const char* text; // the declaration as written, e.g. "constant SparseConvArgs& args"
};

using Launch = void (*)(const Ctx&);
void register_kernel(const char* name, Launch launch, const Param* params, uint n_params);

// The current fiber's index in its threadgroup.
uint thread_index();
// Waits until every thread of the group arrives.
void threadgroup_barrier_wait();
// A simd collective: deposits `size` bytes (at most kExchangeBytes) from `value`, waits for all
// 32 lanes of the simdgroup, then copies every lane's bytes to `all` (32 * size bytes, by lane).
constexpr uint kExchangeBytes = 64;
void simd_exchange(const void* value, uint size, void* all, const char* what);
// Called before every atomic: lets the other threads of the group run up to their next atomic,
// barrier or return.
void atomic_yield();
// Aborts the dispatch with `message` (the run reports it as its error).
[[noreturn]] void fail(const char* message);

// Threadgroup memory accounting (bank conflicts, bounds): one lane's access of `size` bytes at
// `addr` from the source line `file:line`.
void tg_access(const void* addr, uint size, const char* file, uint line);
// A simdgroup-wide access of a simdgroup_matrix load or store: `rows` x `cols` elements of
// `size` bytes, element (r, c) at base + (r * row_stride + c * col_stride) * size. Called by one
// lane for the whole simdgroup.
void tg_matrix_access(const void* base, uint rows, uint cols, ulong row_stride, ulong col_stride,
                      uint size, const char* file, uint line);
// One lane's call of a simdgroup-uniform operation (a simdgroup_matrix load, store or
// multiply): `fingerprint` hashes its arguments. Every lane of the simdgroup must make the same
// calls with the same fingerprints; the driver compares them at the next rendezvous.
void simd_uniform(const char* op, ulong fingerprint, const char* file, uint line);

// Set by a kernel file compiled in fast-math mode (msl.h): the driver flushes subnormals then.
void set_fast_math();

} // namespace emu
