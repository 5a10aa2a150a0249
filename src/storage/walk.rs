//! Resumable walks over the layout, for the maintenance jobs (garbage
//! collection, retention, scrub) that run on the loop in slices: each walk
//! reads a bounded number of directory entries per call and keeps its place
//! between calls, so no slice's cost grows with the size of the registry.
//!
//! A walk sees entries added or removed while it runs, or not (readdir's
//! rules); its callers are written so that either is safe.

use std::fs::{self, ReadDir};
use std::io;
use std::path::PathBuf;
use std::time::UNIX_EPOCH;

use super::{
    BLOBS_DIR, LAYERS_DIR, MANIFESTS_DIR, QUARANTINE_DIR, REPOSITORIES_DIR, Storage, is_namespace_dir,
    not_found_as_none,
};
use crate::digest::Digest;

/// A file of the layout named by a digest, with what the jobs judge it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestFile {
    pub digest: Digest,
    /// Last modification, in seconds since the epoch (a link's or a
    /// revision's is when it was last written: its push).
    pub modified_secs: u64,
    pub size: u64,
}

/// A tag file: its name and the time it was last written (pushed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagFile {
    pub tag: String,
    pub modified_secs: u64,
}

/// Every namespace under `repositories/`, a few directories per step.
#[derive(Debug)]
pub struct NamespaceWalk {
    pending: Vec<(PathBuf, String)>,
}

impl NamespaceWalk {
    /// Up to `directories_max` more directories: the namespaces among them.
    pub fn step(&mut self, directories_max: usize) -> io::Result<Vec<String>> {
        let mut found = Vec::new();
        for _ in 0..directories_max {
            let Some((dir, name)) = self.pending.pop() else {
                break;
            };
            if !name.is_empty() && is_namespace_dir(&dir)? {
                found.push(name.clone());
            }
            let Some(entries) = not_found_as_none(fs::read_dir(&dir))? else {
                continue;
            };
            for entry in entries {
                let entry = entry?;
                if !entry.file_type()?.is_dir() {
                    continue;
                }
                let Ok(component) = entry.file_name().into_string() else {
                    continue;
                };
                // `_layers` & co. hold data, not nested namespaces.
                if component.starts_with(['_', '.']) {
                    continue;
                }
                let child = if name.is_empty() {
                    component
                } else {
                    format!("{name}/{component}")
                };
                self.pending.push((entry.path(), child));
            }
        }
        Ok(found)
    }

    pub fn is_done(&self) -> bool {
        self.pending.is_empty()
    }
}

/// The files of a tree `<base>/<algorithm>/[<2 hex>/]<hex>`, each named by
/// the digest it stands for, a bounded number per step.
#[derive(Debug)]
pub struct DigestWalk {
    /// Directories still to read, with the algorithm their files belong to.
    pending: Vec<(PathBuf, Option<String>)>,
    current: Option<(ReadDir, String)>,
    /// `true` under `blobs/`, whose files sit one fan-out level deeper.
    fanned_out: bool,
}

impl DigestWalk {
    fn new(base: PathBuf, fanned_out: bool) -> DigestWalk {
        DigestWalk {
            pending: vec![(base, None)],
            current: None,
            fanned_out,
        }
    }

    /// Up to `entries_max` directory entries read: the digest files among them.
    /// Files whose name is not a digest are skipped (not written by us).
    pub fn step(&mut self, entries_max: usize) -> io::Result<Vec<DigestFile>> {
        let mut found = Vec::new();
        let mut read = 0;
        while read < entries_max {
            let Some((entries, algorithm)) = &mut self.current else {
                let Some((dir, algorithm)) = self.pending.pop() else {
                    break;
                };
                read += 1;
                if let Some(entries) = not_found_as_none(fs::read_dir(&dir))? {
                    let algorithm = algorithm.unwrap_or_default();
                    self.current = Some((entries, algorithm));
                }
                continue;
            };
            let Some(entry) = entries.next() else {
                self.current = None;
                continue;
            };
            read += 1;
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let file_type = entry.file_type()?;
            if algorithm.is_empty() {
                // The base directory: one subdirectory per algorithm.
                if file_type.is_dir() {
                    let algorithm = name;
                    self.pending.push((entry.path(), Some(algorithm)));
                }
                continue;
            }
            if file_type.is_dir() {
                if self.fanned_out && name.len() == 2 {
                    self.pending.push((entry.path(), Some(algorithm.clone())));
                }
                continue;
            }
            if !file_type.is_file() {
                continue;
            }
            let Ok(digest) = Digest::parse(&format!("{algorithm}:{name}")) else {
                continue;
            };
            let Some(metadata) = not_found_as_none(entry.metadata())? else {
                continue;
            };
            found.push(DigestFile {
                digest,
                modified_secs: modified_secs(&metadata),
                size: metadata.len(),
            });
        }
        Ok(found)
    }

    pub fn is_done(&self) -> bool {
        self.current.is_none() && self.pending.is_empty()
    }
}

/// The tags of one namespace with their targets, a bounded number per step.
#[derive(Debug)]
pub struct TagWalk {
    namespace: String,
    dir: PathBuf,
    entries: Option<ReadDir>,
    started: bool,
}

impl TagWalk {
    /// Up to `tags_max` more tags (each a directory entry and a file read).
    pub fn step(&mut self, tags_max: usize) -> io::Result<Vec<(TagFile, Digest)>> {
        if !self.started {
            self.started = true;
            self.entries = not_found_as_none(fs::read_dir(&self.dir))?;
        }
        let mut found = Vec::new();
        let Some(entries) = &mut self.entries else {
            return Ok(found);
        };
        for _ in 0..tags_max {
            let Some(entry) = entries.next() else {
                self.entries = None;
                break;
            };
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            // Tags are ASCII by grammar; anything else was not written by us.
            let Ok(tag) = entry.file_name().into_string() else {
                continue;
            };
            let path = entry.path();
            let Some(metadata) = not_found_as_none(fs::metadata(&path))? else {
                continue;
            };
            match super::manifests::read_tag(&path) {
                Ok(Some(digest)) => found.push((
                    TagFile {
                        tag,
                        modified_secs: modified_secs(&metadata),
                    },
                    digest,
                )),
                Ok(None) => {}
                // A corrupt tag points nowhere: it keeps nothing alive, and
                // is left for an operator to look at.
                Err(error) => log::warn!("skipping tag {}:{tag}: {error}", self.namespace),
            }
        }
        Ok(found)
    }

    pub fn is_done(&self) -> bool {
        self.started && self.entries.is_none()
    }
}

pub(super) fn modified_secs(metadata: &fs::Metadata) -> u64 {
    metadata
        .modified()
        .ok()
        .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |age| age.as_secs())
}

impl Storage {
    pub fn namespace_walk(&self) -> NamespaceWalk {
        NamespaceWalk {
            pending: vec![(self.root.join(REPOSITORIES_DIR), String::new())],
        }
    }

    /// A walk that finds nothing (a job abandoning its walk).
    pub fn empty_walk(&self) -> DigestWalk {
        DigestWalk {
            pending: Vec::new(),
            current: None,
            fanned_out: false,
        }
    }

    /// Every content file under `blobs/` (blobs and manifest bodies).
    pub fn content_walk(&self) -> DigestWalk {
        DigestWalk::new(self.root.join(BLOBS_DIR), true)
    }

    /// The blob links of `namespace`.
    pub fn link_walk(&self, namespace: &str) -> DigestWalk {
        DigestWalk::new(self.repository_path(namespace).join(LAYERS_DIR), false)
    }

    /// The manifest revisions of `namespace`.
    pub fn revision_walk(&self, namespace: &str) -> DigestWalk {
        let base = self
            .repository_path(namespace)
            .join(MANIFESTS_DIR)
            .join("revisions");
        DigestWalk::new(base, false)
    }

    /// The tags of `namespace` with their digests and push times, in no order.
    pub fn tag_walk(&self, namespace: &str) -> TagWalk {
        TagWalk {
            namespace: namespace.to_owned(),
            dir: self.tags_dir(namespace),
            entries: None,
            started: false,
        }
    }

    /// The stored manifest body of `digest` with its revision's media type,
    /// if `namespace` has it; read past the cache (the jobs read each once).
    pub fn revision_body(&self, namespace: &str, digest: &Digest) -> io::Result<Option<(String, Vec<u8>)>> {
        let Some(revision) = self.revision(namespace, digest)? else {
            return Ok(None);
        };
        let Some(body) = not_found_as_none(fs::read(self.blob_path(digest)))? else {
            return Ok(None);
        };
        Ok(Some((revision.media_type, body)))
    }

    /// Removes `namespace`'s link to `digest` if it was last written before
    /// the second `before_secs` (a link re-written since then is fresh).
    pub fn remove_link_written_before(
        &self,
        namespace: &str,
        digest: &Digest,
        before_secs: u64,
    ) -> io::Result<bool> {
        let link = self.layer_link_path(namespace, digest);
        let Some(metadata) = not_found_as_none(fs::symlink_metadata(&link))? else {
            return Ok(false);
        };
        if modified_secs(&metadata) >= before_secs {
            return Ok(false);
        }
        super::atomic::remove_file(&link, self.sync_to_disk)
    }

    /// Takes content `digest` out of the store by a rename into `_trash`;
    /// its bytes are removed off the loop (`take_discarded`). A rename is
    /// cheap whatever the size; an unlink is not: freeing blocks and the
    /// inode waits on the file system's journal (0.2 ms a small file on
    /// this ext4 disk, with stalls of tens of ms; renames cost a tenth).
    /// `false` when it was gone already.
    pub fn remove_content(&mut self, digest: &Digest) -> io::Result<bool> {
        let path = self.blob_path(digest);
        if fs::symlink_metadata(&path).is_err() {
            return Ok(false);
        }
        self.discard(&path)?;
        Ok(true)
    }

    /// Path of a content file, for the jobs that read it off the loop (scrub).
    pub fn content_path(&self, digest: &Digest) -> PathBuf {
        self.blob_path(digest)
    }

    /// Moves content `digest` into `_quarantine` if the file there is still
    /// the one found corrupt (`found`: a file re-pushed since is another
    /// file, and stays). From then on the content is unknown, so clients
    /// push it again. Returns where it went.
    pub fn quarantine_content(
        &mut self,
        digest: &Digest,
        found: FileIdentity,
    ) -> io::Result<Option<PathBuf>> {
        let path = self.blob_path(digest);
        let Some(metadata) = not_found_as_none(fs::symlink_metadata(&path))? else {
            return Ok(None);
        };
        if FileIdentity::of(&metadata) != found {
            return Ok(None);
        }
        let mut target =
            self.root
                .join(QUARANTINE_DIR)
                .join(format!("{}-{}", digest.algorithm(), digest.hex()));
        if fs::symlink_metadata(&target).is_ok() {
            target.set_extension(super::random_hex(4));
        }
        super::atomic::rename(&path, &target, self.sync_to_disk)?;
        // A manifest body kept in memory would still be served.
        self.cache.borrow_mut().clear();
        Ok(Some(target))
    }
}

/// Which file a path named when it was read: a content file replaced since
/// (removed and pushed again) has another identity. The inode alone is not
/// enough (file systems reuse a freed one at once); its change time, to the
/// nanosecond, is set anew when a file is created or renamed into place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    pub device: u64,
    pub inode: u64,
    pub changed_nanos: i128,
}

impl FileIdentity {
    pub fn of(metadata: &fs::Metadata) -> FileIdentity {
        use std::os::unix::fs::MetadataExt;
        FileIdentity {
            device: metadata.dev(),
            inode: metadata.ino(),
            changed_nanos: i128::from(metadata.ctime()) * 1_000_000_000 + i128::from(metadata.ctime_nsec()),
        }
    }
}
