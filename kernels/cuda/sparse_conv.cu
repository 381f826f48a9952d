// Submanifold 3×3×3 convolution as a masked implicit GEMM on tensor cores (mma.sync m16n8k16,
// bf16 or f16 operands, fp32 accumulation); the CPU reference is `src/ops/sparse_conv/mod.rs`.
//
//   out[v, o] = bias[o] + Σ_k Σ_i W[o, k, i] · feats[nbr[v, k], i]   (absent neighbours add 0)
//
// feats [T, Ci], weight [Co, 27, Ci], neighbour map [T, 27] u32 (0xffffffff = absent), bias [Co]
// f32 (or null: none), out [T, Co] in the operands' dtype or f32; all row-major and contiguous.
// `order` [T] (or null: the identity) is a permutation of the voxels: tile row p computes voxel
// order[p]. Voxels are sorted by their 27-bit neighbour mask (`NeighbourMap::conv_order`, built
// by conv_order.cu) so that the rows of a tile share their taps; a voxel's result does not
// depend on the order.
//
// Design (and why):
// * One block computes a BM×BN tile of `out` (BM = 128 rows; BN = 128, 64 when Co ≤ 64 (the
//   1.7M × 64 decoder level), 256 when Co ≥ 256). Prologue: the tile's voxel ids and their 27 neighbour rows go to
//   shared memory (`nb`, read once, coalesced), and the OR of the rows' presence bits gives the
//   tile's tap mask; the main loop walks only the taps some row has (masked taps), Ci in chunks
//   of BK = 64 per tap. With the sorted order a tile needs ≈ 17–21 taps instead of ≈ 27.
// * A operand: the BM gathered feature rows of a tap (absent neighbours zero-filled by cp.async,
//   row index from `nb`, no global lookup in the loop); B operand: the tap's weight slice
//   W[col0.., k, c0..], already K-contiguous per output channel.
// * BK = 64 (128-byte shared rows) and a 3-stage (BN = 128) or 4-stage (BN = 64) cp.async ring:
//   one __syncthreads per 4 k16-steps of MMAs (BK = 32 / 2 stages synchronised every 2 and hid
//   one copy's latency at most). Loads for step s + STAGES − 1 are issued right after the
//   barrier of step s, so STAGES − 1 copies are in flight while the tensor cores work.
// * Shared rows are XOR-swizzled (16-byte chunk c of row r stored at chunk c ^ (r & 7)): the
//   8 row addresses of each ldmatrix phase and the 8 chunks a cp.async row-group writes fall in
//   distinct bank groups without padding, which keeps the stages at 2^k bytes.
// * 8 warps; warp tiles 64×32 (BN = 128) or 32×32 (BN = 64); __launch_bounds__(256, 2): two
//   blocks per SM (≤ 128 registers, 2 × ≈ 110 KB shared memory) so one block's barrier or
//   prologue overlaps the other's MMAs. BN = 256: warp tiles 64×64, one block per SM.
// * No divisions in the loop: the load cursor (tap, chunk) advances by a compare and the next set
//   bit of the tap mask; ring slots advance by a compare.
// * Row tiles: the prologue also records which 16-row groups (mma row tiles) have each tap
//   (`group_taps`, from warp ballots); a warp skips the products of its row tiles whose rows all
//   lack the step's tap (zero-filled rows, exact zeros), or the whole step when none has it.
//   Sorted tiles share their taps in much smaller groups than 128 rows (on shells ≈ 18.4 taps a
//   row at 16-row granularity against ≈ 22.4 at 128 for 20k voxels, 17.1 against 19.9 at 80k).
//   `skip_groups` = 0 turns it off (TRELLIS2_CONV_ROW_SKIP=off, for measuring).
// * Epilogue: the fp32 accumulator plus the f32 bias, rounded once to the output dtype (the
//   operands' bf16/f16, or f32 for f32 callers): no separate bias pass over [T, Co], no cast.
// When Ci is not a multiple of 8 (or a pointer is not 16-byte aligned) the copies fall back to
// element-wise loads with bounds checks; the pipeline structure is the same.
#include "common.cuh"
#include "sparse_conv_tile.cuh"

#include <type_traits>

#define ABSENT conv_tile::NO_ROW
#define TAPS conv_tile::TAP_COUNT
#define BK 64              // K elements per pipeline step: 128-byte shared rows
#define CHUNKS (BK / 8)    // 16-byte chunks per shared row

// Element offset of 16-byte chunk `c` of row `r` in a [rows][BK] shared tile (XOR swizzle).
__device__ __forceinline__ int swz(int r, int c) { return r * BK + ((c ^ (r & 7)) << 3); }

__device__ __forceinline__ void ldsm_x4(uint32_t r[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// Two adjacent outputs (col, col + 1) of a row, `dst` 4-byte (16-bit O) or 8-byte (f32) aligned.
template <typename O> __device__ __forceinline__ void store2(O *dst, float x0, float x1) {
    *reinterpret_cast<uint32_t *>(dst) = pack2<O>(x0, x1);
}
template <> __device__ __forceinline__ void store2<float>(float *dst, float x0, float x1) {
    *reinterpret_cast<float2 *>(dst) = make_float2(x0, x1);
}

template <typename T, typename O, int BM, int BN, int WM, int WN, int STAGES, bool VEC>
__device__ __forceinline__ void subm_conv(const T *__restrict__ feats, const T *__restrict__ weight,
                                          const uint32_t *__restrict__ nbr,
                                          const uint32_t *__restrict__ order,
                                          const float *__restrict__ bias, O *__restrict__ out,
                                          int n, int ci, int co, int skip_groups) {
    constexpr int NT = WM * WN * 32;
    constexpr int WTM = BM / WM, WTN = BN / WN;  // warp tile
    constexpr int FM = WTM / 16, FN = WTN / 8;   // mma tiles per warp
    constexpr int RPP = NT / CHUNKS;             // rows per pass of the copy loops
    static_assert(FN % 2 == 0, "B fragments are loaded two n-tiles at a time");
    static_assert(BM <= NT, "one thread per tile row builds the tap mask");
    static_assert(RPP % 8 == 0 && BM % RPP == 0 && BN % RPP == 0, "copy passes keep the swizzle");
    static_assert(STAGES >= 2, "a ring of at least two stages");
    static_assert(BM / 16 <= 32 && BM % 32 == 0, "one bit per 16-row group, two per warp of rows");

    extern __shared__ __align__(128) unsigned char smem[];  // [STAGES][BM][BK] A, then B
    __shared__ uint32_t nb[TAPS][BM + 1];  // neighbour row of each (tap, tile row); +1: banks
    __shared__ uint32_t vox[BM];           // the voxel of each tile row (ABSENT past the end)
    __shared__ uint32_t tap_mask;
    __shared__ uint32_t group_taps[TAPS];  // bit g: 16-row group g of the tile has tap k
    __shared__ uint32_t stage_groups[STAGES];  // the groups that need each ring slot's tap
    T *const As = reinterpret_cast<T *>(smem);
    T *const Bs = As + STAGES * BM * BK;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp / WN, wn = warp % WN;
    const int row0 = blockIdx.x * BM, col0 = blockIdx.y * BN;

    if (tid == 0) tap_mask = 0;
    if (tid < TAPS) group_taps[tid] = 0;
    conv_tile::load_neighbours<BM, NT>(nbr, order, n, row0, vox, nb, tid);
    {
        uint32_t m = 0;
        if (tid < BM) {
#pragma unroll
            for (int k = 0; k < TAPS; ++k) m |= (nb[k][tid] != ABSENT ? 1u : 0u) << k;
        }
        const uint32_t warp_taps = __reduce_or_sync(0xffffffffu, m);
        if (lane == 0 && warp_taps) atomicOr(&tap_mask, warp_taps);
        // Rows 32·warp .. 32·warp + 31 are groups 2·warp (lanes 0–15) and 2·warp + 1.
        if (warp < BM / 32) {
            for (uint32_t rest = warp_taps; rest; rest &= rest - 1) {
                const int k = __ffs(rest) - 1;
                const uint32_t rows = __ballot_sync(0xffffffffu, (m >> k) & 1u);
                const uint32_t groups = ((rows & 0xffffu) ? 1u : 0u) | ((rows >> 16) ? 2u : 0u);
                if (lane == 0) atomicOr(&group_taps[k], groups << (2 * warp));
            }
        }
    }
    __syncthreads();
    const uint32_t mask = tap_mask;
    const int steps = __popc(mask) * ((ci + BK - 1) / BK);
    const T zero = from_f32<T>(0.f);

    // Copies: thread tid moves chunk (tid % CHUNKS) of rows tid / CHUNKS + i·RPP; all its rows
    // share one swizzled chunk column because RPP is a multiple of 8.
    const int lrow = tid / CHUNKS, lchk = tid % CHUNKS;
    const int ldst = swz(lrow, lchk);
    const uint32_t as_base = static_cast<uint32_t>(__cvta_generic_to_shared(As));
    const uint32_t bs_base = static_cast<uint32_t>(__cvta_generic_to_shared(Bs));
    auto load = [&](int tap, int c0, int stage) {
        if (tid == 0) stage_groups[stage] = skip_groups ? group_taps[tap] : ~0u;
        const int cc = c0 + lchk * 8;
        T *a = As + stage * (BM * BK) + ldst;
#pragma unroll
        for (int i = 0; i < BM / RPP; ++i) {
            const uint32_t src = nb[tap][lrow + i * RPP];
            T *dst = a + i * RPP * BK;
            if constexpr (VEC) {
                const bool ok = src != ABSENT && cc < ci;
                cp_async16(dst, ok ? feats + (size_t)src * ci + cc : feats, ok);
            } else {
#pragma unroll
                for (int e = 0; e < 8; ++e)
                    dst[e] = (src != ABSENT && cc + e < ci) ? feats[(size_t)src * ci + cc + e] : zero;
            }
        }
        T *b = Bs + stage * (BN * BK) + ldst;
#pragma unroll
        for (int i = 0; i < BN / RPP; ++i) {
            const int o = col0 + lrow + i * RPP;
            const T *w = weight + ((size_t)o * TAPS + tap) * ci + cc;
            T *dst = b + i * RPP * BK;
            if constexpr (VEC) {
                const bool ok = o < co && cc < ci;
                cp_async16(dst, ok ? w : weight, ok);
            } else {
#pragma unroll
                for (int e = 0; e < 8; ++e) dst[e] = (o < co && cc + e < ci) ? w[e] : zero;
            }
        }
    };
    conv_tile::TapCursor<BK> cursor(mask);  // the next copy's tap and channel offset

    float acc[FM][FN][4];
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
        for (int j = 0; j < FN; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

    // ldmatrix rows of this lane: A rows wm·WTM + i·16 + (lane & 15), chunk 2·ks + lane / 16;
    // B rows wn·WTN + j·8 + (lane & 7) + 8·(lane / 16 & 1), chunk 2·ks + (lane / 8 & 1). Every
    // such row is ≡ lane (mod 8), so the swizzle XORs the chunk with lane & 7; the chunk's low
    // bit and 2·ks occupy different bits, so its byte offset is a lane constant XOR ks·32.
    const uint32_t sw = lane & 7;
    const int a_row = (wm * WTM + (lane & 15)) * BK;
    const int b_row = (wn * WTN + (lane & 7) + ((lane >> 4) & 1) * 8) * BK;
    const uint32_t a_off = ((lane >> 4) ^ sw) << 4, b_off = (((lane >> 3) & 1) ^ sw) << 4;

#pragma unroll
    for (int st = 0; st < STAGES - 1; ++st) {
        if (st < steps) {
            load(cursor.tap, cursor.c0, st);
            cursor.advance(ci);
        }
        cp_async_commit();
    }
    int rd = 0, wr = STAGES - 1;
    for (int s = 0; s < steps; ++s) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // stage rd landed; everyone is done with stage wr (read at step s − 1)
        if (s + STAGES - 1 < steps) {
            load(cursor.tap, cursor.c0, wr);
            cursor.advance(ci);
        }
        cp_async_commit();
        const uint32_t a_s = as_base + rd * (BM * BK * 2), b_s = bs_base + rd * (BN * BK * 2);
        // The warp's 16-row groups (mma row tiles) that have this step's tap: the others hold
        // only zero-filled rows, whose products would add exact zeros, and are skipped. Two
        // copies of the k16 loop: the common case (every row tile) as it was, so the compiler
        // keeps issuing the next fragments' loads among the products; predicated products in
        // the other copy (a load per row tile behind the same test had serialised each load
        // with its products).
        const uint32_t need = (stage_groups[rd] >> (wm * FM)) & ((1u << FM) - 1);
        auto products = [&](auto every_row_tile) {
#pragma unroll
            for (int ks = 0; ks < BK / 16; ++ks) {
                // Byte offset of the lane's chunk: chunk 2·ks + c sits at ((2·ks) ^ (c ^ sw)) · 16.
                uint32_t b[FN][2];
#pragma unroll
                for (int j = 0; j < FN; j += 2) {
                    uint32_t r[4];
                    ldsm_x4(r, b_s + 2 * (b_row + j * 8 * BK) + (b_off ^ (ks << 5)));
                    b[j][0] = r[0];
                    b[j][1] = r[1];
                    b[j + 1][0] = r[2];
                    b[j + 1][1] = r[3];
                }
#pragma unroll
                for (int i = 0; i < FM; ++i) {
                    uint32_t a[4];
                    ldsm_x4(a, a_s + 2 * (a_row + i * 16 * BK) + (a_off ^ (ks << 5)));
                    if (!decltype(every_row_tile)::value && !(need & (1u << i))) continue;
#pragma unroll
                    for (int j = 0; j < FN; ++j) mma16816<T>(acc[i][j], a, b[j][0], b[j][1]);
                }
            }
        };
        if (need == (1u << FM) - 1) {
            products(std::true_type{});
        } else if (need) {
            products(std::false_type{});
        }
        rd = rd + 1 == STAGES ? 0 : rd + 1;
        wr = wr + 1 == STAGES ? 0 : wr + 1;
    }
    cp_async_wait<0>();

    // Accumulator layout (m16n8): c0,c1 at (row g, cols 2t, 2t+1); c2,c3 at row g+8. The
    // lane's columns are the same for every row, so their bias is read once.
    const int g = lane >> 2, t = lane & 3;
    const bool pairs = (co & 1) == 0;
    float bias0[FN], bias1[FN];
#pragma unroll
    for (int j = 0; j < FN; ++j) {
        const int col = col0 + wn * WTN + j * 8 + 2 * t;
        bias0[j] = bias && col < co ? bias[col] : 0.f;
        bias1[j] = bias && col + 1 < co ? bias[col + 1] : 0.f;
    }
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const uint32_t v = vox[wm * WTM + i * 16 + g + h * 8];
            if (v == ABSENT) continue;
            O *dst_row = out + (size_t)v * co;
#pragma unroll
            for (int j = 0; j < FN; ++j) {
                const int col = col0 + wn * WTN + j * 8 + 2 * t;
                O *dst = dst_row + col;
                const float x0 = acc[i][j][2 * h] + bias0[j], x1 = acc[i][j][2 * h + 1] + bias1[j];
                if (pairs && col + 1 < co) {
                    store2<O>(dst, x0, x1);  // Co and col even: aligned to the pair
                } else {
                    if (col < co) dst[0] = store<O>(x0);
                    if (col + 1 < co) dst[1] = store<O>(x1);
                }
            }
        }
}

// Dynamic shared memory of an instantiation (the host's `subm_conv_smem_bytes` must agree).
#define SUBM_SMEM(BM, BN, STAGES) ((STAGES) * ((BM) + (BN)) * BK * 2)

// `NAME` takes 16-byte copies (Ci % 8 == 0, 16-byte aligned operands), `NAME##_scalar` any
// operands: separate kernels, so the fast one carries no registers for the fallback.
#define SUBM_CONV_1(NAME, T, O, BM, BN, WM, WN, STAGES, VEC)                                        \
    extern "C" __global__ void __launch_bounds__(WM *WN * 32, BN > 128 ? 1 : 2)                     \
        NAME(const T *feats, const T *weight, const uint32_t *nbr, const uint32_t *order,           \
             const float *bias, O *out, int n, int ci, int co, int skip_groups) {                   \
        subm_conv<T, O, BM, BN, WM, WN, STAGES, VEC>(feats, weight, nbr, order, bias, out, n, ci,   \
                                                     co, skip_groups);                              \
    }
#define SUBM_CONV_2(NAME, T, O, BM, BN, WM, WN, STAGES)                                             \
    SUBM_CONV_1(NAME, T, O, BM, BN, WM, WN, STAGES, true)                                           \
    SUBM_CONV_1(NAME##_scalar, T, O, BM, BN, WM, WN, STAGES, false)
// Kernel names `subm_conv3d_<operands>_<output>_n<BN>[_scalar]` (built by `subm_conv3d` in
// src/ops/sparse_conv/cuda.rs): output in the operands' dtype, or f32.
#define SUBM_CONV(T, TN, BM, BN, WM, WN, STAGES)                                                    \
    SUBM_CONV_2(subm_conv3d_##TN##_##TN##_n##BN, T, T, BM, BN, WM, WN, STAGES)                      \
    SUBM_CONV_2(subm_conv3d_##TN##_f32_n##BN, T, float, BM, BN, WM, WN, STAGES)

// Tiles for 64 < Co < 256: 3 stages × 32 KB; for Co ≤ 64: 4 stages × 24 KB; for Co ≥ 256 (unless
// TRELLIS2_CONV_TILE=128): 128 × 256 tiles, 64 × 64 warp tiles (half the A gathers and fewer
// ldmatrix per mma; 5–8% faster on an H100), 3 stages × 48 KB, one block an SM.
static_assert(SUBM_SMEM(128, 128, 3) == 98304, "src/ops/sparse_conv/cuda.rs: SUBM_CONV_SMEM_BYTES");
static_assert(SUBM_SMEM(128, 64, 4) == 98304, "src/ops/sparse_conv/cuda.rs: SUBM_CONV_SMEM_BYTES");
static_assert(SUBM_SMEM(128, 256, 3) == 147456, "src/ops/sparse_conv/cuda.rs: SUBM_CONV_WIDE_SMEM_BYTES");
SUBM_CONV(__nv_bfloat16, bf16, 128, 128, 2, 4, 3)
SUBM_CONV(__nv_bfloat16, bf16, 128, 64, 4, 2, 4)
SUBM_CONV(__nv_bfloat16, bf16, 128, 256, 2, 4, 3)
SUBM_CONV(__half, f16, 128, 128, 2, 4, 3)
SUBM_CONV(__half, f16, 128, 64, 4, 2, 4)
SUBM_CONV(__half, f16, 128, 256, 2, 4, 3)
