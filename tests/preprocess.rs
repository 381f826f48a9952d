//! Image preprocessing against the upstream goldens (tests/fixtures/golden, README §3.1), the
//! Pillow-exact LANCZOS resizer on synthetic images, and the loader's error messages.

use std::fs;
use std::path::{Path, PathBuf};

use trellis2::image::{
    dino_input, has_alpha, load_image, preprocess, preprocess_detailed, preprocess_with_alpha,
    resize_lanczos, save_png, PreprocessError, RgbImage, RgbaImage,
};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden")
}

fn golden_entries() -> Vec<serde_json::Value> {
    let path = golden_dir().join("preprocess/preprocess.json");
    let text = fs::read_to_string(&path).expect("read preprocess.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("parse preprocess.json");
    json.as_array().expect("preprocess.json is a list").clone()
}

fn ints(v: &serde_json::Value) -> Vec<i64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_i64().expect("int"))
        .collect()
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

/// `pixel_values.rows8`: rows 0, 8, …, 504 of the `[1, 3, 512, 512]` DINO input.
fn golden_dino_rows(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = fs::read(path).expect("read dino safetensors");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("parse safetensors");
    let t = st
        .tensor("pixel_values.rows8")
        .expect("tensor pixel_values.rows8");
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    let values = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (t.shape().to_vec(), values)
}

/// Max |diff| between our `[3, 512, 512]` tensor and the golden every-8th-row slice.
fn dino_rows_max_diff(ours: &[f32], golden_shape: &[usize], golden: &[f32]) -> f32 {
    assert_eq!(golden_shape, &[1, 3, 64, 512]);
    let mut max = 0f32;
    for c in 0..3 {
        for r in 0..64 {
            for x in 0..512 {
                let g = golden[(c * 64 + r) * 512 + x];
                let o = ours[(c * 512 + r * 8) * 512 + x];
                max = max.max((g - o).abs());
            }
        }
    }
    max
}

/// (max abs diff, number of differing channel values).
fn pixel_diff(a: &[u8], b: &[u8]) -> (u8, usize) {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| x.abs_diff(y))
        .fold((0, 0), |(m, n), d| (m.max(d), n + (d != 0) as usize))
}

#[test]
fn golden_preprocess_and_dino_input() {
    for entry in golden_entries() {
        let idx = entry["index"].as_i64().expect("index");
        let src = golden_dir().join(entry["source"].as_str().expect("source"));
        let img = load_image(&src).expect("load golden source");
        assert_eq!(
            [img.rgba.width as i64, img.rgba.height as i64].to_vec(),
            ints(&entry["size"])
        );
        assert!(has_alpha(&img), "img{idx}: golden sources carry alpha");

        let pre = preprocess_detailed(&img).expect("preprocess golden image");
        let info = &pre.info;
        let downscaled = info.downscaled_to.map(|(w, h)| vec![w as i64, h as i64]);
        let expected_down =
            (!entry["downscaled_to"].is_null()).then(|| ints(&entry["downscaled_to"]));
        assert_eq!(downscaled, expected_down, "img{idx}: downscaled_to");
        assert_eq!(
            info.alpha_bbox.map(i64::from).to_vec(),
            ints(&entry["alpha_bbox_xyxy"]),
            "img{idx}: alpha bbox"
        );
        assert_eq!(
            info.crop_box_float.to_vec(),
            floats(&entry["crop_box_float"]),
            "img{idx}: float crop box"
        );
        assert_eq!(
            info.crop_box.to_vec(),
            ints(&entry["crop_box_int_after_PIL_round"]),
            "img{idx}: rounded crop box"
        );
        assert_eq!(
            vec![info.output_size.0 as i64, info.output_size.1 as i64],
            ints(&entry["output_size"]),
            "img{idx}: output size"
        );

        // Pixels of the preprocessed image (golden PNG is RGB).
        let golden_png = golden_dir().join(entry["preprocessed_png"].as_str().expect("png"));
        let golden_rgb = load_image(&golden_png)
            .expect("load golden png")
            .rgba
            .to_rgb();
        assert_eq!((golden_rgb.width, golden_rgb.height), info.output_size);
        let (max_px, n_px) = pixel_diff(&pre.image.data, &golden_rgb.data);
        println!(
            "img{idx}: preprocessed vs golden PNG: max |diff| = {max_px} levels, {n_px} of {} values differ",
            golden_rgb.data.len()
        );
        if max_px != 0 {
            println!("img{idx}: NOTE preprocessed image is NOT bit-exact");
        }
        assert!(
            max_px <= 1,
            "img{idx}: preprocessed pixels differ by {max_px} levels"
        );

        // DINO input: once from the golden preprocessed PNG (isolates resize + normalisation),
        // once end to end from our own preprocessing.
        let dino_path = golden_dir().join(entry["dino_input"].as_str().expect("dino"));
        let (shape, golden_rows) = golden_dino_rows(&dino_path);
        let from_golden = dino_input(&golden_rgb, 512);
        let stage_diff = dino_rows_max_diff(&from_golden, &shape, &golden_rows);
        let ours = dino_input(&pre.image, 512);
        let e2e_diff = dino_rows_max_diff(&ours, &shape, &golden_rows);
        println!(
            "img{idx}: dino_input(512) max |diff|: from golden PNG {stage_diff:e}, end to end {e2e_diff:e}"
        );
        assert!(stage_diff <= 1e-5, "img{idx}: dino stage diff {stage_diff}");
        if max_px == 0 {
            assert!(
                e2e_diff <= 1e-5,
                "img{idx}: dino end-to-end diff {e2e_diff}"
            );
        } else {
            // One 8-bit level is 1/255/0.224 ≈ 0.0175 after normalisation, and LANCZOS (whose
            // taps sum to more than 1 in absolute value) can turn an n-level input difference
            // into n+1 levels after rounding. Reported above, bounded here.
            let bound = (max_px as f32 + 1.0) / 255.0 / 0.224 + 1e-5;
            assert!(
                e2e_diff <= bound,
                "img{idx}: dino end-to-end diff {e2e_diff} > {bound}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Resizer on synthetic images
// ---------------------------------------------------------------------------------------------

fn pattern_rgb(w: u32, h: u32) -> RgbImage {
    let data = (0..w * h * 3)
        .map(|i| ((i * 37 + (i / 7) * 11) % 256) as u8)
        .collect();
    RgbImage {
        width: w,
        height: h,
        data,
    }
}

#[test]
fn resize_same_size_is_identity() {
    let img = pattern_rgb(13, 9);
    assert_eq!(resize_lanczos(&img, 13, 9), img);
    let rgba = RgbaImage::from_rgb_and_alpha(&img, &[77; 13 * 9]).expect("alpha");
    assert_eq!(resize_lanczos(&rgba, 13, 9), rgba);
}

#[test]
fn resize_keeps_constant_image_constant() {
    let img = RgbImage {
        width: 37,
        height: 23,
        data: [200, 13, 255].repeat(37 * 23),
    };
    for (w, h) in [(10, 7), (100, 61), (37, 50), (5, 23), (1, 1)] {
        let out = resize_lanczos(&img, w, h);
        assert_eq!((out.width, out.height), (w, h));
        assert_eq!(out.data, [200, 13, 255].repeat((w * h) as usize), "{w}x{h}");
    }
    let rgba = RgbaImage {
        width: 37,
        height: 23,
        data: [200, 13, 255, 255].repeat(37 * 23),
    };
    let out = resize_lanczos(&rgba, 20, 40);
    assert_eq!(out.data, [200, 13, 255, 255].repeat(20 * 40));
}

#[test]
fn resize_up_and_down_give_requested_dims() {
    let img = pattern_rgb(31, 17);
    for (w, h) in [(62, 34), (15, 8), (31, 40), (50, 17), (3, 2)] {
        let out = resize_lanczos(&img, w, h);
        assert_eq!((out.width, out.height), (w, h));
        assert_eq!(out.data.len(), (w * h * 3) as usize);
    }
    let rgba = RgbaImage::from_rgb(&img);
    let out = resize_lanczos(&rgba, 7, 70);
    assert_eq!((out.width, out.height, out.data.len()), (7, 70, 7 * 70 * 4));
}

#[test]
fn resize_rgba_hides_colour_of_transparent_pixels() {
    // Left half transparent red, right half opaque green: Pillow's premultiplied resize must not
    // let red bleed into the visible pixels.
    let mut data = Vec::new();
    for _y in 0..8 {
        for x in 0..16 {
            data.extend_from_slice(if x < 8 {
                &[255, 0, 0, 0]
            } else {
                &[0, 255, 0, 255]
            });
        }
    }
    let img = RgbaImage {
        width: 16,
        height: 8,
        data,
    };
    let out = resize_lanczos(&img, 6, 3);
    for px in out.data.chunks_exact(4) {
        if px[3] > 0 {
            assert_eq!(px[0], 0, "red leaked into {px:?}");
        }
    }
}

#[test]
fn resize_1338_to_1024_is_fast() {
    let img = RgbaImage {
        width: 1338,
        height: 1338,
        data: (0..1338 * 1338 * 4).map(|i| (i % 251) as u8).collect(),
    };
    let t = std::time::Instant::now();
    let out = resize_lanczos(&img, 1024, 1024);
    let secs = t.elapsed().as_secs_f64();
    println!("RGBA 1338² → 1024² LANCZOS: {:.1} ms", secs * 1e3);
    assert_eq!(out.data.len(), 1024 * 1024 * 4);
    assert!(secs < 1.0, "resize took {secs:.2} s");
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

fn scratch_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("trellis2-preprocess-{name}-"))
        .tempdir()
        .expect("create temp dir")
}

fn write_rgba_png(path: &Path, w: u32, h: u32, rgba: &[u8]) {
    write_png(path, w, h, rgba, image::ExtendedColorType::Rgba8);
}

/// The error message is one line and names the file.
fn assert_one_line_naming(msg: &str, path: &Path) {
    println!("error: {msg}");
    assert!(!msg.contains('\n'), "multi-line error: {msg:?}");
    assert!(
        msg.contains(&path.display().to_string()),
        "error does not name {}: {msg}",
        path.display()
    );
}

#[test]
fn error_empty_file() {
    let dir = scratch_dir("empty");
    let path = dir.path().join("empty.png");
    fs::write(&path, b"").expect("write");
    let msg = load_image(&path)
        .expect_err("0-byte file must fail")
        .to_string();
    assert_one_line_naming(&msg, &path);
    assert!(msg.contains("empty"), "{msg}");
}

#[test]
fn error_not_an_image() {
    let dir = scratch_dir("notimg");
    let path = dir.path().join("notes.png");
    fs::write(&path, b"this is plain text, not a picture\n").expect("write");
    let msg = load_image(&path)
        .expect_err("text file must fail")
        .to_string();
    assert_one_line_naming(&msg, &path);
    assert!(msg.contains("not an image"), "{msg}");
}

#[test]
fn error_truncated_files() {
    let dir = scratch_dir("trunc");
    // A truncated copy of a golden WebP and of a freshly written PNG.
    let webp = fs::read(
        golden_dir()
            .join("images/1c359e94f2d699055c78487c90626cf5f1d7460c8fc04e60a286507e5286a28d.webp"),
    )
    .expect("read golden webp");
    let png_path = dir.path().join("full.png");
    save_png(&pattern_rgb(64, 64), &png_path).expect("save png");
    let png = fs::read(&png_path).expect("read png");
    for (name, bytes) in [("cut.webp", &webp), ("cut.png", &png)] {
        let path = dir.path().join(name);
        fs::write(&path, &bytes[..bytes.len() / 2]).expect("write");
        let msg = load_image(&path)
            .expect_err("truncated file must fail")
            .to_string();
        assert_one_line_naming(&msg, &path);
        assert!(msg.contains("truncated"), "{msg}");
    }
}

#[test]
fn error_fully_transparent() {
    let dir = scratch_dir("transparent");
    let path = dir.path().join("clear.png");
    write_rgba_png(&path, 4, 3, &[10, 20, 30, 0].repeat(12));
    let img = load_image(&path).expect("load");
    assert!(has_alpha(&img));
    let err = preprocess(&img).expect_err("fully transparent must fail");
    assert!(
        matches!(err, PreprocessError::FullyTransparent { .. }),
        "{err:?}"
    );
    assert_one_line_naming(&err.to_string(), &path);
}

#[test]
fn error_no_pixel_above_threshold() {
    let dir = scratch_dir("faint");
    let path = dir.path().join("faint.png");
    // 204 is exactly 0.8·255 and does not count (upstream uses a strict `>`).
    write_rgba_png(&path, 4, 3, &[10, 20, 30, 204].repeat(12));
    let img = load_image(&path).expect("load");
    let err = preprocess(&img).expect_err("faint image must fail");
    assert!(
        matches!(err, PreprocessError::NoOpaquePixels { .. }),
        "{err:?}"
    );
    assert_one_line_naming(&err.to_string(), &path);
}

#[test]
fn opaque_image_needs_background_removal() {
    let dir = scratch_dir("opaque");
    let rgb_path = dir.path().join("rgb.png");
    save_png(&pattern_rgb(8, 8), &rgb_path).expect("save");
    let rgba_path = dir.path().join("rgba_opaque.png");
    write_rgba_png(&rgba_path, 2, 2, &[1, 2, 3, 255].repeat(4));
    for path in [rgb_path, rgba_path] {
        let img = load_image(&path).expect("load");
        assert!(!has_alpha(&img));
        let err = preprocess(&img).expect_err("needs background removal");
        assert!(
            matches!(err, PreprocessError::NeedsBackgroundRemoval { .. }),
            "{err:?}"
        );
        assert_one_line_naming(&err.to_string(), &path);
    }
}

#[test]
fn external_alpha_and_threshold_boundary() {
    // A 205-alpha pixel counts; the bbox is that pixel plus the opaque one 4 px to the right.
    let rgb = pattern_rgb(10, 6);
    let mut alpha = vec![0u8; 60];
    alpha[2 * 10 + 3] = 205;
    alpha[2 * 10 + 7] = 255;
    let rgba = RgbaImage::from_rgb_and_alpha(&rgb, &alpha).expect("alpha");
    let out = preprocess_with_alpha(&rgba, "mask.png").expect("preprocess");
    assert_eq!((out.width, out.height), (4, 4));
}

#[test]
fn save_png_round_trips_and_leaves_no_temp_files() {
    let dir = scratch_dir("save");
    let path = dir.path().join("out.png");
    let img = pattern_rgb(21, 11);
    save_png(&img, &path).expect("save");
    save_png(&img, &path).expect("overwrite");
    let back = load_image(&path).expect("load").rgba.to_rgb();
    assert_eq!(back, img);
    let names: Vec<_> = fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("out.png")]);
    let missing = dir.path().join("no/such/dir/out.png");
    let msg = save_png(&img, &missing)
        .expect_err("missing dir")
        .to_string();
    assert_one_line_naming(&msg, &missing);
}

fn write_png(path: &Path, w: u32, h: u32, bytes: &[u8], color: image::ExtendedColorType) {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(bytes, w, h, color)
        .expect("encode test png");
    fs::write(path, out).expect("write test png");
}

/// 16-bit samples as native-endian bytes (what the `image` encoders take for 16-bit colour).
fn ne16(samples: &[u16]) -> Vec<u8> {
    samples.iter().flat_map(|v| v.to_ne_bytes()).collect()
}

#[test]
fn sixteen_bit_and_gray_alpha_pngs_convert_like_pillow() {
    let dir = scratch_dir("16bit");
    // RGBA16: Pillow keeps the high byte of every sample.
    let path = dir.path().join("rgba16.png");
    let px: [u16; 4] = [0x12ff, 0xab01, 0x00ff, 0x8080];
    write_png(&path, 1, 1, &ne16(&px), image::ExtendedColorType::Rgba16);
    let img = load_image(&path).expect("load rgba16");
    assert_eq!(img.rgba.data, vec![0x12, 0xab, 0x00, 0x80]);
    assert!(img.has_alpha_channel && has_alpha(&img));
    // Gray16 opens as I;16 in Pillow, whose conversion to 8 bit clamps at 255.
    let path = dir.path().join("gray16.png");
    write_png(
        &path,
        3,
        1,
        &ne16(&[7, 255, 256]),
        image::ExtendedColorType::L16,
    );
    let img = load_image(&path).expect("load gray16");
    assert_eq!(
        img.rgba.data,
        vec![7, 7, 7, 255, 255, 255, 255, 255, 255, 255, 255, 255]
    );
    assert!(!img.has_alpha_channel);
    // 8-bit gray + alpha: replicated gray, alpha kept.
    let path = dir.path().join("la8.png");
    write_png(
        &path,
        2,
        1,
        &[9, 0, 200, 255],
        image::ExtendedColorType::La8,
    );
    let img = load_image(&path).expect("load la8");
    assert_eq!(img.rgba.data, vec![9, 9, 9, 0, 200, 200, 200, 255]);
    assert!(has_alpha(&img));
}

#[test]
fn jpeg_loads_without_alpha_and_truncated_jpeg_is_reported() {
    let dir = scratch_dir("jpeg");
    let path = dir.path().join("photo.jpg");
    let src = pattern_rgb(64, 48);
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
        .encode(&src.data, 64, 48, image::ExtendedColorType::Rgb8)
        .expect("encode jpeg");
    fs::write(&path, &bytes).expect("write jpeg");
    let img = load_image(&path).expect("load jpeg");
    assert_eq!((img.rgba.width, img.rgba.height), (64, 48));
    assert!(!has_alpha(&img));
    let cut = dir.path().join("cut.jpg");
    fs::write(&cut, &bytes[..bytes.len() / 3]).expect("write");
    let msg = load_image(&cut)
        .expect_err("truncated jpeg must fail")
        .to_string();
    assert_one_line_naming(&msg, &cut);
    assert!(msg.contains("truncated"), "{msg}");
}
