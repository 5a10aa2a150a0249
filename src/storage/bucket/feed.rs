//! A blob read from the bucket and sent as it arrives: the pieces of one
//! streamed `GET` (`s3::client::Client::submit_streamed`) wait here for
//! the client's socket. At most `FEED_HIGH_BYTES` wait: past that the S3
//! connection is not read (TCP holds the rest at S3's side) until the
//! client took the pieces down to `FEED_LOW_BYTES`, so a slow client holds
//! a bounded buffer, not the blob.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use crate::http::output::{Awaited, Feed};
use crate::s3::client::OpId;

/// Bytes waiting for the client before the S3 connection pauses.
pub const FEED_HIGH_BYTES: usize = 1 << 20;
/// Bytes left waiting when it reads again.
pub const FEED_LOW_BYTES: usize = 256 << 10;

/// What feeds ask of the reads behind them, taken by `objects.rs` when it
/// next talks to the client (a feed is used from the answer's side, where
/// the client is not at hand).
#[derive(Debug, Default)]
pub struct Signals(RefCell<Vec<Signal>>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Read the S3 answer again: the client took enough.
    Resume(OpId),
    /// Nobody reads it any more (the client went): stop the `GET`.
    Dropped(OpId),
}

impl Signals {
    fn push(&self, signal: Signal) {
        self.0.borrow_mut().push(signal);
    }

    pub fn take(&self) -> Vec<Signal> {
        std::mem::take(&mut *self.0.borrow_mut())
    }

    pub fn is_empty(&self) -> bool {
        self.0.borrow().is_empty()
    }
}

pub struct BlobFeed {
    signals: Rc<Signals>,
    op: OpId,
    pieces: RefCell<VecDeque<Vec<u8>>>,
    buffered: Cell<usize>,
    paused: Cell<bool>,
    ended: Cell<bool>,
    failed: RefCell<Option<String>>,
    /// The connection to run again when a piece arrives or the read ends.
    reader: Cell<Option<(usize, u64)>>,
}

impl std::fmt::Debug for BlobFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobFeed")
            .field("op", &self.op)
            .field("buffered", &self.buffered.get())
            .finish_non_exhaustive()
    }
}

impl BlobFeed {
    pub(super) fn new(signals: Rc<Signals>, op: OpId) -> BlobFeed {
        BlobFeed {
            signals,
            op,
            pieces: RefCell::new(VecDeque::new()),
            buffered: Cell::new(0),
            paused: Cell::new(false),
            ended: Cell::new(false),
            failed: RefCell::new(None),
            reader: Cell::new(None),
        }
    }

    /// A piece arrived; `true` when the S3 connection must pause.
    pub(super) fn push(&self, piece: Vec<u8>) -> bool {
        self.buffered.set(self.buffered.get() + piece.len());
        self.pieces.borrow_mut().push_back(piece);
        let pause = !self.paused.get() && self.buffered.get() > FEED_HIGH_BYTES;
        if pause {
            self.paused.set(true);
        }
        pause
    }

    pub(super) fn end(&self, failure: Option<String>) {
        self.ended.set(true);
        *self.failed.borrow_mut() = failure;
    }

    /// The reader to run again, once.
    pub(super) fn take_reader(&self) -> Option<(usize, u64)> {
        self.reader.take()
    }
}

impl Awaited for BlobFeed {
    fn wait(&self, slot: usize, generation: u64) {
        self.reader.set(Some((slot, generation)));
    }
}

impl Feed for BlobFeed {
    fn next_piece(&self) -> Result<Option<Vec<u8>>, String> {
        let piece = self.pieces.borrow_mut().pop_front();
        match piece {
            Some(piece) => {
                self.buffered.set(self.buffered.get() - piece.len());
                if self.paused.get() && self.buffered.get() <= FEED_LOW_BYTES {
                    self.paused.set(false);
                    self.signals.push(Signal::Resume(self.op));
                }
                Ok(Some(piece))
            }
            None => match &*self.failed.borrow() {
                Some(reason) => Err(reason.clone()),
                // The answer still wants bytes (it asks only then).
                None if self.ended.get() => Err("the blob's object ended early".into()),
                None => Ok(None),
            },
        }
    }
}

impl Drop for BlobFeed {
    fn drop(&mut self) {
        if !self.ended.get() {
            // Nobody reads it any more (the client went): stop the GET.
            self.signals.push(Signal::Dropped(self.op));
        }
    }
}
