//! The message a webhook receives for an event, in the webhook's `format`:
//! the event JSON as is, a Slack message, a Microsoft Teams Adaptive Card,
//! or a CloudEvents 1.0 envelope (binary or structured). Built once per
//! delivery from the event's JSON (which is all the journal keeps), so a
//! recovered or redelivered event is written exactly as the first time.

use serde_json::{Value, json};

use super::event::{EventKind, Payload};
use crate::config::{Format, WebhookConfig};

/// The CloudEvents `type` of an event kind: this prefix and the kind.
pub const CLOUDEVENTS_TYPE_PREFIX: &str = "io.angos.registry.";

/// A delivery's body and the headers that go with its format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Format headers (CloudEvents binary mode), in order.
    pub headers: Vec<(&'static str, String)>,
}

/// The fields of an event, read back from its JSON.
struct Fields {
    id: String,
    time: String,
    kind: EventKind,
    namespace: String,
    digest: Option<String>,
    reference: Option<String>,
    tag: Option<String>,
    actor: Option<String>,
}

impl Fields {
    fn of(payload: &Payload) -> Fields {
        let value: Value = serde_json::from_slice(&payload.body).unwrap_or(Value::Null);
        let text = |key: &str| value[key].as_str().map(str::to_string);
        let actor = &value["actor"];
        let actor = actor["username"]
            .as_str()
            .or(actor["id"].as_str())
            .map(str::to_string)
            .or_else(|| actor["client_ip"].as_str().map(|ip| format!("anonymous ({ip})")))
            .or_else(|| {
                actor["internal"]
                    .as_str()
                    .map(|job| format!("the registry ({job})"))
            });
        Fields {
            id: payload.event_id.clone(),
            time: text("timestamp").unwrap_or_default(),
            kind: payload.kind,
            namespace: payload.namespace.clone(),
            digest: text("digest"),
            reference: text("reference"),
            tag: text("tag"),
            actor,
        }
    }

    /// `namespace:tag`, `namespace@digest`, or the namespace alone.
    fn subject(&self) -> String {
        match (&self.tag, &self.digest) {
            (Some(tag), _) => format!("{}:{tag}", self.namespace),
            (None, Some(digest)) => format!("{}@{digest}", self.namespace),
            _ => self.namespace.clone(),
        }
    }

    /// The CloudEvents `subject`, absent for an event about no repository
    /// (a ping): the specification allows no empty subject, and the
    /// CloudEvents SDKs refuse one.
    fn cloudevents_subject(&self) -> Option<String> {
        (!self.namespace.is_empty()).then(|| self.subject())
    }

    /// The CloudEvents context attributes in the order they are written:
    /// name, binary-mode header (`ce-` and the name), value.
    fn cloudevents_attributes(&self, source: &str) -> Vec<(&'static str, &'static str, String)> {
        let mut attributes = vec![
            ("specversion", "ce-specversion", "1.0".to_string()),
            ("id", "ce-id", self.id.clone()),
            ("source", "ce-source", source.to_string()),
            ("type", "ce-type", cloudevents_type(self.kind)),
            ("time", "ce-time", self.time.clone()),
        ];
        if let Some(subject) = self.cloudevents_subject() {
            attributes.push(("subject", "ce-subject", subject));
        }
        attributes
    }

    /// One line for people: what happened, where, by whom.
    fn summary(&self) -> String {
        if self.kind == EventKind::Ping {
            return "ping from angos: this webhook is reachable".to_string();
        }
        let mut line = format!("{}: {}", self.kind, self.subject());
        if self.tag.is_some()
            && let Some(digest) = &self.digest
        {
            line.push_str(&format!(" ({digest})"));
        }
        if let Some(actor) = &self.actor {
            line.push_str(&format!(" by {actor}"));
        }
        line
    }

    /// Label and value pairs shown in chat cards, only those present.
    fn facts(&self) -> Vec<(&'static str, String)> {
        let mut facts = vec![("Event", self.kind.as_str().to_string())];
        if !self.namespace.is_empty() {
            facts.push(("Repository", self.namespace.clone()));
        }
        if let Some(tag) = &self.tag {
            facts.push(("Tag", tag.clone()));
        }
        if let Some(digest) = &self.digest {
            facts.push(("Digest", digest.clone()));
        }
        if self.tag.is_none()
            && let Some(reference) = self
                .reference
                .as_ref()
                .filter(|reference| Some(*reference) != self.digest.as_ref())
        {
            facts.push(("Reference", reference.clone()));
        }
        if let Some(actor) = &self.actor {
            facts.push(("Actor", actor.clone()));
        }
        facts
    }
}

/// The message for `payload` in `webhook`'s format.
pub fn render(webhook: &WebhookConfig, payload: &Payload) -> Message {
    match webhook.format {
        Format::Event => Message {
            content_type: "application/json",
            body: payload.body.clone(),
            headers: Vec::new(),
        },
        Format::Slack => json_message(&slack(&Fields::of(payload))),
        Format::Teams => json_message(&teams(&Fields::of(payload))),
        Format::CloudEvents => {
            let fields = Fields::of(payload);
            let headers = fields
                .cloudevents_attributes(&webhook.cloudevents_source)
                .into_iter()
                .map(|(_, header, value)| (header, percent_encode_header(&value)))
                .collect();
            Message {
                content_type: "application/json",
                body: payload.body.clone(),
                headers,
            }
        }
        Format::CloudEventsStructured => {
            let fields = Fields::of(payload);
            // Written by hand so `data` is the event's exact bytes.
            let mut attributes: Vec<(&str, String)> = fields
                .cloudevents_attributes(&webhook.cloudevents_source)
                .into_iter()
                .map(|(name, _, value)| (name, value))
                .collect();
            attributes.push(("datacontenttype", "application/json".to_string()));
            let mut body = Vec::with_capacity(payload.body.len() + 256);
            body.push(b'{');
            for (key, value) in attributes {
                body.extend_from_slice(json!(key).to_string().as_bytes());
                body.push(b':');
                body.extend_from_slice(json!(value).to_string().as_bytes());
                body.push(b',');
            }
            body.extend_from_slice(b"\"data\":");
            body.extend_from_slice(&payload.body);
            body.push(b'}');
            Message {
                content_type: "application/cloudevents+json",
                body,
                headers: Vec::new(),
            }
        }
    }
}

pub fn cloudevents_type(kind: EventKind) -> String {
    format!("{CLOUDEVENTS_TYPE_PREFIX}{}", kind.as_str())
}

/// A header value as the CloudEvents HTTP binding writes it (section
/// 3.1.3.2): space, `"`, `%` and every byte outside printable ASCII as
/// `%XY` of its UTF-8, so a receiver's single round of percent-decoding
/// gives back the attribute (a `cloudevents_source` of `https://r/a%20b`
/// would otherwise arrive as `https://r/a b`).
fn percent_encode_header(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if (0x21..=0x7e).contains(&byte) && byte != b'"' && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn json_message(value: &Value) -> Message {
    Message {
        content_type: "application/json",
        body: value.to_string().into_bytes(),
        headers: Vec::new(),
    }
}

/// Slack's mrkdwn needs `&`, `<` and `>` escaped, or text turns into links.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A Slack incoming-webhook message: `text` (the notification and the
/// fallback for clients without blocks, and all Mattermost and Discord's
/// Slack-compatible endpoint read) and `blocks`.
fn slack(fields: &Fields) -> Value {
    let summary = slack_escape(&fields.summary());
    let mut blocks = vec![json!({
        "type": "section",
        "text": { "type": "mrkdwn", "text": format!("*{}*", slack_escape(&fields.summary())) },
    })];
    if fields.kind != EventKind::Ping {
        let facts: Vec<Value> = fields
            .facts()
            .into_iter()
            .map(|(label, value)| json!({ "type": "mrkdwn", "text": format!("*{label}*\n{}", slack_escape(&value)) }))
            .collect();
        blocks.push(json!({ "type": "section", "fields": facts }));
    }
    blocks.push(json!({
        "type": "context",
        "elements": [{
            "type": "mrkdwn",
            "text": format!("event {} at {}", slack_escape(&fields.id), slack_escape(&fields.time)),
        }],
    }));
    json!({ "text": summary, "blocks": blocks })
}

/// A Microsoft Teams Workflows message: one Adaptive Card (schema 1.4) with
/// the summary and a fact set.
fn teams(fields: &Fields) -> Value {
    let facts: Vec<Value> = fields
        .facts()
        .into_iter()
        .map(|(title, value)| json!({ "title": title, "value": value }))
        .collect();
    let card = json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            { "type": "TextBlock", "text": fields.summary(), "weight": "Bolder", "size": "Medium", "wrap": true },
            { "type": "FactSet", "facts": facts },
            { "type": "TextBlock", "text": format!("event {} at {}", fields.id, fields.time), "isSubtle": true, "size": "Small", "wrap": true },
        ],
    });
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": card,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_sources;
    use crate::event_webhook::event::{Actor, Event};

    fn webhook(extra: &str) -> WebhookConfig {
        let text = format!(
            "[event_webhook.w]\nurl = \"http://127.0.0.1:9/h\"\npolicy = \"async\"\nevents = [\"manifest.push\"]\n{extra}"
        );
        let loaded = load_sources(&[("t.toml".to_string(), text)]).unwrap();
        loaded.config.webhooks["w"].clone()
    }

    fn payload() -> Payload {
        let event = Event::new(
            "e-1".to_string(),
            EventKind::TagCreate,
            "library/nginx",
            "library",
            1_700_000_000_000_000,
        )
        .with_digest("sha256:abc")
        .with_reference("latest")
        .with_tag("latest")
        .with_actor(Actor {
            username: Some("alice".to_string()),
            ..Actor::default()
        });
        Payload {
            event_id: event.id.clone(),
            kind: event.kind,
            namespace: event.namespace.clone(),
            body: event.to_json(),
        }
    }

    #[test]
    fn the_event_format_is_the_event_json_unchanged() {
        let payload = payload();
        let message = render(&webhook(""), &payload);
        assert_eq!(message.body, payload.body);
        assert_eq!(message.content_type, "application/json");
        assert!(message.headers.is_empty());
    }

    #[test]
    fn a_slack_message_has_text_and_blocks_naming_the_event() {
        let message = render(&webhook("format = \"slack\""), &payload());
        let value: Value = serde_json::from_slice(&message.body).unwrap();
        let text = value["text"].as_str().unwrap();
        assert_eq!(text, "tag.create: library/nginx:latest (sha256:abc) by alice");
        let fields = value["blocks"][1]["fields"].to_string();
        for expected in [
            "Repository",
            "library/nginx",
            "Tag",
            "latest",
            "Digest",
            "sha256:abc",
            "Actor",
            "alice",
        ] {
            assert!(fields.contains(expected), "{expected} missing from {fields}");
        }
    }

    #[test]
    fn slack_text_cannot_become_markup() {
        let mut payload = payload();
        payload.namespace = "a<b>&c".to_string();
        let message = render(&webhook("format = \"slack\""), &payload);
        let value: Value = serde_json::from_slice(&message.body).unwrap();
        assert!(value["text"].as_str().unwrap().contains("a&lt;b&gt;&amp;c"));
    }

    #[test]
    fn a_teams_message_carries_one_adaptive_card() {
        let message = render(&webhook("format = \"teams\""), &payload());
        let value: Value = serde_json::from_slice(&message.body).unwrap();
        assert_eq!(value["type"], "message");
        let attachment = &value["attachments"][0];
        assert_eq!(
            attachment["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        assert_eq!(attachment["content"]["type"], "AdaptiveCard");
        assert_eq!(attachment["content"]["body"][1]["type"], "FactSet");
    }

    #[test]
    fn cloudevents_binary_mode_puts_attributes_in_headers() {
        let payload = payload();
        let message = render(
            &webhook("format = \"cloudevents\"\ncloudevents_source = \"https://registry.example/\""),
            &payload,
        );
        assert_eq!(message.body, payload.body);
        let header = |name: &str| {
            message
                .headers
                .iter()
                .find(|(key, _)| *key == name)
                .unwrap()
                .1
                .clone()
        };
        assert_eq!(header("ce-specversion"), "1.0");
        assert_eq!(header("ce-id"), "e-1");
        assert_eq!(header("ce-source"), "https://registry.example/");
        assert_eq!(header("ce-type"), "io.angos.registry.tag.create");
        assert_eq!(header("ce-time"), "2023-11-14T22:13:20.000000Z");
        assert_eq!(header("ce-subject"), "library/nginx:latest");
    }

    fn ping() -> Payload {
        let event = Event::new("p-1".to_string(), EventKind::Ping, "", "", 1_700_000_000_000_000);
        Payload {
            event_id: event.id.clone(),
            kind: event.kind,
            namespace: event.namespace.clone(),
            body: event.to_json(),
        }
    }

    /// A ping is about no repository: CloudEvents allows no empty `subject`
    /// (the Python SDK refused `ce-subject: ` and `"subject":""`), so it has none.
    #[test]
    fn a_ping_has_no_cloudevents_subject() {
        let binary = render(&webhook("format = \"cloudevents\""), &ping());
        assert!(
            binary.headers.iter().all(|(name, _)| *name != "ce-subject"),
            "{:?}",
            binary.headers
        );
        assert!(
            binary
                .headers
                .iter()
                .any(|(name, value)| *name == "ce-type" && value == "io.angos.registry.ping")
        );
        let structured = render(&webhook("format = \"cloudevents-structured\""), &ping());
        let value: Value = serde_json::from_slice(&structured.body).unwrap();
        assert_eq!(value.get("subject"), None, "{value}");
        assert_eq!(value["type"], "io.angos.registry.ping");
        // An event about a repository keeps its subject in both modes.
        let tagged = render(&webhook("format = \"cloudevents-structured\""), &payload());
        let value: Value = serde_json::from_slice(&tagged.body).unwrap();
        assert_eq!(value["subject"], "library/nginx:latest");
    }

    /// HTTP binding section 3.1.3.2: space, `"`, `%` and non-ASCII are
    /// percent-encoded in `ce-*` headers (as UTF-8, upper-case hex); the
    /// structured body carries the attribute as it is.
    #[test]
    fn cloudevents_header_values_are_percent_encoded() {
        let source = "cloudevents_source = 'https://r.example/a%20b/\u{e9}\"q'";
        let binary = render(
            &webhook(&format!("format = \"cloudevents\"\n{source}")),
            &payload(),
        );
        let header = binary
            .headers
            .iter()
            .find(|(name, _)| *name == "ce-source")
            .unwrap();
        assert_eq!(header.1, "https://r.example/a%2520b/%C3%A9%22q");
        for (name, value) in &binary.headers {
            assert!(
                value.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b'"'),
                "{name}: {value:?}"
            );
        }
        let structured = render(
            &webhook(&format!("format = \"cloudevents-structured\"\n{source}")),
            &payload(),
        );
        let value: Value = serde_json::from_slice(&structured.body).unwrap();
        assert_eq!(value["source"], "https://r.example/a%20b/\u{e9}\"q");
        assert_eq!(percent_encode_header("a b\u{20ac}"), "a%20b%E2%82%AC");
    }

    #[test]
    fn cloudevents_structured_mode_embeds_the_event_bytes() {
        let payload = payload();
        let message = render(&webhook("format = \"cloudevents-structured\""), &payload);
        assert_eq!(message.content_type, "application/cloudevents+json");
        let value: Value = serde_json::from_slice(&message.body).unwrap();
        assert_eq!(value["specversion"], "1.0");
        assert_eq!(value["type"], "io.angos.registry.tag.create");
        assert!(value["source"].as_str().unwrap().starts_with("urn:angos:"));
        let text = String::from_utf8(message.body).unwrap();
        assert!(text.ends_with(&format!(
            "\"data\":{}}}",
            String::from_utf8(payload.body).unwrap()
        )));
    }
}
