//! The `[event_webhook.NAME]`, `[repository."X"]` and `event_webhooks`
//! parts of the configuration, validated at load: URL scheme and host, known
//! event kinds, non-empty token, valid regexes, `max_retries <= 16`, defined
//! names, non-overlapping repository keys.

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
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default_port = match self.scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!("{text:?} is not a port number")),
    }
}

/// The OR-matched `repository_filter` regexes, compared by their source.
#[derive(Clone)]
pub struct RepositoryFilter {
    pub patterns: Vec<String>,
    compiled: Vec<regex_lite::Regex>,
}

impl RepositoryFilter {
    pub fn matches(&self, namespace: &str) -> bool {
        self.compiled.is_empty() || self.compiled.iter().any(|regex| regex.is_match(namespace))
    }
}

impl PartialEq for RepositoryFilter {
    fn eq(&self, other: &Self) -> bool {
        self.patterns == other.patterns
    }
}

impl std::fmt::Debug for RepositoryFilter {
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
    pub repository_filter: RepositoryFilter,
    /// Extra CA certificates (PEM) trusted for this webhook's https URL.
    pub ca_bundle: Option<PathBuf>,
}

impl WebhookConfig {
    pub fn wants(&self, kind: EventKind, namespace: &str) -> bool {
        self.events.contains(&kind) && self.repository_filter.matches(namespace)
    }
}

/// One `[repository."X"]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RepositoryConfig {
    /// Replaces `global.event_webhooks` for this namespace when set.
    pub event_webhooks: Option<Vec<String>>,
}

/// Where a name list came from, to name the file and key in errors found
/// after all files are merged.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Origin {
    pub file: String,
    pub key: String,
}

pub(super) fn parse_webhook(section: &mut Section, name: &str) -> Result<WebhookConfig, ConfigError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
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
    let mut patterns = Vec::new();
    let mut compiled = Vec::new();
    match section.get("repository_filter") {
        Some(toml::Value::Array(items)) => {
            for item in items {
                let Some(pattern) = item.as_str() else {
                    return Err(section.error("repository_filter", "must be a list of regex strings"));
                };
                let regex = regex_lite::Regex::new(pattern).map_err(|error| {
                    section.error("repository_filter", format!("invalid regex {pattern:?}: {error}"))
                })?;
                patterns.push(pattern.to_string());
                compiled.push(regex);
            }
        }
        Some(_) => return Err(section.error("repository_filter", "must be a list of regex strings")),
        None => {}
    }
    let ca_bundle = section.string("ca_bundle")?.map(PathBuf::from);
    Ok(WebhookConfig {
        name: name.to_string(),
        url,
        policy,
        events,
        token,
        timeout_ms,
        max_retries,
        repository_filter: RepositoryFilter { patterns, compiled },
        ca_bundle,
    })
}

pub(super) fn parse_name_list(
    section: &mut Section,
    key: &'static str,
) -> Result<Option<Vec<String>>, ConfigError> {
    match section.get(key) {
        None => Ok(None),
        Some(toml::Value::Array(items)) => {
            let mut names = Vec::new();
            for item in items {
                match item.as_str() {
                    Some(name) => names.push(name.to_string()),
                    None => return Err(section.error(key, "must be a list of webhook names")),
                }
            }
            Ok(Some(names))
        }
        Some(_) => Err(section.error(key, "must be a list of webhook names")),
    }
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
