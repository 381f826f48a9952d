//! Output files: writing them atomically, and reading them back for `inspect` and `compare`.

pub mod atomic;
pub mod glb;
pub mod ply;
pub mod tensors;

pub use atomic::write_atomic;
