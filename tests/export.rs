//! The three writers on a synthetic object (a voxelised sphere shell through the real dual-grid
//! extraction): read back by our readers and by third-party ones (ply-rs, the Khronos glTF
//! validator), byte-identical twice, described by `inspect`, equal to themselves in `compare`.

mod common;

use std::path::Path;
use std::process::Command;

use common::voxel_shapes::{in_ball, sign_field_voxels};
use trellis2::export::asset::PBR_CHANNELS;
use trellis2::export::color::{srgb_to_linear, unit_to_u8};
use trellis2::export::glb::read_glb;
use trellis2::export::glb_writer::{
    write_textured_glb, write_textured_glb_with_options, TextureOptions,
};
use trellis2::export::ply::read_ply;
use trellis2::export::splat::{rotation_of_quaternion, SplatShape, SH_C0};
use trellis2::export::splat_fit::reference_pixel;
use trellis2::export::{write_glb, write_mesh_ply, write_splat_ply, Asset, SplatBudget, Up};
use trellis2::mesh::{decoder_output_to_meshes, fill_holes, Mesh, VoxelAttributes};

const GRID: u32 = 32;
const METALLIC: f32 = 0.25;
const ROUGHNESS: f32 = 0.75;

/// The sphere shell of radius 10 voxels around the grid centre, coloured by position.
fn sphere_parts(alpha: f32) -> (Mesh, Vec<i32>, Vec<f32>, Vec<f32>) {
    let centre = GRID as f32 / 2.0;
    let (coords, feats) = sign_field_voxels(2..30, 0, |p| in_ball(p, [centre; 3], 10.0));
    let mut mesh = decoder_output_to_meshes(&coords, &feats, GRID)
        .expect("extraction")
        .remove(0);
    let duals: Vec<f32> = mesh.vertices.iter().flatten().copied().collect();
    fill_holes(&mut mesh, trellis2::mesh::DEFAULT_MAX_HOLE_PERIMETER).expect("fill holes");
    let attrs = coords
        .chunks_exact(4)
        .flat_map(|c| {
            let [r, g, b] = [c[1], c[2], c[3]].map(|v| v as f32 / GRID as f32);
            // A little outside [0, 1] at the ends, as the network's values can be.
            [r * 1.1 - 0.05, g, b, METALLIC, ROUGHNESS, alpha]
        })
        .collect();
    (mesh, coords, attrs, duals)
}

fn sphere(alpha: f32) -> Asset {
    let (mesh, coords, attrs, duals) = sphere_parts(alpha);
    Asset::from_rows(mesh, &coords, &attrs, &duals, GRID).expect("valid asset")
}

/// Direction from the sphere's centre (the world origin) to `p`, in the file frame.
fn radial(p: [f32; 3]) -> [f32; 3] {
    let len = (p[0] * p[0] + p[1] * p[1] + p[2] * p[2]).sqrt();
    p.map(|v| v / len)
}

fn dot(a: [f32; 3], b: [f32; 3]) -> f32 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn column<'a>(e: &'a trellis2::export::ply::PlyElement, name: &str) -> &'a [f64] {
    e.scalars(name)
        .unwrap_or_else(|| panic!("no scalar property {name}"))
}

#[test]
fn splat_ply_has_the_3dgs_layout_and_the_voxels_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("splats.ply");
    let asset = sphere(1.0);
    write_splat_ply(&path, &asset, Up::Y, SplatBudget::All).expect("write");

    let header = std::fs::read(&path).unwrap();
    let header = String::from_utf8_lossy(&header[..header.len().min(2048)]).into_owned();
    assert!(header.contains("format binary_little_endian 1.0\n"));
    assert!(
        header.contains("property float x\n"),
        "classic type names:\n{header}"
    );

    let ply = read_ply(&path).expect("our reader");
    assert!(ply.is_gaussian_splat());
    let v = ply.element("vertex").expect("vertex element");
    assert_eq!(v.count, asset.voxel_count());
    let names: Vec<&str> = v.properties.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0",
            "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"
        ]
    );
    assert!(v.properties.iter().all(|p| p.type_name == "float32"));

    let (x, y, z) = (column(v, "x"), column(v, "y"), column(v, "z"));
    let voxel = 1.0 / GRID as f64;
    let shape = SplatShape::default();
    let most_inward = shape.inward_pixels * reference_pixel(asset.dual_vertices());
    let mut outward = 0;
    let mut patch_area = 0.0;
    for (i, (d, a)) in asset
        .dual_vertices()
        .iter()
        .zip(asset.voxel_attrs())
        .enumerate()
    {
        let p = [x[i], y[i], z[i]];
        let dual = Up::Y.apply(*d).map(f64::from);
        for (k, c) in ["f_dc_0", "f_dc_1", "f_dc_2"].iter().enumerate() {
            let rgb = column(v, c)[i] * SH_C0 + 0.5;
            let want = f64::from(a[k].clamp(0.0, 1.0));
            assert!((rgb - want).abs() < 1e-6, "splat {i} {c}: {rgb} vs {want}");
        }
        // alpha 1 → the clamped logit, finite.
        let opacity = column(v, "opacity")[i];
        assert!(
            (opacity - (0.9999f64 / 0.0001).ln()).abs() < 1e-3,
            "{opacity}"
        );
        let scales = ["scale_0", "scale_1", "scale_2"].map(|s| column(v, s)[i].exp() / voxel);
        let q = ["rot_0", "rot_1", "rot_2", "rot_3"].map(|s| column(v, s)[i]);
        assert!((q.iter().map(|c| c * c).sum::<f64>() - 1.0).abs() < 1e-6);
        assert!(q[0] >= 0.0);
        let n = ["nx", "ny", "nz"].map(|s| column(v, s)[i] as f32);
        if n == [0.0; 3] {
            // No plane here: a sphere at the dual vertex.
            assert_eq!(p, dual, "splat {i}");
            assert!(scales[0] == scales[1] && scales[1] == scales[2]);
            continue;
        }
        // The centre: the dual vertex moved inward along the normal, by at most `most_inward`.
        let moved: [f64; 3] = std::array::from_fn(|k| dual[k] - p[k]);
        let depth =
            moved[0] * f64::from(n[0]) + moved[1] * f64::from(n[1]) + moved[2] * f64::from(n[2]);
        assert!(
            depth >= -1e-7 && depth <= most_inward + 1e-7,
            "splat {i}: {depth}"
        );
        for k in 0..3 {
            assert!(
                (moved[k] - depth * f64::from(n[k])).abs() < 1e-6,
                "splat {i}"
            );
        }
        // A flat disc: the larger tangent scale first, at most 3× the other, a tenth of the
        // smaller across, and the normal is the rotation's third column.
        assert!(
            scales[0] >= scales[1] && scales[0] <= 3.0 * scales[1] * (1.0 + 1e-5),
            "{scales:?}"
        );
        assert!(
            (scales[2] - 0.1 * scales[1]).abs() < 1e-5 * scales[1],
            "{scales:?}"
        );
        assert!((0.2..2.0).contains(&scales[1]), "{scales:?}");
        patch_area += scales[0] * scales[1] * voxel * voxel / 0.36;
        let r = rotation_of_quaternion(q);
        let axis = [r[0][2], r[1][2], r[2][2]].map(|c| c as f32);
        assert!(dot(axis, n) > 0.9999, "splat {i}: {axis:?} vs {n:?}");
        if dot(n, radial(p.map(|c| c as f32))) > 0.9 {
            outward += 1;
        }
    }
    // Each splat covers its dual vertex's share of the mesh (σ₁σ₂ = 0.36 · area): together
    // the mesh's area, less the hole-filling vertices' shares.
    let mesh_area: f64 = asset
        .mesh()
        .faces
        .iter()
        .map(|f| {
            let [a, b, c] = f.map(|i| asset.mesh().vertices[i as usize].map(f64::from));
            let (u, w) = (
                [0, 1, 2].map(|k| b[k] - a[k]),
                [0, 1, 2].map(|k| c[k] - a[k]),
            );
            let n = [
                u[1] * w[2] - u[2] * w[1],
                u[2] * w[0] - u[0] * w[2],
                u[0] * w[1] - u[1] * w[0],
            ];
            0.5 * (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt()
        })
        .sum();
    assert!(
        patch_area <= mesh_area * (1.0 + 1e-6) && patch_area > 0.95 * mesh_area,
        "{patch_area} vs {mesh_area}"
    );
    // On a sphere the fitted normals are radial and point outward nearly everywhere.
    assert!(
        outward * 100 >= asset.voxel_count() * 95,
        "{outward} of {} normals radial and outward",
        asset.voxel_count()
    );
}

#[test]
fn splat_ply_reads_with_a_third_party_parser() {
    use ply_rs::ply::Property;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("splats.ply");
    let asset = sphere(1.0);
    write_splat_ply(&path, &asset, Up::Y, SplatBudget::All).expect("write");
    let mut file = std::fs::File::open(&path).unwrap();
    let ply = ply_rs::parser::Parser::<ply_rs::ply::DefaultElement>::new()
        .read_ply(&mut file)
        .expect("ply-rs parses the splat PLY");
    let def = &ply.header.elements["vertex"];
    assert_eq!(def.count, asset.voxel_count());
    let names: Vec<&String> = def.properties.keys().collect();
    assert_eq!(names.len(), 17);
    assert_eq!(names[0], "x");
    assert_eq!(names[16], "rot_3");
    let rows = &ply.payload["vertex"];
    assert_eq!(rows.len(), asset.voxel_count());
    let ours = read_ply(&path).unwrap();
    let v = ours.element("vertex").unwrap();
    for (i, row) in rows.iter().enumerate() {
        for axis in ["x", "y", "z", "scale_0", "rot_3", "opacity"] {
            assert_eq!(row[axis], Property::Float(column(v, axis)[i] as f32));
        }
    }
    // And the mesh PLY, with its list property.
    let mesh_path = dir.path().join("mesh.ply");
    write_mesh_ply(&mesh_path, &asset, Up::Y).expect("write");
    let ply = ply_rs::parser::Parser::<ply_rs::ply::DefaultElement>::new()
        .read_ply(&mut std::fs::File::open(&mesh_path).unwrap())
        .expect("ply-rs parses the mesh PLY");
    assert_eq!(ply.payload["face"].len(), asset.mesh().faces.len());
    assert!(matches!(
        &ply.payload["face"][0]["vertex_indices"],
        Property::ListInt(l) if l.len() == 3
    ));
    assert!(matches!(
        ply.payload["vertex"][0]["red"],
        Property::UChar(_)
    ));
}

/// Expected 8-bit colours: the voxel attributes sampled at the mesh vertices.
fn expected_rgba8(asset: &Asset) -> Vec<[u8; 4]> {
    let attrs = VoxelAttributes::new(
        asset.voxel_coords(),
        asset.voxel_attrs().iter().flatten().copied().collect(),
        PBR_CHANNELS,
        GRID,
    )
    .unwrap();
    attrs
        .sample(&asset.mesh().vertices)
        .chunks_exact(PBR_CHANNELS)
        .map(|a| [a[0], a[1], a[2], a[5]].map(unit_to_u8))
        .collect()
}

/// The same triangle, possibly re-wound (the writers orient faces outward).
fn same_triangle(a: [u32; 3], b: [u32; 3]) -> bool {
    let mut a = a;
    let mut b = b;
    a.sort_unstable();
    b.sort_unstable();
    a == b
}

#[test]
fn mesh_ply_and_glb_hold_the_mesh_its_colours_and_outward_faces() {
    let dir = tempfile::tempdir().unwrap();
    let (ply_path, glb_path) = (dir.path().join("mesh.ply"), dir.path().join("mesh.glb"));
    let asset = sphere(1.0);
    write_mesh_ply(&ply_path, &asset, Up::Y).expect("write ply");
    write_glb(&glb_path, &asset, Up::Y).expect("write glb");
    let mesh = asset.mesh();
    let want_rgba = expected_rgba8(&asset);

    // PLY.
    let ply = read_ply(&ply_path).expect("our reader");
    assert!(ply.is_mesh() && !ply.is_gaussian_splat());
    let v = ply.element("vertex").unwrap();
    assert_eq!(v.count, mesh.vertices.len());
    let from_ply = trellis2::compare::mesh_from_ply(&ply).unwrap();
    for (i, p) in mesh.vertices.iter().enumerate() {
        assert_eq!(from_ply.positions[i], Up::Y.apply(*p));
        let rgba = ["red", "green", "blue", "alpha"].map(|c| column(v, c)[i] as u8);
        assert_eq!(rgba, want_rgba[i], "vertex {i}");
    }
    assert_eq!(from_ply.triangle_count(), mesh.faces.len());
    let faces: Vec<[u32; 3]> = from_ply
        .indices
        .chunks_exact(3)
        .map(|f| [f[0], f[1], f[2]])
        .collect();
    let mut rewound = 0;
    let mut facing_out = 0;
    for (new, old) in faces.iter().zip(&mesh.faces) {
        assert!(same_triangle(*new, *old), "{new:?} vs {old:?}");
        rewound += usize::from(new != old);
        let p = new.map(|i| from_ply.positions[i as usize]);
        let e1 = [0, 1, 2].map(|k| p[1][k] - p[0][k]);
        let e2 = [0, 1, 2].map(|k| p[2][k] - p[0][k]);
        let n = [
            e1[1] * e2[2] - e1[2] * e2[1],
            e1[2] * e2[0] - e1[0] * e2[2],
            e1[0] * e2[1] - e1[1] * e2[0],
        ];
        let c = [0, 1, 2].map(|k| (p[0][k] + p[1][k] + p[2][k]) / 3.0);
        facing_out += usize::from(dot(n, c) > 0.0);
    }
    // The dual grid winds by edge axis, so a sphere starts about half inward.
    assert!(rewound > faces.len() / 10, "{rewound} re-wound");
    // Consistent: every edge shared by two faces is traversed once each way.
    let mut directed = std::collections::BTreeMap::new();
    for f in &faces {
        for k in 0..3 {
            *directed.entry((f[k], f[(k + 1) % 3])).or_insert(0) += 1;
        }
    }
    let clashes = directed.iter().filter(|(_, &n)| n > 1).count();
    assert_eq!(clashes, 0, "edges traversed twice in one direction");
    // Outward: positive enclosed volume, and (the surface being a voxel staircase, some risers
    // face sideways) nearly every face's normal points away from the centre.
    assert!(
        facing_out * 100 >= faces.len() * 97,
        "{facing_out} of {} face out",
        faces.len()
    );
    let volume: f32 = faces
        .iter()
        .map(|f| {
            let [a, b, c] = f.map(|i| from_ply.positions[i as usize]);
            let bxc = [
                b[1] * c[2] - b[2] * c[1],
                b[2] * c[0] - b[0] * c[2],
                b[0] * c[1] - b[1] * c[0],
            ];
            dot(a, bxc) / 6.0
        })
        .sum();
    let ball = 4.0 / 3.0 * std::f32::consts::PI * (10.0 / GRID as f32).powi(3);
    assert!(
        (volume / ball - 1.0).abs() < 0.15,
        "volume {volume} vs ball {ball}"
    );

    // GLB: same positions, indices and colours (linear there).
    let (glb, summary) = read_glb(&glb_path).expect("our GLB reader");
    assert_eq!(glb.positions, from_ply.positions);
    assert_eq!(glb.indices, from_ply.indices);
    let colors = glb.colors.as_ref().expect("COLOR_0");
    for (c, want) in colors.iter().zip(&want_rgba) {
        for k in 0..3 {
            let lin = srgb_to_linear(f64::from(want[k]) / 255.0) as f32;
            assert!((c[k] - lin).abs() < 1e-4, "{c:?} vs {want:?}");
        }
        assert!((c[3] - f32::from(want[3]) / 255.0).abs() < 1e-6);
    }
    assert_eq!(summary.materials.len(), 1);
    assert!(summary.materials[0].contains("metallic 0.25"));
    assert!(summary.materials[0].contains("roughness 0.75"));
    assert!(
        summary.materials[0].contains("Opaque"),
        "{:?}",
        summary.materials
    );

    // Normals: unit and outward.
    let bytes = std::fs::read(&glb_path).unwrap();
    let (doc, buffers, _) = gltf::import_slice(&bytes).unwrap();
    let prim = doc.meshes().next().unwrap().primitives().next().unwrap();
    let material = prim.material();
    assert!(material.double_sided());
    assert_eq!(
        material.pbr_metallic_roughness().base_color_factor(),
        [1.0; 4]
    );
    let reader = prim.reader(|b| buffers.get(b.index()).map(|d| d.0.as_slice()));
    let normals: Vec<[f32; 3]> = reader.read_normals().expect("NORMAL").collect();
    let used: std::collections::BTreeSet<u32> = glb.indices.iter().copied().collect();
    // Area-weighted over a voxel staircase: at a step corner the normal is the diagonal of its
    // faces, up to ~70° off the radius where a one-voxel cap sits on the sphere's pole (it is
    // still outward: an inward normal would give a negative cosine); elsewhere close to radial.
    let mut sum = 0.0;
    for &i in &used {
        let (n, p) = (normals[i as usize], glb.positions[i as usize]);
        assert!((dot(n, n) - 1.0).abs() < 1e-5);
        let d = dot(n, radial(p));
        assert!(d > 0.3, "vertex {i}: {n:?} at {p:?}");
        sum += d;
    }
    assert!(
        sum / used.len() as f32 > 0.9,
        "mean cosine {}",
        sum / used.len() as f32
    );
}

#[test]
fn translucent_objects_get_a_blend_material_and_up_z_keeps_the_pipeline_frame() {
    let dir = tempfile::tempdir().unwrap();
    let asset = sphere(0.5);
    let (y, z) = (dir.path().join("y.glb"), dir.path().join("z.glb"));
    write_glb(&y, &asset, Up::Y).unwrap();
    write_glb(&z, &asset, Up::Z).unwrap();
    let (gy, sy) = read_glb(&y).unwrap();
    let (gz, _) = read_glb(&z).unwrap();
    assert!(sy.materials[0].contains("Blend"), "{:?}", sy.materials);
    assert_eq!(gz.positions, asset.mesh().vertices);
    for (a, b) in gy.positions.iter().zip(&gz.positions) {
        assert_eq!(*a, [b[0], b[2], -b[1]]);
    }
    let splat_z = dir.path().join("z.ply");
    write_splat_ply(&splat_z, &asset, Up::Z, SplatBudget::All).unwrap();
    let splat_y = dir.path().join("y.ply");
    write_splat_ply(&splat_y, &asset, Up::Y, SplatBudget::All).unwrap();
    let (fz, fy) = (read_ply(&splat_z).unwrap(), read_ply(&splat_y).unwrap());
    let (v, vy) = (fz.element("vertex").unwrap(), fy.element("vertex").unwrap());
    // The same splats, rotated: (x, y, z) in the Z-up file is (x, −z, y) in the Y-up one.
    for i in 0..v.count {
        assert_eq!(column(v, "x")[i], column(vy, "x")[i]);
        assert_eq!(column(v, "y")[i], -column(vy, "z")[i]);
        assert_eq!(column(v, "z")[i], column(vy, "y")[i]);
    }
    // alpha 0.5 → opacity logit 0.
    assert!(column(v, "opacity").iter().all(|o| o.abs() < 1e-6));
}

#[test]
fn every_writer_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    type Writer = fn(&Path, &Asset, Up) -> anyhow::Result<()>;
    let writers: [(&str, Writer); 3] = [
        ("splat.ply", |p, a, u| {
            write_splat_ply(p, a, u, SplatBudget::All)
        }),
        ("mesh.ply", write_mesh_ply),
        ("mesh.glb", write_glb),
    ];
    for (name, write) in writers {
        let (a, b) = (
            dir.path().join(format!("a-{name}")),
            dir.path().join(format!("b-{name}")),
        );
        // Two separately built assets: nothing may depend on addresses or hash seeds.
        write(&a, &sphere(1.0), Up::Y).unwrap();
        write(&b, &sphere(1.0), Up::Y).unwrap();
        let (x, y) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert!(x.len() > 1000, "{name}: {} bytes", x.len());
        assert!(x == y, "{name}: two writes differ");
    }
}

fn trellis2_cli(args: &[&Path]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_trellis2"))
        .args(args)
        .output()
        .expect("binary runs")
}

#[test]
fn inspect_describes_and_compare_accepts_every_output() {
    let dir = tempfile::tempdir().unwrap();
    let asset = sphere(1.0);
    let splat = dir.path().join("splats.ply");
    let mesh = dir.path().join("mesh.ply");
    let glb = dir.path().join("mesh.glb");
    write_splat_ply(&splat, &asset, Up::Y, SplatBudget::All).unwrap();
    write_mesh_ply(&mesh, &asset, Up::Y).unwrap();
    write_glb(&glb, &asset, Up::Y).unwrap();
    let inspect = |p: &Path| {
        let o = trellis2_cli(&[Path::new("inspect"), p]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let text = inspect(&splat);
    assert!(
        text.contains("Gaussian splats (INRIA 3DGS layout)"),
        "{text}"
    );
    assert!(text.contains(&format!("element     vertex ×{}", asset.voxel_count())));
    // The splat statistics: count, SH degree, sizes, shapes and opacities.
    assert!(
        text.contains(&format!("splats      {}, SH degree 0", asset.voxel_count())),
        "{text}"
    );
    for line in [
        "scale, largest axis",
        "scale, smallest axis",
        "largest / middle",
        "smallest / middle",
        "opacity, mean",
    ] {
        assert!(text.contains(line), "{line}: {text}");
    }
    let text = inspect(&mesh);
    assert!(text.contains("triangle mesh"), "{text}");
    let text = inspect(&glb);
    assert!(text.contains("vertex colours: yes"), "{text}");
    assert!(text.contains("trellis2_pbr"), "{text}");
    assert!(text.contains(&format!("{} triangles", asset.mesh().faces.len())));
    for (a, b) in [
        (&splat, &splat),
        (&mesh, &mesh),
        (&glb, &glb),
        (&mesh, &glb),
    ] {
        let o = trellis2_cli(&[Path::new("compare"), a, b]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "compare {} {}: {}{}",
            a.display(),
            b.display(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn glb_passes_the_khronos_validator() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (alpha, up) in [(1.0, Up::Y), (0.5, Up::Y), (1.0, Up::Z)] {
        let path = dir.path().join(format!("a{alpha}-{up}.glb"));
        write_glb(&path, &sphere(alpha), up).unwrap();
        files.push(path);
    }
    // `generate --faces`: the decimated mesh is a valid GLB too.
    let full = sphere(1.0);
    let decimated = full.decimated(full.mesh().faces.len() / 4).unwrap();
    assert!(decimated.mesh().faces.len() <= full.mesh().faces.len() / 4);
    let path = dir.path().join("decimated.glb");
    write_glb(&path, &decimated, Up::Y).unwrap();
    files.push(path);
    // `--normal-map`: TANGENT (unit xyz, w = ±1) and a normalTexture, in both frames.
    let raw = full.oriented_mesh();
    for up in [Up::Y, Up::Z] {
        let path = dir.path().join(format!("normal-mapped-{up}.glb"));
        let opts = TextureOptions {
            texture_size: 512,
            normal_map_from: Some(&raw),
        };
        let t = write_textured_glb_with_options(&path, &decimated, up, &opts).unwrap();
        assert!(t.normal_map);
        files.push(path);
    }
    // The textured GLB (generate's default): opaque, with varying alpha (BLEND), decimated.
    for (name, asset, size) in [
        ("textured", sphere(1.0), 512),
        ("textured-alpha", sphere(0.5), 1024),
        ("textured-decimated", decimated, 512),
    ] {
        let path = dir.path().join(format!("{name}.glb"));
        write_textured_glb(&path, &asset, Up::Y, size).unwrap();
        files.push(path);
    }
    let good = files.len();
    // A broken copy proves the harness reports errors: the BIN chunk cut short.
    let bytes = std::fs::read(&files[0]).unwrap();
    let broken = dir.path().join("broken.glb");
    std::fs::write(&broken, &bytes[..bytes.len() - 64]).unwrap();
    files.push(broken);

    let reports = common::validate_gltf(&files);
    assert_eq!(reports.len(), files.len());
    for (file, (errors, warnings, messages)) in files.iter().zip(&reports).take(good) {
        assert_eq!(
            (*errors, *warnings),
            (0, 0),
            "{}: {messages}",
            file.display()
        );
    }
    assert!(
        reports[good].0 > 0,
        "the truncated GLB must fail validation"
    );
}

#[test]
fn writers_refuse_bad_input_and_leave_no_file() {
    let (mesh, coords, attrs, duals) = sphere_parts(1.0);
    let err = |r: anyhow::Result<Asset>| format!("{:#}", r.expect_err("refused"));
    assert!(err(Asset::from_rows(mesh.clone(), &[], &[], &[], GRID)).contains("no voxels"));
    assert!(err(Asset::from_rows(
        mesh.clone(),
        &coords,
        &attrs[6..],
        &duals,
        GRID
    ))
    .contains("voxel attribute rows"));
    assert!(err(Asset::from_rows(
        mesh.clone(),
        &coords[..5],
        &attrs,
        &duals,
        GRID
    ))
    .contains("whole number of rows"));
    let mut nan = attrs.clone();
    nan[7] = f32::NAN;
    assert!(
        err(Asset::from_rows(mesh.clone(), &coords, &nan, &duals, GRID)).contains("non-finite")
    );
    let mut batch = coords.clone();
    batch[4] = 1;
    assert!(err(Asset::from_rows(mesh.clone(), &batch, &attrs, &duals, GRID)).contains("batch"));
    assert!(err(Asset::from_rows(mesh.clone(), &coords, &attrs, &duals, 16)).contains("outside"));
    let mut bad_face = mesh.clone();
    bad_face.faces.push([0, 1, u32::MAX]);
    assert!(err(Asset::from_rows(bad_face, &coords, &attrs, &duals, GRID)).contains("face"));

    // No triangles: splats still fine, mesh writers refuse without leaving anything behind.
    let points = Mesh {
        vertices: mesh.vertices.clone(),
        faces: vec![],
    };
    let asset = Asset::from_rows(points, &coords, &attrs, &duals, GRID).unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_splat_ply(&dir.path().join("s.ply"), &asset, Up::Y, SplatBudget::All).unwrap();
    for (name, result) in [
        (
            "m.ply",
            write_mesh_ply(&dir.path().join("m.ply"), &asset, Up::Y),
        ),
        ("m.glb", write_glb(&dir.path().join("m.glb"), &asset, Up::Y)),
    ] {
        let e = format!("{:#}", result.expect_err(name));
        assert!(e.contains("no triangles"), "{e}");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["s.ply"]);
    // A directory that does not exist: an error naming the path.
    let missing = dir.path().join("nope/out.glb");
    let e = format!(
        "{:#}",
        write_glb(&missing, &sphere(1.0), Up::Y).unwrap_err()
    );
    assert!(e.contains("nope/out.glb"), "{e}");
}

#[test]
fn textured_glb_holds_uvs_and_two_png_textures_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.glb"), dir.path().join("b.glb"));
    let report = write_textured_glb(&a, &sphere(1.0), Up::Y, 512).unwrap();
    write_textured_glb(&b, &sphere(1.0), Up::Y, 512).unwrap();
    assert!(
        std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
        "two writes differ"
    );
    let asset = sphere(1.0);
    assert_eq!(report.faces, asset.mesh().faces.len());
    assert!(!report.alpha_blend);
    let (doc, buffers, images) = gltf::import(&a).unwrap();
    assert_eq!(images.len(), 2);
    for image in &images {
        assert_eq!((image.width, image.height), (512, 512));
        // Opaque: no alpha channel stored.
        assert_eq!(image.format, gltf::image::Format::R8G8B8);
    }
    let material = doc.materials().next().unwrap();
    assert_eq!(material.alpha_mode(), gltf::material::AlphaMode::Opaque);
    let pbr = material.pbr_metallic_roughness();
    assert_eq!(pbr.base_color_factor(), [1.0; 4]);
    assert_eq!((pbr.metallic_factor(), pbr.roughness_factor()), (1.0, 1.0));
    // Metallic (B) and roughness (G) are the voxels' constants on every texel.
    let mr = &images[pbr
        .metallic_roughness_texture()
        .unwrap()
        .texture()
        .source()
        .index()];
    for texel in mr.pixels.chunks_exact(3) {
        assert_eq!(texel, [255, unit_to_u8(ROUGHNESS), unit_to_u8(METALLIC)]);
    }
    let prim = doc.meshes().next().unwrap().primitives().next().unwrap();
    let reader = prim.reader(|b| Some(&buffers[b.index()]));
    assert!(reader.read_colors(0).is_none());
    let uvs: Vec<[f32; 2]> = reader.read_tex_coords(0).unwrap().into_f32().collect();
    assert!(uvs.iter().flatten().all(|v| (0.0..=1.0).contains(v)));
    assert_eq!(uvs.len(), report.vertices);
    // Varying alpha makes the material BLEND and the base colour RGBA.
    let report = write_textured_glb(&a, &sphere(0.5), Up::Y, 512).unwrap();
    assert!(report.alpha_blend);
    let (doc, _, images) = gltf::import(&a).unwrap();
    assert_eq!(
        doc.materials().next().unwrap().alpha_mode(),
        gltf::material::AlphaMode::Blend
    );
    assert_eq!(images[0].format, gltf::image::Format::R8G8B8A8);
}

/// A sphere shell of radius 40 voxels on a 96³ grid (tens of thousands of triangles: more than
/// one parallel work item of every writer), coloured by position.
fn large_sphere() -> Asset {
    const GRID: u32 = 96;
    let centre = GRID as f32 / 2.0 + 0.3;
    let (coords, feats) = sign_field_voxels(4..92, 0, |p| {
        in_ball(p, [centre, centre - 0.2, centre + 0.1], 40.0)
    });
    let mut mesh = decoder_output_to_meshes(&coords, &feats, GRID)
        .expect("extraction")
        .remove(0);
    let duals: Vec<f32> = mesh.vertices.iter().flatten().copied().collect();
    fill_holes(&mut mesh, trellis2::mesh::DEFAULT_MAX_HOLE_PERIMETER).expect("fill holes");
    let attrs: Vec<f32> = coords
        .chunks_exact(4)
        .flat_map(|c| {
            let [r, g, b] = [c[1], c[2], c[3]].map(|v| v as f32 / GRID as f32);
            [r, g * 1.2 - 0.1, b, r * g, 1.0 - b, 0.5 + 0.5 * r]
        })
        .collect();
    Asset::from_rows(mesh, &coords, &attrs, &duals, GRID).expect("valid asset")
}

/// A fresh asset of `asset`'s surface and voxels with `attrs` (nothing computed on it yet).
fn rebuilt(asset: &Asset, attrs: Vec<[f32; PBR_CHANNELS]>) -> Asset {
    Asset::new(
        asset.mesh().clone(),
        asset.voxel_coords().to_vec(),
        attrs,
        asset.dual_vertices().to_vec(),
        asset.resolution(),
    )
    .unwrap()
}

/// The mesh PLY, the vertex-colour GLB of the full and of a decimated mesh and the splat PLY,
/// each written without the shared preparation `generate` does first, with it, with it after
/// the outward faces were given (as the pipeline orients them beside the texture stages), and
/// on the geometry built ahead with placeholder attributes (prepared, so that its colours at
/// the vertices must be dropped) given the real ones.
fn mesh_outputs_bytes(asset: &Asset, dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let reduced = asset.decimated(asset.mesh().faces.len() / 4).unwrap();
    for prepared in ["no", "yes", "given faces", "geometry ahead"] {
        let with_attrs = |attrs| rebuilt(asset, attrs);
        let outward = || trellis2::export::face_orientation::faces_wound_outward(asset.mesh());
        let asset = &match prepared {
            "given faces" => with_attrs(asset.voxel_attrs().to_vec())
                .with_oriented_faces(outward())
                .unwrap(),
            "geometry ahead" => {
                let placeholders = vec![[0.0; PBR_CHANNELS]; asset.voxel_coords().len()];
                let geometry = with_attrs(placeholders)
                    .with_oriented_faces(outward())
                    .unwrap();
                geometry.prepare_mesh_outputs().unwrap();
                geometry
                    .with_attributes(asset.voxel_attrs().to_vec())
                    .unwrap()
            }
            _ => with_attrs(asset.voxel_attrs().to_vec()),
        };
        if prepared != "no" {
            asset.prepare_mesh_outputs().unwrap();
        }
        let files = [
            ("mesh.ply", dir.join("mesh.ply")),
            ("mesh.glb", dir.join("mesh.glb")),
            ("decimated.glb", dir.join("decimated.glb")),
            ("splats.ply", dir.join("splats.ply")),
        ];
        write_mesh_ply(&files[0].1, asset, Up::Y).unwrap();
        write_glb(&files[1].1, asset, Up::Y).unwrap();
        let decimated = asset.decimated(asset.mesh().faces.len() / 4).unwrap();
        assert_eq!(decimated.mesh(), reduced.mesh(), "prepared: {prepared}");
        write_glb(&files[2].1, &decimated, Up::Y).unwrap();
        // The splat fit reuses the prepared outward faces.
        write_splat_ply(&files[3].1, asset, Up::Y, SplatBudget::All).unwrap();
        for (name, path) in files {
            out.push((
                format!("{name} (prepared: {prepared})"),
                std::fs::read(path).unwrap(),
            ));
        }
    }
    out
}

#[test]
fn mesh_writers_give_the_same_bytes_on_one_and_four_threads() {
    let asset = large_sphere();
    assert!(
        asset.mesh().faces.len() > 40_000,
        "{}",
        asset.mesh().faces.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let on = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| mesh_outputs_bytes(&asset, dir.path()))
    };
    let (one, four) = (on(1), on(4));
    for ((name, a), (_, b)) in one.iter().zip(&four) {
        assert!(a.len() > 10_000, "{name}: {} bytes", a.len());
        assert!(a == b, "{name}: 1 and 4 threads differ");
    }
    // Preparing first changes nothing either, nor giving the outward faces, nor the
    // attributes given to the geometry built ahead.
    for k in 0..4 {
        assert!(one[k].1 == one[k + 4].1, "{}: prepared differs", one[k].0);
        assert!(one[k].1 == one[k + 8].1, "{}: given faces differ", one[k].0);
        assert!(
            one[k].1 == one[k + 12].1,
            "{}: geometry ahead differs",
            one[k].0
        );
    }
}

/// Attributes given to an asset must be one finite row per voxel.
#[test]
fn attributes_given_to_an_asset_are_checked() {
    let n = sphere(1.0).voxel_coords().len();
    let e = sphere(1.0)
        .with_attributes(vec![[0.5; PBR_CHANNELS]; n - 1])
        .expect_err("one row short");
    assert!(format!("{e:#}").contains("attribute rows for"), "{e:#}");
    let mut attrs = vec![[0.5; PBR_CHANNELS]; n];
    attrs[7][2] = f32::NAN;
    let e = sphere(1.0).with_attributes(attrs).expect_err("not finite");
    assert!(format!("{e:#}").contains("voxel 7"), "{e:#}");
    let given = sphere(1.0)
        .with_attributes(vec![[0.5; PBR_CHANNELS]; n])
        .unwrap();
    assert!(given
        .voxel_attrs()
        .iter()
        .all(|a| *a == [0.5; PBR_CHANNELS]));
}

/// Given outward faces must be the mesh's own faces, each possibly re-wound.
#[test]
fn oriented_faces_that_are_not_the_meshs_are_refused() {
    let asset = sphere(1.0);
    let faces = trellis2::export::face_orientation::faces_wound_outward(asset.mesh());
    let rewound: Vec<[u32; 3]> = faces.iter().map(|&[a, b, c]| [a, c, b]).collect();
    let fresh = || sphere(1.0);
    assert!(
        fresh().with_oriented_faces(rewound).is_ok(),
        "re-winding is allowed"
    );
    let mut other = faces.clone();
    other[3] = other[4];
    let e = fresh()
        .with_oriented_faces(other)
        .expect_err("another face");
    assert!(format!("{e:#}").contains("oriented face 3"), "{e:#}");
    let e = fresh()
        .with_oriented_faces(faces[1..].to_vec())
        .expect_err("one face short");
    assert!(format!("{e:#}").contains("oriented faces for"), "{e:#}");
}

#[test]
fn the_mesh_ply_is_what_serde_ply_writes_for_its_rows() {
    use trellis2::export::mesh_arrays::MeshArrays;
    use trellis2::export::ply_header::encode_ply;

    #[derive(serde::Serialize)]
    struct Vertex {
        x: f32,
        y: f32,
        z: f32,
        red: u8,
        green: u8,
        blue: u8,
        alpha: u8,
    }
    #[derive(serde::Serialize)]
    struct Face {
        vertex_indices: Vec<i32>,
    }
    #[derive(serde::Serialize)]
    struct File {
        vertex: Vec<Vertex>,
        face: Vec<Face>,
    }
    let asset = large_sphere();
    for up in [Up::Y, Up::Z] {
        let arrays = MeshArrays::new(&asset, up).unwrap();
        let file = File {
            vertex: arrays
                .positions
                .iter()
                .zip(&arrays.rgba8)
                .map(|(p, c)| Vertex {
                    x: p[0],
                    y: p[1],
                    z: p[2],
                    red: c[0],
                    green: c[1],
                    blue: c[2],
                    alpha: c[3],
                })
                .collect(),
            face: arrays
                .faces
                .iter()
                .map(|f| Face {
                    vertex_indices: f.iter().map(|&i| i as i32).collect(),
                })
                .collect(),
        };
        let mut want = Vec::new();
        encode_ply(
            &file,
            "vertex colours: sRGB base colour and alpha sampled from the O-Voxels",
            up,
            &mut want,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.ply");
        write_mesh_ply(&path, &asset, up).unwrap();
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got.len(), want.len(), "{up:?}");
        assert!(got == want, "{up:?}: the bytes differ");
    }
}

/// Splat patches computed ahead on the same surface and voxels with placeholder attributes
/// (as the pipeline does beside the texture stages) give the same splats, merged or not; a
/// count that is not the voxels' is refused.
#[test]
fn splat_patches_computed_ahead_give_the_same_splats() {
    use trellis2::export::splat_fit::{fit_splats, splat_patches};
    let asset = large_sphere();
    let copy = |attrs| rebuilt(&asset, attrs);
    let n = asset.voxel_coords().len();
    let shape = SplatShape::default();
    let geometry = copy(vec![[0.0; PBR_CHANNELS]; n]);
    let patches = std::sync::Arc::new(splat_patches(&geometry, &shape));
    let given = copy(asset.voxel_attrs().to_vec())
        .with_splat_patches(patches.clone())
        .unwrap();
    for budget in [SplatBudget::All, SplatBudget::AtMost(n / 3)] {
        let (a, b) = (
            fit_splats(&asset, budget, &shape),
            fit_splats(&given, budget, &shape),
        );
        assert!(!a.is_empty());
        assert_eq!(a, b, "{budget:?}");
    }
    // Another shape ignores them (and fits its own).
    let other = SplatShape {
        max_anisotropy: 1.5,
        ..shape
    };
    assert_eq!(
        fit_splats(&asset, SplatBudget::All, &other),
        fit_splats(&given, SplatBudget::All, &other)
    );
    let small = sphere(1.0);
    let e = small
        .with_splat_patches(patches)
        .expect_err("another object's count");
    assert!(format!("{e:#}").contains("splat patches for"), "{e:#}");
}
