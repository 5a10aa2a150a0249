//! Event webhooks end to end, who gets what and what the client sees: routing as
//! the seed's "Multiple Webhooks" example says, `events` and `repository_filter`;
//! the `required` policy (500 and nothing changed on failure, retries on the
//! documented schedule, nothing visible while the receiver holds the request), the
//! `optional` policy (201, a warning, the error counter), the `async` policy
//! (immediate answer, per-webhook order, the bounded queue dropping the oldest);
//! concurrent deliveries across webhooks; and endpoints that hang or do not
//! resolve failing after `timeout_ms` while other clients are served at once.
// End-to-end tests time the real binary from outside: wall-clock reads are
// the point here, not a way around the driven clock (clippy.toml).
#![allow(clippy::disallowed_methods)]

use crate::common;
use crate::webhook_support;

use common::*;
use std::thread;
use std::time::{Duration, Instant};
use webhook_support::*;

/// How fast another client must be answered while a request waits on a webhook.
const OTHER_CLIENT_BOUND: Duration = Duration::from_millis(300);

#[test]
fn the_seeds_multiple_webhooks_example_routes_production_to_audit_only() {
    let audit = Receiver::ok();
    let slack = Receiver::ok();
    let analytics = Receiver::ok();
    // The seed's example, with its URLs pointing at our receivers.
    let setup = Setup::new()
        .hook(
            Webhook::new(
                "audit",
                &audit.url("/events"),
                "required",
                &["manifest.push", "manifest.delete"],
            )
            .token("audit-secret")
            .max_retries(3),
        )
        .hook(
            Webhook::new(
                "slack",
                &slack.url("/services/T/B/xxx"),
                "optional",
                &["manifest.push", "tag.create"],
            )
            .timeout_ms(3000),
        )
        .hook(Webhook::new(
            "analytics",
            &analytics.url("/ingest"),
            "async",
            &[
                "manifest.push",
                "manifest.delete",
                "blob.push",
                "tag.create",
                "tag.delete",
            ],
        ))
        .repository("production", &["audit"]);
    let registry = Registry::start(&setup);
    let server = &registry.server;

    // Owned by [repository."production"]: audit only.
    let api = push_image(server, "production/api", Some("v1.2"), "prod-api");
    let root = push_image(server, "production", Some("v1"), "prod-root");
    // Not owned by it ("productionx" is no path prefix match) and elsewhere: all three.
    let lookalike = push_image(server, "productionx/app", Some("v1"), "lookalike");
    let dev = push_image(server, "dev/app", Some("latest"), "dev-app");
    server.delete("/v2/dev/app/manifests/latest").assert_status(202);
    server
        .delete("/v2/production/api/manifests/v1.2")
        .assert_status(202);

    let audited = expect_requests(&audit, 6, server);
    assert_count(&audit, 6, "audit");
    let expected = [
        (
            "manifest.push",
            "production/api",
            "production",
            Some(api.digest.as_str()),
        ),
        (
            "manifest.push",
            "production",
            "production",
            Some(root.digest.as_str()),
        ),
        (
            "manifest.push",
            "productionx/app",
            "productionx",
            Some(lookalike.digest.as_str()),
        ),
        ("manifest.push", "dev/app", "dev", Some(dev.digest.as_str())),
        ("manifest.delete", "dev/app", "dev", None),
        ("manifest.delete", "production/api", "production", None),
    ];
    for (request, (kind, namespace, repository, digest)) in audited.iter().zip(expected) {
        check_envelope(request, kind, namespace, repository);
        if let Some(digest) = digest {
            check_fields(request, &[("digest", Some(digest))]);
        }
        assert_eq!(request.header("authorization"), Some("Bearer audit-secret"));
    }
    let deliveries: Vec<(String, Vec<u8>, String)> = audited
        .iter()
        .map(|r| {
            (
                "audit-secret".to_string(),
                r.body.clone(),
                r.header("x-registry-signature-256")
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    assert!(
        python_verify(&deliveries).iter().all(|ok| *ok),
        "the seed's verify_signature rejected an audit delivery:\n{}",
        describe_all(&audited)
    );

    // slack: manifest.push and tag.create, only outside production.
    let slacked = expect_requests(&slack, 4, server);
    assert_count(&slack, 4, "slack");
    let namespaces: Vec<String> = slacked.iter().map(|r| r.field("namespace").unwrap()).collect();
    assert_eq!(
        namespaces,
        ["productionx/app", "productionx/app", "dev/app", "dev/app"]
    );
    assert_eq!(
        sorted_kinds(&slacked[..2]),
        sorted(&["manifest.push", "tag.create"])
    );
    assert_eq!(
        sorted_kinds(&slacked[2..]),
        sorted(&["manifest.push", "tag.create"])
    );

    // analytics (async): two blobs, the manifest and its tag per image, then the
    // delete by tag; nothing from production, whose events came first.
    let analysed = expect_requests(&analytics, 10, server);
    let namespaces: Vec<String> = analysed.iter().map(|r| r.field("namespace").unwrap()).collect();
    assert!(
        namespaces
            .iter()
            .all(|n| n == "productionx/app" || n == "dev/app"),
        "analytics must see no production events:\n{}",
        describe_all(&analysed)
    );
    assert_eq!(
        kinds(&analysed)[..2],
        ["blob.push", "blob.push"],
        "{}",
        describe_all(&analysed)
    );
    assert_eq!(
        sorted_kinds(&analysed[2..4]),
        sorted(&["manifest.push", "tag.create"])
    );
    assert_eq!(
        sorted_kinds(&analysed[8..10]),
        sorted(&["manifest.delete", "tag.delete"])
    );
    assert_eq!(namespaces[8], "dev/app");
    assert_count(&analytics, 10, "analytics");
}

#[test]
fn events_and_or_matched_repository_filters_select_deliveries() {
    let tags = Receiver::ok();
    let production = Receiver::ok();
    let setup = Setup::new()
        .hook(
            Webhook::new(
                "important-repos",
                &tags.url("/important"),
                "optional",
                &["tag.create"],
            )
            .filter(&["^production/.*", "^staging/.*", "^library/.*"]),
        )
        .hook(
            Webhook::new(
                "production-only",
                &production.url("/production"),
                "required",
                &["manifest.push", "manifest.delete"],
            )
            .filter(&["^production/.*"]),
        );
    let registry = Registry::start(&setup);
    let server = &registry.server;

    for (repo, seed) in [
        ("production/web", "p"),
        ("staging/web", "s"),
        ("library/base", "l"),
        ("other/web", "o"),
        ("production", "bare"),
        ("xproduction/web", "x"),
    ] {
        push_image(server, repo, Some("v1"), seed);
    }
    server
        .delete("/v2/production/web/manifests/v1")
        .assert_status(202);
    server.delete("/v2/staging/web/manifests/v1").assert_status(202);

    let tagged = expect_requests(&tags, 3, server);
    assert_count(&tags, 3, "important-repos");
    assert_eq!(kinds(&tagged), ["tag.create"; 3], "only tag.create is listed");
    let namespaces: Vec<String> = tagged.iter().map(|r| r.field("namespace").unwrap()).collect();
    assert_eq!(namespaces, ["production/web", "staging/web", "library/base"]);

    let produced = expect_requests(&production, 2, server);
    assert_count(&production, 2, "production-only");
    assert_eq!(kinds(&produced), ["manifest.push", "manifest.delete"]);
    assert!(
        produced
            .iter()
            .all(|r| r.field("namespace").as_deref() == Some("production/web")),
        "{}",
        describe_all(&produced)
    );
}

/// The documented error body of a failed required delivery, never the token.
#[track_caller]
fn assert_required_failure(response: &Response, webhook: &str, token: &str) {
    assert_eq!(
        response.status,
        500,
        "a failed required webhook: {}",
        response.describe()
    );
    assert!(
        !response.text().contains(token),
        "the error must not leak the token: {}",
        response.describe()
    );
    let json = response.json();
    let errors = json
        .get("errors")
        .and_then(Json::as_array)
        .cloned()
        .unwrap_or_default();
    let named = errors.iter().any(|e| {
        e.get("code").and_then(Json::as_str) == Some("UNKNOWN")
            && e.get("message")
                .and_then(Json::as_str)
                .is_some_and(|m| m.contains(&format!("webhook \"{webhook}\"")))
            && e.get("detail")
                .and_then(|d| d.get("webhook"))
                .and_then(Json::as_str)
                == Some(webhook)
    });
    assert!(
        named,
        "expected {{\"errors\":[{{\"code\":\"UNKNOWN\",\"message\":\"...webhook \\\"{webhook}\\\"...\",\
         \"detail\":{{\"webhook\":\"{webhook}\"}}}}]}}: {}",
        response.describe()
    );
}

#[test]
fn a_failing_required_webhook_fails_the_push_and_changes_nothing() {
    const TOKEN: &str = "never-in-an-error-body";
    let receiver = Receiver::ok();
    let setup = Setup::new().hook(
        Webhook::new(
            "gate",
            &receiver.url("/gate"),
            "required",
            &["manifest.push", "manifest.delete"],
        )
        .token(TOKEN)
        .max_retries(0)
        .timeout_ms(2000),
    );
    let registry = Registry::start(&setup);
    let server = &registry.server;

    // While the receiver accepts, `stable` gets image A.
    let a = push_image(server, "gated/app", Some("stable"), "image-a");
    expect_requests(&receiver, 1, server);

    receiver.set_reply(Reply::status(500));
    // Image B onto the existing tag: refused, the tag still names A.
    let b = prepare_image(server, "gated/app", "image-b");
    let b_digest = digest(&b);
    let response = put_manifest(server, "gated/app", "stable", OCI_MANIFEST, &b);
    assert_required_failure(&response, "gate", TOKEN);
    let current = server.get("/v2/gated/app/manifests/stable");
    current.assert_status(200);
    assert_eq!(
        current.header("docker-content-digest"),
        Some(a.digest.as_str()),
        "the tag must not move when the required webhook fails"
    );
    server
        .get(&format!("/v2/gated/app/manifests/{b_digest}"))
        .assert_status(404);

    // Image B under a new tag: refused, neither tag nor manifest exists.
    let response = put_manifest(server, "gated/app", "fresh", OCI_MANIFEST, &b);
    assert_required_failure(&response, "gate", TOKEN);
    server.get("/v2/gated/app/manifests/fresh").assert_status(404);
    server.head("/v2/gated/app/manifests/fresh").assert_status(404);
    server
        .get(&format!("/v2/gated/app/manifests/{b_digest}"))
        .assert_status(404);
    let tags = server.get("/v2/gated/app/tags/list");
    tags.assert_status(200);
    assert_eq!(tags.json().string_list("tags"), ["stable"]);

    // A refused delete is not applied either.
    let response = server.delete("/v2/gated/app/manifests/stable");
    assert_required_failure(&response, "gate", TOKEN);
    let current = server.get("/v2/gated/app/manifests/stable");
    current.assert_status(200);
    assert_eq!(current.header("docker-content-digest"), Some(a.digest.as_str()));
    server
        .get(&format!("/v2/gated/app/manifests/{}", a.digest))
        .assert_status(200);
    // One attempt each (max_retries = 0): A, B on stable, B on fresh, the delete.
    assert_count(&receiver, 4, "one attempt per operation");

    // A receiver that reads the request and closes without answering is a failure
    // too, and it is still one attempt: max_retries = 0 allows no second POST of the
    // event, even on a fresh connection (the closed one had carried earlier
    // deliveries, but the receiver got this request whole).
    receiver.set_reply(Reply::Close);
    let response = put_manifest(server, "gated/app", "closed", OCI_MANIFEST, &b);
    assert_required_failure(&response, "gate", TOKEN);
    server.get("/v2/gated/app/manifests/closed").assert_status(404);
    assert_count(
        &receiver,
        5,
        "max_retries = 0: the receiver must see the event once (after A, B on stable, B on fresh, \
         the delete: B on closed)",
    );
}

#[test]
fn required_retries_follow_the_documented_backoff() {
    let receiver = Receiver::start(Reply::status(500));
    let setup = Setup::new().hook(
        Webhook::new(
            "reliable",
            &receiver.url("/events"),
            "required",
            &["manifest.push"],
        )
        .max_retries(3)
        .timeout_ms(2000),
    );
    let registry = Registry::start(&setup);
    let server = &registry.server;

    let manifest = prepare_image(server, "retry/app", "always-failing");
    let started = Instant::now();
    let response = put_manifest(server, "retry/app", "v1", OCI_MANIFEST, &manifest);
    let elapsed = started.elapsed();
    assert_required_failure(&response, "reliable", "no token here");
    // The client is answered after the last attempt: all are in.
    let attempts = receiver.requests();
    assert_eq!(
        attempts.len(),
        4,
        "max_retries = 3 means 4 attempts:\n{}",
        describe_all(&attempts)
    );
    let ids: Vec<String> = attempts.iter().map(|r| r.field("id").unwrap()).collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "a retry re-sends the same event: {ids:?}"
    );
    // Attempt k+1 starts 100 ms * 2^(k-1) after attempt k failed, and attempt k
    // arrived before it failed. 2 ms of slack for clock granularity.
    let slack = Duration::from_millis(2);
    for (k, wait_ms) in [(1usize, 100u64), (2, 200), (3, 400)] {
        let gap = attempts[k].arrived - attempts[k - 1].arrived;
        assert!(
            gap + slack >= Duration::from_millis(wait_ms),
            "attempt {} came {gap:?} after attempt {k}; the backoff is {wait_ms} ms",
            k + 1
        );
    }
    assert!(
        elapsed >= Duration::from_millis(700) - slack,
        "the push took {elapsed:?}"
    );
    server.get("/v2/retry/app/manifests/v1").assert_status(404);

    // Two failures, then success: the push succeeds on the third attempt.
    receiver.script(vec![Reply::status(503), Reply::status(500)]);
    receiver.set_reply(Reply::ok());
    let manifest = prepare_image(server, "retry/app", "third-time-lucky");
    let response = put_manifest(server, "retry/app", "v2", OCI_MANIFEST, &manifest);
    assert_eq!(response.status, 201, "{}", response.describe());
    assert_count(&receiver, 7, "4 attempts, then 3");
    let attempts = receiver.requests();
    assert!(attempts[5].arrived - attempts[4].arrived + slack >= Duration::from_millis(100));
    assert!(attempts[6].arrived - attempts[5].arrived + slack >= Duration::from_millis(200));
    server.get("/v2/retry/app/manifests/v2").assert_status(200);

    // One count per delivery, after its retries.
    let metrics = scrape(server);
    let count = |result| {
        metric_sum(
            &metrics,
            "event_webhook_deliveries_total",
            &[
                ("webhook", "reliable"),
                ("event", "manifest.push"),
                ("result", result),
            ],
        )
    };
    assert_eq!((count("error"), count("success")), (1.0, 1.0), "{metrics}");
}

#[test]
fn a_required_webhook_gates_visibility_until_it_answers() {
    let hold = Duration::from_millis(1000);
    let receiver = Receiver::start(Reply::delayed(200, hold));
    let setup = Setup::new()
        .hook(Webhook::new("gate", &receiver.url("/gate"), "required", &["manifest.push"]).timeout_ms(5000));
    let registry = Registry::start(&setup);
    let server = &registry.server;
    let manifest = prepare_image(server, "gated/visible", "held");
    let manifest_digest = digest(&manifest);

    thread::scope(|scope| {
        let push = scope.spawn(|| put_manifest(server, "gated/visible", "v1", OCI_MANIFEST, &manifest));
        // The receiver holds the request for a second: meanwhile nothing is visible.
        let held = expect_requests(&receiver, 1, server);
        let since = held[0].arrived.elapsed();
        assert!(
            since < hold,
            "the check must run while the receiver holds the request"
        );
        let by_tag = server.get("/v2/gated/visible/manifests/v1");
        let by_digest = server.get(&format!("/v2/gated/visible/manifests/{manifest_digest}"));
        let head = server.head("/v2/gated/visible/manifests/v1");
        assert!(
            receiver.replied_count() == 0,
            "the receiver answered before the checks were done; the test is inconclusive"
        );
        assert_eq!(
            by_tag.status,
            404,
            "visible by tag before the required webhook answered: {}",
            by_tag.describe()
        );
        assert_eq!(
            by_digest.status,
            404,
            "visible by digest before the webhook answered: {}",
            by_digest.describe()
        );
        assert_eq!(head.status, 404, "HEAD saw it before the webhook answered");
        let response = push.join().unwrap();
        assert_eq!(response.status, 201, "{}", response.describe());
    });
    let got = server.get("/v2/gated/visible/manifests/v1");
    got.assert_status(200);
    assert_eq!(got.body, manifest);
}

/// Pushes a manifest whose required webhook is held, deletes its layer from
/// the namespace while the webhook waits (the receiver answers only after the
/// delete was acknowledged), and returns the push's answer.
fn push_while_the_layer_is_deleted(
    registry: &Registry,
    receiver: &Receiver,
    repo: &str,
) -> (Response, Vec<u8>) {
    let server = &registry.server;
    let (_, layer, manifest) = image_parts("deleted-while-held");
    prepare_image(server, repo, "deleted-while-held");
    let response = thread::scope(|scope| {
        let push = scope.spawn(|| put_manifest(server, repo, "v1", OCI_MANIFEST, &manifest));
        expect_requests(receiver, 1, server);
        server
            .delete(&format!("/v2/{repo}/blobs/{}", digest(&layer)))
            .assert_status(202);
        assert_eq!(
            receiver.replied_count(),
            0,
            "the webhook answered before the delete"
        );
        receiver.release();
        push.join().unwrap()
    });
    (response, manifest)
}

#[test]
fn a_blob_deleted_during_a_required_wait_fails_the_commit_when_references_are_required() {
    let receiver = Receiver::start(Reply::Held);
    let setup = Setup::new()
        .hook(Webhook::new(
            "gate",
            &receiver.url("/gate"),
            "required",
            &["manifest.push"],
        ))
        .global_line("allow_missing_manifest_references = false");
    let registry = Registry::start(&setup);
    let (response, manifest) = push_while_the_layer_is_deleted(&registry, &receiver, "race/strict");
    response.assert_error(400, "MANIFEST_BLOB_UNKNOWN");
    registry.get("/v2/race/strict/manifests/v1").assert_status(404);
    registry
        .get(&format!("/v2/race/strict/manifests/{}", digest(&manifest)))
        .assert_status(404);
    let tags = registry.get("/v2/race/strict/tags/list");
    assert!(
        tags.status == 404 || tags.json().string_list("tags").is_empty(),
        "a tag became visible: {}",
        tags.describe()
    );
}

#[test]
fn a_blob_deleted_during_a_required_wait_is_as_if_deleted_after_the_commit_by_default() {
    let receiver = Receiver::start(Reply::Held);
    let setup = Setup::new().hook(Webhook::new(
        "gate",
        &receiver.url("/gate"),
        "required",
        &["manifest.push"],
    ));
    let registry = Registry::start(&setup);
    let (response, manifest) = push_while_the_layer_is_deleted(&registry, &receiver, "race/lenient");
    response.assert_status(201);
    assert_eq!(registry.get("/v2/race/lenient/manifests/v1").body, manifest);
    let (_, layer, _) = image_parts("deleted-while-held");
    registry
        .get(&format!("/v2/race/lenient/blobs/{}", digest(&layer)))
        .assert_error(404, "BLOB_UNKNOWN");
}

#[test]
fn a_failing_optional_webhook_still_pushes_warns_and_counts() {
    let receiver = Receiver::start(Reply::status(500));
    let setup = Setup::new().hook(
        Webhook::new(
            "monitoring",
            &receiver.url("/events"),
            "optional",
            &["manifest.push", "blob.push", "tag.create"],
        )
        .timeout_ms(2000)
        .max_retries(1),
    );
    let registry = Registry::start(&setup);
    let server = &registry.server;
    let before = scrape(server);
    assert_eq!(
        metric_sum(
            &before,
            "event_webhook_deliveries_total",
            &[("webhook", "monitoring"), ("result", "error")]
        ),
        0.0
    );

    let manifest = prepare_image(server, "optional/app", "best-effort");
    let counted_blobs = receiver.count();
    let response = put_manifest(server, "optional/app", "v1", OCI_MANIFEST, &manifest);
    assert_eq!(
        response.status,
        201,
        "an optional failure must not fail the push: {}",
        response.describe()
    );
    server.get("/v2/optional/app/manifests/v1").assert_status(200);
    // manifest.push and tag.create, each tried twice (max_retries = 1).
    assert_count(&receiver, counted_blobs + 4, "two events, two attempts each");

    let line = wait_for_log(server, SOON, "warning that webhook \"monitoring\" failed", |l| {
        is_delivery_failure(l, "monitoring")
    });
    assert!(!line.is_empty());
    let metrics = wait_for_metrics(
        server,
        SOON,
        "the error counter of monitoring/manifest.push at 1",
        |m| {
            metric_sum(
                m,
                "event_webhook_deliveries_total",
                &[
                    ("webhook", "monitoring"),
                    ("event", "manifest.push"),
                    ("result", "error"),
                ],
            ) == 1.0
        },
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "event_webhook_deliveries_total",
            &[
                ("webhook", "monitoring"),
                ("event", "tag.create"),
                ("result", "error")
            ],
        ),
        1.0,
        "{metrics}"
    );
}

#[test]
fn an_async_push_is_answered_before_a_slow_receiver_replies() {
    let slow = Duration::from_secs(2);
    let receiver = Receiver::start(Reply::delayed(200, slow));
    let setup = Setup::new().hook(Webhook::new(
        "analytics",
        &receiver.url("/ingest"),
        "async",
        &["manifest.push"],
    ));
    let registry = Registry::start(&setup);
    let server = &registry.server;
    let manifest = prepare_image(server, "async/app", "fire-and-forget");

    let started = Instant::now();
    let response = put_manifest(server, "async/app", "v1", OCI_MANIFEST, &manifest);
    let elapsed = started.elapsed();
    let replied = receiver.replied_count();
    assert_eq!(response.status, 201, "{}", response.describe());
    assert_eq!(
        replied, 0,
        "the receiver had already replied when the push was answered"
    );
    assert!(elapsed < Duration::from_secs(1), "an async push took {elapsed:?}");
    server.get("/v2/async/app/manifests/v1").assert_status(200);

    let delivered = receiver.wait_replied(1, slow + SOON).unwrap_or_else(|| {
        panic!(
            "the async delivery never completed; server output:\n{}",
            log_dump(server)
        )
    });
    check_envelope(&delivered[0], "manifest.push", "async/app", "async");
    wait_for_metrics(server, SOON, "one successful analytics delivery", |m| {
        metric_sum(
            m,
            "event_webhook_deliveries_total",
            &[
                ("webhook", "analytics"),
                ("event", "manifest.push"),
                ("result", "success"),
            ],
        ) == 1.0
    });
}

#[test]
fn async_deliveries_to_one_webhook_keep_event_order() {
    let receiver = Receiver::start(Reply::delayed(200, Duration::from_millis(20)));
    let setup = Setup::new().hook(Webhook::new(
        "ordered",
        &receiver.url("/ingest"),
        "async",
        &["blob.push"],
    ));
    let registry = Registry::start(&setup);
    let server = &registry.server;

    let pushed: Vec<String> = (0..15)
        .map(|i| push_blob(server, "order/app", format!("ordered blob {i}").as_bytes()))
        .collect();
    let requests = expect_requests(&receiver, pushed.len(), server);
    let delivered: Vec<String> = requests
        .iter()
        .map(|r| r.field("digest").unwrap_or_default())
        .collect();
    assert_eq!(
        delivered, pushed,
        "async deliveries must keep event order per webhook"
    );
}

#[test]
fn a_full_async_queue_drops_the_oldest_event_and_counts_it() {
    const QUEUE: usize = 3;
    const EVENTS: usize = 8;
    let receiver = Receiver::start(Reply::Hang);
    let setup = Setup::new()
        .global_line(&format!("event_webhook_queue_length = {QUEUE}"))
        .hook(Webhook::new("bounded", &receiver.url("/ingest"), "async", &["blob.push"]).timeout_ms(1500));
    let registry = Registry::start(&setup);
    let server = &registry.server;

    let first = push_blob(server, "queue/app", b"queued blob 0");
    // The first delivery is in flight, held by the hanging receiver.
    expect_requests(&receiver, 1, server);
    let mut pushed = vec![first];
    for i in 1..EVENTS {
        pushed.push(push_blob(
            server,
            "queue/app",
            format!("queued blob {i}").as_bytes(),
        ));
    }
    let metrics = scrape(server);
    let depth = metric_sum(&metrics, "event_webhook_queue_depth", &[("webhook", "bounded")]);
    let dropped = metric_sum(
        &metrics,
        "event_webhook_queue_dropped_total",
        &[("webhook", "bounded")],
    );
    assert!(
        depth <= QUEUE as f64,
        "queue depth {depth} exceeds the bound {QUEUE}:\n{metrics}"
    );
    // 1 in flight, at most 3 queued: at least 4 of the 7 others were dropped.
    assert!(
        dropped >= (EVENTS - 1 - QUEUE) as f64,
        "expected at least {} drops, counted {dropped}:\n{metrics}",
        EVENTS - 1 - QUEUE
    );
    wait_for_log(server, SOON, "about a dropped event of \"bounded\"", |l| {
        l.contains("bounded") && l.to_ascii_lowercase().contains("drop")
    });

    // Let the rest through: every event ends delivered (once) or dropped.
    receiver.set_reply(Reply::ok());
    let metrics = wait_for_metrics(server, SOON, "every event of bounded delivered or dropped", |m| {
        let delivered = metric_sum(m, "event_webhook_deliveries_total", &[("webhook", "bounded")]);
        let dropped = metric_sum(m, "event_webhook_queue_dropped_total", &[("webhook", "bounded")]);
        delivered + dropped == EVENTS as f64
    });
    let dropped = metric_sum(
        &metrics,
        "event_webhook_queue_dropped_total",
        &[("webhook", "bounded")],
    ) as usize;
    assert_eq!(
        metric_sum(&metrics, "event_webhook_queue_depth", &[("webhook", "bounded")]),
        0.0
    );
    let requests = receiver.requests();
    let delivered: Vec<String> = requests
        .iter()
        .map(|r| r.field("digest").unwrap_or_default())
        .collect();
    assert_eq!(delivered[0], pushed[0], "the first event was the one in flight");
    // The survivors are the newest events, in order: the oldest were dropped.
    assert_eq!(
        delivered[1..],
        pushed[1 + dropped..],
        "after the hung delivery, only the newest events should remain (dropped {dropped}):\n{}",
        describe_all(&requests)
    );
}

#[test]
fn deliveries_to_several_webhooks_run_concurrently() {
    let one = Receiver::start(Reply::delayed(200, Duration::from_secs(1)));
    let two = Receiver::start(Reply::delayed(200, Duration::from_secs(1)));
    let setup = Setup::new()
        .hook(Webhook::new("first", &one.url("/a"), "required", &["manifest.push"]).timeout_ms(5000))
        .hook(Webhook::new("second", &two.url("/b"), "required", &["manifest.push"]).timeout_ms(5000));
    let registry = Registry::start(&setup);
    let server = &registry.server;
    let manifest = prepare_image(server, "parallel/app", "both");

    let started = Instant::now();
    let response = put_manifest(server, "parallel/app", "v1", OCI_MANIFEST, &manifest);
    let elapsed = started.elapsed();
    assert_eq!(response.status, 201, "{}", response.describe());
    assert_count(&one, 1, "first");
    assert_count(&two, 1, "second");
    assert!(
        elapsed >= Duration::from_millis(990),
        "the push did not wait for the webhooks: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(1800),
        "two webhooks that take 1 s each took {elapsed:?}: deliveries of one event must run concurrently"
    );
}

/// Runs `work` on another thread and, while it runs, times `GET /v2/` from other
/// clients; returns the work's result, how long it took, and the probe latencies.
fn probe_while<T: Send>(server: &Server, work: impl FnOnce() -> T + Send) -> (T, Duration, Vec<Duration>) {
    thread::scope(|scope| {
        let started = Instant::now();
        let handle = scope.spawn(move || {
            let value = work();
            (value, started.elapsed())
        });
        let mut latencies = Vec::new();
        loop {
            let probe = Instant::now();
            let response = server.get("/v2/");
            latencies.push(probe.elapsed());
            assert_eq!(
                response.status,
                200,
                "GET /v2/ during the wait: {}",
                response.describe()
            );
            if handle.is_finished() {
                break;
            }
            // Pacing the probes, not waiting for the server.
            thread::sleep(Duration::from_millis(25));
        }
        let (value, took) = handle.join().unwrap();
        (value, took, latencies)
    })
}

#[test]
fn a_hanging_receiver_fails_after_timeout_while_others_are_served() {
    let receiver = Receiver::start(Reply::Hang);
    let setup = Setup::new()
        .hook(Webhook::new("hang", &receiver.url("/hook"), "optional", &["manifest.push"]).timeout_ms(1000));
    let registry = Registry::start(&setup);
    let server = &registry.server;
    let manifest = prepare_image(server, "hang/app", "hung");

    let (response, took, latencies) = probe_while(server, || {
        put_manifest(server, "hang/app", "v1", OCI_MANIFEST, &manifest)
    });
    assert_eq!(response.status, 201, "optional policy: {}", response.describe());
    assert_count(&receiver, 1, "one attempt");
    assert!(
        took >= Duration::from_millis(990),
        "the push returned before timeout_ms: {took:?}"
    );
    assert!(
        took < Duration::from_millis(1600),
        "timeout_ms = 1000 but the push took {took:?}"
    );
    let worst = latencies.iter().max().copied().unwrap_or_default();
    assert!(
        latencies.len() >= 5,
        "too few probes during the wait: {latencies:?}"
    );
    assert!(
        worst < OTHER_CLIENT_BOUND,
        "another client waited {worst:?} while a delivery hung: {latencies:?}"
    );
    wait_for_log(server, SOON, "warning that webhook \"hang\" failed", |l| {
        is_delivery_failure(l, "hang")
    });
}

#[test]
fn an_unresolvable_host_fails_within_timeout_while_others_are_served() {
    let setup = Setup::new().hook(
        Webhook::new(
            "nowhere",
            "http://does-not-exist.invalid:9/hook",
            "optional",
            &["manifest.push"],
        )
        .timeout_ms(1000),
    );
    let registry = Registry::start(&setup);
    let server = &registry.server;
    let manifest = prepare_image(server, "dns/app", "unresolvable");

    let (response, took, latencies) = probe_while(server, || {
        put_manifest(server, "dns/app", "v1", OCI_MANIFEST, &manifest)
    });
    assert_eq!(response.status, 201, "optional policy: {}", response.describe());
    assert!(
        took < Duration::from_millis(1600),
        "timeout_ms = 1000 but the push took {took:?}"
    );
    let worst = latencies.iter().max().copied().unwrap_or_default();
    assert!(
        worst < OTHER_CLIENT_BOUND,
        "another client waited {worst:?} while a name was resolved: {latencies:?}"
    );
    wait_for_log(server, SOON, "warning that webhook \"nowhere\" failed", |l| {
        is_delivery_failure(l, "nowhere")
    });
    wait_for_metrics(server, SOON, "one failed delivery for nowhere", |m| {
        metric_sum(
            m,
            "event_webhook_deliveries_total",
            &[("webhook", "nowhere"), ("result", "error")],
        ) == 1.0
    });
}
