//! Variable-length multi-head attention, flash style: `softmax(q·kᵀ·scale)·v` per sequence and
//! head, computed tile by tile with an online softmax, so no N×N score matrix ever exists
//! (49 152 tokens would need 9.6 GB per head). This CPU implementation is the reference the
//! Metal and CUDA kernels are tested against.
//!
//! Layout: `q [Nq, H, D]`, `k, v [Nk, H, D]` (token-major, heads, head dim), sequences packed
//! back to back and described by cumulative offsets (`cu_seqlens` in flash-attn terms):
//! sequence `b` owns query rows `q_offsets[b]..q_offsets[b+1]` and key rows
//! `kv_offsets[b]..kv_offsets[b+1]`. Self-attention passes the same offsets twice;
//! cross-attention to per-sample image tokens passes the condition's offsets for k/v.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

pub use crate::ops::vocab::AttentionKernel;

use crate::ops::storage::{cast, contiguous, token_stride};
use crate::ops::vocab::compute_dtype;

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "metal")]
mod metal;

/// Query rows handled together; keys are streamed in tiles of the same size.
const TILE: usize = 64;

struct VarlenAttention {
    q_offsets: Vec<usize>,
    kv_offsets: Vec<usize>,
    scale: f32,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    kernel: AttentionKernel,
}

/// Whether `kernel` can run on `device`: `Wgmma` and `Fa3` only on a CUDA device of compute
/// capability 9.0 with a build for `CUDA_COMPUTE_CAP=90`; the others everywhere.
pub fn attention_kernel_available(
    kernel: AttentionKernel,
    device: &candle_core::Device,
) -> candle_core::Result<bool> {
    match (kernel, device) {
        #[cfg(feature = "cuda")]
        (AttentionKernel::Wgmma | AttentionKernel::Fa3, candle_core::Device::Cuda(dev)) => {
            cuda::wgmma_attention_available(dev)
        }
        (AttentionKernel::Wgmma | AttentionKernel::Fa3, _) => Ok(false),
        _ => Ok(true),
    }
}

/// Validates shapes and offsets; returns (heads, head_dim).
fn check(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    q_offsets: &[usize],
    kv_offsets: &[usize],
) -> candle_core::Result<(usize, usize)> {
    let (nq, h, d) = q.dims3().map_err(|_| {
        candle_core::Error::Msg(format!(
            "attention: q must be [N, H, D], got {:?}",
            q.dims()
        ))
    })?;
    let (nk, hk, dk) = k.dims3().map_err(|_| {
        candle_core::Error::Msg(format!(
            "attention: k must be [N, H, D], got {:?}",
            k.dims()
        ))
    })?;
    if (hk, dk) != (h, d) || v.dims() != k.dims() {
        candle_core::bail!(
            "attention: q {:?}, k {:?} and v {:?} disagree on heads / head dim",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if q_offsets.len() != kv_offsets.len() || q_offsets.len() < 2 {
        candle_core::bail!(
            "attention: need B+1 offsets for queries and keys, got {} and {}",
            q_offsets.len(),
            kv_offsets.len()
        );
    }
    for (name, offsets, n) in [("query", q_offsets, nq), ("key", kv_offsets, nk)] {
        if offsets[0] != 0 || offsets[offsets.len() - 1] != n {
            candle_core::bail!(
                "attention: {name} offsets {:?} must run from 0 to {n}",
                offsets
            );
        }
        if offsets.windows(2).any(|w| w[0] > w[1]) {
            candle_core::bail!("attention: {name} offsets {:?} must not decrease", offsets);
        }
    }
    for b in 0..q_offsets.len() - 1 {
        if q_offsets[b + 1] > q_offsets[b] && kv_offsets[b + 1] == kv_offsets[b] {
            candle_core::bail!("attention: sequence {b} has queries but no keys");
        }
    }
    Ok((h, d))
}

/// Attention over packed variable-length sequences (see the module docs). Inputs may be
/// f32, f16 or bf16; the computation (scores, softmax, accumulation) is f32 and the output
/// has the dtype of `q`. On CUDA the q·kᵀ and p·v products take bf16 operands (f16 for f16
/// inputs; f32 inputs are rounded to bf16) on the tensor cores, head dims 16, 32, 64 and 128.
pub fn varlen_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    q_offsets: &[usize],
    kv_offsets: &[usize],
    scale: f32,
) -> candle_core::Result<Tensor> {
    varlen_attention_with(AttentionKernel::Auto, q, k, v, q_offsets, kv_offsets, scale)
}

/// [`varlen_attention`] with the CUDA kernel chosen by the caller (tests and benchmarks).
pub fn varlen_attention_with(
    kernel: AttentionKernel,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    q_offsets: &[usize],
    kv_offsets: &[usize],
    scale: f32,
) -> candle_core::Result<Tensor> {
    check(q, k, v, q_offsets, kv_offsets)?;
    let dtype = q.dtype();
    let compute = compute_dtype(q.device(), dtype);
    // CUDA reads token rows at any 16-byte-aligned stride, so views of a fused projection
    // (v of `[N, 3, H, D]`) go in uncopied; the other backends take contiguous operands.
    let prep = |t: &Tensor| -> candle_core::Result<Tensor> {
        let t = cast(t, compute)?;
        let strided_ok = t.device().is_cuda()
            && token_stride(t.layout())
                .is_some_and(|s| s % 8 == 0 && t.layout().start_offset() % 8 == 0);
        if strided_ok {
            Ok(t)
        } else {
            t.contiguous()
        }
    };
    let op = VarlenAttention {
        q_offsets: q_offsets.to_vec(),
        kv_offsets: kv_offsets.to_vec(),
        scale,
        kernel,
    };
    let out = prep(q)?.apply_op3_no_bwd(&prep(k)?, &prep(v)?, &op)?;
    cast(&out, dtype)
}

/// Plain reference: one full score matrix per sequence and head (small inputs only; tests).
pub fn varlen_attention_slow(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    q_offsets: &[usize],
    kv_offsets: &[usize],
    scale: f32,
) -> candle_core::Result<Tensor> {
    check(q, k, v, q_offsets, kv_offsets)?;
    let mut parts = Vec::new();
    for b in 0..q_offsets.len() - 1 {
        let (q0, q1) = (q_offsets[b], q_offsets[b + 1]);
        let (k0, k1) = (kv_offsets[b], kv_offsets[b + 1]);
        if q1 == q0 {
            continue;
        }
        // [H, n, D]
        let qb = q.narrow(0, q0, q1 - q0)?.transpose(0, 1)?.contiguous()?;
        let kb = k.narrow(0, k0, k1 - k0)?.transpose(0, 1)?.contiguous()?;
        let vb = v.narrow(0, k0, k1 - k0)?.transpose(0, 1)?.contiguous()?;
        let scores = (qb.matmul(&kb.t()?)? * scale as f64)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        parts.push(probs.matmul(&vb)?.transpose(0, 1)?);
    }
    if parts.is_empty() {
        return q.zeros_like();
    }
    Tensor::cat(&parts, 0)?.contiguous()
}

impl CustomOp3 for VarlenAttention {
    fn name(&self) -> &'static str {
        "varlen-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) = (qs, ks, vs) else {
            candle_core::bail!("varlen-attention: cpu kernel expects f32");
        };
        let op = "varlen-attention";
        let q = contiguous(q, ql, op, "q")?;
        let k = contiguous(k, kl, op, "k")?;
        let v = contiguous(v, vl, op, "v")?;
        let dims = ql.shape().dims();
        let (nq, heads, d) = (dims[0], dims[1], dims[2]);
        let mut out = vec![0f32; nq * heads * d];
        let jobs = self.jobs(heads);
        // Each job writes a disjoint set of (row, head) slices, computed into a private buffer
        // and copied out afterwards so the parallel part needs no shared mutable state.
        let results: Vec<(usize, usize, usize, Vec<f32>)> = jobs
            .par_iter()
            .map(|&(b, h, r0, r1)| {
                let (k0, k1) = (self.kv_offsets[b], self.kv_offsets[b + 1]);
                let tile = attend_tile(q, k, v, heads, d, h, r0, r1, k0, k1, self.scale);
                (h, r0, r1, tile)
            })
            .collect();
        for (h, r0, r1, tile) in results {
            for (i, row) in (r0..r1).enumerate() {
                let dst = (row * heads + h) * d;
                out[dst..dst + d].copy_from_slice(&tile[i * d..(i + 1) * d]);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from_dims(&[nq, heads, d])))
    }

    /// kernels/metal/attention.metal, tested against `cpu_fwd` in tests/metal_emu.rs.
    #[cfg(feature = "metal")]
    fn metal_fwd(
        &self,
        qs: &candle_core::MetalStorage,
        ql: &Layout,
        ks: &candle_core::MetalStorage,
        kl: &Layout,
        vs: &candle_core::MetalStorage,
        vl: &Layout,
    ) -> candle_core::Result<(candle_core::MetalStorage, Shape)> {
        let offsets = metal::Offsets {
            q: &self.q_offsets,
            kv: &self.kv_offsets,
            scale: self.scale,
        };
        metal::forward((qs, ql), (ks, kl), (vs, vl), &offsets)
    }

    /// Flash-attention kernel (`kernels/cuda/attention.cu`, or `attention_sm90a.cu` as
    /// `self.kernel` selects): bf16 or f16 q, k, v; fp32 scores, softmax and accumulation;
    /// output in q's dtype.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        qs: &candle_core::CudaStorage,
        ql: &Layout,
        ks: &candle_core::CudaStorage,
        kl: &Layout,
        vs: &candle_core::CudaStorage,
        vl: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::varlen_attention(
            qs,
            ql,
            ks,
            kl,
            vs,
            vl,
            &self.q_offsets,
            &self.kv_offsets,
            self.scale,
            self.kernel,
        )
    }
}

impl VarlenAttention {
    /// (sequence, head, first query row, end row) for every query tile.
    fn jobs(&self, heads: usize) -> Vec<(usize, usize, usize, usize)> {
        let mut jobs = Vec::new();
        for b in 0..self.q_offsets.len() - 1 {
            let (q0, q1) = (self.q_offsets[b], self.q_offsets[b + 1]);
            for h in 0..heads {
                let mut r = q0;
                while r < q1 {
                    let end = (r + TILE).min(q1);
                    jobs.push((b, h, r, end));
                    r = end;
                }
            }
        }
        jobs
    }
}

/// Keys streamed per step of the online softmax.
const KV_TILE: usize = 256;

/// Output rows `r0..r1` of head `h` against keys `k0..k1`, with the online softmax:
/// per row keep the running maximum `m`, the running sum `l` of `exp(s − m)` and the
/// unnormalised output; rescale them by `exp(m_old − m_new)` whenever the maximum grows.
/// Both products (`q·kᵀ` and `p·v`) are small GEMMs on strided views of the packed inputs.
#[allow(clippy::too_many_arguments)]
fn attend_tile(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    heads: usize,
    d: usize,
    h: usize,
    r0: usize,
    r1: usize,
    k0: usize,
    k1: usize,
    scale: f32,
) -> Vec<f32> {
    let rows = r1 - r0;
    let token_stride = heads * d;
    // The query tile, contiguous and pre-multiplied by the softmax scale.
    let mut q_tile = vec![0f32; rows * d];
    for (i, row) in (r0..r1).enumerate() {
        let src = &q[row * token_stride + h * d..row * token_stride + (h + 1) * d];
        for (dst, x) in q_tile[i * d..(i + 1) * d].iter_mut().zip(src) {
            *dst = x * scale;
        }
    }
    let mut acc = vec![0f32; rows * d];
    let mut m = vec![f32::NEG_INFINITY; rows];
    let mut l = vec![0f32; rows];
    let mut scores = vec![0f32; rows * KV_TILE];
    let mut kt = k0;
    while kt < k1 {
        let n = (k1 - kt).min(KV_TILE);
        let k_view = &k[kt * token_stride + h * d..];
        let v_view = &v[kt * token_stride + h * d..];
        // scores[rows × n] = q_tile[rows × d] · kᵀ, k read in place (element (kk, j) at
        // j·token_stride + kk).
        gemm_strided(
            &mut scores[..rows * n],
            n,
            &q_tile,
            d,
            1,
            k_view,
            1,
            token_stride,
            (rows, n, d),
            false,
        );
        for i in 0..rows {
            let s_row = &mut scores[i * n..(i + 1) * n];
            let tile_max = s_row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let new_max = m[i].max(tile_max);
            let correction = (m[i] - new_max).exp();
            let mut sum = 0f32;
            for s in s_row.iter_mut() {
                *s = (*s - new_max).exp();
                sum += *s;
            }
            if correction != 1.0 {
                for o in &mut acc[i * d..(i + 1) * d] {
                    *o *= correction;
                }
            }
            l[i] = l[i] * correction + sum;
            m[i] = new_max;
        }
        // acc[rows × d] += p[rows × n] · v[n × d], v rows at stride token_stride.
        gemm_strided(
            &mut acc,
            d,
            &scores[..rows * n],
            n,
            1,
            v_view,
            token_stride,
            1,
            (rows, d, n),
            true,
        );
        kt += n;
    }
    for i in 0..rows {
        let inv = if l[i] > 0.0 { 1.0 / l[i] } else { 0.0 };
        for o in &mut acc[i * d..(i + 1) * d] {
            *o *= inv;
        }
    }
    acc
}

/// `dst[m×n] (+)= a[m×k] · b[k×n]` with `dst` row-major (row stride `dst_rs`), `a` row-major
/// (row stride `a_rs`, unit column stride `a_cs`) and `b` given by its row and column strides.
#[allow(clippy::too_many_arguments)]
fn gemm_strided(
    dst: &mut [f32],
    dst_rs: usize,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let last = |rs: usize, cs: usize, rows: usize, cols: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(last(dst_rs, 1, m, n) < dst.len());
    assert!(last(a_rs, a_cs, m, k) < a.len());
    assert!(last(b_rs, b_cs, k, n) < b.len());
    // SAFETY: the assertions above keep the largest offset of each strided operand inside its
    // slice; `dst` is exclusively borrowed and does not overlap the read-only inputs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}
