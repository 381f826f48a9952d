//! Texture stage (docs/MODEL.md §1.4): the texture flow on the shape latent's coordinates, every call
//! conditioned on the re-normalised shape latent joined after the noise channels.

use anyhow::{bail, Result};
use candle_core::Tensor;

use super::context::Ctx;
use super::flow_model::{sparse_layout, FlowTokens};
use super::models::role;
use super::shape::ShapeLatent;

/// The de-normalised texture latent on the shape latent's coordinates.
pub(crate) fn sample_texture(
    ctx: &mut Ctx,
    shape: &ShapeLatent,
    cond: &Tensor,
    hi_res: bool,
) -> Result<Tensor> {
    let params = ctx.settings.tex;
    let mut stage = ctx.begin("texture", params.model_calls());
    let flow_role = if hi_res {
        role::TEX_FLOW_1024
    } else {
        role::TEX_FLOW_512
    };
    let flow = ctx.flow(flow_role)?;
    let concat = ctx.settings.shape_norm.normalize(&shape.feats)?;
    ctx.latents.insert("tex.concat_cond.feats", concat.clone());
    let (n, concat_c) = concat.dims2()?;
    let in_c = flow.config().in_channels;
    if in_c <= concat_c {
        bail!(
            "{flow_role} takes {in_c} input channels; it must exceed the shape latent's {concat_c}"
        );
    }
    let noise = ctx
        .noise
        .draw("tex.noise", &[n, in_c - concat_c], ctx.device)?;
    ctx.latents.insert("tex.noise", noise.clone());
    let layout = sparse_layout(&shape.coords, 1)?;
    let tokens = FlowTokens::Sparse {
        coords: &shape.coords,
        concat_cond: Some(&concat),
    };
    stage.tokens = Some(n);
    let x = ctx.sample(
        &mut stage, "tex", &flow, cond, tokens, &layout, &noise, &params,
    )?;
    drop(flow);
    ctx.release(flow_role);
    let feats = ctx.settings.tex_norm.denormalize(&x)?;
    ctx.latents.insert("tex_slat_denorm.feats", feats.clone());
    ctx.end(stage);
    Ok(feats)
}
