//! Flag values, parsed by clap so that a bad one is a usage error (exit 2) saying what is
//! accepted: the enumerations as `ValueEnum`s, converted to the library's own types, and numbers
//! through parsers that state their rule.

use std::str::FromStr;

use clap::ValueEnum;
use trellis2::export::{SplatBudget, Up};
use trellis2::pipeline::background::Background;
use trellis2::pipeline::dev_forcing::DevForcing;
use trellis2::pipeline::device::DeviceChoice;
use trellis2::pipeline::models::DTypeChoice;
use trellis2::pipeline::sampler::MAX_STEPS;
use trellis2::pipeline::{PipelineType, SamplerStage};
use trellis2::weights::{RembgModel, BIREFNET_REPO, RMBG_REPO};

/// `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    Auto,
    Cpu,
    Metal,
    Cuda,
}

/// One device of `generate --device`: a kind and, for GPUs, which one (`cuda:1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSpec {
    pub kind: DeviceArg,
    pub ordinal: usize,
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self
            .kind
            .to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default();
        match self.kind {
            DeviceArg::Cuda | DeviceArg::Metal => write!(f, "{name}:{}", self.ordinal),
            DeviceArg::Auto | DeviceArg::Cpu => write!(f, "{name}"),
        }
    }
}

/// `generate --device`: one device, or a comma-separated list with one batch worker each
/// (`cuda:0,cuda:1`; `cpu,cpu` runs two CPU workers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceList(pub Vec<DeviceSpec>);

pub fn devices(text: &str) -> Result<DeviceList, String> {
    let mut list = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let (name, ordinal) = match part.split_once(':') {
            Some((n, o)) => (
                n,
                o.parse::<usize>()
                    .map_err(|_| format!("`{part}`: the device number must be a whole number"))?,
            ),
            None => (part, 0),
        };
        let kind = DeviceArg::from_str(name, true).map_err(|_| {
            format!(
                "`{part}` is not a device (a list may name several, and GPUs by number: \
                 cuda:1) [possible values: auto, cpu, metal, cuda]"
            )
        })?;
        if part.contains(':') && matches!(kind, DeviceArg::Auto | DeviceArg::Cpu) {
            return Err(format!(
                "`{part}`: only metal and cuda devices are numbered"
            ));
        }
        list.push(DeviceSpec { kind, ordinal });
    }
    if list.len() > 1 && list.iter().any(|d| d.kind == DeviceArg::Auto) {
        return Err(format!(
            "`{text}`: name each device of a list (auto picks one)"
        ));
    }
    Ok(DeviceList(list))
}

impl From<DeviceArg> for DeviceChoice {
    fn from(d: DeviceArg) -> Self {
        match d {
            DeviceArg::Auto => DeviceChoice::Auto,
            DeviceArg::Cpu => DeviceChoice::Cpu,
            DeviceArg::Metal => DeviceChoice::Metal,
            DeviceArg::Cuda => DeviceChoice::Cuda,
        }
    }
}

/// `generate --dtype` (the spellings torch and numpy use are accepted too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    Auto,
    #[value(alias = "float32")]
    F32,
    #[value(alias = "fp16", alias = "float16")]
    F16,
    #[value(alias = "bfloat16")]
    Bf16,
}

impl From<DtypeArg> for DTypeChoice {
    fn from(d: DtypeArg) -> Self {
        match d {
            DtypeArg::Auto => DTypeChoice::Auto,
            DtypeArg::F32 => DTypeChoice::F32,
            DtypeArg::F16 => DTypeChoice::F16,
            DtypeArg::Bf16 => DTypeChoice::Bf16,
        }
    }
}

/// `generate --pipeline` (upstream's `1024_cascade` spelling is accepted too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PipelineArg {
    #[value(name = "512")]
    P512,
    #[value(name = "1024")]
    P1024,
    #[value(name = "1024-cascade", alias = "1024_cascade")]
    Cascade1024,
    #[value(name = "1536-cascade", alias = "1536_cascade")]
    Cascade1536,
}

impl From<PipelineArg> for PipelineType {
    fn from(p: PipelineArg) -> Self {
        match p {
            PipelineArg::P512 => PipelineType::P512,
            PipelineArg::P1024 => PipelineType::P1024,
            PipelineArg::Cascade1024 => PipelineType::Cascade1024,
            PipelineArg::Cascade1536 => PipelineType::Cascade1536,
        }
    }
}

/// `generate --up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UpArg {
    Y,
    Z,
}

impl From<UpArg> for Up {
    fn from(u: UpArg) -> Self {
        match u {
            UpArg::Y => Up::Y,
            UpArg::Z => Up::Z,
        }
    }
}

/// `matte --rembg`: a background remover, by name or Hugging Face repository id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RembgArg {
    #[value(alias = BIREFNET_REPO)]
    Birefnet,
    #[value(name = "rmbg-2.0", alias = RMBG_REPO)]
    Rmbg2,
}

impl From<RembgArg> for RembgModel {
    fn from(r: RembgArg) -> Self {
        match r {
            RembgArg::Birefnet => RembgModel::BiRefNet,
            RembgArg::Rmbg2 => RembgModel::Rmbg2,
        }
    }
}

/// `download --rembg`: the background remover to fetch, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RemoverArg {
    #[value(alias = BIREFNET_REPO)]
    Birefnet,
    #[value(name = "rmbg-2.0", alias = RMBG_REPO)]
    Rmbg2,
    None,
}

impl RemoverArg {
    pub fn model(self) -> Option<RembgModel> {
        match self {
            RemoverArg::Birefnet => Some(RembgModel::BiRefNet),
            RemoverArg::Rmbg2 => Some(RembgModel::Rmbg2),
            RemoverArg::None => None,
        }
    }
}

/// `generate --rembg`: what to do with pictures without transparency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackgroundArg {
    Auto,
    #[value(alias = BIREFNET_REPO)]
    Birefnet,
    #[value(name = "rmbg-2.0", alias = RMBG_REPO)]
    Rmbg2,
    None,
    Alpha,
}

impl From<BackgroundArg> for Background {
    fn from(b: BackgroundArg) -> Self {
        match b {
            BackgroundArg::Auto => Background::Auto,
            BackgroundArg::Birefnet => Background::Remove(RembgModel::BiRefNet),
            BackgroundArg::Rmbg2 => Background::Remove(RembgModel::Rmbg2),
            BackgroundArg::None => Background::Keep,
            BackgroundArg::Alpha => Background::RequireAlpha,
        }
    }
}

/// `--shard K/N`: this machine's part of a batch split N ways (K from 1 to N).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The items of `sorted` that belong to this shard: every N-th from the K-th, so that
    /// shards get a mix of the list and their sizes differ by at most one.
    pub fn take<T>(self, sorted: Vec<T>) -> Vec<T> {
        sorted
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % self.count == self.index - 1)
            .map(|(_, t)| t)
            .collect()
    }
}

pub fn shard(text: &str) -> Result<Shard, String> {
    let bad = || format!("`{text}` is not K/N with 1 ≤ K ≤ N (e.g. 3/8)");
    let (k, n) = text.trim().split_once('/').ok_or_else(bad)?;
    let (index, count) = (
        k.trim().parse::<usize>().map_err(|_| bad())?,
        n.trim().parse::<usize>().map_err(|_| bad())?,
    );
    if index == 0 || index > count {
        return Err(bad());
    }
    Ok(Shard { index, count })
}

/// `generate --dev-force-structure` (development only, hidden): `shell` forces the upstream
/// baseline's structure sizes and decoder growth; `shell:N32,N64` the shell's cell counts on
/// the 32³ and 64³ grids (small ones for tests).
pub fn dev_forcing(text: &str) -> Result<DevForcing, String> {
    let bad = || format!("`{text}` is not `shell` or `shell:N32,N64` (whole numbers ≥ 1)");
    let mut forcing = DevForcing::baseline();
    match text.trim().split_once(':') {
        None if text.trim() == "shell" => {}
        Some(("shell", counts)) => {
            let (a, b) = counts.split_once(',').ok_or_else(bad)?;
            forcing.tokens_32 = positive(a).map_err(|_| bad())?;
            forcing.tokens_64 = positive(b).map_err(|_| bad())?;
        }
        _ => return Err(bad()),
    }
    Ok(forcing)
}

/// A whole number ≥ 1 (token budgets, sizes).
pub fn positive<T: FromStr + Default + PartialEq>(text: &str) -> Result<T, String> {
    match text.trim().parse::<T>() {
        Ok(v) if v != T::default() => Ok(v),
        _ => Err(format!("`{text}` is not a whole number ≥ 1")),
    }
}

/// `generate --faces`: a whole number ≥ 0 (0: no decimation).
pub fn face_count(text: &str) -> Result<usize, String> {
    text.trim()
        .parse::<usize>()
        .map_err(|_| format!("`{text}` is not a whole number ≥ 0 (0 keeps every face)"))
}

/// `generate --splats`: `all` (one per voxel) or a whole number ≥ 1.
pub fn splat_budget(text: &str) -> Result<SplatBudget, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("all") {
        return Ok(SplatBudget::All);
    }
    match t.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(SplatBudget::AtMost(n)),
        _ => Err(format!("`{text}` is not `all` or a whole number ≥ 1")),
    }
}

/// A number ≥ 0 (tolerances; not NaN).
pub fn non_negative(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) if v >= 0.0 => Ok(v),
        _ => Err(format!("`{text}` is not a number ≥ 0")),
    }
}

/// `--steps 12` / `--steps ss=5,shape=4,tex=4` (and `--cfg`, `--cfg-rescale`): one value for
/// every sampler, or `stage=value` pairs for some.
#[derive(Debug, Clone, PartialEq)]
pub struct PerStage<T>(pub Vec<(SamplerStage, T)>);

/// `--steps`: sampling steps, each in 1..=[`MAX_STEPS`].
pub fn steps(text: &str) -> Result<PerStage<usize>, String> {
    per_stage(text, "a whole number ≥ 1 and ≤ 1000", |v| {
        (1..=MAX_STEPS).contains(&v)
    })
}

/// Largest `matte --size`: BiRefNet's memory grows with the square of it (about 10 GB of
/// activations at 4096²).
pub const MAX_MATTE_SIZE: u32 = 4096;

/// `matte --size`: a multiple of 32 (the release BiRefNet's stride) in 32..=4096.
pub fn matte_size(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(v) if (1..=MAX_MATTE_SIZE).contains(&v) && v.is_multiple_of(32) => Ok(v),
        _ => Err(format!(
            "`{text}` is not a whole number ≥ 1 that is a multiple of 32 and at most \
             {MAX_MATTE_SIZE}"
        )),
    }
}

/// `--cfg`: guidance strengths, each finite and ≥ 0.
pub fn guidance(text: &str) -> Result<PerStage<f64>, String> {
    per_stage(text, "a finite number ≥ 0", |v: f64| {
        v.is_finite() && v >= 0.0
    })
}

/// `--cfg-rescale`: guidance rescale factors, each in [0, 1].
pub fn rescale(text: &str) -> Result<PerStage<f64>, String> {
    per_stage(text, "a number in [0, 1]", |v: f64| {
        (0.0..=1.0).contains(&v)
    })
}

/// `(stage, value)` pairs; a bare value applies to all three stages. Every value must pass
/// `valid`; `rule` says in words what that asks.
fn per_stage<T: FromStr + Copy>(
    text: &str,
    rule: &str,
    valid: impl Fn(T) -> bool,
) -> Result<PerStage<T>, String> {
    let value = |s: &str| -> Result<T, String> {
        match s.trim().parse::<T>() {
            Ok(v) if valid(v) => Ok(v),
            _ => Err(format!("`{}` is not {rule}", s.trim())),
        }
    };
    if !text.contains('=') {
        let v = value(text)?;
        return Ok(PerStage(
            SamplerStage::ALL.into_iter().map(|s| (s, v)).collect(),
        ));
    }
    let mut out: Vec<(SamplerStage, T)> = Vec::new();
    for part in text.split(',') {
        let Some((stage, v)) = part.split_once('=') else {
            return Err(format!(
                "`{part}` must be STAGE=VALUE (stages: ss, shape, tex)"
            ));
        };
        let stage: SamplerStage = stage.trim().parse().map_err(|e| format!("{e}"))?;
        if out.iter().any(|(s, _)| *s == stage) {
            return Err(format!("stage `{}` given twice", stage.name()));
        }
        out.push((stage, value(v)?));
    }
    Ok(PerStage(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_value_for_all_or_pairs() {
        let all = steps("12").unwrap().0;
        assert_eq!(all.len(), 3);
        assert!(all.iter().all(|(_, v)| *v == 12));
        let some = guidance("ss=5.5, tex=1").unwrap().0;
        assert_eq!(
            some,
            vec![(SamplerStage::Ss, 5.5), (SamplerStage::Tex, 1.0)]
        );
        let e = steps("ss=5,geo=3").unwrap_err();
        assert!(e.contains("geo"), "{e}");
        assert!(steps("ss=x").is_err());
        assert!(steps("ss=1,ss=2").is_err());
    }

    #[test]
    fn names_aliases_and_repository_ids_parse() {
        let rembg = |s: &str| RembgArg::from_str(s, true).map(RembgModel::from);
        assert_eq!(rembg("birefnet"), Ok(RembgModel::BiRefNet));
        assert_eq!(rembg("RMBG-2.0"), Ok(RembgModel::Rmbg2));
        assert_eq!(rembg("briaai/RMBG-2.0"), Ok(RembgModel::Rmbg2));
        assert_eq!(rembg("zhengpeng7/birefnet"), Ok(RembgModel::BiRefNet));
        assert!(rembg("rmbg").is_err());
        let cuda = |ordinal| DeviceSpec {
            kind: DeviceArg::Cuda,
            ordinal,
        };
        assert_eq!(
            devices("cuda:0,CUDA:1"),
            Ok(DeviceList(vec![cuda(0), cuda(1)]))
        );
        assert_eq!(devices("cuda"), Ok(DeviceList(vec![cuda(0)])));
        assert_eq!(devices("cpu,cpu").map(|l| l.0.len()), Ok(2));
        for bad in ["tpu", "cpu:1", "cuda:x", "auto,cpu", "cuda:0,,cuda:1", ""] {
            assert!(devices(bad).is_err(), "{bad}");
        }
        assert_eq!(cuda(1).to_string(), "cuda:1");
        assert_eq!(shard("3/8"), Ok(Shard { index: 3, count: 8 }));
        for bad in ["0/4", "5/4", "1/0", "2", "a/b", "-1/4", "1/4/2"] {
            assert!(shard(bad).is_err(), "{bad}");
        }
        let items: Vec<usize> = (0..10).collect();
        let parts: Vec<Vec<usize>> = (1..=3)
            .map(|k| Shard { index: k, count: 3 }.take(items.clone()))
            .collect();
        assert_eq!(parts, [vec![0, 3, 6, 9], vec![1, 4, 7], vec![2, 5, 8]]);
        let background = |s: &str| BackgroundArg::from_str(s, true).map(Background::from);
        assert_eq!(background("none"), Ok(Background::Keep));
        assert_eq!(
            background("briaai/RMBG-2.0"),
            Ok(Background::Remove(RembgModel::Rmbg2))
        );
        assert_eq!(UpArg::from_str("Y", true).map(Up::from), Ok(Up::Y));
        assert_eq!(
            PipelineArg::from_str("1024_cascade", false).map(PipelineType::from),
            Ok(PipelineType::Cascade1024)
        );
        assert_eq!(
            DtypeArg::from_str("bfloat16", false).map(DTypeChoice::from),
            Ok(DTypeChoice::Bf16)
        );
    }

    #[test]
    fn values_outside_the_rule_are_refused() {
        assert!(steps("0").unwrap_err().contains("≥ 1"));
        assert!(steps("1001").is_err() && steps("1000").is_ok());
        assert!(steps("99999999999").is_err());
        assert!(steps("ss=1000000000000,shape=1,tex=1").is_err());
        assert!(matte_size("1048576").is_err() && matte_size("100").is_err());
        assert_eq!(matte_size("1024"), Ok(1024));
        assert!(steps("shape=0").is_err());
        for bad in ["nan", "inf", "-1"] {
            assert!(guidance(bad).is_err(), "{bad}");
        }
        assert!(rescale("1.5").is_err());
        assert!(rescale("tex=0.5").is_ok());
        assert_eq!(positive::<usize>("7"), Ok(7));
        assert!(positive::<u32>("0").is_err());
        assert!(non_negative("nan").is_err());
        assert!(non_negative("-0.1").is_err());
        assert_eq!(non_negative("0"), Ok(0.0));
    }
}
