//! Why a mesh operation refused its input. Every message is one line and carries the bad value.

use std::fmt;

/// Errors of `src/mesh/`.
#[derive(Clone, Debug, PartialEq)]
pub enum MeshError {
    /// A flat buffer whose length is not `rows × width`.
    BadLength {
        what: &'static str,
        len: usize,
        width: usize,
    },
    /// Two inputs that must have one row per voxel (or per point) disagree.
    RowCountMismatch {
        what: &'static str,
        rows: usize,
        expected: usize,
    },
    /// A grid size of zero, or one too large for 64-bit voxel keys.
    BadGridSize { grid_size: u32 },
    /// A voxel coordinate outside `[0, grid_size)³`.
    CoordOutOfGrid {
        row: usize,
        coord: [i32; 3],
        grid_size: u32,
    },
    /// The same voxel twice: upstream's hash map would keep an arbitrary one.
    DuplicateCoord {
        row: usize,
        first_row: usize,
        coord: [i32; 3],
    },
    /// A negative batch index, or batch rows that are not contiguous and ascending.
    BadBatchIndex {
        row: usize,
        batch: i32,
        previous: i32,
    },
    /// More voxels or vertices than `u32` indices can address.
    TooMany { what: &'static str, count: usize },
    /// A face that points past the vertex list.
    FaceIndexOutOfRange {
        face: usize,
        index: u32,
        vertices: usize,
    },
    /// A scalar parameter outside its valid range (NaN, infinite, non-positive…).
    BadParameter { name: &'static str, value: f64 },
    /// A tensor that could not be read (wrong rank, dtype or device transfer failure).
    Tensor { what: &'static str, message: String },
    /// A vertex with a NaN or infinite coordinate.
    NonFiniteVertex { row: usize },
    /// A vertex outside the normalised box `[-0.5, 0.5]³` the voxeliser works in.
    VertexOutsideBox { row: usize, vertex: [f32; 3] },
    /// The simplifier refused the mesh (limits, non-finite values).
    Decimation { message: String },
}

impl fmt::Display for MeshError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadLength { what, len, width } => write!(
                f,
                "{what}: {len} values is not a whole number of rows of {width}"
            ),
            Self::RowCountMismatch {
                what,
                rows,
                expected,
            } => write!(f, "{what}: {rows} rows, expected {expected}"),
            Self::BadGridSize { grid_size } => write!(
                f,
                "grid size {grid_size} is invalid (need 1..={})",
                crate::mesh::voxel_index::MAX_GRID_SIZE
            ),
            Self::CoordOutOfGrid {
                row,
                coord,
                grid_size,
            } => write!(
                f,
                "voxel {row} at {coord:?} lies outside the grid [0, {grid_size})³"
            ),
            Self::DuplicateCoord {
                row,
                first_row,
                coord,
            } => write!(f, "voxel {row} at {coord:?} duplicates voxel {first_row}"),
            Self::BadBatchIndex {
                row,
                batch,
                previous,
            } => write!(
                f,
                "row {row} has batch index {batch} after {previous}; batch indices must be \
                 non-negative and rows of one batch item contiguous in ascending order"
            ),
            Self::TooMany { what, count } => {
                write!(f, "{count} {what} exceed the u32 index range")
            }
            Self::FaceIndexOutOfRange {
                face,
                index,
                vertices,
            } => write!(
                f,
                "face {face} references vertex {index} but the mesh has {vertices} vertices"
            ),
            Self::BadParameter { name, value } => write!(f, "{name} = {value} is invalid"),
            Self::Tensor { what, message } => write!(f, "{what}: {message}"),
            Self::NonFiniteVertex { row } => {
                write!(f, "vertex {row} has a non-finite coordinate")
            }
            Self::VertexOutsideBox { row, vertex } => write!(
                f,
                "vertex {row} at {vertex:?} lies outside the normalised box [-0.5, 0.5]³"
            ),
            Self::Decimation { message } => write!(f, "decimation failed: {message}"),
        }
    }
}

impl std::error::Error for MeshError {}

/// Result alias of the mesh layer.
pub type Result<T> = std::result::Result<T, MeshError>;
