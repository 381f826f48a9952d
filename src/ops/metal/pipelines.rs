//! Kernel sources embedded once, libraries and pipelines compiled once per Metal device, as
//! candle-metal-kernels does: a read lock for the common hit, a write lock that checks again before compiling.

use candle_core::{MetalDevice, MetalError, Result};
use candle_metal_kernels::metal::{ComputePipeline, Library};
use std::collections::HashMap;
use std::sync::{LazyLock, RwLock};

const KARGS_H: &str = include_str!("../../../kernels/metal/kargs.h");
const SPARSE_CONV_METAL: &str = include_str!("../../../kernels/metal/sparse_conv.metal");
const ATTENTION_METAL: &str = include_str!("../../../kernels/metal/attention.metal");
const NORMS_METAL: &str = include_str!("../../../kernels/metal/norms.metal");
const NEIGHBOUR_MAP_METAL: &str = include_str!("../../../kernels/metal/neighbour_map.metal");
const DEFORM_CONV_METAL: &str = include_str!("../../../kernels/metal/deform_conv.metal");
const ELEMENTWISE_METAL: &str = include_str!("../../../kernels/metal/elementwise.metal");

/// One `.metal` file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    SparseConv,
    Attention,
    DeformConv,
    Elementwise,
    NeighbourMap,
    Norms,
}

impl Source {
    /// The file with `#include "kargs.h"` spliced in: runtime compilation has no include path.
    fn text(self) -> String {
        let raw = match self {
            Source::DeformConv => DEFORM_CONV_METAL,
            Source::Elementwise => ELEMENTWISE_METAL,
            Source::SparseConv => SPARSE_CONV_METAL,
            Source::Attention => ATTENTION_METAL,
            Source::NeighbourMap => NEIGHBOUR_MAP_METAL,
            Source::Norms => NORMS_METAL,
        };
        raw.replace("#include \"kargs.h\"", KARGS_H)
    }
}

/// Libraries and pipelines are per physical device (`MTLDevice` registry id).
type LibraryKey = (u64, Source);
type PipelineKey = (u64, String);

static LIBRARIES: LazyLock<RwLock<HashMap<LibraryKey, Library>>> = LazyLock::new(Default::default);
static PIPELINES: LazyLock<RwLock<HashMap<PipelineKey, ComputePipeline>>> =
    LazyLock::new(Default::default);

fn poisoned<T>(_: T) -> candle_core::Error {
    candle_core::Error::Msg("metal pipeline cache lock poisoned".into())
}

fn library(device: &MetalDevice, source: Source) -> Result<Library> {
    let key = (device.metal_device().registry_id(), source);
    if let Some(lib) = LIBRARIES.read().map_err(poisoned)?.get(&key) {
        return Ok(lib.clone());
    }
    let mut libraries = LIBRARIES.write().map_err(poisoned)?;
    if let Some(lib) = libraries.get(&key) {
        return Ok(lib.clone());
    }
    let lib = device
        .metal_device()
        .new_library_with_source(&source.text(), None)
        .map_err(MetalError::from)?;
    libraries.insert(key, lib.clone());
    Ok(lib)
}

/// The compute pipeline of kernel `name` (a `host_name` of `source`).
pub fn pipeline(device: &MetalDevice, source: Source, name: &str) -> Result<ComputePipeline> {
    let key = (device.metal_device().registry_id(), name.to_string());
    if let Some(p) = PIPELINES.read().map_err(poisoned)?.get(&key) {
        return Ok(p.clone());
    }
    let lib = library(device, source)?;
    let mut pipelines = PIPELINES.write().map_err(poisoned)?;
    if let Some(p) = pipelines.get(&key) {
        return Ok(p.clone());
    }
    let function = lib.get_function(name, None).map_err(MetalError::from)?;
    let p = device
        .metal_device()
        .new_compute_pipeline_state_with_function(&function)
        .map_err(MetalError::from)?;
    pipelines.insert(key, p.clone());
    Ok(p)
}
