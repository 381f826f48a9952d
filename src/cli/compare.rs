//! `trellis2 compare A B`: the CI golden-output check.

use std::path::PathBuf;

use anyhow::Result;

use trellis2::compare::{compare_files, Report, Tolerance};

use super::values::non_negative;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// File under test (safetensors, PLY or GLB).
    pub a: PathBuf,
    /// Reference file of the same kind (a mesh PLY may be compared with a GLB).
    pub b: PathBuf,
    /// Absolute tolerance (≥ 0): values pass when |a - b| <= atol + rtol * |b|.
    #[arg(long, default_value_t = Tolerance::default().atol, value_parser = non_negative)]
    pub atol: f64,
    /// Relative tolerance (≥ 0, relative to B).
    #[arg(long, default_value_t = Tolerance::default().rtol, value_parser = non_negative)]
    pub rtol: f64,
    /// How many of the worst fields to print.
    #[arg(long, default_value_t = 10)]
    pub show: usize,
}

pub fn run(args: &Args) -> Result<u8> {
    let tol = Tolerance {
        atol: args.atol,
        rtol: args.rtol,
    };
    let report = match compare_files(&args.a, &args.b, tol) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(super::exit::UNREADABLE);
        }
    };
    print_report(&report, args.show);
    Ok(if report.passed() {
        super::exit::OK
    } else {
        super::exit::FAILED
    })
}

fn print_report(r: &Report, show: usize) {
    for s in &r.structural {
        println!("structure: {s}");
    }
    let worst = r.worst_fields();
    if !worst.is_empty() {
        let width = worst
            .iter()
            .take(show)
            .map(|f| f.name.len())
            .max()
            .unwrap_or(4);
        println!(
            "{:<width$}  {:>10}  {:>10}  {:>12}  worst element (index: A vs B)",
            "field", "max|a-b|", "max rel", "out of tol"
        );
        for f in worst.iter().take(show) {
            let at = f
                .worst
                .map(|(i, a, b)| format!("{i}: {a:.7e} vs {b:.7e}"))
                .unwrap_or_default();
            println!(
                "{:<width$}  {:>10.3e}  {:>10.3e}  {:>12}  {at}",
                f.name,
                f.max_abs,
                f.max_rel,
                format!("{}/{}", f.over, f.len)
            );
        }
        if worst.len() > show {
            println!("... {} more fields", worst.len() - show);
        }
    }
    let failed = r.fields.iter().filter(|f| !f.passed()).count();
    let verdict = if r.passed() { "PASS" } else { "FAIL" };
    println!(
        "{verdict}: {} {} fields compared, {failed} out of tolerance, {} structural differences \
         (atol {:e}, rtol {:e})",
        r.fields.len(),
        r.kind,
        r.structural.len(),
        r.tolerance.atol,
        r.tolerance.rtol
    );
}
