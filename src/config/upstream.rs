//! `[[repository."X".upstream]]`: the registries a repository mirrors as a
//! pull-through cache (upstream Angos's keys), tried in order, and the
//! repository's `namespace` (the registry containerd names with `?ns=`) and
//! `cache_freshness_secs`.

use std::path::PathBuf;

use super::{ConfigError, Scheme, Section, WebhookUrl};
use crate::tls::ClientIdentity;

/// Upstreams one repository may list: fallbacks, not a pool.
const UPSTREAMS_MAX: usize = 8;
const CONNECT_TIMEOUT_SECS_DEFAULT: u64 = 5;
const READ_TIMEOUT_SECS_DEFAULT: u64 = 30;
/// Upstream Angos's default.
const MAX_REDIRECT_DEFAULT: u8 = 5;

/// One upstream registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// Scheme, host and port; the path is `prefix`.
    pub url: WebhookUrl,
    /// The URL's path without slashes at either end: the upstream name of
    /// local `X/rest` is `prefix/rest` (just `rest` without a prefix).
    pub prefix: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub ca_bundle: Option<PathBuf>,
    pub client_identity: Option<ClientIdentity>,
    pub connect_timeout_ms: u64,
    /// Longest silence from the upstream while an answer is awaited or read.
    pub read_timeout_ms: u64,
    pub max_redirect: u8,
}

/// What makes a repository a pull-through cache.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MirrorConfig {
    pub upstreams: Vec<UpstreamConfig>,
    /// `namespace`: requests with `?ns=` equal to it (containerd's mirror
    /// parameter) are served from this repository, `X/name`.
    pub namespace: Option<String>,
    /// How long a tag checked with the upstream is served without asking
    /// again; 0 asks at every pull (upstream Angos's behaviour).
    pub freshness_secs: u64,
}

impl MirrorConfig {
    pub fn is_mirror(&self) -> bool {
        !self.upstreams.is_empty()
    }
}

pub(super) fn parse_mirror(
    section: &mut Section,
    warnings: &mut Vec<String>,
) -> Result<MirrorConfig, ConfigError> {
    let mut mirror = MirrorConfig::default();
    if let Some(namespace) = section.string("namespace")? {
        let valid = !namespace.is_empty()
            && namespace.len() <= 255
            && namespace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
        if !valid {
            return Err(section.error(
                "namespace",
                format!("{namespace:?} is not a registry host name (such as \"docker.io\")"),
            ));
        }
        mirror.namespace = Some(namespace.to_ascii_lowercase());
    }
    if let Some(secs) = section.integer("cache_freshness_secs", 0, 365 * 24 * 3600)? {
        mirror.freshness_secs = secs;
    }
    match section.get("upstream") {
        None => {}
        Some(toml::Value::Array(items)) => {
            if items.len() > UPSTREAMS_MAX {
                return Err(section.error("upstream", format!("at most {UPSTREAMS_MAX} upstreams")));
            }
            for (index, item) in items.iter().enumerate() {
                let path = format!("{}[{index}]", section.key_path("upstream"));
                let toml::Value::Table(table) = item else {
                    return Err(section.error("upstream", "expected [[...upstream]] tables"));
                };
                let mut entry = Section::new(section.file, &path, table);
                mirror.upstreams.push(parse_upstream(&mut entry)?);
                entry.finish(warnings);
            }
        }
        Some(_) => return Err(section.error("upstream", "expected [[...upstream]] tables")),
    }
    if !mirror.is_mirror() && (mirror.namespace.is_some() || mirror.freshness_secs > 0) {
        let key = if mirror.namespace.is_some() {
            "namespace"
        } else {
            "cache_freshness_secs"
        };
        return Err(section.error(key, "applies only to a repository with [[...upstream]] entries"));
    }
    Ok(mirror)
}

fn parse_upstream(section: &mut Section) -> Result<UpstreamConfig, ConfigError> {
    let Some(text) = section.string("url")? else {
        return Err(section.error("url", "is required"));
    };
    // Upstream Angos accepts a bare host; it means https.
    let with_scheme = if text.contains("://") {
        text.to_string()
    } else {
        format!("https://{text}")
    };
    let url =
        WebhookUrl::parse(&with_scheme).map_err(|why| section.error("url", format!("{text:?}: {why}")))?;
    if url.path_and_query.contains('?') {
        return Err(section.error("url", format!("{text:?}: a query is not allowed")));
    }
    let prefix = url.path_and_query.trim_matches('/').to_string();
    if !prefix.is_empty() && !crate::registry::reference::is_valid_name(&prefix) {
        return Err(section.error(
            "url",
            format!("{text:?}: the path is not a repository name prefix"),
        ));
    }
    let username = section.string("username")?.map(str::to_string);
    let password = section.string("password")?.map(str::to_string);
    if username.is_some() != password.is_some() {
        let missing = if username.is_some() {
            "password"
        } else {
            "username"
        };
        return Err(section.error(missing, "is required with the other credential"));
    }
    let check = |value: &Option<String>| {
        value
            .as_deref()
            .is_some_and(|text| text.bytes().any(|b| b < b' ' || b == 0x7f))
    };
    if check(&username) || check(&password) {
        return Err(section.error("username", "credentials must not contain control characters"));
    }
    if username.as_deref().is_some_and(|name| name.contains(':')) {
        return Err(section.error("username", "must not contain ':' (HTTP Basic)"));
    }
    let ca_bundle = section.string("server_ca_bundle")?.map(PathBuf::from);
    if let Some(path) = &ca_bundle {
        if url.scheme != Scheme::Https {
            return Err(section.error(
                "server_ca_bundle",
                format!("needs an https URL; {text} is plain http"),
            ));
        }
        crate::tls::load_certificates(path).map_err(|why| section.error("server_ca_bundle", why))?;
    }
    let client_identity = super::parse_client_identity(section, &url)?;
    let connect_timeout_secs = section
        .integer("connect_timeout_secs", 1, 3600)?
        .unwrap_or(CONNECT_TIMEOUT_SECS_DEFAULT);
    let read_timeout_secs = section
        .integer("read_timeout_secs", 1, 3600)?
        .unwrap_or(READ_TIMEOUT_SECS_DEFAULT);
    let max_redirect = section
        .integer("max_redirect", 0, 20)?
        .map_or(MAX_REDIRECT_DEFAULT, |count| count as u8);
    Ok(UpstreamConfig {
        url,
        prefix,
        username,
        password,
        ca_bundle,
        client_identity,
        connect_timeout_ms: connect_timeout_secs * 1000,
        read_timeout_ms: read_timeout_secs * 1000,
        max_redirect,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, load_sources};

    fn load_str(text: &str) -> Result<Config, crate::config::ConfigError> {
        load_sources(&[("test.toml".to_string(), text.to_string())]).map(|loaded| loaded.config)
    }

    fn error_of(text: &str) -> String {
        load_str(text).unwrap_err().to_string()
    }

    #[test]
    fn upstream_angos_configurations_load() {
        let config = load_str(
            r#"
            [repository."docker-io"]
            namespace = "docker.io"
            immutable_tags = true
            [[repository."docker-io".upstream]]
            url = "https://registry-1.docker.io"
            username = "user"
            password = "pass"
            [[repository."docker-io".upstream]]
            url = "mirror.example.com/team"
            max_redirect = 2
            "#,
        )
        .unwrap();
        let mirror = &config.repositories["docker-io"].mirror;
        assert_eq!(mirror.namespace.as_deref(), Some("docker.io"));
        assert_eq!(mirror.upstreams.len(), 2);
        assert_eq!(mirror.upstreams[0].url.host, "registry-1.docker.io");
        assert_eq!(mirror.upstreams[0].prefix, "");
        assert_eq!(mirror.upstreams[0].max_redirect, 5);
        assert_eq!(mirror.upstreams[1].url.scheme, crate::config::Scheme::Https);
        assert_eq!(mirror.upstreams[1].prefix, "team");
        assert_eq!(mirror.upstreams[1].max_redirect, 2);
    }

    #[test]
    fn bad_upstreams_name_the_key() {
        let text = error_of("[[repository.\"m\".upstream]]\nusername = \"u\"\n");
        assert!(text.contains("repository.\"m\".upstream[0].url"), "{text}");
        let text = error_of("[[repository.\"m\".upstream]]\nurl = \"ftp://x\"\n");
        assert!(text.contains("upstream[0].url"), "{text}");
        let text = error_of("[[repository.\"m\".upstream]]\nurl = \"http://x\"\nusername = \"u\"\n");
        assert!(text.contains("upstream[0].password"), "{text}");
        let text = error_of("[repository.\"m\"]\nnamespace = \"docker.io\"\n");
        assert!(text.contains("namespace"), "{text}");
        let text = error_of(
            "[[repository.\"m\".upstream]]\nurl = \"http://x\"\nserver_ca_bundle = \"/nonexistent\"\n",
        );
        assert!(text.contains("server_ca_bundle"), "{text}");
    }
}
