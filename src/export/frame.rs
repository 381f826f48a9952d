//! Which axis points up in a written file, and the rotation that gets it there.
//!
//! The pipeline's frame (the decoders', the mesh's, the voxels') is **Z-up**: upstream's renderers
//! orbit the object around +Z, and upstream's GLB exporter (`o_voxel.postprocess.to_glb`
//! @ TRELLIS.2 main) rotates `(x, y, z) → (x, z, −y)` before writing, because glTF is Y-up.
//!
//! [`Up::Y`] applies that same rotation (−90° about +X: proper, so handedness and triangle
//! winding are kept); [`Up::Z`] writes the pipeline frame unchanged. The default is `Y` for every
//! writer, so that one setting opens upright in glTF viewers (three.js, Babylon, model-viewer,
//! Windows 3D Viewer), in Blender's glTF importer (which converts Y-up to Blender's Z-up), in
//! MeshLab (whose default view has +Y up) and in three.js-based splat viewers, and so that the
//! mesh PLY and the GLB hold identical positions (`trellis2 compare mesh.ply mesh.glb` passes).
//! Choose `Z` for tools that read PLY as Z-up: Blender's PLY importer (default up axis Z), CAD
//! and most robotics tools. Splat viewers that assume the INRIA/COLMAP camera frame (+Y down)
//! show either choice rotated; they let the user rotate the scene.

use std::fmt;
use std::ops::Neg;

/// The up axis of an output file. See the module documentation for the exact rotation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Up {
    /// +Y up (glTF's convention): `(x, y, z) → (x, z, −y)`.
    #[default]
    Y,
    /// +Z up (the pipeline frame, unchanged).
    Z,
}

impl Up {
    /// Maps a point or a direction from the pipeline frame to the file frame.
    #[inline]
    pub fn apply<T: Copy + Neg<Output = T>>(self, v: [T; 3]) -> [T; 3] {
        match self {
            Up::Y => [v[0], v[2], -v[1]],
            Up::Z => v,
        }
    }

    /// `"y"` or `"z"`, as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            Up::Y => "y",
            Up::Z => "z",
        }
    }

    /// A one-line description for file headers and reports.
    pub fn describe(self) -> &'static str {
        match self {
            Up::Y => "+Y up (pipeline frame rotated (x, y, z) -> (x, z, -y))",
            Up::Z => "+Z up (pipeline frame unchanged)",
        }
    }
}

impl fmt::Display for Up {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cross(a: [f32; 3], b: [f32; 3]) -> [f32; 3] {
        [
            a[1] * b[2] - a[2] * b[1],
            a[2] * b[0] - a[0] * b[2],
            a[0] * b[1] - a[1] * b[0],
        ]
    }

    #[test]
    fn y_up_sends_pipeline_up_to_plus_y_and_is_a_proper_rotation() {
        assert_eq!(Up::Y.apply([0.0f32, 0.0, 1.0]), [0.0, 1.0, 0.0]);
        assert_eq!(Up::Z.apply([1.0f64, 2.0, 3.0]), [1.0, 2.0, 3.0]);
        // det = +1: the image of x × y is the image of z (winding preserved).
        let (x, y, z) = (
            Up::Y.apply([1.0f32, 0.0, 0.0]),
            Up::Y.apply([0.0f32, 1.0, 0.0]),
            Up::Y.apply([0.0f32, 0.0, 1.0]),
        );
        assert_eq!(cross(x, y), z);
    }

    #[test]
    fn the_default_is_y_up() {
        assert_eq!(Up::default(), Up::Y);
    }
}
