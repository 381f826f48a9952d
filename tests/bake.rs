//! The textured GLB on analytic shapes with analytic PBR fields (a sphere with a
//! longitude/latitude pattern and varying metallic, a torus, a thin plate), built as the decoders
//! build their output: decimated, unwrapped, baked, written, then read back with the `gltf` crate
//! and its textures sampled (bilinear) at random surface points, against (a) a direct trilinear
//! lookup of the voxels at the same point (the bake's own error) and (b) the analytic field.
//!
//! Scale: a 256³ grid at 300k × (256/1024)² faces and 512² texels has the texel and face
//! density per voxel of a 1024³ object at 300k faces and 2048² (`benches/export.rs` measures
//! that case itself). The fields are smooth: a hard edge (a checker) is blurred by the voxels
//! themselves, whatever the bake does, so (b) would measure the voxelisation there.

#[path = "common/textured_shapes.rs"]
#[allow(dead_code)] // the 1024-scale object is for benches/export.rs
mod textured_shapes;
#[path = "common/voxel_shapes.rs"]
#[allow(dead_code)]
mod voxel_shapes;

use textured_shapes::{TexturedShape, Uniform};
use trellis2::export::glb_writer::write_textured_glb;
use trellis2::export::Up;

/// Errors in 1/255 units: (median, 99th percentile).
#[derive(Debug, Clone, Copy)]
struct Spread {
    median: f64,
    p99: f64,
}

fn spread(mut errors: Vec<f64>) -> Spread {
    errors.sort_by(f64::total_cmp);
    let at = |q: f64| errors[((errors.len() - 1) as f64 * q).round() as usize];
    Spread {
        median: at(0.5),
        p99: at(0.99),
    }
}

/// Bilinear lookup of a decoded glTF image (clamp to edge), values in [0, 1].
fn bilinear(image: &gltf::image::Data, uv: [f32; 2]) -> Vec<f64> {
    let c = match image.format {
        gltf::image::Format::R8G8B8 => 3,
        gltf::image::Format::R8G8B8A8 => 4,
        other => panic!("unexpected texture format {other:?}"),
    };
    let (w, h) = (image.width as f64, image.height as f64);
    let x = (f64::from(uv[0]) * w - 0.5).clamp(0.0, w - 1.0);
    let y = (f64::from(uv[1]) * h - 0.5).clamp(0.0, h - 1.0);
    let (x0, y0) = (x.floor() as usize, y.floor() as usize);
    let (x1, y1) = (
        (x0 + 1).min(image.width as usize - 1),
        (y0 + 1).min(image.height as usize - 1),
    );
    let (fx, fy) = (x - x0 as f64, y - y0 as f64);
    let at = |x: usize, y: usize, k: usize| {
        f64::from(image.pixels[(y * image.width as usize + x) * c + k]) / 255.0
    };
    (0..c)
        .map(|k| {
            let top = at(x0, y0, k) * (1.0 - fx) + at(x1, y0, k) * fx;
            let bottom = at(x0, y1, k) * (1.0 - fx) + at(x1, y1, k) * fx;
            top * (1.0 - fy) + bottom * fy
        })
        .collect()
}

struct Measured {
    faces: usize,
    own: Spread,
    analytic: Spread,
    utilisation: f64,
    charts: usize,
    overlapping: usize,
}

/// Exports `shape` decimated to `faces` with `size²` textures, reads the GLB back, and
/// compares its textures at `samples` random surface points.
fn measure(shape: &TexturedShape, faces: usize, size: u32, samples: usize) -> Measured {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{}.glb", shape.name));
    let reduced = shape.asset.decimated(faces).expect("decimates");
    // Z up: the file keeps the pipeline frame, where the voxels are.
    let report = write_textured_glb(&path, &reduced, Up::Z, size).expect("writes");
    let (doc, buffers, images) = gltf::import(&path).expect("gltf reads it");
    let prim = doc.meshes().next().unwrap().primitives().next().unwrap();
    let reader = prim.reader(|b| Some(&buffers[b.index()]));
    let positions: Vec<[f32; 3]> = reader.read_positions().unwrap().collect();
    let uvs: Vec<[f32; 2]> = reader.read_tex_coords(0).unwrap().into_f32().collect();
    let indices: Vec<u32> = reader.read_indices().unwrap().into_u32().collect();
    assert!(reader.read_colors(0).is_none(), "no vertex colours");
    let material = prim.material().pbr_metallic_roughness();
    let base = &images[material
        .base_color_texture()
        .unwrap()
        .texture()
        .source()
        .index()];
    let mr = &images[material
        .metallic_roughness_texture()
        .unwrap()
        .texture()
        .source()
        .index()];

    // Area-weighted random triangles, uniform barycentric points.
    let area = |t: &[u32]| {
        let [a, b, c] = [0, 1, 2].map(|k| positions[t[k] as usize].map(f64::from));
        let (u, v) = (
            [b[0] - a[0], b[1] - a[1], b[2] - a[2]],
            [c[0] - a[0], c[1] - a[1], c[2] - a[2]],
        );
        let n = [
            u[1] * v[2] - u[2] * v[1],
            u[2] * v[0] - u[0] * v[2],
            u[0] * v[1] - u[1] * v[0],
        ];
        (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt()
    };
    let mut cumulative = Vec::with_capacity(indices.len() / 3);
    let mut total = 0.0;
    for t in indices.chunks_exact(3) {
        total += area(t);
        cumulative.push(total);
    }
    let volume = shape.asset.attribute_volume().unwrap();
    let mut rng = Uniform(0x5eed);
    let (mut own, mut analytic) = (Vec::new(), Vec::new());
    let mut direct = [0f32; 6];
    for _ in 0..samples {
        let (t, w) = rng.point_on_triangles(&cumulative);
        let corner = |k: usize| indices[t * 3 + k] as usize;
        let point: [f32; 3] = std::array::from_fn(|a| {
            (0..3)
                .map(|k| w[k] * f64::from(positions[corner(k)][a]))
                .sum::<f64>() as f32
        });
        let uv: [f32; 2] = std::array::from_fn(|a| {
            (0..3)
                .map(|k| w[k] * f64::from(uvs[corner(k)][a]))
                .sum::<f64>() as f32
        });
        let colour = bilinear(base, uv);
        let material = bilinear(mr, uv);
        // Base colour RGB, metallic (B), roughness (G).
        let baked = [colour[0], colour[1], colour[2], material[2], material[1]];
        volume.sample_into(point, &mut direct).unwrap();
        let truth = shape.field_at(point);
        let worst = |reference: &dyn Fn(usize) -> f64| {
            (0..5)
                .map(|k| (baked[k] - reference(k)).abs() * 255.0)
                .fold(0.0, f64::max)
        };
        own.push(worst(&|k| f64::from(direct[k].clamp(0.0, 1.0))));
        analytic.push(worst(&|k| truth[k]));
    }
    Measured {
        faces: report.faces,
        own: spread(own),
        analytic: spread(analytic),
        utilisation: report.utilisation,
        charts: report.charts,
        overlapping: report.overlapping_triangles,
    }
}

/// Runs the measure and checks the targets: median ≤ 1/255 and p99 ≤ 4/255 for both
/// comparisons, no overlapping UV triangles.
fn check(shape: TexturedShape) {
    let faces = 300_000 * (shape.grid as usize).pow(2) / (1024 * 1024);
    let m = measure(&shape, faces, 512, 20_000);
    println!(
        "{} {}³: {} faces, {} charts, utilisation {:.1} %, overlapping {}; error in 1/255 \
         (median / p99): vs trilinear lookup {:.2} / {:.2}, vs analytic field {:.2} / {:.2}",
        shape.name,
        shape.grid,
        m.faces,
        m.charts,
        m.utilisation * 100.0,
        m.overlapping,
        m.own.median,
        m.own.p99,
        m.analytic.median,
        m.analytic.p99
    );
    assert_eq!(m.overlapping, 0, "{}: overlapping UV triangles", shape.name);
    for (what, s) in [("lookup", m.own), ("analytic", m.analytic)] {
        assert!(
            s.median <= 1.0 && s.p99 <= 4.0,
            "{}: error vs {what} {s:?} (1/255)",
            shape.name
        );
    }
}

#[test]
fn a_sphere_with_a_latitude_longitude_field_bakes_within_target() {
    check(textured_shapes::sphere(256));
}

#[test]
fn a_torus_bakes_within_target() {
    check(textured_shapes::torus(256));
}

#[test]
fn a_thin_plate_bakes_within_target() {
    check(textured_shapes::plate(256));
}
