//! The space→channel gather's CUDA launcher (`space_to_channel_w*` in
//! `kernels/cuda/channel_to_space.cu`): a word copy, so the kernel is picked by word size, not
//! dtype — 16-byte words when rows and the input start allow it.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{bail, CudaStorage, Layout, Result, Shape};

use crate::ops::cuda::{
    elementwise_launch, elementwise_vec, kernel, output, span, CHANNEL_TO_SPACE,
};
use crate::ops::storage::{with_float, FloatElem, FloatFn, FLOATS};
use crate::ops::vocab::CHILDREN;

/// feats `[N, C]` (f32/f16/bf16), slots `[M·8]` u32 → `[M, 8C]` in feats' dtype.
pub(crate) fn space_to_channel(
    (x, xl): (&CudaStorage, &Layout),
    (s, sl): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    const OP: &str = "space_to_channel (CUDA)";
    let (rows, c) = xl.shape().dims2()?;
    let (xa, xz) = span(xl, OP, "feats")?;
    let (sa, sz) = span(sl, OP, "slots")?;
    let CudaStorageSlice::U32(slots) = &s.slice else {
        bail!("{OP}: slots must be u32, got {:?}", s.dtype());
    };
    if (sz - sa) % CHILDREN != 0 {
        bail!("{OP}: {} slots are not whole parents of 8", sz - sa);
    }
    let rows = u32::try_from(rows)
        .map_err(|_| candle_core::Error::Msg(format!("{OP}: {rows} rows exceed u32")))?;
    let launch = Gather {
        x: (x, xa, xz),
        slots: slots.slice(sa..sz),
        slot_count: sz - sa,
        c,
        rows,
    };
    let out = with_float(x.dtype(), FLOATS, launch, || {
        format!("{OP}: feats must be f32, f16 or bf16, got {:?}", x.dtype())
    })?;
    Ok((out, Shape::from(((sz - sa) / CHILDREN, CHILDREN * c))))
}

/// The launch of [`space_to_channel`] for one element type.
struct Gather<'a> {
    x: (&'a CudaStorage, usize, usize),
    slots: candle_core::cuda_backend::cudarc::driver::CudaView<'a, u32>,
    slot_count: usize,
    c: usize,
    rows: u32,
}

impl FloatFn for Gather<'_> {
    type Output = CudaStorage;

    fn call<T: FloatElem>(self) -> Result<CudaStorage> {
        let (x, xa, xz) = self.x;
        let dev = x.device();
        let len = self.slot_count * self.c;
        let out = output::<T>(dev, len)?;
        if len > 0 {
            let vec = elementwise_vec::<T>(self.c, &[xa]);
            let word_bytes = vec * std::mem::size_of::<T>();
            let name = format!("space_to_channel_w{word_bytes}");
            let func = kernel(dev, &CHANNEL_TO_SPACE, &name)?;
            let words = u32::try_from(self.c / vec).map_err(|_| {
                candle_core::Error::Msg(format!("space_to_channel (CUDA): {} channels", self.c))
            })?;
            let total = len / vec;
            let xs = x.as_cuda_slice::<T>()?.slice(xa..xz);
            let mut b = func.builder();
            b.arg(&xs).arg(&self.slots).arg(&out);
            b.arg(&total).arg(&words).arg(&self.rows);
            // SAFETY: reads slots[M·8] and x rows < `rows` (each `words` words of
            // `word_bytes`, the span checked above; 16-byte words only when aligned), writes
            // every word of out[M·8·C] (owned here) exactly once.
            unsafe { b.launch(elementwise_launch(total)) }.w()?;
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}
