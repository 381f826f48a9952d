//! The crate's layering, checked on the source text of `src/**/*.rs` (module paths, not types):
//!
//! (a) The top-level modules of `src/` (`ops`, `sparse`, `models`, `pipeline`, `mesh`, `export`,
//!     `image`, `weights`, `cli`, `selftest`, ...) form no import cycle. An edge `X → Y` is any
//!     path `crate::Y…` in a file of `X` (also inside `use crate::{Y::…, Z::…}` groups, and
//!     `trellis2::Y…` in the binary's files), or a `super::` path that climbs out of `X` into
//!     `Y`.
//! (b) A backend file `src/ops/<op>/cuda.rs` or `src/ops/<op>/metal.rs` is a leaf: the only crate
//!     paths it names are `crate::ops::{vocab, tuning, storage, sample_offsets}` and its own
//!     backend's utilities (`crate::ops::cuda` for `cuda.rs`, `crate::ops::metal` for
//!     `metal.rs`): never another op (its own `mod.rs` included), the other backend or a module
//!     outside `ops`; and it uses no `super::` path at all, so whatever it needs from its op
//!     arrives as arguments or lives in `ops::vocab`.
//! (c) Only `src/ops/<op>/mod.rs` names `ops::<op>::cuda` or `ops::<op>::metal` (as its children
//!     `cuda::…`, `metal::…`), and the backend utilities `src/ops/cuda/**` and `src/ops/metal/**`
//!     name no op (only `vocab`, `tuning`, `storage`, `sample_offsets` and their own backend).
//!
//! Comments, string literals and `#[cfg(test)]` modules are ignored: doc links create no
//! dependency, and unit tests may reach their parent with `use super::*` and borrow helpers
//! (`crate::test_util`) from anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What `ops` modules a backend file or a backend utility may name besides its own backend.
const BACKEND_MAY_USE: &[&str] = &["vocab", "tuning", "storage", "sample_offsets"];

/// One Rust source file: its module path in the crate (`["ops", "attention", "cuda"]`) and its
/// code with comments, strings and test modules blanked out.
struct Source {
    path: PathBuf,
    module: Vec<String>,
    /// Whether the file belongs to the binary (`src/main.rs`, `src/cli/**`), whose `crate` is
    /// the binary and whose library paths start with `trellis2::`.
    binary: bool,
    code: String,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file under `src/`: `ops/attention/mod.rs` → `ops::attention`,
/// `ops/conv3d.rs` → `ops::conv3d`, `lib.rs` and `main.rs` → the crate root.
fn module_of(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let file = parts.pop().expect("a file name");
    let stem = file.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_string());
    }
    parts
}

fn sources() -> Vec<Source> {
    let root = src_dir();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files
        .into_iter()
        .map(|path| {
            let relative = path.strip_prefix(&root).expect("under src/").to_path_buf();
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let module = module_of(&relative);
            let binary =
                relative == Path::new("main.rs") || module.first().is_some_and(|m| m == "cli");
            Source {
                path: relative,
                module,
                binary,
                code: without_test_modules(&strip_comments_and_strings(&text)),
            }
        })
        .collect()
}

/// `text` with comments, string literals and char literals replaced by spaces (line breaks
/// kept, so positions stay meaningful).
fn strip_comments_and_strings(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && !ident_char_before(&chars, i)
        {
            // A raw string r"…" or r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                match chars.get(j) {
                    None => break,
                    Some('"') if (0..hashes).all(|h| chars.get(j + 1 + h) == Some(&'#')) => {
                        j += 1 + hashes;
                        break;
                    }
                    _ => j += 1,
                }
            }
            for &ch in &chars[i..j.min(chars.len())] {
                out.push(blank(ch));
            }
            i = j;
        } else if c == '"' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != '"' {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            for &ch in &chars[i..(j + 1).min(chars.len())] {
                out.push(blank(ch));
            }
            i = j + 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}'), or a lifetime ('a), which stays.
            let end = if next == Some('\\') {
                (i + 2..chars.len()).find(|&j| chars[j] == '\'')
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(j) => {
                    out.extend(std::iter::repeat_n(' ', j + 1 - i));
                    i = j + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_char_before(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// `code` without the bodies of `#[cfg(test)] mod name { … }` modules.
fn without_test_modules(code: &str) -> String {
    let mut out = code.to_string();
    while let Some(at) = out.find("#[cfg(test)]") {
        let rest = &out[at..];
        let Some(brace) = rest.find('{') else { break };
        let head = &rest["#[cfg(test)]".len()..brace];
        if !head.trim_start().starts_with("mod ") && !head.contains("\nmod ") {
            // A test-only item that is not a module: blank the attribute only.
            out.replace_range(at..at + "#[cfg(test)]".len(), &" ".repeat(12));
            continue;
        }
        let open = at + brace;
        let mut depth = 0;
        let mut close = out.len();
        for (k, ch) in out[open..].char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        close = open + k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        let blanked: String = out[at..close]
            .chars()
            .map(|c| if c == '\n' { '\n' } else { ' ' })
            .collect();
        out.replace_range(at..close, &blanked);
    }
    out
}

/// A path named in a file: where it starts (`crate`, `super` ×n, `trellis2`) and its segments,
/// groups expanded (`crate::{a::b, c}` → `[a, b]`, `[c]`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Named {
    root: Root,
    segments: Vec<String>,
    line: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Root {
    Crate,
    Super(usize),
    Library,
}

/// Every path starting with `crate::`, `super::` or `trellis2::` in `code`.
fn named_paths(code: &str) -> Vec<Named> {
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < code.len() {
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let root = [
            ("crate::", Root::Crate),
            ("super::", Root::Super(1)),
            ("trellis2::", Root::Library),
        ]
        .into_iter()
        .find(|(p, _)| boundary && code[i..].starts_with(p));
        let Some((prefix, mut root)) = root else {
            i += 1;
            continue;
        };
        // `$crate::` is a macro's, not a path of this file.
        if i > 0 && bytes[i - 1] == b'$' {
            i += prefix.len();
            continue;
        }
        let line = code[..i].matches('\n').count() + 1;
        let mut j = i + prefix.len();
        if let Root::Super(n) = &mut root {
            while code[j..].starts_with("super::") {
                *n += 1;
                j += "super::".len();
            }
        }
        let mut found = Vec::new();
        let end = parse_tree(code, j, Vec::new(), &mut found);
        for segments in found {
            out.push(Named {
                root,
                segments,
                line,
            });
        }
        i = end.max(i + prefix.len());
    }
    out
}

/// Parses a use tree at `at` (`a::b::{c, d::e}` or an identifier path), pushing each leaf path
/// (prefixed by `prefix`) into `out`; returns the position after it.
fn parse_tree(
    code: &str,
    mut at: usize,
    mut prefix: Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    let skip_ws = |mut k: usize| {
        while code[k..].starts_with(char::is_whitespace) {
            k += code[k..].chars().next().map_or(1, char::len_utf8);
        }
        k
    };
    loop {
        at = skip_ws(at);
        if code[at..].starts_with('{') {
            at += 1;
            loop {
                at = skip_ws(at);
                if code[at..].starts_with('}') {
                    at += 1;
                    break;
                }
                if code[at..].starts_with(',') {
                    at += 1;
                    continue;
                }
                if at >= code.len() {
                    break;
                }
                let before = at;
                at = parse_tree(code, at, prefix.clone(), out);
                if at == before {
                    at += 1;
                }
            }
            return at;
        }
        let ident_len = code[at..]
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(code.len() - at);
        if ident_len == 0 {
            if !prefix.is_empty() {
                out.push(prefix);
            }
            return at;
        }
        prefix.push(code[at..at + ident_len].to_string());
        at += ident_len;
        let after = skip_ws(at);
        if code[after..].starts_with("::") {
            at = after + 2;
        } else {
            out.push(prefix);
            return at;
        }
    }
}

/// The absolute module path (from the crate root) a named path points into, from `module`.
/// In `foo/mod.rs` and `foo.rs` alike, `super` is the parent of module `foo`.
fn absolute(module: &[String], named: &Named) -> Vec<String> {
    match named.root {
        Root::Crate | Root::Library => named.segments.clone(),
        Root::Super(n) => {
            let keep = module.len().saturating_sub(n);
            let mut path = module[..keep].to_vec();
            path.extend(named.segments.iter().cloned());
            path
        }
    }
}

fn is_mod_file(path: &Path) -> bool {
    path.file_name().is_some_and(|f| f == "mod.rs")
}

/// The op folders under `src/ops/` that have a backend file.
fn backend_op(path: &Path) -> Option<(String, String)> {
    let parts: Vec<String> = path
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    match parts.as_slice() {
        [ops, op, file] if ops == "ops" && (file == "cuda.rs" || file == "metal.rs") => {
            Some((op.clone(), file.trim_end_matches(".rs").to_string()))
        }
        _ => None,
    }
}

#[test]
fn top_level_modules_have_no_import_cycle() {
    let sources = sources();
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for s in &sources {
        let Some(from) = s.module.first() else {
            continue;
        };
        for named in named_paths(&s.code) {
            let path = match (named.root, s.binary) {
                // The binary's own `crate` is not the library.
                (Root::Crate | Root::Super(_), true) => continue,
                (Root::Library, false) => continue,
                _ => absolute(&s.module, &named),
            };
            let Some(to) = path.first() else { continue };
            if to == from {
                continue;
            }
            edges
                .entry(from.clone())
                .or_default()
                .entry(to.clone())
                .or_insert_with(|| format!("src/{}:{}", s.path.display(), named.line));
        }
    }
    // Depth-first search for a back edge.
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeMap<String, String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in edges.get(node).into_iter().flat_map(|m| m.keys()) {
            if let Some(cycle) = visit(next, edges, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        if let Some(cycle) = visit(node, &edges, &mut Vec::new(), &mut done) {
            let steps: Vec<String> = cycle
                .windows(2)
                .map(|w| format!("  {} → {} ({})", w[0], w[1], edges[&w[0]][&w[1]]))
                .collect();
            panic!(
                "the top-level modules of src/ import each other in a cycle:\n{}\nbreak one of \
                 these imports (the lower layer must not name the higher one)",
                steps.join("\n")
            );
        }
    }
}

#[test]
fn backend_files_are_leaves() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for s in sources() {
        let Some((op, backend)) = backend_op(&s.path) else {
            continue;
        };
        checked += 1;
        for named in named_paths(&s.code) {
            let shown = format!(
                "{}::{}",
                match named.root {
                    Root::Crate => "crate".to_string(),
                    Root::Super(n) => vec!["super"; n].join("::"),
                    Root::Library => "trellis2".to_string(),
                },
                named.segments.join("::")
            );
            let allowed = match (named.root, named.segments.as_slice()) {
                (Root::Crate, [ops, module, ..]) if ops == "ops" => {
                    BACKEND_MAY_USE.contains(&module.as_str()) || *module == backend
                }
                _ => false,
            };
            if !allowed {
                problems.push(format!(
                    "src/{}:{}: `{shown}`: the {backend} launcher of `{op}` may name only \
                     crate::ops::{{{}}} and crate::ops::{backend} (no super::, no other op, no \
                     other backend, nothing outside ops); pass what it needs as arguments or \
                     move shared types to ops::vocab",
                    s.path.display(),
                    named.line,
                    BACKEND_MAY_USE.join(", ")
                ));
            }
        }
    }
    assert!(
        checked >= 10,
        "only {checked} backend files found under src/ops/<op>/"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn only_an_op_names_its_backends_and_backend_utilities_name_no_op() {
    let sources = sources();
    let ops: BTreeSet<String> = sources
        .iter()
        .filter_map(|s| match s.module.as_slice() {
            [ops, op, ..] if ops == "ops" && op != "cuda" && op != "metal" => Some(op.clone()),
            _ => None,
        })
        .collect();
    let mut problems = Vec::new();
    for s in &sources {
        let utility = match s.module.as_slice() {
            [ops, backend, ..] if ops == "ops" && (backend == "cuda" || backend == "metal") => {
                Some(backend.clone())
            }
            _ => None,
        };
        for named in named_paths(&s.code) {
            let path = match (named.root, s.binary) {
                (Root::Library, true) => named.segments.clone(),
                (Root::Library, false) | (_, true) => continue,
                _ => absolute(&s.module, &named),
            };
            if let [first, op, backend, ..] = path.as_slice() {
                let own_mod =
                    s.module.as_slice() == ["ops".to_string(), op.clone()] && is_mod_file(&s.path);
                let own_backend_file =
                    s.module.as_slice() == ["ops".to_string(), op.clone(), backend.clone()];
                if first == "ops"
                    && ops.contains(op)
                    && (backend == "cuda" || backend == "metal")
                    && !own_mod
                    && !own_backend_file
                {
                    problems.push(format!(
                        "src/{}:{}: names `ops::{op}::{backend}`: only src/ops/{op}/mod.rs calls its \
                         backends",
                        s.path.display(),
                        named.line
                    ));
                }
            }
            if let (Some(backend), [first, module, ..]) = (&utility, path.as_slice()) {
                let fine = BACKEND_MAY_USE.contains(&module.as_str()) || module == backend;
                if first == "ops" && !fine {
                    problems.push(format!(
                        "src/{}:{}: the {backend} utilities name `ops::{module}`: they may use only \
                         ops::{{{}}} and their own backend, never an op",
                        s.path.display(),
                        named.line,
                        BACKEND_MAY_USE.join(", ")
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_scanner_reads_paths_groups_and_skips_comments_strings_and_tests() {
    let code = strip_comments_and_strings(
        "use crate::{ops::{vocab::TAPS, cuda}, sparse::CoordSet};\n\
         // crate::models::x\n\
         let s = \"crate::pipeline\"; let c = '\"'; fn f<'a>(x: &'a u8) {}\n\
         super::super::image::load();\n\
         #[cfg(test)]\nmod tests {\n    use crate::export::x;\n}\n",
    );
    let code = without_test_modules(&code);
    let found: Vec<(Root, String)> = named_paths(&code)
        .into_iter()
        .map(|n| (n.root, n.segments.join("::")))
        .collect();
    assert_eq!(
        found,
        [
            (Root::Crate, "ops::vocab::TAPS".to_string()),
            (Root::Crate, "ops::cuda".to_string()),
            (Root::Crate, "sparse::CoordSet".to_string()),
            (Root::Super(2), "image::load".to_string()),
        ]
    );
    let module = module_of(Path::new("ops/attention/cuda.rs"));
    let named = &named_paths("super::vocab::X")[0];
    assert_eq!(absolute(&module, named), ["ops", "attention", "vocab", "X"]);
    assert_eq!(
        module_of(Path::new("ops/attention/mod.rs")),
        ["ops", "attention"]
    );
}
