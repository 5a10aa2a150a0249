//! Responses: status, headers and a body that is either in memory, a file
//! region to stream (never read whole into memory), or only a length (HEAD).

use std::fs::File;

/// A response body.
#[derive(Debug)]
pub enum Body {
    Empty,
    Bytes(Vec<u8>),
    /// Immutable bytes shared with other responses and the manifest cache:
    /// a thousand readers of one manifest hold one copy of it.
    Shared(std::rc::Rc<[u8]>),
    /// `len` bytes of `file` from `offset`, streamed by the reactor.
    File {
        file: File,
        offset: u64,
        len: u64,
    },
    /// `len` bytes of a file still being written (a cache fill), from its
    /// start: sent as `growing` writes them.
    Growing {
        file: File,
        len: u64,
        growing: std::rc::Rc<dyn super::output::Growing>,
    },
    /// `len` bytes arriving from elsewhere as they are sent (a blob read
    /// from object storage).
    Fed {
        feed: std::rc::Rc<dyn super::output::Feed>,
        len: u64,
    },
    /// The length a GET would send, for HEAD answers that never open the content.
    Length(u64),
}

impl Body {
    pub fn len(&self) -> u64 {
        match self {
            Body::Empty => 0,
            Body::Bytes(bytes) => bytes.len() as u64,
            Body::Shared(bytes) => bytes.len() as u64,
            Body::File { len, .. }
            | Body::Growing { len, .. }
            | Body::Fed { len, .. }
            | Body::Length(len) => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Body,
    /// Close the connection after this response (a framing error, or a body
    /// left unread).
    pub close: bool,
}

impl Response {
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Body::Empty,
            close: false,
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// The first value of header `name`, whatever its case.
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn body(mut self, body: Body) -> Response {
        self.body = body;
        self
    }

    /// A JSON body with its content type.
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response::new(status)
            .header("Content-Type", "application/json")
            .body(Body::Bytes(value.to_string().into_bytes()))
    }

    pub fn with_close(mut self) -> Response {
        self.close = true;
        self
    }

    /// Serializes the status line and headers, with `Content-Length` from the
    /// body (also for HEAD, which then sends no body), `Date`, and
    /// `Connection: close` when the connection ends after this response.
    pub fn write_head(&self, out: &mut Vec<u8>, date: &str, keep_alive: bool) {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(self.status.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(reason(self.status).as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        // 1xx and 204 responses carry no Content-Length (RFC 9110 section 8.6).
        if self.status >= 200 && self.status != 204 {
            out.extend_from_slice(b"Content-Length: ");
            out.extend_from_slice(self.body.len().to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"Date: ");
        out.extend_from_slice(date.as_bytes());
        out.extend_from_slice(b"\r\n");
        if !keep_alive || self.close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_carries_length_date_and_close() {
        let response = Response::new(200)
            .header("Docker-Content-Digest", "sha256:x")
            .body(Body::Length(42));
        let mut out = Vec::new();
        response.write_head(&mut out, "Thu, 01 Jan 1970 00:00:00 GMT", false);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nDocker-Content-Digest: sha256:x\r\nContent-Length: 42\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn no_content_has_no_length() {
        let mut out = Vec::new();
        Response::new(204).write_head(&mut out, "d", true);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 204 No Content\r\nDate: d\r\n\r\n"
        );
    }
}
