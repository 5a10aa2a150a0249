//! Non-blocking DNS: a sans-IO stub resolver over UDP, plus /etc/hosts and /etc/resolv.conf.
//! It owns query construction, response validation and the lookup machine (retries, search
//! list, cache); it must never touch a socket or read a clock (`now_ms` is handed in), and
//! nothing here may block: getaddrinfo would stall the single-threaded reactor.
//!
//! Call order for the owner (the reactor): after every input (`resolve`, `handle_datagram`,
//! `handle_timeout`, `cancel`) drain `poll_transmit` (send each datagram from the UDP socket)
//! and `poll_result`, then re-arm the timer from `poll_timeout`.
//!
//! Not supported, on purpose: TCP fallback (a truncated answer is `DnsError::Truncated`;
//! webhook hosts fit in 512 bytes), EDNS0, DNSSEC, negative caching, `options rotate`.
//!
//! Where the code is: `conf` parses resolv.conf and hosts, `wire` builds queries and
//! validates responses, `resolver` is the lookup machine (queries in flight, retries across
//! nameservers, timeouts, search list, cache). This file holds what they share (the errors,
//! the query type, the limits) and `system_resolver`, the one place that reads files.

use std::fmt;
use std::io::Read;

mod conf;
mod resolver;
mod wire;

pub use conf::{Hosts, ResolverConfig, parse_hosts, parse_resolv_conf};
pub use resolver::{LookupId, Resolver};
pub use wire::{Answer, build_query, parse_response};

/// glibc's MAXNS: nameservers beyond the third are ignored.
pub const NAMESERVERS_MAX: usize = 3;
/// glibc's MAXDNSRCH: search domains beyond the sixth are ignored.
pub const SEARCH_DOMAINS_MAX: usize = 6;
/// Lookups waiting on the network at once (each costs up to two outstanding queries).
pub const LOOKUPS_IN_FLIGHT_MAX: usize = 64;
/// Names kept in the answer cache.
pub const CACHE_NAMES_MAX: usize = 256;
/// Upper bound on how long an answer is cached, whatever its TTL says: a webhook host
/// that moves should be followed within minutes.
pub const CACHE_TTL_SECS_MAX: u32 = 300;

/// Largest /etc/hosts or /etc/resolv.conf read at start; bigger files are cut here.
const CONFIG_FILE_BYTES_MAX: u64 = 4 << 20;

/// Why a lookup failed. Hand-written `Display` so operators read a sentence, not a variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsError {
    /// NXDOMAIN (RCODE 3) for every name tried.
    NameNotFound,
    /// The server answered with this RCODE (SERVFAIL, REFUSED, FORMERR, ...).
    ServerFailure(u8),
    /// No name server answered within `attempts` rounds.
    Timeout,
    /// The answer did not fit in a UDP datagram (TC bit) and we do not fall back to TCP.
    Truncated,
    /// The response broke the wire format.
    Malformed(&'static str),
    /// Not a host name we would put on the wire.
    InvalidName,
    /// `LOOKUPS_IN_FLIGHT_MAX` lookups are already waiting on the network.
    TooManyLookups,
    /// The name exists but has neither A nor AAAA records.
    NoAddresses,
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsError::NameNotFound => f.write_str("DNS: name not found"),
            DnsError::ServerFailure(rcode) => {
                // RFC 1035 section 4.1.1 and RFC 6895 section 2.3 name the common codes.
                let name = match rcode {
                    1 => "FORMERR",
                    2 => "SERVFAIL",
                    4 => "NOTIMP",
                    5 => "REFUSED",
                    _ => "unknown",
                };
                write!(f, "DNS: name server failure (rcode {rcode}, {name})")
            }
            DnsError::Timeout => f.write_str("DNS: no response from any name server"),
            DnsError::Truncated => f.write_str("DNS: response truncated (TCP fallback not supported)"),
            DnsError::Malformed(what) => write!(f, "DNS: malformed response: {what}"),
            DnsError::InvalidName => f.write_str("DNS: invalid host name"),
            DnsError::TooManyLookups => f.write_str("DNS: too many lookups in flight"),
            DnsError::NoAddresses => f.write_str("DNS: name has no IPv4 or IPv6 address"),
        }
    }
}

impl std::error::Error for DnsError {}

/// The address record type asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryType {
    A,
    Aaaa,
}

/// Reads a configuration file, up to `CONFIG_FILE_BYTES_MAX`; missing or unreadable is
/// empty, which means the defaults.
fn read_config_file(path: &str) -> String {
    let mut text = String::new();
    if let Ok(file) = std::fs::File::open(path)
        && file
            .take(CONFIG_FILE_BYTES_MAX)
            .read_to_string(&mut text)
            .is_err()
    {
        log::warn!("dns: could not read {path} as text; using defaults");
        text.clear();
    }
    text
}

/// A resolver configured from /etc/resolv.conf and /etc/hosts, read once, at start (the
/// only blocking I/O this module does, before the reactor runs).
pub fn system_resolver() -> Resolver {
    let config = parse_resolv_conf(&read_config_file("/etc/resolv.conf"));
    let hosts = parse_hosts(&read_config_file("/etc/hosts"));
    Resolver::new(config, hosts)
}

#[cfg(test)]
mod testing;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_read_well() {
        assert_eq!(DnsError::NameNotFound.to_string(), "DNS: name not found");
        assert_eq!(
            DnsError::ServerFailure(2).to_string(),
            "DNS: name server failure (rcode 2, SERVFAIL)"
        );
        assert_eq!(DnsError::Malformed("x").to_string(), "DNS: malformed response: x");
        assert_eq!(
            DnsError::Timeout.to_string(),
            "DNS: no response from any name server"
        );
    }
}
