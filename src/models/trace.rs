//! Optional recording of per-block intermediates under upstream module paths, for the parity
//! tests against the golden `*.trace.safetensors` files.

use candle_core::{Result, Tensor};

/// Collects `(upstream module path, tensor)` pairs when enabled; costs nothing when off.
#[derive(Debug, Default)]
pub struct Trace {
    entries: Option<Vec<(String, Tensor)>>,
}

impl Trace {
    /// A trace that records nothing.
    pub fn off() -> Self {
        Self { entries: None }
    }

    /// A trace that keeps every recorded tensor.
    pub fn on() -> Self {
        Self {
            entries: Some(Vec::new()),
        }
    }

    /// Whether tensors are being kept.
    pub fn is_on(&self) -> bool {
        self.entries.is_some()
    }

    /// Records `make()` under `name` if enabled (`make` is not run otherwise).
    pub fn record(&mut self, name: &str, make: impl FnOnce() -> Result<Tensor>) -> Result<()> {
        if let Some(e) = self.entries.as_mut() {
            e.push((name.to_string(), make()?));
        }
        Ok(())
    }

    /// The recorded tensors so far, in recording order.
    pub fn entries(&self) -> &[(String, Tensor)] {
        self.entries.as_deref().unwrap_or_default()
    }

    /// The recorded tensors, in recording order.
    pub fn into_entries(self) -> Vec<(String, Tensor)> {
        self.entries.unwrap_or_default()
    }
}
