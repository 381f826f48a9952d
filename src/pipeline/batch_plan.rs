//! Which [`BatchOrder`] a batch runs in: picture by picture with every model resident when the
//! device has room for all of their weights plus a stage's working memory, else stage by stage.

use std::fmt;

use anyhow::Result;

use super::background::Background;
use super::config::PipelineType;
use super::models::weight_bytes;
use super::run::{pipeline_roles, BatchOrder, Pipeline};
use crate::models::registry::ModelSource;
use crate::models::WeightMemory;
use crate::ops::device_memory;

const GIB: u64 = 1 << 30;

/// Working memory kept free for a stage's activations beside the resident weights: the largest
/// stage peaks less weights of docs/MEMORY.md (the decoders at the type's resolution), rounded up.
pub fn activation_reserve(ptype: PipelineType) -> u64 {
    match ptype {
        PipelineType::P512 => 4 * GIB,
        PipelineType::P1024 | PipelineType::Cascade1024 => 10 * GIB,
        PipelineType::Cascade1536 => 24 * GIB,
    }
}

/// The choice and the numbers behind it.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchPlan {
    pub order: BatchOrder,
    /// Weights of every model the batch uses, in their compute dtypes.
    pub weights_bytes: u64,
    /// [`activation_reserve`] of the pipeline type.
    pub reserve_bytes: u64,
    /// The device's free memory, where it reports one.
    pub free_bytes: Option<u64>,
    /// Why, in a few words.
    pub reason: &'static str,
}

impl fmt::Display for BatchPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let gib = |b: u64| b as f64 / GIB as f64;
        let order = match self.order {
            BatchOrder::PictureMajor => "picture by picture, models kept loaded",
            BatchOrder::StageMajor => "stage by stage, one stage's models loaded at a time",
        };
        write!(
            f,
            "{order} ({}: weights {:.1} GiB + working memory {:.1} GiB, ",
            self.reason,
            gib(self.weights_bytes),
            gib(self.reserve_bytes)
        )?;
        match self.free_bytes {
            Some(b) => write!(f, "{:.1} GiB free)", gib(b)),
            None => write!(f, "free memory unknown)"),
        }
    }
}

/// Plans a batch of `pictures` of type `ptype` on `pipeline`'s device.
pub fn plan_batch(
    pipeline: &Pipeline,
    ptype: PipelineType,
    background: Background,
    pictures: usize,
) -> Result<BatchPlan> {
    let dir = pipeline.model_dir();
    let device = pipeline.device();
    let opts = pipeline.load_options();
    let mut weights = 0;
    for role in pipeline_roles(ptype) {
        weights += weight_bytes(dir, role, device, opts)?;
    }
    // The remover counts only where it is installed; a picture needing a missing one fails
    // with its own message.
    if let Some(folder) = background.model().and_then(|m| dir.rembg_dir(m).ok()) {
        if let Ok(src) = ModelSource::open(&folder) {
            weights += super::models::checkpoint_bytes(
                &src.checkpoint,
                opts.dtype_for(&src.checkpoint, device),
            );
        }
    }
    let reserve = activation_reserve(ptype);
    let free = device_memory(device).map(|m| m.free);
    let (order, reason) = if pictures <= 1 {
        (BatchOrder::StageMajor, "one picture")
    } else if opts.memory == WeightMemory::Streamed {
        (BatchOrder::StageMajor, "--low-memory")
    } else {
        match free {
            None => (BatchOrder::StageMajor, "device memory unknown"),
            Some(f) if weights + reserve <= f => (BatchOrder::PictureMajor, "room for all"),
            Some(_) => (BatchOrder::StageMajor, "no room for all"),
        }
    };
    Ok(BatchPlan {
        order,
        weights_bytes: weights,
        reserve_bytes: reserve,
        free_bytes: free,
        reason,
    })
}
