//! Time of mesh extraction, hole filling, vertex-attribute lookup and decimation on the decoder
//! golden and on synthetic sphere shells (the size of real 512/1024 outputs). Run with
//! `cargo bench --bench mesh`; `MESH_BENCH_1024=1` adds the 1024³ shell.

#[path = "../tests/common/voxel_shapes.rs"]
#[allow(dead_code)] // the box helper is for the tests
mod voxel_shapes;

use std::time::Instant;

use trellis2::export::face_orientation::faces_wound_outward;
use trellis2::mesh::{
    decimate, decoder_output_to_meshes, fill_holes, split_decoder_output, Mesh, VoxelAttributes,
    DEFAULT_MAX_HOLE_PERIMETER, PBR_ATTRIBUTE_WEIGHTS,
};

/// Upstream's app default face budget.
const DECIMATE_TARGET: usize = 300_000;

/// Best of `reps` runs, in milliseconds, and the last result.
fn best_ms<T>(reps: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::INFINITY;
    let mut out = f();
    for _ in 0..reps {
        let start = Instant::now();
        out = f();
        best = best.min(start.elapsed().as_secs_f64() * 1e3);
    }
    (best, out)
}

fn golden() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/golden/golden/shape_slat_decoder.io.safetensors"
    );
    let bytes = std::fs::read(path).expect("golden readable");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("golden parses");
    let ints = |name: &str| -> Vec<i32> {
        let t = st.tensor(name).expect("tensor present");
        t.data()
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    let floats = |name: &str| -> Vec<f32> {
        let t = st.tensor(name).expect("tensor present");
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    let (coords, feats) = (ints("out.coords"), floats("out.raw_feats"));
    let (ms, meshes) = best_ms(20, || {
        decoder_output_to_meshes(&coords, &feats, 512).expect("extracts")
    });
    let faces: usize = meshes.iter().map(|m| m.faces.len()).sum();
    println!(
        "golden ({} voxels, 2 items)     extract {ms:>8.2} ms  ({faces} faces)",
        coords.len() / 4
    );
}

fn sphere_shell(grid: i32) {
    let centre = grid as f32 / 2.0 + 0.3;
    let radius = grid as f32 * 0.4;
    let start = Instant::now();
    let (coords, feats) = voxel_shapes::sign_field_voxels(
        (grid / 2 - radius as i32 - 3)..(grid / 2 + radius as i32 + 3),
        0,
        |p| voxel_shapes::in_ball(p, [centre, centre - 0.2, centre + 0.1], radius),
    );
    let n = coords.len() / 4;
    println!(
        "sphere shell {grid}³: {n} voxels (generated in {:.1} s)",
        start.elapsed().as_secs_f64()
    );
    let (ms, meshes) = best_ms(3, || {
        decoder_output_to_meshes(&coords, &feats, grid as u32).expect("extracts")
    });
    let mesh = &meshes[0];
    println!(
        "  extract      {ms:>9.1} ms  ({} vertices, {} faces)",
        mesh.vertices.len(),
        mesh.faces.len()
    );
    // A hole per 1000th quad, so fill_holes has loops to find and fill.
    let mut holed = mesh.clone();
    holed.faces = mesh
        .faces
        .iter()
        .enumerate()
        .filter(|(i, _)| (i / 2) % 1000 != 7)
        .map(|(_, f)| *f)
        .collect();
    let (ms, report) = best_ms(3, || {
        let mut m = holed.clone();
        fill_holes(&mut m, DEFAULT_MAX_HOLE_PERIMETER).expect("fills")
    });
    println!("  fill_holes   {ms:>9.1} ms  ({report:?}, includes a mesh clone)");
    let voxels = &split_decoder_output(&coords, &feats).expect("valid")[0];
    let attrs: Vec<f32> = (0..n * 6).map(|i| (i % 97) as f32 / 97.0).collect();
    let (ms, lookup) = best_ms(3, || {
        VoxelAttributes::new(&voxels.coords, attrs.clone(), 6, grid as u32).expect("valid")
    });
    println!("  attr index   {ms:>9.1} ms  (6 channels, includes an attrs clone)");
    let (ms, sampled) = best_ms(3, || lookup.sample(&mesh.vertices));
    println!(
        "  attr sample  {ms:>9.1} ms  ({} vertices, checksum {:.3})",
        mesh.vertices.len(),
        sampled.iter().step_by(9973).sum::<f32>()
    );
    let oriented = Mesh {
        vertices: mesh.vertices.clone(),
        faces: faces_wound_outward(mesh),
    };
    let (ms, out) = best_ms(1, || {
        decimate(&oriented, &sampled, &PBR_ATTRIBUTE_WEIGHTS, DECIMATE_TARGET).expect("decimates")
    });
    println!(
        "  decimate     {ms:>9.1} ms  ({} → {} faces, 6 weighted channels)",
        mesh.faces.len(),
        out.mesh.faces.len()
    );
}

fn main() {
    println!("rayon threads: {}", rayon::current_num_threads());
    golden();
    sphere_shell(512);
    if std::env::var_os("MESH_BENCH_1024").is_some() {
        sphere_shell(1024);
    }
}
