//! The flow-matching Euler sampler with classifier-free guidance, guidance interval and
//! guidance rescale (docs/MODEL.md §2; upstream `FlowEulerGuidanceIntervalSampler` and
//! `FlowEulerCfgSampler`).
//!
//! Every scalar is computed in f64 in upstream's operation order and becomes f32 only where it
//! meets a tensor, as Python floats do in PyTorch: that is what puts `t` exactly on 0.6 at step
//! 8 of a 12-step `rescale_t = 3` schedule, where guidance is still applied.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};

/// `sigma_min` of every release sampler.
pub const SIGMA_MIN: f64 = 1e-5;

/// Most steps a sampler may take: far above any useful count (the release takes 12), low
/// enough that a typo cannot ask for a schedule that does not fit in memory or a run that
/// never ends.
pub const MAX_STEPS: usize = 1000;

/// One sampler's parameters (`pipeline.json` `*_sampler.params` plus `args.sigma_min`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct SamplerParams {
    pub steps: usize,
    pub guidance_strength: f64,
    pub guidance_rescale: f64,
    /// Inclusive `[lo, hi]` range of `t` where guidance applies; `None` for the CFG-only
    /// sampler, which guides at every step.
    pub guidance_interval: Option<[f64; 2]>,
    pub rescale_t: f64,
    pub sigma_min: f64,
}

impl SamplerParams {
    /// Rejects values the sampler cannot run with, naming the bad one.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            bail!("sampler steps must be at least 1, got 0");
        }
        if self.steps > MAX_STEPS {
            bail!(
                "sampler steps must be at most {MAX_STEPS}, got {}",
                self.steps
            );
        }
        for (name, v) in [
            ("guidance_strength", self.guidance_strength),
            ("guidance_rescale", self.guidance_rescale),
            ("rescale_t", self.rescale_t),
            ("sigma_min", self.sigma_min),
        ] {
            if !v.is_finite() {
                bail!("sampler {name} must be a finite number, got {v}");
            }
        }
        if self.rescale_t <= 0.0 {
            bail!("sampler rescale_t must be positive, got {}", self.rescale_t);
        }
        if !(0.0..=1.0).contains(&self.guidance_rescale) {
            bail!(
                "sampler guidance_rescale must lie in [0, 1], got {}",
                self.guidance_rescale
            );
        }
        if !(0.0..1.0).contains(&self.sigma_min) {
            bail!(
                "sampler sigma_min must lie in [0, 1), got {}",
                self.sigma_min
            );
        }
        if let Some([lo, hi]) = self.guidance_interval {
            if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
                bail!("sampler guidance_interval [{lo}, {hi}] is not an ordered pair of numbers");
            }
        }
        Ok(())
    }

    /// The guidance strength used at sampler time `t`: the configured one inside the
    /// (inclusive) interval, 1 (no guidance) outside.
    pub fn strength_at(&self, t: f64) -> f64 {
        match self.guidance_interval {
            Some([lo, hi]) if !(lo <= t && t <= hi) => 1.0,
            _ => self.guidance_strength,
        }
    }

    /// Model forward passes one sampling run makes.
    pub fn model_calls(&self) -> usize {
        schedule(self.steps, self.rescale_t)
            .iter()
            .take(self.steps)
            .map(|&t| match self.strength_at(t) {
                g if g == 1.0 || g == 0.0 => 1,
                _ => 2,
            })
            .sum()
    }
}

/// The time points `t'_0 = 1 > … > t'_steps = 0` (docs/MODEL.md §2): NumPy's `linspace(1, 0, steps+1)`
/// (`i·(−1/steps) + 1`, last forced to 0), shifted by `r·t / (1 + (r−1)·t)`, all in f64.
pub fn schedule(steps: usize, rescale_t: f64) -> Vec<f64> {
    let step = -1.0 / steps as f64;
    (0..=steps)
        .map(|i| {
            let t = if i == steps {
                0.0
            } else {
                i as f64 * step + 1.0
            };
            rescale_t * t / (1.0 + (rescale_t - 1.0) * t)
        })
        .collect()
}

/// Which condition a model call uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Branch {
    /// The image condition.
    Positive,
    /// `zeros_like(cond)`.
    Negative,
}

/// A flow model as the sampler sees it: the predicted velocity at `x` for model time
/// `t_model = float32(1000·t)` (the same for every batch item).
pub trait VelocityModel {
    fn velocity(&mut self, x: &Tensor, t_model: f32, branch: Branch) -> Result<Tensor>;

    /// Both branches of a guided step, `(positive, negative)`. A model may compute them
    /// together (one forward of twice the batch); the default makes the two calls in that order.
    fn velocity_guided(&mut self, x: &Tensor, t_model: f32) -> Result<(Tensor, Tensor)> {
        let pos = self.velocity(x, t_model, Branch::Positive)?;
        Ok((pos, self.velocity(x, t_model, Branch::Negative)?))
    }
}

/// How the latent's batch items are laid out, which decides the guidance-rescale std.
#[derive(Debug, Clone, PartialEq)]
pub enum LatentLayout {
    /// `[B, …]`: one item per leading index; PyTorch `Tensor.std` (unbiased, n − 1).
    Dense,
    /// `[T, C]` with item `b` on rows `offsets[b]..offsets[b+1]`; `SparseTensor.std`
    /// (biased, `sqrt(E[x²] − E[x]²)`).
    Sparse { offsets: Vec<usize> },
}

impl LatentLayout {
    fn check(&self, x: &Tensor) -> Result<()> {
        match self {
            LatentLayout::Dense => {
                if x.rank() < 2 || x.dim(0)? == 0 {
                    bail!("dense latent {:?}: expected [B > 0, ...]", x.dims());
                }
            }
            LatentLayout::Sparse { offsets } => {
                let (t, _) = x.dims2().context("sparse latent must be [T, C]")?;
                let ordered = offsets.windows(2).all(|w| w[0] <= w[1]);
                if offsets.len() < 2
                    || offsets[0] != 0
                    || !ordered
                    || offsets[offsets.len() - 1] != t
                {
                    bail!(
                        "sparse latent {:?}: batch offsets {offsets:?} do not cover its {t} rows",
                        x.dims()
                    );
                }
            }
        }
        Ok(())
    }

    /// Per-item factors `std(pos) / std(cfg)` of the guidance rescale, shaped to broadcast over
    /// a latent (`[B, 1, …]` dense, `[T, 1]` sparse), on the latents' device. On the CPU the
    /// standard deviations are f64 sums over the values (the golden runs' reference); on a GPU
    /// they are f32 reductions where the latents live, so that a guided step does not wait for
    /// the device to read them back (one synchronisation per guided step otherwise).
    fn std_ratios(&self, pos: &Tensor, cfg: &Tensor) -> Result<Tensor> {
        if pos.device().is_cpu() {
            let stds = self.item_stds(&[pos, cfg])?;
            let ratios: Vec<f32> = stds[0]
                .iter()
                .zip(&stds[1])
                .map(|(p, c)| (*p as f32) / (*c as f32))
                .collect();
            return self.per_item(pos, &Tensor::new(ratios, pos.device())?);
        }
        let ratios = (self.device_stds(pos)? / self.device_stds(cfg)?)?;
        self.per_item(pos, &ratios)
    }

    /// Standard deviation of every batch item of `x`, reduced on `x`'s device in f32: `[B]`.
    fn device_stds(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?;
        let std_of = |flat: &Tensor, biased: bool| -> Result<Tensor> {
            // `flat`: `[items, n]`.
            let n = flat.dim(1)? as f64;
            let centred = flat.broadcast_sub(&flat.mean_keepdim(1)?)?;
            let denom = if biased { n } else { n - 1.0 };
            Ok((centred.sqr()?.sum(1)? / denom)?.sqrt()?)
        };
        match self {
            LatentLayout::Dense => {
                let b = x.dim(0)?;
                std_of(&x.reshape((b, ()))?, false)
            }
            LatentLayout::Sparse { offsets } => {
                let items = offsets
                    .windows(2)
                    .map(|w| std_of(&x.narrow(0, w[0], w[1] - w[0])?.reshape((1, ()))?, true))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::cat(&items, 0)?)
            }
        }
    }

    /// `factors` (`[B]`, one per batch item) shaped to broadcast over `x`.
    fn per_item(&self, x: &Tensor, factors: &Tensor) -> Result<Tensor> {
        Ok(match self {
            LatentLayout::Dense => {
                let mut shape = vec![1usize; x.rank()];
                shape[0] = factors.dim(0)?;
                factors.reshape(shape)?
            }
            LatentLayout::Sparse { offsets } if offsets.len() == 2 => factors.reshape((1, 1))?,
            LatentLayout::Sparse { offsets } => {
                let mut rows = Vec::with_capacity(x.dim(0)?);
                for (b, w) in offsets.windows(2).enumerate() {
                    rows.extend(std::iter::repeat_n(b as u32, w[1] - w[0]));
                }
                let n = rows.len();
                let index = Tensor::from_vec(rows, n, x.device())?;
                factors.index_select(&index, 0)?.reshape((n, 1))?
            }
        })
    }

    /// Standard deviation of every batch item of each of `xs`, as upstream computes it for the
    /// rescale, on the host. The tensors cross to the host in one read.
    fn item_stds(&self, xs: &[&Tensor]) -> Result<Vec<Vec<f64>>> {
        let flat = xs
            .iter()
            .map(|x| Ok(x.to_dtype(DType::F32)?.flatten_all()?))
            .collect::<Result<Vec<_>>>()?;
        let host: Vec<f32> = Tensor::cat(&flat, 0)?.to_vec1()?;
        let mut rest = host.as_slice();
        let mut out = Vec::with_capacity(xs.len());
        for x in xs {
            let (mine, after) = rest.split_at(x.elem_count());
            out.push(self.item_std(x, mine)?);
            rest = after;
        }
        Ok(out)
    }

    /// Standard deviation of every batch item of `x`, whose values are `host`.
    fn item_std(&self, x: &Tensor, host: &[f32]) -> Result<Vec<f64>> {
        let ranges: Vec<(usize, usize)> = match self {
            LatentLayout::Dense => {
                let b = x.dim(0)?;
                let per = host.len() / b;
                (0..b).map(|i| (i * per, (i + 1) * per)).collect()
            }
            LatentLayout::Sparse { offsets } => {
                let c = x.dim(1)?;
                offsets.windows(2).map(|w| (w[0] * c, w[1] * c)).collect()
            }
        };
        Ok(ranges
            .into_iter()
            .map(|(a, b)| {
                let v = &host[a..b];
                let n = v.len() as f64;
                let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
                let ss = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>();
                let denom = match self {
                    LatentLayout::Dense => n - 1.0,
                    LatentLayout::Sparse { .. } => n,
                };
                (ss / denom).sqrt()
            })
            .collect())
    }
}

/// What happened inside [`sample`], for progress reporting and parity dumps.
pub enum SamplerEvent<'a> {
    /// The `index`-th model call (0-based, over the whole run) returned `out`.
    ModelCall {
        index: usize,
        branch: Branch,
        t_model: f32,
        out: &'a Tensor,
    },
    /// Step `step` (1-based) of `steps` finished; `x` is the sample after it (upstream `x_t.<step>`).
    Step {
        step: usize,
        steps: usize,
        x: &'a Tensor,
    },
}

/// Runs the sampler from `noise` (the sample at t = 1) to t = 0 and returns the final sample.
pub fn sample(
    model: &mut dyn VelocityModel,
    noise: &Tensor,
    layout: &LatentLayout,
    params: &SamplerParams,
    observe: &mut dyn FnMut(SamplerEvent) -> Result<()>,
) -> Result<Tensor> {
    params.validate()?;
    layout.check(noise)?;
    let ts = schedule(params.steps, params.rescale_t);
    let mut x = noise.to_dtype(DType::F32)?;
    let mut calls = 0usize;
    for (i, pair) in ts.windows(2).enumerate() {
        let (t, t_prev) = (pair[0], pair[1]);
        // Python computes `1000 * t` in f64 and torch stores it as float32.
        let t_model = (1000.0 * t) as f32;
        // Observers see every model call in order, whether or not a guided step's two were
        // computed together.
        let mut seen = |branch: Branch, out: Tensor| -> Result<Tensor> {
            let out = out.to_dtype(DType::F32)?;
            if out.dims() != x.dims() {
                bail!(
                    "model returned {:?} for a sample of shape {:?}",
                    out.dims(),
                    x.dims()
                );
            }
            observe(SamplerEvent::ModelCall {
                index: calls,
                branch,
                t_model,
                out: &out,
            })?;
            calls += 1;
            Ok(out)
        };
        let g = params.strength_at(t);
        let v = if g == 1.0 {
            seen(
                Branch::Positive,
                model.velocity(&x, t_model, Branch::Positive)?,
            )?
        } else if g == 0.0 {
            seen(
                Branch::Negative,
                model.velocity(&x, t_model, Branch::Negative)?,
            )?
        } else {
            let (v_pos, v_neg) = model.velocity_guided(&x, t_model)?;
            let v_pos = seen(Branch::Positive, v_pos)?;
            let v_neg = seen(Branch::Negative, v_neg)?;
            let v = ((&v_pos * g)? + (v_neg * (1.0 - g))?)?;
            if params.guidance_rescale > 0.0 {
                rescale(&x, &v_pos, &v, t, params, layout)?
            } else {
                v
            }
        };
        x = (&x - (v * (t - t_prev))?)?;
        observe(SamplerEvent::Step {
            step: i + 1,
            steps: params.steps,
            x: &x,
        })?;
    }
    Ok(x)
}

/// Guidance rescale: pull the std of the guided `x0` prediction back towards the conditional
/// one, then turn `x0` back into a velocity.
fn rescale(
    x: &Tensor,
    v_pos: &Tensor,
    v_cfg: &Tensor,
    t: f64,
    params: &SamplerParams,
    layout: &LatentLayout,
) -> Result<Tensor> {
    let s = params.sigma_min;
    let phi = params.guidance_rescale;
    let noise_scale = s + (1.0 - s) * t;
    let to_x0 = |v: &Tensor| -> Result<Tensor> { Ok(((x * (1.0 - s))? - (v * noise_scale)?)?) };
    let x0_pos = to_x0(v_pos)?;
    let x0_cfg = to_x0(v_cfg)?;
    let ratios = layout.std_ratios(&x0_pos, &x0_cfg)?;
    let x0_rescaled = x0_cfg.broadcast_mul(&ratios)?;
    let x0 = ((x0_rescaled * phi)? + (&x0_cfg * (1.0 - phi))?)?;
    Ok((((x * (1.0 - s))? - x0)? / noise_scale)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    const R5: [f64; 13] = [
        1.0, 0.98214, 0.96154, 0.9375, 0.90909, 0.875, 0.83333, 0.78125, 0.71429, 0.625, 0.5,
        0.3125, 0.0,
    ];
    const R3: [f64; 13] = [
        1.0, 0.97059, 0.9375, 0.9, 0.85714, 0.80769, 0.75, 0.68182, 0.6, 0.5, 0.375, 0.21429, 0.0,
    ];

    #[test]
    fn release_schedules_match_the_spec_table() {
        for (r, want) in [(5.0, R5), (3.0, R3)] {
            let got = schedule(12, r);
            assert_eq!(got.len(), 13);
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 5e-6, "r={r}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn t_is_exactly_0_6_at_step_8_and_guidance_applies() {
        let ts = schedule(12, 3.0);
        assert_eq!(ts[8], 0.6, "f64 op order must land exactly on 0.6");
        let p = SamplerParams {
            steps: 12,
            guidance_strength: 7.5,
            guidance_rescale: 0.5,
            guidance_interval: Some([0.6, 1.0]),
            rescale_t: 3.0,
            sigma_min: SIGMA_MIN,
        };
        assert_eq!(p.strength_at(ts[8]), 7.5);
        assert_eq!(p.strength_at(ts[9]), 1.0);
        // Steps 0–8 guided (2 calls each), 9–11 not: 21 forwards, as the spec counts.
        assert_eq!(p.model_calls(), 21);
    }

    #[test]
    fn release_forward_counts() {
        let base = SamplerParams {
            steps: 12,
            guidance_strength: 7.5,
            guidance_rescale: 0.7,
            guidance_interval: Some([0.6, 1.0]),
            rescale_t: 5.0,
            sigma_min: SIGMA_MIN,
        };
        assert_eq!(base.model_calls(), 22);
        let tex = SamplerParams {
            guidance_strength: 1.0,
            guidance_rescale: 0.0,
            guidance_interval: Some([0.6, 0.9]),
            rescale_t: 3.0,
            ..base
        };
        assert_eq!(tex.model_calls(), 12);
    }

    #[test]
    fn bad_params_name_the_value() {
        let p = SamplerParams {
            steps: 0,
            guidance_strength: 1.0,
            guidance_rescale: 0.0,
            guidance_interval: None,
            rescale_t: 1.0,
            sigma_min: SIGMA_MIN,
        };
        assert!(p.validate().unwrap_err().to_string().contains("steps"));
        let p = SamplerParams {
            steps: 2,
            guidance_rescale: 1.5,
            ..p
        };
        assert!(p.validate().unwrap_err().to_string().contains("1.5"));
    }

    /// The GPU path's f32 reductions (run here on the CPU) agree with the host's f64 sums, per
    /// item, for both layouts, and the factors broadcast to the rows of their item.
    #[test]
    fn device_stds_match_the_host_sums() {
        let x = crate::test_util::uniform_tensor(&[3, 8, 4, 4], 11);
        let dense = LatentLayout::Dense;
        let host = dense.item_stds(&[&x]).unwrap().remove(0);
        let dev: Vec<f32> = dense.device_stds(&x).unwrap().to_vec1().unwrap();
        assert_eq!(dev.len(), 3);
        for (h, d) in host.iter().zip(&dev) {
            assert!((*h as f32 - d).abs() <= 1e-5 * *h as f32, "{h} vs {d}");
        }
        let rows = crate::test_util::uniform_tensor(&[50, 8], 12);
        let sparse = LatentLayout::Sparse {
            offsets: vec![0, 20, 20 + 30],
        };
        let host = sparse.item_stds(&[&rows]).unwrap().remove(0);
        let dev: Vec<f32> = sparse.device_stds(&rows).unwrap().to_vec1().unwrap();
        for (h, d) in host.iter().zip(&dev) {
            assert!((*h as f32 - d).abs() <= 1e-5 * *h as f32, "{h} vs {d}");
        }
        let factors = Tensor::new(&[2f32, 3.0], &Device::Cpu).unwrap();
        let per_row: Vec<f32> = sparse
            .per_item(&rows, &factors)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(per_row.len(), 50);
        assert!(per_row[..20].iter().all(|&f| f == 2.0) && per_row[20..].iter().all(|&f| f == 3.0));
    }
}
