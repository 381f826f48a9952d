//! A fake Hugging Face hub on 127.0.0.1 for the download tests: serves
//! `/<owner>/<name>/resolve/main/<path>` like huggingface.co does (HEAD metadata headers, range
//! requests, 401 on gated repositories without the right token), and can misbehave on purpose
//! (drop the connection mid-body, advertise a wrong hash). One thread per connection, one
//! request per connection (`Connection: close`).
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use sha2::Digest;

/// The commit every fake repository is at.
pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

#[derive(Clone)]
struct FakeFile {
    data: Vec<u8>,
    /// Served as `X-Linked-Etag` + `X-Linked-Size` (LFS) or plain `ETag` (git).
    lfs: bool,
    etag: String,
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
}

#[derive(Default)]
struct State {
    files: BTreeMap<String, FakeFile>,
    gated: BTreeSet<String>,
    /// URL paths whose next full-body GET is cut after this many bytes.
    cut_next: BTreeMap<String, usize>,
    log: Vec<Logged>,
}

pub struct FakeHub {
    pub endpoint: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
}

/// The token gated repositories accept.
pub const TOKEN: &str = "hf_fake_token";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl FakeHub {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        let state: Arc<Mutex<State>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &s);
                });
            }
        });
        Self {
            endpoint: format!("http://{addr}"),
            state,
            stop,
            addr,
        }
    }

    fn url_path(repo: &str, path: &str) -> String {
        format!("/{repo}/resolve/main/{path}")
    }

    /// Adds a file; `.safetensors` files are LFS (sha256 etag), others git (blob sha1).
    pub fn add(&self, repo: &str, path: &str, data: Vec<u8>) {
        let lfs = path.ends_with(".safetensors");
        let etag = if lfs {
            hex(&sha2::Sha256::digest(&data))
        } else {
            let mut h = sha1::Sha1::new();
            h.update(format!("blob {}\0", data.len()).as_bytes());
            h.update(&data);
            hex(&h.finalize())
        };
        self.state
            .lock()
            .unwrap()
            .files
            .insert(Self::url_path(repo, path), FakeFile { data, lfs, etag });
    }

    /// Requests to `repo` need `Authorization: Bearer TOKEN`.
    pub fn gate(&self, repo: &str) {
        self.state.lock().unwrap().gated.insert(repo.to_string());
    }

    /// Advertises a wrong hash for a file (its bytes stay the same).
    pub fn corrupt_etag(&self, repo: &str, path: &str) {
        let mut s = self.state.lock().unwrap();
        let f = s
            .files
            .get_mut(&Self::url_path(repo, path))
            .expect("file added");
        f.etag = "f".repeat(64);
    }

    /// The next GET of this file's body stops after `bytes` bytes and closes the connection.
    pub fn cut_next_transfer(&self, repo: &str, path: &str, bytes: usize) {
        self.state
            .lock()
            .unwrap()
            .cut_next
            .insert(Self::url_path(repo, path), bytes);
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    /// GET requests for one file, with their Range headers.
    pub fn gets(&self, repo: &str, path: &str) -> Vec<Option<String>> {
        let p = Self::url_path(repo, path);
        self.log()
            .into_iter()
            .filter(|l| l.method == "GET" && l.path == p)
            .map(|l| l.range)
            .collect()
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// `bytes=a-b` / `bytes=a-` → (start, inclusive end) clamped to `len`.
fn parse_range(range: &str, len: usize) -> Option<(usize, usize)> {
    let spec = range.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let start: usize = a.trim().parse().ok()?;
    let end = if b.trim().is_empty() {
        len.checked_sub(1)?
    } else {
        b.trim().parse::<usize>().ok()?.min(len.checked_sub(1)?)
    };
    (start <= end).then_some((start, end))
}

fn serve(conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut range = None;
    let mut authorization = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "range" => range = Some(v.trim().to_string()),
                "authorization" => authorization = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    let (file, gated, cut) = {
        let mut s = state.lock().unwrap();
        s.log.push(Logged {
            method: method.clone(),
            path: path.clone(),
            range: range.clone(),
            authorization: authorization.clone(),
        });
        let repo: String = path
            .trim_start_matches('/')
            .splitn(3, '/')
            .take(2)
            .collect::<Vec<_>>()
            .join("/");
        let gated =
            s.gated.contains(&repo) && authorization.as_deref() != Some(&format!("Bearer {TOKEN}"));
        let file = s.files.get(&path).cloned();
        // Only a real body transfer is cut, not the one-byte metadata probe.
        let is_body = method == "GET" && range.as_deref() != Some("bytes=0-0");
        let cut = if is_body && !gated {
            s.cut_next.remove(&path)
        } else {
            None
        };
        (file, gated, cut)
    };
    let mut out = conn;
    if gated {
        let body = b"Access to model is restricted. You must be authenticated.";
        write!(
            out,
            "HTTP/1.1 401 Unauthorized\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        return out.write_all(body);
    }
    let Some(file) = file else {
        let body = b"Entry not found";
        write!(
            out,
            "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        return out.write_all(body);
    };
    let len = file.data.len();
    let mut headers =
        format!("X-Repo-Commit: {COMMIT}\r\nConnection: close\r\nAccept-Ranges: bytes\r\n");
    if file.lfs {
        headers += &format!(
            "X-Linked-Etag: \"{}\"\r\nX-Linked-Size: {len}\r\nETag: \"lfs-pointer-etag\"\r\n",
            file.etag
        );
    } else {
        headers += &format!("ETag: \"{}\"\r\n", file.etag);
    }
    let (status, body) = match range.as_deref().and_then(|r| parse_range(r, len)) {
        Some((a, b)) => {
            headers += &format!("Content-Range: bytes {a}-{b}/{len}\r\n");
            ("206 Partial Content", &file.data[a..=b])
        }
        None => ("200 OK", &file.data[..]),
    };
    write!(
        out,
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    )?;
    if method == "HEAD" {
        return Ok(());
    }
    match cut {
        Some(n) => {
            out.write_all(&body[..n.min(body.len())])?;
            out.flush()?;
            // Drop the connection before the announced length.
            out.shutdown(std::net::Shutdown::Both)
        }
        None => out.write_all(body),
    }
}
