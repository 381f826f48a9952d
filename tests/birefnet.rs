//! BiRefNet against the upstream PyTorch model (tiny random weights, `golden/birefnet/`): the
//! logits, the mask, every stored per-stage intermediate, both patch-split orders, and the
//! wrapper's pre- and post-processing (Pillow BILINEAR in, truncation + BICUBIC out).

mod common;

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use common::{fixture, Golden};
use trellis2::image::{resize_gray_bicubic, RgbImage};
use trellis2::models::birefnet::decoder::split_patches;
use trellis2::models::birefnet::{BiRefNet, PatchOrder};
use trellis2::models::trace::Trace;
use trellis2::pipeline::matte::{mask_to_u8, network_input};
use trellis2::weights::Checkpoint;

const TOL: f32 = 1e-4;

fn model(order: PatchOrder) -> BiRefNet {
    let ckpt = Checkpoint::open_file(&fixture("golden/birefnet/weights.safetensors"))
        .expect("weights open");
    BiRefNet::load(&ckpt, order, DType::F32, &Device::Cpu).expect("strict load")
}

/// Our trace name for a golden intermediate, or None for tensors that are not model stages.
fn trace_name(golden: &str) -> Option<String> {
    const DEFORM: [(&str, &str); 4] = [
        (
            "deform.squeeze_k7",
            "squeeze_module.0.dec_att.aspp_deforms.2.atrous_conv",
        ),
        (
            "deform.block2_k1",
            "decoder.decoder_block2.dec_att.aspp1.atrous_conv",
        ),
        (
            "deform.block2_k3",
            "decoder.decoder_block2.dec_att.aspp_deforms.1.atrous_conv",
        ),
        (
            "deform.block2_k7",
            "decoder.decoder_block2.dec_att.aspp_deforms.2.atrous_conv",
        ),
    ];
    if golden.starts_with("probe.") || golden.ends_with("_einops_order") {
        return None;
    }
    for (g, ours) in DEFORM {
        if let Some(rest) = golden.strip_prefix(g) {
            return Some(format!("{ours}{rest}"));
        }
    }
    Some(golden.to_string())
}

#[test]
fn logits_mask_and_every_intermediate_match_upstream() {
    let input = Golden::open("golden/birefnet/input.safetensors");
    let output = Golden::open("golden/birefnet/output.safetensors");
    let inter = Golden::open("golden/birefnet/intermediates.safetensors");
    let net = model(PatchOrder::Rmbg);
    let mut trace = Trace::on();
    let logits = net
        .forward_traced(input.get("image"), &mut trace)
        .expect("forward");
    let ours: BTreeMap<String, Tensor> = trace.into_entries().into_iter().collect();
    let mut worst = ("", 0f32);
    let mut names: Vec<&String> = inter.tensors.keys().collect();
    names.sort();
    let mut compared = 0;
    for name in names {
        let Some(ours_name) = trace_name(name) else {
            continue;
        };
        let t = ours
            .get(&ours_name)
            .unwrap_or_else(|| panic!("no traced tensor `{ours_name}` for golden `{name}`"));
        let err = inter.rel_err(name, t);
        println!("{name:<44} {err:.2e}");
        if err > worst.1 {
            worst = (name, err);
        }
        compared += 1;
    }
    let e_logits = output.rel_err("logits", &logits);
    let mask = candle_nn::ops::sigmoid(&logits).unwrap();
    let e_mask = output.rel_err("mask", &mask);
    println!("{:<44} {e_logits:.2e}", "logits");
    println!("{:<44} {e_mask:.2e}", "mask");
    println!(
        "{compared} intermediates compared, worst {} {:.2e}",
        worst.0, worst.1
    );
    assert!(compared >= 60, "only {compared} intermediates compared");
    assert!(
        worst.1 <= TOL,
        "worst intermediate {} {:.2e}",
        worst.0,
        worst.1
    );
    assert!(
        e_logits <= TOL && e_mask <= TOL,
        "logits {e_logits:.2e}, mask {e_mask:.2e}"
    );
}

#[test]
fn einops_patch_order_matches_birefnet_head() {
    let input = Golden::open("golden/birefnet/input.safetensors");
    let output = Golden::open("golden/birefnet/output.safetensors");
    let inter = Golden::open("golden/birefnet/intermediates.safetensors");
    let net = model(PatchOrder::Einops);
    let mut trace = Trace::on();
    let logits = net
        .forward_traced(input.get("image"), &mut trace)
        .expect("forward");
    let ours: BTreeMap<String, Tensor> = trace.into_entries().into_iter().collect();
    let e = output.rel_err("logits_einops_order", &logits);
    println!("logits_einops_order {e:.2e}");
    assert!(e <= TOL);
    for k in [5, 4] {
        let name = format!("decoder.ipt_blk{k}.out_einops_order");
        let e = inter.rel_err(&name, &ours[&format!("decoder.ipt_blk{k}.out")]);
        println!("{name} {e:.2e}");
        assert!(e <= TOL);
    }
    // The two orders really are different functions of the same weights.
    assert!(output.rel_err("logits", &logits) > 0.1);
}

#[test]
fn patch_split_orders_match_the_index_probe_exactly() {
    let inter = Golden::open("golden/birefnet/intermediates.safetensors");
    let image = inter.get("probe.image");
    for (order, name) in [
        (PatchOrder::Rmbg, "probe.patches_rmbg_order"),
        (PatchOrder::Einops, "probe.patches_einops_order"),
    ] {
        let ours = split_patches(image, 4, 4, order).expect("split");
        assert_eq!(inter.rel_err(name, &ours), 0.0, "{name}");
    }
}

fn source_rgb(input: &Golden) -> RgbImage {
    let src = input.get("source_rgb");
    let (h, w, _) = src.dims3().expect("HWC");
    RgbImage {
        width: w as u32,
        height: h as u32,
        data: src.flatten_all().unwrap().to_vec1::<u8>().unwrap(),
    }
}

#[test]
fn network_input_is_pillow_bilinear_and_imagenet_normalisation() {
    let input = Golden::open("golden/birefnet/input.safetensors");
    let rgb = source_rgb(&input);
    let ours = network_input(&rgb, 224, 160, &Device::Cpu).expect("input");
    let want = input.get("image");
    let diff = common::tensor_max_abs_diff(&ours, want);
    println!("network input max |err| = {diff:.2e}");
    // Bit-exact resize: the only difference left is float32 rounding of the normalisation.
    assert!(diff <= 1e-6, "{diff}");
}

#[test]
fn mask_truncation_and_bicubic_resize_match_the_wrapper() {
    let output = Golden::open("golden/birefnet/output.safetensors");
    let mask: Vec<f32> = output.get("mask").flatten_all().unwrap().to_vec1().unwrap();
    let want_u8: Vec<u8> = output
        .get("mask_u8")
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let ours_u8 = mask_to_u8(&mask);
    assert_eq!(ours_u8, want_u8, "ToPILImage truncation of the golden mask");
    let alpha = output.get("alpha_u8");
    let (h, w) = alpha.dims2().unwrap();
    let want: Vec<u8> = alpha.flatten_all().unwrap().to_vec1().unwrap();
    let ours = resize_gray_bicubic(&want_u8, (224, 160), (w as u32, h as u32));
    let mismatches = ours.iter().zip(&want).filter(|(a, b)| a != b).count();
    println!(
        "bicubic alpha: {mismatches} of {} pixels differ",
        want.len()
    );
    assert_eq!(mismatches, 0);
}

#[test]
fn our_mask_gives_the_wrappers_alpha_within_one_level() {
    // End to end from our logits: ±1 where mask·255 sits on an integer boundary.
    let input = Golden::open("golden/birefnet/input.safetensors");
    let output = Golden::open("golden/birefnet/output.safetensors");
    let net = model(PatchOrder::Rmbg);
    let logits = net.forward(input.get("image")).expect("forward");
    let mask: Vec<f32> = candle_nn::ops::sigmoid(&logits)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let alpha = resize_gray_bicubic(&mask_to_u8(&mask), (224, 160), (263, 211));
    let want: Vec<u8> = output
        .get("alpha_u8")
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let worst = alpha
        .iter()
        .zip(&want)
        .map(|(a, b)| (*a as i32 - *b as i32).abs())
        .max()
        .unwrap_or(0);
    let off = alpha.iter().zip(&want).filter(|(a, b)| a != b).count();
    println!("alpha from our logits: {off} pixels differ, worst by {worst}");
    assert!(worst <= 1, "worst alpha difference {worst}");
}

#[test]
fn loading_is_strict_and_names_every_wrong_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = candle_core::safetensors::load(
        fixture("golden/birefnet/weights.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    tensors.remove("decoder.conv_out1.0.bias");
    tensors.insert(
        "decoder.extra.weight".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
    let err = match BiRefNet::open(dir.path(), &Device::Cpu) {
        Ok(_) => panic!("a checkpoint with a missing and an unexpected key loaded"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("missing     decoder.conv_out1.0.bias"),
        "{err}"
    );
    assert!(err.contains("unexpected  decoder.extra.weight"), "{err}");
    // A checkpoint of another model is recognised as such.
    let other = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("golden/birefnet/input.safetensors"),
        other.path().join("weights.safetensors"),
    )
    .unwrap();
    let err = match BiRefNet::open(other.path(), &Device::Cpu) {
        Ok(_) => panic!("an input file loaded as a model"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("not a BiRefNet"), "{err}");
}
