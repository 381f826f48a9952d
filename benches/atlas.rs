//! UV-atlas time on decimated closed shells the size of real outputs: a 512³ sphere shell and a
//! 1024³ one (≈ 1.6 M and 6.3 M raw faces), each decimated to upstream's default 300k faces
//! and unwrapped into one 2048² atlas. Run with `cargo bench --bench atlas`;
//! `ATLAS_BENCH_1024=0` skips the 1024³ shell (its extraction alone takes half a minute here).

mod common {
    #[path = "../../tests/common/voxel_shapes.rs"]
    #[allow(dead_code)] // the box helper is for the tests
    pub mod voxel_shapes;

    #[path = "../../tests/common/closed_shapes.rs"]
    #[allow(dead_code)] // the torus is for the tests
    pub mod closed_shapes;
}

use std::time::Instant;

use trellis2::mesh::{atlas_stats, decimate, unwrap, AtlasOptions};

/// Upstream's app default face budget.
const FACES: usize = 300_000;

fn shell(grid: i32) {
    let start = Instant::now();
    let raw = common::closed_shapes::sphere(grid);
    let extract_s = start.elapsed().as_secs_f64();
    let mesh = decimate(&raw, &[], &[], FACES).expect("decimates").mesh;
    let indices: Vec<u32> = mesh.faces.iter().flatten().copied().collect();
    let opts = AtlasOptions::default();
    let mut best = f64::INFINITY;
    let mut atlas = None;
    for _ in 0..3 {
        let a = unwrap(&mesh.vertices, &indices, &opts).expect("unwraps");
        best = best.min(a.seconds);
        atlas = Some(a);
    }
    let stats = atlas_stats(&atlas.expect("ran"));
    println!(
        "sphere shell {grid}³ ({} raw faces, built in {extract_s:.1} s) → {} faces: unwrap {best:.2} s \
         (best of 3), {} charts, utilisation {:.1} % at {}², {} overlapping",
        raw.faces.len(),
        mesh.faces.len(),
        stats.charts,
        stats.utilisation * 100.0,
        opts.texture_size,
        stats.overlapping_triangles
    );
}

fn main() {
    println!("rayon threads: {}", rayon::current_num_threads());
    shell(512);
    if std::env::var("ATLAS_BENCH_1024").as_deref() != Ok("0") {
        shell(1024);
    }
}
