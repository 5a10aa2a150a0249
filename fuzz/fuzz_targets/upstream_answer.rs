//! What an upstream registry sends the pull-through cache: the reading
//! response decoder (`ResponseDecoder::reading`, heads and bodies handed
//! out) fed a peer's bytes whole and in pieces must fail alike, and otherwise
//! see the same heads, body and completions either way; the
//! same bytes are also read as `WWW-Authenticate` values and as a token
//! endpoint's answer. Input: a mode byte (piece size, HEAD or GET), a split
//! seed, then the bytes.
#![no_main]

mod split;

use angos::http::client::{ResponseDecoder, ResponseHead};
use angos::mirror::challenge::{self, Challenge};
use libfuzzer_sys::fuzz_target;

const HEAD_BYTES_MAX: usize = 16 * 1024;

#[derive(Debug, PartialEq)]
struct Read {
    heads: Vec<ResponseHead>,
    body: Vec<u8>,
    statuses: Vec<u16>,
    failed: bool,
}

fn read<'a>(pieces: impl IntoIterator<Item = &'a [u8]>, head_request: bool) -> Read {
    let mut decoder = ResponseDecoder::reading(HEAD_BYTES_MAX, head_request);
    let mut pending: Vec<u8> = Vec::new();
    let mut out = Read {
        heads: Vec::new(),
        body: Vec::new(),
        statuses: Vec::new(),
        failed: false,
    };
    'reads: for piece in pieces {
        pending.extend_from_slice(piece);
        for _ in 0..=2 * pending.len() + 1 {
            match decoder.decode_parts(&pending) {
                Ok((consumed, parts)) => {
                    assert!(consumed <= pending.len());
                    assert!(parts.body.len() <= consumed, "more body than input");
                    pending.drain(..consumed);
                    out.heads.extend(parts.head);
                    out.body.extend_from_slice(&parts.body);
                    let done = parts.done.is_some();
                    out.statuses.extend(parts.done.map(|done| done.status));
                    if !done && (consumed == 0 || pending.is_empty()) {
                        continue 'reads;
                    }
                }
                Err(_) => {
                    out.failed = true;
                    break 'reads;
                }
            }
        }
        panic!("decoder makes no progress");
    }
    if head_request {
        assert!(out.body.is_empty(), "an answer to a HEAD has no body");
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (mode, seed, bytes) = (data[0], data[1], &data[2..]);
    let head_request = mode & 4 != 0;
    let whole = read([bytes], head_request);
    let split = read(split::pieces(bytes, mode, seed), head_request);
    // A failure is a failure however the bytes came (what a failing call had
    // decoded before its error is not handed out, so the parts before it
    // may differ); without one, everything read is the same.
    assert_eq!(whole.failed, split.failed, "the split changed whether it failed");
    if !whole.failed {
        assert_eq!(whole, split, "the split changed what was read");
    }
    // Every completed answer had its head handed out first.
    assert!(whole.heads.len() >= whole.statuses.len());
    for (head, status) in whole.heads.iter().zip(&whole.statuses) {
        assert_eq!(head.status, *status);
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        if let Some(Challenge::Bearer { realm, .. }) = challenge::parse_challenges(text.split('\n')) {
            assert!(text.to_ascii_lowercase().contains("realm"), "a realm came from nowhere: {realm:?}");
        }
        let escaped = challenge::query_escape(text);
        assert!(escaped.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~%".contains(&b)));
    }
    if let Ok((token, lifetime)) = challenge::parse_token_response(bytes) {
        assert!(!token.is_empty() && !token.bytes().any(|b| b <= b' ' || b == 0x7f));
        assert!(lifetime >= challenge::TOKEN_LIFETIME_DEFAULT_SECS);
    }
});
