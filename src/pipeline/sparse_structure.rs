//! Sparse-structure stage (docs/MODEL.md §1.4 step 3): SS flow on a dense 16³ latent → SS decoder →
//! occupancy (logits > 0) → 2× max-pool for 32³ types → occupied cells as sparse coordinates.

use anyhow::{bail, Result};
use candle_core::Tensor;

use super::context::Ctx;
use super::flow_model::FlowTokens;
use super::models::role;
use super::sampler::LatentLayout;
use super::structure::{max_pool2, occupancy, occupied_cells, occupied_coords};

/// Coordinates `[N, 4]` of the structure on a `resolution`³ grid (32 or 64).
pub(crate) fn sample_structure(
    ctx: &mut Ctx,
    cond_512: &Tensor,
    resolution: usize,
) -> Result<Tensor> {
    let params = ctx.settings.ss;
    let mut stage = ctx.begin("sparse_structure", params.model_calls() + 1);
    let z = {
        let flow = ctx.flow(role::SS_FLOW)?;
        let cfg = flow.config();
        let r = cfg.resolution;
        if r == 0 {
            bail!(
                "{}: `resolution` must be set for the sparse-structure flow",
                role::SS_FLOW
            );
        }
        let noise = ctx
            .noise
            .draw("ss.noise", &[1, cfg.in_channels, r, r, r], ctx.device)?;
        ctx.latents.insert("ss.noise", noise.clone());
        stage.tokens = Some(r * r * r);
        ctx.sample(
            &mut stage,
            "ss",
            &flow,
            cond_512,
            FlowTokens::Dense,
            &LatentLayout::Dense,
            &noise,
            &params,
        )?
    };
    ctx.release(role::SS_FLOW);
    let logits = ctx.ss_decoder()?.forward(&z)?;
    ctx.release(role::SS_DECODER);
    let mut occ = occupancy(&logits)?;
    ctx.latents
        .insert("ss.occupancy_64.coords", occupied_cells(&occ)?);
    let grid = occ.dim(2)?;
    match grid / resolution {
        1 => {}
        2 => occ = max_pool2(&occ)?,
        _ => bail!("the SS decoder makes a {grid}³ grid; cannot reduce it to {resolution}³"),
    }
    let coords = match ctx.forcing {
        // The decoder ran; its occupancy decision is replaced (random weights make noise).
        Some(f) => f.structure(resolution, ctx.device)?,
        None => occupied_coords(&occ)?,
    };
    let n = coords.dim(0)?;
    if n == 0 {
        bail!("the sparse structure is empty: no voxel is occupied (nothing to generate)");
    }
    ctx.latents.insert("ss.coords", coords.clone());
    stage.voxels = Some(n);
    ctx.progress
        .step("sparse_structure", params.model_calls() + 1);
    ctx.end(stage);
    Ok(coords)
}
