// Variable-length flash attention forward for Hopper (sm_90a): the products run on the
// warpgroup tensor-core instruction wgmma.mma_async instead of mma.sync. Same operands, tile
// table and semantics as kernels/cuda/attention.cu (read its header first); head dims 64 and 128,
// bf16 or f16 operands, fp32 scores, softmax and accumulation. build.rs compiles this file (with
// -arch=sm_90a) only when CUDA_COMPUTE_CAP is 90, and src/ops/attention/cuda.rs launches it only on a
// compute capability 9.0 device.
//
// q [Nq, H, D], k, v [Nk, H, D], out [Nq, H, D], contiguous; `tiles` holds one uint4 per CTA:
// (first query row, end query row, first key row, end key row) of one ≤BM = 128-row query tile
// (src/ops/attention/cuda.rs: ATTN_SM90A_TILE). grid = (tiles, H), 256 threads (two warpgroups),
// (BM + 2·STAGES·BN)·D·2 bytes of tiles, 64 bytes for the mbarriers and 1024 bytes of slack for
// the run-time 1024-byte alignment of the tiles, of dynamic shared memory
// (`attention_sm90a_smem_bytes` in src/ops/attention/cuda.rs: 224 KB + 1088 bytes at D = 128, 112 KB + 1088
// at D = 64): one CTA per SM.
//
// Design, and why (the first version — 64-key tiles, two buffers, every wgmma group waited for
// at once, 2 CTAs per SM at 128 registers — was slower than the mma.sync kernel: the tensor
// cores idled during each softmax):
// - Two warpgroups (4 warps, 128 threads each) own 64 query rows each: wgmma's M is 64 per
//   warpgroup. They share K/V tiles of BN = 128 keys in a ring of STAGES = 3 buffers, filled
//   with cp.async by all 256 threads one tile ahead: in iteration j, once S(j) and
//   P(j−1)·V(j−1) are issued, tile j + 1 goes into the buffer of tile j − 2. No CTA-wide
//   barrier per tile: two mbarriers per stage hand the buffers over, so the two warpgroups
//   drift apart (by up to about a tile) and one's softmax can overlap the other's wgmma.
//     full[s]  (count 256): each thread's cp.async.mbarrier.arrive.noinc after its copies of
//              the stage's tile — the arrival fires when they have landed. A warpgroup waits
//              on it (parity (j / 3) & 1 for tile j), then fence.proxy.async.shared::cta so
//              that its wgmma (async proxy) see the copies.
//     empty[s] (count 256): each thread arrives once its wait_group 0 has retired the last
//              wgmma reading the stage (P(j)·V(j), in iteration j + 1), and only for tiles a
//              later copy will replace (j + 3 < tiles); a thread waits on it (parity
//              (j / 3 − 1) & 1) before copying tile j into the stage of tile j − 3.
//   Neither can be arrived at twice in one phase: refilling a stage needs its empty phase,
//   which needs every thread past the full phase of the tile it held, and vice versa.
//   [If results are ever stale or racy while the __syncthreads version (the parent commit)
//   is right, the reader-side proxy fence after the full wait is the first suspect.]
// - Intra-warpgroup pipelining: in iteration j a warpgroup issues S(j) = Q·K(j)ᵀ and then
//   O += P(j−1)·V(j−1) as two wgmma groups, waits only for the first (wait_group 1), and does
//   the softmax of S(j) (row maxima, exp2, row sums, in place in S's registers) while the tensor
//   cores still run P(j−1)·V(j−1); then wait_group 0, rescale O and pack P(j) over P(j−1). The
//   online-softmax algebra allows it: P(j−1) was exponentiated against the running maximum
//   m(j−1), so O is rescaled by 2^(m(j−1) − m(j)) after P(j−1)·V(j−1) has been added and before
//   P(j)·V(j) is. P(j) is packed only after the wait: its registers are P(j−1)'s, an operand of
//   the wgmma in flight (a second P array costs 32 registers, and copying it into the first
//   makes ptxas serialise every wgmma of the kernel, C7513).
// - Two things keep ptxas from undoing the overlap (checked in the SASS: all BN/2 MUFU.EX2 of
//   the softmax sit between WARPGROUP.DEPBAR.LE gsb0 1 and 0): the wait_group 0 sits behind a
//   branch (ptxas schedules a WARPGROUP.DEPBAR as early as its basic block allows), and the
//   last key tile, the only masked one, has its own copy of the loop body that masks by selects
//   (a branch inside the softmax makes the join the start of the wait's block).
// - Registers: O (D/2), S (BN/2 = 64), P (BN/4 = 32), ≈ 160 at D = 128 plus addresses: 208
//   (164 at D = 64; ptxas of CUDA 13, no spills), so one CTA of 256 threads per SM, and the shared
//   memory that a second CTA would have had goes to the third stage and the 128-key tiles
//   (half the per-tile waits and shuffle reductions of BN = 64). The copy loop is kept rolled
//   (#pragma unroll 1): unrolled, its hoisted addresses cost registers.
// - A dedicated producer warp (copies and named-barrier hand-off) was tried: with 288 or 384
//   threads ptxas caps the kernel at 168 registers, and the pipelined consumers (then with two
//   P arrays) spilled. So the consumers copy, and the mbarriers above decouple them instead.
//   The warp-specialised variant at the end of this file revisits it: with the consumers'
//   setmaxnreg.inc to 240 executed by whole warpgroups right after the role branch, ptxas of
//   CUDA 13 allocates the consumer code past 168 (194 registers in the SASS at D = 128, no
//   spills; `ptxas -v` still prints the launch count, 168).
// - S = Q·Kᵀ: D/16 wgmma m64n128k16 with A = Q and B = K both read from shared memory through
//   descriptors, both K-major (rows of q and k are contiguous in the head dim, which is the
//   reduction dim), so no transpose is needed. The first of them has scale-d = 0.
// - O += P·V: BN/16 wgmma m64nDk16 with A = P from registers (the scores, exponentiated and
//   rounded to T, never leave registers) and B = V from shared memory. V's rows are keys (the
//   reduction dim) with the head dim (N) contiguous: B is N-major, so these wgmma pass
//   imm-trans-b = 1 (allowed for 16-bit types).
// - Softmax exactly as the mma.sync kernel: log2 domain, scale folded into one FFMA per score
//   (needs scale_log2 > 0, which the host guarantees), O rescaled only when a row maximum of
//   the warp grew, keys past the sequence end (last tile only) set to −∞ and their K/V rows
//   zero-filled (so that 0 · V stays 0). The first key of every tile is valid, so every row
//   maximum is finite.
// - The output is normalised, rounded to T and staged through the warpgroup's own Q rows in
//   shared memory (no other warpgroup reads them, its own wgmma reads of them have completed,
//   and Q is copied only before tile 0), so that global stores are whole 16-byte row chunks.
//
// Shared-memory tiles: wgmma's 128-byte swizzle (SW128), and why. The first layout was the
// no-swizzle core-matrix ("interleave") one, in which an 8-row × 16-byte core matrix is 128
// contiguous bytes; to write such a matrix without bank conflicts a lane octet had to copy 8
// rows' same 16-byte chunk, so every warp cp.async instruction touched 8 rows × 64 bytes: 8
// distinct 128-byte lines. ncu (--set full, N = 15000, 12 heads × 128, bf16): L2 cache throughput
// 77.8% (Mem Busy 78%) against 40% for the mma.sync kernel, which moves the same bytes (K and V
// once per CTA, the same 1416 CTAs) in whole 128-byte row segments; tensor pipe ≈ 32% busy,
// stalls mostly L1TEX scoreboard (waiting on the copies), issue slots 23% busy: L2 request (tag)
// throughput was the limit, at about twice the mma.sync kernel's requests per byte. 5.55 ms vs
// 4.66 ms (N = 15000), 62 vs 39 ms (N = 49152).
// SW128 lets 8 consecutive lanes copy one row's 128 contiguous bytes (a warp instruction = 4 rows
// × 128 bytes, 4 whole lines) and still write shared memory without conflicts:
// - A tile of R rows × D (Q: BM rows, K and V: BN rows; a row is one token's head vector) is
//   D/64 column blocks ("atom columns"), block b = columns 64b..64b+63 at tile + b·R·128, each
//   [R rows][128 bytes]; 16-byte chunk c (columns 64b + 8c .. +7) of row r sits at chunk
//   position c ^ (r & 7) of the row's 128 bytes:
//       byte(r, col) = (col / 64)·R·128 + r·128 + (((col % 64) / 8) ^ (r % 8))·16 + (col % 8)·2.
//   8 rows = one 1024-byte swizzle atom. The hardware applies the XOR to the final address
//   (bits 4–6 ^= bits 7–9), so every block base must be 1024-byte aligned: the dynamic shared
//   memory is rounded up to 1024 at run time (the host adds 1024 bytes of slack; the alignment
//   of the dynamic window is not something to rely on), and every tile / block / warpgroup
//   offset is a multiple of 1024 (Q 16 or 32 KB, a block BM·128 or BN·128 = 16 KB, a K or V
//   tile 16 or 32 KB, a warpgroup's Q rows 8 KB). 224 KB + 64 + 1024 ≤ 227 KB.
// - Layout: [Q: BM×D][stage 0: K BN×D, V BN×D][stage 1: K, V][stage 2: K, V][mbarriers].
//
// Matrix descriptors (64 bits): bits 0–13 start address >> 4, 16–29 leading-dimension byte
// offset (LBO) >> 4, 32–45 stride-dimension byte offset (SBO) >> 4, 49–51 base offset (0: every
// atom is 1024-aligned), 62–63 layout type (1: 128-byte swizzle).
// - K-major operands (A = Q, B = K of S = Q·Kᵀ; the head dim is their K dimension and is
//   contiguous): SBO = 1024 (next 8 rows: the next atom along M / N), LBO unused for a swizzled
//   K-major operand whose k16 slice lies inside one 128-byte row (field 1 by convention). k16
//   step kk (dims 16kk..16kk+15) of a 64-wide column block starts 32·kk bytes along the row (the
//   start moves along the unswizzled row; the swizzle is applied to the final address), so
//   k-steps 0..3 are block 0 + 32kk and 4..7 (D = 128) block 1 + 32(kk − 4). Exactly the encoding
//   of kernels/cuda/sparse_conv_sm90a.cu, verified on an H100.
//     A = Q, warpgroup w: start = Q + w·64·128 (+ block, + 32kk); B = K: start = K (+ block, + 32kk).
// - MN-major operand (B = V of O += P·V, imm-trans-b = 1): its K dimension is the keys (V's rows),
//   N the head dim (contiguous). V is stored exactly as K is; for an MN-major SW128 operand the
//   atom is 64 N-elements (one 128-byte row, contiguous) × 8 K-positions (8 keys = 8 rows, 1024
//   bytes), chunk-swizzled by key % 8 — which is this layout. PTX ISA ("Shared Memory Matrix
//   Layout", strides normalised to 128-bit elements): for MN-major swizzled layouts LBO is the
//   offset from the first (swizzle bytes / 16) = 8 normalised rows — 8 × 8 = 64 N-elements — to
//   the next 8, i.e. between atoms along N; SBO is the offset from the first 8 columns (K
//   positions) to the next 8, i.e. between atoms along K. CUTLASS's make_gmma_desc agrees
//   (Major::MN, swizzled: canonical ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO))). (Interleave mode has
//   the roles the other way round — the no-swizzle version of this kernel used LBO = next 8
//   keys, SBO = next 8 dims, verified on an H100 — so swizzled MN-major is where a mix-up would
//   be.) So: LBO = BN·128 (V's column block 1: dims 64..127; unused at D = 64), SBO = 1024 (next
//   8 keys); k16 step kk (keys 16kk..16kk+15) starts at V + kk·2048 (two 8-key atoms).
//   V_LBO / V_SBO below hold the pair: if P·V fails parity (Q·Kᵀ uses the verified K-major
//   encoding), swapping them (V_DESC_SWAP = true) is the first thing to try.
//
// Copies (load_rows), the sparse conv kernel's mapping: thread t (of 256) copies 16-byte chunk
// t % 8 of rows t / 8 + 32i (i = 0 .. R/32 − 1) of every column block, to chunk position
// (t % 8) ^ (row & 7) (constant per thread: 32 is a multiple of 8). A warp instruction reads 4
// rows × 128 contiguous bytes of global memory (whole lines where the row offsets are 128-byte
// aligned) and writes 4 × 128 bytes of shared memory: each 8-lane phase covers all 32 banks
// once. Rows past the sequence end are zero-filled (cp.async src-size 0).
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
// were written by ordinary instructions); wgmma.commit_group after each of the two groups;
// wgmma.wait_group 1 before S is read, 0 before O is touched again or P is rewritten. The
// accumulators and the in-flight P fragment are untouched between issue and wait; empty asm
// statements that "modify" them (fence_regs) pin every ordinary use on the right side of the
// fence and the waits. Copies become visible to wgmma (the async proxy) through the full
// mbarrier's phase and the waiting thread's fence.proxy.async.shared::cta, in that order.
#include "common.cuh"

namespace sm90a {

constexpr int BM = 128;     // query rows per CTA (the host tile table's tile)
constexpr int BN = 128;     // keys per tile
constexpr int STAGES = 3;   // K/V ring depth
constexpr int WG_ROWS = 64; // query rows per warpgroup (wgmma M)
constexpr int NTHREADS = 256;  // two warpgroups
constexpr int BAR_OUT = 1;     // + warpgroup: named barriers of one warpgroup's 128 threads
constexpr uint32_t ALIGN = 1024;  // 128-byte swizzle atom: 8 rows × 128 bytes
constexpr int CHUNKS = 8;         // 16-byte chunks of a 128-byte swizzled row
constexpr int RPP = NTHREADS / CHUNKS;  // rows per copy pass (32, a multiple of 8: a thread's
                                        // rows all share one swizzled chunk position)
// Descriptor strides (bytes) of V, the MN-major operand of O += P·V (see the header): LBO =
// between 64-dim column blocks (N), SBO = between 8-key atoms (K), as the PTX ISA and CUTLASS
// define them for swizzled MN-major layouts. >>> If P·V fails parity while the K-major Q·Kᵀ
// is right, set V_DESC_SWAP = true (LBO and SBO trade places) and rerun the tests. <<<
constexpr bool V_DESC_SWAP = false;
constexpr uint32_t V_N_STRIDE = BN * 128;  // V's column block 1 (dims 64..127) from block 0
constexpr uint32_t V_K_STRIDE = ALIGN;     // next 8 keys
constexpr uint32_t V_LBO = V_DESC_SWAP ? V_K_STRIDE : V_N_STRIDE;
constexpr uint32_t V_SBO = V_DESC_SWAP ? V_N_STRIDE : V_K_STRIDE;
static_assert(V_N_STRIDE >> 4 < (1u << 14) && V_K_STRIDE >> 4 < (1u << 14), "14-bit descriptor fields");

__device__ __forceinline__ float exp2_approx(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// Online softmax of one warpgroup's N-key score tile s at key kt (see attention.cu), shared by
// both kernels: row g in s[4n + 0, 1], row g + 8 in s[4n + 2, 3], each row spread over the four
// lanes (t) of a quad. Updates the running maxima m and sums l, replaces s by
// exp2(s · scale_log2 − m) and gives the factors alpha by which O must be rescaled; returns
// whether any row maximum of the warp grew. mask (a constant at every call): the tile may reach
// past the sequence end k1 (the last tile); those keys score −∞, by selects, not a branch.
template <int N>
__device__ __forceinline__ bool online_softmax(float (&s)[N / 2], float (&m)[2], float (&l)[2], float (&alpha)[2],
                                               int kt, int k1, int t, float scale_log2, bool mask) {
    if (mask) {
#pragma unroll
        for (int n = 0; n < N / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e)
                s[4 * n + e] = kt + n * 8 + 2 * t + (e & 1) >= k1 ? -INFINITY : s[4 * n + e];
    }
    bool grew = false;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float mx = -INFINITY;
#pragma unroll
        for (int n = 0; n < N / 8; ++n) mx = fmaxf(mx, fmaxf(s[4 * n + 2 * r], s[4 * n + 2 * r + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float mn = fmaxf(m[r], mx * scale_log2);  // key kt is valid: finite
        grew |= mn > m[r];
        alpha[r] = mn > m[r] ? exp2_approx(m[r] - mn) : 1.f;
        m[r] = mn;
        l[r] *= alpha[r];
    }
#pragma unroll
    for (int n = 0; n < N / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            s[4 * n + e] = exp2_approx(fmaf(s[4 * n + e], scale_log2, -m[e >> 1]));
            l[e >> 1] += s[4 * n + e];  // quad-reduced once, at the end
        }
    return __any_sync(0xffffffffu, grew);
}

// P = s rounded to T, in the A-fragment order: column block n of s is half of P's k-step n/2
// (a0, a1 for even n, a2, a3 for odd n).
template <typename T, int N>
__device__ __forceinline__ void pack_p(const float (&s)[N / 2], uint32_t (&p)[N / 16][4]) {
#pragma unroll
    for (int n = 0; n < N / 8; ++n) {
        p[n / 2][(n & 1) * 2 + 0] = pack2<T>(s[4 * n + 0], s[4 * n + 1]);
        p[n / 2][(n & 1) * 2 + 1] = pack2<T>(s[4 * n + 2], s[4 * n + 3]);
    }
}

// O (the D fragment: o[4n + e] in row g + 8·(e/2)) times the rows' factors alpha.
template <int D>
__device__ __forceinline__ void rescale_o(float (&o)[D / 2], const float (&alpha)[2]) {
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
        o[4 * n + 0] *= alpha[0];
        o[4 * n + 1] *= alpha[0];
        o[4 * n + 2] *= alpha[1];
        o[4 * n + 3] *= alpha[1];
    }
}

__device__ __forceinline__ uint32_t smem_addr(const void *p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// cp.async to a shared-memory address (state space address, not a generic pointer).
__device__ __forceinline__ void cp_async16_s(uint32_t s, const void *gmem, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 16 : 0));
}
// The same for a chunk known to be in range: no source-size operand.
__device__ __forceinline__ void cp_async16_all(uint32_t s, const void *gmem) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}

// mbarriers (64-bit words in shared memory, CTA scope).
__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("{\n\t.reg .b64 st;\n\tmbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(bar) : "memory");
}
// One arrival on bar once all of this thread's earlier cp.async copies have landed (.noinc: the
// arrival is one of the barrier's expected count).
__device__ __forceinline__ void mbar_arrive_cp_async(uint32_t bar) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
// Waits until the phase of bar with the given parity has completed.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
    asm volatile("{\n\t.reg .pred done;\n"
                 "WAIT_%=:\n\t"
                 "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n\t"
                 "@!done bra WAIT_%=;\n}\n" ::"r"(bar),
                 "r"(parity)
                 : "memory");
}

__device__ __forceinline__ void bar_sync(int id, int count) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}

// Descriptor of a 128-byte-swizzle operand (see the header), kept as its low word: start
// address >> 4 and LBO >> 4; the high word (SBO >> 4 in bits 32–45, base offset 0, layout type 1
// = 128-byte swizzle in bits 62–63) is a compile-time constant, so advancing a descriptor is one
// 32-bit add. Shared addresses stay below 2^18, so the 14-bit start field never carries into the
// LBO field. K-major operands pass lbo = 16 (field 1: unused).
__device__ __forceinline__ uint32_t desc_lo(uint32_t addr, uint32_t lbo) { return ((addr & 0x3FFFF) >> 4) | ((lbo >> 4) << 16); }
template <uint32_t SBO> __device__ __forceinline__ uint64_t desc(uint32_t lo) {
    return static_cast<uint64_t>(lo) | (static_cast<uint64_t>((SBO >> 4) | (1u << 30)) << 32);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Pins registers in program order: the compiler sees a wgmma's results as ready at its issue,
// so without this it could move their uses above wgmma.wait_group. Before wgmma.fence it also
// keeps the last ordinary writes of a wgmma's operand registers (the O rescale, the P packing)
// above the fence, and before a wait it keeps the softmax (which should overlap the wgmma in
// flight) above the wait.
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

// d[64×N] = A[64×16] · B[16×N], A and B from shared memory, both K-major; scale-d = 0, so d is
// only written (nothing has to zero it between wgmma.fence and the wgmma).
template <typename T, int N> __device__ __forceinline__ void wgmma_ss_first(float (&d)[N / 2], uint64_t a, uint64_t b);
// d[64×N] += A[64×16] · B[16×N], A and B from shared memory, both K-major.
template <typename T, int N> __device__ __forceinline__ void wgmma_ss(float (&d)[N / 2], uint64_t a, uint64_t b);
// d[64×N] += A[64×16] · B[16×N], A from registers, B from shared memory N-major (imm-trans-b = 1).
template <typename T, int N> __device__ __forceinline__ void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t b);

template <> __device__ __forceinline__ void wgmma_ss_first<__nv_bfloat16, 64>(float (&d)[32], uint64_t a, uint64_t b) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, 0, 1, 1, 0, 0;\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3]), "=f"(d[4]), "=f"(d[5]), "=f"(d[6]), "=f"(d[7]), "=f"(d[8]), "=f"(d[9]), "=f"(d[10]), "=f"(d[11]), "=f"(d[12]), "=f"(d[13]), "=f"(d[14]), "=f"(d[15]), "=f"(d[16]), "=f"(d[17]), "=f"(d[18]), "=f"(d[19]), "=f"(d[20]), "=f"(d[21]), "=f"(d[22]), "=f"(d[23]), "=f"(d[24]), "=f"(d[25]), "=f"(d[26]), "=f"(d[27]), "=f"(d[28]), "=f"(d[29]), "=f"(d[30]), "=f"(d[31])
                 : "l"(a), "l"(b));
}
template <> __device__ __forceinline__ void wgmma_ss<__nv_bfloat16, 64>(float (&d)[32], uint64_t a, uint64_t b) {
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
template <> __device__ __forceinline__ void wgmma_ss_first<__nv_bfloat16, 128>(float (&d)[64], uint64_t a, uint64_t b) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, 0, 1, 1, 0, 0;\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3]), "=f"(d[4]), "=f"(d[5]), "=f"(d[6]), "=f"(d[7]), "=f"(d[8]), "=f"(d[9]), "=f"(d[10]), "=f"(d[11]), "=f"(d[12]), "=f"(d[13]), "=f"(d[14]), "=f"(d[15]), "=f"(d[16]), "=f"(d[17]), "=f"(d[18]), "=f"(d[19]), "=f"(d[20]), "=f"(d[21]), "=f"(d[22]), "=f"(d[23]), "=f"(d[24]), "=f"(d[25]), "=f"(d[26]), "=f"(d[27]), "=f"(d[28]), "=f"(d[29]), "=f"(d[30]), "=f"(d[31]), "=f"(d[32]), "=f"(d[33]), "=f"(d[34]), "=f"(d[35]), "=f"(d[36]), "=f"(d[37]), "=f"(d[38]), "=f"(d[39]), "=f"(d[40]), "=f"(d[41]), "=f"(d[42]), "=f"(d[43]), "=f"(d[44]), "=f"(d[45]), "=f"(d[46]), "=f"(d[47]), "=f"(d[48]), "=f"(d[49]), "=f"(d[50]), "=f"(d[51]), "=f"(d[52]), "=f"(d[53]), "=f"(d[54]), "=f"(d[55]), "=f"(d[56]), "=f"(d[57]), "=f"(d[58]), "=f"(d[59]), "=f"(d[60]), "=f"(d[61]), "=f"(d[62]), "=f"(d[63])
                 : "l"(a), "l"(b));
}
template <> __device__ __forceinline__ void wgmma_ss<__nv_bfloat16, 128>(float (&d)[64], uint64_t a, uint64_t b) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, 1, 1, 1, 0, 0;\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "l"(a), "l"(b));
}
template <> __device__ __forceinline__ void wgmma_rs<__nv_bfloat16, 128>(float (&d)[64], const uint32_t (&a)[4], uint64_t b) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, 1, 1, 1, 1;\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}
template <> __device__ __forceinline__ void wgmma_ss_first<__half, 64>(float (&d)[32], uint64_t a, uint64_t b) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, 0, 1, 1, 0, 0;\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3]), "=f"(d[4]), "=f"(d[5]), "=f"(d[6]), "=f"(d[7]), "=f"(d[8]), "=f"(d[9]), "=f"(d[10]), "=f"(d[11]), "=f"(d[12]), "=f"(d[13]), "=f"(d[14]), "=f"(d[15]), "=f"(d[16]), "=f"(d[17]), "=f"(d[18]), "=f"(d[19]), "=f"(d[20]), "=f"(d[21]), "=f"(d[22]), "=f"(d[23]), "=f"(d[24]), "=f"(d[25]), "=f"(d[26]), "=f"(d[27]), "=f"(d[28]), "=f"(d[29]), "=f"(d[30]), "=f"(d[31])
                 : "l"(a), "l"(b));
}
template <> __device__ __forceinline__ void wgmma_ss<__half, 64>(float (&d)[32], uint64_t a, uint64_t b) {
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
template <> __device__ __forceinline__ void wgmma_ss_first<__half, 128>(float (&d)[64], uint64_t a, uint64_t b) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, 0, 1, 1, 0, 0;\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3]), "=f"(d[4]), "=f"(d[5]), "=f"(d[6]), "=f"(d[7]), "=f"(d[8]), "=f"(d[9]), "=f"(d[10]), "=f"(d[11]), "=f"(d[12]), "=f"(d[13]), "=f"(d[14]), "=f"(d[15]), "=f"(d[16]), "=f"(d[17]), "=f"(d[18]), "=f"(d[19]), "=f"(d[20]), "=f"(d[21]), "=f"(d[22]), "=f"(d[23]), "=f"(d[24]), "=f"(d[25]), "=f"(d[26]), "=f"(d[27]), "=f"(d[28]), "=f"(d[29]), "=f"(d[30]), "=f"(d[31]), "=f"(d[32]), "=f"(d[33]), "=f"(d[34]), "=f"(d[35]), "=f"(d[36]), "=f"(d[37]), "=f"(d[38]), "=f"(d[39]), "=f"(d[40]), "=f"(d[41]), "=f"(d[42]), "=f"(d[43]), "=f"(d[44]), "=f"(d[45]), "=f"(d[46]), "=f"(d[47]), "=f"(d[48]), "=f"(d[49]), "=f"(d[50]), "=f"(d[51]), "=f"(d[52]), "=f"(d[53]), "=f"(d[54]), "=f"(d[55]), "=f"(d[56]), "=f"(d[57]), "=f"(d[58]), "=f"(d[59]), "=f"(d[60]), "=f"(d[61]), "=f"(d[62]), "=f"(d[63])
                 : "l"(a), "l"(b));
}
template <> __device__ __forceinline__ void wgmma_ss<__half, 128>(float (&d)[64], uint64_t a, uint64_t b) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, 1, 1, 1, 0, 0;\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "l"(a), "l"(b));
}
template <> __device__ __forceinline__ void wgmma_rs<__half, 128>(float (&d)[64], const uint32_t (&a)[4], uint64_t b) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, 1, 1, 1, 1;\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}

// Copies rows [row0, min(row0 + R, row_end)) of one head (src: that head's row 0, rs: token
// stride) into an R-row SW128 tile at dst (1024-aligned, see the header); rows past row_end are
// zero-filled. All NTHREADS threads: thread tid moves chunk tid % 8 of rows tid / 8 + 32i of
// every 64-wide column block, so 8 consecutive lanes read one row's 128 contiguous bytes.
template <typename T, int D, int R>
__device__ __forceinline__ void load_rows(uint32_t dst, const T *src, int row0, int row_end, size_t rs, int tid) {
    constexpr int CB = D / 64;  // column blocks
    static_assert(D % 64 == 0 && R % RPP == 0 && RPP % 8 == 0, "copy passes keep the swizzle");
    const int lrow = tid / CHUNKS, lchk = tid % CHUNKS;
    const T *base = src + (size_t)(row0 + lrow) * rs + lchk * 8;
    const uint32_t sbase = dst + lrow * 128 + ((lchk ^ (lrow & 7)) << 4);
    if (row0 + R <= row_end) {
        // A whole tile (every tile but a sequence's last): no row test, no select, unrolled, so
        // each copy is one pointer step and an immediate shared offset. The loop below cost
        // ≈6 integer instructions and a branch per copy, a third of the kernel's issue slots
        // (ncu source counters) in the warps that also run the softmax.
        const size_t pass = (size_t)RPP * rs;
#pragma unroll
        for (int i = 0; i < R / RPP; ++i, base += pass)
#pragma unroll
            for (int cb = 0; cb < CB; ++cb) cp_async16_all(sbase + i * RPP * 128 + cb * R * 128, base + cb * 64);
        return;
    }
    const int left = row_end - row0 - lrow;  // rows of this thread still valid
#pragma unroll 1
    for (int i = 0; i < R / RPP; ++i) {
        const bool ok = i * RPP < left;
#pragma unroll
        for (int cb = 0; cb < CB; ++cb) cp_async16_s(sbase + i * RPP * 128 + cb * R * 128, ok ? base + cb * 64 : src, ok);
        base += (size_t)RPP * rs;
    }
}

// The accumulator arrays must be pinned in registers across the asm statements: every index
// below is a compile-time constant after unrolling.
// k16 step kk of a K-major operand of `rows` rows: column block kk / 4, 32 bytes per step in it
// (descriptor units of 16 bytes).
__device__ __forceinline__ uint32_t kstep(int kk, int rows) {
    return (uint32_t)((kk / 4) * rows * 128 + (kk % 4) * 32) >> 4;
}

// S = Q·Kᵀ of one warpgroup, 64 rows × N keys, as one wgmma group (not committed here): dq the
// warpgroup's Q descriptor, dk the key tile's (low words).
template <typename T, int D, int N>
__device__ __forceinline__ void issue_qk(float (&s)[N / 2], uint32_t dq, uint32_t dk) {
    wgmma_ss_first<T, N>(s, desc<ALIGN>(dq), desc<ALIGN>(dk));
#pragma unroll
    for (int kk = 1; kk < D / 16; ++kk)
        wgmma_ss<T, N>(s, desc<ALIGN>(dq + kstep(kk, BM)), desc<ALIGN>(dk + kstep(kk, N)));
}

// O += P·V of one warpgroup, 16 keys a wgmma: dv the value tile's descriptor (low word), VSBO
// its stride byte offset.
template <typename T, int D, int N, uint32_t VSBO>
__device__ __forceinline__ void issue_pv(float (&o)[D / 2], const uint32_t (&p)[N / 16][4], uint32_t dv) {
#pragma unroll
    for (int kk = 0; kk < N / 16; ++kk) wgmma_rs<T, D>(o, p[kk], desc<VSBO>(dv + ((kk * 2 * ALIGN) >> 4)));
}

template <typename T, int D>
__device__ __forceinline__ void flash_fwd(const T *__restrict__ q, const T *__restrict__ k,
                                          const T *__restrict__ v, T *__restrict__ out,
                                          const uint4 *__restrict__ tiles, int heads, float scale_log2,
                                          int q_stride, int k_stride, int v_stride) {
    constexpr int CH = D / 8;               // 16-byte chunks per row
    constexpr int QBYTES = BM * D * 2;
    constexpr int KVBYTES = BN * D * 2;     // one K or V tile
    constexpr int STAGE_BYTES = 2 * KVBYTES;
    static_assert(QBYTES % ALIGN == 0 && KVBYTES % ALIGN == 0 && (WG_ROWS * 128) % ALIGN == 0 &&
                      (BM * 128) % ALIGN == 0 && (BN * 128) % ALIGN == 0,
                  "every swizzled block base stays 1024-byte aligned");
    extern __shared__ __align__(128) unsigned char smem_raw[];
    // The tiles start at the first 1024-byte boundary of the window (the host adds the slack).
    const uint32_t sQ = (smem_addr(smem_raw) + (ALIGN - 1)) & ~(ALIGN - 1);
    unsigned char *const smem = smem_raw + (sQ - smem_addr(smem_raw));
    const uint32_t sKV = sQ + QBYTES;  // stage s: K at sKV + s · STAGE_BYTES, V KVBYTES further
    // mbarriers: full[s] (8 bytes each), then empty[s].
    const uint32_t full_bar = sKV + STAGES * STAGE_BYTES, empty_bar = full_bar + 8 * STAGES;

    const uint4 ti = tiles[blockIdx.x];
    const int q0 = ti.x, q1 = ti.y, k0 = ti.z, k1 = ti.w;
    const int ntiles = (k1 - k0 + BN - 1) / BN;
    const int h = blockIdx.y;
    const int tid = threadIdx.x, lane = tid & 31;
    // Token strides of q, k, v (row views of a fused projection allowed); out is contiguous.
    const size_t rs = (size_t)heads * D, qs = q_stride, ks = k_stride, vs = v_stride;

    const T *qh = q + (size_t)h * D, *kh = k + (size_t)h * D, *vh = v + (size_t)h * D;
    auto load_tile = [&](int j, int st) {
        const int kt = k0 + j * BN;
        const uint32_t dst = sKV + st * STAGE_BYTES;
        load_rows<T, D, BN>(dst, kh, kt, k1, ks, tid);
        load_rows<T, D, BN>(dst + KVBYTES, vh, kt, k1, vs, tid);
    };
    const int wg = tid >> 7, wl = (tid >> 5) & 3;
    const int g = lane >> 2, t = lane & 3;

    // Descriptors (low words; see the header), advanced per k-step and stage.
    const uint32_t dq = desc_lo(sQ + wg * WG_ROWS * 128, 16);
    const uint32_t dk = desc_lo(sKV, 16);
    const uint32_t dv = desc_lo(sKV + KVBYTES, V_LBO);
    // S(tile in stage st) = Q·Kᵀ; O += P·V(tile in stage st).
    auto issue_qk = [&](float (&s)[BN / 2], int st) { sm90a::issue_qk<T, D, BN>(s, dq, dk + ((st * STAGE_BYTES) >> 4)); };
    auto issue_pv = [&](float (&o)[D / 2], const uint32_t (&p)[BN / 16][4], int st) {
        sm90a::issue_pv<T, D, BN, V_SBO>(o, p, dv + ((st * STAGE_BYTES) >> 4));
    };

    // o[4n + e]: row 16·wl + g + 8·(e/2) of this warpgroup, column 8n + 2t + e%2 (the D fragment).
    float o[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

    // The online softmax, P packing and O rescale of this warpgroup (online_softmax above).
    auto softmax = [&](float (&s)[BN / 2], int kt, float (&alpha)[2], bool mask) {
        return online_softmax<BN>(s, m, l, alpha, kt, k1, t, scale_log2, mask);
    };
    auto pack = [&](const float (&s)[BN / 2], uint32_t (&p)[BN / 16][4]) { pack_p<T, BN>(s, p); };
    auto rescale = [&](const float (&alpha)[2]) { rescale_o<D>(o, alpha); };

    if (ntiles > 0) {
        if (tid == 0) {
#pragma unroll
            for (int i = 0; i < STAGES; ++i) {
                mbar_init(full_bar + 8 * i, NTHREADS);
                mbar_init(empty_bar + 8 * i, NTHREADS);
            }
            asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
            fence_proxy_async();
        }
        __syncthreads();  // the barriers are initialised before anyone uses them
        // Q and tile 0 (stage 0), then tile 1 (stage 1): their first uses, nothing to wait for.
        load_rows<T, D, BM>(sQ, qh, q0, q1, qs, tid);
        load_tile(0, 0);
        mbar_arrive_cp_async(full_bar);
        if (ntiles > 1) {
            load_tile(1, 1);
            mbar_arrive_cp_async(full_bar + 8);
        }
        mbar_wait(full_bar, 0);  // everyone's copies of Q and tile 0 have landed;
        fence_proxy_async();     // they are visible to this thread's wgmma (the async proxy)
        // Tile 0: S(0), its softmax (O is zero: nothing to rescale).
        uint32_t p[BN / 16][4];
        {
            float s[BN / 2];
            wgmma_fence();
            issue_qk(s, 0);
            wgmma_commit();
            wgmma_wait<0>();
            fence_regs(s);
            float alpha[2];
            softmax(s, k0, alpha, ntiles == 1);  // no wgmma in flight: a branch is harmless
            pack(s, p);
        }
        // Iteration j ≥ 1 (stage st holds tile j − 1, whose P is p): S(j) and P(j−1)·V(j−1) in
        // flight together; the softmax of S(j) runs while P(j−1)·V(j−1) does; P(j) replaces
        // P(j−1) in p after the wait (writing p earlier would redefine the operand of a wgmma
        // in flight). last: j is the last tile (masked).
        auto step = [&](int j, int &st, bool last) {
            const int sn = st == STAGES - 1 ? 0 : st + 1;
            mbar_wait(full_bar + 8 * sn, (j / STAGES) & 1);  // tile j has landed
            fence_proxy_async();
            // Issue S(j) and O += P(j−1)·V(j−1) as two groups, then the copies of tile j + 1
            // (while the tensor cores run); wait for S(j) only.
            float s[BN / 2];
            fence_regs(o);
            fence_regs(p);
            wgmma_fence();
            issue_qk(s, sn);
            wgmma_commit();
            issue_pv(o, p, st);
            wgmma_commit();
            if (j + 1 < ntiles) {
                // Stage (j+1) % 3 held tile j − 2: wait until both warpgroups have released it.
                const int sf = sn == STAGES - 1 ? 0 : sn + 1;
                if (j + 1 >= STAGES) mbar_wait(empty_bar + 8 * sf, ((j + 1) / STAGES - 1) & 1);
                load_tile(j + 1, sf);
                mbar_arrive_cp_async(full_bar + 8 * sf);
            }
            wgmma_wait<1>();
            fence_regs(s);
            float alpha[2];
            const bool grew = softmax(s, k0 + j * BN, alpha, last);
            fence_regs(s);
            // wait_group 0 behind a branch, not straight after the softmax: ptxas schedules a
            // WARPGROUP.DEPBAR like a short-latency wait, as early as its basic block allows,
            // which in the softmax's block is right after wait_group 1 (no overlap at all). The
            // branch starts a new block after every exp2 of the softmax. Its condition is always
            // true but not provably so to the compilers (ptxas folded an asm-made constant 1),
            // and the same in the whole warpgroup (wgmma.wait_group is .aligned
            // over the warpgroup), so not the warp's vote on grew. The other arm never runs; it
            // differs so that the two arms are not merged above the branch.
            if (k0 + j * BN < k1) {
                wgmma_wait<0>();
            } else {
                wgmma_wait<0>();
                fence_proxy_async();
            }
            // P(j−1)·V(j−1) has completed: release stage st (tile j − 1) if a copy will wait.
            if (j + 2 < ntiles) mbar_arrive(empty_bar + 8 * st);
            fence_regs(o);
            fence_regs(p);
            if (grew) rescale(alpha);
            pack(s, p);
            st = sn;
        };
        int st = 0, j = 1;
        for (; j + 1 < ntiles; ++j) step(j, st, false);
        if (j < ntiles) step(j, st, true);
        // O += P(last)·V(last).
        fence_regs(o);
        fence_regs(p);
        wgmma_fence();
        issue_pv(o, p, st);
        wgmma_commit();
        wgmma_wait<0>();
        fence_regs(o);
    }

    // Normalise, round and stage this warpgroup's rows in its own Q rows (the SW128 layout: a
    // warp's 32 four-byte writes of one 8-column chunk n cover rows g = 0..7 at chunk positions
    // n ^ g and words t, all 32 banks), then copy them out as 16-byte chunks, consecutive lanes
    // along a row (8 lanes = one column block's 128 bytes of a row, at 8 distinct positions).
    T *stage = reinterpret_cast<T *>(smem);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float lr = l[r];
        lr += __shfl_xor_sync(0xffffffffu, lr, 1);
        lr += __shfl_xor_sync(0xffffffffu, lr, 2);
        const float inv = lr > 0.f ? 1.f / lr : 0.f;
        const int row = wg * WG_ROWS + wl * 16 + r * 8 + g;  // row % 8 == g
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            const int off = ((n / 8) * BM * 128 + row * 128 + (((n % 8) ^ g) << 4) + t * 4) / 2;
            *reinterpret_cast<uint32_t *>(stage + off) = pack2<T>(o[4 * n + 2 * r] * inv, o[4 * n + 2 * r + 1] * inv);
        }
    }
    // Only this warpgroup's 128 threads take part.
    bar_sync(BAR_OUT + wg, NTHREADS / 2);
    constexpr int OROWS = 128 / CH;  // rows per pass of 128 threads
    const int wtid = tid & 127;
    const int orow = wg * WG_ROWS + wtid / CH, ochunk = wtid % CH;
    T *oh = out + (size_t)h * D;
#pragma unroll
    for (int pass = 0; pass < WG_ROWS / OROWS; ++pass) {
        const int row = orow + pass * OROWS;
        if (q0 + row < q1) {
            const int off = ((ochunk / 8) * BM * 128 + row * 128 + (((ochunk % 8) ^ (row & 7)) << 4)) / 2;
            *reinterpret_cast<uint4 *>(oh + (size_t)(q0 + row) * rs + ochunk * 8) =
                *reinterpret_cast<const uint4 *>(stage + off);
        }
    }
}

} // namespace sm90a

// Dynamic shared memory of one CTA, as `attention_sm90a_smem_bytes` in src/ops/attention/cuda.rs computes it.
// The mbarriers take 2 · STAGES · 8 bytes after the K/V stages (the host reserves 64), and the
// host adds ALIGN bytes of slack for the run-time 1024-byte alignment of the tiles.
static_assert((sm90a::BM + 2 * sm90a::STAGES * sm90a::BN) * 128 * 2 == 229376, "smem layout");
static_assert(2 * sm90a::STAGES * 8 <= 64, "mbarrier bytes");
static_assert(229376 + 64 + sm90a::ALIGN <= 227 * 1024, "within the 227 KB a CTA may opt in to");

#define FLASH90(NAME, T, D)                                                                          \
    extern "C" __global__ void __launch_bounds__(sm90a::NTHREADS, 1)                                 \
        NAME(const T *q, const T *k, const T *v, T *out, const uint4 *tiles, int heads, float scale_log2, \
             int q_stride, int k_stride, int v_stride) {                                             \
        sm90a::flash_fwd<T, D>(q, k, v, out, tiles, heads, scale_log2, q_stride, k_stride, v_stride); \
    }

FLASH90(flash_attn_sm90a_bf16_d64, __nv_bfloat16, 64)
FLASH90(flash_attn_sm90a_bf16_d128, __nv_bfloat16, 128)
FLASH90(flash_attn_sm90a_f16_d64, __half, 64)
FLASH90(flash_attn_sm90a_f16_d128, __half, 128)

// =============================================================================================
// Warp-specialised variant (`flash_attn_ws*`, `TRELLIS2_ATTENTION=fa3`, AttentionKernel::Fa3):
// the consumer math of flash_fwd above (BM = 128 query rows a CTA, the SW128 layout and
// descriptors, the intra-warpgroup overlap of softmax(S(j)) with P(j−1)·V(j−1), the same
// numerics), but the copies leave the consumers:
// - 384 threads: warpgroup 0 is the producer, warpgroups 1 and 2 the consumers (64 query rows
//   each). One thread of the producer issues every copy as a TMA box (cp.async.bulk.tensor.3d,
//   a CUtensorMap per operand built on the host: dims (D, H, tokens), the operand's token
//   stride, boxes of 64 dims × 1 head × rows with the 128-byte swizzle, which writes exactly the
//   SW128 tile layout above); the consumers spend no issue slots or registers on copies.
// - Registers: compiled for 384 threads (`__launch_bounds__(384, 1)`: 168 a thread at launch);
//   the producer warpgroup gives its registers back (setmaxnreg.dec to 24) and the consumers take
//   them (setmaxnreg.inc to 240: 24·128 + 240·256 ≤ 64K). ptxas then allocates the consumer code
//   against 240 (194 registers at D = 128 with KN = 128, 230 with KN = 176, no spills; `ptxas -v`
//   prints 168).
// - KN keys a tile in KST stages: 128 keys × 3 stages, or 176 × 2 (the larger tile halves fewer
//   per-tile costs: barrier waits, row-max shuffles, rescales; only 2 stages fit). K and V have
//   their own barriers, so K(j)'s buffer is released as soon as S(j) is done (wait_group 1) and
//   V(j−1)'s after P(j−1)·V(j−1) (wait_group 0): with 2 stages the producer still loads K(j+1)
//   during the softmax of S(j).
//     fullK[s], fullV[s] (count 1): the producer's arrive.expect_tx of the tile's bytes; the TMA
//              completes the transaction count. Parity (j / KST) & 1 for tile j.
//     emptyK[s], emptyV[s] (count 8): lane 0 of each consumer warp; the producer waits on
//              parity (j / KST − 1) & 1 before loading tile j into stage j % KST.
//     qbar: Q.
//   TMA writes and wgmma reads are both async proxy: no proxy fence between them.
// - Rows past the sequence's end inside a tile: the TMA reads them from the next packed sequence
//   (or zero-fills past the tensor's last token); their scores are masked to −∞ by selects as in
//   flash_fwd, so P is exactly 0 there and adds nothing (V rows are finite).
// - PINGPONG: the two consumer warpgroups take turns to issue their wgmma batches (named
//   barriers BAR_SCHED + warpgroup, 256 threads: a warpgroup waits on its own, then arrives on
//   the other's once its batch is issued), so that one's softmax runs while the other's products
//   occupy the tensor cores. Warpgroup 1 arrives once at the start (warpgroup 0 goes first) and
//   skips its last arrival, so every barrier's arrivals match its waits.
namespace sm90a {

constexpr int WS_THREADS = 384;  // producer warpgroup + two consumer warpgroups
constexpr int WS_CONSUMER_WARPS = 8;
constexpr int BAR_SCHED = 3;  // + consumer warpgroup: ping-pong barriers (1, 2: BAR_OUT)
constexpr int WS_MBAR_BYTES = 128;  // the host's reserve for the mbarriers (4·KST + 1)

template <> __device__ __forceinline__ void wgmma_ss_first<__nv_bfloat16, 176>(float (&d)[88], uint64_t a, uint64_t b) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n176k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87}, %88, %89, 0, 1, 1, 0, 0;\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3]), "=f"(d[4]), "=f"(d[5]), "=f"(d[6]), "=f"(d[7]), "=f"(d[8]), "=f"(d[9]), "=f"(d[10]), "=f"(d[11]), "=f"(d[12]), "=f"(d[13]), "=f"(d[14]), "=f"(d[15]), "=f"(d[16]), "=f"(d[17]), "=f"(d[18]), "=f"(d[19]), "=f"(d[20]), "=f"(d[21]), "=f"(d[22]), "=f"(d[23]), "=f"(d[24]), "=f"(d[25]), "=f"(d[26]), "=f"(d[27]), "=f"(d[28]), "=f"(d[29]), "=f"(d[30]), "=f"(d[31]), "=f"(d[32]), "=f"(d[33]), "=f"(d[34]), "=f"(d[35]), "=f"(d[36]), "=f"(d[37]), "=f"(d[38]), "=f"(d[39]), "=f"(d[40]), "=f"(d[41]), "=f"(d[42]), "=f"(d[43]), "=f"(d[44]), "=f"(d[45]), "=f"(d[46]), "=f"(d[47]), "=f"(d[48]), "=f"(d[49]), "=f"(d[50]), "=f"(d[51]), "=f"(d[52]), "=f"(d[53]), "=f"(d[54]), "=f"(d[55]), "=f"(d[56]), "=f"(d[57]), "=f"(d[58]), "=f"(d[59]), "=f"(d[60]), "=f"(d[61]), "=f"(d[62]), "=f"(d[63]), "=f"(d[64]), "=f"(d[65]), "=f"(d[66]), "=f"(d[67]), "=f"(d[68]), "=f"(d[69]), "=f"(d[70]), "=f"(d[71]), "=f"(d[72]), "=f"(d[73]), "=f"(d[74]), "=f"(d[75]), "=f"(d[76]), "=f"(d[77]), "=f"(d[78]), "=f"(d[79]), "=f"(d[80]), "=f"(d[81]), "=f"(d[82]), "=f"(d[83]), "=f"(d[84]), "=f"(d[85]), "=f"(d[86]), "=f"(d[87])
                 : "l"(a), "l"(b));
}
template <> __device__ __forceinline__ void wgmma_ss<__nv_bfloat16, 176>(float (&d)[88], uint64_t a, uint64_t b) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n176k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87}, %88, %89, 1, 1, 1, 0, 0;\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87])
                 : "l"(a), "l"(b));
}
template <> __device__ __forceinline__ void wgmma_ss_first<__half, 176>(float (&d)[88], uint64_t a, uint64_t b) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n176k16.f32.f16.f16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87}, %88, %89, 0, 1, 1, 0, 0;\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3]), "=f"(d[4]), "=f"(d[5]), "=f"(d[6]), "=f"(d[7]), "=f"(d[8]), "=f"(d[9]), "=f"(d[10]), "=f"(d[11]), "=f"(d[12]), "=f"(d[13]), "=f"(d[14]), "=f"(d[15]), "=f"(d[16]), "=f"(d[17]), "=f"(d[18]), "=f"(d[19]), "=f"(d[20]), "=f"(d[21]), "=f"(d[22]), "=f"(d[23]), "=f"(d[24]), "=f"(d[25]), "=f"(d[26]), "=f"(d[27]), "=f"(d[28]), "=f"(d[29]), "=f"(d[30]), "=f"(d[31]), "=f"(d[32]), "=f"(d[33]), "=f"(d[34]), "=f"(d[35]), "=f"(d[36]), "=f"(d[37]), "=f"(d[38]), "=f"(d[39]), "=f"(d[40]), "=f"(d[41]), "=f"(d[42]), "=f"(d[43]), "=f"(d[44]), "=f"(d[45]), "=f"(d[46]), "=f"(d[47]), "=f"(d[48]), "=f"(d[49]), "=f"(d[50]), "=f"(d[51]), "=f"(d[52]), "=f"(d[53]), "=f"(d[54]), "=f"(d[55]), "=f"(d[56]), "=f"(d[57]), "=f"(d[58]), "=f"(d[59]), "=f"(d[60]), "=f"(d[61]), "=f"(d[62]), "=f"(d[63]), "=f"(d[64]), "=f"(d[65]), "=f"(d[66]), "=f"(d[67]), "=f"(d[68]), "=f"(d[69]), "=f"(d[70]), "=f"(d[71]), "=f"(d[72]), "=f"(d[73]), "=f"(d[74]), "=f"(d[75]), "=f"(d[76]), "=f"(d[77]), "=f"(d[78]), "=f"(d[79]), "=f"(d[80]), "=f"(d[81]), "=f"(d[82]), "=f"(d[83]), "=f"(d[84]), "=f"(d[85]), "=f"(d[86]), "=f"(d[87])
                 : "l"(a), "l"(b));
}
template <> __device__ __forceinline__ void wgmma_ss<__half, 176>(float (&d)[88], uint64_t a, uint64_t b) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n176k16.f32.f16.f16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87}, %88, %89, 1, 1, 1, 0, 0;\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87])
                 : "l"(a), "l"(b));
}

// A CUtensorMap as the host encodes it (128 opaque bytes), passed by value as a
// __grid_constant__ parameter: the TMA reads it through its parameter-space address.
struct alignas(64) TmaMap {
    unsigned long long v[16];
};

__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// One box of a 3-D tensor map into shared memory at dst, completing its bytes on bar.
__device__ __forceinline__ void tma_load_3d(uint32_t dst, const TmaMap *map, uint32_t bar, int c0, int c1, int c2) {
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(dst),
                 "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
                 : "memory");
}
__device__ __forceinline__ void prefetch_tma_map(const TmaMap *map) {
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}
template <uint32_t N> __device__ __forceinline__ void setmaxnreg_inc() {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <uint32_t N> __device__ __forceinline__ void setmaxnreg_dec() {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
__device__ __forceinline__ void bar_arrive(int id, int count) {
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}

template <typename T, int D, int KN, int KST, bool PINGPONG>
__device__ __forceinline__ void flash_fwd_ws(const TmaMap *tq, const TmaMap *tk, const TmaMap *tv, T *__restrict__ out,
                                             const uint4 *__restrict__ tiles, int heads, float scale_log2) {
    constexpr int CB = D / 64;  // 64-wide column blocks: one TMA box each
    constexpr int QBYTES = BM * D * 2;
    constexpr int KVBYTES = KN * D * 2;  // one K or V tile
    static_assert(QBYTES % ALIGN == 0 && KVBYTES % ALIGN == 0 && (BM * 128) % ALIGN == 0 && (KN * 128) % ALIGN == 0,
                  "every swizzled block base stays 1024-byte aligned");
    static_assert(KN % 16 == 0 && KN <= 256 && (4 * KST + 1) * 8 <= WS_MBAR_BYTES, "tile and barrier limits");
    static_assert((KN * 128) >> 4 < (1 << 14), "V's LBO fits its 14-bit field");
    extern __shared__ __align__(128) unsigned char smem_raw[];
    const uint32_t sQ = (smem_addr(smem_raw) + (ALIGN - 1)) & ~(ALIGN - 1);
    unsigned char *const smem = smem_raw + (sQ - smem_addr(smem_raw));
    // [Q][K stages][V stages][mbarriers: fullK, fullV, emptyK, emptyV (KST each), Q's]
    const uint32_t sK = sQ + QBYTES, sV = sK + KST * KVBYTES;
    const uint32_t full_k = sV + KST * KVBYTES, full_v = full_k + 8 * KST;
    const uint32_t empty_k = full_v + 8 * KST, empty_v = empty_k + 8 * KST;
    const uint32_t q_bar = empty_v + 8 * KST;

    const uint4 ti = tiles[blockIdx.x];
    const int q0 = ti.x, q1 = ti.y, k0 = ti.z, k1 = ti.w;
    const int ntiles = (k1 - k0 + KN - 1) / KN;
    const int h = blockIdx.y;
    const int tid = threadIdx.x;

    if (tid == 0) {
#pragma unroll
        for (int i = 0; i < KST; ++i) {
            mbar_init(full_k + 8 * i, 1);
            mbar_init(full_v + 8 * i, 1);
            mbar_init(empty_k + 8 * i, WS_CONSUMER_WARPS);
            mbar_init(empty_v + 8 * i, WS_CONSUMER_WARPS);
        }
        mbar_init(q_bar, 1);
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();  // the barriers are initialised before anyone uses them

    if (tid < 128) {
        // Producer warpgroup: one thread issues every copy; the others only give their
        // registers back.
        setmaxnreg_dec<24>();
        if (tid == 0 && ntiles > 0) {
            prefetch_tma_map(tq);
            prefetch_tma_map(tk);
            prefetch_tma_map(tv);
            mbar_arrive_expect_tx(q_bar, QBYTES);
#pragma unroll
            for (int cb = 0; cb < CB; ++cb) tma_load_3d(sQ + cb * BM * 128, tq, q_bar, cb * 64, h, q0);
            int st = 0;
            uint32_t phase = 0;  // parity of the empty phase to wait for in this pass of the ring
#pragma unroll 1
            for (int j = 0; j < ntiles; ++j) {
                const int kt = k0 + j * KN;
                // Stage st held tile j − KST: both consumer warpgroups must have released it.
                if (j >= KST) mbar_wait(empty_k + 8 * st, phase);
                mbar_arrive_expect_tx(full_k + 8 * st, KVBYTES);
#pragma unroll
                for (int cb = 0; cb < CB; ++cb)
                    tma_load_3d(sK + st * KVBYTES + cb * KN * 128, tk, full_k + 8 * st, cb * 64, h, kt);
                if (j >= KST) mbar_wait(empty_v + 8 * st, phase);
                mbar_arrive_expect_tx(full_v + 8 * st, KVBYTES);
#pragma unroll
                for (int cb = 0; cb < CB; ++cb)
                    tma_load_3d(sV + st * KVBYTES + cb * KN * 128, tv, full_v + 8 * st, cb * 64, h, kt);
                if (++st == KST) {
                    st = 0;
                    if (j >= KST) phase ^= 1;
                }
            }
        }
        return;
    }
    setmaxnreg_inc<240>();

    const int ctid = tid - 128;  // thread within the consumers
    const int wg = ctid >> 7, wl = (ctid >> 5) & 3, lane = tid & 31;
    const int g = lane >> 2, t = lane & 3;
    auto sched_wait = [&]() {
        if (PINGPONG) bar_sync(BAR_SCHED + wg, 256);
    };
    auto sched_pass = [&]() {
        if (PINGPONG) bar_arrive(BAR_SCHED + (wg ^ 1), 256);
    };

    // Descriptors (low words): V's LBO is its column-block stride, KN·128 (see the header).
    const uint32_t dq = desc_lo(sQ + wg * WG_ROWS * 128, 16);
    const uint32_t dk = desc_lo(sK, 16);
    const uint32_t dv = desc_lo(sV, V_DESC_SWAP ? ALIGN : KN * 128);
    constexpr uint32_t VSBO = V_DESC_SWAP ? KN * 128 : ALIGN;
    auto issue_qk = [&](float (&s)[KN / 2], int st) { sm90a::issue_qk<T, D, KN>(s, dq, dk + ((st * KVBYTES) >> 4)); };
    auto issue_pv = [&](float (&o)[D / 2], const uint32_t (&p)[KN / 16][4], int st) {
        sm90a::issue_pv<T, D, KN, VSBO>(o, p, dv + ((st * KVBYTES) >> 4));
    };

    float o[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

    // The online softmax, P packing and O rescale of flash_fwd above, for KN keys.
    auto softmax = [&](float (&s)[KN / 2], int kt, float (&alpha)[2], bool mask) {
        return online_softmax<KN>(s, m, l, alpha, kt, k1, t, scale_log2, mask);
    };
    auto pack = [&](const float (&s)[KN / 2], uint32_t (&p)[KN / 16][4]) { pack_p<T, KN>(s, p); };
    auto rescale = [&](const float (&alpha)[2]) { rescale_o<D>(o, alpha); };
    // This warp's wgmma reading the buffer have retired: one arrival per warp.
    auto release = [&](uint32_t bar) {
        if (lane == 0) mbar_arrive(bar);
    };

    if (ntiles > 0) {
        if (PINGPONG && wg == 1) bar_arrive(BAR_SCHED + 0, 256);
        mbar_wait(q_bar, 0);
        mbar_wait(full_k, 0);
        uint32_t p[KN / 16][4];
        {
            float s[KN / 2];
            sched_wait();
            wgmma_fence();
            issue_qk(s, 0);
            wgmma_commit();
            sched_pass();
            wgmma_wait<0>();
            fence_regs(s);
            release(empty_k);
            float alpha[2];
            softmax(s, k0, alpha, ntiles == 1);
            pack(s, p);
        }
        // Iteration j ≥ 1: S(j) from K in stage sn, P(j−1)·V(j−1) from V in stage st.
        auto step = [&](int j, int &st, bool last) {
            const int sn = st == KST - 1 ? 0 : st + 1;
            mbar_wait(full_k + 8 * sn, (j / KST) & 1);
            mbar_wait(full_v + 8 * st, ((j - 1) / KST) & 1);
            float s[KN / 2];
            fence_regs(o);
            fence_regs(p);
            sched_wait();
            wgmma_fence();
            issue_qk(s, sn);
            wgmma_commit();
            issue_pv(o, p, st);
            wgmma_commit();
            sched_pass();
            wgmma_wait<1>();
            fence_regs(s);
            release(empty_k + 8 * sn);  // S(j) is done: K(j) may be replaced
            float alpha[2];
            const bool grew = softmax(s, k0 + j * KN, alpha, last);
            fence_regs(s);
            // wait_group 0 behind a branch (see flash_fwd): keeps the softmax's exp2 above it.
            if (k0 + j * KN < k1) {
                wgmma_wait<0>();
            } else {
                wgmma_wait<0>();
                fence_proxy_async();
            }
            release(empty_v + 8 * st);  // P(j−1)·V(j−1) is done
            fence_regs(o);
            fence_regs(p);
            if (grew) rescale(alpha);
            pack(s, p);
            st = sn;
        };
        int st = 0, j = 1;
        for (; j + 1 < ntiles; ++j) step(j, st, false);
        if (j < ntiles) step(j, st, true);
        // O += P(last)·V(last) (tile ntiles − 1, stage st).
        mbar_wait(full_v + 8 * st, ((ntiles - 1) / KST) & 1);
        fence_regs(o);
        fence_regs(p);
        sched_wait();
        wgmma_fence();
        issue_pv(o, p, st);
        wgmma_commit();
        // Warpgroup 1's last batch: nobody waits for another turn.
        if (wg == 0) sched_pass();
        wgmma_wait<0>();
        fence_regs(o);
    }

    // Normalise, round and stage this warpgroup's rows in its own Q rows, then 16-byte stores
    // (as flash_fwd).
    T *stage = reinterpret_cast<T *>(smem);
    constexpr int CH = D / 8;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float lr = l[r];
        lr += __shfl_xor_sync(0xffffffffu, lr, 1);
        lr += __shfl_xor_sync(0xffffffffu, lr, 2);
        const float inv = lr > 0.f ? 1.f / lr : 0.f;
        const int row = wg * WG_ROWS + wl * 16 + r * 8 + g;
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            const int off = ((n / 8) * BM * 128 + row * 128 + (((n % 8) ^ g) << 4) + t * 4) / 2;
            *reinterpret_cast<uint32_t *>(stage + off) = pack2<T>(o[4 * n + 2 * r] * inv, o[4 * n + 2 * r + 1] * inv);
        }
    }
    bar_sync(BAR_OUT + wg, 128);
    constexpr int OROWS = 128 / CH;
    const int wtid = ctid & 127;
    const int orow = wg * WG_ROWS + wtid / CH, ochunk = wtid % CH;
    const size_t rs = (size_t)heads * D;
    T *oh = out + (size_t)h * D;
#pragma unroll
    for (int pass = 0; pass < WG_ROWS / OROWS; ++pass) {
        const int row = orow + pass * OROWS;
        if (q0 + row < q1) {
            const int off = ((ochunk / 8) * BM * 128 + row * 128 + (((ochunk % 8) ^ (row & 7)) << 4)) / 2;
            *reinterpret_cast<uint4 *>(oh + (size_t)(q0 + row) * rs + ochunk * 8) =
                *reinterpret_cast<const uint4 *>(stage + off);
        }
    }
}

} // namespace sm90a

// Dynamic shared memory of the warp-specialised kernels, as `attention_ws_smem_bytes` in
// src/ops/attention/cuda.rs computes it: (BM + 2·KST·KN)·D·2 + 128 (mbarriers) + 1024 (slack).
static_assert((128 + 2 * 3 * 128) * 128 * 2 + sm90a::WS_MBAR_BYTES + sm90a::ALIGN <= 227 * 1024, "KN 128, 3 stages");
static_assert((128 + 2 * 2 * 176) * 128 * 2 + sm90a::WS_MBAR_BYTES + sm90a::ALIGN <= 227 * 1024, "KN 176, 2 stages");

// flash_attn_ws{,np}_*: 128-key tiles, 3 stages; flash_attn_ws176{,np}_*: 176-key tiles, 2
// stages; np: without the ping-pong.
#define FLASH90_WS(NAME, T, D, KN, KST, PP)                                                          \
    extern "C" __global__ void __launch_bounds__(sm90a::WS_THREADS, 1)                              \
        NAME(const __grid_constant__ sm90a::TmaMap tq, const __grid_constant__ sm90a::TmaMap tk,     \
             const __grid_constant__ sm90a::TmaMap tv, T *out, const uint4 *tiles, int heads,        \
             float scale_log2) {                                                                     \
        sm90a::flash_fwd_ws<T, D, KN, KST, PP>(&tq, &tk, &tv, out, tiles, heads, scale_log2);         \
    }
#define FLASH90_WS_ALL(PREFIX, KN, KST, PP)                                                          \
    FLASH90_WS(PREFIX##_bf16_d64, __nv_bfloat16, 64, KN, KST, PP)                                    \
    FLASH90_WS(PREFIX##_bf16_d128, __nv_bfloat16, 128, KN, KST, PP)                                  \
    FLASH90_WS(PREFIX##_f16_d64, __half, 64, KN, KST, PP)                                            \
    FLASH90_WS(PREFIX##_f16_d128, __half, 128, KN, KST, PP)

FLASH90_WS_ALL(flash_attn_ws, 128, 3, true)
FLASH90_WS_ALL(flash_attn_wsnp, 128, 3, false)
FLASH90_WS_ALL(flash_attn_ws176, 176, 2, true)
FLASH90_WS_ALL(flash_attn_ws176np, 176, 2, false)
