//! `Range` (blob GET, RFC 9110 section 14) and `Content-Range` (chunked
//! upload PATCH, distribution-spec) header values.

/// A single satisfiable byte range `[start, end]` (inclusive) of a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeError {
    /// Not a `bytes=` range we understand (multiple ranges included): the
    /// server ignores the header and sends the whole blob (RFC 9110 14.2).
    Unsupported,
    /// Well-formed but outside the blob: 416 with `Content-Range: bytes */size`.
    Unsatisfiable,
}

/// Parses a `Range` header for a blob of `size` bytes. Accepts one range:
/// `bytes=a-b`, `bytes=a-` and the suffix form `bytes=-n`; `b` past the end is
/// clamped to `size - 1`. Multiple ranges (`,`) are `Unsupported`.
pub fn parse_range(value: &str, size: u64) -> Result<ByteRange, RangeError> {
    // `ranges-specifier = range-unit "=" range-set`; range units are
    // case-insensitive (RFC 9110 14.1) and list elements may carry OWS.
    let Some((unit, set)) = value.trim().split_once('=') else {
        return Err(RangeError::Unsupported);
    };
    if !unit.eq_ignore_ascii_case("bytes") || set.contains(',') {
        return Err(RangeError::Unsupported);
    }
    let Some((first, last)) = set.trim_matches(OWS).split_once('-') else {
        return Err(RangeError::Unsupported);
    };
    if first.is_empty() {
        // `suffix-range = "-" suffix-length`: the last n bytes. A zero length
        // selects nothing, and an empty blob has no bytes to select; a suffix
        // longer than the blob selects all of it (RFC 9110 14.1.3).
        let length = parse_decimal(last).ok_or(RangeError::Unsupported)?;
        if length == 0 || size == 0 {
            return Err(RangeError::Unsatisfiable);
        }
        return Ok(ByteRange {
            start: size - length.min(size),
            end: size - 1,
        });
    }
    let start = parse_decimal(first).ok_or(RangeError::Unsupported)?;
    let end = if last.is_empty() {
        None
    } else {
        let end = parse_decimal(last).ok_or(RangeError::Unsupported)?;
        // last < first makes the range-spec invalid (RFC 9110 14.1.1). A
        // server may ignore it, but the distribution-spec conformance suite
        // (and Go's net/http, which most clients use) answer 416: a client
        // that asked for no bytes must not be sent the whole blob.
        if end < start {
            return Err(RangeError::Unsatisfiable);
        }
        Some(end)
    };
    // Satisfiable only when first-pos is inside the representation (14.1.1);
    // this also covers every range of an empty blob.
    if start >= size {
        return Err(RangeError::Unsatisfiable);
    }
    let end = end.map_or(size - 1, |end| end.min(size - 1));
    Ok(ByteRange { start, end })
}

/// Optional whitespace (RFC 9110 5.6.3).
const OWS: &[char] = &[' ', '\t'];

/// `1*DIGIT` as a u64, saturating: a position too large for u64 is still well
/// formed and lies beyond any blob, so it must clamp or be unsatisfiable
/// rather than turn the header into garbage. `None` unless all digits.
fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.bytes().fold(0u64, |value, digit| {
        value.saturating_mul(10).saturating_add(u64::from(digit - b'0'))
    }))
}

/// `1*DIGIT` as a u64, `None` on overflow: upload offsets must be exact.
fn parse_offset(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Parses an upload PATCH `Content-Range`, which the distribution spec writes
/// as `<start>-<end>` (inclusive), also accepting the RFC form
/// `bytes <start>-<end>/<total or *>` that some clients send.
/// `None` when malformed or `end < start`.
pub fn parse_content_range(value: &str) -> Option<ByteRange> {
    let value = value.trim_matches(OWS);
    let (range, total) = match value.strip_prefix("bytes ") {
        // RFC 9110 14.4: `bytes first-last/complete-length` or `/*`.
        Some(rest) => {
            let (range, total) = rest.trim_start_matches(OWS).split_once('/')?;
            (range, Some(total))
        }
        None => (value, None),
    };
    let (start, end) = range.split_once('-')?;
    let start = parse_offset(start)?;
    let end = parse_offset(end)?;
    // The upload handler takes `end - start + 1` as the chunk length; an end
    // of u64::MAX would overflow it (found by the `range` fuzz target).
    if end < start || end == u64::MAX {
        return None;
    }
    match total {
        None | Some("*") => {}
        // A complete length the range does not fit in is invalid (RFC 9110 14.4).
        Some(total) => {
            if parse_offset(total)? <= end {
                return None;
            }
        }
    }
    Some(ByteRange { start, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: u64, end: u64) -> ByteRange {
        ByteRange { start, end }
    }

    #[test]
    fn bounded_range() {
        assert_eq!(parse_range("bytes=0-0", 100), Ok(range(0, 0)));
        assert_eq!(parse_range("bytes=0-99", 100), Ok(range(0, 99)));
        assert_eq!(parse_range("bytes=10-19", 100), Ok(range(10, 19)));
        assert_eq!(parse_range("bytes=99-99", 100), Ok(range(99, 99)));
        // A last-pos past the end is clamped (RFC 9110 14.1.2).
        assert_eq!(parse_range("bytes=50-1000", 100), Ok(range(50, 99)));
        assert_eq!(parse_range("bytes=0-0", 1), Ok(range(0, 0)));
    }

    #[test]
    fn open_range() {
        assert_eq!(parse_range("bytes=0-", 100), Ok(range(0, 99)));
        assert_eq!(parse_range("bytes=42-", 100), Ok(range(42, 99)));
        assert_eq!(parse_range("bytes=99-", 100), Ok(range(99, 99)));
    }

    #[test]
    fn suffix_range() {
        assert_eq!(parse_range("bytes=-1", 100), Ok(range(99, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Ok(range(90, 99)));
        assert_eq!(parse_range("bytes=-100", 100), Ok(range(0, 99)));
        assert_eq!(parse_range("bytes=-500", 100), Ok(range(0, 99)));
        assert_eq!(parse_range("bytes=-0", 100), Err(RangeError::Unsatisfiable));
    }

    #[test]
    fn unsatisfiable() {
        assert_eq!(parse_range("bytes=100-", 100), Err(RangeError::Unsatisfiable));
        assert_eq!(parse_range("bytes=100-200", 100), Err(RangeError::Unsatisfiable));
        assert_eq!(parse_range("bytes=500-600", 100), Err(RangeError::Unsatisfiable));
        for value in ["bytes=0-0", "bytes=0-", "bytes=-1", "bytes=-0", "bytes=5-10"] {
            assert_eq!(parse_range(value, 0), Err(RangeError::Unsatisfiable), "{value}");
        }
    }

    #[test]
    fn huge_positions_saturate() {
        let huge = "99999999999999999999999999";
        assert_eq!(
            parse_range(&format!("bytes={huge}-"), 100),
            Err(RangeError::Unsatisfiable)
        );
        assert_eq!(parse_range(&format!("bytes=5-{huge}"), 100), Ok(range(5, 99)));
        assert_eq!(parse_range(&format!("bytes=-{huge}"), 100), Ok(range(0, 99)));
    }

    #[test]
    fn lenient_spelling() {
        assert_eq!(parse_range("Bytes=1-2", 100), Ok(range(1, 2)));
        assert_eq!(parse_range(" bytes= 1-2 ", 100), Ok(range(1, 2)));
    }

    #[test]
    fn unsupported() {
        let cases = [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=abc",
            "bytes=a-b",
            "bytes=1-a",
            "bytes=+1-2",
            "bytes=1 - 2",
            "bytes=0x10-",
            "bytes=0-1,5-6",
            "bytes=0-1, 5-6",
            "items=0-1",
            "0-1",
            "bytes 0-1",
            "bytes=1-2-3",
        ];
        for value in cases {
            assert_eq!(parse_range(value, 100), Err(RangeError::Unsupported), "{value:?}");
        }
        // Garbage wins over an empty blob: the header is ignored, not answered with 416.
        assert_eq!(parse_range("bytes=x", 0), Err(RangeError::Unsupported));
        // An inverted range asks for no bytes: 416, as the conformance suite expects.
        assert_eq!(parse_range("bytes=5-3", 100), Err(RangeError::Unsatisfiable));
        assert_eq!(parse_range("bytes=500-0", 2048), Err(RangeError::Unsatisfiable));
    }

    #[test]
    fn content_range_forms() {
        assert_eq!(parse_content_range("0-99"), Some(range(0, 99)));
        assert_eq!(parse_content_range("0-0"), Some(range(0, 0)));
        assert_eq!(parse_content_range("100-199"), Some(range(100, 199)));
        assert_eq!(parse_content_range("bytes 0-99/100"), Some(range(0, 99)));
        assert_eq!(parse_content_range("bytes 0-99/*"), Some(range(0, 99)));
        assert_eq!(parse_content_range("bytes 100-199/1000"), Some(range(100, 199)));
        assert_eq!(parse_content_range(" 0-99 "), Some(range(0, 99)));
    }

    #[test]
    fn content_range_invalid() {
        let cases = [
            "",
            "abc",
            "5-3",
            "-",
            "0-",
            "-99",
            "a-b",
            "+0-9",
            "0 - 99",
            "0-99/100",
            "bytes 0-99",
            "bytes 0-99/",
            "bytes 0-99/99",
            "bytes 0-99/abc",
            "bytes */100",
            "bytes=0-99",
            "0-99999999999999999999999",
        ];
        for value in cases {
            assert_eq!(parse_content_range(value), None, "{value:?}");
        }
    }
}
