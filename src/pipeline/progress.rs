//! How a run tells its caller what it is doing: stage start, steps, and a report per stage.
//! The CLI turns these into progress bars or a plain log; the library never prints.

/// A stage's measurements.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct StageReport {
    /// `preprocess`, `conditioning`, `sparse_structure`, `shape`, `shape_lr`, `cascade`,
    /// `shape_hr`, `texture`, `decode`.
    pub stage: String,
    pub seconds: f64,
    /// Tokens the stage's flow model ran on (latent voxels), if it has one.
    pub tokens: Option<usize>,
    /// Voxels the stage produced (occupied cells, decoder voxels), if any.
    pub voxels: Option<usize>,
    /// Model forward passes.
    pub model_calls: usize,
    /// Peak resident memory during the stage (or the process peak where it cannot be reset);
    /// `None` where the OS does not report it.
    pub peak_rss_bytes: Option<u64>,
    /// Peak memory in use on the GPU during the stage (the whole card, sampled every 5 ms);
    /// CUDA only.
    pub peak_gpu_bytes: Option<u64>,
    /// FLOPs of the stage's flow-transformer calls as docs/MODEL.md §9 counts them (2 per multiply-add:
    /// linears, self- and cross-attention), if it ran one.
    pub flops: Option<f64>,
    /// `flops / seconds` in TFLOP/s.
    pub tflop_per_s: Option<f64>,
    /// Seconds of `seconds` spent reading model weights (a model not yet held when the stage
    /// needed it); absent when none was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_seconds: Option<f64>,
    /// Seconds of named parts of the stage (the decode stage: `shape_decoder`, `tex_decoder`),
    /// loads left out.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub parts: std::collections::BTreeMap<String, f64>,
}

/// Receives progress; every method has a do-nothing default.
pub trait Progress {
    /// Work on batch item `index` (0-based) starts or resumes: a batch run stage by stage
    /// returns to each picture once per stage.
    fn item_started(&mut self, _index: usize) {}
    /// `stage` starts and will take `steps` steps (model calls for sampling stages, else 1).
    fn stage_started(&mut self, _stage: &str, _steps: usize) {}
    /// `done` of the announced steps are finished.
    fn step(&mut self, _stage: &str, _done: usize) {}
    fn stage_finished(&mut self, _report: &StageReport) {}
}

/// Ignores progress.
pub struct NoProgress;

impl Progress for NoProgress {}
