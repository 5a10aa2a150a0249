//! Reading one namespace for a maintenance job, a bounded piece per call:
//! its revisions (with when each was written), its tags, and from each
//! manifest body what it references, its children (an index's manifests)
//! and its subject. Garbage collection and retention both decide from this.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::digest::Digest;
use crate::registry::manifest;
use crate::storage::Storage;
use crate::storage::bucket::scan::{FoundManifest, NamespaceContents};
use crate::storage::walk::{DigestFile, DigestWalk, TagFile, TagWalk};

pub struct NamespaceScan {
    pub name: String,
    /// The namespace's manifest epoch when the scan began: a decision is
    /// stale once it moved (`Storage::manifest_epoch`).
    pub epoch: u64,
    stage: Stage,
    pub revisions: Vec<DigestFile>,
    /// Index into `revisions` of the next body to read.
    next_body: usize,
    /// On a bucket: manifests read and not parsed yet (`parse_bodies`).
    unparsed: VecDeque<FoundManifest>,
    pub tags: Vec<(TagFile, Digest)>,
    pub tagged: HashSet<Digest>,
    /// Per revision: the child manifests of an index.
    pub children: HashMap<Digest, Vec<Digest>>,
    /// Per subject: its referrers.
    pub referrers: HashMap<Digest, Vec<Digest>>,
    /// Content keys (`storage::watch_content_key`) the revisions are or reference.
    pub kept: HashSet<u64>,
    /// Something could not be read or parsed: judge nothing here.
    pub keep_all: bool,
    /// A manifest body did not parse: what it references is unknown.
    pub unparseable: bool,
    pub errors: u64,
}

enum Stage {
    Revisions(DigestWalk),
    Tags(TagWalk),
    Bodies,
    Done,
}

impl NamespaceScan {
    pub fn new(storage: &Storage, name: String) -> Box<NamespaceScan> {
        let epoch = storage.manifest_epoch(&name);
        let stage = Stage::Revisions(storage.revision_walk(&name));
        NamespaceScan::starting(name, epoch, stage)
    }

    fn starting(name: String, epoch: u64, stage: Stage) -> Box<NamespaceScan> {
        Box::new(NamespaceScan {
            epoch,
            stage,
            name,
            revisions: Vec::new(),
            next_body: 0,
            unparsed: VecDeque::new(),
            tags: Vec::new(),
            tagged: HashSet::new(),
            children: HashMap::new(),
            referrers: HashMap::new(),
            kept: HashSet::new(),
            keep_all: false,
            unparseable: false,
            errors: 0,
        })
    }

    /// A namespace read whole from the bucket (`storage::bucket::scan`),
    /// its bodies parsed.
    pub fn of_bucket(name: String, epoch: u64, contents: NamespaceContents) -> Box<NamespaceScan> {
        let mut scan = NamespaceScan::reading_bucket(name, epoch, contents);
        scan.parse_bodies(usize::MAX);
        scan
    }

    /// The same with its bodies still to parse, a share at a time
    /// (`parse_bodies`), so a large namespace does not hold the loop.
    pub fn reading_bucket(name: String, epoch: u64, contents: NamespaceContents) -> Box<NamespaceScan> {
        let mut scan = NamespaceScan::starting(name, epoch, Stage::Done);
        scan.tagged = contents.tags.iter().map(|(_, digest)| digest.clone()).collect();
        scan.tags = contents.tags;
        scan.unparsed = contents.revisions.into();
        scan
    }

    /// Parses at most `left` of the bodies read from the bucket: `true`
    /// once none is left (or one made the namespace unjudgeable).
    pub fn parse_bodies(&mut self, left: usize) -> bool {
        for _ in 0..left {
            if self.keep_all {
                self.unparsed.clear();
            }
            let Some(found) = self.unparsed.pop_front() else {
                return true;
            };
            let digest = found.file.digest.clone();
            self.revisions.push(found.file);
            self.note_body(
                &digest,
                found.body.map(|(media_type, body)| (media_type, body.to_vec())),
            );
        }
        if self.keep_all {
            self.unparsed.clear();
        }
        self.unparsed.is_empty()
    }

    /// Reads on, spending `left` (directory entries and files read);
    /// `true` once everything is read.
    pub fn step(&mut self, storage: &Storage, left: &mut usize) -> bool {
        while *left > 0 {
            let stage = std::mem::replace(&mut self.stage, Stage::Done);
            self.stage = match stage {
                Stage::Revisions(mut walk) => {
                    let entries = (*left).min(64);
                    *left -= entries;
                    match walk.step(entries) {
                        Ok(found) => self.revisions.extend(found),
                        Err(error) => self.fail("reading revisions", &error),
                    }
                    if walk.is_done() || self.keep_all {
                        Stage::Tags(storage.tag_walk(&self.name))
                    } else {
                        Stage::Revisions(walk)
                    }
                }
                Stage::Tags(mut walk) => {
                    let tags = (*left).min(64);
                    *left -= tags;
                    match walk.step(tags) {
                        Ok(targets) => {
                            self.tagged
                                .extend(targets.iter().map(|(_, digest)| digest.clone()));
                            self.tags.extend(targets);
                        }
                        Err(error) => self.fail("reading tags", &error),
                    }
                    if walk.is_done() || self.keep_all {
                        Stage::Bodies
                    } else {
                        Stage::Tags(walk)
                    }
                }
                Stage::Bodies => {
                    while *left > 0 && self.next_body < self.revisions.len() {
                        *left -= 1;
                        let digest = self.revisions[self.next_body].digest.clone();
                        self.next_body += 1;
                        self.read_body(storage, &digest);
                    }
                    if self.next_body < self.revisions.len() {
                        Stage::Bodies
                    } else {
                        Stage::Done
                    }
                }
                Stage::Done => {
                    self.stage = Stage::Done;
                    return true;
                }
            };
        }
        matches!(self.stage, Stage::Done)
    }

    pub fn fail(&mut self, what: &str, error: &std::io::Error) {
        log::warn!(target: "angos::maintenance", "{}: {what}: {error}; nothing is removed there", self.name);
        self.errors += 1;
        self.keep_all = true;
    }

    /// Reads one revision's body: what it references, its children and subject.
    fn read_body(&mut self, storage: &Storage, digest: &Digest) {
        match storage.revision_body(&self.name, digest) {
            Ok(found) => self.note_body(digest, found),
            Err(error) => {
                self.kept.insert(crate::storage::watch_content_key(digest));
                self.fail("reading a manifest", &error)
            }
        }
    }

    /// What one revision's body keeps: its content, what it references,
    /// its children and subject. `None`: removed since the listing, or its
    /// body is quarantined: nothing to keep for it beyond itself.
    fn note_body(&mut self, digest: &Digest, found: Option<(String, Vec<u8>)>) {
        self.kept.insert(crate::storage::watch_content_key(digest));
        let Some((media_type, body)) = found else {
            return;
        };
        let parsed = match manifest::parse(&media_type, &body) {
            Ok(parsed) => parsed,
            Err(error) => {
                // Its references are unknown, so none of its namespace's
                // links, and no content at all, may be judged unreferenced.
                log::warn!(target: "angos::maintenance", "{}@{digest}: {error}; nothing is removed there", self.name);
                self.errors += 1;
                self.unparseable = true;
                self.keep_all = true;
                return;
            }
        };
        for blob in &parsed.blobs {
            self.kept.insert(crate::storage::watch_content_key(&blob.digest));
        }
        let mut children = Vec::new();
        for child in &parsed.manifests {
            self.kept.insert(crate::storage::watch_content_key(&child.digest));
            children.push(child.digest.clone());
        }
        if let Some(subject) = &parsed.subject {
            self.referrers
                .entry(subject.digest.clone())
                .or_default()
                .push(digest.clone());
        }
        self.children.insert(digest.clone(), children);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(n: u32, body: &[u8]) -> FoundManifest {
        FoundManifest {
            file: DigestFile {
                digest: Digest::sha256_of(&n.to_le_bytes()),
                modified_secs: 1,
                size: body.len() as u64,
            },
            body: Some((
                "application/vnd.oci.image.manifest.v1+json".to_string(),
                body.into(),
            )),
        }
    }

    fn manifest(layer: u32) -> Vec<u8> {
        let layer = Digest::sha256_of(&layer.to_be_bytes());
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{layer}","size":1}},"layers":[]}}"#
        )
        .into_bytes()
    }

    #[test]
    fn a_bucket_namespace_is_parsed_a_share_at_a_time() {
        let contents = NamespaceContents {
            revisions: (0..10).map(|n| found(n, &manifest(n))).collect(),
            ..NamespaceContents::default()
        };
        let mut scan = NamespaceScan::reading_bucket("n".into(), 0, contents);
        assert!(!scan.parse_bodies(4));
        assert_eq!(scan.revisions.len(), 4);
        assert!(!scan.parse_bodies(4));
        assert_eq!(scan.revisions.len(), 8);
        assert!(scan.parse_bodies(4), "the last share ends it");
        assert_eq!(scan.revisions.len(), 10);
        let config = Digest::sha256_of(&9u32.to_be_bytes());
        assert!(scan.kept.contains(&crate::storage::watch_content_key(&config)));
    }

    #[test]
    fn an_unparseable_body_stops_the_parse_and_keeps_everything() {
        let mut revisions: Vec<FoundManifest> = (0..3).map(|n| found(n, &manifest(n))).collect();
        revisions.insert(1, found(99, b"not json"));
        let contents = NamespaceContents {
            revisions,
            ..NamespaceContents::default()
        };
        let mut scan = NamespaceScan::reading_bucket("n".into(), 0, contents);
        assert!(scan.parse_bodies(2), "nothing more is judged here");
        assert!(scan.keep_all && scan.unparseable);
        assert!(scan.parse_bodies(2));
        assert_eq!(scan.revisions.len(), 2);
    }
}
