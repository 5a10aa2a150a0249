//! A connection's queue of response bytes and file regions, written in
//! order. Files go out with `sendfile(2)` (zero copy) and bounded memory.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::rc::Rc;

use super::transport::Transport;

/// Largest single sendfile call, so one connection cannot monopolise a wake-up.
const SENDFILE_BYTES_MAX: usize = 4 << 20;

/// Bytes to send: owned (heads, small answers) or shared (cached manifests).
enum Data {
    Owned(Vec<u8>),
    Shared(Rc<[u8]>),
}

impl Data {
    fn as_slice(&self) -> &[u8] {
        match self {
            Data::Owned(bytes) => bytes,
            Data::Shared(bytes) => bytes,
        }
    }
}

enum Item {
    Bytes { data: Data, sent: usize },
    File { file: File, offset: u64, remaining: u64 },
}

#[derive(Default)]
pub struct Output {
    items: VecDeque<Item>,
    queued_bytes: usize,
    /// File bytes on their way into TLS (no sendfile there); allocated only
    /// while a file goes out over TLS.
    scratch: Vec<u8>,
}

/// File bytes read per step when they must pass through TLS.
const TLS_FILE_CHUNK_BYTES: usize = 64 * 1024;

/// How far a flush got.
#[derive(Debug, PartialEq, Eq)]
pub enum Flush {
    /// Everything queued is written.
    Done,
    /// The socket is full; wait for writability.
    Blocked,
    /// This wake-up's budget is used; continue on the next loop turn.
    Budget,
}

impl Output {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// In-memory bytes not yet written, plus whether a file is queued: the
    /// connection stops reading requests while either is large.
    pub fn is_backlogged(&self) -> bool {
        self.queued_bytes > 256 * 1024 || self.items.iter().any(|item| matches!(item, Item::File { .. }))
    }

    /// Appends bytes, coalescing with a queued byte item so pipelined small
    /// answers leave in one write.
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.queued_bytes += bytes.len();
        if let Some(Item::Bytes {
            data: Data::Owned(data),
            ..
        }) = self.items.back_mut()
        {
            data.extend_from_slice(bytes);
            return;
        }
        self.items.push_back(Item::Bytes {
            data: Data::Owned(bytes.to_vec()),
            sent: 0,
        });
    }

    /// Takes a buffer (response head plus body) without copying.
    pub fn push_vec(&mut self, data: Vec<u8>) {
        if let Some(Item::Bytes {
            data: Data::Owned(_), ..
        }) = self.items.back()
        {
            self.push_bytes(&data);
            return;
        }
        if data.is_empty() {
            return;
        }
        self.queued_bytes += data.len();
        self.items.push_back(Item::Bytes {
            data: Data::Owned(data),
            sent: 0,
        });
    }

    /// Queues shared bytes without copying them; they count against the
    /// backlog like owned ones, though their memory is shared.
    pub fn push_shared(&mut self, data: Rc<[u8]>) {
        if data.is_empty() {
            return;
        }
        self.queued_bytes += data.len();
        self.items.push_back(Item::Bytes {
            data: Data::Shared(data),
            sent: 0,
        });
    }

    pub fn push_file(&mut self, file: File, offset: u64, len: u64) {
        if len > 0 {
            self.items.push_back(Item::File {
                file,
                offset,
                remaining: len,
            });
        }
    }

    /// Writes as much as the socket takes, up to `budget` bytes; returns how
    /// far it got and the bytes written.
    pub fn flush(&mut self, transport: &mut Transport, mut budget: usize) -> io::Result<(Flush, u64)> {
        let mut written = 0u64;
        while let Some(item) = self.items.front_mut() {
            if budget == 0 {
                return Ok((Flush::Budget, written));
            }
            match item {
                Item::Bytes { data, sent } => match transport.write(&data.as_slice()[*sent..]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        *sent += n;
                        written += n as u64;
                        budget = budget.saturating_sub(n);
                        self.queued_bytes -= n;
                        if *sent == data.as_slice().len() {
                            self.items.pop_front();
                        }
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        return Ok((Flush::Blocked, written));
                    }
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(error) => return Err(error),
                },
                Item::File {
                    file,
                    offset,
                    remaining,
                } => {
                    let count = (*remaining).min(SENDFILE_BYTES_MAX.min(budget) as u64) as usize;
                    if matches!(transport, Transport::Tls(_)) && self.scratch.is_empty() {
                        self.scratch = vec![0; TLS_FILE_CHUNK_BYTES];
                    }
                    let n = match transport.send_file(file, *offset, count, &mut self.scratch) {
                        Ok(n) => n,
                        Err(error) => match error.kind() {
                            io::ErrorKind::WouldBlock => return Ok((Flush::Blocked, written)),
                            io::ErrorKind::Interrupted => continue,
                            _ => return Err(error),
                        },
                    };
                    if n == 0 {
                        // The file is shorter than promised (it cannot be: blobs are
                        // immutable), so the framing is broken; end the connection.
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file ended early"));
                    }
                    let n = n as u64;
                    *offset += n;
                    *remaining -= n;
                    written += n;
                    budget = budget.saturating_sub(n as usize);
                    if *remaining == 0 {
                        self.items.pop_front();
                        self.scratch = Vec::new();
                    }
                }
            }
        }
        // Encrypted records may still wait for the socket.
        if !transport.flushed()? {
            return Ok((Flush::Blocked, written));
        }
        Ok((Flush::Done, written))
    }
}
