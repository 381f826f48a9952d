//! Choosing the compute device (`auto|cpu|metal|cuda`), with a clear error when this build
//! lacks the backend.

use std::str::FromStr;

use anyhow::{bail, Result};
use candle_core::Device;

use crate::ops::DeviceInfo;

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

/// A selected device: set up for the ops (on Metal: capabilities checked, every kernel library
/// compiled) and described.
pub struct Selected {
    pub device: Device,
    pub info: DeviceInfo,
    /// What the user should be told once: an automatic choice that passed over a GPU, bf16
    /// models running in f16. The CLI prints them as `note:` lines.
    pub notes: Vec<String>,
}

/// The device for `choice`, prepared ([`ops::prepare_device`](crate::ops::prepare_device)). An
/// explicit `metal` or `cuda` that cannot run is an error (an unsupported Metal GPU names what
/// it lacks); `auto` passes over such a GPU to the next backend with a note.
pub fn select(choice: DeviceChoice) -> Result<Selected> {
    select_ordinal(choice, 0)
}

/// [`select`] for the `ordinal`-th GPU of its kind (`cuda:1`); the CPU and `auto` take 0 only.
pub fn select_ordinal(choice: DeviceChoice, ordinal: usize) -> Result<Selected> {
    if ordinal > 0 && matches!(choice, DeviceChoice::Cpu | DeviceChoice::Auto) {
        bail!("only metal and cuda devices are numbered (`cuda:{ordinal}`)");
    }
    match choice {
        DeviceChoice::Cpu => prepared(Device::Cpu, Vec::new()),
        DeviceChoice::Metal => {
            if !cfg!(feature = "metal") {
                bail!(
                    "this trellis2 was built without Metal support; on a Mac rebuild with \
                     `cargo build --release --features metal`, or use --device cpu"
                );
            }
            prepared(Device::new_metal(ordinal)?, Vec::new())
        }
        DeviceChoice::Cuda => {
            if !cfg!(feature = "cuda") {
                bail!(
                    "this trellis2 was built without CUDA support; rebuild with \
                     `cargo build --release --features cuda`, or use --device cpu"
                );
            }
            prepared(Device::new_cuda(ordinal)?, Vec::new())
        }
        DeviceChoice::Auto => {
            let mut notes = Vec::new();
            if cfg!(feature = "metal") {
                if let Ok(d) = Device::new_metal(0) {
                    match prepared(d, Vec::new()) {
                        Ok(s) => return Ok(s),
                        Err(e) => notes.push(format!("{e:#}; using the next device")),
                    }
                }
            }
            if cfg!(feature = "cuda") {
                if let Ok(d) = Device::new_cuda(0) {
                    match prepared(d, Vec::new()) {
                        Ok(s) => return Ok(s),
                        Err(e) => notes.push(format!("cuda: {e:#}; using the CPU")),
                    }
                }
            }
            prepared(Device::Cpu, notes)
        }
    }
}

fn prepared(device: Device, mut notes: Vec<String>) -> Result<Selected> {
    let info = crate::ops::prepare_device(&device)?;
    notes.extend(info.notes.iter().cloned());
    Ok(Selected {
        device,
        info,
        notes,
    })
}

/// A short name of a device for reports.
pub fn describe(device: &Device) -> &'static str {
    match device {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
        Device::Metal(_) => "metal",
    }
}
