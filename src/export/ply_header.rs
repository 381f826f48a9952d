//! serde-ply names property types by their sized aliases (`float32`, `uint8`, `int32`). Both
//! spellings are legal PLY, but many Gaussian-splat viewers and older mesh tools only know the
//! classic names that INRIA's 3DGS code (via `plyfile`) writes — `float`, `uchar`, `int` — so
//! the writers pass serde-ply's output through [`ClassicTypeNames`], which rewrites the header
//! lines and copies the body untouched.

use std::io::{self, Write};

/// serde-ply's names and the classic ones every PLY reader accepts.
const CLASSIC: [(&str, &str); 8] = [
    ("int8", "char"),
    ("uint8", "uchar"),
    ("int16", "short"),
    ("uint16", "ushort"),
    ("int32", "int"),
    ("uint32", "uint"),
    ("float32", "float"),
    ("float64", "double"),
];

const END_HEADER: &[u8] = b"end_header\n";

/// A writer that holds back the PLY header until `end_header`, rewrites its type names, then
/// passes everything after it through unchanged.
pub struct ClassicTypeNames<W: Write> {
    inner: W,
    header: Option<Vec<u8>>,
}

impl<W: Write> ClassicTypeNames<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            header: Some(Vec::new()),
        }
    }

    /// Fails if the header never ended (nothing of it has been written then).
    pub fn finish(mut self) -> io::Result<W> {
        if self.header.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "PLY header without end_header",
            ));
        }
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for ClassicTypeNames<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(header) = &mut self.header else {
            return self.inner.write(buf);
        };
        // Accept byte by byte until the header ends, then flush the rewritten header.
        for (i, &b) in buf.iter().enumerate() {
            header.push(b);
            if header.ends_with(END_HEADER) {
                let text = String::from_utf8_lossy(header).into_owned();
                self.inner.write_all(rewrite(&text).as_bytes())?;
                self.header = None;
                return Ok(i + 1);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Classic type names on every `property` line; other lines unchanged.
fn rewrite(header: &str) -> String {
    let mut out = String::with_capacity(header.len());
    for line in header.split_inclusive('\n') {
        if line.starts_with("property ") {
            let words: Vec<&str> = line.trim_end_matches('\n').split(' ').collect();
            let n = words.len();
            // The last word is the name; the ones between `property` (and `list`) are types.
            let renamed: Vec<&str> = words
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    if i == 0 || i + 1 == n {
                        return *w;
                    }
                    CLASSIC
                        .iter()
                        .find(|(sized, _)| sized == w)
                        .map_or(*w, |(_, classic)| *classic)
                })
                .collect();
            out.push_str(&renamed.join(" "));
            out.push('\n');
        } else {
            out.push_str(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_header_types_and_keeps_the_body() {
        let mut w = ClassicTypeNames::new(Vec::new());
        let header = "ply\nformat binary_little_endian 1.0\ncomment float32 stays\n\
                      element vertex 1\nproperty float32 x\nproperty uint8 red\n\
                      element face 1\nproperty list uint8 int32 vertex_indices\nend_header\n";
        let mut bytes = header.as_bytes().to_vec();
        bytes.extend([0x00, 0x00, 0x80, 0x3f, 7]);
        // Written in awkward pieces, as a buffered serializer might.
        for chunk in bytes.chunks(7) {
            w.write_all(chunk).expect("in-memory write");
        }
        let out = w.finish().expect("header ended");
        let want = "ply\nformat binary_little_endian 1.0\ncomment float32 stays\n\
                    element vertex 1\nproperty float x\nproperty uchar red\n\
                    element face 1\nproperty list uchar int vertex_indices\nend_header\n";
        assert_eq!(&out[..want.len()], want.as_bytes());
        assert_eq!(&out[want.len()..], &[0x00, 0x00, 0x80, 0x3f, 7]);
        assert!(ClassicTypeNames::new(Vec::new()).finish().is_err());
    }
}
