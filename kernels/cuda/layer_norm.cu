// Per-voxel LayerNorm over the channel axis, f32, two-pass mean/variance like the CPU reference
// (`src/sparse/norm.rs`): one warp per row of x [T, C], then y = (x − mean)·rstd·w + b.
#include <stdint.h>

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

extern "C" __global__ void voxel_layer_norm_f32(const float *__restrict__ x, const float *__restrict__ w,
                                                const float *__restrict__ b, float *__restrict__ y, int rows,
                                                int c, float eps) {
    const int row = (int)((blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const float *v = x + (size_t)row * c;
    float *o = y + (size_t)row * c;
    float s = 0.f;
    for (int i = lane; i < c; i += 32) s += v[i];
    const float mean = warp_sum(s) / (float)c;
    float q = 0.f;
    for (int i = lane; i < c; i += 32) {
        const float d = v[i] - mean;
        q += d * d;
    }
    const float inv = 1.f / sqrtf(warp_sum(q) / (float)c + eps);
    for (int i = lane; i < c; i += 32) o[i] = (v[i] - mean) * inv * w[i] + b[i];
}
