//! Scrub: every content file checked against its digest, in the background.
//! The loop walks the content store in slices and hands each file to the
//! file thread (`reactor::file_worker`), which reads and hashes it at the
//! configured rate, since hashing costs grow with a file's size; the verdict
//! comes back here. A file whose bytes no longer match is moved to
//! `_quarantine` (if it is still the same file: one pushed again meanwhile
//! is left alone), logged and counted; the blob or manifest then reads as
//! unknown, so a client pushes it again (or a cache fetches it again)
//! rather than being served bad bytes.

use std::collections::VecDeque;
use std::path::PathBuf;

use crate::digest::Digest;
use crate::storage::Storage;
use crate::storage::walk::{DigestWalk, FileIdentity};

/// Files handed to the thread and not yet answered: enough to keep it busy,
/// few enough that a scrub's memory stays small.
const IN_FLIGHT_MAX: usize = 4;

/// A file for the thread to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyJob {
    pub digest: Digest,
    pub path: PathBuf,
}

/// What the thread found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Intact {
        bytes: u64,
    },
    /// The bytes hash to `actual`; `identity` names the file that was read.
    Corrupt {
        bytes: u64,
        actual: Digest,
        identity: FileIdentity,
    },
    /// Removed before it was read (garbage collection, say).
    Gone,
    /// Could not be read; counted, not quarantined.
    Unreadable(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub digest: Digest,
    pub verdict: Verdict,
}

/// Corrupt files named in a report, at most.
const NAMED_MAX: usize = 100;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubReport {
    pub objects: u64,
    pub bytes: u64,
    pub corrupt: u64,
    pub unreadable: u64,
    /// The first `NAMED_MAX` corrupt digests, with where they went.
    pub quarantined: Vec<(String, String)>,
}

pub struct Scrubber {
    walk: DigestWalk,
    found: VecDeque<Digest>,
    in_flight: usize,
    report: ScrubReport,
}

impl Scrubber {
    pub fn new(storage: &Storage) -> Scrubber {
        Scrubber {
            walk: storage.content_walk(),
            found: VecDeque::new(),
            in_flight: 0,
            report: ScrubReport::default(),
        }
    }

    pub fn report(&self) -> &ScrubReport {
        &self.report
    }

    /// Whether a turn of the loop would move it on: the thread has room and
    /// the walk has more to find (otherwise verdicts wake the loop).
    pub fn wants_turn(&self) -> bool {
        self.in_flight < IN_FLIGHT_MAX && (!self.walk.is_done() || !self.found.is_empty())
    }

    pub fn is_done(&self) -> bool {
        self.walk.is_done() && self.found.is_empty() && self.in_flight == 0
    }

    /// Walks on (about `budget` directory entries) while the thread has
    /// room; the files to hand it now.
    pub fn step(&mut self, storage: &Storage, budget: usize) -> Vec<VerifyJob> {
        if self.found.len() < IN_FLIGHT_MAX && !self.walk.is_done() {
            match self.walk.step(budget.max(1)) {
                Ok(files) => self.found.extend(files.into_iter().map(|file| file.digest)),
                Err(error) => {
                    log::warn!(target: "angos::scrub", "reading the content store: {error}; the scrub stops here");
                    self.report.unreadable += 1;
                    self.walk = storage.empty_walk();
                }
            }
        }
        let mut jobs = Vec::new();
        while self.in_flight < IN_FLIGHT_MAX {
            let Some(digest) = self.found.pop_front() else {
                break;
            };
            self.in_flight += 1;
            jobs.push(VerifyJob {
                path: storage.content_path(&digest),
                digest,
            });
        }
        jobs
    }

    /// Takes the thread's verdict; quarantines corrupt content.
    pub fn verified(&mut self, storage: &mut Storage, verification: Verification) -> Option<String> {
        self.in_flight = self.in_flight.saturating_sub(1);
        let digest = verification.digest;
        match verification.verdict {
            Verdict::Intact { bytes } => {
                self.report.objects += 1;
                self.report.bytes += bytes;
                None
            }
            Verdict::Gone => None,
            Verdict::Unreadable(why) => {
                log::warn!(target: "angos::scrub", "cannot read content {digest}: {why}");
                self.report.unreadable += 1;
                None
            }
            Verdict::Corrupt {
                bytes,
                actual,
                identity,
            } => {
                self.report.objects += 1;
                self.report.bytes += bytes;
                match storage.quarantine_content(&digest, identity) {
                    Ok(Some(target)) => {
                        log::error!(
                            target: "angos::scrub",
                            "content {digest} is corrupt (its {bytes} bytes hash to {actual}); moved to {}: \
                             it reads as unknown until pushed again",
                            target.display()
                        );
                        self.report.corrupt += 1;
                        if self.report.quarantined.len() < NAMED_MAX {
                            self.report
                                .quarantined
                                .push((digest.to_string(), target.display().to_string()));
                        }
                        Some(digest.to_string())
                    }
                    // Replaced or removed since it was read: nothing to do.
                    Ok(None) => None,
                    Err(error) => {
                        log::error!(target: "angos::scrub", "content {digest} is corrupt, and moving it aside failed: {error}");
                        self.report.corrupt += 1;
                        None
                    }
                }
            }
        }
    }
}

/// Hashes content in pieces, so the thread doing it can pace itself and
/// take other work in between (`reactor::file_worker`).
pub struct Hashing {
    digest: Digest,
    file: std::fs::File,
    identity: FileIdentity,
    hasher: crate::digest::Hasher,
    bytes: u64,
    buffer: Vec<u8>,
}

/// Bytes read per piece.
pub const HASH_CHUNK_BYTES: usize = 1 << 20;

impl Hashing {
    /// Opens the file; a verdict at once when it cannot be read.
    pub fn open(job: &VerifyJob) -> Result<Hashing, Verification> {
        let verdict = |verdict| Verification {
            digest: job.digest.clone(),
            verdict,
        };
        let file = match std::fs::File::open(&job.path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Err(verdict(Verdict::Gone)),
            Err(error) => return Err(verdict(Verdict::Unreadable(error.to_string()))),
        };
        let identity = match file.metadata() {
            Ok(metadata) => FileIdentity::of(&metadata),
            Err(error) => return Err(verdict(Verdict::Unreadable(error.to_string()))),
        };
        let Some(hasher) = crate::digest::Hasher::for_algorithm(job.digest.algorithm()) else {
            return Err(verdict(Verdict::Unreadable("unknown digest algorithm".into())));
        };
        Ok(Hashing {
            digest: job.digest.clone(),
            file,
            identity,
            hasher,
            bytes: 0,
            buffer: vec![0; HASH_CHUNK_BYTES],
        })
    }

    /// Hashes the next piece: the bytes read, or the verdict at the end.
    pub fn advance(&mut self) -> Result<usize, Verification> {
        use std::io::Read;
        match self.file.read(&mut self.buffer) {
            Ok(0) => {
                let actual = self.hasher.digest();
                let verdict = if actual == self.digest {
                    Verdict::Intact { bytes: self.bytes }
                } else {
                    Verdict::Corrupt {
                        bytes: self.bytes,
                        actual,
                        identity: self.identity,
                    }
                };
                Err(Verification {
                    digest: self.digest.clone(),
                    verdict,
                })
            }
            Ok(read) => {
                self.hasher.update(&self.buffer[..read]);
                self.bytes += read as u64;
                Ok(read)
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => Ok(0),
            Err(error) => Err(Verification {
                digest: self.digest.clone(),
                verdict: Verdict::Unreadable(error.to_string()),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;

    fn hash_to_end(job: &VerifyJob) -> Verification {
        let mut hashing = match Hashing::open(job) {
            Ok(hashing) => hashing,
            Err(verdict) => return verdict,
        };
        loop {
            if let Err(verdict) = hashing.advance() {
                return verdict;
            }
        }
    }

    #[test]
    fn a_flipped_byte_is_found_and_quarantined_and_the_blob_is_then_unknown() {
        let dir = TempDir::new("scrub");
        let mut storage = Storage::open(dir.path(), false, 8).unwrap();
        let good = vec![7u8; 3 * HASH_CHUNK_BYTES / 2];
        let digest = Digest::sha256_of(&good);
        let id = storage.start_upload("a").unwrap();
        let mut writer = storage.upload_writer("a", &id).unwrap();
        writer.write(&good).unwrap();
        storage.release_writer("a", &id, writer);
        storage.verify_upload("a", &id, &digest).unwrap();
        storage.commit_upload("a", &id, &digest).unwrap();
        let other = Digest::sha256_of(b"fine");
        let id = storage.start_upload("a").unwrap();
        let mut writer = storage.upload_writer("a", &id).unwrap();
        writer.write(b"fine").unwrap();
        storage.release_writer("a", &id, writer);
        storage.verify_upload("a", &id, &other).unwrap();
        storage.commit_upload("a", &id, &other).unwrap();

        // Bit rot: one byte of the first blob flips.
        let path = storage.content_path(&digest);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[1000] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();

        let mut scrubber = Scrubber::new(&storage);
        let mut quarantined = Vec::new();
        while !scrubber.is_done() {
            for job in scrubber.step(&storage, 8) {
                let verification = hash_to_end(&job);
                quarantined.extend(scrubber.verified(&mut storage, verification));
            }
        }
        assert_eq!(quarantined, vec![digest.to_string()]);
        let report = scrubber.report();
        assert_eq!((report.objects, report.corrupt), (2, 1));
        assert_eq!(
            storage.blob_size("a", &digest).unwrap(),
            None,
            "the corrupt blob reads as unknown"
        );
        assert_eq!(storage.blob_size("a", &other).unwrap(), Some(4));
        assert!(
            dir.path()
                .join("_quarantine")
                .join(format!("sha256-{}", digest.hex()))
                .exists()
        );
    }

    #[test]
    fn a_file_replaced_after_it_was_read_is_not_quarantined() {
        let dir = TempDir::new("scrub-replaced");
        let mut storage = Storage::open(dir.path(), false, 8).unwrap();
        let digest = Digest::sha256_of(b"content");
        let path = storage.content_path(&digest);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"rotten!").unwrap();
        let verification = hash_to_end(&VerifyJob {
            digest: digest.clone(),
            path: path.clone(),
        });
        assert!(matches!(verification.verdict, Verdict::Corrupt { .. }));
        // Pushed again (a new file) before the verdict reached the loop.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"content").unwrap();
        let mut scrubber = Scrubber::new(&storage);
        assert_eq!(scrubber.verified(&mut storage, verification), None);
        assert_eq!(std::fs::read(&path).unwrap(), b"content");
    }
}
