//! Upstream registries and clients for the pull-through cache tests
//! (`tests/e2e/pull_through.rs`) and bench (`benches/pull_through.rs`): Debian's
//! `docker-registry` (distribution) with an htpasswd user, a second `angos` with
//! identities (the token handshake), a small std-thread registry that redirects blob
//! GETs to another port and counts what it serves (behind `socat` for HTTPS), a
//! `containerd` of the test's own for `ctr` with a `hosts.toml` mirror, the mirror's
//! configuration, and a client that streams a large body into coreutils' `sha256sum`
//! instead of memory. Std
//! only, like the rest of `common` (its header says why); the test CA is the webhook
//! tests' `TestCa` (`webhook_support::python`), whose certificate and key paths are
//! passed in here, so the benches, which include `common` alone, still compile.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::hostile::base64_encode;
use super::{
    Conn, IO_TIMEOUT, Image, ManifestSpec, OCI_CONFIG, OCI_LAYER, OCI_LAYER_GZIP, OCI_MANIFEST, Options,
    Response, Server, TempDir, descriptor, digest, json_str, percent_encode, url_path,
};

/// How long a started upstream may take to answer its first request.
pub const UPSTREAM_START_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Small tools
// ---------------------------------------------------------------------------

/// A port on 127.0.0.1 that was free a moment ago, for programs that cannot be told
/// to pick their own and report it (distribution). The caller retries on a clash.
pub fn free_loopback_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    listener.local_addr().unwrap().port()
}

/// `Basic <base64(user:password)>`.
pub fn basic_auth(username: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64_encode(format!("{username}:{password}").as_bytes())
    )
}

/// Whether `program` runs at all (`--version` or `--help` exits, whatever its status).
pub fn program_runs(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Panics with the Debian package to install when `program` cannot run: these tests
/// never skip for a missing tool (scripts/test.sh installs them all).
#[track_caller]
pub fn require_program(program: &str, arg: &str, package: &str) {
    assert!(
        program_runs(program, arg),
        "`{program}` is required by this test but cannot run; install the Debian package \
         `{package}` (apt-get install -y {package}); scripts/test.sh does"
    );
}

/// `sha256:<hex>` of `data` by coreutils' `sha256sum`: independent of the server's
/// hashing, and fast on large bodies where the tests' own SHA-256, built without
/// optimisation, is not.
pub fn sha256sum(data: &[u8]) -> String {
    let mut hasher = Sha256Sum::start();
    hasher.write(data);
    hasher.finish()
}

/// A running `sha256sum` fed through its stdin, for bodies streamed off a socket.
pub struct Sha256Sum {
    child: Child,
}

impl Sha256Sum {
    pub fn start() -> Sha256Sum {
        let child = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run sha256sum (coreutils)");
        Sha256Sum { child }
    }

    pub fn write(&mut self, bytes: &[u8]) {
        self.child
            .stdin
            .as_mut()
            .expect("sha256sum's stdin")
            .write_all(bytes)
            .expect("feed sha256sum");
    }

    /// `sha256:<hex>` of everything written.
    pub fn finish(mut self) -> String {
        drop(self.child.stdin.take());
        let output = self.child.wait_with_output().expect("sha256sum's output");
        let text = String::from_utf8_lossy(&output.stdout);
        format!(
            "sha256:{}",
            text.split_whitespace().next().expect("a sha256sum line")
        )
    }
}

/// `skopeo ARGS` with no credentials file of the user's (`REGISTRY_AUTH_FILE` points
/// at a file that does not exist), so only the flags given authenticate.
pub fn skopeo(args: &[&str], work: &Path) -> Output {
    Command::new("skopeo")
        .args(args)
        .env("REGISTRY_AUTH_FILE", work.join("no-auth.json"))
        .stdin(Stdio::null())
        .output()
        .expect("skopeo is installed (scripts/test.sh installs it)")
}

/// The stdout of a successful command, or a panic with its stderr.
#[track_caller]
pub fn expect_success(output: &Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

// ---------------------------------------------------------------------------
// Images
// ---------------------------------------------------------------------------

/// The OCI `architecture` of this machine, so `ctr` pulls (and unpacks) the image for
/// its default platform.
pub fn oci_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        other => other,
    }
}

/// A one-layer image a container runtime can unpack: the layer is a real gzipped tar
/// holding `hello.txt` (made by `tar` and `gzip -n`, so the bytes are the same for the
/// same `seed`), and the config's `rootfs.diff_ids` names the uncompressed tar, which
/// containerd checks when it unpacks. Blobs and manifest are not pushed anywhere.
pub fn runnable_image(seed: &str) -> Image {
    let work = TempDir::new("rootfs");
    let rootfs = work.path().join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    std::fs::write(rootfs.join("hello.txt"), format!("hello from {seed}\n")).unwrap();
    let tar = work.path().join("layer.tar");
    // Fixed owner and time: the same seed gives the same digest in every run.
    let status = Command::new("tar")
        .args(["--owner=0", "--group=0", "--numeric-owner", "--mtime=@0", "-cf"])
        .arg(&tar)
        .arg("-C")
        .arg(&rootfs)
        .arg("hello.txt")
        .status()
        .expect("run tar");
    assert!(status.success(), "tar failed");
    let tar_bytes = std::fs::read(&tar).unwrap();
    let gzip = Command::new("gzip")
        .args(["-n", "-c"])
        .arg(&tar)
        .output()
        .expect("run gzip");
    assert!(gzip.status.success(), "gzip failed");
    let layer = gzip.stdout;
    let config = format!(
        "{{\"architecture\":{},\"os\":\"linux\",\"config\":{{}},\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[{}]}}}}",
        json_str(oci_architecture()),
        json_str(&digest(&tar_bytes))
    )
    .into_bytes();
    image_of(config, vec![(OCI_LAYER_GZIP, layer)])
}

/// An image (config and one `OCI_LAYER` blob distinct per `seed`, of `layer_bytes`
/// pseudo-random bytes when non-zero), not pushed anywhere.
pub fn small_image(seed: &str, layer_bytes: usize) -> Image {
    let config = format!(
        "{{\"architecture\":{},\"os\":\"linux\",\"seed\":{}}}",
        json_str(oci_architecture()),
        json_str(seed)
    )
    .into_bytes();
    let layer = if layer_bytes == 0 {
        format!("layer bytes of {seed}").into_bytes()
    } else {
        let seed_number = seed.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        super::pseudo_random_bytes(seed_number, layer_bytes)
    };
    image_of(config, vec![(OCI_LAYER, layer)])
}

/// An OCI image manifest over `config` and `layers` (media type, bytes).
pub fn image_of(config: Vec<u8>, layers: Vec<(&str, Vec<u8>)>) -> Image {
    let descriptors = layers
        .iter()
        .map(|(media_type, bytes)| descriptor(media_type, bytes))
        .collect();
    let manifest = ManifestSpec::oci(descriptor(OCI_CONFIG, &config), descriptors)
        .to_json()
        .into_bytes();
    Image {
        digest: digest(&manifest),
        manifest,
        config,
        layers: layers.into_iter().map(|(_, bytes)| bytes).collect(),
    }
}

/// Writes `image` as an OCI image layout at `layout` with `tag` as its ref name:
/// a source or destination for `skopeo copy oci:LAYOUT:TAG`.
pub fn write_oci_layout(layout: &Path, tag: &str, image: &Image) {
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    for content in image.layers.iter().chain([&image.config, &image.manifest]) {
        let name = digest(content);
        std::fs::write(blobs.join(name.trim_start_matches("sha256:")), content).unwrap();
    }
    std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        layout.join("index.json"),
        format!(
            "{{\"schemaVersion\":2,\"manifests\":[{{\"mediaType\":{},\"digest\":{},\"size\":{},\
             \"annotations\":{{\"org.opencontainers.image.ref.name\":{}}}}}]}}",
            json_str(OCI_MANIFEST),
            json_str(&image.digest),
            image.manifest.len(),
            json_str(tag)
        ),
    )
    .unwrap();
}

// ---------------------------------------------------------------------------
// A registry client over plain HTTP, for any registry
// ---------------------------------------------------------------------------

/// A registry at `addr` over plain HTTP, every request carrying `authorization`
/// when set: pushes test images into the upstreams (ours on its plain listener,
/// distribution without TLS), whose push helpers in `common` speak to a `Server`.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub authorization: Option<String>,
}

impl Target {
    pub fn new(addr: SocketAddr, authorization: Option<String>) -> Target {
        Target { addr, authorization }
    }

    /// One request on a fresh connection; an I/O failure panics naming it.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(value) = &self.authorization {
            all.push(("Authorization", value));
        }
        Conn::try_open(self.addr)
            .and_then(|mut conn| conn.try_request(method, path, &all, body))
            .unwrap_or_else(|e| panic!("{method} http://{}{path}: {e}", self.addr))
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], b"")
    }

    /// Pushes a blob in two steps (`POST` a session, `PUT ?digest=` the bytes): the
    /// form every registry accepts (distribution ignores a digest on the `POST`).
    #[track_caller]
    pub fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let started = self.request(
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
            &[("Content-Length", "0")],
            b"",
        );
        assert_eq!(
            started.status,
            202,
            "starting an upload to {repo} at {}: {}",
            self.addr,
            started.describe()
        );
        let location = url_path(started.expect_header("location"));
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{sep}digest={}", percent_encode(&digest(data)));
        let done = self.request("PUT", &put, &[("Content-Type", "application/octet-stream")], data);
        assert_eq!(
            done.status,
            201,
            "finishing a {}-byte upload to {repo} at {}: {}",
            data.len(),
            self.addr,
            done.describe()
        );
        digest(data)
    }

    /// `PUT` a manifest, asserting 201; its digest.
    #[track_caller]
    pub fn push_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> String {
        let response = self.request(
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Content-Type", media_type)],
            body,
        );
        assert_eq!(
            response.status,
            201,
            "pushing manifest {repo}:{reference} to {}: {}",
            self.addr,
            response.describe()
        );
        digest(body)
    }

    /// Pushes `image`'s blobs and its manifest under `reference` (a tag, or its digest
    /// when `None`).
    #[track_caller]
    pub fn push(&self, repo: &str, reference: Option<&str>, image: &Image) {
        for blob in image.layers.iter().chain([&image.config]) {
            self.push_blob(repo, blob);
        }
        let reference = reference.unwrap_or(&image.digest).to_string();
        self.push_manifest(repo, &reference, OCI_MANIFEST, &image.manifest);
    }

    /// The `Docker-Content-Digest` a `HEAD` of the manifest answers (what a client
    /// resolves the tag to), asserting 200.
    #[track_caller]
    pub fn manifest_digest(&self, repo: &str, reference: &str) -> String {
        let response = self.request(
            "HEAD",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Accept", OCI_MANIFEST)],
            b"",
        );
        assert_eq!(
            response.status,
            200,
            "HEAD {repo}:{reference} at {}: {}",
            self.addr,
            response.describe()
        );
        response.expect_header("docker-content-digest").to_string()
    }
}

// ---------------------------------------------------------------------------
// A large download, streamed
// ---------------------------------------------------------------------------

/// What a streamed `GET` got.
#[derive(Clone, Debug)]
pub struct Download {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The announced length, when there was one.
    pub content_length: Option<u64>,
    /// Body bytes received.
    pub bytes: u64,
    /// `sha256:<hex>` of the body received, when asked for.
    pub digest: Option<String>,
    /// True when the body ended as its framing said (all of `Content-Length`, the
    /// last chunk); false when the connection closed or failed before.
    pub complete: bool,
    /// The I/O error that ended the body early, if any.
    pub error: Option<String>,
    /// A non-200 answer's body (small: error documents).
    pub error_body: Vec<u8>,
    pub elapsed: Duration,
}

impl Download {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// True for a 200 whose whole body arrived with `expected` as its digest.
    pub fn is_valid(&self, expected: &str) -> bool {
        self.status == 200 && self.complete && self.digest.as_deref() == Some(expected)
    }
}

/// The largest non-200 body kept by `download` (error documents are small).
const ERROR_BODY_MAX: usize = 64 * 1024;

/// `GET path` at `addr` on its own connection (`Connection: close`), the body streamed
/// into `sha256sum` when `hash` (or counted and dropped): twenty clients of a
/// 256 MiB blob hold no body in memory. Never panics on a short body: that is what
/// some tests look for.
pub fn download(addr: SocketAddr, path: &str, headers: &[(&str, &str)], hash: bool) -> Download {
    download_after(addr, path, headers, hash, || {})
}

/// `download`, with `before_reading` run once the request is sent and before a byte
/// of the answer is read: a client that stalls (the slow-client test).
pub fn download_after(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    hash: bool,
    before_reading: impl FnOnce(),
) -> Download {
    let started = Instant::now();
    let mut outcome = Download {
        status: 0,
        headers: Vec::new(),
        content_length: None,
        bytes: 0,
        digest: None,
        complete: false,
        error: None,
        error_body: Vec::new(),
        elapsed: Duration::ZERO,
    };
    let stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
        Ok(stream) => stream,
        Err(e) => {
            outcome.error = Some(format!("connect: {e}"));
            return outcome;
        }
    };
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    all.push(("Connection", "close"));
    let request = Conn::request_bytes("GET", path, &all, b"");
    if let Err(e) = (&stream).write_all(&request) {
        outcome.error = Some(format!("send: {e}"));
        return outcome;
    }
    before_reading();
    let mut reader = BufReader::with_capacity(256 * 1024, stream);
    match read_head(&mut reader) {
        Ok((status, headers)) => {
            outcome.status = status;
            outcome.headers = headers;
        }
        Err(e) => {
            outcome.error = Some(format!("head: {e}"));
            outcome.elapsed = started.elapsed();
            return outcome;
        }
    }
    outcome.content_length = outcome.header("content-length").and_then(|v| v.parse().ok());
    let chunked = outcome
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let mut hasher = (hash && outcome.status == 200).then(Sha256Sum::start);
    let mut keep = Vec::new();
    let mut sink = |bytes: &[u8]| {
        if let Some(hasher) = hasher.as_mut() {
            hasher.write(bytes);
        } else if outcome.status != 200 && keep.len() < ERROR_BODY_MAX {
            keep.extend_from_slice(&bytes[..bytes.len().min(ERROR_BODY_MAX - keep.len())]);
        }
    };
    let result = if chunked {
        copy_chunked(&mut reader, &mut sink)
    } else {
        copy_body(&mut reader, outcome.content_length, &mut sink)
    };
    match result {
        Ok((bytes, complete)) => {
            outcome.bytes = bytes;
            outcome.complete = complete;
        }
        Err((bytes, e)) => {
            outcome.bytes = bytes;
            outcome.error = Some(e.to_string());
        }
    }
    outcome.digest = hasher.map(Sha256Sum::finish);
    outcome.error_body = keep;
    outcome.elapsed = started.elapsed();
    outcome
}

fn read_head(reader: &mut impl BufRead) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::new(ErrorKind::InvalidData, format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "closed inside the head",
            ));
        }
        let text = line.trim_end();
        if text.is_empty() {
            return Ok((status, headers));
        }
        if let Some((name, value)) = text.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
}

type Copied = Result<(u64, bool), (u64, std::io::Error)>;

/// Copies a `Content-Length` body (or, without one, up to the close) to `sink`.
fn copy_body(reader: &mut impl Read, length: Option<u64>, sink: &mut impl FnMut(&[u8])) -> Copied {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        if length.is_some_and(|length| total >= length) {
            return Ok((total, true));
        }
        let want = match length {
            Some(length) => buf.len().min((length - total) as usize),
            None => buf.len(),
        };
        match reader.read(&mut buf[..want]) {
            Ok(0) => return Ok((total, length.is_none())),
            Ok(n) => {
                sink(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err((total, e)),
        }
    }
}

fn copy_chunked(reader: &mut impl BufRead, sink: &mut impl FnMut(&[u8])) -> Copied {
    let mut total = 0u64;
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return Ok((total, false)),
            Ok(_) => {}
            Err(e) => return Err((total, e)),
        }
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let Ok(size) = u64::from_str_radix(size_text, 16) else {
            return Err((
                total,
                std::io::Error::new(ErrorKind::InvalidData, "bad chunk size"),
            ));
        };
        if size == 0 {
            return Ok((total, true));
        }
        match copy_body(reader, Some(size), sink) {
            Ok((n, true)) => total += n,
            Ok((n, false)) => return Ok((total + n, false)),
            Err((n, e)) => return Err((total + n, e)),
        }
        line.clear();
        if reader.read_line(&mut line).is_err() {
            return Ok((total, false));
        }
    }
}

// ---------------------------------------------------------------------------
// Distribution (Debian's docker-registry)
// ---------------------------------------------------------------------------

/// Debian's `docker-registry` (distribution 2.8) on a loopback port of its own, with
/// one htpasswd user (bcrypt, by `htpasswd -B`), optionally over TLS; its data, its
/// configuration and its log in a temporary directory. Killed on drop.
pub struct Distribution {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub tls: bool,
    pub username: String,
    pub password: String,
    dir: TempDir,
}

impl Distribution {
    /// Plain HTTP.
    pub fn start(username: &str, password: &str) -> Distribution {
        Distribution::start_with(username, password, None)
    }

    /// Over TLS with `(certificate, key)` (a `TestCa`'s server pair) when given.
    pub fn start_with(username: &str, password: &str, tls: Option<(&Path, &Path)>) -> Distribution {
        require_program("docker-registry", "--version", "docker-registry");
        require_program("htpasswd", "-h", "apache2-utils");
        let dir = TempDir::new("distribution");
        let htpasswd = dir.path().join("htpasswd");
        let made = Command::new("htpasswd")
            .args(["-B", "-b", "-c"])
            .arg(&htpasswd)
            .args([username, password])
            .output()
            .expect("run htpasswd");
        expect_success(&made, "htpasswd -B");
        // The port is picked here (distribution logs the address it was given, not the
        // one it got): a clash with another test's ephemeral port is retried.
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let port = free_loopback_port();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let config = dir.path().join("config.yml");
            let mut yaml = format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n  secret: angos-test-secret\n",
                dir.path().join("data").display()
            );
            if let Some((certificate, key)) = tls {
                let _ = write!(
                    yaml,
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    certificate.display(),
                    key.display()
                );
            }
            let _ = write!(
                yaml,
                "auth:\n  htpasswd:\n    realm: angos-test\n    path: {}\n",
                htpasswd.display()
            );
            std::fs::write(&config, yaml).unwrap();
            let log_path = dir.path().join("registry.log");
            let log = std::fs::File::create(&log_path).unwrap();
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start docker-registry");
            match wait_ready(&mut child, addr, tls.is_some(), &log_path) {
                Ok(()) => {
                    return Distribution {
                        child: Some(child),
                        addr,
                        tls: tls.is_some(),
                        username: username.to_string(),
                        password: password.to_string(),
                        dir,
                    };
                }
                Err(log) => {
                    last_log = log;
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        panic!("docker-registry did not start; its last log:\n{last_log}");
    }

    /// `https://127.0.0.1:PORT` or `http://...`: the mirror's `url`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// `127.0.0.1:PORT`, for `docker://` references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// A client with the htpasswd user's Basic credentials (plain HTTP only).
    pub fn target(&self) -> Target {
        assert!(
            !self.tls,
            "Target speaks plain HTTP; push to a TLS distribution with push_with_skopeo"
        );
        Target::new(self.addr, Some(basic_auth(&self.username, &self.password)))
    }

    /// Pushes `image` as `repo:tag` with skopeo (over TLS too: `cert_dir` holds the
    /// CA as `ca.crt`), with the htpasswd user's credentials.
    #[track_caller]
    pub fn push_with_skopeo(&self, repo: &str, tag: &str, image: &Image, cert_dir: Option<&Path>) {
        let work = TempDir::new("distribution-push");
        let layout = work.path().join("layout");
        write_oci_layout(&layout, tag, image);
        let creds = format!("{}:{}", self.username, self.password);
        let source = format!("oci:{}:{tag}", layout.display());
        let destination = format!("docker://{}/{repo}:{tag}", self.host());
        let cert_dir_text = cert_dir.map(|d| d.display().to_string());
        // --preserve-digests: skopeo would otherwise gzip the uncompressed test layers
        // on the way, and the upstream would hold another manifest than `image`.
        let mut args = vec!["copy", "--preserve-digests", "--dest-creds", &creds];
        match &cert_dir_text {
            Some(dir) => args.extend(["--dest-cert-dir", dir.as_str()]),
            None => args.push("--dest-tls-verify=false"),
        }
        args.extend([source.as_str(), destination.as_str()]);
        let output = skopeo(&args, work.path());
        if !output.status.success() {
            eprintln!("docker-registry's log:\n{}", self.log());
        }
        expect_success(&output, &format!("skopeo copy into distribution {destination}"));
    }

    /// Its log (access log included).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Kills it (the mirror's upstream goes away) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Until distribution's `/v2/` answers (plain HTTP: 401, the htpasswd challenge) or,
/// over TLS, its port accepts connections; `Err(log)` when it exits first.
fn wait_ready(child: &mut Child, addr: SocketAddr, tls: bool, log_path: &Path) -> Result<(), String> {
    let log = || std::fs::read_to_string(log_path).unwrap_or_default();
    let deadline = Instant::now() + UPSTREAM_START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited ({status}):\n{}", log()));
        }
        if let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            if tls {
                return Ok(());
            }
            let mut conn = Conn::from_stream(stream);
            if let Ok(response) = conn.try_request("GET", "/v2/", &[], b"")
                && matches!(response.status, 200 | 401)
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!("no answer within {UPSTREAM_START_TIMEOUT:?}:\n{}", log()));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------
// Our own registry as the upstream
// ---------------------------------------------------------------------------

/// The upstream `angos`'s reader: may pull from the namespaces given to `start`.
pub const UPSTREAM_READER: (&str, &str) = ("cache-reader", "reader-secret");
/// The upstream `angos`'s writer: pushes the tests' images.
pub const UPSTREAM_WRITER: (&str, &str) = ("image-writer", "writer-secret");

/// A second `angos` as an upstream: identities (so anonymous clients get
/// `401` with `WWW-Authenticate: Bearer realm=...`, the token handshake), the reader
/// pulling and the writer pushing in each namespace given, optionally `[server.tls]`
/// with a test CA's pair. Pushes go to its plain listener (`writer()`); the mirror
/// reads it at `url()`, HTTPS when TLS is on.
pub struct AngosUpstream {
    pub server: Server,
    /// The HTTPS listener's address when TLS is on.
    pub https: Option<SocketAddr>,
}

impl AngosUpstream {
    pub fn start(namespaces: &[&str], tls: Option<(&Path, &Path)>) -> AngosUpstream {
        AngosUpstream::start_with(namespaces, tls, Options::default())
    }

    /// With `options` for anything else (the bench's `binary`, a webhook...).
    pub fn start_with(namespaces: &[&str], tls: Option<(&Path, &Path)>, options: Options) -> AngosUpstream {
        let mut options = options
            .table(&super::identity_table(
                "reader",
                UPSTREAM_READER.0,
                UPSTREAM_READER.1,
            ))
            .table(&super::identity_table(
                "writer",
                UPSTREAM_WRITER.0,
                UPSTREAM_WRITER.1,
            ))
            .table("[auth]\nrealm = \"angos upstream\"\n");
        for namespace in namespaces {
            options = options.table(&format!(
                "[repository.{}]\npull = [\"reader\", \"writer\"]\npush = [\"writer\"]\ndelete = [\"writer\"]\n",
                json_str(namespace)
            ));
        }
        if let Some((certificate, key)) = tls {
            options = options.server_line(&format!(
                "tls = {{ server_certificate_bundle = {}, server_private_key = {}, port = 0 }}",
                json_str(&certificate.display().to_string()),
                json_str(&key.display().to_string())
            ));
        }
        let server = Server::start_with(&options);
        let https = tls.map(|_| https_address(&server));
        AngosUpstream { server, https }
    }

    /// What the mirror's `url` names: the HTTPS listener when there is one.
    pub fn url(&self) -> String {
        match self.https {
            Some(addr) => format!("https://{addr}"),
            None => format!("http://{}", self.server.addr),
        }
    }

    /// The writer's client on the plain listener.
    pub fn writer(&self) -> Target {
        Target::new(
            self.server.addr,
            Some(basic_auth(UPSTREAM_WRITER.0, UPSTREAM_WRITER.1)),
        )
    }

    /// The reader's client on the plain listener.
    pub fn reader(&self) -> Target {
        Target::new(
            self.server.addr,
            Some(basic_auth(UPSTREAM_READER.0, UPSTREAM_READER.1)),
        )
    }

    /// The `[[repository."X".upstream]]` entry that reads it as the reader; the CA
    /// bundle for its certificate when over TLS.
    pub fn entry(&self, ca_pem: Option<&Path>) -> UpstreamEntry {
        let mut entry = UpstreamEntry::new(&self.url()).credentials(UPSTREAM_READER.0, UPSTREAM_READER.1);
        if let Some(ca) = ca_pem {
            entry = entry.ca_bundle(ca);
        }
        entry
    }

    /// SIGKILL: the upstream is gone.
    pub fn stop(&mut self) {
        self.server.kill();
    }
}

/// The address of a server's `listening for HTTPS on ADDR` line.
pub fn https_address(server: &Server) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = server.logs().iter().find_map(|line| {
            let rest = line.split("listening for HTTPS on ").nth(1)?;
            rest.trim().parse::<SocketAddr>().ok()
        });
        if let Some(addr) = found {
            return addr;
        }
        assert!(
            Instant::now() < deadline,
            "no 'listening for HTTPS on' line: {:?}",
            server.logs()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// The mirror's configuration
// ---------------------------------------------------------------------------

/// One `[[repository."X".upstream]]` entry (upstream Angos's keys).
#[derive(Clone, Debug)]
pub struct UpstreamEntry {
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub server_ca_bundle: Option<PathBuf>,
    /// Raw `key = value` lines (`max_redirect = 2`, timeouts, mTLS...).
    pub extra: Vec<String>,
}

impl UpstreamEntry {
    pub fn new(url: &str) -> UpstreamEntry {
        UpstreamEntry {
            url: url.to_string(),
            username: None,
            password: None,
            server_ca_bundle: None,
            extra: Vec::new(),
        }
    }

    pub fn credentials(mut self, username: &str, password: &str) -> UpstreamEntry {
        self.username = Some(username.to_string());
        self.password = Some(password.to_string());
        self
    }

    pub fn ca_bundle(mut self, path: &Path) -> UpstreamEntry {
        self.server_ca_bundle = Some(path.to_path_buf());
        self
    }

    pub fn line(mut self, line: &str) -> UpstreamEntry {
        self.extra.push(line.to_string());
        self
    }
}

/// A mirrored `[repository."NAME"]`: its upstreams in order, and the cache's keys.
#[derive(Clone, Debug)]
pub struct MirrorRepo {
    pub name: String,
    pub namespace: Option<String>,
    pub immutable_tags: Option<bool>,
    pub cache_freshness_secs: Option<u64>,
    pub upstreams: Vec<UpstreamEntry>,
    /// Raw `key = value` lines for the repository table (access lists...).
    pub extra: Vec<String>,
}

impl MirrorRepo {
    pub fn new(name: &str, upstreams: Vec<UpstreamEntry>) -> MirrorRepo {
        MirrorRepo {
            name: name.to_string(),
            namespace: None,
            immutable_tags: None,
            cache_freshness_secs: None,
            upstreams,
            extra: Vec::new(),
        }
    }

    pub fn namespace(mut self, namespace: &str) -> MirrorRepo {
        self.namespace = Some(namespace.to_string());
        self
    }

    pub fn immutable_tags(mut self, on: bool) -> MirrorRepo {
        self.immutable_tags = Some(on);
        self
    }

    pub fn freshness_secs(mut self, secs: u64) -> MirrorRepo {
        self.cache_freshness_secs = Some(secs);
        self
    }

    pub fn line(mut self, line: &str) -> MirrorRepo {
        self.extra.push(line.to_string());
        self
    }

    /// The TOML tables.
    pub fn toml(&self) -> String {
        let name = json_str(&self.name);
        let mut out = format!("[repository.{name}]\n");
        if let Some(namespace) = &self.namespace {
            let _ = writeln!(out, "namespace = {}", json_str(namespace));
        }
        if let Some(on) = self.immutable_tags {
            let _ = writeln!(out, "immutable_tags = {on}");
        }
        if let Some(secs) = self.cache_freshness_secs {
            let _ = writeln!(out, "cache_freshness_secs = {secs}");
        }
        for line in &self.extra {
            let _ = writeln!(out, "{line}");
        }
        for upstream in &self.upstreams {
            let _ = writeln!(out, "\n[[repository.{name}.upstream]]");
            let _ = writeln!(out, "url = {}", json_str(&upstream.url));
            if let Some(username) = &upstream.username {
                let _ = writeln!(out, "username = {}", json_str(username));
            }
            if let Some(password) = &upstream.password {
                let _ = writeln!(out, "password = {}", json_str(password));
            }
            if let Some(ca) = &upstream.server_ca_bundle {
                let _ = writeln!(out, "server_ca_bundle = {}", json_str(&ca.display().to_string()));
            }
            for line in &upstream.extra {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }

    /// `options` with this repository's tables appended.
    pub fn add_to(&self, options: Options) -> Options {
        options.table(&self.toml())
    }
}

// ---------------------------------------------------------------------------
// The redirecting upstream: a small registry in memory
// ---------------------------------------------------------------------------

/// Which of the redirecting upstream's two listeners a request reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The registry API (`/v2/...`), where blob GETs are redirected.
    Front,
    /// The "object store" the redirects point at, on another port.
    Back,
}

/// One request the redirecting upstream read.
#[derive(Clone, Debug)]
pub struct Seen {
    pub side: Side,
    pub method: String,
    /// The request target as sent, query included (containerd's `?ns=`).
    pub target: String,
    /// The `Authorization` header, when the request carried one.
    pub authorization: Option<String>,
    /// The answer's status; 0 while it is being answered.
    pub status: u16,
}

/// How a blob is served wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobFault {
    /// The right length, one byte changed in the middle: the digest does not match.
    WrongBytes,
    /// The right `Content-Length`, then the connection closes after `n` bytes.
    CloseAfter(u64),
}

/// A stored manifest: its media type and bytes.
type StoredManifest = (String, Arc<Vec<u8>>);

#[derive(Default)]
struct Store {
    /// `(repository, tag or digest)` to the manifest.
    manifests: BTreeMap<(String, String), StoredManifest>,
    blobs: BTreeMap<String, Arc<Vec<u8>>>,
    faults: BTreeMap<String, BlobFault>,
}

struct Behaviour {
    /// The `Authorization` value the front requires, when it requires one.
    basic: Option<String>,
    /// The status of a blob GET's redirect (307 unless set).
    redirect_status: u16,
    /// Further redirects on the back before the bytes (a chain of that many hops).
    extra_hops: usize,
    /// Serving rate of blob bytes; 0 for as fast as the socket takes them.
    rate_bytes_per_sec: u64,
    /// Every blob GET on the front is answered from the front itself (no redirect).
    no_redirect: bool,
}

struct Shared {
    store: Mutex<Store>,
    behaviour: Mutex<Behaviour>,
    seen: Mutex<Vec<Seen>>,
    stop: AtomicBool,
    /// Blob body bytes written by the back (and the front when not redirecting).
    served_bytes: AtomicU64,
    front: SocketAddr,
    back: SocketAddr,
}

/// A registry in memory on two loopback ports, one thread per connection (keep-alive):
/// the front answers `GET /v2/`, `GET`/`HEAD` of manifests by tag or digest, `HEAD` of
/// blobs, and redirects blob `GET`s to the back (another port: another origin for
/// credentials), which serves the bytes. It records every request and whether it
/// carried `Authorization`; it can require Basic credentials on the front, serve a
/// blob wrong (`BlobFault`), slow its blob bytes to a rate, chain redirects, and stop
/// (both ports refuse connections, open ones are closed). Stopped on drop.
pub struct RedirectingUpstream {
    shared: Arc<Shared>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl RedirectingUpstream {
    /// Anonymous.
    pub fn start() -> RedirectingUpstream {
        RedirectingUpstream::start_with(None)
    }

    /// Requiring `Authorization: Basic` of `(username, password)` on the front when given.
    pub fn start_with(credentials: Option<(&str, &str)>) -> RedirectingUpstream {
        let front = TcpListener::bind("127.0.0.1:0").expect("bind the front");
        let back = TcpListener::bind("127.0.0.1:0").expect("bind the back");
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            behaviour: Mutex::new(Behaviour {
                basic: credentials.map(|(u, p)| basic_auth(u, p)),
                redirect_status: 307,
                extra_hops: 0,
                rate_bytes_per_sec: 0,
                no_redirect: false,
            }),
            seen: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            served_bytes: AtomicU64::new(0),
            front: front.local_addr().unwrap(),
            back: back.local_addr().unwrap(),
        });
        let threads = vec![
            accept_loop(front, Side::Front, Arc::clone(&shared)),
            accept_loop(back, Side::Back, Arc::clone(&shared)),
        ];
        RedirectingUpstream { shared, threads }
    }

    /// `http://127.0.0.1:FRONT`: the mirror's `url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.front)
    }

    pub fn front(&self) -> SocketAddr {
        self.shared.front
    }

    pub fn back(&self) -> SocketAddr {
        self.shared.back
    }

    /// Stores a blob; its digest.
    pub fn put_blob(&self, bytes: Vec<u8>) -> String {
        let name = sha256sum(&bytes);
        self.shared
            .store
            .lock()
            .unwrap()
            .blobs
            .insert(name.clone(), Arc::new(bytes));
        name
    }

    /// Stores a manifest under `tag` (when given) and under its digest; its digest.
    pub fn put_manifest(&self, repo: &str, tag: Option<&str>, media_type: &str, bytes: Vec<u8>) -> String {
        let name = digest(&bytes);
        let bytes = Arc::new(bytes);
        let mut store = self.shared.store.lock().unwrap();
        for reference in tag.into_iter().chain([name.as_str()]) {
            store.manifests.insert(
                (repo.to_string(), reference.to_string()),
                (media_type.to_string(), Arc::clone(&bytes)),
            );
        }
        name
    }

    /// Stores `image`'s blobs and manifest (an OCI manifest) as `repo:tag`.
    pub fn put_image(&self, repo: &str, tag: Option<&str>, image: &Image) {
        for blob in image.layers.iter().chain([&image.config]) {
            self.put_blob(blob.clone());
        }
        self.put_manifest(repo, tag, OCI_MANIFEST, image.manifest.clone());
    }

    /// Serves the blob `digest` wrong from now on (`None`: right again).
    pub fn set_fault(&self, digest: &str, fault: Option<BlobFault>) {
        let mut store = self.shared.store.lock().unwrap();
        match fault {
            Some(fault) => store.faults.insert(digest.to_string(), fault),
            None => store.faults.remove(digest),
        };
    }

    /// Blob bytes served at `bytes_per_sec` (0: unlimited), so a fill lasts long
    /// enough for concurrent clients to meet it.
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.shared.behaviour.lock().unwrap().rate_bytes_per_sec = bytes_per_sec;
    }

    /// The status of the front's blob redirect (301, 302, 303, 307, 308).
    pub fn set_redirect_status(&self, status: u16) {
        self.shared.behaviour.lock().unwrap().redirect_status = status;
    }

    /// `hops` more redirects on the back before the bytes: `max_redirect` tests.
    pub fn set_extra_hops(&self, hops: usize) {
        self.shared.behaviour.lock().unwrap().extra_hops = hops;
    }

    /// Blob GETs served by the front itself, without a redirect.
    pub fn set_no_redirect(&self, on: bool) {
        self.shared.behaviour.lock().unwrap().no_redirect = on;
    }

    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// How many `method` requests on `side` had a path (query excluded) ending with `suffix`.
    pub fn count(&self, side: Side, method: &str, suffix: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.side == side && s.method == method && path_only(&s.target).ends_with(suffix))
            .count()
    }

    /// Upstream fetches of blob `digest`'s bytes: GETs of it that reached the back's
    /// `/data/` (the end of the redirect chain), or that the front answered with the
    /// bytes (not redirecting). Counted from arrival: a fetch in flight counts.
    pub fn blob_fetches(&self, digest: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| {
                let path = path_only(&s.target);
                s.method == "GET"
                    && path.ends_with(digest)
                    && match s.side {
                        Side::Back => path.starts_with("/data/"),
                        // 0: in flight, which a redirect never is for long.
                        Side::Front => path.contains("/blobs/") && matches!(s.status, 0 | 200),
                    }
            })
            .count()
    }

    /// Blob body bytes written so far.
    pub fn served_bytes(&self) -> u64 {
        self.shared.served_bytes.load(Ordering::SeqCst)
    }

    /// Both ports stop listening and open connections are closed: the upstream is down.
    pub fn stop(&mut self) {
        if self.shared.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wake both accept loops; they drop their listeners and end.
        for addr in [self.shared.front, self.shared.back] {
            let _ = TcpStream::connect_timeout(&addr, Duration::from_millis(200));
        }
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

impl Drop for RedirectingUpstream {
    fn drop(&mut self) {
        self.stop();
    }
}

fn path_only(target: &str) -> &str {
    target.split('?').next().unwrap_or(target)
}

/// How long a connection thread waits for bytes before it looks at the stop flag.
const CONNECTION_POLL: Duration = Duration::from_millis(50);
/// The largest request head read (these are registry clients: small).
const HEAD_BYTES_MAX: usize = 64 * 1024;
/// Bytes written per call when serving a blob (and the rate limiter's step).
const SERVE_CHUNK: usize = 64 * 1024;

fn accept_loop(listener: TcpListener, side: Side, shared: Arc<Shared>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut connections = Vec::new();
        for stream in listener.incoming() {
            if shared.stop.load(Ordering::SeqCst) {
                break;
            }
            let Ok(stream) = stream else { continue };
            let shared = Arc::clone(&shared);
            connections.push(thread::spawn(move || serve_connection(stream, side, &shared)));
        }
        // The listener closes here: later connections are refused.
        drop(listener);
        for connection in connections {
            let _ = connection.join();
        }
    })
}

fn serve_connection(mut stream: TcpStream, side: Side, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(CONNECTION_POLL));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // One head: read until CRLFCRLF, looking at the stop flag between reads.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if shared.stop.load(Ordering::SeqCst) || buf.len() > HEAD_BYTES_MAX {
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(_) => return,
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or_default().split(' ');
        let method = request_line.next().unwrap_or_default().to_string();
        let target = request_line.next().unwrap_or_default().to_string();
        let mut authorization = None;
        let mut content_length = 0usize;
        let mut close = false;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("authorization") {
                authorization = Some(value.to_string());
            } else if name.eq_ignore_ascii_case("content-length") {
                content_length = value.parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
                close = true;
            }
        }
        // Bodies are not used (no pushes here): read and drop them.
        while buf.len() < content_length {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) =>
                {
                    if shared.stop.load(Ordering::SeqCst) {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
        buf.drain(..content_length);
        let index = {
            let mut seen = shared.seen.lock().unwrap();
            seen.push(Seen {
                side,
                method: method.clone(),
                target: target.clone(),
                authorization: authorization.clone(),
                status: 0,
            });
            seen.len() - 1
        };
        let (status, keep) = answer(
            &mut stream,
            side,
            shared,
            &method,
            &target,
            authorization.as_deref(),
        );
        shared.seen.lock().unwrap()[index].status = status;
        if close || !keep || shared.stop.load(Ordering::SeqCst) {
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// Writes a head and a small body; the status, and false when the connection must close.
fn reply(
    stream: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
    body: &[u8],
    head_only: bool,
) -> (u16, bool) {
    let reason = match status {
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Status",
    };
    let mut head = format!("HTTP/1.1 {status} {reason}\r\n");
    let mut has_length = false;
    for (name, value) in headers {
        has_length |= name.eq_ignore_ascii_case("content-length");
        let _ = write!(head, "{name}: {value}\r\n");
    }
    if !has_length {
        let _ = write!(head, "Content-Length: {}\r\n", body.len());
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    if !head_only {
        bytes.extend_from_slice(body);
    }
    (status, stream.write_all(&bytes).is_ok())
}

fn oci_error(code: &str, message: &str) -> Vec<u8> {
    format!(
        "{{\"errors\":[{{\"code\":{},\"message\":{}}}]}}",
        json_str(code),
        json_str(message)
    )
    .into_bytes()
}

fn answer(
    stream: &mut TcpStream,
    side: Side,
    shared: &Shared,
    method: &str,
    target: &str,
    authorization: Option<&str>,
) -> (u16, bool) {
    let head_only = method == "HEAD";
    let path = path_only(target).to_string();
    let (basic, redirect_status, extra_hops, rate, no_redirect) = {
        let b = shared.behaviour.lock().unwrap();
        (
            b.basic.clone(),
            b.redirect_status,
            b.extra_hops,
            b.rate_bytes_per_sec,
            b.no_redirect,
        )
    };
    let json = ("Content-Type", "application/json".to_string());
    if side == Side::Back {
        // `/hop/N/<digest>` redirects on (N > 0) or to `/data/<digest>`, which serves.
        if let Some(rest) = path.strip_prefix("/hop/") {
            let (n, name) = rest.split_once('/').unwrap_or(("0", rest));
            let n: usize = n.parse().unwrap_or(0);
            let next = if n > 1 {
                format!("http://{}/hop/{}/{name}", shared.back, n - 1)
            } else {
                format!("http://{}/data/{name}?X-Signature=test", shared.back)
            };
            return reply(stream, redirect_status, &[("Location", next)], b"", head_only);
        }
        if let Some(name) = path.strip_prefix("/data/") {
            return serve_blob(stream, shared, name, head_only, rate);
        }
        return reply(
            stream,
            404,
            &[json],
            &oci_error("NOT_FOUND", "no such object"),
            head_only,
        );
    }
    if let Some(expected) = &basic
        && authorization != Some(expected.as_str())
    {
        return reply(
            stream,
            401,
            &[
                (
                    "WWW-Authenticate",
                    "Basic realm=\"redirecting upstream\"".to_string(),
                ),
                json,
            ],
            &oci_error("UNAUTHORIZED", "authentication required"),
            head_only,
        );
    }
    let version = ("Docker-Distribution-API-Version", "registry/2.0".to_string());
    if path == "/v2/" || path == "/v2" {
        return reply(stream, 200, &[version, json], b"{}", head_only);
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return reply(
            stream,
            404,
            &[json],
            &oci_error("NOT_FOUND", "not a registry path"),
            head_only,
        );
    };
    if let Some(i) = rest.rfind("/manifests/") {
        let repo = &rest[..i];
        let reference = &rest[i + "/manifests/".len()..];
        let found = shared
            .store
            .lock()
            .unwrap()
            .manifests
            .get(&(repo.to_string(), reference.to_string()))
            .cloned();
        return match found {
            Some((media_type, bytes)) => reply(
                stream,
                200,
                &[
                    version,
                    ("Content-Type", media_type),
                    ("Docker-Content-Digest", digest(&bytes)),
                ],
                &bytes,
                head_only,
            ),
            None => reply(
                stream,
                404,
                &[version, json],
                &oci_error("MANIFEST_UNKNOWN", "manifest unknown"),
                head_only,
            ),
        };
    }
    if let Some(i) = rest.rfind("/blobs/") {
        let name = &rest[i + "/blobs/".len()..];
        if head_only {
            let size = shared.store.lock().unwrap().blobs.get(name).map(|b| b.len());
            return match size {
                Some(size) => reply(
                    stream,
                    200,
                    &[
                        ("Content-Length", size.to_string()),
                        ("Docker-Content-Digest", name.to_string()),
                        ("Content-Type", "application/octet-stream".to_string()),
                    ],
                    b"",
                    true,
                ),
                None => reply(stream, 404, &[json], b"", true),
            };
        }
        if no_redirect {
            return serve_blob(stream, shared, name, false, rate);
        }
        let known = shared.store.lock().unwrap().blobs.contains_key(name);
        if !known {
            return reply(
                stream,
                404,
                &[json],
                &oci_error("BLOB_UNKNOWN", "blob unknown"),
                false,
            );
        }
        // An object-store style URL on another port: another origin, so credentials
        // must not follow the redirect.
        let location = if extra_hops > 0 {
            format!("http://{}/hop/{extra_hops}/{name}", shared.back)
        } else {
            format!("http://{}/data/{name}?X-Signature=test", shared.back)
        };
        return reply(
            stream,
            redirect_status,
            &[version, ("Location", location)],
            b"",
            false,
        );
    }
    reply(
        stream,
        404,
        &[json],
        &oci_error("NOT_FOUND", "unknown route"),
        head_only,
    )
}

/// Serves a blob's bytes (wrong, when it has a fault), at `rate` bytes a second when
/// non-zero. The status, and false when the connection must close (a fault, or a
/// write failed).
fn serve_blob(
    stream: &mut TcpStream,
    shared: &Shared,
    name: &str,
    head_only: bool,
    rate: u64,
) -> (u16, bool) {
    let (bytes, fault) = {
        let store = shared.store.lock().unwrap();
        (store.blobs.get(name).cloned(), store.faults.get(name).copied())
    };
    let Some(bytes) = bytes else {
        return reply(
            stream,
            404,
            &[],
            &oci_error("BLOB_UNKNOWN", "blob unknown"),
            head_only,
        );
    };
    let headers = [
        ("Content-Length", bytes.len().to_string()),
        ("Content-Type", "application/octet-stream".to_string()),
    ];
    let (_, written) = reply(stream, 200, &headers, b"", true);
    if !written || head_only {
        return (200, written);
    }
    let mut wrong;
    let body: &[u8] = match fault {
        Some(BlobFault::WrongBytes) if !bytes.is_empty() => {
            wrong = bytes.as_ref().clone();
            let middle = wrong.len() / 2;
            wrong[middle] ^= 0xff;
            &wrong
        }
        Some(BlobFault::CloseAfter(n)) => &bytes[..(n as usize).min(bytes.len())],
        _ => &bytes,
    };
    let started = Instant::now();
    let mut sent = 0u64;
    for chunk in body.chunks(SERVE_CHUNK) {
        if shared.stop.load(Ordering::SeqCst) || stream.write_all(chunk).is_err() {
            return (200, false);
        }
        sent += chunk.len() as u64;
        shared
            .served_bytes
            .fetch_add(chunk.len() as u64, Ordering::SeqCst);
        if rate > 0 {
            // Sleeping here paces this one connection's bytes, like a slow link.
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                thread::sleep(ahead);
            }
        }
    }
    (200, !matches!(fault, Some(BlobFault::CloseAfter(_))))
}

/// `socat` terminating TLS with a test CA's server pair on a loopback port of its own and
/// forwarding the plaintext to `target`: the redirecting upstream over HTTPS (its
/// redirects still point at its plain back port: another origin, as an object store's
/// would be). One process per connection (`fork`), all in one process group, killed
/// together on drop.
pub struct TlsTerminator {
    child: Option<Child>,
    pub addr: SocketAddr,
}

impl TlsTerminator {
    pub fn start(target: SocketAddr, certificate: &Path, key: &Path) -> TlsTerminator {
        require_program("socat", "-V", "socat");
        let mut last = String::new();
        // socat cannot listen on port 0 and say which port it got: a clash with another
        // test's ephemeral port is retried.
        for _attempt in 0..5 {
            let port = free_loopback_port();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let mut command = Command::new("socat");
            command
                .arg(format!(
                    "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
                    certificate.display(),
                    key.display()
                ))
                .arg(format!("TCP:{target}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            std::os::unix::process::CommandExt::process_group(&mut command, 0);
            let mut child = command.spawn().expect("start socat");
            let deadline = Instant::now() + UPSTREAM_START_TIMEOUT;
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    let mut stderr = String::new();
                    if let Some(mut pipe) = child.stderr.take() {
                        let _ = pipe.read_to_string(&mut stderr);
                    }
                    last = format!("socat exited ({status}): {stderr}");
                    break;
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return TlsTerminator {
                        child: Some(child),
                        addr,
                    };
                }
                if Instant::now() > deadline {
                    last = "socat did not listen in time".to_string();
                    kill_group(&mut child);
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not start socat: {last}");
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
        }
    }
}

impl Drop for TlsTerminator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SIGKILL to `child`'s process group (it leads one: `process_group(0)`), and reap it.
/// By procps' `kill`, as std signals a process, never a group; then std's own kill,
/// should that command be missing.
fn kill_group(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

/// True when this process runs as root: `/proc/self` belongs to the effective user.
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

// ---------------------------------------------------------------------------
// containerd and ctr
// ---------------------------------------------------------------------------

/// A `containerd` of the test's own, as root: root, state and socket in a temporary
/// directory, the CRI and the snapshotters that need special file systems disabled.
/// Stopped on drop. `ctr` pulls through it with a hosts directory.
pub struct Containerd {
    child: Child,
    pub socket: PathBuf,
    dir: TempDir,
}

impl Containerd {
    /// `Err(why)` where none can run here: not installed, not root, or it exits.
    pub fn start() -> Result<Containerd, String> {
        if !program_runs("containerd", "--version") || !program_runs("ctr", "--version") {
            return Err("containerd is not installed (scripts/test.sh installs Debian's containerd)".into());
        }
        if !running_as_root() {
            return Err("containerd needs root (its content store and snapshots are root's)".into());
        }
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = TempDir::new("containerd");
        // Unix socket paths are limited to 108 bytes: keep it short.
        let socket = PathBuf::from(format!(
            "/tmp/angos-ctr-{}-{}.sock",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&socket);
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = {}\nstate = {}\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.snapshotter.v1.btrfs\", \
                 \"io.containerd.snapshotter.v1.zfs\", \"io.containerd.snapshotter.v1.devmapper\", \
                 \"io.containerd.snapshotter.v1.aufs\"]\n\
                 [grpc]\n  address = {}\n[ttrpc]\n  address = {}\n\
                 [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n",
                json_str(&dir.path().join("root").display().to_string()),
                json_str(&dir.path().join("state").display().to_string()),
                json_str(&socket.display().to_string()),
                json_str(&format!("{}.ttrpc", socket.display())),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start containerd: {e}"))?;
        let mut containerd = Containerd { child, socket, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if containerd.ctr(&["version"]).status.success() {
                return Ok(containerd);
            }
            if let Ok(Some(status)) = containerd.child.try_wait() {
                let tail: Vec<String> = containerd.log().lines().rev().take(5).map(String::from).collect();
                return Err(format!("containerd exited ({status}): {}", tail.join(" | ")));
            }
            if Instant::now() > deadline {
                return Err("containerd did not answer within 30 s".into());
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ctr --address SOCKET ARGS`.
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// `ctr images pull --hosts-dir HOSTS REFERENCE`, unpacked by the native
    /// snapshotter (no overlay mounts needed).
    pub fn pull(&self, hosts_dir: &Path, reference: &str) -> Output {
        let hosts = hosts_dir.display().to_string();
        self.ctr(&[
            "images",
            "pull",
            "--snapshotter",
            "native",
            "--hosts-dir",
            &hosts,
            reference,
        ])
    }

    /// The digest `ctr images ls` reports for `reference`, when it has it.
    pub fn image_digest(&self, reference: &str) -> Option<String> {
        let output = self.ctr(&["images", "ls"]);
        let text = String::from_utf8_lossy(&output.stdout);
        text.lines().find_map(|line| {
            let mut fields = line.split_whitespace();
            if fields.next()? != reference {
                return None;
            }
            fields.find(|f| f.starts_with("sha256:")).map(String::from)
        })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // SIGTERM first: containerd closes its metadata database cleanly.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(format!("{}.ttrpc", self.socket.display()));
    }
}

/// `DIR/REGISTRY/hosts.toml` naming `mirror` (plain HTTP) as a pull-and-resolve
/// host for `registry` (`docker.io`): containerd then asks the mirror with
/// `?ns=REGISTRY`. Returns `DIR`, for `--hosts-dir`.
pub fn write_hosts_dir(dir: &Path, registry: &str, mirror: SocketAddr) -> PathBuf {
    let hosts = dir.join("hosts.d");
    let registry_dir = hosts.join(registry);
    std::fs::create_dir_all(&registry_dir).unwrap();
    // `server` is the registry's own address; with no outside network it is never
    // reached (the mirror answers first).
    let server = if registry == "docker.io" {
        "https://registry-1.docker.io".to_string()
    } else {
        format!("https://{registry}")
    };
    std::fs::write(
        registry_dir.join("hosts.toml"),
        format!(
            "server = {}\n\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            json_str(&server)
        ),
    )
    .unwrap();
    hosts
}
