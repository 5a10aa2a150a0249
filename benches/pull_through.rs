//! The pull-through cache benchmark (`cargo bench --bench pull_through`, `harness = false`,
//! issue 15): a blob pulled through the mirror against the same blob pulled straight from
//! its upstream, both the release binary on loopback. One upstream holds a
//! `BENCH_PULL_MIB` blob (1 GiB by default); each run starts a fresh mirror over it and
//! measures, in this order: a direct pull from the upstream (the reference), a cold pull
//! through the mirror (a miss: the mirror fills from the upstream while it streams to the
//! client), and a cached pull (a hit, from the mirror's disk). Each pull runs under the
//! benches' probe (`support/probe.rs`, `GET /v2/` every 2 ms on a keep-alive connection)
//! on the server the client reads from, so the cold row gives another client's latency
//! during a 1 GiB cache fill (the fairness issue's bounds apply to it). One markdown table
//! of medians goes to stdout. It measures and reports; it asserts nothing about the figures,
//! only that every pull got the whole blob (and, once per run, that the cached copy has the
//! right digest, else it measured something else). Every server and directory sits behind
//! a Drop guard, so an error or a panic still kills the servers and removes the data.
//!
//! Settings (environment): `BENCH_RUNS` (default 3) runs, `BENCH_PULL_MIB` (1024) the blob's
//! size.
// A benchmark times the real binary from outside: wall-clock reads are the point here, not
// a way around the driven clock (clippy.toml).
#![allow(clippy::disallowed_methods)]

// The end-to-end tests' support (the mirror's configuration lives in its `upstreams`);
// the bench uses part of it.
#[path = "../tests/e2e/common/mod.rs"]
#[allow(dead_code)]
mod common;
#[path = "support/shared.rs"]
#[allow(dead_code)]
mod shared;
// The well-behaved client, shared with the attack, transfer and gc benches.
#[path = "support/probe.rs"]
#[allow(dead_code)]
mod probe;

use angos::digest::{Digest, Hasher};
use common::upstreams::{MirrorRepo, UpstreamEntry};
use common::{Conn, OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, Options, Server, TempDir, url_path, with_query};
use probe::{Probe, percentile};
use shared::{
    Source, Space, connect, cpu_model, env_number, free_space, load_average, median_of, progress, settle,
    sink_body,
};
use std::fs::File;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::panic::{self, AssertUnwindSafe};
use std::process::{Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const ANGOS: &str = env!("CARGO_BIN_EXE_angos");

/// The repository on the upstream; the mirror's is `mirror/` in front of it.
const REPO: &str = "library/bench";
const MIRROR: &str = "mirror";
/// How long the probe goes on after a pull's last byte, so work the server does after it
/// (the fill's commit) still shows.
const TAIL: Duration = Duration::from_millis(100);
/// How long the bench waits for the mirror to report its fill done after the cold pull.
const FILL_SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Free space needed beyond three copies of the blob (the source file, the upstream's
/// and the mirror's).
const SPACE_SLACK_MIB: u64 = 256;
/// Server log lines shown in error messages.
const LOG_LINES_MAX: usize = 100;

struct Settings {
    runs: usize,
    mib: u64,
}

impl Settings {
    fn from_env() -> Result<Settings, String> {
        Ok(Settings {
            runs: env_number("BENCH_RUNS", 3, 1, 100)? as usize,
            mib: env_number("BENCH_PULL_MIB", 1024, 1, 1 << 20)?,
        })
    }

    fn bytes(&self) -> u64 {
        self.mib << 20
    }

    fn command(&self) -> String {
        format!(
            "BENCH_RUNS={} BENCH_PULL_MIB={} cargo bench --bench pull_through",
            self.runs, self.mib
        )
    }
}

/// The three pulls of a run, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    /// `GET` of the blob from the upstream itself: the reference.
    Direct,
    /// `GET` through a mirror that does not hold it yet: fill and stream at once.
    Cold,
    /// `GET` through the mirror again: from its disk.
    Cached,
}

impl Case {
    const ALL: [Case; 3] = [Case::Direct, Case::Cold, Case::Cached];

    fn label(self) -> &'static str {
        match self {
            Case::Direct => "direct from the upstream",
            Case::Cold => "cold, through the mirror (cache fill)",
            Case::Cached => "cached, through the mirror",
        }
    }
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without
    // it, only to check that it builds and starts: no pulls.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("benches/pull_through.rs: run it with `cargo bench --bench pull_through`");
        return ExitCode::SUCCESS;
    }
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let space = match preflight(&settings) {
        Ok(space) => space,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let load_before = load_average();
    let started = Instant::now();
    let mut rows: Vec<Row> = Case::ALL
        .into_iter()
        .map(|case| Row {
            case,
            runs: Vec::new(),
        })
        .collect();
    // The test support panics where the bench's own code returns an error (a server that
    // does not start); either way the runs measured so far print, and unwinding drops the
    // guards: servers killed, directories removed.
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| run_all(&settings, &mut rows)))
        .unwrap_or_else(|_| Err("a step panicked (its message is above)".to_string()));
    eprintln!(
        "pull_through: finished in {:.0} s",
        started.elapsed().as_secs_f64()
    );
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

/// `sync` and `df` (coreutils), and room for three copies of the blob in the temporary
/// directory (`TMPDIR` moves it).
fn preflight(settings: &Settings) -> Result<Space, String> {
    for (tool, arg) in [("sync", "--version"), ("df", "--version")] {
        match Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Ok(status) if status.success() => {}
            Ok(status) => return Err(format!("`{tool} {arg}` failed: {status}")),
            Err(e) => return Err(format!("cannot run {tool} ({e}); install coreutils")),
        }
    }
    let space = free_space(&std::env::temp_dir())?;
    let needed = 3 * settings.bytes() + (SPACE_SLACK_MIB << 20);
    if space.free_bytes < needed {
        return Err(format!(
            "the bench needs about {:.1} GiB free in the temporary directory {} (the source file, \
             the upstream's copy and the mirror's), and {:.1} GiB are; set TMPDIR to a roomier \
             directory or lower BENCH_PULL_MIB",
            gib(needed),
            space.dir.display(),
            gib(space.free_bytes)
        ));
    }
    Ok(space)
}

/// One upstream for all runs; a fresh mirror per run, so every cold pull is a miss.
fn run_all(settings: &Settings, rows: &mut [Row]) -> Result<(), String> {
    let work = TempDir::new("pull-bench");
    progress(&format!("writing the {} MiB source file", settings.mib));
    let source = Source::write(&work.path().join("blob.bin"), settings.bytes())?;
    let upstream = Server::start_with(&Options::default());
    progress("pushing it to the upstream");
    let layer_digest = push_image(upstream.addr, &source).map_err(|e| with_log(&upstream, e))?;
    settle()?;
    for run in 0..settings.runs {
        let mirror = MirrorRepo::new(
            MIRROR,
            vec![UpstreamEntry::new(&format!("http://{}", upstream.addr))],
        );
        let mirror = Server::start_with(&mirror.add_to(Options::default()));
        for row in rows.iter_mut() {
            progress(&format!(
                "run {} of {}: {}",
                run + 1,
                settings.runs,
                row.case.label()
            ));
            let (server, repo) = match row.case {
                Case::Direct => (&upstream, REPO.to_string()),
                Case::Cold | Case::Cached => (&mirror, format!("{MIRROR}/{REPO}")),
            };
            let path = format!("/v2/{repo}/blobs/{layer_digest}");
            let measure = measure(server, || pull(server.addr, &path, source.bytes))
                .map_err(|e| with_log(server, format!("{}: {e}", row.case.label())))?;
            if row.case == Case::Cold {
                wait_fill_done(&mirror)?;
            }
            progress(&format!("  {}", measure.describe()));
            row.runs.push(measure);
            settle()?;
        }
        check_cached_copy(&mirror, &layer_digest, &source).map_err(|e| with_log(&mirror, e))?;
    }
    Ok(())
}

/// `message` and the last lines `server` logged.
fn with_log(server: &Server, message: String) -> String {
    let logs = server.logs();
    let tail = &logs[logs.len().saturating_sub(LOG_LINES_MAX)..];
    format!("{message}\nserver log (last lines):\n{}", tail.join("\n"))
}

/// Until `/metrics` says no fill is in progress: the next case must not overlap the
/// fill's last writes.
fn wait_fill_done(mirror: &Server) -> Result<(), String> {
    let deadline = Instant::now() + FILL_SETTLE_TIMEOUT;
    loop {
        let metrics = mirror.get("/metrics").text();
        let in_progress = metrics
            .lines()
            .find(|line| line.starts_with("cache_fills_in_progress"))
            .and_then(|line| line.split_whitespace().last())
            .and_then(|value| value.parse::<f64>().ok());
        if in_progress == Some(0.0) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(with_log(
                mirror,
                format!(
                    "cache_fills_in_progress is {in_progress:?} {FILL_SETTLE_TIMEOUT:?} after the cold pull"
                ),
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The mirror's stored copy, read back once more and hashed: what the rows measured was
/// the blob.
fn check_cached_copy(mirror: &Server, layer_digest: &Digest, source: &Source) -> Result<(), String> {
    let path = format!("/v2/{MIRROR}/{REPO}/blobs/{layer_digest}");
    let mut client = connect(mirror.addr)?;
    client
        .try_send(&Conn::request_bytes("GET", &path, &[], b""))
        .map_err(|e| format!("GET {path}: {e}"))?;
    let head = client.read_head().map_err(|e| format!("GET {path}: {e}"))?;
    if head.status != 200 {
        return Err(format!("GET {path}: {}", head.describe()));
    }
    let mut hasher = Hasher::sha256();
    hasher.update(client.buffered());
    let mut received = client.buffered().len() as u64;
    let mut stream = client.stream();
    let mut chunk = vec![0u8; 1 << 20];
    while received < source.bytes {
        let n = stream.read(&mut chunk).map_err(|e| format!("GET {path}: {e}"))?;
        if n == 0 {
            break;
        }
        let n = n.min((source.bytes - received) as usize);
        hasher.update(&chunk[..n]);
        received += n as u64;
    }
    let got = hasher.digest();
    if received != source.bytes || got != source.digest {
        return Err(format!(
            "the mirror's copy: {received} of {} bytes, digest {got} (expected {})",
            source.bytes, source.digest
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The measurement
// ---------------------------------------------------------------------------

/// What a pull tells the measurement.
struct Pulled {
    bytes: u64,
    elapsed: Duration,
    answered: Instant,
    /// From the request to the response head: the cold pull's wait for the upstream.
    first_byte: Duration,
}

/// The figures of one run of one case.
struct Measure {
    p50: Duration,
    p99: Duration,
    max: Duration,
    probes: usize,
    mb_per_sec: f64,
    elapsed: Duration,
    first_byte: Duration,
}

impl Measure {
    fn describe(&self) -> String {
        format!(
            "{:.0} MB/s ({:.0} ms, first byte {:.2} ms); probe p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} probes)",
            self.mb_per_sec,
            ms(self.elapsed),
            ms(self.first_byte),
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            self.probes
        )
    }
}

/// Probes `server` from just before the pull until `TAIL` after its last byte; the
/// figures count the probes sent until the last byte (the quiet tail would outnumber them).
fn measure(server: &Server, pull: impl FnOnce() -> Result<Pulled, String>) -> Result<Measure, String> {
    let probe = Probe::start(server);
    let pulled = pull()?;
    thread::sleep(TAIL);
    let samples = probe.finish();
    let sorted = samples.sorted_sent_by(Some(pulled.answered));
    Ok(Measure {
        p50: percentile(&sorted, 50.0),
        p99: percentile(&sorted, 99.0),
        max: sorted.last().copied().unwrap_or_default(),
        probes: sorted.len(),
        mb_per_sec: pulled.bytes as f64 / 1e6 / pulled.elapsed.as_secs_f64(),
        elapsed: pulled.elapsed,
        first_byte: pulled.first_byte,
    })
}

/// `GET path` into a counting sink; the size is checked.
fn pull(addr: SocketAddr, path: &str, bytes: u64) -> Result<Pulled, String> {
    let what = format!("GET {path}");
    let mut client = connect(addr)?;
    let started = Instant::now();
    client
        .try_send(&Conn::request_bytes("GET", path, &[], b""))
        .map_err(|e| format!("{what}: {e}"))?;
    let head = client.read_head().map_err(|e| format!("{what}: {e}"))?;
    let first_byte = started.elapsed();
    if head.status != 200 {
        return Err(format!("{what}: {}", head.describe()));
    }
    if head.header("content-length") != Some(bytes.to_string().as_str()) {
        return Err(format!(
            "{what}: expected Content-Length {bytes}: {}",
            head.describe()
        ));
    }
    let received = sink_body(&client, bytes).map_err(|e| format!("{what}: {e}"))?;
    let answered = Instant::now();
    if received != bytes {
        return Err(format!("{what}: received {received} of {bytes} bytes"));
    }
    Ok(Pulled {
        bytes,
        elapsed: answered - started,
        answered,
        first_byte,
    })
}

// ---------------------------------------------------------------------------
// The upstream's content
// ---------------------------------------------------------------------------

/// Pushes the blob (one session, one `PUT ?digest=` streamed from the file), a small
/// config, and an OCI manifest over them tagged `v1`: what a client of the mirror would
/// resolve first. The blob's digest.
fn push_image(addr: SocketAddr, source: &Source) -> Result<Digest, String> {
    let mut client = connect(addr)?;
    let started = client
        .try_request(
            "POST",
            &format!("/v2/{REPO}/blobs/uploads/"),
            &[("Content-Length", "0")],
            b"",
        )
        .map_err(|e| format!("POST an upload session: {e}"))?;
    if started.status != 202 {
        return Err(format!("POST an upload session: {}", started.describe()));
    }
    let location = url_path(started.header("location").ok_or("POST: no Location")?);
    let path = with_query(&location, "digest", &source.digest.to_string());
    let length = source.bytes.to_string();
    let headers = [
        ("Content-Type", "application/octet-stream"),
        ("Content-Length", length.as_str()),
    ];
    client
        .try_send(&Conn::request_bytes("PUT", &path, &headers, b""))
        .map_err(|e| format!("PUT {path}: {e}"))?;
    let mut file = File::open(&source.path).map_err(|e| format!("{}: {e}", source.path.display()))?;
    // io::copy sends a file to a socket with sendfile: the client costs little.
    io::copy(&mut file, &mut client.stream()).map_err(|e| format!("PUT {path}: {e}"))?;
    let done = client
        .read_response("PUT")
        .map_err(|e| format!("PUT {path}: {e}"))?;
    if done.status != 201 {
        return Err(format!("PUT {path}: {}", done.describe()));
    }
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = format!("sha256:{}", common::sha256_hex(config));
    let posted = client
        .try_request(
            "POST",
            &format!("/v2/{REPO}/blobs/uploads/?digest={config_digest}"),
            &[("Content-Type", "application/octet-stream")],
            config,
        )
        .map_err(|e| format!("POST the config: {e}"))?;
    if posted.status != 201 {
        return Err(format!("POST the config: {}", posted.describe()));
    }
    let manifest = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{OCI_MANIFEST}\",\
         \"config\":{{\"mediaType\":\"{OCI_CONFIG}\",\"digest\":\"{config_digest}\",\"size\":{}}},\
         \"layers\":[{{\"mediaType\":\"{OCI_LAYER}\",\"digest\":\"{}\",\"size\":{}}}]}}",
        config.len(),
        source.digest,
        source.bytes
    );
    let put = client
        .try_request(
            "PUT",
            &format!("/v2/{REPO}/manifests/v1"),
            &[("Content-Type", OCI_MANIFEST)],
            manifest.as_bytes(),
        )
        .map_err(|e| format!("PUT the manifest: {e}"))?;
    if put.status != 201 {
        return Err(format!("PUT the manifest: {}", put.describe()));
    }
    Ok(source.digest.clone())
}

// ---------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------

struct Row {
    case: Case,
    runs: Vec<Measure>,
}

/// The lines above the table: what ran where, so a figure is never read without its context.
fn header(settings: &Settings, space: &Space, load_before: &str) -> String {
    let cpu = cpu_model();
    let cores = thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!(
        "angos pull-through cache benchmark: `{}`; {cores} cores ({cpu}), load average \
         {load_before} at the start and {} at the end; temporary directory {} ({}, {:.1} GiB \
         free at the start); one {} MiB blob, each figure the median of its runs (up to {}); \
         upstream and mirror both this build on loopback, a fresh mirror per run; probe \
         `GET /v2/` every 2 ms after the previous answer on one keep-alive connection to the \
         server the pull reads from, the figures over the probes sent until the pull's last \
         byte; `overhead` is the pull's time against the direct pull's; binary {ANGOS}",
        settings.command(),
        load_average(),
        space.dir.display(),
        space.fstype,
        gib(space.free_bytes),
        settings.mib,
        settings.runs,
    )
}

fn render(rows: &[Row]) -> String {
    let mut out = String::from(
        "| pull | MB/s | time | overhead | first byte | probe p50 | probe p99 | probe max | probes | runs |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let median = |row: &Row, pick: fn(&Measure) -> f64| median_of(row.runs.iter().map(pick).collect());
    let direct = rows
        .iter()
        .find(|row| row.case == Case::Direct)
        .and_then(|row| median(row, |m| ms(m.elapsed)));
    for row in rows.iter().filter(|row| !row.runs.is_empty()) {
        let millis = |pick: fn(&Measure) -> f64| {
            median(row, pick)
                .map(|value| format!("{value:.2} ms"))
                .unwrap_or_else(|| "–".to_string())
        };
        let time = median(row, |m| ms(m.elapsed));
        let overhead = match (row.case, time, direct) {
            (Case::Direct, _, _) => "–".to_string(),
            (_, Some(time), Some(direct)) if direct > 0.0 => {
                format!("{:+.0} %", (time / direct - 1.0) * 100.0)
            }
            _ => "–".to_string(),
        };
        out.push_str(&format!(
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {:.0} | {} |\n",
            row.case.label(),
            median(row, |m| m.mb_per_sec).unwrap_or(f64::NAN),
            millis(|m| ms(m.elapsed)),
            overhead,
            millis(|m| ms(m.first_byte)),
            millis(|m| ms(m.p50)),
            millis(|m| ms(m.p99)),
            millis(|m| ms(m.max)),
            median(row, |m| m.probes as f64).unwrap_or(f64::NAN),
            row.runs.len()
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
