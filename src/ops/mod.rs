//! Backend-dispatched primitives as candle `CustomOp`s. The CPU implementation of every op is
//! the reference the Metal and CUDA kernels are tested against (docs/ARCHITECTURE.md, "Layers").

pub mod attention;
pub mod bias_act;
pub mod c2s_skip_add;
pub mod conv3d;
pub(crate) mod cpu_storage;
#[cfg(feature = "cuda")]
mod cublaslt;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
pub mod deform_conv;
pub mod gated_residual;
pub mod interpolate;
pub mod layer_norm;
pub mod layer_norm_act;
pub mod linear;
pub mod metal;
pub mod norm_modulate;
pub mod norm_params;
pub mod rms_norm_rope;
pub mod rope;
mod sample_offsets;
pub mod sparse_conv;
pub mod tuning;

pub use conv3d::{conv3d_k3, Conv3dK3, GridNeighbours};
pub use deform_conv::{deform_conv2d, DeformConvConfig};
pub use interpolate::interpolate_bilinear_aligned;
pub use layer_norm::layer_norm;
pub use sparse_conv::{submanifold_conv3d, submanifold_conv3d_map, submanifold_conv3d_slow};
