//! What a set of Gaussian splats looks like in numbers, for `inspect`: count, bounds, the
//! distribution of sizes, shapes and opacities, SH degree.

use super::splat::Splats;

/// min, median, 99th percentile and max of a sample (nearest-rank percentiles).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub p99: f64,
    pub max: f64,
}

impl Spread {
    /// `None` for an empty sample. NaNs sort last (`total_cmp`), so they show as the max.
    pub fn of(mut values: Vec<f64>) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        values.sort_unstable_by(f64::total_cmp);
        let rank =
            |q: f64| values[((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
        Some(Self {
            min: values[0],
            median: rank(0.5),
            p99: rank(0.99),
            max: values[values.len() - 1],
        })
    }
}

/// Statistics of a splat set (all `None` when it is empty).
#[derive(Clone, Debug, PartialEq)]
pub struct SplatStats {
    pub count: usize,
    pub sh_degree: u32,
    /// Per-axis (min, max) of the centres.
    pub bounds: Option<([f64; 3], [f64; 3])>,
    /// Standard deviations sorted per splat, largest first: `[0]` the largest axis of every
    /// splat, `[1]` the middle, `[2]` the smallest.
    pub sorted_scales: [Option<Spread>; 3],
    /// Largest over middle standard deviation: how elongated the splats are in their plane.
    pub elongation: Option<Spread>,
    /// Smallest over middle standard deviation: how flat they are (0 a disc, 1 a sphere).
    pub flatness: Option<Spread>,
    /// Opacity after the sigmoid.
    pub opacity: Option<Spread>,
    /// Mean opacity.
    pub mean_opacity: Option<f64>,
}

impl SplatStats {
    pub fn of(splats: &Splats) -> Self {
        let sorted: Vec<[f64; 3]> = splats
            .scales
            .iter()
            .map(|s| {
                let mut v = s.map(f64::from);
                v.sort_unstable_by(|a, b| b.total_cmp(a));
                v
            })
            .collect();
        let axis = |k: usize| Spread::of(sorted.iter().map(|v| v[k]).collect());
        let ratio = |num: usize| {
            Spread::of(
                sorted
                    .iter()
                    .filter(|v| v[1] > 0.0)
                    .map(|v| v[num] / v[1])
                    .collect(),
            )
        };
        let opacities: Vec<f64> = splats.opacities.iter().map(|&o| f64::from(o)).collect();
        let mean_opacity =
            (!opacities.is_empty()).then(|| opacities.iter().sum::<f64>() / opacities.len() as f64);
        Self {
            count: splats.len(),
            sh_degree: splats.sh_degree,
            bounds: splats.bounds(),
            sorted_scales: [axis(0), axis(1), axis(2)],
            elongation: ratio(0),
            flatness: ratio(2),
            opacity: Spread::of(opacities),
            mean_opacity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_uses_nearest_rank_percentiles() {
        let s = Spread::of((1..=200).map(f64::from).collect()).unwrap();
        assert_eq!((s.min, s.median, s.p99, s.max), (1.0, 100.0, 198.0, 200.0));
        assert_eq!(Spread::of(vec![]), None);
        let one = Spread::of(vec![3.0]).unwrap();
        assert_eq!(
            (one.min, one.median, one.p99, one.max),
            (3.0, 3.0, 3.0, 3.0)
        );
    }

    #[test]
    fn stats_sort_each_splats_axes() {
        let splats = Splats {
            positions: vec![[0.0, 1.0, 2.0], [-1.0, 3.0, 0.5]],
            scales: vec![[0.1, 0.4, 0.02], [0.3, 0.3, 0.3]],
            rotations: vec![[1.0, 0.0, 0.0, 0.0]; 2],
            opacities: vec![0.25, 0.75],
            sh_degree: 0,
            sh: vec![0.0; 6],
        };
        let s = SplatStats::of(&splats);
        assert_eq!(s.count, 2);
        assert_eq!(s.bounds, Some(([-1.0, 1.0, 0.5], [0.0, 3.0, 2.0])));
        let largest = s.sorted_scales[0].unwrap();
        assert!((largest.min - 0.3).abs() < 1e-7 && (largest.max - 0.4).abs() < 1e-7);
        let smallest = s.sorted_scales[2].unwrap();
        assert!((smallest.min - 0.02).abs() < 1e-7);
        let e = s.elongation.unwrap();
        assert!((e.min - 1.0).abs() < 1e-7 && (e.max - 4.0).abs() < 1e-6);
        let f = s.flatness.unwrap();
        assert!((f.min - 0.2).abs() < 1e-6 && (f.max - 1.0).abs() < 1e-7);
        assert_eq!(s.mean_opacity, Some(0.5));
        assert_eq!(s.opacity.unwrap().median, 0.25);
    }
}
