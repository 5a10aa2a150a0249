//! Hostile peers for the end-to-end suite and the attack benchmark (issue
//! 19): a webhook receiver that answers with endless or huge bodies, the
//! server's peak RSS from `/proc`, and the setups of the other attacks. Std
//! only. The benches' latency probe lives in `benches/support/probe.rs`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use super::{Conn, ManifestSpec, OCI_EMPTY, OCI_MANIFEST, Server, descriptor, push_blob, push_manifest};

/// Peak resident memory of the server process, from `/proc/<pid>/status`.
pub fn peak_rss_bytes(server: &Server) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", server.pid())).expect("read /proc status");
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .expect("VmHWM in /proc status");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// What a hostile receiver sends after reading a request head.
#[derive(Clone, Copy)]
pub enum Answer {
    /// `200 OK` with a chunked body that never ends, as fast as it can.
    EndlessChunks,
    /// `500` announcing and sending `len` body bytes.
    Huge { len: u64 },
    /// `200 OK` announcing 1 MB, then one byte every 100 ms.
    Trickle,
}

/// A receiver on loopback that answers every request with `answer`; counts
/// the body bytes it managed to send.
pub struct HostileReceiver {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    pub sent: Arc<AtomicU64>,
}

impl HostileReceiver {
    pub fn start(answer: Answer) -> HostileReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        {
            let (stop, sent) = (stop.clone(), sent.clone());
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (stop, sent) = (stop.clone(), sent.clone());
                    thread::spawn(move || serve(stream, answer, &stop, &sent));
                }
            });
        }
        HostileReceiver { addr, stop, sent }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }
}

impl Drop for HostileReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(mut stream: TcpStream, answer: Answer, stop: &AtomicBool, sent: &AtomicU64) {
    // Read the request head (the body is small and ignored).
    let mut head = Vec::new();
    let mut byte = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&byte[..n]),
        }
    }
    // Each answer: a head, then one piece again and again (body bytes
    // counted as `piece_body`), up to `limit` body bytes, `pause` apart.
    let data = vec![b'x'; 16 * 1024];
    let (head, piece, piece_body, limit, pause) = match answer {
        Answer::EndlessChunks => {
            let mut framed = format!("{:x}\r\n", data.len()).into_bytes();
            framed.extend_from_slice(&data);
            framed.extend_from_slice(b"\r\n");
            let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_string();
            (head, framed, data.len() as u64, u64::MAX, Duration::ZERO)
        }
        Answer::Trickle => {
            let head = "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n".to_string();
            (head, b"x".to_vec(), 1, u64::MAX, Duration::from_millis(100))
        }
        Answer::Huge { len } => {
            let head = format!("HTTP/1.1 500 Internal Server Error\r\nContent-Length: {len}\r\n\r\n");
            (head, data.clone(), data.len() as u64, len, Duration::ZERO)
        }
    };
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    let mut left = limit;
    while left > 0 && !stop.load(Ordering::SeqCst) {
        let n = left.min(piece_body) as usize;
        // Only the last piece of a bounded body is cut short.
        let bytes = if (n as u64) < piece_body {
            &piece[..n]
        } else {
            &piece[..]
        };
        if stream.write_all(bytes).is_err() {
            return;
        }
        left -= n as u64;
        sent.fetch_add(n as u64, Ordering::Relaxed);
        if !pause.is_zero() {
            thread::sleep(pause);
        }
    }
}

/// Standard base64 (with padding) of `bytes`, for Basic credentials.
pub fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, byte)| n | (u32::from(*byte) << (16 - 8 * i)));
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

/// An empty-config image manifest whose config blob is pushed to `repo`;
/// the manifest itself is not.
pub fn empty_image(server: &Server, repo: &str) -> Vec<u8> {
    let config = b"{}".to_vec();
    push_blob(server, repo, &config);
    ManifestSpec::oci(descriptor(OCI_EMPTY, &config), vec![])
        .to_json()
        .into_bytes()
}

/// Pushes a manifest of about 4.5 MB (annotations) as `repo:v1`; its bytes.
pub fn push_large_manifest(server: &Server, repo: &str) -> Vec<u8> {
    let config = b"{}".to_vec();
    push_blob(server, repo, &config);
    let mut spec = ManifestSpec::oci(descriptor(OCI_EMPTY, &config), vec![]);
    spec.annotations = (0..450)
        .map(|n| (format!("note{n:03}"), "x".repeat(10_000)))
        .collect();
    let manifest = spec.to_json().into_bytes();
    push_manifest(server, repo, "v1", OCI_MANIFEST, &manifest);
    manifest
}

/// Tags `t00000` to `t<count-1>` of one manifest in `repo` of the server
/// running over `data_dir`: the first pushed, the rest written as the
/// storage writes them (quicker than pushes; the server has not listed the
/// namespace yet). The manifest's digest.
pub fn many_tags(server: &Server, data_dir: &std::path::Path, repo: &str, count: usize) -> String {
    let manifest = empty_image(server, repo);
    let digest = push_manifest(server, repo, "t00000", OCI_MANIFEST, &manifest);
    let tags_dir = data_dir.join(format!("repositories/{repo}/_manifests/tags"));
    for n in 1..count {
        std::fs::write(tags_dir.join(format!("t{n:05}")), format!("{digest}\n")).unwrap();
    }
    digest
}

/// `count` connections, each sending a token request with `authorization`
/// as if from `client` (through a trusted proxy), answers not awaited.
pub fn token_requests(server: &Server, count: usize, authorization: &str, client: &str) -> Vec<Conn> {
    (0..count)
        .map(|_| {
            let mut conn = server.connect();
            conn.send_request(
                "GET",
                "/v2/token",
                &[("Authorization", authorization), ("X-Forwarded-For", client)],
                b"",
            );
            conn
        })
        .collect()
}

/// `count` connections that each send `GET path` and never read the answer.
pub fn stalled_readers(server: &Server, count: usize, path: &str) -> Vec<Conn> {
    (0..count)
        .map(|_| {
            let mut conn = server.connect();
            conn.send(&Conn::request_bytes("GET", path, &[], b""));
            conn
        })
        .collect()
}
