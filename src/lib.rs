//! trellis2: Microsoft's TRELLIS.2 image-to-3D model in Rust (candle), with Metal, CUDA and CPU
//! backends. The binary in `src/main.rs` is a thin CLI over this library.

pub mod compare;
pub mod dev;
pub mod export;
pub mod files;
pub mod image;
pub mod mesh;
pub mod models;
pub mod ops;
pub mod pipeline;
pub mod render;
pub mod rng;
pub mod selftest;
pub mod sparse;
#[cfg(test)]
mod test_util;
pub mod vec3;
pub mod weights;
