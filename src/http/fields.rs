//! The header fields that decide an HTTP/1.1 message's framing and
//! persistence (`Content-Length`, `Transfer-Encoding`, `Connection`), read
//! the same way for the requests we serve and the responses we receive
//! (RFC 9112 sections 6 and 9.3). Each side then applies its own rules to
//! the result (a server refuses codings it does not implement; a client
//! reads a body of unknown length until the connection closes).

/// Longest `Content-Length` accepted: 19 digits always fit a `u64`.
const CONTENT_LENGTH_DIGITS_MAX: usize = 19;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldError {
    InvalidContentLength,
    /// Repeated or listed lengths that disagree (RFC 9112 section 6.3 item 5).
    ConflictingContentLength,
    InvalidTransferEncoding,
}

/// What `Transfer-Encoding` says, when present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codings {
    /// `chunked` alone.
    Chunked,
    /// Other codings, then `chunked` last.
    ChunkedAfterOthers,
    /// The final coding is not `chunked`.
    NotChunkedLast,
}

/// The framing and persistence fields of one head, read field by field.
#[derive(Debug, Default, Clone)]
pub struct FramingFields {
    content_length: Option<u64>,
    /// Codings listed over all `Transfer-Encoding` fields (one list, in order).
    codings: usize,
    chunked_last: bool,
    close: bool,
    keep_alive: bool,
}

impl FramingFields {
    /// Reads one field; fields other than the three are ignored. `name` is
    /// compared without regard to case.
    pub fn read(&mut self, name: &str, value: &[u8]) -> Result<(), FieldError> {
        if name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(value).map_err(|_| FieldError::InvalidContentLength)?;
            for part in value.split(',') {
                let part = trim_ows(part);
                if part.is_empty()
                    || part.len() > CONTENT_LENGTH_DIGITS_MAX
                    || !part.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(FieldError::InvalidContentLength);
                }
                let length: u64 = part.parse().map_err(|_| FieldError::InvalidContentLength)?;
                if self.content_length.is_some_and(|previous| previous != length) {
                    return Err(FieldError::ConflictingContentLength);
                }
                self.content_length = Some(length);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let value = std::str::from_utf8(value).map_err(|_| FieldError::InvalidTransferEncoding)?;
            for coding in value.split(',') {
                let coding = trim_ows(coding);
                // A coding may carry parameters (RFC 9112 section 7); its name
                // precedes them. `chunked` takes none, so only a bare one counts.
                let coding_name = coding.split(';').next().unwrap_or_default().trim_end();
                if !is_token(coding_name) {
                    return Err(FieldError::InvalidTransferEncoding);
                }
                self.codings += 1;
                self.chunked_last = coding.eq_ignore_ascii_case("chunked");
            }
        } else if name.eq_ignore_ascii_case("connection") {
            // Other tokens name hop-by-hop fields; only these two matter here.
            // An unreadable value cannot promise persistence: treat it as close.
            let Ok(value) = std::str::from_utf8(value) else {
                self.close = true;
                return Ok(());
            };
            for token in value.split(',') {
                let token = trim_ows(token);
                self.close |= token.eq_ignore_ascii_case("close");
                self.keep_alive |= token.eq_ignore_ascii_case("keep-alive");
            }
        }
        Ok(())
    }

    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }

    pub fn codings(&self) -> Option<Codings> {
        match (self.codings, self.chunked_last) {
            (0, _) => None,
            (1, true) => Some(Codings::Chunked),
            (_, true) => Some(Codings::ChunkedAfterOthers),
            (_, false) => Some(Codings::NotChunkedLast),
        }
    }

    /// RFC 9112 section 9.3: HTTP/1.1 persists unless told to close;
    /// HTTP/1.0 only with an explicit keep-alive. `close` wins.
    pub fn keep_alive(&self, http10: bool) -> bool {
        !self.close && (!http10 || self.keep_alive)
    }
}

/// Optional whitespace around list elements (RFC 9110 section 5.6.3).
fn trim_ows(text: &str) -> &str {
    text.trim_matches([' ', '\t'])
}

/// An RFC 9110 token (section 5.6.2).
pub fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(fields: &[(&str, &str)]) -> Result<FramingFields, FieldError> {
        let mut framing = FramingFields::default();
        for (name, value) in fields {
            framing.read(name, value.as_bytes())?;
        }
        Ok(framing)
    }

    #[test]
    fn lengths_must_be_digits_and_agree() {
        assert_eq!(
            read(&[("Content-Length", " 42 ")]).unwrap().content_length(),
            Some(42)
        );
        assert_eq!(
            read(&[("content-length", "7, 7"), ("CONTENT-LENGTH", "7")])
                .unwrap()
                .content_length(),
            Some(7)
        );
        for bad in ["", "-1", "+1", "1 2", "0x10", "12345678901234567890"] {
            assert_eq!(
                read(&[("Content-Length", bad)]).unwrap_err(),
                FieldError::InvalidContentLength,
                "{bad:?}"
            );
        }
        assert_eq!(
            read(&[("Content-Length", "1"), ("Content-Length", "2")]).unwrap_err(),
            FieldError::ConflictingContentLength
        );
    }

    #[test]
    fn codings_form_one_list_and_only_a_bare_final_chunked_counts() {
        assert_eq!(
            read(&[("Transfer-Encoding", "chunked")]).unwrap().codings(),
            Some(Codings::Chunked)
        );
        assert_eq!(
            read(&[("Transfer-Encoding", "gzip"), ("Transfer-Encoding", "Chunked")])
                .unwrap()
                .codings(),
            Some(Codings::ChunkedAfterOthers)
        );
        assert_eq!(
            read(&[("Transfer-Encoding", "chunked, gzip")]).unwrap().codings(),
            Some(Codings::NotChunkedLast)
        );
        assert_eq!(
            read(&[("Transfer-Encoding", "chunked;x=1")]).unwrap().codings(),
            Some(Codings::NotChunkedLast)
        );
        assert_eq!(read(&[]).unwrap().codings(), None);
        for bad in ["", "chunked,", "a b", "ch\"unked"] {
            assert_eq!(
                read(&[("Transfer-Encoding", bad)]).unwrap_err(),
                FieldError::InvalidTransferEncoding,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn close_wins_and_http10_persists_only_when_asked() {
        assert!(read(&[]).unwrap().keep_alive(false));
        assert!(!read(&[]).unwrap().keep_alive(true));
        assert!(read(&[("Connection", "Keep-Alive")]).unwrap().keep_alive(true));
        assert!(
            !read(&[("Connection", "keep-alive, close")])
                .unwrap()
                .keep_alive(true)
        );
        assert!(
            !read(&[("Connection", "close, keep-alive")])
                .unwrap()
                .keep_alive(false)
        );
        assert!(read(&[("Connection", "upgrade")]).unwrap().keep_alive(false));
        let mut framing = FramingFields::default();
        framing.read("connection", &[0xff]).unwrap();
        assert!(!framing.keep_alive(false), "an unreadable Connection closes");
    }
}
