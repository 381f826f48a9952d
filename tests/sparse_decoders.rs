//! Parity of the decoders with the golden upstream forward passes (CPU f32), block by block.

mod common;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use trellis2::export::tensors::read_tensors;
use trellis2::models::forward::{load_ss_decoder, ModelSource};
use trellis2::models::trace::Trace;
use trellis2::pipeline::structure::{max_pool2, occupancy, occupied_coords};

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
    let dec = load_ss_decoder(&model("sparse_structure_decoder"), &Device::Cpu).unwrap();
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
