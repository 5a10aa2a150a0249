//! The webhook admin API under the reserved extension namespace
//! `/v2/_angos/` (distribution-spec "Extensions"): status per webhook,
//! recent deliveries and dead letters, redelivery, and a test ping.
//! When authentication exists, only an administrator may reach it.

use std::rc::Rc;

use serde_json::{Value, json};

use super::super::dispatcher::{Completed, GateKind, Payload};
use super::super::event::{Event, EventKind};
use super::super::journal::DeadLetter;
use super::super::status::DeliveryState;
use super::{Notifier, Parked, Stage};
use crate::clock::rfc3339_utc;
use crate::config::{Policy, WebhookConfig};
use crate::http::oci_error::{ErrorCode, RegistryError};
use crate::http::{Method, Response};

/// The admin API's path prefix.
pub use crate::registry::route::ADMIN_PREFIX as PREFIX;

/// What an admin request led to.
pub enum Admin {
    Respond(Response),
    /// A test ping is under way; the answer comes from `poll_ready`.
    Parked,
}

impl<W, C> Notifier<W, C> {
    /// Handles `path` when it is under `/v2/_angos/`; `None` otherwise.
    pub fn admin(&mut self, waiter: W, method: &Method, path: &str, now_ms: u64) -> Option<Admin> {
        let rest = path.strip_prefix(PREFIX)?;
        let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        let answer = match (method, segments.as_slice()) {
            (Method::Get | Method::Head, ["webhooks"]) => Admin::Respond(self.list_webhooks(now_ms)),
            (Method::Get | Method::Head, ["webhooks", name, "deliveries"]) => {
                Admin::Respond(self.list_deliveries(name))
            }
            (Method::Post, ["webhooks", name, "deliveries", id, "redeliver"]) => {
                Admin::Respond(self.redeliver(name, id, now_ms))
            }
            (Method::Post, ["webhooks", name, "test"]) => self.ping(waiter, name, now_ms),
            (_, ["webhooks"] | ["webhooks", _, "deliveries"]) => {
                Admin::Respond(error(405, ErrorCode::Unsupported, "method not allowed"))
            }
            (_, ["webhooks", _, "deliveries", _, "redeliver"] | ["webhooks", _, "test"]) => {
                Admin::Respond(error(405, ErrorCode::Unsupported, "use POST"))
            }
            _ => Admin::Respond(error(404, ErrorCode::Unsupported, "unknown admin endpoint")),
        };
        Some(answer)
    }

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

    fn list_webhooks(&self, now_ms: u64) -> Response {
        let webhooks: Vec<Value> = self
            .routing
            .webhooks()
            .values()
            .map(|webhook| {
                let status = self.status.get(&webhook.name);
                let depth = self
                    .dispatcher
                    .queue_depths()
                    .into_iter()
                    .find(|(name, _)| *name == webhook.name)
                    .map_or(0, |(_, depth)| depth);
                let oldest = self
                    .dispatcher
                    .oldest_pending_ms(&webhook.name, now_ms)
                    .map(|ms| ms as f64 / 1000.0);
                let dead_letters = self.dead_letters(&webhook.name).len();
                json!({
                    "name": webhook.name,
                    "url": webhook.url.text,
                    "policy": webhook.policy.as_str(),
                    "events": webhook.events.iter().map(|kind| kind.as_str()).collect::<Vec<_>>(),
                    "queue_depth": depth,
                    "oldest_pending_age_seconds": oldest,
                    "dead_letters": dead_letters,
                    "last_success": status.and_then(|s| s.last_success_unix_micros).map(rfc3339_utc),
                    "last_error": status.and_then(|s| s.last_error.as_ref()).map(|(at, message)| json!({
                        "time": rfc3339_utc(*at),
                        "message": message,
                    })),
                })
            })
            .collect();
        Response::json(200, &json!({ "webhooks": webhooks }))
    }

    fn list_deliveries(&self, name: &str) -> Response {
        if self.webhook(name).is_none() {
            return unknown_webhook(name);
        }
        let deliveries: Vec<Value> = self
            .status
            .get(name)
            .map(|status| {
                status
                    .recent
                    .iter()
                    .rev()
                    .map(|record| {
                        json!({
                            "id": record.delivery_id,
                            "event_id": record.payload.event_id,
                            "kind": record.payload.kind.as_str(),
                            "status": record.state.as_str(),
                            "attempts": record.attempts,
                            "duration_ms": record.duration_ms,
                            "http_status": record.status,
                            "error": record.error,
                            "finished": rfc3339_utc(record.finished_unix_micros),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let dead_letters: Vec<Value> = self
            .dead_letters(name)
            .into_iter()
            .map(|letter| {
                json!({
                    "id": letter.delivery_id,
                    "event_id": letter.event_id,
                    "kind": letter.kind,
                    "status": DeliveryState::DeadLetter.as_str(),
                    "attempts": letter.attempts,
                    "error": letter.last_error,
                    "finished": rfc3339_utc(letter.unix_micros),
                })
            })
            .collect();
        let pending = self
            .dispatcher
            .queue_depths()
            .into_iter()
            .find(|(queued, _)| queued == name)
            .map_or(0, |(_, depth)| depth);
        Response::json(
            200,
            &json!({ "webhook": name, "pending": pending, "deliveries": deliveries, "dead_letters": dead_letters }),
        )
    }

    /// Queues a delivery again (a recent one, or a dead letter), with its
    /// original event id and body, so its signature and delivery id hold.
    fn redeliver(&mut self, name: &str, delivery_id: &str, now_ms: u64) -> Response {
        let Some(webhook) = self.webhook(name) else {
            return unknown_webhook(name);
        };
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
            return error(
                404,
                ErrorCode::Unsupported,
                &format!("no delivery {delivery_id} for webhook {name:?}"),
            );
        };
        let event_id = payload.event_id.clone();
        let seq = self.journal_append(name, &payload);
        self.dispatcher.enqueue_journaled(webhook, payload, seq, now_ms);
        log::info!(target: "angos::event_webhook", "webhook {name:?}: redelivery of {delivery_id} queued");
        Response::json(
            202,
            &json!({ "webhook": name, "delivery_id": delivery_id, "event_id": event_id, "queued": true }),
        )
    }

    /// One `ping` attempt with the webhook's URL, token and timeout, no retry.
    fn ping(&mut self, waiter: W, name: &str, now_ms: u64) -> Admin {
        let Some(webhook) = self.webhook(name) else {
            return Admin::Respond(unknown_webhook(name));
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
                },
            },
        );
        Admin::Parked
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

/// A ping's outcome as JSON: HTTP status, latency, and the failure spelled out.
pub(super) fn ping_answer(webhook: &str, result: Option<&Completed>) -> Response {
    let body = match result {
        Some(done) => json!({
            "webhook": webhook,
            "success": done.success,
            "http_status": done.status,
            "duration_ms": done.duration_ms,
            "delivery_id": done.delivery_id,
            "error": done.error,
        }),
        None => json!({ "webhook": webhook, "success": false, "error": "no result" }),
    };
    Response::json(200, &body)
}

fn unknown_webhook(name: &str) -> Response {
    error(
        404,
        ErrorCode::NameUnknown,
        &format!("no webhook named {name:?} is configured"),
    )
}

fn error(status: u16, code: ErrorCode, message: &str) -> Response {
    RegistryError::new(code, message).status(status).into_response()
}
