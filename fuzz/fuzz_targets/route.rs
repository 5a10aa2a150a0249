//! Request routing (`registry::route`): the `Route` the registry dispatches on
//! and the allocation-free `label_of` that metrics and logs use for the same
//! path. Input: the decoded path, as `RequestHead::path` holds it.
#![no_main]

use angos::registry::route::{Route, label_of, route};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(path) = std::str::from_utf8(input) else {
        return;
    };
    let routed = route(path);
    let label = label_of(path);
    // The registry answers what `route` says; the metrics must count it under
    // the same name. `/metrics` and `/v2/token` are served before routing,
    // so only their labels are special.
    if path == "/v2/token" {
        assert_eq!(label, "token");
    } else if path.starts_with("/v2/") || path == "/v2" {
        assert_eq!(label, routed.label(), "{path:?} routes to {routed:?}");
    }
    match &routed {
        Route::Tags { name }
        | Route::Manifest { name, .. }
        | Route::Blob { name, .. }
        | Route::UploadStart { name }
        | Route::Upload { name, .. }
        | Route::Referrers { name, .. } => {
            // The name is the path between `/v2/` and the endpoint.
            assert!(path.starts_with(&format!("/v2/{name}/")));
        }
        Route::Base | Route::Healthz | Route::Readyz | Route::Catalog | Route::NotFound => {}
    }
});
