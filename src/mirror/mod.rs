//! The pull-through cache: repositories with `[[repository."X".upstream]]`
//! serve what they hold and fetch the rest from their upstream registries,
//! in order (fallback). Sans-IO: requests go out as `Outgoing` actions for
//! the reactor's outbound client (DNS, connect, TLS, keep-alive), answers
//! come back as `Answer`s with an explicit `now`; fetched manifests and
//! blobs are written through the registry (`registry::cached`), their
//! changes staged for the notifier like a client's (events with
//! `actor.internal = "cache"`).
//!
//! - A manifest miss is fetched (the client's `Accept`), verified, stored,
//!   then served from the store. A cached tag is checked with a HEAD (unless
//!   immutable, or checked within `cache_freshness_secs`); a moved tag is
//!   fetched again. With every upstream down, the cached copy is served.
//! - A blob miss is written into an upload session as the upstream sends
//!   it, and streamed to every client asking for it from that file
//!   (`fill::Fill`): one upstream fetch however many clients, no memory per
//!   reader. The digest is checked before the blob becomes visible. On a
//!   bucket the file is a local spool, pushed into the bucket once verified
//!   (`spool`); what waits on the bucket runs as the fetch's own holder,
//!   `(CACHE_SLOT, fetch)`, again when `bucket_woken` says so.
//! - Upstream authentication: anonymous, Basic, and the token handshake
//!   (`challenge`), tokens cached for their lifetime.

pub mod challenge;
pub mod fill;
mod spool;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;

use challenge::Challenge;
use fill::Fill;

use crate::config::upstream::{MirrorConfig, UpstreamConfig};
use crate::config::{Config, Scheme, WebhookUrl};
use crate::digest::{Digest, Hasher};
use crate::http::client::ResponseHead;
pub use crate::http::exchange::{Answer, ExchangeId, Outgoing, Target};
use crate::http::{Method, RequestHead, Response};
use crate::metrics::{FamilyId, Metrics};
use crate::registry::Registry;
use crate::registry::reference::Reference;
use crate::registry::route::Route;
use crate::storage::UploadWriter;

/// Manifest media types asked for when the client named none.
const ACCEPT_DEFAULT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";
/// Largest token endpoint answer read.
const TOKEN_BODY_MAX: usize = 64 * 1024;
/// Tags remembered as recently checked; past it the memory starts over.
const CHECKED_TAGS_MAX: usize = 100_000;
/// Errors kept per fetch for its final message.
const ERRORS_KEPT: usize = 4;
/// The slot of a fetch's own holder on the bucket, `(CACHE_SLOT, fetch)`:
/// not a connection (those number from 0), so the reactor hands its wake-ups
/// to `Mirror::bucket_woken`.
pub const CACHE_SLOT: usize = usize::MAX - 1;

/// What a held request learns once its fetch is decided.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Serve it from the store: filled, or still what the upstream has.
    Local,
    /// No upstream could say: the cached copy is served (offline).
    Offline(String),
    /// The blob is being filled: stream it as it is written.
    Streaming(Rc<Fill>),
    /// A blob HEAD the upstream answered: its size.
    Size(u64),
    /// Every upstream that answered said it does not exist.
    NotFound,
    /// No upstream could give it (the reasons).
    Unavailable(String),
}

/// The verdict a held request waits for (shared with the fetch).
#[derive(Debug, Default)]
pub struct Pending {
    verdict: RefCell<Option<Verdict>>,
}

impl Pending {
    pub fn verdict(&self) -> Option<Verdict> {
        self.verdict.borrow().clone()
    }
}

/// What `Mirror::intercept` decided for a request.
pub enum Intercept {
    /// Not the cache's business (or served from the store as is).
    Pass,
    /// Answer this (a write to a mirror, which is read-only).
    Refuse(Response),
    /// Hold the request until the verdict (the connection is woken).
    Wait(Rc<Pending>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Manifest(Reference),
    /// A cached tag's digest, checked with a HEAD.
    Check {
        tag: String,
        local: Digest,
    },
    Blob(Digest),
    BlobHead(Digest),
}

impl Kind {
    fn label(&self) -> &'static str {
        match self {
            Kind::Manifest(_) | Kind::Check { .. } => "manifest",
            Kind::Blob(_) | Kind::BlobHead(_) => "blob",
        }
    }

    fn key(&self) -> String {
        match self {
            Kind::Manifest(reference) => format!("m:{reference}"),
            Kind::Check { tag, .. } => format!("c:{tag}"),
            Kind::Blob(digest) => format!("b:{digest}"),
            Kind::BlobHead(digest) => format!("h:{digest}"),
        }
    }

    fn is_head(&self) -> bool {
        matches!(self, Kind::Check { .. } | Kind::BlobHead(_))
    }
}

/// A URL an attempt is at (after redirects).
#[derive(Debug, Clone)]
struct Location {
    scheme: Scheme,
    host: String,
    port: u16,
    path_and_query: String,
}

impl Location {
    fn host_header(&self) -> String {
        crate::config::host_header(self.scheme, &self.host, self.port)
    }

    fn same_origin(&self, other: &Location) -> bool {
        self.scheme == other.scheme && self.host == other.host && self.port == other.port
    }

    /// The target of a `Location` field seen at `self`: absolute, or an
    /// absolute path on the same origin.
    fn follow(&self, value: &str) -> Result<Location, String> {
        if value.starts_with('/') && !value.starts_with("//") {
            return Ok(Location {
                path_and_query: value.to_string(),
                ..self.clone()
            });
        }
        let url = WebhookUrl::parse(value).map_err(|why| format!("redirect to {value:?}: {why}"))?;
        Ok(Location {
            scheme: url.scheme,
            host: url.host,
            port: url.port,
            path_and_query: url.path_and_query,
        })
    }
}

/// The current try at one upstream.
#[derive(Debug)]
struct Attempt {
    location: Location,
    /// Credentials may go with the request: still at the upstream's origin.
    same_origin: bool,
    redirects: u8,
    authorization: Option<String>,
    tried_basic: bool,
    tried_token: bool,
    exchange: Option<ExchangeId>,
    /// The head of the main exchange arrived.
    answered: bool,
}

/// A blob being written.
struct Filling {
    sink: Sink,
    fill: Rc<Fill>,
}

/// Where a fill's bytes go.
enum Sink {
    /// On the filesystem: an upload session, committed once verified.
    Session {
        upload: String,
        /// Handed to the file thread to sync (`sync_to_disk`).
        synced: bool,
        /// `None` once handed to the registry to commit.
        writer: Option<UploadWriter>,
    },
    /// On a bucket: a local spool, pushed into the bucket once verified.
    Spool(Box<spool::Spool>),
}

/// A fetched manifest being stored (on a bucket, over several runs).
struct Storing {
    reference: Reference,
    media_type: String,
    body: Vec<u8>,
    /// When the first run began (`spool::Spool`'s `arrived_ms`).
    arrived_ms: u64,
}

struct Fetch {
    /// The local repository name (`X/rest`).
    name: String,
    /// `X`, the repository key.
    repository: String,
    /// Its configuration when the fetch started.
    mirror: Rc<MirrorConfig>,
    kind: Kind,
    accept: String,
    upstream: usize,
    attempt: Option<Attempt>,
    not_found: bool,
    errors: Vec<String>,
    pending: Rc<Pending>,
    /// Held requests (slot, generation) to continue once decided.
    waiters: Vec<(usize, u64)>,
    manifest: Vec<u8>,
    media_type: String,
    upstream_digest: Option<Digest>,
    filling: Option<Filling>,
    storing: Option<Storing>,
    /// The tag was cached when the fetch began (a `Check` that found it
    /// moved): with every upstream down, that copy is served.
    cached_tag: bool,
    /// The fill's answer is streaming: failures can no longer fall back.
    streaming: bool,
    /// Waiting for a fill slot (`max_concurrent_cache_jobs`).
    queued: bool,
}

/// Why an exchange was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Main,
    Token,
}

struct Exchange {
    fetch: u64,
    purpose: Purpose,
    deadline_ms: u64,
    /// Token exchanges: the body so far, and the status.
    body: Vec<u8>,
    status: u16,
    scope_key: String,
}

/// The last known health of one upstream.
#[derive(Debug, Clone, Default)]
struct Health {
    consecutive_failures: u32,
    last_error: Option<String>,
    last_success_unix: Option<u64>,
    last_failure_unix: Option<u64>,
    answered_once: bool,
}

struct Families {
    requests: FamilyId,
    upstream_errors: FamilyId,
    fetched_bytes: FamilyId,
    fills: FamilyId,
}

pub struct Mirror {
    /// Repositories that mirror, by key; a fetch keeps the one it started
    /// with, so a reload never strands it.
    repositories: BTreeMap<String, Rc<MirrorConfig>>,
    /// `namespace` values (containerd's `?ns=`) to repository keys.
    namespaces: HashMap<String, String>,
    fill_slots: usize,
    fetches: BTreeMap<u64, Fetch>,
    by_key: HashMap<(String, String), u64>,
    exchanges: HashMap<ExchangeId, Exchange>,
    next_id: u64,
    outgoing: VecDeque<Outgoing>,
    /// Held requests to continue.
    woken: Vec<(usize, u64)>,
    /// Fill data files to sync before their commit (fetch, path).
    syncs: Vec<(u64, PathBuf)>,
    /// Streaming readers to run again.
    readers: Vec<(usize, u64)>,
    /// Fetches whose change waits for the notifier (staged), by id.
    staged: VecDeque<(u64, crate::registry::Outcome)>,
    /// Fills pushing a spool into the bucket with more to push next turn.
    pushing: Vec<u64>,
    /// Blob fills running, and those waiting for a slot.
    fills_running: usize,
    fill_queue: VecDeque<u64>,
    /// Tokens by (repository, upstream index, scope): value and expiry (ms).
    tokens: HashMap<String, (String, u64)>,
    /// The last challenge of each (repository, upstream index).
    challenges: HashMap<(String, usize), Challenge>,
    health: BTreeMap<(String, usize), Health>,
    /// (name, tag) to when the upstream last confirmed it (ms).
    checked: HashMap<(String, String), u64>,
    now_ms: u64,
    unix_secs: u64,
    families: Families,
}

impl Mirror {
    pub fn new(config: &Config, metrics: &mut Metrics) -> Mirror {
        let families = Families {
            requests: metrics.counter(
                "cache_requests_total",
                "Pull-through cache lookups by kind and result (hit, miss, refreshed, offline).",
                &["kind", "result"],
            ),
            upstream_errors: metrics.counter(
                "cache_upstream_errors_total",
                "Failed exchanges with upstream registries, by repository.",
                &["repository"],
            ),
            fetched_bytes: metrics.counter(
                "cache_fetched_bytes_total",
                "Bytes of manifests and blobs fetched from upstream registries.",
                &[],
            ),
            fills: metrics.gauge(
                "cache_fills_in_progress",
                "Upstream fetches of the pull-through cache in progress.",
                &[],
            ),
        };
        let mut mirror = Mirror {
            repositories: BTreeMap::new(),
            namespaces: HashMap::new(),
            fill_slots: config.global.max_concurrent_cache_jobs,
            fetches: BTreeMap::new(),
            by_key: HashMap::new(),
            exchanges: HashMap::new(),
            next_id: 1,
            outgoing: VecDeque::new(),
            woken: Vec::new(),
            syncs: Vec::new(),
            readers: Vec::new(),
            staged: VecDeque::new(),
            pushing: Vec::new(),
            fills_running: 0,
            fill_queue: VecDeque::new(),
            tokens: HashMap::new(),
            challenges: HashMap::new(),
            health: BTreeMap::new(),
            checked: HashMap::new(),
            now_ms: 0,
            unix_secs: 0,
            families,
        };
        mirror.reconfigure(config);
        mirror
    }

    /// A reloaded configuration: new fetches use it; running ones finish
    /// with the upstream they have.
    pub fn reconfigure(&mut self, config: &Config) {
        self.repositories = config
            .repositories
            .iter()
            .filter(|(_, repository)| repository.mirror.is_mirror())
            .map(|(key, repository)| (key.clone(), Rc::new(repository.mirror.clone())))
            .collect();
        self.namespaces = self
            .repositories
            .iter()
            .filter_map(|(key, mirror)| mirror.namespace.clone().map(|namespace| (namespace, key.clone())))
            .collect();
        self.fill_slots = config.global.max_concurrent_cache_jobs;
        self.health.retain(|(key, index), _| {
            self.repositories
                .get(key)
                .is_some_and(|mirror| *index < mirror.upstreams.len())
        });
        self.tokens.clear();
        self.challenges.clear();
    }

    pub fn is_enabled(&self) -> bool {
        !self.repositories.is_empty()
    }

    pub fn set_time(&mut self, now_ms: u64, unix_secs: u64) {
        self.now_ms = now_ms;
        self.unix_secs = unix_secs;
    }

    /// containerd's mirror parameter: `/v2/<name>/...?ns=docker.io` is
    /// `/v2/X/<name>/...` when repository X has `namespace = "docker.io"`.
    pub fn rewrite_namespace(&self, head: &mut RequestHead) {
        if self.namespaces.is_empty() || !head.path.starts_with("/v2/") {
            return;
        }
        let Some(ns) = head.query_values("ns").next() else {
            return;
        };
        let Some(key) = self.namespaces.get(&ns.to_ascii_lowercase()) else {
            return;
        };
        let rest = &head.path["/v2/".len()..];
        if rest.is_empty() || rest.starts_with('_') || rest == "token" {
            return;
        }
        head.path = format!("/v2/{key}/{rest}");
    }

    /// The mirroring repository owning `name`: its key and configuration.
    fn repository_of(&self, name: &str) -> Option<(&String, &Rc<MirrorConfig>)> {
        self.repositories.iter().find(|(key, _)| {
            name.len() > key.len() && name.starts_with(key.as_str()) && name.as_bytes()[key.len()] == b'/'
                || name == key.as_str()
        })
    }

    /// Decides what the cache does with an authorized request; `waiter`
    /// is its connection, woken when a fetch it waits for is decided.
    #[allow(clippy::too_many_arguments)]
    pub fn intercept(
        &mut self,
        head: &RequestHead,
        route: &Route,
        registry: &Registry,
        immutable: &dyn Fn(&str, &str) -> bool,
        waiter: (usize, u64),
        metrics: &mut Metrics,
        now_ms: u64,
    ) -> Intercept {
        if self.repositories.is_empty() {
            return Intercept::Pass;
        }
        let name = match route {
            Route::Manifest { name, .. }
            | Route::Blob { name, .. }
            | Route::UploadStart { name }
            | Route::Upload { name, .. } => name,
            _ => return Intercept::Pass,
        };
        let Some((repository, mirror)) = self.repository_of(name) else {
            return Intercept::Pass;
        };
        let (repository, mirror) = (repository.clone(), mirror.clone());
        let reading = matches!(head.method, Method::Get | Method::Head);
        if !reading || matches!(route, Route::UploadStart { .. } | Route::Upload { .. }) {
            return Intercept::Refuse(read_only(&repository));
        }
        let storage = registry.storage();
        let kind = match route {
            Route::Manifest { reference, .. } => {
                let Ok(reference) = Reference::parse(reference) else {
                    return Intercept::Pass; // The registry answers the bad reference.
                };
                match &reference {
                    Reference::Digest(digest) => match storage.manifest(name, digest) {
                        Ok(Some(_)) => {
                            self.count(metrics, "manifest", "hit");
                            return Intercept::Pass;
                        }
                        Ok(None) => Kind::Manifest(reference),
                        Err(_) => return Intercept::Pass,
                    },
                    Reference::Tag(tag) => match storage.tag(name, tag) {
                        Ok(Some(local)) => {
                            let fresh = mirror.freshness_secs * 1000;
                            let recent = self
                                .checked
                                .get(&(name.clone(), tag.clone()))
                                .is_some_and(|at| now_ms < at.saturating_add(fresh));
                            if immutable(name, tag) || recent {
                                self.count(metrics, "manifest", "hit");
                                return Intercept::Pass;
                            }
                            Kind::Check {
                                tag: tag.clone(),
                                local,
                            }
                        }
                        Ok(None) => Kind::Manifest(reference),
                        Err(_) => return Intercept::Pass,
                    },
                }
            }
            Route::Blob { digest, .. } => {
                let Ok(digest) = Digest::parse(digest) else {
                    return Intercept::Pass;
                };
                match storage.blob_size(name, &digest) {
                    Ok(Some(_)) => {
                        self.count(metrics, "blob", "hit");
                        return Intercept::Pass;
                    }
                    Ok(None) if head.method == Method::Head => Kind::BlobHead(digest),
                    Ok(None) => Kind::Blob(digest),
                    Err(_) => return Intercept::Pass,
                }
            }
            _ => return Intercept::Pass,
        };
        if !matches!(kind, Kind::Check { .. }) {
            self.count(metrics, kind.label(), "miss");
        }
        let key = (name.clone(), kind.key());
        if let Some(id) = self.by_key.get(&key).copied()
            && let Some(fetch) = self.fetches.get_mut(&id)
        {
            // Coalesced: one upstream fetch for every request wanting it.
            if let Some(verdict) = fetch.pending.verdict() {
                // Already streaming: join at once.
                if matches!(verdict, Verdict::Streaming(_)) {
                    self.woken.push(waiter);
                }
            } else {
                fetch.waiters.push(waiter);
            }
            return Intercept::Wait(fetch.pending.clone());
        }
        let accept = match head.header("accept") {
            Some(accept) if !accept.trim().is_empty() && accept.bytes().all(|b| b >= b' ' && b != 0x7f) => {
                accept.to_string()
            }
            _ => ACCEPT_DEFAULT.to_string(),
        };
        let id = self.next_id;
        self.next_id += 1;
        let pending = Rc::new(Pending::default());
        let cached_tag = matches!(kind, Kind::Check { .. });
        let fetch = Fetch {
            name: name.clone(),
            repository,
            mirror,
            kind,
            accept,
            upstream: 0,
            attempt: None,
            not_found: false,
            errors: Vec::new(),
            pending: pending.clone(),
            waiters: vec![waiter],
            manifest: Vec::new(),
            media_type: String::new(),
            upstream_digest: None,
            filling: None,
            storing: None,
            cached_tag,
            streaming: false,
            queued: false,
        };
        let is_fill = matches!(fetch.kind, Kind::Blob(_));
        self.fetches.insert(id, fetch);
        self.by_key.insert(key, id);
        if is_fill && self.fills_running >= self.fill_slots {
            if let Some(fetch) = self.fetches.get_mut(&id) {
                fetch.queued = true;
            }
            self.fill_queue.push_back(id);
        } else {
            if is_fill {
                self.fills_running += 1;
            }
            self.begin_upstream(id, now_ms);
        }
        self.record_fills(metrics);
        Intercept::Wait(pending)
    }

    fn count(&self, metrics: &mut Metrics, kind: &str, result: &str) {
        let series = metrics.series(self.families.requests, &[kind, result]);
        metrics.inc(series);
    }

    fn record_fills(&self, metrics: &mut Metrics) {
        let series = metrics.series(self.families.fills, &[]);
        metrics.set(series, self.fetches.len() as f64);
    }

    // ---- the reactor's side ------------------------------------------------

    pub fn poll_outgoing(&mut self) -> Option<Outgoing> {
        self.outgoing.pop_front()
    }

    /// A change the cache made, staged because webhooks want its events:
    /// submit it through the notifier and report with `stored`.
    pub fn poll_staged(&mut self) -> Option<(u64, crate::registry::Outcome)> {
        self.staged.pop_front()
    }

    /// Held requests whose fetch is decided: continue them.
    pub fn take_woken(&mut self) -> Vec<(usize, u64)> {
        std::mem::take(&mut self.woken)
    }

    /// Connections streaming a fill that wrote more (or ended): run them.
    pub fn take_readers(&mut self) -> Vec<(usize, u64)> {
        std::mem::take(&mut self.readers)
    }

    pub fn poll_timeout(&self) -> Option<u64> {
        self.exchanges.values().map(|exchange| exchange.deadline_ms).min()
    }

    pub fn has_work(&self) -> bool {
        !self.outgoing.is_empty()
            || !self.pushing.is_empty()
            || !self.woken.is_empty()
            || !self.readers.is_empty()
            || !self.staged.is_empty()
            || !self.syncs.is_empty()
    }

    /// Exchanges past their deadline fail (and their connections close).
    pub fn handle_timeout(&mut self, registry: &mut Registry, metrics: &mut Metrics, now_ms: u64) {
        let expired: Vec<ExchangeId> = self
            .exchanges
            .iter()
            .filter(|(_, exchange)| exchange.deadline_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.outgoing.push_back(Outgoing::Cancel { exchange: id });
            self.handle_answer(id, Answer::Failed("timed out".into()), registry, metrics, now_ms);
        }
    }

    /// A piece of an exchange's answer.
    pub fn handle_answer(
        &mut self,
        exchange: ExchangeId,
        answer: Answer,
        registry: &mut Registry,
        metrics: &mut Metrics,
        now_ms: u64,
    ) {
        let Some(entry) = self.exchanges.get(&exchange) else {
            return; // Cancelled: what still arrives is nobody's.
        };
        let fetch_id = entry.fetch;
        let purpose = entry.purpose;
        let Some(fetch) = self.fetches.get(&fetch_id) else {
            self.exchanges.remove(&exchange);
            return;
        };
        let read_timeout = fetch
            .mirror
            .upstreams
            .get(fetch.upstream)
            .map_or(30_000, |config| config.read_timeout_ms);
        if let Some(entry) = self.exchanges.get_mut(&exchange) {
            entry.deadline_ms = now_ms + read_timeout;
        }
        if purpose == Purpose::Token {
            self.token_answer(exchange, answer, registry, metrics, now_ms);
            return;
        }
        match answer {
            Answer::Head(head) => self.main_head(fetch_id, exchange, head, registry, metrics, now_ms),
            Answer::Body(data) => self.main_body(fetch_id, exchange, &data, registry, metrics, now_ms),
            Answer::End => {
                self.exchanges.remove(&exchange);
                self.main_end(fetch_id, registry, metrics, now_ms);
            }
            Answer::Failed(reason) => {
                self.exchanges.remove(&exchange);
                let streaming = self.fetches.get(&fetch_id).is_some_and(|fetch| fetch.streaming);
                self.upstream_failed(fetch_id, reason, true, metrics);
                if streaming {
                    self.finish(fetch_id, None, registry, metrics);
                } else {
                    self.next_upstream(fetch_id, registry, metrics, now_ms);
                }
            }
        }
    }

    /// The notifier made (or refused) a staged change of fetch `id`.
    pub fn stored(&mut self, id: u64, ok: bool, registry: &mut Registry, metrics: &mut Metrics) {
        let verdict = if ok {
            Verdict::Local
        } else {
            Verdict::Unavailable("the cached copy could not be stored".into())
        };
        self.finish(id, Some(verdict), registry, metrics);
    }

    // ---- one fetch ---------------------------------------------------------

    /// The upstream fetch `id` is at.
    fn upstream_config(&self, id: u64) -> Option<&UpstreamConfig> {
        let fetch = self.fetches.get(&id)?;
        fetch.mirror.upstreams.get(fetch.upstream)
    }

    /// The upstream's name for local `name` of `repository`.
    fn upstream_name(config: &UpstreamConfig, repository: &str, name: &str) -> String {
        let rest = name
            .strip_prefix(repository)
            .map(|rest| rest.trim_start_matches('/'))
            .unwrap_or(name);
        match (config.prefix.is_empty(), rest.is_empty()) {
            (true, _) => rest.to_string(),
            (false, true) => config.prefix.clone(),
            (false, false) => format!("{}/{rest}", config.prefix),
        }
    }

    /// Starts (or restarts) the fetch at its current upstream.
    fn begin_upstream(&mut self, id: u64, now_ms: u64) {
        let Some(fetch) = self.fetches.get(&id) else {
            return;
        };
        let Some(config) = fetch.mirror.upstreams.get(fetch.upstream) else {
            return;
        };
        let upstream_name = Self::upstream_name(config, &fetch.repository, &fetch.name);
        let path = match &fetch.kind {
            Kind::Manifest(reference) => format!("/v2/{upstream_name}/manifests/{reference}"),
            Kind::Check { tag, .. } => format!("/v2/{upstream_name}/manifests/{tag}"),
            Kind::Blob(digest) | Kind::BlobHead(digest) => format!("/v2/{upstream_name}/blobs/{digest}"),
        };
        let location = Location {
            scheme: config.url.scheme,
            host: config.url.host.clone(),
            port: config.url.port,
            path_and_query: path,
        };
        let scope = format!("repository:{upstream_name}:pull");
        let key = (fetch.repository.clone(), fetch.upstream);
        let token_key = format!("{}\u{0}{}\u{0}{scope}", key.0, key.1);
        let authorization = match self.tokens.get(&token_key) {
            Some((token, expires)) if *expires > now_ms => Some(format!("Bearer {token}")),
            _ => match (self.challenges.get(&key), &config.username, &config.password) {
                (Some(Challenge::Basic), Some(user), Some(password)) => Some(basic(user, password)),
                _ => None,
            },
        };
        let tried_basic = authorization
            .as_deref()
            .is_some_and(|value| value.starts_with("Basic"));
        let attempt = Attempt {
            location,
            same_origin: true,
            redirects: 0,
            authorization,
            tried_basic,
            tried_token: false,
            exchange: None,
            answered: false,
        };
        if let Some(fetch) = self.fetches.get_mut(&id) {
            fetch.attempt = Some(attempt);
        }
        // A known Bearer challenge without a token: ask for the token first.
        if let Some(Challenge::Bearer { realm, service, .. }) = self.challenges.get(&key).cloned()
            && self
                .tokens
                .get(&token_key)
                .is_none_or(|(_, expires)| *expires <= now_ms)
            && self
                .request_token(id, &realm, service.as_deref(), &scope, now_ms)
                .is_ok()
        {
            return;
        }
        self.send_main(id, now_ms);
    }

    /// Sends the fetch's request as its attempt stands.
    fn send_main(&mut self, id: u64, now_ms: u64) {
        let Some(fetch) = self.fetches.get(&id) else {
            return;
        };
        let Some(config) = fetch.mirror.upstreams.get(fetch.upstream) else {
            return;
        };
        let Some(attempt) = &fetch.attempt else {
            return;
        };
        let head_request = fetch.kind.is_head();
        let method = if head_request { "HEAD" } else { "GET" };
        let mut headers: Vec<(&str, &str)> = vec![("User-Agent", "angos")];
        if matches!(fetch.kind, Kind::Manifest(_) | Kind::Check { .. }) {
            headers.push(("Accept", &fetch.accept));
        }
        if attempt.same_origin
            && let Some(authorization) = &attempt.authorization
        {
            headers.push(("Authorization", authorization));
        }
        let mut request = Vec::new();
        crate::http::client::write_request(
            &mut request,
            method,
            &attempt.location.path_and_query,
            &attempt.location.host_header(),
            &headers,
            b"",
        );
        let target = self.target_for(config, &attempt.location, attempt.same_origin);
        let deadline_ms = now_ms + config.connect_timeout_ms + config.read_timeout_ms;
        let exchange = self.new_exchange(id, Purpose::Main, deadline_ms, String::new());
        if let Some(attempt) = self.fetches.get_mut(&id).and_then(|fetch| fetch.attempt.as_mut()) {
            attempt.exchange = Some(exchange);
            attempt.answered = false;
        }
        self.outgoing.push_back(Outgoing::Send {
            body: std::rc::Rc::default(),
            exchange,
            target,
            request,
            head_request,
        });
    }

    fn target_for(&self, config: &UpstreamConfig, location: &Location, same_origin: bool) -> Target {
        Target {
            scheme: location.scheme,
            host: location.host.clone(),
            port: location.port,
            // The bundle only adds trust anchors (to the public roots), so
            // another host (an object store, a token service) on the same
            // private CA is reached too; the client certificate is an
            // identity and stays with the upstream's origin.
            ca_bundle: config.ca_bundle.clone(),
            client_identity: config.client_identity.clone().filter(|_| same_origin),
        }
    }

    fn new_exchange(
        &mut self,
        fetch: u64,
        purpose: Purpose,
        deadline_ms: u64,
        scope_key: String,
    ) -> ExchangeId {
        let id = self.next_id;
        self.next_id += 1;
        self.exchanges.insert(
            id,
            Exchange {
                fetch,
                purpose,
                deadline_ms,
                body: Vec::new(),
                status: 0,
                scope_key,
            },
        );
        id
    }

    /// Asks the token endpoint for a pull token, with the upstream's
    /// credentials when it has some.
    fn request_token(
        &mut self,
        id: u64,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        now_ms: u64,
    ) -> Result<(), String> {
        let Some(fetch) = self.fetches.get(&id) else {
            return Ok(());
        };
        let Some(config) = fetch.mirror.upstreams.get(fetch.upstream) else {
            return Ok(());
        };
        let token_key = format!("{}\u{0}{}\u{0}{scope}", fetch.repository, fetch.upstream);
        let realm_location = match WebhookUrl::parse(realm) {
            Ok(url) => Location {
                scheme: url.scheme,
                host: url.host,
                port: url.port,
                path_and_query: url.path_and_query,
            },
            Err(why) => return Err(format!("token realm {realm:?}: {why}")),
        };
        let mut query = format!("scope={}", challenge::query_escape(scope));
        if let Some(service) = service {
            query = format!("service={}&{query}", challenge::query_escape(service));
        }
        let separator = if realm_location.path_and_query.contains('?') {
            '&'
        } else {
            '?'
        };
        let path = format!("{}{separator}{query}", realm_location.path_and_query);
        let credentials = config
            .username
            .as_ref()
            .zip(config.password.as_ref())
            .map(|(user, password)| basic(user, password));
        let mut headers: Vec<(&str, &str)> = vec![("User-Agent", "angos"), ("Accept", "application/json")];
        if let Some(credentials) = &credentials {
            headers.push(("Authorization", credentials));
        }
        let mut request = Vec::new();
        crate::http::client::write_request(
            &mut request,
            "GET",
            &path,
            &realm_location.host_header(),
            &headers,
            b"",
        );
        // The realm is trusted like the upstream when it is the upstream's host.
        let upstream_location = Location {
            scheme: config.url.scheme,
            host: config.url.host.clone(),
            port: config.url.port,
            path_and_query: String::new(),
        };
        let same = realm_location.same_origin(&upstream_location);
        let target = self.target_for(config, &realm_location, same);
        let deadline_ms = now_ms + config.connect_timeout_ms + config.read_timeout_ms;
        let exchange = self.new_exchange(id, Purpose::Token, deadline_ms, token_key);
        if let Some(attempt) = self.fetches.get_mut(&id).and_then(|fetch| fetch.attempt.as_mut()) {
            attempt.tried_token = true;
        }
        self.outgoing.push_back(Outgoing::Send {
            body: std::rc::Rc::default(),
            exchange,
            target,
            request,
            head_request: false,
        });
        Ok(())
    }

    fn token_answer(
        &mut self,
        exchange: ExchangeId,
        answer: Answer,
        registry: &mut Registry,
        metrics: &mut Metrics,
        now_ms: u64,
    ) {
        let Some(entry) = self.exchanges.get_mut(&exchange) else {
            return;
        };
        let fetch = entry.fetch;
        match answer {
            Answer::Head(head) => entry.status = head.status,
            Answer::Body(data) => {
                if entry.body.len() + data.len() > TOKEN_BODY_MAX {
                    self.exchanges.remove(&exchange);
                    self.outgoing.push_back(Outgoing::Cancel { exchange });
                    self.upstream_failed(fetch, "token answer too large".into(), true, metrics);
                    self.next_upstream(fetch, registry, metrics, now_ms);
                    return;
                }
                entry.body.extend_from_slice(&data);
            }
            Answer::End => {
                let Some(entry) = self.exchanges.remove(&exchange) else {
                    return;
                };
                let parsed = if entry.status == 200 {
                    challenge::parse_token_response(&entry.body)
                } else {
                    Err(format!("token endpoint answered {}", entry.status))
                };
                match parsed {
                    Ok((token, lifetime_secs)) => {
                        // Renewed a little early: a token used at its last second fails.
                        let expires = now_ms + lifetime_secs.saturating_sub(5).max(1) * 1000;
                        self.tokens.insert(entry.scope_key, (token.clone(), expires));
                        if let Some(attempt) = self
                            .fetches
                            .get_mut(&fetch)
                            .and_then(|fetch| fetch.attempt.as_mut())
                        {
                            attempt.authorization = Some(format!("Bearer {token}"));
                        }
                        self.send_main(fetch, now_ms);
                    }
                    Err(reason) => {
                        self.upstream_failed(fetch, reason, false, metrics);
                        self.next_upstream(fetch, registry, metrics, now_ms);
                    }
                }
            }
            Answer::Failed(reason) => {
                self.exchanges.remove(&exchange);
                self.upstream_failed(fetch, format!("token endpoint: {reason}"), true, metrics);
                self.next_upstream(fetch, registry, metrics, now_ms);
            }
        }
    }

    fn main_head(
        &mut self,
        id: u64,
        exchange: ExchangeId,
        head: ResponseHead,
        registry: &mut Registry,
        metrics: &mut Metrics,
        now_ms: u64,
    ) {
        let Some(fetch) = self.fetches.get_mut(&id) else {
            return;
        };
        let Some(attempt) = fetch.attempt.as_mut() else {
            return;
        };
        attempt.answered = true;
        let status = head.status;
        let key = (fetch.repository.clone(), fetch.upstream);
        // Redirects: followed for GET and HEAD alike.
        if matches!(status, 301 | 302 | 303 | 307 | 308) {
            self.abandon(exchange);
            let Some(value) = head.field("location") else {
                self.upstream_failed(id, format!("{status} without a Location"), false, metrics);
                return self.next_upstream(id, registry, metrics, now_ms);
            };
            let max = self.upstream_config(id).map_or(0, |config| config.max_redirect);
            let Some(attempt) = self.fetches.get_mut(&id).and_then(|fetch| fetch.attempt.as_mut()) else {
                return;
            };
            if attempt.redirects >= max {
                let reason = format!("more than {max} redirects");
                self.upstream_failed(id, reason, false, metrics);
                return self.next_upstream(id, registry, metrics, now_ms);
            }
            match attempt.location.follow(value) {
                Ok(next) => {
                    // Credentials stay with the upstream's own origin.
                    attempt.same_origin = attempt.same_origin && attempt.location.same_origin(&next);
                    attempt.location = next;
                    attempt.redirects += 1;
                    self.send_main(id, now_ms);
                }
                Err(reason) => {
                    self.upstream_failed(id, reason, false, metrics);
                    self.next_upstream(id, registry, metrics, now_ms);
                }
            }
            return;
        }
        if status == 401 {
            self.abandon(exchange);
            let challenge = challenge::parse_challenges(head.fields_named("www-authenticate"));
            let config = self.upstream_config(id).cloned();
            let Some(fetch) = self.fetches.get_mut(&id) else {
                return;
            };
            let Some(attempt) = fetch.attempt.as_mut() else {
                return;
            };
            let same_origin = attempt.same_origin;
            match (challenge, config) {
                (
                    Some(Challenge::Bearer {
                        realm,
                        service,
                        scope,
                    }),
                    Some(config),
                ) if !attempt.tried_token && same_origin => {
                    let upstream_name = Self::upstream_name(&config, &fetch.repository, &fetch.name);
                    let scope = scope.unwrap_or_else(|| format!("repository:{upstream_name}:pull"));
                    self.challenges.insert(
                        key,
                        Challenge::Bearer {
                            realm: realm.clone(),
                            service: service.clone(),
                            scope: None,
                        },
                    );
                    if let Err(reason) = self.request_token(id, &realm, service.as_deref(), &scope, now_ms) {
                        self.upstream_failed(id, reason, false, metrics);
                        self.next_upstream(id, registry, metrics, now_ms);
                    }
                }
                (Some(Challenge::Basic), Some(config))
                    if !attempt.tried_basic && same_origin && config.username.is_some() =>
                {
                    attempt.tried_basic = true;
                    attempt.authorization = config
                        .username
                        .as_ref()
                        .zip(config.password.as_ref())
                        .map(|(user, password)| basic(user, password));
                    self.challenges.insert(key, Challenge::Basic);
                    self.send_main(id, now_ms);
                }
                _ => {
                    self.upstream_failed(id, "401 unauthorized".into(), false, metrics);
                    self.next_upstream(id, registry, metrics, now_ms);
                }
            }
            return;
        }
        if status == 404 {
            fetch.not_found = true;
            self.abandon(exchange);
            self.note_success(&key);
            return self.next_upstream(id, registry, metrics, now_ms);
        }
        if status != 200 {
            self.abandon(exchange);
            self.upstream_failed(id, format!("answered {status}"), true, metrics);
            return self.next_upstream(id, registry, metrics, now_ms);
        }
        self.note_success(&key);
        let Some(fetch) = self.fetches.get_mut(&id) else {
            return;
        };
        fetch.upstream_digest = head
            .field("docker-content-digest")
            .and_then(|value| Digest::parse(value).ok());
        fetch.media_type = head.field("content-type").unwrap_or_default().to_string();
        let limits = registry.limits();
        match fetch.kind.clone() {
            Kind::Manifest(_) => {
                if head
                    .content_length
                    .is_some_and(|length| length > limits.max_manifest_size)
                {
                    self.abandon(exchange);
                    let reason = format!(
                        "manifest larger than max_manifest_size ({})",
                        limits.max_manifest_size
                    );
                    self.upstream_failed(id, reason, false, metrics);
                    self.next_upstream(id, registry, metrics, now_ms);
                }
            }
            Kind::Check { tag, local } => {
                // The answer to a HEAD ends right after its head (`End`).
                if fetch.upstream_digest.as_ref() == Some(&local) {
                    let tag_key = (fetch.name.clone(), tag);
                    self.remember_checked(tag_key, now_ms);
                }
            }
            Kind::BlobHead(_) => {
                fetch.manifest = head.content_length.unwrap_or(0).to_le_bytes().to_vec();
            }
            Kind::Blob(digest) => {
                let Some(size) = head.content_length else {
                    self.abandon(exchange);
                    self.upstream_failed(id, "blob answer without Content-Length".into(), false, metrics);
                    return self.next_upstream(id, registry, metrics, now_ms);
                };
                if size > limits.max_blob_size {
                    self.abandon(exchange);
                    let reason = format!("blob larger than max_blob_size ({})", limits.max_blob_size);
                    self.upstream_failed(id, reason, false, metrics);
                    return self.next_upstream(id, registry, metrics, now_ms);
                }
                let started = if registry.storage().bucket().is_some() {
                    registry.start_spool(size).and_then(|file| {
                        let reader = file
                            .try_clone()
                            .map_err(|error| format!("opening the spool for readers: {error}"))?;
                        let spool = spool::Spool::new(file, size, &digest);
                        Ok((Sink::Spool(Box::new(spool)), reader))
                    })
                } else {
                    registry
                        .start_fill(&fetch.name, size)
                        .map(|(upload, writer, file)| {
                            let sink = Sink::Session {
                                upload,
                                synced: false,
                                writer: Some(writer),
                            };
                            (sink, file)
                        })
                };
                match started {
                    Ok((sink, file)) => {
                        let fill = Rc::new(Fill::new(file, size));
                        fetch.filling = Some(Filling {
                            sink,
                            fill: fill.clone(),
                        });
                        fetch.streaming = true;
                        *fetch.pending.verdict.borrow_mut() = Some(Verdict::Streaming(fill));
                        self.woken.append(&mut fetch.waiters);
                        log::info!(
                            target: "angos::mirror",
                            "filling {}@{digest} ({size} bytes) from upstream {}",
                            fetch.name,
                            fetch.upstream + 1
                        );
                    }
                    Err(reason) => {
                        self.abandon(exchange);
                        self.finish(id, Some(Verdict::Unavailable(reason)), registry, metrics);
                    }
                }
            }
        }
    }

    fn main_body(
        &mut self,
        id: u64,
        exchange: ExchangeId,
        data: &[u8],
        registry: &mut Registry,
        metrics: &mut Metrics,
        now_ms: u64,
    ) {
        let series = metrics.series(self.families.fetched_bytes, &[]);
        metrics.add(series, data.len() as u64);
        let max_manifest = registry.limits().max_manifest_size;
        let Some(fetch) = self.fetches.get_mut(&id) else {
            return;
        };
        match &fetch.kind {
            Kind::Manifest(_) => {
                if (fetch.manifest.len() + data.len()) as u64 > max_manifest {
                    self.abandon(exchange);
                    let reason = format!("manifest larger than max_manifest_size ({max_manifest})");
                    self.upstream_failed(id, reason, false, metrics);
                    self.next_upstream(id, registry, metrics, now_ms);
                    return;
                }
                fetch.manifest.extend_from_slice(data);
            }
            Kind::Blob(_) => {
                let Some(filling) = fetch.filling.as_mut() else {
                    return;
                };
                let written = match &mut filling.sink {
                    Sink::Session {
                        writer: Some(writer), ..
                    } => writer.write(data),
                    Sink::Session { writer: None, .. } => return,
                    Sink::Spool(spool) => spool.write(data),
                };
                if let Err(error) = written {
                    log::warn!(target: "angos::mirror", "writing the fill of {}: {error}", fetch.name);
                    self.abandon(exchange);
                    self.finish(id, None, registry, metrics);
                    return;
                }
                filling.fill.advance(data.len() as u64);
                self.readers.extend(filling.fill.take_waiters());
            }
            Kind::Check { .. } | Kind::BlobHead(_) => {}
        }
    }

    fn main_end(&mut self, id: u64, registry: &mut Registry, metrics: &mut Metrics, now_ms: u64) {
        let Some(fetch) = self.fetches.get_mut(&id) else {
            return;
        };
        match fetch.kind.clone() {
            Kind::Check { local, .. } => {
                if fetch.upstream_digest.as_ref() == Some(&local) {
                    self.count(metrics, "manifest", "hit");
                    return self.finish(id, Some(Verdict::Local), registry, metrics);
                }
                // Moved (or the upstream does not say): fetch the manifest.
                let Kind::Check { tag, .. } = &fetch.kind else {
                    return;
                };
                fetch.kind = Kind::Manifest(Reference::Tag(tag.clone()));
                self.count(metrics, "manifest", "refreshed");
                self.send_main(id, now_ms);
            }
            Kind::BlobHead(_) => {
                let size = fetch
                    .manifest
                    .as_slice()
                    .try_into()
                    .map(u64::from_le_bytes)
                    .unwrap_or(0);
                self.finish(id, Some(Verdict::Size(size)), registry, metrics);
            }
            Kind::Manifest(reference) => {
                let body = std::mem::take(&mut fetch.manifest);
                let actual = match &reference {
                    Reference::Digest(expected) => {
                        let mut hasher = Hasher::for_digest(expected);
                        hasher.update(&body);
                        hasher.digest()
                    }
                    Reference::Tag(_) => match &fetch.upstream_digest {
                        Some(announced) => {
                            let mut hasher = Hasher::for_digest(announced);
                            hasher.update(&body);
                            hasher.digest()
                        }
                        None => Digest::sha256_of(&body),
                    },
                };
                let expected = match &reference {
                    Reference::Digest(expected) => Some(expected.clone()),
                    Reference::Tag(_) => fetch.upstream_digest.clone(),
                };
                if expected.as_ref().is_some_and(|expected| *expected != actual) {
                    let reason = format!(
                        "manifest bytes do not match their digest {}",
                        expected.unwrap_or(actual)
                    );
                    self.upstream_failed(id, reason, false, metrics);
                    return self.next_upstream(id, registry, metrics, now_ms);
                }
                fetch.storing = Some(Storing {
                    reference,
                    media_type: fetch.media_type.clone(),
                    body,
                    arrived_ms: now_ms,
                });
                self.store_manifest(id, registry, metrics, now_ms);
            }
            Kind::Blob(digest) => {
                let Some(filling) = fetch.filling.as_mut() else {
                    return;
                };
                if filling.fill.written() != filling.fill.size {
                    self.upstream_failed(id, "the blob ended early".into(), true, metrics);
                    return self.finish(id, None, registry, metrics);
                }
                let (upload, synced) = match &mut filling.sink {
                    Sink::Session { upload, synced, .. } => (upload, synced),
                    Sink::Spool(spool) => {
                        if let Err(reason) = spool.verify(&digest, now_ms) {
                            let name = fetch.name.clone();
                            log::warn!(target: "angos::mirror", "not caching {name}@{digest}: {reason}");
                            self.upstream_failed(id, reason, false, metrics);
                            return self.finish(id, None, registry, metrics);
                        }
                        // Readers may have the last byte now; the bucket
                        // gets the spool behind them.
                        filling.fill.verify();
                        self.readers.extend(filling.fill.take_waiters());
                        return self.push_spool(id, registry, metrics, now_ms);
                    }
                };
                // With sync_to_disk the bytes reach the disk before the blob
                // is visible, synced by the file thread (its cost grows with
                // the size: never on the loop); `synced` continues here.
                if !*synced && let Some(path) = registry.storage().upload_to_sync(upload, Some(&digest)) {
                    *synced = true;
                    self.syncs.push((id, path));
                    return;
                }
                self.commit_blob(id, registry, metrics);
            }
        }
    }

    /// Stores a fetched manifest as the fetch's own holder; on a bucket a run
    /// may wait, and `bucket_woken` runs it again.
    fn store_manifest(&mut self, id: u64, registry: &mut Registry, metrics: &mut Metrics, now_ms: u64) {
        let Some(fetch) = self.fetches.get_mut(&id) else {
            return;
        };
        let Some(storing) = &fetch.storing else {
            return;
        };
        let name = fetch.name.clone();
        let holder = (CACHE_SLOT, id);
        registry.enter(holder, storing.arrived_ms);
        let stored = registry.cache_manifest(
            &name,
            &storing.reference,
            &storing.media_type,
            storing.body.clone(),
        );
        if registry.leave() {
            return;
        }
        registry.release(holder);
        let Some(Storing { reference, .. }) = fetch.storing.take() else {
            return;
        };
        match stored {
            Ok(outcome) if outcome.staged.is_some() => self.staged.push_back((id, outcome)),
            Ok(outcome) if outcome.response.status < 300 => {
                self.finish(id, Some(Verdict::Local), registry, metrics)
            }
            Ok(outcome) => {
                let reason = format!("storing it failed ({})", outcome.response.status);
                self.finish(id, Some(Verdict::Unavailable(reason)), registry, metrics);
            }
            Err(reason) => {
                self.upstream_failed(id, reason, false, metrics);
                self.next_upstream(id, registry, metrics, now_ms);
            }
        }
        if let Reference::Tag(tag) = reference {
            self.remember_checked((name, tag), now_ms);
        }
    }

    /// Pushes a verified spool into the bucket as far as it goes this turn.
    fn push_spool(&mut self, id: u64, registry: &mut Registry, metrics: &mut Metrics, now_ms: u64) {
        let Some(fetch) = self.fetches.get_mut(&id) else {
            return;
        };
        let Kind::Blob(digest) = &fetch.kind else {
            return;
        };
        let Some(Filling {
            sink: Sink::Spool(spool),
            ..
        }) = &mut fetch.filling
        else {
            return;
        };
        match spool.step(registry, &fetch.name, digest, (CACHE_SLOT, id), now_ms) {
            spool::Step::Wait => {}
            spool::Step::Again => {
                if !self.pushing.contains(&id) {
                    self.pushing.push(id);
                }
            }
            spool::Step::Done(outcome) if outcome.staged.is_some() => self.staged.push_back((id, *outcome)),
            spool::Step::Done(outcome) if outcome.response.status < 300 => {
                self.finish(id, Some(Verdict::Local), registry, metrics)
            }
            spool::Step::Done(outcome) => {
                let reason = format!("the bucket did not take it ({})", outcome.response.status);
                self.fill_not_stored(id, reason, registry, metrics);
            }
            spool::Step::Failed(reason) => self.fill_not_stored(id, reason, registry, metrics),
        }
    }

    fn fill_not_stored(&mut self, id: u64, reason: String, registry: &mut Registry, metrics: &mut Metrics) {
        if let Some(fetch) = self.fetches.get(&id) {
            log::warn!(target: "angos::mirror", "not caching a blob of {}: {reason}", fetch.name);
        }
        self.upstream_failed(id, reason, false, metrics);
        self.finish(id, None, registry, metrics);
    }

    /// The bucket answered what fetch `id`'s own holder waited for: its
    /// store or push goes on.
    pub fn bucket_woken(&mut self, id: u64, registry: &mut Registry, metrics: &mut Metrics, now_ms: u64) {
        let Some(fetch) = self.fetches.get(&id) else {
            return;
        };
        if fetch.storing.is_some() {
            self.store_manifest(id, registry, metrics, now_ms);
        } else if matches!(
            &fetch.filling,
            Some(Filling {
                sink: Sink::Spool(_),
                ..
            })
        ) {
            self.push_spool(id, registry, metrics, now_ms);
        }
    }

    /// One turn's share of every spool push with more to send.
    pub fn push_fills(&mut self, registry: &mut Registry, metrics: &mut Metrics, now_ms: u64) {
        for id in std::mem::take(&mut self.pushing) {
            self.push_spool(id, registry, metrics, now_ms);
        }
    }

    /// The file thread synced a fill's bytes: commit it.
    pub fn synced(&mut self, id: u64, registry: &mut Registry, metrics: &mut Metrics) {
        self.commit_blob(id, registry, metrics);
    }

    /// Fills whose bytes must be synced before they commit, each with its fetch.
    pub fn take_syncs(&mut self) -> Vec<(u64, PathBuf)> {
        std::mem::take(&mut self.syncs)
    }

    fn commit_blob(&mut self, id: u64, registry: &mut Registry, metrics: &mut Metrics) {
        let Some(fetch) = self.fetches.get_mut(&id) else {
            return;
        };
        let Kind::Blob(digest) = fetch.kind.clone() else {
            return;
        };
        let name = fetch.name.clone();
        let Some(filling) = fetch.filling.as_mut() else {
            return;
        };
        let Sink::Session { upload, writer, .. } = &mut filling.sink else {
            return;
        };
        let Some(writer) = writer.take() else {
            return;
        };
        let upload = std::mem::take(upload);
        let fill = filling.fill.clone();
        match registry.commit_fill(&name, &upload, writer, &digest) {
            Ok(outcome) => {
                fill.verify();
                self.readers.extend(fill.take_waiters());
                if outcome.staged.is_some() {
                    self.staged.push_back((id, outcome));
                } else {
                    self.finish(id, Some(Verdict::Local), registry, metrics);
                }
            }
            Err(reason) => {
                fill.fail();
                self.readers.extend(fill.take_waiters());
                log::warn!(target: "angos::mirror", "not caching {name}@{digest}: {reason}");
                self.upstream_failed(id, reason, false, metrics);
                self.finish(id, None, registry, metrics);
            }
        }
    }

    fn remember_checked(&mut self, tag: (String, String), now_ms: u64) {
        if self.checked.len() >= CHECKED_TAGS_MAX {
            self.checked.clear();
        }
        self.checked.insert(tag, now_ms);
    }

    /// Closes an exchange whose answer is not wanted any further.
    fn abandon(&mut self, exchange: ExchangeId) {
        if self.exchanges.remove(&exchange).is_some() {
            self.outgoing.push_back(Outgoing::Cancel { exchange });
        }
    }

    fn note_success(&mut self, key: &(String, usize)) {
        let health = self.health.entry(key.clone()).or_default();
        health.consecutive_failures = 0;
        health.last_success_unix = Some(self.unix_secs);
        health.answered_once = true;
    }

    /// Records why the current upstream failed; `unhealthy` when it says
    /// something about the upstream's health (a network error, a 5xx).
    fn upstream_failed(&mut self, id: u64, reason: String, unhealthy: bool, metrics: &mut Metrics) {
        let Some(fetch) = self.fetches.get_mut(&id) else {
            return;
        };
        let url = fetch
            .mirror
            .upstreams
            .get(fetch.upstream)
            .map(|config| config.url.text.clone())
            .unwrap_or_default();
        log::warn!(
            target: "angos::mirror",
            "upstream {url} for {}: {reason}",
            fetch.name
        );
        if fetch.errors.len() < ERRORS_KEPT {
            fetch.errors.push(format!("{url}: {reason}"));
        }
        let series = metrics.series(self.families.upstream_errors, &[&fetch.repository]);
        metrics.inc(series);
        let key = (fetch.repository.clone(), fetch.upstream);
        let health = self.health.entry(key).or_default();
        if unhealthy {
            health.consecutive_failures += 1;
            health.last_failure_unix = Some(self.unix_secs);
        }
        health.last_error = Some(reason);
    }

    /// Tries the next upstream, or decides the fetch when none is left.
    fn next_upstream(&mut self, id: u64, registry: &mut Registry, metrics: &mut Metrics, now_ms: u64) {
        let Some(fetch) = self.fetches.get_mut(&id) else {
            return;
        };
        if fetch.streaming {
            return self.finish(id, None, registry, metrics);
        }
        if let Some(exchange) = fetch.attempt.as_ref().and_then(|attempt| attempt.exchange)
            && self.exchanges.remove(&exchange).is_some()
        {
            self.outgoing.push_back(Outgoing::Cancel { exchange });
        }
        let Some(fetch) = self.fetches.get_mut(&id) else {
            return;
        };
        let count = fetch.mirror.upstreams.len();
        // A tag check that moved on to fetching starts over as a check.
        if fetch.upstream + 1 < count {
            fetch.upstream += 1;
            fetch.manifest.clear();
            return self.begin_upstream(id, now_ms);
        }
        // Known since the fetch began: a read here would be outside any
        // request on a bucket.
        let cached = fetch.cached_tag;
        let verdict = if cached && fetch.errors.is_empty() {
            Verdict::Offline("no upstream has it any more".into())
        } else if cached {
            Verdict::Offline(fetch.errors.join("; "))
        } else if fetch.errors.is_empty() {
            Verdict::NotFound
        } else {
            Verdict::Unavailable(fetch.errors.join("; "))
        };
        if cached {
            self.count(metrics, "manifest", "offline");
        }
        self.finish(id, Some(verdict), registry, metrics);
    }

    /// Decides a fetch: its waiters learn `verdict` (for a streaming fill,
    /// `None`: the fill failed, its readers' answers are cut short) and
    /// it is forgotten.
    fn finish(&mut self, id: u64, verdict: Option<Verdict>, registry: &mut Registry, metrics: &mut Metrics) {
        let Some(mut fetch) = self.fetches.remove(&id) else {
            return;
        };
        self.by_key.remove(&(fetch.name.clone(), fetch.kind.key()));
        if let Some(exchange) = fetch.attempt.as_ref().and_then(|attempt| attempt.exchange) {
            self.abandon(exchange);
        }
        self.exchanges.retain(|_, exchange| exchange.fetch != id);
        if let Some(filling) = fetch.filling.take() {
            let ok = matches!(verdict, Some(Verdict::Local));
            if !ok {
                // A verified spool stays whole for its readers even when the
                // bucket did not take it.
                if !filling.fill.is_verified() {
                    filling.fill.fail();
                }
                match filling.sink {
                    Sink::Session { upload, writer, .. } if !upload.is_empty() => {
                        registry.cancel_fill(&fetch.name, &upload, writer)
                    }
                    Sink::Session { .. } => {}
                    Sink::Spool(mut spool) => spool.abandon(registry, (CACHE_SLOT, id), self.now_ms),
                }
            }
            self.readers.extend(filling.fill.take_waiters());
        }
        if fetch.storing.is_some() {
            // A manifest's store that waited on the bucket is given up.
            registry.release((CACHE_SLOT, id));
        }
        self.pushing.retain(|pushing| *pushing != id);
        let verdict = verdict.unwrap_or_else(|| Verdict::Unavailable(fetch.errors.join("; ")));
        if let Verdict::Offline(reason) = &verdict {
            log::warn!(
                target: "angos::mirror",
                "offline: serving the cached manifest of {} unchecked: {reason}",
                fetch.name
            );
        }
        if !fetch.streaming {
            *fetch.pending.verdict.borrow_mut() = Some(verdict);
        }
        self.woken.append(&mut fetch.waiters);
        if matches!(fetch.kind, Kind::Blob(_)) && !fetch.queued {
            self.fills_running = self.fills_running.saturating_sub(1);
            if let Some(next) = self.fill_queue.pop_front() {
                if let Some(fetch) = self.fetches.get_mut(&next) {
                    fetch.queued = false;
                }
                self.fills_running += 1;
                self.begin_upstream(next, self.now_ms);
            }
        }
        self.record_fills(metrics);
    }

    /// The admin API's view: every upstream and its last known health.
    pub fn status_json(&self) -> serde_json::Value {
        let mut upstreams = Vec::new();
        for (key, mirror) in &self.repositories {
            for (index, upstream) in mirror.upstreams.iter().enumerate() {
                let health = self
                    .health
                    .get(&(key.clone(), index))
                    .cloned()
                    .unwrap_or_default();
                let state = if health.consecutive_failures > 0 {
                    "down"
                } else if health.answered_once {
                    "up"
                } else {
                    "unknown"
                };
                upstreams.push(serde_json::json!({
                    "repository": key,
                    "url": upstream.url.text,
                    "namespace": mirror.namespace,
                    "state": state,
                    "consecutive_failures": health.consecutive_failures,
                    "last_error": health.last_error,
                    "last_success_unix": health.last_success_unix,
                    "last_failure_unix": health.last_failure_unix,
                }));
            }
        }
        serde_json::json!({ "upstreams": upstreams, "fills_in_progress": self.fetches.len() })
    }
}

/// The answer to a write into a mirror: upstream Angos's 401.
fn read_only(repository: &str) -> Response {
    crate::registry::error::RegistryError::new(
        crate::http::oci_error::ErrorCode::Unauthorized,
        format!("repository {repository:?} is a pull-through cache of upstream registries: it is read-only"),
    )
    .into_response()
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        crate::base64::encode_padded(format!("{user}:{password}").as_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Limits;
    use crate::storage::Storage;
    use crate::test_support::TempDir;

    const UPSTREAM: &str = "[repository.\"mirror\"]\nnamespace = \"docker.io\"\nEXTRA\n\
        [[repository.\"mirror\".upstream]]\nurl = \"http://10.0.0.1:5000\"\nusername = \"u\"\npassword = \"p\"\n\
        [[repository.\"mirror\".upstream]]\nurl = \"http://10.0.0.2/team\"\nread_timeout_secs = 2\nconnect_timeout_secs = 1\n";

    struct Rig {
        _dir: TempDir,
        registry: Registry,
        mirror: Mirror,
        metrics: Metrics,
        config: Config,
        now: u64,
    }

    impl Rig {
        fn new(extra: &str) -> Rig {
            let dir = TempDir::new("mirror");
            let text = UPSTREAM.replace("EXTRA", extra);
            let config = crate::config::load_sources(&[("test.toml".into(), text)])
                .unwrap()
                .config;
            let storage = Storage::open(dir.path(), false, 16).unwrap();
            let registry = Registry::new(storage, Limits::of(&config.global));
            let mut metrics = Metrics::new();
            let mirror = Mirror::new(&config, &mut metrics);
            Rig {
                _dir: dir,
                registry,
                mirror,
                metrics,
                config,
                now: 1_000,
            }
        }

        fn intercept(&mut self, request: &str, slot: usize) -> Intercept {
            let text = format!(
                "{request} HTTP/1.1\r\nHost: x\r\nAccept: application/vnd.oci.image.manifest.v1+json\r\n\r\n"
            );
            let mut head = crate::http::request::parse_head(text.as_bytes(), 1 << 14)
                .unwrap()
                .unwrap()
                .1;
            self.mirror.rewrite_namespace(&mut head);
            let route = crate::registry::route::route(&head.path);
            let config = &self.config;
            let immutable = |name: &str, tag: &str| config.tag_is_immutable(name, tag);
            self.mirror.intercept(
                &head,
                &route,
                &self.registry,
                &immutable,
                (slot, 1),
                &mut self.metrics,
                self.now,
            )
        }

        /// The next request sent: its exchange, host, and request text.
        fn sent(&mut self) -> (ExchangeId, String, String) {
            loop {
                match self.mirror.poll_outgoing().expect("a request goes out") {
                    Outgoing::Send {
                        exchange,
                        target,
                        request,
                        ..
                    } => {
                        return (
                            exchange,
                            format!("{}:{}", target.host, target.port),
                            String::from_utf8(request).unwrap(),
                        );
                    }
                    Outgoing::Cancel { .. } | Outgoing::Pause { .. } | Outgoing::Resume { .. } => continue,
                }
            }
        }

        fn answer(&mut self, exchange: ExchangeId, status: u16, fields: &[(&str, &str)], body: &[u8]) {
            let head = ResponseHead {
                status,
                fields: fields
                    .iter()
                    .map(|(name, value)| (name.to_string(), value.to_string()))
                    .collect(),
                content_length: Some(body.len() as u64),
            };
            self.mirror.handle_answer(
                exchange,
                Answer::Head(head),
                &mut self.registry,
                &mut self.metrics,
                self.now,
            );
            if !body.is_empty() {
                self.mirror.handle_answer(
                    exchange,
                    Answer::Body(body.to_vec()),
                    &mut self.registry,
                    &mut self.metrics,
                    self.now,
                );
            }
            self.mirror.handle_answer(
                exchange,
                Answer::End,
                &mut self.registry,
                &mut self.metrics,
                self.now,
            );
        }

        fn fail(&mut self, exchange: ExchangeId) {
            self.mirror.handle_answer(
                exchange,
                Answer::Failed("connection refused".into()),
                &mut self.registry,
                &mut self.metrics,
                self.now,
            );
        }
    }

    fn pending(intercept: Intercept) -> Rc<Pending> {
        match intercept {
            Intercept::Wait(pending) => pending,
            Intercept::Pass => panic!("passed"),
            Intercept::Refuse(response) => panic!("refused {}", response.status),
        }
    }

    fn image_manifest() -> Vec<u8> {
        let config = Digest::sha256_of(b"{}");
        format!(
            "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"{config}\",\"size\":2}},\"layers\":[]}}"
        )
        .into_bytes()
    }

    const MANIFEST_TYPE: (&str, &str) = ("content-type", "application/vnd.oci.image.manifest.v1+json");

    #[test]
    fn a_manifest_miss_is_fetched_with_the_clients_accept_stored_and_then_a_hit_by_digest() {
        let mut rig = Rig::new("");
        let pending = pending(rig.intercept("GET /v2/library/alpine/manifests/3.20?ns=docker.io", 7));
        let (exchange, host, request) = rig.sent();
        assert_eq!(host, "10.0.0.1:5000");
        assert!(
            request.starts_with("GET /v2/library/alpine/manifests/3.20 HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains("Accept: application/vnd.oci.image.manifest.v1+json\r\n"),
            "{request}"
        );
        let body = image_manifest();
        let digest = Digest::sha256_of(&body);
        rig.answer(
            exchange,
            200,
            &[MANIFEST_TYPE, ("docker-content-digest", &digest.to_string())],
            &body,
        );
        assert!(matches!(pending.verdict(), Some(Verdict::Local)));
        assert_eq!(rig.mirror.take_woken(), vec![(7, 1)]);
        let storage = rig.registry.storage();
        assert_eq!(
            storage.tag("mirror/library/alpine", "3.20").unwrap(),
            Some(digest.clone())
        );
        assert!(matches!(
            rig.intercept(&format!("GET /v2/mirror/library/alpine/manifests/{digest}"), 8),
            Intercept::Pass
        ));
        assert!(rig.mirror.poll_outgoing().is_none());
    }

    #[test]
    fn writes_to_a_mirror_are_refused_and_other_repositories_pass() {
        let mut rig = Rig::new("");
        match rig.intercept("PUT /v2/mirror/x/manifests/v1", 1) {
            Intercept::Refuse(response) => assert_eq!(response.status, 401),
            _ => panic!("a push to a mirror must be refused"),
        }
        assert!(matches!(
            rig.intercept("POST /v2/mirror/x/blobs/uploads/", 1),
            Intercept::Refuse(_)
        ));
        assert!(matches!(
            rig.intercept("DELETE /v2/mirror/x/manifests/v1", 1),
            Intercept::Refuse(_)
        ));
        assert!(matches!(
            rig.intercept("GET /v2/mirrorx/a/manifests/v1", 1),
            Intercept::Pass
        ));
        assert!(matches!(
            rig.intercept("PUT /v2/other/manifests/v1", 1),
            Intercept::Pass
        ));
    }

    #[test]
    fn the_token_handshake_runs_once_and_the_token_is_reused_until_it_expires() {
        let mut rig = Rig::new("");
        let first = pending(rig.intercept("GET /v2/mirror/library/alpine/manifests/latest", 1));
        let (exchange, _, request) = rig.sent();
        assert!(!request.contains("Authorization"), "anonymous first: {request}");
        let challenge = r#"Bearer realm="http://10.0.0.9/token",service="registry.example",scope="repository:library/alpine:pull""#;
        rig.answer(exchange, 401, &[("www-authenticate", challenge)], b"");
        let (token_exchange, host, request) = rig.sent();
        assert_eq!(host, "10.0.0.9:80");
        assert!(
            request.starts_with(
                "GET /token?service=registry.example&scope=repository%3Alibrary%2Falpine%3Apull HTTP/1.1"
            ),
            "{request}"
        );
        assert!(
            request.contains("Authorization: Basic dTpw\r\n"),
            "the upstream's credentials: {request}"
        );
        rig.answer(token_exchange, 200, &[], br#"{"token":"T1","expires_in":300}"#);
        let (exchange, _, request) = rig.sent();
        assert!(request.contains("Authorization: Bearer T1\r\n"), "{request}");
        let body = image_manifest();
        rig.answer(exchange, 200, &[MANIFEST_TYPE], &body);
        assert!(matches!(first.verdict(), Some(Verdict::Local)));
        // Another image: the known challenge fetches its token first.
        let _second = pending(rig.intercept("GET /v2/mirror/library/busybox/manifests/latest", 2));
        let (token_exchange, _, request) = rig.sent();
        assert!(
            request.contains("scope=repository%3Alibrary%2Fbusybox%3Apull"),
            "{request}"
        );
        rig.answer(token_exchange, 200, &[], br#"{"token":"T2"}"#);
        let (_, _, request) = rig.sent();
        assert!(request.contains("Authorization: Bearer T2\r\n"), "{request}");
        // The cached tag's check reuses T1 while it lives, not after.
        rig.now += 200_000;
        let _check = pending(rig.intercept("GET /v2/mirror/library/alpine/manifests/latest", 3));
        let (_, _, request) = rig.sent();
        assert!(request.starts_with("HEAD "), "{request}");
        assert!(request.contains("Authorization: Bearer T1\r\n"), "{request}");
    }

    #[test]
    fn redirects_are_followed_without_credentials_to_another_origin_and_bounded() {
        let mut rig = Rig::new("");
        let pending = pending(rig.intercept("GET /v2/mirror/library/alpine/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000", 1));
        let (exchange, _, _) = rig.sent();
        rig.answer(exchange, 401, &[("www-authenticate", "Basic realm=\"r\"")], b"");
        let (exchange, _, request) = rig.sent();
        assert!(request.contains("Authorization: Basic dTpw\r\n"), "{request}");
        rig.answer(exchange, 307, &[("location", "/v2/elsewhere/blob")], b"");
        let (exchange, host, request) = rig.sent();
        assert_eq!(host, "10.0.0.1:5000");
        assert!(request.starts_with("GET /v2/elsewhere/blob "), "{request}");
        assert!(
            request.contains("Authorization: Basic"),
            "same origin keeps credentials: {request}"
        );
        rig.answer(
            exchange,
            302,
            &[("location", "http://10.0.0.7:9000/bucket/blob?sig=x")],
            b"",
        );
        let (exchange, host, request) = rig.sent();
        assert_eq!(host, "10.0.0.7:9000");
        assert!(request.starts_with("GET /bucket/blob?sig=x "), "{request}");
        assert!(
            !request.contains("Authorization"),
            "credentials never leave the upstream's origin: {request}"
        );
        // Back to the upstream's origin after another host: still none.
        rig.answer(
            exchange,
            307,
            &[("location", "http://10.0.0.1:5000/v2/again")],
            b"",
        );
        let (exchange, _, request) = rig.sent();
        assert!(!request.contains("Authorization"), "{request}");
        // Five redirects at most (three so far): the sixth moves on to the
        // next upstream.
        rig.answer(exchange, 307, &[("location", "/loop")], b"");
        let mut last = rig.sent();
        for _ in 0..2 {
            rig.answer(last.0, 307, &[("location", "/loop")], b"");
            last = rig.sent();
        }
        assert_eq!(
            last.1, "10.0.0.2:80",
            "after max_redirect the fallback upstream is tried"
        );
        assert!(
            last.2.starts_with("GET /v2/team/library/alpine/blobs/"),
            "{}",
            last.2
        );
        rig.fail(last.0);
        match pending.verdict() {
            Some(Verdict::Unavailable(reason)) => {
                assert!(reason.contains("more than 5 redirects"), "{reason}");
                assert!(reason.contains("connection refused"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_cached_tag_is_checked_then_served_offline_when_every_upstream_fails() {
        let mut rig = Rig::new("");
        let _ = pending(rig.intercept("GET /v2/mirror/app/manifests/v1", 1));
        let (exchange, _, _) = rig.sent();
        let body = image_manifest();
        let digest = Digest::sha256_of(&body);
        rig.answer(exchange, 200, &[MANIFEST_TYPE], &body);
        // Same digest upstream: served from the store.
        let check = pending(rig.intercept("GET /v2/mirror/app/manifests/v1", 2));
        let (exchange, _, request) = rig.sent();
        assert!(request.starts_with("HEAD /v2/app/manifests/v1 "), "{request}");
        rig.answer(
            exchange,
            200,
            &[("docker-content-digest", &digest.to_string())],
            b"",
        );
        assert!(matches!(check.verdict(), Some(Verdict::Local)));
        // Both upstreams down (one refuses, one times out on a hand-driven clock).
        let offline = pending(rig.intercept("GET /v2/mirror/app/manifests/v1", 3));
        let (exchange, _, _) = rig.sent();
        rig.fail(exchange);
        let (_, host, _) = rig.sent();
        assert_eq!(host, "10.0.0.2:80");
        let deadline = rig.mirror.poll_timeout().unwrap();
        assert_eq!(
            deadline,
            rig.now + 3_000,
            "connect + read timeout of the second upstream"
        );
        rig.now = deadline - 1;
        rig.mirror
            .handle_timeout(&mut rig.registry, &mut rig.metrics, rig.now);
        assert!(offline.verdict().is_none(), "not before its deadline");
        rig.now = deadline;
        rig.mirror
            .handle_timeout(&mut rig.registry, &mut rig.metrics, rig.now);
        match offline.verdict() {
            Some(Verdict::Offline(reason)) => assert!(reason.contains("timed out"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let status = rig.mirror.status_json();
        assert_eq!(status["upstreams"][0]["state"], "down");
        assert_eq!(status["upstreams"][1]["state"], "down");
    }

    #[test]
    fn a_moved_tag_is_fetched_again_and_immutable_tags_are_not_checked() {
        let mut rig = Rig::new("immutable_tags = true\nimmutable_tags_exclusions = [\"^latest$\"]");
        for tag in ["latest", "1.0"] {
            let _ = pending(rig.intercept(&format!("GET /v2/mirror/app/manifests/{tag}"), 1));
            let (exchange, _, _) = rig.sent();
            rig.answer(exchange, 200, &[MANIFEST_TYPE], &image_manifest());
        }
        assert!(matches!(
            rig.intercept("GET /v2/mirror/app/manifests/1.0", 2),
            Intercept::Pass
        ));
        let moved = pending(rig.intercept("GET /v2/mirror/app/manifests/latest", 2));
        let (exchange, _, _) = rig.sent();
        let other = format!("sha256:{}", "1".repeat(64));
        rig.answer(exchange, 200, &[("docker-content-digest", &other)], b"");
        let (exchange, _, request) = rig.sent();
        assert!(request.starts_with("GET /v2/app/manifests/latest "), "{request}");
        let mut body = image_manifest();
        body.extend_from_slice(b"\n");
        rig.answer(exchange, 200, &[MANIFEST_TYPE], &body);
        assert!(matches!(moved.verdict(), Some(Verdict::Local)));
        let storage = rig.registry.storage();
        assert_eq!(
            storage.tag("mirror/app", "latest").unwrap(),
            Some(Digest::sha256_of(&body))
        );
    }

    #[test]
    fn a_blob_fill_is_shared_streamed_and_verified_before_it_is_visible() {
        let mut rig = Rig::new("");
        let data = vec![7u8; 100_000];
        let digest = Digest::sha256_of(&data);
        let path = format!("GET /v2/mirror/app/blobs/{digest}");
        let first = pending(rig.intercept(&path, 1));
        let second = pending(rig.intercept(&path, 2));
        let (exchange, _, _) = rig.sent();
        assert!(
            rig.mirror.poll_outgoing().is_none(),
            "one upstream fetch for both"
        );
        let head = ResponseHead {
            status: 200,
            fields: Vec::new(),
            content_length: Some(data.len() as u64),
        };
        rig.mirror.handle_answer(
            exchange,
            Answer::Head(head),
            &mut rig.registry,
            &mut rig.metrics,
            rig.now,
        );
        let Some(Verdict::Streaming(fill)) = first.verdict() else {
            panic!("streams once the upstream answered");
        };
        assert!(matches!(second.verdict(), Some(Verdict::Streaming(_))));
        assert_eq!(rig.mirror.take_woken(), vec![(1, 1), (2, 1)]);
        crate::http::output::Awaited::wait(&*fill, 1, 1);
        rig.mirror.handle_answer(
            exchange,
            Answer::Body(data[..60_000].to_vec()),
            &mut rig.registry,
            &mut rig.metrics,
            rig.now,
        );
        assert_eq!(fill.written(), 60_000);
        assert_eq!(rig.mirror.take_readers(), vec![(1, 1)]);
        assert_eq!(
            rig.registry.storage().blob_size("mirror/app", &digest).unwrap(),
            None,
            "not visible yet"
        );
        rig.mirror.handle_answer(
            exchange,
            Answer::Body(data[60_000..].to_vec()),
            &mut rig.registry,
            &mut rig.metrics,
            rig.now,
        );
        rig.mirror.handle_answer(
            exchange,
            Answer::End,
            &mut rig.registry,
            &mut rig.metrics,
            rig.now,
        );
        assert_eq!(
            rig.registry.storage().blob_size("mirror/app", &digest).unwrap(),
            Some(100_000)
        );
        assert!(matches!(rig.intercept(&path, 3), Intercept::Pass));
    }

    #[test]
    fn wrong_bytes_from_the_upstream_are_never_stored() {
        let mut rig = Rig::new("");
        let digest = Digest::sha256_of(b"the real bytes");
        let path = format!("GET /v2/mirror/app/blobs/{digest}");
        let waiting = pending(rig.intercept(&path, 1));
        let (exchange, _, _) = rig.sent();
        rig.answer(exchange, 200, &[], b"other bytes!!!");
        let Some(Verdict::Streaming(fill)) = waiting.verdict() else {
            panic!("it streamed");
        };
        assert!(
            crate::http::output::Growing::failed(&*fill),
            "readers are cut short"
        );
        assert_eq!(
            crate::http::output::Growing::available(&*fill),
            13,
            "the last byte was never readable"
        );
        assert_eq!(
            rig.registry.storage().blob_size("mirror/app", &digest).unwrap(),
            None
        );
        assert_eq!(rig.registry.storage().upload_sessions(), 0, "the session is gone");
        // The next request fetches again.
        assert!(matches!(rig.intercept(&path, 2), Intercept::Wait(_)));
    }

    #[test]
    fn an_upstream_404_is_not_found_after_every_upstream() {
        let mut rig = Rig::new("");
        let waiting = pending(rig.intercept("GET /v2/mirror/app/manifests/none", 1));
        let (exchange, _, _) = rig.sent();
        rig.answer(exchange, 404, &[], b"");
        let (exchange, host, _) = rig.sent();
        assert_eq!(host, "10.0.0.2:80");
        rig.answer(exchange, 404, &[], b"");
        assert!(matches!(waiting.verdict(), Some(Verdict::NotFound)));
    }
}
