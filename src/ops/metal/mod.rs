//! Metal utilities of the custom ops (docs/ARCHITECTURE.md, "Backends"); the launchers
//! themselves are each op's `metal.rs` (`src/ops/<op>/metal.rs`). Imports no op.
//!
//! `kargs`, `dispatch`, `budget`, `capabilities` and the `*_plan` modules are plain Rust and always compiled:
//! they decide kernel names, grids, threadgroup memory, each dispatch's estimated work and the
//! command-buffer budget, and the MSL emulator tests (tests/metal_emu.rs) execute exactly those
//! plans. Device setup and the encoding (`setup`, `pipelines`, `encode`, `buffers`, `submit`) need candle's Metal
//! backend and only exists with the `metal` feature.

pub mod budget;
pub mod capabilities;
pub mod conv_order_plan;
pub mod dispatch;
pub mod elementwise_plan;
pub mod kargs;
pub mod norms_plan;

/// The neighbour map's plan, shared with the CUDA kernel (it lives in `ops::vocab`).
pub mod neighbour_plan {
    pub use crate::ops::vocab::{neighbour_plan, neighbour_plan_for, NeighbourPlan, KEY_BITS};
}

#[cfg(feature = "metal")]
mod buffers;
#[cfg(feature = "metal")]
pub(crate) mod encode;
#[cfg(feature = "metal")]
pub(crate) mod pipelines;
#[cfg(feature = "metal")]
pub(crate) mod setup;
#[cfg(feature = "metal")]
pub(crate) mod submit;

#[cfg(feature = "metal")]
pub(crate) use buffers::{output, start, Operand};
