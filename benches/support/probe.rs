//! The benches' well-behaved client (`hostile.rs`, `transfer.rs`, `gc.rs`): `GET /v2/` on one
//! keep-alive connection every 2 ms until stopped, each answer recorded with the moment
//! its request went out, so a bench can ask for the latencies overall or around one
//! moment (a commit, a cancel). It measures; it judges nothing. Included by `#[path]`
//! next to the tests' support, whose `common` module must sit at the crate root.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::common::{Conn, Server};

/// The pause between one answer and the next request.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(2);
/// What a refused or broken probe counts as: the longest wait there is.
pub const PROBE_FAILED: Duration = Duration::from_secs(3600);

/// One probe: when its request went out and how long the answer took.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub sent: Instant,
    pub latency: Duration,
}

/// A probing thread; stopped by `finish`, or on drop (an error or a panic in the
/// bench), when the thread ends after its current request.
pub struct Probe {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<Sample>>>,
}

impl Probe {
    /// Connects at once (a failure panics with the server's output) and probes until
    /// stopped.
    pub fn start(server: &Server) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let conn = server.connect();
        let addr = server.addr;
        let handle = {
            let stop = stop.clone();
            thread::spawn(move || probe(addr, conn, &stop))
        };
        Probe {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops probing (after the request in flight, which is waited for); the samples.
    pub fn finish(mut self) -> Samples {
        self.stop.store(true, Ordering::SeqCst);
        let handle = self.handle.take().expect("a probe finishes once");
        Samples(handle.join().expect("the probe thread does not panic"))
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn probe(addr: SocketAddr, conn: Conn, stop: &AtomicBool) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut conn = Some(conn);
    while !stop.load(Ordering::SeqCst) {
        let sent = Instant::now();
        let answer = match conn.as_mut() {
            Some(conn) => conn.try_request("GET", "/v2/", &[], b""),
            None => {
                Conn::try_open(addr).and_then(|fresh| conn.insert(fresh).try_request("GET", "/v2/", &[], b""))
            }
        };
        let latency = match answer {
            // 401 is the answer to a ping where identities are configured.
            Ok(response) if matches!(response.status, 200 | 401) => sent.elapsed(),
            Ok(_) => PROBE_FAILED,
            // A broken connection is not used again: the next probe opens another,
            // so one failure counts once.
            Err(_) => {
                conn = None;
                PROBE_FAILED
            }
        };
        samples.push(Sample { sent, latency });
        thread::sleep(PROBE_INTERVAL);
    }
    samples
}

/// What a probe recorded, in the order the requests went out.
pub struct Samples(Vec<Sample>);

impl Samples {
    /// The latencies, sorted (for `percentile`).
    pub fn sorted(&self) -> Vec<Duration> {
        self.sorted_sent_by(None)
    }

    /// The latencies of the probes sent at or before `end`, sorted: what waited on
    /// something that ended then, without the quiet answers after it.
    pub fn sorted_sent_by(&self, end: Option<Instant>) -> Vec<Duration> {
        let mut latencies: Vec<Duration> = self
            .0
            .iter()
            .filter(|sample| end.is_none_or(|end| sample.sent <= end))
            .map(|sample| sample.latency)
            .collect();
        latencies.sort();
        latencies
    }

    /// The slowest answer to a probe in flight at some moment from `from` to `to`
    /// (sent before `to`, answered after `from`); `None` when no probe was.
    pub fn slowest_between(&self, from: Instant, to: Instant) -> Option<Duration> {
        self.0
            .iter()
            .filter(|sample| sample.sent <= to && sample.sent + sample.latency >= from)
            .map(|sample| sample.latency)
            .max()
    }
}

/// The `p`-th percentile (0 to 100) of sorted latencies, by nearest rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
