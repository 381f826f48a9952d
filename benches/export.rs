//! The textured GLB export of a 1024-scale object: decimation to 300k faces, UV unwrap, bake
//! of 2048² textures, PNG encoding and writing, each phase's wall time, and the process's peak
//! memory (VmHWM). The object: three concentric sphere shells voxelised into the decoders'
//! voxel form with an analytic PBR field (`tests/common/textured_shapes.rs`), ≈ 7 M voxels.
//! Run with `cargo bench --bench export`; `EXPORT_BENCH_GRID=N` and `EXPORT_BENCH_FACES=N`
//! change the grid (default 1024) and the face budget (default 300000),
//! `EXPORT_BENCH_TEXTURE=N` the texture size (default 2048); `EXPORT_BENCH_NORMAL_MAP=1` adds
//! the normal map of the raw surface (`generate --normal-map`) and prints its time.

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
use trellis2::export::glb_writer::{write_textured_glb_with_options, TextureOptions};
use trellis2::export::Up;

fn main() {
    let grid = env_or("EXPORT_BENCH_GRID", 1024) as i32;
    let faces = env_or("EXPORT_BENCH_FACES", 300_000);
    let size = env_or("EXPORT_BENCH_TEXTURE", 2048) as u32;
    let normal_map = env_or("EXPORT_BENCH_NORMAL_MAP", 0) != 0;
    println!("rayon threads: {}", rayon::current_num_threads());
    let start = Instant::now();
    let shape = textured_shapes::nested_spheres(grid);
    let asset = &shape.asset;
    println!(
        "object {grid}³: {} voxels, {} vertices, {} faces (built in {:.1} s, peak {:.2} GiB)",
        asset.voxel_count(),
        asset.mesh().vertices.len(),
        asset.mesh().faces.len(),
        start.elapsed().as_secs_f64(),
        peak_gib().unwrap_or(f64::NAN)
    );
    // What the decimation phase spends outside the simplifier, timed apart (not part of the
    // export's total below).
    let t = Instant::now();
    let oriented = faces_wound_outward(asset.mesh());
    let orient_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let attrs = asset.mesh_vertex_attributes().expect("samples");
    println!(
        "  of the decimation: orienting the faces {orient_s:.2} s, attribute lookup at the \
         vertices {:.2} s",
        t.elapsed().as_secs_f64()
    );
    drop((oriented, attrs));
    println!(
        "  the simplifier runs in three rounds of up to {} spatial pieces",
        trellis2::mesh::piece_count(asset.mesh().faces.len())
    );
    let dir = tempfile::tempdir().expect("temporary folder");
    let path = dir.path().join("bench.glb");
    let export = Instant::now();
    // As `generate` does it: the raw mesh wound outward is kept only for the normal map.
    let (reduced, raw) = asset.decimated_and_oriented(faces).expect("decimates");
    let raw = normal_map.then_some(raw);
    let decimate_s = export.elapsed().as_secs_f64();
    let opts = TextureOptions {
        texture_size: size,
        normal_map_from: raw.as_ref(),
    };
    let t = write_textured_glb_with_options(&path, &reduced, Up::Y, &opts).expect("writes");
    let total = export.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "export to {faces} faces at {size}²: {total:.2} s = decimate {decimate_s:.2} + unwrap \
         {:.2} + bake {:.2} + PNG {:.2} + write {:.2} s",
        t.unwrap_seconds, t.bake_seconds, t.encode_seconds, t.write_seconds
    );
    if t.normal_map {
        println!(
            "  normal map: {:.2} s (raw-surface index, tangents and bake; its PNG is in the \
             PNG phase)",
            t.normal_map_seconds
        );
    }
    println!(
        "  {} faces, {} vertices, {} charts, utilisation {:.1} %, overlapping {}, GLB {:.1} MiB \
         (PNG {:.1} MiB), peak memory {:.2} GiB",
        t.faces,
        t.vertices,
        t.charts,
        t.utilisation * 100.0,
        t.overlapping_triangles,
        bytes as f64 / (1 << 20) as f64,
        t.png_bytes as f64 / (1 << 20) as f64,
        peak_gib().unwrap_or(f64::NAN)
    );
    formats_side_by_side(asset, faces, dir.path());
}

/// `generate`'s three formats of one picture (splat PLY at its default budget, mesh PLY, GLB
/// decimated, vertex colours): one after the other, then side by side as `generate` writes
/// them, with the same bytes.
fn formats_side_by_side(asset: &trellis2::export::Asset, faces: usize, dir: &std::path::Path) {
    use trellis2::export::{write_glb, write_mesh_ply, write_splat_ply, SplatBudget};
    let budget = SplatBudget::AtMost(1_000_000);
    let write = |k: usize, tag: &str| -> f64 {
        let t = Instant::now();
        let path = dir.join(format!("{tag}.{k}"));
        match k {
            0 => write_splat_ply(&path, asset, Up::Y, budget).expect("splats"),
            1 => write_mesh_ply(&path, asset, Up::Y).expect("mesh"),
            _ => {
                let reduced = asset.decimated(faces).expect("decimates");
                write_glb(&path, &reduced, Up::Y).expect("glb")
            }
        }
        t.elapsed().as_secs_f64()
    };
    let t = Instant::now();
    let each: Vec<f64> = (0..3).map(|k| write(k, "seq")).collect();
    let sequential = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let ((a, b), c) = rayon::join(
        || rayon::join(|| write(0, "par"), || write(1, "par")),
        || write(2, "par"),
    );
    let side = t.elapsed().as_secs_f64();
    let same = (0..3).all(|k| {
        std::fs::read(dir.join(format!("seq.{k}"))).ok()
            == std::fs::read(dir.join(format!("par.{k}"))).ok()
    });
    println!(
        "three formats (splat PLY, mesh PLY, GLB without textures): one after the other \
         {sequential:.2} s ({:.2} + {:.2} + {:.2}), side by side {side:.2} s ({a:.2}, {b:.2}, \
         {c:.2}); same bytes: {same}",
        each[0], each[1], each[2]
    );
    assert!(same, "the formats written side by side differ");
}
