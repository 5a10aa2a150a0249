//! Outbound exchanges as data, shared by the sans-IO machines that talk to
//! other servers (the pull-through cache, the S3 client): where a request
//! goes (`Target`), what the reactor's outbound client is asked to do
//! (`Outgoing`), and the pieces of the answer it feeds back (`Answer`).

use std::path::PathBuf;

use super::client::ResponseHead;
use crate::config::Scheme;
use crate::tls::ClientIdentity;

/// One exchange: a request and its answer, on a connection the outbound
/// client picks (keep-alive per target).
pub type ExchangeId = u64;

/// Where an exchange goes: a host and the TLS files for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    pub ca_bundle: Option<PathBuf>,
    pub client_identity: Option<ClientIdentity>,
}

/// What the reactor's outbound client is asked to do.
#[derive(Debug)]
pub enum Outgoing {
    Send {
        exchange: ExchangeId,
        target: Target,
        /// The head (and, for the pull-through cache, the whole request).
        request: Vec<u8>,
        /// A body written after it, shared with later attempts.
        body: std::rc::Rc<Vec<u8>>,
        head_request: bool,
    },
    /// Nobody wants the rest of this answer: close its connection.
    Cancel { exchange: ExchangeId },
    /// Whoever streams this answer is full: stop reading it for now.
    Pause { exchange: ExchangeId },
    /// Read it again.
    Resume { exchange: ExchangeId },
}

/// A piece of an exchange's answer, in order: `Head`, `Body`s, `End`; or
/// `Failed` at any point.
#[derive(Debug)]
pub enum Answer {
    Head(ResponseHead),
    Body(Vec<u8>),
    End,
    Failed(String),
}
