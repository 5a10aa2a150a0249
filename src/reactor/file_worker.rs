//! One helper thread for the file-system calls whose cost grows with a
//! file's size: removing what storage moved into `_trash` (a cancelled,
//! expired or duplicate 1 GiB upload takes half a second to unlink here;
//! truncating it in steps still stalls up to 150 ms a step on this file
//! system), and, with `sync_to_disk`, the fsync of an upload's data before
//! its request goes on (a second for 1 GiB); and the scrub's hashing of
//! stored content (`maintenance::scrub`), paced to its configured rate, a
//! piece at a time so a sync never waits behind it for more than one piece.
//! The loop hands over jobs and never waits: a removal needs no answer; a
//! sync reports its waiter back, and a check its verdict, through a channel
//! and wakes the loop (`mio::Waker`). The thread reads and removes only
//! those files. nginx's thread pools and libuv's file-system pool do the
//! same for the same reason.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::time::Duration;

use crate::app::Waiter;
use crate::clock::Clock;
use crate::maintenance::scrub::{Hashing, Verification, VerifyJob};

enum Job {
    Remove(PathBuf),
    /// fsync the file, then report the waiter.
    Sync(PathBuf, Waiter),
    /// Hash the file at no more than `bytes_per_sec`, then report the verdict.
    Verify(VerifyJob, u64),
}

/// The longest the thread sleeps to keep a scrub to its rate before it
/// looks again (it wakes at once for any other job).
const PACE_WAIT_MAX: Duration = Duration::from_millis(250);

/// Unused rate a scrub may catch up on at once (after the thread did other work).
const PACE_CREDIT_MS: u64 = 100;

/// Jobs in flight to the thread; more wait in the loop's backlog.
const QUEUE_LENGTH: usize = 1024;

pub struct FileWorker {
    sender: Option<SyncSender<Job>>,
    /// Jobs the full queue did not take yet.
    backlog: VecDeque<Job>,
    /// Waiters whose file is synced.
    synced: Option<Receiver<Waiter>>,
    /// Synced here because there is no thread.
    synced_inline: VecDeque<Waiter>,
    /// Verdicts of the scrub's checks.
    verified: Option<Receiver<Verification>>,
}

impl FileWorker {
    /// Starts the thread; `waker` wakes the loop when a sync is done.
    /// Without a thread (the system refused), removals are left in `_trash`
    /// for the next start and syncs run on the loop, with a warning.
    pub fn start(waker: mio::Waker) -> FileWorker {
        let (sender, receiver) = mpsc::sync_channel::<Job>(QUEUE_LENGTH);
        let (done_sender, done) = mpsc::channel::<Waiter>();
        let (verified_sender, verified) = mpsc::channel::<Verification>();
        let waker = Arc::new(waker);
        let spawned = std::thread::Builder::new()
            .name("angos-files".to_string())
            .spawn(move || {
                let mut thread = Thread {
                    receiver,
                    done: done_sender,
                    verified: verified_sender,
                    waker,
                    checks: VecDeque::new(),
                    hashing: None,
                    clock: crate::clock::SystemClock::new(),
                    paced_since_ms: 0,
                    paced_bytes: 0,
                };
                thread.run();
            });
        match spawned {
            Ok(_) => FileWorker {
                sender: Some(sender),
                backlog: VecDeque::new(),
                synced: Some(done),
                synced_inline: VecDeque::new(),
                verified: Some(verified),
            },
            Err(error) => {
                log::warn!(
                    target: "angos::storage",
                    "cannot start the file thread ({error}); discarded uploads stay in _trash until the next start, and syncs run on the loop"
                );
                FileWorker {
                    sender: None,
                    backlog: VecDeque::new(),
                    synced: None,
                    synced_inline: VecDeque::new(),
                    verified: None,
                }
            }
        }
    }

    /// Syncs `path` off the loop; `poll_synced` gives `waiter` back once done.
    pub fn sync(&mut self, path: PathBuf, waiter: Waiter) {
        if self.sender.is_none() {
            sync(&path);
            self.synced_inline.push_back(waiter);
            return;
        }
        self.backlog.push_back(Job::Sync(path, waiter));
        self.pump();
    }

    /// A waiter whose file is synced.
    pub fn poll_synced(&mut self) -> Option<Waiter> {
        if let Some(waiter) = self.synced_inline.pop_front() {
            return Some(waiter);
        }
        self.synced.as_ref()?.try_recv().ok()
    }

    /// Whether a sync finished without the thread (the loop must look now).
    pub fn has_synced_inline(&self) -> bool {
        !self.synced_inline.is_empty()
    }

    /// Queues a scrub check of `job` at no more than `bytes_per_sec`;
    /// `false` without a thread (hashing is never done on the loop).
    pub fn verify(&mut self, job: VerifyJob, bytes_per_sec: u64) -> bool {
        if self.sender.is_none() {
            return false;
        }
        self.backlog.push_back(Job::Verify(job, bytes_per_sec));
        self.pump();
        true
    }

    /// A scrub verdict, if one came.
    pub fn poll_verified(&mut self) -> Option<Verification> {
        self.verified.as_ref()?.try_recv().ok()
    }

    /// Queues `paths` for removal, without waiting.
    pub fn remove(&mut self, paths: Vec<PathBuf>) {
        if self.sender.is_none() {
            return;
        }
        self.backlog.extend(paths.into_iter().map(Job::Remove));
        self.pump();
    }

    /// Hands the backlog to the thread as far as its queue takes it.
    pub fn pump(&mut self) {
        let Some(sender) = &self.sender else {
            return;
        };
        while let Some(job) = self.backlog.pop_front() {
            match sender.try_send(job) {
                Ok(()) => {}
                Err(TrySendError::Full(job)) => {
                    self.backlog.push_front(job);
                    return;
                }
                Err(TrySendError::Disconnected(job)) => {
                    // The thread is gone: do the syncs here; removals wait for the next start.
                    self.sender = None;
                    for job in std::iter::once(job).chain(self.backlog.drain(..)) {
                        if let Job::Sync(path, waiter) = job {
                            sync(&path);
                            self.synced_inline.push_back(waiter);
                        }
                    }
                    return;
                }
            }
        }
    }

    /// Whether paths wait for room in the queue.
    pub fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }
}

/// The thread's side: jobs as they come, and between them the scrub's
/// hashing, a piece at a time, paced to its rate.
struct Thread {
    receiver: Receiver<Job>,
    done: mpsc::Sender<Waiter>,
    verified: mpsc::Sender<Verification>,
    waker: Arc<mio::Waker>,
    checks: VecDeque<(VerifyJob, u64)>,
    hashing: Option<(Hashing, u64)>,
    clock: crate::clock::SystemClock,
    /// Hashing paced since this instant, and bytes hashed since then.
    paced_since_ms: u64,
    paced_bytes: u64,
}

impl Thread {
    fn run(&mut self) {
        loop {
            let busy = self.hashing.is_some() || !self.checks.is_empty();
            let job = if !busy {
                match self.receiver.recv() {
                    Ok(job) => Some(job),
                    Err(_) => return,
                }
            } else {
                let wait = self.pace_wait();
                let received = if wait.is_zero() {
                    self.receiver.try_recv().map_err(|error| match error {
                        TryRecvError::Empty => RecvTimeoutError::Timeout,
                        TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
                    })
                } else {
                    self.receiver.recv_timeout(wait)
                };
                match received {
                    Ok(job) => Some(job),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            };
            match job {
                Some(Job::Remove(path)) => remove(&path),
                Some(Job::Sync(path, waiter)) => {
                    sync(&path);
                    if self.done.send(waiter).is_err() {
                        return;
                    }
                    let _ = self.waker.wake();
                }
                Some(Job::Verify(job, rate)) => self.checks.push_back((job, rate)),
                None => {
                    if !self.pace_wait().is_zero() {
                        continue;
                    }
                    if let Some(verification) = self.hash_a_piece() {
                        if self.verified.send(verification).is_err() {
                            return;
                        }
                        let _ = self.waker.wake();
                    }
                }
            }
        }
    }

    /// How long to wait before the next piece keeps the rate.
    fn pace_wait(&mut self) -> Duration {
        let Some(rate) = self
            .hashing
            .as_ref()
            .map(|(_, rate)| *rate)
            .or_else(|| self.checks.front().map(|(_, rate)| *rate))
        else {
            return Duration::ZERO;
        };
        let now = self.clock.now_ms();
        let due_ms = self.paced_bytes.saturating_mul(1000) / rate.max(1);
        // Time spent idle is no credit for a burst later: at most 100 ms of it.
        let earliest_start = now.saturating_sub(due_ms + PACE_CREDIT_MS);
        self.paced_since_ms = self.paced_since_ms.max(earliest_start);
        let elapsed_ms = now.saturating_sub(self.paced_since_ms);
        Duration::from_millis(due_ms.saturating_sub(elapsed_ms)).min(PACE_WAIT_MAX)
    }

    /// Hashes the next piece of the current check (opening the next one
    /// when none is under way); its verdict when it ends.
    fn hash_a_piece(&mut self) -> Option<Verification> {
        if self.hashing.is_none() {
            let (job, rate) = self.checks.pop_front()?;
            match Hashing::open(&job) {
                Ok(hashing) => self.hashing = Some((hashing, rate)),
                Err(verdict) => return Some(verdict),
            }
        }
        let (hashing, _) = self.hashing.as_mut()?;
        match hashing.advance() {
            Ok(read) => {
                self.paced_bytes += read as u64;
                None
            }
            Err(verdict) => {
                self.hashing = None;
                Some(verdict)
            }
        }
    }
}

fn remove(path: &Path) {
    let removed = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    if let Err(error) = removed
        && error.kind() != std::io::ErrorKind::NotFound
    {
        log::warn!(target: "angos::storage", "removing {}: {error}", path.display());
    }
}

/// Errors are left to the commit, whose own fsync reports them.
fn sync(path: &Path) {
    if let Err(error) = std::fs::File::open(path).and_then(|file| file.sync_all()) {
        log::debug!(target: "angos::storage", "syncing {}: {error}", path.display());
    }
}
