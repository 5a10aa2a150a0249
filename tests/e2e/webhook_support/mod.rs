//! Support for the event-webhook end-to-end tests (`tests/e2e/webhooks_*.rs`,
//! `webhook_formats.rs`): real receivers on loopback (a std-only HTTP one, a Python
//! HTTPS one, and the README's receivers run as printed), the
//! configuration of a registry with webhooks, log/metrics/process observation,
//! payload checks, and the registry operations the tests perform beyond
//! `common`. Nothing here mocks the server: it runs as the built binary.

pub mod config;
pub mod observe;
pub mod python;
pub mod receiver;
pub mod snippet;

pub use config::{Registry, Setup, Webhook};
pub use observe::*;
pub use python::{ClientCert, HttpsReceiver, TestCa, python_verify};
pub use receiver::{Receiver, Reply, Request, describe_all};
pub use snippet::SnippetReceiver;

use crate::common::{self, Json, Response, Server};
use std::time::Duration;

/// How long a test waits for something that should happen within milliseconds.
pub const SOON: Duration = Duration::from_secs(5);
/// How long a test waits for the server to notice an edited configuration file
/// (it checks about once a second).
pub const RELOAD_WAIT: Duration = Duration::from_secs(6);

/// Waits for `n` requests at `receiver`, panicking with what arrived and the
/// server's log when they do not.
#[track_caller]
pub fn expect_requests(receiver: &Receiver, n: usize, server: &Server) -> Vec<Request> {
    receiver.wait_for(n, SOON).unwrap_or_else(|| {
        panic!(
            "expected {n} webhook requests within {SOON:?}, got:\n{}\nserver output:\n{}",
            describe_all(&receiver.requests()),
            log_dump(server)
        )
    })
}

/// Asserts that exactly `n` requests arrived at `receiver` so far.
#[track_caller]
pub fn assert_count(receiver: &Receiver, n: usize, what: &str) {
    let requests = receiver.requests();
    assert_eq!(
        requests.len(),
        n,
        "{what}: expected {n} webhook requests, got:\n{}",
        describe_all(&requests)
    );
}

/// The `kind`s of `requests`, in order.
pub fn kinds(requests: &[Request]) -> Vec<String> {
    requests.iter().map(Request::kind).collect()
}

/// The `kind`s sorted, for comparing events of one operation whose order among
/// themselves is not specified (e.g. `manifest.push` and `tag.create`).
pub fn sorted_kinds(requests: &[Request]) -> Vec<String> {
    let mut kinds = kinds(requests);
    kinds.sort();
    kinds
}

/// A string list literal as `Vec<String>`, sorted.
pub fn sorted(items: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = items.iter().map(|s| s.to_string()).collect();
    out.sort();
    out
}

/// `8-4-4-4-12` lowercase or uppercase hex with version 4 and the RFC 4122 variant.
pub fn is_uuid_v4(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    let lengths = [8, 4, 4, 4, 12];
    groups.len() == 5
        && groups
            .iter()
            .zip(lengths)
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
        && groups[2].starts_with('4')
        && matches!(groups[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b' | b'A' | b'B')
}

/// RFC 3339 in UTC: `YYYY-MM-DDTHH:MM:SS[.fraction]Z`.
pub fn is_rfc3339_utc(text: &str) -> bool {
    let b = text.as_bytes();
    let digits =
        |range: std::ops::Range<usize>| b.get(range).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    if b.len() < 20 || !text.ends_with('Z') {
        return false;
    }
    let fixed = digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && (b[10] == b'T' || b[10] == b't')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    let rest = &text[19..text.len() - 1];
    fixed
        && (rest.is_empty()
            || (rest.starts_with('.') && rest.len() > 1 && rest[1..].bytes().all(|c| c.is_ascii_digit())))
}

/// What one delivery must carry whatever its event: a POST of JSON with the
/// documented headers and always-present fields, `kind` equal to the header.
#[track_caller]
pub fn check_envelope(request: &Request, kind: &str, namespace: &str, repository: &str) {
    let describe = request.describe();
    assert_eq!(request.method, "POST", "webhook deliveries are POSTs: {describe}");
    assert_eq!(request.version, "HTTP/1.1", "deliveries are HTTP/1.1: {describe}");
    assert!(
        request.header("host").is_some(),
        "an HTTP/1.1 request needs Host: {describe}"
    );
    let content_type = request.header("content-type").unwrap_or_default();
    assert!(
        content_type
            .split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json")),
        "Content-Type must be application/json: {describe}"
    );
    assert_eq!(request.event_header(), kind, "X-Registry-Event: {describe}");
    let agent = request.header("user-agent").unwrap_or_default();
    assert!(
        agent.contains("angos/"),
        "User-Agent must name angos and its version: {describe}"
    );
    let json = request.json();
    let field = |key: &str| json.get(key).and_then(Json::as_str).map(str::to_string);
    assert_eq!(field("kind").as_deref(), Some(kind), "payload kind: {describe}");
    assert_eq!(
        field("namespace").as_deref(),
        Some(namespace),
        "payload namespace: {describe}"
    );
    assert_eq!(
        field("repository").as_deref(),
        Some(repository),
        "payload repository: {describe}"
    );
    let id = field("id").unwrap_or_default();
    assert!(is_uuid_v4(&id), "payload id must be a UUID v4: {describe}");
    let timestamp = field("timestamp").unwrap_or_default();
    assert!(
        is_rfc3339_utc(&timestamp),
        "payload timestamp must be RFC 3339 UTC: {describe}"
    );
    if let Some(actor) = json.get("actor") {
        assert!(actor.as_object().is_some(), "actor must be an object: {describe}");
        if let Some(ip) = actor.get("client_ip") {
            assert_eq!(ip.as_str(), Some("127.0.0.1"), "actor.client_ip: {describe}");
        }
    }
}

/// `digest`, `reference` and `tag` of a payload as `(key, expected)`: `Some` must
/// equal, `None` must be absent.
#[track_caller]
pub fn check_fields(request: &Request, expected: &[(&str, Option<&str>)]) {
    let json = request.json();
    for (key, want) in expected {
        let got = json.get(key);
        match want {
            Some(want) => assert_eq!(
                got.and_then(Json::as_str),
                Some(*want),
                "payload field {key}: {}",
                request.describe()
            ),
            None => assert!(
                got.is_none() || got == Some(&Json::Null),
                "payload field {key} should be absent: {}",
                request.describe()
            ),
        }
    }
}

/// A chunked upload: session start, one PATCH with `Content-Range`, then the
/// closing PUT with `?digest=`; returns the digest.
#[track_caller]
pub fn push_blob_chunked(server: &Server, repo: &str, data: &[u8]) -> String {
    let location = common::start_upload(server, repo);
    let half = data.len() / 2;
    let mut location = location;
    for (start, part) in [(0, &data[..half]), (half, &data[half..])] {
        let range = format!("{}-{}", start, start + part.len() - 1);
        let response = server.request(
            "PATCH",
            &location,
            &[
                ("Content-Type", "application/octet-stream"),
                ("Content-Range", &range),
            ],
            part,
        );
        assert_eq!(response.status, 202, "PATCH {range}: {}", response.describe());
        location = common::url_path(response.expect_header("location"));
    }
    let digest = common::digest(data);
    let response = server.request("PUT", &common::with_query(&location, "digest", &digest), &[], b"");
    assert_eq!(response.status, 201, "closing PUT: {}", response.describe());
    digest
}

/// A cross-repository mount of `digest` from `from` into `repo`.
pub fn mount_blob(server: &Server, repo: &str, from: &str, digest: &str) -> Response {
    server.request(
        "POST",
        &format!(
            "/v2/{repo}/blobs/uploads/?mount={}&from={}",
            common::percent_encode(digest),
            common::percent_encode(from)
        ),
        &[("Content-Length", "0")],
        b"",
    )
}

/// An OCI manifest over a config and one layer made from `seed`, and those blobs;
/// nothing is pushed.
pub fn image_parts(seed: &str) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let config = format!(
        "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"seed\":{}}}",
        common::json_str(seed)
    )
    .into_bytes();
    let layer = format!("layer bytes of {seed}").into_bytes();
    let manifest = common::ManifestSpec::oci(
        common::descriptor(common::OCI_CONFIG, &config),
        vec![common::descriptor(common::OCI_LAYER, &layer)],
    )
    .to_json()
    .into_bytes();
    (config, layer, manifest)
}

/// Pushes the blobs of `image_parts(seed)`; returns the manifest bytes, unpushed.
#[track_caller]
pub fn prepare_image(server: &Server, repo: &str, seed: &str) -> Vec<u8> {
    let (config, layer, manifest) = image_parts(seed);
    common::push_blob(server, repo, &config);
    common::push_blob(server, repo, &layer);
    manifest
}
