//! Webhook formats and signing end to end (issue 12), each judged by the receiver's
//! own library, run as the README prints it (`webhook_support::snippet`): the
//! Standard Webhooks library verifies every delivery, with one secret and with each
//! secret of a rotation alone, and refuses a replay with another timestamp; the
//! CloudEvents SDK reads every delivery of both modes into the right attributes and
//! data; a receiver answering as Slack does (`no_text`, Slack's block models)
//! accepts every `slack` delivery and refuses the event JSON; the Adaptive Cards
//! library parses every `teams` card; `tag_filter` routes by tag; static `headers`
//! arrive and a CR/LF in one stops the start; `angos webhook test` and the admin ping
//! speak each webhook's format and signing; the user guide's "Multiple Webhooks"
//! example loads verbatim and delivers Slack messages; and every webhook example of
//! the README loads as printed.
//!
//! Its `slack` webhook points at `https://hooks.slack.com/...`, which no test can
//! reach: the resolver reads the fixed `/etc/hosts` (`dns/mod.rs`), and the URL is
//! https with the webpki roots only. So the verbatim block is started and its format
//! choice read from the log (and from `config::webhook`'s unit test), and the
//! delivery is tested with the same block whose URLs point at loopback, `format =
//! "slack"` said explicitly for the one whose host is no longer Slack's.
// End-to-end tests time the real binary from outside: wall-clock reads are
// the point here, not a way around the driven clock (clippy.toml).
#![allow(clippy::disallowed_methods)]

use crate::common;
use crate::webhook_support;

use common::*;
use std::collections::BTreeSet;
use std::process::Command;
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

/// How long a receiver may take to print what eight deliveries brought.
const PRINTED: Duration = Duration::from_secs(10);

/// A new secret from the real CLI, `angos webhook secret`, checked for its form:
/// `whsec_` and the base64 of 32 bytes.
fn new_secret() -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_angos"))
        .args(["webhook", "secret"])
        .output()
        .expect("run angos webhook secret");
    assert!(output.status.success(), "angos webhook secret: {output:?}");
    let secret = String::from_utf8(output.stdout).unwrap().trim().to_string();
    let key = secret
        .strip_prefix("whsec_")
        .unwrap_or_else(|| panic!("not a whsec_ secret: {secret:?}"));
    assert_eq!(python::base64_decode(key).len(), 32, "{secret}");
    secret
}

/// How many events `exercise` causes.
const EXERCISE_EVENTS: usize = 8;

/// Every event kind once or more in `repo`: an image pushed as `v1.0` (two
/// `blob.push`, `manifest.push`, `tag.create`), its manifest and config pulled
/// (`manifest.pull`, `blob.pull`), then deleted by tag (`manifest.delete`,
/// `tag.delete`). Returns the manifest digest.
fn exercise(server: &Server, repo: &str, seed: &str) -> String {
    let image = push_image(server, repo, Some("v1.0"), seed);
    server
        .get(&format!("/v2/{repo}/manifests/v1.0"))
        .assert_status(200);
    server
        .get(&format!("/v2/{repo}/blobs/{}", digest(&image.config)))
        .assert_status(200);
    server
        .delete(&format!("/v2/{repo}/manifests/v1.0"))
        .assert_status(202);
    image.digest
}

/// The kinds `exercise` causes, sorted.
fn exercise_kinds() -> Vec<String> {
    sorted(&[
        "blob.push",
        "blob.push",
        "manifest.push",
        "tag.create",
        "manifest.pull",
        "blob.pull",
        "manifest.delete",
        "tag.delete",
    ])
}

/// `GET /v2/_angos/webhooks/NAME/deliveries`: the recent deliveries.
fn deliveries(server: &Server, name: &str) -> Vec<Json> {
    let response = server.get(&format!("/v2/_angos/webhooks/{name}/deliveries"));
    assert_eq!(response.status, 200, "{}", response.describe());
    response
        .json()
        .get("deliveries")
        .and_then(Json::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Waits until `name` has `n` finished deliveries; returns them.
#[track_caller]
fn wait_for_deliveries(server: &Server, name: &str, n: usize) -> Vec<Json> {
    poll_until(SOON, || {
        let all = deliveries(server, name);
        (all.len() >= n).then_some(all)
    })
    .unwrap_or_else(|| {
        panic!(
            "webhook {name:?}: fewer than {n} deliveries: {:?}\n{}",
            deliveries(server, name),
            log_dump(server)
        )
    })
}

// ---------------------------------------------------------------------------
// Standard Webhooks
// ---------------------------------------------------------------------------

/// The headers a receiver needs to verify `request`, as it sent them.
fn signed_headers(request: &Request) -> Vec<(String, String)> {
    [
        "content-type",
        "x-registry-event",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    ]
    .iter()
    .map(|name| {
        let value = request
            .header(name)
            .unwrap_or_else(|| panic!("no {name}: {}", request.describe()));
        (name.to_string(), value.to_string())
    })
    .collect()
}

/// POSTs `headers` and `body` to a README Standard Webhooks receiver: its status.
fn replay(receiver: &SnippetReceiver, headers: &[(String, String)], body: &[u8]) -> u16 {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    receiver.post("/replayed", &headers, body).status
}

fn with_header(headers: &[(String, String)], name: &str, value: &str) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| (n.clone(), if n == name { value.to_string() } else { v.clone() }))
        .collect()
}

#[test]
fn the_standard_webhooks_library_verifies_every_delivery_and_each_rotated_secret() {
    let old = new_secret();
    let new = new_secret();
    assert_ne!(old, new, "two secrets from the CLI differ");
    let single = SnippetReceiver::start("standard_webhooks_receiver.py", &[("WEBHOOK_SECRET", &old)]);
    let rotating_old = SnippetReceiver::start("standard_webhooks_receiver.py", &[("WEBHOOK_SECRET", &old)]);
    let rotating_new = SnippetReceiver::start("standard_webhooks_receiver.py", &[("WEBHOOK_SECRET", &new)]);
    let capture = Receiver::ok();
    let one = format!("signing_secrets = [{}]", json_str(&old));
    let both = format!("signing_secrets = [{}, {}]", json_str(&old), json_str(&new));
    // Required: a delivery the library refuses (401) fails the push itself.
    let setup = Setup::new()
        .hook(Webhook::new("single", &single.url("/single"), "required", &ALL_KINDS).line(&one))
        .hook(Webhook::new("rotating-old", &rotating_old.url("/r"), "required", &ALL_KINDS).line(&both))
        .hook(Webhook::new("rotating-new", &rotating_new.url("/r"), "required", &ALL_KINDS).line(&both))
        .hook(Webhook::new("capture", &capture.url("/c"), "optional", &ALL_KINDS).line(&both));
    let registry = Registry::start(&setup);
    exercise(&registry, "team/signed", "standard-webhooks");

    for receiver in [&single, &rotating_old, &rotating_new] {
        let lines = receiver.wait_for_lines(EXERCISE_EVENTS, PRINTED);
        assert_eq!(lines.len(), EXERCISE_EVENTS, "{lines:?}");
        let mut kinds: Vec<String> = lines
            .iter()
            .map(|line| {
                let words: Vec<&str> = line.split(' ').collect();
                assert_eq!(words.len(), 3, "{line}");
                assert_eq!(words[0], "verified", "{line}");
                words[2].to_string()
            })
            .collect();
        kinds.sort();
        assert_eq!(kinds, exercise_kinds(), "what {} verified", receiver.addr);
    }

    // One capture, every header as sent: both secrets sign it, each listed once.
    let captured = expect_requests(&capture, EXERCISE_EVENTS, &registry);
    let request = captured
        .iter()
        .find(|r| r.event_header() == "manifest.push")
        .unwrap();
    let headers = signed_headers(request);
    assert_eq!(
        request.header("webhook-id"),
        request.header("x-registry-delivery"),
        "webhook-id is our delivery id"
    );
    let signatures: Vec<&str> = request.header("webhook-signature").unwrap().split(' ').collect();
    assert_eq!(
        signatures.len(),
        2,
        "one signature per secret: {}",
        request.describe()
    );
    assert_eq!(
        replay(&rotating_old, &headers, &request.body),
        204,
        "the old secret alone verifies"
    );
    assert_eq!(
        replay(&rotating_new, &headers, &request.body),
        204,
        "the new secret alone verifies"
    );
    // Each signature is its own key's: with only the first (the old key's), the
    // receiver holding the new key refuses.
    let first_only = with_header(&headers, "webhook-signature", signatures[0]);
    assert_eq!(replay(&rotating_old, &first_only, &request.body), 204);
    assert_eq!(replay(&rotating_new, &first_only, &request.body), 401);
    let stranger = SnippetReceiver::start(
        "standard_webhooks_receiver.py",
        &[("WEBHOOK_SECRET", &new_secret())],
    );
    assert_eq!(replay(&stranger, &headers, &request.body), 401, "another secret");

    // A replay with another timestamp (still within the library's 5 minutes) fails:
    // the signature covers it.
    let sent: u64 = request.header("webhook-timestamp").unwrap().parse().unwrap();
    for moved in [sent + 1, sent - 1, sent + 60] {
        let altered = with_header(&headers, "webhook-timestamp", &moved.to_string());
        assert_eq!(
            replay(&rotating_old, &altered, &request.body),
            401,
            "timestamp {sent} replayed as {moved}"
        );
    }
    let mut body = request.body.clone();
    body.push(b' ');
    assert_eq!(replay(&rotating_old, &headers, &body), 401, "an altered body");
    // The receiver printed only what it verified: the two replays it accepted above.
    let printed = rotating_old.wait_for_lines(EXERCISE_EVENTS + 2, PRINTED);
    assert_eq!(printed.len(), EXERCISE_EVENTS + 2, "{printed:?}");
}

// ---------------------------------------------------------------------------
// CloudEvents
// ---------------------------------------------------------------------------

/// One event as the README's CloudEvents receiver printed it.
struct Parsed {
    id: String,
    kind_type: String,
    source: String,
    time: String,
    subject: Option<String>,
    data: Json,
}

fn parsed_events(receiver: &SnippetReceiver, n: usize) -> Vec<Parsed> {
    let lines = receiver.wait_for_lines(n, PRINTED);
    assert_eq!(lines.len(), n, "{lines:?}");
    lines
        .iter()
        .map(|line| {
            let json = Json::parse(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            let text = |key: &str| json.get(key).and_then(Json::as_str).map(str::to_string);
            Parsed {
                id: text("id").unwrap(),
                kind_type: text("type").unwrap(),
                source: text("source").unwrap(),
                time: text("time").unwrap(),
                subject: text("subject"),
                data: json.get("data").cloned().unwrap(),
            }
        })
        .collect()
}

/// What an event's attributes must be, from its data (the event JSON).
#[track_caller]
fn check_attributes(event: &Parsed, source: &str) {
    let data = |key: &str| event.data.get(key).and_then(Json::as_str).map(str::to_string);
    let what = format!("event {} of kind {:?}", event.id, data("kind"));
    assert_eq!(Some(&event.id), data("id").as_ref(), "{what}: id");
    assert_eq!(
        event.kind_type,
        format!("io.angos.registry.{}", data("kind").unwrap()),
        "{what}: type"
    );
    assert_eq!(event.source, source, "{what}: source");
    // The SDK gives a datetime; Python writes UTC as +00:00, the event as Z.
    assert_eq!(
        event.time.replace("+00:00", "Z"),
        data("timestamp").unwrap(),
        "{what}: time"
    );
    let namespace = data("namespace").unwrap();
    let subject = match (data("tag"), data("digest")) {
        _ if namespace.is_empty() => None,
        (Some(tag), _) => Some(format!("{namespace}:{tag}")),
        (None, Some(digest)) => Some(format!("{namespace}@{digest}")),
        (None, None) => Some(namespace),
    };
    assert_eq!(event.subject, subject, "{what}: subject");
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn the_cloudevents_sdk_reads_every_delivery_in_both_modes() {
    let binary = SnippetReceiver::start("cloudevents_receiver.py", &[]);
    let structured = SnippetReceiver::start("cloudevents_receiver.py", &[]);
    // A source with a percent sign and a non-ASCII letter: binary mode must
    // percent-encode it (HTTP binding 3.1.3.2) for the SDK to read it back.
    let source = "https://registry.example.com/r%C3%A9gion/\u{e9}";
    let setup = Setup::new()
        .hook(
            Webhook::new("binary", &binary.url("/ce"), "required", &ALL_KINDS)
                .line("format = \"cloudevents\"")
                .line(&format!("cloudevents_source = {}", json_str(source))),
        )
        .hook(
            Webhook::new("structured", &structured.url("/ce"), "required", &ALL_KINDS)
                .line("format = \"cloudevents-structured\""),
        );
    let registry = Registry::start(&setup);
    let manifest = exercise(&registry, "team/events", "cloudevents");

    let default_source = format!("urn:angos:{}", host_name());
    let binary_events = parsed_events(&binary, EXERCISE_EVENTS);
    let structured_events = parsed_events(&structured, EXERCISE_EVENTS);
    for (events, source) in [
        (&binary_events, source),
        (&structured_events, default_source.as_str()),
    ] {
        for event in events.iter() {
            check_attributes(event, source);
            assert_eq!(
                event.data.get("namespace").and_then(Json::as_str),
                Some("team/events")
            );
        }
        let mut kinds: Vec<String> = events
            .iter()
            .map(|e| e.data.get("kind").and_then(Json::as_str).unwrap().to_string())
            .collect();
        kinds.sort();
        assert_eq!(kinds, exercise_kinds());
        let push = events
            .iter()
            .find(|e| e.kind_type == "io.angos.registry.manifest.push")
            .unwrap();
        assert_eq!(push.subject.as_deref(), Some("team/events:v1.0"));
        assert_eq!(
            push.data.get("digest").and_then(Json::as_str),
            Some(manifest.as_str())
        );
    }
    // Both modes carried the same events: one id each, the same ids.
    let ids = |events: &[Parsed]| events.iter().map(|e| e.id.clone()).collect::<BTreeSet<_>>();
    assert_eq!(ids(&binary_events).len(), EXERCISE_EVENTS);
    assert_eq!(ids(&binary_events), ids(&structured_events));
}

// ---------------------------------------------------------------------------
// Slack and Teams
// ---------------------------------------------------------------------------

/// `name`'s deliveries all answered `status`.
#[track_caller]
fn assert_answered(server: &Server, name: &str, n: usize, status: u64) {
    let all = wait_for_deliveries(server, name, n);
    assert_eq!(all.len(), n, "{all:?}");
    for delivery in &all {
        assert_eq!(
            delivery.get("http_status").and_then(Json::as_u64),
            Some(status),
            "webhook {name:?}: {delivery:?}"
        );
    }
}

#[test]
fn a_receiver_with_slacks_rules_accepts_every_slack_delivery() {
    let slack = SnippetReceiver::start("slack_rules_receiver.py", &[]);
    let setup = Setup::new()
        .hook(
            Webhook::new("chat", &slack.url("/services/T0/B0/x"), "required", &ALL_KINDS)
                .line("format = \"slack\""),
        )
        // The event JSON, as the guide's `slack` webhook would send it without the
        // format choice: what Slack refuses.
        .hook(Webhook::new("raw", &slack.url("/services/T0/B0/y"), "optional", &ALL_KINDS).max_retries(0));
    let registry = Registry::start(&setup);
    let digest = exercise(&registry, "team/chat", "slack");

    let lines = slack.wait_for_lines(EXERCISE_EVENTS, PRINTED);
    assert_eq!(lines.len(), EXERCISE_EVENTS, "only the slack messages: {lines:?}");
    assert!(
        lines.contains(&format!(
            "manifest.push: team/chat:v1.0 ({digest}) by anonymous (127.0.0.1)"
        )),
        "{lines:?}"
    );
    let mut kinds: Vec<String> = lines
        .iter()
        .map(|line| line.split(':').next().unwrap().to_string())
        .collect();
    kinds.sort();
    assert_eq!(kinds, exercise_kinds(), "{lines:?}");
    assert_answered(&registry, "chat", EXERCISE_EVENTS, 200);
    assert_answered(&registry, "raw", EXERCISE_EVENTS, 400);
    let refused = Conn::open(slack.addr).request("POST", "/x", &[], b"{\"username\":\"angos\"}");
    assert_eq!((refused.status, refused.text()), (400, "no_text".to_string()));
    let bad_block = br#"{"text":"t","blocks":[{"type":"section"}]}"#;
    let refused = Conn::open(slack.addr).request("POST", "/x", &[], bad_block);
    assert_eq!(
        (refused.status, refused.text()),
        (400, "invalid_blocks".to_string())
    );
}

#[test]
fn the_adaptive_cards_library_parses_every_teams_card() {
    let teams = SnippetReceiver::start("teams_card_receiver.js", &[]);
    let setup = Setup::new()
        .hook(
            Webhook::new("teams", &teams.url("/workflows/teams"), "required", &ALL_KINDS)
                .line("format = \"teams\""),
        )
        .hook(Webhook::new("raw", &teams.url("/workflows/raw"), "optional", &ALL_KINDS).max_retries(0));
    let registry = Registry::start(&setup);
    let digest = exercise(&registry, "team/cards", "teams");

    let lines = teams.wait_for_lines(EXERCISE_EVENTS, PRINTED);
    assert_eq!(lines.len(), EXERCISE_EVENTS, "only the cards: {lines:?}");
    assert!(
        lines.contains(&format!(
            "tag.create: team/cards:v1.0 ({digest}) by anonymous (127.0.0.1)"
        )),
        "the card's first text block is the summary: {lines:?}"
    );
    assert_answered(&registry, "teams", EXERCISE_EVENTS, 202);
    assert_answered(&registry, "raw", EXERCISE_EVENTS, 400);
}

// ---------------------------------------------------------------------------
// tag_filter and headers
// ---------------------------------------------------------------------------

#[test]
fn tag_filter_routes_by_tag_and_static_headers_arrive() {
    let releases = Receiver::ok();
    let everything = Receiver::ok();
    let kinds = [
        "manifest.push",
        "manifest.delete",
        "blob.push",
        "tag.create",
        "tag.delete",
    ];
    let setup = Setup::new()
        .hook(
            Webhook::new("releases", &releases.url("/releases"), "optional", &kinds)
                .line(r#"tag_filter = ["^v[0-9]+\\.[0-9]+$", "^latest$"]"#)
                .line(r#"headers = { "X-Api-Key" = "k-123", "Authorization" = "Basic YW5nb3M6dGVzdA==" }"#),
        )
        .hook(Webhook::new(
            "everything",
            &everything.url("/all"),
            "optional",
            &kinds,
        ));
    let registry = Registry::start(&setup);
    let server = &registry.server;

    let release = push_image(server, "team/app", Some("v1.2"), "release");
    push_image(server, "team/app", Some("dev-7"), "dev");
    let untagged = push_image(server, "team/app", None, "untagged");
    push_manifest(server, "team/app", "latest", OCI_MANIFEST, &release.manifest);
    server.delete("/v2/team/app/manifests/v1.2").assert_status(202);
    server
        .delete(&format!("/v2/team/app/manifests/{}", untagged.digest))
        .assert_status(202);

    // everything: 6 blob.push, 4 manifest.push, 3 tag.create, 2 manifest.delete, 1 tag.delete.
    let all = expect_requests(&everything, 16, server);
    assert_count(&everything, 16, "everything");
    let described = |requests: &[Request]| -> Vec<String> {
        let mut out: Vec<String> = requests
            .iter()
            .map(|r| format!("{} {}", r.kind(), r.field("tag").unwrap_or_default()))
            .collect();
        out.sort();
        out
    };
    assert_eq!(
        described(&all)
            .iter()
            .filter(|d| d.trim_end() == "blob.push")
            .count(),
        6,
        "events without a tag pass where no tag_filter is set"
    );
    let got = expect_requests(&releases, 6, server);
    assert_count(&releases, 6, "releases");
    assert_eq!(
        described(&got),
        [
            "manifest.delete v1.2",
            "manifest.push latest",
            "manifest.push v1.2",
            "tag.create latest",
            "tag.create v1.2",
            "tag.delete v1.2",
        ],
        "only tags matching a pattern, and no event without a tag:\n{}",
        describe_all(&got)
    );
    for request in &got {
        assert_eq!(
            request.header("x-api-key"),
            Some("k-123"),
            "{}",
            request.describe()
        );
        assert_eq!(
            request.header("authorization"),
            Some("Basic YW5nb3M6dGVzdA=="),
            "{}",
            request.describe()
        );
    }
    assert!(all.iter().all(|r| r.header("x-api-key").is_none()));
}

#[test]
fn a_header_with_cr_or_lf_stops_the_start_naming_file_and_key() {
    for value in [r#""k\r\nX-Injected: 1""#, r#""k\nX-Injected: 1""#, r#""k\r""#] {
        let dir = TempDir::new("formats-header");
        let config = dir.path().join("webhooks.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nbind_address = \"127.0.0.1\"\nport = 0\n\n[blob_store.fs]\nroot_dir = {}\n\n\
                 [event_webhook.x]\nurl = \"http://127.0.0.1:9/h\"\npolicy = \"async\"\n\
                 events = [\"manifest.push\"]\nheaders = {{ \"X-Api-Key\" = {value} }}\n",
                json_str(&dir.path().join("data").display().to_string())
            ),
        )
        .unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_angos"))
            .arg("-c")
            .arg(&config)
            .arg("server")
            .output()
            .expect("run angos server");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{value}: {stderr}");
        assert!(
            stderr.contains(&config.display().to_string())
                && stderr.contains("event_webhook.x.headers")
                && stderr.contains("CR, LF"),
            "{value}: the error names the file, the key and why: {stderr}"
        );
        assert!(!stderr.contains("listening"), "{stderr}");
    }
}

// ---------------------------------------------------------------------------
// `angos webhook test` and the admin ping
// ---------------------------------------------------------------------------

#[test]
fn webhook_test_and_the_admin_ping_use_the_webhooks_format_and_signing() {
    let secret = new_secret();
    let verifier = SnippetReceiver::start("standard_webhooks_receiver.py", &[("WEBHOOK_SECRET", &secret)]);
    let reader = SnippetReceiver::start("cloudevents_receiver.py", &[]);
    let slack = SnippetReceiver::start("slack_rules_receiver.py", &[]);
    let teams = SnippetReceiver::start("teams_card_receiver.js", &[]);
    let plain = Receiver::ok();
    let signed = format!("signing_secrets = [{}]", json_str(&secret));
    let source = "cloudevents_source = \"https://registry.example.com\"";
    let webhook = |name: &str, url: String, lines: &[&str]| {
        lines.iter().fold(
            Webhook::new(name, &url, "async", &["manifest.push"]),
            |webhook, line| webhook.line(line),
        )
    };
    let binary = ["format = \"cloudevents\"", source, &signed];
    let structured = ["format = \"cloudevents-structured\"", source, &signed];
    let setup = Setup::new()
        .define(webhook("binary-verified", verifier.url("/b"), &binary))
        .define(webhook("binary-read", reader.url("/b"), &binary))
        .define(webhook("structured-verified", verifier.url("/s"), &structured))
        .define(webhook("structured-read", reader.url("/s"), &structured))
        .define(webhook("slack", slack.url("/slack"), &["format = \"slack\""]))
        .define(webhook("teams", teams.url("/teams"), &["format = \"teams\""]))
        .define(
            webhook(
                "plain",
                plain.url("/plain"),
                &[r#"headers = { "X-Api-Key" = "k-9" }"#],
            )
            .token("ping-token"),
        );
    let registry = Registry::start(&setup);
    let names = [
        "binary-verified",
        "binary-read",
        "structured-verified",
        "structured-read",
        "slack",
        "teams",
        "plain",
    ];
    for name in names {
        let output = Command::new(env!("CARGO_BIN_EXE_angos"))
            .arg("-c")
            .arg(registry.config_path())
            .args(["webhook", "test", name])
            .env("RUST_LOG", "warn")
            .output()
            .expect("run angos webhook test");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains(" -> HTTP 2"),
            "angos webhook test {name}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let path = format!("/v2/_angos/webhooks/{name}/test");
        let response = registry.request("POST", &path, &[], b"");
        assert_eq!(response.status, 200, "POST {path}: {}", response.describe());
        assert_eq!(
            response.json().get("success"),
            Some(&Json::Bool(true)),
            "{name}: {}",
            response.describe()
        );
    }

    // Standard Webhooks: each ping, binary and structured, CLI and admin, verified.
    let verified = verifier.wait_for_lines(4, PRINTED);
    assert!(
        verified
            .iter()
            .all(|l| l.starts_with("verified ") && l.ends_with(" ping")),
        "{verified:?}"
    );
    // CloudEvents: a ping of type io.angos.registry.ping, about no repository.
    for event in parsed_events(&reader, 4) {
        check_attributes(&event, "https://registry.example.com");
        assert_eq!(event.kind_type, "io.angos.registry.ping");
        assert_eq!(event.subject, None);
    }
    let pinged = "ping from angos: this webhook is reachable";
    assert_eq!(slack.wait_for_lines(2, PRINTED), [pinged, pinged]);
    assert_eq!(teams.wait_for_lines(2, PRINTED), [pinged, pinged]);
    // The event format: token, HMAC (the guide's function) and static headers.
    let pings = expect_requests(&plain, 2, &registry);
    for ping in &pings {
        check_envelope(ping, "ping", "", "");
        assert_eq!(ping.header("x-api-key"), Some("k-9"));
        assert_eq!(ping.header("authorization"), Some("Bearer ping-token"));
    }
    let deliveries: Vec<(String, Vec<u8>, String)> = pings
        .iter()
        .map(|p| {
            let signature = p.header("x-registry-signature-256").unwrap_or_default();
            ("ping-token".to_string(), p.body.clone(), signature.to_string())
        })
        .collect();
    assert_eq!(python_verify(&deliveries), [true, true]);
}

// ---------------------------------------------------------------------------
// The user guide's "Multiple Webhooks"
// ---------------------------------------------------------------------------

/// The guide's "Multiple Webhooks" example, verbatim.
const MULTIPLE_WEBHOOKS: &str = r#"# Audit log -- must succeed
[event_webhook.audit]
url = "https://audit.example.com/events"
policy = "required"
token = "audit-secret"
events = ["manifest.push", "manifest.delete"]
max_retries = 3

# Slack notifications -- best effort
[event_webhook.slack]
url = "https://hooks.slack.com/services/T.../B.../xxx"
policy = "optional"
events = ["manifest.push", "tag.create"]
timeout_ms = 3000

# Analytics -- fire and forget
[event_webhook.analytics]
url = "https://analytics.internal/ingest"
policy = "async"
events = ["manifest.push", "manifest.delete", "blob.push", "tag.create", "tag.delete"]

# Enable all globally
[global]
event_webhooks = ["audit", "slack", "analytics"]

# Production repos get audit only
[repository."production"]
event_webhooks = ["audit"]
"#;

#[test]
fn the_guides_multiple_webhooks_example_loads_verbatim_and_its_slack_hook_gets_slack_messages() {
    // Verbatim: the server starts on it and says its slack webhook gets Slack messages.
    let dir = TempDir::new("formats-seed");
    let seed = dir.path().join("multiple-webhooks.toml");
    std::fs::write(&seed, MULTIPLE_WEBHOOKS).unwrap();
    let server = Server::start_in(dir.path(), &Options::default().config_file(&seed));
    let line = wait_for_log(&server, SOON, "choosing the slack format", |line| {
        line.contains("webhook \"slack\"") && line.contains("format \"slack\"")
    });
    assert!(line.contains(" INFO "), "{line}");
    let listed = server.get("/v2/_angos/webhooks").json();
    let webhooks = listed.get("webhooks").and_then(Json::as_array).unwrap();
    let summary: Vec<(String, String, String)> = webhooks
        .iter()
        .map(|w| {
            let text = |key: &str| w.get(key).and_then(Json::as_str).unwrap().to_string();
            (text("name"), text("url"), text("policy"))
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("analytics", "https://analytics.internal/ingest", "async"),
            ("audit", "https://audit.example.com/events", "required"),
            (
                "slack",
                "https://hooks.slack.com/services/T.../B.../xxx",
                "optional"
            ),
        ]
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())),
    );
    // The admin API names each one's format and signing schemes, never a secret.
    let shown: Vec<(String, String)> = webhooks
        .iter()
        .map(|w| {
            let format = w.get("format").and_then(Json::as_str).unwrap().to_string();
            (
                format,
                w.get("signing").map(|s| format!("{s:?}")).unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(shown[0].0, "event");
    assert_eq!(shown[1].0, "event");
    assert!(
        shown[1].1.contains("token") && !shown[1].1.contains("audit-secret"),
        "{shown:?}"
    );
    assert_eq!(shown[2].0, "slack");
    drop(server);

    // The same text with the three URLs on loopback; the slack one, no longer on
    // hooks.slack.com, says `format = "slack"` itself.
    let audit = Receiver::ok();
    let slack = SnippetReceiver::start("slack_rules_receiver.py", &[]);
    let analytics = Receiver::ok();
    let text = MULTIPLE_WEBHOOKS
        .replace("https://audit.example.com/events", &audit.url("/events"))
        .replace(
            "url = \"https://hooks.slack.com/services/T.../B.../xxx\"",
            &format!(
                "url = {}\nformat = \"slack\"",
                json_str(&slack.url("/services/T.../B.../xxx"))
            ),
        )
        .replace("https://analytics.internal/ingest", &analytics.url("/ingest"));
    let dir = TempDir::new("formats-seed-loopback");
    let seed = dir.path().join("multiple-webhooks.toml");
    std::fs::write(&seed, &text).unwrap();
    let server = Server::start_in(dir.path(), &Options::default().config_file(&seed));
    let production = push_image(&server, "production/api", Some("v1.2"), "prod");
    let dev = push_image(&server, "dev/app", Some("latest"), "dev");

    let audited = expect_requests(&audit, 2, &server);
    let deliveries: Vec<(String, Vec<u8>, String)> = audited
        .iter()
        .map(|r| {
            let signature = r.header("x-registry-signature-256").unwrap_or_default();
            ("audit-secret".to_string(), r.body.clone(), signature.to_string())
        })
        .collect();
    assert_eq!(python_verify(&deliveries), [true, true]);
    check_fields(&audited[0], &[("digest", Some(&production.digest))]);
    // Slack: dev/app only (production gets audit only), two messages Slack accepts.
    let mut messages = slack.wait_for_lines(2, PRINTED);
    messages.sort();
    let by = "by anonymous (127.0.0.1)";
    assert_eq!(
        messages,
        [
            format!("manifest.push: dev/app:latest ({}) {by}", dev.digest),
            format!("tag.create: dev/app:latest ({}) {by}", dev.digest),
        ]
    );
    assert_answered(&server, "slack", 2, 200);
    let analysed = expect_requests(&analytics, 4, &server);
    assert_eq!(
        sorted_kinds(&analysed),
        sorted(&["blob.push", "blob.push", "manifest.push", "tag.create"])
    );
    assert!(
        analysed
            .iter()
            .all(|r| r.field("namespace").as_deref() == Some("dev/app"))
    );
}

// ---------------------------------------------------------------------------
// The README's webhook configuration
// ---------------------------------------------------------------------------

/// Every TOML block of the README that defines a webhook starts the real server
/// as printed, without a warning (an unknown or misspelled key would be one).
#[test]
fn every_webhook_example_in_the_readme_loads_as_printed() {
    let blocks: Vec<String> = snippet::readme_blocks("toml")
        .into_iter()
        .filter(|block| block.lines().any(|line| line.starts_with("[event_webhook.")))
        .collect();
    assert!(blocks.len() >= 4, "the README's webhook examples: {blocks:?}");
    for block in &blocks {
        let dir = TempDir::new("formats-readme");
        let file = dir.path().join("example.toml");
        std::fs::write(&file, block).unwrap();
        let server = Server::start_in(dir.path(), &Options::default().config_file(&file));
        let warnings: Vec<String> = server
            .logs()
            .into_iter()
            .filter(|line| parse_log(line).is_some_and(|l| l.level == "WARN" || l.level == "ERROR"))
            .collect();
        assert!(warnings.is_empty(), "{block}\n{warnings:?}");
    }
}
