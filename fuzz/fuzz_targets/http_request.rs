//! Request decoding as the server runs it: `RequestDecoder` fed the input in
//! pieces, driven like `http::server::ServerConnection` drives it, and `parse_head` on the
//! whole input. Input: a mode byte (piece size, header limit), a split seed,
//! then the bytes a client sends.
#![no_main]

mod split;

use angos::http::request::parse_head;
use angos::http::{BodyFraming, RequestDecoder, RequestError, RequestEvent};
use libfuzzer_sys::fuzz_target;

/// `max_header_size` values: tiny ones reach the 431 paths, 16 KiB is the default.
const HEADER_BYTES_LIMITS: [usize; 4] = [32, 512, 16 * 1024, 64 * 1024];

#[derive(Debug, PartialEq)]
enum Seen {
    Head(String),
    /// Body bytes, merged across events: how a body is sliced depends on the reads.
    Body(Vec<u8>),
    End,
    Error(RequestError),
}

struct Connection {
    decoder: RequestDecoder,
    max_header_size: usize,
    pending: Vec<u8>,
    seen: Vec<Seen>,
    failed: bool,
    /// Framing of the request whose body is being read, and its bytes so far.
    framing: Option<BodyFraming>,
    body_bytes: u64,
    /// Bytes the decoder consumed since the current head.
    consumed_since_head: u64,
}

impl Connection {
    fn new(max_header_size: usize) -> Connection {
        Connection {
            decoder: RequestDecoder::new(max_header_size),
            max_header_size,
            pending: Vec::new(),
            seen: Vec::new(),
            failed: false,
            framing: None,
            body_bytes: 0,
            consumed_since_head: 0,
        }
    }

    /// What `Connection::process` does with newly read bytes: decode until no
    /// event, drop what was consumed, stop for good at the first error.
    fn receive(&mut self, bytes: &[u8]) {
        if self.failed {
            return;
        }
        self.pending.extend_from_slice(bytes);
        let mut at = 0;
        // Every event but `End` consumes input, and `End` follows a head or a
        // body: more events than this means the decoder is stuck.
        let events_max = 2 * self.pending.len() + 2;
        let mut events = 0;
        loop {
            let (consumed, event) = match self.decoder.decode(&self.pending[at..]) {
                Ok(step) => step,
                Err(error) => {
                    assert!((400..=501).contains(&error.status()));
                    self.seen.push(Seen::Error(error));
                    self.failed = true;
                    break;
                }
            };
            assert!(consumed <= self.pending.len() - at, "consumed more than given");
            at += consumed;
            self.consumed_since_head += consumed as u64;
            let Some(event) = event else { break };
            events += 1;
            assert!(events <= events_max, "decoder yields events without progress");
            match event {
                RequestEvent::Head(head) => {
                    assert!(consumed > 0 && consumed <= self.max_header_size);
                    assert!(head.path.starts_with('/'), "path {:?}", head.path);
                    assert!(
                        head.headers
                            .iter()
                            .all(|(name, _)| !name.bytes().any(|b| b.is_ascii_uppercase()))
                    );
                    self.framing = Some(head.framing);
                    self.body_bytes = 0;
                    self.consumed_since_head = 0;
                    self.seen.push(Seen::Head(format!("{head:?}")));
                }
                RequestEvent::Body(data) => {
                    assert!(!data.is_empty(), "empty body event");
                    assert!(self.decoder.in_body() || !self.decoder.is_idle());
                    self.body_bytes += data.len() as u64;
                    match self.framing {
                        Some(BodyFraming::Length(length)) => assert!(self.body_bytes <= length),
                        Some(BodyFraming::Chunked) => assert!(self.body_bytes <= self.consumed_since_head),
                        other => panic!("body for framing {other:?}"),
                    }
                    match self.seen.last_mut() {
                        Some(Seen::Body(body)) => body.extend_from_slice(data),
                        _ => self.seen.push(Seen::Body(data.to_vec())),
                    }
                }
                RequestEvent::End => {
                    match self.framing.take() {
                        Some(BodyFraming::Length(length)) => assert_eq!(self.body_bytes, length),
                        Some(BodyFraming::None) => assert_eq!(self.body_bytes, 0),
                        Some(BodyFraming::Chunked) => {}
                        None => panic!("End without a head"),
                    }
                    assert!(self.decoder.is_idle());
                    self.seen.push(Seen::End);
                }
            }
        }
        self.pending.drain(..at);
    }
}

fuzz_target!(|input: &[u8]| {
    let [mode, seed, data @ ..] = input else {
        return;
    };
    let max_header_size = HEADER_BYTES_LIMITS[usize::from((mode >> 2) & 3)];

    let direct = parse_head(data, max_header_size);
    if let Ok(Some((consumed, _))) = &direct {
        assert!(*consumed <= data.len().min(max_header_size));
    }

    let mut whole = Connection::new(max_header_size);
    whole.receive(data);
    // The decoder's first step on the whole input is `parse_head`, except
    // that it parses only once a line has ended (or the size limit is hit):
    // before that, a malformed start waits for its line end.
    let line_ended = data.contains(&b'\n') || data.len() >= max_header_size;
    match (&direct, whole.seen.first()) {
        (Ok(Some((_, head))), Some(Seen::Head(seen))) => assert_eq!(&format!("{head:?}"), seen),
        (Ok(None), None) => {}
        (Err(_), None) if !line_ended => {}
        (Err(error), Some(Seen::Error(seen))) => assert_eq!(error, seen),
        (direct, seen) => panic!("parse_head gave {direct:?}, the decoder {seen:?}"),
    }

    let mut pieces = Connection::new(max_header_size);
    for piece in split::pieces(data, *mode, *seed) {
        pieces.receive(piece);
    }
    // A malformed head is reported when a line ends after the damage: one
    // side may already have reported an error the other is still waiting to
    // see. Everything before it must agree.
    let (longer, shorter) = if whole.seen.len() >= pieces.seen.len() {
        (&whole.seen, &pieces.seen)
    } else {
        (&pieces.seen, &whole.seen)
    };
    let lagging = longer.len() == shorter.len() + 1
        && matches!(longer.last(), Some(Seen::Error(_)))
        && longer.starts_with(shorter);
    assert!(
        whole.seen == pieces.seen || lagging,
        "the same bytes decode differently when split: {:?} vs {:?}",
        whole.seen,
        pieces.seen
    );
    if !whole.failed && !pieces.failed {
        assert_eq!(whole.pending, pieces.pending);
        assert_eq!(whole.decoder.is_idle(), pieces.decoder.is_idle());
    }
});
