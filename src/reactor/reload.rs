//! Notices changed configuration files: their modification time and size,
//! checked about once a second (a bounded, local stat per file; no inotify
//! dependency). Reloading itself is the reactor's decision.

use std::path::PathBuf;
use std::time::SystemTime;

/// How often the files are checked.
pub const CHECK_INTERVAL_MS: u64 = 1000;

type Stamp = Option<(SystemTime, u64)>;

pub struct Watcher {
    files: Vec<PathBuf>,
    stamps: Vec<Stamp>,
    pub next_check_ms: u64,
}

impl Watcher {
    pub fn new(files: Vec<PathBuf>, now_ms: u64) -> Watcher {
        let stamps = files.iter().map(stamp).collect();
        Watcher {
            files,
            stamps,
            next_check_ms: now_ms + CHECK_INTERVAL_MS,
        }
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// `true` when any file changed since the last check that said so.
    pub fn check(&mut self, now_ms: u64) -> bool {
        if now_ms < self.next_check_ms {
            return false;
        }
        self.next_check_ms = now_ms + CHECK_INTERVAL_MS;
        let mut changed = false;
        for (file, known) in self.files.iter().zip(self.stamps.iter_mut()) {
            let current = stamp(file);
            if current != *known {
                *known = current;
                changed = true;
            }
        }
        changed
    }
}

fn stamp(file: &PathBuf) -> Stamp {
    let metadata = std::fs::metadata(file).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}
