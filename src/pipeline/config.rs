//! What a run is configured with: the pipeline type, the three samplers' parameters and the
//! latent normalisation, read from `pipeline.json` with the release values as fallbacks
//! (docs/MODEL.md §1.1), plus per-run overrides.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use serde_json::Value;

use super::sampler::{SamplerParams, SIGMA_MIN};

/// Upstream `pipeline_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipelineType {
    /// 32³ structure, shape and texture flows at 512.
    P512,
    /// 64³ structure, shape and texture flows at 1024.
    P1024,
    /// 32³ structure, shape 512 → upsample → shape 1024 (the release default).
    Cascade1024,
    /// Like [`Self::Cascade1024`] at up to 1536 (latent grid 96), backing off under a token budget.
    Cascade1536,
}

impl PipelineType {
    pub const ALL: [PipelineType; 4] = [
        PipelineType::P512,
        PipelineType::P1024,
        PipelineType::Cascade1024,
        PipelineType::Cascade1536,
    ];

    /// Our spelling (`1024-cascade`).
    pub fn name(self) -> &'static str {
        match self {
            PipelineType::P512 => "512",
            PipelineType::P1024 => "1024",
            PipelineType::Cascade1024 => "1024-cascade",
            PipelineType::Cascade1536 => "1536-cascade",
        }
    }

    /// Side of the occupancy grid the shape flow starts from (`ss_res`).
    pub fn structure_resolution(self) -> usize {
        match self {
            PipelineType::P1024 => 64,
            _ => 32,
        }
    }

    /// The cascade's target grid (1024 or 1536); `None` for the direct types.
    pub fn cascade_target(self) -> Option<usize> {
        match self {
            PipelineType::Cascade1024 => Some(1024),
            PipelineType::Cascade1536 => Some(1536),
            PipelineType::P512 | PipelineType::P1024 => None,
        }
    }

    /// Whether the 1024 condition is needed (every type but `512`).
    pub fn needs_cond_1024(self) -> bool {
        self != PipelineType::P512
    }
}

impl serde::Serialize for PipelineType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl fmt::Display for PipelineType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PipelineType {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.replace('_', "-");
        PipelineType::ALL
            .into_iter()
            .find(|p| p.name() == wanted)
            .with_context(|| {
                format!(
                    "unknown pipeline type `{s}` (expected one of: {})",
                    PipelineType::ALL.map(|p| p.name()).join(", ")
                )
            })
    }
}

/// The three sampling stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplerStage {
    Ss,
    Shape,
    Tex,
}

impl SamplerStage {
    pub const ALL: [SamplerStage; 3] = [SamplerStage::Ss, SamplerStage::Shape, SamplerStage::Tex];

    pub fn name(self) -> &'static str {
        match self {
            SamplerStage::Ss => "ss",
            SamplerStage::Shape => "shape",
            SamplerStage::Tex => "tex",
        }
    }

    fn json_key(self) -> &'static str {
        match self {
            SamplerStage::Ss => "sparse_structure_sampler",
            SamplerStage::Shape => "shape_slat_sampler",
            SamplerStage::Tex => "tex_slat_sampler",
        }
    }

    /// The release parameters (docs/MODEL.md §1.1).
    pub fn release_params(self) -> SamplerParams {
        let (strength, rescale, interval, rescale_t) = match self {
            SamplerStage::Ss => (7.5, 0.7, [0.6, 1.0], 5.0),
            SamplerStage::Shape => (7.5, 0.5, [0.6, 1.0], 3.0),
            SamplerStage::Tex => (1.0, 0.0, [0.6, 0.9], 3.0),
        };
        SamplerParams {
            steps: 12,
            guidance_strength: strength,
            guidance_rescale: rescale,
            guidance_interval: Some(interval),
            rescale_t,
            sigma_min: SIGMA_MIN,
        }
    }
}

impl FromStr for SamplerStage {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        SamplerStage::ALL
            .into_iter()
            .find(|st| st.name() == s)
            .with_context(|| format!("unknown sampler stage `{s}` (expected ss, shape or tex)"))
    }
}

/// Per-channel `mean` and `std` of a latent (`*_slat_normalization`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalization {
    fn vectors(&self, feats: &Tensor) -> Result<(Tensor, Tensor)> {
        let c = feats.dim(1).context("latent feats must be [T, C]")?;
        if c != self.mean.len() {
            bail!(
                "latent has {c} channels, the normalisation has {}",
                self.mean.len()
            );
        }
        let dev = feats.device();
        Ok((
            Tensor::from_slice(&self.mean, (1, c), dev)?,
            Tensor::from_slice(&self.std, (1, c), dev)?,
        ))
    }

    /// `feats · std + mean` per channel (`[T, C]`).
    pub fn denormalize(&self, feats: &Tensor) -> Result<Tensor> {
        let (mean, std) = self.vectors(feats)?;
        Ok(feats.broadcast_mul(&std)?.broadcast_add(&mean)?)
    }

    /// `(feats − mean) / std` per channel (`[T, C]`).
    pub fn normalize(&self, feats: &Tensor) -> Result<Tensor> {
        let (mean, std) = self.vectors(feats)?;
        Ok(feats.broadcast_sub(&mean)?.broadcast_div(&std)?)
    }
}

/// The release shape-latent normalisation (docs/MODEL.md §1.1), used when `pipeline.json` has none.
pub const SHAPE_MEAN: [f32; 32] = [
    0.781296, 0.018091, -0.495192, -0.558457, 1.06053, 0.093252, 1.518149, -0.933218, -0.732996,
    2.604095, -0.118341, -2.143904, 0.495076, -2.179512, -2.130751, -0.996944, 0.261421, -2.217463,
    1.260067, -0.150213, 3.790713, 1.481266, -1.046058, -1.523667, -0.059621, 2.22078, 1.621212,
    0.87723, 0.567247, -3.175944, -3.186688, 1.578665,
];
pub const SHAPE_STD: [f32; 32] = [
    5.972266, 4.706852, 5.44501, 5.209927, 5.32022, 4.547237, 5.020802, 5.444004, 5.226681,
    5.683095, 4.831436, 5.286469, 5.652043, 5.367606, 5.525084, 4.730578, 4.805265, 5.124013,
    5.530808, 5.619001, 5.10393, 5.41767, 5.269677, 5.547194, 5.634698, 5.235274, 6.110351,
    5.511298, 6.237273, 4.879207, 5.347008, 5.405691,
];
pub const TEX_MEAN: [f32; 32] = [
    3.501659, 2.212398, 2.226094, 0.251093, -0.026248, -0.687364, 0.439898, -0.928075, 0.029398,
    -0.339596, -0.869527, 1.038479, -0.972385, 0.126042, -1.129303, 0.455149, -1.209521, 2.069067,
    0.544735, 2.569128, -0.323407, 2.293, -1.925608, -1.217717, 1.213905, 0.971588, -0.023631,
    0.10675, 2.021786, 0.250524, -0.662387, -0.768862,
];
pub const TEX_STD: [f32; 32] = [
    2.665652, 2.743913, 2.765121, 2.595319, 3.037293, 2.291316, 2.144656, 2.911822, 2.969419,
    2.501689, 2.154811, 3.163343, 2.621215, 2.381943, 3.186697, 3.021588, 2.295916, 3.234985,
    3.233086, 2.26014, 2.874801, 2.810596, 3.29272, 2.674999, 2.680878, 2.372054, 2.451546,
    2.353556, 2.995195, 2.379849, 2.786195, 2.77519,
];

/// Upstream's default `max_num_tokens` for the 1536 cascade.
pub const DEFAULT_MAX_TOKENS: usize = 49152;

/// Everything `pipeline.json` decides about a run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PipelineSettings {
    pub default_type: PipelineType,
    pub ss: SamplerParams,
    pub shape: SamplerParams,
    pub tex: SamplerParams,
    pub shape_norm: Normalization,
    pub tex_norm: Normalization,
}

impl Default for PipelineSettings {
    /// The release configuration.
    fn default() -> Self {
        Self {
            default_type: PipelineType::Cascade1024,
            ss: SamplerStage::Ss.release_params(),
            shape: SamplerStage::Shape.release_params(),
            tex: SamplerStage::Tex.release_params(),
            shape_norm: Normalization {
                mean: SHAPE_MEAN.to_vec(),
                std: SHAPE_STD.to_vec(),
            },
            tex_norm: Normalization {
                mean: TEX_MEAN.to_vec(),
                std: TEX_STD.to_vec(),
            },
        }
    }
}

impl PipelineSettings {
    /// Reads `pipeline.json`'s `args`; any field it lacks keeps the release value.
    pub fn from_pipeline_args(args: &Value) -> Result<Self> {
        let mut s = Self::default();
        if let Some(t) = args.get("default_pipeline_type").and_then(Value::as_str) {
            s.default_type = t.parse().context("pipeline.json default_pipeline_type")?;
        }
        for stage in SamplerStage::ALL {
            if let Some(v) = args.get(stage.json_key()) {
                let p = sampler_from_json(v, stage.release_params())
                    .with_context(|| format!("pipeline.json {}", stage.json_key()))?;
                *s.params_mut(stage) = p;
            }
        }
        if let Some(v) = args.get("shape_slat_normalization") {
            s.shape_norm =
                normalization_from_json(v).context("pipeline.json shape_slat_normalization")?;
        }
        if let Some(v) = args.get("tex_slat_normalization") {
            s.tex_norm =
                normalization_from_json(v).context("pipeline.json tex_slat_normalization")?;
        }
        Ok(s)
    }

    pub fn params(&self, stage: SamplerStage) -> &SamplerParams {
        match stage {
            SamplerStage::Ss => &self.ss,
            SamplerStage::Shape => &self.shape,
            SamplerStage::Tex => &self.tex,
        }
    }

    pub fn params_mut(&mut self, stage: SamplerStage) -> &mut SamplerParams {
        match stage {
            SamplerStage::Ss => &mut self.ss,
            SamplerStage::Shape => &mut self.shape,
            SamplerStage::Tex => &mut self.tex,
        }
    }

    /// Applies overrides and checks the result.
    pub fn apply(&mut self, overrides: &SamplerOverrides) -> Result<()> {
        for stage in SamplerStage::ALL {
            let p = self.params_mut(stage);
            let o = overrides.for_stage(stage);
            if let Some(v) = o.steps {
                p.steps = v;
            }
            if let Some(v) = o.guidance_strength {
                p.guidance_strength = v;
            }
            if let Some(v) = o.guidance_rescale {
                p.guidance_rescale = v;
            }
            p.validate()
                .with_context(|| format!("{} sampler", stage.name()))?;
        }
        Ok(())
    }
}

/// `{name, args: {sigma_min}, params: {...}}`; a `FlowEulerCfgSampler` has no interval.
fn sampler_from_json(v: &Value, fallback: SamplerParams) -> Result<SamplerParams> {
    let params = v.get("params").unwrap_or(&Value::Null);
    let num = |key: &str, default: f64| -> Result<f64> {
        match params.get(key) {
            None => Ok(default),
            Some(x) => x
                .as_f64()
                .with_context(|| format!("params.{key} must be a number, got {x}")),
        }
    };
    let steps = match params.get("steps") {
        None => fallback.steps,
        Some(x) => x
            .as_u64()
            .with_context(|| format!("params.steps must be a whole number, got {x}"))?
            as usize,
    };
    let cfg_only = v.get("name").and_then(Value::as_str) == Some("FlowEulerCfgSampler");
    let guidance_interval = if cfg_only {
        None
    } else {
        match params.get("guidance_interval") {
            None => fallback.guidance_interval,
            Some(x) => {
                let pair: Vec<f64> = serde_json::from_value(x.clone()).with_context(|| {
                    format!("params.guidance_interval must be [lo, hi], got {x}")
                })?;
                match pair.as_slice() {
                    [lo, hi] => Some([*lo, *hi]),
                    _ => bail!("params.guidance_interval must be [lo, hi], got {x}"),
                }
            }
        }
    };
    let sigma_min = match v.get("args").and_then(|a| a.get("sigma_min")) {
        None => fallback.sigma_min,
        Some(x) => x
            .as_f64()
            .with_context(|| format!("args.sigma_min must be a number, got {x}"))?,
    };
    let p = SamplerParams {
        steps,
        guidance_strength: num("guidance_strength", fallback.guidance_strength)?,
        guidance_rescale: num("guidance_rescale", fallback.guidance_rescale)?,
        guidance_interval,
        rescale_t: num("rescale_t", fallback.rescale_t)?,
        sigma_min,
    };
    p.validate()?;
    Ok(p)
}

fn normalization_from_json(v: &Value) -> Result<Normalization> {
    let get = |key: &str| -> Result<Vec<f32>> {
        let x = v.get(key).with_context(|| format!("no `{key}`"))?;
        serde_json::from_value(x.clone())
            .with_context(|| format!("`{key}` must be a list of numbers"))
    };
    let (mean, std) = (get("mean")?, get("std")?);
    if mean.len() != std.len() || mean.is_empty() {
        bail!(
            "mean has {} values and std {}; they must match and not be empty",
            mean.len(),
            std.len()
        );
    }
    if let Some(bad) = std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        bail!("std values must be positive, got {bad}");
    }
    Ok(Normalization { mean, std })
}

/// Overrides of one sampler's parameters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageOverride {
    pub steps: Option<usize>,
    pub guidance_strength: Option<f64>,
    pub guidance_rescale: Option<f64>,
}

/// Overrides for the three samplers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SamplerOverrides {
    pub ss: StageOverride,
    pub shape: StageOverride,
    pub tex: StageOverride,
}

impl SamplerOverrides {
    pub fn for_stage(&self, stage: SamplerStage) -> &StageOverride {
        match stage {
            SamplerStage::Ss => &self.ss,
            SamplerStage::Shape => &self.shape,
            SamplerStage::Tex => &self.tex,
        }
    }

    pub fn for_stage_mut(&mut self, stage: SamplerStage) -> &mut StageOverride {
        match stage {
            SamplerStage::Ss => &mut self.ss,
            SamplerStage::Shape => &mut self.shape,
            SamplerStage::Tex => &mut self.tex,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_types_parse_both_spellings() {
        assert_eq!(
            "1024_cascade".parse::<PipelineType>().unwrap(),
            PipelineType::Cascade1024
        );
        assert_eq!(
            "1536-cascade".parse::<PipelineType>().unwrap(),
            PipelineType::Cascade1536
        );
        assert!("2048"
            .parse::<PipelineType>()
            .unwrap_err()
            .to_string()
            .contains("2048"));
    }

    #[test]
    fn missing_fields_keep_release_values_and_overrides_apply() {
        let args = serde_json::json!({
            "shape_slat_sampler": {"params": {"steps": 4}},
            "tex_slat_sampler": {"name": "FlowEulerCfgSampler", "params": {}}
        });
        let mut s = PipelineSettings::from_pipeline_args(&args).unwrap();
        assert_eq!(s.shape.steps, 4);
        assert_eq!(s.shape.guidance_rescale, 0.5);
        assert_eq!(s.tex.guidance_interval, None);
        assert_eq!(s.ss, SamplerStage::Ss.release_params());
        let mut o = SamplerOverrides::default();
        o.ss.steps = Some(3);
        o.tex.guidance_strength = Some(2.0);
        s.apply(&o).unwrap();
        assert_eq!((s.ss.steps, s.tex.guidance_strength), (3, 2.0));
        o.shape.steps = Some(0);
        assert!(format!("{:#}", s.apply(&o).unwrap_err()).contains("shape sampler"));
    }
}
