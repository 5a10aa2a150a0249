//! The reactor: the only module that touches mio, sockets, signals and the
//! real clock. One thread, one `Poll`; inbound connections live in a slab
//! keyed by token; outbound webhook connections in another; every
//! connection deadline is an entry of the timer wheel, and the webhook
//! dispatcher's retries and attempt timeouts live in its own wheel.

mod connection;
mod disk_space;
mod file_worker;
mod outbound;
mod output;
mod ping;
mod reload;
mod signals;
mod storage_check;
mod transport;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

pub use crate::app::telemetry::Telemetry;
use crate::app::{Application, Waiter};
use crate::clock::{self, Clock};
use crate::config::{self, Config};
use crate::event_webhook::journal::{Journal, Recovery};
use crate::event_webhook::notifier::Notifier;
use crate::http::server::Timeouts;
use crate::maintenance::Job;
use crate::registry::Removal;
use crate::registry::{Commit, Registry};
use crate::timer::{TimerKey, TimerWheel};
use connection::{Connection, Next};
pub use disk_space::disk_space;
pub use ping::ping;
pub use storage_check::check as check_storage;
use transport::Transport;

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
const DNS: Token = Token(2);
const TLS_LISTENER: Token = Token(3);
/// The file worker's wake-up: a sync it ran is done.
const FILE_WORKER: Token = Token(FIRST_OUTBOUND - 1);
/// Inbound connection tokens start here; token = slot index + this.
/// Marks the outbound exchanges of the object storage's client, whose ids
/// are numbered apart from the pull-through cache's (both small counters).
const BUCKET_EXCHANGE: u64 = 1 << 62;

const FIRST_CONNECTION: usize = 4;
/// Outbound (webhook) connection tokens start here.
const FIRST_OUTBOUND: usize = 1 << 40;
/// Pending connections the kernel may queue before `accept`.
const LISTEN_BACKLOG: i32 = 4096;
/// The shared read buffer: large enough that a blob upload moves in big reads.
const READ_BUFFER_BYTES: usize = 256 * 1024;

struct Slot {
    connection: Connection,
    generation: u64,
    timer: Option<(TimerKey, u64)>,
    /// The slot is in `Reactor::again`: listed once however often its
    /// budget runs out before the list is run.
    again_queued: bool,
}

/// A timer entry names a connection slot and the generation it belonged to,
/// so a timer of a closed connection cannot touch its slot's next owner.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    slot: usize,
    generation: u64,
}

pub struct Reactor<C: Clock> {
    poll: Poll,
    /// Maintenance removals submitted so far: each is its own waiter.
    maintenance_removals: u64,
    listener: Option<TcpListener>,
    /// The HTTPS listener when `[server.tls] port` is set.
    tls_listener: Option<TcpListener>,
    /// Whether `listener` speaks TLS (`[server.tls]` without its own port).
    listener_tls: bool,
    local_addr: SocketAddr,
    /// The current certificate; new handshakes use it, reloaded when its files change.
    tls_config: Option<std::sync::Arc<rustls::ServerConfig>>,
    tls_watcher: Option<reload::Watcher>,
    signals: signals::SignalPipe,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    open: usize,
    next_generation: u64,
    timers: TimerWheel<Deadline>,
    registry: Registry,
    /// Removes what storage discards, and syncs uploads, off the loop.
    file_worker: file_worker::FileWorker,
    /// Syncs a connection step asked for, handed to the worker after it.
    file_syncs: Vec<(Waiter, PathBuf)>,
    auth: crate::auth::Authenticator,
    notifier: Notifier<Waiter, Commit>,
    /// Garbage collection, run in slices between connections' turns.
    maintenance: crate::maintenance::Maintenance,
    outbound: outbound::Outbound,
    /// The pull-through cache: its upstream exchanges go through `outbound`.
    mirror: crate::mirror::Mirror,
    /// The webhooks' `ca_bundle` and client certificate files: one replaced
    /// in place (same path, no configuration edit) still reaches the next
    /// handshake, as the server's own certificate does.
    webhook_tls_watcher: reload::Watcher,
    /// When idle upload sessions are next swept.
    next_upload_sweep_ms: u64,
    telemetry: Telemetry,
    watcher: reload::Watcher,
    clock: C,
    config: Config,
    read_buffer: Vec<u8>,
    /// Connections whose budget ran out and that must run again without an
    /// event, each once (`Slot::again_queued`): a connection run both by its
    /// event and from this list must not be listed twice, or the list (and
    /// so one turn of the loop) grows with every turn.
    again: Vec<usize>,
    date: String,
    date_secs: u64,
    shutting_down: bool,
    shutdown_deadline_ms: u64,
}

impl<C: Clock> Reactor<C> {
    /// Binds the listener and installs the signal handlers. `files` are the
    /// configuration files to watch for hot reload.
    pub fn bind(
        config: Config,
        files: Vec<PathBuf>,
        mut registry: Registry,
        journal: Option<(Journal, Recovery)>,
        clock: C,
    ) -> io::Result<Reactor<C>> {
        let address = SocketAddr::new(config.server.bind_address, config.server.port);
        let mut listener = listen(address)?;
        let local_addr = listener.local_addr()?;
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let file_worker = file_worker::FileWorker::start(mio::Waker::new(poll.registry(), FILE_WORKER)?);
        let (tls_config, tls_watcher) = match &config.server.tls {
            Some(tls) => {
                let loaded =
                    crate::tls::server_config(&tls.server_certificate_bundle, &tls.server_private_key)
                        .map_err(io::Error::other)?;
                let files = vec![
                    tls.server_certificate_bundle.clone(),
                    tls.server_private_key.clone(),
                ];
                (Some(loaded), Some(reload::Watcher::new(files, clock.now_ms())))
            }
            None => (None, None),
        };
        let (tls_listener, listener_tls) = match config.server.tls.as_ref().and_then(|tls| tls.port) {
            Some(port) => {
                let mut tls_listener = listen(SocketAddr::new(config.server.bind_address, port))?;
                poll.registry()
                    .register(&mut tls_listener, TLS_LISTENER, Interest::READABLE)?;
                (Some(tls_listener), false)
            }
            None => (None, config.server.tls.is_some()),
        };
        let signals = signals::SignalPipe::install()?;
        poll.registry()
            .register(&mut SourceFd(&signals.raw_fd()), SIGNALS, Interest::READABLE)?;
        let now = clock.now_ms();
        let mut telemetry = Telemetry::new();
        let mut notifier = Notifier::new(&config, telemetry.metrics(), now);
        notifier.set_time(now, clock.unix_micros());
        if let Some((journal, recovery)) = journal {
            notifier = notifier.with_journal(journal, recovery, now);
        }
        registry.set_interest(notifier.interest());
        let maintenance = crate::maintenance::Maintenance::new(&config, telemetry.metrics(), now);
        let mirror = crate::mirror::Mirror::new(&config, telemetry.metrics());
        Ok(Reactor {
            poll,
            maintenance_removals: 0,
            listener: Some(listener),
            tls_listener,
            listener_tls,
            local_addr,
            tls_config,
            tls_watcher,
            signals,
            slots: Vec::new(),
            free: Vec::new(),
            open: 0,
            next_generation: 0,
            timers: TimerWheel::new(now),
            registry,
            file_worker,
            file_syncs: Vec::new(),
            auth: crate::auth::Authenticator::new(&config),
            notifier,
            maintenance,
            outbound: outbound::Outbound::new(FIRST_OUTBOUND, DNS, crate::dns::system_resolver()),
            mirror,
            webhook_tls_watcher: reload::Watcher::new(webhook_tls_files(&config), now),
            next_upload_sweep_ms: now + config.storage.upload_session_idle_secs * 1000,
            telemetry,
            watcher: reload::Watcher::new(files, now),
            clock,
            config,
            read_buffer: vec![0; READ_BUFFER_BYTES],
            again: Vec::new(),
            date: String::new(),
            date_secs: u64::MAX,
            shutting_down: false,
            shutdown_deadline_ms: 0,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until SIGTERM or SIGINT, then drains and returns.
    pub fn run(&mut self) -> io::Result<()> {
        let scheme = if self.listener_tls { " (HTTPS)" } else { "" };
        log::info!(target: "angos::reactor", "listening on {}{scheme}", self.local_addr);
        if let Some(address) = self
            .tls_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
        {
            log::info!(target: "angos::reactor", "listening for HTTPS on {address}");
        }
        let mut events = Events::with_capacity(1024);
        let mut fired = Vec::new();
        self.check_certificates();
        // Deliveries resumed from the journal go out now, not at the first wake-up.
        self.pump_webhooks();
        loop {
            let timeout = if !self.again.is_empty()
                || self.outbound.has_work()
                || self.maintenance.has_work()
                || self.mirror.has_work()
                || self.bucket_has_work()
            {
                Some(Duration::ZERO)
            } else {
                let now = self.clock.now_ms();
                let deadlines = [
                    self.timers.next_deadline(),
                    self.notifier.dispatcher().poll_timeout(),
                    self.outbound.poll_timeout(),
                    self.mirror.poll_timeout(),
                    self.registry
                        .storage()
                        .bucket()
                        .and_then(|bucket| bucket.objects().poll_timeout()),
                    Some(self.watcher.next_check_ms),
                    Some(self.webhook_tls_watcher.next_check_ms),
                    Some(self.next_upload_sweep_ms),
                    self.maintenance.next_deadline_ms(),
                    self.shutting_down.then_some(self.shutdown_deadline_ms),
                ];
                deadlines
                    .into_iter()
                    .flatten()
                    .min()
                    .map(|deadline| Duration::from_millis(deadline.saturating_sub(now)))
            };
            if let Err(error) = self.poll.poll(&mut events, timeout)
                && error.kind() != io::ErrorKind::Interrupted
            {
                return Err(error);
            }
            self.refresh_date();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(false),
                    TLS_LISTENER => self.accept(true),
                    SIGNALS => {
                        if self.signals.drain() {
                            self.begin_shutdown();
                        }
                    }
                    FILE_WORKER => {
                        self.continue_synced();
                        self.take_verdicts();
                    }
                    token if self.outbound.owns(token) || token == DNS => {
                        let now = self.clock.now_ms();
                        self.outbound.handle_event(self.poll.registry(), token, now);
                    }
                    Token(token) => self.run_connection(token - FIRST_CONNECTION),
                }
            }
            for slot in std::mem::take(&mut self.again) {
                if let Some(Some(entry)) = self.slots.get_mut(slot) {
                    entry.again_queued = false;
                }
                self.run_connection(slot);
            }
            let now = self.clock.now_ms();
            self.notifier.set_time(now, self.clock.unix_micros());
            self.timers.poll(now, &mut fired);
            for deadline in fired.drain(..) {
                self.on_deadline(deadline, now);
            }
            self.notifier.dispatcher().handle_timeout(now);
            self.outbound.handle_timeout(self.poll.registry(), now);
            self.mirror.set_time(now, self.clock.unix_micros() / 1_000_000);
            self.mirror
                .handle_timeout(&mut self.registry, self.telemetry.metrics(), now);
            self.registry.set_clock(now, self.clock.unix_micros() / 1_000_000);
            if let Some(bucket) = self.registry.storage().bucket() {
                bucket.objects().handle_timeout();
            }
            self.pump_webhooks();
            // A turn's share of each cache fill being pushed into the bucket.
            self.mirror
                .push_fills(&mut self.registry, self.telemetry.metrics(), now);
            self.pump_mirror();
            if self.watcher.check(now) {
                self.reload();
            }
            if self
                .tls_watcher
                .as_mut()
                .is_some_and(|watcher| watcher.check(now))
            {
                self.reload_certificate();
            }
            if now >= self.next_upload_sweep_ms {
                self.sweep_uploads(now);
            }
            if !self.shutting_down {
                self.run_maintenance(now);
            }
            let discarded = self.registry.take_discarded();
            if !discarded.is_empty() || self.file_worker.has_backlog() {
                self.file_worker.remove(discarded);
            }
            if self.webhook_tls_watcher.check(now) {
                log::info!(target: "angos::event_webhook", "webhook TLS files changed, reloading them");
                self.outbound.reload_tls(self.config.webhooks.values());
                self.check_certificates();
            }
            if self.shutting_down && self.shutdown_step(now) {
                return Ok(());
            }
        }
    }

    /// Moves webhook work until it settles: dispatcher actions to the
    /// transport, attempt results back, and finished gates to their requests.
    fn pump_webhooks(&mut self) {
        loop {
            let now = self.clock.now_ms();
            let mut progressed = outbound::pump(
                self.notifier.dispatcher(),
                &mut self.outbound,
                self.poll.registry(),
                now,
            );
            while let Some((waiter, response)) = self.notifier.poll_ready(&mut self.registry, now) {
                progressed = true;
                self.resume(waiter, response);
            }
            if !progressed {
                break;
            }
        }
        self.notifier.record_completed(self.telemetry.metrics());
    }

    fn bucket_has_work(&self) -> bool {
        self.registry
            .storage()
            .bucket()
            .is_some_and(|bucket| bucket.objects().has_work())
    }

    /// Moves the pull-through cache's and the object storage's work until
    /// it settles: requests to the outbound client, answers back, staged
    /// changes to the notifier, and held requests and streaming readers to
    /// their connections.
    fn pump_mirror(&mut self) {
        loop {
            let now = self.clock.now_ms();
            let mut progressed = false;
            self.registry.set_clock(now, self.clock.unix_micros() / 1_000_000);
            while let Some(outgoing) = self
                .registry
                .storage()
                .bucket()
                .and_then(|bucket| bucket.objects().poll_outgoing())
            {
                progressed = true;
                self.outbound
                    .carry(self.poll.registry(), outgoing, BUCKET_EXCHANGE, now);
            }
            while let Some(outgoing) = self.mirror.poll_outgoing() {
                progressed = true;
                self.outbound.carry(self.poll.registry(), outgoing, 0, now);
            }
            while let Some((exchange, answer)) = self.outbound.poll_exchange_event() {
                progressed = true;
                if exchange & BUCKET_EXCHANGE != 0 {
                    if let Some(bucket) = self.registry.storage().bucket() {
                        bucket
                            .objects()
                            .handle_answer(exchange & !BUCKET_EXCHANGE, answer);
                    }
                    continue;
                }
                self.mirror.handle_answer(
                    exchange,
                    answer,
                    &mut self.registry,
                    self.telemetry.metrics(),
                    now,
                );
            }
            while let Some((fetch, outcome)) = self.mirror.poll_staged() {
                progressed = true;
                let Some(staged) = outcome.staged else {
                    continue;
                };
                let submission = crate::event_webhook::notifier::Submission {
                    drafts: staged.events,
                    actor: crate::event_webhook::event::Actor {
                        internal: Some("cache".into()),
                        ..Default::default()
                    },
                    commit: staged.commit,
                    response: outcome.response,
                };
                let submitted = self.notifier.submit(
                    Waiter::cache(fetch),
                    submission,
                    &mut self.registry,
                    now,
                    self.clock.unix_micros(),
                );
                if let crate::event_webhook::notifier::Submitted::Respond(response) = submitted {
                    self.mirror.stored(
                        fetch,
                        response.status < 300,
                        &mut self.registry,
                        self.telemetry.metrics(),
                    );
                }
            }
            for (slot, generation) in self.registry.take_woken() {
                progressed = true;
                let waiter = Waiter { slot, generation };
                if slot == crate::maintenance::BUCKET_COLLECTION_SLOT {
                    self.maintenance.bucket_woken(generation);
                    continue;
                }
                if self.notifier.is_applying(&waiter) {
                    // A staged change (after its webhooks) waited on the bucket.
                    if let Some((waiter, response)) =
                        self.notifier.resume_apply(waiter, &mut self.registry, now)
                    {
                        self.resume(waiter, response);
                    }
                    continue;
                }
                if let Some(fetch) = waiter.cache_fetch() {
                    self.mirror
                        .bucket_woken(fetch, &mut self.registry, self.telemetry.metrics(), now);
                    continue;
                }
                self.step(slot, Some(generation), |connection, app, buffer, now| {
                    connection.continue_held(app, buffer, now)
                });
            }
            let readers = self
                .registry
                .storage()
                .bucket()
                .map(|bucket| bucket.objects().take_readers())
                .unwrap_or_default();
            for (slot, generation) in readers {
                progressed = true;
                self.step(slot, Some(generation), |connection, app, buffer, now| {
                    connection.run(app, buffer, now)
                });
            }
            for (slot, generation) in self.mirror.take_woken() {
                progressed = true;
                self.step(slot, Some(generation), |connection, app, buffer, now| {
                    connection.continue_held(app, buffer, now)
                });
            }
            for (fetch, path) in self.mirror.take_syncs() {
                progressed = true;
                self.file_worker.sync(path, Waiter::cache(fetch));
            }
            if self.file_worker.has_synced_inline() {
                self.continue_synced();
            }
            for (slot, generation) in self.mirror.take_readers() {
                progressed = true;
                self.step(slot, Some(generation), |connection, app, buffer, now| {
                    connection.run(app, buffer, now)
                });
            }
            if !progressed {
                break;
            }
        }
    }

    /// This turn's slice of maintenance: the files a scrub checks go to the
    /// file thread; the removals of garbage collection and retention go
    /// through the notifier, so webhooks hear of them (and a `required` one
    /// may keep one).
    fn run_maintenance(&mut self, now: u64) {
        let unix_micros = self.clock.unix_micros();
        let work = self.maintenance.run(
            &mut self.registry,
            &self.config,
            self.telemetry.metrics(),
            now,
            unix_micros / 1_000_000,
        );
        for check in work.checks {
            if !self
                .file_worker
                .verify(check, self.maintenance.scrub_bytes_per_sec)
            {
                self.maintenance.abandon_scrub();
            }
        }
        let removals = work
            .deletions
            .into_iter()
            .map(|deletion| {
                let removal = Removal::Manifest {
                    digest: deletion.digest,
                    parents: deletion.parents,
                    former_tags: Vec::new(),
                };
                (deletion.namespace, removal, deletion.epoch, Job::Gc)
            })
            .chain(
                work.prunings
                    .into_iter()
                    .map(|pruning| (pruning.namespace, pruning.removal, pruning.epoch, Job::Prune)),
            );
        for (namespace, removal, epoch, job) in removals {
            self.maintenance_removals += 1;
            let submission = crate::maintenance::removal_submission(namespace, removal, epoch, job);
            let submitted = self.notifier.submit(
                Waiter::maintenance(job.number(), self.maintenance_removals),
                submission,
                &mut self.registry,
                now,
                unix_micros,
            );
            if let crate::event_webhook::notifier::Submitted::Respond(response) = submitted {
                self.maintenance
                    .answered(job, response.status < 300, self.telemetry.metrics());
            }
        }
    }

    /// The file thread's scrub verdicts; the next checks go out this turn.
    fn take_verdicts(&mut self) {
        let now = self.clock.now_ms();
        while let Some(verification) = self.file_worker.poll_verified() {
            self.maintenance
                .verified(&mut self.registry, verification, self.telemetry.metrics(), now);
        }
    }

    fn resume(&mut self, waiter: Waiter, response: crate::http::Response) {
        if let Some(fetch) = waiter.cache_fetch() {
            self.mirror.stored(
                fetch,
                response.status < 300,
                &mut self.registry,
                self.telemetry.metrics(),
            );
            return;
        }
        if let Some(job) = waiter.maintenance_job() {
            if let Some(job) = Job::from_number(job) {
                self.maintenance
                    .answered(job, response.status < 300, self.telemetry.metrics());
            }
            return;
        }
        // A client that left is not answered; the change (if any) is made regardless.
        self.step(
            waiter.slot,
            Some(waiter.generation),
            |connection, app, buffer, now| connection.resume(response, app, buffer, now),
        );
    }

    /// Applies a changed configuration file, or keeps the running one.
    fn reload(&mut self) {
        let loaded = match config::load_files(self.watcher.files()) {
            Ok(loaded) => loaded,
            Err(error) => {
                log::error!("configuration reload failed, keeping the running configuration: {error}");
                return;
            }
        };
        for warning in &loaded.warnings {
            log::warn!("{warning}");
        }
        let new = loaded.config;
        if new.server != self.config.server || new.storage != self.config.storage {
            log::warn!("changes to [server] and [blob_store] take effect after a restart");
        }
        self.notifier.reconfigure(&new, self.telemetry.metrics());
        self.auth.reconfigure(&new);
        self.registry.set_interest(self.notifier.interest());
        self.registry.set_limits(crate::registry::Limits::of(&new.global));
        self.maintenance.reconfigure(&new, self.clock.now_ms());
        self.mirror.reconfigure(&new);
        self.registry
            .set_tag_immutability(config::TagImmutability::of(&new));
        self.config.global = new.global;
        self.config.repositories = new.repositories;
        self.config.webhooks = new.webhooks;
        self.config.auth = new.auth;
        // Loading the configuration just checked these files; cached TLS
        // configurations are rebuilt from them, so a certificate replaced at
        // the same path together with the edit is not missed.
        self.outbound.reload_tls(self.config.webhooks.values());
        self.webhook_tls_watcher = reload::Watcher::new(webhook_tls_files(&self.config), self.clock.now_ms());
        self.check_certificates();
        let files: Vec<String> = self
            .watcher
            .files()
            .iter()
            .map(|file| file.display().to_string())
            .collect();
        log::info!("configuration reloaded from {}", files.join(", "));
    }

    fn refresh_date(&mut self) {
        let secs = self.clock.unix_micros() / 1_000_000;
        if secs != self.date_secs {
            self.date_secs = secs;
            self.date = clock::http_date(secs);
        }
    }

    /// Drops the upload sessions nobody used for an idle period: a session is
    /// a slot of a bounded pool, and clients that vanish mid-upload never
    /// release theirs.
    fn sweep_uploads(&mut self, now: u64) {
        let expired = self.registry.expire_idle_uploads();
        if expired > 0 {
            log::info!(target: "angos::reactor", "{expired} idle upload sessions expired");
        }
        self.next_upload_sweep_ms = now + self.config.storage.upload_session_idle_secs * 1000;
    }

    /// Reads the validity of every configured certificate into the metrics,
    /// and warns of any that is expired or not yet valid (at start, on
    /// reload, and when a certificate file changes).
    fn check_certificates(&mut self) {
        let now_secs = (self.clock.unix_micros() / 1_000_000) as i64;
        let mut validities = Vec::new();
        for file in certificate_files(&self.config) {
            match crate::tls::leaf_validity(&file) {
                Ok((not_before, not_after)) => {
                    if now_secs < not_before {
                        log::warn!(
                            target: "angos::reactor",
                            "certificate {} is not valid yet (from {} on)",
                            file.display(),
                            clock::http_date(not_before.max(0) as u64)
                        );
                    } else if now_secs >= not_after {
                        log::warn!(
                            target: "angos::reactor",
                            "certificate {} expired on {}",
                            file.display(),
                            clock::http_date(not_after.max(0) as u64)
                        );
                    }
                    validities.push((file.display().to_string(), not_before, not_after));
                }
                Err(why) => log::warn!(target: "angos::reactor", "certificate validity unknown: {why}"),
            }
        }
        self.telemetry.record_certificates(&validities);
    }

    /// A changed certificate or key file: new handshakes use the new pair;
    /// a pair that does not load keeps the running one.
    fn reload_certificate(&mut self) {
        let Some(tls) = &self.config.server.tls else {
            return;
        };
        match crate::tls::server_config(&tls.server_certificate_bundle, &tls.server_private_key) {
            Ok(loaded) => {
                self.tls_config = Some(loaded);
                log::info!(target: "angos::reactor", "TLS certificate reloaded");
                self.check_certificates();
            }
            // Mid-rotation (certificate written, key not yet) is normal: the
            // next change retries.
            Err(why) => {
                log::warn!(target: "angos::reactor", "TLS certificate not reloaded, keeping the current one: {why}")
            }
        }
    }

    fn accept(&mut self, tls: bool) {
        loop {
            let listener = if tls { &self.tls_listener } else { &self.listener };
            let Some(listener) = listener else { return };
            match listener.accept() {
                Ok((socket, _peer)) => self.admit(socket, tls || self.listener_tls),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    // EMFILE and friends: log, and let the next readiness retry.
                    log::warn!(target: "angos::reactor", "accept failed: {error}");
                    return;
                }
            }
        }
    }

    fn admit(&mut self, mut socket: TcpStream, tls: bool) {
        if self.open >= self.config.server.max_connections {
            log::warn!(
                target: "angos::reactor",
                "connection limit server.max_connections = {} reached; refusing a connection",
                self.config.server.max_connections
            );
            // Best effort: the socket is fresh, so a short answer fits its buffer.
            let answer = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\nRetry-After: 1\r\n\r\n";
            let _ = io::Write::write(&mut socket, answer);
            return;
        }
        let _ = socket.set_nodelay(true);
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let token = Token(slot + FIRST_CONNECTION);
        if let Err(error) =
            self.poll
                .registry()
                .register(&mut socket, token, Interest::READABLE | Interest::WRITABLE)
        {
            log::warn!(target: "angos::reactor", "cannot register a connection: {error}");
            self.free.push(slot);
            return;
        }
        let transport = match (&self.tls_config, tls) {
            (Some(config), true) => match Transport::tls(socket, config.clone()) {
                Ok(transport) => transport,
                Err(error) => {
                    log::warn!(target: "angos::reactor", "cannot start TLS: {error}");
                    self.free.push(slot);
                    return;
                }
            },
            _ => Transport::Plain(socket),
        };
        let now = self.clock.now_ms();
        // The handshake and the first request head share the header timeout.
        let connection = Connection::new(
            transport,
            self.config.server.max_header_size,
            now,
            self.timeouts(),
        );
        self.next_generation += 1;
        self.slots[slot] = Some(Slot {
            connection,
            generation: self.next_generation,
            timer: None,
            again_queued: false,
        });
        self.open += 1;
        // Data may already be waiting (edge-triggered: no event would say so again).
        self.run_connection(slot);
    }

    fn timeouts(&self) -> Timeouts {
        Timeouts {
            header_ms: self.config.server.header_timeout_ms,
            body_ms: self.config.server.body_timeout_ms,
            keep_alive_ms: self.config.server.keep_alive_timeout_ms,
            min_rate_bytes_per_sec: self.config.server.min_transfer_rate_bytes_per_sec,
        }
    }

    fn run_connection(&mut self, slot: usize) {
        self.step(slot, None, Connection::run);
        // A request may have started deliveries; send them without waiting a turn.
        self.pump_webhooks();
    }

    /// Runs `work` on a connection with the loop's shared state as its
    /// application, then acts on what it returned. With `generation`, only
    /// that incarnation of the slot.
    fn step(
        &mut self,
        slot: usize,
        generation: Option<u64>,
        work: impl FnOnce(&mut Connection, &mut Application, &mut [u8], u64) -> Next,
    ) {
        let now = self.clock.now_ms();
        let unix_micros = self.clock.unix_micros();
        self.notifier.set_time(now, unix_micros);
        self.registry.set_clock(now, unix_micros / 1_000_000);
        let Some(Some(entry)) = self.slots.get_mut(slot) else {
            return;
        };
        if generation.is_some_and(|generation| generation != entry.generation) {
            return;
        }
        let mut app = Application {
            registry: &mut self.registry,
            auth: &mut self.auth,
            trusted_proxies: &self.config.server.trusted_proxies,
            token_realm: self.config.auth.token_realm.as_deref(),
            notifier: &mut self.notifier,
            telemetry: &mut self.telemetry,
            unix_micros,
            date: &self.date,
            waiter: Waiter {
                slot,
                generation: entry.generation,
            },
            peer: entry.connection.peer,
            tls: entry.connection.transport.is_tls(),
            file_syncs: &mut self.file_syncs,
            maintenance: &mut self.maintenance,
            mirror: &mut self.mirror,
            config: &self.config,
        };
        match work(&mut entry.connection, &mut app, &mut self.read_buffer, now) {
            Next::Close => self.close(slot),
            Next::Again => {
                if let Some(Some(entry)) = self.slots.get_mut(slot)
                    && !entry.again_queued
                {
                    entry.again_queued = true;
                    self.again.push(slot);
                }
                self.arm_timer(slot);
            }
            Next::Wait => self.arm_timer(slot),
        }
        for (waiter, path) in std::mem::take(&mut self.file_syncs) {
            self.file_worker.sync(path, waiter);
        }
        if self.file_worker.has_synced_inline() {
            self.continue_synced();
        }
    }

    /// Continues the requests whose files the worker has synced.
    fn continue_synced(&mut self) {
        while let Some(waiter) = self.file_worker.poll_synced() {
            if let Some(fetch) = waiter.cache_fetch() {
                self.mirror
                    .synced(fetch, &mut self.registry, self.telemetry.metrics());
                continue;
            }
            // A client that left is not answered; its upload was released.
            self.step(
                waiter.slot,
                Some(waiter.generation),
                |connection, app, buffer, now| connection.continue_held(app, buffer, now),
            );
        }
    }

    /// Keeps one wheel entry per connection, at or before its deadline.
    /// Deadlines that move later (progress) do not touch the wheel: the entry
    /// fires, sees the later deadline, and re-arms.
    fn arm_timer(&mut self, slot: usize) {
        let Some(Some(entry)) = self.slots.get_mut(slot) else {
            return;
        };
        let Some(deadline) = entry.connection.machine.poll_timeout() else {
            return; // Held for webhooks: their own timeouts bound the wait.
        };
        if let Some((key, armed)) = entry.timer {
            if armed <= deadline {
                return;
            }
            self.timers.cancel(key);
        }
        let key = self.timers.insert(
            deadline,
            Deadline {
                slot,
                generation: entry.generation,
            },
        );
        entry.timer = Some((key, deadline));
    }

    fn on_deadline(&mut self, deadline: Deadline, now: u64) {
        let Some(Some(entry)) = self.slots.get_mut(deadline.slot) else {
            return;
        };
        if entry.generation != deadline.generation {
            return;
        }
        entry.timer = None;
        if entry
            .connection
            .machine
            .poll_timeout()
            .is_none_or(|deadline| now < deadline)
        {
            // The deadline moved later (progress) since this entry was armed.
            self.arm_timer(deadline.slot);
            return;
        }
        self.step(deadline.slot, Some(deadline.generation), Connection::on_timeout);
    }

    fn close(&mut self, slot: usize) {
        let Some(Some(mut entry)) = self.slots.get_mut(slot).map(Option::take) else {
            return;
        };
        if let Some((key, _)) = entry.timer {
            self.timers.cancel(key);
        }
        if let Some(request) = entry.connection.machine.take_request() {
            crate::app::release(&mut self.registry, request);
        }
        let _ = self
            .poll
            .registry()
            .deregister(entry.connection.transport.socket());
        self.free.push(slot);
        self.open -= 1;
    }

    fn begin_shutdown(&mut self) {
        if self.shutting_down {
            return;
        }
        log::info!(
            target: "angos::reactor",
            "shutdown requested; finishing requests in progress and draining webhook deliveries"
        );
        self.shutting_down = true;
        self.shutdown_deadline_ms = self.clock.now_ms() + self.config.global.shutdown_drain_secs * 1000;
        for mut listener in self.listener.take().into_iter().chain(self.tls_listener.take()) {
            let _ = self.poll.registry().deregister(&mut listener);
        }
    }

    /// One step of the graceful shutdown; `true` when the process may exit.
    fn shutdown_step(&mut self, now: u64) -> bool {
        for slot in 0..self.slots.len() {
            let quiet = self.slots[slot]
                .as_ref()
                .is_some_and(|entry| entry.connection.machine.is_quiet());
            if quiet {
                self.close(slot);
            }
        }
        let pending = self.notifier.dispatcher().async_pending();
        let in_flight = self.notifier.dispatcher().in_flight();
        if self.open == 0 && pending == 0 && in_flight == 0 {
            log::info!(target: "angos::reactor", "shutdown complete; 0 async deliveries abandoned");
            return true;
        }
        if now >= self.shutdown_deadline_ms {
            log::warn!(
                target: "angos::event_webhook",
                "shutdown drain time over: {pending} async deliveries abandoned (the {} still in the journal are delivered after restart), {} connections closed with requests in progress",
                self.notifier.journal_pending(),
                self.open
            );
            return true;
        }
        false
    }
}

/// Every TLS file the configured webhooks name, sorted and without repeats.
/// The certificate files a configuration names: the server's, and each
/// webhook's client certificate.
fn certificate_files(config: &Config) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = config
        .server
        .tls
        .iter()
        .map(|tls| tls.server_certificate_bundle.clone())
        .chain(
            config
                .webhooks
                .values()
                .filter_map(|webhook| Some(webhook.client_identity.as_ref()?.certificate.clone())),
        )
        .collect();
    files.sort();
    files.dedup();
    files
}

fn webhook_tls_files(config: &Config) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = config
        .webhooks
        .values()
        .flat_map(|webhook| {
            let identity = webhook.client_identity.as_ref();
            [
                webhook.ca_bundle.clone(),
                identity.map(|identity| identity.certificate.clone()),
                identity.map(|identity| identity.private_key.clone()),
            ]
        })
        .flatten()
        .collect();
    files.sort();
    files.dedup();
    files
}

/// Binds a listening socket with a backlog of `LISTEN_BACKLOG`.
fn listen(address: SocketAddr) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(address)?;
    // mio listens with std's backlog of 128; a burst of connections (a fleet
    // reconnecting) overflows it. Linux lets a second listen() raise it; the
    // kernel caps it at net.core.somaxconn.
    // SAFETY: the descriptor is the listener's own, open for this call.
    if unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), LISTEN_BACKLOG) } != 0 {
        log::warn!(target: "angos::reactor", "cannot raise the listen backlog: {}", io::Error::last_os_error());
    }
    Ok(listener)
}
