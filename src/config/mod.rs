//! Configuration: TOML files into one validated `Config`. Every limit is
//! explicit here with its default; every error names the file and the key.
//! Unknown keys are accepted with a warning naming them, so typos are visible.

pub mod auth;
pub mod lifecycle;
pub mod s3;
pub mod ui;
pub mod upstream;
pub mod webhook;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

pub use auth::{AccessLists, AuthConfig, IdentityConfig};
pub use lifecycle::{ImmutableTags, TagImmutability};
pub use upstream::MirrorConfig;
use webhook::parse_client_identity;
pub use webhook::{
    ClientIdentity, Format, Policy, RepositoryConfig, Scheme, SigningSecret, WebhookConfig, WebhookUrl,
    host_header,
};

/// The validated configuration the server runs on.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub global: GlobalConfig,
    /// `[repository."X"]` by key.
    pub repositories: BTreeMap<String, RepositoryConfig>,
    /// `[event_webhook.NAME]` by name.
    pub webhooks: BTreeMap<String, WebhookConfig>,
    pub auth: AuthConfig,
    /// `[ui]`: the operator page.
    pub ui: ui::UiConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub bind_address: IpAddr,
    /// 0 asks the kernel for a free port (tests read it from the log line).
    pub port: u16,
    /// Open client connections beyond this are refused with 503.
    pub max_connections: usize,
    /// A request head larger than this gets 431.
    pub max_header_size: usize,
    /// A request head must arrive completely within this time.
    pub header_timeout_ms: u64,
    /// A request body must make progress at least this often.
    pub body_timeout_ms: u64,
    /// A body must arrive, and an answer be read, at least this fast on
    /// average over each `body_timeout_ms` window.
    pub min_transfer_rate_bytes_per_sec: u64,
    /// An idle keep-alive connection is closed after this time.
    pub keep_alive_timeout_ms: u64,
    /// HTTPS, when `[server.tls]` is present.
    pub tls: Option<TlsConfig>,
    /// Peers whose `X-Forwarded-For` names the client (reverse proxies).
    pub trusted_proxies: Vec<crate::http::forwarded::IpNetwork>,
}

/// `[server.tls]`: the certificate chain and key (PEM), reloaded when the
/// files change. With `port`, HTTPS listens there and `server.port` stays
/// plain HTTP; without it, `server.port` serves HTTPS only.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    pub server_certificate_bundle: PathBuf,
    pub server_private_key: PathBuf,
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StorageConfig {
    pub root_dir: PathBuf,
    pub sync_to_disk: bool,
    pub max_upload_sessions: usize,
    /// Open upload sessions any one namespace may hold.
    pub max_upload_sessions_per_namespace: usize,
    /// Silence after which an upload session is dropped (its bytes too).
    pub upload_session_idle_secs: u64,
    /// Memory for manifests and tags already read (0 disables the cache).
    pub manifest_cache_size: usize,
    /// Memory for the sorted tag and namespace names of paged listings.
    pub listing_index_size: usize,
    /// Free space pushes must leave on the disk under `root_dir`; below it
    /// they are refused with 507 (`storage::space`).
    pub min_free_space: crate::storage::MinFreeSpace,
    /// `[blob_store.s3]`: content in S3-compatible object storage instead
    /// of under `root_dir`.
    pub s3: Option<s3::S3Config>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GlobalConfig {
    pub max_manifest_size: u64,
    pub max_blob_size: u64,
    /// Accept manifests whose blobs or child manifests the namespace lacks
    /// (upstream Angos's key and default).
    pub allow_missing_manifest_references: bool,
    pub shutdown_drain_secs: u64,
    /// Garbage collection removes only what was last written at least this
    /// long before a collection starts: a push's blobs wait for its manifest
    /// that long at most.
    pub gc_grace_secs: u64,
    /// Seconds between scheduled collections (0: only on demand).
    pub gc_interval_secs: u64,
    /// Start a collection after this many deletions (manifests, tags, blob
    /// links) since the last one (0: never on that account).
    pub gc_after_deletes: u64,
    /// Seconds between scheduled scrubs, which check every stored file
    /// against its digest (0: only on demand).
    pub scrub_interval_secs: u64,
    /// How fast a scrub reads: it competes with clients for the disk.
    pub scrub_bytes_per_sec: u64,
    /// Seconds between scheduled retention runs (0: only on demand); none
    /// runs without retention rules.
    pub prune_interval_secs: u64,
    /// Webhooks for every namespace without its own `event_webhooks`.
    pub event_webhooks: Vec<String>,
    /// Events queued per async webhook before the oldest is dropped.
    pub event_webhook_queue_length: usize,
    /// Disk the async event journal may use before the oldest undelivered events are dropped.
    pub event_webhook_journal_size: u64,
    /// Dead letters (async events that exhausted their retries) kept for redelivery.
    pub event_webhook_dead_letters: usize,
    /// Who may pull, push and delete where a repository does not say.
    pub access: AccessLists,
    /// Record each manifest's last pull time (for retention rules that read it).
    pub update_pull_time: bool,
    /// `max_concurrent_cache_jobs`: blob fills of the pull-through cache
    /// running at once (upstream Angos's key and default); more wait.
    pub max_concurrent_cache_jobs: usize,
    /// `immutable_tags` and `immutable_tags_exclusions`: tags a push may
    /// not move to another digest, where a repository does not say.
    pub immutable_tags: ImmutableTags,
    /// `[global.retention_policy] rules`: a manifest any of them keeps
    /// stays, in every namespace (with its repository's rules).
    pub retention_rules: Vec<crate::retention::rule::Rule>,
}

impl Default for Config {
    /// The built-in defaults of SPEC section 1: `angos server` alone serves.
    fn default() -> Config {
        Config {
            server: ServerConfig {
                bind_address: IpAddr::from([127, 0, 0, 1]),
                port: 8000,
                max_connections: 4096,
                max_header_size: 16 * 1024,
                header_timeout_ms: 10_000,
                body_timeout_ms: 30_000,
                min_transfer_rate_bytes_per_sec: 1024,
                keep_alive_timeout_ms: 60_000,
                tls: None,
                trusted_proxies: Vec::new(),
            },
            storage: StorageConfig {
                root_dir: PathBuf::from("./data"),
                sync_to_disk: false,
                max_upload_sessions: 4096,
                max_upload_sessions_per_namespace: 256,
                upload_session_idle_secs: 3600,
                manifest_cache_size: 4 << 20,
                listing_index_size: 16 << 20,
                min_free_space: crate::storage::MinFreeSpace::DEFAULT,
                s3: None,
            },
            global: GlobalConfig {
                max_manifest_size: 5 * 1024 * 1024,
                max_blob_size: 100 * 1024 * 1024 * 1024,
                allow_missing_manifest_references: true,
                shutdown_drain_secs: 30,
                gc_grace_secs: 48 * 3600,
                gc_interval_secs: 24 * 3600,
                gc_after_deletes: 0,
                scrub_interval_secs: 7 * 24 * 3600,
                scrub_bytes_per_sec: 16 << 20,
                prune_interval_secs: 24 * 3600,
                event_webhooks: Vec::new(),
                event_webhook_queue_length: 10_000,
                event_webhook_journal_size: 256 << 20,
                event_webhook_dead_letters: 1000,
                access: AccessLists::default(),
                update_pull_time: false,
                max_concurrent_cache_jobs: 4,
                immutable_tags: ImmutableTags::default(),
                retention_rules: Vec::new(),
            },
            repositories: BTreeMap::new(),
            webhooks: BTreeMap::new(),
            auth: AuthConfig::default(),
            ui: ui::UiConfig::default(),
        }
    }
}

/// A configuration error, naming the file and the offending key.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.key, self.message)
        }
    }
}

/// The result of loading: the configuration and the warnings to log
/// (unknown keys), kept apart so reload can decide when to log them.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

/// Reads and merges `files` in order (later files override earlier keys
/// table by table), then validates. No files means the built-in defaults.
pub fn load_files(files: &[PathBuf]) -> Result<Loaded, ConfigError> {
    let mut sources = Vec::with_capacity(files.len());
    for file in files {
        let text = std::fs::read_to_string(file).map_err(|error| ConfigError {
            file: file.display().to_string(),
            key: String::new(),
            message: format!("cannot read: {error}"),
        })?;
        sources.push((file.display().to_string(), text));
    }
    load_sources(&sources)
}

/// Like `load_files` on in-memory `(file name, text)` pairs; what tests and
/// the fuzzer call.
pub fn load_sources(sources: &[(String, String)]) -> Result<Loaded, ConfigError> {
    let mut builder = Builder {
        config: Config::default(),
        warnings: Vec::new(),
        lists: Vec::new(),
        repositories: BTreeMap::new(),
        auth_origins: auth::AuthOrigins::default(),
    };
    for (file, text) in sources {
        let table: toml::Table = text.parse().map_err(|error: toml::de::Error| ConfigError {
            file: file.clone(),
            key: String::new(),
            message: format!("invalid TOML: {}", error.message()),
        })?;
        builder.apply(file, &table)?;
    }
    let mut lists = builder.lists;
    lists.extend(
        builder
            .repositories
            .values()
            .filter_map(|(origin, repository)| Some((origin.clone(), repository.event_webhooks.clone()?))),
    );
    webhook::check_references(&builder.config.webhooks, &lists, &builder.repositories)?;
    auth::check_auth(&builder.config.auth, &builder.auth_origins)?;
    builder.config.repositories = builder
        .repositories
        .into_iter()
        .map(|(key, (_, repository))| (key, repository))
        .collect();
    builder
        .warnings
        .extend(lifecycle::pull_time_warnings(&builder.config));
    Ok(Loaded {
        config: builder.config,
        warnings: builder.warnings,
    })
}

struct Builder {
    config: Config,
    warnings: Vec<String>,
    /// `global.event_webhooks` as last set, with where it was set.
    lists: Vec<(webhook::Origin, Vec<String>)>,
    repositories: BTreeMap<String, (webhook::Origin, RepositoryConfig)>,
    auth_origins: auth::AuthOrigins,
}

/// A view of one TOML table that remembers which keys were read, so the
/// rest can be reported as unknown.
struct Section<'a> {
    file: &'a str,
    path: String,
    table: &'a toml::Table,
    seen: Vec<&'static str>,
}

impl<'a> Section<'a> {
    fn new(file: &'a str, path: &str, table: &'a toml::Table) -> Section<'a> {
        Section {
            file,
            path: path.to_string(),
            table,
            seen: Vec::new(),
        }
    }

    fn key_path(&self, key: &str) -> String {
        if key.is_empty() {
            self.path.clone()
        } else if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            key: self.key_path(key),
            message: message.into(),
        }
    }

    fn get(&mut self, key: &'static str) -> Option<&'a toml::Value> {
        self.seen.push(key);
        self.table.get(key)
    }

    fn string(&mut self, key: &'static str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(toml::Value::String(text)) => Ok(Some(text)),
            Some(_) => Err(self.error(key, "expected a string")),
        }
    }

    fn boolean(&mut self, key: &'static str) -> Result<Option<bool>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(toml::Value::Boolean(value)) => Ok(Some(*value)),
            Some(_) => Err(self.error(key, "expected true or false")),
        }
    }

    fn integer(&mut self, key: &'static str, min: u64, max: u64) -> Result<Option<u64>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(toml::Value::Integer(value))
                if *value >= 0 && (*value as u64) >= min && (*value as u64) <= max =>
            {
                Ok(Some(*value as u64))
            }
            Some(toml::Value::Integer(_)) => Err(self.error(key, format!("must be between {min} and {max}"))),
            Some(_) => Err(self.error(key, "expected an integer")),
        }
    }

    /// A size: an integer of bytes or a string like `5MiB`, `100GiB`, `512KB`.
    fn size(&mut self, key: &'static str) -> Result<Option<u64>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(toml::Value::Integer(value)) if *value >= 0 => Ok(Some(*value as u64)),
            Some(toml::Value::String(text)) => parse_size(text).map(Some).ok_or_else(|| {
                self.error(
                    key,
                    format!("invalid size {text:?} (examples: 512KiB, 5MiB, 100GiB)"),
                )
            }),
            Some(_) => Err(self.error(key, "expected a size such as \"5MiB\"")),
        }
    }

    /// A list of strings; `message` says what the list holds when it is not one.
    fn string_list(&mut self, key: &'static str, message: &str) -> Result<Option<Vec<String>>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(toml::Value::Array(items)) => items
                .iter()
                .map(|item| {
                    item.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| self.error(key, message))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(self.error(key, message)),
        }
    }

    fn table(&mut self, key: &'static str) -> Result<Option<&'a toml::Table>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(toml::Value::Table(table)) => Ok(Some(table)),
            Some(_) => Err(self.error(key, "expected a table")),
        }
    }

    /// Warns about every key of the table that no accessor asked for.
    fn finish(self, warnings: &mut Vec<String>) {
        for key in self.table.keys() {
            if !self.seen.contains(&key.as_str()) {
                warnings.push(format!(
                    "{}: unknown key {} ignored",
                    self.file,
                    self.key_path(key)
                ));
            }
        }
    }
}

impl Builder {
    fn apply(&mut self, file: &str, table: &toml::Table) -> Result<(), ConfigError> {
        let mut root = Section::new(file, "", table);
        if let Some(server) = root.table("server")? {
            self.apply_server(file, server)?;
        }
        if let Some(blob_store) = root.table("blob_store")? {
            let mut section = Section::new(file, "blob_store", blob_store);
            let fs = section.table("fs")?;
            if let Some(fs) = fs {
                self.apply_storage(file, fs)?;
            }
            if let Some(table) = section.table("s3")? {
                if fs.is_some() {
                    return Err(section.error("", "choose one backend: [blob_store.fs] or [blob_store.s3]"));
                }
                let mut s3 = Section::new(file, "blob_store.s3", table);
                // Ours: where this replica keeps its own state (its webhook
                // journal and lock), the content being in the bucket.
                if let Some(dir) = s3.string("local_dir")? {
                    if dir.is_empty() {
                        return Err(s3.error("local_dir", "must not be empty"));
                    }
                    self.config.storage.root_dir = PathBuf::from(dir);
                }
                self.config.storage.s3 = Some(s3::parse_s3(&mut s3)?);
                s3.finish(&mut self.warnings);
            }
            section.finish(&mut self.warnings);
        }
        if let Some(global) = root.table("global")? {
            self.apply_global(file, global)?;
        }
        if let Some(repositories) = root.table("repository")? {
            for (key, value) in repositories {
                let path = format!("repository.\"{key}\"");
                let toml::Value::Table(table) = value else {
                    return Err(ConfigError {
                        file: file.to_string(),
                        key: path,
                        message: "expected a table".into(),
                    });
                };
                if !crate::registry::reference::is_valid_name(key) {
                    return Err(ConfigError {
                        file: file.to_string(),
                        key: path,
                        message: "is not a valid repository name".into(),
                    });
                }
                let mut section = Section::new(file, &path, table);
                let event_webhooks = webhook::parse_name_list(&mut section, "event_webhooks")?;
                let origin = webhook::Origin {
                    file: file.to_string(),
                    key: section.key_path("event_webhooks"),
                };
                let entry = self.repositories.entry(key.clone()).or_default();
                auth::parse_access_lists(&mut section, &mut entry.1.access, &mut self.auth_origins)?;
                entry
                    .1
                    .immutable_tags
                    .merge(lifecycle::parse_immutable_tags(&mut section)?);
                if let Some(rules) = lifecycle::parse_retention_policy(&mut section, &mut self.warnings)? {
                    entry.1.retention_rules = rules;
                }
                entry.1.mirror = upstream::parse_mirror(&mut section, &mut self.warnings)?;
                section.finish(&mut self.warnings);
                entry.0 = origin;
                if event_webhooks.is_some() {
                    entry.1.event_webhooks = event_webhooks;
                }
            }
        }
        if let Some(webhooks) = root.table("event_webhook")? {
            for (name, value) in webhooks {
                let path = format!("event_webhook.{name}");
                let toml::Value::Table(table) = value else {
                    return Err(ConfigError {
                        file: file.to_string(),
                        key: path,
                        message: "expected a table".into(),
                    });
                };
                let mut section = Section::new(file, &path, table);
                let webhook = webhook::parse_webhook(&mut section, name)?;
                section.finish(&mut self.warnings);
                self.config.webhooks.insert(name.clone(), webhook);
            }
        }
        if let Some(table) = root.table("ui")? {
            let mut section = Section::new(file, "ui", table);
            ui::parse_ui(&mut section, &mut self.config.ui)?;
            section.finish(&mut self.warnings);
        }
        if let Some(table) = root.table("auth")? {
            auth::parse_auth(
                file,
                table,
                &mut self.config.auth,
                &mut self.auth_origins,
                &mut self.warnings,
            )?;
        }
        root.finish(&mut self.warnings);
        Ok(())
    }

    fn apply_server(&mut self, file: &str, table: &toml::Table) -> Result<(), ConfigError> {
        let mut section = Section::new(file, "server", table);
        let server = &mut self.config.server;
        // SPEC section 3: bind_address is required whenever [server] is present.
        let Some(address) = section.string("bind_address")? else {
            return Err(section.error("bind_address", "is required when [server] is present"));
        };
        server.bind_address = address
            .parse()
            .map_err(|_| section.error("bind_address", format!("{address:?} is not an IP address")))?;
        if let Some(port) = section.integer("port", 0, u16::MAX as u64)? {
            server.port = port as u16;
        }
        if let Some(value) = section.integer("max_connections", 1, 1_000_000)? {
            server.max_connections = value as usize;
        }
        if let Some(value) = section.size("max_header_size")? {
            if !(1024..=1024 * 1024).contains(&value) {
                return Err(section.error("max_header_size", "must be between 1KiB and 1MiB"));
            }
            server.max_header_size = value as usize;
        }
        let timeout_ms_max = 24 * 3600 * 1000;
        if let Some(value) = section.integer("header_timeout_ms", 1, timeout_ms_max)? {
            server.header_timeout_ms = value;
        }
        if let Some(value) = section.integer("min_transfer_rate_bytes_per_sec", 0, 1 << 30)? {
            server.min_transfer_rate_bytes_per_sec = value;
        }
        if let Some(value) = section.integer("body_timeout_ms", 1, timeout_ms_max)? {
            server.body_timeout_ms = value;
        }
        if let Some(value) = section.integer("keep_alive_timeout_ms", 1, timeout_ms_max)? {
            server.keep_alive_timeout_ms = value;
        }
        if let Some(table) = section.table("tls")? {
            let mut tls = Section::new(file, "server.tls", table);
            let Some(certificates) = tls.string("server_certificate_bundle")? else {
                return Err(tls.error("server_certificate_bundle", "is required in [server.tls]"));
            };
            let Some(key) = tls.string("server_private_key")? else {
                return Err(tls.error("server_private_key", "is required in [server.tls]"));
            };
            let port = tls.integer("port", 0, u16::MAX as u64)?.map(|port| port as u16);
            // Checked now, so a wrong path or a key that does not fit the
            // certificate is a configuration error naming the key.
            if let Err(why) = crate::tls::server_config(Path::new(certificates), Path::new(key)) {
                return Err(tls.error("server_certificate_bundle", why));
            }
            tls.finish(&mut self.warnings);
            server.tls = Some(TlsConfig {
                server_certificate_bundle: PathBuf::from(certificates),
                server_private_key: PathBuf::from(key),
                port,
            });
        }
        let message = "must be a list of IP addresses or CIDR ranges, like [\"10.0.0.0/8\"]";
        if let Some(texts) = section.string_list("trusted_proxies", message)? {
            server.trusted_proxies = texts
                .iter()
                .map(|text| crate::http::forwarded::IpNetwork::parse(text))
                .collect::<Result<_, _>>()
                .map_err(|why| section.error("trusted_proxies", why))?;
        }
        section.finish(&mut self.warnings);
        Ok(())
    }

    fn apply_storage(&mut self, file: &str, table: &toml::Table) -> Result<(), ConfigError> {
        let mut section = Section::new(file, "blob_store.fs", table);
        let storage = &mut self.config.storage;
        if let Some(root) = section.string("root_dir")? {
            if root.is_empty() {
                return Err(section.error("root_dir", "must not be empty"));
            }
            storage.root_dir = PathBuf::from(root);
        }
        if let Some(sync) = section.boolean("sync_to_disk")? {
            storage.sync_to_disk = sync;
        }
        if let Some(value) = section.integer("max_upload_sessions", 1, 1_000_000)? {
            storage.max_upload_sessions = value as usize;
        }
        if let Some(value) = section.integer("max_upload_sessions_per_namespace", 1, 1_000_000)? {
            storage.max_upload_sessions_per_namespace = value as usize;
        }
        if let Some(value) = section.integer("upload_session_idle_secs", 1, 30 * 24 * 3600)? {
            storage.upload_session_idle_secs = value;
        }
        if let Some(size) = section.size("manifest_cache_size")? {
            if size > 1 << 30 {
                return Err(section.error("manifest_cache_size", "must be at most 1GiB"));
            }
            storage.manifest_cache_size = size as usize;
        }
        if let Some(size) = section.size("listing_index_size")? {
            if size > 1 << 30 {
                return Err(section.error("listing_index_size", "must be at most 1GiB"));
            }
            storage.listing_index_size = size as usize;
        }
        if let Some(setting) = min_free_space(&mut section)? {
            storage.min_free_space = setting;
        }
        section.finish(&mut self.warnings);
        Ok(())
    }

    fn apply_global(&mut self, file: &str, table: &toml::Table) -> Result<(), ConfigError> {
        let mut section = Section::new(file, "global", table);
        let global = &mut self.config.global;
        if let Some(size) = section.size("max_manifest_size")? {
            if size == 0 || size > 1024 * 1024 * 1024 {
                return Err(section.error("max_manifest_size", "must be between 1 byte and 1GiB"));
            }
            global.max_manifest_size = size;
        }
        if let Some(size) = section.size("max_blob_size")? {
            if size == 0 {
                return Err(section.error("max_blob_size", "must be greater than 0"));
            }
            global.max_blob_size = size;
        }
        if let Some(allow) = section.boolean("allow_missing_manifest_references")? {
            global.allow_missing_manifest_references = allow;
        }
        if let Some(secs) = section.integer("shutdown_drain_secs", 0, 24 * 3600)? {
            global.shutdown_drain_secs = secs;
        }
        let year_secs = 366 * 24 * 3600;
        if let Some(secs) = section.integer("gc_grace_secs", 0, year_secs)? {
            global.gc_grace_secs = secs;
        }
        if let Some(secs) = section.integer("gc_interval_secs", 0, year_secs)? {
            global.gc_interval_secs = secs;
        }
        if let Some(count) = section.integer("gc_after_deletes", 0, 1 << 40)? {
            global.gc_after_deletes = count;
        }
        if let Some(secs) = section.integer("scrub_interval_secs", 0, year_secs)? {
            global.scrub_interval_secs = secs;
        }
        if let Some(secs) = section.integer("prune_interval_secs", 0, year_secs)? {
            global.prune_interval_secs = secs;
        }
        if let Some(rate) = section.size("scrub_bytes_per_sec")? {
            if rate < 64 << 10 {
                return Err(section.error("scrub_bytes_per_sec", "must be at least 64KiB"));
            }
            global.scrub_bytes_per_sec = rate;
        }
        if let Some(length) = section.integer("event_webhook_queue_length", 1, 10_000_000)? {
            global.event_webhook_queue_length = length as usize;
        }
        if let Some(size) = section.size("event_webhook_journal_size")? {
            // Two segments at least, so the oldest can always be reclaimed.
            if size < 2 << 20 {
                return Err(section.error("event_webhook_journal_size", "must be at least 2MiB"));
            }
            global.event_webhook_journal_size = size;
        }
        if let Some(count) = section.integer("event_webhook_dead_letters", 0, 1_000_000)? {
            global.event_webhook_dead_letters = count as usize;
        }
        if let Some(names) = webhook::parse_name_list(&mut section, "event_webhooks")? {
            self.config.global.event_webhooks = names.clone();
            let origin = webhook::Origin {
                file: file.to_string(),
                key: "global.event_webhooks".into(),
            };
            self.lists = vec![(origin, names)];
        }
        auth::parse_access_lists(
            &mut section,
            &mut self.config.global.access,
            &mut self.auth_origins,
        )?;
        if let Some(update) = section.boolean("update_pull_time")? {
            self.config.global.update_pull_time = update;
        }
        if let Some(jobs) = section.integer("max_concurrent_cache_jobs", 1, 1024)? {
            self.config.global.max_concurrent_cache_jobs = jobs as usize;
        }
        self.config
            .global
            .immutable_tags
            .merge(lifecycle::parse_immutable_tags(&mut section)?);
        if let Some(rules) = lifecycle::parse_retention_policy(&mut section, &mut self.warnings)? {
            self.config.global.retention_rules = rules;
        }
        section.finish(&mut self.warnings);
        Ok(())
    }
}

impl Config {
    /// The `[repository."X"]` that owns `namespace`: the key equal to it or
    /// a path prefix of it (`production` owns `production/api`, not
    /// `productionx`). Keys do not nest (load refuses it), so at most one does;
    /// the longest is taken all the same.
    pub fn repository_for(&self, namespace: &str) -> Option<(&str, &RepositoryConfig)> {
        self.repositories
            .iter()
            .filter(|(key, _)| owns(key, namespace))
            .max_by_key(|(key, _)| key.len())
            .map(|(key, repository)| (key.as_str(), repository))
    }

    /// Whether a push may not move `tag` of `namespace` to another digest
    /// (`immutable_tags`, `immutable_tags_exclusions`; precedence in `lifecycle`).
    pub fn tag_is_immutable(&self, namespace: &str, tag: &str) -> bool {
        let repository = self
            .repository_for(namespace)
            .map(|(_, repository)| &repository.immutable_tags);
        ImmutableTags::resolve(&self.global.immutable_tags, repository, tag)
    }

    /// The retention rules that apply in `namespace`: the global ones and
    /// its repository's. A manifest is kept when any rule of either keeps
    /// it (upstream's "kept if either policy matches"). Both empty: the
    /// namespace has no retention policy, and nothing in it is pruned
    /// (upstream builds no policy from an empty list).
    pub fn retention_rules(&self, namespace: &str) -> RetentionRules<'_> {
        RetentionRules {
            global: &self.global.retention_rules,
            repository: self
                .repository_for(namespace)
                .map_or(&[], |(_, repository)| &repository.retention_rules),
        }
    }
}

/// The rules `Config::retention_rules` finds for one namespace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetentionRules<'a> {
    pub global: &'a [crate::retention::rule::Rule],
    pub repository: &'a [crate::retention::rule::Rule],
}

impl RetentionRules<'_> {
    /// No rule anywhere: the namespace is not subject to retention.
    pub fn is_empty(&self) -> bool {
        self.global.is_empty() && self.repository.is_empty()
    }

    /// Every rule, global ones first.
    pub fn iter(&self) -> impl Iterator<Item = &crate::retention::rule::Rule> {
        self.global.iter().chain(self.repository)
    }
}

/// Whether the `[repository."X"]` key `key` covers `namespace`: equal, or a
/// path prefix ending at a `/`.
pub fn owns(key: &str, namespace: &str) -> bool {
    namespace == key || (namespace.starts_with(key) && namespace.as_bytes().get(key.len()) == Some(&b'/'))
}

/// `min_free_space`: a size (`"512MiB"`, or an integer of bytes) or a
/// percentage of the disk (`"5%"`).
fn min_free_space(section: &mut Section) -> Result<Option<crate::storage::MinFreeSpace>, ConfigError> {
    const KEY: &str = "min_free_space";
    if let Some(toml::Value::String(text)) = section.table.get(KEY)
        && let Some(parsed) = crate::storage::MinFreeSpace::parse_percent(text)
    {
        section.seen.push(KEY);
        return parsed.map(Some).map_err(|why| section.error(KEY, why));
    }
    let size = section.size(KEY).map_err(|mut error| {
        error
            .message
            .push_str(", or a percentage of the disk such as \"5%\"");
        error
    })?;
    Ok(size.map(crate::storage::MinFreeSpace::Bytes))
}

/// Names of webhooks and identities: they appear in logs, metrics labels
/// and the admin API's paths, so plain characters only.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Parses `5MiB`, `100GiB`, `512KB`, `42` (bytes), `1.5GiB`. Binary (KiB,
/// MiB, GiB, TiB) and decimal (KB, MB, GB, TB) units; `B` or no unit is bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000 * 1000,
        "gb" => 1000 * 1000 * 1000,
        "tb" => 1000 * 1000 * 1000 * 1000,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "tib" | "t" => 1 << 40,
        _ => return None,
    };
    if number.is_empty() {
        return None;
    }
    if let Ok(whole) = number.parse::<u64>() {
        return whole.checked_mul(multiplier);
    }
    let fractional: f64 = number.parse().ok()?;
    let bytes = fractional * multiplier as f64;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// The files to load when no `-c` was given: `./config.toml` when it exists.
pub fn default_files() -> Vec<PathBuf> {
    let default = Path::new("config.toml");
    if default.exists() {
        vec![default.to_path_buf()]
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Loaded, ConfigError> {
        load_sources(&[("test.toml".to_string(), text.to_string())])
    }

    #[test]
    fn sizes_parse_in_binary_and_decimal_units() {
        assert_eq!(parse_size("5MiB"), Some(5 * 1024 * 1024));
        assert_eq!(parse_size("100GiB"), Some(100 << 30));
        assert_eq!(parse_size("512KB"), Some(512_000));
        assert_eq!(parse_size("42"), Some(42));
        assert_eq!(parse_size("1.5KiB"), Some(1536));
        assert_eq!(parse_size("5 MiB"), Some(5 << 20));
        assert_eq!(parse_size("MiB"), None);
        assert_eq!(parse_size("5XB"), None);
        assert_eq!(parse_size("99999999999999999999TiB"), None);
    }

    #[test]
    fn no_file_gives_the_built_in_defaults() {
        let loaded = load_sources(&[]).unwrap();
        assert_eq!(loaded.config, Config::default());
        assert_eq!(loaded.config.server.port, 8000);
        assert_eq!(loaded.config.storage.root_dir, PathBuf::from("./data"));
    }

    #[test]
    fn full_file_loads() {
        let loaded = load(
            r#"
            [server]
            bind_address = "0.0.0.0"
            port = 5000
            max_connections = 10
            [blob_store.fs]
            root_dir = "/var/lib/angos"
            sync_to_disk = true
            [global]
            max_manifest_size = "1MiB"
            max_blob_size = "1GiB"
            allow_missing_manifest_references = false
            "#,
        )
        .unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let config = loaded.config;
        assert!(!config.global.allow_missing_manifest_references);
        assert!(Config::default().global.allow_missing_manifest_references);
        assert_eq!(config.server.port, 5000);
        assert_eq!(config.server.max_connections, 10);
        assert!(config.storage.sync_to_disk);
        assert_eq!(config.global.max_manifest_size, 1 << 20);
        assert_eq!(config.global.max_blob_size, 1 << 30);
    }

    #[test]
    fn unknown_keys_warn_with_their_path() {
        let loaded = load("[global]\nmax_retires = 3\n[blob_store.fs]\nroot = \"x\"\n").unwrap();
        assert_eq!(
            loaded.warnings,
            vec![
                "test.toml: unknown key blob_store.fs.root ignored".to_string(),
                "test.toml: unknown key global.max_retires ignored".to_string(),
            ]
        );
    }

    #[test]
    fn errors_name_file_and_key() {
        let error = load("[server]\nport = 8000\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "test.toml: server.bind_address: is required when [server] is present"
        );
        let error = load("[global]\nmax_manifest_size = \"lots\"\n").unwrap_err();
        assert_eq!(error.key, "global.max_manifest_size");
        let error = load("[global]\nallow_missing_manifest_references = \"no\"\n").unwrap_err();
        assert_eq!(error.key, "global.allow_missing_manifest_references");
        let error = load("[server]\nbind_address = \"127.0.0.1\"\nport = 70000\n").unwrap_err();
        assert_eq!(error.key, "server.port");
        let error = load("[server\n").unwrap_err();
        assert!(
            error.to_string().starts_with("test.toml: invalid TOML"),
            "{error}"
        );
    }

    #[test]
    fn min_free_space_is_a_size_or_a_percentage() {
        use crate::storage::MinFreeSpace;
        assert_eq!(
            Config::default().storage.min_free_space,
            MinFreeSpace::Percent(1.0)
        );
        let setting = |value: &str| {
            load(&format!("[blob_store.fs]\nmin_free_space = {value}\n"))
                .map(|loaded| loaded.config.storage.min_free_space)
        };
        assert_eq!(setting("\"512MiB\""), Ok(MinFreeSpace::Bytes(512 << 20)));
        assert_eq!(setting("1048576"), Ok(MinFreeSpace::Bytes(1 << 20)));
        assert_eq!(setting("\"5%\""), Ok(MinFreeSpace::Percent(5.0)));
        assert_eq!(setting("0"), Ok(MinFreeSpace::Bytes(0)));
        for bad in ["\"100%\"", "\"lots\"", "true", "-1"] {
            let error = setting(bad).unwrap_err();
            assert_eq!(error.file, "test.toml", "{bad}");
            assert_eq!(error.key, "blob_store.fs.min_free_space", "{bad}");
        }
        assert!(
            setting("\"lots\"").unwrap_err().message.contains("\"5%\""),
            "the error shows both forms"
        );
        let loaded = load("[blob_store.fs]\nmin_free_space = \"5%\"\n").unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    }

    #[test]
    fn later_files_override_earlier_ones() {
        let loaded = load_sources(&[
            ("a.toml".into(), "[global]\nmax_blob_size = \"1GiB\"\n".into()),
            ("b.toml".into(), "[global]\nmax_blob_size = \"2GiB\"\n".into()),
        ])
        .unwrap();
        assert_eq!(loaded.config.global.max_blob_size, 2 << 30);
    }
}
