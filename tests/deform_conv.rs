//! `ops::deform_conv2d` against `torchvision.ops.deform_conv2d` on every standalone case of
//! `golden/birefnet/deform_conv.safetensors` (odd sizes, 7×7 taps with most samples outside,
//! exact floor ties and samples on the image border, batch 2, stride/dilation 2).

mod common;

use common::Golden;
use trellis2::ops::{deform_conv2d, DeformConvConfig};

fn pair(v: &serde_json::Value, key: &str) -> (usize, usize) {
    let a = v[key].as_array().expect("pair in case metadata");
    (
        a[0].as_u64().expect("integer") as usize,
        a[1].as_u64().expect("integer") as usize,
    )
}

#[test]
fn every_golden_case_matches_torchvision() {
    let g = Golden::open("golden/birefnet/deform_conv.safetensors");
    let cases = g.metadata["cases"].as_object().expect("cases metadata");
    assert_eq!(cases.len(), 8, "expected the 8 documented cases");
    let mut worst = 0f32;
    for (name, meta) in cases {
        let cfg = DeformConvConfig {
            stride: pair(meta, "stride"),
            padding: pair(meta, "padding"),
            dilation: pair(meta, "dilation"),
        };
        let t = |s: &str| g.get(&format!("{name}.{s}")).clone();
        let bias = meta["has_bias"]
            .as_bool()
            .unwrap_or(false)
            .then(|| t("bias"));
        let out = deform_conv2d(
            &t("input"),
            &t("offset"),
            &t("mask"),
            &t("weight"),
            bias.as_ref(),
            cfg,
        )
        .expect("deform_conv2d runs");
        let err = g.rel_err(&format!("{name}.output"), &out);
        println!("deform_conv {name:<28} max|err|/max|ref| = {err:.2e}");
        if let Some(reference) = g.tensors.get(&format!("{name}.conv2d_ref")) {
            let e = g.rel_err(&format!("{name}.output"), reference);
            println!("  (golden deform output vs its conv2d_ref: {e:.2e})");
        }
        worst = worst.max(err);
    }
    assert!(worst <= 1e-5, "worst deform_conv error {worst:.2e}");
}
