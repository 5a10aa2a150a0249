//! What operators ask about each webhook: last success, last error, and a
//! bounded list of recent deliveries with their outcome (the admin API and
//! `angos webhook test` read it). Fed from finished deliveries; sans-IO.

use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use super::event::Payload;

/// Recent deliveries kept per webhook.
pub const RECENT_DELIVERIES_MAX: usize = 100;

/// How a delivery ended, as the admin API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    Success,
    /// Failed after its retries (optional or required).
    Failed,
    /// An async delivery that exhausted its retries and was kept for redelivery.
    DeadLetter,
    /// Dropped from a full queue before it was attempted.
    Dropped,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Success => "success",
            DeliveryState::Failed => "failed",
            DeliveryState::DeadLetter => "dead_letter",
            DeliveryState::Dropped => "dropped",
        }
    }
}

/// One finished delivery.
#[derive(Debug, Clone)]
pub struct DeliveryRecord {
    /// `X-Registry-Delivery`: stable across retries of this event to this webhook.
    pub delivery_id: String,
    pub payload: Rc<Payload>,
    pub state: DeliveryState,
    pub attempts: u32,
    pub duration_ms: u64,
    /// The last HTTP status received, if any.
    pub status: Option<u16>,
    pub error: Option<String>,
    pub finished_unix_micros: u64,
    /// The last attempt's request as sent (shown with its secrets elided).
    pub request: Option<Rc<Vec<u8>>>,
}

#[derive(Debug, Default)]
pub struct WebhookStatus {
    /// Deliveries that succeeded and that failed since the start.
    pub succeeded: u64,
    pub failed: u64,
    pub last_success_unix_micros: Option<u64>,
    pub last_error: Option<(u64, String)>,
    pub recent: VecDeque<DeliveryRecord>,
}

#[derive(Debug, Default)]
pub struct StatusBook {
    webhooks: BTreeMap<String, WebhookStatus>,
}

impl StatusBook {
    pub fn record(&mut self, webhook: &str, record: DeliveryRecord) {
        let status = self.webhooks.entry(webhook.to_string()).or_default();
        match record.state {
            DeliveryState::Success => {
                status.succeeded += 1;
                status.last_success_unix_micros = Some(record.finished_unix_micros);
            }
            _ => {
                status.failed += 1;
                let error = record
                    .error
                    .clone()
                    .unwrap_or_else(|| record.state.as_str().to_string());
                status.last_error = Some((record.finished_unix_micros, error));
            }
        }
        if status.recent.len() == RECENT_DELIVERIES_MAX {
            status.recent.pop_front();
        }
        status.recent.push_back(record);
    }

    pub fn get(&self, webhook: &str) -> Option<&WebhookStatus> {
        self.webhooks.get(webhook)
    }

    /// The most recent record of a delivery id, for redelivery.
    pub fn find(&self, webhook: &str, delivery_id: &str) -> Option<&DeliveryRecord> {
        self.webhooks
            .get(webhook)?
            .recent
            .iter()
            .rev()
            .find(|record| record.delivery_id == delivery_id)
    }

    /// Forgets webhooks no longer configured.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.webhooks.retain(|name, _| keep(name));
    }
}

/// The `X-Registry-Delivery` id of an event for a webhook: derived from both,
/// so it is the same on every retry, after a restart, and on redelivery,
/// and receivers can deduplicate on it.
pub fn delivery_id(event_id: &str, webhook: &str) -> String {
    use sha2::{Digest as _, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(event_id.as_bytes());
    hasher.update(b"\n");
    hasher.update(webhook.as_bytes());
    let digest = hasher.finalize();
    crate::digest::to_lower_hex(&digest[..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event_webhook::event::EventKind;

    fn record(id: &str, state: DeliveryState, at: u64) -> DeliveryRecord {
        DeliveryRecord {
            delivery_id: id.into(),
            payload: Rc::new(Payload {
                event_id: "e".into(),
                kind: EventKind::ManifestPush,
                namespace: "a".into(),
                body: Vec::new(),
            }),
            state,
            attempts: 1,
            duration_ms: 3,
            status: Some(200),
            error: (state != DeliveryState::Success).then(|| "HTTP status 500".into()),
            finished_unix_micros: at,
            request: None,
        }
    }

    #[test]
    fn delivery_ids_are_stable_and_distinct_per_webhook() {
        assert_eq!(delivery_id("e1", "audit"), delivery_id("e1", "audit"));
        assert_ne!(delivery_id("e1", "audit"), delivery_id("e1", "slack"));
        assert_ne!(delivery_id("e1", "audit"), delivery_id("e2", "audit"));
        assert_eq!(delivery_id("e1", "audit").len(), 32);
    }

    #[test]
    fn the_book_keeps_last_outcomes_and_a_bounded_history() {
        let mut book = StatusBook::default();
        book.record("w", record("a", DeliveryState::Success, 10));
        book.record("w", record("b", DeliveryState::DeadLetter, 20));
        let status = book.get("w").unwrap();
        assert_eq!(status.last_success_unix_micros, Some(10));
        assert_eq!(status.last_error, Some((20, "HTTP status 500".into())));
        for i in 0..RECENT_DELIVERIES_MAX + 5 {
            book.record("w", record(&format!("x{i}"), DeliveryState::Success, 30));
        }
        assert_eq!(book.get("w").unwrap().recent.len(), RECENT_DELIVERIES_MAX);
        assert!(book.find("w", "a").is_none());
        assert!(book.find("w", "x104").is_some());
        book.retain(|name| name != "w");
        assert!(book.get("w").is_none());
    }
}
