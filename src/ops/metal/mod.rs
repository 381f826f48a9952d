//! The Metal side of the GPU ops (docs/ARCHITECTURE.md, "Backends").
//!
//! `kargs`, `dispatch` and the `*_plan` modules are plain Rust and always compiled: they decide
//! kernel names, grids, threadgroup memory and how a long op is split into several dispatches,
//! and the MSL emulator tests (tests/metal_emu.rs) execute exactly those plans. The encoding
//! itself (`pipelines`, `sparse_conv`, `attention`, `deform_conv`, `norms`, `elementwise`...)
//! needs candle's Metal backend and only exists with the `metal` feature.

pub mod dispatch;
pub mod elementwise_plan;
pub mod kargs;
pub mod neighbour_plan;
pub mod norms_plan;

#[cfg(feature = "metal")]
pub(crate) mod attention;
#[cfg(feature = "metal")]
pub(crate) mod deform_conv;
#[cfg(feature = "metal")]
pub(crate) mod elementwise;
#[cfg(feature = "metal")]
mod encode;
#[cfg(feature = "metal")]
pub(crate) mod neighbour_map;
#[cfg(feature = "metal")]
pub(crate) mod norms;
#[cfg(feature = "metal")]
mod pipelines;
#[cfg(feature = "metal")]
pub(crate) mod sparse_conv;
