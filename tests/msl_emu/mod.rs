//! Runs `kernels/metal/*.metal` on the CPU: translate the MSL to C++ (translate.rs), compile it
//! with the system `c++` against msl.h and driver.cpp, and execute dispatch plans through the
//! driver binary, exchanging buffers through files (driver.cpp documents the format).

mod translate;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

pub use translate::translate;

/// What one argument slot `[[buffer(i)]]` is bound to.
pub enum Slot {
    /// A buffer of the run, by index.
    Buffer(u32),
    /// `setBytes` data.
    Bytes(Vec<u8>),
    /// A buffer of the run from a byte offset (`setBuffer:offset:`, a view starting mid-buffer).
    BufferAt(u32, u64),
}

/// One `dispatchThreadgroups` call.
pub struct EmuDispatch {
    pub kernel: String,
    pub threadgroups: [u32; 3],
    pub threads: [u32; 3],
    pub slots: Vec<(u32, Slot)>,
    pub threadgroup_memory: Vec<u64>,
}

/// One emulator per kernel file, built by the first test that asks for it.
type EmulatorCache = Mutex<HashMap<String, Arc<OnceLock<Arc<Emulator>>>>>;

/// A compiled emulator for one `.metal` file.
pub struct Emulator {
    exe: PathBuf,
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn work_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("msl_emu");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn cxx() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "c++".into())
}

fn run_checked(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Emulator {
    /// The emulator of `kernels/metal/<stem>.metal`, built once per test process.
    pub fn get(stem: &str) -> Arc<Emulator> {
        static CACHE: OnceLock<EmulatorCache> = OnceLock::new();
        let cell = CACHE
            .get_or_init(Default::default)
            .lock()
            .unwrap()
            .entry(stem.to_string())
            .or_default()
            .clone();
        cell.get_or_init(|| {
            let src = std::fs::read_to_string(repo().join(format!("kernels/metal/{stem}.metal")))
                .unwrap();
            Arc::new(Emulator::build(stem, &src))
        })
        .clone()
    }

    /// Compiles MSL source `src` (as if it were `kernels/metal/<name>.metal`).
    pub fn build(name: &str, src: &str) -> Emulator {
        let dir = work_dir();
        let metal = dir.join(format!("{name}.metal"));
        std::fs::write(&metal, src).unwrap();
        // Pass 1: expand the kernel's own macros and includes with an empty <metal_stdlib>, so
        // that the attributes survive intact for translate().
        let expanded = run_checked(
            Command::new(cxx())
                .args(["-E", "-x", "c++", "-std=c++20", "-D__HAVE_BFLOAT__=1"])
                .arg("-I")
                .arg(repo().join("tests/msl_emu/stub"))
                .arg("-I")
                .arg(repo().join("kernels/metal"))
                .arg(&metal),
            "preprocessing the kernel",
        );
        let cpp = dir.join(format!("{name}.emu.cpp"));
        let header = repo().join("tests/msl_emu/msl.h");
        std::fs::write(&cpp, translate(&expanded, &header)).unwrap();
        let exe = dir.join(format!("{name}.emu"));
        run_checked(
            Command::new(cxx())
                .args(["-std=c++20", "-O2", "-Wno-attributes", "-pthread", "-o"])
                .arg(&exe)
                .arg(&cpp)
                .arg(repo().join("tests/msl_emu/driver.cpp")),
            "compiling the emulated kernel",
        );
        Emulator { exe }
    }

    /// Kernel names the compiled file registers.
    pub fn kernels(&self) -> Vec<String> {
        run_checked(Command::new(&self.exe).arg("list"), "listing kernels")
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// `sizeof`/`offsetof` lines for the kargs.h structs.
    pub fn layout(&self) -> String {
        run_checked(Command::new(&self.exe).arg("layout"), "printing layouts")
    }

    /// Runs `dispatches` in order over `buffers`; returns the buffers afterwards, or the
    /// emulator's error (a deadlock report, a missing kernel...).
    pub fn run(
        &self,
        buffers: &[Vec<u8>],
        dispatches: &[EmuDispatch],
    ) -> Result<Vec<Vec<u8>>, String> {
        static RUN: AtomicUsize = AtomicUsize::new(0);
        let id = RUN.fetch_add(1, Ordering::Relaxed);
        let dir = work_dir();
        let input = dir.join(format!("run-{}-{id}.in", std::process::id()));
        let output = dir.join(format!("run-{}-{id}.out", std::process::id()));
        let mut b = Vec::new();
        let u32le = |b: &mut Vec<u8>, v: u32| b.extend_from_slice(&v.to_le_bytes());
        let u64le = |b: &mut Vec<u8>, v: u64| b.extend_from_slice(&v.to_le_bytes());
        u32le(&mut b, buffers.len() as u32);
        for buf in buffers {
            u64le(&mut b, buf.len() as u64);
            b.extend_from_slice(buf);
        }
        u32le(&mut b, dispatches.len() as u32);
        for d in dispatches {
            u32le(&mut b, d.kernel.len() as u32);
            b.extend_from_slice(d.kernel.as_bytes());
            d.threadgroups.iter().for_each(|&v| u32le(&mut b, v));
            d.threads.iter().for_each(|&v| u32le(&mut b, v));
            u32le(&mut b, d.slots.len() as u32);
            for (slot, what) in &d.slots {
                u32le(&mut b, *slot);
                match what {
                    Slot::Buffer(i) => {
                        u32le(&mut b, 0);
                        u32le(&mut b, *i);
                    }
                    Slot::Bytes(bytes) => {
                        u32le(&mut b, 1);
                        u64le(&mut b, bytes.len() as u64);
                        b.extend_from_slice(bytes);
                    }
                    Slot::BufferAt(i, offset) => {
                        u32le(&mut b, 2);
                        u32le(&mut b, *i);
                        u64le(&mut b, *offset);
                    }
                }
            }
            u32le(&mut b, d.threadgroup_memory.len() as u32);
            d.threadgroup_memory.iter().for_each(|&v| u64le(&mut b, v));
        }
        std::fs::write(&input, b).unwrap();
        let out = Command::new(&self.exe)
            .arg("run")
            .arg(&input)
            .arg(&output)
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&input);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let data = std::fs::read(&output).unwrap();
        let _ = std::fs::remove_file(&output);
        let mut at = 0;
        let mut take = |n: usize| {
            let s = &data[at..at + n];
            at += n;
            s
        };
        let count = u32::from_le_bytes(take(4).try_into().unwrap()) as usize;
        Ok((0..count)
            .map(|_| {
                let len = u64::from_le_bytes(take(8).try_into().unwrap()) as usize;
                take(len).to_vec()
            })
            .collect())
    }
}
