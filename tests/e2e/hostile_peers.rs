//! Hostile peers on the real binary (issue 19): webhook receivers that answer
//! with endless or huge bodies, or trickle them. Each case asserts the bound
//! (peak RSS from `/proc`, the time the push takes, the answer given) and that
//! a well-behaved client keeps being served meanwhile.
// End-to-end tests time the real binary from outside.
#![allow(clippy::disallowed_methods)]

use crate::common;
use crate::webhook_support;

use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use common::hostile::*;
use common::*;
use webhook_support::*;

/// Probes `GET /v2/` back to back while `work` runs; returns its result, how
/// long it took, and the slowest probe.
fn probing<T: Send>(server: &Server, work: impl FnOnce() -> T + Send) -> (T, Duration, Duration) {
    thread::scope(|scope| {
        let started = Instant::now();
        let handle = scope.spawn(move || {
            let value = work();
            (value, started.elapsed())
        });
        let mut slowest = Duration::ZERO;
        let mut conn = server.connect();
        while !handle.is_finished() {
            let probe = Instant::now();
            conn.request("GET", "/v2/", &[], b"").assert_status(200);
            slowest = slowest.max(probe.elapsed());
            thread::sleep(Duration::from_millis(2));
        }
        let (value, took) = handle.join().unwrap();
        (value, took, slowest)
    })
}

/// Memory the server may use above its idle peak while a hostile receiver
/// streams at it: a few read buffers, nowhere near the bytes sent.
const RSS_GROWTH_MAX: u64 = 16 << 20;
/// How long another client may wait for `GET /v2/` meanwhile (debug build,
/// two shared cores; the bound that matters is "not seconds").
const PROBE_BOUND: Duration = Duration::from_millis(250);

#[test]
fn an_endless_chunked_answer_is_cut_off_and_counts_by_its_status() {
    let receiver = HostileReceiver::start(Answer::EndlessChunks);
    let setup = Setup::new().hook(
        Webhook::new("gate", &receiver.url(), "required", &["manifest.push"])
            .timeout_ms(10_000)
            .max_retries(0),
    );
    let registry = Registry::start(&setup);
    let before = peak_rss_bytes(&registry);
    let manifest = prepare_image(&registry, "hostile/endless", "endless");
    let (response, took, slowest) = probing(&registry, || {
        put_manifest(&registry, "hostile/endless", "v1", OCI_MANIFEST, &manifest)
    });
    // The receiver said 200 before its body ran on: the push goes through,
    // long before the 10 s attempt timeout.
    response.assert_status(201);
    assert!(took < Duration::from_secs(2), "the push took {took:?}");
    assert!(slowest < PROBE_BOUND, "another client waited {slowest:?}");
    let growth = peak_rss_bytes(&registry).saturating_sub(before);
    assert!(growth < RSS_GROWTH_MAX, "peak RSS grew by {growth} bytes");
    eprintln!(
        "endless body: push {took:?}, slowest probe {slowest:?}, RSS +{} KiB, receiver sent {} KiB",
        growth / 1024,
        receiver.sent.load(Ordering::Relaxed) / 1024
    );
}

#[test]
fn a_huge_failing_answer_is_not_buffered_and_fails_the_push_in_time() {
    let receiver = HostileReceiver::start(Answer::Huge { len: 100 << 20 });
    let setup = Setup::new().hook(
        Webhook::new("gate", &receiver.url(), "required", &["manifest.push"])
            .timeout_ms(5_000)
            .max_retries(1),
    );
    let registry = Registry::start(&setup);
    let before = peak_rss_bytes(&registry);
    let manifest = prepare_image(&registry, "hostile/huge", "huge");
    let (response, took, slowest) = probing(&registry, || {
        put_manifest(&registry, "hostile/huge", "v1", OCI_MANIFEST, &manifest)
    });
    response.assert_status(500);
    // Two attempts, each decided by its status line: well inside one timeout.
    assert!(took < Duration::from_secs(5), "the push took {took:?}");
    assert!(slowest < PROBE_BOUND, "another client waited {slowest:?}");
    let growth = peak_rss_bytes(&registry).saturating_sub(before);
    assert!(growth < RSS_GROWTH_MAX, "peak RSS grew by {growth} bytes");
    registry.get("/v2/hostile/huge/manifests/v1").assert_status(404);
    eprintln!(
        "100 MB body: push {took:?}, slowest probe {slowest:?}, RSS +{} KiB",
        growth / 1024
    );
}

#[test]
fn a_trickled_answer_fails_the_attempt_within_its_timeout() {
    let receiver = HostileReceiver::start(Answer::Trickle);
    let setup = Setup::new().hook(
        Webhook::new("gate", &receiver.url(), "required", &["manifest.push"])
            .timeout_ms(1_000)
            .max_retries(1),
    );
    let registry = Registry::start(&setup);
    let manifest = prepare_image(&registry, "hostile/trickle", "trickle");
    let (response, took, slowest) = probing(&registry, || {
        put_manifest(&registry, "hostile/trickle", "v1", OCI_MANIFEST, &manifest)
    });
    // The status line came at once, but the answer never completes: each
    // attempt ends at its timeout, and the push fails after two of them.
    response.assert_status(500);
    assert!(took < Duration::from_secs(4), "the push took {took:?}");
    assert!(slowest < PROBE_BOUND, "another client waited {slowest:?}");
    registry
        .get("/v2/hostile/trickle/manifests/v1")
        .assert_status(404);
}

#[test]
fn a_body_sent_to_a_route_that_takes_none_holds_no_slot() {
    let server = Server::start_with(&Options::default().server_line("max_connections = 4"));
    // Every slot: a GET announcing a megabyte of body, one byte sent, never read.
    let mut attackers = Vec::new();
    for _ in 0..4 {
        let mut conn = server.connect();
        conn.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\na");
        attackers.push(conn);
    }
    for conn in &mut attackers {
        // Answered at once, without the body, and the connection is closed.
        let response = conn.read_response("GET").expect("an answer before the body");
        response.assert_status(200);
        assert_eq!(response.header("connection"), Some("close"));
    }
    // The slots come back within the short lingering close, although the
    // attackers keep their sockets open.
    let served = poll_until(Duration::from_secs(5), || {
        let mut conn = Conn::try_open(server.addr).ok()?;
        conn.set_read_timeout(Duration::from_millis(500));
        let response = conn.try_request("GET", "/v2/", &[], b"").ok()?;
        (response.status == 200).then_some(())
    });
    assert!(
        served.is_some(),
        "a new client was not served while the attackers held on"
    );
    drop(attackers);
}

/// A login as bob through a trusted proxy that says the client is `from`.
fn login(server: &Server, from: &str, password: &str) -> Response {
    let credentials = format!("bob:{password}");
    let header = format!("Basic {}", base64_encode(credentials.as_bytes()));
    server.request(
        "GET",
        "/v2/token",
        &[("Authorization", &header), ("X-Forwarded-For", from)],
        b"",
    )
}

#[test]
fn parallel_wrong_passwords_wait_like_sequential_ones_and_starve_no_one() {
    let server = Server::start_with(
        &Options::default()
            .server_line("trusted_proxies = [\"127.0.0.1\"]")
            .table(&identity_table("bob", "bob", "builder")),
    );
    let guesses = 100;
    // All the guesses at once, each on its own connection, answers not awaited.
    let wrong = format!("Basic {}", base64_encode(b"bob:guess"));
    let attackers = token_requests(&server, guesses, &wrong, "203.0.113.7");
    let started = Instant::now();
    let response = login(&server, "198.51.100.20", "builder");
    let legit = started.elapsed();
    response.assert_status(200);
    // Give the guesses a second: by then only a few may have been checked.
    thread::sleep(Duration::from_secs(1));
    let metrics = server.get("/metrics").text();
    let checked: f64 = metrics
        .lines()
        .filter(|line| line.starts_with("auth_failures_total{reason=\"wrong_password\"}"))
        .filter_map(|line| line.split_whitespace().last()?.parse::<f64>().ok())
        .sum();
    drop(attackers);
    assert!(
        legit < Duration::from_millis(500),
        "the right login took {legit:?}"
    );
    // Three free guesses, then 0.5 s, 1 s, 2 s... apart, as if sent one by one.
    assert!(checked <= 5.0, "{checked} guesses were checked in about a second");
    eprintln!(
        "{guesses} parallel guesses: {checked} checked in ~1 s; another address logged in in {legit:?}"
    );
}

#[test]
fn tag_heavy_and_descriptor_heavy_pushes_are_capped_and_cheap() {
    let server = Server::start_with(&Options::default().sync());
    let manifest = empty_image(&server, "heavy");
    let digest = digest(&manifest);
    let with_tags = |count: usize| {
        let query: Vec<String> = (0..count).map(|n| format!("tag=t{n:03}")).collect();
        format!("/v2/heavy/manifests/{digest}?{}", query.join("&"))
    };
    server
        .request(
            "PUT",
            &with_tags(angos::registry::TAGS_PER_PUSH_MAX + 1),
            &[("Content-Type", OCI_MANIFEST)],
            &manifest,
        )
        .assert_error(400, "TAG_INVALID");
    assert!(
        server
            .get("/v2/heavy/tags/list")
            .json()
            .string_list("tags")
            .is_empty()
    );

    // The most tags one push may set, each durable (sync_to_disk): one
    // fsync for their content and one for their directory, not two per tag.
    let (response, took, slowest) = probing(&server, || {
        server.request(
            "PUT",
            &with_tags(angos::registry::TAGS_PER_PUSH_MAX),
            &[("Content-Type", OCI_MANIFEST)],
            &manifest,
        )
    });
    response.assert_status(201);
    assert_eq!(
        response.headers_named("oci-tag").len(),
        angos::registry::TAGS_PER_PUSH_MAX
    );
    let tags = server.get("/v2/heavy/tags/list").json().string_list("tags");
    assert_eq!(tags.len(), angos::registry::TAGS_PER_PUSH_MAX);
    assert_eq!(server.get("/v2/heavy/manifests/t000").body, manifest);
    eprintln!("the most tags with sync_to_disk: {took:?}, slowest probe {slowest:?}");

    // A manifest listing more descriptors than any image has.
    let layers: Vec<String> = (0..4096).map(|_| descriptor(OCI_LAYER, b"x")).collect();
    let huge = ManifestSpec::oci(descriptor(OCI_EMPTY, b"{}"), layers)
        .to_json()
        .into_bytes();
    put_manifest(&server, "heavy", "huge", OCI_MANIFEST, &huge).assert_error(400, "MANIFEST_INVALID");
}

#[test]
fn upload_sessions_are_capped_per_namespace_and_expire_when_idle() {
    let server = Server::start_with(
        &Options::default()
            .storage_line("max_upload_sessions_per_namespace = 3")
            .storage_line("upload_session_idle_secs = 1"),
    );
    let locations: Vec<String> = (0..3).map(|_| start_upload(&server, "hoarder")).collect();
    server
        .request("POST", "/v2/hoarder/blobs/uploads/", &[], b"")
        .assert_error(429, "TOOMANYREQUESTS");
    // Another namespace still gets sessions.
    let kept = start_upload(&server, "worker");
    // Within one to two idle periods the hoarded sessions are gone, while one
    // that keeps sending chunks lives on.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut offset = 0;
    let expired = loop {
        let chunk = format!("chunk {offset:04}");
        let response = server.request(
            "PATCH",
            &kept,
            &[("Content-Range", &format!("{offset}-{}", offset + chunk.len() - 1))],
            chunk.as_bytes(),
        );
        response.assert_status(202);
        offset += chunk.len();
        let status = server.get(&locations[0]).status;
        if status == 404 || Instant::now() > deadline {
            break status == 404;
        }
        thread::sleep(Duration::from_millis(200));
    };
    assert!(expired, "an idle session outlived two idle periods");
    start_upload(&server, "hoarder");
}

#[test]
fn fifty_thousand_tags_page_in_time_proportional_to_the_page() {
    let dir = TempDir::new("many-tags");
    let server = Server::start_in(dir.path(), &Options::default());
    many_tags(&server, &dir.path().join("data"), "many", 50_000);
    // Paging through follows `Link` and sees every tag in order.
    let first = server.get("/v2/many/tags/list?n=1000");
    assert_eq!(first.json().string_list("tags").len(), 1000);
    let mut next = first.next_link();
    let mut seen = 1000;
    while let Some(link) = next {
        let page = server.get(&link);
        seen += page.json().string_list("tags").len();
        next = page.next_link();
    }
    assert_eq!(seen, 50_000);
    // Eight clients paging one tag at a time: others are served meanwhile.
    let ((), _, slowest) = probing(&server, || {
        thread::scope(|scope| {
            for client in 0..8 {
                let server = &server;
                scope.spawn(move || {
                    let mut conn = server.connect();
                    for n in 0..100 {
                        let last = format!("t{:05}", client * 5000 + n * 7);
                        let page =
                            conn.request("GET", &format!("/v2/many/tags/list?n=1&last={last}"), &[], b"");
                        let tags = page.json().string_list("tags");
                        assert_eq!(tags, [format!("t{:05}", client * 5000 + n * 7 + 1)]);
                    }
                });
            }
        })
    });
    assert!(slowest < PROBE_BOUND, "another client waited {slowest:?}");
    eprintln!("50,000 tags, 8 clients paging: slowest probe {slowest:?}");
}

#[test]
fn transfers_below_the_minimum_rate_are_cut_off_and_faster_ones_are_not() {
    // Windows of 500 ms, at least 64 KiB/s on average in each.
    let server = Server::start_with(
        &Options::default()
            .server_line("body_timeout_ms = 500")
            .server_line("min_transfer_rate_bytes_per_sec = 65536"),
    );
    // Larger than what loopback socket buffers absorb, so the answer waits on the reader.
    let blob = pseudo_random_bytes(19, 24 << 20);
    let d = push_blob(&server, "rates", &blob);

    // A reader taking 4 KiB every 100 ms (40 KiB/s) for three seconds: the
    // server gives up on it. What the kernel buffered still arrives; then the
    // connection ends, short of the whole blob.
    let slow = server.connect();
    let mut stream = slow.stream().try_clone().unwrap();
    stream
        .write_all(&Conn::request_bytes(
            "GET",
            &format!("/v2/rates/blobs/{d}"),
            &[],
            b"",
        ))
        .unwrap();
    let started = Instant::now();
    let mut received = 0usize;
    let mut buffer = vec![0u8; 4096];
    while started.elapsed() < Duration::from_secs(3) {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => received += n,
        }
        thread::sleep(Duration::from_millis(100));
    }
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    buffer.resize(1 << 20, 0);
    let ended = loop {
        match stream.read(&mut buffer) {
            Ok(0) => break true,
            Ok(n) => received += n,
            Err(_) => break false,
        }
    };
    assert!(
        ended,
        "the connection of a reader below the minimum rate stayed open"
    );
    assert!(
        received < blob.len(),
        "the slow reader got the whole blob ({received} bytes)"
    );

    // A body trickled at 1 KiB per 100 ms: 408 and closed.
    let location = start_upload(&server, "rates");
    let mut trickle = server.connect();
    trickle
        .send(format!("PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n").as_bytes());
    let started = Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(10) {
        if trickle.try_send(&[b'x'; 1024]).is_err() {
            closed = true;
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert!(closed, "a body below the minimum rate was accepted for 10 s");

    // A reader at full speed gets all of it.
    assert_eq!(server.get(&format!("/v2/rates/blobs/{d}")).body, blob);
}

#[test]
fn slow_readers_of_a_large_manifest_share_it_instead_of_copying_it() {
    let server = Server::start();
    let manifest = push_large_manifest(&server, "big");
    assert!(manifest.len() > 4 << 20);
    let before = peak_rss_bytes(&server);
    // 200 clients ask for it and read nothing.
    let readers = stalled_readers(&server, 200, "/v2/big/manifests/v1");
    thread::sleep(Duration::from_millis(500));
    server.get("/v2/").assert_status(200);
    let growth = peak_rss_bytes(&server).saturating_sub(before);
    drop(readers);
    // 200 copies would be 900 MB; sent from its file, it is a few buffers.
    assert!(growth < RSS_GROWTH_MAX, "peak RSS grew by {} MiB", growth >> 20);
    eprintln!(
        "200 stalled readers of a 4.5 MB manifest: RSS +{} KiB",
        growth / 1024
    );
    assert_eq!(server.get("/v2/big/manifests/v1").body, manifest);
}
