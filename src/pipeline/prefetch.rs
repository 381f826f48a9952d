//! Reading the weight files a run will load into the OS page cache on background threads, in the
//! order the schedule loads them, so that a fresh machine's disk keeps reading while the first
//! picture's stages compute: each model's load then copies pages already in memory instead of
//! waiting on the disk (`TRELLIS2_PREFETCH`; on an H100 machine the 11 GB of a `512` run took
//! 7.2 s to read with one reader, against ≈ 1.5 s of warm stage compute).
//!
//! Why plain reads: `read`s of 8 MiB pieces into reused buffers fill the page cache in the
//! schedule's order, and the threads can count what they read, stop between pieces and pass over
//! a model the run already holds. `madvise(WILLNEED)` on the mappings (or `posix_fadvise`) would
//! queue every file's read-ahead at once, with no order between files, no word on how far it got
//! and an unsafe call per mapping; what the reads cost is one copy per page into a buffer that is
//! thrown away (about a second of one core for 11 GB). Several readers take the next pieces side
//! by side: one request at a time leaves a disk (a cloud machine's virtual disk above all) idle
//! between requests, and with four the page cache still fills front to back, four pieces at once.
//!
//! Bounds: nothing under `--low-memory` (its streamed weights are there to hold less, not more);
//! files are taken in order while their sum stays within half the host's available memory
//! (`MemAvailable` when the run starts), so read-ahead never pushes out pages of a model the run
//! needs sooner; a model the pipeline already holds (an earlier run's) is passed over.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

use serde::Serialize;

use super::config::PipelineType;
use super::model_cache::ModelCache;
use super::models::{dinov3_folder, role};
use super::run::pipeline_roles;
use crate::weights::{Checkpoint, ModelDir};

/// Bytes per read: large enough that the disk streams, small enough to stop soon.
const CHUNK: usize = 8 << 20;

/// One weight file to read ahead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WeightFile {
    pub role: &'static str,
    pub path: PathBuf,
    pub bytes: u64,
}

/// One file the read-ahead went through.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PrefetchedFile {
    pub role: String,
    pub bytes: u64,
    /// Seconds from the read-ahead's start until the file was read (or passed over).
    pub done_seconds: f64,
    /// Not read: the pipeline already held the model when its turn came.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

/// What the read-ahead did (`--report`'s `weight_prefetch`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PrefetchReport {
    /// Bytes read into the page cache.
    pub bytes: u64,
    /// Wall seconds of the whole read-ahead.
    pub seconds: f64,
    /// Threads that read side by side (`TRELLIS2_PREFETCH`).
    pub readers: usize,
    /// The bound: half the host's available memory when it started (`None`: not known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_bytes: Option<u64>,
    /// The files, in the order read.
    pub files: Vec<PrefetchedFile>,
    /// Roles left out because the bound was reached.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub over_budget: Vec<String>,
    /// A read that failed (the run reads that model itself and reports any error then).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// The weight files of `ptype`'s models in the order the schedule first loads them (the
/// background remover aside: it is the first model loaded, so nothing is ahead of it). A role
/// whose file cannot be found is left out; the run's own load names what is missing.
pub(crate) fn weight_files(dir: &ModelDir, ptype: PipelineType) -> Vec<WeightFile> {
    pipeline_roles(ptype)
        .into_iter()
        .filter_map(|r| {
            let path = if r == role::IMAGE_COND {
                dinov3_folder(dir).ok()?.join("model.safetensors")
            } else {
                Checkpoint::weights_path(&dir.resolve(r).ok()?)
            };
            let bytes = std::fs::metadata(&path).ok()?.len();
            Some(WeightFile {
                role: r,
                path,
                bytes,
            })
        })
        .collect()
}

/// The files of `files` (in their order) to read: each once, the leading ones whose sum stays
/// within `budget` (`None`: unbounded); the second list names the roles cut off.
pub(crate) fn plan(
    files: Vec<WeightFile>,
    budget: Option<u64>,
) -> (Vec<WeightFile>, Vec<&'static str>) {
    let mut taken: Vec<WeightFile> = Vec::new();
    let mut cut = Vec::new();
    let mut sum = 0u64;
    for f in files {
        if taken.iter().any(|t| t.path == f.path) {
            continue;
        }
        if !cut.is_empty() || budget.is_some_and(|b| sum + f.bytes > b) {
            // Order matters more than filling the budget: a later file read while an earlier
            // one is not would sit in memory the earlier one needs.
            cut.push(f.role);
            continue;
        }
        sum += f.bytes;
        taken.push(f);
    }
    (taken, cut)
}

/// `files` less those an earlier read-ahead of this process took already (the workers of
/// `--device cuda:0,cuda:1` each have a pipeline over the same files; one read fills the page
/// cache for all).
pub(crate) fn unclaimed(files: Vec<WeightFile>) -> Vec<WeightFile> {
    static CLAIMED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
    let fresh: Vec<WeightFile> = files
        .into_iter()
        .filter(|f| !claimed.contains(&f.path))
        .collect();
    claimed.extend(fresh.iter().map(|f| f.path.clone()));
    fresh
}

/// The read-ahead thread of one pipeline; dropping it stops the reads and waits for the thread.
pub(crate) struct Prefetcher {
    stop: Arc<AtomicBool>,
    worker: Mutex<Option<JoinHandle<PrefetchReport>>>,
    report: Mutex<Option<PrefetchReport>>,
}

impl Prefetcher {
    /// Starts reading `files` (already [`plan`]ned) with `readers` threads, passing over the
    /// roles `models` holds when their turn comes. `None` when no thread could be started (the
    /// run reads as without it).
    pub fn start(
        files: Vec<WeightFile>,
        budget: Option<u64>,
        over_budget: Vec<&'static str>,
        models: Arc<ModelCache>,
        readers: usize,
    ) -> Option<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let worker = std::thread::Builder::new()
            .name("weight-prefetch".into())
            .spawn(move || {
                let mut report = read_ahead(&files, &flag, |r| models.holds(r), readers);
                report.budget_bytes = budget;
                report.over_budget = over_budget.iter().map(|r| r.to_string()).collect();
                report
            })
            .ok()?;
        Some(Self {
            stop,
            worker: Mutex::new(Some(worker)),
            report: Mutex::new(None),
        })
    }

    /// Waits for the read-ahead to end and says what it did.
    pub fn finish(&self) -> PrefetchReport {
        let worker = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take();
        let mut report = self.report.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = worker {
            *report = Some(w.join().unwrap_or_else(|_| PrefetchReport {
                errors: vec!["the read-ahead thread panicked".into()],
                ..Default::default()
            }));
        }
        report.clone().unwrap_or_default()
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.finish();
    }
}

/// Reads `files` in order to their ends (until `stop`), passing over those whose role `held`
/// says is loaded already: `readers` threads (at least one), each taking the next [`CHUNK`] of
/// the files in order, so that the disk has as many requests in flight and the page cache still
/// fills front to back (a piece starts once every earlier one has started). A model is passed
/// over (or found unreadable) when its first piece comes up; the report lists the files read to
/// their end (a stop leaves the rest out).
fn read_ahead(
    files: &[WeightFile],
    stop: &AtomicBool,
    held: impl Fn(&str) -> bool + Sync,
    readers: usize,
) -> PrefetchReport {
    let readers = readers.max(1);
    let start = Instant::now();
    // Every file has at least one piece, so that an empty one is still opened and checked.
    let count = |f: &WeightFile| f.bytes.div_ceil(CHUNK as u64).max(1) as usize;
    let pieces: Vec<(usize, u64)> = files
        .iter()
        .enumerate()
        .flat_map(|(i, f)| (0..count(f)).map(move |k| (i, k as u64 * CHUNK as u64)))
        .collect();
    let left: Vec<AtomicUsize> = files.iter().map(|f| AtomicUsize::new(count(f))).collect();
    let skipped: Vec<OnceLock<bool>> = files.iter().map(|_| OnceLock::new()).collect();
    let failed: Vec<OnceLock<String>> = files.iter().map(|_| OnceLock::new()).collect();
    let done: Vec<OnceLock<f64>> = files.iter().map(|_| OnceLock::new()).collect();
    let (next, bytes) = (AtomicUsize::new(0), AtomicU64::new(0));
    std::thread::scope(|scope| {
        for _ in 0..readers {
            scope.spawn(|| {
                let mut buffer = vec![0u8; CHUNK];
                let mut open: Option<(usize, std::fs::File)> = None;
                while !stop.load(Ordering::Relaxed) {
                    let Some(&(i, offset)) = pieces.get(next.fetch_add(1, Ordering::Relaxed))
                    else {
                        break;
                    };
                    let f = &files[i];
                    if !*skipped[i].get_or_init(|| held(f.role)) && failed[i].get().is_none() {
                        match read_piece(&mut open, i, &f.path, offset, &mut buffer) {
                            Ok(n) => {
                                bytes.fetch_add(n, Ordering::Relaxed);
                            }
                            Err(e) => {
                                let _ = failed[i].set(format!("{}: {e}", f.path.display()));
                            }
                        }
                    }
                    if left[i].fetch_sub(1, Ordering::AcqRel) == 1 {
                        let _ = done[i].set(start.elapsed().as_secs_f64());
                    }
                }
            });
        }
    });
    PrefetchReport {
        bytes: bytes.into_inner(),
        seconds: start.elapsed().as_secs_f64(),
        files: files
            .iter()
            .enumerate()
            .filter_map(|(i, f)| {
                Some(PrefetchedFile {
                    role: f.role.to_string(),
                    bytes: f.bytes,
                    done_seconds: *done[i].get()?,
                    skipped: skipped[i].get().copied().unwrap_or(false),
                })
            })
            .collect(),
        errors: failed
            .into_iter()
            .filter_map(OnceLock::into_inner)
            .collect(),
        readers,
        ..Default::default()
    }
}

/// Reads the [`CHUNK`] of file `index` (`path`) at `offset` through `buffer`, reusing the
/// thread's open file when it is that one; the bytes read (fewer at the file's end).
fn read_piece(
    open: &mut Option<(usize, std::fs::File)>,
    index: usize,
    path: &Path,
    offset: u64,
    buffer: &mut [u8],
) -> std::io::Result<u64> {
    let file = match open {
        Some((i, file)) if *i == index => file,
        _ => &mut open.insert((index, std::fs::File::open(path)?)).1,
    };
    file.seek(SeekFrom::Start(offset))?;
    let mut total = 0usize;
    while total < buffer.len() {
        match file.read(&mut buffer[total..]) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total as u64)
}

/// Half of what the host has available now (`None` where the OS does not say).
pub(crate) fn host_budget() -> Option<u64> {
    crate::ops::device_memory(&candle_core::Device::Cpu).map(|m| m.free / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(role: &'static str, path: &str, bytes: u64) -> WeightFile {
        WeightFile {
            role,
            path: PathBuf::from(path),
            bytes,
        }
    }

    #[test]
    fn plan_keeps_the_order_and_cuts_at_the_budget() {
        let files = vec![
            file("a", "a.st", 40),
            file("b", "b.st", 30),
            file("c", "c.st", 50),
            file("d", "d.st", 5),
        ];
        let (all, cut) = plan(files.clone(), None);
        assert_eq!(all, files);
        assert!(cut.is_empty());
        // b fits (70 ≤ 100), c does not (120); d would fit but comes after c.
        let (some, cut) = plan(files.clone(), Some(100));
        assert_eq!(some, files[..2].to_vec());
        assert_eq!(cut, vec!["c", "d"]);
        let (none, cut) = plan(files, Some(10));
        assert!(none.is_empty());
        assert_eq!(cut, vec!["a", "b", "c", "d"]);
    }

    #[test]
    fn a_file_is_claimed_by_one_read_ahead_of_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let f = |name: &str| WeightFile {
            role: "r",
            path: dir.path().join(name),
            bytes: 1,
        };
        assert_eq!(unclaimed(vec![f("a"), f("b")]), vec![f("a"), f("b")]);
        assert_eq!(unclaimed(vec![f("b"), f("c")]), vec![f("c")]);
    }

    #[test]
    fn plan_reads_a_file_two_roles_share_once() {
        let (p, _) = plan(
            vec![
                file("a", "x.st", 10),
                file("b", "x.st", 10),
                file("c", "y.st", 1),
            ],
            Some(11),
        );
        assert_eq!(p, vec![file("a", "x.st", 10), file("c", "y.st", 1)]);
    }

    #[test]
    fn reads_every_file_in_order_and_passes_over_held_models() {
        let dir = tempfile::tempdir().unwrap();
        let sizes = [CHUNK + 123, 7, 0, 3 * CHUNK];
        let files: Vec<WeightFile> = ["a", "b", "c", "d"]
            .iter()
            .zip(sizes)
            .map(|(role, n)| {
                let path = dir.path().join(format!("{role}.safetensors"));
                std::fs::write(&path, vec![1u8; n]).unwrap();
                WeightFile {
                    role,
                    path,
                    bytes: n as u64,
                }
            })
            .collect();
        // One reader, and several side by side (more than the pieces, too): the same report.
        for readers in [1, 3, 16] {
            let stop = AtomicBool::new(false);
            let report = read_ahead(&files, &stop, |r| r == "b", readers);
            assert_eq!(report.bytes, (4 * CHUNK + 123) as u64, "{readers} readers");
            assert_eq!(report.readers, readers);
            let roles: Vec<(&str, bool)> = report
                .files
                .iter()
                .map(|f| (f.role.as_str(), f.skipped))
                .collect();
            assert_eq!(
                roles,
                vec![("a", false), ("b", true), ("c", false), ("d", false)]
            );
            assert!(report.errors.is_empty(), "{:?}", report.errors);
            // Stopped before it starts: nothing read.
            stop.store(true, Ordering::Relaxed);
            let stopped = read_ahead(&files, &stop, |_| false, readers);
            assert_eq!((stopped.bytes, stopped.files.len()), (0, 0));
        }
        // A file gone since the plan is an error of the report, not of the run; the others
        // are still read.
        std::fs::remove_file(&files[2].path).unwrap();
        for readers in [1, 3] {
            let gone = read_ahead(&files[1..], &AtomicBool::new(false), |_| false, readers);
            assert_eq!(gone.errors.len(), 1, "{gone:?}");
            assert!(gone.errors[0].contains("c.safetensors"), "{gone:?}");
            assert_eq!(gone.bytes, (3 * CHUNK + 7) as u64, "{readers} readers");
        }
    }

    /// The tiny golden model's files come in the schedule's order: conditioning, structure,
    /// shape and its decoder, texture and its decoder.
    #[test]
    fn weight_files_follow_the_schedule() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden");
        let dir = ModelDir::open(&root).unwrap();
        let roles = |t| -> Vec<&str> { weight_files(&dir, t).iter().map(|f| f.role).collect() };
        assert_eq!(
            roles(PipelineType::P512),
            vec![
                role::IMAGE_COND,
                role::SS_FLOW,
                role::SS_DECODER,
                role::SHAPE_FLOW_512,
                role::SHAPE_DECODER,
                role::TEX_FLOW_512,
                role::TEX_DECODER,
            ]
        );
        assert_eq!(
            roles(PipelineType::Cascade1024),
            vec![
                role::IMAGE_COND,
                role::SS_FLOW,
                role::SS_DECODER,
                role::SHAPE_FLOW_512,
                role::SHAPE_DECODER,
                role::SHAPE_FLOW_1024,
                role::TEX_FLOW_1024,
                role::TEX_DECODER,
            ]
        );
        for f in weight_files(&dir, PipelineType::P512) {
            assert!(f.path.is_file() && f.bytes > 0, "{f:?}");
        }
    }
}
