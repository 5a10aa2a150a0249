//! Outbound connections on the reactor: non-blocking DNS (our own resolver
//! over UDP), non-blocking connect, TLS through rustls, one HTTP/1.1
//! exchange per attempt, and keep-alive reuse per endpoint. It executes the
//! dispatcher's `Send`/`Abort` actions and reports each attempt's result,
//! and the pull-through cache's exchanges (`exchange`), whose answers it
//! hands back as they arrive (head, body pieces, end); it decides nothing
//! about retries, policies or what an answer means.
//! TLS client configurations (trust roots, client certificate) are built
//! from files on first use per set of files and rebuilt on `reload_tls`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use mio::net::{TcpStream, UdpSocket};
use mio::{Interest, Registry, Token};
use rustls::pki_types::ServerName;

use super::transport::Transport;
use crate::config::{ClientIdentity, Scheme, WebhookConfig};
use crate::dns::{LookupId, Resolver};
use crate::event_webhook::dispatcher::{Action, AttemptResult, DeliveryId, Dispatcher};
use crate::http::client::{ResponseDecoder, ResponseDone};
use crate::http::exchange::{Answer as ExchangeEvent, ExchangeId, Target};

/// Outbound connections at once, idle ones included; beyond it attempts fail.
const CONNECTIONS_MAX: usize = 1024;
/// Idle keep-alive connections kept per endpoint.
const IDLE_PER_ENDPOINT_MAX: usize = 8;
/// Largest response head accepted from a webhook receiver.
const RESPONSE_HEAD_BYTES_MAX: usize = 16 * 1024;
/// Response bytes (head and body) read, the body dropped, before the
/// connection is closed: only the status matters, and a receiver that
/// answers with an endless or huge body must not keep the attempt busy.
const RESPONSE_BYTES_MAX: u64 = 64 * 1024;
/// Bytes one connection may read per loop turn; the rest waits for the next
/// turn, so a fast sender cannot hold the reactor (STYLE.md, readiness).
const READ_BUDGET_BYTES: usize = 64 * 1024;

/// Who an attempt on a connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Owner {
    Delivery(DeliveryId),
    Exchange(ExchangeId),
}

/// Where a connection goes; connections are reused only for the same key,
/// so a connection made with one client certificate (or trust) never serves
/// a webhook configured with another.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Endpoint {
    scheme: Scheme,
    host: String,
    port: u16,
    tls: TlsFiles,
}

/// The files a TLS client configuration is built from; the cache key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct TlsFiles {
    ca_bundle: Option<PathBuf>,
    client_identity: Option<ClientIdentity>,
}

impl TlsFiles {
    fn of(webhook: &WebhookConfig) -> TlsFiles {
        TlsFiles {
            ca_bundle: webhook.ca_bundle.clone(),
            client_identity: webhook.client_identity.clone(),
        }
    }

    fn of_target(target: &Target) -> TlsFiles {
        TlsFiles {
            ca_bundle: target.ca_bundle.clone(),
            client_identity: target.client_identity.clone(),
        }
    }

    fn load(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        crate::tls::client_config(self.ca_bundle.as_deref(), self.client_identity.as_ref())
    }
}

enum Phase {
    /// Waiting for the resolver.
    Resolving(LookupId),
    /// TCP connect in progress to `addresses[next - 1]`.
    Connecting,
    /// TLS handshake and/or request and response in progress.
    Exchanging,
    /// Keep-alive, no attempt.
    Idle,
}

/// What an attempt writes: a request head, and a body shared with whoever
/// may send it again (an S3 part is not copied per attempt).
#[derive(Clone, Default)]
struct Payload {
    head: Rc<Vec<u8>>,
    body: Rc<Vec<u8>>,
}

impl Payload {
    fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }

    /// The bytes from `at` on, up to the end of the part they are in.
    fn from(&self, at: usize) -> &[u8] {
        match at.checked_sub(self.head.len()) {
            None => &self.head[at..],
            Some(in_body) => &self.body[in_body..],
        }
    }
}

struct Connection {
    endpoint: Endpoint,
    phase: Phase,
    /// Plain while connecting; TLS is layered on once connected (https).
    transport: Option<Transport>,
    addresses: Vec<IpAddr>,
    next_address: usize,
    owner: Option<Owner>,
    request: Payload,
    written: usize,
    /// The response being read.
    reader: ResponseReader,
    /// The attempt runs on a connection reused from the idle pool; if it dies
    /// before any response byte, the attempt moves to a fresh connection.
    reused: bool,
    /// Its answer is not read for now: whoever streams it is full.
    paused: bool,
}

pub struct Outbound {
    token_base: usize,
    dns_token: Token,
    connections: Vec<Option<Connection>>,
    free: Vec<usize>,
    open: usize,
    idle: HashMap<Endpoint, Vec<usize>>,
    by_owner: HashMap<Owner, usize>,
    resolver: Resolver,
    dns_sockets: Vec<UdpSocket>,
    /// Ordered so rebuilds log in a stable order.
    tls_configs: BTreeMap<TlsFiles, Arc<rustls::ClientConfig>>,
    results: VecDeque<(DeliveryId, AttemptResult)>,
    exchange_events: VecDeque<(ExchangeId, ExchangeEvent)>,
    buffer: Vec<u8>,
    /// Connections that used their read budget and must run again next
    /// turn without a readiness event (edge-triggered: none would come).
    again: Vec<usize>,
}

impl Outbound {
    /// Connections use tokens from `token_base` up; `dns_token` is the
    /// resolver's UDP sockets' token.
    pub fn new(token_base: usize, dns_token: Token, resolver: Resolver) -> Outbound {
        Outbound {
            token_base,
            dns_token,
            connections: Vec::new(),
            free: Vec::new(),
            open: 0,
            idle: HashMap::new(),
            by_owner: HashMap::new(),
            resolver,
            dns_sockets: Vec::new(),
            tls_configs: BTreeMap::new(),
            results: VecDeque::new(),
            exchange_events: VecDeque::new(),
            buffer: vec![0; 64 * 1024],
            again: Vec::new(),
        }
    }

    pub fn owns(&self, token: Token) -> bool {
        token.0 >= self.token_base
    }

    pub fn poll_result(&mut self) -> Option<(DeliveryId, AttemptResult)> {
        self.results.pop_front()
    }

    /// The next piece of an exchange's answer.
    pub fn poll_exchange_event(&mut self) -> Option<(ExchangeId, ExchangeEvent)> {
        self.exchange_events.pop_front()
    }

    /// The cache gave up on an exchange (its time ran out, or nobody wants
    /// the answer): its connection is closed (its state is unknown).
    pub fn cancel_exchange(&mut self, registry: &Registry, exchange: ExchangeId) {
        self.drop_owner(registry, Owner::Exchange(exchange));
    }

    /// Does what a sans-IO machine asked of the outbound client; `tag` is
    /// or-ed into its exchange ids (machines number theirs apart).
    pub fn carry(
        &mut self,
        registry: &Registry,
        outgoing: crate::http::exchange::Outgoing,
        tag: u64,
        now_ms: u64,
    ) {
        use crate::http::exchange::Outgoing;
        match outgoing {
            // An exchange: its answer comes back through `poll_exchange_event`.
            Outgoing::Send {
                exchange,
                target,
                request,
                body,
                head_request,
            } => {
                let endpoint = Endpoint {
                    scheme: target.scheme,
                    host: target.host.clone(),
                    port: target.port,
                    tls: TlsFiles::of_target(&target),
                };
                let payload = Payload {
                    head: Rc::new(request),
                    body,
                };
                let owner = Owner::Exchange(exchange | tag);
                self.start(registry, endpoint, owner, payload, head_request, now_ms);
            }
            Outgoing::Cancel { exchange } => self.cancel_exchange(registry, exchange | tag),
            Outgoing::Pause { exchange } => self.pause_exchange(exchange | tag),
            Outgoing::Resume { exchange } => self.resume_exchange(exchange | tag),
        }
    }

    /// Stops reading an exchange's answer until `resume_exchange`: what
    /// streams it has all it can hold (the peer waits, TCP holds the rest).
    pub fn pause_exchange(&mut self, exchange: ExchangeId) {
        if let Some(&slot) = self.by_owner.get(&Owner::Exchange(exchange))
            && let Some(Some(connection)) = self.connections.get_mut(slot)
        {
            connection.paused = true;
        }
    }

    /// Reads an exchange's answer again (from the next turn: the socket
    /// may hold bytes no readiness event will announce).
    pub fn resume_exchange(&mut self, exchange: ExchangeId) {
        if let Some(&slot) = self.by_owner.get(&Owner::Exchange(exchange))
            && let Some(Some(connection)) = self.connections.get_mut(slot)
            && connection.paused
        {
            connection.paused = false;
            if !self.again.contains(&slot) {
                self.again.push(slot);
            }
        }
    }

    /// The resolver's next deadline.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.resolver.poll_timeout()
    }

    /// Connections wait to run again: the next poll must not sleep.
    pub fn has_work(&self) -> bool {
        !self.again.is_empty()
    }

    /// The webhooks' TLS files may have changed on disk (or the configuration
    /// now names others): rebuilds every cached client configuration that a
    /// webhook in `webhooks` still uses and forgets the rest, so the next
    /// handshake reads the new certificate even at the same path. A set that
    /// does not load (say, a certificate rotated before its key) keeps the
    /// configuration it had and logs why; the next change retries. Idle
    /// keep-alive connections stay: they were authenticated when made.
    pub fn reload_tls<'a>(&mut self, webhooks: impl IntoIterator<Item = &'a WebhookConfig>) {
        let used: std::collections::BTreeSet<TlsFiles> = webhooks.into_iter().map(TlsFiles::of).collect();
        self.tls_configs.retain(|files, _| used.contains(files));
        for (files, config) in &mut self.tls_configs {
            match files.load() {
                Ok(loaded) => *config = loaded,
                Err(why) => log::warn!(
                    target: "angos::event_webhook",
                    "webhook TLS files not reloaded, keeping the loaded ones: {why}"
                ),
            }
        }
    }

    /// Starts an attempt: on an idle connection to the endpoint when there is
    /// one, else on a new one.
    pub fn send(
        &mut self,
        registry: &Registry,
        delivery: DeliveryId,
        webhook: &WebhookConfig,
        request: Rc<Vec<u8>>,
        now_ms: u64,
    ) {
        let endpoint = Endpoint {
            scheme: webhook.url.scheme,
            host: webhook.url.host.clone(),
            port: webhook.url.port,
            tls: TlsFiles::of(webhook),
        };
        self.start(
            registry,
            endpoint,
            Owner::Delivery(delivery),
            Payload {
                head: request,
                body: Rc::default(),
            },
            false,
            now_ms,
        );
    }

    /// Starts an attempt on an idle connection to the endpoint when there
    /// is one, else on a new one.
    fn start(
        &mut self,
        registry: &Registry,
        endpoint: Endpoint,
        owner: Owner,
        request: Payload,
        head_request: bool,
        now_ms: u64,
    ) {
        while let Some(slot) = self.idle.get_mut(&endpoint).and_then(Vec::pop) {
            // A pooled connection the peer closed meanwhile is dropped, not used.
            let alive = self.connections[slot]
                .as_mut()
                .is_some_and(|connection| matches!(connection.check_idle(&mut self.buffer), Step::Wait));
            if !alive {
                self.close(registry, slot);
                continue;
            }
            self.by_owner.insert(owner, slot);
            if let Some(connection) = self.connections[slot].as_mut() {
                connection.begin_attempt(owner, request, head_request, true);
            }
            self.drive(registry, slot, now_ms);
            return;
        }
        self.open_new(registry, endpoint, owner, request, head_request, now_ms);
    }

    fn open_new(
        &mut self,
        registry: &Registry,
        endpoint: Endpoint,
        owner: Owner,
        request: Payload,
        head_request: bool,
        now_ms: u64,
    ) {
        if self.open >= CONNECTIONS_MAX && !self.close_one_idle(registry) {
            self.report_failure(
                owner,
                format!("too many outbound connections ({CONNECTIONS_MAX})"),
            );
            return;
        }
        let phase = match endpoint.host.parse::<IpAddr>() {
            Ok(_) => Phase::Connecting,
            Err(_) => Phase::Resolving(self.resolver.resolve(&endpoint.host, now_ms)),
        };
        let addresses = endpoint
            .host
            .parse::<IpAddr>()
            .map(|ip| vec![ip])
            .unwrap_or_default();
        let mut connection = Connection {
            endpoint,
            phase,
            transport: None,
            addresses,
            next_address: 0,
            owner: None,
            request: Payload::default(),
            written: 0,
            reader: ResponseReader::new(None),
            reused: false,
            paused: false,
        };
        connection.begin_attempt(owner, request, head_request, false);
        let slot = self.free.pop().unwrap_or_else(|| {
            self.connections.push(None);
            self.connections.len() - 1
        });
        let connecting = matches!(connection.phase, Phase::Connecting);
        self.connections[slot] = Some(connection);
        self.open += 1;
        self.by_owner.insert(owner, slot);
        if connecting {
            self.connect_next(registry, slot);
        } else {
            self.flush_dns(registry);
            self.take_dns_results(registry);
        }
    }

    /// The attempt ran out of time: its connection is closed (its state is unknown).
    pub fn abort(&mut self, registry: &Registry, delivery: DeliveryId) {
        self.drop_owner(registry, Owner::Delivery(delivery));
    }

    fn drop_owner(&mut self, registry: &Registry, owner: Owner) {
        if let Some(slot) = self.by_owner.remove(&owner) {
            if let Some(Some(connection)) = self.connections.get_mut(slot) {
                connection.owner = None;
            }
            self.close(registry, slot);
        }
    }

    /// An attempt ended in failure: the dispatcher or the cache hears why.
    fn report_failure(&mut self, owner: Owner, reason: String) {
        match owner {
            Owner::Delivery(delivery) => self.results.push_back((delivery, AttemptResult::Failed(reason))),
            Owner::Exchange(exchange) => self
                .exchange_events
                .push_back((exchange, ExchangeEvent::Failed(reason))),
        }
    }

    pub fn handle_event(&mut self, registry: &Registry, token: Token, now_ms: u64) {
        if token == self.dns_token {
            self.receive_dns(now_ms);
            self.take_dns_results(registry);
            return;
        }
        let slot = token.0 - self.token_base;
        self.drive(registry, slot, now_ms);
    }

    pub fn handle_timeout(&mut self, registry: &Registry, now_ms: u64) {
        for slot in std::mem::take(&mut self.again) {
            self.drive(registry, slot, now_ms);
        }
        self.resolver.handle_timeout(now_ms);
        self.flush_dns(registry);
        self.take_dns_results(registry);
    }

    fn receive_dns(&mut self, now_ms: u64) {
        for socket in &self.dns_sockets {
            loop {
                match socket.recv_from(&mut self.buffer) {
                    Ok((n, from)) => self.resolver.handle_datagram(from, &self.buffer[..n], now_ms),
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
    }

    /// Sends the resolver's queries, opening a UDP socket per address family on first use.
    fn flush_dns(&mut self, registry: &Registry) {
        while let Some((server, packet)) = self.resolver.poll_transmit() {
            let wanted_bind: SocketAddr = if server.is_ipv6() {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            };
            let existing = self.dns_sockets.iter().position(|socket| {
                socket
                    .local_addr()
                    .is_ok_and(|addr| addr.is_ipv6() == server.is_ipv6())
            });
            let index = match existing {
                Some(index) => index,
                None => match UdpSocket::bind(wanted_bind) {
                    Ok(mut socket) => {
                        if let Err(error) = registry.register(&mut socket, self.dns_token, Interest::READABLE)
                        {
                            log::warn!(target: "angos::event_webhook", "DNS socket: {error}");
                            continue;
                        }
                        self.dns_sockets.push(socket);
                        self.dns_sockets.len() - 1
                    }
                    Err(error) => {
                        log::warn!(target: "angos::event_webhook", "DNS socket: {error}");
                        continue;
                    }
                },
            };
            // A lost datagram is the resolver's timeout to handle.
            let _ = self.dns_sockets[index].send_to(&packet, server);
        }
    }

    fn take_dns_results(&mut self, registry: &Registry) {
        self.flush_dns(registry);
        while let Some((lookup, result)) = self.resolver.poll_result() {
            let waiting: Vec<usize> = self
                .connections
                .iter()
                .enumerate()
                .filter_map(|(slot, connection)| match connection {
                    Some(Connection {
                        phase: Phase::Resolving(id),
                        ..
                    }) if *id == lookup => Some(slot),
                    _ => None,
                })
                .collect();
            for slot in waiting {
                match &result {
                    Ok(addresses) if !addresses.is_empty() => {
                        if let Some(connection) = self.connections[slot].as_mut() {
                            connection.addresses = addresses.clone();
                            connection.phase = Phase::Connecting;
                        }
                        self.connect_next(registry, slot);
                    }
                    Ok(_) => self.fail(registry, slot, "DNS: no addresses".into()),
                    Err(error) => {
                        let host = self.connections[slot]
                            .as_ref()
                            .map(|connection| connection.endpoint.host.clone())
                            .unwrap_or_default();
                        self.fail(registry, slot, format!("{error} ({host})"));
                    }
                }
            }
        }
    }

    /// Starts a non-blocking connect to the next address, or fails the attempt.
    fn connect_next(&mut self, registry: &Registry, slot: usize) {
        let token = Token(self.token_base + slot);
        let Some(connection) = self.connections[slot].as_mut() else {
            return;
        };
        let mut last_error = None;
        while connection.next_address < connection.addresses.len() {
            let address = SocketAddr::new(
                connection.addresses[connection.next_address],
                connection.endpoint.port,
            );
            connection.next_address += 1;
            match TcpStream::connect(address) {
                Ok(mut socket) => {
                    if let Some(mut old) = connection.transport.take() {
                        let _ = registry.deregister(old.socket());
                    }
                    if let Err(error) =
                        registry.register(&mut socket, token, Interest::READABLE | Interest::WRITABLE)
                    {
                        last_error = Some(format!("connect to {address}: {error}"));
                        continue;
                    }
                    let _ = socket.set_nodelay(true);
                    connection.transport = Some(Transport::Plain(socket));
                    connection.phase = Phase::Connecting;
                    return;
                }
                Err(error) => last_error = Some(format!("connect to {address} failed: {error}")),
            }
        }
        let reason = last_error.unwrap_or_else(|| "no address to connect to".into());
        self.fail(registry, slot, reason);
    }

    /// Moves a connection forward after readiness (or a fresh start).
    fn drive(&mut self, registry: &Registry, slot: usize, now_ms: u64) {
        let Some(Some(connection)) = self.connections.get_mut(slot) else {
            return;
        };
        if let Phase::Connecting = connection.phase {
            let Some(socket) = connection.transport.as_mut().map(Transport::socket) else {
                return;
            };
            match socket.take_error() {
                Ok(Some(error)) | Err(error) => {
                    let reason = format!(
                        "connect to {}:{} failed: {error}",
                        connection.endpoint.host, connection.endpoint.port
                    );
                    if connection.next_address < connection.addresses.len() {
                        self.connect_next(registry, slot);
                    } else {
                        self.fail(registry, slot, reason);
                    }
                    return;
                }
                Ok(None) => {}
            }
            match socket.peer_addr() {
                Ok(_) => {}
                // Spurious wake-up: the connect is still in progress (mio docs).
                Err(error) if error.kind() == io::ErrorKind::NotConnected => return,
                Err(error) => {
                    let reason = format!(
                        "connect to {}:{} failed: {error}",
                        connection.endpoint.host, connection.endpoint.port
                    );
                    self.fail(registry, slot, reason);
                    return;
                }
            }
            if connection.endpoint.scheme == Scheme::Https {
                let config = match self.tls_configs.get(&connection.endpoint.tls) {
                    Some(config) => config.clone(),
                    None => match connection.endpoint.tls.load() {
                        Ok(config) => {
                            self.tls_configs
                                .insert(connection.endpoint.tls.clone(), config.clone());
                            config
                        }
                        Err(reason) => {
                            self.fail(registry, slot, reason);
                            return;
                        }
                    },
                };
                let Some(Some(connection)) = self.connections.get_mut(slot) else {
                    return;
                };
                let server_name = match ServerName::try_from(connection.endpoint.host.clone()) {
                    Ok(name) => name,
                    Err(error) => {
                        let reason = format!("TLS: invalid server name: {error}");
                        self.fail(registry, slot, reason);
                        return;
                    }
                };
                let Some(plain) = connection.transport.take() else {
                    return;
                };
                match Transport::tls_client(plain.into_socket(), config, server_name) {
                    Ok(tls) => connection.transport = Some(tls),
                    Err(error) => {
                        let reason = format!("TLS: {error}");
                        self.fail(registry, slot, reason);
                        return;
                    }
                }
            }
            let Some(Some(connection)) = self.connections.get_mut(slot) else {
                return;
            };
            connection.phase = Phase::Exchanging;
        }
        let Some(Some(connection)) = self.connections.get_mut(slot) else {
            return;
        };
        let step = match connection.phase {
            Phase::Exchanging => connection.exchange(&mut self.buffer),
            Phase::Idle => connection.check_idle(&mut self.buffer),
            _ => return,
        };
        if let Some(Owner::Exchange(exchange)) = connection.owner {
            for event in connection.reader.events.drain(..) {
                self.exchange_events.push_back((exchange, event));
            }
        }
        match step {
            Step::Wait => {}
            // Listed once: a connection run both by its event and from this
            // list must not be listed twice, or the list (and so one turn)
            // grows with every turn (a cache fill reads on every turn).
            Step::Again if !self.again.contains(&slot) => self.again.push(slot),
            Step::Again => {}
            Step::Done(done) => {
                match connection.owner.take() {
                    Some(owner @ Owner::Delivery(delivery)) => {
                        self.by_owner.remove(&owner);
                        let result = AttemptResult::Answered {
                            status: done.status,
                            retry_after: done.retry_after,
                        };
                        self.results.push_back((delivery, result));
                    }
                    Some(owner @ Owner::Exchange(exchange)) => {
                        self.by_owner.remove(&owner);
                        self.exchange_events.push_back((exchange, ExchangeEvent::End));
                    }
                    None => {}
                }
                let endpoint = connection.endpoint.clone();
                let pool = self.idle.entry(endpoint).or_default();
                if done.keep_alive && pool.len() < IDLE_PER_ENDPOINT_MAX {
                    connection.phase = Phase::Idle;
                    pool.push(slot);
                } else {
                    self.close(registry, slot);
                }
            }
            Step::Failed(reason) => {
                // Only while the request was not yet fully written: the receiver
                // cannot have acted on it, so a second try is not a second attempt
                // (at most max_retries + 1 attempts reach a receiver).
                let can_retry = connection.reused && !connection.reader.started && !connection.request_sent();
                if can_retry && let Some(owner) = connection.owner.take() {
                    // The peer closed a keep-alive connection we took from the pool:
                    // a race, not a failure of the receiver. Try a fresh connection.
                    let endpoint = connection.endpoint.clone();
                    let request = connection.request.clone();
                    let head_request = connection.reader.head_request;
                    self.by_owner.remove(&owner);
                    self.close(registry, slot);
                    self.open_new(registry, endpoint, owner, request, head_request, now_ms);
                    return;
                }
                self.fail(registry, slot, reason);
            }
            Step::Closed => self.close(registry, slot),
        }
    }

    /// Reports the attempt on `slot` as failed and closes the connection.
    fn fail(&mut self, registry: &Registry, slot: usize, reason: String) {
        if let Some(Some(connection)) = self.connections.get_mut(slot)
            && let Some(owner) = connection.owner.take()
        {
            self.by_owner.remove(&owner);
            self.report_failure(owner, reason);
        }
        self.close(registry, slot);
    }

    fn close(&mut self, registry: &Registry, slot: usize) {
        let Some(Some(mut connection)) = self.connections.get_mut(slot).map(Option::take) else {
            return;
        };
        if let Phase::Resolving(lookup) = connection.phase {
            self.resolver.cancel(lookup);
        }
        if let Some(pool) = self.idle.get_mut(&connection.endpoint) {
            pool.retain(|idle| *idle != slot);
        }
        if let Some(owner) = connection.owner.take() {
            self.by_owner.remove(&owner);
        }
        if let Some(mut transport) = connection.transport.take() {
            let _ = registry.deregister(transport.socket());
        }
        self.free.push(slot);
        self.open -= 1;
    }

    fn close_one_idle(&mut self, registry: &Registry) -> bool {
        let victim = self.idle.values().flat_map(|pool| pool.first().copied()).next();
        match victim {
            Some(slot) => {
                self.close(registry, slot);
                true
            }
            None => false,
        }
    }
}

enum Step {
    Wait,
    /// The read budget ran out with bytes possibly left: run again next turn.
    Again,
    /// A response: its status, `Retry-After`, and whether the connection
    /// may be reused.
    Done(ResponseDone),
    Failed(String),
    /// An idle connection the peer closed.
    Closed,
}

/// Hands the dispatcher's requests to the outbound side and their results
/// back until neither has more: the one webhook pump, for the server's loop
/// and for `angos webhook test`. `true` when anything moved.
pub fn pump(dispatcher: &mut Dispatcher, outbound: &mut Outbound, registry: &Registry, now_ms: u64) -> bool {
    let mut moved = false;
    loop {
        let mut progressed = false;
        while let Some(action) = dispatcher.poll_action() {
            progressed = true;
            match action {
                Action::Send {
                    delivery,
                    webhook,
                    request,
                } => outbound.send(registry, delivery, &webhook, request, now_ms),
                Action::Abort { delivery } => outbound.abort(registry, delivery),
            }
        }
        while let Some((delivery, result)) = outbound.poll_result() {
            progressed = true;
            dispatcher.handle_result(delivery, result, now_ms);
        }
        if !progressed {
            return moved;
        }
        moved = true;
    }
}

impl Connection {
    /// Every byte of the request was handed to the socket (or to TLS).
    fn request_sent(&self) -> bool {
        self.written >= self.request.len()
    }

    fn begin_attempt(&mut self, owner: Owner, request: Payload, head_request: bool, reused: bool) {
        self.owner = Some(owner);
        self.request = request;
        self.written = 0;
        self.reader = ResponseReader::new(match owner {
            Owner::Delivery(_) => None,
            Owner::Exchange(_) => Some(head_request),
        });
        self.reused = reused;
        self.paused = false;
        if reused {
            self.phase = Phase::Exchanging;
        }
    }

    /// Writes the request and reads the response as far as the socket allows.
    fn exchange(&mut self, buffer: &mut [u8]) -> Step {
        match self.pump(buffer) {
            Ok(step) => step,
            Err(error) => Step::Failed(error),
        }
    }

    fn pump(&mut self, buffer: &mut [u8]) -> Result<Step, String> {
        let Some(transport) = self.transport.as_mut() else {
            return Err("no socket".into());
        };
        // Through TLS, plaintext is buffered until the handshake is done
        // (within the transport's buffer limit).
        while self.written < self.request.len() {
            match transport.write(self.request.from(self.written)) {
                Ok(0) => return Err("connection closed while sending".into()),
                Ok(n) => self.written += n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(io_failure("send failed", &error)),
            }
        }
        if self.paused {
            return Ok(Step::Wait);
        }
        let mut eof = false;
        let mut budget = READ_BUDGET_BYTES;
        loop {
            if budget == 0 {
                return Ok(Step::Again);
            }
            let room = buffer.len().min(budget);
            match transport.read(&mut buffer[..room]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    budget -= n;
                    if let Some(step) = self.reader.receive(&buffer[..n], &self.endpoint.host)? {
                        return Ok(step);
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(io_failure("receive failed", &error)),
            }
        }
        if eof {
            if self.reader.started {
                return match self.reader.decoder.eof() {
                    Ok(done) => Ok(Step::Done(ResponseDone {
                        keep_alive: false,
                        ..done
                    })),
                    Err(error) => Err(format!("malformed response: {error}")),
                };
            }
            return Err("connection closed before a response".into());
        }
        Ok(Step::Wait)
    }

    /// An idle connection became readable: the peer closed it (or sent junk).
    fn check_idle(&mut self, buffer: &mut [u8]) -> Step {
        let Some(transport) = self.transport.as_mut() else {
            return Step::Closed;
        };
        match transport.socket().read(buffer) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Step::Wait,
            _ => Step::Closed,
        }
    }
}

/// A socket error as a delivery's failure reason; TLS failures name themselves.
fn io_failure(doing: &str, error: &io::Error) -> String {
    if error.kind() == io::ErrorKind::InvalidData {
        error.to_string()
    } else {
        format!("{doing}: {error}")
    }
}

/// Reads one response: decodes each read as it arrives, so what is held is
/// at most a partial head. For a webhook it stops once the head (status,
/// `Retry-After`) is known and the response ran past `RESPONSE_BYTES_MAX`;
/// for an exchange it hands out the head and every body byte as events.
struct ResponseReader {
    decoder: ResponseDecoder,
    /// An exchange's reader (heads and bodies wanted), not a webhook's.
    reading: bool,
    head_request: bool,
    /// What the last reads brought, for the exchange's owner.
    events: Vec<ExchangeEvent>,
    /// Plaintext received and not yet decoded (a partial head).
    pending: Vec<u8>,
    /// A response byte arrived.
    started: bool,
    /// Bytes of the response decoded so far.
    bytes: u64,
}

impl ResponseReader {
    /// `reading`: `Some(head_request)` for an exchange.
    fn new(reading: Option<bool>) -> ResponseReader {
        ResponseReader {
            decoder: match reading {
                Some(head_request) => ResponseDecoder::reading(RESPONSE_HEAD_BYTES_MAX, head_request),
                None => ResponseDecoder::new(RESPONSE_HEAD_BYTES_MAX),
            },
            reading: reading.is_some(),
            head_request: reading.unwrap_or(false),
            events: Vec::new(),
            pending: Vec::new(),
            started: false,
            bytes: 0,
        }
    }

    /// Decodes `data`: `Some` once the response is complete, or once its
    /// body ran past `RESPONSE_BYTES_MAX` (the status is known; the rest is
    /// not read and the connection is not reused).
    fn receive(&mut self, data: &[u8], host: &str) -> Result<Option<Step>, String> {
        self.started = true;
        if self.reading {
            return self.receive_parts(data);
        }
        self.pending.extend_from_slice(data);
        let (consumed, done) = self
            .decoder
            .decode(&self.pending)
            .map_err(|error| format!("malformed response: {error}"))?;
        self.pending.drain(..consumed);
        self.bytes += consumed as u64;
        if let Some(done) = done {
            // Bytes after the response on a connection we own are a protocol
            // error; the connection cannot be reused.
            let keep_alive = done.keep_alive && self.pending.is_empty();
            return Ok(Some(Step::Done(ResponseDone { keep_alive, ..done })));
        }
        match self.decoder.head_in_body() {
            Some(head) if self.bytes > RESPONSE_BYTES_MAX => {
                log::debug!(
                    target: "angos::event_webhook",
                    "response from {host} longer than {RESPONSE_BYTES_MAX} bytes: not read further"
                );
                Ok(Some(Step::Done(ResponseDone {
                    keep_alive: false,
                    ..head
                })))
            }
            _ => Ok(None),
        }
    }

    fn receive_parts(&mut self, data: &[u8]) -> Result<Option<Step>, String> {
        // Body bytes go straight through: only a partial head is kept.
        let input: &[u8] = if self.pending.is_empty() {
            data
        } else {
            self.pending.extend_from_slice(data);
            &self.pending
        };
        let (consumed, parts) = self
            .decoder
            .decode_parts(input)
            .map_err(|error| format!("malformed response: {error}"))?;
        let leftover = input.len() - consumed;
        if let Some(head) = parts.head {
            self.events.push(ExchangeEvent::Head(head));
        }
        if !parts.body.is_empty() {
            self.events.push(ExchangeEvent::Body(parts.body));
        }
        let rest = input[consumed..].to_vec();
        self.pending = rest;
        if let Some(done) = parts.done {
            let keep_alive = done.keep_alive && leftover == 0;
            return Ok(Some(Step::Done(ResponseDone { keep_alive, ..done })));
        }
        Ok(None)
    }
}
