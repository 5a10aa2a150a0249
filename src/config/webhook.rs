//! The `[event_webhook.NAME]`, `[repository."X"]` and `event_webhooks`
//! parts of the configuration, validated at load: URL scheme and host, known
//! event kinds, non-empty token, valid regexes, `max_retries <= 16`, defined
//! names, non-overlapping repository keys, TLS files that load (a client
//! certificate only with its key, the pair matching, on an https URL), the
//! message `format`, Standard Webhooks `signing_secrets`, and extra
//! `headers` that cannot forge or break ours.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{ConfigError, Section};
use crate::event_webhook::event::EventKind;

/// Most retries a webhook may ask for (SPEC section 3).
pub const MAX_RETRIES_LIMIT: u32 = 16;
pub const TIMEOUT_MS_DEFAULT: u64 = 5000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Required,
    Optional,
    Async,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Required => "required",
            Policy::Optional => "optional",
            Policy::Async => "async",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheme {
    Http,
    Https,
}

/// A parsed `http(s)://host[:port]/path?query` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    pub scheme: Scheme,
    /// Host name or IP literal, without brackets.
    pub host: String,
    pub port: u16,
    pub path_and_query: String,
    /// The text as configured, for logs.
    pub text: String,
}

impl WebhookUrl {
    pub fn parse(text: &str) -> Result<WebhookUrl, String> {
        let (scheme, rest) = if let Some(rest) = text.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else if let Some(rest) = text.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else {
            return Err("the scheme must be http or https".into());
        };
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        if authority.contains('@') {
            return Err("credentials in the URL are not supported; use token".into());
        }
        let tail = tail.split('#').next().unwrap_or_default();
        let path_and_query = if tail.is_empty() {
            "/".to_string()
        } else if tail.starts_with('?') {
            format!("/{tail}")
        } else {
            tail.to_string()
        };
        if path_and_query.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err("the path must not contain spaces or control characters".into());
        }
        let default_port = match scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        };
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let Some((host, after)) = bracketed.split_once(']') else {
                return Err("unclosed [ in the host".into());
            };
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("{host:?} is not an IPv6 address"));
            }
            match after.strip_prefix(':') {
                Some(port) => (host.to_string(), parse_port(port)?),
                None if after.is_empty() => (host.to_string(), default_port),
                None => return Err("unexpected text after the host".into()),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host.to_string(), parse_port(port)?),
                None => (authority.to_string(), default_port),
            }
        };
        let valid_host = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
        if !valid_host {
            return Err("the URL needs a valid host".into());
        }
        Ok(WebhookUrl {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
            path_and_query,
            text: text.to_string(),
        })
    }

    /// The `Host` header value: the port only when it is not the default.
    pub fn host_header(&self) -> String {
        host_header(self.scheme, &self.host, self.port)
    }
}

/// A `Host` header value: IPv6 literals bracketed, the port only when it is
/// not the scheme's default.
pub fn host_header(scheme: Scheme, host: &str, port: u16) -> String {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let default_port = match scheme {
        Scheme::Http => 80,
        Scheme::Https => 443,
    };
    if port == default_port {
        host
    } else {
        format!("{host}:{port}")
    }
}

fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!("{text:?} is not a port number")),
    }
}

/// How a webhook's deliveries are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The event JSON of the user's document.
    Event,
    /// A Slack incoming-webhook message (`text` and `blocks`).
    Slack,
    /// A Microsoft Teams Workflows message carrying an Adaptive Card.
    Teams,
    /// CloudEvents 1.0, binary mode: `ce-*` headers, the event JSON as data.
    CloudEvents,
    /// CloudEvents 1.0, structured mode: one `application/cloudevents+json` body.
    CloudEventsStructured,
}

impl Format {
    pub const ALL: [Format; 5] = [
        Format::Event,
        Format::Slack,
        Format::Teams,
        Format::CloudEvents,
        Format::CloudEventsStructured,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Event => "event",
            Format::Slack => "slack",
            Format::Teams => "teams",
            Format::CloudEvents => "cloudevents",
            Format::CloudEventsStructured => "cloudevents-structured",
        }
    }

    pub fn parse(text: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|format| format.as_str() == text)
    }

    pub fn is_cloudevents(self) -> bool {
        matches!(self, Format::CloudEvents | Format::CloudEventsStructured)
    }
}

/// The host whose webhooks only understand Slack messages.
pub const SLACK_HOST: &str = "hooks.slack.com";

/// A Standard Webhooks secret: `whsec_` and the base64 of the key.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret {
    pub key: Vec<u8>,
}

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself in logs or error messages.
        write!(f, "whsec_<{} bytes>", self.key.len())
    }
}

/// What a `whsec_` secret must look like.
pub const SIGNING_SECRET_PREFIX: &str = "whsec_";
/// Key sizes accepted from a secret: the Standard Webhooks libraries
/// generate 24 to 64 bytes; under 16 is too weak to sign with.
pub const SIGNING_KEY_BYTES: std::ops::RangeInclusive<usize> = 16..=64;
/// Most secrets at once (a rotation needs two; a few more is slack).
pub const SIGNING_SECRETS_MAX: usize = 8;
/// Most extra headers per webhook, and the longest value.
pub const EXTRA_HEADERS_MAX: usize = 32;
pub const EXTRA_HEADER_VALUE_BYTES_MAX: usize = 4096;

impl SigningSecret {
    pub fn parse(text: &str) -> Result<SigningSecret, String> {
        let Some(encoded) = text.strip_prefix(SIGNING_SECRET_PREFIX) else {
            return Err(format!(
                "a secret starts with {SIGNING_SECRET_PREFIX:?} (make one with `angos webhook secret`)"
            ));
        };
        let key = crate::base64::decode(
            encoded,
            crate::base64::Alphabet::Standard,
            crate::base64::Padding::Optional,
        )
        .ok_or_else(|| format!("the part after {SIGNING_SECRET_PREFIX:?} is not base64"))?;
        if !SIGNING_KEY_BYTES.contains(&key.len()) {
            return Err(format!(
                "the key is {} bytes; it must be {} to {}",
                key.len(),
                SIGNING_KEY_BYTES.start(),
                SIGNING_KEY_BYTES.end()
            ));
        }
        Ok(SigningSecret { key })
    }
}

/// Headers a webhook's `headers` may not set: framing, our identity and
/// event headers, and every signature scheme's.
fn is_reserved_header(name: &str, has_token: bool) -> bool {
    let name = name.to_ascii_lowercase();
    matches!(
        name.as_str(),
        "content-type"
            | "content-length"
            | "transfer-encoding"
            | "host"
            | "connection"
            | "user-agent"
            | "te"
            | "trailer"
            | "upgrade"
            | "keep-alive"
    ) || name.starts_with("x-registry-")
        || name.starts_with("webhook-")
        || name.starts_with("ce-")
        || (has_token && name == "authorization")
}

/// OR-matched regexes (`repository_filter`, `tag_filter`), compared by their source.
#[derive(Clone)]
pub struct RegexFilter {
    pub patterns: Vec<String>,
    compiled: Vec<regex_lite::Regex>,
}

impl RegexFilter {
    pub fn is_empty(&self) -> bool {
        self.compiled.is_empty()
    }

    /// Whether `text` matches one of the patterns; everything passes an empty filter.
    pub fn matches(&self, text: &str) -> bool {
        self.compiled.is_empty() || self.compiled.iter().any(|regex| regex.is_match(text))
    }
}

impl PartialEq for RegexFilter {
    fn eq(&self, other: &Self) -> bool {
        self.patterns == other.patterns
    }
}

impl std::fmt::Debug for RegexFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.patterns).finish()
    }
}

/// One `[event_webhook.NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookConfig {
    pub name: String,
    pub url: WebhookUrl,
    pub policy: Policy,
    /// The kinds this webhook receives, sorted, without duplicates.
    pub events: Vec<EventKind>,
    pub token: Option<String>,
    pub timeout_ms: u64,
    pub max_retries: u32,
    pub repository_filter: RegexFilter,
    /// Regexes on the event's tag; events without a tag pass only when empty.
    pub tag_filter: RegexFilter,
    pub format: Format,
    /// CloudEvents `source` (a URI reference).
    pub cloudevents_source: String,
    /// Standard Webhooks secrets: every attempt is signed with each.
    pub signing_secrets: Vec<SigningSecret>,
    /// Static extra request headers, sorted by name (as TOML tables are).
    pub headers: Vec<(String, String)>,
    /// Extra CA certificates (PEM) trusted for this webhook's https URL.
    pub ca_bundle: Option<PathBuf>,
    /// The client certificate presented to an https endpoint that requires
    /// mutual TLS (`client_certificate` and `client_private_key`).
    pub client_identity: Option<ClientIdentity>,
}

/// The TLS layer owns what it loads; configuration names it.
pub use crate::tls::ClientIdentity;

impl WebhookConfig {
    pub fn wants(&self, kind: EventKind, namespace: &str, tag: Option<&str>) -> bool {
        let tag_passes = match tag {
            Some(tag) => self.tag_filter.matches(tag),
            None => self.tag_filter.is_empty(),
        };
        self.events.contains(&kind) && self.repository_filter.matches(namespace) && tag_passes
    }
}

/// One `[repository."X"]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RepositoryConfig {
    /// Replaces `global.event_webhooks` for this namespace when set.
    pub event_webhooks: Option<Vec<String>>,
    /// Replace `[global]`'s lists for this namespace, each where set.
    pub access: super::AccessLists,
    /// `immutable_tags` and `immutable_tags_exclusions`, over the global ones.
    pub immutable_tags: super::ImmutableTags,
    /// `[repository."X".retention_policy] rules`, in addition to the global ones.
    pub retention_rules: Vec<crate::retention::rule::Rule>,
    /// `[[repository."X".upstream]]` and its companions: a pull-through cache.
    pub mirror: super::MirrorConfig,
}

/// Where a name list came from, to name the file and key in errors found
/// after all files are merged.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Origin {
    pub file: String,
    pub key: String,
}

pub(super) fn parse_webhook(section: &mut Section, name: &str) -> Result<WebhookConfig, ConfigError> {
    if !super::is_plain_name(name) {
        return Err(section.error("", "webhook names use letters, digits, '-', '_' and '.'"));
    }
    let Some(url_text) = section.string("url")? else {
        return Err(section.error("url", "is required"));
    };
    let url =
        WebhookUrl::parse(url_text).map_err(|why| section.error("url", format!("{url_text:?}: {why}")))?;
    let policy = match section.string("policy")? {
        Some("required") => Policy::Required,
        Some("optional") => Policy::Optional,
        Some("async") => Policy::Async,
        Some(other) => {
            return Err(section.error(
                "policy",
                format!("{other:?} is not one of required, optional, async"),
            ));
        }
        None => return Err(section.error("policy", "is required (required, optional or async)")),
    };
    let mut events = Vec::new();
    match section.get("events") {
        Some(toml::Value::Array(items)) => {
            for item in items {
                let Some(text) = item.as_str() else {
                    return Err(section.error("events", "must be a list of strings"));
                };
                let Some(kind) = EventKind::parse(text) else {
                    let known: Vec<&str> = EventKind::ALL.iter().map(|kind| kind.as_str()).collect();
                    return Err(section.error(
                        "events",
                        format!("unknown event {text:?} (known: {})", known.join(", ")),
                    ));
                };
                events.push(kind);
            }
        }
        Some(_) => return Err(section.error("events", "must be a list of strings")),
        None => {}
    }
    events.sort();
    events.dedup();
    if events.is_empty() {
        return Err(section.error("events", "must list at least one event"));
    }
    let token = match section.string("token")? {
        Some("") => return Err(section.error("token", "must not be empty (remove it for no token)")),
        Some(token) if token.bytes().any(|b| b < b' ' || b == 0x7f) => {
            return Err(section.error("token", "must not contain control characters"));
        }
        Some(token) => Some(token.to_string()),
        None => None,
    };
    let timeout_ms = section
        .integer("timeout_ms", 1, 3_600_000)?
        .unwrap_or(TIMEOUT_MS_DEFAULT);
    let default_retries = if policy == Policy::Required { 3 } else { 0 };
    let max_retries = section
        .integer("max_retries", 0, MAX_RETRIES_LIMIT as u64)?
        .map_or(default_retries, |retries| retries as u32);
    let repository_filter = parse_regex_filter(section, "repository_filter")?;
    let tag_filter = parse_regex_filter(section, "tag_filter")?;
    let format = match section.string("format")? {
        Some(text) => Format::parse(text).ok_or_else(|| {
            let known: Vec<&str> = Format::ALL.iter().map(|format| format.as_str()).collect();
            section.error("format", format!("{text:?} is not one of {}", known.join(", ")))
        })?,
        // The user's document sends its `slack` webhook to Slack with no
        // format: anything but a Slack message would be refused there.
        None if url.host == SLACK_HOST => {
            log::info!(
                target: "angos::config",
                "webhook {name:?}: {SLACK_HOST} only accepts Slack messages; sending format \"slack\" (set format to choose)"
            );
            Format::Slack
        }
        None => Format::Event,
    };
    let cloudevents_source = match section.string("cloudevents_source")? {
        Some(_) if !format.is_cloudevents() => {
            return Err(section.error(
                "cloudevents_source",
                "applies only to format = \"cloudevents\" or \"cloudevents-structured\"",
            ));
        }
        Some(text) if text.is_empty() || text.bytes().any(|b| b <= b' ' || b == 0x7f) => {
            return Err(section.error(
                "cloudevents_source",
                "must be a non-empty URI reference without spaces or control characters",
            ));
        }
        Some(text) => text.to_string(),
        None => default_cloudevents_source(),
    };
    let mut signing_secrets = Vec::new();
    for text in section
        .string_list("signing_secrets", "must be a list of \"whsec_...\" strings")?
        .unwrap_or_default()
    {
        let secret = SigningSecret::parse(&text).map_err(|why| section.error("signing_secrets", why))?;
        signing_secrets.push(secret);
    }
    if signing_secrets.len() > SIGNING_SECRETS_MAX {
        return Err(section.error(
            "signing_secrets",
            format!("at most {SIGNING_SECRETS_MAX} secrets at once"),
        ));
    }
    let headers = parse_extra_headers(section, token.is_some())?;
    let ca_bundle = section.string("ca_bundle")?.map(PathBuf::from);
    if let Some(path) = &ca_bundle {
        check_ca_bundle(path).map_err(|why| section.error("ca_bundle", why))?;
    }
    let client_identity = parse_client_identity(section, &url)?;
    Ok(WebhookConfig {
        name: name.to_string(),
        url,
        policy,
        events,
        token,
        timeout_ms,
        max_retries,
        repository_filter,
        tag_filter,
        format,
        cloudevents_source,
        signing_secrets,
        headers,
        ca_bundle,
        client_identity,
    })
}

/// A list of regexes under `key`, compiled now so a bad one names its key.
fn parse_regex_filter(section: &mut Section, key: &'static str) -> Result<RegexFilter, ConfigError> {
    let mut patterns = Vec::new();
    let mut compiled = Vec::new();
    match section.get(key) {
        Some(toml::Value::Array(items)) => {
            for item in items {
                let Some(pattern) = item.as_str() else {
                    return Err(section.error(key, "must be a list of regex strings"));
                };
                let regex = regex_lite::Regex::new(pattern)
                    .map_err(|error| section.error(key, format!("invalid regex {pattern:?}: {error}")))?;
                patterns.push(pattern.to_string());
                compiled.push(regex);
            }
        }
        Some(_) => return Err(section.error(key, "must be a list of regex strings")),
        None => {}
    }
    Ok(RegexFilter { patterns, compiled })
}

/// `headers = { "X-Api-Key" = "..." }`: token names, values without line
/// breaks, and none of the headers we write ourselves.
fn parse_extra_headers(section: &mut Section, has_token: bool) -> Result<Vec<(String, String)>, ConfigError> {
    let Some(table) = section.table("headers")? else {
        return Ok(Vec::new());
    };
    if table.len() > EXTRA_HEADERS_MAX {
        return Err(section.error("headers", format!("at most {EXTRA_HEADERS_MAX} headers")));
    }
    let mut headers = Vec::with_capacity(table.len());
    for (name, value) in table {
        let Some(value) = value.as_str() else {
            return Err(section.error("headers", format!("the value of {name:?} must be a string")));
        };
        if !crate::http::fields::is_token(name) {
            return Err(section.error("headers", format!("{name:?} is not a valid header name")));
        }
        if is_reserved_header(name, has_token) {
            return Err(section.error(
                "headers",
                format!("{name:?} is written by the server (content, framing, event or signature headers)"),
            ));
        }
        if headers
            .iter()
            .any(|(seen, _): &(String, String)| seen.eq_ignore_ascii_case(name))
        {
            return Err(section.error(
                "headers",
                format!("{name:?} is set twice (header names ignore case)"),
            ));
        }
        if !value.is_ascii() {
            return Err(section.error("headers", format!("the value of {name:?} must be ASCII")));
        }
        if value.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
            return Err(section.error(
                "headers",
                format!("the value of {name:?} must not contain CR, LF or other control characters"),
            ));
        }
        if value.len() > EXTRA_HEADER_VALUE_BYTES_MAX {
            return Err(section.error(
                "headers",
                format!("the value of {name:?} is longer than {EXTRA_HEADER_VALUE_BYTES_MAX} bytes"),
            ));
        }
        headers.push((name.clone(), value.trim().to_string()));
    }
    Ok(headers)
}

/// The CloudEvents `source` when none is configured: this registry, by the
/// machine's host name.
fn default_cloudevents_source() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
        .collect();
    format!("urn:angos:{}", if host.is_empty() { "localhost" } else { &host })
}

/// `client_certificate` and `client_private_key`: both or neither, on an
/// https URL only, and loaded now, so a typo, a wrong file or a key that does
/// not match is a configuration error rather than failed deliveries later.
pub(super) fn parse_client_identity(
    section: &mut Section,
    url: &WebhookUrl,
) -> Result<Option<ClientIdentity>, ConfigError> {
    let certificate = section.string("client_certificate")?.map(PathBuf::from);
    let private_key = section.string("client_private_key")?.map(PathBuf::from);
    let identity = match (certificate, private_key) {
        (None, None) => return Ok(None),
        (Some(_), None) => {
            return Err(section.error("client_private_key", "is required with client_certificate"));
        }
        (None, Some(_)) => {
            return Err(section.error("client_certificate", "is required with client_private_key"));
        }
        (Some(certificate), Some(private_key)) => ClientIdentity {
            certificate,
            private_key,
        },
    };
    if url.scheme != Scheme::Https {
        return Err(section.error(
            "client_certificate",
            format!("needs an https URL; {} is plain http", url.text),
        ));
    }
    crate::tls::client_identity(&identity).map_err(|error| match error {
        crate::tls::IdentityError::Certificate(why) => section.error("client_certificate", why),
        crate::tls::IdentityError::PrivateKey(why) => section.error("client_private_key", why),
    })?;
    Ok(Some(identity))
}

/// A CA bundle must be readable PEM with at least one certificate; checked
/// at load so a typo is a configuration error, not a failed delivery later.
fn check_ca_bundle(path: &std::path::Path) -> Result<(), String> {
    crate::tls::load_certificates(path).map(|_| ())
}

pub(super) fn parse_name_list(
    section: &mut Section,
    key: &'static str,
) -> Result<Option<Vec<String>>, ConfigError> {
    section.string_list(key, "must be a list of webhook names")
}

/// Checks what only the merged configuration can tell: every listed name is
/// defined, and no repository key is a path prefix of another.
pub(super) fn check_references(
    webhooks: &BTreeMap<String, WebhookConfig>,
    lists: &[(Origin, Vec<String>)],
    repositories: &BTreeMap<String, (Origin, RepositoryConfig)>,
) -> Result<(), ConfigError> {
    for (origin, names) in lists {
        for name in names {
            if !webhooks.contains_key(name) {
                return Err(ConfigError {
                    file: origin.file.clone(),
                    key: origin.key.clone(),
                    message: format!("webhook {name:?} is not defined (no [event_webhook.{name}])"),
                });
            }
        }
    }
    let keys: Vec<&String> = repositories.keys().collect();
    for (index, key) in keys.iter().enumerate() {
        for other in &keys[index + 1..] {
            let (short, long) = if key.len() <= other.len() {
                (key, other)
            } else {
                (other, key)
            };
            if long.starts_with(short.as_str()) && long.as_bytes().get(short.len()) == Some(&b'/') {
                let origin = &repositories[long.as_str()].0;
                return Err(ConfigError {
                    file: origin.file.clone(),
                    key: origin.key.clone(),
                    message: format!("overlaps [repository.\"{short}\"]; repository keys must not nest"),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::load_sources;
    use super::*;

    /// Every TOML block of the user's document, verbatim; each must load.
    const SEED_BLOCKS: &[&str] = &[
        "[event_webhook.notifications]\nurl = \"https://hooks.example.com/registry\"\npolicy = \"optional\"\nevents = [\"manifest.push\", \"tag.create\"]\n",
        "[event_webhook.audit]\nurl = \"https://audit.example.com/events\"\npolicy = \"required\"\nevents = [\"manifest.push\", \"manifest.delete\"]\ntimeout_ms = 3000\nmax_retries = 2\n",
        "[event_webhook.monitoring]\nurl = \"https://monitoring.example.com/events\"\npolicy = \"optional\"\nevents = [\"manifest.push\", \"blob.push\", \"tag.create\"]\ntimeout_ms = 2000\nmax_retries = 1\n",
        "[event_webhook.analytics]\nurl = \"https://analytics.example.com/ingest\"\npolicy = \"async\"\nevents = [\"manifest.push\", \"manifest.delete\", \"blob.push\", \"tag.create\", \"tag.delete\"]\n",
        "[event_webhook.secure]\nurl = \"https://hooks.example.com/events\"\npolicy = \"optional\"\ntoken = \"my-webhook-secret\"\nevents = [\"manifest.push\"]\n",
        "[event_webhook.production-only]\nurl = \"https://hooks.example.com/production\"\npolicy = \"required\"\nevents = [\"manifest.push\", \"manifest.delete\"]\nrepository_filter = [\"^production/.*\"]\n",
        "[event_webhook.important-repos]\nurl = \"https://hooks.example.com/important\"\npolicy = \"optional\"\nevents = [\"manifest.push\"]\nrepository_filter = [\"^production/.*\", \"^staging/.*\", \"^library/.*\"]\n",
        "[event_webhook.reliable]\nurl = \"https://hooks.example.com/events\"\npolicy = \"required\"\nevents = [\"manifest.push\"]\nmax_retries = 3       # Up to 3 retries after the initial attempt\ntimeout_ms = 5000     # Per-request timeout\n",
    ];

    fn load(text: &str) -> Result<super::super::Loaded, ConfigError> {
        load_sources(&[("test.toml".to_string(), text.to_string())])
    }

    #[test]
    fn every_seed_block_loads_with_the_documented_defaults() {
        for block in SEED_BLOCKS {
            let loaded = load(block).unwrap_or_else(|error| panic!("{error}\n{block}"));
            assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
            let webhook = loaded.config.webhooks.values().next().unwrap();
            let default_retries = if webhook.policy == Policy::Required { 3 } else { 0 };
            if !block.contains("max_retries") {
                assert_eq!(webhook.max_retries, default_retries, "{block}");
            }
            if !block.contains("timeout_ms") {
                assert_eq!(webhook.timeout_ms, 5000);
            }
        }
        // The enable-globally and per-repository blocks, with a definition.
        let with_lists = format!(
            "{}[global]\nevent_webhooks = [\"notifications\"]\n[repository.\"production\"]\nevent_webhooks = [\"notifications\"]\n",
            SEED_BLOCKS[0]
        );
        let config = load(&with_lists).unwrap().config;
        assert_eq!(config.global.event_webhooks, ["notifications"]);
        assert_eq!(
            config.repositories["production"].event_webhooks.as_deref(),
            Some(&["notifications".to_string()][..])
        );
    }

    #[test]
    fn invalid_webhooks_are_rejected_naming_file_and_key() {
        let base = "[event_webhook.x]\nurl = \"https://h.example/e\"\npolicy = \"async\"\nevents = [\"manifest.push\"]\n";
        let cases: &[(&str, &str, &str)] = &[
            ("url = \"ftp://h/e\"", "event_webhook.x.url", "scheme"),
            ("url = \"https:///e\"", "event_webhook.x.url", "host"),
            (
                "policy = \"sometimes\"",
                "event_webhook.x.policy",
                "required, optional, async",
            ),
            ("events = []", "event_webhook.x.events", "at least one"),
            (
                "events = [\"manifest.pushed\"]",
                "event_webhook.x.events",
                "unknown event",
            ),
            ("token = \"\"", "event_webhook.x.token", "empty"),
            (
                "repository_filter = [\"(\"]",
                "event_webhook.x.repository_filter",
                "invalid regex",
            ),
            (
                "max_retries = 17",
                "event_webhook.x.max_retries",
                "between 0 and 16",
            ),
            (
                "ca_bundle = \"/nonexistent/ca.pem\"",
                "event_webhook.x.ca_bundle",
                "cannot read",
            ),
            (
                "format = \"xml\"",
                "event_webhook.x.format",
                "is not one of event, slack",
            ),
            (
                "signing_secrets = [\"abc\"]",
                "event_webhook.x.signing_secrets",
                "whsec_",
            ),
            (
                "signing_secrets = [\"whsec_!!\"]",
                "event_webhook.x.signing_secrets",
                "not base64",
            ),
            (
                "signing_secrets = [\"whsec_AAAA\"]",
                "event_webhook.x.signing_secrets",
                "16 to 64",
            ),
            (
                "signing_secrets = \"whsec_x\"",
                "event_webhook.x.signing_secrets",
                "list",
            ),
            (
                "tag_filter = [\"(\"]",
                "event_webhook.x.tag_filter",
                "invalid regex",
            ),
            (
                "headers = { \"Content-Type\" = \"text/plain\" }",
                "event_webhook.x.headers",
                "written by the server",
            ),
            (
                "headers = { \"webhook-signature\" = \"v1,x\" }",
                "event_webhook.x.headers",
                "written by the server",
            ),
            (
                "headers = { \"X-Api-Key\" = \"a\\r\\nX-Evil: 1\" }",
                "event_webhook.x.headers",
                "CR, LF",
            ),
            (
                "headers = { \"Bad Name\" = \"x\" }",
                "event_webhook.x.headers",
                "not a valid header name",
            ),
            (
                "headers = { \"X-Api-Key\" = \"a\", \"x-api-key\" = \"b\" }",
                "event_webhook.x.headers",
                "set twice",
            ),
            (
                "headers = { \"X-Name\" = \"caf\u{e9}\" }",
                "event_webhook.x.headers",
                "ASCII",
            ),
            (
                "cloudevents_source = \"https://r.example\"",
                "event_webhook.x.cloudevents_source",
                "applies only",
            ),
        ];
        for (line, key, words) in cases {
            // The case's line replaces the base's line for the same key.
            let field = line.split(' ').next().unwrap();
            let mut text: String = base
                .lines()
                .filter(|l| !l.starts_with(&format!("{field} ")))
                .map(|l| format!("{l}\n"))
                .collect();
            text.push_str(line);
            text.push('\n');
            let error = load(&text).unwrap_err();
            assert_eq!(error.file, "test.toml");
            assert_eq!(error.key, *key, "{line}: {error}");
            assert!(error.message.contains(words), "{line}: {error}");
        }
        let undefined = load("[global]\nevent_webhooks = [\"ghost\"]\n").unwrap_err();
        assert_eq!(undefined.key, "global.event_webhooks");
        let overlap = format!(
            "{base}[repository.\"production\"]\nevent_webhooks = [\"x\"]\n[repository.\"production/api\"]\nevent_webhooks = [\"x\"]\n"
        );
        let error = load(&overlap).unwrap_err();
        assert!(error.message.contains("overlaps"), "{error}");
        let unknown = load(&format!("{base}max_retires = 3\n")).unwrap();
        assert_eq!(
            unknown.warnings,
            ["test.toml: unknown key event_webhook.x.max_retires ignored"]
        );
    }

    #[test]
    fn formats_secrets_filters_and_headers_load() {
        let text = "[event_webhook.x]\nurl = \"https://h.example/e\"\npolicy = \"async\"\nevents = [\"tag.create\"]\n\
            format = \"cloudevents\"\ncloudevents_source = \"https://registry.example/\"\n\
            signing_secrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\", \"whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"]\n\
            tag_filter = [\"^v[0-9]+\", \"^latest$\"]\nheaders = { \"X-Api-Key\" = \"k-1\", \"Authorization\" = \"Basic eDp5\" }\n";
        let webhook = load(text).unwrap().config.webhooks["x"].clone();
        assert_eq!(webhook.format, Format::CloudEvents);
        assert_eq!(webhook.cloudevents_source, "https://registry.example/");
        assert_eq!(webhook.signing_secrets.len(), 2);
        assert_eq!(webhook.signing_secrets[1].key, vec![0u8; 32]);
        assert!(webhook.wants(EventKind::TagCreate, "a", Some("v12")));
        assert!(webhook.wants(EventKind::TagCreate, "a", Some("latest")));
        assert!(!webhook.wants(EventKind::TagCreate, "a", Some("dev")));
        assert!(
            !webhook.wants(EventKind::TagCreate, "a", None),
            "no tag, a filter set"
        );
        assert_eq!(
            webhook.headers,
            [
                ("Authorization".to_string(), "Basic eDp5".to_string()),
                ("X-Api-Key".to_string(), "k-1".to_string())
            ]
        );
        // Without a filter, events without a tag pass.
        let plain = load(SEED_BLOCKS[0]).unwrap().config.webhooks["notifications"].clone();
        assert!(plain.wants(EventKind::ManifestPush, "a", None));
        assert_eq!(plain.format, Format::Event);
        // With a token, Authorization is ours.
        let with_token = text.replace("format = ", "token = \"t\"\nformat = ");
        let error = load(&with_token).unwrap_err();
        assert_eq!(error.key, "event_webhook.x.headers");
    }

    #[test]
    fn a_slack_url_without_a_format_gets_slack_messages() {
        let slack = "[event_webhook.slack]\nurl = \"https://hooks.slack.com/services/T.../B.../xxx\"\npolicy = \"optional\"\nevents = [\"manifest.push\", \"tag.create\"]\ntimeout_ms = 3000\n";
        let webhook = load(slack).unwrap().config.webhooks["slack"].clone();
        assert_eq!(webhook.format, Format::Slack);
        let chosen = load(&format!("{slack}format = \"event\"\n"))
            .unwrap()
            .config
            .webhooks["slack"]
            .clone();
        assert_eq!(chosen.format, Format::Event);
    }

    /// A self-signed P-256 certificate, its key, and an unrelated key, made
    /// once with `openssl req -x509 -newkey ec`; only loading and key
    /// matching are checked here, never trust or expiry.
    const CLIENT_CERT_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBkzCCATmgAwIBAgIUC0p/TBSvWbYHlxPgy9KlBgFYlnEwCgYIKoZIzj0EAwIw
HjEcMBoGA1UEAwwTYW5nb3MgdGVzdCBjbGllbnQgYTAgFw0yNjExMjcwOTExMDJa
GA8yMTI2MTEwMzA5MTEwMlowHjEcMBoGA1UEAwwTYW5nb3MgdGVzdCBjbGllbnQg
YTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABBu+z1oUbvWq9c3/t5ekCyWBOMD4
EwaTRNvWB+w/yRtvHyv8xkXnQ9DKrB1UEmwGhP95IEx4M+wipAJgwgLzZ1mjUzBR
MB0GA1UdDgQWBBSy1d1o3rPaWvxbEXdTl7FP9nCthzAfBgNVHSMEGDAWgBSy1d1o
3rPaWvxbEXdTl7FP9nCthzAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gA
MEUCIQCJqdh0H8Jm6vazlymLDW0F0B5SUIZZmy+uHYl2xNICawIgPuf8pQJH1l5K
/0VmU1PLJvcGuYTWGX+y4X1+1X/v4wE=
-----END CERTIFICATE-----
";
    const CLIENT_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg6m87+MQmfxtLAZe8
uU6UmSaG09ieIvoyIrZgDhoofNehRANCAAQbvs9aFG71qvXN/7eXpAslgTjA+BMG
k0Tb1gfsP8kbbx8r/MZF50PQyqwdVBJsBoT/eSBMeDPsIqQCYMIC82dZ
-----END PRIVATE KEY-----
";
    const OTHER_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgox46WMIa1/pjXOwY
NYTMjSZ9Iz21kjV88sv6qlY2H8ChRANCAATYk2p9q9HW5SDxcq6q3ke7cQ6dUEjU
GZTFZOWsh2N4zekoVBT1h5NeeME42bZcdEmpHetQss4aknHmCPWrYJCd
-----END PRIVATE KEY-----
";

    use crate::test_support::TempDir as Scratch;

    /// A webhook at `url` with `lines` appended.
    fn webhook_with(url: &str, lines: &[String]) -> Result<super::super::Loaded, ConfigError> {
        let mut text =
            format!("[event_webhook.x]\nurl = \"{url}\"\npolicy = \"async\"\nevents = [\"manifest.push\"]\n");
        for line in lines {
            text.push_str(line);
            text.push('\n');
        }
        load(&text)
    }

    fn key_line(key: &str, path: &std::path::Path) -> String {
        format!("{key} = {:?}", path.display().to_string())
    }

    #[test]
    fn a_client_certificate_loads_with_its_key_on_an_https_url() {
        let scratch = Scratch::new("config-test");
        let certificate = scratch.file("client.pem", CLIENT_CERT_PEM);
        let private_key = scratch.file("client.key", CLIENT_KEY_PEM);
        let lines = [
            key_line("client_certificate", &certificate),
            key_line("client_private_key", &private_key),
        ];
        let loaded = webhook_with("https://h.example/e", &lines).unwrap_or_else(|error| panic!("{error}"));
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        assert_eq!(
            loaded.config.webhooks["x"].client_identity,
            Some(ClientIdentity {
                certificate: certificate.clone(),
                private_key: private_key.clone()
            })
        );
        // The client configuration the outbound side builds from them.
        let identity = loaded.config.webhooks["x"].client_identity.clone().unwrap();
        assert!(crate::tls::client_config(None, Some(&identity)).is_ok());
        // Neither key: no client certificate.
        let loaded = webhook_with("https://h.example/e", &[]).unwrap();
        assert_eq!(loaded.config.webhooks["x"].client_identity, None);
    }

    #[test]
    fn a_client_certificate_needs_its_key_a_match_and_https() {
        let scratch = Scratch::new("config-test");
        let certificate = scratch.file("client.pem", CLIENT_CERT_PEM);
        let private_key = scratch.file("client.key", CLIENT_KEY_PEM);
        let other_key = scratch.file("other.key", OTHER_KEY_PEM);
        let not_pem = scratch.file("garbage.pem", "not a PEM file\n");
        let missing = scratch.path().join("missing.pem");
        let https = "https://h.example/e";
        let cases: Vec<(&str, Vec<String>, &str, String)> = vec![
            (
                https,
                vec![key_line("client_certificate", &certificate)],
                "event_webhook.x.client_private_key",
                "is required with client_certificate".into(),
            ),
            (
                https,
                vec![key_line("client_private_key", &private_key)],
                "event_webhook.x.client_certificate",
                "is required with client_private_key".into(),
            ),
            (
                "http://h.example/e",
                vec![
                    key_line("client_certificate", &certificate),
                    key_line("client_private_key", &private_key),
                ],
                "event_webhook.x.client_certificate",
                "needs an https URL".into(),
            ),
            (
                https,
                vec![
                    key_line("client_certificate", &missing),
                    key_line("client_private_key", &private_key),
                ],
                "event_webhook.x.client_certificate",
                missing.display().to_string(),
            ),
            (
                https,
                vec![
                    key_line("client_certificate", &not_pem),
                    key_line("client_private_key", &private_key),
                ],
                "event_webhook.x.client_certificate",
                format!("{}: no PEM certificate", not_pem.display()),
            ),
            (
                https,
                vec![
                    key_line("client_certificate", &certificate),
                    key_line("client_private_key", &missing),
                ],
                "event_webhook.x.client_private_key",
                missing.display().to_string(),
            ),
            (
                https,
                vec![
                    key_line("client_certificate", &certificate),
                    key_line("client_private_key", &certificate),
                ],
                "event_webhook.x.client_private_key",
                format!("{}: no PEM private key", certificate.display()),
            ),
            (
                https,
                vec![
                    key_line("client_certificate", &certificate),
                    key_line("client_private_key", &other_key),
                ],
                "event_webhook.x.client_private_key",
                format!(
                    "{}: does not match the certificate in {}",
                    other_key.display(),
                    certificate.display()
                ),
            ),
        ];
        for (url, lines, key, words) in &cases {
            let error = webhook_with(url, lines).unwrap_err();
            assert_eq!(error.file, "test.toml");
            assert_eq!(error.key, *key, "{lines:?}: {error}");
            assert!(error.message.contains(words.as_str()), "{lines:?}: {error}");
        }
    }

    #[test]
    fn urls_parse_into_host_port_and_path() {
        let url = WebhookUrl::parse("https://Hooks.Example.com/a/b?c=d").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.path_and_query.as_str()),
            ("hooks.example.com", 443, "/a/b?c=d")
        );
        assert_eq!(url.host_header(), "hooks.example.com");
        let url = WebhookUrl::parse("http://[::1]:8080").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.path_and_query.as_str()),
            ("::1", 8080, "/")
        );
        assert_eq!(url.host_header(), "[::1]:8080");
        assert!(WebhookUrl::parse("http://user:pw@h/").is_err());
        assert!(WebhookUrl::parse("http://h:0/").is_err());
        assert!(WebhookUrl::parse("http://h/a b").is_err());
    }
}
