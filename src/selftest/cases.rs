//! The kernel cases, as data. The throughput cases ([`Size::Bench`]) reach ragged tiles (voxel
//! and channel counts that are not tile multiples, sequences of 1029 image tokens) while the CPU
//! reference stays fast enough for CI; the edge cases ([`Size::Small`]) reach empty inputs,
//! single rows, odd widths, split dispatches and every kernel variant's tile edges; the large
//! ones ([`Size::Large`]) the models' sizes on a GPU.

use candle_core::DType;

use super::case::{Case, ConvMap, Op, RopeTable, Size, Tolerance, Voxels, DTYPES};
use crate::ops::bias_act::Activation;
use RopeTable::{Identity, OneRow, Positions, Random};
use Size::{Bench, Large, Small};

const F32: &[DType] = &[DType::F32];
const F16: &[DType] = &[DType::F16];
const BF16: &[DType] = &[DType::BF16];
const HALVES: &[DType] = &[DType::BF16, DType::F16];
const F32_BF16: &[DType] = &[DType::F32, DType::BF16];
const F16_F32: &[DType] = &[DType::F16, DType::F32];
const U32: &[DType] = &[DType::U32];

const ACTIVATIONS: [Activation; 4] = [
    Activation::None,
    Activation::GeluTanh,
    Activation::Silu,
    Activation::GeluErf,
];

const ROUNDED: Tolerance = Tolerance::ROUNDED;
const ELEMENTWISE: Tolerance = Tolerance::ELEMENTWISE;
const REDUCTION: Tolerance = Tolerance::REDUCTION;
const NORM: Tolerance = Tolerance::NORM;
const TC: Tolerance = Tolerance::TENSOR_CORE;
const EXACT: Tolerance = Tolerance::EXACT;
/// The deformable conv's sampled columns: the same f32 arithmetic (no FMA), f32 only.
const COLUMNS: Tolerance = Tolerance::new(1e-6, 0.0, 0.0);

/// Every case, in the order the executors print them.
pub fn cases() -> Vec<Case> {
    [
        throughput(),
        sparse_conv(),
        neighbour_map(),
        conv_order(),
        norms(),
        elementwise(),
        deformable(),
        attention_cases(),
        norm_act_cases(),
        linear_cases(),
    ]
    .concat()
}

/// The attention calls of the released models at their sizes, which `trellis2 selftest` checks
/// and times on Metal through both attention paths (candle's steel attention and ours) so the
/// first run on a Mac tells which is faster: DINOv3's self-attention at 512 and 1024 px (1029
/// and 4101 tokens, f32, head dim 64) and the flows' self- and cross-attention at 3,712 and
/// 15,272 tokens (bf16, f16 where bf16 is unavailable; head dim 128). Two heads instead of 16
/// or 12: the CPU reference of 12 heads at 15,272 tokens alone is 1.4 TFLOP; per-head
/// throughput is what the paths are compared on.
pub fn metal_attention_cases() -> Vec<Case> {
    const FLOWS: &[DType] = &[DType::BF16, DType::F16];
    table([
        (Bench, attention(&[1029], None, 2, 64), F32, TC),
        (Bench, attention(&[4101], None, 2, 64), F32, TC),
        (Bench, attention(&[3712], None, 2, 128), FLOWS, TC),
        (Bench, attention(&[3712], Some(&[1029]), 2, 128), FLOWS, TC),
        (Bench, attention(&[15272], None, 2, 128), FLOWS, TC),
        (Bench, attention(&[15272], Some(&[4101]), 2, 128), FLOWS, TC),
    ])
}

/// Cases from a table of (size, op, dtypes, tolerance).
fn table<const N: usize>(rows: [(Size, Op, &'static [DType], Tolerance); N]) -> Vec<Case> {
    rows.into_iter()
        .map(|(size, op, dtypes, tolerance)| Case::new(size, op, dtypes, tolerance))
        .collect()
}

/// What `trellis2 selftest` checks and times.
fn throughput() -> Vec<Case> {
    // Two batch items, the second at twice the resolution (a cascade's two levels).
    let levels = Voxels::Union(vec![
        Voxels::shell(0, 20, 9.0, 1.0),
        Voxels::shell(1, 38, 18.0, 1.0),
    ]);
    let image = Some(&[1029, 1029][..]);
    table([
        (
            Bench,
            conv(of(Voxels::shell(0, 20, 9.0, 1.0)), 48, 80, true),
            DTYPES,
            ROUNDED,
        ),
        (Bench, attention(&[300, 211], None, 3, 64), DTYPES, ROUNDED),
        (Bench, attention(&[300, 211], None, 2, 128), DTYPES, ROUNDED),
        (Bench, attention(&[150, 90], image, 3, 64), DTYPES, ROUNDED),
        (Bench, attention(&[150, 90], image, 2, 128), DTYPES, ROUNDED),
        (Bench, layer_norm(1000, 1536, 4.0), DTYPES, ROUNDED),
        (
            Bench,
            modulate(&[0, 600, 1000], 1536, false),
            DTYPES,
            ROUNDED,
        ),
        (
            Bench,
            rms_rope(2000, 3, 64, true, Positions),
            DTYPES,
            ROUNDED,
        ),
        (
            Bench,
            rms_rope(2000, 2, 128, true, Positions),
            DTYPES,
            ROUNDED,
        ),
        // The q/k RMS norm of the cross-attention: one identity rotation row.
        (
            Bench,
            rms_rope(2000, 2, 128, true, Identity),
            DTYPES,
            ROUNDED,
        ),
        // [500, 8192]: the MLP's hidden width; the CPU reference of 4M GELUs stays under a
        // second. 1539: an odd width, the scalar kernels.
        (
            Bench,
            bias_act(500, 8192, Activation::GeluTanh),
            DTYPES,
            ROUNDED,
        ),
        (
            Bench,
            bias_act(1000, 1539, Activation::Silu),
            DTYPES,
            ROUNDED,
        ),
        (
            Bench,
            bias_act(1000, 4096, Activation::GeluErf),
            DTYPES,
            ROUNDED,
        ),
        (
            Bench,
            bias_act(1000, 1536, Activation::None),
            DTYPES,
            ROUNDED,
        ),
        // A linear layer with its epilogue: on CUDA one cuBLASLt matmul with the bias and
        // tanh-GELU or the residual fused, rounded once (against the composed ops in f32);
        // elsewhere the composed path, which rounds up to three times in f16/bf16 (against
        // the same ops on the CPU in the same dtype).
        (
            Bench,
            linear(257, 1024, 3072, true, Activation::GeluTanh, false),
            DTYPES,
            ROUNDED,
        ),
        (
            Bench,
            linear(257, 4096, 1024, true, Activation::None, true),
            DTYPES,
            ROUNDED,
        ),
        (Bench, gated(&[0, 600, 600, 1000], 1536), DTYPES, ROUNDED),
        // The shape encoder's first downsampling at 1024: 1.2 M voxels of 64 channels.
        (Bench, s2c(1_200_000, 64, 200_000), DTYPES, EXACT),
        (Bench, map(levels), U32, EXACT),
        // The decoders' order at 1.2 M voxels, CUDA's and Metal's default window for 256-byte
        // rows (128 channels of f16).
        (Bench, order(surface(0, 236.0), 131_072), U32, EXACT),
        // BiRefNet's deformable sampling at a 64² map (f32 only; no slow twin, so GPUs only).
        (Bench, im2col([1, 64, 64, 64], 3, 3.0), F32, ROUNDED),
    ])
}

fn sparse_conv() -> Vec<Case> {
    let two_shells = Voxels::Union(vec![
        Voxels::shell(0, 8, 3.0, 0.9),
        Voxels::shell(1, 6, 2.0, 0.9),
    ]);
    let cube = Voxels::Block {
        batch: 0,
        side: 5,
        at: 0,
    };
    table([
        (
            Small,
            conv(of(Voxels::Empty), 4, 3, false),
            DTYPES,
            REDUCTION,
        ),
        (
            Small,
            conv(of(Voxels::One([0, 5, 5, 5])), 5, 7, false),
            DTYPES,
            REDUCTION,
        ),
        // Only the centre tap; ragged K and two Co tiles; one channel.
        (
            Small,
            conv(of(Voxels::Spaced(70)), 3, 2, false),
            F32,
            REDUCTION,
        ),
        (
            Small,
            conv(of(two_shells), 37, 70, false),
            DTYPES,
            REDUCTION,
        ),
        (Small, conv(of(cube), 1, 1, false), F32, REDUCTION),
        // Output tiles of 64 (Co ≤ 64), 128 and 256 columns (Co ≥ 256 with at least one
        // 128 × 256 tile per SM, 132 on an H100: the 17 000-, 9 000- and 8 500-row maps), each
        // output dtype, with and without bias.
        (Small, conv(random(1000, 0.6), 64, 64, false), BF16, TC),
        (Small, conv(random(1000, 0.6), 64, 64, true), F16, TC),
        (Large, conv(random(777, 0.6), 128, 256, true), F16, TC),
        (Large, conv(random(640, 0.6), 256, 512, true), BF16, TC),
        (Small, conv(random(513, 0.6), 32, 96, true), BF16, TC),
        (Small, conv(random(300, 0.6), 40, 200, false), F16, TC),
        (Large, conv(random(2000, 0.6), 1024, 64, false), BF16, TC),
        (Small, conv(random(129, 0.6), 16, 16, true), F32, TC),
        (Small, conv(random(333, 0.6), 64, 300, true), F32, TC),
        (Small, conv(random(257, 0.6), 128, 130, false), F32, TC),
        (Large, conv(random(17_000, 0.6), 64, 256, true), F16, TC),
        (Large, conv(random(9_000, 0.6), 32, 520, false), BF16, TC),
        (Large, conv(random(8_500, 0.6), 64, 300, true), F32, TC),
        (Small, conv(of(Voxels::Empty), 32, 32, false), BF16, TC),
        (Small, conv(ConvMap::CentreOnly(1), 8, 8, true), BF16, TC),
        // Odd channel counts (element-wise copies and stores) and channel counts below a tile.
        (Small, conv(random(257, 0.5), 3, 1, true), F16, TC),
        (Small, conv(random(257, 0.5), 13, 7, false), BF16, TC),
        (Small, conv(random(257, 0.5), 100, 65, true), F32, TC),
        (Small, conv(random(257, 0.5), 1, 130, false), F16, TC),
        (Small, conv(random(257, 0.5), 33, 5, false), F32, TC),
        (Small, conv(random(257, 0.5), 9, 257, true), BF16, TC),
        // Isolated voxels: no tap at all (the bias alone), and the centre only; every tap.
        (
            Small,
            conv(ConvMap::NoTaps(300), 64, 64, true),
            F32_BF16,
            TC,
        ),
        (
            Small,
            conv(ConvMap::CentreOnly(300), 64, 128, false),
            BF16,
            TC,
        ),
        (Small, conv(random(256, 1.0), 64, 64, false), BF16, TC),
        // The two 64-row halves of every 128-row tile with disjoint taps; the last tile is
        // partial (1000 = 7 · 128 + 104 rows: its second half has 40 rows). Co 64, 200 and 300
        // give the 64-, 128- and 256-column tiles (the last with a tile for every SM).
        (Small, conv(half_tiles(1000), 64, 64, true), BF16, TC),
        (Large, conv(half_tiles(1000), 128, 200, false), F16, TC),
        (Large, conv(half_tiles(17_000), 64, 300, true), F32, TC),
        // The decoders' surfaces.
        (Large, conv(of(surface(0, 60.0)), 64, 64, true), F16, TC),
        (Large, conv(of(surface(0, 30.0)), 256, 256, true), BF16, TC),
        (Large, conv(of(surface(0, 90.0)), 32, 32, true), BF16, TC),
    ])
}

fn neighbour_map() -> Vec<Case> {
    let block = |batch, side, at| Voxels::Block { batch, side, at };
    // The same positions in several batches.
    let batches = Voxels::Union(vec![
        Voxels::shell(0, 8, 3.0, 0.9),
        Voxels::shell(1, 8, 3.0, 0.9),
        Voxels::shell(2, 14, 5.5, 0.9),
    ]);
    let mixed = Voxels::Union(vec![surface(0, 6.0), surface(1, 9.0), block(2, 9, 500)]);
    // 1.4 M voxels on 10-bit axes.
    let far = Voxels::Shell {
        batch: 0,
        side: 504,
        radius: 250.0,
        width: 0.87,
        at: 500,
    };
    let scatter = Voxels::Scatter {
        batches: 2,
        points: 3000,
    };
    table([
        (Small, map(Voxels::Empty), U32, EXACT),
        (Small, map(Voxels::One([0, 0, 0, 0])), U32, EXACT),
        (Small, map(Voxels::Spaced(70)), U32, EXACT),
        // 63 threadgroups of the Metal kernel race on one hash table.
        (Small, map(block(0, 20, 1)), U32, EXACT),
        (Small, map(block(0, 40, 1)), U32, EXACT),
        (Small, map(batches), U32, EXACT),
        (Small, map(mixed), U32, EXACT),
        (Small, map(scatter), U32, EXACT),
        (Large, map(far), U32, EXACT),
    ])
}

/// The conv's voxel order (GPUs only: the CPU op is the reference): windows below, at and past
/// a threadgroup's run of items, ragged last windows, one window, and a set whose masks are all
/// equal (stability: the order is the identity).
fn conv_order() -> Vec<Case> {
    let shell = surface(0, 28.0); // 17 k voxels: 17 threadgroups of 1024 items a pass
    table([
        (Small, order(Voxels::Empty, 7), U32, EXACT),
        (Small, order(Voxels::One([0, 3, 3, 3]), 1), U32, EXACT),
        (Small, order(shell.clone(), 1), U32, EXACT),
        (Small, order(shell.clone(), 7), U32, EXACT),
        (Small, order(shell.clone(), 1000), U32, EXACT),
        (Small, order(shell.clone(), 3000), U32, EXACT),
        (Small, order(shell.clone(), 16_384), U32, EXACT),
        (Small, order(shell, usize::MAX), U32, EXACT),
        (Small, order(Voxels::Spaced(5003), 4096), U32, EXACT),
        (Large, order(surface(0, 120.0), 16_384), U32, EXACT),
    ])
}

fn norms() -> Vec<Case> {
    table([
        // f32 sums in another order: their rounding grows with |mean| / std (the CPU op
        // itself is ≈1e-4 off an f64 evaluation at mean 300). 16-byte vector paths (C a
        // multiple of 4 f32 values, up to 2048) and the scalar kernel past them.
        (Small, layer_norm(0, 64, 0.0), F32, NORM),
        (Small, layer_norm(1, 1, 0.0), F32, NORM),
        (Small, layer_norm(1000, 64, 0.0), F32, NORM),
        (
            Small,
            layer_norm(777, 1024, 300.0),
            F32,
            Tolerance::new(1e-3, 1e-3, 1e-2),
        ),
        (Small, layer_norm(300, 13, -5.0), F32, NORM),
        (Small, layer_norm(500, 1536, 0.0), F32, NORM),
        (Small, layer_norm(100, 8, 0.0), F32, NORM),
        (Small, layer_norm(64, 4096, 0.0), F32, NORM),
        (Small, layer_norm(200, 1000, 1.0), F32, NORM),
        // LayerNorm + adaLN modulation per sample.
        (
            Small,
            modulate(&[0, 20, 20, 37], 1536, true),
            DTYPES,
            REDUCTION,
        ),
        (Small, modulate(&[0, 9], 100, true), DTYPES, REDUCTION),
        (Small, modulate(&[0, 5, 6], 3, true), DTYPES, REDUCTION),
        // C a multiple of 8 up to 4096 (4 up to 2048 for f32) takes the CUDA vector kernels
        // (8, 16 or 32 lanes a row); 13, 100 (16-bit), 1000 (16-bit) and 7 the scalar kernel.
        (Small, modulate(&[0, 0], 64, true), DTYPES, NORM),
        (Small, modulate(&[0, 1], 7, true), DTYPES, NORM),
        (Small, modulate(&[0, 600, 1000], 1536, true), DTYPES, NORM),
        (Small, modulate(&[0, 0, 333], 100, true), DTYPES, NORM),
        (Small, modulate(&[0, 500], 1024, true), DTYPES, NORM),
        (Small, modulate(&[0, 150, 301], 64, true), DTYPES, NORM),
        (Small, modulate(&[0, 77], 8, true), DTYPES, NORM),
        (Small, modulate(&[0, 130], 128, true), DTYPES, NORM),
        (Small, modulate(&[0, 30, 65], 4096, true), DTYPES, NORM),
        (Small, modulate(&[0, 200], 3072, true), DTYPES, NORM),
        (Small, modulate(&[0, 60, 120], 13, true), DTYPES, NORM),
        (Small, modulate(&[0, 240], 1000, true), DTYPES, NORM),
        // RMS norm (with gamma) + RoPE by per-token and one-row tables.
        (
            Small,
            rms_rope(45, 3, 64, true, Positions),
            DTYPES,
            REDUCTION,
        ),
        (
            Small,
            rms_rope(13, 2, 128, true, Positions),
            DTYPES,
            REDUCTION,
        ),
        (
            Small,
            rms_rope(9, 1, 10, false, Positions),
            DTYPES,
            REDUCTION,
        ),
        (Small, rms_rope(7, 2, 6, true, Positions), DTYPES, REDUCTION),
        (
            Small,
            rms_rope(37, 3, 64, true, Identity),
            DTYPES,
            REDUCTION,
        ),
        (Small, rms_rope(11, 2, 128, true, OneRow), DTYPES, REDUCTION),
        (Small, rms_rope(9, 1, 10, false, OneRow), DTYPES, REDUCTION),
        (Small, rms_rope(1, 2, 6, true, OneRow), DTYPES, REDUCTION),
        // D = 4, 8, 16 or 32 16-byte vectors takes the CUDA vector kernels (32, 64, 128, 256
        // for 16-bit; 16, 32, 64, 128 for f32), others (6, 10, 256 in f32) the scalar kernel.
        (Small, rms_rope(0, 2, 64, true, Random), DTYPES, NORM),
        (Small, rms_rope(1, 1, 6, true, Random), DTYPES, NORM),
        (Small, rms_rope(777, 12, 128, true, Random), DTYPES, NORM),
        (Small, rms_rope(300, 4, 64, false, Random), DTYPES, NORM),
        (Small, rms_rope(301, 3, 32, true, Random), DTYPES, NORM),
        (Small, rms_rope(99, 2, 256, true, Random), DTYPES, NORM),
        (Small, rms_rope(50, 5, 16, false, Random), DTYPES, NORM),
        (Small, rms_rope(70, 3, 10, true, Random), DTYPES, NORM),
        (Small, rms_rope(1, 12, 128, false, Random), DTYPES, NORM),
    ])
}

/// The fused bias + activation in every activation, the gated residual and the C2S skip add:
/// 16-byte vectors and the scalar path (odd widths), no row, one row, empty samples.
fn elementwise() -> Vec<Case> {
    let mut cases = Vec::new();
    for (rows, channels) in [
        (0, 1536),
        (203, 1536),
        (1, 8192),
        (0, 13),
        (1, 13),
        (0, 64),
        (1000, 1536),
        (301, 8192),
    ] {
        for act in ACTIVATIONS {
            let op = bias_act(rows, channels, act);
            cases.push(Case::new(Small, op, DTYPES, ELEMENTWISE));
        }
    }
    cases.extend(table([
        (Small, gated(&[0, 20, 20, 37], 1536), DTYPES, ELEMENTWISE),
        (Small, gated(&[0, 3, 5, 5], 8192), DTYPES, ELEMENTWISE),
        (Small, gated(&[0, 5, 5, 9], 13), DTYPES, ELEMENTWISE),
        (Small, gated(&[0, 1], 8), DTYPES, ELEMENTWISE),
        (Small, gated(&[0, 0], 1536), DTYPES, ELEMENTWISE),
        (Small, gated(&[0, 0, 0, 0], 64), DTYPES, ELEMENTWISE),
        (Small, gated(&[0, 0, 0, 1], 13), DTYPES, ELEMENTWISE),
        (
            Small,
            gated(&[0, 333, 333, 1000], 1536),
            DTYPES,
            ELEMENTWISE,
        ),
        (Small, gated(&[0, 100, 100, 301], 8192), DTYPES, ELEMENTWISE),
        // Repeats of 2, 3, 4 and 8 (C' · 8 / C); 16-byte vectors and odd widths; no child.
        (Small, c2s(1000, 64, 4000, 32), DTYPES, ELEMENTWISE),
        (Small, c2s(2000, 512, 9000, 256), DTYPES, ELEMENTWISE),
        (Small, c2s(777, 16, 3000, 16), DTYPES, ELEMENTWISE),
        (Small, c2s(300, 8, 1000, 8), DTYPES, ELEMENTWISE),
        (Small, c2s(100, 24, 200, 9), DTYPES, ELEMENTWISE),
        (Small, c2s(5, 64, 0, 32), DTYPES, ELEMENTWISE),
        // Word-multiple rows (the kernels' two widths) and odd ones; one parent.
        (Small, s2c(1000, 64, 400), DTYPES, EXACT),
        (Small, s2c(777, 13, 300), DTYPES, EXACT),
        (Small, s2c(5, 8, 1), DTYPES, EXACT),
    ]));
    cases
}

/// The deformable conv's sampling (every branch of the sampler) and the whole convolution.
fn deformable() -> Vec<Case> {
    table([
        (Small, im2col([1, 5, 9, 11], 3, 3.0), F32, COLUMNS),
        (Small, im2col([1, 6, 6, 8], 1, 2.0), F32, COLUMNS),
        (Small, im2col([1, 4, 7, 5], 7, 40.0), F32, COLUMNS),
        // Offsets that never index memory.
        (Small, im2col([1, 2, 4, 4], 3, 1e9), F32, COLUMNS),
        (Small, im2col([1, 3, 1, 1], 3, 1.0), F32, COLUMNS),
        // A half-pixel shift to the edges; integer offsets (floor ties, samples on −1 and H).
        (
            Small,
            shifted(im2col([1, 2, 1, 1], 7, 0.0), 0.5),
            F32,
            COLUMNS,
        ),
        (
            Small,
            shifted(im2col([1, 2, 5, 6], 3, 0.0), -1.0),
            F32,
            COLUMNS,
        ),
        // C 130: not a multiple of the Metal kernel's 128 threads.
        (
            Small,
            grouped(im2col([2, 130, 3, 4], 3, 2.0), 2),
            F32,
            COLUMNS,
        ),
        (
            Small,
            grouped(im2col([2, 130, 5, 6], 3, 2.0), 2),
            F32,
            COLUMNS,
        ),
        (
            Small,
            strided(im2col([1, 3, 9, 10], 3, 2.0), 2, 2),
            F32,
            COLUMNS,
        ),
        (
            Small,
            band(im2col([1, 5, 9, 11], 3, 3.0), 3..7),
            F32,
            COLUMNS,
        ),
        (
            Small,
            band(im2col([1, 2, 4, 4], 3, 1.0), 2..2),
            F32,
            COLUMNS,
        ),
        (Large, im2col([1, 64, 64, 64], 7, 3.0), F32, COLUMNS),
        // The convolution goes through cuBLAS (TF32 may be on): matmul tolerance.
        (Small, deform_conv([1, 5, 9, 11], 7, 3, 3.0), F32, TC),
        (Small, deform_conv([1, 6, 6, 8], 3, 1, 2.0), F32, TC),
        (Small, deform_conv([1, 4, 7, 5], 6, 7, 40.0), F32, TC),
        (Small, deform_conv([1, 3, 1, 1], 2, 3, 1.0), F32, TC),
        (
            Small,
            grouped(deform_conv([2, 130, 5, 6], 9, 3, 2.0), 2),
            F32,
            TC,
        ),
        (
            Small,
            strided(deform_conv([1, 3, 9, 10], 4, 3, 2.0), 2, 2),
            F32,
            TC,
        ),
        // BiRefNet's first deformable layer.
        (Large, deform_conv([1, 64, 64, 64], 256, 7, 3.0), F32, TC),
    ])
}

/// Self- and cross-attention: sequences of every length around the kernels' 64- and 128-row
/// query tiles and 64- and 128-key tiles, empty and one-token sequences, and scales the kernels
/// fold into their exponent.
fn attention_cases() -> Vec<Case> {
    let ragged = [1, 76, 223, 1, 229];
    // DINOv3's 1029 image tokens at 512 px as keys (its 4101 at 1024 px as a sequence).
    let image = Some(&[1029, 1029][..]);
    let images = Some(&[1029, 1029, 1029][..]);
    // Many short sequences: many CTAs whose only key tile is also their last.
    let short: Vec<usize> = (1..=40).collect();
    // The wgmma kernel's 128-key tiles and its loop of two key tiles per trip: 1 to 6 key
    // tiles (odd and even counts), one-key last tiles and sequences shorter than one tile.
    let key_tile_edges = [
        1, 63, 64, 65, 127, 128, 129, 255, 256, 257, 383, 384, 385, 511, 512, 513, 641, 700,
    ];
    // One query tile (130 rows: a full and a 2-row tile) against 1 to 6 key tiles.
    let key_tiles = Some(&[100, 200, 300, 500, 600, 700][..]);
    let mut cases = table([
        (Small, attention(&[1], None, 1, 128), DTYPES, REDUCTION),
        (
            Small,
            attention(&[63, 0, 64, 65], None, 2, 64),
            DTYPES,
            REDUCTION,
        ),
        (
            Small,
            attention(&[63, 0, 64, 65], None, 1, 128),
            DTYPES,
            REDUCTION,
        ),
        (
            Small,
            attention(&[40, 33], image, 2, 128),
            F32_BF16,
            REDUCTION,
        ),
        (Small, attention(&[1029], None, 1, 128), F32, REDUCTION),
        (Small, attention(&[4101], None, 1, 64), F16, REDUCTION),
        (Small, attention(&[300], None, 1, 64), F16, REDUCTION),
        (Small, attention(&ragged, None, 3, 64), BF16, TC),
        (Small, attention(&ragged, None, 2, 64), F16_F32, TC),
        (Small, attention(&ragged, None, 3, 128), BF16, TC),
        (Small, attention(&ragged, None, 2, 128), F16, TC),
        // The tiny golden models' head dims.
        (Small, attention(&ragged, None, 4, 16), BF16, TC),
        (Small, attention(&ragged, None, 4, 32), BF16, TC),
        (Large, attention(&[1500], None, 4, 128), BF16, TC),
        (Small, attention(&short, None, 3, 64), BF16, TC),
        (Small, attention(&short, None, 3, 128), BF16, TC),
        // Cross-attention to image tokens, one sample with no queries; a single key, a single
        // query, no query at all.
        (Large, attention(&[200, 0, 450], images, 4, 64), BF16, TC),
        (Large, attention(&[200, 0, 450], images, 4, 128), BF16, TC),
        (Large, attention(&[200, 0, 450], images, 2, 128), F16, TC),
        (Small, attention(&[70], Some(&[1]), 2, 64), BF16, TC),
        (Small, attention(&[70], Some(&[1]), 2, 128), BF16, TC),
        (Small, attention(&[1], Some(&[500]), 2, 128), BF16, TC),
        (Small, attention(&[0], Some(&[5]), 2, 64), BF16, TC),
        // Larger than one SM's worth of CTAs, with many key tiles per CTA (the pipeline's
        // steady state).
        (Large, attention(&[4000], None, 12, 128), BF16, TC),
        (Large, attention(&key_tile_edges, None, 2, 64), HALVES, TC),
        (Large, attention(&key_tile_edges, None, 2, 128), HALVES, TC),
        (Large, attention(&[130; 6], key_tiles, 2, 64), BF16, TC),
        (Large, attention(&[130; 6], key_tiles, 2, 128), BF16, TC),
    ]);
    // Query tiles of 128 rows, key tiles of 64: lengths one short of, at and one past those
    // edges, so full, partial and one-row tiles (and a one-key last tile) all occur.
    let tile_edges = [63, 64, 128, 128, 1, 129, 128, 65];
    for d in [16, 32, 64, 128] {
        let op = attention(&tile_edges, None, 2, d);
        cases.push(Case::new(Small, op, HALVES, TC));
    }
    // The kernels fold the scale into their exponent, which needs a positive scale: a negative
    // one goes through a negated q, zero through the smallest positive float (uniform weights).
    // Ragged lengths so that masked last key tiles take part.
    for scale in [-0.2f32, 0.0, 2.0] {
        for (d, dtypes) in [(128, BF16), (64, F16)] {
            let mut op = attention(&[100, 290], Some(&[77, 223]), 2, d);
            if let Op::Attention { scale: s, .. } = &mut op {
                *s = Some(scale);
            }
            cases.push(Case::new(Small, op, dtypes, TC));
        }
    }
    cases
}

/// LayerNorm + activation, plain with affine and gathered (random rows) without: the CUDA
/// vector kernels (C a multiple of 8 up to 4096) and the scalar one (13, 1000, 1), no row.
fn norm_act_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (rows, channels, gathered) in [
        (0, 64, 0),
        (1, 1, 3),
        (1000, 64, 4000),
        (777, 1024, 500),
        (300, 13, 301),
        (8000, 128, 30000),
        (400, 1536, 800),
        (65, 4096, 100),
        (64, 8, 200),
        (500, 1000, 300),
        (130, 16, 70),
        (90, 512, 0),
    ] {
        let mut ops = vec![
            norm_act(rows, channels, Activation::Silu, None),
            norm_act(rows, channels, Activation::None, None),
        ];
        if rows > 0 {
            ops.push(norm_act(rows, channels, Activation::Silu, Some(gathered)));
        }
        for op in ops {
            cases.push(Case::new(Small, op, DTYPES, NORM));
        }
    }
    cases
}

/// `Linear` with every epilogue at the DiT's and DINOv3's widths, 1 to 4101 rows, with and
/// without a bias (on CUDA: cuBLASLt with the bias, tanh-GELU and residual in its epilogue; the
/// composed path for SiLU and exact GELU).
fn linear_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (k, n) in [(1024, 3072), (1536, 8), (4096, 1024)] {
        for m in [1, 7, 1029, 4101] {
            for bias in [true, false] {
                for act in ACTIVATIONS {
                    cases.push(linear(m, k, n, bias, act, false));
                }
                cases.push(linear(m, k, n, bias, Activation::None, true));
            }
        }
    }
    // Values from their own seed: with the throughput cases' one, the single row of the
    // 1536 → 8 layer without bias has 8 outputs all within 0.22 of zero, which measures
    // cuBLASLt's GELU epilogue (≈3e-6 absolute) rather than the GEMM against max|ref|.
    cases
        .into_iter()
        .map(|op| Case::new(Large, op, DTYPES, Tolerance::LINEAR).seeded(31))
        .collect()
}

// ---------------------------------------------------------------- op constructors

fn conv(map: ConvMap, ci: usize, co: usize, bias: bool) -> Op {
    Op::SparseConv { map, ci, co, bias }
}

/// The neighbour map of `voxels`.
fn of(voxels: Voxels) -> ConvMap {
    ConvMap::Of(voxels)
}

/// A random map of `voxels` rows with taps present with probability `p` (seeded by its size).
fn random(voxels: usize, p: f32) -> ConvMap {
    ConvMap::Random {
        voxels,
        p,
        seed: voxels as u64,
    }
}

fn half_tiles(voxels: usize) -> ConvMap {
    ConvMap::HalfTiles {
        voxels,
        seed: voxels as u64 + 1,
    }
}

/// The decoders' surface shell of `radius`: half a voxel diagonal thick, in the smallest even
/// grid that holds it with a voxel to spare.
fn surface(batch: i32, radius: f32) -> Voxels {
    Voxels::shell(batch, 2 * (radius as i32 + 2), radius, 0.87)
}

fn map(voxels: Voxels) -> Op {
    Op::NeighbourMap { voxels }
}

fn order(voxels: Voxels, window: usize) -> Op {
    Op::ConvOrder { voxels, window }
}

fn attention(q: &[usize], kv: Option<&[usize]>, heads: usize, head_dim: usize) -> Op {
    Op::Attention {
        q: q.to_vec(),
        kv: kv.map(<[usize]>::to_vec),
        heads,
        head_dim,
        scale: None,
    }
}

fn layer_norm(rows: usize, channels: usize, mean: f32) -> Op {
    Op::LayerNorm {
        rows,
        channels,
        mean,
    }
}

fn modulate(offsets: &[usize], channels: usize, affine: bool) -> Op {
    Op::LayerNormModulate {
        offsets: offsets.to_vec(),
        channels,
        affine,
    }
}

fn rms_rope(rows: usize, heads: usize, head_dim: usize, gamma: bool, table: RopeTable) -> Op {
    Op::RmsNormRope {
        rows,
        heads,
        head_dim,
        gamma,
        table,
    }
}

fn bias_act(rows: usize, channels: usize, act: Activation) -> Op {
    Op::BiasAct {
        rows,
        channels,
        act,
    }
}

fn gated(offsets: &[usize], channels: usize) -> Op {
    Op::GatedResidual {
        offsets: offsets.to_vec(),
        channels,
    }
}

fn s2c(rows: usize, channels: usize, parents: usize) -> Op {
    Op::SpaceToChannel {
        rows,
        channels,
        parents,
    }
}

fn c2s(parents: usize, channels: usize, children: usize, out_channels: usize) -> Op {
    Op::C2sSkipAdd {
        parents,
        channels,
        children,
        out_channels,
    }
}

fn norm_act(rows: usize, channels: usize, act: Activation, gather: Option<usize>) -> Op {
    Op::LayerNormAct {
        rows,
        channels,
        act,
        gather,
    }
}

fn linear(m: usize, k: usize, n: usize, bias: bool, act: Activation, residual: bool) -> Op {
    Op::Linear {
        m,
        k,
        n,
        bias,
        act,
        residual,
    }
}

fn im2col(input: [usize; 4], kernel: usize, offset_scale: f32) -> Op {
    Op::DeformIm2col {
        input,
        kernel,
        groups: 1,
        stride: 1,
        dilation: 1,
        offset_scale,
        offset_shift: 0.0,
        rows: None,
    }
}

fn deform_conv(input: [usize; 4], out: usize, kernel: usize, offset_scale: f32) -> Op {
    Op::DeformConv {
        input,
        out,
        kernel,
        groups: 1,
        stride: 1,
        dilation: 1,
        offset_scale,
    }
}

/// `op` (a deformable case) with its offsets moved by `shift` pixels.
fn shifted(mut op: Op, shift: f32) -> Op {
    if let Op::DeformIm2col { offset_shift, .. } = &mut op {
        *offset_shift = shift;
    }
    op
}

/// `op` (a deformable case) with `groups` offset groups.
fn grouped(mut op: Op, n: usize) -> Op {
    if let Op::DeformIm2col { groups, .. } | Op::DeformConv { groups, .. } = &mut op {
        *groups = n;
    }
    op
}

/// `op` (a deformable case) with a stride and a dilation.
fn strided(mut op: Op, s: usize, d: usize) -> Op {
    if let Op::DeformIm2col {
        stride, dilation, ..
    }
    | Op::DeformConv {
        stride, dilation, ..
    } = &mut op
    {
        (*stride, *dilation) = (s, d);
    }
    op
}

/// `op` (a deformable im2col case) for a band of output rows.
fn band(mut op: Op, band: std::ops::Range<usize>) -> Op {
    if let Op::DeformIm2col { rows, .. } = &mut op {
        *rows = Some(band);
    }
    op
}
