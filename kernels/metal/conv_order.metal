// The sparse conv's voxel order on the GPU: a stable LSD radix sort of the voxel ids by the key
// (window, neighbour mask), window = v / window_size. The CPU reference is the host sort of
// src/ops/conv_order/mod.rs (`sort_by_mask`: within runs of `window` consecutive voxels, sort by
// (mask, voxel)), which tests/metal_emu.rs compares with word for word; kernels/cuda/conv_order.cu
// is the same method with the same plan (src/ops/vocab.rs `conv_sort`), so both backends build one
// order for any window `sparse::conv_order::conv_sort_window` picks.
//
// Dispatches (src/ops/metal/conv_order_plan.rs), in order on one command stream:
// 1. `conv_order_masks`: mask[v] = bit k set where voxel v has neighbour k (27 bits).
// 2. Per pass of 8 key bits, least significant first (4 passes for one window; more when the
//    window id adds bits above the mask):
//    a. `conv_order_histogram`: threadgroup b counts the digits of its contiguous run of
//       `per_block` items → hist[digit · blocks + b] (digit-major: one exclusive scan gives every
//       (digit, block) its first slot in a stable order);
//    b. `conv_order_scan`: one threadgroup scans hist in place (exclusive);
//    c. `conv_order_scatter`: threadgroup b walks its run again in rounds of 256 consecutive
//       items; an item's slot is its block's next slot for the digit, plus the items of that
//       digit in earlier simdgroups of the round, plus its rank among equal digits of earlier
//       lanes of its simdgroup: the pass is stable.
// Metal has no __match_any_sync: a simdgroup finds the lanes sharing a digit from 9 ballots (one
// per digit bit and one of the valid lanes), and lane l counts digits l, l + 32, ..., l + 224 from
// the same ballots, so the per-simdgroup counts are written to threadgroup memory by consecutive
// lanes (1 bank way) instead of scattered by digit, and each lane gets its digit's first slot by
// 8 shuffles rather than a digit-indexed read; every threadgroup access is ≤ 1-way, no
// threadgroup atomics. The items are voxel ids; the key is recomputed from mask[v].
// Integers only: no rounding. Sizes (host-checked): n < 2^31, passes ≤ 7 (27 mask bits + ≤ 32
// window bits, shift < 64). Threadgroup memory: histogram 8 KB, scatter 16 KB (two round
// buffers, so a round needs two barriers, not three), scan 32 bytes. No watchdog split: a pass is
// a few reads and writes per voxel.
#include <metal_stdlib>
#include "kargs.h"
using namespace metal;

#define ORDER_TAPS 27
#define ORDER_ABSENT 0xffffffffu
#define ORDER_MASK_BITS 27
#define ORDER_RADIX 256         // digits of 8 bits
#define ORDER_THREADS 256       // thread t owns digit t in the per-threadgroup tables
#define ORDER_SIMDGROUPS 8      // ORDER_THREADS / 32
#define ORDER_DIGITS_PER_LANE 8 // ORDER_RADIX / 32: lane l counts digits l + 32 j

// mask[v] = bit k set where voxel v has neighbour k, for the map's rows v < n.
template <typename W>
kernel void conv_order_masks(
    constant ConvOrderArgs& args [[buffer(0)]],
    device const W* map [[buffer(1)]],
    device W* mask [[buffer(2)]],
    uint3 tgid [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]])
{
    const uint v = tgid.x * ORDER_THREADS + tid;
    if (v >= args.n) {
        return;
    }
    device const W* p = map + ulong(v) * ORDER_TAPS;
    uint m = 0;
#pragma clang loop unroll(full)
    for (uint k = 0; k < ORDER_TAPS; ++k) {
        m |= (p[k] != ORDER_ABSENT ? 1u : 0u) << k;
    }
    mask[v] = m;
}

// The digit at bit `shift` of voxel v's key ((v / window) << 27 | mask[v]).
static inline uint conv_order_digit(constant ConvOrderArgs& args, device const uint* mask, uint v) {
    const ulong key = (ulong(v / args.window) << ORDER_MASK_BITS) | ulong(mask[v]);
    return uint(key >> args.shift) & (ORDER_RADIX - 1);
}

// One simdgroup's round of 32 items: the lanes sharing this lane's digit (`peers`, valid lanes
// only) and, for j < 8, how many valid lanes hold digit lane + 32 j (`count[j]`).
struct ConvOrderVotes {
    uint peers;
    uint count[ORDER_DIGITS_PER_LANE];
};

static inline ConvOrderVotes conv_order_votes(bool valid, uint d, uint lane) {
    uint bits[8];
    const uint live = uint(ulong(simd_ballot(valid)));
#pragma clang loop unroll(full)
    for (uint b = 0; b < 8; ++b) {
        bits[b] = uint(ulong(simd_ballot(valid && ((d >> b) & 1u) != 0)));
    }
    ConvOrderVotes out;
    out.peers = live;
#pragma clang loop unroll(full)
    for (uint b = 0; b < 8; ++b) {
        out.peers &= ((d >> b) & 1u) != 0 ? bits[b] : ~bits[b];
    }
#pragma clang loop unroll(full)
    for (uint j = 0; j < ORDER_DIGITS_PER_LANE; ++j) {
        const uint digit = lane + 32 * j;
        uint m = live;
#pragma clang loop unroll(full)
        for (uint b = 0; b < 8; ++b) {
            m &= ((digit >> b) & 1u) != 0 ? bits[b] : ~bits[b];
        }
        out.count[j] = popcount(m);
    }
    return out;
}

// hist[d · blocks + b] = items of threadgroup b (positions [b · per_block, min(n, (b + 1) ·
// per_block))) whose digit is d. `args.identity`: item i is voxel i (the first pass; `src` is
// bound but not read).
template <typename W>
kernel void conv_order_histogram(
    constant ConvOrderArgs& args [[buffer(0)]],
    device const W* mask [[buffer(1)]],
    device const W* src [[buffer(2)]],
    device W* hist [[buffer(3)]],
    threadgroup W* counts [[threadgroup(0)]], // [8][256]: per simdgroup and digit
    uint3 tgid [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]],
    uint sgid [[simdgroup_index_in_threadgroup]],
    uint lane [[thread_index_in_simdgroup]])
{
    const uint begin = tgid.x * args.per_block; // < n: the grid is ceil(n / per_block)
    const uint end = min(args.n, begin + args.per_block);
    uint acc[ORDER_DIGITS_PER_LANE];
#pragma clang loop unroll(full)
    for (uint j = 0; j < ORDER_DIGITS_PER_LANE; ++j) {
        acc[j] = 0;
    }
    // Every lane runs the same rounds: the ballots need the whole simdgroup.
    for (uint r = begin; r < end; r += ORDER_THREADS) {
        const uint i = r + tid;
        const bool valid = i < end;
        uint d = 0;
        if (valid) {
            d = conv_order_digit(args, mask, args.identity != 0 ? i : src[i]);
        }
        const ConvOrderVotes votes = conv_order_votes(valid, d, lane);
#pragma clang loop unroll(full)
        for (uint j = 0; j < ORDER_DIGITS_PER_LANE; ++j) {
            acc[j] += votes.count[j];
        }
    }
#pragma clang loop unroll(full)
    for (uint j = 0; j < ORDER_DIGITS_PER_LANE; ++j) {
        counts[sgid * ORDER_RADIX + lane + 32 * j] = acc[j];
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    uint total = 0;
#pragma clang loop unroll(full)
    for (uint w = 0; w < ORDER_SIMDGROUPS; ++w) {
        total += counts[w * ORDER_RADIX + tid];
    }
    hist[ulong(tid) * args.blocks + tgid.x] = total;
}

// hist[0..len) → its exclusive prefix sums, in place; one threadgroup, 4 items a thread a round.
template <typename W>
kernel void conv_order_scan(
    constant ConvOrderArgs& args [[buffer(0)]],
    device W* hist [[buffer(1)]],
    threadgroup W* totals [[threadgroup(0)]], // [8]: this round's simdgroup totals
    uint tid [[thread_index_in_threadgroup]],
    uint sgid [[simdgroup_index_in_threadgroup]],
    uint lane [[thread_index_in_simdgroup]])
{
    const uint len = args.hist_len;
    uint carry = 0; // sum of the earlier rounds
    for (uint base = 0; base < len; base += ORDER_THREADS * 4) {
        const uint i = base + tid * 4;
        uint x[4];
#pragma clang loop unroll(full)
        for (uint e = 0; e < 4; ++e) {
            x[e] = i + e < len ? hist[i + e] : 0;
        }
        const uint local = x[0] + x[1] + x[2] + x[3];
        const uint before_in_simdgroup = simd_prefix_exclusive_sum(local);
        if (lane == 31) {
            totals[sgid] = before_in_simdgroup + local;
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        uint before = 0;
        uint round_total = 0;
#pragma clang loop unroll(full)
        for (uint w = 0; w < ORDER_SIMDGROUPS; ++w) {
            const uint t = totals[w]; // one word for the whole simdgroup: a broadcast
            before += w < sgid ? t : 0;
            round_total += t;
        }
        uint run = carry + before + before_in_simdgroup;
#pragma clang loop unroll(full)
        for (uint e = 0; e < 4; ++e) {
            if (i + e < len) {
                hist[i + e] = run;
            }
            run += x[e];
        }
        carry += round_total;
        threadgroup_barrier(mem_flags::mem_threadgroup); // totals are rewritten next round
    }
}

// dst[slot] = item, slot from the scanned hist (see the header). `args.identity`: item i is
// voxel i.
template <typename W>
kernel void conv_order_scatter(
    constant ConvOrderArgs& args [[buffer(0)]],
    device const W* mask [[buffer(1)]],
    device const W* src [[buffer(2)]],
    device W* dst [[buffer(3)]],
    device const W* hist [[buffer(4)]],
    threadgroup W* first [[threadgroup(0)]], // [2][8][256]: per round parity, simdgroup, digit
    uint3 tgid [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]],
    uint sgid [[simdgroup_index_in_threadgroup]],
    uint lane [[thread_index_in_simdgroup]])
{
    // Thread t owns digit t: the threadgroup's next free slot of it.
    uint next = hist[ulong(tid) * args.blocks + tgid.x];
    const uint begin = tgid.x * args.per_block;
    const uint end = min(args.n, begin + args.per_block);
    const uint lanes_before = (1u << lane) - 1u;
    uint parity = 0;
    for (uint r = begin; r < end; r += ORDER_THREADS) {
        const uint i = r + tid;
        const bool valid = i < end;
        uint v = 0;
        uint d = 0;
        if (valid) {
            v = args.identity != 0 ? i : src[i];
            d = conv_order_digit(args, mask, v);
        }
        const ConvOrderVotes votes = conv_order_votes(valid, d, lane);
        threadgroup W* table = first + parity * (ORDER_SIMDGROUPS * ORDER_RADIX);
#pragma clang loop unroll(full)
        for (uint j = 0; j < ORDER_DIGITS_PER_LANE; ++j) {
            table[sgid * ORDER_RADIX + lane + 32 * j] = votes.count[j];
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        // Counts → first slots in simdgroup order, in place, for digit tid.
#pragma clang loop unroll(full)
        for (uint w = 0; w < ORDER_SIMDGROUPS; ++w) {
            const uint c = table[w * ORDER_RADIX + tid];
            table[w * ORDER_RADIX + tid] = next;
            next += c;
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        // This simdgroup's first slot of digit d: lane l reads digits l + 32 j (consecutive
        // words), then every lane takes its digit's from lane d % 32.
        uint slot = 0;
#pragma clang loop unroll(full)
        for (uint j = 0; j < ORDER_DIGITS_PER_LANE; ++j) {
            const uint f = table[sgid * ORDER_RADIX + lane + 32 * j];
            const uint got = simd_shuffle(f, ushort(d % 32));
            slot = d / 32 == j ? got : slot;
        }
        if (valid) {
            dst[slot + popcount(votes.peers & lanes_before)] = v;
        }
        // `table` is written again two rounds on, after the next round's first barrier, which
        // every thread reaches after this round's reads.
        parity ^= 1;
    }
}

// W: the u32 word of the map, masks and items; a template only because instantiations carry the
// host names (src/ops/metal/conv_order_plan.rs).
template [[host_name("conv_order_masks_u32")]] kernel void conv_order_masks<uint>(
    constant ConvOrderArgs& args [[buffer(0)]],
    device const uint* map [[buffer(1)]],
    device uint* mask [[buffer(2)]],
    uint3 tgid [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]]);

template [[host_name("conv_order_histogram_u32")]] kernel void conv_order_histogram<uint>(
    constant ConvOrderArgs& args [[buffer(0)]],
    device const uint* mask [[buffer(1)]],
    device const uint* src [[buffer(2)]],
    device uint* hist [[buffer(3)]],
    threadgroup uint* counts [[threadgroup(0)]],
    uint3 tgid [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]],
    uint sgid [[simdgroup_index_in_threadgroup]],
    uint lane [[thread_index_in_simdgroup]]);

template [[host_name("conv_order_scan_u32")]] kernel void conv_order_scan<uint>(
    constant ConvOrderArgs& args [[buffer(0)]],
    device uint* hist [[buffer(1)]],
    threadgroup uint* totals [[threadgroup(0)]],
    uint tid [[thread_index_in_threadgroup]],
    uint sgid [[simdgroup_index_in_threadgroup]],
    uint lane [[thread_index_in_simdgroup]]);

template [[host_name("conv_order_scatter_u32")]] kernel void conv_order_scatter<uint>(
    constant ConvOrderArgs& args [[buffer(0)]],
    device const uint* mask [[buffer(1)]],
    device const uint* src [[buffer(2)]],
    device uint* dst [[buffer(3)]],
    device const uint* hist [[buffer(4)]],
    threadgroup uint* first [[threadgroup(0)]],
    uint3 tgid [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]],
    uint sgid [[simdgroup_index_in_threadgroup]],
    uint lane [[thread_index_in_simdgroup]]);
