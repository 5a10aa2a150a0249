//! A seeded simulation of garbage collection against a model of what clients
//! may still need. Random interleavings of uploads, mounts, blob checks,
//! manifest and index pushes (some as referrers), tag moves, deletions,
//! collection slices, delayed or refused removals (a webhook's wait or
//! veto), crashes (everything in memory dropped, the store reopened) and
//! clock jumps, on a real store in a scratch directory.
//!
//! After every step: every tag still points where clients left it; every
//! stored manifest has its body, its blobs and its children; and a push a
//! client prepared (blobs uploaded, mounted or checked) finds its blobs,
//! unless a collection that started after the preparation was entitled to
//! take them (the link was older than its grace cutoff: the client took
//! longer than `gc_grace_secs`). At quiet points, two collections in a row
//! must leave nothing unreachable that is older than the grace period.
//!
//! `GC_SIMULATION_SEEDS=N` runs N seeds (default 150; the issue notes record runs of thousands); `SEED=S` replays one.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::collector::{Collector, Deletion, Progress};
use crate::digest::Digest;
use crate::registry::manifest;
use crate::registry::{Commit, Limits, Registry, Removal};
use crate::storage::Storage;
use crate::test_support::{Rng, TempDir};

const GRACE_SECS: u64 = 60;
const NAMESPACES: [&str; 3] = ["a", "b", "c/d"];
const TAGS: [&str; 4] = ["v1", "v2", "latest", "dev"];
const IMAGE: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The files' modification times are the real clock's: the simulated clock
/// is set against it (and jumps from there).
fn real_now_secs() -> u64 {
    crate::clock::Clock::unix_micros(&crate::clock::SystemClock::new()) / 1_000_000
}

/// Blobs a client readied for its next push in one namespace.
struct Prepared {
    /// Each blob with its link's modification time when readied.
    blobs: Vec<(Digest, u64)>,
    /// Collections started so far when the blobs were readied.
    collections_started: u64,
}

struct Sim {
    rng: Rng,
    dir: TempDir,
    registry: Registry,
    collector: Option<Collector>,
    /// Cutoffs of every collection started, in order (index = its number).
    cutoffs: Vec<u64>,
    clock_secs: u64,
    /// Removals handed out and not yet made or refused.
    pending: VecDeque<Deletion>,
    tags: BTreeMap<(String, String), Digest>,
    prepared: BTreeMap<String, Prepared>,
    trace: Vec<String>,
}

fn open(root: &Path) -> Registry {
    let storage = Storage::open(root, false, 64).unwrap();
    let limits = Limits {
        max_manifest_size: 1 << 20,
        max_blob_size: 1 << 20,
        allow_missing_manifest_references: false,
        update_pull_time: false,
    };
    Registry::new(storage, limits)
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let dir = TempDir::new("gc-sim");
        let registry = open(dir.path());
        Sim {
            rng: Rng(seed.max(1)),
            dir,
            registry,
            collector: None,
            cutoffs: Vec::new(),
            clock_secs: real_now_secs(),
            pending: VecDeque::new(),
            tags: BTreeMap::new(),
            prepared: BTreeMap::new(),
            trace: Vec::new(),
        }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn storage(&mut self) -> &mut Storage {
        self.registry.storage_mut()
    }

    fn pick<'a>(&mut self, items: &'a [&'a str]) -> &'a str {
        items[self.rng.below(items.len() as u64) as usize]
    }

    // ---- what is on disk, read without touching the store's watch -------

    fn link_path(&self, namespace: &str, digest: &Digest) -> PathBuf {
        self.root()
            .join("repositories")
            .join(namespace)
            .join("_layers")
            .join(digest.algorithm())
            .join(digest.hex())
    }

    fn content_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root()
            .join("blobs")
            .join(digest.algorithm())
            .join(&hex[..2])
            .join(hex)
    }

    fn readable(&self, namespace: &str, digest: &Digest) -> bool {
        self.link_path(namespace, digest).exists() && self.content_path(digest).exists()
    }

    fn mtime(path: &Path) -> Option<u64> {
        let modified = fs::symlink_metadata(path).ok()?.modified().ok()?;
        Some(modified.duration_since(UNIX_EPOCH).ok()?.as_secs())
    }

    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(dir) = pending.pop() {
            let Ok(entries) = fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    found.push(path);
                }
            }
        }
        found
    }

    fn digest_of_path(path: &Path) -> Digest {
        let hex = path.file_name().unwrap().to_str().unwrap();
        let mut parent = path.parent().unwrap();
        if parent.file_name().unwrap().len() == 2
            && parent.parent().unwrap().parent().unwrap().ends_with("blobs")
        {
            parent = parent.parent().unwrap();
        }
        let algorithm = parent.file_name().unwrap().to_str().unwrap();
        Digest::parse(&format!("{algorithm}:{hex}")).unwrap()
    }

    /// Revisions of `namespace` on disk: digest, modification time, parsed body.
    fn revisions(&self, namespace: &str) -> Vec<(Digest, u64, Option<manifest::ParsedManifest>)> {
        let base = self
            .root()
            .join("repositories")
            .join(namespace)
            .join("_manifests/revisions");
        Self::files_under(&base)
            .into_iter()
            .map(|path| {
                let digest = Self::digest_of_path(&path);
                let media_type = fs::read_to_string(&path)
                    .ok()
                    .and_then(|text| text.lines().next().map(str::to_owned))
                    .unwrap_or_default();
                let parsed = fs::read(self.content_path(&digest))
                    .ok()
                    .and_then(|body| manifest::parse(&media_type, &body).ok());
                (digest, Self::mtime(&path).unwrap_or(0), parsed)
            })
            .collect()
    }

    fn links(&self, namespace: &str) -> Vec<(Digest, u64)> {
        let base = self.root().join("repositories").join(namespace).join("_layers");
        Self::files_under(&base)
            .into_iter()
            .map(|path| (Self::digest_of_path(&path), Self::mtime(&path).unwrap_or(0)))
            .collect()
    }

    fn disk_tags(&self, namespace: &str) -> BTreeMap<String, Digest> {
        let base = self
            .root()
            .join("repositories")
            .join(namespace)
            .join("_manifests/tags");
        Self::files_under(&base)
            .into_iter()
            .filter_map(|path| {
                let text = fs::read_to_string(&path).ok()?;
                let tag = path.file_name()?.to_str()?.to_owned();
                Some((tag, Digest::parse(text.trim()).ok()?))
            })
            .collect()
    }

    // ---- client operations ----------------------------------------------

    fn upload(&mut self, namespace: &str) {
        // A small pool of contents, so namespaces share blobs.
        let content = format!("blob-{}", self.rng.below(12));
        let digest = Digest::sha256_of(content.as_bytes());
        let storage = self.storage();
        let id = storage.start_upload(namespace).unwrap();
        let mut writer = storage.upload_writer(namespace, &id).unwrap();
        writer.write(content.as_bytes()).unwrap();
        storage.release_writer(namespace, &id, writer);
        storage.verify_upload(namespace, &id, &digest).unwrap();
        storage.commit_upload(namespace, &id, &digest).unwrap();
        self.trace.push(format!("upload {namespace} {digest}"));
        self.ready(namespace, digest);
    }

    fn mount(&mut self, namespace: &str) {
        let from = self.pick(&NAMESPACES);
        let links = self.links(from);
        if links.is_empty() {
            return;
        }
        let (digest, _) = links[self.rng.below(links.len() as u64) as usize].clone();
        if self.storage().link_blob(namespace, &digest).unwrap() {
            self.trace.push(format!("mount {namespace} {digest} from {from}"));
            self.ready(namespace, digest);
        }
    }

    /// A HEAD of a blob the namespace has: the client will reference it.
    fn head(&mut self, namespace: &str) {
        let links = self.links(namespace);
        if links.is_empty() {
            return;
        }
        let (digest, _) = links[self.rng.below(links.len() as u64) as usize].clone();
        if self.storage().blob_size(namespace, &digest).unwrap().is_some() {
            self.trace.push(format!("head {namespace} {digest}"));
            self.ready(namespace, digest);
        }
    }

    fn ready(&mut self, namespace: &str, digest: Digest) {
        let modified = Self::mtime(&self.link_path(namespace, &digest)).unwrap();
        let started = self.cutoffs.len() as u64;
        let prepared = self.prepared.entry(namespace.to_owned()).or_insert(Prepared {
            blobs: Vec::new(),
            collections_started: started,
        });
        prepared.blobs.push((digest, modified));
        prepared.collections_started = prepared.collections_started.min(started);
    }

    fn push_image(&mut self, namespace: &str) {
        let Some(prepared) = self.prepared.remove(namespace) else {
            return;
        };
        for (digest, modified) in &prepared.blobs {
            if self.readable(namespace, digest) {
                continue;
            }
            // Only a collection started after the blob was readied, whose
            // cutoff reaches the link's age, may have taken it.
            let excused = self.cutoffs[prepared.collections_started as usize..]
                .iter()
                .any(|cutoff| cutoff > modified);
            assert!(
                excused,
                "a readied blob vanished: {namespace} {digest} (link written {modified})"
            );
            self.trace
                .push(format!("push {namespace}: {digest} gone, client starts over"));
            return;
        }
        let mut blobs = prepared.blobs.iter().map(|(digest, _)| digest.clone());
        let config = blobs.next().unwrap();
        let layers: Vec<String> = blobs
            .map(|digest| {
                format!(r#"{{"mediaType":"application/octet-stream","digest":"{digest}","size":7}}"#)
            })
            .collect();
        let subject = if self.rng.below(4) == 0 {
            let revisions = self.revisions(namespace);
            (!revisions.is_empty()).then(|| {
                revisions[self.rng.below(revisions.len() as u64) as usize]
                    .0
                    .clone()
            })
        } else {
            None
        };
        let subject_json = subject
            .as_ref()
            .map(|subject| format!(r#","subject":{{"mediaType":"{IMAGE}","digest":"{subject}","size":1}}"#))
            .unwrap_or_default();
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{IMAGE}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":7}},"layers":[{}]{subject_json},"annotations":{{"n":"{}"}}}}"#,
            layers.join(","),
            self.rng.below(1000)
        );
        self.put(namespace, IMAGE, body, subject);
    }

    fn push_index(&mut self, namespace: &str) {
        let revisions = self.revisions(namespace);
        if revisions.is_empty() {
            return;
        }
        let count = 1 + self.rng.below(2) as usize;
        let children: BTreeSet<Digest> = (0..count)
            .map(|_| {
                revisions[self.rng.below(revisions.len() as u64) as usize]
                    .0
                    .clone()
            })
            .collect();
        let entries: Vec<String> = children
            .iter()
            .map(|digest| format!(r#"{{"mediaType":"{IMAGE}","digest":"{digest}","size":1}}"#))
            .collect();
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[{}]}}"#,
            entries.join(",")
        );
        self.put(namespace, INDEX, body, None);
    }

    fn put(&mut self, namespace: &str, media_type: &str, body: String, subject: Option<Digest>) {
        let digest = Digest::sha256_of(body.as_bytes());
        let tags: Vec<String> = if self.rng.below(3) == 0 {
            Vec::new()
        } else {
            vec![self.pick(&TAGS).to_owned()]
        };
        let referrer = subject.map(|subject| (subject, serde_json::json!({ "digest": digest.to_string() })));
        let storage = self.registry.storage();
        storage
            .put_manifest(
                namespace,
                &digest,
                media_type,
                body.as_bytes(),
                &tags,
                referrer
                    .as_ref()
                    .map(|(subject, descriptor)| (subject, descriptor)),
            )
            .unwrap();
        for tag in tags {
            self.tags.insert((namespace.to_owned(), tag), digest.clone());
        }
        self.trace
            .push(format!("put {namespace} {digest} ({media_type})"));
    }

    /// Re-tags an existing manifest (a tag move).
    fn retag(&mut self, namespace: &str) {
        let revisions = self.revisions(namespace);
        if revisions.is_empty() {
            return;
        }
        let digest = revisions[self.rng.below(revisions.len() as u64) as usize]
            .0
            .clone();
        let Some((media_type, body)) = self.registry.storage().revision_body(namespace, &digest).unwrap()
        else {
            return;
        };
        let tag = self.pick(&TAGS).to_owned();
        self.registry
            .storage()
            .put_manifest(
                namespace,
                &digest,
                &media_type,
                &body,
                std::slice::from_ref(&tag),
                None,
            )
            .unwrap();
        self.tags
            .insert((namespace.to_owned(), tag.clone()), digest.clone());
        self.trace.push(format!("tag {namespace}:{tag} -> {digest}"));
    }

    fn delete_tag(&mut self, namespace: &str) {
        let tag = self.pick(&TAGS).to_owned();
        self.registry.storage().delete_tag(namespace, &tag).unwrap();
        self.tags.remove(&(namespace.to_owned(), tag.clone()));
        self.trace.push(format!("delete tag {namespace}:{tag}"));
    }

    /// Deletes a manifest no other manifest of the namespace needs as a child.
    fn delete_manifest(&mut self, namespace: &str) {
        let revisions = self.revisions(namespace);
        if revisions.is_empty() {
            return;
        }
        let digest = revisions[self.rng.below(revisions.len() as u64) as usize]
            .0
            .clone();
        let needed = revisions.iter().any(|(_, _, parsed)| {
            parsed
                .as_ref()
                .is_some_and(|parsed| parsed.manifests.iter().any(|child| child.digest == digest))
        });
        if needed {
            return;
        }
        self.registry
            .storage()
            .delete_manifest(namespace, &digest)
            .unwrap();
        self.tags
            .retain(|(ns, _), target| !(ns == namespace && *target == digest));
        self.trace.push(format!("delete manifest {namespace} {digest}"));
    }

    /// Deletes a blob link no manifest of the namespace references.
    fn delete_blob(&mut self, namespace: &str) {
        let links = self.links(namespace);
        if links.is_empty() {
            return;
        }
        let digest = links[self.rng.below(links.len() as u64) as usize].0.clone();
        let referenced = self.revisions(namespace).iter().any(|(_, _, parsed)| {
            parsed
                .as_ref()
                .is_some_and(|parsed| parsed.blobs.iter().any(|blob| blob.digest == digest))
        });
        if referenced {
            return;
        }
        self.registry.storage().delete_blob(namespace, &digest).unwrap();
        if let Some(prepared) = self.prepared.get_mut(namespace) {
            prepared.blobs.retain(|(blob, _)| *blob != digest);
            if prepared.blobs.is_empty() {
                self.prepared.remove(namespace);
            }
        }
        self.trace.push(format!("delete blob {namespace} {digest}"));
    }

    // ---- the collector ----------------------------------------------------

    fn start_collection(&mut self) {
        let collector = Collector::new(self.registry.storage_mut(), self.clock_secs, GRACE_SECS);
        self.cutoffs.push(self.clock_secs.saturating_sub(GRACE_SECS));
        self.collector = Some(collector);
        self.trace.push(format!(
            "collection {} starts at {}",
            self.cutoffs.len(),
            self.clock_secs
        ));
    }

    fn collect_slice(&mut self, budget: usize) {
        if self.collector.is_none() {
            self.start_collection();
        }
        let collector = self.collector.as_mut().unwrap();
        let progress = collector.step(self.registry.storage_mut(), budget);
        self.pending.extend(collector.take_deletions());
        if progress == Progress::Done {
            self.collector = None;
            self.trace.push("collection done".into());
        }
    }

    fn removal(deletion: Deletion) -> Commit {
        Commit::Remove {
            name: deletion.namespace,
            target: Removal::Manifest {
                digest: deletion.digest,
                parents: deletion.parents,
                former_tags: Vec::new(),
            },
            epoch: deletion.epoch,
        }
    }

    /// Makes (or, as a vetoing webhook would, drops) the oldest pending removal.
    fn settle_removal(&mut self, refuse: bool) {
        let Some(deletion) = self.pending.pop_front() else {
            return;
        };
        self.trace.push(format!(
            "removal {} {} {}",
            deletion.namespace,
            deletion.digest,
            if refuse { "refused" } else { "applied" }
        ));
        if !refuse {
            let _ = self.registry.apply(Self::removal(deletion));
        }
    }

    fn crash(&mut self) {
        self.trace.push("crash".into());
        self.collector = None;
        self.pending.clear();
        self.registry = open(self.dir.path());
    }

    /// Two collections in a row with nothing in between, removals made at
    /// once: nothing unreachable older than the grace period may remain.
    fn quiesce(&mut self) {
        while !self.pending.is_empty() {
            self.settle_removal(false);
        }
        if self.rng.below(2) == 0 {
            self.clock_secs = real_now_secs() + GRACE_SECS + 1;
        }
        self.collector = None;
        for _ in 0..2 {
            self.start_collection();
            while self.collector.is_some() {
                let budget = 1 + self.rng.below(64) as usize;
                self.collect_slice(budget);
                while !self.pending.is_empty() {
                    self.settle_removal(false);
                }
            }
            self.registry.storage_mut().take_discarded();
        }
        let cutoff = *self.cutoffs.last().unwrap();
        self.trace.push(format!("quiesced, cutoff {cutoff}"));
        let mut referenced_content: HashSet<Digest> = HashSet::new();
        for namespace in NAMESPACES {
            let revisions = self.revisions(namespace);
            let tags = self.disk_tags(namespace);
            let mut live: HashSet<Digest> = HashSet::new();
            let mut pending: Vec<Digest> = revisions
                .iter()
                .filter(|(digest, modified, _)| {
                    let has_referrers = revisions.iter().any(|(_, _, parsed)| {
                        parsed
                            .as_ref()
                            .and_then(|parsed| parsed.subject.as_ref())
                            .is_some_and(|subject| subject.digest == *digest)
                    });
                    *modified >= cutoff || has_referrers || tags.values().any(|target| target == digest)
                })
                .map(|(digest, _, _)| digest.clone())
                .collect();
            while let Some(digest) = pending.pop() {
                if !live.insert(digest.clone()) {
                    continue;
                }
                for (other, _, parsed) in &revisions {
                    let Some(parsed) = parsed else { continue };
                    if *other == digest {
                        pending.extend(parsed.manifests.iter().map(|child| child.digest.clone()));
                    }
                    if parsed
                        .subject
                        .as_ref()
                        .is_some_and(|subject| subject.digest == digest)
                    {
                        pending.push(other.clone());
                    }
                }
            }
            let mut referenced: HashSet<Digest> = HashSet::new();
            for (digest, modified, parsed) in &revisions {
                assert!(
                    live.contains(digest),
                    "{namespace}: unreachable manifest {digest} (written {modified}) survived two collections"
                );
                referenced.insert(digest.clone());
                if let Some(parsed) = parsed {
                    referenced.extend(parsed.blobs.iter().map(|blob| blob.digest.clone()));
                    referenced.extend(parsed.manifests.iter().map(|child| child.digest.clone()));
                }
            }
            for (digest, modified) in self.links(namespace) {
                assert!(
                    referenced.contains(&digest) || modified >= cutoff,
                    "{namespace}: unreferenced link {digest} (written {modified}) survived two collections"
                );
                referenced_content.insert(digest);
            }
            referenced_content.extend(referenced);
        }
        for path in Self::files_under(&self.root().join("blobs")) {
            let digest = Self::digest_of_path(&path);
            let modified = Self::mtime(&path).unwrap_or(0);
            assert!(
                referenced_content.contains(&digest) || modified >= cutoff,
                "unreferenced content {digest} (written {modified}) survived two collections"
            );
        }
    }

    // ---- the invariants after every step ----------------------------------

    fn check_invariants(&self) {
        for ((namespace, tag), digest) in &self.tags {
            let on_disk = self.disk_tags(namespace);
            assert_eq!(
                on_disk.get(tag),
                Some(digest),
                "tag {namespace}:{tag} lost or moved"
            );
        }
        for namespace in NAMESPACES {
            let revisions = self.revisions(namespace);
            let present: HashSet<&Digest> = revisions.iter().map(|(digest, _, _)| digest).collect();
            for (digest, _, parsed) in &revisions {
                let parsed = parsed
                    .as_ref()
                    .unwrap_or_else(|| panic!("{namespace}: manifest {digest} lost its body"));
                for blob in &parsed.blobs {
                    assert!(
                        self.readable(namespace, &blob.digest),
                        "{namespace}: manifest {digest} lost blob {}",
                        blob.digest
                    );
                }
                for child in &parsed.manifests {
                    assert!(
                        present.contains(&child.digest),
                        "{namespace}: index {digest} lost child {}",
                        child.digest
                    );
                }
            }
        }
    }

    fn step(&mut self) {
        let namespace = self.pick(&NAMESPACES);
        match self.rng.below(100) {
            0..=14 => self.upload(namespace),
            15..=19 => self.mount(namespace),
            20..=24 => self.head(namespace),
            25..=36 => self.push_image(namespace),
            37..=40 => self.push_index(namespace),
            41..=45 => self.retag(namespace),
            46..=50 => self.delete_tag(namespace),
            51..=54 => self.delete_manifest(namespace),
            55..=57 => self.delete_blob(namespace),
            58..=79 => {
                let budget = 1 + self.rng.below(40) as usize;
                self.collect_slice(budget);
            }
            80..=87 => {
                let refuse = self.rng.below(5) == 0;
                self.settle_removal(refuse);
            }
            88..=89 => self.crash(),
            90..=96 => {
                // Jumps both ways; forward ones age everything past the grace.
                let jump = self.rng.below(4 * GRACE_SECS) as i64 - GRACE_SECS as i64;
                self.clock_secs = self.clock_secs.saturating_add_signed(jump);
                self.trace.push(format!("clock {}", self.clock_secs));
            }
            _ => self.quiesce(),
        }
    }
}

fn run_seed(seed: u64, steps: usize) {
    let mut sim = Sim::new(seed);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for _ in 0..steps {
            sim.step();
            sim.check_invariants();
        }
        sim.quiesce();
        sim.check_invariants();
    }));
    if let Err(panic) = outcome {
        let tail: Vec<&String> = sim.trace.iter().rev().take(40).collect();
        eprintln!("gc simulation failed with SEED={seed}; last steps, newest first:");
        for line in tail {
            eprintln!("  {line}");
        }
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn collections_never_take_what_clients_need_and_free_the_rest() {
    if let Ok(seed) = std::env::var("SEED") {
        let seed: u64 = seed.parse().expect("SEED is a number");
        run_seed(seed, 300);
        return;
    }
    let seeds: u64 = std::env::var("GC_SIMULATION_SEEDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(150);
    let base = real_now_secs();
    println!("gc simulation: {seeds} seeds from {base} (replay one with SEED=)");
    for offset in 0..seeds {
        run_seed(base.wrapping_mul(1_000_003).wrapping_add(offset), 300);
    }
}
