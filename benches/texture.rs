//! `trellis2 texture` end to end at full model size with random weights: writes (or reuses)
//! a model folder from the release manifests (DINOv3, the texture flow of the chosen grid, the
//! texture decoder, the shape encoder, `texturing_pipeline.json`), makes a UV-sphere mesh of
//! about `--faces` triangles and runs the real binary on it with `--report`, then prints the
//! report's phase table (normalise+voxelise, encode, conditioning, sampling, decode, bake,
//! write).
//!
//! ```text
//! cargo bench --bench texture                                   # CPU: grid 128, 20 k faces
//! cargo bench --features cuda --bench texture -- --device cuda --resolution 1024 --faces 1000000
//! ```
//! Options: `--device cpu|cuda|metal`, `--resolution 64..1024`, `--faces N`, `--texture-size N`,
//! `--steps N`, `--mesh glb|obj|ply` (ply: no UVs, so a new atlas is unwrapped), `--model DIR`
//! (reuse a model folder; missing files are written into it), `--out DIR`. The binary is
//! `TRELLIS2_BIN` if set, else the one cargo built with this bench (same features).

#[path = "common/random_weights.rs"]
mod random_weights;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::DType;
use random_weights::{manifest, write_random};
use trellis2::pipeline::config::{SHAPE_MEAN, SHAPE_STD, TEX_MEAN, TEX_STD};

struct Opts {
    device: String,
    resolution: u32,
    faces: usize,
    texture_size: u32,
    steps: usize,
    mesh: String,
    model: PathBuf,
    out: PathBuf,
}

fn parse() -> Result<Opts> {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let mut device = "cpu".to_string();
    let (mut resolution, mut faces, mut texture_size, mut steps) = (None, None, None, None);
    let (mut mesh, mut model, mut out) = ("glb".to_string(), None, None);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--device" => device = value()?,
            "--resolution" => resolution = Some(value()?.parse()?),
            "--faces" => faces = Some(value()?.parse()?),
            "--texture-size" => texture_size = Some(value()?.parse()?),
            "--steps" => steps = Some(value()?.parse()?),
            "--mesh" => mesh = value()?,
            "--model" => model = Some(PathBuf::from(value()?)),
            "--out" => out = Some(PathBuf::from(value()?)),
            other => bail!("unknown argument {other} (see the header of benches/texture.rs)"),
        }
    }
    if !["glb", "obj", "ply"].contains(&mesh.as_str()) {
        bail!("--mesh takes glb, obj or ply");
    }
    let gpu = device != "cpu";
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    Ok(Opts {
        resolution: resolution.unwrap_or(if gpu { 1024 } else { 128 }),
        faces: faces.unwrap_or(if gpu { 1_000_000 } else { 20_000 }),
        texture_size: texture_size.unwrap_or(if gpu { 2048 } else { 512 }),
        steps: steps.unwrap_or(if gpu { 12 } else { 2 }),
        device,
        mesh,
        model: model.unwrap_or_else(|| target.join("bench-texture-model")),
        out: out.unwrap_or_else(|| target.join("bench-texture-out")),
    })
}

/// The release's file names and stored dtypes, by manifest.
const ENCODER: (&str, &str, DType) = (
    "shape_enc_next_dc_f16c32_fp16",
    "ckpts/shape_enc_next_dc_f16c32_fp16",
    DType::F16,
);
const DECODER: (&str, &str, DType) = (
    "tex_vae_next_dc_f16c32_fp16.decoder",
    "ckpts/tex_dec_next_dc_f16c32_fp16",
    DType::F16,
);
const FLOW_512: (&str, &str, DType) = (
    "slat_flow_imgshape2tex_dit_1_3B_512_bf16.denoiser",
    "ckpts/slat_flow_imgshape2tex_dit_1_3B_512_bf16",
    DType::BF16,
);
const FLOW_1024: (&str, &str, DType) = (
    "slat_flow_imgshape2tex_dit_1_3B_512_bf16_ft1024.denoiser",
    "ckpts/slat_flow_imgshape2tex_dit_1_3B_1024_bf16",
    DType::BF16,
);
const DINOV3: &str = "facebook/dinov3-vitl16-pretrain-lvd1689m";

/// Writes what the model folder lacks for a run at `resolution`.
fn ensure_model(dir: &Path, resolution: u32) -> Result<()> {
    std::fs::create_dir_all(dir.join("ckpts"))?;
    let flow = if resolution >= 1024 {
        FLOW_1024
    } else {
        FLOW_512
    };
    for (name, stem, dtype) in [ENCODER, DECODER, flow] {
        let weights = dir.join(format!("{stem}.safetensors"));
        if weights.is_file() {
            continue;
        }
        let start = Instant::now();
        let (class, args) = manifest(name)?;
        let tmp = dir.join(format!("{stem}.safetensors.part"));
        let params = write_random(&tmp, &class, &args, dtype)?;
        std::fs::rename(&tmp, &weights)?;
        let json = serde_json::json!({ "name": class, "args": args });
        std::fs::write(
            dir.join(format!("{stem}.json")),
            serde_json::to_vec_pretty(&json)?,
        )?;
        eprintln!(
            "wrote {} ({:.0} M parameters, {:.0} s)",
            weights.display(),
            params as f64 / 1e6,
            start.elapsed().as_secs_f64()
        );
    }
    let dino = dir.join(DINOV3);
    if !dino.join("model.safetensors").is_file() {
        std::fs::create_dir_all(&dino)?;
        let (class, args) = manifest("dinov3_vitl16")?;
        let tmp = dino.join("model.safetensors.part");
        write_random(&tmp, &class, &args, DType::F32)?;
        std::fs::rename(&tmp, dino.join("model.safetensors"))?;
        std::fs::write(dino.join("config.json"), serde_json::to_vec_pretty(&args)?)?;
        eprintln!("wrote {}", dino.display());
    }
    let sampler = serde_json::json!({
        "name": "FlowEulerGuidanceIntervalSampler",
        "args": { "sigma_min": 1e-5 },
        "params": {
            "steps": 12, "guidance_strength": 1.0, "guidance_rescale": 0.0,
            "guidance_interval": [0.6, 0.9], "rescale_t": 3.0,
        },
    });
    let pipeline = serde_json::json!({
        "name": "Trellis2TexturingPipeline",
        "args": {
            "models": {
                "shape_slat_encoder": ENCODER.1,
                "tex_slat_decoder": DECODER.1,
                "tex_slat_flow_model_512": FLOW_512.1,
                "tex_slat_flow_model_1024": FLOW_1024.1,
            },
            "tex_slat_sampler": sampler,
            "shape_slat_normalization": { "mean": SHAPE_MEAN, "std": SHAPE_STD },
            "tex_slat_normalization": { "mean": TEX_MEAN, "std": TEX_STD },
            "image_cond_model": {
                "name": "DinoV3FeatureExtractor",
                "args": { "model_name": DINOV3 },
            },
            "rembg_model": { "name": "BiRefNet", "args": { "model_name": "briaai/RMBG-2.0" } },
            "low_vram": false,
        },
    });
    std::fs::write(
        dir.join("texturing_pipeline.json"),
        serde_json::to_vec_pretty(&pipeline)?,
    )?;
    Ok(())
}

/// Positions, UVs and triangles.
type TriangleMesh = (Vec<[f32; 3]>, Vec<[f32; 2]>, Vec<[u32; 3]>);

/// A UV sphere of `segments × segments/2` quads (about `faces` triangles) with a seam.
fn sphere(faces: usize) -> TriangleMesh {
    let segments = ((faces as f64).sqrt().round() as u32).max(8);
    let rings = segments / 2;
    let mut positions = Vec::with_capacity(((segments + 1) * (rings + 1)) as usize);
    let mut uvs = Vec::with_capacity(positions.capacity());
    for r in 0..=rings {
        let theta = std::f32::consts::PI * r as f32 / rings as f32;
        for k in 0..=segments {
            let phi = std::f32::consts::TAU * k as f32 / segments as f32;
            // A slightly lumpy surface, so the voxel count is that of a real object.
            let bump = 1.0 + 0.05 * (5.0 * phi).sin() * (3.0 * theta).sin();
            positions.push([
                bump * theta.sin() * phi.cos(),
                bump * theta.cos(),
                bump * theta.sin() * phi.sin(),
            ]);
            uvs.push([k as f32 / segments as f32, r as f32 / rings as f32]);
        }
    }
    let at = |r: u32, k: u32| r * (segments + 1) + k;
    let mut tris = Vec::with_capacity((2 * segments * rings) as usize);
    for r in 0..rings {
        for k in 0..segments {
            tris.push([at(r, k), at(r, k + 1), at(r + 1, k)]);
            tris.push([at(r, k + 1), at(r + 1, k + 1), at(r + 1, k)]);
        }
    }
    (positions, uvs, tris)
}

fn write_mesh(path: &Path, kind: &str, faces: usize) -> Result<usize> {
    let (positions, uvs, tris) = sphere(faces);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    match kind {
        "obj" => {
            for p in &positions {
                writeln!(f, "v {} {} {}", p[0], p[1], p[2])?;
            }
            for t in &uvs {
                writeln!(f, "vt {} {}", t[0], 1.0 - t[1])?;
            }
            for t in &tris {
                let [a, b, c] = t.map(|i| i + 1);
                writeln!(f, "f {a}/{a} {b}/{b} {c}/{c}")?;
            }
        }
        "ply" => {
            write!(
                f,
                "ply\nformat binary_little_endian 1.0\nelement vertex {}\nproperty float x\n\
                 property float y\nproperty float z\nelement face {}\nproperty list uchar int \
                 vertex_indices\nend_header\n",
                positions.len(),
                tris.len()
            )?;
            for p in &positions {
                for v in p {
                    f.write_all(&v.to_le_bytes())?;
                }
            }
            for t in &tris {
                f.write_all(&[3])?;
                for i in t {
                    f.write_all(&(*i as i32).to_le_bytes())?;
                }
            }
        }
        _ => {
            let mut bin: Vec<u8> = positions
                .iter()
                .flatten()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            let uv_at = bin.len();
            bin.extend(uvs.iter().flatten().flat_map(|v| v.to_le_bytes()));
            let ix_at = bin.len();
            bin.extend(tris.iter().flatten().flat_map(|v| v.to_le_bytes()));
            let n = positions.len();
            let doc = serde_json::json!({
                "asset": { "version": "2.0" },
                "scene": 0, "scenes": [{ "nodes": [0] }], "nodes": [{ "mesh": 0 }],
                "meshes": [{ "primitives": [{
                    "attributes": { "POSITION": 0, "TEXCOORD_0": 1 }, "indices": 2,
                }]}],
                "accessors": [
                    { "bufferView": 0, "componentType": 5126, "count": n, "type": "VEC3",
                      "min": [-1.1, -1.1, -1.1], "max": [1.1, 1.1, 1.1] },
                    { "bufferView": 1, "componentType": 5126, "count": n, "type": "VEC2" },
                    { "bufferView": 2, "componentType": 5125, "count": tris.len() * 3,
                      "type": "SCALAR" },
                ],
                "bufferViews": [
                    { "buffer": 0, "byteOffset": 0, "byteLength": uv_at },
                    { "buffer": 0, "byteOffset": uv_at, "byteLength": ix_at - uv_at },
                    { "buffer": 0, "byteOffset": ix_at, "byteLength": bin.len() - ix_at },
                ],
                "buffers": [{ "byteLength": bin.len() }],
            });
            let mut json = serde_json::to_vec(&doc)?;
            json.resize(json.len().next_multiple_of(4), b' ');
            bin.resize(bin.len().next_multiple_of(4), 0);
            let total = 12 + 8 + json.len() + 8 + bin.len();
            f.write_all(b"glTF")?;
            f.write_all(&2u32.to_le_bytes())?;
            f.write_all(&(total as u32).to_le_bytes())?;
            f.write_all(&(json.len() as u32).to_le_bytes())?;
            f.write_all(b"JSON")?;
            f.write_all(&json)?;
            f.write_all(&(bin.len() as u32).to_le_bytes())?;
            f.write_all(b"BIN\0")?;
            f.write_all(&bin)?;
        }
    }
    f.flush()?;
    Ok(tris.len())
}

fn main() -> Result<()> {
    let o = parse()?;
    ensure_model(&o.model, o.resolution)
        .with_context(|| format!("{}: writing the random-weight model", o.model.display()))?;
    std::fs::create_dir_all(&o.out)?;
    let mesh = o.out.join(format!("sphere.{}", o.mesh));
    let faces = write_mesh(&mesh, &o.mesh, o.faces)?;
    let picture = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/T.png");
    let report = o.out.join("texture_report.json");
    let bin = std::env::var_os("TRELLIS2_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_trellis2")));
    println!(
        "texture: {faces} faces ({}), grid {}, {} steps, textures {}², device {}",
        o.mesh, o.resolution, o.steps, o.texture_size, o.device
    );
    let start = Instant::now();
    let status = Command::new(&bin)
        .arg("texture")
        .arg(&mesh)
        .arg(&picture)
        .arg("-o")
        .arg(&o.out)
        .arg("--model")
        .arg(&o.model)
        .args(["--resolution", &o.resolution.to_string()])
        .args(["--texture-size", &o.texture_size.to_string()])
        .args(["--steps", &o.steps.to_string()])
        .args(["--device", &o.device, "--rembg", "none", "--quiet"])
        .arg("--report")
        .arg(&report)
        .env_remove("TRELLIS2_MODEL")
        .env_remove("TRELLIS2_DEVICE")
        .stdin(std::process::Stdio::null())
        .status()
        .with_context(|| format!("{}: cannot run", bin.display()))?;
    let wall = start.elapsed().as_secs_f64();
    if !status.success() {
        bail!("{} texture failed ({status})", bin.display());
    }
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report)?)?;
    let item = &r["items"][0];
    println!("device {}, dtype {}", r["device"], r["dtype"]);
    println!("| phase | s | voxels | tokens | peak RSS MiB | peak GPU MiB |");
    println!("|---|---|---|---|---|---|");
    let stages = item["stages"].as_array().cloned().unwrap_or_default();
    for (phase, stage) in [
        ("preprocess", "preprocess"),
        ("normalise+voxelise", "voxelise"),
        ("conditioning", "conditioning"),
        ("encode", "encode"),
        ("sampling", "texture"),
        ("decode", "decode"),
        ("bake", "bake"),
        ("write", "write"),
    ] {
        let Some(s) = stages.iter().find(|s| s["stage"] == stage) else {
            continue;
        };
        let mib = |v: &serde_json::Value| {
            v.as_u64()
                .map_or("-".to_string(), |b| (b >> 20).to_string())
        };
        let count = |v: &serde_json::Value| v.as_u64().map_or("-".to_string(), |n| n.to_string());
        println!(
            "| {phase} | {:.2} | {} | {} | {} | {} |",
            s["seconds"].as_f64().unwrap_or(0.0),
            count(&s["voxels"]),
            count(&s["tokens"]),
            mib(&s["peak_rss_bytes"]),
            mib(&s["peak_gpu_bytes"]),
        );
    }
    println!(
        "item {:.2} s, process wall {wall:.2} s (model loads: {})",
        item["seconds"].as_f64().unwrap_or(0.0),
        r["model_loads"]
    );
    Ok(())
}
