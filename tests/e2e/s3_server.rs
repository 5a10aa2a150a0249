//! The S3-compatible server the S3 backend is tested against (issue 16) works: started
//! by `scripts/s3-server.sh` on loopback, it passes `scripts/s3_check.py` (objects,
//! ranges, ListObjectsV2 pages, multipart uploads, presigned GETs, signature checks),
//! restarts over its data on the same endpoint, and stops on drop.
// End-to-end tests time the real binary from outside (clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::net::TcpStream;
use std::path::Path;
use std::time::Instant;

use crate::common;

use common::s3::{S3Server, script};

fn check(server: &S3Server, args: &[&str]) -> String {
    let check = script("s3_check.py");
    let mut all = vec![check.to_str().unwrap()];
    all.extend_from_slice(args);
    let output = server.run("python3", &all);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "scripts/s3_check.py {args:?} failed:\n{stdout}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        server.log()
    );
    stdout
}

fn gone(pid: u32) -> bool {
    // Gone, or a zombie its new parent has not reaped yet.
    !Path::new(&format!("/proc/{pid}")).exists()
        || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

#[test]
fn the_s3_server_starts_and_does_what_the_backend_needs() {
    let started = Instant::now();
    let mut server = S3Server::start();
    let startup = started.elapsed();
    assert!(
        server.endpoint.starts_with("http://127.0.0.1:"),
        "{}",
        server.endpoint
    );

    let stdout = check(&server, &[]);
    for feature in [
        "put-object",
        "get-object",
        "head-object",
        "range-get",
        "unsigned-payload",
        "delete-object",
        "list-objects-v2",
        "multipart",
        "multipart-list-parts",
        "multipart-abort",
        "presigned-get",
        "signature-checked",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l == format!("ok {feature}") || l.starts_with(&format!("ok {feature} ("))),
            "{feature} not checked:\n{stdout}"
        );
    }
    // Garage 2.5.0 ignores `If-None-Match: *` on PUT; the line says which it is.
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("ok conditional-put") || l.starts_with("unsupported conditional-put")),
        "conditional-put not checked:\n{stdout}"
    );
    eprintln!("S3 server up in {startup:?}; checks:\n{stdout}");

    // Stopped, it refuses connections; restarted, the same endpoint, key and data.
    check(&server, &["put", "kept/across/restart", "still here"]);
    let old_pid = server.pid;
    server.stop();
    assert!(
        gone(old_pid),
        "the S3 server (pid {old_pid}) still runs after stop"
    );
    let addr = server.endpoint.strip_prefix("http://").unwrap();
    assert!(
        TcpStream::connect(addr).is_err(),
        "{addr} still answers after stop"
    );
    server.restart();
    assert_ne!(server.pid, old_pid);
    assert_eq!(check(&server, &["get", "kept/across/restart"]), "still here");

    // Stopped on drop: the process is gone.
    let pid = server.pid;
    drop(server);
    assert!(gone(pid), "the S3 server (pid {pid}) still runs after drop");
}
