//! Helpers shared by the journal's unit tests: limits, the fixed-size test event, appends that
//! must not drop, dead-lettering, the segment files of a directory.

use std::fs;
use std::path::{Path, PathBuf};

use super::segment::parse_segment_name;
use super::{Journal, JournalLimits, NewDeadLetter, PendingEvent, Recovery};

pub(super) fn limits(segment_bytes_max: u64, total_bytes_max: u64, dead_letters_max: usize) -> JournalLimits {
    JournalLimits {
        segment_bytes_max,
        total_bytes_max,
        dead_letters_max,
        // Most tests reopen often and look at the directory: no reserve unless one asks.
        reserve_bytes: 0,
    }
}

pub(super) fn open(dir: &Path, limits: JournalLimits) -> (Journal, Recovery) {
    Journal::open(dir, false, limits).unwrap()
}

/// The event the tests append as number `n` (fixed width, so every record has one size).
pub(super) fn event(webhook: &str, n: u64) -> PendingEvent {
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
pub(super) fn append(journal: &mut Journal, webhook: &str, n: u64) -> PendingEvent {
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

pub(super) fn segment_files(dir: &Path) -> Vec<PathBuf> {
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

pub(super) fn dead_letter(journal: &mut Journal, event: &PendingEvent, attempts: u32) -> u64 {
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
