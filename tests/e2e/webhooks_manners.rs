//! Event webhooks end to end, HTTP manners (issue 12, item 5): a `Retry-After` on a
//! 503 sets the next attempt's delay (seconds, and an HTTP-date against the answer's
//! own `Date`), measured on the receiver; a `410 Gone` disables the webhook, turns its
//! queued async events into dead letters, shows in the admin API and `/metrics`, and a
//! reload that changes its URL enables it again; a required webhook disabled by a 410
//! refuses pushes without another attempt, stays disabled across a restart, and the
//! admin API enables it. Real server processes and real receivers on loopback; every
//! wait polls an observable condition until a deadline.
// End-to-end tests time the real binary from outside: wall-clock reads are
// the point here, not a way around the driven clock (clippy.toml).
#![allow(clippy::disallowed_methods)]

use crate::common;
use crate::webhook_support;

use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use webhook_support::*;

/// The dead-letter error of an event that never went out because its webhook is
/// disabled starts so.
const DISABLED: &str = "webhook disabled since ";

/// `GET path`, asserting 200 and JSON.
#[track_caller]
fn get_json(server: &Server, path: &str) -> Json {
    let response = server.get(path);
    assert_eq!(response.status, 200, "GET {path}: {}", response.describe());
    response.json()
}

/// The entry of `GET /v2/_angos/webhooks` for `name`.
#[track_caller]
fn webhook_status(server: &Server, name: &str) -> Json {
    let list = get_json(server, "/v2/_angos/webhooks");
    let webhooks = list
        .get("webhooks")
        .and_then(Json::as_array)
        .unwrap_or_else(|| panic!("no 'webhooks' array: {list:?}"));
    webhooks
        .iter()
        .find(|w| w.get("name").and_then(Json::as_str) == Some(name))
        .cloned()
        .unwrap_or_else(|| panic!("webhook {name:?} not listed: {list:?}"))
}

fn is_disabled(status: &Json) -> bool {
    status.get("disabled") == Some(&Json::Bool(true))
}

fn number(json: &Json, key: &str) -> f64 {
    match json.get(key) {
        Some(Json::Number(n)) => *n,
        other => panic!("no number {key:?} in {json:?}: {other:?}"),
    }
}

/// Gap between the end of one answer and the arrival of the next attempt.
fn gap(requests: &[Request], first: usize) -> Duration {
    let replied = requests[first]
        .replied
        .unwrap_or_else(|| panic!("attempt {first} was not answered"));
    requests[first + 1].arrived.saturating_duration_since(replied)
}

#[test]
fn retry_after_on_503_delays_the_next_attempt_by_what_it_says() {
    let paced = Receiver::ok();
    paced.script(vec![Reply::status(503).header("Retry-After", "1")]);
    // An HTTP-date two seconds after the answer's own Date (long past): the delay
    // counts from that Date, not from either clock.
    let dated = Receiver::ok();
    dated.script(vec![
        Reply::status(503)
            .header("Date", "Sun, 06 Nov 1994 08:49:37 GMT")
            .header("Retry-After", "Sun, 06 Nov 1994 08:49:39 GMT"),
    ]);
    let setup = Setup::new()
        .hook(Webhook::new("paced", &paced.url("/paced"), "optional", &["manifest.push"]).max_retries(2))
        .hook(Webhook::new("dated", &dated.url("/dated"), "async", &["manifest.push"]).max_retries(2));
    let mut registry = Registry::start(&setup);
    // Optional: the push is answered once its delivery is done, the retry included.
    push_image(&registry, "manners/app", Some("v1"), "retry-after");

    let requests = expect_requests(&paced, 2, &registry);
    assert_eq!(
        requests[0].header("x-registry-delivery"),
        requests[1].header("x-registry-delivery"),
        "the retry of the same delivery"
    );
    // Without the header the wait would be the first backoff step, 100 ms. The bounds
    // are generous: this is a check of the schedule, not a benchmark.
    let waited = gap(&requests, 0);
    eprintln!("Retry-After: 1 -> the retry came {waited:?} after the 503");
    assert!(
        waited >= Duration::from_millis(900) && waited <= Duration::from_millis(3000),
        "Retry-After: 1 was followed by a retry after {waited:?}:\n{}",
        describe_all(&requests)
    );

    let requests = dated.wait_for(2, Duration::from_secs(10)).unwrap_or_else(|| {
        panic!(
            "no retry after an HTTP-date Retry-After:\n{}\nserver output:\n{}",
            describe_all(&dated.requests()),
            log_dump(&registry)
        )
    });
    let waited = gap(&requests, 0);
    eprintln!("Retry-After: Date + 2 s -> the retry came {waited:?} after the 503");
    assert!(
        waited >= Duration::from_millis(1900) && waited <= Duration::from_millis(4000),
        "a Retry-After date 2 s after the answer's Date was followed by a retry after {waited:?}"
    );
    registry.server.assert_alive();
}

#[test]
fn a_410_disables_the_webhook_dead_letters_its_queue_and_a_new_url_enables_it() {
    let gone = Receiver::ok();
    // The first attempt is held until the test has queued more events behind it.
    let hold = Arc::new(AtomicBool::new(true));
    let held = Arc::clone(&hold);
    gone.set_hook(move |_| {
        while held.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    gone.script(vec![Reply::status(410)]);
    let mut setup = Setup::new().hook(
        Webhook::new("feed", &gone.url("/feed"), "async", &["manifest.push"])
            .max_retries(3)
            .timeout_ms(30_000),
    );
    let mut registry = Registry::start(&setup);
    for i in 0..4 {
        push_image(
            &registry,
            "manners/feed",
            Some(&format!("v{i}")),
            &format!("gone-{i}"),
        );
    }
    expect_requests(&gone, 1, &registry);
    poll_until(SOON, || {
        (number(&webhook_status(&registry, "feed"), "queue_depth") == 4.0).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the queue never held 4 events: {:?}",
            webhook_status(&registry, "feed")
        )
    });
    hold.store(false, Ordering::SeqCst);

    let line = wait_for_log(&registry, SOON, "'answered 410 Gone and is disabled'", |line| {
        line.contains("webhook \"feed\" answered 410 Gone and is disabled")
    });
    assert!(
        parse_log(&line).is_some_and(|l| l.level.eq_ignore_ascii_case("WARN")),
        "{line}"
    );
    let status = webhook_status(&registry, "feed");
    assert!(is_disabled(&status), "{status:?}");
    assert!(
        status
            .get("disabled_since")
            .and_then(Json::as_str)
            .is_some_and(is_rfc3339_utc),
        "{status:?}"
    );
    assert_eq!(
        status.get("disabled_reason").and_then(Json::as_str),
        Some("it answered 410 Gone"),
        "{status:?}"
    );
    assert_eq!(number(&status, "queue_depth"), 0.0, "{status:?}");
    assert_eq!(number(&status, "dead_letters"), 4.0, "{status:?}");
    // The one that got the 410, and the three that waited behind it, never sent.
    let history = get_json(&registry, "/v2/_angos/webhooks/feed/deliveries");
    let letters = history
        .get("dead_letters")
        .and_then(Json::as_array)
        .unwrap()
        .clone();
    let errors: Vec<(String, f64)> = letters
        .iter()
        .map(|letter| {
            let error = letter.get("error").and_then(Json::as_str).unwrap_or_default();
            (error.to_string(), number(letter, "attempts"))
        })
        .collect();
    assert_eq!(errors.len(), 4, "{history:?}");
    assert_eq!(
        errors
            .iter()
            .filter(|(error, attempts)| error == "HTTP status 410 (Gone)" && *attempts == 1.0)
            .count(),
        1,
        "{errors:?}"
    );
    assert_eq!(
        errors
            .iter()
            .filter(|(error, attempts)| error.starts_with(DISABLED) && *attempts == 0.0)
            .count(),
        3,
        "{errors:?}"
    );
    let metrics = wait_for_metrics(&registry, SOON, "the disabled webhook", |text| {
        metric_sum(text, "event_webhook_disabled", &[("webhook", "feed")]) == 1.0
    });
    let deliveries = |text: &str, result: &str| {
        metric_sum(
            text,
            "event_webhook_deliveries_total",
            &[("webhook", "feed"), ("result", result)],
        )
    };
    assert_eq!(deliveries(&metrics, "error"), 1.0);
    assert_eq!(deliveries(&metrics, "disabled"), 3.0);
    assert_eq!(
        metric_sum(
            &metrics,
            "event_webhook_dead_letters_total",
            &[("webhook", "feed")]
        ),
        4.0
    );

    // A new event is a dead letter at once; nothing reaches the receiver.
    push_image(&registry, "manners/feed", Some("v4"), "gone-4");
    wait_for_metrics(&registry, SOON, "a fifth dead letter", |text| {
        metric_sum(text, "event_webhook_dead_letters_total", &[("webhook", "feed")]) == 5.0
    });
    assert_count(&gone, 1, "a disabled webhook");
    // Redelivery would end the same way: refused until the webhook is enabled.
    let first_letter = letters[0].get("id").and_then(Json::as_str).unwrap().to_string();
    let redeliver = format!("/v2/_angos/webhooks/feed/deliveries/{first_letter}/redeliver");
    let refused = registry.request("POST", &redeliver, &[], b"");
    assert_eq!(refused.status, 409, "{}", refused.describe());

    // A reload that changes the URL enables it again.
    let fresh = Receiver::ok();
    setup.webhook_mut("feed").url = fresh.url("/fresh");
    registry.rewrite_and_wait_reload(&setup, 1);
    wait_for_log(&registry, SOON, "'is enabled again'", |line| {
        line.contains("webhook \"feed\" is enabled again: its URL changed")
    });
    let status = webhook_status(&registry, "feed");
    assert!(!is_disabled(&status), "{status:?}");
    assert_eq!(status.get("disabled_since"), Some(&Json::Null), "{status:?}");
    wait_for_metrics(&registry, SOON, "the webhook enabled", |text| {
        metric_sum(text, "event_webhook_disabled", &[("webhook", "feed")]) == 0.0
    });
    push_image(&registry, "manners/feed", Some("v5"), "fresh-5");
    let got = expect_requests(&fresh, 1, &registry);
    assert_eq!(got[0].path, "/fresh");
    // And its dead letters can be sent again, with their delivery id.
    let again = registry.request("POST", &redeliver, &[], b"");
    assert_eq!(again.status, 202, "{}", again.describe());
    let got = expect_requests(&fresh, 2, &registry);
    assert_eq!(got[1].header("x-registry-delivery"), Some(first_letter.as_str()));
    assert_count(&gone, 1, "the old URL");
    registry.server.assert_alive();
}

#[test]
fn a_required_webhook_a_410_disabled_refuses_pushes_across_a_restart_until_enabled() {
    let audit = Receiver::ok();
    audit.script(vec![Reply::status(410)]);
    let setup = Setup::new()
        .hook(Webhook::new("audit", &audit.url("/audit"), "required", &["manifest.push"]).max_retries(3));
    let mut registry = Registry::start(&setup);

    let manifest = prepare_image(&registry, "manners/audit", "audit-1");
    let refused = put_manifest(&registry, "manners/audit", "v1", OCI_MANIFEST, &manifest);
    assert_eq!(refused.status, 500, "{}", refused.describe());
    assert!(
        refused.text().contains("HTTP status 410 (Gone)"),
        "{}",
        refused.describe()
    );
    assert_count(&audit, 1, "a 410 is not retried");

    // Disabled: refused at once, without an attempt, saying why.
    let refused = put_manifest(&registry, "manners/audit", "v1", OCI_MANIFEST, &manifest);
    assert_eq!(refused.status, 500, "{}", refused.describe());
    assert!(refused.text().contains(DISABLED), "{}", refused.describe());
    assert!(
        !refused.text().contains("127.0.0.1"),
        "the URL stays out of client errors"
    );
    assert_count(&audit, 1, "a disabled webhook");
    assert!(is_disabled(&webhook_status(&registry, "audit")));

    // A restart with the same URL keeps it disabled (the journal says so).
    registry.server.kill();
    registry.server = Server::start_in(registry.dir.path(), &setup.options());
    wait_for_log(&registry, SOON, "'stays disabled'", |line| {
        line.contains("webhook \"audit\" stays disabled")
    });
    assert!(is_disabled(&webhook_status(&registry, "audit")));
    let refused = put_manifest(&registry, "manners/audit", "v1", OCI_MANIFEST, &manifest);
    assert_eq!(refused.status, 500, "{}", refused.describe());
    assert_count(&audit, 1, "disabled after the restart");

    // The admin API enables it; the next push goes through.
    let enabled = registry.request("POST", "/v2/_angos/webhooks/audit/enable", &[], b"");
    assert_eq!(enabled.status, 200, "{}", enabled.describe());
    let json = enabled.json();
    assert_eq!(json.get("disabled"), Some(&Json::Bool(false)), "{json:?}");
    let was = json.get("was_disabled").unwrap_or(&Json::Null);
    assert_eq!(
        was.get("reason").and_then(Json::as_str),
        Some("it answered 410 Gone"),
        "{json:?}"
    );
    assert!(!is_disabled(&webhook_status(&registry, "audit")));
    put_manifest(&registry, "manners/audit", "v1", OCI_MANIFEST, &manifest).assert_status(201);
    assert_count(&audit, 2, "enabled again");
    let again = registry.request("POST", "/v2/_angos/webhooks/audit/enable", &[], b"");
    assert_eq!(again.json().get("was_disabled"), Some(&Json::Null));
    assert_eq!(
        registry
            .request("POST", "/v2/_angos/webhooks/nope/enable", &[], b"")
            .status,
        404
    );
    assert_eq!(registry.get("/v2/_angos/webhooks/audit/enable").status, 405);
    registry.server.assert_alive();
}
