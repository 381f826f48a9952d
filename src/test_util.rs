//! Helpers shared by the crate's unit tests.

use candle_core::{Device, Tensor};

/// A CPU f32 tensor of `shape` with the selftest's deterministic uniform values in [-1, 1).
pub(crate) fn uniform_tensor(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product::<usize>();
    Tensor::from_vec(crate::selftest::uniform(seed, n), shape, &Device::Cpu)
        .expect("shape matches the element count")
}

/// [`crate::selftest::tensor_max_abs_diff`] of two tensors of one shape.
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    crate::selftest::tensor_max_abs_diff(a, b).expect("two tensors of one shape")
}

/// [`crate::selftest::tensor_rel_err`] (max |a − b| / max |b|) of two tensors of one shape: the
/// parity tests' relative error.
pub(crate) fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    crate::selftest::tensor_rel_err(a, b).expect("two tensors of one shape")
}
