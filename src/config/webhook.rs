//! The `[event_webhook.NAME]`, `[repository."X"]` and `event_webhooks`
//! parts of the configuration, validated at load: URL scheme and host, known
//! event kinds, non-empty token, valid regexes, `max_retries <= 16`, defined
//! names, non-overlapping repository keys, TLS files that load (a client
//! certificate only with its key, the pair matching, on an https URL).

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
    /// The client certificate presented to an https endpoint that requires
    /// mutual TLS (`client_certificate` and `client_private_key`).
    pub client_identity: Option<ClientIdentity>,
}

/// The TLS layer owns what it loads; configuration names it.
pub use crate::tls::ClientIdentity;

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
    /// Replace `[global]`'s lists for this namespace, each where set.
    pub access: super::AccessLists,
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
        repository_filter: RepositoryFilter { patterns, compiled },
        ca_bundle,
        client_identity,
    })
}

/// `client_certificate` and `client_private_key`: both or neither, on an
/// https URL only, and loaded now, so a typo, a wrong file or a key that does
/// not match is a configuration error rather than failed deliveries later.
fn parse_client_identity(
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
