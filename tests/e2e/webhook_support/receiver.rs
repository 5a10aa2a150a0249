//! A std-only HTTP/1.1 webhook receiver on `127.0.0.1:0`: one accept thread, one
//! thread per connection, keep-alive. It records every request (method, path,
//! headers, the exact body bytes, arrival and reply instants, the connection it
//! came on) and answers as the test says: a status (with extra header fields)
//! after an optional delay, a redirect, never (hang), or by closing the connection; a counting receiver (the
//! registry bench's) keeps only how many came. It must not interpret the payload:
//! that is the tests' job.

use crate::common::Json;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How often a connection thread looks at the stop flag while it waits for bytes.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Upper bound on one request (head and body); webhook payloads are small.
const REQUEST_BYTES_MAX: usize = 1 << 20;

/// How the receiver answers one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// `status` after `delay`, with `headers` (a `Location`, a `Retry-After`...).
    Status {
        status: u16,
        delay: Duration,
        headers: Vec<(String, String)>,
    },
    /// Keep the connection open and never answer.
    Hang,
    /// Hold the request until `Receiver::release`, then answer `200 OK`.
    Held,
    /// Close the connection without answering.
    Close,
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::status(200)
    }

    pub fn status(status: u16) -> Reply {
        Reply::Status {
            status,
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }

    pub fn delayed(status: u16, delay: Duration) -> Reply {
        Reply::Status {
            status,
            delay,
            headers: Vec::new(),
        }
    }

    /// `302 Found` to `location`.
    pub fn redirect(location: &str) -> Reply {
        Reply::status(302).header("Location", location)
    }

    /// The same answer with one more header field.
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        if let Reply::Status { headers, .. } = &mut self {
            headers.push((name.to_string(), value.to_string()));
        }
        self
    }
}

/// One request as the receiver read it.
#[derive(Clone, Debug)]
pub struct Request {
    /// Position in arrival order, from 0.
    pub index: usize,
    /// Which accepted TCP connection carried it (from 1, in accept order).
    pub conn_id: u64,
    pub method: String,
    pub path: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When the whole request had been read.
    pub arrived: Instant,
    /// When the answer had been written, if one was.
    pub replied: Option<Instant>,
}

impl Request {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the request when it is not.
    pub fn json(&self) -> Json {
        Json::parse(&self.text())
            .unwrap_or_else(|e| panic!("webhook body is not JSON ({e}): {}", self.describe()))
    }

    /// The `X-Registry-Event` header, or "" when absent.
    pub fn event_header(&self) -> &str {
        self.header("x-registry-event").unwrap_or("")
    }

    /// A top-level string field of the JSON body.
    pub fn field(&self, key: &str) -> Option<String> {
        self.json().get(key).and_then(Json::as_str).map(str::to_string)
    }

    /// The payload's `kind`; panics when it is missing.
    pub fn kind(&self) -> String {
        self.field("kind")
            .unwrap_or_else(|| panic!("payload without a kind: {}", self.describe()))
    }

    /// A short dump for assertion messages.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "#{} (connection {}) {} {} {}",
            self.index, self.conn_id, self.method, self.path, self.version
        );
        for (n, v) in &self.headers {
            let _ = write!(out, "\n    {n}: {v}");
        }
        let _ = write!(out, "\n    body: {}", self.text());
        out
    }
}

/// A dump of several requests for assertion messages.
pub fn describe_all(requests: &[Request]) -> String {
    if requests.is_empty() {
        return "(no requests)".to_string();
    }
    requests
        .iter()
        .map(Request::describe)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs on the connection's thread after the request is recorded and before the
/// reply (and its delay): a receiver that "does something when notified".
pub type Hook = Arc<dyn Fn(&Request) + Send + Sync>;

struct State {
    requests: Vec<Request>,
    /// False for a counting receiver: `requests` stays empty, `seen` counts.
    keep: bool,
    seen: usize,
    default_reply: Reply,
    script: VecDeque<Reply>,
    hook: Option<Hook>,
    connections: u64,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
    released: AtomicBool,
}

/// A running receiver; stops accepting on drop (connection threads notice within
/// `POLL_INTERVAL`).
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Receiver {
    /// A receiver that answers `reply` to every request.
    pub fn start(reply: Reply) -> Receiver {
        Receiver::start_keeping(reply, true)
    }

    /// A receiver that answers `reply` and only counts requests (`count`): the
    /// registry bench sends hundreds of thousands, which `start` would all keep.
    // Only the bench calls it, so the test crate alone sees it unused.
    #[allow(dead_code)]
    pub fn counting(reply: Reply) -> Receiver {
        Receiver::start_keeping(reply, false)
    }

    fn start_keeping(reply: Reply, keep: bool) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a receiver on 127.0.0.1:0");
        let addr = listener.local_addr().expect("receiver address");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                requests: Vec::new(),
                keep,
                seen: 0,
                default_reply: reply,
                script: VecDeque::new(),
                hook: None,
                connections: 0,
            }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            released: AtomicBool::new(false),
        });
        let accept = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || accept_loop(listener, shared))
        };
        Receiver {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// A receiver that answers `200 OK` at once.
    pub fn ok() -> Receiver {
        Receiver::start(Reply::ok())
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The answer to requests that arrive from now on (and are not scripted).
    pub fn set_reply(&self, reply: Reply) {
        self.shared.state.lock().unwrap().default_reply = reply;
    }

    /// Answers for the next requests, in order, before the default one applies again.
    pub fn script(&self, replies: Vec<Reply>) {
        self.shared.state.lock().unwrap().script.extend(replies);
    }

    pub fn set_hook(&self, hook: impl Fn(&Request) + Send + Sync + 'static) {
        self.shared.state.lock().unwrap().hook = Some(Arc::new(hook));
    }

    /// Lets every `Reply::Held` request (held now or later) be answered.
    pub fn release(&self) {
        self.shared.released.store(true, Ordering::SeqCst);
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.state.lock().unwrap().requests.clone()
    }

    pub fn count(&self) -> usize {
        self.shared.state.lock().unwrap().seen
    }

    /// How many requests have been answered.
    pub fn replied_count(&self) -> usize {
        let state = self.shared.state.lock().unwrap();
        state.requests.iter().filter(|r| r.replied.is_some()).count()
    }

    /// How many TCP connections have been accepted.
    pub fn connections(&self) -> u64 {
        self.shared.state.lock().unwrap().connections
    }

    /// Waits until at least `n` requests arrived; `None` on timeout.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Option<Vec<Request>> {
        self.wait_until(timeout, |state| state.requests.len() >= n)
    }

    /// Waits until at least `n` requests have been answered; `None` on timeout.
    pub fn wait_replied(&self, n: usize, timeout: Duration) -> Option<Vec<Request>> {
        self.wait_until(timeout, |state| {
            state.requests.iter().filter(|r| r.replied.is_some()).count() >= n
        })
    }

    fn wait_until(&self, timeout: Duration, done: impl Fn(&State) -> bool) -> Option<Vec<Request>> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.state.lock().unwrap();
        loop {
            if done(&state) {
                return Some(state.requests.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            state = self.shared.changed.wait_timeout(state, left).unwrap().0;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let conn_id = {
            let mut state = shared.state.lock().unwrap();
            state.connections += 1;
            state.connections
        };
        let shared = Arc::clone(&shared);
        thread::spawn(move || serve(stream, conn_id, &shared));
    }
}

fn serve(mut stream: TcpStream, conn_id: u64, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(POLL_INTERVAL));
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    loop {
        let Some(parsed) = read_request(&mut stream, &mut buf, &shared.stop) else {
            return;
        };
        let (request, reply, hook) = {
            let mut state = shared.state.lock().unwrap();
            let reply = state
                .script
                .pop_front()
                .unwrap_or_else(|| state.default_reply.clone());
            let request = Request {
                index: state.seen,
                conn_id,
                method: parsed.method,
                path: parsed.path,
                version: parsed.version,
                headers: parsed.headers,
                body: parsed.body,
                arrived: Instant::now(),
                replied: None,
            };
            state.seen += 1;
            if state.keep {
                state.requests.push(request.clone());
            }
            shared.changed.notify_all();
            (request, reply, state.hook.clone())
        };
        if let Some(hook) = hook {
            hook(&request);
        }
        let reply = match reply {
            Reply::Held => {
                while !shared.released.load(Ordering::SeqCst) {
                    if shared.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    thread::sleep(Duration::from_millis(10));
                }
                Reply::ok()
            }
            other => other,
        };
        match reply {
            Reply::Held => unreachable!("resolved above"),
            Reply::Status {
                status,
                delay,
                headers,
            } => {
                if !pause(delay, &shared.stop) {
                    return;
                }
                let close = request
                    .header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                if stream
                    .write_all(&response_bytes(status, &headers, close))
                    .is_err()
                {
                    return;
                }
                {
                    let mut state = shared.state.lock().unwrap();
                    if let Some(kept) = state.requests.get_mut(request.index) {
                        kept.replied = Some(Instant::now());
                    }
                    shared.changed.notify_all();
                }
                if close {
                    let _ = stream.shutdown(Shutdown::Both);
                    return;
                }
            }
            Reply::Hang => {
                // Hold the connection until the peer gives up or the test ends.
                let mut scratch = [0u8; 4096];
                while !shared.stop.load(Ordering::SeqCst) {
                    match stream.read(&mut scratch) {
                        Ok(0) => return,
                        Ok(_) => {}
                        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => return,
                    }
                }
                return;
            }
            Reply::Close => {
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

/// Sleeps `delay` in small steps; false when the receiver is stopping.
fn pause(delay: Duration, stop: &AtomicBool) -> bool {
    let until = Instant::now() + delay;
    loop {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        thread::sleep(left.min(POLL_INTERVAL));
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        404 => "Not Found",
        410 => "Gone",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn response_bytes(status: u16, headers: &[(String, String)], close: bool) -> Vec<u8> {
    let body: &[u8] = if status == 204 || status == 304 {
        b""
    } else if (200..300).contains(&status) {
        b"ok"
    } else {
        b"not ok"
    };
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    if status != 204 && status != 304 {
        let _ = write!(
            head,
            "Content-Type: text/plain\r\nContent-Length: {}\r\n",
            body.len()
        );
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

struct Parsed {
    method: String,
    path: String,
    version: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Reads bytes into `buf` until `ready` says a prefix of `buf` is complete;
/// `None` on EOF, error, oversize or stop.
fn fill_until(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    stop: &AtomicBool,
    mut ready: impl FnMut(&[u8]) -> bool,
) -> Option<()> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if ready(buf) {
            return Some(());
        }
        if buf.len() > REQUEST_BYTES_MAX || stop.load(Ordering::SeqCst) {
            return None;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => return None,
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>, stop: &AtomicBool) -> Option<Parsed> {
    fill_until(stream, buf, stop, |b| find(b, b"\r\n\r\n").is_some())?;
    let head_end = find(buf, b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end - 4]).into_owned();
    buf.drain(..head_end);
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.splitn(3, ' ');
    let method = request_line.next()?.to_string();
    let path = request_line.next()?.to_string();
    let version = request_line.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let chunked = header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        read_chunked(stream, buf, stop)?
    } else {
        let length: usize = header("content-length").map_or(Some(0), |v| v.parse().ok())?;
        fill_until(stream, buf, stop, |b| b.len() >= length)?;
        buf.drain(..length).collect()
    };
    Some(Parsed {
        method,
        path,
        version,
        headers,
        body,
    })
}

fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>, stop: &AtomicBool) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        fill_until(stream, buf, stop, |b| find(b, b"\r\n").is_some())?;
        let line_end = find(buf, b"\r\n")?;
        let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        buf.drain(..line_end + 2);
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                fill_until(stream, buf, stop, |b| find(b, b"\r\n").is_some())?;
                let end = find(buf, b"\r\n")?;
                buf.drain(..end + 2);
                if end == 0 {
                    return Some(body);
                }
            }
        }
        fill_until(stream, buf, stop, |b| b.len() >= size + 2)?;
        body.extend_from_slice(&buf[..size]);
        if &buf[size..size + 2] != b"\r\n" {
            return None;
        }
        buf.drain(..size + 2);
    }
}
