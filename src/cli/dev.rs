//! `trellis2 dev ...`: tools for developers and reviewers.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use trellis2::dev::forward::{self as runner, Inputs};
use trellis2::dev::metal_plan;
use trellis2::export::tensors::{read_tensors, write_tensors};
use trellis2::export::write_atomic;
use trellis2::mesh::{QefWeights, TEXTURING_WEIGHTS};
use trellis2::models::registry::ModelSource;
use trellis2::rng::randn_sequence;

#[derive(Subcommand, Debug)]
pub enum DevCommand {
    /// Draw normal noise exactly like `torch.manual_seed(S); torch.randn(shape)` on the CPU,
    /// one draw per --shape in order, into tensors draw0, draw1, ...
    Randn {
        /// The seed (`--seed` of `generate`).
        #[arg(long)]
        seed: u64,
        /// Comma-separated shape, e.g. 1,8,16,16,16; repeat for several draws in sequence.
        #[arg(long = "shape", required = true, value_parser = parse_shape)]
        shapes: Vec<Vec<usize>>,
        /// Output safetensors file.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Run one checkpoint on named input tensors (CPU, f32) and write its named outputs, using
    /// the tensor names of the golden `golden/<role>.io.safetensors` files, so that
    /// `trellis2 compare OUT golden/<role>.io.safetensors` checks it.
    Forward {
        /// Checkpoint stem in the upstream format (PATH.json + PATH.safetensors) or a model
        /// folder: config.json + model.safetensors (Hugging Face DINOv3 or BiRefNet / RMBG-2.0)
        /// or config.json + weights.safetensors (golden BiRefNet).
        #[arg(long)]
        ckpt: PathBuf,
        /// Input tensors (`x`, `x.feats`, `coords`, `t`, `cond`, `z`, `latent.feats`, `image`,
        /// ...).
        #[arg(long)]
        inputs: PathBuf,
        /// Extra inputs, e.g. the texture decoder's guide subdivisions `subs.*`; tensors also
        /// present in --inputs are taken from --inputs.
        #[arg(long)]
        guide: Option<PathBuf>,
        /// Output safetensors file.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Voxelise a mesh into a flexible dual grid (the texturing pipeline's step before the shape
    /// encoder): reads `vertices` [V,3] (normalised into [-0.5, 0.5]³) and `faces` [F,3] from a
    /// safetensors file, writes `voxel_indices` [N,3] i32, `dual_vertices` [N,3] f32 (grid frame
    /// [0,1]³) and `intersected` [N,3] u8.
    Voxelise {
        /// Input safetensors file.
        #[arg(long)]
        inputs: PathBuf,
        /// Voxels per axis (the texturing pipeline uses 512 or 1024).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
        grid_size: u32,
        /// Face term switch (> 0: on), as upstream.
        #[arg(long, default_value_t = TEXTURING_WEIGHTS.face)]
        face_weight: f32,
        /// Weight of the boundary-edge quadrics.
        #[arg(long, default_value_t = TEXTURING_WEIGHTS.boundary)]
        boundary_weight: f32,
        /// Pull towards the mean crossing point (> 0).
        #[arg(long, default_value_t = TEXTURING_WEIGHTS.regularization)]
        regularization_weight: f32,
        /// Output safetensors file.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Print the Metal dispatch plan of an op or of a whole flow-transformer forward as JSON
    /// lines: one object per dispatch (op, kernel, threadgroups, threads, threadgroup memory,
    /// command buffer, estimated seconds on a base M1), then a summary (dispatches, command
    /// buffers, host syncs). Needs no Mac.
    MetalPlan {
        #[command(subcommand)]
        form: PlanForm,
    },
}

/// What `dev metal-plan` plans.
#[derive(Subcommand, Debug)]
pub enum PlanForm {
    /// One varlen attention call: --q query rows attending to --kv key rows.
    Attention {
        #[arg(long)]
        q: usize,
        #[arg(long)]
        kv: usize,
        #[arg(long)]
        heads: usize,
        /// 64 or 128.
        #[arg(long, value_parser = metal_plan::parse_head_dim)]
        head_dim: usize,
        #[arg(long, default_value = "bf16", value_parser = metal_plan::parse_dtype)]
        dtype: candle_core::DType,
    },
    /// One submanifold conv layer (one dispatch: the bias is added in the conv's epilogue).
    SparseConv {
        #[arg(long)]
        voxels: usize,
        #[arg(long)]
        ci: usize,
        #[arg(long)]
        co: usize,
        #[arg(long, default_value = "f16", value_parser = metal_plan::parse_dtype)]
        dtype: candle_core::DType,
    },
    /// One forward of the 1024 pipeline's 1.3 B shape/texture flow transformer on --tokens
    /// tokens, attending to --cond image tokens (0: the zero condition).
    FlowForward {
        #[arg(long)]
        tokens: usize,
        #[arg(long)]
        cond: usize,
        /// Blocks (the release has 30).
        #[arg(long)]
        blocks: Option<usize>,
        #[arg(long, default_value = "bf16", value_parser = metal_plan::parse_dtype)]
        dtype: candle_core::DType,
    },
}

fn parse_shape(s: &str) -> Result<Vec<usize>, String> {
    let dims: Result<Vec<usize>, _> = s.split(',').map(|d| d.trim().parse::<usize>()).collect();
    match dims {
        Ok(d) if !d.is_empty() => Ok(d),
        _ => Err(format!(
            "`{s}` is not a shape (comma-separated sizes, e.g. 1,8,16,16,16)"
        )),
    }
}

pub fn run(cmd: &DevCommand) -> Result<u8> {
    match cmd {
        DevCommand::Randn {
            seed,
            shapes,
            output,
        } => randn(*seed, shapes, output),
        DevCommand::Forward {
            ckpt,
            inputs,
            guide,
            output,
        } => forward(ckpt, inputs, guide.as_deref(), output),
        DevCommand::MetalPlan { form } => metal_plan_lines(form),
        DevCommand::Voxelise {
            inputs,
            grid_size,
            face_weight,
            boundary_weight,
            regularization_weight,
            output,
        } => voxelise(
            inputs,
            *grid_size,
            QefWeights {
                face: *face_weight,
                boundary: *boundary_weight,
                regularization: *regularization_weight,
            },
            output,
        ),
    }
}

fn voxelise(inputs: &Path, grid_size: u32, weights: QefWeights, output: &Path) -> Result<u8> {
    let tensors = read_tensors(inputs, &candle_core::Device::Cpu)?;
    let start = std::time::Instant::now();
    let source = inputs.display().to_string();
    let outputs = trellis2::dev::voxelise::voxelise_tensors(&source, &tensors, grid_size, weights)?;
    let elapsed = start.elapsed();
    let voxels = outputs[0].1.dims()[0];
    let meta = HashMap::from([
        ("grid_size".to_string(), grid_size.to_string()),
        ("face_weight".to_string(), weights.face.to_string()),
        ("boundary_weight".to_string(), weights.boundary.to_string()),
        (
            "regularization_weight".to_string(),
            weights.regularization.to_string(),
        ),
    ]);
    write_tensors(output, &outputs, Some(meta))?;
    println!(
        "{}: {voxels} voxels at grid {grid_size} in {:.3} s → {}",
        inputs.display(),
        elapsed.as_secs_f64(),
        output.display()
    );
    Ok(super::exit::OK)
}

fn metal_plan_lines(form: &PlanForm) -> Result<u8> {
    let plan = match *form {
        PlanForm::Attention {
            q,
            kv,
            heads,
            head_dim,
            dtype,
        } => metal_plan::attention_plan(q, kv, heads, head_dim, dtype)?,
        PlanForm::SparseConv {
            voxels,
            ci,
            co,
            dtype,
        } => metal_plan::sparse_conv_plan(voxels, ci, co, dtype)?,
        PlanForm::FlowForward {
            tokens,
            cond,
            blocks,
            dtype,
        } => {
            let mut cfg = metal_plan::release_flow_config();
            if let Some(blocks) = blocks {
                cfg.num_blocks = blocks;
            }
            metal_plan::flow_forward_plan(&cfg, tokens, cond, dtype)?
        }
    };
    let mut out = std::io::stdout().lock();
    for line in plan.json_lines()? {
        match writeln!(out, "{line}") {
            // A reader that stops early (`| head`) is not an error.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
            r => r?,
        }
    }
    Ok(super::exit::OK)
}

fn randn(seed: u64, shapes: &[Vec<usize>], output: &Path) -> Result<u8> {
    let total: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
    if total > 1 << 30 {
        bail!("{total} values requested; refusing to draw more than 2^30");
    }
    let draws = randn_sequence(seed, shapes);
    let bytes: Vec<Vec<u8>> = draws
        .iter()
        .map(|d| d.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let mut views = Vec::with_capacity(shapes.len());
    for (i, (shape, data)) in shapes.iter().zip(&bytes).enumerate() {
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                .context("building tensor")?;
        views.push((format!("draw{i}"), view));
    }
    let metadata = HashMap::from([
        ("seed".to_string(), seed.to_string()),
        (
            "shapes".to_string(),
            serde_json::to_string(shapes).context("encoding shapes")?,
        ),
    ]);
    let encoded = safetensors::serialize(views, Some(metadata)).context("encoding safetensors")?;
    write_atomic(output, |w| Ok(w.write_all(&encoded)?))?;
    println!(
        "wrote {} draw(s), {total} values, seed {seed} → {}",
        shapes.len(),
        output.display()
    );
    Ok(super::exit::OK)
}

fn forward(ckpt: &Path, inputs: &Path, guide: Option<&Path>, output: &Path) -> Result<u8> {
    let device = candle_core::Device::Cpu;
    let source = ModelSource::open(ckpt)?;
    let input_tensors = read_tensors(inputs, &device)?;
    let mut tensors = input_tensors.clone();
    let mut from = inputs.display().to_string();
    if let Some(g) = guide {
        // The guide only adds what the inputs lack: a golden shape-decoder io file used as the
        // guide also holds its own `latent.*`, which must not replace the texture latent.
        for (name, t) in read_tensors(g, &device)? {
            tensors.entry(name).or_insert(t);
        }
        from = format!("{from} + {}", g.display());
    }
    let start = std::time::Instant::now();
    let model_inputs = Inputs::new(&from, &tensors);
    let outputs = runner::forward(&source, &model_inputs, &device)?;
    let elapsed = start.elapsed();
    // Like the golden io files, the output holds the inputs the model read (from --inputs, not
    // --guide) beside its outputs, so `trellis2 compare OUT GOLDEN_IO` checks a whole file.
    let mut all: Vec<(String, candle_core::Tensor)> = model_inputs
        .read_names()
        .into_iter()
        .filter(|n| !outputs.iter().any(|(o, _)| o == n))
        .filter_map(|n| input_tensors.get(&n).map(|t| (n.clone(), t.clone())))
        .collect();
    let produced = outputs.len();
    all.extend(outputs);
    let meta = HashMap::from([
        ("class".to_string(), source.class.clone()),
        ("checkpoint".to_string(), ckpt.display().to_string()),
    ]);
    write_tensors(output, &all, Some(meta))?;
    println!(
        "{} ({}): {} output tensor(s) in {:.3} s → {}",
        ckpt.display(),
        source.class,
        produced,
        elapsed.as_secs_f64(),
        output.display()
    );
    Ok(super::exit::OK)
}
