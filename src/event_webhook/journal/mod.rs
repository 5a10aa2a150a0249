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
//! - `W` webhook state: webhook str, disabled u8 (1, or 0 for enabled again), unix micros u64,
//!   url str, reason str. The latest record of a webhook is its state; compaction rewrites it
//!   while it matters (see `marks`).
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
//!
//! # A full disk
//!
//! Beside the segments, the file `reserve` holds `reserve_bytes` of written zeros. A write that
//! finds the disk full deletes it and runs once more, so the journal keeps recording on a disk
//! something else filled; the reserve is written again at a later compaction or start.
//!
//! # Where the code is
//!
//! This file holds the public types and the `Journal` API (appends, acks, dead letters,
//! compaction, the counters). The rest of `impl Journal` and its helpers live beside it, by
//! what they own: `record` (the payload format and its checksum), `segment` (segment files:
//! names, durable creation, reading records back, appends and rotation), `recovery` (what
//! `open` reads back at start-up), `compaction` (deleting segments and the drop policy) and
//! `reserve` (the space held back for a full disk).

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

mod compaction;
mod marks;
mod record;
mod recovery;
mod reserve;
mod segment;

use record::{EventFields, HEADER_BYTES, check_payload, encode_ack, encode_dead_letter, truncate_utf8};
use segment::{Segment, create_dir};

pub use reserve::{RESERVE_BYTES_DEFAULT, ReserveChange};

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
    /// Disk held back for the journal alone (`reserve`): released when a write finds the disk
    /// full, so events are still recorded. 0: none.
    pub reserve_bytes: u64,
}

impl Default for JournalLimits {
    fn default() -> JournalLimits {
        JournalLimits {
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
            total_bytes_max: TOTAL_BYTES_MAX_DEFAULT,
            dead_letters_max: DEAD_LETTERS_MAX_DEFAULT,
            reserve_bytes: RESERVE_BYTES_DEFAULT,
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

/// A webhook its receiver disabled (`410 Gone`), kept across restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisabledWebhook {
    pub webhook: String,
    /// The URL that answered 410: configured with another one, the webhook is enabled again.
    pub url: String,
    pub unix_micros: u64,
    pub reason: String,
}

/// What `open` found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Unacknowledged events, in seq order (so in order per webhook).
    pub pending: Vec<PendingEvent>,
    /// The retained dead letters, oldest first.
    pub dead_letters: Vec<DeadLetter>,
    /// The webhooks disabled when the journal was last written, by name.
    pub disabled: Vec<DisabledWebhook>,
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
    /// The latest disabled-state record per webhook still on disk.
    marks: BTreeMap<String, marks::RetainedMark>,
    disk_bytes: u64,
    /// A rotation happened since the last compaction.
    compact_due: bool,
    /// A write failed: its tail may be torn or not what the disk holds, so the next write goes to
    /// a fresh segment.
    rotate_due: bool,
    /// Drops not yet handed to a caller (an `append_event` failed after dropping).
    unreported_drops: Vec<DroppedEvent>,
    /// The reserve file is on disk, whole (`reserve`).
    reserve_held: bool,
    /// What happened to the reserve since the caller last asked.
    reserve_change: Option<ReserveChange>,
    /// The reserve was released since the last compaction, which must not write it again.
    reserve_wait: bool,
    /// Tests: this many coming record writes fail as on a full disk.
    #[cfg(test)]
    full_disk_writes: u32,
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
        let (mut journal, recovery) = recovery::recover(dir, sync_to_disk, limits)?;
        // Written now if missing; a disk too full for it is no reason not to start (the caller
        // sees `reserve_held`), and making it is no news to log.
        journal.restore_reserve();
        journal.reserve_change = None;
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
        self.with_reserve(|journal| {
            journal.append_event_once(webhook, event_id, kind, unix_micros, delivery_id, body)
        })
    }

    fn append_event_once(
        &mut self,
        webhook: &str,
        event_id: &str,
        kind: &str,
        unix_micros: u64,
        delivery_id: &str,
        body: &[u8],
    ) -> io::Result<Appended> {
        let event = EventFields {
            webhook,
            event_id,
            kind,
            unix_micros,
            delivery_id,
            body,
        };
        let payload_bytes = event.payload_bytes();
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
        let frame = event.encode(seq);
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
        self.with_reserve(|journal| journal.append_ack_once(webhook, seq))
    }

    fn append_ack_once(&mut self, webhook: &str, seq: u64) -> io::Result<usize> {
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
        self.with_reserve(|journal| journal.append_dead_letter_once(new))
    }

    fn append_dead_letter_once(&mut self, new: NewDeadLetter<'_>) -> io::Result<u64> {
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
    /// at the first write after a rotation. Then writes the reserve again if a full disk took it
    /// and there is room now.
    pub fn compact(&mut self) -> io::Result<()> {
        self.with_reserve(Journal::compact_once)?;
        self.restore_reserve_after_compaction();
        Ok(())
    }

    fn compact_once(&mut self) -> io::Result<()> {
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
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

#[cfg(test)]
mod testing;

#[cfg(test)]
mod tests {
    use super::record::encode_ack;
    use super::testing::{append, dead_letter, event, limits, open, segment_files};
    use super::*;
    use crate::test_support::{Rng, TempDir};
    use std::fs::OpenOptions;
    use std::io::Write;

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
