//! `angos storage check`: runs `s3::check::Check` against the configured
//! bucket through the same S3 client and outbound connections the server
//! uses (our resolver, rustls, the HTTP client), driven by a small poll
//! loop of its own, and reports each step.

use std::io;
use std::time::Duration;

use mio::{Events, Poll};

use super::outbound::Outbound;
use super::{DNS, FIRST_OUTBOUND};
use crate::clock::Clock;
use crate::config::s3::S3Config;
use crate::s3::check::{Check, StepReport};
use crate::s3::client::Client;

/// Runs every step (and the clean-up); the reports in order.
pub fn check(config: &S3Config, clock: &impl Clock) -> io::Result<Vec<StepReport>> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(64);
    let mut outbound = Outbound::new(FIRST_OUTBOUND, DNS, crate::dns::system_resolver());
    let mut client = Client::new(config, Box::new(crate::entropy::OsEntropy));
    let scratch = format!("_angos-check/{}/", crate::storage::random_hex(8));
    let mut check = Check::new(scratch);
    let unix_secs = || clock.unix_micros() / 1_000_000;
    let Some((operation, body)) = check.next_operation() else {
        return Ok(check.reports);
    };
    client.submit(operation, body, clock.now_ms(), unix_secs());
    loop {
        let now = clock.now_ms();
        let mut moved = true;
        while moved {
            moved = false;
            while let Some(outgoing) = client.poll_outgoing() {
                moved = true;
                outbound.carry(poll.registry(), outgoing, 0, now);
            }
            while let Some((exchange, answer)) = outbound.poll_exchange_event() {
                moved = true;
                client.handle_answer(exchange, answer, now);
            }
            while let Some((_, outcome)) = client.poll_done() {
                moved = true;
                check.judge(client.bucket(), outcome);
                match check.next_operation() {
                    Some((operation, body)) => {
                        client.submit(operation, body, now, unix_secs());
                    }
                    None => return Ok(check.reports),
                }
            }
        }
        let timeout = [client.poll_timeout(), outbound.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .map(|deadline| Duration::from_millis(deadline.saturating_sub(now)));
        let timeout = if outbound.has_work() {
            Some(Duration::ZERO)
        } else {
            timeout
        };
        if let Err(error) = poll.poll(&mut events, timeout)
            && error.kind() != io::ErrorKind::Interrupted
        {
            return Err(error);
        }
        let now = clock.now_ms();
        for event in events.iter() {
            outbound.handle_event(poll.registry(), event.token(), now);
        }
        outbound.handle_timeout(poll.registry(), now);
        client.handle_timeout(now, unix_secs());
    }
}
