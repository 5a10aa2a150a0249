//! One helper thread for the file-system calls whose cost grows with a
//! file's size and that nothing waits for: removing what storage moved into
//! `_trash` (a cancelled, expired or duplicate 1 GiB upload takes half a
//! second to unlink here; truncating it in steps still stalls up to 150 ms
//! a step on this file system). The loop hands over paths and never waits;
//! the thread touches nothing else, and nothing but `_trash`, which only it
//! and the start-up cleanup remove from. nginx's thread pools and libuv's
//! file-system pool do the same for the same reason.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::mpsc::{self, SyncSender, TrySendError};

/// Paths in flight to the thread; more wait in the loop's backlog.
const QUEUE_LENGTH: usize = 1024;

pub struct FileWorker {
    sender: Option<SyncSender<PathBuf>>,
    /// Paths the full queue did not take yet.
    backlog: VecDeque<PathBuf>,
}

impl FileWorker {
    /// Starts the thread. Without one (the system refused), removals are
    /// left in `_trash` for the next start, with a warning.
    pub fn start() -> FileWorker {
        let (sender, receiver) = mpsc::sync_channel::<PathBuf>(QUEUE_LENGTH);
        let spawned = std::thread::Builder::new()
            .name("angos-remove".to_string())
            .spawn(move || {
                for path in receiver {
                    let removed = if path.is_dir() {
                        std::fs::remove_dir_all(&path)
                    } else {
                        std::fs::remove_file(&path)
                    };
                    if let Err(error) = removed
                        && error.kind() != std::io::ErrorKind::NotFound
                    {
                        log::warn!(target: "angos::storage", "removing {}: {error}", path.display());
                    }
                }
            });
        match spawned {
            Ok(_) => FileWorker {
                sender: Some(sender),
                backlog: VecDeque::new(),
            },
            Err(error) => {
                log::warn!(
                    target: "angos::storage",
                    "cannot start the file removal thread ({error}); discarded uploads stay in _trash until the next start"
                );
                FileWorker {
                    sender: None,
                    backlog: VecDeque::new(),
                }
            }
        }
    }

    /// Queues `paths` for removal, without waiting.
    pub fn remove(&mut self, paths: Vec<PathBuf>) {
        if self.sender.is_none() {
            return;
        }
        self.backlog.extend(paths);
        self.pump();
    }

    /// Hands the backlog to the thread as far as its queue takes it.
    pub fn pump(&mut self) {
        let Some(sender) = &self.sender else {
            return;
        };
        while let Some(path) = self.backlog.pop_front() {
            match sender.try_send(path) {
                Ok(()) => {}
                Err(TrySendError::Full(path)) => {
                    self.backlog.push_front(path);
                    return;
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.sender = None;
                    self.backlog.clear();
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
