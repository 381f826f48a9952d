//! Checkpoint reading and strict loading, on files the tests write.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use trellis2::weights::{Checkpoint, ModelDir};

fn write_checkpoint(stem: &Path, tensors: &[(&str, Tensor)], class: &str) {
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    std::fs::create_dir_all(stem.parent().unwrap()).unwrap();
    candle_core::safetensors::save(&map, format!("{}.safetensors", stem.display())).unwrap();
    std::fs::write(
        format!("{}.json", stem.display()),
        format!(r#"{{"name": "{class}", "args": {{"channels": 4}}}}"#),
    )
    .unwrap();
}

fn linear_tensors(dtype: DType) -> Vec<(&'static str, Tensor)> {
    let dev = Device::Cpu;
    let w = Tensor::arange(0f32, 12.0, &dev)
        .unwrap()
        .reshape((3, 4))
        .unwrap()
        .affine(0.25, -1.0)
        .unwrap();
    let b = Tensor::new(&[0.5f32, -0.5, 1.5], &dev).unwrap();
    vec![
        ("proj.weight", w.to_dtype(dtype).unwrap()),
        ("proj.bias", b.to_dtype(dtype).unwrap()),
    ]
}

#[test]
fn half_precision_checkpoints_are_cast_at_load() {
    let dir = tempfile::tempdir().unwrap();
    for dtype in [DType::BF16, DType::F16, DType::F32] {
        let stem = dir.path().join(format!("ckpts/lin_{dtype:?}"));
        write_checkpoint(&stem, &linear_tensors(dtype), "Linear");
        let ckpt = Checkpoint::open_stem(&stem).unwrap();
        assert_eq!(ckpt.class_name(), Some("Linear"));
        let infos = ckpt.tensor_infos();
        assert_eq!(infos.len(), 2);
        assert_eq!(infos[0].name, "proj.bias");
        assert_eq!(infos[1].shape, vec![3, 4]);
        let w = ckpt.load("proj.weight", DType::F32, &Device::Cpu).unwrap();
        assert_eq!(w.dtype(), DType::F32);
        // Quarter steps are exact in bf16 and f16, so the cast must round-trip exactly.
        let got: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        let want: Vec<f32> = (0..12).map(|i| i as f32 * 0.25 - 1.0).collect();
        assert_eq!(got, want, "{dtype:?}");
    }
}

#[test]
fn strict_loading_builds_a_model_when_everything_matches() {
    let dir = tempfile::tempdir().unwrap();
    let stem = dir.path().join("lin");
    write_checkpoint(&stem, &linear_tensors(DType::F16), "Linear");
    let ckpt = Checkpoint::open_stem(&stem).unwrap();
    let strict = ckpt.strict();
    let vb = strict.var_builder(DType::F32, &Device::Cpu);
    let lin = candle_nn::linear(4, 3, vb.pp("proj")).unwrap();
    strict.finish().unwrap();
    let x = Tensor::ones((1, 4), DType::F32, &Device::Cpu).unwrap();
    let y: Vec<f32> = candle_core::Module::forward(&lin, &x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    // Row sums of the weight plus bias: (-4+1.5)+0.5, ... computed by hand.
    assert_eq!(y, vec![-2.5 + 0.5, 1.5 - 0.5, 5.5 + 1.5]);
}

#[test]
fn strict_loading_names_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let stem = dir.path().join("bad");
    let dev = Device::Cpu;
    write_checkpoint(
        &stem,
        &[
            (
                "proj.weight",
                Tensor::zeros((4, 3), DType::F32, &dev).unwrap(),
            ),
            ("extra.scale", Tensor::zeros(7, DType::F32, &dev).unwrap()),
        ],
        "Linear",
    );
    let ckpt = Checkpoint::open_stem(&stem).unwrap();
    let strict = ckpt.strict();
    let vb = strict.var_builder(DType::F32, &dev);
    let _ = candle_nn::linear(4, 3, vb.pp("proj")).unwrap();
    let err = strict.finish().unwrap_err();
    println!("{err}");
    assert_eq!(err.missing.len(), 1);
    assert_eq!(err.missing[0].0, "proj.bias");
    assert_eq!(err.unexpected[0].0, "extra.scale");
    assert_eq!(
        err.misshaped[0],
        ("proj.weight".into(), vec![3, 4], vec![4, 3])
    );
    assert!(err.to_string().contains("bad.safetensors"));
}

#[test]
fn model_directory_resolves_roles_and_foreign_stems() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_checkpoint(
        &root.join("ckpts/flow"),
        &linear_tensors(DType::BF16),
        "Flow",
    );
    // A stem pointing into another repository, stored in this directory's ckpts/.
    write_checkpoint(
        &root.join("ckpts/ss_dec"),
        &linear_tensors(DType::F16),
        "Dec",
    );
    std::fs::write(
        root.join("pipeline.json"),
        r#"{"name": "Trellis2ImageTo3DPipeline", "args": {"models": {
            "flow": "ckpts/flow",
            "decoder": "microsoft/TRELLIS-image-large/ckpts/ss_dec",
            "absent": "ckpts/nothing_here"}}}"#,
    )
    .unwrap();
    let md = ModelDir::open(root).unwrap();
    assert_eq!(md.pipeline.name, "Trellis2ImageTo3DPipeline");
    assert_eq!(md.checkpoint("flow").unwrap().class_name(), Some("Flow"));
    assert_eq!(md.checkpoint("decoder").unwrap().class_name(), Some("Dec"));
    let err = format!("{:#}", md.checkpoint("absent").err().unwrap());
    assert!(err.contains("nothing_here.safetensors"), "{err}");
    let err = format!("{:#}", md.checkpoint("unknown").err().unwrap());
    assert!(err.contains("has no model `unknown`"), "{err}");
}

#[test]
fn broken_files_give_errors_that_name_them() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a safetensors file at all").unwrap();
    let truncated = dir.path().join("trunc");
    write_checkpoint(&truncated, &linear_tensors(DType::F32), "Linear");
    let full = std::fs::read(truncated.with_extension("safetensors")).unwrap();
    std::fs::write(
        truncated.with_extension("safetensors"),
        &full[..full.len() - 10],
    )
    .unwrap();
    for path in [
        empty,
        garbage,
        truncated.with_extension("safetensors"),
        dir.path().join("missing.safetensors"),
    ] {
        let err = format!("{:#}", Checkpoint::open_file(&path).err().unwrap());
        println!("{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }
    let no_json = dir.path().join("nojson");
    write_checkpoint(&no_json, &linear_tensors(DType::F32), "Linear");
    std::fs::remove_file(no_json.with_extension("json")).unwrap();
    let err = format!("{:#}", Checkpoint::open_stem(&no_json).err().unwrap());
    assert!(err.contains("nojson.json"), "{err}");
}
