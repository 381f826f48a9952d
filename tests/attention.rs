//! The flash-style attention op against a plain full-matrix reference.

use candle_core::{Device, Tensor};
use trellis2::ops::attention::{varlen_attention, varlen_attention_slow};
use trellis2::rng::TorchRng;
use trellis2::selftest::tensor_rel_err;

fn random(rng: &mut TorchRng, shape: (usize, usize, usize), amplitude: f32) -> Tensor {
    let n = shape.0 * shape.1 * shape.2;
    let data: Vec<f32> = rng.randn(n.max(16))[..n]
        .iter()
        .map(|v| v * amplitude)
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

fn offsets(lengths: &[usize]) -> Vec<usize> {
    let mut o = vec![0];
    for l in lengths {
        o.push(o.last().unwrap() + l);
    }
    o
}

fn max_rel_err(a: &Tensor, b: &Tensor) -> f32 {
    tensor_rel_err(a, b).unwrap()
}

/// (heads, head dim, query lengths, key lengths, amplitude)
type Case = (usize, usize, &'static [usize], &'static [usize], f32);

#[test]
fn matches_the_full_matrix_reference_on_awkward_shapes() {
    let mut rng = TorchRng::new(3);
    let cases: &[Case] = &[
        (2, 64, &[1], &[1], 1.0),
        (2, 64, &[63, 64, 65], &[63, 64, 65], 1.0),
        (3, 128, &[130, 0, 7], &[130, 0, 7], 1.0),
        (1, 5, &[17, 3], &[40, 1], 1.0), // cross-attention: other key lengths
        (4, 32, &[200], &[77], 6.0),     // large scores: softmax stability
        (12, 128, &[129, 300], &[1029, 1029], 1.0),
    ];
    for &(h, d, ql, kl, amp) in cases {
        let (qo, ko) = (offsets(ql), offsets(kl));
        let q = random(&mut rng, (*qo.last().unwrap(), h, d), amp);
        let k = random(&mut rng, (*ko.last().unwrap(), h, d), amp);
        let v = random(&mut rng, (*ko.last().unwrap(), h, d), 1.0);
        let scale = 1.0 / (d as f32).sqrt();
        let fast = varlen_attention(&q, &k, &v, &qo, &ko, scale).unwrap();
        let slow = varlen_attention_slow(&q, &k, &v, &qo, &ko, scale).unwrap();
        assert_eq!(fast.dims(), q.dims());
        let err = if q.dims()[0] == 0 {
            0.0
        } else {
            max_rel_err(&fast, &slow)
        };
        println!(
            "heads {h:>2} dim {d:>3} q {ql:?} kv {kl:?} amp {amp}: max|err|/max|ref| = {err:e}"
        );
        assert!(err <= 1e-5, "{err}");
    }
}

#[test]
fn half_precision_inputs_give_their_dtype_back() {
    let mut rng = TorchRng::new(5);
    let q = random(&mut rng, (10, 2, 64), 1.0);
    let o = offsets(&[10]);
    let half = q.to_dtype(candle_core::DType::BF16).unwrap();
    let out = varlen_attention(&half, &half, &half, &o, &o, 0.125).unwrap();
    assert_eq!(out.dtype(), candle_core::DType::BF16);
    let reference = varlen_attention_slow(
        &half.to_dtype(candle_core::DType::F32).unwrap(),
        &half.to_dtype(candle_core::DType::F32).unwrap(),
        &half.to_dtype(candle_core::DType::F32).unwrap(),
        &o,
        &o,
        0.125,
    )
    .unwrap();
    let err = max_rel_err(&out.to_dtype(candle_core::DType::F32).unwrap(), &reference);
    assert!(err < 1e-2, "bf16 rounding only: {err}");
}

#[test]
fn bad_shapes_and_offsets_are_refused_with_the_values() {
    let q = Tensor::zeros((4, 2, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
    let k3 = Tensor::zeros((4, 3, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
    let msg = |r: candle_core::Result<Tensor>| r.unwrap_err().to_string();
    assert!(msg(varlen_attention(&q, &k3, &k3, &[0, 4], &[0, 4], 1.0)).contains("[4, 3, 8]"));
    assert!(msg(varlen_attention(&q, &q, &q, &[0, 3], &[0, 4], 1.0)).contains("[0, 3]"));
    assert!(msg(varlen_attention(&q, &q, &q, &[0, 4, 2], &[0, 2, 4], 1.0)).contains("0 to 4"));
    assert!(msg(varlen_attention(&q, &q, &q, &[0, 2, 4], &[0, 0, 4], 1.0)).contains("no keys"));
    let flat = Tensor::zeros((4, 16), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(msg(varlen_attention(&flat, &q, &q, &[0, 4], &[0, 4], 1.0)).contains("[4, 16]"));
}
