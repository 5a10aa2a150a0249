//! The garbage-collection benchmark (`cargo bench --bench gc`, `harness = false`, issue 14's
//! closing note): how fast an online collection reclaims unreferenced content, and what a
//! well-behaved client waits meanwhile. Each run of each case writes its garbage straight
//! into a fresh data directory's layout (content files under `blobs/` that nothing links,
//! two hours old), starts the release binary over it with `gc_grace_secs = 3600`, measures
//! the benches' probe (`support/probe.rs`, `GET /v2/` every 2 ms on a keep-alive connection)
//! while nothing runs, then starts a collection through the admin API and probes again
//! until the collection has ended and the file thread has emptied `_trash`. One markdown
//! table of medians goes to stdout. It measures and reports; it asserts nothing about the
//! figures, only that the collection removed exactly the garbage (else it measured
//! something else). Every server and directory sits behind a Drop guard, so an error or a
//! panic still kills the server and removes the data.
//!
//! Settings (environment): `BENCH_RUNS` (default 3) runs per case; `BENCH_GC_LARGE_MIB`
//! (2048) and `BENCH_GC_BLOB_MIB` (32) the large case's garbage and the size of each of its
//! blobs; `BENCH_GC_SMALL_BLOBS` (100000) and `BENCH_GC_SMALL_BYTES` (1024) the small case's;
//! `BENCH_IDLE_SECS` (3) the idle probe's length; `BENCH_CASES` (`a`/`large`, `b`/`small`,
//! comma-separated) the cases to run.
// A benchmark times the real binary from outside, and ages files against the wall clock:
// wall-clock reads are the point here, not a way around the driven clock (clippy.toml).
#![allow(clippy::disallowed_methods)]

// The end-to-end tests' support; the bench uses part of it.
#[path = "../tests/e2e/common/mod.rs"]
#[allow(dead_code)]
mod common;
// Shared with the registry and transfer benches; each uses part of it.
#[path = "support/shared.rs"]
#[allow(dead_code)]
mod shared;
// The well-behaved client, shared with the attack and transfer benches.
#[path = "support/probe.rs"]
#[allow(dead_code)]
mod probe;

use angos::digest::Digest;
use common::{Conn, Json, Options, Server, TempDir, pseudo_random_bytes};
use probe::{Probe, Samples, percentile};
use shared::{Space, connect, cpu_model, env_number, free_space, load_average, median_of, progress, settle};
use std::fs::{self, File};
use std::io::Write;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

const ANGOS: &str = env!("CARGO_BIN_EXE_angos");

/// The server's grace period: garbage aged by `AGE` is older, so a collection removes it.
const GRACE_SECS: u64 = 3600;
/// How far back the garbage's modification times are set: as if written two hours ago.
const AGE: Duration = Duration::from_secs(2 * 3600);
/// How often the collection's status is asked for, on its own keep-alive connection: often
/// enough for a wall time, rarely enough not to be a second load on the loop. The
/// collection's own duration is the server's figure, not this poll's.
const STATUS_POLL: Duration = Duration::from_millis(10);
/// How often `_trash` is looked at once the collection has ended (the file system only).
const TRASH_POLL: Duration = Duration::from_millis(5);
/// How long the probe goes on after `_trash` is empty, so that work the server does last
/// still shows in the figures around it.
const TAIL: Duration = Duration::from_millis(100);
/// A collection that takes longer is reported as an error, not waited for.
const COLLECTION_TIMEOUT: Duration = Duration::from_secs(1800);
/// Free space needed beyond the garbage itself (the server's own files, the journal).
const SPACE_SLACK_MIB: u64 = 256;
/// What a small file costs on disk at least (one block of ext4 and most others).
const BLOCK_BYTES: u64 = 4096;
/// Server log lines shown in error messages.
const LOG_LINES_MAX: usize = 100;

/// What the environment asked for.
struct Settings {
    runs: usize,
    large_mib: u64,
    blob_mib: u64,
    small_blobs: u64,
    small_bytes: u64,
    idle_secs: u64,
    /// `BENCH_CASES` as written (for the header), and its words.
    cases_text: Option<String>,
    cases: Vec<String>,
}

impl Settings {
    fn from_env() -> Result<Settings, String> {
        let cases_text = std::env::var("BENCH_CASES")
            .ok()
            .filter(|text| !text.trim().is_empty());
        let cases = cases_text
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(|word| word.trim().to_ascii_lowercase())
            .filter(|word| !word.is_empty())
            .collect();
        let settings = Settings {
            runs: env_number("BENCH_RUNS", 3, 1, 100)? as usize,
            large_mib: env_number("BENCH_GC_LARGE_MIB", 2048, 1, 1 << 20)?,
            blob_mib: env_number("BENCH_GC_BLOB_MIB", 32, 1, 4096)?,
            small_blobs: env_number("BENCH_GC_SMALL_BLOBS", 100_000, 1, 10_000_000)?,
            small_bytes: env_number("BENCH_GC_SMALL_BYTES", 1024, 1, 1 << 20)?,
            idle_secs: env_number("BENCH_IDLE_SECS", 3, 1, 600)?,
            cases_text,
            cases,
        };
        if settings.blob_mib > settings.large_mib {
            return Err(format!(
                "BENCH_GC_BLOB_MIB={} is larger than BENCH_GC_LARGE_MIB={}",
                settings.blob_mib, settings.large_mib
            ));
        }
        Ok(settings)
    }

    fn wants(&self, case: Case) -> bool {
        self.cases.is_empty() || self.cases.iter().any(|word| case.matches(word))
    }

    /// The command line that reproduces this run.
    fn command(&self) -> String {
        let cases = match &self.cases_text {
            Some(text) => format!(" BENCH_CASES='{text}'"),
            None => String::new(),
        };
        format!(
            "BENCH_RUNS={} BENCH_GC_LARGE_MIB={} BENCH_GC_BLOB_MIB={} BENCH_GC_SMALL_BLOBS={} \
             BENCH_GC_SMALL_BYTES={} BENCH_IDLE_SECS={}{cases} cargo bench --bench gc",
            self.runs, self.large_mib, self.blob_mib, self.small_blobs, self.small_bytes, self.idle_secs
        )
    }
}

// ---------------------------------------------------------------------------
// The cases and their garbage
// ---------------------------------------------------------------------------

/// What one case collects, in the lettering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    /// (a) 2 GiB of unreferenced blobs, 32 MiB each.
    Large,
    /// (b) 100,000 small unreferenced blobs.
    Small,
}

impl Case {
    const ALL: [Case; 2] = [Case::Large, Case::Small];

    fn letter(self) -> &'static str {
        match self {
            Case::Large => "a",
            Case::Small => "b",
        }
    }

    fn word(self) -> &'static str {
        match self {
            Case::Large => "large",
            Case::Small => "small",
        }
    }

    fn matches(self, word: &str) -> bool {
        word == self.letter() || word == self.word()
    }

    /// How many blobs of how many bytes.
    fn shape(self, settings: &Settings) -> (u64, u64) {
        match self {
            Case::Large => (settings.large_mib / settings.blob_mib, settings.blob_mib << 20),
            Case::Small => (settings.small_blobs, settings.small_bytes),
        }
    }

    /// Bytes the garbage takes on disk, about.
    fn disk_bytes(self, settings: &Settings) -> u64 {
        let (count, bytes) = self.shape(settings);
        count * bytes.div_ceil(BLOCK_BYTES) * BLOCK_BYTES
    }

    fn label(self, settings: &Settings) -> String {
        let (count, bytes) = self.shape(settings);
        let size = if bytes >= 1 << 20 {
            format!("{} MiB", bytes >> 20)
        } else {
            format!("{bytes} B")
        };
        format!(
            "({}) {count} × {size} unreferenced blobs ({:.2} GB)",
            self.letter(),
            (count * bytes) as f64 / 1e9
        )
    }
}

/// One case's garbage: content files nothing links, each named by its digest, as a blob
/// deleted from every repository (`DELETE /v2/<name>/blobs/<digest>`) leaves them.
struct Garbage {
    /// Each blob's seed for `pseudo_random_bytes` (odd: the generator ignores the lowest
    /// bit) and its digest, worked out once for every run.
    blobs: Vec<(u64, Digest)>,
    blob_bytes: u64,
}

impl Garbage {
    /// Hashes every blob once (2 GiB take a few seconds); `write` then only regenerates
    /// the bytes.
    fn plan(case: Case, settings: &Settings) -> Garbage {
        let (count, blob_bytes) = case.shape(settings);
        let first_seed = match case {
            Case::Large => 1,
            Case::Small => 1 << 32,
        };
        let blobs = (0..count)
            .map(|n| {
                let seed = first_seed + 2 * n + 1;
                let bytes = pseudo_random_bytes(seed, blob_bytes as usize);
                (seed, Digest::sha256_of(&bytes))
            })
            .collect();
        Garbage { blobs, blob_bytes }
    }

    fn count(&self) -> u64 {
        self.blobs.len() as u64
    }

    fn bytes(&self) -> u64 {
        self.count() * self.blob_bytes
    }

    /// Writes every blob at `root/blobs/<alg>/<hex[0..2]>/<hex>` (storage/mod.rs's layout),
    /// modified `AGE` ago, as `age_store` in tests/e2e/garbage_collection.rs makes them:
    /// old enough for the server's grace period without waiting for it. Nothing links
    /// them, so they are unreferenced, and the server keeps `blobs/` at start.
    fn write(&self, root: &Path) -> Result<(), String> {
        let then = SystemTime::now() - AGE;
        for (seed, digest) in &self.blobs {
            let dir = root
                .join("blobs")
                .join(digest.algorithm())
                .join(&digest.hex()[..2]);
            let path = dir.join(digest.hex());
            let fail = |e: std::io::Error| format!("{}: {e}", path.display());
            // 256 directories at most: creating an existing one is one failed mkdir.
            fs::create_dir_all(&dir).map_err(fail)?;
            let mut file = File::create(&path).map_err(fail)?;
            file.write_all(&pseudo_random_bytes(*seed, self.blob_bytes as usize))
                .map_err(fail)?;
            file.set_modified(then).map_err(fail)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary
    // without it, only to check that it builds and starts: no collections.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("benches/gc.rs: run it with `cargo bench --bench gc`");
        return ExitCode::SUCCESS;
    }
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let mut rows: Vec<Row> = Case::ALL
        .into_iter()
        .filter(|case| settings.wants(*case))
        .map(|case| Row {
            case,
            runs: Vec::new(),
        })
        .collect();
    if rows.is_empty() {
        eprintln!("error: BENCH_CASES matches no case; the cases are a (large) and b (small)");
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
    eprintln!("gc: finished in {:.0} s", started.elapsed().as_secs_f64());
    println!();
    println!("{}", header(&settings, &space, &load_before));
    println!();
    print!("{}", render(&settings, &rows));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Checks what the bench needs before starting anything: `sync` and `df` (coreutils), and
/// room for the largest case's garbage in the temporary directory (`TMPDIR` moves it); the
/// cases run one after the other, each directory removed before the next.
fn preflight(settings: &Settings, rows: &[Row]) -> Result<Space, String> {
    let status = Command::new("sync")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !status.is_ok_and(|status| status.success()) {
        return Err("cannot run sync (coreutils: apt-get install coreutils)".to_string());
    }
    let space = free_space(&std::env::temp_dir())?;
    let largest = rows
        .iter()
        .map(|row| row.case.disk_bytes(settings))
        .max()
        .unwrap_or(0);
    let needed = largest + (SPACE_SLACK_MIB << 20);
    if space.free_bytes < needed {
        return Err(format!(
            "the bench needs about {:.1} GiB free in the temporary directory {}, and {:.1} GiB \
             are; set TMPDIR to a roomier directory or lower BENCH_GC_LARGE_MIB / BENCH_GC_SMALL_BLOBS",
            gib(needed),
            space.dir.display(),
            gib(space.free_bytes)
        ));
    }
    Ok(space)
}

/// Every run of every case, run after run so that drift on the machine falls on all cases
/// alike. Each run adds its figures as soon as it has them, so a failure later still
/// prints what was measured.
fn run_all(settings: &Settings, rows: &mut [Row]) -> Result<(), String> {
    let mut plans = Vec::new();
    for row in rows.iter() {
        progress(&format!("hashing the garbage of {}", row.case.label(settings)));
        plans.push(Garbage::plan(row.case, settings));
    }
    for run in 0..settings.runs {
        for (row, garbage) in rows.iter_mut().zip(&plans) {
            progress(&format!(
                "run {} of {}: {}",
                run + 1,
                settings.runs,
                row.case.label(settings)
            ));
            let measure = run_case(settings, garbage)?;
            progress(&format!("  {}", measure.describe()));
            row.runs.push(measure);
            // The server is gone and its directory removed; the removal's writeback goes
            // now, not during the next run.
            settle()?;
        }
    }
    Ok(())
}

/// One run of one case: the garbage written, a server started over it, the idle probe,
/// then the collection. The server is killed and the directory removed when this returns
/// (the server first: it is declared last).
fn run_case(settings: &Settings, garbage: &Garbage) -> Result<Measure, String> {
    let dir = TempDir::new("gc-bench");
    let setup = Instant::now();
    garbage.write(&dir.path().join("data"))?;
    // The garbage is two hours old as far as the collector knows; it is on disk too, so
    // the collection does not wait on its writeback.
    settle()?;
    progress(&format!(
        "  garbage written and synced in {:.1} s",
        setup.elapsed().as_secs_f64()
    ));
    let options = Options::default()
        .global_line(&format!("gc_grace_secs = {GRACE_SECS}"))
        // Nothing runs but the collection the bench asks for.
        .global_line("gc_interval_secs = 0")
        .global_line("scrub_interval_secs = 0")
        .global_line("prune_interval_secs = 0");
    let server = Server::start_in(dir.path(), &options);
    let idle = measure_idle(&server, Duration::from_secs(settings.idle_secs));
    collect(&server, garbage, idle).map_err(|e| with_log(&server, e))
}

// ---------------------------------------------------------------------------
// The measurement
// ---------------------------------------------------------------------------

/// The probe's answers over some stretch.
#[derive(Clone, Copy)]
struct ProbeFigures {
    p50: Duration,
    p99: Duration,
    max: Duration,
    count: usize,
}

impl ProbeFigures {
    /// The figures of the probes sent up to `end` (all when `None`).
    fn of(samples: &Samples, end: Option<Instant>) -> ProbeFigures {
        let sorted = samples.sorted_sent_by(end);
        ProbeFigures {
            p50: percentile(&sorted, 50.0),
            p99: percentile(&sorted, 99.0),
            max: sorted.last().copied().unwrap_or_default(),
            count: sorted.len(),
        }
    }

    fn describe(&self) -> String {
        format!(
            "probe p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} probes)",
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            self.count
        )
    }
}

/// The figures of one run of one case.
struct Measure {
    /// The probe while nothing ran, for comparison.
    idle: ProbeFigures,
    /// The collection's own duration, as the server reports it (`last.duration_ms`).
    collection_ms: u64,
    /// What it removed: content files and their bytes.
    objects: u64,
    bytes: u64,
    /// The probe from the `POST` until the bench saw the collection end.
    during_collection: ProbeFigures,
    /// From the `POST` to `_trash` seen empty: the space actually given back.
    until_trash_empty: Duration,
    /// The probe from the `POST` until `_trash` was empty.
    until_empty: ProbeFigures,
}

impl Measure {
    /// A collection that took under a millisecond counts as one: the server reports
    /// whole milliseconds (the table marks such figures with `≥`).
    fn seconds(&self) -> f64 {
        self.collection_ms.max(1) as f64 / 1000.0
    }

    fn objects_per_sec(&self) -> f64 {
        self.objects as f64 / self.seconds()
    }

    fn gb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e9 / self.seconds()
    }

    /// Until `_trash` was empty: the rate at which space actually came back.
    fn objects_per_sec_freed(&self) -> f64 {
        self.objects as f64 / self.until_trash_empty.as_secs_f64()
    }

    fn gb_per_sec_freed(&self) -> f64 {
        self.bytes as f64 / 1e9 / self.until_trash_empty.as_secs_f64()
    }

    fn describe(&self) -> String {
        format!(
            "idle: {}; collection {} ms ({} objects, {} bytes: {:.0} objects/s, {:.2} GB/s), \
             {}; _trash empty after {:.0} ms ({:.0} objects/s, {:.2} GB/s), {}",
            self.idle.describe(),
            self.collection_ms,
            self.objects,
            self.bytes,
            self.objects_per_sec(),
            self.gb_per_sec(),
            self.during_collection.describe(),
            ms(self.until_trash_empty),
            self.objects_per_sec_freed(),
            self.gb_per_sec_freed(),
            self.until_empty.describe()
        )
    }
}

fn measure_idle(server: &Server, length: Duration) -> ProbeFigures {
    let probe = Probe::start(server);
    thread::sleep(length);
    ProbeFigures::of(&probe.finish(), None)
}

/// Starts a collection, waits for its end (no collection running, no removal pending) and
/// for `_trash` to be empty, probing from just before the `POST` until `TAIL` after that;
/// checks that it removed exactly the garbage.
fn collect(server: &Server, garbage: &Garbage, idle: ProbeFigures) -> Result<Measure, String> {
    let mut admin = connect(server.addr)?;
    let probe = Probe::start(server);
    // On an error the probe is dropped, which stops it.
    let started = Instant::now();
    let reply = admin
        .try_request("POST", "/v2/_angos/gc", &[], b"")
        .map_err(|e| format!("POST /v2/_angos/gc: {e}"))?;
    if reply.status != 202 {
        return Err(format!(
            "POST /v2/_angos/gc: expected 202, got {}",
            reply.describe()
        ));
    }
    let (last, collected) = loop {
        let status = gc_status(&mut admin)?;
        let running = !matches!(status.get("running"), Some(Json::Bool(false)));
        let pending = status.get("removals_pending").and_then(Json::as_u64);
        if !running && pending == Some(0) {
            break (status.get("last").cloned().unwrap_or(Json::Null), Instant::now());
        }
        if started.elapsed() > COLLECTION_TIMEOUT {
            return Err(format!(
                "the collection did not end within {} s: {status:?}",
                COLLECTION_TIMEOUT.as_secs()
            ));
        }
        thread::sleep(STATUS_POLL);
    };
    let trash = server.root.join("_trash");
    while !is_empty(&trash)? {
        if started.elapsed() > COLLECTION_TIMEOUT {
            return Err(format!("{} was not emptied", trash.display()));
        }
        thread::sleep(TRASH_POLL);
    }
    let emptied = Instant::now();
    thread::sleep(TAIL);
    let samples = probe.finish();
    let count = |key: &str| {
        last.get("report")
            .and_then(|report| report.get(key))
            .and_then(Json::as_u64)
    };
    let (objects, bytes) = (count("contents_removed"), count("bytes_removed"));
    let mode = last.get("mode").and_then(Json::as_str);
    if mode != Some("commit")
        || objects != Some(garbage.count())
        || bytes != Some(garbage.bytes())
        || count("errors") != Some(0)
    {
        return Err(format!(
            "expected a commit run removing {} content files of {} bytes and no errors; the last \
             run: {last:?}",
            garbage.count(),
            garbage.bytes()
        ));
    }
    Ok(Measure {
        idle,
        collection_ms: last
            .get("duration_ms")
            .and_then(Json::as_u64)
            .ok_or_else(|| format!("no duration_ms in {last:?}"))?,
        objects: garbage.count(),
        bytes: garbage.bytes(),
        // The quiet tail would dilute the collection's samples; it is there for a stall
        // at the very end, which a probe sent before the end still shows.
        during_collection: ProbeFigures::of(&samples, Some(collected)),
        until_trash_empty: emptied - started,
        until_empty: ProbeFigures::of(&samples, Some(emptied)),
    })
}

/// `GET /v2/_angos/gc` on the admin connection, as JSON.
fn gc_status(admin: &mut Conn) -> Result<Json, String> {
    let reply = admin
        .try_request("GET", "/v2/_angos/gc", &[], b"")
        .map_err(|e| format!("GET /v2/_angos/gc: {e}"))?;
    if reply.status != 200 {
        return Err(format!(
            "GET /v2/_angos/gc: expected 200, got {}",
            reply.describe()
        ));
    }
    Json::parse(&reply.text()).map_err(|e| format!("GET /v2/_angos/gc: {e}: {}", reply.text()))
}

/// Whether `dir` has no entry: one `getdents`, however many files it held.
fn is_empty(dir: &Path) -> Result<bool, String> {
    let mut entries = fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(entries.next().is_none())
}

/// `message` and the last lines the server logged.
fn with_log(server: &Server, message: String) -> String {
    let logs = server.logs();
    let tail = &logs[logs.len().saturating_sub(LOG_LINES_MAX)..];
    format!("{message}\nserver log (last lines):\n{}", tail.join("\n"))
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
        "angos garbage-collection benchmark: `{}`; {cores} cores ({cpu}), load average \
         {load_before} at the start and {} at the end; temporary directory {} ({}, {:.1} GiB free \
         at the start); each figure the median of its runs (up to {}); garbage written into the \
         layout, synced, aged two hours, grace {GRACE_SECS} s; collection = the server's \
         `last.duration_ms` (whole ms), objects and GB (10^9 bytes) per second over it, the probes \
         sent from the POST until the status said it ended (polled every 10 ms); until `_trash` \
         empty = wall time from the POST until the file thread removed everything (polled every \
         5 ms), objects and GB per second over that, the probes sent meanwhile; idle = the probes \
         of {} s before the collection; probe `GET /v2/` every 2 ms after the previous answer on \
         one keep-alive connection; binary {ANGOS}",
        settings.command(),
        load_average(),
        space.dir.display(),
        space.fstype,
        gib(space.free_bytes),
        settings.runs,
        settings.idle_secs
    )
}

fn render(settings: &Settings, rows: &[Row]) -> String {
    let mut out = String::from(
        "| case | stretch | time | objects/s | GB/s | probe p50 | probe p99 | probe max | probes | runs |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in rows.iter().filter(|row| !row.runs.is_empty()) {
        let runs = &row.runs;
        let median =
            |pick: &dyn Fn(&Measure) -> f64| median_of(runs.iter().map(pick).collect()).unwrap_or(f64::NAN);
        let probe_cells = |pick: fn(&Measure) -> ProbeFigures| {
            format!(
                "{:.2} ms | {:.2} ms | {:.2} ms | {:.0}",
                median(&|m| ms(pick(m).p50)),
                median(&|m| ms(pick(m).p99)),
                median(&|m| ms(pick(m).max)),
                median(&|m| pick(m).count as f64)
            )
        };
        // A rate over a collection reported as 0 ms is a lower bound.
        let bound = if runs.iter().any(|m| m.collection_ms == 0) {
            "≥ "
        } else {
            ""
        };
        let label = row.case.label(settings);
        let n = runs.len();
        out.push_str(&format!(
            "| {label} | collection | {:.0} ms | {bound}{:.0} | {bound}{:.2} | {} | {n} |\n",
            median(&|m| m.collection_ms as f64),
            median(&Measure::objects_per_sec),
            median(&Measure::gb_per_sec),
            probe_cells(|m| m.during_collection),
        ));
        out.push_str(&format!(
            "| {label} | until `_trash` empty | {:.0} ms | {:.0} | {:.2} | {} | {n} |\n",
            median(&|m| ms(m.until_trash_empty)),
            median(&Measure::objects_per_sec_freed),
            median(&Measure::gb_per_sec_freed),
            probe_cells(|m| m.until_empty),
        ));
        out.push_str(&format!(
            "| {label} | idle, no collection | – | – | – | {} | {n} |\n",
            probe_cells(|m| m.idle),
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
