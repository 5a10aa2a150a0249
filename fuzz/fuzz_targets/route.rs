//! Request routing (`registry::route`): the one `Route` every request is
//! dispatched on, and its label for metrics and logs. Input: the decoded
//! path, as `RequestHead::path` holds it.
#![no_main]

use angos::registry::route::{ADMIN_PREFIX, Route, TOKEN_PATH, route};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(path) = std::str::from_utf8(input) else {
        return;
    };
    let routed = route(path);
    // The server's own endpoints are exactly their paths.
    assert_eq!(routed == Route::Token, path == TOKEN_PATH, "{path:?}");
    assert_eq!(routed == Route::Metrics, path == "/metrics", "{path:?}");
    assert_eq!(routed == Route::Admin, path.starts_with(ADMIN_PREFIX), "{path:?}");
    // Anything outside `/v2/` but the fixed paths is not found.
    if !path.starts_with("/v2/") && !["/v2", "/healthz", "/readyz", "/metrics"].contains(&path) {
        assert_eq!(routed, Route::NotFound, "{path:?}");
    }
    match &routed {
        Route::Tags { name }
        | Route::Manifest { name, .. }
        | Route::Blob { name, .. }
        | Route::UploadStart { name }
        | Route::Upload { name, .. }
        | Route::Referrers { name, .. }
        | Route::TagDetails { name } => {
            // The name is the path between `/v2/` and the endpoint.
            assert!(path.starts_with(&format!("/v2/{name}/")));
        }
        // The app picks the operator page by its configured path; `route` never does.
        Route::Ui => panic!("route gave the page's route for {path:?}"),
        Route::Base
        | Route::Healthz
        | Route::Readyz
        | Route::Catalog
        | Route::Metrics
        | Route::Token
        | Route::Admin
        | Route::NotFound => {}
    }
});
