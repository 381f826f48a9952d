//! Building a model without its weights: a `VarBuilder` backend that records every tensor a
//! model asks for and hands out zero-stride zeros (`zeros(()).broadcast_as(shape)`), so a
//! full-size 1.3B-parameter model is "built" without allocating its parameters. Used to prove
//! that our key names and shapes equal the released checkpoints' (`tests/manifests.rs`).

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

/// `(key, shape)` of one requested tensor.
type Request = (String, Vec<usize>);

#[derive(Clone)]
pub struct ShapeRecorder {
    requested: Arc<Mutex<Vec<Request>>>,
    /// The most elements the model may ask for in all (see [`Self::with_budget`]).
    budget: usize,
}

impl Default for ShapeRecorder {
    fn default() -> Self {
        Self {
            requested: Arc::default(),
            budget: usize::MAX,
        }
    }
}

impl ShapeRecorder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A recorder that refuses a model asking for more than `elements` values in all (the
    /// checkpoint's count, when checking a config against its checkpoint): what the model
    /// builds from the stand-ins (re-laid-out weights) stays within that estimate.
    pub fn with_budget(elements: usize) -> Self {
        Self {
            budget: elements,
            ..Self::default()
        }
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
        let mut r = self.requested.lock().unwrap_or_else(|e| e.into_inner());
        // Each distinct tensor counts once (a model may ask for shared weights again).
        let mut seen = std::collections::BTreeSet::new();
        let asked: usize = r
            .iter()
            .filter(|(n, _)| seen.insert(n.as_str()))
            .map(|(_, d)| super::strict::element_count(d).unwrap_or(usize::MAX))
            .fold(0, usize::saturating_add);
        let dims: &[usize] = if seen.contains(name) { &[0] } else { s.dims() };
        if let Some(msg) = super::strict::over_budget("model", name, dims, asked, self.budget) {
            return Err(candle_core::Error::Msg(msg));
        }
        r.push((name.to_string(), s.dims().to_vec()));
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
