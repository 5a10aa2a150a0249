//! The server's metrics: the registry of families, and the HTTP request
//! series resolved once per (route, method, status) so the per-request cost
//! is a small map lookup and two increments.

use std::collections::HashMap;

use crate::metrics::{FamilyId, LATENCY_BUCKETS_SECONDS, Metrics, SeriesId};

pub struct Telemetry {
    metrics: Metrics,
    requests: FamilyId,
    duration: FamilyId,
    request_series: HashMap<(&'static str, &'static str, u16), SeriesId>,
    duration_series: HashMap<&'static str, SeriesId>,
    auth_failures: FamilyId,
    auth_delayed: SeriesId,
    certificate_not_before: FamilyId,
    certificate_not_after: FamilyId,
    /// Files with certificate series now, so a file no longer configured
    /// loses its series.
    certificate_files: Vec<String>,
    storage: StorageFamilies,
}

/// The disk under `root_dir` and what the content takes of it.
struct StorageFamilies {
    free: FamilyId,
    size: FamilyId,
    min_free: FamilyId,
    content: FamilyId,
    reclaimable: FamilyId,
}

impl StorageFamilies {
    fn declare(metrics: &mut Metrics) -> StorageFamilies {
        StorageFamilies {
            free: metrics.gauge(
                "storage_free_bytes",
                "Free space on the disk holding root_dir that the registry may use, read at each scrape.",
                &[],
            ),
            size: metrics.gauge(
                "storage_size_bytes",
                "Size of the filesystem holding root_dir.",
                &[],
            ),
            min_free: metrics.gauge(
                "storage_min_free_bytes",
                "min_free_space in bytes: below this much free space, pushes are refused with 507.",
                &[],
            ),
            content: metrics.gauge(
                "storage_content_bytes",
                "Bytes of content (blobs and manifests) under blobs/, counted at start and kept by commits and collections.",
                &[],
            ),
            reclaimable: metrics.gauge(
                "storage_reclaimable_bytes",
                "Content nothing referenced at the last collection but still within gc_grace_secs: \
                 what a later collection may free (absent until a collection has run).",
                &[],
            ),
        }
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

impl Telemetry {
    pub fn new() -> Telemetry {
        let mut metrics = Metrics::new();
        let requests = metrics.counter(
            "http_requests_total",
            "HTTP requests answered, by route, method and status.",
            &["route", "method", "status"],
        );
        let duration = metrics.histogram(
            "http_request_duration_seconds",
            "Time from a request's head to its answer being queued, by route.",
            &["route"],
            LATENCY_BUCKETS_SECONDS,
        );
        let auth_failures = metrics.counter(
            "auth_failures_total",
            "Failed logins, by reason (unknown_user, wrong_password, malformed, invalid_token).",
            &["reason"],
        );
        let delayed = metrics.counter(
            "auth_delayed_total",
            "Logins held back because their address failed to log in repeatedly.",
            &[],
        );
        let auth_delayed = metrics.series(delayed, &[]);
        let certificate_not_before = metrics.gauge(
            "tls_certificate_not_before_seconds",
            "Start of the validity of the first certificate of each configured certificate file (Unix seconds).",
            &["file"],
        );
        let certificate_not_after = metrics.gauge(
            "tls_certificate_not_after_seconds",
            "End of the validity of the first certificate of each configured certificate file (Unix seconds).",
            &["file"],
        );
        let storage = StorageFamilies::declare(&mut metrics);
        // Present at zero from the start, so a rate() over them has a baseline.
        for reason in ["unknown_user", "wrong_password", "malformed", "invalid_token"] {
            metrics.series(auth_failures, &[reason]);
        }
        Telemetry {
            metrics,
            requests,
            duration,
            request_series: HashMap::new(),
            duration_series: HashMap::new(),
            auth_failures,
            auth_delayed,
            certificate_not_before,
            certificate_not_after,
            certificate_files: Vec::new(),
            storage,
        }
    }

    /// Sets the storage gauges from a fresh report; a value not known (no
    /// reading, content not counted, no estimate yet) has no series rather
    /// than a zero that would read as "nothing".
    pub fn record_storage(&mut self, report: &crate::storage::SpaceReport) {
        let disk = report.disk;
        let values = [
            (self.storage.free, disk.map(|disk| disk.free_bytes)),
            (self.storage.size, disk.map(|disk| disk.total_bytes)),
            (self.storage.min_free, disk.map(|_| report.min_free_bytes)),
            (self.storage.content, report.content_bytes),
            (self.storage.reclaimable, report.reclaimable_bytes),
        ];
        for (family, value) in values {
            match value {
                Some(value) => {
                    let series = self.metrics.series(family, &[]);
                    self.metrics.set(series, value as f64);
                }
                None => {
                    self.metrics.remove_series(family, &[]);
                }
            }
        }
    }

    /// Replaces the certificate validity series with `validities`
    /// (file, notBefore, notAfter).
    pub fn record_certificates(&mut self, validities: &[(String, i64, i64)]) {
        for file in std::mem::take(&mut self.certificate_files) {
            self.metrics.remove_series(self.certificate_not_before, &[&file]);
            self.metrics.remove_series(self.certificate_not_after, &[&file]);
        }
        for (file, not_before, not_after) in validities {
            let series = self.metrics.series(self.certificate_not_before, &[file]);
            self.metrics.set(series, *not_before as f64);
            let series = self.metrics.series(self.certificate_not_after, &[file]);
            self.metrics.set(series, *not_after as f64);
            self.certificate_files.push(file.clone());
        }
    }

    pub fn metrics(&mut self) -> &mut Metrics {
        &mut self.metrics
    }

    pub fn record_auth_failure(&mut self, reason: &'static str) {
        let series = self.metrics.series(self.auth_failures, &[reason]);
        self.metrics.inc(series);
    }

    pub fn record_auth_delay(&mut self) {
        self.metrics.inc(self.auth_delayed);
    }

    pub fn record_request(
        &mut self,
        route: &'static str,
        method: &'static str,
        status: u16,
        elapsed_ms: u64,
    ) {
        let metrics = &mut self.metrics;
        let requests = self.requests;
        let counter = *self
            .request_series
            .entry((route, method, status))
            .or_insert_with(|| metrics.series(requests, &[route, method, &status.to_string()]));
        metrics.inc(counter);
        let duration = self.duration;
        let histogram = *self
            .duration_series
            .entry(route)
            .or_insert_with(|| metrics.series(duration, &[route]));
        metrics.observe(histogram, elapsed_ms as f64 / 1000.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{DiskSpace, SpaceReport};

    fn rendered(telemetry: &Telemetry) -> String {
        let mut text = String::new();
        telemetry.metrics.render(&mut text);
        text
    }

    #[test]
    fn storage_gauges_show_what_is_known_and_only_that() {
        let mut telemetry = Telemetry::new();
        telemetry.record_storage(&SpaceReport {
            disk: Some(DiskSpace {
                free_bytes: 300,
                total_bytes: 1000,
            }),
            min_free_bytes: 10,
            content_bytes: Some(42),
            reclaimable_bytes: None,
        });
        let text = rendered(&telemetry);
        for line in [
            "storage_free_bytes 300",
            "storage_size_bytes 1000",
            "storage_min_free_bytes 10",
            "storage_content_bytes 42",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        let sample = |text: &str, name: &str| text.lines().any(|line| line.starts_with(name));
        assert!(!sample(&text, "storage_reclaimable_bytes"), "no estimate yet");
        telemetry.record_storage(&SpaceReport {
            disk: None,
            min_free_bytes: 0,
            content_bytes: Some(42),
            reclaimable_bytes: Some(7),
        });
        let text = rendered(&telemetry);
        assert!(
            !sample(&text, "storage_free_bytes"),
            "a failed reading is no reading"
        );
        assert!(text.lines().any(|l| l == "storage_reclaimable_bytes 7"), "{text}");
    }
}
