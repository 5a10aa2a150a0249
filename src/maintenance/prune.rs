//! Retention: upstream Angos's `retention_policy.rules` applied to every
//! namespace that has some, a namespace per few slices on the loop.
//!
//! Each tag is an image (`image.tag` its name, `image.pushed_at` when the tag
//! was last written, `image.last_pulled_at` its manifest's last pull); a tag
//! no rule keeps is removed. Then each manifest left without tags is an
//! untagged image (`image.tag == null`, pushed when its revision was written);
//! one no rule keeps is removed. Protected, never removed: children of an
//! index, manifests with referrers, and the referrers of a manifest present
//! (a signature goes with its image). A rule that fails to evaluate keeps
//! the image, with a warning (upstream's fail-open).
//!
//! Removals come out as data: the reactor submits them through the notifier
//! (`tag.delete`, `manifest.delete`, `actor.internal = "prune"`), so webhooks
//! hear of each, and a `required` one may keep it. Each is made only if the
//! namespace took no manifest write since it was decided.

use std::collections::{HashMap, HashSet, VecDeque};

use super::collector::Progress;
use super::scan::NamespaceScan;
use crate::config::Config;
use crate::digest::Digest;
use crate::registry::Removal;
use crate::retention::rule::Image;
use crate::storage::Storage;
use crate::storage::walk::NamespaceWalk;

/// Removals named in a report, at most (a dry run's listing).
const LISTED_MAX: usize = 10_000;

/// A removal retention decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pruning {
    pub namespace: String,
    pub removal: Removal,
    pub epoch: u64,
}

impl Pruning {
    /// `ns:tag (digest)` or `ns@digest`, as a dry run lists it.
    pub fn describe(&self) -> String {
        match &self.removal {
            Removal::Tag { tag, digest } => format!("{}:{tag} ({digest})", self.namespace),
            Removal::Manifest { digest, .. } => format!("{}@{digest}", self.namespace),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub namespaces: u64,
    pub tags: u64,
    pub manifests: u64,
    pub tags_removed: u64,
    pub manifests_removed: u64,
    /// Manifests kept as index children, subjects or referrers.
    pub protected: u64,
    /// Rule evaluations that failed (the image was kept).
    pub rule_errors: u64,
    pub errors: u64,
    /// What goes (or would), up to `LISTED_MAX` lines.
    pub listed: Vec<String>,
}

pub struct Pruner {
    walk: NamespaceWalk,
    queue: VecDeque<String>,
    scan: Option<Box<NamespaceScan>>,
    judge: Judge,
}

impl Pruner {
    pub fn new(storage: &Storage, now_secs: u64, report_only: bool) -> Pruner {
        Pruner {
            walk: storage.namespace_walk(),
            queue: VecDeque::new(),
            scan: None,
            judge: Judge::new(now_secs, report_only),
        }
    }

    pub fn is_report_only(&self) -> bool {
        self.judge.report_only
    }

    pub fn report(&self) -> &PruneReport {
        &self.judge.report
    }

    /// Removals decided since the last call (none in a report-only run).
    pub fn take_prunings(&mut self) -> Vec<Pruning> {
        self.judge.take_prunings()
    }

    /// Runs about `budget` file-system operations under `config`'s rules.
    pub fn step(&mut self, storage: &Storage, config: &Config, budget: usize) -> Progress {
        let mut left = budget.max(1);
        while left > 0 {
            if let Some(scan) = &mut self.scan {
                if !scan.step(storage, &mut left) {
                    continue;
                }
                let scan = self.scan.take().expect("a scan is under way");
                let pulls = read_pulls(storage, config, &scan);
                self.judge.decide(config, &scan, &pulls);
                continue;
            }
            if let Some(name) = self.queue.pop_front() {
                if config.retention_rules(&name).is_empty() {
                    continue;
                }
                self.judge.report.namespaces += 1;
                self.scan = Some(NamespaceScan::new(storage, name));
                continue;
            }
            if self.walk.is_done() {
                return Progress::Done;
            }
            let directories = left.min(16);
            left -= directories;
            match self.walk.step(directories) {
                Ok(found) => self.queue.extend(found),
                Err(error) => {
                    log::warn!(target: "angos::prune", "reading namespaces: {error}");
                    self.judge.report.errors += 1;
                }
            }
        }
        if self.scan.is_none() && self.queue.is_empty() && self.walk.is_done() {
            Progress::Done
        } else {
            Progress::Working
        }
    }
}

/// One read per manifest of the namespace (none when pulls are not recorded).
fn read_pulls(storage: &Storage, config: &Config, scan: &NamespaceScan) -> HashMap<Digest, u64> {
    let mut pulls = HashMap::new();
    if !config.global.update_pull_time {
        return pulls;
    }
    let digests = scan
        .revisions
        .iter()
        .map(|revision| &revision.digest)
        .chain(scan.tags.iter().map(|(_, digest)| digest));
    for digest in digests {
        if !pulls.contains_key(digest) {
            pulls.insert(digest.clone(), storage.pulled_at(&scan.name, digest).unwrap_or(0));
        }
    }
    pulls
}

/// Retention's decisions on namespaces read whole, and the run's report:
/// the same for a walk of the filesystem (`Pruner`) and for the bucket's
/// runs (`maintenance::bucket`).
pub struct Judge {
    report_only: bool,
    now_secs: u64,
    pub report: PruneReport,
    prunings: Vec<Pruning>,
}

impl Judge {
    pub fn new(now_secs: u64, report_only: bool) -> Judge {
        Judge {
            report_only,
            now_secs,
            report: PruneReport::default(),
            prunings: Vec::new(),
        }
    }

    pub fn is_report_only(&self) -> bool {
        self.report_only
    }

    /// Removals decided since the last call (none in a report-only run).
    pub fn take_prunings(&mut self) -> Vec<Pruning> {
        std::mem::take(&mut self.prunings)
    }

    /// Decides `scan`'s namespace under `config`'s rules, `pulls` giving
    /// each manifest's last pull (absent: never).
    pub fn decide(&mut self, config: &Config, scan: &NamespaceScan, pulls: &HashMap<Digest, u64>) {
        self.report.errors += scan.errors;
        self.report.tags += scan.tags.len() as u64;
        self.report.manifests += scan.revisions.len() as u64;
        if scan.keep_all {
            return;
        }
        let rules = config.retention_rules(&scan.name);
        let present: HashSet<&Digest> = scan.revisions.iter().map(|revision| &revision.digest).collect();
        let mut protected: HashSet<&Digest> = HashSet::new();
        for children in scan.children.values() {
            protected.extend(children.iter());
        }
        for (subject, referrers) in &scan.referrers {
            if present.contains(subject) {
                protected.insert(subject);
                protected.extend(referrers.iter());
            }
        }
        let pulled_at = |digest: &Digest| pulls.get(digest).copied().unwrap_or(0);
        // Ranks among the namespace's tags: by push, newest first; by pull,
        // most recent first (never pulled: unranked).
        let mut by_push: Vec<(u64, &str)> = scan
            .tags
            .iter()
            .map(|(tag, _)| (tag.modified_secs, tag.tag.as_str()))
            .collect();
        by_push.sort_by(|a, b| b.cmp(a));
        let pushed_rank: HashMap<&str, usize> = by_push
            .iter()
            .enumerate()
            .map(|(rank, (_, tag))| (*tag, rank + 1))
            .collect();
        let mut by_pull: Vec<(u64, &str)> = scan
            .tags
            .iter()
            .map(|(tag, digest)| (pulled_at(digest), tag.tag.as_str()))
            .filter(|(pulled, _)| *pulled > 0)
            .collect();
        by_pull.sort_by(|a, b| b.cmp(a));
        let pulled_rank: HashMap<&str, usize> = by_pull
            .iter()
            .enumerate()
            .map(|(rank, (_, tag))| (*tag, rank + 1))
            .collect();

        let mut tagged_after: HashSet<&Digest> = HashSet::new();
        let mut removed_tags: HashMap<&Digest, Vec<String>> = HashMap::new();
        for (tag, digest) in &scan.tags {
            if protected.contains(digest) {
                self.report.protected += 1;
                tagged_after.insert(digest);
                continue;
            }
            let image = Image {
                tag: Some(&tag.tag),
                pushed_at: tag.modified_secs as i64,
                last_pulled_at: pulled_at(digest) as i64,
                pushed_rank: pushed_rank.get(tag.tag.as_str()).copied(),
                pulled_rank: pulled_rank.get(tag.tag.as_str()).copied(),
            };
            if self.kept(&rules, &image, &scan.name) {
                tagged_after.insert(digest);
                continue;
            }
            self.report.tags_removed += 1;
            removed_tags.entry(digest).or_default().push(tag.tag.clone());
            self.decided(Pruning {
                namespace: scan.name.clone(),
                removal: Removal::Tag {
                    tag: tag.tag.clone(),
                    digest: digest.clone(),
                },
                epoch: scan.epoch,
            });
        }
        for revision in &scan.revisions {
            let digest = &revision.digest;
            if tagged_after.contains(digest) {
                continue;
            }
            if protected.contains(digest) {
                self.report.protected += 1;
                continue;
            }
            let image = Image {
                tag: None,
                pushed_at: revision.modified_secs as i64,
                last_pulled_at: pulled_at(digest) as i64,
                pushed_rank: None,
                pulled_rank: None,
            };
            if self.kept(&rules, &image, &scan.name) {
                continue;
            }
            self.report.manifests_removed += 1;
            self.decided(Pruning {
                namespace: scan.name.clone(),
                removal: Removal::Manifest {
                    digest: digest.clone(),
                    parents: Vec::new(),
                    former_tags: removed_tags.remove(digest).unwrap_or_default(),
                },
                epoch: scan.epoch,
            });
        }
    }

    /// Whether any rule keeps `image`; a rule that fails keeps it.
    fn kept(&mut self, rules: &crate::config::RetentionRules<'_>, image: &Image, namespace: &str) -> bool {
        for rule in rules.iter() {
            match rule.keeps(image, self.now_secs as i64) {
                Ok(true) => return true,
                Ok(false) => {}
                Err(error) => {
                    log::warn!(
                        target: "angos::prune",
                        "{namespace}: rule {:?} failed on {}: {error}; kept",
                        rule.source(),
                        image.tag.unwrap_or("an untagged manifest")
                    );
                    self.report.rule_errors += 1;
                    return true;
                }
            }
        }
        false
    }

    fn decided(&mut self, pruning: Pruning) {
        let line = pruning.describe();
        log::info!(
            target: "angos::prune",
            "{} {line}",
            if self.report_only { "would remove" } else { "removing" }
        );
        if self.report.listed.len() < LISTED_MAX {
            self.report.listed.push(line);
        }
        if !self.report_only {
            self.prunings.push(pruning);
        }
    }
}

/// Refuses a run whose rules read pull times that are not recorded
/// (upstream's `angos prune` does the same).
pub fn check_pull_times(config: &Config) -> Result<(), String> {
    if config.global.update_pull_time {
        return Ok(());
    }
    let reads_pulls = config
        .global
        .retention_rules
        .iter()
        .chain(
            config
                .repositories
                .values()
                .flat_map(|repository| &repository.retention_rules),
        )
        .find(|rule| rule.uses_pull_time());
    match reads_pulls {
        Some(rule) => Err(format!(
            "retention rule {:?} reads pull times, which are recorded only with [global] update_pull_time = true",
            rule.source()
        )),
        None => Ok(()),
    }
}
