//! Scrub on the real binary (issue 14): a byte flipped in a stored blob and
//! in a stored manifest is found, the file moved to `_quarantine`, reported
//! (admin API, log, metrics); the blob and the manifest then read as
//! unknown, and pushing them again restores them.
// End-to-end tests time the real binary from outside (clippy.toml).
#![allow(clippy::disallowed_methods)]

use crate::common;

use common::*;

fn content_path(server: &Server, digest: &str) -> std::path::PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    server.root.join("blobs/sha256").join(&hex[..2]).join(hex)
}

fn flip_a_byte(path: &std::path::Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x01;
    // In place, as bit rot would: same file, same name.
    let mut file = std::fs::File::options().write(true).open(path).unwrap();
    std::io::Write::write_all(&mut file, &bytes).unwrap();
}

fn scrub(server: &Server) -> Json {
    common::maintenance::run_job(server, "scrub", "")
}

#[test]
fn flipped_bytes_are_quarantined_then_unknown_until_pushed_again() {
    let server = Server::start_with(&Options::default().global_line("scrub_bytes_per_sec = \"64MiB\""));
    let repo = "scrub/app";
    let layer = pseudo_random_bytes(77, 3 << 20);
    let config = b"{\"architecture\":\"amd64\",\"os\":\"linux\"}".to_vec();
    let layer_digest = push_blob(&server, repo, &layer);
    push_blob(&server, repo, &config);
    let manifest = ManifestSpec::oci(
        descriptor(OCI_CONFIG, &config),
        vec![descriptor(OCI_LAYER, &layer)],
    )
    .to_json()
    .into_bytes();
    let manifest_digest = push_manifest(&server, repo, "v1", OCI_MANIFEST, &manifest);
    // Served once, so the manifest sits in the registry's memory cache too.
    server.get(&format!("/v2/{repo}/manifests/v1")).assert_status(200);

    flip_a_byte(&content_path(&server, &layer_digest), 2 << 20);
    flip_a_byte(&content_path(&server, &manifest_digest), 10);

    let run = scrub(&server);
    let report = run.get("report").expect("a report");
    assert_eq!(report.get("files").and_then(Json::as_u64), Some(3), "{run:?}");
    assert_eq!(report.get("corrupt").and_then(Json::as_u64), Some(2), "{run:?}");
    let mut quarantined: Vec<String> = report
        .get("quarantined")
        .and_then(Json::as_array)
        .unwrap()
        .iter()
        .map(|entry| entry.get("digest").and_then(Json::as_str).unwrap().to_string())
        .collect();
    quarantined.sort();
    let mut expected = vec![layer_digest.clone(), manifest_digest.clone()];
    expected.sort();
    assert_eq!(quarantined, expected);
    assert!(
        server
            .root
            .join("_quarantine")
            .join(layer_digest.replace(':', "-"))
            .exists()
    );
    let logged = server.logs().join("\n");
    assert!(
        logged.contains(&format!("content {layer_digest} is corrupt")),
        "{logged}"
    );
    let metrics = server.get("/metrics").text();
    assert!(metrics.contains("scrub_quarantined_total 2"), "{metrics}");

    // Unknown now: never served bad bytes.
    server
        .get(&format!("/v2/{repo}/blobs/{layer_digest}"))
        .assert_error(404, "BLOB_UNKNOWN");
    server
        .get(&format!("/v2/{repo}/manifests/v1"))
        .assert_error(404, "MANIFEST_UNKNOWN");
    server
        .get(&format!("/v2/{repo}/blobs/{}", digest(&config)))
        .assert_status(200);

    // A client pushes them again; they verify.
    push_blob(&server, repo, &layer);
    push_manifest(&server, repo, "v1", OCI_MANIFEST, &manifest);
    let pulled = server.get(&format!("/v2/{repo}/blobs/{layer_digest}"));
    pulled.assert_status(200);
    assert_eq!(pulled.body, layer);
    let pulled = server.get(&format!("/v2/{repo}/manifests/v1"));
    pulled.assert_status(200);
    assert_eq!(pulled.body, manifest);
    // And the next scrub finds everything sound.
    let run = scrub(&server);
    let report = run.get("report").unwrap();
    assert_eq!(report.get("corrupt").and_then(Json::as_u64), Some(0), "{run:?}");
}
