//! A collection run by `angos scrub` when no server holds the data
//! directory: the same collector, driven to the end in one go, with the
//! discarded files removed at once. Unreachable manifests are left for the
//! server's collections: their removal is an event webhooks must hear of,
//! and only a running server delivers events.

use std::fs;
use std::path::Path;

use super::collector::{Collector, Progress, Report};
use crate::storage::Storage;

/// Operations per step; nothing else waits on this process.
const OPERATIONS_PER_STEP: usize = 4096;

/// Collects `storage`; returns the report (counts of what it would remove
/// when `report_only`).
pub fn collect(storage: &mut Storage, now_secs: u64, grace_secs: u64, report_only: bool) -> Report {
    let mut collector = Collector::new(storage, now_secs, grace_secs);
    if report_only {
        collector = collector.report_only();
    }
    while collector.step(storage, OPERATIONS_PER_STEP) == Progress::Working {
        collector.take_deletions();
        remove_all(&storage.take_discarded());
    }
    collector.take_deletions();
    remove_all(&storage.take_discarded());
    collector.report().clone()
}

fn remove_all(paths: &[std::path::PathBuf]) {
    for path in paths {
        if let Err(error) = remove(path) {
            // What stays in `_trash` is wiped at the next start.
            log::warn!(target: "angos::gc", "removing {}: {error}", path.display());
        }
    }
}

fn remove(path: &Path) -> std::io::Result<()> {
    if fs::symlink_metadata(path)?.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}
