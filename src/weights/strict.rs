//! Strict loading: compare what a model expects with what a checkpoint holds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

/// Every way a checkpoint can disagree with a model, gathered so one error names them all.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StrictError {
    /// What the error is about (usually the checkpoint path).
    pub source: String,
    pub missing: Vec<(String, Vec<usize>)>,
    pub unexpected: Vec<(String, Vec<usize>)>,
    /// (name, expected shape, shape in the checkpoint)
    pub misshaped: Vec<(String, Vec<usize>, Vec<usize>)>,
}

impl StrictError {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.misshaped.is_empty()
    }
}

impl std::fmt::Display for StrictError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: checkpoint does not match the model ({} missing, {} unexpected, {} mis-shaped)",
            self.source,
            self.missing.len(),
            self.unexpected.len(),
            self.misshaped.len()
        )?;
        for (name, shape) in &self.missing {
            write!(f, "\n  missing     {name} {shape:?}")?;
        }
        for (name, shape) in &self.unexpected {
            write!(f, "\n  unexpected  {name} {shape:?}")?;
        }
        for (name, want, got) in &self.misshaped {
            write!(
                f,
                "\n  mis-shaped  {name}: model expects {want:?}, checkpoint has {got:?}"
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for StrictError {}

/// Compares the tensors a model expects with the tensors a checkpoint holds.
pub fn check_tensors(
    source: &str,
    expected: &[(String, Vec<usize>)],
    actual: &[(String, Vec<usize>)],
) -> Result<(), StrictError> {
    let actual_map: BTreeMap<&str, &Vec<usize>> =
        actual.iter().map(|(n, s)| (n.as_str(), s)).collect();
    let expected_names: BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    let mut err = StrictError {
        source: source.to_string(),
        ..Default::default()
    };
    for (name, shape) in expected {
        match actual_map.get(name.as_str()) {
            None => err.missing.push((name.clone(), shape.clone())),
            Some(got) if *got != shape => {
                err.misshaped
                    .push((name.clone(), shape.clone(), (*got).clone()))
            }
            Some(_) => {}
        }
    }
    for (name, shape) in actual {
        if !expected_names.contains(name.as_str()) {
            err.unexpected.push((name.clone(), shape.clone()));
        }
    }
    err.missing.sort();
    err.unexpected.sort();
    err.misshaped.sort();
    if err.is_empty() {
        Ok(())
    } else {
        Err(err)
    }
}

/// Where a [`StrictLoad`] reads tensors from.
pub(crate) trait TensorSource: Send + Sync {
    fn shape_of(&self, name: &str) -> Option<Vec<usize>>;
    fn load(&self, name: &str, device: &Device) -> candle_core::Result<Tensor>;
    fn all(&self) -> Vec<(String, Vec<usize>)>;
    /// Whether `name` is stored as a type a weight may have: a float, or int64 (PyTorch's
    /// integer buffers such as BatchNorm's `num_batches_tracked`).
    fn stores_float(&self, _name: &str) -> bool {
        true
    }
}

#[derive(Default)]
struct Record {
    requested: Vec<(String, Vec<usize>)>,
    /// Elements asked for so far.
    elements: usize,
}

/// Elements of a shape, `None` when the product overflows.
pub(crate) fn element_count(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// The memory estimate of a model build: a model that loads asks for exactly the checkpoint's
/// tensors, so a config asking for more elements than the checkpoint holds (a typo of
/// `num_blocks`, channels multiplied up) is refused at the tensor that crosses that budget,
/// before its stand-in or anything derived from it exists.
pub(crate) fn over_budget(
    source: &str,
    name: &str,
    dims: &[usize],
    asked_before: usize,
    budget: usize,
) -> Option<String> {
    let total = element_count(dims).and_then(|n| n.checked_add(asked_before));
    match total {
        Some(t) if t <= budget => None,
        _ => Some(format!(
            "{source}: the model config asks for more weights than the checkpoint holds \
             ({budget} values; exceeded at {name} {dims:?}): config and checkpoint do not \
             belong together"
        )),
    }
}

/// A `VarBuilder` backend that records every tensor a model asks for. A missing or mis-shaped
/// tensor does not stop model construction (a zero tensor of the requested shape stands in), so
/// that [`StrictLoad::finish`] can report *all* problems at once, unused checkpoint tensors
/// included. Never use a model whose `finish` failed.
#[derive(Clone)]
pub struct StrictLoad {
    source_name: String,
    source: Arc<dyn TensorSource>,
    record: Arc<Mutex<Record>>,
    /// Checkpoint keys that are allowed to stay unused (e.g. `norm.weight` of DINOv3, which
    /// upstream never applies).
    ignored_unused: Arc<Vec<String>>,
    /// Elements the checkpoint holds: the most a model built from it may ask for.
    budget: usize,
}

impl StrictLoad {
    pub(crate) fn new(source_name: String, source: Arc<dyn TensorSource>) -> Self {
        let budget = source
            .all()
            .iter()
            .map(|(_, shape)| element_count(shape).unwrap_or(0))
            .fold(0usize, usize::saturating_add);
        Self {
            budget,
            source_name,
            source,
            record: Arc::default(),
            ignored_unused: Arc::default(),
        }
    }

    /// Keys the model deliberately leaves unused.
    pub fn allow_unused(mut self, names: &[&str]) -> Self {
        self.ignored_unused = Arc::new(names.iter().map(|s| s.to_string()).collect());
        self
    }

    /// A `VarBuilder` over this checkpoint whose tensors are cast to `dtype` on `device`.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> candle_nn::VarBuilder<'static> {
        candle_nn::VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    /// Compares what the model asked for with what the checkpoint holds.
    pub fn finish(&self) -> Result<(), StrictError> {
        let requested = self
            .record
            .lock()
            .map(|r| r.requested.clone())
            .unwrap_or_default();
        let actual: Vec<_> = self
            .source
            .all()
            .into_iter()
            .filter(|(n, _)| {
                !self.ignored_unused.contains(n) || requested.iter().any(|(r, _)| r == n)
            })
            .collect();
        check_tensors(&self.source_name, &requested, &actual)
    }
}

impl SimpleBackend for StrictLoad {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        {
            let mut r = self.record.lock().unwrap_or_else(|e| e.into_inner());
            let repeated = r.requested.iter().any(|(n, _)| n == name);
            if let Some(msg) = over_budget(
                &self.source_name,
                name,
                if repeated { &[0] } else { s.dims() },
                r.elements,
                self.budget,
            ) {
                return Err(candle_core::Error::Msg(msg));
            }
            // A model may ask for one tensor more than once (shared weights): count it once.
            if !r.requested.iter().any(|(n, _)| n == name) {
                r.elements += element_count(s.dims()).unwrap_or(usize::MAX);
            }
            r.requested.push((name.to_string(), s.dims().to_vec()));
        }
        match self.source.shape_of(name) {
            Some(shape) if shape == s.dims() => {
                if dtype.is_float() && !self.source.stores_float(name) {
                    // A 32-bit-or-smaller integer would convert to floats silently: the file
                    // is not the model's (PyTorch's integer buffers are int64).
                    return Err(candle_core::Error::Msg(format!(
                        "tensor {name} is stored as integers; model weights are floating point \
                         (F32, F16 or BF16)"
                    )));
                }
                self.source.load(name, dev)?.to_dtype(dtype)
            }
            // A stand-in that allocates nothing (a zero broadcast to the shape): the model is
            // never used, and a config that asks for huge tensors must not allocate them.
            _ => Tensor::zeros((), dtype, dev)?.broadcast_as(s),
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match self.source.shape_of(name) {
            Some(shape) => {
                if let Ok(mut r) = self.record.lock() {
                    r.requested.push((name.to_string(), shape));
                }
                self.source.load(name, dev)?.to_dtype(dtype)
            }
            None => Err(candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.source.shape_of(name).is_some()
    }
}

/// A plain `VarBuilder` backend over the same checkpoint that records nothing: for models that
/// re-read part of their weights at every use (`--low-memory` streaming of transformer blocks),
/// after a [`StrictLoad`] has checked the whole key set once.
#[derive(Clone)]
pub struct Streaming {
    source: Arc<dyn TensorSource>,
}

impl StrictLoad {
    /// A `VarBuilder` over this checkpoint that records nothing (see [`Streaming`]).
    pub fn streaming(&self, dtype: DType, device: &Device) -> candle_nn::VarBuilder<'static> {
        let backend = Streaming {
            source: self.source.clone(),
        };
        candle_nn::VarBuilder::from_backend(Box::new(backend), dtype, device.clone())
    }
}

impl SimpleBackend for Streaming {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.source.shape_of(name) {
            Some(shape) if shape == s.dims() => self.source.load(name, dev)?.to_dtype(dtype),
            Some(shape) => Err(candle_core::Error::ShapeMismatchBinaryOp {
                lhs: s,
                rhs: shape.into(),
                op: "streamed weight",
            }),
            None => Err(candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }),
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.source.load(name, dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.source.shape_of(name).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, shape: &[usize]) -> (String, Vec<usize>) {
        (name.to_string(), shape.to_vec())
    }

    #[test]
    fn reports_every_problem_in_one_error() {
        let expected = [t("a", &[2, 3]), t("b", &[4]), t("c", &[1])];
        let actual = [t("a", &[3, 2]), t("c", &[1]), t("d", &[5])];
        let err = check_tensors("ckpt.safetensors", &expected, &actual).unwrap_err();
        assert_eq!(err.missing, vec![t("b", &[4])]);
        assert_eq!(err.unexpected, vec![t("d", &[5])]);
        assert_eq!(err.misshaped, vec![("a".into(), vec![2, 3], vec![3, 2])]);
        let text = err.to_string();
        for needle in [
            "ckpt.safetensors",
            "missing     b",
            "unexpected  d",
            "mis-shaped  a",
        ] {
            assert!(text.contains(needle), "{needle:?} not in {text}");
        }
    }

    #[test]
    fn matching_sets_pass() {
        let both = [t("x", &[1, 2])];
        assert!(check_tensors("m", &both, &both).is_ok());
    }
}
