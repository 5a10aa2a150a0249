//! Event webhooks end to end, operations: hot reload of the configuration file
//! (a new URL takes the next event, webhooks added and removed, tokens changed, an
//! invalid edit keeps the running configuration, an in-flight delivery finishes
//! where it started) without a restart, and graceful shutdown on SIGTERM (pending
//! async deliveries drained before exit 0; those past `shutdown_drain_secs`
//! abandoned and counted in the log). Waits are on log lines and receivers, with
//! deadlines; nothing sleeps in place of the server's file watcher.
// End-to-end tests time the real binary from outside: wall-clock reads are
// the point here, not a way around the driven clock (clippy.toml).
#![allow(clippy::disallowed_methods)]

use crate::common;
use crate::webhook_support;

use common::*;
use std::time::{Duration, Instant};
use webhook_support::*;

#[test]
fn an_edited_url_takes_the_next_event_and_an_invalid_edit_is_rejected() {
    let first = Receiver::ok();
    let second = Receiver::ok();
    let mut setup = Setup::new().hook(Webhook::new(
        "moving",
        &first.url("/one"),
        "optional",
        &["manifest.push"],
    ));
    let mut registry = Registry::start(&setup);
    let pid = registry.pid();

    push_image(&registry, "reload/app", Some("v1"), "before-edit");
    expect_requests(&first, 1, &registry);

    setup.webhook_mut("moving").url = second.url("/two");
    registry.rewrite_and_wait_reload(&setup, 1);

    push_image(&registry, "reload/app", Some("v2"), "after-edit");
    let moved = expect_requests(&second, 1, &registry);
    assert_eq!(moved[0].path, "/two");
    check_envelope(&moved[0], "manifest.push", "reload/app", "reload");
    assert_count(&first, 1, "the old URL after the edit");
    registry.server.assert_alive();
    assert_eq!(registry.pid(), pid, "no restart");

    // An invalid edit: logged, and the running configuration stays.
    let rejections = count_logs(&registry, is_reload_rejected);
    let mut invalid = setup.clone();
    invalid.webhook_mut("moving").url = first.url("/invalid");
    invalid.webhook_mut("moving").policy = "sometimes".to_string();
    registry.rewrite(&invalid, 2);
    let line = wait_for_new_log(
        &registry,
        rejections,
        RELOAD_WAIT,
        "'keeping the running configuration'",
        is_reload_rejected,
    );
    assert!(!line.is_empty());
    push_image(&registry, "reload/app", Some("v3"), "after-invalid-edit");
    let still = expect_requests(&second, 2, &registry);
    assert_eq!(still[1].path, "/two");
    assert_count(&first, 1, "the URL of the rejected edit");
    registry.server.assert_alive();
    assert_eq!(registry.pid(), pid, "no restart");
}

#[test]
fn reload_adds_and_removes_webhooks_and_changes_tokens_and_lists() {
    let old = Receiver::ok();
    let new = Receiver::ok();
    let setup = Setup::new().hook(Webhook::new(
        "old",
        &old.url("/old"),
        "optional",
        &["manifest.push"],
    ));
    let registry = Registry::start(&setup);
    push_image(&registry, "lists/app", Some("v1"), "one");
    expect_requests(&old, 1, &registry);

    // Remove "old", add "new" with a token, scoped by a repository list.
    let edited = Setup::new()
        .define(Webhook::new("new", &new.url("/new"), "optional", &["manifest.push"]).token("first-token"))
        .repository("lists", &["new"]);
    registry.rewrite_and_wait_reload(&edited, 1);
    push_image(&registry, "lists/app", Some("v2"), "two");
    // Not in the repository list and no global list: nothing for "elsewhere".
    push_image(&registry, "elsewhere/app", Some("v1"), "three");
    let got = expect_requests(&new, 1, &registry);
    assert_eq!(got[0].field("namespace").as_deref(), Some("lists/app"));
    assert_eq!(got[0].header("authorization"), Some("Bearer first-token"));
    assert_count(&old, 1, "a removed webhook");

    // Change the token.
    let mut rotated = edited.clone();
    rotated.webhook_mut("new").token = Some("second-token".to_string());
    registry.rewrite_and_wait_reload(&rotated, 2);
    push_image(&registry, "lists/app", Some("v3"), "four");
    let got = expect_requests(&new, 2, &registry);
    assert_count(&new, 2, "the new webhook");
    assert_eq!(got[1].header("authorization"), Some("Bearer second-token"));
    let verdicts = python_verify(&[
        (
            "first-token".to_string(),
            got[0].body.clone(),
            got[0]
                .header("x-registry-signature-256")
                .unwrap_or_default()
                .to_string(),
        ),
        (
            "second-token".to_string(),
            got[1].body.clone(),
            got[1]
                .header("x-registry-signature-256")
                .unwrap_or_default()
                .to_string(),
        ),
    ]);
    assert_eq!(
        verdicts,
        [true, true],
        "each delivery signed with the token of its time"
    );
}

#[test]
fn an_in_flight_delivery_finishes_on_the_configuration_it_started_with() {
    let old = Receiver::start(Reply::Held);
    let new = Receiver::ok();
    let mut setup = Setup::new().hook(Webhook::new("bg", &old.url("/old"), "async", &["manifest.push"]));
    let registry = Registry::start(&setup);
    push_image(&registry, "flight/app", Some("v1"), "in-flight");
    expect_requests(&old, 1, &registry);

    setup.webhook_mut("bg").url = new.url("/new");
    registry.rewrite_and_wait_reload(&setup, 1);
    old.release();
    old.wait_replied(1, SOON).expect("the held delivery was answered");
    push_image(&registry, "flight/app", Some("v2"), "after-reload");
    expect_requests(&new, 1, &registry);
    wait_for_metrics(&registry, SOON, "two successful deliveries for bg", |m| {
        metric_sum(
            m,
            "event_webhook_deliveries_total",
            &[("webhook", "bg"), ("result", "success")],
        ) == 2.0
    });
    assert_count(
        &old,
        1,
        "the old URL: the in-flight delivery, not retried elsewhere",
    );
}

/// Waits for the server process to exit (it stays a zombie until `Server` drops)
/// and returns its wait status.
#[track_caller]
fn wait_exit(server: &Server, timeout: Duration) -> i32 {
    let pid = server.pid();
    poll_until(timeout, || exit_status(pid)).unwrap_or_else(|| {
        panic!(
            "angos (pid {pid}) did not exit within {timeout:?} of SIGTERM; output:\n{}",
            log_dump(server)
        )
    })
}

/// The numbers in a log line's message (not its timestamp), as words.
fn numbers(line: &str) -> Vec<u64> {
    let message = parse_log(line).map_or_else(|| line.to_string(), |p| p.message);
    message
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect()
}

#[test]
fn sigterm_drains_pending_async_deliveries_then_exits_zero() {
    const EVENTS: usize = 5;
    let receiver = Receiver::start(Reply::delayed(200, Duration::from_millis(500)));
    let setup = Setup::new()
        .global_line("shutdown_drain_secs = 15")
        .hook(Webhook::new(
            "drain",
            &receiver.url("/ingest"),
            "async",
            &["blob.push"],
        ));
    let registry = Registry::start(&setup);
    let pushed: Vec<String> = (0..EVENTS)
        .map(|i| push_blob(&registry, "drain/app", format!("drained blob {i}").as_bytes()))
        .collect();
    assert!(
        receiver.replied_count() < EVENTS,
        "all deliveries were done before SIGTERM; the test would prove nothing"
    );

    sigterm(registry.pid());
    let status = wait_exit(&registry, Duration::from_secs(12));
    assert_eq!(
        status,
        0,
        "angos ended with {} after SIGTERM; output:\n{}",
        describe_status(status),
        log_dump(&registry)
    );
    let requests = receiver.requests();
    let delivered: Vec<String> = requests
        .iter()
        .map(|r| r.field("digest").unwrap_or_default())
        .collect();
    assert_eq!(
        delivered, pushed,
        "every pending event delivered, in order, before exit"
    );
    assert!(
        requests.iter().all(|r| r.replied.is_some()),
        "every delivery was answered before the process exited:\n{}",
        describe_all(&requests)
    );
    let line = wait_for_log(&registry, SOON, "'abandoned' at shutdown", |l| {
        l.contains("abandoned")
    });
    assert!(
        numbers(&line).contains(&0),
        "nothing should have been abandoned: {line}"
    );
}

#[test]
fn sigterm_abandons_what_does_not_drain_in_time_and_says_how_many() {
    let receiver = Receiver::start(Reply::Hang);
    let setup = Setup::new()
        .global_line("shutdown_drain_secs = 1")
        .hook(Webhook::new("stuck", &receiver.url("/ingest"), "async", &["blob.push"]).timeout_ms(5000));
    let registry = Registry::start(&setup);
    for i in 0..3 {
        push_blob(&registry, "stuck/app", format!("stuck blob {i}").as_bytes());
    }
    expect_requests(&receiver, 1, &registry);
    let signalled = Instant::now();
    sigterm(registry.pid());
    let status = wait_exit(&registry, Duration::from_secs(6));
    let took = signalled.elapsed();
    assert_eq!(
        status,
        0,
        "angos ended with {} after SIGTERM; output:\n{}",
        describe_status(status),
        log_dump(&registry)
    );
    let line = wait_for_log(&registry, SOON, "'abandoned' at shutdown", |l| {
        l.contains("abandoned")
    });
    assert!(
        numbers(&line).contains(&3),
        "one in flight and two queued: 3 abandoned, but the log says: {line}"
    );
    // "Drain for up to shutdown_drain_secs": 1 s, plus slack for the exit itself.
    assert!(
        took < Duration::from_millis(1500),
        "shutdown_drain_secs = 1, but the process exited {took:?} after SIGTERM"
    );
    assert!(
        took >= Duration::from_millis(990),
        "exited before the drain time: {took:?}"
    );
}
