//! Manifests, tags and referrers on disk: revision links, tag files, the
//! referrer descriptors under each subject, and the paged listings over them.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::*;
use crate::digest::Digest;

/// A manifest as stored: its media type and exact bytes, shared (with the
/// cache and every response that sends them) rather than copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredManifest {
    pub media_type: String,
    pub body: std::rc::Rc<[u8]>,
}

/// A manifest's bytes for a download: shared from memory, or streamed from
/// its file when too large to keep (no per-connection copy either way).
#[derive(Debug)]
pub enum ManifestBytes {
    Shared(std::rc::Rc<[u8]>),
    File { file: File, len: u64 },
}

/// Manifests up to this size are read into memory (and cached) for
/// downloads; larger ones are sent from their file.
pub const MANIFEST_IN_MEMORY_BYTES_MAX: u64 = 256 * 1024;

/// A referrer's file name under its subject: "<alg>-<hex>".
pub(super) fn referrer_entry(referrer: &Digest) -> String {
    format!("{}-{}", referrer.algorithm(), referrer.hex())
}

/// The parsed revision link.
pub(super) struct Revision {
    pub(super) media_type: String,
    pub(super) subject: Option<Digest>,
}

/// A revision link's content: "<media type>\n<subject digest or empty>\n"
/// (both backends write it).
pub(super) fn revision_text(media_type: &str, subject: Option<&Digest>) -> String {
    let subject = subject.map(Digest::to_string).unwrap_or_default();
    format!("{media_type}\n{subject}\n")
}

/// Parses "<media type>\n<subject digest or empty>\n".
pub(super) fn parse_revision(text: &str) -> Option<Revision> {
    let rest = text.strip_suffix('\n')?;
    let (media_type, subject) = rest.split_once('\n')?;
    if subject.contains('\n') {
        return None;
    }
    let subject = if subject.is_empty() {
        None
    } else {
        Some(Digest::parse(subject).ok()?)
    };
    Some(Revision {
        media_type: media_type.to_owned(),
        subject,
    })
}

pub(super) fn read_tag(path: &Path) -> io::Result<Option<Digest>> {
    let Some(text) = not_found_as_none(fs::read_to_string(path))? else {
        return Ok(None);
    };
    text.strip_suffix('\n')
        .and_then(|digest| Digest::parse(digest).ok())
        .map(Some)
        .ok_or_else(|| invalid_data(path, "corrupt tag"))
}

impl Storage {
    // ---- manifests and tags ---------------------------------------------

    /// Stores a manifest atomically, in this order: content, revision link,
    /// referrer entry under `subject` (when given, with `descriptor` as its
    /// JSON), then each tag. A crash in between leaves earlier steps in place
    /// and later ones absent, never a torn file.
    pub fn put_manifest(
        &self,
        namespace: &str,
        digest: &Digest,
        media_type: &str,
        body: &[u8],
        tags: &[String],
        referrer: Option<(&Digest, &serde_json::Value)>,
    ) -> io::Result<()> {
        if media_type.contains(['\n', '\r']) {
            // It would split the revision link into more lines than it has.
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "media type contains a line break",
            ));
        }
        if let Some(bucket) = self.bucket() {
            return bucket
                .put_manifest(namespace, digest, media_type, body, tags, referrer)
                .map_err(bucket::BucketError::into_io);
        }
        for tag in tags {
            debug_assert_tag(tag);
        }
        self.cache.borrow_mut().invalidate(namespace);
        self.epochs.borrow_mut().bump(namespace);
        self.touch_content(digest);
        let blob = self.blob_path(digest);
        if !exists(&blob)? {
            self.write_atomic(&blob, body)?;
            self.content_added(body.len() as u64);
        }
        let revision = revision_text(media_type, referrer.map(|(subject, _)| subject));
        self.write_atomic(&self.revision_path(namespace, digest), revision.as_bytes())?;
        if let Some((subject, descriptor)) = referrer {
            let json = serde_json::to_vec(descriptor).map_err(io::Error::other)?;
            self.write_atomic(&self.referrer_path(namespace, subject, digest), &json)?;
            self.listing
                .borrow_mut()
                .add_referrer(&format!("{namespace}\n{subject}"), &referrer_entry(digest));
        }
        self.listing.borrow_mut().add_namespace(namespace);
        let tag_content = format!("{digest}\n");
        let tag_paths: Vec<PathBuf> = tags.iter().map(|tag| self.tag_path(namespace, tag)).collect();
        atomic::write_file_to_many(
            &self.tmp_dir(),
            &tag_paths,
            tag_content.as_bytes(),
            self.sync_to_disk,
        )?;
        let mut listing = self.listing.borrow_mut();
        for tag in tags {
            listing.add_tag(namespace, tag);
        }
        Ok(())
    }

    /// Records that `digest` was pulled from `namespace` at `unix_secs` (for
    /// retention's `image.last_pulled_at`). Written at most once a minute per
    /// manifest: a busy image would otherwise cost a file write per pull.
    pub fn record_pull(&self, namespace: &str, digest: &Digest, unix_secs: u64) -> io::Result<()> {
        let key = (namespace.to_owned(), digest.clone());
        {
            let mut written = self.pulls_written.borrow_mut();
            if written
                .get(&key)
                .is_some_and(|last| unix_secs < last.saturating_add(PULL_RECORD_INTERVAL_SECS))
            {
                return Ok(());
            }
            if written.len() >= PULL_RECORDS_REMEMBERED_MAX {
                // Forgetting only costs a write sooner.
                written.clear();
            }
            written.insert(key, unix_secs);
        }
        if let Some(bucket) = self.bucket() {
            return bucket
                .record_pull(namespace, digest, unix_secs)
                .map_err(bucket::BucketError::into_io);
        }
        self.write_atomic(
            &self.pull_path(namespace, digest),
            format!("{unix_secs}\n").as_bytes(),
        )
    }

    /// When `digest` was last pulled from `namespace` (0: never, or not
    /// recorded), to a minute.
    pub fn pulled_at(&self, namespace: &str, digest: &Digest) -> io::Result<u64> {
        if let Some(bucket) = self.bucket() {
            return bucket
                .pulled_at(namespace, digest)
                .map_err(bucket::BucketError::into_io);
        }
        let Some(text) = not_found_as_none(fs::read_to_string(self.pull_path(namespace, digest)))? else {
            return Ok(0);
        };
        Ok(text.trim().parse().unwrap_or(0))
    }

    /// Whether `namespace` has manifest `digest` (its revision link).
    pub fn has_manifest(&self, namespace: &str, digest: &Digest) -> io::Result<bool> {
        if let Some(bucket) = self.bucket() {
            return bucket
                .has_manifest(namespace, digest)
                .map_err(bucket::BucketError::into_io);
        }
        exists(&self.revision_path(namespace, digest))
    }

    /// The manifest `digest` if `namespace` has it.
    pub fn manifest(&self, namespace: &str, digest: &Digest) -> io::Result<Option<StoredManifest>> {
        if let Some(bucket) = self.bucket() {
            return bucket
                .manifest(namespace, digest)
                .map_err(bucket::BucketError::into_io);
        }
        if let Some(cached) = self.cache.borrow().manifest(namespace, digest) {
            return Ok(Some(cached.clone()));
        }
        let Some(revision) = self.revision(namespace, digest)? else {
            return Ok(None);
        };
        let Some(body) = not_found_as_none(fs::read(self.blob_path(digest)))? else {
            return Ok(None);
        };
        Ok(Some(self.keep_manifest(
            namespace,
            digest,
            revision.media_type,
            body,
        )))
    }

    /// A manifest just read from its file, kept in the cache for the next read.
    fn keep_manifest(
        &self,
        namespace: &str,
        digest: &Digest,
        media_type: String,
        body: Vec<u8>,
    ) -> StoredManifest {
        let manifest = StoredManifest {
            media_type,
            body: body.into(),
        };
        self.cache
            .borrow_mut()
            .insert_manifest(namespace, digest, &manifest);
        manifest
    }

    /// The manifest `digest` of `namespace` for a download: its media type
    /// and bytes, shared from the cache or, when large, its open file.
    pub fn manifest_for_download(
        &self,
        namespace: &str,
        digest: &Digest,
    ) -> io::Result<Option<(String, ManifestBytes)>> {
        if let Some(bucket) = self.bucket() {
            return bucket
                .manifest(namespace, digest)
                .map(|found| {
                    found.map(|manifest| (manifest.media_type, ManifestBytes::Shared(manifest.body)))
                })
                .map_err(bucket::BucketError::into_io);
        }
        if let Some(cached) = self.cache.borrow().manifest(namespace, digest) {
            return Ok(Some((
                cached.media_type.clone(),
                ManifestBytes::Shared(cached.body.clone()),
            )));
        }
        let Some(revision) = self.revision(namespace, digest)? else {
            return Ok(None);
        };
        let Some(file) = not_found_as_none(File::open(self.blob_path(digest)))? else {
            return Ok(None);
        };
        let len = file.metadata()?.len();
        if len > MANIFEST_IN_MEMORY_BYTES_MAX {
            return Ok(Some((revision.media_type, ManifestBytes::File { file, len })));
        }
        // Small: read it from the file already open, and keep it for the next.
        let mut body = Vec::with_capacity(len as usize);
        (&file).read_to_end(&mut body)?;
        let manifest = self.keep_manifest(namespace, digest, revision.media_type, body);
        Ok(Some((manifest.media_type, ManifestBytes::Shared(manifest.body))))
    }

    pub(super) fn revision(&self, namespace: &str, digest: &Digest) -> io::Result<Option<Revision>> {
        let path = self.revision_path(namespace, digest);
        let Some(text) = not_found_as_none(fs::read_to_string(&path))? else {
            return Ok(None);
        };
        parse_revision(&text)
            .map(Some)
            .ok_or_else(|| invalid_data(&path, "corrupt revision link"))
    }

    /// When `digest` was last pushed to `namespace` (unix seconds): when
    /// its revision was written; `None` when it is not there.
    pub fn pushed_at(&self, namespace: &str, digest: &Digest) -> io::Result<Option<u64>> {
        if let Some(bucket) = self.bucket() {
            return bucket
                .pushed_at(namespace, digest)
                .map_err(bucket::BucketError::into_io);
        }
        let path = self.revision_path(namespace, digest);
        let Some(metadata) = not_found_as_none(fs::metadata(&path))? else {
            return Ok(None);
        };
        let modified = metadata.modified()?;
        Ok(Some(
            modified
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_secs()),
        ))
    }

    /// The digest a tag points to.
    pub fn tag(&self, namespace: &str, tag: &str) -> io::Result<Option<Digest>> {
        if let Some(bucket) = self.bucket() {
            return bucket.tag(namespace, tag).map_err(bucket::BucketError::into_io);
        }
        if let Some(cached) = self.cache.borrow().tag(namespace, tag) {
            return Ok(Some(cached.clone()));
        }
        let digest = read_tag(&self.tag_path(namespace, tag))?;
        if let Some(digest) = &digest {
            self.cache.borrow_mut().insert_tag(namespace, tag, digest);
        }
        Ok(digest)
    }

    /// Deletes manifest `digest` from `namespace`: its revision link, every tag
    /// pointing to it, and its referrer entry. Returns the removed tags
    /// (sorted), `None` when the namespace did not have the manifest.
    pub fn delete_manifest(&self, namespace: &str, digest: &Digest) -> io::Result<Option<Vec<String>>> {
        if let Some(bucket) = self.bucket() {
            return bucket
                .delete_manifest(namespace, digest)
                .map_err(bucket::BucketError::into_io);
        }
        self.cache.borrow_mut().invalidate(namespace);
        let Some(revision) = self.revision(namespace, digest)? else {
            return Ok(None);
        };
        // The revision link goes last: a crash midway leaves the manifest
        // present, so a retried DELETE finds it and finishes the job.
        let mut removed = Vec::new();
        for (tag, path) in self.tag_files(namespace)? {
            match read_tag(&path) {
                Ok(Some(target)) if target == *digest => {
                    if atomic::remove_file(&path, self.sync_to_disk)? {
                        removed.push(tag);
                    }
                }
                Ok(_) => {}
                // One corrupt tag must not make every manifest undeletable.
                Err(error) => log::warn!("skipping tag {namespace}:{tag}: {error}"),
            }
        }
        if let Some(subject) = &revision.subject {
            atomic::remove_file(&self.referrer_path(namespace, subject, digest), self.sync_to_disk)?;
            self.listing
                .borrow_mut()
                .remove_referrer(&format!("{namespace}\n{subject}"), &referrer_entry(digest));
        }
        atomic::remove_file(&self.revision_path(namespace, digest), self.sync_to_disk)?;
        atomic::remove_file(&self.pull_path(namespace, digest), false)?;
        removed.sort();
        let mut listing = self.listing.borrow_mut();
        for tag in &removed {
            listing.remove_tag(namespace, tag);
        }
        Ok(Some(removed))
    }

    /// Deletes a tag (not the manifest); returns the digest it pointed to.
    pub fn delete_tag(&self, namespace: &str, tag: &str) -> io::Result<Option<Digest>> {
        if let Some(bucket) = self.bucket() {
            return bucket
                .delete_tag(namespace, tag)
                .map_err(bucket::BucketError::into_io);
        }
        self.cache.borrow_mut().invalidate(namespace);
        let path = self.tag_path(namespace, tag);
        let Some(digest) = read_tag(&path)? else {
            return Ok(None);
        };
        if !atomic::remove_file(&path, self.sync_to_disk)? {
            return Ok(None);
        }
        self.listing.borrow_mut().remove_tag(namespace, tag);
        Ok(Some(digest))
    }

    /// Tags of `namespace`, sorted lexically (byte order); `None` when the
    /// namespace does not exist (never had a blob or manifest).
    pub fn tags(&self, namespace: &str) -> io::Result<Option<Vec<String>>> {
        Ok(self.tags_page(namespace, None, None)?.map(|page| page.items))
    }

    /// A page of `namespace`'s tags, sorted: those after `after`, at most
    /// `limit`; `None` when the namespace does not exist. Costs one scan of
    /// the tags the first time (or when the index had to start over), then
    /// time in proportion to the page.
    pub fn tags_page(
        &self,
        namespace: &str,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> io::Result<Option<listing::Page>> {
        if let Some(bucket) = self.bucket() {
            return bucket
                .tags_page(namespace, after, limit)
                .map_err(bucket::BucketError::into_io);
        }
        let all = |_: &str| true;
        if let Some(tags) = self.listing.borrow().tags(namespace) {
            return Ok(Some(listing::Page::of(tags, after, limit, &all)));
        }
        // Same test as `catalog`: `repositories/a` exists as a mere parent
        // of `a/b`, and must not make `a` a namespace.
        if !is_namespace_dir(&self.repository_path(namespace))? {
            return Ok(None);
        }
        let tags: std::collections::BTreeSet<String> = self
            .tag_files(namespace)?
            .into_iter()
            .map(|(tag, _)| tag)
            .collect();
        let page = listing::Page::of(&tags, after, limit, &all);
        self.listing.borrow_mut().fill_tags(namespace, tags);
        Ok(Some(page))
    }

    /// Tag names and paths of `namespace`, unordered; empty when it has none.
    pub(super) fn tag_files(&self, namespace: &str) -> io::Result<Vec<(String, PathBuf)>> {
        let Some(entries) = not_found_as_none(fs::read_dir(self.tags_dir(namespace)))? else {
            return Ok(Vec::new());
        };
        let mut tags = Vec::new();
        for entry in entries {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            // Tags are ASCII by grammar; anything else was not written by us.
            if let Ok(tag) = entry.file_name().into_string() {
                tags.push((tag, entry.path()));
            }
        }
        Ok(tags)
    }

    /// Referrer descriptors stored under `subject`, sorted by referrer digest.
    pub fn referrers(&self, namespace: &str, subject: &Digest) -> io::Result<Vec<serde_json::Value>> {
        Ok(self.referrers_page(namespace, subject, None, None)?.0)
    }

    /// A page of the referrer descriptors stored under `subject`, in digest
    /// order: those after the entry `after`, at most `limit`, and the entry to
    /// continue after when more follow. Only the page's files are read.
    pub fn referrers_page(
        &self,
        namespace: &str,
        subject: &Digest,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> io::Result<(Vec<serde_json::Value>, Option<String>)> {
        if let Some(bucket) = self.bucket() {
            return bucket
                .referrers_page(namespace, subject, after, limit)
                .map_err(bucket::BucketError::into_io);
        }
        let key = format!("{namespace}\n{subject}");
        let all = |_: &str| true;
        let cached = self
            .listing
            .borrow()
            .referrers(&key)
            .map(|entries| listing::Page::of(entries, after, limit, &all));
        let page = match cached {
            Some(page) => page,
            None => {
                let entries = self.referrer_entries(namespace, subject)?;
                let page = listing::Page::of(&entries, after, limit, &all);
                self.listing.borrow_mut().fill_referrers(&key, entries);
                page
            }
        };
        let dir = self.referrers_dir(namespace, subject);
        let mut descriptors = Vec::with_capacity(page.items.len());
        for name in &page.items {
            let path = dir.join(name);
            // Removed between listing and reading by nobody on this thread,
            // but treat it like any other missing file.
            let Some(bytes) = not_found_as_none(fs::read(&path))? else {
                continue;
            };
            let descriptor: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|_| invalid_data(&path, "corrupt referrer descriptor"))?;
            descriptors.push(descriptor);
        }
        let next = page.more.then(|| page.items.last().cloned()).flatten();
        Ok((descriptors, next))
    }

    /// The entry names under a subject's referrers directory. Names are
    /// "<alg>-<hex>"; the algorithms differ before the separator, so name
    /// order is digest order ("alg:hex").
    fn referrer_entries(
        &self,
        namespace: &str,
        subject: &Digest,
    ) -> io::Result<std::collections::BTreeSet<String>> {
        let mut names = std::collections::BTreeSet::new();
        let Some(entries) = not_found_as_none(fs::read_dir(self.referrers_dir(namespace, subject)))? else {
            return Ok(names);
        };
        for entry in entries {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            if let Ok(name) = entry.file_name().into_string() {
                names.insert(name);
            }
        }
        Ok(names)
    }

    /// Every namespace that has a blob link or a manifest, sorted lexically.
    pub fn catalog(&self) -> io::Result<Vec<String>> {
        Ok(self.catalog_page(None, None, &|_| true)?.items)
    }

    /// A page of the namespaces `accept` takes, sorted: those after `after`,
    /// at most `limit`. One walk of `repositories/` the first time, then
    /// time in proportion to the page (and the names `accept` refuses).
    pub fn catalog_page(
        &self,
        after: Option<&str>,
        limit: Option<usize>,
        accept: &dyn Fn(&str) -> bool,
    ) -> io::Result<listing::Page> {
        if let Some(bucket) = self.bucket() {
            return bucket
                .catalog_page(after, limit, accept)
                .map_err(bucket::BucketError::into_io);
        }
        if let Some(namespaces) = self.listing.borrow().namespaces() {
            return Ok(listing::Page::of(namespaces, after, limit, accept));
        }
        let mut namespaces = std::collections::BTreeSet::new();
        self.walk_namespaces(usize::MAX, |name| {
            namespaces.insert(name.to_string());
            false
        })?;
        let page = listing::Page::of(&namespaces, after, limit, accept);
        self.listing.borrow_mut().fill_namespaces(namespaces);
        Ok(page)
    }

    /// A namespace that `accept`s and may read `digest`, looking at no more
    /// than `directories_max` directories under `repositories/` (automatic
    /// cross-repository mount: a blob is only lent from where the client
    /// could pull it).
    pub fn find_blob_holder(
        &self,
        digest: &Digest,
        accept: &dyn Fn(&str) -> bool,
        directories_max: usize,
    ) -> io::Result<Option<String>> {
        if let Some(bucket) = self.bucket() {
            return bucket
                .find_blob_holder(digest, accept, directories_max)
                .map_err(bucket::BucketError::into_io);
        }
        // Most blobs a client offers to mount are new: one stat answers that.
        if !exists(&self.blob_path(digest))? {
            return Ok(None);
        }
        let mut holder = None;
        self.walk_namespaces(directories_max, |name| {
            // An I/O error on one link reads as "not here"; the walk goes on.
            if accept(name) && exists(&self.layer_link_path(name, digest)).unwrap_or(false) {
                holder = Some(name.to_string());
            }
            holder.is_some()
        })?;
        Ok(holder)
    }

    /// Calls `visit` with each namespace under `repositories/`, in no
    /// particular order, until it returns `true` or `directories_max`
    /// directories were read.
    fn walk_namespaces(&self, directories_max: usize, mut visit: impl FnMut(&str) -> bool) -> io::Result<()> {
        let mut walk = self.namespace_walk();
        for _ in 0..directories_max {
            if walk.is_done() {
                break;
            }
            for name in walk.step(1)? {
                if visit(&name) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}
