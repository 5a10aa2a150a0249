//! The async delivery queue behind a small interface, so a durable
//! implementation can replace the in-memory one without touching the
//! dispatcher. Per webhook: events in order, bounded; when full, the oldest
//! event that is not in flight is dropped.

use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use super::dispatcher::Payload;
use crate::config::WebhookConfig;

/// What the dispatcher needs of a queue. The head of a webhook's queue is
/// the event in flight (or next to go); it leaves only by `pop_front`.
pub trait AsyncQueue {
    /// Appends; returns the event dropped to make room, if any.
    fn push(&mut self, webhook: Rc<WebhookConfig>, payload: Rc<Payload>) -> Option<Rc<Payload>>;
    /// The head of a webhook's queue, marked as in flight.
    fn start_front(&mut self, webhook: &str) -> Option<(Rc<WebhookConfig>, Rc<Payload>)>;
    fn pop_front(&mut self, webhook: &str);
    /// Names of webhooks with a queue, sorted.
    fn webhooks(&self) -> Vec<String>;
    /// Points waiting events at a new definition of their webhook.
    fn set_webhook(&mut self, name: &str, webhook: Rc<WebhookConfig>);
    /// Drops a webhook's queue, except its head when in flight; returns how many were dropped.
    fn remove_webhook(&mut self, name: &str) -> usize;
    fn depths(&self) -> Vec<(String, usize)>;
    fn total(&self) -> usize;
}

struct WebhookQueue {
    webhook: Rc<WebhookConfig>,
    events: VecDeque<Rc<Payload>>,
    /// The head was handed out by `front` and is being delivered.
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
    fn push(&mut self, webhook: Rc<WebhookConfig>, payload: Rc<Payload>) -> Option<Rc<Payload>> {
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
                return Some(payload);
            }
        }
        queue.events.push_back(payload);
        dropped
    }

    fn start_front(&mut self, webhook: &str) -> Option<(Rc<WebhookConfig>, Rc<Payload>)> {
        let queue = self.queues.get_mut(webhook)?;
        let head = queue.events.front()?.clone();
        queue.head_taken = true;
        Some((queue.webhook.clone(), head))
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
