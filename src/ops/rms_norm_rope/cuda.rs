//! q/k RMS norm + RoPE's CUDA launcher (`rms_norm_rope_*` in `kernels/cuda/norms.cu`).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaView, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{bail, CudaStorage, Layout, Result, Shape};

use crate::ops::cuda::{f32_slice, kernel, norm_launch, norm_launch_groups, output, span, NORMS};
use crate::ops::storage::{with_float, FloatElem, FloatFn, FLOATS};

/// q/k RMS norm + interleaved RoPE (`src/ops/rms_norm_rope/mod.rs`): x `[T,H,D]` f32/f16/bf16 with
/// any token stride (each token's H·D values contiguous), gamma `[H,D]` f32, table `[T or 1,D/2,2]`
/// f32 → `[T,H,D]` contiguous in x's dtype.
pub(crate) fn rms_norm_rope(
    (x, xl): (&CudaStorage, &Layout),
    (g, gl): (&CudaStorage, &Layout),
    (t, tl): (&CudaStorage, &Layout),
    normalize: bool,
) -> Result<(CudaStorage, Shape)> {
    const OP: &str = "rms_norm_rope (CUDA)";
    let (tokens, heads, d) = xl.shape().dims3()?;
    let (xa, xz, x_stride) = match xl.stride() {
        &[s, sh, 1] if sh == d && s >= heads * d => {
            let a = xl.start_offset();
            (a, a + tokens.saturating_sub(1) * s + heads * d, s)
        }
        _ => bail!(
            "{OP}: x must have contiguous heads (strides [_, {d}, 1]), got {:?}",
            xl.stride()
        ),
    };
    let (ga, gz) = span(gl, OP, "gamma")?;
    let (ta, tz) = span(tl, OP, "rotation table")?;
    let gamma = f32_slice(g, OP, "gamma")?.slice(ga..gz);
    let table = f32_slice(t, OP, "rotation table")?.slice(ta..tz);
    let launch = RmsNormRope {
        x: (x, xa, xz, x_stride),
        gamma,
        table: (table, tl.shape().dims()[0]),
        rows: tokens * heads,
        heads,
        d,
        normalize,
    };
    let out = with_float(x.dtype(), FLOATS, launch, || {
        format!("{OP}: x must be f32, f16 or bf16, got {:?}", x.dtype())
    })?;
    Ok((out, xl.shape().clone()))
}

/// The launch of [`rms_norm_rope`] for one element type.
struct RmsNormRope<'a> {
    /// x, its span and token stride.
    x: (&'a CudaStorage, usize, usize, usize),
    gamma: CudaView<'a, f32>,
    /// The rotation table and its rows.
    table: (CudaView<'a, f32>, usize),
    rows: usize,
    heads: usize,
    d: usize,
    normalize: bool,
}

impl FloatFn for RmsNormRope<'_> {
    type Output = CudaStorage;

    fn call<T: FloatElem>(self) -> Result<CudaStorage> {
        let (x, xa, xz, x_stride) = self.x;
        let (rows, d) = (self.rows, self.d);
        let (rows_, heads_, d_, normalize_) = (
            rows as i32,
            self.heads as i32,
            d as i32,
            self.normalize as i32,
        );
        let (x_stride_, table_rows) = (x_stride as i32, self.table.1 as i32);
        let dev = x.device();
        let out = output::<T>(dev, rows * d)?;
        if rows > 0 && d > 0 {
            // D = L·E (E values of 16 bytes, L = 4..32 lanes a row): one 16-byte vector a
            // lane (the kernel checks the alignment of the pointers and of x_stride).
            let e = 16 / size_of::<T>();
            let (name, cfg) = match d / e {
                l @ (4 | 8 | 16 | 32) if d.is_multiple_of(e) => (
                    format!("rms_norm_rope_v{l}_{}", T::NAME),
                    norm_launch_groups(rows, 256 / l),
                ),
                _ => (format!("rms_norm_rope_{}", T::NAME), norm_launch(rows)),
            };
            let func = kernel(dev, &NORMS, &name)?;
            let xs = x.as_cuda_slice::<T>()?.slice(xa..xz);
            let mut b = func.builder();
            b.arg(&xs).arg(&self.gamma).arg(&self.table.0).arg(&out);
            b.arg(&rows_).arg(&heads_).arg(&d_).arg(&normalize_);
            b.arg(&x_stride_).arg(&table_rows);
            // SAFETY: reads x (T rows of H·D at stride x_stride, inside the slice), gamma[H·D]
            // and table[T·D or D] (checked by the op); writes every element of out[T·H·D],
            // owned here.
            unsafe { b.launch(cfg) }.w()?;
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}
