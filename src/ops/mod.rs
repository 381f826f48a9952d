//! Backend-dispatched primitives as candle `CustomOp`s. The CPU implementation of every op is
//! the reference the Metal and CUDA kernels are tested against (docs/ARCHITECTURE.md, "Layers").
//!
//! Layering: `ops` is the lowest layer of the crate; it imports no other top-level module
//! (`sparse`, `models`, `pipeline`, ...), which may all import it. Inside, an op with kernels is
//! a folder: `<op>/mod.rs` holds the `CustomOp`, the public validating function, the CPU
//! reference and its `_slow` twin, and its forwards call the op's own launchers
//! `<op>/cuda.rs` and `<op>/metal.rs`. Those backend files are leaves: they import only
//! [`vocab`], [`tuning`], [`storage`], `sample_offsets` and their own backend's utilities
//! ([`cuda`](self) or [`metal`]), never another op, the other backend or a higher layer; the
//! backend utilities import no op. tests/architecture.rs checks these rules.

pub mod attention;
pub mod bias_act;
pub mod c2s_skip_add;
pub mod cascade_quantize;
pub mod conv3d;
pub mod conv_order;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
pub mod deform_conv;
pub mod gated_residual;
pub mod i32_equal;
pub mod interpolate;
pub mod layer_norm;
pub mod layer_norm_act;
pub mod linear;
pub mod metal;
pub mod neighbour_map;
pub mod norm_modulate;
pub mod norm_params;
pub mod rms_norm_rope;
pub mod rope;
mod sample_offsets;
pub mod sparse_conv;
pub(crate) mod storage;
pub mod subdivide;
pub mod tuning;
pub mod vocab;

pub use conv3d::{conv3d_k3, Conv3dK3, GridNeighbours};
pub use deform_conv::{deform_conv2d, DeformConvConfig};
pub use interpolate::interpolate_bilinear_aligned;
pub use layer_norm::layer_norm;
pub use sparse_conv::{submanifold_conv3d, submanifold_conv3d_map, submanifold_conv3d_slow};

/// Prepares `device` for the ops once, when it is opened: on CUDA its memory pool keeps freed
/// memory (otherwise every synchronisation hands it back to the driver and the next large
/// allocation maps it again); nothing elsewhere.
pub fn prepare_device(device: &candle_core::Device) -> candle_core::Result<()> {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(d) = device {
        cuda::retain_freed_memory(d)?;
    }
    let _ = device;
    Ok(())
}
