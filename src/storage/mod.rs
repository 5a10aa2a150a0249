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
//! root/blobs/<alg>/<hex[0..2]>/<hex>                  content (blobs and manifests)
//! root/repositories/<ns>/_layers/<alg>/<hex>          the namespace may read that blob
//! root/repositories/<ns>/_manifests/revisions/<alg>/<hex>
//!                                                     "<media type>\n<subject digest or empty>\n"
//! root/repositories/<ns>/_manifests/tags/<tag>        "<digest>\n"
//! root/repositories/<ns>/_referrers/<alg>/<subject hex>/<alg>-<referrer hex>
//!                                                     the referrer's descriptor JSON
//! ```

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use crate::digest::{Digest, Hasher};

/// Bounds the number of open upload sessions (each keeps a hasher in memory).
pub const UPLOAD_SESSIONS_MAX_DEFAULT: usize = 4096;

pub struct Storage {
    // IMPLEMENT: root, sync_to_disk, sessions: HashMap<String /*id*/, session state
    // (namespace, size, hasher)>, upload_sessions_max.
    _root: PathBuf,
}

/// A manifest as stored: its media type and exact bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredManifest {
    pub media_type: String,
    pub body: Vec<u8>,
}

/// Appends bytes to an upload session while hashing them. Obtained from
/// `Storage::upload_writer`, handed back with `Storage::release_writer`.
pub struct UploadWriter {
    // IMPLEMENT: file opened for append, hasher, size.
}

impl UploadWriter {
    /// Writes all of `bytes` to the session file and feeds the hasher.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        todo!()
    }
    /// Bytes in the session so far.
    pub fn size(&self) -> u64 {
        todo!()
    }
}

#[derive(Debug)]
pub enum UploadError {
    /// No such session for this namespace.
    Unknown,
    /// The bytes do not hash to the digest the client gave; the session is removed.
    DigestMismatch,
    /// `upload_sessions_max` sessions are open.
    TooManySessions,
    Io(io::Error),
}

impl From<io::Error> for UploadError {
    fn from(error: io::Error) -> UploadError {
        UploadError::Io(error)
    }
}

impl Storage {
    /// Creates the layout under `root` if missing, and removes leftovers of a
    /// previous run: everything in `_tmp` and every upload session in `_uploads`
    /// (sessions do not survive a restart; clients restart the upload).
    pub fn open(root: &Path, sync_to_disk: bool, upload_sessions_max: usize) -> io::Result<Storage> {
        todo!()
    }

    // ---- blobs -----------------------------------------------------------

    /// Size of `digest` if `namespace` may read it (uploaded or mounted there).
    pub fn blob_size(&self, namespace: &str, digest: &Digest) -> io::Result<Option<u64>> {
        todo!()
    }

    /// Opens `digest` for reading if `namespace` may read it; returns the file and its size.
    pub fn open_blob(&self, namespace: &str, digest: &Digest) -> io::Result<Option<(File, u64)>> {
        todo!()
    }

    /// Lets `namespace` read an existing blob (cross-repository mount). `false`
    /// when the blob content does not exist at all.
    pub fn link_blob(&self, namespace: &str, digest: &Digest) -> io::Result<bool> {
        todo!()
    }

    /// Removes `namespace`'s access to `digest`; `false` when it had none.
    pub fn delete_blob(&self, namespace: &str, digest: &Digest) -> io::Result<bool> {
        todo!()
    }

    // ---- uploads ---------------------------------------------------------

    /// Opens a new empty session for `namespace` and returns its id (32 random
    /// lowercase hex characters, from `getrandom`).
    pub fn start_upload(&mut self, namespace: &str) -> Result<String, UploadError> {
        todo!()
    }

    /// Bytes received so far by a session, `None` when unknown for `namespace`.
    pub fn upload_size(&self, namespace: &str, id: &str) -> Option<u64> {
        todo!()
    }

    /// Takes the session's writer for appending; while taken, the session
    /// still exists but a second `upload_writer` for it returns `Unknown`
    /// (one writer at a time).
    pub fn upload_writer(&mut self, namespace: &str, id: &str) -> Result<UploadWriter, UploadError> {
        todo!()
    }

    /// Hands a writer back so the session keeps its size and hash state.
    pub fn release_writer(&mut self, namespace: &str, id: &str, writer: UploadWriter) {
        todo!()
    }

    /// Checks that the session's bytes hash to `expected` (rehashing the file
    /// when `expected` uses another algorithm than the incremental hasher) and
    /// returns the size. On mismatch the session is removed. Does not commit.
    pub fn verify_upload(&mut self, namespace: &str, id: &str, expected: &Digest) -> Result<u64, UploadError> {
        todo!()
    }

    /// Commits a verified session: renames its data into the blob store (or
    /// drops it when that content already exists, which makes concurrent
    /// uploads of one blob end in one correct blob), links it into
    /// `namespace`, and removes the session.
    pub fn commit_upload(&mut self, namespace: &str, id: &str, digest: &Digest) -> Result<(), UploadError> {
        todo!()
    }

    /// Removes a session; `false` when unknown.
    pub fn cancel_upload(&mut self, namespace: &str, id: &str) -> io::Result<bool> {
        todo!()
    }

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
        todo!()
    }

    /// The manifest `digest` if `namespace` has it.
    pub fn manifest(&self, namespace: &str, digest: &Digest) -> io::Result<Option<StoredManifest>> {
        todo!()
    }

    /// The digest a tag points to.
    pub fn tag(&self, namespace: &str, tag: &str) -> io::Result<Option<Digest>> {
        todo!()
    }

    /// Deletes manifest `digest` from `namespace`: its revision link, every tag
    /// pointing to it, and its referrer entry. Returns the removed tags
    /// (sorted), `None` when the namespace did not have the manifest.
    pub fn delete_manifest(&self, namespace: &str, digest: &Digest) -> io::Result<Option<Vec<String>>> {
        todo!()
    }

    /// Deletes a tag (not the manifest); returns the digest it pointed to.
    pub fn delete_tag(&self, namespace: &str, tag: &str) -> io::Result<Option<Digest>> {
        todo!()
    }

    /// Tags of `namespace`, sorted lexically (byte order); `None` when the
    /// namespace does not exist (never had a blob or manifest).
    pub fn tags(&self, namespace: &str) -> io::Result<Option<Vec<String>>> {
        todo!()
    }

    /// Referrer descriptors stored under `subject`, sorted by referrer digest.
    pub fn referrers(&self, namespace: &str, subject: &Digest) -> io::Result<Vec<serde_json::Value>> {
        todo!()
    }

    /// Every namespace that has a blob link or a manifest, sorted lexically.
    pub fn catalog(&self) -> io::Result<Vec<String>> {
        todo!()
    }
}

/// Fills `buf` with random bytes from the kernel (`getrandom(2)`).
pub fn random_bytes(buf: &mut [u8]) {
    todo!()
}

/// A random (version 4, RFC 9562) UUID in its hyphenated lowercase form.
pub fn uuid_v4() -> String {
    todo!()
}

// Kept so the stub compiles until implemented.
#[allow(dead_code)]
fn _unused(_: Hasher) {}
