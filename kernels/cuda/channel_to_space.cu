// Channel→space on the GPU (docs/MODEL.md §5.2); references: `Subdivision::from_mask` in
// src/sparse/channel_to_space.rs (children) and src/ops/c2s_skip_add/mod.rs (skip add).
//
// Children of N parents from their logits [N][8] (child s of parent n kept when
// logits[n][s] > 0; NaN keeps nothing), in three launches, in exactly the reference's order
// (parent-major, then s ascending):
//   c2s_count_T     one thread per parent, SCAN_BLOCK parents a block: the keep mask, the child
//                   count, its exclusive scan within the block → offsets[n] (block-local) and
//                   block_sums[b]; the children's largest batch, x, y, z → atomicMax into
//                   summary[1..5] (one atomic per block and axis).
//   c2s_scan_blocks one block: exclusive scan of block_sums in place, SCAN_BLOCK at a time with a
//                   carry (any N); summary[0] = the total; then each batch-boundary parent row
//                   r in summary[5..5+k] is replaced by the first child row of r.
//   c2s_write_T     one thread per (parent, s) slot: the rank of s among its parent's kept
//                   children from a warp ballot (a parent's 8 slots share a warp), the row
//                   offsets[n] + block_sums[n / SCAN_BLOCK] + rank; writes children[row] =
//                   (b, 2x + (s & 1), 2y + (s >> 1 & 1), 2z + (s >> 2 & 1)) as one 16-byte store
//                   (consecutive slots write consecutive rows) and sources[row] = 8n + s.
// Only summary (5 + k words) comes back to the host. Integer arithmetic in u32: the host checks
// 8N < 2^32 and 2·max + 1 < 2^21 per axis before launching.
//
// c2s_skip_add: y[i][j] = h[i][j] + x[sources[i]·carried + j / repeat] (x = the parents'
// features viewed [8N][carried]); h, y [N'][C'] in T, C' = carried·repeat; f32 sum, one
// rounding. VEC consecutive elements per thread (16-byte loads of h when C' is a multiple of
// VEC); a source ≥ x_blocks (never produced by channel→space) gives a NaN row instead of a read
// out of bounds.
//
// space_to_channel_w{2,4,16} (the inverse move, docs/MODEL.md §13.3; reference
// src/ops/space_to_channel/mod.rs): y[m][s·C + c] = x[slots[8m + s]][c], zero words where the
// slot is absent (0xffffffff) or names no row (≥ rows). A pure copy of W-byte words (2: f16/bf16,
// 4: f32, 16: four f32 or eight 16-bit values when a row is a whole number of 16-byte words and
// both operands start 16-byte aligned), so one kernel serves every float dtype and gives the
// reference's bits. One thread per output word, grid-stride.
//
// i32_words_differ: flag = 1 when a[i] != b[i] for some i < n (coordinate sets compared on the
// device).
#include "common.cuh"

#define SCAN_BLOCK 1024
#define SCAN_WARPS (SCAN_BLOCK / 32)
#define WRITE_THREADS 256
#define EW_THREADS 256
#define FULL_MASK 0xffffffffu

// Words of the summary before the batch boundaries: total, then max batch, x, y, z.
#define SUMMARY_HEAD 5

// Exclusive scan of v over a SCAN_BLOCK-thread block; *total = the sum over the block. Every
// thread of the block must call it (it synchronises the block, and again before returning so
// that it can be called in a loop).
__device__ __forceinline__ uint32_t block_exclusive_scan(uint32_t v, uint32_t *total) {
    __shared__ uint32_t warp_sums[SCAN_WARPS];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    uint32_t x = v;  // inclusive within the warp
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
        const uint32_t y = __shfl_up_sync(FULL_MASK, x, d);
        if (lane >= d) x += y;
    }
    if (lane == 31) warp_sums[warp] = x;
    __syncthreads();
    if (warp == 0) {
        uint32_t w = warp_sums[lane];  // SCAN_WARPS == 32: one per lane
#pragma unroll
        for (int d = 1; d < 32; d <<= 1) {
            const uint32_t y = __shfl_up_sync(FULL_MASK, w, d);
            if (lane >= d) w += y;
        }
        warp_sums[lane] = w;  // inclusive over warps
    }
    __syncthreads();
    const uint32_t before = warp == 0 ? 0u : warp_sums[warp - 1];
    *total = warp_sums[SCAN_WARPS - 1];
    __syncthreads();
    return before + x - v;
}

// Largest v over a SCAN_BLOCK-thread block, valid in thread 0. Every thread must call it.
__device__ __forceinline__ uint32_t block_max(uint32_t v) {
    __shared__ uint32_t warp_max[SCAN_WARPS];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = __reduce_max_sync(FULL_MASK, v);
    if (lane == 0) warp_max[warp] = v;
    __syncthreads();
    uint32_t m = 0;
    if (warp == 0) m = __reduce_max_sync(FULL_MASK, warp_max[lane]);
    __syncthreads();
    return m;
}

template <typename T>
__device__ __forceinline__ uint32_t keep_mask(const T *__restrict__ logits, uint32_t parent) {
    uint32_t mask = 0;
#pragma unroll
    for (int s = 0; s < 8; ++s) mask |= (to_f32(logits[(size_t)parent * 8 + s]) > 0.f ? 1u : 0u) << s;
    return mask;
}

template <typename T>
__device__ __forceinline__ void c2s_count(const T *__restrict__ logits, const int *__restrict__ parents,
                                          uint32_t n, uint32_t *__restrict__ offsets,
                                          uint32_t *__restrict__ block_sums, uint32_t *__restrict__ summary) {
    const uint32_t p = blockIdx.x * SCAN_BLOCK + threadIdx.x;
    const uint32_t mask = p < n ? keep_mask(logits, p) : 0u;
    uint32_t total;
    const uint32_t before = block_exclusive_scan(__popc(mask), &total);
    if (p < n) offsets[p] = before;
    if (threadIdx.x == 0) block_sums[blockIdx.x] = total;
    // The children's extent: child x is 2x + 1 if a kept s has bit 0 set (s in 1, 3, 5, 7:
    // mask bits 0xAA), else 2x; y: bit 1 (0xCC); z: bit 2 (0xF0). Parents without children
    // add nothing.
    uint32_t m[4] = {0u, 0u, 0u, 0u};
    if (mask) {
        const int *c = parents + (size_t)p * 4;
        m[0] = (uint32_t)c[0];
        m[1] = 2u * (uint32_t)c[1] + ((mask & 0xAAu) ? 1u : 0u);
        m[2] = 2u * (uint32_t)c[2] + ((mask & 0xCCu) ? 1u : 0u);
        m[3] = 2u * (uint32_t)c[3] + ((mask & 0xF0u) ? 1u : 0u);
    }
#pragma unroll
    for (int a = 0; a < 4; ++a) {
        const uint32_t v = block_max(m[a]);
        if (threadIdx.x == 0 && v) atomicMax(summary + 1 + a, v);
    }
}

extern "C" __global__ void __launch_bounds__(SCAN_BLOCK)
    c2s_scan_blocks(uint32_t *block_sums, uint32_t blocks, const uint32_t *offsets, uint32_t n,
                    uint32_t *summary, uint32_t boundaries) {
    uint32_t carry = 0;
    for (uint32_t base = 0; base < blocks; base += SCAN_BLOCK) {
        const uint32_t i = base + threadIdx.x;
        const uint32_t v = i < blocks ? block_sums[i] : 0u;
        uint32_t total;
        const uint32_t before = block_exclusive_scan(v, &total);
        if (i < blocks) block_sums[i] = carry + before;
        carry += total;
    }
    // block_exclusive_scan ended with a barrier: every block_sums write above is visible to the
    // whole block.
    if (threadIdx.x == 0) summary[0] = carry;
    for (uint32_t j = threadIdx.x; j < boundaries; j += SCAN_BLOCK) {
        const uint32_t r = summary[SUMMARY_HEAD + j];
        summary[SUMMARY_HEAD + j] = r < n ? offsets[r] + block_sums[r / SCAN_BLOCK] : carry;
    }
}

template <typename T>
__device__ __forceinline__ void c2s_write(const T *__restrict__ logits, const int *__restrict__ parents,
                                          uint32_t n, const uint32_t *__restrict__ offsets,
                                          const uint32_t *__restrict__ block_prefix, int *__restrict__ children,
                                          uint32_t *__restrict__ sources) {
    // 8n < 2^32 (checked by the host), so slots fit u32. All lanes reach the ballot.
    const uint32_t slot = blockIdx.x * WRITE_THREADS + threadIdx.x;
    const bool keep = slot < 8u * n && to_f32(logits[slot]) > 0.f;
    const uint32_t ballot = __ballot_sync(FULL_MASK, keep);
    if (!keep) return;
    // WRITE_THREADS and 32 are multiples of 8: the parent's 8 slots are lanes 8·(lane / 8) + s.
    const int lane = threadIdx.x & 31;
    const uint32_t s = slot & 7u;
    const uint32_t parent_mask = (ballot >> (lane & ~7)) & 0xFFu;
    const uint32_t rank = __popc(parent_mask & ((1u << s) - 1u));
    const uint32_t p = slot >> 3;
    const uint32_t row = offsets[p] + block_prefix[p / SCAN_BLOCK] + rank;
    const int *c = parents + (size_t)p * 4;
    const int4 child = make_int4(c[0], 2 * c[1] + (int)(s & 1u), 2 * c[2] + (int)((s >> 1) & 1u),
                                 2 * c[3] + (int)((s >> 2) & 1u));
    reinterpret_cast<int4 *>(children)[row] = child;
    sources[row] = slot;
}

template <typename T, int VEC> struct alignas(sizeof(T) * VEC) SkipPack {
    T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ void c2s_skip_add(const T *__restrict__ h, const T *__restrict__ x,
                                             const uint32_t *__restrict__ sources, T *__restrict__ y,
                                             size_t vectors, int c_out, int carried, int repeat,
                                             uint32_t x_blocks) {
    for (size_t i = blockIdx.x * (size_t)EW_THREADS + threadIdx.x; i < vectors;
         i += (size_t)gridDim.x * EW_THREADS) {
        const size_t e = i * VEC;
        const size_t row = e / (size_t)c_out;
        const int col = (int)(e % (size_t)c_out);  // C' % VEC == 0: a vector never wraps a row
        const uint32_t src = sources[row];
        const SkipPack<T, VEC> in = *reinterpret_cast<const SkipPack<T, VEC> *>(h + e);
        SkipPack<T, VEC> out;
        if (src >= x_blocks) {
#pragma unroll
            for (int j = 0; j < VEC; ++j) out.v[j] = store<T>(__int_as_float(0x7fc00000));
        } else {
            const T *carry = x + (size_t)src * carried;
            int k = col / repeat, r = col - k * repeat;
#pragma unroll
            for (int j = 0; j < VEC; ++j) {
                out.v[j] = store<T>(to_f32(in.v[j]) + to_f32(carry[k]));
                if (++r == repeat) {
                    r = 0;
                    ++k;
                }
            }
        }
        *reinterpret_cast<SkipPack<T, VEC> *>(y + e) = out;
    }
}

extern "C" __global__ void __launch_bounds__(EW_THREADS)
    i32_words_differ(const int *a, const int *b, size_t n, uint32_t *flag) {
    for (size_t i = blockIdx.x * (size_t)EW_THREADS + threadIdx.x; i < n; i += (size_t)gridDim.x * EW_THREADS)
        if (a[i] != b[i]) {
            atomicOr(flag, 1u);
            return;
        }
}

template <typename W>
__device__ __forceinline__ void space_to_channel(const W *x, const uint32_t *slots, W *y, size_t total,
                                                 uint32_t words, uint32_t rows) {
    for (size_t i = blockIdx.x * (size_t)EW_THREADS + threadIdx.x; i < total; i += (size_t)gridDim.x * EW_THREADS) {
        const size_t slot = i / words;
        const uint32_t w = (uint32_t)(i - slot * words);
        const uint32_t r = slots[slot];
        W v{};
        if (r < rows)
            v = x[(size_t)r * words + w];
        y[i] = v;
    }
}

#define SPACE_TO_CHANNEL(NAME, W)                                                                    \
    extern "C" __global__ void __launch_bounds__(EW_THREADS)                                         \
        space_to_channel_##NAME(const W *x, const uint32_t *slots, W *y, size_t total, uint32_t words, \
                                uint32_t rows) {                                                     \
        space_to_channel<W>(x, slots, y, total, words, rows);                                        \
    }

SPACE_TO_CHANNEL(w2, uint16_t)
SPACE_TO_CHANNEL(w4, uint32_t)
SPACE_TO_CHANNEL(w16, uint4)

#define CHILDREN(NAME, T)                                                                            \
    extern "C" __global__ void __launch_bounds__(SCAN_BLOCK)                                         \
        c2s_count_##NAME(const T *logits, const int *parents, uint32_t n, uint32_t *offsets,        \
                         uint32_t *block_sums, uint32_t *summary) {                                  \
        c2s_count<T>(logits, parents, n, offsets, block_sums, summary);                              \
    }                                                                                                \
    extern "C" __global__ void __launch_bounds__(WRITE_THREADS)                                      \
        c2s_write_##NAME(const T *logits, const int *parents, uint32_t n, const uint32_t *offsets,  \
                         const uint32_t *block_prefix, int *children, uint32_t *sources) {           \
        c2s_write<T>(logits, parents, n, offsets, block_prefix, children, sources);                  \
    }

CHILDREN(f32, float)
CHILDREN(f16, __half)
CHILDREN(bf16, __nv_bfloat16)

#define SKIP_ADD(NAME, T, VEC, SUFFIX)                                                               \
    extern "C" __global__ void __launch_bounds__(EW_THREADS)                                         \
        c2s_skip_add_##NAME##SUFFIX(const T *h, const T *x, const uint32_t *sources, T *y,           \
                                    size_t vectors, int c_out, int carried, int repeat,              \
                                    uint32_t x_blocks) {                                             \
        c2s_skip_add<T, VEC>(h, x, sources, y, vectors, c_out, carried, repeat, x_blocks);           \
    }

// `_v`: 16-byte vectors (C' a multiple of 16 / sizeof(T), h 16-byte aligned); else scalar.
SKIP_ADD(f32, float, 4, _v)
SKIP_ADD(f16, __half, 8, _v)
SKIP_ADD(bf16, __nv_bfloat16, 8, _v)
SKIP_ADD(f32, float, 1, )
SKIP_ADD(f16, __half, 1, )
SKIP_ADD(bf16, __nv_bfloat16, 1, )

// The C2S children conv's row list (`child_rows` in src/ops/sparse_conv/cuda.rs; the kernel
// that reads it is `subm_conv3d_children_sm90a_*` in kernels/cuda/sparse_conv_sm90a.cu). The
// parents' conv order is cut into windows of `per_block` consecutive positions, one block each;
// window b's children of slot s form group (b, s), whose rows start on a tile boundary (128 rows
// a tile) and follow the positions of their parents, so the tiles of a group share their
// parents' neighbour masks as the parents conv's tiles do. Groups are laid out window-major,
// then by slot: the 8 groups of a window gather the same parents' neighbourhoods one after the
// other, while they are still in L2 (slot-major groups would sweep the whole parent set once per
// slot). tile_slot[t] = the slot of tile t, NONE past the last group; padding rows NONE.
//   c2s_rows_table    table[sources[c]] = c + 1 (table [8P], zeroed by the host: 0 = no child).
//   c2s_rows_count    hist[8b + s] = the tiles of group (b, s); block 0 also zeroes hist[8 ·
//                     blocks], so that the exclusive scan (conv_order_scan) gives every group its
//                     first tile and ends with the total.
//   c2s_rows_scatter  the same blocks: row = its group's first row + the group's children at
//                     earlier positions (per round a warp ballot per slot and the warps' counts),
//                     so each group keeps the positions' order; then the group's padding rows
//                     and tile slots; block 0 marks the tiles past the last group.
#define ROWS_THREADS 256
#define ROWS_WARPS (ROWS_THREADS / 32)
#define ROWS_TILE 128
#define ROWS_NONE 0xffffffffu

extern "C" __global__ void c2s_rows_table(const uint32_t *__restrict__ sources, uint32_t children,
                                          uint32_t *__restrict__ table, uint32_t slots) {
    const uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= children) return;
    const uint32_t s = sources[c];
    if (s < slots) table[s] = c + 1;
}

// The 8 table entries (child + 1, or 0) of the parent at position p, and the parent.
__device__ __forceinline__ void rows_children(const uint32_t *__restrict__ table,
                                              const uint32_t *__restrict__ order, uint32_t p,
                                              uint32_t *v, uint32_t (&c)[8]) {
    *v = order ? order[p] : p;
    const uint4 *t = reinterpret_cast<const uint4 *>(table + (size_t)*v * 8);
    const uint4 a = t[0], b = t[1];
    c[0] = a.x, c[1] = a.y, c[2] = a.z, c[3] = a.w, c[4] = b.x, c[5] = b.y, c[6] = b.z, c[7] = b.w;
}

extern "C" __global__ void __launch_bounds__(ROWS_THREADS)
    c2s_rows_count(const uint32_t *__restrict__ table, const uint32_t *__restrict__ order,
                   uint32_t parents, uint32_t per_block, uint32_t *__restrict__ hist) {
    __shared__ uint32_t count[8];
    if (threadIdx.x < 8) count[threadIdx.x] = 0;
    if (blockIdx.x == 0 && threadIdx.x == 0) hist[8 * gridDim.x] = 0;
    __syncthreads();
    const uint32_t begin = blockIdx.x * per_block;
    const uint32_t end = min(parents, begin + per_block);
    uint32_t mine[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (uint32_t p = begin + threadIdx.x; p < end; p += ROWS_THREADS) {
        uint32_t v, c[8];
        rows_children(table, order, p, &v, c);
#pragma unroll
        for (int s = 0; s < 8; ++s) mine[s] += c[s] != 0 ? 1u : 0u;
    }
#pragma unroll
    for (int s = 0; s < 8; ++s) {
        uint32_t x = mine[s];
#pragma unroll
        for (int d = 16; d > 0; d >>= 1) x += __shfl_xor_sync(FULL_MASK, x, d);
        if ((threadIdx.x & 31) == 0 && x) atomicAdd(&count[s], x);
    }
    __syncthreads();
    if (threadIdx.x < 8)
        hist[8 * blockIdx.x + threadIdx.x] = (count[threadIdx.x] + ROWS_TILE - 1) / ROWS_TILE;
}

extern "C" __global__ void __launch_bounds__(ROWS_THREADS)
    c2s_rows_scatter(const uint32_t *__restrict__ table, const uint32_t *__restrict__ order,
                     uint32_t parents, uint32_t per_block, const uint32_t *__restrict__ scan,
                     uint32_t *__restrict__ rows, uint32_t *__restrict__ out_rows,
                     uint32_t *__restrict__ tile_slot, uint32_t tiles) {
    __shared__ uint32_t next[8];  // the next row of group (this block, s)
    __shared__ uint32_t warp_count[8][ROWS_WARPS];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const uint32_t *first_tile = scan + 8 * blockIdx.x;  // [9]: the groups' first tiles, then the next window's
    if (threadIdx.x < 8) next[threadIdx.x] = first_tile[threadIdx.x] * ROWS_TILE;
    if (blockIdx.x == 0) {
        for (uint32_t t = scan[8 * gridDim.x] + threadIdx.x; t < tiles; t += ROWS_THREADS)
            tile_slot[t] = ROWS_NONE;
    }
    __syncthreads();
    const uint32_t begin = blockIdx.x * per_block;
    const uint32_t end = min(parents, begin + per_block);
    const uint32_t below = (1u << lane) - 1u;  // lanes before this one
    for (uint32_t round = begin; round < end; round += ROWS_THREADS) {
        const uint32_t p = round + threadIdx.x;
        uint32_t v = 0, c[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        if (p < end) rows_children(table, order, p, &v, c);
        uint32_t rank[8];
#pragma unroll
        for (int s = 0; s < 8; ++s) {
            const uint32_t ballot = __ballot_sync(FULL_MASK, c[s] != 0);
            rank[s] = __popc(ballot & below);
            if (lane == 0) warp_count[s][warp] = __popc(ballot);
        }
        __syncthreads();
#pragma unroll
        for (int s = 0; s < 8; ++s) {
            if (c[s] == 0) continue;
            uint32_t dst = next[s] + rank[s];
            for (int w = 0; w < warp; ++w) dst += warp_count[s][w];
            rows[dst] = v;
            out_rows[dst] = c[s] - 1;
        }
        __syncthreads();
        if (threadIdx.x < 8) {
            uint32_t total = 0;
            for (int w = 0; w < ROWS_WARPS; ++w) total += warp_count[threadIdx.x][w];
            next[threadIdx.x] += total;
        }
        __syncthreads();
    }
    // next[s] is now the end of group s's children: padding up to its last tile's end.
    for (int s = 0; s < 8; ++s) {
        for (uint32_t i = next[s] + threadIdx.x; i < first_tile[s + 1] * ROWS_TILE; i += ROWS_THREADS) {
            rows[i] = ROWS_NONE;
            out_rows[i] = ROWS_NONE;
        }
        for (uint32_t t = first_tile[s] + threadIdx.x; t < first_tile[s + 1]; t += ROWS_THREADS)
            tile_slot[t] = s;
    }
}
