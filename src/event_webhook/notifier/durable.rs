//! The notifier's side of the journal: async events are recorded before the
//! client is answered, acknowledged once done (delivered, dead-lettered or
//! dropped), and resumed after a restart in order with their original id
//! and body, so signatures still verify. Webhooks a `410 Gone` disabled are
//! recorded too, and stay disabled after a restart unless their URL changed.
//!
//! Acknowledgements are cursors (`journal/`): "done with every event of
//! this webhook up to seq". The queue delivers a webhook's events in order,
//! and may drop waiting ones; so when the head finishes, everything before
//! the new head is done: the cursor moves to just before it, or to the last
//! event queued when the queue is empty.

use std::rc::Rc;

use super::super::dispatcher::{Completed, Disabled, Payload};
use super::super::event::EventKind;
use super::super::journal::{DisabledWebhook, Journal, NewDeadLetter, Recovery, ReserveChange};
use super::super::status::{DeliveryRecord, DeliveryState};
use super::Notifier;
use crate::config::Policy;
use crate::metrics::Metrics;
use crate::storage::space::human_bytes;

impl<W, C> Notifier<W, C> {
    /// Makes async delivery durable: `journal` records every async event from
    /// now on, and the events it recovered are queued again, in order.
    pub fn with_journal(mut self, mut journal: Journal, recovery: Recovery, now_ms: u64) -> Self {
        for line in &recovery.skipped {
            log::warn!(target: "angos::event_webhook", "journal: skipped {line}");
        }
        // Before the events: those of a disabled webhook become dead letters.
        for state in &recovery.disabled {
            self.restore_disabled(&mut journal, state, now_ms);
        }
        let mut resumed = 0;
        let mut forgotten: Vec<String> = Vec::new();
        for event in recovery.pending {
            let webhook = self
                .routing
                .webhooks()
                .get(&event.webhook)
                .filter(|webhook| webhook.policy == Policy::Async)
                .cloned();
            let (Some(webhook), Some(kind)) = (webhook, EventKind::parse_any(&event.kind)) else {
                if !forgotten.contains(&event.webhook) {
                    forgotten.push(event.webhook.clone());
                }
                continue;
            };
            let namespace = serde_json::from_slice::<serde_json::Value>(&event.body)
                .ok()
                .and_then(|body| body["namespace"].as_str().map(str::to_string))
                .unwrap_or_default();
            let payload = Rc::new(Payload {
                event_id: event.event_id,
                kind,
                namespace,
                body: event.body,
            });
            self.last_seq.insert(event.webhook.clone(), event.seq);
            // The wait counts from the event, not from this start.
            let age_ms = self.unix_micros.saturating_sub(event.unix_micros) / 1000;
            self.dispatcher
                .enqueue_aged(webhook, payload, Some(event.seq), age_ms, now_ms);
            resumed += 1;
        }
        for name in forgotten {
            match journal.forget_webhook(&name) {
                Ok(count) => log::warn!(
                    target: "angos::event_webhook",
                    "journal: dropped {count} pending events of webhook {name:?}, which is no longer configured as async"
                ),
                Err(error) => log::error!(target: "angos::event_webhook", "journal: {error}"),
            }
        }
        if resumed > 0 {
            log::info!(target: "angos::event_webhook", "journal: resumed {resumed} pending async deliveries");
        }
        if !journal.reserve_held() && journal.limits().reserve_bytes > 0 {
            log::warn!(
                target: "angos::event_webhook",
                "journal: no room on the disk for the journal's reserve ({}); it is written once there is",
                human_bytes(journal.limits().reserve_bytes)
            );
        }
        self.journal = Some(journal);
        self
    }

    /// A webhook recorded as disabled stays so if it is still configured with
    /// the URL that answered 410; otherwise it is enabled again, on disk too.
    fn restore_disabled(&mut self, journal: &mut Journal, state: &DisabledWebhook, now_ms: u64) {
        let name = &state.webhook;
        let same_url = self
            .routing
            .webhooks()
            .get(name)
            .is_some_and(|webhook| webhook.url.text == state.url);
        if same_url {
            let disabled = Disabled {
                url: state.url.clone(),
                since_unix_micros: state.unix_micros,
                reason: state.reason.clone(),
            };
            log::warn!(
                target: "angos::event_webhook",
                "webhook {name:?} stays disabled: {}",
                disabled.error()
            );
            self.dispatcher.disable(name, disabled, now_ms);
            return;
        }
        log::info!(
            target: "angos::event_webhook",
            "webhook {name:?} is enabled again: its URL changed, or it was removed, since it was disabled"
        );
        if let Err(error) = journal.append_enabled(name) {
            log::error!(target: "angos::event_webhook", "journal: {error}");
        }
    }

    /// A 410 disabled `name`: said once at `warn`, and recorded.
    pub(super) fn on_gone(&mut self, name: &str) {
        let Some(disabled) = self.dispatcher.disabled().get(name).cloned() else {
            return;
        };
        log::warn!(
            target: "angos::event_webhook",
            "webhook {name:?} answered 410 Gone and is disabled: no further deliveries, its queued \
             async events become dead letters, required events are refused; enable it with \
             POST /v2/_angos/webhooks/{name}/enable or change its URL"
        );
        let Some(journal) = self.journal.as_mut() else {
            return;
        };
        let state = DisabledWebhook {
            webhook: name.to_string(),
            url: disabled.url,
            unix_micros: disabled.since_unix_micros,
            reason: disabled.reason,
        };
        if let Err(error) = journal.append_disabled(&state) {
            log::error!(
                target: "angos::event_webhook",
                "journal: cannot record that webhook {name:?} is disabled (it is, until a restart): {error}"
            );
        }
    }

    /// Records that `name` is enabled again (when the journal says otherwise).
    pub(super) fn journal_enabled(&mut self, name: &str) {
        if let Some(journal) = self.journal.as_mut()
            && let Err(error) = journal.append_enabled(name)
        {
            log::error!(target: "angos::event_webhook", "journal: {error}");
        }
    }

    /// Records an async event before it is queued: its seq, `Ok(None)` when
    /// there is no journal, the error when it failed (logged here; the event
    /// then lives in memory only, and the caller decides what the client hears).
    pub(super) fn journal_append(
        &mut self,
        webhook: &str,
        payload: &Payload,
    ) -> std::io::Result<Option<u64>> {
        let Some(journal) = self.journal.as_mut() else {
            return Ok(None);
        };
        let delivery_id = super::super::status::delivery_id(&payload.event_id, webhook);
        let appended = journal.append_event(
            webhook,
            &payload.event_id,
            payload.kind.as_str(),
            self.unix_micros,
            &delivery_id,
            &payload.body,
        );
        match appended {
            Ok(appended) => {
                for dropped in appended.dropped {
                    log::warn!(
                        target: "angos::event_webhook",
                        "webhook {:?}: journal full; dropped the oldest undelivered event {}",
                        dropped.webhook,
                        dropped.event_id
                    );
                    self.dispatcher.remove_queued(&dropped.webhook, dropped.seq);
                    self.drops.push(dropped.webhook);
                }
                self.last_seq.insert(webhook.to_string(), appended.seq);
                self.log_reserve_change();
                Ok(Some(appended.seq))
            }
            Err(error) => {
                log::error!(
                    target: "angos::event_webhook",
                    "journal: cannot record event {} for webhook {webhook:?}: {error}; it is kept in memory only",
                    payload.event_id
                );
                self.log_reserve_change();
                Err(error)
            }
        }
    }

    /// Says what a full disk did to the journal's reserve, once per change.
    pub(super) fn log_reserve_change(&mut self) {
        let Some(journal) = self.journal.as_mut() else {
            return;
        };
        match journal.take_reserve_change() {
            Some(ReserveChange::Released) => log::warn!(
                target: "angos::event_webhook",
                "journal: the disk is full; the journal's reserve ({}) was released so async events \
                 are still recorded; free space on the registry's disk",
                human_bytes(journal.limits().reserve_bytes)
            ),
            Some(ReserveChange::Restored) => log::info!(
                target: "angos::event_webhook",
                "journal: the disk has room again; the journal's reserve is back"
            ),
            None => {}
        }
    }

    /// Drops the journal's pending events of webhooks no longer configured as async.
    pub(super) fn forget_unconfigured(&mut self) {
        let Some(journal) = self.journal.as_mut() else {
            return;
        };
        for (name, _) in journal.depths() {
            let keep = self
                .routing
                .webhooks()
                .get(&name)
                .is_some_and(|webhook| webhook.policy == Policy::Async);
            if !keep {
                match journal.forget_webhook(&name) {
                    Ok(_) => {
                        self.last_seq.remove(&name);
                    }
                    Err(error) => log::error!(target: "angos::event_webhook", "journal: {error}"),
                }
            }
        }
    }

    /// Status and dead letter for a finished delivery; `true` when its
    /// webhook's journal cursor may move (`acknowledge`, once the batch is
    /// settled).
    pub(super) fn settle(&mut self, done: &Completed, metrics: &mut Metrics) -> bool {
        let is_async = done.gate.is_none();
        let state = match (done.success, is_async) {
            (true, _) => DeliveryState::Success,
            (false, true) => DeliveryState::DeadLetter,
            (false, false) => DeliveryState::Failed,
        };
        self.status.record(
            &done.webhook,
            DeliveryRecord {
                delivery_id: done.delivery_id.clone(),
                payload: done.payload.clone(),
                state,
                attempts: done.attempts,
                duration_ms: done.duration_ms,
                status: done.status,
                error: done.error.clone(),
                finished_unix_micros: self.unix_micros,
                request: done.request.clone(),
            },
        );
        if !is_async {
            return false;
        }
        if state == DeliveryState::DeadLetter {
            let series = metrics.series(self.families.dead_letters, &[&done.webhook]);
            metrics.inc(series);
        }
        let Some(journal) = self.journal.as_mut() else {
            return false;
        };
        if state == DeliveryState::DeadLetter
            && let Some(seq) = done.seq
        {
            let letter = NewDeadLetter {
                webhook: &done.webhook,
                seq,
                event_id: &done.payload.event_id,
                delivery_id: &done.delivery_id,
                attempts: done.attempts,
                last_error: done.error.as_deref().unwrap_or("unknown error"),
                unix_micros: self.unix_micros,
                kind: done.payload.kind.as_str(),
                body: &done.payload.body,
            };
            if let Err(error) = journal.append_dead_letter(letter) {
                log::error!(target: "angos::event_webhook", "journal: cannot record a dead letter: {error}");
            }
        }
        true
    }

    /// Moves `webhook`'s journal cursor past every event it is done with:
    /// all before the head of its queue, or all it queued when that is empty.
    pub(super) fn acknowledge(&mut self, webhook: &str) {
        let Some(journal) = self.journal.as_mut() else {
            return;
        };
        let done_up_to = match self.dispatcher.queue_first_seq(webhook) {
            Some(next) => next.checked_sub(1),
            None => self.last_seq.get(webhook).copied(),
        };
        if let Some(seq) = done_up_to
            && let Err(error) = journal.append_ack(webhook, seq)
        {
            log::error!(target: "angos::event_webhook", "journal: cannot acknowledge: {error}");
        }
    }

    /// Async events waiting in the journal (0 without one).
    pub fn journal_pending(&self) -> usize {
        self.journal.as_ref().map_or(0, Journal::pending_total)
    }
}
