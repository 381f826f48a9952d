//! `metal_fwd` of varlen attention (src/ops/attention/mod.rs), on the plan of
//! `dispatch::attention_plan` (`TRELLIS2_METAL_ATTENTION`): candle-metal-kernels' fused steel
//! attention (the kernel of candle's `sdpa`, MLX's) for an equal-length batch, read through
//! strides from the packed `[tokens, heads, D]` rows and written straight into the output; else
//! kernels/metal/attention.metal over its query-tile table. Either is one dispatch of every
//! query tile × head unless the call alone exceeds the command-buffer budget.

use crate::ops::metal::budget::COMMAND_BUFFER_SECONDS;
use crate::ops::metal::dispatch::{
    attention_offsets_aligned, attention_plan, sdpa_bk, AttentionPlan, Dispatch, SdpaHeads,
    SdpaShape, SDPA_BQ,
};
use crate::ops::metal::encode::{encode, encode_args_last, Arg};
use crate::ops::metal::kargs::SdpaParams;
use crate::ops::metal::pipelines::{pipeline, Source};
use crate::ops::tuning::Tuning;
use candle_core::backend::BackendStorage;
use candle_core::{bail, Layout, MetalError, MetalStorage, Result, Shape};
use candle_metal_kernels::metal::{Buffer, ConstantValues, Value};

/// Sequence description of one call, as the kernel reads it.
pub(crate) struct Offsets<'a> {
    pub q: &'a [usize],
    pub kv: &'a [usize],
    pub scale: f32,
}

fn start(l: &Layout, what: &str, elem: usize) -> Result<usize> {
    match l.contiguous_offsets() {
        Some((a, _)) => Ok(a * elem),
        None => bail!("varlen_attention (metal): {what} must be contiguous"),
    }
}

fn as_u32(v: &[usize]) -> Result<Vec<u32>> {
    v.iter()
        .map(|&x| {
            u32::try_from(x).map_err(|_| candle_core::Error::Msg(format!("offset {x} > u32")))
        })
        .collect()
}

/// q `[Nq,H,D]`, k/v `[Nk,H,D]`, one dtype (f32/f16/bf16) → `[Nq,H,D]`; D as the plan's kernel
/// takes (sdpa: 32–256, ours: 64 or 128).
pub(crate) fn forward(
    q: (&MetalStorage, &Layout),
    k: (&MetalStorage, &Layout),
    v: (&MetalStorage, &Layout),
    offsets: &Offsets<'_>,
) -> Result<(MetalStorage, Shape)> {
    let dtype = q.0.dtype();
    if k.0.dtype() != dtype || v.0.dtype() != dtype {
        bail!(
            "varlen_attention (metal): q {dtype:?}, k {:?}, v {:?} must share a dtype",
            k.0.dtype(),
            v.0.dtype()
        );
    }
    let elem = dtype.size_in_bytes();
    let (nq, heads, d) = q.1.shape().dims3()?;
    let (q0, k0, v0) = (
        start(q.1, "q", elem)?,
        start(k.1, "k", elem)?,
        start(v.1, "v", elem)?,
    );
    let plan = attention_plan(
        Tuning::current().metal_attention,
        offsets.q,
        offsets.kv,
        heads,
        d,
        dtype,
        offsets.scale,
        COMMAND_BUFFER_SECONDS,
    )?;
    let device = q.0.device();
    let count = nq * heads * d;
    let out = device
        .new_buffer_builder()
        .with_size_for(count.max(1), dtype)
        .with_label("varlen_attention")
        .build()?;
    let operands = [(q.0.buffer(), q0), (k.0.buffer(), k0), (v.0.buffer(), v0)];
    match plan {
        AttentionPlan::Sdpa(shape, dispatches) => sdpa(
            device,
            operands,
            &out,
            shape,
            [heads, d, elem],
            offsets.scale,
            &dispatches,
        )?,
        AttentionPlan::Varlen(tiles, dispatches) => {
            attention_offsets_aligned(&[q0, k0, v0], elem)?;
            if let Some(first) = dispatches.first() {
                let pipeline = pipeline(device, Source::Attention, &first.kernel)?;
                // Uploads, not read-backs: nothing here waits for the GPU. All buffers exist
                // before the first encoder is taken.
                let q_off = device.new_buffer_with_data(&as_u32(offsets.q)?)?;
                let kv_off = device.new_buffer_with_data(&as_u32(offsets.kv)?)?;
                let tile_table = device.new_buffer_with_data(&tiles)?;
                for p in &dispatches {
                    encode(
                        device,
                        &pipeline,
                        "varlen_attention",
                        p,
                        &[
                            Arg::Read(q.0.buffer(), q0),
                            Arg::Read(k.0.buffer(), k0),
                            Arg::Read(v.0.buffer(), v0),
                            Arg::Read(&q_off, 0),
                            Arg::Read(&kv_off, 0),
                            Arg::Read(&tile_table, 0),
                            Arg::Write(&out),
                        ],
                    )?;
                }
            }
        }
    }
    Ok((
        MetalStorage::new(out, device.clone(), count, dtype),
        Shape::from_dims(&[nq, heads, d]),
    ))
}

/// The steel attention dispatches of `plan`: each head range reads q/k/v and writes the output
/// at that range's offset, with the strides of `[tokens, heads, d]` rows.
#[allow(clippy::too_many_arguments)]
fn sdpa(
    device: &candle_core::MetalDevice,
    [(q, q0), (k, k0), (v, v0)]: [(&Buffer, usize); 3],
    out: &Buffer,
    shape: SdpaShape,
    [heads, d, elem]: [usize; 3],
    scale: f32,
    plan: &[Dispatch<SdpaHeads>],
) -> Result<()> {
    let Some(first) = plan.first() else {
        return Ok(());
    };
    let bk = sdpa_bk(d);
    // The kernel's function constants: whole query / key tiles, no mask, not causal.
    let constants = ConstantValues::new(vec![
        (200, Value::Bool(shape.q_len.is_multiple_of(SDPA_BQ))),
        (201, Value::Bool(shape.kv_len.is_multiple_of(bk))),
        (300, Value::Bool(false)),
        (301, Value::Bool(false)),
    ]);
    let pipeline = device
        .kernels()
        .load_pipeline_with_constants(
            device.device(),
            candle_metal_kernels::source::Source::Sdpa,
            first.kernel.clone(),
            Some(constants),
        )
        .map_err(MetalError::from)?;
    for p in plan {
        let params = SdpaParams::packed(
            shape.batch,
            p.args.count,
            heads,
            d,
            shape.q_len,
            shape.kv_len,
            SDPA_BQ,
            bk,
            scale,
        );
        let at = p.args.first * d * elem;
        encode_args_last(
            device,
            &pipeline,
            "sdpa",
            p,
            &params,
            &[
                Arg::Read(q, q0 + at),
                Arg::Read(k, k0 + at),
                Arg::Read(v, v0 + at),
                Arg::WriteAt(out, at),
            ],
        )?;
    }
    Ok(())
}
