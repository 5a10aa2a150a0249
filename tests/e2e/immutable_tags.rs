//! End-to-end tests of immutable tags on the real binary, with the examples of
//! upstream Angos's doc/how-to/protect-tags-immutability.md loaded verbatim: a push
//! that would move an immutable tag is `409 CONFLICT` with upstream's message, the
//! same digest again and new tags pass, exclusions (the leading-lookahead one
//! included) and a repository's `immutable_tags = false` let tags move, and a
//! configuration reload applies without a restart.
// End-to-end tests time the real binary from outside: wall-clock reads are
// the point here, not a way around the driven clock (clippy.toml).
#![allow(clippy::disallowed_methods)]

use crate::common;
use crate::webhook_support::observe::{count_logs, is_reloaded, wait_for_new_log};
use crate::webhook_support::{self, RELOAD_WAIT, Receiver, Reply, Setup, Webhook, expect_requests};

use common::*;
use std::thread;

/// "Repository-Specific Settings", verbatim.
const REPOSITORY_SPECIFIC: &str = r#"
# Global default
[global]
immutable_tags = true
immutable_tags_exclusions = ["^latest$"]

# Development: all tags mutable
[repository."dev"]
immutable_tags = false

# Production: stricter exclusions
[repository."production"]
immutable_tags = true
immutable_tags_exclusions = ["^latest$"]

# Staging: allow more mutable tags
[repository."staging"]
immutable_tags = true
immutable_tags_exclusions = [
  "^latest$",
  "^staging-.*$",
  "^rc-.*$"
]
"#;

/// "Protect Release Tags Only", verbatim (lines of `[global]`).
const RELEASE_TAGS_ONLY: &str = r#"immutable_tags = true
immutable_tags_exclusions = [
  "^(?!v[0-9]+\\.[0-9]+\\.[0-9]+$).*$"  # Everything except vX.Y.Z
]"#;

/// A server whose configuration adds `text` as a file of its own, after the generated one.
fn server_with_file(dir: &TempDir, text: &str) -> Server {
    let path = dir.path().join("immutability.toml");
    std::fs::write(&path, text).expect("write the configuration");
    Server::start_with(&Options::default().config_file(&path))
}

/// Pushes a fresh image by digest (no tag), for a later PUT under a tag.
fn image(server: &Server, repo: &str, seed: &str) -> Image {
    push_image(server, repo, None, seed)
}

fn put(server: &Server, repo: &str, reference: &str, image: &Image) -> Response {
    put_manifest(server, repo, reference, OCI_MANIFEST, &image.manifest)
}

/// The tag's digest as the registry serves it.
fn tagged(server: &Server, repo: &str, tag: &str) -> String {
    let response = server.head(&format!("/v2/{repo}/manifests/{tag}"));
    response.assert_status(200);
    response.expect_header("docker-content-digest").to_string()
}

/// Asserts upstream's refusal: 409, code `CONFLICT`, its message, the tag as detail.
#[track_caller]
fn assert_immutable(response: &Response, tag: &str) {
    response.assert_error(409, "CONFLICT");
    let json = response.json();
    let error = &json.get("errors").and_then(Json::as_array).expect("errors")[0];
    assert_eq!(
        error.get("message").and_then(Json::as_str),
        Some(format!("Tag '{tag}' is immutable and cannot be overwritten").as_str()),
        "{}",
        response.describe()
    );
    assert_eq!(
        error
            .get("detail")
            .and_then(|detail| detail.get("tag"))
            .and_then(Json::as_str),
        Some(tag)
    );
    assert_eq!(response.header("content-type"), Some("application/json"));
}

#[test]
fn the_how_to_verification_steps() {
    // "Verification": the first push succeeds, a second with other content fails,
    // excluded tags can be overwritten again and again.
    let dir = TempDir::new("immutable-verification");
    let server = server_with_file(&dir, REPOSITORY_SPECIFIC);
    let alpine = image(&server, "test/image", "alpine");
    let busybox = image(&server, "test/image", "busybox");
    put(&server, "test/image", "v1.0", &alpine).assert_status(201);
    assert_immutable(&put(&server, "test/image", "v1.0", &busybox), "v1.0");
    assert_eq!(
        tagged(&server, "test/image", "v1.0"),
        alpine.digest,
        "the tag did not move"
    );
    put(&server, "test/image", "v1.0", &alpine).assert_status(201);
    for pushed in [&alpine, &busybox, &alpine] {
        put(&server, "test/image", "latest", pushed).assert_status(201);
        assert_eq!(tagged(&server, "test/image", "latest"), pushed.digest);
    }
}

#[test]
fn repository_settings_override_the_global_ones() {
    let dir = TempDir::new("immutable-repositories");
    let server = server_with_file(&dir, REPOSITORY_SPECIFIC);
    let cases = [
        // (namespace, tag, may move)
        ("dev", "v1.0", true),
        ("dev/team/app", "v1.0", true),
        ("devx", "v1.0", false),
        ("production", "v1.0", false),
        ("production/api", "latest", true),
        ("staging", "staging-7", true),
        ("staging", "rc-1", true),
        ("staging", "v1.0", false),
        ("other", "latest", true),
    ];
    for (namespace, tag, may_move) in cases {
        let first = image(&server, namespace, &format!("{namespace}-{tag}-first"));
        let second = image(&server, namespace, &format!("{namespace}-{tag}-second"));
        put(&server, namespace, tag, &first).assert_status(201);
        let moved = put(&server, namespace, tag, &second);
        if may_move {
            moved.assert_status(201);
            assert_eq!(
                tagged(&server, namespace, tag),
                second.digest,
                "{namespace}:{tag}"
            );
        } else {
            assert_immutable(&moved, tag);
            assert_eq!(tagged(&server, namespace, tag), first.digest, "{namespace}:{tag}");
        }
    }
}

#[test]
fn by_digest_pushes_with_tag_parameters_are_checked_too() {
    let dir = TempDir::new("immutable-by-digest");
    let server = server_with_file(&dir, REPOSITORY_SPECIFIC);
    let first = image(&server, "app", "first");
    let second = image(&server, "app", "second");
    put(&server, "app", "v1", &first).assert_status(201);
    let both = format!("{}?tag=v2&tag=v1", second.digest);
    assert_immutable(&put(&server, "app", &both, &second), "v1");
    server.head("/v2/app/manifests/v2").assert_status(404);
    let new_tag = format!("{}?tag=v2", second.digest);
    let response = put(&server, "app", &new_tag, &second);
    response.assert_status(201);
    assert_eq!(response.header("oci-tag"), Some("v2"));
    // The same digest under an immutable tag, by digest: no move, accepted.
    let again = format!("{}?tag=v1", first.digest);
    put(&server, "app", &again, &first).assert_status(201);
}

#[test]
fn deleting_an_immutable_tag_is_allowed() {
    // Upstream's documents guard overwrites only; a delete then a push is a new tag.
    let dir = TempDir::new("immutable-delete");
    let server = server_with_file(&dir, REPOSITORY_SPECIFIC);
    let first = image(&server, "app", "first");
    let second = image(&server, "app", "second");
    put(&server, "app", "v1", &first).assert_status(201);
    server.delete("/v2/app/manifests/v1").assert_status(202);
    put(&server, "app", "v1", &second).assert_status(201);
    assert_eq!(tagged(&server, "app", "v1"), second.digest);
}

#[test]
fn the_release_tags_only_lookahead_exclusion() {
    let server = Server::start_with(&Options::default().global_line(RELEASE_TAGS_ONLY));
    for (tag, may_move) in [
        ("v1.2.3", false),
        ("latest", true),
        ("v1.2", true),
        ("1.2.3", true),
        ("v1.2.3-rc1", true),
    ] {
        let first = image(&server, "app", &format!("{tag}-first"));
        let second = image(&server, "app", &format!("{tag}-second"));
        put(&server, "app", tag, &first).assert_status(201);
        let moved = put(&server, "app", tag, &second);
        if may_move {
            moved.assert_status(201);
        } else {
            assert_immutable(&moved, tag);
        }
    }
}

#[test]
fn a_reload_turns_immutability_on_without_a_restart() {
    let dir = TempDir::new("immutable-reload");
    let server = server_with_file(&dir, "[global]\nimmutable_tags = false\n");
    let first = image(&server, "app", "first");
    let second = image(&server, "app", "second");
    put(&server, "app", "v1", &first).assert_status(201);
    put(&server, "app", "v1", &second).assert_status(201);
    let reloads = count_logs(&server, is_reloaded);
    std::fs::write(dir.path().join("immutability.toml"), REPOSITORY_SPECIFIC).expect("rewrite");
    wait_for_new_log(
        &server,
        reloads,
        RELOAD_WAIT,
        "'configuration reloaded'",
        is_reloaded,
    );
    assert_immutable(&put(&server, "app", "v1", &first), "v1");
    assert_eq!(tagged(&server, "app", "v1"), second.digest);
}

#[test]
fn a_tag_set_while_a_push_waits_on_a_required_webhook_is_not_moved_by_it() {
    // The gate holds pushes by tag `v1`; a by-digest push with `?tag=v1` carries
    // no tag in its manifest.push event, so it passes ungated and sets the tag
    // while the first push waits. When the gate then says yes, the first push
    // would move an immutable tag: it is refused at commit time.
    let receiver = Receiver::start(Reply::Held);
    let setup = Setup::new()
        .hook(
            Webhook::new("gate", &receiver.url("/gate"), "required", &["manifest.push"])
                .line("tag_filter = [\"^v1$\"]"),
        )
        .global_line("immutable_tags = true");
    let registry = webhook_support::Registry::start(&setup);
    let server = &registry.server;
    let waiting = image(server, "race", "waiting");
    let sneaking = image(server, "race", "sneaking");
    let response = thread::scope(|scope| {
        let push = scope.spawn(|| put(server, "race", "v1", &waiting));
        expect_requests(&receiver, 1, server);
        put(server, "race", &format!("{}?tag=v1", sneaking.digest), &sneaking).assert_status(201);
        assert_eq!(
            receiver.replied_count(),
            0,
            "the gate answered before the other push"
        );
        receiver.release();
        push.join().unwrap()
    });
    assert_immutable(&response, "v1");
    assert_eq!(tagged(server, "race", "v1"), sneaking.digest);
}

#[test]
fn a_bad_exclusion_stops_the_start_naming_file_and_key() {
    let dir = TempDir::new("immutable-bad");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[global]\nimmutable_tags_exclusions = [\"^latest$\", \"(?<=v)1\"]\n",
    )
    .expect("write the configuration");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_angos"))
        .arg("-c")
        .arg(&path)
        .arg("server")
        .output()
        .expect("run angos");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.toml: global.immutable_tags_exclusions[1]: \"(?<=v)1\": lookbehind (?<=...)"),
        "{stderr}"
    );
}
