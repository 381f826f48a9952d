//! Helpers shared by the crate's unit tests.

use candle_core::{Device, Tensor};

/// A CPU f32 tensor of `shape` with the selftest's deterministic uniform values in [-1, 1).
pub(crate) fn uniform_tensor(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product::<usize>();
    Tensor::from_vec(crate::selftest::uniform(seed, n), shape, &Device::Cpu)
        .expect("shape matches the element count")
}

/// max |a − b| over all elements (f32 tensors of one shape).
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("two f32 tensors of one shape")
}

/// max |a − b| / max |b| (f32 tensors of one shape): the parity tests' relative error.
pub(crate) fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let scale = b
        .abs()
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("an f32 tensor");
    max_abs_diff(a, b) / scale
}
