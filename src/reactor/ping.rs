//! `angos webhook test NAME`: one `ping` delivery to one webhook, with its
//! URL, token, CA bundle, client certificate and timeout, through the same
//! dispatcher and outbound code the server uses (our resolver, rustls, the
//! HTTP client), driven by a small poll loop of its own. It reports what
//! happened.

use std::io;
use std::rc::Rc;
use std::time::Duration;

use mio::{Events, Poll};

use super::outbound::{self, Outbound};
use super::{DNS, FIRST_OUTBOUND};
use crate::clock::Clock;
use crate::config::{Config, Policy, WebhookConfig};
use crate::event_webhook::dispatcher::{Completed, Dispatcher, GateKind};
use crate::event_webhook::notifier::operations::ping_payload;

/// Sends one ping to webhook `name` and returns how its delivery ended.
pub fn ping(config: &Config, name: &str, clock: &impl Clock) -> io::Result<Result<Completed, String>> {
    let Some(webhook) = config.webhooks.get(name) else {
        let known: Vec<&str> = config.webhooks.keys().map(String::as_str).collect();
        return Ok(Err(format!(
            "no webhook named {name:?} is configured (known: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )));
    };
    let once = Rc::new(WebhookConfig {
        max_retries: 0,
        policy: Policy::Optional,
        ..webhook.clone()
    });
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(64);
    let mut outbound = Outbound::new(FIRST_OUTBOUND, DNS, crate::dns::system_resolver());
    let mut dispatcher = Dispatcher::new(clock.now_ms(), 1);
    dispatcher.set_wall_clock(clock.now_ms(), clock.unix_micros());
    let payload = Rc::new(ping_payload(crate::storage::uuid_v4(), clock.unix_micros()));
    dispatcher.gate(GateKind::Optional, vec![(once, payload)], clock.now_ms());
    loop {
        let now = clock.now_ms();
        outbound::pump(&mut dispatcher, &mut outbound, poll.registry(), now);
        if let Some(done) = dispatcher.poll_completed() {
            return Ok(Ok(done));
        }
        let timeout = [dispatcher.poll_timeout(), outbound.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .map(|deadline| Duration::from_millis(deadline.saturating_sub(now)));
        if let Err(error) = poll.poll(&mut events, timeout)
            && error.kind() != io::ErrorKind::Interrupted
        {
            return Err(error);
        }
        let now = clock.now_ms();
        for event in events.iter() {
            outbound.handle_event(poll.registry(), event.token(), now);
        }
        dispatcher.handle_timeout(now);
        outbound.handle_timeout(poll.registry(), now);
    }
}
