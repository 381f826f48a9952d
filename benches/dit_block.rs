//! One DiT block at the release width (1536 channels, 12 heads of 128, MLP 8192, condition 1024
//! channels × 1029 tokens), random weights, on the CPU: the per-block cost that the flow stages
//! repeat 30 blocks × 12–22 calls. Run with `cargo bench --bench dit_block`.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use trellis2::models::dit::{Condition, DitConfig, FlowDit, FlowInput};
use trellis2::rng::TorchRng;

fn main() {
    let device = Device::Cpu;
    let cfg: DitConfig = serde_json::from_value(serde_json::json!({
        "resolution": 64, "in_channels": 32, "out_channels": 32, "model_channels": 1536,
        "cond_channels": 1024, "num_blocks": 1, "num_heads": 12, "mlp_ratio": 5.3334,
        "pe_mode": "rope", "share_mod": true, "qk_rms_norm": true, "qk_rms_norm_cross": true
    }))
    .expect("config");
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let model = FlowDit::new(&cfg, vb).expect("model");
    let mut rng = TorchRng::new(0);
    let cond = Tensor::from_vec(rng.randn(1029 * 1024), (1, 1029, 1024), &device).expect("cond");
    let kv = model.cond_kv(&cond).expect("cond kv");
    let t = Tensor::new(&[500f32], &device).expect("t");
    let tokens: Vec<usize> = match std::env::args().nth(1).as_deref() {
        Some("--quick") => vec![1024],
        _ => vec![1024, 4096, 8192],
    };
    for n in tokens {
        // A sparse token set on a 64³ grid (a slab), batch 0.
        let coords: Vec<i32> = (0..n as i32)
            .flat_map(|i| [0, i % 64, (i / 64) % 64, i / 4096])
            .collect();
        let coords = Tensor::from_vec(coords, (n, 4), &device).expect("coords");
        let feats = Tensor::from_vec(rng.randn(n * 32), (n, 32), &device).expect("feats");
        let input = FlowInput::Sparse {
            feats: &feats,
            coords: &coords,
            concat_cond: None,
        };
        let start = Instant::now();
        let out = model
            .forward(&input, &t, &Condition::Tokens(&kv))
            .expect("forward");
        let secs = start.elapsed().as_secs_f64();
        // Linear layers: qkv 3C², out C², q C², out C², MLP 2·C·H (per token, ×2 FLOPs);
        // attention 4·N²·C self + 4·N·L·C cross.
        let (c, hid, l) = (1536f64, 8192f64, 1029f64);
        let nf = n as f64;
        let flops = 2.0 * nf * (6.0 * c * c + 2.0 * c * hid) + 4.0 * nf * nf * c + 4.0 * nf * l * c;
        println!(
            "tokens {n:>5}: {secs:>7.3} s per block  {:>6.1} GFLOP/s  (checksum {:.3})",
            flops / secs / 1e9,
            out.sum_all()
                .and_then(|s| s.to_scalar::<f32>())
                .unwrap_or(f32::NAN)
        );
    }
}
