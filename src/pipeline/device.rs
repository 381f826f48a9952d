//! Choosing the compute device (`auto|cpu|metal|cuda`), with a clear error when this build
//! lacks the backend.

use std::str::FromStr;

use anyhow::{bail, Result};
use candle_core::Device;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// Metal on macOS builds with it, else CUDA when built with it, else the CPU.
    Auto,
    Cpu,
    Metal,
    Cuda,
}

impl FromStr for DeviceChoice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => Self::Auto,
            "cpu" => Self::Cpu,
            "metal" => Self::Metal,
            "cuda" => Self::Cuda,
            other => bail!("unknown device `{other}` (expected auto, cpu, metal or cuda)"),
        })
    }
}

/// The device for `choice`.
pub fn select(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Metal => {
            if !cfg!(feature = "metal") {
                bail!(
                    "this trellis2 was built without Metal support; on a Mac rebuild with \
                     `cargo build --release --features metal`, or use --device cpu"
                );
            }
            Ok(Device::new_metal(0)?)
        }
        DeviceChoice::Cuda => {
            if !cfg!(feature = "cuda") {
                bail!(
                    "this trellis2 was built without CUDA support; rebuild with \
                     `cargo build --release --features cuda`, or use --device cpu"
                );
            }
            cuda_device()
        }
        DeviceChoice::Auto => {
            if cfg!(feature = "metal") {
                if let Ok(d) = Device::new_metal(0) {
                    return Ok(d);
                }
            }
            if cfg!(feature = "cuda") {
                if let Ok(d) = cuda_device() {
                    return Ok(d);
                }
            }
            Ok(Device::Cpu)
        }
    }
}

/// CUDA device 0, prepared for the ops (`ops::prepare_device`: its memory pool keeps freed
/// memory, otherwise every synchronisation hands it back to the driver and the next large
/// allocation maps it again).
fn cuda_device() -> Result<Device> {
    let device = Device::new_cuda(0)?;
    crate::ops::prepare_device(&device)?;
    Ok(device)
}

/// A short name of a device for reports.
pub fn describe(device: &Device) -> &'static str {
    match device {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
        Device::Metal(_) => "metal",
    }
}
