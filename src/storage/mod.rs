//! The filesystem layout of the registry and its atomic commits. Owns every
//! path under `root_dir`; knows nothing of HTTP. Each commit is a write to a
//! temporary file under `root/_tmp`, an optional fsync of file and directory
//! (`sync_to_disk`), then a rename, so a crash leaves the old state or the new.
//!
//! Layout (namespaces are validated by the caller; their components cannot
//! start with `_`, so the `_` names below never collide with one):
//! ```text
//! root/_tmp/<random>                                  in-flight atomic writes
//! root/_uploads/<id>/data                             upload session bytes
//! root/_uploads/<id>/namespace                        owner of the session
//! root/_trash/<random>                                being removed off the loop
//! root/_quarantine/<alg>-<hex>[.<random>]             content that failed its digest check
//! root/blobs/<alg>/<hex[0..2]>/<hex>                  content (blobs and manifests)
//! root/repositories/<ns>/_layers/<alg>/<hex>          the namespace may read that blob
//! root/repositories/<ns>/_manifests/revisions/<alg>/<hex>
//!                                                     "<media type>\n<subject digest or empty>\n"
//! root/repositories/<ns>/_manifests/tags/<tag>        "<digest>\n"
//! root/repositories/<ns>/_manifests/pulls/<alg>/<hex> "<unix seconds>\n": its last pull (update_pull_time)
//! root/repositories/<ns>/_referrers/<alg>/<subject hex>/<alg>-<referrer hex>
//!                                                     the referrer's descriptor JSON
//! ```

mod atomic;
pub mod bucket;
mod cache;
pub mod listing;
mod manifests;
pub mod space;
mod uploads;
mod usage;
pub mod walk;
mod watch;

use manifests::referrer_entry;
pub use manifests::{MANIFEST_IN_MEMORY_BYTES_MAX, ManifestBytes, StoredManifest};
pub use space::{DiskSpace, Full, MinFreeSpace, SpaceProbe};
use uploads::UploadSession;
pub use uploads::{UploadError, UploadWriter};
pub use usage::{ContentCount, SpaceReport};
pub use watch::Watch;
pub use watch::content_key as watch_content_key;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::digest::{Digest, to_lower_hex};

/// Bounds the number of open upload sessions (each keeps a hasher in memory).
pub const UPLOAD_SESSIONS_MAX_DEFAULT: usize = 4096;

/// Default budget of the in-memory manifest and tag cache.
pub const MANIFEST_CACHE_BYTES_DEFAULT: usize = 4 << 20;

/// Default budget of the sorted listing index.
pub const LISTING_INDEX_BYTES_DEFAULT: usize = 16 << 20;
/// Read size when a session must be rehashed with another algorithm.
const REHASH_CHUNK_BYTES: usize = 1 << 20;

/// A manifest's pull time is rewritten at most this often.
const PULL_RECORD_INTERVAL_SECS: u64 = 60;
/// Manifests whose last recorded pull is remembered, to skip rewrites.
const PULL_RECORDS_REMEMBERED_MAX: usize = 65_536;

/// Random bytes in an upload id (32 hex characters) and a temporary file name.
const RANDOM_ID_BYTES: usize = 16;

const TMP_DIR: &str = "_tmp";
const UPLOADS_DIR: &str = "_uploads";
/// Where large things go to be removed off the loop (see `Storage::discard`).
const TRASH_DIR: &str = "_trash";
/// Content found corrupt by a scrub, kept for an operator to look at.
const QUARANTINE_DIR: &str = "_quarantine";
/// Under a bucket replica's `local_dir`: blobs the cache is fetching.
const SPOOL_DIR: &str = "_spool";
const BLOBS_DIR: &str = "blobs";
const REPOSITORIES_DIR: &str = "repositories";
const LAYERS_DIR: &str = "_layers";
const MANIFESTS_DIR: &str = "_manifests";
const REFERRERS_DIR: &str = "_referrers";
const SESSION_DATA_FILE: &str = "data";
const SESSION_NAMESPACE_FILE: &str = "namespace";

/// Where a blob's bytes are read from.
#[derive(Debug)]
pub enum BlobSource {
    File(File),
    /// Its object in the bucket.
    Bucket(Digest),
}

#[derive(Debug)]
pub struct Storage {
    root: PathBuf,
    sync_to_disk: bool,
    /// Open upload sessions by id. Never iterated, so its order cannot leak.
    sessions: HashMap<String, UploadSession>,
    upload_sessions_max: usize,
    /// Open sessions one namespace may hold, so no one client exhausts the pool.
    upload_sessions_per_namespace_max: usize,
    /// Open sessions per namespace (only namespaces with at least one).
    sessions_per_namespace: HashMap<String, usize>,
    /// Manifests and tags already read; see `cache.rs` for why it is coherent.
    cache: RefCell<cache::ManifestCache>,
    /// Sorted tag and namespace names for paged listings (`listing.rs`).
    listing: RefCell<listing::ListingIndex>,
    /// Paths moved into `_trash` and not yet handed to whoever removes them
    /// (`take_discarded`).
    discarded: Vec<PathBuf>,
    /// Where discards go while a collection runs (`begin_discard_batch`).
    discard_batch: Option<PathBuf>,
    /// What requests touched while a collection runs (`watch.rs`); `None`
    /// when none does.
    watch: RefCell<Option<Watch>>,
    /// Manifest writes per namespace, for decisions taken slices earlier.
    epochs: RefCell<watch::Epochs>,
    /// When each recently pulled manifest's pull time was last written.
    pulls_written: RefCell<HashMap<(String, Digest), u64>>,
    /// `min_free_space` and the disk readings behind it (`space.rs`).
    space: space::SpaceGuard,
    /// Bytes under `blobs/`, once counted (`usage.rs`).
    content_bytes: Cell<Option<u64>>,
    /// What a collection would free, once the collector said.
    reclaimable_bytes: Cell<Option<u64>>,
    /// The S3 backend, when the content lives in a bucket: the operations
    /// below then go there (and may wait: `bucket::BucketError::Pending`),
    /// and `root` is unused.
    bucket: Option<Box<bucket::BucketStore>>,
    /// On a bucket: the local directory where the pull-through cache spools
    /// a blob while it is fetched (`open_spool`), for its readers.
    spool_dir: Option<PathBuf>,
}

impl Storage {
    /// Creates the layout under `root` if missing, and removes leftovers of a
    /// previous run: everything in `_tmp` and every upload session in `_uploads`
    /// (sessions do not survive a restart; clients restart the upload).
    pub fn open(root: &Path, sync_to_disk: bool, upload_sessions_max: usize) -> io::Result<Storage> {
        for dir in [TMP_DIR, UPLOADS_DIR, TRASH_DIR] {
            unlink_if_symlink(&root.join(dir))?;
        }
        for dir in [
            TMP_DIR,
            UPLOADS_DIR,
            TRASH_DIR,
            QUARANTINE_DIR,
            BLOBS_DIR,
            REPOSITORIES_DIR,
        ] {
            atomic::create_dirs(&root.join(dir), sync_to_disk)?;
        }
        for dir in [TMP_DIR, UPLOADS_DIR, TRASH_DIR] {
            remove_dir_contents(&root.join(dir))?;
        }
        Ok(Storage::empty(
            root.to_path_buf(),
            sync_to_disk,
            upload_sessions_max,
            None,
        ))
    }

    /// A store with nothing open or counted yet: on `root`, or on a bucket.
    fn empty(
        root: PathBuf,
        sync_to_disk: bool,
        upload_sessions_max: usize,
        bucket: Option<Box<bucket::BucketStore>>,
    ) -> Storage {
        Storage {
            root,
            sync_to_disk,
            sessions: HashMap::new(),
            upload_sessions_max,
            upload_sessions_per_namespace_max: upload_sessions_max,
            sessions_per_namespace: HashMap::new(),
            cache: RefCell::new(cache::ManifestCache::new(MANIFEST_CACHE_BYTES_DEFAULT)),
            listing: RefCell::new(listing::ListingIndex::new(LISTING_INDEX_BYTES_DEFAULT)),
            discarded: Vec::new(),
            discard_batch: None,
            watch: RefCell::new(None),
            epochs: RefCell::new(watch::Epochs::default()),
            pulls_written: RefCell::new(HashMap::new()),
            space: space::SpaceGuard::off(),
            content_bytes: Cell::new(None),
            reclaimable_bytes: Cell::new(None),
            bucket,
            spool_dir: None,
        }
    }

    /// A store whose content lives in a bucket (`[blob_store.s3]`); nothing
    /// is written to the local disk but the spools of `with_spool_dir`.
    pub fn on_bucket(store: bucket::BucketStore, upload_sessions_max: usize) -> Storage {
        // The bucket keeps no local caches of its own layout: `objects.rs` does.
        Storage::empty(PathBuf::new(), false, upload_sessions_max, Some(Box::new(store)))
            .with_manifest_cache(0)
            .with_listing_index(0)
    }

    /// On a bucket, where blobs being fetched by the pull-through cache are
    /// spooled: `dir/_spool`, emptied of a previous run's, made at the
    /// first fill (a replica without a mirror keeps nothing there).
    pub fn with_spool_dir(mut self, dir: &Path) -> io::Result<Storage> {
        let spool = dir.join(SPOOL_DIR);
        unlink_if_symlink(&spool)?;
        if spool.is_dir() {
            remove_dir_contents(&spool)?;
        }
        self.spool_dir = Some(spool);
        Ok(self)
    }

    /// A new spool file, opened to write and read, and already unlinked: it
    /// lives as long as its handles do, so no crash leaves it behind.
    pub fn open_spool(&self) -> io::Result<File> {
        let Some(dir) = &self.spool_dir else {
            return Err(io::Error::other("no spool directory on this storage"));
        };
        fs::create_dir_all(dir)?;
        let path = dir.join(random_hex(RANDOM_ID_BYTES));
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        fs::remove_file(&path)?;
        Ok(file)
    }

    /// The S3 backend, when the content lives in a bucket.
    pub fn bucket(&self) -> Option<&bucket::BucketStore> {
        self.bucket.as_deref()
    }

    /// Takes `path` out of the layout at once, by a rename into `_trash`
    /// (constant time), so that removing it, whose cost grows with its size
    /// (half a second for a 1 GiB file here), happens off the loop
    /// (`take_discarded`). Falls back to removing it here if the rename fails.
    fn discard(&mut self, path: &Path) -> io::Result<()> {
        let name = random_hex(RANDOM_ID_BYTES);
        let target = match &self.discard_batch {
            Some(batch) => batch.join(name),
            None => self.root.join(TRASH_DIR).join(name),
        };
        match fs::rename(path, &target) {
            Ok(()) => {
                if self.discard_batch.is_none() {
                    self.discarded.push(target);
                }
                Ok(())
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(_) => fs::remove_dir_all(path),
        }
    }

    /// From now on, discards go into one new directory of `_trash`, handed
    /// over whole at `end_discard_batch`. A collection discards thousands of
    /// files: removing them while it runs made the loop wait on the file
    /// system behind the file thread's unlinks (a 10 ms p99 of `GET /v2/`
    /// while 100,000 small blobs went, 0.9 ms with the batch; `cargo bench
    /// --bench gc`), and one path per file would cost memory per file.
    pub fn begin_discard_batch(&mut self) -> io::Result<()> {
        if self.discard_batch.is_some() {
            return Ok(());
        }
        let batch = self.root.join(TRASH_DIR).join(random_hex(RANDOM_ID_BYTES));
        fs::create_dir(&batch)?;
        self.discard_batch = Some(batch);
        Ok(())
    }

    /// Hands the batch directory over for removal (`take_discarded`).
    pub fn end_discard_batch(&mut self) {
        if let Some(batch) = self.discard_batch.take() {
            self.discarded.push(batch);
        }
    }

    /// Paths discarded since the last call; each is removed by the caller
    /// (the reactor's file worker), or at the next start.
    pub fn take_discarded(&mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.discarded)
    }

    /// Starts recording what requests touch, for a collection (`watch.rs`).
    pub fn start_watch(&self) {
        self.watch.replace(Some(Watch::default()));
    }

    /// Stops recording; returns what was recorded.
    pub fn stop_watch(&self) -> Option<Watch> {
        self.watch.take()
    }

    /// Whether a request wrote or read `namespace`'s link to `digest` since
    /// the watch started.
    pub fn link_touched(&self, namespace: &str, digest: &Digest) -> bool {
        self.watch
            .borrow()
            .as_ref()
            .is_some_and(|watch| watch.link_touched(namespace, digest))
    }

    /// Whether a request wrote, linked or read content `digest` since the
    /// watch started.
    pub fn content_touched(&self, digest: &Digest) -> bool {
        self.watch
            .borrow()
            .as_ref()
            .is_some_and(|watch| watch.content_touched(digest))
    }

    /// Entries the watch holds (0 without one).
    pub fn watched(&self) -> usize {
        self.watch.borrow().as_ref().map_or(0, Watch::len)
    }

    fn touch_link(&self, namespace: &str, digest: &Digest) {
        if let Some(watch) = self.watch.borrow_mut().as_mut() {
            watch.touch_link(namespace, digest);
        }
    }

    fn touch_content(&self, digest: &Digest) {
        if let Some(watch) = self.watch.borrow_mut().as_mut() {
            watch.touch_content(digest);
        }
    }

    /// Manifest writes to `namespace` so far: a decision taken at one epoch
    /// is stale at another.
    pub fn manifest_epoch(&self, namespace: &str) -> u64 {
        self.epochs.borrow().get(namespace)
    }

    /// Sets the listing index budget (0 disables it: every listing scans).
    pub fn with_listing_index(self, budget_bytes: usize) -> Storage {
        self.listing.replace(listing::ListingIndex::new(budget_bytes));
        self
    }

    /// Sets the manifest cache budget (0 disables the cache).
    pub fn with_manifest_cache(self, budget_bytes: usize) -> Storage {
        self.cache.replace(cache::ManifestCache::new(budget_bytes));
        self
    }

    /// The root directory this storage owns.
    /// Whether commits and removals are fsync'd (`sync_to_disk`).
    pub fn syncs_to_disk(&self) -> bool {
        self.sync_to_disk
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Number of open upload sessions (for metrics).
    pub fn upload_sessions(&self) -> usize {
        self.sessions.len()
    }

    // ---- paths -----------------------------------------------------------

    fn tmp_dir(&self) -> PathBuf {
        self.root.join(TMP_DIR)
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root
            .join(BLOBS_DIR)
            .join(digest.algorithm())
            .join(&hex[..2])
            .join(hex)
    }

    fn repository_path(&self, namespace: &str) -> PathBuf {
        debug_assert_namespace(namespace);
        self.root.join(REPOSITORIES_DIR).join(namespace)
    }

    fn layer_link_path(&self, namespace: &str, digest: &Digest) -> PathBuf {
        self.repository_path(namespace)
            .join(LAYERS_DIR)
            .join(digest.algorithm())
            .join(digest.hex())
    }

    fn revision_path(&self, namespace: &str, digest: &Digest) -> PathBuf {
        self.repository_path(namespace)
            .join(MANIFESTS_DIR)
            .join("revisions")
            .join(digest.algorithm())
            .join(digest.hex())
    }

    fn pull_path(&self, namespace: &str, digest: &Digest) -> PathBuf {
        self.repository_path(namespace)
            .join(MANIFESTS_DIR)
            .join("pulls")
            .join(digest.algorithm())
            .join(digest.hex())
    }

    fn tags_dir(&self, namespace: &str) -> PathBuf {
        self.repository_path(namespace).join(MANIFESTS_DIR).join("tags")
    }

    fn tag_path(&self, namespace: &str, tag: &str) -> PathBuf {
        debug_assert_tag(tag);
        self.tags_dir(namespace).join(tag)
    }

    fn referrers_dir(&self, namespace: &str, subject: &Digest) -> PathBuf {
        self.repository_path(namespace)
            .join(REFERRERS_DIR)
            .join(subject.algorithm())
            .join(subject.hex())
    }

    fn referrer_path(&self, namespace: &str, subject: &Digest, referrer: &Digest) -> PathBuf {
        self.referrers_dir(namespace, subject)
            .join(referrer_entry(referrer))
    }

    fn session_dir(&self, id: &str) -> PathBuf {
        self.root.join(UPLOADS_DIR).join(id)
    }

    fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> io::Result<()> {
        atomic::write_file(&self.tmp_dir(), dest, bytes, self.sync_to_disk)
    }

    /// Writes the (empty) link that lets `namespace` read `digest`, unless
    /// it is there already: re-linking is common (every push of a shared base
    /// layer) and would otherwise cost a file and two fsyncs.
    fn ensure_layer_link(&self, namespace: &str, digest: &Digest) -> io::Result<()> {
        self.touch_link(namespace, digest);
        let link = self.layer_link_path(namespace, digest);
        if exists(&link)? {
            return Ok(());
        }
        self.write_atomic(&link, b"")?;
        self.listing.borrow_mut().add_namespace(namespace);
        Ok(())
    }

    // ---- blobs -----------------------------------------------------------

    /// Size of `digest` if `namespace` may read it (uploaded or mounted there).
    pub fn blob_size(&self, namespace: &str, digest: &Digest) -> io::Result<Option<u64>> {
        // A client that checks a blob may reference it in its next manifest.
        self.touch_link(namespace, digest);
        if let Some(bucket) = self.bucket() {
            return bucket
                .blob_size(namespace, digest)
                .map_err(bucket::BucketError::into_io);
        }
        if !exists(&self.layer_link_path(namespace, digest))? {
            return Ok(None);
        }
        match fs::metadata(self.blob_path(digest)) {
            Ok(metadata) => Ok(Some(metadata.len())),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Where blob `digest` is read from, if `namespace` may read it, and
    /// its size: its file, or (on a bucket) its object, streamed when the
    /// answer is built (`body_of_blob`).
    pub fn blob_source(&self, namespace: &str, digest: &Digest) -> io::Result<Option<(BlobSource, u64)>> {
        if let Some(bucket) = self.bucket() {
            self.touch_link(namespace, digest);
            let size = bucket
                .blob_size(namespace, digest)
                .map_err(bucket::BucketError::into_io)?;
            return Ok(size.map(|size| (BlobSource::Bucket(digest.clone()), size)));
        }
        Ok(self
            .open_blob(namespace, digest)?
            .map(|(file, size)| (BlobSource::File(file), size)))
    }

    /// A URL to send a blob's `GET` to (`307`), when a bucket's downloads
    /// are redirected (`redirect_downloads`).
    pub fn blob_redirect(&self, source: &BlobSource) -> Option<String> {
        match source {
            BlobSource::Bucket(digest) => self.bucket()?.blob_redirect(digest),
            BlobSource::File(_) => None,
        }
    }

    /// The answer body for `len` bytes of a blob from `offset`.
    pub fn body_of_blob(&self, source: BlobSource, offset: u64, len: u64) -> crate::http::Body {
        match source {
            BlobSource::File(file) => crate::http::Body::File { file, offset, len },
            BlobSource::Bucket(_) if len == 0 => crate::http::Body::Empty,
            BlobSource::Bucket(digest) => match self.bucket() {
                Some(bucket) => crate::http::Body::Fed {
                    feed: bucket.open_blob(&digest, offset, offset + len - 1),
                    len,
                },
                None => crate::http::Body::Empty,
            },
        }
    }

    /// Opens `digest` for reading if `namespace` may read it; returns the file and its size.
    pub fn open_blob(&self, namespace: &str, digest: &Digest) -> io::Result<Option<(File, u64)>> {
        self.touch_link(namespace, digest);
        if !exists(&self.layer_link_path(namespace, digest))? {
            return Ok(None);
        }
        let Some(file) = not_found_as_none(File::open(self.blob_path(digest)))? else {
            return Ok(None);
        };
        // The size of the open file, not of the path: the two cannot differ
        // for content-addressed files, but this needs no second lookup.
        let size = file.metadata()?.len();
        Ok(Some((file, size)))
    }

    /// Lets `namespace` read an existing blob (cross-repository mount). `false`
    /// when the blob content does not exist at all.
    pub fn link_blob(&self, namespace: &str, digest: &Digest) -> io::Result<bool> {
        if let Some(bucket) = self.bucket() {
            return bucket
                .link_blob(namespace, digest)
                .map_err(bucket::BucketError::into_io);
        }
        if !exists(&self.blob_path(digest))? {
            return Ok(false);
        }
        self.ensure_layer_link(namespace, digest)?;
        Ok(true)
    }

    /// Removes `namespace`'s access to `digest`; `false` when it had none.
    pub fn delete_blob(&self, namespace: &str, digest: &Digest) -> io::Result<bool> {
        if let Some(bucket) = self.bucket() {
            return bucket
                .delete_blob(namespace, digest)
                .map_err(bucket::BucketError::into_io);
        }
        // The content stays: other namespaces may link it, and reclaiming
        // unreferenced content is garbage collection, not a request's job.
        atomic::remove_file(&self.layer_link_path(namespace, digest), self.sync_to_disk)
    }
}

/// The lock file a server holds on its data directory for as long as it
/// runs, so that a second server, or an offline maintenance command, cannot
/// work on the same data unseen (`angos scrub` asks the running server instead).
const ROOT_LOCK_FILE: &str = ".lock";

/// Takes the data directory's lock: `Ok(None)` when another process holds it.
/// The lock lasts as long as the returned file is open.
pub fn lock_root(root: &Path) -> io::Result<Option<File>> {
    atomic::create_dirs(root, false)?;
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(root.join(ROOT_LOCK_FILE))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(error)) => Err(error),
    }
}

/// Writes the server's listening address into the lock it holds.
pub fn note_server_address(lock: &File, address: std::net::SocketAddr) -> io::Result<()> {
    use std::io::Write;
    lock.set_len(0)?;
    let mut writer = lock;
    writer.write_all(format!("{address}\n").as_bytes())
}

/// The address a running server noted in `root`'s lock, if any.
pub fn noted_server_address(root: &Path) -> Option<std::net::SocketAddr> {
    fs::read_to_string(root.join(ROOT_LOCK_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A directory under `repositories/` is a namespace once it has a blob link
/// or a manifest (written only by `ensure_layer_link` and `put_manifest`).
fn is_namespace_dir(dir: &Path) -> io::Result<bool> {
    Ok(exists(&dir.join(LAYERS_DIR))? || exists(&dir.join(MANIFESTS_DIR))?)
}

fn exists(path: &Path) -> io::Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(error),
    }
}

fn not_found_as_none<T>(result: io::Result<T>) -> io::Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

fn invalid_data(path: &Path, what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {}", path.display()))
}

/// Empties `dir` without removing it.
/// The scratch directories are emptied at every start: one that is a
/// symbolic link would have its target's files deleted. The link itself is
/// removed (never what it points to) and a real directory made in its place.
fn unlink_if_symlink(dir: &Path) -> io::Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(metadata) if metadata.file_type().is_symlink() => {
            log::warn!(
                target: "angos::storage",
                "{} is a symbolic link; removing the link (not its target) and using a directory",
                dir.display()
            );
            fs::remove_file(dir)
        }
        Ok(_) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

fn remove_dir_contents(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())?;
        } else {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Names reach the filesystem as path components; the registry's grammar
/// check is what keeps them inside `repositories/<ns>` and away from the
/// `_` directories. This catches a handler that forgot it.
fn debug_assert_namespace(namespace: &str) {
    debug_assert!(
        !namespace.is_empty()
            && namespace
                .split('/')
                .all(|component| !component.is_empty() && !component.starts_with(['_', '.'])),
        "unvalidated namespace {namespace:?}"
    );
}

fn debug_assert_tag(tag: &str) {
    debug_assert!(
        !tag.is_empty() && !tag.contains('/') && !tag.starts_with('.'),
        "unvalidated tag {tag:?}"
    );
}

/// Fills `buf` with random bytes from the kernel (`getrandom(2)`): for the
/// storage's own names (temporary files, upload ids) and the secrets drawn
/// at start, where replaying a run has no use.
pub fn random_bytes(buf: &mut [u8]) {
    crate::entropy::os_fill(buf);
}

/// `bytes` random bytes as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0; bytes];
    random_bytes(&mut buf);
    to_lower_hex(&buf)
}

/// A random (version 4, RFC 9562) UUID in its hyphenated lowercase form.
pub fn uuid_v4() -> String {
    crate::entropy::uuid_v4(&mut crate::entropy::OsEntropy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Hasher;
    use manifests::parse_revision;
    use std::io::Read;

    use crate::test_support::TempDir;

    fn open(root: &TempDir) -> Storage {
        Storage::open(root.path(), true, UPLOAD_SESSIONS_MAX_DEFAULT).unwrap()
    }

    fn sha512_of(bytes: &[u8]) -> Digest {
        let mut hasher = Hasher::for_algorithm("sha512").unwrap();
        hasher.update(bytes);
        hasher.digest()
    }

    fn upload(storage: &mut Storage, namespace: &str, chunks: &[&[u8]]) -> String {
        let id = storage.start_upload(namespace).unwrap();
        for chunk in chunks {
            let mut writer = storage.upload_writer(namespace, &id).unwrap();
            writer.write(chunk).unwrap();
            storage.release_writer(namespace, &id, writer);
        }
        id
    }

    fn push_blob(storage: &mut Storage, namespace: &str, bytes: &[u8]) -> Digest {
        let digest = Digest::sha256_of(bytes);
        let id = upload(storage, namespace, &[bytes]);
        storage.verify_upload(namespace, &id, &digest).unwrap();
        storage.commit_upload(namespace, &id, &digest).unwrap();
        digest
    }

    fn read_blob(storage: &Storage, namespace: &str, digest: &Digest) -> Option<Vec<u8>> {
        let (mut file, size) = storage.open_blob(namespace, digest).unwrap()?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes.len() as u64, size);
        Some(bytes)
    }

    fn dir_entries(dir: &Path) -> usize {
        fs::read_dir(dir).unwrap().count()
    }

    fn tags(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

    #[test]
    fn upload_in_two_writes_then_verify_and_commit() {
        let root = TempDir::new("storage-test");
        let mut storage = open(&root);
        let id = storage.start_upload("library/alpine").unwrap();
        assert_eq!(id.len(), 32);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert_eq!(storage.upload_size("library/alpine", &id), Some(0));

        let mut writer = storage.upload_writer("library/alpine", &id).unwrap();
        writer.write(b"hello ").unwrap();
        assert_eq!(writer.size(), 6);
        storage.release_writer("library/alpine", &id, writer);
        assert_eq!(storage.upload_size("library/alpine", &id), Some(6));

        let mut writer = storage.upload_writer("library/alpine", &id).unwrap();
        writer.write(b"world").unwrap();
        storage.release_writer("library/alpine", &id, writer);
        assert_eq!(storage.upload_size("library/alpine", &id), Some(11));

        let digest = Digest::sha256_of(b"hello world");
        assert_eq!(storage.blob_size("library/alpine", &digest).unwrap(), None);
        assert_eq!(storage.verify_upload("library/alpine", &id, &digest).unwrap(), 11);
        storage.commit_upload("library/alpine", &id, &digest).unwrap();

        assert_eq!(storage.upload_size("library/alpine", &id), None);
        assert_eq!(storage.upload_sessions(), 0);
        assert_eq!(dir_entries(&root.path().join(UPLOADS_DIR)), 0);
        assert_eq!(dir_entries(&root.path().join(TMP_DIR)), 0);
        assert_eq!(storage.blob_size("library/alpine", &digest).unwrap(), Some(11));
        assert_eq!(
            read_blob(&storage, "library/alpine", &digest).unwrap(),
            b"hello world"
        );
        // The documented layout, byte for byte.
        let hex = digest.hex();
        let blob = root.path().join(format!("blobs/sha256/{}/{hex}", &hex[..2]));
        assert_eq!(fs::read(blob).unwrap(), b"hello world");
        assert!(
            root.path()
                .join(format!("repositories/library/alpine/_layers/sha256/{hex}"))
                .is_file()
        );
    }

    #[test]
    fn one_writer_at_a_time_and_sessions_scoped_to_namespace() {
        let root = TempDir::new("storage-test");
        let mut storage = open(&root);
        let id = storage.start_upload("a").unwrap();
        assert!(matches!(
            storage.upload_writer("b", &id),
            Err(UploadError::Unknown)
        ));
        assert_eq!(storage.upload_size("b", &id), None);
        assert!(matches!(
            storage.upload_writer("a", "nope"),
            Err(UploadError::Unknown)
        ));

        let mut writer = storage.upload_writer("a", &id).unwrap();
        assert!(matches!(
            storage.upload_writer("a", &id),
            Err(UploadError::Unknown)
        ));
        let digest = Digest::sha256_of(b"x");
        // The file may still grow while a writer is out.
        assert!(matches!(
            storage.verify_upload("a", &id, &digest),
            Err(UploadError::Unknown)
        ));
        assert!(matches!(
            storage.commit_upload("a", &id, &digest),
            Err(UploadError::Unknown)
        ));
        writer.write(b"x").unwrap();
        storage.release_writer("a", &id, writer);
        assert_eq!(storage.verify_upload("a", &id, &digest).unwrap(), 1);
        assert!(!storage.cancel_upload("b", &id).unwrap());
        storage.commit_upload("a", &id, &digest).unwrap();
        assert_eq!(storage.blob_size("b", &digest).unwrap(), None);
        assert_eq!(storage.blob_size("a", &digest).unwrap(), Some(1));
    }

    #[test]
    fn digest_mismatch_removes_the_session() {
        let root = TempDir::new("storage-test");
        let mut storage = open(&root);
        let id = upload(&mut storage, "ns", &[b"some bytes"]);
        let wrong = Digest::sha256_of(b"other bytes");
        assert!(matches!(
            storage.verify_upload("ns", &id, &wrong),
            Err(UploadError::DigestMismatch)
        ));
        assert_eq!(storage.upload_size("ns", &id), None);
        assert!(!root.path().join(UPLOADS_DIR).join(&id).exists());
        assert_eq!(storage.blob_size("ns", &wrong).unwrap(), None);
        assert_eq!(dir_entries(&root.path().join(BLOBS_DIR)), 0);
    }

    #[test]
    fn commit_without_verify_still_checks_the_digest() {
        let root = TempDir::new("storage-test");
        let mut storage = open(&root);
        let id = upload(&mut storage, "ns", &[b"bytes"]);
        let wrong = Digest::sha256_of(b"not these");
        assert!(matches!(
            storage.commit_upload("ns", &id, &wrong),
            Err(UploadError::DigestMismatch)
        ));
        assert_eq!(dir_entries(&root.path().join(BLOBS_DIR)), 0);
        assert_eq!(storage.upload_sessions(), 0);

        // A write after verification invalidates it.
        let id = upload(&mut storage, "ns", &[b"bytes"]);
        let right = Digest::sha256_of(b"bytes");
        storage.verify_upload("ns", &id, &right).unwrap();
        let mut writer = storage.upload_writer("ns", &id).unwrap();
        writer.write(b" more").unwrap();
        storage.release_writer("ns", &id, writer);
        assert!(matches!(
            storage.commit_upload("ns", &id, &right),
            Err(UploadError::DigestMismatch)
        ));
        assert_eq!(storage.blob_size("ns", &right).unwrap(), None);
    }

    #[test]
    fn one_namespace_cannot_take_every_session() {
        let root = TempDir::new("storage-test");
        let mut storage = Storage::open(root.path(), false, 10)
            .unwrap()
            .with_upload_sessions_per_namespace(2);
        let first = storage.start_upload("greedy").unwrap();
        storage.start_upload("greedy").unwrap();
        assert!(matches!(
            storage.start_upload("greedy"),
            Err(UploadError::TooManySessionsHere(2))
        ));
        storage.start_upload("other").unwrap();
        // A session that ends gives its place back.
        storage.cancel_upload("greedy", &first).unwrap();
        storage.start_upload("greedy").unwrap();
    }

    #[test]
    fn idle_sessions_expire_after_a_sweep_without_use() {
        let root = TempDir::new("storage-test");
        let mut storage = open(&root);
        let idle = storage.start_upload("ns").unwrap();
        let busy = storage.start_upload("ns").unwrap();
        let writing = storage.start_upload("ns").unwrap();
        let writer = storage.upload_writer("ns", &writing).unwrap();
        // The first sweep only marks: every session was used since the start.
        assert_eq!(storage.expire_idle_uploads(), 0);
        let writer_busy = storage.upload_writer("ns", &busy).unwrap();
        storage.release_writer("ns", &busy, writer_busy);
        assert_eq!(storage.expire_idle_uploads(), 1);
        assert_eq!(storage.upload_size("ns", &idle), None, "the idle one is gone");
        assert!(
            !root.path().join(UPLOADS_DIR).join(&idle).exists(),
            "with its files"
        );
        assert_eq!(storage.upload_size("ns", &busy), Some(0));
        // A writer out (a body streaming in) is use, however long it takes.
        assert_eq!(storage.expire_idle_uploads(), 1, "busy is idle now");
        storage.release_writer("ns", &writing, writer);
        assert_eq!(storage.upload_size("ns", &writing), Some(0));
        assert_eq!(storage.upload_sessions(), 1);
    }

    #[test]
    fn verify_rehashes_for_another_algorithm() {
        let root = TempDir::new("storage-test");
        let mut storage = open(&root);
        // More than one rehash chunk, so the read loop runs several times.
        let bytes: Vec<u8> = (0..REHASH_CHUNK_BYTES * 2 + 7).map(|i| (i % 251) as u8).collect();
        let (first, second) = bytes.split_at(1000);
        let id = upload(&mut storage, "ns", &[first, second]);
        let digest = sha512_of(&bytes);
        assert_eq!(
            storage.verify_upload("ns", &id, &digest).unwrap(),
            bytes.len() as u64
        );
        storage.commit_upload("ns", &id, &digest).unwrap();
        assert_eq!(read_blob(&storage, "ns", &digest).unwrap(), bytes);
        let hex = digest.hex();
        assert!(
            root.path()
                .join(format!("blobs/sha512/{}/{hex}", &hex[..2]))
                .is_file()
        );

        let id = upload(&mut storage, "ns", &[b"abc"]);
        let wrong = sha512_of(b"abd");
        assert!(matches!(
            storage.verify_upload("ns", &id, &wrong),
            Err(UploadError::DigestMismatch)
        ));
        assert_eq!(storage.upload_sessions(), 0);
    }

    #[test]
    fn large_removals_are_discarded_into_the_trash_for_later() {
        let root = TempDir::new("storage-test");
        let mut storage = open(&root);
        let cancelled = upload(&mut storage, "ns", &[b"partial"]);
        assert!(storage.cancel_upload("ns", &cancelled).unwrap());
        let first = upload(&mut storage, "ns", &[b"same bytes"]);
        let digest = Digest::sha256_of(b"same bytes");
        storage.commit_upload("ns", &first, &digest).unwrap();
        let duplicate = upload(&mut storage, "ns", &[b"same bytes"]);
        storage.commit_upload("ns", &duplicate, &digest).unwrap();
        let discarded = storage.take_discarded();
        assert_eq!(discarded.len(), 3, "{discarded:?}");
        assert!(
            discarded
                .iter()
                .all(|path| path.starts_with(root.path().join(TRASH_DIR)))
        );
        // The duplicate's bytes wait there; the session is gone from the layout.
        assert!(discarded[2].join(SESSION_DATA_FILE).exists());
        assert_eq!(dir_entries(&root.path().join(UPLOADS_DIR)), 0);
        assert!(storage.take_discarded().is_empty(), "handed over once");
        // Whatever was not removed before a restart goes at the next start.
        drop(storage);
        let _reopened = open(&root);
        assert_eq!(dir_entries(&root.path().join(TRASH_DIR)), 0);
    }

    #[test]
    fn cancel_removes_the_session() {
        let root = TempDir::new("storage-test");
        let mut storage = open(&root);
        let id = upload(&mut storage, "ns", &[b"partial"]);
        let writer = storage.upload_writer("ns", &id).unwrap();
        assert!(storage.cancel_upload("ns", &id).unwrap());
        assert!(!storage.cancel_upload("ns", &id).unwrap());
        // Releasing a writer of a cancelled session is harmless.
        storage.release_writer("ns", &id, writer);
        assert_eq!(storage.upload_size("ns", &id), None);
        assert_eq!(dir_entries(&root.path().join(UPLOADS_DIR)), 0);
    }

    #[test]
    fn too_many_sessions() {
        let root = TempDir::new("storage-test");
        let mut storage = Storage::open(root.path(), false, 2).unwrap();
        let first = storage.start_upload("ns").unwrap();
        let second = storage.start_upload("ns").unwrap();
        assert_ne!(first, second);
        assert!(matches!(
            storage.start_upload("ns"),
            Err(UploadError::TooManySessions)
        ));
        assert!(storage.cancel_upload("ns", &first).unwrap());
        storage.start_upload("other").unwrap();
        assert!(matches!(
            storage.start_upload("other"),
            Err(UploadError::TooManySessions)
        ));
    }

    #[test]
    fn concurrent_sessions_of_the_same_content_both_commit() {
        let root = TempDir::new("storage-test");
        let mut storage = open(&root);
        let bytes = b"the same layer pushed twice";
        let digest = Digest::sha256_of(bytes);
        let first = upload(&mut storage, "a", &[&bytes[..10]]);
        let second = upload(&mut storage, "b", &[&bytes[..5]]);
        for (namespace, id, rest) in [("a", &first, &bytes[10..]), ("b", &second, &bytes[5..])] {
            let mut writer = storage.upload_writer(namespace, id).unwrap();
            writer.write(rest).unwrap();
            storage.release_writer(namespace, id, writer);
        }
        storage.verify_upload("a", &first, &digest).unwrap();
        storage.verify_upload("b", &second, &digest).unwrap();
        storage.commit_upload("b", &second, &digest).unwrap();
        storage.commit_upload("a", &first, &digest).unwrap();
        assert_eq!(read_blob(&storage, "a", &digest).unwrap(), bytes);
        assert_eq!(read_blob(&storage, "b", &digest).unwrap(), bytes);
        assert_eq!(dir_entries(&root.path().join(UPLOADS_DIR)), 0);
        assert_eq!(dir_entries(&root.path().join(BLOBS_DIR).join("sha256")), 1);
    }

    #[test]
    fn mount_link_and_delete_blob() {
        let root = TempDir::new("storage-test");
        let mut storage = open(&root);
        let digest = push_blob(&mut storage, "source", b"layer");
        assert_eq!(storage.blob_size("target", &digest).unwrap(), None);
        assert!(storage.open_blob("target", &digest).unwrap().is_none());

        assert!(storage.link_blob("target", &digest).unwrap());
        assert!(storage.link_blob("target", &digest).unwrap()); // idempotent
        assert_eq!(read_blob(&storage, "target", &digest).unwrap(), b"layer");

        let missing = Digest::sha256_of(b"never uploaded");
        assert!(!storage.link_blob("target", &missing).unwrap());
        assert_eq!(storage.blob_size("target", &missing).unwrap(), None);

        assert!(storage.delete_blob("target", &digest).unwrap());
        assert!(!storage.delete_blob("target", &digest).unwrap());
        assert_eq!(storage.blob_size("target", &digest).unwrap(), None);
        // Other namespaces keep their access; the content stays.
        assert_eq!(storage.blob_size("source", &digest).unwrap(), Some(5));
        assert!(!storage.delete_blob("never", &missing).unwrap());
    }

    #[test]
    fn manifest_put_and_get_by_tag_and_digest() {
        let root = TempDir::new("storage-test");
        let storage = open(&root);
        let body = br#"{"schemaVersion":2}"#;
        let digest = Digest::sha256_of(body);
        assert_eq!(storage.manifest("ns", &digest).unwrap(), None);
        assert_eq!(storage.tag("ns", "latest").unwrap(), None);
        assert_eq!(storage.tags("ns").unwrap(), None);

        storage
            .put_manifest("ns", &digest, MANIFEST_TYPE, body, &tags(&["latest", "v1"]), None)
            .unwrap();
        let stored = storage.manifest("ns", &digest).unwrap().unwrap();
        assert_eq!(stored.media_type, MANIFEST_TYPE);
        assert_eq!(&*stored.body, &body[..]);
        assert_eq!(storage.tag("ns", "latest").unwrap(), Some(digest.clone()));
        assert_eq!(storage.tag("ns", "v1").unwrap(), Some(digest.clone()));
        assert_eq!(storage.tags("ns").unwrap(), Some(tags(&["latest", "v1"])));
        // Another namespace does not see it.
        assert_eq!(storage.manifest("other", &digest).unwrap(), None);
        assert_eq!(storage.tag("other", "latest").unwrap(), None);
        // Re-putting the same manifest is fine.
        storage
            .put_manifest("ns", &digest, MANIFEST_TYPE, body, &[], None)
            .unwrap();
        assert_eq!(storage.manifest("ns", &digest).unwrap().unwrap(), stored);

        // The documented layout, byte for byte.
        let repo = root.path().join("repositories/ns/_manifests");
        assert_eq!(
            fs::read_to_string(repo.join("tags/latest")).unwrap(),
            format!("{digest}\n")
        );
        assert_eq!(
            fs::read_to_string(repo.join(format!("revisions/sha256/{}", digest.hex()))).unwrap(),
            format!("{MANIFEST_TYPE}\n\n")
        );
        assert_eq!(dir_entries(&root.path().join(TMP_DIR)), 0);
    }

    #[test]
    fn tags_of_a_namespace_without_tags_is_empty() {
        let root = TempDir::new("storage-test");
        let mut storage = open(&root);
        push_blob(&mut storage, "ns", b"layer");
        assert_eq!(storage.tags("ns").unwrap(), Some(Vec::new()));
        // Only the parent directory of a namespace: not one itself.
        push_blob(&mut storage, "x/y", b"layer");
        assert_eq!(storage.tags("x").unwrap(), None);
    }

    #[test]
    fn tag_moves_to_the_new_manifest() {
        let root = TempDir::new("storage-test");
        let storage = open(&root);
        let first = Digest::sha256_of(b"first");
        let second = Digest::sha256_of(b"second");
        storage
            .put_manifest("ns", &first, MANIFEST_TYPE, b"first", &tags(&["latest"]), None)
            .unwrap();
        storage
            .put_manifest("ns", &second, MANIFEST_TYPE, b"second", &tags(&["latest"]), None)
            .unwrap();
        assert_eq!(storage.tag("ns", "latest").unwrap(), Some(second.clone()));
        assert_eq!(storage.tags("ns").unwrap(), Some(tags(&["latest"])));
        // The old manifest is still there by digest.
        assert_eq!(&*storage.manifest("ns", &first).unwrap().unwrap().body, b"first");
        // Deleting the old manifest leaves the moved tag alone.
        assert_eq!(storage.delete_manifest("ns", &first).unwrap(), Some(Vec::new()));
        assert_eq!(storage.tag("ns", "latest").unwrap(), Some(second));
    }

    #[test]
    fn delete_by_tag_keeps_the_manifest() {
        let root = TempDir::new("storage-test");
        let storage = open(&root);
        let digest = Digest::sha256_of(b"m");
        storage
            .put_manifest("ns", &digest, MANIFEST_TYPE, b"m", &tags(&["a", "b"]), None)
            .unwrap();
        assert_eq!(storage.delete_tag("ns", "a").unwrap(), Some(digest.clone()));
        assert_eq!(storage.delete_tag("ns", "a").unwrap(), None);
        assert_eq!(storage.tag("ns", "a").unwrap(), None);
        assert_eq!(storage.tags("ns").unwrap(), Some(tags(&["b"])));
        assert!(storage.manifest("ns", &digest).unwrap().is_some());
    }

    #[test]
    fn delete_manifest_removes_its_tags_and_referrer_entry() {
        let root = TempDir::new("storage-test");
        let storage = open(&root);
        let subject = Digest::sha256_of(b"subject");
        storage
            .put_manifest("ns", &subject, MANIFEST_TYPE, b"subject", &tags(&["base"]), None)
            .unwrap();
        let body = b"signature";
        let digest = Digest::sha256_of(body);
        let descriptor = serde_json::json!({
            "mediaType": MANIFEST_TYPE,
            "digest": digest.to_string(),
            "size": body.len(),
            "artifactType": "application/example.sig",
        });
        storage
            .put_manifest(
                "ns",
                &digest,
                MANIFEST_TYPE,
                body,
                &tags(&["sig", "also", "zz"]),
                Some((&subject, &descriptor)),
            )
            .unwrap();
        assert_eq!(
            fs::read_to_string(root.path().join(format!(
                "repositories/ns/_manifests/revisions/sha256/{}",
                digest.hex()
            )))
            .unwrap(),
            format!("{MANIFEST_TYPE}\n{subject}\n")
        );
        assert_eq!(storage.referrers("ns", &subject).unwrap(), vec![descriptor]);

        assert_eq!(
            storage.delete_manifest("ns", &digest).unwrap(),
            Some(tags(&["also", "sig", "zz"]))
        );
        assert_eq!(storage.manifest("ns", &digest).unwrap(), None);
        assert_eq!(storage.tags("ns").unwrap(), Some(tags(&["base"])));
        assert_eq!(
            storage.referrers("ns", &subject).unwrap(),
            Vec::<serde_json::Value>::new()
        );
        assert_eq!(storage.delete_manifest("ns", &digest).unwrap(), None);
        // The subject is untouched.
        assert!(storage.manifest("ns", &subject).unwrap().is_some());
        assert_eq!(storage.tag("ns", "base").unwrap(), Some(subject));
    }

    #[test]
    fn referrers_listing() {
        let root = TempDir::new("storage-test");
        let storage = open(&root);
        let subject = Digest::sha256_of(b"subject");
        assert!(storage.referrers("ns", &subject).unwrap().is_empty());
        assert!(storage.referrers("unknown", &subject).unwrap().is_empty());

        let mut expected = Vec::new();
        for (index, body) in [&b"r1"[..], b"r2", b"r3"].into_iter().enumerate() {
            let digest = if index == 1 {
                sha512_of(body)
            } else {
                Digest::sha256_of(body)
            };
            let descriptor = serde_json::json!({ "digest": digest.to_string(), "n": index });
            storage
                .put_manifest(
                    "ns",
                    &digest,
                    MANIFEST_TYPE,
                    body,
                    &[],
                    Some((&subject, &descriptor)),
                )
                .unwrap();
            expected.push((digest, descriptor));
        }
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        let expected: Vec<_> = expected.into_iter().map(|(_, descriptor)| descriptor).collect();
        assert_eq!(storage.referrers("ns", &subject).unwrap(), expected);
        // Scoped to the namespace and the subject.
        assert!(storage.referrers("other", &subject).unwrap().is_empty());
        assert!(
            storage
                .referrers("ns", &Digest::sha256_of(b"r1"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn catalog_is_sorted_and_nested() {
        let root = TempDir::new("storage-test");
        let mut storage = open(&root);
        assert!(storage.catalog().unwrap().is_empty());
        push_blob(&mut storage, "b", b"layer");
        let digest = Digest::sha256_of(b"m");
        storage
            .put_manifest("a/b", &digest, MANIFEST_TYPE, b"m", &[], None)
            .unwrap();
        push_blob(&mut storage, "a", b"layer");
        // Only an intermediate directory: not a namespace.
        push_blob(&mut storage, "c/d/e", b"layer");
        // Tags named like namespaces must not be walked into.
        storage
            .put_manifest("b", &digest, MANIFEST_TYPE, b"m", &tags(&["x"]), None)
            .unwrap();
        assert_eq!(storage.catalog().unwrap(), tags(&["a", "a/b", "b", "c/d/e"]));
    }

    #[test]
    fn open_cleans_leftovers() {
        let root = TempDir::new("storage-test");
        let digest;
        {
            let mut storage = open(&root);
            digest = push_blob(&mut storage, "ns", b"kept");
            let id = upload(&mut storage, "ns", &[b"in flight"]);
            assert!(root.path().join(UPLOADS_DIR).join(id).is_dir());
        }
        fs::write(root.path().join(TMP_DIR).join("torn"), b"half").unwrap();
        fs::create_dir_all(root.path().join(TMP_DIR).join("dir/nested")).unwrap();
        let storage = open(&root);
        assert_eq!(dir_entries(&root.path().join(TMP_DIR)), 0);
        assert_eq!(dir_entries(&root.path().join(UPLOADS_DIR)), 0);
        assert_eq!(storage.upload_sessions(), 0);
        assert_eq!(read_blob(&storage, "ns", &digest).unwrap(), b"kept");
    }

    #[test]
    fn start_up_cleanup_never_follows_a_symbolic_link() {
        let root = TempDir::new("storage-test");
        let precious = root.path().join("precious");
        fs::create_dir_all(&precious).unwrap();
        fs::write(precious.join("keep.txt"), b"not the registry's").unwrap();
        let data = root.path().join("data");
        fs::create_dir_all(&data).unwrap();
        std::os::unix::fs::symlink(&precious, data.join(TMP_DIR)).unwrap();
        std::os::unix::fs::symlink(&precious, data.join(UPLOADS_DIR)).unwrap();
        Storage::open(&data, false, 1).unwrap();
        assert_eq!(
            fs::read(precious.join("keep.txt")).unwrap(),
            b"not the registry's"
        );
        for dir in [TMP_DIR, UPLOADS_DIR] {
            let metadata = fs::symlink_metadata(data.join(dir)).unwrap();
            assert!(metadata.is_dir() && !metadata.file_type().is_symlink(), "{dir}");
        }
    }

    #[test]
    fn referrers_come_in_pages_that_follow_writes() {
        let root = TempDir::new("storage-test");
        let storage = open(&root);
        let subject = Digest::sha256_of(b"subject");
        let mut referrers: Vec<Digest> = (0..5u8).map(|n| Digest::sha256_of(&[n])).collect();
        for referrer in &referrers {
            let descriptor = serde_json::json!({ "digest": referrer.to_string() });
            storage
                .put_manifest(
                    "ns",
                    referrer,
                    MANIFEST_TYPE,
                    b"r",
                    &[],
                    Some((&subject, &descriptor)),
                )
                .unwrap();
        }
        referrers.sort();
        let digests = |page: &[serde_json::Value]| -> Vec<String> {
            page.iter()
                .map(|d| d["digest"].as_str().unwrap().to_string())
                .collect()
        };
        let (first, next) = storage.referrers_page("ns", &subject, None, Some(2)).unwrap();
        assert_eq!(
            digests(&first),
            [referrers[0].to_string(), referrers[1].to_string()]
        );
        let next = next.expect("more follow");
        let (second, _) = storage
            .referrers_page("ns", &subject, Some(&next), Some(2))
            .unwrap();
        assert_eq!(
            digests(&second),
            [referrers[2].to_string(), referrers[3].to_string()]
        );
        // The index follows a delete and a new referrer.
        storage.delete_manifest("ns", &referrers[0]).unwrap();
        let (all, next) = storage.referrers_page("ns", &subject, None, None).unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(next, None);
    }

    #[test]
    fn open_creates_missing_dirs() {
        let root = TempDir::new("storage-test");
        let nested = root.path().join("deep/er");
        Storage::open(&nested, true, 1).unwrap();
        for dir in [TMP_DIR, UPLOADS_DIR, TRASH_DIR, BLOBS_DIR, REPOSITORIES_DIR] {
            assert!(nested.join(dir).is_dir());
        }
    }

    #[test]
    fn corrupt_links_are_invalid_data() {
        let root = TempDir::new("storage-test");
        let storage = open(&root);
        let digest = Digest::sha256_of(b"m");
        storage
            .put_manifest("ns", &digest, MANIFEST_TYPE, b"m", &tags(&["ok"]), None)
            .unwrap();
        let tags_dir = root.path().join("repositories/ns/_manifests/tags");
        fs::write(tags_dir.join("bad"), b"sha256:nothex\n").unwrap();
        assert_eq!(
            storage.tag("ns", "bad").unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        // A corrupt tag does not block deleting an unrelated manifest.
        assert_eq!(
            storage.delete_manifest("ns", &digest).unwrap(),
            Some(tags(&["ok"]))
        );

        let revision = root.path().join(format!(
            "repositories/ns/_manifests/revisions/sha256/{}",
            digest.hex()
        ));
        fs::write(&revision, b"no trailing newline").unwrap();
        assert_eq!(
            storage.manifest("ns", &digest).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert!(
            storage
                .put_manifest("ns", &digest, "a\nb", b"m", &[], None)
                .is_err()
        );
    }

    #[test]
    fn parse_revision_cases() {
        let subject = Digest::sha256_of(b"s");
        let parsed = parse_revision(&format!("text/plain\n{subject}\n")).unwrap();
        assert_eq!(parsed.media_type, "text/plain");
        assert_eq!(parsed.subject, Some(subject));
        assert!(parse_revision("text/plain\n\n").unwrap().subject.is_none());
        for bad in ["", "text/plain", "text/plain\n", "a\nb\n", "a\n\nc\n", "a\n\n\n"] {
            assert!(parse_revision(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn uuid_v4_format() {
        let uuid = uuid_v4();
        assert_eq!(uuid.len(), 36);
        let groups: Vec<&str> = uuid.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(
            uuid.bytes()
                .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert_eq!(&uuid[14..15], "4");
        assert!(matches!(&uuid[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(uuid_v4(), uuid);
    }

    #[test]
    fn random_bytes_fills_large_buffers() {
        // Over 256 bytes getrandom may return short; the loop must cover it.
        let mut buf = vec![0u8; 4096];
        random_bytes(&mut buf);
        assert!(buf.iter().filter(|&&b| b != 0).count() > 3000);
        random_bytes(&mut []);
    }
}
