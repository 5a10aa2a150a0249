//! When the next attempt goes: the exponential backoff, its jitter for `async`
//! deliveries, and the wait a receiver's `Retry-After` asks for, with their
//! bounds. Pure functions; the dispatcher decides which applies.

use crate::config::Policy;
use crate::entropy::Entropy;
use crate::http::client::RetryAfter;

/// First retry delay; doubles per attempt. Also the shortest wait a
/// `Retry-After` may ask for (0, or a date now or past): never a busy loop.
pub const RETRY_BASE_MS: u64 = 100;
/// No single retry delay exceeds this, `Retry-After` included, for
/// `required` and `optional` webhooks: a client's request waits on them.
pub const RETRY_CAP_MS: u64 = 10_000;
/// The cap on a `Retry-After` delay for an `async` webhook (10 minutes): no
/// request waits on it, but its queue does, so it still has a bound.
pub const RETRY_AFTER_ASYNC_CAP_MS: u64 = 600_000;

/// The delay before retry attempt `failed_attempts + 1`, after
/// `failed_attempts` (>= 1) attempts failed.
pub fn retry_delay_ms(failed_attempts: u32) -> u64 {
    let exponent = failed_attempts.saturating_sub(1).min(20);
    (RETRY_BASE_MS << exponent).min(RETRY_CAP_MS)
}

/// The wait a `429` or `503` asks for with its `Retry-After` (RFC 9110
/// section 10.2.3; RFC 6585 section 4), within `RETRY_BASE_MS` and the
/// policy's cap; `None` for other statuses or without a valid field (the
/// normal backoff applies). `our_unix_ms` is the reference for a date when
/// the response had no `Date` of its own.
pub fn retry_after_delay_ms(
    status: u16,
    retry_after: Option<RetryAfter>,
    policy: Policy,
    our_unix_ms: u64,
) -> Option<u64> {
    if status != 429 && status != 503 {
        return None;
    }
    let cap_ms = match policy {
        Policy::Async => RETRY_AFTER_ASYNC_CAP_MS,
        Policy::Required | Policy::Optional => RETRY_CAP_MS,
    };
    Some(retry_after?.delay_ms(our_unix_ms).clamp(RETRY_BASE_MS, cap_ms))
}

/// `delay_ms` with "equal jitter": uniformly between half of it (rounded
/// down) and all of it, so retries that failed together spread out over the
/// second half of their backoff rather than return in lockstep, and the cap
/// still holds.
pub fn jittered_delay_ms(delay_ms: u64, entropy: &mut dyn Entropy) -> u64 {
    let half = delay_ms / 2;
    let mut bytes = [0u8; 8];
    entropy.fill(&mut bytes);
    // The modulo bias is at most span / 2^64: nothing to a retry delay.
    half + u64::from_le_bytes(bytes) % (delay_ms - half + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_from_100ms_and_cap_at_10s() {
        let delays: Vec<u64> = (1..=10).map(retry_delay_ms).collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
        );
        assert_eq!(retry_delay_ms(u32::MAX), 10_000);
    }

    #[test]
    fn jitter_stays_within_half_and_all_of_the_delay() {
        let mut entropy = crate::entropy::SeededEntropy::new(1);
        for delay in [0, 1, 2, 3, 100, 10_000] {
            let draws: Vec<u64> = (0..200).map(|_| jittered_delay_ms(delay, &mut entropy)).collect();
            assert!(
                draws.iter().all(|d| (delay / 2..=delay).contains(d)),
                "{delay}: {draws:?}"
            );
            if delay >= 2 {
                assert!(draws.iter().any(|d| *d != draws[0]), "{delay}: no spread");
            }
            if (2..=3).contains(&delay) {
                assert!(
                    draws.contains(&(delay / 2)) && draws.contains(&delay),
                    "{delay}: both ends"
                );
            }
        }
    }

    #[test]
    fn retry_after_counts_on_429_and_503_within_the_floor_and_the_caps() {
        let secs = |secs| Some(RetryAfter::Seconds(secs));
        assert_eq!(
            retry_after_delay_ms(503, secs(3), Policy::Required, 0),
            Some(3_000)
        );
        assert_eq!(
            retry_after_delay_ms(429, secs(30), Policy::Optional, 0),
            Some(RETRY_CAP_MS)
        );
        assert_eq!(
            retry_after_delay_ms(503, secs(300), Policy::Async, 0),
            Some(300_000)
        );
        assert_eq!(
            retry_after_delay_ms(429, secs(86_400), Policy::Async, 0),
            Some(RETRY_AFTER_ASYNC_CAP_MS)
        );
        assert_eq!(
            retry_after_delay_ms(503, secs(0), Policy::Async, 0),
            Some(RETRY_BASE_MS)
        );
        let date = Some(RetryAfter::Date {
            unix_secs: 1_000,
            response_date: None,
        });
        assert_eq!(
            retry_after_delay_ms(503, date, Policy::Required, 997_250),
            Some(2_750)
        );
        for status in [200, 301, 410, 500, 502, 504] {
            assert_eq!(
                retry_after_delay_ms(status, secs(3), Policy::Async, 0),
                None,
                "{status}"
            );
        }
        assert_eq!(retry_after_delay_ms(503, None, Policy::Required, 0), None);
    }
}
