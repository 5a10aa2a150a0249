//! Request heads and body framing (RFC 9112 sections 2 to 7): which length
//! wins, which errors are 400, 431 or 501, and smuggling refused. The
//! `RequestDecoder` turns a connection's bytes into heads and body slices.

use super::chunked::{ChunkedDecoder, ChunkedError};
use super::fields::{Codings, FieldError, FramingFields};

/// Headers per request we parse; more is answered 431.
const HEADERS_MAX: usize = 96;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
    Other(String),
}

impl Method {
    fn parse(text: &str) -> Method {
        match text {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            other => Method::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Other(other) => other,
        }
    }
}

/// How the request body is delimited (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// A parsed request head. Header names are lowercased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Method,
    /// The percent-decoded path (a `%2F` stays encoded so it cannot split a path segment).
    pub path: String,
    /// The raw query string, without `?`.
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub framing: BodyFraming,
    /// The client asked for `100 Continue` before sending its body.
    pub expect_continue: bool,
    /// The connection may serve another request after this one.
    pub keep_alive: bool,
}

impl RequestHead {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The decoded values of query parameter `key`, in order.
    pub fn query_values<'a>(&'a self, key: &'a str) -> impl Iterator<Item = String> + 'a {
        self.query.split('&').filter_map(move |pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name, true) == key).then(|| percent_decode(value, true))
        })
    }

    /// The first decoded value of query parameter `key`.
    pub fn query_value(&self, key: &str) -> Option<String> {
        self.query_values(key).next()
    }

    /// The body length when the request declares it; `None` for chunked bodies.
    pub fn content_length(&self) -> Option<u64> {
        match self.framing {
            BodyFraming::None => Some(0),
            BodyFraming::Length(length) => Some(length),
            BodyFraming::Chunked => None,
        }
    }

    /// Path and query for a log line, with the values of parameters that
    /// may carry secrets (tokens, passwords, signatures) replaced, so
    /// `mount=`, `from=` and `digest=` stay visible when debugging.
    pub fn log_target(&self) -> String {
        if self.query.is_empty() {
            return self.path.clone();
        }
        let mut target = format!("{}?", self.path);
        for (index, pair) in self.query.split('&').enumerate() {
            if index > 0 {
                target.push('&');
            }
            match pair.split_once('=') {
                Some((key, _)) if names_a_secret(key) => {
                    target.push_str(key);
                    target.push_str("=REDACTED");
                }
                _ => target.push_str(pair),
            }
        }
        target
    }
}

/// Names (of query parameters, of headers) whose values are never shown:
/// anything naming a token, password, secret, signature, credential, key,
/// authorization or cookie.
pub fn names_a_secret(key: &str) -> bool {
    const SECRET_WORDS: [&str; 8] = [
        "token",
        "pass",
        "secret",
        "sig",
        "credential",
        "key",
        "auth",
        "cookie",
    ];
    let key = key.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|word| key.contains(word))
}

/// Why a request could not be read; each maps to one status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// 431: the head exceeds `max_header_size` or has too many fields.
    HeaderTooLarge,
    /// 400: a malformed head, bad framing, or a smuggling attempt.
    Malformed(&'static str),
    /// 501: a transfer coding other than chunked.
    UnsupportedTransferCoding,
}

impl RequestError {
    pub fn status(&self) -> u16 {
        match self {
            RequestError::HeaderTooLarge => 431,
            RequestError::Malformed(_) => 400,
            RequestError::UnsupportedTransferCoding => 501,
        }
    }

    pub fn message(&self) -> &'static str {
        match self {
            RequestError::HeaderTooLarge => "request header fields too large",
            RequestError::Malformed(why) => why,
            RequestError::UnsupportedTransferCoding => "transfer coding not implemented",
        }
    }
}

impl From<ChunkedError> for RequestError {
    fn from(_: ChunkedError) -> RequestError {
        RequestError::Malformed("malformed chunked body")
    }
}

/// What the decoder found in the input.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestEvent<'a> {
    Head(Box<RequestHead>),
    /// Body bytes of the current request, a slice of the input.
    Body(&'a [u8]),
    /// The current request's body is complete (immediately after a head
    /// without body).
    End,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Head,
    Length {
        remaining: u64,
    },
    Chunked(ChunkedDecoder),
    /// The body is complete; `End` is due.
    Ending,
}

/// Splits a connection's byte stream into request heads and bodies.
#[derive(Debug, Clone)]
pub struct RequestDecoder {
    state: State,
    max_header_size: usize,
    /// Bytes of the head in progress already seen without completing it.
    /// The head is parsed again only when a new line ends, so a client
    /// trickling a large head byte by byte costs linear time, not quadratic.
    head_scanned: usize,
    /// Head parses run, for the test that checks the above.
    #[cfg(test)]
    parses: usize,
}

impl RequestDecoder {
    pub fn new(max_header_size: usize) -> RequestDecoder {
        RequestDecoder {
            state: State::Head,
            max_header_size,
            head_scanned: 0,
            #[cfg(test)]
            parses: 0,
        }
    }

    /// `true` between requests: no head or body is partly read.
    pub fn is_idle(&self) -> bool {
        self.state == State::Head
    }

    /// `true` while a request body is being received.
    pub fn in_body(&self) -> bool {
        matches!(self.state, State::Length { .. } | State::Chunked(_))
    }

    /// Decodes the next event from `input`; returns the bytes consumed and
    /// the event, or no event when more input is needed.
    pub fn decode<'a>(&mut self, input: &'a [u8]) -> Result<(usize, Option<RequestEvent<'a>>), RequestError> {
        match &mut self.state {
            State::Head => {
                // `input` starts at the head's first byte on every call until
                // the head completes, so what was scanned stays scanned.
                let fresh = &input[self.head_scanned.min(input.len())..];
                if !fresh.contains(&b'\n') && input.len() < self.max_header_size {
                    self.head_scanned = input.len();
                    return Ok((0, None));
                }
                #[cfg(test)]
                {
                    self.parses += 1;
                }
                let Some((consumed, head)) = parse_head(input, self.max_header_size)? else {
                    self.head_scanned = input.len();
                    return Ok((0, None));
                };
                self.head_scanned = 0;
                self.state = match head.framing {
                    BodyFraming::None | BodyFraming::Length(0) => State::Ending,
                    BodyFraming::Length(length) => State::Length { remaining: length },
                    BodyFraming::Chunked => State::Chunked(ChunkedDecoder::new()),
                };
                Ok((consumed, Some(RequestEvent::Head(Box::new(head)))))
            }
            State::Length { remaining } => {
                if input.is_empty() {
                    return Ok((0, None));
                }
                let take = (input.len() as u64).min(*remaining) as usize;
                *remaining -= take as u64;
                if *remaining == 0 {
                    self.state = State::Ending;
                }
                Ok((take, Some(RequestEvent::Body(&input[..take]))))
            }
            State::Chunked(decoder) => {
                let step = decoder.step(input)?;
                if decoder.is_done() {
                    self.state = State::Ending;
                }
                match step.data {
                    Some(data) if !data.is_empty() => Ok((step.consumed, Some(RequestEvent::Body(data)))),
                    _ if self.state == State::Ending => {
                        self.state = State::Head;
                        Ok((step.consumed, Some(RequestEvent::End)))
                    }
                    _ => Ok((step.consumed, None)),
                }
            }
            State::Ending => {
                self.state = State::Head;
                Ok((0, Some(RequestEvent::End)))
            }
        }
    }
}

/// Parses one request head from the start of `input`; `None` when incomplete.
pub fn parse_head(
    input: &[u8],
    max_header_size: usize,
) -> Result<Option<(usize, RequestHead)>, RequestError> {
    let mut fields = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut request = httparse::Request::new(&mut fields);
    let limited = &input[..input.len().min(max_header_size)];
    let consumed = match request.parse(limited) {
        Ok(httparse::Status::Complete(consumed)) => consumed,
        Ok(httparse::Status::Partial) => {
            if limited.len() >= max_header_size {
                return Err(RequestError::HeaderTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::HeaderTooLarge),
        Err(_) => return Err(RequestError::Malformed("malformed request head")),
    };
    let method = Method::parse(request.method.unwrap_or_default());
    let target = request.path.unwrap_or_default();
    let http10 = request.version == Some(0);
    // RFC 9112 section 3.2.2: a server MUST accept the absolute-form; its
    // path is what we route on (the authority is not ours to check).
    let target = match target.split_once("://") {
        Some((scheme, rest))
            if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") =>
        {
            match rest.find(['/', '?']) {
                Some(at) if rest[at..].starts_with('/') => &rest[at..],
                _ => "/",
            }
        }
        _ => target,
    };
    if !target.starts_with('/') {
        // The asterisk-form is only for OPTIONS *, which we do not serve.
        return Err(RequestError::Malformed("request target must be a path"));
    }
    let (raw_path, query) = target.split_once('?').unwrap_or((target, ""));

    let mut headers = Vec::with_capacity(request.headers.len());
    let mut fields = FramingFields::default();
    let mut expect_continue = false;
    for field in request.headers.iter() {
        let name = field.name.to_ascii_lowercase();
        let value = std::str::from_utf8(field.value)
            .map_err(|_| RequestError::Malformed("header value is not UTF-8"))?
            .trim()
            .to_string();
        fields.read(&name, value.as_bytes()).map_err(|error| {
            RequestError::Malformed(match error {
                FieldError::InvalidContentLength => "invalid Content-Length",
                FieldError::ConflictingContentLength => "conflicting Content-Length values",
                FieldError::InvalidTransferEncoding => "invalid Transfer-Encoding",
            })
        })?;
        if name == "expect" && value.eq_ignore_ascii_case("100-continue") {
            expect_continue = !http10;
        }
        headers.push((name, value));
    }

    // RFC 9112 section 3.2: an HTTP/1.1 request without exactly one Host is 400.
    let hosts = headers.iter().filter(|(name, _)| name == "host").count();
    if !http10 && hosts != 1 {
        return Err(RequestError::Malformed(
            "an HTTP/1.1 request needs exactly one Host header",
        ));
    }
    let framing = match (fields.codings(), fields.content_length()) {
        // Both present is how request smuggling starts: refuse (RFC 9112 section 6.1).
        (Some(_), Some(_)) => {
            return Err(RequestError::Malformed(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        (Some(_), None) if http10 => return Err(RequestError::Malformed("Transfer-Encoding in HTTP/1.0")),
        (Some(Codings::Chunked), None) => BodyFraming::Chunked,
        // chunked must be final, and we implement no other coding.
        (Some(Codings::ChunkedAfterOthers), None) => return Err(RequestError::UnsupportedTransferCoding),
        (Some(Codings::NotChunkedLast), None) => {
            return Err(RequestError::Malformed(
                "chunked must be the final transfer coding",
            ));
        }
        (None, Some(0)) | (None, None) => BodyFraming::None,
        (None, Some(length)) => BodyFraming::Length(length),
    };

    let head = RequestHead {
        method,
        path: percent_decode(raw_path, false),
        query: query.to_string(),
        headers,
        framing,
        expect_continue: expect_continue && framing != BodyFraming::None,
        keep_alive: fields.keep_alive(http10),
    };
    Ok(Some((consumed, head)))
}

/// Decodes `%XX` escapes (and `+` as space in query components). Invalid
/// escapes stay as written; in paths `%2F` stays encoded so a decoded slash
/// cannot change how the path splits.
pub fn percent_decode(text: &str, query: bool) -> String {
    if !text.contains(['%', '+']) {
        return text.to_string();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let byte = bytes[at];
        if byte == b'%' && at + 2 < bytes.len() {
            let high = (bytes[at + 1] as char).to_digit(16);
            let low = (bytes[at + 2] as char).to_digit(16);
            if let (Some(high), Some(low)) = (high, low) {
                let decoded = (high * 16 + low) as u8;
                if query || decoded != b'/' {
                    out.push(decoded);
                    at += 3;
                    continue;
                }
            }
        } else if byte == b'+' && query {
            out.push(b' ');
            at += 1;
            continue;
        }
        out.push(byte);
        at += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_targets_keep_the_query_and_hide_secrets() {
        let head = |target: &str| {
            let text = format!("GET {target} HTTP/1.1\r\nHost: h\r\n\r\n");
            parse_head(text.as_bytes(), 1 << 14).unwrap().unwrap().1
        };
        assert_eq!(head("/v2/").log_target(), "/v2/");
        assert_eq!(
            head("/v2/a/blobs/uploads/?mount=sha256:ab&from=b%2Fc").log_target(),
            "/v2/a/blobs/uploads/?mount=sha256:ab&from=b%2Fc"
        );
        assert_eq!(
            head("/v2/x?access_token=abc&digest=sha256:1&X-Amz-Signature=f&Password=p&flag").log_target(),
            "/v2/x?access_token=REDACTED&digest=sha256:1&X-Amz-Signature=REDACTED&Password=REDACTED&flag"
        );
    }

    fn head(text: &str) -> Result<Option<(usize, RequestHead)>, RequestError> {
        parse_head(text.as_bytes(), 16 * 1024)
    }

    #[test]
    fn a_head_trickled_byte_by_byte_is_parsed_once_per_line() {
        let mut text = String::from("GET /v2/ HTTP/1.1\r\nHost: x\r\n");
        for index in 0..40 {
            text.push_str(&format!("X-Padding-{index}: {}\r\n", "a".repeat(1000)));
        }
        text.push_str("\r\n");
        let bytes = text.as_bytes();
        let mut decoder = RequestDecoder::new(1 << 20);
        let mut head = None;
        for end in 1..=bytes.len() {
            // The connection hands over everything pending since the head began.
            let (consumed, event) = decoder.decode(&bytes[..end]).unwrap();
            if let Some(RequestEvent::Head(parsed)) = event {
                assert_eq!((consumed, end), (bytes.len(), bytes.len()));
                head = Some(parsed);
            }
        }
        let head = head.expect("the head completes with its last byte");
        assert_eq!(head.headers.len(), 41);
        // One parse per line ending, not one per byte (about 41,000 bytes).
        assert!(decoder.parses <= 43, "{} parses", decoder.parses);
    }

    #[test]
    fn malformed_heads_are_still_refused_at_the_first_line_end() {
        let mut decoder = RequestDecoder::new(16 * 1024);
        assert!(matches!(decoder.decode(b"GET /v2/ HT"), Ok((0, None))));
        assert!(decoder.decode(b"GET /v2/ HTTP/1.1 junk\r\n").is_err());
        // And an over-long line without an end hits the size limit.
        let mut decoder = RequestDecoder::new(1024);
        let long = vec![b'a'; 1024];
        assert!(matches!(decoder.decode(&long), Err(RequestError::HeaderTooLarge)));
    }

    #[test]
    fn parses_a_simple_request() {
        let (consumed, head) = head("GET /v2/a/tags/list?n=2&last=b%3Ac HTTP/1.1\r\nHost: x\r\n\r\nrest")
            .unwrap()
            .unwrap();
        assert_eq!(consumed, 56);
        assert_eq!(head.method, Method::Get);
        assert_eq!(head.path, "/v2/a/tags/list");
        assert_eq!(head.query_value("n").as_deref(), Some("2"));
        assert_eq!(head.query_value("last").as_deref(), Some("b:c"));
        assert_eq!(head.header("host"), Some("x"));
        assert!(head.keep_alive);
        assert_eq!(head.framing, BodyFraming::None);
    }

    #[test]
    fn incomplete_heads_wait_and_oversized_ones_are_431() {
        assert_eq!(head("GET / HTTP/1.1\r\nHost: x\r\n").unwrap(), None);
        let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        assert_eq!(head(&big).unwrap_err(), RequestError::HeaderTooLarge);
        let many: String = (0..200).map(|i| format!("X-{i}: a\r\n")).collect();
        assert_eq!(
            head(&format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n")).unwrap_err(),
            RequestError::HeaderTooLarge
        );
    }

    #[test]
    fn smuggling_attempts_are_refused() {
        let both = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(head(both).unwrap_err().status(), 400);
        let conflicting = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";
        assert_eq!(head(conflicting).unwrap_err().status(), 400);
        let listed = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\n";
        assert_eq!(head(listed).unwrap_err().status(), 400);
        let signed = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n";
        assert_eq!(head(signed).unwrap_err().status(), 400);
        let not_final = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n";
        assert_eq!(head(not_final).unwrap_err().status(), 400);
        let gzip = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert_eq!(head(gzip).unwrap_err().status(), 501);
        let http10 = "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(head(http10).unwrap_err().status(), 400);
        let same = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(head(same).unwrap().unwrap().1.framing, BodyFraming::Length(5));
    }

    #[test]
    fn http11_needs_exactly_one_host_and_absolute_form_is_accepted() {
        assert_eq!(head("GET / HTTP/1.1\r\n\r\n").unwrap_err().status(), 400);
        assert_eq!(
            head("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
                .unwrap_err()
                .status(),
            400
        );
        assert!(head("GET / HTTP/1.0\r\n\r\n").unwrap().is_some());
        let (_, absolute) = head("GET http://example.com/v2/?n=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((absolute.path.as_str(), absolute.query.as_str()), ("/v2/", "n=1"));
    }

    #[test]
    fn connection_and_expect_headers() {
        let (_, close) = head("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!close.keep_alive);
        let (_, old) = head("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!old.keep_alive);
        let (_, old_keep) = head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(old_keep.keep_alive);
        let (_, expect) =
            head("PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(expect.expect_continue);
    }

    #[test]
    fn decoder_splits_pipelined_requests_and_bodies() {
        let input = b"PUT /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcPATCH /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut decoder = RequestDecoder::new(16 * 1024);
        let mut at = 0;
        let mut seen = Vec::new();
        loop {
            let (consumed, event) = decoder.decode(&input[at..]).unwrap();
            at += consumed;
            match event {
                Some(RequestEvent::Head(head)) => seen.push(format!("head {}", head.path)),
                Some(RequestEvent::Body(data)) => {
                    seen.push(format!("body {}", String::from_utf8_lossy(data)))
                }
                Some(RequestEvent::End) => seen.push("end".to_string()),
                None => break,
            }
        }
        assert_eq!(
            seen,
            [
                "head /a", "body abc", "end", "head /b", "body de", "end", "head /c", "end"
            ]
        );
        assert_eq!(at, input.len());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("sha256%3Aab", true), "sha256:ab");
        assert_eq!(percent_decode("a%2Fb", false), "a%2Fb");
        assert_eq!(percent_decode("a%2Fb", true), "a/b");
        assert_eq!(percent_decode("bad%zz%", true), "bad%zz%");
        assert_eq!(percent_decode("a+b", true), "a b");
    }
}
