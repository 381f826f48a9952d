//! Deterministic data for kernel checks: uniform values and voxel sets (sphere shells, blocks,
//! spaced voxels). Public so the integration tests and benchmarks build the same shapes.

/// Deterministic uniform values in [-1, 1) (the shapes are built in; so is the data).
pub fn uniform(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Voxel rows `[batch, x, y, z]` of a sphere shell: the cells of a `side³` grid whose centres
/// lie within `width` of the sphere of `radius` about the grid's centre (`|d − radius| <
/// width`), in x-major order. A width of 0.87 (half a voxel diagonal) gives ≈ 4π·r²·1.74 voxels
/// with ≈ 17 of 27 neighbours each, like the decoders' surfaces.
pub fn voxel_shell(batch: i32, side: i32, radius: f32, width: f32) -> Vec<[i32; 4]> {
    let centre = side as f32 / 2.0;
    // Whole (x, y) columns farther out than the shell's outer radius (with a voxel to spare
    // against rounding) are skipped: large shells have millions of cells and few voxels.
    let reach = radius + width + 1.0;
    let mut rows = Vec::new();
    for x in 0..side {
        let dx = x as f32 + 0.5 - centre;
        for y in 0..side {
            let dy = y as f32 + 0.5 - centre;
            let column = dx * dx + dy * dy;
            if column > reach * reach {
                continue;
            }
            for z in 0..side {
                let dz = z as f32 + 0.5 - centre;
                let d = (column + dz * dz).sqrt();
                if (d - radius).abs() < width {
                    rows.push([batch, x, y, z]);
                }
            }
        }
    }
    rows
}

/// The `side³` cube of voxels with its lowest corner at `(at, at, at)`, x-major.
pub fn voxel_block(batch: i32, side: i32, at: i32) -> Vec<[i32; 4]> {
    let mut rows = Vec::with_capacity((side * side * side).max(0) as usize);
    for x in 0..side {
        for y in 0..side {
            for z in 0..side {
                rows.push([batch, at + x, at + y, at + z]);
            }
        }
    }
    rows
}

/// `n` voxels three cells apart on a 4 × 5 × ⌈n/20⌉ lattice: none has a neighbour but itself.
pub fn spaced_voxels(n: usize) -> Vec<[i32; 4]> {
    (0..n as i32)
        .map(|i| [0, 3 * (i % 4), 3 * (i / 4 % 5), 3 * (i / 20)])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shells_blocks_and_spaced_voxels() {
        // Radius 9 in a 20³ grid: symmetric in the axes, every voxel within a voxel of r.
        let shell = voxel_shell(2, 20, 9.0, 1.0);
        assert!(!shell.is_empty() && shell.iter().all(|r| r[0] == 2));
        let mirrored = |r: &[i32; 4]| [r[0], 19 - r[1], r[2], r[3]];
        assert!(shell.iter().all(|r| shell.contains(&mirrored(r))));
        let mut sorted = shell.clone();
        sorted.sort();
        assert_eq!(sorted, shell, "x-major order");
        assert_eq!(voxel_block(0, 3, 5).len(), 27);
        assert_eq!(voxel_block(0, 3, 5)[26], [0, 7, 7, 7]);
        let spaced = spaced_voxels(70);
        assert_eq!(spaced[69], [0, 3, 6, 9]);
        assert!(uniform(3, 1000).iter().all(|v| (-1.0..1.0).contains(v)));
    }
}
