//! The mesh → flexible dual grid voxeliser against upstream's `mesh_to_flexible_dual_grid`
//! (tests/fixtures/texturing/README.md): three meshes at grid 32, the box at 64, and the
//! icosphere and open cylinder at 64 through the encoder's golden inputs (which are that
//! voxeliser's output). Row order upstream follows a hash map, so rows are compared as sets keyed
//! by voxel index: the index sets and flags exactly, dual vertices within 1e-4 of a voxel.

mod common;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use trellis2::export::tensors::read_tensors;
use trellis2::mesh::{voxelise, UnitBoxFrame, VoxelisedMesh, TEXTURING_WEIGHTS};

/// Dual-vertex tolerance in voxels.
const TOL_VOXELS: f32 = 1e-4;

fn fixture(rel: &str) -> HashMap<String, Tensor> {
    read_tensors(&common::fixture(&format!("texturing/{rel}")), &Device::Cpu).unwrap()
}

fn rows3<T: candle_core::WithDType>(t: &Tensor) -> Vec<[T; 3]> {
    t.to_vec2::<T>()
        .unwrap()
        .into_iter()
        .map(|r| [r[0], r[1], r[2]])
        .collect()
}

fn mesh_of(file: &HashMap<String, Tensor>) -> (Vec<[f32; 3]>, Vec<[u32; 3]>) {
    let v = rows3::<f32>(&file["vertices"]);
    let f = rows3::<i32>(&file["faces"])
        .into_iter()
        .map(|f| f.map(|i| i as u32))
        .collect();
    (v, f)
}

/// Upstream's voxels as (index → (in-voxel offset, flags)).
type Expected = HashMap<[i32; 3], ([f32; 3], [bool; 3])>;

fn compare(what: &str, ours: &VoxelisedMesh, want: &Expected, grid: u32) -> f32 {
    let g = grid as f32;
    assert_eq!(ours.voxels.len(), want.len(), "{what}: voxel count");
    let mut worst = 0f32;
    let mut exact = 0;
    for ((c, d), f) in ours
        .voxels
        .iter()
        .zip(&ours.dual_vertices)
        .zip(&ours.intersected)
    {
        let (offset, flags) = want
            .get(c)
            .unwrap_or_else(|| panic!("{what}: voxel {c:?} is not upstream's"));
        assert_eq!(f, flags, "{what}: intersected flags of voxel {c:?}");
        let mut e = 0f32;
        for a in 0..3 {
            let ours_offset = d[a] * g - c[a] as f32;
            e = e.max((ours_offset - offset[a]).abs());
        }
        worst = worst.max(e);
        exact += usize::from(e == 0.0);
    }
    println!(
        "{what}: {} voxels, flags identical, dual vertices max |err| {worst:.2e} voxel \
         ({exact} bit-exact)",
        ours.voxels.len()
    );
    worst
}

fn expected_from_voxeliser(file: &HashMap<String, Tensor>, grid: u32) -> Expected {
    let idx = rows3::<i32>(&file["voxel_indices"]);
    let dual = rows3::<f32>(&file["dual_vertices"]);
    let flags = rows3::<u8>(&file["intersected"]);
    let g = grid as f32;
    idx.iter()
        .zip(&dual)
        .zip(&flags)
        .map(|((c, d), f)| {
            (
                *c,
                (
                    std::array::from_fn(|a| d[a] * g - c[a] as f32),
                    f.map(|b| b != 0),
                ),
            )
        })
        .collect()
}

#[test]
fn voxeliser_matches_upstream_at_grid_32_and_64() {
    let mut worst = Vec::new();
    for (mesh, grid) in [
        ("icosphere", 32),
        ("open_cylinder", 32),
        ("box", 32),
        ("box", 64),
    ] {
        let file = fixture(&format!("voxelise/{mesh}.{grid}.safetensors"));
        let (v, f) = mesh_of(&file);
        let ours = voxelise(&v, &f, grid, TEXTURING_WEIGHTS).unwrap();
        worst.push(compare(
            &format!("{mesh}.{grid}"),
            &ours,
            &expected_from_voxeliser(&file, grid),
            grid,
        ));
    }
    assert_within(&worst);
}

fn assert_within(worst: &[f32]) {
    let max = worst.iter().copied().fold(0f32, f32::max);
    assert!(
        max <= TOL_VOXELS,
        "dual vertices off by up to {max:e} voxel > {TOL_VOXELS:e}"
    );
}

/// The encoder's golden inputs at 64 are the voxeliser's output (`vertices.feats` = in-voxel
/// offsets, `vertices.coords` = batch 0 + index): the same check for the other two meshes.
#[test]
fn voxeliser_matches_the_encoder_inputs_at_grid_64() {
    let mut worst = Vec::new();
    for mesh in ["icosphere", "open_cylinder"] {
        let (v, f) = mesh_of(&fixture(&format!("voxelise/{mesh}.32.safetensors")));
        let io = fixture(&format!("encoder/{mesh}.64.io.safetensors"));
        let coords = io["vertices.coords"].to_vec2::<i32>().unwrap();
        let offsets = rows3::<f32>(&io["vertices.feats"]);
        let flags = rows3::<u8>(&io["intersected.feats"]);
        let want: Expected = coords
            .iter()
            .zip(&offsets)
            .zip(&flags)
            .map(|((c, o), f)| {
                assert_eq!(c[0], 0, "one batch item");
                ([c[1], c[2], c[3]], (*o, f.map(|b| b != 0)))
            })
            .collect();
        let ours = voxelise(&v, &f, 64, TEXTURING_WEIGHTS).unwrap();
        worst.push(compare(
            &format!("{mesh}.64 (encoder inputs)"),
            &ours,
            &want,
            64,
        ));
    }
    assert_within(&worst);
}

/// `preprocess_mesh` (centre, scale by 0.99999 / largest extent, (x, y, z) → (x, −z, y)) on the
/// raw meshes gives upstream's normalised vertices (to the f32 rounding of the stored raw mesh).
#[test]
fn normalisation_matches_preprocess_mesh() {
    for mesh in ["icosphere", "open_cylinder", "box"] {
        let file = fixture(&format!("voxelise/{mesh}.32.safetensors"));
        let raw = rows3::<f32>(&file["raw_vertices"]);
        let want = rows3::<f32>(&file["vertices"]);
        let frame = UnitBoxFrame::fit(&raw).unwrap();
        let got = frame.apply_all(&raw);
        let worst = got
            .iter()
            .zip(&want)
            .flat_map(|(g, w)| (0..3).map(move |a| (g[a] - w[a]).abs()))
            .fold(0f32, f32::max);
        // The raw vertices are stored in f32; upstream normalised their f64 originals.
        assert!(worst <= 1e-7, "{mesh}: off by {worst:e}");
    }
}

/// `trellis2 dev voxelise` on a golden file reproduces its outputs; a mesh outside the
/// normalised box is refused in one line, exit 1, no output written.
#[test]
fn dev_voxelise_writes_upstreams_names() {
    let dir = tempfile::tempdir().unwrap();
    let input = common::fixture("texturing/voxelise/box.32.safetensors");
    let out = dir.path().join("box.safetensors");
    let run = |input: &std::path::Path, out: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_trellis2"))
            .args(["dev", "voxelise", "--grid-size", "32", "--inputs"])
            .arg(input)
            .arg("-o")
            .arg(out)
            .output()
            .unwrap()
    };
    let done = run(&input, &out);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let ours = read_tensors(&out, &Device::Cpu).unwrap();
    let golden = fixture("voxelise/box.32.safetensors");
    let want = expected_from_voxeliser(&golden, 32);
    let got = VoxelisedMesh {
        voxels: rows3::<i32>(&ours["voxel_indices"]),
        dual_vertices: rows3::<f32>(&ours["dual_vertices"]),
        intersected: rows3::<u8>(&ours["intersected"])
            .into_iter()
            .map(|f| f.map(|b| b != 0))
            .collect(),
    };
    assert_within(&[compare("dev voxelise box.32", &got, &want, 32)]);

    // The raw (unnormalised) vertices leave the box.
    let raw = dir.path().join("raw.safetensors");
    let tensors = vec![
        ("vertices".to_string(), golden["raw_vertices"].clone()),
        ("faces".to_string(), golden["faces"].clone()),
    ];
    trellis2::export::tensors::write_tensors(&raw, &tensors, None).unwrap();
    let refused = dir.path().join("refused.safetensors");
    let failed = run(&raw, &refused);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("outside the normalised box"), "{stderr}");
    assert!(!refused.exists());
}
