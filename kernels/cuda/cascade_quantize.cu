// The cascade's quantisation on the GPU (docs/MODEL.md §1.4.1); the CPU reference is `quantize_coords` in
// src/pipeline/cascade.rs, whose occupancy bitmap this kernel fills the same way.
//
// Why: `upsample(lr, 4)` leaves ≈1.75 M (up to ≈7 M) [b, x, y, z] rows on the 512³ grid on the
// device. Reading them back costs ≈10 ms on an H100 at 1.75 M rows; the bitmap of the
// quantised grid is `batches · side³` bits (≈110 KB at side 96), and the host decodes the sorted
// unique rows from it. The token budget's step-down launches this kernel again per resolution.
//
// cascade_occupancy: one thread per row (grid-stride). The row's spatial coordinates are
// quantised as q = trunc(((v + 0.5) / 512) · side) in f32, each operation rounded to nearest
// (explicit intrinsics: no contraction, the host's Rust f32 math), truncated toward zero and
// saturated like Rust's `as i32`. A row inside the grid (0 ≤ b < batches, 0 ≤ q < side) sets bit
// cell % 32 of word cell / 32, cell = ((b·side + qx)·side + qy)·side + qz; any other row sets
// *off_grid = 1 and the host falls back to reading every row. The word is read first: most rows
// share their cell with neighbouring rows (8³ rows a cell at side 64), so most atomics are
// skipped; a stale read only costs an atomic that changes nothing.
#include <stdint.h>

#define EW_THREADS 256

// Side of the grid `upsample(lr, 4)` returns coordinates on (`UPSAMPLED_GRID`).
#define UPSAMPLED_GRID 512.0f

__device__ __forceinline__ int quantize_axis(int v, float side) {
    const float t = __fmul_rn(__fdiv_rn(__fadd_rn(__int2float_rn(v), 0.5f), UPSAMPLED_GRID), side);
    return __float2int_rz(t);
}

extern "C" __global__ void __launch_bounds__(EW_THREADS)
    cascade_occupancy(const int *rows, size_t n, uint32_t side, uint32_t batches, uint32_t *bitmap,
                      uint32_t *off_grid) {
    const float grid = (float)side;
    for (size_t i = blockIdx.x * (size_t)EW_THREADS + threadIdx.x; i < n; i += (size_t)gridDim.x * EW_THREADS) {
        const int *row = rows + 4 * i;
        const int b = row[0];
        const int x = quantize_axis(row[1], grid);
        const int y = quantize_axis(row[2], grid);
        const int z = quantize_axis(row[3], grid);
        const bool inside = b >= 0 && (uint32_t)b < batches && x >= 0 && (uint32_t)x < side && y >= 0 &&
                            (uint32_t)y < side && z >= 0 && (uint32_t)z < side;
        if (!inside) {
            *off_grid = 1u;
            continue;
        }
        const size_t cell = (((size_t)b * side + x) * side + y) * side + z;
        const uint32_t bit = 1u << (cell & 31);
        uint32_t *word = bitmap + (cell >> 5);
        if ((*word & bit) == 0) atomicOr(word, bit);
    }
}
