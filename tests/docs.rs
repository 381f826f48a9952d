//! The documentation stays in step with the code: the README stays a short front door, every
//! `docs/<name>.md §N` the code cites has its heading, every kernel file is listed in
//! `kernels/README.md`, links between the Markdown files resolve, and comments cite only
//! documents inside the repository.

use std::fs;
use std::path::{Path, PathBuf};

/// README.md must stay a front door; the details live in docs/.
const README_MAX_BYTES: usize = 15_000;

/// The two set-up commands the README's first code block must hold.
const SETUP_COMMANDS: [&str; 2] = [
    "cargo run --release -- generate examples/T.png",
    "tests/tools/install.sh && cargo test --release",
];

/// Where source comments may cite docs: everything but the golden fixtures.
const SOURCE_DIRS: [&str; 4] = ["src", "tests", "benches", "kernels"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every file under `dir`, recursively, skipping `tests/fixtures`, `target` and installed npm
/// packages (`node_modules`: third-party files).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(root()).unwrap_or(&path);
            if rel.starts_with("tests/fixtures")
                || rel.starts_with("target")
                || path.file_name().is_some_and(|n| n == "node_modules")
            {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Text files of the source directories (and `build.rs`), as (path relative to the root, text).
fn source_texts() -> Vec<(String, String)> {
    let mut files: Vec<PathBuf> = SOURCE_DIRS
        .iter()
        .flat_map(|d| files_under(&root().join(d)))
        .collect();
    files.push(root().join("build.rs"));
    files
        .into_iter()
        .filter_map(|p| {
            let text = fs::read_to_string(&p).ok()?; // binary files are not text
            let rel = p.strip_prefix(root()).unwrap().display().to_string();
            Some((rel, text))
        })
        .collect()
}

/// The Markdown files of the repository outside the fixtures.
fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    for dir in ["docs", "benches", "kernels", "tests", "src"] {
        files.extend(
            files_under(&root().join(dir))
                .into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "md")),
        );
    }
    files
}

/// Headings of a Markdown file (the text after the `#`s), skipping fenced code blocks.
fn headings(markdown: &str) -> Vec<String> {
    let mut in_code = false;
    let mut out = Vec::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if !in_code && line.starts_with('#') {
            out.push(line.trim_start_matches('#').trim().to_string());
        }
    }
    out
}

/// The section number a heading starts with (`"1.2.1 Background remover"` → `"1.2.1"`,
/// `"3. Flow transformers"` → `"3"`), if any.
fn heading_number(heading: &str) -> Option<&str> {
    let first = heading.split_whitespace().next()?;
    let number = first.trim_end_matches('.');
    let numeric = !number.is_empty()
        && number.starts_with(|c: char| c.is_ascii_digit())
        && number.chars().all(|c| c.is_ascii_digit() || c == '.');
    numeric.then_some(number)
}

/// GitHub's anchor for a heading: lower case, spaces to `-`, other punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// One citation of a docs file: the file name, the sections (`§N`) and the quoted section name
/// (`, "Layers"`) that follow it.
#[derive(Debug)]
struct Citation {
    file: String,
    sections: Vec<String>,
    named: Option<String>,
}

/// A section number at the start of `s` (`"5.3–5.5)"` → `"5.3"`), with the rest of `s`.
fn take_number(s: &str) -> Option<(String, &str)> {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let number = s[..end].trim_end_matches('.');
    (!number.is_empty()).then(|| (number.to_string(), &s[end..]))
}

/// Every `docs/<name>.md` in `line`, with the `§N` list right after it (`§8, §5.2`, `§1.4 and
/// §1.4.1`, `§5.3–5.5`) and a quoted section name (`docs/METAL.md, "Watchdog and dispatch"`).
fn citations(line: &str) -> Vec<Citation> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("docs/") {
        let after = &rest[at + "docs/".len()..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(after.len());
        if !after[name_len..].starts_with(".md") || name_len == 0 {
            rest = after;
            continue;
        }
        let file = format!("{}.md", &after[..name_len]);
        let mut tail = &after[name_len + ".md".len()..];
        let mut sections = Vec::new();
        let mut named = None;
        if let Some(quoted) = tail.strip_prefix(", \"") {
            named = quoted.find('"').map(|end| quoted[..end].to_string());
        }
        let mut separator = " §";
        while let Some(s) = tail.strip_prefix(separator) {
            let Some((number, next)) = take_number(s) else {
                break;
            };
            sections.push(number);
            tail = next;
            if let Some(s) = tail.strip_prefix('–') {
                if let Some((end, next)) = take_number(s) {
                    sections.push(end);
                    tail = next;
                }
            }
            separator = if tail.starts_with(", §") {
                ", §"
            } else if tail.starts_with(" and §") {
                " and §"
            } else {
                break;
            };
        }
        out.push(Citation {
            file,
            sections,
            named,
        });
        rest = tail;
    }
    out
}

#[test]
fn readme_is_a_short_front_door() {
    let path = root().join("README.md");
    let text = read(&path);
    assert!(
        text.len() <= README_MAX_BYTES,
        "README.md is {} bytes, more than {README_MAX_BYTES}: move details into docs/",
        text.len()
    );
    let first_block: String = text
        .split("```")
        .nth(1)
        .expect("README.md has no code block")
        .to_string();
    for command in SETUP_COMMANDS {
        assert!(
            first_block.contains(command),
            "README.md's first code block lacks `{command}`:\n{first_block}"
        );
    }
}

#[test]
fn cited_doc_sections_exist() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for (rel, text) in source_texts() {
        for (n, line) in text.lines().enumerate() {
            for citation in citations(line) {
                checked += 1;
                let where_ = format!("{rel}:{}", n + 1);
                let doc = root().join("docs").join(&citation.file);
                let Ok(markdown) = fs::read_to_string(&doc) else {
                    problems.push(format!("{where_}: docs/{} does not exist", citation.file));
                    continue;
                };
                let heads = headings(&markdown);
                for section in &citation.sections {
                    if !heads.iter().any(|h| heading_number(h) == Some(section)) {
                        problems.push(format!(
                            "{where_}: docs/{} has no heading numbered {section}",
                            citation.file
                        ));
                    }
                }
                if let Some(name) = &citation.named {
                    if !heads.iter().any(|h| h == name) {
                        problems.push(format!(
                            "{where_}: docs/{} has no heading \"{name}\"",
                            citation.file
                        ));
                    }
                }
            }
        }
    }
    assert!(checked > 0, "no docs/ citation found: is the scan broken?");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_kernel_file_is_listed() {
    let kernels = root().join("kernels");
    let readme = read(&kernels.join("README.md"));
    let missing: Vec<String> = files_under(&kernels)
        .iter()
        .map(|p| p.strip_prefix(&kernels).unwrap().display().to_string())
        .filter(|rel| rel != "README.md" && !readme.contains(rel.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "kernels/README.md does not name: {}",
        missing.join(", ")
    );
}

#[test]
fn markdown_links_resolve() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        let text = read(&file);
        let dir = file.parent().unwrap();
        let rel = file.strip_prefix(root()).unwrap().display().to_string();
        for piece in text.split("](").skip(1) {
            let Some(end) = piece.find(')') else {
                continue;
            };
            let target = &piece[..end];
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, fragment) = match target.split_once('#') {
                Some((p, f)) => (p, Some(f)),
                None => (target, None),
            };
            let linked = if path.is_empty() {
                file.clone()
            } else {
                dir.join(path)
            };
            checked += 1;
            if !linked.exists() {
                problems.push(format!("{rel}: link to missing {target}"));
                continue;
            }
            if let Some(fragment) = fragment {
                let anchors: Vec<String> =
                    headings(&read(&linked)).iter().map(|h| anchor(h)).collect();
                if !anchors.iter().any(|a| a == fragment) {
                    problems.push(format!("{rel}: no heading for anchor {target}"));
                }
            }
        }
    }
    assert!(checked > 0, "no relative link found: is the scan broken?");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The comment text of a line: after `//` (or `#` in shell scripts and TOML), or the whole
/// line inside a `/* … */` block.
fn comment_of(line: &str, hash_comments: bool) -> Option<&str> {
    if let Some(at) = line.find("//") {
        return Some(&line[at..]);
    }
    let trimmed = line.trim_start();
    if trimmed.starts_with("/*") || trimmed.starts_with('*') {
        return Some(trimmed);
    }
    if hash_comments {
        return line.find('#').map(|at| &line[at..]);
    }
    None
}

#[test]
fn comments_cite_only_the_repository() {
    // Built from pieces so that this file does not match itself.
    let forbidden = [
        concat!("DESIGN", ".md"),
        concat!("STYLE", ".md"),
        concat!("spec", "/"),
        concat!("../", "shared"),
        concat!("steering ", "repository"),
    ];
    let mut problems = Vec::new();
    for (rel, text) in source_texts() {
        let markdown = rel.ends_with(".md");
        let hash_comments = rel.ends_with(".sh") || rel.ends_with(".toml");
        for (n, line) in text.lines().enumerate() {
            let checked = if markdown {
                Some(line)
            } else {
                comment_of(line, hash_comments)
            };
            let Some(checked) = checked else {
                continue;
            };
            for word in forbidden {
                if checked.contains(word) {
                    problems.push(format!("{rel}:{}: mentions {word}: {}", n + 1, line.trim()));
                }
            }
        }
    }
    for file in markdown_files() {
        let rel = file.strip_prefix(root()).unwrap().display().to_string();
        if SOURCE_DIRS.iter().any(|d| rel.starts_with(d)) {
            continue; // already scanned above
        }
        for (n, line) in read(&file).lines().enumerate() {
            for word in forbidden {
                if line.contains(word) {
                    problems.push(format!("{rel}:{}: mentions {word}", n + 1));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn citation_parser() {
    let found = citations("x (docs/MODEL.md §8, §5.2): y docs/METAL.md, \"Watchdog and dispatch\"");
    assert_eq!(found.len(), 2);
    assert_eq!(found[0].file, "MODEL.md");
    assert_eq!(found[0].sections, ["8", "5.2"]);
    assert_eq!(found[1].file, "METAL.md");
    assert_eq!(found[1].named.as_deref(), Some("Watchdog and dispatch"));
    let range = citations("(docs/MODEL.md §5.3–5.5). docs/MODEL.md §1.2.1.");
    assert_eq!(range[0].sections, ["5.3", "5.5"]);
    assert_eq!(range[1].sections, ["1.2.1"]);
    let other = citations("(docs/MODEL.md §5.1, golden README §6.8)");
    assert_eq!(other[0].sections, ["5.1"]);
    assert_eq!(heading_number("1.2.1 Background remover"), Some("1.2.1"));
    assert_eq!(heading_number("3. Flow transformers"), Some("3"));
    assert_eq!(heading_number("Layers"), None);
    assert_eq!(anchor("Measured (one H100)"), "measured-one-h100");
    assert_eq!(
        anchor("Background removal: `--rembg`, `matte`"),
        "background-removal---rembg-matte"
    );
}
