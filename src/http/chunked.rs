//! The `Transfer-Encoding: chunked` body decoder (RFC 9112 section 7.1).
//! Hands out data slices of the input without copying; bounded: a chunk-size
//! line (with extensions) and the trailer section have fixed maximum sizes.

/// Longest chunk-size line we accept, extensions included.
const SIZE_LINE_BYTES_MAX: usize = 1024;
/// Largest trailer section we accept (trailers are read and dropped).
const TRAILER_BYTES_MAX: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkedError {
    /// A malformed size line, missing CRLF after data, or an oversized
    /// size line or trailer.
    Malformed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Reading hex digits of the size; `digits` counts them.
    Size {
        size: u64,
        digits: usize,
        line_bytes: usize,
    },
    /// After the digits: extensions until CR LF.
    SizeLine {
        size: u64,
        line_bytes: usize,
        saw_cr: bool,
    },
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    /// Trailer section: `line_bytes` of the current line, `total` so far.
    Trailer {
        line_bytes: usize,
        total: usize,
        saw_cr: bool,
    },
    Done,
}

/// One step's result: bytes of input consumed, and the body data found in
/// them (a sub-slice of the input), if any.
#[derive(Debug, PartialEq, Eq)]
pub struct Step<'a> {
    pub consumed: usize,
    pub data: Option<&'a [u8]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkedDecoder {
    state: State,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> ChunkedDecoder {
        ChunkedDecoder {
            state: State::Size {
                size: 0,
                digits: 0,
                line_bytes: 0,
            },
        }
    }

    /// `true` once the last chunk and the trailer section were read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input` until it has a data slice to hand out, the body
    /// ends, or the input is used up. Call again with the unconsumed rest.
    pub fn step<'a>(&mut self, input: &'a [u8]) -> Result<Step<'a>, ChunkedError> {
        let mut at = 0;
        while at < input.len() {
            let byte = input[at];
            match &mut self.state {
                State::Size {
                    size,
                    digits,
                    line_bytes,
                } => {
                    *line_bytes += 1;
                    if let Some(value) = (byte as char).to_digit(16) {
                        // 16 hex digits overflow u64; reject rather than wrap.
                        if *digits == 15 {
                            return Err(ChunkedError::Malformed);
                        }
                        *size = *size * 16 + value as u64;
                        *digits += 1;
                    } else if *digits == 0 {
                        return Err(ChunkedError::Malformed);
                    } else if byte == b';' || byte == b' ' || byte == b'\t' || byte == b'\r' {
                        self.state = State::SizeLine {
                            size: *size,
                            line_bytes: *line_bytes,
                            saw_cr: byte == b'\r',
                        };
                    } else {
                        return Err(ChunkedError::Malformed);
                    }
                    at += 1;
                }
                State::SizeLine {
                    size,
                    line_bytes,
                    saw_cr,
                } => {
                    *line_bytes += 1;
                    if *line_bytes > SIZE_LINE_BYTES_MAX {
                        return Err(ChunkedError::Malformed);
                    }
                    if *saw_cr {
                        if byte != b'\n' {
                            return Err(ChunkedError::Malformed);
                        }
                        self.state = if *size == 0 {
                            State::Trailer {
                                line_bytes: 0,
                                total: 0,
                                saw_cr: false,
                            }
                        } else {
                            State::Data { remaining: *size }
                        };
                    } else if byte == b'\r' {
                        *saw_cr = true;
                    } else if byte == b'\n' {
                        // A bare LF is not a line end (RFC 9112 section 2.2 allows
                        // servers to reject it, and accepting it invites smuggling).
                        return Err(ChunkedError::Malformed);
                    }
                    at += 1;
                }
                State::Data { remaining } => {
                    let available = (input.len() - at) as u64;
                    let take = available.min(*remaining) as usize;
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        self.state = State::DataCr;
                    }
                    return Ok(Step {
                        consumed: at + take,
                        data: Some(&input[at..at + take]),
                    });
                }
                State::DataCr => {
                    if byte != b'\r' {
                        return Err(ChunkedError::Malformed);
                    }
                    self.state = State::DataLf;
                    at += 1;
                }
                State::DataLf => {
                    if byte != b'\n' {
                        return Err(ChunkedError::Malformed);
                    }
                    self.state = State::Size {
                        size: 0,
                        digits: 0,
                        line_bytes: 0,
                    };
                    at += 1;
                }
                State::Trailer {
                    line_bytes,
                    total,
                    saw_cr,
                } => {
                    *total += 1;
                    if *total > TRAILER_BYTES_MAX {
                        return Err(ChunkedError::Malformed);
                    }
                    at += 1;
                    if *saw_cr {
                        if byte != b'\n' {
                            return Err(ChunkedError::Malformed);
                        }
                        if *line_bytes == 0 {
                            self.state = State::Done;
                            return Ok(Step {
                                consumed: at,
                                data: None,
                            });
                        }
                        *line_bytes = 0;
                        *saw_cr = false;
                    } else if byte == b'\r' {
                        *saw_cr = true;
                    } else {
                        *line_bytes += 1;
                    }
                }
                State::Done => break,
            }
        }
        Ok(Step {
            consumed: at,
            data: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `piece` bytes and collects the body.
    fn decode(input: &[u8], piece: usize) -> Result<(Vec<u8>, usize), ChunkedError> {
        let mut decoder = ChunkedDecoder::new();
        let mut body = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut fed = 0;
        let mut consumed_total = 0;
        while !decoder.is_done() {
            if fed < input.len() {
                let end = (fed + piece).min(input.len());
                pending.extend_from_slice(&input[fed..end]);
                fed = end;
            } else if pending.is_empty() {
                break;
            }
            loop {
                let step = decoder.step(&pending)?;
                if let Some(data) = step.data {
                    body.extend_from_slice(data);
                }
                let consumed = step.consumed;
                consumed_total += consumed;
                pending.drain(..consumed);
                if consumed == 0 || decoder.is_done() {
                    break;
                }
            }
        }
        assert!(decoder.is_done(), "body did not end");
        Ok((body, consumed_total))
    }

    #[test]
    fn decodes_chunks_in_any_split() {
        let input = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: a\r\n\r\nNEXT";
        for piece in 1..input.len() {
            let (body, consumed) = decode(&input[..input.len() - 4], piece).unwrap();
            assert_eq!(body, b"hello world");
            assert_eq!(consumed, input.len() - 4);
        }
    }

    #[test]
    fn stops_at_the_end_of_the_body() {
        let mut decoder = ChunkedDecoder::new();
        let input = b"0\r\n\r\nGET / HTTP/1.1\r\n";
        let step = decoder.step(input).unwrap();
        assert_eq!(step.consumed, 5);
        assert!(decoder.is_done());
    }

    #[test]
    fn rejects_malformed_input() {
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloX\r\n",
            b"5\nhello\r\n",
            b"ffffffffffffffffff\r\n",
            b"-1\r\n",
        ] {
            let mut decoder = ChunkedDecoder::new();
            let mut input = bad;
            let mut failed = false;
            for _ in 0..10 {
                match decoder.step(input) {
                    Err(_) => {
                        failed = true;
                        break;
                    }
                    Ok(step) => input = &input[step.consumed..],
                }
            }
            assert!(failed, "{:?} accepted", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn bounds_the_size_line_and_trailer() {
        let mut line = b"1;".to_vec();
        line.extend(std::iter::repeat_n(b'a', 2000));
        assert!(ChunkedDecoder::new().step(&line).is_err());
        let mut trailer = b"0\r\n".to_vec();
        trailer.extend(std::iter::repeat_n(b'a', 9000));
        assert!(ChunkedDecoder::new().step(&trailer).is_err());
    }
}
