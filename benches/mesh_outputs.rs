//! The host phases `generate` runs after the decoders for the mesh outputs, each timed apart:
//! bundling the asset, the mesh PLY, and the untextured GLB (`--texture none`: decimation to
//! the face budget, then the vertex-colour GLB), with the GLB's sub-phases (orienting the
//! faces, the attribute lookup at the vertices, the simplifier, the write). The object: three
//! concentric sphere shells voxelised into the decoders' voxel form
//! (`tests/common/textured_shapes.rs`). Run with `cargo bench --bench mesh_outputs`;
//! `MESH_OUTPUTS_GRID=N` (default 512) and `MESH_OUTPUTS_FACES=N` (default 300000) change the
//! grid and the face budget, `MESH_OUTPUTS_REPS=N` (default 3) the runs per phase (best kept).
//! `MESH_OUTPUTS_QUALITY=1` also measures the decimation's quality (slow): the simplifier's
//! error estimate, sampled distances between the decimated and the full surface both ways,
//! and border / non-manifold edges before and after.

#[path = "common/measure.rs"]
mod measure;
#[path = "common/surface_quality.rs"]
mod surface_quality;
#[path = "../tests/common/textured_shapes.rs"]
#[allow(dead_code)] // the measures are for the tests
mod textured_shapes;
#[path = "../tests/common/voxel_shapes.rs"]
#[allow(dead_code)]
mod voxel_shapes;

use std::time::Instant;

use measure::{cpu_s, env_or, peak_gib};
use surface_quality::{open_edges, surface_distances};

use trellis2::export::face_orientation::faces_wound_outward;
use trellis2::export::mesh_arrays::MeshArrays;
use trellis2::export::{write_glb, write_mesh_ply, Asset, Up};

/// Best of `reps` runs, in seconds, and the last result.
fn best_s<T>(reps: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::INFINITY;
    let mut out = None;
    for _ in 0..reps.max(1) {
        let start = Instant::now();
        out = Some(f());
        best = best.min(start.elapsed().as_secs_f64());
    }
    (best, out.expect("ran at least once"))
}

fn main() {
    let grid = env_or("MESH_OUTPUTS_GRID", 512) as i32;
    let faces = env_or("MESH_OUTPUTS_FACES", 300_000);
    let reps = env_or("MESH_OUTPUTS_REPS", 3);
    println!("rayon threads: {}", rayon::current_num_threads());
    let start = Instant::now();
    let shape = textured_shapes::nested_spheres(grid);
    let asset = &shape.asset;
    println!(
        "object {grid}³: {} voxels, {} vertices, {} faces (built in {:.1} s)",
        asset.voxel_count(),
        asset.mesh().vertices.len(),
        asset.mesh().faces.len(),
        start.elapsed().as_secs_f64(),
    );
    // MESH_OUTPUTS_KEEP=DIR keeps the files written there (to compare builds byte for byte).
    let keep = std::env::var_os("MESH_OUTPUTS_KEEP").map(std::path::PathBuf::from);
    let dir = keep.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("trellis2-mesh-outputs-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir).expect("temp folder");
    let up = Up::default();

    // An asset bundled from copies of the rows, as `generate` once did (it now moves its own
    // in); also the fresh asset of each run below, since the writers share work through it.
    let fresh = || {
        Asset::new(
            asset.mesh().clone(),
            asset.voxel_coords().to_vec(),
            asset.voxel_attrs().to_vec(),
            asset.dual_vertices().to_vec(),
            asset.resolution(),
        )
        .expect("valid")
    };
    let (s, _) = best_s(reps, fresh);
    println!("  asset            {s:>7.3} s  (from copies of the rows; generate moves its own in)");

    let (s, _) = best_s(reps, || faces_wound_outward(asset.mesh()));
    println!("  orient faces     {s:>7.3} s");
    let (s, _) = best_s(reps, || asset.mesh_vertex_attributes().expect("samples"));
    println!("  attr lookup      {s:>7.3} s");
    let (s, _) = best_s(reps, || MeshArrays::new(asset, up).expect("arrays"));
    println!("  mesh arrays      {s:>7.3} s  (orient + normals + lookup)");

    // As `generate` runs them: the shared preparation, then each writer on the prepared asset.
    let (ply, glb) = (dir.join("mesh.ply"), dir.join("mesh.glb"));
    let runs: Vec<[f64; 7]> = (0..reps.max(1))
        .map(|_| {
            let a = fresh();
            let start = Instant::now();
            a.prepare_mesh_outputs().expect("prepares");
            let prepare = start.elapsed().as_secs_f64();
            let start = Instant::now();
            write_mesh_ply(&ply, &a, up).expect("writes");
            let ply_s = start.elapsed().as_secs_f64();
            let (start, cpu) = (Instant::now(), cpu_s());
            let reduced = a.decimated(faces).expect("decimates");
            let (decimate_s, decimate_cpu) = (start.elapsed().as_secs_f64(), cpu_s() - cpu);
            let (start, cpu) = (Instant::now(), cpu_s());
            write_glb(&glb, &reduced, up).expect("writes");
            let (write_s, write_cpu) = (start.elapsed().as_secs_f64(), cpu_s() - cpu);
            [
                prepare,
                ply_s,
                decimate_s,
                write_s,
                decimate_s + write_s,
                decimate_cpu,
                write_cpu,
            ]
        })
        .collect();
    let best = |k: usize| runs.iter().map(|r| r[k]).fold(f64::INFINITY, f64::min);
    let bytes = std::fs::metadata(&ply).map(|m| m.len()).unwrap_or(0);
    println!(
        "  mesh prepare     {:>7.3} s  (orient + lookup once, for both writers)",
        best(0)
    );
    println!(
        "  mesh PLY         {:>7.3} s  ({:.0} MB)",
        best(1),
        bytes as f64 / 1e6
    );
    println!(
        "  GLB (no texture) {:>7.3} s  (decimate to {faces} faces {:.3} s, write {:.3} s; \
         CPU time {:.2} + {:.2} s)",
        best(4),
        best(2),
        best(3),
        best(5),
        best(6)
    );
    if env_or("MESH_OUTPUTS_QUALITY", 0) != 0 {
        quality(asset, faces);
    }
    let full = dir.join("full.glb");
    let (s, _) = best_s(reps, || write_glb(&full, asset, up).expect("writes"));
    println!("  GLB undecimated  {s:>7.3} s  (--faces 0)");
    println!(
        "  peak memory      {:.2} GiB",
        peak_gib().unwrap_or(f64::NAN)
    );
    if keep.is_none() {
        std::fs::remove_dir_all(&dir).ok();
    }
}

/// The decimation's quality on the oriented mesh, as `Asset::decimated` runs it.
fn quality(asset: &trellis2::export::Asset, faces: usize) {
    let raw = asset.oriented_mesh();
    let attrs = asset.vertex_attributes().expect("samples");
    let out = trellis2::mesh::decimate(&raw, &attrs, &trellis2::mesh::PBR_ATTRIBUTE_WEIGHTS, faces)
        .expect("decimates");
    let voxel = f64::from(asset.voxel_size());
    // Every 8th full-size triangle is sampled: the full surface has millions.
    let [there, back] = surface_distances(&out.mesh, &raw, 8, voxel);
    println!(
        "  decimation quality: {} faces, simplifier error {:.2e} of the extent; decimated → full \
         mean {:.4} max {:.3} voxel, full → decimated mean {:.4} max {:.3} voxel (capped at 1); \
         border / non-manifold edges {:?} → {:?}",
        out.mesh.faces.len(),
        out.relative_error,
        there.0,
        there.1,
        back.0,
        back.1,
        open_edges(&raw),
        open_edges(&out.mesh),
    );
}
