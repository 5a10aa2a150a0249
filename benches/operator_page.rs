//! What an open operator page costs the registry's other clients (`cargo bench --bench
//! operator_page`, `harness = false`, issue 17). A release server with the page on, 100
//! tags in one repository and a webhook whose last 100 deliveries failed (their requests
//! kept for the page), is probed by the benches' well-behaved client (`support/probe.rs`,
//! `GET /v2/` every 2 ms on a keep-alive connection) for `BENCH_SECS` in three cases:
//! (a) no page open; (b) one page open, asking what its webhooks, deliveries and storage
//! views ask every 2 s, and a repository's 100 tag details; (c) ten pages asking every
//! 200 ms, a hundred times (b)'s load. One markdown table of medians over `BENCH_RUNS`
//! goes to stdout: the probe's p50, p99 and max, and the pages' own answer times and bytes.
//! It measures; it asserts nothing about the figures.
// A benchmark times the real binary from outside: wall-clock reads are the point here.
#![allow(clippy::disallowed_methods)]

#[path = "../tests/e2e/common/mod.rs"]
#[allow(dead_code)]
mod common;
#[path = "support/probe.rs"]
#[allow(dead_code)]
mod probe;
#[path = "support/shared.rs"]
#[allow(dead_code)]
mod shared;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::upstreams::free_loopback_port;
use common::{Conn, Options, Server, push_image};
use probe::{Probe, percentile};
use shared::{cpu_model, env_number, load_average, median_of, progress};

/// What one page asks on each refresh (the webhooks, deliveries and storage views'
/// requests; the tag details are asked once per visit, counted here on every refresh).
const PAGE_REQUESTS: [&str; 4] = [
    "/v2/_angos/webhooks",
    "/v2/_angos/webhooks/hooks/deliveries",
    "/v2/_angos/storage",
    "/v2/team/app/_angos/tags?n=100",
];

struct Case {
    label: &'static str,
    pages: usize,
    every: Duration,
}

const CASES: [Case; 3] = [
    Case {
        label: "(a) no page open",
        pages: 0,
        every: Duration::from_secs(2),
    },
    Case {
        label: "(b) one page, every 2 s",
        pages: 1,
        every: Duration::from_secs(2),
    },
    Case {
        label: "(c) ten pages, every 200 ms",
        pages: 10,
        every: Duration::from_millis(200),
    },
];

/// One run of one case: the probe's percentiles, and the pages' answers.
struct Measured {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    page_ms: Option<f64>,
    page_bytes: Option<f64>,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("benches/operator_page.rs: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let runs = env_number("BENCH_RUNS", 3, 1, 100)? as usize;
    let secs = env_number("BENCH_SECS", 10, 1, 600)?;
    let load_before = load_average();
    let server = seeded_server();
    let mut table: Vec<Vec<Measured>> = CASES.iter().map(|_| Vec::new()).collect();
    for run in 0..runs {
        for (index, case) in CASES.iter().enumerate() {
            progress(&format!("run {}/{runs}: {}", run + 1, case.label));
            table[index].push(measure(&server, case, Duration::from_secs(secs)));
        }
    }
    println!(
        "`BENCH_RUNS={runs} BENCH_SECS={secs} cargo bench --bench operator_page` on {} ({} cores); load {load_before} before, {} after; medians of {runs} runs\n",
        cpu_model(),
        thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    println!(
        "| case | probe p50 | probe p99 | probe max | page answer (mean of its 4 requests) | bytes per refresh |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (case, measured) in CASES.iter().zip(&table) {
        let median =
            |pick: &dyn Fn(&Measured) -> Option<f64>| median_of(measured.iter().filter_map(pick).collect());
        let ms = |value: Option<f64>| value.map_or("-".to_string(), |ms| format!("{ms:.2} ms"));
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            case.label,
            ms(median(&|m| Some(m.p50_ms))),
            ms(median(&|m| Some(m.p99_ms))),
            ms(median(&|m| Some(m.max_ms))),
            ms(median(&|m| m.page_ms)),
            median(&|m| m.page_bytes).map_or("-".to_string(), |bytes| format!("{bytes:.0}")),
        );
    }
    Ok(())
}

/// The server the cases share: the page on, 100 tags, 100 failed deliveries kept.
fn seeded_server() -> Server {
    let dead = free_loopback_port();
    let options = Options::default()
        .table("[ui]\nenabled = true\n")
        .table(&format!(
            "[event_webhook.hooks]\nurl = \"http://127.0.0.1:{dead}/hook\"\npolicy = \"async\"\n\
             events = [\"manifest.push\"]\nmax_retries = 0\ntimeout_ms = 1000\n\
             signing_secrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n"
        ))
        .global_line("event_webhooks = [\"hooks\"]");
    let server = Server::start_with(&options);
    for n in 0..100 {
        push_image(
            &server,
            "team/app",
            Some(&format!("v{n:03}")),
            &format!("seed {n}"),
        );
    }
    // The deliveries fail at once (nothing listens): wait until all 100 are recorded.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let text = server.get("/v2/_angos/webhooks/hooks/deliveries").text();
        if text.matches("\"event_id\"").count() >= 100 {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    server
}

fn measure(server: &Server, case: &Case, length: Duration) -> Measured {
    let stop = Arc::new(AtomicBool::new(false));
    let pages: Vec<_> = (0..case.pages)
        .map(|_| {
            let (stop, addr, every) = (stop.clone(), server.addr, case.every);
            thread::spawn(move || page(addr, every, &stop))
        })
        .collect();
    let probe = Probe::start(server);
    thread::sleep(length);
    let samples = probe.finish();
    stop.store(true, Ordering::SeqCst);
    let mut answers = Vec::new();
    for page in pages {
        answers.extend(page.join().expect("a page thread does not panic"));
    }
    let sorted = samples.sorted();
    let ms = |duration: Duration| duration.as_secs_f64() * 1000.0;
    let (times, sizes): (Vec<f64>, Vec<f64>) = answers.into_iter().unzip();
    Measured {
        p50_ms: ms(percentile(&sorted, 50.0)),
        p99_ms: ms(percentile(&sorted, 99.0)),
        max_ms: ms(sorted.last().copied().unwrap_or_default()),
        page_ms: median_of(times),
        page_bytes: median_of(sizes),
    }
}

/// One open page: every `every`, its refresh's requests on its keep-alive connection.
/// Returns, per refresh, the mean answer time (ms) and the bytes it read.
fn page(addr: std::net::SocketAddr, every: Duration, stop: &AtomicBool) -> Vec<(f64, f64)> {
    let mut conn = Conn::try_open(addr).expect("the page connects");
    let mut refreshes = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        let mut bytes = 0;
        for path in PAGE_REQUESTS {
            let response = conn
                .try_request("GET", path, &[("X-Angos-Page", "1")], b"")
                .expect("the page's request is answered");
            bytes += response.body.len();
        }
        let spent = started.elapsed();
        refreshes.push((
            spent.as_secs_f64() * 1000.0 / PAGE_REQUESTS.len() as f64,
            bytes as f64,
        ));
        thread::sleep(every.saturating_sub(spent));
    }
    refreshes
}
