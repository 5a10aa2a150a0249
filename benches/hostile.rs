//! The attack benchmark (`cargo bench --bench hostile`, `harness = false`,
//! issue 19): each hostile peer of `tests/e2e/hostile_peers.rs`, at full strength
//! for a few seconds against the release binary on loopback, while a
//! well-behaved client sends `GET /v2/` every 2 ms on a keep-alive
//! connection. Prints one markdown row per attack: the server's peak RSS and
//! that client's p50, p99 and slowest answer. It measures and reports; it
//! asserts nothing. `BENCH_ATTACK_SECS` (default 3) sets each attack's length;
//! `BENCH_ATTACKS` (words, comma-separated) runs only the attacks naming one.
// A benchmark times the real binary from outside.
#![allow(clippy::disallowed_methods)]

// The end-to-end tests' support; the bench uses only part of it.
#[path = "../tests/e2e/common/mod.rs"]
#[allow(dead_code)]
mod common;
// The well-behaved client, shared with the transfer bench.
#[path = "support/probe.rs"]
#[allow(dead_code)]
mod probe;

use std::thread;
use std::time::{Duration, Instant};

use common::hostile::*;
use common::*;
use probe::{Probe, percentile};

/// One attack: it starts its own server and returns its row.
type Attack = fn(Duration) -> Row;

struct Row {
    attack: &'static str,
    peak_rss_bytes: u64,
    samples: Vec<Duration>,
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
    // binary without it, only to check that it builds and starts.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("benches/hostile.rs: run it with `cargo bench --bench hostile`");
        return;
    }
    let secs = std::env::var("BENCH_ATTACK_SECS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(3u64);
    let length = Duration::from_secs(secs);
    let only: Vec<String> = std::env::var("BENCH_ATTACKS")
        .map(|list| list.split(',').map(|word| word.trim().to_string()).collect())
        .unwrap_or_default();
    let attacks: [(&'static str, Attack); 13] = [
        ("none (baseline)", baseline),
        ("webhook receiver: endless chunked answer", endless_answer),
        ("webhook receiver: 100 MB answer", huge_answer),
        ("200 stalled readers of a 4.5 MB manifest", stalled_readers),
        ("300 parallel wrong passwords, one address", parallel_passwords),
        ("1,000 trickled bodies on GET /healthz", trickled_bodies),
        ("session hoarding by one namespace", session_hoarding),
        ("pushes of the most tags allowed", tag_heavy_pushes),
        (
            "pushes of the most tags allowed, sync_to_disk",
            tag_heavy_pushes_synced,
        ),
        ("one-tag pushes, sync_to_disk", plain_pushes_synced),
        ("8 clients paging 50,000 tags", tag_paging),
        ("8 clients sending GET /v2/ back to back (control)", busy_clients),
        ("slow manifest bodies, 4,000 connections", slow_manifest_bodies),
    ];
    let mut rows = Vec::new();
    for (name, attack) in attacks {
        if !only.is_empty() && !only.iter().any(|word| name.contains(word.as_str())) {
            continue;
        }
        eprintln!("attack: {name}");
        let mut row = attack(length);
        row.attack = name;
        rows.push(row);
    }
    println!("| attack | peak RSS | GET /v2/ p50 | p99 | max | probes |");
    println!("|---|---|---|---|---|---|");
    for row in rows {
        println!(
            "| {} | {:.1} MiB | {:.2} ms | {:.2} ms | {:.2} ms | {} |",
            row.attack,
            row.peak_rss_bytes as f64 / (1 << 20) as f64,
            ms(percentile(&row.samples, 50.0)),
            ms(percentile(&row.samples, 99.0)),
            ms(row.samples.last().copied().unwrap_or_default()),
            row.samples.len()
        );
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Runs `attack` for `length` while probing; the row for it.
fn measure(server: &Server, length: Duration, attack: impl FnOnce(Instant) + Send) -> Row {
    let probe = Probe::start(server);
    let until = Instant::now() + length;
    thread::scope(|scope| {
        scope.spawn(move || attack(until));
    });
    let samples = probe.finish().sorted();
    Row {
        attack: "",
        peak_rss_bytes: peak_rss_bytes(server),
        samples,
    }
}

fn baseline(length: Duration) -> Row {
    let server = Server::start();
    measure(&server, length, |until| thread::sleep(until - Instant::now()))
}

fn webhook_options(url: &str) -> Options {
    Options::default()
        .global_line("event_webhooks = [\"gate\"]")
        .table(&format!(
            "[event_webhook.gate]\nurl = \"{url}\"\npolicy = \"required\"\nevents = [\"manifest.push\"]\ntimeout_ms = 5000\nmax_retries = 0\n"
        ))
}

/// Pushes one manifest under new tags, back to back, until `until`.
fn push_until(server: &Server, repo: &str, until: Instant) {
    let manifest = empty_image(server, repo);
    let mut n = 0;
    while Instant::now() < until {
        put_manifest(server, repo, &format!("t{n}"), OCI_MANIFEST, &manifest);
        n += 1;
    }
}

fn endless_answer(length: Duration) -> Row {
    let receiver = HostileReceiver::start(Answer::EndlessChunks);
    let server = Server::start_with(&webhook_options(&receiver.url()));
    measure(&server, length, |until| push_until(&server, "endless", until))
}

fn huge_answer(length: Duration) -> Row {
    let receiver = HostileReceiver::start(Answer::Huge { len: 100 << 20 });
    let server = Server::start_with(&webhook_options(&receiver.url()));
    measure(&server, length, |until| push_until(&server, "huge", until))
}

fn stalled_readers(length: Duration) -> Row {
    let server = Server::start();
    push_large_manifest(&server, "big");
    measure(&server, length, |until| {
        let readers = common::hostile::stalled_readers(&server, 200, "/v2/big/manifests/v1");
        thread::sleep(until.saturating_duration_since(Instant::now()));
        drop(readers);
    })
}

fn parallel_passwords(length: Duration) -> Row {
    let server = Server::start_with(
        &Options::default()
            .server_line("trusted_proxies = [\"127.0.0.1\"]")
            .table(&identity_table("bob", "bob", "builder")),
    );
    let wrong = format!("Basic {}", base64_encode(b"bob:guess"));
    measure(&server, length, |until| {
        let guesses = token_requests(&server, 300, &wrong, "203.0.113.7");
        thread::sleep(until.saturating_duration_since(Instant::now()));
        drop(guesses);
    })
}

fn trickled_bodies(length: Duration) -> Row {
    let server = Server::start();
    measure(&server, length, |until| {
        let mut held = Vec::new();
        while Instant::now() < until {
            for _ in 0..100 {
                if let Ok(mut conn) = Conn::try_open(server.addr) {
                    let _ = conn
                        .try_send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\na");
                    held.push(conn);
                }
            }
            held.truncate(1000);
            thread::sleep(Duration::from_millis(100));
        }
    })
}

fn session_hoarding(length: Duration) -> Row {
    let server = Server::start();
    measure(&server, length, |until| {
        while Instant::now() < until {
            let status = server
                .request("POST", "/v2/hoarder/blobs/uploads/", &[], b"")
                .status;
            if status == 429 {
                thread::sleep(Duration::from_millis(10));
            }
        }
    })
}

fn tag_heavy_pushes(length: Duration) -> Row {
    tag_heavy(length, Options::default())
}

fn tag_heavy_pushes_synced(length: Duration) -> Row {
    tag_heavy(length, Options::default().sync())
}

/// The floor: ordinary pushes, each durable.
fn plain_pushes_synced(length: Duration) -> Row {
    let server = Server::start_with(&Options::default().sync());
    measure(&server, length, |until| push_until(&server, "plain", until))
}

fn tag_heavy(length: Duration, options: Options) -> Row {
    let server = Server::start_with(&options);
    let manifest = empty_image(&server, "heavy");
    let target = format!("/v2/heavy/manifests/{}", digest(&manifest));
    measure(&server, length, |until| {
        let mut round = 0;
        while Instant::now() < until {
            let tags: Vec<String> = (0..angos::registry::TAGS_PER_PUSH_MAX)
                .map(|n| format!("tag=r{round}-{n}"))
                .collect();
            let path = format!("{target}?{}", tags.join("&"));
            server.request("PUT", &path, &[("Content-Type", OCI_MANIFEST)], &manifest);
            round += 1;
        }
    })
}

fn tag_paging(length: Duration) -> Row {
    let dir = TempDir::new("bench-many-tags");
    let server = Server::start_in(dir.path(), &Options::default());
    many_tags(&server, &dir.path().join("data"), "many", 50_000);
    measure(&server, length, |until| {
        thread::scope(|scope| {
            for client in 0..8u32 {
                let server = &server;
                scope.spawn(move || {
                    let mut conn = server.connect();
                    let mut n = 0u32;
                    while Instant::now() < until {
                        let last = format!("t{:05}", (client * 6000 + n) % 49_999);
                        conn.request("GET", &format!("/v2/many/tags/list?n=1&last={last}"), &[], b"");
                        n += 1;
                    }
                });
            }
        })
    })
}

/// The control for `tag_paging`: as many clients, as busy, asking for the
/// cheapest answer there is. What the probe waits here is the machine (two
/// cores shared by the server and nine client threads), not the listing.
fn busy_clients(length: Duration) -> Row {
    let server = Server::start();
    measure(&server, length, |until| {
        thread::scope(|scope| {
            for _ in 0..8 {
                let server = &server;
                scope.spawn(move || {
                    let mut conn = server.connect();
                    while Instant::now() < until {
                        conn.request("GET", "/v2/", &[], b"");
                    }
                });
            }
        })
    })
}

fn slow_manifest_bodies(length: Duration) -> Row {
    let server = Server::start();
    measure(&server, length, |until| {
        // Each announces a 5 MiB manifest and sends 64 KiB of it now and then.
        let chunk = vec![b' '; 64 * 1024];
        let mut conns = Vec::new();
        for _ in 0..4000 {
            if let Ok(mut conn) = Conn::try_open(server.addr) {
                let head = "PUT /v2/slow/manifests/v1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: 5242880\r\n\r\n";
                if conn.try_send(head.as_bytes()).is_ok() {
                    conns.push(conn);
                }
            }
        }
        while Instant::now() < until {
            for conn in &mut conns {
                let _ = conn.try_send(&chunk);
            }
            thread::sleep(Duration::from_millis(500));
        }
    })
}
