// Submanifold 3×3×3 convolution for Hopper (sm_90a): the masked implicit GEMM of
// kernels/cuda/sparse_conv.cu (read its header first: operands, `order`, tap mask, masked taps,
// row skipping, epilogue) with the products on the warpgroup tensor-core instruction
// wgmma.mma_async instead of ldmatrix + mma.sync. Same kernel parameters and semantics; only
// 16-byte copies (Ci % 8 == 0, 16-byte aligned feats and weight), anything else takes the
// mma.sync kernels. build.rs compiles this file (with -arch=sm_90a) only when CUDA_COMPUTE_CAP is
// 90, and src/ops/sparse_conv/cuda.rs launches it only on a compute capability 9.0 device.
//
// Design, and why:
// - mma.sync was the limit: per m16n8k16 each warp re-reads its A and B fragments from shared
//   memory through ldmatrix into registers, which costs issue slots, registers (fragments plus
//   accumulators capped the warp tile at 64×32 / 64×64) and shared bandwidth. wgmma reads both
//   operands straight from shared memory through descriptors, one instruction per 64×BN×16
//   product of a warpgroup, and runs asynchronously while the threads issue the next copies.
// - One block = BM = 128 voxel rows × BN output channels, 256 threads = two warpgroups of 64
//   rows (wgmma's M). Each warpgroup issues, per pipeline step (one tap, BK = 64 channels), four
//   wgmma m64nBNk16 with A = its 64 gathered rows and B = the step's BN weight rows, both from
//   shared memory. BN = 64 for Co ≤ 64, 256 for Co ≥ 256 (when those tiles still give every SM
//   one, as the mma.sync host logic decides), else 128: BN/2 fp32 accumulators per thread
//   (32 / 64 / 128).
// - Prologue exactly as the mma.sync kernel: voxel ids and their 27 neighbour rows to shared
//   memory, the tile's tap mask; the main loop walks only the taps present. Row skipping is kept
//   at wgmma's granularity: `wg_taps[w]` is the tap mask of warpgroup w's 64 rows, and a
//   warpgroup issues no wgmma for a step whose tap none of its rows has (its A rows are all
//   zero-filled: the products would add exact zeros). The copies are still made (all 256
//   threads copy both halves), so the barrier protocol stays uniform.
// - Shared tiles: K-major, 64 16-bit elements (128 bytes) per row, 16-byte chunk c of row r at
//   chunk c ^ (r & 7), 8-row atoms of 1024 bytes: the same XOR layout as the mma.sync kernel,
//   which is exactly wgmma's 128-byte swizzle mode (the hardware XORs address bits 4–6 with
//   bits 7–9). That needs every tile base 1024-byte aligned: the dynamic shared memory is
//   rounded up to 1024 at run time (the host adds 1024 bytes of slack, as the alignment of the
//   dynamic window behind the static arrays is not something to rely on), and every stage and
//   operand offset is a multiple of 1024 (A: 16 KB, B: BN·128 bytes, a warpgroup's A half 8 KB).
// - Descriptors (64 bits): bits 0–13 start address >> 4; 16–29 leading byte offset >> 4 (unused
//   for a swizzled K-major operand whose K extent is one 128-byte row; 1 by convention); 32–45
//   stride byte offset >> 4 = 1024 >> 4 (next 8-row group); 49–51 base offset 0 (tiles are
//   1024-aligned); 62–63 layout 1 = 128-byte swizzle. k16 step kk of a 64-wide row starts 32·kk
//   bytes further (the swizzle is applied to the final address, so the start just moves along
//   the unswizzled row): +2·kk in the low word. A and B are both K-major: no transposes.
// - Pipeline: a ring of STAGES slots (A then B per slot) filled by cp.async from all 256 threads
//   (gathers need many threads; no producer warpgroup, no TMA). KEEP (0 or 1) wgmma groups stay
//   in flight across the step boundary and LOOKAHEAD = STAGES − 1 − KEEP steps of copies run
//   ahead. Step s: wait for this thread's copies of step s (cp.async.wait_group LOOKAHEAD − 1),
//   fence.proxy.async (the copies are generic-proxy writes that wgmma reads through the async
//   proxy), __syncthreads (everyone's copies landed, and every warpgroup has passed
//   wgmma.wait_group KEEP of step s − 1, so the wgmma of step s − 1 − KEEP is complete
//   everywhere); copies of step s + LOOKAHEAD go into the slot of step s − 1 − KEEP, which is
//   therefore free; then wgmma.fence, four wgmma on slot s, commit, wait_group KEEP.
//   KEEP = 1 overlaps a warpgroup's products with the next step's barrier and copy issue (the
//   tensor cores are never idle waiting for the block's own threads) at the cost of one step of
//   copy lookahead; KEEP = 0 keeps one more step of gathers in flight. With two blocks per SM
//   (BN ≤ 128 at 96 KB of ring) the other block's warpgroups fill the tensor cores while one
//   block synchronises, so KEEP = 0 and the longer lookahead are the defaults there; with one
//   block an SM (BN = 256, 4 × 48 KB) nothing else would, so KEEP = 1. src/ops/sparse_conv/cuda.rs picks the
//   instantiation (TRELLIS2_CONV_STAGES / TRELLIS2_CONV_WGMMA_KEEP override it for measuring).
// - Accumulators are zero-initialised and every wgmma accumulates (scale-d = 1); wgmma.fence
//   before each batch (the first one follows the zeroing; later ones are required only after
//   ordinary register accesses, and cost nothing otherwise). `fence_regs` after the final
//   wait_group 0 keeps the epilogue's reads below it.
// - Epilogue as the mma.sync kernel's: accumulator + f32 bias, one rounding to the output dtype
//   (or f32), direct stores of column pairs. The bias is read inside the column-block loop (L1
//   hits) rather than held for all BN/8 blocks, which at BN = 256 would cost 64 more registers.
//
// - 256-row tiles (TRELLIS2_CONV_ROWS=256, `_m256_` kernels, BN ≤ 128): four warpgroups of 64
//   rows, 512 threads, one block an SM. The copies move 48 KB a step for 256 × 128 × 64
//   products instead of 32 KB for 128 × 128 × 64 (40 KB instead of 24 KB at BN = 64): each
//   weight tile copied serves twice the rows. The rest is unchanged: the tile walks the union
//   of its rows' taps, each warpgroup skips the products of taps none of its 64 rows has, and
//   the copies of absent rows are zero fills that read nothing. Two warpgroups with BN = 256
//   already share each A tile over 256 columns; four with BN = 256 would need 128 accumulators
//   in each of 512 threads, more than the register file holds.
// - The dense linear layer `y = act(x·Wᵀ + b)` (`linear_act_sm90a_*`, TRELLIS2_LINEAR_ACT) is the
//   same main loop with one tap: tile row r is row row0 + r (no neighbour map, no order, no tap
//   mask), W [Co, K] is a weight of one tap, and the epilogue applies the activation after the
//   bias. It serves the linear layers whose activation cuBLASLt has no epilogue for (SiLU in the
//   SC-VAE decoders' ConvNeXt MLPs), which otherwise write their output from cuBLAS and read and
//   rewrite it in `bias_act`. Instantiated at BN = 64 and 128 with the conv's 96 KB rings (two
//   blocks an SM: the layers it is for have K ≤ 256, a few steps a tile, and are bound by the
//   output write, which the other block's loads overlap).
//
// - The C2S children conv (`subm_conv3d_children_sm90a_*`, TRELLIS2_C2S_CONV): the first conv of
//   a C2S block computes, for each existing child only, its C' channels: the conv over its
//   PARENT's neighbourhood with the weight rows s·C' .. (s+1)·C' of its slot s (the [8C', 27, Ci]
//   weight's slot blocks are contiguous, so a slot's weight is an offset, no copy). Tile rows
//   come from a row list built by `c2s_rows_*` (kernels/cuda/channel_to_space.cu): groups of one
//   slot, each starting on a tile boundary, in the parents' conv order (a tile's rows share
//   their parents' neighbour masks as the parents conv's do); tile_slot[t] is tile t's slot
//   (NONE: no rows, the block returns at once), rows[p] the parent of tile row p (the neighbour
//   lookups), out_rows[p] the child it writes; padding rows NONE. One launch for the 8 slots
//   rather than eight: no tail of idle SMs at each slot's end, the groups' sizes are only known
//   on the device (no read-back), and a window's 8 groups run side by side, sharing their
//   gathers in L2. Only the default pipelines are instantiated, f16/bf16 outputs.
//
// wgmma D fragment (PTX ISA, m64nNk16; lane = 4g + t, warp w' of the warpgroup): d[4j + e] is
// row 16w' + g + 8·(e / 2) of the warpgroup's 64, column 8j + 2t + (e % 2), j = 0 .. N/8 − 1.
#include "common.cuh"
#include "sparse_conv_tile.cuh"

namespace subm90 {

constexpr uint32_t ABSENT = conv_tile::NO_ROW;
constexpr int TAPS = conv_tile::TAP_COUNT;
constexpr int BM = 128;       // voxel rows per block
constexpr int BK = 64;        // K elements per step: one 128-byte swizzled row
constexpr int CHUNKS = BK / 8;  // 16-byte chunks per row
constexpr int WG_ROWS = 64;   // rows per warpgroup (wgmma M)
constexpr int NTHREADS = 256; // two warpgroups
constexpr int RPP = NTHREADS / CHUNKS;  // rows per copy pass (32: a multiple of 8, so a thread's
                                         // rows all share one swizzled chunk column)
constexpr int A_BYTES = BM * BK * 2;    // 16 KB
constexpr uint32_t ALIGN = 1024;        // 128-byte swizzle atom: 8 rows × 128 bytes

__device__ __forceinline__ uint32_t smem_addr(const void *p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// cp.async to a shared-memory address; `valid` false zero-fills the 16 bytes and reads nothing
// (`gmem` must still be a valid address).
__device__ __forceinline__ void cp_async16_s(uint32_t s, const void *gmem, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 16 : 0));
}

// Low word of a 128-byte-swizzle K-major descriptor: start address >> 4, LBO field 1. Shared
// addresses stay below 2^18, so the 14-bit start field never carries into the LBO field (and a
// k-step advance of +2 stays inside the 1024-byte atom's row).
__device__ __forceinline__ uint32_t desc_lo(uint32_t addr) { return ((addr & 0x3FFFF) >> 4) | (1u << 16); }
// High word: SBO = 1024 bytes (>> 4 = 64) in bits 32–45, base offset 0, layout 1 (128-byte
// swizzle) in bits 62–63.
constexpr uint32_t DESC_HI = (ALIGN >> 4) | (1u << 30);
__device__ __forceinline__ uint64_t desc(uint32_t lo) { return static_cast<uint64_t>(lo) | (static_cast<uint64_t>(DESC_HI) << 32); }

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Pins accumulator registers in program order: the compiler sees a wgmma's results as ready at
// its issue, so without this it could move their reads above wgmma.wait_group.
template <int N> __device__ __forceinline__ void fence_regs(float (&r)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

// Operand lists: the N/2 accumulators "+f"(d[i]), then the two descriptors.
#define ACC4(i) "+f"(d[(i)]), "+f"(d[(i) + 1]), "+f"(d[(i) + 2]), "+f"(d[(i) + 3])
#define ACC16(i) ACC4(i), ACC4((i) + 4), ACC4((i) + 8), ACC4((i) + 12)
#define ACC32(i) ACC16(i), ACC16((i) + 16)
#define ACC64(i) ACC32(i), ACC32((i) + 32)
#define ACC128(i) ACC64(i), ACC64((i) + 64)
#define REGS_32 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33"
#define REGS_64 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65"
#define REGS_128 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, %128, %129"
// d[64×N] += A[64×16] · B[16×N] (scale-d = 1, no negation, no transposes: both K-major).
#define WGMMA_SS(N, TY, REGS, ACC)                                                                    \
    asm volatile("wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TY "." TY " " REGS ", 1, 1, 1, 0, 0;\n" \
                 : ACC                                                                                \
                 : "l"(a), "l"(b))

template <typename T, int N> struct Wgmma;
template <> struct Wgmma<__nv_bfloat16, 64> {
    static __device__ __forceinline__ void ss(float (&d)[32], uint64_t a, uint64_t b) { WGMMA_SS(64, "bf16", REGS_32, ACC32(0)); }
};
template <> struct Wgmma<__nv_bfloat16, 128> {
    static __device__ __forceinline__ void ss(float (&d)[64], uint64_t a, uint64_t b) { WGMMA_SS(128, "bf16", REGS_64, ACC64(0)); }
};
template <> struct Wgmma<__nv_bfloat16, 256> {
    static __device__ __forceinline__ void ss(float (&d)[128], uint64_t a, uint64_t b) { WGMMA_SS(256, "bf16", REGS_128, ACC128(0)); }
};
template <> struct Wgmma<__half, 64> {
    static __device__ __forceinline__ void ss(float (&d)[32], uint64_t a, uint64_t b) { WGMMA_SS(64, "f16", REGS_32, ACC32(0)); }
};
template <> struct Wgmma<__half, 128> {
    static __device__ __forceinline__ void ss(float (&d)[64], uint64_t a, uint64_t b) { WGMMA_SS(128, "f16", REGS_64, ACC64(0)); }
};
template <> struct Wgmma<__half, 256> {
    static __device__ __forceinline__ void ss(float (&d)[128], uint64_t a, uint64_t b) { WGMMA_SS(256, "f16", REGS_128, ACC128(0)); }
};

// Two adjacent outputs (col, col + 1) of a row, `dst` 4-byte (16-bit O) or 8-byte (f32) aligned.
template <typename O> __device__ __forceinline__ void store2(O *dst, float x0, float x1) {
    *reinterpret_cast<uint32_t *>(dst) = pack2<O>(x0, x1);
}
template <> __device__ __forceinline__ void store2<float>(float *dst, float x0, float x1) {
    *reinterpret_cast<float2 *>(dst) = make_float2(x0, x1);
}

// Dynamic shared memory of an instantiation (`subm_conv_sm90a_smem_bytes` in src/ops/sparse_conv/cuda.rs
// must agree): the ring plus the slack of the run-time 1024-byte alignment.
constexpr int smem_bytes(int bn, int stages, int rows = BM) { return stages * (rows * BK * 2 + bn * BK * 2) + ALIGN; }

// DENSE: the dense linear layer of the header instead of the conv (one tap,
// tile row r is row row0 + r, weight [Co, Ci]); `act` (ACT_* of common.cuh) is applied in its
// epilogue. The conv instantiations (DENSE false) compile to the same code as before.
// CHILDREN: the C2S children conv of the header: `order` is the row list (n_rows entries,
// parents < n), `out_rows` the children the rows write, `tile_slot` the tiles' slots; co is C'.
template <typename T, typename O, int BN, int STAGES, int KEEP, bool DENSE = false, int ROWS = BM,
          bool CHILDREN = false>
__device__ __forceinline__ void subm_conv(const T *__restrict__ feats, const T *__restrict__ weight,
                                          const uint32_t *__restrict__ nbr,
                                          const uint32_t *__restrict__ order,
                                          const float *__restrict__ bias, O *__restrict__ out,
                                          int n, int ci, int co, int skip_groups, int act = ACT_NONE,
                                          const uint32_t *__restrict__ out_rows = nullptr,
                                          const uint32_t *__restrict__ tile_slot = nullptr,
                                          int n_rows = -1) {
    constexpr int TBM = ROWS;                     // voxel rows per block
    constexpr int NWG = TBM / WG_ROWS;            // warpgroups, one per 64 rows
    constexpr int TNT = NWG * 128;                // threads
    constexpr int TRPP = TNT / CHUNKS;            // rows per copy pass
    constexpr int TA_BYTES = TBM * BK * 2;
    constexpr int B_BYTES = BN * BK * 2;
    constexpr int STAGE_BYTES = TA_BYTES + B_BYTES;
    constexpr int LOOKAHEAD = STAGES - 1 - KEEP;  // steps of copies in flight ahead of the current
    constexpr int NACC = BN / 2;                  // fp32 accumulators per thread
    static_assert(KEEP == 0 || KEEP == 1, "at most one wgmma group in flight across steps");
    static_assert(LOOKAHEAD >= 1, "at least the next step's copies in flight");
    static_assert(BN == 64 || BN == 128 || BN == 256, "wgmma N of the instantiations");
    static_assert(TA_BYTES % ALIGN == 0 && B_BYTES % ALIGN == 0 && (WG_ROWS * BK * 2) % ALIGN == 0,
                  "every swizzled tile base stays 1024-byte aligned");
    static_assert(TBM % TRPP == 0 && BN % TRPP == 0 && TRPP % 8 == 0, "copy passes keep the swizzle");
    static_assert((TBM == 2 * WG_ROWS || TBM == 4 * WG_ROWS) && TBM <= TNT,
                  "two or four warpgroups; a thread per row for masks");
    constexpr int WTAPS = DENSE ? 1 : TAPS;       // taps in a weight row

    extern __shared__ unsigned char smem_raw[];  // [STAGES][A: TBM rows | B: BN rows], 128 B a row
    __shared__ uint32_t nb[WTAPS][TBM + 1];  // neighbour row of each (tap, tile row); +1: banks
    __shared__ uint32_t vox[TBM];           // the voxel of each tile row (ABSENT past the end)
    __shared__ uint32_t wg_taps_s[NWG];    // taps present in each warpgroup's 64 rows

    if constexpr (CHILDREN) {
        // The tile's slot; a tile past the last group has no rows (uniform: the whole block).
        const uint32_t slot = tile_slot[blockIdx.x];
        if (slot >= 8) return;
        weight += (size_t)slot * co * TAPS * ci;
        if (bias) bias += slot * co;
    }
    const uint32_t ring = (smem_addr(smem_raw) + (ALIGN - 1)) & ~(ALIGN - 1);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = tid >> 7;
    const int row0 = blockIdx.x * TBM, col0 = blockIdx.y * BN;

    uint32_t mask, my_taps;
    if constexpr (DENSE) {
        // Row row0 + r is its own (only) "neighbour"; rows past the end read and write nothing.
        if (tid < TBM) {
            const uint32_t v = row0 + tid < n ? (uint32_t)(row0 + tid) : ABSENT;
            vox[tid] = v;
            nb[0][tid] = v;
        }
        __syncthreads();
        mask = 1u;
        my_taps = ~0u;
    } else {
        if (tid < NWG) wg_taps_s[tid] = 0;
        conv_tile::load_neighbours<TBM, TNT>(nbr, order, n, row0, vox, nb, tid, n_rows);
        if (tid < TBM) {
            uint32_t m = 0;
#pragma unroll
            for (int k = 0; k < TAPS; ++k) m |= (nb[k][tid] != ABSENT ? 1u : 0u) << k;
            // Warps 0–1 hold rows 0–63 (warpgroup 0's), warps 2–3 rows 64–127, and so on.
            const uint32_t warp_taps = __reduce_or_sync(0xffffffffu, m);
            if (lane == 0 && warp_taps) atomicOr(&wg_taps_s[warp >> 1], warp_taps);
        }
        __syncthreads();
        mask = 0;
#pragma unroll
        for (int w = 0; w < NWG; ++w) mask |= wg_taps_s[w];
        my_taps = skip_groups ? wg_taps_s[wg] : ~0u;
    }
    const int steps = __popc(mask) * ((ci + BK - 1) / BK);

    // Copies: thread tid moves chunk (tid % CHUNKS) of rows tid / CHUNKS + i·TRPP of A and B.
    const int lrow = tid / CHUNKS, lchk = tid % CHUNKS;
    const uint32_t ldst = lrow * (BK * 2) + ((lchk ^ (lrow & 7)) << 4);
    auto load = [&](int tap, int c0, int slot) {
        const int cc = c0 + lchk * 8;
        const bool c_ok = cc < ci;
        const uint32_t a = ring + slot * STAGE_BYTES + ldst;
#pragma unroll
        for (int i = 0; i < TBM / TRPP; ++i) {
            const uint32_t src = nb[tap][lrow + i * TRPP];
            const bool ok = src != ABSENT && c_ok;
            cp_async16_s(a + i * TRPP * (BK * 2), ok ? feats + (size_t)src * ci + cc : feats, ok);
        }
        const uint32_t b = a + TA_BYTES;
        const size_t w_pass = (size_t)TRPP * WTAPS * ci;  // weight elements between copy passes
        const T *w = weight + ((size_t)(col0 + lrow) * WTAPS + tap) * ci + cc;
#pragma unroll
        for (int i = 0; i < BN / TRPP; ++i, w += w_pass) {
            const bool ok = col0 + lrow + i * TRPP < co && c_ok;
            cp_async16_s(b + i * TRPP * (BK * 2), ok ? w : weight, ok);
        }
    };
    // Cursors (tap = next set bit of the mask, channel offset): one for the copies, one for the
    // products (which need only the tap, to skip).
    conv_tile::TapCursor<BK> cursor(mask), product(mask);

    float acc[NACC];
#pragma unroll
    for (int i = 0; i < NACC; ++i) acc[i] = 0.f;

    // Descriptor low words of slot 0: this warpgroup's 64 A rows, and the BN B rows.
    const uint32_t da = desc_lo(ring + wg * (WG_ROWS * BK * 2));
    const uint32_t db = desc_lo(ring + TA_BYTES);

#pragma unroll
    for (int st = 0; st < LOOKAHEAD; ++st) {
        if (st < steps) {
            load(cursor.tap, cursor.c0, st);
            cursor.advance(ci);
        }
        cp_async_commit();
    }
    int rd = 0, wr = LOOKAHEAD;
    for (int s = 0; s < steps; ++s) {
        cp_async_wait<LOOKAHEAD - 1>();  // this thread's copies of step s have landed,
        fence_proxy_async();             // are visible to wgmma's async proxy,
        __syncthreads();                 // and everyone's are; slot wr is free (see the header)
        if (s + LOOKAHEAD < steps) {
            load(cursor.tap, cursor.c0, wr);
            cursor.advance(ci);
        }
        cp_async_commit();
        if ((my_taps >> product.tap) & 1u) {
            const uint32_t off = (rd * STAGE_BYTES) >> 4;
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < BK / 16; ++kk)
                Wgmma<T, BN>::ss(acc, desc(da + off + 2 * kk), desc(db + off + 2 * kk));
        }
        wgmma_commit();
        wgmma_wait<KEEP>();
        product.advance(ci);
        rd = rd + 1 == STAGES ? 0 : rd + 1;
        wr = wr + 1 == STAGES ? 0 : wr + 1;
    }
    wgmma_wait<0>();
    fence_regs(acc);
    cp_async_wait<0>();

    // Epilogue: d[4j + e] is row 16w' + g + 8·(e / 2) of this warpgroup, column 8j + 2t + e % 2.
    const int g = lane >> 2, t = lane & 3;
    const int r = wg * WG_ROWS + (warp & 3) * 16 + g;
    uint32_t v_row[2] = {vox[r], vox[r + 8]};
    if constexpr (CHILDREN) {
#pragma unroll
        for (int h = 0; h < 2; ++h)
            if (v_row[h] != ABSENT) v_row[h] = out_rows[row0 + r + 8 * h];
    }
    const bool pairs = (co & 1) == 0;
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
        const int col = col0 + j * 8 + 2 * t;
        if (col >= co) continue;
        const float b0 = bias ? bias[col] : 0.f;
        const float b1 = bias && col + 1 < co ? bias[col + 1] : 0.f;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            if (v_row[h] == ABSENT) continue;
            O *dst = out + (size_t)v_row[h] * co + col;
            float x0 = acc[4 * j + 2 * h] + b0, x1 = acc[4 * j + 2 * h + 1] + b1;
            if constexpr (DENSE) {
                x0 = activate(x0, act);
                x1 = activate(x1, act);
            }
            if (pairs) {
                store2<O>(dst, x0, x1);  // Co and col even: col + 1 < Co and the pair aligned
            } else {
                dst[0] = store<O>(x0);
                if (col + 1 < co) dst[1] = store<O>(x1);
            }
        }
    }
}

}  // namespace subm90

// Per instantiation: BN, ring stages, wgmma groups kept in flight; two blocks an SM when the
// ring is ≤ 100 KB (plus ≈ 15 KB of static arrays: 2 × 112 KB fits an SM's 228 KB).
#define SUBM90_1(NAME, T, O, BN, STAGES, KEEP)                                                        \
    extern "C" __global__ void __launch_bounds__(subm90::NTHREADS,                                  \
                                                 subm90::smem_bytes(BN, STAGES) <= 100 * 1024 ? 2 : 1) \
        NAME(const T *feats, const T *weight, const uint32_t *nbr, const uint32_t *order,           \
             const float *bias, O *out, int n, int ci, int co, int skip_groups) {                   \
        subm90::subm_conv<T, O, BN, STAGES, KEEP>(feats, weight, nbr, order, bias, out, n, ci, co,  \
                                                  skip_groups);                                     \
    }
// Kernel names `subm_conv3d_sm90a_<operands>_<output>_n<BN>_s<STAGES>_k<KEEP>` (built by
// `subm_conv3d` in src/ops/sparse_conv/cuda.rs).
#define SUBM90_2(T, TN, BN, STAGES, KEEP)                                                             \
    SUBM90_1(subm_conv3d_sm90a_##TN##_##TN##_n##BN##_s##STAGES##_k##KEEP, T, T, BN, STAGES, KEEP)     \
    SUBM90_1(subm_conv3d_sm90a_##TN##_f32_n##BN##_s##STAGES##_k##KEEP, T, float, BN, STAGES, KEEP)
#define SUBM90(BN, STAGES, KEEP)                                                                      \
    SUBM90_2(__nv_bfloat16, bf16, BN, STAGES, KEEP)                                                   \
    SUBM90_2(__half, f16, BN, STAGES, KEEP)

// The defaults (see the header): BN = 64 and 128 with a 96 KB ring, two blocks an SM, KEEP 0;
// BN = 256 with 4 × 48 KB, one block an SM, KEEP 1. The others are for A/B measurements.
static_assert(subm90::smem_bytes(64, 4) == 99328, "src/ops/sparse_conv/cuda.rs: subm_conv_sm90a_smem_bytes");
static_assert(subm90::smem_bytes(128, 3) == 99328, "src/ops/sparse_conv/cuda.rs: subm_conv_sm90a_smem_bytes");
static_assert(subm90::smem_bytes(128, 4) == 132096, "src/ops/sparse_conv/cuda.rs: subm_conv_sm90a_smem_bytes");
static_assert(subm90::smem_bytes(256, 4) == 197632, "src/ops/sparse_conv/cuda.rs: subm_conv_sm90a_smem_bytes");
SUBM90(64, 4, 0)
SUBM90(64, 4, 1)
SUBM90(128, 3, 0)
SUBM90(128, 3, 1)
SUBM90(128, 4, 0)
SUBM90(128, 4, 1)
SUBM90(256, 4, 0)
SUBM90(256, 4, 1)

// 256-row tiles at BN ≤ 128 (TRELLIS2_CONV_ROWS=256; see the header): four warpgroups, 512
// threads, one block an SM (a 4-stage ring of 48 or 40 KB plus ≈ 29 KB of static arrays).
// Names `subm_conv3d_sm90a_<operands>_<output>_m256_n<BN>_s<STAGES>_k<KEEP>`.
#define SUBM90W_1(NAME, T, O, BN, STAGES, KEEP)                                                       \
    extern "C" __global__ void __launch_bounds__(2 * 256, 1)                                        \
        NAME(const T *feats, const T *weight, const uint32_t *nbr, const uint32_t *order,           \
             const float *bias, O *out, int n, int ci, int co, int skip_groups) {                   \
        subm90::subm_conv<T, O, BN, STAGES, KEEP, false, 256>(feats, weight, nbr, order, bias, out, \
                                                              n, ci, co, skip_groups);              \
    }
#define SUBM90W_2(T, TN, BN, STAGES, KEEP)                                                            \
    SUBM90W_1(subm_conv3d_sm90a_##TN##_##TN##_m256_n##BN##_s##STAGES##_k##KEEP, T, T, BN, STAGES, KEEP) \
    SUBM90W_1(subm_conv3d_sm90a_##TN##_f32_m256_n##BN##_s##STAGES##_k##KEEP, T, float, BN, STAGES, KEEP)
#define SUBM90W(BN, STAGES, KEEP)                                                                     \
    SUBM90W_2(__nv_bfloat16, bf16, BN, STAGES, KEEP)                                                  \
    SUBM90W_2(__half, f16, BN, STAGES, KEEP)
static_assert(subm90::smem_bytes(64, 4, 256) == 164864, "src/ops/sparse_conv/cuda.rs: subm_conv_sm90a_smem_bytes");
static_assert(subm90::smem_bytes(128, 4, 256) == 197632, "src/ops/sparse_conv/cuda.rs: subm_conv_sm90a_smem_bytes");
SUBM90W(64, 4, 0)
SUBM90W(64, 4, 1)
SUBM90W(128, 4, 0)
SUBM90W(128, 4, 1)

// The C2S children conv (see the header): feats [P, Ci] and nbr [P, 27] of the P parents, weight
// [8C', 27, Ci], rows / out_rows [n_rows] (the row list), tile_slot [n_rows / 128], bias [8C']
// f32 or null, out [N', C']. Names `subm_conv3d_children_sm90a_<operands>_n<BN>_s<STAGES>_k<KEEP>`
// (`subm_conv3d_children` in src/ops/sparse_conv/cuda.rs), the conv's default pipelines.
#define SUBM90C_1(NAME, T, BN, STAGES, KEEP)                                                          \
    extern "C" __global__ void __launch_bounds__(subm90::NTHREADS,                                  \
                                                 subm90::smem_bytes(BN, STAGES) <= 100 * 1024 ? 2 : 1) \
        NAME(const T *feats, const T *weight, const uint32_t *nbr, const uint32_t *rows,            \
             const uint32_t *out_rows, const uint32_t *tile_slot, const float *bias, T *out,        \
             int parents, int n_rows, int ci, int co, int skip_groups) {                            \
        subm90::subm_conv<T, T, BN, STAGES, KEEP, false, subm90::BM, true>(                         \
            feats, weight, nbr, rows, bias, out, parents, ci, co, skip_groups, ACT_NONE, out_rows,  \
            tile_slot, n_rows);                                                                     \
    }
#define SUBM90C(BN, STAGES, KEEP)                                                                     \
    SUBM90C_1(subm_conv3d_children_sm90a_bf16_n##BN##_s##STAGES##_k##KEEP, __nv_bfloat16, BN, STAGES, KEEP) \
    SUBM90C_1(subm_conv3d_children_sm90a_f16_n##BN##_s##STAGES##_k##KEEP, __half, BN, STAGES, KEEP)
SUBM90C(64, 4, 0)
SUBM90C(128, 3, 0)
SUBM90C(256, 4, 1)

// The dense linear layer `y = act(x·Wᵀ + b)` (see the header): x [N, K],
// W [Co, K] in the operand type, b [Co] f32 or null, y [N, Co] in the operand type; K a multiple
// of 8, x and W 16-byte aligned. Names `linear_act_sm90a_<operands>_n<BN>_s<STAGES>_k<KEEP>`
// (src/ops/linear/cuda.rs).
#define LINEAR90_1(NAME, T, BN, STAGES, KEEP)                                                         \
    extern "C" __global__ void __launch_bounds__(subm90::NTHREADS,                                  \
                                                 subm90::smem_bytes(BN, STAGES) <= 100 * 1024 ? 2 : 1) \
        NAME(const T *x, const T *weight, const float *bias, T *out, int n, int k, int co, int act) { \
        subm90::subm_conv<T, T, BN, STAGES, KEEP, true>(x, weight, nullptr, nullptr, bias, out, n, k, \
                                                        co, 0, act);                                \
    }
#define LINEAR90(BN, STAGES, KEEP)                                                                    \
    LINEAR90_1(linear_act_sm90a_bf16_n##BN##_s##STAGES##_k##KEEP, __nv_bfloat16, BN, STAGES, KEEP)    \
    LINEAR90_1(linear_act_sm90a_f16_n##BN##_s##STAGES##_k##KEEP, __half, BN, STAGES, KEEP)
LINEAR90(64, 4, 0)
LINEAR90(128, 3, 0)
