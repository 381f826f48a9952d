//! The fused C2S skip add's CUDA launcher (`c2s_skip_add_*` in
//! `kernels/cuda/channel_to_space.cu`).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{bail, CudaStorage, Layout, Result, Shape};
use half::{bf16, f16};

use crate::ops::cuda::{elementwise_launch, elementwise_vec, output, span, CHANNEL_TO_SPACE};

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
    let dev = h.device().clone();
    let (c_out_, carried_, repeat_) = (c_out as i32, carried as i32, repeat as i32);
    let src = src.slice(sa..sz);
    macro_rules! run {
        ($t:ty, $variant:ident, $name:literal) => {{
            let (CudaStorageSlice::$variant(hs), CudaStorageSlice::$variant(xs)) =
                (&h.slice, &x.slice)
            else {
                bail!("{OP}: h and the parent features must have the same dtype");
            };
            let len = rows * c_out;
            let out = output::<$t>(&dev, len)?;
            if len > 0 {
                let vec = elementwise_vec::<$t>(c_out, &[ha]);
                let name = if vec > 1 { concat!($name, "_v") } else { $name };
                let func = dev.get_or_load_custom_func(
                    name,
                    CHANNEL_TO_SPACE.name,
                    CHANNEL_TO_SPACE.text,
                )?;
                let vectors = len / vec;
                let (hs, xs) = (hs.slice(ha..hz), xs.slice(xa..xz));
                let mut b = func.builder();
                b.arg(&hs).arg(&xs).arg(&src).arg(&out);
                b.arg(&vectors)
                    .arg(&c_out_)
                    .arg(&carried_)
                    .arg(&repeat_)
                    .arg(&x_blocks);
                // SAFETY: reads h[N'·C'] and sources[N'] (checked above) and x at
                // source·carried + k for k < carried, only for sources < x_blocks (others give
                // NaN rows); writes every element of out[N'·C'], owned here.
                unsafe { b.launch(elementwise_launch(vectors)) }.w()?;
            }
            CudaStorage::wrap_cuda_slice(out, dev.clone())
        }};
    }
    let out = match &h.slice {
        CudaStorageSlice::F32(_) => run!(f32, F32, "c2s_skip_add_f32"),
        CudaStorageSlice::F16(_) => run!(f16, F16, "c2s_skip_add_f16"),
        CudaStorageSlice::BF16(_) => run!(bf16, BF16, "c2s_skip_add_bf16"),
        _ => bail!("{OP}: h must be f32, f16 or bf16, got {:?}", h.dtype()),
    };
    Ok((out, hl.shape().clone()))
}
