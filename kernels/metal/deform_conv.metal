// Modulated deformable im2col (DCNv2, torchvision.ops.deform_conv2d semantics); reference:
// `ModulatedIm2Col::cpu_fwd` in src/ops/deform_conv/mod.rs, which this kernel is tested against
// through tests/metal_emu.rs. The contraction with the weight is candle's own matmul.
//
//   cols[b, c·taps + t, k] = mask[b, g·taps + t, q] · bilinear(input[b, c], y, x)
//   k = (oy − row_start)·Wo + ox over the band's rows, q = oy·Wo + ox, t = i·kw + j, g = c / (C/G)
//   y = oy·stride_y − pad_y + i·dil_y + offset[b, 2(g·taps + t), q]   (dy first, then dx)
//   x = ox·stride_x − pad_x + j·dil_x + offset[b, 2(g·taps + t) + 1, q]
//
// Bilinear: zero when y <= −1, y >= H, x <= −1 or x >= W; otherwise the four neighbours, each
// one outside the image contributing zero (no clamping). The range test comes before any float →
// int conversion, so offsets far outside the image (or huge) never index memory.
// Numerics: f32 in, f32 out, the same operation order as the CPU reference (so without fused
// multiply-adds the results are bit-identical; the tolerance allows for the GPU fusing them).
// Layouts: input [B, C, H, W], offset [B, 2·G·taps, Ho, Wo], mask [B, G·taps, Ho, Wo],
// cols [B, C·taps, rows·Wo], all contiguous.
// Grid: one thread per column element, DEFORM_THREADS per threadgroup, elements
// args.first .. args.first + args.count per dispatch: the whole band unless its estimate exceeds
// the command-buffer budget (src/ops/metal/dispatch.rs). No threadgroup memory; 32-bit
// indices (the host checks that every tensor has fewer than 2^32 elements).
#include <metal_stdlib>
#include "kargs.h"
using namespace metal;

#define DEFORM_THREADS 128

// torchvision's bilinear_interpolate on one input plane.
inline float deform_sample(device const float* plane, int height, int width, float y, float x) {
    if (y <= -1.0f || y >= float(height) || x <= -1.0f || x >= float(width)) {
        return 0.0f;
    }
    const float y_low = floor(y);
    const float x_low = floor(x);
    const float ly = y - y_low;
    const float lx = x - x_low;
    const float hy = 1.0f - ly;
    const float hx = 1.0f - lx;
    const int y0 = int(y_low);
    const int x0 = int(x_low);
    const int y1 = y0 + 1;
    const int x1 = x0 + 1;
    const bool in_y0 = y0 >= 0;
    const bool in_y1 = y1 < height;
    const bool in_x0 = x0 >= 0;
    const bool in_x1 = x1 < width;
    const float v00 = in_y0 && in_x0 ? plane[y0 * width + x0] : 0.0f;
    const float v01 = in_y0 && in_x1 ? plane[y0 * width + x1] : 0.0f;
    const float v10 = in_y1 && in_x0 ? plane[y1 * width + x0] : 0.0f;
    const float v11 = in_y1 && in_x1 ? plane[y1 * width + x1] : 0.0f;
    return hy * hx * v00 + hy * lx * v01 + ly * hx * v10 + ly * lx * v11;
}

template <typename T>
kernel void deform_im2col(
    constant DeformIm2ColArgs& args [[buffer(0)]],
    device const T* input [[buffer(1)]],
    device const T* offset [[buffer(2)]],
    device const T* mask [[buffer(3)]],
    device float* cols [[buffer(4)]],
    uint3 tgid [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]])
{
    const uint local = tgid.x * DEFORM_THREADS + tid;
    if (local >= args.count) {
        return;
    }
    // 32-bit indices throughout: the host refuses bands, inputs and offsets of 2^32 elements
    // or more (Apple GPUs divide in software; a 64-bit division costs several 32-bit ones).
    const uint e = args.first + local;
    const uint taps = args.kh * args.kw;
    const uint pix = args.rows * args.out_w;
    const uint r = e / pix; // (b·C + c)·taps + t
    const uint k = e - r * pix;
    const uint bc = r / taps;
    const uint t = r - bc * taps;
    const uint b = bc / args.channels;
    const uint c = bc - b * args.channels;
    const uint i = t / args.kw;
    const uint j = t - i * args.kw;
    const uint group = c / (args.channels / args.offset_groups);
    const uint row = k / args.out_w;
    const uint ox = k - row * args.out_w;
    const uint oy = args.row_start + row;
    const uint out_plane = args.out_h * args.out_w;
    const uint q = oy * args.out_w + ox;
    const uint tap = (b * args.offset_groups + group) * taps + t;
    const float dy = float(offset[(2 * tap) * out_plane + q]);
    const float dx = float(offset[(2 * tap + 1) * out_plane + q]);
    const float m = float(mask[tap * out_plane + q]);
    const float y = float(oy * args.stride_y + i * args.dil_y) - float(args.pad_y) + dy;
    const float x = float(ox * args.stride_x + j * args.dil_x) - float(args.pad_x) + dx;
    device const T* plane = input + bc * (args.height * args.width);
    cols[e] = m * deform_sample(plane, int(args.height), int(args.width), y, x);
}

// Names carry the dtype; src/ops/metal/dispatch.rs builds the same string. Only f32 is
// dispatched: the op widens every operand to f32 first (BiRefNet runs in f32 upstream).
#define INSTANTIATE_DEFORM_IM2COL(tname, T)                                                        \
    template [[host_name("deform_im2col_" #tname)]] kernel void deform_im2col<T>(                  \
        constant DeformIm2ColArgs& args [[buffer(0)]],                                             \
        device const T* input [[buffer(1)]],                                                       \
        device const T* offset [[buffer(2)]],                                                      \
        device const T* mask [[buffer(3)]],                                                        \
        device float* cols [[buffer(4)]],                                                          \
        uint3 tgid [[threadgroup_position_in_grid]],                                               \
        uint tid [[thread_index_in_threadgroup]]);

INSTANTIATE_DEFORM_IM2COL(f32, float)
