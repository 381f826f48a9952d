//! Decoding (docs/MODEL.md §1.6), in two steps: the shape decoder (+ subdivision guides) right
//! after the shape stage, then, after the texture stage, the texture decoder guided by those
//! subdivisions → PBR voxels `·0.5 + 0.5`. The shape decoder's voxels leave for the host as soon
//! as it has run, and their surface (dual-grid mesh, then hole filling) is extracted on a thread
//! of its own while the texture stages run; the attributes' copy is only started here, their
//! conversion to host arrays comes later ([`super::output::Generated::extract_mesh`]), so that a
//! batch's device thread waits for neither.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};

use super::context::Ctx;
use super::models::role;
use super::output::{DecodedVoxels, SurfaceTask, PBR_CHANNELS};
use crate::sparse::SparseTensor;

/// What the shape decoder left for the texture decoder: its voxels (the texture decoder must
/// give the same), its subdivision guides, the surface being extracted.
pub(crate) struct ShapeDecoded {
    voxels: SparseTensor,
    subs: Vec<SparseTensor>,
    surface: SurfaceTask,
    resolution: usize,
}

impl ShapeDecoded {
    /// The same on `device` (a stage-major batch parks its pictures in host memory); shared,
    /// not rebuilt, where they are already (a new coordinate set would read its rows back).
    pub(crate) fn on(&self, device: &Device) -> Result<Self> {
        let mv = |s: &SparseTensor| -> Result<SparseTensor> {
            if s.coords().device().same_device(device) {
                return Ok(s.clone());
            }
            let coords = s.coords().to_device(device)?;
            Ok(SparseTensor::new(&coords, s.feats().to_device(device)?)?)
        };
        Ok(Self {
            voxels: mv(&self.voxels)?,
            subs: self.subs.iter().map(mv).collect::<Result<_>>()?,
            surface: self.surface.clone(),
            resolution: self.resolution,
        })
    }
}

/// Runs the shape decoder on the shape latent (`coords`, `feats`) and starts its surface.
pub(crate) fn shape_decode(
    ctx: &mut Ctx,
    coords: &Tensor,
    feats: &Tensor,
    resolution: usize,
) -> Result<ShapeDecoded> {
    let mut stage = ctx.begin("shape_decode", 1);
    let latent = SparseTensor::new(coords, feats.clone()).context("shape latent")?;
    let (raw, subs, start) = {
        let decoder = ctx.shape_decoder()?;
        // Parts are timed after their model is held: loads are reported apart.
        let start = Instant::now();
        let out = match ctx.forcing {
            Some(f) => {
                let levels = decoder.net.config().up_blocks();
                let subs = f.subdivisions(&latent, levels)?;
                decoder.net.forward_forced(&latent, &subs)?
            }
            None => decoder.net.forward(&latent, None)?,
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
    // The copy is queued behind the decoder; the extraction waits for it on its own thread.
    let surface = SurfaceTask::start(
        raw.coords(),
        raw.feats(),
        resolution as u32,
        ctx.splat_shape,
    )?;
    // The part ends when the device has finished it (GPU work is asynchronous).
    ctx.device.synchronize()?;
    stage.parts.insert("shape_decoder".into(), secs(start));
    stage.voxels = Some(raw.coords().dim(0)?);
    stage.tokens = Some(coords.dim(0)?);
    ctx.progress.step("shape_decode", 1);
    ctx.end(stage);
    // Kept until the texture stages are over: the rows and the guides, not the neighbour maps
    // the decoder's convolutions cached on them.
    let light =
        |s: &SparseTensor| SparseTensor::on(Arc::new(s.coord_set().rows_only()), s.feats().clone());
    Ok(ShapeDecoded {
        voxels: light(&raw)?,
        subs: subs.iter().map(light).collect::<candle_core::Result<_>>()?,
        surface,
        resolution,
    })
}

/// Runs the texture decoder on the texture latent `feats` (on the shape latent's `coords`),
/// guided by the shape decoder's subdivisions, and starts the attributes' copy to the host.
pub(crate) fn texture_decode(
    ctx: &mut Ctx,
    coords: &Tensor,
    feats: &Tensor,
    shape: ShapeDecoded,
) -> Result<DecodedVoxels> {
    let mut stage = ctx.begin("texture_decode", 1);
    let latent = SparseTensor::new(coords, feats.clone()).context("texture latent")?;
    let (tex, start) = {
        let decoder = ctx.tex_decoder()?;
        let start = Instant::now();
        let tex = decoder.forward(&latent, Some(&shape.subs))?.raw;
        (tex, start)
    };
    ctx.release(role::TEX_DECODER);
    // Compared where the rows live (a kernel on a CUDA device), not downloaded.
    if !tex.coord_set().same_rows(shape.voxels.coord_set())? {
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
    // The copy is only queued: it runs on the device's copy engine while the next picture's
    // kernels start, and the conversion to host arrays runs off the thread that drives the
    // device (`Generated::extract_mesh`), which waits for it.
    let voxels = DecodedVoxels::start(shape.surface, &attrs, shape.resolution as u32)?;
    stage.parts.insert("tex_decoder".into(), secs(start));
    stage.voxels = Some(tex.len());
    stage.tokens = Some(coords.dim(0)?);
    ctx.progress.step("texture_decode", 1);
    ctx.end(stage);
    Ok(voxels)
}

fn secs(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}
