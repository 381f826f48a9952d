// The 3x3x3 neighbour map of a coordinate set on the GPU: the CUDA twin of
// kernels/metal/neighbour_map.metal (same keys, hash, table and status words; reference: the CPU
// builder in src/ops/neighbour_map/mod.rs, which tests/cuda_kernels.rs compares with exactly).
//
//   map[i * 27 + k] = row j of the voxel at coords[i] + offset(k) in the same batch item, or ABSENT
//   offset(k) = (k / 9 - 1, k / 3 % 3 - 1, k % 3 - 1) on (x, y, z)
//
// Keys pack batch, x, y, z with the host's bit widths into at most 31 bits (so EMPTY is never a
// key; one plan serves Metal, which has no 64-bit CAS, and CUDA). Open addressing with linear
// probing, at most half full. Three launches on one stream: clear, insert (atomicCAS; a key
// already present is a duplicate voxel, whose row goes to status[0] by atomicMin), lookup (one
// thread per (voxel, tap); status[1] counts existing pairs, one atomic per warp).
#include <stdint.h>

#define NBR_TAPS 27
#define NBR_EMPTY 0xffffffffu

struct NeighbourArgs {
    uint32_t n_voxels;
    uint32_t capacity_mask;
    uint32_t bits_x;
    uint32_t bits_y;
    uint32_t bits_z;
};

// murmur3's 32-bit finaliser: consecutive z (the low key bits) land far apart.
__device__ __forceinline__ uint32_t nbr_hash(uint32_t key) {
    key ^= key >> 16;
    key *= 0x85ebca6bu;
    key ^= key >> 13;
    key *= 0xc2b2ae35u;
    key ^= key >> 16;
    return key;
}

__device__ __forceinline__ uint32_t nbr_key(const NeighbourArgs &a, uint32_t b, uint32_t x, uint32_t y,
                                            uint32_t z) {
    return (((((b << a.bits_x) | x) << a.bits_y) | y) << a.bits_z) | z;
}

extern "C" __global__ void neighbour_clear_u32(NeighbourArgs args, uint32_t *keys, uint32_t *status) {
    const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= args.capacity_mask) keys[i] = NBR_EMPTY;
    if (i == 0) {
        status[0] = NBR_EMPTY;
        status[1] = 0;
    }
}

extern "C" __global__ void neighbour_insert_i32(NeighbourArgs args, const int32_t *coords, uint32_t *keys,
                                                uint32_t *rows, uint32_t *status) {
    const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= args.n_voxels) return;
    const int32_t *c = coords + (size_t)i * 4;
    const uint32_t key = nbr_key(args, (uint32_t)c[0], (uint32_t)c[1], (uint32_t)c[2], (uint32_t)c[3]);
    uint32_t slot = nbr_hash(key) & args.capacity_mask;
    // At most half full, so an EMPTY slot is always reached.
    while (true) {
        const uint32_t prev = atomicCAS(&keys[slot], NBR_EMPTY, key);
        if (prev == NBR_EMPTY) {
            rows[slot] = i;
            return;
        }
        if (prev == key) {
            atomicMin(&status[0], i);
            return;
        }
        slot = (slot + 1) & args.capacity_mask;
    }
}

extern "C" __global__ void neighbour_lookup_i32(NeighbourArgs args, const int32_t *coords,
                                                const uint32_t *keys, const uint32_t *rows, uint32_t *map,
                                                uint32_t *status) {
    const uint32_t e = blockIdx.x * blockDim.x + threadIdx.x;  // the host checks T * 27 < 2^32
    uint32_t found = 0;
    if (e < args.n_voxels * NBR_TAPS) {
        const uint32_t i = e / NBR_TAPS, k = e % NBR_TAPS;
        const int32_t *c = coords + (size_t)i * 4;
        // Signed, then range-checked: a neighbour outside [0, 2^bits) cannot be a voxel.
        const int x = c[1] + (int)(k / 9) - 1;
        const int y = c[2] + (int)(k / 3 % 3) - 1;
        const int z = c[3] + (int)(k % 3) - 1;
        uint32_t row = NBR_EMPTY;
        if (x >= 0 && y >= 0 && z >= 0 && (uint32_t)x < (1u << args.bits_x) &&
            (uint32_t)y < (1u << args.bits_y) && (uint32_t)z < (1u << args.bits_z)) {
            const uint32_t key = nbr_key(args, (uint32_t)c[0], (uint32_t)x, (uint32_t)y, (uint32_t)z);
            uint32_t slot = nbr_hash(key) & args.capacity_mask;
            while (true) {
                const uint32_t at = keys[slot];
                if (at == key) {
                    row = rows[slot];
                    break;
                }
                if (at == NBR_EMPTY) break;
                slot = (slot + 1) & args.capacity_mask;
            }
        }
        map[e] = row;  // NBR_EMPTY is ABSENT (u32::MAX) as well
        found = row != NBR_EMPTY ? 1u : 0u;
    }
    // Every lane takes part, including those past the end.
    const uint32_t pairs = __reduce_add_sync(0xffffffffu, found);
    if ((threadIdx.x & 31) == 0 && pairs > 0) atomicAdd(&status[1], pairs);
}
