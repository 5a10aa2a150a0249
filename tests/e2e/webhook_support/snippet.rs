//! The README's webhook receivers, run exactly as the README prints them: a fenced
//! block whose first line names a file (`# cloudevents_receiver.py: ...`,
//! `// teams_card_receiver.js: ...`) is taken from README.md, written to a temporary
//! directory and started with `python3` or `node` on `127.0.0.1`, `PORT=0`. The
//! receiver prints `listening on http://127.0.0.1:<port>` first, then a line per
//! delivery it accepted; everything else it writes goes to a file shown on failure.
//! A README edit that breaks a receiver fails the tests that run it.
//!
//! The libraries they import come from PyPI (tests/e2e/python-requirements.txt) and
//! npm (tests/e2e/node/package-lock.json); scripts/test.sh installs both. A missing
//! library makes the receiver exit before listening, and `start` panics saying so.

use crate::common::{Conn, Response, TempDir};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a receiver may take to import its libraries and listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The npm libraries' directory (`npm ci --prefix tests/e2e/node`).
fn node_modules() -> PathBuf {
    manifest_dir().join("tests/e2e/node/node_modules")
}

/// The fenced blocks of README.md in `language` (the word after the opening
/// fence), each as its text.
pub fn readme_blocks(language: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(manifest_dir().join("README.md")).expect("read README.md");
    let mut blocks = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let Some(opened) = line.strip_prefix("```") else {
            continue;
        };
        // A fence without a language opens a block too; its lines are skipped alike.
        let block: Vec<&str> = lines.by_ref().take_while(|l| !l.starts_with("```")).collect();
        if opened.trim() == language {
            blocks.push(block.join("\n") + "\n");
        }
    }
    blocks
}

/// The code of the README block whose first line is `# FILE: ...` or
/// `// FILE: ...`, panicking when there is not exactly one.
pub fn readme_snippet(file: &str) -> String {
    let language = if file.ends_with(".js") { "js" } else { "python" };
    let mut found: Vec<String> = readme_blocks(language)
        .into_iter()
        .filter(|block| {
            let first = block.lines().next().unwrap_or_default();
            let first = first.trim_start_matches(['#', '/']).trim_start();
            first.strip_prefix(file).is_some_and(|rest| rest.starts_with(':'))
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "README.md should have one {language} block starting with a comment naming {file}"
    );
    found.remove(0)
}

/// A README receiver, running; killed on drop.
pub struct SnippetReceiver {
    child: Child,
    pub file: String,
    pub addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    log: PathBuf,
    _dir: TempDir,
}

impl SnippetReceiver {
    /// Starts README's `file` (`.py` with python3, `.js` with node) with `env`.
    pub fn start(file: &str, env: &[(&str, &str)]) -> SnippetReceiver {
        let dir = TempDir::new("snippet");
        let script = dir.path().join(file);
        std::fs::write(&script, readme_snippet(file)).unwrap();
        let log = dir.path().join("stderr.txt");
        let mut command = if file.ends_with(".js") {
            let mut command = Command::new("node");
            command.env("NODE_PATH", node_modules());
            command
        } else {
            let mut command = Command::new("python3");
            command.arg("-u");
            command
        };
        command
            .arg(&script)
            .env("PORT", "0")
            .envs(env.iter().copied())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        let mut child = command.spawn().unwrap_or_else(|error| {
            panic!("cannot run the README's {file} ({error}); scripts/test.sh installs python3 and node")
        });
        let stdout = child.stdout.take().unwrap();
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let collected = Arc::clone(&lines);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout).lines();
            let first = reader.next().and_then(Result::ok).unwrap_or_default();
            let _ = first_tx.send(first);
            for line in reader.map_while(Result::ok) {
                collected.lock().unwrap().push(line);
            }
        });
        let first = first_rx.recv_timeout(START_TIMEOUT).unwrap_or_default();
        let addr = first
            .strip_prefix("listening on http://")
            .and_then(|addr| addr.trim().parse().ok());
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the README's {file} did not start (first line {first:?}); a missing library is \
                 installed by scripts/test.sh (tests/e2e/python-requirements.txt, tests/e2e/node). \
                 Its stderr:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        SnippetReceiver {
            child,
            file: file.to_string(),
            addr,
            lines,
            log,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The lines printed after the listening line.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// What it wrote on stderr (its access log and any traceback).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `n` lines were printed, panicking with the output when they
    /// are not within `timeout`.
    #[track_caller]
    pub fn wait_for_lines(&self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.lines();
            if lines.len() >= n {
                return lines;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the README's {} printed {} lines, not {n}, within {timeout:?}:\n{}\nstderr:\n{}",
                    self.file,
                    lines.len(),
                    lines.join("\n"),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// POSTs `body` with `headers` to the receiver, as a replaying attacker would.
    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        Conn::open(self.addr).request("POST", path, headers, body)
    }
}

impl Drop for SnippetReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
