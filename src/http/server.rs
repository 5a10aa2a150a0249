//! One inbound HTTP/1.1 connection as a sans-IO machine: it takes the bytes
//! the peer sent and the time, decodes requests (pipelined ones answered in
//! order), hands them to a `Service`, and queues the answers. It owns the
//! connection's phases and their timeouts (header, body with a minimum
//! transfer rate, keep-alive), requests held while the service waits
//! (webhooks, a password check), and the lingering close. The reactor moves
//! bytes between the socket and this machine and tells it the time.
//!
//! A turn of the reactor: `wake` (a held request whose time came), then
//! `process` / flush `output` / `handle_input` while `wants_input`, then
//! `poll_state` for what to do with the socket; `handle_timeout` when
//! `poll_timeout` passed, `resume` when a held answer arrives.

use super::output::OutputQueue;
use super::{Body, Method, RequestDecoder, RequestEvent, RequestHead, Response};
use crate::http::oci_error::{ErrorCode, RegistryError};

/// Capacity an idle connection's request buffer may keep between reads.
const PENDING_KEPT_BYTES_MAX: usize = 16 * 1024;
/// What a lingering close reads and drops before giving up on the peer.
const LINGER_BYTES_MAX: u64 = 1 << 20;
/// How long a lingering close waits for the peer to finish sending.
const LINGER_MS: u64 = 2_000;
/// Input one connection takes per turn of the loop before others get theirs:
/// a request body is read, hashed and written at roughly 1 GB/s here, so a
/// turn costs about half a millisecond, whatever the client sends (1 MiB
/// left a 2 ms probe's p99 at 6.6 ms behind synced chunked uploads; 512 KiB
/// keeps it under 5 ms at 2% of upload throughput).
pub const INPUT_BYTES_PER_TURN: usize = 512 << 10;

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header_ms: u64,
    pub body_ms: u64,
    pub keep_alive_ms: u64,
    /// Slowest a body may arrive, or an answer be taken, averaged over each
    /// `body_ms` window (at least one byte a window, whatever it says).
    pub min_rate_bytes_per_sec: u64,
}

/// Where the connection is in its life; decides which timeout applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Between requests, nothing buffered: keep-alive timeout.
    Idle,
    /// Part of a request head arrived (or none yet on a new connection):
    /// header timeout, counted from the phase's start.
    Head,
    /// A request body is arriving: judged against the minimum rate per window.
    Body,
    /// Answers are being written and no request is in progress.
    Writing,
    /// A request is held by the service: until its wake time, or (no
    /// deadline) until `resume` brings the answer.
    Waiting,
    /// The answer is out and the write side shut; unread input is drained
    /// so the peer sees the answer instead of a reset (RFC 9112 section 9.6).
    Lingering,
}

/// What a service makes of a request head (or of a held request it continues).
pub enum Reply<R> {
    /// The answer; a body the request carries is not read (the connection closes after).
    Respond(R, Response),
    /// Read the body (`Service::body` for each piece, then `Service::end`).
    ReadBody(R),
    /// The answer comes later through `ServerConnection::resume`; a body the
    /// request carries is not read.
    Resume(R),
    /// Call `Service::wake` at this time (now or earlier: on the next turn);
    /// the body, if any, stays unread until then.
    WakeAt(R, u64),
}

/// What a service makes of a complete request.
pub enum Ending<R> {
    Respond(R, Response),
    /// The answer comes later through `ServerConnection::resume`.
    Resume(R),
}

/// Which request an answer belongs to, for the service's log and metrics.
pub enum Answered<'a, R> {
    Request(&'a R),
    /// The bytes did not parse as a request.
    Malformed,
    /// The peer was too slow (header or body timeout).
    TimedOut,
}

/// The application behind the connection. `Request` is what it keeps about
/// a request between calls.
pub trait Service {
    type Request;
    fn head(&mut self, head: Box<RequestHead>, now_ms: u64) -> Reply<Self::Request>;
    /// Body bytes of a request `head` chose to read; `Err` ends the request
    /// with that answer (and the connection after it).
    fn body(&mut self, request: &mut Self::Request, data: &[u8]) -> Result<(), Response>;
    /// Whether the request takes no more body for now (what it holds is
    /// being written elsewhere): the connection stops reading, and the
    /// body's time limits stop counting, until `ServerConnection::
    /// continue_held` finds it taking bytes again.
    fn body_paused(&mut self, _request: &mut Self::Request) -> bool {
        false
    }
    fn end(&mut self, request: Self::Request, now_ms: u64) -> Ending<Self::Request>;
    /// A request held with `Reply::WakeAt` is due.
    fn wake(&mut self, request: Self::Request, now_ms: u64) -> Reply<Self::Request>;
    /// The request will never end (timeout, malformed input, the connection closes).
    fn abort(&mut self, request: Self::Request);
    /// An answer is queued: for the service's log line and metrics.
    fn answered(&mut self, request: Answered<'_, Self::Request>, response: &Response, now_ms: u64);
    /// The `Date` header's value now.
    fn http_date(&self) -> &str;
}

/// What the reactor should do with the socket after a turn.
#[derive(Debug, PartialEq, Eq)]
pub enum State {
    /// Keep it; `again` when work remains without a readiness event (a held
    /// request is due).
    Open {
        again: bool,
    },
    /// Shut the write side and keep reading (the machine drops what arrives)
    /// until the peer closes or the lingering ends.
    Linger,
    Close,
}

/// What the machine keeps about a request besides the service's state.
#[derive(Debug, Clone, Copy)]
struct Meta {
    keep_alive: bool,
    /// HEAD: the answer goes without its body.
    head_only: bool,
    expect_continue: bool,
}

enum Current<R> {
    None,
    Receiving(R, Meta),
    /// Held by the service; `wake_at` is `None` until `resume`.
    Waiting(R, Meta, Option<u64>),
}

pub struct ServerConnection<R> {
    timeouts: Timeouts,
    phase: Phase,
    /// When the current phase's time is up (monotonic ms); `u64::MAX`: never.
    deadline_ms: u64,
    decoder: RequestDecoder,
    pending: Vec<u8>,
    current: Current<R>,
    output: OutputQueue,
    /// No more requests are read: after `Connection: close`, an error, or a timeout.
    closing: bool,
    /// The request being received takes no more body for now
    /// (`Service::body_paused`).
    body_paused: bool,
    /// Close once the output had its chance, without lingering (timeouts).
    abandon: bool,
    peer_closed: bool,
    lingered: u64,
    /// Start of the current transfer-rate window (Body and Writing phases).
    window_started_ms: u64,
    /// Bytes received (Body) or sent (Writing) in the current window.
    window_bytes: u64,
    /// Requests answered on this connection.
    answered: u64,
    /// Input taken since `begin_turn`.
    turn_input: usize,
}

impl<R> ServerConnection<R> {
    pub fn new(max_header_size: usize, timeouts: Timeouts, now_ms: u64) -> ServerConnection<R> {
        ServerConnection {
            timeouts,
            // The first request head (and a TLS handshake before it) must
            // arrive within the header timeout.
            phase: Phase::Head,
            deadline_ms: now_ms + timeouts.header_ms,
            decoder: RequestDecoder::new(max_header_size),
            pending: Vec::new(),
            current: Current::None,
            output: OutputQueue::default(),
            closing: false,
            body_paused: false,
            abandon: false,
            peer_closed: false,
            lingered: 0,
            window_started_ms: now_ms,
            window_bytes: 0,
            answered: 0,
            turn_input: 0,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// When `handle_timeout` is due; `None` while nothing times out (a
    /// request waits for `resume`: the service's own timeouts bound that).
    pub fn poll_timeout(&self) -> Option<u64> {
        (self.deadline_ms != u64::MAX).then_some(self.deadline_ms)
    }

    /// The answers to write; the reactor reports what it wrote with `handle_written`.
    pub fn output(&mut self) -> &mut OutputQueue {
        &mut self.output
    }

    pub fn handle_written(&mut self, bytes: u64) {
        self.window_bytes += bytes;
    }

    /// Everything the answer has so far is written: the rest is still on its
    /// way to us (a cache fill), so the client is not judged slow for it;
    /// the rate window starts again.
    pub fn handle_starved(&mut self, now_ms: u64) {
        if self.phase == Phase::Writing {
            self.window_started_ms = now_ms;
            self.window_bytes = 0;
            self.deadline_ms = now_ms + self.timeouts.body_ms;
        }
    }

    /// A turn of the loop begins: the input budget is full again.
    pub fn begin_turn(&mut self) {
        self.turn_input = 0;
    }

    /// Whether this turn's input budget is spent (more may be waiting: run
    /// again on the next turn, after the others).
    fn input_budget_spent(&self) -> bool {
        self.turn_input >= INPUT_BYTES_PER_TURN
    }

    /// Whether the reactor should read more: not while a request is held,
    /// after the last request, while lingering (read raw, see
    /// `State::Linger`), or once this turn's input budget is spent.
    pub fn wants_input(&self) -> bool {
        !self.closing
            && !self.is_waiting()
            && !self.body_paused
            && !self.peer_closed
            && self.phase != Phase::Lingering
            && !self.input_budget_spent()
    }

    /// Bytes from the peer; decoded by the next `process`. While lingering
    /// they are counted and dropped.
    pub fn handle_input(&mut self, data: &[u8]) {
        self.turn_input += data.len();
        if self.phase == Phase::Lingering {
            self.lingered += data.len() as u64;
            return;
        }
        if self.phase == Phase::Body {
            // Progress, judged against the minimum rate when the window ends.
            self.window_bytes += data.len() as u64;
        }
        self.pending.extend_from_slice(data);
    }

    /// The peer closed its side; a request complete before that still gets its answer.
    pub fn handle_eof<S: Service<Request = R>>(&mut self, service: &mut S, now_ms: u64) {
        self.peer_closed = true;
        if self.phase != Phase::Lingering {
            self.process(service, now_ms);
        }
    }

    /// Continues a held request whose wake time has come.
    pub fn wake<S: Service<Request = R>>(&mut self, service: &mut S, now_ms: u64) {
        let due = matches!(self.current, Current::Waiting(_, _, Some(at)) if at <= now_ms);
        if !due {
            return;
        }
        let Current::Waiting(request, meta, _) = std::mem::replace(&mut self.current, Current::None) else {
            unreachable!("matched above");
        };
        let reply = service.wake(request, now_ms);
        self.on_reply(reply, meta, service, now_ms);
    }

    /// Decodes buffered bytes into requests while answers are not
    /// backlogged; `true` when it handled anything.
    pub fn process<S: Service<Request = R>>(&mut self, service: &mut S, now_ms: u64) -> bool {
        let mut at = 0;
        let mut progressed = false;
        // Decoding continues on empty input too: an `End` may be due without more bytes.
        loop {
            if self.closing
                || self.is_waiting()
                || self.body_paused
                || (self.output.is_backlogged() && self.decoder.is_idle())
            {
                break;
            }
            let (consumed, event) = match self.decoder.decode(&self.pending[at..]) {
                Ok(step) => step,
                Err(error) => {
                    let response = RegistryError::new(ErrorCode::Unsupported, error.message())
                        .status(error.status())
                        .into_response()
                        .with_close();
                    self.abort(service);
                    self.send_unrouted(Answered::Malformed, response, service, now_ms);
                    break;
                }
            };
            at += consumed;
            let Some(event) = event else { break };
            progressed = true;
            match event {
                RequestEvent::Head(head) => {
                    let meta = Meta {
                        keep_alive: head.keep_alive,
                        head_only: head.method == Method::Head,
                        expect_continue: head.expect_continue,
                    };
                    let reply = service.head(head, now_ms);
                    self.on_reply(reply, meta, service, now_ms);
                }
                RequestEvent::Body(data) => {
                    if let Current::Receiving(request, _) = &mut self.current {
                        match service.body(request, data) {
                            Err(response) => {
                                let Current::Receiving(request, meta) =
                                    std::mem::replace(&mut self.current, Current::None)
                                else {
                                    unreachable!("matched above");
                                };
                                self.send(&request, meta, response.with_close(), service, now_ms);
                            }
                            Ok(()) if service.body_paused(request) => {
                                self.body_paused = true;
                                self.phase = Phase::Waiting;
                                self.deadline_ms = u64::MAX;
                            }
                            Ok(()) => {}
                        }
                    }
                }
                RequestEvent::End => {
                    if let Current::Receiving(request, meta) =
                        std::mem::replace(&mut self.current, Current::None)
                    {
                        match service.end(request, now_ms) {
                            Ending::Respond(request, response) => {
                                self.send(&request, meta, response, service, now_ms)
                            }
                            Ending::Resume(request) => self.hold(request, meta, None),
                        }
                    }
                }
            }
        }
        self.pending.drain(..at.min(self.pending.len()));
        if self.closing {
            self.pending.clear();
        }
        if self.pending.is_empty() && self.pending.capacity() > PENDING_KEPT_BYTES_MAX {
            // A large read passed through: do not keep its capacity for the
            // connection's life (thousands of slow connections would each
            // hold a read's worth).
            self.pending = Vec::new();
        }
        progressed
    }

    fn on_reply<S: Service<Request = R>>(
        &mut self,
        reply: Reply<R>,
        mut meta: Meta,
        service: &mut S,
        now_ms: u64,
    ) {
        // A body the service does not want is not read: the answer goes out
        // now and the connection closes after it (with `Expect: 100-continue`
        // the client never sends the body at all).
        let unwanted_body = self.decoder.in_body();
        match reply {
            Reply::Respond(request, response) => {
                if unwanted_body {
                    meta.keep_alive = false;
                }
                self.send(&request, meta, response, service, now_ms);
            }
            // A body left unread is judged when the answer comes (`resume`,
            // or the reply of `wake`): a request held for storage may read
            // it then.
            Reply::Resume(request) => self.hold(request, meta, None),
            Reply::WakeAt(request, at) => self.hold(request, meta, Some(at)),
            Reply::ReadBody(request) => {
                if meta.expect_continue {
                    self.output.push_bytes(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                self.current = Current::Receiving(request, meta);
                self.phase = Phase::Body;
                self.deadline_ms = now_ms + self.timeouts.body_ms;
                self.window_started_ms = now_ms;
                self.window_bytes = 0;
            }
        }
    }

    fn hold(&mut self, request: R, meta: Meta, wake_at: Option<u64>) {
        self.current = Current::Waiting(request, meta, wake_at);
        self.phase = Phase::Waiting;
        self.deadline_ms = wake_at.unwrap_or(u64::MAX);
    }

    /// The outside work a request held for `resume` waited on is done (a
    /// file synced off the loop): the service continues it through `wake`.
    pub fn continue_held<S: Service<Request = R>>(&mut self, service: &mut S, now_ms: u64) {
        if self.body_paused {
            if let Current::Receiving(request, _) = &mut self.current
                && !service.body_paused(request)
            {
                // Reading resumes with a fresh window: the pause was ours.
                self.body_paused = false;
                self.phase = Phase::Body;
                self.deadline_ms = now_ms + self.timeouts.body_ms;
                self.window_started_ms = now_ms;
                self.window_bytes = 0;
            }
            return;
        }
        if !matches!(self.current, Current::Waiting(_, _, None)) {
            return;
        }
        let Current::Waiting(request, meta, _) = std::mem::replace(&mut self.current, Current::None) else {
            unreachable!("matched above");
        };
        let reply = service.wake(request, now_ms);
        self.on_reply(reply, meta, service, now_ms);
    }

    /// The answer of a request held for `resume` arrived.
    pub fn resume<S: Service<Request = R>>(&mut self, response: Response, service: &mut S, now_ms: u64) {
        if !matches!(self.current, Current::Waiting(_, _, None)) {
            return;
        }
        let Current::Waiting(request, mut meta, _) = std::mem::replace(&mut self.current, Current::None)
        else {
            unreachable!("matched above");
        };
        if self.decoder.in_body() {
            // Its body was never read: the connection ends with the answer.
            meta.keep_alive = false;
        }
        self.send(&request, meta, response, service, now_ms);
    }

    /// Queues an answer; a closing answer ends the reading of requests.
    fn send<S: Service<Request = R>>(
        &mut self,
        request: &R,
        meta: Meta,
        response: Response,
        service: &mut S,
        now_ms: u64,
    ) {
        service.answered(Answered::Request(request), &response, now_ms);
        self.queue(response, meta.keep_alive, meta.head_only, service);
    }

    fn send_unrouted<S: Service<Request = R>>(
        &mut self,
        which: Answered<'_, R>,
        response: Response,
        service: &mut S,
        now_ms: u64,
    ) {
        service.answered(which, &response, now_ms);
        self.queue(response, false, false, service);
    }

    fn queue<S: Service<Request = R>>(
        &mut self,
        response: Response,
        keep_alive: bool,
        head_only: bool,
        service: &S,
    ) {
        let keep_alive = keep_alive && !response.close;
        self.answered += 1;
        let mut head = Vec::with_capacity(256);
        response.write_head(&mut head, service.http_date(), keep_alive);
        match response.body {
            Body::Bytes(bytes) if !head_only => {
                head.extend_from_slice(&bytes);
                self.output.push_vec(head);
            }
            Body::Shared(bytes) if !head_only => {
                self.output.push_vec(head);
                self.output.push_shared(bytes);
            }
            Body::File { file, offset, len } if !head_only => {
                self.output.push_vec(head);
                self.output.push_file(file, offset, len);
            }
            Body::Growing { file, len, growing } if !head_only => {
                self.output.push_vec(head);
                self.output.push_growing_file(file, len, growing);
            }
            Body::Fed { feed, len } if !head_only => {
                self.output.push_vec(head);
                self.output.push_feed(feed, len);
            }
            _ => self.output.push_vec(head),
        }
        if !keep_alive {
            self.closing = true;
        }
    }

    /// The end of a turn: picks the phase (and so the timeout) from what is
    /// in progress, and says what to do with the socket.
    pub fn poll_state(&mut self, now_ms: u64) -> State {
        if self.abandon {
            return State::Close;
        }
        if self.phase == Phase::Lingering {
            return if self.peer_closed || self.lingered > LINGER_BYTES_MAX {
                State::Close
            } else {
                State::Open { again: false }
            };
        }
        let quiet = self.output.is_empty() && matches!(self.current, Current::None);
        if self.closing && quiet {
            if self.peer_closed {
                return State::Close;
            }
            self.phase = Phase::Lingering;
            self.deadline_ms = now_ms + LINGER_MS;
            return State::Linger;
        }
        if self.peer_closed && self.output.is_empty() && !self.is_waiting() {
            // A half-closed peer got its answers; a request it did not finish never will be.
            return State::Close;
        }
        self.update_phase(now_ms);
        let due = matches!(self.current, Current::Waiting(_, _, Some(at)) if at <= now_ms);
        State::Open {
            again: due || self.input_budget_spent(),
        }
    }

    fn update_phase(&mut self, now_ms: u64) {
        if self.body_paused {
            // Set when the body paused; nothing counts against the client.
            return;
        }
        let phase = match self.current {
            Current::Receiving(..) => Phase::Body,
            // Set when the request was held; its deadline is the wake time.
            Current::Waiting(..) => return,
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
                Phase::Idle => now_ms + self.timeouts.keep_alive_ms,
                Phase::Head => now_ms + self.timeouts.header_ms,
                Phase::Waiting => u64::MAX,
                Phase::Body | Phase::Writing | Phase::Lingering => now_ms + self.timeouts.body_ms,
            };
            if matches!(phase, Phase::Body | Phase::Writing) {
                self.window_started_ms = now_ms;
                self.window_bytes = 0;
            }
            self.phase = phase;
        } else if phase == Phase::Idle {
            // Idle time counts from the last activity (a request answered in
            // one turn passes from idle to idle). A head in progress is not
            // refreshed: that is what stops a slow client trickling bytes.
            self.deadline_ms = now_ms + self.timeouts.keep_alive_ms;
        }
    }

    /// The deadline from `poll_timeout` passed. A request in progress gets
    /// 408 and the connection closes; a held request is woken; a body or
    /// answer that kept the minimum rate starts a new window.
    pub fn handle_timeout<S: Service<Request = R>>(&mut self, service: &mut S, now_ms: u64) {
        if now_ms < self.deadline_ms {
            return;
        }
        match self.phase {
            // A connection that never sent a byte gets no answer, just a close.
            Phase::Head if self.pending.is_empty() && self.decoder.is_idle() => self.abandon = true,
            Phase::Head => {
                log::debug!(target: "angos::http", "request head timed out");
                self.send_unrouted(
                    Answered::TimedOut,
                    Response::new(408).with_close(),
                    service,
                    now_ms,
                );
                self.abandon = true;
            }
            Phase::Body | Phase::Writing if self.window_met_rate(now_ms) => {
                self.window_started_ms = now_ms;
                self.window_bytes = 0;
                self.deadline_ms = now_ms + self.timeouts.body_ms;
            }
            Phase::Body => {
                log::debug!(target: "angos::http", "request body timed out or below the minimum rate");
                self.abort(service);
                self.send_unrouted(
                    Answered::TimedOut,
                    Response::new(408).with_close(),
                    service,
                    now_ms,
                );
                self.abandon = true;
            }
            Phase::Waiting => self.wake(service, now_ms),
            Phase::Idle | Phase::Writing | Phase::Lingering => self.abandon = true,
        }
        if self.abandon {
            self.closing = true;
        }
    }

    /// Whether the window now ending moved at least one byte, and at least
    /// `min_rate_bytes_per_sec` on average: a client trickling a body or
    /// reading an answer slower than that is holding a slot (and, for an
    /// answer, its bytes) for nothing.
    fn window_met_rate(&self, now_ms: u64) -> bool {
        let elapsed_ms = now_ms.saturating_sub(self.window_started_ms);
        let required = (self.timeouts.min_rate_bytes_per_sec.saturating_mul(elapsed_ms) / 1000).max(1);
        self.window_bytes >= required
    }

    /// Releases a request in progress (its upload keeps what arrived).
    fn abort<S: Service<Request = R>>(&mut self, service: &mut S) {
        if let Some(request) = self.take_request() {
            service.abort(request);
        }
    }

    /// The request in progress, for the reactor to release when it closes us.
    pub fn take_request(&mut self) -> Option<R> {
        match std::mem::replace(&mut self.current, Current::None) {
            Current::None => None,
            Current::Receiving(request, _) | Current::Waiting(request, _, _) => Some(request),
        }
    }

    /// A request is held (for webhooks or a login): read no further.
    fn is_waiting(&self) -> bool {
        matches!(self.current, Current::Waiting(..))
    }

    /// For shutdown: `true` when nothing is in progress, so closing loses nothing.
    pub fn is_quiet(&self) -> bool {
        matches!(self.current, Current::None) && self.decoder.is_idle() && self.output.is_empty()
    }
}

#[cfg(test)]
mod tests {
    //! The connection's timing and ordering on a hand-driven clock: no
    //! sockets and no sleeps. `TestService` answers by path: `/park` waits
    //! for `resume`, `/login` asks to be woken 100 ms later, `/upload` reads
    //! its body, anything else is answered at once with its path.

    use super::*;
    use crate::http::output::Front;

    const TIMEOUTS: Timeouts = Timeouts {
        header_ms: 1_000,
        body_ms: 1_000,
        keep_alive_ms: 5_000,
        min_rate_bytes_per_sec: 1_024,
    };

    #[derive(Default)]
    struct TestService {
        /// `(what, status)` per answer queued.
        answered: Vec<(String, u16)>,
        aborted: Vec<String>,
        body_bytes: usize,
    }

    impl Service for TestService {
        type Request = String;

        fn head(&mut self, head: Box<RequestHead>, now_ms: u64) -> Reply<String> {
            let path = head.path.clone();
            match path.as_str() {
                "/park" => Reply::Resume(path),
                "/login" => Reply::WakeAt(path, now_ms + 100),
                "/upload" | "/upload-held" => Reply::ReadBody(path),
                _ => Reply::Respond(
                    path.clone(),
                    Response::new(200).body(Body::Bytes(path.into_bytes())),
                ),
            }
        }

        fn body(&mut self, _request: &mut String, data: &[u8]) -> Result<(), Response> {
            self.body_bytes += data.len();
            Ok(())
        }

        fn end(&mut self, request: String, _now_ms: u64) -> Ending<String> {
            if request == "/upload-held" {
                return Ending::Resume(request);
            }
            let text = format!("{} bytes", self.body_bytes);
            Ending::Respond(request, Response::new(201).body(Body::Bytes(text.into_bytes())))
        }

        fn wake(&mut self, request: String, _now_ms: u64) -> Reply<String> {
            Reply::Respond(request, Response::new(200).body(Body::Bytes(b"welcome".to_vec())))
        }

        fn abort(&mut self, request: String) {
            self.aborted.push(request);
        }

        fn answered(&mut self, request: Answered<'_, String>, response: &Response, _now_ms: u64) {
            let what = match request {
                Answered::Request(path) => path.clone(),
                Answered::Malformed => "malformed".to_string(),
                Answered::TimedOut => "timeout".to_string(),
            };
            self.answered.push((what, response.status));
        }

        fn http_date(&self) -> &str {
            "Wed, 02 Dec 2026 00:00:00 GMT"
        }
    }

    struct Harness {
        connection: ServerConnection<String>,
        service: TestService,
    }

    impl Harness {
        fn new() -> Harness {
            Harness {
                connection: ServerConnection::new(8 * 1024, TIMEOUTS, 0),
                service: TestService::default(),
            }
        }

        /// One reactor turn at `now`: the bytes arrive, are processed, and
        /// the state is polled.
        fn turn(&mut self, input: &[u8], now: u64) -> State {
            self.connection.begin_turn();
            self.connection.wake(&mut self.service, now);
            if !input.is_empty() {
                assert!(self.connection.wants_input(), "the machine takes no input now");
                self.connection.handle_input(input);
            }
            self.connection.process(&mut self.service, now);
            self.connection.poll_state(now)
        }

        /// Everything queued, as the peer would read it (all of it written).
        fn written(&mut self) -> String {
            let mut out = Vec::new();
            while let Some(Front::Bytes(bytes)) = self.connection.output().front() {
                out.extend_from_slice(bytes);
                let n = bytes.len();
                self.connection.output().advance(n);
                self.connection.handle_written(n as u64);
            }
            String::from_utf8(out).unwrap()
        }

        fn timeout(&mut self, now: u64) -> State {
            self.connection.handle_timeout(&mut self.service, now);
            self.turn(b"", now)
        }
    }

    fn get(path: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")
    }

    #[test]
    fn a_head_not_complete_within_the_header_timeout_gets_408_and_a_close() {
        let mut h = Harness::new();
        assert_eq!(h.turn(b"GET / HTTP/1.1\r\nHo", 10), State::Open { again: false });
        assert_eq!(h.connection.phase(), Phase::Head);
        // Counted from the connection's start: trickling bytes buys no time.
        assert_eq!(h.turn(b"st", 900), State::Open { again: false });
        assert_eq!(h.connection.poll_timeout(), Some(1_000));
        h.connection.handle_timeout(&mut h.service, 999);
        assert!(h.connection.output().is_empty(), "not yet due");
        assert_eq!(h.timeout(1_000), State::Close);
        assert!(h.written().starts_with("HTTP/1.1 408 "));
        assert_eq!(h.service.answered, vec![("timeout".to_string(), 408)]);
    }

    #[test]
    fn a_connection_that_never_sends_is_closed_without_an_answer() {
        let mut h = Harness::new();
        assert_eq!(h.turn(b"", 0), State::Open { again: false });
        assert_eq!(h.connection.poll_timeout(), Some(TIMEOUTS.header_ms));
        assert_eq!(h.timeout(TIMEOUTS.header_ms), State::Close);
        assert_eq!(h.written(), "");
        assert!(h.service.answered.is_empty());
    }

    #[test]
    fn an_idle_keep_alive_connection_closes_after_its_timeout_from_the_last_answer() {
        let mut h = Harness::new();
        h.turn(get("/a").as_bytes(), 0);
        assert!(h.written().starts_with("HTTP/1.1 200 "));
        assert_eq!(h.turn(b"", 0), State::Open { again: false });
        assert_eq!(h.connection.phase(), Phase::Idle);
        assert_eq!(h.connection.poll_timeout(), Some(5_000));
        // Another request later moves the idle deadline with it.
        h.turn(get("/b").as_bytes(), 3_000);
        h.written();
        assert_eq!(h.turn(b"", 3_000), State::Open { again: false });
        assert_eq!(h.connection.poll_timeout(), Some(8_000));
        h.connection.handle_timeout(&mut h.service, 5_000);
        assert_eq!(
            h.connection.poll_timeout(),
            Some(8_000),
            "a stale deadline is ignored"
        );
        assert_eq!(h.timeout(8_000), State::Close);
        assert_eq!(h.written(), "", "an idle close sends nothing");
    }

    #[test]
    fn pipelined_requests_are_answered_in_order_from_one_read() {
        let mut h = Harness::new();
        let input = format!("{}{}{}", get("/one"), get("/two"), get("/three"));
        h.turn(input.as_bytes(), 0);
        let out = h.written();
        let one = out.find("/one").unwrap();
        let two = out.find("/two").unwrap();
        let three = out.find("/three").unwrap();
        assert!(one < two && two < three, "{out}");
        assert_eq!(out.matches("HTTP/1.1 200 ").count(), 3);
    }

    #[test]
    fn a_held_request_is_resumed_and_the_pipelined_one_after_it_follows() {
        let mut h = Harness::new();
        let input = format!("{}{}", get("/park"), get("/after"));
        assert_eq!(h.turn(input.as_bytes(), 0), State::Open { again: false });
        assert_eq!(h.connection.phase(), Phase::Waiting);
        assert_eq!(
            h.connection.poll_timeout(),
            None,
            "the service's timeouts bound the wait"
        );
        assert!(!h.connection.wants_input());
        assert_eq!(h.written(), "", "nothing may overtake the held answer");
        h.connection.resume(Response::new(202), &mut h.service, 4_000);
        h.turn(b"", 4_000);
        let out = h.written();
        assert!(out.starts_with("HTTP/1.1 202 "), "{out}");
        assert!(out.find("/after").unwrap() > out.find("202").unwrap());
        let answered: Vec<&str> = h.service.answered.iter().map(|(what, _)| what.as_str()).collect();
        assert_eq!(answered, ["/park", "/after"]);
    }

    #[test]
    fn a_request_asking_to_be_woken_is_continued_at_its_time() {
        let mut h = Harness::new();
        assert_eq!(h.turn(get("/login").as_bytes(), 50), State::Open { again: false });
        assert_eq!(h.connection.poll_timeout(), Some(150));
        assert_eq!(h.turn(b"", 149), State::Open { again: false });
        assert_eq!(h.written(), "");
        h.timeout(150);
        assert!(h.written().contains("welcome"));
    }

    #[test]
    fn a_body_below_the_minimum_rate_gets_408_and_its_request_is_released() {
        let mut h = Harness::new();
        let head = "PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n";
        h.turn(head.as_bytes(), 0);
        assert_eq!(h.connection.phase(), Phase::Body);
        assert_eq!(h.connection.poll_timeout(), Some(1_000));
        // A window that kept the rate (2,000 bytes in a second) starts another.
        h.turn(&[b'x'; 2_000], 500);
        assert_eq!(h.timeout(1_000), State::Open { again: false });
        assert_eq!(h.connection.poll_timeout(), Some(2_000));
        // Ten bytes in the next second is below 1 KiB/s.
        h.turn(&[b'x'; 10], 1_500);
        assert_eq!(h.timeout(2_000), State::Close);
        assert!(h.written().starts_with("HTTP/1.1 408 "));
        assert_eq!(h.service.aborted, ["/upload"]);
        assert_eq!(h.service.body_bytes, 2_010);
    }

    #[test]
    fn a_body_is_read_after_100_continue_and_answered_at_its_end() {
        let mut h = Harness::new();
        let head = "PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n";
        h.turn(head.as_bytes(), 0);
        assert_eq!(h.written(), "HTTP/1.1 100 Continue\r\n\r\n");
        h.turn(b"hello", 10);
        let out = h.written();
        assert!(
            out.starts_with("HTTP/1.1 201 ") && out.ends_with("5 bytes"),
            "{out}"
        );
    }

    #[test]
    fn an_unwanted_body_is_not_read_and_the_connection_closes_after_the_answer() {
        let mut h = Harness::new();
        let head = "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n";
        let state = h.turn(head.as_bytes(), 0);
        assert_eq!(
            state,
            State::Open { again: false },
            "the answer is not written yet"
        );
        let out = h.written();
        assert!(
            out.starts_with("HTTP/1.1 200 ") && out.contains("Connection: close"),
            "{out}"
        );
        assert_eq!(h.turn(b"", 0), State::Linger);
    }

    #[test]
    fn a_closing_answer_lingers_until_the_peer_closes_sends_too_much_or_time_runs_out() {
        let close = "GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        // The peer closes.
        let mut h = Harness::new();
        h.turn(close.as_bytes(), 0);
        h.written();
        assert_eq!(h.turn(b"", 0), State::Linger);
        assert_eq!(h.connection.phase(), Phase::Lingering);
        assert_eq!(h.connection.poll_timeout(), Some(LINGER_MS));
        h.connection.handle_input(&[0; 4096]);
        assert_eq!(h.connection.poll_state(10), State::Open { again: false });
        h.connection.handle_eof(&mut h.service, 20);
        assert_eq!(h.connection.poll_state(20), State::Close);
        // The peer keeps sending.
        let mut h = Harness::new();
        h.turn(close.as_bytes(), 0);
        h.written();
        h.turn(b"", 0);
        h.connection.handle_input(&vec![0; LINGER_BYTES_MAX as usize + 1]);
        assert_eq!(h.connection.poll_state(10), State::Close);
        // The peer goes quiet.
        let mut h = Harness::new();
        h.turn(close.as_bytes(), 0);
        h.written();
        h.turn(b"", 0);
        h.connection.handle_timeout(&mut h.service, LINGER_MS);
        assert_eq!(h.connection.poll_state(LINGER_MS), State::Close);
        assert_eq!(h.service.answered.len(), 1, "lingering answers nothing more");
    }

    #[test]
    fn an_answer_the_peer_does_not_take_ends_the_connection_after_a_window() {
        let mut h = Harness::new();
        h.turn(get("/a").as_bytes(), 0);
        assert_eq!(h.connection.phase(), Phase::Writing);
        assert_eq!(h.connection.poll_timeout(), Some(1_000));
        assert_eq!(h.timeout(1_000), State::Close);
    }

    #[test]
    fn malformed_input_gets_an_oci_error_and_a_close_and_a_body_in_progress_is_released() {
        let mut h = Harness::new();
        h.turn(b"BROKEN\r\n\r\n", 0);
        let out = h.written();
        assert!(
            out.starts_with("HTTP/1.1 400 ") && out.contains("\"errors\""),
            "{out}"
        );
        assert_eq!(h.service.answered, vec![("malformed".to_string(), 400)]);
        assert_eq!(h.turn(b"", 0), State::Linger);

        let mut h = Harness::new();
        let head = "PUT /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        h.turn(head.as_bytes(), 0);
        assert!(h.written().contains(" 400 "));
        assert_eq!(h.service.aborted, ["/upload"]);
    }

    #[test]
    fn a_backlog_of_answers_stops_decoding_until_the_peer_reads() {
        let mut h = Harness::new();
        let long = format!("/{}", "x".repeat(BIG_PATH));
        let input: String = (0..40).map(|_| get(&long)).collect();
        h.turn(input.as_bytes(), 0);
        let answered = h.service.answered.len();
        assert!(answered < 40, "decoding went on behind {answered} unread answers");
        h.written();
        h.turn(b"", 1);
        h.written();
        h.turn(b"", 2);
        assert_eq!(h.service.answered.len(), 40);
    }

    #[test]
    fn a_connection_with_endless_input_yields_after_its_budget_each_turn() {
        let mut h = Harness::new();
        let head = "PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n";
        h.turn(head.as_bytes(), 0);
        h.written();
        let chunk = vec![b'x'; 64 * 1024];
        for turn in 0..3 {
            h.connection.begin_turn();
            let mut taken = 0;
            // The reactor reads while the machine wants input.
            while h.connection.wants_input() {
                h.connection.handle_input(&chunk);
                h.connection.process(&mut h.service, turn);
                taken += chunk.len();
                assert!(taken <= INPUT_BYTES_PER_TURN + chunk.len(), "no end to the turn");
            }
            assert_eq!(taken, INPUT_BYTES_PER_TURN);
            // It asks to run again, after the others, rather than wait for readiness.
            assert_eq!(h.connection.poll_state(turn), State::Open { again: true });
        }
        assert_eq!(h.service.body_bytes, 3 * INPUT_BYTES_PER_TURN);
        h.connection.begin_turn();
        assert!(h.connection.wants_input());
        assert_eq!(h.connection.poll_state(3), State::Open { again: false });
    }

    #[test]
    fn a_request_held_at_its_end_continues_when_its_outside_work_is_done() {
        let mut h = Harness::new();
        let input = format!(
            "PUT /upload-held HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello{}",
            get("/next")
        );
        h.turn(input.as_bytes(), 0);
        assert_eq!(h.connection.phase(), Phase::Waiting);
        assert_eq!(h.connection.poll_timeout(), None);
        assert_eq!(h.written(), "", "nothing answered while the work runs");
        h.connection.continue_held(&mut h.service, 30);
        h.turn(b"", 30);
        let out = h.written();
        assert!(
            out.starts_with("HTTP/1.1 200 ") && out.contains("welcome"),
            "{out}"
        );
        assert!(out.contains("/next"), "the pipelined request follows: {out}");
    }

    /// A path long enough that some answers exceed the output backlog.
    const BIG_PATH: usize = 7_000;
}
