//! Observing the server from outside: its log lines (`<timestamp> <LEVEL>
//! <target>: <message>` on stderr, captured by `common::Server`), its `/metrics`
//! exposition, and its exit status. Every wait here polls an observable condition
//! until a deadline; none sleeps a fixed time in place of the server's timers.

use crate::common::Server;
use std::thread;
use std::time::{Duration, Instant};

/// Polling step of every wait.
const POLL_STEP: Duration = Duration::from_millis(20);

/// Calls `probe` until it returns `Some` or `timeout` passes.
pub fn poll_until<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL_STEP);
    }
}

// ---------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------

/// A log line split into its parts.
#[derive(Clone, Debug)]
pub struct LogLine {
    pub level: String,
    pub target: String,
    pub message: String,
}

/// Splits `<timestamp> <LEVEL> <target>: <message>`; `None` for other lines.
pub fn parse_log(line: &str) -> Option<LogLine> {
    let mut parts = line.splitn(3, ' ');
    let _timestamp = parts.next()?;
    let level = parts.next()?.trim().to_string();
    let rest = parts.next()?.trim_start();
    let (target, message) = rest.split_once(": ")?;
    Some(LogLine {
        level,
        target: target.trim_end_matches(':').to_string(),
        message: message.to_string(),
    })
}

/// Every server log line so far, joined for assertion messages.
pub fn log_dump(server: &Server) -> String {
    server.logs().join("\n")
}

/// Waits for a log line matching `matches`, panicking with the log on timeout.
#[track_caller]
pub fn wait_for_log(
    server: &Server,
    timeout: Duration,
    what: &str,
    matches: impl Fn(&str) -> bool,
) -> String {
    poll_until(timeout, || server.logs().into_iter().find(|l| matches(l))).unwrap_or_else(|| {
        panic!(
            "no log line {what} within {timeout:?}; server output:\n{}",
            log_dump(server)
        )
    })
}

/// Waits until more than `before` lines match `matches`; returns the newest match.
#[track_caller]
pub fn wait_for_new_log(
    server: &Server,
    before: usize,
    timeout: Duration,
    what: &str,
    matches: impl Fn(&str) -> bool,
) -> String {
    poll_until(timeout, || {
        let found: Vec<String> = server.logs().into_iter().filter(|l| matches(l)).collect();
        (found.len() > before).then(|| found.last().cloned().unwrap())
    })
    .unwrap_or_else(|| {
        panic!(
            "no new log line {what} within {timeout:?} ({before} before); server output:\n{}",
            log_dump(server)
        )
    })
}

pub fn count_logs(server: &Server, matches: impl Fn(&str) -> bool) -> usize {
    server.logs().iter().filter(|l| matches(l)).count()
}

/// The documented failure line of an optional or async delivery: WARN, target
/// `angos::event_webhook`, naming `webhook "NAME"` and saying `failed`.
pub fn is_delivery_failure(line: &str, webhook: &str) -> bool {
    let Some(parsed) = parse_log(line) else {
        return false;
    };
    parsed.level.eq_ignore_ascii_case("WARN")
        && parsed.target == "angos::event_webhook"
        && parsed.message.contains(&format!("webhook \"{webhook}\""))
        && parsed.message.contains("failed")
}

pub fn is_reloaded(line: &str) -> bool {
    parse_log(line).is_some_and(|p| p.level.eq_ignore_ascii_case("INFO"))
        && line.contains("configuration reloaded")
}

pub fn is_reload_rejected(line: &str) -> bool {
    parse_log(line)
        .is_some_and(|p| p.level.eq_ignore_ascii_case("ERROR") || p.level.eq_ignore_ascii_case("WARN"))
        && line.contains("keeping the running configuration")
}

// ---------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------

/// One sample line of the Prometheus text format.
#[derive(Clone, Debug)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET /metrics`, asserting 200.
#[track_caller]
pub fn scrape(server: &Server) -> String {
    let response = server.get("/metrics");
    assert_eq!(response.status, 200, "GET /metrics: {}", response.describe());
    response.text()
}

/// The samples of an exposition (comments skipped; panics on a malformed line).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        samples.push(parse_sample(line).unwrap_or_else(|| panic!("malformed metrics line {line:?}")));
    }
    samples
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if rest.starts_with('{') {
        let bytes = rest.as_bytes();
        let mut i = 1;
        loop {
            while i < bytes.len() && (bytes[i] == b',' || bytes[i] == b' ') {
                i += 1;
            }
            if bytes.get(i) == Some(&b'}') {
                i += 1;
                break;
            }
            let eq = i + rest[i..].find('=')?;
            let label = rest[i..eq].trim().to_string();
            i = eq + 1;
            if bytes.get(i) != Some(&b'"') {
                return None;
            }
            i += 1;
            let mut value = String::new();
            loop {
                match *bytes.get(i)? {
                    b'\\' => {
                        match *bytes.get(i + 1)? {
                            b'n' => value.push('\n'),
                            other => value.push(other as char),
                        }
                        i += 2;
                    }
                    b'"' => {
                        i += 1;
                        break;
                    }
                    _ => {
                        let ch = rest[i..].chars().next()?;
                        value.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
            labels.push((label, value));
        }
        rest = &rest[i..];
    }
    let value_text = rest.split_whitespace().next()?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().ok()?,
    };
    Some(Sample { name, labels, value })
}

/// The sum of the samples named `name` whose labels include every `(k, v)` of
/// `labels`; 0 when there are none (a counter not yet created counts as zero).
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    parse_metrics(text)
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

/// The samples named `name` whose labels include `labels`.
pub fn metric_samples(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<Sample> {
    parse_metrics(text)
        .into_iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .collect()
}

/// Polls `/metrics` until `check` accepts it; returns that exposition.
#[track_caller]
pub fn wait_for_metrics(
    server: &Server,
    timeout: Duration,
    what: &str,
    check: impl Fn(&str) -> bool,
) -> String {
    let mut last = String::new();
    poll_until(timeout, || {
        last = scrape(server);
        check(&last).then(|| last.clone())
    })
    .unwrap_or_else(|| {
        panic!(
            "/metrics did not show {what} within {timeout:?}; last exposition:\n{last}\nserver output:\n{}",
            log_dump(server)
        )
    })
}

// ---------------------------------------------------------------------------
// Process state
// ---------------------------------------------------------------------------

/// How a child process ended, read from `/proc/<pid>/stat` while it is a zombie
/// (`common::Server` reaps it only on drop): `Some(wait status)` once exited.
/// Field 52 (`exit_code`, Linux 3.5+) is the status as `waitpid` reports it.
pub fn exit_status(pid: u32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if fields.first() != Some(&"Z") && fields.first() != Some(&"X") {
        return None;
    }
    fields.last()?.parse().ok()
}

/// Describes a wait status like a shell would.
pub fn describe_status(status: i32) -> String {
    if status & 0x7f == 0 {
        format!("exit code {}", (status >> 8) & 0xff)
    } else {
        format!("killed by signal {}", status & 0x7f)
    }
}

/// Sends SIGTERM through the `kill` command (no `libc` in the tests).
pub fn sigterm(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill -TERM");
    assert!(status.success(), "kill -TERM {pid} failed: {status}");
}
