//! `trellis2 inspect PATH`: what is in a model directory, checkpoint, PLY, GLB or safetensors file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use trellis2::compare::TensorFile;
use trellis2::export::glb::read_glb;
use trellis2::export::ply::{read_ply, PlyFile};
use trellis2::models::registry::{check_source, ModelSource};
use trellis2::pipeline::models;
use trellis2::pipeline::PipelineSettings;
use trellis2::render::splat_stats::{SplatStats, Spread};
use trellis2::render::{load_scene, Scene};
use trellis2::weights::{Checkpoint, ModelDir, TensorInfo};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A model directory (with pipeline.json), a checkpoint (.safetensors or its stem),
    /// or a .ply / .glb file.
    pub path: PathBuf,
    /// For checkpoints and safetensors files: leave out the per-tensor list.
    #[arg(long)]
    pub summary: bool,
}

pub fn run(args: &Args) -> Result<u8> {
    let path = &args.path;
    if path.is_dir() {
        if path.join("pipeline.json").is_file() {
            return model_dir(path);
        }
        let hf = path.join("model.safetensors");
        if hf.is_file() {
            return checkpoint(&Checkpoint::open_file(&hf)?, !args.summary);
        }
        bail!(
            "{}: not a model directory (no pipeline.json or model.safetensors)",
            path.display()
        );
    }
    let stem_weights = PathBuf::from(format!("{}.safetensors", path.display()));
    if !path.exists() && stem_weights.is_file() {
        return checkpoint(&Checkpoint::open_file(&stem_weights)?, !args.summary);
    }
    super::existing_file(path)?;
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "ply" => ply(path, &read_ply(path)?),
        "glb" => glb(path),
        "spz" => spz(path),
        "safetensors" => {
            // Validate the header through the plain reader first: it gives the clearest errors.
            TensorFile::open(path)?.parse()?;
            checkpoint(&Checkpoint::open_file(path)?, !args.summary)
        }
        _ => bail!(
            "{}: unknown file type (expected a directory, .safetensors, .ply, .glb or .spz)",
            path.display()
        ),
    }
}

fn dtype_name(d: safetensors::Dtype) -> String {
    format!("{d:?}").to_lowercase()
}

/// "bf16 ×640 (1.29 G params)" style summary of a tensor list.
fn dtype_breakdown(infos: &[TensorInfo]) -> String {
    let mut by: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for t in infos {
        let e = by.entry(dtype_name(t.dtype)).or_default();
        e.0 += 1;
        e.1 += t.numel();
    }
    by.iter()
        .map(|(d, (n, p))| format!("{d} ×{n} ({} params)", group_digits(*p)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn group_digits(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn model_dir(root: &Path) -> Result<u8> {
    let md = ModelDir::open(root)?;
    println!("model directory  {}", root.display());
    println!("pipeline         {}", md.pipeline.name);
    let mut total_params = 0;
    let mut total_bytes = 0;
    let mut missing = 0;
    let mut bad = Vec::new();
    // What generate reads before its first picture: pipeline.json's settings, then every
    // model's config and tensor list (checked shape-only, nothing loaded).
    if let Err(e) = PipelineSettings::from_pipeline_args(&md.pipeline.args) {
        bad.push(format!("{}: {e:#}", root.join("pipeline.json").display()));
    }
    for (role, stem) in md.pipeline.model_stems() {
        if role == models::role::IMAGE_COND {
            // Listed below from the folder the pipeline really loads.
            continue;
        }
        if let Err(e) = md
            .resolve(&role)
            .and_then(|p| check_source(&ModelSource::open(&p)?))
        {
            bad.push(format!("model `{role}`: {e:#}"));
        }
        match md.checkpoint(&role) {
            Ok(ckpt) => {
                let infos = ckpt.tensor_infos();
                let params: usize = infos.iter().map(TensorInfo::numel).sum();
                let bytes: usize = infos.iter().map(TensorInfo::bytes).sum();
                total_params += params;
                total_bytes += bytes;
                println!(
                    "  {role:<28} {:<26} {:>15} params  {:>10}  {}",
                    ckpt.class_name().unwrap_or("?"),
                    group_digits(params),
                    super::human_bytes(bytes as u64),
                    dtype_breakdown(&infos)
                );
            }
            Err(e) => {
                missing += 1;
                println!("  {role:<28} MISSING ({stem}): {e:#}");
            }
        }
    }
    let dino = models::dinov3_folder(&md).and_then(|folder| {
        let source = ModelSource::open(&folder)?;
        check_source(&source)?;
        Ok(source)
    });
    match dino {
        Ok(source) => {
            let infos = source.checkpoint.tensor_infos();
            let params: usize = infos.iter().map(TensorInfo::numel).sum();
            let bytes: usize = infos.iter().map(TensorInfo::bytes).sum();
            total_params += params;
            total_bytes += bytes;
            println!(
                "  {:<28} {:<26} {:>15} params  {:>10}  {}",
                models::role::IMAGE_COND,
                source.class,
                group_digits(params),
                super::human_bytes(bytes as u64),
                dtype_breakdown(&infos)
            );
        }
        Err(e) => {
            println!("  {:<28} UNUSABLE: {e:#}", models::role::IMAGE_COND);
            bad.push(format!("model `{}`: {e:#}", models::role::IMAGE_COND));
        }
    }
    println!(
        "total            {} params, {}",
        group_digits(total_params),
        super::human_bytes(total_bytes as u64)
    );
    for e in &bad {
        eprintln!("error: {e}");
    }
    if missing > 0 {
        eprintln!("error: {}: {missing} model(s) missing", root.display());
    }
    if missing > 0 || !bad.is_empty() {
        return Ok(super::exit::FAILED);
    }
    Ok(super::exit::OK)
}

fn checkpoint(ckpt: &Checkpoint, list: bool) -> Result<u8> {
    let infos = ckpt.tensor_infos();
    let params: usize = infos.iter().map(TensorInfo::numel).sum();
    let bytes: usize = infos.iter().map(TensorInfo::bytes).sum();
    println!("checkpoint  {}", ckpt.path.display());
    println!("layout      {}", ckpt.layout);
    if let Some(cfg) = &ckpt.config {
        println!("class       {}", cfg.name);
        println!("args        {}", cfg.args);
    }
    println!(
        "tensors     {}, {} params, {}",
        infos.len(),
        group_digits(params),
        super::human_bytes(bytes as u64)
    );
    println!("dtypes      {}", dtype_breakdown(&infos));
    if let Ok(meta) = TensorFile::open(&ckpt.path).and_then(|f| f.metadata()) {
        let mut keys: Vec<_> = meta.iter().collect();
        keys.sort();
        for (k, v) in keys {
            let v = if v.chars().count() > 100 {
                format!("{}…", v.chars().take(100).collect::<String>())
            } else {
                v.clone()
            };
            println!("metadata    {k} = {v}");
        }
    }
    if list {
        let width = infos.iter().map(|t| t.name.len()).max().unwrap_or(4);
        for t in &infos {
            println!(
                "  {:<width$}  {:<5}  {:?}",
                t.name,
                dtype_name(t.dtype),
                t.shape
            );
        }
    }
    Ok(super::exit::OK)
}

fn ply(path: &Path, ply: &PlyFile) -> Result<u8> {
    let kind = if ply.is_gaussian_splat() {
        "Gaussian splats (INRIA 3DGS layout)"
    } else if ply.is_mesh() {
        "triangle mesh"
    } else {
        "point cloud / generic"
    };
    println!("ply         {}", path.display());
    println!("format      {}", ply.format);
    println!("contents    {kind}");
    for c in &ply.comments {
        println!("comment     {c}");
    }
    if let Some(b) = ply.vertex_bounds() {
        println!(
            "bounds      x [{:.6}, {:.6}]  y [{:.6}, {:.6}]  z [{:.6}, {:.6}]",
            b[0].0, b[0].1, b[1].0, b[1].1, b[2].0, b[2].1
        );
    }
    for e in &ply.elements {
        println!("element     {} ×{}", e.name, e.count);
        for p in &e.properties {
            let range = p
                .column
                .range()
                .map(|(lo, hi)| format!("[{lo:.6}, {hi:.6}]"))
                .unwrap_or_else(|| "(empty)".into());
            println!("  {:<18} {:<22} {range}", p.name, p.type_name);
        }
    }
    if ply.is_gaussian_splat() {
        splat_summary(path)?;
    }
    Ok(super::exit::OK)
}

/// Count, bounds, sizes, shapes, opacities and SH degree of a splat file (PLY or SPZ).
fn splat_summary(path: &Path) -> Result<()> {
    let Scene::Splats(splats) = load_scene(path)? else {
        bail!("{}: not a Gaussian-splat file", path.display());
    };
    let s = SplatStats::of(&splats);
    println!("splats      {}, SH degree {}", s.count, s.sh_degree);
    if let Some((lo, hi)) = s.bounds {
        println!(
            "centres     x [{:.6}, {:.6}]  y [{:.6}, {:.6}]  z [{:.6}, {:.6}]",
            lo[0], hi[0], lo[1], hi[1], lo[2], hi[2]
        );
    }
    let line = |what: &str, spread: Option<Spread>| {
        if let Some(v) = spread {
            println!(
                "{what:<24} min {:.3e}  median {:.3e}  p99 {:.3e}  max {:.3e}",
                v.min, v.median, v.p99, v.max
            );
        }
    };
    println!("(standard deviations sorted per splat; opacity after the sigmoid)");
    line("scale, largest axis", s.sorted_scales[0]);
    line("scale, middle axis", s.sorted_scales[1]);
    line("scale, smallest axis", s.sorted_scales[2]);
    line("largest / middle", s.elongation);
    line("smallest / middle", s.flatness);
    line("opacity", s.opacity);
    if let Some(m) = s.mean_opacity {
        println!("{:<24} {m:.4}", "opacity, mean");
    }
    Ok(())
}

fn spz(path: &Path) -> Result<u8> {
    let f = trellis2::export::spz::read_spz(path)?;
    println!("spz         {}", path.display());
    println!(
        "format      SPZ version {}, SH degree {}, {} fractional bits{}",
        f.version,
        f.sh_degree,
        f.fractional_bits,
        if f.antialiased { ", antialiased" } else { "" }
    );
    println!("contents    Gaussian splats ×{}", f.splats.len());
    let mut lo = [f32::INFINITY; 3];
    let mut hi = [f32::NEG_INFINITY; 3];
    for s in &f.splats {
        for k in 0..3 {
            lo[k] = lo[k].min(s.position[k]);
            hi[k] = hi[k].max(s.position[k]);
        }
    }
    if !f.splats.is_empty() {
        println!("bounds      {lo:?} .. {hi:?}");
    }
    splat_summary(path)?;
    Ok(super::exit::OK)
}

fn glb(path: &Path) -> Result<u8> {
    let (mesh, summary) = read_glb(path)?;
    println!("glb         {}", path.display());
    if let Some(g) = &summary.generator {
        println!("generator   {g}");
    }
    println!(
        "meshes      {} ({} primitives), {} vertices, {} triangles, vertex colours: {}",
        summary.meshes,
        summary.primitives,
        mesh.positions.len(),
        mesh.triangle_count(),
        if mesh.colors.is_some() { "yes" } else { "no" }
    );
    if let Some(b) = mesh.bounds() {
        println!(
            "bounds      x [{:.6}, {:.6}]  y [{:.6}, {:.6}]  z [{:.6}, {:.6}]",
            b[0].0, b[0].1, b[1].0, b[1].1, b[2].0, b[2].1
        );
    }
    println!("textures    {}", summary.textures);
    for m in &summary.materials {
        println!("material    {m}");
    }
    Ok(super::exit::OK)
}
