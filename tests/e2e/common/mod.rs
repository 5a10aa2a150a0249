//! Shared helpers of the end-to-end tests: start the built `angos` binary on an
//! ephemeral loopback port over a fresh data directory, a small std-only HTTP/1.1
//! client, a SHA-256 of our own (so digests are checked independently of the
//! server's code), a minimal JSON reader, and push helpers. Std only: no crate
//! beyond the standard library (and the crate under test) is used here (SPEC
//! section 2).

pub mod hostile;
pub mod maintenance;
pub mod rng;
pub mod s3;
pub mod upstreams;

use std::collections::hash_map::RandomState;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long the server may take to print its listening line.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Read timeout on every client socket, so a stuck server fails a test instead
/// of hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

// ---------------------------------------------------------------------------
// Randomness and temporary directories
// ---------------------------------------------------------------------------

/// A random seed from the standard library's per-process hasher keys.
pub fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

/// Deterministic pseudo-random bytes (xorshift64*), so large bodies are cheap to make
/// and not trivially compressible.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A unique directory under the system temporary directory, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "angos-test-{label}-{}-{}-{:016x}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            random_u64()
        ));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // ANGOS_TEST_KEEP=1 keeps the directories of failed tests for a post-mortem.
        if thread::panicking() && std::env::var_os("ANGOS_TEST_KEEP").is_some() {
            eprintln!("keeping {}", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------

/// What a test changes in the generated configuration file.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub sync_to_disk: bool,
    /// Extra `key = value` lines appended to `[server]`.
    pub server: Vec<String>,
    /// Extra `key = value` lines appended to `[global]`.
    pub global: Vec<String>,
    /// Extra `key = value` lines appended to `[blob_store.fs]`.
    pub storage: Vec<String>,
    /// Whole tables (`[auth]`, `[repository."x"]`, ...) appended at the end.
    pub tables: Vec<String>,
    /// The `angos` binary to run; the one cargo built when `None`. The registry
    /// bench sets it to compare another build (`BENCH_BASELINE`).
    pub binary: Option<PathBuf>,
    /// Further configuration files, given as `-c FILE` after the generated one
    /// (a document's example kept verbatim in a file of its own).
    pub config_files: Vec<PathBuf>,
    /// `[blob_store.s3]` lines: the content goes to that bucket instead of
    /// `[blob_store.fs]` (the data directory keeps the journal and lock).
    pub bucket: Vec<String>,
}

impl Options {
    pub fn server_line(mut self, line: &str) -> Options {
        self.server.push(line.to_string());
        self
    }

    pub fn storage_line(mut self, line: &str) -> Options {
        self.storage.push(line.to_string());
        self
    }

    pub fn global_line(mut self, line: &str) -> Options {
        self.global.push(line.to_string());
        self
    }

    pub fn table(mut self, text: &str) -> Options {
        self.tables.push(text.to_string());
        self
    }

    pub fn config_file(mut self, path: &Path) -> Options {
        self.config_files.push(path.to_path_buf());
        self
    }

    pub fn sync(mut self) -> Options {
        self.sync_to_disk = true;
        self
    }

    /// Content in `s3`'s bucket, under `prefix` (several servers given the
    /// same prefix are replicas of one registry).
    pub fn on_bucket(mut self, s3: &s3::S3Server, prefix: &str) -> Options {
        self.bucket = vec![
            format!("endpoint = \"{}\"", s3.endpoint),
            format!("bucket = \"{}\"", s3.bucket),
            format!("region = \"{}\"", s3.region),
            format!("access_key_id = \"{}\"", s3.access_key_id),
            format!("secret_key = \"{}\"", s3.secret_key),
            format!("key_prefix = \"{prefix}\""),
        ];
        self
    }

    /// Another `[blob_store.s3]` line (after `on_bucket`).
    pub fn bucket_line(mut self, line: &str) -> Options {
        self.bucket.push(line.to_string());
        self
    }
}

/// A running `angos server` child process; killed (SIGKILL) on drop.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    /// Owned only when the server made its own directory.
    _dir: Option<TempDir>,
    pub root: PathBuf,
}

impl Server {
    /// A server on defaults with its own fresh directory.
    pub fn start() -> Server {
        Server::start_with(&Options::default())
    }

    pub fn start_with(options: &Options) -> Server {
        let dir = TempDir::new("server");
        let mut server = Server::start_in(dir.path(), options);
        server._dir = Some(dir);
        server
    }

    /// Starts a server whose configuration and data live under `dir`, which the
    /// caller owns; used to restart on the same data after a crash.
    pub fn start_in(dir: &Path, options: &Options) -> Server {
        let root = dir.join("data");
        let config_path = dir.join("config.toml");
        let mut config = String::new();
        config.push_str("[server]\nbind_address = \"127.0.0.1\"\nport = 0\n");
        for line in &options.server {
            config.push_str(line);
            config.push('\n');
        }
        if options.bucket.is_empty() {
            let _ = writeln!(
                config,
                "\n[blob_store.fs]\nroot_dir = \"{}\"\nsync_to_disk = {}\n",
                root.display(),
                options.sync_to_disk
            );
        } else {
            let _ = writeln!(config, "\n[blob_store.s3]\nlocal_dir = \"{}\"", root.display());
            for line in &options.bucket {
                config.push_str(line);
                config.push('\n');
            }
        }
        for line in &options.storage {
            config.push_str(line);
            config.push('\n');
        }
        config.push_str("[global]\n");
        for line in &options.global {
            config.push_str(line);
            config.push('\n');
        }
        for table in &options.tables {
            config.push('\n');
            config.push_str(table);
            config.push('\n');
        }
        std::fs::write(&config_path, config).expect("write config");

        let binary = match &options.binary {
            Some(binary) => binary.as_path(),
            None => Path::new(env!("CARGO_BIN_EXE_angos")),
        };
        let mut command = Command::new(binary);
        command.arg("-c").arg(&config_path);
        for file in &options.config_files {
            command.arg("-c").arg(file);
        }
        let mut child = command
            .arg("server")
            .current_dir(dir)
            // The listening line is logged at info; ANGOS_TEST_RUST_LOG can ask for more.
            .env(
                "RUST_LOG",
                std::env::var("ANGOS_TEST_RUST_LOG").unwrap_or_else(|_| "info".to_string()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the angos binary");

        let logs = Arc::new(Mutex::new(Vec::new()));
        let (lines_tx, lines_rx) = mpsc::channel::<String>();
        let stderr = child.stderr.take().expect("stderr");
        let stdout = child.stdout.take().expect("stdout");
        drain(Box::new(stderr), Arc::clone(&logs), lines_tx.clone());
        drain(Box::new(stdout), Arc::clone(&logs), lines_tx);

        let deadline = Instant::now() + START_TIMEOUT;
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines_rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = parse_listening(&line) {
                        break addr;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "angos did not log 'listening on 127.0.0.1:<port>' within {:?}; output:\n{}",
                        START_TIMEOUT,
                        logs.lock().unwrap().join("\n")
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait();
                    // Give the drain threads a moment to store the last lines.
                    thread::sleep(Duration::from_millis(50));
                    panic!(
                        "angos exited before listening ({status:?}); output:\n{}",
                        logs.lock().unwrap().join("\n")
                    );
                }
            }
        };
        Server {
            child: Some(child),
            addr,
            logs,
            _dir: None,
            root,
        }
    }

    /// Every line the server printed so far (stderr and stdout).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// SIGKILL (what `Child::kill` sends on Unix) and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Panics with the server output when the process has exited.
    pub fn assert_alive(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!(
                "angos exited unexpectedly ({status}); output:\n{}",
                self.logs().join("\n")
            );
        }
    }

    /// A new client connection; a failure to connect panics with the server's output
    /// (it usually means the server died).
    pub fn connect(&self) -> Conn {
        Conn::try_open(self.addr).unwrap_or_else(|e| {
            panic!(
                "connect to {}: {e}; server output:\n{}",
                self.addr,
                self.logs().join("\n")
            )
        })
    }

    /// One request on a fresh connection; an I/O failure panics with the server's
    /// output (a connection closed without an answer usually means it crashed).
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        self.connect()
            .try_request(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}; server output:\n{}", self.logs().join("\n")))
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], b"")
    }

    pub fn head(&self, path: &str) -> Response {
        self.request("HEAD", path, &[], b"")
    }

    pub fn delete(&self, path: &str) -> Response {
        self.request("DELETE", path, &[], b"")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn drain(source: Box<dyn Read + Send>, logs: Arc<Mutex<Vec<String>>>, lines: mpsc::Sender<String>) {
    thread::spawn(move || {
        let mut reader = BufReader::new(source);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line).trim_end().to_string();
                    if std::env::var_os("ANGOS_TEST_ECHO").is_some() {
                        eprintln!("[angos] {text}");
                    }
                    logs.lock().unwrap().push(text.clone());
                    // The receiver goes away once the server listens; keep draining.
                    let _ = lines.send(text);
                }
            }
        }
    });
}

fn parse_listening(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let token: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    let token = token.trim_end_matches(['.', ':']);
    token.parse().ok()
}

// ---------------------------------------------------------------------------
// HTTP/1.1 client
// ---------------------------------------------------------------------------

/// A parsed HTTP response.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header of that name, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The header, or a panic naming it and showing the response.
    pub fn expect_header(&self, name: &str) -> &str {
        self.header(name)
            .unwrap_or_else(|| panic!("response lacks the {name} header: {}", self.describe()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Json {
        Json::parse(&self.text()).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.describe()))
    }

    /// The `code` of every entry of an OCI error body.
    pub fn error_codes(&self) -> Vec<String> {
        let json = self.json();
        let errors = json
            .get("errors")
            .and_then(Json::as_array)
            .unwrap_or_else(|| panic!("no 'errors' array in: {}", self.describe()));
        errors
            .iter()
            .map(|e| {
                e.get("code")
                    .and_then(Json::as_str)
                    .unwrap_or_else(|| panic!("error without a code: {}", self.describe()))
                    .to_string()
            })
            .collect()
    }

    /// A short dump for assertion messages.
    pub fn describe(&self) -> String {
        let mut out = format!("HTTP {} {}", self.status, self.reason);
        for (n, v) in &self.headers {
            let _ = write!(out, "\n  {n}: {v}");
        }
        let body = self.text();
        if body.len() > 600 {
            let _ = write!(out, "\n  body ({} bytes): {}...", self.body.len(), &body[..600]);
        } else if !body.is_empty() {
            let _ = write!(out, "\n  body: {body}");
        }
        out
    }

    /// Asserts the status, printing the whole response when it differs.
    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Response {
        assert_eq!(
            self.status,
            status,
            "expected status {status}, got: {}",
            self.describe()
        );
        self
    }

    /// Asserts an OCI error: the status and that `code` is among the error codes.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) -> &Response {
        self.assert_status(status);
        let codes = self.error_codes();
        assert!(
            codes.iter().any(|c| c == code),
            "expected error code {code}, got {codes:?}: {}",
            self.describe()
        );
        self
    }

    /// The URL of a `Link: <url>; rel="next"` header, when present.
    pub fn next_link(&self) -> Option<String> {
        for value in self.headers_named("link") {
            for part in value.split(',') {
                let part = part.trim();
                if !part.contains("rel=\"next\"") && !part.contains("rel=next") {
                    continue;
                }
                let start = part.find('<')? + 1;
                let end = part.find('>')?;
                return Some(url_path(&part[start..end]));
            }
        }
        None
    }
}

/// The path-and-query part of a URL that may be absolute (`http://host/path`) or
/// relative (`/path`); the spec allows either form for `Location` and `Link`.
pub fn url_path(url: &str) -> String {
    if let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    {
        match rest.find('/') {
            Some(i) => rest[i..].to_string(),
            None => "/".to_string(),
        }
    } else {
        url.to_string()
    }
}

/// `location` with `key=value` added to its query.
pub fn with_query(location: &str, key: &str, value: &str) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}{key}={}", percent_encode(value))
}

/// Percent-encodes everything but unreserved characters (RFC 3986 section 2.3)
/// and `:`, which digests carry and which is legal in a query.
pub fn percent_encode(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A persistent client connection.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        Conn::from_stream(stream)
    }

    /// Like `open`, but an error instead of a panic (the crash test expects them).
    pub fn try_open(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        Ok(Conn::from_stream(stream))
    }

    /// Like `request`, but I/O errors are returned instead of panicking.
    pub fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let bytes = Conn::request_bytes(method, path, headers, body);
        self.stream.write_all(&bytes)?;
        self.read_response(method)
    }

    /// A client over an already connected stream.
    pub fn from_stream(stream: TcpStream) -> Conn {
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        let _ = stream.set_nodelay(true);
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    pub fn set_read_timeout(&self, timeout: Duration) {
        self.stream.set_read_timeout(Some(timeout)).unwrap();
    }

    /// Sends a request and reads its response (interim 1xx responses skipped).
    pub fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        self.send_request(method, path, headers, body);
        self.read_response(method)
            .unwrap_or_else(|e| panic!("{method} {path}: reading the response failed: {e}"))
    }

    /// Serialises a request: adds `Host`, and `Content-Length` unless the caller
    /// gave `Content-Length` or `Transfer-Encoding` or the request has no body and a
    /// method that carries none.
    pub fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
        let mut head = format!("{method} {path} HTTP/1.1\r\n");
        let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
        if !has("host") {
            head.push_str("Host: 127.0.0.1\r\n");
        }
        for (n, v) in headers {
            let _ = write!(head, "{n}: {v}\r\n");
        }
        let framed = has("content-length") || has("transfer-encoding");
        let carries_body = !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH");
        if !framed && carries_body {
            let _ = write!(head, "Content-Length: {}\r\n", body.len());
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body);
        out
    }

    pub fn send_request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) {
        let bytes = Conn::request_bytes(method, path, headers, body);
        self.send(&bytes);
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("write to the server: {e}"));
    }

    pub fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads one final response to a request made with `method` (a HEAD response
    /// has no body whatever its headers say), skipping interim 1xx responses.
    pub fn read_response(&mut self, method: &str) -> std::io::Result<Response> {
        loop {
            let response = self.read_one(method)?;
            if !(100..200).contains(&response.status) {
                return Ok(response);
            }
        }
    }

    /// Reads exactly one response, interim ones included.
    pub fn read_one(&mut self, method: &str) -> std::io::Result<Response> {
        let mut response = self.read_head()?;
        let status = response.status;
        let no_body = method.eq_ignore_ascii_case("HEAD")
            || (100..200).contains(&status)
            || status == 204
            || status == 304;
        if no_body {
            return Ok(response);
        }
        let chunked = response
            .header("transfer-encoding")
            .map(|v| v.to_ascii_lowercase().contains("chunked"))
            .unwrap_or(false);
        if chunked {
            response.body = self.read_chunked()?;
        } else if let Some(length) = response.header("content-length") {
            let length: usize = length
                .parse()
                .map_err(|_| std::io::Error::new(ErrorKind::InvalidData, "bad Content-Length in response"))?;
            response.body = self.read_exact_body(length)?;
        } else {
            // Close-delimited body (RFC 9112 section 6.3, last rule).
            while self.fill()? > 0 {}
            response.body = std::mem::take(&mut self.buf);
        }
        Ok(response)
    }

    /// Reads one response head and leaves its body unread, the bytes already
    /// received in `buffered()`: for a caller that streams a large body itself.
    pub fn read_head(&mut self) -> std::io::Result<Response> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.fill()? == 0 {
                return Err(std::io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed before a complete response head ({} bytes buffered: {:?})",
                        self.buf.len(),
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end - 4]).into_owned();
        self.buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        if !version.starts_with("HTTP/1.") {
            return Err(std::io::Error::new(
                ErrorKind::InvalidData,
                format!("bad status line {status_line:?}"),
            ));
        }
        let status: u16 = parts.next().unwrap_or_default().parse().map_err(|_| {
            std::io::Error::new(ErrorKind::InvalidData, format!("bad status line {status_line:?}"))
        })?;
        let reason = parts.next().unwrap_or_default().to_string();
        let mut headers = Vec::new();
        for line in lines {
            let (name, value) = line.split_once(':').ok_or_else(|| {
                std::io::Error::new(ErrorKind::InvalidData, format!("bad header line {line:?}"))
            })?;
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        Ok(Response {
            status,
            reason,
            headers,
            body: Vec::new(),
        })
    }

    fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn read_exact_body(&mut self, length: usize) -> std::io::Result<Vec<u8>> {
        if self.buf.len() < length {
            self.buf.reserve(length - self.buf.len());
        }
        while self.buf.len() < length {
            if self.fill()? == 0 {
                return Err(std::io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed after {} of {length} body bytes",
                        self.buf.len()
                    ),
                ));
            }
        }
        Ok(self.buf.drain(..length).collect())
    }

    fn read_line(&mut self) -> std::io::Result<String> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if self.fill()? == 0 {
                return Err(std::io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "connection closed inside a chunked body",
                ));
            }
        }
    }

    fn read_chunked(&mut self) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line()?;
            let size_text = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16).map_err(|_| {
                std::io::Error::new(ErrorKind::InvalidData, format!("bad chunk size {line:?}"))
            })?;
            if size == 0 {
                // Trailer section, then the empty line.
                while !self.read_line()?.is_empty() {}
                return Ok(body);
            }
            body.extend(self.read_exact_body(size)?);
            let crlf = self.read_exact_body(2)?;
            if crlf != b"\r\n" {
                return Err(std::io::Error::new(
                    ErrorKind::InvalidData,
                    "chunk not followed by CRLF",
                ));
            }
        }
    }

    /// True when the server closes the connection (EOF or reset) within `within`,
    /// after any bytes it still sends (kept in the buffer for `read_one`).
    pub fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let result = self.fill();
            self.stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            match result {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return false;
                }
                Err(_) => return true,
            }
        }
    }

    /// Bytes received but not yet parsed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------
// SHA-256 (FIPS 180-4), independent of the server's implementation
// ---------------------------------------------------------------------------

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

fn sha256_block(state: &mut [u32; 8], block: &[u8]) {
    let mut w = [0u32; 64];
    for (i, word) in block.chunks_exact(4).enumerate() {
        w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
    }
    for i in 16..64 {
        let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
        let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
    }
    let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;
    for i in 0..64 {
        let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
        let ch = (e & f) ^ (!e & g);
        let t1 = h
            .wrapping_add(s1)
            .wrapping_add(ch)
            .wrapping_add(K[i])
            .wrapping_add(w[i]);
        let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
        let maj = (a & b) ^ (a & c) ^ (b & c);
        let t2 = s0.wrapping_add(maj);
        h = g;
        g = f;
        f = e;
        e = d.wrapping_add(t1);
        d = c;
        c = b;
        b = a;
        a = t1.wrapping_add(t2);
    }
    for (s, v) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
        *s = s.wrapping_add(v);
    }
}

/// The SHA-256 of `data` as 64 lowercase hex digits.
pub fn sha256_hex(data: &[u8]) -> String {
    let mut state: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
    ];
    let mut blocks = data.chunks_exact(64);
    for block in &mut blocks {
        sha256_block(&mut state, block);
    }
    let rest = blocks.remainder();
    let mut tail = Vec::with_capacity(128);
    tail.extend_from_slice(rest);
    tail.push(0x80);
    while tail.len() % 64 != 56 {
        tail.push(0);
    }
    tail.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in tail.chunks_exact(64) {
        sha256_block(&mut state, block);
    }
    let mut out = String::with_capacity(64);
    for word in state {
        let _ = write!(out, "{word:08x}");
    }
    out
}

/// `sha256:<hex>` of `data`.
pub fn digest(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

/// An `[auth.identity.NAME]` table with a cheap PBKDF2 hash of `password`
/// (10,000 iterations: quick in a debug build).
pub fn identity_table(name: &str, username: &str, password: &str) -> String {
    let hash = angos::auth::password::PasswordHash::generate(password.as_bytes(), b"test-salt-12345", 10_000);
    format!("[auth.identity.{name}]\nusername = \"{username}\"\npassword = \"{hash}\"\n")
}

/// `sha512:<hex>` of `data`, computed by coreutils' `sha512sum` so the
/// registry's own hashing is checked against an independent one.
pub fn sha512_digest(data: &[u8]) -> String {
    use std::io::Write as _;
    let mut child = std::process::Command::new("sha512sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run sha512sum (coreutils)");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let output = child.wait_with_output().expect("sha512sum output");
    let text = String::from_utf8(output.stdout).unwrap();
    format!("sha512:{}", text.split_whitespace().next().unwrap())
}

// ---------------------------------------------------------------------------
// JSON: a minimal reader for response bodies, and a string escaper for writing
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    pub fn parse(text: &str) -> Result<Json, String> {
        let mut parser = JsonParser {
            bytes: text.as_bytes(),
            pos: 0,
        };
        let value = parser.value(0)?;
        parser.ws();
        if parser.pos != parser.bytes.len() {
            return Err(format!("trailing data at byte {}", parser.pos));
        }
        Ok(value)
    }

    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Json::Bool(value) => Some(*value),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&Vec<Json>> {
        match self {
            Json::Array(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Number(n) if *n >= 0.0 && n.fract() == 0.0 => Some(*n as u64),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&Vec<(String, Json)>> {
        match self {
            Json::Object(fields) => Some(fields),
            _ => None,
        }
    }

    /// The strings of an array field (e.g. `tags`, `repositories`); panics when the
    /// field is not an array of strings.
    pub fn string_list(&self, key: &str) -> Vec<String> {
        let items = self
            .get(key)
            .and_then(Json::as_array)
            .unwrap_or_else(|| panic!("no array field {key:?} in {self:?}"));
        items
            .iter()
            .map(|v| {
                v.as_str()
                    .unwrap_or_else(|| panic!("non-string in {key:?}: {v:?}"))
                    .to_string()
            })
            .collect()
    }
}

struct JsonParser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl JsonParser<'_> {
    fn ws(&mut self) {
        while self.pos < self.bytes.len() && matches!(self.bytes[self.pos], b' ' | b'\t' | b'\n' | b'\r') {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn expect(&mut self, byte: u8) -> Result<(), String> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!("expected {:?} at byte {}", byte as char, self.pos))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, String> {
        if depth > 64 {
            return Err("nesting too deep".to_string());
        }
        self.ws();
        match self.peek() {
            Some(b'{') => {
                self.pos += 1;
                let mut fields = Vec::new();
                self.ws();
                if self.peek() == Some(b'}') {
                    self.pos += 1;
                    return Ok(Json::Object(fields));
                }
                loop {
                    self.ws();
                    let key = self.string()?;
                    self.ws();
                    self.expect(b':')?;
                    let value = self.value(depth + 1)?;
                    fields.push((key, value));
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b'}') => {
                            self.pos += 1;
                            return Ok(Json::Object(fields));
                        }
                        _ => return Err(format!("bad object at byte {}", self.pos)),
                    }
                }
            }
            Some(b'[') => {
                self.pos += 1;
                let mut items = Vec::new();
                self.ws();
                if self.peek() == Some(b']') {
                    self.pos += 1;
                    return Ok(Json::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b']') => {
                            self.pos += 1;
                            return Ok(Json::Array(items));
                        }
                        _ => return Err(format!("bad array at byte {}", self.pos)),
                    }
                }
            }
            Some(b'"') => Ok(Json::String(self.string()?)),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(b'-' | b'0'..=b'9') => {
                let start = self.pos;
                while let Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') = self.peek() {
                    self.pos += 1;
                }
                let text = std::str::from_utf8(&self.bytes[start..self.pos]).unwrap();
                text.parse()
                    .map(Json::Number)
                    .map_err(|_| format!("bad number {text:?}"))
            }
            _ => Err(format!("unexpected byte at {}", self.pos)),
        }
    }

    fn literal(&mut self, word: &str, value: Json) -> Result<Json, String> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(format!("bad literal at byte {}", self.pos))
        }
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let text = self.bytes.get(self.pos..self.pos + 4).ok_or("short \\u escape")?;
        self.pos += 4;
        u32::from_str_radix(std::str::from_utf8(text).map_err(|e| e.to_string())?, 16)
            .map_err(|e| e.to_string())
    }

    fn string(&mut self) -> Result<String, String> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            let byte = self.peek().ok_or("unterminated string")?;
            self.pos += 1;
            match byte {
                b'"' => return String::from_utf8(out).map_err(|e| e.to_string()),
                b'\\' => {
                    let esc = self.peek().ok_or("unterminated escape")?;
                    self.pos += 1;
                    let ch = match esc {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let mut code = self.hex4()?;
                            if (0xd800..0xdc00).contains(&code) {
                                self.expect(b'\\')?;
                                self.expect(b'u')?;
                                let low = self.hex4()?;
                                code = 0x10000 + ((code - 0xd800) << 10) + (low.wrapping_sub(0xdc00));
                            }
                            char::from_u32(code).ok_or("bad \\u escape")?
                        }
                        _ => return Err("bad escape".to_string()),
                    };
                    let mut tmp = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut tmp).as_bytes());
                }
                _ => out.push(byte),
            }
        }
    }
}

/// `value` as a JSON string literal, quotes included.
pub fn json_str(value: &str) -> String {
    let mut out = String::from("\"");
    for ch in value.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------
// Registry helpers
// ---------------------------------------------------------------------------

/// A descriptor (OCI image-spec) of `content` with `media_type`, as JSON text.
pub fn descriptor(media_type: &str, content: &[u8]) -> String {
    format!(
        "{{\"mediaType\":{},\"digest\":{},\"size\":{}}}",
        json_str(media_type),
        json_str(&digest(content)),
        content.len()
    )
}

/// A descriptor with an extra JSON fragment (e.g. `"platform":{...}`).
pub fn descriptor_with(media_type: &str, content: &[u8], extra: &str) -> String {
    format!(
        "{{\"mediaType\":{},\"digest\":{},\"size\":{},{extra}}}",
        json_str(media_type),
        json_str(&digest(content)),
        content.len()
    )
}

/// A JSON object of string annotations.
pub fn annotations_json(annotations: &[(&str, &str)]) -> String {
    let fields: Vec<String> = annotations
        .iter()
        .map(|(k, v)| format!("{}:{}", json_str(k), json_str(v)))
        .collect();
    format!("{{{}}}", fields.join(","))
}

/// Builder of an OCI image manifest's JSON text.
#[derive(Clone, Debug, Default)]
pub struct ManifestSpec {
    pub media_type: Option<String>,
    pub artifact_type: Option<String>,
    pub config: String,
    pub layers: Vec<String>,
    pub subject: Option<String>,
    pub annotations: Vec<(String, String)>,
}

impl ManifestSpec {
    pub fn oci(config: String, layers: Vec<String>) -> ManifestSpec {
        ManifestSpec {
            media_type: Some(OCI_MANIFEST.to_string()),
            config,
            layers,
            ..ManifestSpec::default()
        }
    }

    pub fn to_json(&self) -> String {
        let mut out = String::from("{\"schemaVersion\":2");
        if let Some(media_type) = &self.media_type {
            let _ = write!(out, ",\"mediaType\":{}", json_str(media_type));
        }
        if let Some(artifact_type) = &self.artifact_type {
            let _ = write!(out, ",\"artifactType\":{}", json_str(artifact_type));
        }
        let _ = write!(
            out,
            ",\"config\":{},\"layers\":[{}]",
            self.config,
            self.layers.join(",")
        );
        if let Some(subject) = &self.subject {
            let _ = write!(out, ",\"subject\":{subject}");
        }
        if !self.annotations.is_empty() {
            let pairs: Vec<(&str, &str)> = self
                .annotations
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let _ = write!(out, ",\"annotations\":{}", annotations_json(&pairs));
        }
        out.push('}');
        out
    }
}

/// An image index / manifest list over `manifests` (descriptor JSON texts).
pub fn index_json(
    media_type: &str,
    manifests: &[String],
    artifact_type: Option<&str>,
    subject: Option<&str>,
) -> String {
    let mut out = format!("{{\"schemaVersion\":2,\"mediaType\":{}", json_str(media_type));
    if let Some(artifact_type) = artifact_type {
        let _ = write!(out, ",\"artifactType\":{}", json_str(artifact_type));
    }
    let _ = write!(out, ",\"manifests\":[{}]", manifests.join(","));
    if let Some(subject) = subject {
        let _ = write!(out, ",\"subject\":{subject}");
    }
    out.push('}');
    out
}

/// Monolithic single-POST upload (`POST /v2/<name>/blobs/uploads/?digest=`); the
/// raw response.
pub fn post_blob(server: &Server, repo: &str, data: &[u8]) -> Response {
    let path = format!(
        "/v2/{repo}/blobs/uploads/?digest={}",
        percent_encode(&digest(data))
    );
    server.request(
        "POST",
        &path,
        &[("Content-Type", "application/octet-stream")],
        data,
    )
}

/// Pushes a blob, asserting 201 Created; returns its digest.
#[track_caller]
pub fn push_blob(server: &Server, repo: &str, data: &[u8]) -> String {
    let response = post_blob(server, repo, data);
    assert_eq!(
        response.status,
        201,
        "pushing a {}-byte blob to {repo} failed: {}",
        data.len(),
        response.describe()
    );
    digest(data)
}

/// `PUT /v2/<repo>/manifests/<reference>` with `Content-Type: media_type`.
pub fn put_manifest(server: &Server, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> Response {
    server.request(
        "PUT",
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Content-Type", media_type)],
        body,
    )
}

/// Pushes a manifest, asserting 201 Created; returns its digest.
#[track_caller]
pub fn push_manifest(server: &Server, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> String {
    let response = put_manifest(server, repo, reference, media_type, body);
    assert_eq!(
        response.status,
        201,
        "pushing manifest {repo}:{reference} failed: {}",
        response.describe()
    );
    digest(body)
}

/// A small pushed image: its manifest bytes and digest, and its blobs.
#[derive(Clone, Debug)]
pub struct Image {
    pub manifest: Vec<u8>,
    pub digest: String,
    pub config: Vec<u8>,
    pub layers: Vec<Vec<u8>>,
}

impl Image {
    /// The descriptor of this image's manifest, for an index or a `subject`.
    pub fn descriptor(&self) -> String {
        descriptor(OCI_MANIFEST, &self.manifest)
    }
}

/// Pushes a config and one layer (distinct per `seed`) and an OCI manifest over them
/// under `reference` (a tag or the manifest digest when `None`).
#[track_caller]
pub fn push_image(server: &Server, repo: &str, reference: Option<&str>, seed: &str) -> Image {
    let config = format!(
        "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"seed\":{}}}",
        json_str(seed)
    )
    .into_bytes();
    let layer = format!("layer bytes of {seed}").into_bytes();
    push_blob(server, repo, &config);
    push_blob(server, repo, &layer);
    let manifest = ManifestSpec::oci(
        descriptor(OCI_CONFIG, &config),
        vec![descriptor(OCI_LAYER, &layer)],
    )
    .to_json()
    .into_bytes();
    let manifest_digest = digest(&manifest);
    let reference = reference.unwrap_or(&manifest_digest).to_string();
    push_manifest(server, repo, &reference, OCI_MANIFEST, &manifest);
    Image {
        manifest,
        digest: manifest_digest,
        config,
        layers: vec![layer],
    }
}

/// Starts an upload session (`POST /v2/<repo>/blobs/uploads/`), asserting 202 and
/// returning the `Location` as a path.
#[track_caller]
pub fn start_upload(server: &Server, repo: &str) -> String {
    let response = server.request(
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        &[("Content-Length", "0")],
        b"",
    );
    response.assert_status(202);
    url_path(response.expect_header("location"))
}

/// Reads `/proc/self/limits` for the soft limit on open files, when available.
pub fn open_files_soft_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    if soft == "unlimited" {
        Some(u64::MAX)
    } else {
        soft.parse().ok()
    }
}
