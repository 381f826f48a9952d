//! End to end: the real `trellis2 generate` binary from pictures to the three files (splat PLY,
//! mesh PLY, GLB), on a full-size model directory of random weights written from the manifests
//! (as the stage bench writes its checkpoints), with the development option
//! `--dev-force-structure` so that random weights do a real object's work: the sparse structure
//! is the stage bench's voxelised shell, the decoders and the cascade grow 4.66 children of 8.
//!
//! ```sh
//! cargo bench --bench e2e -- [--device cpu|cuda|metal] [--pipeline 512|1024-cascade|both]
//!     [--batch 8] [--model DIR] [--tiny] [--tokens N32,N64] [--steps N] [--keep DIR]
//!     [--evict] [--cold-runs N] [--extra "MORE GENERATE ARGS"]
//! ```
//! Random weights make the decoders' mesh noise (the structure and growth are forced, the
//! surface inside them is not): its GLB's UV atlas has tens of thousands of charts, where a
//! real object's has about a hundred, so the default GLB export costs far more than a real
//! one; `--extra "--texture none"` measures the rest without it.
//! Per pipeline, two processes: **cold**, one picture, timed around the process (start-up,
//! device set-up, weight reads and exit included; `--evict` empties the page cache and gives
//! the process an empty CUDA kernel cache first, as after a reboot; `--cold-runs N` repeats it
//! and lists every run); **warm**, `--batch` pictures in one process
//! (`--batch-order picture`: every model read once and kept), per picture = the mean of the
//! report's per-item times of pictures 2..N. Phases come from the `--report` of each run:
//! stage times less the weight reads done inside them, and each output's seconds; the process's
//! exit is the time from its last file (the report, written last) to its end.
//! `splat_quality` (rendering splats against the mesh) is computed only because `--report` asks
//! for it, so it is shown apart and left out of the totals. A batch writes pictures' files on
//! two writer threads (three with 12 or more cores) while the next picture runs (splat quality
//! after them, on a finisher thread), and one picture's formats concurrently, so the export rows
//! overlap each other and the next picture's stages; the **throughput** row is the batch's
//! pace: (last − first picture finished) / (N − 1), splat quality included, and the **device
//! worker** row its stages' time per picture, the pace when the writers keep up. Peak host
//! memory: the child's RSS polled every 10 ms and the stages' own peaks; peak GPU memory: the
//! stages' (CUDA).
//!
//! The pictures are the repository's own, all with an alpha channel, run with `--rembg alpha`:
//! preprocessing is the real alpha crop, and no background remover is needed.
//!
//! `--model DIR` writes the random model there (reused when complete: `DIR/.complete`),
//! else into a temporary folder; ≈16 GB at full size. `--tiny` runs the golden fixture's tiny
//! model instead (CPU smoke test: the method works, the numbers are not the release's).
//! `TRELLIS2_BIN` overrides the binary.

#[path = "common/page_cache.rs"]
mod page_cache;
#[path = "common/random_weights.rs"]
mod random_weights;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use candle_core::DType;
use page_cache::drop_page_cache;
use random_weights::{manifest, write_random};
use serde_json::Value;
use trellis2::pipeline::dev_forcing::{BASELINE_TOKENS_32, BASELINE_TOKENS_64};
use trellis2::pipeline::models::role;
use trellis2::weights::ModelDir;

/// Every role of the released pipeline: (role, stem under the model directory, manifest,
/// stored dtype as released).
const ROLES: &[(&str, &str, &str, DType)] = &[
    (
        role::SS_FLOW,
        "ckpts/ss_flow_img_dit_1_3B_64_bf16",
        "ss_flow_img_dit_1_3B_64_bf16.denoiser",
        DType::BF16,
    ),
    (
        role::SS_DECODER,
        "ckpts/ss_dec_conv3d_16l8_fp16",
        "ss_dec_conv3d_16l8_fp16.decoder",
        DType::F16,
    ),
    (
        role::SHAPE_FLOW_512,
        "ckpts/slat_flow_img2shape_dit_1_3B_512_bf16",
        "slat_flow_img2shape_dit_1_3B_512_bf16.denoiser",
        DType::BF16,
    ),
    (
        role::SHAPE_FLOW_1024,
        "ckpts/slat_flow_img2shape_dit_1_3B_1024_bf16",
        "slat_flow_img2shape_dit_1_3B_512_bf16_ft1024.denoiser",
        DType::BF16,
    ),
    (
        role::TEX_FLOW_512,
        "ckpts/slat_flow_imgshape2tex_dit_1_3B_512_bf16",
        "slat_flow_imgshape2tex_dit_1_3B_512_bf16.denoiser",
        DType::BF16,
    ),
    (
        role::TEX_FLOW_1024,
        "ckpts/slat_flow_imgshape2tex_dit_1_3B_1024_bf16",
        "slat_flow_imgshape2tex_dit_1_3B_512_bf16_ft1024.denoiser",
        DType::BF16,
    ),
    (
        role::SHAPE_DECODER,
        "ckpts/shape_dec_next_dc_f16c32_fp16",
        "shape_vae_next_dc_f16c32_fp16.decoder",
        DType::F16,
    ),
    (
        role::TEX_DECODER,
        "ckpts/tex_dec_next_dc_f16c32_fp16",
        "tex_vae_next_dc_f16c32_fp16.decoder",
        DType::F16,
    ),
];

/// The DINOv3 folder below the model directory (the release's Hugging Face id).
const DINOV3_FOLDER: &str = "facebook/dinov3-vitl16-pretrain-lvd1689m";

struct Opts {
    device: String,
    pipelines: Vec<&'static str>,
    batch: usize,
    model: Option<PathBuf>,
    tiny: bool,
    /// `--dev-force-structure` value.
    forcing: String,
    steps: Option<usize>,
    /// Keep the runs' outputs and reports here instead of a temporary folder.
    keep: Option<PathBuf>,
    /// More `generate` arguments (`--extra "--texture none"`).
    extra: Vec<String>,
    /// Empty the page cache and the CUDA kernel cache before each cold run.
    evict: bool,
    /// Cold processes per pipeline (the table shows the first; the others are listed).
    cold_runs: usize,
}

fn parse() -> Result<Opts> {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let mut o = Opts {
        device: "cpu".into(),
        pipelines: vec!["512", "1024-cascade"],
        batch: 8,
        model: None,
        tiny: false,
        forcing: String::new(),
        steps: None,
        keep: None,
        extra: Vec::new(),
        evict: false,
        cold_runs: 1,
    };
    let mut tokens = None;
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--device" => o.device = value()?,
            "--pipeline" => {
                o.pipelines = match value()?.as_str() {
                    "512" => vec!["512"],
                    "1024-cascade" => vec!["1024-cascade"],
                    "both" => vec!["512", "1024-cascade"],
                    p => bail!("--pipeline {p}: expected 512, 1024-cascade or both"),
                }
            }
            "--batch" => o.batch = value()?.parse().context("--batch takes a count ≥ 2")?,
            "--model" => o.model = Some(value()?.into()),
            "--tiny" => o.tiny = true,
            "--tokens" => tokens = Some(value()?),
            "--steps" => o.steps = Some(value()?.parse().context("--steps takes a count")?),
            "--keep" => o.keep = Some(value()?.into()),
            "--evict" => o.evict = true,
            "--cold-runs" => {
                o.cold_runs = value()?.parse().context("--cold-runs takes a count ≥ 1")?;
                if o.cold_runs == 0 {
                    bail!("--cold-runs takes a count ≥ 1");
                }
            }
            "--extra" => o
                .extra
                .extend(value()?.split_whitespace().map(str::to_string)),
            other => bail!("unknown argument {other}"),
        }
    }
    if o.batch < 2 {
        bail!("--batch must be at least 2 (the first picture of a batch is not warm)");
    }
    if o.tiny && o.model.is_some() {
        bail!("--tiny runs the golden fixture's model; give no --model with it");
    }
    o.forcing = match tokens {
        Some(t) => format!("shell:{t}"),
        // The tiny model's decoders grow the baseline's voxels too, but through tiny channels;
        // smaller shells keep the CPU smoke run to minutes.
        None if o.tiny => "shell:400,1600".into(),
        None => format!("shell:{BASELINE_TOKENS_32},{BASELINE_TOKENS_64}"),
    };
    Ok(o)
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Writes the full-size model directory of random weights into `dir` unless it is complete.
fn write_model(dir: &Path) -> Result<()> {
    let done = dir.join(".complete");
    if done.is_file() {
        eprintln!("model: reusing {}", dir.display());
        return Ok(());
    }
    std::fs::create_dir_all(dir.join("ckpts"))?;
    let t = Instant::now();
    for (role, stem, name, stored) in ROLES {
        eprintln!("model: writing {role} ({name}, {stored:?})");
        let (class, args) = manifest(name)?;
        let stem = dir.join(stem);
        write_random(
            &PathBuf::from(format!("{}.safetensors", stem.display())),
            &class,
            &args,
            *stored,
        )?;
        let json = serde_json::json!({ "name": class, "args": args });
        std::fs::write(
            format!("{}.json", stem.display()),
            serde_json::to_vec(&json)?,
        )?;
    }
    let (class, args) = manifest("dinov3_vitl16")?;
    let dino = dir.join(DINOV3_FOLDER);
    std::fs::create_dir_all(&dino)?;
    write_random(&dino.join("model.safetensors"), &class, &args, DType::F32)?;
    std::fs::write(dino.join("config.json"), serde_json::to_vec(&args)?)?;
    // The release's samplers and normalisation (the golden fixture carries them unchanged),
    // with the release's checkpoints.
    let golden = manifest_dir().join("tests/fixtures/golden/pipeline.json");
    let mut pipeline: Value = serde_json::from_slice(&std::fs::read(golden)?)?;
    let models: serde_json::Map<String, Value> = ROLES
        .iter()
        .map(|(role, stem, _, _)| (role.to_string(), Value::from(*stem)))
        .collect();
    pipeline["args"]["models"] = Value::Object(models);
    pipeline["args"]["image_cond_model"]["args"]["model_name"] = Value::from(DINOV3_FOLDER);
    std::fs::write(
        dir.join("pipeline.json"),
        serde_json::to_vec_pretty(&pipeline)?,
    )?;
    std::fs::write(&done, b"")?;
    eprintln!("model: written in {:.0} s", t.elapsed().as_secs_f64());
    Ok(())
}

/// The roles a pipeline type loads.
fn roles_of(pipeline: &str) -> Vec<&'static str> {
    let mut roles = vec![
        role::IMAGE_COND,
        role::SS_FLOW,
        role::SS_DECODER,
        role::SHAPE_FLOW_512,
    ];
    if pipeline == "512" {
        roles.push(role::TEX_FLOW_512);
    } else {
        roles.extend([role::SHAPE_FLOW_1024, role::TEX_FLOW_1024]);
    }
    roles.extend([role::SHAPE_DECODER, role::TEX_DECODER]);
    roles
}

/// Bytes on disk of the weights `pipeline` reads.
fn weight_bytes(dir: &ModelDir, pipeline: &str) -> Result<u64> {
    let mut total = 0;
    for r in roles_of(pipeline) {
        let file = if r == role::IMAGE_COND {
            let name = dir.pipeline.args[role::IMAGE_COND]["args"]["model_name"]
                .as_str()
                .unwrap_or(DINOV3_FOLDER);
            dir.root.join(name).join("model.safetensors")
        } else {
            PathBuf::from(format!("{}.safetensors", dir.resolve(r)?.display()))
        };
        total += std::fs::metadata(&file)
            .with_context(|| format!("{}", file.display()))?
            .len();
    }
    Ok(total)
}

/// Pictures with alpha from the repository, `n` of them under distinct names in `folder`.
fn pictures(folder: &Path, n: usize) -> Result<Vec<PathBuf>> {
    let root = manifest_dir();
    let mut sources = vec![root.join("examples/T.png")];
    let mut golden: Vec<PathBuf> = std::fs::read_dir(root.join("tests/fixtures/golden/images"))?
        .map(|e| Ok(e?.path()))
        .collect::<Result<_>>()?;
    golden.sort();
    sources.extend(golden);
    std::fs::create_dir_all(folder)?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let src = &sources[i % sources.len()];
        let ext = src.extension().and_then(|e| e.to_str()).unwrap_or("png");
        let dst = folder.join(format!("picture{i}.{ext}"));
        std::fs::copy(src, &dst)?;
        out.push(dst);
    }
    Ok(out)
}

/// One `generate` process: its wall time, peak RSS and anonymous RSS (polled), and report.
struct Run {
    wall: f64,
    /// Seconds from its newest file in the output folder (the report) to the process's end.
    exit: f64,
    /// Whether the page cache was emptied before it (None: not asked to).
    evicted: Option<bool>,
    peak_rss: u64,
    peak_anon: u64,
    report: Value,
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `generate` over `inputs` into `out`; `evict`: from an empty page cache and kernel cache.
fn generate(
    o: &Opts,
    model: &Path,
    pipeline: &str,
    inputs: &[PathBuf],
    out: &Path,
    evict: bool,
) -> Result<Run> {
    let bin = std::env::var_os("TRELLIS2_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_trellis2")));
    std::fs::create_dir_all(out)?;
    let report = out.join("report.json");
    let mut cmd = Command::new(&bin);
    cmd.arg("generate")
        .args(inputs)
        .arg("--output")
        .arg(out)
        .arg("--model")
        .arg(model)
        .args(["--device", &o.device, "--pipeline", pipeline])
        .args(["--rembg", "alpha", "--offline", "--batch-order", "picture"])
        .args(["--dev-force-structure", &o.forcing])
        .arg("--report")
        .arg(&report);
    if let Some(s) = o.steps {
        cmd.args(["--steps", &s.to_string()]);
    }
    cmd.args(&o.extra);
    let mut evicted = None;
    if evict {
        // The driver's JIT cache too: a fresh machine has none.
        let cache = out.join("cuda-cache");
        std::fs::create_dir_all(&cache)?;
        cmd.env("CUDA_CACHE_PATH", &cache);
        evicted = Some(drop_page_cache());
    }
    let log = std::fs::File::create(out.with_extension("log"))?;
    cmd.stdout(log.try_clone()?).stderr(log);
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("{}: cannot start", bin.display()))?;
    let pid = child.id();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let poll = std::thread::spawn(move || {
        let (mut rss, mut anon) = (0u64, 0u64);
        while !flag.load(Ordering::Relaxed) {
            // VmHWM: the child resets it per stage, so it is read as often as VmRSS.
            for key in ["VmRSS:", "VmHWM:"] {
                rss = rss.max(status_kib(pid, key).unwrap_or(0));
            }
            anon = anon.max(status_kib(pid, "RssAnon:").unwrap_or(0));
            std::thread::sleep(Duration::from_millis(10));
        }
        (rss << 10, anon << 10)
    });
    let status = child.wait()?;
    let wall = start.elapsed().as_secs_f64();
    let end = SystemTime::now();
    stop.store(true, Ordering::Relaxed);
    let (peak_rss, peak_anon) = poll.join().unwrap_or((0, 0));
    if !status.success() {
        bail!(
            "generate failed ({status}); its output is in {}",
            out.with_extension("log").display()
        );
    }
    let report: Value = serde_json::from_slice(&std::fs::read(&report)?)?;
    let last = newest_file(out)?;
    Ok(Run {
        wall,
        exit: end.duration_since(last).map_or(0.0, |d| d.as_secs_f64()),
        evicted,
        peak_rss,
        peak_anon,
        report,
    })
}

/// The newest modification time of the files in `dir`.
fn newest_file(dir: &Path) -> Result<SystemTime> {
    let mut newest = SystemTime::UNIX_EPOCH;
    for e in std::fs::read_dir(dir)? {
        let meta = e?.metadata()?;
        if meta.is_file() {
            newest = newest.max(meta.modified()?);
        }
    }
    Ok(newest)
}

/// One item's phases in seconds, in table order.
#[derive(Default, Clone)]
struct Phases {
    load: f64,
    preprocess: f64,
    conditioning: f64,
    flows: f64,
    cascade: f64,
    shape_decoder: f64,
    tex_decoder: f64,
    /// The output side's wait for the surface and the attributes' host arrays.
    mesh: f64,
    /// The surface extraction's own thread (beside the texture stages, outside the rows' sum).
    surface: f64,
    export: [f64; 5],
    quality: f64,
    /// The item's own seconds less splat quality: its stages plus its outputs' wall time (the
    /// formats are written side by side, so this is less than the rows' sum).
    wall: f64,
    peak_rss: u64,
    peak_gpu: u64,
}

const EXPORT: [&str; 5] = ["asset", "splat", "mesh-ply", "glb", "mesh-prepare"];

impl Phases {
    fn of(item: &Value) -> Result<Self> {
        if item["status"] != "ok" {
            bail!("{}: {}", item["input"], item["error"]);
        }
        let mut p = Phases::default();
        for s in item["stages"].as_array().context("stages")? {
            let load = s["load_seconds"].as_f64().unwrap_or(0.0);
            let net = s["seconds"].as_f64().unwrap_or(0.0) - load;
            p.load += load;
            p.peak_rss = p.peak_rss.max(s["peak_rss_bytes"].as_u64().unwrap_or(0));
            p.peak_gpu = p.peak_gpu.max(s["peak_gpu_bytes"].as_u64().unwrap_or(0));
            match s["stage"].as_str().unwrap_or_default() {
                "preprocess" => p.preprocess += net,
                "conditioning" => p.conditioning += net,
                "cascade" => p.cascade += net,
                // The decoders with their stages' glue (copies queued, the voxel check).
                "shape_decode" => p.shape_decoder += net,
                "texture_decode" => p.tex_decoder += net,
                _ => p.flows += net,
            }
        }
        // The surface (mesh extraction, hole filling, outward faces, splat patches) is built on
        // a thread of its own beside the texture stages; the output side waits for it and
        // converts the attributes to host arrays.
        p.surface = item["output_seconds"]["mesh"].as_f64().unwrap_or(0.0);
        p.mesh = item["output_seconds"]["mesh_wait"].as_f64().unwrap_or(0.0);
        for (k, name) in EXPORT.iter().enumerate() {
            p.export[k] = item["output_seconds"][name].as_f64().unwrap_or(0.0);
        }
        p.quality = item["output_seconds"]["splat_quality"]
            .as_f64()
            .unwrap_or(0.0);
        p.wall = item["seconds"].as_f64().context("item seconds")? - p.quality;
        Ok(p)
    }

    fn total(&self) -> f64 {
        self.wall
    }

    /// The device worker's own seconds: its stages, weight reads included (the rows before the
    /// output side's).
    fn stages(&self) -> f64 {
        self.rows()[..7].iter().sum()
    }

    /// The formats' wall time together (written side by side), preview included.
    fn formats_wall(&self) -> f64 {
        self.wall - self.rows()[..9].iter().sum::<f64>()
    }

    fn rows(&self) -> Vec<f64> {
        let mut v = vec![
            self.load,
            self.preprocess,
            self.conditioning,
            self.flows,
            self.cascade,
            self.shape_decoder,
            self.tex_decoder,
            self.mesh,
        ];
        v.extend(self.export);
        v
    }

    fn mean(items: &[Phases]) -> Phases {
        let n = items.len().max(1) as f64;
        let mut m = Phases::default();
        for p in items {
            m.load += p.load / n;
            m.preprocess += p.preprocess / n;
            m.conditioning += p.conditioning / n;
            m.flows += p.flows / n;
            m.cascade += p.cascade / n;
            m.shape_decoder += p.shape_decoder / n;
            m.tex_decoder += p.tex_decoder / n;
            m.mesh += p.mesh / n;
            m.surface += p.surface / n;
            for k in 0..EXPORT.len() {
                m.export[k] += p.export[k] / n;
            }
            m.quality += p.quality / n;
            m.wall += p.wall / n;
            m.peak_rss = m.peak_rss.max(p.peak_rss);
            m.peak_gpu = m.peak_gpu.max(p.peak_gpu);
        }
        m
    }
}

const ROW_NAMES: [&str; 13] = [
    "weights read (load)",
    "preprocess (decode picture, alpha crop)",
    "conditioning (DINOv3)",
    "flows (sparse structure with its decoder, shape, texture)",
    "cascade upsample + quantisation",
    "shape decoder (+ its stage's glue: the voxels' copy queued)",
    "texture decoder (+ its stage's glue: the voxel check, the copy queued)",
    "output side: waiting for the surface, attributes to host arrays (before the asset)",
    "export: asset (the attributes checked and joined to the surface thread's geometry)",
    "export + write: splat PLY",
    "export + write: mesh PLY",
    "export + write: GLB (decimate, unwrap, bake, PNG, write)",
    "export: mesh prepare (colours looked up at the vertices, once for the mesh formats; the faces come wound outward from the surface thread)",
];

fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

fn items(run: &Run) -> Result<Vec<Phases>> {
    run.report["items"]
        .as_array()
        .context("report items")?
        .iter()
        .map(Phases::of)
        .collect()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} threads")
}

fn table(o: &Opts, pipeline: &str, bytes: u64, colds: &[Run], warm: &Run) -> Result<String> {
    let cold = &colds[0];
    let first = items(cold)?.remove(0);
    let batch = items(warm)?;
    let later = Phases::mean(&batch[1..]);
    let n = batch.len();
    let quality_later: f64 = batch[1..].iter().map(|p| p.quality).sum();
    let per_picture_wall = (warm.wall - cold.wall - quality_later) / (n - 1) as f64;
    let r = &cold.report;
    let loads: f64 = r["model_loads"]
        .as_object()
        .map(|m| {
            m.values()
                .filter_map(|l| l["seconds"].as_f64())
                .sum::<f64>()
        })
        .unwrap_or(0.0);
    let mut t = String::new();
    use std::fmt::Write;
    writeln!(
        t,
        "\n#### `{pipeline}`: device {} ({}), dtype {}, `--dev-force-structure {}`{}{}",
        r["device"].as_str().unwrap_or("?"),
        machine(),
        r["dtype"].as_str().unwrap_or("?"),
        o.forcing,
        if o.tiny {
            ", tiny golden model (smoke run)"
        } else {
            ", full-size random weights"
        },
        if o.extra.is_empty() {
            String::new()
        } else {
            format!(", `{}`", o.extra.join(" "))
        }
    )?;
    let source = match cold.evicted {
        Some(true) => "from the disk: page cache emptied before the cold run",
        Some(false) => {
            "the page cache could not be emptied (not root?): from the page cache or disk"
        }
        None => "from the page cache or disk, whichever held them",
    };
    writeln!(
        t,
        "weights read by this pipeline: {:.2} GB; cold load {:.2} s ({:.2} GB/s {source})",
        bytes as f64 / 1e9,
        loads,
        bytes as f64 / 1e9 / loads.max(1e-9)
    )?;
    if colds.len() > 1 {
        let list = |f: &dyn Fn(&Run) -> f64| {
            colds
                .iter()
                .map(|r| format!("{:.2}", f(r)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(
            t,
            "cold runs ({}): process wall {} s; exit after the last file {} s (the table: the first)",
            colds.len(),
            list(&|r| r.wall - items(r).map_or(0.0, |i| i[0].quality)),
            list(&|r| r.exit)
        )?;
    }
    // The cold start's work besides the weight reads (docs/CUDA.md, "Cold start").
    for w in r["candle_kernels"].as_array().into_iter().flatten() {
        writeln!(
            t,
            "candle's CUDA modules (GPU {}): {} of {} loaded from the build's SASS in {:.3} s at \
             the device's set-up{}",
            w["gpu"],
            w["from_images"],
            w["modules"],
            w["seconds"].as_f64().unwrap_or(0.0),
            match w["errors"].as_array() {
                Some(e) if !e.is_empty() => format!("; errors: {e:?}"),
                _ => String::new(),
            }
        )?;
    }
    for p in r["weight_prefetch"].as_array().into_iter().flatten() {
        let seconds = p["seconds"].as_f64().unwrap_or(0.0);
        writeln!(
            t,
            "weights read ahead into the page cache: {:.2} GB in {seconds:.2} s ({} readers)",
            p["bytes"].as_f64().unwrap_or(0.0) / 1e9,
            p["readers"]
        )?;
        // From the disk, the cold start's target is the stage time plus the read time: what
        // the run spends beyond its reads, against the warm worker's stage time.
        if cold.evicted == Some(true) && seconds > 0.0 {
            writeln!(
                t,
                "cold wall − read-ahead time: {:.2} s (the warm device worker's stages: {:.2} s)",
                cold.wall - first.quality - seconds,
                later.stages()
            )?;
        }
    }
    writeln!(
        t,
        "structure {} tokens, decoded voxels {}, mesh faces {} (first picture)\n",
        stage_field(&cold.report, "sparse_structure", "voxels"),
        cold.report["items"][0]["voxels"],
        cold.report["items"][0]["mesh_faces"],
    )?;
    writeln!(
        t,
        "| phase (s) | cold: 1 picture, one process | warm: per picture, pictures 2–{n} of {n} in one process |"
    )?;
    writeln!(t, "|---|---|---|")?;
    writeln!(
        t,
        "| **total** | **{:.2}** (process wall) | **{:.2}** (report, per item) · {:.2} ((batch wall − cold wall) / {}) |",
        cold.wall - first.quality,
        later.total(),
        per_picture_wall,
        n - 1
    )?;
    // A picture's files are written while the next one runs: the batch's pace between its
    // first and last finished picture, not an item's own time, is what a folder costs.
    let mut ends: Vec<f64> = warm.report["items"]
        .as_array()
        .context("report items")?
        .iter()
        .filter_map(|i| i["finished_seconds"].as_f64())
        .collect();
    ends.sort_by(f64::total_cmp);
    if let (Some(a), Some(b)) = (ends.first(), ends.last()) {
        writeln!(
            t,
            "| **throughput** (batch wall − first picture, per picture; splat quality included) | – | **{:.2}** ({:.1} pictures/min over the whole batch) |",
            (b - a) / (ends.len().max(2) - 1) as f64,
            warm.report["pictures_per_minute"].as_f64().unwrap_or(0.0)
        )?;
    }
    // When the writers fall behind (the splat quality of `--report` takes seconds a picture),
    // pictures finish in bursts and the row above measures the writers' backlog; the worker's
    // own stage time is the pace a batch reaches when they keep up.
    writeln!(
        t,
        "| **device worker** (its stages per picture: the pace when the writers keep up) | {:.2} | **{:.2}** |",
        first.stages(),
        later.stages()
    )?;
    for (name, (c, w)) in ROW_NAMES.iter().zip(first.rows().iter().zip(later.rows())) {
        writeln!(t, "| {name} | {c:.3} | {w:.3} |")?;
    }
    writeln!(
        t,
        "| export + write: the formats side by side (wall; the format and mesh-prepare rows above overlap) | {:.3} | {:.3} |",
        first.formats_wall(),
        later.formats_wall()
    )?;
    writeln!(
        t,
        "| *surface: mesh extraction, hole filling, faces wound outward, splat patches, the asset's checks and voxel index (its own thread, beside the texture stages; left out above)* | {:.3} | {:.3} |",
        first.surface, later.surface
    )?;
    writeln!(
        t,
        "| process start-up, device set-up (cold wall − phases − exit) | {:.3} | – |",
        cold.wall - first.quality - first.total() - cold.exit
    )?;
    writeln!(
        t,
        "| process exit (from its last file, the report, to its end) | {:.3} | {:.3} |",
        cold.exit, warm.exit
    )?;
    writeln!(
        t,
        "| *splat quality (only with --report; left out above)* | {:.3} | {:.3} |",
        first.quality, later.quality
    )?;
    writeln!(
        t,
        "| peak host RSS (polled; weights are memory-mapped) | {} | {} |",
        gib(cold.peak_rss.max(first.peak_rss)),
        gib(warm.peak_rss.max(later.peak_rss))
    )?;
    writeln!(
        t,
        "| peak host anonymous RSS (polled) | {} | {} |",
        gib(cold.peak_anon),
        gib(warm.peak_anon)
    )?;
    let gpu = |p: &Phases| {
        if p.peak_gpu > 0 {
            gib(p.peak_gpu)
        } else {
            "–".into()
        }
    };
    writeln!(
        t,
        "| peak GPU memory (whole card) | {} | {} |",
        gpu(&first),
        gpu(&later)
    )?;
    Ok(t)
}

fn stage_field(report: &Value, stage: &str, field: &str) -> String {
    report["items"][0]["stages"]
        .as_array()
        .and_then(|s| s.iter().find(|x| x["stage"] == stage))
        .map(|x| x[field].to_string())
        .unwrap_or_else(|| "?".into())
}

fn main() -> Result<()> {
    let o = parse()?;
    let scratch = tempfile::tempdir()?;
    let model = if o.tiny {
        manifest_dir().join("tests/fixtures/golden")
    } else {
        let dir = o
            .model
            .clone()
            .unwrap_or_else(|| scratch.path().join("model"));
        write_model(&dir)?;
        dir
    };
    let model_dir = ModelDir::open(&model)?;
    let work = match &o.keep {
        Some(k) => k.clone(),
        None => scratch.path().join("runs"),
    };
    let inputs = pictures(&work.join("pictures"), o.batch)?;
    let mut out = String::new();
    for pipeline in &o.pipelines {
        let bytes = weight_bytes(&model_dir, pipeline)?;
        let dir = work.join(pipeline);
        let mut colds = Vec::with_capacity(o.cold_runs);
        for k in 0..o.cold_runs {
            eprintln!(
                "{pipeline}: cold run {} of {} (1 picture)",
                k + 1,
                o.cold_runs
            );
            let out = dir.join(format!("cold{k}"));
            colds.push(generate(&o, &model, pipeline, &inputs[..1], &out, o.evict)?);
        }
        eprintln!("{pipeline}: warm run ({} pictures)", o.batch);
        let warm = generate(&o, &model, pipeline, &inputs, &dir.join("warm"), false)?;
        let t = table(&o, pipeline, bytes, &colds, &warm)?;
        println!("{t}");
        out.push_str(&t);
    }
    if o.keep.is_some() {
        std::fs::write(work.join("e2e.md"), out)?;
    }
    Ok(())
}
