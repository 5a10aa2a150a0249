//! What maintenance reads of a namespace on the bucket, and the removal it
//! decides, made safe against pushes through other replicas.
//!
//! A namespace is read whole in one run (`namespace_contents`): its
//! revisions with when each was written, its tags and their targets, the
//! manifests' bodies, and its pull times when retention wants them.
//! Garbage collection and retention decide from that exactly as they do on
//! the filesystem (`maintenance::scan`).
//!
//! **A removal against a racing push.** On the filesystem a removal is
//! refused when the namespace took a manifest write since it was decided
//! (its epoch moved); another replica's writes move no epoch here. So
//! `remove_unreferenced_manifest` looks for references itself, before and
//! again after it removes the revision, and puts the revision back when one
//! appeared; a push that tags a manifest reads its revision again after
//! writing the tags and writes it back when it is gone (`put_manifest`), and
//! one that lists children reads them again after its write
//! (`confirm_manifests`). Each side reads after its own write, so of a
//! removal and a push that meet, at least one sees the other.

use std::collections::HashMap;
use std::rc::Rc;

use super::{BucketError, BucketStore, Result, all, layout};
use crate::digest::Digest;
use crate::storage::manifests::{parse_revision, revision_text};
use crate::storage::walk::{DigestFile, TagFile};

/// A revision as maintenance reads it: when it was written, its media type
/// and body (`None`: the content is gone, or the revision is corrupt).
#[derive(Debug, Clone)]
pub struct FoundManifest {
    pub file: DigestFile,
    pub body: Option<(String, Rc<[u8]>)>,
}

/// One namespace, read for a maintenance decision.
#[derive(Debug, Clone, Default)]
pub struct NamespaceContents {
    pub revisions: Vec<FoundManifest>,
    pub tags: Vec<(TagFile, Digest)>,
    /// Its blob links, with when each was last written.
    pub links: Vec<DigestFile>,
    /// Last pulls (only when asked for; absent: never recorded).
    pub pulls: HashMap<Digest, u64>,
}

/// The digest a key ends with (`.../<alg>/<hex>`).
pub(super) fn trailing_digest(key: &str) -> Option<Digest> {
    let mut parts = key.rsplit('/');
    let (hex, algorithm) = (parts.next()?, parts.next()?);
    Digest::parse(&format!("{algorithm}:{hex}")).ok()
}

/// The child manifests an index body lists (none for anything else).
fn children_of(body: &[u8]) -> Vec<Digest> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let Some(manifests) = value.get("manifests").and_then(|list| list.as_array()) else {
        return Vec::new();
    };
    manifests
        .iter()
        .filter_map(|child| child.get("digest")?.as_str())
        .filter_map(|digest| Digest::parse(digest).ok())
        .collect()
}

/// The blobs a manifest body names as its config, layers or blobs: what
/// must stay linked in its namespace.
pub(super) fn blobs_of(body: &[u8]) -> Vec<Digest> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let listed = ["layers", "blobs"]
        .into_iter()
        .filter_map(|key| value.get(key)?.as_array())
        .flatten();
    value
        .get("config")
        .into_iter()
        .chain(listed)
        .filter_map(|descriptor| descriptor.get("digest")?.as_str())
        .filter_map(|digest| Digest::parse(digest).ok())
        .collect()
}

/// A tag object's target (`"<digest>\n"`).
pub(super) fn parse_tag(key: &str, bytes: &[u8]) -> Result<Digest> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| text.strip_suffix('\n'))
        .and_then(|text| Digest::parse(text).ok())
        .ok_or(BucketError::Corrupt {
            key: key.to_string(),
            why: "corrupt tag",
        })
}

impl BucketStore {
    /// Everything maintenance decides `namespace` from (`with_pulls`: its
    /// pull times too). A corrupt tag is an error: what it keeps is unknown.
    pub fn namespace_contents(&self, namespace: &str, with_pulls: bool) -> Result<NamespaceContents> {
        let revisions_prefix = format!("{}_manifests/revisions/", layout::repository(namespace));
        let tags_prefix = layout::tags(namespace);
        let pulls_prefix = format!("{}_manifests/pulls/", layout::repository(namespace));
        let links_prefix = format!("{}_layers/", layout::repository(namespace));
        let mut prefixes = vec![
            revisions_prefix.as_str(),
            tags_prefix.as_str(),
            links_prefix.as_str(),
        ];
        if with_pulls {
            prefixes.push(&pulls_prefix);
        }
        let listings = all(prefixes, |prefix| {
            self.objects.list(prefix).map_err(BucketError::from)
        })?;
        let (revisions, tags) = (&listings[0], &listings[1]);
        let found = all(revisions.iter(), |object| {
            let Some(digest) = trailing_digest(&object.key) else {
                return Ok(None);
            };
            let text = self.objects.get(&object.key, false);
            let body = self.objects.get(&layout::blob(&digest), true);
            let (text, body) = (text?, body?);
            let media_type = text
                .as_deref()
                .and_then(|text| std::str::from_utf8(text).ok())
                .and_then(parse_revision)
                .map(|revision| revision.media_type);
            Ok(Some(FoundManifest {
                file: DigestFile {
                    digest,
                    modified_secs: object.modified,
                    size: object.size,
                },
                body: media_type.zip(body),
            }))
        })?;
        let tags = all(
            tags.iter()
                .filter(|object| !object.key[tags_prefix.len()..].contains('/')),
            |object| {
                let bytes = self.objects.get(&object.key, false)?;
                let Some(bytes) = bytes else {
                    return Ok(None);
                };
                let file = TagFile {
                    tag: object.key[tags_prefix.len()..].to_string(),
                    modified_secs: object.modified,
                };
                Ok(Some((file, parse_tag(&object.key, &bytes)?)))
            },
        )?;
        let mut contents = NamespaceContents {
            revisions: found.into_iter().flatten().collect(),
            tags: tags.into_iter().flatten().collect(),
            links: listings[2]
                .iter()
                .filter_map(|object| {
                    Some(DigestFile {
                        digest: trailing_digest(&object.key)?,
                        modified_secs: object.modified,
                        size: object.size,
                    })
                })
                .collect(),
            pulls: HashMap::new(),
        };
        if with_pulls {
            let pulls = all(listings[3].iter(), |object| {
                let Some(digest) = trailing_digest(&object.key) else {
                    return Ok(None);
                };
                let bytes = self.objects.get(&object.key, false)?;
                let secs = bytes
                    .as_deref()
                    .and_then(|bytes| std::str::from_utf8(bytes).ok())
                    .and_then(|text| text.trim().parse::<u64>().ok());
                Ok(secs.map(|secs| (digest, secs)))
            })?;
            contents.pulls = pulls.into_iter().flatten().collect();
        }
        Ok(contents)
    }

    /// Removes manifest `digest` of `namespace`, which maintenance judged
    /// unreferenced, unless something references it now: a tag, a referrer,
    /// or an index of the namespace listing it. `false`: kept.
    pub fn remove_unreferenced_manifest(&self, namespace: &str, digest: &Digest) -> Result<bool> {
        let Some(revision) = self.revision(namespace, digest)? else {
            return Ok(false);
        };
        let before = self.references(namespace, digest, None)?;
        if before.referenced {
            return Ok(false);
        }
        let entry = match &revision.subject {
            Some(subject) => {
                let key = layout::referrer(namespace, subject, digest);
                self.objects.get(&key, false)?.map(|bytes| (key, bytes))
            }
            None => None,
        };
        if let Some((key, _)) = &entry {
            self.objects.delete(key)?;
        }
        let key = layout::revision(namespace, digest);
        self.objects.delete(&key)?;
        if self
            .references(namespace, digest, Some(&before.tag_etags))?
            .referenced
        {
            // A push named it meanwhile: it goes back as it was.
            let text = revision_text(&revision.media_type, revision.subject.as_ref());
            self.objects.put(&key, Rc::from(text.as_bytes()), false)?;
            if let Some((key, bytes)) = entry {
                self.objects.put(&key, bytes, false)?;
            }
            log::info!(
                target: "angos::maintenance",
                "{namespace}@{digest}: referenced again while it was removed; put back"
            );
            return Ok(false);
        }
        self.objects.delete(&layout::pull(namespace, digest))?;
        Ok(true)
    }

    /// Whether a tag, a referrer or an index of `namespace` references
    /// `digest`. `again`: read anew, after this request's removal, given the
    /// tags' ETags of the first look (a tag unchanged since is not read again).
    fn references(
        &self,
        namespace: &str,
        digest: &Digest,
        again: Option<&HashMap<String, String>>,
    ) -> Result<References> {
        let tags_prefix = layout::tags(namespace);
        let revisions_prefix = format!("{}_manifests/revisions/", layout::repository(namespace));
        let referrers_prefix = layout::referrers(namespace, digest);
        let prefixes = [&tags_prefix, &revisions_prefix, &referrers_prefix];
        let listings = all(prefixes, |prefix| {
            match again {
                None => self.objects.list(prefix),
                Some(_) => self.objects.list_again(prefix, "references, after the removal"),
            }
            .map_err(BucketError::from)
        })?;
        let (tags, revisions, referrers) = (&listings[0], &listings[1], &listings[2]);
        let mut found = References {
            referenced: !referrers.is_empty(),
            tag_etags: HashMap::new(),
        };
        let tagged = all(
            tags.iter()
                .filter(|object| !object.key[tags_prefix.len()..].contains('/')),
            |object| {
                let unchanged = again
                    .and_then(|etags| etags.get(&object.key))
                    .is_some_and(|etag| *etag == object.etag);
                let bytes = if again.is_none() || unchanged {
                    self.objects.get(&object.key, false)?
                } else {
                    self.objects.get_again(&object.key, "a tag, after the removal")?
                };
                Ok(match bytes {
                    Some(bytes) => parse_tag(&object.key, &bytes).ok() == Some(digest.clone()),
                    None => false,
                })
            },
        )?;
        found.referenced |= tagged.contains(&true);
        found.tag_etags = tags
            .iter()
            .map(|object| (object.key.clone(), object.etag.clone()))
            .collect();
        let parents = all(revisions.iter(), |object| {
            let Some(other) = trailing_digest(&object.key) else {
                return Ok(false);
            };
            if other == *digest {
                return Ok(false);
            }
            let body = self.objects.get(&layout::blob(&other), true)?;
            Ok(body.is_some_and(|body| children_of(&body).contains(digest)))
        })?;
        found.referenced |= parents.contains(&true);
        Ok(found)
    }

    /// Removes the links of `namespace` in `candidates` (each with the time
    /// it was written when listed) that were not written again since: no
    /// manifest of the scan (`scanned`) names them. Then the revisions are
    /// listed anew, and a link a manifest pushed meanwhile names is put
    /// back (`put_manifest` checks its links after its write: one of the
    /// two sees the other). Returns the links removed and kept removed.
    pub fn remove_links(
        &self,
        namespace: &str,
        candidates: &[(Digest, u64)],
        scanned: &std::collections::HashSet<Digest>,
    ) -> Result<Vec<Digest>> {
        let stats = all(candidates, |(digest, _)| {
            self.objects
                .stat(&layout::layer_link(namespace, digest))
                .map_err(BucketError::from)
        })?;
        let unchanged: Vec<&Digest> = candidates
            .iter()
            .zip(stats)
            .filter(|((_, listed), stat)| stat.is_some_and(|(_, modified)| modified == *listed))
            .map(|((digest, _), _)| digest)
            .collect();
        all(&unchanged, |digest| {
            self.objects
                .delete(&layout::layer_link(namespace, digest))
                .map_err(BucketError::from)
        })?;
        let prefix = format!("{}_manifests/revisions/", layout::repository(namespace));
        let revisions = self
            .objects
            .list_again(&prefix, "revisions, after removing links")?;
        let named = all(
            revisions
                .iter()
                .filter_map(|object| trailing_digest(&object.key))
                .filter(|digest| !scanned.contains(digest)),
            |digest| {
                let body = self.objects.get(&layout::blob(&digest), true)?;
                Ok(body.map(|body| blobs_of(&body)).unwrap_or_default())
            },
        )?;
        let named: std::collections::HashSet<&Digest> = named.iter().flatten().collect();
        let (back, removed): (Vec<&Digest>, Vec<&Digest>) =
            unchanged.into_iter().partition(|digest| named.contains(digest));
        all(&back, |digest| {
            self.objects
                .put(&layout::layer_link(namespace, digest), Rc::from(&b""[..]), false)
                .map_err(BucketError::from)
        })?;
        Ok(removed.into_iter().cloned().collect())
    }

    /// Which of `digests` `namespace` held as manifests when this request
    /// looked and no longer holds, read anew: a push that lists children
    /// checks them after its own write. (One never there is not reported:
    /// a registry may accept manifests whose children it lacks.)
    pub fn confirm_manifests(&self, namespace: &str, digests: &[Digest]) -> Result<Vec<Digest>> {
        let present = all(digests, |digest| {
            let key = layout::revision(namespace, digest);
            if self.objects.get(&key, false)?.is_none() {
                return Ok(true);
            }
            self.objects
                .exists_again(&key, "a child manifest, still there?")
                .map_err(BucketError::from)
        })?;
        Ok(digests
            .iter()
            .zip(present)
            .filter(|(_, present)| !present)
            .map(|(digest, _)| digest.clone())
            .collect())
    }
}

struct References {
    referenced: bool,
    tag_etags: HashMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Rig, run, seeded};
    use super::*;
    use crate::s3::fake::Faults;

    fn replica(seed: u64) -> BucketStore {
        super::super::testing::replica(seed, 5 << 20)
    }

    fn index_of(children: &[&Digest]) -> Vec<u8> {
        let manifests: Vec<serde_json::Value> = children
            .iter()
            .map(|digest| serde_json::json!({ "mediaType": "m", "digest": digest.to_string(), "size": 1 }))
            .collect();
        serde_json::to_vec(&serde_json::json!({ "schemaVersion": 2, "manifests": manifests })).unwrap()
    }

    #[test]
    fn contents_hold_revisions_tags_bodies_and_pulls() {
        let mut rig = Rig::new(Faults::default(), 1);
        let a = replica(1);
        let body = b"{\"a\":1}".to_vec();
        let digest = Digest::sha256_of(&body);
        run(&mut rig, &a, (1, 1), |s| {
            s.put_manifest("n", &digest, "t/x", &body, &["v1".into(), "v2".into()], None)
        })
        .unwrap();
        run(&mut rig, &a, (1, 2), |s| s.record_pull("n", &digest, 77)).unwrap();
        let contents = run(&mut rig, &a, (1, 3), |s| s.namespace_contents("n", true)).unwrap();
        assert_eq!(contents.revisions.len(), 1);
        let found = &contents.revisions[0];
        assert_eq!(found.file.digest, digest);
        let (media_type, stored) = found.body.clone().unwrap();
        assert_eq!((media_type.as_str(), &stored[..]), ("t/x", &body[..]));
        let mut tags: Vec<&str> = contents.tags.iter().map(|(tag, _)| tag.tag.as_str()).collect();
        tags.sort();
        assert_eq!(tags, ["v1", "v2"]);
        assert!(contents.tags.iter().all(|(_, target)| *target == digest));
        assert_eq!(contents.pulls.get(&digest), Some(&77));
    }

    #[test]
    fn a_referenced_manifest_is_kept_and_an_unreferenced_one_goes() {
        let mut rig = Rig::new(Faults::default(), 2);
        let a = replica(1);
        let child = b"child".to_vec();
        let child_digest = Digest::sha256_of(&child);
        let lone = b"lone".to_vec();
        let lone_digest = Digest::sha256_of(&lone);
        let tagged = b"tagged".to_vec();
        let tagged_digest = Digest::sha256_of(&tagged);
        let index = index_of(&[&child_digest]);
        let index_digest = Digest::sha256_of(&index);
        for (i, (body, tags)) in [
            (&child, vec![]),
            (&lone, vec![]),
            (&tagged, vec!["t".to_string()]),
            (&index, vec![]),
        ]
        .into_iter()
        .enumerate()
        {
            let digest = Digest::sha256_of(body);
            run(&mut rig, &a, (1, i as u64), |s| {
                s.put_manifest("n", &digest, "m", body, &tags, None)
            })
            .unwrap();
        }
        for (n, digest, expected) in [
            (10, &child_digest, false),
            (11, &tagged_digest, false),
            (12, &lone_digest, true),
        ] {
            let removed = run(&mut rig, &a, (2, n), |s| {
                s.remove_unreferenced_manifest("n", digest)
            })
            .unwrap();
            assert_eq!(removed, expected, "{digest}");
        }
        assert!(
            !rig.fake
                .objects
                .contains_key(&layout::revision("n", &lone_digest))
        );
        // The index gone, its child is free to go.
        run(&mut rig, &a, (2, 20), |s| {
            s.remove_unreferenced_manifest("n", &index_digest)
        })
        .unwrap();
        let removed = run(&mut rig, &a, (2, 21), |s| {
            s.remove_unreferenced_manifest("n", &child_digest)
        })
        .unwrap();
        assert!(removed);
    }

    #[test]
    fn a_child_never_there_is_not_reported_gone_and_one_removed_since_is() {
        let mut rig = Rig::new(Faults::default(), 5);
        let a = replica(1);
        let child = Digest::sha256_of(b"child");
        let never = Digest::sha256_of(b"never pushed");
        run(&mut rig, &a, (1, 1), |s| {
            s.put_manifest("n", &child, "m", b"child", &[], None)
        })
        .unwrap();
        let children = [child.clone(), never.clone()];
        // The request looks at both (as the registry's check does); then
        // another replica removes the child before the confirmation.
        let holder = (2, 1);
        loop {
            a.objects().enter(holder, rig.now_ms);
            let looked = a.has_manifest("n", &child).and(a.has_manifest("n", &never));
            a.objects().leave();
            if looked.is_ok() {
                break;
            }
            rig.pump(a.objects());
            a.objects().take_woken();
        }
        rig.fake.objects.remove(&layout::revision("n", &child));
        let gone = loop {
            a.objects().enter(holder, rig.now_ms);
            let result = a.confirm_manifests("n", &children);
            if !a.objects().leave() {
                a.objects().release(holder);
                break result;
            }
            rig.pump(a.objects());
            a.objects().take_woken();
        };
        assert_eq!(gone, Ok(vec![child.clone()]));
        let none = run(&mut rig, &a, (2, 2), |s| {
            s.confirm_manifests("n", std::slice::from_ref(&never))
        });
        assert_eq!(none, Ok(Vec::new()), "never there: not reported");
    }

    /// Runs two requests on two replicas, one run of each at a time in an
    /// order the seed gives, the bucket answering between rounds.
    fn race<A, B>(
        rig: &mut Rig,
        (a, b): (&BucketStore, &BucketStore),
        seed: u64,
        first: impl Fn(&BucketStore) -> Result<A>,
        second: impl Fn(&BucketStore) -> Result<B>,
    ) -> (Result<A>, Result<B>) {
        let mut next = seeded(seed);
        let mut flip = move || next(2) == 0;
        let (mut one, mut two) = (None, None);
        for _ in 0..2000 {
            if one.is_none() && flip() {
                a.objects().enter((3, 1), 0);
                let result = first(a);
                if !a.objects().leave() {
                    a.objects().release((3, 1));
                    one = Some(result);
                }
            }
            if two.is_none() && flip() {
                b.objects().enter((4, 1), 0);
                let result = second(b);
                if !b.objects().leave() {
                    b.objects().release((4, 1));
                    two = Some(result);
                }
            }
            if let (Some(_), Some(_)) = (&one, &two) {
                return (one.unwrap(), two.unwrap());
            }
            rig.pump(a.objects());
            rig.pump(b.objects());
            a.objects().take_woken();
            b.objects().take_woken();
        }
        panic!("seed {seed}: never answered");
    }

    /// A collection removing an old link while a push through another
    /// replica names it (after checking it, as the registry does): whenever
    /// the push answered, the link it names is there.
    #[test]
    fn a_link_removal_racing_a_push_that_names_it_never_leaves_the_manifest_without_it() {
        for seed in 1..40u64 {
            let mut rig = Rig::faulty(80, 60, seed);
            let (a, b) = (replica(seed), replica(seed + 100));
            let layer = b"layer".to_vec();
            let layer_digest = Digest::sha256_of(&layer);
            rig.fake
                .objects
                .insert(layout::blob(&layer_digest), layer.clone());
            run(&mut rig, &a, (1, 1), |s| s.link_blob("n", &layer_digest)).unwrap();
            let listed = rig.fake.now_secs;
            rig.fake.now_secs += 10;
            let body = serde_json::to_vec(&serde_json::json!({
                "layers": [{ "digest": layer_digest.to_string() }]
            }))
            .unwrap();
            let digest = Digest::sha256_of(&body);
            let candidates = [(layer_digest.clone(), listed)];
            let scanned = std::collections::HashSet::new();
            let (removal, push) = race(
                &mut rig,
                (&a, &b),
                seed,
                |s| s.remove_links("n", &candidates, &scanned),
                |s| {
                    if s.blob_size("n", &layer_digest)?.is_none() {
                        return Err(BucketError::Unavailable("unknown blob".into()));
                    }
                    s.put_manifest("n", &digest, "m", &body, &["t".to_string()], None)
                },
            );
            if push.is_ok() {
                assert!(
                    rig.fake
                        .objects
                        .contains_key(&layout::layer_link("n", &layer_digest)),
                    "seed {seed}: the manifest names a link that is gone (removal said {removal:?})"
                );
            }
        }
    }

    /// A removal and a tag push through another replica, interleaved run by
    /// run in every order a seed gives, with throttling and lost answers:
    /// whenever the push answered, its tag names a manifest that is there.
    #[test]
    fn a_removal_racing_a_tag_push_never_leaves_the_tag_without_its_manifest() {
        for seed in 1..40u64 {
            let mut rig = Rig::faulty(80, 60, seed);
            let (a, b) = (replica(seed), replica(seed + 100));
            let body = b"manifest".to_vec();
            let digest = Digest::sha256_of(&body);
            run(&mut rig, &a, (1, 1), |s| {
                s.put_manifest("n", &digest, "m", &body, &[], None)
            })
            .unwrap();
            let tags = ["t".to_string()];
            let (removal, push) = race(
                &mut rig,
                (&a, &b),
                seed,
                |s| s.remove_unreferenced_manifest("n", &digest),
                |s| s.put_manifest("n", &digest, "m", &body, &tags, None),
            );
            if push.is_ok() {
                assert!(
                    rig.fake.objects.contains_key(&layout::revision("n", &digest)),
                    "seed {seed}: the tag is there, its manifest is not (removal said {removal:?})"
                );
            }
        }
    }
}
