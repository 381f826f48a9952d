// MSL emulator driver: runs the dispatches described in an input file over buffers it holds, and
// writes the buffers back. Linked with one translated .metal file (see translate.rs), which is a
// separate translation unit compiled without the standard library (emu_runtime.h is the
// interface).
//
//   driver run IN OUT STATS   execute IN's dispatches in order, write the final buffers to OUT
//                             and the threadgroup-memory bank statistics to STATS
//   driver list               print the registered kernel names
//   driver layout             print sizeof/offsetof of the kargs.h structs
//
// File format (little endian): IN = u32 n_buffers, {u64 len, bytes}*, u32 n_dispatches,
// {u32 name_len, name, u32 grid[3] (threadgroups), u32 tg[3] (threads), u32 n_slots,
// {u32 slot, u32 kind (0: buffer id u32, 1: inline bytes u64 len + bytes, 2: buffer id u32 +
// u64 byte offset, as setBuffer:offset:, 3: an argument struct: u32 name_len + the Rust type's
// name, u64 len + bytes)}*, u32 n_tg_mem, {u64 len}*}*. OUT = u32 n_buffers, {u64 len, bytes}*.
// STATS = text lines `kernel NAME ACCESSES SUM_WAYS MAX_WAYS` and
// `site NAME FILE LINE ACCESSES SUM_WAYS MAX_WAYS`.
//
// Before a dispatch runs, its bindings are checked against the kernel's parameters (every
// [[buffer(i)]] bound and nothing else; argument structs of the C++ size and, when the host names
// it, the same type; offsets aligned; buffers a whole number of elements) and its threadgroup
// memory against Metal's limits (each length a multiple of 16 bytes, 32 KiB in all).
//
// Bank conflicts: threadgroup memory has 32 banks of 4-byte words. Each simdgroup-wide access
// (the k-th execution of one source line's access by the lanes of one simdgroup between two
// rendezvous, or one simdgroup_matrix load/store) takes as many "ways" as the largest number of
// distinct words that fall in one bank (the same word is a broadcast).
#include "emu_runtime.h"
#include "fiber_switch.h"
#include "../../kernels/metal/kargs.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace emu {

struct KernelEntry {
    Launch launch;
    std::vector<Param> params;
};

static std::map<std::string, KernelEntry>& registry() {
    static std::map<std::string, KernelEntry> r;
    return r;
}
void register_kernel(const char* name, Launch launch, const Param* params, uint n_params) {
    registry()[name] = KernelEntry{launch, std::vector<Param>(params, params + n_params)};
}

static bool g_fast_math = false;
void set_fast_math() { g_fast_math = true; }

[[noreturn]] void fail(const char* message) { throw std::string(message); }

// ---------------------------------------------------------------- statistics

struct Ways {
    uint64_t accesses = 0, sum = 0;
    uint32_t max = 0;
    void add(uint32_t ways) {
        accesses++;
        sum += ways;
        max = std::max(max, ways);
    }
    void merge(const Ways& o) {
        accesses += o.accesses;
        sum += o.sum;
        max = std::max(max, o.max);
    }
};

struct KernelStats {
    Ways all;
    std::map<std::pair<const char*, uint>, Ways> sites; // (file, line); the file is a literal
    void add(const char* file, uint line, uint32_t ways) {
        all.add(ways);
        sites[{file, line}].add(ways);
    }
    void merge(const KernelStats& o) {
        all.merge(o.all);
        for (auto& [k, w] : o.sites) sites[k].merge(w);
    }
};

// The largest number of distinct words in one bank among `words` (sorted and deduplicated here).
static uint32_t ways_of(std::vector<uint64_t>& words) {
    std::sort(words.begin(), words.end());
    words.erase(std::unique(words.begin(), words.end()), words.end());
    uint32_t per_bank[32] = {};
    uint32_t ways = 0;
    for (uint64_t w : words) ways = std::max(ways, ++per_bank[w % 32]);
    return ways;
}

// ---------------------------------------------------------------- per-simdgroup logs

// One lane's threadgroup access: words [word, word + words); words == 0: the lane did not.
struct LaneAccess {
    uint64_t word = 0;
    uint32_t words = 0;
};

// The executions of one source line's threadgroup accesses since the last rendezvous.
struct BankSite {
    const char* file;
    uint line;
    uint32_t count[32] = {};
    std::vector<std::array<LaneAccess, 32>> execs;
    size_t used = 0;
};

// The calls of one simdgroup-uniform operation at one source line since the last rendezvous.
struct UniformSite {
    const char* op;
    const char* file;
    uint line;
    uint32_t count[32] = {};
    std::vector<std::array<uint64_t, 32>> fingerprints;
    std::vector<uint32_t> lanes; // bit mask of the lanes that made each call
    size_t used = 0;
};

struct SimdLog {
    std::vector<BankSite> bank;
    std::vector<UniformSite> uniform;
};

// Collective bookkeeping of one simdgroup; slots are double-buffered by generation parity so the
// lane that completes a collective can enter the next one before slower lanes read the last.
struct SimdState {
    uint arrived = 0;
    uint64_t generation = 0;
    alignas(16) unsigned char slots[2][32][kExchangeBytes];
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
    std::vector<SimdLog> logs;
    uint64_t progress = 0; // arrivals and completions; a round without any is a deadlock
    unsigned char* tg_base = nullptr;
    size_t tg_total = 0;
    KernelStats* stats = nullptr;
    bool flush_subnormals = false;
    Ctx ctx;
};

static thread_local Group* t_group = nullptr;
static thread_local Launch t_launch = nullptr;
static thread_local std::string t_error;

static Group& group() { return *t_group; }

uint thread_index() { return group().current; }

static void yield_to_scheduler() {
    Group& g = group();
    emu_fiber_switch(&g.fibers[g.current], g.scheduler);
}

static std::string base_name(const char* path) {
    const char* slash = std::strrchr(path, '/');
    return slash ? slash + 1 : path;
}

static std::string site_name(const char* file, uint line) {
    return base_name(file) + ":" + std::to_string(line);
}

static void check_bounds(const Group& g, const unsigned char* a, size_t size, const char* file,
                         uint line) {
    if (g.tg_total == 0 || a < g.tg_base || a + size > g.tg_base + g.tg_total) {
        const long off = long(a - g.tg_base);
        throw "threadgroup memory access out of bounds at " + site_name(file, line) + ": bytes " +
            std::to_string(off) + ".." + std::to_string(off + long(size)) + " of " +
            std::to_string(g.tg_total);
    }
}

void tg_access(const void* addr, uint size, const char* file, uint line) {
    Group& g = group();
    const auto* a = static_cast<const unsigned char*>(addr);
    check_bounds(g, a, size, file, line);
    const uint lane = g.current % 32;
    SimdLog& log = g.logs[g.current / 32];
    BankSite* site = nullptr;
    for (auto& s : log.bank) {
        if (s.line == line && (s.file == file || std::strcmp(s.file, file) == 0)) {
            site = &s;
            break;
        }
    }
    if (!site) {
        log.bank.push_back(BankSite{file, line});
        site = &log.bank.back();
    }
    const uint32_t k = site->count[lane]++;
    if (k >= site->used) {
        if (site->execs.size() <= k) site->execs.emplace_back();
        site->used = k + 1;
    }
    const uint64_t off = uint64_t(a - g.tg_base);
    site->execs[k][lane] = LaneAccess{off / 4, uint32_t((off % 4 + size + 3) / 4)};
}

void tg_matrix_access(const void* base, uint rows, uint cols, ulong row_stride, ulong col_stride,
                      uint size, const char* file, uint line) {
    Group& g = group();
    static thread_local std::vector<uint64_t> words;
    words.clear();
    for (uint r = 0; r < rows; ++r)
        for (uint c = 0; c < cols; ++c) {
            const auto* a = static_cast<const unsigned char*>(base) +
                            (r * row_stride + c * col_stride) * size;
            check_bounds(g, a, size, file, line);
            const uint64_t off = uint64_t(a - g.tg_base);
            for (uint64_t w = off / 4; w * 4 < off + size; ++w) words.push_back(w);
        }
    g.stats->add(file, line, ways_of(words));
}

void simd_uniform(const char* op, ulong fingerprint, const char* file, uint line) {
    Group& g = group();
    const uint lane = g.current % 32;
    SimdLog& log = g.logs[g.current / 32];
    UniformSite* site = nullptr;
    for (auto& s : log.uniform) {
        if (s.line == line && s.op == op && (s.file == file || std::strcmp(s.file, file) == 0)) {
            site = &s;
            break;
        }
    }
    if (!site) {
        log.uniform.push_back(UniformSite{op, file, line});
        site = &log.uniform.back();
    }
    const uint32_t k = site->count[lane]++;
    if (k >= site->used) {
        if (site->fingerprints.size() <= k) {
            site->fingerprints.emplace_back();
            site->lanes.push_back(0);
        }
        site->used = k + 1;
    }
    site->fingerprints[k][lane] = fingerprint;
    site->lanes[k] |= 1u << lane;
}

// Settles simdgroup `sg`'s logs at a rendezvous: bank ways into the statistics, and the
// uniformity of its simdgroup_matrix calls. Returns an error message or "".
static std::string settle(Group& g, uint sg) {
    SimdLog& log = g.logs[sg];
    static thread_local std::vector<uint64_t> words;
    for (auto& s : log.bank) {
        for (size_t k = 0; k < s.used; ++k) {
            words.clear();
            for (auto& a : s.execs[k]) {
                for (uint32_t w = 0; w < a.words; ++w) words.push_back(a.word + w);
                a = LaneAccess{};
            }
            g.stats->add(s.file, s.line, ways_of(words));
        }
        s.used = 0;
        std::fill(std::begin(s.count), std::end(s.count), 0);
    }
    std::string error;
    for (auto& s : log.uniform) {
        for (size_t k = 0; k < s.used && error.empty(); ++k) {
            const std::string what = std::string(s.op) + " at " + site_name(s.file, s.line) +
                                     " (simdgroup " + std::to_string(sg) + ", call " +
                                     std::to_string(k + 1) + " since the last rendezvous)";
            if (s.lanes[k] != 0xffffffffu) {
                error = what + ": made by " + std::to_string(__builtin_popcount(s.lanes[k])) +
                        " of the 32 lanes; simdgroup_matrix operations must be reached by the "
                        "whole simdgroup";
                break;
            }
            for (uint lane = 1; lane < 32; ++lane) {
                if (s.fingerprints[k][lane] != s.fingerprints[k][0]) {
                    error = what + ": lane " + std::to_string(lane) +
                            "'s arguments differ from lane 0's; the pointer, stride, origin, "
                            "transpose and matrices of simdgroup_matrix operations must be "
                            "simdgroup-uniform";
                    break;
                }
            }
        }
        for (size_t k = 0; k < s.used; ++k) s.lanes[k] = 0;
        s.used = 0;
        std::fill(std::begin(s.count), std::end(s.count), 0);
    }
    return error;
}

static std::string settle_all(Group& g) {
    std::string error;
    for (uint sg = 0; sg < g.logs.size(); ++sg) {
        std::string e = settle(g, sg);
        if (error.empty()) error = e;
    }
    return error;
}

void threadgroup_barrier_wait() {
    Group& g = group();
    const uint64_t gen = g.tg_generation;
    g.progress++;
    if (++g.tg_arrived == g.n_threads) {
        g.tg_arrived = 0;
        g.tg_generation++;
        std::string e = settle_all(g);
        if (!e.empty()) throw e;
    } else {
        g.waiting_at[g.current] = "threadgroup_barrier";
        while (g.tg_generation == gen) yield_to_scheduler();
        g.waiting_at[g.current] = nullptr;
    }
}

void simd_exchange(const void* value, uint size, void* all, const char* what) {
    if (size > kExchangeBytes) fail("simd collective of a value larger than 64 bytes");
    Group& g = group();
    const uint sg = g.current / 32;
    SimdState& s = g.simd[sg];
    const uint64_t gen = s.generation;
    const uint lane = g.current % 32;
    if (size) std::memcpy(&s.slots[gen & 1][lane][0], value, size);
    g.progress++;
    if (++s.arrived == 32) {
        s.arrived = 0;
        s.generation++;
        std::string e = settle(g, sg);
        if (!e.empty()) throw e;
    } else {
        g.waiting_at[g.current] = what;
        while (s.generation == gen) yield_to_scheduler();
        g.waiting_at[g.current] = nullptr;
    }
    auto* out = static_cast<unsigned char*>(all);
    for (uint i = 0; i < 32 && size; ++i) std::memcpy(out + i * size, &s.slots[gen & 1][i][0], size);
}

void atomic_yield() {
    group().progress++;
    yield_to_scheduler();
}

static void fiber_entry() {
    Group& g = group();
    Ctx c = g.ctx;
    c.tid = g.current;
    try {
        t_launch(c);
    } catch (const std::string& e) {
        if (t_error.empty()) t_error = e;
    }
    g.finished[g.current] = 1;
    g.progress++;
    void* dead;
    emu_fiber_switch(&dead, g.scheduler); // never resumed
    __builtin_unreachable();
}

constexpr size_t kStack = 128 * 1024;

// Runs one threadgroup to completion; returns an error message or "". A thread that fails (or
// a deadlock) abandons the group: its other fibers are never resumed.
static std::string run_group(Group& g, std::vector<char>& stacks) {
    const uint n = g.n_threads;
    g.fibers.assign(n, nullptr);
    g.finished.assign(n, 0);
    g.waiting_at.assign(n, nullptr);
    g.simd.assign((n + 31) / 32, SimdState{});
    g.logs.resize((n + 31) / 32);
    g.tg_arrived = 0;
    g.tg_generation = 0;
    if (stacks.size() < n * kStack) stacks.resize(n * kStack);
    for (uint i = 0; i < n; ++i) {
        g.fibers[i] = emu_fiber_init(stacks.data() + i * kStack, kStack, fiber_entry,
                                     g.flush_subnormals);
    }
    uint remaining = n;
    while (remaining > 0) {
        const uint64_t before = g.progress;
        for (uint i = 0; i < n; ++i) {
            if (g.finished[i]) continue;
            g.current = i;
            emu_fiber_switch(&g.scheduler, g.fibers[i]);
            if (!t_error.empty()) return t_error;
            if (g.finished[i]) remaining--;
        }
        if (remaining > 0 && g.progress == before) {
            std::string msg = "deadlock: a barrier or simd collective was not reached by every "
                              "thread (threadgroup " + std::to_string(g.ctx.tg_pos.x) + "," +
                              std::to_string(g.ctx.tg_pos.y) + "," +
                              std::to_string(g.ctx.tg_pos.z) + "):";
            for (uint i = 0; i < n; ++i) {
                msg += " t" + std::to_string(i) + "=" +
                       (g.finished[i] ? "returned" : (g.waiting_at[i] ? g.waiting_at[i] : "?"));
            }
            return msg;
        }
    }
    return settle_all(g);
}

// ---------------------------------------------------------------- dispatches and bindings

struct Slot {
    uint slot;
    int buffer = -1;
    uint64_t offset = 0; // bytes into the buffer
    std::vector<unsigned char> bytes;
    std::string rust_type; // kind 3: the Rust argument struct's name
};

struct Dispatch {
    std::string name;
    uint grid[3], tg[3];
    std::vector<Slot> slots;
    std::vector<uint64_t> tg_mem;
};

// Metal's limits on threadgroup memory set by the host (setThreadgroupMemoryLength).
constexpr uint64_t kMaxThreadgroupMemory = 32768;
constexpr uint64_t kThreadgroupMemoryGranule = 16;

// "SparseConvArgs" from "constant SparseConvArgs& args".
static std::string declared_type(const std::string& text) {
    const size_t end = text.find_first_of("&*");
    std::string t = text.substr(0, end);
    for (const char* word : {"device ", "constant ", "threadgroup ", "thread ", "const ",
                             "volatile "}) {
        size_t at;
        while ((at = t.find(word)) != std::string::npos) t.erase(at, std::strlen(word));
    }
    while (!t.empty() && t.back() == ' ') t.pop_back();
    while (!t.empty() && t.front() == ' ') t.erase(0, 1);
    return t;
}

static std::string describe(const Param& p) {
    return std::string("[[") + (p.kind == ParamKind::buffer ? "buffer(" : "threadgroup(") +
           std::to_string(p.slot) + ")]] `" + p.text + "`";
}

// The host's bindings against the kernel's parameters; returns an error message or "".
static std::string check_bindings(const Dispatch& d, const KernelEntry& k,
                                  const std::vector<std::vector<unsigned char>>& bufs) {
    std::vector<const Slot*> bound(kMaxSlots, nullptr);
    for (auto& s : d.slots) {
        if (s.slot >= kMaxSlots) return "buffer index " + std::to_string(s.slot) + " >= 31";
        if (bound[s.slot]) return "buffer(" + std::to_string(s.slot) + ") bound twice";
        bound[s.slot] = &s;
    }
    std::vector<bool> declared(kMaxSlots, false), declared_tg(kMaxSlots, false);
    for (const Param& p : k.params) {
        if (p.kind == ParamKind::threadgroup) {
            declared_tg[p.slot] = true;
            if (p.slot >= d.tg_mem.size() || d.tg_mem[p.slot] == 0) {
                return describe(p) + ": the host sets no threadgroup memory length for it";
            }
            continue;
        }
        if (p.kind != ParamKind::buffer) continue;
        declared[p.slot] = true;
        const Slot* s = bound[p.slot];
        if (!s) return describe(p) + ": not bound by the host";
        const uint64_t avail = s->buffer >= 0 ? bufs[s->buffer].size() - s->offset : s->bytes.size();
        const bool inline_bytes = s->buffer < 0;
        if (s->offset % p.align != 0) {
            return describe(p) + ": bound at byte offset " + std::to_string(s->offset) +
                   ", not a multiple of its " + std::to_string(p.align) + "-byte alignment";
        }
        if (p.reference) {
            if (inline_bytes ? avail != p.size : avail < p.size) {
                return describe(p) + " is " + std::to_string(p.size) + " bytes; the host binds " +
                       std::to_string(avail);
            }
            if (!s->rust_type.empty() && s->rust_type != declared_type(p.text)) {
                return describe(p) + ": the host binds a `" + s->rust_type + "`";
            }
        } else if (avail % p.size != 0) {
            return describe(p) + ": the host binds " + std::to_string(avail) +
                   " bytes, not a whole number of " + std::to_string(p.size) + "-byte elements";
        }
    }
    for (uint i = 0; i < kMaxSlots; ++i) {
        if (bound[i] && !declared[i]) {
            return "the host binds buffer(" + std::to_string(i) +
                   ") but the kernel has no [[buffer(" + std::to_string(i) + ")]] parameter";
        }
    }
    uint64_t total = 0;
    for (size_t m = 0; m < d.tg_mem.size(); ++m) {
        const uint64_t len = d.tg_mem[m];
        if (len == 0) continue;
        if (m >= kMaxSlots || !declared_tg[m]) {
            return "the host sets threadgroup memory " + std::to_string(m) +
                   " but the kernel has no [[threadgroup(" + std::to_string(m) + ")]] parameter";
        }
        if (len % kThreadgroupMemoryGranule != 0) {
            return "threadgroup memory " + std::to_string(m) + " is " + std::to_string(len) +
                   " bytes, not a multiple of 16 (Metal's granularity)";
        }
        total += len;
    }
    if (total > kMaxThreadgroupMemory) {
        return "threadgroup memory totals " + std::to_string(total) +
               " bytes, above Metal's 32768-byte limit";
    }
    return "";
}

static std::string run_dispatch(const Dispatch& d, std::vector<std::vector<unsigned char>>& bufs,
                                KernelStats& stats) {
    auto it = registry().find(d.name);
    if (it == registry().end()) return "no kernel named " + d.name;
    const KernelEntry& kernel = it->second;
    const uint threads = d.tg[0] * d.tg[1] * d.tg[2];
    if (threads == 0 || threads % 32 != 0 || threads > 1024) {
        return "threadgroup size must be a multiple of 32 up to 1024, got " + std::to_string(threads);
    }
    std::string e = check_bindings(d, kernel, bufs);
    if (!e.empty()) return e;
    Ctx base{};
    std::vector<std::vector<unsigned char>> inline_bytes;
    inline_bytes.reserve(d.slots.size());
    for (auto& s : d.slots) {
        if (s.buffer >= 0) {
            base.buffers[s.slot] = bufs.at(s.buffer).data() + s.offset;
        } else {
            inline_bytes.push_back(s.bytes);
            base.buffers[s.slot] = inline_bytes.back().data();
        }
    }
    // Threadgroup memory: one block, each argument's start rounded up to 16 bytes.
    std::vector<size_t> tg_offsets;
    size_t tg_total = 0;
    for (uint64_t len : d.tg_mem) {
        tg_offsets.push_back(tg_total);
        tg_total += (len + 15) / 16 * 16;
    }
    base.grid_size = uint3(d.grid[0], d.grid[1], d.grid[2]);
    base.tg_size = uint3(d.tg[0], d.tg[1], d.tg[2]);
    const uint64_t n_groups = uint64_t(d.grid[0]) * d.grid[1] * d.grid[2];
    std::atomic<uint64_t> next{0};
    std::mutex mutex;
    std::string first_error;
    auto worker = [&]() {
#if defined(__aarch64__)
        if (g_fast_math) { // FPCR.FZ: flush subnormals (x86 sets it per fiber, fiber_switch.h)
            uint64_t fpcr;
            asm volatile("mrs %0, fpcr" : "=r"(fpcr));
            asm volatile("msr fpcr, %0" : : "r"(fpcr | (uint64_t(1) << 24)));
        }
#endif
        Group g;
        g.n_threads = threads;
        g.flush_subnormals = g_fast_math;
        KernelStats local;
        g.stats = &local;
        std::vector<char> stacks;
        std::vector<unsigned char> tg_mem;
        t_group = &g;
        t_launch = kernel.launch;
        for (uint64_t i; (i = next.fetch_add(1)) < n_groups;) {
            g.ctx = base;
            g.ctx.tg_pos = uint3(uint(i % d.grid[0]), uint((i / d.grid[0]) % d.grid[1]),
                                 uint(i / (uint64_t(d.grid[0]) * d.grid[1])));
            tg_mem.assign(tg_total, 0xff); // NaN bytes: unwritten reads poison
            g.tg_base = tg_mem.data();
            g.tg_total = tg_total;
            for (size_t m = 0; m < d.tg_mem.size() && m < kMaxSlots; ++m) {
                g.ctx.tg_mem[m] = d.tg_mem[m] ? tg_mem.data() + tg_offsets[m] : nullptr;
            }
            t_error.clear();
            std::string err = run_group(g, stacks);
            if (!err.empty()) {
                std::lock_guard<std::mutex> lock(mutex);
                if (first_error.empty()) first_error = err;
                next.store(n_groups);
            }
        }
        t_group = nullptr;
        std::lock_guard<std::mutex> lock(mutex);
        stats.merge(local);
    };
    const uint n_workers = uint(std::min<uint64_t>(
        std::max(1u, std::thread::hardware_concurrency()), std::max<uint64_t>(n_groups, 1)));
    std::vector<std::thread> pool;
    for (uint w = 0; w < n_workers; ++w) pool.emplace_back(worker);
    for (auto& t : pool) t.join();
    return first_error;
}

} // namespace emu

template <class T> static T read_pod(std::istream& in) {
    T v{};
    if (!in.read(reinterpret_cast<char*>(&v), sizeof(T))) throw std::string("truncated input");
    return v;
}
static std::vector<unsigned char> read_bytes(std::istream& in, uint64_t n) {
    std::vector<unsigned char> b(n);
    if (n && !in.read(reinterpret_cast<char*>(b.data()), std::streamsize(n)))
        throw std::string("truncated input");
    return b;
}

static int run(const char* in_path, const char* out_path, const char* stats_path) {
    std::ifstream in(in_path, std::ios::binary);
    std::vector<std::vector<unsigned char>> bufs(read_pod<uint>(in));
    for (auto& b : bufs) b = read_bytes(in, read_pod<uint64_t>(in));
    std::map<std::string, emu::KernelStats> stats;
    const uint n_dispatch = read_pod<uint>(in);
    for (uint i = 0; i < n_dispatch; ++i) {
        emu::Dispatch d;
        auto name = read_bytes(in, read_pod<uint>(in));
        d.name.assign(name.begin(), name.end());
        for (auto& g : d.grid) g = read_pod<uint>(in);
        for (auto& t : d.tg) t = read_pod<uint>(in);
        const uint n_slots = read_pod<uint>(in);
        for (uint s = 0; s < n_slots; ++s) {
            emu::Slot slot;
            slot.slot = read_pod<uint>(in);
            const uint kind = read_pod<uint>(in);
            if (kind == 3) {
                auto type = read_bytes(in, read_pod<uint>(in));
                slot.rust_type.assign(type.begin(), type.end());
            }
            if (kind == 1 || kind == 3) {
                slot.bytes = read_bytes(in, read_pod<uint64_t>(in));
            } else {
                slot.buffer = int(read_pod<uint>(in));
                if (kind == 2) slot.offset = read_pod<uint64_t>(in);
            }
            if (slot.buffer >= int(bufs.size())) throw std::string("buffer id out of range");
            if (slot.buffer >= 0 && slot.offset > bufs[slot.buffer].size())
                throw std::string("buffer offset past the end");
            d.slots.push_back(std::move(slot));
        }
        const uint n_tg = read_pod<uint>(in);
        for (uint m = 0; m < n_tg; ++m) d.tg_mem.push_back(read_pod<uint64_t>(in));
        std::string e = emu::run_dispatch(d, bufs, stats[d.name]);
        if (!e.empty()) throw d.name + ": " + e;
    }
    std::ofstream out(out_path, std::ios::binary);
    const uint n = uint(bufs.size());
    out.write(reinterpret_cast<const char*>(&n), 4);
    for (auto& b : bufs) {
        const uint64_t len = b.size();
        out.write(reinterpret_cast<const char*>(&len), 8);
        out.write(reinterpret_cast<const char*>(b.data()), std::streamsize(len));
    }
    std::ofstream st(stats_path);
    for (auto& [name, s] : stats) {
        st << "kernel " << name << " " << s.all.accesses << " " << s.all.sum << " " << s.all.max
           << "\n";
        std::map<std::pair<std::string, uint>, emu::Ways> sites;
        for (auto& [site, w] : s.sites) sites[{emu::base_name(site.first), site.second}].merge(w);
        for (auto& [site, w] : sites) {
            st << "site " << name << " " << site.first << " " << site.second << " " << w.accesses
               << " " << w.sum << " " << w.max << "\n";
        }
    }
    return out.good() && st.good() ? 0 : 1;
}

#define FIELD(S, f) std::printf(" %s=%zu", #f, offsetof(S, f))
static void layout() {
    std::printf("SparseConvArgs size=%zu", sizeof(SparseConvArgs));
    FIELD(SparseConvArgs, n_voxels); FIELD(SparseConvArgs, ci); FIELD(SparseConvArgs, co);
    FIELD(SparseConvArgs, voxel_tile_base);
    FIELD(SparseConvArgs, vec_loads); FIELD(SparseConvArgs, ordered);
    std::printf("\nAttentionArgs size=%zu", sizeof(AttentionArgs));
    FIELD(AttentionArgs, heads); FIELD(AttentionArgs, tile_base); FIELD(AttentionArgs, n_tiles);
    FIELD(AttentionArgs, scale);
    std::printf("\nDeformIm2ColArgs size=%zu", sizeof(DeformIm2ColArgs));
    FIELD(DeformIm2ColArgs, batch); FIELD(DeformIm2ColArgs, channels);
    FIELD(DeformIm2ColArgs, height); FIELD(DeformIm2ColArgs, width); FIELD(DeformIm2ColArgs, kh);
    FIELD(DeformIm2ColArgs, kw); FIELD(DeformIm2ColArgs, out_h); FIELD(DeformIm2ColArgs, out_w);
    FIELD(DeformIm2ColArgs, offset_groups); FIELD(DeformIm2ColArgs, stride_y);
    FIELD(DeformIm2ColArgs, stride_x); FIELD(DeformIm2ColArgs, pad_y);
    FIELD(DeformIm2ColArgs, pad_x); FIELD(DeformIm2ColArgs, dil_y); FIELD(DeformIm2ColArgs, dil_x);
    FIELD(DeformIm2ColArgs, row_start); FIELD(DeformIm2ColArgs, rows);
    FIELD(DeformIm2ColArgs, first); FIELD(DeformIm2ColArgs, count);
    std::printf("\nNeighbourArgs size=%zu", sizeof(NeighbourArgs));
    FIELD(NeighbourArgs, n_voxels); FIELD(NeighbourArgs, capacity_mask);
    FIELD(NeighbourArgs, bits_x); FIELD(NeighbourArgs, bits_y); FIELD(NeighbourArgs, bits_z);
    std::printf("\nConvOrderArgs size=%zu", sizeof(ConvOrderArgs));
    FIELD(ConvOrderArgs, n); FIELD(ConvOrderArgs, window); FIELD(ConvOrderArgs, shift);
    FIELD(ConvOrderArgs, per_block); FIELD(ConvOrderArgs, blocks);
    FIELD(ConvOrderArgs, identity); FIELD(ConvOrderArgs, hist_len);
    std::printf("\nNormModulateArgs size=%zu", sizeof(NormModulateArgs));
    FIELD(NormModulateArgs, rows); FIELD(NormModulateArgs, channels);
    FIELD(NormModulateArgs, samples); FIELD(NormModulateArgs, eps);
    std::printf("\nRmsRopeArgs size=%zu", sizeof(RmsRopeArgs));
    FIELD(RmsRopeArgs, rows); FIELD(RmsRopeArgs, heads); FIELD(RmsRopeArgs, head_dim);
    FIELD(RmsRopeArgs, normalize); FIELD(RmsRopeArgs, table_rows);
    std::printf("\nBiasActArgs size=%zu", sizeof(BiasActArgs));
    FIELD(BiasActArgs, count); FIELD(BiasActArgs, channels); FIELD(BiasActArgs, act);
    std::printf("\nGatedResidualArgs size=%zu", sizeof(GatedResidualArgs));
    FIELD(GatedResidualArgs, count); FIELD(GatedResidualArgs, channels);
    FIELD(GatedResidualArgs, samples);
    std::printf("\nSpaceToChannelArgs size=%zu", sizeof(SpaceToChannelArgs));
    FIELD(SpaceToChannelArgs, count); FIELD(SpaceToChannelArgs, words);
    FIELD(SpaceToChannelArgs, rows);
    std::printf("\n");
}

int main(int argc, char** argv) {
    try {
        const std::string mode = argc > 1 ? argv[1] : "";
        if (mode == "run" && argc == 5) return run(argv[2], argv[3], argv[4]);
        if (mode == "list") {
            for (auto& [n, _] : emu::registry()) std::printf("%s\n", n.c_str());
            return 0;
        }
        if (mode == "layout") {
            layout();
            return 0;
        }
        std::fprintf(stderr, "usage: driver run IN OUT STATS | list | layout\n");
        return 2;
    } catch (const std::string& e) {
        std::fprintf(stderr, "msl emulator: %s\n", e.c_str());
        return 3;
    }
}
