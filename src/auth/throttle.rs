//! Slows password guessing per client address: a few failures are free
//! (typos), then each further attempt from that address waits twice as long
//! as the one before, up to a cap. Clock-explicit: the caller passes `now`
//! and holds the attempt until `not_before` itself (it parks the request on
//! a timer; nothing sleeps).

use std::collections::HashMap;
use std::net::IpAddr;

/// Consecutive failures that cost nothing.
const FREE_FAILURES: u32 = 3;
const FIRST_DELAY_MS: u64 = 500;
const MAX_DELAY_MS: u64 = 30_000;
/// An address quiet for this long starts afresh.
const FORGET_AFTER_MS: u64 = 15 * 60 * 1000;
/// Addresses remembered at once; beyond this the stalest is forgotten, so a
/// flood of sources costs bounded memory.
pub const ADDRESSES_MAX: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Record {
    consecutive: u32,
    last_ms: u64,
}

#[derive(Debug)]
pub struct FailedLogins {
    records: HashMap<IpAddr, Record>,
    capacity: usize,
}

impl Default for FailedLogins {
    fn default() -> FailedLogins {
        FailedLogins::new(ADDRESSES_MAX)
    }
}

impl FailedLogins {
    pub fn new(capacity: usize) -> FailedLogins {
        FailedLogins {
            records: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// When the next attempt from `client` may be checked (`now` or earlier
    /// when it need not wait).
    pub fn not_before(&self, client: IpAddr, now_ms: u64) -> u64 {
        match self.records.get(&client) {
            Some(record) if now_ms.saturating_sub(record.last_ms) < FORGET_AFTER_MS => {
                record.last_ms + delay_after(record.consecutive)
            }
            _ => now_ms,
        }
    }

    /// Counts a failed attempt; returns the consecutive failures so far.
    pub fn record_failure(&mut self, client: IpAddr, now_ms: u64) -> u32 {
        if !self.records.contains_key(&client) && self.records.len() >= self.capacity {
            self.forget_stalest(now_ms);
        }
        let record = self.records.entry(client).or_insert(Record {
            consecutive: 0,
            last_ms: now_ms,
        });
        if now_ms.saturating_sub(record.last_ms) >= FORGET_AFTER_MS {
            record.consecutive = 0;
        }
        record.consecutive = record.consecutive.saturating_add(1);
        record.last_ms = record.last_ms.max(now_ms);
        record.consecutive
    }

    /// A check from `client` is about to start: when it may run, with the
    /// failure it may turn out to be counted now. Checks in progress thus
    /// count like failed ones, so guesses sent in parallel wait exactly as
    /// sequential ones would (each after the one before it); a success
    /// clears the record.
    pub fn reserve(&mut self, client: IpAddr, now_ms: u64) -> u64 {
        let not_before_ms = self.not_before(client, now_ms).max(now_ms);
        self.record_failure(client, not_before_ms);
        not_before_ms
    }

    pub fn record_success(&mut self, client: IpAddr) {
        self.records.remove(&client);
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Drops expired records, or when none has expired, the oldest one.
    fn forget_stalest(&mut self, now_ms: u64) {
        self.records
            .retain(|_, record| now_ms.saturating_sub(record.last_ms) < FORGET_AFTER_MS);
        if self.records.len() < self.capacity {
            return;
        }
        if let Some(oldest) = self
            .records
            .iter()
            .min_by_key(|(_, record)| record.last_ms)
            .map(|(address, _)| *address)
        {
            self.records.remove(&oldest);
        }
    }
}

/// The wait imposed after `failures` consecutive failures.
pub fn delay_after(failures: u32) -> u64 {
    if failures < FREE_FAILURES {
        return 0;
    }
    let doublings = (failures - FREE_FAILURES).min(16);
    (FIRST_DELAY_MS << doublings).min(MAX_DELAY_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn delays_double_after_the_free_failures_up_to_the_cap() {
        let delays: Vec<u64> = (0..12).map(delay_after).collect();
        assert_eq!(
            delays,
            [0, 0, 0, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(delay_after(u32::MAX), MAX_DELAY_MS);
    }

    #[test]
    fn failures_hold_only_their_own_address() {
        let mut failures = FailedLogins::default();
        let now = 1_000_000;
        for _ in 0..3 {
            assert_eq!(failures.not_before(ip(1), now), now);
            failures.record_failure(ip(1), now);
        }
        assert_eq!(failures.not_before(ip(1), now), now + 500);
        assert_eq!(
            failures.not_before(ip(2), now),
            now,
            "another address is not slowed"
        );
        failures.record_failure(ip(1), now + 500);
        assert_eq!(failures.not_before(ip(1), now + 500), now + 1500);
        failures.record_success(ip(1));
        assert_eq!(failures.not_before(ip(1), now + 600), now + 600);
    }

    #[test]
    fn quiet_addresses_are_forgiven() {
        let mut failures = FailedLogins::default();
        for _ in 0..10 {
            failures.record_failure(ip(1), 0);
        }
        assert!(failures.not_before(ip(1), 1) > 1);
        let later = FORGET_AFTER_MS + 1;
        assert_eq!(failures.not_before(ip(1), later), later);
        assert_eq!(
            failures.record_failure(ip(1), later),
            1,
            "the count starts afresh"
        );
    }

    #[test]
    fn memory_is_bounded_by_forgetting_the_stalest() {
        let mut failures = FailedLogins::new(3);
        for (last, at) in [(1, 10), (2, 20), (3, 30)] {
            failures.record_failure(ip(last), at);
        }
        failures.record_failure(ip(4), 40);
        assert_eq!(failures.len(), 3);
        for _ in 0..4 {
            failures.record_failure(ip(2), 50);
        }
        assert_eq!(failures.not_before(ip(1), 60), 60, "the oldest record went first");
        assert!(failures.not_before(ip(2), 60) > 60);
    }
}
