//! One inbound HTTP/1.1 connection: reads until `WouldBlock`, decodes
//! requests (pipelined ones answered in order), hands them to the registry,
//! parks a request while webhooks are asked, and writes answers with
//! back-pressure. The read buffer is shared by all connections (one thread);
//! a connection keeps only its unconsumed bytes.

use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};

use super::output::{Flush, Output};
use super::telemetry::Telemetry;
use super::transport::Transport;
use crate::auth::refusal::Refused;
use crate::auth::{Authenticator, Decision, Login, Need, PendingLogin, Principal};
use crate::event_webhook::event::Actor;
use crate::event_webhook::notifier::admin::Admin;
use crate::event_webhook::notifier::{Notifier, Submission, Submitted};
use crate::http::forwarded::IpNetwork;
use crate::http::oci_error::{ErrorCode, RegistryError};
use crate::http::{Body, Method, RequestDecoder, RequestEvent, RequestHead, Response};
use crate::registry::route::Route;
use crate::registry::{Begin, Commit, Exchange, Outcome, Registry};

/// Bytes one connection may read or write per wake-up before others get a turn.
const IO_BUDGET_BYTES: usize = 4 << 20;
/// Capacity an idle connection's request buffer may keep between reads.
const PENDING_KEPT_BYTES_MAX: usize = 16 * 1024;
/// What a lingering close reads and drops before giving up on the peer.
const LINGER_BYTES_MAX: u64 = 1 << 20;
/// Password-hash iterations one connection runs per turn of the loop: about
/// a millisecond here, so a login costs others latency, not a stall.
const LOGIN_SLICE_ITERATIONS: u32 = 4096;

/// Identifies a connection across its life: slot and generation, so an
/// answer for a closed connection never reaches the slot's next owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiter {
    pub slot: usize,
    pub generation: u64,
}

/// Where the connection is in its life; decides which timeout applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Between requests, nothing buffered: keep-alive timeout.
    Idle,
    /// Part of a request head arrived: header timeout, counted from its first byte.
    Head,
    /// A request body is arriving: body (progress) timeout.
    Body,
    /// Answers are being written and no request is in progress.
    Writing,
    /// A request waits for webhooks; their own timeouts bound the wait.
    Parked,
    /// A request waits for its password check, or for the time its address
    /// may try again after failed logins (the deadline).
    Authenticating,
    /// The answer is out and the write side shut; unread input is drained
    /// so the peer sees the answer instead of a reset (RFC 9112 section 9.6).
    Lingering,
}

/// What the reactor should do with the connection after a step.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Wait for readiness or the deadline.
    Wait,
    /// Work remains that the budget cut short; run again this loop turn.
    Again,
    Close,
}

/// The request being handled, for its log line and metrics.
#[derive(Debug, Clone)]
struct RequestInfo {
    method: &'static str,
    route: &'static str,
    path: String,
    keep_alive: bool,
    started_ms: u64,
    /// The client's address; written into events only when there are some.
    client: Option<IpAddr>,
    /// Who logged in (`client_ip` is filled from `client` when an event needs it).
    actor: Actor,
}

enum Current {
    None,
    /// The answer was decided at the head; it goes out at the request's end.
    Answered(Box<Outcome>, RequestInfo),
    Receiving(RequestInfo, Box<Exchange>),
    /// Waiting for webhooks; `Connection::resume` brings the answer.
    Parked(RequestInfo),
    /// The head waits for its credentials to be checked; the body (if any)
    /// stays unread until they are.
    Authenticating(Box<LoginWait>),
}

struct LoginWait {
    head: Box<RequestHead>,
    route: Route,
    info: RequestInfo,
    need: Need,
    login: Box<PendingLogin>,
}

pub struct Connection {
    pub transport: Transport,
    pub phase: Phase,
    /// When the current phase's time is up (monotonic ms).
    pub deadline_ms: u64,
    peer: Option<SocketAddr>,
    decoder: RequestDecoder,
    pending: Vec<u8>,
    current: Current,
    output: Output,
    /// No more requests are read: after `Connection: close`, an error, or shutdown.
    closing: bool,
    peer_closed: bool,
    lingered: u64,
    /// Start of the current transfer-rate window (Body and Writing phases).
    window_started_ms: u64,
    /// Bytes received (Body) or sent (Writing) in the current window.
    window_bytes: u64,
    /// Requests answered on this connection.
    answered: u64,
}

/// Per-loop values shared by all connections.
pub struct Context<'a> {
    pub registry: &'a mut Registry,
    pub auth: &'a mut Authenticator,
    pub trusted_proxies: &'a [IpNetwork],
    /// `[auth] token_realm`: where clients fetch tokens, when set explicitly.
    pub token_realm: Option<&'a str>,
    pub notifier: &'a mut Notifier<Waiter, Commit>,
    pub telemetry: &'a mut Telemetry,
    pub read_buffer: &'a mut [u8],
    pub now_ms: u64,
    pub unix_micros: u64,
    pub date: &'a str,
    pub timeouts: Timeouts,
    /// The connection being run.
    pub waiter: Waiter,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header_ms: u64,
    pub body_ms: u64,
    pub keep_alive_ms: u64,
    /// Slowest a body may arrive, or an answer be taken, averaged over each
    /// `body_ms` window (at least one byte a window, whatever it says).
    pub min_rate_bytes_per_sec: u64,
}

impl Connection {
    pub fn new(transport: Transport, max_header_size: usize, now_ms: u64, timeouts: Timeouts) -> Connection {
        let peer = transport.peer_addr();
        Connection {
            transport,
            // The first request head must arrive within the header timeout.
            phase: Phase::Head,
            deadline_ms: now_ms + timeouts.header_ms,
            peer,
            decoder: RequestDecoder::new(max_header_size),
            pending: Vec::new(),
            current: Current::None,
            output: Output::default(),
            closing: false,
            peer_closed: false,
            lingered: 0,
            window_started_ms: now_ms,
            window_bytes: 0,
            answered: 0,
        }
    }

    /// Reads, processes and writes as far as possible.
    pub fn run(&mut self, cx: &mut Context) -> Next {
        match self.run_inner(cx) {
            Ok(next) => next,
            Err(error) => {
                log::debug!(target: "angos::reactor", "connection error: {error}");
                Next::Close
            }
        }
    }

    fn run_inner(&mut self, cx: &mut Context) -> io::Result<Next> {
        if self.phase == Phase::Lingering {
            return self.linger(cx);
        }
        if let Some(next) = self.continue_login(cx) {
            return Ok(next);
        }
        let mut again = false;
        let mut read_budget = IO_BUDGET_BYTES;
        loop {
            let progressed = self.process(cx)?;
            match self.flush()? {
                // Writable readiness resumes us; buffered requests wait for it.
                Flush::Blocked => break,
                Flush::Budget => {
                    again = true;
                    break;
                }
                Flush::Done => {}
            }
            if self.closing || self.is_waiting() || self.peer_closed {
                break;
            }
            if progressed {
                // Answers went out; pipelined requests may already be buffered.
                continue;
            }
            if read_budget == 0 {
                again = true;
                break;
            }
            let n = match self.transport.read(cx.read_buffer) {
                Ok(0) => {
                    self.peer_closed = true;
                    // A request complete before the EOF still gets its answer.
                    self.process(cx)?;
                    self.flush()?;
                    break;
                }
                Ok(n) => n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            read_budget = read_budget.saturating_sub(n);
            if self.phase == Phase::Body {
                // Progress, judged against the minimum rate when the window ends.
                self.window_bytes += n as u64;
            }
            self.pending.extend_from_slice(&cx.read_buffer[..n]);
        }
        if self.closing && self.output.is_empty() && matches!(self.current, Current::None) {
            return self.start_linger(cx);
        }
        if self.peer_closed && self.output.is_empty() && !self.is_waiting() {
            // A half-closed peer gets its answers; then we are done.
            self.abort(cx);
            return Ok(Next::Close);
        }
        if let Current::Authenticating(wait) = &self.current
            && wait.login.not_before_ms <= cx.now_ms
        {
            // A check to run: no readiness event will come for it.
            again = true;
        }
        self.update_phase(cx);
        Ok(if again { Next::Again } else { Next::Wait })
    }

    /// Decodes buffered bytes into requests while answers are not backlogged;
    /// `true` when it handled anything.
    fn process(&mut self, cx: &mut Context) -> io::Result<bool> {
        let mut at = 0;
        let mut progressed = false;
        // Decoding continues on empty input too: an `End` may be due without more bytes.
        loop {
            if self.closing || self.is_waiting() || (self.output.is_backlogged() && self.decoder.is_idle()) {
                break;
            }
            let (consumed, event) = match self.decoder.decode(&self.pending[at..]) {
                Ok(step) => step,
                Err(error) => {
                    let response = RegistryError::new(ErrorCode::Unsupported, error.message())
                        .status(error.status())
                        .into_response();
                    self.abort(cx);
                    let info = RequestInfo {
                        method: "OTHER",
                        route: "malformed",
                        path: String::new(),
                        keep_alive: false,
                        started_ms: cx.now_ms,
                        client: None,
                        actor: Actor::default(),
                    };
                    self.send(response.with_close(), &info, cx);
                    break;
                }
            };
            at += consumed;
            let Some(event) = event else { break };
            progressed = true;
            match event {
                RequestEvent::Head(head) => self.on_head(head, cx),
                RequestEvent::Body(data) => {
                    if let Current::Receiving(info, exchange) = &mut self.current
                        && let Err(response) = cx.registry.body(exchange, data)
                    {
                        let info = info.clone();
                        self.current = Current::None;
                        self.send(response.with_close(), &info, cx);
                    }
                }
                RequestEvent::End => match std::mem::replace(&mut self.current, Current::None) {
                    Current::Answered(outcome, info) => self.conclude(*outcome, info, cx),
                    Current::Receiving(info, exchange) => {
                        let outcome = cx.registry.finish(*exchange);
                        self.conclude(outcome, info, cx);
                    }
                    Current::None | Current::Parked(_) | Current::Authenticating(_) => {}
                },
            }
        }
        self.pending.drain(..at.min(self.pending.len()));
        if self.closing {
            self.pending.clear();
        }
        if self.pending.is_empty() && self.pending.capacity() > PENDING_KEPT_BYTES_MAX {
            // A read of up to READ_BUFFER_BYTES passed through: do not keep
            // its capacity for the connection's life (thousands of slow
            // connections would each hold a read's worth).
            self.pending = Vec::new();
        }
        Ok(progressed)
    }

    fn on_head(&mut self, head: Box<RequestHead>, cx: &mut Context) {
        let client = self.client_address(&head, cx);
        // Routed once: the label, the permission it needs and the handler
        // all come from this one match.
        let route = crate::registry::route::route(&head.path);
        let info = RequestInfo {
            method: method_label(&head.method),
            route: route.label(),
            // Only a debug log line reads it: built only when one is written.
            path: if log::log_enabled!(target: "angos::http", log::Level::Debug) {
                head.log_target()
            } else {
                String::new()
            },
            keep_alive: head.keep_alive,
            started_ms: cx.now_ms,
            client,
            actor: Actor::default(),
        };
        let need = Need::of(&head, &route);
        if need == Need::Nothing {
            self.serve(head, route, info, need, Principal::Anonymous, cx);
            return;
        }
        match cx.auth.start(head.header("authorization"), client, cx.now_ms) {
            Login::Done(principal) => self.authorize(head, route, info, need, principal, cx),
            Login::Failed(failure) => {
                cx.telemetry.record_auth_failure(failure.label());
                let challenge = self.challenge(&head, &need, cx);
                self.refuse(Refused::BadCredentials(failure), &need, None, info, challenge, cx);
            }
            Login::Verify(login) => {
                if login.not_before_ms > cx.now_ms {
                    cx.telemetry.record_auth_delay();
                }
                self.phase = Phase::Authenticating;
                self.deadline_ms = if login.not_before_ms > cx.now_ms {
                    login.not_before_ms
                } else {
                    u64::MAX
                };
                self.current = Current::Authenticating(Box::new(LoginWait {
                    head,
                    route,
                    info,
                    need,
                    login,
                }));
            }
        }
    }

    /// The client's address: the peer, or who a trusted proxy says it serves.
    fn client_address(&self, head: &RequestHead, cx: &Context) -> Option<IpAddr> {
        let peer = self.peer?.ip();
        if cx.trusted_proxies.is_empty() {
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
            cx.trusted_proxies,
        ))
    }

    /// Runs a slice of a password check in progress; `Some` when the
    /// connection must wait (for the slice budget, or its address's delay).
    fn continue_login(&mut self, cx: &mut Context) -> Option<Next> {
        let Current::Authenticating(wait) = &mut self.current else {
            return None;
        };
        if cx.now_ms < wait.login.not_before_ms {
            return Some(Next::Wait);
        }
        self.deadline_ms = u64::MAX;
        let Some(outcome) = cx.auth.step(&mut wait.login, LOGIN_SLICE_ITERATIONS, cx.now_ms) else {
            return Some(Next::Again);
        };
        let Current::Authenticating(wait) = std::mem::replace(&mut self.current, Current::None) else {
            unreachable!("matched above");
        };
        let LoginWait {
            head,
            route,
            info,
            need,
            ..
        } = *wait;
        match outcome {
            Ok(principal) => self.authorize(head, route, info, need, principal, cx),
            Err(failure) => {
                log::warn!(
                    target: "angos::auth",
                    "failed login from {}: {}",
                    info.client
                        .map_or("an unknown address".to_string(), |address| address.to_string()),
                    failure.label().replace('_', " ")
                );
                cx.telemetry.record_auth_failure(failure.label());
                let challenge = self.challenge(&head, &need, cx);
                self.refuse(Refused::BadCredentials(failure), &need, None, info, challenge, cx);
            }
        }
        // The rest of the request (its body) is read by the normal loop.
        None
    }

    fn authorize(
        &mut self,
        head: Box<RequestHead>,
        route: Route,
        mut info: RequestInfo,
        need: Need,
        principal: Principal,
        cx: &mut Context,
    ) {
        if let Some(identity) = cx.auth.policy().identity(principal) {
            info.actor.id = Some(identity.id.clone());
            info.actor.username = Some(identity.username.clone());
        }
        // A ping with a valid token, even an anonymous one, is welcome: the
        // client has done what the challenge asked.
        let with_token = crate::auth::token::bearer(head.header("authorization")).is_some();
        let decision = match cx.auth.policy().decide(principal, &need) {
            Decision::Challenge if need == Need::Base && with_token => Decision::Allow,
            decision => decision,
        };
        let refused = match decision {
            Decision::Allow => return self.serve(head, route, info, need, principal, cx),
            Decision::Deny => Refused::Denied,
            Decision::Challenge if with_token => Refused::AnonymousToken,
            Decision::Challenge => Refused::NoCredentials,
        };
        let challenge = self.challenge(&head, &need, cx);
        let username = info.actor.username.clone();
        self.refuse(refused, &need, username.as_deref(), info, challenge, cx)
    }

    /// The `WWW-Authenticate` value for a request that needs credentials:
    /// the token endpoint, at the address the client reached us by, or Basic
    /// for the token endpoint itself (and where that address is unknown).
    fn challenge(&self, head: &RequestHead, need: &Need, cx: &Context) -> String {
        if *need == Need::Token {
            return cx.auth.basic_challenge();
        }
        let realm_url = match cx.token_realm {
            Some(url) => url.to_string(),
            None => {
                let Some(host) = head.header("host").filter(|host| is_plain_host(host)) else {
                    return cx.auth.basic_challenge();
                };
                let forwarded_proto = head
                    .header("x-forwarded-proto")
                    .filter(|_| self.peer_is_trusted_proxy(cx))
                    .filter(|proto| matches!(*proto, "http" | "https"));
                let scheme =
                    forwarded_proto.unwrap_or(if self.transport.is_tls() { "https" } else { "http" });
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
        cx.auth.bearer_challenge(&realm_url, scope.as_deref())
    }

    fn peer_is_trusted_proxy(&self, cx: &Context) -> bool {
        self.peer.is_some_and(|peer| {
            cx.trusted_proxies
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
        cx: &mut Context,
    ) {
        let response = crate::auth::refusal::refusal(refused, need, &challenge, username);
        let body_follows = self.decoder.in_body();
        self.answer_at_head(response.into(), info, body_follows, cx);
    }

    /// Hands an admitted request to its handler.
    fn serve(
        &mut self,
        head: Box<RequestHead>,
        route: Route,
        info: RequestInfo,
        need: Need,
        principal: Principal,
        cx: &mut Context,
    ) {
        let body_follows = self.decoder.in_body();
        if need == Need::Token {
            let token = cx.auth.issue_token(principal, cx.now_ms);
            let response = Response::json(
                200,
                &serde_json::json!({
                    "token": token,
                    "access_token": token,
                    "expires_in": crate::auth::token::TOKEN_LIFETIME_SECS,
                }),
            );
            self.answer_at_head(response.into(), info, body_follows, cx);
            return;
        }
        if route == Route::Metrics && matches!(head.method, Method::Get | Method::Head) {
            let mut text = String::new();
            cx.notifier.record_completed(cx.telemetry.metrics());
            cx.telemetry.metrics().render(&mut text);
            let response = Response::new(200)
                .header("Content-Type", crate::metrics::CONTENT_TYPE)
                .body(if head.method == Method::Head {
                    Body::Length(text.len() as u64)
                } else {
                    Body::Bytes(text.into_bytes())
                });
            self.answer_at_head(response.into(), info, body_follows, cx);
            return;
        }
        if route == Route::Admin {
            match cx.notifier.admin(cx.waiter, &head.method, &head.path, cx.now_ms) {
                Some(Admin::Respond(response)) => {
                    self.answer_at_head(response.into(), info, body_follows, cx)
                }
                Some(Admin::Parked) => {
                    self.current = Current::Parked(info);
                    self.phase = Phase::Parked;
                    self.deadline_ms = u64::MAX;
                }
                None => {}
            }
            return;
        }
        let policy = cx.auth.policy();
        let readable = |namespace: &str| policy.allows(principal, crate::auth::Action::Pull, namespace);
        match cx.registry.begin_routed(&head, route, &readable) {
            Begin::Answer(outcome) => self.answer_at_head(outcome, info, body_follows, cx),
            Begin::ReadBody(exchange) => {
                if head.expect_continue {
                    self.output.push_bytes(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                self.current = Current::Receiving(info, Box::new(exchange));
                self.phase = Phase::Body;
                self.deadline_ms = cx.now_ms + cx.timeouts.body_ms;
            }
        }
    }

    fn answer_at_head(
        &mut self,
        mut outcome: Outcome,
        info: RequestInfo,
        body_follows: bool,
        cx: &mut Context,
    ) {
        if body_follows {
            // The body is unwanted: answer now and stop reading. With
            // `Expect: 100-continue` the client never sends it at all.
            outcome.response.close = true;
            self.conclude(outcome, info, cx);
        } else {
            self.current = Current::Answered(Box::new(outcome), info);
        }
    }

    /// Answers a complete request, or parks it while webhooks are asked.
    fn conclude(&mut self, outcome: Outcome, info: RequestInfo, cx: &mut Context) {
        let Some(staged) = outcome.staged else {
            self.send(outcome.response, &info, cx);
            return;
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
        let submitted = cx
            .notifier
            .submit(cx.waiter, submission, cx.registry, cx.now_ms, cx.unix_micros);
        match submitted {
            Submitted::Respond(response) => self.send(response, &info, cx),
            Submitted::Parked => {
                self.current = Current::Parked(info);
                self.phase = Phase::Parked;
                // Webhook timeouts bound the wait; this only reclaims a lost one.
                self.deadline_ms = u64::MAX;
            }
        }
    }

    /// The answer of a parked request arrived.
    pub fn resume(&mut self, response: Response, cx: &mut Context) -> Next {
        if let Current::Parked(info) = std::mem::replace(&mut self.current, Current::None) {
            self.send(response, &info, cx);
        }
        self.phase = Phase::Writing;
        self.deadline_ms = cx.now_ms + cx.timeouts.body_ms;
        self.run(cx)
    }

    /// Queues an answer; a closing answer ends the reading of requests.
    fn send(&mut self, response: Response, info: &RequestInfo, cx: &mut Context) {
        let keep_alive = info.keep_alive && !response.close;
        self.answered += 1;
        cx.telemetry.record_request(
            info.route,
            info.method,
            response.status,
            cx.now_ms - info.started_ms,
        );
        log::debug!(
            target: "angos::http",
            "{} {} -> {} ({} ms)",
            info.method,
            info.path,
            response.status,
            cx.now_ms - info.started_ms
        );
        let mut head = Vec::with_capacity(256);
        response.write_head(&mut head, cx.date, keep_alive);
        match response.body {
            Body::Bytes(bytes) if info.method != "HEAD" => {
                head.extend_from_slice(&bytes);
                self.output.push_vec(head);
            }
            Body::Shared(bytes) if info.method != "HEAD" => {
                self.output.push_vec(head);
                self.output.push_shared(bytes);
            }
            Body::File { file, offset, len } if info.method != "HEAD" => {
                self.output.push_vec(head);
                self.output.push_file(file, offset, len);
            }
            _ => self.output.push_vec(head),
        }
        if !keep_alive {
            self.closing = true;
        }
    }

    fn flush(&mut self) -> io::Result<Flush> {
        if self.output.is_empty() {
            // TLS records (handshake, alerts) may wait for the socket too.
            return Ok(if self.transport.flushed()? {
                Flush::Done
            } else {
                Flush::Blocked
            });
        }
        let (flush, written) = self.output.flush(&mut self.transport, IO_BUDGET_BYTES)?;
        self.window_bytes += written;
        Ok(flush)
    }

    /// Picks the phase (and so the timeout) from what is in progress.
    fn update_phase(&mut self, cx: &Context) {
        let phase = match self.current {
            Current::Receiving(..) => Phase::Body,
            Current::Parked(_) => Phase::Parked,
            // Set when the check began; its deadline is the throttle's.
            Current::Authenticating(_) => return,
            _ if !self.output.is_empty() => Phase::Writing,
            _ if !self.pending.is_empty() || !self.decoder.is_idle() => Phase::Head,
            // Until the first request is answered, silence counts against the
            // header timeout (which also bounds a TLS handshake), not the
            // keep-alive one.
            _ if self.answered == 0 => Phase::Head,
            _ => Phase::Idle,
        };
        if phase != self.phase {
            self.deadline_ms = match phase {
                Phase::Idle => cx.now_ms + cx.timeouts.keep_alive_ms,
                Phase::Head => cx.now_ms + cx.timeouts.header_ms,
                Phase::Parked | Phase::Authenticating => u64::MAX,
                Phase::Body | Phase::Writing | Phase::Lingering => cx.now_ms + cx.timeouts.body_ms,
            };
            if matches!(phase, Phase::Body | Phase::Writing) {
                self.window_started_ms = cx.now_ms;
                self.window_bytes = 0;
            }
            self.phase = phase;
        } else if phase == Phase::Idle {
            // Idle time counts from the last activity (a request answered in
            // one turn passes from idle to idle). A head in progress is not
            // refreshed: that is what stops a slow client trickling bytes.
            self.deadline_ms = cx.now_ms + cx.timeouts.keep_alive_ms;
        }
    }

    /// Shuts our write side and drains what the peer still sends, briefly.
    fn start_linger(&mut self, cx: &mut Context) -> io::Result<Next> {
        if self.peer_closed {
            return Ok(Next::Close);
        }
        self.transport.shutdown_write();
        self.phase = Phase::Lingering;
        self.deadline_ms = cx.now_ms + 2_000;
        self.linger(cx)
    }

    fn linger(&mut self, cx: &mut Context) -> io::Result<Next> {
        loop {
            match self.transport.socket().read(cx.read_buffer) {
                Ok(0) => return Ok(Next::Close),
                Ok(n) => {
                    self.lingered += n as u64;
                    if self.lingered > LINGER_BYTES_MAX {
                        return Ok(Next::Close);
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(Next::Wait),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Ok(Next::Close),
            }
        }
    }

    /// The deadline passed: answer 408 where a request was in progress, close.
    pub fn on_timeout(&mut self, cx: &mut Context) -> Next {
        let info = RequestInfo {
            method: "OTHER",
            route: "timeout",
            path: String::new(),
            keep_alive: false,
            started_ms: cx.now_ms,
            client: None,
            actor: Actor::default(),
        };
        match self.phase {
            // A connection that never sent a byte gets no answer, just a close.
            Phase::Head if self.pending.is_empty() && self.decoder.is_idle() => Next::Close,
            Phase::Head => {
                log::debug!(target: "angos::reactor", "request head timed out");
                self.send(Response::new(408).with_close(), &info, cx);
                let _ = self.flush();
                Next::Close
            }
            // The window ended: enough bytes moved in it, and another begins.
            Phase::Body | Phase::Writing if self.window_met_rate(cx) => {
                self.window_started_ms = cx.now_ms;
                self.window_bytes = 0;
                self.deadline_ms = cx.now_ms + cx.timeouts.body_ms;
                Next::Wait
            }
            Phase::Body => {
                log::debug!(target: "angos::reactor", "request body timed out or below the minimum rate");
                self.abort(cx);
                self.send(Response::new(408).with_close(), &info, cx);
                let _ = self.flush();
                Next::Close
            }
            Phase::Parked => Next::Wait,
            // The address's wait is over: check the credentials now.
            Phase::Authenticating => self.run(cx),
            Phase::Idle | Phase::Writing | Phase::Lingering => Next::Close,
        }
    }

    /// Whether the window now ending moved at least one byte, and at least
    /// `min_rate_bytes_per_sec` on average: a client trickling a body or
    /// reading an answer slower than that is holding a slot (and, for an
    /// answer, its bytes) for nothing.
    fn window_met_rate(&self, cx: &Context) -> bool {
        let elapsed_ms = cx.now_ms.saturating_sub(self.window_started_ms);
        let required = (cx.timeouts.min_rate_bytes_per_sec.saturating_mul(elapsed_ms) / 1000).max(1);
        self.window_bytes >= required
    }

    /// Releases a request in progress (its upload keeps what arrived).
    pub fn abort(&mut self, cx: &mut Context) {
        if let Current::Receiving(_, exchange) = std::mem::replace(&mut self.current, Current::None) {
            cx.registry.abort(*exchange);
        }
    }

    /// The request body in progress, for the reactor to release when it closes us.
    pub fn take_exchange(&mut self) -> Option<Exchange> {
        match std::mem::replace(&mut self.current, Current::None) {
            Current::Receiving(_, exchange) => Some(*exchange),
            other => {
                self.current = other;
                None
            }
        }
    }

    /// A request is held (for webhooks or a login): read no further.
    fn is_waiting(&self) -> bool {
        matches!(self.current, Current::Parked(_) | Current::Authenticating(_))
    }

    /// For shutdown: `true` when nothing is in progress, so closing loses nothing.
    pub fn is_quiet(&self) -> bool {
        matches!(self.current, Current::None) && self.decoder.is_idle() && self.output.is_empty()
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
