//! Parity of the shape encoder (`FlexiDualGridVaeEncoder`, the texturing pipeline's) with the
//! golden upstream forward passes (CPU f32), block by block, on two voxelised meshes at grid 64
//! (tests/fixtures/texturing/README.md): every traced block ≤ 1e-4 (max|err| / max|ref|), the
//! coordinates of every level exact, the latent's coordinates exact as a set.

mod common;

use std::collections::{BTreeSet, HashMap};

use candle_core::{DType, Device, Tensor};
use trellis2::export::tensors::read_tensors;
use trellis2::models::registry::{load_shape_encoder, ModelSource};
use trellis2::models::trace::Trace;
use trellis2::sparse::SparseTensor;

const TOL: f32 = 1e-4;

fn fixture(rel: &str) -> HashMap<String, Tensor> {
    read_tensors(&common::fixture(&format!("texturing/{rel}")), &Device::Cpu).unwrap()
}

/// max|a − b| / max|b|, printed; fails above [`TOL`].
fn check(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let g = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let w = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let err = common::max_abs_diff(&g, &w);
    let scale = w.iter().map(|v| v.abs()).fold(0f32, f32::max);
    let rel = err / scale.max(f32::MIN_POSITIVE);
    println!("  {what:<32} max|err| {err:.3e}  max|ref| {scale:.3e}  rel {rel:.3e}");
    assert!(rel <= TOL, "{what}: max|err|/max|ref| = {rel:e} > {TOL:e}");
}

fn rows(t: &Tensor) -> Vec<Vec<i32>> {
    t.to_vec2::<i32>().unwrap()
}

#[test]
fn shape_encoder_matches_golden_block_by_block() {
    let source =
        ModelSource::open(&common::fixture("texturing/models/shape_slat_encoder")).unwrap();
    let enc = load_shape_encoder(&source, DType::F32, &Device::Cpu).unwrap();
    for mesh in ["icosphere", "open_cylinder"] {
        let io = fixture(&format!("encoder/{mesh}.64.io.safetensors"));
        let golden_trace = fixture(&format!("encoder/{mesh}.64.trace.safetensors"));
        let vertices =
            SparseTensor::new(&io["vertices.coords"], io["vertices.feats"].clone()).unwrap();
        let mut trace = Trace::on();
        let out = enc
            .forward_traced(&vertices, &io["intersected.feats"], &mut trace)
            .unwrap();
        println!("FlexiDualGridVaeEncoder on {mesh}.64 (trace)");
        let ours: HashMap<String, Tensor> = trace.into_entries().into_iter().collect();
        let mut keys: Vec<&String> = golden_trace.keys().collect();
        keys.sort();
        for key in keys {
            let want = &golden_trace[key];
            if key.ends_with(".coords") {
                // Levels after the first are sorted like upstream's `unique`: same rows, same
                // order; the first is the input's order.
                assert_eq!(rows(&ours[key.as_str()]), rows(want), "{key}");
                println!("  {key:<32} {} rows, identical", want.dims()[0]);
                continue;
            }
            let got = common::traced_for_key(&ours, key);
            check(key, &got, want);
        }
        println!("FlexiDualGridVaeEncoder on {mesh}.64 (outputs)");
        check("mean", &out.mean, &io["mean"]);
        check("logvar", &out.logvar, &io["logvar"]);
        check("z.feats", out.z.feats(), &io["z.feats"]);
        let ours: BTreeSet<Vec<i32>> = rows(out.z.coords()).into_iter().collect();
        let want: BTreeSet<Vec<i32>> = rows(&io["z.coords"]).into_iter().collect();
        assert_eq!(ours, want, "z.coords as a set");
        assert_eq!(
            out.z.len(),
            io["z.coords"].dims()[0],
            "no duplicate latent voxel"
        );
    }
}

/// Strict loading: a checkpoint missing one tensor is refused, naming it.
#[test]
fn a_missing_encoder_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let src = common::fixture("texturing/models/shape_slat_encoder");
    let mut tensors = read_tensors(&src.with_extension("safetensors"), &Device::Cpu).unwrap();
    tensors.remove("blocks.2.0.conv.weight").unwrap();
    let stem = dir.path().join("enc");
    let all: Vec<(String, Tensor)> = tensors.into_iter().collect();
    trellis2::export::tensors::write_tensors(&stem.with_extension("safetensors"), &all, None)
        .unwrap();
    std::fs::copy(src.with_extension("json"), stem.with_extension("json")).unwrap();
    let source = ModelSource::open(&stem).unwrap();
    let err = load_shape_encoder(&source, DType::F32, &Device::Cpu)
        .err()
        .expect("a missing tensor fails")
        .to_string();
    assert!(err.contains("blocks.2.0.conv.weight"), "{err}");
}

/// The texturing pipeline's decode: a texture decoder run through the encoder's structure
/// rebuilds exactly the encoded voxels, in the encoder's input order (upstream reuses the
/// encoder's `channel2spatial` caches), and each level's subdivision inverts its downsampling.
#[test]
fn a_decoder_through_the_encoder_structure_rebuilds_the_encoded_voxels() {
    use trellis2::models::registry::load_unet_decoder;
    let enc_source =
        ModelSource::open(&common::fixture("texturing/models/shape_slat_encoder")).unwrap();
    let enc = load_shape_encoder(&enc_source, DType::F32, &Device::Cpu).unwrap();
    let dec_source = ModelSource::open(&common::fixture("golden/models/tex_slat_decoder")).unwrap();
    let dec = load_unet_decoder(&dec_source, DType::F32, &Device::Cpu).unwrap();
    let io = fixture("encoder/open_cylinder.64.io.safetensors");
    let vertices = SparseTensor::new(&io["vertices.coords"], io["vertices.feats"].clone()).unwrap();
    let out = enc.forward(&vertices, &io["intersected.feats"]).unwrap();
    assert_eq!(out.structure.len(), 4);
    assert!(
        dec.forward(&out.z, None).is_err(),
        "the texture decoder needs a guide"
    );
    let raw = dec.forward_through(&out.z, &out.structure).unwrap();
    assert_eq!(rows(raw.coords()), rows(&io["vertices.coords"]));
    assert_eq!(raw.feats().dims(), &[io["vertices.coords"].dims()[0], 6]);
    // Wrong number of levels: refused.
    assert!(dec.forward_through(&out.z, &out.structure[..3]).is_err());
}
