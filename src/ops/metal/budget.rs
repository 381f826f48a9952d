//! The GPU-time budget of a Metal command buffer (docs/METAL.md, "Watchdog and dispatch").
//!
//! macOS kills a command buffer that holds the GPU too long, so what must be bounded is the work
//! encoded into one command buffer, not the size of one dispatch. Every planned dispatch states
//! its work ([`Work`]: FLOPs and bytes); [`seconds`] turns that into estimated GPU time on the
//! smallest Apple GPU trellis2 targets ([`BASE_M1`]); [`CommandBudget`] tells the host to commit
//! the command buffer before a dispatch that would take the buffer's estimate past
//! [`COMMAND_BUFFER_SECONDS`]. An op is split into several dispatches only when its own estimate
//! exceeds that limit, into as few as needed ([`parts`]).
//!
//! [`CommandStream`] models candle's command stream as the Metal host drives it (candle's own
//! commit every [`candle_encoders_per_buffer`] encoders plus the budget's commits), so that
//! `trellis2 dev metal-plan` and the tests see the command buffers a Mac would. Backend-free.

pub use crate::ops::vocab::Work;

/// The throughput a GPU is assumed to reach, for estimates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GpuThroughput {
    pub name: &'static str,
    /// Peak FLOP/s of the ALUs (a fused multiply-add counts 2).
    pub peak_flops: f64,
    /// Fraction of the peak that the matrix kernels (ours on `simdgroup_matrix`, candle's MLX
    /// GEMM) are assumed to reach.
    pub compute_efficiency: f64,
    /// Device memory bandwidth in bytes/s.
    pub bandwidth: f64,
    /// Fraction of the bandwidth that streaming kernels are assumed to reach.
    pub memory_efficiency: f64,
    /// Fixed cost of one dispatch: its launch and the barrier before it.
    pub dispatch_seconds: f64,
}

/// The base M1 (8-core GPU, 1,024 ALUs at 1.278 GHz: 2.6 TFLOP/s f32 and f16; LPDDR4X-4266 on a
/// 128-bit bus: 68.25 GB/s), at 40% of peak for matrix kernels and 70% of the bandwidth for
/// streaming ones. The efficiencies are assumptions until measured on a Mac
/// (`trellis2 selftest` prints each kernel's GFLOP/s and GB/s); lower real efficiency makes a
/// command buffer run longer than its estimate, which the limit leaves room for.
pub const BASE_M1: GpuThroughput = GpuThroughput {
    name: "Apple M1, 8-core GPU",
    peak_flops: 2.6e12,
    compute_efficiency: 0.4,
    bandwidth: 68.25e9,
    memory_efficiency: 0.7,
    dispatch_seconds: 10e-6,
};

impl GpuThroughput {
    /// Estimated GPU seconds of `work`: bound by compute or by memory, whichever is slower.
    pub fn seconds(&self, work: Work) -> f64 {
        let compute = work.flops / (self.peak_flops * self.compute_efficiency);
        let memory = work.bytes / (self.bandwidth * self.memory_efficiency);
        compute.max(memory) + self.dispatch_seconds
    }
}

/// Estimated GPU seconds of `work` on the [`BASE_M1`].
pub fn seconds(work: Work) -> f64 {
    BASE_M1.seconds(work)
}

/// Estimated GPU seconds one command buffer may hold on the [`BASE_M1`]. The macOS watchdog's
/// limit is undocumented and reported kills come after seconds, so 0.5 s leaves a factor of
/// several for estimation error (a kernel reaching a quarter of the assumed efficiency) and
/// thermal throttling, and keeps the window server's waits for the GPU short. A commit costs
/// microseconds, so half a second of work per command buffer makes commits negligible.
pub const COMMAND_BUFFER_SECONDS: f64 = 0.5;

/// Dispatches an op of `units` independent tiles and `seconds` estimated GPU time is split into
/// so that each stays within `max_seconds`: 1 while the op fits, never more than `units`
/// (`max_seconds <= 0` gives one tile per dispatch, the most a plan can split: the emulator
/// tests run that too).
pub fn parts(seconds: f64, max_seconds: f64, units: usize) -> usize {
    if units == 0 {
        return 0;
    }
    if max_seconds <= 0.0 {
        return units;
    }
    ((seconds / max_seconds).ceil() as usize).clamp(1, units)
}

/// A matrix product `[m, k] · [k, n]` with `elem`-byte operands and output.
pub fn matmul_work(m: usize, k: usize, n: usize, elem: usize) -> Work {
    let (m, k, n) = (m as f64, k as f64, n as f64);
    Work {
        flops: 2.0 * m * k * n,
        bytes: (m * k + k * n + m * n) * elem as f64,
    }
}

/// The estimated GPU time of the command buffer being encoded, and when to commit it.
#[derive(Clone, Debug, PartialEq)]
pub struct CommandBudget {
    limit: f64,
    used: f64,
}

impl CommandBudget {
    pub const fn new(limit: f64) -> Self {
        Self { limit, used: 0.0 }
    }

    /// Accounts a dispatch of `seconds`: `true` when the command buffer must be committed
    /// before it (the dispatch then opens the next one). A dispatch over the limit on its own
    /// gets a command buffer of its own.
    pub fn admit(&mut self, seconds: f64) -> bool {
        let commit = self.used > 0.0 && self.used + seconds > self.limit;
        if commit {
            self.used = 0.0;
        }
        self.used += seconds;
        commit
    }

    /// Estimated seconds accounted since the last commit.
    pub fn used(&self) -> f64 {
        self.used
    }
}

/// Compute encoders candle puts into one command buffer before it commits it, when
/// `CANDLE_METAL_COMPUTE_PER_BUFFER` does not say otherwise (candle-metal-kernels 0.11.1,
/// `metal/commands.rs`).
pub const CANDLE_ENCODERS_PER_BUFFER: usize = 50;

/// `CANDLE_METAL_COMPUTE_PER_BUFFER` read as candle reads it (a number, else the default).
pub fn candle_encoders_per_buffer() -> usize {
    std::env::var("CANDLE_METAL_COMPUTE_PER_BUFFER")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CANDLE_ENCODERS_PER_BUFFER)
}

/// candle's command stream as the Metal host drives it, for plans and tests: every dispatch
/// (ours and candle's) takes an encoder, and candle commits when the buffer's encoder count is
/// reached; before a dispatch the budget accounts (the host's `ops::metal` forwards and linear
/// layers), [`CommandBudget`] may commit first. The host commits without waiting by taking
/// `encoders_per_buffer` empty encoders: candle 0.11.1's `Commands::flush` (commit, no wait) is
/// unreachable from outside candle (`MetalDevice::commands` is `pub(crate)`), its
/// `wait_until_completed` and `flush_and_wait_current` wait, and `command_encoder()` commits
/// first once the buffer's count has reached the limit; so from any count ≥ 1 exactly one of
/// the empty encoders commits, and the count ends where it started (candle's next own commit
/// comes early, never late). The host's budget does not see candle's own commits nor untracked
/// dispatches, and neither does the model's.
#[derive(Clone, Debug)]
pub struct CommandStream {
    encoders_per_buffer: usize,
    budget: CommandBudget,
    /// candle's encoder count of the current command buffer.
    encoders: usize,
    /// Index of the current command buffer.
    buffer: usize,
    /// Estimated seconds of every command buffer so far, tracked dispatches or not.
    buffer_seconds: Vec<f64>,
    /// Whether the current command buffer holds a dispatch.
    dispatched: bool,
}

impl CommandStream {
    pub fn new(encoders_per_buffer: usize, limit: f64) -> Self {
        Self {
            encoders_per_buffer,
            budget: CommandBudget::new(limit),
            encoders: 0,
            buffer: 0,
            buffer_seconds: vec![0.0],
            dispatched: false,
        }
    }

    /// candle's `command_encoder()`: commits first when the count is reached.
    fn take_encoder(&mut self) {
        let before = self.encoders;
        self.encoders += 1;
        if before >= self.encoders_per_buffer {
            self.commit();
            self.encoders = 1;
        }
    }

    /// A commit; an empty command buffer (nothing dispatched since the last commit) is not
    /// counted as one.
    fn commit(&mut self) {
        if self.dispatched {
            self.buffer += 1;
            self.buffer_seconds.push(0.0);
            self.dispatched = false;
        }
    }

    /// One dispatch of `seconds`; `tracked` when the host accounts it in the budget. Returns
    /// the command buffer it lands in.
    pub fn dispatch(&mut self, seconds: f64, tracked: bool) -> usize {
        if tracked && self.budget.admit(seconds) {
            for _ in 0..self.encoders_per_buffer {
                self.take_encoder();
            }
        }
        self.take_encoder();
        self.dispatched = true;
        self.buffer_seconds[self.buffer] += seconds;
        self.buffer
    }

    /// Command buffers holding at least one dispatch.
    pub fn command_buffers(&self) -> usize {
        self.buffer + usize::from(self.dispatched)
    }

    /// Estimated seconds of each command buffer so far.
    pub fn buffer_seconds(&self) -> &[f64] {
        &self.buffer_seconds[..self.command_buffers()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_commits_before_the_dispatch_that_overflows() {
        let mut b = CommandBudget::new(1.0);
        assert!(!b.admit(0.4));
        assert!(!b.admit(0.6));
        assert!(b.admit(0.1));
        assert!((b.used() - 0.1).abs() < 1e-12);
        // Over the limit alone: its own command buffer, and the next one starts afresh.
        assert!(b.admit(3.0));
        assert!(b.admit(0.1));
    }

    #[test]
    fn parts_split_only_what_exceeds_the_limit() {
        assert_eq!(parts(0.3, 0.5, 100), 1);
        assert_eq!(parts(1.2, 0.5, 100), 3);
        assert_eq!(parts(1.2, 0.5, 2), 2);
        assert_eq!(parts(1.2, 0.0, 7), 7);
        assert_eq!(parts(1.2, 0.5, 0), 0);
    }

    #[test]
    fn the_stream_commits_on_candles_count_and_on_the_budget() {
        let mut s = CommandStream::new(3, 1.0);
        // candle: three encoders a buffer.
        let buffers: Vec<usize> = (0..7).map(|_| s.dispatch(0.01, false)).collect();
        assert_eq!(buffers, [0, 0, 0, 1, 1, 1, 2]);
        // The budget: a tracked dispatch that overflows opens a new buffer at once, and the
        // count goes on from where it was (2), so candle commits again one dispatch later.
        assert_eq!(s.dispatch(0.9, true), 2);
        assert_eq!(s.dispatch(0.2, true), 3);
        assert_eq!(s.dispatch(0.01, false), 4);
        assert_eq!(s.command_buffers(), 5);
        assert!(s.buffer_seconds()[2] > 0.9);
        // A full buffer: the empty encoders commit it, then the dispatch's own encoder commits
        // the empty buffer they opened, which is not counted.
        let mut s = CommandStream::new(2, 1.0);
        assert_eq!(s.dispatch(0.6, true), 0);
        assert_eq!(s.dispatch(0.01, false), 0);
        assert_eq!(s.dispatch(0.6, true), 1);
        assert_eq!(s.command_buffers(), 2);
        // Nothing dispatched yet: nothing to commit.
        let mut s = CommandStream::new(2, 0.1);
        assert_eq!(s.dispatch(0.6, true), 0);
        assert_eq!(s.buffer_seconds().len(), 1);
    }

    #[test]
    fn the_base_m1_is_compute_or_memory_bound() {
        let gemm = matmul_work(4096, 4096, 4096, 2);
        let t = seconds(gemm);
        assert!((t - 2.0 * 4096f64.powi(3) / 1.04e12).abs() < 1e-3, "{t}");
        let copy = Work::bytes(68.25e9 * 0.7);
        assert!((seconds(copy) - 1.0).abs() < 1e-3);
    }
}
