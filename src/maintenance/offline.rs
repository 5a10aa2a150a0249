//! Maintenance run by a command when no server holds the data directory:
//! the same jobs, driven to the end in one go. A collection (`angos scrub`)
//! removes the discarded files at once and leaves unreachable manifests for
//! the server's collections: their removal is an event webhooks must hear
//! of, and only a running server delivers events. A retention run
//! (`angos prune`) makes its removals here only when no webhook is
//! configured (the command checks), else it is a dry run.

use std::fs;
use std::path::Path;

use super::collector::{Collector, Progress, Report};
use super::prune::Pruner;
use crate::config::Config;
use crate::registry::{Commit, Registry};
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

/// One retention run over `registry` under `config`'s rules, its removals
/// made at once unless `dry_run`; the report as the admin API gives it.
pub fn prune(registry: &mut Registry, config: &Config, now_secs: u64, dry_run: bool) -> serde_json::Value {
    let mut pruner = Pruner::new(registry.storage(), now_secs, dry_run);
    let (mut made, mut refused) = (0u64, 0u64);
    loop {
        let progress = pruner.step(registry.storage(), config, OPERATIONS_PER_STEP);
        for pruning in pruner.take_prunings() {
            let commit = Commit::Remove {
                name: pruning.namespace,
                target: pruning.removal,
                epoch: pruning.epoch,
            };
            match registry.apply(commit) {
                Ok(()) => made += 1,
                Err(_) => refused += 1,
            }
        }
        if progress == Progress::Done {
            break;
        }
    }
    let report = pruner.report();
    serde_json::json!({
        "mode": if dry_run { "dry-run" } else { "commit" },
        "namespaces": report.namespaces,
        "tags": report.tags,
        "manifests": report.manifests,
        "tags_removed": report.tags_removed,
        "manifests_removed": report.manifests_removed,
        "protected": report.protected,
        "rule_errors": report.rule_errors,
        "removals_made": made,
        "removals_refused": refused,
        "listed": report.listed,
    })
}
