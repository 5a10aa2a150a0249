//! Small pieces the registry, transfer and gc benches share: settings from the
//! environment, progress lines, the machine's description (its temporary
//! directory's free space and file system too), `sync`, medians, a connection
//! that reports failure as the bench's error, a counting sink for bodies, and
//! the page-cached blob the transfer and pull-through benches move (`Source`).
//! Included by `#[path]` next to the tests' support, whose `common` module
//! must sit at the crate root.

use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use angos::digest::{Digest, Hasher};

use crate::common::{Conn, pseudo_random_bytes};

/// `name` from the environment, `default` when unset, refused outside `min..=max`.
pub fn env_number(name: &str, default: u64, min: u64, max: u64) -> Result<u64, String> {
    let Ok(text) = std::env::var(name) else {
        return Ok(default);
    };
    match text.trim().parse::<u64>() {
        Ok(value) if (min..=max).contains(&value) => Ok(value),
        _ => Err(format!(
            "{name}={text:?}: expected an integer from {min} to {max}"
        )),
    }
}

/// Progress goes to stderr, so stdout holds just the table.
pub fn progress(what: &str) {
    eprintln!("bench: {what}");
}

/// The CPU's model name, from `/proc/cpuinfo`.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string())
}

/// The three load averages, as `/proc/loadavg` gives them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_string())
}

pub fn connect(addr: SocketAddr) -> Result<Conn, String> {
    Conn::try_open(addr).map_err(|e| format!("connect to {addr}: {e}"))
}

/// Reads the rest of a `len`-byte body into a sink, after what `read_head` already
/// buffered; how many bytes arrived before EOF or `len`.
pub fn sink_body(client: &Conn, len: u64) -> io::Result<u64> {
    let mut received = client.buffered().len() as u64;
    let mut stream = client.stream();
    let mut chunk = vec![0u8; 1 << 20];
    while received < len {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => received += n as u64,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(received)
}

/// A directory's free space and file system, for a bench's header.
pub struct Space {
    pub dir: PathBuf,
    pub free_bytes: u64,
    pub fstype: String,
}

/// `df`'s available bytes and file-system type for `dir`.
pub fn free_space(dir: &Path) -> Result<Space, String> {
    let output = Command::new("df")
        .args(["-k", "--output=avail,fstype"])
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run df: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut fields = text.lines().nth(1).unwrap_or_default().split_whitespace();
    match (
        fields.next().and_then(|kib| kib.parse::<u64>().ok()),
        fields.next(),
    ) {
        (Some(kib), Some(fstype)) if output.status.success() => Ok(Space {
            dir: dir.to_path_buf(),
            free_bytes: kib * 1024,
            fstype: fstype.to_string(),
        }),
        _ => Err(format!(
            "`df -k --output=avail,fstype {}` printed {text:?}",
            dir.display()
        )),
    }
}

/// `sync(1)`: flushes every dirty page, so the next measurement starts from a quiet disk.
pub fn settle() -> Result<(), String> {
    match Command::new("sync").status() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("sync: {status}")),
        Err(e) => Err(format!("cannot run sync: {e}")),
    }
}

/// The median by nearest rank (the lower middle of an even count); `None` for no values.
pub fn median_of(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values[(values.len() - 1) / 2])
}

/// The blob a transfer or pull bench moves: a page-cached file of pseudo-random bytes.
pub struct Source {
    pub path: PathBuf,
    pub bytes: u64,
    pub digest: Digest,
}

impl Source {
    /// Writes `bytes` pseudo-random bytes to `path` in 1 MiB pieces, hashing them as it
    /// goes; the file stays in the page cache.
    pub fn write(path: &Path, bytes: u64) -> Result<Source, String> {
        const PIECE: u64 = 1 << 20;
        let fail = |e: io::Error| format!("{}: {e}", path.display());
        let mut file = File::create(path).map_err(fail)?;
        let mut hasher = Hasher::sha256();
        let mut written = 0;
        while written < bytes {
            let piece = pseudo_random_bytes(written / PIECE + 1, PIECE.min(bytes - written) as usize);
            file.write_all(&piece).map_err(fail)?;
            hasher.update(&piece);
            written += piece.len() as u64;
        }
        drop(file);
        settle()?;
        Ok(Source {
            path: path.to_path_buf(),
            bytes,
            digest: hasher.digest(),
        })
    }

    pub fn open(&self) -> Result<File, String> {
        File::open(&self.path).map_err(|e| format!("{}: {e}", self.path.display()))
    }
}
