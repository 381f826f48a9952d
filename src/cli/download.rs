//! `trellis2 download`: fetch the release, the SS decoder, DINOv3 and the background remover
//! into the Hugging Face cache (or `--to DIR`), showing sizes first and progress while it runs.

#[cfg(feature = "hub")]
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Result};
#[cfg(feature = "hub")]
use indicatif::{ProgressBar, ProgressStyle};
use trellis2::weights::{ModelDir, RembgModel};

use super::values::RemoverArg;

use trellis2::weights::hub::{self, HubSettings};
#[cfg(feature = "hub")]
use trellis2::weights::hub::{Plan, PlanEntry, TransferProgress};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Hub cache folder to download into (default: HF_HUB_CACHE, HF_HOME/hub or
    /// ~/.cache/huggingface/hub). Pass the same folder to `generate --model`.
    #[arg(long, value_name = "DIR")]
    pub to: Option<PathBuf>,
    /// List the files and their sizes, download nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask before downloading.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// No network: only check that everything is already in the cache.
    #[arg(long)]
    pub offline: bool,
    /// Background remover to fetch: birefnet (ZhengPeng7/BiRefNet, MIT licence; the default),
    /// rmbg-2.0 (briaai/RMBG-2.0: gated, CC BY-NC 4.0, NON-COMMERCIAL use only; the model the
    /// release's pipeline.json names) or none. `generate --rembg` must name the same one.
    #[arg(
        long,
        value_name = "MODEL",
        value_enum,
        ignore_case = true,
        default_value_t = RemoverArg::Birefnet
    )]
    pub rembg: RemoverArg,
    /// Also fetch the texturing pipeline (`trellis2 texture`): texturing_pipeline.json and the
    /// shape encoder it adds (the texture flows, decoder and DINOv3 are shared).
    #[arg(long)]
    pub texturing: bool,
}

impl Args {
    /// The release's pipeline files this download covers.
    fn configs(&self) -> Vec<&'static str> {
        let mut c = vec![hub::PIPELINE_FILE];
        if self.texturing {
            c.push(hub::TEXTURING_PIPELINE_FILE);
        }
        c
    }
}

pub fn run(args: &Args) -> Result<u8> {
    let mut settings = HubSettings::from_env();
    if let Some(dir) = &args.to {
        settings = settings.with_cache_dir(dir);
    }
    if args.offline {
        let missing = hub::missing_offline_in(&settings, args.rembg.model(), &args.configs());
        if missing.is_empty() {
            println!("all model files are in {}", settings.cache_dir.display());
            return Ok(super::exit::OK);
        }
        let list: Vec<String> = missing.iter().map(|f| format!("  {f}")).collect();
        bail!(
            "--offline: {} file(s) missing from {}:\n{}\nrun `{}` with network access",
            missing.len(),
            settings.cache_dir.display(),
            list.join("\n"),
            hub::download_command(&settings, args.rembg.model())
        );
    }
    fetch_release(args, &settings)
}

/// Plans, asks and downloads what the cache lacks.
#[cfg(feature = "hub")]
fn fetch_release(args: &Args, settings: &HubSettings) -> Result<u8> {
    let settings = settings.clone();
    let plan = hub::plan_configs(&settings, args.rembg.model(), &args.configs())?;
    print_plan(&plan, &settings);
    let missing = plan.missing().count();
    if args.dry_run || missing == 0 {
        return Ok(super::exit::OK);
    }
    if !args.yes && !confirm(plan.missing_bytes())? {
        eprintln!("nothing downloaded");
        return Ok(super::exit::FAILED);
    }
    hub::download(&settings, &plan, &mut |entry: &PlanEntry| {
        Box::new(Bar::new(entry)) as Box<dyn TransferProgress>
    })?;
    println!(
        "done: {} file(s), {} in {}",
        missing,
        super::human_bytes(plan.missing_bytes()),
        settings.cache_dir.display()
    );
    Ok(super::exit::OK)
}

#[cfg(not(feature = "hub"))]
fn fetch_release(_args: &Args, settings: &HubSettings) -> Result<u8> {
    bail!("{}", no_hub(settings))
}

/// The model directory `generate` uses: `model` if given (a folder with pipeline.json, or a hub
/// cache folder), else the release in the Hugging Face cache. When files are missing it says how
/// much is needed and downloads them (asking first unless `yes`); `offline` forbids that and
/// fails with the command to run. `rembg` is the background remover the run may need.
pub fn ensure_model(
    model: Option<&std::path::Path>,
    rembg: Option<RembgModel>,
    yes: bool,
    offline: bool,
) -> Result<ModelDir> {
    if let Some(dir) = model {
        // A wrong path is a usage error, never a reason to download.
        if !dir.exists() {
            return Err(super::usage(anyhow::anyhow!(
                "{}: --model: no such folder (give a folder holding pipeline.json, or a cache \
                 folder made by `trellis2 download --to DIR`)",
                dir.display()
            )));
        }
        if !dir.is_dir() {
            return Err(super::usage(anyhow::anyhow!(
                "{}: --model names a file; it takes a model folder (holding pipeline.json) or \
                 a download cache folder",
                dir.display()
            )));
        }
        if dir.join("pipeline.json").is_file() {
            // A model directory of one's own: it may lack the remover, which the cache may have.
            let dir = ModelDir::open(dir)?;
            return Ok(with_cached_rembg(dir, rembg, &HubSettings::from_env()));
        }
    }
    locate_or_fetch(model, rembg, yes, offline, hub::PIPELINE_FILE)
}

/// The model directory `texture` uses, described by `texturing_pipeline.json`: found as
/// [`ensure_model`] finds the release's, downloading what the texturing pipeline needs when it
/// is missing (asking first unless `yes`; never with `offline`).
pub fn ensure_texturing_model(
    model: Option<&std::path::Path>,
    rembg: Option<RembgModel>,
    yes: bool,
    offline: bool,
) -> Result<ModelDir> {
    let config = hub::TEXTURING_PIPELINE_FILE;
    if let Some(dir) = model {
        if !dir.is_dir() {
            return Err(super::usage(anyhow::anyhow!(
                "{}: --model: not a folder (give a folder holding {config}, or a cache folder \
                 made by `trellis2 download --texturing --to DIR`)",
                dir.display()
            )));
        }
        if dir.join(config).is_file() {
            let dir = ModelDir::open_config(dir, config)?;
            return Ok(with_cached_rembg(dir, rembg, &HubSettings::from_env()));
        }
        if dir.join("pipeline.json").is_file() {
            return Err(super::usage(anyhow::anyhow!(
                "{}: --model holds pipeline.json but no {config} (the release ships both; \
                 `trellis2 download --texturing` fetches it)",
                dir.display()
            )));
        }
    }
    locate_or_fetch(model, rembg, yes, offline, config)
}

/// The release described by `config` in the cache `model` names (or the default one), fetched
/// when files are missing (asking unless `yes`; never with `offline`).
fn locate_or_fetch(
    model: Option<&std::path::Path>,
    rembg: Option<RembgModel>,
    yes: bool,
    offline: bool,
    config: &str,
) -> Result<ModelDir> {
    let settings = match model {
        Some(dir) => HubSettings::from_env().with_cache_dir(dir),
        None => HubSettings::from_env(),
    };
    match hub::locate_config(model, &settings, rembg, config) {
        Ok(dir) => return Ok(dir),
        Err(e) if offline => return Err(e.context("--offline")),
        Err(_) => {}
    }
    fetch_release_config(model, &settings, rembg, yes, config)
}

/// Downloads what the release's `config` pipeline lacks, then locates it. `generate`'s
/// pipeline and `texture`'s differ only in what they call themselves and in the `download`
/// flag that fetches them.
#[cfg(feature = "hub")]
fn fetch_release_config(
    model: Option<&std::path::Path>,
    settings: &HubSettings,
    rembg: Option<RembgModel>,
    yes: bool,
    config: &str,
) -> Result<ModelDir> {
    let (what, flag) = if config == hub::TEXTURING_PIPELINE_FILE {
        ("the texturing models are", " --texturing")
    } else {
        ("the model is", "")
    };
    let plan = hub::plan_configs(settings, rembg, &[config])?;
    eprintln!(
        "{what} not fully downloaded yet: {} in {} file(s) to fetch into {}",
        super::human_bytes(plan.missing_bytes()),
        plan.missing().count(),
        settings.cache_dir.display()
    );
    ask_and_download(settings, &plan, yes, || {
        format!(
            "nothing downloaded; run `{}{flag}` first",
            hub::download_command(settings, rembg)
        )
    })?;
    hub::locate_config(model, settings, rembg, config)
}

#[cfg(not(feature = "hub"))]
fn fetch_release_config(
    _model: Option<&std::path::Path>,
    settings: &HubSettings,
    _rembg: Option<RembgModel>,
    _yes: bool,
    _config: &str,
) -> Result<ModelDir> {
    bail!("{}", no_hub(settings))
}

/// Asks first (unless `yes`) and downloads what `plan` lacks; `refused` is the error a "no"
/// gives.
#[cfg(feature = "hub")]
fn ask_and_download(
    settings: &HubSettings,
    plan: &Plan,
    yes: bool,
    refused: impl FnOnce() -> String,
) -> Result<()> {
    if !yes && !confirm(plan.missing_bytes())? {
        bail!("{}", refused());
    }
    hub::download(settings, plan, &mut |entry: &PlanEntry| {
        Box::new(Bar::new(entry)) as Box<dyn TransferProgress>
    })?;
    Ok(())
}

/// Registers the cached snapshot of `rembg` when `dir` itself does not hold it.
fn with_cached_rembg(dir: ModelDir, rembg: Option<RembgModel>, settings: &HubSettings) -> ModelDir {
    match rembg {
        Some(m) if dir.rembg_dir(m).is_err() => match settings.snapshot_dir(m.repo()) {
            Some(snapshot) => dir.with_repo_dir(m.repo(), &snapshot),
            None => dir,
        },
        _ => dir,
    }
}

/// The cached folder of background remover `model` (config.json + model.safetensors), fetched
/// first when missing (asking unless `yes`; never with `offline`). For `matte`, which needs no
/// other model.
pub fn ensure_rembg(model: RembgModel, yes: bool, offline: bool) -> Result<PathBuf> {
    let settings = HubSettings::from_env();
    let cached = |s: &HubSettings| {
        hub::hf_model_files(model.repo())
            .iter()
            .all(|f| s.cached_file(&f.repo, &f.path).is_some())
    };
    if !cached(&settings) {
        if offline {
            bail!(
                "--offline: {} ({}) is not in the model cache {}; run `trellis2 matte` once \
                 without --offline",
                model.repo(),
                model.licence(),
                settings.cache_dir.display()
            );
        }
        fetch_rembg(model, &settings, yes)?;
    }
    match settings.snapshot_dir(model.repo()) {
        Some(dir) if cached(&settings) => Ok(dir),
        _ => bail!(
            "{}: {} is not in the model cache after downloading",
            settings.cache_dir.display(),
            model.repo()
        ),
    }
}

#[cfg(feature = "hub")]
fn fetch_rembg(model: RembgModel, settings: &HubSettings, yes: bool) -> Result<()> {
    let plan = hub::plan_files(settings, &hub::hf_model_files(model.repo()))?;
    eprintln!(
        "background remover {} ({}): {} to fetch into {}",
        model.repo(),
        model.licence(),
        super::human_bytes(plan.missing_bytes()),
        settings.cache_dir.display()
    );
    ask_and_download(settings, &plan, yes, || {
        "nothing downloaded; pass --model DIR or --yes".to_string()
    })
}

#[cfg(not(feature = "hub"))]
fn fetch_rembg(_model: RembgModel, settings: &HubSettings, _yes: bool) -> Result<()> {
    bail!("{}", no_hub(settings))
}

#[cfg(not(feature = "hub"))]
fn no_hub(settings: &HubSettings) -> String {
    format!(
        "this trellis2 was built without download support (feature `hub`); put the model files \
         in {} or pass --model DIR",
        settings.cache_dir.display()
    )
}

#[cfg(feature = "hub")]
fn print_plan(plan: &Plan, settings: &HubSettings) {
    println!("cache  {}", settings.cache_dir.display());
    for e in &plan.entries {
        println!(
            "  {:>10}  {:<8}  {}",
            super::human_bytes(e.remote.size),
            if e.cached { "cached" } else { "download" },
            e.remote.file
        );
    }
    println!(
        "total  {} in {} files; to download: {} in {} files",
        super::human_bytes(plan.total_bytes()),
        plan.entries.len(),
        super::human_bytes(plan.missing_bytes()),
        plan.missing().count()
    );
}

/// Asks on the terminal; without one (a script), `--yes` is required.
#[cfg(feature = "hub")]
fn confirm(bytes: u64) -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "not a terminal: pass --yes to download {}",
            super::human_bytes(bytes)
        );
    }
    print!("download {}? [y/N] ", super::human_bytes(bytes));
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

/// One indicatif bar per file (hidden when stderr is not a terminal).
#[cfg(feature = "hub")]
struct Bar(ProgressBar);

#[cfg(feature = "hub")]
impl Bar {
    fn new(entry: &PlanEntry) -> Self {
        let bar = ProgressBar::new(entry.remote.size);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:40!} {bar:30} {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {eta:>4}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(entry.remote.file.to_string());
        Self(bar)
    }
}

#[cfg(feature = "hub")]
impl TransferProgress for Bar {
    fn init(&mut self, total: u64, _name: &str) {
        self.0.set_length(total);
        self.0.set_position(0);
    }
    fn update(&mut self, bytes: u64) {
        self.0.inc(bytes);
    }
    fn finish(&mut self) {
        self.0.finish();
    }
}
