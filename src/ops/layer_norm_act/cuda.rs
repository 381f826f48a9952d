//! CUDA forward of `src/ops/layer_norm_act/mod.rs` (`layer_norm_act_*` in `kernels/cuda/norms.cu`).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaView, PushKernelArg};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{bail, CudaStorage, Layout, Result, Shape};

use crate::ops::cuda::{f32_slice, kernel, layer_norm_kernel, output, span, NORMS};
use crate::ops::storage::{with_float, FloatElem, FloatFn, FLOATS};
use crate::ops::vocab::Activation;

/// `act(LN(x[r])·w + b)` for each output row, `r = rows[i]` (or `i`): x `[R,C]` f32/f16/bf16,
/// affine `[2,C]` f32, rows `[T]` u32 → `[T or R, C]` in x's dtype.
pub(crate) fn layer_norm_act(
    (x, xl): (&CudaStorage, &Layout),
    (a, al): (&CudaStorage, &Layout),
    rows: Option<(&CudaStorage, &Layout)>,
    eps: f32,
    act: Activation,
) -> Result<(CudaStorage, Shape)> {
    const OP: &str = "layer_norm_act (CUDA)";
    let (x_rows, c) = xl.shape().dims2()?;
    let (xa, xz) = span(xl, OP, "x")?;
    let (aa, az) = span(al, OP, "affine")?;
    if az - aa != 2 * c {
        bail!("{OP}: affine has {} values for {c} channels", az - aa);
    }
    let affine = f32_slice(a, OP, "affine")?.slice(aa..az);
    let rows = match rows {
        Some((s, l)) => {
            let CudaStorageSlice::U32(r) = &s.slice else {
                bail!("{OP}: rows must be u32, got {:?}", s.dtype());
            };
            let (ra, rz) = span(l, OP, "rows")?;
            Some(r.slice(ra..rz))
        }
        None => None,
    };
    let out_rows = rows.as_ref().map_or(x_rows, |r| r.len());
    let x_rows_ = u32::try_from(x_rows)
        .map_err(|_| candle_core::Error::Msg(format!("{OP}: {x_rows} rows exceed u32")))?;
    let out_rows_ = i32::try_from(out_rows)
        .map_err(|_| candle_core::Error::Msg(format!("{OP}: {out_rows} rows exceed i32")))?;
    let launch = LayerNormAct {
        x: (x, xa, xz, x_rows_),
        affine,
        rows: rows.as_ref(),
        out_rows: (out_rows, out_rows_),
        c,
        eps,
        act,
    };
    let out = with_float(x.dtype(), FLOATS, launch, || {
        format!("{OP}: x must be f32, f16 or bf16, got {:?}", x.dtype())
    })?;
    Ok((out, Shape::from((out_rows, c))))
}

/// The launch of [`layer_norm_act`] for one element type.
struct LayerNormAct<'a> {
    /// x, its span and rows (u32).
    x: (&'a CudaStorage, usize, usize, u32),
    affine: CudaView<'a, f32>,
    /// The input row of each output row, or none: row i is row i.
    rows: Option<&'a CudaView<'a, u32>>,
    /// Output rows, also as the kernel's i32.
    out_rows: (usize, i32),
    c: usize,
    eps: f32,
    act: Activation,
}

impl FloatFn for LayerNormAct<'_> {
    type Output = CudaStorage;

    fn call<T: FloatElem>(self) -> Result<CudaStorage> {
        let (x, xa, xz, x_rows_) = self.x;
        let ((out_rows, out_rows_), c) = (self.out_rows, self.c);
        let (c_, act_) = (c as i32, self.act as i32);
        let dev = x.device();
        let out = output::<T>(dev, out_rows * c)?;
        if out_rows > 0 && c > 0 {
            let (name, cfg) =
                layer_norm_kernel("layer_norm_act", T::NAME, c, size_of::<T>(), out_rows);
            let func = kernel(dev, &NORMS, &name)?;
            let xs = x.as_cuda_slice::<T>()?.slice(xa..xz);
            let mut b = func.builder();
            b.arg(&xs);
            match self.rows {
                Some(r) => b.arg(r),
                // A null pointer: output row i is input row i.
                None => b.arg(&0u64),
            };
            b.arg(&x_rows_).arg(&self.affine).arg(&out);
            b.arg(&out_rows_).arg(&c_).arg(&self.eps).arg(&act_);
            // SAFETY: reads x[R·C], affine[2·C] and rows[T] (spans checked above), and x
            // only at rows < R (others give NaN rows); writes every element of
            // out[T·C], owned here.
            unsafe { b.launch(cfg) }.w()?;
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}
