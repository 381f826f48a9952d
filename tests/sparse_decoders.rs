//! Parity of the decoders with the golden upstream forward passes (CPU f32), block by block.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use trellis2::export::tensors::read_tensors;
use trellis2::models::registry::{
    load_shape_decoder, load_ss_decoder, load_unet_decoder, ModelSource,
};
use trellis2::models::sc_vae::activations::{dual_vertices, pbr_attributes};
use trellis2::models::trace::Trace;
use trellis2::pipeline::structure::{max_pool2, occupancy, occupied_coords};
use trellis2::sparse::SparseTensor;

const TOL: f32 = 1e-4;

fn golden(name: &str) -> HashMap<String, Tensor> {
    read_tensors(
        &common::fixture(&format!("golden/golden/{name}")),
        &Device::Cpu,
    )
    .unwrap()
}

fn model(role: &str) -> ModelSource {
    ModelSource::open(&common::fixture(&format!("golden/models/{role}"))).unwrap()
}

/// Safetensors metadata of a golden file (each value is a JSON document).
fn metadata(name: &str) -> HashMap<String, serde_json::Value> {
    let bytes = std::fs::read(common::fixture(&format!("golden/golden/{name}"))).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    meta.metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, serde_json::from_str(&v).unwrap()))
        .collect()
}

/// max|a − b| / max|b|, printed; fails above [`TOL`].
fn check(what: &str, got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let g = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let w = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let err = common::max_abs_diff(&g, &w);
    let scale = w.iter().map(|v| v.abs()).fold(0f32, f32::max);
    let rel = err / scale.max(f32::MIN_POSITIVE);
    println!("  {what:<32} max|err| {err:.3e}  max|ref| {scale:.3e}  rel {rel:.3e}");
    assert!(rel <= TOL, "{what}: max|err|/max|ref| = {rel:e} > {TOL:e}");
    rel
}

fn exact_i32(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let g = got.flatten_all().unwrap().to_vec1::<i32>().unwrap();
    let w = want.flatten_all().unwrap().to_vec1::<i32>().unwrap();
    assert!(g == w, "{what}: coordinates differ");
    println!("  {what:<32} {} rows, identical", got.dims()[0]);
}

#[test]
fn ss_decoder_matches_golden() {
    let io = golden("sparse_structure_decoder.io.safetensors");
    let tr = golden("sparse_structure_decoder.trace.safetensors");
    let meta = metadata("sparse_structure_decoder.trace.safetensors");
    let dec =
        load_ss_decoder(&model("sparse_structure_decoder"), DType::F32, &Device::Cpu).unwrap();
    let mut trace = Trace::on();
    let logits = dec.forward_traced(&io["z"], &mut trace).unwrap();
    println!("SparseStructureDecoder");
    let mut checked = 0;
    for (name, full) in trace.into_entries() {
        let info = &meta[&name];
        let start: Vec<usize> = serde_json::from_value(info["crop_start"].clone()).unwrap();
        let size = info["crop_size"].as_u64().unwrap() as usize;
        let mut crop = full;
        for (axis, s) in start.iter().enumerate() {
            crop = crop.narrow(axis + 2, *s, size).unwrap();
        }
        check(
            &format!("{name} (crop8)"),
            &crop,
            &tr[&format!("{name}.crop8")],
        );
        checked += 1;
    }
    assert_eq!(checked, tr.len(), "every trace entry is compared");
    check("logits", &logits, &io["logits"]);
    let occ = occupancy(&logits).unwrap();
    let want = io["occupancy"]
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap();
    assert_eq!(
        occ.flatten_all().unwrap().to_vec1::<u8>().unwrap(),
        want,
        "occupancy"
    );
    // The pipeline's coarse structure: pooling then argwhere equals pooling the golden grid.
    let pooled = occupied_coords(&max_pool2(&occ).unwrap()).unwrap();
    let from_golden = occupied_coords(&max_pool2(&io["occupancy"]).unwrap()).unwrap();
    exact_i32("occupancy (max-pooled) coords", &pooled, &from_golden);
}

/// Compares every entry of a golden sparse trace with ours (`.firstK` = leading rows).
fn check_sparse_trace(trace: Trace, golden_trace: &HashMap<String, Tensor>) {
    let ours: HashMap<String, Tensor> = trace.into_entries().into_iter().collect();
    let mut keys: Vec<&String> = golden_trace.keys().collect();
    keys.sort();
    for key in keys {
        let want = &golden_trace[key];
        if key.ends_with(".coords") {
            exact_i32(key, &ours[key.as_str()], want);
            continue;
        }
        let got = common::traced_for_key(&ours, key);
        check(key, &got, want);
    }
}

fn latent(io: &HashMap<String, Tensor>) -> SparseTensor {
    SparseTensor::new(&io["latent.coords"], io["latent.feats"].clone()).unwrap()
}

#[test]
fn shape_decoder_matches_golden() {
    let io = golden("shape_slat_decoder.io.safetensors");
    let tr = golden("shape_slat_decoder.trace.safetensors");
    let dec = load_shape_decoder(&model("shape_slat_decoder"), DType::F32, &Device::Cpu).unwrap();
    let mut trace = Trace::on();
    let out = dec
        .net
        .forward_traced(&latent(&io), None, &mut trace)
        .unwrap();
    println!("FlexiDualGridVaeDecoder (trace)");
    check_sparse_trace(trace, &tr);
    println!("FlexiDualGridVaeDecoder (outputs)");
    check("out.raw_feats", out.raw.feats(), &io["out.raw_feats"]);
    exact_i32("out.coords", out.raw.coords(), &io["out.coords"]);
    assert_eq!(out.subs.len(), 4);
    for (i, s) in out.subs.iter().enumerate() {
        check(
            &format!("subs.{i}.feats"),
            s.feats(),
            &io[&format!("subs.{i}.feats")],
        );
        exact_i32(
            &format!("subs.{i}.coords"),
            s.coords(),
            &io[&format!("subs.{i}.coords")],
        );
    }
    let up = dec.net.upsample(&latent(&io), 4).unwrap();
    exact_i32("upsample4.coords", &up, &io["upsample4.coords"]);
    // The activations on the golden raw output agree with the spec formulas.
    let v = dual_vertices(&io["out.raw_feats"], dec.voxel_margin).unwrap();
    let (lo, hi) = (
        v.min_all().unwrap().to_scalar::<f32>().unwrap(),
        v.max_all().unwrap().to_scalar::<f32>().unwrap(),
    );
    assert!(
        lo > -0.5 && hi < 1.5,
        "dual vertices in (-0.5, 1.5): {lo} {hi}"
    );
}

#[test]
fn texture_decoder_matches_golden_with_guide_subdivisions() {
    let io = golden("tex_slat_decoder.io.safetensors");
    let tr = golden("tex_slat_decoder.trace.safetensors");
    let shape_io = golden("shape_slat_decoder.io.safetensors");
    let guide: Vec<SparseTensor> = (0..4)
        .map(|i| {
            SparseTensor::new(
                &shape_io[&format!("subs.{i}.coords")],
                shape_io[&format!("subs.{i}.feats")].clone(),
            )
            .unwrap()
        })
        .collect();
    let dec = load_unet_decoder(&model("tex_slat_decoder"), DType::F32, &Device::Cpu).unwrap();
    let mut trace = Trace::on();
    let out = dec
        .forward_traced(&latent(&io), Some(&guide), &mut trace)
        .unwrap();
    println!("SparseUnetVaeDecoder (trace)");
    check_sparse_trace(trace, &tr);
    println!("SparseUnetVaeDecoder (outputs)");
    check("out.feats", out.raw.feats(), &io["out.feats"]);
    exact_i32("out.coords", out.raw.coords(), &io["out.coords"]);
    // The texture voxels line up row by row with the shape decoder's.
    exact_i32(
        "out.coords = shape out.coords",
        out.raw.coords(),
        &shape_io["out.coords"],
    );
    let pbr = pbr_attributes(out.raw.feats()).unwrap();
    let want = io["out.feats"].affine(0.5, 0.5).unwrap();
    check("pbr_attributes", &pbr, &want);
}
