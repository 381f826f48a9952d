//! Decoding (docs/MODEL.md §1.6): shape decoder (+ subdivision guides) → texture decoder guided by
//! those subdivisions → PBR voxels `·0.5 + 0.5`. The surface (dual-grid mesh, then hole filling)
//! is extracted from the shape decoder's voxels later, on the host
//! ([`super::output::Generated::extract_mesh`]), so that a batch's device thread does not wait
//! for it.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use super::context::Ctx;
use super::models::role;
use super::output::{ShapeVoxels, PBR_CHANNELS};
use crate::sparse::SparseTensor;

/// The decoded object, its surface not yet extracted.
pub(crate) struct Decoded {
    pub shape_voxels: ShapeVoxels,
    pub voxel_coords: Vec<[i32; 4]>,
    pub voxel_attrs: Vec<[f32; PBR_CHANNELS]>,
}

pub(crate) fn decode(
    ctx: &mut Ctx,
    coords: &Tensor,
    shape_feats: &Tensor,
    tex_feats: &Tensor,
    resolution: usize,
) -> Result<Decoded> {
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
    let host_coords: Vec<i32> = to_host(raw.coords(), DType::I32)?;
    let host_raw: Vec<f32> = to_host(raw.feats(), DType::F32)?;
    // The host reads waited for the device: the part ends here.
    stage.parts.insert("shape_decoder".into(), secs(start));
    ctx.progress.step("decode", 1);

    let (tex, start) = {
        let decoder = ctx.tex_decoder()?;
        let start = Instant::now();
        let tex = decoder.forward(&tex_latent, Some(&subs))?.raw;
        (tex, start)
    };
    ctx.release(role::TEX_DECODER);
    if tex.coords().dims() != raw.coords().dims()
        || to_host::<i32>(tex.coords(), DType::I32)? != host_coords
    {
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
    let host_attrs: Vec<f32> = to_host(&attrs, DType::F32)?;
    stage.parts.insert("tex_decoder".into(), secs(start));

    stage.voxels = Some(host_coords.len() / 4);
    stage.tokens = Some(coords.dim(0)?);
    ctx.progress.step("decode", 2);
    ctx.end(stage);
    Ok(Decoded {
        voxel_coords: host_coords
            .chunks_exact(4)
            .map(|c| [c[0], c[1], c[2], c[3]])
            .collect(),
        voxel_attrs: host_attrs
            .chunks_exact(PBR_CHANNELS)
            .map(|a| std::array::from_fn(|k| a[k]))
            .collect(),
        shape_voxels: ShapeVoxels {
            coords: host_coords,
            raw: host_raw,
            resolution: resolution as u32,
        },
    })
}

fn secs(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

fn to_host<T: candle_core::WithDType>(t: &Tensor, dtype: DType) -> Result<Vec<T>> {
    Ok(t.to_device(&Device::Cpu)?
        .to_dtype(dtype)?
        .flatten_all()?
        .to_vec1::<T>()?)
}
