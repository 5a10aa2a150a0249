//! One inbound HTTP/1.1 connection: reads until `WouldBlock`, decodes
//! requests (pipelined ones answered in order), hands them to the registry,
//! and writes answers with back-pressure. The read buffer is shared by all
//! connections (one thread); a connection keeps only its unconsumed bytes.

use std::io::{self, Read};

use mio::net::TcpStream;

use super::output::{Flush, Output};
use crate::http::{Body, RequestDecoder, RequestEvent, RequestHead, Response};
use crate::registry::{Begin, Exchange, Registry};

/// Bytes one connection may read or write per wake-up before others get a turn.
const IO_BUDGET_BYTES: usize = 4 << 20;
/// What a lingering close reads and drops before giving up on the peer.
const LINGER_BYTES_MAX: u64 = 1 << 20;

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

enum Current {
    None,
    /// The answer was decided at the head; it goes out at the request's end.
    Answered(Response, bool),
    Receiving(Box<RequestHead>, Exchange),
}

pub struct Connection {
    pub socket: TcpStream,
    pub phase: Phase,
    /// When the current phase's time is up (monotonic ms).
    pub deadline_ms: u64,
    decoder: RequestDecoder,
    pending: Vec<u8>,
    current: Current,
    output: Output,
    /// No more requests are read: after `Connection: close`, an error, or shutdown.
    closing: bool,
    peer_closed: bool,
    lingered: u64,
}

/// Per-loop values shared by all connections.
pub struct Context<'a> {
    pub registry: &'a mut Registry,
    pub read_buffer: &'a mut [u8],
    pub now_ms: u64,
    pub date: &'a str,
    pub timeouts: Timeouts,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header_ms: u64,
    pub body_ms: u64,
    pub keep_alive_ms: u64,
}

impl Connection {
    pub fn new(socket: TcpStream, max_header_size: usize, now_ms: u64, timeouts: Timeouts) -> Connection {
        Connection {
            socket,
            phase: Phase::Idle,
            // The first request head must arrive within the header timeout.
            deadline_ms: now_ms + timeouts.header_ms,
            decoder: RequestDecoder::new(max_header_size),
            pending: Vec::new(),
            current: Current::None,
            output: Output::default(),
            closing: false,
            peer_closed: false,
            lingered: 0,
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
        // Answers already decoded may be waiting for the socket.
        let mut again = self.flush()? == Flush::Budget;
        let mut read_budget = IO_BUDGET_BYTES;
        loop {
            self.process(cx)?;
            if self.closing || self.output.is_backlogged() || self.peer_closed {
                break;
            }
            if read_budget == 0 {
                again = true;
                break;
            }
            let n = match self.socket.read(cx.read_buffer) {
                Ok(0) => {
                    self.peer_closed = true;
                    break;
                }
                Ok(n) => n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            read_budget = read_budget.saturating_sub(n);
            if self.phase == Phase::Body {
                cx_progress(self, cx);
            }
            self.pending.extend_from_slice(&cx.read_buffer[..n]);
        }
        self.process(cx)?;
        match self.flush()? {
            Flush::Budget => again = true,
            Flush::Blocked => {}
            Flush::Done => {
                if self.closing && matches!(self.current, Current::None) {
                    return self.start_linger(cx);
                }
            }
        }
        if self.peer_closed && self.output.is_empty() {
            // A half-closed peer gets its answers; then we are done.
            if let Current::Receiving(_, _) = self.current {
                self.abort(cx);
            }
            return Ok(Next::Close);
        }
        self.update_phase(cx);
        Ok(if again { Next::Again } else { Next::Wait })
    }

    /// Decodes buffered bytes into requests while answers are not backlogged.
    fn process(&mut self, cx: &mut Context) -> io::Result<()> {
        let mut at = 0;
        // Decoding continues on empty input too: an `End` may be due without more bytes.
        loop {
            if self.closing || (self.output.is_backlogged() && self.decoder.is_idle()) {
                break;
            }
            let (consumed, event) = match self.decoder.decode(&self.pending[at..]) {
                Ok(step) => step,
                Err(error) => {
                    let response = Response::json(
                        error.status(),
                        &serde_json::json!({"errors": [{"code": "UNSUPPORTED", "message": error.message()}]}),
                    );
                    self.abort(cx);
                    self.send(response.with_close(), false, cx.date);
                    break;
                }
            };
            at += consumed;
            let Some(event) = event else { break };
            match event {
                RequestEvent::Head(head) => self.on_head(head, cx),
                RequestEvent::Body(data) => {
                    if let Current::Receiving(_, exchange) = &mut self.current
                        && let Err(response) = cx.registry.body(exchange, data)
                    {
                        self.current = Current::None;
                        self.send(response.with_close(), false, cx.date);
                    }
                }
                RequestEvent::End => match std::mem::replace(&mut self.current, Current::None) {
                    Current::Answered(response, keep_alive) => self.send(response, keep_alive, cx.date),
                    Current::Receiving(head, exchange) => {
                        let response = cx.registry.finish(exchange);
                        log_request(&head, &response);
                        self.send(response, head.keep_alive, cx.date);
                    }
                    Current::None => {}
                },
            }
        }
        self.pending.drain(..at.min(self.pending.len()));
        if self.closing {
            self.pending.clear();
        }
        Ok(())
    }

    fn on_head(&mut self, head: Box<RequestHead>, cx: &mut Context) {
        let body_follows = self.decoder.in_body();
        match cx.registry.begin(&head) {
            Begin::Answer(mut response) => {
                log_request(&head, &response);
                if body_follows {
                    // The body is unwanted: answer now and stop reading. With
                    // `Expect: 100-continue` the client never sends it at all.
                    response.close = true;
                    self.send(response, false, cx.date);
                } else {
                    self.current = Current::Answered(response, head.keep_alive);
                }
            }
            Begin::ReadBody(exchange) => {
                if head.expect_continue {
                    self.output.push_bytes(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                self.current = Current::Receiving(head, exchange);
                self.phase = Phase::Body;
                self.deadline_ms = cx.now_ms + cx.timeouts.body_ms;
            }
        }
    }

    /// Queues an answer; a closing answer ends the reading of requests.
    fn send(&mut self, response: Response, keep_alive: bool, date: &str) {
        let keep_alive = keep_alive && !response.close;
        let mut head = Vec::with_capacity(256);
        response.write_head(&mut head, date, keep_alive);
        match response.body {
            Body::Bytes(bytes) => {
                head.extend_from_slice(&bytes);
                self.output.push_vec(head);
            }
            Body::File { file, offset, len } => {
                self.output.push_vec(head);
                self.output.push_file(file, offset, len);
            }
            Body::Empty | Body::Length(_) => self.output.push_vec(head),
        }
        if !keep_alive {
            self.closing = true;
        }
    }

    fn flush(&mut self) -> io::Result<Flush> {
        if self.output.is_empty() {
            return Ok(Flush::Done);
        }
        let (flush, _) = self.output.flush(&mut self.socket, IO_BUDGET_BYTES)?;
        Ok(flush)
    }

    /// Picks the phase (and so the timeout) from what is in progress.
    fn update_phase(&mut self, cx: &Context) {
        let phase = if matches!(self.current, Current::Receiving(..)) {
            Phase::Body
        } else if !self.output.is_empty() {
            Phase::Writing
        } else if !self.pending.is_empty() || !self.decoder.is_idle() {
            Phase::Head
        } else {
            Phase::Idle
        };
        if phase != self.phase {
            self.deadline_ms = cx.now_ms
                + match phase {
                    Phase::Idle => cx.timeouts.keep_alive_ms,
                    Phase::Head => cx.timeouts.header_ms,
                    Phase::Body | Phase::Writing | Phase::Lingering => cx.timeouts.body_ms,
                };
            self.phase = phase;
        } else if phase == Phase::Writing {
            // A reader that keeps taking bytes is making progress.
            self.deadline_ms = cx.now_ms + cx.timeouts.body_ms;
        }
    }

    /// Shuts our write side and drains what the peer still sends, briefly.
    fn start_linger(&mut self, cx: &mut Context) -> io::Result<Next> {
        if self.peer_closed {
            return Ok(Next::Close);
        }
        let _ = self.socket.shutdown(std::net::Shutdown::Write);
        self.phase = Phase::Lingering;
        self.deadline_ms = cx.now_ms + 2_000;
        self.linger(cx)
    }

    fn linger(&mut self, cx: &mut Context) -> io::Result<Next> {
        loop {
            match self.socket.read(cx.read_buffer) {
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
        match self.phase {
            Phase::Head => {
                log::debug!(target: "angos::reactor", "request head timed out");
                self.send(Response::new(408).with_close(), false, cx.date);
                let _ = self.flush();
                Next::Close
            }
            Phase::Body => {
                log::debug!(target: "angos::reactor", "request body timed out");
                self.abort(cx);
                self.send(Response::new(408).with_close(), false, cx.date);
                let _ = self.flush();
                Next::Close
            }
            Phase::Idle | Phase::Writing | Phase::Lingering => Next::Close,
        }
    }

    /// Releases a request in progress (its upload keeps what arrived).
    pub fn abort(&mut self, cx: &mut Context) {
        if let Current::Receiving(_, exchange) = std::mem::replace(&mut self.current, Current::None) {
            cx.registry.abort(exchange);
        }
    }

    /// For shutdown: finish what is in progress, take no new request.
    pub fn stop_reading_new_requests(&mut self) -> bool {
        if matches!(self.current, Current::None) && self.decoder.is_idle() && self.output.is_empty() {
            return true;
        }
        false
    }
}

fn cx_progress(connection: &mut Connection, cx: &Context) {
    connection.deadline_ms = cx.now_ms + cx.timeouts.body_ms;
}

fn log_request(head: &RequestHead, response: &Response) {
    log::debug!(
        target: "angos::http",
        "{} {} -> {}",
        head.method.as_str(),
        head.path,
        response.status
    );
}
