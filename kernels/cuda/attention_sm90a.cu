// Variable-length flash attention forward for Hopper (sm_90a): the products run on the
// warpgroup tensor-core instruction wgmma.mma_async instead of mma.sync. Same operands, tile
// table and semantics as kernels/cuda/attention.cu (read its header first); head dims 64 and 128,
// bf16 or f16 operands, fp32 scores, softmax and accumulation. build.rs compiles this file (with
// -arch=sm_90a) only when CUDA_COMPUTE_CAP is 90, and src/ops/cuda.rs launches it only on a
// compute capability 9.0 device.
//
// q [Nq, H, D], k, v [Nk, H, D], out [Nq, H, D], contiguous; `tiles` holds one uint4 per CTA:
// (first query row, end query row, first key row, end key row) of one ≤128-row query tile.
// grid = (tiles, H), 256 threads, (BM + 4·BN)·D·2 bytes of dynamic shared memory
// (`attention_sm90a_smem_bytes` in src/ops/cuda.rs: 96 KB at D = 128, 48 KB at D = 64).
//
// Design, and why:
// - Two consumer warpgroups (4 warps, 128 threads each) own 64 query rows each: wgmma's M is
//   64 per warpgroup. They share K/V tiles of BN = 64 keys, double-buffered in shared memory and
//   loaded with cp.async by all 256 threads (no producer warp, no TMA, no mbarriers): one
//   __syncthreads per key tile both publishes tile j and frees the buffers of tile j−1.
// - S = Q·Kᵀ: 64×64 per warpgroup, D/16 wgmma m64n64k16 with A = Q and B = K both read from
//   shared memory through descriptors, both K-major (rows of q and k are contiguous in the
//   head dim, which is the reduction dim), so no transpose is needed.
// - O += P·V: 64×D per warpgroup, BN/16 wgmma m64nDk16 with A = P from registers (the scores,
//   exponentiated and rounded to T, never leave registers) and B = V from shared memory. V's
//   rows are keys (the reduction dim) with the head dim (N) contiguous: B is N-major, so these
//   wgmma pass imm-trans-b = 1 (allowed for 16-bit types).
// - Registers per thread: O is 64×D fp32 over 128 threads = D/2 (64 at D = 128), S 32, P 16.
//   That fits the 128 registers that two CTAs per SM (512 threads) leave, and 2 × 96 KB of
//   shared memory fits an SM's 228 KB: two CTAs, four warpgroups per SM, so one warpgroup's
//   softmax overlaps the other CTA's wgmma (the two warpgroups of one CTA run in step, since
//   they meet at every tile's barrier).
// - Each warpgroup waits for its own wgmma (wait_group 0) after S and after P·V: S is needed
//   for the softmax, and the P·V reads of V buffer j must be complete before the barrier of tile
//   j+1, after which buffer j is refilled with tile j+2.
// - Softmax exactly as the mma.sync kernel: log2 domain, scale folded into one FFMA per score
//   (needs scale_log2 > 0, which the host guarantees), O rescaled only when a row maximum of
//   the warp grew, keys past the sequence end (last tile only) set to −∞ and their K/V rows
//   zero-filled.
// - The output is normalised, rounded to T and staged through the warpgroup's own Q rows in
//   shared memory (no other warpgroup reads them, and its own wgmma reads of them have
//   completed), so that global stores are whole 16-byte row chunks.
//
// Shared-memory tiles ("no swizzle" / interleave mode). wgmma reads operands as 8×8 core
// matrices of 16-bit elements: 8 rows of 16 bytes, the 8 rows stored contiguously (128 bytes).
// Every tile here (Q: BM rows × D, K and V: BN rows × D; a row is one token's head vector) is
// stored as a grid of such core matrices, row-group fastest:
//     byte(r, c) = ((c / 8) · (R / 8) + r / 8) · 128 + (r % 8) · 16 + (c % 8) · 2,  R = rows of the tile.
// So core matrix (row group rg, 8-column chunk ch) sits at (ch · R/8 + rg) · 128: neighbours in
// r are 128 bytes apart, neighbours in c are R·16 bytes apart.
//
// Matrix descriptors (64 bits): bits 0–13 start address >> 4, 16–29 leading-dimension byte
// offset (LBO) >> 4, 32–45 stride-dimension byte offset (SBO) >> 4, 49–51 base offset (0: no
// swizzle), 62–63 swizzle mode (0: none). Without swizzling, LBO is the distance between two
// core matrices adjacent in the K (reduction) dimension and SBO between two adjacent in the M or
// N dimension, for K-major and MN-major operands alike (for MN-major each core matrix is 8
// K-rows of 8 contiguous M/N elements).
// - A = Q (M = query rows, K = head dim, K-major), warpgroup w, k-step kk (dims 16kk..16kk+15):
//   start = Q + (2kk · BM/8 + 8w) · 128, LBO = BM · 16 (next dim chunk), SBO = 128 (next 8 rows).
// - B = K (N = keys, K = head dim, K-major), k-step kk: start = K + 2kk · (BN/8) · 128,
//   LBO = BN · 16 (next dim chunk), SBO = 128 (next 8 keys).
// - B = V (K = keys, N = head dim, N-major): a core matrix is 8 keys × 8 contiguous dims, the
//   same 8×16-byte blocks the K layout has; k-step kk (keys 16kk..16kk+15): start = V + 2kk ·
//   128, LBO = 128 (next 8 keys: the K dimension), SBO = BN · 16 (next 8 dims: the N dimension).
//   [If P·V ever comes out wrong while Q·Kᵀ is right, this LBO/SBO pair is the first suspect.]
//
// cp.async writes: a phase of eight lanes writes eight 16-byte pieces; lanes 8i..8i+7 take rows
// r0..r0+7 of one dim chunk, whose pieces land at (r % 8) · 16 within one core matrix: eight
// distinct bank groups, no conflict. In global memory each lane octet reads one 16-byte chunk of
// 8 rows and the four octets of a warp four consecutive chunks: 64 contiguous bytes per row, two
// whole sectors.
//
// wgmma register fragments (PTX ISA, m64nNk16, lane = 4g + t, warp w' of the warpgroup):
// - D (fp32 accumulators, N/2 per thread): d[4n + e] holds row 16w' + g + 8·(e / 2), column
//   8n + 2t + (e % 2), for n = 0 .. N/8 − 1: per warp, exactly the m16n8 C layout of mma.sync
//   repeated over the N/8 column blocks.
// - A from registers (16-bit, four .b32 per thread): a0 = (row 16w' + g, k 2t, 2t+1),
//   a1 = (row +8, k 2t, 2t+1), a2 = (row g, k 2t+8, 2t+9), a3 = (row g+8, k 2t+8, 2t+9): the
//   m16n8k16 A layout of the warp's 16 rows. So the D fragment of S column blocks 2kk, 2kk+1
//   is, pair by pair, the A fragment of P for k-step kk (keys 16kk..16kk+15).
//
// Protocol: wgmma.fence before the first wgmma of each batch (their accumulators or A registers
// were written by ordinary instructions); wgmma.commit_group after the batch; wgmma.wait_group 0
// before the results are read. The accumulators are untouched between issue and wait. After the
// cp.async copies of a tile land (cp.async.wait_group), each thread issues
// fence.proxy.async.shared::cta so that its generic-proxy writes are visible to the async proxy
// that wgmma reads through, then the __syncthreads publishes them to every warpgroup.
#include "common.cuh"

namespace sm90a {

constexpr int BM = 128;     // query rows per CTA (the host tile table's tile)
constexpr int BN = 64;      // keys per tile
constexpr int WG_ROWS = 64; // query rows per warpgroup (wgmma M)
constexpr int NTHREADS = 256;

__device__ __forceinline__ float exp2_approx(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ uint32_t smem_addr(const void *p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// cp.async to a shared-memory address (state space address, not a generic pointer).
__device__ __forceinline__ void cp_async16_s(uint32_t s, const void *gmem, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 16 : 0));
}

// Descriptor of a no-swizzle operand (see the header), kept as its low word: start address >> 4
// and LBO >> 4; the high word (SBO >> 4, base offset 0, swizzle 0) is a compile-time constant,
// so advancing a descriptor is one 32-bit add. Shared addresses stay below 2^18, so the 14-bit
// start field never carries into the LBO field.
__device__ __forceinline__ uint32_t desc_lo(uint32_t addr, uint32_t lbo) { return ((addr & 0x3FFFF) >> 4) | ((lbo >> 4) << 16); }
template <uint32_t SBO> __device__ __forceinline__ uint64_t desc(uint32_t lo) {
    return static_cast<uint64_t>(lo) | (static_cast<uint64_t>(SBO >> 4) << 32);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Pins accumulator registers in program order: the compiler sees a wgmma's results as ready at
// its issue, so without this it could move their uses above wgmma.wait_group.
// Before wgmma.fence it also keeps the last ordinary writes of a wgmma's operand registers
// (the O rescale, the P packing) above the fence, where the protocol needs them.
template <int N> __device__ __forceinline__ void fence_regs(float (&r)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N> __device__ __forceinline__ void fence_regs(uint32_t (&r)[N][4]) {
#pragma unroll
    for (int i = 0; i < N; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(r[i][j])::"memory");
}
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// d[64×64] += A[64×16] · B[16×64], A and B from shared memory, both K-major.
template <typename T> __device__ __forceinline__ void wgmma_ss_n64(float (&d)[32], uint64_t a, uint64_t b);
// d[64×64] = A[64×16] · B[16×64] (scale-d = 0: d is only written, so nothing has to zero it
// between wgmma.fence and the wgmma).
template <typename T> __device__ __forceinline__ void wgmma_ss_n64_first(float (&d)[32], uint64_t a, uint64_t b);
// d[64×N] += A[64×16] · B[16×N], A from registers, B from shared memory N-major (imm-trans-b = 1).
template <typename T, int N>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t b);

template <> __device__ __forceinline__ void wgmma_ss_n64_first<__nv_bfloat16>(float (&d)[32], uint64_t a, uint64_t b) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, 0, 1, 1, 0, 0;\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3]), "=f"(d[4]), "=f"(d[5]), "=f"(d[6]), "=f"(d[7]), "=f"(d[8]), "=f"(d[9]), "=f"(d[10]), "=f"(d[11]), "=f"(d[12]), "=f"(d[13]), "=f"(d[14]), "=f"(d[15]), "=f"(d[16]), "=f"(d[17]), "=f"(d[18]), "=f"(d[19]), "=f"(d[20]), "=f"(d[21]), "=f"(d[22]), "=f"(d[23]), "=f"(d[24]), "=f"(d[25]), "=f"(d[26]), "=f"(d[27]), "=f"(d[28]), "=f"(d[29]), "=f"(d[30]), "=f"(d[31])
                 : "l"(a), "l"(b));
}
template <> __device__ __forceinline__ void wgmma_ss_n64_first<__half>(float (&d)[32], uint64_t a, uint64_t b) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, 0, 1, 1, 0, 0;\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3]), "=f"(d[4]), "=f"(d[5]), "=f"(d[6]), "=f"(d[7]), "=f"(d[8]), "=f"(d[9]), "=f"(d[10]), "=f"(d[11]), "=f"(d[12]), "=f"(d[13]), "=f"(d[14]), "=f"(d[15]), "=f"(d[16]), "=f"(d[17]), "=f"(d[18]), "=f"(d[19]), "=f"(d[20]), "=f"(d[21]), "=f"(d[22]), "=f"(d[23]), "=f"(d[24]), "=f"(d[25]), "=f"(d[26]), "=f"(d[27]), "=f"(d[28]), "=f"(d[29]), "=f"(d[30]), "=f"(d[31])
                 : "l"(a), "l"(b));
}
template <> __device__ __forceinline__ void wgmma_ss_n64<__nv_bfloat16>(float (&d)[32], uint64_t a, uint64_t b) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, 1, 1, 1, 0, 0;\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "l"(a), "l"(b));
}
template <> __device__ __forceinline__ void wgmma_rs<__nv_bfloat16, 64>(float (&d)[32], const uint32_t (&a)[4], uint64_t b) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, 1, 1, 1, 1;\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}
template <> __device__ __forceinline__ void wgmma_rs<__nv_bfloat16, 128>(float (&d)[64], const uint32_t (&a)[4], uint64_t b) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, 1, 1, 1, 1;\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}
template <> __device__ __forceinline__ void wgmma_ss_n64<__half>(float (&d)[32], uint64_t a, uint64_t b) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, 1, 1, 1, 0, 0;\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "l"(a), "l"(b));
}
template <> __device__ __forceinline__ void wgmma_rs<__half, 64>(float (&d)[32], const uint32_t (&a)[4], uint64_t b) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, 1, 1, 1, 1;\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}
template <> __device__ __forceinline__ void wgmma_rs<__half, 128>(float (&d)[64], const uint32_t (&a)[4], uint64_t b) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, 1, 1, 1, 1;\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}

// The accumulator arrays must be pinned in registers across the asm statements: every index
// below is a compile-time constant after unrolling.
template <typename T, int D>
__device__ __forceinline__ void flash_fwd(const T *__restrict__ q, const T *__restrict__ k,
                                          const T *__restrict__ v, T *__restrict__ out,
                                          const uint4 *__restrict__ tiles, int heads, float scale_log2,
                                          int q_stride, int k_stride, int v_stride) {
    constexpr int CH = D / 8;               // 16-byte chunks per row
    constexpr int QBYTES = BM * D * 2;
    constexpr int KVBYTES = BN * D * 2;
    extern __shared__ __align__(128) unsigned char smem[];
    // [Q: BM×D][K buffer 0][K buffer 1][V buffer 0][V buffer 1], each in the core-matrix layout.
    const uint32_t sQ = smem_addr(smem);
    const uint32_t sK = sQ + QBYTES, sV = sK + 2 * KVBYTES;

    const uint4 ti = tiles[blockIdx.x];
    const int q0 = ti.x, q1 = ti.y, k0 = ti.z, k1 = ti.w;
    const int h = blockIdx.y;
    const int tid = threadIdx.x, lane = tid & 31, wg = tid >> 7, wl = (tid >> 5) & 3;
    const int g = lane >> 2, t = lane & 3;
    // Token strides of q, k, v (row views of a fused projection allowed); out is contiguous.
    const size_t rs = (size_t)heads * D, qs = q_stride, ks = k_stride, vs = v_stride;
    const T *qh = q + (size_t)h * D, *kh = k + (size_t)h * D, *vh = v + (size_t)h * D;

    // Copy mapping (all 256 threads): lane octet j = tid / 8 takes chunk j % CH of row group
    // j / CH, lane i = tid % 8 row i of that group; one pass covers PASS_ROWS rows.
    constexpr int GROUPS = (NTHREADS / 8) / CH;  // row groups per pass
    constexpr int PASS_ROWS = 8 * GROUPS;
    const int ci = tid & 7, cj = tid >> 3;
    const int cp_row = (cj / CH) * 8 + ci, cp_chunk = cj % CH;
    // Byte offset of (cp_row, cp_chunk) in an R-row tile; pass p adds p · GROUPS · 128.
    auto cp_off = [&](int R) { return (uint32_t)((cp_chunk * (R / 8) + cp_row / 8) * 128 + ci * 16); };
    const uint32_t kv_off = cp_off(BN);
    auto load_tile = [&](uint32_t dst, const T *src, size_t src_stride, int kt) {
        const T *row = src + (size_t)(kt + cp_row) * src_stride + cp_chunk * 8;
        const size_t pass_stride = (size_t)PASS_ROWS * src_stride;
        if (kt + BN <= k1) {
#pragma unroll
            for (int p = 0; p < BN / PASS_ROWS; ++p, row += pass_stride)
                cp_async16_s(dst + kv_off + p * GROUPS * 128, row, true);
        } else {
            const int rows_left = k1 - kt - cp_row;
#pragma unroll
            for (int p = 0; p < BN / PASS_ROWS; ++p, row += pass_stride) {
                const bool ok = p * PASS_ROWS < rows_left;
                cp_async16_s(dst + kv_off + p * GROUPS * 128, ok ? row : src, ok);
            }
        }
    };

    {
        const uint32_t q_off = cp_off(BM);
        const T *row = qh + (size_t)(q0 + cp_row) * qs + cp_chunk * 8;
#pragma unroll
        for (int p = 0; p < BM / PASS_ROWS; ++p, row += (size_t)PASS_ROWS * qs) {
            const bool ok = q0 + cp_row + p * PASS_ROWS < q1;
            cp_async16_s(sQ + q_off + p * GROUPS * 128, ok ? row : qh, ok);
        }
    }
    load_tile(sK, kh, ks, k0);
    load_tile(sV, vh, vs, k0);
    cp_async_commit();

    // Descriptors (low words; see the header), advanced per k-step and buffer.
    const uint32_t dq = desc_lo(sQ + wg * (WG_ROWS / 8) * 128, BM * 16);
    const uint32_t dk = desc_lo(sK, BN * 16);
    const uint32_t dv = desc_lo(sV, 128);

    // o[4n + e]: row 16·wl + g + 8·(e/2) of this warpgroup, column 8n + 2t + e%2 (the D fragment).
    float o[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

    int buf = 0;
    for (int kt = k0; kt < k1; kt += BN, buf ^= 1) {
        cp_async_wait<0>();    // this thread's copies of tile kt (and Q) have landed,
        fence_proxy_async();   // are visible to wgmma's async proxy,
        __syncthreads();       // and everyone's are; every warpgroup is done with tile kt − BN
        if (kt + BN < k1) {
            load_tile(sK + (buf ^ 1) * KVBYTES, kh, ks, kt + BN);
            load_tile(sV + (buf ^ 1) * KVBYTES, vh, vs, kt + BN);
        }
        cp_async_commit();

        // S = Q·Kᵀ (64 rows × 64 keys per warpgroup).
        float s[BN / 2];
        wgmma_fence();
        wgmma_ss_n64_first<T>(s, desc<128>(dq), desc<128>(dk + ((buf * KVBYTES) >> 4)));
#pragma unroll
        for (int kk = 1; kk < D / 16; ++kk)
            wgmma_ss_n64<T>(s, desc<128>(dq + ((kk * 2 * BM * 16) >> 4)),
                            desc<128>(dk + ((buf * KVBYTES + kk * 2 * BN * 16) >> 4)));
        wgmma_commit();
        wgmma_wait<0>();
        fence_regs(s);

        // Keys past the sequence end (last tile only) score −∞.
        if (kt + BN > k1) {
#pragma unroll
            for (int n = 0; n < BN / 8; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    if (kt + n * 8 + 2 * t + (e & 1) >= k1) s[4 * n + e] = -INFINITY;
        }

        // Online softmax (see attention.cu): row g in s[4n + 0, 1], row g + 8 in s[4n + 2, 3],
        // each row spread over the four lanes of a quad.
        float alpha[2];
        bool grew = false;
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float mx = -INFINITY;
#pragma unroll
            for (int n = 0; n < BN / 8; ++n) mx = fmaxf(mx, fmaxf(s[4 * n + 2 * r], s[4 * n + 2 * r + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float mn = fmaxf(m[r], mx * scale_log2);  // key kt is valid: finite
            grew |= mn > m[r];
            alpha[r] = mn > m[r] ? exp2_approx(m[r] - mn) : 1.f;
            m[r] = mn;
        }
        if (__any_sync(0xffffffffu, grew)) {
            l[0] *= alpha[0];
            l[1] *= alpha[1];
#pragma unroll
            for (int n = 0; n < D / 8; ++n) {
                o[4 * n + 0] *= alpha[0];
                o[4 * n + 1] *= alpha[0];
                o[4 * n + 2] *= alpha[1];
                o[4 * n + 3] *= alpha[1];
            }
        }
        uint32_t p[BN / 16][4];
#pragma unroll
        for (int n = 0; n < BN / 8; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[4 * n + e] = exp2_approx(fmaf(s[4 * n + e], scale_log2, -m[e >> 1]));
                l[e >> 1] += s[4 * n + e];  // quad-reduced once, at the end
            }
            // Column block n is half of P's k-step n/2: a0, a1 for even n, a2, a3 for odd n.
            p[n / 2][(n & 1) * 2 + 0] = pack2<T>(s[4 * n + 0], s[4 * n + 1]);
            p[n / 2][(n & 1) * 2 + 1] = pack2<T>(s[4 * n + 2], s[4 * n + 3]);
        }

        // O += P·V (64 rows × D per warpgroup), 16 keys per wgmma.
        fence_regs(o);
        fence_regs(p);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk)
            wgmma_rs<T, D>(o, p[kk], desc<BN * 16>(dv + ((buf * KVBYTES + kk * 2 * 128) >> 4)));
        wgmma_commit();
        wgmma_wait<0>();
        fence_regs(o);
    }

    // Normalise, round and stage this warpgroup's rows in its own Q rows (core-matrix layout:
    // a warp's 32 four-byte writes of one column block hit 32 distinct banks), then copy them out
    // as 16-byte chunks with the load's row/chunk mapping restricted to the warpgroup.
    T *stage = reinterpret_cast<T *>(smem);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float lr = l[r];
        lr += __shfl_xor_sync(0xffffffffu, lr, 1);
        lr += __shfl_xor_sync(0xffffffffu, lr, 2);
        const float inv = lr > 0.f ? 1.f / lr : 0.f;
        const int row = wg * WG_ROWS + wl * 16 + r * 8 + g;
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            const int off = ((n * (BM / 8) + row / 8) * 128 + (row % 8) * 16 + t * 4) / 2;
            *reinterpret_cast<uint32_t *>(stage + off) = pack2<T>(o[4 * n + 2 * r] * inv, o[4 * n + 2 * r + 1] * inv);
        }
    }
    // Only this warpgroup's 128 threads take part (named barrier 1 + wg; 0 is __syncthreads).
    if (wg == 0)
        asm volatile("bar.sync 1, 128;\n" ::: "memory");
    else
        asm volatile("bar.sync 2, 128;\n" ::: "memory");
    constexpr int WG_GROUPS = 16 / CH;  // row groups per pass of 128 threads
    const int wtid = tid & 127, oj = wtid >> 3;
    const int orow = wg * WG_ROWS + (oj / CH) * 8 + ci, ochunk = oj % CH;
    T *oh = out + (size_t)h * D;
#pragma unroll
    for (int pass = 0; pass < WG_ROWS / (8 * WG_GROUPS); ++pass) {
        const int row = orow + pass * 8 * WG_GROUPS;
        if (q0 + row < q1) {
            const int off = ((ochunk * (BM / 8) + row / 8) * 128 + ci * 16) / 2;
            *reinterpret_cast<uint4 *>(oh + (size_t)(q0 + row) * rs + ochunk * 8) =
                *reinterpret_cast<const uint4 *>(stage + off);
        }
    }
}

} // namespace sm90a

// Dynamic shared memory of one CTA, as `attention_sm90a_smem_bytes` in src/ops/cuda.rs computes it.
static_assert((sm90a::BM + 4 * sm90a::BN) * 128 * 2 == 98304, "smem layout");

#define FLASH90(NAME, T, D)                                                                          \
    extern "C" __global__ void __launch_bounds__(sm90a::NTHREADS, 2)                                 \
        NAME(const T *q, const T *k, const T *v, T *out, const uint4 *tiles, int heads, float scale_log2, \
             int q_stride, int k_stride, int v_stride) {                                             \
        sm90a::flash_fwd<T, D>(q, k, v, out, tiles, heads, scale_log2, q_stride, k_stride, v_stride); \
    }

FLASH90(flash_attn_sm90a_bf16_d64, __nv_bfloat16, 64)
FLASH90(flash_attn_sm90a_bf16_d128, __nv_bfloat16, 128)
FLASH90(flash_attn_sm90a_f16_d64, __half, 64)
FLASH90(flash_attn_sm90a_f16_d128, __half, 128)
