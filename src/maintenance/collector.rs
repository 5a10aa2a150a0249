//! Online garbage collection, one bounded slice at a time on the loop.
//!
//! A collection walks every namespace, then the content store:
//! 1. **Mark a namespace.** Read its revisions, tags and manifest bodies.
//!    Live manifests are the tagged ones, those written within the grace
//!    period, those with referrers, and (transitively) the children of live
//!    indexes and the referrers of live manifests. Every other revision older
//!    than the grace period is unreachable: it is handed out as a `Deletion`
//!    (the caller removes it through the notifier, so webhooks hear of it).
//! 2. **Sweep its links.** A blob link is removed when no revision of the
//!    namespace (live or not yet removed) references it, it is older than the
//!    grace period, no request touched it since the collection began, and
//!    no manifest was written to the namespace since its mark.
//! 3. **Sweep the content.** A file under `blobs/` is removed when no
//!    namespace links or references it, it is older than the grace period,
//!    and no request wrote, linked or read it since the collection began.
//!
//! Everything kept is kept for a reason that still holds when the slice that
//! removes things runs: requests between slices are seen through the
//! storage's watch and manifest epochs (`storage/watch.rs`). A manifest
//! removed in this collection frees its blobs in the next one, which is why
//! unreachable content is gone "within two collections". The collector holds
//! no state on disk: a crash loses nothing but the progress of the run.

use std::collections::{HashMap, HashSet, VecDeque};

use super::scan::NamespaceScan;
use crate::digest::Digest;
use crate::storage::Storage;
use crate::storage::walk::{DigestFile, DigestWalk, NamespaceWalk};

/// What one collection found and freed (in a report-only run, the
/// `_removed` counts are what it would have removed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub namespaces: u64,
    pub manifests: u64,
    /// Unreachable manifests handed out for removal.
    pub manifests_unreachable: u64,
    pub links: u64,
    pub links_removed: u64,
    pub contents: u64,
    pub contents_removed: u64,
    pub bytes_removed: u64,
    /// Bytes of the content kept (what the store holds after the run).
    pub bytes_kept: u64,
    /// Bytes of content nothing links yet that is still within the grace
    /// period: what a later collection may free.
    pub bytes_reclaimable: u64,
    /// Namespaces written while marked, or unreadable: nothing removed there.
    pub namespaces_skipped: u64,
    /// Set when a namespace could not be read: content is then not swept at
    /// all, since what that namespace references is unknown.
    pub content_sweep_skipped: bool,
    pub errors: u64,
}

/// An unreachable manifest to remove, unless `namespace` took a manifest
/// write since `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    pub namespace: String,
    pub digest: Digest,
    /// Unreachable indexes listing it as a child: it goes only once they
    /// are gone.
    pub parents: Vec<Digest>,
    pub epoch: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Working,
    Done,
}

pub struct Collector {
    /// Report what would go, remove nothing (`angos scrub` without `--commit`).
    report_only: bool,
    /// Files last written before this second (wall clock) are old enough to
    /// remove; a file of the cutoff's own second is not (modification times
    /// are read in whole seconds, and a tie must keep).
    cutoff_secs: u64,
    phase: Phase,
    /// Keys (`storage::watch::content_key`) of content some namespace keeps.
    linked: HashSet<u64>,
    report: Report,
    deletions: Vec<Deletion>,
}

enum Phase {
    /// Finding namespaces; each found one is scanned before the walk goes on.
    Namespaces {
        walk: NamespaceWalk,
        queue: VecDeque<String>,
    },
    Namespace {
        walk: NamespaceWalk,
        queue: VecDeque<String>,
        scan: Box<NamespaceScan>,
        stage: NamespaceStage,
    },
    Content(DigestWalk),
    Done,
}

/// Where a namespace's scan is: reading it, then sweeping its links.
enum NamespaceStage {
    Reading,
    Links(DigestWalk),
}

/// Entries the write barrier may hold (about 16 bytes each): requests
/// touching more blobs than this during one collection end it early.
const WATCH_ENTRIES_MAX: usize = 1 << 20;

/// Budget units a removal costs beyond reading its entry: a rename or an
/// unlink is a few times a directory entry's read, and with `sync_to_disk`
/// each is followed by a directory fsync (milliseconds on a real disk), so
/// a slice then removes only a few.
fn removal_cost(storage: &Storage, removed: u64) -> usize {
    let each = if storage.syncs_to_disk() { 32 } else { 4 };
    (removed as usize).saturating_mul(each)
}

impl Collector {
    /// A collection starting at `now_secs` (wall clock) that removes only
    /// what was last written `grace_secs` or more before it.
    pub fn new(storage: &mut Storage, now_secs: u64, grace_secs: u64) -> Collector {
        storage.start_watch();
        if let Err(error) = storage.begin_discard_batch() {
            // Discards then go to `_trash` one by one, as outside a collection.
            log::warn!(target: "angos::gc", "cannot make a trash directory for this collection: {error}");
        }
        Collector {
            report_only: false,
            cutoff_secs: now_secs.saturating_sub(grace_secs),
            phase: Phase::Namespaces {
                walk: storage.namespace_walk(),
                queue: VecDeque::new(),
            },
            linked: HashSet::new(),
            report: Report::default(),
            deletions: Vec::new(),
        }
    }

    /// Makes this collection count what it would remove, and remove nothing
    /// (its unreachable manifests are counted, not handed out).
    pub fn report_only(mut self) -> Collector {
        self.report_only = true;
        self
    }

    pub fn is_report_only(&self) -> bool {
        self.report_only
    }

    pub fn report(&self) -> &Report {
        &self.report
    }

    /// Unreachable manifests found since the last call.
    pub fn take_deletions(&mut self) -> Vec<Deletion> {
        std::mem::take(&mut self.deletions)
    }

    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// Runs about `budget` file-system operations (directory entries read,
    /// files read or removed), then returns.
    pub fn step(&mut self, storage: &mut Storage, budget: usize) -> Progress {
        let mut left = budget.max(1);
        if storage.watched() > WATCH_ENTRIES_MAX && !self.is_done() {
            // Requests touched more than the barrier may hold: rather than
            // grow without bound, stop removing; the next collection starts
            // afresh.
            log::warn!(
                target: "angos::gc",
                "garbage collection stopped early: requests touched more than {WATCH_ENTRIES_MAX} blobs while it ran"
            );
            self.report.errors += 1;
            self.report.content_sweep_skipped = true;
            self.phase = self.finish(storage);
            return Progress::Done;
        }
        while left > 0 {
            let phase = std::mem::replace(&mut self.phase, Phase::Done);
            self.phase = match phase {
                Phase::Namespaces { mut walk, mut queue } => {
                    if let Some(name) = queue.pop_front() {
                        let scan = NamespaceScan::new(storage, name);
                        self.report.namespaces += 1;
                        Phase::Namespace {
                            walk,
                            queue,
                            scan,
                            stage: NamespaceStage::Reading,
                        }
                    } else if walk.is_done() {
                        if self.report.content_sweep_skipped {
                            self.finish(storage)
                        } else {
                            Phase::Content(storage.content_walk())
                        }
                    } else {
                        let directories = left.min(16);
                        left = left.saturating_sub(directories);
                        match walk.step(directories) {
                            Ok(found) => queue.extend(found),
                            Err(error) => {
                                // An unreadable directory may hide a namespace
                                // whose references are unknown: sweep no content.
                                log::warn!(target: "angos::gc", "reading namespaces: {error}");
                                self.report.errors += 1;
                                self.report.content_sweep_skipped = true;
                            }
                        }
                        Phase::Namespaces { walk, queue }
                    }
                }
                Phase::Namespace {
                    walk,
                    queue,
                    mut scan,
                    stage,
                } => match self.scan_step(storage, &mut scan, stage, &mut left) {
                    None => Phase::Namespaces { walk, queue },
                    Some(stage) => Phase::Namespace {
                        walk,
                        queue,
                        scan,
                        stage,
                    },
                },
                Phase::Content(mut walk) => {
                    if walk.is_done() {
                        self.finish(storage)
                    } else {
                        let entries = left.min(64);
                        left -= entries;
                        match walk.step(entries) {
                            Ok(files) => {
                                let before = self.report.contents_removed;
                                for file in files {
                                    self.sweep_content(storage, &file);
                                }
                                let removed = self.report.contents_removed - before;
                                left = left.saturating_sub(removal_cost(storage, removed));
                                Phase::Content(walk)
                            }
                            Err(error) => {
                                log::warn!(target: "angos::gc", "reading the content store: {error}");
                                self.report.errors += 1;
                                self.finish(storage)
                            }
                        }
                    }
                }
                Phase::Done => return Progress::Done,
            };
        }
        if self.is_done() {
            Progress::Done
        } else {
            Progress::Working
        }
    }

    fn finish(&mut self, storage: &mut Storage) -> Phase {
        storage.stop_watch();
        storage.end_discard_batch();
        Phase::Done
    }

    /// One piece of a namespace's work; `None` once it is complete.
    fn scan_step(
        &mut self,
        storage: &mut Storage,
        scan: &mut NamespaceScan,
        stage: NamespaceStage,
        left: &mut usize,
    ) -> Option<NamespaceStage> {
        match stage {
            NamespaceStage::Reading => {
                if !scan.step(storage, left) {
                    return Some(NamespaceStage::Reading);
                }
                self.report.manifests += scan.revisions.len() as u64;
                self.report.errors += scan.errors;
                if scan.unparseable {
                    self.report.content_sweep_skipped = true;
                }
                self.decide(storage, scan);
                Some(NamespaceStage::Links(storage.link_walk(&scan.name)))
            }
            NamespaceStage::Links(mut walk) => {
                let entries = (*left).min(64);
                *left -= entries;
                match walk.step(entries) {
                    Ok(links) => {
                        let before = self.report.links_removed;
                        for link in links {
                            self.sweep_link(storage, scan, &link);
                        }
                        let removed = self.report.links_removed - before;
                        *left = left.saturating_sub(removal_cost(storage, removed));
                    }
                    Err(error) => {
                        // Links not read are not known to be kept: sweep no content.
                        log::warn!(target: "angos::gc", "{}: reading links: {error}", scan.name);
                        self.report.errors += 1;
                        self.report.content_sweep_skipped = true;
                        self.report.namespaces_skipped += 1;
                        return None;
                    }
                }
                if walk.is_done() {
                    if scan.keep_all {
                        self.report.namespaces_skipped += 1;
                    }
                    return None;
                }
                Some(NamespaceStage::Links(walk))
            }
        }
    }

    /// Marks the namespace's live manifests; hands out the unreachable ones.
    fn decide(&mut self, storage: &Storage, scan: &mut NamespaceScan) {
        for kept in &scan.kept {
            self.linked.insert(*kept);
        }
        if scan.keep_all || storage.manifest_epoch(&scan.name) != scan.epoch {
            scan.keep_all = true;
            return;
        }
        for (digest, parents) in unreachable_manifests(scan, self.cutoff_secs) {
            self.report.manifests_unreachable += 1;
            if self.report_only {
                continue;
            }
            self.deletions.push(Deletion {
                namespace: scan.name.clone(),
                digest,
                parents,
                epoch: scan.epoch,
            });
        }
    }

    fn sweep_link(&mut self, storage: &mut Storage, scan: &NamespaceScan, link: &DigestFile) {
        self.report.links += 1;
        let key = crate::storage::watch_content_key(&link.digest);
        let removable = !scan.keep_all
            && !scan.kept.contains(&key)
            && link.modified_secs < self.cutoff_secs
            && !storage.link_touched(&scan.name, &link.digest)
            && storage.manifest_epoch(&scan.name) == scan.epoch;
        if removable && self.report_only {
            // Not added to `linked`: its content counts as removable too.
            self.report.links_removed += 1;
            return;
        }
        if removable {
            match storage.remove_link_written_before(&scan.name, &link.digest, self.cutoff_secs) {
                Ok(true) => {
                    self.report.links_removed += 1;
                    log::debug!(target: "angos::gc", "removed link {}@{}", scan.name, link.digest);
                    return;
                }
                Ok(false) => {}
                Err(error) => {
                    log::warn!(target: "angos::gc", "removing link {}@{}: {error}", scan.name, link.digest);
                    self.report.errors += 1;
                }
            }
        }
        self.linked.insert(key);
    }

    fn sweep_content(&mut self, storage: &mut Storage, file: &DigestFile) {
        self.report.contents += 1;
        let key = crate::storage::watch_content_key(&file.digest);
        if self.linked.contains(&key) || storage.content_touched(&file.digest) {
            self.report.bytes_kept += file.size;
            return;
        }
        if file.modified_secs >= self.cutoff_secs {
            self.report.bytes_kept += file.size;
            self.report.bytes_reclaimable += file.size;
            return;
        }
        if self.report_only {
            self.report.contents_removed += 1;
            self.report.bytes_removed += file.size;
            return;
        }
        // The walk read this file in this same call: no request came in
        // between, so it is still the file judged old above.
        match storage.remove_content(&file.digest) {
            Ok(true) => {
                self.report.contents_removed += 1;
                self.report.bytes_removed += file.size;
                log::debug!(target: "angos::gc", "removed content {}", file.digest);
            }
            Ok(false) => {}
            Err(error) => {
                log::warn!(target: "angos::gc", "removing content {}: {error}", file.digest);
                self.report.errors += 1;
                self.report.bytes_kept += file.size;
            }
        }
    }
}

/// The namespace's unreachable manifests, each with the unreachable indexes
/// listing it, in the order they may go. Live: the tagged ones, those
/// written at or after `cutoff_secs`, those with referrers, and
/// (transitively) the children of live indexes and the referrers of live
/// manifests.
pub fn unreachable_manifests(scan: &NamespaceScan, cutoff_secs: u64) -> Vec<(Digest, Vec<Digest>)> {
    let mut live: HashSet<Digest> = HashSet::new();
    let mut pending: Vec<Digest> = Vec::new();
    for revision in &scan.revisions {
        let digest = &revision.digest;
        let young = revision.modified_secs >= cutoff_secs;
        let has_referrers = scan.referrers.get(digest).is_some_and(|list| !list.is_empty());
        if young || has_referrers || scan.tagged.contains(digest) {
            pending.push(digest.clone());
        }
    }
    while let Some(digest) = pending.pop() {
        if !live.insert(digest.clone()) {
            continue;
        }
        for next in scan
            .children
            .get(&digest)
            .into_iter()
            .chain(scan.referrers.get(&digest))
            .flatten()
        {
            if !live.contains(next) {
                pending.push(next.clone());
            }
        }
    }
    // Parents first: an index goes before its children, so no index is
    // ever left without one; a child's removal waits for its parents'
    // (`Removal::Manifest::parents`), since a webhook may keep a parent.
    let dead: Vec<&Digest> = scan
        .revisions
        .iter()
        .map(|revision| &revision.digest)
        .filter(|digest| !live.contains(*digest))
        .collect();
    let mut parents: HashMap<&Digest, Vec<Digest>> = HashMap::new();
    for parent in &dead {
        for child in scan.children.get(*parent).into_iter().flatten() {
            if !live.contains(child) {
                parents.entry(child).or_default().push((*parent).clone());
            }
        }
    }
    let mut emitted: HashSet<&Digest> = HashSet::new();
    let mut order = Vec::new();
    while emitted.len() < dead.len() {
        let before = emitted.len();
        for digest in &dead {
            if emitted.contains(*digest) {
                continue;
            }
            let waiting = parents
                .get(*digest)
                .is_some_and(|list| list.iter().any(|parent| !emitted.contains(parent)));
            if waiting {
                continue;
            }
            emitted.insert(digest);
            order.push((
                (*digest).clone(),
                parents.get(*digest).cloned().unwrap_or_default(),
            ));
        }
        if emitted.len() == before {
            // Content addressing rules out cycles; if a corrupt store had
            // one, its manifests simply stay.
            break;
        }
    }
    order
}
