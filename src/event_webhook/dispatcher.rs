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
//! delay capped at 10 s; every attempt is bounded by the webhook's
//! `timeout_ms`. Async deliveries to one webhook go out one at a time, in
//! event order; their queue is bounded and drops its oldest waiting event.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;

use super::event::EventKind;
use super::format::{self, Message};
use super::queue::{AsyncQueue, MemoryQueue, Queued};
use super::request::build_request;
use super::status::delivery_id;
use crate::config::{Policy, WebhookConfig};
use crate::timer::{TimerKey, TimerWheel};

/// First retry delay; doubles per attempt.
pub const RETRY_BASE_MS: u64 = 100;
/// No single retry delay exceeds this.
pub const RETRY_CAP_MS: u64 = 10_000;

/// The delay before retry attempt `failed_attempts + 1`, after
/// `failed_attempts` (>= 1) attempts failed.
pub fn retry_delay_ms(failed_attempts: u32) -> u64 {
    let exponent = failed_attempts.saturating_sub(1).min(20);
    (RETRY_BASE_MS << exponent).min(RETRY_CAP_MS)
}

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
    /// A complete response with this status.
    Status(u16),
    /// No usable response: connect, DNS, TLS or framing failure, spelled out.
    Failed(String),
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
        }
    }

    /// Starts one delivery per item, all at once; the gate reports when its
    /// verdict is known. An empty gate passes at once.
    /// Tells the wall-clock time that goes with `now_ms` (the monotonic
    /// clock the rest of the machine runs on), for signature timestamps.
    pub fn set_wall_clock(&mut self, now_ms: u64, unix_micros: u64) {
        self.unix_offset_ms = (unix_micros / 1000) as i64 - now_ms as i64;
    }

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
    /// the webhook's new definition, or are dropped (and counted in the
    /// return value) when it is gone or no longer async. Deliveries already
    /// in flight finish on the definition they started with.
    pub fn reconfigure(&mut self, webhooks: &BTreeMap<String, Rc<WebhookConfig>>) -> usize {
        let mut dropped = 0;
        for name in self.queue.webhooks() {
            match webhooks.get(&name) {
                Some(webhook) if webhook.policy == Policy::Async => {
                    self.queue.set_webhook(&name, webhook.clone())
                }
                _ => dropped += self.queue.remove_webhook(&name),
            }
        }
        dropped
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
        if let AttemptResult::Status(status) = result {
            delivery.last_status = Some(status);
        }
        match result {
            AttemptResult::Status(status) if (200..300).contains(&status) => self.finish(id, true, now_ms),
            AttemptResult::Status(status) => {
                // 3xx included: redirects are not followed (SPEC section 5).
                self.attempt_failed(id, format!("HTTP status {status}"), now_ms)
            }
            AttemptResult::Failed(reason) => self.attempt_failed(id, reason, now_ms),
        }
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
                    self.attempt_failed(id, format!("timed out after {timeout_ms} ms"), now_ms);
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

    fn start_next_async(&mut self, name: &str, now_ms: u64) {
        if self.async_in_flight.contains_key(name) {
            return;
        }
        let Some((webhook, item)) = self.queue.start_front(name) else {
            return;
        };
        let id = self.start_delivery_with_seq(webhook, item.payload, item.seq, Owner::Async, now_ms);
        self.async_in_flight.insert(name.to_string(), id);
    }

    fn start_delivery(
        &mut self,
        webhook: Rc<WebhookConfig>,
        payload: Rc<Payload>,
        owner: Owner,
        now_ms: u64,
    ) -> DeliveryId {
        self.start_delivery_with_seq(webhook, payload, None, owner, now_ms)
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

    fn attempt_failed(&mut self, id: DeliveryId, reason: String, now_ms: u64) {
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
            self.finish(id, false, now_ms);
            return;
        }
        delivery.state = State::Backoff;
        let deadline = now_ms + retry_delay_ms(delivery.attempts);
        delivery.timer = Some(self.timers.insert(deadline, (id, TimerKind::Retry)));
    }

    fn finish(&mut self, id: DeliveryId, success: bool, now_ms: u64) {
        let Some(mut delivery) = self.deliveries.remove(&id) else {
            return;
        };
        if let Some(key) = delivery.timer.take() {
            self.timers.cancel(key);
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
        });
        match delivery.owner {
            Owner::Gate(gate_id) => {
                let Some(gate) = self.gates.get_mut(&gate_id) else {
                    return;
                };
                gate.pending -= 1;
                let verdict = match (gate.kind, success) {
                    (GateKind::Required, false) => Some(GateOutcome::Failed {
                        webhook: delivery.webhook.name.clone(),
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
            Owner::Async => {
                let name = delivery.webhook.name.clone();
                self.async_in_flight.remove(&name);
                self.queue.pop_front(&name);
                self.start_next_async(&name, now_ms);
            }
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
    fn retry_delays_double_from_100ms_and_cap_at_10s() {
        let delays: Vec<u64> = (1..=10).map(retry_delay_ms).collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
        );
        assert_eq!(retry_delay_ms(u32::MAX), 10_000);
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
                dispatcher.handle_result(id, AttemptResult::Status(503), now);
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
        dispatcher.handle_result(second[0], AttemptResult::Status(200), 1601);
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
        dispatcher.handle_result(sent[0], AttemptResult::Status(200), 9);
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
        dispatcher.handle_result(sent[0], AttemptResult::Status(204), 1);
        assert_eq!(dispatcher.poll_gate(), None, "one of two answered");
        dispatcher.handle_result(sent[1], AttemptResult::Status(200), 2);
        assert_eq!(dispatcher.poll_gate(), Some((gate, GateOutcome::Passed)));

        let redirected = dispatcher.gate(GateKind::Required, vec![(a, payload("2"))], 3);
        let sent = sends(&mut dispatcher);
        dispatcher.handle_result(sent[0], AttemptResult::Status(302), 4);
        assert!(matches!(dispatcher.poll_gate(), Some((id, GateOutcome::Failed { .. })) if id == redirected));
    }

    #[test]
    fn optional_gates_pass_even_when_deliveries_fail() {
        let hook = webhook("o", "optional", "");
        let mut dispatcher = Dispatcher::new(0, 10);
        let gate = dispatcher.gate(GateKind::Optional, vec![(hook, payload("1"))], 0);
        let sent = sends(&mut dispatcher);
        dispatcher.handle_result(sent[0], AttemptResult::Status(500), 1);
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
                    dispatcher.handle_result(delivery, AttemptResult::Status(status), now);
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
            dispatcher.handle_result(delivery, AttemptResult::Status(500), 10);
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
        assert_eq!(dispatcher.reconfigure(&webhooks), 0);
        dispatcher.handle_result(first[0], AttemptResult::Status(200), 1);
        let Some(Action::Send { webhook, .. }) = dispatcher.poll_action() else {
            panic!()
        };
        assert_eq!(webhook.url.port, 10);
        assert_eq!(
            dispatcher.reconfigure(&BTreeMap::new()),
            0,
            "the head in flight finishes"
        );
        assert_eq!(dispatcher.async_pending(), 1);
    }
}
