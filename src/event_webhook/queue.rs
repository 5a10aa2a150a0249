//! The in-memory view of the async delivery queues, behind a small
//! interface. Per webhook: events in order, bounded; when full, the oldest
//! event that is not in flight is dropped. Durability is the journal's job
//! (`journal/`): each queued event carries its journal sequence number so
//! the notifier can acknowledge it there.

use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use super::event::Payload;
use crate::config::WebhookConfig;

/// One queued async event.
#[derive(Debug, Clone)]
pub struct Queued {
    pub payload: Rc<Payload>,
    /// Its record in the journal, when it has one.
    pub seq: Option<u64>,
    /// When it was queued (monotonic ms), for the oldest-pending age.
    pub enqueued_ms: u64,
    /// How long it had waited before that (in an earlier process, for an
    /// event recovered from the journal).
    pub waited_before_ms: u64,
}

/// What the dispatcher needs of a queue. The head of a webhook's queue is
/// the event in flight (or next to go); it leaves only by `pop_front`.
pub trait AsyncQueue {
    /// Appends; returns the event dropped to make room, if any.
    fn push(&mut self, webhook: Rc<WebhookConfig>, item: Queued) -> Option<Queued>;
    /// The head of a webhook's queue, marked as in flight.
    fn start_front(&mut self, webhook: &str) -> Option<(Rc<WebhookConfig>, Queued)>;
    fn front(&self, webhook: &str) -> Option<&Queued>;
    /// The first journal seq among a webhook's queued events (head included).
    fn first_seq(&self, webhook: &str) -> Option<u64>;
    fn pop_front(&mut self, webhook: &str);
    /// Removes a waiting (not in flight) event by journal sequence number.
    fn remove_seq(&mut self, webhook: &str, seq: u64) -> bool;
    /// Names of webhooks with a queue, sorted.
    fn webhooks(&self) -> Vec<String>;
    /// Points waiting events at a new definition of their webhook.
    fn set_webhook(&mut self, name: &str, webhook: Rc<WebhookConfig>);
    /// Drops a webhook's queue, except its head when in flight; returns how many were dropped.
    fn remove_webhook(&mut self, name: &str) -> usize;
    fn set_length_max(&mut self, length_max: usize);
    fn depths(&self) -> Vec<(String, usize)>;
    fn total(&self) -> usize;
}

struct WebhookQueue {
    webhook: Rc<WebhookConfig>,
    events: VecDeque<Queued>,
    /// The head was handed out by `start_front` and is being delivered.
    head_taken: bool,
}

pub struct MemoryQueue {
    length_max: usize,
    queues: BTreeMap<String, WebhookQueue>,
}

impl MemoryQueue {
    pub fn new(length_max: usize) -> MemoryQueue {
        MemoryQueue {
            length_max: length_max.max(1),
            queues: BTreeMap::new(),
        }
    }
}

impl AsyncQueue for MemoryQueue {
    fn push(&mut self, webhook: Rc<WebhookConfig>, item: Queued) -> Option<Queued> {
        let name = webhook.name.clone();
        let queue = self.queues.entry(name).or_insert_with(|| WebhookQueue {
            webhook,
            events: VecDeque::new(),
            head_taken: false,
        });
        let mut dropped = None;
        if queue.events.len() >= self.length_max {
            // Never the head in flight: its delivery is already under way.
            let oldest_waiting = usize::from(queue.head_taken);
            if oldest_waiting < queue.events.len() {
                dropped = queue.events.remove(oldest_waiting);
            } else {
                return Some(item);
            }
        }
        queue.events.push_back(item);
        dropped
    }

    fn start_front(&mut self, webhook: &str) -> Option<(Rc<WebhookConfig>, Queued)> {
        let queue = self.queues.get_mut(webhook)?;
        let head = queue.events.front()?.clone();
        queue.head_taken = true;
        Some((queue.webhook.clone(), head))
    }

    fn front(&self, webhook: &str) -> Option<&Queued> {
        self.queues.get(webhook)?.events.front()
    }

    fn first_seq(&self, webhook: &str) -> Option<u64> {
        self.queues.get(webhook)?.events.iter().find_map(|item| item.seq)
    }

    fn pop_front(&mut self, webhook: &str) {
        if let Some(queue) = self.queues.get_mut(webhook) {
            queue.events.pop_front();
            queue.head_taken = false;
            if queue.events.is_empty() {
                self.queues.remove(webhook);
            }
        }
    }

    fn remove_seq(&mut self, webhook: &str, seq: u64) -> bool {
        let Some(queue) = self.queues.get_mut(webhook) else {
            return false;
        };
        let first_waiting = usize::from(queue.head_taken);
        let Some(index) = queue
            .events
            .iter()
            .skip(first_waiting)
            .position(|item| item.seq == Some(seq))
        else {
            return false;
        };
        queue.events.remove(first_waiting + index);
        if queue.events.is_empty() {
            self.queues.remove(webhook);
        }
        true
    }

    fn webhooks(&self) -> Vec<String> {
        self.queues.keys().cloned().collect()
    }

    fn set_webhook(&mut self, name: &str, webhook: Rc<WebhookConfig>) {
        if let Some(queue) = self.queues.get_mut(name) {
            queue.webhook = webhook;
        }
    }

    fn remove_webhook(&mut self, name: &str) -> usize {
        let Some(queue) = self.queues.get_mut(name) else {
            return 0;
        };
        let keep = usize::from(queue.head_taken);
        let dropped = queue.events.len().saturating_sub(keep);
        queue.events.truncate(keep);
        if queue.events.is_empty() {
            self.queues.remove(name);
        }
        dropped
    }

    fn set_length_max(&mut self, length_max: usize) {
        self.length_max = length_max.max(1);
    }

    fn depths(&self) -> Vec<(String, usize)> {
        self.queues
            .iter()
            .map(|(name, queue)| (name.clone(), queue.events.len()))
            .collect()
    }

    fn total(&self) -> usize {
        self.queues.values().map(|queue| queue.events.len()).sum()
    }
}
