//! Garbage collection on the bucket, by one replica at a time, safe while
//! the others push.
//!
//! **The lease.** `_leases/maintenance` names the replica that collects and
//! until when. A replica collects only when the lease is absent, expired or
//! its own; it writes the lease create-once (`If-None-Match: *`) when it was
//! absent, so on a bucket that honours that only one of two replicas
//! starting together gets it; the other says who holds it and waits. (Garage
//! 2.5 ignores the condition: two replicas starting in the same instant may
//! then both collect, which costs work, not data: see below.)
//!
//! **What goes.** Content (`blobs/`) that no repository links and no
//! repository holds as a manifest, last written more than the grace period
//! ago; and upload sessions untouched for the grace period (their multipart
//! upload aborted). Links and manifests are not removed here: links go only
//! by the API's `DELETE`, so any link created while the collection runs is
//! either to content just written (pushes write content again even when it
//! is there, so it is younger than the grace period) or made by a mount from
//! a repository whose link the collection saw (a mount needs one). Either
//! way the content is kept: no watch over the other replicas' requests is
//! needed, and two collections at once remove nothing the other would keep.
//! What is left is the instant between the listing of `blobs/` and a
//! removal: a push of the very bytes being removed, landing then, finds its
//! content gone when it checks after linking, and fails (the client pushes
//! again) instead of answering for a missing blob.

use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;

use super::scan::trailing_digest;
use super::{BucketError, BucketStore, Result, all, layout};
use crate::digest::Digest;

/// What one collection saw and removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collected {
    pub namespaces: u64,
    pub contents: u64,
    pub contents_removed: u64,
    pub bytes_removed: u64,
    /// Unreferenced content still within the grace period.
    pub bytes_reclaimable: u64,
    /// Content left after the run (or that would be, reporting only).
    pub bytes_kept: u64,
    pub sessions_removed: u64,
    /// Removals left for the next collection (at most `removals_max` a run).
    pub more: bool,
}

impl Collected {
    /// Adds a stretch's counts (`namespaces` and sessions aside).
    pub fn add(&mut self, stretch: &Collected) {
        self.contents += stretch.contents;
        self.contents_removed += stretch.contents_removed;
        self.bytes_removed += stretch.bytes_removed;
        self.bytes_reclaimable += stretch.bytes_reclaimable;
        self.bytes_kept += stretch.bytes_kept;
        self.more |= stretch.more;
    }
}

/// Pages of `blobs/` (1,000 keys each) one sweep request reads.
pub const CONTENT_PAGES_PER_RUN: usize = 10;

/// How a sweep judges what it lists: at `now` (unix seconds), what is older
/// than the grace period may go; `report_only` counts instead of removing.
#[derive(Debug, Clone, Copy)]
pub struct SweepRules {
    pub now: u64,
    pub grace_secs: u64,
    pub report_only: bool,
}

impl SweepRules {
    fn old_enough(&self, modified: u64) -> bool {
        modified.saturating_add(self.grace_secs) <= self.now
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Collection {
    Done(Collected),
    /// Another replica holds the lease until `expires` (unix seconds).
    Elsewhere {
        owner: String,
        expires: u64,
    },
}

/// The lease's content.
fn lease_body(owner: &str, expires: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "owner": owner, "expires": expires })).unwrap_or_default()
}

fn parse_lease(bytes: &[u8]) -> Option<(String, u64)> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    Some((value["owner"].as_str()?.to_string(), value["expires"].as_u64()?))
}

/// The digest of a key under `blobs/<alg>/<xx>/<hex>`.
fn content_digest(key: &str) -> Option<Digest> {
    let mut parts = key.strip_prefix("blobs/")?.split('/');
    let (algorithm, _, hex) = (parts.next()?, parts.next()?, parts.next()?);
    Digest::parse(&format!("{algorithm}:{hex}")).ok()
}

impl BucketStore {
    /// One collection as replica `me` at `now` (unix seconds): a run of a
    /// request (it waits and runs again like the others). `lease_secs`:
    /// how long the lease holds; `removals_max`: removals this run makes.
    pub fn collect(
        &self,
        me: &str,
        now: u64,
        grace_secs: u64,
        lease_secs: u64,
        removals_max: usize,
    ) -> Result<Collection> {
        if let Some((owner, expires)) = self.take_lease(me, now, lease_secs)? {
            return Ok(Collection::Elsewhere { owner, expires });
        }
        let collected = self.sweep(now, grace_secs, removals_max, false, &|_| false)?;
        self.give_back_lease()?;
        Ok(Collection::Done(collected))
    }

    /// Takes (or renews) the maintenance lease for replica `me` until
    /// `now + lease_secs`; `Some((owner, expires))` when another replica
    /// holds it.
    pub fn take_lease(&self, me: &str, now: u64, lease_secs: u64) -> Result<Option<(String, u64)>> {
        let lease = self.objects.get(layout::MAINTENANCE_LEASE, false)?;
        let held = lease.as_deref().and_then(parse_lease);
        if let Some((owner, expires)) = &held
            && owner != me
            && *expires > now
        {
            return Ok(Some((owner.clone(), *expires)));
        }
        let taken = self.objects.put(
            layout::MAINTENANCE_LEASE,
            Rc::from(lease_body(me, now + lease_secs)),
            lease.is_none(),
        )?;
        if !taken {
            // There already: another replica's, created between our read
            // and our write, or ours, by an attempt whose answer was lost.
            let again = self
                .objects
                .get_again(layout::MAINTENANCE_LEASE, "the lease, taken?")?;
            match again.as_deref().and_then(parse_lease) {
                Some((owner, _)) if owner == me => {}
                Some((owner, expires)) => return Ok(Some((owner, expires))),
                None => return Ok(Some(("another replica".into(), now + lease_secs))),
            }
        }
        Ok(None)
    }

    /// Gives the maintenance lease back (the holder's work is done).
    pub fn give_back_lease(&self) -> Result<()> {
        self.objects.delete(layout::MAINTENANCE_LEASE)?;
        Ok(())
    }

    /// Removes content nothing references and idle upload sessions (at most
    /// `removals_max`), under the lease; `report_only`: counts them instead.
    /// `kept`: content the caller keeps besides what links and revisions
    /// name (what manifests reference, and content whose link this
    /// collection removed: it goes next time, once a push that raced the
    /// removal has put its link back). One request; a job spreads the same
    /// steps over several (`maintenance::bucket`).
    pub fn sweep(
        &self,
        now: u64,
        grace_secs: u64,
        removals_max: usize,
        report_only: bool,
        kept: &dyn Fn(&Digest) -> bool,
    ) -> Result<Collected> {
        let rules = SweepRules {
            now,
            grace_secs,
            report_only,
        };
        let (namespaces, referenced) = self.referenced_content()?;
        let keeps = |digest: &Digest| referenced.contains(digest) || kept(digest);
        let mut collected = Collected {
            namespaces,
            ..Collected::default()
        };
        let mut after: Option<String> = None;
        loop {
            let left = removals_max.saturating_sub(collected.contents_removed as usize);
            let (stretch, next) = self.sweep_content(&rules, &keeps, after.as_deref(), left)?;
            collected.add(&stretch);
            match next {
                Some(next) if !stretch.more => after = Some(next),
                _ => break,
            }
        }
        let left = removals_max.saturating_sub(collected.contents_removed as usize);
        collected.sessions_removed = self.sweep_sessions(&rules, left)?;
        Ok(collected)
    }

    /// What every repository links or holds as a manifest, and how many
    /// repositories there are. Content named here when it is listed stays
    /// named while a collection runs: a new reference to old content needs
    /// one already there (a mount), and new content is young.
    pub fn referenced_content(&self) -> Result<(u64, HashSet<Digest>)> {
        let catalog = self.objects.list(layout::CATALOG)?;
        let namespaces: Vec<&str> = catalog
            .iter()
            .filter_map(|object| layout::namespace_of_catalog_entry(&object.key))
            .collect();
        // Every link and every manifest of every repository, read together.
        let prefixes: Vec<String> = namespaces
            .iter()
            .flat_map(|namespace| {
                let repository = layout::repository(namespace);
                [
                    format!("{repository}_layers/"),
                    format!("{repository}_manifests/revisions/"),
                ]
            })
            .collect();
        let listings = all(&prefixes, |prefix| {
            self.objects.list(prefix).map_err(BucketError::from)
        })?;
        let referenced = listings
            .iter()
            .flat_map(|listing| listing.iter())
            .filter_map(|object| trailing_digest(&object.key))
            .collect();
        Ok((namespaces.len() as u64, referenced))
    }

    /// One stretch of the content (`CONTENT_PAGES_PER_RUN` pages) after key
    /// `after`: removes what nothing `keeps` and `rules` let go, at most
    /// `removals_max`. Returns its counts and the key to go on after (`None`
    /// at the end; `more` set when it stopped at `removals_max`).
    pub fn sweep_content(
        &self,
        rules: &SweepRules,
        keeps: &dyn Fn(&Digest) -> bool,
        after: Option<&str>,
        removals_max: usize,
    ) -> Result<(Collected, Option<String>)> {
        let mut collected = Collected::default();
        let (contents, more) = self.objects.list_from("blobs/", after, CONTENT_PAGES_PER_RUN)?;
        let next = more
            .then(|| contents.last().map(|object| object.key.clone()))
            .flatten();
        let mut removals = Vec::new();
        for object in contents.iter() {
            collected.contents += 1;
            let Some(digest) = content_digest(&object.key) else {
                continue;
            };
            if keeps(&digest) {
                collected.bytes_kept += object.size;
                continue;
            }
            if !rules.old_enough(object.modified) {
                collected.bytes_kept += object.size;
                collected.bytes_reclaimable += object.size;
                continue;
            }
            if removals.len() == removals_max {
                collected.more = true;
                break;
            }
            removals.push((object.key.clone(), object.size, object.modified));
        }
        if rules.report_only {
            collected.contents_removed = removals.len() as u64;
            collected.bytes_removed = removals.iter().map(|(_, size, _)| size).sum();
            return Ok((collected, next));
        }
        for (key, size, listed_modified) in &removals {
            // Looked at again just before: a push may have written the same
            // content since the listing (and be about to link it).
            match self.objects.stat(key)? {
                Some((_, modified)) if modified == *listed_modified => {}
                _ => {
                    collected.bytes_kept += size;
                    continue;
                }
            }
            self.objects.delete(key)?;
            collected.contents_removed += 1;
            collected.bytes_removed += size;
        }
        Ok((collected, next))
    }

    /// Removes upload sessions every object of which is untouched for the
    /// grace period (at most `removals_max`); how many (or would be).
    pub fn sweep_sessions(&self, rules: &SweepRules, removals_max: usize) -> Result<u64> {
        let uploads = self.objects.list(layout::UPLOADS)?;
        let mut sessions: BTreeMap<&str, bool> = BTreeMap::new();
        for object in uploads.iter() {
            let Some(id) = object
                .key
                .strip_prefix(layout::UPLOADS)
                .and_then(|rest| rest.split('/').next())
            else {
                continue;
            };
            let idle = sessions.entry(id).or_insert(true);
            *idle &= rules.old_enough(object.modified);
        }
        let abandoned: Vec<&str> = sessions
            .into_iter()
            .filter(|(_, idle)| *idle)
            .map(|(id, _)| id)
            .take(removals_max)
            .collect();
        if rules.report_only {
            return Ok(abandoned.len() as u64);
        }
        for id in &abandoned {
            let open = self
                .objects
                .get(&layout::upload_state(id), false)?
                .and_then(|bytes| super::uploads::Session::decode(&bytes))
                .and_then(|session| session.upload_id);
            self.remove_session(id, open.as_deref())?;
        }
        Ok(abandoned.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::super::objects::Holder;
    use super::super::testing::{Rig, UNIX_SECS, run, seeded};
    use super::*;
    use crate::s3::fake::Faults;

    const GRACE: u64 = 3600;

    fn replica(seed: u64) -> BucketStore {
        super::super::testing::replica(seed, 5 << 20)
    }

    fn put(
        rig: &mut Rig,
        store: &BucketStore,
        holder: Holder,
        namespace: &str,
        content: &[u8],
        tag: &str,
    ) -> Digest {
        let digest = Digest::sha256_of(content);
        rig.fake.objects.insert(layout::blob(&digest), content.to_vec());
        rig.fake.modified.insert(layout::blob(&digest), rig.fake.now_secs);
        run(rig, store, holder, |s| {
            s.put_manifest(namespace, &digest, "t", content, &[tag.to_string()], None)
        })
        .unwrap();
        digest
    }

    #[test]
    fn old_unreferenced_content_and_idle_sessions_go_and_the_rest_stays() {
        let mut rig = Rig::new(Faults::default(), 1);
        let a = replica(1);
        let kept = put(&mut rig, &a, (1, 1), "n", b"manifest", "v1");
        let linked = Digest::sha256_of(b"layer");
        rig.fake.objects.insert(layout::blob(&linked), b"layer".to_vec());
        run(&mut rig, &a, (1, 2), |s| s.link_blob("n", &linked)).unwrap();
        let orphan = Digest::sha256_of(b"orphan");
        rig.fake.objects.insert(layout::blob(&orphan), b"orphan".to_vec());
        rig.fake.modified.insert(layout::blob(&orphan), rig.fake.now_secs);
        run(&mut rig, &a, (1, 3), |s| s.start_upload("n", "idle")).unwrap();
        // Later: a young orphan and a young session.
        rig.fake.now_secs += 2 * GRACE;
        let young = Digest::sha256_of(b"young");
        rig.fake.objects.insert(layout::blob(&young), b"young".to_vec());
        rig.fake.modified.insert(layout::blob(&young), rig.fake.now_secs);
        run(&mut rig, &a, (1, 4), |s| s.start_upload("n", "busy")).unwrap();
        let now = rig.fake.now_secs;
        let done = run(&mut rig, &a, (9, 1), |s| s.collect("a", now, GRACE, 600, 100)).unwrap();
        let Collection::Done(collected) = done else {
            panic!("{done:?}")
        };
        assert_eq!(collected.contents_removed, 1, "{collected:?}");
        assert_eq!(collected.sessions_removed, 1, "{collected:?}");
        assert_eq!(collected.bytes_reclaimable, 5);
        let objects = &rig.fake.objects;
        assert!(!objects.contains_key(&layout::blob(&orphan)));
        for digest in [&kept, &linked, &young] {
            assert!(objects.contains_key(&layout::blob(digest)));
        }
        assert!(!objects.contains_key(&layout::upload_state("idle")));
        assert!(objects.contains_key(&layout::upload_state("busy")));
        assert!(
            !objects.contains_key(layout::MAINTENANCE_LEASE),
            "the lease is given back"
        );
    }

    #[test]
    fn a_second_replica_waits_while_the_lease_is_held_and_takes_it_once_expired() {
        let mut rig = Rig::new(Faults::default(), 1);
        let (a, b) = (replica(1), replica(2));
        let now = rig.fake.now_secs;
        rig.fake
            .objects
            .insert(layout::MAINTENANCE_LEASE.into(), lease_body("a", now + 600));
        let waiting = run(&mut rig, &b, (2, 1), |s| s.collect("b", now, GRACE, 600, 100)).unwrap();
        assert_eq!(
            waiting,
            Collection::Elsewhere {
                owner: "a".into(),
                expires: now + 600
            }
        );
        let own = run(&mut rig, &a, (1, 1), |s| s.collect("a", now, GRACE, 600, 100)).unwrap();
        assert!(
            matches!(own, Collection::Done(_)),
            "its own lease does not stop it"
        );
        rig.fake
            .objects
            .insert(layout::MAINTENANCE_LEASE.into(), lease_body("a", now + 600));
        let later = now + 601;
        let taken = run(&mut rig, &b, (2, 2), |s| s.collect("b", later, GRACE, 600, 100)).unwrap();
        assert!(
            matches!(taken, Collection::Done(_)),
            "an expired lease is taken over"
        );
    }

    /// A seeded simulation of two replicas on one bucket: pushes, uploads
    /// of content that may be an old orphan, mounts, deletes and collections
    /// through both, interleaved run by run (several requests in flight at
    /// once), with throttling and lost answers. Whatever a repository links
    /// or holds as a manifest always has its content, and orphans old
    /// enough go.
    #[test]
    fn two_replicas_pushing_and_collecting_interleaved_never_lose_what_is_referenced() {
        type Operation = Box<dyn Fn(&BucketStore) -> Result<()>>;
        for seed in 1..24u64 {
            let mut rig = Rig::faulty(100, 80, seed);
            let replicas = [replica(seed), replica(seed + 100)];
            let mut next = seeded(seed);
            // (replica, holder, arrived, operation) in flight.
            let mut active: Vec<(usize, Holder, u64, Operation)> = Vec::new();
            let mut started = 0u64;
            for step in 0..400u64 {
                if active.len() < 4 && started < 120 && next(2) == 0 {
                    started += 1;
                    let namespace = format!("ns{}", next(3));
                    let operation: Operation = match next(6) {
                        0 | 1 => {
                            let body = format!("manifest {}", next(6)).into_bytes();
                            let tag = format!("t{}", next(4));
                            Box::new(move |s: &BucketStore| {
                                let digest = Digest::sha256_of(&body);
                                s.put_manifest(
                                    &namespace,
                                    &digest,
                                    "t",
                                    &body,
                                    std::slice::from_ref(&tag),
                                    None,
                                )
                            })
                        }
                        2 => {
                            // An upload: the content (maybe an old orphan) then its link.
                            let body = format!("layer {}", next(6)).into_bytes();
                            Box::new(move |s: &BucketStore| {
                                let digest = Digest::sha256_of(&body);
                                s.objects
                                    .put(&layout::blob(&digest), Rc::from(&body[..]), false)?;
                                s.objects.put(
                                    &layout::layer_link(&namespace, &digest),
                                    Rc::from(&b""[..]),
                                    false,
                                )?;
                                if !s.objects.exists_again(&layout::blob(&digest), "there?")? {
                                    return Err(BucketError::Unavailable("removed meanwhile".into()));
                                }
                                Ok(())
                            })
                        }
                        3 => {
                            // A mount: only from a repository that links it.
                            let body = format!("layer {}", next(6)).into_bytes();
                            let from = format!("ns{}", next(3));
                            Box::new(move |s: &BucketStore| {
                                let digest = Digest::sha256_of(&body);
                                if s.blob_size(&from, &digest)?.is_some() {
                                    s.link_blob(&namespace, &digest)?;
                                }
                                Ok(())
                            })
                        }
                        4 if next(2) == 0 => {
                            let body = format!("layer {}", next(6)).into_bytes();
                            Box::new(move |s: &BucketStore| {
                                s.delete_blob(&namespace, &Digest::sha256_of(&body)).map(|_| ())
                            })
                        }
                        4 => {
                            let body = format!("manifest {}", next(6)).into_bytes();
                            Box::new(move |s: &BucketStore| {
                                s.delete_manifest(&namespace, &Digest::sha256_of(&body))
                                    .map(|_| ())
                            })
                        }
                        _ => {
                            let me = format!("r{}", next(2));
                            let now = rig.fake.now_secs;
                            Box::new(move |s: &BucketStore| s.collect(&me, now, GRACE, 600, 1000).map(|_| ()))
                        }
                    };
                    rig.now_ms += 1;
                    active.push((next(2) as usize, (1, started), rig.now_ms, operation));
                }
                // One run of each request in flight, then the bucket answers.
                active.retain(|(r, holder, arrived, operation)| {
                    let store = &replicas[*r];
                    store.objects().set_time(rig.now_ms, UNIX_SECS);
                    store.objects().enter(*holder, *arrived);
                    let result = operation(store);
                    store.objects().leave();
                    match result {
                        Err(BucketError::Pending) => true,
                        Err(BucketError::Unavailable(_)) | Ok(()) => {
                            store.objects().release(*holder);
                            false
                        }
                        Err(other) => panic!("seed {seed} step {step}: {other}"),
                    }
                });
                for store in &replicas {
                    rig.pump(store.objects());
                    store.objects().take_woken();
                }
                rig.fake.now_secs += next(GRACE / 20);
                // Every referenced digest's content is there, unless the
                // request that links it is still in flight or failed
                // saying so (it is then not acknowledged).
                if active.is_empty() {
                    let referenced: Vec<Digest> = rig
                        .fake
                        .objects
                        .keys()
                        .filter(|key| key.contains("/_manifests/revisions/"))
                        .filter_map(|key| trailing_digest(key))
                        .collect();
                    for digest in referenced {
                        assert!(
                            rig.fake.objects.contains_key(&layout::blob(&digest)),
                            "seed {seed} step {step}: manifest {digest} lost its content"
                        );
                    }
                }
            }
            assert!(active.is_empty(), "seed {seed}: requests never answered");
            // A collection long after removes every orphan and nothing else.
            rig.fake.now_secs += 2 * GRACE;
            let now = rig.fake.now_secs;
            let store = &replicas[0];
            let last = run(&mut rig, store, (7, 1), |s| {
                s.collect("r0", now, GRACE, 600, 1000)
            })
            .unwrap();
            assert!(matches!(last, Collection::Done(_)), "seed {seed}: {last:?}");
            let keys: Vec<&String> = rig.fake.objects.keys().collect();
            let referenced: HashSet<Digest> = keys
                .iter()
                .filter(|key| key.contains("/_layers/") || key.contains("/_manifests/revisions/"))
                .filter_map(|key| trailing_digest(key))
                .collect();
            for key in keys.iter().filter(|key| key.starts_with("blobs/")) {
                let digest = content_digest(key).unwrap();
                assert!(referenced.contains(&digest), "seed {seed}: orphan {key} left");
            }
        }
    }
}
