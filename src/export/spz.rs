//! Gaussian splats as Niantic's SPZ, version 2 (docs/OUTPUTS.md): the same splats as the PLY
//! ([`super::splat`]), quantised and gzip-compressed, about a tenth of the size.
//!
//! Layout (all little-endian, the whole stream gzip-compressed): a 16-byte header `magic
//! 0x5053474e ("NGSP") u32, version u32 = 2, point count u32, SH degree u8, fractional bits u8,
//! flags u8 (bit 0: trained with antialiasing), reserved u8`, then one block per attribute, each
//! covering every splat: positions (3 × 24-bit signed fixed point), alphas (u8), colours (3 × u8),
//! scales (3 × u8), rotations (3 × u8) and SH coefficients above degree 0 (3 per coefficient, u8).
//!
//! Quantisation (decode in brackets; the writer rounds to the nearest code, so each error is at
//! most half a step):
//! * position: `round(p · 2^f)` with `f` fractional bits [`p = code / 2^f`]; `f` is the most
//!   that the bounds allow, but no finer than 1/8 voxel ([`POSITION_STEPS_PER_VOXEL`]): 13 bits
//!   at 1024³ in the unit cube;
//! * alpha: `round(sigmoid(opacity) · 255)` [`opacity = logit(code / 255)`];
//! * colour: `round(f_dc · 0.15 · 255 + 127.5)` [`f_dc = (code / 255 − 0.5) / 0.15`]: steps of
//!   0.026 in `f_dc`, 0.0074 (1.9 / 255) in linear colour;
//! * scale: `round((log scale + 10) · 16)` [`code / 16 − 10`]: log scales are clamped to the
//!   representable `[−10, 5.9375]` (a sigma of 4.5·10⁻⁵ to 380 scene units);
//! * rotation: the unit quaternion with `w ≥ 0`, `x y z` as `round(v · 127.5 + 127.5)`
//!   [`v = code / 127.5 − 1`, `w = sqrt(1 − x² − y² − z²)`].
//!
//! Version 2 rather than 3 (smallest-three rotations, 4 bytes) or 4 (zstd streams): every SPZ
//! reader accepts 2, while 3 and 4 need a recent one; our flat discs lose little to version 2's
//! 8-bit rotations. Axes: SPZ fixes right-handed +Y up (its "RUB", glTF's frame), so SPZ is
//! always written with [`Up::Y`] whatever `--up` says.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use flate2::read::GzDecoder;
use flate2::{Compress, Compression, Crc, FlushCompress, Status};
use rayon::prelude::*;

use super::asset::Asset;
use super::frame::Up;
use super::splat::{fitted_rows, SplatBudget, SplatShape};
use super::splat_fit::{fit_splats, FittedSplat};
use super::write_atomic;

/// "NGSP" read as a little-endian u32.
pub const SPZ_MAGIC: u32 = 0x5053_474e;
/// The version this module writes.
pub const SPZ_VERSION: u32 = 2;
/// SPZ's colour scale: `f_dc` is stored as `f_dc · COLOR_SCALE + 0.5` in units of 1/255 (a
/// smaller factor than SH_C0 leaves room for base colours slightly outside [0, 1]).
pub const COLOR_SCALE: f32 = 0.15;
/// Log scales are stored as `(log + SCALE_OFFSET) · SCALE_STEPS_PER_UNIT`.
pub const SCALE_OFFSET: f32 = 10.0;
pub const SCALE_STEPS_PER_UNIT: f32 = 16.0;
/// The finest position step any file gets, 2⁻²³: beyond it the f32 positions of a unit-sized
/// object hold nothing more.
pub const MAX_FRACTIONAL_BITS: u8 = 23;
/// Position steps per voxel edge in files written from an asset: a rounding error of at most
/// 1/16 voxel, far below the splats' 0.6-voxel tangent sigma and a pixel of any sensible
/// render; finer steps only add low bits that gzip cannot compress (each bit costs about 0.4
/// bytes per splat).
pub const POSITION_STEPS_PER_VOXEL: f64 = 8.0;
/// Splats the reader accepts (Niantic's own reader stops at 10 million).
pub const MAX_SPZ_POINTS: usize = 100_000_000;
const HEADER_BYTES: usize = 16;
const FIXED24_MAX: f64 = 8_388_607.0;

/// One splat, pre-activation as 3DGS stores it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RawSplat {
    pub position: [f32; 3],
    /// SH degree-0 coefficients.
    pub f_dc: [f32; 3],
    /// Opacity logit.
    pub opacity: f32,
    /// Natural-log standard deviations along the rotation's axes.
    pub log_scale: [f32; 3],
    /// Unit quaternion `(w, x, y, z)`.
    pub rotation: [f32; 4],
}

/// A decoded SPZ file.
#[derive(Clone, Debug, PartialEq)]
pub struct SpzFile {
    pub version: u32,
    pub fractional_bits: u8,
    pub antialiased: bool,
    pub sh_degree: u8,
    pub splats: Vec<RawSplat>,
    /// Per splat, the SH coefficients above degree 0 as SPZ orders them (coefficient-major,
    /// `r g b` for each); empty for degree 0.
    pub sh_rest: Vec<f32>,
}

/// Writes the splats of `asset` (as [`super::write_splat_ply`] builds them, at most `budget`)
/// to `path` as SPZ, atomically.
pub fn write_splat_spz(path: &Path, asset: &Asset, budget: SplatBudget) -> Result<()> {
    let fitted = fit_splats(asset, budget, &SplatShape::default());
    write_fitted_splat_spz(path, &fitted, asset.voxel_size())
}

/// Writes splats already fitted ([`fit_splats`]) from an asset of voxels `voxel_size` wide to
/// `path` as SPZ, atomically.
pub fn write_fitted_splat_spz(path: &Path, fitted: &[FittedSplat], voxel_size: f32) -> Result<()> {
    let splats: Vec<RawSplat> = fitted_rows(fitted, Up::Y)
        .par_iter()
        .map(|r| RawSplat {
            position: [r.x, r.y, r.z],
            f_dc: [r.f_dc_0, r.f_dc_1, r.f_dc_2],
            opacity: r.opacity,
            log_scale: [r.scale_0, r.scale_1, r.scale_2],
            rotation: [r.rot_0, r.rot_1, r.rot_2, r.rot_3],
        })
        .collect();
    // The fewest bits whose step is at most 1/POSITION_STEPS_PER_VOXEL of a voxel.
    let voxel = f64::from(voxel_size);
    let finest = (POSITION_STEPS_PER_VOXEL / voxel)
        .log2()
        .ceil()
        .clamp(0.0, f64::from(MAX_FRACTIONAL_BITS)) as u8;
    let bytes = encode_spz(&splats, finest)
        .with_context(|| format!("{}: cannot write the SPZ splats", path.display()))?;
    write_atomic(path, |w| Ok(w.write_all(&bytes)?))
        .with_context(|| format!("{}: cannot write the SPZ splats", path.display()))
}

/// The fractional bits for positions, from the bounds: the most, up to `finest`, for which the
/// largest coordinate magnitude still fits the signed 24 bits after rounding. Fails when even 0
/// bits do not (a coordinate beyond ±8,388,607) or a coordinate is not finite.
pub fn fractional_bits(splats: &[RawSplat], finest: u8) -> Result<u8> {
    let mut largest = 0.0f64;
    for (i, s) in splats.iter().enumerate() {
        ensure!(
            s.position.iter().all(|v| v.is_finite()),
            "splat {i} has a non-finite position"
        );
        largest = s
            .position
            .iter()
            .fold(largest, |m, v| m.max(f64::from(v.abs())));
    }
    (0..=finest.min(MAX_FRACTIONAL_BITS))
        .rev()
        .find(|&f| (largest * f64::from(1u32 << f)).round() <= FIXED24_MAX)
        .with_context(|| {
            format!("a coordinate of {largest} is beyond SPZ's 24-bit fixed-point range")
        })
}

fn to_u8(v: f32) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// SPZ bytes (gzip stream) of `splats`, SH degree 0, positions with at most `finest` fractional
/// bits ([`fractional_bits`]). Refuses splats whose position, colour,
/// scale or rotation is not finite, a zero rotation, or an opacity that is NaN (±∞ opacities
/// become alpha 0 or 1); clamps what falls outside a field's range (colours beyond
/// `f_dc = ±3.33`, log scales outside `[−10, 5.9375]`).
pub fn encode_spz(splats: &[RawSplat], finest: u8) -> Result<Vec<u8>> {
    let n = splats.len();
    ensure!(
        u32::try_from(n).is_ok(),
        "{n} splats do not fit SPZ's 32-bit count"
    );
    for (i, s) in splats.iter().enumerate() {
        let finite = s
            .f_dc
            .iter()
            .chain(&s.log_scale)
            .chain(&s.rotation)
            .all(|v| v.is_finite());
        ensure!(
            finite && !s.opacity.is_nan(),
            "splat {i} has a non-finite colour, scale, rotation or opacity"
        );
        ensure!(
            s.rotation.iter().any(|&v| v != 0.0),
            "splat {i} has a zero rotation quaternion"
        );
    }
    let bits = fractional_bits(splats, finest)?;
    let unit = f64::from(1u32 << bits);
    let mut raw = Vec::with_capacity(HEADER_BYTES + n * 19);
    raw.extend_from_slice(&SPZ_MAGIC.to_le_bytes());
    raw.extend_from_slice(&SPZ_VERSION.to_le_bytes());
    raw.extend_from_slice(&(n as u32).to_le_bytes());
    // SH degree 0, then the bits; flags 0: our splats are not trained with antialiasing.
    raw.extend_from_slice(&[0, bits, 0, 0]);
    for s in splats {
        for v in s.position {
            let code = (f64::from(v) * unit).round() as i32;
            raw.extend_from_slice(&code.to_le_bytes()[..3]);
        }
    }
    for s in splats {
        let alpha = 1.0 / (1.0 + (-f64::from(s.opacity)).exp());
        raw.push(to_u8((alpha * 255.0) as f32));
    }
    for s in splats {
        raw.extend(s.f_dc.map(|c| to_u8(c * (COLOR_SCALE * 255.0) + 127.5)));
    }
    for s in splats {
        raw.extend(
            s.log_scale
                .map(|l| to_u8((l + SCALE_OFFSET) * SCALE_STEPS_PER_UNIT)),
        );
    }
    for s in splats {
        let q = s.rotation.map(f64::from);
        let len = q.iter().map(|v| v * v).sum::<f64>().sqrt();
        let sign = if q[0] < 0.0 { -1.0 } else { 1.0 };
        for v in &q[1..] {
            raw.push(to_u8((sign * v / len * 127.5 + 127.5) as f32));
        }
    }
    gzip_in_chunks(&raw, GZIP_CHUNK)
}

/// Bytes of raw SPZ data compressed on their own, side by side (see [`gzip_in_chunks`]). Fixed,
/// so the file does not depend on the thread count; 1 MiB pieces cost about 0.1 % in size
/// against one stream (each restarts its 32 KiB window and Huffman tables).
const GZIP_CHUNK: usize = 1 << 20;

/// One gzip stream of `data` at the best level, as the `gzip` tool writes it (no name, no
/// time), compressed in pieces of `chunk` bytes in parallel: each piece is deflated on its own
/// and ended with a sync flush (an empty stored block that byte-aligns it, without the final
/// bit), the last one finished; the pieces joined are one valid deflate stream, since none
/// refers back past its own start. The CRC-32 is combined from the pieces'.
fn gzip_in_chunks(data: &[u8], chunk: usize) -> Result<Vec<u8>> {
    let pieces: Vec<&[u8]> = if data.is_empty() {
        vec![data]
    } else {
        data.chunks(chunk).collect()
    };
    let last = pieces.len() - 1;
    let deflated = pieces
        .par_iter()
        .enumerate()
        .map(|(i, piece)| {
            let mut crc = Crc::new();
            crc.update(piece);
            Ok((deflate_piece(piece, i == last)?, crc))
        })
        .collect::<Result<Vec<_>>>()?;
    let size: usize = deflated.iter().map(|(d, _)| d.len()).sum();
    let mut out = Vec::with_capacity(10 + size + 8);
    // Magic, deflate, no flags, no time, "best compression", unknown OS.
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 0xff]);
    let mut crc = Crc::new();
    for (bytes, piece_crc) in &deflated {
        out.extend_from_slice(bytes);
        crc.combine(piece_crc);
    }
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    Ok(out)
}

/// Raw deflate of `piece` at the best level, finished if `last`, else ended by a sync flush.
fn deflate_piece(piece: &[u8], last: bool) -> Result<Vec<u8>> {
    let mut z = Compress::new(Compression::best(), false);
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(piece.len() / 2 + 64);
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(64));
        }
        let read = z.total_in() as usize;
        let status = z
            .compress_vec(&piece[read..], &mut out, flush)
            .context("deflate")?;
        let all_in = z.total_in() as usize == piece.len();
        // Done when finished, or flushed with room to spare (nothing more pending).
        if status == Status::StreamEnd || (!last && all_in && out.len() < out.capacity()) {
            return Ok(out);
        }
    }
}

/// Decodes SPZ bytes (versions 2 and 3, SH degree 0–3). The decompressed size is bounded by
/// the header's point count, so a forged stream cannot make the reader allocate without limit.
pub fn decode_spz(bytes: &[u8]) -> Result<SpzFile> {
    ensure!(
        bytes.starts_with(&[0x1f, 0x8b]),
        "not an SPZ file (no gzip stream; SPZ version 4 files are not supported)"
    );
    let mut gz = GzDecoder::new(bytes);
    let mut header = [0u8; HEADER_BYTES];
    gz.read_exact(&mut header)
        .context("not an SPZ file (truncated header)")?;
    let word = |k: usize| u32::from_le_bytes(std::array::from_fn(|j| header[4 * k + j]));
    ensure!(word(0) == SPZ_MAGIC, "not an SPZ file (bad magic)");
    let version = word(1);
    ensure!(
        version == 2 || version == 3,
        "SPZ version {version} is not supported (2 and 3 are)"
    );
    let n = word(2) as usize;
    ensure!(
        n <= MAX_SPZ_POINTS,
        "{n} splats is more than this reader accepts ({MAX_SPZ_POINTS})"
    );
    let (sh_degree, bits, flags) = (header[12], header[13], header[14]);
    ensure!(
        flags & 0x2 == 0,
        "SPZ extensions (flag 0x2) are not supported"
    );
    ensure!(
        bits <= 23,
        "{bits} fractional bits is more than 24-bit positions allow"
    );
    let sh_dim = match sh_degree {
        0 => 0,
        1 => 3,
        2 => 8,
        3 => 15,
        d => bail!("SH degree {d} is not supported (0 to 3 are)"),
    };
    let rot_bytes = if version >= 3 { 4 } else { 3 };
    let per_splat = 9 + 1 + 3 + 3 + rot_bytes + sh_dim * 3;
    let mut body = vec![0u8; n * per_splat];
    gz.read_exact(&mut body)
        .with_context(|| format!("truncated SPZ data ({n} splats declared)"))?;
    let (positions, rest) = body.split_at(n * 9);
    let (alphas, rest) = rest.split_at(n);
    let (colours, rest) = rest.split_at(n * 3);
    let (scales, rest) = rest.split_at(n * 3);
    let (rotations, sh) = rest.split_at(n * rot_bytes);
    let unit = 1.0 / f64::from(1u32 << bits);
    let splats = (0..n)
        .map(|i| {
            let position = std::array::from_fn(|k| {
                let b = &positions[9 * i + 3 * k..][..3];
                // Sign-extend the 24-bit value through the top byte of an i32.
                let code = i32::from_le_bytes([0, b[0], b[1], b[2]]) >> 8;
                (f64::from(code) * unit) as f32
            });
            let a = f32::from(alphas[i]) / 255.0;
            RawSplat {
                position,
                f_dc: std::array::from_fn(|k| {
                    (f32::from(colours[3 * i + k]) / 255.0 - 0.5) / COLOR_SCALE
                }),
                opacity: (a / (1.0 - a)).ln(),
                log_scale: std::array::from_fn(|k| {
                    f32::from(scales[3 * i + k]) / SCALE_STEPS_PER_UNIT - SCALE_OFFSET
                }),
                rotation: if version >= 3 {
                    smallest_three(&rotations[4 * i..][..4])
                } else {
                    first_three(&rotations[3 * i..][..3])
                },
            }
        })
        .collect();
    Ok(SpzFile {
        version,
        fractional_bits: bits,
        antialiased: flags & 1 != 0,
        sh_degree,
        splats,
        sh_rest: sh.iter().map(|&c| (f32::from(c) - 128.0) / 128.0).collect(),
    })
}

/// Version 2's rotation: `x y z` in 8 bits each, `w ≥ 0` from the unit norm.
fn first_three(b: &[u8]) -> [f32; 4] {
    let [x, y, z] = std::array::from_fn(|k| f32::from(b[k]) / 127.5 - 1.0);
    let w = (1.0 - x * x - y * y - z * z).max(0.0).sqrt();
    [w, x, y, z]
}

/// Version 3's rotation: a 32-bit word, the index of the largest `x y z w` component in the top
/// two bits, then for the other three (last first, from the low bits up) a 9-bit magnitude in
/// units of `√½ / 511` and a sign bit; the largest is positive and follows from the unit norm.
fn smallest_three(b: &[u8]) -> [f32; 4] {
    let mut word = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let largest = (word >> 30) as usize;
    let mut xyzw = [0.0f32; 4];
    let mut sum = 0.0;
    for i in (0..4).rev().filter(|&i| i != largest) {
        let magnitude = std::f32::consts::FRAC_1_SQRT_2 * (word & 511) as f32 / 511.0;
        let v = if (word >> 9) & 1 == 1 {
            -magnitude
        } else {
            magnitude
        };
        xyzw[i] = v;
        sum += v * v;
        word >>= 10;
    }
    xyzw[largest] = (1.0 - sum).max(0.0).sqrt();
    [xyzw[3], xyzw[0], xyzw[1], xyzw[2]]
}

/// The file as 3DGS's PLY columns (`x y z f_dc_0..2 f_rest_* opacity scale_0..2 rot_0..3`,
/// `f_rest` channel-major as INRIA stores it), for readers written against the PLY layout.
pub fn spz_columns(file: &SpzFile) -> Vec<(String, Vec<f32>)> {
    let s = &file.splats;
    let col =
        |name: &str, f: &dyn Fn(&RawSplat) -> f32| (name.to_string(), s.iter().map(f).collect());
    let mut columns = vec![
        col("x", &|r| r.position[0]),
        col("y", &|r| r.position[1]),
        col("z", &|r| r.position[2]),
        col("f_dc_0", &|r| r.f_dc[0]),
        col("f_dc_1", &|r| r.f_dc[1]),
        col("f_dc_2", &|r| r.f_dc[2]),
    ];
    let per_splat = if s.is_empty() {
        0
    } else {
        file.sh_rest.len() / s.len()
    };
    let per_channel = per_splat / 3;
    for c in 0..3 {
        for j in 0..per_channel {
            columns.push((
                format!("f_rest_{}", c * per_channel + j),
                (0..s.len())
                    .map(|i| file.sh_rest[i * per_splat + 3 * j + c])
                    .collect(),
            ));
        }
    }
    columns.extend([
        col("opacity", &|r| r.opacity),
        col("scale_0", &|r| r.log_scale[0]),
        col("scale_1", &|r| r.log_scale[1]),
        col("scale_2", &|r| r.log_scale[2]),
        col("rot_0", &|r| r.rotation[0]),
        col("rot_1", &|r| r.rotation[1]),
        col("rot_2", &|r| r.rotation[2]),
        col("rot_3", &|r| r.rotation[3]),
    ]);
    columns
}

/// Reads an SPZ file. Errors name the file.
pub fn read_spz(path: &Path) -> Result<SpzFile> {
    let bytes = crate::files::read_regular(path, u64::MAX)?;
    decode_spz(&bytes).with_context(|| path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    /// Deterministic splats over the ranges our writer produces, plus edge cases.
    fn sample(n: usize) -> Vec<RawSplat> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f32 / (1u64 << 53) as f32
        };
        (0..n)
            .map(|_| {
                let mut q = [next(), next(), next(), next()].map(|v| 2.0 * v - 1.0);
                let len = q.iter().map(|v| v * v).sum::<f32>().sqrt();
                q = q.map(|v| v / len);
                RawSplat {
                    position: std::array::from_fn(|_| next() - 0.5),
                    f_dc: std::array::from_fn(|_| (next() - 0.5) / 0.282_094_8),
                    opacity: 18.0 * next() - 9.0,
                    log_scale: std::array::from_fn(|_| -9.5 + 6.0 * next()),
                    rotation: q,
                }
            })
            .collect()
    }

    fn sigmoid(x: f32) -> f32 {
        1.0 / (1.0 + (-x).exp())
    }

    #[test]
    fn round_trip_stays_within_the_quantisation() {
        let splats = sample(5000);
        let bytes = encode_spz(&splats, 16).unwrap();
        let file = decode_spz(&bytes).unwrap();
        assert_eq!((file.version, file.sh_degree), (2, 0));
        assert_eq!(file.fractional_bits, 16);
        let step = 1.0 / (1u32 << file.fractional_bits) as f32;
        for (a, b) in splats.iter().zip(&file.splats) {
            for k in 0..3 {
                assert!((a.position[k] - b.position[k]).abs() <= 0.5 * step + 1e-7);
                let colour_step = 1.0 / (COLOR_SCALE * 255.0);
                assert!((a.f_dc[k] - b.f_dc[k]).abs() <= 0.5 * colour_step + 1e-5);
                let scale_step = 1.0 / SCALE_STEPS_PER_UNIT;
                assert!((a.log_scale[k] - b.log_scale[k]).abs() <= 0.5 * scale_step + 1e-5);
            }
            assert!((sigmoid(a.opacity) - sigmoid(b.opacity)).abs() <= 0.5 / 255.0 + 1e-6);
            // Same rotation (q and −q agree); x y z within half a step of 1/127.5 each.
            let dot: f32 = a.rotation.iter().zip(&b.rotation).map(|(u, v)| u * v).sum();
            let s = dot.signum();
            for k in 1..4 {
                assert!((s * a.rotation[k] - b.rotation[k]).abs() <= 0.5 / 127.5 + 1e-6);
            }
            assert!(b.rotation[0] >= 0.0);
        }
    }

    #[test]
    fn fractional_bits_follow_the_bounds() {
        let at = |v: f32| {
            vec![RawSplat {
                position: [v, -v, 0.0],
                f_dc: [0.0; 3],
                opacity: 0.0,
                log_scale: [0.0; 3],
                rotation: [1.0, 0.0, 0.0, 0.0],
            }]
        };
        assert_eq!(fractional_bits(&at(0.5), 16).unwrap(), 16);
        assert_eq!(fractional_bits(&at(127.0), 16).unwrap(), 16);
        assert_eq!(fractional_bits(&at(128.0), 16).unwrap(), 15);
        assert_eq!(fractional_bits(&at(8_000_000.0), 16).unwrap(), 0);
        assert!(fractional_bits(&at(9_000_000.0), 16).is_err());
        assert!(fractional_bits(&at(f32::NAN), 16).is_err());
        assert_eq!(fractional_bits(&at(0.5), 30).unwrap(), 23);
        assert_eq!(fractional_bits(&at(0.5), 9).unwrap(), 9);
        // The largest coordinate survives exactly at the chosen bits.
        let big = at(-3000.7);
        let f = decode_spz(&encode_spz(&big, 16).unwrap()).unwrap();
        assert_eq!(f.fractional_bits, 11);
        assert!((f.splats[0].position[1] - 3000.7).abs() <= 0.5 / 2048.0 + 1e-3 * f32::EPSILON);
    }

    #[test]
    fn bad_splats_are_refused_and_ranges_clamped() {
        let mut s = sample(3);
        s[1].f_dc[2] = f32::INFINITY;
        assert!(encode_spz(&s, 16).is_err());
        let mut s = sample(3);
        s[0].opacity = f32::NAN;
        assert!(encode_spz(&s, 16).is_err());
        let mut s = sample(3);
        s[2].rotation = [0.0; 4];
        assert!(encode_spz(&s, 16).is_err());
        let mut s = sample(2);
        s[0].opacity = f32::INFINITY;
        s[1].opacity = f32::NEG_INFINITY;
        s[0].log_scale = [-20.0, 20.0, 0.0];
        let f = decode_spz(&encode_spz(&s, 16).unwrap()).unwrap();
        assert_eq!(f.splats[0].opacity, f32::INFINITY);
        assert_eq!(f.splats[1].opacity, f32::NEG_INFINITY);
        assert_eq!(f.splats[0].log_scale[..2], [-10.0, 5.9375]);
    }

    #[test]
    fn corrupt_streams_fail_cleanly() {
        let bytes = encode_spz(&sample(100), 16).unwrap();
        assert!(decode_spz(&bytes[..bytes.len() / 2]).is_err());
        assert!(decode_spz(b"ply\n").is_err());
        let mut raw = Vec::new();
        GzDecoder::new(&bytes[..]).read_to_end(&mut raw).unwrap();
        // A forged count beyond the data is refused without reading past it.
        raw[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(&raw).unwrap();
        assert!(decode_spz(&gz.finish().unwrap()).is_err());
    }

    #[test]
    fn version_three_rotations_decode() {
        // x y z w = (0.6, 0, −0.8·0, …): build the word by hand for q = (w 0.8, x 0, y −0.6, z 0).
        // Largest is w (index 3); the others x, y, z go in from the high bits down.
        let mag = |v: f32| ((511.0 * v.abs() / std::f32::consts::FRAC_1_SQRT_2) + 0.5) as u32;
        let mut word = 3u32;
        for v in [0.0f32, -0.6, 0.0] {
            word = (word << 10) | (u32::from(v < 0.0) << 9) | mag(v);
        }
        let q = smallest_three(&word.to_le_bytes());
        let want = [0.8, 0.0, -0.6, 0.0];
        for k in 0..4 {
            assert!((q[k] - want[k]).abs() < 2e-3, "{q:?}");
        }
    }

    #[test]
    fn gzip_in_pieces_reads_back_whole_and_does_not_depend_on_the_thread_count() {
        // Compressible but not trivial: a slow ramp with a pseudo-random low byte.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let data: Vec<u8> = (0..50_000u32)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (i / 700) as u8 ^ (state & 3) as u8
            })
            .collect();
        for (len, chunk) in [
            (50_000, 4096),
            (50_000, 10_000),
            (4096, 4096),
            (0, 4096),
            (7, 4096),
        ] {
            let data = &data[..len];
            let gzip = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| gzip_in_chunks(data, chunk).unwrap())
            };
            let bytes = gzip(1);
            assert_eq!(bytes, gzip(4), "{len} bytes in pieces of {chunk}");
            let mut back = Vec::new();
            GzDecoder::new(&bytes[..]).read_to_end(&mut back).unwrap();
            assert_eq!(back, data, "{len} bytes in pieces of {chunk}");
        }
    }
}
