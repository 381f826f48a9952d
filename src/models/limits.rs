//! Plausible ranges for the config fields that size tensors, checked before a model asks for
//! any weight. The ranges hold the released TRELLIS.2 family (values in docs/MODEL.md and
//! `tests/fixtures/golden/manifests`) and the tiny test models with a wide margin, and keep
//! every product of fields (a weight `[model_channels · mlp_ratio, model_channels]`, a noise
//! `[C, R, R, R]`) far from overflow and within a few GB: a config that names an absurd size
//! fails with one line naming the field and the range instead of allocating it.

use std::ops::RangeInclusive;

use anyhow::{bail, Result};

/// A number field, whole or real (NaN is outside every range).
pub fn field<T: PartialOrd + std::fmt::Display>(
    name: &str,
    value: T,
    range: RangeInclusive<T>,
) -> Result<()> {
    if !range.contains(&value) {
        bail!(
            "field `{name}` = {value} is outside the plausible range {}..={}",
            range.start(),
            range.end()
        );
    }
    Ok(())
}

/// Every entry of a list field, and the list's length.
pub fn list(
    name: &str,
    values: &[usize],
    len: RangeInclusive<usize>,
    each: RangeInclusive<usize>,
) -> Result<()> {
    if !len.contains(&values.len()) {
        bail!(
            "field `{name}` has {} entries, outside the plausible range {}..={}",
            values.len(),
            len.start(),
            len.end()
        );
    }
    for (i, &v) in values.iter().enumerate() {
        field(&format!("{name}[{i}]"), v, each.clone())?;
    }
    Ok(())
}

/// Channel widths (`model_channels`, `hidden_size`, …): the release's largest is 1536.
pub const CHANNELS: RangeInclusive<usize> = 1..=8192;
/// Stacked blocks or layers: the release's deepest stack is 30.
pub const DEPTH: RangeInclusive<usize> = 1..=128;
/// Attention heads: the release has 12 (flows) and 16 (DINOv3).
pub const HEADS: RangeInclusive<usize> = 1..=256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_values_name_field_and_range() {
        let e = field("num_blocks", 1_000_000_000, DEPTH).unwrap_err();
        assert_eq!(
            e.to_string(),
            "field `num_blocks` = 1000000000 is outside the plausible range 1..=128"
        );
        assert!(field("mlp_ratio", f64::NAN, 0.25..=16.0).is_err());
        assert!(field("mlp_ratio", 1e30, 0.25..=16.0).is_err());
        assert!(field("mlp_ratio", 5.3334, 0.25..=16.0).is_ok());
        assert!(list("channels", &[512, 128, 32], 1..=4, CHANNELS).is_ok());
        let e = list("channels", &[512, 1 << 40], 1..=4, CHANNELS).unwrap_err();
        assert!(e.to_string().contains("channels[1]"), "{e}");
    }
}
