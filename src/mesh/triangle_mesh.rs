//! The triangle mesh every stage after extraction works on, and the small queries exporters
//! need (bounds, normals, index validation).

use super::error::{MeshError, Result};

/// An indexed triangle mesh in world units (TRELLIS.2 objects live in `[-0.5, 0.5]³`).
///
/// Winding follows upstream's dual-grid construction, which is fixed per edge axis rather
/// than per surface side, so it is **not** globally consistent (docs/MODEL.md §6.1).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mesh {
    pub vertices: Vec<[f32; 3]>,
    pub faces: Vec<[u32; 3]>,
}

impl Mesh {
    /// A mesh whose faces are checked to reference existing vertices.
    pub fn new(vertices: Vec<[f32; 3]>, faces: Vec<[u32; 3]>) -> Result<Self> {
        let mesh = Self { vertices, faces };
        mesh.check_indices()?;
        Ok(mesh)
    }

    /// Fails on the first face index that points past the vertex list, or on more vertices
    /// than `u32` can number.
    pub fn check_indices(&self) -> Result<()> {
        let n = self.vertices.len();
        if n > u32::MAX as usize {
            return Err(MeshError::TooMany {
                what: "vertices",
                count: n,
            });
        }
        for (face, f) in self.faces.iter().enumerate() {
            if let Some(&index) = f.iter().find(|&&i| i as usize >= n) {
                return Err(MeshError::FaceIndexOutOfRange {
                    face,
                    index,
                    vertices: n,
                });
            }
        }
        Ok(())
    }

    /// `true` when there is nothing to draw.
    pub fn is_empty(&self) -> bool {
        self.faces.is_empty()
    }

    /// Axis-aligned bounds `(min, max)` of all vertices (referenced or not), `None` when there
    /// are none.
    pub fn bounds(&self) -> Option<([f32; 3], [f32; 3])> {
        let first = *self.vertices.first()?;
        Some(self.vertices.iter().fold((first, first), |(lo, hi), v| {
            (
                [lo[0].min(v[0]), lo[1].min(v[1]), lo[2].min(v[2])],
                [hi[0].max(v[0]), hi[1].max(v[1]), hi[2].max(v[2])],
            )
        }))
    }

    /// Unit vertex normals: the area-weighted sum of the adjacent faces' normals as wound.
    /// Vertices with no face, or whose face normals cancel, get `[0, 0, 1]` so that every
    /// normal is unit length (glTF requires it). Meaningful once faces are consistently
    /// oriented; indices must be valid (see [`Mesh::check_indices`]).
    pub fn vertex_normals(&self) -> Result<Vec<[f32; 3]>> {
        self.check_indices()?;
        Ok(vertex_normals(&self.vertices, &self.faces))
    }
}

/// [`Mesh::vertex_normals`] of `faces` over `vertices`, whose indices must be valid.
pub fn vertex_normals(vertices: &[[f32; 3]], faces: &[[u32; 3]]) -> Vec<[f32; 3]> {
    let mut sums = vec![[0.0f64; 3]; vertices.len()];
    for f in faces {
        // Unnormalised cross product = 2·area·n, which is the area weighting.
        let n = face_cross(vertices, *f);
        for &i in f {
            let s = &mut sums[i as usize];
            s[0] += n[0];
            s[1] += n[1];
            s[2] += n[2];
        }
    }
    sums.iter()
        .map(|s| {
            let len = (s[0] * s[0] + s[1] * s[1] + s[2] * s[2]).sqrt();
            if len > 0.0 && len.is_finite() {
                [
                    (s[0] / len) as f32,
                    (s[1] / len) as f32,
                    (s[2] / len) as f32,
                ]
            } else {
                [0.0, 0.0, 1.0]
            }
        })
        .collect()
}

/// `(v1 − v0) × (v2 − v0)` in f64.
pub(crate) fn face_cross(vertices: &[[f32; 3]], [a, b, c]: [u32; 3]) -> [f64; 3] {
    let p = |i: u32| vertices[i as usize].map(f64::from);
    let (p0, p1, p2) = (p(a), p(b), p(c));
    let e1 = [p1[0] - p0[0], p1[1] - p0[1], p1[2] - p0[2]];
    let e2 = [p2[0] - p0[0], p2[1] - p0[1], p2[2] - p0[2]];
    [
        e1[1] * e2[2] - e1[2] * e2[1],
        e1[2] * e2[0] - e1[0] * e2[2],
        e1[0] * e2[1] - e1[1] * e2[0],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit_square() -> Mesh {
        Mesh::new(
            vec![
                [0.0, 0.0, 0.0],
                [1.0, 0.0, 0.0],
                [1.0, 1.0, 0.0],
                [0.0, 1.0, 0.0],
            ],
            vec![[0, 1, 2], [0, 2, 3]],
        )
        .expect("valid square")
    }

    #[test]
    fn bounds_and_normals_of_a_square() {
        let mesh = unit_square();
        assert_eq!(mesh.bounds(), Some(([0.0; 3], [1.0, 1.0, 0.0])));
        for n in mesh.vertex_normals().expect("valid") {
            assert_eq!(n, [0.0, 0.0, 1.0]);
        }
        let mut flipped = mesh.clone();
        flipped.faces = vec![[0, 2, 1], [0, 3, 2]];
        for n in flipped.vertex_normals().expect("valid") {
            assert_eq!(n, [0.0, 0.0, -1.0]);
        }
        assert_eq!(Mesh::default().bounds(), None);
    }

    #[test]
    fn rejects_out_of_range_faces() {
        assert_eq!(
            Mesh::new(vec![[0.0; 3]; 3], vec![[0, 1, 2], [2, 3, 0]]).err(),
            Some(MeshError::FaceIndexOutOfRange {
                face: 1,
                index: 3,
                vertices: 3
            })
        );
    }
}
