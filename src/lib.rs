//! Angos: an OCI registry on one thread. The module tree below is the
//! architecture: `reactor` is the only code touching sockets and the real
//! clock; everything else takes bytes and a `now` and returns what to do.

// `unsafe` only where the system must be called directly: the reactor
// (signals, sendfile, socket options) and the kernel's random source.
#![deny(unsafe_code)]

pub mod app;
pub mod auth;
pub mod base64;
pub mod clock;
pub mod config;
pub mod digest;
pub mod dns;
#[allow(unsafe_code)]
pub mod entropy;
pub mod event_webhook;
pub mod hmac;
pub mod http;
pub mod logger;
pub mod maintenance;
pub mod metrics;
pub mod mirror;
pub mod pattern;
#[allow(unsafe_code)]
pub mod reactor;
pub mod registry;
pub mod retention;
pub mod s3;
pub mod storage;
pub mod timer;
pub mod tls;
pub mod ui;

#[cfg(test)]
mod test_support;
