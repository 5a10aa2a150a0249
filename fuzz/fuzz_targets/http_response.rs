//! The webhook client's response decoder (`http::client::ResponseDecoder`) fed a
//! peer's bytes whole and in pieces, then the peer's close (`eof`). Input: a
//! mode byte (piece size, head limit), a split seed, then the response bytes.
#![no_main]

mod split;

use angos::http::client::{ResponseDecoder, ResponseDone, ResponseError};
use libfuzzer_sys::fuzz_target;

/// `head_bytes_max` values; the client uses 16 KiB.
const HEAD_BYTES_LIMITS: [usize; 4] = [24, 256, 16 * 1024, 64 * 1024];

#[derive(Debug, PartialEq)]
struct Outcome {
    responses: Vec<ResponseDone>,
    error: Option<ResponseError>,
    /// Bytes never consumed (an incomplete head).
    pending: Vec<u8>,
    eof: Result<ResponseDone, ResponseError>,
}

fn decode<'a>(pieces: impl IntoIterator<Item = &'a [u8]>, head_bytes_max: usize) -> Outcome {
    let mut decoder = ResponseDecoder::new(head_bytes_max);
    let mut pending: Vec<u8> = Vec::new();
    let mut responses = Vec::new();
    let mut error = None;
    'reads: for piece in pieces {
        pending.extend_from_slice(piece);
        // Each call consumes bytes or completes a response (whose head consumed bytes).
        for _ in 0..=2 * pending.len() + 1 {
            match decoder.decode(&pending) {
                Ok((consumed, done)) => {
                    assert!(consumed <= pending.len(), "consumed more than given");
                    pending.drain(..consumed);
                    match done {
                        Some(done) => {
                            assert!((200..=999).contains(&done.status), "final status {}", done.status);
                            assert!(decoder.is_idle());
                            responses.push(done);
                        }
                        None if consumed == 0 || pending.is_empty() => continue 'reads,
                        None => {}
                    }
                }
                Err(failed) => {
                    // Failed for good: the framing is lost.
                    assert_eq!(decoder.decode(b"HTTP/1.1 200 OK\r\n\r\n"), Err(failed));
                    error = Some(failed);
                    break 'reads;
                }
            }
        }
        panic!("decoder makes no progress");
    }
    if error.is_none() {
        assert!(
            pending.len() < head_bytes_max,
            "an incomplete head outgrew its limit"
        );
    }
    let eof = decoder.eof();
    // Nothing follows an EOF.
    assert!(decoder.eof().is_err());
    Outcome {
        responses,
        error,
        pending,
        eof,
    }
}

fuzz_target!(|input: &[u8]| {
    let [mode, seed, data @ ..] = input else {
        return;
    };
    let head_bytes_max = HEAD_BYTES_LIMITS[usize::from((mode >> 2) & 3)];
    let whole = decode([data], head_bytes_max);
    let pieces = decode(split::pieces(data, *mode, *seed), head_bytes_max);
    if whole.error.is_some() {
        assert_eq!((&whole.responses, whole.error), (&pieces.responses, pieces.error));
    } else {
        assert_eq!(whole, pieces, "the same bytes decode differently when split");
    }
});
