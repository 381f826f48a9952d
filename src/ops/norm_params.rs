//! The small per-channel operands the fused norm kernels read, prepared once instead of per
//! call. Built per call they cost more than the norm itself at small token counts: a plain
//! LayerNorm on a GPU used to fill ones and zeros, cast the weight and bias to f32 and stack
//! them (≈8 launches of a few µs each around one kernel), ≈1,000 launches per flow forward.

use std::sync::Mutex;

use candle_core::{DType, Device, Result, Tensor};

/// LayerNorm weight and bias stacked `[2, C]` in f32, the layout the fused kernels read.
#[derive(Clone, Debug)]
pub struct NormAffine {
    stacked: Tensor,
}

impl NormAffine {
    /// Stacks `weight` and `bias` (`[C]` each, any float dtype) once.
    pub fn new(weight: &Tensor, bias: &Tensor) -> Result<Self> {
        let c = weight.dim(0)?;
        if weight.dims() != [c] || bias.dims() != [c] {
            candle_core::bail!(
                "layer norm: weight {:?} and bias {:?} must be [C]",
                weight.dims(),
                bias.dims()
            );
        }
        Ok(Self {
            stacked: Tensor::stack(
                &[weight.to_dtype(DType::F32)?, bias.to_dtype(DType::F32)?],
                0,
            )?,
        })
    }

    /// Weight 1, bias 0 for `c` channels on `device` (shared: built once per device and width).
    pub fn identity(c: usize, device: &Device) -> Result<Self> {
        Ok(Self {
            stacked: cached(&IDENTITY, c, device, |c, dev| {
                Tensor::stack(
                    &[
                        Tensor::ones(c, DType::F32, dev)?,
                        Tensor::zeros(c, DType::F32, dev)?,
                    ],
                    0,
                )
            })?,
        })
    }

    /// `[2, C]` f32: weight row, then bias row.
    pub fn stacked(&self) -> &Tensor {
        &self.stacked
    }

    pub fn channels(&self) -> usize {
        self.stacked.dims().get(1).copied().unwrap_or(0)
    }

    /// `(weight, bias)` as `[C]` views.
    pub fn parts(&self) -> Result<(Tensor, Tensor)> {
        Ok((self.stacked.get(0)?, self.stacked.get(1)?))
    }
}

/// `[1, 2, C]` f32 zeros: "no modulation" for the fused norm+modulate kernel, shared per device
/// and width.
pub fn zero_modulation(c: usize, device: &Device) -> Result<Tensor> {
    cached(&ZERO_MODULATION, c, device, |c, dev| {
        Tensor::zeros((1, 2, c), DType::F32, dev)
    })
}

type Cache = Mutex<Vec<(Device, usize, Tensor)>>;

static IDENTITY: Cache = Mutex::new(Vec::new());
static ZERO_MODULATION: Cache = Mutex::new(Vec::new());

/// A few distinct widths per model, so a list searched linearly; tensors of a dropped device
/// stay (a few KB each).
fn cached(
    cache: &Cache,
    c: usize,
    device: &Device,
    make: impl FnOnce(usize, &Device) -> Result<Tensor>,
) -> Result<Tensor> {
    let mut list = cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, _, t)) = list
        .iter()
        .find(|(d, width, _)| *width == c && d.same_device(device))
    {
        return Ok(t.clone());
    }
    let t = make(c, device)?;
    list.push((device.clone(), c, t.clone()));
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_shared_and_correct() {
        let dev = Device::Cpu;
        let a = NormAffine::identity(3, &dev).unwrap();
        let b = NormAffine::identity(3, &dev).unwrap();
        assert_eq!(a.stacked().id(), b.stacked().id());
        assert_eq!(
            a.stacked().to_vec2::<f32>().unwrap(),
            vec![vec![1., 1., 1.], vec![0., 0., 0.]]
        );
        assert_ne!(
            NormAffine::identity(4, &dev).unwrap().stacked().id(),
            a.stacked().id()
        );
    }

    #[test]
    fn new_stacks_in_f32_and_checks_shapes() {
        let dev = Device::Cpu;
        let w = Tensor::new(&[2f32, 3.], &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let b = Tensor::new(&[-1f32, 0.5], &dev).unwrap();
        let a = NormAffine::new(&w, &b).unwrap();
        assert_eq!(a.stacked().dtype(), DType::F32);
        assert_eq!(
            a.stacked().to_vec2::<f32>().unwrap(),
            vec![vec![2., 3.], vec![-1., 0.5]]
        );
        let short = Tensor::new(&[1f32], &dev).unwrap();
        assert!(NormAffine::new(&w, &short).is_err());
    }
}
