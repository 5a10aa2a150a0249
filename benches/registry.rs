//! The benchmark program (`cargo bench --bench registry`, `harness = false`): it starts the release
//! `angos` binary on loopback, drives it with `wrk` and std-only clients, and prints one markdown
//! table of medians. It measures and reports; it asserts nothing about the figures. It must leave
//! nothing behind: every server child, receiver thread and temporary directory sits behind a Drop
//! guard, so a panic half-way still kills the servers and removes the data.
//!
//! The server launcher, the HTTP client and the webhook receivers are the end-to-end tests' own
//! (`tests/e2e/common`, `tests/e2e/webhook_support/receiver.rs`); this file holds what is measured
//! and how.
//!
//! Settings (environment): `BENCH_RUNS` (default 5) runs per figure, `BENCH_SECS` (default 5)
//! seconds per load run, `BENCH_PUSHES` (default 2000) pushes per latency run, `BENCH_ONLY` (a
//! comma list of sections, see `SECTIONS`), `BENCH_KEEP=1` to keep the temporary directory,
//! `BENCH_SYNC=1` to run the server with `sync_to_disk = true`, `BENCH_BASELINE=<path of another
//! angos binary>` to run the sections of `COMPARED` on that binary too, run by run alternately
//! with this build, and print both medians side by side.
// A benchmark times the real binary from outside: wall-clock reads are the point here, not
// a way around the driven clock (clippy.toml).
#![allow(clippy::disallowed_methods)]

// The end-to-end tests' support (the webhook receiver alone of webhook_support); the bench
// uses only part of each module.
#[path = "../tests/e2e/common/mod.rs"]
#[allow(dead_code)]
mod common;
#[path = "../tests/e2e/webhook_support/receiver.rs"]
#[allow(dead_code)]
mod receiver;
// Shared with the transfer and gc benches; each uses part of it.
#[path = "support/shared.rs"]
#[allow(dead_code)]
mod shared;

use angos::digest::{Digest, Hasher};
use common::{
    Conn, OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, Options, Response, Server, open_files_soft_limit,
    pseudo_random_bytes,
};
use receiver::{Receiver, Reply};
use shared::{connect, cpu_model, env_number, load_average, progress, sink_body};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::Deref;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

const ANGOS: &str = env!("CARGO_BIN_EXE_angos");

/// The blob of the upload and download rows (the 256 MiB).
const BLOB_BYTES: u64 = 256 << 20;
/// Keep-alive connection counts of the manifest GET rows.
const GET_CONNECTIONS: [usize; 3] = [1, 16, 256];
/// Idle connections held open for the RSS row.
const IDLE_CONNECTIONS: usize = 10_000;
/// Idle connections opened before waiting for the server to accept them; well under the
/// listen backlog (128 here, `ss -ltn` shows it).
const CONNECT_BATCH: usize = 64;
/// Async events held in the queue for the RSS row.
const QUEUED_EVENTS: usize = 10_000;
/// Open files the bench (and the server, which inherits the limit) needs: the idle
/// connections, plus wrk, receivers, data files and some slack.
const NOFILE_MIN: u64 = IDLE_CONNECTIONS as u64 + 1_000;
/// Client threads firing manifest GETs in the async delivery row.
const PULL_THREADS: usize = 4;
/// Warm-up before the async delivery window opens (fills the queue, opens the outbound connection).
const ASYNC_WARMUP: Duration = Duration::from_secs(1);
/// Layer size of each latency push.
const PUSH_LAYER_BYTES: usize = 1024;
/// Server log lines shown in error messages.
const LOG_LINES_MAX: usize = 200;

/// What the environment asked for.
#[derive(Clone, Debug)]
struct Settings {
    runs: usize,
    secs: u64,
    pushes: usize,
    /// Sections to run (`BENCH_ONLY=get,blob`); empty runs them all.
    only: Vec<String>,
    /// Another angos binary to compare with (`BENCH_BASELINE`).
    baseline: Option<PathBuf>,
}

impl Settings {
    fn from_env() -> Result<Settings, String> {
        Ok(Settings {
            runs: env_number("BENCH_RUNS", 5, 1, 1_000)? as usize,
            secs: env_number("BENCH_SECS", 5, 1, 3_600)?,
            pushes: env_number("BENCH_PUSHES", 2_000, 10, 1_000_000)? as usize,
            only: match std::env::var("BENCH_ONLY") {
                Ok(list) => {
                    let only: Vec<String> = list.split(',').map(|s| s.trim().to_string()).collect();
                    if let Some(bad) = only.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
                        return Err(format!(
                            "BENCH_ONLY: unknown section {bad:?}; known: {}",
                            SECTIONS.join(",")
                        ));
                    }
                    only
                }
                Err(_) => Vec::new(),
            },
            baseline: match std::env::var_os("BENCH_BASELINE") {
                Some(path) if !path.is_empty() => {
                    let path = PathBuf::from(path);
                    if !path.is_file() {
                        return Err(format!(
                            "BENCH_BASELINE={}: not a file (the path of another angos binary)",
                            path.display()
                        ));
                    }
                    Some(path)
                }
                _ => None,
            },
        })
    }

    fn wants(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }

    /// The binary `build` names.
    fn binary(&self, build: Build) -> &Path {
        match build {
            Build::This => Path::new(ANGOS),
            Build::Baseline => self
                .baseline
                .as_deref()
                .expect("a baseline build only under BENCH_BASELINE"),
        }
    }

    /// Every build a compared section measures, the baseline first.
    fn builds(&self) -> Vec<Build> {
        match self.baseline {
            Some(_) => vec![Build::Baseline, Build::This],
            None => vec![Build::This],
        }
    }

    /// The builds in the order run `run` of a compared section measures them: the baseline
    /// first in even runs and second in odd ones, so neither build always runs on what the
    /// other left behind (caches, a warmer CPU).
    fn builds_in_run(&self, run: usize) -> Vec<Build> {
        let mut builds = self.builds();
        if run % 2 == 1 {
            builds.reverse();
        }
        builds
    }
}

/// The sections `BENCH_ONLY` can name, in the order they run.
const SECTIONS: [&str; 8] = ["size", "idle", "get", "conns", "blob", "push", "async", "queue"];
/// The sections that measure the `BENCH_BASELINE` binary too; the others measure this build.
const COMPARED: [&str; 5] = ["size", "idle", "get", "blob", "push"];

/// Which binary a figure comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Build {
    /// `BENCH_BASELINE`.
    Baseline,
    /// The release binary cargo built for this bench.
    This,
}

impl Build {
    /// How progress lines name the build.
    fn label(self) -> &'static str {
        match self {
            Build::Baseline => " (baseline)",
            Build::This => "",
        }
    }
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
    // binary without it, only to check that it builds and starts: no load runs.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("benches/registry.rs: run it with `cargo bench --bench registry`");
        return ExitCode::SUCCESS;
    }
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    if let Err(message) = preflight() {
        eprintln!("error: {message}");
        return ExitCode::from(2);
    }
    let started = Instant::now();
    let work = WorkDir::new();
    let mut table = Table::new(settings.baseline.is_some());
    // The test support panics where the bench's own code returns an error (a server that
    // does not start, a request that fails); either way the rows measured so far print.
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| run_all(&settings, &work, &mut table)))
        .unwrap_or_else(|_| Err("a step panicked (its message is above)".to_string()));
    eprintln!("bench: finished in {:.0} s", started.elapsed().as_secs_f64());
    println!();
    println!("{}", header(&settings));
    println!("{}", table.render());
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Checks what the bench needs before starting anything: wrk, sha256sum, cat, and an open
/// file limit high enough for the idle-connection row.
fn preflight() -> Result<(), String> {
    match Command::new("wrk")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(
                "wrk is not installed; install it with `apt-get install wrk` (Debian/Ubuntu) \
                 and run the bench again"
                    .to_string(),
            );
        }
        Err(e) => return Err(format!("cannot run wrk: {e}")),
    }
    for tool in ["sha256sum", "cat"] {
        if let Err(e) = Command::new(tool).arg("--version").stdout(Stdio::null()).status() {
            return Err(format!("cannot run {tool} (coreutils): {e}"));
        }
    }
    let limit = open_files_soft_limit().ok_or("cannot read the open file limit from /proc/self/limits")?;
    if limit < NOFILE_MIN {
        return Err(format!(
            "the open file limit is {limit}, but the {IDLE_CONNECTIONS}-idle-connection row needs at \
             least {NOFILE_MIN} (the server inherits the bench's limit); run \
             `ulimit -n 65536; cargo bench --bench registry` (where the hard limit is lower, \
             `ulimit -n $(ulimit -Hn)` if that is at least {NOFILE_MIN})"
        ));
    }
    Ok(())
}

/// The lines above the table: what ran where, so a figure is never read without its context.
fn header(settings: &Settings) -> String {
    let cpu = cpu_model();
    let cores = thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let load = load_average();
    let mut header = format!(
        "angos benchmark: {cores} cores ({cpu}), load average {load} at the end; median of {} runs, \
         {} s per load run, {} pushes per latency run; binary {ANGOS}",
        settings.runs, settings.secs, settings.pushes
    );
    if let Some(baseline) = &settings.baseline {
        let _ = write!(
            header,
            "; baseline {} (sections {}, its runs alternating with this build's)",
            baseline.display(),
            COMPARED.join(", ")
        );
    }
    header
}

/// Every measurement, in table order. Each step adds its rows as soon as it has them, so
/// a failure later still prints what was measured.
fn run_all(settings: &Settings, work: &WorkDir, table: &mut Table) -> Result<(), String> {
    if settings.wants("size") {
        bench_binary_size(settings, table)?;
    }
    if settings.wants("idle") {
        bench_idle_rss(settings, work, table)?;
    }
    if settings.wants("get") || settings.wants("conns") || settings.wants("blob") {
        let compared = settings.wants("get") || settings.wants("blob");
        let servers = Servers::start(settings, work, "main", &plain_options(), compared)?;
        if settings.wants("get") {
            bench_manifest_get(settings, &servers, table)?;
        }
        if settings.wants("conns") {
            let server = &servers.this;
            bench_idle_connections(settings, server, table).map_err(|e| server.with_log(e))?;
        }
        if settings.wants("blob") {
            bench_blob(settings, work, &servers, table)?;
        }
    }
    if settings.wants("push") || settings.wants("async") {
        bench_webhooks(settings, work, table)?;
    }
    if settings.wants("queue") {
        bench_queued_events(settings, work, table)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The figures
// ---------------------------------------------------------------------------

fn bench_binary_size(settings: &Settings, table: &mut Table) -> Result<(), String> {
    let mut sizes = Series::default();
    for build in settings.builds() {
        let binary = settings.binary(build);
        let bytes = std::fs::metadata(binary)
            .map_err(|e| format!("{}: {e}", binary.display()))?
            .len();
        sizes.push(build, bytes as f64);
    }
    let bytes = sizes.this[0] as u64;
    table.compared(
        "binary size (stripped release)",
        sizes,
        0,
        "bytes",
        format!("{:.2} MiB; `ls -l {ANGOS}` (profile.release strips)", mib(bytes)),
    );
    Ok(())
}

fn bench_idle_rss(settings: &Settings, work: &WorkDir, table: &mut Table) -> Result<(), String> {
    progress("RSS idle after start");
    let mut samples = Series::default();
    for run in 0..settings.runs {
        for build in settings.builds_in_run(run) {
            let server = BenchServer::start(settings, work, "idle", build, &Options::default())?;
            thread::sleep(Duration::from_millis(500));
            samples.push(build, mib(rss_bytes(server.pid())?));
        }
    }
    table.compared(
        "RSS idle after start",
        samples,
        2,
        "MiB",
        "VmRSS 0.5 s after `listening on`, built-in defaults, a fresh server per run".to_string(),
    );
    Ok(())
}

fn manifest_url(server: &Server) -> String {
    format!("http://{}/v2/bench/app/manifests/latest", server.addr)
}

fn bench_manifest_get(settings: &Settings, servers: &Servers, table: &mut Table) -> Result<(), String> {
    let mut manifest_bytes = 0;
    for build in settings.builds() {
        let server = servers.get(build);
        let manifest =
            push_image(server.addr, "bench/app", "latest", b"bench").map_err(|e| server.with_log(e))?;
        manifest_bytes = manifest.len();
        // One short run first: the first requests fault in the binary and fill the manifest cache.
        wrk(&manifest_url(server), 16, 1).map_err(|e| server.with_log(e))?;
    }
    let mut rss_under_load = Series::default();
    for connections in GET_CONNECTIONS {
        progress(&format!("manifest GET at {connections} connections"));
        let mut rates = Series::default();
        let mut p99s = Series::default();
        let mut socket_errors = Vec::new();
        for run in 0..settings.runs {
            for build in settings.builds_in_run(run) {
                let server = servers.get(build);
                let sampler = (connections == 256).then(|| RssSampler::start(server.pid()));
                let result =
                    wrk(&manifest_url(server), connections, settings.secs).map_err(|e| server.with_log(e))?;
                if let Some(sampler) = sampler {
                    rss_under_load.push(build, mib(sampler.finish()));
                }
                rates.push(build, result.requests_per_sec);
                p99s.push(build, result.p99_ms);
                if let Some(errors) = result.socket_errors {
                    socket_errors.push(format!("{errors}{}", build.label()));
                }
            }
        }
        let threads = wrk_threads(connections);
        let mut command = format!(
            "`wrk -t{threads} -c{connections} -d{}s --latency -H 'Accept: {OCI_MANIFEST}'`, {manifest_bytes} B manifest",
            settings.secs,
        );
        if !socket_errors.is_empty() {
            let _ = write!(command, "; wrk socket errors: {}", socket_errors.join("; "));
        }
        table.compared(
            &format!("manifest GET, {connections} keep-alive connection(s)"),
            rates,
            0,
            "requests/s",
            command.clone(),
        );
        table.compared(
            &format!("manifest GET p99 latency, {connections} connection(s)"),
            p99s,
            3,
            "ms",
            format!(
                "wrk --latency 99th percentile, same runs{}",
                threads_note(connections)
            ),
        );
    }
    table.compared(
        "RSS under load",
        rss_under_load,
        2,
        "MiB",
        "peak VmRSS sampled every 100 ms during the 256-connection GET runs".to_string(),
    );
    Ok(())
}

fn wrk_threads(connections: usize) -> usize {
    // wrk refuses fewer connections than threads.
    connections.min(2)
}

fn threads_note(connections: usize) -> &'static str {
    if wrk_threads(connections) < 2 {
        " (-t1: wrk needs a connection per thread)"
    } else {
        ""
    }
}

fn bench_idle_connections(settings: &Settings, server: &Server, table: &mut Table) -> Result<(), String> {
    progress(&format!("RSS with {IDLE_CONNECTIONS} idle connections"));
    let mut samples = Vec::new();
    // Later runs start from what the first one left allocated; the first baseline is the one
    // that says what the connections cost.
    let baseline = mib(rss_bytes(server.pid())?);
    for _ in 0..settings.runs {
        let mut conns = Vec::with_capacity(IDLE_CONNECTIONS);
        while conns.len() < IDLE_CONNECTIONS {
            for _ in 0..CONNECT_BATCH.min(IDLE_CONNECTIONS - conns.len()) {
                let stream = TcpStream::connect(server.addr)
                    .map_err(|e| format!("idle connection {} of {IDLE_CONNECTIONS}: {e}", conns.len()))?;
                conns.push(stream);
            }
            // The reactor accepts until WouldBlock and the kernel queues in order, so once a
            // later connection is answered every earlier one has been accepted. Waiting for
            // that keeps the listen queue from overflowing: an overflow drops the handshake's
            // last ACK, and such a connection stalls for a SYN-ACK retransmission or is reset.
            let health = request(&mut connect(server.addr)?, "GET", "/healthz", &[], b"")?;
            if health.status != 200 {
                return Err(format!(
                    "GET /healthz with idle connections open: {}",
                    health.status
                ));
            }
        }
        thread::sleep(Duration::from_millis(300));
        samples.push(mib(rss_bytes(server.pid())?));
        // Any of them closed by the server (connection limit, timeout) would make the figure a lie.
        let closed = count_closed(&conns);
        if closed > 0 {
            return Err(format!(
                "{closed} of the {IDLE_CONNECTIONS} idle connections were closed by the server"
            ));
        }
        drop(conns);
        thread::sleep(Duration::from_millis(500));
    }
    table.row(
        &format!("RSS with {IDLE_CONNECTIONS} idle connections"),
        samples,
        2,
        "MiB",
        format!(
            "VmRSS with {IDLE_CONNECTIONS} accepted connections that sent nothing (the GET rows' server, \
             {baseline:.2} MiB before the first run opened them)"
        ),
    );
    Ok(())
}

/// How many of `conns` the peer closed (a read returns 0 or an error at once).
fn count_closed(conns: &[TcpStream]) -> usize {
    let mut closed = 0;
    for conn in conns {
        if conn.set_nonblocking(true).is_err() {
            closed += 1;
            continue;
        }
        let mut byte = [0u8; 1];
        match (&*conn).read(&mut byte) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            _ => closed += 1,
        }
    }
    closed
}

fn bench_blob(
    settings: &Settings,
    work: &WorkDir,
    servers: &Servers,
    table: &mut Table,
) -> Result<(), String> {
    progress("256 MiB blob: writing the random file");
    let path = work.path().join("blob.bin");
    let digest = write_random_file(&path, BLOB_BYTES).map_err(|e| format!("{}: {e}", path.display()))?;
    // Read it once so every reader below starts from the page cache, like the server does.
    run_timed(Command::new("cat").arg(&path), false)?;

    let mut uploads = Series::default();
    let mut downloads = Series::default();
    let mut sha256sums = Vec::new();
    let mut cats = Vec::new();
    let mut own_hashes = Vec::new();
    for run in 0..settings.runs {
        progress(&format!("256 MiB blob: run {} of {}", run + 1, settings.runs));
        let repo = format!("blob/r{run}");
        for build in settings.builds_in_run(run) {
            let server = servers.get(build);
            let elapsed = upload_blob(server.addr, &repo, &digest, &path, BLOB_BYTES)
                .map_err(|e| server.with_log(e))?;
            uploads.push(build, mb_per_sec(BLOB_BYTES, elapsed));
            let elapsed =
                download_blob(server.addr, &repo, &digest, BLOB_BYTES).map_err(|e| server.with_log(e))?;
            downloads.push(build, mb_per_sec(BLOB_BYTES, elapsed));
        }

        let (elapsed, output) = run_timed(Command::new("sha256sum").arg(&path), true)?;
        if !output.starts_with(digest.hex()) {
            return Err(format!(
                "sha256sum disagrees with the bench's digest {digest}: {output}"
            ));
        }
        sha256sums.push(mb_per_sec(BLOB_BYTES, elapsed));
        let (elapsed, _) = run_timed(Command::new("cat").arg(&path), false)?;
        cats.push(mb_per_sec(BLOB_BYTES, elapsed));
        let (elapsed, own) = hash_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if own != digest {
            return Err(format!(
                "hashing {} again gave {own}, not {digest}",
                path.display()
            ));
        }
        own_hashes.push(mb_per_sec(BLOB_BYTES, elapsed));
    }
    table.compared(
        "blob upload, 256 MiB",
        uploads,
        0,
        "MB/s",
        "monolithic `POST /v2/<name>/blobs/uploads/?digest=` with Content-Length, one std TcpStream \
         fed by io::copy from the cached file; until the 201"
            .to_string(),
    );
    table.row(
        "limit: sha256sum of the same file",
        sha256sums,
        0,
        "MB/s",
        "`sha256sum FILE` as a subprocess, page-cached file (the upload's ceiling; coreutils' own \
         SHA-256 may not use the CPU's SHA instructions, see the next row)"
            .to_string(),
    );
    table.row(
        "limit: the crate's SHA-256 over the same file",
        own_hashes,
        0,
        "MB/s",
        "`angos::digest::Hasher` (the `sha2` code the server runs, SHA instructions when the CPU has \
         them) over 1 MiB reads of the page-cached file, in the bench process"
            .to_string(),
    );
    table.compared(
        "blob download, 256 MiB",
        downloads,
        0,
        "MB/s",
        "`GET /v2/<name>/blobs/<digest>` into a counting sink; size verified".to_string(),
    );
    table.row(
        "limit: cat of the same file",
        cats,
        0,
        "MB/s",
        "`cat FILE > /dev/null` as a subprocess, page-cached file (the download's ceiling)".to_string(),
    );
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// SHA-256 of the file at `path` with the crate's hasher, read in 1 MiB pieces; the time it took.
fn hash_file(path: &Path) -> io::Result<(Duration, Digest)> {
    let start = Instant::now();
    let mut file = File::open(path)?;
    let mut hasher = Hasher::sha256();
    let mut piece = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut piece) {
            Ok(0) => break,
            Ok(n) => hasher.update(&piece[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let digest = hasher.digest();
    Ok((start.elapsed(), digest))
}

/// Push latency with and without a required webhook, and async delivery throughput, on one
/// server whose repositories route differently: `plain/...` has no webhook, `hooked/...` one
/// `required` webhook on manifest.push, `events/...` one `async` webhook on manifest.pull.
/// Under `BENCH_BASELINE` the baseline gets a server of its own with the same receivers for
/// the push rows; the async row measures this build alone.
fn bench_webhooks(settings: &Settings, work: &WorkDir, table: &mut Table) -> Result<(), String> {
    let required = Receiver::counting(Reply::status(204));
    let deliveries = Receiver::counting(Reply::status(204));
    let options = Options {
        global: vec![
            "event_webhook_queue_length = 100000".to_string(),
            // An interrupted bench (Ctrl-C reaches the servers too) should not leave a server
            // draining its queue for the default 30 s.
            "shutdown_drain_secs = 1".to_string(),
        ],
        tables: vec![format!(
            "[event_webhook.required_hook]\nurl = \"{}\"\npolicy = \"required\"\n\
             events = [\"manifest.push\"]\n\n\
             [event_webhook.async_hook]\nurl = \"{}\"\npolicy = \"async\"\n\
             events = [\"manifest.pull\"]\n\n\
             [repository.\"hooked\"]\nevent_webhooks = [\"required_hook\"]\n\n\
             [repository.\"events\"]\nevent_webhooks = [\"async_hook\"]\n",
            required.url("/hook"),
            deliveries.url("/events")
        )],
        ..plain_options()
    };
    let mut servers = Servers::start(settings, work, "webhooks", &options, settings.wants("push"))?;
    if settings.wants("push") {
        bench_push_latency(settings, &servers, &required, table)?;
    }
    drop(servers.baseline.take());
    if settings.wants("async") {
        let server = &servers.this;
        bench_async_deliveries(settings, server, &deliveries, table).map_err(|e| server.with_log(e))?;
    }
    drop(servers);
    drop(required);
    drop(deliveries);
    Ok(())
}

fn bench_push_latency(
    settings: &Settings,
    servers: &Servers,
    required: &Receiver,
    table: &mut Table,
) -> Result<(), String> {
    let mut plain = (Series::default(), Series::default());
    let mut hooked = (Series::default(), Series::default());
    for run in 0..settings.runs {
        for build in settings.builds_in_run(run) {
            let server = servers.get(build);
            for (repo, out) in [("plain/app", &mut plain), ("hooked/app", &mut hooked)] {
                progress(&format!(
                    "push latency {repo}{}: run {} of {}",
                    build.label(),
                    run + 1,
                    settings.runs
                ));
                let before = required.count();
                let mut latencies =
                    push_series(server.addr, repo, run, settings.pushes).map_err(|e| server.with_log(e))?;
                let delivered = required.count() - before;
                let expected = if repo.starts_with("hooked") {
                    settings.pushes
                } else {
                    0
                };
                if delivered != expected {
                    return Err(server.with_log(format!(
                        "{repo}: the required receiver got {delivered} deliveries for {} pushes",
                        settings.pushes
                    )));
                }
                out.0.push(build, percentile(&mut latencies, 50.0));
                out.1.push(build, percentile(&mut latencies, 99.0));
            }
        }
    }
    let what = format!(
        "manifest `PUT /v2/<name>/manifests/<tag>` round trip, after a monolithic blob POST, {} pushes \
         per run, one keep-alive connection, a new tag each",
        settings.pushes
    );
    // Differences per run (the two series of a run ran back to back on the same server).
    let added_p50 = Series::difference(&hooked.0, &plain.0);
    let added_p99 = Series::difference(&hooked.1, &plain.1);
    table.compared("push latency p50, no webhook", plain.0, 3, "ms", what.clone());
    table.compared("push latency p99, no webhook", plain.1, 3, "ms", what);
    let hook = "the same, one `required` webhook on manifest.push to a loopback receiver answering \
                `204 No Content` at once";
    table.compared(
        "push latency p50, required webhook",
        hooked.0,
        3,
        "ms",
        hook.to_string(),
    );
    table.compared(
        "push latency p99, required webhook",
        hooked.1,
        3,
        "ms",
        hook.to_string(),
    );
    table.compared(
        "added latency p50, required webhook",
        added_p50,
        3,
        "ms",
        "per run, p50 with the webhook minus p50 without; the median of those differences".to_string(),
    );
    table.compared(
        "added latency p99, required webhook",
        added_p99,
        3,
        "ms",
        "per run, p99 with the webhook minus p99 without; the median of those differences".to_string(),
    );

    Ok(())
}

fn bench_async_deliveries(
    settings: &Settings,
    server: &Server,
    deliveries: &Receiver,
    table: &mut Table,
) -> Result<(), String> {
    push_image(server.addr, "events/app", "latest", b"events")?;
    let mut rates = Vec::new();
    let mut pull_rates = Vec::new();
    let mut dropped_total = 0.0;
    for run in 0..settings.runs {
        progress(&format!("async deliveries: run {} of {}", run + 1, settings.runs));
        let dropped_before = webhook_metric(server.addr, "event_webhook_queue_dropped_total", "async_hook")?;
        let pullers = Pullers::start(server.addr, "/v2/events/app/manifests/latest", PULL_THREADS);
        thread::sleep(ASYNC_WARMUP);
        let (delivered0, pulls0, t0) = (deliveries.count(), pullers.pulls(), Instant::now());
        thread::sleep(Duration::from_secs(settings.secs));
        let (delivered1, pulls1, elapsed) = (deliveries.count(), pullers.pulls(), t0.elapsed());
        pullers.finish()?;
        if delivered1 == delivered0 {
            return Err(format!("no async delivery arrived in {} s", settings.secs));
        }
        rates.push((delivered1 - delivered0) as f64 / elapsed.as_secs_f64());
        pull_rates.push((pulls1 - pulls0) as f64 / elapsed.as_secs_f64());
        let dropped_after = webhook_metric(server.addr, "event_webhook_queue_dropped_total", "async_hook")?;
        dropped_total += dropped_after - dropped_before;
    }
    let pulls = median(&mut pull_rates);
    table.row(
        "async events delivered",
        rates,
        0,
        "events/s",
        format!(
            "one `async` webhook on manifest.pull to a loopback 204 receiver, counted over {} s after {} s \
             warm-up while {PULL_THREADS} keep-alive client threads pull flat out ({pulls:.0} pulls/s); \
             queue length 100000, {dropped_total:.0} events dropped over all runs",
            settings.secs,
            ASYNC_WARMUP.as_secs()
        ),
    );
    Ok(())
}

fn bench_queued_events(settings: &Settings, work: &WorkDir, table: &mut Table) -> Result<(), String> {
    progress(&format!("RSS with {QUEUED_EVENTS} queued async events"));
    let hang = Receiver::counting(Reply::Hang);
    let options = Options {
        global: vec![
            format!("event_webhook_queue_length = {}", QUEUED_EVENTS * 2),
            "shutdown_drain_secs = 1".to_string(),
            "event_webhooks = [\"sink\"]".to_string(),
        ],
        tables: vec![format!(
            "[event_webhook.sink]\nurl = \"{}\"\npolicy = \"async\"\n\
             events = [\"manifest.pull\"]\ntimeout_ms = 3600000\nmax_retries = 0\n",
            hang.url("/events")
        )],
        ..plain_options()
    };
    let mut samples = Vec::new();
    let mut baseline = Vec::new();
    let mut depths = Vec::new();
    for _ in 0..settings.runs {
        let server = BenchServer::start(settings, work, "queue", Build::This, &options)?;
        push_image(server.addr, "queue/app", "latest", b"queue")?;
        thread::sleep(Duration::from_millis(200));
        baseline.push(mib(rss_bytes(server.pid())?));
        // One more than the target: the first event is in flight to the receiver, not queued.
        let mut client = connect(server.addr)?;
        for _ in 0..=QUEUED_EVENTS {
            let reply = request(
                &mut client,
                "GET",
                "/v2/queue/app/manifests/latest",
                &[("Accept", OCI_MANIFEST)],
                b"",
            )?;
            if reply.status != 200 {
                return Err(format!("manifest GET answered {}", reply.status));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let depth = loop {
            let depth = webhook_metric(server.addr, "event_webhook_queue_depth", "sink")?;
            if depth >= QUEUED_EVENTS as f64 || Instant::now() > deadline {
                break depth;
            }
            thread::sleep(Duration::from_millis(50));
        };
        if depth < QUEUED_EVENTS as f64 {
            return Err(format!(
                "event_webhook_queue_depth stayed at {depth}, not {QUEUED_EVENTS}"
            ));
        }
        samples.push(mib(rss_bytes(server.pid())?));
        depths.push(depth);
    }
    table.row(
        &format!("RSS with {QUEUED_EVENTS} queued async events"),
        samples,
        2,
        "MiB",
        format!(
            "VmRSS after {} manifest GETs with one `async` manifest.pull webhook to a receiver that never \
             answers (timeout_ms 3600000); event_webhook_queue_depth {:.0}; {:.2} MiB before the pulls",
            QUEUED_EVENTS + 1,
            median(&mut depths),
            median(&mut baseline)
        ),
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Work generators
// ---------------------------------------------------------------------------

/// `pushes` pushes to `repo`, each a unique 1 KiB layer by monolithic POST and a manifest PUT
/// under a new tag; the manifest PUT round trips in milliseconds.
fn push_series(addr: SocketAddr, repo: &str, run: usize, pushes: usize) -> Result<Vec<f64>, String> {
    let mut client = connect(addr)?;
    let config = format!("{{\"bench\":\"{repo}\"}}").into_bytes();
    let config_digest = push_blob(&mut client, repo, &config)?;
    let mut latencies = Vec::with_capacity(pushes);
    for i in 0..pushes {
        let seed = (run as u64) << 32 | i as u64;
        let layer = pseudo_random_bytes(seed ^ 0x5eed, PUSH_LAYER_BYTES);
        let layer_digest = push_blob(&mut client, repo, &layer)?;
        let manifest = manifest_json(&config_digest, config.len(), &layer_digest, layer.len());
        let path = format!("/v2/{repo}/manifests/r{run}-{i}");
        let start = Instant::now();
        let reply = request(
            &mut client,
            "PUT",
            &path,
            &[("Content-Type", OCI_MANIFEST)],
            manifest.as_bytes(),
        )?;
        latencies.push(start.elapsed().as_secs_f64() * 1_000.0);
        if reply.status != 201 {
            return Err(format!("PUT {path}: {} {}", reply.status, reply.text()));
        }
    }
    Ok(latencies)
}

/// Pushes a config and a layer derived from `seed` and a manifest over them under `tag`;
/// returns the manifest.
fn push_image(addr: SocketAddr, repo: &str, tag: &str, seed: &[u8]) -> Result<String, String> {
    let mut client = connect(addr)?;
    let config = format!("{{\"seed\":\"{}\"}}", String::from_utf8_lossy(seed)).into_bytes();
    let layer = pseudo_random_bytes(seed.iter().map(|&b| u64::from(b)).sum(), 4096);
    let config_digest = push_blob(&mut client, repo, &config)?;
    let layer_digest = push_blob(&mut client, repo, &layer)?;
    let manifest = manifest_json(&config_digest, config.len(), &layer_digest, layer.len());
    let path = format!("/v2/{repo}/manifests/{tag}");
    let reply = request(
        &mut client,
        "PUT",
        &path,
        &[("Content-Type", OCI_MANIFEST)],
        manifest.as_bytes(),
    )?;
    if reply.status != 201 {
        return Err(format!("PUT {path}: {} {}", reply.status, reply.text()));
    }
    Ok(manifest)
}

fn push_blob(client: &mut Conn, repo: &str, data: &[u8]) -> Result<Digest, String> {
    let digest = Digest::sha256_of(data);
    let path = format!("/v2/{repo}/blobs/uploads/?digest={digest}");
    let reply = request(
        client,
        "POST",
        &path,
        &[("Content-Type", "application/octet-stream")],
        data,
    )?;
    if reply.status != 201 {
        return Err(format!("POST {path}: {} {}", reply.status, reply.text()));
    }
    Ok(digest)
}

fn manifest_json(config: &Digest, config_len: usize, layer: &Digest, layer_len: usize) -> String {
    format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{OCI_MANIFEST}\",\
         \"config\":{{\"mediaType\":\"{OCI_CONFIG}\",\"digest\":\"{config}\",\"size\":{config_len}}},\
         \"layers\":[{{\"mediaType\":\"{OCI_LAYER}\",\"digest\":\"{layer}\",\"size\":{layer_len}}}]}}"
    )
}

fn xorshift(mut state: u64) -> u64 {
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    state
}

/// Writes `len` pseudo-random bytes to `path` in 1 MiB pieces; returns their SHA-256.
fn write_random_file(path: &Path, len: u64) -> io::Result<Digest> {
    const PIECE: usize = 1 << 20;
    let mut file = File::create(path)?;
    let mut hasher = Hasher::sha256();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut piece = vec![0u8; PIECE];
    let mut written = 0u64;
    while written < len {
        let n = PIECE.min((len - written) as usize);
        for word in piece[..n].chunks_mut(8) {
            state = xorshift(state);
            let bytes = state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
        file.write_all(&piece[..n])?;
        hasher.update(&piece[..n]);
        written += n as u64;
    }
    file.sync_all()?;
    Ok(hasher.digest())
}

/// A monolithic upload of the file at `path`, streamed from the file (io::copy uses
/// sendfile/splice when it can, so the client costs little); the time until the 201.
fn upload_blob(
    addr: SocketAddr,
    repo: &str,
    digest: &Digest,
    path: &Path,
    len: u64,
) -> Result<Duration, String> {
    let what = format!("upload of {len} bytes to {repo}");
    let mut file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let start = Instant::now();
    let mut client = connect(addr)?;
    let head = format!(
        "POST /v2/{repo}/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n"
    );
    client
        .try_send(head.as_bytes())
        .map_err(|e| format!("{what}: {e}"))?;
    let sent = io::copy(&mut file, &mut client.stream()).map_err(|e| format!("{what}: {e}"))?;
    if sent != len {
        return Err(format!("{what}: the file had {sent} bytes"));
    }
    let reply = client.read_response("POST").map_err(|e| format!("{what}: {e}"))?;
    let elapsed = start.elapsed();
    if reply.status != 201 {
        return Err(format!("{what}: {} {}", reply.status, reply.text()));
    }
    Ok(elapsed)
}

/// A blob GET whose body goes to a counting sink; the time until the last byte.
fn download_blob(addr: SocketAddr, repo: &str, digest: &Digest, len: u64) -> Result<Duration, String> {
    let what = format!("download of {repo}@{digest}");
    let start = Instant::now();
    let mut client = connect(addr)?;
    client
        .try_send(&Conn::request_bytes(
            "GET",
            &format!("/v2/{repo}/blobs/{digest}"),
            &[],
            b"",
        ))
        .map_err(|e| format!("{what}: {e}"))?;
    let head = client.read_head().map_err(|e| format!("{what}: {e}"))?;
    if head.status != 200 {
        return Err(format!("{what}: status {}", head.status));
    }
    let announced: u64 = head
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .ok_or(format!("{what}: no Content-Length"))?;
    if announced != len {
        return Err(format!("{what}: Content-Length {announced}, expected {len}"));
    }
    let received = sink_body(&client, len).map_err(|e| format!("{what}: {e}"))?;
    let elapsed = start.elapsed();
    if received != len {
        return Err(format!("{what}: received {received} of {len} bytes"));
    }
    Ok(elapsed)
}

/// Client threads sending keep-alive manifest GETs as fast as the server answers.
struct Pullers {
    stop: Arc<AtomicBool>,
    pulls: Arc<AtomicU64>,
    threads: Vec<JoinHandle<Result<(), String>>>,
}

impl Pullers {
    fn start(addr: SocketAddr, path: &str, count: usize) -> Pullers {
        let stop = Arc::new(AtomicBool::new(false));
        let pulls = Arc::new(AtomicU64::new(0));
        let threads = (0..count)
            .map(|_| {
                let (stop, pulls, path) = (Arc::clone(&stop), Arc::clone(&pulls), path.to_string());
                thread::spawn(move || {
                    let mut client = connect(addr)?;
                    while !stop.load(Ordering::Relaxed) {
                        let reply = request(&mut client, "GET", &path, &[("Accept", OCI_MANIFEST)], b"")?;
                        if reply.status != 200 {
                            return Err(format!("GET {path}: {}", reply.status));
                        }
                        pulls.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();
        Pullers { stop, pulls, threads }
    }

    fn pulls(&self) -> u64 {
        self.pulls.load(Ordering::Relaxed)
    }

    fn finish(mut self) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        for handle in self.threads.drain(..) {
            handle
                .join()
                .map_err(|_| "a pull thread panicked".to_string())??;
        }
        Ok(())
    }
}

impl Drop for Pullers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

/// One request on `client`; an I/O error names the request.
fn request(
    client: &mut Conn,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, String> {
    client
        .try_request(method, path, headers, body)
        .map_err(|e| format!("{method} {path}: {e}"))
}

// ---------------------------------------------------------------------------
// wrk and the coreutils limits
// ---------------------------------------------------------------------------

struct WrkResult {
    requests_per_sec: f64,
    p99_ms: f64,
    /// wrk's `Socket errors: ...` line, when it printed one.
    socket_errors: Option<String>,
}

fn wrk(url: &str, connections: usize, secs: u64) -> Result<WrkResult, String> {
    let output = Command::new("wrk")
        .arg(format!("-t{}", wrk_threads(connections)))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{secs}s"))
        .arg("--latency")
        .arg("-H")
        .arg(format!("Accept: {OCI_MANIFEST}"))
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run wrk: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let fail = |why: &str| {
        format!(
            "wrk -c{connections}: {why}; its output:\n{text}{}",
            String::from_utf8_lossy(&output.stderr)
        )
    };
    if !output.status.success() {
        return Err(fail(&format!("exited with {}", output.status)));
    }
    if text.contains("Non-2xx or 3xx responses") {
        return Err(fail("the server answered errors"));
    }
    let requests_per_sec = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or_else(|| fail("no Requests/sec line"))?;
    let p99_ms = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .and_then(|v| wrk_duration_ms(v.trim()))
        .ok_or_else(|| fail("no 99% latency line"))?;
    let socket_errors = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map(|v| v.trim().to_string());
    Ok(WrkResult {
        requests_per_sec,
        p99_ms,
        socket_errors,
    })
}

/// wrk's durations: `718.00us`, `1.23ms`, `2.00s`, `1.50m`.
fn wrk_duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let value: f64 = text[..split].parse().ok()?;
    let scale = match &text[split..] {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1_000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return None,
    };
    Some(value * scale)
}

/// Runs a coreutils command over the blob file; its wall time and stdout. `cat`'s output goes
/// to /dev/null, as in `cat FILE > /dev/null`.
fn run_timed(command: &mut Command, capture: bool) -> Result<(Duration, String), String> {
    let describe = format!("{command:?}");
    if !capture {
        let devnull = File::create("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
        command.stdout(devnull);
    }
    let start = Instant::now();
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{describe}: {e}"))?;
    let elapsed = start.elapsed();
    if !output.status.success() {
        return Err(format!("{describe}: {}", output.status));
    }
    Ok((elapsed, String::from_utf8_lossy(&output.stdout).into_owned()))
}

// ---------------------------------------------------------------------------
// The servers under test
// ---------------------------------------------------------------------------

/// Room for the idle connections and for wrk, and a header timeout long enough that
/// connections opened first are still open when the last one is.
fn plain_options() -> Options {
    Options::default()
        .server_line(&format!("max_connections = {}", IDLE_CONNECTIONS + 2_000))
        .server_line("header_timeout_ms = 600000")
}

/// A running `angos server` of one build in a directory of its own under the work directory;
/// killed (SIGKILL) and its directory removed on drop.
struct BenchServer {
    server: Server,
    dir: PathBuf,
}

impl BenchServer {
    fn start(
        settings: &Settings,
        work: &WorkDir,
        label: &str,
        build: Build,
        options: &Options,
    ) -> Result<BenchServer, String> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = work
            .path()
            .join(format!("{label}-{}", SEQ.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let options = Options {
            binary: Some(settings.binary(build).to_path_buf()),
            // BENCH_SYNC=1 measures with fsync on every commit and journal append.
            sync_to_disk: std::env::var_os("BENCH_SYNC").is_some_and(|value| value == "1"),
            ..options.clone()
        };
        let server = Server::start_in(&dir, &options);
        Ok(BenchServer { server, dir })
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

impl Drop for BenchServer {
    fn drop(&mut self) {
        self.server.kill();
        if std::env::var_os("BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The servers of a section: this build's, and the baseline's when the section is compared.
struct Servers {
    baseline: Option<BenchServer>,
    this: BenchServer,
}

impl Servers {
    fn start(
        settings: &Settings,
        work: &WorkDir,
        label: &str,
        options: &Options,
        compared: bool,
    ) -> Result<Servers, String> {
        let baseline = match settings.baseline {
            Some(_) if compared => Some(BenchServer::start(
                settings,
                work,
                &format!("{label}-baseline"),
                Build::Baseline,
                options,
            )?),
            _ => None,
        };
        let this = BenchServer::start(settings, work, label, Build::This, options)?;
        Ok(Servers { baseline, this })
    }

    fn get(&self, build: Build) -> &BenchServer {
        match build {
            Build::This => &self.this,
            Build::Baseline => self
                .baseline
                .as_ref()
                .expect("a baseline server in a compared section under BENCH_BASELINE"),
        }
    }
}

/// VmRSS of `pid` in bytes.
fn rss_bytes(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or(format!("{path}: no VmRSS line"))
}

/// Samples VmRSS every 100 ms on a thread; `finish` returns the peak.
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(rss_bytes(pid).unwrap_or(0));
                thread::sleep(Duration::from_millis(100));
            }
            peak
        });
        RssSampler {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map(|t| t.join().unwrap_or(0)).unwrap_or(0)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The value of `name{webhook="<webhook>"}` in `/metrics`; 0 when the series is absent.
fn webhook_metric(addr: SocketAddr, name: &str, webhook: &str) -> Result<f64, String> {
    let reply = request(&mut connect(addr)?, "GET", "/metrics", &[], b"")?;
    if reply.status != 200 {
        return Err(format!("GET /metrics: {}", reply.status));
    }
    let label = format!("webhook=\"{webhook}\"");
    for line in reply.text().lines() {
        if let Some(rest) = line.strip_prefix(name)
            && rest.starts_with('{')
            && rest.contains(&label)
        {
            let value = rest.rsplit(' ').next().unwrap_or_default();
            return value.parse().map_err(|_| format!("bad metric line {line:?}"));
        }
    }
    Ok(0.0)
}

// ---------------------------------------------------------------------------
// Statistics and the table
// ---------------------------------------------------------------------------

fn median(samples: &mut [f64]) -> f64 {
    percentile(samples, 50.0)
}

/// Nearest-rank percentile (`p` in 0..=100); NaN for no samples.
fn percentile(samples: &mut [f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Decimal megabytes (10^6 bytes) per second.
fn mb_per_sec(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64()
}

/// The samples of one figure, per build.
#[derive(Default)]
struct Series {
    baseline: Vec<f64>,
    this: Vec<f64>,
}

impl Series {
    fn push(&mut self, build: Build, sample: f64) {
        match build {
            Build::Baseline => self.baseline.push(sample),
            Build::This => self.this.push(sample),
        }
    }

    /// `with - without`, run by run, for each build.
    fn difference(with: &Series, without: &Series) -> Series {
        let diff = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| a - b).collect();
        Series {
            baseline: diff(&with.baseline, &without.baseline),
            this: diff(&with.this, &without.this),
        }
    }
}

struct Row {
    figure: String,
    median: f64,
    /// The baseline's median, on a compared row under `BENCH_BASELINE`.
    baseline: Option<f64>,
    runs: usize,
    decimals: usize,
    unit: &'static str,
    context: String,
}

struct Table {
    rows: Vec<Row>,
    /// Under `BENCH_BASELINE`: baseline and change columns.
    compare: bool,
}

impl Table {
    fn new(compare: bool) -> Table {
        Table {
            rows: Vec::new(),
            compare,
        }
    }

    /// A row of this build alone.
    fn row(&mut self, figure: &str, samples: Vec<f64>, decimals: usize, unit: &'static str, context: String) {
        self.compared(
            figure,
            Series {
                baseline: Vec::new(),
                this: samples,
            },
            decimals,
            unit,
            context,
        );
    }

    /// A row of this build and, when it has samples, the baseline.
    fn compared(
        &mut self,
        figure: &str,
        mut samples: Series,
        decimals: usize,
        unit: &'static str,
        context: String,
    ) {
        let baseline = (!samples.baseline.is_empty()).then(|| median(&mut samples.baseline));
        let row = Row {
            figure: figure.to_string(),
            median: median(&mut samples.this),
            baseline,
            runs: samples.this.len(),
            decimals,
            unit,
            context,
        };
        let versus = row
            .baseline
            .map(|b| format!("; baseline {b:.*} {}", row.decimals, row.unit))
            .unwrap_or_default();
        eprintln!(
            "bench:   {} = {:.*} {} (median of {}){versus}",
            row.figure, row.decimals, row.median, row.unit, row.runs
        );
        self.rows.push(row);
    }

    fn render(&self) -> String {
        if self.compare {
            return self.render_compared();
        }
        let mut out = String::from("| figure | median | unit | runs | how |\n|---|---:|---|---:|---|\n");
        for row in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {:.*} | {} | {} | {} |",
                row.figure,
                row.decimals,
                row.median,
                row.unit,
                row.runs,
                row.context.replace('|', "\\|")
            );
        }
        out
    }

    /// Medians of both builds side by side, and how this build differs in percent of the
    /// baseline; rows measured on this build alone leave the baseline cells empty.
    fn render_compared(&self) -> String {
        let mut out = String::from(
            "| figure | baseline | this build | change | unit | runs | how |\n\
             |---|---:|---:|---:|---|---:|---|\n",
        );
        for row in &self.rows {
            let (baseline, change) = match row.baseline {
                // A ratio says something only between positive figures; the added-latency
                // rows are differences and may cross zero.
                Some(b) if b > 0.0 && row.median > 0.0 => (
                    format!("{b:.*}", row.decimals),
                    format!("{:+.1} %", (row.median - b) / b * 100.0),
                ),
                Some(b) => (format!("{b:.*}", row.decimals), String::new()),
                None => (String::new(), String::new()),
            };
            let _ = writeln!(
                out,
                "| {} | {baseline} | {:.*} | {change} | {} | {} | {} |",
                row.figure,
                row.decimals,
                row.median,
                row.unit,
                row.runs,
                row.context.replace('|', "\\|")
            );
        }
        out
    }
}

/// The bench's working directory under the system temporary directory, removed on drop
/// (after the servers, which are dropped first because they are created later).
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn new() -> WorkDir {
        let path = std::env::temp_dir().join(format!("angos-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        WorkDir { path }
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::env::var_os("BENCH_KEEP").is_some() {
            eprintln!("bench: keeping {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
