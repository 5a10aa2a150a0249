//! Liveness of the single-threaded reactor under idle and slow clients:
//! 1,000 idle connections plus a client sending one header byte per second do
//! not delay a normal request, a reader that stops taking a download holds no
//! one else, and a connection's deadline reaches the reactor's timer wheel (a
//! stalled head is cut off on a real socket). The connection's timeouts
//! themselves (header, body and minimum rate, keep-alive, lingering) are
//! tested on a hand-driven clock beside `http::server`. The test only waits
//! on socket reads with a read timeout.
// End-to-end tests time the real binary from outside: wall-clock reads are
// the point here, not a way around the driven clock (clippy.toml).
#![allow(clippy::disallowed_methods)]

use crate::common;

use common::*;
use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const IDLE_CONNECTIONS: usize = 1000;
/// Client sockets here, the server's accepted sockets, and some slack.
const FDS_NEEDED: u64 = 2 * IDLE_CONNECTIONS as u64 + 200;
/// Generous: this is a liveness check, not a benchmark.
const NORMAL_REQUEST_BOUND: Duration = Duration::from_secs(2);

#[test]
fn idle_and_slow_clients_do_not_delay_a_normal_request() {
    let limit = open_files_soft_limit().expect("cannot read the open-files limit");
    assert!(
        limit >= FDS_NEEDED,
        "the open-files soft limit is {limit}, but this test needs at least {FDS_NEEDED} \
         ({IDLE_CONNECTIONS} client sockets here and as many in the server); raise it with \
         `ulimit -n 4096` before `cargo test` (scripts/test.sh does)"
    );
    let server = Server::start();
    let blob = pseudo_random_bytes(7, 200_000);
    let d = push_blob(&server, "live", &blob);

    let mut idle = Vec::with_capacity(IDLE_CONNECTIONS);
    for i in 0..IDLE_CONNECTIONS {
        let stream = TcpStream::connect_timeout(&server.addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("idle connection {i}: {e}"));
        idle.push(stream);
    }

    // The slow client: one byte of a request head per second.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let slow = {
        let stop = Arc::clone(&stop);
        let sent = Arc::clone(&sent);
        let addr = server.addr;
        thread::spawn(move || {
            let mut stream = TcpStream::connect(addr).expect("slow client connect");
            for byte in b"GET /v2/ HTTP/1.1\r\nHost: slow\r\nX-Slow: yes\r\n\r\n" {
                if stop.load(Ordering::Relaxed) || stream.write_all(&[*byte]).is_err() {
                    break;
                }
                sent.fetch_add(1, Ordering::Relaxed);
                // Pacing the client, not driving any timer of the server.
                for _ in 0..10 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            }
        })
    };
    while sent.load(Ordering::Relaxed) < 2 {
        thread::sleep(Duration::from_millis(50));
    }

    // Normal requests, a few rounds while the slow client trickles.
    for round in 0..3 {
        let started = Instant::now();
        let mut conn = server.connect();
        conn.request("GET", "/v2/", &[], b"").assert_status(200);
        let get = conn.request("GET", &format!("/v2/live/blobs/{d}"), &[], b"");
        get.assert_status(200);
        assert!(get.body == blob);
        let fresh = format!("round {round}").into_bytes();
        conn.request(
            "POST",
            &format!("/v2/live/blobs/uploads/?digest={}", digest(&fresh)),
            &[],
            &fresh,
        )
        .assert_status(201);
        let elapsed = started.elapsed();
        assert!(
            elapsed < NORMAL_REQUEST_BOUND,
            "round {round}: normal requests took {elapsed:?} with {IDLE_CONNECTIONS} idle \
             connections and a slow client (bound {NORMAL_REQUEST_BOUND:?})"
        );
        thread::sleep(Duration::from_millis(300));
    }

    // The idle connections were really accepted and are served when they speak.
    for i in [0, IDLE_CONNECTIONS / 2, IDLE_CONNECTIONS - 1] {
        let stream = idle[i].try_clone().unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut conn = Conn::from_stream(stream);
        let started = Instant::now();
        let response = conn.request("GET", "/v2/", &[], b"");
        response.assert_status(200);
        assert!(
            started.elapsed() < NORMAL_REQUEST_BOUND,
            "idle connection {i} waited {:?}",
            started.elapsed()
        );
    }

    stop.store(true, Ordering::Relaxed);
    slow.join().unwrap();
    drop(idle);
    let mut server = server;
    server.assert_alive();
}

#[test]
fn header_timeout_closes_a_connection_that_never_completes_its_head() {
    let server = Server::start_with(&Options::default().server_line("header_timeout_ms = 500"));
    let mut conn = server.connect();
    conn.send(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Never: finished");
    let started = Instant::now();
    assert!(
        conn.closed_within(Duration::from_secs(5)),
        "a head incomplete after header_timeout_ms must get its connection closed"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(300),
        "closed after {elapsed:?}, before the 500 ms header timeout"
    );
    // If the server said anything first, it is a 408 (RFC 9110 section 15.5.9).
    if !conn.buffered().is_empty() {
        let text = String::from_utf8_lossy(conn.buffered()).into_owned();
        assert!(text.starts_with("HTTP/1.1 408"), "unexpected reply {text:?}");
    }
    server.get("/v2/").assert_status(200);
}

#[test]
fn a_client_that_stops_reading_a_download_does_not_stall_others() {
    // Back-pressure: the server must park the stalled response, not spin on it or
    // block the loop, and resume it when the client reads again.
    let server = Server::start();
    let blob = pseudo_random_bytes(9, 32 << 20);
    let d = angos::digest::Digest::sha256_of(&blob).to_string();
    let response = server.request(
        "POST",
        &format!("/v2/stalled/blobs/uploads/?digest={d}"),
        &[],
        &blob,
    );
    response.assert_status(201);

    let mut stalled = server.connect();
    stalled.send(&Conn::request_bytes(
        "GET",
        &format!("/v2/stalled/blobs/{d}"),
        &[],
        b"",
    ));
    // Let the server fill the socket buffers and hit WouldBlock.
    thread::sleep(Duration::from_millis(500));

    for round in 0..3 {
        let started = Instant::now();
        let mut conn = server.connect();
        conn.request("GET", "/v2/", &[], b"").assert_status(200);
        let small = format!("small {round}").into_bytes();
        conn.request(
            "POST",
            &format!("/v2/stalled/blobs/uploads/?digest={}", digest(&small)),
            &[],
            &small,
        )
        .assert_status(201);
        assert!(
            started.elapsed() < NORMAL_REQUEST_BOUND,
            "round {round}: a stalled download delayed other clients by {:?}",
            started.elapsed()
        );
    }

    let response = stalled
        .read_response("GET")
        .expect("the stalled download resumes");
    response.assert_status(200);
    assert!(response.body == blob, "the resumed download is corrupt");
}
