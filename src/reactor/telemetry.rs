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
