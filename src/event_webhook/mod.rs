//! Event webhooks: events, their formats and signatures, the delivery
//! machine, the dispatcher and its queues. Sans-IO: the reactor carries the bytes.

pub mod backoff;
pub mod dispatcher;
pub mod event;
pub mod format;
pub mod journal;
pub mod notifier;
pub mod queue;
pub mod request;
pub mod routing;
pub mod signature;
pub mod status;
