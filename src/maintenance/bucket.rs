//! Garbage collection and retention on the bucket: the filesystem's
//! decisions (`collector::unreachable_manifests`, `prune::Judge`) on
//! namespaces read whole from the bucket, by one replica at a time.
//!
//! A job is a sequence of runs, each a request on the bucket
//! (`Registry::run_on_bucket`) that waits and runs again like a client's:
//! take the lease (`_leases/maintenance`), list the catalog, read each
//! namespace (one run each, so what a run holds is one namespace), then,
//! for a collection, sweep the content and idle sessions, and give the
//! lease back. The lease is renewed while namespaces are read, so a long
//! job keeps it. Removals of manifests and tags go out as data, through
//! the notifier like the filesystem's (webhooks hear of each); on the
//! bucket each is guarded against pushes on other replicas
//! (`storage::bucket::scan`).
//!
//! A collection also removes a namespace's blob links that no manifest
//! names, older than the grace period; their content goes in a later
//! collection, once any push that raced the removal has put its link back.
//! Unreachable content is therefore gone within three collections here
//! (manifest, then link, then content), where the filesystem needs two.

use std::collections::{HashSet, VecDeque};

use serde_json::{Value, json};

use super::collector::{Deletion, Report, unreachable_manifests};
use super::prune::{Judge, Pruning};
use super::scan::NamespaceScan;
use super::{BUCKET_COLLECTION_SLOT, Trigger};
use crate::config::Config;
use crate::digest::Digest;
use crate::registry::Registry;
use crate::storage::bucket::BucketError;
use crate::storage::bucket::collect::{Collected, SweepRules};
use crate::storage::bucket::objects::Holder;
use crate::storage::watch_content_key;

/// Content and session removals a collection makes at most per run.
pub const REMOVALS_PER_RUN: usize = 1000;
/// How long the lease holds; it is renewed at half of it.
pub const LEASE_SECS: u64 = 600;
/// Runs a job makes per loop turn at most (each is one request's worth).
const RUNS_PER_TURN: usize = 8;
/// Manifest bodies a job parses per loop turn at most: a namespace of tens
/// of thousands of manifests is decided over many turns, not in one.
const BODIES_PER_TURN: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Collect,
    Prune,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Collect => "gc",
            Kind::Prune => "prune",
        }
    }
}

enum Stage {
    Lease,
    Catalog,
    Namespace(String),
    /// A namespace read, its bodies being parsed a share per turn; then
    /// decided from the scan, its links and its pull times.
    Parse {
        scan: Box<NamespaceScan>,
        links: Vec<crate::storage::walk::DigestFile>,
        pulls: std::collections::HashMap<Digest, u64>,
    },
    /// A collection's link removals in one namespace: the links (with
    /// their listed times) and the manifests its scan saw.
    Links {
        namespace: String,
        candidates: Vec<(Digest, u64)>,
        scanned: HashSet<Digest>,
    },
    /// The content sweep: what every repository names, then the content a
    /// stretch at a time (after a key), then idle upload sessions.
    Sweep,
    SweepContent(Option<String>),
    SweepSessions,
    Release,
}

/// How a job ended.
pub enum Ended {
    Done,
    /// Another replica holds the lease.
    Elsewhere {
        owner: String,
        expires: u64,
    },
    Failed(String),
}

/// What a job's turn is told: this replica's name on the lease and the clock.
pub struct Turn<'a> {
    pub me: &'a str,
    pub now_ms: u64,
    pub unix_secs: u64,
}

pub struct BucketJob {
    pub kind: Kind,
    pub trigger: Trigger,
    pub report_only: bool,
    pub started_ms: u64,
    pub started_unix_secs: u64,
    stage: Stage,
    /// The catalog was read: what is left of it.
    namespaces: Option<VecDeque<String>>,
    cutoff_secs: u64,
    grace_secs: u64,
    renew_at_secs: u64,
    now_secs: u64,
    /// When the current run started (its writes depend on it).
    run_secs: u64,
    /// Content kept beyond what links and revisions name (`watch_content_key`).
    kept: HashSet<u64>,
    pub report: Report,
    pub collected: Option<Collected>,
    pub judge: Judge,
    deletions: Vec<Deletion>,
}

impl BucketJob {
    pub fn new(
        kind: Kind,
        trigger: Trigger,
        report_only: bool,
        grace_secs: u64,
        now_ms: u64,
        unix_secs: u64,
    ) -> BucketJob {
        BucketJob {
            kind,
            trigger,
            report_only,
            started_ms: now_ms,
            started_unix_secs: unix_secs,
            stage: Stage::Lease,
            namespaces: None,
            cutoff_secs: unix_secs.saturating_sub(grace_secs),
            grace_secs,
            renew_at_secs: 0,
            now_secs: unix_secs,
            run_secs: unix_secs,
            kept: HashSet::new(),
            report: Report::default(),
            collected: None,
            judge: Judge::new(unix_secs, report_only),
            deletions: Vec::new(),
        }
    }

    pub fn take_deletions(&mut self) -> Vec<Deletion> {
        std::mem::take(&mut self.deletions)
    }

    pub fn take_prunings(&mut self) -> Vec<Pruning> {
        self.judge.take_prunings()
    }

    /// Runs the job on from where it is: `*run` numbers each run's request
    /// (a new one per run). `Ok(true)` when it stopped with more to do at
    /// once (call again next turn), `Ok(false)` when it waits on the bucket
    /// (its request is woken), `Err` once it ended.
    pub fn step(
        &mut self,
        registry: &Registry,
        config: &Config,
        turn: &Turn,
        run: &mut u64,
    ) -> Result<bool, Ended> {
        for _ in 0..RUNS_PER_TURN {
            self.now_secs = turn.unix_secs;
            if let Stage::Parse { scan, .. } = &mut self.stage {
                // Not a run on the bucket: the turn's share of parsing.
                if !scan.parse_bodies(BODIES_PER_TURN) {
                    return Ok(true);
                }
                let Stage::Parse { scan, links, pulls } = std::mem::replace(&mut self.stage, Stage::Release)
                else {
                    unreachable!("matched above");
                };
                self.stage = self.decide(config, scan, links, pulls);
                return Ok(true);
            }
            let holder = (BUCKET_COLLECTION_SLOT, *run);
            let Some(next) = self.run_stage(registry, config, turn, holder) else {
                return Ok(false);
            };
            *run += 1;
            // A run keeps the second it started in: run again in a later
            // one, it must write what it wrote the first time.
            self.run_secs = turn.unix_secs;
            self.stage = next?;
        }
        Ok(true)
    }

    /// One run of the current stage: `None` while it waits, else the next
    /// stage or how the job ended.
    fn run_stage(
        &mut self,
        registry: &Registry,
        config: &Config,
        turn: &Turn,
        holder: Holder,
    ) -> Option<Result<Stage, Ended>> {
        let failed = |error: BucketError| Err(Ended::Failed(error.to_string()));
        let now = self.run_secs;
        Some(match &self.stage {
            Stage::Lease => {
                match registry.run_on_bucket(holder, turn.now_ms, |bucket| {
                    bucket.take_lease(turn.me, now, LEASE_SECS)
                })? {
                    Ok(None) => {
                        self.renew_at_secs = now + LEASE_SECS / 2;
                        Ok(self.after_namespace())
                    }
                    Ok(Some((owner, expires))) => Err(Ended::Elsewhere { owner, expires }),
                    Err(error) => failed(error),
                }
            }
            Stage::Catalog => match registry.run_on_bucket(holder, turn.now_ms, |bucket| {
                bucket.catalog_page(None, None, &|_| true)
            })? {
                Ok(page) => {
                    let wanted = page.items.into_iter().filter(|name| {
                        self.kind == Kind::Collect || !config.retention_rules(name).is_empty()
                    });
                    self.namespaces = Some(wanted.collect());
                    Ok(self.after_namespace())
                }
                Err(error) => failed(error),
            },
            Stage::Namespace(name) => {
                let with_pulls = self.kind == Kind::Prune && config.global.update_pull_time;
                let read = registry.run_on_bucket(holder, turn.now_ms, |bucket| {
                    bucket.namespace_contents(name, with_pulls)
                })?;
                let name = name.clone();
                match read {
                    Ok(mut contents) => {
                        let epoch = registry.storage().manifest_epoch(&name);
                        let links = std::mem::take(&mut contents.links);
                        let pulls = std::mem::take(&mut contents.pulls);
                        let scan = NamespaceScan::reading_bucket(name, epoch, contents);
                        Ok(Stage::Parse { scan, links, pulls })
                    }
                    Err(BucketError::Corrupt { key, why }) => {
                        // What it keeps is unknown: nothing is removed there,
                        // and no content anywhere.
                        log::warn!(target: "angos::maintenance", "{name}: {key}: {why}; nothing is removed there");
                        self.report.errors += 1;
                        self.report.namespaces_skipped += 1;
                        self.report.content_sweep_skipped = true;
                        Ok(self.after_namespace())
                    }
                    Err(error) => failed(error),
                }
            }
            // Parsed in `step`, a share per turn, never as a run.
            Stage::Parse { .. } => unreachable!("a parse is no run on the bucket"),
            Stage::Links {
                namespace,
                candidates,
                scanned,
            } => match registry.run_on_bucket(holder, turn.now_ms, |bucket| {
                bucket.remove_links(namespace, candidates, scanned)
            })? {
                Ok(removed) => {
                    self.report.links_removed += removed.len() as u64;
                    for digest in &removed {
                        log::debug!(target: "angos::gc", "removed link {namespace}@{digest}");
                    }
                    Ok(self.after_namespace())
                }
                Err(error) => failed(error),
            },
            Stage::Sweep => {
                match registry.run_on_bucket(holder, turn.now_ms, |bucket| bucket.referenced_content())? {
                    Ok((_, referenced)) => {
                        // Named now, named for the rest of the collection.
                        self.kept.extend(referenced.iter().map(watch_content_key));
                        self.collected = Some(Collected::default());
                        Ok(Stage::SweepContent(None))
                    }
                    Err(error) => failed(error),
                }
            }
            Stage::SweepContent(after) => {
                let rules = self.sweep_rules(now);
                let kept = &self.kept;
                let done = self
                    .collected
                    .as_ref()
                    .map_or(0, |collected| collected.contents_removed);
                let left = REMOVALS_PER_RUN.saturating_sub(done as usize);
                let swept = registry.run_on_bucket(holder, turn.now_ms, |bucket| {
                    bucket.sweep_content(
                        &rules,
                        &|digest| kept.contains(&watch_content_key(digest)),
                        after.as_deref(),
                        left,
                    )
                })?;
                match swept {
                    Ok((stretch, next)) => {
                        let collected = self.collected.get_or_insert_with(Collected::default);
                        collected.add(&stretch);
                        let report = &mut self.report;
                        report.contents = collected.contents;
                        report.contents_removed = collected.contents_removed;
                        report.bytes_removed = collected.bytes_removed;
                        report.bytes_kept = collected.bytes_kept;
                        report.bytes_reclaimable = collected.bytes_reclaimable;
                        Ok(match next {
                            Some(next) if !stretch.more => Stage::SweepContent(Some(next)),
                            _ => Stage::SweepSessions,
                        })
                    }
                    Err(error) => failed(error),
                }
            }
            Stage::SweepSessions => {
                let rules = self.sweep_rules(now);
                let done = self
                    .collected
                    .as_ref()
                    .map_or(0, |collected| collected.contents_removed);
                let left = REMOVALS_PER_RUN.saturating_sub(done as usize);
                match registry
                    .run_on_bucket(holder, turn.now_ms, |bucket| bucket.sweep_sessions(&rules, left))?
                {
                    Ok(removed) => {
                        if let Some(collected) = &mut self.collected {
                            collected.sessions_removed = removed;
                        }
                        Ok(Stage::Release)
                    }
                    Err(error) => failed(error),
                }
            }
            Stage::Release => {
                match registry.run_on_bucket(holder, turn.now_ms, |bucket| bucket.give_back_lease())? {
                    Ok(()) => Err(Ended::Done),
                    Err(error) => failed(error),
                }
            }
        })
    }

    /// The stage after a namespace (or the lease, or the catalog): the
    /// lease renewed when due, the next namespace, or the end.
    fn after_namespace(&mut self) -> Stage {
        let Some(queue) = &mut self.namespaces else {
            return Stage::Catalog;
        };
        if self.now_secs >= self.renew_at_secs {
            return Stage::Lease;
        }
        let Some(name) = queue.pop_front() else {
            return match self.kind {
                Kind::Collect if !self.report.content_sweep_skipped => Stage::Sweep,
                _ => Stage::Release,
            };
        };
        if self.kind == Kind::Prune {
            self.judge.report.namespaces += 1;
        } else {
            self.report.namespaces += 1;
        }
        Stage::Namespace(name)
    }

    /// Decides a namespace read whole and parsed; a collection goes on to
    /// its links.
    fn decide(
        &mut self,
        config: &Config,
        scan: Box<NamespaceScan>,
        links: Vec<crate::storage::walk::DigestFile>,
        pulls: std::collections::HashMap<Digest, u64>,
    ) -> Stage {
        let epoch = scan.epoch;
        if self.kind == Kind::Prune {
            self.judge.decide(config, &scan, &pulls);
            return self.after_namespace();
        }
        self.report.manifests += scan.revisions.len() as u64;
        self.report.errors += scan.errors;
        self.kept.extend(scan.kept.iter().copied());
        if scan.keep_all {
            self.report.namespaces_skipped += 1;
            if scan.unparseable {
                self.report.content_sweep_skipped = true;
            }
            return self.after_namespace();
        }
        for (digest, parents) in unreachable_manifests(&scan, self.cutoff_secs) {
            self.report.manifests_unreachable += 1;
            if !self.report_only {
                self.deletions.push(Deletion {
                    namespace: scan.name.clone(),
                    digest,
                    parents,
                    epoch,
                });
            }
        }
        self.report.links += links.len() as u64;
        let candidates: Vec<(Digest, u64)> = links
            .into_iter()
            .filter(|link| {
                link.modified_secs < self.cutoff_secs && !scan.kept.contains(&watch_content_key(&link.digest))
            })
            .map(|link| (link.digest, link.modified_secs))
            .collect();
        // Their content stays this time, whatever happens to them.
        self.kept
            .extend(candidates.iter().map(|(digest, _)| watch_content_key(digest)));
        if candidates.is_empty() {
            return self.after_namespace();
        }
        if self.report_only {
            self.report.links_removed += candidates.len() as u64;
            return self.after_namespace();
        }
        Stage::Links {
            namespace: scan.name.clone(),
            candidates,
            scanned: scan
                .revisions
                .iter()
                .map(|revision| revision.digest.clone())
                .collect(),
        }
    }

    fn sweep_rules(&self, now: u64) -> SweepRules {
        SweepRules {
            now,
            grace_secs: self.grace_secs,
            report_only: self.report_only,
        }
    }

    /// The admin API's view of a run in progress.
    pub fn progress(&self) -> Value {
        json!({
            "job": self.kind.as_str(),
            "trigger": self.trigger.as_str(),
            "report_only": self.report_only,
            "namespaces": self.report.namespaces.max(self.judge.report.namespaces),
            "left": self.namespaces.as_ref().map(VecDeque::len),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Limits;
    use crate::s3::fake::Faults;
    use crate::storage::Storage;
    use crate::storage::bucket::layout;
    use crate::storage::bucket::testing::{Rig, UNIX_SECS, replica, run};

    const GRACE: u64 = 3600;

    struct Bench {
        rig: Rig,
        registry: Registry,
        config: Config,
        holders: u64,
    }

    impl Bench {
        fn new(seed: u64) -> Bench {
            let config = Config::default();
            let storage = Storage::on_bucket(replica(seed, 5 << 20), 8);
            Bench {
                rig: Rig::new(Faults::default(), seed),
                registry: Registry::new(storage, Limits::of(&config.global)),
                config,
                holders: 0,
            }
        }

        fn on_bucket<T>(
            &mut self,
            operation: impl Fn(&crate::storage::bucket::BucketStore) -> Result<T, BucketError>,
        ) -> T {
            self.holders += 1;
            let holder = (1, self.holders);
            let store = self.registry.storage().bucket().unwrap();
            run(&mut self.rig, store, holder, operation).unwrap()
        }

        /// Content at its digest, written now (the fake's clock).
        fn content(&mut self, bytes: &[u8]) -> Digest {
            let digest = Digest::sha256_of(bytes);
            self.rig
                .fake
                .objects
                .insert(layout::blob(&digest), bytes.to_vec());
            self.rig
                .fake
                .modified
                .insert(layout::blob(&digest), self.rig.fake.now_secs);
            digest
        }

        fn manifest(&mut self, namespace: &str, layers: &[&Digest], tags: &[&str]) -> Digest {
            let layers: Vec<serde_json::Value> = layers
                .iter()
                .map(|digest| json!({ "mediaType": "l", "digest": digest.to_string(), "size": 1 }))
                .collect();
            let body =
                serde_json::to_vec(&json!({ "schemaVersion": 2, "layers": layers, "n": self.holders }))
                    .unwrap();
            let digest = Digest::sha256_of(&body);
            let tags: Vec<String> = tags.iter().map(|tag| tag.to_string()).collect();
            self.on_bucket(|s| s.put_manifest(namespace, &digest, "m", &body, &tags, None));
            digest
        }

        fn link(&mut self, namespace: &str, digest: &Digest) {
            self.on_bucket(|s| s.link_blob(namespace, digest));
        }

        /// Runs `job` to its end at `unix_secs`, the bucket answering as it goes.
        fn finish(&mut self, job: &mut BucketJob, unix_secs: u64) -> Ended {
            self.drive(job, |_| unix_secs, |_| {})
        }

        /// Runs `job` to its end, round `n` at `clock(n)`, showing the
        /// bucket to `observe` after each round.
        fn drive(
            &mut self,
            job: &mut BucketJob,
            clock: impl Fn(u64) -> u64,
            mut observe: impl FnMut(&Rig),
        ) -> Ended {
            let mut next = 1_000;
            for round in 0..10_000 {
                self.rig.now_ms += 1;
                let turn = Turn {
                    me: "me",
                    now_ms: self.rig.now_ms,
                    unix_secs: clock(round),
                };
                let bucket = self.registry.storage().bucket().unwrap();
                bucket.objects().set_time(self.rig.now_ms, UNIX_SECS);
                if let Err(ended) = job.step(&self.registry, &self.config, &turn, &mut next) {
                    return ended;
                }
                let bucket = self.registry.storage().bucket().unwrap();
                self.rig.pump(bucket.objects());
                bucket.objects().take_woken();
                observe(&self.rig);
            }
            panic!("the job never ended");
        }

        fn has(&self, key: &str) -> bool {
            self.rig.fake.objects.contains_key(key)
        }
    }

    #[test]
    fn a_collection_hands_out_unreachable_manifests_and_frees_links_then_content() {
        let mut bench = Bench::new(1);
        let kept_layer = bench.content(b"kept layer");
        let old_layer = bench.content(b"old layer");
        bench.link("n", &kept_layer);
        bench.link("n", &old_layer);
        let tagged = bench.manifest("n", &[&kept_layer], &["v1"]);
        let untagged = bench.manifest("n", &[&old_layer], &[]);
        // Long after: a young untagged manifest and a young unreferenced link.
        bench.rig.fake.now_secs += 2 * GRACE;
        let young_layer = bench.content(b"young layer");
        bench.link("n", &young_layer);
        let young = bench.manifest("n", &[], &[]);
        let now = bench.rig.fake.now_secs;

        let mut job = BucketJob::new(Kind::Collect, Trigger::Demand, false, GRACE, 0, now);
        assert!(matches!(bench.finish(&mut job, now), Ended::Done));
        let deletions = job.take_deletions();
        let handed: Vec<&Digest> = deletions.iter().map(|deletion| &deletion.digest).collect();
        assert_eq!(handed, [&untagged], "only the old untagged one goes");
        assert!(!handed.contains(&&tagged) && !handed.contains(&&young));
        // The old layer is still named by the manifest handed out: kept.
        assert!(bench.has(&layout::layer_link("n", &old_layer)));
        assert!(!bench.has(layout::MAINTENANCE_LEASE), "the lease is given back");

        // The manifest removed, the next collection takes its link, keeping
        // the content once; the one after frees the content.
        let removed = bench.on_bucket(|s| s.remove_unreferenced_manifest("n", &untagged));
        assert!(removed);
        let mut job = BucketJob::new(Kind::Collect, Trigger::Demand, false, GRACE, 0, now);
        assert!(matches!(bench.finish(&mut job, now), Ended::Done));
        assert_eq!(job.report.links_removed, 1, "{:?}", job.report);
        assert!(!bench.has(&layout::layer_link("n", &old_layer)));
        assert!(
            bench.has(&layout::blob(&old_layer)),
            "content of a link just removed stays"
        );
        let mut job = BucketJob::new(Kind::Collect, Trigger::Demand, false, GRACE, 0, now);
        assert!(matches!(bench.finish(&mut job, now), Ended::Done));
        assert!(!bench.has(&layout::blob(&old_layer)));
        for digest in [&kept_layer, &young_layer] {
            assert!(bench.has(&layout::layer_link("n", digest)));
            assert!(bench.has(&layout::blob(digest)));
        }
    }

    /// A namespace of more manifests than a turn parses is decided over
    /// several turns, whole: every old untagged manifest is handed out.
    #[test]
    fn a_large_namespace_is_decided_over_several_turns() {
        let mut bench = Bench::new(8);
        let manifests = 2 * BODIES_PER_TURN + 10;
        let untagged: HashSet<Digest> = (0..manifests).map(|_| bench.manifest("n", &[], &[])).collect();
        let tagged = bench.manifest("n", &[], &["v1"]);
        let now = bench.rig.fake.now_secs + 2 * GRACE;
        let mut job = BucketJob::new(Kind::Collect, Trigger::Demand, false, GRACE, 0, now);
        let mut parsing_turns = 0;
        let mut next = 1_000;
        let ended = loop {
            bench.rig.now_ms += 1;
            let turn = Turn {
                me: "me",
                now_ms: bench.rig.now_ms,
                unix_secs: now,
            };
            let bucket = bench.registry.storage().bucket().unwrap();
            bucket.objects().set_time(bench.rig.now_ms, UNIX_SECS);
            if matches!(job.stage, Stage::Parse { .. }) {
                parsing_turns += 1;
            }
            match job.step(&bench.registry, &bench.config, &turn, &mut next) {
                Err(ended) => break ended,
                Ok(_) => {
                    let bucket = bench.registry.storage().bucket().unwrap();
                    bench.rig.pump(bucket.objects());
                    bucket.objects().take_woken();
                }
            }
        };
        assert!(matches!(ended, Ended::Done));
        // Three shares: one in the turn the read ended, two more turns.
        assert_eq!(
            parsing_turns, 2,
            "{manifests} bodies at most {BODIES_PER_TURN} a turn"
        );
        let handed: HashSet<Digest> = job
            .take_deletions()
            .into_iter()
            .map(|deletion| deletion.digest)
            .collect();
        assert_eq!(handed, untagged);
        assert!(!handed.contains(&tagged));
    }

    /// More content than one request lists: the sweep goes a stretch at a
    /// time and finds the old orphans wherever they are.
    #[test]
    fn the_content_is_swept_a_stretch_at_a_time() {
        let mut bench = Bench::new(6);
        let young = bench.rig.fake.now_secs + 2 * GRACE;
        for n in 0..25_000u32 {
            let digest = Digest::sha256_of(&n.to_le_bytes());
            bench.rig.fake.objects.insert(layout::blob(&digest), vec![1]);
            bench.rig.fake.modified.insert(layout::blob(&digest), young);
        }
        let orphans: Vec<Digest> = (0..3).map(|n: u8| bench.content(&[b'o', n])).collect();
        bench.rig.fake.now_secs = young;
        let mut job = BucketJob::new(Kind::Collect, Trigger::Demand, false, GRACE, 0, young);
        assert!(matches!(bench.finish(&mut job, young), Ended::Done));
        assert_eq!(job.report.contents, 25_003, "{:?}", job.report);
        assert_eq!(job.report.contents_removed, 3, "{:?}", job.report);
        for orphan in &orphans {
            assert!(!bench.has(&layout::blob(orphan)));
        }
        assert_eq!(job.report.bytes_reclaimable, 25_000);
    }

    #[test]
    fn a_report_only_collection_counts_and_removes_nothing() {
        let mut bench = Bench::new(2);
        let layer = bench.content(b"layer");
        bench.link("n", &layer);
        bench.manifest("n", &[], &[]);
        bench.rig.fake.now_secs += 2 * GRACE;
        let now = bench.rig.fake.now_secs;
        let before = bench.rig.fake.objects.len();
        let mut job = BucketJob::new(Kind::Collect, Trigger::Demand, true, GRACE, 0, now);
        assert!(matches!(bench.finish(&mut job, now), Ended::Done));
        assert!(job.take_deletions().is_empty());
        assert_eq!(job.report.manifests_unreachable, 1);
        assert_eq!(job.report.links_removed, 1);
        assert_eq!(bench.rig.fake.objects.len(), before);
    }

    #[test]
    fn a_retention_run_judges_tags_by_the_namespace_rules() {
        let mut bench = Bench::new(3);
        bench.config.global.retention_rules =
            vec![crate::retention::rule::Rule::parse("top_pushed(2)").unwrap()];
        for (i, tag) in ["a", "b", "c"].into_iter().enumerate() {
            bench.rig.fake.now_secs += 10 * (i as u64 + 1);
            bench.manifest("n", &[], &[tag]);
        }
        let now = bench.rig.fake.now_secs;
        let mut job = BucketJob::new(Kind::Prune, Trigger::Demand, false, GRACE, 0, now);
        assert!(matches!(bench.finish(&mut job, now), Ended::Done));
        let prunings: Vec<String> = job.take_prunings().iter().map(Pruning::describe).collect();
        assert_eq!(prunings.len(), 2, "{prunings:?}");
        assert!(prunings[0].starts_with("n:a "), "{prunings:?}");
        assert!(prunings[1].starts_with("n@"), "{prunings:?}");
        assert_eq!(job.judge.report.namespaces, 1);
    }

    #[test]
    fn a_long_job_renews_its_lease_and_gives_it_back() {
        let mut bench = Bench::new(5);
        for n in 0..6 {
            bench.manifest(&format!("ns{n}"), &[], &["t"]);
        }
        let start = bench.rig.fake.now_secs;
        let mut job = BucketJob::new(Kind::Collect, Trigger::Demand, false, GRACE, 0, start);
        let mut expiries: Vec<u64> = Vec::new();
        // A minute passes each round: the job outlives one lease.
        let ended = bench.drive(
            &mut job,
            |round| start + round * 60,
            |rig| {
                if let Some(lease) = rig.fake.objects.get(layout::MAINTENANCE_LEASE) {
                    let lease: Value = serde_json::from_slice(lease).unwrap();
                    let expires = lease["expires"].as_u64().unwrap();
                    if expiries.last() != Some(&expires) {
                        expiries.push(expires);
                    }
                }
            },
        );
        match &ended {
            Ended::Done => {}
            Ended::Failed(why) => panic!("failed: {why}"),
            Ended::Elsewhere { owner, .. } => panic!("elsewhere: {owner}"),
        }
        assert!(expiries.len() >= 2, "renewed: {expiries:?}");
        assert!(expiries.windows(2).all(|pair| pair[0] < pair[1]), "{expiries:?}");
        assert!(!bench.has(layout::MAINTENANCE_LEASE), "given back");
    }

    #[test]
    fn a_job_waits_while_another_replica_holds_the_lease() {
        let mut bench = Bench::new(4);
        let now = bench.rig.fake.now_secs;
        let held = serde_json::to_vec(&json!({ "owner": "other", "expires": now + 60 })).unwrap();
        bench
            .rig
            .fake
            .objects
            .insert(layout::MAINTENANCE_LEASE.into(), held);
        let mut job = BucketJob::new(Kind::Prune, Trigger::Demand, false, GRACE, 0, now);
        match bench.finish(&mut job, now) {
            Ended::Elsewhere { owner, expires } => assert_eq!((owner.as_str(), expires), ("other", now + 60)),
            _ => panic!("not told of the other replica"),
        }
    }
}

/// A seeded simulation of two replicas on one bucket, at the storage
/// interface: pushes of tagged and untagged manifests naming shared
/// layers (checked first, as the registry does), layer uploads, tag moves,
/// manifest deletes, and collections made of the job's own steps (a
/// namespace read and decided, each unreachable manifest removed as a
/// request of its own, the links no manifest names removed, the content
/// swept keeping what the decisions kept), all interleaved run by run,
/// with throttling and lost answers. Whenever nothing is in flight, every
/// tag names a manifest that is there, and every tagged manifest's layers
/// are linked and their content is there.
#[cfg(test)]
mod simulation {
    use std::cell::RefCell;
    use std::collections::HashSet;
    use std::rc::Rc;

    use super::*;
    use crate::storage::bucket::testing::{Rig, UNIX_SECS, replica, seeded};
    use crate::storage::bucket::{BucketStore, layout};

    const GRACE: u64 = 600;
    const LAYERS: u64 = 5;

    type Operation = Box<dyn Fn(&BucketStore) -> Result<(), BucketError>>;

    fn layer(n: u64) -> (Digest, Vec<u8>) {
        let bytes = format!("layer {n}").into_bytes();
        (Digest::sha256_of(&bytes), bytes)
    }

    fn manifest_of(layers: &[u64], salt: u64) -> (Digest, Vec<u8>) {
        let layers: Vec<Value> = layers
            .iter()
            .map(|n| json!({ "mediaType": "l", "digest": layer(*n).0.to_string(), "size": 7 }))
            .collect();
        let body =
            serde_json::to_vec(&json!({ "schemaVersion": 2, "layers": layers, "salt": salt })).unwrap();
        (Digest::sha256_of(&body), body)
    }

    /// A push as the registry makes it: its layers checked, then stored.
    fn push(namespace: String, layers: Vec<u64>, salt: u64, tag: Option<String>) -> Operation {
        Box::new(move |s| {
            let (digest, body) = manifest_of(&layers, salt);
            for n in &layers {
                if s.blob_size(&namespace, &layer(*n).0)?.is_none() {
                    return Err(BucketError::Unavailable("MANIFEST_BLOB_UNKNOWN".into()));
                }
            }
            let tags: Vec<String> = tag.iter().cloned().collect();
            s.put_manifest(&namespace, &digest, "m", &body, &tags, None)
        })
    }

    fn upload(namespace: String, n: u64) -> Operation {
        Box::new(move |s| {
            let (digest, bytes) = layer(n);
            s.objects()
                .put(&layout::blob(&digest), Rc::from(&bytes[..]), false)?;
            s.link_blob(&namespace, &digest)?;
            if !s.objects().exists_again(&layout::blob(&digest), "there?")? {
                return Err(BucketError::Unavailable("removed meanwhile".into()));
            }
            Ok(())
        })
    }

    /// A namespace's link removals: the links with their listed times, and
    /// the manifests its scan saw.
    type LinkRemovals = (String, Vec<(Digest, u64)>, HashSet<Digest>);

    /// What a collection's namespace step hands on: removals to make as
    /// requests of their own, and content to keep at its sweep.
    #[derive(Default)]
    struct Decided {
        manifests: Vec<(String, Digest)>,
        links: Vec<LinkRemovals>,
        kept: HashSet<u64>,
    }

    fn decide(namespace: String, now: u64, out: Rc<RefCell<Decided>>) -> Operation {
        Box::new(move |s| {
            let contents = s.namespace_contents(&namespace, false)?;
            let links = contents.links.clone();
            let scan = NamespaceScan::of_bucket(namespace.clone(), 0, contents);
            let cutoff = now.saturating_sub(GRACE);
            let mut out = out.borrow_mut();
            out.kept.extend(scan.kept.iter().copied());
            for (digest, _) in unreachable_manifests(&scan, cutoff) {
                out.manifests.push((namespace.clone(), digest));
            }
            let candidates: Vec<(Digest, u64)> = links
                .into_iter()
                .filter(|link| {
                    link.modified_secs < cutoff && !scan.kept.contains(&watch_content_key(&link.digest))
                })
                .map(|link| (link.digest, link.modified_secs))
                .collect();
            out.kept
                .extend(candidates.iter().map(|(digest, _)| watch_content_key(digest)));
            let scanned = scan
                .revisions
                .iter()
                .map(|revision| revision.digest.clone())
                .collect();
            out.links.push((namespace.clone(), candidates, scanned));
            Ok(())
        })
    }

    #[test]
    fn collections_racing_pushes_on_two_replicas_never_lose_what_a_tag_reaches() {
        for seed in 1..30u64 {
            let mut rig = Rig::faulty(100, 80, seed);
            let replicas = [replica(seed, 5 << 20), replica(seed + 100, 5 << 20)];
            let mut next = seeded(seed);
            // (replica, holder, operation) in flight; a collection's later
            // steps wait in `queued` until its earlier ones answered.
            let mut active: Vec<(usize, Holder, Operation)> = Vec::new();
            let mut queued: Vec<Operation> = Vec::new();
            let mut collection: Option<(Rc<RefCell<Decided>>, u64, usize)> = None;
            let mut started = 0u64;
            for step in 0..600u64 {
                let collecting = active.iter().any(|(_, holder, _)| holder.0 == 2);
                if collection.is_some() && !collecting {
                    // The collection's next step: removals, then the sweep.
                    let (decided, now, stage) = collection.take().unwrap();
                    let mut ops: Vec<Operation> = Vec::new();
                    match stage {
                        0 => {
                            for (namespace, digest) in decided.borrow().manifests.clone() {
                                ops.push(Box::new(move |s| {
                                    s.remove_unreferenced_manifest(&namespace, &digest).map(|_| ())
                                }));
                            }
                            for (namespace, candidates, scanned) in decided.borrow().links.clone() {
                                ops.push(Box::new(move |s| {
                                    s.remove_links(&namespace, &candidates, &scanned).map(|_| ())
                                }));
                            }
                            collection = Some((decided, now, 1));
                        }
                        _ => {
                            let kept = decided.borrow().kept.clone();
                            ops.push(Box::new(move |s| {
                                s.sweep(now, GRACE, 1000, false, &|digest| {
                                    kept.contains(&watch_content_key(digest))
                                })
                                .map(|_| ())
                            }));
                        }
                    }
                    queued.extend(ops);
                }
                for operation in queued.drain(..) {
                    started += 1;
                    active.push((next(2) as usize, (2, started), operation));
                }
                if active.len() < 4 && started < 200 && next(2) == 0 {
                    started += 1;
                    let namespace = format!("ns{}", next(2));
                    let operation: Operation = match next(7) {
                        0 | 1 => {
                            let count = 1 + next(2);
                            let layers = (0..count).map(|_| next(LAYERS)).collect();
                            let tag = (next(3) > 0).then(|| format!("t{}", next(3)));
                            push(namespace, layers, next(3), tag)
                        }
                        2 | 3 => upload(namespace, next(LAYERS)),
                        4 => {
                            let tag = format!("t{}", next(3));
                            Box::new(move |s: &BucketStore| s.delete_tag(&namespace, &tag).map(|_| ()))
                        }
                        5 => {
                            let count = 1 + next(2);
                            let layers: Vec<u64> = (0..count).map(|_| next(LAYERS)).collect();
                            let digest = manifest_of(&layers, next(3)).0;
                            Box::new(move |s: &BucketStore| {
                                s.delete_manifest(&namespace, &digest).map(|_| ())
                            })
                        }
                        _ if collection.is_none() => {
                            let decided = Rc::new(RefCell::new(Decided::default()));
                            let now = rig.fake.now_secs;
                            collection = Some((decided.clone(), now, 0));
                            for n in 0..2 {
                                queued.push(decide(format!("ns{n}"), now, decided.clone()));
                            }
                            continue;
                        }
                        _ => continue,
                    };
                    active.push((next(2) as usize, (1, started), operation));
                }
                for operation in queued.drain(..) {
                    started += 1;
                    active.push((next(2) as usize, (2, started), operation));
                }
                active.retain(|(r, holder, operation)| {
                    let store = &replicas[*r];
                    store.objects().set_time(rig.now_ms, UNIX_SECS);
                    store.objects().enter(*holder, rig.now_ms);
                    let result = operation(store);
                    if store.objects().leave() {
                        return true;
                    }
                    store.objects().release(*holder);
                    match result {
                        Ok(()) | Err(BucketError::Unavailable(_)) => false,
                        Err(other) => panic!("seed {seed} step {step}: {other}"),
                    }
                });
                for store in &replicas {
                    rig.pump(store.objects());
                    store.objects().take_woken();
                }
                rig.now_ms += 1;
                rig.fake.now_secs += next(GRACE / 10);
                if active.is_empty() {
                    check(&rig, seed, step);
                }
            }
            assert!(active.is_empty(), "seed {seed}: requests never answered");
        }
    }

    fn check(rig: &Rig, seed: u64, step: u64) {
        let objects = &rig.fake.objects;
        for (key, value) in objects {
            if !key.contains("/_manifests/tags/") {
                continue;
            }
            let namespace = layout::namespace_of(key).unwrap();
            let target = Digest::parse(std::str::from_utf8(value).unwrap().trim()).unwrap();
            assert!(
                objects.contains_key(&layout::revision(namespace, &target)),
                "seed {seed} step {step}: {key} names a manifest that is gone"
            );
            let body = objects
                .get(&layout::blob(&target))
                .expect("the manifest's content");
            let parsed: Value = serde_json::from_slice(body).unwrap();
            for descriptor in parsed["layers"].as_array().unwrap() {
                let digest = Digest::parse(descriptor["digest"].as_str().unwrap()).unwrap();
                assert!(
                    objects.contains_key(&layout::layer_link(namespace, &digest)),
                    "seed {seed} step {step}: {key} reaches layer {digest}, unlinked"
                );
                assert!(
                    objects.contains_key(&layout::blob(&digest)),
                    "seed {seed} step {step}: {key} reaches layer {digest}, whose content is gone"
                );
            }
        }
    }
}
