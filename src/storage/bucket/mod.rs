//! The S3 backend: the registry's layout (`layout.rs`) as objects in one
//! bucket that several replicas share, read and written through
//! `objects.rs`, whose reads and writes a request waits on by being run
//! again once they are done. The operations here mean what the filesystem
//! backend's do (`storage::Storage`), in the same order of writes, so a
//! replica that dies between two writes leaves what a crash leaves there:
//! content before the links that name it, a manifest before its tags, tags
//! removed before the manifest they point to.

pub mod collect;
pub mod feed;
pub mod layout;
pub mod objects;
pub mod scan;
pub mod uploads;

#[cfg(test)]
pub(crate) mod testing;

use std::collections::BTreeSet;
use std::rc::Rc;

use super::StoredManifest;
use super::listing::Page;
use super::manifests::{Revision, parse_revision, revision_text};
use crate::digest::Digest;
use objects::{Objects, Wait};

/// Why a bucket operation did not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketError {
    /// Waiting on the bucket: run the request again when woken.
    Pending,
    /// The bucket failed (after the client's retries): a `503`.
    Unavailable(String),
    /// An object does not hold what this layout writes there.
    Corrupt { key: String, why: &'static str },
}

impl From<Wait> for BucketError {
    fn from(wait: Wait) -> BucketError {
        match wait {
            Wait::Pending => BucketError::Pending,
            Wait::Unavailable(reason) => BucketError::Unavailable(reason),
        }
    }
}

impl std::fmt::Display for BucketError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BucketError::Pending => f.write_str("waiting on the bucket"),
            BucketError::Unavailable(reason) => write!(f, "object storage unavailable: {reason}"),
            BucketError::Corrupt { key, why } => write!(f, "{key}: {why}"),
        }
    }
}

impl std::error::Error for BucketError {}

impl BucketError {
    /// As the `io::Error` the storage interface returns: a wait is
    /// `WouldBlock`, the rest `Other`; `of_io` finds it again.
    pub fn into_io(self) -> std::io::Error {
        let kind = match self {
            BucketError::Pending => std::io::ErrorKind::WouldBlock,
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, self)
    }

    /// The bucket's error inside a storage `io::Error`, if it is one.
    pub fn of_io(error: &std::io::Error) -> Option<&BucketError> {
        error.get_ref()?.downcast_ref::<BucketError>()
    }
}

type Result<T> = std::result::Result<T, BucketError>;

pub struct BucketStore {
    /// Shared with the upload writers, which send parts as bodies stream.
    objects: Rc<Objects>,
    /// `multipart_part_size`: what an upload sends at once.
    part_size: usize,
    /// `redirect_expires_secs` when blob downloads are redirected to the
    /// bucket (`redirect_downloads`).
    redirect: Option<u64>,
    /// How content larger than one copy moves to its key.
    copy: CopyPlan,
}

/// `multipart_copy_threshold`, `multipart_copy_chunk_size` and
/// `multipart_copy_jobs`: content larger than `threshold` is copied to its
/// key in parts of `chunk` bytes, `jobs` at a time (S3 copies at most
/// 5 GiB at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyPlan {
    pub threshold: u64,
    pub chunk: u64,
    pub jobs: usize,
}

impl Default for CopyPlan {
    fn default() -> CopyPlan {
        CopyPlan {
            threshold: 5_000_000_000,
            chunk: 100_000_000,
            jobs: 4,
        }
    }
}

impl std::fmt::Debug for BucketStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BucketStore").finish_non_exhaustive()
    }
}

/// Runs `each` over `items` without stopping at the first that waits, so
/// every fetch they need goes out in one round; the first failure wins.
fn all<I, T>(items: I, mut each: impl FnMut(I::Item) -> Result<T>) -> Result<Vec<T>>
where
    I: IntoIterator,
{
    let mut done = Vec::new();
    let mut pending = false;
    for item in items {
        match each(item) {
            Ok(value) => done.push(value),
            Err(BucketError::Pending) => pending = true,
            Err(error) => return Err(error),
        }
    }
    if pending {
        Err(BucketError::Pending)
    } else {
        Ok(done)
    }
}

impl BucketStore {
    pub fn new(objects: Objects, part_size: u64) -> BucketStore {
        BucketStore {
            objects: Rc::new(objects),
            part_size: usize::try_from(part_size).unwrap_or(usize::MAX),
            redirect: None,
            copy: CopyPlan::default(),
        }
    }

    /// Content larger than `plan.threshold` is copied to its key in parts.
    pub fn with_copy_plan(mut self, plan: CopyPlan) -> BucketStore {
        self.copy = plan;
        self
    }

    /// Blob downloads answered `307` to presigned URLs valid `expires_secs`.
    pub fn with_redirects(mut self, expires_secs: u64) -> BucketStore {
        self.redirect = Some(expires_secs);
        self
    }

    /// Where a client downloads blob `digest` itself, when downloads are
    /// redirected.
    pub fn blob_redirect(&self, digest: &Digest) -> Option<String> {
        let expires_secs = self.redirect?;
        Some(self.objects.presigned_get(&layout::blob(digest), expires_secs))
    }

    pub fn objects(&self) -> &Objects {
        &self.objects
    }

    /// Streams bytes `first..=last` of blob `digest` as an answer body.
    pub fn open_blob(&self, digest: &Digest, first: u64, last: u64) -> Rc<feed::BlobFeed> {
        self.objects
            .open_stream(&layout::blob(digest), Some((first, last)))
    }

    // ---- manifests and tags ---------------------------------------------

    /// The digest a tag points to.
    pub fn tag(&self, namespace: &str, tag: &str) -> Result<Option<Digest>> {
        let key = layout::tag(namespace, tag);
        let Some(bytes) = self.objects.get(&key, false)? else {
            return Ok(None);
        };
        scan::parse_tag(&key, &bytes).map(Some)
    }

    pub(super) fn revision(&self, namespace: &str, digest: &Digest) -> Result<Option<Revision>> {
        let key = layout::revision(namespace, digest);
        let Some(bytes) = self.objects.get(&key, false)? else {
            return Ok(None);
        };
        std::str::from_utf8(&bytes)
            .ok()
            .and_then(parse_revision)
            .map(Some)
            .ok_or(BucketError::Corrupt {
                key,
                why: "corrupt revision link",
            })
    }

    pub fn has_manifest(&self, namespace: &str, digest: &Digest) -> Result<bool> {
        Ok(self.revision(namespace, digest)?.is_some())
    }

    /// The manifest `digest` if `namespace` has it.
    /// When `digest` was last pushed to `namespace`: its revision's write
    /// time (unix seconds), `None` when it is not there.
    pub fn pushed_at(&self, namespace: &str, digest: &Digest) -> Result<Option<u64>> {
        let stat = self.objects.stat(&layout::revision(namespace, digest))?;
        Ok(stat.map(|(_, modified)| modified))
    }

    pub fn manifest(&self, namespace: &str, digest: &Digest) -> Result<Option<StoredManifest>> {
        // Both reads go out together.
        let revision = self.revision(namespace, digest);
        let body = self
            .objects
            .get(&layout::blob(digest), true)
            .map_err(BucketError::from);
        let (Some(revision), Some(body)) = (revision?, body?) else {
            return Ok(None);
        };
        Ok(Some(StoredManifest {
            media_type: revision.media_type,
            body,
        }))
    }

    /// Stores a manifest in the filesystem backend's order: content,
    /// revision link, referrer entry, the namespace's catalog entry, then
    /// every tag (together).
    pub fn put_manifest(
        &self,
        namespace: &str,
        digest: &Digest,
        media_type: &str,
        body: &[u8],
        tags: &[String],
        referrer: Option<(&Digest, &serde_json::Value)>,
    ) -> Result<()> {
        // Written even when there (the same bytes): its time is what keeps
        // a collection running on another replica from removing it before
        // the revision below names it (`collect.rs`).
        self.objects.put(&layout::blob(digest), Rc::from(body), false)?;
        let revision = revision_text(media_type, referrer.map(|(subject, _)| subject));
        self.objects.put(
            &layout::revision(namespace, digest),
            Rc::from(revision.as_bytes()),
            false,
        )?;
        // A collection on another replica may have removed a link this
        // manifest names between the check of the request and the write
        // above (`scan.rs`): read after it, a link that was there is put back.
        let blobs = scan::blobs_of(body);
        let links: Vec<String> = blobs
            .iter()
            .map(|blob| layout::layer_link(namespace, blob))
            .collect();
        all(&links, |key| {
            if self.objects.get(key, false)?.is_none() {
                return Ok(());
            }
            if !self.objects.exists_again(key, "a link, still there?")? {
                self.objects
                    .put_again(key, Rc::from(&b""[..]), "the link again")?;
            }
            Ok(())
        })?;
        // A collection that listed the content before it was written again
        // may have removed it since (`collect.rs`): written once more.
        let content = layout::blob(digest);
        if !self.objects.exists_again(&content, "the content, still there?")? {
            self.objects
                .put_again(&content, Rc::from(body), "the content again")?;
        }
        if let Some((subject, descriptor)) = referrer {
            let json = serde_json::to_vec(descriptor).map_err(|_| BucketError::Corrupt {
                key: layout::referrer(namespace, subject, digest),
                why: "a descriptor that is not JSON",
            })?;
            self.objects.put(
                &layout::referrer(namespace, subject, digest),
                Rc::from(json),
                false,
            )?;
        }
        self.add_to_catalog(namespace)?;
        let content: Rc<[u8]> = Rc::from(format!("{digest}\n").as_bytes());
        all(tags, |tag| {
            self.objects
                .put(&layout::tag(namespace, tag), content.clone(), false)
                .map_err(BucketError::from)
        })?;
        // A collection or retention run on another replica may have removed
        // the revision (untagged until now) between the two writes; read
        // after ours, it is written back (`scan.rs`).
        let key = layout::revision(namespace, digest);
        if !tags.is_empty() && !self.objects.exists_again(&key, "the revision, still there?")? {
            self.objects
                .put_again(&key, Rc::from(revision.as_bytes()), "the revision again")?;
        }
        Ok(())
    }

    /// Deletes a tag (not the manifest); returns the digest it pointed to.
    pub fn delete_tag(&self, namespace: &str, tag: &str) -> Result<Option<Digest>> {
        let Some(digest) = self.tag(namespace, tag)? else {
            return Ok(None);
        };
        self.objects.delete(&layout::tag(namespace, tag))?;
        Ok(Some(digest))
    }

    /// Deletes manifest `digest` from `namespace`: every tag pointing to it,
    /// its referrer entry, then its revision link (last, so a replica dying
    /// midway leaves a manifest a retried `DELETE` finds). Returns the
    /// removed tags, sorted; `None` when the namespace did not have it.
    pub fn delete_manifest(&self, namespace: &str, digest: &Digest) -> Result<Option<Vec<String>>> {
        let Some(revision) = self.revision(namespace, digest)? else {
            return Ok(None);
        };
        let tags = self.tag_names(namespace)?;
        let pointing: Vec<String> = all(&tags, |tag| {
            Ok(match self.tag(namespace, tag) {
                Ok(Some(target)) if target == *digest => Some(tag.clone()),
                Ok(_) => None,
                // One corrupt tag must not make every manifest undeletable.
                Err(BucketError::Corrupt { key, why }) => {
                    log::warn!("skipping {key}: {why}");
                    None
                }
                Err(error) => return Err(error),
            })
        })?
        .into_iter()
        .flatten()
        .collect();
        all(&pointing, |tag| {
            self.objects
                .delete(&layout::tag(namespace, tag))
                .map_err(BucketError::from)
        })?;
        if let Some(subject) = &revision.subject {
            self.objects
                .delete(&layout::referrer(namespace, subject, digest))?;
        }
        self.objects.delete(&layout::revision(namespace, digest))?;
        self.objects.delete(&layout::pull(namespace, digest))?;
        Ok(Some(pointing))
    }

    /// Records that `digest` was pulled from `namespace` at `unix_secs`
    /// (the caller writes it at most once a minute per manifest).
    pub fn record_pull(&self, namespace: &str, digest: &Digest, unix_secs: u64) -> Result<()> {
        self.objects.put(
            &layout::pull(namespace, digest),
            Rc::from(format!("{unix_secs}\n").as_bytes()),
            false,
        )?;
        Ok(())
    }

    /// When `digest` was last pulled from `namespace` (0: never recorded).
    pub fn pulled_at(&self, namespace: &str, digest: &Digest) -> Result<u64> {
        let Some(bytes) = self.objects.get(&layout::pull(namespace, digest), false)? else {
            return Ok(0);
        };
        Ok(std::str::from_utf8(&bytes)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0))
    }

    /// Every tag of `namespace`, sorted.
    fn tag_names(&self, namespace: &str) -> Result<BTreeSet<String>> {
        let prefix = layout::tags(namespace);
        let listed = self.objects.list(&prefix)?;
        Ok(listed
            .iter()
            .filter_map(|object| object.key.strip_prefix(prefix.as_str()))
            .filter(|tag| !tag.contains('/'))
            .map(str::to_string)
            .collect())
    }

    /// A page of `namespace`'s tags, sorted; `None` when the namespace does
    /// not exist (never had a blob or manifest).
    pub fn tags_page(
        &self,
        namespace: &str,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Option<Page>> {
        let tags = self.tag_names(namespace);
        let known = self.objects.get(&layout::catalog_entry(namespace), false);
        let (tags, known) = (tags?, known?);
        if tags.is_empty() && known.is_none() {
            return Ok(None);
        }
        Ok(Some(Page::of(&tags, after, limit, &|_| true)))
    }

    /// A page of the referrer descriptors stored under `subject`, in
    /// digest order, and the entry to continue after when more follow.
    pub fn referrers_page(
        &self,
        namespace: &str,
        subject: &Digest,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<(Vec<serde_json::Value>, Option<String>)> {
        let prefix = layout::referrers(namespace, subject);
        let entries: BTreeSet<String> = self
            .objects
            .list(&prefix)?
            .iter()
            .filter_map(|object| object.key.strip_prefix(prefix.as_str()))
            .map(str::to_string)
            .collect();
        let page = Page::of(&entries, after, limit, &|_| true);
        let descriptors = all(&page.items, |entry| {
            let key = format!("{prefix}{entry}");
            // A referrer's descriptor never changes: it is its manifest's.
            let Some(bytes) = self.objects.get(&key, true)? else {
                return Ok(None);
            };
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .map(Some)
                .map_err(|_| BucketError::Corrupt {
                    key,
                    why: "corrupt referrer descriptor",
                })
        })?;
        let next = page.more.then(|| page.items.last().cloned()).flatten();
        Ok((descriptors.into_iter().flatten().collect(), next))
    }

    /// A page of the namespaces `accept` takes, sorted.
    pub fn catalog_page(
        &self,
        after: Option<&str>,
        limit: Option<usize>,
        accept: &dyn Fn(&str) -> bool,
    ) -> Result<Page> {
        let listed = self.objects.list(layout::CATALOG)?;
        let names: BTreeSet<String> = listed
            .iter()
            .filter_map(|object| layout::namespace_of_catalog_entry(&object.key))
            .map(str::to_string)
            .collect();
        Ok(Page::of(&names, after, limit, accept))
    }

    /// Marks `namespace` as one the catalog lists (idempotent).
    fn add_to_catalog(&self, namespace: &str) -> Result<()> {
        let key = layout::catalog_entry(namespace);
        if self.objects.get(&key, false)?.is_none() {
            self.objects.put(&key, Rc::from(&b""[..]), false)?;
        }
        Ok(())
    }

    // ---- blobs -----------------------------------------------------------

    /// Size of `digest` if `namespace` may read it (uploaded or mounted there).
    pub fn blob_size(&self, namespace: &str, digest: &Digest) -> Result<Option<u64>> {
        let link = self.objects.get(&layout::layer_link(namespace, digest), false);
        let size = self.objects.size(&layout::blob(digest), true);
        let (link, size) = (link?, size?);
        Ok(link.and(size))
    }

    /// Lets `namespace` read an existing blob (a mount, or a committed
    /// upload); `false` when the content does not exist.
    pub fn link_blob(&self, namespace: &str, digest: &Digest) -> Result<bool> {
        if self.objects.size(&layout::blob(digest), true)?.is_none() {
            return Ok(false);
        }
        let link = layout::layer_link(namespace, digest);
        self.objects.put(&link, Rc::from(&b""[..]), false)?;
        // The content, known from before, may have been collected since (on
        // another replica): read after the link, it is there or the mount
        // does not happen.
        if !self
            .objects
            .exists_again(&layout::blob(digest), "the content, still there?")?
        {
            self.objects.delete(&link)?;
            return Ok(false);
        }
        self.add_to_catalog(namespace)?;
        Ok(true)
    }

    /// A namespace `accept` takes that may read `digest`, among the first
    /// `namespaces_max` of the catalog (automatic cross-repository mount):
    /// its links are looked at a window of namespaces at a time.
    pub fn find_blob_holder(
        &self,
        digest: &Digest,
        accept: &dyn Fn(&str) -> bool,
        namespaces_max: usize,
    ) -> Result<Option<String>> {
        const WINDOW: usize = 32;
        // Most blobs a client offers to mount are new: one HEAD answers that.
        if self.objects.size(&layout::blob(digest), true)?.is_none() {
            return Ok(None);
        }
        let catalog = self.objects.list(layout::CATALOG)?;
        let candidates: Vec<&str> = catalog
            .iter()
            .filter_map(|object| layout::namespace_of_catalog_entry(&object.key))
            .filter(|namespace| accept(namespace))
            .take(namespaces_max)
            .collect();
        for window in candidates.chunks(WINDOW) {
            let linked = all(window, |namespace| {
                self.objects
                    .get(&layout::layer_link(namespace, digest), false)
                    .map_err(BucketError::from)
            })?;
            if let Some((namespace, _)) = window.iter().zip(linked).find(|(_, link)| link.is_some()) {
                return Ok(Some(namespace.to_string()));
            }
        }
        Ok(None)
    }

    /// Removes `namespace`'s access to `digest`; `false` when it had none.
    pub fn delete_blob(&self, namespace: &str, digest: &Digest) -> Result<bool> {
        let key = layout::layer_link(namespace, digest);
        if self.objects.get(&key, false)?.is_none() {
            return Ok(false);
        }
        self.objects.delete(&key)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{Rig, run};
    use super::*;
    use crate::s3::fake::Faults;

    /// A small part, so tests cross part boundaries with little data.
    pub const PART: u64 = 64;

    fn replica(seed: u64) -> BucketStore {
        super::testing::replica(seed, PART)
    }

    fn digest(text: &str) -> Digest {
        Digest::sha256_of(text.as_bytes())
    }

    #[test]
    fn a_manifest_pushed_through_one_replica_reads_whole_through_another() {
        let mut rig = Rig::new(Faults::default(), 1);
        let (a, b) = (replica(1), replica(2));
        let subject = digest("subject");
        let body = br#"{"schemaVersion":2}"#;
        let manifest = Digest::sha256_of(body);
        let descriptor = serde_json::json!({"digest": manifest.to_string()});
        let tags = vec!["v1".to_string(), "latest".to_string()];
        run(&mut rig, &a, (1, 1), |store| {
            store.put_manifest(
                "lib/app",
                &manifest,
                "application/vnd.oci.image.manifest.v1+json",
                body,
                &tags,
                Some((&subject, &descriptor)),
            )
        })
        .unwrap();
        assert_eq!(
            run(&mut rig, &b, (1, 1), |s| s.tag("lib/app", "v1")),
            Ok(Some(manifest.clone()))
        );
        let stored = run(&mut rig, &b, (1, 2), |s| s.manifest("lib/app", &manifest))
            .unwrap()
            .unwrap();
        assert_eq!(&*stored.body, body);
        assert_eq!(stored.media_type, "application/vnd.oci.image.manifest.v1+json");
        let page = run(&mut rig, &b, (1, 3), |s| s.tags_page("lib/app", None, None))
            .unwrap()
            .unwrap();
        assert_eq!(page.items, vec!["latest", "v1"]);
        let (referrers, next) = run(&mut rig, &b, (1, 4), |s| {
            s.referrers_page("lib/app", &subject, None, None)
        })
        .unwrap();
        assert_eq!(referrers, vec![descriptor]);
        assert_eq!(next, None);
        let catalog = run(&mut rig, &b, (1, 5), |s| s.catalog_page(None, None, &|_| true)).unwrap();
        assert_eq!(catalog.items, vec!["lib/app"]);
        assert_eq!(
            run(&mut rig, &b, (1, 6), |s| s.tags_page("nothing", None, None)),
            Ok(None)
        );
    }

    #[test]
    fn deleting_a_manifest_takes_its_tags_and_referrer_entry_and_leaves_the_content() {
        let mut rig = Rig::new(Faults::default(), 1);
        let a = replica(1);
        let (one, two) = (digest("one"), digest("two"));
        let subject = digest("s");
        let descriptor = serde_json::json!({"digest": one.to_string()});
        run(&mut rig, &a, (1, 1), |s| {
            s.put_manifest(
                "n",
                &one,
                "t",
                b"one",
                &["a".into(), "b".into()],
                Some((&subject, &descriptor)),
            )
        })
        .unwrap();
        run(&mut rig, &a, (1, 2), |s| {
            s.put_manifest("n", &two, "t", b"two", &["c".into()], None)
        })
        .unwrap();
        let removed = run(&mut rig, &a, (1, 3), |s| s.delete_manifest("n", &one)).unwrap();
        assert_eq!(removed, Some(vec!["a".to_string(), "b".to_string()]));
        let page = run(&mut rig, &a, (1, 4), |s| s.tags_page("n", None, None))
            .unwrap()
            .unwrap();
        assert_eq!(page.items, vec!["c"]);
        assert_eq!(run(&mut rig, &a, (1, 5), |s| s.manifest("n", &one)), Ok(None));
        assert!(
            rig.fake.objects.contains_key(&layout::blob(&one)),
            "content is the collector's"
        );
        let (referrers, _) = run(&mut rig, &a, (1, 6), |s| {
            s.referrers_page("n", &subject, None, None)
        })
        .unwrap();
        assert!(referrers.is_empty());
        assert_eq!(
            run(&mut rig, &a, (1, 7), |s| s.delete_manifest("n", &one)),
            Ok(None)
        );
    }

    #[test]
    fn a_blob_is_readable_from_a_namespace_once_linked_and_not_after() {
        let mut rig = Rig::new(Faults::default(), 1);
        let a = replica(1);
        let blob = digest("layer");
        assert_eq!(run(&mut rig, &a, (1, 1), |s| s.link_blob("n", &blob)), Ok(false));
        rig.fake.objects.insert(layout::blob(&blob), b"layer".to_vec());
        assert_eq!(run(&mut rig, &a, (1, 2), |s| s.blob_size("n", &blob)), Ok(None));
        assert_eq!(run(&mut rig, &a, (1, 3), |s| s.link_blob("n", &blob)), Ok(true));
        assert_eq!(
            run(&mut rig, &a, (1, 4), |s| s.blob_size("n", &blob)),
            Ok(Some(5))
        );
        assert_eq!(
            run(&mut rig, &a, (1, 5), |s| s.blob_size("other", &blob)),
            Ok(None)
        );
        assert_eq!(run(&mut rig, &a, (1, 6), |s| s.delete_blob("n", &blob)), Ok(true));
        assert_eq!(run(&mut rig, &a, (1, 7), |s| s.blob_size("n", &blob)), Ok(None));
        let catalog = run(&mut rig, &a, (1, 8), |s| s.catalog_page(None, None, &|_| true)).unwrap();
        assert_eq!(catalog.items, vec!["n"]);
    }

    #[test]
    fn an_automatic_mount_finds_a_namespace_the_client_may_read_that_links_the_blob() {
        let mut rig = Rig::new(Faults::default(), 3);
        let a = replica(1);
        let blob = digest("layer");
        rig.fake.objects.insert(layout::blob(&blob), b"layer".to_vec());
        // Namespaces enough for several windows; the blob linked in two.
        for n in 0..70 {
            let namespace = format!("ns{n:02}");
            run(&mut rig, &a, (1, n), |s| s.add_to_catalog(&namespace)).unwrap();
        }
        for namespace in ["ns05", "ns64"] {
            run(&mut rig, &a, (2, 1), |s| s.link_blob(namespace, &blob)).unwrap();
        }
        let found = |rig: &mut Rig, accept: &dyn Fn(&str) -> bool, max: usize| {
            rig.now_ms += 1;
            run(rig, &a, (3, 1), |s| s.find_blob_holder(&blob, accept, max)).unwrap()
        };
        assert_eq!(found(&mut rig, &|_| true, 100).as_deref(), Some("ns05"));
        assert_eq!(
            found(&mut rig, &|name| name != "ns05", 100).as_deref(),
            Some("ns64"),
            "only where the client may read"
        );
        assert_eq!(
            found(&mut rig, &|name| name != "ns05", 40),
            None,
            "the search is bounded"
        );
        let unknown = digest("unknown");
        rig.now_ms += 1;
        assert_eq!(
            run(&mut rig, &a, (3, 2), |s| s.find_blob_holder(
                &unknown,
                &|_| true,
                100
            )),
            Ok(None)
        );
    }

    /// Throttling and lost answers on every seed: pushes complete (a lost
    /// create-once content write reads as done on its retry) and the other
    /// replica reads what was pushed, whole.
    #[test]
    fn pushes_complete_through_throttling_and_lost_answers() {
        for seed in 1..30 {
            let mut rig = Rig::faulty(200, 150, seed);
            let (a, b) = (replica(seed), replica(seed + 100));
            for index in 0..5u64 {
                let body = format!("manifest {index}");
                let manifest = Digest::sha256_of(body.as_bytes());
                run(&mut rig, &a, (1, index), |s| {
                    s.put_manifest("n", &manifest, "t", body.as_bytes(), &[format!("t{index}")], None)
                })
                .unwrap_or_else(|error| panic!("seed {seed}: {error}"));
                let read = run(&mut rig, &b, (2, index), |s| s.manifest("n", &manifest)).unwrap();
                assert_eq!(&*read.unwrap().body, body.as_bytes(), "seed {seed}");
                assert_eq!(
                    run(&mut rig, &b, (3, index), |s| s.tag("n", &format!("t{index}"))),
                    Ok(Some(manifest))
                );
            }
            assert!(rig.fake.faulted > 0, "seed {seed} injected nothing");
        }
    }
}
