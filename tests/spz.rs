//! SPZ splats (`--format splat-spz`) on a voxelised sphere shell through the real dual-grid
//! extraction: our reader gives the PLY's splats back within SPZ's quantisation, and so does
//! a third-party reader (npm's `@playcanvas/splat-transform`, installed by
//! `tests/tools/install.sh`) converting our SPZ back to a PLY.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::voxel_shapes::{in_ball, sign_field_voxels};
use trellis2::export::splat::SH_C0;
use trellis2::export::spz::{encode_spz, read_spz, RawSplat, COLOR_SCALE, SCALE_STEPS_PER_UNIT};
use trellis2::export::{write_splat_ply, write_splat_spz, Asset, SplatBudget, Up};
use trellis2::mesh::decoder_output_to_meshes;
use trellis2::render::{load_scene, Scene, Splats};

const GRID: u32 = 64;

/// A sphere shell of radius 25 voxels, coloured by position, half of it translucent.
fn sphere() -> Asset {
    let centre = GRID as f32 / 2.0 + 0.3;
    let (coords, feats) = sign_field_voxels(2..62, 0, |p| in_ball(p, [centre; 3], 25.0));
    let mesh = decoder_output_to_meshes(&coords, &feats, GRID)
        .expect("extraction")
        .remove(0);
    let duals: Vec<f32> = mesh.vertices.iter().flatten().copied().collect();
    let attrs: Vec<f32> = coords
        .chunks_exact(4)
        .flat_map(|c| {
            let [r, g, b] = [c[1], c[2], c[3]].map(|v| v as f32 / GRID as f32);
            [
                r,
                g,
                b,
                0.0,
                0.5,
                if c[1] % 2 == 0 { 1.0 } else { 0.4 + 0.5 * g },
            ]
        })
        .collect();
    Asset::from_rows(mesh, &coords, &attrs, &duals, GRID).expect("valid asset")
}

fn splats(path: &Path) -> Splats {
    match load_scene(path).unwrap_or_else(|e| panic!("{e:#}")) {
        Scene::Splats(s) => s,
        Scene::Mesh(_) => panic!("{}: read as a mesh", path.display()),
    }
}

/// Largest differences between two splat sets (activated values, same order): position,
/// linear colour, log scale, alpha, and quaternion distance (sign-aligned); and the mean
/// quaternion distance.
fn differences(a: &Splats, b: &Splats) -> [f64; 6] {
    assert_eq!(a.len(), b.len());
    assert_eq!((a.sh_degree, b.sh_degree), (0, 0));
    let mut d = [0.0f64; 6];
    for i in 0..a.len() {
        let max = |m: &mut f64, v: f32| *m = m.max(f64::from(v.abs()));
        for k in 0..3 {
            max(&mut d[0], a.positions[i][k] - b.positions[i][k]);
            max(
                &mut d[1],
                SH_C0 as f32 * (a.sh[3 * i + k] - b.sh[3 * i + k]),
            );
            max(&mut d[2], a.scales[i][k].ln() - b.scales[i][k].ln());
        }
        max(&mut d[3], a.opacities[i] - b.opacities[i]);
        let (p, q) = (a.rotations[i], b.rotations[i]);
        let s = if p.iter().zip(&q).map(|(u, v)| u * v).sum::<f32>() < 0.0 {
            -1.0
        } else {
            1.0
        };
        let dist = (0..4)
            .map(|k| (p[k] - s * q[k]).powi(2))
            .sum::<f32>()
            .sqrt();
        max(&mut d[4], dist);
        d[5] += f64::from(dist) / a.len() as f64;
    }
    d
}

/// Checks `got` against the PLY's splats within SPZ's quantisation at `bits` fractional bits.
fn assert_within_quantisation(ply: &Splats, got: &Splats, bits: u8, what: &str) {
    let d = differences(ply, got);
    println!(
        "{what}: max |Δ| position {:.2e}, colour {:.2e}, log scale {:.2e}, alpha {:.2e}, \
         quaternion {:.3} (mean {:.4})",
        d[0], d[1], d[2], d[3], d[4], d[5]
    );
    let f32_slack = 1e-6;
    assert!(
        d[0] <= 0.5 / f64::from(1u32 << bits) + f32_slack,
        "{what}: position"
    );
    let colour_half_step = 0.5 * SH_C0 / f64::from(COLOR_SCALE * 255.0);
    assert!(d[1] <= colour_half_step + f32_slack, "{what}: colour");
    assert!(
        d[2] <= 0.5 / f64::from(SCALE_STEPS_PER_UNIT) + f32_slack,
        "{what}: scale"
    );
    assert!(d[3] <= 0.5 / 255.0 + f32_slack, "{what}: alpha");
    // x y z are within 1/255 each; w follows from the unit norm, so its error grows where w is
    // small: |Δw| ≤ sqrt(2·√3/255) ≈ 0.117 in the worst case.
    assert!(d[4] <= 0.125, "{what}: rotation");
    assert!(d[5] <= 0.01, "{what}: mean rotation");
}

#[test]
fn spz_reads_back_within_the_quantisation_and_is_much_smaller() {
    let dir = tempfile::tempdir().unwrap();
    let asset = sphere();
    let (ply, spz) = (dir.path().join("a.splat.ply"), dir.path().join("a.spz"));
    write_splat_ply(&ply, &asset, Up::Y, SplatBudget::All).unwrap();
    write_splat_spz(&spz, &asset, SplatBudget::All).unwrap();
    let file = read_spz(&spz).unwrap();
    assert_eq!(
        (file.version, file.sh_degree, file.antialiased),
        (2, 0, false)
    );
    let want = splats(&ply);
    assert_eq!(file.splats.len(), want.len());
    assert_within_quantisation(&want, &splats(&spz), file.fractional_bits, "our reader");
    let sizes = [&ply, &spz].map(|p| std::fs::metadata(p).unwrap().len());
    println!(
        "{} splats: PLY {} B, SPZ {} B, ratio {:.1}",
        want.len(),
        sizes[0],
        sizes[1],
        sizes[0] as f64 / sizes[1] as f64
    );
    // The target (docs/OUTPUTS.md has the measurements).
    assert!(sizes[0] >= 8 * sizes[1]);
}

#[test]
fn spz_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let asset = sphere();
    let (a, b) = (dir.path().join("a.spz"), dir.path().join("b.spz"));
    write_splat_spz(&a, &asset, SplatBudget::All).unwrap();
    write_splat_spz(&b, &asset, SplatBudget::All).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

fn tools_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/tools")
}

/// `@playcanvas/splat-transform` converting `spz` to the PLY `back`; `false` (skipped) without
/// node.
fn splat_transform(spz: &Path, back: &Path) -> bool {
    if Command::new("node").arg("--version").output().is_err() {
        eprintln!("SKIPPED: node is not installed (needed for @playcanvas/splat-transform)");
        return false;
    }
    let cli = tools_dir().join("node_modules/@playcanvas/splat-transform/bin/cli.mjs");
    assert!(
        cli.is_file(),
        "@playcanvas/splat-transform is missing from {}: run `tests/tools/install.sh`",
        tools_dir().display()
    );
    let out = Command::new("node")
        .arg(&cli)
        .arg("-q")
        .arg(spz)
        .arg(back)
        .output()
        .expect("node runs");
    assert!(
        out.status.success(),
        "splat-transform failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

#[test]
fn spz_round_trips_through_splat_transform() {
    let dir = tempfile::tempdir().unwrap();
    let asset = sphere();
    let (ply, spz, back) = (
        dir.path().join("a.splat.ply"),
        dir.path().join("a.spz"),
        dir.path().join("back.ply"),
    );
    write_splat_ply(&ply, &asset, Up::Y, SplatBudget::All).unwrap();
    write_splat_spz(&spz, &asset, SplatBudget::All).unwrap();
    if !splat_transform(&spz, &back) {
        return;
    }
    let bits = read_spz(&spz).unwrap().fractional_bits;
    let theirs = splats(&back);
    assert_within_quantisation(&splats(&ply), &theirs, bits, "splat-transform");
    // And it decodes every field as our reader does.
    let d = differences(&splats(&spz), &theirs);
    println!("splat-transform vs our reader: {d:?}");
    assert!(d[..5].iter().all(|&v| v <= 1e-5), "{d:?}");
}

/// A file large enough to be compressed in several gzip pieces (the writer deflates 1 MiB of
/// raw SPZ at a time, in parallel) is still one stream to a third-party reader.
#[test]
fn large_spz_in_several_pieces_reads_back_through_splat_transform() {
    let n = 150_000; // 19 bytes each: about 2.7 MiB raw, three pieces
    let raw: Vec<RawSplat> = (0..n)
        .map(|i| {
            let t = i as f32 / n as f32;
            let a = 40.0 * std::f32::consts::TAU * t;
            RawSplat {
                position: [0.4 * a.cos(), t - 0.5, 0.4 * a.sin()],
                f_dc: [a.sin(), t, 1.0 - t],
                opacity: 4.0 * t - 2.0,
                log_scale: [-6.0 + t, -6.5, -8.0],
                rotation: [a.cos(), 0.0, a.sin(), 0.3],
            }
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let (spz, back) = (dir.path().join("a.spz"), dir.path().join("back.ply"));
    std::fs::write(&spz, encode_spz(&raw, 12).unwrap()).unwrap();
    if !splat_transform(&spz, &back) {
        return;
    }
    let (ours, theirs) = (splats(&spz), splats(&back));
    assert_eq!(ours.len(), n);
    let d = differences(&ours, &theirs);
    assert!(d[..5].iter().all(|&v| v <= 1e-5), "{d:?}");
}

fn inspect(path: &Path) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_trellis2"))
        .arg("inspect")
        .arg(path)
        .output()
        .expect("binary runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The numbers on the first line of `text` that starts with `prefix` (every word after the
/// prefix that parses as a number, in order).
fn numbers_after(text: &str, prefix: &str) -> Vec<f64> {
    let line = text
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{text}"));
    line[prefix.len()..]
        .split(|c: char| c.is_whitespace() || "[],".contains(c))
        .filter_map(|w| w.parse().ok())
        .collect()
}

/// `inspect` gives an SPZ the statistics it gives the PLY it was written beside: the same count
/// and SH degree, bounds within half a position step, sizes and shapes within SPZ's scale step,
/// opacities within its alpha step (plus the 4 significant digits `inspect` prints).
#[test]
fn inspect_reports_the_ply_statistics_for_the_spz() {
    let dir = tempfile::tempdir().unwrap();
    let asset = sphere();
    let (ply, spz) = (dir.path().join("a.splat.ply"), dir.path().join("a.spz"));
    write_splat_ply(&ply, &asset, Up::Y, SplatBudget::All).unwrap();
    write_splat_spz(&spz, &asset, SplatBudget::All).unwrap();
    let (a, b) = (inspect(&ply), inspect(&spz));
    let count = format!("splats      {}, SH degree 0", asset.voxel_count());
    assert!(a.contains(&count) && b.contains(&count), "{a}\n{b}");
    let bits = read_spz(&spz).unwrap().fractional_bits;
    let half_step = 0.5 / f64::from(1u32 << bits);
    let printed = |v: f64| 5e-4 * v.abs() + 1e-6;
    let (x, y) = (numbers_after(&a, "centres"), numbers_after(&b, "centres"));
    assert_eq!((x.len(), y.len()), (6, 6), "{a}\n{b}");
    for (u, v) in x.iter().zip(&y) {
        assert!((u - v).abs() <= half_step + 2e-6, "bounds {x:?} vs {y:?}");
    }
    // A log scale moves at most half of SPZ's step; a ratio of two, twice that.
    let scale_factor = (0.5 / f64::from(SCALE_STEPS_PER_UNIT)).exp();
    for (line, factor) in [
        ("scale, largest axis", scale_factor),
        ("scale, middle axis", scale_factor),
        ("scale, smallest axis", scale_factor),
        ("largest / middle", scale_factor * scale_factor),
        ("smallest / middle", scale_factor * scale_factor),
    ] {
        let (x, y) = (numbers_after(&a, line), numbers_after(&b, line));
        assert_eq!((x.len(), y.len()), (4, 4), "{line}: {a}\n{b}");
        for (u, v) in x.iter().zip(&y) {
            let ratio = u.max(*v) / u.min(*v);
            assert!(
                ratio <= factor * (1.0 + 1e-3),
                "{line}: {x:?} vs {y:?} (factor {factor})"
            );
        }
    }
    for line in ["opacity, mean", "opacity "] {
        let (x, y) = (numbers_after(&a, line), numbers_after(&b, line));
        assert_eq!(x.len(), y.len(), "{line}: {a}\n{b}");
        assert!(!x.is_empty(), "{line}: {a}");
        for (u, v) in x.iter().zip(&y) {
            assert!(
                (u - v).abs() <= 0.5 / 255.0 + printed(*u),
                "{line}: {x:?} vs {y:?}"
            );
        }
    }
}

/// The octree merge (and the whole splat export) gives the same files for any number of
/// threads.
#[test]
fn merged_splats_do_not_depend_on_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let asset = sphere();
    let budget = SplatBudget::AtMost(asset.voxel_count() / 5);
    let write = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let (ply, spz) = (
            dir.path().join(format!("{threads}.splat.ply")),
            dir.path().join(format!("{threads}.spz")),
        );
        pool.install(|| {
            write_splat_ply(&ply, &asset, Up::Y, budget).unwrap();
            write_splat_spz(&spz, &asset, budget).unwrap();
        });
        [ply, spz].map(|p| std::fs::read(p).unwrap())
    };
    let one = write(1);
    assert_eq!(one, write(3));
    assert_eq!(one, write(8));
    assert!(splats(&dir.path().join("1.splat.ply")).len() <= asset.voxel_count() / 5);
}
