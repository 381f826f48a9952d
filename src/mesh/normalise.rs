//! The texturing pipeline's mesh normalisation (upstream `Trellis2TexturingPipeline.preprocess_mesh`,
//! `trellis2/pipelines/trellis2_texturing.py` @ 5565d24): centre the bounding box on the origin,
//! scale its largest extent to 0.99999, and turn the mesh's y-up frame into the model's z-up one,
//! `(x, y, z) → (x, −z, y)`. Computed in f64 like upstream's NumPy, rounded to f32 once.

use super::error::{MeshError, Result};

/// Scale factor numerator: the largest extent becomes 0.99999 (just inside `[-0.5, 0.5]`).
const FILL: f64 = 0.99999;

/// The similarity transform from a mesh's own frame into the model's unit box.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UnitBoxFrame {
    /// Bounding-box centre in the mesh's frame.
    pub center: [f64; 3],
    /// Multiplier after centring.
    pub scale: f64,
}

impl UnitBoxFrame {
    /// The frame of `vertices`; fails on none, on a NaN or infinite coordinate, or when they
    /// all coincide (no extent to scale).
    pub fn fit(vertices: &[[f32; 3]]) -> Result<Self> {
        if vertices.is_empty() {
            return Err(MeshError::BadParameter {
                name: "vertex count",
                value: 0.0,
            });
        }
        if let Some(row) = vertices
            .iter()
            .position(|v| v.iter().any(|c| !c.is_finite()))
        {
            return Err(MeshError::NonFiniteVertex { row });
        }
        let mut lo = [f64::INFINITY; 3];
        let mut hi = [f64::NEG_INFINITY; 3];
        for v in vertices {
            for a in 0..3 {
                lo[a] = lo[a].min(f64::from(v[a]));
                hi[a] = hi[a].max(f64::from(v[a]));
            }
        }
        let extent = (0..3).map(|a| hi[a] - lo[a]).fold(0f64, f64::max);
        if extent <= 0.0 {
            return Err(MeshError::BadParameter {
                name: "largest bounding-box extent",
                value: extent,
            });
        }
        Ok(Self {
            center: std::array::from_fn(|a| (lo[a] + hi[a]) / 2.0),
            scale: FILL / extent,
        })
    }

    /// One point of the mesh's frame in the model's unit box.
    pub fn apply(&self, v: [f32; 3]) -> [f32; 3] {
        let p: [f64; 3] = std::array::from_fn(|a| (f64::from(v[a]) - self.center[a]) * self.scale);
        [p[0] as f32, -p[2] as f32, p[1] as f32]
    }

    /// Every vertex in the model's unit box.
    pub fn apply_all(&self, vertices: &[[f32; 3]]) -> Vec<[f32; 3]> {
        vertices.iter().map(|&v| self.apply(v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn largest_extent_fills_the_box_and_y_up_becomes_z_up() {
        let v = [[0.0f32, 0.0, 0.0], [2.0, 4.0, 1.0]];
        let f = UnitBoxFrame::fit(&v).unwrap();
        assert_eq!(f.center, [1.0, 2.0, 0.5]);
        let top = f.apply([1.0, 4.0, 0.5]);
        // +y (up in the mesh) lands on +z, at half the filled extent.
        assert_eq!(top, [0.0, 0.0, (2.0 * FILL / 4.0) as f32]);
        let front = f.apply([1.0, 2.0, 1.0]);
        assert_eq!(front, [0.0, -(0.5 * FILL / 4.0) as f32, 0.0]);
    }

    #[test]
    fn degenerate_inputs_are_refused() {
        assert!(UnitBoxFrame::fit(&[]).is_err());
        assert!(UnitBoxFrame::fit(&[[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]).is_err());
        let err = UnitBoxFrame::fit(&[[0.0, f32::INFINITY, 0.0]]).unwrap_err();
        assert!(err.to_string().contains("vertex 0"), "{err}");
    }
}
