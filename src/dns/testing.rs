//! Helpers shared by the DNS unit tests: response packets built by hand, and addresses.

use std::net::IpAddr;

use super::wire::{CLASS_IN, FLAG_QR, FLAG_RD};

pub(super) fn record(packet: &mut Vec<u8>, owner: &[u8], rtype: u16, ttl: u32, rdata: &[u8]) {
    packet.extend_from_slice(owner);
    packet.extend_from_slice(&rtype.to_be_bytes());
    packet.extend_from_slice(&CLASS_IN.to_be_bytes());
    packet.extend_from_slice(&ttl.to_be_bytes());
    packet.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    packet.extend_from_slice(rdata);
}

/// Pointer to the question name, which always starts at offset 12.
pub(super) const AT_QNAME: [u8; 2] = [0xC0, 12];
pub(super) const RESPONSE: u16 = FLAG_QR | FLAG_RD | 0x0080;

/// A response to `query` (id and question copied) with `rcode`, answers appended by
/// the caller via `record`; `ancount` must match.
pub(super) fn reply(query: &[u8], rcode: u8, ancount: u16) -> Vec<u8> {
    let mut packet = query.to_vec();
    packet[2..4].copy_from_slice(&(RESPONSE | u16::from(rcode)).to_be_bytes());
    packet[6..8].copy_from_slice(&ancount.to_be_bytes());
    packet
}

pub(super) fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}
