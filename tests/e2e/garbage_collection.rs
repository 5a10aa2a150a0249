//! Garbage collection on the real binary (issue 14): a registry emptied by
//! deletions returns to an empty registry's size after a collection; pushes
//! and pulls running during a collection all succeed and verify; a
//! collection killed with SIGKILL loses nothing reachable, and the next one
//! leaves nothing behind; report-only runs remove nothing; unreachable
//! manifests go with a `manifest.delete` event whose actor is internal.
// End-to-end tests time the real binary from outside (clippy.toml).
#![allow(clippy::disallowed_methods)]

use crate::common;

use common::maintenance::{self, json_at, run_job};
use common::*;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Bytes of regular files under `dir` (apparent sizes), skipping `skip`.
fn file_bytes(dir: &Path, skip: &str) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_name() == skip {
                continue;
            }
            let metadata = entry.metadata().unwrap();
            if metadata.is_dir() {
                pending.push(entry.path());
            } else {
                total += metadata.len();
            }
        }
    }
    total
}

fn files_in(dir: &Path) -> usize {
    let mut count = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().unwrap().is_dir() {
                pending.push(entry.path());
            } else {
                count += 1;
            }
        }
    }
    count
}

fn count(json: &Json, path: &[&str]) -> u64 {
    json_at(json, path)
        .as_u64()
        .unwrap_or_else(|| panic!("no count at {path:?} in {json:?}"))
}

/// A collection (`mode`: commit or report-only), waited for; its run.
fn collect(server: &Server, mode: &str) -> Json {
    run_job(server, "gc", &format!("mode={mode}"))
}

/// Makes everything stored so far two hours old: older than the tests'
/// `gc_grace_secs`, without waiting for it.
fn age_store(server: &Server) {
    maintenance::age_store(&server.root, Duration::from_secs(2 * 3600));
}

/// Waits until the file worker has emptied `_trash`.
fn trash_emptied(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while files_in(&server.root.join("_trash")) > 0 {
        assert!(Instant::now() < deadline, "_trash was not emptied");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Pushes `count` small blobs to `repo` and deletes their links, over one
/// kept-alive connection: garbage for a collection to find.
fn small_garbage(server: &Server, repo: &str, count: u64) {
    let mut conn = server.connect();
    for n in 0..count {
        let data = format!("{repo} garbage {n}").into_bytes();
        let blob = digest(&data);
        let path = format!("/v2/{repo}/blobs/uploads/?digest={}", percent_encode(&blob));
        conn.request(
            "POST",
            &path,
            &[("Content-Type", "application/octet-stream")],
            &data,
        )
        .assert_status(201);
        conn.request("DELETE", &format!("/v2/{repo}/blobs/{blob}"), &[], b"")
            .assert_status(202);
    }
}

/// A grace period of an hour: what `age_store` made older goes, what a test
/// pushes afterwards stays.
fn gc_options() -> Options {
    Options::default()
        .global_line("gc_grace_secs = 3600")
        .global_line("gc_interval_secs = 0")
}

#[test]
fn fifty_deleted_images_are_collected_back_to_an_empty_registrys_size() {
    let server = Server::start_with(&gc_options());
    let empty = file_bytes(&server.root, ".lock");
    let mut digests = Vec::new();
    for n in 0..50 {
        let layer = pseudo_random_bytes(2 * n + 1, 1 << 20);
        let config = format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"n\":{n}}}").into_bytes();
        push_blob(&server, "gc/images", &layer);
        push_blob(&server, "gc/images", &config);
        let manifest = ManifestSpec::oci(
            descriptor(OCI_CONFIG, &config),
            vec![descriptor(OCI_LAYER, &layer)],
        )
        .to_json()
        .into_bytes();
        push_manifest(&server, "gc/images", &format!("v{n}"), OCI_MANIFEST, &manifest);
        digests.push(digest(&manifest));
    }
    let full = file_bytes(&server.root, ".lock");
    assert!(full > 50 << 20, "50 MiB of layers stored ({full} bytes)");
    for digest in &digests {
        server
            .delete(&format!("/v2/gc/images/manifests/{digest}"))
            .assert_status(202);
    }
    age_store(&server);
    // Report-only first: it counts what would go and removes nothing.
    let deleted = file_bytes(&server.root, ".lock");
    let report = collect(&server, "report-only");
    assert_eq!(json_at(&report, &["mode"]).as_str(), Some("report-only"));
    assert_eq!(count(&report, &["report", "links_removed"]), 100, "{report:?}");
    assert_eq!(count(&report, &["report", "contents_removed"]), 150, "{report:?}");
    assert_eq!(
        file_bytes(&server.root, ".lock"),
        deleted,
        "a report-only run removed something"
    );
    let report = collect(&server, "commit");
    assert_eq!(count(&report, &["report", "links_removed"]), 100, "{report:?}");
    // The 100 blobs and the 50 manifest bodies.
    assert_eq!(count(&report, &["report", "contents_removed"]), 150, "{report:?}");
    trash_emptied(&server);
    let after = file_bytes(&server.root, ".lock");
    println!("empty registry {empty} bytes, full {full}, after collection {after}");
    assert!(
        after as f64 <= empty as f64 * 1.05,
        "after the collection {after} bytes, an empty registry {empty}"
    );
    let metrics = server.get("/metrics").text();
    assert!(
        metrics.contains("gc_runs_total{trigger=\"demand\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gc_removed_objects_total{kind=\"content\"} 150"),
        "{metrics}"
    );
    assert!(metrics.contains("storage_content_bytes 0"), "{metrics}");
}

#[test]
fn pushes_and_pulls_during_a_collection_all_succeed() {
    let server = Arc::new(Server::start_with(&gc_options()));
    // Garbage to collect: big blobs nothing references (GC_E2E_GARBAGE_MIB,
    // default 256 MiB; the 2 GiB case is in the closing note).
    let garbage_mib: u64 = std::env::var("GC_E2E_GARBAGE_MIB")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(256);
    let blob_mib = 32;
    for n in 0..garbage_mib / blob_mib {
        let blob = pseudo_random_bytes(2 * n + 1001, (blob_mib << 20) as usize);
        let digest = push_blob(&server, "gc/garbage", &blob);
        server
            .delete(&format!("/v2/gc/garbage/blobs/{digest}"))
            .assert_status(202);
    }
    // Small garbage too, so the collection takes many slices.
    small_garbage(&server, "gc/small", 2000);
    age_store(&server);
    let done = Arc::new(AtomicBool::new(false));
    let worker = {
        let server = Arc::clone(&server);
        let done = Arc::clone(&done);
        thread::spawn(move || {
            let mut images = Vec::new();
            let mut n = 0;
            while !done.load(Ordering::SeqCst) || n < 5 {
                let image = push_image(&server, "gc/live", Some(&format!("t{n}")), &format!("live {n}"));
                // The latest few: every pull verifies, and the loop stays
                // a loop of pushes, not of ever more pulls.
                for (tag, earlier) in images.iter().rev().take(3) {
                    let earlier: &Image = earlier;
                    let pulled = server.get(&format!("/v2/gc/live/manifests/{tag}"));
                    pulled.assert_status(200);
                    assert_eq!(pulled.body, earlier.manifest);
                    let layer = server.get(&format!("/v2/gc/live/blobs/{}", digest(&earlier.layers[0])));
                    layer.assert_status(200);
                    assert_eq!(layer.body, earlier.layers[0]);
                }
                images.push((format!("t{n}"), image));
                n += 1;
            }
            images
        })
    };
    let report = collect(&server, "commit");
    done.store(true, Ordering::SeqCst);
    let images = worker
        .join()
        .expect("every push and pull during the collection succeeded");
    assert_eq!(
        count(&report, &["report", "contents_removed"]),
        garbage_mib / blob_mib + 2000,
        "{report:?}"
    );
    // What was pushed during the collection survives it, and the next one.
    collect(&server, "commit");
    for (tag, image) in &images {
        let pulled = server.get(&format!("/v2/gc/live/manifests/{tag}"));
        pulled.assert_status(200);
        assert_eq!(pulled.body, image.manifest);
        for blob in image.layers.iter().chain([&image.config]) {
            let got = server.get(&format!("/v2/gc/live/blobs/{}", digest(blob)));
            got.assert_status(200);
            assert_eq!(&got.body, blob);
        }
    }
    println!("{} images pushed and pulled during the collection", images.len());
}

#[test]
fn a_collection_killed_midway_loses_nothing_and_the_next_one_finishes() {
    let dir = TempDir::new("gc-kill");
    let options = gc_options();
    let mut server = Server::start_in(dir.path(), &options);
    let kept: Vec<Image> = (0..5)
        .map(|n| push_image(&server, "gc/kept", Some(&format!("v{n}")), &format!("kept {n}")))
        .collect();
    let index = index_json(
        OCI_INDEX,
        &kept.iter().map(Image::descriptor).collect::<Vec<_>>(),
        None,
        None,
    );
    push_manifest(&server, "gc/kept", "multi", OCI_INDEX, index.as_bytes());
    // Garbage with links (swept in its namespace), and a lot of content
    // nothing links, written straight into the store: enough that the
    // collection is seen under way and killed then.
    small_garbage(&server, "gc/doomed", 1000);
    for n in 0..40_000u64 {
        let data = format!("orphan content {n}").into_bytes();
        let hex = sha256_hex(&data);
        let dir = server.root.join("blobs/sha256").join(&hex[..2]);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(&hex), &data).unwrap();
    }
    age_store(&server);
    server
        .request("POST", "/v2/_angos/gc", &[], b"")
        .assert_status(202);
    // Kill it once it has removed something, at a random point after that.
    let extra_polls = random_u64() % 4;
    let mut seen_removing = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let status = server.get("/v2/_angos/gc").json();
        if json_at(&status, &["running"]) == &Json::Bool(false) {
            println!("the collection ended before the kill: killed after it instead");
            break;
        }
        if json_at(&status, &["progress", "contents_removed"])
            .as_u64()
            .unwrap_or(0)
            > 0
        {
            if seen_removing == extra_polls {
                println!("killed mid-collection: {status:?}");
                break;
            }
            seen_removing += 1;
        }
    }
    server.kill();
    let server = Server::start_in(dir.path(), &options);
    let check = |server: &Server| {
        for (n, image) in kept.iter().enumerate() {
            let pulled = server.get(&format!("/v2/gc/kept/manifests/v{n}"));
            pulled.assert_status(200);
            assert_eq!(pulled.body, image.manifest);
            for blob in image.layers.iter().chain([&image.config]) {
                let got = server.get(&format!("/v2/gc/kept/blobs/{}", digest(blob)));
                got.assert_status(200);
                assert_eq!(&got.body, blob);
            }
        }
        server.get("/v2/gc/kept/manifests/multi").assert_status(200);
    };
    check(&server);
    collect(&server, "commit");
    check(&server);
    trash_emptied(&server);
    // Left: the five images' two blobs and manifest, and the index.
    assert_eq!(files_in(&server.root.join("blobs")), 5 * 3 + 1);
}

#[test]
fn unreachable_manifests_go_with_an_internal_actor_and_referrers_stay() {
    let receiver = crate::webhook_support::Receiver::ok();
    let options = gc_options()
        .table(&format!(
            "[event_webhook.audit]\nurl = \"{}\"\npolicy = \"required\"\nevents = [\"manifest.delete\"]",
            receiver.url("/events")
        ))
        .global_line("event_webhooks = [\"audit\"]");
    let server = Server::start_with(&options);
    let tagged = push_image(&server, "gc/refs", Some("v1"), "tagged");
    let untagged = push_image(&server, "gc/refs", None, "untagged");
    // A signature of the tagged image: untagged, but its subject is live.
    let config = b"{}".to_vec();
    push_blob(&server, "gc/refs", &config);
    let mut signature = ManifestSpec::oci(descriptor("application/vnd.example.sig", &config), Vec::new());
    signature.subject = Some(tagged.descriptor());
    let signature = signature.to_json().into_bytes();
    let signature_digest = digest(&signature);
    push_manifest(&server, "gc/refs", &signature_digest, OCI_MANIFEST, &signature);
    // Old enough to go: only reachability keeps anything now.
    age_store(&server);

    let report = collect(&server, "commit");
    assert_eq!(count(&report, &["manifests_removed"]), 1, "{report:?}");
    server
        .get(&format!("/v2/gc/refs/manifests/{}", untagged.digest))
        .assert_status(404);
    server.get("/v2/gc/refs/manifests/v1").assert_status(200);
    server
        .get(&format!("/v2/gc/refs/manifests/{signature_digest}"))
        .assert_status(200);
    let events = crate::webhook_support::expect_requests(&receiver, 1, &server);
    let event = events[0].json();
    assert_eq!(json_at(&event, &["kind"]).as_str(), Some("manifest.delete"));
    assert_eq!(
        json_at(&event, &["digest"]).as_str(),
        Some(untagged.digest.as_str())
    );
    assert_eq!(json_at(&event, &["actor", "internal"]).as_str(), Some("gc"));
    // The next collection frees what the removed manifest referenced.
    let report = collect(&server, "commit");
    assert_eq!(count(&report, &["report", "links_removed"]), 2, "{report:?}");
}
