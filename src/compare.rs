//! Comparing two output files (safetensors, PLY, GLB) value by value, for CI golden checks.
//! A value passes when `|a − b| ≤ atol + rtol·|b|` (numpy's `allclose`, with B the reference);
//! NaN equals NaN. Structure (names, shapes, counts, dtypes) must match exactly.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::export::color::srgb_to_linear;
use crate::export::glb::{read_glb, MeshData};
use crate::export::ply::{read_ply, Column, PlyFile};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    pub atol: f64,
    pub rtol: f64,
}

impl Default for Tolerance {
    fn default() -> Self {
        Self {
            atol: 1e-5,
            rtol: 1e-4,
        }
    }
}

/// How one named array (tensor, property, attribute) differs.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldDiff {
    pub name: String,
    pub len: usize,
    pub max_abs: f64,
    pub max_rel: f64,
    /// Largest `|a − b| / (atol + rtol·|b|)`; above 1 means out of tolerance.
    pub worst_ratio: f64,
    /// Flat index, A value and B value of the element with the largest ratio.
    pub worst: Option<(usize, f64, f64)>,
    /// Elements out of tolerance.
    pub over: usize,
}

impl FieldDiff {
    pub fn passed(&self) -> bool {
        self.over == 0
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// `safetensors`, `ply` or `mesh`.
    pub kind: &'static str,
    pub tolerance: Tolerance,
    pub fields: Vec<FieldDiff>,
    /// Differences of structure: missing names, other shapes, counts or dtypes.
    pub structural: Vec<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.structural.is_empty() && self.fields.iter().all(FieldDiff::passed)
    }

    /// Fields sorted worst first.
    pub fn worst_fields(&self) -> Vec<&FieldDiff> {
        let mut v: Vec<&FieldDiff> = self.fields.iter().collect();
        v.sort_by(|a, b| b.worst_ratio.total_cmp(&a.worst_ratio));
        v
    }
}

/// Element-wise comparison of two equally long arrays.
pub fn diff_values(name: &str, a: &[f64], b: &[f64], tol: Tolerance) -> FieldDiff {
    let mut d = FieldDiff {
        name: name.to_string(),
        len: a.len(),
        max_abs: 0.0,
        max_rel: 0.0,
        worst_ratio: 0.0,
        worst: None,
        over: 0,
    };
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        let (abs, ratio) = if x.is_nan() && y.is_nan() || x == y {
            (0.0, 0.0)
        } else if x.is_nan() || y.is_nan() || x.is_infinite() || y.is_infinite() {
            (f64::INFINITY, f64::INFINITY)
        } else {
            let abs = (x - y).abs();
            let allowed = tol.atol + tol.rtol * y.abs();
            let ratio = if allowed > 0.0 {
                abs / allowed
            } else {
                f64::INFINITY
            };
            (abs, ratio)
        };
        if abs > d.max_abs {
            d.max_abs = abs;
        }
        if y != 0.0 && abs / y.abs() > d.max_rel {
            d.max_rel = abs / y.abs();
        }
        if ratio > 1.0 {
            d.over += 1;
        }
        if ratio > d.worst_ratio || d.worst.is_none() {
            d.worst_ratio = d.worst_ratio.max(ratio);
            d.worst = Some((i, x, y));
        }
    }
    d
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum FileKind {
    Safetensors,
    Ply,
    Glb,
}

fn detect(path: &Path) -> Result<FileKind> {
    use std::io::Read;
    let mut head = [0u8; 8];
    let (mut f, _) = crate::files::open_regular(path, u64::MAX)?;
    let n = f
        .read(&mut head)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    if n >= 4 && &head[..4] == b"glTF" {
        return Ok(FileKind::Glb);
    }
    if n >= 4 && &head[..4] == b"ply\n" || n >= 5 && &head[..5] == b"ply\r\n" {
        return Ok(FileKind::Ply);
    }
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    if ext.as_deref() == Some("safetensors") || n == 8 && u64::from_le_bytes(head) < (1 << 27) {
        return Ok(FileKind::Safetensors);
    }
    bail!(
        "{}: unknown file type (expected .safetensors, .ply or .glb)",
        path.display()
    )
}

/// Compares two files of the same kind; a mesh PLY may be compared with a GLB.
/// An error means a file could not be read (exit code 2 in the CLI).
pub fn compare_files(a: &Path, b: &Path, tol: Tolerance) -> Result<Report> {
    match (detect(a)?, detect(b)?) {
        (FileKind::Safetensors, FileKind::Safetensors) => compare_safetensors(a, b, tol),
        (FileKind::Ply, FileKind::Ply) => {
            let (pa, pb) = (read_ply(a)?, read_ply(b)?);
            Ok(compare_ply(&pa, &pb, tol))
        }
        (ka, kb) if ka != FileKind::Safetensors && kb != FileKind::Safetensors => {
            let ma = read_mesh(a, ka)?;
            let mb = read_mesh(b, kb)?;
            Ok(compare_meshes(&ma, &mb, tol))
        }
        (ka, kb) => bail!(
            "cannot compare {} ({ka:?}) with {} ({kb:?})",
            a.display(),
            b.display()
        ),
    }
}

fn read_mesh(path: &Path, kind: FileKind) -> Result<MeshData> {
    match kind {
        FileKind::Glb => Ok(read_glb(path)?.0),
        _ => mesh_from_ply(&read_ply(path)?)
            .with_context(|| format!("{}: not a mesh PLY", path.display())),
    }
}

/// A mesh PLY (`vertex` x/y/z [+ red/green/blue/alpha], `face` vertex_indices) as arrays;
/// colours are read as sRGB and returned linear (see [`MeshData::colors`]).
pub fn mesh_from_ply(ply: &PlyFile) -> Result<MeshData> {
    let v = ply.element("vertex").context("no `vertex` element")?;
    let col = |n: &str| {
        v.scalars(n)
            .with_context(|| format!("no vertex property `{n}`"))
    };
    let (x, y, z) = (col("x")?, col("y")?, col("z")?);
    let positions = (0..v.count)
        .map(|i| [x[i] as f32, y[i] as f32, z[i] as f32])
        .collect();
    let colors = match (v.scalars("red"), v.scalars("green"), v.scalars("blue")) {
        (Some(r), Some(g), Some(b)) => {
            let alpha = v.scalars("alpha");
            let scale = if v.property("red").is_some_and(|p| p.type_name == "uint8") {
                255.0
            } else {
                1.0
            };
            Some(
                (0..v.count)
                    .map(|i| {
                        // PLY colours are display (sRGB) values; MeshData holds linear ones,
                        // as glTF does, so a PLY and a GLB of one mesh compare equal.
                        let a = alpha.map_or(scale, |a| a[i]) / scale;
                        let rgb = [r[i], g[i], b[i]].map(|c| srgb_to_linear(c / scale));
                        [rgb[0], rgb[1], rgb[2], a].map(|c| c as f32)
                    })
                    .collect(),
            )
        }
        _ => None,
    };
    let f = ply.element("face").context("no `face` element")?;
    let faces = f
        .properties
        .iter()
        .find(|p| p.name == "vertex_indices" || p.name == "vertex_index")
        .context("no face property `vertex_indices`")?;
    let Column::List(lists) = &faces.column else {
        bail!("face `vertex_indices` is not a list");
    };
    let mut indices = Vec::with_capacity(lists.len() * 3);
    for (i, l) in lists.iter().enumerate() {
        if l.len() != 3 {
            bail!("face {i} has {} corners (triangles only)", l.len());
        }
        indices.extend(l.iter().map(|&v| v as u32));
    }
    Ok(MeshData {
        positions,
        indices,
        colors,
        ..Default::default()
    })
}

fn compare_meshes(a: &MeshData, b: &MeshData, tol: Tolerance) -> Report {
    let mut r = Report {
        kind: "mesh",
        tolerance: tol,
        fields: vec![],
        structural: vec![],
    };
    if a.positions.len() != b.positions.len() {
        r.structural.push(format!(
            "vertex count: {} vs {}",
            a.positions.len(),
            b.positions.len()
        ));
    }
    if a.indices.len() != b.indices.len() {
        r.structural.push(format!(
            "triangle count: {} vs {}",
            a.triangle_count(),
            b.triangle_count()
        ));
    }
    if !r.structural.is_empty() {
        return r;
    }
    let flat3 = |p: &[[f32; 3]]| p.iter().flatten().map(|&v| v as f64).collect::<Vec<_>>();
    r.fields.push(diff_values(
        "positions",
        &flat3(&a.positions),
        &flat3(&b.positions),
        tol,
    ));
    let idx = |m: &MeshData| m.indices.iter().map(|&i| i as f64).collect::<Vec<_>>();
    // Indices are integers: compared exactly, whatever the tolerance.
    let exact = Tolerance {
        atol: 0.0,
        rtol: 0.0,
    };
    r.fields
        .push(diff_values("indices", &idx(a), &idx(b), exact));
    match (&a.colors, &b.colors) {
        (Some(ca), Some(cb)) => {
            let flat4 = |c: &[[f32; 4]]| c.iter().flatten().map(|&v| v as f64).collect::<Vec<_>>();
            r.fields
                .push(diff_values("colors", &flat4(ca), &flat4(cb), tol));
        }
        (None, None) => {}
        _ => r
            .structural
            .push("vertex colours present in only one file".into()),
    }
    r
}

/// Element by element, property by property.
pub fn compare_ply(a: &PlyFile, b: &PlyFile, tol: Tolerance) -> Report {
    let mut r = Report {
        kind: "ply",
        tolerance: tol,
        fields: vec![],
        structural: vec![],
    };
    let names = |p: &PlyFile| {
        p.elements
            .iter()
            .map(|e| e.name.clone())
            .collect::<Vec<_>>()
    };
    if names(a) != names(b) {
        r.structural.push(format!(
            "elements: [{}] vs [{}]",
            names(a).join(", "),
            names(b).join(", ")
        ));
    }
    for ea in &a.elements {
        let Some(eb) = b.element(&ea.name) else {
            continue;
        };
        if ea.count != eb.count {
            r.structural.push(format!(
                "element `{}`: {} vs {} rows",
                ea.name, ea.count, eb.count
            ));
            continue;
        }
        for pa in &ea.properties {
            let field = format!("{}.{}", ea.name, pa.name);
            let Some(pb) = eb.property(&pa.name) else {
                r.structural
                    .push(format!("property `{field}` missing in B"));
                continue;
            };
            if pa.type_name != pb.type_name {
                r.structural.push(format!(
                    "property `{field}`: type {} vs {}",
                    pa.type_name, pb.type_name
                ));
                continue;
            }
            match (&pa.column, &pb.column) {
                (Column::Scalar(x), Column::Scalar(y)) => {
                    r.fields.push(diff_values(&field, x, y, tol))
                }
                (Column::List(x), Column::List(y)) => {
                    if let Some(row) = (0..x.len()).find(|&i| x[i].len() != y[i].len()) {
                        r.structural.push(format!(
                            "property `{field}`: list lengths differ at row {row}"
                        ));
                        continue;
                    }
                    let fx: Vec<f64> = x.iter().flatten().copied().collect();
                    let fy: Vec<f64> = y.iter().flatten().copied().collect();
                    r.fields.push(diff_values(&field, &fx, &fy, tol));
                }
                _ => unreachable!("same type name implies same column kind"),
            }
        }
        for pb in &eb.properties {
            if ea.property(&pb.name).is_none() {
                r.structural
                    .push(format!("property `{}.{}` missing in A", eb.name, pb.name));
            }
        }
    }
    r
}

/// Tensor by tensor; dtypes and shapes must match.
pub fn compare_safetensors(a: &Path, b: &Path, tol: Tolerance) -> Result<Report> {
    let (fa, fb) = (TensorFile::open(a)?, TensorFile::open(b)?);
    let (ta, tb) = (fa.parse()?, fb.parse()?);
    let mut r = Report {
        kind: "safetensors",
        tolerance: tol,
        fields: vec![],
        structural: vec![],
    };
    let mut names_a: Vec<String> = ta.names().into_iter().map(str::to_string).collect();
    names_a.sort();
    for name in &names_a {
        let va = ta.tensor(name)?;
        let Ok(vb) = tb.tensor(name) else {
            r.structural.push(format!("tensor `{name}` missing in B"));
            continue;
        };
        if va.shape() != vb.shape() {
            r.structural.push(format!(
                "tensor `{name}`: shape {:?} vs {:?}",
                va.shape(),
                vb.shape()
            ));
            continue;
        }
        if va.dtype() != vb.dtype() {
            r.structural.push(format!(
                "tensor `{name}`: dtype {:?} vs {:?}",
                va.dtype(),
                vb.dtype()
            ));
            continue;
        }
        let xa = tensor_values(&va).with_context(|| format!("{}: `{name}`", a.display()))?;
        let xb = tensor_values(&vb).with_context(|| format!("{}: `{name}`", b.display()))?;
        r.fields.push(diff_values(name, &xa, &xb, tol));
    }
    let mut names_b: Vec<&str> = tb.names();
    names_b.sort();
    for name in names_b {
        if ta.tensor(name).is_err() {
            r.structural.push(format!("tensor `{name}` missing in A"));
        }
    }
    Ok(r)
}

/// A safetensors file read into memory, with errors that name it.
pub struct TensorFile {
    pub path: std::path::PathBuf,
    bytes: Vec<u8>,
}

impl TensorFile {
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = crate::files::read_regular(path, u64::MAX)?;
        Ok(Self {
            path: path.to_path_buf(),
            bytes,
        })
    }

    pub fn parse(&self) -> Result<safetensors::SafeTensors<'_>> {
        safetensors::SafeTensors::deserialize(&self.bytes).map_err(|e| {
            anyhow::anyhow!("{}: not a valid safetensors file: {e}", self.path.display())
        })
    }

    /// The free-form `__metadata__` map of the header.
    pub fn metadata(&self) -> Result<std::collections::HashMap<String, String>> {
        let (_, meta) = safetensors::SafeTensors::read_metadata(&self.bytes).map_err(|e| {
            anyhow::anyhow!("{}: not a valid safetensors file: {e}", self.path.display())
        })?;
        Ok(meta.metadata().clone().unwrap_or_default())
    }
}

/// Every element of a tensor as f64, whatever its dtype.
pub fn tensor_values(view: &safetensors::tensor::TensorView<'_>) -> Result<Vec<f64>> {
    use safetensors::Dtype as D;
    let data = view.data();
    let v: Vec<f64> = match view.dtype() {
        D::F64 => chunks::<8>(data).map(f64::from_le_bytes).collect(),
        D::F32 => chunks::<4>(data)
            .map(|b| f32::from_le_bytes(b) as f64)
            .collect(),
        D::F16 => chunks::<2>(data)
            .map(|b| half::f16::from_le_bytes(b).to_f64())
            .collect(),
        D::BF16 => chunks::<2>(data)
            .map(|b| half::bf16::from_le_bytes(b).to_f64())
            .collect(),
        D::I64 => chunks::<8>(data)
            .map(|b| i64::from_le_bytes(b) as f64)
            .collect(),
        D::I32 => chunks::<4>(data)
            .map(|b| i32::from_le_bytes(b) as f64)
            .collect(),
        D::U32 => chunks::<4>(data)
            .map(|b| u32::from_le_bytes(b) as f64)
            .collect(),
        D::I16 => chunks::<2>(data)
            .map(|b| i16::from_le_bytes(b) as f64)
            .collect(),
        D::U16 => chunks::<2>(data)
            .map(|b| u16::from_le_bytes(b) as f64)
            .collect(),
        D::I8 => data.iter().map(|&b| b as i8 as f64).collect(),
        D::F8_E4M3 => data.iter().map(|&b| f8_e4m3(b)).collect(),
        // E5M2 is the upper byte of an IEEE half.
        D::F8_E5M2 => data
            .iter()
            .map(|&b| half::f16::from_bits((b as u16) << 8).to_f64())
            .collect(),
        D::U8 | D::BOOL => data.iter().map(|&b| b as f64).collect(),
        other => bail!("dtype {other:?} is not supported"),
    };
    Ok(v)
}

/// OCP float8 E4M3 ("fn": no infinities; S.1111.111 is NaN): bias 7, 3 mantissa bits.
fn f8_e4m3(b: u8) -> f64 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = ((b >> 3) & 0x0f) as i32;
    let mant = (b & 0x07) as f64;
    if exp == 0x0f && b & 0x07 == 0x07 {
        return f64::NAN;
    }
    sign * if exp == 0 {
        mant / 8.0 * 2f64.powi(-6)
    } else {
        (1.0 + mant / 8.0) * 2f64.powi(exp - 7)
    }
}

fn chunks<const N: usize>(data: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    data.chunks_exact(N).map(|c| {
        let mut a = [0u8; N];
        a.copy_from_slice(c);
        a
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_is_allclose() {
        let tol = Tolerance {
            atol: 0.1,
            rtol: 0.1,
        };
        // Allowed: 0.1 + 0.1·|b| → 0.215, 1.205 and 0.2; NaN matches NaN.
        let d = diff_values(
            "t",
            &[1.0, 10.0, 1.0, f64::NAN],
            &[1.15, 11.05, 1.25, f64::NAN],
            tol,
        );
        assert_eq!(d.over, 1, "{d:?}");
        assert_eq!(d.worst.map(|w| w.0), Some(2));
        let d2 = diff_values("t", &[0.0], &[f64::NAN], tol);
        assert_eq!(d2.over, 1);
    }

    #[test]
    fn float8_values_decode() {
        assert_eq!(f8_e4m3(0x38), 1.0);
        assert_eq!(f8_e4m3(0xb8), -1.0);
        assert_eq!(f8_e4m3(0x7e), 448.0);
        assert_eq!(f8_e4m3(0x01), 2f64.powi(-9));
        assert!(f8_e4m3(0x7f).is_nan());
    }
}
