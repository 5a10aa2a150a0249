//! Reclaiming disk: deleting segments that hold no pending event, after rewriting into the active
//! segment the dead letters, cursors and disabled states that must outlive them, and the disk
//! bound's drop policy
//! (see the `journal` module docs), which empties the oldest segment when nothing else is left.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::ops::Bound;

use super::record::{Record, decode, encode_ack, encode_dead_letter};
use super::segment::{SegmentReader, Step, sync_dir};
use super::{DroppedEvent, Journal};

impl Journal {
    /// Seqs a segment may hold: `[key, end)`.
    fn segment_end(&self, key: u64) -> u64 {
        self.segments
            .range((Bound::Excluded(key), Bound::Unbounded))
            .next()
            .map_or(self.next_seq, |(next, _)| *next)
    }

    pub(super) fn has_pending(&self, key: u64) -> bool {
        let end = self.segment_end(key);
        self.webhooks.values().any(|state| {
            let index = state.pending.partition_point(|&seq| seq < key);
            state.pending.get(index).is_some_and(|&seq| seq < end)
        })
    }

    /// Makes room for a record of `frame_bytes` under `total_bytes_max` (module docs, drop policy).
    pub(super) fn enforce_bound(&mut self, frame_bytes: u64) -> io::Result<()> {
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
    /// segment, what they hold that must outlive them: retained dead letters, the cursors of
    /// webhooks whose events remain in other segments, and disabled states (`marks`).
    pub(super) fn delete_segments(&mut self, doomed: &[u64]) -> io::Result<()> {
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
        let marks = self.marks_to_keep(&doomed)?;
        frames.extend_from_slice(&marks.frames);
        if !frames.is_empty() {
            self.write_batch(&frames)?;
        }
        let location = self.active_key;
        self.marks_kept(marks.names, location, &doomed);
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

#[cfg(test)]
mod tests {
    use super::super::record::truncate_utf8;
    use super::super::testing::{append, dead_letter, event, limits, open, segment_files};
    use super::super::{DeadLetter, Journal, LAST_ERROR_BYTES_MAX, PendingEvent};
    use crate::test_support::TempDir;
    use std::fs;

    fn ids(events: &[PendingEvent]) -> Vec<(String, String)> {
        events
            .iter()
            .map(|event| (event.webhook.clone(), event.event_id.clone()))
            .collect()
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
}
