//! The durable async delivery journal: an append-only log of checksummed records in segment files,
//! with one acknowledgement cursor per webhook. It owns the files of its directory and nothing
//! else; it never reads a clock (times come in as `unix_micros`), never delivers and never logs
//! (what it skipped or dropped is handed back for the caller to log and count).
//!
//! # On disk
//!
//! The directory holds `segment-<first seq, 20 digits>.log` files. A segment is a run of records:
//!
//! ```text
//! [u32 LE payload length][u32 LE CRC-32C of the payload][payload]
//! ```
//!
//! Integers are little-endian; `str` and `bytes` are a u32 LE length then that many bytes
//! (`str` is UTF-8). The payload's first byte is its type:
//!
//! - `E` event: seq u64, webhook str, event id str, kind str, enqueued unix micros u64,
//!   delivery id str, body bytes (the exact signed JSON, so signatures verify after a restart).
//! - `A` ack: webhook str, seq u64. The webhook is done with every one of its events up to and
//!   including seq (delivered, dead-lettered or dropped); async deliveries to a webhook go out
//!   strictly in order, so this cursor is all the state a webhook needs.
//! - `D` dead letter: number u64 (orders dead letters and deduplicates rewritten copies),
//!   webhook str, seq u64, event id str, delivery id str, attempts u32, last error str,
//!   unix micros u64, kind str, body bytes (kept so the event can be redelivered).
//!
//! Sequence numbers grow strictly but may skip values: a new segment starts at
//! `max(next seq, previous segment's first seq + 1)` so names stay unique even when a segment
//! holds no event, and every event of a segment has `first seq <= seq < next segment's first`.
//!
//! # Recovery
//!
//! `open` reads every segment in name order and checks each record's length (at least 1, at most
//! [`RECORD_PAYLOAD_BYTES_MAX`] and within the file, before anything is allocated) and checksum.
//! The first bad record ends that segment's scan; the rest of the segment is reported in
//! `Recovery::skipped`, later segments are still read, and the last segment is truncated to its
//! last intact record so appends continue on a clean tail.
//!
//! # Disk bound: the drop policy
//!
//! Before an event is appended, while `disk_bytes() + record > total_bytes_max`, in this order:
//! 1. segments holding no pending event (for any webhook) are deleted, as by [`Journal::compact`];
//! 2. otherwise the oldest segment (which then holds the oldest pending event of the journal) is
//!    emptied: every webhook with pending events in it is acknowledged up to its last event there,
//!    those events are reported in `Appended::dropped` (in seq order), and the segment is deleted;
//! 3. if only the active segment is left and it holds pending events, it is rotated out, so step 2
//!    empties it next.
//!
//! So a whole segment (at most `segment_bytes_max` plus one record) is reclaimed at a time, always
//! the oldest undelivered events first, across webhooks. An event being delivered may be dropped;
//! its later ack is then a no-op. Acks, dead letters and compaction's rewrites are not held to the
//! bound (they are small and bounded in number), so the journal can exceed `total_bytes_max` by
//! the retained dead letters and one segment's acks at most.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};

pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 4 << 20;
pub const TOTAL_BYTES_MAX_DEFAULT: u64 = 256 << 20;
pub const DEAD_LETTERS_MAX_DEFAULT: usize = 1000;
/// No record payload is larger. Checked on a length field before its payload is allocated, so a
/// garbage length costs nothing; appends over it fail with `InvalidInput`.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 16 << 20;
/// A dead letter's last error is cut to this many bytes, so retained dead letters stay small.
pub const LAST_ERROR_BYTES_MAX: usize = 1024;
/// `Recovery::skipped` holds at most this many lines (plus one saying how many more there were),
/// so a directory full of junk cannot flood the log.
pub const SKIPPED_LINES_MAX: usize = 100;

const HEADER_BYTES: usize = 8;
const TYPE_EVENT: u8 = b'E';
const TYPE_ACK: u8 = b'A';
const TYPE_DEAD_LETTER: u8 = b'D';
const SEGMENT_PREFIX: &str = "segment-";
const SEGMENT_SUFFIX: &str = ".log";
const SEGMENT_DIGITS: usize = 20;
const FIRST_SEQ: u64 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalLimits {
    /// A new segment starts when a write would take the active one past this.
    pub segment_bytes_max: u64,
    /// The disk bound, enforced when events are appended (see the module docs for the policy).
    /// Must be at least twice `segment_bytes_max`, so a full segment can always be reclaimed
    /// without emptying the whole queue.
    pub total_bytes_max: u64,
    /// How many of the most recent dead letters are kept.
    pub dead_letters_max: usize,
}

impl Default for JournalLimits {
    fn default() -> JournalLimits {
        JournalLimits {
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
            total_bytes_max: TOTAL_BYTES_MAX_DEFAULT,
            dead_letters_max: DEAD_LETTERS_MAX_DEFAULT,
        }
    }
}

/// An event a webhook has not acknowledged, as recovered by `open`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEvent {
    pub seq: u64,
    pub webhook: String,
    pub event_id: String,
    pub kind: String,
    pub unix_micros: u64,
    pub delivery_id: String,
    pub body: Vec<u8>,
}

/// An event that exhausted its retries to one webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Assigned by the journal, increasing: the order dead letters were recorded in.
    pub number: u64,
    pub webhook: String,
    pub seq: u64,
    pub event_id: String,
    pub delivery_id: String,
    pub attempts: u32,
    pub last_error: String,
    pub unix_micros: u64,
    /// The event's kind and exact body, so it can be redelivered (signature intact)
    /// after its event record was compacted away.
    pub kind: String,
    pub body: Vec<u8>,
}

/// What `append_dead_letter` records; the journal adds the number.
#[derive(Debug, Clone, Copy)]
pub struct NewDeadLetter<'a> {
    pub webhook: &'a str,
    pub seq: u64,
    pub event_id: &'a str,
    pub delivery_id: &'a str,
    pub attempts: u32,
    pub last_error: &'a str,
    pub unix_micros: u64,
    pub kind: &'a str,
    pub body: &'a [u8],
}

/// What `open` found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Unacknowledged events, in seq order (so in order per webhook).
    pub pending: Vec<PendingEvent>,
    /// The retained dead letters, oldest first.
    pub dead_letters: Vec<DeadLetter>,
    /// One line per damaged segment tail, unreadable file or stray file: file, offset, why.
    pub skipped: Vec<String>,
}

/// An undelivered event the disk bound gave up on; it is acknowledged in the journal already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedEvent {
    pub webhook: String,
    pub seq: u64,
    /// Empty only if the segment could not be re-read to find it (an I/O error).
    pub event_id: String,
}

#[derive(Debug)]
pub struct Appended {
    pub seq: u64,
    /// Events dropped to stay under `total_bytes_max`, oldest first. Includes drops made by an
    /// earlier `append_event` that then failed, so none goes unreported.
    pub dropped: Vec<DroppedEvent>,
}

struct Segment {
    path: PathBuf,
    bytes: u64,
    /// Webhooks with at least one event record here, acknowledged or not: their cursor must
    /// survive as long as this segment does.
    webhooks: BTreeSet<String>,
}

#[derive(Default)]
struct WebhookState {
    cursor: u64,
    /// The segment holding the ack record that set `cursor`; when it is deleted while events of
    /// this webhook remain on disk, the cursor is written again (else they would come back).
    cursor_segment: Option<u64>,
    /// Seqs of unacknowledged events, ascending.
    pending: VecDeque<u64>,
}

struct RetainedDeadLetter {
    letter: DeadLetter,
    /// The segment holding its record; rewritten elsewhere before that segment is deleted.
    segment: u64,
}

pub struct Journal {
    dir: PathBuf,
    sync: bool,
    limits: JournalLimits,
    /// By first seq; the last one is the active segment.
    segments: BTreeMap<u64, Segment>,
    active_key: u64,
    active: File,
    next_seq: u64,
    next_dead_letter: u64,
    webhooks: BTreeMap<String, WebhookState>,
    dead_letters: VecDeque<RetainedDeadLetter>,
    disk_bytes: u64,
    /// A rotation happened since the last compaction.
    compact_due: bool,
    /// A write failed: its tail may be torn or not what the disk holds, so the next write goes to
    /// a fresh segment.
    rotate_due: bool,
    /// Drops not yet handed to a caller (an `append_event` failed after dropping).
    unreported_drops: Vec<DroppedEvent>,
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir` and recovers its state. Damaged records are
    /// skipped and reported, never an error; errors are I/O failures of the directory itself, of
    /// truncating the last segment, or of creating a segment.
    pub fn open(dir: &Path, sync_to_disk: bool, limits: JournalLimits) -> io::Result<(Journal, Recovery)> {
        if limits.segment_bytes_max == 0 || limits.total_bytes_max / 2 < limits.segment_bytes_max {
            return Err(invalid(format!(
                "journal limits: total_bytes_max ({}) must be at least twice segment_bytes_max ({}) > 0",
                limits.total_bytes_max, limits.segment_bytes_max
            )));
        }
        create_dir(dir, sync_to_disk)?;
        let mut skipped = Skipped::default();
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let first = entry.file_name().to_str().and_then(parse_segment_name);
            match first {
                Some(first) if entry.file_type()?.is_file() => names.push((first, path)),
                _ => skipped.push(format!("{}: not a journal segment, ignored", path.display())),
            }
        }
        names.sort();

        let mut scan = Scan::new(limits.dead_letters_max);
        let mut segments = BTreeMap::new();
        let mut last_usable = false;
        for (index, (first, path)) in names.iter().enumerate() {
            let end = names.get(index + 1).map_or(u64::MAX, |(next, _)| *next);
            let is_last = index + 1 == names.len();
            let outcome = scan.segment(*first, end, path, &mut skipped);
            let mut bytes = outcome.file_bytes;
            if is_last {
                last_usable = outcome.readable;
                if outcome.readable && outcome.valid_bytes < outcome.file_bytes {
                    // Appends must follow the last intact record: anything after a torn record
                    // would never be read back.
                    let file = OpenOptions::new().write(true).open(path)?;
                    file.set_len(outcome.valid_bytes)?;
                    if sync_to_disk {
                        file.sync_all()?;
                    }
                    bytes = outcome.valid_bytes;
                }
            }
            segments.insert(
                *first,
                Segment {
                    path: path.clone(),
                    bytes,
                    webhooks: outcome.webhooks,
                },
            );
        }

        let last_key = segments.keys().next_back().copied();
        let mut next_seq = scan.seq_floor.max(FIRST_SEQ);
        if let Some(last_key) = last_key {
            next_seq = next_seq.max(last_key);
        }
        let (active_key, active) = match last_key {
            Some(key) if last_usable => {
                let segment = &segments[&key];
                (key, OpenOptions::new().append(true).open(&segment.path)?)
            }
            // An unreadable last segment is left alone (the error may be transient) and a new one
            // takes the appends.
            _ => {
                let first = match last_key {
                    Some(key) => next_seq.max(key.saturating_add(1)),
                    None => next_seq,
                };
                let (path, file) = create_segment(dir, first, sync_to_disk)?;
                let webhooks = BTreeSet::new();
                segments.insert(
                    first,
                    Segment {
                        path,
                        bytes: 0,
                        webhooks,
                    },
                );
                next_seq = first;
                (first, file)
            }
        };

        let (webhooks, pending) = scan.webhooks();
        let dead_letters: VecDeque<RetainedDeadLetter> = std::mem::take(&mut scan.dead_letters)
            .into_values()
            .map(|(letter, segment)| RetainedDeadLetter { letter, segment })
            .collect();
        let next_dead_letter = scan.dead_letter_floor;
        let recovery = Recovery {
            pending,
            dead_letters: dead_letters
                .iter()
                .map(|retained| retained.letter.clone())
                .collect(),
            skipped: skipped.finish(),
        };
        let disk_bytes = segments.values().map(|segment| segment.bytes).sum();
        let journal = Journal {
            dir: dir.to_path_buf(),
            sync: sync_to_disk,
            limits,
            segments,
            active_key,
            active,
            next_seq,
            next_dead_letter,
            webhooks,
            dead_letters,
            disk_bytes,
            // Segments acknowledged before the restart go at the first append.
            compact_due: true,
            rotate_due: false,
            unreported_drops: Vec::new(),
        };
        Ok((journal, recovery))
    }

    /// Records an event for one webhook; durable (with `sync_to_disk`) when this returns, so the
    /// client may be answered. Makes room first under the disk bound (see the module docs).
    pub fn append_event(
        &mut self,
        webhook: &str,
        event_id: &str,
        kind: &str,
        unix_micros: u64,
        delivery_id: &str,
        body: &[u8],
    ) -> io::Result<Appended> {
        let payload_bytes = 1 + 8 + field_bytes(&[webhook.len(), event_id.len(), kind.len()]) + 8;
        let payload_bytes = payload_bytes + field_bytes(&[delivery_id.len(), body.len()]);
        check_payload(payload_bytes)?;
        let frame_bytes = (HEADER_BYTES + payload_bytes) as u64;
        self.enforce_bound(frame_bytes)?;
        self.prepare_write(frame_bytes)?;
        if self.next_seq == u64::MAX {
            return Err(invalid("journal sequence numbers exhausted".to_string()));
        }
        // Taken even if the write fails: the record may have reached the disk anyway, and a seq
        // must never name two events.
        let seq = self.next_seq;
        self.next_seq += 1;
        let frame = encode(payload_bytes, |out| {
            out.push(TYPE_EVENT);
            put_u64(out, seq);
            put_str(out, webhook);
            put_str(out, event_id);
            put_str(out, kind);
            put_u64(out, unix_micros);
            put_str(out, delivery_id);
            put_bytes(out, body);
        });
        self.write_active(&frame)?;
        let segment = self.segments.get_mut(&self.active_key).expect("active segment");
        if !segment.webhooks.contains(webhook) {
            segment.webhooks.insert(webhook.to_string());
        }
        self.webhooks
            .entry(webhook.to_string())
            .or_default()
            .pending
            .push_back(seq);
        Ok(Appended {
            seq,
            dropped: std::mem::take(&mut self.unreported_drops),
        })
    }

    /// The webhook is done with its events up to and including `seq`. Returns how many pending
    /// events that released; an ack that releases none writes nothing.
    pub fn append_ack(&mut self, webhook: &str, seq: u64) -> io::Result<usize> {
        self.check_seq(seq)?;
        if self.releasable(webhook, seq) == 0 {
            return Ok(0);
        }
        let frame = encode_ack(webhook, seq);
        self.prepare_write(frame.len() as u64)?;
        self.write_active(&frame)?;
        Ok(self.advance(webhook, seq))
    }

    /// Records a dead letter and acknowledges its event (in the same write: a dead-lettered event
    /// is done with); a later `append_ack` of the same seq is a no-op. Returns its number. Only the
    /// `dead_letters_max` most recent are kept.
    pub fn append_dead_letter(&mut self, new: NewDeadLetter<'_>) -> io::Result<u64> {
        self.check_seq(new.seq)?;
        let letter = DeadLetter {
            number: self.next_dead_letter,
            webhook: new.webhook.to_string(),
            seq: new.seq,
            event_id: new.event_id.to_string(),
            delivery_id: new.delivery_id.to_string(),
            attempts: new.attempts,
            last_error: truncate_utf8(new.last_error, LAST_ERROR_BYTES_MAX).to_string(),
            unix_micros: new.unix_micros,
            kind: new.kind.to_string(),
            body: new.body.to_vec(),
        };
        let mut frames = encode_dead_letter(&letter)?;
        let acks = self.releasable(new.webhook, new.seq) > 0;
        if acks {
            frames.extend_from_slice(&encode_ack(new.webhook, new.seq));
        }
        self.prepare_write(frames.len() as u64)?;
        self.write_active(&frames)?;
        self.next_dead_letter += 1;
        if acks {
            self.advance(new.webhook, new.seq);
        }
        let number = letter.number;
        self.dead_letters.push_back(RetainedDeadLetter {
            letter,
            segment: self.active_key,
        });
        while self.dead_letters.len() > self.limits.dead_letters_max {
            self.dead_letters.pop_front();
        }
        Ok(number)
    }

    /// For a webhook gone from the configuration: acknowledges all its pending events and returns
    /// how many there were.
    pub fn forget_webhook(&mut self, webhook: &str) -> io::Result<usize> {
        let last = self
            .webhooks
            .get(webhook)
            .and_then(|state| state.pending.back().copied());
        match last {
            Some(last) => self.append_ack(webhook, last),
            None => Ok(0),
        }
    }

    /// Deletes every segment but the active one that holds no pending event, after rewriting into
    /// the active segment the retained dead letters they hold and the cursors they hold that
    /// still matter. Work is bounded by the segment count and `dead_letters_max`. Runs by itself
    /// at the first write after a rotation.
    pub fn compact(&mut self) -> io::Result<()> {
        self.compact_due = false;
        let doomed: Vec<u64> = self
            .segments
            .keys()
            .copied()
            .filter(|&key| key != self.active_key && !self.has_pending(key))
            .collect();
        self.delete_segments(&doomed)
    }

    /// Bytes of all segment files.
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    pub fn limits(&self) -> JournalLimits {
        self.limits
    }

    /// Pending events of one webhook.
    pub fn pending(&self, webhook: &str) -> usize {
        self.webhooks.get(webhook).map_or(0, |state| state.pending.len())
    }

    /// Pending events per webhook with any, sorted by name.
    pub fn depths(&self) -> Vec<(String, usize)> {
        self.webhooks
            .iter()
            .filter(|(_, state)| !state.pending.is_empty())
            .map(|(name, state)| (name.clone(), state.pending.len()))
            .collect()
    }

    pub fn pending_total(&self) -> usize {
        self.webhooks.values().map(|state| state.pending.len()).sum()
    }

    /// The retained dead letters, oldest first.
    pub fn dead_letters(&self) -> impl Iterator<Item = &DeadLetter> {
        self.dead_letters.iter().map(|retained| &retained.letter)
    }

    fn check_seq(&self, seq: u64) -> io::Result<()> {
        // An ack past the last event would silently acknowledge events not yet appended.
        if seq >= self.next_seq {
            return Err(invalid(format!(
                "seq {seq} was never appended (next is {})",
                self.next_seq
            )));
        }
        Ok(())
    }

    fn releasable(&self, webhook: &str, seq: u64) -> usize {
        self.webhooks.get(webhook).map_or(0, |state| {
            state.pending.partition_point(|&pending| pending <= seq)
        })
    }

    /// In-memory effect of an ack record just written to the active segment.
    fn advance(&mut self, webhook: &str, seq: u64) -> usize {
        let active_key = self.active_key;
        let Some(state) = self.webhooks.get_mut(webhook) else {
            return 0;
        };
        let released = state.pending.partition_point(|&pending| pending <= seq);
        state.pending.drain(..released);
        if seq > state.cursor {
            state.cursor = seq;
            state.cursor_segment = Some(active_key);
        }
        released
    }

    /// Seqs a segment may hold: `[key, end)`.
    fn segment_end(&self, key: u64) -> u64 {
        self.segments
            .range((Bound::Excluded(key), Bound::Unbounded))
            .next()
            .map_or(self.next_seq, |(next, _)| *next)
    }

    fn has_pending(&self, key: u64) -> bool {
        let end = self.segment_end(key);
        self.webhooks.values().any(|state| {
            let index = state.pending.partition_point(|&seq| seq < key);
            state.pending.get(index).is_some_and(|&seq| seq < end)
        })
    }

    /// Rotation and due compaction, before a write of `frame_bytes`.
    fn prepare_write(&mut self, frame_bytes: u64) -> io::Result<()> {
        self.rotate_if_full(frame_bytes)?;
        if self.compact_due {
            self.compact()?;
            // Compaction's own rewrites may have filled the segment again.
            self.rotate_if_full(frame_bytes)?;
        }
        Ok(())
    }

    fn rotate_if_full(&mut self, frame_bytes: u64) -> io::Result<()> {
        let bytes = self.segments[&self.active_key].bytes;
        // An empty segment takes any record, so an oversized one cannot rotate forever.
        if self.rotate_due || (bytes > 0 && bytes + frame_bytes > self.limits.segment_bytes_max) {
            self.rotate()?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let first = self.next_seq.max(self.active_key.saturating_add(1));
        let (path, file) = create_segment(&self.dir, first, self.sync)?;
        self.segments.insert(
            first,
            Segment {
                path,
                bytes: 0,
                webhooks: BTreeSet::new(),
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
    fn write_active(&mut self, frames: &[u8]) -> io::Result<()> {
        let segment = self.segments.get_mut(&self.active_key).expect("active segment");
        let before = segment.bytes;
        let result = self.active.write_all(frames).and_then(|()| {
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
    fn write_batch(&mut self, frames: &[u8]) -> io::Result<()> {
        self.rotate_if_full(frames.len() as u64)?;
        self.write_active(frames)
    }

    /// Makes room for a record of `frame_bytes` under `total_bytes_max` (module docs, drop policy).
    fn enforce_bound(&mut self, frame_bytes: u64) -> io::Result<()> {
        // Each round deletes a segment or rotates a pending-holding active one out (and a drop's
        // acks may rotate once more), so this many rounds are enough; the bound only stops
        // churning rewrites of dead letters when they alone exceed the budget.
        let rounds_max = 2 * self.segments.len() + 4;
        for _ in 0..rounds_max {
            if self.disk_bytes + frame_bytes <= self.limits.total_bytes_max {
                break;
            }
            let idle: Vec<u64> = self
                .segments
                .keys()
                .copied()
                .filter(|&key| key != self.active_key && !self.has_pending(key))
                .collect();
            if !idle.is_empty() {
                self.delete_segments(&idle)?;
                continue;
            }
            let oldest = *self.segments.keys().next().expect("the active segment");
            if oldest != self.active_key {
                self.drop_segment(oldest)?;
            } else if self.has_pending(oldest) {
                self.rotate()?;
            } else {
                break;
            }
        }
        Ok(())
    }

    /// Acknowledges every pending event of the oldest segment `key`, reports them dropped, and
    /// deletes the segment.
    fn drop_segment(&mut self, key: u64) -> io::Result<()> {
        let end = self.segment_end(key);
        let mut victims: Vec<(u64, String)> = Vec::new();
        for (name, state) in &self.webhooks {
            let start = state.pending.partition_point(|&seq| seq < key);
            let stop = state.pending.partition_point(|&seq| seq < end);
            victims.extend(state.pending.range(start..stop).map(|&seq| (seq, name.clone())));
        }
        if !victims.is_empty() {
            victims.sort();
            let mut event_ids = self.event_ids(key, &victims);
            // The acks must be durable before the events' segment goes, or a crash in between
            // would leave them pending with no record of why.
            let mut last_per_webhook: BTreeMap<&str, u64> = BTreeMap::new();
            for (seq, name) in &victims {
                last_per_webhook.insert(name, *seq);
            }
            let mut frames = Vec::new();
            for (name, seq) in &last_per_webhook {
                frames.extend_from_slice(&encode_ack(name, *seq));
            }
            self.write_batch(&frames)?;
            let acks: Vec<(String, u64)> = last_per_webhook
                .into_iter()
                .map(|(name, seq)| (name.to_string(), seq))
                .collect();
            for (name, seq) in acks {
                self.advance(&name, seq);
            }
            for (seq, webhook) in victims {
                let event_id = event_ids.remove(&seq).unwrap_or_default();
                self.unreported_drops.push(DroppedEvent {
                    webhook,
                    seq,
                    event_id,
                });
            }
        }
        self.delete_segments(&[key])
    }

    /// The event ids of `victims` (seq, webhook), read back from segment `key`. Bounded by one
    /// segment; what cannot be read stays unknown.
    fn event_ids(&self, key: u64, victims: &[(u64, String)]) -> BTreeMap<u64, String> {
        let wanted: BTreeSet<u64> = victims.iter().map(|(seq, _)| *seq).collect();
        let mut found = BTreeMap::new();
        let Some(segment) = self.segments.get(&key) else {
            return found;
        };
        let Ok(mut reader) = SegmentReader::open(&segment.path) else {
            return found;
        };
        while let Ok(Step::Record { .. }) = reader.next() {
            if let Ok(Record::Event(event)) = decode(&reader.payload)
                && wanted.contains(&event.seq)
            {
                found.insert(event.seq, event.event_id);
            }
        }
        found
    }

    /// Deletes `doomed` segments (never the active one) after making durable, in the active
    /// segment, what they hold that must outlive them: retained dead letters, and the cursors of
    /// webhooks whose events remain in other segments.
    fn delete_segments(&mut self, doomed: &[u64]) -> io::Result<()> {
        let doomed: BTreeSet<u64> = doomed
            .iter()
            .copied()
            .filter(|&key| key != self.active_key)
            .collect();
        if doomed.is_empty() {
            return Ok(());
        }
        let remaining: BTreeSet<&str> = self
            .segments
            .iter()
            .filter(|(key, _)| !doomed.contains(key))
            .flat_map(|(_, segment)| segment.webhooks.iter().map(String::as_str))
            .collect();
        let mut frames = Vec::new();
        let mut checkpointed = Vec::new();
        for (name, state) in &self.webhooks {
            let moved = state.cursor_segment.is_some_and(|key| doomed.contains(&key));
            if moved && remaining.contains(name.as_str()) {
                frames.extend_from_slice(&encode_ack(name, state.cursor));
                checkpointed.push(name.clone());
            }
        }
        let mut rewritten = Vec::new();
        for (index, retained) in self.dead_letters.iter().enumerate() {
            if doomed.contains(&retained.segment) {
                frames.extend_from_slice(&encode_dead_letter(&retained.letter)?);
                rewritten.push(index);
            }
        }
        if !frames.is_empty() {
            self.write_batch(&frames)?;
        }
        let location = self.active_key;
        for name in checkpointed {
            if let Some(state) = self.webhooks.get_mut(&name) {
                state.cursor_segment = Some(location);
            }
        }
        for index in rewritten {
            self.dead_letters[index].segment = location;
        }
        for key in &doomed {
            let Some(segment) = self.segments.get(key) else {
                continue;
            };
            match fs::remove_file(&segment.path) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(error),
            }
            self.disk_bytes -= segment.bytes;
            self.segments.remove(key);
        }
        if self.sync {
            sync_dir(&self.dir)?;
        }
        // A webhook with nothing pending and no events left on disk needs no cursor: every
        // later event of it has a greater seq.
        let segments = &self.segments;
        self.webhooks.retain(|name, state| {
            !state.pending.is_empty() || segments.values().any(|segment| segment.webhooks.contains(name))
        });
        for state in self.webhooks.values_mut() {
            if state.cursor_segment.is_some_and(|key| doomed.contains(&key)) {
                state.cursor_segment = None;
            }
        }
        Ok(())
    }
}

/// What reading one segment found.
struct SegmentOutcome {
    file_bytes: u64,
    /// The end of the last intact record.
    valid_bytes: u64,
    /// False when the file could not be opened or read (as opposed to holding bad records).
    readable: bool,
    webhooks: BTreeSet<String>,
}

/// Recovery state accumulated over the segments, in order.
struct Scan {
    dead_letters_max: usize,
    /// Greater than every seq seen in any record, so no new event reuses one.
    seq_floor: u64,
    last_event_seq: u64,
    /// Per webhook: cursor, and the segment of the ack that set it.
    cursors: BTreeMap<String, (u64, u64)>,
    /// Per webhook: events not acknowledged by the acks read so far. Acks mostly follow their
    /// events closely, so this stays near the true pending set instead of holding every event.
    events: BTreeMap<String, VecDeque<PendingEvent>>,
    /// By number: a rewritten copy replaces its original; only the newest are kept.
    dead_letters: BTreeMap<u64, (DeadLetter, u64)>,
    /// Greater than every dead letter number seen, retained or not, so none is reused (a reused
    /// number would merge two dead letters if `dead_letters_max` grows).
    dead_letter_floor: u64,
}

impl Scan {
    fn new(dead_letters_max: usize) -> Scan {
        Scan {
            dead_letters_max,
            seq_floor: FIRST_SEQ,
            last_event_seq: 0,
            cursors: BTreeMap::new(),
            events: BTreeMap::new(),
            dead_letters: BTreeMap::new(),
            dead_letter_floor: 1,
        }
    }

    fn segment(&mut self, first: u64, end: u64, path: &Path, skipped: &mut Skipped) -> SegmentOutcome {
        let mut outcome = SegmentOutcome {
            file_bytes: 0,
            valid_bytes: 0,
            readable: true,
            webhooks: BTreeSet::new(),
        };
        let mut reader = match SegmentReader::open(path) {
            Ok(reader) => reader,
            Err(error) => {
                skipped.push(format!(
                    "{}: cannot open: {error}; whole file skipped",
                    path.display()
                ));
                outcome.readable = false;
                outcome.file_bytes = fs::metadata(path).map_or(0, |metadata| metadata.len());
                return outcome;
            }
        };
        outcome.file_bytes = reader.file_bytes;
        loop {
            let (offset, why) = match reader.next() {
                Ok(Step::End) => break,
                Ok(Step::Record { offset }) => {
                    match decode(&reader.payload) {
                        Ok(record) => {
                            if let Err(why) = self.record(record, first, end, &mut outcome.webhooks) {
                                skipped.push(format!("{}: offset {offset}: {why}", path.display()));
                            }
                        }
                        // The frame is intact (its checksum matched), so the next one can be
                        // trusted; only this record is skipped.
                        Err(why) => skipped.push(format!(
                            "{}: offset {offset}: record skipped: {why}",
                            path.display()
                        )),
                    }
                    outcome.valid_bytes = reader.offset;
                    continue;
                }
                Ok(Step::Damaged { offset, why }) => (offset, why),
                Err(error) => {
                    outcome.readable = false;
                    (reader.offset, format!("read error: {error}"))
                }
            };
            skipped.push(format!(
                "{}: offset {offset}: {why}; {} bytes skipped",
                path.display(),
                outcome.file_bytes - offset
            ));
            break;
        }
        outcome
    }

    /// Applies one intact record of segment `[first, end)`; an error says why it was skipped.
    fn record(
        &mut self,
        record: Record,
        first: u64,
        end: u64,
        webhooks: &mut BTreeSet<String>,
    ) -> Result<(), String> {
        match record {
            Record::Event(event) => {
                let seq = event.seq;
                // Seqs grow through the journal and stay within their segment's name range; one
                // that does not can only come from a foreign or renamed file.
                if seq < first || seq >= end || seq <= self.last_event_seq {
                    return Err(format!("event seq {seq} out of order, skipped"));
                }
                self.last_event_seq = seq;
                self.seq_floor = self.seq_floor.max(seq.saturating_add(1));
                if !webhooks.contains(&event.webhook) {
                    webhooks.insert(event.webhook.clone());
                }
                let cursor = self.cursors.get(&event.webhook).map_or(0, |(cursor, _)| *cursor);
                if seq > cursor {
                    self.events
                        .entry(event.webhook.clone())
                        .or_default()
                        .push_back(event);
                }
            }
            Record::Ack { webhook, seq } => {
                self.seq_floor = self.seq_floor.max(seq.saturating_add(1));
                if let Some(events) = self.events.get_mut(&webhook) {
                    while events.front().is_some_and(|event| event.seq <= seq) {
                        events.pop_front();
                    }
                }
                let cursor = self.cursors.entry(webhook).or_insert((0, first));
                // `>=`: a checkpoint copy in a later segment is the one that will live longest.
                if seq >= cursor.0 {
                    *cursor = (seq, first);
                }
            }
            Record::DeadLetter(letter) => {
                self.seq_floor = self.seq_floor.max(letter.seq.saturating_add(1));
                self.dead_letter_floor = self.dead_letter_floor.max(letter.number.saturating_add(1));
                self.dead_letters.insert(letter.number, (letter, first));
                while self.dead_letters.len() > self.dead_letters_max {
                    self.dead_letters.pop_first();
                }
            }
        }
        Ok(())
    }

    /// The per-webhook state and the pending events in seq order.
    fn webhooks(&mut self) -> (BTreeMap<String, WebhookState>, Vec<PendingEvent>) {
        let mut states: BTreeMap<String, WebhookState> = BTreeMap::new();
        for (name, (cursor, segment)) in &self.cursors {
            let state = states.entry(name.clone()).or_default();
            state.cursor = *cursor;
            state.cursor_segment = Some(*segment);
        }
        let mut pending = Vec::new();
        for (name, events) in std::mem::take(&mut self.events) {
            let cursor = self.cursors.get(&name).map_or(0, |(cursor, _)| *cursor);
            let state = states.entry(name).or_default();
            for event in events.into_iter().filter(|event| event.seq > cursor) {
                state.pending.push_back(event.seq);
                pending.push(event);
            }
        }
        pending.sort_by_key(|event| event.seq);
        (states, pending)
    }
}

#[derive(Default)]
struct Skipped {
    lines: Vec<String>,
    more: usize,
}

impl Skipped {
    fn push(&mut self, line: String) {
        if self.lines.len() < SKIPPED_LINES_MAX {
            self.lines.push(line);
        } else {
            self.more += 1;
        }
    }

    fn finish(mut self) -> Vec<String> {
        if self.more > 0 {
            self.lines
                .push(format!("... and {} more skipped journal lines", self.more));
        }
        self.lines
    }
}

enum Step {
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
struct SegmentReader {
    reader: BufReader<File>,
    /// The end of the last record read.
    offset: u64,
    file_bytes: u64,
    payload: Vec<u8>,
}

impl SegmentReader {
    fn open(path: &Path) -> io::Result<SegmentReader> {
        let file = File::open(path)?;
        let file_bytes = file.metadata()?.len();
        Ok(SegmentReader {
            reader: BufReader::with_capacity(64 * 1024, file),
            offset: 0,
            file_bytes,
            payload: Vec::new(),
        })
    }

    fn next(&mut self) -> io::Result<Step> {
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

enum Record {
    Event(PendingEvent),
    Ack { webhook: String, seq: u64 },
    DeadLetter(DeadLetter),
}

fn decode(payload: &[u8]) -> Result<Record, &'static str> {
    let mut decoder = Decoder { rest: payload };
    let record = match decoder.u8().ok_or("empty record")? {
        TYPE_EVENT => decoder.event().map(Record::Event),
        TYPE_ACK => decoder.ack(),
        TYPE_DEAD_LETTER => decoder.dead_letter().map(Record::DeadLetter),
        _ => return Err("unknown record type"),
    };
    match record {
        Some(record) if decoder.rest.is_empty() => Ok(record),
        Some(_) => Err("trailing bytes in record"),
        None => Err("malformed record"),
    }
}

/// Reads fields off a checksummed payload; every length is checked against what is left.
struct Decoder<'a> {
    rest: &'a [u8],
}

impl<'a> Decoder<'a> {
    fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        if count > self.rest.len() {
            return None;
        }
        let (taken, rest) = self.rest.split_at(count);
        self.rest = rest;
        Some(taken)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|bytes| bytes[0])
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|bytes| u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|bytes| u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let count = self.u32()? as usize;
        self.take(count)
    }

    fn string(&mut self) -> Option<String> {
        std::str::from_utf8(self.bytes()?).ok().map(str::to_string)
    }

    fn event(&mut self) -> Option<PendingEvent> {
        Some(PendingEvent {
            seq: self.u64()?,
            webhook: self.string()?,
            event_id: self.string()?,
            kind: self.string()?,
            unix_micros: self.u64()?,
            delivery_id: self.string()?,
            body: self.bytes()?.to_vec(),
        })
    }

    fn ack(&mut self) -> Option<Record> {
        Some(Record::Ack {
            webhook: self.string()?,
            seq: self.u64()?,
        })
    }

    fn dead_letter(&mut self) -> Option<DeadLetter> {
        Some(DeadLetter {
            number: self.u64()?,
            webhook: self.string()?,
            seq: self.u64()?,
            event_id: self.string()?,
            delivery_id: self.string()?,
            attempts: self.u32()?,
            last_error: self.string()?,
            unix_micros: self.u64()?,
            kind: self.string()?,
            body: self.bytes()?.to_vec(),
        })
    }
}

/// Payload bytes of length-prefixed fields.
fn field_bytes(lengths: &[usize]) -> usize {
    lengths.iter().map(|length| 4 + length).sum()
}

fn check_payload(payload_bytes: usize) -> io::Result<()> {
    if payload_bytes > RECORD_PAYLOAD_BYTES_MAX {
        return Err(invalid(format!(
            "journal record of {payload_bytes} bytes over {RECORD_PAYLOAD_BYTES_MAX}"
        )));
    }
    Ok(())
}

/// A framed record; `payload_bytes` must be what `write` produces (the caller checked it is
/// within the cap, so every length fits a u32).
fn encode(payload_bytes: usize, write: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + payload_bytes);
    out.extend_from_slice(&[0; HEADER_BYTES]);
    write(&mut out);
    debug_assert_eq!(out.len(), HEADER_BYTES + payload_bytes, "payload size formula");
    let length = (out.len() - HEADER_BYTES) as u32;
    let checksum = crc32c(&out[HEADER_BYTES..]);
    out[0..4].copy_from_slice(&length.to_le_bytes());
    out[4..8].copy_from_slice(&checksum.to_le_bytes());
    out
}

fn encode_ack(webhook: &str, seq: u64) -> Vec<u8> {
    // Webhook names come from the validated configuration and are short; cut defensively so the
    // record stays within the cap whatever the caller passes.
    let webhook = truncate_utf8(webhook, RECORD_PAYLOAD_BYTES_MAX / 2);
    encode(1 + field_bytes(&[webhook.len()]) + 8, |out| {
        out.push(TYPE_ACK);
        put_str(out, webhook);
        put_u64(out, seq);
    })
}

fn encode_dead_letter(letter: &DeadLetter) -> io::Result<Vec<u8>> {
    let strings = [
        letter.webhook.len(),
        letter.event_id.len(),
        letter.delivery_id.len(),
        letter.last_error.len(),
        letter.kind.len(),
        letter.body.len(),
    ];
    let payload_bytes = 1 + 8 + 8 + 4 + 8 + field_bytes(&strings);
    check_payload(payload_bytes)?;
    Ok(encode(payload_bytes, |out| {
        out.push(TYPE_DEAD_LETTER);
        put_u64(out, letter.number);
        put_str(out, &letter.webhook);
        put_u64(out, letter.seq);
        put_str(out, &letter.event_id);
        put_str(out, &letter.delivery_id);
        put_u32(out, letter.attempts);
        put_str(out, &letter.last_error);
        put_u64(out, letter.unix_micros);
        put_str(out, &letter.kind);
        put_bytes(out, &letter.body);
    }))
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, bytes.len() as u32);
    out.extend_from_slice(bytes);
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    put_bytes(out, text.as_bytes());
}

fn truncate_utf8(text: &str, bytes_max: usize) -> &str {
    if text.len() <= bytes_max {
        return text;
    }
    let mut end = bytes_max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78): detects every burst of up to 32 bits,
/// so any single damaged byte in a payload is caught.
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut index = 0;
    while index < 256 {
        let mut crc = index as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[index] = crc;
        index += 1;
    }
    table
};

fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc = CRC32C_TABLE[((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

fn segment_name(first: u64) -> String {
    format!(
        "{SEGMENT_PREFIX}{first:0width$}{SEGMENT_SUFFIX}",
        width = SEGMENT_DIGITS
    )
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(SEGMENT_PREFIX)?.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_DIGITS || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Creates (or, after a rotation that failed at its directory sync, reuses: nothing was written
/// to it then) the segment starting at `first`, and makes its directory entry durable.
fn create_segment(dir: &Path, first: u64, sync: bool) -> io::Result<(PathBuf, File)> {
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
fn create_dir(dir: &Path, sync: bool) -> io::Result<()> {
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

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::random_bytes;

    use crate::test_support::{Rng, TempDir};

    fn limits(segment_bytes_max: u64, total_bytes_max: u64, dead_letters_max: usize) -> JournalLimits {
        JournalLimits {
            segment_bytes_max,
            total_bytes_max,
            dead_letters_max,
        }
    }

    fn open(dir: &Path, limits: JournalLimits) -> (Journal, Recovery) {
        Journal::open(dir, false, limits).unwrap()
    }

    /// The event the tests append as number `n` (fixed width, so every record has one size).
    fn event(webhook: &str, n: u64) -> PendingEvent {
        PendingEvent {
            seq: 0,
            webhook: webhook.to_string(),
            event_id: format!("ev-{n:04}"),
            kind: "manifest.push".to_string(),
            unix_micros: 1_700_000_000_000_000 + n,
            delivery_id: format!("dl-{webhook}-{n:04}"),
            body: format!("{{\"n\":{n:04}}}").into_bytes(),
        }
    }

    /// Appends test event `n`; returns it with its seq.
    fn append(journal: &mut Journal, webhook: &str, n: u64) -> PendingEvent {
        let mut event = event(webhook, n);
        let appended = journal
            .append_event(
                webhook,
                &event.event_id,
                &event.kind,
                event.unix_micros,
                &event.delivery_id,
                &event.body,
            )
            .unwrap();
        assert!(
            appended.dropped.is_empty(),
            "unexpected drops: {:?}",
            appended.dropped
        );
        event.seq = appended.seq;
        event
    }

    fn ids(events: &[PendingEvent]) -> Vec<(String, String)> {
        events
            .iter()
            .map(|event| (event.webhook.clone(), event.event_id.clone()))
            .collect()
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .and_then(parse_segment_name)
                    .is_some()
            })
            .collect();
        files.sort();
        files
    }

    /// Writes `files` (name, bytes) into a fresh directory.
    fn directory_with(files: &[(String, Vec<u8>)]) -> TempDir {
        let dir = TempDir::new("journal-test");
        fs::create_dir_all(dir.path()).unwrap();
        for (name, bytes) in files {
            fs::write(dir.path().join(name), bytes).unwrap();
        }
        dir
    }

    fn read_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
        segment_files(dir)
            .into_iter()
            .map(|path| {
                let name = path.file_name().unwrap().to_str().unwrap().to_string();
                (name, fs::read(&path).unwrap())
            })
            .collect()
    }

    /// After damage: one more append, and a reopen sees everything expected plus it.
    fn append_then_reopen(dir: &Path, mut journal: Journal, expected: &[PendingEvent]) {
        let added = append(&mut journal, "after", 9999);
        drop(journal);
        let (_, recovery) = open(dir, JournalLimits::default());
        let mut want = expected.to_vec();
        want.push(added);
        assert_eq!(recovery.pending, want);
        assert!(recovery.skipped.is_empty(), "{:?}", recovery.skipped);
    }

    #[test]
    fn crc32c_matches_the_check_value() {
        // RFC 3720 appendix B.4 / the CRC catalogue's check value for "123456789".
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(segment_name(42), "segment-00000000000000000042.log");
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_segment_name("segment-99999999999999999999.log"), None);
        assert_eq!(parse_segment_name("segment-42.log"), None);
        assert_eq!(parse_segment_name("segment-0000000000000000004x.log"), None);
    }

    #[test]
    fn limits_are_checked() {
        let dir = TempDir::new("journal-test");
        assert!(Journal::open(dir.path(), false, limits(0, 100, 1)).is_err());
        assert!(Journal::open(dir.path(), false, limits(100, 199, 1)).is_err());
        assert!(Journal::open(dir.path(), false, limits(100, 200, 0)).is_ok());
    }

    #[test]
    fn round_trip_with_interleaved_acks() {
        let dir = TempDir::new("journal-test");
        let (mut journal, recovery) = Journal::open(dir.path(), true, JournalLimits::default()).unwrap();
        assert!(recovery.pending.is_empty() && recovery.dead_letters.is_empty());
        assert!(recovery.skipped.is_empty());
        let mut model: Vec<PendingEvent> = Vec::new();
        for n in 0..30 {
            let webhook = ["alpha", "beta", "gamma"][(n % 3) as usize];
            model.push(append(&mut journal, webhook, n));
            if n % 4 == 3 {
                // Alpha acknowledges everything so far; beta only its oldest.
                let last_alpha = model
                    .iter()
                    .rev()
                    .find(|event| event.webhook == "alpha")
                    .unwrap()
                    .seq;
                journal.append_ack("alpha", last_alpha).unwrap();
                model.retain(|event| event.webhook != "alpha");
                if let Some(first_beta) = model.iter().find(|event| event.webhook == "beta") {
                    let seq = first_beta.seq;
                    assert_eq!(journal.append_ack("beta", seq).unwrap(), 1);
                    model.retain(|event| event.seq != seq);
                }
            }
        }
        for webhook in ["alpha", "beta", "gamma"] {
            let count = model.iter().filter(|event| event.webhook == webhook).count();
            assert_eq!(journal.pending(webhook), count, "{webhook}");
        }
        let last_seq = model.last().unwrap().seq;
        drop(journal);

        let (mut journal, recovery) = Journal::open(dir.path(), true, JournalLimits::default()).unwrap();
        // Every field, in seq order (so in order per webhook).
        assert_eq!(recovery.pending, model);
        assert!(recovery.skipped.is_empty(), "{:?}", recovery.skipped);
        assert_eq!(journal.pending_total(), model.len());
        let next = append(&mut journal, "alpha", 100);
        assert!(next.seq > last_seq);
        model.push(next);
        drop(journal);
        let (_, recovery) = Journal::open(dir.path(), true, JournalLimits::default()).unwrap();
        assert_eq!(recovery.pending, model);
    }

    #[test]
    fn acks_are_validated_and_idempotent() {
        let dir = TempDir::new("journal-test");
        let (mut journal, _) = open(dir.path(), JournalLimits::default());
        let first = append(&mut journal, "a", 1);
        let error = journal.append_ack("a", first.seq + 1).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        let bytes = journal.disk_bytes();
        assert_eq!(journal.append_ack("b", first.seq).unwrap(), 0);
        assert_eq!(
            journal.disk_bytes(),
            bytes,
            "an ack releasing nothing writes nothing"
        );
        assert_eq!(journal.append_ack("a", first.seq).unwrap(), 1);
        assert_eq!(journal.append_ack("a", first.seq).unwrap(), 0);
        assert_eq!(journal.pending("a"), 0);
    }

    #[test]
    fn rotation_and_compaction_keep_segments_with_pending_events() {
        let dir = TempDir::new("journal-test");
        // Each test record is about 100 bytes: two per segment.
        let limits = limits(250, 1 << 20, 10);
        let (mut journal, _) = open(dir.path(), limits);
        let mut alpha = Vec::new();
        for n in 0..6 {
            alpha.push(append(&mut journal, "alpha", n));
        }
        let beta = append(&mut journal, "beta", 6);
        for n in 7..12 {
            alpha.push(append(&mut journal, "alpha", n));
        }
        let beta_segment = *journal.segments.range(..=beta.seq).next_back().unwrap().0;
        assert!(journal.segment_count() >= 6);
        assert_eq!(segment_files(dir.path()).len(), journal.segment_count());
        let released = journal.append_ack("alpha", alpha.last().unwrap().seq).unwrap();
        assert_eq!(released, 11);
        journal.compact().unwrap();
        // Left: beta's segment and the active one.
        let keys: Vec<u64> = journal.segments.keys().copied().collect();
        assert_eq!(keys, vec![beta_segment, journal.active_key]);
        assert_eq!(segment_files(dir.path()).len(), 2);
        let on_disk: u64 = segment_files(dir.path())
            .iter()
            .map(|path| fs::metadata(path).unwrap().len())
            .sum();
        assert_eq!(journal.disk_bytes(), on_disk);
        drop(journal);
        let (mut journal, recovery) = open(dir.path(), limits);
        // Alpha's acknowledged events share beta's segment, and must stay acknowledged.
        assert_eq!(recovery.pending, vec![beta.clone()]);
        journal.append_ack("beta", beta.seq).unwrap();
        journal.compact().unwrap();
        assert_eq!(journal.segment_count(), 1);
        drop(journal);
        let (_, recovery) = open(dir.path(), limits);
        assert!(recovery.pending.is_empty());
    }

    #[test]
    fn cursors_outlive_the_segment_of_their_ack() {
        let dir = TempDir::new("journal-test");
        let limits = limits(1000, 1 << 20, 10);
        // With fsync on: rotation and compaction also sync the directory.
        let (mut journal, _) = Journal::open(dir.path(), true, limits).unwrap();
        let filler = vec![b'x'; 800];
        // S1: a1, b1 (b1 stays pending). S2: a2 (large), then the ack of alpha up to a2.
        let a1 = append(&mut journal, "alpha", 1);
        let b1 = append(&mut journal, "beta", 2);
        let a2 = journal
            .append_event("alpha", "ev-a2", "push", 3, "dl-a2", &filler)
            .unwrap()
            .seq;
        assert_eq!(journal.segment_count(), 2);
        assert_eq!(journal.append_ack("alpha", a2).unwrap(), 2);
        // S3: a3. Its rotation compacts S2 away (nothing pending there), which held alpha's only
        // ack, while a1 (acknowledged) remains in S1 next to pending b1.
        let a3 = journal
            .append_event("alpha", "ev-a3", "push", 4, "dl-a3", &filler)
            .unwrap()
            .seq;
        assert_eq!(journal.segment_count(), 2, "S2 was compacted");
        assert!(journal.segments.contains_key(&1));
        drop(journal);
        let (_, recovery) = open(dir.path(), limits);
        let pending: Vec<(String, u64)> = recovery
            .pending
            .iter()
            .map(|event| (event.webhook.clone(), event.seq))
            .collect();
        assert_eq!(
            pending,
            vec![("beta".to_string(), b1.seq), ("alpha".to_string(), a3)]
        );
        assert!(a1.seq < b1.seq);
    }

    fn dead_letter(journal: &mut Journal, event: &PendingEvent, attempts: u32) -> u64 {
        journal
            .append_dead_letter(NewDeadLetter {
                webhook: &event.webhook,
                seq: event.seq,
                event_id: &event.event_id,
                delivery_id: &event.delivery_id,
                attempts,
                last_error: "503 Service Unavailable",
                unix_micros: event.unix_micros + 1,
                kind: &event.kind,
                body: &event.body,
            })
            .unwrap()
    }

    #[test]
    fn dead_letters_survive_reopen_and_compaction_bounded() {
        let dir = TempDir::new("journal-test");
        let limits = limits(250, 1 << 20, 3);
        let (mut journal, _) = open(dir.path(), limits);
        // S1 gets DL1 and is fully done with; beta's pending event then pins the segment holding
        // DL2, so compaction rewrites DL1 after DL2: the number keeps their order.
        let a1 = append(&mut journal, "alpha", 1);
        assert_eq!(dead_letter(&mut journal, &a1, 5), 1);
        let beta = append(&mut journal, "beta", 2);
        let a2 = append(&mut journal, "alpha", 3);
        assert_eq!(dead_letter(&mut journal, &a2, 5), 2);
        for n in 4..10 {
            let event = append(&mut journal, "alpha", n);
            journal.append_ack("alpha", event.seq).unwrap();
        }
        journal.compact().unwrap();
        let numbers: Vec<u64> = journal.dead_letters().map(|letter| letter.number).collect();
        assert_eq!(numbers, vec![1, 2]);
        drop(journal);
        let (mut journal, recovery) = open(dir.path(), limits);
        assert_eq!(
            ids(&recovery.pending),
            vec![("beta".to_string(), beta.event_id.clone())]
        );
        let numbers: Vec<u64> = recovery.dead_letters.iter().map(|letter| letter.number).collect();
        assert_eq!(numbers, vec![1, 2]);
        let first = &recovery.dead_letters[0];
        assert_eq!(
            first,
            &DeadLetter {
                number: 1,
                webhook: "alpha".to_string(),
                seq: a1.seq,
                event_id: a1.event_id.clone(),
                delivery_id: a1.delivery_id.clone(),
                attempts: 5,
                last_error: "503 Service Unavailable".to_string(),
                unix_micros: a1.unix_micros + 1,
                kind: a1.kind.clone(),
                body: a1.body.clone(),
            }
        );
        // Beyond the bound, the oldest go, in memory and after a reopen.
        for n in 20..24 {
            let event = append(&mut journal, "gamma", n);
            dead_letter(&mut journal, &event, 7);
        }
        let numbers: Vec<u64> = journal.dead_letters().map(|letter| letter.number).collect();
        assert_eq!(numbers, vec![4, 5, 6]);
        assert_eq!(
            journal.pending("gamma"),
            0,
            "a dead letter acknowledges its event"
        );
        for n in 30..40 {
            let event = append(&mut journal, "alpha", n);
            journal.append_ack("alpha", event.seq).unwrap();
        }
        journal.compact().unwrap();
        drop(journal);
        let (_, recovery) = open(dir.path(), limits);
        let numbers: Vec<u64> = recovery.dead_letters.iter().map(|letter| letter.number).collect();
        assert_eq!(numbers, vec![4, 5, 6]);
        assert_eq!(ids(&recovery.pending), vec![("beta".to_string(), beta.event_id)]);
        let long = "é".repeat(LAST_ERROR_BYTES_MAX);
        assert_eq!(
            truncate_utf8(&long, LAST_ERROR_BYTES_MAX).len(),
            LAST_ERROR_BYTES_MAX
        );
        assert_eq!(truncate_utf8(&long, 5), "éé");
    }

    #[test]
    fn dead_letter_numbers_are_never_reused() {
        let dir = TempDir::new("journal-test");
        let (mut journal, _) = open(dir.path(), limits(1 << 20, 2 << 20, 0));
        for n in 0..3 {
            let event = append(&mut journal, "a", n);
            dead_letter(&mut journal, &event, 1);
        }
        assert_eq!(journal.dead_letters().count(), 0);
        drop(journal);
        // Keeping none, then more: the records on disk come back, and new numbers follow them.
        let (mut journal, recovery) = open(dir.path(), limits(1 << 20, 2 << 20, 10));
        assert_eq!(recovery.dead_letters.len(), 3);
        let event = append(&mut journal, "a", 9);
        assert_eq!(dead_letter(&mut journal, &event, 1), 4);
    }

    #[test]
    fn disk_bound_drops_the_oldest_pending_events() {
        let dir = TempDir::new("journal-test");
        let limits = limits(512, 2048, 10);
        let (mut journal, _) = open(dir.path(), limits);
        let mut appended = Vec::new();
        let mut dropped = Vec::new();
        for n in 0..80 {
            let mut event = event(["a", "b"][(n % 2) as usize], n);
            let result = journal
                .append_event(
                    &event.webhook,
                    &event.event_id,
                    &event.kind,
                    event.unix_micros,
                    &event.delivery_id,
                    &event.body,
                )
                .unwrap();
            event.seq = result.seq;
            appended.push(event);
            dropped.extend(result.dropped);
            assert!(
                journal.disk_bytes() <= limits.total_bytes_max,
                "{}",
                journal.disk_bytes()
            );
        }
        assert!(!dropped.is_empty());
        // Reported oldest first, with their ids, and each is older than anything still pending.
        let seqs: Vec<u64> = dropped.iter().map(|drop| drop.seq).collect();
        assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]));
        for drop in &dropped {
            let original = appended.iter().find(|event| event.seq == drop.seq).unwrap();
            assert_eq!(
                (&drop.webhook, &drop.event_id),
                (&original.webhook, &original.event_id)
            );
        }
        let remaining: Vec<PendingEvent> = appended
            .iter()
            .filter(|event| !seqs.contains(&event.seq))
            .cloned()
            .collect();
        assert!(seqs.last().unwrap() < &remaining[0].seq);
        assert_eq!(journal.pending_total(), remaining.len());
        assert_eq!(
            journal.depths(),
            vec![
                (
                    "a".to_string(),
                    remaining.iter().filter(|event| event.webhook == "a").count()
                ),
                (
                    "b".to_string(),
                    remaining.iter().filter(|event| event.webhook == "b").count()
                ),
            ]
        );
        drop(journal);
        let (_, recovery) = open(dir.path(), limits);
        assert_eq!(recovery.pending, remaining);
    }

    #[test]
    fn oversized_records_are_refused() {
        let dir = TempDir::new("journal-test");
        let (mut journal, _) = open(dir.path(), JournalLimits::default());
        let body = vec![0u8; RECORD_PAYLOAD_BYTES_MAX];
        let error = journal.append_event("a", "e", "push", 1, "d", &body).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        append(&mut journal, "a", 1);
    }

    /// One segment of events (no acks): the damage cases below know every record boundary.
    fn single_segment(count: u64) -> (TempDir, Vec<PendingEvent>, Vec<u64>) {
        let dir = TempDir::new("journal-test");
        let (mut journal, _) = open(dir.path(), JournalLimits::default());
        let mut events = Vec::new();
        let mut ends = Vec::new();
        for n in 0..count {
            events.push(append(&mut journal, ["a", "b", "c"][(n % 3) as usize], n));
            ends.push(journal.disk_bytes());
        }
        assert_eq!(journal.segment_count(), 1);
        (dir, events, ends)
    }

    #[test]
    fn torn_tail_at_every_offset_of_the_last_record() {
        let (base, events, ends) = single_segment(6);
        let files = read_files(base.path());
        let (name, bytes) = &files[0];
        let last_start = ends[ends.len() - 2];
        for cut in last_start..=ends[ends.len() - 1] {
            let dir = directory_with(&[(name.clone(), bytes[..cut as usize].to_vec())]);
            let (journal, recovery) = open(dir.path(), JournalLimits::default());
            let intact = if cut == *ends.last().unwrap() {
                events.len()
            } else {
                events.len() - 1
            };
            assert_eq!(recovery.pending, events[..intact], "cut at {cut}");
            if intact == events.len() || cut == last_start {
                assert!(
                    recovery.skipped.is_empty(),
                    "cut at {cut}: {:?}",
                    recovery.skipped
                );
            } else {
                assert_eq!(recovery.skipped.len(), 1, "cut at {cut}");
                let line = &recovery.skipped[0];
                assert!(
                    line.contains(name) && line.contains(&format!("offset {last_start}:")),
                    "{line}"
                );
            }
            // Cut back to the last intact record, so appends continue cleanly.
            let kept = if intact == events.len() { cut } else { last_start };
            assert_eq!(fs::metadata(dir.path().join(name)).unwrap().len(), kept);
            assert_eq!(journal.disk_bytes(), kept);
            append_then_reopen(dir.path(), journal, &events[..intact]);
        }
    }

    #[test]
    fn flipped_bytes_keep_every_record_before_the_damage() {
        let (base, events, ends) = single_segment(8);
        let files = read_files(base.path());
        let (name, bytes) = &files[0];
        let mut rng = Rng(0x5EED_0001);
        let last_start = ends[ends.len() - 2];
        // Every byte of the last record, then random offsets anywhere.
        let mut offsets: Vec<u64> = (last_start..ends[ends.len() - 1]).collect();
        offsets.extend((0..150).map(|_| rng.below(bytes.len() as u64)));
        for offset in offsets {
            let mut damaged = bytes.clone();
            damaged[offset as usize] ^= 1 + rng.below(255) as u8;
            let dir = directory_with(&[(name.clone(), damaged)]);
            let (journal, recovery) = open(dir.path(), JournalLimits::default());
            let hit = ends.iter().position(|&end| offset < end).unwrap();
            assert_eq!(recovery.pending, events[..hit], "byte {offset} (record {hit})");
            assert_eq!(recovery.skipped.len(), 1, "byte {offset}");
            let start = if hit == 0 { 0 } else { ends[hit - 1] };
            assert!(
                recovery.skipped[0].contains(&format!("offset {start}:")),
                "{:?}",
                recovery.skipped
            );
            append_then_reopen(dir.path(), journal, &events[..hit]);
        }
    }

    #[test]
    fn damage_in_an_older_segment_keeps_later_segments() {
        let dir = TempDir::new("journal-test");
        let limits = limits(260, 1 << 20, 10);
        let (mut journal, _) = open(dir.path(), limits);
        let mut events = Vec::new();
        for n in 0..12 {
            events.push(append(&mut journal, "a", n));
        }
        let record_bytes = fs::metadata(&segment_files(dir.path())[0]).unwrap().len() / 3;
        assert_eq!(journal.segment_count(), 4, "{:?}", segment_files(dir.path()));
        drop(journal);
        // Corrupt the second record of the first segment (three per segment).
        let first = segment_files(dir.path())[0].clone();
        let mut bytes = fs::read(&first).unwrap();
        let length = bytes.len();
        bytes[record_bytes as usize + 20] ^= 0x55;
        fs::write(&first, &bytes).unwrap();
        let (journal, recovery) = open(dir.path(), limits);
        let mut want = vec![events[0].clone()];
        want.extend_from_slice(&events[3..]);
        assert_eq!(recovery.pending, want);
        assert_eq!(recovery.skipped.len(), 1);
        assert!(recovery.skipped[0].contains("segment-00000000000000000001.log"));
        assert!(recovery.skipped[0].contains(&format!("{} bytes skipped", 2 * record_bytes)));
        // Only the last segment is cut back; an older one is left for compaction.
        assert_eq!(fs::metadata(&first).unwrap().len() as usize, length);
        drop(journal);
        let (mut journal, _) = open(dir.path(), limits);
        journal.append_ack("a", events[0].seq).unwrap();
        journal.compact().unwrap();
        assert!(
            !first.exists(),
            "the damaged segment goes once nothing in it is pending"
        );
        append_then_reopen(dir.path(), journal, &events[3..]);
    }

    #[test]
    fn garbage_files_and_huge_lengths_neither_panic_nor_allocate() {
        let mut random = vec![0u8; 64 * 1024];
        random_bytes(&mut random);
        let mut huge = Vec::new();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 12]);
        // Under the cap but far past the end of the file: refused before allocating.
        let mut long = Vec::new();
        long.extend_from_slice(&(15u32 << 20).to_le_bytes());
        long.extend_from_slice(&[1; 40]);
        let zeros = vec![0u8; 4096];
        let dir = directory_with(&[
            (segment_name(1), random),
            (segment_name(5), huge),
            (segment_name(7), zeros),
            (segment_name(9), long),
            ("stray.txt".to_string(), b"hello".to_vec()),
        ]);
        let (mut journal, recovery) = open(dir.path(), JournalLimits::default());
        assert!(recovery.pending.is_empty());
        assert_eq!(recovery.skipped.len(), 5, "{:?}", recovery.skipped);
        assert!(recovery.skipped.iter().any(|line| line.contains("stray.txt")));
        assert!(
            recovery
                .skipped
                .iter()
                .any(|line| line.contains("record length 4294967295 over"))
        );
        assert!(
            recovery
                .skipped
                .iter()
                .any(|line| line.contains("zero record length"))
        );
        assert!(
            recovery
                .skipped
                .iter()
                .any(|line| line.contains("torn record (length 15728640"))
        );
        assert_eq!(fs::metadata(dir.path().join(segment_name(9))).unwrap().len(), 0);
        let event = append(&mut journal, "a", 1);
        assert!(event.seq >= 9);
        // The garbage segments hold nothing pending and go at the first compaction.
        journal.compact().unwrap();
        assert_eq!(segment_files(dir.path()).len(), 1);
        drop(journal);
        let (_, recovery) = open(dir.path(), JournalLimits::default());
        assert_eq!(recovery.pending, vec![event]);

        // Random payloads whose checksum happens to match must not panic the decoder either.
        let mut rng = Rng(7);
        for _ in 0..20_000 {
            let length = rng.below(64) as usize;
            let mut payload: Vec<u8> = (0..length).map(|_| rng.next() as u8).collect();
            if let Some(first) = payload.first_mut() {
                *first = [TYPE_EVENT, TYPE_ACK, TYPE_DEAD_LETTER][rng.below(3) as usize];
            }
            let _ = decode(&payload);
        }
    }

    #[test]
    fn skipped_lines_are_bounded() {
        let files: Vec<(String, Vec<u8>)> = (0..150).map(|n| (format!("junk-{n}"), Vec::new())).collect();
        let dir = directory_with(&files);
        let (_, recovery) = open(dir.path(), JournalLimits::default());
        assert_eq!(recovery.skipped.len(), SKIPPED_LINES_MAX + 1);
        assert!(recovery.skipped.last().unwrap().contains("50 more"));
    }

    #[test]
    fn forget_webhook_acknowledges_all_its_events() {
        let dir = TempDir::new("journal-test");
        let (mut journal, _) = open(dir.path(), JournalLimits::default());
        let mut kept = Vec::new();
        for n in 0..5 {
            append(&mut journal, "gone", n);
            if n % 2 == 0 {
                kept.push(append(&mut journal, "kept", 100 + n));
            }
        }
        assert_eq!(journal.forget_webhook("gone").unwrap(), 5);
        assert_eq!(journal.forget_webhook("gone").unwrap(), 0);
        assert_eq!(journal.forget_webhook("never").unwrap(), 0);
        assert_eq!(journal.pending("gone"), 0);
        drop(journal);
        let (_, recovery) = open(dir.path(), JournalLimits::default());
        assert_eq!(recovery.pending, kept);
    }

    /// Random appends, acks, dead letters, forgets, compactions, reopens and torn tails against a
    /// model of what is pending; every case replays from its seed.
    #[test]
    fn simulation_matches_a_model() {
        for seed in 1..=12u64 {
            let dir = TempDir::new("journal-test");
            let limits = limits(400, 1600, 4);
            let (mut journal, _) = open(dir.path(), limits);
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut model: Vec<PendingEvent> = Vec::new();
            let webhooks = ["a", "b", "c"];
            for step in 0..400u64 {
                let webhook = webhooks[rng.below(3) as usize];
                match rng.below(20) {
                    0..=8 => {
                        let mut event = event(webhook, step);
                        let appended = journal
                            .append_event(
                                webhook,
                                &event.event_id,
                                &event.kind,
                                event.unix_micros,
                                &event.delivery_id,
                                &event.body,
                            )
                            .unwrap();
                        let before = model.len();
                        model.retain(|event| !appended.dropped.iter().any(|drop| drop.seq == event.seq));
                        assert_eq!(model.len(), before - appended.dropped.len(), "seed {seed}");
                        event.seq = appended.seq;
                        model.push(event);
                    }
                    9..=13 => {
                        let heads: Vec<u64> = model
                            .iter()
                            .filter(|event| event.webhook == webhook)
                            .map(|event| event.seq)
                            .collect();
                        if let Some(&seq) = heads.get(rng.below(3) as usize) {
                            let released = journal.append_ack(webhook, seq).unwrap();
                            let before = model.len();
                            model.retain(|event| event.webhook != webhook || event.seq > seq);
                            assert_eq!(released, before - model.len(), "seed {seed}");
                        }
                    }
                    14 => {
                        if let Some(head) = model.iter().find(|event| event.webhook == webhook).cloned() {
                            dead_letter(&mut journal, &head, 3);
                            model.retain(|event| event.seq != head.seq);
                        }
                    }
                    15 => {
                        let count = model.iter().filter(|event| event.webhook == webhook).count();
                        assert_eq!(journal.forget_webhook(webhook).unwrap(), count, "seed {seed}");
                        model.retain(|event| event.webhook != webhook);
                    }
                    16 => journal.compact().unwrap(),
                    17 => {
                        drop(journal);
                        let (reopened, recovery) = open(dir.path(), limits);
                        assert_eq!(recovery.pending, model, "seed {seed} step {step}");
                        assert!(recovery.skipped.is_empty(), "seed {seed}: {:?}", recovery.skipped);
                        assert!(recovery.dead_letters.len() <= 4);
                        journal = reopened;
                    }
                    _ => {
                        // Power loss mid-append: a torn half record at the tail.
                        drop(journal);
                        let last = segment_files(dir.path()).pop().unwrap();
                        let frame = encode_ack("torn", 1);
                        let mut file = OpenOptions::new().append(true).open(&last).unwrap();
                        file.write_all(&frame[..frame.len() / 2]).unwrap();
                        drop(file);
                        let (reopened, recovery) = open(dir.path(), limits);
                        assert_eq!(recovery.pending, model, "seed {seed} step {step}");
                        assert_eq!(recovery.skipped.len(), 1, "seed {seed}");
                        journal = reopened;
                    }
                }
                for name in webhooks {
                    let count = model.iter().filter(|event| event.webhook == name).count();
                    assert_eq!(journal.pending(name), count, "seed {seed} step {step}");
                }
                assert!(
                    journal.disk_bytes() <= limits.total_bytes_max + 1000,
                    "seed {seed}"
                );
            }
        }
    }
}
