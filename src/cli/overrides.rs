//! `--steps 12` / `--steps ss=5,shape=4,tex=4` (and `--cfg`, `--cfg-rescale`): one value for
//! every sampler, or `stage=value` pairs for some.

use std::str::FromStr;

use anyhow::{bail, Context, Result};
use trellis2::pipeline::SamplerStage;

/// `(stage, value)` pairs; a bare value applies to all three stages.
pub fn parse_per_stage<T: FromStr + Clone>(flag: &str, text: &str) -> Result<Vec<(SamplerStage, T)>>
where
    T::Err: std::fmt::Display,
{
    let value = |s: &str| -> Result<T> {
        s.trim()
            .parse::<T>()
            .map_err(|e| anyhow::anyhow!("{flag}: `{s}` is not a valid value ({e})"))
    };
    if !text.contains('=') {
        let v = value(text)?;
        return Ok(SamplerStage::ALL
            .into_iter()
            .map(|s| (s, v.clone()))
            .collect());
    }
    let mut out: Vec<(SamplerStage, T)> = Vec::new();
    for part in text.split(',') {
        let Some((stage, v)) = part.split_once('=') else {
            bail!("{flag}: `{part}` must be STAGE=VALUE (stages: ss, shape, tex)");
        };
        let stage: SamplerStage = stage.trim().parse().with_context(|| flag.to_string())?;
        if out.iter().any(|(s, _)| *s == stage) {
            bail!("{flag}: stage `{}` given twice", stage.name());
        }
        out.push((stage, value(v)?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_value_for_all_or_pairs() {
        let all: Vec<(SamplerStage, usize)> = parse_per_stage("--steps", "12").unwrap();
        assert_eq!(all.len(), 3);
        assert!(all.iter().all(|(_, v)| *v == 12));
        let some: Vec<(SamplerStage, f64)> = parse_per_stage("--cfg", "ss=5.5, tex=1").unwrap();
        assert_eq!(
            some,
            vec![(SamplerStage::Ss, 5.5), (SamplerStage::Tex, 1.0)]
        );
        let e = parse_per_stage::<usize>("--steps", "ss=5,geo=3").unwrap_err();
        assert!(format!("{e:#}").contains("geo"), "{e:#}");
        assert!(parse_per_stage::<usize>("--steps", "ss=x").is_err());
        assert!(parse_per_stage::<usize>("--steps", "ss=1,ss=2").is_err());
    }
}
