//! The chunked body decoder (`http::chunked`, used by both the request decoder
//! and the webhook client) fed the input whole and in pieces. Input: a mode
//! byte (piece size), a split seed, then the body bytes.
#![no_main]

mod split;

use angos::http::chunked::{ChunkedDecoder, ChunkedError};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
struct Outcome {
    body: Vec<u8>,
    consumed: usize,
    done: bool,
    error: Option<ChunkedError>,
}

/// Feeds `pieces` the way the request decoder does: step until a step takes
/// nothing, keep the unconsumed rest for the next read.
fn decode<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
    let mut decoder = ChunkedDecoder::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut outcome = Outcome {
        body: Vec::new(),
        consumed: 0,
        done: false,
        error: None,
    };
    'reads: for piece in pieces {
        pending.extend_from_slice(piece);
        let mut at = 0;
        loop {
            let step = match decoder.step(&pending[at..]) {
                Ok(step) => step,
                Err(error) => {
                    outcome.error = Some(error);
                    break 'reads;
                }
            };
            assert!(step.consumed <= pending.len() - at, "consumed more than given");
            if let Some(data) = step.data {
                // Data is a slice of what this step consumed.
                assert!(data.len() <= step.consumed);
                outcome.body.extend_from_slice(data);
            }
            at += step.consumed;
            outcome.consumed += step.consumed;
            // Framing bytes surround every data byte: the body never outgrows its encoding.
            assert!(outcome.body.len() <= outcome.consumed);
            if decoder.is_done() {
                // Nothing after the last chunk and trailers belongs to this body.
                assert_eq!(decoder.step(&pending[at..]).map(|step| step.consumed), Ok(0));
                outcome.done = true;
                break 'reads;
            }
            if step.consumed == 0 {
                break;
            }
        }
        pending.drain(..at);
    }
    if outcome.done {
        // A complete chunked body is at least "0\r\n\r\n".
        assert!(outcome.consumed >= 5 && outcome.body.len() < outcome.consumed);
    }
    outcome
}

fuzz_target!(|input: &[u8]| {
    let [mode, seed, data @ ..] = input else {
        return;
    };
    let mut whole = decode([data]);
    let mut pieces = decode(split::pieces(data, *mode, *seed));
    if whole.error.is_some() {
        // Where the failing step started depends on the reads; the bytes before
        // the error do not.
        (whole.consumed, pieces.consumed) = (0, 0);
    }
    assert_eq!(whole, pieces, "the same bytes decode differently when split");
});
