//! The inbound connection machine (`http::server::ServerConnection`) under
//! any interleaving of peer bytes, time, partial writes, held answers and
//! a half-close: it must never panic, answer requests in the order they
//! came, queue exactly one answer per request it answered, and always have
//! a deadline unless a request waits for `resume`. Input: a stream of
//! operations (an op byte, then its argument), the rest is peer bytes.
#![no_main]

use angos::http::output::Front;
use angos::http::server::{Answered, Ending, Phase, Reply, ServerConnection, Service, State, Timeouts};
use angos::http::{Body, RequestHead, Response};
use libfuzzer_sys::fuzz_target;

const TIMEOUTS: Timeouts = Timeouts {
    header_ms: 1_000,
    body_ms: 500,
    keep_alive_ms: 2_000,
    min_rate_bytes_per_sec: 64,
};

/// Paths decide what the service does: `/p…` waits for `resume`, `/w…`
/// asks to be woken, `/u…` reads its body (more than 1,000 bytes is
/// refused), anything else is answered at once.
#[derive(Default)]
struct FuzzService {
    next_id: u64,
    /// Ids of answered requests, in answer order.
    answered: Vec<u64>,
    unrouted: usize,
}

struct Request {
    id: u64,
    path: String,
    body: usize,
}

impl Service for FuzzService {
    type Request = Request;

    fn head(&mut self, head: Box<RequestHead>, now_ms: u64) -> Reply<Request> {
        self.next_id += 1;
        let request = Request {
            id: self.next_id,
            path: head.path.clone(),
            body: 0,
        };
        match request.path.as_bytes().get(1) {
            Some(b'p') => Reply::Resume(request),
            Some(b'w') => Reply::WakeAt(request, now_ms + 50),
            Some(b'u') => Reply::ReadBody(request),
            _ => Reply::Respond(request, Response::new(200).body(Body::Bytes(b"ok".to_vec()))),
        }
    }

    fn body(&mut self, request: &mut Request, data: &[u8]) -> Result<(), Response> {
        request.body += data.len();
        if request.body > 1_000 {
            return Err(Response::new(413));
        }
        Ok(())
    }

    fn end(&mut self, request: Request, _now_ms: u64) -> Ending<Request> {
        if request.path.len() % 2 == 0 {
            Ending::Resume(request)
        } else {
            Ending::Respond(request, Response::new(201))
        }
    }

    fn wake(&mut self, request: Request, _now_ms: u64) -> Reply<Request> {
        if request.path.len() % 3 == 0 {
            Reply::ReadBody(request)
        } else {
            Reply::Respond(request, Response::new(204))
        }
    }

    fn abort(&mut self, _request: Request) {}

    fn answered(&mut self, request: Answered<'_, Request>, _response: &Response, _now_ms: u64) {
        match request {
            Answered::Request(request) => {
                if let Some(last) = self.answered.last() {
                    assert!(request.id > *last, "request {} answered after {last}", request.id);
                }
                self.answered.push(request.id);
            }
            Answered::Malformed | Answered::TimedOut => self.unrouted += 1,
        }
    }

    fn http_date(&self) -> &str {
        "Wed, 02 Dec 2026 00:00:00 GMT"
    }
}

/// Takes up to `limit` bytes of output as a socket would.
fn drain(connection: &mut ServerConnection<Request>, limit: usize, out: &mut Vec<u8>) {
    let mut left = limit;
    while left > 0 {
        let Some(Front::Bytes(bytes)) = connection.output().front() else {
            return;
        };
        let n = bytes.len().min(left);
        out.extend_from_slice(&bytes[..n]);
        connection.output().advance(n);
        connection.handle_written(n as u64);
        left -= n;
    }
}

fuzz_target!(|input: &[u8]| {
    let mut service = FuzzService::default();
    let mut connection = ServerConnection::new(2_048, TIMEOUTS, 0);
    let mut now = 0u64;
    let mut out = Vec::new();
    let mut rest = input;
    let mut closed = false;
    while let [op, argument, tail @ ..] = rest {
        rest = tail;
        match op % 6 {
            0 => {
                let n = usize::from(*argument).min(rest.len());
                let (data, tail) = rest.split_at(n);
                rest = tail;
                if connection.wants_input() || connection.phase() == Phase::Lingering {
                    connection.handle_input(data);
                }
            }
            1 => {
                now += u64::from(*argument) * 10;
                if connection.poll_timeout().is_some_and(|deadline| deadline <= now) {
                    connection.handle_timeout(&mut service, now);
                }
            }
            2 => drain(&mut connection, usize::from(*argument) * 16, &mut out),
            3 => connection.resume(Response::new(202), &mut service, now),
            4 => connection.handle_eof(&mut service, now),
            _ => {
                connection.begin_turn();
                connection.wake(&mut service, now);
            }
        }
        connection.process(&mut service, now);
        match connection.poll_state(now) {
            State::Close => {
                closed = true;
                break;
            }
            State::Linger | State::Open { .. } => {}
        }
        if connection.poll_timeout().is_none() {
            assert_eq!(connection.phase(), Phase::Waiting, "no deadline outside a held request");
        }
    }
    drain(&mut connection, usize::MAX, &mut out);
    // Every final answer's head has one `Date` line (`100 Continue` has
    // none); bodies here are "ok" or OCI error JSON, which holds no CR LF.
    let text = String::from_utf8_lossy(&out);
    let final_heads = text.matches("\r\nDate: ").count();
    assert_eq!(
        final_heads,
        service.answered.len() + service.unrouted,
        "answers queued and answers recorded differ (closed: {closed})"
    );
});
