//! What the store takes on its disk and what is left: the full-disk guard's
//! checks as the registry calls them, the bytes of content under `blobs/`
//! (counted once at start, kept current by commits, set by the collector),
//! the reclaimable estimate the collector reports, and one report of it all
//! for the metrics.

use std::fs;
use std::io;
use std::path::Path;

use super::space::{DiskSpace, Full, MinFreeSpace, SpaceGuard, SpaceProbe};
use super::{BLOBS_DIR, Storage};

/// What `/metrics` shows about the disk, read when asked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpaceReport {
    /// `None` without a probe, or when it failed.
    pub disk: Option<DiskSpace>,
    /// The minimum in bytes on this disk (0 when off, or the disk unknown).
    pub min_free_bytes: u64,
    /// Bytes of the files under `blobs/`; `None` until counted.
    pub content_bytes: Option<u64>,
    /// What a collection would free, as the collector last estimated it;
    /// `None` until it has.
    pub reclaimable_bytes: Option<u64>,
}

/// What `count_content` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentCount {
    pub files: u64,
    pub bytes: u64,
}

impl Storage {
    /// Enforces `min_free_space` with `probe` (the reactor's `statvfs`).
    pub fn with_space_guard(mut self, setting: MinFreeSpace, probe: SpaceProbe) -> Storage {
        self.space = SpaceGuard::new(setting, probe);
        self
    }

    /// Before a push writes anything (an upload's start or body, a manifest):
    /// `Err` when `announced` more bytes would leave less than the minimum.
    pub fn check_space_to_start(&mut self, announced: Option<u64>) -> Result<(), Full> {
        self.space.check_start(&self.root, announced)
    }

    /// Before `len` bytes of an upload body are written.
    pub fn check_space_to_write(&mut self, len: u64) -> Result<(), Full> {
        self.space.check_write(&self.root, len)
    }

    /// The disk read now, the minimum, and the content counters.
    pub fn space_report(&self) -> SpaceReport {
        let disk = self.space.read(&self.root);
        SpaceReport {
            disk,
            min_free_bytes: disk.map_or(0, |disk| self.space.setting().bytes_of(disk.total_bytes)),
            content_bytes: self.content_bytes.get(),
            reclaimable_bytes: self.reclaimable_bytes.get(),
        }
    }

    /// Counts the files under `blobs/` and their bytes, and makes that the
    /// content total commits add to. One `stat` per file: run at start, before
    /// serving (0.2 to 0.3 s per 100,000 blobs with a warm cache, release
    /// build, on a loaded 2-core machine; main.rs logs the time it took).
    pub fn count_content(&self) -> io::Result<ContentCount> {
        let mut count = ContentCount { files: 0, bytes: 0 };
        let blobs = self.root.join(BLOBS_DIR);
        // blobs/<algorithm>/<two hex>/<hex>: three levels, nothing deeper.
        for algorithm in read_dirs(&blobs)? {
            for prefix in read_dirs(&algorithm)? {
                for entry in fs::read_dir(&prefix)? {
                    let metadata = entry?.metadata()?;
                    if metadata.is_file() {
                        count.files += 1;
                        count.bytes += metadata.len();
                    }
                }
            }
        }
        self.content_bytes.set(Some(count.bytes));
        Ok(count)
    }

    /// Bytes of content under `blobs/`, when counted.
    pub fn content_bytes(&self) -> Option<u64> {
        self.content_bytes.get()
    }

    /// For the collector: the content total it measured, replacing the
    /// running count (which only adds; content committed while the sweep
    /// had passed its place is missed until the next collection).
    pub fn set_content_bytes(&self, bytes: u64) {
        self.content_bytes.set(Some(bytes));
    }

    /// For the collector: what a collection would free now, as it estimates it.
    pub fn set_reclaimable_bytes(&self, bytes: u64) {
        self.reclaimable_bytes.set(Some(bytes));
    }

    /// A new content file of `bytes` landed under `blobs/`.
    pub(super) fn content_added(&self, bytes: u64) {
        if let Some(total) = self.content_bytes.get() {
            self.content_bytes.set(Some(total + bytes));
        }
    }
}

/// The subdirectories of `dir` (none when it is missing).
fn read_dirs(dir: &Path) -> io::Result<Vec<std::path::PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            dirs.push(entry.path());
        }
    }
    Ok(dirs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::test_support::TempDir;
    use std::cell::Cell;
    use std::rc::Rc;

    const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

    fn push_blob(storage: &mut Storage, namespace: &str, bytes: &[u8]) -> Digest {
        let digest = Digest::sha256_of(bytes);
        let id = storage.start_upload(namespace).unwrap();
        let mut writer = storage.upload_writer(namespace, &id).unwrap();
        writer.write(bytes).unwrap();
        storage.release_writer(namespace, &id, writer);
        storage.commit_upload(namespace, &id, &digest).unwrap();
        digest
    }

    #[test]
    fn content_is_counted_at_start_and_follows_new_content_only() {
        let root = TempDir::new("usage-test");
        let mut storage = Storage::open(root.path(), false, 16).unwrap();
        assert_eq!(storage.content_bytes(), None, "not counted yet");
        push_blob(&mut storage, "ns", b"12345");
        assert_eq!(storage.content_bytes(), None, "nothing to add to");
        assert_eq!(
            storage.count_content().unwrap(),
            ContentCount { files: 1, bytes: 5 }
        );
        // The same content again, from another namespace: no new bytes.
        push_blob(&mut storage, "other", b"12345");
        assert_eq!(storage.content_bytes(), Some(5));
        push_blob(&mut storage, "ns", b"678");
        assert_eq!(storage.content_bytes(), Some(8));
        let body = br#"{"schemaVersion":2}"#;
        let digest = Digest::sha256_of(body);
        storage
            .put_manifest("ns", &digest, MANIFEST_TYPE, body, &[], None)
            .unwrap();
        storage
            .put_manifest("two", &digest, MANIFEST_TYPE, body, &[], None)
            .unwrap();
        let expected = 8 + body.len() as u64;
        assert_eq!(storage.content_bytes(), Some(expected));
        assert_eq!(
            storage.count_content().unwrap(),
            ContentCount {
                files: 3,
                bytes: expected
            }
        );
        storage.set_content_bytes(3);
        storage.set_reclaimable_bytes(2);
        let report = storage.space_report();
        assert_eq!(report.content_bytes, Some(3));
        assert_eq!(report.reclaimable_bytes, Some(2));
        assert_eq!(report.disk, None, "no probe");
    }

    #[test]
    fn the_report_reads_the_disk_and_the_minimum_on_it() {
        let root = TempDir::new("usage-test");
        let free = Rc::new(Cell::new(500u64));
        let probe_free = free.clone();
        let storage = Storage::open(root.path(), false, 16).unwrap().with_space_guard(
            MinFreeSpace::Percent(10.0),
            Box::new(move |_| {
                Ok(DiskSpace {
                    free_bytes: probe_free.get(),
                    total_bytes: 1000,
                })
            }),
        );
        let report = storage.space_report();
        assert_eq!(
            report.disk,
            Some(DiskSpace {
                free_bytes: 500,
                total_bytes: 1000
            })
        );
        assert_eq!(report.min_free_bytes, 100);
        free.set(7);
        assert_eq!(storage.space_report().disk.unwrap().free_bytes, 7);
    }
}
