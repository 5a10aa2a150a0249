//! End-to-end tests of the HTTP/1.1 layer over real sockets (RFC 9112, RFC 9110):
//! keep-alive reuse, pipelined requests answered in order, chunked request bodies,
//! `Expect: 100-continue`, HEAD framing, 431 for oversized heads, 400 for malformed
//! requests, and refusal of request smuggling (both `Content-Length` and
//! `Transfer-Encoding`, conflicting lengths), with the connection closed after.
// End-to-end tests time the real binary from outside: wall-clock reads are
// the point here, not a way around the driven clock (clippy.toml).
#![allow(clippy::disallowed_methods)]

use crate::common;

use common::*;
use std::time::Duration;

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let server = Server::start();
    let data = b"keep-alive blob".to_vec();
    let d = push_blob(&server, "ka", &data);
    let mut conn = server.connect();
    for i in 0..50 {
        let response = match i % 3 {
            0 => conn.request("GET", "/v2/", &[], b""),
            1 => conn.request("GET", &format!("/v2/ka/blobs/{d}"), &[], b""),
            _ => conn.request("HEAD", &format!("/v2/ka/blobs/{d}"), &[], b""),
        };
        response.assert_status(200);
        assert_ne!(
            response.header("connection").map(str::to_ascii_lowercase),
            Some("close".to_string()),
            "request {i} closed a keep-alive connection"
        );
        if i % 3 == 1 {
            assert_eq!(response.body, data);
        }
    }
    // Errors do not close the connection either.
    let missing = conn.request("GET", &format!("/v2/ka/blobs/{}", digest(b"no")), &[], b"");
    missing.assert_status(404);
    conn.request("GET", "/v2/", &[], b"").assert_status(200);
    // Uploads with bodies on the same connection.
    for i in 0..5u8 {
        let body = vec![i; 100 + i as usize];
        let path = format!("/v2/ka/blobs/uploads/?digest={}", digest(&body));
        conn.request("POST", &path, &[], &body).assert_status(201);
    }
}

#[test]
fn connection_close_is_honoured() {
    let server = Server::start();
    let mut conn = server.connect();
    let response = conn.request("GET", "/v2/", &[("Connection", "close")], b"");
    response.assert_status(200);
    assert!(
        conn.closed_within(Duration::from_secs(5)),
        "the server must close after a response to 'Connection: close'"
    );
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = Server::start();
    let blobs: Vec<Vec<u8>> = (0..5)
        .map(|i| format!("pipelined blob number {i}").into_bytes())
        .collect();
    let digests: Vec<String> = blobs.iter().map(|b| push_blob(&server, "pipe", b)).collect();

    // Everything in one write: GETs, HEADs, an error, a POST with a body, GETs again.
    let mut wire = Vec::new();
    let mut expected: Vec<(&str, u16, Option<Vec<u8>>)> = Vec::new();
    for (i, d) in digests.iter().enumerate() {
        wire.extend(Conn::request_bytes(
            "GET",
            &format!("/v2/pipe/blobs/{d}"),
            &[],
            b"",
        ));
        expected.push(("GET", 200, Some(blobs[i].clone())));
        wire.extend(Conn::request_bytes(
            "HEAD",
            &format!("/v2/pipe/blobs/{d}"),
            &[],
            b"",
        ));
        expected.push(("HEAD", 200, Some(Vec::new())));
    }
    wire.extend(Conn::request_bytes(
        "GET",
        &format!("/v2/pipe/blobs/{}", digest(b"absent")),
        &[],
        b"",
    ));
    expected.push(("GET", 404, None));
    let fresh = b"uploaded while pipelined".to_vec();
    wire.extend(Conn::request_bytes(
        "POST",
        &format!("/v2/pipe/blobs/uploads/?digest={}", digest(&fresh)),
        &[],
        &fresh,
    ));
    expected.push(("POST", 201, None));
    wire.extend(Conn::request_bytes(
        "GET",
        &format!("/v2/pipe/blobs/{}", digest(&fresh)),
        &[],
        b"",
    ));
    expected.push(("GET", 200, Some(fresh.clone())));
    for (i, d) in digests.iter().enumerate().rev() {
        wire.extend(Conn::request_bytes(
            "GET",
            &format!("/v2/pipe/blobs/{d}"),
            &[],
            b"",
        ));
        expected.push(("GET", 200, Some(blobs[i].clone())));
    }

    let mut conn = server.connect();
    conn.send(&wire);
    for (i, (method, status, body)) in expected.iter().enumerate() {
        let response = conn
            .read_response(method)
            .unwrap_or_else(|e| panic!("pipelined response {i}: {e}"));
        assert_eq!(
            response.status,
            *status,
            "pipelined response {i} ({method}) out of order: {}",
            response.describe()
        );
        if let Some(body) = body {
            assert_eq!(&response.body, body, "pipelined response {i} has the wrong body");
        }
    }
}

#[test]
fn pipelined_requests_sent_byte_by_byte() {
    // The parser must cope with heads and bodies split at every byte.
    let server = Server::start();
    let body = b"split everywhere".to_vec();
    let mut wire = Conn::request_bytes(
        "POST",
        &format!("/v2/split/blobs/uploads/?digest={}", digest(&body)),
        &[],
        &body,
    );
    wire.extend(Conn::request_bytes(
        "GET",
        &format!("/v2/split/blobs/{}", digest(&body)),
        &[],
        b"",
    ));
    let mut conn = server.connect();
    for byte in &wire {
        conn.send(std::slice::from_ref(byte));
    }
    conn.read_response("POST").unwrap().assert_status(201);
    let get = conn.read_response("GET").unwrap();
    get.assert_status(200);
    assert_eq!(get.body, body);
}

#[test]
fn chunked_request_body_with_extensions_and_trailers() {
    // RFC 9112 section 7.1: chunk extensions are ignored, the trailer section is read.
    let server = Server::start();
    let data = b"hello, chunked world".to_vec();
    let mut body = Vec::new();
    body.extend_from_slice(b"5;name=value\r\nhello\r\n");
    body.extend_from_slice(b"0F\r\n, chunked world\r\n");
    body.extend_from_slice(b"0\r\nX-Trailer: yes\r\n\r\n");
    let path = format!("/v2/chunky/blobs/uploads/?digest={}", digest(&data));
    let mut conn = server.connect();
    conn.request("POST", &path, &[("Transfer-Encoding", "chunked")], &body)
        .assert_status(201);
    // The connection is still in sync after the trailer.
    let get = conn.request("GET", &format!("/v2/chunky/blobs/{}", digest(&data)), &[], b"");
    get.assert_status(200);
    assert_eq!(get.body, data);
}

#[test]
fn malformed_chunked_body_is_400() {
    let server = Server::start();
    let location = start_upload(&server, "badchunk");
    let mut conn = server.connect();
    let response = conn.request(
        "PATCH",
        &location,
        &[("Transfer-Encoding", "chunked")],
        b"zz\r\nhello\r\n0\r\n\r\n",
    );
    response.assert_status(400);
}

#[test]
fn expect_100_continue() {
    let server = Server::start();
    let data = pseudo_random_bytes(100, 50_000);
    let path = format!("/v2/expect/blobs/uploads/?digest={}", digest(&data));
    let mut conn = server.connect();
    let head = Conn::request_bytes(
        "POST",
        &path,
        &[
            ("Expect", "100-continue"),
            ("Content-Length", &data.len().to_string()),
        ],
        b"",
    );
    conn.send(&head);
    conn.set_read_timeout(Duration::from_secs(5));
    let interim = conn
        .read_one("POST")
        .expect("the server must answer 100 Continue before the body is sent");
    assert_eq!(interim.status, 100, "{}", interim.describe());
    conn.set_read_timeout(IO_TIMEOUT);
    conn.send(&data);
    conn.read_response("POST").unwrap().assert_status(201);
    let get = conn.request("GET", &format!("/v2/expect/blobs/{}", digest(&data)), &[], b"");
    get.assert_status(200);
    assert_eq!(get.body, data);
}

#[test]
fn expect_100_continue_with_chunked_patch() {
    let server = Server::start();
    let location = start_upload(&server, "expect-patch");
    let mut conn = server.connect();
    conn.send(&Conn::request_bytes(
        "PATCH",
        &location,
        &[("Expect", "100-continue"), ("Transfer-Encoding", "chunked")],
        b"",
    ));
    conn.set_read_timeout(Duration::from_secs(5));
    let interim = conn.read_one("PATCH").expect("100 Continue");
    assert_eq!(interim.status, 100, "{}", interim.describe());
    conn.set_read_timeout(IO_TIMEOUT);
    conn.send(b"3\r\nabc\r\n0\r\n\r\n");
    let response = conn.read_response("PATCH").unwrap();
    response.assert_status(202);
    assert_eq!(response.header("range"), Some("0-2"));
}

#[test]
fn head_response_has_no_body_even_for_large_blobs() {
    let server = Server::start();
    let data = pseudo_random_bytes(101, 300_000);
    let d = push_blob(&server, "headbig", &data);
    let mut conn = server.connect();
    let head = conn.request("HEAD", &format!("/v2/headbig/blobs/{d}"), &[], b"");
    head.assert_status(200);
    assert_eq!(head.header("content-length"), Some("300000"));
    // If any body byte had been sent, this would read garbage as a status line.
    conn.request("GET", "/v2/", &[], b"").assert_status(200);
    assert!(conn.buffered().is_empty());
}

#[test]
fn oversized_head_is_431() {
    let server = Server::start();
    // One huge header field (default max_header_size is 16 KiB).
    let mut conn = server.connect();
    let big = "x".repeat(20 * 1024);
    let response = conn.request("GET", "/v2/", &[("X-Big", &big)], b"");
    response.assert_status(431);

    // Many small fields adding up past the limit.
    let mut conn = server.connect();
    let mut wire = b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n".to_vec();
    for i in 0..600 {
        wire.extend_from_slice(format!("X-Field-{i}: {}\r\n", "v".repeat(30)).as_bytes());
    }
    wire.extend_from_slice(b"\r\n");
    let _ = conn.try_send(&wire);
    let response = conn.read_response("GET").expect("a 431 response");
    response.assert_status(431);

    // The server is fine afterwards.
    server.get("/v2/").assert_status(200);
}

#[test]
fn configured_max_header_size_is_applied() {
    let server = Server::start_with(&Options::default().server_line("max_header_size = \"1KiB\""));
    let fits = "y".repeat(500);
    server
        .request("GET", "/v2/", &[("X-Fits", &fits)], b"")
        .assert_status(200);
    let big = "y".repeat(2000);
    server
        .request("GET", "/v2/", &[("X-Big", &big)], b"")
        .assert_status(431);
}

/// Sends raw bytes on a fresh connection and reads one response.
fn raw(server: &Server, wire: &[u8]) -> (Conn, Response) {
    let mut conn = server.connect();
    let _ = conn.try_send(wire);
    let response = conn
        .read_response("GET")
        .unwrap_or_else(|e| panic!("no response to {:?}: {e}", String::from_utf8_lossy(wire)));
    (conn, response)
}

#[test]
fn malformed_requests_are_400() {
    let server = Server::start();
    for wire in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"GET /v2/ HTTP/9.9\r\nHost: x\r\n\r\n",
    ] {
        let (_, response) = raw(&server, wire);
        assert!(
            response.status == 400 || (wire.starts_with(b"GET /v2/ HTTP/9") && response.status == 505),
            "expected 400 for {:?}, got: {}",
            String::from_utf8_lossy(wire),
            response.describe()
        );
    }
    server.get("/v2/").assert_status(200);
}

#[test]
fn http11_request_without_host_is_400() {
    // RFC 9112 section 3.2: a server MUST respond 400 to an HTTP/1.1 request
    // without a Host header field.
    let server = Server::start();
    let (_, response) = raw(&server, b"GET /v2/ HTTP/1.1\r\n\r\n");
    response.assert_status(400);
}

#[test]
fn content_length_with_transfer_encoding_is_refused_and_closed() {
    // RFC 9112 section 6.1: such a request may be rejected; the connection MUST be
    // closed after responding. The smuggled request must never be answered.
    let server = Server::start();
    let smuggled = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut wire = format!(
        "POST /v2/smuggle/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        5 + smuggled.len()
    )
    .into_bytes();
    wire.extend_from_slice(smuggled);
    let (mut conn, response) = raw(&server, &wire);
    response.assert_status(400);
    assert!(
        conn.closed_within(Duration::from_secs(5)),
        "the connection must be closed after a request with both Content-Length and \
         Transfer-Encoding"
    );
    assert!(
        conn.buffered().is_empty(),
        "a second response was sent: {:?}",
        String::from_utf8_lossy(conn.buffered())
    );

    // Transfer-Encoding first, Content-Length second: same.
    let wire = b"POST /v2/smuggle/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n";
    let (mut conn, response) = raw(&server, wire);
    response.assert_status(400);
    assert!(conn.closed_within(Duration::from_secs(5)));
}

#[test]
fn conflicting_content_lengths_are_refused() {
    // RFC 9112 section 6.3: differing Content-Length values are unrecoverable.
    let server = Server::start();
    let wire = b"POST /v2/cl/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 10\r\n\r\nabcdefghij";
    let (mut conn, response) = raw(&server, wire);
    response.assert_status(400);
    assert!(conn.closed_within(Duration::from_secs(5)));
    let wire = b"POST /v2/cl/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 10\r\n\r\nabcdefghij";
    let (mut conn, response) = raw(&server, wire);
    response.assert_status(400);
    assert!(conn.closed_within(Duration::from_secs(5)));
}

#[test]
fn transfer_encoding_not_ending_in_chunked_is_refused() {
    // RFC 9112 section 6.3: a request whose final transfer coding is not chunked
    // cannot be framed; the server MUST respond 400 and close.
    let server = Server::start();
    let wire = b"POST /v2/te/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n";
    let (mut conn, response) = raw(&server, wire);
    assert!(
        response.status == 400 || response.status == 501,
        "{}",
        response.describe()
    );
    assert!(conn.closed_within(Duration::from_secs(5)));
}

#[test]
fn request_for_unknown_method_is_answered() {
    let server = Server::start();
    let response = server.request("BREW", "/v2/", &[], b"");
    assert!(
        response.status == 405 || response.status == 501 || response.status == 404,
        "{}",
        response.describe()
    );
    server.get("/v2/").assert_status(200);
}

#[test]
fn tls_client_hello_on_plain_port_does_not_hurt_the_server() {
    // Clients with TLS verification off (skopeo) try HTTPS first.
    let server = Server::start();
    let mut conn = server.connect();
    let hello: Vec<u8> = [0x16u8, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03]
        .iter()
        .copied()
        .chain(std::iter::repeat_n(0u8, 160))
        .collect();
    let _ = conn.try_send(&hello);
    assert!(conn.closed_within(Duration::from_secs(15)));
    server.get("/v2/").assert_status(200);
}

#[test]
fn http10_request_is_answered_and_closed() {
    // RFC 9112 section 9.3: without "Connection: keep-alive", an HTTP/1.0
    // connection does not persist.
    let server = Server::start();
    let (mut conn, response) = raw(&server, b"GET /v2/ HTTP/1.0\r\n\r\n");
    response.assert_status(200);
    assert!(conn.closed_within(Duration::from_secs(5)));
}

#[test]
fn error_response_to_a_request_with_a_body_keeps_the_connection_in_sync() {
    // A request refused before its body is read: the server must either consume
    // the body or close the connection, never parse the body as the next request.
    let server = Server::start();
    let mut body = b"GET /v2/smuggled HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    body.resize(20_000, b'z');
    let mut wire = Conn::request_bytes("POST", "/v2/Bad_Name/blobs/uploads/", &[], &body);
    wire.extend(Conn::request_bytes("GET", "/v2/", &[], b""));
    let mut conn = server.connect();
    let _ = conn.try_send(&wire);
    let first = conn
        .read_response("POST")
        .expect("a response to the invalid name");
    first.assert_error(400, "NAME_INVALID");
    // Either answered correctly, or closed instead (also safe).
    if let Ok(second) = conn.read_response("GET") {
        assert_eq!(
            second.status,
            200,
            "the body was read as a request: {}",
            second.describe()
        );
    }

    // The same with a chunked body and an unknown route.
    let mut wire = Conn::request_bytes(
        "PATCH",
        "/v2/nowhere/blobs/uploads/00000000-0000-4000-8000-000000000000",
        &[("Transfer-Encoding", "chunked")],
        b"1c\r\nGET /v2/smuggled HTTP/1.1\r\n\r\n\r\n0\r\n\r\n",
    );
    wire.extend(Conn::request_bytes("GET", "/v2/", &[], b""));
    let mut conn = server.connect();
    let _ = conn.try_send(&wire);
    let first = conn.read_response("PATCH").expect("a response");
    first.assert_status(404);
    if let Ok(second) = conn.read_response("GET") {
        assert_eq!(second.status, 200, "{}", second.describe());
    }
}

#[test]
fn connections_beyond_max_connections_are_refused_and_recovered() {
    let server = Server::start_with(&Options::default().server_line("max_connections = 4"));
    let mut held: Vec<Conn> = (0..4)
        .map(|_| {
            let mut conn = server.connect();
            conn.request("GET", "/v2/", &[], b"").assert_status(200);
            conn
        })
        .collect();
    // The fifth is refused: a 503, or closed without an answer.
    let mut extra = server.connect();
    let _ = extra.try_send(&Conn::request_bytes("GET", "/v2/", &[], b""));
    extra.set_read_timeout(Duration::from_secs(5));
    match extra.read_response("GET") {
        Ok(response) => {
            response.assert_status(503);
        }
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "a connection beyond max_connections was neither refused nor answered within 5 s"
        ),
    }
    // The held ones still work; after one closes, a newcomer is served.
    held[0].request("GET", "/v2/", &[], b"").assert_status(200);
    drop(held.pop());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut conn = server.connect();
        let _ = conn.try_send(&Conn::request_bytes("GET", "/v2/", &[], b""));
        match conn.read_response("GET") {
            Ok(r) if r.status == 200 => break,
            other => assert!(
                std::time::Instant::now() < deadline,
                "no connection accepted after one closed: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn pipelined_small_requests_are_answered_in_order() {
    // The same as above without file-backed bodies: heads, small JSON bodies, HEADs.
    let server = Server::start();
    let d = push_blob(&server, "pipe-small", b"small");
    let mut wire = Vec::new();
    let mut methods = Vec::new();
    for i in 0..12 {
        let (method, path) = match i % 3 {
            0 => ("GET", "/v2/".to_string()),
            1 => ("HEAD", format!("/v2/pipe-small/blobs/{d}")),
            _ => ("GET", "/v2/never-pushed/tags/list".to_string()),
        };
        wire.extend(Conn::request_bytes(method, &path, &[], b""));
        methods.push(method);
    }
    let mut conn = server.connect();
    conn.send(&wire);
    conn.set_read_timeout(Duration::from_secs(5));
    for (i, method) in methods.iter().enumerate() {
        let response = conn
            .read_response(method)
            .unwrap_or_else(|e| panic!("pipelined response {i}: {e}"));
        let expected = if i % 3 == 2 { 404 } else { 200 };
        assert_eq!(response.status, expected, "response {i}: {}", response.describe());
    }
}

#[test]
fn pipelined_blob_downloads_are_all_answered() {
    let server = Server::start();
    let blob = pseudo_random_bytes(5, 10_000);
    let d = push_blob(&server, "pipe-blobs", &blob);
    let request = Conn::request_bytes("GET", &format!("/v2/pipe-blobs/blobs/{d}"), &[], b"");
    let mut conn = server.connect();
    conn.send(&request.repeat(10));
    conn.set_read_timeout(Duration::from_secs(5));
    for i in 0..10 {
        let response = conn
            .read_response("GET")
            .unwrap_or_else(|e| panic!("pipelined blob GET {i} of 10 was not answered within 5 s: {e}"));
        response.assert_status(200);
        assert!(response.body == blob, "pipelined blob GET {i}: wrong body");
    }
}

#[test]
fn absolute_form_request_target_is_accepted() {
    // RFC 9112 section 3.2.2: "A server MUST accept the absolute-form in requests."
    let server = Server::start();
    let (_, response) = raw(
        &server,
        b"GET http://127.0.0.1/v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    );
    response.assert_status(200);
}

#[test]
fn header_names_and_transfer_coding_are_case_insensitive() {
    let server = Server::start();
    let data = b"abc".to_vec();
    let wire = format!(
        "POST /v2/case/blobs/uploads/?digest={} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        digest(&data)
    );
    let (_, response) = raw(&server, wire.as_bytes());
    response.assert_status(201);
    let data = b"abcd".to_vec();
    let wire = format!(
        "POST /v2/case/blobs/uploads/?digest={} HTTP/1.1\r\nHOST: x\r\nCONTENT-LENGTH:    4   \r\n\r\nabcd",
        digest(&data)
    );
    let (_, response) = raw(&server, wire.as_bytes());
    response.assert_status(201);
}

#[test]
fn body_on_a_get_request_is_not_read_and_the_connection_closes() {
    // A route that takes no body is answered at once; the body is not read
    // (a client trickling one would otherwise hold the connection), so the
    // connection cannot carry another request (issue 19).
    let server = Server::start();
    let mut conn = server.connect();
    conn.send(
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    conn.set_read_timeout(Duration::from_secs(5));
    let response = conn.read_response("GET").unwrap();
    response.assert_status(200);
    assert_eq!(response.header("connection"), Some("close"));
    assert!(
        conn.closed_within(Duration::from_secs(5)),
        "the connection stayed open"
    );
}
