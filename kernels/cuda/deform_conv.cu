// Modulated deformable im2col (DCNv2, torchvision.ops.deform_conv2d semantics); reference:
// `ModulatedIm2Col::cpu_fwd` in src/ops/deform_conv/mod.rs, tested against it in tests/cuda_kernels.rs.
// The same computation as kernels/metal/deform_conv.metal (whose header documents the formula):
// one thread per element of the column matrix cols [B, C·kh·kw, rows·Wo] of a band of output
// rows; the contraction with the weight is candle's cuBLAS matmul.
//
// Bilinear sampling is zero outside (−1, H) × (−1, W) and each neighbour outside the image
// contributes zero; that range test comes before any float → int conversion, so offsets far
// outside the image never index memory. f32 in and out, the CPU reference's operation order
// (fused multiply-adds are disabled for the blend with __fmul_rn/__fadd_rn so results match it).
#include <stdint.h>

// Mirrors `DeformIm2ColArgs` (src/ops/metal/kargs.rs, #[repr(C)], every field 32 bits), passed by
// value as the kernel's last argument.
struct DeformIm2ColArgs {
    uint32_t batch, channels, height, width;
    uint32_t kh, kw, out_h, out_w;
    uint32_t offset_groups;
    uint32_t stride_y, stride_x, pad_y, pad_x, dil_y, dil_x;
    uint32_t row_start, rows;
    uint32_t first, count;
};
static_assert(sizeof(DeformIm2ColArgs) == 19 * 4, "DeformIm2ColArgs must match the Rust struct");

__device__ __forceinline__ float deform_sample(const float *__restrict__ plane, int height, int width,
                                               float y, float x) {
    if (y <= -1.f || y >= (float)height || x <= -1.f || x >= (float)width) return 0.f;
    const float y_low = floorf(y), x_low = floorf(x);
    const float ly = __fsub_rn(y, y_low), lx = __fsub_rn(x, x_low);
    const float hy = __fsub_rn(1.f, ly), hx = __fsub_rn(1.f, lx);
    const int y0 = (int)y_low, x0 = (int)x_low, y1 = y0 + 1, x1 = x0 + 1;
    const bool in_y0 = y0 >= 0, in_y1 = y1 < height, in_x0 = x0 >= 0, in_x1 = x1 < width;
    const float v00 = in_y0 && in_x0 ? plane[y0 * width + x0] : 0.f;
    const float v01 = in_y0 && in_x1 ? plane[y0 * width + x1] : 0.f;
    const float v10 = in_y1 && in_x0 ? plane[y1 * width + x0] : 0.f;
    const float v11 = in_y1 && in_x1 ? plane[y1 * width + x1] : 0.f;
    float s = __fmul_rn(__fmul_rn(hy, hx), v00);
    s = __fadd_rn(s, __fmul_rn(__fmul_rn(hy, lx), v01));
    s = __fadd_rn(s, __fmul_rn(__fmul_rn(ly, hx), v10));
    return __fadd_rn(s, __fmul_rn(__fmul_rn(ly, lx), v11));
}

// Grid: ceil(count / blockDim.x) blocks; writes cols[first .. first + count).
extern "C" __global__ void deform_im2col_f32(const float *__restrict__ input, const float *__restrict__ offset,
                                             const float *__restrict__ mask, float *__restrict__ cols,
                                             const DeformIm2ColArgs a) {
    const uint64_t local = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (local >= a.count) return;
    const uint64_t e = (uint64_t)a.first + local;
    const uint32_t taps = a.kh * a.kw;
    const uint64_t pix = (uint64_t)a.rows * a.out_w;
    const uint32_t k = (uint32_t)(e % pix);
    const uint64_t r = e / pix; // (b·C + c)·taps + t
    const uint32_t t = (uint32_t)(r % taps);
    const uint32_t c = (uint32_t)((r / taps) % a.channels);
    const uint32_t b = (uint32_t)(r / ((uint64_t)taps * a.channels));
    const uint32_t i = t / a.kw, j = t % a.kw;
    const uint32_t group = c / (a.channels / a.offset_groups);
    const uint32_t oy = a.row_start + k / a.out_w, ox = k % a.out_w;
    const uint64_t out_plane = (uint64_t)a.out_h * a.out_w;
    const uint64_t q = (uint64_t)oy * a.out_w + ox;
    const uint64_t tap = ((uint64_t)b * a.offset_groups + group) * taps + t;
    const float dy = offset[(2 * tap) * out_plane + q];
    const float dx = offset[(2 * tap + 1) * out_plane + q];
    const float m = mask[tap * out_plane + q];
    const float y = __fadd_rn(__fsub_rn((float)(oy * a.stride_y + i * a.dil_y), (float)a.pad_y), dy);
    const float x = __fadd_rn(__fsub_rn((float)(ox * a.stride_x + j * a.dil_x), (float)a.pad_x), dx);
    const float *plane = input + ((uint64_t)b * a.channels + c) * a.height * a.width;
    cols[e] = __fmul_rn(m, deform_sample(plane, (int)a.height, (int)a.width, y, x));
}
