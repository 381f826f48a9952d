//! `trellis2 matte` and `trellis2 dev forward` on the tiny golden BiRefNet: RGB, grey and RGBA
//! pictures give RGBA cut-outs whose alpha is the library's matte; a picture without a subject
//! fails with "no foreground found" and leaves no file; both model-folder layouts load.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::Device;
use trellis2::export::tensors::read_tensors;
use trellis2::image::{background_removal_input, load_image};
use trellis2::models::birefnet::BiRefNet;
use trellis2::pipeline::matte::alpha_matte_at;

/// Small working size: the tiny model takes ~10 s per picture at upstream's 1024² on a loaded
/// 2-core machine, 128² exercises the same code in a fraction of that.
const SIZE: u32 = 128;

fn trellis2(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trellis2"))
        // Outputs are compared with CPU results: a GPU the build has (Metal on a Mac) must not
        // be picked by `--device auto`.
        .env("TRELLIS2_DEVICE", "cpu")
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .expect("binary runs")
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn model_dir() -> PathBuf {
    common::fixture("golden/birefnet")
}

/// A 90×70 picture: a dark disc on a light background, in the given colour type (the random
/// tiny model finds "foreground" in it at 128²; not in every picture).
fn write_picture(path: &Path, color: image::ColorType) {
    let rgb = image::RgbImage::from_fn(90, 70, |x, y| {
        let (dx, dy) = (x as i32 - 45, y as i32 - 35);
        if dx * dx + dy * dy < 25 * 25 {
            image::Rgb([40, 20, 10])
        } else {
            image::Rgb([250, 250, 245])
        }
    });
    let dynamic = image::DynamicImage::ImageRgb8(rgb);
    let converted = match color {
        image::ColorType::L8 => image::DynamicImage::ImageLuma8(dynamic.to_luma8()),
        image::ColorType::Rgba8 => {
            let mut rgba = dynamic.to_rgba8();
            for px in rgba.pixels_mut() {
                px[3] = 128; // an existing alpha channel the matte must replace
            }
            image::DynamicImage::ImageRgba8(rgba)
        }
        _ => dynamic,
    };
    converted.save(path).expect("picture written");
}

#[test]
fn matte_cuts_out_rgb_grey_and_rgba_pictures() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = model_dir();
    let model = BiRefNet::open(&model_dir, &Device::Cpu).expect("model loads");
    for (name, color) in [
        ("rgb", image::ColorType::Rgb8),
        ("grey", image::ColorType::L8),
        ("rgba", image::ColorType::Rgba8),
    ] {
        let input = dir.path().join(format!("{name}.png"));
        let output = dir.path().join(format!("{name}.cut.png"));
        write_picture(&input, color);
        let size = SIZE.to_string();
        let args = [
            "matte",
            p(&input),
            "-o",
            p(&output),
            "--model",
            p(&model_dir),
            "--size",
            &size,
        ];
        let out = trellis2(&args);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let written = image::open(&output).expect("output decodes");
        assert_eq!(written.color(), image::ColorType::Rgba8, "{name}");
        let written = written.to_rgba8();
        assert_eq!(written.dimensions(), (90, 70), "{name}");
        // Colour is the picture's, alpha is the library's matte of it.
        let rgb = background_removal_input(&load_image(&input).unwrap());
        let alpha = alpha_matte_at(&model, &rgb, (SIZE, SIZE)).unwrap();
        for (i, px) in written.pixels().enumerate() {
            assert_eq!(&px.0[..3], &rgb.data[i * 3..i * 3 + 3], "{name} pixel {i}");
            assert_eq!(px.0[3], alpha[i], "{name} alpha {i}");
        }
        assert!(alpha.iter().any(|&a| a > 204), "{name}: some foreground");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("opaque"), "{stdout}");
    }
}

#[test]
fn matte_of_a_black_picture_finds_no_foreground_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("black.png");
    image::RgbImage::new(64, 48).save(&input).unwrap();
    let output = dir.path().join("black.cut.png");
    let size = SIZE.to_string();
    let out = trellis2(&[
        "matte",
        p(&input),
        "-o",
        p(&output),
        "--model",
        p(&model_dir()),
        "--size",
        &size,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no foreground found"), "{err}");
    assert!(err.contains("black.png"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!output.exists());
}

#[test]
fn matte_without_a_model_or_with_a_bad_size_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("p.png");
    write_picture(&input, image::ColorType::Rgb8);
    let output = dir.path().join("o.png");
    // No --model: the chosen remover comes from the hub cache, here empty and --offline, so
    // the error names the repository and its licence (and nothing touches the network).
    let cache = dir.path().join("cache");
    for (choice, needles) in [
        (None, ["ZhengPeng7/BiRefNet", "MIT"]),
        (Some("rmbg-2.0"), ["briaai/RMBG-2.0", "non-commercial"]),
    ] {
        let mut args = vec!["matte", p(&input), "-o", p(&output), "--offline"];
        args.extend(choice.iter().flat_map(|c| ["--rembg", c]));
        let out = Command::new(env!("CARGO_BIN_EXE_trellis2"))
            // Outputs are compared with CPU results: a GPU the build has (Metal on a Mac) must not
            // be picked by `--device auto`.
            .env("TRELLIS2_DEVICE", "cpu")
            .args(&args)
            .env("HF_HUB_CACHE", &cache)
            .env("HF_ENDPOINT", "http://127.0.0.1:9")
            .output()
            .expect("binary runs");
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        for needle in needles.iter().chain(&["--offline"]) {
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
    let out = trellis2(&["matte", p(&input), "-o", p(&output), "--rembg", "u2net"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("[possible values: birefnet, rmbg-2.0]"));
    let out = trellis2(&[
        "matte",
        p(&input),
        "-o",
        p(&output),
        "--model",
        p(&model_dir()),
        "--size",
        "100",
    ]);
    // A size off the 32 grid is a usage error (exit 2), refused before the model loads.
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("multiple of 32"));
    assert!(!output.exists());
}

fn forward(ckpt: &Path, out: &Path) -> std::collections::HashMap<String, candle_core::Tensor> {
    let inputs = common::fixture("golden/birefnet/input.safetensors");
    let o = trellis2(&[
        "dev",
        "forward",
        "--ckpt",
        p(ckpt),
        "--inputs",
        p(&inputs),
        "-o",
        p(out),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    read_tensors(out, &Device::Cpu).unwrap()
}

#[test]
fn dev_forward_runs_golden_and_hugging_face_folders() {
    let golden = common::Golden::open("golden/birefnet/output.safetensors");
    let dir = tempfile::tempdir().unwrap();
    // Golden layout: config.json + weights.safetensors, default (RMBG-2.0) tile order.
    let got = forward(&model_dir(), &dir.path().join("a.safetensors"));
    for name in ["logits", "mask"] {
        let e = golden.rel_err(name, &got[name]);
        println!("dev forward {name}: {e:.2e}");
        assert!(e <= 1e-4, "{name} {e}");
    }
    assert!(
        got.contains_key("image"),
        "the input it read is written too"
    );
    assert!(!got.contains_key("source_rgb"), "unread inputs are not");
    // Hugging Face layout: model.safetensors + config.json, here asking for the einops order.
    let hf = dir.path().join("hf");
    std::fs::create_dir(&hf).unwrap();
    std::fs::copy(
        model_dir().join("weights.safetensors"),
        hf.join("model.safetensors"),
    )
    .unwrap();
    std::fs::write(
        hf.join("config.json"),
        r#"{"architectures": ["BiRefNet"], "bb_pretrained": false, "patch_split_order": "einops"}"#,
    )
    .unwrap();
    let got = forward(&hf, &dir.path().join("b.safetensors"));
    let e = golden.rel_err("logits_einops_order", &got["logits"]);
    println!("dev forward (HF folder, einops order) logits: {e:.2e}");
    assert!(e <= 1e-4, "{e}");

    // Without the key, the order follows the repository the path names: a folder
    // `ZhengPeng7/BiRefNet` runs its remote code's einops order, a hub snapshot of
    // `briaai/RMBG-2.0` the RMBG order.
    for (folder, want) in [
        ("ZhengPeng7/BiRefNet", "logits_einops_order"),
        ("hub/models--briaai--RMBG-2.0/snapshots/abc", "logits"),
    ] {
        let named = dir.path().join(folder);
        std::fs::create_dir_all(&named).unwrap();
        std::fs::copy(
            hf.join("model.safetensors"),
            named.join("model.safetensors"),
        )
        .unwrap();
        std::fs::write(
            named.join("config.json"),
            r#"{"architectures": ["BiRefNet"]}"#,
        )
        .unwrap();
        let got = forward(&named, &dir.path().join("c.safetensors"));
        let e = golden.rel_err(want, &got["logits"]);
        println!("dev forward ({folder}) logits vs {want}: {e:.2e}");
        assert!(e <= 1e-4, "{folder}: {e}");
    }
}
