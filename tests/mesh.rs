//! Mesh extraction, hole filling and attribute lookup: parity with upstream's dual-grid mesh
//! on the shape-decoder golden, plus properties on synthetic inputs.

mod common;

use std::collections::HashMap;

use common::voxel_shapes::{in_ball, in_box, sign_field_voxels};
use trellis2::mesh::{
    decoder_output_to_meshes, fill_holes, flexible_dual_grid_to_mesh, split_decoder_output,
    DualGridVoxels, Mesh, MeshError, VoxelAttributes, DEFAULT_MAX_HOLE_PERIMETER,
};

const GOLDEN: &str = "golden/golden/shape_slat_decoder.io.safetensors";

/// Undirected edge → number of faces using it.
fn edge_face_counts(mesh: &Mesh) -> HashMap<(u32, u32), usize> {
    let mut counts = HashMap::new();
    for f in &mesh.faces {
        for k in 0..3 {
            let (a, b) = (f[k], f[(k + 1) % 3]);
            *counts.entry((a.min(b), a.max(b))).or_insert(0) += 1;
        }
    }
    counts
}

fn boundary_edge_count(mesh: &Mesh) -> usize {
    edge_face_counts(mesh).values().filter(|&&c| c == 1).count()
}

#[test]
fn golden_meshes_match_upstream_exactly() {
    let path = common::fixture(GOLDEN);
    let floats = common::read_f32_tensors(&path);
    let ints = common::read_i32_tensors(&path);
    let (coords_shape, coords) = &ints["out.coords"];
    let (feats_shape, feats) = &floats["out.raw_feats"];
    assert_eq!((coords_shape[1], feats_shape[1]), (4, 7));
    // `set_resolution(512)`: the grid size mesh extraction used.
    let resolution = ints["resolution"].1[0];
    assert_eq!(resolution, 512, "golden resolution");

    let meshes = decoder_output_to_meshes(coords, feats, resolution as u32).expect("extracts");
    assert_eq!(meshes.len(), 2, "batch items");
    for (b, mesh) in meshes.iter().enumerate() {
        let (_, want_vertices) = &floats[&format!("mesh.{b}.vertices")];
        let (_, want_faces) = &ints[&format!("mesh.{b}.faces")];
        let got_vertices: Vec<f32> = mesh.vertices.iter().flatten().copied().collect();
        assert_eq!(
            got_vertices.len(),
            want_vertices.len(),
            "mesh.{b} vertex count"
        );
        let err = common::max_abs_diff(&got_vertices, want_vertices);
        println!(
            "mesh.{b}: {} vertices max|err| = {err:.3e}, {} faces",
            mesh.vertices.len(),
            mesh.faces.len()
        );
        assert!(err <= 1e-5, "mesh.{b}.vertices max|err| {err:.3e} > 1e-5");

        let got_faces: Vec<i32> = mesh.faces.iter().flatten().map(|&i| i as i32).collect();
        assert_eq!(got_faces.len(), want_faces.len(), "mesh.{b} face count");
        if let Some(i) = (0..got_faces.len()).find(|&i| got_faces[i] != want_faces[i]) {
            let f = i / 3;
            panic!(
                "mesh.{b}.faces differ first at face {f}: got {:?}, want {:?}",
                mesh.faces[f],
                &want_faces[f * 3..f * 3 + 3]
            );
        }
    }
}

#[test]
fn single_voxel_gives_one_vertex_and_no_faces() {
    // All three edge flags set, but the neighbours sharing those edges do not exist.
    let feats = [0.0, 0.0, 0.0, 5.0, 5.0, 5.0, 0.0];
    let meshes = decoder_output_to_meshes(&[0, 3, 4, 5], &feats, 8).expect("extracts");
    assert_eq!(meshes.len(), 1);
    let mesh = &meshes[0];
    // Offset logit 0 → dual vertex at the voxel centre: (c + 0.5) / 8 − 0.5.
    assert_eq!(
        mesh.vertices,
        vec![[3.5 / 8.0 - 0.5, 4.5 / 8.0 - 0.5, 5.5 / 8.0 - 0.5]]
    );
    assert!(mesh.faces.is_empty());
}

#[test]
fn empty_input_gives_no_meshes_and_an_empty_item_an_empty_mesh() {
    assert!(decoder_output_to_meshes(&[], &[], 64)
        .expect("empty")
        .is_empty());
    let mesh = flexible_dual_grid_to_mesh(&DualGridVoxels::default(), 64).expect("empty");
    assert_eq!(mesh, Mesh::default());
}

#[test]
fn four_voxels_around_one_edge_make_one_quad() {
    // x-edge of voxel (1,1,1): the voxels at offsets (0,0,0), (0,0,1), (0,1,1), (0,1,0).
    let coords = [0, 1, 1, 1, 0, 1, 1, 2, 0, 1, 2, 2, 0, 1, 2, 1];
    let mut feats = vec![0.0f32; 28];
    feats[3] = 1.0; // voxel 0: x edge intersected
    for (w02, expected) in [
        (2.0, vec![[0, 1, 2], [0, 2, 3]]),
        (-2.0, vec![[0, 1, 3], [3, 1, 2]]),
    ] {
        // Raise (or lower) the split weights of voxels 0 and 2 against 1 and 3.
        feats[6] = w02;
        feats[2 * 7 + 6] = w02;
        let meshes = decoder_output_to_meshes(&coords, &feats, 4).expect("extracts");
        assert_eq!(meshes[0].faces, expected, "split logit {w02}");
    }
}

#[test]
fn edges_leaving_the_grid_are_dropped() {
    // Voxel (3,0,0) on a 4³ grid: its y/z edges need x = 4, outside the grid. Upstream's hash
    // reports those as missing; a flat key would alias (4,0,0) onto (0,4*4,0)-style rows.
    let coords = [0, 3, 0, 0, 0, 3, 0, 1, 0, 3, 1, 1, 0, 3, 1, 0];
    let mut feats = vec![0.0f32; 28];
    feats[3..6].copy_from_slice(&[1.0, 1.0, 1.0]);
    let meshes = decoder_output_to_meshes(&coords, &feats, 4).expect("extracts");
    assert_eq!(meshes[0].faces.len(), 2, "only the x quad survives");
}

#[test]
fn closed_shapes_are_watertight() {
    for (name, grid, inside) in [
        (
            "box",
            16,
            Box::new(|p: [i32; 3]| in_box(p, [4, 5, 3], [9, 11, 8]))
                as Box<dyn Fn(_) -> bool + Sync>,
        ),
        (
            "two boxes",
            24,
            Box::new(|p| in_box(p, [3, 3, 3], [7, 7, 7]) || in_box(p, [12, 4, 6], [18, 17, 9])),
        ),
    ] {
        let (coords, feats) = sign_field_voxels(0..grid - 1, 0, &inside);
        let meshes = decoder_output_to_meshes(&coords, &feats, grid as u32).expect("extracts");
        let mesh = &meshes[0];
        assert!(!mesh.faces.is_empty(), "{name}: no faces");
        let counts = edge_face_counts(mesh);
        let bad: Vec<_> = counts.iter().filter(|(_, &c)| c != 2).take(5).collect();
        assert!(
            bad.is_empty(),
            "{name}: edges not shared by exactly two faces: {bad:?}"
        );
        // Euler characteristic 2 per closed genus-0 component.
        let used: std::collections::HashSet<u32> = mesh.faces.iter().flatten().copied().collect();
        let euler = used.len() as i64 - counts.len() as i64 + mesh.faces.len() as i64;
        let components = if name == "box" { 1 } else { 2 };
        assert_eq!(euler, 2 * components, "{name}: V − E + F");
        // Nothing to fill on a closed mesh.
        let mut filled = mesh.clone();
        let report = fill_holes(&mut filled, DEFAULT_MAX_HOLE_PERIMETER).expect("fills");
        assert_eq!((report.boundary_edges, report.holes_filled), (0, 0));
        assert_eq!(&filled, mesh);
    }
}

#[test]
fn a_ball_is_watertight() {
    // A lattice ball has no ambiguous (diagonal-only) sign configurations at this radius.
    let (coords, feats) = sign_field_voxels(0..39, 0, |p| in_ball(p, [20.0, 19.5, 20.3], 12.0));
    let meshes = decoder_output_to_meshes(&coords, &feats, 40).expect("extracts");
    assert_eq!(boundary_edge_count(&meshes[0]), 0);
    assert!(edge_face_counts(&meshes[0]).values().all(|&c| c == 2));
}

/// Removes faces, keeping vertex indices.
fn without_faces(mesh: &Mesh, drop: impl Fn(usize, &[u32; 3]) -> bool) -> Mesh {
    Mesh {
        vertices: mesh.vertices.clone(),
        faces: mesh
            .faces
            .iter()
            .enumerate()
            .filter(|(i, f)| !drop(*i, f))
            .map(|(_, f)| *f)
            .collect(),
    }
}

#[test]
fn fill_holes_closes_a_small_hole_and_leaves_a_large_one() {
    // Two boxes on a 256³ grid (voxel 1/256): a hole of one quad (perimeter ≈ 4/256 ≈ 0.016)
    // in the first, the second cut in half (perimeter ≈ 0.2).
    let grid = 256;
    let (coords, feats) = sign_field_voxels(20..60, 0, |p| {
        in_box(p, [22, 22, 22], [30, 30, 30]) || in_box(p, [40, 40, 40], [55, 55, 55])
    });
    let closed = decoder_output_to_meshes(&coords, &feats, grid).expect("extracts")[0].clone();
    let centre_x = |f: &[u32; 3]| {
        f.iter()
            .map(|&i| closed.vertices[i as usize][0])
            .sum::<f32>()
            / 3.0
    };
    let split_x = (47.5 / 256.0) - 0.5;
    let small_box_face = closed
        .faces
        .iter()
        .position(|f| centre_x(f) < -0.3)
        .expect("a face of the small box");
    // Faces 2k and 2k+1 are one quad.
    let quad = small_box_face / 2;
    let holed = without_faces(&closed, |i, f| i / 2 == quad || centre_x(f) > split_x);
    let boundary_before = boundary_edge_count(&holed);

    let mut filled = holed.clone();
    let report = fill_holes(&mut filled, DEFAULT_MAX_HOLE_PERIMETER).expect("fills");
    assert_eq!(report.boundary_edges, boundary_before);
    assert_eq!(report.boundary_loops, 2, "{report:?}");
    assert_eq!(report.holes_filled, 1, "{report:?}");
    assert_eq!(filled.vertices.len(), holed.vertices.len() + 1);
    assert_eq!(
        filled.faces.len(),
        holed.faces.len() + 4,
        "one triangle per hole edge"
    );
    assert_eq!(
        &filled.faces[..holed.faces.len()],
        &holed.faces[..],
        "old faces kept"
    );
    assert_eq!(
        boundary_edge_count(&filled),
        boundary_before - 4,
        "small hole closed"
    );

    // The new vertex is the mean of the hole's edge midpoints = mean of its 4 corners.
    let corners: std::collections::BTreeSet<u32> = closed.faces[2 * quad..2 * quad + 2]
        .iter()
        .flatten()
        .copied()
        .collect();
    let mean: Vec<f32> = (0..3)
        .map(|k| {
            corners
                .iter()
                .map(|&i| closed.vertices[i as usize][k])
                .sum::<f32>()
                / 4.0
        })
        .collect();
    let new_vertex = filled.vertices[holed.vertices.len()];
    for k in 0..3 {
        assert!(
            (new_vertex[k] - mean[k]).abs() < 1e-6,
            "{new_vertex:?} vs {mean:?}"
        );
    }
    // New faces are (max, min, new) per boundary edge.
    for f in &filled.faces[holed.faces.len()..] {
        assert!(
            f[0] > f[1] && corners.contains(&f[0]) && corners.contains(&f[1]),
            "{f:?}"
        );
        assert_eq!(f[2] as usize, holed.vertices.len());
    }

    // A larger limit fills the big hole too; a zero limit fills nothing.
    let mut all = holed.clone();
    assert_eq!(fill_holes(&mut all, 1.0).expect("fills").holes_filled, 2);
    assert_eq!(boundary_edge_count(&all), 0);
    let mut none = holed.clone();
    assert_eq!(fill_holes(&mut none, 0.0).expect("fills").holes_filled, 0);
    assert_eq!(none, holed);
}

#[test]
fn fill_holes_ignores_open_chains_and_rejects_bad_input() {
    // A single triangle: its 3 boundary edges form a loop (filled: tiny).
    let mut tri = Mesh::new(
        vec![[0.0, 0.0, 0.0], [0.001, 0.0, 0.0], [0.0, 0.001, 0.0]],
        vec![[0, 1, 2]],
    )
    .expect("valid");
    let report = fill_holes(&mut tri, DEFAULT_MAX_HOLE_PERIMETER).expect("fills");
    assert_eq!((report.boundary_loops, report.holes_filled), (1, 1));
    assert_eq!(tri.faces[1..], [[1, 0, 3], [2, 0, 3], [2, 1, 3]]);

    let mut bad = Mesh {
        vertices: vec![[0.0; 3]; 2],
        faces: vec![[0, 1, 2]],
    };
    assert!(matches!(
        fill_holes(&mut bad, 0.1),
        Err(MeshError::FaceIndexOutOfRange { index: 2, .. })
    ));
    assert!(matches!(
        fill_holes(&mut tri, f32::NAN),
        Err(MeshError::BadParameter { .. })
    ));
}

#[test]
fn attribute_lookup_reproduces_a_linear_field() {
    let grid = 32u32;
    let size = 1.0 / grid as f32;
    let field = |p: [f32; 3]| {
        [
            0.3 + 2.0 * p[0] - 1.5 * p[1] + 0.7 * p[2],
            -1.0 + 4.0 * p[2],
        ]
    };
    let mut coords = Vec::new();
    let mut attrs = Vec::new();
    for x in 10..16 {
        for y in 10..16 {
            for z in 10..16 {
                coords.push([x, y, z]);
                let centre = [x, y, z].map(|c| (c as f32 + 0.5) * size - 0.5);
                attrs.extend(field(centre));
            }
        }
    }
    let lookup = VoxelAttributes::new(&coords, attrs, 2, grid).expect("valid");
    // Points whose 8 surrounding voxel centres all exist: grid coordinates in [10.5, 15.5].
    let mut points = Vec::new();
    for i in 0..200u32 {
        let t = |k: u32| ((i * 7919 + k * 104_729) % 1000) as f32 / 1000.0;
        points.push([0, 1, 2].map(|k| (10.5 + 5.0 * t(k)) * size - 0.5));
    }
    let sampled = lookup.sample(&points);
    let mut worst = 0.0f32;
    for (p, got) in points.iter().zip(sampled.chunks_exact(2)) {
        let want = field(*p);
        worst = worst
            .max((got[0] - want[0]).abs())
            .max((got[1] - want[1]).abs());
    }
    println!("linear field max|err| = {worst:.3e}");
    assert!(worst < 1e-5, "linear field max|err| {worst:.3e}");

    // At a voxel centre only that voxel has weight; far away nothing does.
    let mut out = [0.0f32; 2];
    lookup
        .sample_into(
            [12.5 * size - 0.5, 13.5 * size - 0.5, 11.5 * size - 0.5],
            &mut out,
        )
        .expect("2 channels");
    let want = field([12.5 * size - 0.5, 13.5 * size - 0.5, 11.5 * size - 0.5]);
    assert!((out[0] - want[0]).abs() < 1e-6 && (out[1] - want[1]).abs() < 1e-6);
    lookup
        .sample_into([0.4, 0.4, 0.4], &mut out)
        .expect("2 channels");
    assert_eq!(out, [0.0, 0.0]);
    lookup
        .sample_into([f32::NAN, 0.0, 0.0], &mut out)
        .expect("2 channels");
    assert_eq!(out, [0.0, 0.0]);
    assert!(lookup.sample_into([0.0; 3], &mut [0.0; 3]).is_err());
}

#[test]
fn attribute_lookup_rejects_bad_shapes() {
    assert!(matches!(
        VoxelAttributes::new(&[[0, 0, 0]], vec![0.0; 3], 2, 8),
        Err(MeshError::BadLength { what: "attrs", .. })
    ));
    assert!(matches!(
        VoxelAttributes::new(&[[0, 0, 0]], vec![0.0; 4], 2, 8),
        Err(MeshError::RowCountMismatch {
            what: "attrs",
            rows: 2,
            expected: 1
        })
    ));
    assert!(matches!(
        VoxelAttributes::new(&[[0, 0, 9]], vec![0.0; 2], 2, 8),
        Err(MeshError::CoordOutOfGrid { row: 0, .. })
    ));
}

#[test]
fn extraction_rejects_bad_voxels() {
    let feats = [0.0f32; 14];
    assert!(matches!(
        decoder_output_to_meshes(&[0, 1, 1, 1, 0, 1, 1, 1], &feats, 8),
        Err(MeshError::DuplicateCoord {
            row: 1,
            first_row: 0,
            ..
        })
    ));
    assert!(matches!(
        decoder_output_to_meshes(&[0, 1, 1, 1, 0, 1, 8, 1], &feats, 8),
        Err(MeshError::CoordOutOfGrid { row: 1, .. })
    ));
    assert!(matches!(
        decoder_output_to_meshes(&[0, 1, 1, 1], &feats[..7], 0),
        Err(MeshError::BadGridSize { grid_size: 0 })
    ));
    let items = split_decoder_output(&[0, 1, 1, 1], &feats[..7]).expect("valid");
    let mut broken = items[0].clone();
    broken.split_weights.clear();
    assert!(matches!(
        flexible_dual_grid_to_mesh(&broken, 8),
        Err(MeshError::RowCountMismatch {
            what: "split_weights",
            ..
        })
    ));
}

#[test]
fn fill_holes_gives_the_same_mesh_on_one_and_four_threads() {
    // A shell of ~50k faces with a two-triangle hole every 500 quads: many loops, spread over
    // many of the boundary search's work items.
    let (coords, feats) = sign_field_voxels(0..79, 0, |p| in_ball(p, [40.0, 39.6, 40.3], 36.0));
    let mesh = decoder_output_to_meshes(&coords, &feats, 80)
        .expect("extracts")
        .remove(0);
    assert!(mesh.faces.len() > 40_000, "{}", mesh.faces.len());
    let holed = without_faces(&mesh, |i, _| (i / 2) % 500 == 7);
    let removed = (mesh.faces.len() - holed.faces.len()) / 2;
    let on = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool")
            .install(|| {
                let mut m = holed.clone();
                // Voxels of 1/80: a quad's hole is ≈ 0.05 around, over the default limit.
                let report = fill_holes(&mut m, 0.1).expect("fills");
                (m, report)
            })
    };
    let (one, four) = (on(1), on(4));
    assert_eq!(one.1, four.1);
    assert!(one.0 == four.0, "1 and 4 threads fill differently");
    // Each removed quad leaves a 4-edge loop, filled with one vertex and four triangles.
    assert_eq!(one.1.holes_filled, removed);
    assert_eq!(one.1.boundary_edges, 4 * removed);
    assert_eq!(one.0.faces.len(), holed.faces.len() + 4 * removed);
    assert_eq!(boundary_edge_count(&one.0), 0);
    let digest = one
        .0
        .vertices
        .iter()
        .flatten()
        .map(|v| u64::from(v.to_bits()))
        .chain(one.0.faces.iter().flatten().map(|&i| u64::from(i)))
        .fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
            (h ^ x).wrapping_mul(0x0000_0100_0000_01b3)
        });
    println!("filled mesh digest {digest:016x}");
}
