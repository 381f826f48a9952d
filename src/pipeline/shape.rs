//! Shape stage (docs/MODEL.md §1.4 step 4, §1.4.1): the shape flow on the structure's coordinates,
//! directly (`512`, `1024`) or as the cascade — low-resolution flow, decoder upsampling,
//! quantisation to the high-resolution grid under the token budget, high-resolution flow.

use anyhow::Result;
use candle_core::Tensor;

use super::cascade::high_res_structure;
use super::config::PipelineType;
use super::context::Ctx;
use super::flow_model::{sparse_layout, FlowTokens};
use super::models::{self, role};
use crate::models::sc_vae::CASCADE_UPSAMPLE_TIMES;
use crate::sparse::SparseTensor;

/// The shape latent: de-normalised features on their coordinates, and the decode resolution.
pub(crate) struct ShapeLatent {
    pub coords: Tensor,
    pub feats: Tensor,
    pub resolution: usize,
}

/// Conditions of one run.
pub(crate) struct Conds<'a> {
    pub c512: &'a Tensor,
    pub c1024: Option<&'a Tensor>,
}

impl Conds<'_> {
    fn c1024(&self) -> Result<&Tensor> {
        self.c1024
            .ok_or_else(|| anyhow::anyhow!("this pipeline type needs the 1024 condition"))
    }
}

pub(crate) fn sample_shape(
    ctx: &mut Ctx,
    ptype: PipelineType,
    conds: &Conds,
    coords: &Tensor,
    max_tokens: usize,
) -> Result<ShapeLatent> {
    let norm = ctx.settings.shape_norm.clone();
    match ptype {
        PipelineType::P512 | PipelineType::P1024 => {
            let (flow_role, cond, res) = if ptype == PipelineType::P512 {
                (role::SHAPE_FLOW_512, conds.c512, 512)
            } else {
                (role::SHAPE_FLOW_1024, conds.c1024()?, 1024)
            };
            let x = shape_flow(ctx, "shape", flow_role, cond, coords)?;
            let feats = norm.denormalize(&x)?;
            ctx.latents.insert("shape_slat_denorm.feats", feats.clone());
            Ok(ShapeLatent {
                coords: coords.clone(),
                feats,
                resolution: res,
            })
        }
        PipelineType::Cascade1024 | PipelineType::Cascade1536 => {
            let target = if ptype == PipelineType::Cascade1024 {
                1024
            } else {
                1536
            };
            let lr = shape_flow(ctx, "shape_lr", role::SHAPE_FLOW_512, conds.c512, coords)?;
            let lr = norm.denormalize(&lr)?;
            ctx.latents
                .insert("cascade.lr_slat_denorm.feats", lr.clone());
            let (res, hr_coords) = cascade_coords(ctx, coords, &lr, target, max_tokens)?;
            let x = shape_flow(
                ctx,
                "shape_hr",
                role::SHAPE_FLOW_1024,
                conds.c1024()?,
                &hr_coords,
            )?;
            let feats = norm.denormalize(&x)?;
            ctx.latents.insert("shape_slat_denorm.feats", feats.clone());
            Ok(ShapeLatent {
                coords: hr_coords,
                feats,
                resolution: res,
            })
        }
    }
}

/// One shape flow run (`<prefix>.noise`, `<prefix>.x_t.<i>`, `<prefix>.coords`); returns the
/// normalised latent.
fn shape_flow(
    ctx: &mut Ctx,
    prefix: &str,
    flow_role: &str,
    cond: &Tensor,
    coords: &Tensor,
) -> Result<Tensor> {
    let params = ctx.settings.shape;
    let mut stage = ctx.begin(prefix, params.model_calls());
    let flow = models::flow_model(ctx.dir, flow_role, ctx.device, ctx.load)?;
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
    ctx.end(stage);
    Ok(x)
}

/// `shape_decoder.upsample(lr, 4)` then the quantisation / token-budget loop.
fn cascade_coords(
    ctx: &mut Ctx,
    lr_coords: &Tensor,
    lr_feats: &Tensor,
    target: usize,
    max_tokens: usize,
) -> Result<(usize, Tensor)> {
    let mut stage = ctx.begin("cascade", 1);
    let (up, batches) = {
        let decoder = models::shape_decoder(ctx.dir, ctx.device, ctx.load)?;
        let latent = SparseTensor::new(lr_coords, lr_feats.clone())?;
        let up = decoder.net.upsample(&latent, CASCADE_UPSAMPLE_TIMES)?;
        (up, latent.coord_set().batch_end())
    };
    ctx.latents.insert("cascade.upsample4.coords", up.clone());
    let (res, hr, voxels) = high_res_structure(&up, batches, target, max_tokens, ctx.device)?;
    let n = hr.dim(0)?;
    stage.voxels = Some(voxels);
    stage.tokens = Some(n);
    ctx.progress.step("cascade", 1);
    ctx.end(stage);
    Ok((res, hr))
}
