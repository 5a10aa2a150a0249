//! Event webhooks end to end, what is delivered: every event kind with the
//! documented payload fields and headers (HEAD is no event), HMAC signatures
//! checked by the seed's Python `verify_signature` run unchanged, no signature
//! without a token, keep-alive reuse of one outbound connection, receivers that
//! pull the pushed content on notification, redirects treated as failures, and the
//! seed's debug-logging command. Each test starts its own server and receivers.
// End-to-end tests time the real binary from outside: wall-clock reads are
// the point here, not a way around the driven clock (clippy.toml).
#![allow(clippy::disallowed_methods)]

use crate::common;
use crate::webhook_support;

use common::*;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use webhook_support::*;

const ALL_KINDS: [&str; 7] = [
    "manifest.push",
    "manifest.delete",
    "manifest.pull",
    "blob.push",
    "blob.pull",
    "tag.create",
    "tag.delete",
];

/// Both receivers' requests since the previous step, after asserting that each
/// got exactly the `expected` kinds (in any order within one operation).
struct Steps<'a> {
    server: &'a Server,
    signed: &'a Receiver,
    plain: &'a Receiver,
    seen: usize,
}

impl Steps<'_> {
    #[track_caller]
    fn step(&mut self, what: &str, expected: &[&str]) -> (Vec<Request>, Vec<Request>) {
        let want = self.seen + expected.len();
        // `optional` deliveries finish before the client is answered, so they are
        // here already; the wait only bounds a slow machine.
        let signed = expect_requests(self.signed, want, self.server);
        let plain = expect_requests(self.plain, want, self.server);
        for (name, all) in [("signed", &signed), ("plain", &plain)] {
            assert_eq!(
                all.len(),
                want,
                "{what}: the {name} receiver expected {} new events {expected:?}, got:\n{}",
                expected.len(),
                describe_all(&all[self.seen..])
            );
            assert_eq!(
                sorted_kinds(&all[self.seen..]),
                sorted(expected),
                "{what}: event kinds at the {name} receiver:\n{}",
                describe_all(&all[self.seen..])
            );
        }
        let new = (signed[self.seen..].to_vec(), plain[self.seen..].to_vec());
        self.seen = want;
        new
    }
}

fn by_kind<'r>(requests: &'r [Request], kind: &str) -> &'r Request {
    requests
        .iter()
        .find(|r| r.kind() == kind)
        .unwrap_or_else(|| panic!("no {kind} among:\n{}", describe_all(requests)))
}

#[test]
fn every_event_kind_arrives_with_the_documented_fields_and_headers() {
    const TOKEN: &str = "kinds-secret";
    let signed = Receiver::ok();
    let plain = Receiver::ok();
    let setup = Setup::new()
        .hook(Webhook::new("signed", &signed.url("/hooks/signed"), "optional", &ALL_KINDS).token(TOKEN))
        .hook(Webhook::new(
            "plain",
            &plain.url("/hooks/plain"),
            "optional",
            &ALL_KINDS,
        ));
    let registry = Registry::start(&setup);
    let server = &registry.server;
    let mut steps = Steps {
        server,
        signed: &signed,
        plain: &plain,
        seen: 0,
    };
    let mut all_steps: Vec<(Vec<Request>, Vec<Request>)> = Vec::new();

    // blob.push: monolithic, into the repository a mount will come from.
    let base = b"base layer for a cross-repository mount".to_vec();
    let base_digest = push_blob(server, "other/src", &base);
    let (s, p) = steps.step("monolithic blob upload (other/src)", &["blob.push"]);
    check_envelope(&s[0], "blob.push", "other/src", "other");
    check_fields(&s[0], &[("digest", Some(&base_digest)), ("tag", None)]);
    all_steps.push((s, p));

    // blob.push: monolithic.
    let (config, layer, _) = image_parts("kinds");
    let config_digest = push_blob(server, "team/app", &config);
    let (s, p) = steps.step("monolithic blob upload", &["blob.push"]);
    check_envelope(&s[0], "blob.push", "team/app", "team");
    check_fields(&s[0], &[("digest", Some(&config_digest)), ("tag", None)]);
    all_steps.push((s, p));

    // blob.push: chunked (one event, when the upload completes).
    let layer_digest = push_blob_chunked(server, "team/app", &layer);
    let (s, p) = steps.step("chunked blob upload", &["blob.push"]);
    check_envelope(&s[0], "blob.push", "team/app", "team");
    check_fields(&s[0], &[("digest", Some(&layer_digest))]);
    all_steps.push((s, p));

    // blob.push: cross-repository mount.
    let mounted = mount_blob(server, "team/app", "other/src", &base_digest);
    assert_eq!(mounted.status, 201, "mount: {}", mounted.describe());
    let (s, p) = steps.step("cross-repository mount", &["blob.push"]);
    check_envelope(&s[0], "blob.push", "team/app", "team");
    check_fields(&s[0], &[("digest", Some(&base_digest))]);
    all_steps.push((s, p));

    // manifest.push + tag.create: PUT by tag.
    let manifest = ManifestSpec::oci(
        descriptor(OCI_CONFIG, &config),
        vec![descriptor(OCI_LAYER, &layer), descriptor(OCI_LAYER, &base)],
    )
    .to_json()
    .into_bytes();
    let manifest_digest = push_manifest(server, "team/app", "v1", OCI_MANIFEST, &manifest);
    let (s, p) = steps.step("manifest PUT by tag", &["manifest.push", "tag.create"]);
    let push = by_kind(&s, "manifest.push");
    check_envelope(push, "manifest.push", "team/app", "team");
    check_fields(
        push,
        &[("digest", Some(&manifest_digest)), ("reference", Some("v1"))],
    );
    let tag = by_kind(&s, "tag.create");
    check_envelope(tag, "tag.create", "team/app", "team");
    check_fields(tag, &[("digest", Some(&manifest_digest)), ("tag", Some("v1"))]);
    all_steps.push((s, p));

    // manifest.push + tag.create: PUT by digest with ?tag=.
    let mut second = ManifestSpec::oci(
        descriptor(OCI_CONFIG, &config),
        vec![descriptor(OCI_LAYER, &layer)],
    );
    second
        .annotations
        .push(("org.example.variant".to_string(), "second".to_string()));
    let second = second.to_json().into_bytes();
    let second_digest = digest(&second);
    let response = put_manifest(
        server,
        "team/app",
        &format!("{second_digest}?tag=t2"),
        OCI_MANIFEST,
        &second,
    );
    assert_eq!(
        response.status,
        201,
        "PUT by digest with ?tag=: {}",
        response.describe()
    );
    let (s, p) = steps.step(
        "manifest PUT by digest with ?tag=t2",
        &["manifest.push", "tag.create"],
    );
    let push = by_kind(&s, "manifest.push");
    check_envelope(push, "manifest.push", "team/app", "team");
    check_fields(
        push,
        &[
            ("digest", Some(&second_digest)),
            ("reference", Some(&second_digest)),
        ],
    );
    let tag = by_kind(&s, "tag.create");
    check_envelope(tag, "tag.create", "team/app", "team");
    check_fields(tag, &[("digest", Some(&second_digest)), ("tag", Some("t2"))]);
    all_steps.push((s, p));

    // HEAD is not an event.
    server.head("/v2/team/app/manifests/v1").assert_status(200);
    server
        .head(&format!("/v2/team/app/blobs/{config_digest}"))
        .assert_status(200);

    // manifest.pull: GET by tag.
    server.get("/v2/team/app/manifests/v1").assert_status(200);
    let (s, p) = steps.step(
        "manifest GET (after two HEADs, which are no events)",
        &["manifest.pull"],
    );
    check_envelope(&s[0], "manifest.pull", "team/app", "team");
    check_fields(
        &s[0],
        &[("digest", Some(&manifest_digest)), ("reference", Some("v1"))],
    );
    all_steps.push((s, p));

    // blob.pull.
    let got = server.get(&format!("/v2/team/app/blobs/{config_digest}"));
    got.assert_status(200);
    assert_eq!(got.body, config);
    let (s, p) = steps.step("blob GET", &["blob.pull"]);
    check_envelope(&s[0], "blob.pull", "team/app", "team");
    check_fields(&s[0], &[("digest", Some(&config_digest))]);
    all_steps.push((s, p));

    // manifest.delete + tag.delete: DELETE by tag.
    server.delete("/v2/team/app/manifests/t2").assert_status(202);
    let (s, p) = steps.step("manifest DELETE by tag", &["manifest.delete", "tag.delete"]);
    let deleted = by_kind(&s, "manifest.delete");
    check_envelope(deleted, "manifest.delete", "team/app", "team");
    check_fields(deleted, &[("reference", Some("t2"))]);
    let untagged = by_kind(&s, "tag.delete");
    check_envelope(untagged, "tag.delete", "team/app", "team");
    check_fields(untagged, &[("tag", Some("t2"))]);
    all_steps.push((s, p));

    // manifest.delete: DELETE by digest (no tag event).
    server
        .delete(&format!("/v2/team/app/manifests/{second_digest}"))
        .assert_status(202);
    let (s, p) = steps.step("manifest DELETE by digest", &["manifest.delete"]);
    check_envelope(&s[0], "manifest.delete", "team/app", "team");
    check_fields(
        &s[0],
        &[
            ("digest", Some(&second_digest)),
            ("reference", Some(&second_digest)),
            ("tag", None),
        ],
    );
    all_steps.push((s, p));

    // One event, one payload: both webhooks saw the same event ids, every id unique.
    let mut ids = BTreeSet::new();
    for (s, p) in &all_steps {
        let signed_ids: BTreeSet<String> = s.iter().map(|r| r.field("id").unwrap()).collect();
        let plain_ids: BTreeSet<String> = p.iter().map(|r| r.field("id").unwrap()).collect();
        assert_eq!(signed_ids, plain_ids, "one event carries one id to every webhook");
        ids.extend(signed_ids);
    }
    assert_eq!(ids.len(), steps.seen, "every event has its own id");

    // The path configured in the URL is the path requested.
    assert!(signed.requests().iter().all(|r| r.path == "/hooks/signed"));
    assert!(plain.requests().iter().all(|r| r.path == "/hooks/plain"));

    // Signed: Bearer token and a signature the seed's Python function accepts.
    let signed_requests = signed.requests();
    let mut deliveries = Vec::new();
    for request in &signed_requests {
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {TOKEN}").as_str()),
            "{}",
            request.describe()
        );
        let signature = request
            .header("x-registry-signature-256")
            .unwrap_or_else(|| panic!("signed delivery without a signature: {}", request.describe()));
        deliveries.push((TOKEN.to_string(), request.body.clone(), signature.to_string()));
    }
    let verdicts = python_verify(&deliveries);
    for (request, ok) in signed_requests.iter().zip(&verdicts) {
        assert!(ok, "the seed's verify_signature rejected: {}", request.describe());
    }
    // Without a token: neither header.
    for request in plain.requests() {
        assert!(
            request.header("authorization").is_none() && request.header("x-registry-signature-256").is_none(),
            "a webhook without a token must send no Authorization and no signature: {}",
            request.describe()
        );
    }
}

#[test]
fn hmac_signatures_pass_the_seeds_python_verifier() {
    // The verifier itself, on the SPEC's test vector and a tampered body, so a
    // broken pipeline cannot pass everything.
    let vector = "sha256=046e2496e13e0bfd8dbef84244dd188311a48086646355161bc4ad0769a49cf4".to_string();
    let sanity = python_verify(&[
        ("test-secret".to_string(), b"hello world".to_vec(), vector.clone()),
        (
            "test-secret".to_string(),
            b"hello world!".to_vec(),
            vector.clone(),
        ),
        ("other-secret".to_string(), b"hello world".to_vec(), vector),
    ]);
    assert_eq!(
        sanity,
        [true, false, false],
        "the seed's verify_signature on the SPEC vector"
    );

    let tokens = ["audit-secret", "my-webhook-secret", "tok.with-symbols_+/=~"];
    let receivers: Vec<Receiver> = tokens.iter().map(|_| Receiver::ok()).collect();
    let plain = Receiver::ok();
    let events = ["manifest.push", "tag.create", "blob.push"];
    let mut setup = Setup::new();
    for (i, (token, receiver)) in tokens.iter().zip(&receivers).enumerate() {
        setup = setup.hook(
            Webhook::new(
                &format!("secure{i}"),
                &receiver.url("/events"),
                "optional",
                &events,
            )
            .token(token),
        );
    }
    setup = setup.hook(Webhook::new("plain", &plain.url("/events"), "optional", &events));
    let registry = Registry::start(&setup);
    let server = &registry.server;

    push_image(server, "signing/one", Some("v1"), "sign-1");
    push_image(
        server,
        "signing/two",
        Some("latest"),
        "sign-2 \u{e9}\u{4e2d} \"quoted\"",
    );
    // Two blobs, a manifest and a tag per image.
    let per_image = 4;
    let mut deliveries = Vec::new();
    let mut described = Vec::new();
    for (token, receiver) in tokens.iter().zip(&receivers) {
        for request in expect_requests(receiver, 2 * per_image, server) {
            assert_eq!(
                request.header("authorization"),
                Some(format!("Bearer {token}").as_str()),
                "Authorization: {}",
                request.describe()
            );
            let signature = request.header("x-registry-signature-256").unwrap_or_default();
            assert!(
                signature.len() == "sha256=".len() + 64
                    && signature.starts_with("sha256=")
                    && signature["sha256=".len()..]
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "X-Registry-Signature-256 must be sha256=<64 lowercase hex>: {}",
                request.describe()
            );
            deliveries.push((token.to_string(), request.body.clone(), signature.to_string()));
            described.push(request.describe());
        }
    }
    let verdicts = python_verify(&deliveries);
    let rejected: Vec<&String> = described
        .iter()
        .zip(&verdicts)
        .filter(|(_, ok)| !**ok)
        .map(|(d, _)| d)
        .collect();
    assert!(
        rejected.is_empty(),
        "the seed's verify_signature rejected {} of {} deliveries:\n{}",
        rejected.len(),
        verdicts.len(),
        rejected.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
    );
    // Each signature is keyed by its own webhook's token: another key fails.
    let crossed: Vec<(String, Vec<u8>, String)> = deliveries
        .iter()
        .map(|(token, body, signature)| (format!("{token}x"), body.clone(), signature.clone()))
        .collect();
    assert!(
        python_verify(&crossed).iter().all(|ok| !ok),
        "a wrong key must not verify"
    );

    for request in expect_requests(&plain, 2 * per_image, server) {
        assert!(
            request.header("authorization").is_none() && request.header("x-registry-signature-256").is_none(),
            "no token, no Authorization and no signature: {}",
            request.describe()
        );
    }
}

#[test]
fn deliveries_to_one_receiver_reuse_one_keep_alive_connection() {
    let receiver = Receiver::ok();
    let setup = Setup::new().hook(Webhook::new(
        "reuse",
        &receiver.url("/hook"),
        "optional",
        &["blob.push"],
    ));
    let registry = Registry::start(&setup);
    let server = &registry.server;
    for i in 0..6 {
        push_blob(server, "keepalive/repo", format!("blob number {i}").as_bytes());
    }
    let requests = expect_requests(&receiver, 6, server);
    let connections: BTreeSet<u64> = requests.iter().map(|r| r.conn_id).collect();
    assert_eq!(
        connections.len(),
        1,
        "6 deliveries in a row to one endpoint should reuse one connection; they came on {connections:?}:\n{}",
        describe_all(&requests)
    );
    assert_eq!(receiver.connections(), 1, "only one TCP connection was opened");
}

#[test]
fn optional_and_async_receivers_that_pull_on_notification_find_the_content() {
    let optional = Receiver::ok();
    let asynchronous = Receiver::ok();
    let setup = Setup::new()
        .hook(Webhook::new(
            "opt",
            &optional.url("/hook"),
            "optional",
            &["manifest.push", "blob.push"],
        ))
        .hook(Webhook::new(
            "bg",
            &asynchronous.url("/hook"),
            "async",
            &["manifest.push", "blob.push"],
        ));
    let registry = Registry::start(&setup);
    let server = &registry.server;

    // On each event, GET what it names from the registry, by digest and by tag.
    let pulls: Arc<Mutex<Vec<(String, String, u16)>>> = Arc::new(Mutex::new(Vec::new()));
    for (name, receiver) in [("optional", &optional), ("async", &asynchronous)] {
        let pulls = Arc::clone(&pulls);
        let addr = server.addr;
        receiver.set_hook(move |request| {
            let json = request.json();
            let text = |k: &str| json.get(k).and_then(Json::as_str).unwrap_or_default().to_string();
            let (kind, namespace, digest) = (text("kind"), text("namespace"), text("digest"));
            let mut paths = Vec::new();
            if kind == "manifest.push" {
                paths.push(format!("/v2/{namespace}/manifests/{digest}"));
                if !text("tag").is_empty() {
                    paths.push(format!("/v2/{namespace}/manifests/{}", text("tag")));
                }
            } else {
                paths.push(format!("/v2/{namespace}/blobs/{digest}"));
            }
            for path in paths {
                let status = Conn::open(addr)
                    .try_request("GET", &path, &[("Accept", OCI_MANIFEST)], b"")
                    .map(|r| r.status)
                    .unwrap_or(0);
                pulls.lock().unwrap().push((name.to_string(), path, status));
            }
        });
    }
    let image = push_image(server, "pull/back", Some("fresh"), "pull-on-notify");
    // Two blobs and a manifest each.
    expect_requests(&optional, 3, server);
    asynchronous.wait_replied(3, SOON).unwrap_or_else(|| {
        panic!(
            "the async receiver did not get 3 events: {}",
            describe_all(&asynchronous.requests())
        )
    });
    let pulls = pulls.lock().unwrap().clone();
    // Per receiver: two blob GETs, a manifest GET by digest and by tag.
    assert_eq!(pulls.len(), 8, "pulls made: {pulls:?}");
    for (receiver, path, status) in &pulls {
        assert_eq!(
            *status, 200,
            "the {receiver} receiver pulled {path} on notification and got {status}; all pulls: {pulls:?}"
        );
    }
    assert!(pulls.iter().any(|(_, path, _)| path.ends_with(&image.digest)));
}

#[test]
fn a_redirect_is_a_failed_delivery_and_is_not_followed() {
    let target = Receiver::ok();
    let redirecting = Receiver::start(Reply::redirect(&target.url("/elsewhere")));
    let setup = Setup::new().hook(
        Webhook::new("moved", &redirecting.url("/hook"), "optional", &["manifest.push"]).timeout_ms(2000),
    );
    let registry = Registry::start(&setup);
    let server = &registry.server;

    push_image(server, "redirect/repo", Some("v1"), "redirected");
    expect_requests(&redirecting, 1, server);
    wait_for_log(server, SOON, "reporting the failed delivery to \"moved\"", |l| {
        is_delivery_failure(l, "moved")
    });
    let metrics = wait_for_metrics(server, SOON, "one failed delivery for moved", |m| {
        metric_sum(
            m,
            "event_webhook_deliveries_total",
            &[
                ("webhook", "moved"),
                ("event", "manifest.push"),
                ("result", "error"),
            ],
        ) == 1.0
    });
    assert_eq!(
        metric_sum(
            &metrics,
            "event_webhook_deliveries_total",
            &[("webhook", "moved"), ("result", "success")]
        ),
        0.0,
        "a 302 is not a success:\n{metrics}"
    );
    assert_count(
        &redirecting,
        1,
        "the redirecting receiver (optional policy, no retries)",
    );
    assert_count(&target, 0, "the redirect target (redirects are not followed)");
}

/// The seed's command, `RUST_LOG=angos::event_webhook=debug ./angos server`, as
/// written: that filter alone must show the webhook module's debug lines. The
/// listening line may be filtered out, so the server gets a port picked here.
#[test]
fn the_seeds_debug_logging_command_shows_webhook_debug_lines() {
    let receiver = Receiver::ok();
    let dir = TempDir::new("webhook-debug");
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let setup = Setup::new().hook(Webhook::new(
        "dbg",
        &receiver.url("/hook"),
        "optional",
        &["blob.push"],
    ));
    let config = format!(
        "[server]\nbind_address = \"127.0.0.1\"\nport = {port}\n\n[blob_store.fs]\nroot_dir = {}\n\n[global]\n{}",
        json_str(&dir.path().join("data").display().to_string()),
        setup.global_tail()
    );
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_angos"))
        .arg("-c")
        .arg(&config_path)
        .arg("server")
        .current_dir(dir.path())
        .env("RUST_LOG", "angos::event_webhook=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn angos");
    let lines: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    {
        let lines = Arc::clone(&lines);
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        });
    }
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let connected = poll_until(Duration::from_secs(10), || Conn::try_open(addr).ok());
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut conn = connected.expect("the server did not accept connections within 10 s");
        let blob = b"debug me";
        let response = conn.request(
            "POST",
            &format!(
                "/v2/debug/repo/blobs/uploads/?digest={}",
                percent_encode(&digest(blob))
            ),
            &[("Content-Type", "application/octet-stream")],
            blob,
        );
        assert_eq!(response.status, 201, "{}", response.describe());
        receiver
            .wait_for(1, SOON)
            .expect("the delivery did not arrive at the receiver");
        let found = poll_until(SOON, || {
            lines.lock().unwrap().iter().find_map(|l| {
                parse_log(l)
                    .filter(|p| {
                        p.level.eq_ignore_ascii_case("DEBUG") && p.target.starts_with("angos::event_webhook")
                    })
                    .map(|_| l.clone())
            })
        });
        assert!(
            found.is_some(),
            "RUST_LOG=angos::event_webhook=debug showed no DEBUG line of angos::event_webhook; stderr:\n{}",
            lines.lock().unwrap().join("\n")
        );
    }));
    let _ = child.kill();
    let _ = child.wait();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
