//! The storage-maintenance jobs driven from outside (`/v2/_angos/gc`,
//! `prune`, `scrub`), and making stored files old without waiting: what the
//! garbage-collection, retention, scrub and full-disk tests share.

use super::{Json, Server};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

/// Sets the modification time of every file under `root`'s `blobs/` and
/// `repositories/` to `ago` in the past, as if pushed then: older than a
/// test's `gc_grace_secs`, or than a retention rule's days.
pub fn age_store(root: &Path, ago: Duration) {
    let then = SystemTime::now() - ago;
    for top in ["blobs", "repositories"] {
        let mut pending = vec![root.join(top)];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                if entry.file_type().unwrap().is_dir() {
                    pending.push(entry.path());
                } else {
                    let file = std::fs::File::options().write(true).open(entry.path()).unwrap();
                    file.set_modified(then).unwrap();
                }
            }
        }
    }
}

/// Starts the admin job `job` (`gc`, `prune`, `scrub`) with `query` (say
/// `mode=dry-run`, or empty) and waits until it and its removals are done;
/// the finished run (`last`).
pub fn run_job(server: &Server, job: &str, query: &str) -> Json {
    let path = format!("/v2/_angos/{job}");
    let target = if query.is_empty() {
        path.clone()
    } else {
        format!("{path}?{query}")
    };
    server.request("POST", &target, &[], b"").assert_status(202);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = server.get(&path).json();
        let idle = matches!(status.get("running"), Some(Json::Bool(false)));
        let settled = status
            .get("removals_pending")
            .is_none_or(|pending| pending.as_u64() == Some(0));
        if idle && settled {
            return status.get("last").cloned().expect("a finished run");
        }
        assert!(Instant::now() < deadline, "{job} did not finish: {status:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// The value at `path` in `json`, `Null` when absent.
pub fn json_at<'a>(json: &'a Json, path: &[&str]) -> &'a Json {
    static NULL: Json = Json::Null;
    path.iter()
        .try_fold(json, |value, key| value.get(key))
        .unwrap_or(&NULL)
}
