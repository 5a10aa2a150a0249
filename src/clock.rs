//! Time sources: the one place that reads the real clock (`SystemClock`) and a
//! manual clock tests drive by hand. Nothing else in the crate may call
//! `Instant::now` or `SystemTime::now`.

/// A source of monotonic milliseconds and wall-clock time.
pub trait Clock {
    /// Monotonic milliseconds since the clock was created; never goes backwards.
    fn now_ms(&self) -> u64;
    /// Wall-clock microseconds since the Unix epoch (for event timestamps and logs).
    fn unix_micros(&self) -> u64;
}

/// The real clock, for the reactor.
pub struct SystemClock {
    // IMPLEMENT: hold the start Instant.
}

impl SystemClock {
    pub fn new() -> SystemClock {
        todo!()
    }
}

/// A clock that moves only when a test says so.
pub struct ManualClock {
    // IMPLEMENT: Cell<u64> for ms and wall micros.
}

impl ManualClock {
    /// Starts at `now_ms` = 0 and the given wall time.
    pub fn new(unix_micros: u64) -> ManualClock {
        todo!()
    }
    /// Moves both the monotonic and the wall clock forward.
    pub fn advance_ms(&self, ms: u64) {
        todo!()
    }
}

/// Formats Unix microseconds as RFC 3339 UTC with microseconds:
/// `2026-01-15T10:30:00.123456Z`.
pub fn rfc3339_utc(unix_micros: u64) -> String {
    todo!()
}

/// Formats Unix seconds as an IMF-fixdate for the HTTP `Date` header:
/// `Sun, 06 Nov 1994 08:49:37 GMT` (RFC 9110 section 5.6.7).
pub fn http_date(unix_secs: u64) -> String {
    todo!()
}
