//! UV atlas of analytic closed shapes extracted the way the decoders' output is, then
//! decimated to the export's face budgets: no overlapping UV triangles, texel utilisation at
//! 2048² at least the 60 % target, UVs in [0, 1], seams that only duplicate vertices, input
//! triangle order kept, output independent of the thread count; plus the edge cases (empty,
//! degenerate, non-finite input) and the measures themselves on hand-made atlases.

mod common;

use common::closed_shapes::{sphere, torus};
use trellis2::mesh::{atlas_stats, decimate, unwrap, AtlasOptions, Mesh, UvAtlas};

fn decimated(raw: &Mesh, target: usize) -> (Vec<[f32; 3]>, Vec<u32>) {
    let out = decimate(raw, &[], &[], target).expect("decimates").mesh;
    let indices = out.faces.iter().flatten().copied().collect();
    (out.vertices, indices)
}

/// Unwraps at the default 2048² and checks every property the baker relies on.
fn check_atlas(name: &str, positions: &[[f32; 3]], indices: &[u32]) -> UvAtlas {
    let atlas = unwrap(positions, indices, &AtlasOptions::default()).expect("unwraps");
    let stats = atlas_stats(&atlas);
    println!(
        "{name}: {} faces, {} → {} vertices, {} charts, utilisation {:.1} %, {} overlapping, {:.2} s",
        indices.len() / 3,
        positions.len(),
        atlas.uvs.len(),
        stats.charts,
        stats.utilisation * 100.0,
        stats.overlapping_triangles,
        stats.seconds
    );
    assert_eq!(atlas.texture_size, 2048);
    assert_eq!(atlas.indices.len(), indices.len(), "{name}: triangle count");
    assert_eq!(atlas.uvs.len(), atlas.source_vertex.len());
    // Same triangles, same order: each corner's source vertex is the input corner.
    for (k, (&out, &input)) in atlas.indices.iter().zip(indices).enumerate() {
        assert_eq!(
            atlas.source_vertex[out as usize], input,
            "{name}: corner {k} moved to another vertex"
        );
    }
    assert!(
        atlas.uvs.iter().flatten().all(|c| (0.0..=1.0).contains(c)),
        "{name}: a UV outside [0, 1]"
    );
    assert!(atlas
        .source_vertex
        .iter()
        .all(|&s| (s as usize) < positions.len()));
    assert_eq!(stats.overlapping_triangles, 0, "{name}: overlapping UVs");
    assert!(
        stats.utilisation >= 0.60,
        "{name}: utilisation {}",
        stats.utilisation
    );
    assert!(stats.charts >= 1);
    atlas
}

#[test]
fn a_300k_face_sphere_packs_without_overlap() {
    // 395k raw faces at 256³, decimated to upstream's default budget.
    let (positions, indices) = decimated(&sphere(256), 300_000);
    check_atlas("sphere 256³ → 300k", &positions, &indices);
}

#[test]
fn a_300k_face_torus_packs_without_overlap() {
    // 517k raw faces at 384³.
    let (positions, indices) = decimated(&torus(384), 300_000);
    check_atlas("torus 384³ → 300k", &positions, &indices);
}

#[test]
fn small_budgets_pack_as_densely() {
    let (positions, indices) = decimated(&sphere(128), 20_000);
    check_atlas("sphere 128³ → 20k", &positions, &indices);
    let (positions, indices) = decimated(&torus(160), 20_000);
    check_atlas("torus 160³ → 20k", &positions, &indices);
}

#[test]
fn the_atlas_is_the_same_on_any_thread_count() {
    let (positions, indices) = decimated(&torus(160), 20_000);
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("thread pool")
            .install(|| unwrap(&positions, &indices, &AtlasOptions::default()).expect("unwraps"))
    };
    let (one, three) = (run(1), run(3));
    assert_eq!(one.source_vertex, three.source_vertex);
    assert_eq!(one.indices, three.indices);
    assert_eq!(one.charts, three.charts);
    let bits = |a: &UvAtlas| -> Vec<u32> { a.uvs.iter().flatten().map(|c| c.to_bits()).collect() };
    assert_eq!(
        bits(&one),
        bits(&three),
        "UVs differ between 1 and 3 threads"
    );
}

#[test]
fn empty_degenerate_and_invalid_meshes_never_panic() {
    let opts = AtlasOptions::default();
    let empty = unwrap(&[], &[], &opts).expect("empty mesh unwraps");
    assert!(empty.uvs.is_empty() && empty.indices.is_empty() && empty.charts == 0);
    assert_eq!(atlas_stats(&empty).utilisation, 0.0);

    // A unit quad plus a zero-area sliver, a repeated-vertex triangle and a lone point.
    let positions = [
        [0.0, 0.0, 0.0],
        [1.0, 0.0, 0.0],
        [1.0, 1.0, 0.0],
        [0.0, 1.0, 0.0],
        [0.5, 0.0, 0.0],
        [7.0, 7.0, 7.0],
    ];
    let indices = [0, 1, 2, 0, 2, 3, 0, 4, 1, 2, 2, 3];
    let atlas = unwrap(&positions, &indices, &opts).expect("degenerate triangles unwrap");
    assert_eq!(atlas.indices.len(), indices.len());
    assert!(atlas.uvs.iter().flatten().all(|c| (0.0..=1.0).contains(c)));
    assert_eq!(atlas_stats(&atlas).overlapping_triangles, 0);

    // Only degenerate triangles: a defined result or an error, never a panic.
    let _ = unwrap(&positions, &[0, 4, 1, 5, 5, 5], &opts);

    let mut nan = positions;
    nan[2][1] = f32::NAN;
    assert!(unwrap(&nan, &indices, &opts).is_err());
    assert!(unwrap(&positions, &[0, 1, 6], &opts).is_err());
    assert!(unwrap(&positions, &[0, 1], &opts).is_err());
    for bad in [
        AtlasOptions {
            texture_size: 0,
            padding_texels: 4,
        },
        AtlasOptions {
            texture_size: 64,
            padding_texels: 16,
        },
    ] {
        assert!(unwrap(&positions, &indices, &bad).is_err());
    }
}

fn hand_made(uvs: Vec<[f32; 2]>, indices: Vec<u32>, texture_size: u32) -> UvAtlas {
    UvAtlas {
        source_vertex: (0..uvs.len() as u32).collect(),
        uvs,
        indices,
        charts: 1,
        texture_size,
        seconds: 0.0,
    }
}

#[test]
fn stats_count_shared_edges_once_and_overlaps_exactly() {
    // Two triangles tiling the texture, their diagonal through texel centres: every texel is
    // covered exactly once.
    let quad = hand_made(
        vec![[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]],
        vec![0, 1, 2, 0, 2, 3],
        8,
    );
    let s = atlas_stats(&quad);
    assert_eq!((s.utilisation, s.overlapping_triangles), (1.0, 0));
    // The same with the second triangle wound the other way round.
    let flipped = hand_made(quad.uvs.clone(), vec![0, 1, 2, 0, 3, 2], 8);
    assert_eq!(atlas_stats(&flipped).overlapping_triangles, 0);
    assert_eq!(atlas_stats(&flipped).utilisation, 1.0);
    // A third triangle over part of the quad overlaps both halves; a far-away one does not.
    let mut uvs = quad.uvs.clone();
    uvs.extend([[0.1, 0.1], [0.9, 0.1], [0.5, 0.9]]);
    let overlapping = hand_made(uvs, vec![0, 1, 2, 0, 2, 3, 4, 5, 6], 8);
    assert_eq!(atlas_stats(&overlapping).overlapping_triangles, 3);
    let apart = hand_made(
        vec![
            [0.0, 0.0],
            [0.5, 0.0],
            [0.0, 0.5],
            [0.6, 0.6],
            [1.0, 0.6],
            [0.6, 1.0],
        ],
        vec![0, 1, 2, 3, 4, 5],
        16,
    );
    let s = atlas_stats(&apart);
    assert_eq!(s.overlapping_triangles, 0);
    // Texel centres (i + ½, j + ½) of 16²: i + j ≤ 7 in the first (its hypotenuse, through 8
    // centres, is a top-left edge), i + j ≤ 24 from (10, 10) in the second: 36 + 15.
    assert_eq!(s.utilisation, 51.0 / 256.0);
}
