//! The S3 protocol, sans-IO: request signing (AWS Signature Version 4,
//! `sigv4`). The S3 storage backend builds on it; the reactor's outbound
//! client carries its requests.

pub mod api;
pub mod check;
pub mod client;
pub mod sigv4;
pub mod xml;

#[cfg(test)]
pub mod fake;
