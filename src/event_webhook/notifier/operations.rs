//! What operators may ask of the webhooks, as data: a summary per webhook,
//! recent deliveries and dead letters, redelivery, enabling a webhook a
//! `410 Gone` disabled, and a test ping. The admin API (`app::admin`) turns
//! these into HTTP answers.

use std::rc::Rc;

use serde_json::Value;

use super::super::dispatcher::{Completed, Disabled, GateKind, Payload};
use super::super::event::{Event, EventKind};
use super::super::journal::DeadLetter;
use super::super::status::{DeliveryRecord, DeliveryState};
use super::{Notifier, Parked, Stage};
use crate::config::{Policy, WebhookConfig};
use crate::http::Response;

/// One configured webhook and how its deliveries go.
pub struct WebhookSummary<'a> {
    pub webhook: &'a WebhookConfig,
    pub queue_depth: usize,
    pub oldest_pending_secs: Option<f64>,
    pub dead_letters: usize,
    /// Deliveries that succeeded and failed since the start.
    pub succeeded: u64,
    pub failed: u64,
    pub last_success_unix_micros: Option<u64>,
    /// When (unix microseconds) and what.
    pub last_error: Option<&'a (u64, String)>,
    /// Since when and why, while a `410 Gone` keeps it disabled.
    pub disabled: Option<&'a Disabled>,
}

/// A webhook's recent deliveries (most recent first), its dead letters, and
/// how many deliveries wait.
pub struct DeliveryHistory<'a> {
    pub recent: Vec<&'a DeliveryRecord>,
    pub dead_letters: Vec<&'a DeadLetter>,
    pub pending: usize,
}

pub enum Redelivery {
    /// Queued again with its original event id.
    Queued {
        event_id: String,
    },
    UnknownWebhook,
    UnknownDelivery,
    /// The webhook is disabled: it would end at once, unattempted.
    Disabled,
}

pub enum Enabling {
    /// It was disabled since then, for that reason; it is not any more.
    Enabled(Disabled),
    WasNotDisabled,
    UnknownWebhook,
}

/// Renders a ping's outcome (`None`: it left no result) as the answer of
/// the request that asked for it.
pub type PingAnswer = fn(webhook: &str, result: Option<&Completed>) -> Response;

impl<W, C> Notifier<W, C> {
    /// A webhook's dead letters as operators mean them: one per delivery
    /// (a redelivery that failed again is not a second one), most recent
    /// first, without those a later redelivery delivered.
    fn dead_letters(&self, name: &str) -> Vec<&DeadLetter> {
        let Some(journal) = self.journal.as_ref() else {
            return Vec::new();
        };
        let mut letters: Vec<&DeadLetter> = journal
            .dead_letters()
            .filter(|letter| letter.webhook == name)
            .collect();
        letters.sort_by_key(|letter| std::cmp::Reverse(letter.number));
        let mut seen: Vec<&str> = Vec::new();
        letters.retain(|letter| {
            if seen.contains(&letter.delivery_id.as_str()) {
                return false;
            }
            seen.push(&letter.delivery_id);
            let delivered_since = self.status.get(name).is_some_and(|status| {
                status.recent.iter().any(|record| {
                    record.delivery_id == letter.delivery_id
                        && record.state == DeliveryState::Success
                        && record.finished_unix_micros >= letter.unix_micros
                })
            });
            !delivered_since
        });
        letters
    }

    fn webhook(&self, name: &str) -> Option<Rc<WebhookConfig>> {
        self.routing.webhooks().get(name).cloned()
    }

    fn queue_depth(&self, name: &str) -> usize {
        self.dispatcher
            .queue_depths()
            .into_iter()
            .find(|(queued, _)| *queued == name)
            .map_or(0, |(_, depth)| depth)
    }

    /// Every configured webhook, in configuration order.
    pub fn webhook_summaries(&self, now_ms: u64) -> Vec<WebhookSummary<'_>> {
        self.routing
            .webhooks()
            .values()
            .map(|webhook| {
                let status = self.status.get(&webhook.name);
                WebhookSummary {
                    webhook,
                    queue_depth: self.queue_depth(&webhook.name),
                    oldest_pending_secs: self
                        .dispatcher
                        .oldest_pending_ms(&webhook.name, now_ms)
                        .map(|ms| ms as f64 / 1000.0),
                    dead_letters: self.dead_letters(&webhook.name).len(),
                    succeeded: status.map_or(0, |status| status.succeeded),
                    failed: status.map_or(0, |status| status.failed),
                    last_success_unix_micros: status.and_then(|status| status.last_success_unix_micros),
                    last_error: status.and_then(|status| status.last_error.as_ref()),
                    disabled: self.dispatcher.disabled_for(webhook),
                }
            })
            .collect()
    }

    /// `None` when no webhook has that name.
    pub fn delivery_history(&self, name: &str) -> Option<DeliveryHistory<'_>> {
        self.webhook(name)?;
        Some(DeliveryHistory {
            recent: self
                .status
                .get(name)
                .map(|status| status.recent.iter().rev().collect())
                .unwrap_or_default(),
            dead_letters: self.dead_letters(name),
            pending: self.queue_depth(name),
        })
    }

    /// Queues a delivery again (a recent one, or a dead letter), with its
    /// original event id and body, so its signature and delivery id hold.
    pub fn redeliver(&mut self, name: &str, delivery_id: &str, now_ms: u64) -> Redelivery {
        let Some(webhook) = self.webhook(name) else {
            return Redelivery::UnknownWebhook;
        };
        if self.dispatcher.disabled_for(&webhook).is_some() {
            return Redelivery::Disabled;
        }
        let recent = self
            .status
            .find(name, delivery_id)
            .map(|record| record.payload.clone());
        let payload = recent.or_else(|| {
            let letter = self
                .journal
                .as_ref()?
                .dead_letters()
                .find(|letter| letter.webhook == name && letter.delivery_id == delivery_id)?;
            let namespace = serde_json::from_slice::<Value>(&letter.body)
                .ok()
                .and_then(|body| body["namespace"].as_str().map(str::to_string))
                .unwrap_or_default();
            Some(Rc::new(Payload {
                event_id: letter.event_id.clone(),
                kind: EventKind::parse_any(&letter.kind)?,
                namespace,
                body: letter.body.clone(),
            }))
        });
        let Some(payload) = payload else {
            return Redelivery::UnknownDelivery;
        };
        let event_id = payload.event_id.clone();
        // A redelivery the journal could not record still goes out from memory.
        let seq = self.journal_append(name, &payload).ok().flatten();
        self.dispatcher.enqueue_journaled(webhook, payload, seq, now_ms);
        log::info!(target: "angos::event_webhook", "webhook {name:?}: redelivery of {delivery_id} queued");
        Redelivery::Queued { event_id }
    }

    /// Lets a webhook a `410 Gone` disabled be delivered to again, from the
    /// next event on; its dead letters stay for `redeliver`.
    pub fn enable(&mut self, name: &str) -> Enabling {
        if self.webhook(name).is_none() {
            return Enabling::UnknownWebhook;
        }
        let Some(disabled) = self.dispatcher.enable(name) else {
            return Enabling::WasNotDisabled;
        };
        self.journal_enabled(name);
        log::info!(target: "angos::event_webhook", "webhook {name:?} is enabled again by the admin API");
        Enabling::Enabled(disabled)
    }

    /// Starts one `ping` attempt with the webhook's URL, token and timeout,
    /// no retry; `poll_ready` hands `waiter` the answer `answer` renders.
    /// `false` when no webhook has that name.
    pub fn ping(&mut self, waiter: W, name: &str, answer: PingAnswer, now_ms: u64) -> bool {
        let Some(webhook) = self.webhook(name) else {
            return false;
        };
        let once = Rc::new(WebhookConfig {
            max_retries: 0,
            // Whatever its policy, a ping waits for its one answer.
            policy: Policy::Optional,
            ..(*webhook).clone()
        });
        let id = crate::entropy::uuid_v4(self.entropy.as_mut());
        let payload = Rc::new(ping_payload(id, self.unix_micros));
        let gate = self
            .dispatcher
            .gate(GateKind::Optional, vec![(once, payload)], now_ms);
        self.parked.insert(
            gate,
            Parked {
                waiter,
                stage: Stage::Ping {
                    webhook: name.to_string(),
                    answer,
                },
            },
        );
        true
    }
}

/// The body of a `ping` event.
pub fn ping_payload(id: String, unix_micros: u64) -> Payload {
    let event = Event::new(id, EventKind::Ping, "", "", unix_micros);
    Payload {
        event_id: event.id.clone(),
        kind: EventKind::Ping,
        namespace: String::new(),
        body: event.to_json(),
    }
}
