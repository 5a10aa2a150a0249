//! Ties registry operations to webhook deliveries (SPEC section 5): decides
//! per event which webhooks and policies apply, parks requests behind
//! `required` gates before their change is made, makes the change, then runs
//! `optional` gates and queues `async` deliveries. Sans-IO: the reactor feeds
//! it time and attempt results and carries the answers back to connections.
//! Generic over the waiter (a connection handle) and the staged change.

mod durable;
pub mod operations;

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use super::dispatcher::{Completed, Dispatcher, GateId, GateKind, GateOutcome, Payload};
use super::event::{Actor, Event, EventDraft};
use super::journal::Journal;
use super::routing::Routing;
use super::status::StatusBook;
use crate::config::{Config, Policy, WebhookConfig};
use crate::entropy::{Entropy, OsEntropy, SeededEntropy, uuid_v4};
use crate::http::Response;
use crate::http::oci_error::{ErrorCode, RegistryError};
use crate::metrics::{FamilyId, LATENCY_BUCKETS_SECONDS, Metrics};

/// Makes or drops a staged change; the registry implements it.
pub trait Apply<C> {
    /// Makes `commit` for the request `holder` (the registry's numbering,
    /// `Waits::holder`); `again`: a call after `Applied::Waiting`.
    fn apply(&mut self, holder: (usize, u64), commit: C, again: bool) -> Applied<C>;
    fn discard(&mut self, commit: C);
}

/// What `Apply::apply` did.
pub enum Applied<C> {
    Done(Result<(), Response>),
    /// The change waits on the registry's object storage: `apply` it again
    /// when the registry wakes the holder (`Notifier::resume_apply`).
    Waiting(C),
}

/// A request that waits on the notifier, as the registry numbers it.
pub trait Waits: Copy + Eq + std::hash::Hash {
    fn holder(&self) -> (usize, u64);
}

impl Waits for u32 {
    fn holder(&self) -> (usize, u64) {
        (0, u64::from(*self))
    }
}

impl Waits for u64 {
    fn holder(&self) -> (usize, u64) {
        (0, *self)
    }
}

/// A staged operation handed to `submit`: its events, who caused them, the
/// change, and the answer to give once the change is made.
pub struct Submission<C> {
    pub drafts: Vec<EventDraft>,
    pub actor: Actor,
    pub commit: C,
    pub response: Response,
}

/// What `submit` decided.
pub enum Submitted {
    /// Answer now: no webhook had to be waited for (the change is made).
    Respond(Response),
    /// The request waits; its answer comes from `poll_ready`.
    Parked,
}

type Deliveries = Vec<(Rc<WebhookConfig>, Rc<Payload>)>;

enum Stage<C> {
    /// Required webhooks are being asked; nothing is visible yet.
    Required {
        commit: C,
        response: Response,
        optional: Deliveries,
        asynchronous: Deliveries,
    },
    /// The change is made; optional webhooks are being told.
    Optional { response: Response },
    /// `POST /v2/_angos/webhooks/NAME/test`: one ping attempt, reported as it went.
    Ping {
        webhook: String,
        answer: operations::PingAnswer,
    },
}

struct Parked<W, C> {
    waiter: W,
    stage: Stage<C>,
}

/// A change being made on object storage (`Applied::Waiting`), and what
/// comes after it.
struct Applying<C> {
    commit: C,
    response: Response,
    optional: Deliveries,
    asynchronous: Deliveries,
}

struct Families {
    deliveries: FamilyId,
    duration: FamilyId,
    queue_depth: FamilyId,
    dropped: FamilyId,
    dead_letters: FamilyId,
    oldest_pending: FamilyId,
    disabled: FamilyId,
}

pub struct Notifier<W, C> {
    routing: Routing,
    dispatcher: Dispatcher,
    parked: HashMap<GateId, Parked<W, C>>,
    /// Changes waiting on object storage, by who waits for them.
    applying: HashMap<W, Applying<C>>,
    families: Families,
    /// Webhooks whose queue-depth gauge exists, to zero or remove it.
    gauged: Vec<String>,
    /// Webhooks that dropped a queued event since the metrics were last updated.
    drops: Vec<String>,
    /// The durable record of async events (None: memory only, as in tests).
    journal: Option<Journal>,
    /// The highest journal seq queued per webhook, for acknowledgements.
    last_seq: BTreeMap<String, u64>,
    status: StatusBook,
    /// The current loop turn's monotonic and wall-clock time (journal
    /// records, status times, queue ages), set by `set_time`.
    now_ms: u64,
    unix_micros: u64,
    /// Where event ids come from: the kernel, or a seed in a simulation.
    entropy: Box<dyn Entropy>,
}

impl<W: Waits, C> Notifier<W, C> {
    pub fn new(config: &Config, metrics: &mut Metrics, now_ms: u64) -> Notifier<W, C> {
        let families = Families {
            deliveries: metrics.counter(
                "event_webhook_deliveries_total",
                "Webhook deliveries by outcome (success, error, or disabled: not attempted or not \
                 retried because a 410 Gone disabled the webhook), counted once per delivery after its retries.",
                &["webhook", "event", "result"],
            ),
            duration: metrics.histogram(
                "event_webhook_delivery_duration_seconds",
                "Time from the first attempt of a delivery to its outcome, retries included.",
                &["webhook", "event"],
                LATENCY_BUCKETS_SECONDS,
            ),
            queue_depth: metrics.gauge(
                "event_webhook_queue_depth",
                "Async events waiting or in flight per webhook.",
                &["webhook"],
            ),
            dropped: metrics.counter(
                "event_webhook_queue_dropped_total",
                "Async events dropped because the webhook's queue or the journal's disk bound was full.",
                &["webhook"],
            ),
            dead_letters: metrics.counter(
                "event_webhook_dead_letters_total",
                "Async events that exhausted their retries and were kept as dead letters.",
                &["webhook"],
            ),
            oldest_pending: metrics.gauge(
                "event_webhook_oldest_pending_seconds",
                "Age of the oldest queued async event per webhook (0 when none).",
                &["webhook"],
            ),
            disabled: metrics.gauge(
                "event_webhook_disabled",
                "1 while the webhook is disabled because its receiver answered 410 Gone, else 0.",
                &["webhook"],
            ),
        };
        let routing = Routing::new(config);
        declare_series(&families, metrics, &routing);
        let mut dispatcher = Dispatcher::new(now_ms, config.global.event_webhook_queue_length);
        dispatcher.reconfigure(routing.webhooks());
        Notifier {
            routing,
            dispatcher,
            parked: HashMap::new(),
            applying: HashMap::new(),
            families,
            gauged: Vec::new(),
            drops: Vec::new(),
            journal: None,
            last_seq: BTreeMap::new(),
            status: StatusBook::default(),
            now_ms,
            unix_micros: 0,
            entropy: Box::new(OsEntropy),
        }
    }

    /// Draws event ids from `entropy` (a seeded one replays a run), and the
    /// dispatcher's retry jitter from a generator seeded by it: a stream of
    /// its own, so jitter draws do not shift the ids.
    pub fn with_entropy(mut self, mut entropy: Box<dyn Entropy>) -> Notifier<W, C> {
        let mut seed = [0u8; 8];
        entropy.fill(&mut seed);
        self.dispatcher
            .set_entropy(Box::new(SeededEntropy::new(u64::from_le_bytes(seed))));
        self.entropy = entropy;
        self
    }

    /// The time of this loop turn: monotonic ms and wall-clock micros.
    pub fn set_time(&mut self, now_ms: u64, unix_micros: u64) {
        self.now_ms = now_ms;
        self.unix_micros = unix_micros;
        self.dispatcher.set_wall_clock(now_ms, unix_micros);
    }

    /// The event kinds some webhook wants, for `Registry::set_interest`.
    pub fn interest(&self) -> u8 {
        self.routing.interest()
    }

    pub fn dispatcher(&mut self) -> &mut Dispatcher {
        &mut self.dispatcher
    }

    /// Switches to a reloaded configuration. Parked requests and deliveries in
    /// flight keep the definitions they started with. A disabled webhook
    /// given another URL (or removed) is enabled again.
    pub fn reconfigure(&mut self, config: &Config, metrics: &mut Metrics) {
        self.routing = Routing::new(config);
        declare_series(&self.families, metrics, &self.routing);
        self.dispatcher
            .set_queue_length(config.global.event_webhook_queue_length);
        self.forget_unconfigured();
        let done = self.dispatcher.reconfigure(self.routing.webhooks());
        if done.dropped > 0 {
            log::warn!(
                target: "angos::event_webhook",
                "dropped {} queued async events of webhooks removed or no longer async",
                done.dropped
            );
        }
        for (name, _) in done.enabled {
            let why = match self.routing.webhooks().get(&name) {
                Some(_) => "its URL changed",
                None => "it was removed from the configuration",
            };
            log::info!(target: "angos::event_webhook", "webhook {name:?} is enabled again: {why}");
            self.journal_enabled(&name);
            let series = metrics.series(self.families.disabled, &[&name]);
            metrics.set(series, 0.0);
        }
    }

    /// Routes a staged operation's events.
    pub fn submit(
        &mut self,
        waiter: W,
        submission: Submission<C>,
        registry: &mut impl Apply<C>,
        now_ms: u64,
        unix_micros: u64,
    ) -> Submitted {
        let Submission {
            drafts,
            actor,
            commit,
            response,
        } = submission;
        let mut required = Vec::new();
        let mut optional = Vec::new();
        let mut asynchronous = Vec::new();
        for draft in drafts {
            let webhooks = self
                .routing
                .webhooks_for(draft.kind, &draft.namespace, draft.tag.as_deref());
            if webhooks.is_empty() {
                continue;
            }
            let payload = Rc::new(self.payload(draft, &actor, unix_micros));
            for webhook in webhooks {
                let item = (webhook.clone(), payload.clone());
                match webhook.policy {
                    Policy::Required => required.push(item),
                    Policy::Optional => optional.push(item),
                    Policy::Async => asynchronous.push(item),
                }
            }
        }
        if !required.is_empty() {
            let gate = self.dispatcher.gate(GateKind::Required, required, now_ms);
            let stage = Stage::Required {
                commit,
                response,
                optional,
                asynchronous,
            };
            self.parked.insert(gate, Parked { waiter, stage });
            return Submitted::Parked;
        }
        let applying = Applying {
            commit,
            response,
            optional,
            asynchronous,
        };
        match self.make(waiter, applying, registry, false, now_ms) {
            Some((_, response)) => Submitted::Respond(response),
            None => Submitted::Parked,
        }
    }

    /// Makes a change, then goes on as `after_commit`; `None` while it
    /// waits on object storage (kept in `applying`) or on optional webhooks.
    fn make(
        &mut self,
        waiter: W,
        applying: Applying<C>,
        registry: &mut impl Apply<C>,
        again: bool,
        now_ms: u64,
    ) -> Option<(W, Response)> {
        let Applying {
            commit,
            response,
            optional,
            asynchronous,
        } = applying;
        match registry.apply(waiter.holder(), commit, again) {
            Applied::Done(Err(error)) => Some((waiter, error)),
            Applied::Done(Ok(())) => self.after_commit(waiter, response, optional, asynchronous, now_ms),
            Applied::Waiting(commit) => {
                let applying = Applying {
                    commit,
                    response,
                    optional,
                    asynchronous,
                };
                self.applying.insert(waiter, applying);
                None
            }
        }
    }

    /// The registry woke `waiter`: a change of its that waited on object
    /// storage is tried again. `None` when it has none, or waits still.
    pub fn resume_apply(
        &mut self,
        waiter: W,
        registry: &mut impl Apply<C>,
        now_ms: u64,
    ) -> Option<(W, Response)> {
        let applying = self.applying.remove(&waiter)?;
        self.make(waiter, applying, registry, true, now_ms)
    }

    /// Whether `waiter` waits for a change on object storage.
    pub fn is_applying(&self, waiter: &W) -> bool {
        self.applying.contains_key(waiter)
    }

    /// The change is visible: queue async deliveries, then wait for optional
    /// ones. Gives the waiter back with its answer when nothing is waited for.
    /// A change's async event the journal cannot record turns its answer into
    /// an error: an acknowledged change's events must survive a restart, and
    /// the client, told, pushes again (the same content commits the same way).
    fn after_commit(
        &mut self,
        waiter: W,
        mut response: Response,
        optional: Deliveries,
        asynchronous: Deliveries,
        now_ms: u64,
    ) -> Option<(W, Response)> {
        let mut unrecorded: Option<(String, std::io::Error)> = None;
        for (webhook, payload) in asynchronous {
            let name = webhook.name.clone();
            // A reload while a required gate held the request: the event joins
            // the queue as the webhook is defined now, or is dropped when it is
            // gone or no longer async, exactly as `Dispatcher::reconfigure`
            // treats waiting events (the simulation test caught the stale
            // definition going out; see `a_reload_while_parked_...` below).
            let current = self.routing.webhooks().get(&name);
            let Some(webhook) = current.filter(|current| current.policy == Policy::Async).cloned() else {
                log::warn!(
                    target: "angos::event_webhook",
                    "webhook {name:?} was removed or is no longer async; dropped async event {} ({})",
                    payload.event_id,
                    payload.kind
                );
                continue;
            };
            let seq = match self.journal_append(&name, &payload) {
                Ok(seq) => seq,
                Err(error) => {
                    // A pull's event is no reason to fail the pull: it stays
                    // in memory only, as the log line said.
                    if !payload.kind.is_read() && unrecorded.is_none() {
                        unrecorded = Some((name.clone(), error));
                    }
                    None
                }
            };
            if let Some(dropped) = self.dispatcher.enqueue_journaled(webhook, payload, seq, now_ms) {
                log::warn!(
                    target: "angos::event_webhook",
                    "webhook {name:?}: async queue full; dropped the oldest queued event {} ({})",
                    dropped.event_id,
                    dropped.kind
                );
                self.drops.push(name);
            }
        }
        if let Some((webhook, error)) = unrecorded {
            response = unrecorded_event(&webhook, &error);
        }
        if optional.is_empty() {
            return Some((waiter, response));
        }
        let gate = self.dispatcher.gate(GateKind::Optional, optional, now_ms);
        self.parked.insert(
            gate,
            Parked {
                waiter,
                stage: Stage::Optional { response },
            },
        );
        None
    }

    fn payload(&mut self, draft: EventDraft, actor: &Actor, unix_micros: u64) -> Payload {
        let repository = self.routing.repository_of(&draft.namespace);
        let id = uuid_v4(self.entropy.as_mut());
        let mut event = Event::new(id, draft.kind, draft.namespace.clone(), repository, unix_micros);
        event.digest = draft.digest;
        event.reference = draft.reference;
        event.tag = draft.tag;
        event.actor = actor.clone();
        Payload {
            event_id: event.id.clone(),
            kind: draft.kind,
            namespace: draft.namespace,
            body: event.to_json(),
        }
    }

    /// A parked request whose answer is known, after gates reported.
    pub fn poll_ready(&mut self, registry: &mut impl Apply<C>, now_ms: u64) -> Option<(W, Response)> {
        while let Some((gate, outcome)) = self.dispatcher.poll_gate() {
            let Some(parked) = self.parked.remove(&gate) else {
                continue;
            };
            match (parked.stage, outcome) {
                (
                    Stage::Required {
                        commit,
                        response,
                        optional,
                        asynchronous,
                    },
                    GateOutcome::Passed,
                ) => {
                    let applying = Applying {
                        commit,
                        response,
                        optional,
                        asynchronous,
                    };
                    if let Some(ready) = self.make(parked.waiter, applying, registry, false, now_ms) {
                        return Some(ready);
                    }
                }
                (Stage::Required { commit, .. }, GateOutcome::Failed { webhook, reason }) => {
                    registry.discard(commit);
                    log::warn!(
                        target: "angos::event_webhook",
                        "required webhook {webhook:?} failed: {reason}; the operation was refused"
                    );
                    return Some((parked.waiter, required_failed(&webhook, &reason)));
                }
                (Stage::Optional { response }, _) => return Some((parked.waiter, response)),
                (Stage::Ping { webhook, answer }, _) => {
                    let result = self.dispatcher.find_completed(gate);
                    return Some((parked.waiter, answer(&webhook, result)));
                }
            }
        }
        None
    }

    /// Finished deliveries: metrics, status, dead letters, and a warning for
    /// each failure; then the journal's acknowledgements, once per webhook
    /// and after every dead letter of the batch is written (so none is
    /// acknowledged before it is recorded).
    pub fn record_completed(&mut self, metrics: &mut Metrics) {
        let mut acknowledge: Vec<String> = Vec::new();
        while let Some(done) = self.dispatcher.poll_completed() {
            record(&self.families, metrics, &done);
            if done.gone {
                self.on_gone(&done.webhook);
            }
            if self.settle(&done, metrics) && !acknowledge.contains(&done.webhook) {
                acknowledge.push(done.webhook.clone());
            }
        }
        for name in acknowledge {
            self.acknowledge(&name);
        }
        // Acks and dead letters may have released or restored the reserve.
        self.log_reserve_change();
        for (name, webhook) in self.routing.webhooks() {
            let disabled = self.dispatcher.disabled_for(webhook).is_some();
            let series = metrics.series(self.families.disabled, &[name]);
            metrics.set(series, if disabled { 1.0 } else { 0.0 });
        }
        for (name, _) in self
            .routing
            .webhooks()
            .iter()
            .filter(|(_, webhook)| webhook.policy == Policy::Async)
        {
            let age_ms = self.dispatcher.oldest_pending_ms(name, self.now_ms).unwrap_or(0);
            let series = metrics.series(self.families.oldest_pending, &[name]);
            metrics.set(series, age_ms as f64 / 1000.0);
        }
        let depths = self.dispatcher.queue_depths();
        for (name, depth) in &depths {
            let series = metrics.series(self.families.queue_depth, &[name]);
            metrics.set(series, *depth as f64);
            if !self.gauged.contains(name) {
                self.gauged.push(name.clone());
            }
        }
        // Queues that emptied read 0 rather than keeping their last depth.
        self.gauged.retain(|name| {
            if depths.iter().any(|(queued, _)| queued == name) {
                return true;
            }
            let series = metrics.series(self.families.queue_depth, &[name]);
            metrics.set(series, 0.0);
            false
        });
        for name in self.drops.drain(..) {
            let series = metrics.series(self.families.dropped, &[&name]);
            metrics.inc(series);
        }
    }

    /// Requests waiting on webhooks.
    pub fn parked(&self) -> usize {
        self.parked.len()
    }
}

/// Webhooks' series start at 0 (Prometheus: known labels should exist
/// before their first event, so `rate()` sees the first increase): the
/// disabled gauge for every webhook, the queue series for async ones.
fn declare_series(families: &Families, metrics: &mut Metrics, routing: &Routing) {
    for (name, webhook) in routing.webhooks() {
        metrics.series(families.disabled, &[name]);
        if webhook.policy == Policy::Async {
            metrics.series(families.queue_depth, &[name]);
            metrics.series(families.dropped, &[name]);
            metrics.series(families.dead_letters, &[name]);
            metrics.series(families.oldest_pending, &[name]);
        }
    }
}

fn record(families: &Families, metrics: &mut Metrics, done: &Completed) {
    let result = match (done.success, done.disabled) {
        (true, _) => "success",
        (false, true) => "disabled",
        (false, false) => "error",
    };
    let kind = done.kind.as_str();
    let counter = metrics.series(families.deliveries, &[&done.webhook, kind, result]);
    metrics.inc(counter);
    let histogram = metrics.series(families.duration, &[&done.webhook, kind]);
    metrics.observe(histogram, done.duration_ms as f64 / 1000.0);
    if done.disabled {
        // Said once, when the webhook was disabled; not once per event.
        log::debug!(
            target: "angos::event_webhook",
            "webhook {:?}: {} event {} not delivered: the webhook is disabled",
            done.webhook,
            kind,
            done.event_id
        );
    } else if !done.success {
        let error = done.error.as_deref().unwrap_or("unknown error");
        // Required failures are logged where the request is refused; pings are
        // reported to whoever asked.
        if done.policy != Policy::Required && done.kind != super::event::EventKind::Ping {
            log::warn!(
                target: "angos::event_webhook",
                "webhook {:?} ({}) failed for {} event {} after {} attempts: {error}",
                done.webhook,
                done.policy.as_str(),
                kind,
                done.event_id,
                done.attempts
            );
        }
    }
}

/// The 500 a client gets when a required webhook refused: it names the
/// webhook, never its token.
/// The answer to a change whose async event for `webhook` the journal could
/// not record (it is still delivered from memory unless the process stops).
fn unrecorded_event(webhook: &str, error: &std::io::Error) -> Response {
    let error = if crate::storage::space::is_storage_full(error) {
        RegistryError::storage_full(format!(
            "the registry's storage is full: the change was made, but its event for webhook \
             \"{webhook}\" could not be recorded; push again once space is freed"
        ))
    } else {
        RegistryError::new(
            ErrorCode::Unknown,
            format!(
                "the change was made, but its event for webhook \"{webhook}\" could not be \
                 recorded ({error}); retry the request"
            ),
        )
    };
    error
        .detail(serde_json::json!({ "webhook": webhook }))
        .into_response()
}

fn required_failed(webhook: &str, reason: &str) -> Response {
    RegistryError::new(
        ErrorCode::Unknown,
        format!("required webhook \"{webhook}\" failed: {reason}"),
    )
    .status(500)
    .detail(serde_json::json!({ "webhook": webhook }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_sources;
    use crate::event_webhook::dispatcher::{Action, AttemptResult, DeliveryId};
    use crate::event_webhook::event::EventKind;

    const GATE: &str = "[event_webhook.gate]\nurl = \"http://127.0.0.1:9/gate\"\npolicy = \"required\"\n\
                        events = [\"manifest.push\"]\nmax_retries = 0\n";

    fn load(text: &str) -> Config {
        load_sources(&[("t.toml".into(), text.into())]).unwrap().config
    }

    #[derive(Default)]
    struct Commits(Vec<&'static str>);

    impl Apply<&'static str> for Commits {
        fn apply(&mut self, _: (usize, u64), commit: &'static str, _: bool) -> Applied<&'static str> {
            self.0.push(commit);
            Applied::Done(Ok(()))
        }

        fn discard(&mut self, _: &'static str) {}
    }

    fn sends(notifier: &mut Notifier<u32, &'static str>) -> Vec<(DeliveryId, Rc<WebhookConfig>)> {
        let mut sent = Vec::new();
        while let Some(action) = notifier.dispatcher().poll_action() {
            if let Action::Send {
                delivery, webhook, ..
            } = action
            {
                sent.push((delivery, webhook));
            }
        }
        sent
    }

    /// Found by tests/e2e/webhook_simulation.rs: the async events of a request
    /// parked on a required gate were queued, when the gate passed, with the
    /// definitions of submission time, so a reload in between was ignored
    /// (old timeout and retries, even a webhook since removed or no longer
    /// async), unlike the events already waiting in the queue.
    #[test]
    fn a_reload_while_parked_applies_to_the_async_events_of_the_request() {
        let queue = |timeout_ms: u64| {
            format!(
                "[event_webhook.q]\nurl = \"http://127.0.0.1:9/q\"\npolicy = \"async\"\n\
                 events = [\"manifest.push\"]\ntimeout_ms = {timeout_ms}\n"
            )
        };
        let both = "[global]\nevent_webhooks = [\"gate\", \"q\"]\n";
        let before = load(&format!("{GATE}{}{both}", queue(100)));
        let changed = load(&format!("{GATE}{}{both}", queue(300)));
        let now_required = load(&format!(
            "{GATE}{}{both}",
            queue(300).replace("async", "required")
        ));
        let removed = load(&format!("{GATE}[global]\nevent_webhooks = [\"gate\"]\n"));
        for (after, expected) in [(changed, vec![300]), (now_required, vec![]), (removed, vec![])] {
            let mut metrics = Metrics::new();
            let mut notifier: Notifier<u32, &'static str> = Notifier::new(&before, &mut metrics, 0);
            let mut commits = Commits::default();
            let submission = Submission {
                drafts: vec![EventDraft::new(EventKind::ManifestPush, "a")],
                actor: Actor::default(),
                commit: "push",
                response: Response::new(201),
            };
            assert!(matches!(
                notifier.submit(7, submission, &mut commits, 0, 0),
                Submitted::Parked
            ));
            let gate = sends(&mut notifier);
            assert_eq!(
                gate.len(),
                1,
                "only the required webhook is asked before the commit"
            );
            notifier.reconfigure(&after, &mut metrics);
            notifier
                .dispatcher()
                .handle_result(gate[0].0, AttemptResult::status(200), 5);
            let (waiter, response) = notifier.poll_ready(&mut commits, 5).unwrap();
            assert_eq!(
                (waiter, response.status, commits.0.as_slice()),
                (7, 201, &["push"][..])
            );
            let queued: Vec<u64> = sends(&mut notifier)
                .iter()
                .map(|(_, webhook)| {
                    assert_eq!(webhook.policy, Policy::Async);
                    webhook.timeout_ms
                })
                .collect();
            assert_eq!(
                queued, expected,
                "async deliveries go out as the webhook is defined now"
            );
            assert_eq!(notifier.dispatcher().async_pending(), expected.len());
        }
    }

    fn push(notifier: &mut Notifier<u32, &'static str>, commits: &mut Commits, now_ms: u64) {
        let submission = Submission {
            drafts: vec![EventDraft::new(EventKind::ManifestPush, "a")],
            actor: Actor::default(),
            commit: "push",
            response: Response::new(201),
        };
        let submitted = notifier.submit(1, submission, commits, now_ms, 0);
        assert!(
            matches!(submitted, Submitted::Respond(_)),
            "async only: answered at once"
        );
    }

    /// A change is acknowledged only once its async events are in the
    /// journal: a full disk first costs the journal its reserve, then fails
    /// the change's answer (507, the change made, the event in memory); a
    /// pull's event never fails the pull.
    #[test]
    fn a_change_whose_async_event_cannot_be_recorded_is_not_acknowledged() {
        use crate::event_webhook::journal::{Journal, JournalLimits};
        let dir = crate::test_support::TempDir::new("notifier-full");
        let config = load(
            "[event_webhook.q]\nurl = \"http://127.0.0.1:9/q\"\npolicy = \"async\"\n\
             events = [\"manifest.push\", \"manifest.pull\"]\n[global]\nevent_webhooks = [\"q\"]\n",
        );
        let limits = JournalLimits {
            reserve_bytes: 64 << 10,
            ..JournalLimits::default()
        };
        let (opened, recovery) = Journal::open(dir.path(), false, limits).unwrap();
        let mut metrics = Metrics::new();
        let mut notifier: Notifier<u32, &'static str> = Notifier::new(&config, &mut metrics, 0);
        notifier = notifier.with_journal(opened, recovery, 0);
        let mut commits = Commits::default();
        let mut submit = |notifier: &mut Notifier<u32, &'static str>, kind, commit| {
            let submission = Submission {
                drafts: vec![EventDraft::new(kind, "a")],
                actor: Actor::default(),
                commit,
                response: Response::new(201),
            };
            match notifier.submit(1, submission, &mut commits, 0, 0) {
                Submitted::Respond(response) => response,
                Submitted::Parked => panic!("async only: answered at once"),
            }
        };
        fn journal<'a>(notifier: &'a mut Notifier<u32, &'static str>) -> &'a mut Journal {
            notifier.journal.as_mut().unwrap()
        }

        journal(&mut notifier).fail_writes_as_full(1);
        assert_eq!(submit(&mut notifier, EventKind::ManifestPush, "one").status, 201);
        assert!(
            !journal(&mut notifier).reserve_held(),
            "the reserve took the full disk"
        );
        assert_eq!(journal(&mut notifier).pending("q"), 1);

        journal(&mut notifier).fail_writes_as_full(1);
        let refused = submit(&mut notifier, EventKind::ManifestPush, "two");
        assert_eq!(refused.status, 507);
        let crate::http::Body::Bytes(body) = &refused.body else {
            panic!("an OCI error body");
        };
        let body: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(body["errors"][0]["code"], "DENIED");
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .unwrap()
                .starts_with("the registry's storage is full: the change was made"),
            "{body}"
        );
        assert_eq!(journal(&mut notifier).pending("q"), 1, "not recorded");
        assert_eq!(
            notifier.dispatcher().async_pending(),
            2,
            "still delivered from memory"
        );

        journal(&mut notifier).fail_writes_as_full(1);
        assert_eq!(submit(&mut notifier, EventKind::ManifestPull, "pull").status, 201);
        assert_eq!(commits.0, ["one", "two", "pull"]);
    }

    fn rendered(metrics: &Metrics) -> String {
        let mut text = String::new();
        metrics.render(&mut text);
        text
    }

    /// Item 5 of issue 12, on the notifier: a 410 turns the webhook's queue
    /// into dead letters in the journal, the journal keeps it disabled across
    /// a restart, and a restart with another URL enables it.
    #[test]
    fn a_410_dead_letters_the_queue_and_the_journal_keeps_it_disabled() {
        use crate::event_webhook::journal::{Journal, JournalLimits};
        let dir = crate::test_support::TempDir::new("notifier-gone");
        let config = |port: u16| {
            load(&format!(
                "[event_webhook.q]\nurl = \"http://127.0.0.1:{port}/q\"\npolicy = \"async\"\n\
                 events = [\"manifest.push\"]\n[global]\nevent_webhooks = [\"q\"]\n"
            ))
        };
        let start = |config: &Config, metrics: &mut Metrics| {
            let (journal, recovery) = Journal::open(dir.path(), false, JournalLimits::default()).unwrap();
            let mut notifier: Notifier<u32, &'static str> = Notifier::new(config, metrics, 0);
            notifier.set_time(0, 1_700_000_000_000_000);
            notifier.with_journal(journal, recovery, 0)
        };
        let mut metrics = Metrics::new();
        let mut notifier = start(&config(9), &mut metrics);
        let mut commits = Commits::default();
        for _ in 0..3 {
            push(&mut notifier, &mut commits, 0);
        }
        let first = sends(&mut notifier);
        assert_eq!(first.len(), 1, "one at a time");
        notifier
            .dispatcher()
            .handle_result(first[0].0, AttemptResult::status(410), 5);
        notifier.record_completed(&mut metrics);
        assert!(sends(&mut notifier).is_empty());
        let journal = notifier.journal.as_ref().unwrap();
        assert_eq!(
            journal.dead_letters().count(),
            3,
            "the one that got 410 and the two queued"
        );
        assert_eq!(journal.pending_total(), 0);
        let text = rendered(&metrics);
        assert!(text.contains("event_webhook_disabled{webhook=\"q\"} 1"), "{text}");
        assert!(
            text.contains(
                "event_webhook_deliveries_total{webhook=\"q\",event=\"manifest.push\",result=\"disabled\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("event_webhook_dead_letters_total{webhook=\"q\"} 3"),
            "{text}"
        );
        // A new event is a dead letter at once.
        push(&mut notifier, &mut commits, 6);
        notifier.record_completed(&mut metrics);
        assert!(sends(&mut notifier).is_empty());
        assert_eq!(notifier.journal.as_ref().unwrap().dead_letters().count(), 4);
        drop(notifier);

        // Restarted with the same URL: still disabled.
        let mut metrics = Metrics::new();
        let mut notifier = start(&config(9), &mut metrics);
        assert_eq!(notifier.dispatcher().disabled()["q"].url, "http://127.0.0.1:9/q");
        push(&mut notifier, &mut commits, 0);
        notifier.record_completed(&mut metrics);
        assert!(sends(&mut notifier).is_empty());
        assert!(rendered(&metrics).contains("event_webhook_disabled{webhook=\"q\"} 1"));
        drop(notifier);

        // Restarted with another URL: enabled, on disk too.
        let mut metrics = Metrics::new();
        let mut notifier = start(&config(10), &mut metrics);
        assert!(notifier.dispatcher().disabled().is_empty());
        push(&mut notifier, &mut commits, 0);
        assert_eq!(sends(&mut notifier).len(), 1);
        drop(notifier);
        let mut metrics = Metrics::new();
        let mut notifier = start(&config(9), &mut metrics);
        assert!(
            notifier.dispatcher().disabled().is_empty(),
            "back at the old URL, it starts enabled: the change was recorded"
        );
        notifier.record_completed(&mut metrics);
        assert!(rendered(&metrics).contains("event_webhook_disabled{webhook=\"q\"} 0"));
    }
}
