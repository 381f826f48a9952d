//! Building a model without its weights: a `VarBuilder` backend that records every tensor a
//! model asks for and hands out zero-stride zeros (`zeros(()).broadcast_as(shape)`), so a
//! full-size 1.3B-parameter model is "built" without allocating its parameters. Used to prove
//! that our key names and shapes equal the released checkpoints' (`tests/manifests.rs`).

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

/// `(key, shape)` of one requested tensor.
type Request = (String, Vec<usize>);

#[derive(Clone, Default)]
pub struct ShapeRecorder {
    requested: Arc<Mutex<Vec<Request>>>,
}

impl ShapeRecorder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A `VarBuilder` whose every tensor is a broadcast zero of the requested shape.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> candle_nn::VarBuilder<'static> {
        candle_nn::VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    /// `(key, shape)` of every tensor asked for, in request order.
    pub fn requested(&self) -> Vec<(String, Vec<usize>)> {
        self.requested.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl SimpleBackend for ShapeRecorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Ok(mut r) = self.requested.lock() {
            r.push((name.to_string(), s.dims().to_vec()));
        }
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        // Without a shape there is nothing to record: a model asking this way is not
        // shape-checkable, so say so rather than guess.
        Err(candle_core::Error::CannotFindTensor {
            path: name.to_string(),
        })
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}
