//! Start-up recovery, the body of `Journal::open`: reads every segment in name order, skips and
//! reports what is damaged or foreign, rebuilds the cursors, pending events and retained dead
//! letters, and cuts a torn tail off the last segment so appends continue on intact records.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{self, OpenOptions};
use std::io;
use std::path::Path;

use super::marks::RetainedMark;
use super::record::{Record, decode};
use super::segment::{Segment, SegmentReader, Step, create_segment, parse_segment_name};
use super::{
    DeadLetter, Journal, JournalLimits, PendingEvent, Recovery, RetainedDeadLetter, SKIPPED_LINES_MAX,
    WebhookState,
};

const FIRST_SEQ: u64 = 1;

/// Reads `dir` (which exists; the limits are checked) into a journal and what it found.
pub(super) fn recover(
    dir: &Path,
    sync_to_disk: bool,
    limits: JournalLimits,
) -> io::Result<(Journal, Recovery)> {
    let mut skipped = Skipped::default();
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_name() == super::reserve::RESERVE_FILE {
            // The reserve (`reserve`), not a segment: nothing to read, nothing to report.
            continue;
        }
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
                marks: outcome.marks,
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
            segments.insert(
                first,
                Segment {
                    path,
                    bytes: 0,
                    webhooks: BTreeSet::new(),
                    marks: BTreeSet::new(),
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
    let marks: BTreeMap<String, RetainedMark> = std::mem::take(&mut scan.marks)
        .into_iter()
        .map(|(name, (disabled, segment))| (name, RetainedMark { disabled, segment }))
        .collect();
    let recovery = Recovery {
        pending,
        dead_letters: dead_letters
            .iter()
            .map(|retained| retained.letter.clone())
            .collect(),
        disabled: marks.values().filter_map(|mark| mark.disabled.clone()).collect(),
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
        marks,
        disk_bytes,
        // Segments acknowledged before the restart go at the first append.
        compact_due: true,
        rotate_due: false,
        unreported_drops: Vec::new(),
        reserve_held: false,
        reserve_change: None,
        reserve_wait: false,
        #[cfg(test)]
        full_disk_writes: 0,
    };
    Ok((journal, recovery))
}

/// What reading one segment found.
struct SegmentOutcome {
    file_bytes: u64,
    /// The end of the last intact record.
    valid_bytes: u64,
    /// False when the file could not be opened or read (as opposed to holding bad records).
    readable: bool,
    webhooks: BTreeSet<String>,
    marks: BTreeSet<String>,
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
    /// Per webhook: its latest disabled state (later records win) and the segment holding it.
    marks: BTreeMap<String, (Option<super::DisabledWebhook>, u64)>,
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
            marks: BTreeMap::new(),
        }
    }

    fn segment(&mut self, first: u64, end: u64, path: &Path, skipped: &mut Skipped) -> SegmentOutcome {
        let mut outcome = SegmentOutcome {
            file_bytes: 0,
            valid_bytes: 0,
            readable: true,
            webhooks: BTreeSet::new(),
            marks: BTreeSet::new(),
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
                            if let Err(why) = self.record(record, first, end, &mut outcome) {
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
        outcome: &mut SegmentOutcome,
    ) -> Result<(), String> {
        let webhooks = &mut outcome.webhooks;
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
            Record::WebhookState { webhook, disabled } => {
                outcome.marks.insert(webhook.clone());
                self.marks.insert(webhook, (disabled, first));
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

#[cfg(test)]
mod tests {
    use super::super::record::{TYPE_ACK, TYPE_DEAD_LETTER, TYPE_EVENT, decode};
    use super::super::segment::segment_name;
    use super::super::testing::{append, dead_letter, limits, open, segment_files};
    use super::*;
    use crate::storage::random_bytes;
    use crate::test_support::{Rng, TempDir};

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
}
