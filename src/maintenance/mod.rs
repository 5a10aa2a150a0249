//! Keeping the store sound and within bounds while it serves: online
//! garbage collection (`collector`) and the scrub (`scrub`). `Maintenance`
//! decides when each runs (schedule, after deletions, on demand), hands it
//! its slice of each loop turn, and keeps the reports for the admin API and
//! the metrics. What must leave the loop comes out as data (`Work`):
//! removals webhooks must hear of, which the reactor submits through the
//! notifier, and files to check, which the file thread hashes.

pub mod bucket;
pub mod collector;
pub mod offline;
pub mod prune;
mod scan;
pub mod scrub;

use std::collections::VecDeque;

use serde_json::{Value, json};

use crate::config::Config;
use crate::event_webhook::event::{Actor, EventKind};
use crate::event_webhook::notifier::Submission;
use crate::http::Response;
use crate::metrics::{FamilyId, Metrics};
use crate::registry::{Commit, EventDraft, Registry, Removal};
use collector::{Collector, Deletion, Progress, Report};
use prune::{PruneReport, Pruner, Pruning};
use scrub::{ScrubReport, Scrubber, Verification, VerifyJob};

/// What a turn's maintenance hands the reactor.
#[derive(Debug, Default)]
pub struct Work {
    /// Unreachable manifests to remove through the notifier.
    pub deletions: Vec<Deletion>,
    /// Files for the file thread to check against their digests.
    pub checks: Vec<VerifyJob>,
    /// Tags and manifests retention removes, through the notifier.
    pub prunings: Vec<Pruning>,
}

/// A finished retention run.
#[derive(Debug, Clone)]
pub struct PruneRun {
    pub trigger: Trigger,
    pub report_only: bool,
    pub started_unix_secs: u64,
    pub duration_ms: u64,
    pub report: PruneReport,
    /// Removals made, and refused (a webhook said no, or the namespace
    /// changed meanwhile).
    pub removed: u64,
    pub refused: u64,
}

struct ActivePrune {
    pruner: Pruner,
    trigger: Trigger,
    started_ms: u64,
    started_unix_secs: u64,
}

/// A finished scrub.
#[derive(Debug, Clone)]
pub struct ScrubRun {
    pub trigger: Trigger,
    pub started_unix_secs: u64,
    pub duration_ms: u64,
    pub report: ScrubReport,
}

struct ActiveScrub {
    scrubber: Scrubber,
    trigger: Trigger,
    started_ms: u64,
    started_unix_secs: u64,
}

/// File-system operations a collection may run per loop turn: well under a
/// millisecond of work (`GET /v2/` p50 0.7 ms, p99 1.0 ms while 100,000
/// small blobs go, `cargo bench --bench gc`), so a request waits no longer
/// behind it than behind another client's transfer (issue 13's budget).
pub const GC_OPERATIONS_PER_TURN: usize = 96;

/// Why a collection started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Schedule,
    Deletions,
    Demand,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Deletions => "deletions",
            Trigger::Demand => "demand",
        }
    }
}

/// A finished collection, as the admin API and the log tell it.
#[derive(Debug, Clone)]
pub struct Run {
    pub trigger: Trigger,
    /// Counted what it would remove, removed nothing.
    pub report_only: bool,
    pub started_unix_secs: u64,
    pub duration_ms: u64,
    pub report: Report,
    /// Unreachable manifests removed, and those whose removal was refused
    /// (a webhook said no, or the namespace changed meanwhile).
    pub manifests_removed: u64,
    pub manifests_kept: u64,
}

struct Active {
    collector: Collector,
    trigger: Trigger,
    started_ms: u64,
    started_unix_secs: u64,
}

struct Families {
    runs: FamilyId,
    duration: FamilyId,
    removed_objects: FamilyId,
    removed_bytes: FamilyId,
    scrub_runs: FamilyId,
    scrub_bytes: FamilyId,
    scrub_corrupt: FamilyId,
}

pub struct Maintenance {
    active: Option<Active>,
    /// A collection asked for, and whether it only reports.
    requested: Option<(Trigger, bool)>,
    grace_secs: u64,
    interval_ms: u64,
    /// When the next scheduled collection is due (`None`: no schedule).
    next_scheduled_ms: Option<u64>,
    deletes_threshold: u64,
    deletes_since: u64,
    last: Option<Run>,
    /// Removals handed out and not answered yet, and their tallies for the
    /// run in progress (or the last one, when answers come after its end).
    removals_pending: u64,
    removals_done: u64,
    removals_refused: u64,
    scrub: Option<ActiveScrub>,
    scrub_requested: Option<Trigger>,
    scrub_interval_ms: u64,
    next_scrub_ms: Option<u64>,
    pub scrub_bytes_per_sec: u64,
    last_scrub: Option<ScrubRun>,
    prune: Option<ActivePrune>,
    prune_requested: Option<(Trigger, bool)>,
    prune_interval_ms: u64,
    next_prune_ms: Option<u64>,
    prune_pending: u64,
    /// Why retention may not run under the current configuration.
    prune_refusal: Option<String>,
    prune_removed: u64,
    prune_refused: u64,
    last_prune: Option<PruneRun>,
    families: Families,
    /// On a bucket: its garbage collections and retention runs.
    bucket: BucketJobs,
}

/// Maintenance on the bucket (`bucket.rs`): the job running, the request
/// number of its current run, whether that run was woken, this replica's
/// name on the lease, and how the last job ended.
#[derive(Default)]
struct BucketJobs {
    /// Removals decided and not handed out yet: on a bucket a removal that
    /// depends on earlier ones (a manifest on its tags', a child on its
    /// index's) waits for their answers, since each runs as a request of its
    /// own and would otherwise see them not yet made.
    held_deletions: VecDeque<Deletion>,
    held_prunings: VecDeque<Pruning>,
    on: bool,
    job: Option<bucket::BucketJob>,
    run: u64,
    woken: bool,
    me: String,
    last: Option<Value>,
}

impl BucketJobs {
    fn runs(&self, kind: bucket::Kind) -> bool {
        self.job.as_ref().is_some_and(|job| job.kind == kind)
    }
}

/// The request number space of the bucket's collections (`Registry::enter`).
pub const BUCKET_COLLECTION_SLOT: usize = usize::MAX - 2;

impl Maintenance {
    pub fn new(config: &Config, metrics: &mut Metrics, now_ms: u64) -> Maintenance {
        let families = Families {
            runs: metrics.counter(
                "gc_runs_total",
                "Garbage collections finished, by what started them.",
                &["trigger"],
            ),
            duration: metrics.gauge(
                "gc_last_duration_seconds",
                "How long the last collection ran.",
                &[],
            ),
            removed_objects: metrics.counter(
                "gc_removed_objects_total",
                "Objects garbage collection removed: blob links, content files, unreachable manifests.",
                &["kind"],
            ),
            removed_bytes: metrics.counter(
                "gc_removed_bytes_total",
                "Content bytes garbage collection freed.",
                &[],
            ),
            scrub_runs: metrics.counter(
                "scrub_runs_total",
                "Scrubs finished, by what started them.",
                &["trigger"],
            ),
            scrub_bytes: metrics.counter(
                "scrub_verified_bytes_total",
                "Bytes of stored content checked against their digests.",
                &[],
            ),
            scrub_corrupt: metrics.counter(
                "scrub_quarantined_total",
                "Stored files whose bytes did not match their digest, moved to _quarantine.",
                &[],
            ),
        };
        let mut maintenance = Maintenance {
            active: None,
            requested: None,
            grace_secs: 0,
            interval_ms: 0,
            next_scheduled_ms: None,
            deletes_threshold: 0,
            deletes_since: 0,
            last: None,
            removals_pending: 0,
            removals_done: 0,
            removals_refused: 0,
            scrub: None,
            scrub_requested: None,
            scrub_interval_ms: 0,
            next_scrub_ms: None,
            scrub_bytes_per_sec: 0,
            last_scrub: None,
            prune: None,
            prune_requested: None,
            prune_interval_ms: 0,
            next_prune_ms: None,
            prune_pending: 0,
            prune_refusal: None,
            prune_removed: 0,
            prune_refused: 0,
            last_prune: None,
            bucket: BucketJobs::default(),
            families,
        };
        maintenance.reconfigure(config, now_ms);
        maintenance
    }

    /// Takes new settings; a changed interval counts from now.
    pub fn reconfigure(&mut self, config: &Config, now_ms: u64) {
        let global = &config.global;
        self.prune_refusal = prune::check_pull_times(config).err();
        let interval_ms = global.gc_interval_secs.saturating_mul(1000);
        if interval_ms != self.interval_ms || self.next_scheduled_ms.is_none() {
            self.next_scheduled_ms = (interval_ms > 0).then(|| now_ms.saturating_add(interval_ms));
        }
        self.interval_ms = interval_ms;
        let scrub_interval_ms = global.scrub_interval_secs.saturating_mul(1000);
        if scrub_interval_ms != self.scrub_interval_ms || self.next_scrub_ms.is_none() {
            self.next_scrub_ms = (scrub_interval_ms > 0).then(|| now_ms.saturating_add(scrub_interval_ms));
        }
        self.scrub_interval_ms = scrub_interval_ms;
        let prune_interval_ms = global.prune_interval_secs.saturating_mul(1000);
        if prune_interval_ms != self.prune_interval_ms || self.next_prune_ms.is_none() {
            self.next_prune_ms = (prune_interval_ms > 0).then(|| now_ms.saturating_add(prune_interval_ms));
        }
        self.prune_interval_ms = prune_interval_ms;
        self.scrub_bytes_per_sec = global.scrub_bytes_per_sec;
        self.grace_secs = global.gc_grace_secs;
        self.deletes_threshold = global.gc_after_deletes;
    }

    /// Asks for a collection (`report_only`: one that removes nothing);
    /// `false` when one is running already.
    pub fn request(&mut self, trigger: Trigger, report_only: bool) -> bool {
        if self.active.is_some() || self.bucket.runs(bucket::Kind::Collect) {
            return false;
        }
        self.requested.get_or_insert((trigger, report_only));
        true
    }

    /// A client deleted something: maybe time to collect.
    pub fn note_deletion(&mut self) {
        self.deletes_since += 1;
        if self.deletes_threshold > 0 && self.deletes_since >= self.deletes_threshold && self.active.is_none()
        {
            self.requested.get_or_insert((Trigger::Deletions, false));
        }
    }

    /// Asks for a scrub; `false` when one is running already.
    pub fn request_scrub(&mut self, trigger: Trigger) -> bool {
        if self.scrub.is_some() {
            return false;
        }
        self.scrub_requested.get_or_insert(trigger);
        true
    }

    /// Whether a slice should run this turn (the loop must not sleep). A
    /// scrub waiting on the file thread needs none: its verdicts wake the loop.
    pub fn has_work(&self) -> bool {
        if self.bucket.on {
            // A job waiting on the bucket is woken by its answers.
            return self.bucket.woken
                || (self.bucket.job.is_none()
                    && (self.requested.is_some() || self.prune_requested.is_some()));
        }
        self.active.is_some()
            || self.requested.is_some()
            || self.scrub_requested.is_some()
            || self.prune.is_some()
            || self.prune_requested.is_some()
            || self
                .scrub
                .as_ref()
                .is_some_and(|active| active.scrubber.wants_turn())
    }

    /// When a scheduled collection or scrub is due.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        [self.next_scheduled_ms, self.next_scrub_ms]
            .into_iter()
            .flatten()
            .min()
    }

    /// This turn's scrub slice: starts a due scrub, walks on, and gives the
    /// files to check.
    fn run_scrub(
        &mut self,
        registry: &Registry,
        metrics: &mut Metrics,
        now_ms: u64,
        unix_secs: u64,
    ) -> Vec<VerifyJob> {
        if self.scrub.is_none() {
            if self.next_scrub_ms.is_some_and(|due| now_ms >= due) {
                self.scrub_requested.get_or_insert(Trigger::Schedule);
            }
            let Some(trigger) = self.scrub_requested.take() else {
                return Vec::new();
            };
            log::info!(
                target: "angos::scrub",
                "scrub started ({}; {} bytes/s)",
                trigger.as_str(),
                self.scrub_bytes_per_sec
            );
            self.scrub = Some(ActiveScrub {
                scrubber: Scrubber::new(registry.storage()),
                trigger,
                started_ms: now_ms,
                started_unix_secs: unix_secs,
            });
            if self.scrub_interval_ms > 0 {
                self.next_scrub_ms = Some(now_ms.saturating_add(self.scrub_interval_ms));
            }
        }
        let Some(active) = &mut self.scrub else {
            return Vec::new();
        };
        let checks = active.scrubber.step(registry.storage(), 64);
        if active.scrubber.is_done() {
            self.finish_scrub(metrics, now_ms);
        }
        checks
    }

    /// A verdict of the file thread.
    pub fn verified(
        &mut self,
        registry: &mut Registry,
        verification: Verification,
        metrics: &mut Metrics,
        now_ms: u64,
    ) {
        let Some(active) = &mut self.scrub else {
            return;
        };
        let before = active.scrubber.report().bytes;
        let quarantined = active.scrubber.verified(registry.storage_mut(), verification);
        let checked = active.scrubber.report().bytes - before;
        let series = metrics.series(self.families.scrub_bytes, &[]);
        metrics.add(series, checked);
        if quarantined.is_some() {
            let series = metrics.series(self.families.scrub_corrupt, &[]);
            metrics.inc(series);
        }
        if active.scrubber.is_done() {
            self.finish_scrub(metrics, now_ms);
        }
    }

    /// The file thread is gone: a scrub cannot go on.
    pub fn abandon_scrub(&mut self) {
        if self.scrub.take().is_some() {
            log::warn!(target: "angos::scrub", "scrub abandoned: the file thread is not running");
        }
    }

    fn finish_scrub(&mut self, metrics: &mut Metrics, now_ms: u64) {
        let Some(active) = self.scrub.take() else {
            return;
        };
        let run = ScrubRun {
            trigger: active.trigger,
            started_unix_secs: active.started_unix_secs,
            duration_ms: now_ms.saturating_sub(active.started_ms),
            report: active.scrubber.report().clone(),
        };
        let report = &run.report;
        log::info!(
            target: "angos::scrub",
            "scrub finished in {} ms ({}): {} files, {} bytes checked, {} corrupt (quarantined), {} unreadable",
            run.duration_ms,
            run.trigger.as_str(),
            report.objects,
            report.bytes,
            report.corrupt,
            report.unreadable
        );
        let series = metrics.series(self.families.scrub_runs, &[run.trigger.as_str()]);
        metrics.inc(series);
        self.last_scrub = Some(run);
    }

    /// The admin API's view of the scrub.
    pub fn scrub_status(&self) -> Value {
        let report = |report: &ScrubReport| {
            json!({
                "files": report.objects,
                "bytes": report.bytes,
                "corrupt": report.corrupt,
                "unreadable": report.unreadable,
                "quarantined": report.quarantined.iter().map(|(digest, path)| json!({
                    "digest": digest,
                    "moved_to": path,
                })).collect::<Vec<_>>(),
            })
        };
        json!({
            "running": self.scrub.is_some() || self.scrub_requested.is_some(),
            "progress": self.scrub.as_ref().map(|active| report(active.scrubber.report())),
            "bytes_per_sec": self.scrub_bytes_per_sec,
            "interval_secs": self.scrub_interval_ms / 1000,
            "last": self.last_scrub.as_ref().map(|run| json!({
                "trigger": run.trigger.as_str(),
                "started": crate::clock::rfc3339_utc(run.started_unix_secs * 1_000_000),
                "duration_ms": run.duration_ms,
                "report": report(&run.report),
            })),
        })
    }

    pub fn is_running(&self) -> bool {
        self.active.is_some()
    }

    /// Runs this turn's slices: garbage collection, scrub and retention
    /// (under `config`'s rules).
    pub fn run(
        &mut self,
        registry: &mut Registry,
        config: &Config,
        metrics: &mut Metrics,
        now_ms: u64,
        unix_secs: u64,
    ) -> Work {
        if registry.storage().bucket().is_some() {
            return self.run_on_bucket(registry, config, metrics, now_ms, unix_secs);
        }
        Work {
            checks: self.run_scrub(registry, metrics, now_ms, unix_secs),
            deletions: self.run_collection(registry, metrics, now_ms, unix_secs),
            prunings: self.run_prune(registry, config, now_ms, unix_secs),
        }
    }

    /// The registry woke the request of a bucket job's run.
    pub fn bucket_woken(&mut self, run: u64) {
        if self.bucket.job.is_some() && self.bucket.run == run {
            self.bucket.woken = true;
        }
    }

    /// This turn's maintenance on a bucket: starts a requested or due job
    /// (a collection first), and runs the running one on when woken.
    fn run_on_bucket(
        &mut self,
        registry: &mut Registry,
        config: &Config,
        metrics: &mut Metrics,
        now_ms: u64,
        unix_secs: u64,
    ) -> Work {
        if !self.bucket.on {
            self.bucket.on = true;
            self.bucket.me = crate::entropy::uuid_v4(&mut crate::entropy::OsEntropy);
        }
        if self.scrub_requested.take().is_some() || self.next_scrub_ms.take().is_some() {
            // A scrub reads local files back; the object store keeps its
            // own objects sound (and Content-MD5/SHA-256 checked each write).
            log::warn!(
                target: "angos::scrub",
                "scrubs check files on a local disk; on object storage the store checks its own objects, so no scrub runs"
            );
        }
        if self.bucket.job.is_none() {
            self.start_on_bucket(config, now_ms, unix_secs);
        }
        if let Some(job) = &mut self.bucket.job
            && std::mem::take(&mut self.bucket.woken)
        {
            let turn = bucket::Turn {
                me: &self.bucket.me,
                now_ms,
                unix_secs,
            };
            let stepped = job.step(registry, config, &turn, &mut self.bucket.run);
            self.bucket.held_deletions.extend(job.take_deletions());
            self.bucket.held_prunings.extend(job.take_prunings());
            match stepped {
                Ok(more) => self.bucket.woken = more,
                Err(ended) => self.end_on_bucket(ended, registry.storage(), metrics, now_ms, unix_secs),
            }
        }
        self.release_held()
    }

    /// Hands out the held removals that depend on nothing unanswered.
    fn release_held(&mut self) -> Work {
        let mut work = Work::default();
        while let Some(next) = self.bucket.held_deletions.front() {
            // A child goes only once its indexes' removals were answered.
            if !next.parents.is_empty() && (self.removals_pending > 0 || !work.deletions.is_empty()) {
                break;
            }
            self.removals_pending += 1;
            work.deletions.extend(self.bucket.held_deletions.pop_front());
        }
        let mut after_tags = false;
        while let Some(next) = self.bucket.held_prunings.front() {
            // A manifest goes once the tag removals before it were answered.
            let manifest = matches!(next.removal, Removal::Manifest { .. });
            if manifest && (after_tags || (self.prune_pending > 0 && work.prunings.is_empty())) {
                break;
            }
            after_tags = !manifest;
            self.prune_pending += 1;
            work.prunings.extend(self.bucket.held_prunings.pop_front());
        }
        work
    }

    fn start_on_bucket(&mut self, config: &Config, now_ms: u64, unix_secs: u64) {
        if self.next_scheduled_ms.is_some_and(|due| now_ms >= due) {
            self.requested.get_or_insert((Trigger::Schedule, false));
        }
        self.schedule_prune(config, now_ms);
        let job = if let Some((trigger, report_only)) = self.requested.take() {
            self.collection_starting(trigger, report_only, " on the bucket");
            if self.interval_ms > 0 {
                self.next_scheduled_ms = Some(now_ms.saturating_add(self.interval_ms));
            }
            bucket::BucketJob::new(
                bucket::Kind::Collect,
                trigger,
                report_only,
                self.grace_secs,
                now_ms,
                unix_secs,
            )
        } else if let Some((trigger, report_only)) = self.prune_requested.take() {
            self.prune_starting(trigger, report_only, " on the bucket");
            bucket::BucketJob::new(
                bucket::Kind::Prune,
                trigger,
                report_only,
                self.grace_secs,
                now_ms,
                unix_secs,
            )
        } else {
            return;
        };
        self.bucket.job = Some(job);
        self.bucket.woken = true;
    }

    fn end_on_bucket(
        &mut self,
        ended: bucket::Ended,
        storage: &crate::storage::Storage,
        metrics: &mut Metrics,
        now_ms: u64,
        unix_secs: u64,
    ) {
        let Some(job) = self.bucket.job.take() else {
            return;
        };
        let what = match job.kind {
            bucket::Kind::Collect => "garbage collection",
            bucket::Kind::Prune => "retention run",
        };
        let outcome = match ended {
            bucket::Ended::Done => json!({ "outcome": "done" }),
            bucket::Ended::Elsewhere { owner, expires } => {
                log::info!(
                    target: "angos::maintenance",
                    "{what} on the bucket: replica {owner} holds the lease until {expires}; this one waits for its next turn"
                );
                json!({ "outcome": "waiting", "lease_owner": owner, "lease_expires_unix_secs": expires })
            }
            bucket::Ended::Failed(error) => {
                log::warn!(target: "angos::maintenance", "{what} on the bucket failed: {error}");
                json!({ "outcome": "failed", "error": error })
            }
        };
        let done = outcome["outcome"] == "done";
        let mut last = json!({
            "job": job.kind.as_str(),
            "trigger": job.trigger.as_str(),
            "finished_unix_secs": unix_secs,
        });
        last.as_object_mut()
            .expect("an object")
            .extend(outcome.as_object().cloned().unwrap_or_default());
        if let Some(collected) = &job.collected {
            last["sessions_removed"] = json!(collected.sessions_removed);
            last["more"] = json!(collected.more);
        }
        self.bucket.last = Some(last);
        if !done {
            return;
        }
        let duration_ms = now_ms.saturating_sub(job.started_ms);
        match job.kind {
            bucket::Kind::Collect => {
                let run = Run {
                    trigger: job.trigger,
                    report_only: job.report_only,
                    started_unix_secs: job.started_unix_secs,
                    duration_ms,
                    report: job.report.clone(),
                    manifests_removed: self.removals_done,
                    manifests_kept: self.removals_refused,
                };
                self.record_run(run, storage, metrics);
            }
            bucket::Kind::Prune => {
                let run = PruneRun {
                    trigger: job.trigger,
                    report_only: job.report_only,
                    started_unix_secs: job.started_unix_secs,
                    duration_ms,
                    report: job.judge.report.clone(),
                    removed: self.prune_removed,
                    refused: self.prune_refused,
                };
                log_prune_run(&run);
                self.last_prune = Some(run);
            }
        }
    }

    /// Asks for a retention run (`report_only`: one that lists what would go
    /// and removes nothing); an error when one runs, or when its rules read
    /// pull times that are not recorded.
    pub fn request_prune(&mut self, trigger: Trigger, report_only: bool) -> Result<(), String> {
        if self.prune.is_some() || self.prune_requested.is_some() || self.bucket.runs(bucket::Kind::Prune) {
            return Err("a retention run is already under way".into());
        }
        if let Some(why) = &self.prune_refusal {
            return Err(why.clone());
        }
        self.prune_requested = Some((trigger, report_only));
        Ok(())
    }

    /// A collection starts (`place`: where, for the log): its counters reset.
    fn collection_starting(&mut self, trigger: Trigger, report_only: bool, place: &str) {
        log::info!(
            target: "angos::gc",
            "garbage collection{place} started ({}{}; grace {} s)",
            trigger.as_str(),
            if report_only { ", report only" } else { "" },
            self.grace_secs
        );
        self.deletes_since = 0;
        self.removals_done = 0;
        self.removals_refused = 0;
    }

    /// A retention run starts (`place`: where, for the log): its counters reset.
    fn prune_starting(&mut self, trigger: Trigger, report_only: bool, place: &str) {
        log::info!(
            target: "angos::prune",
            "retention run{place} started ({}{})",
            trigger.as_str(),
            if report_only { ", dry run" } else { "" }
        );
        self.prune_removed = 0;
        self.prune_refused = 0;
    }

    /// Asks for the scheduled retention run when it is due.
    fn schedule_prune(&mut self, config: &Config, now_ms: u64) {
        if self.next_prune_ms.is_none_or(|due| now_ms < due) {
            return;
        }
        self.next_prune_ms = Some(now_ms.saturating_add(self.prune_interval_ms));
        if has_retention_rules(config) {
            match prune::check_pull_times(config) {
                Ok(()) => {
                    self.prune_requested.get_or_insert((Trigger::Schedule, false));
                }
                Err(why) => {
                    log::error!(target: "angos::prune", "scheduled retention run refused: {why}")
                }
            }
        }
    }

    fn run_prune(
        &mut self,
        registry: &Registry,
        config: &Config,
        now_ms: u64,
        unix_secs: u64,
    ) -> Vec<Pruning> {
        if self.prune.is_none() {
            self.schedule_prune(config, now_ms);
            let Some((trigger, report_only)) = self.prune_requested.take() else {
                return Vec::new();
            };
            self.prune_starting(trigger, report_only, "");
            self.prune = Some(ActivePrune {
                pruner: Pruner::new(registry.storage(), unix_secs, report_only),
                trigger,
                started_ms: now_ms,
                started_unix_secs: unix_secs,
            });
        }
        let Some(active) = &mut self.prune else {
            return Vec::new();
        };
        let progress = active
            .pruner
            .step(registry.storage(), config, GC_OPERATIONS_PER_TURN);
        let prunings = active.pruner.take_prunings();
        self.prune_pending += prunings.len() as u64;
        if progress == Progress::Done {
            let active = self.prune.take().expect("a retention run is under way");
            let run = PruneRun {
                trigger: active.trigger,
                report_only: active.pruner.is_report_only(),
                started_unix_secs: active.started_unix_secs,
                duration_ms: now_ms.saturating_sub(active.started_ms),
                report: active.pruner.report().clone(),
                removed: self.prune_removed,
                refused: self.prune_refused,
            };
            log_prune_run(&run);
            self.last_prune = Some(run);
        }
        prunings
    }

    /// The admin API's view of retention.
    pub fn prune_status(&self) -> Value {
        json!({
            "running": self.prune.is_some() || self.prune_requested.is_some() || self.bucket.runs(bucket::Kind::Prune),
            "removals_pending": self.prune_pending + self.bucket.held_prunings.len() as u64,
            "interval_secs": self.prune_interval_ms / 1000,
            "last": self.last_prune.as_ref().map(|run| json!({
                "trigger": run.trigger.as_str(),
                "mode": if run.report_only { "dry-run" } else { "commit" },
                "started": crate::clock::rfc3339_utc(run.started_unix_secs * 1_000_000),
                "duration_ms": run.duration_ms,
                "namespaces": run.report.namespaces,
                "tags": run.report.tags,
                "manifests": run.report.manifests,
                "tags_removed": run.report.tags_removed,
                "manifests_removed": run.report.manifests_removed,
                "protected": run.report.protected,
                "rule_errors": run.report.rule_errors,
                "removals_made": run.removed,
                "removals_refused": run.refused,
                "listed": run.report.listed,
            })),
        })
    }

    /// Starts a due collection, steps the running one. Returns the
    /// unreachable manifests it found, for the notifier.
    fn run_collection(
        &mut self,
        registry: &mut Registry,
        metrics: &mut Metrics,
        now_ms: u64,
        unix_secs: u64,
    ) -> Vec<Deletion> {
        if self.active.is_none() {
            if self.next_scheduled_ms.is_some_and(|due| now_ms >= due) {
                self.requested.get_or_insert((Trigger::Schedule, false));
            }
            let Some((trigger, report_only)) = self.requested.take() else {
                return Vec::new();
            };
            self.start(registry, trigger, report_only, now_ms, unix_secs);
        }
        let Some(active) = &mut self.active else {
            return Vec::new();
        };
        let progress = active
            .collector
            .step(registry.storage_mut(), GC_OPERATIONS_PER_TURN);
        let deletions = active.collector.take_deletions();
        self.removals_pending += deletions.len() as u64;
        if progress == Progress::Done {
            self.finish(registry.storage(), metrics, now_ms);
        }
        deletions
    }

    fn start(
        &mut self,
        registry: &mut Registry,
        trigger: Trigger,
        report_only: bool,
        now_ms: u64,
        unix_secs: u64,
    ) {
        self.collection_starting(trigger, report_only, "");
        let mut collector = Collector::new(registry.storage_mut(), unix_secs, self.grace_secs);
        if report_only {
            collector = collector.report_only();
        }
        self.active = Some(Active {
            collector,
            trigger,
            started_ms: now_ms,
            started_unix_secs: unix_secs,
        });
        if self.interval_ms > 0 {
            self.next_scheduled_ms = Some(now_ms.saturating_add(self.interval_ms));
        }
    }

    fn finish(&mut self, storage: &crate::storage::Storage, metrics: &mut Metrics, now_ms: u64) {
        let Some(active) = self.active.take() else {
            return;
        };
        let report = active.collector.report().clone();
        let run = Run {
            trigger: active.trigger,
            report_only: active.collector.is_report_only(),
            started_unix_secs: active.started_unix_secs,
            duration_ms: now_ms.saturating_sub(active.started_ms),
            report,
            manifests_removed: self.removals_done,
            manifests_kept: self.removals_refused,
        };
        self.record_run(run, storage, metrics);
    }

    /// Logs a finished collection, counts it, and keeps it as the last.
    fn record_run(&mut self, run: Run, storage: &crate::storage::Storage, metrics: &mut Metrics) {
        let report = &run.report;
        log::info!(
            target: "angos::gc",
            "garbage collection finished in {} ms ({}{}): {} namespaces, {} manifests ({} unreachable), \
             {} links ({} removed), {} content files ({} removed, {} bytes freed), {} bytes kept, \
             {} bytes reclaimable later, {} namespaces skipped, {} errors{}",
            run.duration_ms,
            run.trigger.as_str(),
            if run.report_only { ", report only: counts are what it would remove" } else { "" },
            report.namespaces,
            report.manifests,
            report.manifests_unreachable,
            report.links,
            report.links_removed,
            report.contents,
            report.contents_removed,
            report.bytes_removed,
            report.bytes_kept,
            report.bytes_reclaimable,
            report.namespaces_skipped,
            report.errors,
            if report.content_sweep_skipped { "; content not swept (a namespace could not be read)" } else { "" },
        );
        if run.report_only {
            self.last = Some(run);
            return;
        }
        let families = &self.families;
        let series = metrics.series(families.runs, &[run.trigger.as_str()]);
        metrics.inc(series);
        let series = metrics.series(families.duration, &[]);
        metrics.set(series, run.duration_ms as f64 / 1000.0);
        for (kind, count) in [
            ("link", report.links_removed),
            ("content", report.contents_removed),
        ] {
            let series = metrics.series(families.removed_objects, &[kind]);
            metrics.add(series, count);
        }
        let series = metrics.series(families.removed_bytes, &[]);
        metrics.add(series, report.bytes_removed);
        if !report.content_sweep_skipped {
            // The storage_content_bytes and storage_reclaimable_bytes gauges
            // read these at each scrape (app/telemetry.rs); commits add to the
            // content total until the next collection measures it again.
            storage.set_content_bytes(report.bytes_kept);
            storage.set_reclaimable_bytes(report.bytes_reclaimable);
        }
        self.last = Some(run);
    }

    /// How a removal of `job` handed out by `run` went (`removed`: it was made).
    pub fn answered(&mut self, job: Job, removed: bool, metrics: &mut Metrics) {
        match job {
            Job::Gc => self.removal_answered(removed, metrics),
            Job::Prune => {
                self.prune_pending = self.prune_pending.saturating_sub(1);
                if removed {
                    self.prune_removed += 1;
                } else {
                    self.prune_refused += 1;
                }
                if self.prune.is_none()
                    && let Some(last) = &mut self.last_prune
                {
                    last.removed = self.prune_removed;
                    last.refused = self.prune_refused;
                }
            }
        }
    }

    /// How a collection's removal went (`removed`: it was made).
    fn removal_answered(&mut self, removed: bool, metrics: &mut Metrics) {
        self.removals_pending = self.removals_pending.saturating_sub(1);
        if removed {
            self.removals_done += 1;
            let series = metrics.series(self.families.removed_objects, &["manifest"]);
            metrics.inc(series);
        } else {
            self.removals_refused += 1;
        }
        // Answers that come after the run ended still belong to it.
        if self.active.is_none()
            && let Some(last) = &mut self.last
        {
            last.manifests_removed = self.removals_done;
            last.manifests_kept = self.removals_refused;
        }
    }

    /// The admin API's view: whether a collection runs, and the last one.
    pub fn status(&self) -> Value {
        json!({
            // A requested run starts on the next turn; it counts as running
            // already, so a client polling after its POST waits for it.
            "running": self.active.is_some() || self.requested.is_some() || self.bucket.runs(bucket::Kind::Collect),
            "running_since": self.active.as_ref().map(|active| active.started_unix_secs),
            "progress": self.active.as_ref().map(|active| report_json(active.collector.report())),
            "removals_pending": self.removals_pending + self.bucket.held_deletions.len() as u64,
            "grace_secs": self.grace_secs,
            "interval_secs": self.interval_ms / 1000,
            "last": self.last.as_ref().map(run_json),
            "bucket": {
                "running": self.bucket.job.as_ref().map(bucket::BucketJob::progress),
                "replica": self.bucket.me,
                "last": self.bucket.last,
            },
        })
    }

    pub fn last_run(&self) -> Option<&Run> {
        self.last.as_ref()
    }
}

/// A removal as the notifier takes it: the event webhooks hear
/// (`manifest.delete`, by the registry itself: `actor.internal = job`), the
/// change, and the answer that tells the job how it went.
pub fn removal_submission(namespace: String, removal: Removal, epoch: u64, job: Job) -> Submission<Commit> {
    let draft = match &removal {
        Removal::Tag { tag, digest } => EventDraft::new(EventKind::TagDelete, &namespace)
            .digest(digest)
            .reference(tag.clone())
            .tag(tag.clone()),
        Removal::Manifest { digest, .. } => EventDraft::new(EventKind::ManifestDelete, &namespace)
            .digest(digest)
            .reference(digest.to_string()),
    };
    Submission {
        drafts: vec![draft],
        actor: Actor {
            internal: Some(job.as_str().to_owned()),
            ..Actor::default()
        },
        commit: Commit::Remove {
            name: namespace,
            target: removal,
            epoch,
        },
        response: Response::new(202),
    }
}

/// The jobs whose removals go through the notifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    Gc,
    Prune,
}

impl Job {
    /// `actor.internal` of their events (upstream says "prune" for retention).
    pub fn as_str(self) -> &'static str {
        match self {
            Job::Gc => "gc",
            Job::Prune => "prune",
        }
    }

    pub fn number(self) -> u64 {
        self as u64
    }

    pub fn from_number(number: u64) -> Option<Job> {
        [Job::Gc, Job::Prune]
            .into_iter()
            .find(|job| job.number() == number)
    }
}

fn log_prune_run(run: &PruneRun) {
    let report = &run.report;
    let verb = if run.report_only { "would go" } else { "removed" };
    log::info!(
        target: "angos::prune",
        "retention run finished ({}{}): {} namespaces with rules, {} tags ({} {verb}), \
         {} manifests ({} {verb}), {} protected, {} rule errors",
        run.trigger.as_str(),
        if run.report_only { ", dry run" } else { "" },
        report.namespaces,
        report.tags,
        report.tags_removed,
        report.manifests,
        report.manifests_removed,
        report.protected,
        report.rule_errors,
    );
}

fn has_retention_rules(config: &Config) -> bool {
    !config.global.retention_rules.is_empty()
        || config
            .repositories
            .values()
            .any(|repository| !repository.retention_rules.is_empty())
}

fn run_json(run: &Run) -> Value {
    json!({
        "trigger": run.trigger.as_str(),
        "mode": if run.report_only { "report-only" } else { "commit" },
        "started": crate::clock::rfc3339_utc(run.started_unix_secs * 1_000_000),
        "duration_ms": run.duration_ms,
        "report": report_json(&run.report),
        "manifests_removed": run.manifests_removed,
        "manifests_kept": run.manifests_kept,
    })
}

/// A collection's counts as JSON (admin API, `angos scrub`).
pub fn report_json(report: &Report) -> Value {
    json!({
        "namespaces": report.namespaces,
        "manifests": report.manifests,
        "manifests_unreachable": report.manifests_unreachable,
        "links": report.links,
        "links_removed": report.links_removed,
        "contents": report.contents,
        "contents_removed": report.contents_removed,
        "bytes_removed": report.bytes_removed,
        "bytes_kept": report.bytes_kept,
        "bytes_reclaimable": report.bytes_reclaimable,
        "namespaces_skipped": report.namespaces_skipped,
        "content_sweep_skipped": report.content_sweep_skipped,
        "errors": report.errors,
    })
}

#[cfg(test)]
mod simulation;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Limits;
    use crate::storage::Storage;
    use crate::test_support::TempDir;

    fn setup(config: &Config) -> (TempDir, Registry, Metrics, Maintenance) {
        let dir = TempDir::new("maintenance");
        let storage = Storage::open(dir.path(), false, 8).unwrap();
        let registry = Registry::new(storage, Limits::of(&config.global));
        let mut metrics = Metrics::new();
        let maintenance = Maintenance::new(config, &mut metrics, 0);
        (dir, registry, metrics, maintenance)
    }

    /// Runs turns at `now_ms` until nothing is left to do.
    fn settle(
        maintenance: &mut Maintenance,
        registry: &mut Registry,
        config: &Config,
        metrics: &mut Metrics,
        now_ms: u64,
    ) {
        for _ in 0..1000 {
            maintenance.run(registry, config, metrics, now_ms, 1_800_000_000);
            if !maintenance.has_work() {
                return;
            }
        }
        panic!("maintenance did not settle");
    }

    #[test]
    fn collections_run_on_their_schedule_on_demand_and_after_deletions() {
        let mut config = Config::default();
        config.global.gc_interval_secs = 10;
        config.global.gc_after_deletes = 3;
        config.global.scrub_interval_secs = 0;
        config.global.prune_interval_secs = 0;
        let (_dir, mut registry, mut metrics, mut maintenance) = setup(&config);
        assert_eq!(maintenance.next_deadline_ms(), Some(10_000));
        settle(&mut maintenance, &mut registry, &config, &mut metrics, 9_999);
        assert!(maintenance.last_run().is_none(), "not due yet");
        settle(&mut maintenance, &mut registry, &config, &mut metrics, 10_000);
        assert_eq!(
            maintenance.last_run().map(|run| run.trigger),
            Some(Trigger::Schedule)
        );
        assert_eq!(
            maintenance.next_deadline_ms(),
            Some(20_000),
            "the next one counts from this one"
        );

        for _ in 0..2 {
            maintenance.note_deletion();
        }
        assert!(!maintenance.has_work(), "two deletions are not enough");
        maintenance.note_deletion();
        assert!(maintenance.has_work());
        settle(&mut maintenance, &mut registry, &config, &mut metrics, 11_000);
        assert_eq!(
            maintenance.last_run().map(|run| run.trigger),
            Some(Trigger::Deletions)
        );

        assert!(maintenance.request(Trigger::Demand, true));
        maintenance.run(&mut registry, &config, &mut metrics, 12_000, 1_800_000_000);
        settle(&mut maintenance, &mut registry, &config, &mut metrics, 12_000);
        let last = maintenance.last_run().unwrap();
        assert_eq!((last.trigger, last.report_only), (Trigger::Demand, true));
        let mut text = String::new();
        metrics.render(&mut text);
        assert!(text.contains("gc_runs_total{trigger=\"schedule\"} 1"), "{text}");
        assert!(text.contains("gc_runs_total{trigger=\"deletions\"} 1"), "{text}");
        assert!(
            !text.contains("gc_runs_total{trigger=\"demand\"}"),
            "report-only runs are not counted: {text}"
        );
    }

    #[test]
    fn on_a_bucket_a_removal_waits_for_the_answers_of_those_it_depends_on() {
        let config = Config::default();
        let (_dir, _registry, mut metrics, mut maintenance) = setup(&config);
        let digest = |seed: &[u8]| crate::digest::Digest::sha256_of(seed);
        let tag = |name: &str| Pruning {
            namespace: "n".into(),
            removal: Removal::Tag {
                tag: name.into(),
                digest: digest(b"m"),
            },
            epoch: 0,
        };
        let manifest = |seed: &[u8]| Pruning {
            namespace: "n".into(),
            removal: Removal::Manifest {
                digest: digest(seed),
                parents: Vec::new(),
                former_tags: Vec::new(),
            },
            epoch: 0,
        };
        maintenance.bucket.held_prunings.extend([
            tag("a"),
            tag("b"),
            manifest(b"m"),
            manifest(b"o"),
            tag("c"),
        ]);
        let first = maintenance.release_held();
        assert_eq!(first.prunings, [tag("a"), tag("b")]);
        assert!(
            maintenance.release_held().prunings.is_empty(),
            "the tags are not answered yet"
        );
        maintenance.answered(Job::Prune, true, &mut metrics);
        assert!(
            maintenance.release_held().prunings.is_empty(),
            "one tag is not answered yet"
        );
        maintenance.answered(Job::Prune, true, &mut metrics);
        let second = maintenance.release_held();
        assert_eq!(second.prunings, [manifest(b"m"), manifest(b"o"), tag("c")]);

        let deletion = |seed: &[u8], parents: Vec<crate::digest::Digest>| Deletion {
            namespace: "n".into(),
            digest: digest(seed),
            parents,
            epoch: 0,
        };
        maintenance.bucket.held_deletions.extend([
            deletion(b"index", Vec::new()),
            deletion(b"child", vec![digest(b"index")]),
        ]);
        assert_eq!(
            maintenance.release_held().deletions,
            [deletion(b"index", Vec::new())]
        );
        assert!(
            maintenance.release_held().deletions.is_empty(),
            "the index is not answered yet"
        );
        maintenance.answered(Job::Gc, true, &mut metrics);
        assert_eq!(maintenance.release_held().deletions.len(), 1);
    }

    #[test]
    fn retention_is_refused_when_its_rules_read_pull_times_that_are_not_kept() {
        let mut config = Config::default();
        config.global.retention_rules = vec![crate::retention::rule::Rule::parse("top_pulled(3)").unwrap()];
        let (_dir, mut registry, mut metrics, mut maintenance) = setup(&config);
        let refused = maintenance.request_prune(Trigger::Demand, false).unwrap_err();
        assert!(refused.contains("update_pull_time"), "{refused}");
        config.global.update_pull_time = true;
        maintenance.reconfigure(&config, 0);
        maintenance.request_prune(Trigger::Demand, true).unwrap();
        assert!(
            maintenance.request_prune(Trigger::Demand, true).is_err(),
            "one at a time"
        );
        settle(&mut maintenance, &mut registry, &config, &mut metrics, 0);
        assert_eq!(maintenance.prune_status()["last"]["mode"], "dry-run");
    }
}
