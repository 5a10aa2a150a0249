//! Event webhooks end to end, durable async delivery (issue 5): events a client
//! was answered for survive SIGKILL (with and without `sync_to_disk`) and arrive
//! after the restart exactly once per webhook, in order, with their original id,
//! body, signature (the seed's Python `verify_signature`) and `X-Registry-Delivery`,
//! and events answered before the crash are not sent again; the oldest pending age
//! counts from the event, not the process; a torn or corrupt journal (last segment,
//! or an earlier one) is skipped with a WARN line naming file and offset and every
//! intact record is still delivered; exhausted events become dead letters (bounded,
//! kept across restarts) that can be redelivered; the journal's size limit drops the
//! oldest events, logged and counted, while a webhook that keeps up loses nothing;
//! `angos webhook test` (HTTP, refused, timeout, DNS, TLS, unknown name) and the
//! admin API under `/v2/_angos/`. Real server processes and real receivers on
//! loopback; every wait polls an observable condition (admin API, metrics, logs,
//! receivers) until a deadline.
// End-to-end tests time the real binary from outside: wall-clock reads are
// the point here, not a way around the driven clock (clippy.toml).
#![allow(clippy::disallowed_methods)]

use crate::common;
use crate::common::rng::Rng;
use crate::webhook_support;

use common::*;
use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use webhook_support::*;

/// A delivery to a hanging receiver stays in flight for the whole test.
const HANG_TIMEOUT_MS: u64 = 60_000;
/// How long a restarted server may take to deliver what its journal holds.
const DRAIN: Duration = Duration::from_secs(20);
/// The documented dead-letter error of a receiver answering 500.
const HTTP_500: &str = "HTTP status 500";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Starts the server on `dir` (config `dir/config.toml`, data `dir/data`).
fn start(dir: &Path, setup: &Setup, sync: bool) -> Server {
    let mut options = setup.options();
    if sync {
        options = options.sync();
    }
    Server::start_in(dir, &options)
}

/// `GET path`, asserting 200 and a JSON body.
#[track_caller]
fn get_json(server: &Server, path: &str) -> Json {
    let response = server.get(path);
    assert_eq!(response.status, 200, "GET {path}: {}", response.describe());
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "GET {path} must answer JSON: {}",
        response.describe()
    );
    response.json()
}

/// `GET /v2/_angos/webhooks/NAME/deliveries`.
#[track_caller]
fn deliveries(server: &Server, name: &str) -> Json {
    get_json(server, &format!("/v2/_angos/webhooks/{name}/deliveries"))
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

#[track_caller]
fn pending(server: &Server, name: &str) -> u64 {
    let json = deliveries(server, name);
    json.get("pending")
        .and_then(Json::as_u64)
        .unwrap_or_else(|| panic!("no integer 'pending' in {json:?}"))
}

fn number(json: &Json, key: &str) -> Option<f64> {
    match json.get(key) {
        Some(Json::Number(n)) => Some(*n),
        _ => None,
    }
}

fn string(json: &Json, key: &str) -> Option<String> {
    json.get(key).and_then(Json::as_str).map(str::to_string)
}

fn is_null(json: &Json, key: &str) -> bool {
    matches!(json.get(key), Some(Json::Null))
}

fn is_hex32(text: &str) -> bool {
    text.len() == 32
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Waits until `receiver` got at least `n` requests and none of `names` has an
/// event waiting or in flight (so nothing more is coming), then asserts exactly `n`.
#[track_caller]
fn wait_delivered(server: &Server, receiver: &Receiver, names: &[&str], n: usize) -> Vec<Request> {
    let done = poll_until(DRAIN, || {
        (receiver.count() >= n && names.iter().all(|name| pending(server, name) == 0))
            .then(|| receiver.requests())
    });
    let requests = done.unwrap_or_else(|| {
        let depths: Vec<(String, u64)> = names.iter().map(|n| (n.to_string(), pending(server, n))).collect();
        panic!(
            "expected {n} deliveries and empty queues within {DRAIN:?}; pending {depths:?}; got:\n{}\nserver output:\n{}",
            describe_all(&receiver.requests()),
            log_dump(server)
        )
    });
    assert_eq!(
        requests.len(),
        n,
        "exactly {n} deliveries expected once the queues are empty:\n{}",
        describe_all(&requests)
    );
    requests
}

/// The requests that arrived on `path`, in arrival order.
fn on_path(requests: &[Request], path: &str) -> Vec<Request> {
    requests.iter().filter(|r| r.path == path).cloned().collect()
}

/// `X-Registry-Delivery` of a request, asserted present and 32 hex digits.
#[track_caller]
fn delivery_header(request: &Request) -> String {
    let id = request
        .header("x-registry-delivery")
        .unwrap_or_else(|| panic!("no X-Registry-Delivery header: {}", request.describe()));
    assert!(
        is_hex32(id),
        "X-Registry-Delivery must be 32 hex digits: {}",
        request.describe()
    );
    id.to_string()
}

fn signature(request: &Request) -> String {
    request
        .header("x-registry-signature-256")
        .unwrap_or_default()
        .to_string()
}

/// Runs the seed's `verify_signature` over every `(secret, request)`.
#[track_caller]
fn assert_signed(deliveries: &[(&str, &Request)]) {
    if deliveries.is_empty() {
        return;
    }
    let input: Vec<(String, Vec<u8>, String)> = deliveries
        .iter()
        .map(|(secret, r)| (secret.to_string(), r.body.clone(), signature(r)))
        .collect();
    let verdicts = python_verify(&input);
    for ((secret, request), ok) in deliveries.iter().zip(verdicts) {
        assert!(
            ok,
            "the seed's verify_signature({secret:?}) rejected: {}",
            request.describe()
        );
    }
}

/// The payload id of each request.
fn event_ids(requests: &[Request]) -> Vec<String> {
    requests
        .iter()
        .map(|r| {
            r.field("id")
                .unwrap_or_else(|| panic!("payload without an id: {}", r.describe()))
        })
        .collect()
}

#[track_caller]
fn assert_unique(items: &[String], what: &str) {
    let set: BTreeSet<&String> = items.iter().collect();
    assert_eq!(set.len(), items.len(), "{what} must be unique: {items:?}");
}

fn journal_dir(root: &Path) -> PathBuf {
    root.join("_journal")
}

/// The journal's segment files, in name (= seq) order.
fn segments(root: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(journal_dir(root))
        .unwrap_or_else(|e| panic!("read {}: {e}", journal_dir(root).display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("segment-") && name.ends_with(".log")
        })
        .collect();
    found.sort();
    found
}

/// Bytes of the journal's segments: what `event_webhook_journal_size` bounds (the fixed
/// reserve beside them is not events; README, "Full disk").
fn journal_bytes(root: &Path) -> u64 {
    segments(root)
        .iter()
        .filter_map(|path| std::fs::metadata(path).ok())
        .map(|metadata| metadata.len())
        .sum()
}

/// One record of a segment, decoded from the documented layout (`[u32 LE len]
/// [u32 LE CRC-32C][payload]`; an event payload is `E` seq webhook event_id kind
/// unix_micros delivery_id body). Other record types keep only their frame.
#[derive(Clone, Debug, Default)]
struct JournalRecord {
    offset: usize,
    end: usize,
    record_type: u8,
    seq: u64,
    webhook: String,
    event_id: String,
    kind: String,
    delivery_id: String,
    body: Vec<u8>,
}

impl JournalRecord {
    fn is_event(&self) -> bool {
        self.record_type == b'E'
    }
}

fn read_records(bytes: &[u8]) -> Vec<JournalRecord> {
    struct Cursor<'a>(&'a [u8], usize);
    impl Cursor<'_> {
        fn take(&mut self, n: usize) -> &[u8] {
            let out = &self.0[self.1..self.1 + n];
            self.1 += n;
            out
        }
        fn u32(&mut self) -> u32 {
            u32::from_le_bytes(self.take(4).try_into().unwrap())
        }
        fn u64(&mut self) -> u64 {
            u64::from_le_bytes(self.take(8).try_into().unwrap())
        }
        fn bytes(&mut self) -> Vec<u8> {
            let n = self.u32() as usize;
            self.take(n).to_vec()
        }
        fn string(&mut self) -> String {
            String::from_utf8(self.bytes()).unwrap()
        }
    }
    let mut records = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        let length = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        let end = offset + 8 + length;
        let payload = &bytes[offset + 8..end];
        let mut record = JournalRecord {
            offset,
            end,
            record_type: payload[0],
            ..JournalRecord::default()
        };
        if record.is_event() {
            let mut cursor = Cursor(payload, 1);
            record.seq = cursor.u64();
            record.webhook = cursor.string();
            record.event_id = cursor.string();
            record.kind = cursor.string();
            let _unix_micros = cursor.u64();
            record.delivery_id = cursor.string();
            record.body = cursor.bytes();
            assert_eq!(
                cursor.1,
                payload.len(),
                "event record at {offset} has trailing bytes"
            );
        }
        records.push(record);
        offset = end;
    }
    records
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn journal_skipped_lines(server: &Server) -> Vec<String> {
    server
        .logs()
        .into_iter()
        .filter(|l| l.contains("journal: skipped"))
        .collect()
}

// ---------------------------------------------------------------------------
// 1. Crash durability
// ---------------------------------------------------------------------------

const BLOBS_SECRET: &str = "blobs-secret";
const MANIFESTS_SECRET: &str = "manifests-secret";

/// Two async webhooks: every blob push to one, every manifest push to the other;
/// with `hang`, a listener that accepts and never answers.
fn crash_setup(blobs_url: &str, manifests_url: &str) -> Setup {
    Setup::new()
        .hook(
            Webhook::new("blobs", blobs_url, "async", &["blob.push"])
                .token(BLOBS_SECRET)
                .timeout_ms(HANG_TIMEOUT_MS),
        )
        .hook(
            Webhook::new("manifests", manifests_url, "async", &["manifest.push"])
                .token(MANIFESTS_SECRET)
                .timeout_ms(HANG_TIMEOUT_MS),
        )
}

fn crash_durability(sync: bool) {
    const IMAGES: usize = 8;
    let dir = TempDir::new("durable-crash");
    let down = Receiver::start(Reply::Hang);
    let mut server = start(
        dir.path(),
        &crash_setup(&down.url("/blobs"), &down.url("/manifests")),
        sync,
    );
    // Every push is acknowledged (201, asserted by the helpers); its events are
    // the ones that must survive.
    let mut expected_blobs = Vec::new();
    let mut expected_manifests = Vec::new();
    for i in 0..IMAGES {
        let image = push_image(
            &server,
            "durable/app",
            Some(&format!("v{i}")),
            &format!("crash-{sync}-{i}"),
        );
        expected_blobs.push(digest(&image.config));
        expected_blobs.push(digest(&image.layers[0]));
        expected_manifests.push(image.digest.clone());
    }
    // One delivery per webhook is in flight at the hanging receiver; the rest wait.
    let in_flight = expect_requests(&down, 2, &server);
    assert_eq!(pending(&server, "blobs"), 2 * IMAGES as u64);
    assert_eq!(pending(&server, "manifests"), IMAGES as u64);
    server.kill();
    drop(server);

    let up = Receiver::ok();
    let mut server = start(
        dir.path(),
        &crash_setup(&up.url("/blobs"), &up.url("/manifests")),
        sync,
    );
    let total = 3 * IMAGES;
    wait_for_log(&server, SOON, "'journal: resumed'", |l| {
        l.contains(&format!("journal: resumed {total} pending async deliveries"))
    });
    let requests = wait_delivered(&server, &up, &["blobs", "manifests"], total);
    let blobs = on_path(&requests, "/blobs");
    let manifests = on_path(&requests, "/manifests");
    let got_blobs: Vec<String> = blobs
        .iter()
        .map(|r| r.field("digest").unwrap_or_default())
        .collect();
    let got_manifests: Vec<String> = manifests
        .iter()
        .map(|r| r.field("digest").unwrap_or_default())
        .collect();
    assert_eq!(
        got_blobs, expected_blobs,
        "every acknowledged blob.push once, in push order"
    );
    assert_eq!(
        got_manifests, expected_manifests,
        "every acknowledged manifest.push once, in push order"
    );
    for (i, request) in manifests.iter().enumerate() {
        check_envelope(request, "manifest.push", "durable/app", "durable");
        check_fields(request, &[("reference", Some(&format!("v{i}")))]);
    }
    for request in &blobs {
        check_envelope(request, "blob.push", "durable/app", "durable");
    }
    for (name, list) in [("blobs", &blobs), ("manifests", &manifests)] {
        assert_unique(&event_ids(list), &format!("event ids delivered to {name}"));
        let ids: Vec<String> = list.iter().map(delivery_header).collect();
        assert_unique(&ids, &format!("X-Registry-Delivery ids of {name}"));
    }
    // The event that was in flight at the crash comes again with its original id,
    // body and delivery id: first in its webhook's order.
    for before in &in_flight {
        let after = if before.path == "/blobs" {
            &blobs[0]
        } else {
            &manifests[0]
        };
        assert_eq!(
            after.body,
            before.body,
            "redelivered after the restart with the original body:\nbefore: {}\nafter: {}",
            before.describe(),
            after.describe()
        );
        assert_eq!(delivery_header(after), delivery_header(before));
        assert_eq!(signature(after), signature(before));
    }
    let mut signed: Vec<(&str, &Request)> = blobs.iter().map(|r| (BLOBS_SECRET, r)).collect();
    signed.extend(manifests.iter().map(|r| (MANIFESTS_SECRET, r)));
    assert_signed(&signed);

    // Delivered means acknowledged: another SIGKILL and restart delivers nothing
    // again, and new events still go out.
    server.kill();
    drop(server);
    let server = start(
        dir.path(),
        &crash_setup(&up.url("/blobs"), &up.url("/manifests")),
        sync,
    );
    assert_eq!(pending(&server, "blobs"), 0, "{}", log_dump(&server));
    assert_eq!(pending(&server, "manifests"), 0, "{}", log_dump(&server));
    assert_eq!(count_logs(&server, |l| l.contains("journal: resumed")), 0);
    let after = push_blob(&server, "durable/app", format!("after restart {sync}").as_bytes());
    let requests = wait_delivered(&server, &up, &["blobs", "manifests"], total + 1);
    assert_eq!(requests[total].path, "/blobs");
    assert_eq!(requests[total].field("digest").as_deref(), Some(after.as_str()));
}

#[test]
fn acknowledged_async_events_survive_sigkill_and_arrive_once_in_order_signed() {
    crash_durability(false);
}

#[test]
fn acknowledged_async_events_survive_sigkill_with_sync_to_disk() {
    crash_durability(true);
}

#[test]
fn events_delivered_before_a_crash_are_not_delivered_again_and_the_rest_are() {
    const BLOBS: usize = 6;
    const DELIVERED: usize = 3;
    let dir = TempDir::new("durable-partial");
    // Answers the first deliveries, then hangs on the next one.
    let flaky = Receiver::start(Reply::Hang);
    flaky.script(vec![Reply::ok(); DELIVERED]);
    let setup = |url: &str| {
        Setup::new().hook(
            Webhook::new("partial", url, "async", &["blob.push"])
                .token(BLOBS_SECRET)
                .timeout_ms(HANG_TIMEOUT_MS),
        )
    };
    let mut server = start(dir.path(), &setup(&flaky.url("/partial")), false);
    let pushed: Vec<String> = (0..BLOBS)
        .map(|i| push_blob(&server, "partial/app", format!("partial blob {i}").as_bytes()))
        .collect();
    let before = expect_requests(&flaky, DELIVERED + 1, &server);
    // A request served after the answers were handled: their acknowledgements are written.
    let pending_before = poll_until(SOON, || {
        let n = pending(&server, "partial");
        (n == (BLOBS - DELIVERED) as u64).then_some(n)
    });
    assert!(
        pending_before.is_some(),
        "{DELIVERED} answered of {BLOBS}: {} pending",
        pending(&server, "partial")
    );
    server.kill();
    drop(server);

    let up = Receiver::ok();
    let server = start(dir.path(), &setup(&up.url("/partial")), false);
    let after = wait_delivered(&server, &up, &["partial"], BLOBS - DELIVERED);
    let digests: Vec<String> = after
        .iter()
        .map(|r| r.field("digest").unwrap_or_default())
        .collect();
    assert_eq!(
        digests,
        pushed[DELIVERED..],
        "only the events not answered before the crash, in order"
    );
    // The one in flight at the crash comes again, as it was.
    assert_eq!(after[0].body, before[DELIVERED].body);
    assert_eq!(delivery_header(&after[0]), delivery_header(&before[DELIVERED]));
    let signed: Vec<(&str, &Request)> = after.iter().map(|r| (BLOBS_SECRET, r)).collect();
    assert_signed(&signed);
}

/// `oldest_pending_age_seconds` and `event_webhook_oldest_pending_seconds` are the
/// age of the oldest queued event: one queued before a crash is no younger after
/// the restart. (At d26dc70 this fails: resumed events are queued with the restart
/// time, `Dispatcher::enqueue_journaled(.., now_ms)` from `Notifier::with_journal`,
/// so the age drops to 0 on every restart.)
#[test]
fn the_oldest_pending_age_counts_from_the_event_not_from_the_restart() {
    const AGE: f64 = 0.5;
    let dir = TempDir::new("durable-age");
    let down = Receiver::start(Reply::Hang);
    let setup = Setup::new().hook(
        Webhook::new("stuck", &down.url("/stuck"), "async", &["blob.push"]).timeout_ms(HANG_TIMEOUT_MS),
    );
    let mut server = start(dir.path(), &setup, false);
    push_blob(&server, "age/app", b"an event nobody takes");
    let before = poll_until(Duration::from_secs(5), || {
        number(&webhook_status(&server, "stuck"), "oldest_pending_age_seconds").filter(|age| *age >= AGE)
    })
    .unwrap_or_else(|| {
        panic!(
            "oldest_pending_age_seconds never reached {AGE}: {:?}",
            webhook_status(&server, "stuck")
        )
    });
    server.kill();
    drop(server);

    // The same event, still pending after the restart, is at least as old as before.
    let server = start(dir.path(), &setup, false);
    let status = webhook_status(&server, "stuck");
    assert_eq!(
        status.get("queue_depth").and_then(Json::as_u64),
        Some(1),
        "{status:?}"
    );
    let after = number(&status, "oldest_pending_age_seconds").unwrap_or(0.0);
    let metric = metric_sum(
        &scrape(&server),
        "event_webhook_oldest_pending_seconds",
        &[("webhook", "stuck")],
    );
    assert!(
        after >= before && metric >= before,
        "the event has waited at least {before} s, but after the restart the admin API says \
         oldest_pending_age_seconds = {after} and the metric says {metric}: the age restarted \
         from zero with the process"
    );
}

// ---------------------------------------------------------------------------
// 2. Torn and corrupt journal tails
// ---------------------------------------------------------------------------

const C1_SECRET: &str = "c1-secret";
const C2_SECRET: &str = "c2-secret";

fn corruption_setup(c1_url: &str, c2_url: &str) -> Setup {
    Setup::new()
        .hook(
            Webhook::new("c1", c1_url, "async", &["blob.push"])
                .token(C1_SECRET)
                .timeout_ms(HANG_TIMEOUT_MS),
        )
        .hook(
            Webhook::new("c2", c2_url, "async", &["blob.push"])
                .token(C2_SECRET)
                .timeout_ms(HANG_TIMEOUT_MS),
        )
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    /// Cut the segment to this many bytes.
    Truncate(usize),
    /// XOR the byte at this offset with a non-zero mask.
    Flip(usize, u8),
}

#[test]
fn a_torn_or_corrupt_journal_tail_is_skipped_logged_and_every_intact_event_delivered() {
    const BLOBS: usize = 10;
    const SEED: u64 = 0x5eed_da7a_0005_0001;
    let pristine = TempDir::new("durable-pristine");
    {
        let down = Receiver::start(Reply::Hang);
        let mut server = start(
            pristine.path(),
            &corruption_setup(&down.url("/c1"), &down.url("/c2")),
            false,
        );
        for i in 0..BLOBS {
            push_blob(&server, "torn/app", format!("torn blob {i}").as_bytes());
        }
        expect_requests(&down, 2, &server);
        server.kill();
    }
    let root = pristine.path().join("data");
    let files = segments(&root);
    assert_eq!(files.len(), 1, "a small journal has one segment: {files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    let digits = name.strip_prefix("segment-").and_then(|n| n.strip_suffix(".log"));
    assert!(
        digits.is_some_and(|d| d.len() == 20 && d.bytes().all(|b| b.is_ascii_digit())),
        "segment-<20 digits>.log: {name}"
    );
    let bytes = std::fs::read(&files[0]).unwrap();
    let records = read_records(&bytes);
    assert!(
        records.iter().all(JournalRecord::is_event),
        "only events: nothing was acknowledged"
    );
    assert_eq!(records.len(), 2 * BLOBS, "one event record per event and webhook");
    assert!(records.windows(2).all(|w| w[0].seq < w[1].seq), "seqs grow");

    // A few chosen cases, then random ones from a fixed seed.
    let last = records.last().unwrap().clone();
    let middle = records[BLOBS].clone();
    let mut cases = vec![
        Damage::Truncate(last.offset + 3),         // torn header of the last record
        Damage::Truncate(middle.offset + 8 + 20),  // torn payload in the middle
        Damage::Flip(middle.end - 10, 0x20),       // a flipped byte in a body
        Damage::Flip(last.offset + 5, 0x01),       // a flipped checksum
        Damage::Truncate(records[BLOBS - 1].end),  // a clean cut between records
        Damage::Flip(records[0].offset + 9, 0x80), // the very first record
    ];
    let mut rng = Rng(SEED);
    for i in 0..4 {
        if i % 2 == 0 {
            cases.push(Damage::Truncate(1 + rng.index(bytes.len() - 1)));
        } else {
            cases.push(Damage::Flip(rng.index(bytes.len()), 1 + rng.below(255) as u8));
        }
    }

    let mut signed: Vec<(&'static str, Request)> = Vec::new();
    for (case, damage) in cases.iter().enumerate() {
        let what = format!("case {case} {damage:?} (seed {SEED:#x})");
        let dir = TempDir::new("durable-torn");
        copy_dir(pristine.path().join("data").as_path(), &dir.path().join("data"));
        let segment = segments(&dir.path().join("data")).pop().unwrap();
        let mut damaged = bytes.clone();
        let at = match *damage {
            Damage::Truncate(len) => {
                damaged.truncate(len);
                len
            }
            Damage::Flip(offset, mask) => {
                damaged[offset] ^= mask;
                offset
            }
        };
        std::fs::write(&segment, &damaged).unwrap();
        // The record the damage hits, and whether the cut fell between records.
        let hit = records.iter().position(|r| r.end > at).unwrap_or(records.len());
        let clean_cut =
            matches!(damage, Damage::Truncate(_)) && records.get(hit).is_some_and(|r| r.offset == at);
        let intact = &records[..hit];

        let up = Receiver::ok();
        let server = start(
            dir.path(),
            &corruption_setup(&up.url("/c1"), &up.url("/c2")),
            false,
        );
        let skipped = journal_skipped_lines(&server);
        if hit < records.len() && !clean_cut {
            let file = segment.file_name().unwrap().to_string_lossy().into_owned();
            let offset = records[hit].offset;
            assert!(
                skipped.iter().any(|l| {
                    parse_log(l).is_some_and(|p| p.level.eq_ignore_ascii_case("WARN"))
                        && l.contains(&file)
                        && l.contains(&format!("offset {offset}: "))
                }),
                "{what}: expected a WARN 'journal: skipped ...{file}: offset {offset}: ...' line; server output:\n{}",
                log_dump(&server)
            );
        } else {
            assert!(skipped.is_empty(), "{what}: nothing to skip, but: {skipped:?}");
        }
        let requests = wait_delivered(&server, &up, &["c1", "c2"], intact.len());
        for (name, secret) in [("c1", C1_SECRET), ("c2", C2_SECRET)] {
            let expected: Vec<&JournalRecord> = intact.iter().filter(|r| r.webhook == name).collect();
            let got = on_path(&requests, &format!("/{name}"));
            let got_ids = event_ids(&got);
            let want_ids: Vec<String> = expected.iter().map(|r| r.event_id.clone()).collect();
            assert_eq!(
                got_ids, want_ids,
                "{what}: webhook {name} gets every intact record, in order"
            );
            for (request, record) in got.iter().zip(&expected) {
                assert_eq!(
                    request.body, record.body,
                    "{what}: the journaled body, byte for byte"
                );
                assert_eq!(delivery_header(request), record.delivery_id, "{what}");
                assert_eq!(request.event_header(), record.kind, "{what}");
                signed.push((secret, request.clone()));
            }
        }
        // Appends continue on a clean tail: a new event goes out, and the next
        // start finds nothing to skip.
        push_blob(&server, "torn/app", format!("after case {case}").as_bytes());
        wait_delivered(&server, &up, &["c1", "c2"], intact.len() + 2);
        drop(server);
        let again = start(
            dir.path(),
            &corruption_setup(&up.url("/c1"), &up.url("/c2")),
            false,
        );
        assert!(
            journal_skipped_lines(&again).is_empty(),
            "{what}: the tail was not repaired; second start:\n{}",
            log_dump(&again)
        );
        assert_eq!(pending(&again, "c1") + pending(&again, "c2"), 0, "{what}");
    }
    let refs: Vec<(&str, &Request)> = signed.iter().map(|(s, r)| (*s, r)).collect();
    assert_signed(&refs);
}

#[test]
fn damage_in_a_multi_segment_journal_loses_only_what_follows_it_in_that_segment() {
    const PULLS: usize = 1200;
    const SEED: u64 = 0x5eed_da7a_0005_0002;
    let setup = |url: &str| {
        Setup::new()
            .global_line("event_webhook_journal_size = \"2MiB\"")
            .hook(Webhook::new("m", url, "async", &["manifest.pull"]).timeout_ms(HANG_TIMEOUT_MS))
    };
    let pristine = TempDir::new("durable-segments");
    {
        let down = Receiver::start(Reply::Hang);
        let mut server = start(pristine.path(), &setup(&down.url("/m")), false);
        let repo = format!("segments/{}", "n".repeat(100));
        let tag = "t".repeat(100);
        let manifest = prepare_image(&server, &repo, "segments");
        push_manifest(&server, &repo, &tag, OCI_MANIFEST, &manifest);
        let mut conn = server.connect();
        let path = format!("/v2/{repo}/manifests/{tag}");
        for i in 0..PULLS {
            let response = conn.request("GET", &path, &[("Accept", OCI_MANIFEST)], b"");
            assert_eq!(response.status, 200, "pull {i}: {}", response.describe());
        }
        expect_requests(&down, 1, &server);
        server.kill();
    }
    let files = segments(&pristine.path().join("data"));
    assert!(
        files.len() >= 3,
        "a 2 MiB journal rotates every 256 KiB; {PULLS} events should fill several: {files:?}"
    );
    let parsed: Vec<(Vec<u8>, Vec<JournalRecord>)> = files
        .iter()
        .map(|file| {
            let bytes = std::fs::read(file).unwrap();
            let records = read_records(&bytes);
            (bytes, records)
        })
        .collect();
    let events: usize = parsed
        .iter()
        .map(|(_, records)| records.iter().filter(|r| r.is_event()).count())
        .sum();
    assert_eq!(events, PULLS, "every pull journaled, none dropped under 2 MiB");

    let mut rng = Rng(SEED);
    // The last segment (the documented torn tail), then the first one: later
    // segments must still be read.
    for victim in [files.len() - 1, 0] {
        let (bytes, records) = &parsed[victim];
        let target = 1 + rng.index(records.len() - 1);
        let record = &records[target];
        let at = record.offset + 8 + rng.index(record.end - record.offset - 8);
        let what = format!(
            "flip at byte {at} of {} (seed {SEED:#x})",
            files[victim].display()
        );
        let dir = TempDir::new("durable-segments-case");
        copy_dir(&pristine.path().join("data"), &dir.path().join("data"));
        let damaged_file = segments(&dir.path().join("data")).remove(victim);
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x40;
        std::fs::write(&damaged_file, &damaged).unwrap();
        let expected: Vec<String> = parsed
            .iter()
            .enumerate()
            .flat_map(|(i, (_, records))| {
                let kept = if i == victim {
                    &records[..target]
                } else {
                    &records[..]
                };
                kept.iter().filter(|r| r.is_event()).map(|r| r.event_id.clone())
            })
            .collect();

        let up = Receiver::ok();
        let server = start(dir.path(), &setup(&up.url("/m")), false);
        let file = damaged_file.file_name().unwrap().to_string_lossy().into_owned();
        let offset = record.offset;
        assert!(
            journal_skipped_lines(&server).iter().any(|l| {
                parse_log(l).is_some_and(|p| p.level.eq_ignore_ascii_case("WARN"))
                    && l.contains(&file)
                    && l.contains(&format!("offset {offset}: "))
            }),
            "{what}: no 'journal: skipped ...{file}: offset {offset}: ...' line; server output:\n{}",
            log_dump(&server)
        );
        let requests = wait_delivered(&server, &up, &["m"], expected.len());
        let got = event_ids(&requests);
        assert!(
            got == expected,
            "{what}: expected the {} intact events in order, got {} (first difference at {:?})",
            expected.len(),
            got.len(),
            got.iter().zip(&expected).position(|(a, b)| a != b)
        );
    }
}

// ---------------------------------------------------------------------------
// 3. Dead letters and redelivery
// ---------------------------------------------------------------------------

const DL_SECRET: &str = "dead-letter-secret";

fn dead_letter_setup(dl_url: &str, retrying_url: &str) -> Setup {
    Setup::new()
        .hook(Webhook::new("dl", dl_url, "async", &["blob.push"]).token(DL_SECRET))
        .hook(Webhook::new("retrying", retrying_url, "async", &["blob.push"]).max_retries(1))
}

#[track_caller]
fn redeliver(server: &Server, name: &str, id: &str) -> Json {
    let path = format!("/v2/_angos/webhooks/{name}/deliveries/{id}/redeliver");
    let response = server.request("POST", &path, &[], b"");
    assert_eq!(response.status, 202, "POST {path}: {}", response.describe());
    let json = response.json();
    assert_eq!(string(&json, "webhook").as_deref(), Some(name), "{json:?}");
    assert_eq!(string(&json, "delivery_id").as_deref(), Some(id), "{json:?}");
    assert_eq!(json.get("queued"), Some(&Json::Bool(true)), "{json:?}");
    json
}

#[test]
fn an_exhausted_async_event_is_a_dead_letter_redeliverable_before_and_after_a_restart() {
    let dir = TempDir::new("durable-dead");
    let dl = Receiver::start(Reply::status(500));
    let retrying = Receiver::start(Reply::status(500));
    let setup = dead_letter_setup(&dl.url("/dl"), &retrying.url("/retrying"));
    let mut server = start(dir.path(), &setup, false);
    let blob = push_blob(&server, "dead/app", b"a blob nobody accepts");
    wait_for_metrics(&server, SOON, "a dead letter for dl and for retrying", |m| {
        metric_sum(m, "event_webhook_dead_letters_total", &[("webhook", "dl")]) == 1.0
            && metric_sum(m, "event_webhook_dead_letters_total", &[("webhook", "retrying")]) == 1.0
    });
    let first = expect_requests(&dl, 1, &server).remove(0);
    check_envelope(&first, "blob.push", "dead/app", "dead");
    check_fields(&first, &[("digest", Some(&blob))]);
    let delivery_id = delivery_header(&first);
    let event_id = first.field("id").unwrap();

    // max_retries = 1: two attempts, one delivery id.
    let attempts = expect_requests(&retrying, 2, &server);
    assert_eq!(delivery_header(&attempts[0]), delivery_header(&attempts[1]));
    assert_eq!(attempts[0].body, attempts[1].body);
    assert_ne!(
        delivery_header(&attempts[0]),
        delivery_id,
        "one event, two webhooks: two delivery ids"
    );
    assert_eq!(attempts[0].field("id"), Some(event_id.clone()));

    let check_listed = |server: &Server, after_restart: bool| {
        let listed = deliveries(server, "dl");
        assert_eq!(string(&listed, "webhook").as_deref(), Some("dl"));
        let letters = listed
            .get("dead_letters")
            .and_then(Json::as_array)
            .unwrap()
            .clone();
        assert_eq!(letters.len(), 1, "one dead letter for dl: {listed:?}");
        let letter = &letters[0];
        assert_eq!(
            string(letter, "id").as_deref(),
            Some(delivery_id.as_str()),
            "{letter:?}"
        );
        assert_eq!(
            string(letter, "event_id").as_deref(),
            Some(event_id.as_str()),
            "{letter:?}"
        );
        assert_eq!(string(letter, "kind").as_deref(), Some("blob.push"), "{letter:?}");
        assert_eq!(
            string(letter, "status").as_deref(),
            Some("dead_letter"),
            "{letter:?}"
        );
        assert_eq!(
            letter.get("attempts").and_then(Json::as_u64),
            Some(1),
            "{letter:?}"
        );
        assert_eq!(string(letter, "error").as_deref(), Some(HTTP_500), "{letter:?}");
        assert!(
            is_rfc3339_utc(&string(letter, "finished").unwrap_or_default()),
            "{letter:?}"
        );
        let status = webhook_status(server, "dl");
        assert_eq!(
            status.get("dead_letters").and_then(Json::as_u64),
            Some(1),
            "{status:?}"
        );
        if !after_restart {
            let last_error = status.get("last_error").unwrap_or(&Json::Null);
            assert_eq!(
                string(last_error, "message").as_deref(),
                Some(HTTP_500),
                "{status:?}"
            );
            assert!(
                is_rfc3339_utc(&string(last_error, "time").unwrap_or_default()),
                "{status:?}"
            );
            assert!(is_null(&status, "last_success"), "{status:?}");
            let recent = listed.get("deliveries").and_then(Json::as_array).unwrap();
            let record = &recent[0];
            assert_eq!(
                string(record, "id").as_deref(),
                Some(delivery_id.as_str()),
                "{record:?}"
            );
            assert_eq!(
                string(record, "status").as_deref(),
                Some("dead_letter"),
                "{record:?}"
            );
            assert_eq!(
                record.get("http_status").and_then(Json::as_u64),
                Some(500),
                "{record:?}"
            );
            assert_eq!(string(record, "error").as_deref(), Some(HTTP_500), "{record:?}");
        }
        let retried = deliveries(server, "retrying");
        let letters = retried.get("dead_letters").and_then(Json::as_array).unwrap();
        assert_eq!(letters.len(), 1, "{retried:?}");
        assert_eq!(
            letters[0].get("attempts").and_then(Json::as_u64),
            Some(2),
            "{retried:?}"
        );
    };
    check_listed(&server, false);

    // The receiver recovers; the operator redelivers.
    dl.set_reply(Reply::ok());
    let answer = redeliver(&server, "dl", &delivery_id);
    assert_eq!(string(&answer, "event_id").as_deref(), Some(event_id.as_str()));
    let again = expect_requests(&dl, 2, &server).remove(1);
    assert_eq!(again.body, first.body, "the original body, byte for byte");
    assert_eq!(delivery_header(&again), delivery_id);
    assert_eq!(signature(&again), signature(&first));
    let recorded = poll_until(SOON, || {
        let listed = deliveries(&server, "dl");
        let recent = listed.get("deliveries").and_then(Json::as_array)?.clone();
        (string(&recent[0], "status").as_deref() == Some("success")).then_some(recent)
    })
    .unwrap_or_else(|| {
        panic!(
            "the redelivery is not listed as a success: {:?}",
            deliveries(&server, "dl")
        )
    });
    assert_eq!(string(&recorded[0], "id").as_deref(), Some(delivery_id.as_str()));
    assert_eq!(recorded[0].get("http_status").and_then(Json::as_u64), Some(200));
    assert!(is_rfc3339_utc(
        &string(&webhook_status(&server, "dl"), "last_success").unwrap_or_default()
    ));

    // Dead letters survive SIGKILL and stay redeliverable.
    server.kill();
    drop(server);
    let server = start(dir.path(), &setup, false);
    check_listed(&server, true);
    redeliver(&server, "dl", &delivery_id);
    let third = expect_requests(&dl, 3, &server).remove(2);
    assert_eq!(third.body, first.body);
    assert_eq!(delivery_header(&third), delivery_id);
    assert_eq!(signature(&third), signature(&first));
    assert_signed(&[(DL_SECRET, &first), (DL_SECRET, &again), (DL_SECRET, &third)]);
    let unknown = server.request(
        "POST",
        "/v2/_angos/webhooks/dl/deliveries/00000000000000000000000000000000/redeliver",
        &[],
        b"",
    );
    assert_eq!(unknown.status, 404, "{}", unknown.describe());
}

#[test]
fn only_the_most_recent_dead_letters_are_kept_across_restarts() {
    let dir = TempDir::new("durable-dead-bound");
    let receiver = Receiver::start(Reply::status(500));
    let setup = Setup::new()
        .global_line("event_webhook_dead_letters = 2")
        .hook(Webhook::new(
            "bounded",
            &receiver.url("/bounded"),
            "async",
            &["blob.push"],
        ));
    let mut server = start(dir.path(), &setup, false);
    for i in 0..4 {
        push_blob(&server, "bound/app", format!("rejected blob {i}").as_bytes());
    }
    wait_for_metrics(&server, SOON, "four dead letters counted", |m| {
        metric_sum(m, "event_webhook_dead_letters_total", &[("webhook", "bounded")]) == 4.0
    });
    let requests = expect_requests(&receiver, 4, &server);
    let ids: Vec<String> = requests.iter().map(delivery_header).collect();
    let kept: BTreeSet<String> = ids[2..].iter().cloned().collect();
    let check = |server: &Server| {
        let listed = deliveries(server, "bounded");
        let letters = listed.get("dead_letters").and_then(Json::as_array).unwrap();
        let listed_ids: BTreeSet<String> = letters.iter().filter_map(|l| string(l, "id")).collect();
        assert_eq!(listed_ids, kept, "the two most recent dead letters: {listed:?}");
        let status = webhook_status(server, "bounded");
        assert_eq!(
            status.get("dead_letters").and_then(Json::as_u64),
            Some(2),
            "{status:?}"
        );
    };
    check(&server);
    server.kill();
    drop(server);
    let server = start(dir.path(), &setup, false);
    check(&server);
    let evicted = server.request(
        "POST",
        &format!("/v2/_angos/webhooks/bounded/deliveries/{}/redeliver", ids[0]),
        &[],
        b"",
    );
    assert_eq!(
        evicted.status,
        404,
        "an evicted dead letter is gone: {}",
        evicted.describe()
    );
    receiver.set_reply(Reply::ok());
    redeliver(&server, "bounded", &ids[3]);
    let again = expect_requests(&receiver, 5, &server).remove(4);
    assert_eq!(again.body, requests[3].body);
    assert_eq!(delivery_header(&again), ids[3]);
}

// ---------------------------------------------------------------------------
// 4. The journal's size limit
// ---------------------------------------------------------------------------

#[test]
fn the_journal_size_limit_drops_the_oldest_events_logs_and_counts_them_and_keeps_serving() {
    const FIRST: usize = 100;
    const MIDDLE: usize = 4500;
    const LAST: usize = 100;
    const LIMIT: u64 = 2 << 20;
    let dir = TempDir::new("durable-size");
    let down = Receiver::start(Reply::Hang);
    let size_setup = |url: &str| {
        Setup::new()
            .global_line("event_webhook_journal_size = \"2MiB\"")
            .hook(Webhook::new("size", url, "async", &["manifest.pull"]).timeout_ms(HANG_TIMEOUT_MS))
    };
    let mut server = start(dir.path(), &size_setup(&down.url("/size")), false);
    // Long names make each event record ~600 bytes, so a few thousand pulls fill 2 MiB.
    let repo = format!("size/{}", "n".repeat(100));
    let pad = "t".repeat(100);
    let tags = [
        format!("first-{pad}"),
        format!("middle-{pad}"),
        format!("last-{pad}"),
    ];
    let (config, layer, manifest) = image_parts("size");
    push_blob(&server, &repo, &config);
    push_blob(&server, &repo, &layer);
    for tag in &tags {
        push_manifest(&server, &repo, tag, OCI_MANIFEST, &manifest);
    }
    let mut conn = server.connect();
    let mut largest = 0;
    for (tag, count) in tags.iter().zip([FIRST, MIDDLE, LAST]) {
        let path = format!("/v2/{repo}/manifests/{tag}");
        for i in 0..count {
            let response = conn.request("GET", &path, &[("Accept", OCI_MANIFEST)], b"");
            assert_eq!(response.status, 200, "pull {i} of {tag}: {}", response.describe());
            if i % 250 == 0 {
                largest = largest.max(journal_bytes(&server.root));
            }
        }
    }
    largest = largest.max(journal_bytes(&server.root));
    let total = (FIRST + MIDDLE + LAST) as u64;
    assert!(
        largest <= LIMIT + LIMIT / 4,
        "the journal grew to {largest} bytes with a {LIMIT}-byte limit"
    );

    let drop_lines: Vec<String> = server
        .logs()
        .into_iter()
        .filter(|l| l.contains("journal full; dropped the oldest undelivered event"))
        .collect();
    assert!(
        !drop_lines.is_empty(),
        "{total} pulls of ~600 bytes each must exceed 2 MiB; no drop logged:\n{}",
        log_dump(&server)
    );
    for line in &drop_lines {
        let parsed = parse_log(line).unwrap_or_else(|| panic!("unparsable log line {line:?}"));
        assert!(parsed.level.eq_ignore_ascii_case("WARN"), "{line}");
        assert!(parsed.message.contains("webhook \"size\""), "{line}");
        let id = line.rsplit(' ').next().unwrap_or_default();
        assert!(is_uuid_v4(id), "the dropped event's id ends the line: {line}");
    }
    let dropped = drop_lines.len() as u64;
    let metrics = scrape(&server);
    assert_eq!(
        metric_sum(
            &metrics,
            "event_webhook_queue_dropped_total",
            &[("webhook", "size")]
        ),
        dropped as f64,
        "the counter matches the log"
    );
    // Still serving, and the queue holds what was not dropped (the event in flight
    // may have been dropped from the journal but is still being delivered).
    server.get("/v2/").assert_status(200);
    let depth = pending(&server, "size");
    assert!(
        depth + dropped >= total && depth + dropped <= total + 1,
        "{total} events: {depth} queued + {dropped} dropped"
    );
    assert_eq!(
        metric_sum(&metrics, "event_webhook_queue_depth", &[("webhook", "size")]),
        depth as f64
    );
    server.kill();
    drop(server);

    // What the journal kept is the newest events: after a restart none of the first
    // pulls arrives, and the kept ones end with every last pull, in order.
    let up = Receiver::ok();
    let server = start(dir.path(), &size_setup(&up.url("/size")), false);
    let kept = depth.min(total - dropped) as usize;
    let requests = wait_delivered(&server, &up, &["size"], kept);
    let references: Vec<String> = requests
        .iter()
        .map(|r| r.field("reference").unwrap_or_default())
        .collect();
    let firsts = references.iter().filter(|r| **r == tags[0]).count();
    assert_eq!(firsts, 0, "the oldest pulls should have been dropped first");
    let middles = references.iter().take_while(|r| **r == tags[1]).count();
    assert!(middles > 0, "some middle pulls are kept");
    assert!(
        references[middles..].iter().all(|r| *r == tags[2]) && references.len() - middles == LAST,
        "kept: a run of middle pulls, then all {LAST} last pulls ({} + {})",
        middles,
        references.len() - middles
    );
    let timestamps: Vec<String> = requests.iter().map(|r| r.field("timestamp").unwrap()).collect();
    assert!(timestamps.windows(2).all(|w| w[0] <= w[1]), "in event order");
}

#[test]
fn a_webhook_that_keeps_up_never_hits_the_size_limit_and_the_journal_stays_bounded() {
    const BATCHES: usize = 8;
    const PULLS: usize = 500;
    let receiver = Receiver::ok();
    let setup = Setup::new()
        .global_line("event_webhook_journal_size = \"2MiB\"")
        .hook(Webhook::new(
            "healthy",
            &receiver.url("/healthy"),
            "async",
            &["manifest.pull"],
        ));
    let registry = Registry::start(&setup);
    let repo = format!("healthy/{}", "n".repeat(100));
    let tag = "t".repeat(100);
    let manifest = prepare_image(&registry, &repo, "healthy");
    push_manifest(&registry, &repo, &tag, OCI_MANIFEST, &manifest);
    let path = format!("/v2/{repo}/manifests/{tag}");
    let mut conn = registry.connect();
    let mut largest = 0;
    for batch in 0..BATCHES {
        for i in 0..PULLS {
            let response = conn.request("GET", &path, &[("Accept", OCI_MANIFEST)], b"");
            assert_eq!(response.status, 200, "pull {i}: {}", response.describe());
        }
        // Let deliveries catch up: at most one batch (~300 KB) is ever pending.
        wait_delivered(&registry, &receiver, &["healthy"], (batch + 1) * PULLS);
        largest = largest.max(journal_bytes(&registry.root));
    }
    let total = BATCHES * PULLS;
    assert_unique(&event_ids(&receiver.requests()), "event ids");
    let metrics = scrape(&registry);
    assert_eq!(
        metric_sum(
            &metrics,
            "event_webhook_queue_dropped_total",
            &[("webhook", "healthy")]
        ),
        0.0,
        "delivered events are never dropped; server output:\n{}",
        log_dump(&registry)
    );
    assert_eq!(
        count_logs(&registry, |l| l.contains("journal full")),
        0,
        "{}",
        log_dump(&registry)
    );
    assert!(
        largest <= (2 << 20) + (1 << 19),
        "{total} delivered events of ~600 bytes: the journal reached {largest} bytes"
    );
}

#[test]
fn a_journal_size_under_2mib_is_refused_with_the_key_named() {
    let dir = TempDir::new("durable-small-journal");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nbind_address = \"127.0.0.1\"\nport = 0\n\n[blob_store.fs]\nroot_dir = {}\n\n\
             [global]\nevent_webhook_journal_size = \"1MiB\"\n",
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
    assert!(!output.status.success(), "a 1MiB journal was accepted: {stderr}");
    assert!(
        stderr.contains("event_webhook_journal_size") && stderr.contains("2MiB"),
        "the error names the key and the minimum: {stderr}"
    );
}

// ---------------------------------------------------------------------------
// 5. `angos webhook test` and the admin ping
// ---------------------------------------------------------------------------

const PING_SECRET: &str = "ping-secret";

/// A port with nothing listening on it.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

struct PingTargets {
    ok: Receiver,
    broken: Receiver,
    hanging: Receiver,
    refused_url: String,
}

impl PingTargets {
    fn new() -> PingTargets {
        PingTargets {
            ok: Receiver::start(Reply::status(204)),
            broken: Receiver::start(Reply::status(503)),
            hanging: Receiver::start(Reply::Hang),
            refused_url: format!("http://127.0.0.1:{}/refused", closed_port()),
        }
    }

    fn setup(&self) -> Setup {
        Setup::new()
            .hook(Webhook::new("ok", &self.ok.url("/ping"), "async", &["manifest.push"]).token(PING_SECRET))
            .define(
                Webhook::new("broken", &self.broken.url("/b"), "required", &["tag.create"]).max_retries(3),
            )
            .define(Webhook::new("slow", &self.hanging.url("/s"), "optional", &["blob.push"]).timeout_ms(300))
            .define(Webhook::new(
                "refused",
                &self.refused_url,
                "async",
                &["blob.push"],
            ))
            .define(
                Webhook::new(
                    "nxdomain",
                    "http://does-not-exist.invalid/",
                    "async",
                    &["blob.push"],
                )
                .timeout_ms(5000),
            )
    }
}

fn run_ping(config: &Path, name: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_angos"))
        .arg("-c")
        .arg(config)
        .args(["webhook", "test", name])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run angos webhook test")
}

/// The single stdout line of a ping, asserting the exit code.
#[track_caller]
fn ping_line(config: &Path, name: &str, success: bool) -> String {
    let output = run_ping(config, name);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(if success { 0 } else { 1 }),
        "angos webhook test {name}: {}\nstdout: {stdout}\nstderr: {stderr}",
        output.status
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "one line of outcome; stdout: {stdout}\nstderr: {stderr}"
    );
    lines[0].to_string()
}

/// Splits `webhook "NAME": POST URL failed after N ms: ERROR (STATUS)`.
#[track_caller]
fn parse_failure(line: &str, name: &str, url: &str) -> (u64, String, String) {
    let prefix = format!("webhook \"{name}\": POST {url} failed after ");
    let rest = line
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("expected {prefix:?}...; got {line:?}"));
    let (ms, rest) = rest
        .split_once(" ms: ")
        .unwrap_or_else(|| panic!("no ' ms: ' in {line:?}"));
    let (error, status) = rest
        .rsplit_once(" (")
        .unwrap_or_else(|| panic!("no ' (status)' in {line:?}"));
    let status = status
        .strip_suffix(')')
        .unwrap_or_else(|| panic!("no closing parenthesis in {line:?}"));
    (
        ms.parse()
            .unwrap_or_else(|_| panic!("bad milliseconds in {line:?}")),
        error.to_string(),
        status.to_string(),
    )
}

#[test]
fn webhook_test_command_reports_success_and_spells_out_each_failure() {
    let targets = PingTargets::new();
    let dir = TempDir::new("durable-ping-cli");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, format!("[global]\n{}", targets.setup().global_tail())).unwrap();

    // A 2xx: exit 0, the documented line, one signed ping at the receiver.
    let url = targets.ok.url("/ping");
    let line = ping_line(&config, "ok", true);
    let prefix = format!("webhook \"ok\": POST {url} -> HTTP 204 in ");
    let rest = line
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("expected {prefix:?}...; got {line:?}"));
    let (ms, rest) = rest
        .split_once(" ms (delivery ")
        .unwrap_or_else(|| panic!("{line:?}"));
    assert!(ms.parse::<u64>().is_ok(), "{line:?}");
    let printed_id = rest.strip_suffix(')').unwrap_or_else(|| panic!("{line:?}"));
    assert!(is_hex32(printed_id), "{line:?}");
    let pings = targets
        .ok
        .wait_for(1, SOON)
        .expect("the ping reached the receiver");
    assert_eq!(pings.len(), 1, "one attempt:\n{}", describe_all(&pings));
    let ping = &pings[0];
    check_envelope(ping, "ping", "", "");
    assert_eq!(ping.path, "/ping");
    assert_eq!(ping.header("authorization"), Some("Bearer ping-secret"));
    assert_eq!(delivery_header(ping), printed_id);
    assert_signed(&[(PING_SECRET, ping)]);

    // Failures: exit 1 and the error spelled out.
    let (_, error, status) = parse_failure(
        &ping_line(&config, "broken", false),
        "broken",
        &targets.broken.url("/b"),
    );
    assert_eq!((error.as_str(), status.as_str()), ("HTTP status 503", "HTTP 503"));
    assert_eq!(
        targets.broken.count(),
        1,
        "a ping is one attempt whatever max_retries says"
    );
    let (_, error, status) = parse_failure(
        &ping_line(&config, "refused", false),
        "refused",
        &targets.refused_url,
    );
    assert!(error.contains("Connection refused"), "{error}");
    assert!(error.starts_with("connect to 127.0.0.1:"), "{error}");
    assert_eq!(status, "no HTTP answer");
    let (ms, error, status) = parse_failure(
        &ping_line(&config, "slow", false),
        "slow",
        &targets.hanging.url("/s"),
    );
    assert_eq!(error, "timed out after 300 ms");
    assert!(ms >= 290, "timed out after {ms} ms, before the 300 ms timeout");
    assert_eq!(status, "no HTTP answer");
    let (_, error, status) = parse_failure(
        &ping_line(&config, "nxdomain", false),
        "nxdomain",
        "http://does-not-exist.invalid/",
    );
    assert!(
        error.starts_with("DNS: ") && error.contains("does-not-exist.invalid"),
        "a DNS failure names DNS and the host: {error}"
    );
    assert_eq!(status, "no HTTP answer");

    // An unknown name lists the configured ones.
    let output = run_ping(&config, "nope");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("\"nope\""), "{stderr}");
    for name in ["ok", "broken", "slow", "refused", "nxdomain"] {
        assert!(stderr.contains(name), "the known webhooks are listed: {stderr}");
    }
}

#[test]
fn webhook_test_command_spells_out_a_tls_failure_and_trusts_the_ca_bundle() {
    let ca = TestCa::generate();
    let https = HttpsReceiver::start(&ca, Some(PING_SECRET));
    let untrusted_url = https.url("127.0.0.1", "/untrusted");
    let trusted_url = https.url("localhost", "/trusted");
    let setup = Setup::new()
        .define(Webhook::new("untrusted", &untrusted_url, "async", &["blob.push"]).token(PING_SECRET))
        .define(
            Webhook::new("trusted", &trusted_url, "async", &["blob.push"])
                .token(PING_SECRET)
                .ca_bundle(&ca.ca_pem),
        );
    let dir = TempDir::new("durable-ping-tls");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, format!("[global]\n{}", setup.global_tail())).unwrap();

    let (_, error, status) = parse_failure(
        &ping_line(&config, "untrusted", false),
        "untrusted",
        &untrusted_url,
    );
    assert!(
        error.starts_with("TLS: ") && error.contains("UnknownIssuer"),
        "a certificate from an unknown CA is spelled out: {error}"
    );
    assert_eq!(status, "no HTTP answer");

    let line = ping_line(&config, "trusted", true);
    assert!(
        line.starts_with(&format!(
            "webhook \"trusted\": POST {trusted_url} -> HTTP 200 in "
        )),
        "{line}"
    );
    let records = https
        .wait_for(1, SOON)
        .unwrap_or_else(|| panic!("no ping arrived: {}", https.stderr()));
    assert_eq!(records.len(), 1, "only the trusted ping got through");
    assert_eq!(records[0].path, "/trusted");
    assert_eq!(records[0].header("x-registry-event"), Some("ping"));
    assert_eq!(
        records[0].signature_ok,
        Some(true),
        "the seed's verify_signature, run by the receiver, accepts the ping"
    );
}

#[test]
fn the_admin_test_endpoint_pings_one_webhook_and_reports_the_outcome() {
    let targets = PingTargets::new();
    let registry = Registry::start(&targets.setup());
    let ping = |name: &str| -> Json {
        let path = format!("/v2/_angos/webhooks/{name}/test");
        let response = registry.request("POST", &path, &[], b"");
        assert_eq!(response.status, 200, "POST {path}: {}", response.describe());
        let json = response.json();
        assert_eq!(string(&json, "webhook").as_deref(), Some(name), "{json:?}");
        json
    };
    let ok = ping("ok");
    assert_eq!(ok.get("success"), Some(&Json::Bool(true)), "{ok:?}");
    assert_eq!(ok.get("http_status").and_then(Json::as_u64), Some(204), "{ok:?}");
    assert!(number(&ok, "duration_ms").is_some(), "{ok:?}");
    assert!(is_null(&ok, "error"), "{ok:?}");
    let id = string(&ok, "delivery_id").unwrap_or_default();
    assert!(is_hex32(&id), "{ok:?}");
    let pings = targets
        .ok
        .wait_for(1, SOON)
        .expect("the ping reached the receiver");
    check_envelope(&pings[0], "ping", "", "");
    assert_eq!(delivery_header(&pings[0]), id);
    assert_signed(&[(PING_SECRET, &pings[0])]);
    // A ping is no registry event: not queued, not a delivery of the webhook's queue.
    assert_eq!(pending(&registry, "ok"), 0);

    let broken = ping("broken");
    assert_eq!(broken.get("success"), Some(&Json::Bool(false)), "{broken:?}");
    assert_eq!(
        broken.get("http_status").and_then(Json::as_u64),
        Some(503),
        "{broken:?}"
    );
    assert_eq!(
        string(&broken, "error").as_deref(),
        Some("HTTP status 503"),
        "{broken:?}"
    );

    let refused = ping("refused");
    assert_eq!(refused.get("success"), Some(&Json::Bool(false)), "{refused:?}");
    assert!(is_null(&refused, "http_status"), "{refused:?}");
    assert!(
        string(&refused, "error")
            .unwrap_or_default()
            .contains("Connection refused"),
        "{refused:?}"
    );

    // The reactor serves others while a ping waits on a slow endpoint.
    let slow = std::thread::scope(|scope| {
        let waiting = scope.spawn(|| ping("slow"));
        targets
            .hanging
            .wait_for(1, SOON)
            .expect("the slow ping is under way");
        let started = Instant::now();
        registry.get("/v2/").assert_status(200);
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "another client waited {:?} behind a ping",
            started.elapsed()
        );
        waiting.join().unwrap()
    });
    assert_eq!(slow.get("success"), Some(&Json::Bool(false)), "{slow:?}");
    assert_eq!(
        string(&slow, "error").as_deref(),
        Some("timed out after 300 ms"),
        "{slow:?}"
    );

    let nxdomain = ping("nxdomain");
    assert!(
        string(&nxdomain, "error")
            .unwrap_or_default()
            .starts_with("DNS: "),
        "{nxdomain:?}"
    );

    let unknown = registry.request("POST", "/v2/_angos/webhooks/nope/test", &[], b"");
    assert_eq!(unknown.status, 404, "{}", unknown.describe());
    let wrong = registry.get("/v2/_angos/webhooks/ok/test");
    assert_eq!(wrong.status, 405, "{}", wrong.describe());
}

// ---------------------------------------------------------------------------
// 6. Admin endpoints
// ---------------------------------------------------------------------------

const FAST_SECRET: &str = "fast-secret";

#[test]
fn admin_endpoints_report_queues_recent_deliveries_and_errors() {
    let slow = Receiver::start(Reply::Hang);
    let fast = Receiver::ok();
    let flaky = Receiver::start(Reply::status(500));
    let audit = Receiver::ok();
    let setup = Setup::new()
        .hook(Webhook::new("slow", &slow.url("/slow"), "async", &["blob.push"]).timeout_ms(HANG_TIMEOUT_MS))
        .hook(Webhook::new("fast", &fast.url("/fast"), "async", &["blob.push"]).token(FAST_SECRET))
        .hook(Webhook::new(
            "flaky",
            &flaky.url("/flaky"),
            "optional",
            &["blob.push"],
        ))
        .hook(Webhook::new(
            "audit",
            &audit.url("/audit"),
            "required",
            &["manifest.delete"],
        ));
    let registry = Registry::start(&setup);
    let before = registry.get("/v2/_angos/webhooks").json();
    for name in ["slow", "fast", "flaky", "audit"] {
        let status = webhook_status(&registry, name);
        assert!(is_null(&status, "last_success"), "{status:?}");
        assert!(is_null(&status, "last_error"), "{status:?}");
    }
    assert_eq!(
        before.get("webhooks").and_then(Json::as_array).map(Vec::len),
        Some(4),
        "{before:?}"
    );

    let pushed: Vec<String> = (0..3)
        .map(|i| push_blob(&registry, "admin/app", format!("admin blob {i}").as_bytes()))
        .collect();
    let delivered = wait_delivered(&registry, &fast, &["fast"], 3);
    expect_requests(&slow, 1, &registry);
    expect_requests(&flaky, 3, &registry);

    // The list: every webhook with its definition and state.
    let status = webhook_status(&registry, "slow");
    assert_eq!(string(&status, "url"), Some(slow.url("/slow")), "{status:?}");
    assert_eq!(string(&status, "policy").as_deref(), Some("async"), "{status:?}");
    assert_eq!(status.string_list("events"), ["blob.push"], "{status:?}");
    assert_eq!(
        status.get("queue_depth").and_then(Json::as_u64),
        Some(3),
        "{status:?}"
    );
    assert_eq!(
        status.get("dead_letters").and_then(Json::as_u64),
        Some(0),
        "{status:?}"
    );
    let age = poll_until(SOON, || {
        number(&webhook_status(&registry, "slow"), "oldest_pending_age_seconds").filter(|age| *age > 0.0)
    })
    .unwrap_or_else(|| panic!("no positive oldest_pending_age_seconds: {status:?}"));
    let metrics = wait_for_metrics(&registry, SOON, "a positive oldest pending age for slow", |m| {
        metric_sum(m, "event_webhook_oldest_pending_seconds", &[("webhook", "slow")]) > 0.0
    });
    assert_eq!(
        metric_sum(&metrics, "event_webhook_queue_depth", &[("webhook", "slow")]),
        3.0
    );
    assert_eq!(
        metric_sum(&metrics, "event_webhook_queue_depth", &[("webhook", "fast")]),
        0.0
    );
    let later = poll_until(SOON, || {
        number(&webhook_status(&registry, "slow"), "oldest_pending_age_seconds").filter(|later| *later > age)
    });
    assert!(
        later.is_some(),
        "the oldest pending age grows while the event waits"
    );

    let status = webhook_status(&registry, "fast");
    assert_eq!(
        status.get("queue_depth").and_then(Json::as_u64),
        Some(0),
        "{status:?}"
    );
    let age = status.get("oldest_pending_age_seconds");
    assert!(
        matches!(age, Some(Json::Null)) || number(&status, "oldest_pending_age_seconds") == Some(0.0),
        "nothing pending: {status:?}"
    );
    assert!(
        is_rfc3339_utc(&string(&status, "last_success").unwrap_or_default()),
        "{status:?}"
    );
    assert!(is_null(&status, "last_error"), "{status:?}");

    let status = webhook_status(&registry, "flaky");
    assert_eq!(string(&status, "policy").as_deref(), Some("optional"));
    let last_error = status.get("last_error").unwrap_or(&Json::Null);
    assert_eq!(
        string(last_error, "message").as_deref(),
        Some(HTTP_500),
        "{status:?}"
    );
    assert!(
        is_rfc3339_utc(&string(last_error, "time").unwrap_or_default()),
        "{status:?}"
    );
    assert!(is_null(&status, "last_success"), "{status:?}");

    let status = webhook_status(&registry, "audit");
    assert_eq!(string(&status, "policy").as_deref(), Some("required"));
    assert_eq!(status.string_list("events"), ["manifest.delete"]);

    // Deliveries, most recent first, tied to what the receiver saw.
    let listed = deliveries(&registry, "fast");
    assert_eq!(string(&listed, "webhook").as_deref(), Some("fast"));
    assert_eq!(listed.get("pending").and_then(Json::as_u64), Some(0));
    assert_eq!(
        listed.get("dead_letters").and_then(Json::as_array).map(Vec::len),
        Some(0)
    );
    let recent = listed.get("deliveries").and_then(Json::as_array).unwrap().clone();
    assert_eq!(recent.len(), 3, "{listed:?}");
    for (record, request) in recent.iter().zip(delivered.iter().rev()) {
        assert_eq!(string(record, "id"), Some(delivery_header(request)), "{record:?}");
        assert_eq!(string(record, "event_id"), request.field("id"), "{record:?}");
        assert_eq!(string(record, "kind").as_deref(), Some("blob.push"), "{record:?}");
        assert_eq!(string(record, "status").as_deref(), Some("success"), "{record:?}");
        assert_eq!(
            record.get("attempts").and_then(Json::as_u64),
            Some(1),
            "{record:?}"
        );
        assert_eq!(
            record.get("http_status").and_then(Json::as_u64),
            Some(200),
            "{record:?}"
        );
        assert!(
            record.get("duration_ms").and_then(Json::as_u64).is_some(),
            "{record:?}"
        );
        assert!(is_null(record, "error"), "{record:?}");
        assert!(
            is_rfc3339_utc(&string(record, "finished").unwrap_or_default()),
            "{record:?}"
        );
    }
    let digests: Vec<String> = delivered.iter().map(|r| r.field("digest").unwrap()).collect();
    assert_eq!(digests, pushed);

    let listed = deliveries(&registry, "flaky");
    let recent = listed.get("deliveries").and_then(Json::as_array).unwrap();
    assert_eq!(recent.len(), 3, "{listed:?}");
    // Optional deliveries carry X-Registry-Delivery too.
    let flaky_requests = flaky.requests();
    for (record, request) in recent.iter().zip(flaky_requests.iter().rev()) {
        assert_eq!(string(record, "id"), Some(delivery_header(request)), "{record:?}");
        assert_eq!(string(record, "status").as_deref(), Some("failed"), "{record:?}");
        assert_eq!(
            record.get("http_status").and_then(Json::as_u64),
            Some(500),
            "{record:?}"
        );
        assert_eq!(string(record, "error").as_deref(), Some(HTTP_500), "{record:?}");
    }

    let listed = deliveries(&registry, "slow");
    assert_eq!(
        listed.get("pending").and_then(Json::as_u64),
        Some(3),
        "{listed:?}"
    );
    assert_eq!(
        listed.get("deliveries").and_then(Json::as_array).map(Vec::len),
        Some(0)
    );

    // A recent successful delivery can be redelivered too.
    let oldest = &delivered[0];
    redeliver(&registry, "fast", &delivery_header(oldest));
    let again = wait_delivered(&registry, &fast, &["fast"], 4).remove(3);
    assert_eq!(again.body, oldest.body);
    assert_eq!(delivery_header(&again), delivery_header(oldest));
    assert_signed(&[(FAST_SECRET, oldest), (FAST_SECRET, &again)]);

    // Unknown things are 404, wrong methods 405.
    for (method, path, status) in [
        ("GET", "/v2/_angos/webhooks/nope/deliveries", 404),
        ("POST", "/v2/_angos/webhooks/nope/deliveries/abc/redeliver", 404),
        (
            "POST",
            "/v2/_angos/webhooks/fast/deliveries/00000000000000000000000000000000/redeliver",
            404,
        ),
        ("POST", "/v2/_angos/webhooks/nope/test", 404),
        ("GET", "/v2/_angos/nothing-here", 404),
        ("POST", "/v2/_angos/webhooks", 405),
        ("DELETE", "/v2/_angos/webhooks/fast/deliveries", 405),
        ("GET", "/v2/_angos/webhooks/fast/deliveries/abc/redeliver", 405),
        ("PUT", "/v2/_angos/webhooks/fast/test", 405),
    ] {
        let response = registry.request(method, path, &[], b"");
        assert_eq!(
            response.status,
            status,
            "{method} {path}: {}",
            response.describe()
        );
        assert!(
            !response.error_codes().is_empty(),
            "{method} {path}: an error body: {}",
            response.describe()
        );
    }
    registry.get("/v2/").assert_status(200);
}
