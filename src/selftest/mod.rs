//! Kernel self-test (a layer above ops and sparse, below the CLI): every GPU op on built-in
//! random shapes against its reference, in every dtype, with its throughput. On a GPU device the
//! reference is the CPU op on the same rounded inputs; on the CPU it is the op's slow twin
//! (`_slow`, or the composed candle formula), so the same path runs in CI. `trellis2 selftest`
//! prints these reports; it is the first thing to run on a new machine.

mod cases;

use std::fmt;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Result, Tensor};

pub use cases::CASES;

/// The dtypes the float kernels run in.
pub const DTYPES: &[DType] = &[DType::F32, DType::F16, DType::BF16];

/// Allowed max|err| / max|ref| for an output rounded to `dtype`: one rounding of the output
/// (2^-11 for f16, 2^-8 for bf16) with margin, and f32 accumulation-order and fast-math noise.
pub fn tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => 1e-3,
        DType::BF16 => 8e-3,
        DType::U32 => 0.0, // indices: exact
        _ => 1e-4,
    }
}

/// What one timed call of an op moves or computes, for the throughput column.
#[derive(Clone, Copy, Debug)]
pub enum Work {
    Flops(f64),
    Bytes(f64),
}

/// The outputs of one case: the op on the device and its reference, both as f32 host values.
pub struct Checked {
    pub got: Vec<f32>,
    pub want: Vec<f32>,
    pub work: Work,
    /// Seconds per call of the op on the device (after a device sync).
    pub seconds: f64,
}

/// One kernel on one shape: `run(device, dtype)` computes both sides and times the device side,
/// for each of `dtypes`.
pub struct Case {
    pub op: &'static str,
    pub operands: Operands,
    pub shape: &'static str,
    pub dtypes: &'static [DType],
    pub run: fn(&Device, DType) -> Result<Checked>,
}

/// What the device side's arithmetic is rounded to, which sets the tolerance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operands {
    /// The op reads and computes in the case's dtype (f32 math inside).
    Own,
    /// Tensor-core kernels: on CUDA f32 inputs become bf16 operands
    /// (`ops::sparse_conv::compute_dtype`), so an f32 case is held to bf16's tolerance there.
    Kernel,
}

/// The result of one (case, dtype).
#[derive(Clone, Debug)]
pub struct Report {
    pub op: &'static str,
    pub shape: &'static str,
    pub dtype: DType,
    pub outcome: std::result::Result<Measured, String>,
}

#[derive(Clone, Debug)]
pub struct Measured {
    pub max_abs: f32,
    pub max_rel: f32,
    pub tolerance: f32,
    pub work: Work,
    pub seconds: f64,
}

impl Report {
    pub fn passed(&self) -> bool {
        matches!(&self.outcome, Ok(m) if m.max_rel <= m.tolerance)
    }
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::U32 => "u32",
        _ => "other",
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.passed() { "pass" } else { "FAIL" };
        let head = format!(
            "{verdict}  {:<22} {:<4} {:<34}",
            self.op,
            dtype_name(self.dtype),
            self.shape
        );
        match &self.outcome {
            Err(e) => write!(f, "{head} error: {e}"),
            Ok(m) => {
                let rate = match m.work {
                    Work::Flops(n) => format!("{:9.2} GFLOP/s", n / m.seconds / 1e9),
                    Work::Bytes(n) => format!("{:9.2} GB/s   ", n / m.seconds / 1e9),
                };
                write!(
                    f,
                    "{head} max|err| {:.2e}  rel {:.2e}  tol {:.0e}  {rate}  ({:.3} ms)",
                    m.max_abs,
                    m.max_rel,
                    m.tolerance,
                    m.seconds * 1e3
                )
            }
        }
    }
}

/// Runs every case in every dtype on `device`, handing each report to `each` as it finishes
/// (a case that errors is a failed report, and the run goes on).
pub fn run(device: &Device, each: &mut dyn FnMut(&Report)) -> Vec<Report> {
    let mut reports = Vec::new();
    for case in CASES {
        for &dtype in case.dtypes {
            // The coarser of the output's and the operands' rounding.
            let rounded_to = match case.operands {
                Operands::Own => dtype,
                Operands::Kernel => {
                    let operands = crate::ops::sparse_conv::compute_dtype(device, dtype);
                    if tolerance(operands) > tolerance(dtype) {
                        operands
                    } else {
                        dtype
                    }
                }
            };
            let outcome = (case.run)(device, dtype)
                .and_then(|c| measure(c, rounded_to))
                .map_err(|e| format!("{e}"));
            let report = Report {
                op: case.op,
                shape: case.shape,
                dtype,
                outcome,
            };
            each(&report);
            reports.push(report);
        }
    }
    reports
}

/// Errors of `c`, held to the tolerance of values rounded to `rounded_to`.
fn measure(c: Checked, rounded_to: DType) -> Result<Measured> {
    if c.got.len() != c.want.len() {
        candle_core::bail!(
            "output has {} values, the reference {}",
            c.got.len(),
            c.want.len()
        );
    }
    // NaN in either side must fail, so fold with a NaN-propagating max.
    let nan_max = |a: f32, b: f32| {
        if a.is_nan() || b.is_nan() {
            f32::NAN
        } else {
            a.max(b)
        }
    };
    let max_abs = c
        .got
        .iter()
        .zip(&c.want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, nan_max);
    let scale = c.want.iter().map(|v| v.abs()).fold(0f32, nan_max);
    let max_rel = if scale > 0.0 {
        max_abs / scale
    } else {
        max_abs
    };
    Ok(Measured {
        max_abs,
        max_rel: if max_rel.is_nan() {
            f32::INFINITY
        } else {
            max_rel
        },
        tolerance: tolerance(rounded_to),
        work: c.work,
        seconds: c.seconds,
    })
}

/// Deterministic uniform values in [-1, 1) (the shapes are built in; so is the data).
pub(crate) fn uniform(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Seconds per call of `f` on `device`: one call to estimate, then enough calls for ~0.2 s
/// (at most 50) between two device syncs, so queued GPU work is counted and launch latency is
/// amortised.
pub(crate) fn time_op(device: &Device, mut f: impl FnMut() -> Result<Tensor>) -> Result<f64> {
    device.synchronize()?;
    let start = Instant::now();
    f()?;
    device.synchronize()?;
    let once = start.elapsed().max(Duration::from_micros(1));
    let iters = (0.2 / once.as_secs_f64()).clamp(1.0, 50.0) as u32;
    let start = Instant::now();
    for _ in 0..iters {
        f()?;
    }
    device.synchronize()?;
    Ok(start.elapsed().as_secs_f64() / iters as f64)
}

/// A tensor's values as f32 on the host.
pub(crate) fn host_f32(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?
        .flatten_all()?
        .to_device(&Device::Cpu)?
        .to_vec1()
}
