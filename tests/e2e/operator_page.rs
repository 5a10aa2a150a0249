//! The operator page's server side on the real binary (issue 17): the page and its
//! headers, the tag details it reads, the admin API's storage view and delivery
//! requests as sent, the refusal of cross-origin writes, and refusals without a
//! challenge for the page. The page itself runs in Chromium in `tests/ui/`.
//!
//! Run: `cargo test --test e2e operator_page::`.
// End-to-end tests time the real binary from outside: wall-clock reads are
// the point here, not a way around the driven clock (clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::time::Duration;

use crate::common;
use crate::webhook_support;
use common::maintenance::json_at;
use common::upstreams::basic_auth;
use common::*;
use webhook_support::poll_until;

fn with_page() -> Options {
    Options::default().table("[ui]\nenabled = true\nname = \"Edge <registry>\"\n")
}

#[test]
fn the_page_is_off_by_default_and_served_with_a_strict_policy_when_on() {
    let off = Server::start();
    off.get("/ui/").assert_status(404);
    off.get("/").assert_status(404);

    let server = Server::start_with(&with_page());
    let root = server.get("/");
    root.assert_status(308);
    assert_eq!(root.header("location"), Some("/ui/"));
    for (path, kind) in [
        ("/ui/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let response = server.get(path);
        response.assert_status(200);
        assert!(
            response.header("content-type").unwrap().starts_with(kind),
            "{path}"
        );
        let policy = response.header("content-security-policy").unwrap();
        assert!(policy.contains("default-src 'none'") && policy.contains("script-src 'self'"));
        assert!(policy.contains("frame-ancestors 'none'"));
        assert_eq!(response.header("x-frame-options"), Some("DENY"));
    }
    // The name is JSON, read by the script as text.
    let config = server.get("/ui/config.json").json();
    assert_eq!(json_at(&config, &["name"]).as_str(), Some("Edge <registry>"));
    server
        .request("POST", "/ui/", &[("Content-Length", "0")], b"")
        .assert_status(405);
    // The registry is unchanged beside it.
    server.get("/v2/").assert_status(200);
}

#[test]
fn tag_details_give_digest_type_size_push_time_and_platforms_a_page_at_a_time() {
    let server = Server::start_with(&with_page());
    let image = push_image(&server, "team/app", Some("v1"), "details");
    let other = push_image(&server, "team/app", None, "arm");
    let index = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{OCI_INDEX}\",\"manifests\":[{},{}]}}",
        descriptor_with(
            OCI_MANIFEST,
            &image.manifest,
            r#""platform":{"os":"linux","architecture":"amd64"}"#
        ),
        descriptor_with(
            OCI_MANIFEST,
            &other.manifest,
            r#""platform":{"os":"linux","architecture":"arm64","variant":"v8"}"#
        ),
    );
    push_manifest(&server, "team/app", "multi", OCI_INDEX, index.as_bytes());

    let first = server.get("/v2/team/app/_angos/tags?n=1");
    first.assert_status(200);
    let link = first.header("link").expect("a Link to the next page").to_string();
    assert!(link.contains("/v2/team/app/_angos/tags?n=1&last=multi"), "{link}");
    let json = first.json();
    let tags = json_at(&json, &["tags"]).as_array().unwrap();
    assert_eq!(tags.len(), 1);
    let multi = &tags[0];
    assert_eq!(json_at(multi, &["tag"]).as_str(), Some("multi"));
    assert_eq!(
        json_at(multi, &["digest"]).as_str(),
        Some(digest(index.as_bytes()).as_str())
    );
    assert_eq!(json_at(multi, &["mediaType"]).as_str(), Some(OCI_INDEX));
    assert_eq!(json_at(multi, &["size"]).as_u64(), Some(index.len() as u64));
    let platforms: Vec<&str> = json_at(multi, &["platforms"])
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Json::as_str)
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64/v8"]);
    let pushed = json_at(multi, &["pushed"]).as_str().expect("a push time");
    assert!(pushed.starts_with("20") && pushed.ends_with('Z'), "{pushed}");

    let rest = server.get("/v2/team/app/_angos/tags?n=1&last=multi").json();
    let v1 = &json_at(&rest, &["tags"]).as_array().unwrap()[0];
    assert_eq!(json_at(v1, &["tag"]).as_str(), Some("v1"));
    assert_eq!(json_at(v1, &["digest"]).as_str(), Some(image.digest.as_str()));
    assert_eq!(json_at(v1, &["platforms"]).as_array().map(Vec::len), Some(0));

    server
        .get("/v2/nothing/here/_angos/tags")
        .assert_error(404, "NAME_UNKNOWN");
}

#[test]
fn tag_details_and_the_storage_view_need_the_rights_their_data_needs() {
    let options = with_page()
        .table(&identity_table("admin", "admin", "admin-pass"))
        .table(&identity_table("dev", "dev", "dev-pass"))
        .table("[auth]\nadministrators = [\"admin\"]\n")
        .table("[repository.\"secret\"]\npull = [\"admin\"]\n");
    let server = Server::start_with(&options);
    let admin = basic_auth("admin", "admin-pass");
    let dev = basic_auth("dev", "dev-pass");
    server
        .request("GET", "/v2/", &[("Authorization", &admin)], b"")
        .assert_status(200);
    push_image_as(&server, &admin, "secret/app", "v1");
    let anonymous = server.get("/v2/secret/app/_angos/tags");
    anonymous.assert_status(401);
    assert!(
        anonymous.header("www-authenticate").is_some(),
        "clients get the challenge"
    );
    // The page asks for credentials itself: no challenge, so no browser login box.
    let from_page = server.request("GET", "/v2/secret/app/_angos/tags", &[("X-Angos-Page", "1")], b"");
    from_page.assert_status(401);
    assert_eq!(from_page.header("www-authenticate"), None);
    server
        .request(
            "GET",
            "/v2/secret/app/_angos/tags",
            &[("Authorization", &dev)],
            b"",
        )
        .assert_status(403);
    server
        .request(
            "GET",
            "/v2/secret/app/_angos/tags",
            &[("Authorization", &admin)],
            b"",
        )
        .assert_status(200);
    server
        .request("GET", "/v2/_angos/storage", &[("Authorization", &dev)], b"")
        .assert_status(403);
    let storage = server
        .request("GET", "/v2/_angos/storage", &[("Authorization", &admin)], b"")
        .json();
    assert!(json_at(&storage, &["disk", "free_bytes"]).as_u64().is_some());
    assert!(json_at(&storage, &["gc", "running"]).as_bool().is_some());
    assert!(
        json_at(&storage, &["upstreams", "upstreams"])
            .as_array()
            .is_some()
    );
}

#[test]
fn cross_origin_writes_are_refused_and_clients_and_the_page_are_not() {
    let server = Server::start_with(&with_page());
    let host = format!("127.0.0.1:{}", server.addr.port());
    let own = format!("http://{host}");
    let post_gc = |headers: &[(&str, &str)]| {
        let mut all = vec![("Content-Length", "0"), ("Host", host.as_str())];
        all.extend_from_slice(headers);
        server.request("POST", "/v2/_angos/gc?mode=report-only", &all, b"")
    };
    for refused in [
        vec![("Origin", "http://evil.example")],
        vec![("Origin", "null")],
        vec![("Sec-Fetch-Site", "cross-site")],
        vec![("Sec-Fetch-Site", "same-site"), ("Origin", own.as_str())],
    ] {
        let response = post_gc(&refused);
        response.assert_error(403, "DENIED");
        assert!(
            response.text().contains("cross-origin"),
            "{}",
            response.describe()
        );
    }
    let upload = server.request(
        "POST",
        "/v2/team/app/blobs/uploads/",
        &[("Content-Length", "0"), ("Origin", "http://evil.example")],
        b"",
    );
    upload.assert_error(403, "DENIED");
    // A client (no Origin) and the page (its own origin, same-origin fetch) are served.
    post_gc(&[]).assert_status(202);
    let status = poll_until(Duration::from_secs(10), || {
        let gc = server.get("/v2/_angos/gc").json();
        (json_at(&gc, &["running"]).as_bool() == Some(false)).then_some(())
    });
    assert!(status.is_some());
    post_gc(&[("Origin", own.as_str()), ("Sec-Fetch-Site", "same-origin")]).assert_status(202);
    // Reading from anywhere is fine (the browser keeps the answer from other sites).
    server
        .request("GET", "/v2/", &[("Origin", "http://evil.example")], b"")
        .assert_status(200);
}

#[test]
fn deliveries_show_the_request_as_sent_with_secrets_elided() {
    let receiver = webhook_support::Receiver::ok();
    let options = Options::default()
        .table(&format!(
            "[event_webhook.audit]\nurl = {}\npolicy = \"async\"\nevents = [\"manifest.push\"]\n\
             token = \"audit-token\"\nsigning_secrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n\
             headers = {{ \"X-Team\" = \"platform\", \"X-Api-Key\" = \"k-123\" }}\n",
            json_str(&receiver.url("/events"))
        ))
        .global_line("event_webhooks = [\"audit\"]");
    let server = Server::start_with(&options);
    push_image(&server, "team/app", Some("v1"), "sent");
    let got =
        poll_until(Duration::from_secs(10), || receiver.requests().into_iter().next()).expect("the delivery");
    let id = poll_until(Duration::from_secs(10), || {
        let json = server.get("/v2/_angos/webhooks/audit/deliveries").json();
        let first = json_at(&json, &["deliveries"]).as_array()?.first()?.clone();
        assert!(first.get("request").is_none(), "the list stays small");
        json_at(&first, &["id"]).as_str().map(str::to_string)
    })
    .expect("a recorded delivery");
    let shown = server
        .get(&format!("/v2/_angos/webhooks/audit/deliveries/{id}"))
        .json();
    let request = json_at(&shown, &["request"]);
    assert_eq!(
        json_at(request, &["line"]).as_str(),
        Some("POST /events HTTP/1.1")
    );
    assert_eq!(
        json_at(request, &["body"]).as_str().map(str::as_bytes),
        Some(got.body.as_slice()),
        "the body as the receiver got it"
    );
    let headers: Vec<(String, String)> = json_at(request, &["headers"])
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| {
            let pair = pair.as_array().unwrap();
            (
                pair[0].as_str().unwrap().to_string(),
                pair[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let value = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    for secret in [
        "Authorization",
        "X-Registry-Signature-256",
        "webhook-signature",
        "X-Api-Key",
    ] {
        assert_eq!(value(secret), Some("(elided)"), "{secret}: {headers:?}");
    }
    assert_eq!(value("X-Team"), Some("platform"));
    assert_eq!(value("webhook-id"), got.header("webhook-id"));
    assert_eq!(value("X-Registry-Event"), Some("manifest.push"));
    let page = server
        .get(&format!("/v2/_angos/webhooks/audit/deliveries/{id}"))
        .text();
    assert!(!page.contains("audit-token") && !page.contains("k-123"), "{page}");
    let list = server.get("/v2/_angos/webhooks").json();
    let audit = &json_at(&list, &["webhooks"]).as_array().unwrap()[0];
    assert_eq!(json_at(audit, &["succeeded"]).as_u64(), Some(1));
    assert_eq!(json_at(audit, &["failed"]).as_u64(), Some(0));
    server
        .get("/v2/_angos/webhooks/audit/deliveries/nothing")
        .assert_status(404);
}

#[test]
fn a_page_path_colliding_with_the_api_is_a_configuration_error() {
    for (path, words) in [
        ("/v2/ui/", "must not be"),
        ("/metrics/", "must not be"),
        ("ui", "absolute path"),
        ("/a b/", "absolute path"),
    ] {
        let dir = TempDir::new("ui-path");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!("[ui]\nenabled = true\npath = {}\n", json_str(path)),
        )
        .unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_angos"))
            .args(["-c", config.to_str().unwrap(), "server"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{path}: {stderr}");
        assert!(
            stderr.contains("ui.path") && stderr.contains(words),
            "{path}: {stderr}"
        );
    }
}

/// Pushes a one-layer image as `authorization` and tags it.
fn push_image_as(server: &Server, authorization: &str, repo: &str, tag: &str) {
    let auth = [("Authorization", authorization)];
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    for blob in [&config[..], b"layer"] {
        server
            .request(
                "POST",
                &format!("/v2/{repo}/blobs/uploads/?digest={}", digest(blob)),
                &[auth[0], ("Content-Type", "application/octet-stream")],
                blob,
            )
            .assert_status(201);
    }
    let manifest = ManifestSpec::oci(
        descriptor(OCI_CONFIG, config),
        vec![descriptor(OCI_LAYER, b"layer")],
    )
    .to_json();
    server
        .request(
            "PUT",
            &format!("/v2/{repo}/manifests/{tag}"),
            &[auth[0], ("Content-Type", OCI_MANIFEST)],
            manifest.as_bytes(),
        )
        .assert_status(201);
}
