//! `trellis2 selftest [--device auto|cpu|metal|cuda]`: every kernel against its reference on
//! built-in shapes, one line per case and dtype, exit 1 on any failure. The first thing to run
//! on a new machine, and the output to paste into a bug report.

use anyhow::Result;

use super::exit;
use super::values::DeviceArg;
use trellis2::ops::tuning::Tuning;
use trellis2::pipeline::device::describe;
use trellis2::selftest;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Device whose kernels are checked. On the CPU the ops are checked against their slow
    /// reference twins.
    #[arg(long, value_enum, env = "TRELLIS2_DEVICE", default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
}

pub fn run(args: &Args) -> Result<u8> {
    let selected = super::open_device(args.device.into())?;
    let device = selected.device;
    println!(
        "trellis2 {} selftest on {}: {} (reference: {})",
        env!("CARGO_PKG_VERSION"),
        describe(&device),
        selected.info.description,
        if device.is_cpu() {
            "slow twins, f64/f32 plain formulas"
        } else {
            "CPU ops on the same rounded inputs"
        }
    );
    println!("tuning: {}", Tuning::current());
    let reports = selftest::run(&device, &mut |r| println!("{r}"));
    let failed = reports.iter().filter(|r| !r.passed()).count();
    println!("{} cases, {failed} failed", reports.len());
    Ok(if failed == 0 { exit::OK } else { exit::FAILED })
}
