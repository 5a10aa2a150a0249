//! The transfer benchmark (`cargo bench --bench transfer`, `harness = false`, issue 13 item
//! 4): how long a well-behaved client waits while another moves a large blob. Each case
//! starts the release binary on loopback over a fresh data directory and runs one transfer
//! while the benches' probe (`support/probe.rs`) sends `GET /v2/` every 2 ms on a keep-alive
//! plain HTTP connection. One markdown table of medians goes to stdout: the probe's p50, p99
//! and slowest answer over the case, the wait for the case's final request (the commit or
//! the cancel) and the slowest probe answer around it, and the transfer's MB/s. It measures
//! and reports; it asserts nothing about the figures. Every server, file and directory sits
//! behind a Drop guard, so an error or a panic still kills the servers and removes the data.
//!
//! Settings (environment): `BENCH_RUNS` (default 3) runs per case, `BENCH_TRANSFER_MIB`
//! (default 1024) the blob's size, `BENCH_CASES` (alternatives separated by commas, each of
//! words separated by spaces that must all match) the cases to run.
// A benchmark times the real binary from outside: wall-clock reads are the point here, not
// a way around the driven clock (clippy.toml).
#![allow(clippy::disallowed_methods)]

// The end-to-end tests' support and their test CA (made with `openssl`); the bench uses
// only part of each.
#[path = "../tests/e2e/common/mod.rs"]
#[allow(dead_code)]
mod common;
#[path = "../tests/e2e/webhook_support/python.rs"]
#[allow(dead_code)]
mod python;
#[path = "support/shared.rs"]
mod shared;
// The well-behaved client, shared with the attack bench; each uses part of it.
#[path = "support/probe.rs"]
#[allow(dead_code)]
mod probe;

use common::{Conn, Options, Response, START_TIMEOUT, Server, TempDir, url_path, with_query};
use probe::{Probe, percentile};
use python::TestCa;
use shared::{
    Source, Space, connect, cpu_model, env_number, free_space, load_average, median_of, progress, settle,
    sink_body,
};
use std::fs::File;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::ops::Deref;
use std::panic::{self, AssertUnwindSafe};
use std::process::{Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const ANGOS: &str = env!("CARGO_BIN_EXE_angos");

/// The repository every case uses.
const REPO: &str = "bench/transfer";
/// The size of each `PATCH` of the chunked upload (the 16 MiB).
const CHUNK_BYTES: u64 = 16 << 20;
/// How long the probe goes on after the final answer, so that work the server does after
/// answering (later in the turn, or on a later turn) still shows.
const TAIL: Duration = Duration::from_millis(100);
/// Free space needed in the temporary directory beyond three blobs (the source file, the
/// stored blob and a second session's copy of it).
const SPACE_SLACK_MIB: u64 = 256;
/// Server log lines shown in error messages.
const LOG_LINES_MAX: usize = 100;

/// What the environment asked for.
struct Settings {
    runs: usize,
    mib: u64,
    /// `BENCH_CASES` as written, for the header.
    cases_text: Option<String>,
    /// Its alternatives, each a list of words that must all match; empty runs every case.
    alternatives: Vec<Vec<String>>,
}

impl Settings {
    fn from_env() -> Result<Settings, String> {
        let cases_text = std::env::var("BENCH_CASES")
            .ok()
            .filter(|text| !text.trim().is_empty());
        let alternatives = cases_text
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(|alternative| {
                alternative
                    .split_whitespace()
                    .map(str::to_ascii_lowercase)
                    .collect::<Vec<_>>()
            })
            .filter(|words| !words.is_empty())
            .collect();
        Ok(Settings {
            runs: env_number("BENCH_RUNS", 3, 1, 100)? as usize,
            mib: env_number("BENCH_TRANSFER_MIB", 1024, 1, 1 << 20)?,
            cases_text,
            alternatives,
        })
    }

    fn bytes(&self) -> u64 {
        self.mib << 20
    }

    fn wants(&self, case: &Case) -> bool {
        self.alternatives.is_empty()
            || self
                .alternatives
                .iter()
                .any(|words| words.iter().all(|word| case.matches(word)))
    }

    /// The command line that reproduces this run.
    fn command(&self) -> String {
        let cases = match &self.cases_text {
            Some(text) => format!(" BENCH_CASES='{text}'"),
            None => String::new(),
        };
        format!(
            "BENCH_RUNS={} BENCH_TRANSFER_MIB={}{cases} cargo bench --bench transfer",
            self.runs, self.mib
        )
    }
}

// ---------------------------------------------------------------------------
// The cases
// ---------------------------------------------------------------------------

/// What one case moves, in the lettering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// (a) `POST` a session, then one `PUT ?digest=` with the whole body.
    Monolithic,
    /// (b) `POST` a session, 16 MiB `PATCH`es, then the closing `PUT ?digest=`.
    Chunked,
    /// (c) `GET` of a stored blob into a counting sink.
    Download,
    /// (d) as (a), for a blob the store already holds: the commit removes the session's copy.
    Duplicate,
    /// (e) `POST` a session, one `PATCH` with the whole body, then `DELETE` of the session.
    Cancel,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Monolithic,
        Kind::Chunked,
        Kind::Download,
        Kind::Duplicate,
        Kind::Cancel,
    ];

    fn letter(self) -> &'static str {
        match self {
            Kind::Monolithic => "a",
            Kind::Chunked => "b",
            Kind::Download => "c",
            Kind::Duplicate => "d",
            Kind::Cancel => "e",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Monolithic => "monolithic upload",
            Kind::Chunked => "chunked upload, 16 MiB PATCHes",
            Kind::Download => "download",
            Kind::Duplicate => "upload of a blob already stored",
            Kind::Cancel => "cancelled upload session",
        }
    }

    /// The cases measured over HTTPS too (the (a) and (c)).
    fn over_https(self) -> bool {
        matches!(self, Kind::Monolithic | Kind::Download)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Http,
    /// The transfer by `curl` on the TLS listener; the probe stays on plain HTTP.
    Https,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Http => "HTTP",
            Transport::Https => "HTTPS",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Case {
    kind: Kind,
    sync_to_disk: bool,
    transport: Transport,
}

impl Case {
    /// Every case, in table order: each kind over HTTP, then over HTTPS where measured,
    /// each with `sync_to_disk` false and true.
    fn all() -> Vec<Case> {
        let mut cases = Vec::new();
        for kind in Kind::ALL {
            for transport in [Transport::Http, Transport::Https] {
                if transport == Transport::Https && !kind.over_https() {
                    continue;
                }
                for sync_to_disk in [false, true] {
                    cases.push(Case {
                        kind,
                        sync_to_disk,
                        transport,
                    });
                }
            }
        }
        cases
    }

    fn label(&self) -> String {
        format!("({}) {}", self.kind.letter(), self.kind.name())
    }

    /// The case in one line, as `BENCH_CASES` words match it.
    fn describe(&self) -> String {
        format!(
            "{}, sync_to_disk={}, {}",
            self.label(),
            self.sync_to_disk,
            self.transport.name()
        )
    }

    /// A `BENCH_CASES` word (lowercase) matches a whole word of the description: the
    /// letter, a word of the name (`monolithic`, `chunked`, `cancelled`, ...),
    /// `sync_to_disk=true` or `false`, `http` or `https`.
    fn matches(&self, word: &str) -> bool {
        // The name has one-letter words too ("of a blob").
        if word.len() == 1 {
            return word == self.kind.letter();
        }
        self.describe()
            .to_ascii_lowercase()
            .split([' ', ',', '(', ')'])
            .any(|part| part == word)
    }
}

// ---------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
    // binary without it, only to check that it builds and starts: no transfers.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("benches/transfer.rs: run it with `cargo bench --bench transfer`");
        return ExitCode::SUCCESS;
    }
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let mut rows: Vec<Row> = Case::all()
        .into_iter()
        .filter(|case| settings.wants(case))
        .map(|case| Row {
            case,
            runs: Vec::new(),
        })
        .collect();
    if rows.is_empty() {
        let known: Vec<String> = Case::all().iter().map(Case::describe).collect();
        eprintln!(
            "error: BENCH_CASES matches no case; the cases are:\n  {}",
            known.join("\n  ")
        );
        return ExitCode::from(2);
    }
    let space = match preflight(&settings, &rows) {
        Ok(space) => space,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let load_before = load_average();
    let started = Instant::now();
    // The test support panics where the bench's own code returns an error (a server that
    // does not start); either way the runs measured so far print, and unwinding drops the
    // guards: servers killed, directories removed.
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| run_all(&settings, &mut rows)))
        .unwrap_or_else(|_| Err("a step panicked (its message is above)".to_string()));
    eprintln!("transfer: finished in {:.0} s", started.elapsed().as_secs_f64());
    println!();
    println!("{}", header(&settings, &space, &load_before));
    println!();
    print!("{}", render(&rows));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Checks what the bench needs before starting anything: `sync` and `df` (coreutils),
/// `curl` and `openssl` for the HTTPS cases, and room for three blobs in the temporary
/// directory (`TMPDIR` moves it).
fn preflight(settings: &Settings, rows: &[Row]) -> Result<Space, String> {
    let mut tools = vec![("sync", "--version"), ("df", "--version")];
    if rows.iter().any(|row| row.case.transport == Transport::Https) {
        tools.push(("curl", "--version"));
        tools.push(("openssl", "version"));
    }
    for (tool, arg) in tools {
        let status = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match status {
            Ok(status) if status.success() => {}
            Ok(status) => return Err(format!("`{tool} {arg}` failed: {status}")),
            Err(e) => {
                return Err(format!(
                    "cannot run {tool} ({e}); the HTTPS cases need curl and openssl, every case \
                     needs coreutils (apt-get install curl openssl coreutils)"
                ));
            }
        }
    }
    let space = free_space(&std::env::temp_dir())?;
    let needed = 3 * settings.bytes() + (SPACE_SLACK_MIB << 20);
    if space.free_bytes < needed {
        return Err(format!(
            "the bench needs about {:.1} GiB free in the temporary directory {} (the source file, \
             the stored blob and a second upload of it), and {:.1} GiB are; set TMPDIR to a \
             roomier directory or lower BENCH_TRANSFER_MIB",
            gib(needed),
            space.dir.display(),
            gib(space.free_bytes)
        ));
    }
    Ok(space)
}

/// Every run of every case, run after run so that drift on the machine falls on all
/// cases alike. Each run adds its figures as soon as it has them, so a failure later
/// still prints what was measured.
fn run_all(settings: &Settings, rows: &mut [Row]) -> Result<(), String> {
    let work = TempDir::new("transfer-bench");
    progress(&format!("writing the {} MiB source file", settings.mib));
    let source = Source::write(&work.path().join("blob.bin"), settings.bytes())?;
    let ca = rows
        .iter()
        .any(|row| row.case.transport == Transport::Https)
        .then(TestCa::generate);
    for run in 0..settings.runs {
        for row in rows.iter_mut() {
            progress(&format!(
                "run {} of {}: {}",
                run + 1,
                settings.runs,
                row.case.describe()
            ));
            let measure = run_case(&row.case, &source, ca.as_ref())?;
            // The server is gone and its directory removed; its dirty pages go too, so
            // the next case does not pay for this one's writeback.
            settle()?;
            progress(&format!("  {}", measure.describe()));
            row.runs.push(measure);
        }
    }
    Ok(())
}

/// One run of one case on a fresh server, which is killed and whose directory is removed
/// when this returns.
fn run_case(case: &Case, source: &Source, ca: Option<&TestCa>) -> Result<Measure, String> {
    let server = BenchServer::start(case, ca)?;
    let addr = server.addr;
    let measured = match (case.kind, server.https) {
        (Kind::Monolithic, None) => measure(&server, || upload_monolithic(addr, source)),
        (Kind::Monolithic, Some(https)) => measure(&server, || curl_upload(addr, https, source, ca)),
        (Kind::Chunked, _) => measure(&server, || upload_chunked(addr, source)),
        (Kind::Download, https) => {
            post_blob(addr, source)
                .and_then(|()| settle())
                .map_err(|e| server.with_log(e))?;
            match https {
                None => measure(&server, || download(addr, source)),
                Some(https) => measure(&server, || curl_download(https, source, ca)),
            }
        }
        (Kind::Duplicate, _) => {
            post_blob(addr, source)
                .and_then(|()| settle())
                .map_err(|e| server.with_log(e))?;
            measure(&server, || upload_monolithic(addr, source))
        }
        (Kind::Cancel, _) => measure(&server, || fill_and_cancel(addr, source)),
    };
    measured.map_err(|e| server.with_log(format!("{}: {e}", case.describe())))
}

// ---------------------------------------------------------------------------
// The measurement
// ---------------------------------------------------------------------------

/// What a transfer tells the measurement.
struct Transfer {
    bytes: u64,
    /// The transfer's own time, for its MB/s.
    elapsed: Duration,
    /// When the wait for the final request began: the client's last body byte written,
    /// or the final request sent. `None` for a download, and for curl, which does not say.
    final_from: Option<Instant>,
    /// When the final answer arrived.
    answered: Instant,
}

/// The figures of one run of one case.
struct Measure {
    p50: Duration,
    p99: Duration,
    max: Duration,
    probes: usize,
    mb_per_sec: f64,
    /// From `final_from` to the final answer.
    final_wait: Option<Duration>,
    /// The slowest probe answer in flight between `final_from` and `TAIL` after the answer.
    final_probe_max: Option<Duration>,
}

impl Measure {
    fn describe(&self) -> String {
        let mut text = format!(
            "probe p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} probes); {:.0} MB/s",
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            self.probes,
            self.mb_per_sec
        );
        if let (Some(wait), Some(slowest)) = (self.final_wait, self.final_probe_max) {
            text.push_str(&format!(
                "; final request {:.2} ms, slowest probe around it {:.2} ms",
                ms(wait),
                ms(slowest)
            ));
        }
        text
    }
}

/// Probes from just before `transfer` starts until `TAIL` after its final answer; the
/// tail counts only around the final request.
fn measure(server: &Server, transfer: impl FnOnce() -> Result<Transfer, String>) -> Result<Measure, String> {
    let probe = Probe::start(server);
    // On an error the probe is dropped, which stops it.
    let transfer = transfer()?;
    thread::sleep(TAIL);
    let samples = probe.finish();
    // The probe waits for each answer, so a stall is one slow sample however long it
    // lasts, and the quiet tail would outnumber the transfer's samples: the case's
    // figures count only the probes sent until the final answer.
    let sorted = samples.sorted_sent_by(Some(transfer.answered));
    let final_probe_max = transfer
        .final_from
        .and_then(|from| samples.slowest_between(from, transfer.answered + TAIL));
    Ok(Measure {
        p50: percentile(&sorted, 50.0),
        p99: percentile(&sorted, 99.0),
        max: sorted.last().copied().unwrap_or_default(),
        probes: sorted.len(),
        mb_per_sec: transfer.bytes as f64 / 1e6 / transfer.elapsed.as_secs_f64(),
        final_wait: transfer.final_from.map(|from| transfer.answered - from),
        final_probe_max,
    })
}

// ---------------------------------------------------------------------------
// The transfers (the tests' std-only client on plain HTTP)
// ---------------------------------------------------------------------------

/// One request without a body on `client`; an error unless the answer has `status`.
fn exchange(client: &mut Conn, method: &str, path: &str, status: u16) -> Result<Response, String> {
    let headers: &[(&str, &str)] = match method {
        "POST" | "PUT" => &[("Content-Length", "0")],
        _ => &[],
    };
    let reply = client
        .try_request(method, path, headers, b"")
        .map_err(|e| format!("{method} {path}: {e}"))?;
    expect_status(reply, method, path, status)
}

fn expect_status(reply: Response, method: &str, path: &str, status: u16) -> Result<Response, String> {
    if reply.status != status {
        return Err(format!(
            "{method} {path}: expected {status}, got {}",
            reply.describe()
        ));
    }
    Ok(reply)
}

/// Opens an upload session; its `Location` as a path.
fn start_session(client: &mut Conn) -> Result<String, String> {
    let reply = exchange(client, "POST", &format!("/v2/{REPO}/blobs/uploads/"), 202)?;
    let location = reply
        .header("location")
        .ok_or("POST of an upload session: no Location")?;
    Ok(url_path(location))
}

/// Sends a request head announcing a `len`-byte body, then `len` bytes of `file` from its
/// current position (io::copy sends a file to a socket with sendfile, so the client
/// costs little), and reads the answer, which must have `status`.
fn send_body(
    client: &mut Conn,
    file: &mut File,
    (method, path, len): (&str, &str, u64),
    extra: &[(&str, &str)],
    status: u16,
) -> Result<(Response, Instant), String> {
    let length = len.to_string();
    let mut headers = vec![
        ("Content-Type", "application/octet-stream"),
        ("Content-Length", length.as_str()),
    ];
    headers.extend_from_slice(extra);
    let what = format!("{method} {path}");
    client
        .try_send(&Conn::request_bytes(method, path, &headers, b""))
        .map_err(|e| format!("{what}: {e}"))?;
    let sent = io::copy(&mut file.take(len), &mut client.stream()).map_err(|e| format!("{what}: {e}"))?;
    if sent != len {
        return Err(format!("{what}: the source file ended after {sent} bytes"));
    }
    let last_byte = Instant::now();
    let reply = client.read_response(method).map_err(|e| format!("{what}: {e}"))?;
    Ok((expect_status(reply, method, path, status)?, last_byte))
}

/// The setup of (c) and (d), before any probe: the blob stored by one monolithic
/// `POST ?digest=`.
fn post_blob(addr: SocketAddr, source: &Source) -> Result<(), String> {
    let mut file = source.open()?;
    let mut client = connect(addr)?;
    let path = format!("/v2/{REPO}/blobs/uploads/?digest={}", source.digest);
    send_body(&mut client, &mut file, ("POST", &path, source.bytes), &[], 201)?;
    Ok(())
}

/// (a) and (d): a session, then one `PUT ?digest=` with the whole body; the final request
/// is the commit, from the last byte written to the `201`.
fn upload_monolithic(addr: SocketAddr, source: &Source) -> Result<Transfer, String> {
    let mut file = source.open()?;
    let mut client = connect(addr)?;
    let started = Instant::now();
    let location = start_session(&mut client)?;
    let path = with_query(&location, "digest", &source.digest.to_string());
    let (_, last_byte) = send_body(&mut client, &mut file, ("PUT", &path, source.bytes), &[], 201)?;
    let answered = Instant::now();
    Ok(Transfer {
        bytes: source.bytes,
        elapsed: answered - started,
        final_from: Some(last_byte),
        answered,
    })
}

/// (b): a session, `PATCH`es of `CHUNK_BYTES` with `Content-Range` on one keep-alive
/// connection, then the closing `PUT ?digest=` without a body, the final request.
fn upload_chunked(addr: SocketAddr, source: &Source) -> Result<Transfer, String> {
    let mut file = source.open()?;
    let mut client = connect(addr)?;
    let started = Instant::now();
    let mut location = start_session(&mut client)?;
    let mut offset = 0;
    while offset < source.bytes {
        let len = CHUNK_BYTES.min(source.bytes - offset);
        let range = format!("{offset}-{}", offset + len - 1);
        let (reply, _) = send_body(
            &mut client,
            &mut file,
            ("PATCH", &location, len),
            &[("Content-Range", &range)],
            202,
        )?;
        location = url_path(reply.header("location").ok_or("PATCH: no Location")?);
        offset += len;
    }
    let closing = Instant::now();
    let path = with_query(&location, "digest", &source.digest.to_string());
    exchange(&mut client, "PUT", &path, 201)?;
    let answered = Instant::now();
    Ok(Transfer {
        bytes: source.bytes,
        elapsed: answered - started,
        final_from: Some(closing),
        answered,
    })
}

/// (e): a session filled by one `PATCH` with the whole body (its MB/s), then the `DELETE`
/// of the session, the final request.
fn fill_and_cancel(addr: SocketAddr, source: &Source) -> Result<Transfer, String> {
    let mut file = source.open()?;
    let mut client = connect(addr)?;
    let started = Instant::now();
    let location = start_session(&mut client)?;
    send_body(
        &mut client,
        &mut file,
        ("PATCH", &location, source.bytes),
        &[],
        202,
    )?;
    let cancel = Instant::now();
    exchange(&mut client, "DELETE", &location, 204)?;
    let answered = Instant::now();
    Ok(Transfer {
        bytes: source.bytes,
        elapsed: cancel - started,
        final_from: Some(cancel),
        answered,
    })
}

/// (c): `GET` of the stored blob into a counting sink; the size is checked.
fn download(addr: SocketAddr, source: &Source) -> Result<Transfer, String> {
    let path = format!("/v2/{REPO}/blobs/{}", source.digest);
    let what = format!("GET {path}");
    let mut client = connect(addr)?;
    let started = Instant::now();
    client
        .try_send(&Conn::request_bytes("GET", &path, &[], b""))
        .map_err(|e| format!("{what}: {e}"))?;
    let head = client.read_head().map_err(|e| format!("{what}: {e}"))?;
    if head.status != 200 {
        return Err(format!("{what}: {}", head.describe()));
    }
    if head.header("content-length") != Some(source.bytes.to_string().as_str()) {
        return Err(format!(
            "{what}: expected Content-Length {}: {}",
            source.bytes,
            head.describe()
        ));
    }
    let received = sink_body(&client, source.bytes).map_err(|e| format!("{what}: {e}"))?;
    let answered = Instant::now();
    if received != source.bytes {
        return Err(format!("{what}: received {received} of {} bytes", source.bytes));
    }
    Ok(Transfer {
        bytes: source.bytes,
        elapsed: answered - started,
        final_from: None,
        answered,
    })
}

// ---------------------------------------------------------------------------
// HTTPS: curl on the TLS listener (the tests' support has no HTTPS client)
// ---------------------------------------------------------------------------

/// What `curl -w` reported.
struct Curl {
    status: u16,
    size_upload: u64,
    size_download: u64,
    /// `time_total`: from curl's start of the transfer (connect, handshake) to its end.
    total: Duration,
}

/// Runs curl against the test CA, its body to /dev/null; what `-w` reported.
fn curl(ca: Option<&TestCa>, args: &[&str]) -> Result<Curl, String> {
    let ca = ca.ok_or("an HTTPS case without the test CA")?;
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--noproxy", "*", "--cacert"])
        .arg(&ca.ca_pem)
        .args(["--output", "/dev/null", "--write-out"])
        .arg("%{http_code} %{size_upload} %{size_download} %{time_total}")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run curl: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let fail = || {
        format!(
            "curl {}: {}; printed {text:?}, {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )
    };
    if !output.status.success() {
        return Err(fail());
    }
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [status, size_upload, size_download, total] = fields[..] else {
        return Err(fail());
    };
    let number = |field: &str| field.parse::<u64>().map_err(|_| fail());
    Ok(Curl {
        status: status.parse().map_err(|_| fail())?,
        size_upload: number(size_upload)?,
        size_download: number(size_download)?,
        total: total
            .parse::<f64>()
            .ok()
            .filter(|seconds| *seconds > 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(fail)?,
    })
}

/// (a) over HTTPS: the session opened on the plain listener, then `curl -T` PUTs the
/// file with `?digest=` on the TLS listener; its MB/s from curl's `time_total`.
fn curl_upload(
    addr: SocketAddr,
    https: SocketAddr,
    source: &Source,
    ca: Option<&TestCa>,
) -> Result<Transfer, String> {
    let location = start_session(&mut connect(addr)?)?;
    let url = format!(
        "https://{https}{}",
        with_query(&location, "digest", &source.digest.to_string())
    );
    let file = source.path.to_string_lossy();
    let args = [
        "--upload-file",
        &file,
        "--header",
        "Content-Type: application/octet-stream",
        // Straight to the body, as the plain client does (no 100 Continue round trip).
        "--header",
        "Expect:",
        &url,
    ];
    let result = curl(ca, &args)?;
    let answered = Instant::now();
    if result.status != 201 || result.size_upload != source.bytes {
        return Err(format!(
            "PUT {url}: status {}, {} of {} bytes sent",
            result.status, result.size_upload, source.bytes
        ));
    }
    Ok(Transfer {
        bytes: source.bytes,
        elapsed: result.total,
        final_from: None,
        answered,
    })
}

/// (c) over HTTPS: `curl` GETs the blob on the TLS listener into /dev/null.
fn curl_download(https: SocketAddr, source: &Source, ca: Option<&TestCa>) -> Result<Transfer, String> {
    let url = format!("https://{https}/v2/{REPO}/blobs/{}", source.digest);
    let result = curl(ca, &[&url])?;
    let answered = Instant::now();
    if result.status != 200 || result.size_download != source.bytes {
        return Err(format!(
            "GET {url}: status {}, {} of {} bytes received",
            result.status, result.size_download, source.bytes
        ));
    }
    Ok(Transfer {
        bytes: source.bytes,
        elapsed: result.total,
        final_from: None,
        answered,
    })
}

// ---------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------

/// A release server for one run of one case, over its own fresh data directory; killed and
/// the directory removed on drop (`Server`'s own guard).
struct BenchServer {
    server: Server,
    /// The TLS listener, in the HTTPS cases.
    https: Option<SocketAddr>,
}

impl BenchServer {
    fn start(case: &Case, ca: Option<&TestCa>) -> Result<BenchServer, String> {
        let mut options = Options {
            sync_to_disk: case.sync_to_disk,
            ..Options::default()
        };
        if case.transport == Transport::Https {
            let ca = ca.ok_or("an HTTPS case without the test CA")?;
            options = options.server_line(&format!(
                "tls = {{ server_certificate_bundle = \"{}\", server_private_key = \"{}\", port = 0 }}",
                ca.server_cert.display(),
                ca.server_key.display()
            ));
        }
        let mut server = BenchServer {
            server: Server::start_with(&options),
            https: None,
        };
        if case.transport == Transport::Https {
            server.https = Some(server.https_listener()?);
        }
        Ok(server)
    }

    /// The TLS listener's address, from the server's log (it listens on port 0).
    fn https_listener(&self) -> Result<SocketAddr, String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let found = self.server.logs().iter().find_map(|line| {
                let rest = line.split("listening for HTTPS on ").nth(1)?;
                rest.trim().parse::<SocketAddr>().ok()
            });
            if let Some(addr) = found {
                return Ok(addr);
            }
            if Instant::now() > deadline {
                return Err(self.with_log("no `listening for HTTPS on` line".to_string()));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `message` and the last lines the server logged.
    fn with_log(&self, message: String) -> String {
        let logs = self.server.logs();
        let tail = &logs[logs.len().saturating_sub(LOG_LINES_MAX)..];
        format!("{message}\nserver log (last lines):\n{}", tail.join("\n"))
    }
}

impl Deref for BenchServer {
    type Target = Server;

    fn deref(&self) -> &Server {
        &self.server
    }
}

// ---------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------

/// One case and its runs so far.
struct Row {
    case: Case,
    runs: Vec<Measure>,
}

/// The lines above the table: what ran where, so a figure is never read without its context.
fn header(settings: &Settings, space: &Space, load_before: &str) -> String {
    let cpu = cpu_model();
    let cores = thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!(
        "angos transfer benchmark: `{}`; {cores} cores ({cpu}), load average {load_before} at the \
         start and {} at the end; temporary directory {} ({}, {:.1} GiB free at the start); \
         {} MiB per transfer, each figure the median of its runs (up to {}); probe `GET /v2/` \
         every 2 ms after the previous answer on one keep-alive plain HTTP connection, the \
         figures over the probes sent until the final answer, the slowest around the final \
         request until {} ms after it; HTTPS transfers by curl; binary {ANGOS}",
        settings.command(),
        load_average(),
        space.dir.display(),
        space.fstype,
        gib(space.free_bytes),
        settings.mib,
        settings.runs,
        TAIL.as_millis()
    )
}

fn render(rows: &[Row]) -> String {
    let mut out = String::from(
        "| case | sync_to_disk | transfer over | probe p50 | probe p99 | probe max | final request \
         | slowest probe around it | MB/s | probes | runs |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in rows.iter().filter(|row| !row.runs.is_empty()) {
        let runs = &row.runs;
        let duration = |pick: fn(&Measure) -> Option<Duration>| {
            median_of(runs.iter().filter_map(pick).map(ms).collect())
                .map(|value| format!("{value:.2} ms"))
                .unwrap_or_else(|| "–".to_string())
        };
        let number =
            |pick: fn(&Measure) -> f64| median_of(runs.iter().map(pick).collect()).unwrap_or(f64::NAN);
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {} |\n",
            row.case.label(),
            row.case.sync_to_disk,
            row.case.transport.name(),
            duration(|m| Some(m.p50)),
            duration(|m| Some(m.p99)),
            duration(|m| Some(m.max)),
            duration(|m| m.final_wait),
            duration(|m| m.final_probe_max),
            number(|m| m.mb_per_sec),
            number(|m| m.probes as f64),
            runs.len()
        ));
    }
    out
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}
