//! The error metrics every kernel and parity check uses: `max|got − want|` and that over
//! `max|want|`. A NaN or infinity on either side makes both +∞, so no bound ever passes it.

use candle_core::{bail, DType, Device, Result, Tensor};

/// max |got − want| over all elements (+∞ if either side holds a NaN or an infinity).
///
/// # Panics
/// If the two slices differ in length.
pub fn max_abs_diff(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "max_abs_diff: lengths differ");
    let err = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, nan_max);
    if err.is_nan() {
        f32::INFINITY
    } else {
        err
    }
}

/// max |got − want| / max |want|: the relative error of every kernel check (the plain
/// [`max_abs_diff`] when `want` is all zeros; +∞ on a NaN or an infinity anywhere).
///
/// # Panics
/// If the two slices differ in length.
pub fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    let err = max_abs_diff(got, want);
    let scale = want.iter().map(|v| v.abs()).fold(0f32, nan_max);
    let rel = if scale > 0.0 { err / scale } else { err };
    if rel.is_nan() {
        f32::INFINITY
    } else {
        rel
    }
}

/// [`rel_err`] of two tensors of one shape, on any device and in any float dtype.
pub fn tensor_rel_err(got: &Tensor, want: &Tensor) -> Result<f32> {
    same_dims(got, want)?;
    Ok(rel_err(&host_f32(got)?, &host_f32(want)?))
}

/// [`max_abs_diff`] of two tensors of one shape, on any device and in any float dtype.
pub fn tensor_max_abs_diff(got: &Tensor, want: &Tensor) -> Result<f32> {
    same_dims(got, want)?;
    Ok(max_abs_diff(&host_f32(got)?, &host_f32(want)?))
}

/// A tensor's values as f32 on the host, flattened. Cast on the host: a cast of an empty
/// tensor fails on CUDA.
pub fn host_f32(t: &Tensor) -> Result<Vec<f32>> {
    t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()
}

fn same_dims(got: &Tensor, want: &Tensor) -> Result<()> {
    if got.dims() != want.dims() {
        bail!(
            "compared tensors differ in shape: {:?} vs {:?}",
            got.dims(),
            want.dims()
        );
    }
    Ok(())
}

/// max that keeps a NaN (f32::max drops it).
fn nan_max(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.max(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_and_absolute_errors() {
        assert_eq!(max_abs_diff(&[1.0, 2.0], &[1.5, 2.0]), 0.5);
        assert_eq!(rel_err(&[1.0, 3.5], &[1.5, 4.0]), 0.5 / 4.0);
        // An all-zero reference: the absolute error.
        assert_eq!(rel_err(&[0.25, 0.0], &[0.0, 0.0]), 0.25);
        assert_eq!(rel_err(&[], &[]), 0.0);
        for bad in [f32::NAN, f32::INFINITY] {
            assert_eq!(rel_err(&[bad, 1.0], &[1.0, 1.0]), f32::INFINITY);
            assert_eq!(rel_err(&[1.0, 1.0], &[1.0, bad]), f32::INFINITY);
            assert_eq!(max_abs_diff(&[1.0, bad], &[1.0, 1.0]), f32::INFINITY);
        }
        let a = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let b = Tensor::new(&[1f32, 3.0], &Device::Cpu).unwrap();
        assert_eq!(tensor_rel_err(&a, &b).unwrap(), 1.0 / 3.0);
        assert_eq!(tensor_max_abs_diff(&a, &b).unwrap(), 1.0);
        assert!(tensor_rel_err(&a, &b.reshape((2, 1)).unwrap()).is_err());
    }
}
