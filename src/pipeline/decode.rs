//! Decoding (docs/MODEL.md §1.6): shape decoder (+ subdivision guides) → texture decoder guided by
//! those subdivisions → PBR voxels `·0.5 + 0.5`. The voxels' copy to the host is only started here;
//! their conversion to host arrays and the surface (dual-grid mesh, then hole filling) come later
//! ([`super::output::Generated::extract_mesh`]), so that a batch's device thread does not wait
//! for them.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;

use super::context::Ctx;
use super::models::role;
use super::output::{DecodedVoxels, PBR_CHANNELS};
use crate::sparse::SparseTensor;

pub(crate) fn decode(
    ctx: &mut Ctx,
    coords: &Tensor,
    shape_feats: &Tensor,
    tex_feats: &Tensor,
    resolution: usize,
) -> Result<DecodedVoxels> {
    let mut stage = ctx.begin("decode", 2);
    let shape_latent = SparseTensor::new(coords, shape_feats.clone()).context("shape latent")?;
    let tex_latent = SparseTensor::new(coords, tex_feats.clone()).context("texture latent")?;

    let (raw, subs, start) = {
        let decoder = ctx.shape_decoder()?;
        // Parts are timed after their model is held: loads are reported apart.
        let start = Instant::now();
        let out = match ctx.forcing {
            Some(f) => {
                let levels = decoder.net.config().up_blocks();
                let subs = f.subdivisions(&shape_latent, levels)?;
                decoder.net.forward_forced(&shape_latent, &subs)?
            }
            None => decoder.net.forward(&shape_latent, None)?,
        };
        (out.raw, out.subs, start)
    };
    ctx.release(role::SHAPE_DECODER);
    ctx.latents
        .insert("shape_dec.raw_feats", raw.feats().clone());
    ctx.latents.insert("shape_dec.coords", raw.coords().clone());
    for (i, s) in subs.iter().enumerate() {
        ctx.latents
            .insert(format!("subs.{i}.feats"), s.feats().clone());
        ctx.latents
            .insert(format!("subs.{i}.coords"), s.coords().clone());
    }
    // The part ends when the device has finished it (GPU work is asynchronous).
    ctx.device.synchronize()?;
    stage.parts.insert("shape_decoder".into(), secs(start));
    ctx.progress.step("decode", 1);

    let (tex, start) = {
        let decoder = ctx.tex_decoder()?;
        let start = Instant::now();
        let tex = decoder.forward(&tex_latent, Some(&subs))?.raw;
        (tex, start)
    };
    ctx.release(role::TEX_DECODER);
    // Compared where the rows live (a kernel on a CUDA device), not downloaded.
    if !tex.coord_set().same_rows(raw.coord_set())? {
        bail!(
            "texture decoder voxels differ from the shape decoder's; the guides were not followed"
        );
    }
    if tex.channels() != PBR_CHANNELS {
        bail!(
            "texture decoder gives {} channels, expected {PBR_CHANNELS}",
            tex.channels()
        );
    }
    let attrs = ((tex.feats() * 0.5)? + 0.5)?;
    ctx.latents.insert("tex_voxels.feats", attrs.clone());
    // The copies are only queued: they run on the device's copy engine while the next
    // picture's kernels start, and the conversion to host arrays (dtype casts, per-voxel rows)
    // runs with the mesh extraction, off the thread that drives the device
    // (`Generated::extract_mesh`), which waits for them.
    let voxels = DecodedVoxels::start(raw.coords(), raw.feats(), &attrs, resolution as u32)?;
    stage.parts.insert("tex_decoder".into(), secs(start));

    stage.voxels = Some(raw.coords().dim(0)?);
    stage.tokens = Some(coords.dim(0)?);
    ctx.progress.step("decode", 2);
    ctx.end(stage);
    Ok(voxels)
}

fn secs(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}
