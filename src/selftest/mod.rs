//! Kernel self-test (a layer above ops and sparse, below the CLI): every GPU op on built-in
//! shapes against its reference, in every dtype. The cases ([`cases`]) are data that three
//! executors run: [`check`] on a candle device (on a GPU the reference is the CPU op on the same
//! rounded inputs; on the CPU it is the op's slow twin, so the same path runs in CI), the CUDA
//! tests and the Metal emulator tests. `trellis2 selftest` checks and times the
//! [`Size::Bench`] cases ([`run`]); it is the first thing to run on a new machine.

mod case;
mod cases;
pub mod metrics;
pub mod shapes;

use std::fmt;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Result, Tensor};

pub use case::{
    Case, ConvMap, Inputs, Op, Reference, RopeTable, Size, Tolerance, Voxels, Work, DTYPES,
};
pub use cases::{cases, metal_attention_cases};
pub use metrics::{host_f32, max_abs_diff, rel_err, tensor_max_abs_diff, tensor_rel_err};
pub use shapes::{uniform, voxel_shell};

/// The result of one (case, dtype).
#[derive(Clone, Debug)]
pub struct Report {
    /// The op and its parameters.
    pub case: String,
    pub dtype: DType,
    pub outcome: std::result::Result<Measured, String>,
}

#[derive(Clone, Debug)]
pub struct Measured {
    pub max_abs: f32,
    pub max_rel: f32,
    pub tolerance: f32,
    /// Seconds per call on the device with what a call does, where the case was timed.
    pub timing: Option<(Work, f64)>,
}

impl Report {
    pub fn new(case: &Case, dtype: DType, outcome: Result<Measured>) -> Self {
        Self {
            case: case.op.to_string(),
            dtype,
            outcome: outcome.map_err(|e| format!("{e}")),
        }
    }

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
        let head = format!("{verdict}  {:<4} {:<58}", dtype_name(self.dtype), self.case);
        match &self.outcome {
            Err(e) => write!(f, "{head} error: {e}"),
            Ok(m) => {
                write!(
                    f,
                    "{head} max|err| {:.2e}  rel {:.2e}  tol {:.0e}",
                    m.max_abs, m.max_rel, m.tolerance,
                )?;
                if let Some((work, seconds)) = m.timing {
                    let rate = match work {
                        Work::Flops(n) => format!("{:9.2} GFLOP/s", n / seconds / 1e9),
                        Work::Bytes(n) => format!("{:9.2} GB/s   ", n / seconds / 1e9),
                    };
                    write!(f, "  {rate}  ({:.3} ms)", seconds * 1e3)?;
                }
                Ok(())
            }
        }
    }
}

/// `trellis2 selftest`: checks and times every [`Size::Bench`] case in every dtype on `device`,
/// handing each report to `each` as it finishes (a case that errors is a failed report, and the
/// run goes on).
pub fn run(device: &Device, each: &mut dyn FnMut(&Report)) -> Vec<Report> {
    let mut reports = run_cases(device, |c| c.size == Size::Bench, true, each);
    if device.is_metal() {
        reports.extend(run_attention_paths(device, each));
    }
    reports
}

/// [`metal_attention_cases`] through each Metal attention path (`TRELLIS2_METAL_ATTENTION`
/// pinned), checked against one CPU reference per case and dtype, and timed.
fn run_attention_paths(device: &Device, each: &mut dyn FnMut(&Report)) -> Vec<Report> {
    use crate::ops::tuning::{MetalAttention, Tuning};
    let mut reports = Vec::new();
    for case in metal_attention_cases() {
        for &dtype in case.dtypes {
            if !usable(device, dtype) {
                continue;
            }
            let memo = std::cell::RefCell::new(None::<Tensor>);
            let reference = |inputs: &Inputs, kind: Reference| -> Result<Tensor> {
                if let Some(t) = memo.borrow().as_ref() {
                    return Ok(t.clone());
                }
                let t = case.reference(inputs, kind)?;
                *memo.borrow_mut() = Some(t.clone());
                Ok(t)
            };
            for (path, name) in [
                (MetalAttention::Sdpa, "sdpa"),
                (MetalAttention::Varlen, "varlen"),
            ] {
                let tuning = Tuning {
                    metal_attention: path,
                    ..Tuning::current()
                };
                let run = |inputs: &Inputs| tuning.with(|| case.run(inputs));
                let mut report = check_full(&case, dtype, device, true, &run, &reference);
                report.case = format!("{} metal={name}", report.case);
                each(&report);
                reports.push(report);
            }
        }
    }
    reports
}

/// Whether `device` runs `dtype` kernels (a Metal GPU without bfloat has no bf16 ones; its
/// bf16 cases are skipped, as its runs compute those models in f16).
fn usable(device: &Device, dtype: DType) -> bool {
    dtype != DType::BF16 || crate::ops::bf16_available(device)
}

/// Checks every case `device` runs ([`Case::runs_on`]) that `keep` keeps, untimed: the tests.
pub fn check_all(
    device: &Device,
    keep: impl Fn(&Case) -> bool,
    each: &mut dyn FnMut(&Report),
) -> Vec<Report> {
    run_cases(device, keep, false, each)
}

fn run_cases(
    device: &Device,
    keep: impl Fn(&Case) -> bool,
    timed: bool,
    each: &mut dyn FnMut(&Report),
) -> Vec<Report> {
    let mut reports = Vec::new();
    for case in cases().iter().filter(|c| c.runs_on(device) && keep(c)) {
        for &dtype in case.dtypes.iter().filter(|&&d| usable(device, d)) {
            let report = check(case, dtype, device, timed);
            each(&report);
            reports.push(report);
        }
    }
    reports
}

/// The dtype a case's operands are rounded to on `device` for `dtype` activations: a
/// tensor-core op's compute dtype (`ops::sparse_conv::compute_dtype`), else `dtype`.
pub fn operand_dtype(case: &Case, device: &Device, dtype: DType) -> DType {
    if case.op.tensor_core() {
        crate::ops::sparse_conv::compute_dtype(device, dtype)
    } else {
        dtype
    }
}

/// One case in one dtype on `device`: the op against its reference (the slow twin on the CPU,
/// the CPU op elsewhere), timed if `timed`.
pub fn check(case: &Case, dtype: DType, device: &Device, timed: bool) -> Report {
    check_with(case, dtype, device, timed, &|inputs| case.run(inputs))
}

/// [`check`] with the device side computed by `run` from the operands on `device` (a kernel
/// variant pinned, extra assertions about the path taken).
pub fn check_with(
    case: &Case,
    dtype: DType,
    device: &Device,
    timed: bool,
    run: &dyn Fn(&Inputs) -> Result<Tensor>,
) -> Report {
    check_full(case, dtype, device, timed, run, &|inputs, kind| {
        case.reference(inputs, kind)
    })
}

/// [`check_with`] with the reference computed by `reference` (which may reuse one).
fn check_full(
    case: &Case,
    dtype: DType,
    device: &Device,
    timed: bool,
    run: &dyn Fn(&Inputs) -> Result<Tensor>,
    reference: &dyn Fn(&Inputs, Reference) -> Result<Tensor>,
) -> Report {
    let measured = || -> Result<Measured> {
        let operands = operand_dtype(case, device, dtype);
        let inputs = case.inputs(dtype, operands)?;
        let on_device = inputs.to_device(device)?;
        let got = run(&on_device)?;
        let kind = if device.is_cpu() {
            Reference::SlowTwin
        } else {
            Reference::CpuOp
        };
        let want = reference(&inputs, kind)?;
        if got.dtype() != dtype || got.dims() != want.dims() {
            candle_core::bail!(
                "output is {:?} {:?}, want {dtype:?} {:?}",
                got.dtype(),
                got.dims(),
                want.dims()
            );
        }
        let mut m = compare(
            &output_values(&got)?,
            &output_values(&want)?,
            case.tolerance(dtype, operands),
        )?;
        if timed {
            let seconds = time_op(device, || run(&on_device))?;
            m.timing = Some((case.work(&inputs, dtype)?, seconds));
        }
        Ok(m)
    };
    Report::new(case, dtype, measured())
}

/// An output's values as f32 on the host; a neighbour map's absent taps (`u32::MAX`) as −1
/// (rows stay exact below 2^24).
pub fn output_values(t: &Tensor) -> Result<Vec<f32>> {
    if t.dtype() == DType::U32 {
        return Ok(t
            .flatten_all()?
            .to_device(&Device::Cpu)?
            .to_vec1::<u32>()?
            .into_iter()
            .map(|v| if v == u32::MAX { -1.0 } else { v as f32 })
            .collect());
    }
    host_f32(t)
}

/// The errors of `got` against `want`, held to `tolerance` (untimed).
pub fn compare(got: &[f32], want: &[f32], tolerance: f32) -> Result<Measured> {
    if got.len() != want.len() {
        candle_core::bail!(
            "output has {} values, the reference {}",
            got.len(),
            want.len()
        );
    }
    Ok(Measured {
        max_abs: max_abs_diff(got, want),
        max_rel: rel_err(got, want),
        tolerance,
        timing: None,
    })
}

/// Seconds per call of `f` on `device`: one call to estimate, then enough calls for ~0.2 s
/// (at most 50) between two device syncs, so queued GPU work is counted and launch latency is
/// amortised.
fn time_op(device: &Device, mut f: impl FnMut() -> Result<Tensor>) -> Result<f64> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every small case passes on the CPU against its slow twin (the throughput cases run in
    /// `tests/cli.rs` through `trellis2 selftest --device cpu`).
    #[test]
    fn selftest_small_cases_pass_on_the_cpu() {
        let mut failed = Vec::new();
        let reports = check_all(&Device::Cpu, |c| c.size == Size::Small, &mut |r| {
            println!("{r}");
            if !r.passed() {
                failed.push(r.to_string());
            }
        });
        assert!(reports.len() > 100, "{} reports", reports.len());
        assert!(failed.is_empty(), "{}", failed.join("\n"));
    }

    /// `trellis2 selftest` runs every Metal kernel: each kernel family instantiated in
    /// kernels/metal (its `host_name` prefix) belongs to an op with a Bench case. A new kernel
    /// fails here until it is added to the table and given a Bench case.
    #[test]
    fn selftest_bench_cases_cover_every_metal_kernel() {
        type IsOp = fn(&Op) -> bool;
        let families: [(&str, IsOp); 10] = [
            ("attention_", |op| matches!(op, Op::Attention { .. })),
            ("sparse_conv_", |op| matches!(op, Op::SparseConv { .. })),
            ("deform_im2col_", |op| matches!(op, Op::DeformIm2col { .. })),
            ("bias_act_", |op| matches!(op, Op::BiasAct { .. })),
            ("gated_residual_", |op| {
                matches!(op, Op::GatedResidual { .. })
            }),
            ("neighbour_", |op| matches!(op, Op::NeighbourMap { .. })),
            ("conv_order_", |op| matches!(op, Op::ConvOrder { .. })),
            ("space_to_channel_", |op| {
                matches!(op, Op::SpaceToChannel { .. })
            }),
            ("layer_norm_modulate_", |op| {
                matches!(op, Op::LayerNormModulate { .. })
            }),
            ("rms_norm_rope_", |op| matches!(op, Op::RmsNormRope { .. })),
        ];
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/kernels/metal");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "metal") {
                let text = std::fs::read_to_string(&path).unwrap();
                for piece in text.split("host_name(\"").skip(1) {
                    names.push(piece[..piece.find('"').unwrap()].to_string());
                }
            }
        }
        assert!(names.len() >= 12, "{names:?}");
        let bench: Vec<Case> = cases()
            .into_iter()
            .filter(|c| c.size == Size::Bench)
            .collect();
        for name in &names {
            let Some((_, is_op)) = families.iter().find(|(p, _)| name.starts_with(p)) else {
                panic!("kernel {name}: add its family to this table and a Bench case");
            };
            assert!(
                bench.iter().any(|c| is_op(&c.op)),
                "kernel {name} has no Bench case: `trellis2 selftest` would not run it"
            );
        }
    }

    /// The Metal attention-path cases are calls both paths take (so `metal=sdpa` never reports
    /// an error instead of a measurement) at the models' token counts.
    #[test]
    fn metal_attention_cases_run_on_both_paths() {
        use crate::ops::metal::dispatch::{attention_bk, sdpa_shape};
        let cases = metal_attention_cases();
        let mut tokens = std::collections::BTreeSet::new();
        for case in &cases {
            let Op::Attention {
                q, kv, head_dim, ..
            } = &case.op
            else {
                panic!("{}", case.op);
            };
            let offsets = |lens: &[usize]| {
                let mut o = vec![0];
                o.extend(lens.iter().scan(0, |a, l| {
                    *a += l;
                    Some(*a)
                }));
                o
            };
            let kv = kv.clone().unwrap_or(q.clone());
            for &dtype in case.dtypes {
                sdpa_shape(&offsets(q), &offsets(&kv), *head_dim, dtype).unwrap();
            }
            attention_bk(*head_dim).unwrap();
            tokens.extend(q.iter().chain(&kv).copied());
        }
        assert_eq!(
            tokens.into_iter().collect::<Vec<_>>(),
            [1029, 3712, 4101, 15272]
        );
    }

    /// Case labels name every parameter, so two cases of one size never print alike (an edge
    /// case may repeat a throughput shape under a tighter bound).
    #[test]
    fn selftest_cases_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for case in cases() {
            let label = case.op.to_string();
            assert!(
                seen.insert((label.clone(), case.size)),
                "two cases print as {label}"
            );
            assert!(!case.dtypes.is_empty(), "{label}");
        }
    }
}
