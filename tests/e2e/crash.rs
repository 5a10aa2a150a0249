//! Crash consistency (SPEC section 7: "a crash at any instant leaves either the old
//! state or the new one"): with `sync_to_disk = true`, a thread pushes blobs,
//! manifests and tags in a loop while the test kills the server with SIGKILL at a
//! random moment; after a restart on the same root directory, every push that was
//! answered 201 is readable with the right digest, and anything else is either absent
//! (404) or complete and correct, never partial. Repeated over several rounds on the
//! same data, so later rounds also check that recovery left earlier state intact.
// End-to-end tests time the real binary from outside: wall-clock reads are
// the point here, not a way around the driven clock (clippy.toml).
#![allow(clippy::disallowed_methods)]

use crate::common;

use common::*;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const ROUNDS: usize = 4;
/// Pushes that must be acknowledged in a round before the kill may come.
const MIN_ACKED_BEFORE_KILL: usize = 3;
const REPOS: [&str; 2] = ["crash/alpha", "crash/beta"];

/// One attempted push of a blob and a manifest tagged to it.
#[derive(Clone, Debug)]
struct Push {
    repo: &'static str,
    tag: String,
    blob: Vec<u8>,
    manifest: Vec<u8>,
    blob_acked: bool,
    manifest_acked: bool,
}

#[derive(Default)]
struct Shared {
    pushes: Vec<Push>,
    /// Responses other than the expected ones while the server was up.
    unexpected: Vec<String>,
    /// Config blobs acknowledged per repository.
    configs_acked: Vec<(&'static str, Vec<u8>)>,
}

fn config_of(repo: &str) -> Vec<u8> {
    format!(
        "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"repo\":{}}}",
        json_str(repo)
    )
    .into_bytes()
}

/// Pushes until the connection fails (the server was killed).
fn pusher(addr: std::net::SocketAddr, round: usize, shared: Arc<Mutex<Shared>>) {
    let Ok(mut conn) = Conn::try_open(addr) else {
        return;
    };
    for repo in REPOS {
        let config = config_of(repo);
        let path = format!("/v2/{repo}/blobs/uploads/?digest={}", digest(&config));
        match conn.try_request("POST", &path, &[], &config) {
            Ok(r) if r.status == 201 => shared.lock().unwrap().configs_acked.push((repo, config)),
            Ok(r) => {
                shared
                    .lock()
                    .unwrap()
                    .unexpected
                    .push(format!("config push: {}", r.describe()));
                return;
            }
            Err(_) => return,
        }
    }
    for i in 0.. {
        let repo = REPOS[i % REPOS.len()];
        let seed = (round as u64) << 32 | i as u64;
        // Sizes from 1 KiB to about 257 KiB, so kills land inside body writes too.
        let size = 1024 + (random_u64() % (256 << 10)) as usize;
        let blob = pseudo_random_bytes(seed, size);
        let config = config_of(repo);
        let manifest = ManifestSpec::oci(
            descriptor(OCI_CONFIG, &config),
            vec![descriptor(OCI_LAYER, &blob)],
        )
        .to_json()
        .into_bytes();
        let tag = format!("r{round}-{i}");
        let index = {
            let mut guard = shared.lock().unwrap();
            guard.pushes.push(Push {
                repo,
                tag: tag.clone(),
                blob: blob.clone(),
                manifest: manifest.clone(),
                blob_acked: false,
                manifest_acked: false,
            });
            guard.pushes.len() - 1
        };
        let d = digest(&blob);

        // Alternate between single-POST and POST + chunked PATCH + PUT uploads.
        let blob_response = if i % 2 == 0 {
            let path = format!("/v2/{repo}/blobs/uploads/?digest={d}");
            conn.try_request("POST", &path, &[], &blob)
        } else {
            chunked_upload(&mut conn, repo, &blob, &d)
        };
        match blob_response {
            Ok(r) if r.status == 201 => shared.lock().unwrap().pushes[index].blob_acked = true,
            Ok(r) => {
                shared
                    .lock()
                    .unwrap()
                    .unexpected
                    .push(format!("blob push {tag}: {}", r.describe()));
                return;
            }
            Err(_) => return,
        }

        let path = format!("/v2/{repo}/manifests/{tag}");
        match conn.try_request("PUT", &path, &[("Content-Type", OCI_MANIFEST)], &manifest) {
            Ok(r) if r.status == 201 => shared.lock().unwrap().pushes[index].manifest_acked = true,
            Ok(r) => {
                shared
                    .lock()
                    .unwrap()
                    .unexpected
                    .push(format!("manifest push {tag}: {}", r.describe()));
                return;
            }
            Err(_) => return,
        }
    }
}

fn chunked_upload(conn: &mut Conn, repo: &str, blob: &[u8], d: &str) -> std::io::Result<Response> {
    let start = conn.try_request(
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        &[("Content-Length", "0")],
        b"",
    )?;
    if start.status != 202 {
        return Ok(start);
    }
    let mut location = url_path(start.header("location").unwrap_or_default());
    let half = blob.len() / 2;
    for (from, to) in [(0, half), (half, blob.len())] {
        let range = format!("{from}-{}", to - 1);
        let response = conn.try_request("PATCH", &location, &[("Content-Range", &range)], &blob[from..to])?;
        if response.status != 202 {
            return Ok(response);
        }
        location = url_path(response.header("location").unwrap_or_default());
    }
    conn.try_request("PUT", &with_query(&location, "digest", d), &[], b"")
}

/// Checks every recorded push against a freshly started server.
fn verify(server: &Server, shared: &Shared) {
    for (repo, config) in &shared.configs_acked {
        let r = server.request("GET", &format!("/v2/{repo}/blobs/{}", digest(config)), &[], b"");
        assert_eq!(
            r.status,
            200,
            "acknowledged config of {repo} lost: {}",
            r.describe()
        );
        assert_eq!(&r.body, config);
    }
    for push in &shared.pushes {
        let what = format!("{}:{}", push.repo, push.tag);
        let d = digest(&push.blob);
        let r = server.request("GET", &format!("/v2/{}/blobs/{d}", push.repo), &[], b"");
        if push.blob_acked {
            assert_eq!(
                r.status,
                200,
                "acknowledged blob of {what} lost: {}",
                r.describe()
            );
        }
        match r.status {
            200 => assert!(
                r.body == push.blob,
                "blob of {what} is readable but wrong ({} bytes, expected {}): partial write visible",
                r.body.len(),
                push.blob.len()
            ),
            404 => {}
            _ => panic!("blob of {what}: unexpected {}", r.describe()),
        }

        let md = digest(&push.manifest);
        for reference in [push.tag.as_str(), md.as_str()] {
            let r = server.request(
                "GET",
                &format!("/v2/{}/manifests/{reference}", push.repo),
                &[("Accept", OCI_MANIFEST)],
                b"",
            );
            if push.manifest_acked {
                assert_eq!(
                    r.status,
                    200,
                    "acknowledged manifest {what} lost (by {reference}): {}",
                    r.describe()
                );
            }
            match r.status {
                200 => assert!(
                    r.body == push.manifest,
                    "manifest {what} (by {reference}) readable but wrong: {:?}",
                    r.text()
                ),
                404 => {}
                _ => panic!("manifest {what}: unexpected {}", r.describe()),
            }
        }
    }
    // Every listed tag resolves to a complete manifest that was pushed under it.
    for repo in REPOS {
        let r = server.request("GET", &format!("/v2/{repo}/tags/list"), &[], b"");
        if r.status == 404 {
            continue;
        }
        r.assert_status(200);
        for tag in r.json().string_list("tags") {
            let push = shared
                .pushes
                .iter()
                .find(|p| p.repo == repo && p.tag == tag)
                .unwrap_or_else(|| panic!("tag {repo}:{tag} was never pushed"));
            let m = server.request("GET", &format!("/v2/{repo}/manifests/{tag}"), &[], b"");
            m.assert_status(200);
            assert!(
                m.body == push.manifest,
                "tag {repo}:{tag} points at wrong content"
            );
        }
    }
}

#[test]
fn kill_9_during_pushes_loses_nothing_acknowledged_and_shows_nothing_partial() {
    let dir = TempDir::new("crash");
    let options = Options::default().sync();
    let shared = Arc::new(Mutex::new(Shared::default()));
    let mut total_acked = 0;

    for round in 0..ROUNDS {
        let mut server = Server::start_in(dir.path(), &options);
        verify(&server, &shared.lock().unwrap());

        let before = shared.lock().unwrap().pushes.len();
        let worker = {
            let shared = Arc::clone(&shared);
            let addr = server.addr;
            thread::spawn(move || pusher(addr, round, shared))
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let acked = shared.lock().unwrap().pushes[before..]
                .iter()
                .filter(|p| p.manifest_acked)
                .count();
            if acked >= MIN_ACKED_BEFORE_KILL {
                break;
            }
            if worker.is_finished() || Instant::now() > deadline {
                let unexpected = shared.lock().unwrap().unexpected.clone();
                panic!(
                    "round {round}: the pusher stopped before {MIN_ACKED_BEFORE_KILL} pushes \
                     were acknowledged; unexpected responses: {unexpected:?}; server output:\n{}",
                    server.logs().join("\n")
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
        // A random moment in the middle of the push stream.
        thread::sleep(Duration::from_millis(random_u64() % 400));
        server.assert_alive();
        server.kill();
        worker.join().unwrap();

        let guard = shared.lock().unwrap();
        assert!(
            guard.unexpected.is_empty(),
            "unexpected responses while the server was up: {:?}",
            guard.unexpected
        );
        total_acked = guard.pushes.iter().filter(|p| p.manifest_acked).count();
        let in_flight = guard.pushes.last().map(|p| !p.manifest_acked).unwrap_or(false);
        eprintln!(
            "round {round}: {} pushes attempted, {total_acked} acknowledged so far, last one in flight: {in_flight}",
            guard.pushes.len()
        );
    }

    let server = Server::start_in(dir.path(), &options);
    let guard = shared.lock().unwrap();
    verify(&server, &guard);
    assert!(total_acked >= ROUNDS * MIN_ACKED_BEFORE_KILL);

    // Interrupted uploads are cleaned up at start-up (issue 2). Without assuming a
    // layout: every file of more than metadata size under the root directory must be a
    // complete copy of some content that was pushed (a blob committed just before a
    // kill but never linked is invisible garbage, yet complete); a partial body or an
    // abandoned session's data is a leftover.
    let mut known: Vec<&[u8]> = guard.configs_acked.iter().map(|(_, c)| c.as_slice()).collect();
    for push in &guard.pushes {
        known.push(&push.blob);
        known.push(&push.manifest);
    }
    let mut files = Vec::new();
    list_files(&server.root, &mut files);
    let mut leftovers = Vec::new();
    for (path, len) in files {
        // The event journal's reserve (README, "Full disk"): space held back on purpose.
        if len <= METADATA_BYTES_MAX || path.ends_with("_journal/reserve") {
            continue;
        }
        let content = std::fs::read(&path).unwrap_or_default();
        if !known
            .iter()
            .any(|k| k.len() == content.len() && *k == content.as_slice())
        {
            leftovers.push(format!("{} ({len} bytes)", path.display()));
        }
    }
    assert!(
        leftovers.is_empty(),
        "after restarts, files that are not complete pushed content remain (leftovers of \
         interrupted uploads not cleaned up at start-up): {leftovers:#?}"
    );
}

/// Files at most this large are taken for metadata (links, tags, small indexes);
/// every pushed blob is larger.
const METADATA_BYTES_MAX: u64 = 1024;

/// Every regular file under `dir` with its size.
fn list_files(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, u64)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            list_files(&entry.path(), out);
        } else if meta.is_file() {
            out.push((entry.path(), meta.len()));
        }
    }
}
