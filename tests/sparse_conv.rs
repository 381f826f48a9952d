//! The tiled submanifold conv against its plain twin on random data and edge cases.

use candle_core::{DType, Device, Tensor};
use trellis2::ops::{submanifold_conv3d, submanifold_conv3d_slow};
use trellis2::selftest::{rel_err, uniform, voxel_shell};
use trellis2::sparse::SparseTensor;

/// A sphere shell of radius `r` in batch item `b`, centred in a `2·centre` grid.
fn shell(b: i32, r: f32, centre: i32) -> Vec<[i32; 4]> {
    voxel_shell(b, 2 * centre, r, 0.9)
}

struct Case {
    name: &'static str,
    voxels: fn() -> Vec<[i32; 4]>,
    ci: usize,
    co: usize,
}

const CASES: &[Case] = &[
    Case {
        name: "empty",
        voxels: Vec::new,
        ci: 4,
        co: 3,
    },
    Case {
        name: "one voxel",
        voxels: || vec![[0, 5, 5, 5]],
        ci: 5,
        co: 7,
    },
    Case {
        name: "isolated voxels",
        voxels: || {
            (0..40)
                .map(|i| [0, 3 * (i % 4), 3 * (i / 4 % 5), 3 * (i / 20)])
                .collect()
        },
        ci: 3,
        co: 2,
    },
    Case {
        name: "two shells, odd channels, tiles with ragged tails",
        voxels: || {
            let mut v = shell(0, 6.0, 8);
            v.extend(shell(1, 4.0, 5));
            v
        },
        ci: 17,
        co: 9,
    },
    Case {
        name: "dense cube, 1 channel",
        voxels: || (0..343).map(|i| [0, i / 49, i / 7 % 7, i % 7]).collect(),
        ci: 1,
        co: 1,
    },
    Case {
        name: "wide channels",
        voxels: || shell(0, 3.0, 4),
        ci: 64,
        co: 130,
    },
    Case {
        name: "batch gap",
        voxels: || vec![[0, 0, 0, 0], [2, 0, 0, 1], [2, 0, 1, 1]],
        ci: 2,
        co: 3,
    },
];

#[test]
fn tiled_conv_matches_the_plain_definition() {
    let dev = Device::Cpu;
    for (i, case) in CASES.iter().enumerate() {
        let rows = (case.voxels)();
        let n = rows.len();
        let coords = Tensor::from_vec(
            rows.iter().flatten().copied().collect::<Vec<i32>>(),
            (n, 4),
            &dev,
        )
        .unwrap();
        let feats = Tensor::from_vec(uniform(i as u64, n * case.ci), (n, case.ci), &dev).unwrap();
        let x = SparseTensor::new(&coords, feats).unwrap();
        let w = Tensor::from_vec(
            uniform(100 + i as u64, case.co * 27 * case.ci),
            (case.co, 3, 3, 3, case.ci),
            &dev,
        )
        .unwrap();
        let b = Tensor::from_vec(uniform(200 + i as u64, case.co), case.co, &dev).unwrap();
        let map = x.neighbour_map().unwrap().tensor().clone();
        let fast = submanifold_conv3d(x.feats(), &map, &w, Some(&b)).unwrap();
        let slow = submanifold_conv3d_slow(x.feats(), &map, &w, Some(&b)).unwrap();
        assert_eq!(fast.dims(), &[n, case.co], "{}", case.name);
        let (f, s) = (
            fast.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            slow.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        let rel = rel_err(&f, &s);
        println!(
            "{:<50} voxels {n:>5}  Ci {:>3} Co {:>3}  max|err|/max|ref| {rel:.2e}",
            case.name, case.ci, case.co
        );
        assert!(rel <= 1e-5, "{}: {rel}", case.name);
        if case.name == "isolated voxels" {
            // Only the centre tap exists: out = W[:, 13, :]·x + b.
            let centre = w
                .reshape((case.co, 27, case.ci))
                .unwrap()
                .narrow(1, 13, 1)
                .unwrap()
                .squeeze(1)
                .unwrap();
            let want = x
                .feats()
                .matmul(&centre.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            let d = (want - &fast)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-5, "isolated voxels: {d}");
        }
    }
}

#[test]
fn bad_operands_are_named() {
    let dev = Device::Cpu;
    let feats = Tensor::zeros((2, 4), DType::F32, &dev).unwrap();
    let map = Tensor::zeros((2, 27), DType::U32, &dev).unwrap();
    let w = Tensor::zeros((3, 27, 5), DType::F32, &dev).unwrap();
    let err = submanifold_conv3d(&feats, &map, &w, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("[Co, 27, 4]") && err.contains("[3, 27, 5]"),
        "{err}"
    );
    let w = Tensor::zeros((3, 27, 4), DType::F32, &dev).unwrap();
    let short = Tensor::zeros((1, 27), DType::U32, &dev).unwrap();
    let err = submanifold_conv3d(&feats, &short, &w, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("[2, 27]") && err.contains("[1, 27]"), "{err}");
    let bias = Tensor::zeros(4, DType::F32, &dev).unwrap();
    let err = submanifold_conv3d(&feats, &map, &w, Some(&bias))
        .unwrap_err()
        .to_string();
    assert!(err.contains("bias must be [3]"), "{err}");
}

#[test]
fn bad_coordinates_are_named() {
    let dev = Device::Cpu;
    let feats = Tensor::zeros((2, 1), DType::F32, &dev).unwrap();
    let coords = Tensor::new(&[[0i32, 1, 2, 3], [0, -1, 0, 0]], &dev).unwrap();
    let err = SparseTensor::new(&coords, feats.clone())
        .unwrap_err()
        .to_string();
    assert!(err.contains("row 1") && err.contains("x = -1"), "{err}");
    let coords = Tensor::new(&[[1i32, 1, 2, 3], [0, 1, 0, 0]], &dev).unwrap();
    let err = SparseTensor::new(&coords, feats.clone())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("batch index goes down from 1 to 0 at row 1"),
        "{err}"
    );
    let coords = Tensor::new(&[[0i32, 1, 2], [0, 1, 0]], &dev).unwrap();
    let err = SparseTensor::new(&coords, feats).unwrap_err().to_string();
    assert!(err.contains("[T, 4]"), "{err}");
}

/// The C2S children conv's CPU op (the reference its CUDA kernel is tested against) against its
/// definition: child i of parent p in slot s gets the plain conv of p's neighbourhood with the
/// weight rows `s·C' .. (s+1)·C'` and their bias. A shell with a random subdivision (some
/// parents keeping no child, some all 8), and the errors for bad operands.
#[test]
fn c2s_children_conv_is_each_slot_conv_on_the_parent() {
    use std::sync::Arc;
    use trellis2::ops::sparse_conv::submanifold_conv3d_children;
    use trellis2::sparse::{CoordSet, Subdivision};
    let dev = Device::Cpu;
    let rows = shell(0, 5.0, 8);
    let n = rows.len();
    let (ci, c_child) = (6, 5);
    let set = Arc::new(CoordSet::from_host(rows, &dev).unwrap());
    let x = SparseTensor::on(
        set.clone(),
        Tensor::from_vec(uniform(7, n * ci), (n, ci), &dev).unwrap(),
    )
    .unwrap();
    let mask: Vec<bool> = uniform(8, n * 8)
        .iter()
        .enumerate()
        .map(|(i, u)| match (i / 8) % 11 {
            0 => false,
            1 => true,
            _ => *u > 0.1,
        })
        .collect();
    let sub = Subdivision::from_mask(&set, &mask).unwrap();
    let w = Tensor::from_vec(
        uniform(9, 8 * c_child * 27 * ci),
        (8 * c_child, 27, ci),
        &dev,
    )
    .unwrap();
    let b = Tensor::from_vec(uniform(10, 8 * c_child), 8 * c_child, &dev).unwrap();
    let map = x.neighbour_map().unwrap();
    let got = submanifold_conv3d_children(x.feats(), map, sub.sources(), &w, Some(&b)).unwrap();
    let sources = sub.sources().to_vec1::<u32>().unwrap();
    assert_eq!(got.dims(), &[sources.len(), c_child]);
    let got = got.to_vec2::<f32>().unwrap();
    // Per slot: the plain conv with that slot's weight rows and bias, on every parent.
    let per_slot: Vec<Vec<Vec<f32>>> = (0..8)
        .map(|s| {
            let ws = w.narrow(0, s * c_child, c_child).unwrap();
            let bs = b.narrow(0, s * c_child, c_child).unwrap();
            submanifold_conv3d_slow(x.feats(), map.tensor(), &ws, Some(&bs))
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
        })
        .collect();
    let (mut got_flat, mut want_flat) = (Vec::new(), Vec::new());
    for (row, &src) in got.iter().zip(&sources) {
        let (parent, slot) = (src as usize / 8, src as usize % 8);
        got_flat.extend_from_slice(row);
        want_flat.extend_from_slice(&per_slot[slot][parent]);
    }
    let rel = rel_err(&got_flat, &want_flat);
    println!(
        "c2s children conv: {n} parents → {} children, max|err|/max|ref| {rel:.2e}",
        sources.len()
    );
    assert!(rel <= 1e-5, "{rel}");
    // Bad operands: 8·C' not a multiple of 8, sources not u32.
    let w7 = w.narrow(0, 0, 7).unwrap();
    assert!(submanifold_conv3d_children(x.feats(), map, sub.sources(), &w7, None).is_err());
    let f_sources = sub.sources().to_dtype(DType::F32).unwrap();
    assert!(submanifold_conv3d_children(x.feats(), map, &f_sources, &w, None).is_err());
}
