//! The shared vocabulary of the ops and their backends: the enums, constants and backend-neutral
//! argument and plan structs that an op's CPU reference and more than one backend read (the
//! activation codes, the dtype the tensor-core ops compute in, the kernel choices, the neighbour
//! map's taps and hash-table plan, the conv order's sort plan, the deformable im2col's geometry). Backend files
//! (`src/ops/<op>/{cuda,metal}.rs`) may import this module; it imports no op and no backend.

use std::ops::Range;

use candle_core::{bail, DType, Result, Tensor};

/// Marks a missing neighbour in a neighbour map (FlexGEMM uses the same `u32::MAX`).
pub const ABSENT: u32 = u32::MAX;

/// Taps of a 3×3×3 kernel.
pub const TAPS: usize = 27;

/// Spatial coordinates of sparse voxels must lie in `[0, MAX_COORD)`: 21 bits per axis, so that a
/// voxel key packs into a `u64` and four 2× subdivisions of any latent grid in use (≤ 128) stay
/// far inside.
pub const MAX_COORD: i32 = 1 << 21;

/// Children per parent voxel of a channel→space subdivision (factor 2 on each axis).
pub const CHILDREN: usize = 8;

/// The activation applied after the bias. The discriminants are the kernels' codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    None = 0,
    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`: torch's `GELU(approximate="tanh")`, which
    /// the flow transformers' MLPs use.
    GeluTanh = 1,
    /// `x·sigmoid(x)`: the SC-VAE decoders' MLPs and norms.
    Silu = 2,
    /// `0.5·x·(1 + erf(x/√2))`: torch's exact `GELU()`, which DINOv3's MLP uses. Same f32
    /// formula as candle's `gelu_erf`.
    GeluErf = 3,
}

impl Activation {
    /// The activation as candle ops on a whole tensor, in its dtype (the composed references).
    pub fn apply_tensor(self, y: &Tensor) -> Result<Tensor> {
        match self {
            Activation::None => Ok(y.clone()),
            Activation::GeluTanh => y.gelu(),
            Activation::Silu => y.silu(),
            Activation::GeluErf => y.gelu_erf(),
        }
    }

    pub fn apply(self, v: f32) -> f32 {
        match self {
            Activation::None => v,
            Activation::GeluTanh => {
                let inner = 0.797_884_6_f32 * (v + 0.044715 * v * v * v);
                0.5 * v * (1.0 + inner.tanh())
            }
            Activation::Silu => v / (1.0 + (-v).exp()),
            Activation::GeluErf => {
                (candle_core::cpu::erf::erf_f32(v * std::f32::consts::FRAC_1_SQRT_2) + 1.0)
                    * 0.5
                    * v
            }
        }
    }
}

/// The dtype the sparse-conv and attention ops compute in on `device` for `dtype` inputs: f32 on
/// the CPU (the reference); on Metal f32/f16/bf16 as they are; on CUDA the tensor cores' f16 for
/// f16 inputs and bf16 otherwise (f32 inputs are rounded to bf16). Accumulation is f32 always.
pub(crate) fn compute_dtype(device: &candle_core::Device, dtype: DType) -> DType {
    if device.is_cuda() {
        return match dtype {
            DType::F16 => DType::F16,
            _ => DType::BF16,
        };
    }
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 if device.is_metal() => dtype,
        _ => DType::F32,
    }
}

/// Which CUDA kernel computes `attention::varlen_attention_with` (other devices ignore it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKernel {
    /// The default: the wgmma kernel where it runs (a build for sm_90a, a compute capability
    /// 9.0 device, head dim 64 or 128), else the mma.sync kernel. `TRELLIS2_ATTENTION=mma`
    /// pins the mma.sync kernel; `TRELLIS2_ATTENTION=wgmma` (or `fa3`) asks for the wgmma (or
    /// warp-specialised) one wherever the head dim allows (an error where the build or the
    /// device cannot run it).
    Auto,
    /// `kernels/cuda/attention.cu`: mma.sync, any CUDA device the build targets, head dims 16,
    /// 32, 64 and 128.
    Mma,
    /// `kernels/cuda/attention_sm90a.cu`: Hopper wgmma, head dims 64 and 128; needs a build with
    /// `CUDA_COMPUTE_CAP=90` and a compute capability 9.0 device, an error otherwise.
    Wgmma,
    /// The warp-specialised kernel of `kernels/cuda/attention_sm90a.cu` (`flash_attn_ws_*`: a
    /// TMA producer warpgroup feeding two wgmma consumer warpgroups); the same requirements as
    /// `Wgmma`. `TRELLIS2_ATTENTION=fa3` makes `Auto` pick it.
    Fa3,
}

/// Which CUDA kernel computes a submanifold conv (other devices ignore it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvKernel {
    /// The default: the environment variable `TRELLIS2_CONV_KERNEL` (`mma` or `wgmma`) if set,
    /// else the wgmma kernel wherever it can run (a build with `CUDA_COMPUTE_CAP=90`, a compute
    /// capability 9.0 device, Ci a multiple of 8 and 16-byte aligned operands) and the mma.sync
    /// kernel elsewhere. `TRELLIS2_CONV_KERNEL=wgmma` falls back to mma.sync on shapes the
    /// wgmma kernel does not take, and is an error on a build or device that lacks it.
    Auto,
    /// `kernels/cuda/sparse_conv.cu`: mma.sync, any CUDA device the build targets, any shape.
    Mma,
    /// `kernels/cuda/sparse_conv_sm90a.cu`: Hopper wgmma; needs a build with
    /// `CUDA_COMPUTE_CAP=90`, a compute capability 9.0 device, Ci a multiple of 8 and 16-byte
    /// aligned operands, an error otherwise.
    Wgmma,
}

/// Threads per threadgroup of every planned dispatch: 4 simdgroups of 32 (the Metal kernels'
/// threadgroups; CUDA launchers of a shared plan pick their own blocks).
pub const THREADS: u32 = 128;

/// One kernel launch: `threadgroups` × `THREADS` threads, `args` at buffer(0).
#[derive(Clone, Debug, PartialEq)]
pub struct Dispatch<A> {
    pub kernel: String,
    pub threadgroups: [u32; 3],
    pub threads: [u32; 3],
    pub threadgroup_memory: usize,
    pub args: A,
    /// What the launch computes and moves, for the Metal command-buffer budget
    /// (`ops::metal::budget` turns it into estimated GPU seconds).
    pub work: Work,
}

/// The work of a launch as its plan estimates it: floating-point operations (a multiply-add
/// counts 2, padded tiles included since the kernel computes them) and bytes moved to and from
/// device memory.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Work {
    pub flops: f64,
    pub bytes: f64,
}

impl Work {
    /// Memory traffic only.
    pub fn bytes(bytes: f64) -> Self {
        Self { flops: 0.0, bytes }
    }

    pub fn scaled(self, factor: f64) -> Self {
        Self {
            flops: self.flops * factor,
            bytes: self.bytes * factor,
        }
    }
}

impl std::ops::Add for Work {
    type Output = Work;

    fn add(self, other: Work) -> Work {
        Work {
            flops: self.flops + other.flops,
            bytes: self.bytes + other.bytes,
        }
    }
}

/// `DeformIm2ColArgs` in kernels/metal/kargs.h; also the argument of
/// `kernels/cuda/deform_conv.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeformIm2ColArgs {
    pub batch: u32,
    pub channels: u32,
    /// Input height and width.
    pub height: u32,
    pub width: u32,
    /// Kernel height and width.
    pub kh: u32,
    pub kw: u32,
    /// Output (offset/mask) height and width.
    pub out_h: u32,
    pub out_w: u32,
    /// Channel `c` uses offset group `c / (channels / offset_groups)`.
    pub offset_groups: u32,
    pub stride_y: u32,
    pub stride_x: u32,
    pub pad_y: u32,
    pub pad_x: u32,
    pub dil_y: u32,
    pub dil_x: u32,
    /// The band of output rows the column matrix covers.
    pub row_start: u32,
    pub rows: u32,
    /// Column elements `first .. first + count` are written by this dispatch.
    pub first: u32,
    pub count: u32,
}

impl DeformIm2ColArgs {
    /// Elements of the band's column matrix `[batch, channels·kh·kw, rows·out_w]`.
    pub fn columns(&self) -> u64 {
        [
            self.batch,
            self.channels,
            self.kh,
            self.kw,
            self.rows,
            self.out_w,
        ]
        .iter()
        .map(|&v| v as u64)
        .product()
    }
}

/// The children of a subdivision (channel→space, factor 2): built on the parents' device by
/// `subdivide::subdivide`.
#[derive(Debug, Clone)]
pub struct Children {
    /// `[N', 4]` i32 (batch, x, y, z), parent-major then by child index.
    pub rows: Tensor,
    /// `[N']` u32, `parent·8 + s` of each child.
    pub sources: Tensor,
    /// Row range of each batch item with children, in row order.
    pub batches: Vec<(i32, Range<usize>)>,
    /// Exact largest batch, x, y and z of the children (zeros when there are none).
    pub max: [u32; 4],
}

/// `NeighbourArgs` in kernels/metal/kargs.h (kernels/cuda/neighbour_map.cu declares the same).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NeighbourArgs {
    /// Rows of coords; the map has `n_voxels * 27` entries.
    pub n_voxels: u32,
    /// Hash table slots − 1 (slots are a power of two).
    pub capacity_mask: u32,
    /// Key bits of x, y and z (batch above x above y above z).
    pub bits_x: u32,
    pub bits_y: u32,
    pub bits_z: u32,
}

/// The GPU neighbour map's plan (kernels/metal/neighbour_map.metal, kernels/cuda/neighbour_map.cu;
/// one plan for both): the 32-bit key layout, the hash table size and the clear → insert →
/// lookup dispatches.
/// Key bits available: the all-ones word marks an empty slot, so keys stay below 2^31.
pub const KEY_BITS: u32 = 31;

/// The three dispatches (in order) and the table size in slots.
#[derive(Clone, Debug, PartialEq)]
pub struct NeighbourPlan {
    pub capacity: usize,
    pub dispatches: Vec<Dispatch<NeighbourArgs>>,
}

/// Bits that hold every value in `0..=max`.
fn bits(max: u32) -> u32 {
    u32::BITS - max.leading_zeros()
}

fn groups(threads: usize) -> Result<u32> {
    u32::try_from(threads.div_ceil(THREADS as usize))
        .map_err(|_| candle_core::Error::Msg(format!("{threads} threads exceed a u32 grid")))
}

/// The plan for `rows` (`[batch, x, y, z]`, all non-negative, as `CoordSet` guarantees), or
/// `None` when batch, x, y and z need more than [`KEY_BITS`] bits together; then the map is
/// built on the CPU instead (an unsupported case runs elsewhere, it never gives a wrong map).
/// Empty sets plan no dispatch.
pub fn neighbour_plan(rows: &[[i32; 4]]) -> Result<Option<NeighbourPlan>> {
    let mut max = [0u32; 4];
    for (row, c) in rows.iter().enumerate() {
        for a in 0..4 {
            let v = u32::try_from(c[a]).map_err(|_| {
                candle_core::Error::Msg(format!("neighbour map: row {row} {c:?} is negative"))
            })?;
            max[a] = max[a].max(v);
        }
    }
    neighbour_plan_for(rows.len(), max)
}

/// [`neighbour_plan`] for `n` voxels whose largest batch, x, y and z are `max` (what
/// `CoordSet::max` keeps, so the rows need no second pass).
pub fn neighbour_plan_for(n: usize, max: [u32; 4]) -> Result<Option<NeighbourPlan>> {
    if (n as u64) * TAPS as u64 >= u32::MAX as u64 {
        bail!("neighbour map: {n} voxels × 27 taps do not fit the kernel's u32 indices");
    }
    let [bb, bx, by, bz] = max.map(bits);
    if bb + bx + by + bz > KEY_BITS {
        return Ok(None);
    }
    // At most half full: short probe sequences, and an empty slot always ends a probe.
    let capacity = (2 * n).next_power_of_two().max(THREADS as usize);
    if n == 0 {
        return Ok(Some(NeighbourPlan {
            capacity,
            dispatches: Vec::new(),
        }));
    }
    let args = NeighbourArgs {
        n_voxels: n as u32,
        capacity_mask: (capacity - 1) as u32,
        bits_x: bx,
        bits_y: by,
        bits_z: bz,
    };
    let dispatch =
        |kernel: &str, threads: usize, bytes: usize| -> Result<Dispatch<NeighbourArgs>> {
            Ok(Dispatch {
                kernel: kernel.to_string(),
                threadgroups: [groups(threads)?, 1, 1],
                threads: [THREADS, 1, 1],
                threadgroup_memory: 0,
                args,
                work: Work::bytes(bytes as f64),
            })
        };
    // Bytes: the clear writes a key per slot; an insert reads its coordinates and probes a few
    // (key, row) slots; a lookup probes as many and writes one map word.
    const PROBE: usize = 3 * 8;
    Ok(Some(NeighbourPlan {
        capacity,
        dispatches: vec![
            dispatch("neighbour_clear_u32", capacity, capacity * 4)?,
            dispatch("neighbour_insert_i32", n, n * (16 + PROBE))?,
            dispatch(
                "neighbour_lookup_i32",
                n * TAPS,
                n * (16 + TAPS * (PROBE + 4)),
            )?,
        ],
    }))
}

/// The conv order's radix-sort plan, shared by `kernels/cuda/conv_order.cu` and
/// `kernels/metal/conv_order.metal` (`ops::metal::conv_order_plan`): key bits, passes, and the
/// blocks (threadgroups) each pass runs with their contiguous runs of items.
pub mod conv_sort {
    /// Key bits a pass, and digits (`RADIX_BITS`, `RADIX` in the kernels).
    pub const RADIX_BITS: u32 = 8;
    pub const RADIX: usize = 1 << RADIX_BITS;
    /// Bits of a neighbour mask: the low bits of the key (`MASK_BITS`).
    pub const MASK_BITS: u32 = 27;
    /// Threads per block (threadgroup) of the mask, histogram and scatter kernels: one per digit.
    pub const SORT_THREADS: usize = 256;
    /// At least this many items a block, so small sets do not pay for many near-empty blocks.
    pub const MIN_ITEMS_PER_BLOCK: usize = 4 * SORT_THREADS;

    /// How a set of `n ≥ 1` voxels is sorted in windows of `window ≥ 1`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct SortPlan {
        pub passes: u32,
        pub blocks: usize,
        pub items_per_block: usize,
    }

    /// The plan for `n ≥ 1` voxels in windows of `window ≥ 1`, with at most `max_blocks` blocks a
    /// pass (enough to fill the GPU, few enough that the one-block scan of the `RADIX × blocks`
    /// histogram stays short).
    pub fn sort_plan(n: usize, window: usize, max_blocks: usize) -> SortPlan {
        // Window ids 0 ..= (n − 1) / window take this many bits above the mask.
        let window_bits = usize::BITS - ((n - 1) / window).leading_zeros();
        let passes = (MASK_BITS + window_bits).div_ceil(RADIX_BITS);
        let items_per_block = n
            .div_ceil(max_blocks)
            .next_multiple_of(SORT_THREADS)
            .max(MIN_ITEMS_PER_BLOCK);
        SortPlan {
            passes,
            blocks: n.div_ceil(items_per_block),
            items_per_block,
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn plans_add_window_bits_above_the_mask() {
            // One window: the 27 mask bits in four passes.
            assert_eq!(sort_plan(1, 1, 528).passes, 4);
            assert_eq!(sort_plan(1_200_000, 1_200_000, 528).passes, 4);
            // 10 windows (4 bits): 31 bits; 32 windows: 32 bits; 33: five passes.
            assert_eq!(sort_plan(1_200_000, 131_072, 528).passes, 4);
            assert_eq!(sort_plan(32 << 16, 1 << 16, 528).passes, 4);
            assert_eq!(sort_plan((32 << 16) + 1, 1 << 16, 528).passes, 5);
            // Windows of one voxel over 8 M voxels: 27 + 23 bits.
            assert_eq!(sort_plan(8 << 20, 1, 528).passes, 7);
        }

        #[test]
        fn plans_cover_every_item_with_at_most_max_blocks() {
            for max_blocks in [128, 528] {
                for n in [1, 255, 1024, 1025, 300_000, 1_200_000, 8 << 20, 100_000_000] {
                    let p = sort_plan(n, n, max_blocks);
                    assert!(p.blocks <= max_blocks && p.blocks >= 1, "{n}: {p:?}");
                    assert!(p.blocks * p.items_per_block >= n, "{n}: {p:?}");
                    assert!((p.blocks - 1) * p.items_per_block < n, "{n}: {p:?}");
                    assert_eq!(p.items_per_block % SORT_THREADS, 0);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_pack_into_31_bits_or_the_plan_declines() {
        let p = neighbour_plan(&[[0, 0, 0, 0], [1, 1023, 5, 7]])
            .unwrap()
            .unwrap();
        let a = p.dispatches[0].args;
        assert_eq!((a.bits_x, a.bits_y, a.bits_z), (10, 3, 3));
        assert_eq!(p.capacity, 128);
        assert_eq!(p.dispatches[2].threadgroups, [1, 1, 1]);
        // 4 batch items at 1024³ need 2 + 30 bits.
        assert!(neighbour_plan(&[[3, 1023, 1023, 1023]]).unwrap().is_none());
        assert!(neighbour_plan(&[]).unwrap().unwrap().dispatches.is_empty());
    }
}
