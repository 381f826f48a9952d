//! Submanifold 3×3×3 convolution over a neighbour map (docs/MODEL.md §8, FlexGEMM `SubMConv3d`):
//! `out[n] = bias + Σ_k W[:, k, :] · in[nbr(n, k)]`, absent neighbours contributing zero.
//!
//! Layouts: feats `[T,Ci]`; weight `[Co,27,Ci]` (the released `[Co,3,3,3,Ci]` flattened; tap
//! `k = kx·9 + ky·3 + kz` reads offset `(kx−1, ky−1, kz−1)` on x, y, z); neighbour map `[T,27]` u32
//! with [`ABSENT`] for a missing neighbour.
//!
//! The CPU forward is the reference every GPU kernel is tested against. It tiles the output
//! voxels; per tile and tap it gathers only the rows whose neighbour exists, multiplies them with
//! that tap's `[Ci,Co]` weight slice (one small GEMM, f32 accumulation) and adds the result into
//! the tile, so absent pairs cost nothing and no full-size per-tap temporary is ever built. The
//! bias is added to the f32 sums before the single rounding to the output dtype, as the CUDA and
//! Metal kernels' epilogues do.

use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::ops::storage::{cast, contiguous};
pub(crate) use crate::ops::vocab::compute_dtype;
pub use crate::ops::vocab::{ConvKernel, ABSENT, TAPS};

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "metal")]
mod metal;

/// A neighbour map as the conv reads it: the `[T,27]` u32 tensor and, for the GPU kernels, the
/// voxel order its tiles should follow. `sparse::NeighbourMap` implements it (with its cached
/// orders); ops take this view so that they never depend on the sparse data structures.
pub trait ConvNeighbours {
    /// The `[T,27]` u32 neighbour map.
    fn tensor(&self) -> &Tensor;

    /// The voxel order (a permutation `[T]` u32 on the map's device) for feature rows of
    /// `row_bytes` bytes, or `None` for the voxels' own order.
    fn conv_order(&self, row_bytes: usize) -> Result<Option<Tensor>>;
}

/// The op; `order` (CUDA and Metal) is a permutation of the voxels, `[T]` u32, that the kernel's
/// output tiles follow ([`ConvNeighbours::conv_order`]); it changes which voxels share a tile, never
/// a voxel's result. `bias` (`[Co]` f32 on the feats' device; required on Metal) is added in the
/// epilogue. `f32_out` (CUDA): write f32 instead of the operands' bf16/f16. `kernel` (CUDA):
/// which kernel computes it.
struct SubmConv3d {
    #[cfg_attr(not(any(feature = "cuda", feature = "metal")), allow(dead_code))]
    order: Option<Tensor>,
    bias: Option<Tensor>,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    f32_out: bool,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    kernel: ConvKernel,
}

/// Whether `kernel` can run on `device`: `Wgmma` only on a CUDA device of compute capability
/// 9.0 with a build for `CUDA_COMPUTE_CAP=90` (and then for Ci a multiple of 8); the others
/// everywhere.
pub fn conv_kernel_available(kernel: ConvKernel, device: &candle_core::Device) -> Result<bool> {
    match (kernel, device) {
        #[cfg(feature = "cuda")]
        (ConvKernel::Wgmma, candle_core::Device::Cuda(dev)) => cuda::wgmma_conv_available(dev),
        (ConvKernel::Wgmma, _) => Ok(false),
        _ => Ok(true),
    }
}

impl CustomOp3 for SubmConv3d {
    fn name(&self) -> &'static str {
        "submanifold-conv3d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(feats), CpuStorage::F32(weight), CpuStorage::U32(map)) = (s1, s2, s3)
        else {
            bail!("submanifold_conv3d: the CPU reference takes f32 feats and weight, u32 map");
        };
        let op = "submanifold_conv3d";
        let feats = contiguous(feats, l1, op, "feats")?;
        let weight = contiguous(weight, l2, op, "weight")?;
        let map = contiguous(map, l3, op, "neighbour map")?;
        let (n, ci) = l1.shape().dims2()?;
        let co = l2.shape().dims()[0];
        let mut out = conv_cpu(feats, weight, map, n, ci, co);
        if let Some(b) = &self.bias {
            let b = b.to_vec1::<f32>()?;
            if b.len() != co {
                bail!("{op}: a bias of {} for {co} output channels", b.len());
            }
            if co > 0 {
                out.par_chunks_mut(co).for_each(|row| {
                    for (o, b) in row.iter_mut().zip(&b) {
                        *o += b;
                    }
                });
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((n, co))))
    }

    /// kernels/metal/sparse_conv.metal, tested against `cpu_fwd` in tests/metal_emu.rs; the
    /// kernel always adds a bias (`conv` passes zeros for none).
    #[cfg(feature = "metal")]
    fn metal_fwd(
        &self,
        s1: &candle_core::MetalStorage,
        l1: &Layout,
        s2: &candle_core::MetalStorage,
        l2: &Layout,
        s3: &candle_core::MetalStorage,
        l3: &Layout,
    ) -> Result<(candle_core::MetalStorage, Shape)> {
        let Some(bias) = &self.bias else {
            bail!("submanifold_conv3d (metal): the kernel takes a [Co] f32 bias (zeros for none)");
        };
        let (bs, bl) = bias.storage_and_layout();
        let candle_core::Storage::Metal(bs) = &*bs else {
            bail!("submanifold_conv3d (metal): the bias must be on the feats' Metal device");
        };
        let order = self.order.as_ref().map(|o| o.storage_and_layout());
        let order = match &order {
            Some((os, ol)) => {
                let candle_core::Storage::Metal(os) = &**os else {
                    bail!(
                        "submanifold_conv3d (metal): the voxel order must be on the feats' device"
                    );
                };
                Some((os, *ol))
            }
            None => None,
        };
        metal::forward((s1, l1), (s2, l2), (s3, l3), (bs, bl), order)
    }

    /// Tensor-core implicit GEMM (`kernels/cuda/sparse_conv.cu`, or its Hopper wgmma main loop
    /// `kernels/cuda/sparse_conv_sm90a.cu`: see [`ConvKernel`]): bf16 or f16 feats and weight,
    /// fp32 accumulation plus the f32 bias, output in the feats' dtype or f32.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::subm_conv3d(
            s1,
            l1,
            s2,
            l2,
            s3,
            l3,
            self.order.as_ref(),
            self.bias.as_ref(),
            self.f32_out,
            self.kernel,
        )
    }
}

/// Output rows per tile: at least 128 so that each tap's `[Ci,Co]` weight slice is reused by
/// many gathered rows (32-row tiles ran 2.5× slower at 1024 channels), small enough that the
/// gathered rows and the output tile stay in L2.
fn tile_rows(ci: usize, co: usize) -> usize {
    (32_768 / (ci + co).max(1)).clamp(128, 256)
}

#[derive(Default)]
struct Scratch {
    rows: Vec<usize>,
    gathered: Vec<f32>,
    product: Vec<f32>,
}

fn conv_cpu(
    feats: &[f32],
    weight: &[f32],
    map: &[u32],
    n: usize,
    ci: usize,
    co: usize,
) -> Vec<f32> {
    let mut out = vec![0f32; n * co];
    if n == 0 || co == 0 || ci == 0 {
        return out;
    }
    // Per-tap `[Ci,Co]` slices, row-major, so each GEMM reads its right operand contiguously.
    let mut taps = vec![0f32; TAPS * ci * co];
    for o in 0..co {
        for k in 0..TAPS {
            for i in 0..ci {
                taps[(k * ci + i) * co + o] = weight[(o * TAPS + k) * ci + i];
            }
        }
    }
    let tile = tile_rows(ci, co);
    out.par_chunks_mut(tile * co).enumerate().for_each_init(
        Scratch::default,
        |s, (t, out_tile)| {
            let first = t * tile;
            let rows = out_tile.len() / co;
            for k in 0..TAPS {
                s.rows.clear();
                s.gathered.clear();
                for r in 0..rows {
                    let src = map[(first + r) * TAPS + k];
                    if src != ABSENT {
                        let src = src as usize;
                        s.rows.push(r);
                        s.gathered
                            .extend_from_slice(&feats[src * ci..(src + 1) * ci]);
                    }
                }
                let m = s.rows.len();
                if m == 0 {
                    continue;
                }
                let w = &taps[k * ci * co..(k + 1) * ci * co];
                if m == rows {
                    // Every voxel of the tile has this neighbour: accumulate in place.
                    matmul_acc(out_tile, &s.gathered, w, m, ci, co, true);
                } else {
                    s.product.resize(m * co, 0.0);
                    matmul_acc(&mut s.product, &s.gathered, w, m, ci, co, false);
                    for (j, &r) in s.rows.iter().enumerate() {
                        let dst = &mut out_tile[r * co..(r + 1) * co];
                        for (d, p) in dst.iter_mut().zip(&s.product[j * co..(j + 1) * co]) {
                            *d += p;
                        }
                    }
                }
            }
        },
    );
    out
}

/// `dst[m,n] (+)= a[m,k] · b[k,n]`, all row-major and contiguous, f32 accumulation.
fn matmul_acc(dst: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize, add: bool) {
    assert!(dst.len() >= m * n && a.len() >= m * k && b.len() >= k * n);
    // SAFETY: the assertion above keeps every access of the row-major m×k, k×n and m×n operands
    // (unit column stride, row strides k, n, n) inside the three slices; `dst` is exclusively
    // borrowed and does not overlap the inputs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            add,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            if add { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Checks the operands and returns `(T, Ci, Co)`; the weight may be `[Co,27,Ci]` or
/// `[Co,3,3,3,Ci]`.
fn check(
    feats: &Tensor,
    neighbours: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<(usize, usize, usize)> {
    let (n, ci) = match feats.dims() {
        &[n, c] => (n, c),
        d => bail!("submanifold_conv3d: feats must be [T, Ci], got shape {d:?}"),
    };
    let co = match weight.dims() {
        &[co, TAPS, c] if c == ci => co,
        &[co, 3, 3, 3, c] if c == ci => co,
        d => bail!(
            "submanifold_conv3d: weight must be [Co, 27, {ci}] or [Co, 3, 3, 3, {ci}] for {ci} \
             input channels, got shape {d:?}"
        ),
    };
    if neighbours.dims() != [n, TAPS] || neighbours.dtype() != DType::U32 {
        bail!(
            "submanifold_conv3d: neighbour map must be u32 [{n}, 27] for {n} voxels, got {:?} {:?}",
            neighbours.dtype(),
            neighbours.dims()
        );
    }
    if let Some(b) = bias {
        if b.dims() != [co] {
            bail!(
                "submanifold_conv3d: bias must be [{co}] for {co} output channels, got {:?}",
                b.dims()
            );
        }
    }
    Ok((n, ci, co))
}

/// A conv layer's weights prepared once for the kernel: the weight `[Co,27,Ci]` in its operand
/// dtype and the bias `[Co]` in f32, so no call casts them.
///
/// Which operand dtype: the one the conv computes in on the weight's device for activations of
/// the dtype the layer is declared to run with ([`compute_dtype`]): bf16 or f16 on CUDA, the
/// activations' own dtype on Metal. On the CPU the weight stays in its given dtype: the reference
/// converts to f32 per call, and a resident f32 copy would double an f16 checkpoint's memory.
/// The bias is f32 everywhere, as every backend's epilogue adds it in f32.
/// Activations of another dtype still compute correctly; the weight is then converted per call.
#[derive(Debug, Clone)]
pub struct ConvWeights {
    weight: Tensor,
    bias: Tensor,
}

impl ConvWeights {
    /// `weight` `[Co,27,Ci]` or `[Co,3,3,3,Ci]` and `bias` `[Co]` of any float dtype, for
    /// activations of dtype `activations` on the weight's device.
    pub fn new(weight: &Tensor, bias: &Tensor, activations: DType) -> Result<Self> {
        let (co, ci) = match weight.dims() {
            &[co, TAPS, ci] | &[co, 3, 3, 3, ci] => (co, ci),
            d => bail!(
                "submanifold_conv3d: weight must be [Co, 27, Ci] or [Co, 3, 3, 3, Ci], got shape \
                 {d:?}"
            ),
        };
        if bias.dims() != [co] {
            bail!(
                "submanifold_conv3d: bias must be [{co}] for {co} output channels, got {:?}",
                bias.dims()
            );
        }
        let device = weight.device();
        let operands = if device.is_cpu() {
            weight.dtype()
        } else {
            compute_dtype(device, activations)
        };
        Ok(Self {
            weight: weight
                .to_dtype(operands)?
                .contiguous()?
                .reshape((co, TAPS, ci))?,
            bias: bias.to_dtype(DType::F32)?.contiguous()?,
        })
    }

    pub fn in_channels(&self) -> usize {
        self.weight.dims()[2]
    }

    pub fn out_channels(&self) -> usize {
        self.weight.dims()[0]
    }

    /// [`submanifold_conv3d`] of `feats` on the voxels of `neighbours` with these weights.
    pub fn conv(&self, feats: &Tensor, neighbours: &Tensor) -> Result<Tensor> {
        submanifold_conv3d(feats, neighbours, &self.weight, Some(&self.bias))
    }

    /// [`submanifold_conv3d_children`] of `feats` on the voxels of `map` with these weights
    /// (`8C'` outputs): each child's `C'` channels.
    pub fn conv_children(
        &self,
        feats: &Tensor,
        map: &impl ConvNeighbours,
        sources: &Tensor,
    ) -> Result<Tensor> {
        submanifold_conv3d_children(feats, map, sources, &self.weight, Some(&self.bias))
    }

    /// [`submanifold_conv3d_map`] of `feats` on the voxels of `map` with these weights.
    pub fn conv_map(&self, feats: &Tensor, map: &impl ConvNeighbours) -> Result<Tensor> {
        submanifold_conv3d_map(feats, map, &self.weight, Some(&self.bias))
    }
}

/// Submanifold 3×3×3 conv of `feats` `[T,Ci]` on the voxels of `neighbours` `[T,27]`, weight
/// `[Co,27,Ci]` (or `[Co,3,3,3,Ci]`), optional bias `[Co]` → `[T,Co]` in the feats' dtype.
/// CPU: f32 throughout. CUDA: bf16/f16 operands (see [`compute_dtype`]), fp32 accumulation, the
/// bias added in f32 before the one rounding to the output dtype (f32 outputs are written as
/// f32 by the kernel).
pub fn submanifold_conv3d(
    feats: &Tensor,
    neighbours: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    conv(ConvKernel::Auto, feats, neighbours, None, weight, bias)
}

/// [`submanifold_conv3d`] with the CUDA kernel chosen by the caller (tests and benchmarks).
pub fn submanifold_conv3d_with(
    kernel: ConvKernel,
    feats: &Tensor,
    neighbours: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    conv(kernel, feats, neighbours, None, weight, bias)
}

/// [`submanifold_conv3d`] on the voxels of `map`, whose cached voxel order (GPUs, large sets:
/// [`ConvNeighbours::conv_order`]) groups voxels with the same neighbours into the kernel's tiles
/// so that each tile walks fewer taps. The result is the same as without the order (absent taps
/// only ever add exact zeros), up to the sign of zero outputs.
pub fn submanifold_conv3d_map(
    feats: &Tensor,
    map: &impl ConvNeighbours,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let (_, ci, _) = check(feats, map.tensor(), weight, bias)?;
    let order = if feats.device().is_cuda() || feats.device().is_metal() {
        let row_bytes = ci * compute_dtype(feats.device(), feats.dtype()).size_in_bytes();
        map.conv_order(row_bytes)?
    } else {
        None
    };
    conv(ConvKernel::Auto, feats, map.tensor(), order, weight, bias)
}

/// [`submanifold_conv3d_map`] in a given voxel `order` (a permutation `[T]` u32 on the feats'
/// device, e.g. `NeighbourMap::sorted_order`) whatever the sorting policy: for benchmarks and
/// tests of the sorted kernel. The CPU ignores the order.
pub fn submanifold_conv3d_ordered(
    feats: &Tensor,
    map: &impl ConvNeighbours,
    order: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    submanifold_conv3d_ordered_with(ConvKernel::Auto, feats, map, order, weight, bias)
}

/// [`submanifold_conv3d_ordered`] with the CUDA kernel chosen by the caller (tests and
/// benchmarks).
pub fn submanifold_conv3d_ordered_with(
    kernel: ConvKernel,
    feats: &Tensor,
    map: &impl ConvNeighbours,
    order: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let order = (!feats.device().is_cpu()).then(|| order.clone());
    conv(kernel, feats, map.tensor(), order, weight, bias)
}

fn conv(
    kernel: ConvKernel,
    feats: &Tensor,
    neighbours: &Tensor,
    order: Option<Tensor>,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let (n, ci, co) = check(feats, neighbours, weight, bias)?;
    if let Some(o) = &order {
        if o.dims() != [n] || o.dtype() != DType::U32 || !o.device().same_device(feats.device()) {
            bail!(
                "submanifold_conv3d: the voxel order must be u32 [{n}] on the feats' device, got \
                 {:?} {:?}",
                o.dtype(),
                o.dims()
            );
        }
    }
    let dtype = feats.dtype();
    let device = feats.device();
    let compute = compute_dtype(device, dtype);
    let weight = weight
        .reshape((co, TAPS, ci))?
        .to_dtype(compute)?
        .contiguous()?;
    // Every backend adds the bias in f32 in its epilogue; Metal's kernel always reads one.
    let bias = match bias {
        Some(b) => Some(b.to_dtype(DType::F32)?.contiguous()?),
        None if device.is_metal() => Some(Tensor::zeros(co, DType::F32, device)?),
        None => None,
    };
    let op = SubmConv3d {
        order,
        bias,
        // The CUDA kernel writes f32 itself rather than bf16 and a cast.
        f32_out: device.is_cuda() && dtype == DType::F32,
        kernel,
    };
    let out = cast(feats, compute)?.contiguous()?.apply_op3_no_bwd(
        &weight,
        &neighbours.contiguous()?,
        &op,
    )?;
    cast(&out, dtype)
}

/// Whether the C2S children conv ([`submanifold_conv3d_children`]) computes a C2S block's first
/// conv of `feats` `[P,Ci]` to `c_child` channels per child, under `TRELLIS2_C2S_CONV`: only
/// where it runs its own kernel (CUDA, wgmma build and device, f16/bf16 feats, the decoders'
/// dtype, Ci a multiple of 8, 16-byte aligned); elsewhere the parents conv, whose results it
/// equals up to rounding.
pub fn children_conv_applies(feats: &Tensor, c_child: usize) -> Result<bool> {
    use crate::ops::tuning::{C2sConv, Tuning};
    let wanted = match Tuning::current().c2s_conv {
        C2sConv::Parents => false,
        C2sConv::Children => true,
        C2sConv::Wide => c_child >= 128,
    };
    children_kernel_runs(feats).map(|runs| wanted && runs)
}

/// Whether [`submanifold_conv3d_children`] runs its own kernel for `feats` (else it computes the
/// parents conv and picks the children's blocks).
fn children_kernel_runs(feats: &Tensor) -> Result<bool> {
    let ci = feats.dims().last().copied().unwrap_or(0);
    if !matches!(feats.dtype(), DType::F16 | DType::BF16)
        || !ci.is_multiple_of(8)
        || !feats.layout().start_offset().is_multiple_of(8)
    {
        return Ok(false);
    }
    match feats.device() {
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(dev) => cuda::children_conv_available(dev),
        _ => Ok(false),
    }
}

/// The first conv of a C2S block on the children only: `feats` `[P,Ci]` on the parents (the
/// voxels of `map`), weight `[8C',27,Ci]` (or `[8C',3,3,3,Ci]`), bias `[8C']`, `sources` `[N']`
/// u32 (`parent·8 + s` of each child, `Subdivision::sources`) → `[N',C']`: child i's row is
/// channel block s of its parent's conv output, i.e. the conv of the parent's neighbourhood with
/// the weight rows `s·C' .. (s+1)·C'`. On CUDA with the wgmma kernel (f16/bf16, Ci a multiple of
/// 8) only those rows are computed (`kernels/cuda/sparse_conv_sm90a.cu`); elsewhere, and as the
/// CPU reference, the parents conv followed by the selection.
pub fn submanifold_conv3d_children(
    feats: &Tensor,
    map: &impl ConvNeighbours,
    sources: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let (p, ci, co8) = check(feats, map.tensor(), weight, bias)?;
    if co8 % 8 != 0 {
        bail!("c2s children conv: {co8} output channels, not a multiple of 8");
    }
    if sources.dtype() != DType::U32 || sources.rank() != 1 {
        bail!(
            "c2s children conv: sources must be u32 [N'], got {:?} {:?}",
            sources.dtype(),
            sources.dims()
        );
    }
    #[cfg(feature = "cuda")]
    if children_kernel_runs(feats)? {
        let row_bytes = ci * feats.dtype().size_in_bytes();
        let order = map.conv_order(row_bytes)?;
        let weight = weight
            .reshape((co8, TAPS, ci))?
            .to_dtype(feats.dtype())?
            .contiguous()?;
        let bias = match bias {
            Some(b) => b.to_dtype(DType::F32)?.contiguous()?,
            None => Tensor::zeros(co8, DType::F32, feats.device())?,
        };
        return cuda::subm_conv3d_children(
            &feats.contiguous()?,
            &weight,
            &map.tensor().contiguous()?,
            order.as_ref(),
            &sources.contiguous()?,
            &bias,
        );
    }
    let _ = ci;
    let parents = submanifold_conv3d_map(feats, map, weight, bias)?;
    parents
        .reshape((p * 8, co8 / 8))?
        .index_select(&sources.contiguous()?, 0)
}

/// The plain definition, one output element at a time with f64 sums: the test reference for
/// [`submanifold_conv3d`].
pub fn submanifold_conv3d_slow(
    feats: &Tensor,
    neighbours: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let (n, ci, co) = check(feats, neighbours, weight, bias)?;
    let f = feats
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let w = weight
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let map = neighbours.flatten_all()?.to_vec1::<u32>()?;
    let b = match bias {
        Some(b) => b.to_dtype(DType::F32)?.to_vec1::<f32>()?,
        None => vec![0.0; co],
    };
    let mut out = vec![0f32; n * co];
    for v in 0..n {
        for o in 0..co {
            let mut acc = b[o] as f64;
            for k in 0..TAPS {
                let src = map[v * TAPS + k];
                if src == ABSENT {
                    continue;
                }
                for i in 0..ci {
                    acc += w[(o * TAPS + k) * ci + i] as f64 * f[src as usize * ci + i] as f64;
                }
            }
            out[v * co + o] = acc as f32;
        }
    }
    Tensor::from_vec(out, (n, co), feats.device())?.to_dtype(feats.dtype())
}
