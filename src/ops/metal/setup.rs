//! Metal device setup, once per device when it is selected (docs/METAL.md, "Device setup"): the
//! device's capabilities against what the kernels need ([`GpuReport::plan`]), then every `.metal`
//! library compiled with pinned `MTLCompileOptions`, so a compile failure or an unsupported GPU
//! stops the run before any model loads, never mid-pipeline.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};

use candle_core::{MetalDevice, Result};
use candle_metal_kernels::metal::Library;
use objc2_foundation::{NSProcessInfo, NSString};
use objc2_metal::{
    MTLCompileOptions, MTLComputePipelineState, MTLDevice, MTLGPUFamily, MTLLanguageVersion,
    MTLMathFloatingPointFunctions, MTLMathMode,
};

use super::capabilities::{check_simd_width, CompilePlan, GpuReport, MslVersion};
use super::pipelines::Source;

/// One device, set up: what it reported, how its libraries were compiled, and the libraries.
pub struct Setup {
    pub report: GpuReport,
    pub plan: CompilePlan,
    pub simd_width: u32,
    libraries: HashMap<Source, Library>,
}

impl Setup {
    pub fn library(&self, source: Source) -> &Library {
        // Every source is compiled by `prepare`; a missing one would be a bug here.
        &self.libraries[&source]
    }

    pub fn describe(&self) -> String {
        self.report
            .describe(Some(&self.plan), Some(self.simd_width))
    }
}

static SETUPS: LazyLock<RwLock<HashMap<u64, Arc<Setup>>>> = LazyLock::new(Default::default);

fn poisoned<T>(_: T) -> candle_core::Error {
    candle_core::Error::Msg("metal device setup lock poisoned".into())
}

/// The setup of `device`, done on first call (libraries compiled, capabilities checked). An
/// unsupported device or a kernel that does not compile is an error naming the device or file.
pub fn setup(device: &MetalDevice) -> Result<Arc<Setup>> {
    let key = device.metal_device().registry_id();
    if let Some(s) = SETUPS.read().map_err(poisoned)?.get(&key) {
        return Ok(s.clone());
    }
    let mut setups = SETUPS.write().map_err(poisoned)?;
    if let Some(s) = setups.get(&key) {
        return Ok(s.clone());
    }
    let s = Arc::new(prepare(device)?);
    setups.insert(key, s.clone());
    Ok(s)
}

fn gpu_report(device: &MetalDevice) -> GpuReport {
    let raw: &objc2::runtime::ProtocolObject<dyn MTLDevice> = device.metal_device().as_ref();
    let apple_family = (1..=10)
        .rev()
        .find(|&n| raw.supportsFamily(MTLGPUFamily(1000 + n)))
        .map(|n| n as u32);
    let os = NSProcessInfo::processInfo().operatingSystemVersion();
    GpuReport {
        name: raw.name().to_string(),
        architecture: device.metal_device().architecture_name(),
        apple_family,
        metal3: raw.supportsFamily(MTLGPUFamily::Metal3),
        os: (
            os.majorVersion as u32,
            os.minorVersion as u32,
            os.patchVersion as u32,
        ),
    }
}

fn refused(e: super::capabilities::Refusal) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

fn compile_options(plan: &CompilePlan, os_major: u32) -> objc2::rc::Retained<MTLCompileOptions> {
    let options = MTLCompileOptions::new();
    options.setLanguageVersion(match plan.msl {
        MslVersion::V3_0 => MTLLanguageVersion::Version3_0,
        MslVersion::V3_1 => MTLLanguageVersion::Version3_1,
    });
    if os_major >= 15 {
        // `mathMode` replaces `fastMathEnabled` from macOS 15; Fast + fast functions is what
        // `fastMathEnabled = YES` meant.
        if plan.fast_math {
            options.setMathMode(MTLMathMode::Fast);
            options.setMathFloatingPointFunctions(MTLMathFloatingPointFunctions::Fast);
        } else {
            options.setMathMode(MTLMathMode::Safe);
            options.setMathFloatingPointFunctions(MTLMathFloatingPointFunctions::Precise);
        }
    } else {
        #[allow(deprecated)]
        options.setFastMathEnabled(plan.fast_math);
    }
    options
}

/// `(free, total)`: the GPU's recommended working set (unified memory: Metal's budget for one
/// process) less what this process has allocated on it, and the whole set.
pub fn working_set(device: &MetalDevice) -> (u64, u64) {
    let raw: &objc2::runtime::ProtocolObject<dyn MTLDevice> = device.metal_device().as_ref();
    let total = raw.recommendedMaxWorkingSetSize();
    let used = raw.currentAllocatedSize() as u64;
    (total.saturating_sub(used), total)
}

fn prepare(device: &MetalDevice) -> Result<Setup> {
    let report = gpu_report(device);
    let plan = report.plan().map_err(refused)?;
    let options = compile_options(&plan, report.os.0);
    let raw: &objc2::runtime::ProtocolObject<dyn MTLDevice> = device.metal_device().as_ref();
    let mut libraries = HashMap::new();
    for &source in Source::ALL {
        let lib = raw
            .newLibraryWithSource_options_error(&NSString::from_str(&source.text()), Some(&options))
            .map_err(|e| {
                candle_core::Error::Msg(format!(
                    "metal: {} does not compile on {} (MSL {}): {e}",
                    source.file(),
                    report.name,
                    plan.msl
                ))
            })?;
        libraries.insert(source, Library::new(lib));
    }
    // Metal reports the SIMD width per pipeline; any kernel tells it for the device.
    let probe = libraries[&Source::NeighbourMap]
        .get_function("neighbour_clear_u32", None)
        .map_err(candle_core::MetalError::from)?;
    let pipeline = device
        .metal_device()
        .new_compute_pipeline_state_with_function(&probe)
        .map_err(candle_core::MetalError::from)?;
    let simd_width = pipeline.as_ref().threadExecutionWidth() as u32;
    check_simd_width(&report.name, simd_width).map_err(refused)?;
    Ok(Setup {
        report,
        plan,
        simd_width,
        libraries,
    })
}
