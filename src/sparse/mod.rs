//! Sparse voxel tensors (docs/MODEL.md §8, §5.2): validated coordinate sets, cached 3×3×3 neighbour maps,
//! channel→space subdivision and space→channel downsampling. Data structures only: the ops that build and use them (the
//! neighbour map, the conv order, the subdivision kernels, the per-voxel LayerNorm) are in `ops`.

pub mod channel_to_space;
pub mod conv_order;
pub mod coords;
pub mod neighbours;
pub mod space_to_channel;
pub mod tensor;

pub use channel_to_space::Subdivision;
pub use coords::{CoordSet, MAX_COORD};
pub use neighbours::{NeighbourMap, ABSENT, TAPS};
pub use space_to_channel::Downsampling;
pub use tensor::SparseTensor;
