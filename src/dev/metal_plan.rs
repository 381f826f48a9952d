//! `trellis2 dev metal-plan`: the Metal dispatches and command buffers of one op, or of a whole
//! flow-transformer forward, as a Mac would encode them (docs/METAL.md, "Watchdog and
//! dispatch"). Our kernels' dispatches come from the real plan functions
//! (`ops::metal::{dispatch, norms_plan, elementwise_plan}`); candle's own operations (matmuls,
//! casts, copies, adds) are listed as the dispatches candle encodes for them, with estimated
//! costs; the command-buffer boundaries come from `budget::CommandStream`, the model of candle's
//! command stream with the host's budget. Backend-free: runs anywhere.

use anyhow::{bail, Result};
use candle_core::DType;
use serde::Serialize;

use crate::models::dit::DitConfig;
use crate::ops::metal::budget::{
    candle_encoders_per_buffer, matmul_work, seconds, CommandStream, Work, BASE_M1,
    COMMAND_BUFFER_SECONDS,
};
use crate::ops::metal::dispatch::{
    attention_plan as plan_attention, conv_vec_loads, shell_live_taps, sparse_conv_dispatches,
    AttentionPlan, ConvRows, Dispatch,
};
#[cfg(doc)]
use crate::ops::metal::dispatch::{SHELL_LIVE_TAPS, SORTED_SHELL_LIVE_TAPS};
use crate::ops::metal::elementwise_plan::{bias_act_dispatch, gated_residual_dispatch};
use crate::ops::metal::norms_plan::{norm_modulate_dispatch, rms_rope_dispatch};
use crate::ops::tuning::Tuning;
use crate::ops::vocab::Activation;
use crate::sparse::conv_order::gpu_sort_window;

/// One dispatch of a plan: the JSON line `trellis2 dev metal-plan` prints.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlannedDispatch {
    /// The op call it belongs to (`blocks.3.self_attn.attention`).
    pub op: String,
    /// Our kernel's name, or `candle:<kernel>` for candle's own operations.
    pub kernel: String,
    pub threadgroups: [u32; 3],
    pub threads: [u32; 3],
    pub threadgroup_memory: usize,
    /// Index of the command buffer it lands in.
    pub command_buffer: usize,
    /// Estimated GPU seconds on the base M1.
    pub seconds: f64,
    /// Whether the host's command-buffer budget accounts it (our kernels and linear layers'
    /// matmuls); candle's other operations are not seen by it.
    pub budgeted: bool,
}

/// The closing JSON line.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub summary: bool,
    pub dispatches: usize,
    pub command_buffers: usize,
    /// Reads that wait for the GPU.
    pub host_syncs: usize,
    /// Estimated GPU seconds of the whole plan on the base M1.
    pub seconds: f64,
    /// The longest command buffer's estimate.
    pub max_command_buffer_seconds: f64,
    /// The budget's limit per command buffer.
    pub command_buffer_limit_seconds: f64,
    /// The GPU the estimates are made for.
    pub gpu: &'static str,
}

/// A plan: its dispatches in encoding order and its summary.
#[derive(Clone, Debug)]
pub struct Plan {
    pub dispatches: Vec<PlannedDispatch>,
    pub summary: Summary,
}

impl Plan {
    /// One JSON object per dispatch, then the summary.
    pub fn json_lines(&self) -> Result<Vec<String>> {
        let mut lines = self
            .dispatches
            .iter()
            .map(serde_json::to_string)
            .collect::<serde_json::Result<Vec<_>>>()?;
        lines.push(serde_json::to_string(&self.summary)?);
        Ok(lines)
    }

    /// The number of dispatches of each op call, in order of first appearance.
    pub fn dispatches_per_op(&self) -> Vec<(&str, usize)> {
        let mut out: Vec<(&str, usize)> = Vec::new();
        for d in &self.dispatches {
            match out.iter_mut().find(|(op, _)| *op == d.op) {
                Some((_, n)) => *n += 1,
                None => out.push((&d.op, 1)),
            }
        }
        out
    }
}

/// Builds a plan: dispatches in encoding order through the command-stream model.
struct Planner {
    stream: CommandStream,
    dispatches: Vec<PlannedDispatch>,
}

/// Threads per threadgroup of candle's elementwise kernels (its linear split takes the
/// pipeline's maximum, 1,024 on Apple GPUs).
const CANDLE_THREADS: usize = 1024;

impl Planner {
    fn new() -> Self {
        Self {
            stream: CommandStream::new(candle_encoders_per_buffer(), COMMAND_BUFFER_SECONDS),
            dispatches: Vec::new(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        op: &str,
        kernel: String,
        threadgroups: [u32; 3],
        threads: [u32; 3],
        threadgroup_memory: usize,
        work: Work,
        budgeted: bool,
    ) {
        let seconds = seconds(work);
        let command_buffer = self.stream.dispatch(seconds, budgeted);
        let seconds = micro(seconds);
        self.dispatches.push(PlannedDispatch {
            op: op.to_string(),
            kernel,
            threadgroups,
            threads,
            threadgroup_memory,
            command_buffer,
            seconds,
            budgeted,
        });
    }

    /// Our kernel's planned dispatches (every one goes through the budget).
    fn ours<A>(&mut self, op: &str, plan: impl IntoIterator<Item = Dispatch<A>>) {
        for d in plan {
            self.push(
                op,
                d.kernel,
                d.threadgroups,
                d.threads,
                d.threadgroup_memory,
                d.work,
                true,
            );
        }
    }

    /// One attention call as the Metal host plans it (`TRELLIS2_METAL_ATTENTION`): the steel
    /// attention of candle-metal-kernels, which the host encodes itself and budgets, or ours.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &mut self,
        op: &str,
        q: usize,
        kv: usize,
        heads: usize,
        head_dim: usize,
        dtype: DType,
    ) -> Result<()> {
        let scale = 1.0 / (head_dim as f32).sqrt();
        let plan = plan_attention(
            Tuning::current().metal_attention,
            &[0, q],
            &[0, kv],
            heads,
            head_dim,
            dtype,
            scale,
            COMMAND_BUFFER_SECONDS,
        )?;
        match plan {
            AttentionPlan::Sdpa(_, dispatches) => {
                for d in dispatches {
                    self.push(
                        op,
                        format!("candle:{}", d.kernel),
                        d.threadgroups,
                        d.threads,
                        d.threadgroup_memory,
                        d.work,
                        true,
                    );
                }
            }
            AttentionPlan::Varlen(_, dispatches) => self.ours(op, dispatches),
        }
        Ok(())
    }

    /// candle's matmul `[m, k] · [k, n]ᵀ` of a linear layer: MLX's GEMM with the tile a base or
    /// Pro Apple GPU gets for an `nt` product (64 × 32, 2 × 2 simdgroups; 32 × 32 below 16
    /// rows), one dispatch; the linear layer accounts it in the budget.
    fn matmul(&mut self, op: &str, m: usize, k: usize, n: usize, dtype: DType) -> Result<()> {
        let t = tag(dtype);
        let (bm, bn, name) = if m < 16 {
            (32, 32, format!("candle:gemm_nt_{t}_{t}_32_32_16_2_2"))
        } else {
            (64, 32, format!("candle:gemm_nt_{t}_{t}_64_32_32_2_2"))
        };
        let grid = [u32_of(n.div_ceil(bn))?, u32_of(m.div_ceil(bm))?, 1];
        let work = matmul_work(m, k, n, dtype.size_in_bytes());
        self.push(op, name, grid, [32, 2, 2], 0, work, true);
        Ok(())
    }

    /// candle's elementwise `kernel` over `elements` elements of `dtype`, moving
    /// `passes × elements` values: a linear split of 1,024 threads, each on 8 bytes.
    fn elementwise(
        &mut self,
        op: &str,
        kernel: String,
        elements: usize,
        passes: usize,
        dtype: DType,
    ) -> Result<()> {
        let elem = dtype.size_in_bytes();
        let units = elements.div_ceil((8 / elem).max(1)).max(1);
        let width = units.min(CANDLE_THREADS);
        let work = Work::bytes((passes * elements * elem) as f64);
        self.push(
            op,
            format!("candle:{kernel}"),
            [u32_of(units.div_ceil(width))?, 1, 1],
            [u32_of(width)?, 1, 1],
            0,
            work,
            false,
        );
        Ok(())
    }

    fn finish(self, host_syncs: usize) -> Plan {
        let buffers = self.stream.buffer_seconds();
        let summary = Summary {
            summary: true,
            dispatches: self.dispatches.len(),
            command_buffers: self.stream.command_buffers(),
            host_syncs,
            seconds: micro(buffers.iter().sum()),
            max_command_buffer_seconds: micro(buffers.iter().copied().fold(0.0, f64::max)),
            command_buffer_limit_seconds: COMMAND_BUFFER_SECONDS,
            gpu: BASE_M1.name,
        };
        Plan {
            dispatches: self.dispatches,
            summary,
        }
    }
}

fn tag(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "f32",
    }
}

/// Seconds to the microsecond, for printing.
fn micro(seconds: f64) -> f64 {
    (seconds * 1e6).round() / 1e6
}

fn u32_of(v: usize) -> Result<u32> {
    Ok(u32::try_from(v)?)
}

/// The dtypes the Metal kernels take, from the CLI's spelling.
pub fn parse_dtype(s: &str) -> Result<DType, String> {
    match s {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        _ => Err(format!("`{s}` is not f32, f16 or bf16")),
    }
}

/// A head dim the Metal attention kernel takes (64 or 128), from the CLI's spelling.
pub fn parse_head_dim(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(d @ (64 | 128)) => Ok(d),
        _ => Err(format!(
            "`{s}` is not 64 or 128 (the head dims of the Metal kernel)"
        )),
    }
}

/// One varlen attention call: `q` query rows attending to `kv` key rows (one sequence each).
pub fn attention_plan(
    q: usize,
    kv: usize,
    heads: usize,
    head_dim: usize,
    dtype: DType,
) -> Result<Plan> {
    let mut p = Planner::new();
    p.attention("attention", q, kv, heads, head_dim, dtype)?;
    Ok(p.finish(0))
}

/// One submanifold conv layer on Metal: the conv kernel, which adds the bias in its epilogue,
/// planned as the host plans it: in the voxel order where `TRELLIS2_CONV_SORT` sorts a set this
/// large (with [`SORTED_SHELL_LIVE_TAPS`] live taps per tile), else in the voxels' own order
/// ([`SHELL_LIVE_TAPS`]); operands start at offset 0, so vector loads wherever Ci allows them.
/// (Building the order, a few small candle ops, is not in the plan.)
pub fn sparse_conv_plan(voxels: usize, ci: usize, co: usize, dtype: DType) -> Result<Plan> {
    let mut p = Planner::new();
    let row_bytes = ci * dtype.size_in_bytes();
    let rows = ConvRows {
        vec_loads: conv_vec_loads(ci, &[0, 0]),
        ordered: gpu_sort_window(voxels, row_bytes, Tuning::current().conv_sort).is_some(),
    };
    let plan = sparse_conv_dispatches(
        voxels,
        ci,
        co,
        dtype,
        shell_live_taps(rows.ordered),
        COMMAND_BUFFER_SECONDS,
        rows,
    )?;
    p.ours("sparse_conv", plan);
    Ok(p.finish(0))
}

/// The released 1.3 B flow transformer of the 1024 pipeline (`slat_flow_img2shape_dit_1_3B_512_
/// bf16_ft1024`; the texture flow differs only in its 64 input channels): 30 blocks of 1,536
/// channels, 12 heads of 128, MLP 8,192, image tokens of 1,024 channels, q/k RMS norms.
pub fn release_flow_config() -> DitConfig {
    DitConfig {
        resolution: 64,
        in_channels: 32,
        out_channels: 32,
        model_channels: 1536,
        cond_channels: 1024,
        num_blocks: 30,
        num_heads: Some(12),
        num_head_channels: 64,
        mlp_ratio: 5.3334,
        pe_mode: "rope".into(),
        share_mod: true,
        qk_rms_norm: true,
        qk_rms_norm_cross: true,
        rope_freq: None,
    }
}

/// One forward of the flow transformer `cfg` (src/models/dit.rs, `FlowDit::forward` on sparse
/// tokens, one sample, activations in `dtype`) over `tokens` tokens attending to `cond` image
/// tokens (0: the zero condition of guidance's negative branch), the sampler's f32 state in
/// and out. Every op of every block in the order the forward encodes it. The token layout is
/// built before sampling (`FlowDit::prepare_sparse_layout`), so the forward itself reads
/// nothing back.
pub fn flow_forward_plan(
    cfg: &DitConfig,
    tokens: usize,
    cond: usize,
    dtype: DType,
) -> Result<Plan> {
    if tokens == 0 {
        bail!("a forward needs at least one token");
    }
    let (n, c) = (tokens, cfg.model_channels);
    let (heads, d, hidden) = (cfg.heads(), cfg.head_dim(), cfg.mlp_hidden());
    let f32_ = DType::F32;
    let t = tag(dtype);
    let mut p = Planner::new();
    let vec4 = |channels: usize| channels.is_multiple_of(4);

    // Input tokens (the sampler's f32 state) in the model's dtype, the input layer.
    p.elementwise(
        "tokens.cast",
        format!("cast_f32_{t}"),
        n * cfg.in_channels,
        2,
        dtype,
    )?;
    p.matmul("input_layer", n, cfg.in_channels, c, dtype)?;
    p.ours(
        "input_layer.bias",
        bias_act_dispatch(n, c, Activation::None, dtype, vec4(c))?,
    );
    // Timestep embedding and the shared adaLN projection: one row each.
    p.elementwise("t_embedder.fill", "fill_f32".into(), 1, 1, f32_)?;
    p.elementwise("t_embedder.freqs", "bmul_f32".into(), 128, 3, f32_)?;
    p.elementwise("t_embedder.cos", "ucos_f32".into(), 128, 2, f32_)?;
    p.elementwise("t_embedder.sin", "usin_f32".into(), 128, 2, f32_)?;
    p.elementwise("t_embedder.cat", "copy2d_f32".into(), 256, 2, f32_)?;
    p.elementwise("t_embedder.cast", format!("cast_f32_{t}"), 256, 2, dtype)?;
    p.matmul("t_embedder.mlp.0", 1, 256, c, dtype)?;
    p.ours(
        "t_embedder.mlp.0.bias",
        bias_act_dispatch(1, c, Activation::None, dtype, vec4(c))?,
    );
    p.elementwise("t_embedder.silu", format!("usilu_{t}"), c, 2, dtype)?;
    p.matmul("t_embedder.mlp.2", 1, c, c, dtype)?;
    p.ours(
        "t_embedder.mlp.2.bias",
        bias_act_dispatch(1, c, Activation::None, dtype, vec4(c))?,
    );
    p.elementwise("adaLN_modulation.silu", format!("usilu_{t}"), c, 2, dtype)?;
    p.matmul("adaLN_modulation", 1, c, 6 * c, dtype)?;
    p.ours(
        "adaLN_modulation.bias",
        bias_act_dispatch(1, 6 * c, Activation::None, dtype, vec4(6 * c))?,
    );

    for i in 0..cfg.num_blocks {
        let op = |m: &str| format!("blocks.{i}.{m}");
        // The block's modulation: [1, 6C] added in the model's dtype, then f32.
        p.elementwise(&op("modulation.add"), format!("badd_{t}"), 6 * c, 3, dtype)?;
        p.elementwise(
            &op("modulation.cast"),
            format!("cast_{t}_f32"),
            6 * c,
            2,
            f32_,
        )?;
        // Self-attention.
        p.ours(&op("norm1"), norm_modulate_dispatch(n, c, 1, 1e-6, dtype)?);
        p.matmul(&op("self_attn.to_qkv"), n, c, 3 * c, dtype)?;
        p.ours(
            &op("self_attn.to_qkv.bias"),
            bias_act_dispatch(n, 3 * c, Activation::None, dtype, vec4(3 * c))?,
        );
        for (which, name) in [
            ("q", "self_attn.q_rms_norm_rope"),
            ("k", "self_attn.k_rms_norm_rope"),
        ] {
            // q and k are strided views of the fused projection: copied contiguous first.
            p.elementwise(
                &op(&format!("self_attn.{which}.copy")),
                format!("copy2d_{t}"),
                n * c,
                2,
                dtype,
            )?;
            p.ours(&op(name), rms_rope_dispatch(n, heads, d, true, n, dtype)?);
        }
        p.elementwise(
            &op("self_attn.v.copy"),
            format!("copy2d_{t}"),
            n * c,
            2,
            dtype,
        )?;
        p.attention(&op("self_attn.attention"), n, n, heads, d, dtype)?;
        p.matmul(&op("self_attn.to_out"), n, c, c, dtype)?;
        p.ours(
            &op("self_attn.to_out.bias"),
            bias_act_dispatch(n, c, Activation::None, dtype, vec4(c))?,
        );
        p.ours(
            &op("self_attn.gate"),
            gated_residual_dispatch(n, c, 1, dtype, vec4(c))?,
        );
        // Cross-attention (keys and values computed once per sampling run, outside).
        p.ours(&op("norm2"), norm_modulate_dispatch(n, c, 1, 1e-6, dtype)?);
        if cond > 0 {
            p.matmul(&op("cross_attn.to_q"), n, c, c, dtype)?;
            p.ours(
                &op("cross_attn.to_q.bias"),
                bias_act_dispatch(n, c, Activation::None, dtype, vec4(c))?,
            );
            p.ours(
                &op("cross_attn.q_rms_norm"),
                rms_rope_dispatch(n, heads, d, true, 1, dtype)?,
            );
            p.attention(&op("cross_attn.attention"), n, cond, heads, d, dtype)?;
            p.matmul(&op("cross_attn.to_out"), n, c, c, dtype)?;
            p.ours(
                &op("cross_attn.to_out.bias"),
                bias_act_dispatch(n, c, Activation::None, dtype, vec4(c))?,
            );
            p.elementwise(
                &op("cross_attn.residual"),
                format!("badd_{t}"),
                n * c,
                3,
                dtype,
            )?;
        } else {
            // The zero condition's exact output, one row for every token, added as a bias.
            p.ours(
                &op("cross_attn.zero_cond"),
                bias_act_dispatch(n, c, Activation::None, dtype, vec4(c))?,
            );
        }
        // MLP.
        p.ours(&op("norm3"), norm_modulate_dispatch(n, c, 1, 1e-6, dtype)?);
        p.matmul(&op("mlp.0"), n, c, hidden, dtype)?;
        p.ours(
            &op("mlp.0.bias_gelu"),
            bias_act_dispatch(n, hidden, Activation::GeluTanh, dtype, vec4(hidden))?,
        );
        p.matmul(&op("mlp.2"), n, hidden, c, dtype)?;
        p.ours(
            &op("mlp.2.bias"),
            bias_act_dispatch(n, c, Activation::None, dtype, vec4(c))?,
        );
        p.ours(
            &op("mlp.gate"),
            gated_residual_dispatch(n, c, 1, dtype, vec4(c))?,
        );
    }

    // Final norm, output layer, the f32 velocity for the sampler.
    p.ours("final_norm", norm_modulate_dispatch(n, c, 1, 1e-5, dtype)?);
    p.matmul("out_layer", n, c, cfg.out_channels, dtype)?;
    p.ours(
        "out_layer.bias",
        bias_act_dispatch(
            n,
            cfg.out_channels,
            Activation::None,
            dtype,
            vec4(cfg.out_channels),
        )?,
    );
    p.elementwise(
        "velocity.cast",
        format!("cast_{t}_f32"),
        n * cfg.out_channels,
        2,
        f32_,
    )?;
    Ok(p.finish(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_targets(plan: &Plan, what: &str) {
        for (op, n) in plan.dispatches_per_op() {
            assert!(n <= 4, "{what}: {op} takes {n} dispatches");
        }
        // Our kernels and the steel attention: ≥ 1,000 threadgroups per dispatch wherever the op
        // has that many.
        let groups =
            |d: &PlannedDispatch| -> u64 { d.threadgroups.iter().map(|&g| g as u64).product() };
        for d in plan.dispatches.iter().filter(|d| {
            !d.kernel.starts_with("candle:") || d.kernel.starts_with("candle:steel_attention")
        }) {
            let op_total: u64 = plan
                .dispatches
                .iter()
                .filter(|o| o.op == d.op)
                .map(groups)
                .sum();
            let g = groups(d);
            assert!(
                g >= op_total.min(1000),
                "{what}: {} has {g} threadgroups",
                d.op
            );
        }
        // The budget bounds what it sees; candle's glue around it stays small.
        let s = &plan.summary;
        assert!(
            s.max_command_buffer_seconds <= 1.1 * COMMAND_BUFFER_SECONDS,
            "{what}: a command buffer of {} s",
            s.max_command_buffer_seconds
        );
        assert!(s.host_syncs <= 1);
        let lines = plan.json_lines().unwrap();
        assert_eq!(lines.len(), plan.dispatches.len() + 1);
    }

    #[test]
    fn attention_plans_meet_the_targets() {
        for (q, kv) in [
            (1029, 1029),
            (4101, 4101),
            (15272, 15272),
            (1029, 4101),
            (15272, 4101),
        ] {
            let plan = attention_plan(q, kv, 12, 128, DType::BF16).unwrap();
            check_targets(&plan, &format!("attention {q}x{kv}"));
        }
        let plan = attention_plan(15272, 15272, 12, 128, DType::BF16).unwrap();
        assert!((2..=4).contains(&plan.dispatches.len()));
        assert_eq!(plan.summary.command_buffers, plan.dispatches.len());
        assert_eq!(
            attention_plan(1029, 1029, 12, 128, DType::BF16)
                .unwrap()
                .dispatches
                .len(),
            1
        );
    }

    /// Both Metal attention paths meet the targets, alone and in the whole forward; `auto` takes
    /// the steel attention for the flows' equal-length calls.
    #[test]
    fn both_attention_paths_meet_the_targets() {
        use crate::ops::tuning::MetalAttention;
        let cfg = release_flow_config();
        for (choice, kernel) in [
            (
                MetalAttention::Auto,
                "candle:steel_attention_bfloat16_bq32_bk16_bd128",
            ),
            (
                MetalAttention::Sdpa,
                "candle:steel_attention_bfloat16_bq32_bk16_bd128",
            ),
            (MetalAttention::Varlen, "attention_bf16_d128"),
        ] {
            let tuning = Tuning {
                metal_attention: choice,
                ..Tuning::current()
            };
            tuning.with(|| {
                for (q, kv) in [(1029, 1029), (15272, 15272), (3712, 1029), (15272, 4101)] {
                    let plan = attention_plan(q, kv, 12, 128, DType::BF16).unwrap();
                    check_targets(&plan, &format!("{choice:?} attention {q}x{kv}"));
                    assert!(
                        plan.dispatches.iter().all(|d| d.kernel.starts_with(kernel)),
                        "{choice:?}: {:?}",
                        plan.dispatches[0].kernel
                    );
                }
                let plan = flow_forward_plan(&cfg, 15272, 4101, DType::BF16).unwrap();
                check_targets(&plan, &format!("{choice:?} flow forward"));
            });
        }
    }

    #[test]
    fn conv_plans_meet_the_targets() {
        for (n, ci, co) in [(20_000, 1024, 1024), (1_200_000, 128, 128)] {
            let plan = sparse_conv_plan(n, ci, co, DType::F16).unwrap();
            check_targets(&plan, &format!("conv {n}x{ci}"));
            // The bias is the conv kernel's epilogue: no pass after it.
            assert!(
                plan.dispatches.iter().all(|d| d.op == "sparse_conv"),
                "conv {n}x{ci}: {:?}",
                plan.dispatches.iter().map(|d| &d.op).collect::<Vec<_>>()
            );
        }
    }

    /// The 1024 pipeline's shape flow at the baseline's 15,272 tokens, both branches.
    #[test]
    fn the_flow_forward_meets_the_targets() {
        let cfg = release_flow_config();
        for cond in [4101, 0] {
            let plan = flow_forward_plan(&cfg, 15272, cond, DType::BF16).unwrap();
            check_targets(&plan, &format!("flow forward, cond {cond}"));
            let attn = plan
                .dispatches
                .iter()
                .filter(|d| d.op.ends_with("self_attn.attention"))
                .count();
            assert!((30..=120).contains(&attn), "{attn}");
            assert_eq!(plan.summary.host_syncs, 0);
        }
        // Every block's ops appear once per block.
        let plan = flow_forward_plan(&cfg, 1029, 4101, DType::BF16).unwrap();
        let blocks = plan
            .dispatches
            .iter()
            .filter(|d| d.op.ends_with(".mlp.gate"))
            .count();
        assert_eq!(blocks, 30);
    }

    /// [`release_flow_config`] is the released checkpoint's (the golden manifest's args).
    #[test]
    fn the_release_config_matches_the_manifest() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/golden/manifests/slat_flow_img2shape_dit_1_3B_512_bf16_ft1024.denoiser.json"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let cfg: DitConfig = serde_json::from_value(json["args"].clone()).unwrap();
        let ours = release_flow_config();
        assert_eq!(cfg.model_channels, ours.model_channels);
        assert_eq!(cfg.cond_channels, ours.cond_channels);
        assert_eq!(cfg.num_blocks, ours.num_blocks);
        assert_eq!(cfg.heads(), ours.heads());
        assert_eq!(cfg.head_dim(), ours.head_dim());
        assert_eq!(cfg.mlp_hidden(), ours.mlp_hidden());
        assert_eq!(
            (cfg.in_channels, cfg.out_channels),
            (ours.in_channels, ours.out_channels)
        );
        assert_eq!((cfg.qk_rms_norm, cfg.qk_rms_norm_cross), (true, true));
    }
}
