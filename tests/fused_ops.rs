//! The fused DiT ops on the CPU equal the composed candle ops they replace (within 1e-6 of the
//! largest value), on shapes with several samples, an empty sample and odd widths.

use candle_core::{DType, Device, Module, Tensor};
use trellis2::ops::bias_act::{bias_act, bias_act_slow, Activation};
use trellis2::ops::gated_residual::{gated_residual, gated_residual_slow};
use trellis2::ops::linear::Linear;
use trellis2::ops::norm_modulate::{layer_norm_modulate, layer_norm_modulate_slow, Modulation};
use trellis2::ops::rms_norm_rope::{
    multi_head_rms_norm, multi_head_rms_norm_slow, rms_norm_rope, rms_norm_rope_slow, rope_table,
};
use trellis2::ops::rope::rope_tables_3d;

/// Deterministic uniform values in [-2, 2).
fn randn(shape: &[usize], seed: u64) -> Tensor {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn rel(a: &Tensor, b: &Tensor) -> f32 {
    let err: f32 = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    let scale: f32 = b.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
    err / scale
}

#[test]
fn layer_norm_modulate_equals_the_composed_ops() {
    for (c, offsets, affine) in [
        (1536usize, vec![0usize, 7, 7, 20], false),
        (100, vec![0, 33], true),
        (3, vec![0, 1, 2], true),
    ] {
        let (t, b) = (offsets[offsets.len() - 1], offsets.len() - 1);
        // A large row mean: the two-pass variance is exercised.
        let x = (randn(&[t, c], 1) + 3.0).unwrap();
        let shift = randn(&[b, c], 2);
        let scale = (randn(&[b, c], 3) * 0.3).unwrap();
        let (w, bias) = (randn(&[c], 4), randn(&[c], 5));
        let affine = affine.then_some((&w, &bias));
        let m = Modulation {
            shift: &shift,
            scale: &scale,
            offsets: &offsets,
        };
        let fused = layer_norm_modulate(&x, affine, &m, 1e-6).unwrap();
        let composed = layer_norm_modulate_slow(&x, affine, &m, 1e-6).unwrap();
        let e = rel(&fused, &composed);
        println!("layer_norm_modulate C {c} offsets {offsets:?}: {e:e}");
        assert!(e <= 1e-6, "{e}");
    }
}

#[test]
fn rms_norm_rope_equals_the_composed_ops() {
    for (t, h, d, norm) in [
        (50usize, 3usize, 64usize, true),
        (17, 2, 128, true),
        (9, 1, 64, false),
        (5, 2, 10, true),
    ] {
        let x = randn(&[t, h, d], 6);
        let gamma = (randn(&[h, d], 7) + 1.0).unwrap();
        let xyz: Vec<[i32; 3]> = (0..t as i32).map(|i| [i % 4, i / 4 % 5, i / 20]).collect();
        let (cos, sin) = rope_tables_3d(&xyz, d, 10000.0, &Device::Cpu).unwrap();
        let table = rope_table(&cos, &sin).unwrap();
        let g = norm.then_some(&gamma);
        let fused = rms_norm_rope(&x, g, &table).unwrap();
        let composed = rms_norm_rope_slow(&x, g, &table).unwrap();
        assert_eq!(fused.dtype(), DType::F32);
        let e = rel(&fused, &composed);
        println!("rms_norm_rope T {t} H {h} D {d} norm {norm}: {e:e}");
        assert!(e <= 1e-6, "{e}");
    }
}

#[test]
fn fused_ops_name_bad_shapes() {
    let x = randn(&[4, 8], 1);
    let s = randn(&[2, 8], 2);
    let m = Modulation {
        shift: &s,
        scale: &s,
        offsets: &[0, 4],
    };
    let err = layer_norm_modulate(&x, None, &m, 1e-6)
        .unwrap_err()
        .to_string();
    assert!(err.contains("must be [1, 8]"), "{err}");
    let q = randn(&[4, 2, 6], 3);
    let table = randn(&[4, 2, 2], 4);
    let err = rms_norm_rope(&q, None, &table).unwrap_err().to_string();
    assert!(
        err.contains("rotation table must be [4 or 1, 3, 2]"),
        "{err}"
    );
    let err = bias_act(&x, &randn(&[7], 5), Activation::None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("bias must be [8]"), "{err}");
    let err = gated_residual(&x, &x, &s, &[0, 4]).unwrap_err().to_string();
    assert!(err.contains("gate must be [1, 8]"), "{err}");
}

#[test]
fn bias_act_equals_the_composed_ops() {
    for (t, c) in [(37usize, 1536usize), (5, 13), (1, 1)] {
        let x = (randn(&[t, c], 8) * 3.0).unwrap();
        let bias = randn(&[c], 9);
        for act in [
            Activation::None,
            Activation::GeluTanh,
            Activation::Silu,
            Activation::GeluErf,
        ] {
            let fused = bias_act(&x, &bias, act).unwrap();
            let composed = bias_act_slow(&x, &bias, act).unwrap();
            let e = rel(&fused, &composed);
            println!("bias_act T {t} C {c} {act:?}: {e:e}");
            assert!(e <= 1e-6, "{act:?}: {e}");
        }
    }
}

#[test]
fn gated_residual_equals_the_composed_ops() {
    for (c, offsets) in [
        (1536usize, vec![0usize, 7, 7, 20]),
        (13, vec![0, 33]),
        (3, vec![0, 0, 2]),
    ] {
        let (t, b) = (offsets[offsets.len() - 1], offsets.len() - 1);
        let (x, r, gate) = (randn(&[t, c], 10), randn(&[t, c], 11), randn(&[b, c], 12));
        let fused = gated_residual(&x, &r, &gate, &offsets).unwrap();
        let composed = gated_residual_slow(&x, &r, &gate, &offsets).unwrap();
        let e = rel(&fused, &composed);
        println!("gated_residual C {c} offsets {offsets:?}: {e:e}");
        assert!(e <= 1e-6, "{e}");
    }
}

#[test]
fn multi_head_rms_norm_of_a_strided_view_equals_the_composed_ops() {
    // q sliced out of a fused qkv projection [T, 3, H, D], as the DiT does.
    let (t, h, d) = (19usize, 3usize, 64usize);
    let qkv = randn(&[t, 3, h, d], 13);
    let q = qkv.narrow(1, 0, 1).unwrap().squeeze(1).unwrap();
    let gamma = (randn(&[h, d], 14) + 1.0).unwrap();
    let fused = multi_head_rms_norm(&q, &gamma).unwrap();
    let composed = multi_head_rms_norm_slow(&q, &gamma).unwrap();
    let e = rel(&fused, &composed);
    println!("multi_head_rms_norm T {t} H {h} D {d}: {e:e}");
    assert!(e <= 1e-6, "{e}");
}

#[test]
fn linear_applies_bias_and_activation_over_the_last_dim() {
    let (w, b) = (randn(&[24, 16], 15), randn(&[24], 16));
    let lin = Linear::new(w.clone(), Some(b.clone()));
    let x = randn(&[2, 5, 16], 17);
    let want = x
        .broadcast_matmul(&w.t().unwrap())
        .unwrap()
        .broadcast_add(&b)
        .unwrap();
    let got = lin.forward(&x).unwrap();
    assert_eq!(got.dims(), [2, 5, 24]);
    assert!(rel(&got, &want) <= 1e-6);
    let got = lin.forward_act(&x, Activation::GeluTanh).unwrap();
    let e = rel(&got, &want.gelu().unwrap());
    println!("linear + GELU: {e:e}");
    assert!(e <= 1e-6, "{e}");
}

#[test]
fn linear_residual_adds_the_residual_after_the_bias() {
    use trellis2::ops::linear::{last_linear_path, LinearPath};
    let (w, b) = (randn(&[24, 16], 18), randn(&[24], 19));
    let x = randn(&[2, 5, 16], 20);
    let r = randn(&[2, 5, 24], 21);
    for lin in [
        Linear::new(w.clone(), Some(b.clone())),
        Linear::new(w.clone(), None),
    ] {
        let want = (x.broadcast_matmul(&w.t().unwrap()).unwrap() + &r).unwrap();
        let want = match lin.bias() {
            Some(b) => want.broadcast_add(b).unwrap(),
            None => want,
        };
        let got = lin.forward_residual(&x, &r).unwrap();
        // The CPU runs the composed path, and says so.
        assert!(matches!(last_linear_path(), LinearPath::Composed(_)));
        assert_eq!(got.dims(), [2, 5, 24]);
        let e = rel(&got, &want);
        println!("linear + residual (bias {}): {e:e}", lin.bias().is_some());
        assert!(e <= 1e-6, "{e}");
        assert!(rel(&lin.forward_residual_unfused(&x, &r).unwrap(), &want) <= 1e-6);
    }
    let err = Linear::new(w, Some(b))
        .forward_residual(&x, &randn(&[10, 24], 22))
        .unwrap_err()
        .to_string();
    assert!(err.contains("residual [10, 24]"), "{err}");
}
