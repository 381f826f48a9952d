//! Output files: the writers (Gaussian-splat PLY, mesh PLY, GLB) of one generated object
//! ([`Asset`]), each atomic and deterministic, and the readers `inspect` and `compare` use.
//!
//! Frame: every writer takes an [`Up`]; the default (+Y up) is glTF's and opens upright in
//! common viewers — see [`frame`].

pub mod asset;
pub mod atomic;
pub mod color;
pub mod face_orientation;
pub mod frame;
pub mod glb;
pub mod glb_writer;
pub mod mesh_arrays;
pub mod mesh_input;
pub mod mesh_ply;
pub mod ply;
pub mod ply_header;
pub mod splat;
pub mod splat_fit;
pub mod spz;
pub mod sym_eigen;
pub mod tensors;
pub mod voxel_frames;

pub use asset::Asset;
pub use atomic::write_atomic;
pub use frame::Up;
pub use glb_writer::write_glb;
pub use mesh_ply::write_mesh_ply;
pub use splat::{write_splat_ply, SplatBudget};
pub use spz::write_splat_spz;
