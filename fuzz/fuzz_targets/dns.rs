//! The stub resolver's parsers (`dns`): a UDP response checked against the
//! question we asked, and the text of /etc/resolv.conf and /etc/hosts.
//! Input: a selector byte (question name and type), then the datagram; the
//! same bytes, read as text, go to the two file parsers.
#![no_main]

use std::net::IpAddr;

use angos::dns::{QueryType, build_query, parse_hosts, parse_resolv_conf, parse_response};
use libfuzzer_sys::fuzz_target;

/// Questions a webhook lookup might ask; seeds answer them.
const NAMES: [&str; 4] = ["hooks.example.com", "a.example", "EXAMPLE.com", "x"];

fuzz_target!(|input: &[u8]| {
    let Some((&selector, packet)) = input.split_first() else {
        return;
    };
    let name = NAMES[usize::from(selector & 3)];
    let qtype = if selector & 4 == 0 {
        QueryType::A
    } else {
        QueryType::Aaaa
    };
    // The id the resolver chose is random; take the packet's own so the fuzzer
    // gets past the id check and into the records.
    let id = match packet {
        [high, low, ..] if selector & 8 == 0 => u16::from_be_bytes([*high, *low]),
        _ => 0x1234,
    };
    assert!(build_query(id, name, qtype).is_ok());
    if let Ok(answer) = parse_response(packet, id, name, qtype) {
        assert!(answer.addresses.len() <= 32);
        assert!(answer.ttl_secs <= i32::MAX as u32);
        assert!(answer.addresses.iter().all(|address| match qtype {
            QueryType::A => matches!(address, IpAddr::V4(_)),
            QueryType::Aaaa => matches!(address, IpAddr::V6(_)),
        }));
        assert!(!answer.addresses.is_empty() || answer.ttl_secs == 0);
    }

    let text = String::from_utf8_lossy(packet);
    let config = parse_resolv_conf(&text);
    assert!((1..=3).contains(&config.nameservers.len()));
    assert!(config.search.len() <= 6);
    assert!(config.ndots <= 15 && (1..=5).contains(&config.attempts));
    assert!((1000..=30_000).contains(&config.timeout_ms));
    let hosts = parse_hosts(&text);
    for word in text.split_ascii_whitespace().take(16) {
        if let Some(addresses) = hosts.lookup(word) {
            assert!(!addresses.is_empty() && addresses.len() <= 16);
        }
    }
});
