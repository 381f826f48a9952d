//! Kernel sources embedded once; libraries compiled once per Metal device by the device setup
//! (`setup`), pipelines once per kernel as candle-metal-kernels does: a read lock for the common
//! hit, a write lock that checks again before compiling.

use candle_core::{MetalDevice, MetalError, Result};
use candle_metal_kernels::metal::ComputePipeline;
use std::collections::HashMap;
use std::sync::{LazyLock, RwLock};

const KARGS_H: &str = include_str!("../../../kernels/metal/kargs.h");

/// One `.metal` file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    SparseConv,
    ConvOrder,
    Attention,
    DeformConv,
    Elementwise,
    NeighbourMap,
    Norms,
}

impl Source {
    pub const ALL: &'static [Source] = &[
        Source::SparseConv,
        Source::ConvOrder,
        Source::Attention,
        Source::DeformConv,
        Source::Elementwise,
        Source::NeighbourMap,
        Source::Norms,
    ];

    /// The file's path in the repository (for messages) and its text, embedded once.
    fn embedded(self) -> (&'static str, &'static str) {
        macro_rules! metal {
            ($file:literal) => {
                (
                    concat!("kernels/metal/", $file),
                    include_str!(concat!("../../../kernels/metal/", $file)),
                )
            };
        }
        match self {
            Source::DeformConv => metal!("deform_conv.metal"),
            Source::Elementwise => metal!("elementwise.metal"),
            Source::SparseConv => metal!("sparse_conv.metal"),
            Source::ConvOrder => metal!("conv_order.metal"),
            Source::Attention => metal!("attention.metal"),
            Source::NeighbourMap => metal!("neighbour_map.metal"),
            Source::Norms => metal!("norms.metal"),
        }
    }

    /// The file in the repository, for messages.
    pub fn file(self) -> &'static str {
        self.embedded().0
    }

    /// The file with `#include "kargs.h"` spliced in: runtime compilation has no include path.
    pub(super) fn text(self) -> String {
        let raw = self.embedded().1;
        raw.replace("#include \"kargs.h\"", KARGS_H)
    }
}

/// Pipelines are per physical device (`MTLDevice` registry id).
type PipelineKey = (u64, String);

static PIPELINES: LazyLock<RwLock<HashMap<PipelineKey, ComputePipeline>>> =
    LazyLock::new(Default::default);

fn poisoned<T>(_: T) -> candle_core::Error {
    candle_core::Error::Msg("metal pipeline cache lock poisoned".into())
}

/// The compute pipeline of kernel `name` (a `host_name` of `source`).
pub fn pipeline(device: &MetalDevice, source: Source, name: &str) -> Result<ComputePipeline> {
    let key = (device.metal_device().registry_id(), name.to_string());
    if let Some(p) = PIPELINES.read().map_err(poisoned)?.get(&key) {
        return Ok(p.clone());
    }
    let setup = super::setup::setup(device)?;
    let mut pipelines = PIPELINES.write().map_err(poisoned)?;
    if let Some(p) = pipelines.get(&key) {
        return Ok(p.clone());
    }
    let function = setup
        .library(source)
        .get_function(name, None)
        .map_err(|_| {
            candle_core::Error::Msg(format!(
                "metal: kernel `{name}` is not in {} as compiled on {} (MSL {}{})",
                source.file(),
                setup.report.name,
                setup.plan.msl,
                if setup.plan.bf16 { "" } else { ", no bf16" }
            ))
        })?;
    let p = device
        .metal_device()
        .new_compute_pipeline_state_with_function(&function)
        .map_err(MetalError::from)?;
    pipelines.insert(key, p.clone());
    Ok(p)
}
