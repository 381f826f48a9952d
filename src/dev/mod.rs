//! Developer tooling behind `trellis2 dev`: running one checkpoint on the golden files' named
//! tensors ([`forward`]).

pub mod forward;
