// The 3x3x3 neighbour map of a coordinate set on the GPU (reference: the CPU builder in
// src/ops/neighbour_map/mod.rs, which tests/metal_emu.rs compares with exactly).
//
//   map[i * 27 + k] = row j of the voxel at coords[i] + offset(k) in the same batch item, or ABSENT
//   offset(k) = (k / 9 - 1, k / 3 % 3 - 1, k % 3 - 1) on (x, y, z)
//
// Metal has no 64-bit compare-and-swap, so voxels are hashed by a 32-bit key: batch, x, y, z
// packed with the host's bit widths (NeighbourArgs), at most 31 bits, so EMPTY = 0xffffffff is
// never a key. The table is open addressing with linear probing over `keys` (atomic) and `rows`,
// at most half full. Three dispatches, in order on one command stream:
//   1. neighbour_clear:  keys = EMPTY, status = {EMPTY, 0};
//   2. neighbour_insert: one thread per voxel claims a slot with compare-and-swap; a voxel whose
//                        key is already in the table (a duplicate coordinate) is reported by
//                        atomic_fetch_min of its row into status[0] (which copy loses the race
//                        is up to the scheduler; the host names both rows);
//   3. neighbour_lookup: one thread per (voxel, tap) probes for the neighbour's key and writes
//                        the map entry; status[1] counts existing pairs (one atomic per simdgroup).
// `status` is two words right after the map in the same output buffer (the host reads both back
// with the map). Lookups only read the table, and each dispatch sees the previous one's writes.
// No threadgroup memory; the work per thread is a few probes, so no watchdog split is needed.
#include <metal_stdlib>
#include "kargs.h"
using namespace metal;

#define NBR_THREADS 128
#define NBR_TAPS 27
#define NBR_EMPTY 0xffffffffu

// murmur3's 32-bit finaliser: consecutive z (the low key bits) land far apart.
static inline uint nbr_hash(uint key) {
    key ^= key >> 16;
    key *= 0x85ebca6bu;
    key ^= key >> 13;
    key *= 0xc2b2ae35u;
    key ^= key >> 16;
    return key;
}

static inline uint nbr_key(constant NeighbourArgs& args, uint b, uint x, uint y, uint z) {
    return (((((b << args.bits_x) | x) << args.bits_y) | y) << args.bits_z) | z;
}

// W: the table word (uint); a template only because instantiations carry the host names.
template <typename W>
kernel void neighbour_clear(
    constant NeighbourArgs& args [[buffer(0)]],
    device W* keys [[buffer(1)]],
    device W* status [[buffer(2)]],
    uint3 tgid [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]])
{
    const uint i = tgid.x * NBR_THREADS + tid;
    if (i <= args.capacity_mask) {
        keys[i] = NBR_EMPTY;
    }
    if (i == 0) {
        status[0] = NBR_EMPTY;
        status[1] = 0;
    }
}

template <typename I>
kernel void neighbour_insert(
    constant NeighbourArgs& args [[buffer(0)]],
    device const I* coords [[buffer(1)]],
    device atomic_uint* keys [[buffer(2)]],
    device uint* rows [[buffer(3)]],
    device atomic_uint* status [[buffer(4)]],
    uint3 tgid [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]])
{
    const uint i = tgid.x * NBR_THREADS + tid;
    if (i >= args.n_voxels) {
        return;
    }
    device const I* c = coords + ulong(i) * 4;
    const uint key = nbr_key(args, uint(c[0]), uint(c[1]), uint(c[2]), uint(c[3]));
    uint slot = nbr_hash(key) & args.capacity_mask;
    // The table is at most half full, so an EMPTY slot is always reached.
    while (true) {
        uint expected = NBR_EMPTY;
        if (atomic_compare_exchange_weak_explicit(&keys[slot], &expected, key,
                                                  memory_order_relaxed, memory_order_relaxed)) {
            rows[slot] = i;
            return;
        }
        if (expected == key) {
            atomic_fetch_min_explicit(&status[0], i, memory_order_relaxed);
            return;
        }
        if (expected != NBR_EMPTY) {
            slot = (slot + 1) & args.capacity_mask; // taken by another key: probe on
        }
        // else: a spurious failure of the weak exchange; try the same slot again.
    }
}

template <typename I>
kernel void neighbour_lookup(
    constant NeighbourArgs& args [[buffer(0)]],
    device const I* coords [[buffer(1)]],
    device const uint* keys [[buffer(2)]],
    device const uint* rows [[buffer(3)]],
    device uint* map [[buffer(4)]],
    device atomic_uint* status [[buffer(5)]],
    uint3 tgid [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]],
    uint lane [[thread_index_in_simdgroup]])
{
    const uint e = tgid.x * NBR_THREADS + tid; // the host checks n_voxels * 27 < 2^32
    uint found = 0;
    if (e < args.n_voxels * NBR_TAPS) {
        const uint i = e / NBR_TAPS;
        const uint k = e % NBR_TAPS;
        device const I* c = coords + ulong(i) * 4;
        // Signed, then range-checked: a neighbour outside [0, 2^bits) cannot be a voxel.
        const int x = int(c[1]) + int(k / 9) - 1;
        const int y = int(c[2]) + int(k / 3 % 3) - 1;
        const int z = int(c[3]) + int(k % 3) - 1;
        uint row = NBR_EMPTY;
        if (x >= 0 && y >= 0 && z >= 0 && uint(x) < (1u << args.bits_x) &&
            uint(y) < (1u << args.bits_y) && uint(z) < (1u << args.bits_z)) {
            const uint key = nbr_key(args, uint(c[0]), uint(x), uint(y), uint(z));
            uint slot = nbr_hash(key) & args.capacity_mask;
            while (true) {
                const uint at = keys[slot];
                if (at == key) {
                    row = rows[slot];
                    break;
                }
                if (at == NBR_EMPTY) {
                    break;
                }
                slot = (slot + 1) & args.capacity_mask;
            }
        }
        map[e] = row; // NBR_EMPTY is ABSENT (u32::MAX) as well
        found = row != NBR_EMPTY ? 1 : 0;
    }
    // Every lane takes part in the sum, including those past the end.
    const uint pairs = simd_sum(found);
    if (lane == 0 && pairs > 0) {
        atomic_fetch_add_explicit(&status[1], pairs, memory_order_relaxed);
    }
}

template [[host_name("neighbour_clear_u32")]] kernel void neighbour_clear<uint>(
    constant NeighbourArgs& args [[buffer(0)]],
    device uint* keys [[buffer(1)]],
    device uint* status [[buffer(2)]],
    uint3 tgid [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]]);

template [[host_name("neighbour_insert_i32")]] kernel void neighbour_insert<int>(
    constant NeighbourArgs& args [[buffer(0)]],
    device const int* coords [[buffer(1)]],
    device atomic_uint* keys [[buffer(2)]],
    device uint* rows [[buffer(3)]],
    device atomic_uint* status [[buffer(4)]],
    uint3 tgid [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]]);

template [[host_name("neighbour_lookup_i32")]] kernel void neighbour_lookup<int>(
    constant NeighbourArgs& args [[buffer(0)]],
    device const int* coords [[buffer(1)]],
    device const uint* keys [[buffer(2)]],
    device const uint* rows [[buffer(3)]],
    device uint* map [[buffer(4)]],
    device atomic_uint* status [[buffer(5)]],
    uint3 tgid [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]],
    uint lane [[thread_index_in_simdgroup]]);
