//! Registry events and their JSON payload.
//! Builds the exact body bytes that get signed and POSTed; knows nothing of webhooks,
//! policies or delivery, and reads no clock (the caller passes the time in).

use std::fmt;

use crate::clock::rfc3339_utc;

/// What happened (SPEC section 4). The discriminants index the mask bits, so
/// appending a kind is fine but reordering changes `bit()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    ManifestPush,
    ManifestDelete,
    ManifestPull,
    BlobPush,
    BlobPull,
    TagCreate,
    TagDelete,
    /// `angos webhook test`: checks an endpoint; never configured, never routed.
    Ping,
}

impl EventKind {
    /// Every kind, in declaration order.
    pub const ALL: [EventKind; 7] = [
        EventKind::ManifestPush,
        EventKind::ManifestDelete,
        EventKind::ManifestPull,
        EventKind::BlobPush,
        EventKind::BlobPull,
        EventKind::TagCreate,
        EventKind::TagDelete,
    ];

    /// The name used in configuration, the payload's `kind` and `X-Registry-Event`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ManifestPush => "manifest.push",
            EventKind::ManifestDelete => "manifest.delete",
            EventKind::ManifestPull => "manifest.pull",
            EventKind::BlobPush => "blob.push",
            EventKind::BlobPull => "blob.pull",
            EventKind::TagCreate => "tag.create",
            EventKind::TagDelete => "tag.delete",
            EventKind::Ping => "ping",
        }
    }

    /// The kind named `text`, exactly as `as_str` spells it (case-sensitive, so
    /// a config typo is an error rather than a silent match). `ping` is not
    /// among them: configurations cannot subscribe to it.
    pub fn parse(text: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|kind| kind.as_str() == text)
    }

    /// Like `parse`, and also `ping`: for journal records.
    pub fn parse_any(text: &str) -> Option<EventKind> {
        EventKind::parse(text).or((text == "ping").then_some(EventKind::Ping))
    }

    /// This kind's bit in a `u8` subscription mask; seven kinds fit.
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// A pull (or a ping): the event of a read, which changed nothing.
    pub fn is_read(self) -> bool {
        matches!(
            self,
            EventKind::ManifestPull | EventKind::BlobPull | EventKind::Ping
        )
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who caused the event, as far as the registry knows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Actor {
    pub id: Option<String>,
    pub username: Option<String>,
    pub client_ip: Option<String>,
    /// Set when the registry itself acted (`"prune"` for retention, `"gc"`
    /// for garbage collection), as upstream Angos marks its own deletions.
    pub internal: Option<String>,
}

impl Actor {
    /// `true` when nothing is known: the payload then omits `actor` entirely.
    pub fn is_empty(&self) -> bool {
        self.id.is_none() && self.username.is_none() && self.client_ip.is_none() && self.internal.is_none()
    }
}

/// One registry event; `to_json` renders the webhook body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    /// RFC 3339 UTC with microseconds.
    pub timestamp: String,
    pub kind: EventKind,
    pub namespace: String,
    /// The configured repository owning the namespace, else its first path component.
    pub repository: String,
    pub digest: Option<String>,
    pub reference: Option<String>,
    pub tag: Option<String>,
    pub actor: Actor,
}

impl Event {
    /// A new event with id `id` (a UUID v4 from the caller's entropy),
    /// stamped at `unix_micros`.
    pub fn new(
        id: String,
        kind: EventKind,
        namespace: impl Into<String>,
        repository: impl Into<String>,
        unix_micros: u64,
    ) -> Event {
        Event {
            id,
            timestamp: rfc3339_utc(unix_micros),
            kind,
            namespace: namespace.into(),
            repository: repository.into(),
            digest: None,
            reference: None,
            tag: None,
            actor: Actor::default(),
        }
    }

    pub fn with_digest(mut self, digest: impl Into<String>) -> Event {
        self.digest = Some(digest.into());
        self
    }

    pub fn with_reference(mut self, reference: impl Into<String>) -> Event {
        self.reference = Some(reference.into());
        self
    }

    pub fn with_tag(mut self, tag: impl Into<String>) -> Event {
        self.tag = Some(tag.into());
        self
    }

    pub fn with_actor(mut self, actor: Actor) -> Event {
        self.actor = actor;
        self
    }

    /// The exact body bytes: one JSON object, keys in the documented order
    /// (id, timestamp, kind, namespace, repository, digest, reference, tag,
    /// actor), absent fields omitted. Written by hand because serde_json's
    /// `Map` sorts keys (no `preserve_order`), and the signature covers these
    /// exact bytes, so they must not depend on a library's map ordering.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.push(b'{');
        let mut object = JsonObject::new(&mut out);
        object.field("id", &self.id);
        object.field("timestamp", &self.timestamp);
        object.field("kind", self.kind.as_str());
        object.field("namespace", &self.namespace);
        object.field("repository", &self.repository);
        object.optional("digest", self.digest.as_deref());
        object.optional("reference", self.reference.as_deref());
        object.optional("tag", self.tag.as_deref());
        if !self.actor.is_empty() {
            object.key("actor");
            let out = &mut *object.out;
            out.push(b'{');
            let mut actor = JsonObject::new(out);
            actor.optional("id", self.actor.id.as_deref());
            actor.optional("username", self.actor.username.as_deref());
            actor.optional("client_ip", self.actor.client_ip.as_deref());
            actor.optional("internal", self.actor.internal.as_deref());
            out.push(b'}');
        }
        out.push(b'}');
        out
    }
}

/// Writes `"key":value` members with the commas between them.
struct JsonObject<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> JsonObject<'a> {
    fn new(out: &'a mut Vec<u8>) -> JsonObject<'a> {
        JsonObject { out, first: true }
    }

    fn key(&mut self, key: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        write_json_string(self.out, key);
        self.out.push(b':');
    }

    fn field(&mut self, key: &str, value: &str) {
        self.key(key);
        write_json_string(self.out, value);
    }

    fn optional(&mut self, key: &str, value: Option<&str>) {
        if let Some(value) = value {
            self.field(key, value);
        }
    }
}

/// Appends `text` as a JSON string (RFC 8259 section 7), escaping exactly what
/// serde_json escapes: `"`, `\` and the C0 controls, with the short forms
/// where JSON has them. Everything else, non-ASCII included, is copied as
/// UTF-8, which JSON allows.
fn write_json_string(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut start = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        let short: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        // Copy the unescaped run before this byte in one go.
        out.extend_from_slice(&bytes[start..at]);
        start = at + 1;
        if short.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0x0f)]);
        } else {
            out.extend_from_slice(short);
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// One event's body, built once and shared by every webhook it goes to.
#[derive(Debug, PartialEq, Eq)]
pub struct Payload {
    pub event_id: String,
    pub kind: EventKind,
    pub namespace: String,
    pub body: Vec<u8>,
}

/// An event before webhooks are known: what happened, where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventDraft {
    pub kind: EventKind,
    pub namespace: String,
    pub digest: Option<String>,
    pub reference: Option<String>,
    pub tag: Option<String>,
}

impl EventDraft {
    pub fn new(kind: EventKind, namespace: &str) -> EventDraft {
        EventDraft {
            kind,
            namespace: namespace.to_string(),
            digest: None,
            reference: None,
            tag: None,
        }
    }

    pub fn digest(mut self, digest: &crate::digest::Digest) -> EventDraft {
        self.digest = Some(digest.to_string());
        self
    }

    pub fn reference(mut self, reference: impl Into<String>) -> EventDraft {
        self.reference = Some(reference.into());
        self
    }

    pub fn tag(mut self, tag: impl Into<String>) -> EventDraft {
        self.tag = Some(tag.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(event: Event) -> Event {
        Event {
            id: "7f3c2a9e-1b4d-4e8f-9a0b-123456789abc".to_string(),
            ..event
        }
    }

    // 2026-01-15T10:30:00.123456Z
    const MICROS: u64 = 1_768_473_000_123_456;

    #[test]
    fn kinds_round_trip_and_have_distinct_bits() {
        let mut mask = 0u8;
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
            assert_eq!(kind.to_string(), kind.as_str());
            assert_eq!(mask & kind.bit(), 0, "{kind} shares a bit");
            mask |= kind.bit();
        }
        assert_eq!(mask, 0x7f);
        let reads: Vec<EventKind> = EventKind::ALL.into_iter().filter(|kind| kind.is_read()).collect();
        assert_eq!(reads, [EventKind::ManifestPull, EventKind::BlobPull]);
        assert_eq!(EventKind::parse("Manifest.Push"), None);
        assert_eq!(EventKind::parse("manifest"), None);
        assert_eq!(EventKind::parse(""), None);
    }

    #[test]
    fn renders_a_full_event_in_key_order() {
        let event = fixed(
            Event::new(
                crate::storage::uuid_v4(),
                EventKind::ManifestPush,
                "production/api",
                "production",
                MICROS,
            )
            .with_digest("sha256:abc")
            .with_reference("v1.2")
            .with_tag("v1.2")
            .with_actor(Actor {
                id: Some("u-1".to_string()),
                username: Some("alice".to_string()),
                client_ip: Some("10.0.0.7".to_string()),
                internal: None,
            }),
        );
        assert_eq!(
            String::from_utf8(event.to_json()).unwrap(),
            concat!(
                r#"{"id":"7f3c2a9e-1b4d-4e8f-9a0b-123456789abc","timestamp":"2026-01-15T10:30:00.123456Z","#,
                r#""kind":"manifest.push","namespace":"production/api","repository":"production","#,
                r#""digest":"sha256:abc","reference":"v1.2","tag":"v1.2","#,
                r#""actor":{"id":"u-1","username":"alice","client_ip":"10.0.0.7"}}"#
            )
        );
    }

    #[test]
    fn omits_absent_fields_and_an_empty_actor() {
        let event = fixed(Event::new(
            crate::storage::uuid_v4(),
            EventKind::BlobPull,
            "library/nginx",
            "library",
            0,
        ));
        assert_eq!(
            String::from_utf8(event.to_json()).unwrap(),
            concat!(
                r#"{"id":"7f3c2a9e-1b4d-4e8f-9a0b-123456789abc","timestamp":"1970-01-01T00:00:00.000000Z","#,
                r#""kind":"blob.pull","namespace":"library/nginx","repository":"library"}"#
            )
        );
    }

    #[test]
    fn a_partial_actor_lists_only_known_fields() {
        let event = fixed(
            Event::new(crate::storage::uuid_v4(), EventKind::TagDelete, "a", "a", 0).with_actor(Actor {
                client_ip: Some("::1".to_string()),
                ..Actor::default()
            }),
        );
        let json = String::from_utf8(event.to_json()).unwrap();
        assert!(
            json.ends_with(r#""repository":"a","actor":{"client_ip":"::1"}}"#),
            "{json}"
        );
    }

    #[test]
    fn new_events_get_fresh_ids_and_the_given_time() {
        let one = Event::new(crate::storage::uuid_v4(), EventKind::BlobPush, "a", "a", MICROS);
        let two = Event::new(crate::storage::uuid_v4(), EventKind::BlobPush, "a", "a", MICROS);
        assert_ne!(one.id, two.id);
        assert_eq!(one.id.len(), 36);
        assert_eq!(one.timestamp, "2026-01-15T10:30:00.123456Z");
    }

    #[test]
    fn escapes_like_serde_json() {
        let odd = [
            "plain",
            "",
            "quote\" backslash\\ slash/",
            "\n\r\t\u{8}\u{c}",
            "\u{0}\u{1}\u{1f}\u{7f}",
            "é ✓ 😀 \u{2028}",
            "trailing\\",
        ];
        for text in odd {
            let mut out = Vec::new();
            write_json_string(&mut out, text);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(text).unwrap()
            );
        }
    }

    #[test]
    fn round_trips_through_serde_json() {
        let nasty = "we\"ird\\\n\u{1}name ✓";
        let event = Event::new(
            crate::storage::uuid_v4(),
            EventKind::TagCreate,
            nasty,
            "we",
            MICROS,
        )
        .with_digest("sha256:0")
        .with_tag(nasty)
        .with_actor(Actor {
            username: Some(nasty.to_string()),
            ..Actor::default()
        });
        let value: serde_json::Value = serde_json::from_slice(&event.to_json()).unwrap();
        assert_eq!(value["id"], event.id.as_str());
        assert_eq!(value["timestamp"], "2026-01-15T10:30:00.123456Z");
        assert_eq!(value["kind"], "tag.create");
        assert_eq!(value["namespace"], nasty);
        assert_eq!(value["repository"], "we");
        assert_eq!(value["digest"], "sha256:0");
        assert_eq!(value["tag"], nasty);
        assert!(value.get("reference").is_none());
        assert_eq!(value["actor"], serde_json::json!({ "username": nasty }));
        assert_eq!(value.as_object().unwrap().len(), 8);
    }
}
