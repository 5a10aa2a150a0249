//! End-to-end tests of the OCI Distribution v1.1 manifest side over real sockets:
//! manifest PUT/GET/HEAD/DELETE by tag and digest, content negotiation for OCI and
//! Docker media types, the manifest error codes and size limit, tag listing and
//! `_catalog` with `n`/`last` pagination and `Link`, and the referrers API with
//! `artifactType` filtering. Blob flows live in `registry_api.rs`.
// End-to-end tests time the real binary from outside: wall-clock reads are
// the point here, not a way around the driven clock (clippy.toml).
#![allow(clippy::disallowed_methods)]

use crate::common;

use common::*;

fn manifest_path(repo: &str, reference: &str) -> String {
    format!("/v2/{repo}/manifests/{reference}")
}

// ---------------------------------------------------------------------------
// Manifest push and pull
// ---------------------------------------------------------------------------

#[test]
fn manifest_put_returns_201_location_and_digest() {
    let server = Server::start();
    let config = b"{\"architecture\":\"amd64\",\"os\":\"linux\"}".to_vec();
    let layer = b"layer".to_vec();
    push_blob(&server, "app", &config);
    push_blob(&server, "app", &layer);
    let manifest = ManifestSpec::oci(
        descriptor(OCI_CONFIG, &config),
        vec![descriptor(OCI_LAYER, &layer)],
    )
    .to_json()
    .into_bytes();
    let d = digest(&manifest);

    let response = put_manifest(&server, "app", "v1", OCI_MANIFEST, &manifest);
    response.assert_status(201);
    assert_eq!(
        response.header("docker-content-digest"),
        Some(d.as_str()),
        "Docker-Content-Digest MUST be the uploaded manifest's digest"
    );
    let location = url_path(response.expect_header("location"));
    let pulled = server.get(&location);
    pulled.assert_status(200);
    assert_eq!(pulled.body, manifest, "Location must be a pullable manifest URL");
}

#[test]
fn manifest_get_and_head_by_tag_and_digest() {
    let server = Server::start();
    let image = push_image(&server, "library/app", Some("latest"), "get-head");
    for reference in ["latest", image.digest.as_str()] {
        let path = manifest_path("library/app", reference);
        let response = server.request("GET", &path, &[("Accept", OCI_MANIFEST)], b"");
        response.assert_status(200);
        assert_eq!(response.body, image.manifest);
        assert_eq!(response.header("content-type"), Some(OCI_MANIFEST));
        assert_eq!(
            response.header("docker-content-digest"),
            Some(image.digest.as_str())
        );

        let head = server.request("HEAD", &path, &[("Accept", OCI_MANIFEST)], b"");
        head.assert_status(200);
        assert!(head.body.is_empty());
        assert_eq!(
            head.header("content-length"),
            Some(image.manifest.len().to_string().as_str())
        );
        assert_eq!(head.header("docker-content-digest"), Some(image.digest.as_str()));
        assert_eq!(head.header("content-type"), Some(OCI_MANIFEST));
    }
}

#[test]
fn manifest_is_stored_byte_for_byte() {
    // "The registry MUST store the manifest exactly as provided."
    let server = Server::start();
    let config = b"{}".to_vec();
    push_blob(&server, "exact", &config);
    let manifest = format!(
        "{{\n  \"schemaVersion\" : 2,\n\t\"mediaType\": \"{OCI_MANIFEST}\",\n  \"config\": {},\n  \"layers\": [ ],\n  \"annotations\": {{ \"b\": \"2\", \"a\": \"\\u00e9\" }}\n}}\n",
        descriptor(OCI_EMPTY, &config)
    )
    .into_bytes();
    let d = push_manifest(&server, "exact", "odd-format", OCI_MANIFEST, &manifest);
    let by_tag = server.get(&manifest_path("exact", "odd-format"));
    by_tag.assert_status(200);
    assert_eq!(by_tag.body, manifest);
    let by_digest = server.get(&manifest_path("exact", &d));
    by_digest.assert_status(200);
    assert_eq!(by_digest.body, manifest);
}

#[test]
fn manifest_put_by_digest() {
    let server = Server::start();
    let image = push_image(&server, "by-digest", None, "digest-only");
    let response = server.get(&manifest_path("by-digest", &image.digest));
    response.assert_status(200);
    assert_eq!(response.body, image.manifest);
}

#[test]
fn manifest_put_by_mismatching_digest_is_digest_invalid() {
    let server = Server::start();
    let config = b"{}".to_vec();
    push_blob(&server, "wrong-digest", &config);
    let manifest = ManifestSpec::oci(descriptor(OCI_EMPTY, &config), vec![])
        .to_json()
        .into_bytes();
    let wrong = digest(b"not the manifest");
    put_manifest(&server, "wrong-digest", &wrong, OCI_MANIFEST, &manifest)
        .assert_error(400, "DIGEST_INVALID");
    server
        .get(&manifest_path("wrong-digest", &wrong))
        .assert_status(404);
    server
        .get(&manifest_path("wrong-digest", &digest(&manifest)))
        .assert_status(404);
}

#[test]
fn manifest_without_media_type_field_keeps_the_pushed_content_type() {
    let server = Server::start();
    let config = b"{}".to_vec();
    push_blob(&server, "no-media-type", &config);
    let mut spec = ManifestSpec::oci(descriptor(OCI_EMPTY, &config), vec![]);
    spec.media_type = None;
    let manifest = spec.to_json().into_bytes();
    push_manifest(&server, "no-media-type", "v1", OCI_MANIFEST, &manifest);
    let response = server.get(&manifest_path("no-media-type", "v1"));
    response.assert_status(200);
    assert_eq!(response.header("content-type"), Some(OCI_MANIFEST));
}

#[test]
fn manifest_referencing_unknown_blobs_is_manifest_blob_unknown_when_references_are_required() {
    let server =
        Server::start_with(&Options::default().global_line("allow_missing_manifest_references = false"));
    let config = b"{\"os\":\"linux\"}".to_vec();
    let layer = b"a layer".to_vec();
    push_blob(&server, "strict", &config);

    // Missing layer.
    let missing_layer = ManifestSpec::oci(
        descriptor(OCI_CONFIG, &config),
        vec![descriptor(OCI_LAYER, &layer)],
    )
    .to_json()
    .into_bytes();
    put_manifest(&server, "strict", "v1", OCI_MANIFEST, &missing_layer)
        .assert_error(400, "MANIFEST_BLOB_UNKNOWN");

    // Missing config.
    push_blob(&server, "strict", &layer);
    let other_config = b"{\"os\":\"other\"}".to_vec();
    let missing_config = ManifestSpec::oci(
        descriptor(OCI_CONFIG, &other_config),
        vec![descriptor(OCI_LAYER, &layer)],
    )
    .to_json()
    .into_bytes();
    put_manifest(&server, "strict", "v1", OCI_MANIFEST, &missing_config)
        .assert_error(400, "MANIFEST_BLOB_UNKNOWN");

    // A blob that only another repository has counts as unknown here.
    push_blob(&server, "elsewhere", &other_config);
    put_manifest(&server, "strict", "v1", OCI_MANIFEST, &missing_config)
        .assert_error(400, "MANIFEST_BLOB_UNKNOWN");

    // Nothing was tagged by the failed attempts.
    server.get(&manifest_path("strict", "v1")).assert_status(404);
}

#[test]
fn missing_references_are_accepted_by_default_and_stay_unreadable_until_pushed() {
    let server = Server::start();
    let config = b"{\"os\":\"linux\"}".to_vec();
    let layer = b"a layer pushed later".to_vec();
    let foreign = b"a non-distributable layer, never pushed".to_vec();
    push_blob(&server, "sparse", &config);
    // The layer exists, but only in another namespace.
    push_blob(&server, "elsewhere", &layer);
    let manifest = ManifestSpec::oci(
        descriptor(OCI_CONFIG, &config),
        vec![
            descriptor(OCI_LAYER, &layer),
            descriptor_with(
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                &foreign,
                "\"urls\":[\"https://store.example.com/blob\"]",
            ),
        ],
    )
    .to_json()
    .into_bytes();
    let manifest_digest = push_manifest(&server, "sparse", "v1", OCI_MANIFEST, &manifest);
    assert_eq!(server.get(&manifest_path("sparse", "v1")).body, manifest);

    // Namespace isolation holds: the manifest lends no blob.
    for blob in [&layer, &foreign] {
        server
            .get(&format!("/v2/sparse/blobs/{}", digest(blob)))
            .assert_error(404, "BLOB_UNKNOWN");
    }
    push_blob(&server, "sparse", &layer);
    assert_eq!(
        server.get(&format!("/v2/sparse/blobs/{}", digest(&layer))).body,
        layer
    );

    // An index whose second child was never pushed: the child stays unknown.
    let absent_child = b"{\"schemaVersion\":2,\"layers\":[]}".to_vec();
    let index = index_json(
        OCI_INDEX,
        &[
            descriptor(OCI_MANIFEST, &manifest),
            descriptor(OCI_MANIFEST, &absent_child),
        ],
        None,
        None,
    )
    .into_bytes();
    push_manifest(&server, "sparse", "multi", OCI_INDEX, &index);
    assert_eq!(server.get(&manifest_path("sparse", "multi")).body, index);
    server
        .get(&manifest_path("sparse", &digest(&absent_child)))
        .assert_error(404, "MANIFEST_UNKNOWN");
    server
        .get(&manifest_path("sparse", &manifest_digest))
        .assert_status(200);
}

/// A descriptor of `content` under its sha512 digest.
fn descriptor_sha512(media_type: &str, content: &[u8]) -> String {
    format!(
        "{{\"mediaType\":{},\"digest\":{},\"size\":{}}}",
        json_str(media_type),
        json_str(&sha512_digest(content)),
        content.len()
    )
}

#[test]
fn sha512_manifests_take_tag_parameters_and_name_each_tag_back() {
    let server = Server::start();
    let config = b"{\"os\":\"linux\",\"sha\":512}".to_vec();
    let layer = b"a layer addressed by sha512".to_vec();
    for blob in [&config, &layer] {
        let path = format!(
            "/v2/long/blobs/uploads/?digest={}",
            percent_encode(&sha512_digest(blob))
        );
        server
            .request(
                "POST",
                &path,
                &[("Content-Type", "application/octet-stream")],
                blob,
            )
            .assert_status(201);
    }
    let manifest = ManifestSpec::oci(
        descriptor_sha512(OCI_CONFIG, &config),
        vec![descriptor_sha512(OCI_LAYER, &layer)],
    )
    .to_json()
    .into_bytes();
    let manifest_digest = sha512_digest(&manifest);
    let response = server.request(
        "PUT",
        &format!("{}?tag=first&tag=second", manifest_path("long", &manifest_digest)),
        &[("Content-Type", OCI_MANIFEST)],
        &manifest,
    );
    response.assert_status(201);
    assert_eq!(
        response.header("docker-content-digest"),
        Some(manifest_digest.as_str())
    );
    assert_eq!(response.headers_named("oci-tag"), ["first", "second"]);

    for tag in ["first", "second"] {
        let head = server.head(&manifest_path("long", tag));
        head.assert_status(200);
        assert_eq!(
            head.header("docker-content-digest"),
            Some(manifest_digest.as_str())
        );
        assert_eq!(server.get(&manifest_path("long", tag)).body, manifest);
    }
    assert_eq!(
        server.get(&manifest_path("long", &manifest_digest)).body,
        manifest
    );
    assert_eq!(
        server.get("/v2/long/tags/list").json().string_list("tags"),
        ["first", "second"]
    );

    // A referrer of the sha512 manifest, itself pushed by a sha512 digest.
    let mut referrer = ManifestSpec::oci(descriptor_sha512(OCI_CONFIG, &config), vec![]);
    referrer.artifact_type = Some("application/vnd.example.sbom".into());
    referrer.subject = Some(descriptor_sha512(OCI_MANIFEST, &manifest));
    let referrer = referrer.to_json().into_bytes();
    let referrer_digest = sha512_digest(&referrer);
    let response = put_manifest(&server, "long", &referrer_digest, OCI_MANIFEST, &referrer);
    response.assert_status(201);
    assert_eq!(response.header("oci-subject"), Some(manifest_digest.as_str()));
    assert!(
        response.headers_named("oci-tag").is_empty(),
        "no tag was asked for"
    );
    let index = server
        .get(&format!("/v2/long/referrers/{manifest_digest}"))
        .json();
    let listed: Vec<String> = index
        .get("manifests")
        .and_then(Json::as_array)
        .unwrap()
        .iter()
        .map(|entry| entry.get("digest").and_then(Json::as_str).unwrap().to_string())
        .collect();
    assert_eq!(listed, [referrer_digest]);
}

#[test]
fn invalid_manifest_is_manifest_invalid() {
    let server = Server::start();
    push_blob(&server, "invalid", b"x");
    put_manifest(&server, "invalid", "v1", OCI_MANIFEST, b"{not json").assert_error(400, "MANIFEST_INVALID");
    put_manifest(&server, "invalid", "v1", OCI_MANIFEST, b"").assert_error(400, "MANIFEST_INVALID");
    // Valid JSON, but the config is not a descriptor.
    put_manifest(
        &server,
        "invalid",
        "v1",
        OCI_MANIFEST,
        b"{\"schemaVersion\":2,\"config\":\"nope\",\"layers\":[]}",
    )
    .assert_error(400, "MANIFEST_INVALID");
}

#[test]
fn invalid_tags_are_tag_invalid() {
    // <reference> as a tag: [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}
    let server = Server::start();
    let config = b"{}".to_vec();
    push_blob(&server, "tags", &config);
    let manifest = ManifestSpec::oci(descriptor(OCI_EMPTY, &config), vec![])
        .to_json()
        .into_bytes();
    let too_long = "a".repeat(129);
    for tag in [".dot", "-dash", "bad!", "sp%20ace", too_long.as_str()] {
        put_manifest(&server, "tags", tag, OCI_MANIFEST, &manifest).assert_error(400, "TAG_INVALID");
        // A reference outside the tag grammar names nothing that can exist.
        let path = manifest_path("tags", tag);
        server.get(&path).assert_error(404, "MANIFEST_UNKNOWN");
        server.head(&path).assert_status(404);
        server.delete(&path).assert_error(404, "MANIFEST_UNKNOWN");
    }
    let longest = "b".repeat(128);
    for tag in ["_under", "A.b-C_9", "0", longest.as_str()] {
        push_manifest(&server, "tags", tag, OCI_MANIFEST, &manifest);
        let response = server.get(&manifest_path("tags", tag));
        response.assert_status(200);
        assert_eq!(response.body, manifest);
    }
}

#[test]
fn unknown_manifest_is_manifest_unknown() {
    let server = Server::start();
    push_image(&server, "present", Some("v1"), "present");
    server
        .get(&manifest_path("present", "nope"))
        .assert_error(404, "MANIFEST_UNKNOWN");
    server
        .get(&manifest_path("present", &digest(b"no such manifest")))
        .assert_error(404, "MANIFEST_UNKNOWN");
    let head = server.head(&manifest_path("present", "nope"));
    head.assert_status(404);
    assert!(head.body.is_empty());
    // "An attempt to pull a nonexistent repository MUST return 404."
    server.get(&manifest_path("absent/repo", "v1")).assert_status(404);
}

#[test]
fn tag_can_be_moved_to_another_manifest() {
    let server = Server::start();
    let first = push_image(&server, "moving", Some("stable"), "first");
    let second = push_image(&server, "moving", Some("stable"), "second");
    let response = server.get(&manifest_path("moving", "stable"));
    response.assert_status(200);
    assert_eq!(response.body, second.manifest);
    // The first is still there by digest.
    let old = server.get(&manifest_path("moving", &first.digest));
    old.assert_status(200);
    assert_eq!(old.body, first.manifest);
}

#[test]
fn manifest_larger_than_max_manifest_size_is_413() {
    let server = Server::start_with(&Options::default().global_line("max_manifest_size = \"4KiB\""));
    let config = b"{}".to_vec();
    push_blob(&server, "limits", &config);
    let sized = |size: usize| -> Vec<u8> {
        let mut spec = ManifestSpec::oci(descriptor(OCI_EMPTY, &config), vec![]);
        spec.annotations = vec![("pad".to_string(), String::new())];
        let base = spec.to_json().len();
        spec.annotations = vec![("pad".to_string(), "p".repeat(size - base))];
        let body = spec.to_json().into_bytes();
        assert_eq!(body.len(), size);
        body
    };
    // Exactly at the limit is accepted.
    push_manifest(&server, "limits", "at-limit", OCI_MANIFEST, &sized(4096));
    // One byte more is refused, with a length header or a chunked body.
    put_manifest(&server, "limits", "over", OCI_MANIFEST, &sized(4097)).assert_status(413);
    let over = sized(5000);
    let mut chunked = format!("{:x}\r\n", over.len()).into_bytes();
    chunked.extend_from_slice(&over);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    server
        .request(
            "PUT",
            &manifest_path("limits", "over"),
            &[("Content-Type", OCI_MANIFEST), ("Transfer-Encoding", "chunked")],
            &chunked,
        )
        .assert_status(413);
    server.get(&manifest_path("limits", "over")).assert_status(404);
}

#[test]
fn manifest_of_4mib_is_accepted_by_default() {
    // "Clients and registries SHOULD expect to support manifest uploads of at least 4 MiB."
    let server = Server::start();
    let config = b"{}".to_vec();
    push_blob(&server, "big-manifest", &config);
    let mut spec = ManifestSpec::oci(descriptor(OCI_EMPTY, &config), vec![]);
    spec.annotations = vec![("pad".to_string(), "x".repeat(4 << 20))];
    let manifest = spec.to_json().into_bytes();
    let d = push_manifest(&server, "big-manifest", "v1", OCI_MANIFEST, &manifest);
    let response = server.get(&manifest_path("big-manifest", &d));
    response.assert_status(200);
    assert!(response.body == manifest);
}

// ---------------------------------------------------------------------------
// Deleting manifests and tags
// ---------------------------------------------------------------------------

#[test]
fn delete_tag_keeps_manifest() {
    let server = Server::start();
    let image = push_image(&server, "del-tag", Some("v1"), "del-tag");
    push_manifest(&server, "del-tag", "v2", OCI_MANIFEST, &image.manifest);
    server.delete(&manifest_path("del-tag", "v1")).assert_status(202);
    server
        .get(&manifest_path("del-tag", "v1"))
        .assert_error(404, "MANIFEST_UNKNOWN");
    server.get(&manifest_path("del-tag", "v2")).assert_status(200);
    server
        .get(&manifest_path("del-tag", &image.digest))
        .assert_status(200);
    let tags = server.get("/v2/del-tag/tags/list");
    tags.assert_status(200);
    assert_eq!(tags.json().string_list("tags"), vec!["v2"]);
}

#[test]
fn delete_manifest_by_digest_removes_it_and_its_tags() {
    let server = Server::start();
    let image = push_image(&server, "del-manifest", Some("v1"), "del-manifest");
    push_manifest(&server, "del-manifest", "also", OCI_MANIFEST, &image.manifest);
    let keep = push_image(&server, "del-manifest", Some("keep"), "keep");
    server
        .delete(&manifest_path("del-manifest", &image.digest))
        .assert_status(202);
    for reference in [image.digest.as_str(), "v1", "also"] {
        server
            .get(&manifest_path("del-manifest", reference))
            .assert_error(404, "MANIFEST_UNKNOWN");
    }
    let response = server.get(&manifest_path("del-manifest", "keep"));
    response.assert_status(200);
    assert_eq!(response.body, keep.manifest);
    server
        .delete(&manifest_path("del-manifest", &image.digest))
        .assert_error(404, "MANIFEST_UNKNOWN");
}

#[test]
fn delete_unknown_manifest_is_404() {
    let server = Server::start();
    push_image(&server, "del-unknown", Some("v1"), "x");
    server
        .delete(&manifest_path("del-unknown", &digest(b"nothing")))
        .assert_error(404, "MANIFEST_UNKNOWN");
    server
        .delete(&manifest_path("del-unknown", "missing-tag"))
        .assert_error(404, "MANIFEST_UNKNOWN");
}

// ---------------------------------------------------------------------------
// Media types and content negotiation
// ---------------------------------------------------------------------------

const ACCEPT_ALL: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

#[track_caller]
fn assert_served_as(server: &Server, repo: &str, reference: &str, body: &[u8], media_type: &str) {
    let response = server.request(
        "GET",
        &manifest_path(repo, reference),
        &[("Accept", ACCEPT_ALL)],
        b"",
    );
    response.assert_status(200);
    assert_eq!(response.body, body);
    assert_eq!(
        response.header("content-type"),
        Some(media_type),
        "Content-Type must be the pushed media type"
    );
    assert_eq!(
        response.header("docker-content-digest"),
        Some(digest(body).as_str())
    );
    let head = server.request(
        "HEAD",
        &manifest_path(repo, reference),
        &[("Accept", ACCEPT_ALL)],
        b"",
    );
    head.assert_status(200);
    assert_eq!(head.header("content-type"), Some(media_type));
}

#[test]
fn oci_image_index() {
    let server = Server::start();
    let amd = push_image(&server, "multi", None, "amd64");
    let arm = push_image(&server, "multi", None, "arm64");
    let index = index_json(
        OCI_INDEX,
        &[
            descriptor_with(
                OCI_MANIFEST,
                &amd.manifest,
                "\"platform\":{\"architecture\":\"amd64\",\"os\":\"linux\"}",
            ),
            descriptor_with(
                OCI_MANIFEST,
                &arm.manifest,
                "\"platform\":{\"architecture\":\"arm64\",\"os\":\"linux\"}",
            ),
        ],
        None,
        None,
    )
    .into_bytes();
    let d = push_manifest(&server, "multi", "v1", OCI_INDEX, &index);
    assert_served_as(&server, "multi", "v1", &index, OCI_INDEX);
    assert_served_as(&server, "multi", &d, &index, OCI_INDEX);
    // Its children are still served as image manifests.
    assert_served_as(&server, "multi", &amd.digest, &amd.manifest, OCI_MANIFEST);
}

#[test]
fn docker_manifest_v2_and_manifest_list() {
    let server = Server::start();
    let config = b"{\"architecture\":\"amd64\",\"os\":\"linux\",\"rootfs\":{}}".to_vec();
    let layer = b"\x1f\x8b fake gzip layer".to_vec();
    push_blob(&server, "docker/app", &config);
    push_blob(&server, "docker/app", &layer);
    let manifest = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{DOCKER_MANIFEST}\",\"config\":{},\"layers\":[{}]}}",
        descriptor(DOCKER_CONFIG, &config),
        descriptor(DOCKER_LAYER, &layer)
    )
    .into_bytes();
    let manifest_digest = push_manifest(&server, "docker/app", "v2", DOCKER_MANIFEST, &manifest);
    assert_served_as(&server, "docker/app", "v2", &manifest, DOCKER_MANIFEST);

    let list = index_json(
        DOCKER_LIST,
        &[descriptor_with(
            DOCKER_MANIFEST,
            &manifest,
            "\"platform\":{\"architecture\":\"amd64\",\"os\":\"linux\"}",
        )],
        None,
        None,
    )
    .into_bytes();
    push_manifest(&server, "docker/app", "list", DOCKER_LIST, &list);
    assert_served_as(&server, "docker/app", "list", &list, DOCKER_LIST);
    assert_served_as(
        &server,
        "docker/app",
        &manifest_digest,
        &manifest,
        DOCKER_MANIFEST,
    );
}

// ---------------------------------------------------------------------------
// Tags list
// ---------------------------------------------------------------------------

/// Follows `Link: <...>; rel="next"` from `first`, collecting the `key` list of
/// every page; returns the pages.
fn pages(server: &Server, first: &str, key: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut next = Some(first.to_string());
    while let Some(path) = next {
        assert!(out.len() < 100, "pagination does not terminate");
        let response = server.get(&path);
        response.assert_status(200);
        out.push(response.json().string_list(key));
        next = response.next_link();
    }
    out
}

#[test]
fn tags_list_is_sorted_and_paginated_with_link() {
    let server = Server::start();
    let image = push_image(&server, "paged", None, "paged");
    let tags = ["v2", "alpha", "v10", "beta", "v1", "gamma", "1.0", "delta"];
    for tag in tags {
        push_manifest(&server, "paged", tag, OCI_MANIFEST, &image.manifest);
    }
    let mut sorted: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
    sorted.sort();

    let all = server.get("/v2/paged/tags/list");
    all.assert_status(200);
    let json = all.json();
    assert_eq!(json.get("name").and_then(Json::as_str), Some("paged"));
    assert_eq!(json.string_list("tags"), sorted);

    // n=3: exactly three per page while more remain, a Link to the rest.
    let first = server.get("/v2/paged/tags/list?n=3");
    first.assert_status(200);
    assert_eq!(first.json().string_list("tags"), sorted[..3]);
    let link = first
        .next_link()
        .unwrap_or_else(|| panic!("n=3 of 8 tags must have a Link: {}", first.describe()));
    assert!(link.starts_with("/v2/paged/tags/list?"), "Link {link}");
    let pages = pages(&server, "/v2/paged/tags/list?n=3", "tags");
    let joined: Vec<String> = pages.concat();
    assert_eq!(joined, sorted, "pages {pages:?}");
    for page in &pages[..2] {
        assert_eq!(page.len(), 3);
    }

    // last without n: everything after it.
    let after = server.get("/v2/paged/tags/list?last=beta");
    after.assert_status(200);
    let expected: Vec<String> = sorted.iter().filter(|t| t.as_str() > "beta").cloned().collect();
    assert_eq!(after.json().string_list("tags"), expected);

    // n and last together.
    let middle = server.get("/v2/paged/tags/list?n=2&last=beta");
    middle.assert_status(200);
    assert_eq!(middle.json().string_list("tags"), expected[..2]);

    // n larger than the count: all, no Link.
    let big = server.get("/v2/paged/tags/list?n=100");
    big.assert_status(200);
    assert_eq!(big.json().string_list("tags"), sorted);
    assert_eq!(big.next_link(), None);
}

#[test]
fn tags_list_with_n_zero_is_empty_without_link() {
    let server = Server::start();
    push_image(&server, "zero", Some("v1"), "zero");
    let response = server.get("/v2/zero/tags/list?n=0");
    response.assert_status(200);
    assert!(response.json().string_list("tags").is_empty());
    assert!(
        response.header("link").is_none(),
        "n=0 MUST NOT include a Link header: {}",
        response.describe()
    );
}

#[test]
fn tags_list_edge_cases() {
    let server = Server::start();
    // A repository with a manifest but no tag lists no tags.
    push_image(&server, "untagged", None, "untagged");
    let response = server.get("/v2/untagged/tags/list");
    response.assert_status(200);
    assert!(response.json().string_list("tags").is_empty());

    // `last` need not be an existing tag: the list resumes after it lexically.
    let image = push_image(&server, "edges", Some("a1"), "edges");
    for tag in ["b1", "c1"] {
        push_manifest(&server, "edges", tag, OCI_MANIFEST, &image.manifest);
    }
    let response = server.get("/v2/edges/tags/list?last=b0");
    response.assert_status(200);
    assert_eq!(response.json().string_list("tags"), vec!["b1", "c1"]);
    let response = server.get("/v2/edges/tags/list?last=c1");
    response.assert_status(200);
    assert!(response.json().string_list("tags").is_empty());
}

#[test]
fn tags_list_of_unknown_repository_is_name_unknown() {
    let server = Server::start();
    server
        .get("/v2/never/pushed/tags/list")
        .assert_error(404, "NAME_UNKNOWN");
}

// ---------------------------------------------------------------------------
// Catalog
// ---------------------------------------------------------------------------

#[test]
fn catalog_lists_repositories_sorted_and_paginated() {
    let server = Server::start();
    let repos = ["gamma", "alpha", "beta/two", "beta/one", "delta"];
    for repo in repos {
        push_image(&server, repo, Some("v1"), repo);
    }
    let mut sorted: Vec<String> = repos.iter().map(|r| r.to_string()).collect();
    sorted.sort();

    let all = server.get("/v2/_catalog");
    all.assert_status(200);
    assert_eq!(all.json().string_list("repositories"), sorted);

    let first = server.get("/v2/_catalog?n=2");
    first.assert_status(200);
    assert_eq!(first.json().string_list("repositories"), sorted[..2]);
    assert!(
        first.next_link().is_some(),
        "a partial catalog page needs a Link: {}",
        first.describe()
    );
    let pages = pages(&server, "/v2/_catalog?n=2", "repositories");
    assert_eq!(pages.concat(), sorted, "pages {pages:?}");

    let zero = server.get("/v2/_catalog?n=0");
    zero.assert_status(200);
    assert!(zero.json().string_list("repositories").is_empty());
    assert!(zero.header("link").is_none(), "{}", zero.describe());

    let after = server.get("/v2/_catalog?n=10&last=beta/one");
    after.assert_status(200);
    assert_eq!(
        after.json().string_list("repositories"),
        vec!["beta/two", "delta", "gamma"]
    );
}

// ---------------------------------------------------------------------------
// Subject and referrers
// ---------------------------------------------------------------------------

const SBOM_TYPE: &str = "application/vnd.example.sbom.v1+json";
const SIG_CONFIG_TYPE: &str = "application/vnd.example.signature.config.v1+json";

/// Finds the descriptor of `digest` among a referrers response's manifests.
fn find_descriptor<'a>(index: &'a Json, digest: &str) -> Option<&'a Json> {
    index.get("manifests").and_then(Json::as_array).and_then(|m| {
        m.iter()
            .find(|d| d.get("digest").and_then(Json::as_str) == Some(digest))
    })
}

fn referrer_digests(index: &Json) -> Vec<String> {
    let mut out: Vec<String> = index
        .get("manifests")
        .and_then(Json::as_array)
        .unwrap_or_else(|| panic!("referrers response without manifests: {index:?}"))
        .iter()
        .map(|d| d.get("digest").and_then(Json::as_str).unwrap().to_string())
        .collect();
    out.sort();
    out
}

#[test]
fn referrers_api_lists_and_filters_referrers() {
    let server = Server::start();
    let repo = "refs/app";
    let subject = push_image(&server, repo, Some("v1"), "subject");
    let empty = b"{}".to_vec();
    push_blob(&server, repo, &empty);

    // R1: an artifact with artifactType and annotations.
    let sbom = b"{\"sbom\":true}".to_vec();
    push_blob(&server, repo, &sbom);
    let r1 = ManifestSpec {
        artifact_type: Some(SBOM_TYPE.to_string()),
        subject: Some(subject.descriptor()),
        annotations: vec![("org.example.kind".to_string(), "sbom".to_string())],
        ..ManifestSpec::oci(descriptor(OCI_EMPTY, &empty), vec![descriptor(SBOM_TYPE, &sbom)])
    }
    .to_json()
    .into_bytes();
    let response = put_manifest(&server, repo, &digest(&r1), OCI_MANIFEST, &r1);
    response.assert_status(201);
    assert_eq!(
        response.header("oci-subject"),
        Some(subject.digest.as_str()),
        "a manifest with a subject must be answered with OCI-Subject"
    );

    // R2: no artifactType, so the descriptor takes the config's media type.
    let sig_config = b"{\"signer\":\"me\"}".to_vec();
    let sig = b"signature bytes".to_vec();
    push_blob(&server, repo, &sig_config);
    push_blob(&server, repo, &sig);
    let r2 = ManifestSpec {
        subject: Some(subject.descriptor()),
        annotations: vec![("org.example.signed".to_string(), "yes".to_string())],
        ..ManifestSpec::oci(
            descriptor(SIG_CONFIG_TYPE, &sig_config),
            vec![descriptor("application/octet-stream", &sig)],
        )
    }
    .to_json()
    .into_bytes();
    push_manifest(&server, repo, &digest(&r2), OCI_MANIFEST, &r2);

    // R3: an index with a subject and no artifactType: the descriptor has none.
    let r3 = index_json(OCI_INDEX, &[], None, Some(&subject.descriptor())).into_bytes();
    let response = put_manifest(&server, repo, &digest(&r3), OCI_INDEX, &r3);
    response.assert_status(201);
    assert_eq!(response.header("oci-subject"), Some(subject.digest.as_str()));

    // Not referrers of the subject: another subject, another repository.
    let other = push_image(&server, repo, None, "other subject");
    let unrelated = ManifestSpec {
        artifact_type: Some(SBOM_TYPE.to_string()),
        subject: Some(other.descriptor()),
        ..ManifestSpec::oci(descriptor(OCI_EMPTY, &empty), vec![])
    }
    .to_json()
    .into_bytes();
    push_manifest(&server, repo, &digest(&unrelated), OCI_MANIFEST, &unrelated);
    push_blob(&server, "refs/elsewhere", &empty);
    let foreign = ManifestSpec {
        artifact_type: Some(SBOM_TYPE.to_string()),
        subject: Some(subject.descriptor()),
        ..ManifestSpec::oci(descriptor(OCI_EMPTY, &empty), vec![])
    }
    .to_json()
    .into_bytes();
    push_manifest(
        &server,
        "refs/elsewhere",
        &digest(&foreign),
        OCI_MANIFEST,
        &foreign,
    );

    let path = format!("/v2/{repo}/referrers/{}", subject.digest);
    let response = server.get(&path);
    response.assert_status(200);
    assert_eq!(response.header("content-type"), Some(OCI_INDEX));
    let index = response.json();
    assert_eq!(index.get("schemaVersion").and_then(Json::as_u64), Some(2));
    assert_eq!(index.get("mediaType").and_then(Json::as_str), Some(OCI_INDEX));
    let mut expected = vec![digest(&r1), digest(&r2), digest(&r3)];
    expected.sort();
    assert_eq!(referrer_digests(&index), expected, "{}", response.describe());

    let d1 = find_descriptor(&index, &digest(&r1)).unwrap();
    assert_eq!(d1.get("mediaType").and_then(Json::as_str), Some(OCI_MANIFEST));
    assert_eq!(d1.get("size").and_then(Json::as_u64), Some(r1.len() as u64));
    assert_eq!(d1.get("artifactType").and_then(Json::as_str), Some(SBOM_TYPE));
    assert_eq!(
        d1.get("annotations")
            .and_then(|a| a.get("org.example.kind"))
            .and_then(Json::as_str),
        Some("sbom")
    );
    let d2 = find_descriptor(&index, &digest(&r2)).unwrap();
    assert_eq!(
        d2.get("artifactType").and_then(Json::as_str),
        Some(SIG_CONFIG_TYPE),
        "without artifactType the config media type is used"
    );
    assert_eq!(
        d2.get("annotations")
            .and_then(|a| a.get("org.example.signed"))
            .and_then(Json::as_str),
        Some("yes")
    );
    let d3 = find_descriptor(&index, &digest(&r3)).unwrap();
    assert_eq!(d3.get("mediaType").and_then(Json::as_str), Some(OCI_INDEX));
    assert!(
        d3.get("artifactType").is_none(),
        "an index without artifactType has none in its descriptor: {d3:?}"
    );

    // Filtering by artifactType (a '+' must be percent-encoded in a query).
    let filtered = server.get(&format!("{path}?artifactType={}", percent_encode(SBOM_TYPE)));
    filtered.assert_status(200);
    assert_eq!(
        filtered.header("oci-filters-applied"),
        Some("artifactType"),
        "{}",
        filtered.describe()
    );
    assert_eq!(referrer_digests(&filtered.json()), vec![digest(&r1)]);

    let by_config = server.get(&format!(
        "{path}?artifactType={}",
        percent_encode(SIG_CONFIG_TYPE)
    ));
    by_config.assert_status(200);
    assert_eq!(referrer_digests(&by_config.json()), vec![digest(&r2)]);

    let none = server.get(&format!("{path}?artifactType=application/vnd.none"));
    none.assert_status(200);
    assert_eq!(none.header("oci-filters-applied"), Some("artifactType"));
    assert!(referrer_digests(&none.json()).is_empty());

    // Deleting a referrer removes it from the list.
    server
        .delete(&manifest_path(repo, &digest(&r1)))
        .assert_status(202);
    let after = server.get(&path);
    after.assert_status(200);
    let mut expected = vec![digest(&r2), digest(&r3)];
    expected.sort();
    assert_eq!(referrer_digests(&after.json()), expected);
}

#[test]
fn referrers_of_manifest_without_referrers_is_empty_index() {
    let server = Server::start();
    let image = push_image(&server, "lonely", Some("v1"), "lonely");
    for target in [image.digest.clone(), digest(b"not even a manifest")] {
        let response = server.get(&format!("/v2/lonely/referrers/{target}"));
        response.assert_status(200);
        assert_eq!(response.header("content-type"), Some(OCI_INDEX));
        let index = response.json();
        assert_eq!(index.get("schemaVersion").and_then(Json::as_u64), Some(2));
        assert!(referrer_digests(&index).is_empty());
    }
}

#[test]
fn referrers_with_invalid_digest_is_400() {
    let server = Server::start();
    push_image(&server, "badref", Some("v1"), "badref");
    server.get("/v2/badref/referrers/sha256:xyz").assert_status(400);
    server.get("/v2/badref/referrers/latest").assert_status(400);
}

#[test]
fn manifest_with_absent_subject_is_accepted_and_listed() {
    // "A registry MUST accept a manifest with a subject field that references a
    // manifest that does not exist in the repository."
    let server = Server::start();
    let empty = b"{}".to_vec();
    push_blob(&server, "early", &empty);
    let future_subject = ManifestSpec::oci(descriptor(OCI_EMPTY, &empty), vec![])
        .to_json()
        .into_bytes();
    let referrer = ManifestSpec {
        artifact_type: Some(SBOM_TYPE.to_string()),
        subject: Some(descriptor(OCI_MANIFEST, &future_subject)),
        ..ManifestSpec::oci(descriptor(OCI_EMPTY, &empty), vec![])
    }
    .to_json()
    .into_bytes();
    let response = put_manifest(&server, "early", &digest(&referrer), OCI_MANIFEST, &referrer);
    response.assert_status(201);
    assert_eq!(
        response.header("oci-subject"),
        Some(digest(&future_subject).as_str())
    );
    let listed = server.get(&format!("/v2/early/referrers/{}", digest(&future_subject)));
    listed.assert_status(200);
    assert_eq!(referrer_digests(&listed.json()), vec![digest(&referrer)]);
    // The subject arriving later changes nothing.
    push_manifest(&server, "early", "v1", OCI_MANIFEST, &future_subject);
    let listed = server.get(&format!("/v2/early/referrers/{}", digest(&future_subject)));
    assert_eq!(referrer_digests(&listed.json()), vec![digest(&referrer)]);
}
