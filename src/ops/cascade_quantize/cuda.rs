//! CUDA side of the cascade's quantisation (`kernels/cuda/cascade_quantize.cu`): the occupancy
//! bitmap of the quantised grid filled on the device from `upsample(lr, 4)`'s rows, so that only
//! the bitmap comes back to the host instead of the ≈28 MB of rows.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{bail, Result, Storage, Tensor};

use crate::ops::cuda::{elementwise_launch, kernel, span, CASCADE_QUANTIZE};

/// The occupancy bitmap of the `batches · side³` grid cells of `rows` `[N, 4]` i32 (contiguous,
/// on a CUDA device) quantised to `side` (`pipeline::cascade::quantize_coords`' f32 math): bit
/// `cell % 32` of word `cell / 32` is set when a row falls in cell
/// `((b·side + x)·side + y)·side + z`. `None` when some row is off that grid (a batch index
/// outside `0..batches`, a quantised coordinate outside `0..side`): the caller then quantises
/// the rows on the host. One kernel launch; the bitmap and the off-grid flag are the only
/// read-back.
pub(crate) fn cascade_occupancy(
    rows: &Tensor,
    batches: usize,
    side: usize,
) -> Result<Option<Vec<u32>>> {
    const OP: &str = "cascade quantisation (CUDA)";
    let (n, width) = rows.dims2()?;
    if width != 4 {
        bail!(
            "{OP}: expected [N, 4] rows (batch, x, y, z), got {:?}",
            rows.dims()
        );
    }
    let cells = side
        .checked_pow(3)
        .and_then(|c| c.checked_mul(batches))
        .filter(|&c| c <= 1 << 32);
    let (Some(cells), Ok(side_), Ok(batches_)) =
        (cells, u32::try_from(side), u32::try_from(batches))
    else {
        bail!("{OP}: {batches} batch items of {side}³ cells exceed the bitmap's u32 cell index");
    };
    let (storage, layout) = rows.storage_and_layout();
    let Storage::Cuda(storage) = &*storage else {
        bail!("{OP}: the rows must be on a CUDA device");
    };
    let CudaStorageSlice::I32(all_rows) = &storage.slice else {
        bail!("{OP}: the rows must be i32, got {:?}", storage.dtype());
    };
    let (start, end) = span(layout, OP, "rows")?;
    let dev = storage.device().clone();
    let words = cells.div_ceil(32);
    // The bitmap, then one word: the off-grid flag; zeroed on the device, read back in one copy.
    let bitmap_and_flag = dev.alloc_zeros::<u32>(words + 1)?;
    if n > 0 {
        let func = kernel(&dev, &CASCADE_QUANTIZE, "cascade_occupancy")?;
        let rows_view = all_rows.slice(start..end);
        let bitmap = bitmap_and_flag.slice(0..words);
        let off_grid = bitmap_and_flag.slice(words..words + 1);
        let mut b = func.builder();
        b.arg(&rows_view).arg(&n).arg(&side_).arg(&batches_);
        b.arg(&bitmap).arg(&off_grid);
        // SAFETY: reads rows[N·4] (the contiguous span of an [N, 4] tensor); writes only
        // bitmap words below cells / 32 (every written cell has b < batches and x, y, z < side)
        // and the flag word, both in the allocation owned here.
        unsafe { b.launch(elementwise_launch(n)) }.w()?;
    }
    let mut host = dev.clone_dtoh(&bitmap_and_flag)?;
    let off_grid = host.pop().is_some_and(|flag| flag != 0);
    Ok((!off_grid).then_some(host))
}
