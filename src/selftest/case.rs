//! One kernel check as data: an op with its parameters ([`Op`]), the dtypes it runs in, its
//! tolerance per dtype and its size class. A case builds its operands ([`Case::inputs`]: host
//! values rounded to the dtype, so every executor and the reference see the same numbers), runs
//! the op on a device ([`Case::run`]) and computes the reference ([`Case::reference`]). The
//! executors: `selftest::check` on a candle device, `tests/cuda_kernels.rs` on CUDA and
//! `tests/metal_emu.rs` through the MSL emulator (which maps [`Inputs`] to a kernel launch).

use std::fmt;
use std::ops::Range;

use candle_core::{DType, Device, Result, Tensor};

use super::shapes::{spaced_voxels, uniform, voxel_block, voxel_shell};
use crate::ops::attention::{varlen_attention, varlen_attention_slow};
use crate::ops::bias_act::{bias_act, bias_act_slow, Activation};
use crate::ops::c2s_skip_add::{c2s_skip_add, c2s_skip_add_slow};
use crate::ops::conv_order::sorted_by_mask;
use crate::ops::deform_conv::{deform_conv2d, modulated_im2col, DeformConvConfig};
use crate::ops::gated_residual::{gated_residual, gated_residual_slow};
use crate::ops::layer_norm::{layer_norm, layer_norm_composed};
use crate::ops::layer_norm_act::{gathered_layer_norm_act, layer_norm_act, layer_norm_act_slow};
use crate::ops::linear::{last_linear_path, Linear, LinearPath};
use crate::ops::neighbour_map::neighbour_op_output;
use crate::ops::norm_modulate::{layer_norm_modulate, layer_norm_modulate_slow, Modulation};
use crate::ops::rms_norm_rope::{rms_norm_rope, rms_norm_rope_slow, rope_table};
use crate::ops::rope::rope_tables_3d;
use crate::ops::space_to_channel::{space_to_channel, space_to_channel_slow};
use crate::ops::sparse_conv::{submanifold_conv3d, submanifold_conv3d_slow, ABSENT};
use crate::sparse::CoordSet;

/// The float dtypes the kernels run in.
pub const DTYPES: &[DType] = &[DType::F32, DType::F16, DType::BF16];

/// The LayerNorm epsilon of every norm case.
const EPS: f64 = 1e-6;

/// Who runs a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Size {
    /// Edge shapes (empty, one row, ragged tiles): small enough for the MSL emulator and the
    /// CPU's slow twins. Checked by the tests, not timed.
    Small,
    /// The built-in throughput shapes `trellis2 selftest` checks and times on every device.
    Bench,
    /// The models' sizes and kernel-tile sweeps, for GPUs only: the slow twins and the emulator
    /// would take minutes.
    Large,
}

/// Allowed max|err| / max|ref| of an output in each dtype. A neighbour map (u32) is exact.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    pub f32: f32,
    pub f16: f32,
    pub bf16: f32,
}

impl Tolerance {
    /// One rounding of the output (2^-11 for f16, 2^-8 for bf16) with margin, and f32
    /// accumulation-order and fast-math noise: the built-in throughput cases on every device.
    pub const ROUNDED: Self = Self::new(1e-4, 1e-3, 8e-3);
    /// The same f32 arithmetic as the reference, then one rounding to the dtype.
    pub const ELEMENTWISE: Self = Self::new(1e-6, 1e-3, 8e-3);
    /// f32 sums in another order than the reference's, then one rounding (the emulated Metal
    /// kernels' reductions).
    pub const REDUCTION: Self = Self::new(1e-5, 1e-3, 8e-3);
    /// Row reductions computed in f32 by the CUDA norm kernels: f32 outputs differ in summation
    /// order, f16/bf16 outputs are rounded once.
    pub const NORM: Self = Self::new(1e-5, 2e-3, 1e-2);
    /// Linear layers: f32 GEMMs differ in summation order only (over k = 1536 into 8 outputs,
    /// cuBLASLt's order is 1.25e-5 off the CPU's on an H100: 2e-5); f16/bf16 outputs are rounded
    /// once (cuBLASLt's epilogue) or up to three times (matmul, `bias_act`, add).
    pub const LINEAR: Self = Self::new(2e-5, 2e-3, 1.6e-2);
    /// bf16/f16 tensor-core operands with f32 accumulation on inputs of std 1: the outputs' own
    /// rounding is ≈ 4e-3 relative, in every dtype.
    pub const TENSOR_CORE: Self = Self::new(1e-2, 1e-2, 1e-2);
    /// Integer outputs (neighbour maps) and exactly reproduced f32 arithmetic.
    pub const EXACT: Self = Self::new(0.0, 0.0, 0.0);

    pub const fn new(f32: f32, f16: f32, bf16: f32) -> Self {
        Self { f32, f16, bf16 }
    }

    /// The bound for outputs of `dtype`.
    pub fn of(&self, dtype: DType) -> f32 {
        match dtype {
            DType::F16 => self.f16,
            DType::BF16 => self.bf16,
            _ => self.f32,
        }
    }
}

/// A set of voxels `[batch, x, y, z]`: batches in increasing order, no duplicates.
#[derive(Clone, Debug)]
pub enum Voxels {
    Empty,
    One([i32; 4]),
    /// [`spaced_voxels`]: none has a neighbour but itself.
    Spaced(usize),
    /// [`voxel_block`]: every voxel has all 27 taps but at the faces.
    Block {
        batch: i32,
        side: i32,
        at: i32,
    },
    /// [`voxel_shell`], moved by `at` on every axis.
    Shell {
        batch: i32,
        side: i32,
        radius: f32,
        width: f32,
        at: i32,
    },
    /// Up to `points` distinct random points per batch item anywhere in the 1024³ grid, every
    /// other one folded into a 16³ corner (clusters with real neighbours), plus the grid's last
    /// two cells (10-bit axes at their maximum).
    Scatter {
        batches: i32,
        points: usize,
    },
    /// The voxels of each set in turn (their batches in increasing order).
    Union(Vec<Voxels>),
}

impl Voxels {
    /// A shell of `radius` in the `side³` grid at the origin ([`voxel_shell`]).
    pub fn shell(batch: i32, side: i32, radius: f32, width: f32) -> Self {
        Self::Shell {
            batch,
            side,
            radius,
            width,
            at: 0,
        }
    }

    pub fn rows(&self) -> Vec<[i32; 4]> {
        match self {
            Voxels::Empty => Vec::new(),
            Voxels::One(row) => vec![*row],
            Voxels::Spaced(n) => spaced_voxels(*n),
            &Voxels::Block { batch, side, at } => voxel_block(batch, side, at),
            &Voxels::Shell {
                batch,
                side,
                radius,
                width,
                at,
            } => voxel_shell(batch, side, radius, width)
                .into_iter()
                .map(|[b, x, y, z]| [b, x + at, y + at, z + at])
                .collect(),
            &Voxels::Scatter { batches, points } => scatter(batches, points),
            Voxels::Union(sets) => sets.iter().flat_map(Voxels::rows).collect(),
        }
    }
}

fn scatter(batches: i32, points: usize) -> Vec<[i32; 4]> {
    let mut rows = Vec::new();
    for b in 0..batches {
        let mut seen = std::collections::HashSet::new();
        for (i, c) in uniform(b as u64 + 7, 3 * points).chunks(3).enumerate() {
            let p = [c[0], c[1], c[2]].map(|x| ((x + 1.0) * 511.75) as i32 % 1024);
            let p = if i % 2 == 0 { p.map(|x| x % 16) } else { p };
            if seen.insert(p) {
                rows.push([b, p[0], p[1], p[2]]);
            }
        }
        for p in [[1023, 1023, 1023], [1023, 1023, 1022]] {
            if seen.insert(p) {
                rows.push([b, p[0], p[1], p[2]]);
            }
        }
    }
    rows
}

impl fmt::Display for Voxels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Voxels::Empty => write!(f, "none"),
            Voxels::One(r) => write!(f, "voxel{r:?}"),
            Voxels::Spaced(n) => write!(f, "spaced({n})"),
            Voxels::Block { batch, side, at } => write!(f, "block(b{batch} {side}^3 at {at})"),
            Voxels::Shell {
                batch,
                side,
                radius,
                width,
                at,
            } => {
                write!(f, "shell(b{batch} r={radius} w={width} in {side}^3")?;
                if *at != 0 {
                    write!(f, " at {at}")?;
                }
                write!(f, ")")
            }
            Voxels::Scatter { batches, points } => write!(f, "scatter({batches}x{points})"),
            Voxels::Union(sets) => {
                for (i, s) in sets.iter().enumerate() {
                    if i > 0 {
                        write!(f, "+")?;
                    }
                    write!(f, "{s}")?;
                }
                Ok(())
            }
        }
    }
}

/// The `[T, 27]` neighbour map a sparse conv case runs on.
#[derive(Clone, Debug)]
pub enum ConvMap {
    /// The map of a voxel set (built on the CPU).
    Of(Voxels),
    /// `voxels` rows whose 26 off-centre taps are present with probability `p`, each pointing
    /// at a random row; the centre tap is the row itself.
    Random { voxels: usize, p: f32, seed: u64 },
    /// Only the centre tap of every row.
    CentreOnly(usize),
    /// No tap at all, not even the centre: the output is the bias.
    NoTaps(usize),
    /// Rows in the first 64 of every 128 use taps 0..9, the others 18..27 (each present with
    /// probability 3/4, besides the centre): the two 64-row halves of a 128-row tile (the wgmma
    /// kernel's warpgroups) skip each other's taps.
    HalfTiles { voxels: usize, seed: u64 },
}

impl ConvMap {
    /// The map's rows.
    pub fn build(&self) -> Result<(Vec<u32>, usize)> {
        let centre_only = |n: usize| -> Vec<u32> {
            (0..n as u32)
                .flat_map(|v| (0..27).map(move |k| if k == 13 { v } else { ABSENT }))
                .collect()
        };
        Ok(match self {
            ConvMap::Of(voxels) => {
                let set = CoordSet::from_host(voxels.rows(), &Device::Cpu)?;
                let map = set.neighbour_map()?.tensor().flatten_all()?.to_vec1()?;
                (map, set.len())
            }
            &ConvMap::Random { voxels, p, seed } => {
                let draws = uniform(seed, voxels * 27 * 2);
                let mut map = centre_only(voxels);
                for (i, m) in map.iter_mut().enumerate() {
                    if i % 27 != 13 && (draws[2 * i] + 1.0) / 2.0 < p {
                        *m = row_of(draws[2 * i + 1], voxels);
                    }
                }
                (map, voxels)
            }
            &ConvMap::CentreOnly(n) => (centre_only(n), n),
            &ConvMap::NoTaps(n) => (vec![ABSENT; n * 27], n),
            &ConvMap::HalfTiles { voxels, seed } => {
                let draws = uniform(seed, voxels * 27 * 2);
                let mut map = centre_only(voxels);
                for (i, m) in map.iter_mut().enumerate() {
                    let (v, k) = (i / 27, i % 27);
                    let taps = if v % 128 < 64 { 0..9 } else { 18..27 };
                    if taps.contains(&k) && draws[2 * i] < 0.5 {
                        *m = row_of(draws[2 * i + 1], voxels);
                    }
                }
                (map, voxels)
            }
        })
    }
}

/// A row index below `n` from a uniform value in [-1, 1).
fn row_of(u: f32, n: usize) -> u32 {
    (((u + 1.0) / 2.0 * n as f32) as usize).min(n - 1) as u32
}

impl fmt::Display for ConvMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConvMap::Of(v) => write!(f, "{v}"),
            ConvMap::Random { voxels, p, .. } => write!(f, "random(n={voxels} p={p})"),
            ConvMap::CentreOnly(n) => write!(f, "centre-only(n={n})"),
            ConvMap::NoTaps(n) => write!(f, "no-taps(n={n})"),
            ConvMap::HalfTiles { voxels, .. } => write!(f, "half-tiles(n={voxels})"),
        }
    }
}

/// The rotation table of an RMS norm + RoPE case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeTable {
    /// The DiT's 3-D RoPE of token positions on a 16 × 16 × n grid, one row per token.
    Positions,
    /// One row that rotates nothing: the cross-attention's plain q/k RMS norm.
    Identity,
    /// One row of random angles, shared by every token.
    OneRow,
    /// Random values (not a rotation), one row per token: every table entry is read.
    Random,
}

/// One GPU op and its parameters.
#[derive(Clone, Debug)]
pub enum Op {
    /// `submanifold_conv3d` of `[T, ci]` features on `map` with a `[co, 27, ci]` weight.
    SparseConv {
        map: ConvMap,
        ci: usize,
        co: usize,
        bias: bool,
    },
    /// `varlen_attention` of sequences of `q` query lengths against `kv` key lengths (the query
    /// lengths for self-attention); `scale` defaults to 1/√head_dim.
    Attention {
        q: Vec<usize>,
        kv: Option<Vec<usize>>,
        heads: usize,
        head_dim: usize,
        scale: Option<f32>,
    },
    /// `layer_norm` of `[rows, channels]` with a row mean of about `mean`, with affine.
    LayerNorm {
        rows: usize,
        channels: usize,
        mean: f32,
    },
    /// `layer_norm_modulate` of samples at `offsets` (row mean ≈ 4).
    LayerNormModulate {
        offsets: Vec<usize>,
        channels: usize,
        affine: bool,
    },
    /// `rms_norm_rope` of `[rows, heads, head_dim]`, RMS-normalised only with `gamma`.
    RmsNormRope {
        rows: usize,
        heads: usize,
        head_dim: usize,
        gamma: bool,
        table: RopeTable,
    },
    /// `bias_act` of `[rows, channels]` (values in ±4: the activations' curved range and tails).
    BiasAct {
        rows: usize,
        channels: usize,
        act: Activation,
    },
    /// `Linear::forward_act` (or `forward_residual` with `residual`) of `[m, k]` by `[n, k]`.
    Linear {
        m: usize,
        k: usize,
        n: usize,
        bias: bool,
        act: Activation,
        residual: bool,
    },
    /// `gated_residual` of samples at `offsets`.
    GatedResidual {
        offsets: Vec<usize>,
        channels: usize,
    },
    /// The neighbour map of a voxel set, built on the device.
    NeighbourMap { voxels: Voxels },
    /// The conv's voxel order of a voxel set's neighbour map, sorted in windows of `window`
    /// voxels (`usize::MAX`: one window).
    ConvOrder { voxels: Voxels, window: usize },
    /// `layer_norm_act` of `[rows, channels]` with affine or, with `gather`, the
    /// `gathered_layer_norm_act` of that many random rows without.
    LayerNormAct {
        rows: usize,
        channels: usize,
        act: Activation,
        gather: Option<usize>,
    },
    /// `space_to_channel` of `[rows, channels]` into `parents` rows of 8 slots, a random row
    /// or absent (about one in three) in each.
    SpaceToChannel {
        rows: usize,
        channels: usize,
        parents: usize,
    },
    /// `c2s_skip_add` of `[children, out_channels]` and `[parents, channels]` by random sources.
    C2sSkipAdd {
        parents: usize,
        channels: usize,
        children: usize,
        out_channels: usize,
    },
    /// `modulated_im2col` (f32) of `[B, C, H, W]` (`input`) with a `kernel`² tap, offsets
    /// uniform in ±`offset_scale` pixels plus `offset_shift`, for the output rows `rows` (all).
    DeformIm2col {
        input: [usize; 4],
        kernel: usize,
        groups: usize,
        stride: usize,
        dilation: usize,
        offset_scale: f32,
        offset_shift: f32,
        rows: Option<Range<usize>>,
    },
    /// `deform_conv2d` (f32) of `input` to `out` channels, offsets as for `DeformIm2col`.
    DeformConv {
        input: [usize; 4],
        out: usize,
        kernel: usize,
        groups: usize,
        stride: usize,
        dilation: usize,
        offset_scale: f32,
    },
}

/// A list of lengths or offsets as `a+b+c` (long ones summarised).
struct List<'a>(&'a [usize], &'static str);

impl fmt::Display for List<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let List(v, sep) = self;
        if v.len() > 8 {
            return write!(f, "{} items {}..{}", v.len(), v[0], v[v.len() - 1]);
        }
        let s: Vec<String> = v.iter().map(usize::to_string).collect();
        write!(f, "{}", s.join(sep))
    }
}

fn act_name(act: Activation) -> &'static str {
    match act {
        Activation::None => "none",
        Activation::GeluTanh => "gelu_tanh",
        Activation::Silu => "silu",
        Activation::GeluErf => "gelu_erf",
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::SparseConv { map, ci, co, bias } => {
                let bias = if *bias { " bias" } else { "" };
                write!(f, "sparse_conv map={map} ci={ci} co={co}{bias}")
            }
            Op::Attention {
                q,
                kv,
                heads,
                head_dim,
                scale,
            } => {
                write!(f, "attention q={}", List(q, "+"))?;
                if let Some(kv) = kv {
                    write!(f, " kv={}", List(kv, "+"))?;
                }
                write!(f, " heads={heads} d={head_dim}")?;
                if let Some(s) = scale {
                    write!(f, " scale={s}")?;
                }
                Ok(())
            }
            Op::LayerNorm {
                rows,
                channels,
                mean,
            } => write!(f, "layer_norm rows={rows} c={channels} mean={mean}"),
            Op::LayerNormModulate {
                offsets,
                channels,
                affine,
            } => {
                let affine = if *affine { " affine" } else { "" };
                let o = List(offsets, ",");
                write!(f, "layer_norm_modulate offsets={o} c={channels}{affine}")
            }
            Op::RmsNormRope {
                rows,
                heads,
                head_dim,
                gamma,
                table,
            } => {
                let gamma = if *gamma { " gamma" } else { "" };
                let table = format!("{table:?}").to_lowercase();
                write!(
                    f,
                    "rms_norm_rope rows={rows} heads={heads} d={head_dim}{gamma} table={table}"
                )
            }
            Op::BiasAct {
                rows,
                channels,
                act,
            } => write!(f, "bias_act rows={rows} c={channels} {}", act_name(*act)),
            Op::Linear {
                m,
                k,
                n,
                bias,
                act,
                residual,
            } => {
                write!(f, "linear m={m} k={k} n={n}")?;
                if *bias {
                    write!(f, " bias")?;
                }
                if *residual {
                    write!(f, " +residual")
                } else {
                    write!(f, " {}", act_name(*act))
                }
            }
            Op::GatedResidual { offsets, channels } => {
                write!(
                    f,
                    "gated_residual offsets={} c={channels}",
                    List(offsets, ",")
                )
            }
            Op::NeighbourMap { voxels } => write!(f, "neighbour_map voxels={voxels}"),
            Op::ConvOrder { voxels, window } if *window == usize::MAX => {
                write!(f, "conv_order voxels={voxels} window=all")
            }
            Op::ConvOrder { voxels, window } => {
                write!(f, "conv_order voxels={voxels} window={window}")
            }
            Op::LayerNormAct {
                rows,
                channels,
                act,
                gather,
            } => {
                write!(
                    f,
                    "layer_norm_act rows={rows} c={channels} {}",
                    act_name(*act)
                )?;
                match gather {
                    Some(t) => write!(f, " gather={t}"),
                    None => write!(f, " affine"),
                }
            }
            Op::SpaceToChannel {
                rows,
                channels,
                parents,
            } => write!(
                f,
                "space_to_channel rows={rows} c={channels} parents={parents}"
            ),
            Op::C2sSkipAdd {
                parents,
                channels,
                children,
                out_channels,
            } => write!(
                f,
                "c2s_skip_add parents={parents} c={channels} children={children} \
                 c_out={out_channels}"
            ),
            Op::DeformIm2col {
                input,
                kernel,
                groups,
                stride,
                dilation,
                offset_scale,
                offset_shift,
                rows,
            } => {
                let [b, c, h, w] = input;
                write!(
                    f,
                    "deform_im2col input={b}x{c}x{h}x{w} k={kernel} groups={groups} \
                     stride={stride} dil={dilation} offsets=±{offset_scale}{offset_shift:+}"
                )?;
                if let Some(r) = rows {
                    write!(f, " rows={r:?}")?;
                }
                Ok(())
            }
            Op::DeformConv {
                input,
                out,
                kernel,
                groups,
                stride,
                dilation,
                offset_scale,
            } => {
                let [b, c, h, w] = input;
                write!(
                    f,
                    "deform_conv input={b}x{c}x{h}x{w} out={out} k={kernel} groups={groups} \
                     stride={stride} dil={dilation} offsets=±{offset_scale}"
                )
            }
        }
    }
}

impl Op {
    /// Whether the op's CUDA kernels multiply bf16/f16 operands (f32 inputs are rounded to
    /// bf16 there: `ops::sparse_conv::compute_dtype`).
    pub fn tensor_core(&self) -> bool {
        matches!(self, Op::SparseConv { .. } | Op::Attention { .. })
    }

    /// Whether a slow twin exists for the CPU to be checked against (the deformable conv's and
    /// the conv order's CPU ops are themselves the references).
    pub fn has_slow_twin(&self) -> bool {
        !matches!(
            self,
            Op::DeformIm2col { .. } | Op::DeformConv { .. } | Op::ConvOrder { .. }
        )
    }

    /// The first seed of the op's operands by default.
    fn seed(&self) -> u64 {
        match self {
            Op::SparseConv { .. } => 1,
            Op::Attention { .. } => 4,
            Op::LayerNorm { .. } => 7,
            Op::LayerNormModulate { .. } => 10,
            // The 1-row cases' own seeds.
            Op::RmsNormRope {
                table: RopeTable::Identity,
                ..
            } => 25,
            Op::RmsNormRope { .. } => 13,
            Op::BiasAct { .. } => 20,
            Op::GatedResidual { .. } => 22,
            Op::Linear { .. } => 27,
            Op::NeighbourMap { .. } | Op::ConvOrder { .. } => 0,
            Op::LayerNormAct { .. } => 40,
            Op::C2sSkipAdd { .. } => 50,
            Op::SpaceToChannel { .. } => 70,
            Op::DeformIm2col { .. } | Op::DeformConv { .. } => 60,
        }
    }
}

/// One case's operands on one device, in the dtypes the op takes.
#[derive(Clone, Debug)]
pub enum Inputs {
    SparseConv {
        feats: Tensor,
        /// `[T, 27]` u32.
        map: Tensor,
        weight: Tensor,
        bias: Option<Tensor>,
    },
    Attention {
        q: Tensor,
        k: Tensor,
        v: Tensor,
        q_offsets: Vec<usize>,
        kv_offsets: Vec<usize>,
        scale: f32,
    },
    LayerNorm {
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
    },
    LayerNormModulate {
        x: Tensor,
        /// Weight and bias, f32.
        affine: Option<(Tensor, Tensor)>,
        /// `[B, C]` f32 each.
        shift: Tensor,
        scale: Tensor,
        offsets: Vec<usize>,
    },
    RmsNormRope {
        x: Tensor,
        gamma: Option<Tensor>,
        /// `[T or 1, D/2, 2]` f32.
        table: Tensor,
    },
    BiasAct {
        x: Tensor,
        bias: Tensor,
        act: Activation,
    },
    Linear {
        x: Tensor,
        weight: Tensor,
        bias: Option<Tensor>,
        act: Activation,
        residual: Option<Tensor>,
    },
    GatedResidual {
        x: Tensor,
        r: Tensor,
        gate: Tensor,
        offsets: Vec<usize>,
    },
    NeighbourMap {
        rows: Vec<[i32; 4]>,
        device: Device,
    },
    ConvOrder {
        /// `[T, 27]` u32.
        map: Tensor,
        window: usize,
    },
    LayerNormAct {
        x: Tensor,
        affine: Option<(Tensor, Tensor)>,
        /// Gathered rows `[T]` u32.
        rows: Option<Tensor>,
        act: Activation,
    },
    C2sSkipAdd {
        h: Tensor,
        x: Tensor,
        sources: Tensor,
    },
    SpaceToChannel {
        feats: Tensor,
        /// `[parents · 8]` u32 rows of `feats` or [`crate::ops::vocab::ABSENT`].
        slots: Tensor,
    },
    DeformIm2col {
        input: Tensor,
        offset: Tensor,
        mask: Tensor,
        kernel: (usize, usize),
        cfg: DeformConvConfig,
        rows: Range<usize>,
    },
    DeformConv {
        input: Tensor,
        offset: Tensor,
        mask: Tensor,
        weight: Tensor,
        bias: Tensor,
        cfg: DeformConvConfig,
    },
}

impl Inputs {
    /// The same operands on `device`.
    pub fn to_device(&self, device: &Device) -> Result<Inputs> {
        self.map(&|t| t.to_device(device), device)
    }

    /// The float operands in f32 on the CPU (what the references compute on).
    fn to_f32(&self) -> Result<Inputs> {
        let cpu = Device::Cpu;
        self.map(
            &|t| {
                let t = t.to_device(&cpu)?;
                if t.dtype().is_float() {
                    t.to_dtype(DType::F32)
                } else {
                    Ok(t)
                }
            },
            &cpu,
        )
    }

    /// Every tensor through `f`; the neighbour map's rows to be built on `device`.
    fn map(&self, f: &dyn Fn(&Tensor) -> Result<Tensor>, device: &Device) -> Result<Inputs> {
        let o = |t: &Option<Tensor>| t.as_ref().map(f).transpose();
        let pair = |p: &Option<(Tensor, Tensor)>| -> Result<Option<(Tensor, Tensor)>> {
            p.as_ref().map(|(a, b)| Ok((f(a)?, f(b)?))).transpose()
        };
        Ok(match self {
            Inputs::SparseConv {
                feats,
                map,
                weight,
                bias,
            } => Inputs::SparseConv {
                feats: f(feats)?,
                map: f(map)?,
                weight: f(weight)?,
                bias: o(bias)?,
            },
            Inputs::Attention {
                q,
                k,
                v,
                q_offsets,
                kv_offsets,
                scale,
            } => Inputs::Attention {
                q: f(q)?,
                k: f(k)?,
                v: f(v)?,
                q_offsets: q_offsets.clone(),
                kv_offsets: kv_offsets.clone(),
                scale: *scale,
            },
            Inputs::LayerNorm { x, weight, bias } => Inputs::LayerNorm {
                x: f(x)?,
                weight: f(weight)?,
                bias: f(bias)?,
            },
            Inputs::LayerNormModulate {
                x,
                affine,
                shift,
                scale,
                offsets,
            } => Inputs::LayerNormModulate {
                x: f(x)?,
                affine: pair(affine)?,
                shift: f(shift)?,
                scale: f(scale)?,
                offsets: offsets.clone(),
            },
            Inputs::RmsNormRope { x, gamma, table } => Inputs::RmsNormRope {
                x: f(x)?,
                gamma: o(gamma)?,
                table: f(table)?,
            },
            Inputs::BiasAct { x, bias, act } => Inputs::BiasAct {
                x: f(x)?,
                bias: f(bias)?,
                act: *act,
            },
            Inputs::Linear {
                x,
                weight,
                bias,
                act,
                residual,
            } => Inputs::Linear {
                x: f(x)?,
                weight: f(weight)?,
                bias: o(bias)?,
                act: *act,
                residual: o(residual)?,
            },
            Inputs::GatedResidual {
                x,
                r,
                gate,
                offsets,
            } => Inputs::GatedResidual {
                x: f(x)?,
                r: f(r)?,
                gate: f(gate)?,
                offsets: offsets.clone(),
            },
            Inputs::NeighbourMap { rows, .. } => Inputs::NeighbourMap {
                rows: rows.clone(),
                device: device.clone(),
            },
            Inputs::ConvOrder { map, window } => Inputs::ConvOrder {
                map: f(map)?,
                window: *window,
            },
            Inputs::LayerNormAct {
                x,
                affine,
                rows,
                act,
            } => Inputs::LayerNormAct {
                x: f(x)?,
                affine: pair(affine)?,
                rows: o(rows)?,
                act: *act,
            },
            Inputs::C2sSkipAdd { h, x, sources } => Inputs::C2sSkipAdd {
                h: f(h)?,
                x: f(x)?,
                sources: f(sources)?,
            },
            Inputs::SpaceToChannel { feats, slots } => Inputs::SpaceToChannel {
                feats: f(feats)?,
                slots: f(slots)?,
            },
            Inputs::DeformIm2col {
                input,
                offset,
                mask,
                kernel,
                cfg,
                rows,
            } => Inputs::DeformIm2col {
                input: f(input)?,
                offset: f(offset)?,
                mask: f(mask)?,
                kernel: *kernel,
                cfg: *cfg,
                rows: rows.clone(),
            },
            Inputs::DeformConv {
                input,
                offset,
                mask,
                weight,
                bias,
                cfg,
            } => Inputs::DeformConv {
                input: f(input)?,
                offset: f(offset)?,
                mask: f(mask)?,
                weight: f(weight)?,
                bias: f(bias)?,
                cfg: *cfg,
            },
        })
    }
}

/// What the reference is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reference {
    /// The op's slow twin (`_slow`, or the composed candle formula): checks the CPU op.
    SlowTwin,
    /// The CPU op in f32 on the same rounded values: checks a GPU kernel.
    CpuOp,
}

/// What one call of an op moves or computes, for the throughput column.
#[derive(Clone, Copy, Debug)]
pub enum Work {
    Flops(f64),
    Bytes(f64),
}

/// One kernel on one shape, for each of `dtypes`.
#[derive(Clone, Debug)]
pub struct Case {
    pub op: Op,
    pub dtypes: &'static [DType],
    pub tolerance: Tolerance,
    pub size: Size,
    /// The first seed of the operands' values (consecutive seeds follow); the op's own by
    /// default.
    pub seed: u64,
}

/// `values` as a CPU `shape` tensor in `dtype`, rounded to `operands` first (a tensor-core
/// kernel's f32 case on CUDA gets f32 inputs that bf16 holds exactly, so the reference sees what
/// the kernel multiplies).
fn rounded(values: Vec<f32>, shape: &[usize], dtype: DType, operands: DType) -> Result<Tensor> {
    Tensor::from_vec(values, shape, &Device::Cpu)?
        .to_dtype(operands)?
        .to_dtype(dtype)
}

/// CPU f32 values of `shape` from `seed`, times `scale` plus `shift`.
fn f32_tensor(seed: u64, shape: &[usize], scale: f32, shift: f32) -> Result<Tensor> {
    let n = shape.iter().product();
    let v = uniform(seed, n).iter().map(|x| x * scale + shift).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

fn offsets_of(lens: &[usize]) -> Vec<usize> {
    let mut o = vec![0];
    for l in lens {
        o.push(o[o.len() - 1] + l);
    }
    o
}

impl Case {
    pub fn new(size: Size, op: Op, dtypes: &'static [DType], tolerance: Tolerance) -> Self {
        Self {
            seed: op.seed(),
            op,
            dtypes,
            tolerance,
            size,
        }
    }

    /// The case with its operands drawn from `seed`.
    pub fn seeded(self, seed: u64) -> Self {
        Self { seed, ..self }
    }

    /// Whether `device` runs this case: every case on a GPU; on the CPU those with a slow twin
    /// that are not [`Size::Large`].
    pub fn runs_on(&self, device: &Device) -> bool {
        !device.is_cpu() || (self.size != Size::Large && self.op.has_slow_twin())
    }

    /// The bound for `dtype` outputs computed on `operands` (the coarser of the two roundings).
    pub fn tolerance(&self, dtype: DType, operands: DType) -> f32 {
        self.tolerance.of(dtype).max(self.tolerance.of(operands))
    }

    /// The case's operands on the CPU in `dtype` (the activations; per-channel parameters stay
    /// f32 where the op takes f32), rounded to `operands` first where the op is a tensor-core
    /// one.
    pub fn inputs(&self, dtype: DType, operands: DType) -> Result<Inputs> {
        let seed = self.seed;
        let cpu = Device::Cpu;
        let act_in = |seed: u64, shape: &[usize], scale: f32, shift: f32| -> Result<Tensor> {
            f32_tensor(seed, shape, scale, shift)?.to_dtype(dtype)
        };
        Ok(match &self.op {
            &Op::SparseConv {
                ref map,
                ci,
                co,
                bias,
            } => {
                let (map, n) = map.build()?;
                let feats = rounded(uniform(seed, n * ci), &[n, ci], dtype, operands)?;
                let weight = rounded(
                    uniform(seed + 1, co * 27 * ci),
                    &[co, 27, ci],
                    dtype,
                    operands,
                )?;
                let bias = bias
                    .then(|| act_in(seed + 2, &[co], 1.0, 0.0))
                    .transpose()?;
                Inputs::SparseConv {
                    feats,
                    map: Tensor::from_vec(map, (n, 27), &cpu)?,
                    weight,
                    bias,
                }
            }
            Op::Attention {
                q,
                kv,
                heads,
                head_dim,
                scale,
            } => {
                let (h, d) = (*heads, *head_dim);
                let q_offsets = offsets_of(q);
                let kv_offsets = offsets_of(kv.as_ref().unwrap_or(q));
                let (nq, nk) = (q_offsets[q.len()], kv_offsets[kv_offsets.len() - 1]);
                // Scaled so the softmax is peaked: the running maximum of the online softmax
                // matters.
                let make = |seed, n: usize| {
                    let v = uniform(seed, n * h * d).iter().map(|x| 3.0 * x).collect();
                    rounded(v, &[n, h, d], dtype, operands)
                };
                Inputs::Attention {
                    q: make(seed, nq)?,
                    k: make(seed + 1, nk)?,
                    v: make(seed + 2, nk)?,
                    q_offsets,
                    kv_offsets,
                    scale: scale.unwrap_or(1.0 / (d as f32).sqrt()),
                }
            }
            &Op::LayerNorm {
                rows,
                channels: c,
                mean,
            } => Inputs::LayerNorm {
                // A row mean far from zero: the two-pass variance must not lose digits.
                x: act_in(seed, &[rows, c], 1.0, mean)?,
                weight: f32_tensor(seed + 1, &[c], 1.0, 0.0)?,
                bias: f32_tensor(seed + 2, &[c], 1.0, 0.0)?,
            },
            Op::LayerNormModulate {
                offsets,
                channels,
                affine,
            } => {
                let (t, b, c) = (offsets[offsets.len() - 1], offsets.len() - 1, *channels);
                Inputs::LayerNormModulate {
                    x: act_in(seed, &[t, c], 1.0, 4.0)?,
                    affine: affine
                        .then(|| -> Result<_> {
                            Ok((
                                f32_tensor(seed + 3, &[c], 1.0, 1.0)?,
                                f32_tensor(seed + 4, &[c], 1.0, 0.0)?,
                            ))
                        })
                        .transpose()?,
                    shift: f32_tensor(seed + 1, &[b, c], 1.0, 0.0)?,
                    scale: f32_tensor(seed + 2, &[b, c], 0.5, 0.0)?,
                    offsets: offsets.clone(),
                }
            }
            &Op::RmsNormRope {
                rows: t,
                heads: h,
                head_dim: d,
                gamma,
                table,
            } => {
                let table = match table {
                    RopeTable::Positions => {
                        let xyz: Vec<[i32; 3]> = (0..t as i32)
                            .map(|i| [i % 16, i / 16 % 16, i / 256])
                            .collect();
                        let (cos, sin) = rope_tables_3d(&xyz, d, 10000.0, &cpu)?;
                        rope_table(&cos, &sin)?
                    }
                    RopeTable::Identity => crate::ops::rms_norm_rope::identity_rotation(d, &cpu)?,
                    RopeTable::OneRow => {
                        let angles = f32_tensor(seed + 2, &[1, d / 2], 3.0, 0.0)?;
                        Tensor::stack(&[angles.cos()?, angles.sin()?], 2)?
                    }
                    RopeTable::Random => f32_tensor(seed + 2, &[t, d / 2, 2], 1.0, 0.0)?,
                };
                Inputs::RmsNormRope {
                    x: act_in(seed, &[t, h, d], 1.0, 0.0)?,
                    gamma: gamma
                        .then(|| f32_tensor(seed + 1, &[h, d], 1.0, 1.0))
                        .transpose()?,
                    table,
                }
            }
            &Op::BiasAct {
                rows,
                channels: c,
                act,
            } => Inputs::BiasAct {
                x: act_in(seed, &[rows, c], 4.0, 0.0)?,
                bias: f32_tensor(seed + 1, &[c], 1.0, 0.0)?,
                act,
            },
            &Op::Linear {
                m,
                k,
                n,
                bias,
                act,
                residual,
            } => Inputs::Linear {
                x: act_in(seed, &[m, k], 1.0, 0.0)?,
                weight: {
                    let w = uniform(seed + 1, n * k)
                        .iter()
                        .map(|v| v * 2.0 / (k as f32).sqrt())
                        .collect();
                    Tensor::from_vec(w, (n, k), &cpu)?.to_dtype(dtype)?
                },
                bias: bias.then(|| act_in(seed + 2, &[n], 1.0, 0.0)).transpose()?,
                act,
                residual: residual
                    .then(|| act_in(seed + 3, &[m, n], 1.0, 0.0))
                    .transpose()?,
            },
            Op::GatedResidual { offsets, channels } => {
                let (t, b, c) = (offsets[offsets.len() - 1], offsets.len() - 1, *channels);
                Inputs::GatedResidual {
                    x: act_in(seed, &[t, c], 1.0, 0.0)?,
                    r: act_in(seed + 1, &[t, c], 1.0, 0.0)?,
                    gate: f32_tensor(seed + 2, &[b, c], 1.0, 0.0)?,
                    offsets: offsets.clone(),
                }
            }
            Op::NeighbourMap { voxels } => Inputs::NeighbourMap {
                rows: voxels.rows(),
                device: cpu,
            },
            &Op::ConvOrder { ref voxels, window } => {
                use crate::ops::neighbour_map::{batch_ranges, neighbour_rows};
                let rows = voxels.rows();
                let map = neighbour_rows(&rows, &batch_ranges(&rows)?)?;
                Inputs::ConvOrder {
                    map: Tensor::from_vec(map, (rows.len(), 27), &cpu)?,
                    window,
                }
            }
            &Op::LayerNormAct {
                rows: r,
                channels: c,
                act,
                gather,
            } => {
                let x = act_in(seed, &[r, c], 1.0, 1.5)?;
                let (affine, rows) = match gather {
                    None => (
                        Some((
                            f32_tensor(seed + 1, &[c], 0.3, 1.0)?,
                            f32_tensor(seed + 2, &[c], 0.3, 0.0)?,
                        )),
                        None,
                    ),
                    Some(t) => {
                        let rows: Vec<u32> = uniform(seed + 3, t)
                            .into_iter()
                            .map(|u| row_of(u, r))
                            .collect();
                        (None, Some(Tensor::from_vec(rows, t, &cpu)?))
                    }
                };
                Inputs::LayerNormAct {
                    x,
                    affine,
                    rows,
                    act,
                }
            }
            &Op::C2sSkipAdd {
                parents,
                channels,
                children,
                out_channels,
            } => {
                let sources: Vec<u32> = uniform(seed + 2, children)
                    .into_iter()
                    .map(|u| row_of(u, parents * 8))
                    .collect();
                Inputs::C2sSkipAdd {
                    h: act_in(seed, &[children, out_channels], 1.0, 0.0)?,
                    x: act_in(seed + 1, &[parents, channels], 1.0, 0.0)?,
                    sources: Tensor::from_vec(sources, children, &cpu)?,
                }
            }
            &Op::SpaceToChannel {
                rows,
                channels,
                parents,
            } => {
                let slots: Vec<u32> = uniform(seed + 1, parents * 8)
                    .into_iter()
                    .map(|u| {
                        if u < -1.0 / 3.0 {
                            crate::ops::vocab::ABSENT
                        } else {
                            row_of(u, rows)
                        }
                    })
                    .collect();
                Inputs::SpaceToChannel {
                    feats: act_in(seed, &[rows, channels], 1.0, 0.0)?,
                    slots: Tensor::from_vec(slots, parents * 8, &cpu)?,
                }
            }
            &Op::DeformIm2col {
                input,
                kernel,
                groups,
                stride,
                dilation,
                offset_scale,
                offset_shift,
                ref rows,
            } => {
                let cfg = deform_config(kernel, stride, dilation);
                let (input, offset, mask) =
                    deform_operands(seed, input, kernel, groups, cfg, offset_scale, offset_shift)?;
                let out_h = offset.dim(2)?;
                Inputs::DeformIm2col {
                    input,
                    offset,
                    mask,
                    kernel: (kernel, kernel),
                    cfg,
                    rows: rows.clone().unwrap_or(0..out_h),
                }
            }
            &Op::DeformConv {
                input,
                out,
                kernel,
                groups,
                stride,
                dilation,
                offset_scale,
            } => {
                let cfg = deform_config(kernel, stride, dilation);
                let c = input[1];
                let (input, offset, mask) =
                    deform_operands(seed, input, kernel, groups, cfg, offset_scale, 0.0)?;
                Inputs::DeformConv {
                    input,
                    offset,
                    mask,
                    weight: f32_tensor(seed + 3, &[out, c, kernel, kernel], 0.1, 0.0)?,
                    bias: f32_tensor(seed + 4, &[out], 1.0, 0.0)?,
                    cfg,
                }
            }
        })
    }

    /// The op on the device its `inputs` are on.
    pub fn run(&self, inputs: &Inputs) -> Result<Tensor> {
        self.call(inputs, false)
    }

    /// The op (or with `slow` its slow twin) on the device its `inputs` are on.
    fn call(&self, inputs: &Inputs, slow: bool) -> Result<Tensor> {
        let no_twin =
            || candle_core::bail!("{}: no slow twin (the CPU op is the reference)", self.op);
        match inputs {
            Inputs::SparseConv {
                feats,
                map,
                weight,
                bias,
            } => {
                let conv = if slow {
                    submanifold_conv3d_slow
                } else {
                    submanifold_conv3d
                };
                conv(feats, map, weight, bias.as_ref())
            }
            Inputs::Attention {
                q,
                k,
                v,
                q_offsets,
                kv_offsets,
                scale,
            } => {
                let attention = if slow {
                    varlen_attention_slow
                } else {
                    varlen_attention
                };
                attention(q, k, v, q_offsets, kv_offsets, *scale)
            }
            Inputs::LayerNorm { x, weight, bias } if slow => {
                layer_norm_composed(x, weight, bias, EPS)
            }
            Inputs::LayerNorm { x, weight, bias } => layer_norm(x, Some((weight, bias)), EPS),
            Inputs::LayerNormModulate {
                x,
                affine,
                shift,
                scale,
                offsets,
            } => {
                let m = Modulation {
                    shift,
                    scale,
                    offsets,
                };
                let modulate = if slow {
                    layer_norm_modulate_slow
                } else {
                    layer_norm_modulate
                };
                modulate(x, affine.as_ref().map(|(w, b)| (w, b)), &m, EPS)
            }
            Inputs::RmsNormRope { x, gamma, table } => {
                let rms = if slow {
                    rms_norm_rope_slow
                } else {
                    rms_norm_rope
                };
                rms(x, gamma.as_ref(), table)
            }
            Inputs::BiasAct { x, bias, act } => {
                let bias_act = if slow { bias_act_slow } else { bias_act };
                bias_act(x, bias, *act)
            }
            Inputs::Linear { .. } | Inputs::NeighbourMap { .. } | Inputs::ConvOrder { .. }
                if slow =>
            {
                no_twin()
            }
            Inputs::ConvOrder { map, window } => sorted_by_mask(map, *window),
            Inputs::Linear {
                x,
                weight,
                bias,
                act,
                residual,
            } => {
                let lin = Linear::new(weight.clone(), bias.clone());
                match residual {
                    Some(r) => lin.forward_residual(x, r),
                    None => lin.forward_act(x, *act),
                }
            }
            Inputs::GatedResidual {
                x,
                r,
                gate,
                offsets,
            } => {
                let gated = if slow {
                    gated_residual_slow
                } else {
                    gated_residual
                };
                gated(x, r, gate, offsets)
            }
            Inputs::NeighbourMap { rows, device } => {
                let set = CoordSet::from_host(rows.clone(), device)?;
                Ok(set.neighbour_map()?.tensor().clone())
            }
            Inputs::LayerNormAct {
                x,
                affine,
                rows,
                act,
            } => {
                let affine = affine.as_ref().map(|(w, b)| (w, b));
                match (slow, rows) {
                    (true, rows) => layer_norm_act_slow(x, rows.as_ref(), affine, EPS, *act),
                    (false, Some(rows)) => gathered_layer_norm_act(x, rows, affine, EPS, *act),
                    (false, None) => layer_norm_act(x, affine, EPS, *act),
                }
            }
            Inputs::SpaceToChannel { feats, slots } => {
                let s2c = if slow {
                    space_to_channel_slow
                } else {
                    space_to_channel
                };
                s2c(feats, slots)
            }
            Inputs::C2sSkipAdd { h, x, sources } => {
                let c2s = if slow {
                    c2s_skip_add_slow
                } else {
                    c2s_skip_add
                };
                c2s(h, x, sources)
            }
            Inputs::DeformIm2col { .. } | Inputs::DeformConv { .. } if slow => no_twin(),
            Inputs::DeformIm2col {
                input,
                offset,
                mask,
                kernel,
                cfg,
                rows,
            } => modulated_im2col(input, offset, mask, *kernel, *cfg, rows.clone()),
            Inputs::DeformConv {
                input,
                offset,
                mask,
                weight,
                bias,
                cfg,
            } => deform_conv2d(input, offset, mask, weight, Some(bias), *cfg),
        }
    }

    /// The reference output for CPU `inputs`: the op on the CPU in f32 on the same rounded
    /// values, or its slow twin. A linear layer's reference rounds where the path the device
    /// last took ([`last_linear_path`]) rounds, so call it after [`Case::run`]: in f32 behind
    /// a fused path's one rounding, else the composed ops in the case's dtype. A neighbour map's is
    /// the host builder (its twin: the custom op's CPU forward).
    pub fn reference(&self, inputs: &Inputs, reference: Reference) -> Result<Tensor> {
        match inputs {
            Inputs::Linear {
                x,
                weight,
                bias,
                act,
                residual,
            } => {
                // Both fused paths round once (cuBLASLt's epilogue, the wgmma kernel's).
                let dtype = match last_linear_path() {
                    LinearPath::CublasLt | LinearPath::WgmmaAct => DType::F32,
                    LinearPath::Composed(_) => x.dtype(),
                };
                let host = |t: &Tensor| t.to_dtype(dtype);
                let lin = Linear::new(host(weight)?, bias.as_ref().map(host).transpose()?);
                match residual {
                    Some(r) => lin.forward_residual_unfused(&host(x)?, &host(r)?),
                    None => lin.forward_act_unfused(&host(x)?, *act),
                }
            }
            Inputs::NeighbourMap { rows, .. } => {
                let set = CoordSet::from_host(rows.clone(), &Device::Cpu)?;
                match reference {
                    Reference::CpuOp => Ok(set.neighbour_map()?.tensor().clone()),
                    Reference::SlowTwin => {
                        let n = rows.len();
                        neighbour_op_output(set.tensor())?
                            .narrow(0, 0, n * 27)?
                            .reshape((n, 27))
                    }
                }
            }
            _ => match reference {
                Reference::CpuOp => self.run(&inputs.to_f32()?),
                Reference::SlowTwin => self.call(&inputs.to_f32()?, true),
            },
        }
    }

    /// What one call moves or computes on `inputs`, for the throughput column.
    pub fn work(&self, inputs: &Inputs, dtype: DType) -> Result<Work> {
        let size = dtype.size_in_bytes() as f64;
        let elems = |t: &Tensor| t.elem_count() as f64;
        Ok(match inputs {
            Inputs::SparseConv { map, weight, .. } => {
                let pairs = map
                    .flatten_all()?
                    .to_vec1::<u32>()?
                    .iter()
                    .filter(|&&v| v != ABSENT)
                    .count();
                let (co, _, ci) = weight.dims3()?;
                Work::Flops(2.0 * pairs as f64 * (ci * co) as f64)
            }
            Inputs::Attention {
                q,
                q_offsets,
                kv_offsets,
                ..
            } => {
                let (_, heads, d) = q.dims3()?;
                let pairs: usize = q_offsets
                    .windows(2)
                    .zip(kv_offsets.windows(2))
                    .map(|(a, b)| (a[1] - a[0]) * (b[1] - b[0]))
                    .sum();
                Work::Flops(4.0 * pairs as f64 * (heads * d) as f64)
            }
            Inputs::LayerNorm { x, .. }
            | Inputs::LayerNormModulate { x, .. }
            | Inputs::RmsNormRope { x, .. }
            | Inputs::BiasAct { x, .. } => Work::Bytes(2.0 * elems(x) * size),
            Inputs::Linear { x, weight, .. } => Work::Flops(2.0 * elems(x) * weight.dim(0)? as f64),
            Inputs::GatedResidual { x, .. } => Work::Bytes(3.0 * elems(x) * size),
            Inputs::NeighbourMap { rows, .. } => Work::Bytes((rows.len() * 27 * 4) as f64),
            // The map read once; per radix pass (4 for one window) an item's id and mask read
            // twice and its id written.
            Inputs::ConvOrder { map, .. } => Work::Bytes((map.dim(0)? * (27 * 4 + 4 * 20)) as f64),
            Inputs::LayerNormAct { x, rows, .. } => {
                let out = match rows {
                    Some(r) => r.elem_count() * x.dim(1)?,
                    None => x.elem_count(),
                };
                Work::Bytes((elems(x) + out as f64) * size)
            }
            Inputs::C2sSkipAdd { h, .. } => Work::Bytes(2.0 * elems(h) * size),
            Inputs::SpaceToChannel { slots, feats } => {
                Work::Bytes(2.0 * (slots.elem_count() * feats.dim(1)?) as f64 * size)
            }
            Inputs::DeformIm2col { input, mask, .. } => {
                Work::Bytes((elems(input) + elems(mask) * 3.0) * 4.0)
            }
            Inputs::DeformConv { input, weight, .. } => {
                Work::Flops(2.0 * elems(input) * weight.dim(0)? as f64)
            }
        })
    }
}

fn deform_config(kernel: usize, stride: usize, dilation: usize) -> DeformConvConfig {
    let pad = kernel / 2 * dilation;
    DeformConvConfig {
        stride: (stride, stride),
        padding: (pad, pad),
        dilation: (dilation, dilation),
    }
}

/// Input `[B, C, H, W]`, offsets (uniform in ±`scale` plus `shift`) and a modulation in [0, 2)
/// like BiRefNet's 2·sigmoid, all f32.
fn deform_operands(
    seed: u64,
    [b, c, h, w]: [usize; 4],
    k: usize,
    groups: usize,
    cfg: DeformConvConfig,
    scale: f32,
    shift: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (oh, ow) = (
        (h + 2 * cfg.padding.0 - (cfg.dilation.0 * (k - 1) + 1)) / cfg.stride.0 + 1,
        (w + 2 * cfg.padding.1 - (cfg.dilation.1 * (k - 1) + 1)) / cfg.stride.1 + 1,
    );
    let taps = k * k;
    Ok((
        f32_tensor(seed, &[b, c, h, w], 1.0, 0.0)?,
        f32_tensor(seed + 1, &[b, 2 * groups * taps, oh, ow], scale, shift)?,
        f32_tensor(seed + 2, &[b, groups * taps, oh, ow], 1.0, 1.0)?,
    ))
}
