//! A connection's queue of answer bytes and file regions, in the order they
//! go out. Pure data: the connection machine fills it, the reactor writes
//! its front to the socket (`sendfile(2)` for files) and advances it.

use std::collections::VecDeque;
use std::fs::File;
use std::rc::Rc;

/// In-memory bytes queued beyond which the connection decodes no further
/// requests until the peer takes some.
const BACKLOG_BYTES: usize = 256 * 1024;

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

/// A file still being written while it is sent (a pull-through cache
/// fill): only what is written so far may go out.
/// Its `Awaited::wait` wakes the reader when more is written or the fill
/// ends.
pub trait Growing: Awaited {
    /// Bytes of the file written so far.
    fn available(&self) -> u64;
    /// The file will never reach its announced length: end the answer.
    fn failed(&self) -> bool;
}

/// Something that may make a connection wait for more of its answer.
pub trait Awaited: std::fmt::Debug {
    /// Remembers to run the connection `slot` (of `generation`) again when
    /// more is there or the answer's source ends.
    fn wait(&self, slot: usize, generation: u64);
}

/// An answer body arriving in pieces from elsewhere (a blob read from
/// object storage): taken a piece at a time as the socket takes them.
pub trait Feed: Awaited {
    /// The next piece, if one is in; `Err` when the source failed (the
    /// answer can never be whole).
    fn next_piece(&self) -> Result<Option<Vec<u8>>, String>;
}

enum Item {
    Bytes {
        data: Data,
        sent: usize,
    },
    /// `remaining` bytes of a feed; `piece` is being written.
    Fed {
        feed: Rc<dyn Feed>,
        piece: Vec<u8>,
        sent: usize,
        remaining: u64,
    },
    File {
        file: File,
        offset: u64,
        remaining: u64,
        growing: Option<Rc<dyn Growing>>,
    },
}

/// What goes out next.
pub enum Front<'a> {
    Bytes(&'a [u8]),
    /// A feed whose current piece is written: take the next (`refill`).
    Feed(&'a Rc<dyn Feed>),
    /// `remaining` bytes of `file` from `offset`.
    File {
        file: &'a File,
        offset: u64,
        remaining: u64,
        growing: Option<&'a Rc<dyn Growing>>,
    },
}

#[derive(Default)]
pub struct OutputQueue {
    items: VecDeque<Item>,
    queued_bytes: usize,
}

impl OutputQueue {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// In-memory bytes not yet written, plus whether a file is queued: the
    /// connection stops decoding requests while either is large.
    pub fn is_backlogged(&self) -> bool {
        self.queued_bytes > BACKLOG_BYTES
            || self
                .items
                .iter()
                .any(|item| matches!(item, Item::File { .. } | Item::Fed { .. }))
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
                growing: None,
            });
        }
    }

    /// `len` bytes `feed` hands over piece by piece.
    pub fn push_feed(&mut self, feed: Rc<dyn Feed>, len: u64) {
        if len > 0 {
            self.items.push_back(Item::Fed {
                feed,
                piece: Vec::new(),
                sent: 0,
                remaining: len,
            });
        }
    }

    /// The front feed's next piece (`Front::Feed`): at most what the
    /// answer still lacks goes out.
    pub fn refill(&mut self, mut piece: Vec<u8>) {
        if let Some(Item::Fed {
            piece: current,
            sent,
            remaining,
            ..
        }) = self.items.front_mut()
        {
            piece.truncate(usize::try_from(*remaining).unwrap_or(usize::MAX));
            *current = piece;
            *sent = 0;
        }
    }

    /// Like `push_file`, for a file `growing` is still writing.
    pub fn push_growing_file(&mut self, file: File, len: u64, growing: Rc<dyn Growing>) {
        if len > 0 {
            self.items.push_back(Item::File {
                file,
                offset: 0,
                remaining: len,
                growing: Some(growing),
            });
        }
    }

    /// The next thing to write, if any.
    pub fn front(&self) -> Option<Front<'_>> {
        Some(match self.items.front()? {
            Item::Bytes { data, sent } => Front::Bytes(&data.as_slice()[*sent..]),
            Item::Fed { piece, sent, .. } if *sent < piece.len() => Front::Bytes(&piece[*sent..]),
            Item::Fed { feed, .. } => Front::Feed(feed),
            Item::File {
                file,
                offset,
                remaining,
                growing,
            } => Front::File {
                file,
                offset: *offset,
                remaining: *remaining,
                growing: growing.as_ref(),
            },
        })
    }

    /// `n` bytes of the front were written (at most what `front` showed).
    pub fn advance(&mut self, n: usize) {
        let Some(item) = self.items.front_mut() else {
            return;
        };
        let done = match item {
            Item::Bytes { data, sent } => {
                let n = n.min(data.as_slice().len() - *sent);
                *sent += n;
                self.queued_bytes -= n;
                *sent == data.as_slice().len()
            }
            Item::File {
                offset, remaining, ..
            } => {
                let n = (n as u64).min(*remaining);
                *offset += n;
                *remaining -= n;
                *remaining == 0
            }
            Item::Fed {
                piece,
                sent,
                remaining,
                ..
            } => {
                let n = n.min(piece.len() - *sent);
                *sent += n;
                *remaining -= n as u64;
                if *sent == piece.len() {
                    *piece = Vec::new();
                    *sent = 0;
                }
                *remaining == 0
            }
        };
        if done {
            self.items.pop_front();
        }
    }

    /// Whether a file is at the front (it may need a scratch buffer to pass through TLS).
    pub fn front_is_file(&self) -> bool {
        matches!(self.items.front(), Some(Item::File { .. }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(queue: &mut OutputQueue) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(Front::Bytes(bytes)) = queue.front() {
            let take = bytes.len().min(3);
            out.extend_from_slice(&bytes[..take]);
            queue.advance(take);
        }
        out
    }

    #[test]
    fn pieces_leave_in_order_in_partial_writes() {
        let mut queue = OutputQueue::default();
        queue.push_vec(b"head ".to_vec());
        queue.push_bytes(b"and ");
        queue.push_shared(Rc::from(&b"shared body"[..]));
        queue.push_bytes(b"!");
        assert_eq!(drain(&mut queue), b"head and shared body!");
        assert!(queue.is_empty());
        assert!(!queue.is_backlogged());
    }

    #[test]
    fn large_or_file_answers_are_a_backlog() {
        let mut queue = OutputQueue::default();
        queue.push_vec(vec![0; BACKLOG_BYTES + 1]);
        assert!(queue.is_backlogged());
        queue.advance(BACKLOG_BYTES + 1);
        assert!(queue.is_empty() && !queue.is_backlogged());
        let scratch = crate::test_support::TempDir::new("output-queue");
        let path = scratch.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        queue.push_file(File::open(&path).unwrap(), 2, 5);
        assert!(queue.is_backlogged() && queue.front_is_file());
        queue.advance(4);
        assert!(matches!(
            queue.front(),
            Some(Front::File {
                offset: 6,
                remaining: 1,
                ..
            })
        ));
        queue.advance(1);
        assert!(queue.is_empty());
    }
}
