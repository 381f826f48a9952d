//! The fused C2S skip add's CUDA launcher (`c2s_skip_add_*` in
//! `kernels/cuda/channel_to_space.cu`).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaView, PushKernelArg};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{bail, CudaStorage, Layout, Result, Shape};

use crate::ops::cuda::{
    elementwise_launch, elementwise_vec, kernel, output, span, CHANNEL_TO_SPACE,
};
use crate::ops::storage::{with_float, FloatElem, FloatFn, FLOATS};

/// `h + repeat_interleave(x[8N, carried].index_select(sources), repeat)`
/// (`src/ops/c2s_skip_add/mod.rs`): h `[N', C']` and x `[N, C]` f32/f16/bf16 (the same dtype),
/// sources `[N']` u32 → `[N', C']` in h's dtype.
pub(crate) fn c2s_skip_add(
    (h, hl): (&CudaStorage, &Layout),
    (x, xl): (&CudaStorage, &Layout),
    (s, sl): (&CudaStorage, &Layout),
    carried: usize,
    repeat: usize,
) -> Result<(CudaStorage, Shape)> {
    const OP: &str = "c2s_skip_add (CUDA)";
    let (rows, c_out) = hl.shape().dims2()?;
    let (ha, hz) = span(hl, OP, "h")?;
    let (xa, xz) = span(xl, OP, "parent features")?;
    let (sa, sz) = span(sl, OP, "sources")?;
    if c_out != carried * repeat || carried == 0 {
        bail!("{OP}: {c_out} channels are not {carried} carried × {repeat}");
    }
    if sz - sa != rows {
        bail!("{OP}: {} sources for {rows} children", sz - sa);
    }
    let CudaStorageSlice::U32(src) = &s.slice else {
        bail!("{OP}: sources must be u32, got {:?}", s.dtype());
    };
    // Channel blocks of the parents: sources index these.
    let x_blocks = u32::try_from((xz - xa) / carried)
        .map_err(|_| candle_core::Error::Msg(format!("{OP}: too many parent channel blocks")))?;
    let launch = C2sSkipAdd {
        h: (h, ha, hz),
        x: (x, xa, xz),
        sources: src.slice(sa..sz),
        rows,
        c_out,
        carried,
        repeat,
        x_blocks,
    };
    let out = with_float(h.dtype(), FLOATS, launch, || {
        format!("{OP}: h must be f32, f16 or bf16, got {:?}", h.dtype())
    })?;
    Ok((out, hl.shape().clone()))
}

/// The launch of [`c2s_skip_add`] for one element type.
struct C2sSkipAdd<'a> {
    /// h and x with their spans.
    h: (&'a CudaStorage, usize, usize),
    x: (&'a CudaStorage, usize, usize),
    sources: CudaView<'a, u32>,
    rows: usize,
    c_out: usize,
    carried: usize,
    repeat: usize,
    /// Channel blocks of the parents: sources index these.
    x_blocks: u32,
}

impl FloatFn for C2sSkipAdd<'_> {
    type Output = CudaStorage;

    fn call<T: FloatElem>(self) -> Result<CudaStorage> {
        let ((h, ha, hz), (x, xa, xz)) = (self.h, self.x);
        if x.dtype() != T::DTYPE {
            bail!("c2s_skip_add (CUDA): h and the parent features must have the same dtype");
        }
        let (c_out_, carried_, repeat_) =
            (self.c_out as i32, self.carried as i32, self.repeat as i32);
        let dev = h.device();
        let len = self.rows * self.c_out;
        let out = output::<T>(dev, len)?;
        if len > 0 {
            let vec = elementwise_vec::<T>(self.c_out, &[ha]);
            let name = format!(
                "c2s_skip_add_{}{}",
                T::NAME,
                if vec > 1 { "_v" } else { "" }
            );
            let func = kernel(dev, &CHANNEL_TO_SPACE, &name)?;
            let vectors = len / vec;
            let hs = h.as_cuda_slice::<T>()?.slice(ha..hz);
            let xs = x.as_cuda_slice::<T>()?.slice(xa..xz);
            let mut b = func.builder();
            b.arg(&hs).arg(&xs).arg(&self.sources).arg(&out);
            b.arg(&vectors)
                .arg(&c_out_)
                .arg(&carried_)
                .arg(&repeat_)
                .arg(&self.x_blocks);
            // SAFETY: reads h[N'·C'] and sources[N'] (checked above) and x at
            // source·carried + k for k < carried, only for sources < x_blocks (others give
            // NaN rows); writes every element of out[N'·C'], owned here.
            unsafe { b.launch(elementwise_launch(vectors)) }.w()?;
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}
