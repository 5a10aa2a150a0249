//! One blob being written by a cache fill while clients read it: how far
//! the file is written, whether the fill failed, and the connections
//! waiting for more. Shared (`Rc`) between the fill and every answer
//! streaming the file (`http::output::Growing`).

use std::cell::{Cell, RefCell};
use std::fs::File;

use crate::http::output::Growing;

#[derive(Debug)]
pub struct Fill {
    /// The file being written, opened for reading; each answer reads a clone
    /// of it at its own offset, so a slow reader costs no memory.
    file: File,
    /// The upstream's announced length.
    pub size: u64,
    written: Cell<u64>,
    /// The digest checked out: the last byte may go too.
    verified: Cell<bool>,
    failed: Cell<bool>,
    /// Connections (slot, generation) that sent everything written so far.
    waiters: RefCell<Vec<(usize, u64)>>,
}

impl Fill {
    pub fn new(file: File, size: u64) -> Fill {
        Fill {
            file,
            size,
            written: Cell::new(0),
            verified: Cell::new(false),
            failed: Cell::new(false),
            waiters: RefCell::new(Vec::new()),
        }
    }

    /// A reader's own handle on the file.
    pub fn reader(&self) -> std::io::Result<File> {
        self.file.try_clone()
    }

    /// `bytes` more were written (and are readable).
    pub fn advance(&self, bytes: u64) {
        self.written.set(self.written.get() + bytes);
    }

    pub fn fail(&self) {
        self.failed.set(true);
    }

    /// Every byte is in and hashes to the digest.
    pub fn verify(&self) {
        self.verified.set(true);
    }

    pub fn is_verified(&self) -> bool {
        self.verified.get()
    }

    pub fn written(&self) -> u64 {
        self.written.get()
    }

    /// The connections to run again: more was written, or the fill ended.
    pub fn take_waiters(&self) -> Vec<(usize, u64)> {
        std::mem::take(&mut *self.waiters.borrow_mut())
    }
}

impl Growing for Fill {
    /// What readers may send: all of it once verified, else all but the
    /// last byte, so a client never receives a whole body of wrong bytes
    /// (its answer is cut one byte short when the digest fails).
    fn available(&self) -> u64 {
        if self.verified.get() {
            self.written.get()
        } else {
            self.written.get().min(self.size.saturating_sub(1))
        }
    }

    fn failed(&self) -> bool {
        self.failed.get()
    }
}

impl crate::http::output::Awaited for Fill {
    fn wait(&self, slot: usize, generation: u64) {
        let mut waiters = self.waiters.borrow_mut();
        if !waiters.contains(&(slot, generation)) {
            waiters.push((slot, generation));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::output::Awaited;

    #[test]
    fn readers_see_what_is_written_and_wait_once() {
        let dir = crate::test_support::TempDir::new("fill");
        let path = dir.path().join("data");
        std::fs::write(&path, b"").unwrap();
        let fill = Fill::new(File::open(&path).unwrap(), 10);
        assert_eq!(fill.available(), 0);
        fill.wait(3, 1);
        fill.wait(3, 1);
        fill.advance(4);
        assert_eq!(fill.available(), 4);
        fill.advance(6);
        assert_eq!(fill.available(), 9, "the last byte waits for the digest");
        fill.verify();
        assert_eq!(fill.available(), 10);
        assert_eq!(fill.take_waiters(), vec![(3, 1)]);
        assert!(fill.take_waiters().is_empty());
        assert!(!Growing::failed(&fill));
        fill.fail();
        assert!(Growing::failed(&fill));
    }
}
