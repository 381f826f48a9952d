//! Time of the mesh → flexible dual grid voxeliser (the texturing pipeline's step before the
//! shape encoder) on a normalised UV sphere of about `VOXELISE_BENCH_FACES` faces (default
//! 200k; the target shape is ≈ 1 M) at grids 512 and 1024. Run with
//! `cargo bench --bench voxelise`.

use std::time::Instant;

use trellis2::mesh::{voxelise, TEXTURING_WEIGHTS};

/// A UV sphere of radius 0.45 with `rings × segments` quads (two triangles each, fans at the
/// poles): about `2·rings·segments` faces.
fn uv_sphere(rings: u32, segments: u32) -> (Vec<[f32; 3]>, Vec<[u32; 3]>) {
    let mut v = vec![[0.0, 0.0, 0.45]];
    for r in 1..rings {
        let theta = std::f32::consts::PI * r as f32 / rings as f32;
        for s in 0..segments {
            let phi = std::f32::consts::TAU * s as f32 / segments as f32;
            v.push([
                0.45 * theta.sin() * phi.cos(),
                0.45 * theta.sin() * phi.sin(),
                0.45 * theta.cos(),
            ]);
        }
    }
    v.push([0.0, 0.0, -0.45]);
    let south = v.len() as u32 - 1;
    let at = |r: u32, s: u32| 1 + (r - 1) * segments + s % segments;
    let mut f = Vec::new();
    for s in 0..segments {
        f.push([0, at(1, s), at(1, s + 1)]);
        f.push([south, at(rings - 1, s + 1), at(rings - 1, s)]);
    }
    for r in 1..rings - 1 {
        for s in 0..segments {
            f.push([at(r, s), at(r + 1, s), at(r + 1, s + 1)]);
            f.push([at(r, s), at(r + 1, s + 1), at(r, s + 1)]);
        }
    }
    (v, f)
}

fn main() {
    let faces: u32 = std::env::var("VOXELISE_BENCH_FACES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let side = ((faces / 2) as f32).sqrt().max(4.0) as u32;
    let (v, f) = uv_sphere(side, side);
    println!(
        "UV sphere: {} vertices, {} faces, {} threads",
        v.len(),
        f.len(),
        rayon::current_num_threads()
    );
    for grid in [512u32, 1024] {
        let start = Instant::now();
        let out = voxelise(&v, &f, grid, TEXTURING_WEIGHTS).expect("voxelise");
        println!(
            "grid {grid:>4}: {:>9} voxels in {:.2} s",
            out.voxels.len(),
            start.elapsed().as_secs_f64()
        );
    }
}
