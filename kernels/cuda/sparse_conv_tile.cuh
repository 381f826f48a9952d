// The tile prologue both submanifold-conv kernels share (sparse_conv.cu, mma.sync, and
// sparse_conv_sm90a.cu, wgmma): which voxel each of a block's BM tile rows computes and the 27
// neighbour rows of those voxels, staged in shared memory so the main loop's gathers read their
// source rows without a global lookup.
#pragma once

#include <cstdint>

namespace conv_tile {

constexpr uint32_t NO_ROW = 0xffffffffu;  // an absent neighbour / a tile row past the end
constexpr int TAP_COUNT = 27;

// vox[r] = the voxel of tile row r (order[row0 + r], or row0 + r without an order; NO_ROW past
// the end or for an order entry ≥ n, which then writes nothing), then nb[k][r] = its neighbour
// at tap k (NO_ROW when absent). Consecutive threads read one map row: coalesced. Ends with a
// barrier, so both arrays are ready for every thread (and whatever the caller wrote to shared
// memory before the call is too). `rows` ≥ 0: `order` has that many entries instead of n (the
// C2S children conv's row list, whose entries are parents, several rows each).
template <int BM, int NT>
__device__ __forceinline__ void load_neighbours(const uint32_t *__restrict__ nbr,
                                                const uint32_t *__restrict__ order, int n, int row0,
                                                uint32_t *vox, uint32_t (*nb)[BM + 1], int tid,
                                                int rows = -1) {
    if (tid < BM) {
        const int p = row0 + tid;
        uint32_t v = NO_ROW;
        if (p < (rows < 0 ? n : rows)) v = order ? order[p] : (uint32_t)p;
        vox[tid] = v < (uint32_t)n ? v : NO_ROW;
    }
    __syncthreads();
    for (int i = tid; i < BM * TAP_COUNT; i += NT) {
        const int r = i / TAP_COUNT, k = i - r * TAP_COUNT;
        const uint32_t v = vox[r];
        nb[k][r] = v != NO_ROW ? nbr[(size_t)v * TAP_COUNT + k] : NO_ROW;
    }
    __syncthreads();
}

// The copies' position in the main loop: the tap (the next set bit of the tile's tap mask) and
// the channel offset of the next `BK`-wide chunk of it; no division, a compare per step.
template <int BK> struct TapCursor {
    uint32_t rest;
    int tap, c0;
    __device__ __forceinline__ explicit TapCursor(uint32_t mask)
        : rest(mask), tap(mask ? __ffs(mask) - 1 : 0), c0(0) {}
    __device__ __forceinline__ void advance(int ci) {
        c0 += BK;
        if (c0 >= ci) {
            c0 = 0;
            rest &= rest - 1;
            tap = rest ? __ffs(rest) - 1 : 0;
        }
    }
};

}  // namespace conv_tile
