//! The webhook admin API under the reserved extension namespace
//! `/v2/_angos/` (distribution-spec "Extensions").

use crate::app::Waiter;
use crate::event_webhook::notifier::Notifier;
use crate::event_webhook::notifier::admin::Admin;
use crate::http::{Method, Response};
use crate::registry::Commit;

pub enum AdminAnswer {
    Respond(Response),
    /// A test ping is under way; the answer comes from the notifier.
    Parked,
}

pub fn handle(
    notifier: &mut Notifier<Waiter, Commit>,
    waiter: Waiter,
    method: &Method,
    path: &str,
    now_ms: u64,
) -> AdminAnswer {
    match notifier.admin(waiter, method, path, now_ms) {
        Some(Admin::Respond(response)) => AdminAnswer::Respond(response),
        Some(Admin::Parked) => AdminAnswer::Parked,
        None => AdminAnswer::Respond(Response::new(404)),
    }
}
