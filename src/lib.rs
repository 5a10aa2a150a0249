//! Angos: an OCI registry on one thread. The module tree below is the
//! architecture: `reactor` is the only code touching sockets and the real
//! clock; everything else takes bytes and a `now` and returns what to do.

pub mod auth;
pub mod clock;
pub mod config;
pub mod digest;
pub mod dns;
pub mod event_webhook;
pub mod http;
pub mod logger;
pub mod metrics;
pub mod reactor;
pub mod registry;
pub mod storage;
pub mod timer;
pub mod tls;
