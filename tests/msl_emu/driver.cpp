// MSL emulator driver: runs the dispatches described in an input file over buffers it holds, and
// writes the buffers back. Linked with one translated .metal file (see translate.rs).
//
//   driver run IN OUT   execute IN's dispatches in order, write the final buffers to OUT
//   driver list         print the registered kernel names
//   driver layout       print sizeof/offsetof of the kargs.h structs
//
// File format (little endian): IN = u32 n_buffers, {u64 len, bytes}*, u32 n_dispatches,
// {u32 name_len, name, u32 grid[3] (threadgroups), u32 tg[3] (threads), u32 n_slots,
// {u32 slot, u32 kind (0: buffer id u32, 1: inline bytes u64 len + bytes, 2: buffer id u32 +
// u64 byte offset, as setBuffer:offset:)}*, u32 n_tg_mem,
// {u64 len}*}*. OUT = u32 n_buffers, {u64 len, bytes}*.
#include "emu_runtime.h"
#include "fiber_switch.h"
#include "../../kernels/metal/kargs.h"

#include <atomic>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <thread>

namespace emu {

static std::map<std::string, Launcher>& registry() {
    static std::map<std::string, Launcher> r;
    return r;
}
void register_kernel(const std::string& name, Launcher launcher) {
    registry()[name] = std::move(launcher);
}
const Launcher* find_kernel(const std::string& name) {
    auto it = registry().find(name);
    return it == registry().end() ? nullptr : &it->second;
}
std::vector<std::string> kernel_names() {
    std::vector<std::string> names;
    for (auto& [n, _] : registry()) names.push_back(n);
    return names;
}

static thread_local Group* t_group = nullptr;
static thread_local const Launcher* t_launcher = nullptr;
static thread_local std::string t_error;

Group& group() { return *t_group; }

void yield_to_scheduler() {
    Group& g = group();
    emu_fiber_switch(&g.fibers[g.current], g.scheduler);
}

void threadgroup_barrier_wait() {
    Group& g = group();
    const uint64_t gen = g.tg_generation;
    g.progress++;
    if (++g.tg_arrived == g.n_threads) {
        g.tg_arrived = 0;
        g.tg_generation++;
    } else {
        g.waiting_at[g.current] = "threadgroup_barrier";
        while (g.tg_generation == gen) yield_to_scheduler();
        g.waiting_at[g.current] = nullptr;
    }
}

static void fiber_entry() {
    Group& g = group();
    Ctx c = g.ctx;
    c.tid = g.current;
    try {
        (*t_launcher)(c);
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

// Runs one threadgroup to completion; returns an error message or "".
static std::string run_group(Group& g, std::vector<char>& stacks) {
    const uint n = g.n_threads;
    g.fibers.assign(n, nullptr);
    g.finished.assign(n, 0);
    g.waiting_at.assign(n, nullptr);
    g.simd.assign((n + 31) / 32, SimdState{});
    g.tg_arrived = 0;
    g.tg_generation = 0;
    if (stacks.size() < n * kStack) stacks.resize(n * kStack);
    for (uint i = 0; i < n; ++i) {
        g.fibers[i] = emu_fiber_init(stacks.data() + i * kStack, kStack, fiber_entry);
    }
    uint remaining = n;
    while (remaining > 0) {
        const uint64_t before = g.progress;
        for (uint i = 0; i < n; ++i) {
            if (g.finished[i]) continue;
            g.current = i;
            emu_fiber_switch(&g.scheduler, g.fibers[i]);
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
    return t_error;
}

struct Slot {
    uint slot;
    int buffer = -1;
    uint64_t offset = 0; // bytes into the buffer
    std::vector<unsigned char> bytes;
};

struct Dispatch {
    std::string name;
    uint grid[3], tg[3];
    std::vector<Slot> slots;
    std::vector<uint64_t> tg_mem;
};

static std::string run_dispatch(const Dispatch& d, std::vector<std::vector<unsigned char>>& bufs) {
    const Launcher* launcher = find_kernel(d.name);
    if (!launcher) return "no kernel named " + d.name;
    const uint threads = d.tg[0] * d.tg[1] * d.tg[2];
    if (threads == 0 || threads % 32 != 0 || threads > 1024) {
        return "threadgroup size must be a multiple of 32 up to 1024, got " + std::to_string(threads);
    }
    Ctx base;
    uint max_slot = 0;
    for (auto& s : d.slots) max_slot = std::max(max_slot, s.slot + 1);
    base.buffers.assign(max_slot, nullptr);
    base.buffer_sizes.assign(max_slot, 0);
    std::vector<std::vector<unsigned char>> inline_bytes;
    inline_bytes.reserve(d.slots.size());
    for (auto& s : d.slots) {
        if (s.buffer >= 0) {
            auto& b = bufs.at(s.buffer);
            base.buffers[s.slot] = b.data() + s.offset;
            base.buffer_sizes[s.slot] = b.size() - s.offset;
        } else {
            inline_bytes.push_back(s.bytes);
            base.buffers[s.slot] = inline_bytes.back().data();
            base.buffer_sizes[s.slot] = s.bytes.size();
        }
    }
    base.grid_size = uint3(d.grid[0], d.grid[1], d.grid[2]);
    base.tg_size = uint3(d.tg[0], d.tg[1], d.tg[2]);
    const uint64_t n_groups = uint64_t(d.grid[0]) * d.grid[1] * d.grid[2];
    std::atomic<uint64_t> next{0};
    std::mutex err_mutex;
    std::string first_error;
    auto worker = [&]() {
        Group g;
        g.n_threads = threads;
        std::vector<char> stacks;
        std::vector<std::vector<unsigned char>> tg_mem(d.tg_mem.size());
        t_group = &g;
        t_launcher = launcher;
        for (uint64_t i; (i = next.fetch_add(1)) < n_groups;) {
            g.ctx = base;
            g.ctx.tg_pos = uint3(uint(i % d.grid[0]), uint((i / d.grid[0]) % d.grid[1]),
                                 uint(i / (uint64_t(d.grid[0]) * d.grid[1])));
            g.ctx.tg_mem.clear();
            for (size_t m = 0; m < d.tg_mem.size(); ++m) {
                tg_mem[m].assign(d.tg_mem[m] + 16, 0xff); // NaN bytes: unwritten reads poison
                g.ctx.tg_mem.push_back(tg_mem[m].data());
            }
            t_error.clear();
            std::string e = run_group(g, stacks);
            if (!e.empty()) {
                std::lock_guard<std::mutex> lock(err_mutex);
                if (first_error.empty()) first_error = e;
                next.store(n_groups);
            }
        }
        t_group = nullptr;
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

static int run(const char* in_path, const char* out_path) {
    std::ifstream in(in_path, std::ios::binary);
    std::vector<std::vector<unsigned char>> bufs(read_pod<uint>(in));
    for (auto& b : bufs) b = read_bytes(in, read_pod<uint64_t>(in));
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
            if (kind == 1) {
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
        std::string e = emu::run_dispatch(d, bufs);
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
    return out.good() ? 0 : 1;
}

#define FIELD(S, f) std::printf(" %s=%zu", #f, offsetof(S, f))
static void layout() {
    std::printf("SparseConvArgs size=%zu", sizeof(SparseConvArgs));
    FIELD(SparseConvArgs, n_voxels); FIELD(SparseConvArgs, ci); FIELD(SparseConvArgs, co);
    FIELD(SparseConvArgs, voxel_tile_base);
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
    std::printf("\n");
}

int main(int argc, char** argv) {
    try {
        const std::string mode = argc > 1 ? argv[1] : "";
        if (mode == "run" && argc == 4) return run(argv[2], argv[3]);
        if (mode == "list") {
            for (auto& n : emu::kernel_names()) std::printf("%s\n", n.c_str());
            return 0;
        }
        if (mode == "layout") {
            layout();
            return 0;
        }
        std::fprintf(stderr, "usage: driver run IN OUT | list | layout\n");
        return 2;
    } catch (const std::string& e) {
        std::fprintf(stderr, "msl emulator: %s\n", e.c_str());
        return 3;
    }
}
