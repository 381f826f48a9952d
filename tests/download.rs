//! `trellis2 download` against a fake hub on 127.0.0.1 (never the real huggingface.co): a full
//! download of a tiny release, a transfer that breaks and resumes, a gated repository without a
//! token, a corrupt file, `--dry-run`, `--offline`, and `generate`'s model lookup afterwards.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::fake_hub::{FakeHub, TOKEN};
use trellis2::weights::hub::{self, HubSettings, PlanEntry, TransferProgress};
use trellis2::weights::RembgModel;

/// What `trellis2 download` fetches without `--rembg`.
const DEFAULT_REMBG: Option<RembgModel> = Some(RembgModel::BiRefNet);

const RELEASE: &str = "microsoft/TRELLIS.2-4B";
const V1: &str = "microsoft/TRELLIS-image-large";
const DINO: &str = "facebook/dinov3-vitl16-pretrain-lvd1689m";
const RMBG: &str = "briaai/RMBG-2.0";
const BIREFNET: &str = "ZhengPeng7/BiRefNet";

/// Role → (stem in pipeline.json, golden tiny model it is made of).
const MODELS: &[(&str, &str, &str)] = &[
    (
        "sparse_structure_flow_model",
        "ckpts/ss_flow_img_dit_1_3B_64_bf16",
        "sparse_structure_flow_model",
    ),
    (
        "sparse_structure_decoder",
        "microsoft/TRELLIS-image-large/ckpts/ss_dec_conv3d_16l8_fp16",
        "sparse_structure_decoder",
    ),
    (
        "shape_slat_flow_model_512",
        "ckpts/slat_flow_img2shape_dit_1_3B_512_bf16",
        "shape_slat_flow_model_512",
    ),
    (
        "shape_slat_flow_model_1024",
        "ckpts/slat_flow_img2shape_dit_1_3B_1024_bf16",
        "shape_slat_flow_model_1024",
    ),
    (
        "shape_slat_decoder",
        "ckpts/shape_dec_next_dc_f16c32_fp16",
        "shape_slat_decoder",
    ),
    (
        "tex_slat_flow_model_512",
        "ckpts/slat_flow_imgshape2tex_dit_1_3B_512_bf16",
        "tex_slat_flow_model_512",
    ),
    (
        "tex_slat_flow_model_1024",
        "ckpts/slat_flow_imgshape2tex_dit_1_3B_1024_bf16",
        "tex_slat_flow_model_1024",
    ),
    (
        "tex_slat_decoder",
        "ckpts/tex_dec_next_dc_f16c32_fp16",
        "tex_slat_decoder",
    ),
];

fn golden(rel: &str) -> Vec<u8> {
    std::fs::read(common::fixture("golden/models").join(rel)).expect("golden model readable")
}

fn pipeline_json() -> Vec<u8> {
    let models: serde_json::Map<String, serde_json::Value> = MODELS
        .iter()
        .map(|(role, stem, _)| (role.to_string(), serde_json::json!(stem)))
        .collect();
    serde_json::to_vec_pretty(&serde_json::json!({
        "name": "Trellis2ImageTo3DPipeline",
        "args": {
            "models": models,
            "image_cond_model": {"name": "DinoV3FeatureExtractor", "args": {"model_name": DINO}},
            "rembg_model": {"name": "BiRefNet", "args": {"model_name": RMBG}},
            "default_pipeline_type": "1024_cascade"
        }
    }))
    .unwrap()
}

/// The whole tiny release: golden models under the real names, DINOv3 and RMBG gated, and
/// ZhengPeng7/BiRefNet (open) beside them.
fn fake_release() -> FakeHub {
    let hub = FakeHub::start();
    hub.add(RELEASE, "pipeline.json", pipeline_json());
    for (_, stem, src) in MODELS {
        let (repo, stem) = match stem.strip_prefix("microsoft/TRELLIS-image-large/") {
            Some(rest) => (V1, rest.to_string()),
            None => (RELEASE, stem.to_string()),
        };
        hub.add(
            repo,
            &format!("{stem}.json"),
            golden(&format!("{src}.json")),
        );
        hub.add(
            repo,
            &format!("{stem}.safetensors"),
            golden(&format!("{src}.safetensors")),
        );
    }
    hub.add(DINO, "config.json", golden("image_cond_model/config.json"));
    hub.add(
        DINO,
        "model.safetensors",
        golden("image_cond_model/model.safetensors"),
    );
    // Background remover: any bytes do for a transfer test.
    hub.add(
        RMBG,
        "config.json",
        b"{\"architectures\": [\"BiRefNet\"]}".to_vec(),
    );
    hub.add(
        RMBG,
        "model.safetensors",
        golden("tex_slat_decoder.safetensors"),
    );
    hub.add(
        BIREFNET,
        "config.json",
        b"{\"architectures\": [\"BiRefNet\"]}".to_vec(),
    );
    hub.add(
        BIREFNET,
        "model.safetensors",
        golden("shape_slat_decoder.safetensors"),
    );
    hub.gate(DINO);
    hub.gate(RMBG);
    hub
}

fn settings(hub: &FakeHub, cache: &Path, token: bool) -> HubSettings {
    HubSettings {
        endpoint: hub.endpoint.clone(),
        cache_dir: cache.to_path_buf(),
        token: token.then(|| TOKEN.to_string()),
        retries: 3,
    }
}

struct Silent;
impl TransferProgress for Silent {
    fn init(&mut self, _: u64, _: &str) {}
    fn update(&mut self, _: u64) {}
    fn finish(&mut self) {}
}

fn silent(_: &PlanEntry) -> Box<dyn TransferProgress> {
    Box::new(Silent)
}

/// The binary with a clean Hugging Face environment pointing at `hub`.
fn trellis2(hub: &FakeHub, home: &Path, token: bool) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trellis2"));
    cmd.env("HF_ENDPOINT", &hub.endpoint)
        .env("HF_HOME", home)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_TOKEN");
    if token {
        cmd.env("HF_TOKEN", TOKEN);
    }
    cmd
}

/// Runs `cmd`, asserts that it succeeded (printing both streams otherwise), returns stdout.
fn succeed(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn full_download_fills_the_cache_and_generate_finds_every_model() {
    let hub = fake_release();
    let home = tempfile::tempdir().unwrap();
    let cache = home.path().join("cache");
    let stdout = succeed(
        trellis2(&hub, home.path(), true)
            .args(["download", "--yes", "--to"])
            .arg(&cache),
    );
    assert!(stdout.contains("to download:"), "{stdout}");
    // 1 pipeline + 8 models × 2 + 2 HF models × 2.
    assert!(stdout.contains("21 files"), "{stdout}");

    // Every file is in the standard hub layout with the served bytes.
    let s = settings(&hub, &cache, true);
    let check = |repo: &str, path: &str, want: &[u8]| {
        let got = s
            .cached_file(repo, path)
            .unwrap_or_else(|| panic!("{repo}/{path} cached"));
        assert_eq!(std::fs::read(got).unwrap(), want, "{repo}/{path}");
    };
    check(RELEASE, "pipeline.json", &pipeline_json());
    check(
        V1,
        "ckpts/ss_dec_conv3d_16l8_fp16.safetensors",
        &golden("sparse_structure_decoder.safetensors"),
    );
    check(
        DINO,
        "model.safetensors",
        &golden("image_cond_model/model.safetensors"),
    );
    assert!(files_under(&cache)
        .iter()
        .all(|p| p.extension().is_none_or(|e| e != "part")));

    // generate's lookup: the release snapshot, with the other repositories found in the cache.
    let dir = hub::locate(Some(&cache), &s, DEFAULT_REMBG).expect("complete model directory");
    for (role, _, _) in MODELS {
        let ckpt = dir.checkpoint(role).expect("checkpoint opens");
        assert!(!ckpt.tensor_infos().is_empty(), "{role}");
    }
    assert!(dir
        .hf_model_dir("image_cond_model")
        .unwrap()
        .join("model.safetensors")
        .is_file());
    assert!(dir
        .rembg_dir(RembgModel::BiRefNet)
        .unwrap()
        .join("model.safetensors")
        .is_file());
    // The release names RMBG-2.0, but the default download is BiRefNet (licence): RMBG-2.0
    // was neither fetched nor is it required.
    assert!(s.snapshot_dir(RMBG).is_none());
    assert!(hub::locate(Some(&cache), &s, Some(RembgModel::Rmbg2)).is_err());

    // A second run finds everything cached and transfers nothing.
    let before = hub.log().iter().filter(|l| l.method == "GET").count();
    let plan = hub::plan(&s, DEFAULT_REMBG).unwrap();
    assert_eq!(plan.missing().count(), 0);
    hub::download(&s, &plan, &mut silent).unwrap();
    let after = hub.log().iter().filter(|l| l.method == "GET").count();
    assert_eq!(before, after, "nothing fetched again");
    assert!(hub::missing_offline(&s, DEFAULT_REMBG).is_empty());
}

#[test]
fn a_broken_transfer_resumes_where_it_stopped() {
    let hub = fake_release();
    let home = tempfile::tempdir().unwrap();
    let path = "ckpts/shape_dec_next_dc_f16c32_fp16.safetensors";
    let size = golden("shape_slat_decoder.safetensors").len();
    let cut = size / 3;

    // Within one run: the connection drops, the retry asks for the rest only.
    hub.cut_next_transfer(RELEASE, path, cut);
    let s = settings(&hub, home.path(), true);
    hub::download(&s, &hub::plan(&s, DEFAULT_REMBG).unwrap(), &mut silent)
        .expect("resumed download");
    let gets = hub.gets(RELEASE, path);
    assert!(gets.contains(&Some(format!("bytes={cut}-"))), "{gets:?}");
    let got = std::fs::read(s.cached_file(RELEASE, path).unwrap()).unwrap();
    assert_eq!(got, golden("shape_slat_decoder.safetensors"));

    // Across runs: no retries, the first run fails and leaves a partial file, the next run
    // continues it.
    let home2 = tempfile::tempdir().unwrap();
    let mut s2 = settings(&hub, home2.path(), true);
    s2.retries = 0;
    hub.cut_next_transfer(RELEASE, path, cut);
    let err = hub::download(&s2, &hub::plan(&s2, DEFAULT_REMBG).unwrap(), &mut silent).unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("shape_dec_next_dc_f16c32_fp16.safetensors"),
        "{text}"
    );
    let parts: Vec<_> = files_under(home2.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "part"))
        .collect();
    assert_eq!(parts.len(), 1, "one partial file: {parts:?}");
    assert_eq!(std::fs::metadata(&parts[0]).unwrap().len() as usize, cut);
    let n_before = hub.gets(RELEASE, path).len();
    hub::download(&s2, &hub::plan(&s2, DEFAULT_REMBG).unwrap(), &mut silent)
        .expect("second run completes");
    let gets = hub.gets(RELEASE, path);
    assert!(
        gets[n_before..].contains(&Some(format!("bytes={cut}-"))),
        "{gets:?}"
    );
    let got = std::fs::read(s2.cached_file(RELEASE, path).unwrap()).unwrap();
    assert_eq!(got, golden("shape_slat_decoder.safetensors"));
}

#[test]
fn gated_repository_without_token_says_what_to_do() {
    let hub = fake_release();
    let home = tempfile::tempdir().unwrap();
    let out = trellis2(&hub, home.path(), false)
        .args(["download", "--yes"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        DINO,
        "HTTP 401",
        "HF_TOKEN is not set",
        &format!("accept the licence on {}/{DINO}", hub.endpoint),
        "/settings/tokens",
        "export HF_TOKEN=",
    ] {
        assert!(err.contains(needle), "{needle:?} not in:\n{err}");
    }
    // The token is sent once given.
    let ok = trellis2(&hub, home.path(), true)
        .args(["download", "--dry-run"])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(hub
        .log()
        .iter()
        .any(|l| l.path.starts_with(&format!("/{DINO}/"))
            && l.authorization == Some(format!("Bearer {TOKEN}"))));
}

#[test]
fn a_file_with_the_wrong_hash_fails_and_leaves_nothing_behind() {
    let hub = fake_release();
    let home = tempfile::tempdir().unwrap();
    let path = "ckpts/tex_dec_next_dc_f16c32_fp16.safetensors";
    hub.corrupt_etag(RELEASE, path);
    let s = settings(&hub, home.path(), true);
    let err = hub::download(&s, &hub::plan(&s, DEFAULT_REMBG).unwrap(), &mut silent).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains(&format!("{RELEASE}/{path}")), "{text}");
    assert!(
        text.contains("corrupt") && text.contains(&"f".repeat(64)),
        "{text}"
    );
    assert!(
        s.cached_file(RELEASE, path).is_none(),
        "no corrupt file in the cache"
    );
    let leftovers: Vec<_> = files_under(home.path())
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            name.starts_with(&"f".repeat(64))
                || name == "tex_dec_next_dc_f16c32_fp16.safetensors"
                || name.ends_with(".part")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Files fetched before the corrupt one stay.
    assert!(s.cached_file(RELEASE, "pipeline.json").is_some());
}

#[test]
fn dry_run_lists_files_and_sizes_and_writes_nothing() {
    let hub = fake_release();
    let home = tempfile::tempdir().unwrap();
    let cache = home.path().join("cache");
    let stdout = succeed(
        trellis2(&hub, home.path(), true)
            .args(["download", "--dry-run", "--to"])
            .arg(&cache),
    );
    let size = golden("sparse_structure_flow_model.safetensors").len() as f64 / 1024.0;
    let line = stdout
        .lines()
        .find(|l| l.contains("ckpts/ss_flow_img_dit_1_3B_64_bf16.safetensors"))
        .unwrap_or_else(|| panic!("file listed:\n{stdout}"));
    assert!(
        line.contains(&format!("{size:.1} KiB")) && line.contains("download"),
        "{line}"
    );
    for f in [
        format!("{V1}/ckpts/ss_dec_conv3d_16l8_fp16.json"),
        format!("{DINO}/model.safetensors"),
        format!("{BIREFNET}/config.json"),
        format!("{BIREFNET}/model.safetensors"),
        format!("{RELEASE}/pipeline.json"),
    ] {
        assert!(stdout.contains(&f), "{f} not listed:\n{stdout}");
    }
    assert!(
        !stdout.contains(RMBG),
        "RMBG-2.0 is not the default:\n{stdout}"
    );
    assert!(
        stdout.contains("to download:") && stdout.contains("in 21 files"),
        "{stdout}"
    );
    assert!(
        files_under(&cache).is_empty(),
        "dry run wrote {:?}",
        files_under(&cache)
    );
    assert!(hub
        .log()
        .iter()
        .all(|l| l.method == "HEAD" || l.path.ends_with("pipeline.json")));
}

#[test]
fn offline_with_missing_files_names_the_command_to_run() {
    let hub = fake_release();
    let home = tempfile::tempdir().unwrap();
    let cache = home.path().join("elsewhere");
    let out = trellis2(&hub, home.path(), true)
        .args(["download", "--offline", "--to"])
        .arg(&cache)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("trellis2 download --to {}", cache.display())),
        "{err}"
    );
    assert!(err.contains("pipeline.json"), "{err}");
    assert!(
        hub.log().is_empty(),
        "offline made requests: {:?}",
        hub.log()
    );

    // With the release fetched but DINOv3 deleted, both the CLI and `locate` name what is gone.
    let s = settings(&hub, &cache, true);
    hub::download(&s, &hub::plan(&s, DEFAULT_REMBG).unwrap(), &mut silent).unwrap();
    let dino = s.snapshot_dir(DINO).unwrap();
    std::fs::remove_file(dino.join("model.safetensors")).unwrap();
    let out = trellis2(&hub, home.path(), true)
        .args(["download", "--offline", "--to"])
        .arg(&cache)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{DINO}/model.safetensors")), "{err}");
    let err = format!(
        "{:#}",
        hub::locate(None, &s, DEFAULT_REMBG).expect_err("DINOv3 missing")
    );
    assert!(
        err.contains("image_cond_model") && err.contains("trellis2 download --to"),
        "{err}"
    );
}

#[test]
fn rembg_choice_picks_the_background_remover_to_fetch() {
    let hub = fake_release();
    let home = tempfile::tempdir().unwrap();
    let cache = home.path().join("cache");
    let dry_run = |choice: &str| {
        succeed(
            trellis2(&hub, home.path(), true)
                .args(["download", "--dry-run", "--rembg", choice, "--to"])
                .arg(&cache),
        )
    };
    // RMBG-2.0 instead of BiRefNet: same count of files, other repository.
    let rmbg = dry_run("rmbg-2.0");
    assert!(
        rmbg.contains(&format!("{RMBG}/model.safetensors")) && !rmbg.contains(BIREFNET),
        "{rmbg}"
    );
    assert!(rmbg.contains("in 21 files"), "{rmbg}");
    // No remover at all: two files fewer.
    let none = dry_run("none");
    assert!(!none.contains(RMBG) && !none.contains(BIREFNET), "{none}");
    assert!(none.contains("in 19 files"), "{none}");
    // A bad name is a usage error naming the choices.
    let bad = trellis2(&hub, home.path(), true)
        .args(["download", "--dry-run", "--rembg", "u2net"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("[possible values: birefnet, rmbg-2.0, none]"),
        "{err}"
    );

    // Fetched with --rembg rmbg-2.0 (gated: the token is sent), generate's lookup finds it.
    succeed(
        trellis2(&hub, home.path(), true)
            .args(["download", "--yes", "--rembg", "rmbg-2.0", "--to"])
            .arg(&cache),
    );
    let s = settings(&hub, &cache, true);
    let dir = hub::locate(Some(&cache), &s, Some(RembgModel::Rmbg2)).expect("RMBG-2.0 found");
    assert!(dir.rembg_dir(RembgModel::Rmbg2).is_ok());
    assert!(s.snapshot_dir(BIREFNET).is_none());
    let err = format!(
        "{:#}",
        hub::locate(Some(&cache), &s, DEFAULT_REMBG).expect_err("BiRefNet missing")
    );
    assert!(
        err.contains(BIREFNET) && err.contains("trellis2 download --to"),
        "{err}"
    );
}

/// The release's texturing pipeline on the fake hub: `texturing_pipeline.json` naming the shape
/// encoder (the tiny one of tests/fixtures/texturing) beside the texture models already served.
fn add_texturing(hub: &FakeHub) -> Vec<u8> {
    let json = serde_json::to_vec_pretty(&serde_json::json!({
        "name": "Trellis2TexturingPipeline",
        "args": {
            "models": {
                "shape_slat_encoder": "ckpts/shape_enc_next_dc_f16c32_fp16",
                "tex_slat_decoder": "ckpts/tex_dec_next_dc_f16c32_fp16",
                "tex_slat_flow_model_512": "ckpts/slat_flow_imgshape2tex_dit_1_3B_512_bf16",
                "tex_slat_flow_model_1024": "ckpts/slat_flow_imgshape2tex_dit_1_3B_1024_bf16",
            },
            "image_cond_model": {"name": "DinoV3FeatureExtractor", "args": {"model_name": DINO}},
            "rembg_model": {"name": "BiRefNet", "args": {"model_name": RMBG}},
        }
    }))
    .unwrap();
    hub.add(RELEASE, "texturing_pipeline.json", json.clone());
    for ext in ["json", "safetensors"] {
        hub.add(
            RELEASE,
            &format!("ckpts/shape_enc_next_dc_f16c32_fp16.{ext}"),
            golden(&format!("shape_slat_encoder.{ext}")),
        );
    }
    json
}

#[test]
fn download_texturing_adds_the_encoder_and_texture_fetches_on_first_use() {
    let hub = fake_release();
    let texturing = add_texturing(&hub);
    let home = tempfile::tempdir().unwrap();

    // `download --texturing`: both pipeline files and everything they name, each file once.
    let cache = home.path().join("cache");
    let stdout = succeed(
        trellis2(&hub, home.path(), true)
            .args([
                "download",
                "--texturing",
                "--yes",
                "--rembg",
                "none",
                "--to",
            ])
            .arg(&cache),
    );
    // 2 pipelines + 8 models × 2 + the encoder × 2 + DINOv3 × 2.
    assert!(stdout.contains("22 files"), "{stdout}");
    let s = settings(&hub, &cache, true);
    assert_eq!(
        std::fs::read(s.cached_file(RELEASE, "texturing_pipeline.json").unwrap()).unwrap(),
        texturing
    );
    let dir = hub::locate_config(Some(&cache), &s, None, hub::TEXTURING_PIPELINE_FILE)
        .expect("complete texturing directory");
    assert!(dir.resolve("shape_slat_encoder").is_ok());
    assert!(hub::missing_offline_in(
        &s,
        None,
        &[hub::PIPELINE_FILE, hub::TEXTURING_PIPELINE_FILE]
    )
    .is_empty());

    // `texture` on an empty cache fetches only what texturing needs, then runs.
    let cache2 = home.path().join("cache2");
    std::fs::create_dir_all(&cache2).unwrap();
    let mesh = home.path().join("octa.obj");
    std::fs::write(
        &mesh,
        "v 1 0 0\nv -1 0 0\nv 0 1 0\nv 0 -1 0\nv 0 0 1\nv 0 0 -1\n\
         f 1 3 5\nf 3 2 5\nf 2 4 5\nf 4 1 5\nf 3 1 6\nf 2 3 6\nf 4 2 6\nf 1 4 6\n",
    )
    .unwrap();
    let image = common::fixture(
        "golden/images/0a34fae7ba57cb8870df5325b9c30ea474def1b0913c19c596655b85a79fdee4.webp",
    );
    let out = home.path().join("out");
    succeed(
        trellis2(&hub, home.path(), true)
            .arg("texture")
            .arg(&mesh)
            .arg(&image)
            .arg("--model")
            .arg(&cache2)
            .arg("-o")
            .arg(&out)
            .args([
                "--yes",
                "--rembg",
                "none",
                "--device",
                "cpu",
                "--resolution",
                "64",
            ])
            .args(["--steps", "1", "--texture-size", "512"]),
    );
    assert!(out.join("octa.glb").is_file());
    let s2 = settings(&hub, &cache2, true);
    assert!(
        s2.cached_file(RELEASE, "pipeline.json").is_none(),
        "only texturing's files"
    );
    assert!(s2
        .cached_file(RELEASE, "ckpts/shape_enc_next_dc_f16c32_fp16.safetensors")
        .is_some());

    // Offline with nothing cached: the error names the command that fetches it.
    let cache3 = home.path().join("cache3");
    std::fs::create_dir_all(&cache3).unwrap();
    let out = trellis2(&hub, home.path(), true)
        .arg("texture")
        .arg(&mesh)
        .arg(&image)
        .arg("--model")
        .arg(&cache3)
        .arg("-o")
        .arg(home.path().join("out3"))
        .args(["--offline", "--rembg", "none"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("download") && err.contains("--texturing"),
        "{err}"
    );
}
