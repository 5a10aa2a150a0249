//! A full disk, end to end (issue 14, item 5): the real binary on a small tmpfs. Pushes go on
//! until `min_free_space` refuses them with `507 Insufficient Storage`, a `DENIED` OCI error
//! and a message saying the store is full; nothing of a refused push is visible; pulls and
//! deletes go on, also once something else has filled the disk to the last byte (the event
//! journal then lives on its reserve); every async event the registry acknowledged reaches the
//! receiver; and once space is freed by a deletion plus a collection (on the disk still full),
//! pushes are accepted again by the same process. Without
//! the guard, a write that meets the full disk (an upload's body, a manifest's commit) is
//! answered 507 too, never `500 UNKNOWN`, and leaves nothing behind.
//!
//! Mounting a tmpfs needs root (and `CAP_SYS_ADMIN`): without them the tests say why and pass.
// End-to-end tests time the real binary from outside: wall-clock reads are
// the point here, not a way around the driven clock (clippy.toml).
#![allow(clippy::disallowed_methods)]

use crate::common;
use crate::webhook_support;

use common::*;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use webhook_support::*;

const REPO: &str = "full";
/// Layers of 768 KiB: a refused body is drained by the server's lingering close (1 MiB), so
/// the client reads the answer instead of a reset.
const LAYER_BYTES: usize = 768 << 10;
const MIN_FREE: u64 = 4 << 20;
/// How long every acknowledged event may take to arrive.
const DELIVERY_WAIT: Duration = Duration::from_secs(20);
/// How long a line the server logged may take to reach the test's reader thread.
const LOG_WAIT: Duration = Duration::from_secs(5);

/// A tmpfs of `size_mib` mounted on a fresh directory, unmounted on drop (a failing test too).
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    /// `None`, having said why, when this process may not mount.
    fn mount(label: &str, size_mib: u32) -> Option<Tmpfs> {
        let uid = Command::new("id").arg("-u").output().ok()?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            eprintln!("skipped: mounting a tmpfs for the full-disk test needs root");
            return None;
        }
        let dir = TempDir::new(label);
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .ok()?;
        if !mounted.status.success() {
            eprintln!(
                "skipped: cannot mount a tmpfs ({}): {}",
                mounted.status,
                String::from_utf8_lossy(&mounted.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(self.dir.path()).status();
        if !unmounted.is_ok_and(|status| status.success()) {
            // Still busy (a child not yet reaped): detach it now, gone once released.
            let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
        }
    }
}

/// Writes `bytes` of other data to `path` (the disk's other tenant).
fn write_filler(path: &Path, bytes: usize) {
    std::fs::write(path, vec![0x5a; bytes]).expect("write the filler");
}

/// Fills the disk to its last byte from this process; returns how much was written.
fn fill_disk(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).expect("create the hog");
    let chunk = vec![0xa5u8; 64 << 10];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(error) if error.raw_os_error() == Some(28) => break, // ENOSPC
            Err(error) => panic!("filling the disk: {error}"),
        }
    }
    written
}

/// Bytes and their digest, hashed once: the tests' SHA-256 is an unoptimized build's, about
/// 100 ms per MiB.
#[derive(Clone)]
struct Content {
    bytes: Vec<u8>,
    digest: String,
}

impl Content {
    fn new(bytes: Vec<u8>) -> Content {
        let digest = digest(&bytes);
        Content { bytes, digest }
    }

    /// Distinct bytes per `n` (`pseudo_random_bytes` sets the seed's low bit: seeds 2k and
    /// 2k+1 give the same bytes).
    fn random(base: u64, n: u64, len: usize) -> Content {
        Content::new(pseudo_random_bytes(base + 2 * n, len))
    }

    fn descriptor(&self, media_type: &str) -> String {
        format!(
            "{{\"mediaType\":{},\"digest\":{},\"size\":{}}}",
            json_str(media_type),
            json_str(&self.digest),
            self.bytes.len()
        )
    }

    fn manifest_over(config: &Content, layer: &Content) -> Content {
        let body =
            ManifestSpec::oci(config.descriptor(OCI_CONFIG), vec![layer.descriptor(OCI_LAYER)]).to_json();
        Content::new(body.into_bytes())
    }
}

/// A monolithic upload of `blob`.
fn post(server: &Server, repo: &str, blob: &Content) -> Response {
    let path = format!(
        "/v2/{repo}/blobs/uploads/?digest={}",
        percent_encode(&blob.digest)
    );
    server.request("POST", &path, &[], &blob.bytes)
}

/// The refusal's message, after checking its status and OCI code.
#[track_caller]
fn refusal_message(response: &Response) -> String {
    response.assert_error(507, "DENIED");
    assert_eq!(response.reason, "Insufficient Storage", "{}", response.describe());
    let json = response.json();
    let errors = json.get("errors").and_then(Json::as_array).expect("errors");
    errors[0]
        .get("message")
        .and_then(Json::as_str)
        .expect("a message")
        .to_string()
}

/// The events the registry acknowledged, and the content it stored.
#[derive(Default)]
struct Ledger {
    /// (kind, digest, tag) per acknowledged async event.
    events: Vec<(String, String, String)>,
    /// Bytes of each distinct content file (blob or manifest) by digest.
    content: BTreeMap<String, u64>,
}

impl Ledger {
    fn event(&mut self, kind: &str, digest: &str, tag: &str) {
        self.events
            .push((kind.to_string(), digest.to_string(), tag.to_string()));
    }

    fn blob(&mut self, blob: &Content) {
        self.event("blob.push", &blob.digest, "");
        self.content.insert(blob.digest.clone(), blob.bytes.len() as u64);
    }

    fn manifest(&mut self, manifest: &Content, tag: &str) {
        self.event("manifest.push", &manifest.digest, tag);
        self.event("tag.create", &manifest.digest, tag);
        self.content
            .insert(manifest.digest.clone(), manifest.bytes.len() as u64);
    }
}

/// A sample's value from `/metrics`.
fn metric(server: &Server, name: &str) -> Option<f64> {
    parse_metrics(&scrape(server))
        .into_iter()
        .find(|sample| sample.name == name)
        .map(|sample| sample.value)
}

fn leftovers(root: &Path, dir: &str) -> Vec<PathBuf> {
    std::fs::read_dir(root.join(dir))
        .map(|entries| entries.map(|entry| entry.unwrap().path()).collect())
        .unwrap_or_default()
}

/// One pushed image: its tag, manifest and layer (the config is shared).
struct Image {
    tag: String,
    manifest: Content,
    layer: Content,
}

/// Pulls every image, comparing the bytes; each pull is an acknowledged event.
fn pull_all(server: &Server, ledger: &mut Ledger, images: &[Image]) {
    for image in images {
        let response = server.get(&format!("/v2/{REPO}/manifests/{}", image.tag));
        response.assert_status(200);
        assert!(response.body == image.manifest.bytes, "manifest {}", image.tag);
        ledger.event("manifest.pull", &image.manifest.digest, &image.tag);
        let response = server.get(&format!("/v2/{REPO}/blobs/{}", image.layer.digest));
        response.assert_status(200);
        assert!(response.body == image.layer.bytes, "layer of {}", image.tag);
        ledger.event("blob.pull", &image.layer.digest, "");
    }
}

#[test]
fn pushes_stop_at_min_free_space_with_507_reads_and_events_go_on_and_pushes_resume_when_space_is_back() {
    let Some(disk) = Tmpfs::mount("full-disk", 32) else {
        return;
    };
    let receiver = Receiver::ok();
    let events = [
        "blob.push",
        "blob.pull",
        "manifest.push",
        "manifest.pull",
        "tag.create",
        "tag.delete",
    ];
    // A collection runs only when asked, and takes what `age_store` made older than an hour.
    let setup = Setup::new()
        .global_line("gc_grace_secs = 3600")
        .global_line("gc_interval_secs = 0")
        .hook(Webhook::new("audit", &receiver.url("/events"), "async", &events));
    let options = setup
        .options()
        .storage_line(&format!("min_free_space = {MIN_FREE}"));
    // Another tenant of the disk, removed at the end to free space.
    let filler = disk.path().join("filler");
    write_filler(&filler, 4 << 20);
    let mut server = Server::start_in(disk.path(), &options);
    let mut ledger = Ledger::default();

    // Push images until the guard refuses one; each acknowledged push is in the ledger.
    let config = Content::new(br#"{"architecture":"amd64","os":"linux"}"#.to_vec());
    post(&server, REPO, &config).assert_status(201);
    ledger.blob(&config);
    let mut images: Vec<Image> = Vec::new();
    let refused_layer = loop {
        let n = images.len() as u64;
        assert!(n < 64, "a 32 MiB disk never filled:\n{}", log_dump(&server));
        let layer = Content::random(1000, n, LAYER_BYTES);
        let response = post(&server, REPO, &layer);
        if response.status == 507 {
            // "too full for this upload" while the store is above the minimum, else "full".
            let message = refusal_message(&response);
            assert!(
                message.starts_with("the registry's storage is")
                    && message.contains("full")
                    && message.contains("min_free_space")
                    && message.contains("4.0 MiB")
                    && message.ends_with("pushes resume when space is freed"),
                "{message}"
            );
            break layer;
        }
        response.assert_status(201);
        ledger.blob(&layer);
        let tag = format!("v{n}");
        let manifest = Content::manifest_over(&config, &layer);
        put_manifest(&server, REPO, &tag, OCI_MANIFEST, &manifest.bytes).assert_status(201);
        ledger.manifest(&manifest, &tag);
        images.push(Image { tag, manifest, layer });
    };
    assert!(images.len() >= 10, "only {} images fit", images.len());

    // Another tenant takes the disk below the minimum: now the store itself is full.
    let free = metric(&server, "storage_free_bytes").expect("storage_free_bytes") as u64;
    let crowd = disk.path().join("crowd");
    write_filler(&crowd, free.saturating_sub(MIN_FREE) as usize + (64 << 10));
    let full_message = refusal_message(&post(&server, REPO, &refused_layer));
    assert!(
        full_message.starts_with("the registry's storage is full: ")
            && full_message.ends_with(" free, min_free_space is 4.0 MiB; pushes resume when space is freed"),
        "{full_message}"
    );
    // Every kind of push is refused now, before anything is written.
    let refused_manifest = Content::manifest_over(&config, &refused_layer);
    refusal_message(&put_manifest(
        &server,
        REPO,
        "refused",
        OCI_MANIFEST,
        &refused_manifest.bytes,
    ));
    refusal_message(&server.request("POST", &format!("/v2/{REPO}/blobs/uploads/"), &[], b""));
    let mount = format!("/v2/other/blobs/uploads/?mount={}&from={REPO}", config.digest);
    refusal_message(&server.request("POST", &mount, &[], b""));

    // Nothing of a refused push is visible, and no half-written file is left.
    server
        .head(&format!("/v2/{REPO}/blobs/{}", refused_layer.digest))
        .assert_status(404);
    server
        .head(&format!("/v2/{REPO}/manifests/refused"))
        .assert_status(404);
    server
        .head(&format!("/v2/other/blobs/{}", config.digest))
        .assert_status(404);
    let catalog = server.get("/v2/_catalog");
    catalog.assert_status(200);
    assert_eq!(catalog.json().string_list("repositories"), [REPO]);
    let mut tags: Vec<String> = images.iter().map(|image| image.tag.clone()).collect();
    tags.sort();
    let listed = server.get(&format!("/v2/{REPO}/tags/list"));
    assert_eq!(listed.json().string_list("tags"), tags);
    assert_eq!(leftovers(&server.root, "_uploads"), Vec::<PathBuf>::new());
    assert_eq!(leftovers(&server.root, "_tmp"), Vec::<PathBuf>::new());

    // Reads go on: every image pulls, byte for byte.
    pull_all(&server, &mut ledger, &images);

    // Something else takes the disk to its last byte: the journal's reserve keeps events
    // recorded, so pulls and deletes are still answered with their events kept.
    let hog = disk.path().join("hog");
    assert!(fill_disk(&hog) > 0, "the disk had some room above the minimum");
    pull_all(&server, &mut ledger, &images);
    pull_all(&server, &mut ledger, &images);
    let deleted = images.remove(0);
    server
        .delete(&format!("/v2/{REPO}/manifests/{}", deleted.tag))
        .assert_status(202);
    ledger.event("tag.delete", &deleted.manifest.digest, &deleted.tag);
    let released = |line: &str| line.contains("the journal's reserve (1.0 MiB) was released");
    // The log is read by another thread: wait for the line rather than race it.
    wait_for_log(
        &server,
        LOG_WAIT,
        "'the journal's reserve ... was released'",
        released,
    );
    assert_eq!(
        count_logs(&server, released),
        1,
        "the journal took its reserve once:\n{}",
        log_dump(&server)
    );
    refusal_message(&post(&server, REPO, &refused_layer));

    // Every event the registry acknowledged arrives, each once.
    let delivered = receiver
        .wait_for(ledger.events.len(), DELIVERY_WAIT)
        .unwrap_or_else(|| {
            panic!(
                "{} of {} acknowledged events arrived:\n{}",
                receiver.count(),
                ledger.events.len(),
                log_dump(&server)
            )
        });
    let mut arrived: Vec<(String, String, String)> = delivered
        .iter()
        .map(|request| {
            (
                request.kind(),
                request.field("digest").unwrap_or_default(),
                request.field("tag").unwrap_or_default(),
            )
        })
        .collect();
    arrived.sort();
    let mut expected = ledger.events.clone();
    expected.sort();
    assert_eq!(arrived, expected, "every acknowledged event, and nothing else");

    // Space comes back by a deletion plus a collection, on the disk still full to its last
    // byte: eight images' manifests and layer links go, then the collector removes their
    // content, and the same process takes pushes again.
    let mut freed = vec![deleted];
    freed.extend(images.drain(..7));
    for image in &freed {
        server
            .delete(&format!("/v2/{REPO}/manifests/{}", image.manifest.digest))
            .assert_status(202);
        server
            .delete(&format!("/v2/{REPO}/blobs/{}", image.layer.digest))
            .assert_status(202);
        ledger.content.remove(&image.manifest.digest);
        ledger.content.remove(&image.layer.digest);
    }
    let refused = refusal_message(&post(&server, REPO, &refused_layer));
    assert!(
        refused.starts_with("the registry's storage is full: "),
        "deleting alone frees nothing: {refused}"
    );
    common::maintenance::age_store(&server.root, Duration::from_secs(2 * 3600));
    let report = common::maintenance::run_job(&server, "gc", "");
    assert_eq!(
        report
            .get("report")
            .and_then(|report| report.get("contents_removed"))
            .and_then(Json::as_u64),
        Some(2 * freed.len() as u64),
        "{report:?}"
    );
    poll_until(SOON, || {
        leftovers(&server.root, "_trash").is_empty().then_some(())
    })
    .expect("the collected content is removed off the loop");
    post(&server, REPO, &refused_layer).assert_status(201);
    ledger.blob(&refused_layer);
    put_manifest(&server, REPO, "after", OCI_MANIFEST, &refused_manifest.bytes).assert_status(201);
    ledger.manifest(&refused_manifest, "after");
    server.assert_alive();
    wait_for_log(&server, LOG_WAIT, "'storage has room again'", |line| {
        line.contains("storage has room again: pushes are accepted")
    });
    receiver
        .wait_for(ledger.events.len(), DELIVERY_WAIT)
        .expect("the events of the pushes after");
    pull_all(&server, &mut ledger, &images);

    // The metrics: the disk as it is, the minimum, and the content to the byte (as the
    // collection measured it, plus the pushes since).
    let free = metric(&server, "storage_free_bytes").expect("storage_free_bytes");
    assert!(free > 0.0 && free < (32u64 << 20) as f64, "{free}");
    assert_eq!(metric(&server, "storage_size_bytes"), Some((32u64 << 20) as f64));
    assert_eq!(metric(&server, "storage_min_free_bytes"), Some(MIN_FREE as f64));
    let content: u64 = ledger.content.values().sum();
    assert_eq!(metric(&server, "storage_content_bytes"), Some(content as f64));
    assert_eq!(
        metric(&server, "storage_reclaimable_bytes"),
        Some(0.0),
        "everything unreferenced was old enough to go"
    );
    drop(server);
}

#[test]
fn without_the_guard_a_write_that_meets_the_full_disk_is_507_and_leaves_nothing() {
    let Some(disk) = Tmpfs::mount("full-disk-off", 8) else {
        return;
    };
    let server = Server::start_in(
        disk.path(),
        &Options::default().storage_line("min_free_space = 0"),
    );
    let mut pushed: Vec<Content> = Vec::new();
    let failed = loop {
        assert!(pushed.len() < 32, "an 8 MiB disk never filled");
        let blob = Content::random(9000, pushed.len() as u64, 512 << 10);
        let response = post(&server, REPO, &blob);
        if response.status != 201 {
            assert_eq!(
                refusal_message(&response),
                "the registry's storage is full (no space left on its disk); pushes resume when space is freed"
            );
            break blob;
        }
        pushed.push(blob);
    };
    let head = server.head(&format!("/v2/{REPO}/blobs/{}", failed.digest));
    assert_eq!(head.status, 404, "{}\n{}", head.describe(), log_dump(&server));
    assert_eq!(leftovers(&server.root, "_uploads"), Vec::<PathBuf>::new());
    assert_eq!(leftovers(&server.root, "_tmp"), Vec::<PathBuf>::new());
    for blob in &pushed {
        let response = server.get(&format!("/v2/{REPO}/blobs/{}", blob.digest));
        response.assert_status(200);
        assert!(response.body == blob.bytes);
    }
    // A manifest commit that meets the full disk: 507, and no torn manifest or tag. The failed
    // upload's bytes go to _trash and are removed off the loop: once they are, nothing frees
    // space behind the test's back, and the disk is filled to its last byte.
    poll_until(SOON, || {
        leftovers(&server.root, "_trash").is_empty().then_some(())
    })
    .expect("the failed upload's bytes are removed");
    fill_disk(&disk.path().join("hog"));
    let manifest = Content::manifest_over(&pushed[0], &pushed[1]);
    let response = put_manifest(&server, REPO, "torn", OCI_MANIFEST, &manifest.bytes);
    assert_eq!(
        refusal_message(&response),
        "the registry's storage is full (no space left on its disk); pushes resume when space is freed"
    );
    server
        .head(&format!("/v2/{REPO}/manifests/torn"))
        .assert_status(404);
    server
        .head(&format!("/v2/{REPO}/manifests/{}", manifest.digest))
        .assert_status(404);
    assert_eq!(leftovers(&server.root, "_tmp"), Vec::<PathBuf>::new());
    assert!(
        server.logs().iter().any(|line| line.contains("storage full: ")),
        "the cause is logged"
    );
    drop(server);
}
