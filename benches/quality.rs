//! The splat-quality measurement `generate --report` records (`splat_psnr_db`, `splat_ssim`):
//! the written GLB and splat PLY read back, then 8 views of 512² of each drawn on the CPU and
//! compared, each phase timed apart (best of `QUALITY_BENCH_REPS`, default 3) and the whole
//! measurement last. The object: the export benches' three concentric sphere shells
//! (`tests/common/textured_shapes.rs`) at `QUALITY_BENCH_GRID` (default 512), its splats fitted
//! to `QUALITY_BENCH_SPLATS` (default 1000000) and its GLB decimated to 300000 faces with vertex
//! colours (`--texture none`), as `generate` writes them. `QUALITY_BENCH_DIR=DIR` keeps the two
//! files there and reuses them on the next run (so that builds can be compared on the same
//! files); the `Quality` printed is then comparable bit for bit.
//! Run with `cargo bench --bench quality`.

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

use trellis2::export::splat::{write_fitted_splat_ply, SplatShape};
use trellis2::export::splat_fit::fit_splats;
use trellis2::export::{write_glb, SplatBudget, Up};
use trellis2::render::mesh::Shading;
use trellis2::render::metrics::{compare_views, splat_quality, QUALITY_ORBIT};
use trellis2::render::splat::render_splats_reference;
use trellis2::render::{load_scene, render, Background, RenderOptions, Scene};

/// This process's CPU seconds so far, all threads (Linux; 0 elsewhere): on a shared machine
/// a steadier measure of work than wall time.
fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // utime and stime, fields 14 and 15 of the whole line, in clock ticks of 1/100 s.
    f.get(11)
        .zip(f.get(12))
        .map_or(0.0, |(u, s)| (u + s) / 100.0)
}

/// Best of `reps` runs in wall seconds (with that run's CPU seconds), and the last result.
fn best_s<T>(reps: usize, mut f: impl FnMut() -> T) -> ((f64, f64), T) {
    let mut best = (f64::INFINITY, 0.0);
    let mut out = None;
    for _ in 0..reps.max(1) {
        let (start, cpu) = (Instant::now(), cpu_s());
        out = Some(f());
        let wall = start.elapsed().as_secs_f64();
        if wall < best.0 {
            best = (wall, cpu_s() - cpu);
        }
    }
    (best, out.expect("ran at least once"))
}

fn main() {
    let grid = env_or("QUALITY_BENCH_GRID", 512) as i32;
    let budget = env_or("QUALITY_BENCH_SPLATS", 1_000_000);
    let reps = env_or("QUALITY_BENCH_REPS", 3);
    println!("rayon threads: {}", rayon::current_num_threads());
    let dir = std::env::var_os("QUALITY_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("trellis2-quality-{}", std::process::id()))
        });
    std::fs::create_dir_all(&dir).expect("folder");
    let (glb, ply) = (dir.join("object.glb"), dir.join("object.splat.ply"));
    if !(glb.is_file() && ply.is_file()) {
        let start = Instant::now();
        let shape = textured_shapes::nested_spheres(grid);
        let asset = &shape.asset;
        let fitted = fit_splats(asset, SplatBudget::AtMost(budget), &SplatShape::default());
        write_fitted_splat_ply(&ply, &fitted, Up::default()).expect("splat PLY");
        let (reduced, _) = asset.decimated_and_oriented(300_000).expect("decimate");
        write_glb(&glb, &reduced, Up::default()).expect("GLB");
        println!(
            "object {grid}³: {} voxels, {} splats, {} GLB faces (written in {:.1} s)",
            asset.voxel_count(),
            fitted.len(),
            reduced.mesh().faces.len(),
            start.elapsed().as_secs_f64()
        );
    }
    let (s, mesh) = best_s(reps, || load_scene(&glb).expect("GLB"));
    println!(
        "  load GLB         {:>7.3} s ({:>6.2} CPU s)  ({})",
        s.0,
        s.1,
        mesh.describe()
    );
    let (s, splats) = best_s(reps, || load_scene(&ply).expect("PLY"));
    println!(
        "  load splat PLY   {:>7.3} s ({:>6.2} CPU s)  ({})",
        s.0,
        s.1,
        splats.describe()
    );
    let (lo, hi) = mesh.bounds().expect("bounds");
    let options = RenderOptions {
        shading: Shading::Unlit,
        ..RenderOptions::default()
    };
    let cams: Vec<_> = (0..QUALITY_ORBIT.views)
        .map(|k| QUALITY_ORBIT.camera(k, lo, hi))
        .collect();
    let (s, a) = best_s(reps, || {
        cams.iter()
            .map(|c| render(&mesh, c, &options))
            .collect::<Vec<_>>()
    });
    println!(
        "  mesh views       {:>7.3} s ({:>6.2} CPU s)  ({} views)",
        s.0,
        s.1,
        cams.len()
    );
    let (s, b) = best_s(reps, || {
        cams.iter()
            .map(|c| render(&splats, c, &options))
            .collect::<Vec<_>>()
    });
    println!("  splat views      {:>7.3} s ({:>6.2} CPU s)", s.0, s.1,);
    let (s, reference) = best_s(reps, || {
        cams.iter()
            .map(|c| match &splats {
                Scene::Splats(sp) => render_splats_reference(sp, c),
                _ => unreachable!("a splat file"),
            })
            .collect::<Vec<_>>()
    });
    println!(
        "  splat views, reference compositor {:>7.3} s ({:>6.2} CPU s), the same pixels: {}",
        s.0,
        s.1,
        reference == b
    );
    let (s, _) = best_s(reps, || {
        compare_views(&a, &b, Background::White).expect("views")
    });
    println!("  compare (PSNR, SSIM) {:>7.3} s ({:>6.2} CPU s)", s.0, s.1,);
    let (s, q) = best_s(reps, || {
        splat_quality(
            &load_scene(&glb).expect("GLB"),
            &load_scene(&ply).expect("PLY"),
            &QUALITY_ORBIT,
        )
        .expect("quality")
    });
    println!(
        "  splat quality, files read included {:>7.3} s ({:>6.2} CPU s)  (peak {:.2} GiB)",
        s.0,
        s.1,
        peak_gib().unwrap_or(f64::NAN)
    );
    println!("{q:?}");
}
