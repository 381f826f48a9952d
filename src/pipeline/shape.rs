//! Shape stage (docs/MODEL.md §1.4 step 4, §1.4.1): the shape flow on the structure's coordinates,
//! directly (`512`, `1024`) or as the cascade — low-resolution flow, decoder upsampling,
//! quantisation to the high-resolution grid under the token budget, high-resolution flow.

use anyhow::Result;
use candle_core::Tensor;

use super::cascade::high_res_structure;
use super::config::PipelineType;
use super::context::Ctx;
use super::flow_model::{sparse_layout, FlowTokens};
use super::models::role;
use crate::models::sc_vae::CASCADE_UPSAMPLE_TIMES;
use crate::sparse::SparseTensor;

/// The shape latent: de-normalised features on their coordinates, and the decode resolution.
pub(crate) struct ShapeLatent {
    pub coords: Tensor,
    pub feats: Tensor,
    pub resolution: usize,
}

impl ShapeLatent {
    /// The same latent with its tensors on `device`.
    pub fn on(&self, device: &candle_core::Device) -> Result<Self> {
        Ok(Self {
            coords: self.coords.to_device(device)?,
            feats: self.feats.to_device(device)?,
            resolution: self.resolution,
        })
    }
}

/// The direct shape flow (`512`, `1024`) on the structure's coordinates.
pub(crate) fn sample_shape_direct(
    ctx: &mut Ctx,
    ptype: PipelineType,
    cond: &Tensor,
    coords: &Tensor,
) -> Result<ShapeLatent> {
    let (flow_role, res) = if ptype == PipelineType::P512 {
        (role::SHAPE_FLOW_512, 512)
    } else {
        (role::SHAPE_FLOW_1024, 1024)
    };
    let x = shape_flow(ctx, "shape", flow_role, cond, coords)?;
    let feats = ctx.settings.shape_norm.denormalize(&x)?;
    ctx.latents.insert("shape_slat_denorm.feats", feats.clone());
    Ok(ShapeLatent {
        coords: coords.clone(),
        feats,
        resolution: res,
    })
}

/// The cascade's low-resolution shape flow: the de-normalised 512 latent on the structure's
/// coordinates.
pub(crate) fn sample_cascade_lr(ctx: &mut Ctx, c512: &Tensor, coords: &Tensor) -> Result<Tensor> {
    let lr = shape_flow(ctx, "shape_lr", role::SHAPE_FLOW_512, c512, coords)?;
    let lr = ctx.settings.shape_norm.denormalize(&lr)?;
    ctx.latents
        .insert("cascade.lr_slat_denorm.feats", lr.clone());
    Ok(lr)
}

/// The cascade's high-resolution shape flow on the quantised coordinates `(res, coords)`.
pub(crate) fn sample_cascade_hr(
    ctx: &mut Ctx,
    c1024: &Tensor,
    (res, coords): (usize, Tensor),
) -> Result<ShapeLatent> {
    let x = shape_flow(ctx, "shape_hr", role::SHAPE_FLOW_1024, c1024, &coords)?;
    let feats = ctx.settings.shape_norm.denormalize(&x)?;
    ctx.latents.insert("shape_slat_denorm.feats", feats.clone());
    Ok(ShapeLatent {
        coords,
        feats,
        resolution: res,
    })
}

/// One shape flow run (`<prefix>.noise`, `<prefix>.x_t.<i>`, `<prefix>.coords`); returns the
/// normalised latent.
fn shape_flow(
    ctx: &mut Ctx,
    prefix: &str,
    flow_role: &'static str,
    cond: &Tensor,
    coords: &Tensor,
) -> Result<Tensor> {
    let params = ctx.settings.shape;
    let mut stage = ctx.begin(prefix, params.model_calls());
    let flow = ctx.flow(flow_role)?;
    let n = coords.dim(0)?;
    let noise = ctx.noise.draw(
        &format!("{prefix}.noise"),
        &[n, flow.config().in_channels],
        ctx.device,
    )?;
    ctx.latents.insert(format!("{prefix}.noise"), noise.clone());
    ctx.latents
        .insert(format!("{prefix}.coords"), coords.clone());
    let layout = sparse_layout(coords, 1)?;
    let tokens = FlowTokens::Sparse {
        coords,
        concat_cond: None,
    };
    stage.tokens = Some(n);
    let x = ctx.sample(
        &mut stage, prefix, &flow, cond, tokens, &layout, &noise, &params,
    )?;
    drop(flow);
    ctx.release(flow_role);
    ctx.end(stage);
    Ok(x)
}

/// `shape_decoder.upsample(lr, 4)` then the quantisation / token-budget loop: the cascade's
/// high-resolution grid and coordinates.
pub(crate) fn cascade_coords(
    ctx: &mut Ctx,
    lr_coords: &Tensor,
    lr_feats: &Tensor,
    target: usize,
    max_tokens: usize,
) -> Result<(usize, Tensor)> {
    let mut stage = ctx.begin("cascade", 1);
    let (up, batches) = {
        let decoder = ctx.shape_decoder()?;
        let latent = SparseTensor::new(lr_coords, lr_feats.clone())?;
        let up = match ctx.forcing {
            Some(f) => {
                let subs = f.subdivisions(&latent, CASCADE_UPSAMPLE_TIMES)?;
                decoder
                    .net
                    .upsample_forced(&latent, CASCADE_UPSAMPLE_TIMES, &subs)?
            }
            None => decoder.net.upsample(&latent, CASCADE_UPSAMPLE_TIMES)?,
        };
        (up, latent.coord_set().batch_end())
    };
    ctx.release(role::SHAPE_DECODER);
    ctx.latents.insert("cascade.upsample4.coords", up.clone());
    let (res, mut hr, voxels) = high_res_structure(&up, batches, target, max_tokens, ctx.device)?;
    if let Some(f) = ctx.forcing {
        // The quantisation ran; its coordinates are replaced by the baseline's count.
        hr = f.structure(res / 16, ctx.device)?;
    }
    let n = hr.dim(0)?;
    stage.voxels = Some(voxels);
    stage.tokens = Some(n);
    ctx.progress.step("cascade", 1);
    ctx.end(stage);
    Ok((res, hr))
}
