//! Event webhooks end to end over HTTPS and in `/metrics`: a Python HTTPS receiver
//! with a certificate from a test CA made by `openssl` gets signed deliveries when
//! the webhook's `ca_bundle` names that CA (by IP and by DNS name), and each one
//! passes the seed's `verify_signature` inside the receiver; without `ca_bundle`
//! the delivery fails with a TLS error in the log. A receiver that requires mutual
//! TLS gets deliveries (and `angos webhook test` pings) from a webhook with
//! `client_certificate` and `client_private_key`, none from one without, and a
//! client certificate replaced on disk at the same path is used from the next
//! connection without a configuration edit. `/metrics` passes
//! `promtool check metrics` and carries every name and label the seed's PromQL
//! queries use.
// End-to-end tests time the real binary from outside: wall-clock reads are
// the point here, not a way around the driven clock (clippy.toml).
#![allow(clippy::disallowed_methods)]

use crate::common;
use crate::webhook_support;

use common::*;
use std::io::Write;
use std::process::{Command, Stdio};
use webhook_support::*;

#[test]
fn https_delivery_trusts_the_ca_bundle_and_fails_without_it() {
    const TOKEN: &str = "tls-secret";
    let ca = TestCa::generate();
    let https = HttpsReceiver::start(&ca, Some(TOKEN));
    let setup = Setup::new()
        .hook(
            Webhook::new(
                "tls-ip",
                &https.url("127.0.0.1", "/by-ip"),
                "optional",
                &["manifest.push", "tag.create"],
            )
            .token(TOKEN)
            .ca_bundle(&ca.ca_pem)
            .timeout_ms(3000),
        )
        .hook(
            Webhook::new(
                "tls-name",
                &https.url("localhost", "/by-name"),
                "optional",
                &["manifest.push"],
            )
            .token(TOKEN)
            .ca_bundle(&ca.ca_pem)
            .timeout_ms(3000),
        )
        .hook(
            Webhook::new(
                "untrusted",
                &https.url("127.0.0.1", "/untrusted"),
                "optional",
                &["manifest.push"],
            )
            .token(TOKEN)
            .timeout_ms(3000),
        );
    let registry = Registry::start(&setup);
    let server = &registry.server;

    let first = push_image(server, "secure/app", Some("v1"), "tls-one");
    let second = push_image(server, "secure/app", Some("v2"), "tls-two");
    // tls-ip: manifest.push and tag.create twice; tls-name: manifest.push twice.
    let records = https.wait_for(6, SOON).unwrap_or_else(|| {
        panic!(
            "expected 6 HTTPS deliveries, got {:?}; receiver stderr:\n{}\nserver output:\n{}",
            https.records().iter().map(|r| r.path.clone()).collect::<Vec<_>>(),
            https.stderr(),
            log_dump(server)
        )
    });
    let by_ip: Vec<_> = records.iter().filter(|r| r.path == "/by-ip").collect();
    let by_name: Vec<_> = records.iter().filter(|r| r.path == "/by-name").collect();
    assert_eq!(by_ip.len(), 4, "deliveries to https://127.0.0.1 with ca_bundle");
    assert_eq!(by_name.len(), 2, "deliveries to https://localhost with ca_bundle");
    assert!(
        records.iter().all(|r| r.path != "/untrusted"),
        "a webhook without ca_bundle must not trust the test CA"
    );
    for record in &records {
        assert_eq!(
            record.signature_ok,
            Some(true),
            "the seed's verify_signature, run in the HTTPS receiver, rejected {:?} with body {}",
            record.headers,
            String::from_utf8_lossy(&record.body)
        );
        assert_eq!(
            record.header("Authorization"),
            Some(format!("Bearer {TOKEN}").as_str())
        );
        let json = record.json();
        let kind = json
            .get("kind")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_string();
        assert_eq!(record.header("X-Registry-Event"), Some(kind.as_str()));
        assert!(record.header("User-Agent").unwrap_or_default().contains("angos/"));
    }
    assert_eq!(
        digests(by_name.iter().copied()),
        [first.digest.clone(), second.digest.clone()]
    );

    assert_failure_mentions(
        server,
        "untrusted",
        &["tls", "certificate", "handshake", "issuer"],
        "the failure of an untrusted HTTPS endpoint should say it is a TLS error",
    );
    wait_for_metrics(
        server,
        SOON,
        "two errors for untrusted and four successes for tls-ip",
        |m| {
            metric_sum(
                m,
                "event_webhook_deliveries_total",
                &[("webhook", "untrusted"), ("result", "error")],
            ) == 2.0
                && metric_sum(
                    m,
                    "event_webhook_deliveries_total",
                    &[("webhook", "tls-ip"), ("result", "success")],
                ) == 4.0
        },
    );
}

#[test]
fn mtls_delivery_presents_the_client_certificate_and_fails_without_it() {
    const TOKEN: &str = "mtls-secret";
    let ca = TestCa::generate();
    let client = ca.issue_client("angos-webhook-client");
    let https = HttpsReceiver::start_mtls(&ca, Some(TOKEN));
    let setup = Setup::new()
        .hook(
            Webhook::new(
                "mtls",
                &https.url("localhost", "/mtls"),
                "optional",
                &["manifest.push", "tag.create"],
            )
            .token(TOKEN)
            .ca_bundle(&ca.ca_pem)
            .client_identity(&client.cert, &client.key)
            .timeout_ms(3000),
        )
        .hook(
            Webhook::new(
                "anonymous",
                &https.url("127.0.0.1", "/anonymous"),
                "optional",
                &["manifest.push"],
            )
            .token(TOKEN)
            .ca_bundle(&ca.ca_pem)
            .timeout_ms(3000),
        );
    let registry = Registry::start(&setup);
    let server = &registry.server;

    // push_image asserts the 201: an optional webhook's failure does not fail the push.
    let first = push_image(server, "mutual/app", Some("v1"), "mtls-one");
    let second = push_image(server, "mutual/app", None, "mtls-two");
    // mtls: manifest.push twice and tag.create once.
    let records = https.wait_for(3, SOON).unwrap_or_else(|| {
        panic!(
            "expected 3 mTLS deliveries, got {:?}; receiver stderr:\n{}\nserver output:\n{}",
            https.records().iter().map(|r| r.path.clone()).collect::<Vec<_>>(),
            https.stderr(),
            log_dump(server)
        )
    });
    assert!(
        records.iter().all(|r| r.path == "/mtls"),
        "a webhook without a client certificate must not get through: {:?}",
        records.iter().map(|r| r.path.clone()).collect::<Vec<_>>()
    );
    for record in &records {
        assert_eq!(
            record.client_cn.as_deref(),
            Some(client.cn.as_str()),
            "the receiver verified our client certificate"
        );
        assert_eq!(
            record.signature_ok,
            Some(true),
            "the seed's verify_signature, run in the HTTPS receiver, rejected {:?} with body {}",
            record.headers,
            String::from_utf8_lossy(&record.body)
        );
        assert_eq!(
            record.header("Authorization"),
            Some(format!("Bearer {TOKEN}").as_str())
        );
    }
    let pushes = records
        .iter()
        .filter(|r| r.header("X-Registry-Event") == Some("manifest.push"));
    assert_eq!(digests(pushes), [first.digest.clone(), second.digest.clone()]);

    // Usually rustls reads the receiver's certificate_required alert; a reset that
    // overtakes the alert is the same refusal seen from the socket.
    let line = assert_failure_mentions(
        server,
        "anonymous",
        &["tls", "certificate", "reset", "closed"],
        "the failure should be the receiver refusing the handshake",
    );
    wait_for_metrics(
        server,
        SOON,
        "two errors for anonymous and two manifest.push successes for mtls",
        |m| {
            metric_sum(
                m,
                "event_webhook_deliveries_total",
                &[("webhook", "anonymous"), ("result", "error")],
            ) == 2.0
                && metric_sum(
                    m,
                    "event_webhook_deliveries_total",
                    &[
                        ("webhook", "mtls"),
                        ("event", "manifest.push"),
                        ("result", "success"),
                    ],
                ) == 2.0
        },
    );
    assert_eq!(
        https.records().len(),
        3,
        "nothing more arrived; the failure was: {line}"
    );
}

#[test]
fn webhook_test_command_pings_an_mtls_receiver_with_the_client_certificate() {
    let ca = TestCa::generate();
    let client = ca.issue_client("angos-ping-client");
    let https = HttpsReceiver::start_mtls(&ca, Some("ping-secret"));
    let with_url = https.url("localhost", "/with");
    let without_url = https.url("localhost", "/without");
    let setup = Setup::new()
        .define(
            Webhook::new("with-cert", &with_url, "async", &["blob.push"])
                .token("ping-secret")
                .ca_bundle(&ca.ca_pem)
                .client_identity(&client.cert, &client.key),
        )
        .define(
            Webhook::new("without-cert", &without_url, "async", &["blob.push"])
                .token("ping-secret")
                .ca_bundle(&ca.ca_pem),
        );
    let dir = TempDir::new("mtls-ping");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, format!("[global]\n{}", setup.global_tail())).unwrap();
    let ping = |name: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_angos"))
            .arg("-c")
            .arg(&config)
            .args(["webhook", "test", name])
            .env("RUST_LOG", "warn")
            .output()
            .expect("run angos webhook test");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.code(), stdout, stderr)
    };

    let (code, stdout, stderr) = ping("with-cert");
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.starts_with(&format!("webhook \"with-cert\": POST {with_url} -> HTTP 200 in ")),
        "{stdout}"
    );
    let records = https
        .wait_for(1, SOON)
        .unwrap_or_else(|| panic!("no ping arrived: {}", https.stderr()));
    assert_eq!(records[0].path, "/with");
    assert_eq!(records[0].header("x-registry-event"), Some("ping"));
    assert_eq!(records[0].client_cn.as_deref(), Some(client.cn.as_str()));
    assert_eq!(records[0].signature_ok, Some(true));

    let (code, stdout, stderr) = ping("without-cert");
    assert_eq!(code, Some(1), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.starts_with(&format!(
            "webhook \"without-cert\": POST {without_url} failed after "
        )),
        "{stdout}"
    );
    let lower = stdout.to_ascii_lowercase();
    assert!(
        ["tls", "certificate", "reset", "closed"]
            .iter()
            .any(|w| lower.contains(w)),
        "the receiver refused the handshake: {stdout}"
    );
    assert_eq!(
        https.records().len(),
        1,
        "the ping without a certificate got nowhere"
    );
}

#[test]
fn a_client_certificate_replaced_in_place_is_used_without_a_configuration_edit() {
    let ca = TestCa::generate();
    let other_ca = TestCa::generate();
    let https = HttpsReceiver::start_mtls(&ca, None);
    // At first the files hold a certificate the receiver does not trust.
    let stale = other_ca.issue_client("stale-client");
    let fresh = ca.issue_client("rotated-webhook-client");
    let dir = TempDir::new("mtls-rotation");
    let cert = dir.path().join("client.pem");
    let key = dir.path().join("client.key");
    // Write, then rename, as a renewal job does.
    let install = |from: &ClientCert| {
        for (source, target) in [(&from.cert, &cert), (&from.key, &key)] {
            let tmp = target.with_extension("tmp");
            std::fs::copy(source, &tmp).unwrap();
            std::fs::rename(&tmp, target).unwrap();
        }
    };
    install(&stale);
    let setup = Setup::new().hook(
        Webhook::new(
            "rotating",
            &https.url("localhost", "/rotating"),
            "optional",
            &["manifest.push"],
        )
        .ca_bundle(&ca.ca_pem)
        .client_identity(&cert, &key)
        .timeout_ms(3000),
    );
    let registry = Registry::start(&setup);
    let server = &registry.server;

    push_image(server, "rotate/app", Some("before"), "rotate-0");
    wait_for_log(server, SOON, "warning that webhook \"rotating\" failed", |l| {
        is_delivery_failure(l, "rotating")
    });
    assert!(
        https.records().is_empty(),
        "the untrusted certificate got through"
    );

    install(&fresh);
    // The server checks the files about once a second; each push is one delivery.
    let mut pushes = 0;
    let records = poll_until(RELOAD_WAIT, || {
        pushes += 1;
        push_image(server, "rotate/app", None, &format!("rotate-{pushes}"));
        let records = https.records();
        (!records.is_empty()).then_some(records)
    })
    .unwrap_or_else(|| {
        panic!(
            "the replaced certificate was not used; receiver stderr:\n{}\nserver output:\n{}",
            https.stderr(),
            log_dump(server)
        )
    });
    assert_eq!(records[0].client_cn.as_deref(), Some(fresh.cn.as_str()));
}

/// `promtool check metrics` over `text`: its exit status and output.
fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `promtool` ({e}): install the Debian package `prometheus` \
                 (apt-get install -y prometheus); scripts/test.sh does"
            )
        });
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}

/// The `# TYPE` a metric family is declared with.
fn declared_type(text: &str, family: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix("# TYPE ")?;
        let (name, kind) = rest.split_once(' ')?;
        (name == family).then(|| kind.trim().to_string())
    })
}

#[test]
fn metrics_pass_promtool_and_serve_the_seeds_promql_queries() {
    let good = Receiver::ok();
    let bad = Receiver::start(Reply::status(500));
    let background = Receiver::ok();
    let setup = Setup::new()
        .hook(Webhook::new(
            "audit",
            &good.url("/audit"),
            "required",
            &["manifest.push", "manifest.delete"],
        ))
        .hook(Webhook::new(
            "slack",
            &bad.url("/slack"),
            "optional",
            &["manifest.push", "tag.create"],
        ))
        .hook(Webhook::new(
            "analytics",
            &background.url("/ingest"),
            "async",
            &["manifest.push", "blob.push", "tag.create"],
        ));
    let registry = Registry::start(&setup);
    let server = &registry.server;
    push_image(server, "metrics/app", Some("v1"), "measured");
    server.get("/v2/metrics/app/manifests/v1").assert_status(200);
    server.get("/v2/").assert_status(200);

    let text = wait_for_metrics(server, SOON, "deliveries of all three webhooks", |m| {
        let count = |webhook, result| {
            metric_sum(
                m,
                "event_webhook_deliveries_total",
                &[("webhook", webhook), ("result", result)],
            )
        };
        count("audit", "success") == 1.0
            && count("slack", "error") == 2.0
            && count("analytics", "success") == 4.0
    });

    let (ok, said) = promtool_check(&text);
    assert!(
        ok,
        "promtool check metrics rejected /metrics:\n{said}\n--- exposition:\n{text}"
    );
    assert!(
        said.trim().is_empty(),
        "promtool check metrics complained:\n{said}"
    );

    // Families and their types.
    for (family, kind) in [
        ("event_webhook_deliveries_total", "counter"),
        ("event_webhook_delivery_duration_seconds", "histogram"),
        ("event_webhook_queue_depth", "gauge"),
        ("event_webhook_queue_dropped_total", "counter"),
        ("http_requests_total", "counter"),
        ("http_request_duration_seconds", "histogram"),
    ] {
        assert_eq!(
            declared_type(&text, family).as_deref(),
            Some(kind),
            "# TYPE of {family}:\n{text}"
        );
    }

    // sum by (webhook, result) (rate(event_webhook_deliveries_total[5m])) and
    // rate(event_webhook_deliveries_total{webhook="audit", result="error"}[5m]).
    let deliveries = metric_samples(&text, "event_webhook_deliveries_total", &[]);
    assert!(
        deliveries.iter().all(|s| s.label("webhook").is_some()
            && s.label("event").is_some()
            && s.label("result").is_some()),
        "every delivery counter carries webhook, event and result: {deliveries:?}"
    );
    assert!(
        deliveries
            .iter()
            .all(|s| matches!(s.label("result"), Some("success" | "error"))),
        "result is success or error: {deliveries:?}"
    );
    assert_eq!(
        metric_sum(
            &text,
            "event_webhook_deliveries_total",
            &[("webhook", "slack"), ("event", "tag.create"), ("result", "error")]
        ),
        1.0
    );

    // histogram_quantile(0.95, sum by (webhook, le) (rate(..._bucket[5m]))).
    for webhook in ["audit", "slack", "analytics"] {
        let buckets = metric_samples(
            &text,
            "event_webhook_delivery_duration_seconds_bucket",
            &[("webhook", webhook), ("event", "manifest.push")],
        );
        assert!(buckets.len() >= 2, "buckets of {webhook}: {buckets:?}");
        let inf = buckets
            .iter()
            .find(|s| s.label("le") == Some("+Inf"))
            .unwrap_or_else(|| panic!("no le=\"+Inf\" bucket for {webhook}:\n{text}"));
        let count = metric_sum(
            &text,
            "event_webhook_delivery_duration_seconds_count",
            &[("webhook", webhook), ("event", "manifest.push")],
        );
        assert_eq!(inf.value, count, "+Inf bucket and _count of {webhook}");
        assert_eq!(count, 1.0, "one delivery of manifest.push to {webhook}");
        assert!(
            !metric_samples(
                &text,
                "event_webhook_delivery_duration_seconds_sum",
                &[("webhook", webhook)]
            )
            .is_empty()
        );
    }

    // The async queue: depth per webhook (drops: the family is declared above; the
    // queue test sees it count).
    assert_eq!(
        metric_samples(&text, "event_webhook_queue_depth", &[("webhook", "analytics")]).len(),
        1,
        "the queue depth of the async webhook:\n{text}"
    );
    assert_eq!(
        metric_sum(&text, "event_webhook_queue_depth", &[("webhook", "analytics")]),
        0.0
    );

    // HTTP requests by route, method and status; latency by route.
    let requests = metric_samples(&text, "http_requests_total", &[]);
    assert!(
        requests.iter().all(|s| s.label("route").is_some()
            && s.label("method").is_some()
            && s.label("status").is_some()),
        "{requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|s| s.label("method") == Some("PUT") && s.label("status") == Some("201")),
        "the manifest PUT is counted: {requests:?}"
    );
    let latency = metric_samples(&text, "http_request_duration_seconds_bucket", &[]);
    assert!(
        !latency.is_empty()
            && latency
                .iter()
                .all(|s| s.label("route").is_some() && s.label("le").is_some()),
        "{latency:?}"
    );
}

/// The `digest` field of each delivery, in order.
fn digests<'a>(records: impl Iterator<Item = &'a python::HttpsRecord>) -> Vec<String> {
    records
        .map(|r| {
            r.json()
                .get("digest")
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// Waits for the warning that `webhook`'s delivery failed; it must name one
/// of `words`. The line, for later messages.
#[track_caller]
fn assert_failure_mentions(server: &Server, webhook: &str, words: &[&str], why: &str) -> String {
    let line = wait_for_log(
        server,
        SOON,
        &format!("warning that webhook {webhook:?} failed"),
        |l| is_delivery_failure(l, webhook),
    );
    let lower = line.to_ascii_lowercase();
    assert!(words.iter().any(|w| lower.contains(w)), "{why}: {line}");
    line
}
