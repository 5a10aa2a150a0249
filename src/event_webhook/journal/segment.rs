//! Segment files: their names, creating one durably, reading a segment's records back with every
//! length checked before anything is allocated, and the journal's appends to the active segment
//! with rotation. What a record means is `record`'s; which segments may go is `compaction`'s.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use super::record::{HEADER_BYTES, crc32c};
use super::{Journal, RECORD_PAYLOAD_BYTES_MAX};

const SEGMENT_PREFIX: &str = "segment-";
const SEGMENT_SUFFIX: &str = ".log";
const SEGMENT_DIGITS: usize = 20;

pub(super) struct Segment {
    pub(super) path: PathBuf,
    pub(super) bytes: u64,
    /// Webhooks with at least one event record here, acknowledged or not: their cursor must
    /// survive as long as this segment does.
    pub(super) webhooks: BTreeSet<String>,
    /// Webhooks with a disabled-state record here (`marks`), superseded or not.
    pub(super) marks: BTreeSet<String>,
}

impl Journal {
    pub(super) fn rotate_if_full(&mut self, frame_bytes: u64) -> io::Result<()> {
        let bytes = self.segments[&self.active_key].bytes;
        // An empty segment takes any record, so an oversized one cannot rotate forever.
        if self.rotate_due || (bytes > 0 && bytes + frame_bytes > self.limits.segment_bytes_max) {
            self.rotate()?;
        }
        Ok(())
    }

    pub(super) fn rotate(&mut self) -> io::Result<()> {
        let first = self.next_seq.max(self.active_key.saturating_add(1));
        let (path, file) = create_segment(&self.dir, first, self.sync)?;
        self.segments.insert(
            first,
            Segment {
                path,
                bytes: 0,
                webhooks: BTreeSet::new(),
                marks: BTreeSet::new(),
            },
        );
        self.active_key = first;
        self.active = file;
        self.next_seq = first;
        self.rotate_due = false;
        self.compact_due = true;
        Ok(())
    }

    /// Writes whole records to the active segment (and syncs them), no rotation.
    pub(super) fn write_active(&mut self, frames: &[u8]) -> io::Result<()> {
        let segment = self.segments.get_mut(&self.active_key).expect("active segment");
        let before = segment.bytes;
        #[cfg(test)]
        let injected = super::reserve::injected_full_disk(&mut self.full_disk_writes);
        #[cfg(not(test))]
        let injected = Ok(());
        let result = injected
            .and_then(|()| self.active.write_all(frames))
            .and_then(|()| {
                if self.sync {
                    self.active.sync_data()
                } else {
                    Ok(())
                }
            });
        let after = match &result {
            Ok(()) => before + frames.len() as u64,
            Err(_) => {
                // A partial write would end this segment's scan at the next start and hide every
                // later record: cut it off. Whether or not that works, and since after a failed
                // fsync the disk may not match the page cache, the next write starts a new segment.
                let _ = self.active.set_len(before);
                self.rotate_due = true;
                self.active.metadata().map_or(before, |metadata| metadata.len())
            }
        };
        segment.bytes = after;
        self.disk_bytes = self.disk_bytes - before + after;
        result
    }

    /// Writes records through rotation, for compaction and drops.
    pub(super) fn write_batch(&mut self, frames: &[u8]) -> io::Result<()> {
        self.rotate_if_full(frames.len() as u64)?;
        self.write_active(frames)
    }
}

pub(super) fn segment_name(first: u64) -> String {
    format!(
        "{SEGMENT_PREFIX}{first:0width$}{SEGMENT_SUFFIX}",
        width = SEGMENT_DIGITS
    )
}

pub(super) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(SEGMENT_PREFIX)?.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_DIGITS || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Creates (or, after a rotation that failed at its directory sync, reuses: nothing was written
/// to it then) the segment starting at `first`, and makes its directory entry durable.
pub(super) fn create_segment(dir: &Path, first: u64, sync: bool) -> io::Result<(PathBuf, File)> {
    let path = dir.join(segment_name(first));
    let file = OpenOptions::new().append(true).create(true).open(&path)?;
    file.set_len(0)?;
    if sync {
        // Records fsync'd into a file whose directory entry is lost vanish with it.
        sync_dir(dir)?;
    }
    Ok((path, file))
}

/// `create_dir_all`; when `sync`, also flushes the parent's entry for `dir` (the parent is the
/// registry root, which exists).
pub(super) fn create_dir(dir: &Path, sync: bool) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir)?;
    if sync {
        match dir.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent)?,
            _ => sync_dir(Path::new("."))?,
        }
    }
    Ok(())
}

pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

pub(super) enum Step {
    /// An intact record; its payload is in `SegmentReader::payload`.
    Record {
        offset: u64,
    },
    /// A torn or corrupt record at `offset`: the scan of this segment ends.
    Damaged {
        offset: u64,
        why: String,
    },
    End,
}

/// Reads one segment's records, checking each length against the file before allocating.
pub(super) struct SegmentReader {
    reader: BufReader<File>,
    /// The end of the last record read.
    pub(super) offset: u64,
    pub(super) file_bytes: u64,
    pub(super) payload: Vec<u8>,
}

impl SegmentReader {
    pub(super) fn open(path: &Path) -> io::Result<SegmentReader> {
        let file = File::open(path)?;
        let file_bytes = file.metadata()?.len();
        Ok(SegmentReader {
            reader: BufReader::with_capacity(64 * 1024, file),
            offset: 0,
            file_bytes,
            payload: Vec::new(),
        })
    }

    pub(super) fn next(&mut self) -> io::Result<Step> {
        let offset = self.offset;
        let left = self.file_bytes - offset;
        if left == 0 {
            return Ok(Step::End);
        }
        let damaged = |why: String| Ok(Step::Damaged { offset, why });
        if left < HEADER_BYTES as u64 {
            return damaged(format!("torn record header ({left} of {HEADER_BYTES} bytes)"));
        }
        let mut header = [0u8; HEADER_BYTES];
        if let Err(error) = self.reader.read_exact(&mut header) {
            return eof_as_damage(error, offset);
        }
        let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let checksum = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        // Every record has at least its type byte; a zero length is what a zero-filled tail (a
        // file extended but never written before a crash) looks like.
        if length == 0 {
            return damaged("zero record length".to_string());
        }
        if length as usize > RECORD_PAYLOAD_BYTES_MAX {
            return damaged(format!("record length {length} over {RECORD_PAYLOAD_BYTES_MAX}"));
        }
        let body_left = left - HEADER_BYTES as u64;
        if u64::from(length) > body_left {
            return damaged(format!("torn record (length {length}, {body_left} bytes left)"));
        }
        self.payload.resize(length as usize, 0);
        if let Err(error) = self.reader.read_exact(&mut self.payload) {
            return eof_as_damage(error, offset);
        }
        if crc32c(&self.payload) != checksum {
            return damaged("checksum mismatch".to_string());
        }
        self.offset = offset + HEADER_BYTES as u64 + u64::from(length);
        Ok(Step::Record { offset })
    }
}

/// The file shrank under the reader: that is damage, not an I/O failure.
fn eof_as_damage(error: io::Error, offset: u64) -> io::Result<Step> {
    if error.kind() == io::ErrorKind::UnexpectedEof {
        Ok(Step::Damaged {
            offset,
            why: "file shorter than when opened".to_string(),
        })
    } else {
        Err(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(segment_name(42), "segment-00000000000000000042.log");
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_segment_name("segment-99999999999999999999.log"), None);
        assert_eq!(parse_segment_name("segment-42.log"), None);
        assert_eq!(parse_segment_name("segment-0000000000000000004x.log"), None);
    }
}
