//! `trellis2 generate` end to end on the tiny golden models: golden parity through the CLI
//! (`--noise`, `--save-latents`, `trellis2 compare`), `--from-latents`, batches with bad items,
//! byte-identical reruns, and usage errors.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{output_text as text, path_arg as s, trellis2_cpu as trellis2};

const IMAGE: &str =
    "golden/images/0a34fae7ba57cb8870df5325b9c30ea474def1b0913c19c596655b85a79fdee4.webp";

fn model() -> String {
    s(&common::fixture("golden"))
}

/// The cheapest full run of the tiny models: 512 type, one step per sampler.
fn fast_args(out: &Path) -> Vec<String> {
    vec![
        "-o".into(),
        s(out),
        "--model".into(),
        model(),
        "--pipeline".into(),
        "512".into(),
        "--steps".into(),
        "1".into(),
        "--seed".into(),
        "3".into(),
    ]
}

#[test]
fn golden_512_through_the_cli_then_decode_again_from_latents() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let latents = dir.path().join("run.latents.safetensors");
    let golden = common::fixture("golden/pipeline/pipeline_512.safetensors");
    let o = trellis2(&[
        "generate",
        &s(&common::fixture(IMAGE)),
        "-o",
        &s(&out),
        "--model",
        &model(),
        "--pipeline",
        "512",
        "--steps",
        "ss=5,shape=4,tex=4",
        "--noise",
        &s(&golden),
        "--save-latents",
        &s(&latents),
        "--report",
        &s(&dir.path().join("report.json")),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    // Every golden tensor, same names and shapes (no structural difference), within 1e-4.
    let c = trellis2(&[
        "compare",
        &s(&latents),
        &s(&golden),
        "--atol",
        "1e-4",
        "--rtol",
        "1e-4",
    ]);
    println!("{}", text(&c));
    assert!(c.status.success(), "{}", text(&c));
    assert!(String::from_utf8_lossy(&c.stdout).contains("0 structural differences"));

    let stem = "0a34fae7ba57cb8870df5325b9c30ea474def1b0913c19c596655b85a79fdee4";
    let splat = trellis2::export::ply::read_ply(&out.join(format!("{stem}.splat.ply"))).unwrap();
    assert!(splat.is_gaussian_splat());
    let mesh = trellis2::export::ply::read_ply(&out.join(format!("{stem}.mesh.ply"))).unwrap();
    assert!(mesh.is_mesh());
    let (glb, _) = trellis2::export::glb::read_glb(&out.join(format!("{stem}.glb"))).unwrap();
    assert!(
        glb.triangle_count() >= 8254,
        "{} triangles",
        glb.triangle_count()
    );

    // The default GLB is textured and passes the Khronos validator without warnings.
    let glb_path = out.join(format!("{stem}.glb"));
    let (errors, warnings, messages) = common::validate_gltf(&[glb_path])[0].clone();
    assert_eq!((errors, warnings), (0, 0), "{messages}");

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    let item = &report["items"][0];
    assert_eq!(item["status"], "ok");
    let texture = &item["glb"]["texture"];
    assert_eq!(texture["texture_size"], 2048, "{item}");
    assert!(texture["charts"].as_u64().unwrap() > 0, "{item}");
    assert!(item["glb"]["seconds"].as_f64().unwrap() > 0.0, "{item}");
    assert_eq!(item["resolution"], 512);
    assert_eq!(item["voxels"], 5568);
    let stages: Vec<&str> = item["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        stages,
        [
            "preprocess",
            "conditioning",
            "sparse_structure",
            "shape",
            "shape_decode",
            "texture",
            "texture_decode"
        ]
    );
    assert_eq!(report["settings"]["ss"]["steps"], 5);
    // The kernel tuning of the run, every knob by its variable's name.
    let tuning = report["tuning"].as_object().expect("a tuning object");
    assert_eq!(tuning.len(), trellis2::ops::tuning::Tuning::knobs().len());
    assert!(tuning["TRELLIS2_CONV_KERNEL"].is_string(), "{tuning:?}");
    // The read-ahead of the weight files, in the order the run loads them; no CUDA warm-up on
    // the CPU.
    let prefetch = &report["weight_prefetch"][0];
    let read: Vec<&str> = prefetch["files"]
        .as_array()
        .expect("a read-ahead report")
        .iter()
        .map(|f| f["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        read,
        [
            "image_cond_model",
            "sparse_structure_flow_model",
            "sparse_structure_decoder",
            "shape_slat_flow_model_512",
            "shape_slat_decoder",
            "tex_slat_flow_model_512",
            "tex_slat_decoder"
        ]
    );
    assert!(report.get("candle_kernels").is_none(), "{report}");

    // Decoding the saved latents again gives the same files, without sampling.
    let again = dir.path().join("again");
    let o = trellis2(&[
        "generate",
        "--from-latents",
        &s(&latents),
        "-o",
        &s(&again),
        "--model",
        &model(),
        "--format",
        "glb",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let a = std::fs::read(out.join(format!("{stem}.glb"))).unwrap();
    let b = std::fs::read(again.join("run.glb")).unwrap();
    assert!(
        a == b,
        "GLB from --from-latents differs from the original run"
    );

    // --normal-map on the decoder's own mesh: a normalTexture and TANGENTs the validator
    // accepts, and the report says it was baked.
    let mapped = dir.path().join("mapped");
    let mapped_report = dir.path().join("mapped.json");
    let o = trellis2(&[
        "generate",
        "--from-latents",
        &s(&latents),
        "-o",
        &s(&mapped),
        "--model",
        &model(),
        "--format",
        "glb",
        "--texture-size",
        "512",
        "--normal-map",
        "--report",
        &s(&mapped_report),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let glb_path = mapped.join("run.glb");
    let (errors, warnings, messages) =
        common::validate_gltf(std::slice::from_ref(&glb_path))[0].clone();
    assert_eq!((errors, warnings), (0, 0), "{messages}");
    let (doc, _, _) = gltf::import(&glb_path).unwrap();
    let prim = doc.meshes().next().unwrap().primitives().next().unwrap();
    assert!(prim.material().normal_texture().is_some());
    assert!(prim.get(&gltf::Semantic::Tangents).is_some());
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&mapped_report).unwrap()).unwrap();
    let texture = &report["items"][0]["glb"]["texture"];
    assert_eq!(texture["normal_map"], true, "{texture}");
    assert!(
        texture["normal_map_seconds"].as_f64().unwrap() > 0.0,
        "{texture}"
    );
}

#[test]
fn batch_finishes_good_images_and_reports_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("in");
    std::fs::create_dir_all(&inputs).unwrap();
    std::fs::copy(common::fixture(IMAGE), inputs.join("good.webp")).unwrap();
    std::fs::write(
        inputs.join("corrupt.png"),
        b"\x89PNG\r\n\x1a\nnot really a png",
    )
    .unwrap();
    image::RgbaImage::from_pixel(64, 64, image::Rgba([200, 10, 10, 0]))
        .save(inputs.join("transparent.png"))
        .unwrap();
    let out = dir.path().join("out");
    let mut args = vec!["generate".to_string(), s(&inputs)];
    args.extend(fast_args(&out));
    args.extend([
        "--format".into(),
        "glb".into(),
        "--report".into(),
        s(&dir.path().join("r.json")),
    ]);
    let o = trellis2(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(out.join("good.glb").is_file(), "{t}");
    assert!(!out.join("corrupt.glb").exists() && !out.join("transparent.glb").exists());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("error: ") && stderr.contains("corrupt.png"),
        "{t}"
    );
    assert!(
        stderr.contains("transparent.png") && stderr.contains("fully transparent"),
        "{t}"
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("1 generated, 0 skipped, 2 failed"),
        "{t}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("r.json")).unwrap()).unwrap();
    let statuses: Vec<&str> = report["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["failed", "ok", "failed"]);

    // --skip-existing resumes: the good image is skipped, the bad ones fail again.
    let o = trellis2(
        &args
            .iter()
            .map(String::as_str)
            .chain(["--skip-existing"])
            .collect::<Vec<_>>(),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("0 generated, 1 skipped, 2 failed"));
}

#[test]
fn same_seed_twice_gives_byte_identical_latents_and_outputs() {
    let dir = tempfile::tempdir().unwrap();
    // The latents file and each file of `formats` ending as asked.
    let run = |name: &str, formats: &str, ends: &[&str]| -> (Vec<u8>, Vec<Vec<u8>>) {
        let out = dir.path().join(name);
        let latents: PathBuf = out.join("l.safetensors");
        let mut args = vec!["generate".to_string(), s(&common::fixture(IMAGE))];
        args.extend(fast_args(&out));
        args.extend([
            "--save-latents".into(),
            s(&latents),
            "--format".into(),
            formats.into(),
            "--quiet".into(),
        ]);
        let o = trellis2(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(o.status.success(), "{}", text(&o));
        let files = ends
            .iter()
            .map(|end| {
                let path = std::fs::read_dir(&out)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .find(|p| p.to_string_lossy().ends_with(end))
                    .unwrap();
                std::fs::read(path).unwrap()
            })
            .collect();
        (std::fs::read(latents).unwrap(), files)
    };
    let (la, sa) = run("a", "splat", &[".splat.ply"]);
    // With a mesh format the splat fit reuses its outward faces, and both splat formats share
    // one fit: the same bytes as each written alone.
    let (lb, sb) = run(
        "b",
        "splat,splat-spz,mesh-ply",
        &[".splat.ply", ".spz", ".mesh.ply"],
    );
    let (_, sc) = run("c", "splat-spz", &[".spz"]);
    assert!(la.len() > 1000);
    assert!(
        la == lb,
        "latents files differ between two runs with the same seed"
    );
    assert!(
        sa[0] == sb[0],
        "splat files differ between two runs with the same seed"
    );
    assert!(sb[1] == sc[0], "SPZ files differ with and without the PLY");
}

#[test]
fn usage_errors_fail_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let img = s(&common::fixture(IMAGE));
    let noise = s(&common::fixture("golden/pipeline/pipeline_512.safetensors"));
    // --noise belongs to one image.
    let other = dir.path().join("other.webp");
    std::fs::copy(common::fixture(IMAGE), &other).unwrap();
    let o = trellis2(&[
        "generate",
        &img,
        &s(&other),
        "--noise",
        &noise,
        "--model",
        &model(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("exactly one INPUT"), "{}", text(&o));
    let o = trellis2(&[
        "generate",
        &img,
        &s(&common::fixture(IMAGE).with_file_name("x.png")),
        "--noise",
        &noise,
        "--model",
        &model(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("x.png"), "{}", text(&o));
    let o = trellis2(&["generate", "--model", &model()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = trellis2(&[
        "generate",
        &img,
        "--steps",
        "ss=0",
        "--model",
        &model(),
        "-o",
        &s(dir.path()),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--steps"), "{}", text(&o));
    for bad in ["many", "1.5", "10k"] {
        let o = trellis2(&["generate", &img, "--faces", bad, "--model", &model()]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains("--faces"), "{}", text(&o));
    }
    for (flag, bad) in [
        ("--texture-size", "511"),
        ("--texture-size", "8193"),
        ("--texture-size", "big"),
        ("--texture", "jpeg"),
    ] {
        let o = trellis2(&["generate", &img, flag, bad, "--model", &model()]);
        assert_eq!(o.status.code(), Some(2), "{flag} {bad}: {}", text(&o));
        assert!(text(&o).contains(flag), "{}", text(&o));
    }
    let o = trellis2(&[
        "generate",
        &img,
        "--normal-map",
        "--texture",
        "none",
        "--model",
        &model(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--normal-map"), "{}", text(&o));
    // No --model and nothing in the (empty) hub cache: --offline names the command to run.
    let cache = dir.path().join("hub-cache");
    let o = Command::new(env!("CARGO_BIN_EXE_trellis2"))
        // Outputs are compared with CPU results: a GPU the build has (Metal on a Mac) must not
        // be picked by `--device auto`.
        .env("TRELLIS2_DEVICE", "cpu")
        .args(["generate", &img, "-o", &s(dir.path()), "--offline"])
        .env_remove("TRELLIS2_MODEL")
        .env("HF_HUB_CACHE", &cache)
        .output()
        .expect("binary runs");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("trellis2 download"), "{}", text(&o));
    if !cfg!(feature = "cuda") {
        let o = trellis2(&["generate", &img, "--device", "cuda", "--model", &model()]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains("without CUDA support"), "{}", text(&o));
    }
}

/// A JPEG photo (no alpha) of the golden image's colours on a white background.
fn photo(dir: &Path) -> std::path::PathBuf {
    let src = image::open(common::fixture(IMAGE)).unwrap().to_rgba8();
    let (w, h) = (src.width() / 4, src.height() / 4);
    let small = image::imageops::resize(&src, w, h, image::imageops::FilterType::Triangle);
    let rgb = image::RgbImage::from_fn(w, h, |x, y| {
        let p = small.get_pixel(x, y).0;
        let a = p[3] as u32;
        let mix = |c: u8| ((c as u32 * a + 255 * (255 - a)) / 255) as u8;
        image::Rgb([mix(p[0]), mix(p[1]), mix(p[2])])
    });
    let path = dir.join("photo.jpg");
    rgb.save(&path).unwrap();
    path
}

#[test]
fn photos_without_alpha_are_matted_kept_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let jpg = s(&photo(dir.path()));
    let out = dir.path().join("out");
    // No background remover in the golden model folder: a clear error naming the ways out.
    let mut args = vec!["generate".to_string(), jpg.clone()];
    args.extend(fast_args(&out));
    let argv: Vec<&str> = args.iter().map(|a| a.as_str()).collect();
    let o = trellis2(&argv);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("--rembg none"), "{}", text(&o));
    // --rembg alpha refuses it.
    let mut a2 = argv.clone();
    a2.extend(["--rembg", "alpha"]);
    let o = trellis2(&a2);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("no transparency"), "{}", text(&o));
    // --rembg none keeps the whole picture and generates.
    let mut a3 = argv.clone();
    a3.extend(["--rembg", "none", "--format", "glb"]);
    let o = trellis2(&a3);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(out.join("photo.glb").is_file());

    // A model folder holding only the release's `briaai/RMBG-2.0` (the tiny golden BiRefNet as
    // a Hugging Face folder): the default remover (ZhengPeng7/BiRefNet) is not there, and the
    // error says how to get it; `--rembg rmbg-2.0` uses the one that is.
    let model_dir = dir.path().join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    std::fs::copy(
        common::fixture("golden/pipeline.json"),
        model_dir.join("pipeline.json"),
    )
    .unwrap();
    std::os::unix::fs::symlink(common::fixture("golden/models"), model_dir.join("models")).unwrap();
    let add_remover = |repo: &str| {
        let folder = model_dir.join(repo);
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::copy(
            common::fixture("golden/birefnet/config.json"),
            folder.join("config.json"),
        )
        .unwrap();
        std::fs::copy(
            common::fixture("golden/birefnet/weights.safetensors"),
            folder.join("model.safetensors"),
        )
        .unwrap();
    };
    add_remover("briaai/RMBG-2.0");
    let out2 = dir.path().join("out2");
    let matted = |extra: &[&str]| {
        let mut a = vec![
            "generate",
            jpg.as_str(),
            "--model",
            model_dir.to_str().unwrap(),
            "--pipeline",
            "512",
            "--steps",
            "1",
            "--format",
            "glb",
            "-o",
            out2.to_str().unwrap(),
        ];
        a.extend(extra);
        // An empty hub cache: the user's own cache must not supply the missing remover.
        Command::new(env!("CARGO_BIN_EXE_trellis2"))
            // Outputs are compared with CPU results: a GPU the build has (Metal on a Mac) must not
            // be picked by `--device auto`.
            .env("TRELLIS2_DEVICE", "cpu")
            .args(&a)
            .env_remove("TRELLIS2_MODEL")
            .env("HF_HUB_CACHE", dir.path().join("empty-cache"))
            .output()
            .expect("binary runs")
    };
    let o = matted(&[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    for needle in ["ZhengPeng7/BiRefNet", "--rembg birefnet", "--rembg none"] {
        assert!(text(&o).contains(needle), "{needle}: {}", text(&o));
    }
    let o = matted(&["--rembg", "rmbg-2.0"]);
    println!("rmbg-2.0 run: {}", text(&o));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(out2.join("photo.glb").is_file());
    std::fs::remove_file(out2.join("photo.glb")).unwrap();

    // With the default remover present, a plain run mattes the photo with it.
    add_remover("ZhengPeng7/BiRefNet");
    let o = matted(&[]);
    println!("matted run: {}", text(&o));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(out2.join("photo.glb").is_file());
}

/// A batch reads each model once and writes the same bytes as one run per picture, whether it
/// runs picture by picture (models resident) or stage by stage.
#[test]
fn batch_orders_write_the_same_files_as_single_runs_and_load_each_model_once() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("in");
    let pictures = golden_pictures_in(&inputs, 3);
    assert!(pictures >= 2);
    let run = |name: &str, input: &Path, extra: &[&str]| -> (PathBuf, serde_json::Value) {
        let out = dir.path().join(name);
        let report = dir.path().join(format!("{name}.json"));
        let mut args = vec!["generate".to_string(), s(input)];
        args.extend(fast_args(&out));
        args.extend(
            [
                "--format",
                "splat,glb",
                "--texture-size",
                "512",
                "--quiet",
                "--report",
            ]
            .map(String::from),
        );
        args.push(s(&report));
        args.extend(extra.iter().map(|a| a.to_string()));
        let o = trellis2(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(o.status.success(), "{name}: {}", text(&o));
        let report = serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap();
        (out, report)
    };
    let files = |out: &Path| -> Vec<(String, Vec<u8>)> {
        let mut f: Vec<(String, Vec<u8>)> = std::fs::read_dir(out)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect();
        f.sort();
        f
    };
    let mut singles = Vec::new();
    let mut quality = Vec::new();
    for i in 0..pictures {
        let (out, report) = run(
            &format!("single{i}"),
            &inputs.join(format!("p{i}.webp")),
            &[],
        );
        singles.extend(files(&out));
        quality.push(report["items"][0]["splat_psnr_db"].as_f64().unwrap());
    }
    singles.sort();
    assert_eq!(singles.len(), 2 * pictures);
    // Overlapped writes (the default) and --no-overlap write the same bytes.
    let cases: [(&str, &[&str]); 6] = [
        ("picture", &["--batch-order", "picture"]),
        ("stage", &["--batch-order", "stage"]),
        ("picture", &["--batch-order", "picture", "--no-overlap"]),
        ("stage", &["--batch-order", "stage", "--no-overlap"]),
        (
            "picture",
            &["--device", "cpu,cpu", "--batch-order", "picture"],
        ),
        ("stage", &["--device", "cpu, cpu", "--batch-order", "stage"]),
    ];
    for (n, (order, extra)) in cases.into_iter().enumerate() {
        let (out, report) = run(&format!("run{n}"), &inputs, extra);
        let what = extra.join(" ");
        let batch = files(&out);
        assert_eq!(
            batch.iter().map(|f| &f.0).collect::<Vec<_>>(),
            singles.iter().map(|f| &f.0).collect::<Vec<_>>(),
            "{what}"
        );
        for (b, s) in batch.iter().zip(&singles) {
            assert!(b.1 == s.1, "{what}: {} differs from its single run", b.0);
        }
        assert_eq!(report["batch_order"], order, "{what}");
        let wall = report["batch_seconds"].as_f64().unwrap();
        let pace = report["pictures_per_minute"].as_f64().unwrap();
        assert!(
            (pace - pictures as f64 * 60.0 / wall).abs() < 1e-6 * pace,
            "{what}"
        );
        for i in report["items"].as_array().unwrap() {
            let end = i["finished_seconds"].as_f64().unwrap();
            assert!(end > 0.0 && end <= wall, "{what}: {end} of {wall}");
        }
        // The splat quality, measured beside the next picture's files, is the single run's;
        // one worker finishes its pictures (lines, report) in batch order.
        let items = report["items"].as_array().unwrap();
        for (i, q) in items.iter().zip(&quality) {
            assert_eq!(i["splat_psnr_db"].as_f64(), Some(*q), "{what}");
        }
        if !extra.contains(&"--device") {
            let ends: Vec<f64> = items
                .iter()
                .map(|i| i["finished_seconds"].as_f64().unwrap())
                .collect();
            assert!(ends.windows(2).all(|w| w[0] <= w[1]), "{what}: {ends:?}");
        }
        // Each worker that ran a picture read each model once.
        let items = report["items"].as_array().unwrap();
        let several = extra.contains(&"--device");
        for i in items {
            assert_eq!(i["device"].as_str() == Some("cpu"), several, "{what}");
        }
        let mut workers: Vec<u64> = items.iter().filter_map(|i| i["worker"].as_u64()).collect();
        workers.sort();
        workers.dedup();
        let expected = if several { workers.len() } else { 1 };
        let loads = report["model_loads"].as_object().unwrap();
        assert_eq!(loads.len(), 7, "{what}: {loads:?}");
        for (role, l) in loads {
            assert_eq!(l["loads"], expected, "{what}: {role}");
        }
    }
}

/// A write that fails on the writer thread (the overlap) is that picture's `error:` line; the
/// pictures before and after it are written, and no temporary file is left.
#[test]
fn a_failed_write_fails_its_picture_only() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("in");
    let n = golden_pictures_in(&inputs, 3);
    let latents = dir.path().join("latents");
    // A folder where p1's latents file goes: its write fails, after its pipeline ran.
    std::fs::create_dir_all(latents.join("p1.latents.safetensors")).unwrap();
    let out = dir.path().join("out");
    let report = dir.path().join("r.json");
    let mut args = vec!["generate".to_string(), s(&inputs)];
    args.extend(fast_args(&out));
    args.extend(
        [
            "--format",
            "mesh-ply",
            "--batch-order",
            "picture",
            "--save-latents",
        ]
        .map(String::from),
    );
    args.push(format!("{}/", s(&latents)));
    args.extend(["--report".to_string(), s(&report)]);
    let o = trellis2(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    for i in (0..n).filter(|&i| i != 1) {
        assert!(out.join(format!("p{i}.mesh.ply")).is_file(), "{t}");
    }
    assert!(!out.join("p1.mesh.ply").exists(), "{t}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("error: ") && l.contains("p1.webp")),
        "{t}"
    );
    for folder in [&out, &latents] {
        for e in std::fs::read_dir(folder).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.ends_with(".tmp"), "{name} left: {t}");
        }
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap();
    let statuses: Vec<&str> = report["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_str().unwrap())
        .collect();
    let mut expected = vec!["ok"; n];
    expected[1] = "failed";
    assert_eq!(statuses, expected, "{t}");
}

/// `--shard K/N` deals the sorted input list out so that the N shards cover it exactly once,
/// the same way on every run; an empty shard is not an error. Corrupt pictures keep it cheap:
/// each fails before any model runs, and the report lists the shard's items.
#[test]
fn shards_cover_the_batch_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("in");
    std::fs::create_dir_all(&inputs).unwrap();
    let names = ["e.png", "a.png", "d.jpg", "b.webp", "c.png"];
    for name in names {
        std::fs::write(inputs.join(name), b"not a picture").unwrap();
    }
    let shard_items = |k: usize, n: usize| -> Vec<String> {
        let report = dir.path().join(format!("r{k}of{n}.json"));
        let mut args = vec!["generate".to_string(), s(&inputs)];
        args.extend(fast_args(&dir.path().join("out")));
        args.extend([
            "--shard".into(),
            format!("{k}/{n}"),
            "--report".into(),
            s(&report),
        ]);
        let o = trellis2(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        let items: Vec<String> = report["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                let p = PathBuf::from(i["input"].as_str().unwrap());
                p.file_name().unwrap().to_string_lossy().into_owned()
            })
            .collect();
        let want = if items.is_empty() { 0 } else { 1 };
        assert_eq!(o.status.code(), Some(want), "{k}/{n}: {}", text(&o));
        items
    };
    for n in [1, 2, 3, 7] {
        let mut all: Vec<String> = (1..=n).flat_map(|k| shard_items(k, n)).collect();
        all.sort();
        assert_eq!(
            all,
            ["a.png", "b.webp", "c.png", "d.jpg", "e.png"],
            "N = {n}"
        );
    }
    assert_eq!(shard_items(2, 3), ["b.webp", "e.png"]);
    assert_eq!(shard_items(2, 3), shard_items(2, 3));
    let mut args = vec!["generate".to_string(), s(&inputs)];
    args.extend(fast_args(&dir.path().join("out")));
    for bad in ["0/3", "4/3", "x"] {
        let mut a = args.clone();
        a.extend(["--shard".into(), bad.into()]);
        let o = trellis2(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(o.status.code(), Some(2), "--shard {bad}: {}", text(&o));
    }
}

/// The development option `--dev-force-structure` (hidden; benches/e2e.rs uses it on random
/// weights): the structure is the voxelised shell of the asked count, the cascade's
/// high-resolution coordinates too, the decoders grow through forced subdivisions, and the run
/// completes. Runs without it are the golden runs above, unchanged.
#[test]
fn dev_forced_structure_has_the_shell_counts_and_completes() {
    use trellis2::pipeline::dev_forcing::shell_coords;
    let dir = tempfile::tempdir().unwrap();
    let image = s(&common::fixture(IMAGE));
    for (pipeline, structure) in [("512", 32), ("1024-cascade", 32)] {
        let out = dir.path().join(pipeline);
        let report = dir.path().join(format!("{pipeline}.json"));
        let mut args: Vec<String> = vec!["generate".into(), image.clone()];
        args.extend(fast_args(&out));
        let at = args.iter().position(|a| a == "512").unwrap();
        args[at] = pipeline.into();
        args.extend(
            [
                "--format",
                "mesh-ply",
                "--quiet",
                "--dev-force-structure",
                "shell:150,500",
                "--report",
                &s(&report),
            ]
            .map(String::from),
        );
        let o = trellis2(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(o.status.success(), "{pipeline}: {}", text(&o));
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        let item = &r["items"][0];
        assert_eq!(item["status"], "ok", "{pipeline}: {item}");
        let stage = |name: &str| {
            item["stages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["stage"] == name)
                .unwrap_or_else(|| panic!("{pipeline}: no stage {name}"))
                .clone()
        };
        let shell = shell_coords(structure, 150).len();
        assert!((150..400).contains(&shell), "{shell}");
        assert_eq!(stage("sparse_structure")["voxels"], shell, "{pipeline}");
        if pipeline == "1024-cascade" {
            assert_eq!(stage("cascade")["tokens"], shell_coords(64, 500).len());
            assert_eq!(stage("shape_hr")["tokens"], shell_coords(64, 500).len());
        }
        // The decode stages report their parts, the output side the surface's extraction (on
        // its own thread) and its wait for it; forced growth decoded more voxels than tokens.
        for (name, part) in [
            ("shape_decode", "shape_decoder"),
            ("texture_decode", "tex_decoder"),
        ] {
            let decode = stage(name);
            assert!(
                decode["parts"][part].as_f64().is_some(),
                "{pipeline}: {decode}"
            );
            assert!(
                decode["voxels"].as_u64().unwrap() > shell as u64,
                "{pipeline}: {decode}"
            );
        }
        for seconds in ["mesh", "mesh_wait"] {
            assert!(
                item["output_seconds"][seconds].as_f64().is_some(),
                "{pipeline}: {item}"
            );
        }
        assert!(
            item["voxels"].as_u64().unwrap() > shell as u64,
            "{pipeline}: {item}"
        );
        assert!(
            item["output_seconds"]["mesh-ply"].as_f64().is_some(),
            "{item}"
        );
        assert!(out
            .join("0a34fae7ba57cb8870df5325b9c30ea474def1b0913c19c596655b85a79fdee4.mesh.ply")
            .is_file());
    }
    // Hidden from users; a bad value is a usage error.
    let help = trellis2(&["generate", "--help"]);
    assert!(!String::from_utf8_lossy(&help.stdout).contains("dev-force"));
    let o = trellis2(&["generate", &image, "--dev-force-structure", "sphere"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

/// Copies up to `at_most` of the golden fixture's pictures into the new folder `inputs` as
/// `p0.webp`, `p1.webp`, …; returns how many it copied.
fn golden_pictures_in(inputs: &Path, at_most: usize) -> usize {
    std::fs::create_dir_all(inputs).unwrap();
    let images = std::fs::read_dir(common::fixture("golden/images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .take(at_most);
    let mut copied = 0;
    for (i, image) in images.enumerate() {
        std::fs::copy(image, inputs.join(format!("p{i}.webp"))).unwrap();
        copied += 1;
    }
    copied
}
