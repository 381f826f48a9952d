//! Analytic shapes with analytic PBR fields, in the form the decoders produce: a lattice sign
//! field voxelised into the flexible dual grid (dual vertices moved onto the analytic surface, as
//! a trained decoder places them), extracted, and the same voxels carrying the field's six PBR
//! channels (base colour RGB, metallic, roughness, alpha) at their centres. Every field is smooth
//! and constant along the surface normal, so the voxels' trilinear lookup reproduces it on the
//! surface up to the lookup's own smoothing. Shared by `tests/bake.rs`, `tests/normal_map.rs` and the export and splat benches;
//! include `voxel_shapes` beside it.

use super::voxel_shapes::{in_ball, in_box, in_torus, snapped_surface};
use trellis2::export::Asset;

/// A splitmix64 stream of uniform numbers in [0, 1): the random surface points the tests
/// sample the baked textures at.
pub struct Uniform(pub u64);

impl Uniform {
    pub fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A uniformly random point of a triangle mesh: the triangle drawn by area from its
    /// running area sums `cumulative`, and the point's barycentric weights in it.
    pub fn point_on_triangles(&mut self, cumulative: &[f64]) -> (usize, [f64; 3]) {
        let total = cumulative.last().copied().unwrap_or(0.0);
        let pick = self.next() * total;
        let t = cumulative
            .partition_point(|&c| c < pick)
            .min(cumulative.len() - 1);
        let (mut r1, mut r2) = (self.next(), self.next());
        if r1 + r2 > 1.0 {
            (r1, r2) = (1.0 - r1, 1.0 - r2);
        }
        (t, [1.0 - r1 - r2, r1, r2])
    }
}

/// A PBR field over voxel-unit points.
pub type Field = Box<dyn Fn([f64; 3]) -> [f64; 6] + Sync + Send>;

/// One shape: its asset (mesh, voxels, attributes) and the field its voxels sample.
pub struct TexturedShape {
    pub name: &'static str,
    pub grid: i32,
    pub asset: Asset,
    /// In voxel units: `(world + ½) · grid`.
    pub field: Field,
}

impl TexturedShape {
    /// The field at a point of the pipeline frame (`[-0.5, 0.5]³`).
    pub fn field_at(&self, world: [f32; 3]) -> [f64; 6] {
        (self.field)(world.map(|v| (f64::from(v) + 0.5) * f64::from(self.grid)))
    }
}

/// The extracted surface of `inside` with dual vertices on `project`'s surface (nearest point,
/// voxel units), its voxels carrying `field` at their centres.
pub fn textured(
    name: &'static str,
    grid: i32,
    inside: impl Fn([i32; 3]) -> bool + Sync,
    project: impl Fn([f64; 3]) -> [f64; 3],
    field: Field,
) -> TexturedShape {
    let (mesh, voxels) = snapped_surface(grid, inside, project);
    let attrs = voxels
        .iter()
        .map(|c| field(c.map(|v| f64::from(v) + 0.5)).map(|v| v as f32))
        .collect();
    let duals = mesh.vertices[..voxels.len()].to_vec();
    let asset = Asset::new(mesh, voxels, attrs, duals, grid as u32).expect("valid asset");
    TexturedShape {
        name,
        grid,
        asset,
        field,
    }
}

fn unit(d: [f64; 3]) -> [f64; 3] {
    let len = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
    d.map(|v| v / len)
}

/// Around `cd`: cos²(lat)·sin(2·lon), sin(3·lat), cos(lat)·cos(lon) in base colour, metallic
/// varying with latitude (smooth: polynomials of the direction).
fn latitude_longitude_field(cd: [f64; 3], x: [f64; 3]) -> [f64; 6] {
    let [dx, dy, dz] = unit([x[0] - cd[0], x[1] - cd[1], x[2] - cd[2]]);
    [
        0.5 + 0.4 * 2.0 * dx * dy,
        0.5 + 0.4 * (3.0 * dz - 4.0 * dz * dz * dz),
        0.5 + 0.4 * dx,
        0.5 + 0.45 * dz,
        0.55 + 0.35 * (dx * dx - dy * dy),
        1.0,
    ]
}

/// A ball of radius 0.4·grid with a longitude/latitude pattern (smooth: polynomials of the
/// direction) and metallic varying with latitude.
pub fn sphere(grid: i32) -> TexturedShape {
    let c = grid as f32 / 2.0 + 0.3;
    let centre = [c, c - 0.2, c + 0.1];
    let radius = grid as f32 * 0.4;
    let (cd, r) = (centre.map(f64::from), f64::from(radius));
    textured(
        "sphere",
        grid,
        |p| in_ball(p, centre, radius),
        move |x| {
            let d = unit([x[0] - cd[0], x[1] - cd[1], x[2] - cd[2]]);
            std::array::from_fn(|k| cd[k] + d[k] * r)
        },
        Box::new(move |x| latitude_longitude_field(cd, x)),
    )
}

/// A torus of radii 0.28·grid and 0.11·grid around the z axis; the field follows its two
/// angles.
pub fn torus(grid: i32) -> TexturedShape {
    let c = grid as f32 / 2.0 + 0.3;
    let centre = [c, c - 0.2, c];
    let (major, minor) = (grid as f32 * 0.28, grid as f32 * 0.11);
    let (cd, big, small) = (centre.map(f64::from), f64::from(major), f64::from(minor));
    // (cos θ, sin θ) around the axis, (cos φ, sin φ) around the tube, and the tube's centre.
    let angles = move |x: [f64; 3]| {
        let d = [x[0] - cd[0], x[1] - cd[1], x[2] - cd[2]];
        let planar = (d[0] * d[0] + d[1] * d[1]).sqrt();
        let (ct, st) = (d[0] / planar, d[1] / planar);
        let e = [planar - big, d[2]];
        let len = (e[0] * e[0] + e[1] * e[1]).sqrt();
        (ct, st, e[0] / len, e[1] / len)
    };
    textured(
        "torus",
        grid,
        |p| in_torus(p, centre, major, minor),
        move |x| {
            let (ct, st, cp, sp) = angles(x);
            let rho = big + small * cp;
            [cd[0] + rho * ct, cd[1] + rho * st, cd[2] + small * sp]
        },
        Box::new(move |x| {
            let (ct, st, cp, sp) = angles(x);
            [
                0.5 + 0.4 * ct,
                0.5 + 0.4 * (2.0 * st * ct),
                0.5 + 0.3 * cp,
                0.5 + 0.4 * sp,
                0.5 + 0.3 * st * cp,
                1.0,
            ]
        }),
    )
}

/// A plate 0.7·grid × 0.5·grid and 3 voxels thick; the field varies over x and y only (so is
/// constant through the plate's large faces).
pub fn plate(grid: i32) -> TexturedShape {
    let g = grid as f64;
    let mid = grid / 2;
    let lo = [mid - (0.35 * g) as i32, mid - (0.25 * g) as i32, mid - 1];
    let hi = [mid + (0.35 * g) as i32, mid + (0.25 * g) as i32, mid + 1];
    // The continuous box half-way between inside and outside lattice points.
    let (blo, bhi) = (
        lo.map(|v| f64::from(v) - 0.5),
        hi.map(|v| f64::from(v) + 0.5),
    );
    textured(
        "plate",
        grid,
        |p| in_box(p, lo, hi),
        move |x| {
            let mut q: [f64; 3] = std::array::from_fn(|k| x[k].clamp(blo[k], bhi[k]));
            if q == x {
                // Inside: onto the nearest face.
                let (k, side) = (0..3)
                    .flat_map(|k| [(k, blo[k]), (k, bhi[k])])
                    .min_by(|a, b| (x[a.0] - a.1).abs().total_cmp(&(x[b.0] - b.1).abs()))
                    .expect("six faces");
                q[k] = side;
            }
            q
        },
        Box::new(move |x| {
            let (u, v) = (x[0] / g, x[1] / g);
            [
                0.5 + 0.4 * (6.0 * u).sin(),
                0.5 + 0.4 * (5.0 * v).cos(),
                0.5 + 0.3 * (4.0 * (u + v)).sin(),
                0.5 + 0.4 * (3.0 * u).cos(),
                0.5 + 0.4 * (4.0 * v).sin(),
                1.0,
            ]
        }),
    )
}

/// Three concentric sphere shells (radii 0.45, 0.35 and 0.22 of the grid, the middle one
/// hollowing the outer): at 1024³ about 7 M voxels, the size of a large 1024 decoder output.
/// The field is the sphere's, by direction.
pub fn nested_spheres(grid: i32) -> TexturedShape {
    let c = grid as f32 / 2.0 + 0.3;
    let centre = [c, c - 0.2, c + 0.1];
    let radii = [0.45, 0.35, 0.22].map(|r| grid as f32 * r);
    let cd = centre.map(f64::from);
    textured(
        "nested spheres",
        grid,
        move |p| {
            (in_ball(p, centre, radii[0]) && !in_ball(p, centre, radii[1]))
                || in_ball(p, centre, radii[2])
        },
        move |x| {
            let d = [x[0] - cd[0], x[1] - cd[1], x[2] - cd[2]];
            let len = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
            let r = radii
                .iter()
                .map(|&r| f64::from(r))
                .min_by(|a, b| (a - len).abs().total_cmp(&(b - len).abs()))
                .expect("three radii");
            std::array::from_fn(|k| cd[k] + d[k] * r / len)
        },
        Box::new(move |x| latitude_longitude_field(cd, x)),
    )
}
