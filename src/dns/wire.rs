//! The DNS wire format: query construction and response validation (names
//! with compression, records, CNAME chains), bounded against hostile packets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{DnsError, QueryType};

/// RFC 1035 section 4.1.1: the fixed header.
pub(super) const HEADER_BYTES: usize = 12;
/// RFC 1035 section 2.3.4: labels are 63 octets or less, names 255 octets or less on the
/// wire, which is 253 characters of dotted text.
const LABEL_BYTES_MAX: usize = 63;
const NAME_WIRE_BYTES_MAX: usize = 255;
const NAME_TEXT_BYTES_MAX: usize = 253;
/// Compression pointers followed while reading one name. Pointers must also move strictly
/// backwards (see `read_name`), so this is a second fence, not the only one.
const POINTER_JUMPS_MAX: usize = 32;
/// CNAMEs followed within one answer; real chains are 1-3 long.
const CNAME_HOPS_MAX: usize = 8;
/// Answer records examined; a 512-byte answer holds at most ~46.
const ANSWER_RECORDS_MAX: usize = 256;
/// Addresses kept from one answer.
const ANSWER_ADDRESSES_MAX: usize = 32;

/// RFC 1035 section 3.2.2 / RFC 3596 section 2.1: the record types we read.
pub(super) const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
pub(super) const TYPE_AAAA: u16 = 28;
/// RFC 1035 section 3.2.4: the Internet class.
pub(super) const CLASS_IN: u16 = 1;

/// RFC 1035 section 4.1.1 header flag bits.
pub(super) const FLAG_QR: u16 = 0x8000;
const FLAG_TC: u16 = 0x0200;
pub(super) const FLAG_RD: u16 = 0x0100;
const RCODE_NXDOMAIN: u8 = 3;

impl QueryType {
    fn code(self) -> u16 {
        match self {
            QueryType::A => TYPE_A,
            QueryType::Aaaa => TYPE_AAAA,
        }
    }
}

/// Encodes a dotted host name (one trailing dot allowed) as lowercase wire labels ending in
/// the root label (RFC 1035 section 3.1). Letters, digits, `-` and `_` are accepted: RFC
/// 952's LDH rule plus the underscore that service names (RFC 8552) and real-world hosts use.
pub(super) fn encode_name(name: &str) -> Result<Vec<u8>, DnsError> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > NAME_TEXT_BYTES_MAX {
        return Err(DnsError::InvalidName);
    }
    let mut wire = Vec::with_capacity(name.len() + 2);
    for label in name.split('.') {
        if label.is_empty() || label.len() > LABEL_BYTES_MAX {
            return Err(DnsError::InvalidName);
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(DnsError::InvalidName);
        }
        wire.push(label.len() as u8);
        wire.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    wire.push(0);
    debug_assert!(wire.len() <= NAME_WIRE_BYTES_MAX);
    Ok(wire)
}

/// A standard query (RFC 1035 section 4.1): recursion desired, one question, class IN.
pub fn build_query(id: u16, name: &str, qtype: QueryType) -> Result<Vec<u8>, DnsError> {
    let qname = encode_name(name)?;
    Ok(query_packet(id, &qname, qtype))
}

pub(super) fn query_packet(id: u16, qname: &[u8], qtype: QueryType) -> Vec<u8> {
    let mut packet = Vec::with_capacity(HEADER_BYTES + qname.len() + 4);
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&FLAG_RD.to_be_bytes());
    // QDCOUNT 1, ANCOUNT, NSCOUNT, ARCOUNT 0.
    packet.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    packet.extend_from_slice(qname);
    packet.extend_from_slice(&qtype.code().to_be_bytes());
    packet.extend_from_slice(&CLASS_IN.to_be_bytes());
    packet
}

/// The usable content of a response: addresses of the asked type, and how long they may
/// be cached (0 when there are none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub addresses: Vec<IpAddr>,
    pub ttl_secs: u32,
}

/// Validates `packet` as the response to query `id` for `name`/`qtype` and extracts the
/// addresses, following CNAMEs from `name`. Never panics, whatever the bytes.
pub fn parse_response(packet: &[u8], id: u16, name: &str, qtype: QueryType) -> Result<Answer, DnsError> {
    let qname = encode_name(name)?;
    parse_response_wire(packet, id, &qname, qtype).map_err(|rejection| match rejection {
        Rejection::NotOurs(what) => DnsError::Malformed(what),
        Rejection::Failed(error) => error,
    })
}

/// Why a response was not an answer. The machine ignores `NotOurs` (it may be a spoof, a
/// stray or a late duplicate: RFC 5452 section 9.1 says to drop it and keep waiting) and
/// acts on `Failed`, which the server really said once the question matched.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Rejection {
    NotOurs(&'static str),
    Failed(DnsError),
}

/// A bounds-checked cursor; every read returns an error instead of panicking.
pub(super) struct Cursor<'a> {
    packet: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn bytes(&mut self, count: usize, what: &'static str) -> Result<&'a [u8], DnsError> {
        let end = self.pos.checked_add(count).ok_or(DnsError::Malformed(what))?;
        let bytes = self.packet.get(self.pos..end).ok_or(DnsError::Malformed(what))?;
        self.pos = end;
        Ok(bytes)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, DnsError> {
        let bytes = self.bytes(2, what)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DnsError> {
        let bytes = self.bytes(4, what)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// Reads a possibly compressed name and moves past it.
    fn name(&mut self) -> Result<Vec<u8>, DnsError> {
        let (name, end) = read_name(self.packet, self.pos)?;
        self.pos = end;
        Ok(name)
    }
}

/// Reads the name at `start` (RFC 1035 section 3.1 labels, section 4.1.4 compression) into
/// lowercase uncompressed wire form, returning it and the offset just past the name as it
/// sits at `start`. RFC 1035 says a pointer refers to a *prior* occurrence, so each pointer
/// must land strictly before the run of labels it ends: the run starts therefore strictly
/// decrease, which makes loops impossible; the jump cap and the 255-byte cap bound the work
/// besides. Extended label types (0x40, 0x80; RFC 6891 section 5) are rejected.
pub(super) fn read_name(packet: &[u8], start: usize) -> Result<(Vec<u8>, usize), DnsError> {
    let mut name = Vec::with_capacity(32);
    let mut pos = start;
    let mut run_start = start;
    let mut end = None;
    let mut jumps = 0;
    loop {
        let length = *packet
            .get(pos)
            .ok_or(DnsError::Malformed("name runs past the end"))?;
        match length & 0xC0 {
            0x00 if length == 0 => {
                name.push(0);
                return Ok((name, end.unwrap_or(pos + 1)));
            }
            0x00 => {
                let length = usize::from(length);
                let label = packet
                    .get(pos + 1..pos + 1 + length)
                    .ok_or(DnsError::Malformed("label runs past the end"))?;
                // +1 for the root label still to come.
                if name.len() + 1 + length + 1 > NAME_WIRE_BYTES_MAX {
                    return Err(DnsError::Malformed("name longer than 255 bytes"));
                }
                name.push(length as u8);
                name.extend(label.iter().map(u8::to_ascii_lowercase));
                pos += 1 + length;
            }
            0xC0 => {
                let low = *packet
                    .get(pos + 1)
                    .ok_or(DnsError::Malformed("pointer runs past the end"))?;
                let target = (usize::from(length & 0x3F) << 8) | usize::from(low);
                if end.is_none() {
                    end = Some(pos + 2);
                }
                if target >= run_start {
                    return Err(DnsError::Malformed(
                        "compression pointer does not point backwards",
                    ));
                }
                jumps += 1;
                if jumps > POINTER_JUMPS_MAX {
                    return Err(DnsError::Malformed("too many compression pointers"));
                }
                pos = target;
                run_start = target;
            }
            _ => return Err(DnsError::Malformed("unsupported label type")),
        }
    }
}

/// RFC 2181 section 8: a TTL with the top bit set is to be treated as zero.
pub(super) fn sane_ttl(ttl: u32) -> u32 {
    if ttl > i32::MAX as u32 { 0 } else { ttl }
}

/// An answer record we may use: an address of the asked type or a CNAME.
pub(super) enum RecordData {
    Address(IpAddr),
    Cname(Vec<u8>),
}

pub(super) struct Record {
    owner: Vec<u8>,
    ttl_secs: u32,
    data: RecordData,
}

pub(super) fn parse_response_wire(
    packet: &[u8],
    id: u16,
    qname: &[u8],
    qtype: QueryType,
) -> Result<Answer, Rejection> {
    let mut cursor = Cursor { packet, pos: 0 };
    let not_ours = |_| Rejection::NotOurs("shorter than a DNS header");
    let got_id = cursor.u16("header").map_err(not_ours)?;
    let flags = cursor.u16("header").map_err(not_ours)?;
    let qdcount = cursor.u16("header").map_err(not_ours)?;
    let ancount = cursor.u16("header").map_err(not_ours)?;
    let nscount = cursor.u16("header").map_err(not_ours)?;
    let arcount = cursor.u16("header").map_err(not_ours)?;
    if got_id != id {
        return Err(Rejection::NotOurs("unexpected query id"));
    }
    if flags & FLAG_QR == 0 {
        return Err(Rejection::NotOurs("not a response"));
    }
    if (flags >> 11) & 0xF != 0 {
        return Err(Rejection::NotOurs("unexpected opcode"));
    }
    let rcode = (flags & 0xF) as u8;

    // RFC 1035 does not make servers echo the question, and some drop it from FORMERR or
    // REFUSED replies. Such a reply can only make us try the next server, so it is taken on
    // the id alone; an answer or NXDOMAIN must echo our question (RFC 5452 section 9.1).
    if qdcount == 0 && rcode != 0 && rcode != RCODE_NXDOMAIN {
        return Err(Rejection::Failed(DnsError::ServerFailure(rcode)));
    }
    if qdcount != 1 {
        return Err(Rejection::NotOurs("question count is not one"));
    }
    let echoed = cursor
        .name()
        .map_err(|_| Rejection::NotOurs("question name malformed"))?;
    let echoed_type = cursor
        .u16("question")
        .map_err(|_| Rejection::NotOurs("question cut short"))?;
    let echoed_class = cursor
        .u16("question")
        .map_err(|_| Rejection::NotOurs("question cut short"))?;
    // Both sides are lowercased, so this is the case-insensitive comparison of RFC 4343.
    if echoed != qname || echoed_type != qtype.code() || echoed_class != CLASS_IN {
        return Err(Rejection::NotOurs("question does not match the query"));
    }

    match rcode {
        0 => {}
        RCODE_NXDOMAIN => return Err(Rejection::Failed(DnsError::NameNotFound)),
        _ => return Err(Rejection::Failed(DnsError::ServerFailure(rcode))),
    }
    // RFC 2181 section 9: data from a truncated response must not be used as if complete.
    if flags & FLAG_TC != 0 {
        return Err(Rejection::Failed(DnsError::Truncated));
    }
    if usize::from(ancount) > ANSWER_RECORDS_MAX {
        return Err(Rejection::Failed(DnsError::Malformed("too many answer records")));
    }
    let records = parse_records(&mut cursor, ancount, nscount, arcount, qtype).map_err(Rejection::Failed)?;
    follow_chain(&records, qname).map_err(Rejection::Failed)
}

/// Reads the answer section (RFC 1035 section 4.1.3), keeping records of class IN that are
/// of the asked type or CNAMEs, then walks authority and additional for structure only, so
/// a packet cut anywhere is an error rather than a shorter answer.
pub(super) fn parse_records(
    cursor: &mut Cursor<'_>,
    ancount: u16,
    nscount: u16,
    arcount: u16,
    qtype: QueryType,
) -> Result<Vec<Record>, DnsError> {
    let mut records = Vec::new();
    let total = u32::from(ancount) + u32::from(nscount) + u32::from(arcount);
    for index in 0..total {
        let owner = cursor.name()?;
        let rtype = cursor.u16("record header cut short")?;
        let class = cursor.u16("record header cut short")?;
        let ttl_secs = sane_ttl(cursor.u32("record header cut short")?);
        let rdlength = usize::from(cursor.u16("record header cut short")?);
        let rdata_start = cursor.pos;
        let rdata = cursor.bytes(rdlength, "record data runs past the end")?;
        if index >= u32::from(ancount) || class != CLASS_IN {
            continue;
        }
        let data = match rtype {
            TYPE_A if qtype == QueryType::A => {
                let octets: [u8; 4] = rdata
                    .try_into()
                    .map_err(|_| DnsError::Malformed("A record not 4 bytes"))?;
                RecordData::Address(IpAddr::V4(Ipv4Addr::from(octets)))
            }
            TYPE_AAAA if qtype == QueryType::Aaaa => {
                let octets: [u8; 16] = rdata
                    .try_into()
                    .map_err(|_| DnsError::Malformed("AAAA record not 16 bytes"))?;
                RecordData::Address(IpAddr::V6(Ipv6Addr::from(octets)))
            }
            TYPE_CNAME => {
                // The target may point anywhere earlier, but its own bytes must fill the
                // RDATA exactly (RFC 1035 section 3.3.1).
                let (target, end) = read_name(cursor.packet, rdata_start)?;
                if end != cursor.pos {
                    return Err(DnsError::Malformed("CNAME data length mismatch"));
                }
                RecordData::Cname(target)
            }
            _ => continue,
        };
        records.push(Record {
            owner,
            ttl_secs,
            data,
        });
    }
    Ok(records)
}

/// From the queried name, follow CNAMEs (RFC 1034 section 3.6.2: the chain sits in the
/// same answer) to the address records; the TTL is the minimum over every record used.
/// Records off the chain are ignored: a server has no business vouching for other names.
pub(super) fn follow_chain(records: &[Record], qname: &[u8]) -> Result<Answer, DnsError> {
    let mut current = qname;
    let mut ttl_secs = u32::MAX;
    for _ in 0..=CNAME_HOPS_MAX {
        let mut addresses = Vec::new();
        let mut address_ttl = u32::MAX;
        for record in records.iter().filter(|record| record.owner == current) {
            if let RecordData::Address(address) = record.data
                && !addresses.contains(&address)
                && addresses.len() < ANSWER_ADDRESSES_MAX
            {
                addresses.push(address);
                address_ttl = address_ttl.min(record.ttl_secs);
            }
        }
        if !addresses.is_empty() {
            return Ok(Answer {
                addresses,
                ttl_secs: ttl_secs.min(address_ttl),
            });
        }
        let cname = records.iter().find_map(|record| match &record.data {
            RecordData::Cname(target) if record.owner == current => Some((target, record.ttl_secs)),
            _ => None,
        });
        match cname {
            Some((target, cname_ttl)) => {
                current = target;
                ttl_secs = ttl_secs.min(cname_ttl);
            }
            // NOERROR without addresses ("NODATA"), possibly at the end of a chain whose
            // target the server did not resolve.
            None => {
                return Ok(Answer {
                    addresses: Vec::new(),
                    ttl_secs: 0,
                });
            }
        }
    }
    Err(DnsError::Malformed("CNAME chain too long or looping"))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{AT_QNAME, RESPONSE, ip, record, reply};
    use super::*;
    use crate::test_support::Rng;

    fn header(id: u16, flags: u16, counts: [u16; 4]) -> Vec<u8> {
        let mut packet = Vec::new();
        packet.extend_from_slice(&id.to_be_bytes());
        packet.extend_from_slice(&flags.to_be_bytes());
        for count in counts {
            packet.extend_from_slice(&count.to_be_bytes());
        }
        packet
    }

    fn wire(name: &str) -> Vec<u8> {
        encode_name(name).unwrap()
    }

    /// A response for `name` with the given A addresses, TTL 60.
    fn a_response(id: u16, name: &str, addresses: &[[u8; 4]]) -> Vec<u8> {
        let query = build_query(id, name, QueryType::A).unwrap();
        let mut packet = reply(&query, 0, addresses.len() as u16);
        for address in addresses {
            record(&mut packet, &AT_QNAME, TYPE_A, 60, address);
        }
        packet
    }

    // ---- queries ----------------------------------------------------------------------

    #[test]
    fn build_query_matches_rfc_1035_layout() {
        let packet = build_query(0xBEEF, "Example.COM.", QueryType::Aaaa).unwrap();
        let mut expected = vec![0xBE, 0xEF, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        expected.extend_from_slice(b"\x07example\x03com\x00");
        expected.extend_from_slice(&[0, 28, 0, 1]);
        assert_eq!(packet, expected);
    }

    #[test]
    fn build_query_validates_names() {
        let ok = ["a", "_dmarc.example.com", "xn--bcher-kva.example", "a-b.c_d.e"];
        for name in ok {
            assert!(build_query(1, name, QueryType::A).is_ok(), "{name}");
        }
        let label_63 = "a".repeat(63);
        assert!(build_query(1, &label_63, QueryType::A).is_ok());
        let label_64 = "a".repeat(64);
        // 4 labels of 63 = 255 chars; cut to 253.
        let long = [label_63.as_str(); 4].join(".");
        let bad = [
            "",
            ".",
            "a..b",
            ".a",
            "a b",
            "a/b",
            "é.example",
            label_64.as_str(),
            &long[..254],
        ];
        for name in bad {
            assert_eq!(
                build_query(1, name, QueryType::A),
                Err(DnsError::InvalidName),
                "{name:?}"
            );
        }
        assert!(build_query(1, &long[..253], QueryType::A).is_ok());
        // A trailing dot does not count towards the 253.
        assert!(build_query(1, &format!("{}.", &long[..253]), QueryType::A).is_ok());
    }

    // ---- responses --------------------------------------------------------------------

    #[test]
    fn parses_simple_answer() {
        let packet = a_response(7, "example.com", &[[192, 0, 2, 1], [192, 0, 2, 2]]);
        let answer = parse_response(&packet, 7, "EXAMPLE.com", QueryType::A).unwrap();
        assert_eq!(answer.addresses, vec![ip("192.0.2.1"), ip("192.0.2.2")]);
        assert_eq!(answer.ttl_secs, 60);
    }

    #[test]
    fn parses_aaaa_with_uncompressed_owner_and_ignores_other_types() {
        let query = build_query(9, "v6.example", QueryType::Aaaa).unwrap();
        let mut packet = reply(&query, 0, 3);
        let address = ip("2001:db8::1");
        let IpAddr::V6(octets) = address else {
            unreachable!()
        };
        record(&mut packet, &wire("V6.Example"), TYPE_AAAA, 100, &octets.octets());
        // A records in an AAAA answer, and TXT, are not ours to use.
        record(&mut packet, &AT_QNAME, TYPE_A, 5, &[1, 2, 3, 4]);
        record(&mut packet, &AT_QNAME, 16, 5, b"\x03txt");
        let answer = parse_response(&packet, 9, "v6.example", QueryType::Aaaa).unwrap();
        assert_eq!(
            answer,
            Answer {
                addresses: vec![address],
                ttl_secs: 100
            }
        );
    }

    #[test]
    fn follows_compressed_cname_chain_with_min_ttl() {
        // www.example.com CNAME web.example.com (compressed onto the question's
        // "example.com"), web CNAME cdn.example.net, cdn A x2.
        let query = build_query(0x1234, "www.example.com", QueryType::A).unwrap();
        let mut packet = reply(&query, 0, 4);
        // Decoy first: an A record for an unrelated name must not be used.
        record(&mut packet, &wire("evil.example"), TYPE_A, 999, &[6, 6, 6, 6]);
        let web_at = packet.len() + 12; // after owner (2) + fixed fields (10)
        let mut target = b"\x03web".to_vec();
        target.extend_from_slice(&[0xC0, 16]); // "example.com" inside the question
        record(&mut packet, &AT_QNAME, TYPE_CNAME, 300, &target);
        let cdn_at = packet.len() + 12;
        record(
            &mut packet,
            &[0xC0, web_at as u8],
            TYPE_CNAME,
            120,
            b"\x03cdn\x07example\x03net\x00",
        );
        record(&mut packet, &[0xC0, cdn_at as u8], TYPE_A, 30, &[198, 51, 100, 7]);
        let answer = parse_response(&packet, 0x1234, "www.example.com", QueryType::A);
        // Four records declared, four written (decoy, two CNAMEs, one A).
        assert_eq!(
            answer,
            Ok(Answer {
                addresses: vec![ip("198.51.100.7")],
                ttl_secs: 30
            })
        );

        // The same chain ending in an A with a larger TTL: the CNAME's 120 wins.
        let last = packet.len() - 16;
        packet[last + 6..last + 10].copy_from_slice(&3600u32.to_be_bytes());
        let answer = parse_response(&packet, 0x1234, "www.example.com", QueryType::A).unwrap();
        assert_eq!(answer.ttl_secs, 120);
    }

    #[test]
    fn cname_without_target_data_is_nodata_and_loops_are_errors() {
        let query = build_query(1, "a.example", QueryType::A).unwrap();
        let mut packet = reply(&query, 0, 1);
        record(&mut packet, &AT_QNAME, TYPE_CNAME, 60, &wire("b.example"));
        let answer = parse_response(&packet, 1, "a.example", QueryType::A).unwrap();
        assert_eq!(
            answer,
            Answer {
                addresses: vec![],
                ttl_secs: 0
            }
        );

        // a -> b -> a.
        let mut packet = reply(&query, 0, 2);
        record(&mut packet, &AT_QNAME, TYPE_CNAME, 60, &wire("b.example"));
        record(&mut packet, &wire("b.example"), TYPE_CNAME, 60, &AT_QNAME);
        assert!(matches!(
            parse_response(&packet, 1, "a.example", QueryType::A),
            Err(DnsError::Malformed(_))
        ));

        // CNAME RDLENGTH longer than the name inside it.
        let mut packet = reply(&query, 0, 1);
        let mut rdata = wire("b.example");
        rdata.push(0);
        record(&mut packet, &AT_QNAME, TYPE_CNAME, 60, &rdata);
        assert_eq!(
            parse_response(&packet, 1, "a.example", QueryType::A),
            Err(DnsError::Malformed("CNAME data length mismatch"))
        );
    }

    #[test]
    fn rcodes_map_to_errors() {
        let query = build_query(3, "gone.example", QueryType::A).unwrap();
        let packet = reply(&query, 3, 0);
        assert_eq!(
            parse_response(&packet, 3, "gone.example", QueryType::A),
            Err(DnsError::NameNotFound)
        );
        for rcode in [1, 2, 4, 5] {
            let packet = reply(&query, rcode, 0);
            let result = parse_response(&packet, 3, "gone.example", QueryType::A);
            assert_eq!(result, Err(DnsError::ServerFailure(rcode)));
        }
        // REFUSED without the question echoed is still understood.
        let packet = header(3, RESPONSE | 5, [0, 0, 0, 0]);
        assert_eq!(
            parse_response(&packet, 3, "gone.example", QueryType::A),
            Err(DnsError::ServerFailure(5))
        );
        // But NXDOMAIN must echo it: it would end the lookup.
        let packet = header(3, RESPONSE | 3, [0, 0, 0, 0]);
        assert!(matches!(
            parse_response(&packet, 3, "gone.example", QueryType::A),
            Err(DnsError::Malformed(_))
        ));
    }

    #[test]
    fn empty_noerror_is_ok_without_addresses() {
        let query = build_query(4, "noaddr.example", QueryType::Aaaa).unwrap();
        let packet = reply(&query, 0, 0);
        let answer = parse_response(&packet, 4, "noaddr.example", QueryType::Aaaa).unwrap();
        assert!(answer.addresses.is_empty());
    }

    #[test]
    fn truncated_flag_is_an_error() {
        let mut packet = a_response(5, "big.example", &[[192, 0, 2, 1]]);
        packet[2] |= (FLAG_TC >> 8) as u8;
        assert_eq!(
            parse_response(&packet, 5, "big.example", QueryType::A),
            Err(DnsError::Truncated)
        );
    }

    #[test]
    fn header_checks_reject_foreign_packets() {
        let packet = a_response(5, "x.example", &[[192, 0, 2, 1]]);
        let malformed = |result| matches!(result, Err(DnsError::Malformed(_)));
        assert!(
            malformed(parse_response(&packet, 6, "x.example", QueryType::A)),
            "id mismatch"
        );
        assert!(
            malformed(parse_response(&packet, 5, "y.example", QueryType::A)),
            "other name"
        );
        assert!(
            malformed(parse_response(&packet, 5, "x.example", QueryType::Aaaa)),
            "other type"
        );
        let mut query_echo = packet.clone();
        query_echo[2] &= 0x7F;
        assert!(
            malformed(parse_response(&query_echo, 5, "x.example", QueryType::A)),
            "QR clear"
        );
        let mut opcode = packet.clone();
        opcode[2] |= 0x10; // opcode 2 (STATUS)
        assert!(
            malformed(parse_response(&opcode, 5, "x.example", QueryType::A)),
            "opcode"
        );
        let mut two_questions = packet.clone();
        two_questions[5] = 2;
        assert!(
            malformed(parse_response(&two_questions, 5, "x.example", QueryType::A)),
            "qdcount"
        );
        let mut chaos = packet.clone();
        let class_at = HEADER_BYTES + wire("x.example").len() + 3;
        chaos[class_at] = 3;
        assert!(
            malformed(parse_response(&chaos, 5, "x.example", QueryType::A)),
            "class CH"
        );
        assert_eq!(
            parse_response_wire(&packet, 6, &wire("x.example"), QueryType::A),
            Err(Rejection::NotOurs("unexpected query id"))
        );
    }

    #[test]
    fn compression_pointer_loops_and_bounds_are_errors() {
        let query = build_query(8, "loop.example", QueryType::A).unwrap();
        let base = reply(&query, 0, 1);
        let at = base.len() as u8;
        let backwards = "compression pointer does not point backwards";
        let cases: [(Vec<u8>, &str); 6] = [
            (vec![0xC0, at], backwards),
            (vec![0xC0, at + 2, 0], backwards),
            // A label, then a pointer to that label: the classic one-name loop.
            (vec![1, b'x', 0xC0, at], backwards),
            (vec![0xFF, 0xFF], backwards),
            (vec![0x40, 0], "unsupported label type"),
            (vec![63, b'x'], "label runs past the end"),
        ];
        for (owner, expected) in cases {
            let mut packet = base.clone();
            record(&mut packet, &owner, TYPE_A, 60, &[1, 2, 3, 4]);
            if expected == "label runs past the end" {
                packet.truncate(base.len() + owner.len());
            }
            let result = parse_response(&packet, 8, "loop.example", QueryType::A);
            assert_eq!(result, Err(DnsError::Malformed(expected)), "owner {owner:?}");
        }

        // Two names pointing at each other (X = "a" -> Y, Y = "b" -> X), stored in the RDATA
        // of a TXT record we skip, then used as the owner of an A record.
        let mut packet = header(8, RESPONSE, [1, 2, 0, 0]);
        packet.extend_from_slice(&wire("loop.example"));
        packet.extend_from_slice(&[0, 1, 0, 1]);
        let x = packet.len() + 12;
        let y = x + 4;
        record(
            &mut packet,
            &AT_QNAME,
            16,
            60,
            &[1, b'a', 0xC0, y as u8, 1, b'b', 0xC0, x as u8],
        );
        record(&mut packet, &[0xC0, y as u8], TYPE_A, 60, &[1, 2, 3, 4]);
        assert_eq!(
            parse_response(&packet, 8, "loop.example", QueryType::A),
            Err(DnsError::Malformed(backwards))
        );

        // A chain of backward pointers longer than the jump cap, kept in the RDATA of a
        // TXT record (which we skip), then used as the owner of an A record.
        let pointer = |offset: usize| [0xC0 | (offset >> 8) as u8, offset as u8];
        let mut packet = header(8, RESPONSE, [1, 2, 0, 0]);
        packet.extend_from_slice(&wire("loop.example"));
        packet.extend_from_slice(&[0, 1, 0, 1]);
        let chain_start = packet.len() + 12;
        let mut chain = vec![0u8];
        for step in 0..40 {
            let previous = chain_start + if step == 0 { 0 } else { 1 + 2 * (step - 1) };
            chain.extend_from_slice(&pointer(previous));
        }
        let last = chain_start + chain.len() - 2;
        record(&mut packet, &AT_QNAME, 16, 60, &chain);
        record(&mut packet, &pointer(last), TYPE_A, 60, &[1, 2, 3, 4]);
        assert_eq!(
            parse_response(&packet, 8, "loop.example", QueryType::A),
            Err(DnsError::Malformed("too many compression pointers"))
        );
    }

    #[test]
    fn rdata_lengths_are_checked() {
        let query = build_query(2, "len.example", QueryType::A).unwrap();
        let mut packet = reply(&query, 0, 1);
        record(&mut packet, &AT_QNAME, TYPE_A, 60, &[1, 2, 3]);
        assert_eq!(
            parse_response(&packet, 2, "len.example", QueryType::A),
            Err(DnsError::Malformed("A record not 4 bytes"))
        );
        // RDLENGTH claiming more than the packet holds.
        let mut packet = reply(&query, 0, 1);
        record(&mut packet, &AT_QNAME, TYPE_A, 60, &[1, 2, 3, 4]);
        let rdlength_at = packet.len() - 6;
        packet[rdlength_at..rdlength_at + 2].copy_from_slice(&0xFFFFu16.to_be_bytes());
        assert!(matches!(
            parse_response(&packet, 2, "len.example", QueryType::A),
            Err(DnsError::Malformed(_))
        ));
    }

    #[test]
    fn ttl_with_top_bit_is_zero() {
        let query = build_query(2, "ttl.example", QueryType::A).unwrap();
        let mut packet = reply(&query, 0, 1);
        record(&mut packet, &AT_QNAME, TYPE_A, 0x8000_0000, &[1, 2, 3, 4]);
        let answer = parse_response(&packet, 2, "ttl.example", QueryType::A).unwrap();
        assert_eq!(answer.ttl_secs, 0);
    }

    /// Every strict prefix of a valid response (with records in all three sections) is an
    /// error, never a panic and never a shorter answer.
    #[test]
    fn every_prefix_of_a_valid_response_is_an_error() {
        let query = build_query(0xABCD, "www.example.com", QueryType::A).unwrap();
        let mut packet = reply(&query, 0, 2);
        packet[9] = 1; // NSCOUNT
        packet[11] = 1; // ARCOUNT
        record(
            &mut packet,
            &AT_QNAME,
            TYPE_CNAME,
            60,
            &[3, b'w', b'e', b'b', 0xC0, 16],
        );
        let web = (packet.len() - 6) as u8;
        record(&mut packet, &[0xC0, web], TYPE_A, 60, &[192, 0, 2, 80]);
        record(&mut packet, &[0xC0, 16], 2, 60, &[2, b'n', b's', 0xC0, 16]);
        record(&mut packet, &[0xC0, 16], TYPE_A, 60, &[192, 0, 2, 53]);
        let full = parse_response(&packet, 0xABCD, "www.example.com", QueryType::A);
        assert_eq!(
            full,
            Ok(Answer {
                addresses: vec![ip("192.0.2.80")],
                ttl_secs: 60
            })
        );
        for length in 0..packet.len() {
            let result = parse_response(&packet[..length], 0xABCD, "www.example.com", QueryType::A);
            assert!(result.is_err(), "prefix of {length} bytes parsed: {result:?}");
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let name = "fuzz.example";
        let qname = wire(name);
        for round in 0..20_000 {
            let length = (rng.next() % 600) as usize;
            let mut packet: Vec<u8> = (0..length).map(|_| rng.next() as u8).collect();
            // Half the time give it a plausible header and question so the fuzz reaches
            // the record parser.
            if round % 2 == 0 && packet.len() >= HEADER_BYTES {
                packet[..2].copy_from_slice(&7u16.to_be_bytes());
                packet[2] = 0x81;
                packet[3] &= 0xF0;
                packet[4..6].copy_from_slice(&[0, 1]);
                packet[6] = 0;
                let tail = packet.split_off(HEADER_BYTES);
                packet.extend_from_slice(&qname);
                packet.extend_from_slice(&[0, 1, 0, 1]);
                packet.extend_from_slice(&tail);
            }
            let _ = parse_response(&packet, 7, name, QueryType::A);
        }
    }

    #[test]
    fn mutated_valid_responses_never_panic() {
        let mut rng = Rng(42);
        let query = build_query(7, "m.example", QueryType::A).unwrap();
        let mut base = reply(&query, 0, 3);
        record(&mut base, &AT_QNAME, TYPE_CNAME, 60, &[1, b'n', 0xC0, 14]);
        let n = (base.len() - 4) as u8;
        record(&mut base, &[0xC0, n], TYPE_CNAME, 60, &[1, b'o', 0xC0, 14]);
        let o = (base.len() - 4) as u8;
        record(&mut base, &[0xC0, o], TYPE_A, 60, &[1, 2, 3, 4]);
        assert_eq!(
            parse_response(&base, 7, "m.example", QueryType::A)
                .unwrap()
                .addresses,
            vec![ip("1.2.3.4")]
        );
        for _ in 0..20_000 {
            let mut packet = base.clone();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() as usize) % packet.len();
                packet[at] = rng.next() as u8;
            }
            let _ = parse_response(&packet, 7, "m.example", QueryType::A);
        }
    }
}
