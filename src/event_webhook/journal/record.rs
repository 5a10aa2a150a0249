//! The record format (see the `journal` module docs): the frame (length, CRC-32C), the encoding
//! of the four record types, and the decoding of a checksummed payload with every length checked
//! against what is left. Bytes in, bytes out: it touches no file and no journal state.

use std::io;

use super::{
    DeadLetter, DisabledWebhook, LAST_ERROR_BYTES_MAX, PendingEvent, RECORD_PAYLOAD_BYTES_MAX, invalid,
};

pub(super) const HEADER_BYTES: usize = 8;
pub(super) const TYPE_EVENT: u8 = b'E';
pub(super) const TYPE_ACK: u8 = b'A';
pub(super) const TYPE_DEAD_LETTER: u8 = b'D';
pub(super) const TYPE_WEBHOOK_STATE: u8 = b'W';

/// An event record's fields as `append_event` takes them; the seq is added when it is encoded.
pub(super) struct EventFields<'a> {
    pub(super) webhook: &'a str,
    pub(super) event_id: &'a str,
    pub(super) kind: &'a str,
    pub(super) unix_micros: u64,
    pub(super) delivery_id: &'a str,
    pub(super) body: &'a [u8],
}

impl EventFields<'_> {
    /// What the payload will weigh, checked against the cap before anything is written.
    pub(super) fn payload_bytes(&self) -> usize {
        let payload_bytes =
            1 + 8 + field_bytes(&[self.webhook.len(), self.event_id.len(), self.kind.len()]) + 8;
        payload_bytes + field_bytes(&[self.delivery_id.len(), self.body.len()])
    }

    /// The framed record; the caller checked `payload_bytes()` against the cap, so every length
    /// fits a u32.
    pub(super) fn encode(&self, seq: u64) -> Vec<u8> {
        encode(self.payload_bytes(), |out| {
            out.push(TYPE_EVENT);
            put_u64(out, seq);
            put_str(out, self.webhook);
            put_str(out, self.event_id);
            put_str(out, self.kind);
            put_u64(out, self.unix_micros);
            put_str(out, self.delivery_id);
            put_bytes(out, self.body);
        })
    }
}

pub(super) enum Record {
    Event(PendingEvent),
    Ack {
        webhook: String,
        seq: u64,
    },
    DeadLetter(DeadLetter),
    /// A webhook's disabled state from now on; `None`: enabled.
    WebhookState {
        webhook: String,
        disabled: Option<DisabledWebhook>,
    },
}

pub(super) fn decode(payload: &[u8]) -> Result<Record, &'static str> {
    let mut decoder = Decoder { rest: payload };
    let record = match decoder.u8().ok_or("empty record")? {
        TYPE_EVENT => decoder.event().map(Record::Event),
        TYPE_ACK => decoder.ack(),
        TYPE_DEAD_LETTER => decoder.dead_letter().map(Record::DeadLetter),
        TYPE_WEBHOOK_STATE => decoder.webhook_state(),
        _ => return Err("unknown record type"),
    };
    match record {
        Some(record) if decoder.rest.is_empty() => Ok(record),
        Some(_) => Err("trailing bytes in record"),
        None => Err("malformed record"),
    }
}

/// Reads fields off a checksummed payload; every length is checked against what is left.
struct Decoder<'a> {
    rest: &'a [u8],
}

impl<'a> Decoder<'a> {
    fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        if count > self.rest.len() {
            return None;
        }
        let (taken, rest) = self.rest.split_at(count);
        self.rest = rest;
        Some(taken)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|bytes| bytes[0])
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|bytes| u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|bytes| u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let count = self.u32()? as usize;
        self.take(count)
    }

    fn string(&mut self) -> Option<String> {
        std::str::from_utf8(self.bytes()?).ok().map(str::to_string)
    }

    fn event(&mut self) -> Option<PendingEvent> {
        Some(PendingEvent {
            seq: self.u64()?,
            webhook: self.string()?,
            event_id: self.string()?,
            kind: self.string()?,
            unix_micros: self.u64()?,
            delivery_id: self.string()?,
            body: self.bytes()?.to_vec(),
        })
    }

    fn ack(&mut self) -> Option<Record> {
        Some(Record::Ack {
            webhook: self.string()?,
            seq: self.u64()?,
        })
    }

    fn webhook_state(&mut self) -> Option<Record> {
        let webhook = self.string()?;
        let flag = self.u8()?;
        let unix_micros = self.u64()?;
        let url = self.string()?;
        let reason = self.string()?;
        let disabled = match flag {
            0 => None,
            1 => Some(DisabledWebhook {
                webhook: webhook.clone(),
                url,
                unix_micros,
                reason,
            }),
            _ => return None,
        };
        Some(Record::WebhookState { webhook, disabled })
    }

    fn dead_letter(&mut self) -> Option<DeadLetter> {
        Some(DeadLetter {
            number: self.u64()?,
            webhook: self.string()?,
            seq: self.u64()?,
            event_id: self.string()?,
            delivery_id: self.string()?,
            attempts: self.u32()?,
            last_error: self.string()?,
            unix_micros: self.u64()?,
            kind: self.string()?,
            body: self.bytes()?.to_vec(),
        })
    }
}

/// Payload bytes of length-prefixed fields.
pub(super) fn field_bytes(lengths: &[usize]) -> usize {
    lengths.iter().map(|length| 4 + length).sum()
}

pub(super) fn check_payload(payload_bytes: usize) -> io::Result<()> {
    if payload_bytes > RECORD_PAYLOAD_BYTES_MAX {
        return Err(invalid(format!(
            "journal record of {payload_bytes} bytes over {RECORD_PAYLOAD_BYTES_MAX}"
        )));
    }
    Ok(())
}

/// A framed record; `payload_bytes` must be what `write` produces (the caller checked it is
/// within the cap, so every length fits a u32).
fn encode(payload_bytes: usize, write: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + payload_bytes);
    out.extend_from_slice(&[0; HEADER_BYTES]);
    write(&mut out);
    debug_assert_eq!(out.len(), HEADER_BYTES + payload_bytes, "payload size formula");
    let length = (out.len() - HEADER_BYTES) as u32;
    let checksum = crc32c(&out[HEADER_BYTES..]);
    out[0..4].copy_from_slice(&length.to_le_bytes());
    out[4..8].copy_from_slice(&checksum.to_le_bytes());
    out
}

pub(super) fn encode_ack(webhook: &str, seq: u64) -> Vec<u8> {
    // Webhook names come from the validated configuration and are short; cut defensively so the
    // record stays within the cap whatever the caller passes.
    let webhook = truncate_utf8(webhook, RECORD_PAYLOAD_BYTES_MAX / 2);
    encode(1 + field_bytes(&[webhook.len()]) + 8, |out| {
        out.push(TYPE_ACK);
        put_str(out, webhook);
        put_u64(out, seq);
    })
}

pub(super) fn encode_dead_letter(letter: &DeadLetter) -> io::Result<Vec<u8>> {
    let strings = [
        letter.webhook.len(),
        letter.event_id.len(),
        letter.delivery_id.len(),
        letter.last_error.len(),
        letter.kind.len(),
        letter.body.len(),
    ];
    let payload_bytes = 1 + 8 + 8 + 4 + 8 + field_bytes(&strings);
    check_payload(payload_bytes)?;
    Ok(encode(payload_bytes, |out| {
        out.push(TYPE_DEAD_LETTER);
        put_u64(out, letter.number);
        put_str(out, &letter.webhook);
        put_u64(out, letter.seq);
        put_str(out, &letter.event_id);
        put_str(out, &letter.delivery_id);
        put_u32(out, letter.attempts);
        put_str(out, &letter.last_error);
        put_u64(out, letter.unix_micros);
        put_str(out, &letter.kind);
        put_bytes(out, &letter.body);
    }))
}

/// A webhook-state record: `disabled`, or enabled again when `None`. The reason is cut like a
/// dead letter's error; names and URLs come from the validated configuration.
pub(super) fn encode_webhook_state(webhook: &str, disabled: Option<&DisabledWebhook>) -> io::Result<Vec<u8>> {
    let (flag, unix_micros, url, reason) = match disabled {
        Some(disabled) => (
            1u8,
            disabled.unix_micros,
            disabled.url.as_str(),
            truncate_utf8(&disabled.reason, LAST_ERROR_BYTES_MAX),
        ),
        None => (0, 0, "", ""),
    };
    let payload_bytes = 1 + 1 + 8 + field_bytes(&[webhook.len(), url.len(), reason.len()]);
    check_payload(payload_bytes)?;
    Ok(encode(payload_bytes, |out| {
        out.push(TYPE_WEBHOOK_STATE);
        put_str(out, webhook);
        out.push(flag);
        put_u64(out, unix_micros);
        put_str(out, url);
        put_str(out, reason);
    }))
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, bytes.len() as u32);
    out.extend_from_slice(bytes);
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    put_bytes(out, text.as_bytes());
}

pub(super) fn truncate_utf8(text: &str, bytes_max: usize) -> &str {
    if text.len() <= bytes_max {
        return text;
    }
    let mut end = bytes_max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78): detects every burst of up to 32 bits,
/// so any single damaged byte in a payload is caught.
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut index = 0;
    while index < 256 {
        let mut crc = index as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[index] = crc;
        index += 1;
    }
    table
};

pub(super) fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc = CRC32C_TABLE[((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::super::testing::{append, open};
    use super::super::{JournalLimits, RECORD_PAYLOAD_BYTES_MAX};
    use super::*;
    use crate::test_support::TempDir;

    #[test]
    fn crc32c_matches_the_check_value() {
        // RFC 3720 appendix B.4 / the CRC catalogue's check value for "123456789".
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn oversized_records_are_refused() {
        let dir = TempDir::new("journal-test");
        let (mut journal, _) = open(dir.path(), JournalLimits::default());
        let body = vec![0u8; RECORD_PAYLOAD_BYTES_MAX];
        let error = journal.append_event("a", "e", "push", 1, "d", &body).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        append(&mut journal, "a", 1);
    }
}
