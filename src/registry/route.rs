//! The one route table: maps a request path to its endpoint, the registry's
//! and the server's own (metrics, the token endpoint, the admin API), and
//! names each for metrics and logs. Repository names may contain slashes,
//! so registry endpoints are recognised from the end of the path.

/// The registry token endpoint (the realm of Bearer challenges).
pub const TOKEN_PATH: &str = "/v2/token";
/// Everything under it is the administration API.
pub const ADMIN_PREFIX: &str = "/v2/_angos/";
/// Prometheus metrics.
pub const METRICS_PATH: &str = "/metrics";

/// An endpoint with its raw (not yet validated) path parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Base,
    Healthz,
    Readyz,
    Catalog,
    Tags {
        name: String,
    },
    Manifest {
        name: String,
        reference: String,
    },
    Blob {
        name: String,
        digest: String,
    },
    UploadStart {
        name: String,
    },
    Upload {
        name: String,
        id: String,
    },
    Referrers {
        name: String,
        digest: String,
    },
    /// Ours, in the repository's extension namespace (a name's components
    /// cannot start with `_`): a page of tags with what each points at.
    TagDetails {
        name: String,
    },
    /// The operator page (`crate::ui`); chosen by the app, which knows
    /// where the page is configured, never by `route`.
    Ui,
    Metrics,
    Token,
    Admin,
    NotFound,
}

impl Route {
    /// A short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Catalog => "catalog",
            Route::Tags { .. } => "tags",
            Route::Manifest { .. } => "manifest",
            Route::Blob { .. } => "blob",
            Route::UploadStart { .. } | Route::Upload { .. } => "upload",
            Route::Referrers { .. } => "referrers",
            Route::TagDetails { .. } => "tag_details",
            Route::Ui => "ui",
            Route::Metrics => "metrics",
            Route::Token => "token",
            Route::Admin => "admin",
            Route::NotFound => "not_found",
        }
    }
}

pub fn route(path: &str) -> Route {
    match path {
        "/v2/" | "/v2" => return Route::Base,
        "/healthz" => return Route::Healthz,
        "/readyz" => return Route::Readyz,
        "/v2/_catalog" => return Route::Catalog,
        METRICS_PATH => return Route::Metrics,
        TOKEN_PATH => return Route::Token,
        _ => {}
    }
    if path.starts_with(ADMIN_PREFIX) {
        return Route::Admin;
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Route::NotFound;
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let count = segments.len();
    let name_before = |n: usize| segments[..count - n].join("/");
    if count >= 3 {
        let (third, second, last) = (segments[count - 3], segments[count - 2], segments[count - 1]);
        if second == "tags" && last == "list" {
            return Route::Tags { name: name_before(2) };
        }
        if second == "_angos" && last == "tags" {
            return Route::TagDetails { name: name_before(2) };
        }
        if third == "blobs" && second == "uploads" && count >= 4 {
            if last.is_empty() {
                return Route::UploadStart { name: name_before(3) };
            }
            return Route::Upload {
                name: name_before(3),
                id: last.to_string(),
            };
        }
        if second == "blobs" && last == "uploads" {
            return Route::UploadStart { name: name_before(2) };
        }
        let parameter = last.to_string();
        match second {
            "manifests" => {
                return Route::Manifest {
                    name: name_before(2),
                    reference: parameter,
                };
            }
            "blobs" => {
                return Route::Blob {
                    name: name_before(2),
                    digest: parameter,
                };
            }
            "referrers" => {
                return Route::Referrers {
                    name: name_before(2),
                    digest: parameter,
                };
            }
            _ => {}
        }
    }
    if count == 2 {
        // A one-component name: `/v2/<name>/manifests` alone is not an endpoint,
        // but `/v2/<name>/blobs/<digest>` with count 3 was handled above.
        return Route::NotFound;
    }
    Route::NotFound
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> String {
        s.to_string()
    }

    #[test]
    fn routes_from_the_end_of_the_path() {
        assert_eq!(route("/v2/"), Route::Base);
        assert_eq!(route("/v2/_catalog"), Route::Catalog);
        assert_eq!(route("/v2/a/b/tags/list"), Route::Tags { name: name("a/b") });
        assert_eq!(
            route("/v2/a/b/_angos/tags"),
            Route::TagDetails { name: name("a/b") }
        );
        assert_eq!(
            route("/v2/a/manifests/x/manifests/latest"),
            Route::Manifest {
                name: name("a/manifests/x"),
                reference: name("latest")
            }
        );
        assert_eq!(
            route("/v2/a/blobs/uploads/"),
            Route::UploadStart { name: name("a") }
        );
        assert_eq!(
            route("/v2/a/blobs/uploads"),
            Route::UploadStart { name: name("a") }
        );
        assert_eq!(
            route("/v2/a/b/blobs/uploads/0123"),
            Route::Upload {
                name: name("a/b"),
                id: name("0123")
            }
        );
        assert_eq!(
            route("/v2/a/blobs/sha256:00"),
            Route::Blob {
                name: name("a"),
                digest: name("sha256:00")
            }
        );
        assert_eq!(
            route("/v2/a/referrers/sha256:00"),
            Route::Referrers {
                name: name("a"),
                digest: name("sha256:00")
            }
        );
        assert_eq!(route("/v2/a/manifests"), Route::NotFound);
        assert_eq!(route("/other"), Route::NotFound);
        assert_eq!(route("/metrics"), Route::Metrics);
        assert_eq!(route("/v2/token"), Route::Token);
        assert_eq!(route("/v2/_angos/webhooks/audit"), Route::Admin);
        assert_eq!(route("/v2/_angos"), Route::NotFound);
    }
}
