//! Checks downloaded bytes against the hub's etag: the sha256 of the content for LFS files
//! (`X-Linked-Etag`), the git blob sha1 for small files kept in git (`ETag`).

use std::io::Read;
use std::path::Path;

use sha1::Digest as _;

/// What an etag is a hash of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtagKind {
    /// 64 hex digits: sha256 of the file (LFS).
    Sha256,
    /// 40 hex digits: sha1 of `blob <len>\0<content>` (git).
    GitSha1,
    /// Anything else (a mirror's own etag): no check possible.
    Opaque,
}

impl EtagKind {
    pub fn of(etag: &str) -> Self {
        let hex = etag.bytes().all(|b| b.is_ascii_hexdigit());
        match etag.len() {
            64 if hex => EtagKind::Sha256,
            40 if hex => EtagKind::GitSha1,
            _ => EtagKind::Opaque,
        }
    }
}

/// Hashes `path` the way `etag` was computed. Returns `Ok(None)` when it matches (or cannot be
/// checked), `Ok(Some(actual))` when it does not.
pub fn verify_etag(path: &Path, etag: &str) -> std::io::Result<Option<String>> {
    let etag = etag.to_ascii_lowercase();
    let actual = match EtagKind::of(&etag) {
        EtagKind::Sha256 => hash_file(path, sha2::Sha256::new(), None)?,
        EtagKind::GitSha1 => {
            let len = std::fs::metadata(path)?.len();
            hash_file(path, sha1::Sha1::new(), Some(format!("blob {len}\0")))?
        }
        EtagKind::Opaque => return Ok(None),
    };
    Ok((actual != etag).then_some(actual))
}

fn hash_file<D: sha1::Digest>(
    path: &Path,
    mut digest: D,
    prefix: Option<String>,
) -> std::io::Result<String> {
    if let Some(p) = prefix {
        digest.update(p.as_bytes());
    }
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        digest.update(&buf[..n]);
    }
    Ok(digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_and_git_sha1_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello\n").unwrap();
        // `sha256sum` and `git hash-object` of "hello\n".
        let sha256 = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
        let git = "ce013625030ba8dba906f756967f9e9ca394464a";
        assert_eq!(verify_etag(&p, sha256).unwrap(), None);
        assert_eq!(verify_etag(&p, git).unwrap(), None);
        let wrong = "0".repeat(64);
        assert_eq!(verify_etag(&p, &wrong).unwrap().as_deref(), Some(sha256));
        assert_eq!(EtagKind::of("abc-123"), EtagKind::Opaque);
    }
}
