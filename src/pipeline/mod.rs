//! Stages and the glue between them (docs/MODEL.md §1): [`run::Pipeline`] turns an image into a
//! [`output::Generated`] object, stage by stage, for one picture or a batch.

pub mod background;
pub mod batch_plan;
pub mod cascade;
pub mod conditioning;
pub mod config;
mod context;
mod decode;
pub mod dev_forcing;
pub mod device;
pub mod flow_model;
pub mod latents_file;
pub mod matte;
pub mod memory;
pub mod model_cache;
pub mod models;
pub mod noise;
pub mod output;
mod prefetch;
pub mod progress;
pub mod run;
pub mod sampler;
mod shape;
mod sparse_structure;
pub mod structure;
mod texture;
pub mod texturing;

pub use config::{
    PipelineSettings, PipelineType, SamplerOverrides, SamplerStage, StageOverride,
    DEFAULT_MAX_TOKENS,
};
pub use model_cache::ModelLoads;
pub use noise::NoiseSource;
pub use output::{DecodedVoxels, Generated, Latents, PBR_CHANNELS};
pub use prefetch::{PrefetchReport, PrefetchedFile};
pub use progress::{NoProgress, Progress, StageReport};
pub use run::{BatchItem, BatchOrder, Picture, Pipeline, ReadAhead, RunOptions};
