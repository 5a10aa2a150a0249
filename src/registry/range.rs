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
    todo!()
}

/// Parses an upload PATCH `Content-Range`, which the distribution spec writes
/// as `<start>-<end>` (inclusive), also accepting the RFC form
/// `bytes <start>-<end>/<total or *>` that some clients send.
/// `None` when malformed or `end < start`.
pub fn parse_content_range(value: &str) -> Option<ByteRange> {
    todo!()
}
