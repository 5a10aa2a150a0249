//! Disabled webhooks in the journal: a `W` record each time a webhook is disabled (its receiver
//! answered `410 Gone`) or enabled again; the latest record of a webhook is its state. A record
//! must outlive the segment it was written to while it still says something: a disabled state
//! always, an enabled one while an older record of that webhook (which would otherwise win at the
//! next start) is still on disk. Compaction rewrites those into the active segment.

use std::collections::BTreeSet;
use std::io;

use super::record::encode_webhook_state;
use super::{DisabledWebhook, Journal};

/// The latest state record of a webhook, and the segment holding it.
pub(super) struct RetainedMark {
    /// `None`: enabled again.
    pub(super) disabled: Option<DisabledWebhook>,
    pub(super) segment: u64,
}

/// What compaction must write again before deleting segments.
pub(super) struct KeptMarks {
    pub(super) frames: Vec<u8>,
    pub(super) names: Vec<String>,
}

impl Journal {
    /// Records that `disabled.webhook` is disabled; durable (with `sync_to_disk`) on return.
    pub fn append_disabled(&mut self, disabled: &DisabledWebhook) -> io::Result<()> {
        self.append_webhook_state(&disabled.webhook, Some(disabled.clone()))
    }

    /// Records that a webhook is enabled again. Writes nothing (and returns `false`) when no
    /// record of it is on disk: it is enabled already.
    pub fn append_enabled(&mut self, webhook: &str) -> io::Result<bool> {
        if !self.marks.contains_key(webhook) {
            return Ok(false);
        }
        self.append_webhook_state(webhook, None)?;
        Ok(true)
    }

    /// The webhooks recorded as disabled, by name.
    pub fn disabled_webhooks(&self) -> impl Iterator<Item = &DisabledWebhook> {
        self.marks.values().filter_map(|mark| mark.disabled.as_ref())
    }

    fn append_webhook_state(&mut self, webhook: &str, disabled: Option<DisabledWebhook>) -> io::Result<()> {
        self.with_reserve(|journal| journal.append_webhook_state_once(webhook, disabled.clone()))
    }

    fn append_webhook_state_once(
        &mut self,
        webhook: &str,
        disabled: Option<DisabledWebhook>,
    ) -> io::Result<()> {
        let frame = encode_webhook_state(webhook, disabled.as_ref())?;
        // Rotation and compaction first: a rewrite of this webhook's older record lands before
        // the new one, never after it.
        self.prepare_write(frame.len() as u64)?;
        self.write_active(&frame)?;
        let segment = self.active_key;
        if let Some(active) = self.segments.get_mut(&segment) {
            active.marks.insert(webhook.to_string());
        }
        self.marks
            .insert(webhook.to_string(), RetainedMark { disabled, segment });
        Ok(())
    }

    /// The state records in `doomed` segments that must be written again (module docs).
    pub(super) fn marks_to_keep(&self, doomed: &BTreeSet<u64>) -> io::Result<KeptMarks> {
        let mut kept = KeptMarks {
            frames: Vec::new(),
            names: Vec::new(),
        };
        for (name, mark) in &self.marks {
            if !doomed.contains(&mark.segment) {
                continue;
            }
            let older_stays = self
                .segments
                .iter()
                .any(|(key, segment)| !doomed.contains(key) && segment.marks.contains(name));
            if mark.disabled.is_some() || older_stays {
                kept.frames
                    .extend_from_slice(&encode_webhook_state(name, mark.disabled.as_ref())?);
                kept.names.push(name.clone());
            }
        }
        Ok(kept)
    }

    /// After `kept` was written to segment `location`: those records live there now, and the
    /// other records of `doomed` segments are gone (their webhooks are enabled with no record).
    pub(super) fn marks_kept(&mut self, kept: Vec<String>, location: u64, doomed: &BTreeSet<u64>) {
        for name in kept {
            if let Some(mark) = self.marks.get_mut(&name) {
                mark.segment = location;
            }
            if let Some(segment) = self.segments.get_mut(&location) {
                segment.marks.insert(name);
            }
        }
        self.marks.retain(|_, mark| !doomed.contains(&mark.segment));
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{append, limits, open, segment_files};
    use super::*;
    use crate::test_support::TempDir;
    use std::fs::OpenOptions;
    use std::io::Write;

    fn disabled(webhook: &str, n: u64) -> DisabledWebhook {
        DisabledWebhook {
            webhook: webhook.to_string(),
            url: format!("http://127.0.0.1:9/{webhook}"),
            unix_micros: 1_700_000_000_000_000 + n,
            reason: "it answered 410 Gone".to_string(),
        }
    }

    fn names(recovered: &[DisabledWebhook]) -> Vec<&str> {
        recovered.iter().map(|state| state.webhook.as_str()).collect()
    }

    #[test]
    fn disabled_states_survive_a_restart_and_enabling_ends_them() {
        let dir = TempDir::new("journal-marks");
        let limits = limits(1 << 20, 4 << 20, 10);
        let (mut journal, recovery) = open(dir.path(), limits);
        assert!(recovery.disabled.is_empty());
        assert!(!journal.append_enabled("a").unwrap(), "nothing to enable");
        journal.append_disabled(&disabled("a", 1)).unwrap();
        journal.append_disabled(&disabled("b", 2)).unwrap();
        drop(journal);

        let (mut journal, recovery) = open(dir.path(), limits);
        assert_eq!(recovery.disabled, vec![disabled("a", 1), disabled("b", 2)]);
        assert!(recovery.skipped.is_empty(), "{:?}", recovery.skipped);
        assert!(journal.append_enabled("a").unwrap());
        assert_eq!(
            names(&journal.disabled_webhooks().cloned().collect::<Vec<_>>()),
            ["b"]
        );
        drop(journal);

        let (_, recovery) = open(dir.path(), limits);
        assert_eq!(recovery.disabled, vec![disabled("b", 2)]);
    }

    #[test]
    fn compaction_keeps_what_matters_and_nothing_older_comes_back() {
        let dir = TempDir::new("journal-marks");
        // About two 100-byte records per segment: every few writes rotate.
        let limits = limits(250, 1 << 20, 10);
        let (mut journal, _) = open(dir.path(), limits);
        // "old" is disabled, then enabled in a later segment; "kept" stays disabled.
        journal.append_disabled(&disabled("old", 1)).unwrap();
        journal.append_disabled(&disabled("kept", 2)).unwrap();
        // A pending event holds the segment with "old"'s disabled record on disk.
        let pinned = append(&mut journal, "pin", 0);
        for n in 1..6 {
            let event = append(&mut journal, "churn", n);
            journal.append_ack("churn", event.seq).unwrap();
        }
        journal.append_enabled("old").unwrap();
        for n in 6..30 {
            let event = append(&mut journal, "churn", n);
            journal.append_ack("churn", event.seq).unwrap();
            journal.compact().unwrap();
        }
        assert!(
            journal.segment_count() < 8,
            "{} segments",
            journal.segment_count()
        );
        drop(journal);
        let (mut journal, recovery) = open(dir.path(), limits);
        assert_eq!(
            recovery.disabled,
            vec![disabled("kept", 2)],
            "the older record must not win"
        );
        assert_eq!(recovery.pending, vec![pinned.clone()]);

        // Once the older record goes too, nothing of "old" needs to stay.
        journal.append_ack("pin", pinned.seq).unwrap();
        for n in 30..40 {
            let event = append(&mut journal, "churn", n);
            journal.append_ack("churn", event.seq).unwrap();
            journal.compact().unwrap();
        }
        assert!(!journal.marks.contains_key("old"));
        assert_eq!(
            names(&journal.disabled_webhooks().cloned().collect::<Vec<_>>()),
            ["kept"]
        );
        drop(journal);
        let (_, recovery) = open(dir.path(), limits);
        assert_eq!(recovery.disabled, vec![disabled("kept", 2)]);
    }

    #[test]
    fn a_torn_state_record_is_skipped_and_the_previous_state_holds() {
        let dir = TempDir::new("journal-marks");
        let limits = limits(1 << 20, 4 << 20, 10);
        let (mut journal, _) = open(dir.path(), limits);
        journal.append_disabled(&disabled("a", 1)).unwrap();
        drop(journal);
        let frame = encode_webhook_state("a", None).unwrap();
        let last = segment_files(dir.path()).pop().unwrap();
        let mut file = OpenOptions::new().append(true).open(&last).unwrap();
        file.write_all(&frame[..frame.len() - 3]).unwrap();
        drop(file);
        let (_, recovery) = open(dir.path(), limits);
        assert_eq!(recovery.skipped.len(), 1);
        assert_eq!(recovery.disabled, vec![disabled("a", 1)]);
    }
}
