//! Developer tooling behind `trellis2 dev`: running one checkpoint on the golden files' named
//! tensors ([`forward`]); the Metal dispatch plan of an op or a flow forward ([`metal_plan`]); the mesh voxeliser on
//! tensors ([`voxelise`]).

pub mod forward;
pub mod metal_plan;
pub mod voxelise;
