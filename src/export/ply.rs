//! Reading any PLY file (splats, meshes, point clouds) into columns, for `inspect` and `compare`.
//! Parsing is serde-ply's; this module only turns rows into one column per property.

use std::fmt;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_ply::{PlyReader, PropertyType};

/// The values of one property for every row of an element.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    Scalar(Vec<f64>),
    List(Vec<Vec<f64>>),
}

impl Column {
    pub fn len(&self) -> usize {
        match self {
            Column::Scalar(v) => v.len(),
            Column::List(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (min, max) over every value, `None` when there are none.
    pub fn range(&self) -> Option<(f64, f64)> {
        let fold = |acc: Option<(f64, f64)>, v: f64| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        };
        match self {
            Column::Scalar(v) => v.iter().copied().fold(None, fold),
            Column::List(v) => v.iter().flatten().copied().fold(None, fold),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlyProperty {
    pub name: String,
    /// PLY type as written in the header, e.g. `float32` or `list uint8 int32`.
    pub type_name: String,
    pub column: Column,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlyElement {
    pub name: String,
    pub count: usize,
    pub properties: Vec<PlyProperty>,
}

impl PlyElement {
    pub fn property(&self, name: &str) -> Option<&PlyProperty> {
        self.properties.iter().find(|p| p.name == name)
    }

    /// Scalar values of a property, if it exists and is not a list.
    pub fn scalars(&self, name: &str) -> Option<&[f64]> {
        match &self.property(name)?.column {
            Column::Scalar(v) => Some(v),
            Column::List(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlyFile {
    pub format: String,
    pub comments: Vec<String>,
    pub elements: Vec<PlyElement>,
}

impl PlyFile {
    pub fn element(&self, name: &str) -> Option<&PlyElement> {
        self.elements.iter().find(|e| e.name == name)
    }

    /// Gaussian splats in the INRIA 3DGS layout (`f_dc_*`, `opacity`, `scale_*`, `rot_*`).
    pub fn is_gaussian_splat(&self) -> bool {
        self.element("vertex").is_some_and(|v| {
            ["x", "f_dc_0", "opacity", "scale_0", "rot_0"]
                .iter()
                .all(|p| v.property(p).is_some())
        })
    }

    /// A mesh: vertices with positions and a face element with index lists.
    pub fn is_mesh(&self) -> bool {
        self.element("vertex")
            .is_some_and(|v| v.property("x").is_some())
            && self.element("face").is_some_and(|f| f.count > 0)
    }

    /// Per-axis (min, max) of the vertex positions.
    pub fn vertex_bounds(&self) -> Option<[(f64, f64); 3]> {
        let v = self.element("vertex")?;
        let mut out = [(0.0, 0.0); 3];
        for (i, axis) in ["x", "y", "z"].iter().enumerate() {
            out[i] = v.property(axis)?.column.range()?;
        }
        Some(out)
    }
}

/// One property value of one row.
enum Value {
    Scalar(f64),
    List(Vec<f64>),
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a PLY scalar or list")
            }
            fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
                Ok(Value::Scalar(v as f64))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
                Ok(Value::Scalar(v as f64))
            }
            fn visit_f32<E>(self, v: f32) -> Result<Value, E> {
                Ok(Value::Scalar(v as f64))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
                Ok(Value::Scalar(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
                // A list's count comes from the file: never reserve more than a few entries up front.
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(3).min(64));
                while let Some(x) = seq.next_element::<f64>()? {
                    items.push(x);
                }
                Ok(Value::List(items))
            }
        }
        d.deserialize_any(V)
    }
}

/// One row: its values in header order (the property names come from the header).
struct Row(Vec<Value>);

impl<'de> Deserialize<'de> for Row {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Row;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a PLY row")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Row, A::Error> {
                let mut values = Vec::with_capacity(map.size_hint().unwrap_or(8).min(256));
                while map.next_key::<IgnoredAny>()?.is_some() {
                    values.push(map.next_value::<Value>()?);
                }
                Ok(Row(values))
            }
        }
        d.deserialize_map(V)
    }
}

/// Reads a whole PLY file (ASCII or binary) into columns.
pub fn read_ply(path: &Path) -> Result<PlyFile> {
    let (file, _) = crate::files::open_regular(path, u64::MAX)?;
    read_ply_from(&mut BufReader::new(file), path)
}

/// [`read_ply`] of any reader; `path` names it in errors. Bytes after the last element other
/// than whitespace are an error: a file with trailing data is not the file it claims to be.
pub fn read_ply_from(input: &mut impl BufRead, path: &Path) -> Result<PlyFile> {
    let ply = read_elements(&mut *input, path)?;
    let mut trailing = 0u64;
    let mut garbage = false;
    loop {
        let chunk = input
            .fill_buf()
            .with_context(|| format!("{}: cannot read", path.display()))?;
        if chunk.is_empty() {
            break;
        }
        let n = chunk.len();
        garbage |= chunk.iter().any(|b| !b.is_ascii_whitespace());
        trailing += n as u64;
        input.consume(n);
    }
    if garbage {
        bail!(
            "{}: {trailing} bytes of trailing data after the last element",
            path.display()
        );
    }
    Ok(ply)
}

fn read_elements(input: impl BufRead, path: &Path) -> Result<PlyFile> {
    let mut reader = PlyReader::from_reader(input)
        .map_err(|e| anyhow::anyhow!("{}: not a PLY file: {e}", path.display()))?;
    let header = reader.header().clone();
    let mut elements = Vec::with_capacity(header.elem_defs.len());
    for def in &header.elem_defs {
        let rows: Vec<Row> = reader.next_element().map_err(|e| {
            anyhow::anyhow!(
                "{}: truncated or malformed PLY data in element `{}`: {e}",
                path.display(),
                def.name
            )
        })?;
        if rows.len() != def.count {
            bail!(
                "{}: element `{}` declares {} rows but holds {}",
                path.display(),
                def.name,
                def.count,
                rows.len()
            );
        }
        let mut properties: Vec<PlyProperty> = def
            .properties
            .iter()
            .map(|p| {
                let (type_name, column) = match &p.property_type {
                    PropertyType::Scalar(t) => (
                        t.to_string(),
                        Column::Scalar(Vec::with_capacity(def.count.min(1 << 16))),
                    ),
                    PropertyType::List {
                        count_type,
                        data_type,
                    } => (
                        format!("list {count_type} {data_type}"),
                        Column::List(Vec::with_capacity(def.count.min(1 << 16))),
                    ),
                };
                PlyProperty {
                    name: p.name.clone(),
                    type_name,
                    column,
                }
            })
            .collect();
        for (r, Row(values)) in rows.into_iter().enumerate() {
            if values.len() != properties.len() {
                bail!(
                    "{}: element `{}` row {r} has {} values, header says {}",
                    path.display(),
                    def.name,
                    values.len(),
                    properties.len()
                );
            }
            for (prop, value) in properties.iter_mut().zip(values) {
                match (&mut prop.column, value) {
                    (Column::Scalar(col), Value::Scalar(v)) => col.push(v),
                    (Column::List(col), Value::List(v)) => col.push(v),
                    _ => bail!(
                        "{}: element `{}` property `{}` has the wrong kind of value",
                        path.display(),
                        def.name,
                        prop.name
                    ),
                }
            }
        }
        elements.push(PlyElement {
            name: def.name.clone(),
            count: def.count,
            properties,
        });
    }
    Ok(PlyFile {
        format: header.format.to_string(),
        comments: header.comments.clone(),
        elements,
    })
}
