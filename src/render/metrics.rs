//! How close two renders are: PSNR and SSIM on the 8-bit pictures as written (RGB over the
//! same background), averaged over views; and the splats-against-mesh measurement `generate
//! --report` records as `splat_psnr_db`.

use anyhow::{ensure, Result};
use rayon::prelude::*;

use super::mesh::Shading;
use super::{render, Background, Frame, Orbit, RenderOptions, Scene};

/// Peak signal-to-noise ratio in dB of two RGBA8 pictures' RGB (alpha ignored), 8-bit peak;
/// infinite for identical pictures.
pub fn psnr(a: &[[u8; 4]], b: &[[u8; 4]]) -> f64 {
    psnr_where(a, b, |_| true)
}

/// PSNR over the pixels `i` with `keep(i)` only.
pub fn psnr_where(a: &[[u8; 4]], b: &[[u8; 4]], keep: impl Fn(usize) -> bool) -> f64 {
    assert_eq!(a.len(), b.len(), "pictures of different sizes");
    let (mut sse, mut n) = (0.0f64, 0usize);
    for (i, (p, q)) in a.iter().zip(b).enumerate() {
        if keep(i) {
            sse += (0..3)
                .map(|k| (f64::from(p[k]) - f64::from(q[k])).powi(2))
                .sum::<f64>();
            n += 1;
        }
    }
    let mse = sse / (3 * n.max(1)) as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

/// Structural similarity (Wang et al. 2004) of two RGBA8 pictures' RGB: an 11×11 Gaussian
/// window of σ 1.5, `C1 = (0.01·255)²`, `C2 = (0.03·255)²`, averaged over every window that
/// fits inside the picture and over the three channels.
pub fn ssim(a: &[[u8; 4]], b: &[[u8; 4]], width: usize, height: usize) -> f64 {
    assert_eq!(a.len(), width * height);
    assert_eq!(b.len(), width * height);
    const R: usize = 5;
    if width <= 2 * R || height <= 2 * R {
        return if a == b { 1.0 } else { psnr_free_ssim(a, b) };
    }
    let g: Vec<f64> = {
        let w: Vec<f64> = (0..=2 * R)
            .map(|i| (-((i as f64 - R as f64).powi(2)) / (2.0 * 1.5 * 1.5)).exp())
            .collect();
        let s: f64 = w.iter().sum();
        w.into_iter().map(|v| v / s).collect()
    };
    let (c1, c2) = ((0.01f64 * 255.0).powi(2), (0.03f64 * 255.0).powi(2));
    let (ow, oh) = (width - 2 * R, height - 2 * R);
    // Each channel: five blurred fields (a, b, a², b², ab), a horizontal pass then a vertical
    // one, every window's sum taken tap by tap in order, then the SSIM map summed in row-major
    // order: the same additions in the same order whatever the number of threads.
    let per_channel: Vec<f64> = (0..3)
        .into_par_iter()
        .map(|ch| {
            let xa: Vec<f64> = a.iter().map(|p| f64::from(p[ch])).collect();
            let xb: Vec<f64> = b.iter().map(|p| f64::from(p[ch])).collect();
            // Horizontal pass: rows of `ow` windows, the five fields side by side.
            let mut h = vec![[0f64; 5]; ow * height];
            h.par_chunks_mut(ow).enumerate().for_each(|(y, row)| {
                let (ra, rb) = (&xa[y * width..][..width], &xb[y * width..][..width]);
                for (x, out) in row.iter_mut().enumerate() {
                    let mut s = [0f64; 5];
                    for (k, gk) in g.iter().enumerate() {
                        let (p, q) = (ra[x + k], rb[x + k]);
                        s[0] += gk * p;
                        s[1] += gk * q;
                        s[2] += gk * (p * p);
                        s[3] += gk * (q * q);
                        s[4] += gk * (p * q);
                    }
                    *out = s;
                }
            });
            let mut map = vec![0f64; ow * oh];
            map.par_chunks_mut(ow).enumerate().for_each(|(y, row)| {
                let mut v = vec![[0f64; 5]; ow];
                for (k, gk) in g.iter().enumerate() {
                    for (acc, hk) in v.iter_mut().zip(&h[(y + k) * ow..][..ow]) {
                        for j in 0..5 {
                            acc[j] += gk * hk[j];
                        }
                    }
                }
                for (out, [mx, my, saa, sbb, sab]) in row.iter_mut().zip(v) {
                    let (vx, vy, cxy) = (saa - mx * mx, sbb - my * my, sab - mx * my);
                    *out = ((2.0 * mx * my + c1) * (2.0 * cxy + c2))
                        / ((mx * mx + my * my + c1) * (vx + vy + c2));
                }
            });
            map.iter().sum::<f64>() / (ow * oh) as f64
        })
        .collect();
    per_channel.iter().sum::<f64>() / 3.0
}

/// SSIM of pictures too small for a window: one global window.
fn psnr_free_ssim(a: &[[u8; 4]], b: &[[u8; 4]]) -> f64 {
    let (c1, c2) = ((0.01f64 * 255.0).powi(2), (0.03f64 * 255.0).powi(2));
    let n = a.len().max(1) as f64;
    (0..3)
        .map(|ch| {
            let xa: Vec<f64> = a.iter().map(|p| f64::from(p[ch])).collect();
            let xb: Vec<f64> = b.iter().map(|p| f64::from(p[ch])).collect();
            let (mx, my) = (xa.iter().sum::<f64>() / n, xb.iter().sum::<f64>() / n);
            let vx = xa.iter().map(|v| (v - mx).powi(2)).sum::<f64>() / n;
            let vy = xb.iter().map(|v| (v - my).powi(2)).sum::<f64>() / n;
            let cxy = xa
                .iter()
                .zip(&xb)
                .map(|(p, q)| (p - mx) * (q - my))
                .sum::<f64>()
                / n;
            ((2.0 * mx * my + c1) * (2.0 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        })
        .sum::<f64>()
        / 3.0
}

/// PSNR and SSIM averaged over views.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Quality {
    /// Mean over views of each view's PSNR (dB).
    pub psnr_db: f64,
    /// Mean over views of each view's SSIM.
    pub ssim: f64,
    /// PSNR over the object's pixels only (those either render covers), which the background
    /// does not inflate.
    pub psnr_object_db: f64,
}

/// Compares two sets of views over `background`.
pub fn compare_views(a: &[Frame], b: &[Frame], background: Background) -> Result<Quality> {
    ensure!(
        a.len() == b.len() && !a.is_empty(),
        "{} views against {}",
        a.len(),
        b.len()
    );
    let per_view: Vec<(f64, f64, f64)> = a
        .par_iter()
        .zip(b)
        .map(|(fa, fb)| {
            let (pa, pb) = (fa.to_rgba8(background), fb.to_rgba8(background));
            let covered =
                |i: usize| fa.alpha[i] >= OBJECT_COVERAGE || fb.alpha[i] >= OBJECT_COVERAGE;
            (
                psnr(&pa, &pb),
                ssim(&pa, &pb, fa.width as usize, fa.height as usize),
                psnr_where(&pa, &pb, covered),
            )
        })
        .collect();
    let n = per_view.len() as f64;
    Ok(Quality {
        psnr_db: per_view.iter().map(|v| v.0).sum::<f64>() / n,
        ssim: per_view.iter().map(|v| v.1).sum::<f64>() / n,
        psnr_object_db: per_view.iter().map(|v| v.2).sum::<f64>() / n,
    })
}

/// A pixel belongs to the object when a render covers at least this much of it (half an 8-bit
/// level).
pub const OBJECT_COVERAGE: f32 = 0.5 / 255.0;

/// The views of the splat-quality measurement: 8 orbit views at 512², 20° elevation.
pub const QUALITY_ORBIT: Orbit = Orbit {
    views: 8,
    size: 512,
    elevation_deg: 20.0,
};

/// Splats against the mesh they were made from: both drawn from the same cameras (the orbit
/// around the mesh's bounds), the mesh unlit (splats carry no shading), over white.
pub fn splat_quality(mesh: &Scene, splats: &Scene, orbit: &Orbit) -> Result<Quality> {
    let (lo, hi) = mesh.bounds()?;
    let options = RenderOptions {
        shading: Shading::Unlit,
        ..RenderOptions::default()
    };
    let (mut ref_views, mut test_views) = (Vec::new(), Vec::new());
    for k in 0..orbit.views {
        let cam = orbit.camera(k, lo, hi);
        ref_views.push(render(mesh, &cam, &options));
        test_views.push(render(splats, &cam, &options));
    }
    compare_views(&ref_views, &test_views, Background::White)
}
