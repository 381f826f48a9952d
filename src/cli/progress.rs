//! Showing a run's progress: indicatif bars on a terminal (one per stage with step count and
//! ETA, plus an overall bar for batches), a plain log line per stage otherwise, nothing with
//! `--quiet`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use trellis2::pipeline::{Progress, StageReport};

enum Mode {
    Bars {
        multi: MultiProgress,
        overall: Option<ProgressBar>,
        stage: Option<ProgressBar>,
    },
    Log,
    Quiet,
}

/// Progress of a whole `generate` invocation.
pub struct CliProgress {
    mode: Mode,
    /// The item being generated, for log lines.
    item: String,
    /// Labels of the items to generate, by batch position, and when each last resumed.
    labels: Vec<String>,
    resumed: Vec<Option<Instant>>,
}

impl CliProgress {
    /// Bars when stdout is a terminal, a log otherwise; `items` > 1 adds an overall bar.
    pub fn new(quiet: bool, items: usize) -> Self {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stdout().is_terminal() {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let overall = (items > 1).then(|| {
                let bar = multi.add(ProgressBar::new(items as u64));
                bar.set_style(
                    ProgressStyle::with_template("images {bar:30} {pos}/{len}  eta {eta}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar
            });
            Mode::Bars {
                multi,
                overall,
                stage: None,
            }
        } else {
            Mode::Log
        };
        Self {
            mode,
            item: String::new(),
            labels: Vec::new(),
            resumed: Vec::new(),
        }
    }

    /// The labels of the items the pipeline will run, by batch position.
    pub fn set_items(&mut self, labels: Vec<String>) {
        self.resumed = vec![None; labels.len()];
        self.labels = labels;
    }

    /// Names batch item `index` in the lines that follow, without restarting it.
    pub fn select(&mut self, index: usize) {
        if let Some(label) = self.labels.get(index) {
            self.item.clone_from(label);
        }
    }

    /// When batch item `index`'s work last resumed (now if it never started).
    pub fn resumed(&self, index: usize) -> Instant {
        self.resumed
            .get(index)
            .copied()
            .flatten()
            .unwrap_or_else(Instant::now)
    }

    /// The current item finished (in any way).
    pub fn item_done(&mut self) {
        if let Mode::Bars {
            overall: Some(bar), ..
        } = &self.mode
        {
            bar.inc(1);
        }
    }

    /// A line that does not disturb the bars.
    pub fn line(&self, text: &str) {
        match &self.mode {
            Mode::Bars { multi, .. } => {
                let _ = multi.println(text);
            }
            Mode::Log => println!("{text}"),
            Mode::Quiet => {}
        }
    }

    pub fn finish(&mut self) {
        if let Mode::Bars { overall, stage, .. } = &mut self.mode {
            for bar in [overall.take(), stage.take()].into_iter().flatten() {
                bar.finish_and_clear();
            }
        }
    }
}

fn describe(r: &StageReport) -> String {
    let mut s = format!("{:<16} {:>7.2} s", r.stage, r.seconds);
    if let Some(t) = r.tokens {
        s += &format!("  {t} tokens");
    }
    if let Some(v) = r.voxels {
        s += &format!("  {v} voxels");
    }
    if let Some(t) = r.tflop_per_s {
        s += &format!("  {t:.1} TFLOP/s");
    }
    if let Some(b) = r.peak_rss_bytes {
        s += &format!("  peak {} MiB", b >> 20);
    }
    if let Some(b) = r.peak_gpu_bytes {
        s += &format!("  GPU peak {} MiB", b >> 20);
    }
    s
}

impl Progress for CliProgress {
    fn item_started(&mut self, index: usize) {
        let first = self.resumed.get(index).is_some_and(|r| r.is_none());
        if let Some(r) = self.resumed.get_mut(index) {
            *r = Some(Instant::now());
        }
        let name = self.labels.get(index).cloned().unwrap_or_default();
        if first {
            if let Mode::Log = self.mode {
                println!("{name}: started");
            }
        }
        self.item = name;
    }

    fn stage_started(&mut self, stage: &str, steps: usize) {
        if let Mode::Bars {
            multi, stage: bar, ..
        } = &mut self.mode
        {
            let b = multi.add(ProgressBar::new(steps as u64));
            b.set_style(
                ProgressStyle::with_template("{prefix:<16} {bar:30} {pos}/{len}  eta {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b.set_prefix(stage.to_string());
            b.enable_steady_tick(Duration::from_millis(200));
            if let Some(old) = bar.replace(b) {
                old.finish_and_clear();
            }
        }
    }

    fn step(&mut self, _stage: &str, done: usize) {
        if let Mode::Bars {
            stage: Some(bar), ..
        } = &self.mode
        {
            bar.set_position(done as u64);
        }
    }

    fn stage_finished(&mut self, report: &StageReport) {
        let text = format!("{}: {}", self.item, describe(report));
        match &mut self.mode {
            Mode::Bars { multi, stage, .. } => {
                if let Some(bar) = stage.take() {
                    bar.finish_and_clear();
                }
                let _ = multi.println(text);
            }
            Mode::Log => println!("{text}"),
            Mode::Quiet => {}
        }
    }
}
