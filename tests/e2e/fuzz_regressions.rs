//! Inputs the fuzz targets in `fuzz/` found, each replayed through the same
//! public API its target calls, with the answer it must get now. One test per
//! finding; the name says what broke. No sockets, no server: these run in the
//! normal `cargo test` suite in microseconds.

use angos::registry::range::{ByteRange, parse_content_range};
use angos::registry::route::route;

/// `range` target: an upload `Content-Range` ending at u64::MAX parsed, and the
/// upload handler's `end - start + 1` then overflowed (a panic in debug
/// builds, a zero-length chunk in release).
#[test]
fn content_range_ending_at_u64_max_is_rejected() {
    let value = format!("0-{}{}", "0".repeat(140), u64::MAX);
    assert_eq!(parse_content_range(&value), None);
    assert_eq!(parse_content_range(&format!("0-{}", u64::MAX)), None);
    assert_eq!(parse_content_range(&format!("bytes 5-{}/*", u64::MAX)), None);
    // The largest chunk whose length fits still parses.
    let end = u64::MAX - 1;
    assert_eq!(
        parse_content_range(&format!("0-{end}")),
        Some(ByteRange { start: 0, end })
    );
}

/// `route` target: the old allocation-free labeller named endpoints that have
/// no repository name before them (`/v2/blobs/<digest>` counted as "blob"),
/// while `route`, which the registry answers with, said not found. Labels now
/// come from the route itself.
#[test]
fn route_label_needs_a_repository_name() {
    for path in [
        "/v2/blobs/25C2360d",
        "/v2/manifests/latest",
        "/v2/tags/list",
        "/v2/referrers/sha256:00",
        "/v2/blobs/uploads/1234",
        "/v2/blobs/uploads",
        "/v2/x",
    ] {
        assert_eq!(route(path).label(), "not_found", "{path}");
    }
    for (path, label) in [
        ("/v2/a/blobs/sha256:00", "blob"),
        ("/v2/a/manifests/latest", "manifest"),
        ("/v2/a/tags/list", "tags"),
        ("/v2/a/blobs/uploads/", "upload"),
        ("/v2/a/blobs/uploads", "upload"),
        ("/v2//blobs/uploads/1", "upload"),
    ] {
        assert_eq!(route(path).label(), label, "{path}");
    }
}
