//! A real S3-compatible server for the tests (issue 16): `scripts/s3-server.sh start`
//! runs Garage on loopback under a temporary directory, with a bucket and an access
//! key of its own, and prints the `export` lines parsed here. The server stops when
//! the `S3Server` is dropped. scripts/test.sh installs the binary
//! (`scripts/s3-server.sh install`); a test never builds it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::TempDir;

/// The project's root, where `scripts/` is.
pub fn project_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `scripts/<name>`.
pub fn script(name: &str) -> PathBuf {
    project_root().join("scripts").join(name)
}

/// One running server, its data under its own temporary directory.
pub struct S3Server {
    /// `http://127.0.0.1:PORT` (path-style addressing: `ENDPOINT/BUCKET/KEY`).
    pub endpoint: String,
    /// The only region the server accepts in a Signature Version 4 scope.
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_key: String,
    pub pid: u32,
    // Dropped after `drop` has stopped the server: the directory goes last.
    dir: TempDir,
}

impl S3Server {
    /// Starts a server (a few seconds) and returns once it answers, bucket and key made.
    #[track_caller]
    pub fn start() -> S3Server {
        let dir = TempDir::new("s3");
        let vars = run_start(&dir.path().join("s3"));
        let var = |name: &str| -> String {
            vars.iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("no {name} in the output of scripts/s3-server.sh start: {vars:?}"))
        };
        S3Server {
            endpoint: var("S3_ENDPOINT"),
            region: var("S3_REGION"),
            bucket: var("S3_BUCKET"),
            access_key_id: var("S3_ACCESS_KEY_ID"),
            secret_key: var("S3_SECRET_KEY"),
            pid: var("S3_PID").parse().expect("S3_PID is a process id"),
            dir,
        }
    }

    /// Stops the server (SIGTERM, SIGKILL after 10 s); its data stays for `restart`.
    pub fn stop(&self) {
        let status = Command::new("bash")
            .arg(script("s3-server.sh"))
            .arg("stop")
            .arg(self.dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .expect("run scripts/s3-server.sh stop");
        assert!(status.success(), "scripts/s3-server.sh stop failed: {status}");
    }

    /// Starts a stopped server again over its data: same endpoint, bucket and key.
    #[track_caller]
    pub fn restart(&mut self) {
        let vars = run_start(&self.dir());
        let endpoint = vars
            .iter()
            .find(|(n, _)| n == "S3_ENDPOINT")
            .map(|(_, v)| v.as_str());
        assert_eq!(
            endpoint,
            Some(self.endpoint.as_str()),
            "restarted on another endpoint"
        );
        let pid = vars
            .iter()
            .find(|(n, _)| n == "S3_PID")
            .expect("S3_PID after restart");
        self.pid = pid.1.parse().expect("S3_PID is a process id");
    }

    /// The directory holding the server's data, metadata, configuration and log.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().join("s3")
    }

    /// The server's variables, as `scripts/s3-server.sh start` printed them.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("S3_ENDPOINT", self.endpoint.clone()),
            ("S3_REGION", self.region.clone()),
            ("S3_BUCKET", self.bucket.clone()),
            ("S3_ACCESS_KEY_ID", self.access_key_id.clone()),
            ("S3_SECRET_KEY", self.secret_key.clone()),
            ("S3_PID", self.pid.to_string()),
        ]
    }

    /// Runs `program args` with the server's variables in its environment.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        Command::new(program)
            .args(args)
            .envs(self.env())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
    }

    /// Keys the bucket holds under `prefix`, listed with the server's own tool.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let output = self.run(
            "python3",
            &[script("s3_check.py").to_str().unwrap(), "list", prefix],
        );
        assert!(
            output.status.success(),
            "listing the bucket: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The server's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("garage.log")).unwrap_or_default()
    }
}

/// `scripts/s3-server.sh start DIR`, its `export NAME=VALUE` lines.
#[track_caller]
fn run_start(data: &Path) -> Vec<(String, String)> {
    let output = Command::new("bash")
        .arg(script("s3-server.sh"))
        .arg("start")
        .arg(data)
        .env_remove("S3_REGION")
        .env_remove("S3_BUCKET")
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/s3-server.sh");
    assert!(
        output.status.success(),
        "scripts/s3-server.sh start failed ({}); is the server installed \
         (scripts/s3-server.sh install; scripts/test.sh does)?\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let (name, value) = line.strip_prefix("export ")?.split_once('=')?;
            Some((name.to_string(), value.to_string()))
        })
        .collect()
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script("s3-server.sh"))
            .arg("stop")
            .arg(self.dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
    }
}
