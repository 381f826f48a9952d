//! Whether two int32 tensors hold the same elements in the same order (`CoordSet::same_rows` on
//! device-built sets): on one CUDA device a kernel compares them and one word comes back instead
//! of the tensors; elsewhere the host compares their elements, the reference.

use candle_core::{Result, Tensor};

#[cfg(feature = "cuda")]
mod cuda;

/// Whether `a` and `b` (int32, any layout) have the same shape and elements.
pub fn i32_tensors_equal(a: &Tensor, b: &Tensor) -> Result<bool> {
    if a.dims() != b.dims() {
        return Ok(false);
    }
    #[cfg(feature = "cuda")]
    if a.device().is_cuda() && a.device().same_device(b.device()) {
        return cuda::i32_tensors_equal(&a.contiguous()?, &b.contiguous()?);
    }
    Ok(a.flatten_all()?.to_vec1::<i32>()? == b.flatten_all()?.to_vec1::<i32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn equal_shapes_and_elements_only() {
        let t = |v: &[i32], shape: (usize, usize)| Tensor::from_slice(v, shape, &Device::Cpu);
        let a = t(&[1, 2, 3, 4], (2, 2)).unwrap();
        assert!(i32_tensors_equal(&a, &a.clone()).unwrap());
        assert!(!i32_tensors_equal(&a, &t(&[1, 2, 3, 5], (2, 2)).unwrap()).unwrap());
        assert!(!i32_tensors_equal(&a, &t(&[1, 2, 3, 4], (1, 4)).unwrap()).unwrap());
        assert!(i32_tensors_equal(&a.t().unwrap(), &t(&[1, 3, 2, 4], (2, 2)).unwrap()).unwrap());
    }
}
