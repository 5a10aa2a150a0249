//! Upload sessions: the in-memory half (size, incremental hash, owner) and
//! the bytes under `_uploads/<id>/`, their writers, verification, commit into
//! the content store, cancellation, the per-namespace cap and idle expiry.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::*;
use crate::digest::{Digest, Hasher};

/// The in-memory half of an upload session; its bytes are in
/// `_uploads/<id>/data`.
#[derive(Debug)]
pub(super) struct UploadSession {
    namespace: String,
    /// Bytes in the data file as of the last released writer.
    size: u64,
    /// `None` while an `UploadWriter` holds it: that is how "one writer at a
    /// time" is enforced, and why a session with a writer out cannot be
    /// verified or committed (its file may still grow).
    hasher: Option<Hasher>,
    /// The digest `verify_upload` last accepted, cleared by any later write,
    /// so `commit_upload` can skip a second hash of the same bytes.
    verified: Option<Digest>,
    /// Used since the last `expire_idle_uploads` sweep.
    touched: bool,
}

/// Appends bytes to an upload session while hashing them. Obtained from
/// `Storage::upload_writer`, handed back with `Storage::release_writer`.
#[derive(Debug)]
pub struct UploadWriter {
    /// The session this writer belongs to, checked on release.
    id: String,
    sink: Sink,
}

#[derive(Debug)]
enum Sink {
    File {
        file: File,
        hasher: Box<Hasher>,
        size: u64,
    },
    /// On a bucket: parts of a multipart upload (`bucket::uploads`).
    Bucket(Box<bucket::uploads::PartWriter>),
}

impl UploadWriter {
    pub(super) fn on_bucket(id: &str, writer: bucket::uploads::PartWriter) -> UploadWriter {
        UploadWriter {
            id: id.to_owned(),
            sink: Sink::Bucket(Box::new(writer)),
        }
    }

    /// Writes all of `bytes` to the session and feeds the hasher.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.sink {
            Sink::File { file, hasher, size } => {
                if let Err(error) = file.write_all(bytes) {
                    // A partial write would leave bytes in the file that the
                    // hasher and size never saw; cut them off so the session
                    // stays consistent and the client can resume from `size()`.
                    let _ = file.set_len(*size);
                    return Err(error);
                }
                hasher.update(bytes);
                *size += bytes.len() as u64;
                Ok(())
            }
            Sink::Bucket(writer) => writer.write(bytes).map_err(bucket::BucketError::into_io),
        }
    }

    /// Bytes in the session so far.
    pub fn size(&self) -> u64 {
        match &self.sink {
            Sink::File { size, .. } => *size,
            Sink::Bucket(writer) => writer.size(),
        }
    }

    /// Whether no more bytes are taken for now (a bucket's part is being
    /// sent and the next is full); the holder is woken when they are.
    pub fn paused(&mut self) -> bool {
        match &mut self.sink {
            Sink::File { .. } => false,
            Sink::Bucket(writer) => writer.paused(),
        }
    }

    /// The body is in: on a bucket, what remains is written and the session
    /// saved (this may wait: run again). On the filesystem, nothing to do.
    pub fn settle(&mut self) -> io::Result<()> {
        match &mut self.sink {
            Sink::File { .. } => Ok(()),
            Sink::Bucket(writer) => writer.settle().map_err(bucket::BucketError::into_io),
        }
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
    /// The namespace holds the most sessions one namespace may (the cap).
    TooManySessionsHere(usize),
    Io(io::Error),
}

impl std::fmt::Display for UploadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UploadError::Unknown => f.write_str("unknown upload session"),
            UploadError::DigestMismatch => f.write_str("upload does not match its digest"),
            UploadError::TooManySessions => f.write_str("too many upload sessions"),
            UploadError::TooManySessionsHere(max) => {
                write!(f, "too many upload sessions in this repository (at most {max})")
            }
            UploadError::Io(error) => write!(f, "upload storage error: {error}"),
        }
    }
}

impl std::error::Error for UploadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UploadError::Io(error) => Some(error),
            _ => None,
        }
    }
}

impl From<io::Error> for UploadError {
    fn from(error: io::Error) -> UploadError {
        UploadError::Io(error)
    }
}

/// Hashes a session's data file with `expected`'s algorithm.
fn rehash(data: &Path, expected: &Digest) -> io::Result<Digest> {
    let Some(mut hasher) = Hasher::for_algorithm(expected.algorithm()) else {
        // Unreachable for a parsed `Digest`, which only has algorithms we hash.
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("no hasher for {}", expected.algorithm()),
        ));
    };
    let mut file = File::open(data)?;
    let mut buffer = vec![0; REHASH_CHUNK_BYTES];
    loop {
        let read = match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        hasher.update(&buffer[..read]);
    }
    Ok(hasher.digest())
}

impl Storage {
    /// Caps the open sessions of any one namespace (at most the global cap).
    pub fn with_upload_sessions_per_namespace(mut self, max: usize) -> Storage {
        self.upload_sessions_per_namespace_max = max.clamp(1, self.upload_sessions_max);
        self
    }

    /// Removes the sessions nobody used since the previous sweep (none is
    /// mid-write: a taken writer counts as use); returns how many. Called
    /// every idle period, it expires a session after one to two periods of
    /// silence without a clock of its own.
    pub fn expire_idle_uploads(&mut self) -> usize {
        let idle: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, session)| !session.touched && session.hasher.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        for session in self.sessions.values_mut() {
            session.touched = false;
        }
        for id in &idle {
            self.remove_session(id);
        }
        idle.len()
    }

    // ---- uploads ---------------------------------------------------------

    /// Opens a new empty session for `namespace` and returns its id (32 random
    /// lowercase hex characters, from `getrandom`).
    pub fn start_upload(&mut self, namespace: &str) -> Result<String, UploadError> {
        debug_assert_namespace(namespace);
        if let Some(bucket) = self.bucket() {
            let id = bucket.objects().memo("upload id", || random_hex(RANDOM_ID_BYTES));
            bucket
                .start_upload(namespace, &id)
                .map_err(|error| UploadError::Io(error.into_io()))?;
            return Ok(id);
        }
        if self.sessions.len() >= self.upload_sessions_max {
            return Err(UploadError::TooManySessions);
        }
        let held = self.sessions_per_namespace.get(namespace).copied().unwrap_or(0);
        if held >= self.upload_sessions_per_namespace_max {
            return Err(UploadError::TooManySessionsHere(
                self.upload_sessions_per_namespace_max,
            ));
        }
        let id = random_hex(RANDOM_ID_BYTES);
        let dir = self.session_dir(&id);
        // No fsync and no atomic rename here: sessions are wiped at start-up,
        // so nothing under `_uploads` needs to survive a crash.
        // `create_dir` fails on an existing id, so a (128-bit) collision can
        // never hand out or clean up another session's directory.
        fs::create_dir(&dir)?;
        let filled = fs::write(dir.join(SESSION_NAMESPACE_FILE), namespace)
            .and_then(|()| File::create(dir.join(SESSION_DATA_FILE)).map(drop));
        if let Err(error) = filled {
            let _ = fs::remove_dir_all(&dir);
            return Err(error.into());
        }
        self.sessions.insert(
            id.clone(),
            UploadSession {
                namespace: namespace.to_owned(),
                size: 0,
                hasher: Some(Hasher::sha256()),
                verified: None,
                touched: true,
            },
        );
        *self
            .sessions_per_namespace
            .entry(namespace.to_owned())
            .or_default() += 1;
        Ok(id)
    }

    /// Bytes received so far by a session, `None` when unknown for `namespace`.
    pub fn upload_size(&self, namespace: &str, id: &str) -> Option<u64> {
        if let Some(bucket) = self.bucket() {
            return bucket
                .upload(namespace, id)
                .ok()
                .flatten()
                .map(|session| session.size);
        }
        match self.sessions.get(id) {
            Some(session) if session.namespace == namespace => Some(session.size),
            _ => None,
        }
    }

    /// Whether session `id` is `namespace`'s: like `upload_size`, with the
    /// bucket's errors (a wait, a bucket that does not answer) told apart.
    pub fn upload_known(&self, namespace: &str, id: &str) -> io::Result<bool> {
        match self.bucket() {
            Some(bucket) => bucket
                .upload(namespace, id)
                .map(|session| session.is_some())
                .map_err(bucket::BucketError::into_io),
            None => Ok(self.upload_size(namespace, id).is_some()),
        }
    }

    /// Takes the session's writer for appending; while taken, the session
    /// still exists but a second `upload_writer` for it returns `Unknown`
    /// (one writer at a time).
    pub fn upload_writer(&mut self, namespace: &str, id: &str) -> Result<UploadWriter, UploadError> {
        if let Some(bucket) = self.bucket() {
            return match bucket.upload_writer(namespace, id) {
                Ok(Some(writer)) => Ok(UploadWriter::on_bucket(id, writer)),
                Ok(None) => Err(UploadError::Unknown),
                Err(error) => Err(UploadError::Io(error.into_io())),
            };
        }
        let data = self.session_dir(id).join(SESSION_DATA_FILE);
        let session = self.session_mut(namespace, id)?;
        if session.hasher.is_none() {
            return Err(UploadError::Unknown);
        }
        // Open before taking the hasher, so a failed open leaves the session usable.
        let file = OpenOptions::new().append(true).open(data)?;
        let Some(hasher) = session.hasher.take() else {
            return Err(UploadError::Unknown);
        };
        session.verified = None;
        Ok(UploadWriter {
            id: id.to_owned(),
            sink: Sink::File {
                file,
                hasher: Box::new(hasher),
                size: session.size,
            },
        })
    }

    /// Hands a writer back so the session keeps its size and hash state.
    pub fn release_writer(&mut self, namespace: &str, id: &str, writer: UploadWriter) {
        debug_assert_eq!(writer.id, id, "writer released to another session");
        if writer.id != id {
            return;
        }
        // The session may have been cancelled meanwhile; the writer's file
        // is then already unlinked and dropping it is all there is to do.
        let Sink::File { hasher, size, .. } = writer.sink else {
            // A bucket's session is saved by `settle`.
            return;
        };
        if let Some(session) = self.sessions.get_mut(id)
            && session.namespace == namespace
            && session.hasher.is_none()
        {
            session.size = size;
            session.hasher = Some(*hasher);
            session.touched = true;
        }
    }

    /// Checks that the session's bytes hash to `expected` (rehashing the file
    /// when `expected` uses another algorithm than the incremental hasher) and
    /// returns the size. On mismatch the session is removed. Does not commit.
    pub fn verify_upload(
        &mut self,
        namespace: &str,
        id: &str,
        expected: &Digest,
    ) -> Result<u64, UploadError> {
        if let Some(bucket) = self.bucket() {
            return match bucket.verify_upload(namespace, id, expected) {
                Ok(Some(Some(size))) => Ok(size),
                Ok(Some(None)) => Err(UploadError::DigestMismatch),
                Ok(None) => Err(UploadError::Unknown),
                Err(error) => Err(UploadError::Io(error.into_io())),
            };
        }
        let data = self.session_dir(id).join(SESSION_DATA_FILE);
        let session = self.session_mut(namespace, id)?;
        let Some(hasher) = &session.hasher else {
            // A writer is out: the file may still grow after we hash it.
            return Err(UploadError::Unknown);
        };
        let actual = if hasher.algorithm() == expected.algorithm() {
            hasher.digest()
        } else {
            rehash(&data, expected)?
        };
        if actual != *expected {
            self.remove_session(id);
            return Err(UploadError::DigestMismatch);
        }
        session.verified = Some(actual);
        Ok(session.size)
    }

    /// Commits a verified session: renames its data into the blob store (or
    /// drops it when that content already exists, which makes concurrent
    /// uploads of one blob end in one correct blob), links it into
    /// `namespace`, and removes the session.
    pub fn commit_upload(&mut self, namespace: &str, id: &str, digest: &Digest) -> Result<(), UploadError> {
        if let Some(bucket) = self.bucket() {
            return match bucket.commit_upload(namespace, id, digest) {
                Ok(true) => Ok(()),
                Ok(false) => Err(UploadError::Unknown),
                Err(error) => Err(UploadError::Io(error.into_io())),
            };
        }
        let session = self.session_mut(namespace, id)?;
        if session.verified.as_ref() != Some(digest) {
            // Never let unverified bytes into the content-addressed store:
            // a wrong file under a digest's name would be served as that digest.
            self.verify_upload(namespace, id, digest)?;
        }
        // From here on the session is consumed whatever happens: on an I/O
        // error the client restarts the upload, and no half-committed session
        // lingers in the map.
        let size = self.upload_size(namespace, id).unwrap_or(0);
        self.forget_session(id);
        let dir = self.session_dir(id);
        let result = self.commit_session_data(&dir.join(SESSION_DATA_FILE), digest, size);
        // The data file is still there when the blob already existed.
        let _ = self.discard(&dir);
        result?;
        self.ensure_layer_link(namespace, digest)?;
        Ok(())
    }

    /// Moves verified session bytes to the content store, unless the content
    /// is already there.
    fn commit_session_data(&self, data: &Path, digest: &Digest, size: u64) -> io::Result<()> {
        self.touch_content(digest);
        let blob = self.blob_path(digest);
        if exists(&blob)? {
            // Content-addressed: the existing file holds the same bytes.
            return Ok(());
        }
        if self.sync_to_disk {
            // The appends were never flushed; the rename must not reach the
            // disk before the bytes do.
            File::open(data)?.sync_all()?;
        }
        atomic::rename(data, &blob, self.sync_to_disk)?;
        self.content_added(size);
        Ok(())
    }

    /// The session's data file, when `sync_to_disk` wants it on disk before
    /// an answer: the caller syncs it off the loop first, so the commit's
    /// own fsync finds nothing left to write.
    /// `None` too when the upload will commit as `digest` and the store
    /// holds it already: those bytes are discarded, never needed on disk.
    pub fn upload_to_sync(&self, id: &str, digest: Option<&Digest>) -> Option<PathBuf> {
        if self.bucket().is_some() {
            return None;
        }
        if !self.sync_to_disk || !self.sessions.contains_key(id) {
            return None;
        }
        if digest.is_some_and(|digest| exists(&self.blob_path(digest)).unwrap_or(false)) {
            return None;
        }
        Some(self.session_dir(id).join(SESSION_DATA_FILE))
    }

    /// The session's data file opened for reading: a cache fill's readers
    /// stream it while it is written.
    pub fn upload_data_file(&self, id: &str) -> io::Result<File> {
        if self.bucket().is_some() {
            // The pull-through cache streams fills from this file.
            return Err(io::Error::other("a bucket's upload session has no local file"));
        }
        File::open(self.session_dir(id).join(SESSION_DATA_FILE))
    }

    /// Removes a session; `false` when unknown.
    pub fn cancel_upload(&mut self, namespace: &str, id: &str) -> io::Result<bool> {
        if let Some(bucket) = self.bucket() {
            return bucket
                .cancel_upload(namespace, id)
                .map_err(bucket::BucketError::into_io);
        }
        if self.session_mut(namespace, id).is_err() {
            return Ok(false);
        }
        self.forget_session(id);
        self.discard(&self.session_dir(id))?;
        Ok(true)
    }

    fn session_mut(&mut self, namespace: &str, id: &str) -> Result<&mut UploadSession, UploadError> {
        match self.sessions.get_mut(id) {
            // Another namespace's session id is as unknown as a made-up one:
            // ids are capabilities scoped to the repository that opened them.
            Some(session) if session.namespace == namespace => {
                session.touched = true;
                Ok(session)
            }
            _ => Err(UploadError::Unknown),
        }
    }

    /// Drops the in-memory half of a session (its files are the caller's).
    fn forget_session(&mut self, id: &str) {
        let Some(session) = self.sessions.remove(id) else {
            return;
        };
        if let Some(held) = self.sessions_per_namespace.get_mut(&session.namespace) {
            *held -= 1;
            if *held == 0 {
                self.sessions_per_namespace.remove(&session.namespace);
            }
        }
    }

    fn remove_session(&mut self, id: &str) {
        self.forget_session(id);
        if let Err(error) = self.discard(&self.session_dir(id)) {
            // Harmless: `open` removes it at the next start.
            log::warn!("removing upload session {id}: {error}");
        }
    }
}
