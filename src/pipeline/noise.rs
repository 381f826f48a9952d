//! Where the initial noise of each sampling stage comes from: PyTorch's CPU generator seeded
//! once, drawn in upstream's order (docs/MODEL.md §1.5), or tensors injected from a file under the
//! golden pipeline's names (`ss.noise`, `shape.noise` | `shape_lr.noise` + `shape_hr.noise`,
//! `tex.noise`).

use std::collections::HashMap;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

use crate::rng::TorchRng;

/// The noise of one run.
pub enum NoiseSource {
    /// `torch.manual_seed(seed)`, then one `torch.randn` per stage in upstream's order.
    Seed(u64),
    /// Named tensors (float, exact shapes).
    Injected(HashMap<String, Tensor>),
}

/// Draws stage noise in call order.
pub struct Noise {
    rng: Option<TorchRng>,
    injected: HashMap<String, Tensor>,
}

impl Noise {
    pub fn new(source: NoiseSource) -> Self {
        match source {
            NoiseSource::Seed(seed) => Self {
                rng: Some(TorchRng::new(seed)),
                injected: HashMap::new(),
            },
            NoiseSource::Injected(tensors) => Self {
                rng: None,
                injected: tensors,
            },
        }
    }

    /// The noise called `name` with `shape`, as f32 on `device`. Seeded runs draw the next
    /// `torch.randn(shape)` of the stream; injected runs must hold `name` with that shape.
    pub fn draw(&mut self, name: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
        match &mut self.rng {
            Some(rng) => {
                let values = rng.randn(shape.iter().product());
                Ok(Tensor::from_vec(values, shape, device)?)
            }
            None => {
                let Some(t) = self.injected.get(name) else {
                    let mut have: Vec<&String> = self.injected.keys().collect();
                    have.sort();
                    bail!(
                        "noise file has no tensor `{name}` (shape {shape:?}); it has: {}",
                        have.iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                };
                if t.dims() != shape {
                    bail!(
                        "noise `{name}` has shape {:?}, this run needs {shape:?}",
                        t.dims()
                    );
                }
                if !t.dtype().is_float() {
                    bail!("noise `{name}` must be a float tensor, got {:?}", t.dtype());
                }
                Ok(t.to_dtype(DType::F32)?.to_device(device)?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_noise_continues_one_stream() {
        let dev = Device::Cpu;
        let mut n = Noise::new(NoiseSource::Seed(7));
        let a = n.draw("ss.noise", &[2, 16], &dev).unwrap();
        let b = n.draw("shape.noise", &[3, 4], &dev).unwrap();
        let want = crate::rng::randn_sequence(7, &[vec![2, 16], vec![3, 4]]);
        assert_eq!(a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want[0]);
        assert_eq!(b.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want[1]);
    }

    #[test]
    fn injected_noise_checks_name_and_shape() {
        let dev = Device::Cpu;
        let t = Tensor::zeros((4, 32), DType::F32, &dev).unwrap();
        let mut n = Noise::new(NoiseSource::Injected(HashMap::from([(
            "tex.noise".to_string(),
            t,
        )])));
        assert!(n.draw("tex.noise", &[4, 32], &dev).is_ok());
        let e = n.draw("tex.noise", &[5, 32], &dev).unwrap_err().to_string();
        assert!(e.contains("[5, 32]") && e.contains("[4, 32]"), "{e}");
        let e = n.draw("ss.noise", &[1], &dev).unwrap_err().to_string();
        assert!(e.contains("ss.noise") && e.contains("tex.noise"), "{e}");
    }
}
