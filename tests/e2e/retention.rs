//! Retention on the real binary (issue 14): upstream Angos's retention
//! how-to examples, loaded verbatim, keep and remove what its text says; the
//! dry run (admin API and `angos prune --dry-run`) lists exactly what the
//! real run then removes; every removal is an event with
//! `actor.internal = "prune"`; index children and signatures are protected;
//! a required webhook can keep a tag.
// End-to-end tests time the real binary from outside (clippy.toml).
#![allow(clippy::disallowed_methods)]

use crate::common;
use crate::webhook_support::{Receiver, Reply, expect_requests};

use common::*;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// "Combined Rules", verbatim, with the `[global]` lines it needs.
const COMBINED_RULES: &str = r#"[global]
update_pull_time = true

[global.retention_policy]
rules = [
  # Always keep latest
  'image.tag == "latest"',

  # Keep release tags forever
  'image.tag != null && image.tag.matches("^v[0-9]+\\.[0-9]+\\.[0-9]+$")',

  # Keep other tags for 30 days
  'image.tag != null && image.pushed_at > now() - days(30)',

  # Keep untagged for 7 days
  'image.pushed_at > now() - days(7)',

  # Keep top 10 most pulled
  'top_pulled(10)'
]
"#;

/// "Global + Repository Policies", verbatim.
const GLOBAL_AND_REPOSITORY: &str = r#"# Global baseline: keep everything for at least 7 days
[global.retention_policy]
rules = [
  'image.pushed_at > now() - days(7)'
]

# Repo-specific: extend for production
[repository."production".retention_policy]
rules = [
  'image.pushed_at > now() - days(365)'
]
"#;

fn days_ago(days: u64) -> SystemTime {
    SystemTime::now() - Duration::from_secs(days * 24 * 3600)
}

fn set_modified(path: &Path, when: SystemTime) {
    let file = std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    file.set_modified(when).unwrap();
}

/// Makes `repo`'s manifest `digest` (and each of `tags`) pushed `days` ago.
fn age(server: &Server, repo: &str, digest: &str, tags: &[&str], days: u64) {
    let manifests = server.root.join("repositories").join(repo).join("_manifests");
    let hex = digest.strip_prefix("sha256:").unwrap();
    set_modified(&manifests.join("revisions/sha256").join(hex), days_ago(days));
    for tag in tags {
        set_modified(&manifests.join("tags").join(tag), days_ago(days));
    }
}

fn pushed(server: &Server, repo: &str, tag: Option<&str>, seed: &str, days: u64) -> Image {
    let image = push_image(server, repo, tag, seed);
    age(server, repo, &image.digest, tag.as_slice(), days);
    image
}

/// A retention run (`mode`: commit or dry-run), waited for with its removals.
fn prune(server: &Server, mode: &str) -> Json {
    common::maintenance::run_job(server, "prune", &format!("mode={mode}"))
}

fn listed(report: &Json) -> Vec<String> {
    let mut lines = report.string_list("listed");
    lines.sort();
    lines
}

/// A HEAD, which (unlike a GET) is not a pull: it must not change what
/// `top_pulled` keeps.
fn status_of(server: &Server, repo: &str, reference: &str) -> u16 {
    server.head(&format!("/v2/{repo}/manifests/{reference}")).status
}

#[test]
fn the_combined_rules_example_keeps_and_removes_what_its_text_says() {
    let dir = TempDir::new("retention");
    let path = dir.path().join("retention.toml");
    std::fs::write(&path, COMBINED_RULES).unwrap();
    let receiver = Receiver::ok();
    let options = Options::default()
        .config_file(&path)
        .global_line("prune_interval_secs = 0")
        .table(&format!(
            "[event_webhook.audit]\nurl = \"{}\"\npolicy = \"async\"\nevents = [\"tag.delete\", \"manifest.delete\"]",
            receiver.url("/events")
        ))
        .global_line("event_webhooks = [\"audit\"]");
    let server = Server::start_with(&options);
    let repo = "team/app";
    let latest = pushed(&server, repo, Some("latest"), "latest", 100);
    let release = pushed(&server, repo, Some("v1.2.3"), "release", 100);
    let stale = pushed(&server, repo, Some("feature-x"), "stale feature", 40);
    let recent = pushed(&server, repo, Some("feature-y"), "recent feature", 20);
    let fresh_untagged = pushed(&server, repo, None, "fresh untagged", 3);
    let old_untagged = pushed(&server, repo, None, "old untagged", 10);
    let popular = pushed(&server, repo, Some("popular"), "popular", 40);
    // A pull keeps `popular`: `top_pulled(10)`.
    server
        .get(&format!("/v2/{repo}/manifests/popular"))
        .assert_status(200);
    // A signature of `latest` (untagged, old): protected with its image.
    let config = b"{}".to_vec();
    push_blob(&server, repo, &config);
    let mut signature = ManifestSpec::oci(descriptor("application/vnd.example.sig", &config), Vec::new());
    signature.subject = Some(latest.descriptor());
    let signature = signature.to_json().into_bytes();
    let signature_digest = push_manifest(&server, repo, &digest(&signature), OCI_MANIFEST, &signature);
    age(&server, repo, &signature_digest, &[], 100);
    // An old index: its tag and itself go, its child (an old untagged
    // manifest) is protected while the index exists.
    let child = pushed(&server, repo, None, "index child", 100);
    let index = index_json(OCI_INDEX, &[child.descriptor()], None, None);
    let index_digest = push_manifest(&server, repo, "multi", OCI_INDEX, index.as_bytes());
    age(&server, repo, &index_digest, &["multi"], 100);

    let expected = {
        let mut lines = vec![
            format!("{repo}:feature-x ({})", stale.digest),
            format!("{repo}@{}", stale.digest),
            format!("{repo}@{}", old_untagged.digest),
            format!("{repo}:multi ({index_digest})"),
            format!("{repo}@{index_digest}"),
        ];
        lines.sort();
        lines
    };
    let dry = prune(&server, "dry-run");
    assert_eq!(listed(&dry), expected, "{dry:?} {:?}", server.logs());
    assert_eq!(
        status_of(&server, repo, "feature-x"),
        200,
        "a dry run removes nothing"
    );

    // The command's dry run asks this server and lists the same.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_angos"))
        .arg("-c")
        .arg(dir_config(&server))
        .arg("-c")
        .arg(&path)
        .args(["scrub", "--retention", "--dry-run"])
        .output()
        .expect("run angos");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut printed: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    printed.sort();
    assert_eq!(printed, expected);

    let real = prune(&server, "commit");
    assert_eq!(
        listed(&real),
        expected,
        "the real run removes what the dry run listed"
    );
    assert_eq!(
        real.get("removals_made").and_then(Json::as_u64),
        Some(5),
        "{real:?}"
    );
    for (reference, status) in [
        ("latest".to_string(), 200),
        ("v1.2.3".to_string(), 200),
        ("feature-y".to_string(), 200),
        ("popular".to_string(), 200),
        ("feature-x".to_string(), 404),
        ("multi".to_string(), 404),
        (stale.digest.clone(), 404),
        (old_untagged.digest.clone(), 404),
        (fresh_untagged.digest.clone(), 200),
        (signature_digest.clone(), 200),
        (child.digest.clone(), 200),
        (release.digest.clone(), 200),
        (recent.digest.clone(), 200),
        (popular.digest.clone(), 200),
    ] {
        assert_eq!(status_of(&server, repo, &reference), status, "{repo}:{reference}");
    }
    let events = expect_requests(&receiver, 5, &server);
    for event in &events {
        let json = event.json();
        let internal = json.get("actor").and_then(|actor| actor.get("internal"));
        assert_eq!(internal.and_then(Json::as_str), Some("prune"), "{}", event.text());
    }
    let mut kinds: Vec<String> = events.iter().map(|event| event.kind()).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "manifest.delete",
            "manifest.delete",
            "manifest.delete",
            "tag.delete",
            "tag.delete"
        ]
    );
}

/// The generated configuration of `server` (its directory's config.toml).
fn dir_config(server: &Server) -> std::path::PathBuf {
    server.root.parent().unwrap().join("config.toml")
}

#[test]
fn the_global_and_repository_example_keeps_production_longer() {
    let dir = TempDir::new("retention-repo");
    let path = dir.path().join("retention.toml");
    std::fs::write(&path, GLOBAL_AND_REPOSITORY).unwrap();
    let server = Server::start_with(&Options::default().config_file(&path));
    let production = pushed(&server, "production/api", Some("v1"), "production", 30);
    let dev = pushed(&server, "dev/api", Some("v1"), "dev", 30);
    let dev_recent = pushed(&server, "dev/api", Some("v2"), "dev recent", 2);
    let report = prune(&server, "commit");
    assert_eq!(
        listed(&report),
        vec![
            format!("dev/api:v1 ({})", dev.digest),
            format!("dev/api@{}", dev.digest)
        ]
    );
    assert_eq!(status_of(&server, "production/api", "v1"), 200);
    assert_eq!(status_of(&server, "production/api", &production.digest), 200);
    assert_eq!(status_of(&server, "dev/api", "v1"), 404);
    assert_eq!(status_of(&server, "dev/api", "v2"), 200);
    assert_eq!(status_of(&server, "dev/api", &dev_recent.digest), 200);
}

#[test]
fn a_required_webhook_keeps_what_it_refuses() {
    let dir = TempDir::new("retention-veto");
    let path = dir.path().join("retention.toml");
    std::fs::write(&path, GLOBAL_AND_REPOSITORY).unwrap();
    let receiver = Receiver::start(Reply::status(500));
    let options = Options::default()
        .config_file(&path)
        .table(&format!(
            "[event_webhook.audit]\nurl = \"{}\"\npolicy = \"required\"\nmax_retries = 0\nevents = [\"tag.delete\", \"manifest.delete\"]",
            receiver.url("/events")
        ))
        .global_line("event_webhooks = [\"audit\"]");
    let server = Server::start_with(&options);
    pushed(&server, "dev/api", Some("v1"), "vetoed", 30);
    let report = prune(&server, "commit");
    assert_eq!(
        report.get("removals_made").and_then(Json::as_u64),
        Some(0),
        "{report:?}"
    );
    assert_eq!(
        report.get("removals_refused").and_then(Json::as_u64),
        Some(2),
        "{report:?}"
    );
    assert_eq!(
        status_of(&server, "dev/api", "v1"),
        200,
        "the audit webhook kept the tag"
    );
}

#[test]
fn rules_reading_pull_times_need_update_pull_time() {
    let server =
        Server::start_with(&Options::default().table("[global.retention_policy]\nrules = ['top_pulled(5)']"));
    let refused = server.request("POST", "/v2/_angos/prune", &[], b"");
    refused.assert_status(409);
    assert!(refused.text().contains("update_pull_time"), "{}", refused.text());
}
