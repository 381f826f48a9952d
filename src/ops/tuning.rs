//! The kernel tuning knobs: every `TRELLIS2_*` environment variable that changes which GPU kernel
//! or tile shape runs, or how a run hides its cold start (weight reads), declared once in
//! [`KNOBS`] (name, accepted values, default, meaning) and parsed by one parser. None changes
//! results beyond the sign of zero; they exist for measuring (A/B runs, benches/README.md).
//!
//! Errors: an unknown value is always an error, one line such as
//! `TRELLIS2_CUBLASLT=maybe: expected on or off`. The CLI calls [`Tuning::from_env`] before any
//! command and exits 2 with that line. [`Tuning::current`] never fails: in library use without
//! the CLI, the process default is parsed once, a bad value is reported once on stderr as a
//! warning and that knob keeps its default (the others keep their parsed values).
//!
//! Overrides: [`Tuning::with`] runs a closure with another tuning for the calling thread only.
//! GPU ops run on the caller's thread (candle is synchronous), so tests and benches compare
//! kernels without touching the process environment.

use std::cell::RefCell;
use std::fmt;
use std::sync::OnceLock;

/// Which kernel of a tensor-core op family runs when the caller leaves the choice to the
/// defaults: `TRELLIS2_CONV_KERNEL` and `TRELLIS2_ATTENTION`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KernelChoice {
    /// The op's default: the wgmma kernel wherever it can run, else the mma.sync one.
    #[default]
    Auto,
    /// The mma.sync kernel always.
    Mma,
    /// The wgmma kernel (an error where the build or the device cannot run it; shapes it does
    /// not take fall back to mma.sync).
    Wgmma,
}

/// Which CUDA attention kernel runs when the caller leaves the choice to the defaults:
/// `TRELLIS2_ATTENTION`. [`KernelChoice`]'s values plus the warp-specialised Hopper kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AttentionChoice {
    /// The default: the wgmma kernel wherever it can run, else the mma.sync one.
    #[default]
    Auto,
    /// The mma.sync kernel always.
    Mma,
    /// The wgmma kernel (an error where the build or the device cannot run it; head dims it
    /// does not take fall back to mma.sync).
    Wgmma,
    /// The warp-specialised wgmma kernel (TMA producer warpgroup), under the same rule as
    /// `Wgmma`.
    Fa3,
}

/// Output tile columns of the sparse conv at Co ≥ 256: `TRELLIS2_CONV_TILE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ConvTile {
    /// 128 × 256 tiles where they still give every SM one (the measured default).
    #[default]
    Auto,
    /// 128 × 128 tiles always.
    Narrow,
    /// 128 × 256 tiles, as `Auto`.
    Wide,
}

impl ConvTile {
    /// Whether convs with Co ≥ 256 may take 128 × 256 tiles.
    pub fn wide(self) -> bool {
        self != ConvTile::Narrow
    }
}

/// How the CUDA and Metal sparse convs order voxels into tiles: `TRELLIS2_CONV_SORT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ConvSort {
    /// Sorted by neighbour mask in the default window for the feature row size.
    #[default]
    Auto,
    /// The voxels' own order.
    Off,
    /// Sorted in one window over the whole set.
    Full,
    /// Sorted in windows of this many voxels.
    Window(usize),
}

/// What the C2S blocks' first conv computes on CUDA: `TRELLIS2_C2S_CONV`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum C2sConv {
    /// The conv on the parents (8·C' channels), then each existing child's channel block.
    Parents,
    /// Only the existing children's rows (C' channels each), on the wgmma kernel: on an H100
    /// the decoders @1024 took 155 instead of 165 ms.
    #[default]
    Children,
    /// `Children` where C' ≥ 128, `Parents` below (the 64-column tiles of the last level
    /// gather a row for every 64 outputs, the parents' 256-column tiles one for every 256).
    Wide,
}

/// Which kernel computes attention on Metal: `TRELLIS2_METAL_ATTENTION`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MetalAttention {
    /// candle's fused `sdpa` (MLX's steel attention) wherever it takes the call (sequences of
    /// one length, a head dim it has), `kernels/metal/attention.metal` elsewhere.
    #[default]
    Auto,
    /// candle's `sdpa` (an error for a call it does not take).
    Sdpa,
    /// `kernels/metal/attention.metal` always.
    Varlen,
}

/// Whether a guided sampler step runs its positive and negative model calls as one forward of
/// twice the batch: `TRELLIS2_GUIDED_BATCH`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum GuidedBatch {
    /// On for a model on a GPU (CUDA, Metal) with resident weights whose step has at most
    /// [`GUIDED_BATCH_AUTO_MAX_ROWS`] tokens; off on the CPU (its golden parity keeps the
    /// two-forward arithmetic) and under `--low-memory` (twice the activations).
    #[default]
    Auto,
    /// One forward of 2B items wherever the model runs.
    On,
    /// Two forwards of B items.
    Off,
}

/// `auto` batches a guided step of at most this many tokens (all samples' rows of one
/// condition): on an H100 the sparse-structure flow (4,096) and the `512` flows (3,712) gained
/// 1–2 % batched, the 1024 flows (15,272) nothing, for 1.4 GiB more device memory.
pub const GUIDED_BATCH_AUTO_MAX_ROWS: usize = 8192;

impl GuidedBatch {
    /// Whether a guided step of `rows` tokens per condition runs as one forward, for a model on
    /// a GPU (`gpu`) or the CPU whose transformer blocks are streamed from the checkpoint
    /// (`streamed`, `--low-memory`) or resident.
    pub fn enabled(self, gpu: bool, streamed: bool, rows: usize) -> bool {
        match self {
            GuidedBatch::On => true,
            GuidedBatch::Off => false,
            GuidedBatch::Auto => gpu && !streamed && rows <= GUIDED_BATCH_AUTO_MAX_ROWS,
        }
    }
}

/// Every knob's value. `Default` is what an empty environment gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// `TRELLIS2_CUBLASLT`: the fused cuBLASLt linear path (off: the composed path).
    pub cublaslt: bool,
    /// `TRELLIS2_CONV_KERNEL`: the sparse conv's kernel under `ConvKernel::Auto`.
    pub conv_kernel: KernelChoice,
    /// `TRELLIS2_ATTENTION`: the attention kernel under `AttentionKernel::Auto`.
    pub attention: AttentionChoice,
    /// `TRELLIS2_ATTENTION_PINGPONG`: the warp-specialised attention kernel's two consumer
    /// warpgroups take turns to issue their products (None: by the longest key sequence, see
    /// `src/ops/attention/cuda.rs`).
    pub attention_pingpong: Option<bool>,
    /// `TRELLIS2_ATTENTION_KEYS`: keys per tile of the warp-specialised attention kernel (128 in
    /// three stages, or 176 in two).
    pub attention_keys: u32,
    /// `TRELLIS2_CONV_TILE`: the sparse conv's output tile at Co ≥ 256.
    pub conv_tile: ConvTile,
    /// `TRELLIS2_CONV_ROW_SKIP`: skip the products of 16-row groups that lack a tap.
    pub conv_row_skip: bool,
    /// `TRELLIS2_CONV_STAGES`: ring stages of the wgmma conv at 128 output columns (None: 3).
    pub conv_stages: Option<u32>,
    /// `TRELLIS2_CONV_WGMMA_KEEP`: wgmma groups kept in flight by the wgmma conv (None: 1 at
    /// 256 output columns, else 0).
    pub conv_wgmma_keep: Option<u32>,
    /// `TRELLIS2_CONV_SORT`: the voxel order of the CUDA and Metal sparse convs.
    pub conv_sort: ConvSort,
    /// `TRELLIS2_CONV_ROWS`: voxel rows per tile of the wgmma conv at ≤ 128 output columns
    /// (None: 128).
    pub conv_rows: Option<u32>,
    /// `TRELLIS2_C2S_CONV`: what the C2S blocks' first conv computes on CUDA.
    pub c2s_conv: C2sConv,
    /// `TRELLIS2_METAL_ATTENTION`: the attention kernel on Metal.
    pub metal_attention: MetalAttention,
    /// `TRELLIS2_PREFETCH`: how many threads read the next stages' weight files into the OS
    /// page cache while the first picture runs (0: none).
    pub prefetch_readers: usize,
    /// `TRELLIS2_LINEAR_ACT`: the CUDA linear layers whose activation has no cuBLASLt epilogue
    /// (SiLU, exact GELU) that run the wgmma kernel with bias and activation in its epilogue:
    /// those of at most this many inputs (None: none, `usize::MAX`: all).
    pub linear_act: Option<usize>,
    /// `TRELLIS2_GUIDED_BATCH`: a guided sampler step as one forward of twice the batch.
    pub guided_batch: GuidedBatch,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            cublaslt: true,
            conv_kernel: KernelChoice::Auto,
            attention: AttentionChoice::Auto,
            attention_pingpong: None,
            attention_keys: 176,
            conv_tile: ConvTile::Auto,
            conv_row_skip: true,
            conv_stages: None,
            conv_wgmma_keep: None,
            conv_sort: ConvSort::Auto,
            conv_rows: None,
            c2s_conv: C2sConv::Children,
            metal_attention: MetalAttention::Auto,
            prefetch_readers: DEFAULT_PREFETCH_READERS,
            linear_act: None,
            guided_batch: GuidedBatch::Auto,
        }
    }
}

/// One environment variable of the table.
pub struct Knob {
    /// The environment variable.
    pub name: &'static str,
    /// The values it accepts (unset or empty: the default).
    pub values: &'static str,
    /// Its value when unset.
    pub default: &'static str,
    /// What it changes.
    pub meaning: &'static str,
    /// Sets the field from a trimmed, non-empty value; `Err(())` for an unknown one.
    parse: fn(&mut Tuning, &str) -> Result<(), ()>,
    /// The field as the variable would spell it.
    show: fn(&Tuning) -> String,
}

/// Weight read-ahead threads by default (`TRELLIS2_PREFETCH=on`): on the 2-core development
/// machine's virtual disk, 4 read 6.1 GB of weight files into an empty page cache at
/// 1.3–1.4 GB/s against 0.4–0.6 GB/s for one (`benches/prefetch.rs`).
pub const DEFAULT_PREFETCH_READERS: usize = 4;

/// The most weight read-ahead threads `TRELLIS2_PREFETCH` takes.
pub const MAX_PREFETCH_READERS: usize = 16;

fn on_off(v: &str) -> Result<bool, ()> {
    match v.to_ascii_lowercase().as_str() {
        "on" | "1" => Ok(true),
        "off" | "0" => Ok(false),
        _ => Err(()),
    }
}

fn show_on_off(on: bool) -> String {
    if on { "on" } else { "off" }.into()
}

fn kernel_choice(v: &str) -> Result<KernelChoice, ()> {
    match v.to_ascii_lowercase().as_str() {
        "auto" => Ok(KernelChoice::Auto),
        "mma" => Ok(KernelChoice::Mma),
        "wgmma" => Ok(KernelChoice::Wgmma),
        _ => Err(()),
    }
}

fn show_kernel_choice(k: KernelChoice) -> String {
    match k {
        KernelChoice::Auto => "auto",
        KernelChoice::Mma => "mma",
        KernelChoice::Wgmma => "wgmma",
    }
    .into()
}

fn attention_choice(v: &str) -> Result<AttentionChoice, ()> {
    match v.to_ascii_lowercase().as_str() {
        "auto" => Ok(AttentionChoice::Auto),
        "mma" => Ok(AttentionChoice::Mma),
        "wgmma" => Ok(AttentionChoice::Wgmma),
        "fa3" => Ok(AttentionChoice::Fa3),
        _ => Err(()),
    }
}

fn show_attention_choice(k: AttentionChoice) -> String {
    match k {
        AttentionChoice::Auto => "auto",
        AttentionChoice::Mma => "mma",
        AttentionChoice::Wgmma => "wgmma",
        AttentionChoice::Fa3 => "fa3",
    }
    .into()
}

/// `auto` or one of `allowed`.
fn auto_or(v: &str, allowed: &[u32]) -> Result<Option<u32>, ()> {
    if v == "auto" {
        return Ok(None);
    }
    match v.parse::<u32>() {
        Ok(n) if allowed.contains(&n) => Ok(Some(n)),
        _ => Err(()),
    }
}

fn show_auto(v: Option<u32>) -> String {
    v.map_or_else(|| "auto".into(), |n| n.to_string())
}

/// The table: every knob, in the order reports list them.
pub static KNOBS: [Knob; 16] = [
    Knob {
        name: "TRELLIS2_CUBLASLT",
        values: "on or off",
        default: "on",
        meaning: "CUDA linear layers as one cuBLASLt matmul with the bias, tanh-GELU and \
                  residual in its epilogue; off: candle's matmul, bias_act and an add (any case; \
                  1 and 0 are taken too)",
        parse: |t, v| {
            t.cublaslt = on_off(v)?;
            Ok(())
        },
        show: |t| show_on_off(t.cublaslt),
    },
    Knob {
        name: "TRELLIS2_CONV_KERNEL",
        values: "auto, mma or wgmma",
        default: "auto",
        meaning:
            "the CUDA sparse conv kernel (any case): auto picks wgmma where it runs (sm_90a build, \
                  compute capability 9.0, Ci a multiple of 8), wgmma errors where the build or \
                  device lacks it",
        parse: |t, v| {
            t.conv_kernel = kernel_choice(v)?;
            Ok(())
        },
        show: |t| show_kernel_choice(t.conv_kernel),
    },
    Knob {
        name: "TRELLIS2_ATTENTION",
        values: "auto, mma, wgmma or fa3",
        default: "auto",
        meaning:
            "the CUDA attention kernel (any case): auto picks fa3 where it runs (sm_90a build, \
                  compute capability 9.0, head dim 64 or 128), else mma; fa3: the \
                  warp-specialised wgmma kernel (TMA producer warpgroup); wgmma: the earlier \
                  Hopper kernel (every warp copies); fa3 and wgmma error where the build or \
                  device lacks them",
        parse: |t, v| {
            t.attention = attention_choice(v)?;
            Ok(())
        },
        show: |t| show_attention_choice(t.attention),
    },
    Knob {
        name: "TRELLIS2_ATTENTION_PINGPONG",
        values: "auto, on or off",
        default: "auto",
        meaning: "the fa3 attention kernel's two consumer warpgroups take turns to issue their \
                  products, so that one's softmax overlaps the other's: auto does so while the \
                  longest key sequence of the call is at most 22,528 keys (128 tiles of 176), \
                  on and off always (any case; 1 and 0 are taken too)",
        parse: |t, v| {
            t.attention_pingpong = if v.eq_ignore_ascii_case("auto") {
                None
            } else {
                Some(on_off(v)?)
            };
            Ok(())
        },
        show: |t| {
            t.attention_pingpong
                .map_or_else(|| "auto".into(), show_on_off)
        },
    },
    Knob {
        name: "TRELLIS2_ATTENTION_KEYS",
        values: "128 or 176",
        default: "176",
        meaning: "keys per tile of the fa3 attention kernel: 128 in a ring of three stages, 176 \
                  in two",
        parse: |t, v| {
            t.attention_keys = match v {
                "128" => 128,
                "176" => 176,
                _ => return Err(()),
            };
            Ok(())
        },
        show: |t| t.attention_keys.to_string(),
    },
    Knob {
        name: "TRELLIS2_CONV_TILE",
        values: "auto, 128 or 256",
        default: "auto",
        meaning: "output tile columns of the CUDA sparse conv at Co >= 256: auto and 256 take \
                  128 x 256 tiles where they still give every SM one, 128 keeps 128 x 128",
        parse: |t, v| {
            t.conv_tile = match v {
                "auto" => ConvTile::Auto,
                "128" => ConvTile::Narrow,
                "256" => ConvTile::Wide,
                _ => return Err(()),
            };
            Ok(())
        },
        show: |t| {
            match t.conv_tile {
                ConvTile::Auto => "auto",
                ConvTile::Narrow => "128",
                ConvTile::Wide => "256",
            }
            .into()
        },
    },
    Knob {
        name: "TRELLIS2_CONV_ROW_SKIP",
        values: "on or off",
        default: "on",
        meaning: "the CUDA sparse conv skips the products of 16-row groups that lack a tap; off \
                  keeps every product (same results up to the sign of zero)",
        parse: |t, v| {
            t.conv_row_skip = match v {
                "on" => true,
                "off" => false,
                _ => return Err(()),
            };
            Ok(())
        },
        show: |t| show_on_off(t.conv_row_skip),
    },
    Knob {
        name: "TRELLIS2_CONV_STAGES",
        values: "auto, 3 or 4",
        default: "auto",
        meaning: "ring stages of the wgmma sparse conv at 128 output columns (auto: 3, two \
                  blocks an SM; 4: one); 64 and 256 columns always take 4",
        parse: |t, v| {
            t.conv_stages = auto_or(v, &[3, 4])?;
            Ok(())
        },
        show: |t| show_auto(t.conv_stages),
    },
    Knob {
        name: "TRELLIS2_CONV_WGMMA_KEEP",
        values: "auto, 0 or 1",
        default: "auto",
        meaning: "wgmma groups the wgmma sparse conv keeps in flight (auto: 1 at 256 output \
                  columns, else 0)",
        parse: |t, v| {
            t.conv_wgmma_keep = auto_or(v, &[0, 1])?;
            Ok(())
        },
        show: |t| show_auto(t.conv_wgmma_keep),
    },
    Knob {
        name: "TRELLIS2_CONV_SORT",
        values: "auto, off, full or a window in voxels",
        default: "auto",
        meaning: "voxel order of the CUDA and Metal sparse convs on sets of 4096 voxels or more: \
                  sorted by neighbour mask in windows of the default size (auto), of one window \
                  (full) or of the given voxels, on Metal at most 1024; off (or 0) keeps the \
                  voxels' order",
        parse: |t, v| {
            t.conv_sort = match v {
                "auto" => ConvSort::Auto,
                "off" | "0" => ConvSort::Off,
                "full" => ConvSort::Full,
                w => ConvSort::Window(w.parse().map_err(|_| ())?),
            };
            Ok(())
        },
        show: |t| match t.conv_sort {
            ConvSort::Auto => "auto".into(),
            ConvSort::Off => "off".into(),
            ConvSort::Full => "full".into(),
            ConvSort::Window(w) => w.to_string(),
        },
    },
    Knob {
        name: "TRELLIS2_CONV_ROWS",
        values: "auto, 128 or 256",
        default: "auto",
        meaning: "voxel rows per tile of the wgmma sparse conv at 128 output columns or fewer \
                  (auto: 128, two warpgroups; 256: four warpgroups, one block an SM, a 4-stage \
                  ring); 256 output columns always take 128",
        parse: |t, v| {
            t.conv_rows = auto_or(v, &[128, 256])?;
            Ok(())
        },
        show: |t| show_auto(t.conv_rows),
    },
    Knob {
        name: "TRELLIS2_C2S_CONV",
        values: "parents, children or wide",
        default: "children",
        meaning: "the first conv of the SC-VAE decoders' C2S blocks on CUDA (any case): parents \
                  convolves every parent to 8·C' channels and the LayerNorm reads each existing \
                  child's block; children computes only the existing children's C' channels \
                  (wgmma kernel: sm_90a build, compute capability 9.0, f16/bf16, C a multiple of \
                  8; elsewhere parents); wide does so where C' ≥ 128 only",
        parse: |t, v| {
            t.c2s_conv = match v.to_ascii_lowercase().as_str() {
                "parents" => C2sConv::Parents,
                "children" => C2sConv::Children,
                "wide" => C2sConv::Wide,
                _ => return Err(()),
            };
            Ok(())
        },
        show: |t| {
            match t.c2s_conv {
                C2sConv::Parents => "parents",
                C2sConv::Children => "children",
                C2sConv::Wide => "wide",
            }
            .into()
        },
    },
    Knob {
        name: "TRELLIS2_METAL_ATTENTION",
        values: "auto, sdpa or varlen",
        default: "auto",
        meaning: "the Metal attention kernel (any case): auto takes candle's fused sdpa (MLX's \
                  steel attention) where it takes the call (sequences of one length, head dim \
                  32-256) and kernels/metal/attention.metal elsewhere; sdpa errors on a call it \
                  does not take; varlen always takes ours",
        parse: |t, v| {
            t.metal_attention = match v.to_ascii_lowercase().as_str() {
                "auto" => MetalAttention::Auto,
                "sdpa" => MetalAttention::Sdpa,
                "varlen" => MetalAttention::Varlen,
                _ => return Err(()),
            };
            Ok(())
        },
        show: |t| {
            match t.metal_attention {
                MetalAttention::Auto => "auto",
                MetalAttention::Sdpa => "sdpa",
                MetalAttention::Varlen => "varlen",
            }
            .into()
        },
    },
    Knob {
        name: "TRELLIS2_PREFETCH",
        values: "on, off or a count of reader threads (1 to 16)",
        default: "on",
        meaning: "read the weight files of the models a run will load into the OS page cache, \
                  in the order the schedule loads them, on background threads while earlier \
                  stages compute (at most half the host's available memory ahead; never under \
                  --low-memory): N threads read the next 8 MiB pieces side by side, since a \
                  disk reads faster with several requests in flight; on = 4 (any case; 0 is \
                  off)",
        parse: |t, v| {
            t.prefetch_readers = match v.to_ascii_lowercase().as_str() {
                "on" => DEFAULT_PREFETCH_READERS,
                "off" | "0" => 0,
                n => match n.parse::<usize>() {
                    Ok(n) if (1..=MAX_PREFETCH_READERS).contains(&n) => n,
                    _ => return Err(()),
                },
            };
            Ok(())
        },
        show: |t| match t.prefetch_readers {
            0 => "off".into(),
            DEFAULT_PREFETCH_READERS => "on".into(),
            n => n.to_string(),
        },
    },
    Knob {
        name: "TRELLIS2_LINEAR_ACT",
        values: "off, on or a largest input width",
        default: "off",
        meaning: "CUDA f16/bf16 linear layers whose activation has no cuBLASLt epilogue (SiLU, \
                  exact GELU): off runs candle's matmul then bias_act; on runs them as one wgmma \
                  kernel (sm_90a build, compute capability 9.0, inputs a multiple of 8) with the \
                  bias and activation in its epilogue; a number N does so for layers of at most \
                  N inputs only (any case; 1 and 0 are taken too)",
        parse: |t, v| {
            t.linear_act = match on_off(v) {
                Ok(true) => Some(usize::MAX),
                Ok(false) => None,
                Err(()) => match v.parse::<usize>() {
                    Ok(n) if n > 1 => Some(n),
                    _ => return Err(()),
                },
            };
            Ok(())
        },
        show: |t| match t.linear_act {
            None => "off".into(),
            Some(usize::MAX) => "on".into(),
            Some(n) => n.to_string(),
        },
    },
    Knob {
        name: "TRELLIS2_GUIDED_BATCH",
        values: "auto, on or off",
        default: "auto",
        meaning: "a guided sampler step (classifier-free guidance) runs the image condition \
                  and the zero condition as one flow forward of twice the batch instead of two \
                  (the cross-attention on the conditioned rows only); auto: on for CUDA and \
                  Metal (there only where the doubled products fit a command buffer), off on \
                  the CPU and under --low-memory (twice the activations) (any case; 1 and 0 \
                  are taken too)",
        parse: |t, v| {
            t.guided_batch = match v.to_ascii_lowercase().as_str() {
                "auto" => GuidedBatch::Auto,
                _ => match on_off(v)? {
                    true => GuidedBatch::On,
                    false => GuidedBatch::Off,
                },
            };
            Ok(())
        },
        show: |t| {
            match t.guided_batch {
                GuidedBatch::Auto => "auto",
                GuidedBatch::On => "on",
                GuidedBatch::Off => "off",
            }
            .into()
        },
    },
];

thread_local! {
    /// The tuning [`Tuning::with`] set for this thread, if any.
    static OVERRIDE: RefCell<Option<Tuning>> = const { RefCell::new(None) };
}

/// The process default, parsed from the environment on first use.
static PROCESS: OnceLock<Tuning> = OnceLock::new();

/// Puts the previous override back when a [`Tuning::with`] scope ends, also by a panic.
struct Restore(Option<Tuning>);

impl Drop for Restore {
    fn drop(&mut self) {
        let previous = self.0.take();
        OVERRIDE.with(|o| *o.borrow_mut() = previous);
    }
}

impl Tuning {
    /// Every knob parsed from the process environment; the first bad value is the error, one
    /// line: `TRELLIS2_X=value: expected …`.
    pub fn from_env() -> candle_core::Result<Tuning> {
        let (tuning, errors) = Self::parse(|name| std::env::var_os(name));
        match errors.into_iter().next() {
            Some(e) => Err(candle_core::Error::Msg(e)),
            None => Ok(tuning),
        }
    }

    /// The calling thread's override ([`Tuning::with`]) if one is set, else the process default
    /// (the environment, parsed once; a bad value is warned about once and keeps its knob's
    /// default).
    pub fn current() -> Tuning {
        if let Some(t) = OVERRIDE.with(|o| *o.borrow()) {
            return t;
        }
        *PROCESS.get_or_init(|| {
            let (tuning, errors) = Self::parse(|name| std::env::var_os(name));
            for e in errors {
                eprintln!("warning: {e}; using its default");
            }
            tuning
        })
    }

    /// Runs `f` with `self` as this thread's tuning, then restores the previous one (scopes
    /// nest; the restore also happens when `f` panics).
    pub fn with<R>(self, f: impl FnOnce() -> R) -> R {
        let previous = OVERRIDE.with(|o| o.borrow_mut().replace(self));
        let _restore = Restore(previous);
        f()
    }

    /// The table of knobs.
    pub fn knobs() -> &'static [Knob] {
        &KNOBS
    }

    /// `(name, value)` of every knob, in the table's order, spelled as the variable takes it.
    pub fn values(&self) -> Vec<(&'static str, String)> {
        KNOBS.iter().map(|k| (k.name, (k.show)(self))).collect()
    }

    /// Every knob from `lookup` (the environment, or a test's map): the tuning with each bad
    /// value left at its default, and one error line per bad value.
    fn parse(lookup: impl Fn(&str) -> Option<std::ffi::OsString>) -> (Tuning, Vec<String>) {
        let mut tuning = Tuning::default();
        let mut errors = Vec::new();
        for knob in &KNOBS {
            let Some(raw) = lookup(knob.name) else {
                continue;
            };
            let Some(v) = raw.to_str() else {
                errors.push(format!("{}: the value is not valid UTF-8", knob.name));
                continue;
            };
            let trimmed = v.trim();
            if trimmed.is_empty() {
                continue;
            }
            if (knob.parse)(&mut tuning, trimmed).is_err() {
                errors.push(format!("{}={v}: expected {}", knob.name, knob.values));
            }
        }
        (tuning, errors)
    }
}

/// `NAME=value` for every knob, separated by spaces.
impl fmt::Display for Tuning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, value)) in self.values().into_iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{name}={value}")?;
        }
        Ok(())
    }
}

/// A map of `NAME: value` in the table's order (reports).
impl serde::Serialize for Tuning {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let values = self.values();
        let mut map = s.serialize_map(Some(values.len()))?;
        for (name, value) in &values {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> (Tuning, Vec<String>) {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Tuning::parse(|name| map.get(name).map(Into::into))
    }

    fn one(name: &str, value: &str) -> Result<Tuning, String> {
        let (t, errors) = parse(&[(name, value)]);
        match errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(t),
        }
    }

    #[test]
    fn an_empty_environment_gives_the_defaults() {
        let (t, errors) = parse(&[]);
        assert!(errors.is_empty());
        assert_eq!(t, Tuning::default());
        for knob in Tuning::knobs() {
            assert_eq!((knob.show)(&t), knob.default, "{}", knob.name);
            // Empty and blank values are the default too.
            assert_eq!(one(knob.name, "").unwrap(), t);
            assert_eq!(one(knob.name, "  ").unwrap(), t);
        }
    }

    #[test]
    fn every_accepted_value_parses() {
        let d = Tuning::default();
        let cases: Vec<(&str, &str, Tuning)> = vec![
            ("TRELLIS2_CUBLASLT", "on", d),
            ("TRELLIS2_CUBLASLT", "ON", d),
            ("TRELLIS2_CUBLASLT", "1", d),
            (
                "TRELLIS2_CUBLASLT",
                "off",
                Tuning {
                    cublaslt: false,
                    ..d
                },
            ),
            (
                "TRELLIS2_CUBLASLT",
                "Off",
                Tuning {
                    cublaslt: false,
                    ..d
                },
            ),
            (
                "TRELLIS2_CUBLASLT",
                "0",
                Tuning {
                    cublaslt: false,
                    ..d
                },
            ),
            ("TRELLIS2_CONV_KERNEL", "auto", d),
            (
                "TRELLIS2_CONV_KERNEL",
                "mma",
                Tuning {
                    conv_kernel: KernelChoice::Mma,
                    ..d
                },
            ),
            (
                "TRELLIS2_CONV_KERNEL",
                "WGMMA",
                Tuning {
                    conv_kernel: KernelChoice::Wgmma,
                    ..d
                },
            ),
            ("TRELLIS2_ATTENTION", "auto", d),
            (
                "TRELLIS2_ATTENTION",
                "Mma",
                Tuning {
                    attention: AttentionChoice::Mma,
                    ..d
                },
            ),
            (
                "TRELLIS2_ATTENTION",
                "wgmma",
                Tuning {
                    attention: AttentionChoice::Wgmma,
                    ..d
                },
            ),
            (
                "TRELLIS2_ATTENTION",
                "FA3",
                Tuning {
                    attention: AttentionChoice::Fa3,
                    ..d
                },
            ),
            ("TRELLIS2_ATTENTION_PINGPONG", "auto", d),
            (
                "TRELLIS2_ATTENTION_PINGPONG",
                "on",
                Tuning {
                    attention_pingpong: Some(true),
                    ..d
                },
            ),
            ("TRELLIS2_ATTENTION_KEYS", "176", d),
            (
                "TRELLIS2_ATTENTION_KEYS",
                "128",
                Tuning {
                    attention_keys: 128,
                    ..d
                },
            ),
            (
                "TRELLIS2_ATTENTION_PINGPONG",
                "off",
                Tuning {
                    attention_pingpong: Some(false),
                    ..d
                },
            ),
            ("TRELLIS2_CONV_TILE", "auto", d),
            (
                "TRELLIS2_CONV_TILE",
                "128",
                Tuning {
                    conv_tile: ConvTile::Narrow,
                    ..d
                },
            ),
            (
                "TRELLIS2_CONV_TILE",
                "256",
                Tuning {
                    conv_tile: ConvTile::Wide,
                    ..d
                },
            ),
            ("TRELLIS2_CONV_ROW_SKIP", "on", d),
            (
                "TRELLIS2_CONV_ROW_SKIP",
                "off",
                Tuning {
                    conv_row_skip: false,
                    ..d
                },
            ),
            ("TRELLIS2_CONV_STAGES", "auto", d),
            (
                "TRELLIS2_CONV_STAGES",
                "3",
                Tuning {
                    conv_stages: Some(3),
                    ..d
                },
            ),
            (
                "TRELLIS2_CONV_STAGES",
                "4",
                Tuning {
                    conv_stages: Some(4),
                    ..d
                },
            ),
            ("TRELLIS2_CONV_WGMMA_KEEP", "auto", d),
            (
                "TRELLIS2_CONV_WGMMA_KEEP",
                "0",
                Tuning {
                    conv_wgmma_keep: Some(0),
                    ..d
                },
            ),
            (
                "TRELLIS2_CONV_WGMMA_KEEP",
                "1",
                Tuning {
                    conv_wgmma_keep: Some(1),
                    ..d
                },
            ),
            ("TRELLIS2_CONV_SORT", "auto", d),
            (
                "TRELLIS2_CONV_SORT",
                "off",
                Tuning {
                    conv_sort: ConvSort::Off,
                    ..d
                },
            ),
            (
                "TRELLIS2_CONV_SORT",
                "0",
                Tuning {
                    conv_sort: ConvSort::Off,
                    ..d
                },
            ),
            (
                "TRELLIS2_CONV_SORT",
                "full",
                Tuning {
                    conv_sort: ConvSort::Full,
                    ..d
                },
            ),
            (
                "TRELLIS2_CONV_SORT",
                "65536",
                Tuning {
                    conv_sort: ConvSort::Window(65536),
                    ..d
                },
            ),
            ("TRELLIS2_CONV_ROWS", "auto", d),
            (
                "TRELLIS2_CONV_ROWS",
                "256",
                Tuning {
                    conv_rows: Some(256),
                    ..d
                },
            ),
            ("TRELLIS2_METAL_ATTENTION", "auto", d),
            (
                "TRELLIS2_METAL_ATTENTION",
                "SDPA",
                Tuning {
                    metal_attention: MetalAttention::Sdpa,
                    ..d
                },
            ),
            (
                "TRELLIS2_METAL_ATTENTION",
                "varlen",
                Tuning {
                    metal_attention: MetalAttention::Varlen,
                    ..d
                },
            ),
            ("TRELLIS2_PREFETCH", "on", d),
            (
                "TRELLIS2_PREFETCH",
                "1",
                Tuning {
                    prefetch_readers: 1,
                    ..d
                },
            ),
            (
                "TRELLIS2_PREFETCH",
                "0",
                Tuning {
                    prefetch_readers: 0,
                    ..d
                },
            ),
            (
                "TRELLIS2_PREFETCH",
                "4",
                Tuning {
                    prefetch_readers: 4,
                    ..d
                },
            ),
            ("TRELLIS2_LINEAR_ACT", "off", d),
            ("TRELLIS2_LINEAR_ACT", "0", d),
            (
                "TRELLIS2_LINEAR_ACT",
                "ON",
                Tuning {
                    linear_act: Some(usize::MAX),
                    ..d
                },
            ),
            (
                "TRELLIS2_LINEAR_ACT",
                "256",
                Tuning {
                    linear_act: Some(256),
                    ..d
                },
            ),
            ("TRELLIS2_GUIDED_BATCH", "AUTO", d),
            (
                "TRELLIS2_GUIDED_BATCH",
                "on",
                Tuning {
                    guided_batch: GuidedBatch::On,
                    ..d
                },
            ),
            (
                "TRELLIS2_GUIDED_BATCH",
                "0",
                Tuning {
                    guided_batch: GuidedBatch::Off,
                    ..d
                },
            ),
        ];
        for (name, value, want) in cases {
            assert_eq!(one(name, value), Ok(want), "{name}={value}");
            // Surrounding blanks are ignored.
            assert_eq!(
                one(name, &format!(" {value}\n")),
                Ok(want),
                "{name}={value}"
            );
        }
        // Every knob's value survives printing and parsing again.
        let all: Vec<(&str, &str)> = vec![
            ("TRELLIS2_CUBLASLT", "off"),
            ("TRELLIS2_CONV_KERNEL", "mma"),
            ("TRELLIS2_ATTENTION", "fa3"),
            ("TRELLIS2_ATTENTION_PINGPONG", "off"),
            ("TRELLIS2_ATTENTION_KEYS", "176"),
            ("TRELLIS2_CONV_TILE", "128"),
            ("TRELLIS2_CONV_ROW_SKIP", "off"),
            ("TRELLIS2_CONV_STAGES", "4"),
            ("TRELLIS2_CONV_WGMMA_KEEP", "0"),
            ("TRELLIS2_CONV_SORT", "4096"),
            ("TRELLIS2_CONV_ROWS", "256"),
            ("TRELLIS2_C2S_CONV", "parents"),
            ("TRELLIS2_METAL_ATTENTION", "varlen"),
            ("TRELLIS2_PREFETCH", "8"),
            ("TRELLIS2_LINEAR_ACT", "256"),
            ("TRELLIS2_GUIDED_BATCH", "off"),
        ];
        let (t, errors) = parse(&all);
        assert!(errors.is_empty(), "{errors:?}");
        let printed = t.values();
        let again: Vec<(&str, &str)> = printed.iter().map(|(n, v)| (*n, v.as_str())).collect();
        assert_eq!(again, all);
        assert_eq!(parse(&again).0, t);
    }

    #[test]
    fn unknown_values_are_one_line_errors() {
        let cases = [
            (
                "TRELLIS2_CUBLASLT",
                "maybe",
                "TRELLIS2_CUBLASLT=maybe: expected on or off",
            ),
            (
                "TRELLIS2_CONV_KERNEL",
                "fast",
                "TRELLIS2_CONV_KERNEL=fast: expected auto, mma or wgmma",
            ),
            (
                "TRELLIS2_ATTENTION",
                "flash",
                "TRELLIS2_ATTENTION=flash: expected auto, mma, wgmma or fa3",
            ),
            (
                "TRELLIS2_ATTENTION_PINGPONG",
                "maybe",
                "TRELLIS2_ATTENTION_PINGPONG=maybe: expected auto, on or off",
            ),
            (
                "TRELLIS2_ATTENTION_KEYS",
                "64",
                "TRELLIS2_ATTENTION_KEYS=64: expected 128 or 176",
            ),
            (
                "TRELLIS2_CONV_TILE",
                "64",
                "TRELLIS2_CONV_TILE=64: expected auto, 128 or 256",
            ),
            (
                "TRELLIS2_CONV_ROW_SKIP",
                "1",
                "TRELLIS2_CONV_ROW_SKIP=1: expected on or off",
            ),
            (
                "TRELLIS2_CONV_STAGES",
                "2",
                "TRELLIS2_CONV_STAGES=2: expected auto, 3 or 4",
            ),
            (
                "TRELLIS2_CONV_WGMMA_KEEP",
                "2",
                "TRELLIS2_CONV_WGMMA_KEEP=2: expected auto, 0 or 1",
            ),
            (
                "TRELLIS2_CONV_SORT",
                "-1",
                "TRELLIS2_CONV_SORT=-1: expected auto, off, full or a window in voxels",
            ),
            (
                "TRELLIS2_PREFETCH",
                "later",
                "TRELLIS2_PREFETCH=later: expected on, off or a count of reader threads (1 to 16)",
            ),
            (
                "TRELLIS2_PREFETCH",
                "17",
                "TRELLIS2_PREFETCH=17: expected on, off or a count of reader threads (1 to 16)",
            ),
            (
                "TRELLIS2_CONV_ROWS",
                "64",
                "TRELLIS2_CONV_ROWS=64: expected auto, 128 or 256",
            ),
            (
                "TRELLIS2_LINEAR_ACT",
                "wgmma",
                "TRELLIS2_LINEAR_ACT=wgmma: expected off, on or a largest input width",
            ),
            (
                "TRELLIS2_GUIDED_BATCH",
                "both",
                "TRELLIS2_GUIDED_BATCH=both: expected auto, on or off",
            ),
        ];
        for (name, value, message) in cases {
            assert_eq!(one(name, value), Err(message.to_string()));
        }
        // The first bad knob in the table's order is the error; the good ones still parse and
        // each bad one keeps its default.
        let (t, errors) = parse(&[
            ("TRELLIS2_CONV_SORT", "x"),
            ("TRELLIS2_CONV_STAGES", "4"),
            ("TRELLIS2_CUBLASLT", "y"),
        ]);
        assert_eq!(errors.len(), 2);
        assert!(errors[0].starts_with("TRELLIS2_CUBLASLT=y: "), "{errors:?}");
        assert_eq!(
            t,
            Tuning {
                conv_stages: Some(4),
                ..Tuning::default()
            }
        );
    }

    #[test]
    fn with_overrides_this_thread_and_restores_nested_scopes() {
        let base = Tuning::current();
        let a = Tuning {
            conv_sort: ConvSort::Off,
            ..base
        };
        let b = Tuning {
            cublaslt: !base.cublaslt,
            ..a
        };
        let seen = a.with(|| {
            let inner = b.with(Tuning::current);
            // Other threads keep the process default.
            let other = std::thread::spawn(Tuning::current).join().unwrap();
            (Tuning::current(), inner, other)
        });
        assert_eq!(seen, (a, b, base));
        assert_eq!(Tuning::current(), base);
        // A panic inside the scope restores too.
        let caught = std::panic::catch_unwind(|| a.with(|| panic!("inside")));
        assert!(caught.is_err());
        assert_eq!(Tuning::current(), base);
    }

    #[test]
    fn display_and_serialisation_list_every_knob() {
        let t = Tuning::default();
        assert_eq!(
            t.to_string(),
            "TRELLIS2_CUBLASLT=on TRELLIS2_CONV_KERNEL=auto TRELLIS2_ATTENTION=auto \
             TRELLIS2_ATTENTION_PINGPONG=auto TRELLIS2_ATTENTION_KEYS=176 TRELLIS2_CONV_TILE=auto TRELLIS2_CONV_ROW_SKIP=on TRELLIS2_CONV_STAGES=auto \
             TRELLIS2_CONV_WGMMA_KEEP=auto TRELLIS2_CONV_SORT=auto TRELLIS2_CONV_ROWS=auto \
             TRELLIS2_C2S_CONV=children TRELLIS2_METAL_ATTENTION=auto TRELLIS2_PREFETCH=on \
             TRELLIS2_LINEAR_ACT=off TRELLIS2_GUIDED_BATCH=auto"
        );
        let json = serde_json::to_value(t).unwrap();
        assert_eq!(json["TRELLIS2_CONV_KERNEL"], "auto");
        assert_eq!(json.as_object().unwrap().len(), KNOBS.len());
    }

    #[test]
    fn guided_batch_auto_is_on_for_resident_gpu_models_of_few_tokens_only() {
        use GuidedBatch::*;
        let few = GUIDED_BATCH_AUTO_MAX_ROWS;
        for (choice, gpu, streamed, rows, want) in [
            (Auto, true, false, few, true),
            (Auto, true, false, few + 1, false),
            (Auto, false, false, few, false),
            (Auto, true, true, few, false),
            (Auto, false, true, few, false),
            (On, false, true, 4 * few, true),
            (Off, true, false, 1, false),
        ] {
            assert_eq!(
                choice.enabled(gpu, streamed, rows),
                want,
                "{choice:?} {gpu} {streamed} {rows}"
            );
        }
    }
}
