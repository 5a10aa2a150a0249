//! The delivery machine and dispatcher, sans-IO and clock-explicit.
//!
//! Inputs: `gate` (deliveries a parked request waits for), `enqueue` (async
//! deliveries), `handle_result` (an attempt's outcome, from the reactor) and
//! `handle_timeout(now)`. Outputs, polled in this order after any input:
//! `poll_action` (attempts to start or abort), `poll_gate` (gate outcomes,
//! each reported exactly once), `poll_completed` (finished deliveries, for
//! metrics and logs), and `poll_timeout` (the next deadline).
//!
//! Retries follow `100ms * 2^(k-1)` after the k-th failed attempt, each
//! delay capped at 10 s; `async` retries wait a random delay between half
//! and all of that (jitter, from the injected `Entropy`, so a seeded run
//! replays). A `429` or `503` with a valid `Retry-After` sets the next
//! delay instead, exactly, within a floor and a cap per policy (`backoff`
//! holds the numbers). Every
//! attempt is bounded by the webhook's `timeout_ms`. Async deliveries to one
//! webhook go out one at a time, in event order; their queue is bounded and
//! drops its oldest waiting event.
//!
//! A `410 Gone` disables its webhook at the URL that answered it: no
//! further attempt to it (deliveries backing off end at once, waiting async
//! events end unattempted, as do new ones) until `enable`, or until
//! `reconfigure` gives it another URL. Pings (`EventKind::Ping`) are tests:
//! they go out to a disabled webhook, and their 410 disables nothing.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;

use super::backoff::{jittered_delay_ms, retry_after_delay_ms, retry_delay_ms};
use super::event::EventKind;
use super::format::{self, Message};
use super::queue::{AsyncQueue, MemoryQueue, Queued};
use super::request::build_request;
use super::status::delivery_id;
use crate::config::{Policy, WebhookConfig};
use crate::entropy::{Entropy, OsEntropy};
use crate::http::client::RetryAfter;
use crate::timer::{TimerKey, TimerWheel};

pub use super::event::Payload;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryId(pub u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GateId(pub u64);

/// What the reactor must do.
#[derive(Debug)]
pub enum Action {
    /// Send `request` to the webhook's endpoint, then report with `handle_result`.
    Send {
        delivery: DeliveryId,
        webhook: Rc<WebhookConfig>,
        request: Rc<Vec<u8>>,
    },
    /// The attempt ran out of time: drop its connection; no result is expected.
    Abort { delivery: DeliveryId },
}

/// How an attempt ended, as the transport saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// A complete response: its status, and its `Retry-After` when valid.
    Answered {
        status: u16,
        retry_after: Option<RetryAfter>,
    },
    /// No usable response: connect, DNS, TLS or framing failure, spelled out.
    Failed(String),
}

impl AttemptResult {
    /// An answer without `Retry-After`.
    pub fn status(status: u16) -> AttemptResult {
        AttemptResult::Answered {
            status,
            retry_after: None,
        }
    }
}

/// A webhook a `410 Gone` disabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disabled {
    /// The URL that answered 410: a definition with another URL is not disabled.
    pub url: String,
    pub since_unix_micros: u64,
    /// What happened, for the admin API and the journal (never the URL,
    /// which may hold a secret: it also reaches refused clients).
    pub reason: String,
}

impl Disabled {
    /// The error of a delivery ended or skipped because of it.
    pub fn error(&self) -> String {
        format!(
            "webhook disabled since {} ({}); enable it again or change its URL",
            crate::clock::rfc3339_utc(self.since_unix_micros),
            self.reason
        )
    }
}

/// What `reconfigure` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconfigured {
    /// Waiting async events dropped: their webhook is gone or no longer async.
    pub dropped: usize,
    /// Disabled webhooks enabled again: gone, or given another URL.
    pub enabled: Vec<(String, Disabled)>,
}

/// A gate's verdict, reported once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateOutcome {
    Passed,
    /// A required webhook failed after its retries.
    Failed {
        webhook: String,
        reason: String,
    },
}

/// Whether a gate fails fast (required) or waits for all (optional).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateKind {
    Required,
    Optional,
}

/// A finished delivery, for metrics and logs.
#[derive(Debug, Clone, PartialEq)]
pub struct Completed {
    pub webhook: String,
    pub policy: Policy,
    pub kind: EventKind,
    pub event_id: String,
    pub success: bool,
    pub attempts: u32,
    pub duration_ms: u64,
    /// The last failure, when `success` is false.
    pub error: Option<String>,
    /// The last HTTP status received, if any attempt got one.
    pub status: Option<u16>,
    /// `X-Registry-Delivery`, stable across retries.
    pub delivery_id: String,
    pub payload: Rc<Payload>,
    /// The journal record of an async delivery.
    pub seq: Option<u64>,
    /// The gate a gated delivery belonged to.
    pub gate: Option<GateId>,
    /// Its `410 Gone` disabled the webhook (the first such answer does).
    pub gone: bool,
    /// It ended unattempted (`attempts` 0) or before its next retry because
    /// its webhook is disabled.
    pub disabled: bool,
    /// The last attempt's request as it was sent, when one was.
    pub request: Option<Rc<Vec<u8>>>,
}

/// How a delivery ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Delivered,
    Failed,
    /// Its 410 disabled the webhook.
    Gone,
    /// Its webhook is disabled: cut short, or never attempted.
    Disabled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerKind {
    /// The wait before the next attempt is over.
    Retry,
    /// The attempt in flight ran out of time.
    AttemptTimeout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Gate(GateId),
    Async,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    InFlight,
    Backoff,
}

struct Delivery {
    webhook: Rc<WebhookConfig>,
    payload: Rc<Payload>,
    seq: Option<u64>,
    delivery_id: String,
    last_status: Option<u16>,
    /// Built once: every attempt sends the same body (the same event id and
    /// token signature); only a Standard Webhooks timestamp changes.
    message: Rc<Message>,
    /// The request of the last attempt, resent as is unless the webhook signs
    /// with `signing_secrets` (whose timestamp is the attempt's).
    request: Option<Rc<Vec<u8>>>,
    owner: Owner,
    state: State,
    attempts: u32,
    started_ms: u64,
    timer: Option<TimerKey>,
    last_error: Option<String>,
}

struct Gate {
    kind: GateKind,
    pending: usize,
    reported: bool,
}

pub struct Dispatcher {
    deliveries: HashMap<DeliveryId, Delivery>,
    gates: HashMap<GateId, Gate>,
    queue: MemoryQueue,
    /// The delivery in flight per async webhook (one at a time keeps order).
    async_in_flight: BTreeMap<String, DeliveryId>,
    timers: TimerWheel<(DeliveryId, TimerKind)>,
    actions: VecDeque<Action>,
    gate_outcomes: VecDeque<(GateId, GateOutcome)>,
    completed: VecDeque<Completed>,
    next_delivery: u64,
    next_gate: u64,
    /// Events dropped from full async queues, per webhook, since start.
    dropped: BTreeMap<String, u64>,
    /// Unix time minus the monotonic clock (ms), for the time attempts are
    /// signed at; set by `set_wall_clock`.
    unix_offset_ms: i64,
    /// Webhooks a 410 disabled, by name.
    disabled: BTreeMap<String, Disabled>,
    /// Each configured webhook's URL, from `reconfigure`: a 410 from another
    /// URL (an attempt that started before a reload), or for a webhook no
    /// longer configured, disables nothing. `None` before any `reconfigure`
    /// (a lone ping, a unit test): every 410 counts.
    urls: Option<BTreeMap<String, String>>,
    /// Where async retry jitter comes from.
    entropy: Box<dyn Entropy>,
}

impl Dispatcher {
    pub fn new(now_ms: u64, queue_length: usize) -> Dispatcher {
        Dispatcher {
            deliveries: HashMap::new(),
            gates: HashMap::new(),
            queue: MemoryQueue::new(queue_length),
            async_in_flight: BTreeMap::new(),
            timers: TimerWheel::new(now_ms),
            actions: VecDeque::new(),
            gate_outcomes: VecDeque::new(),
            completed: VecDeque::new(),
            next_delivery: 0,
            next_gate: 0,
            dropped: BTreeMap::new(),
            unix_offset_ms: 0,
            disabled: BTreeMap::new(),
            urls: None,
            entropy: Box::new(OsEntropy),
        }
    }

    /// Draws async retry jitter from `entropy` (a seeded one replays a run).
    pub fn set_entropy(&mut self, entropy: Box<dyn Entropy>) {
        self.entropy = entropy;
    }

    /// Tells the wall-clock time that goes with `now_ms` (the monotonic
    /// clock the rest of the machine runs on), for signature timestamps and
    /// `Retry-After` dates.
    pub fn set_wall_clock(&mut self, now_ms: u64, unix_micros: u64) {
        self.unix_offset_ms = (unix_micros / 1000) as i64 - now_ms as i64;
    }

    fn unix_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_add_signed(self.unix_offset_ms)
    }

    /// Starts one delivery per item, all at once; the gate reports when its
    /// verdict is known. An empty gate passes at once.
    pub fn gate(
        &mut self,
        kind: GateKind,
        items: Vec<(Rc<WebhookConfig>, Rc<Payload>)>,
        now_ms: u64,
    ) -> GateId {
        self.next_gate += 1;
        let id = GateId(self.next_gate);
        self.gates.insert(
            id,
            Gate {
                kind,
                pending: items.len(),
                reported: false,
            },
        );
        if items.is_empty() {
            self.report_gate(id, GateOutcome::Passed);
        }
        for (webhook, payload) in items {
            self.start_delivery(webhook, payload, Owner::Gate(id), now_ms);
        }
        id
    }

    /// Queues an async delivery. When the webhook's queue is full its oldest
    /// waiting event is dropped and returned (the caller logs and counts it).
    pub fn enqueue(
        &mut self,
        webhook: Rc<WebhookConfig>,
        payload: Rc<Payload>,
        now_ms: u64,
    ) -> Option<Rc<Payload>> {
        self.enqueue_journaled(webhook, payload, None, now_ms)
    }

    /// `enqueue` for an event recorded in the journal as `seq`.
    pub fn enqueue_journaled(
        &mut self,
        webhook: Rc<WebhookConfig>,
        payload: Rc<Payload>,
        seq: Option<u64>,
        now_ms: u64,
    ) -> Option<Rc<Payload>> {
        self.enqueue_aged(webhook, payload, seq, 0, now_ms)
    }

    /// `enqueue_journaled` for an event that has already waited `age_ms`
    /// (recovered after a restart): its pending age counts from the event.
    pub fn enqueue_aged(
        &mut self,
        webhook: Rc<WebhookConfig>,
        payload: Rc<Payload>,
        seq: Option<u64>,
        age_ms: u64,
        now_ms: u64,
    ) -> Option<Rc<Payload>> {
        let name = webhook.name.clone();
        let item = Queued {
            payload,
            seq,
            enqueued_ms: now_ms,
            waited_before_ms: age_ms,
        };
        let dropped = self.queue.push(webhook, item).map(|item| item.payload);
        if dropped.is_some() {
            *self.dropped.entry(name.clone()).or_default() += 1;
        }
        self.start_next_async(&name, now_ms);
        dropped
    }

    /// Removes a waiting async event the journal gave up on (its disk bound).
    pub fn remove_queued(&mut self, webhook: &str, seq: u64) -> bool {
        self.queue.remove_seq(webhook, seq)
    }

    /// The first journal seq among a webhook's queued events: everything of
    /// that webhook journaled before it is done with.
    pub fn queue_first_seq(&self, webhook: &str) -> Option<u64> {
        self.queue.first_seq(webhook)
    }

    /// How long the oldest queued event of a webhook has waited.
    pub fn oldest_pending_ms(&self, webhook: &str, now_ms: u64) -> Option<u64> {
        let head = self.queue.front(webhook)?;
        Some(now_ms.saturating_sub(head.enqueued_ms) + head.waited_before_ms)
    }

    pub fn set_queue_length(&mut self, length_max: usize) {
        self.queue.set_length_max(length_max);
    }

    /// Applies a new configuration to waiting async events: they go out with
    /// the webhook's new definition, or are dropped (and counted) when it is
    /// gone or no longer async. A disabled webhook that is gone or has
    /// another URL is enabled again. Deliveries already in flight finish on
    /// the definition they started with.
    pub fn reconfigure(&mut self, webhooks: &BTreeMap<String, Rc<WebhookConfig>>) -> Reconfigured {
        let mut done = Reconfigured::default();
        for name in self.queue.webhooks() {
            match webhooks.get(&name) {
                Some(webhook) if webhook.policy == Policy::Async => {
                    self.queue.set_webhook(&name, webhook.clone())
                }
                _ => done.dropped += self.queue.remove_webhook(&name),
            }
        }
        let urls: BTreeMap<String, String> = webhooks
            .iter()
            .map(|(name, webhook)| (name.clone(), webhook.url.text.clone()))
            .collect();
        let moved: Vec<String> = self
            .disabled
            .iter()
            .filter(|(name, disabled)| urls.get(*name) != Some(&disabled.url))
            .map(|(name, _)| name.clone())
            .collect();
        self.urls = Some(urls);
        for name in moved {
            if let Some(disabled) = self.disabled.remove(&name) {
                done.enabled.push((name, disabled));
            }
        }
        done
    }

    /// Disables a webhook at `disabled.url` (a 410, or one recovered from
    /// the journal): deliveries backing off for it end now, and its waiting
    /// async events end unattempted. `false` when it already was.
    pub fn disable(&mut self, name: &str, disabled: Disabled, now_ms: u64) -> bool {
        if self.disabled.get(name) == Some(&disabled) {
            return false;
        }
        self.disabled.insert(name.to_string(), disabled);
        self.stop(name, now_ms);
        true
    }

    /// Ends what a newly disabled webhook has backing off or waiting.
    fn stop(&mut self, name: &str, now_ms: u64) {
        let mut waiting: Vec<DeliveryId> = self
            .deliveries
            .iter()
            .filter(|(_, delivery)| delivery.state == State::Backoff && self.stops(delivery))
            .map(|(id, _)| *id)
            .collect();
        // By id, not by hash order: completions come out in a replayable order.
        waiting.sort();
        for id in waiting {
            if let Some(key) = self
                .deliveries
                .get_mut(&id)
                .and_then(|delivery| delivery.timer.take())
            {
                self.timers.cancel(key);
            }
            self.finish(id, Ending::Disabled, now_ms);
        }
        self.start_next_async(name, now_ms);
    }

    /// Lets a disabled webhook be delivered to again; returns what it was.
    /// Its dead letters stay where they are (redelivery is the operator's).
    pub fn enable(&mut self, name: &str) -> Option<Disabled> {
        self.disabled.remove(name)
    }

    /// The disabled webhooks, by name, with the URL each was disabled at.
    pub fn disabled(&self) -> &BTreeMap<String, Disabled> {
        &self.disabled
    }

    /// Why deliveries with this definition are not attempted, if they are not.
    pub fn disabled_for(&self, webhook: &WebhookConfig) -> Option<&Disabled> {
        self.disabled
            .get(&webhook.name)
            .filter(|disabled| disabled.url == webhook.url.text)
    }

    /// A delivery its webhook's disabled state stops (never a ping).
    fn stops(&self, delivery: &Delivery) -> bool {
        delivery.payload.kind != EventKind::Ping && self.disabled_for(&delivery.webhook).is_some()
    }

    pub fn handle_result(&mut self, id: DeliveryId, result: AttemptResult, now_ms: u64) {
        let Some(delivery) = self.deliveries.get_mut(&id) else {
            return; // Aborted (timed out) earlier: the late result is moot.
        };
        if delivery.state != State::InFlight {
            return;
        }
        if let Some(key) = delivery.timer.take() {
            self.timers.cancel(key);
        }
        match result {
            AttemptResult::Answered { status, .. } if (200..300).contains(&status) => {
                delivery.last_status = Some(status);
                self.finish(id, Ending::Delivered, now_ms)
            }
            AttemptResult::Answered { status: 410, .. } if delivery.payload.kind != EventKind::Ping => {
                delivery.last_status = Some(410);
                self.gone(id, now_ms)
            }
            AttemptResult::Answered { status, retry_after } => {
                delivery.last_status = Some(status);
                let policy = delivery.webhook.policy;
                let wait_ms = retry_after_delay_ms(status, retry_after, policy, self.unix_ms(now_ms));
                // 3xx included: redirects are not followed (SPEC section 5).
                self.attempt_failed(id, format!("HTTP status {status}"), wait_ms, now_ms)
            }
            AttemptResult::Failed(reason) => self.attempt_failed(id, reason, None, now_ms),
        }
    }

    /// A `410 Gone`: the receiver says the endpoint will not come back, so
    /// it is not retried, and the webhook is disabled at that URL unless the
    /// URL is no longer its own (a reload moved it) or it already is.
    fn gone(&mut self, id: DeliveryId, now_ms: u64) {
        let Some(delivery) = self.deliveries.get_mut(&id) else {
            return;
        };
        delivery.last_error = Some("HTTP status 410 (Gone)".to_string());
        let name = delivery.webhook.name.clone();
        let url = delivery.webhook.url.text.clone();
        let moved = self
            .urls
            .as_ref()
            .is_some_and(|urls| urls.get(&name) != Some(&url));
        if moved
            || self
                .disabled
                .get(&name)
                .is_some_and(|disabled| disabled.url == url)
        {
            self.finish(id, Ending::Failed, now_ms);
            return;
        }
        let disabled = Disabled {
            url,
            since_unix_micros: self.unix_ms(now_ms).saturating_mul(1000),
            reason: "it answered 410 Gone".to_string(),
        };
        // Disabled first: finishing the async head starts the next event,
        // which must end unattempted rather than go out.
        self.disabled.insert(name.clone(), disabled);
        self.finish(id, Ending::Gone, now_ms);
        self.stop(&name, now_ms);
    }

    pub fn handle_timeout(&mut self, now_ms: u64) {
        let mut fired = Vec::new();
        self.timers.poll(now_ms, &mut fired);
        for (id, kind) in fired {
            let Some(delivery) = self.deliveries.get_mut(&id) else {
                continue;
            };
            delivery.timer = None;
            match (kind, delivery.state) {
                (TimerKind::Retry, State::Backoff) => self.send_attempt(id, now_ms),
                (TimerKind::AttemptTimeout, State::InFlight) => {
                    let timeout_ms = delivery.webhook.timeout_ms;
                    self.actions.push_back(Action::Abort { delivery: id });
                    self.attempt_failed(id, format!("timed out after {timeout_ms} ms"), None, now_ms);
                }
                _ => {}
            }
        }
        debug_assert!(
            self.timers
                .next_deadline()
                .is_none_or(|deadline| deadline > now_ms),
            "a timer at or before now survived handle_timeout"
        );
    }

    pub fn poll_timeout(&self) -> Option<u64> {
        self.timers.next_deadline()
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn poll_gate(&mut self) -> Option<(GateId, GateOutcome)> {
        self.gate_outcomes.pop_front()
    }

    pub fn poll_completed(&mut self) -> Option<Completed> {
        self.completed.pop_front()
    }

    /// A finished delivery of `gate` not yet polled (a gate's outcome is
    /// reported after its deliveries' completions are queued).
    pub fn find_completed(&self, gate: GateId) -> Option<&Completed> {
        self.completed.iter().find(|done| done.gate == Some(gate))
    }

    /// Async events waiting or in flight, for all webhooks.
    pub fn async_pending(&self) -> usize {
        self.queue.total()
    }

    /// Deliveries not yet finished (gated and async in flight or backing off).
    pub fn in_flight(&self) -> usize {
        self.deliveries.len()
    }

    /// Queue depth per async webhook (waiting plus in flight), by name.
    pub fn queue_depths(&self) -> Vec<(String, usize)> {
        self.queue.depths()
    }

    pub fn dropped_counts(&self) -> &BTreeMap<String, u64> {
        &self.dropped
    }

    /// Starts the head of a webhook's queue when nothing of it is in
    /// flight; while the webhook is disabled, its events end unattempted
    /// instead, one after the other (a loop, not recursion: the queue may
    /// hold thousands).
    fn start_next_async(&mut self, name: &str, now_ms: u64) {
        while !self.async_in_flight.contains_key(name) {
            let Some((webhook, item)) = self.queue.start_front(name) else {
                return;
            };
            if let Some(disabled) = self.disabled_for(&webhook) {
                let error = disabled.error();
                self.queue.pop_front(name);
                self.skip(&webhook, item.payload, item.seq, Owner::Async, error);
                continue;
            }
            let id = self.start_delivery_with_seq(webhook, item.payload, item.seq, Owner::Async, now_ms);
            self.async_in_flight.insert(name.to_string(), id);
        }
    }

    /// Starts a gated delivery, or ends it unattempted when its webhook is
    /// disabled (a ping goes out regardless).
    fn start_delivery(
        &mut self,
        webhook: Rc<WebhookConfig>,
        payload: Rc<Payload>,
        owner: Owner,
        now_ms: u64,
    ) {
        let disabled = self
            .disabled_for(&webhook)
            .filter(|_| payload.kind != EventKind::Ping)
            .map(Disabled::error);
        let Some(error) = disabled else {
            self.start_delivery_with_seq(webhook, payload, None, owner, now_ms);
            return;
        };
        let name = webhook.name.clone();
        self.skip(&webhook, payload, None, owner, error.clone());
        if let Owner::Gate(gate) = owner {
            self.gate_done(gate, &name, false, Some(error));
        }
    }

    /// Records a delivery that ends unattempted because its webhook is disabled.
    fn skip(
        &mut self,
        webhook: &WebhookConfig,
        payload: Rc<Payload>,
        seq: Option<u64>,
        owner: Owner,
        error: String,
    ) {
        self.completed.push_back(Completed {
            webhook: webhook.name.clone(),
            policy: webhook.policy,
            kind: payload.kind,
            event_id: payload.event_id.clone(),
            success: false,
            attempts: 0,
            duration_ms: 0,
            error: Some(error),
            status: None,
            delivery_id: delivery_id(&payload.event_id, &webhook.name),
            payload,
            seq,
            gate: match owner {
                Owner::Gate(gate) => Some(gate),
                Owner::Async => None,
            },
            gone: false,
            disabled: true,

            request: None,
        });
    }

    fn start_delivery_with_seq(
        &mut self,
        webhook: Rc<WebhookConfig>,
        payload: Rc<Payload>,
        seq: Option<u64>,
        owner: Owner,
        now_ms: u64,
    ) -> DeliveryId {
        self.next_delivery += 1;
        let id = DeliveryId(self.next_delivery);
        let delivery_id = delivery_id(&payload.event_id, &webhook.name);
        let message = Rc::new(format::render(&webhook, &payload));
        self.deliveries.insert(
            id,
            Delivery {
                webhook,
                payload,
                seq,
                delivery_id,
                last_status: None,
                message,
                request: None,
                owner,
                state: State::Backoff,
                attempts: 0,
                started_ms: now_ms,
                timer: None,
                last_error: None,
            },
        );
        self.send_attempt(id, now_ms);
        id
    }

    fn send_attempt(&mut self, id: DeliveryId, now_ms: u64) {
        let Some(delivery) = self.deliveries.get_mut(&id) else {
            return;
        };
        delivery.attempts += 1;
        delivery.state = State::InFlight;
        let deadline = now_ms + delivery.webhook.timeout_ms;
        delivery.timer = Some(self.timers.insert(deadline, (id, TimerKind::AttemptTimeout)));
        log::debug!(
            target: "angos::event_webhook",
            "webhook {:?}: {} attempt {} of {} for event {}",
            delivery.webhook.name,
            delivery.payload.kind,
            delivery.attempts,
            delivery.webhook.max_retries + 1,
            delivery.payload.event_id
        );
        let request = match &delivery.request {
            Some(request) if delivery.webhook.signing_secrets.is_empty() => request.clone(),
            _ => {
                let unix_secs = now_ms.saturating_add_signed(self.unix_offset_ms) / 1000;
                let request = Rc::new(build_request(
                    &delivery.webhook,
                    &delivery.payload,
                    &delivery.message,
                    &delivery.delivery_id,
                    unix_secs,
                ));
                delivery.request = Some(request.clone());
                request
            }
        };
        self.actions.push_back(Action::Send {
            delivery: id,
            webhook: delivery.webhook.clone(),
            request,
        });
    }

    /// An attempt failed: retry after `wait_ms` (a `Retry-After`) or the
    /// backoff, unless the attempts are used up or the webhook is disabled.
    fn attempt_failed(&mut self, id: DeliveryId, reason: String, wait_ms: Option<u64>, now_ms: u64) {
        let stopped = self
            .deliveries
            .get(&id)
            .is_some_and(|delivery| self.stops(delivery));
        let Some(delivery) = self.deliveries.get_mut(&id) else {
            return;
        };
        log::debug!(
            target: "angos::event_webhook",
            "webhook {:?}: attempt {} for event {} failed: {reason}",
            delivery.webhook.name,
            delivery.attempts,
            delivery.payload.event_id
        );
        delivery.last_error = Some(reason);
        if delivery.attempts > delivery.webhook.max_retries {
            self.finish(id, Ending::Failed, now_ms);
            return;
        }
        if stopped {
            self.finish(id, Ending::Disabled, now_ms);
            return;
        }
        delivery.state = State::Backoff;
        let delay_ms = match (wait_ms, delivery.owner) {
            (Some(wait_ms), _) => wait_ms,
            (None, Owner::Async) => {
                jittered_delay_ms(retry_delay_ms(delivery.attempts), self.entropy.as_mut())
            }
            (None, Owner::Gate(_)) => retry_delay_ms(delivery.attempts),
        };
        delivery.timer = Some(self.timers.insert(now_ms + delay_ms, (id, TimerKind::Retry)));
    }

    fn finish(&mut self, id: DeliveryId, ending: Ending, now_ms: u64) {
        let Some(mut delivery) = self.deliveries.remove(&id) else {
            return;
        };
        if let Some(key) = delivery.timer.take() {
            self.timers.cancel(key);
        }
        let success = ending == Ending::Delivered;
        if ending == Ending::Disabled
            && let Some(disabled) = self.disabled_for(&delivery.webhook)
        {
            delivery.last_error = Some(disabled.error());
        }
        let error = if success { None } else { delivery.last_error.take() };
        self.completed.push_back(Completed {
            webhook: delivery.webhook.name.clone(),
            policy: delivery.webhook.policy,
            kind: delivery.payload.kind,
            event_id: delivery.payload.event_id.clone(),
            success,
            attempts: delivery.attempts,
            duration_ms: now_ms.saturating_sub(delivery.started_ms),
            error: error.clone(),
            status: delivery.last_status,
            delivery_id: delivery.delivery_id.clone(),
            payload: delivery.payload.clone(),
            seq: delivery.seq,
            gate: match delivery.owner {
                Owner::Gate(gate) => Some(gate),
                Owner::Async => None,
            },
            gone: ending == Ending::Gone,
            disabled: ending == Ending::Disabled,
            request: delivery.request.clone(),
        });
        match delivery.owner {
            Owner::Gate(gate_id) => self.gate_done(gate_id, &delivery.webhook.name, success, error),
            Owner::Async => {
                let name = delivery.webhook.name.clone();
                self.async_in_flight.remove(&name);
                self.queue.pop_front(&name);
                self.start_next_async(&name, now_ms);
            }
        }
    }

    /// One delivery of a gate ended; reports the verdict once it is known.
    fn gate_done(&mut self, gate_id: GateId, webhook: &str, success: bool, error: Option<String>) {
        let Some(gate) = self.gates.get_mut(&gate_id) else {
            return;
        };
        gate.pending -= 1;
        let verdict = match (gate.kind, success) {
            (GateKind::Required, false) => Some(GateOutcome::Failed {
                webhook: webhook.to_string(),
                reason: error.unwrap_or_default(),
            }),
            _ if gate.pending == 0 => Some(GateOutcome::Passed),
            _ => None,
        };
        let done = gate.pending == 0;
        if let Some(verdict) = verdict {
            self.report_gate(gate_id, verdict);
        }
        if done {
            self.gates.remove(&gate_id);
        }
    }

    fn report_gate(&mut self, id: GateId, outcome: GateOutcome) {
        if let Some(gate) = self.gates.get_mut(&id)
            && !gate.reported
        {
            gate.reported = true;
            self.gate_outcomes.push_back((id, outcome));
        }
        if self.gates.get(&id).is_some_and(|gate| gate.pending == 0) {
            self.gates.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_sources;

    fn webhook(name: &str, policy: &str, extra: &str) -> Rc<WebhookConfig> {
        let text = format!(
            "[event_webhook.{name}]\nurl = \"http://127.0.0.1:9/{name}\"\npolicy = \"{policy}\"\nevents = [\"manifest.push\"]\n{extra}"
        );
        let config = load_sources(&[("t.toml".into(), text)]).unwrap().config;
        Rc::new(config.webhooks[name].clone())
    }

    fn payload(id: &str) -> Rc<Payload> {
        Rc::new(Payload {
            event_id: id.into(),
            kind: EventKind::ManifestPush,
            namespace: "a".into(),
            body: format!("{{\"id\":\"{id}\"}}").into_bytes(),
        })
    }

    /// Drains actions: the deliveries asked to be sent (aborts dropped).
    fn sends(dispatcher: &mut Dispatcher) -> Vec<DeliveryId> {
        let mut ids = Vec::new();
        while let Some(action) = dispatcher.poll_action() {
            if let Action::Send { delivery, .. } = action {
                ids.push(delivery);
            }
        }
        ids
    }

    #[test]
    fn failed_attempts_are_retried_at_the_exact_delays() {
        let hook = webhook("audit", "required", "max_retries = 3");
        let mut dispatcher = Dispatcher::new(0, 10);
        let gate = dispatcher.gate(GateKind::Required, vec![(hook, payload("e1"))], 0);
        let mut now = 0;
        let mut attempt_times = Vec::new();
        loop {
            let sent = sends(&mut dispatcher);
            if sent.is_empty() {
                match dispatcher.poll_timeout() {
                    Some(deadline) => {
                        now = deadline;
                        dispatcher.handle_timeout(now);
                        continue;
                    }
                    None => break,
                }
            }
            for id in sent {
                attempt_times.push(now);
                dispatcher.handle_result(id, AttemptResult::status(503), now);
            }
        }
        assert_eq!(attempt_times, [0, 100, 300, 700]);
        assert_eq!(
            dispatcher.poll_gate(),
            Some((
                gate,
                GateOutcome::Failed {
                    webhook: "audit".into(),
                    reason: "HTTP status 503".into()
                }
            ))
        );
        assert_eq!(dispatcher.poll_gate(), None, "reported exactly once");
        let completed = dispatcher.poll_completed().unwrap();
        assert!(!completed.success);
        assert_eq!(completed.attempts, 4);
        assert_eq!(completed.duration_ms, 700);
    }

    #[test]
    fn an_attempt_that_hangs_times_out_and_is_aborted() {
        let hook = webhook("slow", "optional", "timeout_ms = 250\nmax_retries = 1");
        let mut dispatcher = Dispatcher::new(1000, 10);
        let gate = dispatcher.gate(GateKind::Optional, vec![(hook, payload("e1"))], 1000);
        assert_eq!(sends(&mut dispatcher).len(), 1);
        // The wheel may wake earlier to cascade, never later.
        assert!(dispatcher.poll_timeout().unwrap() <= 1250);
        dispatcher.handle_timeout(1249);
        assert!(dispatcher.poll_action().is_none());
        dispatcher.handle_timeout(1250);
        assert!(matches!(dispatcher.poll_action(), Some(Action::Abort { .. })));
        // Retry after 100 ms, then the second attempt also hangs.
        assert!(dispatcher.poll_timeout().unwrap() <= 1350);
        dispatcher.handle_timeout(1349);
        assert!(dispatcher.poll_action().is_none());
        dispatcher.handle_timeout(1350);
        let second = sends(&mut dispatcher);
        assert_eq!(second.len(), 1);
        dispatcher.handle_timeout(1600);
        assert!(matches!(dispatcher.poll_action(), Some(Action::Abort { .. })));
        // A late answer for an aborted attempt changes nothing.
        dispatcher.handle_result(second[0], AttemptResult::status(200), 1601);
        assert_eq!(dispatcher.poll_gate(), Some((gate, GateOutcome::Passed)));
        let completed = dispatcher.poll_completed().unwrap();
        assert_eq!((completed.success, completed.attempts), (false, 2));
        assert_eq!(completed.error.as_deref(), Some("timed out after 250 ms"));
        assert_eq!(dispatcher.poll_timeout(), None);
    }

    #[test]
    fn deliveries_of_one_event_run_concurrently_and_required_fails_fast() {
        let a = webhook("a", "required", "max_retries = 0");
        let b = webhook("b", "required", "max_retries = 0");
        let mut dispatcher = Dispatcher::new(0, 10);
        let event = payload("e1");
        let gate = dispatcher.gate(GateKind::Required, vec![(a, event.clone()), (b, event)], 0);
        let sent = sends(&mut dispatcher);
        assert_eq!(sent.len(), 2, "both attempts start before either answers");
        dispatcher.handle_result(sent[1], AttemptResult::Failed("connection refused".into()), 5);
        assert_eq!(
            dispatcher.poll_gate(),
            Some((
                gate,
                GateOutcome::Failed {
                    webhook: "b".into(),
                    reason: "connection refused".into()
                }
            ))
        );
        dispatcher.handle_result(sent[0], AttemptResult::status(200), 9);
        assert_eq!(dispatcher.poll_gate(), None);
        assert_eq!(dispatcher.in_flight(), 0);
    }

    #[test]
    fn required_passes_when_all_answer_2xx_and_3xx_is_a_failure() {
        let a = webhook("a", "required", "max_retries = 0");
        let b = webhook("b", "required", "max_retries = 0");
        let mut dispatcher = Dispatcher::new(0, 10);
        let gate = dispatcher.gate(
            GateKind::Required,
            vec![(a.clone(), payload("1")), (b, payload("1"))],
            0,
        );
        let sent = sends(&mut dispatcher);
        dispatcher.handle_result(sent[0], AttemptResult::status(204), 1);
        assert_eq!(dispatcher.poll_gate(), None, "one of two answered");
        dispatcher.handle_result(sent[1], AttemptResult::status(200), 2);
        assert_eq!(dispatcher.poll_gate(), Some((gate, GateOutcome::Passed)));

        let redirected = dispatcher.gate(GateKind::Required, vec![(a, payload("2"))], 3);
        let sent = sends(&mut dispatcher);
        dispatcher.handle_result(sent[0], AttemptResult::status(302), 4);
        assert!(matches!(dispatcher.poll_gate(), Some((id, GateOutcome::Failed { .. })) if id == redirected));
    }

    #[test]
    fn optional_gates_pass_even_when_deliveries_fail() {
        let hook = webhook("o", "optional", "");
        let mut dispatcher = Dispatcher::new(0, 10);
        let gate = dispatcher.gate(GateKind::Optional, vec![(hook, payload("1"))], 0);
        let sent = sends(&mut dispatcher);
        dispatcher.handle_result(sent[0], AttemptResult::status(500), 1);
        assert_eq!(dispatcher.poll_gate(), Some((gate, GateOutcome::Passed)));
        assert!(!dispatcher.poll_completed().unwrap().success);
    }

    #[test]
    fn async_deliveries_go_one_at_a_time_in_order() {
        let hook = webhook("q", "async", "max_retries = 1");
        let mut dispatcher = Dispatcher::new(0, 10);
        for id in ["1", "2", "3"] {
            assert!(dispatcher.enqueue(hook.clone(), payload(id), 0).is_none());
        }
        let mut order = Vec::new();
        let mut now = 0;
        while dispatcher.async_pending() > 0 {
            while let Some(action) = dispatcher.poll_action() {
                if let Action::Send {
                    delivery, request, ..
                } = action
                {
                    let text = String::from_utf8_lossy(&request).to_string();
                    order.push(text[text.len() - 10..].to_string());
                    // The first attempt of event 2 fails; its retry keeps the order.
                    let status = if order.len() == 2 { 500 } else { 200 };
                    dispatcher.handle_result(delivery, AttemptResult::status(status), now);
                }
            }
            if let Some(deadline) = dispatcher.poll_timeout() {
                now = deadline;
                dispatcher.handle_timeout(now);
            }
        }
        assert_eq!(
            order,
            [
                "{\"id\":\"1\"}",
                "{\"id\":\"2\"}",
                "{\"id\":\"2\"}",
                "{\"id\":\"3\"}"
            ]
        );
    }

    #[test]
    fn a_full_async_queue_drops_its_oldest_waiting_event() {
        let hook = webhook("q", "async", "");
        let mut dispatcher = Dispatcher::new(0, 3);
        for id in ["1", "2", "3"] {
            assert!(dispatcher.enqueue(hook.clone(), payload(id), 0).is_none());
        }
        // "1" is in flight, so "2" is the oldest waiting one.
        let dropped = dispatcher.enqueue(hook.clone(), payload("4"), 0).unwrap();
        assert_eq!(dropped.event_id, "2");
        assert_eq!(dispatcher.queue_depths(), [("q".to_string(), 3)]);
        assert_eq!(dispatcher.dropped_counts()["q"], 1);
    }

    #[test]
    fn signed_requests_carry_the_documented_headers() {
        let hook = webhook("s", "optional", "token = \"test-secret\"");
        let mut dispatcher = Dispatcher::new(0, 3);
        let event = Rc::new(Payload {
            event_id: "x".into(),
            kind: EventKind::ManifestPush,
            namespace: "a".into(),
            body: b"hello world".to_vec(),
        });
        dispatcher.gate(GateKind::Optional, vec![(hook, event)], 0);
        let Some(Action::Send { request, .. }) = dispatcher.poll_action() else {
            panic!()
        };
        let text = String::from_utf8(request.to_vec()).unwrap();
        assert!(
            text.starts_with("POST /s HTTP/1.1\r\nHost: 127.0.0.1:9\r\n"),
            "{text}"
        );
        assert!(text.contains("Content-Type: application/json\r\n"));
        assert!(text.contains("X-Registry-Event: manifest.push\r\n"));
        assert!(text.contains("Authorization: Bearer test-secret\r\n"));
        assert!(text.contains(
            "X-Registry-Signature-256: sha256=046e2496e13e0bfd8dbef84244dd188311a48086646355161bc4ad0769a49cf4\r\n"
        ));
        assert!(text.contains("User-Agent: angos/"));
        assert!(text.ends_with("\r\n\r\nhello world"));
    }

    /// Standard Webhooks signatures cover the attempt's time: a retry is
    /// signed anew; without `signing_secrets` a retry resends the same bytes.
    #[test]
    fn each_attempt_is_signed_at_its_own_time() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        for (extra, resigned) in [
            (format!("signing_secrets = [\"{secret}\"]\nmax_retries = 1"), true),
            ("max_retries = 1".to_string(), false),
        ] {
            let hook = webhook("s", "optional", &extra);
            let mut dispatcher = Dispatcher::new(0, 3);
            dispatcher.set_wall_clock(0, 1_700_000_000_000_000);
            dispatcher.gate(GateKind::Optional, vec![(hook, payload("e"))], 0);
            let Some(Action::Send {
                delivery,
                request: first,
                ..
            }) = dispatcher.poll_action()
            else {
                panic!()
            };
            dispatcher.handle_result(delivery, AttemptResult::status(500), 10);
            dispatcher.handle_timeout(5_000);
            let Some(Action::Send { request: second, .. }) = dispatcher.poll_action() else {
                panic!()
            };
            let text = |request: &[u8]| String::from_utf8(request.to_vec()).unwrap();
            if resigned {
                assert!(
                    text(&first).contains("webhook-timestamp: 1700000000\r\n"),
                    "{}",
                    text(&first)
                );
                assert!(text(&second).contains("webhook-timestamp: 1700000005\r\n"));
                assert!(text(&first).contains("webhook-id: "));
                assert_ne!(first, second);
            } else {
                assert!(Rc::ptr_eq(&first, &second));
                assert!(!text(&first).contains("webhook-"));
            }
        }
    }

    #[test]
    fn reconfigure_points_waiting_events_at_the_new_definition() {
        let old = webhook("q", "async", "");
        let mut dispatcher = Dispatcher::new(0, 10);
        dispatcher.enqueue(old.clone(), payload("1"), 0);
        dispatcher.enqueue(old, payload("2"), 0);
        let first = sends(&mut dispatcher);
        let new = Rc::new(WebhookConfig {
            url: crate::config::WebhookUrl::parse("http://127.0.0.1:10/new").unwrap(),
            ..(*webhook("q", "async", "")).clone()
        });
        let mut webhooks = BTreeMap::new();
        webhooks.insert("q".to_string(), new);
        assert_eq!(dispatcher.reconfigure(&webhooks), Reconfigured::default());
        dispatcher.handle_result(first[0], AttemptResult::status(200), 1);
        let Some(Action::Send { webhook, .. }) = dispatcher.poll_action() else {
            panic!()
        };
        assert_eq!(webhook.url.port, 10);
        assert_eq!(
            dispatcher.reconfigure(&BTreeMap::new()).dropped,
            0,
            "the head in flight finishes"
        );
        assert_eq!(dispatcher.async_pending(), 1);
    }

    /// Drives the dispatcher on its own clock: answers the n-th attempt (from
    /// 0), sent at `now`, at once with `answer(n, now)` and jumps to each
    /// deadline; returns when each attempt went out.
    fn attempt_times(
        dispatcher: &mut Dispatcher,
        mut now: u64,
        mut answer: impl FnMut(usize, u64) -> AttemptResult,
    ) -> Vec<u64> {
        let mut times = Vec::new();
        loop {
            let sent = sends(dispatcher);
            if sent.is_empty() {
                match dispatcher.poll_timeout() {
                    Some(deadline) => {
                        now = now.max(deadline);
                        dispatcher.handle_timeout(now);
                        continue;
                    }
                    None => return times,
                }
            }
            for id in sent {
                let n = times.len();
                times.push(now);
                dispatcher.handle_result(id, answer(n, now), now);
            }
        }
    }

    fn retry_after(status: u16, retry_after: RetryAfter) -> AttemptResult {
        AttemptResult::Answered {
            status,
            retry_after: Some(retry_after),
        }
    }

    /// Our wall clock in these tests: Unix ms = this + the monotonic ms.
    const WALL_MS: u64 = 1_700_000_000_000;

    #[test]
    fn retry_after_on_429_and_503_sets_the_next_delay_exactly() {
        let hook = webhook("audit", "required", "max_retries = 9");
        let mut dispatcher = Dispatcher::new(0, 10);
        // Our wall clock runs 750 ms past a whole second of WALL_MS.
        dispatcher.set_wall_clock(0, (WALL_MS + 750) * 1000);
        let gate = dispatcher.gate(GateKind::Required, vec![(hook, payload("e1"))], 0);
        let times = attempt_times(&mut dispatcher, 0, |n, now| {
            match n {
                0 => retry_after(503, RetryAfter::Seconds(3)),
                // Over the 10 s cap of a webhook a request waits on.
                1 => retry_after(429, RetryAfter::Seconds(30)),
                // A date against the response's own Date: 5 s, whatever our clock says.
                2 => retry_after(
                    503,
                    RetryAfter::Date {
                        unix_secs: 2_000_000_005,
                        response_date: Some(2_000_000_000),
                    },
                ),
                // A date against our clock, to the millisecond: 4,250 ms from now.
                3 => {
                    // Sent at 18 s: 18,750 ms past WALL_MS, so this is a whole second.
                    let target_ms = WALL_MS + 750 + now + 4_250;
                    assert_eq!(target_ms % 1000, 0, "the test picks a whole second");
                    retry_after(
                        503,
                        RetryAfter::Date {
                            unix_secs: target_ms / 1000,
                            response_date: None,
                        },
                    )
                }
                // Not a 429 or 503: the normal backoff (the 5th delay, 1.6 s).
                4 => retry_after(500, RetryAfter::Seconds(1)),
                // No valid Retry-After (the decoder drops invalid ones): backoff, 3.2 s.
                5 => AttemptResult::status(503),
                // Zero, and a date in the past: never sooner than 100 ms.
                6 => retry_after(503, RetryAfter::Seconds(0)),
                7 => retry_after(
                    503,
                    RetryAfter::Date {
                        unix_secs: 1,
                        response_date: None,
                    },
                ),
                _ => AttemptResult::status(204),
            }
        });
        let delays: Vec<u64> = times.windows(2).map(|pair| pair[1] - pair[0]).collect();
        assert_eq!(delays, [3_000, 10_000, 5_000, 4_250, 1_600, 3_200, 100, 100]);
        assert_eq!(dispatcher.poll_gate(), Some((gate, GateOutcome::Passed)));
    }

    #[test]
    fn async_retry_after_is_exact_and_capped_at_ten_minutes() {
        let hook = webhook("q", "async", "max_retries = 3");
        let mut dispatcher = Dispatcher::new(0, 10);
        dispatcher.enqueue(hook, payload("e1"), 0);
        let times = attempt_times(&mut dispatcher, 0, |n, _| match n {
            0 => retry_after(503, RetryAfter::Seconds(300)),
            1 => retry_after(429, RetryAfter::Seconds(86_400)),
            2 => retry_after(503, RetryAfter::Seconds(u64::MAX)),
            _ => AttemptResult::status(200),
        });
        assert_eq!(times, [0, 300_000, 900_000, 1_500_000]);
        assert_eq!(super::super::backoff::RETRY_AFTER_ASYNC_CAP_MS, 600_000);
        assert!(dispatcher.poll_completed().unwrap().success);
    }

    /// Every completion waiting, with what the tests look at.
    fn completions(dispatcher: &mut Dispatcher) -> Vec<(String, u32, bool, bool, bool)> {
        let mut done = Vec::new();
        while let Some(completed) = dispatcher.poll_completed() {
            done.push((
                completed.event_id,
                completed.attempts,
                completed.success,
                completed.gone,
                completed.disabled,
            ));
        }
        done
    }

    fn ping() -> Rc<Payload> {
        Rc::new(Payload {
            event_id: "ping".into(),
            kind: EventKind::Ping,
            namespace: String::new(),
            body: b"{}".to_vec(),
        })
    }

    #[test]
    fn a_410_disables_the_webhook_and_ends_its_queue_unattempted() {
        let queue = webhook("q", "async", "max_retries = 5");
        let mut dispatcher = Dispatcher::new(0, 10);
        dispatcher.set_wall_clock(0, WALL_MS * 1000);
        for id in ["1", "2", "3"] {
            dispatcher.enqueue(queue.clone(), payload(id), 0);
        }
        let first = sends(&mut dispatcher);
        dispatcher.handle_result(first[0], AttemptResult::status(410), 7);
        assert!(dispatcher.poll_action().is_none(), "no retry, no next event");
        assert_eq!(dispatcher.poll_timeout(), None);
        assert_eq!(
            completions(&mut dispatcher),
            [
                ("1".to_string(), 1, false, true, false),
                ("2".to_string(), 0, false, false, true),
                ("3".to_string(), 0, false, false, true),
            ]
        );
        assert_eq!(dispatcher.async_pending(), 0);
        let disabled = dispatcher.disabled()["q"].clone();
        assert_eq!(disabled.url, "http://127.0.0.1:9/q");
        assert_eq!(disabled.since_unix_micros, (WALL_MS + 7) * 1000);

        // New events: async ones end at once, a required gate fails at once,
        // an optional one passes; nothing goes out.
        dispatcher.enqueue(queue.clone(), payload("4"), 8);
        assert_eq!(
            completions(&mut dispatcher),
            [("4".to_string(), 0, false, false, true)]
        );
        let required = webhook("q", "required", "");
        let gate = dispatcher.gate(GateKind::Required, vec![(required, payload("5"))], 9);
        let Some((
            id,
            GateOutcome::Failed {
                webhook: name,
                reason,
            },
        )) = dispatcher.poll_gate()
        else {
            panic!("the required gate must fail")
        };
        assert_eq!((id, name.as_str()), (gate, "q"));
        assert!(
            reason.starts_with("webhook disabled since 2023-11-14T22:13:20.007000Z (it answered 410 Gone)"),
            "{reason}"
        );
        let optional = webhook("q", "optional", "");
        let gate = dispatcher.gate(GateKind::Optional, vec![(optional.clone(), payload("6"))], 9);
        assert_eq!(dispatcher.poll_gate(), Some((gate, GateOutcome::Passed)));
        assert!(dispatcher.poll_action().is_none());
        assert_eq!(dispatcher.in_flight(), 0);
        completions(&mut dispatcher);

        // A ping is a test: it goes out, and its own 410 disables nothing more.
        dispatcher.gate(GateKind::Optional, vec![(optional, ping())], 10);
        let pinged = sends(&mut dispatcher);
        assert_eq!(pinged.len(), 1);
        dispatcher.handle_result(pinged[0], AttemptResult::status(410), 11);
        assert_eq!(
            completions(&mut dispatcher),
            [("ping".to_string(), 1, false, false, false)]
        );

        // Enabled again: the next event goes out.
        assert_eq!(dispatcher.enable("q"), Some(disabled));
        assert_eq!(dispatcher.enable("q"), None);
        dispatcher.enqueue(queue, payload("7"), 12);
        assert_eq!(sends(&mut dispatcher).len(), 1);
    }

    #[test]
    fn a_410_ends_the_retries_other_deliveries_of_its_webhook_wait_for() {
        let hook = webhook("w", "required", "max_retries = 3");
        let mut dispatcher = Dispatcher::new(0, 10);
        let waiting = dispatcher.gate(GateKind::Required, vec![(hook.clone(), payload("1"))], 0);
        let gone = dispatcher.gate(GateKind::Required, vec![(hook, payload("2"))], 0);
        let sent = sends(&mut dispatcher);
        dispatcher.handle_result(sent[0], AttemptResult::status(503), 1);
        assert!(dispatcher.poll_timeout().is_some(), "backing off");
        dispatcher.handle_result(sent[1], AttemptResult::status(410), 2);
        let mut outcomes = Vec::new();
        while let Some((gate, GateOutcome::Failed { reason, .. })) = dispatcher.poll_gate() {
            outcomes.push((gate, reason));
        }
        assert_eq!(outcomes.len(), 2, "{outcomes:?}");
        assert_eq!(outcomes[0], (gone, "HTTP status 410 (Gone)".to_string()));
        assert_eq!(outcomes[1].0, waiting);
        assert!(
            outcomes[1].1.starts_with("webhook disabled since "),
            "{outcomes:?}"
        );
        assert_eq!(dispatcher.poll_timeout(), None, "no retry left waiting");
        assert_eq!(
            completions(&mut dispatcher),
            [
                ("2".to_string(), 1, false, true, false),
                ("1".to_string(), 1, false, false, true),
            ]
        );
    }

    #[test]
    fn another_url_enables_again_and_a_410_from_an_old_url_disables_nothing() {
        let at = |port: u16| {
            Rc::new(WebhookConfig {
                url: crate::config::WebhookUrl::parse(&format!("http://127.0.0.1:{port}/q")).unwrap(),
                ..(*webhook("q", "async", "")).clone()
            })
        };
        let only = |webhook: Rc<WebhookConfig>| BTreeMap::from([("q".to_string(), webhook)]);
        let mut dispatcher = Dispatcher::new(0, 10);
        dispatcher.reconfigure(&only(at(1)));
        dispatcher.enqueue(at(1), payload("1"), 0);
        let old = sends(&mut dispatcher);
        // A reload moves the webhook while its attempt is in flight.
        assert_eq!(dispatcher.reconfigure(&only(at(2))), Reconfigured::default());
        dispatcher.handle_result(old[0], AttemptResult::status(410), 1);
        assert_eq!(
            completions(&mut dispatcher),
            [("1".to_string(), 1, false, false, false)]
        );
        assert!(
            dispatcher.disabled().is_empty(),
            "the old URL's 410 is about the old URL"
        );

        dispatcher.enqueue(at(2), payload("2"), 2);
        let new = sends(&mut dispatcher);
        dispatcher.handle_result(new[0], AttemptResult::status(410), 3);
        assert_eq!(dispatcher.disabled()["q"].url, "http://127.0.0.1:2/q");
        // The same URL keeps it disabled; another one enables it.
        assert!(dispatcher.reconfigure(&only(at(2))).enabled.is_empty());
        let enabled = dispatcher.reconfigure(&only(at(3))).enabled;
        assert_eq!(enabled.len(), 1);
        assert_eq!(enabled[0].1.url, "http://127.0.0.1:2/q");
        dispatcher.enqueue(at(3), payload("3"), 4);
        dispatcher.enqueue(at(3), payload("4"), 4);
        let third = sends(&mut dispatcher);
        assert_eq!(third.len(), 1);
        dispatcher.handle_result(third[0], AttemptResult::status(200), 5);
        let fourth = sends(&mut dispatcher);
        // Disabled (as after a restart), then removed: enabled and forgotten;
        // a late 410 from its attempt in flight disables nothing.
        let restored = Disabled {
            url: "http://127.0.0.1:3/q".into(),
            since_unix_micros: 0,
            reason: "it answered 410 Gone".into(),
        };
        assert!(dispatcher.disable("q", restored.clone(), 5));
        assert!(!dispatcher.disable("q", restored, 5), "already");
        assert_eq!(dispatcher.reconfigure(&BTreeMap::new()).enabled.len(), 1);
        assert!(dispatcher.disabled().is_empty());
        dispatcher.handle_result(fourth[0], AttemptResult::status(410), 6);
        assert!(dispatcher.disabled().is_empty());
        assert_eq!(
            completions(&mut dispatcher).last(),
            Some(&("4".to_string(), 1, false, false, false))
        );
    }

    /// The times the retries of many async webhooks that all failed at once
    /// go out, per round of retries, with jitter drawn from `seed`.
    fn retry_rounds(seed: u64) -> Vec<Vec<u64>> {
        let mut dispatcher = Dispatcher::new(0, 10);
        dispatcher.set_entropy(Box::new(crate::entropy::SeededEntropy::new(seed)));
        for n in 0..64 {
            let hook = webhook(&format!("j{n}"), "async", "max_retries = 2");
            dispatcher.enqueue(hook, payload(&n.to_string()), 0);
        }
        let mut rounds: Vec<Vec<u64>> = vec![Vec::new(); 3];
        let mut attempts: BTreeMap<DeliveryId, usize> = BTreeMap::new();
        let mut now = 0;
        loop {
            for id in sends(&mut dispatcher) {
                let round = attempts.entry(id).or_default();
                rounds[*round].push(now);
                *round += 1;
                dispatcher.handle_result(id, AttemptResult::status(503), now);
            }
            let Some(deadline) = dispatcher.poll_timeout() else {
                return rounds;
            };
            now = deadline;
            dispatcher.handle_timeout(now);
        }
    }

    #[test]
    fn async_retries_spread_with_jitter_replayable_from_a_seed() {
        let rounds = retry_rounds(7);
        assert!(rounds[0].iter().all(|&at| at == 0), "first attempts together");
        // The first retry waits between half and all of 100 ms, the second
        // between half and all of 200 ms after the first.
        assert_eq!(rounds[1].len(), 64);
        assert!(
            rounds[1].iter().all(|at| (50..=100).contains(at)),
            "{:?}",
            rounds[1]
        );
        let distinct: std::collections::BTreeSet<u64> = rounds[1].iter().copied().collect();
        assert!(
            distinct.len() >= 25,
            "only {} distinct retry times",
            distinct.len()
        );
        let (earliest, latest) = (rounds[1][0], rounds[1][63]);
        assert!(latest - earliest >= 40, "spread {earliest}..{latest}");
        assert_eq!(rounds[2].len(), 64);
        assert!(
            rounds[2].iter().all(|at| (150..=300).contains(at)),
            "{:?}",
            rounds[2]
        );
        assert_eq!(retry_rounds(7), rounds, "a seed replays");
        assert_ne!(retry_rounds(8), rounds, "another seed spreads otherwise");
    }
}
