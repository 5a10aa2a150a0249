//! The object storage benchmark (`cargo bench --bench s3`, `harness = false`, issue 16):
//! the S3 backend against the filesystem backend on the same machine. Each run starts the
//! release binary on loopback twice, once over a fresh data directory and once over a
//! fresh key prefix of a Garage server on loopback (`scripts/s3-server.sh`, which must be
//! installed: `scripts/s3-server.sh install`), and measures on each: manifest `GET`s by
//! tag per second on one keep-alive connection, the latency of a small image push (two
//! blobs and a manifest), a `BENCH_S3_MIB` (256) MiB monolithic upload and its download
//! in MB/s, and the server's peak RSS (`VmHWM`) over a `BENCH_S3_BIG_MIB` (1024) MiB
//! upload. One markdown table of medians over `BENCH_RUNS` (3) runs goes to stdout; it
//! measures and reports, and asserts nothing about the figures.
// A benchmark times the real binary from outside: wall-clock reads are the point here, not
// a way around the driven clock (clippy.toml).
#![allow(clippy::disallowed_methods)]

#[path = "../tests/e2e/common/mod.rs"]
#[allow(dead_code)]
mod common;
#[path = "support/shared.rs"]
#[allow(dead_code)]
mod shared;

use common::s3::S3Server;
use common::{
    Conn, ManifestSpec, OCI_EMPTY, OCI_LAYER, OCI_MANIFEST, Options, Server, TempDir, descriptor, digest,
};
use shared::{Source, connect, cpu_model, env_number, load_average, median_of, progress, sink_body};
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const ANGOS: &str = env!("CARGO_BIN_EXE_angos");
const REPO: &str = "bench/s3";
/// How long the manifest `GET` loop runs.
const GET_WINDOW: Duration = Duration::from_secs(2);
/// Image pushes timed per run.
const PUSHES: usize = 20;

#[derive(Default)]
struct Figures {
    manifest_gets_per_sec: Vec<f64>,
    push_ms: Vec<f64>,
    upload_mb_s: Vec<f64>,
    download_mb_s: Vec<f64>,
    peak_rss_mib: Vec<f64>,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench s3: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let runs = env_number("BENCH_RUNS", 3, 1, 50)? as usize;
    let mib = env_number("BENCH_S3_MIB", 256, 1, 16 << 10)?;
    let big_mib = env_number("BENCH_S3_BIG_MIB", 1024, 1, 64 << 10)?;
    let work = TempDir::new("bench-s3");
    progress("writing the blobs");
    let blob = Source::write(&work.path().join("blob"), mib << 20)?;
    let big = Source::write(&work.path().join("big"), big_mib << 20)?;
    progress("starting Garage");
    let s3 = S3Server::start();
    let mut fs = Figures::default();
    let mut bucket = Figures::default();
    for round in 0..runs {
        for (label, figures) in [("fs", &mut fs), ("s3", &mut bucket)] {
            progress(&format!("run {} of {runs}: {label}", round + 1));
            let mut options = Options {
                binary: Some(ANGOS.into()),
                ..Options::default()
            };
            if label == "s3" {
                options = options.on_bucket(&s3, &format!("run{round}"));
            }
            measure(&options, &blob, &big, figures)?;
        }
    }
    println!(
        "Object storage against the filesystem ({}; load {})\n",
        cpu_model(),
        load_average()
    );
    println!(
        "| backend | manifest GET/s | image push | {mib} MiB upload | {mib} MiB download | peak RSS, {big_mib} MiB upload |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (label, figures) in [("filesystem", &fs), ("S3 (Garage on loopback)", &bucket)] {
        let median = |values: &Vec<f64>| median_of(values.clone()).unwrap_or(f64::NAN);
        println!(
            "| {label} | {:.0} | {:.2} ms | {:.0} MB/s | {:.0} MB/s | {:.1} MiB |",
            median(&figures.manifest_gets_per_sec),
            median(&figures.push_ms),
            median(&figures.upload_mb_s),
            median(&figures.download_mb_s),
            median(&figures.peak_rss_mib),
        );
    }
    Ok(())
}

fn measure(options: &Options, blob: &Source, big: &Source, figures: &mut Figures) -> Result<(), String> {
    let server = Server::start_with(options);
    // Pushes of small images; the last one's tag is what the GETs read.
    let mut times = Vec::new();
    for index in 0..PUSHES {
        let started = Instant::now();
        push_image(server.addr, index as u64)?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    figures.push_ms.push(median_of(times).unwrap_or(f64::NAN));
    // Manifest GETs by tag on one keep-alive connection.
    let mut client = connect(server.addr)?;
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed() < GET_WINDOW {
        let response = client.request(
            "GET",
            &format!("/v2/{REPO}/manifests/latest"),
            &[("Accept", OCI_MANIFEST)],
            b"",
        );
        if response.status != 200 {
            return Err(format!("manifest GET: {}", response.status));
        }
        count += 1;
    }
    figures
        .manifest_gets_per_sec
        .push(count as f64 / started.elapsed().as_secs_f64());
    // The upload and download.
    let uploaded = upload(server.addr, blob)?;
    figures
        .upload_mb_s
        .push(blob.bytes as f64 / uploaded.as_secs_f64() / 1e6);
    let downloaded = download(server.addr, blob)?;
    figures
        .download_mb_s
        .push(blob.bytes as f64 / downloaded.as_secs_f64() / 1e6);
    upload(server.addr, big)?;
    figures
        .peak_rss_mib
        .push(peak_rss_kib(server.pid())? as f64 / 1024.0);
    Ok(())
}

fn push_image(addr: SocketAddr, seed: u64) -> Result<(), String> {
    let mut client = connect(addr)?;
    let layer = common::pseudo_random_bytes(seed + 1, 4096);
    let config = b"{}".to_vec();
    for content in [&layer, &config] {
        let response = client.request(
            "POST",
            &format!("/v2/{REPO}/blobs/uploads/?digest={}", digest(content)),
            &[("Content-Type", "application/octet-stream")],
            content,
        );
        if response.status != 201 {
            return Err(format!("blob push: {} {}", response.status, response.text()));
        }
    }
    let manifest = ManifestSpec::oci(
        descriptor(OCI_EMPTY, &config),
        vec![descriptor(OCI_LAYER, &layer)],
    )
    .to_json()
    .into_bytes();
    let response = client.request(
        "PUT",
        &format!("/v2/{REPO}/manifests/latest"),
        &[("Content-Type", OCI_MANIFEST)],
        &manifest,
    );
    if response.status != 201 {
        return Err(format!("manifest push: {} {}", response.status, response.text()));
    }
    Ok(())
}

/// A monolithic upload streamed from the file; the time until the 201.
fn upload(addr: SocketAddr, source: &Source) -> Result<Duration, String> {
    let mut file: File = source.open()?;
    let started = Instant::now();
    let mut client = connect(addr)?;
    let head = format!(
        "POST /v2/{REPO}/blobs/uploads/?digest={} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        source.digest, source.bytes
    );
    client
        .try_send(head.as_bytes())
        .map_err(|e| format!("upload: {e}"))?;
    io::copy(&mut file, &mut client.stream()).map_err(|e| format!("upload: {e}"))?;
    let reply = client.read_response("POST").map_err(|e| format!("upload: {e}"))?;
    if reply.status != 201 {
        return Err(format!("upload: {} {}", reply.status, reply.text()));
    }
    Ok(started.elapsed())
}

/// A blob GET into a counting sink; the time until the last byte.
fn download(addr: SocketAddr, source: &Source) -> Result<Duration, String> {
    let started = Instant::now();
    let mut client = connect(addr)?;
    client
        .try_send(&Conn::request_bytes(
            "GET",
            &format!("/v2/{REPO}/blobs/{}", source.digest),
            &[],
            b"",
        ))
        .map_err(|e| format!("download: {e}"))?;
    let head = client.read_head().map_err(|e| format!("download: {e}"))?;
    if head.status != 200 {
        return Err(format!("download: {}", head.status));
    }
    let received = sink_body(&client, source.bytes).map_err(|e| format!("download: {e}"))?;
    if received != source.bytes {
        return Err(format!("download: {received} of {} bytes", source.bytes));
    }
    Ok(started.elapsed())
}

/// `VmHWM` of a process, in KiB.
fn peak_rss_kib(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmHWM".to_string())
}
