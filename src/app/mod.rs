//! The application layer between an inbound connection and the registry:
//! routes a request head once (`registry::route::route`: label, permission
//! and handler), runs the authentication flow (token, remembered
//! credentials, or a password check in slices), answers the server's own
//! endpoints (token, metrics, admin API) and hands the rest to the
//! registry, submitting staged changes to the notifier. It implements
//! `http::server::Service`, so the connection machine drives it; the
//! reactor builds one per step from the loop's shared state.

pub mod admin;
pub mod telemetry;

use std::net::{IpAddr, SocketAddr};

use crate::auth::refusal::Refused;
use crate::auth::{Authenticator, Decision, Login, Need, PendingLogin, Principal};
use crate::event_webhook::event::Actor;
use crate::event_webhook::notifier::{Notifier, Submission, Submitted};
use crate::http::forwarded::IpNetwork;
use crate::http::server::{Answered, Ending, Reply, Service};
use crate::http::{Body, Method, RequestHead, Response};
use crate::registry::route::Route;
use crate::registry::{Begin, Commit, Exchange, Finished, Outcome, Registry};
use admin::AdminAnswer;
use telemetry::Telemetry;

/// Password-hash iterations one connection runs per turn of the loop: about
/// a millisecond here, so a login costs others latency, not a stall.
const LOGIN_SLICE_ITERATIONS: u32 = 4096;

/// Identifies a connection across its life: slot and generation, so an
/// answer for a closed connection never reaches the slot's next owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Waiter {
    pub slot: usize,
    pub generation: u64,
}

impl crate::event_webhook::notifier::Waits for Waiter {
    fn holder(&self) -> (usize, u64) {
        (self.slot, self.generation)
    }
}

impl Waiter {
    /// Not a connection: removal `removal` of one of the registry's own
    /// maintenance jobs (`job`: `maintenance::Job` as a number, below 2),
    /// which goes through the notifier like a client's. Each removal is its
    /// own waiter: on a bucket each is a request of its own.
    pub const fn maintenance(job: u64, removal: u64) -> Waiter {
        Waiter {
            slot: usize::MAX,
            generation: removal.wrapping_mul(2).wrapping_add(job),
        }
    }

    /// Not a connection: the pull-through cache's fetch `fetch`, whose
    /// stored manifests and blobs go through the notifier like a push.
    pub const fn cache(fetch: u64) -> Waiter {
        Waiter {
            slot: crate::mirror::CACHE_SLOT,
            generation: fetch,
        }
    }

    /// The cache fetch this waiter stands for, if it is one.
    pub fn cache_fetch(&self) -> Option<u64> {
        (self.slot == crate::mirror::CACHE_SLOT).then_some(self.generation)
    }

    /// The maintenance job this waiter stands for, if it is one.
    pub fn maintenance_job(&self) -> Option<u64> {
        (self.slot == usize::MAX).then_some(self.generation % 2)
    }
}

/// What the application keeps about a request between calls.
pub struct Request {
    info: RequestInfo,
    state: RequestState,
}

/// The request being handled, for its log line and metrics.
#[derive(Debug, Clone)]
struct RequestInfo {
    method: &'static str,
    route: &'static str,
    path: String,
    started_ms: u64,
    /// The client's address; written into events only when there are some.
    client: Option<IpAddr>,
    /// Who logged in (`client_ip` is filled from `client` when an event needs it).
    actor: Actor,
}

enum RequestState {
    /// Answered, or waiting for webhooks.
    Settled,
    Receiving(Box<Exchange>),
    /// The body is in; its file is being synced off the loop (`file_syncs`)
    /// before the registry finishes the request.
    Syncing(Box<Exchange>),
    /// The head waits for its credentials to be checked.
    Authenticating(Box<LoginWait>),
    /// The pull-through cache fetches what the request asks for.
    Mirroring(Box<MirrorWait>),
    /// The registry waits on its object storage to answer the head; it
    /// runs the request again when woken (`Registry::take_woken`).
    Storing(Box<StoreWait>),
    /// The same, for a request whose body is in.
    Finishing(Box<Exchange>),
}

struct StoreWait {
    head: Box<RequestHead>,
    route: Route,
    principal: Principal,
    /// The pull-through cache's look at the store waited: it looks again.
    intercept: bool,
}

struct MirrorWait {
    head: Box<RequestHead>,
    route: Route,
    principal: Principal,
    pending: std::rc::Rc<crate::mirror::Pending>,
}

struct LoginWait {
    head: Box<RequestHead>,
    route: Route,
    need: Need,
    login: Box<PendingLogin>,
}

/// One step's view of the loop's shared state, for one connection.
pub struct Application<'a> {
    pub registry: &'a mut Registry,
    pub auth: &'a mut Authenticator,
    pub trusted_proxies: &'a [IpNetwork],
    /// `[auth] token_realm`: where clients fetch tokens, when set explicitly.
    pub token_realm: Option<&'a str>,
    pub notifier: &'a mut Notifier<Waiter, Commit>,
    pub telemetry: &'a mut Telemetry,
    pub unix_micros: u64,
    pub date: &'a str,
    /// The connection being served.
    pub waiter: Waiter,
    pub peer: Option<SocketAddr>,
    /// The connection came over TLS (for the token realm's scheme).
    pub tls: bool,
    /// Files to sync off the loop, each for the request of its waiter; the
    /// reactor continues the request (`ServerConnection::continue_held`)
    /// once its file is synced.
    pub file_syncs: &'a mut Vec<(Waiter, std::path::PathBuf)>,
    /// Garbage collection: the admin API starts it and reads its reports;
    /// deletions count towards `gc_after_deletes`.
    pub maintenance: &'a mut crate::maintenance::Maintenance,
    /// The pull-through cache.
    pub mirror: &'a mut crate::mirror::Mirror,
    /// Whether a push may not move a tag (for the cache: immutable tags
    /// are served without asking the upstream).
    pub config: &'a crate::config::Config,
}

impl Service for Application<'_> {
    type Request = Request;

    fn head(&mut self, mut head: Box<RequestHead>, now_ms: u64) -> Reply<Request> {
        // The connection's previous request is over: what it read of the
        // object storage is not this one's.
        self.registry.release(self.holder());
        // Before routing: `?ns=` names the repository the request is for.
        self.mirror.rewrite_namespace(&mut head);
        let client = self.client_address(&head);
        // Routed once: the label, the permission it needs and the handler
        // all come from this one match.
        let route = if crate::ui::owns(&self.config.ui, &head.path) {
            Route::Ui
        } else {
            crate::registry::route::route(&head.path)
        };
        let info = RequestInfo {
            method: method_label(&head.method),
            route: route.label(),
            // Only a debug log line reads it: built only when one is written.
            path: if log::log_enabled!(target: "angos::http", log::Level::Debug) {
                head.log_target()
            } else {
                String::new()
            },
            started_ms: now_ms,
            client,
            actor: Actor::default(),
        };
        if is_cross_site_write(&head) {
            // A form on another site posting here with the visitor's
            // browser (and its remembered credentials): never a client's.
            let refusal = crate::http::oci_error::RegistryError::new(
                crate::http::oci_error::ErrorCode::Denied,
                "a cross-origin request that changes something is refused",
            )
            .into_response();
            return Reply::Respond(settled(info), refusal);
        }
        let need = Need::of(&head, &route);
        if need == Need::Nothing {
            return self.serve(head, route, info, need, Principal::Anonymous, now_ms);
        }
        match self.auth.start(head.header("authorization"), client, now_ms) {
            Login::Done(principal) => self.authorize(head, route, info, need, principal, now_ms),
            Login::Failed(failure) => {
                self.telemetry.record_auth_failure(failure.label());
                let challenge = self.challenge(&head, &need);
                self.refuse(Refused::BadCredentials(failure), &need, None, info, challenge)
            }
            Login::Verify(login) => {
                if login.not_before_ms > now_ms {
                    self.telemetry.record_auth_delay();
                }
                let wake_at = login.not_before_ms;
                let wait = LoginWait {
                    head,
                    route,
                    need,
                    login,
                };
                Reply::WakeAt(
                    Request {
                        info,
                        state: RequestState::Authenticating(Box::new(wait)),
                    },
                    wake_at,
                )
            }
        }
    }

    fn body(&mut self, request: &mut Request, data: &[u8]) -> Result<(), Response> {
        match &mut request.state {
            RequestState::Receiving(exchange) => {
                // An upload's parts on a bucket are this request's writes.
                self.registry.enter(self.holder(), request.info.started_ms);
                let result = self.registry.body(exchange, data);
                self.registry.leave();
                result
            }
            _ => Ok(()),
        }
    }

    fn body_paused(&mut self, request: &mut Request) -> bool {
        match &mut request.state {
            RequestState::Receiving(exchange) => {
                self.registry.enter(self.holder(), request.info.started_ms);
                let paused = self.registry.body_paused(exchange);
                self.registry.leave();
                paused
            }
            _ => false,
        }
    }

    fn end(&mut self, request: Request, now_ms: u64) -> Ending<Request> {
        let Request { info, state } = request;
        match state {
            RequestState::Receiving(exchange) => {
                if let Some(path) = self.registry.file_to_sync(&exchange) {
                    self.file_syncs.push((self.waiter, path));
                    let state = RequestState::Syncing(exchange);
                    return Ending::Resume(Request { info, state });
                }
                self.finish(exchange, info, now_ms)
            }
            // Only a request that reads its body ends here.
            state => Ending::Resume(Request { info, state }),
        }
    }

    /// Runs a slice of the password check; another when the slice ran out.
    /// Or, for a request whose file was synced, finishes it.
    fn wake(&mut self, request: Request, now_ms: u64) -> Reply<Request> {
        let Request { info, state } = request;
        if let RequestState::Mirroring(wait) = state {
            return self.mirrored(*wait, info, now_ms);
        }
        if let RequestState::Syncing(exchange) | RequestState::Finishing(exchange) = state {
            return match self.finish(exchange, info, now_ms) {
                Ending::Respond(request, response) => Reply::Respond(request, response),
                Ending::Resume(request) => Reply::Resume(request),
            };
        }
        if let RequestState::Storing(wait) = state {
            let StoreWait {
                head,
                route,
                principal,
                intercept,
            } = *wait;
            if intercept {
                return self.intercept(head, route, info, principal, now_ms);
            }
            return self.route_to_registry(head, route, info, principal, now_ms);
        }
        let RequestState::Authenticating(mut wait) = state else {
            return Reply::Resume(Request { info, state });
        };
        if now_ms < wait.login.not_before_ms {
            let at = wait.login.not_before_ms;
            let state = RequestState::Authenticating(wait);
            return Reply::WakeAt(Request { info, state }, at);
        }
        let Some(outcome) = self.auth.step(&mut wait.login, LOGIN_SLICE_ITERATIONS, now_ms) else {
            let state = RequestState::Authenticating(wait);
            return Reply::WakeAt(Request { info, state }, now_ms);
        };
        let LoginWait {
            head, route, need, ..
        } = *wait;
        match outcome {
            Ok(principal) => self.authorize(head, route, info, need, principal, now_ms),
            Err(failure) => {
                log::warn!(
                    target: "angos::auth",
                    "failed login from {}: {}",
                    info.client
                        .map_or("an unknown address".to_string(), |address| address.to_string()),
                    failure.label().replace('_', " ")
                );
                self.telemetry.record_auth_failure(failure.label());
                let challenge = self.challenge(&head, &need);
                self.refuse(Refused::BadCredentials(failure), &need, None, info, challenge)
            }
        }
    }

    fn abort(&mut self, request: Request) {
        release(self.registry, request);
        self.registry.release(self.holder());
    }

    fn answered(&mut self, request: Answered<'_, Request>, response: &Response, now_ms: u64) {
        let (method, route, path, started_ms) = match request {
            Answered::Request(request) => {
                self.registry.release(self.holder());
                (
                    request.info.method,
                    request.info.route,
                    request.info.path.as_str(),
                    request.info.started_ms,
                )
            }
            Answered::Malformed => ("OTHER", "malformed", "", now_ms),
            Answered::TimedOut => ("OTHER", "timeout", "", now_ms),
        };
        let elapsed_ms = now_ms.saturating_sub(started_ms);
        self.telemetry
            .record_request(route, method, response.status, elapsed_ms);
        if method == "DELETE" && response.status == 202 {
            self.maintenance.note_deletion();
        }
        log::debug!(
            target: "angos::http",
            "{method} {path} -> {} ({elapsed_ms} ms)",
            response.status
        );
    }

    fn http_date(&self) -> &str {
        self.date
    }
}

impl Application<'_> {
    /// The client's address: the peer, or who a trusted proxy says it serves.
    fn client_address(&self, head: &RequestHead) -> Option<IpAddr> {
        let peer = self.peer?.ip();
        if self.trusted_proxies.is_empty() {
            return Some(peer);
        }
        let forwarded: Vec<&str> = head
            .headers
            .iter()
            .filter(|(name, _)| name == "x-forwarded-for")
            .map(|(_, value)| value.as_str())
            .collect();
        Some(crate::http::forwarded::client_address(
            peer,
            &forwarded,
            self.trusted_proxies,
        ))
    }

    fn authorize(
        &mut self,
        head: Box<RequestHead>,
        route: Route,
        mut info: RequestInfo,
        need: Need,
        principal: Principal,
        now_ms: u64,
    ) -> Reply<Request> {
        if let Some(identity) = self.auth.policy().identity(principal) {
            info.actor.id = Some(identity.id.clone());
            info.actor.username = Some(identity.username.clone());
        }
        // A ping with a valid token, even an anonymous one, is welcome: the
        // client has done what the challenge asked.
        let with_token = crate::auth::token::bearer(head.header("authorization")).is_some();
        let decision = match self.auth.policy().decide(principal, &need) {
            Decision::Challenge if need == Need::Base && with_token => Decision::Allow,
            decision => decision,
        };
        let refused = match decision {
            Decision::Allow => return self.serve(head, route, info, need, principal, now_ms),
            Decision::Deny => Refused::Denied,
            Decision::Challenge if with_token => Refused::AnonymousToken,
            Decision::Challenge => Refused::NoCredentials,
        };
        let challenge = self.challenge(&head, &need);
        let username = info.actor.username.clone();
        self.refuse(refused, &need, username.as_deref(), info, challenge)
    }

    /// The `WWW-Authenticate` value for a request that needs credentials:
    /// the token endpoint, at the address the client reached us by, or Basic
    /// for the token endpoint itself (and where that address is unknown).
    fn challenge(&self, head: &RequestHead, need: &Need) -> String {
        if head.header(PAGE_REQUEST_HEADER).is_some() {
            return String::new();
        }
        if *need == Need::Token {
            return self.auth.basic_challenge();
        }
        let realm_url = match self.token_realm {
            Some(url) => url.to_string(),
            None => {
                let Some(host) = head.header("host").filter(|host| is_plain_host(host)) else {
                    return self.auth.basic_challenge();
                };
                let forwarded_proto = head
                    .header("x-forwarded-proto")
                    .filter(|_| self.peer_is_trusted_proxy())
                    .filter(|proto| matches!(*proto, "http" | "https"));
                let scheme = forwarded_proto.unwrap_or(if self.tls { "https" } else { "http" });
                format!("{scheme}://{host}{}", crate::auth::access::TOKEN_PATH)
            }
        };
        let scope = match need {
            Need::Repository { namespace, action }
                if crate::registry::reference::is_valid_name(namespace) =>
            {
                let actions = match action {
                    crate::auth::Action::Pull => "pull",
                    crate::auth::Action::Push => "pull,push",
                    crate::auth::Action::Delete => "delete",
                };
                Some(format!("repository:{namespace}:{actions}"))
            }
            Need::Catalog => Some("registry:catalog:*".to_string()),
            _ => None,
        };
        self.auth.bearer_challenge(&realm_url, scope.as_deref())
    }

    fn peer_is_trusted_proxy(&self) -> bool {
        self.peer.is_some_and(|peer| {
            self.trusted_proxies
                .iter()
                .any(|network| network.contains(peer.ip()))
        })
    }

    /// 401 with the challenge, or 403; a body the request carries is not read.
    fn refuse(
        &mut self,
        refused: Refused,
        need: &Need,
        username: Option<&str>,
        info: RequestInfo,
        challenge: String,
    ) -> Reply<Request> {
        let response = crate::auth::refusal::refusal(refused, need, &challenge, username);
        Reply::Respond(settled(info), response)
    }

    /// Hands an admitted request to its handler.
    fn serve(
        &mut self,
        head: Box<RequestHead>,
        route: Route,
        info: RequestInfo,
        need: Need,
        principal: Principal,
        now_ms: u64,
    ) -> Reply<Request> {
        if need == Need::Token {
            let token = self.auth.issue_token(principal, now_ms);
            let response = Response::json(
                200,
                &serde_json::json!({
                    "token": token,
                    "access_token": token,
                    "expires_in": crate::auth::token::TOKEN_LIFETIME_SECS,
                }),
            );
            return Reply::Respond(settled(info), response);
        }
        if route == Route::Metrics && matches!(head.method, Method::Get | Method::Head) {
            let mut text = String::new();
            self.notifier.record_completed(self.telemetry.metrics());
            // Read at the scrape: free space is exact when it is looked at.
            self.telemetry
                .record_storage(&self.registry.storage().space_report());
            self.telemetry.metrics().render(&mut text);
            let response = Response::new(200)
                .header("Content-Type", crate::metrics::CONTENT_TYPE)
                .body(if head.method == Method::Head {
                    Body::Length(text.len() as u64)
                } else {
                    Body::Bytes(text.into_bytes())
                });
            return Reply::Respond(settled(info), response);
        }
        if route == Route::Ui {
            return Reply::Respond(settled(info), crate::ui::answer(&self.config.ui, &head));
        }
        if route == Route::Admin {
            let space = self.registry.storage().space_report();
            return match admin::handle(
                self.notifier,
                self.maintenance,
                self.mirror,
                &space,
                self.waiter,
                &head,
                now_ms,
            ) {
                AdminAnswer::Respond(response) => Reply::Respond(settled(info), response),
                AdminAnswer::Parked => Reply::Resume(settled(info)),
            };
        }
        self.registry.set_time(self.unix_micros / 1_000_000);
        if self.mirror.is_enabled() {
            return self.intercept(head, route, info, principal, now_ms);
        }
        self.route_to_registry(head, route, info, principal, now_ms)
    }

    /// The pull-through cache looks first: what it holds goes on to the
    /// registry, a miss waits for its fetch. On a bucket its look may wait
    /// for the store to answer; the request then runs it again.
    fn intercept(
        &mut self,
        head: Box<RequestHead>,
        route: Route,
        info: RequestInfo,
        principal: Principal,
        now_ms: u64,
    ) -> Reply<Request> {
        let config = self.config;
        let immutable = |name: &str, tag: &str| config.tag_is_immutable(name, tag);
        self.registry.enter(self.holder(), info.started_ms);
        let intercept = self.mirror.intercept(
            &head,
            &route,
            self.registry,
            &immutable,
            (self.waiter.slot, self.waiter.generation),
            self.telemetry.metrics(),
            now_ms,
        );
        if self.registry.leave() {
            let wait = StoreWait {
                head,
                route,
                principal,
                intercept: true,
            };
            return hold_for_store(wait, info);
        }
        // What the look read is not what the registry reads next: a fetch
        // may store the very manifest or blob it found missing.
        self.registry.release(self.holder());
        match intercept {
            crate::mirror::Intercept::Pass => self.route_to_registry(head, route, info, principal, now_ms),
            crate::mirror::Intercept::Refuse(response) => Reply::Respond(settled(info), response),
            crate::mirror::Intercept::Wait(pending) => {
                let wait = MirrorWait {
                    head,
                    route,
                    principal,
                    pending,
                };
                hold_for_mirror(wait, info)
            }
        }
    }

    /// The registry's numbering of this connection's request.
    fn holder(&self) -> crate::registry::Holder {
        (self.waiter.slot, self.waiter.generation)
    }

    /// Finishes a request whose body is in, or holds it while the registry
    /// waits on its object storage.
    fn finish(&mut self, exchange: Box<Exchange>, info: RequestInfo, now_ms: u64) -> Ending<Request> {
        self.registry.enter(self.holder(), info.started_ms);
        let finished = self.registry.finish(*exchange);
        let waits = self.registry.leave();
        match finished {
            Finished::Answer(outcome) if !waits => self.conclude(outcome, info, now_ms),
            Finished::Answer(_) => {
                // Only a manifest or upload body waits, and those come back.
                log::error!("a finished request waits on the bucket without its exchange");
                let response = crate::http::oci_error::RegistryError::new(
                    crate::http::oci_error::ErrorCode::Unknown,
                    "storage error",
                )
                .into_response();
                Ending::Respond(settled(info), response)
            }
            Finished::Wait(exchange) => Ending::Resume(Request {
                info,
                state: RequestState::Finishing(Box::new(exchange)),
            }),
        }
    }

    fn route_to_registry(
        &mut self,
        head: Box<RequestHead>,
        route: Route,
        info: RequestInfo,
        principal: Principal,
        now_ms: u64,
    ) -> Reply<Request> {
        let policy = self.auth.policy();
        let readable = |namespace: &str| policy.allows(principal, crate::auth::Action::Pull, namespace);
        self.registry.enter(self.holder(), info.started_ms);
        let begun = self.registry.begin_routed(&head, route.clone(), &readable);
        if self.registry.leave() {
            // Run again, whole, once the object storage answered.
            let wait = StoreWait {
                head,
                route,
                principal,
                intercept: false,
            };
            return hold_for_store(wait, info);
        }
        match begun {
            Begin::Answer(outcome) => match self.conclude(outcome, info, now_ms) {
                Ending::Respond(request, response) => Reply::Respond(request, response),
                Ending::Resume(request) => Reply::Resume(request),
            },
            Begin::ReadBody(exchange) => Reply::ReadBody(Request {
                info,
                state: RequestState::Receiving(Box::new(exchange)),
            }),
        }
    }

    /// A request held for the pull-through cache: its fetch is decided.
    fn mirrored(&mut self, wait: MirrorWait, info: RequestInfo, now_ms: u64) -> Reply<Request> {
        let Some(verdict) = wait.pending.verdict() else {
            // Woken early (cannot happen): keep waiting.
            return hold_for_mirror(wait, info);
        };
        let MirrorWait {
            head,
            route,
            principal,
            ..
        } = wait;
        use crate::mirror::Verdict;
        let (is_manifest, name, target) = match &route {
            Route::Manifest { name, reference } => (true, name.clone(), reference.clone()),
            Route::Blob { name, digest } => (false, name.clone(), digest.clone()),
            _ => (false, String::new(), String::new()),
        };
        let unknown = |status: u16, message: String| {
            let code = if is_manifest {
                crate::http::oci_error::ErrorCode::ManifestUnknown
            } else {
                crate::http::oci_error::ErrorCode::BlobUnknown
            };
            crate::http::oci_error::RegistryError::new(code, message)
                .status(status)
                .detail(serde_json::json!({ "reference": target }))
                .into_response()
        };
        match verdict {
            Verdict::Local | Verdict::Offline(_) => {
                self.route_to_registry(head, route, info, principal, now_ms)
            }
            Verdict::NotFound => Reply::Respond(
                settled(info),
                unknown(
                    404,
                    format!("{target} is not in the cache, and no upstream has it"),
                ),
            ),
            Verdict::Unavailable(reason) => Reply::Respond(
                settled(info),
                unknown(
                    502,
                    format!("{target} is not in the cache, and no upstream could give it: {reason}"),
                ),
            ),
            Verdict::Size(size) => {
                let response = Response::new(200)
                    .header("Content-Type", "application/octet-stream")
                    .header("Docker-Content-Digest", target)
                    .body(Body::Length(size));
                Reply::Respond(settled(info), response)
            }
            Verdict::Streaming(fill) => {
                let Ok(digest) = crate::digest::Digest::parse(&target) else {
                    return self.route_to_registry(head, route, info, principal, now_ms);
                };
                let file = match fill.reader() {
                    Ok(file) => file,
                    Err(error) => {
                        let reason = format!("reading the fill: {error}");
                        return Reply::Respond(settled(info), unknown(502, reason));
                    }
                };
                let size = fill.size;
                let outcome = self.registry.streaming_blob(&name, &digest, file, size, fill);
                match self.conclude(outcome, info, now_ms) {
                    Ending::Respond(request, response) => Reply::Respond(request, response),
                    Ending::Resume(request) => Reply::Resume(request),
                }
            }
        }
    }

    /// Answers a complete request, or holds it while webhooks are asked.
    fn conclude(&mut self, outcome: Outcome, info: RequestInfo, now_ms: u64) -> Ending<Request> {
        let Some(staged) = outcome.staged else {
            return Ending::Respond(settled(info), outcome.response);
        };
        let submission = Submission {
            drafts: staged.events,
            actor: Actor {
                client_ip: info.client.map(|address| address.to_string()),
                ..info.actor.clone()
            },
            commit: staged.commit,
            response: outcome.response,
        };
        let submitted =
            self.notifier
                .submit(self.waiter, submission, self.registry, now_ms, self.unix_micros);
        match submitted {
            Submitted::Respond(response) => Ending::Respond(settled(info), response),
            // Webhook timeouts bound the wait.
            Submitted::Parked => Ending::Resume(settled(info)),
        }
    }
}

/// Releases a request that will never end (its upload keeps what arrived).
pub fn release(registry: &mut Registry, request: Request) {
    if let RequestState::Receiving(exchange) | RequestState::Syncing(exchange) = request.state {
        registry.abort(*exchange);
    }
}

/// Holds a request until its object storage answers (`Registry::take_woken`).
fn hold_for_store(wait: StoreWait, info: RequestInfo) -> Reply<Request> {
    let state = RequestState::Storing(Box::new(wait));
    Reply::Resume(Request { info, state })
}

/// Holds a request until the cache's fetch wakes it.
fn hold_for_mirror(wait: MirrorWait, info: RequestInfo) -> Reply<Request> {
    let state = RequestState::Mirroring(Box::new(wait));
    Reply::Resume(Request { info, state })
}

fn settled(info: RequestInfo) -> Request {
    Request {
        info,
        state: RequestState::Settled,
    }
}

/// Sent by the operator page with its requests: their refusals carry no
/// challenge (see `auth::refusal`).
const PAGE_REQUEST_HEADER: &str = "x-angos-page";

/// A request that changes something and that a browser says comes from
/// another origin: its `Sec-Fetch-Site` says so, or its `Origin` names
/// another host than the one it was sent to (`null` included). Registry
/// clients send neither header, and the operator page sends its own
/// origin, so only a cross-site form or script is refused.
fn is_cross_site_write(head: &RequestHead) -> bool {
    if matches!(head.method, Method::Get | Method::Head | Method::Options) {
        return false;
    }
    if head
        .header("sec-fetch-site")
        .is_some_and(|site| site.eq_ignore_ascii_case("cross-site") || site.eq_ignore_ascii_case("same-site"))
    {
        return true;
    }
    let Some(origin) = head.header("origin") else {
        return false;
    };
    let authority = origin
        .split_once("://")
        .map(|(_, authority)| authority.trim_end_matches('/'));
    match (authority, head.header("host")) {
        (Some(authority), Some(host)) => !authority.eq_ignore_ascii_case(host),
        _ => true,
    }
}

/// A `Host` value safe to echo into a header parameter: a name or address and port.
fn is_plain_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

fn method_label(method: &Method) -> &'static str {
    match method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Patch => "PATCH",
        Method::Delete => "DELETE",
        Method::Options => "OPTIONS",
        Method::Other(_) => "OTHER",
    }
}
