//! One helper thread for the file-system calls whose cost grows with a
//! file's size: removing what storage moved into `_trash` (a cancelled,
//! expired or duplicate 1 GiB upload takes half a second to unlink here;
//! truncating it in steps still stalls up to 150 ms a step on this file
//! system), and, with `sync_to_disk`, the fsync of an upload's data before
//! its request goes on (a second for 1 GiB). The loop hands over jobs and
//! never waits: a removal needs no answer; a sync reports its waiter back
//! through a channel and wakes the loop (`mio::Waker`). The thread reads
//! and removes only those files. nginx's thread pools and libuv's
//! file-system pool do the same for the same reason.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};

use crate::app::Waiter;

enum Job {
    Remove(PathBuf),
    /// fsync the file, then report the waiter.
    Sync(PathBuf, Waiter),
}

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
}

impl FileWorker {
    /// Starts the thread; `waker` wakes the loop when a sync is done.
    /// Without a thread (the system refused), removals are left in `_trash`
    /// for the next start and syncs run on the loop, with a warning.
    pub fn start(waker: mio::Waker) -> FileWorker {
        let (sender, receiver) = mpsc::sync_channel::<Job>(QUEUE_LENGTH);
        let (done_sender, done) = mpsc::channel::<Waiter>();
        let waker = Arc::new(waker);
        let spawned = std::thread::Builder::new()
            .name("angos-files".to_string())
            .spawn(move || {
                for job in receiver {
                    match job {
                        Job::Remove(path) => remove(&path),
                        Job::Sync(path, waiter) => {
                            sync(&path);
                            if done_sender.send(waiter).is_err() {
                                return;
                            }
                            let _ = waker.wake();
                        }
                    }
                }
            });
        match spawned {
            Ok(_) => FileWorker {
                sender: Some(sender),
                backlog: VecDeque::new(),
                synced: Some(done),
                synced_inline: VecDeque::new(),
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
