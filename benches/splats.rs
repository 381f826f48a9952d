//! The splat export of a large object: the voxels' surface patches, the octree merge to a
//! splat budget, the Gaussians' fit, then the PLY and SPZ writes, each phase's wall time, the
//! splat counts and file sizes, and the process's peak memory (VmHWM). The object: the export
//! bench's three concentric sphere shells with an analytic PBR field
//! (`tests/common/textured_shapes.rs`), ≈ 7 M voxels at 1024³.
//! Run with `cargo bench --bench splats`; `SPLATS_BENCH_GRID=N` changes the grid (default
//! 1024), `SPLATS_BENCH_BUDGET=N` the budget (default 1000000; 0 = one splat per voxel);
//! `SPLATS_BENCH_KEEP=DIR` keeps the PLY and SPZ there (to compare bytes across versions and
//! thread counts).

#[path = "common/measure.rs"]
mod measure;
#[path = "../tests/common/textured_shapes.rs"]
#[allow(dead_code)] // the measures are for the tests
mod textured_shapes;
#[path = "../tests/common/voxel_shapes.rs"]
#[allow(dead_code)]
mod voxel_shapes;

use std::time::Instant;

use measure::{env_or, peak_gib};

use trellis2::export::face_orientation::faces_wound_outward;
use trellis2::export::splat::write_fitted_splat_ply;
use trellis2::export::splat_fit::{fit_splats_timed, SplatShape};
use trellis2::export::spz::write_fitted_splat_spz;
use trellis2::export::{SplatBudget, Up};

fn mib(path: &std::path::Path) -> f64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) as f64 / (1 << 20) as f64
}

fn main() {
    let grid = env_or("SPLATS_BENCH_GRID", 1024) as i32;
    let budget = match env_or("SPLATS_BENCH_BUDGET", 1_000_000) {
        0 => SplatBudget::All,
        n => SplatBudget::AtMost(n),
    };
    println!("rayon threads: {}", rayon::current_num_threads());
    let start = Instant::now();
    let shape = textured_shapes::nested_spheres(grid);
    let asset = &shape.asset;
    println!(
        "object {grid}³: {} voxels, {} faces (built in {:.1} s, peak {:.2} GiB)",
        asset.voxel_count(),
        asset.mesh().faces.len(),
        start.elapsed().as_secs_f64(),
        peak_gib().unwrap_or(f64::NAN)
    );
    let t = Instant::now();
    let (splats, times) = fit_splats_timed(asset, budget, &SplatShape::default());
    let synth = t.elapsed().as_secs_f64();
    println!(
        "{budget:?}: {} splats in {synth:.2} s = patches {:.2} + merge {:.2} (its serial queue \
         {:.2}) + fit {:.2} s (peak {:.2} GiB)",
        splats.len(),
        times.patches_seconds,
        times.merge_seconds,
        times.queue_seconds,
        times.fit_seconds,
        peak_gib().unwrap_or(f64::NAN)
    );
    // What the patches phase spends re-winding the mesh outward, timed apart.
    let t = Instant::now();
    drop(faces_wound_outward(asset.mesh()));
    println!(
        "  of the patches: orienting the faces {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let dir = tempfile::tempdir().expect("temporary folder");
    let out = std::env::var_os("SPLATS_BENCH_KEEP")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.path().to_path_buf());
    std::fs::create_dir_all(&out).expect("the output folder");
    let (ply, spz) = (out.join("a.splat.ply"), out.join("a.spz"));
    let t = Instant::now();
    write_fitted_splat_ply(&ply, &splats, Up::Y).expect("writes the PLY");
    let ply_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    write_fitted_splat_spz(&spz, &splats, asset.voxel_size()).expect("writes the SPZ");
    let spz_s = t.elapsed().as_secs_f64();
    println!(
        "PLY write {ply_s:.2} s ({:.1} MiB), SPZ write {spz_s:.2} s ({:.1} MiB, {:.2} B/splat, \
         {:.2}× smaller); peak memory {:.2} GiB",
        mib(&ply),
        mib(&spz),
        mib(&spz) * (1 << 20) as f64 / splats.len() as f64,
        mib(&ply) / mib(&spz),
        peak_gib().unwrap_or(f64::NAN)
    );
}
