//! The texturing pipeline (docs/MODEL.md §13, upstream `Trellis2TexturingPipeline`): a mesh and
//! a picture in, PBR voxels on the mesh's own voxelisation out, baked onto the mesh's UVs (or a
//! new atlas) as a textured GLB in the mesh's own frame.
//!
//! Stages, each in the report: `preprocess` (the picture, as `generate` does it), `voxelise`
//! (normalise into the unit box + flexible dual grid), `conditioning` (DINOv3 at 512, or 1024
//! for the 1024 grid), `encode` (shape SC-VAE encoder → shape latent), `texture` (the texture
//! flow with the normalised shape latent as `concat_cond`: `generate`'s texture stage),
//! `decode` (texture decoder through the encoder's subdivisions, `·0.5 + 0.5`), then `bake` and
//! `write` when the GLB is written. The only random draw is the texture flow's noise, first of
//! the seeded stream as after upstream's `torch.manual_seed(seed)`.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use super::background::{conditioning_image, Background};
use super::conditioning::condition;
use super::config::{PipelineSettings, SamplerOverrides};
use super::context::Ctx;
use super::model_cache::{Keep, ModelCache, ModelLoads};
use super::models::{role, LoadOptions};
use super::noise::{Noise, NoiseSource};
use super::output::{Latents, PBR_CHANNELS};
use super::progress::{Progress, StageReport};
use super::shape::ShapeLatent;
use super::texture::sample_texture;
use crate::export::glb_writer::{chart_padding, write_baked_glb, BakeTarget, TexturedGlb};
use crate::export::mesh_input::InputMesh;
use crate::image::LoadedImage;
use crate::mesh::atlas::{atlas_stats, unwrap, AtlasOptions};
use crate::mesh::{voxelise, Mesh, UnitBoxFrame, VoxelAttributes, TEXTURING_WEIGHTS};
use crate::models::birefnet::BiRefNet;
use crate::sparse::SparseTensor;
use crate::weights::{ModelDir, RembgModel};

pub use crate::weights::hub::TEXTURING_PIPELINE_FILE;

/// Voxel grids `texture` accepts: the release's 512 and 1024, and smaller powers of two for
/// quick previews and tests (they use the 512 flow). The encoder's four downsamplings need 16³
/// blocks, so 64 is the smallest useful grid.
pub const TEXTURE_RESOLUTIONS: [u32; 5] = [64, 128, 256, 512, 1024];

/// Per-mesh choices.
pub struct TextureOptions {
    /// Voxel grid of the encoding (one of [`TEXTURE_RESOLUTIONS`]).
    pub resolution: u32,
    pub noise: NoiseSource,
    pub background: Background,
}

/// The decoded PBR voxels of one mesh and how to put them back on it.
pub struct TexturedVoxels {
    /// The mesh's frame → the unit box the voxels live in.
    pub frame: UnitBoxFrame,
    pub resolution: u32,
    /// Voxels `(x, y, z)` on the `resolution³` grid.
    pub voxel_coords: Vec<[i32; 3]>,
    /// Base colour RGB, metallic, roughness, alpha, `·0.5 + 0.5` (not clamped).
    pub voxel_attrs: Vec<[f32; PBR_CHANNELS]>,
    pub latents: Latents,
    pub stages: Vec<StageReport>,
}

/// The written GLB and the stage reports of baking and writing it.
pub struct WrittenGlb {
    pub glb: TexturedGlb,
    /// Whether the mesh's own texture coordinates were used (else a new atlas).
    pub kept_uvs: bool,
    pub stages: Vec<StageReport>,
}

/// A model directory's texturing models on one device; models stay loaded between meshes when
/// [`TexturingPipeline::keep_models`] says so (a batch).
pub struct TexturingPipeline {
    dir: ModelDir,
    settings: PipelineSettings,
    device: Device,
    load: LoadOptions,
    models: ModelCache,
}

impl TexturingPipeline {
    /// Reads the sampler settings and normalisations of `dir`'s `texturing_pipeline.json`.
    pub fn new(dir: ModelDir, device: Device) -> Result<Self> {
        for r in [role::SHAPE_ENCODER, role::TEX_DECODER] {
            if !dir.pipeline.model_stems().contains_key(r) {
                bail!(
                    "{}: {TEXTURING_PIPELINE_FILE} names no model `{r}`",
                    dir.root.display()
                );
            }
        }
        let settings = PipelineSettings::from_pipeline_args(&dir.pipeline.args)
            .with_context(|| format!("{}", dir.root.join(TEXTURING_PIPELINE_FILE).display()))?;
        let models = ModelCache::default();
        models.set_keep(Keep::Roles(HashSet::new()));
        Ok(Self {
            dir,
            settings,
            device,
            load: LoadOptions::default(),
            models,
        })
    }

    /// Compute dtype and weight residency; an error when the device cannot compute in it.
    pub fn with_load_options(mut self, load: LoadOptions) -> Result<Self> {
        load.check(&self.device)?;
        self.load = load;
        Ok(self)
    }

    /// Changes the texture sampler's parameters (checked before they are kept).
    pub fn apply_overrides(&mut self, overrides: &SamplerOverrides) -> Result<()> {
        let mut s = self.settings.clone();
        s.apply(overrides)?;
        self.settings = s;
        Ok(())
    }

    /// Keep every model loaded between meshes (a batch reads each model once), or drop each
    /// as soon as its stage is done (one mesh: lower peak memory).
    pub fn keep_models(&self, keep: bool) {
        self.models.set_keep(if keep {
            Keep::All
        } else {
            Keep::Roles(HashSet::new())
        });
        self.models.trim();
    }

    pub fn settings(&self) -> &PipelineSettings {
        &self.settings
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn model_dir(&self) -> &ModelDir {
        &self.dir
    }

    /// How often each model role's weights were read so far, and how long that took.
    pub fn model_loads(&self) -> BTreeMap<String, ModelLoads> {
        self.models.loads()
    }

    /// Textures `mesh` from `image`. Callers check the mesh first ([`InputMesh::check`]) to
    /// refuse bad input before any work; what would break the run (NaN, indices out of range,
    /// zero extent, no surface) is refused here too.
    pub fn texture(
        &self,
        mesh: &InputMesh,
        image: &LoadedImage,
        options: TextureOptions,
        progress: &mut dyn Progress,
    ) -> Result<TexturedVoxels> {
        let res = options.resolution;
        if !TEXTURE_RESOLUTIONS.contains(&res) {
            bail!("resolution {res} is not one of {TEXTURE_RESOLUTIONS:?}");
        }
        let device = &self.device;
        let mut ctx = Ctx {
            dir: &self.dir,
            models: &self.models,
            settings: &self.settings,
            device,
            load: self.load,
            noise: Noise::new(options.noise),
            latents: Latents::default(),
            progress,
            reports: Vec::new(),
            forcing: None,
            splat_shape: None,
        };

        let stage = ctx.begin("preprocess", 1);
        let open = |folder: &Path, choice: RembgModel| -> Result<Arc<BiRefNet>> {
            self.models.get_or_load(role::BACKGROUND_REMOVAL, || {
                BiRefNet::open_as(folder, choice, device)
            })
        };
        let rgb = conditioning_image(&self.dir, image, options.background, &open);
        self.models.release(role::BACKGROUND_REMOVAL);
        let rgb = rgb?;
        ctx.progress.step("preprocess", 1);
        ctx.end(stage);

        let mut stage = ctx.begin("voxelise", 1);
        let frame = UnitBoxFrame::fit(&mesh.positions)?;
        let unit = frame.apply_all(&mesh.positions);
        let grid = voxelise(&unit, &mesh.faces, res, TEXTURING_WEIGHTS)?;
        let n = grid.voxels.len();
        if n == 0 {
            bail!("the mesh has no surface to voxelise (every triangle is degenerate)");
        }
        let g = res as f32;
        let mut coords = Vec::with_capacity(n * 4);
        let mut offsets = Vec::with_capacity(n * 3);
        let mut flags = Vec::with_capacity(n * 3);
        for ((v, d), f) in grid
            .voxels
            .iter()
            .zip(&grid.dual_vertices)
            .zip(&grid.intersected)
        {
            coords.extend([0, v[0], v[1], v[2]]);
            offsets.extend((0..3).map(|a| d[a] * g - v[a] as f32));
            flags.extend(f.iter().map(|&b| u8::from(b)));
        }
        drop(grid);
        let coords = Tensor::from_vec(coords, (n, 4), device)?;
        let offsets = Tensor::from_vec(offsets, (n, 3), device)?;
        let flags = Tensor::from_vec(flags, (n, 3), device)?;
        stage.voxels = Some(n);
        ctx.progress.step("voxelise", 1);
        ctx.end(stage);

        let mut stage = ctx.begin("conditioning", 1);
        let size = if res >= 1024 { 1024 } else { 512 };
        let dino = ctx.dinov3()?;
        let cond = condition(&dino, &rgb, size, device).context("conditioning stage")?;
        drop(dino);
        ctx.release(role::IMAGE_COND);
        ctx.latents.insert(format!("cond_{size}"), cond.clone());
        stage.tokens = Some(cond.dim(1)?);
        stage.model_calls = 1;
        ctx.progress.step("conditioning", 1);
        ctx.end(stage);

        let mut stage = ctx.begin("encode", 1);
        let encoded = {
            let encoder = ctx.shape_encoder()?;
            let vertices = SparseTensor::new(&coords, offsets)?;
            encoder.forward(&vertices, &flags).context("encode stage")?
        };
        ctx.release(role::SHAPE_ENCODER);
        let latent_coords = encoded.z.coords().clone();
        ctx.latents
            .insert("shape_enc.coords", latent_coords.clone());
        ctx.latents.insert("shape_slat.feats", encoded.mean.clone());
        stage.voxels = Some(n);
        stage.tokens = Some(encoded.z.len());
        stage.model_calls = 1;
        ctx.progress.step("encode", 1);
        ctx.end(stage);

        let shape = ShapeLatent {
            coords: latent_coords,
            feats: encoded.mean.clone(),
            resolution: res as usize,
        };
        let tex = sample_texture(&mut ctx, &shape, &cond, res >= 1024)?;

        let mut stage = ctx.begin("decode", 1);
        let raw = {
            let decoder = ctx.tex_decoder()?;
            let latent = encoded.z.replace(tex)?;
            decoder
                .forward_through(&latent, &encoded.structure)
                .context("decode stage")?
        };
        ctx.release(role::TEX_DECODER);
        if raw.channels() != PBR_CHANNELS {
            bail!(
                "texture decoder gives {} channels, expected {PBR_CHANNELS}",
                raw.channels()
            );
        }
        let attrs = ((raw.feats() * 0.5)? + 0.5)?;
        ctx.latents.insert("tex_voxels.feats", attrs.clone());
        ctx.latents
            .insert("tex_voxels.coords", raw.coords().clone());
        let host_coords: Vec<i32> = to_host(raw.coords(), DType::I32)?;
        let host_attrs: Vec<f32> = to_host(&attrs, DType::F32)?;
        stage.voxels = Some(raw.len());
        stage.model_calls = 1;
        ctx.progress.step("decode", 1);
        ctx.end(stage);

        Ok(TexturedVoxels {
            frame,
            resolution: res,
            voxel_coords: host_coords
                .chunks_exact(4)
                .map(|c| [c[1], c[2], c[3]])
                .collect(),
            voxel_attrs: host_attrs
                .chunks_exact(PBR_CHANNELS)
                .map(|a| std::array::from_fn(|k| a[k]))
                .collect(),
            latents: ctx.latents,
            stages: ctx.reports,
        })
    }
}

impl TexturedVoxels {
    /// Bakes the voxels onto `mesh` and writes `path` (GLB, atomically): the mesh's positions
    /// and triangles as they are, its texture coordinates when it has them, else a new atlas
    /// of `texture_size²` (chart seams then split vertices). Each texel samples the voxels at
    /// its surface point mapped into the unit box.
    pub fn write_glb(
        &self,
        mesh: &InputMesh,
        path: &Path,
        texture_size: u32,
    ) -> Result<WrittenGlb> {
        let start = Instant::now();
        let volume = VoxelAttributes::new(
            &self.voxel_coords,
            self.voxel_attrs.iter().flatten().copied().collect(),
            PBR_CHANNELS,
            self.resolution,
        )
        .context("texture voxels")?;
        let normals = Mesh {
            vertices: mesh.positions.clone(),
            faces: mesh.faces.clone(),
        }
        .vertex_normals()?;
        let indices: Vec<u32> = mesh.faces.iter().flatten().copied().collect();
        let atlas = match &mesh.uvs {
            Some(_) => None,
            None => Some(
                unwrap(
                    &mesh.positions,
                    &indices,
                    &AtlasOptions {
                        texture_size,
                        padding_texels: chart_padding(texture_size),
                    },
                )
                .context("UV unwrap")?,
            ),
        };
        let (source_vertex, uvs, indices) = match (&mesh.uvs, &atlas) {
            (_, Some(a)) => (a.source_vertex.clone(), a.uvs.as_slice(), a.indices.clone()),
            (Some(uvs), None) => (
                (0..mesh.positions.len() as u32).collect::<Vec<u32>>(),
                uvs.as_slice(),
                indices,
            ),
            (None, None) => bail!("the mesh has no texture coordinates and no atlas was made"),
        };
        let pick = |rows: &[[f32; 3]]| -> Vec<[f32; 3]> {
            source_vertex.iter().map(|&i| rows[i as usize]).collect()
        };
        let positions = pick(&mesh.positions);
        let sample_points: Vec<[f32; 3]> = positions.iter().map(|&p| self.frame.apply(p)).collect();
        let normals = pick(&normals);
        let prepare = start.elapsed().as_secs_f64();
        let mut glb = write_baked_glb(
            path,
            &BakeTarget {
                sample_points: &sample_points,
                positions: &positions,
                normals: &normals,
                uvs,
                indices: &indices,
                frame: "the input mesh's own frame and units",
                // Its detail is the input mesh itself: nothing finer to carry in a normal map.
                normal_map: None,
            },
            &volume,
            texture_size,
        )?;
        if let Some(atlas) = &atlas {
            let stats = atlas_stats(atlas);
            glb.charts = atlas.charts;
            glb.utilisation = stats.utilisation;
            glb.overlapping_triangles = stats.overlapping_triangles;
            glb.unwrap_seconds = atlas.seconds;
        }
        // Host work only: no tokens, model calls, loads or device memory to report.
        let report = |stage: &str, seconds: f64| StageReport {
            stage: stage.to_string(),
            seconds,
            ..Default::default()
        };
        Ok(WrittenGlb {
            stages: vec![
                report("bake", prepare + glb.bake_seconds),
                report("write", glb.encode_seconds + glb.write_seconds),
            ],
            glb,
            kept_uvs: atlas.is_none(),
        })
    }
}

fn to_host<T: candle_core::WithDType>(t: &Tensor, dtype: DType) -> Result<Vec<T>> {
    Ok(t.to_device(&Device::Cpu)?
        .to_dtype(dtype)?
        .flatten_all()?
        .to_vec1::<T>()?)
}
