//! Runs `kernels/metal/*.metal` on the CPU: translate the MSL to C++ (translate.rs), compile it
//! with the system `c++` against msl.h (no standard library in scope) and link it with
//! driver.cpp, and execute dispatch plans through the driver binary, exchanging buffers through
//! files (driver.cpp documents the format).
//!
//! A build is one [`Config`]: MSL 3.1 (bfloat, `__HAVE_BFLOAT__`) or 3.0 (neither), precise or
//! fast math (`MSL_EMU_FAST_MATH=1` selects fast math for [`Emulator::get`]). Builds are cached
//! in the target's tmp dir by a hash of everything that goes into them.
//!
//! Every run of a kernel file's emulator ([`Emulator::get`]) adds its threadgroup-memory bank
//! statistics to a per-kernel table, printed when the test process exits as one line per kernel
//! instantiation: `bank-conflicts <host name> max-ways <N> mean-ways <X> ...`.

mod translate;

#[cfg(test)]
mod checks;

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use trellis2::ops::metal::kargs::KernelArgs;

pub use translate::translate;

/// What one argument slot `[[buffer(i)]]` is bound to.
pub enum Slot {
    /// A buffer of the run, by index.
    Buffer(u32),
    /// `setBytes` data.
    Bytes(Vec<u8>),
    /// A buffer of the run from a byte offset (`setBuffer:offset:`, a view starting mid-buffer).
    BufferAt(u32, u64),
    /// `setBytes` of a Rust argument struct: the driver also checks that the kernel's parameter
    /// is a reference to the C++ struct of that name.
    Args { type_name: String, bytes: Vec<u8> },
}

impl Slot {
    /// `args` as the host uploads it, named by its Rust type.
    pub fn args<A: KernelArgs>(args: &A) -> Slot {
        let path = std::any::type_name::<A>();
        Slot::Args {
            type_name: path.rsplit("::").next().unwrap_or(path).to_string(),
            bytes: args.to_bytes(),
        }
    }
}

/// One `dispatchThreadgroups` call.
pub struct EmuDispatch {
    pub kernel: String,
    pub threadgroups: [u32; 3],
    pub threads: [u32; 3],
    pub slots: Vec<(u32, Slot)>,
    pub threadgroup_memory: Vec<u64>,
}

/// The language version and math mode of a build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// MSL 3.1: `bfloat` exists and `__HAVE_BFLOAT__` is defined; else MSL 3.0 (macOS 13).
    pub bfloat: bool,
    /// Metal's default fast math (msl.h documents the model) instead of correctly rounded math.
    pub fast_math: bool,
}

impl Config {
    pub const MSL31: Config = Config {
        bfloat: true,
        fast_math: false,
    };
    pub const MSL30: Config = Config {
        bfloat: false,
        fast_math: false,
    };

    /// MSL 3.1, in fast math when `MSL_EMU_FAST_MATH` is set (and not "0").
    pub fn from_env() -> Config {
        Config {
            fast_math: std::env::var("MSL_EMU_FAST_MATH").is_ok_and(|v| v != "0"),
            ..Config::MSL31
        }
    }

    fn tag(&self) -> String {
        format!(
            "{}{}",
            if self.bfloat { "msl31" } else { "msl30" },
            if self.fast_math { "-fast" } else { "" }
        )
    }

    fn defines(&self) -> Vec<&'static str> {
        let mut d = Vec::new();
        if self.bfloat {
            d.push("-D__HAVE_BFLOAT__=1");
        }
        if self.fast_math {
            d.push("-DEMU_FAST_MATH=1");
        }
        d
    }
}

/// One emulator per kernel file and config, built by the first test that asks for it.
type EmulatorCache = Mutex<HashMap<(String, Config), Arc<OnceLock<Arc<Emulator>>>>>;

/// A compiled emulator for one `.metal` file.
pub struct Emulator {
    exe: PathBuf,
    /// Whether runs feed the bank-conflict table (the real kernel files).
    record: bool,
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn emu_dir() -> PathBuf {
    repo().join("tests/msl_emu")
}

fn work_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("msl_emu");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn cxx() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "c++".into())
}

/// Runs `cmd`; its stdout, or what it printed on failure.
fn run_tool(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_checked(cmd: &mut Command, what: &str) -> String {
    run_tool(cmd, what).unwrap_or_else(|e| panic!("{e}"))
}

fn hash_of(parts: &[&[u8]]) -> u64 {
    let mut h = DefaultHasher::new();
    for p in parts {
        p.hash(&mut h);
    }
    h.finish()
}

/// Builds `out` with `build(tmp)` unless it exists; the rename makes concurrent builders safe.
fn cached(out: &Path, build: impl FnOnce(&Path) -> Result<(), String>) -> Result<(), String> {
    if out.exists() {
        return Ok(());
    }
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let tmp = out.with_extension(format!(
        "tmp{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    build(&tmp)?;
    std::fs::rename(&tmp, out).map_err(|e| format!("{}: {e}", out.display()))
}

/// Flags that make the host's FMA units available to the fast-math build's contraction.
fn fma_flags() -> Vec<&'static str> {
    if cfg!(target_arch = "x86_64")
        && std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.contains(" fma "))
    {
        vec!["-mfma"]
    } else {
        vec![]
    }
}

/// The driver's object file, compiled once per content.
fn driver_object() -> Result<PathBuf, String> {
    static OBJ: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    OBJ.get_or_init(|| {
        let sources = ["driver.cpp", "emu_runtime.h", "fiber_switch.h"]
            .map(|f| std::fs::read(emu_dir().join(f)).unwrap());
        let kargs = std::fs::read(repo().join("kernels/metal/kargs.h")).unwrap();
        let key = hash_of(&[
            &sources[0],
            &sources[1],
            &sources[2],
            &kargs,
            cxx().as_bytes(),
        ]);
        let obj = work_dir().join(format!("driver.{key:016x}.o"));
        cached(&obj, |tmp| {
            run_tool(
                Command::new(cxx())
                    .args(["-std=c++20", "-O2", "-c", "-o"])
                    .arg(tmp)
                    .arg(emu_dir().join("driver.cpp")),
                "compiling the emulator driver",
            )
            .map(drop)
        })?;
        Ok(obj)
    })
    .clone()
}

impl Emulator {
    /// The emulator of `kernels/metal/<stem>.metal` in [`Config::from_env`], built once per
    /// test process; its runs feed the bank-conflict table.
    pub fn get(stem: &str) -> Arc<Emulator> {
        static CACHE: OnceLock<EmulatorCache> = OnceLock::new();
        let config = Config::from_env();
        let cell = CACHE
            .get_or_init(Default::default)
            .lock()
            .unwrap()
            .entry((stem.to_string(), config))
            .or_default()
            .clone();
        cell.get_or_init(|| {
            let src = std::fs::read_to_string(repo().join(format!("kernels/metal/{stem}.metal")))
                .unwrap();
            let mut emu = Emulator::try_build(stem, &src, config).unwrap_or_else(|e| panic!("{e}"));
            emu.record = true;
            Arc::new(emu)
        })
        .clone()
    }

    /// Compiles MSL source `src` (as if it were `kernels/metal/<name>.metal`) in
    /// [`Config::from_env`]; panics with the compiler's messages if it does not build.
    pub fn build(name: &str, src: &str) -> Emulator {
        Emulator::try_build(name, src, Config::from_env()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Compiles MSL source `src` (as if it were `kernels/metal/<name>.metal`) in `config`;
    /// the error is the translator's or the compiler's message.
    pub fn try_build(name: &str, src: &str, config: Config) -> Result<Emulator, String> {
        let dir = work_dir();
        let tag = config.tag();
        let metal = dir.join(format!("{name}.metal"));
        // Tests building the same name concurrently write the same text; write only if it
        // differs, so a reader never sees a half-written file.
        if std::fs::read_to_string(&metal).ok().as_deref() != Some(src) {
            let tmp = dir.join(format!("{name}.metal.{}", std::process::id()));
            std::fs::write(&tmp, src).unwrap();
            std::fs::rename(&tmp, &metal).unwrap();
        }
        // Pass 1: expand the kernel's own macros and includes with an empty <metal_stdlib> and
        // no system headers, so that the attributes survive intact for translate().
        let expanded = run_tool(
            Command::new(cxx())
                .args(["-E", "-x", "c++", "-std=c++20", "-nostdinc"])
                .args(config.defines())
                .arg("-I")
                .arg(emu_dir().join("stub"))
                .arg("-I")
                .arg(repo().join("kernels/metal"))
                .arg(&metal),
            "preprocessing the kernel",
        )?;
        let header = emu_dir().join("msl.h");
        let unit = translate(&expanded, &header).map_err(|e| format!("{name}.metal: {e}"))?;
        let mut flags = vec!["-std=c++20", "-O2", "-nostdinc", "-Wno-attributes"];
        flags.push("-Werror=narrowing");
        flags.extend(config.defines());
        if config.fast_math {
            flags.extend(["-ffast-math", "-ffp-contract=fast"]);
            flags.extend(fma_flags());
        }
        let headers = ["msl.h", "emu_runtime.h"].map(|f| std::fs::read(emu_dir().join(f)).unwrap());
        let driver = driver_object()?;
        let key = hash_of(&[
            unit.as_bytes(),
            &headers[0],
            &headers[1],
            flags.join(" ").as_bytes(),
            driver.to_string_lossy().as_bytes(),
        ]);
        let exe = dir.join(format!("{name}.{tag}.{key:016x}.emu"));
        cached(&exe, |tmp| {
            let cpp = PathBuf::from(format!("{}.cpp", tmp.display()));
            std::fs::write(&cpp, &unit).unwrap();
            let obj = PathBuf::from(format!("{}.o", tmp.display()));
            run_tool(
                Command::new(cxx())
                    .args(&flags)
                    .arg("-c")
                    .arg("-o")
                    .arg(&obj)
                    .arg(&cpp),
                "compiling the emulated kernel",
            )?;
            let linked = run_tool(
                Command::new(cxx())
                    .args(["-pthread", "-o"])
                    .arg(tmp)
                    .arg(&obj)
                    .arg(&driver),
                "linking the emulated kernel",
            );
            let _ = std::fs::remove_file(&obj);
            let _ = std::fs::remove_file(&cpp);
            linked.map(drop)
        })?;
        Ok(Emulator { exe, record: false })
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
    /// emulator's error (a deadlock report, a binding mismatch, a missing kernel...).
    pub fn run(
        &self,
        buffers: &[Vec<u8>],
        dispatches: &[EmuDispatch],
    ) -> Result<Vec<Vec<u8>>, String> {
        let (out, stats) = self.run_with_stats(buffers, dispatches)?;
        if self.record {
            record(stats);
        }
        Ok(out)
    }

    /// [`Emulator::run`], also returning each kernel's threadgroup-memory bank statistics.
    pub fn run_with_stats(
        &self,
        buffers: &[Vec<u8>],
        dispatches: &[EmuDispatch],
    ) -> Result<(Vec<Vec<u8>>, KernelBanks), String> {
        static RUN: AtomicUsize = AtomicUsize::new(0);
        let id = RUN.fetch_add(1, Ordering::Relaxed);
        let dir = work_dir();
        let base = dir.join(format!("run-{}-{id}", std::process::id()));
        let [input, output, stats] = ["in", "out", "stats"].map(|e| base.with_extension(e));
        std::fs::write(&input, encode(buffers, dispatches)).unwrap();
        let out = Command::new(&self.exe)
            .arg("run")
            .args([&input, &output, &stats])
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&input);
        if !out.status.success() {
            let _ = std::fs::remove_file(&output);
            let _ = std::fs::remove_file(&stats);
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let data = std::fs::read(&output).unwrap();
        let text = std::fs::read_to_string(&stats).unwrap();
        let _ = std::fs::remove_file(&output);
        let _ = std::fs::remove_file(&stats);
        let mut at = 0;
        let mut take = |n: usize| {
            let s = &data[at..at + n];
            at += n;
            s
        };
        let count = u32::from_le_bytes(take(4).try_into().unwrap()) as usize;
        let buffers = (0..count)
            .map(|_| {
                let len = u64::from_le_bytes(take(8).try_into().unwrap()) as usize;
                take(len).to_vec()
            })
            .collect();
        Ok((buffers, parse_stats(&text)))
    }
}

fn encode(buffers: &[Vec<u8>], dispatches: &[EmuDispatch]) -> Vec<u8> {
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
                Slot::Args { type_name, bytes } => {
                    u32le(&mut b, 3);
                    u32le(&mut b, type_name.len() as u32);
                    b.extend_from_slice(type_name.as_bytes());
                    u64le(&mut b, bytes.len() as u64);
                    b.extend_from_slice(bytes);
                }
            }
        }
        u32le(&mut b, d.threadgroup_memory.len() as u32);
        d.threadgroup_memory.iter().for_each(|&v| u64le(&mut b, v));
    }
    b
}

// ---------------------------------------------------------------------------- bank conflicts

/// Simdgroup-wide threadgroup-memory accesses and their ways (driver.cpp defines them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ways {
    pub accesses: u64,
    pub sum: u64,
    pub max: u32,
}

impl Ways {
    fn merge(&mut self, o: &Ways) {
        self.accesses += o.accesses;
        self.sum += o.sum;
        self.max = self.max.max(o.max);
    }

    pub fn mean(&self) -> f64 {
        if self.accesses == 0 {
            0.0
        } else {
            self.sum as f64 / self.accesses as f64
        }
    }
}

/// One kernel's bank statistics: all its accesses, and per source line (`file:line`).
#[derive(Clone, Debug, Default)]
pub struct BankStats {
    pub all: Ways,
    pub sites: BTreeMap<String, Ways>,
}

/// Bank statistics by kernel (host name).
pub type KernelBanks = BTreeMap<String, BankStats>;

fn parse_stats(text: &str) -> KernelBanks {
    let mut stats = KernelBanks::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let ways = |i: usize| Ways {
            accesses: f[i].parse().unwrap(),
            sum: f[i + 1].parse().unwrap(),
            max: f[i + 2].parse().unwrap(),
        };
        match f[0] {
            "kernel" => stats.entry(f[1].to_string()).or_default().all = ways(2),
            "site" => {
                stats
                    .entry(f[1].to_string())
                    .or_default()
                    .sites
                    .insert(format!("{}:{}", f[2], f[3]), ways(4));
            }
            _ => panic!("bad stats line {line:?}"),
        }
    }
    stats
}

fn table() -> &'static Mutex<KernelBanks> {
    static TABLE: OnceLock<Mutex<KernelBanks>> = OnceLock::new();
    TABLE.get_or_init(|| {
        extern "C" {
            fn atexit(f: extern "C" fn()) -> std::ffi::c_int;
        }
        // SAFETY: registers a plain function with the C runtime; it runs once at process exit.
        unsafe { atexit(print_bank_conflicts) };
        Mutex::default()
    })
}

fn record(stats: KernelBanks) {
    if Config::from_env().fast_math {
        return; // the fast-math pass repeats the precise one's accesses
    }
    let mut table = table().lock().unwrap();
    for (kernel, s) in stats {
        let entry = table.entry(kernel).or_default();
        entry.all.merge(&s.all);
        for (site, w) in s.sites {
            entry.sites.entry(site).or_default().merge(&w);
        }
    }
}

/// The bank-conflict lines of every kernel run so far, one per kernel instantiation (host
/// name), with the worst source line; with `MSL_EMU_BANK_SITES` set, every source line too.
pub fn bank_conflict_report() -> Vec<String> {
    let sites = std::env::var_os("MSL_EMU_BANK_SITES").is_some();
    let table = table().lock().unwrap_or_else(|e| e.into_inner());
    table
        .iter()
        .flat_map(|(kernel, s)| {
            let mut line = format!(
                "bank-conflicts {kernel} max-ways {} mean-ways {:.2} simdgroup-accesses {}",
                s.all.max,
                s.all.mean(),
                s.all.accesses
            );
            match s.sites.iter().max_by_key(|(_, w)| (w.max, w.sum)) {
                Some((site, w)) => line.push_str(&format!(
                    " worst {site} ({}-way, mean {:.2})",
                    w.max,
                    w.mean()
                )),
                None => line.push_str(" (no threadgroup memory)"),
            }
            let mut by_line: Vec<_> = s.sites.iter().filter(|_| sites).collect();
            by_line.sort_by_key(|(site, _)| {
                let (file, line) = site.rsplit_once(':').unwrap_or((site, "0"));
                (file.to_string(), line.parse::<u32>().unwrap_or(0))
            });
            let per_site = by_line.into_iter().map(|(site, w)| {
                format!(
                    "  {site} max-ways {} mean-ways {:.2} simdgroup-accesses {}",
                    w.max,
                    w.mean(),
                    w.accesses
                )
            });
            std::iter::once(line).chain(per_site.collect::<Vec<_>>())
        })
        .collect()
}

extern "C" fn print_bank_conflicts() {
    use std::io::Write;
    let lines = bank_conflict_report();
    let mut out = std::io::stdout().lock();
    for l in lines {
        let _ = writeln!(out, "{l}");
    }
    let _ = out.flush();
}
