//! Mesh extraction and post-processing (docs/ARCHITECTURE.md layer "mesh"; never imports models or CLI).
//!
//! Data flow: shape decoder voxels (raw 7 channels) → [`shape_voxels`] (activations, batch
//! split) → [`dual_grid`] (flexible dual grid → triangles) → [`fill_holes`] → exporters, which
//! colour vertices through [`attributes`] (trilinear lookup of the texture voxels) and may
//! first reduce the face count with [`decimate`]; textured exports cut the mesh into a UV
//! [`atlas`], [`bake`] the voxels into it and may add a [`normal_map`] of the raw surface.

pub mod atlas;
pub mod attributes;
pub mod bake;
pub mod decimate;
pub mod dual_grid;
pub mod error;
pub mod fill_holes;
pub mod normal_map;
pub mod normalise;
pub mod shape_voxels;
pub mod triangle_mesh;
pub mod voxel_index;
pub mod voxelise;

pub use atlas::{atlas_stats, unwrap, AtlasOptions, AtlasStats, UvAtlas};
pub use attributes::VoxelAttributes;
pub use decimate::{decimate, decimate_in_pieces, piece_count, Decimated, PBR_ATTRIBUTE_WEIGHTS};
pub use dual_grid::{decoder_output_to_meshes, flexible_dual_grid_to_mesh};
pub use error::MeshError;
pub use fill_holes::{fill_holes, FillHolesReport, DEFAULT_MAX_HOLE_PERIMETER};
pub use normalise::UnitBoxFrame;
pub use shape_voxels::{split_decoder_output, split_decoder_tensors, DualGridVoxels};
pub use triangle_mesh::Mesh;
pub use voxel_index::VoxelIndex;
pub use voxelise::{voxelise, QefWeights, VoxelisedMesh, TEXTURING_WEIGHTS};
