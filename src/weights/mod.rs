//! Checkpoints as released: a model directory with `pipeline.json`, and per model a
//! `ckpts/<stem>.json` (`{"name": class, "args": {...}}`) beside `ckpts/<stem>.safetensors`.
//! Files are memory-mapped; tensors are cast to the compute dtype when a model asks for them.
//! Loading is strict: every missing, unexpected and mis-shaped tensor is reported, by name, in
//! one error (upstream loads with `strict=False` and silently ignores them).

mod checkpoint;
mod convert;
pub mod hub;
mod model_dir;
mod rembg;
mod shape_only;
mod strict;

pub use checkpoint::{
    Checkpoint, Layout, ModelConfig, TensorInfo, CONFIG_METADATA_KEY, CONVERTED_LAYOUT,
    LAYOUT_METADATA_KEY,
};
pub use convert::{convert_model_dir, ConvertedModel};
pub use model_dir::{ModelDir, PipelineConfig};
pub use rembg::{RembgModel, BIREFNET_REPO, RMBG_REPO};
pub use shape_only::ShapeRecorder;
pub use strict::{check_tensors, StrictError, StrictLoad};
