//! The DNS wire format: query construction and response validation (names
//! with compression, records, CNAME chains), bounded against hostile packets.

use super::*;

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
