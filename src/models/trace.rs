//! Named intermediate tensors recorded during a forward pass, for parity tests against the
//! upstream forward-hook traces (`golden/<role>.trace.safetensors`, keys = module paths).

use candle_core::Tensor;

#[derive(Default)]
pub struct Trace {
    pub entries: Vec<(String, Tensor)>,
}

impl Trace {
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
}

/// Records `t` under `name` when tracing is on; free when it is off.
pub fn record(trace: &mut Option<&mut Trace>, name: impl Into<String>, t: &Tensor) {
    if let Some(tr) = trace.as_deref_mut() {
        tr.entries.push((name.into(), t.clone()));
    }
}
