//! `trellis2 texture` end to end on the tiny models (tests/fixtures/golden with its
//! texturing_pipeline.json): GLB, glTF, OBJ and PLY inputs, UVs kept or a new atlas, the input's
//! geometry unchanged, validator-clean output, bad meshes, a batch with a bad pair, the report's
//! phases, and byte-identical reruns.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{output_text as text, path_arg as s, trellis2_cpu as trellis2, write_ascii_ply};
use serde_json::json;
use trellis2::export::glb::read_glb;

const IMAGE: &str =
    "golden/images/0a34fae7ba57cb8870df5325b9c30ea474def1b0913c19c596655b85a79fdee4.webp";

fn image() -> String {
    s(&common::fixture(IMAGE))
}

/// The cheapest run of the tiny models: grid 64, one sampling step, 512² textures.
fn fast_args(out: &Path) -> Vec<String> {
    [
        "-o",
        &s(out),
        "--model",
        &s(&common::fixture("golden")),
        "--resolution",
        "64",
        "--steps",
        "1",
        "--texture-size",
        "512",
        "--rembg",
        "none",
        "--seed",
        "5",
    ]
    .map(String::from)
    .to_vec()
}

fn run(pairs: &[String], out: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<String> = vec!["texture".into()];
    args.extend(pairs.iter().cloned());
    // The fast defaults, less the flags `extra` gives itself.
    for flag in fast_args(out).chunks(2) {
        if !extra.contains(&flag[0].as_str()) && !pairs.contains(&flag[0]) {
            args.extend(flag.iter().cloned());
        }
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    trellis2(&refs)
}

/// A UV sphere away from the origin and not of unit size (so that an output in the wrong frame
/// shows), `segments × rings` quads, a seam of duplicated vertices at u = 0 / 1.
struct Sphere {
    positions: Vec<[f32; 3]>,
    uvs: Vec<[f32; 2]>,
    faces: Vec<[u32; 3]>,
}

fn sphere(segments: u32, rings: u32) -> Sphere {
    let (mut positions, mut uvs, mut faces) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..=rings {
        let theta = std::f32::consts::PI * r as f32 / rings as f32;
        for k in 0..=segments {
            let phi = std::f32::consts::TAU * k as f32 / segments as f32;
            let (x, y, z) = (
                theta.sin() * phi.cos(),
                theta.cos(),
                theta.sin() * phi.sin(),
            );
            positions.push([10.0 + 2.0 * x, 5.0 + 3.0 * y, -3.0 + 2.0 * z]);
            uvs.push([k as f32 / segments as f32, r as f32 / rings as f32]);
        }
    }
    let at = |r: u32, k: u32| r * (segments + 1) + k;
    for r in 0..rings {
        for k in 0..segments {
            // Outward winding (counter-clockwise seen from outside).
            faces.push([at(r, k), at(r, k + 1), at(r + 1, k)]);
            faces.push([at(r, k + 1), at(r + 1, k + 1), at(r + 1, k)]);
        }
    }
    Sphere {
        positions,
        uvs,
        faces,
    }
}

fn gltf_parts(m: &Sphere) -> (serde_json::Value, Vec<u8>) {
    let mut bin = Vec::new();
    bin.extend(m.positions.iter().flatten().flat_map(|v| v.to_le_bytes()));
    let uv_offset = bin.len();
    bin.extend(m.uvs.iter().flatten().flat_map(|v| v.to_le_bytes()));
    let ix_offset = bin.len();
    bin.extend(m.faces.iter().flatten().flat_map(|v| v.to_le_bytes()));
    let n = m.positions.len();
    let (lo, hi) = m
        .positions
        .iter()
        .fold(([f32::MAX; 3], [f32::MIN; 3]), |(lo, hi), p| {
            (
                std::array::from_fn(|a| lo[a].min(p[a])),
                std::array::from_fn(|a| hi[a].max(p[a])),
            )
        });
    let doc = json!({
        "asset": { "version": "2.0" },
        "scene": 0,
        "scenes": [{ "nodes": [0] }],
        "nodes": [{ "mesh": 0 }],
        "meshes": [{ "primitives": [{
            "attributes": { "POSITION": 0, "TEXCOORD_0": 1 }, "indices": 2, "mode": 4,
        }]}],
        "accessors": [
            { "bufferView": 0, "componentType": 5126, "count": n, "type": "VEC3",
              "min": lo, "max": hi },
            { "bufferView": 1, "componentType": 5126, "count": n, "type": "VEC2" },
            { "bufferView": 2, "componentType": 5125, "count": m.faces.len() * 3,
              "type": "SCALAR" },
        ],
        "bufferViews": [
            { "buffer": 0, "byteOffset": 0, "byteLength": uv_offset },
            { "buffer": 0, "byteOffset": uv_offset, "byteLength": ix_offset - uv_offset },
            { "buffer": 0, "byteOffset": ix_offset, "byteLength": bin.len() - ix_offset },
        ],
        "buffers": [{ "byteLength": bin.len() }],
    });
    (doc, bin)
}

fn write_glb(path: &Path, m: &Sphere) {
    let (doc, bin) = gltf_parts(m);
    std::fs::write(path, common::glb_bytes(&doc, bin)).unwrap();
}

/// A JSON glTF with its buffer in a `.bin` file beside it.
fn write_gltf(path: &Path, m: &Sphere) {
    let (mut doc, bin) = gltf_parts(m);
    let bin_name = path.with_extension("bin");
    std::fs::write(&bin_name, bin).unwrap();
    doc["buffers"][0]["uri"] = json!(bin_name.file_name().unwrap().to_str().unwrap());
    std::fs::write(path, serde_json::to_vec(&doc).unwrap()).unwrap();
}

/// OBJ with one `vt` per `v` (UVs up from the bottom, as OBJ has them).
fn write_obj(path: &Path, m: &Sphere) {
    let mut t = String::from("# test sphere\n");
    for p in &m.positions {
        t += &format!("v {} {} {}\n", p[0], p[1], p[2]);
    }
    for uv in &m.uvs {
        t += &format!("vt {} {}\n", uv[0], 1.0 - uv[1]);
    }
    for f in &m.faces {
        let [a, b, c] = f.map(|i| i + 1);
        t += &format!("f {a}/{a} {b}/{b} {c}/{c}\n");
    }
    std::fs::write(path, t).unwrap();
}

fn validator_clean(files: &[PathBuf]) {
    for (file, (errors, warnings, messages)) in files.iter().zip(common::validate_gltf(files)) {
        assert_eq!(errors, 0, "{}: {messages}", file.display());
        // Unused attributes and the like are warnings the writer must not cause either.
        assert_eq!(warnings, 0, "{}: {messages}", file.display());
    }
}

#[test]
fn glb_gltf_obj_and_ply_inputs_keep_their_geometry_and_get_textures() {
    let dir = tempfile::tempdir().unwrap();
    let m = sphere(24, 12);
    let glb_in = dir.path().join("ball.glb");
    let gltf_in = dir.path().join("ball_gltf.gltf");
    let obj_in = dir.path().join("ball_obj.obj");
    let ply_in = dir.path().join("ball_ply.ply");
    write_glb(&glb_in, &m);
    write_gltf(&gltf_in, &m);
    write_obj(&obj_in, &m);
    // The PLY has no UVs (a new atlas) and a fin: a triangle on an existing edge, making it
    // non-manifold, which is textured with a warning.
    let mut positions = m.positions.clone();
    positions.push([14.0, 5.0, -3.0]);
    let mut faces = m.faces.clone();
    // An edge between two rings, shared by two triangles already.
    let fin = m.faces[m.faces.len() / 2];
    faces.push([fin[0], fin[1], positions.len() as u32 - 1]);
    write_ascii_ply(&ply_in, &positions, &faces);

    let out = dir.path().join("out");
    let report = dir.path().join("report.json");
    let pairs = [&glb_in, &gltf_in, &obj_in, &ply_in]
        .iter()
        .flat_map(|p| [s(p), image()])
        .collect::<Vec<_>>();
    let o = run(&pairs, &out, &["--report", &s(&report)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("warning:") && text(&o).contains("non-manifold"),
        "{}",
        text(&o)
    );

    // UVs kept: as many vertices as the input, and every triangle's corners at the input's
    // positions and UVs, in its own frame (the GLB keeps its vertex order and indices; the OBJ
    // reader numbers vertices in the order the faces first use them).
    for name in ["ball", "ball_gltf", "ball_obj"] {
        let (data, summary) = read_glb(&out.join(format!("{name}.glb"))).unwrap();
        assert_eq!(data.positions.len(), m.positions.len(), "{name}");
        assert_eq!(data.indices.len(), m.faces.len() * 3, "{name}");
        let uvs = data.texcoords.expect("TEXCOORD_0");
        for (k, (&got, &want)) in data
            .indices
            .iter()
            .zip(m.faces.iter().flatten())
            .enumerate()
        {
            let (p, q) = (data.positions[got as usize], m.positions[want as usize]);
            for a in 0..3 {
                assert!(
                    (p[a] - q[a]).abs() <= 1e-5 * q[a].abs().max(1.0),
                    "{name} corner {k}"
                );
            }
            let (u, w) = (uvs[got as usize], m.uvs[want as usize]);
            assert!(
                (u[0] - w[0]).abs() < 1e-6 && (u[1] - w[1]).abs() < 1e-6,
                "{name} {k}"
            );
        }
        if name != "ball_obj" {
            let want_ix: Vec<u32> = m.faces.iter().flatten().copied().collect();
            assert_eq!(data.indices, want_ix, "a GLB's indices are kept");
            assert_eq!(
                data.positions, m.positions,
                "a GLB's positions are kept bit for bit"
            );
        }
        let tex = data.base_color_texture.expect("a base colour texture");
        assert_eq!((tex.width, tex.height), (512, 512));
        assert_eq!(summary.textures, 2, "base colour and metallic-roughness");
    }
    // New atlas: every output vertex is an input vertex (seams split them), all triangles kept.
    let (data, _) = read_glb(&out.join("ball_ply.glb")).unwrap();
    assert!(data.positions.len() >= positions.len());
    assert_eq!(data.indices.len(), faces.len() * 3);
    for p in &data.positions {
        assert!(positions.contains(p), "{p:?} is not an input vertex");
    }
    assert!(data.texcoords.is_some() && data.base_color_texture.is_some());

    validator_clean(&[
        out.join("ball.glb"),
        out.join("ball_gltf.glb"),
        out.join("ball_obj.glb"),
        out.join("ball_ply.glb"),
    ]);

    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let items = r["items"].as_array().unwrap();
    assert_eq!(items.len(), 4);
    for item in items {
        assert_eq!(item["status"], "ok", "{item}");
        for phase in [
            "normalise_voxelise",
            "encode",
            "conditioning",
            "sampling",
            "decode",
            "bake",
            "write",
        ] {
            assert!(
                item["phases"][phase].as_f64().is_some_and(|v| v >= 0.0),
                "{phase} missing: {item}"
            );
        }
        assert!(item["voxels"].as_u64().unwrap() > 100);
    }
    assert_eq!(items[0]["kept_uvs"], true);
    assert_eq!(items[3]["kept_uvs"], false);
    assert_eq!(items[3]["check"]["non_manifold_edges"], 1);
    // One batch, each model read once.
    for (role, loads) in r["model_loads"].as_object().unwrap() {
        assert_eq!(loads["loads"], 1, "{role}");
    }
}

#[test]
fn same_seed_gives_identical_bytes_and_another_seed_differs() {
    let dir = tempfile::tempdir().unwrap();
    let m = sphere(16, 8);
    let mesh = dir.path().join("m.glb");
    write_glb(&mesh, &m);
    let pair = [s(&mesh), image()];
    let bytes = |out: &str, extra: &[&str]| {
        let out = dir.path().join(out);
        let o = run(&pair, &out, extra);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        std::fs::read(out.join("m.glb")).unwrap()
    };
    let a = bytes("a", &[]);
    let b = bytes("b", &[]);
    assert!(a == b, "same seed, different GLB bytes");
    let c = bytes("c", &["--seed", "6"]);
    assert!(a != c, "another seed gave the same textures");
}

#[test]
fn bad_meshes_get_one_line_errors_and_the_batch_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = d.join("good.glb");
    write_glb(&good, &sphere(16, 8));
    let write = |name: &str, body: &str| {
        let p = d.join(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    let cases: Vec<(PathBuf, &str)> = vec![
        (write("empty.obj", ""), "empty mesh"),
        (
            write(
                "nofaces.ply",
                "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n\
                 property float z\nend_header\n0 0 0\n1 0 0\n0 1 0\n",
            ),
            "no faces",
        ),
        (
            write("index.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 9\n"),
            "out of bounds",
        ),
        (
            write("nan.obj", "v 0 0 0\nv NaN 0 0\nv 0 1 0\nf 1 2 3\n"),
            "non-finite",
        ),
        (
            write("flat.obj", "v 1 1 1\nv 1 1 1\nv 1 1 1\nf 1 2 3\n"),
            "zero extent",
        ),
        (
            write(
                "huge.ply",
                "ply\nformat binary_little_endian 1.0\nelement vertex 400000000\n\
                 property float x\nproperty float y\nproperty float z\nelement face 1\n\
                 property list uchar int vertex_indices\nend_header\n",
            ),
            "over the limit",
        ),
        (write("junk.glb", "not a glb at all"), "glTF"),
    ];
    let out = d.join("out");
    let report = d.join("r.json");
    let mut pairs = vec![s(&good), image()];
    for (p, _) in &cases {
        pairs.extend([s(p), image()]);
    }
    let o = run(&pairs, &out, &["--report", &s(&report)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(out.join("good.glb").is_file(), "the good pair is written");
    let stderr = String::from_utf8_lossy(&o.stderr);
    for (p, what) in &cases {
        let line = stderr
            .lines()
            .find(|l| l.starts_with(&format!("error: {}: ", p.display())))
            .unwrap_or_else(|| panic!("no error line for {}: {}", p.display(), text(&o)));
        assert!(line.contains(what), "{line}");
        let stem = p.file_stem().unwrap().to_string_lossy();
        assert!(
            !out.join(format!("{stem}.glb")).exists(),
            "no output for {stem}"
        );
    }
    assert!(!stderr.contains("panicked"), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let failed = r["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["status"] == "failed")
        .count();
    assert_eq!(failed, cases.len());
}

#[test]
fn usage_errors_exit_2_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mesh = dir.path().join("m.glb");
    write_glb(&mesh, &sphere(8, 4));
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![s(&mesh)], "pairs"),
        (
            vec![s(&dir.path().join("missing.glb")), image()],
            "no such file",
        ),
        (vec![image(), image()], "not a mesh"),
        (
            vec![s(&mesh), image(), "--resolution".into(), "100".into()],
            "100",
        ),
        (
            vec![s(&mesh), image(), "--steps".into(), "ss=3".into()],
            "tex sampler",
        ),
        (
            vec![s(&mesh), image(), s(&mesh), image()],
            "would both write",
        ),
    ];
    for (pair, what) in cases {
        let o = run(&pair, &out, &[]);
        assert_eq!(o.status.code(), Some(2), "{pair:?}: {}", text(&o));
        assert!(text(&o).contains(what), "{pair:?}: {}", text(&o));
    }
    assert!(!out.join("m.glb").exists());
}

#[test]
fn pairs_file_lists_meshes_relative_to_itself() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("in");
    std::fs::create_dir_all(&sub).unwrap();
    write_obj(&sub.join("pot.obj"), &sphere(16, 8));
    std::fs::copy(common::fixture(IMAGE), sub.join("pot.webp")).unwrap();
    let list = sub.join("pairs.tsv");
    std::fs::write(&list, "# mesh\timage\n\npot.obj\tpot.webp\n").unwrap();
    let out = dir.path().join("out");
    let o = run(&[], &out, &["--pairs", &s(&list)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(out.join("pot.glb").is_file());
    std::fs::write(&list, "pot.obj pot.webp\n").unwrap();
    let o = run(&[], &out, &["--pairs", &s(&list)]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("MESH<TAB>IMAGE"), "{}", text(&o));
}

#[test]
fn the_pbr_voxels_are_exactly_the_voxelised_mesh() {
    use trellis2::mesh::{voxelise, UnitBoxFrame, TEXTURING_WEIGHTS};
    let dir = tempfile::tempdir().unwrap();
    let m = sphere(16, 8);
    let mesh = dir.path().join("m.glb");
    write_glb(&mesh, &m);
    let latents = dir.path().join("m.latents.safetensors");
    let o = run(
        &[s(&mesh), image()],
        &dir.path().join("out"),
        &["--save-latents", &s(&latents)],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let saved =
        trellis2::export::tensors::read_tensors(&latents, &candle_core::Device::Cpu).unwrap();
    let mut got: Vec<Vec<i32>> = saved["tex_voxels.coords"].to_vec2::<i32>().unwrap();
    got.sort();
    let frame = UnitBoxFrame::fit(&m.positions).unwrap();
    let grid = voxelise(
        &frame.apply_all(&m.positions),
        &m.faces,
        64,
        TEXTURING_WEIGHTS,
    )
    .unwrap();
    let mut want: Vec<Vec<i32>> = grid
        .voxels
        .iter()
        .map(|v| vec![0, v[0], v[1], v[2]])
        .collect();
    want.sort();
    assert_eq!(
        got, want,
        "the texture decoder rebuilt other voxels than the mesh's"
    );
    let feats = saved["tex_voxels.feats"].dims().to_vec();
    assert_eq!(feats, vec![want.len(), 6]);
}
