//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// `tests/fixtures/<rel>` inside this repository (never outside the repository).
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// The built `trellis2` on the CPU (outputs are compared with CPU results: a GPU the build has,
/// Metal on a Mac, must not be picked by `--device auto`), never with a model named by the
/// environment.
pub fn trellis2_cpu(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_trellis2"))
        .env("TRELLIS2_DEVICE", "cpu")
        .env_remove("TRELLIS2_MODEL")
        .args(args)
        .output()
        .expect("binary runs")
}

/// A run's stdout and stderr, for assertion messages.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A temporary path as a command-line argument.
pub fn path_arg(p: &std::path::Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}

/// A triangle mesh as an ASCII PLY: positions and faces only (no UVs, no colours).
pub fn write_ascii_ply(path: &std::path::Path, positions: &[[f32; 3]], faces: &[[u32; 3]]) {
    let mut t = format!(
        "ply\nformat ascii 1.0\nelement vertex {}\nproperty float x\nproperty float y\n\
         property float z\nelement face {}\nproperty list uchar int vertex_indices\nend_header\n",
        positions.len(),
        faces.len()
    );
    for p in positions {
        t += &format!("{} {} {}\n", p[0], p[1], p[2]);
    }
    for f in faces {
        t += &format!("3 {} {} {}\n", f[0], f[1], f[2]);
    }
    std::fs::write(path, t).unwrap();
}

/// Every tensor of `dtype` in a safetensors file as (shape, values), each value decoded from
/// its 4 little-endian bytes.
fn read_tensors_of<T>(
    path: &std::path::Path,
    dtype: safetensors::Dtype,
    decode: fn([u8; 4]) -> T,
) -> std::collections::BTreeMap<String, (Vec<usize>, Vec<T>)> {
    let bytes = std::fs::read(path).expect("fixture readable");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("fixture parses");
    let mut out = std::collections::BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != dtype {
            continue;
        }
        let values = view
            .data()
            .chunks_exact(4)
            .map(|b| decode([b[0], b[1], b[2], b[3]]))
            .collect();
        out.insert(name, (view.shape().to_vec(), values));
    }
    out
}

/// All float32 tensors of a safetensors file as (shape, values).
pub fn read_f32_tensors(
    path: &std::path::Path,
) -> std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    read_tensors_of(path, safetensors::Dtype::F32, f32::from_le_bytes)
}

/// Largest absolute element-wise difference (the library's metric: +∞ on a NaN).
#[allow(unused_imports)] // not every test binary compares raw values
pub use trellis2::selftest::max_abs_diff;

/// [`max_abs_diff`] of two tensors of one shape.
pub fn tensor_max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    trellis2::selftest::tensor_max_abs_diff(a, b).expect("two tensors of one shape")
}

/// Every element of an integer (or float) tensor as i64, flattened: exact comparisons of
/// coordinate sets and face lists whatever their stored integer dtype.
pub fn int_values(t: &candle_core::Tensor) -> Vec<i64> {
    t.to_dtype(candle_core::DType::I64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .expect("an integer tensor")
}

/// A golden io or trace file: candle tensors plus the JSON metadata of the file.
pub struct Golden {
    pub path: PathBuf,
    pub tensors: std::collections::HashMap<String, candle_core::Tensor>,
    pub metadata: std::collections::HashMap<String, serde_json::Value>,
}

impl Golden {
    pub fn open(rel: &str) -> Self {
        let path = fixture(rel);
        let bytes = std::fs::read(&path).expect("golden file readable");
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("golden parses");
        let metadata = meta
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| {
                let parsed = serde_json::from_str(&v).unwrap_or(serde_json::Value::String(v));
                (k, parsed)
            })
            .collect();
        let tensors =
            candle_core::safetensors::load(&path, &candle_core::Device::Cpu).expect("golden loads");
        Self {
            path,
            tensors,
            metadata,
        }
    }

    pub fn get(&self, name: &str) -> &candle_core::Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("{}: no tensor {name}", self.path.display()))
    }

    /// The stored key for a module path: the name itself, or `name.firstK` / `name.crop8` when
    /// the tensor was stored partially.
    pub fn key_for(&self, name: &str) -> Option<String> {
        if self.tensors.contains_key(name) {
            return Some(name.to_string());
        }
        let mut keys: Vec<&String> = self
            .tensors
            .keys()
            .filter(|k| {
                k.strip_prefix(name).is_some_and(|rest| {
                    rest == ".crop8"
                        || rest
                            .strip_prefix(".first")
                            .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
                })
            })
            .collect();
        keys.sort();
        keys.first().map(|k| k.to_string())
    }

    /// Compares our full tensor with the stored (possibly partial) golden one and returns
    /// max|ours − ref| / max|ref|. Panics when shapes cannot be matched.
    pub fn rel_err(&self, name: &str, ours: &candle_core::Tensor) -> f32 {
        use candle_core::DType;
        let key = self
            .key_for(name)
            .unwrap_or_else(|| panic!("{}: no tensor for {name}", self.path.display()));
        let want = self.get(&key).to_dtype(DType::F32).unwrap();
        let mut ours = ours.to_dtype(DType::F32).unwrap();
        if let Some(k) = key
            .rsplit_once(".first")
            .and_then(|(_, n)| n.parse::<usize>().ok())
        {
            if ours.rank() == 3
                && want.rank() == 3
                && want.dim(1).unwrap() == k
                && ours.dim(0).unwrap() == want.dim(0).unwrap()
                && ours.dim(1).unwrap() != k
            {
                ours = ours.narrow(1, 0, k).unwrap();
            } else {
                ours = ours.narrow(0, 0, k.min(ours.dim(0).unwrap())).unwrap();
            }
        } else if key.ends_with(".crop8") {
            let meta = &self.metadata[name];
            let start: Vec<usize> = meta["crop_start"]
                .as_array()
                .expect("crop_start")
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            let r = ours.rank();
            for (i, s) in start.iter().enumerate() {
                let dim = r - start.len() + i;
                ours = ours.narrow(dim, *s, 8).unwrap();
            }
        }
        assert_eq!(
            ours.dims(),
            want.dims(),
            "{name}: our shape vs golden {key}"
        );
        let a: Vec<f32> = ours.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
        trellis2::selftest::rel_err(&a, &b)
    }
}

pub mod voxel_shapes;

pub mod closed_shapes;

/// All int32 tensors of a safetensors file as (shape, values).
pub fn read_i32_tensors(
    path: &std::path::Path,
) -> std::collections::BTreeMap<String, (Vec<usize>, Vec<i32>)> {
    read_tensors_of(path, safetensors::Dtype::I32, i32::from_le_bytes)
}
pub mod fake_hub;

/// `tests/tools`, where `tests/tools/install.sh` puts the glTF validator.
pub fn tools_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/tools")
}

/// Runs the Khronos validator on each file; returns (errors, warnings, messages) per file.
pub fn validate_gltf(files: &[PathBuf]) -> Vec<(u64, u64, String)> {
    let tools = tools_dir();
    let install = "run `tests/tools/install.sh` (needs node and npm) to install it";
    assert!(
        tools
            .join("node_modules/gltf-validator/package.json")
            .is_file(),
        "the Khronos glTF validator is missing from {}: {install}",
        tools.display()
    );
    const SCRIPT: &str = r#"
const validator = require('gltf-validator');
const fs = require('fs');
(async () => {
  for (const file of process.argv.slice(1)) {
    const report = await validator.validateBytes(new Uint8Array(fs.readFileSync(file)));
    const shown = report.issues.messages.filter((m) => m.severity <= 1);
    console.log(JSON.stringify({
      errors: report.issues.numErrors,
      warnings: report.issues.numWarnings,
      messages: shown.map((m) => `${m.code} ${m.pointer || ''}: ${m.message}`).join('; '),
    }));
  }
})().catch((e) => { console.error(e); process.exit(2); });
"#;
    let out = std::process::Command::new("node")
        .arg("-e")
        .arg(SCRIPT)
        .args(files)
        .current_dir(&tools)
        .output()
        .unwrap_or_else(|e| panic!("cannot run node ({e}); install Node.js, then {install}"));
    assert!(
        out.status.success(),
        "validator failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("validator JSON line");
            (
                v["errors"].as_u64().expect("errors"),
                v["warnings"].as_u64().expect("warnings"),
                v["messages"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// A GLB file of `json` (padded with spaces) and the binary chunk `bin` (padded with zeros).
pub fn glb_bytes(json: &serde_json::Value, mut bin: Vec<u8>) -> Vec<u8> {
    let mut text = serde_json::to_vec(json).unwrap();
    while !text.len().is_multiple_of(4) {
        text.push(b' ');
    }
    while !bin.len().is_multiple_of(4) {
        bin.push(0);
    }
    let total = 12 + 8 + text.len() + 8 + bin.len();
    let mut out = b"glTF".to_vec();
    out.extend(2u32.to_le_bytes());
    out.extend((total as u32).to_le_bytes());
    out.extend((text.len() as u32).to_le_bytes());
    out.extend(b"JSON");
    out.extend(text);
    out.extend((bin.len() as u32).to_le_bytes());
    out.extend(b"BIN\0");
    out.extend(bin);
    out
}

/// Our traced tensor for a golden trace key: `name` itself, or its first `k` rows for the key
/// `name.first{k}` (the goldens cut large tensors to their first rows).
pub fn traced_for_key(
    ours: &std::collections::HashMap<String, candle_core::Tensor>,
    key: &str,
) -> candle_core::Tensor {
    let (name, rows) = match key.rsplit_once(".first") {
        Some((name, k)) => (name, Some(k.parse::<usize>().unwrap())),
        None => (key, None),
    };
    let got = ours
        .get(name)
        .unwrap_or_else(|| panic!("no traced tensor for {key}"));
    match rows {
        Some(k) => got.narrow(0, 0, k).unwrap(),
        None => got.clone(),
    }
}
