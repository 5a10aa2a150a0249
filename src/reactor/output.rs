//! Writes a connection's `OutputQueue` to its transport: bytes with `write`,
//! files with `sendfile(2)` (zero copy) on plain TCP or read and encrypted
//! in bounded chunks through TLS, up to a per-turn byte budget.

use std::io;
use std::rc::Rc;

use super::transport::Transport;
use crate::http::output::{Awaited, Front, OutputQueue};

/// Largest single sendfile call, so one connection cannot monopolise a wake-up.
const SENDFILE_BYTES_MAX: usize = 4 << 20;

/// File bytes read per step when they must pass through TLS.
const TLS_FILE_CHUNK_BYTES: usize = 64 * 1024;

/// How far a flush got.
#[derive(Debug)]
pub enum Flush {
    /// Everything queued is written.
    Done,
    /// The socket is full; wait for writability.
    Blocked,
    /// This wake-up's budget is used; continue on the next loop turn.
    Budget,
    /// The front is a file still being written, sent as far as it is
    /// written, or a feed with no piece in: wait for more (`Awaited::wait`).
    Starved(Rc<dyn Awaited>),
}

/// File bytes on their way into TLS (no sendfile there); allocated only
/// while a file goes out over TLS.
#[derive(Default)]
pub struct Scratch(Vec<u8>);

/// Writes as much of `queue` as the socket takes, up to `budget` bytes;
/// returns how far it got and the bytes written.
pub fn flush(
    queue: &mut OutputQueue,
    transport: &mut Transport,
    scratch: &mut Scratch,
    mut budget: usize,
) -> io::Result<(Flush, u64)> {
    let mut written = 0u64;
    while let Some(front) = queue.front() {
        if budget == 0 {
            return Ok((Flush::Budget, written));
        }
        let result = match front {
            Front::Bytes(bytes) => match transport.write(bytes) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                result => result,
            },
            Front::Feed(feed) => match feed.next_piece() {
                Ok(Some(piece)) => {
                    queue.refill(piece);
                    continue;
                }
                Ok(None) => {
                    let waiting: Rc<dyn Awaited> = feed.clone();
                    return Ok((Flush::Starved(waiting), written));
                }
                Err(reason) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, reason)),
            },
            Front::File {
                file,
                offset,
                remaining,
                growing,
            } => {
                let mut remaining = remaining;
                if let Some(growing) = growing {
                    let ready = growing.available().saturating_sub(offset).min(remaining);
                    if ready == 0 {
                        if growing.failed() {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "the upstream fetch of this blob failed",
                            ));
                        }
                        let waiting: Rc<dyn Awaited> = growing.clone();
                        return Ok((Flush::Starved(waiting), written));
                    }
                    remaining = ready;
                }
                let count = remaining.min(SENDFILE_BYTES_MAX.min(budget) as u64) as usize;
                if matches!(transport, Transport::Tls(_)) && scratch.0.is_empty() {
                    scratch.0 = vec![0; TLS_FILE_CHUNK_BYTES];
                }
                match transport.send_file(file, offset, count, &mut scratch.0) {
                    // The file is shorter than promised (it cannot be: blobs are
                    // immutable), so the framing is broken; end the connection.
                    Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file ended early")),
                    result => result,
                }
            }
        };
        match result {
            Ok(n) => {
                queue.advance(n);
                written += n as u64;
                budget = budget.saturating_sub(n);
                if !queue.front_is_file() {
                    scratch.0 = Vec::new();
                }
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok((Flush::Blocked, written)),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    // Encrypted records may still wait for the socket.
    if !transport.flushed()? {
        return Ok((Flush::Blocked, written));
    }
    Ok((Flush::Done, written))
}
