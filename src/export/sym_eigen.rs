//! Eigen-decomposition of symmetric 3×3 matrices (cyclic Jacobi in f64): small, deterministic
//! and exact enough for the local plane fits and normal-covariance axes of the exporters.

use crate::vec3::{cross, dot};

/// Eigenvalues in ascending order with their unit eigenvectors (`vectors[k]` belongs to
/// `values[k]`); the vectors form a right-handed orthonormal basis.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SymEigen3 {
    pub values: [f64; 3],
    pub vectors: [[f64; 3]; 3],
}

/// Jacobi sweeps; 3×3 matrices converge to f64 precision in well under ten.
const MAX_SWEEPS: usize = 32;

/// Decomposes the symmetric matrix `m` (only its upper triangle is read).
pub fn sym_eigen3(m: [[f64; 3]; 3]) -> SymEigen3 {
    let mut a = [
        [m[0][0], m[0][1], m[0][2]],
        [m[0][1], m[1][1], m[1][2]],
        [m[0][2], m[1][2], m[2][2]],
    ];
    // Columns of v are the eigenvectors.
    let mut v = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    for _ in 0..MAX_SWEEPS {
        let off = a[0][1].abs() + a[0][2].abs() + a[1][2].abs();
        let diag = a[0][0].abs() + a[1][1].abs() + a[2][2].abs();
        if off <= f64::EPSILON * diag * 1e-3 || off == 0.0 || !off.is_finite() {
            break;
        }
        for (p, q) in [(0, 1), (0, 2), (1, 2)] {
            if a[p][q] == 0.0 {
                continue;
            }
            // Rotation that zeroes a[p][q] (Numerical Recipes' stable form).
            let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
            let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
            let c = 1.0 / (t * t + 1.0).sqrt();
            let s = t * c;
            for row in &mut a {
                let (x, y) = (row[p], row[q]);
                row[p] = c * x - s * y;
                row[q] = s * x + c * y;
            }
            let (row_p, row_q) = (a[p], a[q]);
            a[p] = std::array::from_fn(|k| c * row_p[k] - s * row_q[k]);
            a[q] = std::array::from_fn(|k| s * row_p[k] + c * row_q[k]);
            for row in &mut v {
                let (x, y) = (row[p], row[q]);
                row[p] = c * x - s * y;
                row[q] = s * x + c * y;
            }
        }
    }
    let mut order = [0usize, 1, 2];
    order.sort_by(|&i, &j| a[i][i].total_cmp(&a[j][j]));
    let values = order.map(|k| a[k][k]);
    let mut vectors = order.map(|k| [v[0][k], v[1][k], v[2][k]]);
    // Right-handed: third = first × second (flips it at most).
    let c = cross(vectors[0], vectors[1]);
    if dot(c, vectors[2]) < 0.0 {
        vectors[2] = vectors[2].map(|x| -x);
    }
    SymEigen3 { values, vectors }
}

/// `v / |v|`, or `None` for a zero or non-finite vector.
#[inline]
pub fn normalized(v: [f64; 3]) -> Option<[f64; 3]> {
    let len = dot(v, v).sqrt();
    (len > 0.0 && len.is_finite()).then(|| v.map(|x| x / len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_a_rotated_diagonal_matrix() {
        // R · diag(1, 2, 5) · Rᵀ with R a rotation about +Z.
        let (c, s) = (0.6f64, 0.8f64);
        let r = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]];
        let d = [1.0, 2.0, 5.0];
        let mut m = [[0.0; 3]; 3];
        for i in 0..3 {
            for j in 0..3 {
                m[i][j] = (0..3).map(|k| r[i][k] * d[k] * r[j][k]).sum();
            }
        }
        let e = sym_eigen3(m);
        for k in 0..3 {
            assert!((e.values[k] - d[k]).abs() < 1e-12, "{:?}", e.values);
            let col = [r[0][k], r[1][k], r[2][k]];
            assert!((dot(col, e.vectors[k]).abs() - 1.0).abs() < 1e-12);
        }
        let c = cross(e.vectors[0], e.vectors[1]);
        assert!(dot(c, e.vectors[2]) > 0.999_999);
    }

    #[test]
    fn degenerate_matrices_give_an_orthonormal_basis() {
        for m in [[[0.0; 3]; 3], [[1.0; 3]; 3]] {
            let e = sym_eigen3(m);
            for i in 0..3 {
                for j in 0..3 {
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((dot(e.vectors[i], e.vectors[j]) - want).abs() < 1e-12);
                }
            }
        }
    }
}
