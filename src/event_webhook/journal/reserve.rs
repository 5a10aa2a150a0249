//! The journal's reserve: a file of real, written bytes (`reserve` beside the segments) that
//! holds disk space for the journal alone. When a write finds the disk full, the reserve is
//! deleted and the write tried once more in the space that frees, so events keep being recorded
//! (and acknowledged pushes keep their events) on a disk something else filled. It is written
//! again at the next compaction, or the next start, once there is room. What happened to it is
//! handed back (`take_reserve_change`) for the caller to log; the journal never logs.
//!
//! Written, not sized with `set_len`: a sparse file holds no blocks, and deleting it would free
//! nothing.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};

use super::Journal;
use crate::storage::space::is_storage_full;

/// The reserve's file name; recovery leaves it alone.
pub(super) const RESERVE_FILE: &str = "reserve";
/// The default reserve: about a thousand events (a record is a few hundred bytes to 1 KiB).
pub const RESERVE_BYTES_DEFAULT: u64 = 1 << 20;
/// Zeros written at a time.
const WRITE_CHUNK_BYTES: usize = 64 << 10;

/// What happened to the reserve since the caller last asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReserveChange {
    /// The disk was full: the reserve was deleted so a write could go on.
    Released,
    /// There was room again and the reserve is back.
    Restored,
}

impl Journal {
    /// Runs a write; when it finds the disk full and the reserve is held, deletes the reserve and
    /// runs it once more. The journal's writes may run again after a failure: a failed write
    /// leaves a fresh segment due (`rotate_due`), takes a new seq, and keeps the drops it made
    /// for the next report.
    pub(super) fn with_reserve<T>(
        &mut self,
        mut write: impl FnMut(&mut Journal) -> io::Result<T>,
    ) -> io::Result<T> {
        match write(self) {
            Err(error) if is_storage_full(&error) && self.release_reserve() => write(self),
            result => result,
        }
    }

    /// At a compaction: writes the reserve again, unless it was released during this very write
    /// (then at the next compaction, a segment's worth of records later).
    pub(super) fn restore_reserve_after_compaction(&mut self) {
        if !std::mem::take(&mut self.reserve_wait) {
            self.restore_reserve();
        }
    }

    /// Writes the reserve if it is not there whole; `true` when it is held afterwards. On a full
    /// disk nothing of it is left behind, and it is tried again at the next compaction.
    pub fn restore_reserve(&mut self) -> bool {
        if self.reserve_held || self.limits.reserve_bytes == 0 {
            return self.reserve_held;
        }
        let path = self.dir.join(RESERVE_FILE);
        if fs::metadata(&path).is_ok_and(|metadata| metadata.len() == self.limits.reserve_bytes) {
            // Written whole by an earlier run (a short one is a write cut by a crash or a full disk).
            self.reserve_held = true;
            return true;
        }
        match write_zeros(&path, self.limits.reserve_bytes) {
            Ok(()) => {
                self.reserve_held = true;
                self.reserve_change = Some(ReserveChange::Restored);
            }
            Err(_) => {
                let _ = fs::remove_file(&path);
            }
        }
        self.reserve_held
    }

    /// Deletes the reserve; `true` when that freed its space.
    fn release_reserve(&mut self) -> bool {
        if !self.reserve_held {
            return false;
        }
        self.reserve_held = false;
        match fs::remove_file(self.dir.join(RESERVE_FILE)) {
            Ok(()) => {
                self.reserve_change = Some(ReserveChange::Released);
                // The retry rotates, and the compaction that follows a rotation would take the
                // space straight back.
                self.reserve_wait = true;
                true
            }
            Err(_) => false,
        }
    }

    /// Whether the reserve is on disk now.
    pub fn reserve_held(&self) -> bool {
        self.reserve_held
    }

    /// The latest change to the reserve since the last call, for the caller to log.
    pub fn take_reserve_change(&mut self) -> Option<ReserveChange> {
        self.reserve_change.take()
    }
}

#[cfg(test)]
impl Journal {
    /// Tests: the next `writes` record writes fail as on a full disk.
    pub(crate) fn fail_writes_as_full(&mut self, writes: u32) {
        self.full_disk_writes = writes;
    }
}

/// Tests: fails the write as a full disk would while `remaining` says so.
#[cfg(test)]
pub(super) fn injected_full_disk(remaining: &mut u32) -> io::Result<()> {
    if *remaining == 0 {
        return Ok(());
    }
    *remaining -= 1;
    Err(io::Error::from(io::ErrorKind::StorageFull))
}

fn write_zeros(path: &std::path::Path, bytes: u64) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let zeros = [0u8; WRITE_CHUNK_BYTES];
    let mut left = bytes;
    while left > 0 {
        let chunk = left.min(WRITE_CHUNK_BYTES as u64) as usize;
        file.write_all(&zeros[..chunk])?;
        left -= chunk as u64;
    }
    // Flushed so the blocks are allocated now, not at writeback, where a full disk would go
    // unnoticed (delayed allocation) and the reserve would hold nothing.
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::super::testing::{append, limits, open};
    use super::*;
    use crate::test_support::TempDir;

    const RESERVE: u64 = 64 << 10;

    fn with_reserve() -> super::super::JournalLimits {
        super::super::JournalLimits {
            reserve_bytes: RESERVE,
            ..limits(4096, 1 << 20, 4)
        }
    }

    fn reserve_len(dir: &TempDir) -> Option<u64> {
        fs::metadata(dir.path().join(RESERVE_FILE))
            .ok()
            .map(|metadata| metadata.len())
    }

    #[test]
    fn a_full_disk_takes_the_reserve_and_the_event_is_still_recorded() {
        let dir = TempDir::new("journal-reserve");
        let (mut journal, recovery) = open(dir.path(), with_reserve());
        assert!(recovery.skipped.is_empty(), "{:?}", recovery.skipped);
        assert!(journal.reserve_held());
        assert_eq!(reserve_len(&dir), Some(RESERVE));
        assert_eq!(
            journal.take_reserve_change(),
            None,
            "making it at start is no news"
        );

        let first = append(&mut journal, "a", 1);
        journal.full_disk_writes = 1;
        let second = append(&mut journal, "a", 2);
        assert!(!journal.reserve_held());
        assert_eq!(reserve_len(&dir), None);
        assert_eq!(journal.take_reserve_change(), Some(ReserveChange::Released));
        assert_eq!(journal.take_reserve_change(), None);

        // With the reserve gone, a full disk fails the write; the caller decides.
        journal.full_disk_writes = 1;
        let error = journal
            .append_event("a", "ev-x", "manifest.push", 1, "dl-x", b"{}")
            .unwrap_err();
        assert!(is_storage_full(&error));
        assert_eq!(journal.pending("a"), 2);

        // The compaction the retry's rotation brought did not take the space back; the next does.
        assert!(!journal.reserve_held());
        journal.compact().unwrap();
        assert!(journal.reserve_held());
        assert_eq!(reserve_len(&dir), Some(RESERVE));
        assert_eq!(journal.take_reserve_change(), Some(ReserveChange::Restored));
        drop(journal);

        let (journal, recovery) = open(dir.path(), with_reserve());
        assert_eq!(recovery.pending, vec![first, second]);
        assert!(
            recovery.skipped.is_empty(),
            "the reserve is no stray file: {:?}",
            recovery.skipped
        );
        assert!(journal.reserve_held());
    }

    #[test]
    fn a_short_reserve_is_written_again_and_none_is_kept_without_one() {
        let dir = TempDir::new("journal-reserve");
        fs::write(dir.path().join(RESERVE_FILE), b"cut short").unwrap();
        let (journal, _) = open(dir.path(), with_reserve());
        assert!(journal.reserve_held());
        assert_eq!(reserve_len(&dir), Some(RESERVE));
        drop(journal);
        let bare = TempDir::new("journal-reserve");
        let (mut journal, _) = open(bare.path(), limits(4096, 1 << 20, 4));
        assert!(!journal.reserve_held());
        assert_eq!(reserve_len(&bare), None);
        journal.full_disk_writes = 1;
        let error = journal
            .append_event("a", "ev-x", "manifest.push", 1, "dl-x", b"{}")
            .unwrap_err();
        assert!(is_storage_full(&error), "no reserve to fall back on");
        assert_eq!(journal.take_reserve_change(), None);
    }
}
