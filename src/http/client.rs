//! The webhook client side of HTTP/1.1: request serialization and a response decoder.
//! Sans-IO: bytes in, bytes out; never touches a socket or a clock, never buffers a body.

use std::fmt;

use super::chunked::ChunkedDecoder;
use super::fields::{Codings, FieldError, FramingFields, is_token};

/// Header fields per response head we parse; more is treated as a head too large.
const HEADERS_MAX: usize = 64;
/// Interim (1xx) responses we skip before the final one. A server may send a
/// few (100, 102, 103); an endless stream of them is a broken or hostile peer.
const INTERIM_RESPONSES_MAX: u32 = 16;

/// Appends one request to `out`: the request line, `Host`, `headers` in order,
/// `Content-Length`, `Connection: keep-alive`, the blank line and `body`.
///
/// Header values must not contain CR or LF (header injection); the callers
/// validate configuration up front, so here it is only asserted in debug
/// builds. `headers` must not repeat the framing fields this function writes.
pub fn write_request(
    out: &mut Vec<u8>,
    method: &str,
    path_and_query: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) {
    out.reserve(128 + body.len());
    write_request_head(out, method, path_and_query, host, headers, body.len() as u64);
    out.extend_from_slice(body);
}

/// Appends a request head like `write_request` does, announcing a body of
/// `content_length` bytes that the caller sends after it (a streamed upload).
pub fn write_request_head(
    out: &mut Vec<u8>,
    method: &str,
    path_and_query: &str,
    host: &str,
    headers: &[(&str, &str)],
    content_length: u64,
) {
    debug_assert!(is_token(method), "method {method:?} is not a token");
    debug_assert!(
        path_and_query.starts_with('/') && !path_and_query.bytes().any(|b| b.is_ascii_whitespace()),
        "request target {path_and_query:?} is not an origin-form path"
    );
    debug_assert!(is_field_value(host), "Host {host:?} contains CR, LF or NUL");
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n");
    for &(name, value) in headers {
        debug_assert!(is_token(name), "header name {name:?} is not a token");
        debug_assert!(
            is_field_value(value),
            "header {name} value contains CR, LF or NUL"
        );
        // A second Host, length or Connection would make the framing ambiguous.
        debug_assert!(
            !["host", "content-length", "transfer-encoding", "connection"]
                .iter()
                .any(|framing| name.eq_ignore_ascii_case(framing)),
            "header {name} is written by write_request itself"
        );
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // Always sent, even for an empty body: a POST without a length is a
    // request some servers wait on (or answer 411).
    out.extend_from_slice(b"Content-Length: ");
    out.extend_from_slice(content_length.to_string().as_bytes());
    out.extend_from_slice(b"\r\nConnection: keep-alive\r\n\r\n");
}

/// No CR, LF or NUL: the bytes that would end or corrupt the field line
/// (RFC 9110 section 5.5).
fn is_field_value(text: &str) -> bool {
    !text.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0))
}

/// A complete response: its status, whether the connection may carry the
/// next request, and its `Retry-After` when it had a valid one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseDone {
    pub status: u16,
    pub keep_alive: bool,
    pub retry_after: Option<RetryAfter>,
}

/// A `Retry-After` field (RFC 9110 section 10.2.3), as the response said it.
/// The decoder reads no clock: turning a date into a delay is the caller's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAfter {
    /// `delay-seconds`; saturates rather than overflow.
    Seconds(u64),
    /// An HTTP-date, in Unix seconds, with the response's own `Date` (Unix
    /// seconds) when it carried a valid one: the delay is the difference of
    /// the two, so the receiver's clock and ours need not agree.
    Date {
        unix_secs: u64,
        response_date: Option<u64>,
    },
}

impl RetryAfter {
    /// Parses the field's value; `None` for anything invalid (which the
    /// caller ignores).
    pub fn parse(value: &[u8], response_date: Option<u64>) -> Option<RetryAfter> {
        let text = std::str::from_utf8(value).ok()?;
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            // 1*DIGIT; an absurd number of digits is an absurdly long wait.
            return Some(RetryAfter::Seconds(text.parse().unwrap_or(u64::MAX)));
        }
        let unix_secs = crate::clock::parse_http_date(text)?;
        Some(RetryAfter::Date {
            unix_secs,
            response_date,
        })
    }

    /// The delay it asks for in ms, given our wall clock (Unix ms) for a date
    /// when the response had no `Date` of its own. A date in the past asks
    /// for no delay.
    pub fn delay_ms(self, our_unix_ms: u64) -> u64 {
        match self {
            RetryAfter::Seconds(secs) => secs.saturating_mul(1000),
            RetryAfter::Date {
                unix_secs,
                response_date,
            } => {
                let reference_ms = response_date.map_or(our_unix_ms, |date| date.saturating_mul(1000));
                unix_secs.saturating_mul(1000).saturating_sub(reference_ms)
            }
        }
    }
}

/// Why a response could not be read. Any of them means the connection's
/// framing is lost: close it and count the attempt as failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseError {
    MalformedStatusLine,
    MalformedHeader,
    /// The head exceeds `head_bytes_max` or has more than `HEADERS_MAX` fields.
    HeadTooLarge,
    /// 101 Switching Protocols: we never ask to upgrade.
    UnexpectedUpgrade,
    TooManyInterimResponses,
    /// RFC 9112 section 6.1: both is how response smuggling starts.
    ContentLengthWithTransferEncoding,
    InvalidContentLength,
    ConflictingContentLength,
    InvalidTransferEncoding,
    /// RFC 9112 section 6.1: Transfer-Encoding in HTTP/1.0 is faulty framing.
    TransferEncodingInHttp10,
    MalformedChunkedBody,
    /// The peer closed before the response head was complete.
    ClosedBeforeHead,
    /// The peer closed before the declared body length or the last chunk.
    ClosedInBody,
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResponseError::MalformedStatusLine => "malformed response status line",
            ResponseError::MalformedHeader => "malformed response header",
            ResponseError::HeadTooLarge => "response head too large",
            ResponseError::UnexpectedUpgrade => "unexpected 101 Switching Protocols response",
            ResponseError::TooManyInterimResponses => "too many interim (1xx) responses",
            ResponseError::ContentLengthWithTransferEncoding => {
                "response has both Content-Length and Transfer-Encoding"
            }
            ResponseError::InvalidContentLength => "invalid Content-Length in response",
            ResponseError::ConflictingContentLength => "conflicting Content-Length values in response",
            ResponseError::InvalidTransferEncoding => "invalid Transfer-Encoding in response",
            ResponseError::TransferEncodingInHttp10 => "Transfer-Encoding in an HTTP/1.0 response",
            ResponseError::MalformedChunkedBody => "malformed chunked response body",
            ResponseError::ClosedBeforeHead => "connection closed before the response head was complete",
            ResponseError::ClosedInBody => "connection closed before the end of the response body",
        })
    }
}

impl std::error::Error for ResponseError {}

/// How the body after a final head is delimited (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// 1xx: no body, the final response follows.
    Interim,
    None,
    Length(u64),
    Chunked,
    /// No length given: the body runs until the peer closes.
    UntilEof,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    status: u16,
    keep_alive: bool,
    framing: Framing,
    retry_after: Option<RetryAfter>,
    /// The head's fields, names lowercased; kept only when the decoder was
    /// asked to (`with_fields`).
    fields: Vec<(String, String)>,
    content_length: Option<u64>,
}

/// A final response head for a client that reads the answer (the upstream
/// registries' client), not just its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// Names lowercased, in order; values that are not UTF-8 are dropped.
    pub fields: Vec<(String, String)>,
    /// `Content-Length` when the body is framed by one.
    pub content_length: Option<u64>,
}

impl ResponseHead {
    /// The first field named `name` (lowercase).
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.as_str())
    }

    /// Every field named `name` (lowercase).
    pub fn fields_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .iter()
            .filter(move |(field, _)| field == name)
            .map(|(_, value)| value.as_str())
    }
}

/// What `ResponseDecoder::decode_parts` found in one call.
#[derive(Debug, Default)]
pub struct Parts {
    /// The final head, the call it was parsed in.
    pub head: Option<ResponseHead>,
    /// Body bytes (copied out of the input), in order.
    pub body: Vec<u8>,
    /// The response is complete.
    pub done: Option<ResponseDone>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Waiting for a head; `interim` counts the 1xx heads skipped so far.
    Head {
        interim: u32,
    },
    Length {
        remaining: u64,
        done: ResponseDone,
    },
    Chunked {
        decoder: ChunkedDecoder,
        done: ResponseDone,
    },
    UntilEof {
        done: ResponseDone,
    },
    /// An error was returned; the framing is lost for good.
    Failed(ResponseError),
}

/// Reads one response after another from a connection's bytes, reporting each
/// one's status once its body has been framed and skipped. Body bytes are
/// consumed and dropped as they arrive, so memory stays bounded by the head.
///
/// It assumes every request may have a body in its response: do not use it
/// for answers to HEAD (we only POST).
#[derive(Debug, Clone)]
pub struct ResponseDecoder {
    state: State,
    head_bytes_max: usize,
    /// The request was a HEAD: its answer has no body whatever it declares.
    head_request: bool,
    /// Keep the final head's fields for `decode_parts`.
    with_fields: bool,
    /// The last final head's fields, until `decode_parts` takes them.
    head: Option<ResponseHead>,
}

impl ResponseDecoder {
    pub fn new(head_bytes_max: usize) -> ResponseDecoder {
        ResponseDecoder {
            state: State::Head { interim: 0 },
            head_bytes_max,
            head_request: false,
            with_fields: false,
            head: None,
        }
    }

    /// A decoder for a client that reads heads and bodies
    /// (`decode_parts`); `head_request` for the answer to a HEAD.
    pub fn reading(head_bytes_max: usize, head_request: bool) -> ResponseDecoder {
        ResponseDecoder {
            head_request,
            with_fields: true,
            ..ResponseDecoder::new(head_bytes_max)
        }
    }

    /// Like `decode`, but hands out the final head and the body bytes too
    /// (at most `input`'s length of them: memory stays the caller's).
    pub fn decode_parts(&mut self, input: &[u8]) -> Result<(usize, Parts), ResponseError> {
        let mut parts = Parts::default();
        if let State::Failed(error) = self.state {
            return Err(error);
        }
        let result = self.decode_inner(input, &mut |data| parts.body.extend_from_slice(data));
        match result {
            Ok((consumed, done)) => {
                parts.head = self.head.take();
                parts.done = done;
                Ok((consumed, parts))
            }
            Err(error) => {
                self.state = State::Failed(error);
                Err(error)
            }
        }
    }

    /// `true` between responses: no head or body is partly read.
    pub fn is_idle(&self) -> bool {
        self.state == State::Head { interim: 0 }
    }

    /// The final response's head (status, `Retry-After`) while its body is
    /// being read.
    pub fn head_in_body(&self) -> Option<ResponseDone> {
        match &self.state {
            State::Length { done, .. } | State::Chunked { done, .. } | State::UntilEof { done } => {
                Some(*done)
            }
            State::Head { .. } | State::Failed(_) => None,
        }
    }

    /// Consumes what it can of `input` and returns the bytes consumed and, once
    /// a whole response has been read, its outcome. It stops right after that
    /// response, so the caller keeps the unconsumed rest (a pipelined next
    /// response) and passes it again, with any new bytes appended. An
    /// incomplete head is not consumed: pass it again with more bytes.
    /// After an error, every later call returns the same error.
    pub fn decode(&mut self, input: &[u8]) -> Result<(usize, Option<ResponseDone>), ResponseError> {
        if let State::Failed(error) = self.state {
            return Err(error);
        }
        let result = self.decode_inner(input, &mut |_| {});
        if let Err(error) = result {
            self.state = State::Failed(error);
        }
        result
    }

    /// The peer closed the connection (after every byte it sent went through
    /// `decode`). That completes a close-delimited body; anywhere else it is
    /// an error.
    pub fn eof(&mut self) -> Result<ResponseDone, ResponseError> {
        let result = match self.state {
            State::Failed(error) => return Err(error),
            State::UntilEof { done } => Ok(ResponseDone {
                keep_alive: false,
                ..done
            }),
            State::Head { .. } => Err(ResponseError::ClosedBeforeHead),
            State::Length { .. } | State::Chunked { .. } => Err(ResponseError::ClosedInBody),
        };
        // Nothing can follow an EOF: a later decode or eof is a caller bug and
        // must not look like the start of a new response.
        self.state = State::Failed(match result {
            Ok(_) => ResponseError::ClosedBeforeHead,
            Err(error) => error,
        });
        result
    }

    fn decode_inner(
        &mut self,
        input: &[u8],
        body: &mut dyn FnMut(&[u8]),
    ) -> Result<(usize, Option<ResponseDone>), ResponseError> {
        let mut at = 0;
        loop {
            let rest = &input[at..];
            match &mut self.state {
                State::Head { interim } => {
                    let Some((consumed, mut head)) = parse_head(rest, self.head_bytes_max, self.with_fields)?
                    else {
                        return Ok((at, None));
                    };
                    at += consumed;
                    let done = ResponseDone {
                        status: head.status,
                        keep_alive: head.keep_alive,
                        retry_after: head.retry_after,
                    };
                    if self.head_request && head.framing != Framing::Interim {
                        // RFC 9110 section 9.3.2: the fields describe the GET's
                        // body; none follows.
                        head.framing = Framing::None;
                    }
                    if self.with_fields && head.framing != Framing::Interim {
                        self.head = Some(ResponseHead {
                            status: head.status,
                            fields: std::mem::take(&mut head.fields),
                            content_length: match head.framing {
                                Framing::Length(length) => Some(length),
                                _ => head.content_length.filter(|_| self.head_request),
                            },
                        });
                    }
                    self.state = match head.framing {
                        Framing::Interim => {
                            // RFC 9110 section 15.2: a client must be able to
                            // parse and ignore unexpected 1xx responses.
                            *interim += 1;
                            if *interim > INTERIM_RESPONSES_MAX {
                                return Err(ResponseError::TooManyInterimResponses);
                            }
                            continue;
                        }
                        Framing::None | Framing::Length(0) => {
                            self.state = State::Head { interim: 0 };
                            return Ok((at, Some(done)));
                        }
                        Framing::Length(remaining) => State::Length { remaining, done },
                        Framing::Chunked => State::Chunked {
                            decoder: ChunkedDecoder::new(),
                            done,
                        },
                        Framing::UntilEof => State::UntilEof { done },
                    };
                }
                State::Length { remaining, done } => {
                    let take = (rest.len() as u64).min(*remaining);
                    body(&rest[..take as usize]);
                    *remaining -= take;
                    // `take` is at most `rest.len()`, so it fits a usize.
                    at += take as usize;
                    if *remaining > 0 {
                        return Ok((at, None));
                    }
                    let done = *done;
                    self.state = State::Head { interim: 0 };
                    return Ok((at, Some(done)));
                }
                State::Chunked { decoder, done } => {
                    if rest.is_empty() {
                        return Ok((at, None));
                    }
                    let step = decoder
                        .step(rest)
                        .map_err(|_| ResponseError::MalformedChunkedBody)?;
                    if let Some(data) = step.data {
                        body(data);
                    }
                    at += step.consumed;
                    if decoder.is_done() {
                        let done = *done;
                        self.state = State::Head { interim: 0 };
                        return Ok((at, Some(done)));
                    }
                    if step.consumed == 0 {
                        return Ok((at, None));
                    }
                }
                State::UntilEof { .. } => {
                    body(rest);
                    return Ok((input.len(), None));
                }
                State::Failed(error) => return Err(*error),
            }
        }
    }
}

/// Parses one response head from the start of `input`; `None` when incomplete.
fn parse_head(
    input: &[u8],
    head_bytes_max: usize,
    with_fields: bool,
) -> Result<Option<(usize, Head)>, ResponseError> {
    let mut fields = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut response = httparse::Response::new(&mut fields);
    let limited = &input[..input.len().min(head_bytes_max)];
    let consumed = match response.parse(limited) {
        Ok(httparse::Status::Complete(consumed)) => consumed,
        Ok(httparse::Status::Partial) => {
            if limited.len() >= head_bytes_max {
                return Err(ResponseError::HeadTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::HeadTooLarge),
        Err(httparse::Error::Status | httparse::Error::Version) => {
            return Err(ResponseError::MalformedStatusLine);
        }
        Err(_) => return Err(ResponseError::MalformedHeader),
    };
    let status = response.code.unwrap_or_default();
    // httparse takes any three digits; RFC 9110 section 15 starts at 100.
    if !(100..=999).contains(&status) {
        return Err(ResponseError::MalformedStatusLine);
    }
    if status == 101 {
        return Err(ResponseError::UnexpectedUpgrade);
    }
    if status < 200 {
        return Ok(Some((
            consumed,
            Head {
                status,
                keep_alive: true,
                framing: Framing::Interim,
                retry_after: None,
                fields: Vec::new(),
                content_length: None,
            },
        )));
    }

    let http10 = response.version == Some(0);
    let mut fields = FramingFields::default();
    for field in response.headers.iter() {
        fields
            .read(field.name, field.value)
            .map_err(|error| match error {
                FieldError::InvalidContentLength => ResponseError::InvalidContentLength,
                FieldError::ConflictingContentLength => ResponseError::ConflictingContentLength,
                FieldError::InvalidTransferEncoding => ResponseError::InvalidTransferEncoding,
            })?;
    }
    let mut keep_alive = fields.keep_alive(http10);
    let content_length = fields.content_length();
    let transfer_encoding = fields.codings().is_some();
    if transfer_encoding && content_length.is_some() {
        return Err(ResponseError::ContentLengthWithTransferEncoding);
    }
    if transfer_encoding && http10 {
        return Err(ResponseError::TransferEncodingInHttp10);
    }

    let framing = if status == 204 || status == 304 {
        // RFC 9112 section 6.3 item 1: never a body, whatever the fields say.
        // A 204 that declares one anyway may send it: do not reuse the connection,
        // lest those bytes be read as the next response.
        if transfer_encoding || (status == 204 && content_length.is_some_and(|length| length > 0)) {
            keep_alive = false;
        }
        Framing::None
    } else if transfer_encoding {
        if fields
            .codings()
            .is_some_and(|codings| codings != Codings::NotChunkedLast)
        {
            Framing::Chunked
        } else {
            // RFC 9112 section 6.3 item 4: in a response, a final coding other
            // than chunked means the body runs until the connection closes.
            keep_alive = false;
            Framing::UntilEof
        }
    } else {
        match content_length {
            Some(length) => Framing::Length(length),
            // RFC 9112 section 6.3 item 8: no length means read until close.
            None => {
                keep_alive = false;
                Framing::UntilEof
            }
        }
    };
    Ok(Some((
        consumed,
        Head {
            status,
            keep_alive,
            framing,
            retry_after: retry_after(response.headers),
            fields: if with_fields {
                response
                    .headers
                    .iter()
                    .filter_map(|field| {
                        let value = std::str::from_utf8(field.value).ok()?;
                        Some((field.name.to_ascii_lowercase(), value.trim().to_string()))
                    })
                    .collect()
            } else {
                Vec::new()
            },
            content_length,
        },
    )))
}

/// The head's `Retry-After`, when it has exactly one valid one (a field that
/// is not a list, repeated, is an error: RFC 9110 section 5.3), with the
/// head's `Date` when that is a valid HTTP-date (a repeated `Date` counts as
/// absent).
fn retry_after(fields: &[httparse::Header<'_>]) -> Option<RetryAfter> {
    let only = |name: &str| {
        let mut named = fields
            .iter()
            .filter(|field| field.name.eq_ignore_ascii_case(name));
        match (named.next(), named.next()) {
            (Some(field), None) => Some(field.value),
            _ => None,
        }
    };
    let value = only("retry-after")?;
    let date = only("date")
        .and_then(|value| std::str::from_utf8(value).ok())
        .and_then(crate::clock::parse_http_date);
    RetryAfter::parse(value, date)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD_BYTES_MAX: usize = 16 * 1024;

    /// Feeds `input` a byte at a time to a reading decoder; returns the heads,
    /// the body and the completions seen.
    fn read_parts(input: &[u8], head_request: bool) -> (Vec<ResponseHead>, Vec<u8>, Vec<ResponseDone>) {
        let mut decoder = ResponseDecoder::reading(HEAD_BYTES_MAX, head_request);
        let (mut heads, mut body, mut done) = (Vec::new(), Vec::new(), Vec::new());
        let mut pending = Vec::new();
        for byte in input {
            pending.push(*byte);
            let (consumed, parts) = decoder.decode_parts(&pending).unwrap();
            pending.drain(..consumed);
            heads.extend(parts.head);
            body.extend_from_slice(&parts.body);
            done.extend(parts.done);
        }
        (heads, body, done)
    }

    #[test]
    fn a_reading_decoder_hands_out_the_head_fields_and_the_body() {
        let input = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nDocker-Content-Digest: sha256:ab\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let (heads, body, done) = read_parts(input, false);
        assert_eq!(heads.len(), 1, "interim heads are not handed out");
        assert_eq!(heads[0].status, 200);
        assert_eq!(heads[0].field("docker-content-digest"), Some("sha256:ab"));
        assert_eq!(heads[0].content_length, None);
        assert_eq!(body, b"abcde");
        assert_eq!(done.len(), 1);
        let (heads, body, done) = read_parts(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nwxyz", false);
        assert_eq!(heads[0].content_length, Some(4));
        assert_eq!(body, b"wxyz");
        assert!(done[0].keep_alive);
    }

    #[test]
    fn the_answer_to_a_head_has_no_body_whatever_it_declares() {
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        let (heads, body, done) = read_parts(input, true);
        assert_eq!(heads.len(), 2);
        assert_eq!(heads[0].content_length, Some(1234), "the size a GET would send");
        assert!(body.is_empty());
        assert_eq!(done.len(), 2);
    }

    /// Drives a decoder like the connection machine does: appends each piece to
    /// a pending buffer, decodes until no progress, drains what was consumed.
    /// Returns the responses seen, the bytes left pending, and the decoder.
    fn feed(pieces: &[&[u8]]) -> Result<(Vec<ResponseDone>, Vec<u8>, ResponseDecoder), ResponseError> {
        let mut decoder = ResponseDecoder::new(HEAD_BYTES_MAX);
        let mut pending = Vec::new();
        let mut done = Vec::new();
        for piece in pieces {
            pending.extend_from_slice(piece);
            loop {
                let (consumed, response) = decoder.decode(&pending)?;
                assert!(consumed <= pending.len());
                pending.drain(..consumed);
                match response {
                    Some(response) => done.push(response),
                    None if consumed == 0 || pending.is_empty() => break,
                    None => {}
                }
            }
        }
        Ok((done, pending, decoder))
    }

    /// Every split into two pieces, and one byte at a time, must give the same
    /// responses as the whole input.
    fn assert_any_split(input: &[u8], expected: &[ResponseDone]) {
        let (whole, pending, _) = feed(&[input]).unwrap();
        assert_eq!(whole, expected, "whole input");
        assert!(pending.is_empty());
        for split in 0..=input.len() {
            let (done, pending, _) = feed(&[&input[..split], &input[split..]]).unwrap();
            assert_eq!(done, expected, "split at {split}");
            assert!(pending.is_empty(), "split at {split}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        let (done, pending, decoder) = feed(&bytes).unwrap();
        assert_eq!(done, expected, "byte at a time");
        assert!(pending.is_empty());
        assert!(decoder.is_idle());
    }

    fn ok(status: u16, keep_alive: bool) -> ResponseDone {
        ResponseDone {
            status,
            keep_alive,
            retry_after: None,
        }
    }

    fn decode_all(input: &[u8]) -> Result<(usize, Option<ResponseDone>), ResponseError> {
        ResponseDecoder::new(HEAD_BYTES_MAX).decode(input)
    }

    #[test]
    fn writes_a_request() {
        let mut out = b"left over".to_vec();
        write_request(
            &mut out,
            "POST",
            "/hooks/a?x=1",
            "example.com:8080",
            &[
                ("Content-Type", "application/json"),
                ("X-Registry-Event", "manifest.push"),
            ],
            b"{}",
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "left overPOST /hooks/a?x=1 HTTP/1.1\r\nHost: example.com:8080\r\n\
             Content-Type: application/json\r\nX-Registry-Event: manifest.push\r\n\
             Content-Length: 2\r\nConnection: keep-alive\r\n\r\n{}"
        );
    }

    #[test]
    fn a_written_request_parses_back() {
        let mut out = Vec::new();
        write_request(&mut out, "POST", "/", "h", &[("A", "b c")], b"hello");
        let (consumed, head) = crate::http::request::parse_head(&out, HEAD_BYTES_MAX)
            .unwrap()
            .unwrap();
        assert_eq!(&out[consumed..], b"hello");
        assert_eq!(head.content_length(), Some(5));
        assert_eq!(head.header("a"), Some("b c"));
        assert!(head.keep_alive);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "contains CR, LF or NUL")]
    fn refuses_header_injection_in_debug_builds() {
        write_request(&mut Vec::new(), "POST", "/", "h", &[("X", "a\r\nEvil: 1")], b"");
    }

    #[test]
    fn reads_a_length_delimited_response_in_any_split() {
        assert_any_split(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello",
            &[ok(200, true)],
        );
    }

    #[test]
    fn reads_a_chunked_response_with_trailers_in_any_split() {
        assert_any_split(
            b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: a\r\nX-Other: b\r\n\r\n",
            &[ok(202, true)],
        );
    }

    #[test]
    fn the_head_is_known_while_the_body_is_read() {
        let status = |decoder: &ResponseDecoder| decoder.head_in_body().map(|head| head.status);
        let mut decoder = ResponseDecoder::new(1024);
        assert_eq!(status(&decoder), None);
        let (consumed, done) = decoder
            .decode(b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\nRetry-After: 7\r\n\r\n4\r\nab")
            .unwrap();
        assert_eq!((consumed, done), (70, None));
        assert_eq!(status(&decoder), Some(503));
        assert_eq!(
            decoder.head_in_body().unwrap().retry_after,
            Some(RetryAfter::Seconds(7))
        );
        let mut decoder = ResponseDecoder::new(1024);
        decoder.decode(b"HTTP/1.0 200 OK\r\n\r\nforever").unwrap();
        assert_eq!(status(&decoder), Some(200));
        let mut decoder = ResponseDecoder::new(1024);
        decoder.decode(b"HTTP/1.1 100 Continue\r\n\r\n").unwrap();
        assert_eq!(status(&decoder), None, "an interim response has no body");
    }

    fn retry_after_of(head: &str) -> Option<RetryAfter> {
        let input = format!("HTTP/1.1 503 Busy\r\n{head}Content-Length: 0\r\n\r\n");
        let (_, done) = decode_all(input.as_bytes()).unwrap();
        done.unwrap().retry_after
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_a_date() {
        assert_eq!(
            retry_after_of("Retry-After: 120\r\n"),
            Some(RetryAfter::Seconds(120))
        );
        assert_eq!(retry_after_of("retry-after:0\r\n"), Some(RetryAfter::Seconds(0)));
        assert_eq!(
            retry_after_of("Retry-After: 99999999999999999999999\r\n"),
            Some(RetryAfter::Seconds(u64::MAX))
        );
        assert_eq!(
            retry_after_of("Retry-After: Sun, 06 Nov 1994 08:49:37 GMT\r\n"),
            Some(RetryAfter::Date {
                unix_secs: 784_111_777,
                response_date: None
            })
        );
        assert_eq!(
            retry_after_of(
                "Date: Sun, 06 Nov 1994 08:49:07 GMT\r\nRetry-After: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
            ),
            Some(RetryAfter::Date {
                unix_secs: 784_111_777,
                response_date: Some(784_111_747)
            })
        );
        // A bad or repeated Date is no Date: our clock is the reference then.
        for date in [
            "Date: yesterday\r\n",
            "Date: Sun, 06 Nov 1994 08:49:07 GMT\r\nDate: Sun, 06 Nov 1994 08:49:08 GMT\r\n",
        ] {
            assert_eq!(
                retry_after_of(&format!("{date}Retry-After: Sun, 06 Nov 1994 08:49:37 GMT\r\n")),
                Some(RetryAfter::Date {
                    unix_secs: 784_111_777,
                    response_date: None
                }),
                "{date}"
            );
        }
    }

    #[test]
    fn invalid_or_repeated_retry_after_is_ignored() {
        for head in [
            "",
            "Retry-After:\r\n",
            "Retry-After: -1\r\n",
            "Retry-After: 1.5\r\n",
            "Retry-After: +5\r\n",
            "Retry-After: 5 s\r\n",
            "Retry-After: soon\r\n",
            "Retry-After: Sun, 31 Nov 1994 08:49:37 GMT\r\n",
            "Retry-After: 5\r\nRetry-After: 5\r\n",
        ] {
            assert_eq!(retry_after_of(head), None, "{head:?}");
        }
        let not_utf8 = b"HTTP/1.1 429 Slow down\r\nRetry-After: 5\xff\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(decode_all(not_utf8).unwrap().1.unwrap().retry_after, None);
    }

    #[test]
    fn retry_after_delays() {
        assert_eq!(RetryAfter::Seconds(3).delay_ms(123), 3000);
        assert_eq!(RetryAfter::Seconds(u64::MAX).delay_ms(0), u64::MAX);
        let date = |response_date| RetryAfter::Date {
            unix_secs: 1_000,
            response_date,
        };
        // Against the response's own Date, whatever our clock says.
        assert_eq!(date(Some(990)).delay_ms(5_000_000), 10_000);
        // Against our clock without one, to the millisecond.
        assert_eq!(date(None).delay_ms(998_500), 1_500);
        // In the past: no delay.
        assert_eq!(date(None).delay_ms(2_000_000), 0);
        assert_eq!(date(Some(1_001)).delay_ms(0), 0);
    }

    #[test]
    fn skips_100_continue_in_any_split() {
        assert_any_split(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
              HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
            &[ok(201, true)],
        );
    }

    #[test]
    fn pipelined_responses_in_any_split() {
        assert_any_split(
            b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n\
              3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
            &[ok(204, true), ok(500, true), ok(200, false)],
        );
    }

    #[test]
    fn stops_after_the_first_of_two_pipelined_responses() {
        let first = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
        let second = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        let input = [&first[..], &second[..]].concat();
        let mut decoder = ResponseDecoder::new(HEAD_BYTES_MAX);
        assert_eq!(decoder.decode(&input), Ok((first.len(), Some(ok(200, true)))));
        assert!(decoder.is_idle());
        assert_eq!(
            decoder.decode(&input[first.len()..]),
            Ok((second.len(), Some(ok(404, true))))
        );
    }

    #[test]
    fn no_content_and_not_modified_have_no_body() {
        // The bytes after a 204 head belong to the next response, even with a
        // (wrong) non-zero Content-Length, which costs the connection instead.
        let input = b"HTTP/1.1 204 No Content\r\n\r\nNEXT";
        assert_eq!(decode_all(input), Ok((input.len() - 4, Some(ok(204, true)))));
        let input = b"HTTP/1.1 204 No Content\r\nContent-Length: 4\r\n\r\nNEXT";
        assert_eq!(decode_all(input), Ok((input.len() - 4, Some(ok(204, false)))));
        let input = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 4\r\n\r\nNEXT";
        assert_eq!(decode_all(input), Ok((input.len() - 4, Some(ok(304, true)))));
    }

    #[test]
    fn a_close_delimited_body_ends_at_eof() {
        for input in [
            &b"HTTP/1.1 200 OK\r\n\r\nsome body"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nsome body",
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\nsome body",
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\n",
        ] {
            for split in 0..=input.len() {
                let (done, pending, mut decoder) = feed(&[&input[..split], &input[split..]]).unwrap();
                assert!(done.is_empty());
                assert!(
                    pending.is_empty(),
                    "a body without length is consumed as it comes"
                );
                assert_eq!(decoder.eof(), Ok(ok(200, false)));
                assert_eq!(decoder.eof(), Err(ResponseError::ClosedBeforeHead));
            }
        }
    }

    #[test]
    fn eof_elsewhere_is_an_error() {
        let mut decoder = ResponseDecoder::new(HEAD_BYTES_MAX);
        assert_eq!(decoder.eof(), Err(ResponseError::ClosedBeforeHead));
        // And stays one: the connection is gone.
        assert_eq!(
            decoder.decode(b"HTTP/1.1 200 OK\r\n\r\n"),
            Err(ResponseError::ClosedBeforeHead)
        );

        let (_, pending, mut decoder) = feed(&[b"HTTP/1.1 200 OK\r\nContent-Len"]).unwrap();
        assert!(!pending.is_empty());
        assert_eq!(decoder.eof(), Err(ResponseError::ClosedBeforeHead));

        let (_, _, mut decoder) = feed(&[b"HTTP/1.1 100 Continue\r\n\r\n"]).unwrap();
        assert_eq!(decoder.eof(), Err(ResponseError::ClosedBeforeHead));

        let (_, _, mut decoder) = feed(&[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"]).unwrap();
        assert_eq!(decoder.eof(), Err(ResponseError::ClosedInBody));

        let (_, _, mut decoder) =
            feed(&[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"]).unwrap();
        assert_eq!(decoder.eof(), Err(ResponseError::ClosedInBody));
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        for (input, keep_alive) in [
            (&b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"[..], true),
            (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", false),
            (b"HTTP/1.1 200 OK\r\nConnection: Upgrade, CLOSE\r\nContent-Length: 0\r\n\r\n", false),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false),
            (b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n", true),
            (b"HTTP/1.0 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n", false),
            (b"HTTP/1.0 200 OK\r\nConnection: close\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", false),
        ] {
            let text = String::from_utf8_lossy(input);
            assert_eq!(decode_all(input), Ok((input.len(), Some(ok(200, keep_alive)))), "{text}");
        }
    }

    #[test]
    fn accepts_an_empty_reason_phrase() {
        for input in [
            &b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n"[..],
            b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
        ] {
            assert_eq!(decode_all(input), Ok((input.len(), Some(ok(200, true)))));
        }
    }

    #[test]
    fn agreeing_repeated_lengths_are_accepted() {
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nab";
        assert_eq!(decode_all(input), Ok((input.len(), Some(ok(200, true)))));
    }

    #[test]
    fn rejects_malformed_responses() {
        use ResponseError::*;
        for (input, error) in [
            (&b"HTTP/1.1 2x0 OK\r\n\r\n"[..], MalformedStatusLine),
            (b"HTTP/1.1 099 Low\r\n\r\n", MalformedStatusLine),
            (b"HTTP/2.0 200 OK\r\n\r\n", MalformedStatusLine),
            (b"FOO 200 OK\r\n\r\n", MalformedStatusLine),
            (b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n", MalformedHeader),
            (b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", MalformedHeader),
            (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
                UnexpectedUpgrade,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                ContentLengthWithTransferEncoding,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                ContentLengthWithTransferEncoding,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
                InvalidContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
                InvalidContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                InvalidContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
                InvalidContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
                InvalidContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
                ConflictingContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                ConflictingContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\n\r\n",
                InvalidTransferEncoding,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: \r\n\r\n",
                InvalidTransferEncoding,
            ),
            (
                b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                TransferEncodingInHttp10,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                MalformedChunkedBody,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n",
                MalformedChunkedBody,
            ),
        ] {
            let text = String::from_utf8_lossy(input);
            let mut decoder = ResponseDecoder::new(HEAD_BYTES_MAX);
            assert_eq!(decoder.decode(input), Err(error), "{text}");
            // The decoder stays failed: its framing is lost.
            assert_eq!(decoder.decode(b"HTTP/1.1 200 OK\r\n\r\n"), Err(error), "{text}");
            assert_eq!(decoder.eof(), Err(error), "{text}");
        }
    }

    #[test]
    fn bounds_interim_responses() {
        let input = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(INTERIM_RESPONSES_MAX as usize + 1);
        assert_eq!(decode_all(&input), Err(ResponseError::TooManyInterimResponses));
        // The count restarts with each final response.
        let mut input = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(INTERIM_RESPONSES_MAX as usize);
        input.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let twice = input.repeat(2);
        let (done, pending, _) = feed(&[&twice]).unwrap();
        assert_eq!(done, [ok(200, true), ok(200, true)]);
        assert!(pending.is_empty());
    }

    #[test]
    fn bounds_the_head() {
        let mut decoder = ResponseDecoder::new(64);
        let partial = b"HTTP/1.1 200 OK\r\nX-Long: ";
        assert_eq!(decoder.decode(partial), Ok((0, None)));
        let mut long = partial.to_vec();
        long.extend(std::iter::repeat_n(b'a', 64));
        assert_eq!(decoder.decode(&long), Err(ResponseError::HeadTooLarge));

        // A complete head that does not fit is too large as well.
        let mut complete = b"HTTP/1.1 200 OK\r\nX-Long: ".to_vec();
        complete.extend(std::iter::repeat_n(b'a', 64));
        complete.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(
            ResponseDecoder::new(64).decode(&complete),
            Err(ResponseError::HeadTooLarge)
        );
        assert_eq!(
            ResponseDecoder::new(complete.len()).decode(&complete),
            Ok((complete.len(), Some(ok(200, true))))
        );

        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for _ in 0..=HEADERS_MAX {
            many.extend_from_slice(b"X: y\r\n");
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(decode_all(&many), Err(ResponseError::HeadTooLarge));
    }

    #[test]
    fn a_large_body_is_streamed_not_buffered() {
        let mut decoder = ResponseDecoder::new(HEAD_BYTES_MAX);
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n";
        assert_eq!(decoder.decode(head), Ok((head.len(), None)));
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..16 {
            assert_eq!(decoder.decode(&chunk), Ok((chunk.len(), None)));
        }
        assert_eq!(decoder.eof(), Err(ResponseError::ClosedInBody));
    }

    #[test]
    fn errors_read_well() {
        assert_eq!(
            ResponseError::MalformedStatusLine.to_string(),
            "malformed response status line"
        );
        assert_eq!(ResponseError::HeadTooLarge.to_string(), "response head too large");
    }
}
