// The sparse conv's voxel order built on the GPU: a stable LSD radix sort of the voxel ids by
// the key (window, neighbour mask), window = v / window_size. The CPU reference is the host sort
// in src/ops/conv_order/mod.rs (`sort_by_mask`: within runs of `window` consecutive voxels, sort
// by (mask, voxel)); a stable sort by (window, mask) of the ids in increasing order is the same
// permutation, word for word.
//
// Why: the conv (kernels/cuda/sparse_conv.cu) walks, per 128-row tile, only the taps some row
// of the tile has; voxels sorted by their 27-bit neighbour mask share their taps, so a tile walks
// ≈ 17–21 instead of ≈ 27 taps. Built on the host (T mask words read back, a sort, an upload)
// the order cost ≈ 22 ms at 1.2 M voxels, as much as it saved in the decoders.
//
// Pipeline (launched by src/ops/conv_order/cuda.rs):
// 1. `conv_order_masks`: mask[v] = bit k set where voxel v has neighbour k (27 bits).
// 2. Per pass of RADIX_BITS key bits, least significant first (4 passes for 27-bit masks and one
//    window; more when the window id adds bits):
//    a. `conv_order_histogram`: block b counts the digits of its contiguous run of `per_block`
//       items → hist[digit][b] (digit-major, so one exclusive scan gives every (digit, block) its
//       first output slot in a stable order: digits ascending, then blocks, then positions).
//    b. `conv_order_scan`: one block scans hist in place (exclusive).
//    c. `conv_order_scatter`: block b walks its run again in rounds of SORT_THREADS consecutive
//       items; within a round an item's slot is its block's next slot for the digit, plus the
//       items of that digit in earlier warps of the round, plus its rank among equal digits of
//       its warp (`__match_any_sync`): consecutive items keep their order, so the pass is
//       stable.
//    The items are voxel ids; the key is recomputed from mask[v] (a gather from a T-word array
//    that stays in L2) rather than moved along.
// Integers only: no rounding. Sizes: T < 2^32 − per_block (the neighbour map's T·27 < 2^32
// keeps T far below); passes ≤ 7 (27 mask bits + ≤ 32 window bits, shift < 64).
#include <stdint.h>

#define TAPS 27
#define ABSENT 0xffffffffu
#define MASK_BITS 27
#define RADIX_BITS 8
#define RADIX (1 << RADIX_BITS)
#define SORT_THREADS 256  // one thread per digit in the per-block tables
#define SORT_WARPS (SORT_THREADS / 32)
#define SCAN_THREADS 1024  // 32 warps: one warp scans the warp totals
static_assert(SORT_THREADS == RADIX, "thread d owns digit d");
static_assert(SCAN_THREADS == 32 * 32, "the warp totals fit one warp");

// mask[v] = bit k set where voxel v has neighbour k, for the map's rows v < n.
extern "C" __global__ void conv_order_masks(const uint32_t *__restrict__ nbr, uint32_t *__restrict__ mask,
                                            uint32_t n) {
    const uint32_t v = blockIdx.x * blockDim.x + threadIdx.x;
    if (v >= n) return;
    const uint32_t *p = nbr + (size_t)v * TAPS;
    uint32_t m = 0;
#pragma unroll
    for (int k = 0; k < TAPS; ++k) m |= (p[k] != ABSENT ? 1u : 0u) << k;
    mask[v] = m;
}

// The digit at bit `shift` of voxel v's key ((v / window) << 27 | mask[v]).
__device__ __forceinline__ uint32_t digit_of(uint32_t v, const uint32_t *__restrict__ mask,
                                             uint32_t window, uint32_t shift) {
    const uint64_t key = ((uint64_t)(v / window) << MASK_BITS) | mask[v];
    return (uint32_t)(key >> shift) & (RADIX - 1);
}

// hist[d · gridDim.x + b] = items of block b (positions [b · per_block, min(n, (b + 1) ·
// per_block))) whose digit is d. `src` null: item i is voxel i (the first pass).
extern "C" __global__ void __launch_bounds__(SORT_THREADS)
    conv_order_histogram(const uint32_t *__restrict__ mask, const uint32_t *__restrict__ src,
                         uint32_t *__restrict__ hist, uint32_t n, uint32_t window, uint32_t shift,
                         uint32_t per_block) {
    __shared__ uint32_t count[RADIX];
    count[threadIdx.x] = 0;
    __syncthreads();
    const uint32_t begin = blockIdx.x * per_block;  // < n: the grid is ceil(n / per_block)
    const uint32_t end = min(n, begin + per_block);
    for (uint32_t i = begin + threadIdx.x; i < end; i += SORT_THREADS) {
        const uint32_t v = src ? src[i] : i;
        atomicAdd(&count[digit_of(v, mask, window, shift)], 1u);
    }
    __syncthreads();
    hist[(size_t)threadIdx.x * gridDim.x + blockIdx.x] = count[threadIdx.x];
}

// Inclusive sum over the lanes of a warp.
__device__ __forceinline__ uint32_t warp_inclusive_sum(uint32_t x, int lane) {
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
        const uint32_t y = __shfl_up_sync(0xffffffffu, x, d);
        if (lane >= d) x += y;
    }
    return x;
}

// hist[0..len) → its exclusive prefix sums, in place; one block, rounds of 4 items a thread.
extern "C" __global__ void __launch_bounds__(SCAN_THREADS) conv_order_scan(uint32_t *__restrict__ hist,
                                                                           uint32_t len) {
    __shared__ uint32_t warp_first[SCAN_THREADS / 32];  // exclusive prefix of the warp totals
    __shared__ uint32_t round_total;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    uint32_t carry = 0;  // sum of the earlier rounds
    for (uint32_t base = 0; base < len; base += SCAN_THREADS * 4) {
        const uint32_t i = base + threadIdx.x * 4;
        uint32_t x[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) x[e] = i + e < len ? hist[i + e] : 0;
        const uint32_t local = x[0] + x[1] + x[2] + x[3];
        const uint32_t incl = warp_inclusive_sum(local, lane);
        if (lane == 31) warp_first[warp] = incl;
        __syncthreads();
        if (warp == 0) {
            const uint32_t total = warp_first[lane];
            const uint32_t before = warp_inclusive_sum(total, lane);
            warp_first[lane] = before - total;
            if (lane == 31) round_total = before;
        }
        __syncthreads();
        uint32_t run = carry + warp_first[warp] + incl - local;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            if (i + e < len) hist[i + e] = run;
            run += x[e];
        }
        carry += round_total;
        __syncthreads();  // warp_first and round_total are rewritten by the next round
    }
}

// dst[slot] = item, slot from the scanned hist (see the header); `src` null: item i is voxel i.
extern "C" __global__ void __launch_bounds__(SORT_THREADS)
    conv_order_scatter(const uint32_t *__restrict__ mask, const uint32_t *__restrict__ src,
                       uint32_t *__restrict__ dst, const uint32_t *__restrict__ hist, uint32_t n,
                       uint32_t window, uint32_t shift, uint32_t per_block) {
    __shared__ uint32_t next[RADIX];               // the block's next free slot of each digit
    __shared__ uint32_t count[SORT_WARPS][RADIX];  // this round's items of each (warp, digit)
    __shared__ uint32_t first[SORT_WARPS][RADIX];  // this round's first slot of each (warp, digit)
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    next[tid] = hist[(size_t)tid * gridDim.x + blockIdx.x];
#pragma unroll
    for (int w = 0; w < SORT_WARPS; ++w) count[w][tid] = 0;
    __syncthreads();
    const uint32_t begin = blockIdx.x * per_block;
    const uint32_t end = min(n, begin + per_block);
    const uint32_t lanes_before = (1u << lane) - 1;
    // Every thread runs the same number of rounds (the barriers need it); past `end` a lane
    // takes digit RADIX, a group of its own that writes nothing.
    for (uint32_t r = begin; r < end; r += SORT_THREADS) {
        const uint32_t i = r + tid;
        const bool valid = i < end;
        uint32_t v = 0, d = RADIX;
        if (valid) {
            v = src ? src[i] : i;
            d = digit_of(v, mask, window, shift);
        }
        const uint32_t peers = __match_any_sync(0xffffffffu, d);
        const uint32_t rank = __popc(peers & lanes_before);
        if (valid && rank == 0) count[warp][d] = __popc(peers);
        __syncthreads();
        {
            // Thread tid owns digit tid: the warps' first slots in warp order, then the block's
            // next slot; the counts are cleared for the next round (its writes come after the
            // barrier below).
            uint32_t s = next[tid];
#pragma unroll
            for (int w = 0; w < SORT_WARPS; ++w) {
                const uint32_t c = count[w][tid];
                first[w][tid] = s;
                count[w][tid] = 0;
                s += c;
            }
            next[tid] = s;
        }
        __syncthreads();
        // `first` is rewritten only after the next round's first barrier, which every thread
        // reaches after this read.
        if (valid) dst[first[warp][d] + rank] = v;
    }
}
